//! `config.json` of a Hugging Face Llama checkpoint, in both the transformers-4 spelling
//! (`rope_theta`, `rope_scaling`, `torch_dtype`) and the transformers-5 one (`rope_parameters`, `dtype`).

use crate::error::{Error, Result};
use serde_json::{Map, Value};

/// How rotary frequencies are rescaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The dtype the checkpoint says it was saved in (informational; tensors carry their own).
    pub dtype: Option<String>,
}

fn usize_field(
    obj: &Map<String, Value>,
    key: &'static str,
    default: Option<usize>,
) -> Result<usize> {
    match obj.get(key) {
        None | Some(Value::Null) => {
            default.ok_or_else(|| Error::Config(format!("missing required field `{key}`")))
        }
        Some(v) => v
            .as_u64()
            .filter(|&n| n > 0)
            .map(|n| n as usize)
            .ok_or_else(|| Error::Config(format!("`{key}` must be a positive integer, got {v}"))),
    }
}

fn f64_field(obj: &Map<String, Value>, key: &str, default: Option<f64>) -> Result<f64> {
    match obj.get(key) {
        None | Some(Value::Null) => {
            default.ok_or_else(|| Error::Config(format!("missing required field `{key}`")))
        }
        Some(v) => v
            .as_f64()
            .ok_or_else(|| Error::Config(format!("`{key}` must be a number, got {v}"))),
    }
}

/// `bos_token_id` / `eos_token_id` may be an integer, a list of integers, or null.
pub(crate) fn token_ids(value: Option<&Value>, key: &str) -> Result<Vec<u32>> {
    let bad = |v: &Value| {
        Error::Config(format!(
            "`{key}` must be an integer or a list of integers, got {v}"
        ))
    };
    match value {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_u64().map(|n| n as u32).ok_or_else(|| bad(v)))
            .collect(),
        Some(v) => v.as_u64().map(|n| vec![n as u32]).ok_or_else(|| bad(v)),
    }
}

fn rope_scaling(params: Option<&Value>) -> Result<RopeScaling> {
    let obj = match params {
        None | Some(Value::Null) => return Ok(RopeScaling::None),
        Some(Value::Object(obj)) => obj,
        Some(v) => {
            return Err(Error::Config(format!(
                "rope scaling must be an object, got {v}"
            )))
        }
    };
    let kind = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: f64_field(obj, "factor", None)?,
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: f64_field(obj, "factor", None)?,
            low_freq_factor: f64_field(obj, "low_freq_factor", None)?,
            high_freq_factor: f64_field(obj, "high_freq_factor", None)?,
            original_max_position_embeddings: f64_field(
                obj,
                "original_max_position_embeddings",
                None,
            )?,
        }),
        other => Err(Error::Unsupported {
            field: "rope_type",
            value: other.to_string(),
            why: "supported rope types are default, linear and llama3",
        }),
    }
}

impl Config {
    pub fn from_json(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("not valid JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| Error::Config("the top level must be a JSON object".into()))?;

        match obj.get("model_type").and_then(Value::as_str) {
            Some("llama") => {}
            Some(other) => {
                return Err(Error::Unsupported {
                    field: "model_type",
                    value: other.into(),
                    why: "only llama checkpoints are supported",
                })
            }
            None => return Err(Error::Config("missing required field `model_type`".into())),
        }
        for key in ["attention_bias", "mlp_bias"] {
            if obj.get(key).and_then(Value::as_bool) == Some(true) {
                return Err(Error::Unsupported {
                    field: if key == "attention_bias" {
                        "attention_bias"
                    } else {
                        "mlp_bias"
                    },
                    value: "true".into(),
                    why: "Llama layers without biases only",
                });
            }
        }
        if let Some(act) = obj.get("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                return Err(Error::Unsupported {
                    field: "hidden_act",
                    value: act.into(),
                    why: "only silu (SwiGLU) is supported",
                });
            }
        }

        let hidden_size = usize_field(obj, "hidden_size", None)?;
        let num_attention_heads = usize_field(obj, "num_attention_heads", None)?;
        let num_key_value_heads =
            usize_field(obj, "num_key_value_heads", Some(num_attention_heads))?;
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(Error::Config(format!(
                "num_attention_heads ({num_attention_heads}) is not a multiple of num_key_value_heads ({num_key_value_heads})"
            )));
        }
        let head_dim = usize_field(obj, "head_dim", Some(hidden_size / num_attention_heads))?;
        if head_dim % 2 != 0 || head_dim > 256 {
            return Err(Error::Unsupported {
                field: "head_dim",
                value: head_dim.to_string(),
                why: "head_dim must be even and at most 256",
            });
        }

        // v5 folds rope_theta into rope_parameters; v4 keeps it at the top level.
        let rope_params = obj.get("rope_parameters").filter(|v| !v.is_null());
        let rope_theta = match rope_params.and_then(Value::as_object) {
            Some(p) if p.contains_key("rope_theta") => f64_field(p, "rope_theta", None)?,
            _ => f64_field(obj, "rope_theta", Some(10000.0))?,
        };
        let rope_scaling = rope_scaling(rope_params.or_else(|| obj.get("rope_scaling")))?;

        let dtype = obj
            .get("dtype")
            .or_else(|| obj.get("torch_dtype"))
            .and_then(Value::as_str)
            .map(str::to_string);

        Ok(Config {
            hidden_size,
            intermediate_size: usize_field(obj, "intermediate_size", None)?,
            num_hidden_layers: usize_field(obj, "num_hidden_layers", None)?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: f64_field(obj, "rms_norm_eps", Some(1e-6))? as f32,
            vocab_size: usize_field(obj, "vocab_size", None)?,
            max_position_embeddings: usize_field(obj, "max_position_embeddings", Some(2048))?,
            tie_word_embeddings: obj
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            rope_theta,
            rope_scaling,
            bos_token_id: token_ids(obj.get("bos_token_id"), "bos_token_id")?
                .first()
                .copied(),
            eos_token_ids: token_ids(obj.get("eos_token_id"), "eos_token_id")?,
            dtype,
        })
    }

    /// Rotary inverse frequencies, one per pair of dimensions, as transformers computes them.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let dim = self.head_dim as f64;
        (0..self.head_dim / 2)
            .map(|i| {
                let base = 1.0 / self.rope_theta.powf((2 * i) as f64 / dim);
                let f = match self.rope_scaling {
                    RopeScaling::None => base,
                    RopeScaling::Linear { factor } => base / factor,
                    RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position_embeddings: old_len,
                    } => {
                        let wavelen = 2.0 * std::f64::consts::PI / base;
                        if wavelen < old_len / high_freq_factor {
                            base
                        } else if wavelen > old_len / low_freq_factor {
                            base / factor
                        } else {
                            let smooth = (old_len / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * base / factor + smooth * base
                        }
                    }
                };
                f as f32
            })
            .collect()
    }

    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// Parameters of the checkpoint (the tied embedding counted once).
    pub fn parameter_count(&self) -> u64 {
        let (h, i, v) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.vocab_size as u64,
        );
        let attn = h * (self.q_dim() as u64) * 2 + h * (self.kv_dim() as u64) * 2;
        let layer = attn + 3 * h * i + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + self.num_hidden_layers as u64 * layer + h + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        serde_json::json!({
            "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100,
        })
    }

    fn parse(v: &Value) -> Result<Config> {
        Config::from_json(&v.to_string())
    }

    #[test]
    fn defaults_and_v4_rope() {
        let mut v = base();
        v["rope_theta"] = 500000.0.into();
        v["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 2.0});
        v["eos_token_id"] = serde_json::json!([5, 7]);
        let c = parse(&v).unwrap();
        assert_eq!(c.num_key_value_heads, 4);
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 2.0 });
        assert_eq!(c.eos_token_ids, vec![5, 7]);
        assert_eq!(c.rope_inv_freq()[0], 0.5);
    }

    #[test]
    fn v5_rope_parameters() {
        let mut v = base();
        v["rope_parameters"] = serde_json::json!({"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64});
        v["dtype"] = "bfloat16".into();
        let c = parse(&v).unwrap();
        assert_eq!(c.rope_theta, 1e4);
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { .. }));
        assert_eq!(c.dtype.as_deref(), Some("bfloat16"));
        // High frequencies (short wavelengths) are untouched, the lowest are divided by the factor.
        let f = c.rope_inv_freq();
        assert_eq!(f[0], 1.0);
        let plain = 1.0 / 1e4f64.powf(14.0 / 16.0);
        assert!((f[7] as f64 - plain / 8.0).abs() < 1e-9);
        // Wavelengths between 64/4 and 64/1 are interpolated between the two.
        let base = 1.0 / 1e4f64.powf(2.0 / 16.0);
        let smooth = (64.0 * base / (2.0 * std::f64::consts::PI) - 1.0) / 3.0;
        assert!((f[1] as f64 - ((1.0 - smooth) * base / 8.0 + smooth * base)).abs() < 1e-7);
    }

    #[test]
    fn unsupported_fields_are_named() {
        let cases = [
            (
                "model_type",
                serde_json::json!("mistral"),
                "model_type = mistral",
            ),
            (
                "attention_bias",
                serde_json::json!(true),
                "attention_bias = true",
            ),
            ("hidden_act", serde_json::json!("gelu"), "hidden_act = gelu"),
            (
                "rope_scaling",
                serde_json::json!({"rope_type": "yarn", "factor": 4.0}),
                "rope_type = yarn",
            ),
        ];
        for (key, value, expected) in cases {
            let mut v = base();
            v[key] = value;
            let err = parse(&v).unwrap_err().to_string();
            assert!(err.contains(expected), "{key}: {err}");
        }
    }

    #[test]
    fn missing_and_malformed_fields() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("hidden_size");
        assert!(parse(&v).unwrap_err().to_string().contains("hidden_size"));
        let mut v = base();
        v["num_key_value_heads"] = 3.into();
        assert!(parse(&v)
            .unwrap_err()
            .to_string()
            .contains("num_key_value_heads"));
        let mut v = base();
        v["vocab_size"] = "many".into();
        assert!(parse(&v).unwrap_err().to_string().contains("vocab_size"));
        assert!(Config::from_json("{")
            .unwrap_err()
            .to_string()
            .contains("not valid JSON"));
    }
}
