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
        .filter_map(|name| name.strip_prefix("model.layers.")?.split('.').next()?.parse().ok())
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

/// Element type of a weight tensor as the file stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    fn of(dtype: safetensors::Dtype) -> Option<Self> {
        match dtype {
            safetensors::Dtype::F32 => Some(DType::F32),
            safetensors::Dtype::F16 => Some(DType::F16),
            safetensors::Dtype::BF16 => Some(DType::BF16),
            _ => None,
        }
    }
}

/// What a weight tensor is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Embed,
    LmHead,
    FinalNorm,
    InputNorm(usize),
    PostNorm(usize),
    Q(usize),
    K(usize),
    V(usize),
    O(usize),
    Gate(usize),
    Up(usize),
    Down(usize),
}

/// A tensor the model needs: its name in the checkpoint, its role and its expected shape.
#[derive(Debug, Clone)]
pub struct WeightSpec {
    pub name: String,
    pub slot: Slot,
    pub shape: Vec<usize>,
}

/// Every tensor a Llama model of this config reads. Without `lm_head.weight` in a tied
/// checkpoint the exit head reuses the embedding, as transformers does.
pub fn weight_specs(config: &Config) -> Vec<WeightSpec> {
    let (h, i, v) = (
        config.hidden_size,
        config.intermediate_size,
        config.vocab_size,
    );
    let spec = |name: String, slot, shape: &[usize]| WeightSpec {
        name,
        slot,
        shape: shape.to_vec(),
    };
    let mut specs = vec![spec(
        "model.embed_tokens.weight".into(),
        Slot::Embed,
        &[v, h],
    )];
    for l in 0..config.num_hidden_layers {
        let p = format!("model.layers.{l}");
        specs.extend([
            spec(
                format!("{p}.input_layernorm.weight"),
                Slot::InputNorm(l),
                &[h],
            ),
            spec(
                format!("{p}.self_attn.q_proj.weight"),
                Slot::Q(l),
                &[config.q_dim(), h],
            ),
            spec(
                format!("{p}.self_attn.k_proj.weight"),
                Slot::K(l),
                &[config.kv_dim(), h],
            ),
            spec(
                format!("{p}.self_attn.v_proj.weight"),
                Slot::V(l),
                &[config.kv_dim(), h],
            ),
            spec(
                format!("{p}.self_attn.o_proj.weight"),
                Slot::O(l),
                &[h, config.q_dim()],
            ),
            spec(
                format!("{p}.post_attention_layernorm.weight"),
                Slot::PostNorm(l),
                &[h],
            ),
            spec(format!("{p}.mlp.gate_proj.weight"), Slot::Gate(l), &[i, h]),
            spec(format!("{p}.mlp.up_proj.weight"), Slot::Up(l), &[i, h]),
            spec(format!("{p}.mlp.down_proj.weight"), Slot::Down(l), &[h, i]),
        ]);
    }
    specs.push(spec("model.norm.weight".into(), Slot::FinalNorm, &[h]));
    if !config.tie_word_embeddings {
        specs.push(spec("lm_head.weight".into(), Slot::LmHead, &[v, h]));
    }
    specs
}

/// Load progress: bytes of weights read so far and in all.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

impl Checkpoint {
    /// The entry of a needed tensor, checked for presence, shape and dtype.
    pub fn entry(&self, spec: &WeightSpec) -> Result<(&TensorEntry, DType)> {
        let entry = self
            .tensors
            .get(&spec.name)
            .ok_or_else(|| Error::MissingTensor(spec.name.clone()))?;
        if entry.shape != spec.shape {
            return Err(Error::TensorShape {
                name: spec.name.clone(),
                got: entry.shape.clone(),
                expected: spec.shape.clone(),
            });
        }
        let dtype = DType::of(entry.dtype).ok_or_else(|| Error::TensorDtype {
            name: spec.name.clone(),
            dtype: entry.dtype.to_string(),
        })?;
        Ok((entry, dtype))
    }

    /// Checks every needed tensor first (so a bad checkpoint fails before anything is uploaded),
    /// then hands them to `sink` one at a time, file by file, each checked for NaN and infinity.
    pub async fn load_weights(
        &self,
        files: &impl Files,
        mut sink: impl FnMut(&WeightSpec, DType, &[u8]) -> Result<()>,
        mut progress: impl FnMut(Progress),
    ) -> Result<()> {
        let specs = weight_specs(&self.config);
        let mut total = 0u64;
        for spec in &specs {
            total += self.entry(spec)?.0.len;
        }
        let mut done = 0u64;
        progress(Progress { done, total });
        for file in &self.files {
            for spec in &specs {
                let (entry, dtype) = self.entry(spec)?;
                if &entry.file != file {
                    continue;
                }
                let len = usize::try_from(entry.len)
                    .map_err(|_| Error::file(file, format!("tensor `{}` is too large", spec.name)))?;
                let bytes = files.read_range(file, entry.start, len).await?;
                check_finite(dtype, &bytes).map_err(|(index, value)| Error::NonFiniteWeight {
                    name: spec.name.clone(),
                    file: file.clone(),
                    value,
                    index,
                })?;
                sink(spec, dtype, &bytes)?;
                done += entry.len;
                progress(Progress { done, total });
            }
        }
        Ok(())
    }
}

/// The first NaN or infinity in little-endian values of `dtype`, as (element, value).
pub fn check_finite(dtype: DType, bytes: &[u8]) -> std::result::Result<(), (usize, f32)> {
    // Half formats are checked on their bits (an all-ones exponent), without converting.
    let half = |mask: u16| {
        bytes
            .chunks_exact(2)
            .position(|b| u16::from_le_bytes([b[0], b[1]]) & mask == mask)
    };
    let at = match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .position(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()),
        DType::F16 => half(0x7c00),
        DType::BF16 => half(0x7f80),
    };
    match at {
        None => Ok(()),
        Some(i) => {
            let size = dtype.size();
            Err((i, to_f32(dtype, &bytes[i * size..(i + 1) * size])[0]))
        }
    }
}

/// Converts one tensor's little-endian bytes to f32.
pub fn to_f32(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
            .collect(),
        DType::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
    }
}

/// IEEE half to single precision, subnormals and infinities included.
fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: value = frac * 2^-24.
            let v = frac as f32 * 2f32.powi(-24);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, _) => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 112) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversions() {
        let f16 = [0x3c00u16, 0xc000, 0x0001, 0x7bff, 0x8000];
        let bytes: Vec<u8> = f16.iter().flat_map(|h| h.to_le_bytes()).collect();
        assert_eq!(
            to_f32(DType::F16, &bytes),
            vec![1.0, -2.0, 2f32.powi(-24), 65504.0, -0.0]
        );
        let bf16 = [0x3f80u16, 0xc040];
        let bytes: Vec<u8> = bf16.iter().flat_map(|h| h.to_le_bytes()).collect();
        assert_eq!(to_f32(DType::BF16, &bytes), vec![1.0, -3.0]);
    }

    #[test]
    fn non_finite_values_are_found_in_every_dtype() {
        let f32s: Vec<u8> = [1.0f32, f32::NAN].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(check_finite(DType::F32, &f32s).unwrap_err().0, 1);
        let f16s: Vec<u8> = [0x3c00u16, 0x7bff, 0xfc00].iter().flat_map(|h| h.to_le_bytes()).collect();
        assert_eq!(check_finite(DType::F16, &f16s).unwrap_err(), (2, f32::NEG_INFINITY));
        let bf16s: Vec<u8> = [0x7f7fu16, 0x7fc0].iter().flat_map(|h| h.to_le_bytes()).collect();
        let (i, v) = check_finite(DType::BF16, &bf16s).unwrap_err();
        assert!(i == 1 && v.is_nan());
        assert!(check_finite(DType::F16, &f16s[..4]).is_ok());
    }
}
