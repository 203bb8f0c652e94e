//! Generation strategies over the layer-range API: autoregressive (all layers), early exit
//! (layers 1..E and the shared exit head) and self-speculative decoding (draft with 1..E, verify
//! with E+1..L over the exit-query cache, accept, roll back), greedy or sampled.

use crate::clock::now_ms;
use crate::engine::{Call, Engine, Head, Input, Output};
use crate::error::{Error, Result};
use crate::sampler::{distribution, draw, residual, Rng, SamplingParams};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// The strategies by name, as the CLI, JavaScript and the stats spell them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::ValueEnum))]
pub enum StrategyKind {
    #[default]
    Autoregressive,
    EarlyExit,
    SelfSpeculative,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The token budget is spent.
    #[default]
    MaxNewTokens,
    /// An end-of-sequence token.
    Eos,
    /// A stop string (the text is cut before it).
    StopString,
    /// The caller asked to stop.
    Cancelled,
}

/// The serde name of a unit variant ("self-speculative", "stop_string").
fn serde_name(value: impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

impl std::fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&serde_name(self))
    }
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&serde_name(self))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Every layer for every token.
    Autoregressive,
    /// Layers 1..=exit_layer for every token, then the shared exit head.
    EarlyExit { exit_layer: usize },
    /// Draft `num_speculations` tokens with layers 1..=exit_layer, verify them with the rest.
    SelfSpeculative {
        exit_layer: usize,
        num_speculations: usize,
    },
}

impl Strategy {
    pub fn kind(&self) -> StrategyKind {
        match self {
            Strategy::Autoregressive => StrategyKind::Autoregressive,
            Strategy::EarlyExit { .. } => StrategyKind::EarlyExit,
            Strategy::SelfSpeculative { .. } => StrategyKind::SelfSpeculative,
        }
    }

    /// Checks the exit layer and depth against a model of `layers` layers: early exit may use
    /// any layer, self-speculation needs at least one layer left to verify with.
    pub fn check(&self, layers: usize) -> Result<()> {
        let exit_ok = |e: usize, max: usize| {
            if (1..=max).contains(&e) {
                Ok(())
            } else {
                Err(Error::Invalid(format!(
                    "exit layer {e} is outside 1..={max}"
                )))
            }
        };
        match *self {
            Strategy::Autoregressive => Ok(()),
            Strategy::EarlyExit { exit_layer } => exit_ok(exit_layer, layers),
            Strategy::SelfSpeculative {
                exit_layer,
                num_speculations,
            } => {
                exit_ok(exit_layer, layers.saturating_sub(1))?;
                if num_speculations == 0 {
                    return Err(Error::Invalid("num_speculations must be at least 1".into()));
                }
                Ok(())
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub strategy: Strategy,
    pub max_new_tokens: usize,
    /// Keep going through end-of-sequence tokens (exactly max_new_tokens are produced).
    pub ignore_eos: bool,
    /// Token ids that end generation.
    pub eos_token_ids: Vec<u32>,
    /// Sample instead of greedy decoding.
    pub sampling: Option<SamplingParams>,
    /// Self-speculative only: stop drafting once a draft's top probability falls below this.
    pub draft_confidence: Option<f32>,
}

impl GenerateOptions {
    pub fn greedy(strategy: Strategy, max_new_tokens: usize) -> Self {
        GenerateOptions {
            strategy,
            max_new_tokens,
            ignore_eos: false,
            eos_token_ids: vec![],
            sampling: None,
            draft_confidence: None,
        }
    }
}

/// How a streamed token was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// One token per forward step (autoregressive or early exit).
    Plain,
    /// A draft the full model agreed with.
    Accepted,
    /// The full model's own token: a correction or the token after all accepted drafts.
    Bonus,
    /// A draft the full model rejected. Reported for display only; not part of the output.
    Rejected,
}

/// What the token callback wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// End generation; the reason ends up in the stats.
    Stop(StopReason),
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Where the model ran.
    pub backend: crate::model::Backend,
    pub strategy: StrategyKind,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub elapsed_ms: f64,
    pub tokens_per_second: f64,
    pub time_to_first_token_ms: f64,
    /// Mean time per output token after the first.
    pub time_per_output_token_ms: f64,
    /// Self-speculative rounds, drafted and accepted tokens, accepted / drafted.
    pub rounds: usize,
    pub drafted: usize,
    pub accepted: usize,
    pub acceptance_rate: f64,
    /// Wall time of self-speculative rounds, and of their drafting and verifying where those are
    /// separate submits (sampling, a confidence cut-off); greedy rounds are one submit each.
    pub round_ms: f64,
    pub draft_ms: f64,
    pub verify_ms: f64,
    /// Submits of the rounds alone, and per round (1 for greedy rounds).
    pub round_submits: u64,
    pub submits_per_round: f64,
    pub submits: u64,
    pub dispatches: u64,
    pub submits_per_token: f64,
    pub dispatches_per_token: f64,
    pub stop_reason: StopReason,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub stats: Stats,
}

/// State shared by the strategies: where tokens go, when to stop, how to choose a token.
struct Decoder<'a, E, F> {
    engine: &'a mut E,
    options: &'a GenerateOptions,
    on_token: F,
    rng: Rng,
    tokens: Vec<u32>,
    stats: Stats,
    first_token_at: Option<f64>,
    done: bool,
}

impl<E: Engine, F: FnMut(u32, TokenKind) -> Flow> Decoder<'_, E, F> {
    fn sampling(&self) -> bool {
        self.options.sampling.is_some()
    }

    async fn run(&mut self, calls: &[Call<'_>]) -> Result<Vec<Output>> {
        self.engine.run(calls).await
    }

    /// Feeds `tokens` at `pos` through `layers` and chooses the next token.
    async fn step(&mut self, tokens: &[u32], pos: usize, layers: Range<usize>) -> Result<u32> {
        let call = Call::new(Input::Tokens(tokens), pos, layers).logits(self.sampling());
        let out = self.run(&[call]).await?;
        Ok(self.choose(&out[0], 0).0)
    }

    /// The token for head row `row`, and (sampling) the distribution it was drawn from.
    fn choose(&mut self, out: &Output, row: usize) -> (u32, Vec<f32>) {
        match &self.options.sampling {
            Some(params) => {
                let p = distribution(&out.logits[row], params);
                (draw(&p, &mut self.rng), p)
            }
            None => (out.picks[row].token, vec![]),
        }
    }

    /// Appends a generated token; false once generation is over.
    fn emit(&mut self, token: u32, kind: TokenKind) -> bool {
        if self.done {
            return false;
        }
        self.tokens.push(token);
        self.first_token_at.get_or_insert_with(now_ms);
        let reason = match (self.on_token)(token, kind) {
            Flow::Stop(reason) => Some(reason),
            Flow::Continue
                if !self.options.ignore_eos && self.options.eos_token_ids.contains(&token) =>
            {
                Some(StopReason::Eos)
            }
            Flow::Continue if self.tokens.len() >= self.options.max_new_tokens => {
                Some(StopReason::MaxNewTokens)
            }
            Flow::Continue => None,
        };
        if let Some(reason) = reason {
            self.stats.stop_reason = reason;
            self.done = true;
        }
        !self.done
    }

    fn remaining(&self) -> usize {
        self.options.max_new_tokens - self.tokens.len()
    }

    /// One token per step through `layers` (all of them, or 0..E for early exit).
    async fn plain(&mut self, prompt: &[u32], layers: Range<usize>) -> Result<()> {
        let mut token = self.step(prompt, 0, layers.clone()).await?;
        let mut pos = prompt.len();
        while self.emit(token, TokenKind::Plain) {
            token = self.step(&[token], pos, layers.clone()).await?;
            pos += 1;
        }
        Ok(())
    }

    /// Drafts up to `depth` tokens after `last` (at `pos`) with layers 0..exit, saving each
    /// position's hidden state in the exit-query cache, one submit per draft: sampling and the
    /// confidence cut-off look at each draft on the host before deciding on the next.
    async fn draft(
        &mut self,
        last: u32,
        pos: usize,
        exit: usize,
        depth: usize,
    ) -> Result<(Vec<u32>, Vec<Vec<f32>>)> {
        let (mut drafts, mut dists) = (vec![], vec![]);
        let mut input = last;
        for i in 0..depth {
            let ids = [input];
            let call = Call::new(Input::Tokens(&ids), pos + i, 0..exit)
                .save(i)
                .logits(self.sampling());
            let out = self.run(&[call]).await?.remove(0);
            let (token, dist) = self.choose(&out, 0);
            let top = if dist.is_empty() {
                out.picks[0].probability()
            } else {
                dist.iter().copied().fold(0.0, f32::max)
            };
            drafts.push(token);
            dists.push(dist);
            let eos = !self.options.ignore_eos && self.options.eos_token_ids.contains(&token);
            if eos || self.options.draft_confidence.is_some_and(|min| top < min) {
                break;
            }
            input = token;
        }
        Ok((drafts, dists))
    }

    /// Greedy drafts without a confidence cut-off never need the host between calls: the whole
    /// round (drafts, the last draft's own pass, verification) is one submit.
    fn chained(&self) -> bool {
        !self.sampling() && self.options.draft_confidence.is_none()
    }

    /// One round in one submit: `depth` drafts chained on the GPU (each embeds the previous
    /// call's pick), the last draft through 0..exit, then layers exit..L over the `depth + 1`
    /// cached rows. Returns the drafts and the verification's output.
    async fn draft_and_verify(
        &mut self,
        last: u32,
        pos: usize,
        exit: usize,
        depth: usize,
    ) -> Result<(Vec<u32>, Vec<Vec<f32>>, Output)> {
        let layers = self.engine.config().num_hidden_layers;
        let first = [last];
        let mut calls: Vec<Call> = (0..depth)
            .map(|i| {
                let input = match i {
                    0 => Input::Tokens(&first),
                    _ => Input::PreviousPick,
                };
                Call::new(input, pos + i, 0..exit).save(i)
            })
            .collect();
        calls.push(
            Call::new(Input::PreviousPick, pos + depth, 0..exit)
                .save(depth)
                .head(Head::None),
        );
        calls.push(
            Call::new(Input::ExitCache { rows: depth + 1 }, pos, exit..layers).head(Head::All),
        );
        let mut out = self.run(&calls).await?;
        let verification = out.pop().unwrap_or_default();
        let drafts = out[..depth].iter().map(|o| o.picks[0].token).collect();
        Ok((drafts, vec![], verification))
    }

    /// Verification in its own submit: the last draft through 0..exit, then exit..L over the
    /// drafts' cached rows (with logits when sampling).
    async fn verify(&mut self, drafts: &[u32], pos: usize, exit: usize) -> Result<Output> {
        let layers = self.engine.config().num_hidden_layers;
        let n = drafts.len();
        let calls = [
            Call::new(Input::Tokens(&drafts[n - 1..]), pos + n, 0..exit)
                .save(n)
                .head(Head::None),
            Call::new(Input::ExitCache { rows: n + 1 }, pos, exit..layers)
                .head(Head::All)
                .logits(self.sampling()),
        ];
        Ok(self.run(&calls).await?.remove(1))
    }

    /// Self-speculative decoding. The KV cache of layers 0..exit written while drafting is exactly
    /// what the full model would write, so verification runs only layers exit..L over the cached
    /// hidden states; rejected positions are simply overwritten later (the roll-back is `pos`).
    async fn speculative(&mut self, prompt: &[u32], exit: usize, depth: usize) -> Result<()> {
        let layers = self.engine.config().num_hidden_layers;
        let mut last = self.step(prompt, 0, 0..layers).await?;
        let mut pos = prompt.len();
        if !self.emit(last, TokenKind::Bonus) {
            return Ok(());
        }
        loop {
            // Clamp so a round (accepted drafts + bonus) never passes the token budget.
            let depth = depth
                .min(self.remaining() - 1)
                .min(self.engine.max_rows() - 1);
            if depth == 0 {
                let token = self.step(&[last], pos, 0..layers).await?;
                if !self.emit(token, TokenKind::Bonus) {
                    return Ok(());
                }
                (last, pos) = (token, pos + 1);
                continue;
            }
            let t0 = now_ms();
            let submits = self.engine.counters().submits;
            let (drafts, q, out) = if self.chained() {
                self.draft_and_verify(last, pos, exit, depth).await?
            } else {
                let (drafts, q) = self.draft(last, pos, exit, depth).await?;
                let t1 = now_ms();
                let out = self.verify(&drafts, pos, exit).await?;
                self.stats.draft_ms += t1 - t0;
                self.stats.verify_ms += now_ms() - t1;
                (drafts, q, out)
            };
            let n = drafts.len();
            self.stats.round_ms += now_ms() - t0;
            self.stats.round_submits += self.engine.counters().submits - submits;
            self.stats.rounds += 1;
            self.stats.drafted += n;

            let mut accepted = 0;
            let mut correction = None;
            for (i, &x) in drafts.iter().enumerate() {
                let agrees = match &self.options.sampling {
                    None => (x == out.picks[i].token)
                        .then_some(())
                        .ok_or(out.picks[i].token),
                    Some(params) => {
                        let p = distribution(&out.logits[i], params);
                        let ratio = p[x as usize] / q[i][x as usize];
                        if self.rng.uniform() < ratio.min(1.0) {
                            Ok(())
                        } else {
                            Err(draw(&residual(&p, &q[i]), &mut self.rng))
                        }
                    }
                };
                match agrees {
                    Ok(()) => accepted += 1,
                    Err(token) => {
                        correction = Some(token);
                        break;
                    }
                }
            }
            let bonus = match correction {
                Some(token) => token,
                None => self.choose(&out, n).0,
            };
            self.stats.accepted += accepted;
            for &token in &drafts[..accepted] {
                if !self.emit(token, TokenKind::Accepted) {
                    return Ok(());
                }
            }
            for &token in &drafts[accepted..] {
                (self.on_token)(token, TokenKind::Rejected);
            }
            if !self.emit(bonus, TokenKind::Bonus) {
                return Ok(());
            }
            (last, pos) = (bonus, pos + accepted + 1);
        }
    }
}

/// Generates after `prompt`. `on_token` sees every token as it is produced (and rejected drafts,
/// marked as such) and can stop generation.
pub async fn generate<E: Engine>(
    engine: &mut E,
    prompt: &[u32],
    options: &GenerateOptions,
    on_token: impl FnMut(u32, TokenKind) -> Flow,
) -> Result<Generation> {
    let layers = engine.config().num_hidden_layers;
    options.strategy.check(layers)?;
    if let Some(s) = &options.sampling {
        s.validate()?;
    }
    if let Some(c) = options.draft_confidence {
        if !(0.0..=1.0).contains(&c) {
            return Err(Error::Invalid(format!(
                "draft_confidence must be in [0, 1], got {c}"
            )));
        }
    }
    if prompt.is_empty() {
        return Err(Error::Invalid("the prompt encodes to no tokens".into()));
    }
    let needed = prompt.len() as u128 + options.max_new_tokens as u128;
    if needed > engine.max_context() as u128 {
        return Err(Error::ContextLength {
            needed,
            limit: engine.max_context(),
        });
    }

    let start = now_ms();
    let before = engine.counters();
    let backend = engine.backend();
    let mut d = Decoder {
        engine,
        options,
        on_token,
        rng: Rng::new(options.sampling.map_or(0, |s| s.seed)),
        tokens: vec![],
        stats: Stats {
            backend,
            strategy: options.strategy.kind(),
            prompt_tokens: prompt.len(),
            stop_reason: StopReason::MaxNewTokens,
            ..Stats::default()
        },
        first_token_at: None,
        done: false,
    };
    if options.max_new_tokens > 0 {
        match options.strategy {
            Strategy::Autoregressive => d.plain(prompt, 0..layers).await?,
            Strategy::EarlyExit { exit_layer } => d.plain(prompt, 0..exit_layer).await?,
            Strategy::SelfSpeculative {
                exit_layer,
                num_speculations,
            } => d.speculative(prompt, exit_layer, num_speculations).await?,
        }
    }

    let end = now_ms();
    let counters = d.engine.counters();
    let (tokens, mut stats) = (d.tokens, d.stats);
    let n = tokens.len();
    let first = d.first_token_at.unwrap_or(end);
    stats.generated_tokens = n;
    stats.elapsed_ms = end - start;
    stats.tokens_per_second = if end > start {
        n as f64 / ((end - start) / 1e3)
    } else {
        0.0
    };
    stats.time_to_first_token_ms = first - start;
    stats.time_per_output_token_ms = if n > 1 {
        (end - first) / (n - 1) as f64
    } else {
        0.0
    };
    stats.acceptance_rate = if stats.drafted > 0 {
        stats.accepted as f64 / stats.drafted as f64
    } else {
        0.0
    };
    stats.submits = counters.submits - before.submits;
    stats.dispatches = counters.dispatches - before.dispatches;
    stats.submits_per_token = stats.submits as f64 / n.max(1) as f64;
    stats.submits_per_round = stats.round_submits as f64 / stats.rounds.max(1) as f64;
    stats.dispatches_per_token = stats.dispatches as f64 / n.max(1) as f64;
    Ok(Generation { tokens, stats })
}
