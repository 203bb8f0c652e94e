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
use crate::format::{ggml_row_bytes, groups, scale_name, FloatType, Format, Packed, Quantization};
use crate::gguf::GgmlType;
use crate::header::{self, TensorEntry, TensorType};
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
    /// What a GGUF file brings beside its weights; `None` for a Hugging Face folder.
    pub gguf: Option<crate::gguf::checkpoint::Extras>,
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
    /// The GGUF file `files` names ([`Files::gguf`]), or else a Hugging Face folder (config.json
    /// and safetensors).
    pub async fn open(files: &impl Files) -> Result<Self> {
        if let Some(name) = files.gguf() {
            let gguf = crate::gguf::checkpoint::open(files, &name).await?;
            return Ok(Self {
                config: gguf.config,
                eos_token_ids: gguf.eos_token_ids,
                default_exit_layer: None,
                tensors: gguf.tensors,
                files: vec![name],
                gguf: Some(gguf.extras),
            });
        }
        let config = read_text(files, "config.json").await?.ok_or_else(|| {
            Error::file(
                "config.json",
                "missing (and there is no .gguf file to load instead)",
            )
        })?;
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
            gguf: None,
        })
    }

    /// The checkpoint's own quantization, if its weights are quantized already (then
    /// `--quantize` does not apply): "q8", or a GGUF file's quantized types ("Q4_K+Q6_K").
    pub fn quantized(&self) -> Option<String> {
        if let Some(q) = self.config.quantization {
            return Some(q.to_string());
        }
        let mut types: Vec<String> = self
            .tensors
            .values()
            .filter_map(|e| match e.dtype {
                TensorType::Ggml(t) if FloatType::of_ggml(t).is_none() => {
                    Some(t.name().to_string())
                }
                _ => None,
            })
            .collect();
        types.sort();
        types.dedup();
        (!types.is_empty()).then(|| format!("GGUF {}", types.join("+")))
    }
}

/// Load progress: bytes of weights read so far and in all.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

/// Where a matrix's rows come from: a float tensor, a quantized tensor and its scales, or a GGUF
/// tensor.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// A GGUF tensor of whole blocks per row. With `head_dim`, its rows are in llama.cpp's
    /// rotary order: the converter interleaves each head's two halves (row i of the first half
    /// of head h is file row 2i of that head, row i of the second half file row 2i + 1), so
    /// rows are read back into Hugging Face's order.
    Ggml {
        entry: &'a TensorEntry,
        ggml: GgmlType,
        cols: usize,
        head_dim: Option<usize>,
    },
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
            // Checked to have one when the source was made.
            Source::Ggml { ggml, .. } => Format::of_ggml(*ggml).unwrap_or(Format::F32),
        }
    }

    pub fn data_entry(&self) -> &TensorEntry {
        match self {
            Source::Float { entry, .. } | Source::Ggml { entry, .. } => entry,
            Source::Quantized { data, .. } => data,
        }
    }

    /// Bytes the tensor (and its scales) take in the files.
    pub fn file_bytes(&self) -> u64 {
        match self {
            Source::Float { entry, .. } | Source::Ggml { entry, .. } => entry.len,
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
            Source::Ggml { ggml, cols, .. } => ggml_row_bytes(ggml, cols),
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
            Source::Ggml {
                entry,
                ggml,
                cols,
                head_dim,
            } => {
                let row = ggml_row_bytes(ggml, cols);
                // The file rows holding rows r0..r0 + n: whole heads when they are interleaved.
                let (lo, hi) = match head_dim {
                    Some(hd) => (r0 / hd * hd, (r0 + n).div_ceil(hd) * hd),
                    None => (r0, r0 + n),
                };
                let start = entry.start + (lo * row) as u64;
                let read = files
                    .read_range(&entry.file, start, (hi - lo) * row)
                    .await?;
                let bytes = match head_dim {
                    Some(hd) => (r0..r0 + n)
                        .flat_map(|r| {
                            let (head, i) = (r / hd, r % hd);
                            let at = head * hd + 2 * (i % (hd / 2)) + i / (hd / 2) - lo;
                            read[at * row..(at + 1) * row].iter().copied()
                        })
                        .collect::<Vec<u8>>()
                        .into(),
                    None => read,
                };
                if let Some(float) = FloatType::of_ggml(ggml) {
                    if let Some(bad) = float.find_non_finite(&bytes) {
                        return Err(non_finite(name, &entry.file, bad, cols));
                    }
                }
                let packed = format
                    .pack_ggml_rows(ggml, &bytes, cols, r0)
                    .map_err(|e| Error::file(&entry.file, format!("tensor `{name}`: {e}")))?;
                Ok((packed, (hi - lo) * row))
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
        let dtype = FloatType::of_tensor(entry.dtype).ok_or_else(|| Error::TensorDtype {
            name: name.to_string(),
            dtype: entry.dtype.to_string(),
            expected: "F32, F16 or BF16".into(),
        })?;
        Ok((entry, dtype))
    }

    /// Where the rows of weight matrix `name` (`rows` x `cols`) come from, checked for presence,
    /// shape and dtype: a float tensor, or, in a quantized checkpoint, integer data and f16 scales.
    pub fn source(&self, name: &str, rows: usize, cols: usize) -> Result<Source<'_>> {
        let entry = self.tensor(name)?;
        if let TensorType::Ggml(ggml) = entry.dtype {
            Self::expect_shape(entry, name, &[rows, cols])?;
            if Format::of_ggml(ggml).is_none() {
                return Err(Error::TensorDtype {
                    name: name.to_string(),
                    dtype: ggml.name().to_string(),
                    expected: Format::ggml_names(),
                });
            }
            let head_dim = self
                .gguf
                .as_ref()
                .and_then(|g| g.interleaved.contains(name).then_some(self.config.head_dim));
            return Ok(Source::Ggml {
                entry,
                ggml,
                cols,
                head_dim,
            });
        }
        let Some(q) = self.config.quantization else {
            Self::expect_shape(entry, name, &[rows, cols])?;
            let dtype = FloatType::of_tensor(entry.dtype).ok_or_else(|| Error::TensorDtype {
                name: name.to_string(),
                dtype: entry.dtype.to_string(),
                expected: "F32, F16 or BF16".into(),
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
        if entry.dtype != TensorType::Safetensors(dtype) {
            return Err(Error::TensorDtype {
                name: name.to_string(),
                dtype: entry.dtype.to_string(),
                expected: expected.into(),
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
        if scales.dtype != TensorType::Safetensors(safetensors::Dtype::F16) {
            return Err(Error::TensorDtype {
                name: scale,
                dtype: scales.dtype.to_string(),
                expected: "F16 (quantization scales)".into(),
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
