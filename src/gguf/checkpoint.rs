//! A GGUF file as the parts of a [`crate::checkpoint::Checkpoint`]: llama.cpp's `llama.*`
//! metadata as the config.json it stands for, its tensors under Hugging Face's names (so the
//! model code has one definition of Llama), and what the file carries beside the weights: the
//! tokenizer (rebuilt as a tokenizer.json), the chat template and the special tokens' text.
//!
//! llama.cpp's converter stores q_proj and k_proj with each head's rows interleaved for its
//! rotary kernels; those tensors are marked so their rows are read back into Hugging Face's
//! order (see [`crate::checkpoint::Source::Ggml`]). Quantized rows stay quantized: a row
//! permutation moves whole rows.

use super::{Gguf, Value};
use crate::config::{Config, RopeScaling};
use crate::error::{Error, Result};
use crate::files::Files;
use crate::header::{TensorEntry, TensorType};
use serde_json::json;
use std::collections::{HashMap, HashSet};

/// What a GGUF file brings beside its weights.
#[derive(Debug, Clone)]
pub struct Extras {
    /// The file's name.
    pub file: String,
    /// The tokenizer as a Hugging Face tokenizer.json.
    pub tokenizer_json: Vec<u8>,
    /// `tokenizer.chat_template`, if any.
    pub chat_template: Option<String>,
    /// The text of the BOS and EOS tokens (for chat templates), empty when the file names none.
    pub bos_token: String,
    pub eos_token: String,
    /// Tensors (by Hugging Face name) whose rows are in llama.cpp's rotary order.
    pub interleaved: HashSet<String>,
}

/// GGUF metadata keys and the config.json fields they stand for (errors name the GGUF key).
const KEYS: [(&str, &str); 10] = [
    ("embedding_length", "hidden_size"),
    ("feed_forward_length", "intermediate_size"),
    ("block_count", "num_hidden_layers"),
    ("attention.head_count", "num_attention_heads"),
    ("attention.head_count_kv", "num_key_value_heads"),
    ("attention.key_length", "head_dim"),
    ("attention.layer_norm_rms_epsilon", "rms_norm_eps"),
    ("rope.freq_base", "rope_theta"),
    ("context_length", "max_position_embeddings"),
    ("vocab_size", "vocab_size"),
];

/// The Hugging Face name of a llama.cpp tensor name, and whether its rows are interleaved for
/// rotary embeddings (`None` for tensors the runtime does not use).
fn hf_name(name: &str) -> Option<(String, bool)> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(n) = fixed {
        return Some((n.to_string(), false));
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (hf, interleaved) = match part {
        "attn_norm.weight" => ("input_layernorm", false),
        "ffn_norm.weight" => ("post_attention_layernorm", false),
        "attn_q.weight" => ("self_attn.q_proj", true),
        "attn_k.weight" => ("self_attn.k_proj", true),
        "attn_v.weight" => ("self_attn.v_proj", false),
        "attn_output.weight" => ("self_attn.o_proj", false),
        "ffn_gate.weight" => ("mlp.gate_proj", false),
        "ffn_up.weight" => ("mlp.up_proj", false),
        "ffn_down.weight" => ("mlp.down_proj", false),
        _ => return None,
    };
    Some((format!("model.layers.{layer}.{hf}.weight"), interleaved))
}

/// What [`open`] reads from a GGUF file (`Checkpoint::open` makes it a checkpoint: the GGUF
/// reader sits below the checkpoint, so it does not build one).
pub struct Opened {
    pub config: Config,
    /// The file's EOS, EOT and EOM ids.
    pub eos_token_ids: Vec<u32>,
    /// By Hugging Face name.
    pub tensors: HashMap<String, TensorEntry>,
    pub extras: Extras,
}

/// Opens GGUF file `name`: reads and checks its header, maps its metadata to a config and its
/// tensors to Hugging Face names, and rebuilds its tokenizer.
pub async fn open(files: &impl Files, name: &str) -> Result<Opened> {
    let gguf = super::read(files, name).await?;
    let arch = gguf.str("general.architecture")?;
    if arch != "llama" {
        return Err(Error::Field {
            file: name.into(),
            field: "general.architecture".into(),
            why: format!("= {arch}: only llama models are supported"),
        });
    }
    let tokens = match gguf.get("tokenizer.ggml.tokens") {
        Some(Value::Array(tokens)) => tokens.len(),
        _ => 0,
    };
    let mut tensors = HashMap::new();
    let mut interleaved = HashSet::new();
    let mut rope_freqs = None;
    for t in &gguf.tensors {
        // GGUF lists dimensions innermost first: [cols, rows].
        let shape: Vec<usize> = t
            .dims
            .iter()
            .rev()
            .map(|&d| usize::try_from(d))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| {
                Error::file(
                    name,
                    format!("tensor `{}` is too large for this platform", t.name),
                )
            })?;
        let entry = TensorEntry {
            file: name.to_string(),
            dtype: TensorType::Ggml(t.ggml_type),
            shape,
            start: t.start,
            len: t.len,
        };
        if t.name == "rope_freqs.weight" {
            rope_freqs = Some(entry);
            continue;
        }
        let Some((hf, rotary)) = hf_name(&t.name) else {
            continue;
        };
        if rotary {
            interleaved.insert(hf.clone());
        }
        tensors.insert(hf, entry);
    }

    let mut config = config(&gguf, name, tokens, &tensors, rope_freqs, files).await?;
    // What `info` shows as the dtype: the file's tensor types.
    let mut types: Vec<&str> = gguf.tensors.iter().map(|t| t.ggml_type.name()).collect();
    types.sort_unstable();
    types.dedup();
    config.dtype = Some(format!("GGUF {}", types.join("+")));
    let held = (0..)
        .take_while(|l| tensors.contains_key(&format!("model.layers.{l}.input_layernorm.weight")))
        .count();
    if held != config.num_hidden_layers {
        return Err(Error::Field {
            file: name.into(),
            field: "llama.block_count".into(),
            why: format!(
                "= {} but the file holds {held} layers (blk.0..{held})",
                config.num_hidden_layers
            ),
        });
    }

    let tokenizer_json = serde_json::to_vec(&super::tokenizer::tokenizer_json(&gguf)?)
        .map_err(|e| Error::file(name, format!("tokenizer: {e}")))?;
    let special = super::tokenizer::special_tokens(&gguf)?;
    let mut eos_token_ids = vec![];
    for key in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        if let Some(id) = gguf.opt_u64(key)? {
            let id = u32::try_from(id).map_err(|_| Error::Field {
                file: name.into(),
                field: key.into(),
                why: format!("= {id} is not a token id"),
            })?;
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
    }
    let extras = Extras {
        file: name.to_string(),
        tokenizer_json,
        chat_template: super::tokenizer::chat_template(&gguf)?.map(str::to_string),
        bos_token: special.bos.unwrap_or_default(),
        eos_token: special.eos.unwrap_or_default(),
        interleaved,
    };
    Ok(Opened {
        config,
        eos_token_ids,
        tensors,
        extras,
    })
}

/// The config the metadata stands for, checked as config.json is (errors name the GGUF key).
async fn config(
    gguf: &Gguf,
    name: &str,
    tokens: usize,
    tensors: &HashMap<String, TensorEntry>,
    rope_freqs: Option<TensorEntry>,
    files: &impl Files,
) -> Result<Config> {
    let key = |k: &str| format!("llama.{k}");
    let mut c = serde_json::Map::new();
    c.insert("model_type".into(), json!("llama"));
    for (k, field) in KEYS {
        let value = match k {
            "attention.layer_norm_rms_epsilon" | "rope.freq_base" => {
                gguf.opt_f64(&key(k))?.map(|v| json!(v))
            }
            _ => gguf.opt_u64(&key(k))?.map(|v| json!(v)),
        };
        if let Some(v) = value {
            c.insert(field.into(), v);
        }
    }
    // Older files have no llama.vocab_size: the tokenizer's size is the vocabulary.
    if !c.contains_key("vocab_size") && tokens > 0 {
        c.insert("vocab_size".into(), json!(tokens));
    }
    if let (Some(dims), Some(head_dim)) = (
        gguf.opt_u64(&key("rope.dimension_count"))?,
        c.get("head_dim").and_then(|v| v.as_u64()).or_else(|| {
            let h = c.get("hidden_size")?.as_u64()?;
            let n = c.get("num_attention_heads")?.as_u64()?;
            (n > 0).then(|| h / n)
        }),
    ) {
        if dims != head_dim {
            return Err(Error::Unsupported {
                field: "llama.rope.dimension_count",
                value: dims.to_string(),
                why: "rotary embeddings over part of a head are not supported",
            });
        }
    }
    match gguf.opt_str(&key("rope.scaling.type"))? {
        None | Some("none") => {}
        Some("linear") => {
            let factor = gguf.f64(&key("rope.scaling.factor"))?;
            c.insert(
                "rope_scaling".into(),
                json!({"rope_type": "linear", "factor": factor}),
            );
        }
        Some(other) => {
            return Err(Error::Unsupported {
                field: "llama.rope.scaling.type",
                value: other.into(),
                why: "supported rope scaling types are none and linear (and Llama 3's rope_freqs)",
            })
        }
    }
    c.insert(
        "tie_word_embeddings".into(),
        json!(!tensors.contains_key("lm_head.weight")),
    );
    if let Some(id) = gguf.opt_u64("tokenizer.ggml.bos_token_id")? {
        c.insert("bos_token_id".into(), json!(id));
    }
    let text = serde_json::Value::Object(c).to_string();
    let mut config = Config::from_json_named(name, &text).map_err(|e| match e {
        // Name the GGUF key the user can find in the file.
        Error::Field { file, field, why } => Error::Field {
            file,
            field: KEYS
                .iter()
                .find(|(_, hf)| *hf == field)
                .map_or(field, |(k, _)| key(k)),
            why,
        },
        other => other,
    })?;
    if let Some(entry) = rope_freqs {
        let half = config.head_dim / 2;
        if entry.shape != [half] || entry.dtype != TensorType::Ggml(super::GgmlType::F32) {
            return Err(Error::file(
                name,
                format!(
                    "tensor `rope_freqs.weight` is {} {:?}; expected F32 [{half}] (one factor per rotary frequency)",
                    entry.dtype, entry.shape
                ),
            ));
        }
        let bytes = files.read_range(&entry.file, entry.start, 4 * half).await?;
        let factors: Vec<f64> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
            .collect();
        if let Some(bad) = factors.iter().find(|f| !(f.is_finite() && **f > 0.0)) {
            return Err(Error::file(
                name,
                format!(
                    "tensor `rope_freqs.weight` holds {bad}; factors must be finite and above 0"
                ),
            ));
        }
        config.rope_scaling = RopeScaling::Factors(factors);
    }
    Ok(config)
}
