//! Generation strategies over the layer-range API: autoregressive (all layers), early exit
//! (layers 1..E and the shared exit head).

use crate::clock::now_ms;
use crate::engine::{Call, Engine, Input};
use crate::error::{Error, Result};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Every layer for every token.
    Autoregressive,
    /// Layers 1..=exit_layer for every token, then the shared exit head.
    EarlyExit { exit_layer: usize },
}

impl Strategy {
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Autoregressive => "autoregressive",
            Strategy::EarlyExit { .. } => "early-exit",
        }
    }
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub strategy: Strategy,
    pub max_new_tokens: usize,
    /// Keep going through end-of-sequence tokens (exactly max_new_tokens are produced).
    pub ignore_eos: bool,
    /// Token ids that end generation (the checkpoint's EOS ids plus any the user adds).
    pub eos_token_ids: Vec<u32>,
}

/// How a streamed token was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// Produced by the model that decides the output, one token per step.
    Plain,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub strategy: String,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub elapsed_ms: f64,
    pub tokens_per_second: f64,
    pub time_to_first_token_ms: f64,
    /// Mean time per output token after the first.
    pub time_per_output_token_ms: f64,
    pub submits: u64,
    pub dispatches: u64,
    pub submits_per_token: f64,
    pub dispatches_per_token: f64,
    pub stop_reason: String,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub stats: Stats,
}

/// Validates the options against the model and returns the number of layers to run.
fn exit_layers(strategy: Strategy, layers: usize) -> Result<usize> {
    match strategy {
        Strategy::Autoregressive => Ok(layers),
        Strategy::EarlyExit { exit_layer } if (1..=layers).contains(&exit_layer) => Ok(exit_layer),
        Strategy::EarlyExit { exit_layer } => Err(Error::Invalid(format!(
            "exit layer {exit_layer} is outside 1..={layers}"
        ))),
    }
}

/// Greedy generation. `on_token` sees every generated token as it is produced and returns
/// `false` to stop early (cancellation).
pub async fn generate<E: Engine>(
    engine: &mut E,
    prompt: &[u32],
    options: &GenerateOptions,
    mut on_token: impl FnMut(u32, TokenKind) -> bool,
) -> Result<Generation> {
    let exit = exit_layers(options.strategy, engine.config().num_hidden_layers)?;
    if prompt.is_empty() {
        return Err(Error::Invalid("the prompt encodes to no tokens".into()));
    }
    let needed = prompt.len() + options.max_new_tokens;
    if needed > engine.max_context() {
        return Err(Error::ContextLength {
            needed,
            limit: engine.max_context(),
        });
    }
    let start = now_ms();
    let before = engine.counters();
    let mut stats = Stats {
        strategy: options.strategy.name().into(),
        prompt_tokens: prompt.len(),
        stop_reason: "max_new_tokens".into(),
        ..Stats::default()
    };
    let mut tokens: Vec<u32> = vec![];
    let mut first_token_at = start;
    let mut input: Vec<u32> = prompt.to_vec();
    let mut pos = 0;
    while tokens.len() < options.max_new_tokens {
        let call = Call::new(Input::Tokens(&input), pos, 0..exit);
        let pick = engine.run(&[call]).await?.remove(0).picks[0];
        pos += input.len();
        if tokens.is_empty() {
            first_token_at = now_ms();
        }
        tokens.push(pick.token);
        if !on_token(pick.token, TokenKind::Plain) {
            stats.stop_reason = "cancelled".into();
            break;
        }
        if !options.ignore_eos && options.eos_token_ids.contains(&pick.token) {
            stats.stop_reason = "eos".into();
            break;
        }
        input = vec![pick.token];
    }
    let end = now_ms();
    let counters = engine.counters();
    let n = tokens.len();
    stats.generated_tokens = n;
    stats.elapsed_ms = end - start;
    stats.tokens_per_second = if end > start {
        n as f64 / ((end - start) / 1e3)
    } else {
        0.0
    };
    stats.time_to_first_token_ms = first_token_at - start;
    stats.time_per_output_token_ms = if n > 1 {
        (end - first_token_at) / (n - 1) as f64
    } else {
        0.0
    };
    stats.submits = counters.submits - before.submits;
    stats.dispatches = counters.dispatches - before.dispatches;
    stats.submits_per_token = stats.submits as f64 / n.max(1) as f64;
    stats.dispatches_per_token = stats.dispatches as f64 / n.max(1) as f64;
    Ok(Generation { tokens, stats })
}
