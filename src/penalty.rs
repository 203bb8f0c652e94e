//! Repetition controls, applied to the exit head's logits before a token is chosen (greedy or
//! sampled), as chat users know them: Hugging Face's `repetition_penalty` over every id of the
//! prompt and the output (a logit l of such an id becomes l / r when positive, l * r when not),
//! then OpenAI's `frequency_penalty` and `presence_penalty` over the output (l - count x f -
//! [count > 0] x p), the order vLLM applies them in. In self-speculative decoding a row's
//! penalties count the drafts before it, the same for the draft's distribution and the
//! verifier's, so greedy output equals greedy decoding and sampling keeps the penalized model's
//! distribution.

use crate::error::{Error, Result};
use std::collections::{HashMap, HashSet};

/// Most a frequency or presence penalty may be, either way (OpenAI's range).
pub const MAX_OPENAI_PENALTY: f32 = 2.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Penalties {
    /// 1 = none; above 1 discourages repeating any id already in the prompt or output.
    pub repetition: f32,
    /// Subtracted from a logit once per time its id was generated.
    pub frequency: f32,
    /// Subtracted from a logit once if its id was generated at all.
    pub presence: f32,
}

impl Default for Penalties {
    fn default() -> Self {
        Penalties {
            repetition: 1.0,
            frequency: 0.0,
            presence: 0.0,
        }
    }
}

impl Penalties {
    /// Whether any penalty changes a logit.
    pub fn active(&self) -> bool {
        *self != Penalties::default()
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.repetition.is_finite() && self.repetition > 0.0) {
            return Err(Error::Invalid(format!(
                "repetition_penalty must be a finite number > 0 (1 = none), got {}",
                self.repetition
            )));
        }
        for (name, value) in [
            ("frequency_penalty", self.frequency),
            ("presence_penalty", self.presence),
        ] {
            if !(value.is_finite() && value.abs() <= MAX_OPENAI_PENALTY) {
                return Err(Error::Invalid(format!(
                    "{name} must be in [-{MAX_OPENAI_PENALTY}, {MAX_OPENAI_PENALTY}], got {value}"
                )));
            }
        }
        Ok(())
    }
}

/// What the penalties count: the prompt's ids and how often each id was generated.
#[derive(Debug, Clone, Default)]
pub struct History {
    prompt: HashSet<u32>,
    generated: HashMap<u32, u32>,
}

impl History {
    pub fn new(prompt: &[u32]) -> Self {
        History {
            prompt: prompt.iter().copied().collect(),
            generated: HashMap::new(),
        }
    }

    /// A token was generated.
    pub fn push(&mut self, id: u32) {
        *self.generated.entry(id).or_default() += 1;
    }

    /// Applies `penalties` to full-vocabulary `logits` as if `pending` (the drafts before this
    /// row) had been generated too.
    pub fn apply(&self, penalties: &Penalties, logits: &mut [f32], pending: &[u32]) {
        let mut counts = self.generated.clone();
        for &id in pending {
            *counts.entry(id).or_default() += 1;
        }
        let ids = counts.keys().chain(&self.prompt).copied();
        let unique: HashSet<u32> = ids.collect();
        for id in unique {
            let Some(l) = logits.get_mut(id as usize) else {
                continue;
            };
            if penalties.repetition != 1.0 {
                *l = if *l > 0.0 {
                    *l / penalties.repetition
                } else {
                    *l * penalties.repetition
                };
            }
            let count = counts.get(&id).copied().unwrap_or(0);
            if count > 0 {
                *l -= count as f32 * penalties.frequency + penalties.presence;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penalties_follow_hugging_face_and_openai() {
        let p = Penalties {
            repetition: 2.0,
            frequency: 0.5,
            presence: 0.25,
        };
        // Prompt holds 1; generated 2 twice; drafts pending: 3 once.
        let mut h = History::new(&[1]);
        h.push(2);
        h.push(2);
        let mut logits = vec![1.0, 4.0, -3.0, 0.0, 8.0];
        h.apply(&p, &mut logits, &[3]);
        // 0: untouched. 1 (prompt only): 4 / 2. 2 (generated twice): -3 x 2 - 2 x 0.5 - 0.25.
        // 3 (pending once): 0 x 2 - 0.5 - 0.25. 4: untouched.
        assert_eq!(logits, vec![1.0, 2.0, -7.25, -0.75, 8.0]);
        // Only a repetition penalty: prompt and output alike, nothing subtracted.
        let only = Penalties {
            repetition: 1.5,
            ..Penalties::default()
        };
        let mut logits = vec![3.0, 3.0, -3.0, 3.0];
        h.apply(&only, &mut logits, &[]);
        assert_eq!(logits, vec![3.0, 2.0, -4.5, 3.0]);
        // Ids past the logits (a bad id) are skipped, not a panic.
        let mut short = vec![1.0];
        h.apply(&p, &mut short, &[7]);
        assert_eq!(short, vec![1.0]);
    }

    #[test]
    fn values_are_checked() {
        assert!(!Penalties::default().active());
        assert!(Penalties::default().validate().is_ok());
        for (bad, name) in [
            (
                Penalties {
                    repetition: 0.0,
                    ..Penalties::default()
                },
                "repetition_penalty",
            ),
            (
                Penalties {
                    repetition: f32::NAN,
                    ..Penalties::default()
                },
                "repetition_penalty",
            ),
            (
                Penalties {
                    frequency: 2.5,
                    ..Penalties::default()
                },
                "frequency_penalty",
            ),
            (
                Penalties {
                    presence: f32::INFINITY,
                    ..Penalties::default()
                },
                "presence_penalty",
            ),
        ] {
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
        }
    }
}
