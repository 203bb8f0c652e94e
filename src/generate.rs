//! Generation strategies over the layer-range API: autoregressive (all layers), early exit
//! (layers 1..E and the shared exit head) and self-speculative decoding (draft with 1..E, verify
//! with E+1..L over the exit-query cache, accept, roll back), greedy or sampled.

use crate::adaptive::{self, Setting};
use crate::clock::now_ms;
use crate::engine::{Call, Engine, Head, Input, Output};
use crate::error::{Error, Result};
use crate::penalty::{History, Penalties};
use crate::sampler::{argmax, distribution, draw, residual, Rng, SamplingParams};
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
    /// Draft `num_speculations` tokens with layers 1..=exit_layer, verify them with the rest;
    /// either may be chosen every round (see `adaptive.rs`).
    SelfSpeculative {
        exit_layer: Setting,
        num_speculations: Setting,
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
                if layers < 2 {
                    return Err(Error::Invalid(
                        "self-speculative decoding needs a model of at least 2 layers".into(),
                    ));
                }
                if let Setting::Fixed(e) = exit_layer {
                    exit_ok(e, layers - 1)?;
                }
                if num_speculations == Setting::Fixed(0) {
                    return Err(Error::Invalid("num_speculations must be at least 1".into()));
                }
                Ok(())
            }
        }
    }

    /// Self-speculation with a fixed exit layer and depth.
    pub fn speculative(exit_layer: usize, num_speculations: usize) -> Self {
        Strategy::SelfSpeculative {
            exit_layer: Setting::Fixed(exit_layer),
            num_speculations: Setting::Fixed(num_speculations),
        }
    }

    /// Whether anything is chosen per round.
    pub fn adaptive(&self) -> bool {
        matches!(
            self,
            Strategy::SelfSpeculative { exit_layer, num_speculations }
                if *exit_layer == Setting::Auto || *num_speculations == Setting::Auto
        )
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
    /// What earlier adaptive generations on this engine learned (costs are measured again if
    /// `None`; [`crate::Model`] keeps it).
    pub learned: Option<adaptive::Learned>,
    /// The checkpoint says it was trained for early exit (generation_config.json's
    /// `assistant_early_exit`; [`crate::Model`] sets it): automatic speculation starts at the
    /// first decode step and is not held to a budget. Otherwise it earns that by paying.
    pub trained_for_early_exit: bool,
    /// Draft with the full exit head even when the model has a draft vocabulary (benchmarks
    /// compare the two in one process).
    pub full_vocab_drafts: bool,
    /// Leading prompt positions whose KV entries, in every layer, the engine already holds from
    /// an earlier generation (the same ids there): prefill starts after them. Less than the
    /// prompt's length (the last prompt token always runs, for the first pick).
    pub cached_prefix: usize,
    /// Let [`crate::Model`] keep the prefix its KV cache shares with the prompt from the
    /// previous generation (it sets `cached_prefix`).
    pub reuse_prefix: bool,
    /// Repetition controls (see [`crate::penalty`]); with any, tokens are chosen on the host
    /// from logits, greedy ones too.
    pub penalties: Penalties,
}

impl GenerateOptions {
    /// Whether a greedy self-speculative round can be one submit: nothing needs the host
    /// between its drafts (no sampling, no confidence cut-off).
    pub fn one_submit_rounds(&self) -> bool {
        self.sampling.is_none() && self.draft_confidence.is_none() && !self.penalties.active()
    }

    pub fn greedy(strategy: Strategy, max_new_tokens: usize) -> Self {
        GenerateOptions {
            strategy,
            max_new_tokens,
            ignore_eos: false,
            eos_token_ids: vec![],
            sampling: None,
            draft_confidence: None,
            learned: None,
            trained_for_early_exit: false,
            full_vocab_drafts: false,
            cached_prefix: 0,
            reuse_prefix: false,
            penalties: Penalties::default(),
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
    pub backend: crate::engine::Backend,
    pub strategy: StrategyKind,
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV entries were kept from the previous generation, not computed again.
    pub cached_prompt_tokens: usize,
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
    /// With `auto` exit layer or depth: the choices made and the estimates behind them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<adaptive::AdaptiveStats>,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub stats: Stats,
    /// Leading positions of prompt + tokens whose KV entries are now in the cache for every
    /// layer (what a next generation sharing that prefix can keep).
    pub kv_valid: usize,
    /// What adaptive speculation learned, for the next generation.
    pub learned: Option<adaptive::Learned>,
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
    /// Chooses exit layer and depth per round when either is `auto`.
    tuner: Option<adaptive::Tuner>,
    /// Plain steps taken before adaptive speculation measured its costs.
    steps_before_calibration: usize,
    /// Leading positions whose KV entries are written in every layer.
    kv_valid: usize,
    /// What the repetition controls count, when there are any.
    history: Option<History>,
}

impl<E: Engine, F: FnMut(u32, TokenKind) -> Flow> Decoder<'_, E, F> {
    /// Whether tokens are chosen on the host from logits (sampling or penalties) rather than
    /// from the head's argmax picks.
    fn host_choice(&self) -> bool {
        self.options.sampling.is_some() || self.history.is_some()
    }

    async fn run(&mut self, calls: &[Call<'_>]) -> Result<Vec<Output>> {
        self.engine.run(calls).await
    }

    /// Feeds `tokens` at `pos` through `layers` and chooses the next token. Through every layer,
    /// their positions join the ones the KV cache holds (early exit writes only those below E).
    async fn step(&mut self, tokens: &[u32], pos: usize, layers: Range<usize>) -> Result<u32> {
        let all = layers == (0..self.engine.config().num_hidden_layers);
        let call = Call::new(Input::Tokens(tokens), pos, layers).logits(self.host_choice());
        let out = self.run(&[call]).await?;
        if all {
            self.kv_valid = pos + tokens.len();
        }
        Ok(self.choose(&out[0], 0, &[]).0)
    }

    /// Head row `row`'s logits over the whole vocabulary (-inf outside the draft vocabulary
    /// for a draft head's row), penalized as if `pending` (the round's drafts before the row)
    /// had been generated.
    fn logits(&self, out: &Output, row: usize, pending: &[u32]) -> Vec<f32> {
        let logits = &out.logits[row];
        let vocab = self.engine.config().vocab_size;
        let mut full = match self.engine.draft_vocab() {
            Some(ids) if logits.len() != vocab => {
                let mut full = vec![f32::NEG_INFINITY; vocab];
                for (&id, &l) in ids.iter().zip(logits) {
                    full[id as usize] = l;
                }
                full
            }
            _ => logits.clone(),
        };
        if let Some(history) = &self.history {
            history.apply(&self.options.penalties, &mut full, pending);
        }
        full
    }

    /// The token for head row `row` (the drafts before it in the round are `pending`), and
    /// (sampling) the distribution over the whole vocabulary it was drawn from.
    fn choose(&mut self, out: &Output, row: usize, pending: &[u32]) -> (u32, Vec<f32>) {
        if !self.host_choice() {
            return (out.picks[row].token, vec![]);
        }
        let logits = self.logits(out, row, pending);
        match &self.options.sampling {
            Some(params) => {
                let p = distribution(&logits, params);
                (draw(&p, &mut self.rng), p)
            }
            None => (argmax(&logits), vec![]),
        }
    }

    /// Whether drafts use the reduced draft head.
    fn draft_vocab(&self) -> bool {
        self.engine.draft_vocab().is_some() && !self.options.full_vocab_drafts
    }

    /// Appends a generated token; false once generation is over.
    fn emit(&mut self, token: u32, kind: TokenKind) -> bool {
        if self.done {
            return false;
        }
        self.tokens.push(token);
        if let Some(history) = &mut self.history {
            history.push(token);
        }
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

    /// The prompt after its cached prefix, through `layers`: the first token.
    async fn prefill(&mut self, prompt: &[u32], layers: Range<usize>) -> Result<u32> {
        let cached = self.options.cached_prefix;
        self.step(&prompt[cached..], cached, layers).await
    }

    /// One token per step through `layers` (all of them, or 0..E for early exit).
    async fn plain(&mut self, prompt: &[u32], layers: Range<usize>) -> Result<()> {
        let mut token = self.prefill(prompt, layers.clone()).await?;
        let mut pos = prompt.len();
        while self.emit(token, TokenKind::Plain) {
            token = self.step(&[token], pos, layers.clone()).await?;
            pos += 1;
        }
        Ok(())
    }

    /// Drafts up to `depth` tokens after `last` (at `pos`) with layers 0..exit, saving each
    /// position's hidden state in the exit-query cache, one submit per draft: sampling and the
    /// confidence cut-offs look at each draft on the host before deciding on the next.
    async fn draft(
        &mut self,
        round: &mut Round,
        last: u32,
        pos: usize,
        below: &[usize],
    ) -> Result<()> {
        let mut input = last;
        let mut confidence = 1.0;
        let draft_vocab = self.draft_vocab();
        for i in 0..round.depth {
            let ids = [input];
            let call = Call::new(Input::Tokens(&ids), pos + i, 0..round.exit)
                .save(i)
                .logits(self.host_choice())
                .shadow(below, draft_vocab)
                .draft_vocab(draft_vocab);
            let out = self.run(&[call]).await?.remove(0);
            let (token, dist) = self.choose(&out, 0, &round.drafts);
            let top = if dist.is_empty() {
                out.picks[0].probability()
            } else {
                dist.iter().copied().fold(0.0, f32::max)
            };
            round.drafted(token, dist, top, &out);
            let eos = !self.options.ignore_eos && self.options.eos_token_ids.contains(&token);
            if eos || self.options.draft_confidence.is_some_and(|min| top < min) {
                break;
            }
            let more = i + 1 < round.depth;
            if let Some(tuner) = self.tuner.as_mut().filter(|t| t.cut_off && more) {
                confidence *= tuner.learned.confidence.probability(round.exit, top);
                if !tuner.keep_drafting(round.exit, i + 1, confidence) {
                    tuner.stats.cut_offs += 1;
                    break;
                }
            }
            input = token;
        }
        Ok(())
    }

    /// One round in one submit: `depth` drafts chained on the GPU (each embeds the previous
    /// call's pick), the last draft through 0..exit, then layers exit..L over the `depth + 1`
    /// cached rows.
    async fn draft_and_verify(
        &mut self,
        round: &mut Round,
        last: u32,
        pos: usize,
        (below, above): (&[usize], &[usize]),
    ) -> Result<()> {
        let layers = self.engine.config().num_hidden_layers;
        let (exit, depth) = (round.exit, round.depth);
        let draft_vocab = self.draft_vocab();
        let first = [last];
        let mut calls: Vec<Call> = (0..depth)
            .map(|i| {
                let input = match i {
                    0 => Input::Tokens(&first),
                    _ => Input::PreviousPick,
                };
                Call::new(input, pos + i, 0..exit)
                    .save(i)
                    .shadow(below, draft_vocab)
                    .draft_vocab(draft_vocab)
            })
            .collect();
        calls.push(
            Call::new(Input::PreviousPick, pos + depth, 0..exit)
                .save(depth)
                .head(round.last_head())
                .draft_vocab(draft_vocab)
                .shadow(below, draft_vocab),
        );
        calls.push(
            Call::new(Input::ExitCache { rows: depth + 1 }, pos, exit..layers)
                .head(Head::All)
                .shadow(above, draft_vocab),
        );
        let mut out = self.run(&calls).await?;
        round.verification = out.pop().unwrap_or_default();
        let last_draft = out.pop().unwrap_or_default();
        for o in &out {
            round.drafted(o.picks[0].token, vec![], o.picks[0].probability(), o);
        }
        round.last_pass(&last_draft);
        Ok(())
    }

    /// Verification in its own submit: the last draft through 0..exit, then exit..L over the
    /// drafts' cached rows (with logits when sampling).
    async fn verify(
        &mut self,
        round: &mut Round,
        pos: usize,
        (below, above): (&[usize], &[usize]),
    ) -> Result<()> {
        let layers = self.engine.config().num_hidden_layers;
        let n = round.drafts.len();
        let draft_vocab = self.draft_vocab();
        let calls = [
            Call::new(
                Input::Tokens(&round.drafts[n - 1..]),
                pos + n,
                0..round.exit,
            )
            .save(n)
            .head(round.last_head())
            .draft_vocab(draft_vocab)
            .shadow(below, draft_vocab),
            Call::new(Input::ExitCache { rows: n + 1 }, pos, round.exit..layers)
                .head(Head::All)
                .logits(self.host_choice())
                .shadow(above, draft_vocab),
        ];
        let mut out = self.run(&calls).await?;
        round.verification = out.pop().unwrap_or_default();
        round.last_pass(&out.pop().unwrap_or_default());
        Ok(())
    }

    /// A plain full-model step in place of a round, probing the `probe` exit layers on the way.
    async fn probed_step(&mut self, last: u32, pos: usize, probe: &[usize]) -> Result<u32> {
        let layers = self.engine.config().num_hidden_layers;
        let ids = [last];
        let call = Call::new(Input::Tokens(&ids), pos, 0..layers)
            .logits(self.host_choice())
            .shadow(probe, self.draft_vocab());
        let out = self.run(&[call]).await?.remove(0);
        if let Some(tuner) = &mut self.tuner {
            let target = out.picks[0].token;
            for (&e, picks) in probe.iter().zip(&out.shadow) {
                tuner
                    .learned
                    .acceptance
                    .observe(e, 0, picks[0].token == target);
            }
            tuner.learned.acceptance.ended(0);
            tuner.probed(probe.len(), 0, 1);
        }
        Ok(self.choose(&out, 0, &[]).0)
    }

    /// Sets up adaptive speculation after the prefill emitted `last`, the token to run at `pos`:
    /// with what earlier generations learned, or else with costs measured on two decode steps
    /// (emitted here), the second run as a block of two rows, and two small calls before them.
    /// Plain steps come first: [`adaptive::STEPS_BEFORE_CALIBRATION`] of them for an automatic
    /// depth on a model not known to be trained for early exit, and any while the context has
    /// no room for the block. The token to run next and its position, or `None` once generation
    /// is over.
    async fn start_tuner(
        &mut self,
        mut last: u32,
        mut pos: usize,
        exit: Setting,
        depth: Setting,
    ) -> Result<Option<(u32, usize)>> {
        let layers = self.engine.config().num_hidden_layers;
        let trained = self.options.trained_for_early_exit;
        if let Some(learned) = &self.options.learned {
            let tuner = adaptive::Tuner::new(layers, exit, depth, learned.clone(), false, trained);
            self.tuner = Some(self.cut_off(tuner, depth));
            return Ok(Some((last, pos)));
        }
        let wait = depth == Setting::Auto && !trained;
        let mut waited_ms = 0.0;
        // The block at pos + 1 writes pos + 2.
        while (wait && self.steps_before_calibration < adaptive::STEPS_BEFORE_CALIBRATION)
            || pos + 3 > self.engine.max_context()
        {
            let t0 = now_ms();
            let token = self.step(&[last], pos, 0..layers).await?;
            waited_ms += now_ms() - t0;
            self.steps_before_calibration += 1;
            if !self.emit(token, TokenKind::Bonus) {
                return Ok(None);
            }
            (last, pos) = (token, pos + 1);
        }
        let t0 = now_ms();
        let [bare_ms, one_ms] = adaptive::time_layer_one(self.engine, last, pos).await?;
        let t1 = now_ms();
        let token = self.step(&[last], pos, 0..layers).await?;
        let t2 = now_ms();
        if !self.emit(token, TokenKind::Bonus) {
            return Ok(None);
        }
        let next = self.block_step(token, pos + 1).await?;
        let shapes = adaptive::Shapes {
            bare_ms,
            one_ms,
            step_ms: t2 - t1,
            block_ms: now_ms() - t2,
        };
        let learned = adaptive::Learned::new(
            layers,
            shapes.costs(layers),
            self.options.one_submit_rounds(),
        );
        let mut tuner = adaptive::Tuner::new(layers, exit, depth, learned, true, trained);
        tuner.account(waited_ms, self.steps_before_calibration, false);
        tuner.calibrated(t1 - t0 + (shapes.block_ms - shapes.step_ms).max(0.0));
        tuner.account(shapes.step_ms, 1, false);
        tuner.account(shapes.block_ms, 1, false);
        self.tuner = Some(self.cut_off(tuner, depth));
        Ok(self.emit(next, TokenKind::Bonus).then_some((next, pos + 2)))
    }

    /// Sampled rounds look at every draft on the host anyway, so with an automatic depth they
    /// can stop drafting by confidence at no extra submits (on greedy CPU rounds the cut-off
    /// measured slower than one-submit rounds).
    fn cut_off(&self, mut tuner: adaptive::Tuner, depth: Setting) -> adaptive::Tuner {
        tuner.cut_off = depth == Setting::Auto
            && self.options.draft_confidence.is_none()
            && self.options.sampling.is_some();
        tuner
    }

    /// A plain step of `token` at `pos` run as a block of two rows, the second a copy whose KV
    /// row the next step at `pos + 1` writes again before anything reads it: the first row's
    /// token, and the time of the block calibration fits what extra rows cost from.
    async fn block_step(&mut self, token: u32, pos: usize) -> Result<u32> {
        let layers = self.engine.config().num_hidden_layers;
        let tokens = [token; 2];
        let call = Call::new(Input::Tokens(&tokens), pos, 0..layers)
            .head(Head::All)
            .logits(self.host_choice());
        let out = self.run(&[call]).await?;
        self.kv_valid = pos + 1;
        Ok(self.choose(&out[0], 0, &[]).0)
    }

    /// Self-speculative decoding. The KV cache of layers 0..exit written while drafting is exactly
    /// what the full model would write, so verification runs only layers exit..L over the cached
    /// hidden states; rejected positions are simply overwritten later (the roll-back is `pos`).
    /// With an adaptive tuner, every round chooses its exit layer and depth (depth 0: a plain
    /// step) and some rounds carry shadow picks that teach it about other exit layers.
    async fn speculative(&mut self, prompt: &[u32], exit: Setting, depth: Setting) -> Result<()> {
        let layers = self.engine.config().num_hidden_layers;
        let mut last = self.prefill(prompt, 0..layers).await?;
        let mut pos = prompt.len();
        if !self.emit(last, TokenKind::Bonus) {
            return Ok(());
        }
        if self.options.strategy.adaptive() {
            match self.start_tuner(last, pos, exit, depth).await? {
                Some(next) => (last, pos) = next,
                None => return Ok(()),
            }
        }
        loop {
            // Clamp so a round (accepted drafts + bonus) never passes the token budget.
            let cap = (self.remaining() - 1).min(self.engine.max_rows() - 1);
            let (exit, depth, probe) = match &mut self.tuner {
                Some(tuner) => {
                    let plan = tuner.plan(cap);
                    let probe = tuner.probe(&plan);
                    (plan.exit, plan.depth, probe)
                }
                None => (
                    exit.fixed().unwrap_or(1),
                    depth.fixed().unwrap_or(1).min(cap),
                    None,
                ),
            };
            let frontier = probe.is_some();
            let probe = probe.unwrap_or_default();
            if depth == 0 {
                let t0 = now_ms();
                let token = self.probed_step(last, pos, &probe).await?;
                self.kv_valid = pos + 1;
                if let Some(tuner) = &mut self.tuner {
                    let ms = now_ms() - t0;
                    // A probed step does extra work: its time would overstate a step's.
                    if !frontier {
                        tuner.learned.timing.observe(exit, 0, ms);
                    }
                    tuner.account(ms, 1, frontier);
                }
                if !self.emit(token, TokenKind::Bonus) {
                    return Ok(());
                }
                (last, pos) = (token, pos + 1);
                continue;
            }
            let split = probe.partition_point(|&e| e < exit);
            let shadow = (&probe[..split], &probe[split..]);
            let t0 = now_ms();
            let submits = self.engine.counters().submits;
            let mut round = Round::new(exit, depth, frontier);
            // Greedy rounds without a cut-off are one submit: drafts, the last draft's own pass,
            // verification.
            if self.options.one_submit_rounds() {
                self.draft_and_verify(&mut round, last, pos, shadow).await?;
            } else {
                self.draft(&mut round, last, pos, shadow.0).await?;
                let t1 = now_ms();
                self.verify(&mut round, pos, shadow).await?;
                self.stats.draft_ms += t1 - t0;
                self.stats.verify_ms += now_ms() - t1;
            }
            let (drafts, q, out) = (&round.drafts, &round.dists, &round.verification);
            let n = drafts.len();
            let ms = now_ms() - t0;
            self.stats.round_ms += ms;
            // Probe rounds do extra work: their times would overstate a round's cost.
            if let Some(tuner) = self.tuner.as_mut().filter(|_| !frontier) {
                tuner.learned.timing.observe(exit, n, ms);
            }
            self.stats.round_submits += self.engine.counters().submits - submits;
            self.stats.rounds += 1;
            self.stats.drafted += n;

            let mut accepted = 0;
            let mut correction = None;
            for (i, &x) in drafts.iter().enumerate() {
                // Row i's penalties count the drafts before it, as the draft's did.
                let agrees = if self.host_choice() {
                    let logits = self.logits(out, i, &drafts[..i]);
                    match self.options.sampling {
                        None => {
                            let target = argmax(&logits);
                            (x == target).then_some(()).ok_or(target)
                        }
                        Some(params) => {
                            let p = distribution(&logits, &params);
                            let ratio = p[x as usize] / q[i][x as usize];
                            if self.rng.uniform() < ratio.min(1.0) {
                                Ok(())
                            } else {
                                Err(draw(&residual(&p, &q[i]), &mut self.rng))
                            }
                        }
                    }
                } else {
                    let target = out.picks[i].token;
                    (x == target).then_some(()).ok_or(target)
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
                None => self.choose(&round.verification, n, &round.drafts).0,
            };
            if let Some(tuner) = &mut self.tuner {
                round.teach(tuner, accepted, shadow);
                tuner.account(ms, accepted + 1, true);
            }
            // The round's inputs up to the last accepted draft went through every layer: drafts
            // below E, verification above.
            self.kv_valid = pos + accepted + 1;
            self.stats.accepted += accepted;
            for &token in &round.drafts[..accepted] {
                if !self.emit(token, TokenKind::Accepted) {
                    return Ok(());
                }
            }
            for &token in &round.drafts[accepted..] {
                (self.on_token)(token, TokenKind::Rejected);
            }
            if !self.emit(bonus, TokenKind::Bonus) {
                return Ok(());
            }
            (last, pos) = (bonus, pos + accepted + 1);
        }
    }
}

/// What one self-speculative round drafted and what verification said.
struct Round {
    exit: usize,
    /// Drafts planned (fewer when a cut-off stopped drafting).
    depth: usize,
    drafts: Vec<u32>,
    /// Each draft's distribution (sampling only).
    dists: Vec<Vec<f32>>,
    /// The exit head's argmax at `exit` for each draft (the draft itself when greedy), and the
    /// draft's top probability.
    argmax: Vec<u32>,
    tops: Vec<f32>,
    /// Shadow picks of the draft calls below `exit`: per row, one token per shadow layer.
    below: Vec<Vec<u32>>,
    /// Probe rounds also pick at `exit` for the last draft's own row: the draft the round would
    /// have made next, so positions past the chosen depth keep being observed.
    frontier: bool,
    frontier_pick: Option<u32>,
    verification: Output,
}

impl Round {
    fn new(exit: usize, depth: usize, frontier: bool) -> Self {
        Round {
            exit,
            depth,
            drafts: vec![],
            dists: vec![],
            argmax: vec![],
            tops: vec![],
            below: vec![],
            frontier,
            frontier_pick: None,
            verification: Output::default(),
        }
    }

    fn drafted(&mut self, token: u32, dist: Vec<f32>, top: f32, out: &Output) {
        self.drafts.push(token);
        self.dists.push(dist);
        self.argmax.push(out.picks[0].token);
        self.tops.push(top);
        self.last_draft(out);
    }

    /// The head of the last draft's own pass: a pick only in probe rounds.
    fn last_head(&self) -> Head {
        match self.frontier {
            true => Head::Last,
            false => Head::None,
        }
    }

    /// The last draft's own pass: its frontier pick (probe rounds) and shadow picks.
    fn last_pass(&mut self, out: &Output) {
        self.frontier_pick = out.picks.first().map(|p| p.token);
        self.last_draft(out);
    }

    /// The shadow picks of a draft call (the drafts' own and the last draft's pass).
    fn last_draft(&mut self, out: &Output) {
        self.below
            .push(out.shadow.iter().map(|p| p[0].token).collect());
    }

    /// Tells the tuner, for every row whose input was on the true sequence (rows 0..=accepted),
    /// whether the exit layer and each shadow layer picked the full model's token.
    fn teach(
        &self,
        tuner: &mut adaptive::Tuner,
        accepted: usize,
        (below, above): (&[usize], &[usize]),
    ) {
        let targets = &self.verification.picks;
        for (i, target) in targets.iter().enumerate().take(accepted + 1) {
            if let Some(&a) = self.argmax.get(i) {
                tuner
                    .learned
                    .acceptance
                    .observe(self.exit, i, a == target.token);
                tuner
                    .learned
                    .confidence
                    .observe(self.exit, self.tops[i], i < accepted);
            } else if let Some(a) = self.frontier_pick {
                tuner
                    .learned
                    .acceptance
                    .observe(self.exit, i, a == target.token);
            }
            for (&e, &t) in below.iter().zip(self.below.get(i).into_iter().flatten()) {
                tuner.learned.acceptance.observe(e, i, t == target.token);
            }
            for (&e, picks) in above.iter().zip(&self.verification.shadow) {
                tuner
                    .learned
                    .acceptance
                    .observe(e, i, picks[i].token == target.token);
            }
        }
        tuner.learned.acceptance.ended(accepted);
        let rows = targets.len();
        tuner.probed(below.len(), above.len(), rows);
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
    options.penalties.validate()?;
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
    if options.cached_prefix >= prompt.len() {
        return Err(Error::Invalid(format!(
            "a cached prefix of {} tokens leaves nothing of the {}-token prompt to run",
            options.cached_prefix,
            prompt.len()
        )));
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
            cached_prompt_tokens: options.cached_prefix,
            stop_reason: StopReason::MaxNewTokens,
            ..Stats::default()
        },
        first_token_at: None,
        done: false,
        tuner: None,
        steps_before_calibration: 0,
        kv_valid: options.cached_prefix,
        history: options.penalties.active().then(|| History::new(prompt)),
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
    // Positions past the emitted tokens (accepted drafts after a stop) hold ids the caller
    // never sees.
    let kv_valid = d.kv_valid.min(prompt.len() + tokens.len());
    let (adaptive, learned) = d.tuner.map(adaptive::Tuner::finish).unzip();
    // A generation that ended before measuring costs still says what auto did.
    stats.adaptive = adaptive
        .or_else(|| {
            (options.strategy)
                .adaptive()
                .then(adaptive::AdaptiveStats::default)
        })
        .map(|a| adaptive::AdaptiveStats {
            steps_before_calibration: d.steps_before_calibration,
            ..a
        });
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
    Ok(Generation {
        tokens,
        stats,
        kv_valid,
        learned,
    })
}
