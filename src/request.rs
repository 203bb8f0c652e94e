//! One generation request for every front end: the CLI's flags, the JavaScript options object
//! and OpenAI-shaped bodies (the server's, the browser's `chat.completions.create`, through
//! [`crate::openai`]) all become a `GenerateRequest`, with one set of defaults and one
//! validation, so a bad value is the same clear error everywhere.

use crate::adaptive::Setting;
use crate::error::{Error, Result};
use crate::generate::{GenerateOptions, Strategy, StrategyKind};
use crate::penalty::Penalties;
use crate::sampler::SamplingParams;
use serde::{Deserialize, Serialize};

/// The defaults, written once.
pub mod defaults {
    pub const MAX_NEW_TOKENS: usize = 64;
    pub const NUM_SPECULATIONS: usize = 4;
    pub const TOP_P: f32 = 1.0;
}

/// Most stop strings a request may carry, and the longest one (bytes).
pub const MAX_STOP_STRINGS: usize = 16;
pub const MAX_STOP_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::Args))]
pub struct GenerateRequest {
    /// How tokens are produced.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, value_enum, default_value_t))]
    pub strategy: StrategyKind,
    /// Layer whose output the exit head reads (1-based). Defaults to generation_config.json's
    /// `assistant_early_exit`, else a quarter of the layers. `auto` (self-speculative): chosen
    /// every round from measured costs and acceptance.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long))]
    pub exit_layer: Option<Setting>,
    /// Drafts per self-speculative round, or `auto` (chosen every round).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = Setting::Fixed(defaults::NUM_SPECULATIONS)))]
    pub num_speculations: Setting,
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = defaults::MAX_NEW_TOKENS))]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 (the default) decodes greedily.
    #[cfg_attr(
        not(target_arch = "wasm32"),
        arg(long, default_value_t = 0.0, allow_negative_numbers = true)
    )]
    pub temperature: f32,
    /// Sample among the K most likely tokens only (0 = all).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = 0))]
    pub top_k: usize,
    /// Sample among the most likely tokens that reach this probability mass.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = defaults::TOP_P, allow_negative_numbers = true))]
    pub top_p: f32,
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, default_value_t = 0))]
    pub seed: u64,
    /// End generation at this string (repeatable); the text is cut before it.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long))]
    pub stop: Vec<String>,
    /// Do not stop at end-of-sequence tokens: produce exactly --max-new-tokens.
    #[cfg_attr(not(target_arch = "wasm32"), arg(long))]
    pub ignore_eos: bool,
    /// Stop drafting when the draft's top probability falls below this (self-speculative).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long, allow_negative_numbers = true))]
    pub draft_confidence: Option<f32>,
    /// Hugging Face's repetition penalty: logits of ids already in the prompt or output are
    /// divided by it when positive, multiplied when not (1 = none).
    #[cfg_attr(
        not(target_arch = "wasm32"),
        arg(long, default_value_t = 1.0, allow_negative_numbers = true)
    )]
    pub repetition_penalty: f32,
    /// OpenAI's frequency penalty in [-2, 2]: subtracted from a logit once per time its id was
    /// generated.
    #[cfg_attr(
        not(target_arch = "wasm32"),
        arg(long, default_value_t = 0.0, allow_negative_numbers = true)
    )]
    pub frequency_penalty: f32,
    /// OpenAI's presence penalty in [-2, 2]: subtracted from a logit once if its id was generated.
    #[cfg_attr(
        not(target_arch = "wasm32"),
        arg(long, default_value_t = 0.0, allow_negative_numbers = true)
    )]
    pub presence_penalty: f32,
    /// Prefill the whole prompt even where the KV cache still holds a prefix of it from the
    /// previous generation (by default only what follows that prefix is computed).
    #[cfg_attr(not(target_arch = "wasm32"), arg(long))]
    pub no_prefix_reuse: bool,
}

impl Default for GenerateRequest {
    fn default() -> Self {
        Self {
            strategy: StrategyKind::default(),
            exit_layer: None,
            num_speculations: Setting::Fixed(defaults::NUM_SPECULATIONS),
            max_new_tokens: defaults::MAX_NEW_TOKENS,
            temperature: 0.0,
            top_k: 0,
            top_p: defaults::TOP_P,
            seed: 0,
            stop: vec![],
            ignore_eos: false,
            draft_confidence: None,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            no_prefix_reuse: false,
        }
    }
}

fn invalid(why: String) -> Error {
    Error::Invalid(why)
}

impl GenerateRequest {
    /// Checks every value on its own, whatever the strategy, so a bad value is reported even
    /// where it would not be used.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(invalid(format!(
                "temperature must be a finite number >= 0 (0 decodes greedily), got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(invalid(format!(
                "top_p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        if let Some(c) = self.draft_confidence {
            if !(0.0..=1.0).contains(&c) {
                return Err(invalid(format!(
                    "draft_confidence must be in [0, 1], got {c}"
                )));
            }
        }
        self.penalties().validate()?;
        if self.num_speculations == Setting::Fixed(0) {
            return Err(invalid("num_speculations must be at least 1".into()));
        }
        if self.exit_layer == Some(Setting::Fixed(0)) {
            return Err(invalid("exit_layer counts from 1".into()));
        }
        if self.stop.len() > MAX_STOP_STRINGS {
            return Err(invalid(format!(
                "at most {MAX_STOP_STRINGS} stop strings, got {}",
                self.stop.len()
            )));
        }
        if let Some(s) = self
            .stop
            .iter()
            .find(|s| s.is_empty() || s.len() > MAX_STOP_BYTES)
        {
            return Err(invalid(format!(
                "stop strings must be 1 to {MAX_STOP_BYTES} bytes, got {} bytes",
                s.len()
            )));
        }
        Ok(())
    }

    /// The options for a model with `layers` layers, whose default exit layer is `default_exit`.
    /// Checks the exit layer against the model.
    pub fn options(&self, layers: usize, default_exit: usize) -> Result<GenerateOptions> {
        self.validate()?;
        let exit_layer = self.exit_layer.unwrap_or(Setting::Fixed(default_exit));
        let strategy = match (self.strategy, exit_layer) {
            (StrategyKind::Autoregressive, _) => Strategy::Autoregressive,
            (StrategyKind::EarlyExit, Setting::Fixed(exit_layer)) => {
                Strategy::EarlyExit { exit_layer }
            }
            (StrategyKind::EarlyExit, Setting::Auto) => {
                return Err(invalid(
                    "exit_layer auto needs the self-speculative strategy (early exit has no \
                     verification to learn from)"
                        .into(),
                ))
            }
            (StrategyKind::SelfSpeculative, _) => Strategy::SelfSpeculative {
                exit_layer,
                num_speculations: self.num_speculations,
            },
        };
        strategy.check(layers)?;
        Ok(GenerateOptions {
            ignore_eos: self.ignore_eos,
            sampling: (self.temperature > 0.0).then_some(SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                seed: self.seed,
            }),
            draft_confidence: self.draft_confidence,
            reuse_prefix: !self.no_prefix_reuse,
            penalties: self.penalties(),
            ..GenerateOptions::greedy(strategy, self.max_new_tokens)
        })
    }

    fn penalties(&self) -> Penalties {
        Penalties {
            repetition: self.repetition_penalty,
            frequency: self.frequency_penalty,
            presence: self.presence_penalty,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_one_place() {
        let r: GenerateRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(r, GenerateRequest::default());
        let o = r.options(8, 2).unwrap();
        assert_eq!(o.strategy, Strategy::Autoregressive);
        assert_eq!(o.max_new_tokens, defaults::MAX_NEW_TOKENS);
        assert!(o.sampling.is_none());
    }

    #[test]
    fn javascript_spelling() {
        let r: GenerateRequest = serde_json::from_str(
            r#"{"strategy": "self-speculative", "exitLayer": 3, "numSpeculations": 2, "maxNewTokens": 9, "temperature": 0.5, "topK": 4, "topP": 0.9, "seed": 7, "stop": ["\n"], "ignoreEos": true, "draftConfidence": 0.25}"#,
        )
        .unwrap();
        let o = r.options(8, 2).unwrap();
        assert_eq!(o.strategy, Strategy::speculative(3, 2));
        let r: GenerateRequest = serde_json::from_str(
            r#"{"strategy": "self-speculative", "exitLayer": "auto", "numSpeculations": "auto"}"#,
        )
        .unwrap();
        assert_eq!(
            r.options(8, 2).unwrap().strategy,
            Strategy::SelfSpeculative {
                exit_layer: Setting::Auto,
                num_speculations: Setting::Auto
            }
        );
        let err =
            serde_json::from_str::<GenerateRequest>(r#"{"exitLayer": "sometimes"}"#).unwrap_err();
        assert!(err.to_string().contains("\"auto\""), "{err}");
        assert_eq!(o.sampling.unwrap().top_k, 4);
        let err = serde_json::from_str::<GenerateRequest>(r#"{"maxTokens": 3}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `maxTokens`"),
            "{err}"
        );
    }

    #[test]
    fn every_bad_value_is_refused_whatever_the_mode() {
        let cases: Vec<(GenerateRequest, &str)> = vec![
            (
                GenerateRequest {
                    temperature: -0.5,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                GenerateRequest {
                    temperature: f32::INFINITY,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                GenerateRequest {
                    temperature: f32::NAN,
                    ..Default::default()
                },
                "temperature",
            ),
            (
                GenerateRequest {
                    top_p: 0.0,
                    ..Default::default()
                },
                "top_p",
            ),
            (
                GenerateRequest {
                    top_p: f32::NAN,
                    ..Default::default()
                },
                "top_p",
            ),
            (
                GenerateRequest {
                    draft_confidence: Some(1.5),
                    ..Default::default()
                },
                "draft_confidence",
            ),
            (
                GenerateRequest {
                    draft_confidence: Some(f32::NAN),
                    ..Default::default()
                },
                "draft_confidence",
            ),
            (
                GenerateRequest {
                    num_speculations: Setting::Fixed(0),
                    ..Default::default()
                },
                "num_speculations",
            ),
            (
                GenerateRequest {
                    exit_layer: Some(Setting::Fixed(0)),
                    ..Default::default()
                },
                "exit_layer",
            ),
            (
                GenerateRequest {
                    stop: vec![String::new()],
                    ..Default::default()
                },
                "stop strings",
            ),
            (
                GenerateRequest {
                    stop: vec!["x".into(); 17],
                    ..Default::default()
                },
                "stop strings",
            ),
            (
                GenerateRequest {
                    strategy: StrategyKind::EarlyExit,
                    exit_layer: Some(Setting::Fixed(9)),
                    ..Default::default()
                },
                "exit layer 9 is outside 1..=8",
            ),
            (
                GenerateRequest {
                    strategy: StrategyKind::EarlyExit,
                    exit_layer: Some(Setting::Auto),
                    ..Default::default()
                },
                "exit_layer auto needs the self-speculative strategy",
            ),
            (
                GenerateRequest {
                    strategy: StrategyKind::SelfSpeculative,
                    exit_layer: Some(Setting::Fixed(8)),
                    ..Default::default()
                },
                "exit layer 8 is outside 1..=7",
            ),
        ];
        for (r, expected) in cases {
            let err = r.options(8, 2).unwrap_err().to_string();
            assert!(err.contains(expected), "{r:?}: {err}");
        }
    }
}
