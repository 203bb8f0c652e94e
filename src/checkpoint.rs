//! A Hugging Face checkpoint as a set of named files: config.json, generation_config.json,
//! tokenizer.json and safetensors weights (one file, or shards listed in
//! model.safetensors.index.json).
//!
//! Opening a checkpoint reads and cross-checks everything but the weights: the config, every
//! shard's header, that no tensor name appears twice (within a file or across shards), that the
//! index's weight_map says where each tensor really is, and that the layers the checkpoint holds
//! are the layers the config names. Only then are sizes derived from the config used.

use crate::config::{Config, GenerationConfig};
use crate::error::{Error, Result};
use crate::files::{check_name, Files, MAX_JSON_BYTES};
use crate::format::{groups, scale_name, FloatType, Format, Packed, Quantization};
use crate::header::{self, TensorEntry};
use std::collections::{BTreeMap, HashMap};

pub const INDEX: &str = "model.safetensors.index.json";

/// Everything about a checkpoint except the weight bytes themselves.
pub struct Checkpoint {
    pub config: Config,
    /// Stop ids: config.json's eos ids plus generation_config.json's.
    pub eos_token_ids: Vec<u32>,
    /// generation_config.json's `assistant_early_exit`: the exit layer the checkpoint suggests
    /// for self-speculative decoding (the Hugging Face LayerSkip convention).
    pub default_exit_layer: Option<usize>,
    pub tensors: HashMap<String, TensorEntry>,
    /// Weight files in load order.
    pub files: Vec<String>,
}

/// Reads a small JSON file as UTF-8 text, capped in size.
pub async fn read_text(files: &impl Files, name: &str) -> Result<Option<String>> {
    match files.read_capped(name, MAX_JSON_BYTES).await? {
        None => Ok(None),
        Some(bytes) => String::from_utf8(bytes.into_owned())
            .map(Some)
            .map_err(|e| Error::file(name, format!("not UTF-8: {e}"))),
    }
}

/// The shard index: tensor name to shard file name, every file name checked to be a plain name.
pub fn parse_index(text: &str) -> Result<BTreeMap<String, String>> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Error::file(INDEX, format!("not valid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::file(INDEX, "no `weight_map` object"))?;
    let mut out = BTreeMap::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            Error::file(
                INDEX,
                format!("weight_map[`{tensor}`] = {file} is not a file name"),
            )
        })?;
        check_name(file).map_err(|e| Error::file(INDEX, format!("weight_map[`{tensor}`]: {e}")))?;
        out.insert(tensor.clone(), file.to_string());
    }
    if out.is_empty() {
        return Err(Error::file(INDEX, "`weight_map` lists no tensors"));
    }
    Ok(out)
}

/// The layer indices named by `model.layers.N.` tensors.
fn layers_held(tensors: &HashMap<String, TensorEntry>) -> Option<usize> {
    tensors
        .keys()
        .filter_map(|name| {
            name.strip_prefix("model.layers.")?
                .split('.')
                .next()?
                .parse()
                .ok()
        })
        .max()
}

impl Checkpoint {
    pub async fn open(files: &impl Files) -> Result<Self> {
        let config = read_text(files, "config.json")
            .await?
            .ok_or_else(|| Error::file("config.json", "missing"))?;
        let config = Config::from_json(&config)?;
        let generation = match read_text(files, "generation_config.json").await? {
            Some(text) => GenerationConfig::from_json(&text)?,
            None => GenerationConfig::default(),
        };
        if let Some(e) = generation.assistant_early_exit {
            if e >= config.num_hidden_layers {
                return Err(Error::Field {
                    file: "generation_config.json".into(),
                    field: "assistant_early_exit".into(),
                    why: format!(
                        "= {e} must be below the model's {} layers",
                        config.num_hidden_layers
                    ),
                });
            }
        }
        let mut eos_token_ids = config.eos_token_ids.clone();
        for id in generation.eos_token_ids {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }

        let index = match read_text(files, INDEX).await? {
            Some(text) => Some(parse_index(&text)?),
            None => None,
        };
        let mut shards: Vec<String> = match &index {
            Some(map) => map.values().cloned().collect(),
            None => vec!["model.safetensors".into()],
        };
        shards.sort();
        shards.dedup();

        let mut tensors: HashMap<String, TensorEntry> = HashMap::new();
        for file in &shards {
            for (name, entry) in header::read(files, file).await? {
                if let Some(other) = tensors.get(&name) {
                    return Err(Error::file(
                        file,
                        format!("tensor `{name}` is also in {}", other.file),
                    ));
                }
                tensors.insert(name, entry);
            }
        }
        if let Some(map) = &index {
            for (name, file) in map {
                match tensors.get(name) {
                    Some(entry) if &entry.file == file => {}
                    Some(entry) => {
                        return Err(Error::file(
                            INDEX,
                            format!("maps `{name}` to {file}, but it is in {}", entry.file),
                        ))
                    }
                    None => {
                        return Err(Error::file(
                            INDEX,
                            format!("maps `{name}` to {file}, which does not hold it"),
                        ))
                    }
                }
            }
            if let Some((name, entry)) = tensors.iter().find(|(n, _)| !map.contains_key(*n)) {
                return Err(Error::file(
                    INDEX,
                    format!("does not list `{name}`, which {} holds", entry.file),
                ));
            }
        }
        // Checked before anything is sized by the layer count.
        let held = layers_held(&tensors).map_or(0, |l| l + 1);
        if held != config.num_hidden_layers {
            return Err(Error::Field {
                file: "config.json".into(),
                field: "num_hidden_layers".into(),
                why: format!(
                    "= {} but the checkpoint holds {held} layers (model.layers.0..{held})",
                    config.num_hidden_layers
                ),
            });
        }
        Ok(Self {
            config,
            eos_token_ids,
            default_exit_layer: generation.assistant_early_exit,
            tensors,
            files: shards,
        })
    }
}

/// Load progress: bytes of weights read so far and in all.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

/// Where a matrix's rows come from: a float tensor, or a quantized tensor and its scales.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    Float {
        entry: &'a TensorEntry,
        dtype: FloatType,
        cols: usize,
    },
    Quantized {
        format: Format,
        data: &'a TensorEntry,
        scales: &'a TensorEntry,
        cols: usize,
    },
}

impl Source<'_> {
    /// The runtime format that keeps the file's values as they are.
    pub fn format(&self) -> Format {
        match self {
            Source::Float { dtype, .. } => dtype.format(),
            Source::Quantized { format, .. } => *format,
        }
    }

    pub fn data_entry(&self) -> &TensorEntry {
        match self {
            Source::Float { entry, .. } => entry,
            Source::Quantized { data, .. } => data,
        }
    }

    /// Bytes the tensor (and its scales) take in the files.
    pub fn file_bytes(&self) -> u64 {
        match self {
            Source::Float { entry, .. } => entry.len,
            Source::Quantized { data, scales, .. } => data.len + scales.len,
        }
    }

    /// Bytes of one row in the file (data and scales).
    pub fn file_row_bytes(&self) -> usize {
        match *self {
            Source::Float { dtype, cols, .. } => cols * dtype.size(),
            Source::Quantized { format, cols, .. } => {
                format.file_row_bytes(cols) + format.file_scale_bytes(cols)
            }
        }
    }

    /// Reads rows `r0..r0 + n` of tensor `name` and packs them in `format`; returns them and the
    /// bytes read. NaN and infinity (in float values or in scales) are errors naming the element.
    pub async fn read_rows(
        &self,
        files: &impl Files,
        name: &str,
        r0: usize,
        n: usize,
        format: Format,
    ) -> Result<(Packed, usize)> {
        let rows = |entry: &TensorEntry, row_bytes: usize| {
            let start = entry.start + (r0 * row_bytes) as u64;
            (entry.file.clone(), start, n * row_bytes)
        };
        let non_finite = |name: &str, file: &str, (index, value): (usize, f32), per_row: usize| {
            Error::NonFiniteWeight {
                name: name.into(),
                file: file.into(),
                value,
                index: r0 * per_row + index,
            }
        };
        match *self {
            Source::Float { entry, dtype, cols } => {
                let (file, start, len) = rows(entry, cols * dtype.size());
                let bytes = files.read_range(&file, start, len).await?;
                if let Some(bad) = dtype.find_non_finite(&bytes) {
                    return Err(non_finite(name, &file, bad, cols));
                }
                let packed = format
                    .pack_file_rows(dtype, &bytes, cols)
                    .map_err(|e| Error::file(&file, format!("tensor `{name}`: {e}")))?;
                Ok((packed, len))
            }
            Source::Quantized {
                format: own,
                data,
                scales,
                cols,
            } => {
                let (file, start, len) = rows(data, own.file_row_bytes(cols));
                let bytes = files.read_range(&file, start, len).await?;
                let (sfile, sstart, slen) = rows(scales, own.file_scale_bytes(cols));
                let sbytes = files.read_range(&sfile, sstart, slen).await?;
                if let Some(bad) = FloatType::F16.find_non_finite(&sbytes) {
                    return Err(non_finite(&scale_name(name), &sfile, bad, groups(cols)));
                }
                Ok((own.pack_quantized_rows(&bytes, &sbytes, cols), len + slen))
            }
        }
    }
}

impl Checkpoint {
    fn tensor(&self, name: &str) -> Result<&TensorEntry> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))
    }

    fn expect_shape(entry: &TensorEntry, name: &str, shape: &[usize]) -> Result<()> {
        if entry.shape != shape {
            return Err(Error::TensorShape {
                name: name.to_string(),
                got: entry.shape.clone(),
                expected: shape.to_vec(),
            });
        }
        Ok(())
    }

    /// A norm vector of `len` floats.
    pub fn vector(&self, name: &str, len: usize) -> Result<(&TensorEntry, FloatType)> {
        let entry = self.tensor(name)?;
        Self::expect_shape(entry, name, &[len])?;
        let dtype = FloatType::of(entry.dtype).ok_or_else(|| Error::TensorDtype {
            name: name.to_string(),
            dtype: entry.dtype.to_string(),
            expected: "F32, F16 or BF16",
        })?;
        Ok((entry, dtype))
    }

    /// Where the rows of weight matrix `name` (`rows` x `cols`) come from, checked for presence,
    /// shape and dtype: a float tensor, or, in a quantized checkpoint, integer data and f16 scales.
    pub fn source(&self, name: &str, rows: usize, cols: usize) -> Result<Source<'_>> {
        let entry = self.tensor(name)?;
        let Some(q) = self.config.quantization else {
            Self::expect_shape(entry, name, &[rows, cols])?;
            let dtype = FloatType::of(entry.dtype).ok_or_else(|| Error::TensorDtype {
                name: name.to_string(),
                dtype: entry.dtype.to_string(),
                expected: "F32, F16 or BF16",
            })?;
            return Ok(Source::Float { entry, dtype, cols });
        };
        let format = Format::from(q);
        let (dtype, expected) = match q {
            Quantization::Q8 => (safetensors::Dtype::I8, "I8 (q8 values)"),
            Quantization::Q4 => (
                safetensors::Dtype::U8,
                "U8 (q4 values, 16 bytes per group of 32)",
            ),
        };
        Self::expect_shape(entry, name, &[rows, format.file_row_bytes(cols)])?;
        if entry.dtype != dtype {
            return Err(Error::TensorDtype {
                name: name.to_string(),
                dtype: entry.dtype.to_string(),
                expected,
            });
        }
        let scale = scale_name(name);
        let scales = self.tensors.get(&scale).ok_or_else(|| {
            Error::file(
                &entry.file,
                format!(
                    "tensor `{scale}` (the {} scales of `{name}`) is missing",
                    q.name()
                ),
            )
        })?;
        Self::expect_shape(scales, &scale, &[rows, groups(cols)])?;
        if scales.dtype != safetensors::Dtype::F16 {
            return Err(Error::TensorDtype {
                name: scale,
                dtype: scales.dtype.to_string(),
                expected: "F16 (quantization scales)",
            });
        }
        Ok(Source::Quantized {
            format,
            data: entry,
            scales,
            cols,
        })
    }
}
