//! Writes a quantized checkpoint: every weight matrix (embedding and lm_head included) as integer
//! values plus f16 scales per group of 32, norms as they were, and a config.json whose
//! `quantization_config` says so. The result loads like any checkpoint, natively or in a browser,
//! into exactly the weights that quantizing on load gives.
//!
//! Tensors, for a weight `W` of shape [rows, cols]:
//! - q8: `W` as I8 [rows, cols], and `W_scale` as F16 [rows, ceil(cols / 32)]; x = q * scale.
//! - q4: `W` as U8 [rows, 16 * ceil(cols / 32)], 16 bytes per group of 32 (byte i holds element
//!   i in its low nibble and element i + 16 in its high one, as llama.cpp's Q4_0), each stored as
//!   q + 8 in 0..15; and `W_scale` as above; x = (q - 8) * scale.
//!
//! Output goes through a callback as (file name, bytes) appended in order, one file after the
//! other, so the same code writes a folder on disk or files in memory (the browser tests).

use crate::checkpoint::{read_text, Checkpoint, Progress, INDEX};
use crate::config::QUANT_METHOD;
use crate::error::{Error, Result};
use crate::files::{Files, MAX_TOKENIZER_BYTES};
use crate::format::{groups, scale_name, FloatType, Format, Quantization, GROUP};
use crate::llama::matrix_specs;
use serde_json::json;

/// The files copied unchanged next to the weights.
const COPIED: [&str; 5] = [
    "generation_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    crate::vocab::FREQUENCIES_FILE,
];

/// Largest shard written by default: under the ~2 GiB single allocations browsers allow.
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 2_000_000_000;

/// One output tensor.
struct OutTensor {
    name: String,
    dtype: &'static str,
    shape: Vec<usize>,
    bytes: u64,
    what: What,
}

enum What {
    /// Quantized values of a weight matrix (rows, cols); its scales follow as the next tensor.
    Values {
        source: String,
        rows: usize,
        cols: usize,
    },
    /// The scales collected while writing the values before them.
    Scales,
    /// A tensor copied as it is (norm vectors).
    Copy { source: String },
}

/// What was written.
#[derive(Debug, Clone, Default)]
pub struct QuantizeReport {
    /// (file name, bytes) of every file written.
    pub files: Vec<(String, u64)>,
    /// Bytes of weights read and written.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

fn dtype_name(dtype: FloatType) -> &'static str {
    match dtype {
        FloatType::F32 => "F32",
        FloatType::F16 => "F16",
        FloatType::Bf16 => "BF16",
    }
}

/// Quantizes the checkpoint in `files` to `format`, handing every output file to `emit` as
/// appended chunks. Reads at most `staging` bytes of weights at a time.
pub async fn quantize(
    files: &impl Files,
    quantization: Quantization,
    max_shard_bytes: u64,
    staging: usize,
    mut emit: impl FnMut(&str, &[u8]) -> Result<()>,
    mut progress: impl FnMut(Progress),
) -> Result<QuantizeReport> {
    let checkpoint = Checkpoint::open(files).await?;
    let config = &checkpoint.config;
    if let Some(gguf) = &checkpoint.gguf {
        return Err(Error::file(
            &gguf.file,
            "`layerskip quantize` writes Hugging Face folders from Hugging Face folders; a GGUF file loads as it is (--quantize q8|q4 converts an F32/F16/BF16 one while loading)",
        ));
    }
    if let Some(have) = config.quantization {
        return Err(Error::Invalid(format!(
            "the checkpoint is already quantized ({have}); quantize its f32, f16 or bf16 original"
        )));
    }
    let format = Format::from(quantization);
    let h = config.hidden_size;

    // The output tensors in the order Hugging Face writes them, each matrix's scales after it.
    let mut out: Vec<OutTensor> = vec![];
    let add_matrix = |out: &mut Vec<OutTensor>, source: &str, rows: usize, cols: usize| {
        let dtype = match quantization {
            Quantization::Q8 => "I8",
            Quantization::Q4 => "U8",
        };
        let width = format.file_row_bytes(cols);
        out.push(OutTensor {
            name: source.to_string(),
            dtype,
            shape: vec![rows, width],
            bytes: (rows * width) as u64,
            what: What::Values {
                source: source.to_string(),
                rows,
                cols,
            },
        });
        out.push(OutTensor {
            name: scale_name(source),
            dtype: "F16",
            shape: vec![rows, groups(cols)],
            bytes: (rows * format.file_scale_bytes(cols)) as u64,
            what: What::Scales,
        });
    };
    let add_copy = |out: &mut Vec<OutTensor>, source: &str| -> Result<()> {
        let (entry, dtype) = checkpoint.vector(source, h)?;
        out.push(OutTensor {
            name: source.to_string(),
            dtype: dtype_name(dtype),
            shape: vec![h],
            bytes: entry.len,
            what: What::Copy {
                source: source.to_string(),
            },
        });
        Ok(())
    };
    let mut bytes_in = 0u64;
    for spec in matrix_specs(config) {
        for p in &spec.pieces {
            let source = checkpoint.source(&p.tensor, p.rows, p.cols)?;
            bytes_in += source.file_bytes();
            if p.tensor.contains(".self_attn.q_proj.") {
                let layer = p.tensor.trim_end_matches(".self_attn.q_proj.weight");
                add_copy(&mut out, &format!("{layer}.input_layernorm.weight"))?;
            }
            if p.tensor.contains(".mlp.gate_proj.") {
                let layer = p.tensor.trim_end_matches(".mlp.gate_proj.weight");
                add_copy(
                    &mut out,
                    &format!("{layer}.post_attention_layernorm.weight"),
                )?;
            }
            add_matrix(&mut out, &p.tensor, p.rows, p.cols);
        }
    }
    add_copy(&mut out, "model.norm.weight")?;
    bytes_in += out
        .iter()
        .filter(|t| matches!(t.what, What::Copy { .. }))
        .map(|t| t.bytes)
        .sum::<u64>();

    // Shards of at most max_shard_bytes (a tensor and its scales stay together).
    let mut shards: Vec<Vec<OutTensor>> = vec![vec![]];
    let mut size = 0u64;
    for t in out {
        let last = shards
            .last_mut()
            .ok_or_else(|| Error::Invalid("no shard".into()))?;
        let starts_pair = !matches!(t.what, What::Scales);
        if starts_pair && !last.is_empty() && size + t.bytes > max_shard_bytes {
            shards.push(vec![]);
            size = 0;
        }
        size += t.bytes;
        if let Some(shard) = shards.last_mut() {
            shard.push(t);
        }
    }
    let n = shards.len();
    let shard_name = |i: usize| match n {
        1 => "model.safetensors".to_string(),
        _ => format!("model-{:05}-of-{n:05}.safetensors", i + 1),
    };

    let mut report = QuantizeReport {
        bytes_in,
        ..QuantizeReport::default()
    };
    let mut done = 0u64;
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let name = shard_name(i);
        let mut header = serde_json::Map::new();
        header.insert(
            "__metadata__".into(),
            json!({"format": "pt", "quantization": quantization.name()}),
        );
        let mut at = 0u64;
        for t in shard {
            header.insert(
                t.name.clone(),
                json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [at, at + t.bytes]}),
            );
            weight_map.insert(t.name.clone(), json!(name));
            at += t.bytes;
        }
        let mut header = serde_json::Value::Object(header).to_string().into_bytes();
        // Pad with spaces so the data starts 8-byte aligned, as the safetensors writer does.
        header.resize(header.len().next_multiple_of(8), b' ');
        emit(&name, &(header.len() as u64).to_le_bytes())?;
        emit(&name, &header)?;
        let mut scales: Vec<u8> = vec![];
        for t in shard {
            match &t.what {
                What::Copy { source } => {
                    let (entry, _) = checkpoint.vector(source, h)?;
                    let bytes = files
                        .read_range(&entry.file, entry.start, entry.len as usize)
                        .await?;
                    emit(&name, &bytes)?;
                    done += entry.len;
                }
                What::Values { source, rows, cols } => {
                    let src = checkpoint.source(source, *rows, *cols)?;
                    let per_row = src.file_row_bytes()
                        + 4 * cols
                        + format.row_data_bytes(*cols)
                        + format.row_scale_bytes(*cols);
                    let chunk = (staging / per_row.max(1)).max(1);
                    scales.clear();
                    for r0 in (0..*rows).step_by(chunk) {
                        let n = chunk.min(rows - r0);
                        let (packed, read) = src.read_rows(files, source, r0, n, format).await?;
                        let (data, s) = format.file_rows(&packed, *cols);
                        emit(&name, &data)?;
                        scales.extend(s);
                        done += read as u64;
                        progress(Progress {
                            done,
                            total: bytes_in,
                        });
                    }
                }
                What::Scales => emit(&name, &scales)?,
            }
        }
        report.files.push((name, 8 + header.len() as u64 + at));
        report.bytes_out += at;
    }

    let mut config_json: serde_json::Value = serde_json::from_str(
        &read_text(files, "config.json")
            .await?
            .ok_or_else(|| Error::file("config.json", "missing"))?,
    )
    .map_err(|e| Error::file("config.json", e))?;
    config_json["quantization_config"] = json!({
        "quant_method": QUANT_METHOD,
        "format": quantization.name(),
        "group_size": GROUP,
    });
    let text =
        serde_json::to_string_pretty(&config_json).map_err(|e| Error::file("config.json", e))?;
    emit("config.json", text.as_bytes())?;
    report.files.push(("config.json".into(), text.len() as u64));
    if n > 1 {
        let index = json!({"metadata": {"total_size": report.bytes_out}, "weight_map": weight_map});
        let text = serde_json::to_string_pretty(&index).map_err(|e| Error::file(INDEX, e))?;
        emit(INDEX, text.as_bytes())?;
        report.files.push((INDEX.into(), text.len() as u64));
    }
    let tokenizer = files
        .read_capped("tokenizer.json", MAX_TOKENIZER_BYTES)
        .await?
        .ok_or_else(|| Error::file("tokenizer.json", "missing"))?;
    emit("tokenizer.json", &tokenizer)?;
    report
        .files
        .push(("tokenizer.json".into(), tokenizer.len() as u64));
    for name in COPIED {
        if let Some(text) = read_text(files, name).await? {
            emit(name, text.as_bytes())?;
            report.files.push((name.into(), text.len() as u64));
        }
    }
    Ok(report)
}
