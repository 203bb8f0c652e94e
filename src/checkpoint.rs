//! A Hugging Face checkpoint as a set of named files: config.json, generation_config.json,
//! tokenizer.json and safetensors weights (one file or shards listed in model.safetensors.index.json).
//!
//! Weights are read one tensor at a time by byte range, never a whole file at once, so the host
//! never holds more than the tensor being uploaded; the same code serves files on disk, bytes
//! embedded in the binary and (through async reads) the browser.

use crate::config::Config;
use crate::error::{Error, Result};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

/// Element type of a weight tensor.
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
}

/// Where checkpoint files come from. Reads are async so the browser can fetch them.
#[allow(async_fn_in_trait)]
pub trait Files {
    /// A whole (small) file, or `None` when there is no such file.
    async fn read(&self, name: &str) -> Result<Option<Cow<'_, [u8]>>>;
    /// Size of a file in bytes.
    async fn size(&self, name: &str) -> Result<u64>;
    /// `len` bytes of a file from `start`.
    async fn read_range(&self, name: &str, start: u64, len: usize) -> Result<Cow<'_, [u8]>>;
}

/// Files held in memory (the embedded default model, or buffers handed over by JavaScript).
#[derive(Default)]
pub struct MemoryFiles(pub HashMap<String, Cow<'static, [u8]>>);

impl MemoryFiles {
    fn get(&self, name: &str) -> Result<&[u8]> {
        self.0
            .get(name)
            .map(|b| b.as_ref())
            .ok_or_else(|| Error::file(name, "no such file"))
    }
}

impl Files for MemoryFiles {
    async fn read(&self, name: &str) -> Result<Option<Cow<'_, [u8]>>> {
        Ok(self.0.get(name).map(|b| Cow::Borrowed(b.as_ref())))
    }
    async fn size(&self, name: &str) -> Result<u64> {
        Ok(self.get(name)?.len() as u64)
    }
    async fn read_range(&self, name: &str, start: u64, len: usize) -> Result<Cow<'_, [u8]>> {
        let bytes = self.get(name)?;
        let start = start as usize;
        bytes
            .get(start..start + len)
            .map(Cow::Borrowed)
            .ok_or_else(|| {
                Error::file(
                    name,
                    format!(
                        "truncated: needs bytes {start}..{} but has {}",
                        start + len,
                        bytes.len()
                    ),
                )
            })
    }
}

/// A checkpoint directory on disk.
#[cfg(not(target_arch = "wasm32"))]
pub struct DirFiles(pub std::path::PathBuf);

#[cfg(not(target_arch = "wasm32"))]
impl Files for DirFiles {
    async fn read(&self, name: &str) -> Result<Option<Cow<'_, [u8]>>> {
        let path = self.0.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(Cow::Owned(bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::file(path.display().to_string(), e)),
        }
    }
    async fn size(&self, name: &str) -> Result<u64> {
        let path = self.0.join(name);
        std::fs::metadata(&path)
            .map(|m| m.len())
            .map_err(|e| Error::file(path.display().to_string(), e))
    }
    async fn read_range(&self, name: &str, start: u64, len: usize) -> Result<Cow<'_, [u8]>> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.0.join(name);
        let err = |e: std::io::Error| Error::file(path.display().to_string(), e);
        let mut file = std::fs::File::open(&path).map_err(err)?;
        file.seek(SeekFrom::Start(start)).map_err(err)?;
        let mut buf = vec![0u8; len];
        file.read_exact(&mut buf).map_err(|e| {
            Error::file(
                path.display().to_string(),
                format!(
                    "truncated: cannot read bytes {start}..{} ({e})",
                    start + len as u64
                ),
            )
        })?;
        Ok(Cow::Owned(buf))
    }
}

/// Where one tensor's bytes are.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub file: String,
    /// `None` for a dtype we cannot run (named in `dtype_name`), an error only if the tensor is needed.
    pub dtype: Option<DType>,
    pub dtype_name: String,
    pub shape: Vec<usize>,
    /// Absolute byte offset in the file.
    pub start: u64,
    pub len: usize,
}

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

/// Parses a safetensors header (8-byte little-endian length, then JSON) of `file`, checking that
/// every tensor's bytes lie inside the file and match its shape and dtype.
async fn read_header(
    files: &impl Files,
    file: &str,
    out: &mut HashMap<String, TensorEntry>,
) -> Result<()> {
    let bad = |why: String| Error::Safetensors {
        file: file.into(),
        why,
    };
    let size = files.size(file).await?;
    if size < 8 {
        return Err(bad(format!("only {size} bytes, too short for a header")));
    }
    let n = u64::from_le_bytes(
        files
            .read_range(file, 0, 8)
            .await?
            .as_ref()
            .try_into()
            .unwrap(),
    );
    if n > 100 << 20 || 8 + n > size {
        return Err(bad(format!(
            "header length {n} does not fit in the file ({size} bytes)"
        )));
    }
    let header = files.read_range(file, 8, n as usize).await?;
    let json: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
    for (name, value) in json {
        if name == "__metadata__" {
            continue;
        }
        let info: safetensors::tensor::TensorInfo =
            serde_json::from_value(value).map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
        let (begin, end) = info.data_offsets;
        let numel: usize = info.shape.iter().product();
        let dtype = match info.dtype {
            safetensors::Dtype::F32 => Some(DType::F32),
            safetensors::Dtype::F16 => Some(DType::F16),
            safetensors::Dtype::BF16 => Some(DType::BF16),
            _ => None,
        };
        let start = 8 + n + begin as u64;
        if end < begin || start + (end - begin) as u64 > size {
            return Err(bad(format!(
                "tensor `{name}` needs bytes {start}..{} but the file has {size} (truncated?)",
                8 + n + end as u64
            )));
        }
        if let Some(dtype) = dtype {
            if numel * dtype.size() != end - begin {
                return Err(bad(format!(
                    "tensor `{name}`: shape {:?} needs {} bytes but offsets span {}",
                    info.shape,
                    numel * dtype.size(),
                    end - begin
                )));
            }
        }
        out.insert(
            name,
            TensorEntry {
                file: file.into(),
                dtype,
                dtype_name: format!("{:?}", info.dtype),
                shape: info.shape,
                start,
                len: end - begin,
            },
        );
    }
    Ok(())
}

fn utf8<'a>(name: &str, bytes: &'a [u8]) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|e| Error::file(name, format!("not UTF-8: {e}")))
}

impl Checkpoint {
    pub async fn open(files: &impl Files) -> Result<Self> {
        let config = files
            .read("config.json")
            .await?
            .ok_or_else(|| Error::file("config.json", "missing"))?;
        let config = Config::from_json(utf8("config.json", &config)?)?;

        let mut eos_token_ids = config.eos_token_ids.clone();
        let mut default_exit_layer = None;
        if let Some(gen) = files.read("generation_config.json").await? {
            let v: serde_json::Value = serde_json::from_slice(&gen).map_err(|e| {
                Error::file("generation_config.json", format!("not valid JSON: {e}"))
            })?;
            default_exit_layer = v
                .get("assistant_early_exit")
                .and_then(serde_json::Value::as_u64)
                .map(|e| e as usize);
            for id in crate::config::token_ids(v.get("eos_token_id"), "eos_token_id")? {
                if !eos_token_ids.contains(&id) {
                    eos_token_ids.push(id);
                }
            }
        }

        let index_name = "model.safetensors.index.json";
        let files_list = match files.read(index_name).await? {
            Some(index) => {
                let v: serde_json::Value = serde_json::from_slice(&index)
                    .map_err(|e| Error::file(index_name, format!("not valid JSON: {e}")))?;
                let map = v
                    .get("weight_map")
                    .and_then(|m| m.as_object())
                    .ok_or_else(|| Error::file(index_name, "no `weight_map` object"))?;
                let mut list: Vec<String> = Vec::new();
                for file in map.values() {
                    let file = file.as_str().ok_or_else(|| {
                        Error::file(
                            index_name,
                            format!("weight_map value {file} is not a file name"),
                        )
                    })?;
                    if !list.iter().any(|f| f == file) {
                        list.push(file.to_string());
                    }
                }
                list.sort();
                list
            }
            None => vec!["model.safetensors".to_string()],
        };
        let mut tensors = HashMap::new();
        for file in &files_list {
            read_header(files, file, &mut tensors).await?;
        }
        Ok(Self {
            config,
            eos_token_ids,
            default_exit_layer,
            tensors,
            files: files_list,
        })
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
        let dtype = entry.dtype.ok_or_else(|| Error::TensorDtype {
            name: spec.name.clone(),
            dtype: entry.dtype_name.clone(),
        })?;
        Ok((entry, dtype))
    }

    /// Checks every needed tensor first (so a bad checkpoint fails before anything is uploaded),
    /// then hands them to `sink` one at a time, file by file.
    pub async fn load_weights(
        &self,
        files: &impl Files,
        mut sink: impl FnMut(&WeightSpec, DType, &[u8]) -> Result<()>,
        mut progress: impl FnMut(Progress),
    ) -> Result<()> {
        let specs = weight_specs(&self.config);
        let mut total = 0u64;
        for spec in &specs {
            total += self.entry(spec)?.0.len as u64;
        }
        let mut done = 0u64;
        progress(Progress { done, total });
        for file in &self.files {
            for spec in &specs {
                let (entry, dtype) = self.entry(spec)?;
                if &entry.file != file {
                    continue;
                }
                let bytes = files.read_range(file, entry.start, entry.len).await?;
                sink(spec, dtype, &bytes)?;
                done += entry.len as u64;
                progress(Progress { done, total });
            }
        }
        Ok(())
    }
}

/// Converts one tensor's little-endian bytes to f32.
pub fn to_f32(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
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
}
