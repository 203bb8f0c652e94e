//! The layer-range API that every generation strategy is written against, implemented by the GPU
//! model and by the plain CPU reference.
//!
//! A `Call` runs decoder layers `[a, b)` over a block of positions and optionally applies the shared
//! exit head (final norm + lm_head) to the result. Early exit is a call with `layers = 0..E`;
//! self-speculative decoding drafts with `0..E`, keeps the hidden states entering layer E+1 in the
//! exit-query cache, and verifies with `E..L` over those cached rows.

use crate::config::Config;
use crate::error::Result;
use crate::format::{KvFormat, Quantization};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// The backend a model runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    #[default]
    Gpu,
    Cpu,
    CpuReference,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Gpu => "gpu",
            Backend::Cpu => "cpu",
            Backend::CpuReference => "cpu-reference",
        })
    }
}

/// What every engine is built with, whatever the device: the part of the load options an engine
/// reads (the device choice and the draft vocabulary are resolved before it is built).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineOptions {
    /// KV cache positions (capped by the model's max_position_embeddings).
    pub max_context: usize,
    /// Quantize f32/f16/bf16 weights to this format while loading.
    pub quantize: Option<Quantization>,
    pub kv_cache: KvFormat,
    /// How the CPU backends multiply activations with quantized weights (the GPU keeps f32).
    pub activations: Activations,
    /// Host bytes the loader may hold at once.
    pub staging_bytes: usize,
}

/// How the CPU backends multiply a block's activations with weights in a quantized format
/// (q4_0, q4_1, q8_0, q4_k, q5_k, q6_k; float weights always meet f32 activations).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::ValueEnum))]
pub enum Activations {
    /// Rounded to 8 bits per group of 32 (a scale per group, as llama.cpp's q8_0 does), so the
    /// products are integer dot products where the CPU has them (AVX-512 VNNI): on SmolLM2 Q4_1,
    /// 1.2-1.4x the f32 decode speed, and logits that move as llama.cpp's do (up to 0.8 from
    /// f32's).
    #[default]
    Q8,
    /// f32 products with the exactly dequantized weights: the same values the GPU and Hugging
    /// Face compute, up to summation order.
    F32,
}

/// Positions the KV cache holds unless asked otherwise (capped by the model's own maximum).
pub const DEFAULT_MAX_CONTEXT: usize = 2048;

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_context: DEFAULT_MAX_CONTEXT,
            quantize: None,
            kv_cache: KvFormat::default(),
            activations: Activations::default(),
            staging_bytes: crate::llama::DEFAULT_STAGING_BYTES,
        }
    }
}

/// What a step of the forward pass computes: how GPU time (`bench --profile`) and the bytes a
/// decode step reads are broken down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    Embed,
    Norm,
    Qkv,
    Rope,
    Attention,
    O,
    GateUp,
    Down,
    Head,
    Argmax,
}

/// Where a call's rows come from.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// Embed these token ids.
    Tokens(&'a [u32]),
    /// Embed the token the previous call's head picked for its last row, without a trip to the
    /// host: drafting chains tokens on the GPU.
    PreviousPick,
    /// The first `rows` rows of the exit-query cache (hidden states saved by earlier calls).
    ExitCache { rows: usize },
}

/// What to do with the hidden states after the last layer of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    None,
    /// Pick a token for the last row.
    Last,
    /// Pick a token for every row.
    All,
    /// Logits of the last row after every layer of the call (the logit lens).
    Lens,
}

#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub input: Input<'a>,
    /// Absolute position of the first row.
    pub pos0: usize,
    pub layers: Range<usize>,
    /// Store the resulting hidden rows in the exit-query cache from this row on.
    pub save: Option<usize>,
    pub head: Head,
    /// Also return the logits of the head's rows (for sampling on the host).
    pub logits: bool,
    /// Shadow picks: after each of these exit layers (counted from 1, inside the call's layer
    /// range), also pick a token for every row with the exit head. Adaptive speculation reads
    /// them to learn how often each exit layer would have drafted the right token.
    pub shadow: &'a [usize],
    /// The head is the reduced draft head (when the model has a draft vocabulary): picks are
    /// token ids of the draft vocabulary and logits rows have one entry per draft id.
    pub draft_vocab: bool,
    /// Shadow picks use the reduced draft head (as the drafts they stand for do).
    pub shadow_draft_vocab: bool,
}

impl<'a> Call<'a> {
    /// A call over `input` at `pos0` through `layers` that picks a token for the last row.
    pub fn new(input: Input<'a>, pos0: usize, layers: Range<usize>) -> Self {
        Call {
            input,
            pos0,
            layers,
            save: None,
            head: Head::Last,
            logits: false,
            shadow: &[],
            draft_vocab: false,
            shadow_draft_vocab: false,
        }
    }
    pub fn head(self, head: Head) -> Self {
        Call { head, ..self }
    }
    pub fn save(self, row: usize) -> Self {
        Call {
            save: Some(row),
            ..self
        }
    }
    pub fn logits(self, logits: bool) -> Self {
        Call { logits, ..self }
    }
    /// Shadow picks after `shadow` exit layers, with the draft head when `draft_vocab`.
    pub fn shadow(self, shadow: &'a [usize], draft_vocab: bool) -> Self {
        Call {
            shadow,
            shadow_draft_vocab: draft_vocab,
            ..self
        }
    }
    pub fn draft_vocab(self, draft_vocab: bool) -> Self {
        Call {
            draft_vocab,
            ..self
        }
    }
}

/// One step of a call as every backend carries it out: the call's layers in order, with the exit
/// head applied after a layer where the call asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Decoder layer `l` (from 0) over the call's rows.
    Layer(usize),
    /// The full exit head on the last row, its logits kept: the logit lens after this layer.
    Lens,
    /// A pick for every row (a shadow exit), with the draft head when `draft`.
    Shadow { draft: bool },
}

impl Call<'_> {
    /// The call's stages in order (after its input is embedded or read from the exit cache,
    /// before the rows are saved and the head picks).
    pub fn stages(&self) -> impl Iterator<Item = Stage> + '_ {
        self.layers.clone().flat_map(move |l| {
            let after = match self.head {
                Head::Lens => Some(Stage::Lens),
                _ if self.shadow.contains(&(l + 1)) => Some(Stage::Shadow {
                    draft: self.shadow_draft_vocab,
                }),
                _ => None,
            };
            std::iter::once(Stage::Layer(l)).chain(after)
        })
    }

    /// Rows the head picks for after the last layer, out of the last `rows` rows of the call.
    pub fn head_rows(&self, rows: usize) -> usize {
        match self.head {
            Head::Last => 1,
            Head::All => rows,
            Head::None | Head::Lens => 0,
        }
    }
}

/// A greedy pick: the argmax token and the softmax normaliser sum(exp(logit - max)).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pick {
    pub token: u32,
    pub sum_exp: f32,
}

impl Pick {
    /// Probability of the picked token.
    pub fn probability(&self) -> f32 {
        1.0 / self.sum_exp
    }
}

/// What a call returns: a pick per head row, and logits rows (one per head row when asked for,
/// or one per layer for the logit lens), and for each shadow exit layer a pick per row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Output {
    pub picks: Vec<Pick>,
    pub logits: Vec<Vec<f32>>,
    pub shadow: Vec<Vec<Pick>>,
}

/// Counters for the cost model of a generation: how often we went to the GPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub submits: u64,
    pub dispatches: u64,
}

/// A model that runs layer ranges. Implemented by the GPU model and the CPU model.
#[allow(async_fn_in_trait)]
pub trait Engine {
    fn config(&self) -> &Config;
    /// Positions the KV cache holds.
    fn max_context(&self) -> usize;
    /// Rows the exit-query cache holds (bounds speculation depth + 1).
    fn max_rows(&self) -> usize;
    fn counters(&self) -> Counters;
    /// Which backend this is (reported in the stats).
    fn backend(&self) -> Backend;
    /// The draft vocabulary's token ids (increasing), when a reduced draft head was loaded.
    fn draft_vocab(&self) -> Option<&[u32]>;
    /// Runs the calls in order as one unit of work (one GPU submission); one output per call.
    async fn run(&mut self, calls: &[Call<'_>]) -> Result<Vec<Output>>;
}

/// Rows a call feeds through its layers.
pub fn rows(call: &Call<'_>) -> usize {
    match call.input {
        Input::Tokens(ids) => ids.len(),
        Input::PreviousPick => 1,
        Input::ExitCache { rows } => rows,
    }
}

/// Checks a call against the model before any work is queued, so a bad request loses nothing.
pub fn validate(
    call: &Call<'_>,
    config: &Config,
    max_context: usize,
    max_rows: usize,
) -> Result<()> {
    use crate::error::Error;
    let n = rows(call);
    if n == 0 {
        return Err(Error::Invalid("a call needs at least one row".into()));
    }
    if call.layers.start > call.layers.end || call.layers.end > config.num_hidden_layers {
        return Err(Error::Invalid(format!(
            "layer range {:?} is outside the model's {} layers",
            call.layers, config.num_hidden_layers
        )));
    }
    let needed = call.pos0 as u128 + n as u128;
    if needed > max_context as u128 {
        return Err(Error::ContextLength {
            needed,
            limit: max_context,
        });
    }
    if let Input::Tokens(ids) = call.input {
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= config.vocab_size) {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the vocabulary ({})",
                config.vocab_size
            )));
        }
    }
    if let Some(&e) = call
        .shadow
        .iter()
        .find(|&&e| e <= call.layers.start || e >= call.layers.end)
    {
        return Err(Error::Invalid(format!(
            "shadow exit layer {e} is not inside the call's layers {}..{}",
            call.layers.start + 1,
            call.layers.end
        )));
    }
    if call.shadow.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::Invalid(
            "shadow exit layers must be in increasing order".into(),
        ));
    }
    if !call.shadow.is_empty() && call.head == Head::Lens {
        return Err(Error::Invalid(
            "shadow picks and the logit lens cannot share a call".into(),
        ));
    }
    let cached = matches!(call.input, Input::ExitCache { .. })
        || call.save.is_some()
        || call.head == Head::All
        || !call.shadow.is_empty();
    if cached && call.save.unwrap_or(0).saturating_add(n) > max_rows {
        return Err(Error::Invalid(format!(
            "{} rows from row {} exceed the exit-query cache / head block of {max_rows} rows",
            n,
            call.save.unwrap_or(0)
        )));
    }
    Ok(())
}

/// Fails on the first non-finite logit a batch produced, naming the layer after which the exit
/// head read the hidden state, so corrupt weights or overflowing activations are an error rather
/// than a stream of token 0. A pick's normaliser sum(exp(l - max)) is at least 1 when every logit
/// is finite (the maximum contributes exp(0)); NaN or infinity anywhere makes it NaN, 0 or inf.
pub fn check_finite(calls: &[Call<'_>], outputs: &[Output]) -> Result<()> {
    use crate::error::Error;
    for (call, out) in calls.iter().zip(outputs) {
        let last = call.layers.end;
        let bad = |picks: &[Pick]| {
            picks
                .iter()
                .any(|p| !(p.sum_exp >= 1.0 && p.sum_exp.is_finite()))
        };
        if let Some((&layer, _)) = call.shadow.iter().zip(&out.shadow).find(|(_, p)| bad(p)) {
            return Err(Error::NonFiniteLogits { layer });
        }
        if bad(&out.picks) {
            return Err(Error::NonFiniteLogits { layer: last });
        }
        for (i, row) in out.logits.iter().enumerate() {
            if row.iter().any(|x| !x.is_finite()) {
                let layer = match call.head {
                    Head::Lens => call.layers.start + i + 1,
                    _ => last,
                };
                return Err(Error::NonFiniteLogits { layer });
            }
        }
    }
    Ok(())
}
