//! `config.json` and `generation_config.json` of a Hugging Face Llama checkpoint, in both the
//! transformers-4 spelling (`rope_theta`, `rope_scaling`, `torch_dtype`) and the transformers-5 one
//! (`rope_parameters`, `dtype`).
//!
//! Parsed strictly, before anything is allocated: every field has one JSON type (a string where a
//! bool belongs is an error naming the field, not a silent default), sizes are positive and bounded,
//! heads divide what they must, rope and norm constants are finite and positive, and every size
//! product the runtime later computes is checked here.

use crate::error::{Error, Result};
use crate::format::{Quantization, GROUP};
use serde_json::{Map, Value};

/// Bounds far above any released Llama (405B: hidden 16384, intermediate 53248, 126 layers) that
/// keep every product and every shader constant inside u32 and u64.
const MAX_HIDDEN: u64 = 1 << 16;
const MAX_INTERMEDIATE: u64 = 1 << 18;
const MAX_LAYERS: u64 = 1024;
const MAX_HEADS: u64 = 1024;
const MAX_VOCAB: u64 = 1 << 24;
const MAX_HEAD_DIM: u64 = 256;
const MAX_POSITIONS: u64 = u32::MAX as u64;

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
    /// One divisor per frequency, as GGUF files carry Llama 3's scaling (the `rope_freqs`
    /// tensor, which llama.cpp's converter computes from the parameters above).
    Factors(Vec<f64>),
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
    /// `quantization_config` of a checkpoint written by `layerskip quantize`.
    pub quantization: Option<Quantization>,
}

/// What `layerskip quantize` writes into config.json, and what loading accepts.
pub const QUANT_METHOD: &str = "layerskip";

/// `quantization_config`: `{"quant_method": "layerskip", "format": "q8" | "q4", "group_size": 32}`.
fn quantization(f: &Fields<'_>) -> Result<Option<Quantization>> {
    let Some(q) = f.object("quantization_config")? else {
        return Ok(None);
    };
    let q = Fields {
        file: "config.json",
        obj: q.obj,
    };
    match q.string("quant_method")? {
        Some(QUANT_METHOD) => {}
        other => {
            return Err(Error::Unsupported {
                field: "quantization_config.quant_method",
                value: other.unwrap_or("(missing)").into(),
                why: "this runtime reads checkpoints written by `layerskip quantize` (quant_method \"layerskip\")",
            })
        }
    }
    let format = match q.string("format")? {
        Some("q8") => Quantization::Q8,
        Some("q4") => Quantization::Q4,
        other => {
            return Err(Error::Unsupported {
                field: "quantization_config.format",
                value: other.unwrap_or("(missing)").into(),
                why: "unknown format; this runtime reads q8 and q4",
            })
        }
    };
    let group = q.positive("group_size", None, u32::MAX as u64)?;
    if group != GROUP {
        return Err(Error::Unsupported {
            field: "quantization_config.group_size",
            value: group.to_string(),
            why: "group size not supported; this runtime reads groups of 32",
        });
    }
    Ok(Some(format))
}

/// The fields of one JSON object, read with the file and field named in every error.
struct Fields<'a> {
    file: &'a str,
    obj: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn error(&self, key: &str, why: impl std::fmt::Display) -> Error {
        Error::Field {
            file: self.file.into(),
            field: key.into(),
            why: why.to_string(),
        }
    }

    /// The value of `key`, with JSON null read as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    /// A positive integer at most `max`.
    fn positive(&self, key: &str, default: Option<u64>, max: u64) -> Result<usize> {
        let n = match self.get(key) {
            None => default.ok_or_else(|| self.error(key, "is missing"))?,
            Some(v) => v
                .as_u64()
                .filter(|&n| n > 0)
                .ok_or_else(|| self.error(key, format!("must be a positive integer, got {v}")))?,
        };
        if n > max {
            return Err(self.error(key, format!("= {n} is larger than the supported {max}")));
        }
        usize::try_from(n)
            .map_err(|_| self.error(key, format!("= {n} is too large for this platform")))
    }

    /// A finite number.
    fn number(&self, key: &str, default: Option<f64>) -> Result<f64> {
        let x = match self.get(key) {
            None => default.ok_or_else(|| self.error(key, "is missing"))?,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.error(key, format!("must be a number, got {v}")))?,
        };
        if !x.is_finite() {
            return Err(self.error(key, format!("must be finite, got {x}")));
        }
        Ok(x)
    }

    /// A finite number greater than zero.
    fn above_zero(&self, key: &str, default: Option<f64>) -> Result<f64> {
        let x = self.number(key, default)?;
        if x <= 0.0 {
            return Err(self.error(key, format!("must be greater than 0, got {x}")));
        }
        Ok(x)
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.error(key, format!("must be true or false, got {v}"))),
        }
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.error(key, format!("must be a string, got {v}"))),
        }
    }

    fn object(&self, key: &str) -> Result<Option<Fields<'a>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(obj)) => Ok(Some(Fields {
                file: self.file,
                obj,
            })),
            Some(v) => Err(self.error(key, format!("must be an object, got {v}"))),
        }
    }

    /// An integer, a list of integers, or null (`bos_token_id`, `eos_token_id`).
    fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
        let one = |v: &Value| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    self.error(
                        key,
                        format!("must be a token id or a list of token ids, got {v}"),
                    )
                })
        };
        match self.get(key) {
            None => Ok(vec![]),
            Some(Value::Array(items)) => items.iter().map(one).collect(),
            Some(v) => one(v).map(|id| vec![id]),
        }
    }
}

fn parse_object(file: &str, text: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str(text) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err(Error::file(file, "the top level must be a JSON object")),
        Err(e) => Err(Error::file(file, format!("not valid JSON: {e}"))),
    }
}

fn rope_scaling(params: Option<Fields<'_>>) -> Result<RopeScaling> {
    let Some(p) = params else {
        return Ok(RopeScaling::None);
    };
    let kind = match p.string("rope_type")? {
        Some(kind) => kind,
        None => p.string("type")?.unwrap_or("default"),
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: p.above_zero("factor", None)?,
        }),
        "llama3" => {
            let low = p.above_zero("low_freq_factor", None)?;
            let high = p.above_zero("high_freq_factor", None)?;
            if high <= low {
                return Err(p.error(
                    "high_freq_factor",
                    format!("({high}) must be greater than low_freq_factor ({low})"),
                ));
            }
            Ok(RopeScaling::Llama3 {
                factor: p.above_zero("factor", None)?,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: p
                    .above_zero("original_max_position_embeddings", None)?,
            })
        }
        other => Err(Error::Unsupported {
            field: "rope_type",
            value: other.to_string(),
            why: "supported rope types are default, linear and llama3",
        }),
    }
}

impl Config {
    pub fn from_json(text: &str) -> Result<Self> {
        Self::from_json_named("config.json", text)
    }

    /// A config read from `file` (errors name it): a GGUF file's metadata arrives here as the
    /// config.json it stands for.
    pub fn from_json_named(file: &str, text: &str) -> Result<Self> {
        let obj = parse_object(file, text)?;
        let f = Fields { file, obj: &obj };

        match f.string("model_type")? {
            Some("llama") => {}
            Some(other) => {
                return Err(Error::Unsupported {
                    field: "model_type",
                    value: other.into(),
                    why: "only llama checkpoints are supported",
                })
            }
            None => return Err(f.error("model_type", "is missing")),
        }
        for (key, field) in [
            ("attention_bias", "attention_bias"),
            ("mlp_bias", "mlp_bias"),
        ] {
            if f.bool(key, false)? {
                return Err(Error::Unsupported {
                    field,
                    value: "true".into(),
                    why: "Llama layers without biases only",
                });
            }
        }
        if let Some(act) = f.string("hidden_act")? {
            if act != "silu" {
                return Err(Error::Unsupported {
                    field: "hidden_act",
                    value: act.into(),
                    why: "only silu (SwiGLU) is supported",
                });
            }
        }

        let hidden_size = f.positive("hidden_size", None, MAX_HIDDEN)?;
        let num_attention_heads = f.positive("num_attention_heads", None, MAX_HEADS)?;
        let num_key_value_heads = f.positive(
            "num_key_value_heads",
            Some(num_attention_heads as u64),
            MAX_HEADS,
        )?;
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(f.error(
                "num_key_value_heads",
                format!("({num_key_value_heads}) must divide num_attention_heads ({num_attention_heads})"),
            ));
        }
        let head_dim = match f.get("head_dim") {
            Some(_) => f.positive("head_dim", None, u64::MAX)?,
            None if hidden_size % num_attention_heads != 0 => {
                return Err(f.error(
                    "num_attention_heads",
                    format!("({num_attention_heads}) must divide hidden_size ({hidden_size}) when head_dim is not given"),
                ))
            }
            None => hidden_size / num_attention_heads,
        };
        if head_dim % 2 != 0 || head_dim as u64 > MAX_HEAD_DIM {
            return Err(Error::Unsupported {
                field: "head_dim",
                value: head_dim.to_string(),
                why: "head_dim must be even and at most 256",
            });
        }

        // v5 folds rope_theta into rope_parameters; v4 keeps it at the top level.
        let rope_params = f.object("rope_parameters")?;
        let rope_theta = match &rope_params {
            Some(p) if p.get("rope_theta").is_some() => p.above_zero("rope_theta", None)?,
            _ => f.above_zero("rope_theta", Some(10000.0))?,
        };
        let rope_scaling = rope_scaling(match rope_params {
            Some(p) => Some(p),
            None => f.object("rope_scaling")?,
        })?;

        let eps = f.number("rms_norm_eps", Some(1e-6))?;
        if eps < 0.0 || !(eps as f32).is_finite() {
            return Err(f.error(
                "rms_norm_eps",
                format!("must be at least 0 and finite in single precision, got {eps}"),
            ));
        }
        let dtype = match f.string("dtype")? {
            Some(d) => Some(d),
            None => f.string("torch_dtype")?,
        };
        let config = Config {
            hidden_size,
            intermediate_size: f.positive("intermediate_size", None, MAX_INTERMEDIATE)?,
            num_hidden_layers: f.positive("num_hidden_layers", None, MAX_LAYERS)?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: eps as f32,
            vocab_size: f.positive("vocab_size", None, MAX_VOCAB)?,
            max_position_embeddings: f.positive(
                "max_position_embeddings",
                Some(2048),
                MAX_POSITIONS,
            )?,
            tie_word_embeddings: f.bool("tie_word_embeddings", false)?,
            rope_theta,
            rope_scaling,
            bos_token_id: f.token_ids("bos_token_id")?.first().copied(),
            eos_token_ids: f.token_ids("eos_token_id")?,
            dtype: dtype.map(str::to_string),
            quantization: quantization(&f)?,
        };
        // Every size product the runtime computes fits a u64 (parameters) and a u32 (shader
        // constants, row and element counts of one matrix).
        let h = config.hidden_size as u64;
        let largest_matrix = [
            config.vocab_size as u64 * h,
            (config.q_dim() + 2 * config.kv_dim()) as u64 * h,
            2 * config.intermediate_size as u64 * h,
        ];
        if largest_matrix.iter().any(|&n| n > u32::MAX as u64) {
            return Err(f.error(
                "hidden_size",
                "with this vocabulary / intermediate size gives a matrix of more than 2^32 elements",
            ));
        }
        Ok(config)
    }

    /// Rotary inverse frequencies, one per pair of dimensions, as transformers computes them
    /// (each backend turns them into angles with [`rope_cos_sin`]).
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let dim = self.head_dim as f64;
        (0..self.head_dim / 2)
            .map(|i| {
                let base = 1.0 / self.rope_theta.powf((2 * i) as f64 / dim);
                let f = match &self.rope_scaling {
                    RopeScaling::None => base,
                    RopeScaling::Linear { factor } => base / factor,
                    RopeScaling::Factors(factors) => base / factors.get(i).copied().unwrap_or(1.0),
                    &RopeScaling::Llama3 {
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

/// What generation_config.json adds: more stop ids and the exit layer the checkpoint suggests for
/// self-speculative decoding (`assistant_early_exit`, the Hugging Face LayerSkip convention).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationConfig {
    pub eos_token_ids: Vec<u32>,
    pub assistant_early_exit: Option<usize>,
}

impl GenerationConfig {
    pub fn from_json(text: &str) -> Result<Self> {
        let obj = parse_object("generation_config.json", text)?;
        let f = Fields {
            file: "generation_config.json",
            obj: &obj,
        };
        Ok(Self {
            eos_token_ids: f.token_ids("eos_token_id")?,
            assistant_early_exit: match f.get("assistant_early_exit") {
                None => None,
                Some(_) => Some(f.positive("assistant_early_exit", None, MAX_LAYERS)?),
            },
        })
    }
}

/// cos and sin of the rotary angle, with the angle rounded to f32 as transformers computes it.
pub fn rope_cos_sin(pos: usize, inv_freq: f32) -> (f32, f32) {
    let angle = (pos as f32 * inv_freq) as f64;
    (angle.cos() as f32, angle.sin() as f32)
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
        assert!(Config::from_json("{")
            .unwrap_err()
            .to_string()
            .contains("not valid JSON"));
    }

    /// Each case: a field set to a bad value, and what the error must say.
    #[test]
    fn every_field_is_typed_and_ranged() {
        use serde_json::json;
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "vocab_size",
                json!("many"),
                "config.json: `vocab_size` must be a positive integer",
            ),
            (
                "hidden_size",
                json!(0),
                "`hidden_size` must be a positive integer",
            ),
            (
                "hidden_size",
                json!(64.5),
                "`hidden_size` must be a positive integer",
            ),
            (
                "num_hidden_layers",
                json!(1u64 << 62),
                "larger than the supported",
            ),
            (
                "num_key_value_heads",
                json!(3),
                "`num_key_value_heads` (3) must divide",
            ),
            (
                "num_attention_heads",
                json!(3),
                "must divide hidden_size (64) when head_dim",
            ),
            (
                "tie_word_embeddings",
                json!("true"),
                "`tie_word_embeddings` must be true or false",
            ),
            (
                "attention_bias",
                json!("no"),
                "`attention_bias` must be true or false",
            ),
            (
                "rope_theta",
                json!(0),
                "`rope_theta` must be greater than 0",
            ),
            (
                "rope_theta",
                json!(-1e4),
                "`rope_theta` must be greater than 0",
            ),
            (
                "rms_norm_eps",
                json!(-1e-5),
                "`rms_norm_eps` must be at least 0",
            ),
            ("rms_norm_eps", json!(1e39), "finite in single precision"),
            (
                "rope_scaling",
                json!({"type": "linear", "factor": 0}),
                "`factor` must be greater than 0",
            ),
            (
                "rope_scaling",
                json!({"rope_type": "llama3", "factor": 8, "low_freq_factor": 4,
                "high_freq_factor": 4, "original_max_position_embeddings": 32}),
                "`high_freq_factor` (4) must be greater",
            ),
            (
                "rope_scaling",
                json!("linear"),
                "`rope_scaling` must be an object",
            ),
            (
                "eos_token_id",
                json!([1, -2]),
                "`eos_token_id` must be a token id",
            ),
            (
                "eos_token_id",
                json!(1u64 << 40),
                "`eos_token_id` must be a token id",
            ),
            ("model_type", json!(7), "`model_type` must be a string"),
            ("vocab_size", json!(1u64 << 24), "more than 2^32 elements"),
        ];
        for (key, value, expected) in cases {
            let mut v = base();
            if key == "vocab_size" && expected.contains("2^32") {
                v["hidden_size"] = json!(1024);
                v["num_attention_heads"] = json!(8);
            }
            v[key] = value.clone();
            let err = parse(&v).unwrap_err().to_string();
            assert!(err.contains(expected), "{key} = {value}: {err}");
        }
    }

    #[test]
    fn generation_config_errors_name_their_file() {
        let g =
            GenerationConfig::from_json(r#"{"eos_token_id": [1, 2], "assistant_early_exit": 4}"#)
                .unwrap();
        assert_eq!(g.eos_token_ids, vec![1, 2]);
        assert_eq!(g.assistant_early_exit, Some(4));
        let err = GenerationConfig::from_json(r#"{"eos_token_id": "x"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("generation_config.json: `eos_token_id`"),
            "{err}"
        );
        let err = GenerationConfig::from_json(r#"{"assistant_early_exit": 0}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("generation_config.json: `assistant_early_exit`"),
            "{err}"
        );
        assert!(GenerationConfig::from_json("[1]")
            .unwrap_err()
            .to_string()
            .starts_with("generation_config.json"));
    }
}
