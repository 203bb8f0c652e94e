//! Adaptive self-speculation: the exit layer E and the draft depth d chosen every round.
//!
//! Parts, each testable on its own:
//! - [`Costs`]: what one decoder layer, the exit head, one submission and the extra rows of a
//!   block cost on the running device, measured once per model from two decode steps (the
//!   second run as a block of two rows) and two small calls before them ([`time_layer_one`],
//!   [`Shapes`]), at the first decode step or after [`STEPS_BEFORE_CALIBRATION`] plain ones;
//!   [`Timing`] then fits each exit layer's round times as they are measured.
//! - [`Acceptance`]: per exit layer and draft position, how often the exit head's argmax there
//!   agrees with the full model's token. Every round observes its own exit layer for free (its
//!   drafts against the verification's picks); every [`PROBE_EVERY`] rounds, shadow picks (the
//!   exit head applied to rows the round computes anyway: after layers below E in the draft
//!   calls, above E in the verification block) observe the other candidate layers.
//! - [`Confidence`]: a draft's top probability calibrated against what was accepted, for
//!   rounds that stop drafting early (sampled ones).
//! - [`choose`]: the (E, d) with the most expected tokens per millisecond. A round of d drafts
//!   yields 1 + a0 + a0 a1 + ... tokens (the accepted prefix plus the verifier's own token), a_i
//!   the acceptance at position i; d = 0 is a plain full-model step.
//! - [`Tuner`]: plans every round with [`choose`], holding speculation that has not paid on this
//!   model to a budget per generation, so that on a model not trained for early exit auto costs
//!   at most 0.5% of a generation's decode time (1.5% in the first).
//!
//! Any choice is lossless: each round is an ordinary self-speculative round whose E and d depend
//! only on earlier rounds.

use crate::clock::now_ms;
use crate::engine::{Call, Engine, Head, Input};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A value the user fixes, or `auto` (chosen every round).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SettingText")]
pub enum Setting {
    Auto,
    Fixed(usize),
}

/// How a [`Setting`] is written in JSON: a number or the string "auto".
#[derive(Deserialize)]
#[serde(untagged)]
enum SettingText {
    Number(f64),
    Text(String),
}

impl TryFrom<SettingText> for Setting {
    type Error = String;
    fn try_from(v: SettingText) -> std::result::Result<Self, String> {
        match v {
            SettingText::Number(n) if n >= 0.0 && n.fract() == 0.0 => {
                Ok(Setting::Fixed(n as usize))
            }
            SettingText::Number(n) => Err(format!("expected a whole number or \"auto\", got {n}")),
            SettingText::Text(s) => s.parse(),
        }
    }
}

impl Serialize for Setting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Setting::Auto => s.serialize_str("auto"),
            Setting::Fixed(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl std::str::FromStr for Setting {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "auto" => Ok(Setting::Auto),
            n => n
                .parse()
                .map(Setting::Fixed)
                .map_err(|_| format!("expected a whole number or \"auto\", got {s:?}")),
        }
    }
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Setting::Auto => f.write_str("auto"),
            Setting::Fixed(n) => write!(f, "{n}"),
        }
    }
}

impl Setting {
    pub fn fixed(self) -> Option<usize> {
        match self {
            Setting::Auto => None,
            Setting::Fixed(n) => Some(n),
        }
    }
}

/// Rounds between shadow probes of the other candidate exit layers (the first round probes).
/// Probes are paid for in exit heads, and when the choice is already right they are all auto
/// loses to the best fixed pair: on the embedded model, probing 4 layers every 8 rounds took 5-7%
/// of the time (auto then reached 93-95% of the pair it chose in every round), 2 layers every
/// 16 rounds about 2%.
pub const PROBE_EVERY: usize = 16;
/// Most shadow exit layers one probe looks at: those nearest the current exit layer (the choice
/// walks from layer to layer).
pub const MAX_SHADOW: usize = 2;
/// Deepest draft `auto` considers.
pub const MAX_AUTO_DEPTH: usize = 12;
/// Weight of each older observation relative to the next one (an effective memory of about 33
/// observations per layer), so the estimates follow the text as it changes.
const FORGET: f64 = 0.97;
/// The share of each generation's decode time that speculation not known to pay may lose against
/// plain steps. A round (or probe) is tried only if, even when every draft is rejected, this
/// generation's losses stay within this share of its decode time so far; on a model where
/// speculation has paid (see [`Tuner::trusted`]) nothing is held back. With 0.5% of all the
/// time (not per generation), auto measured a median 0.99x of autoregressive on SmolLM2, which
/// is not trained for early exit.
const EXPLORE_BUDGET: f64 = 0.005;
/// The share of its decode time that a model's first adaptive generation, the one that measures
/// the costs, may lose to them and to its first rounds.
const START_BUDGET: f64 = 0.015;
/// Plain steps a model's first adaptive generation takes before measuring costs, unless the
/// depth is fixed or the checkpoint says it was trained for early exit. Measuring takes about
/// 1.5 steps (0.8 on SmolLM2-135M's CPU backend: the layer-1 calls and the block's second row;
/// more where a submit costs more than the layers it runs), so it fits in the first
/// generation's budget of 1.5% of the time, and a short first generation on a model not
/// trained for early exit loses nothing.
pub const STEPS_BEFORE_CALIBRATION: usize = 100;
/// Prior agreement count and weight: an unobserved layer counts as agreeing half the time.
const PRIOR_AGREE: f64 = 0.5;
const PRIOR_SEEN: f64 = 1.0;
/// Every round, all acceptance counts fade by this much (a half-life of about 35 rounds), so an
/// estimate nothing observes lately drifts back to its prior (the position before it) and the
/// chooser tries it again: a bad spell of second drafts does not rule out deep drafts for good.
const ROUND_FADE: f64 = 0.98;

/// Measured costs on the running device, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Costs {
    /// Fixed cost of one submission (one `Engine::run`), its readback included.
    pub submit_ms: f64,
    /// One decoder layer for one row.
    pub layer_ms: f64,
    /// The exit head for one row (final norm, lm_head, argmax).
    pub head_ms: f64,
    /// Extra cost of each row of a block beyond the first, as a fraction of the one-row cost:
    /// 0 when a block reads its weights once and rows are free, 1 when every row is a full pass.
    pub row_fraction: f64,
}

impl Costs {
    /// Cost of a block of `rows` rows relative to one row.
    fn block(&self, rows: usize) -> f64 {
        1.0 + self.row_fraction * rows.saturating_sub(1) as f64
    }

    /// One plain step through all `layers` layers.
    pub fn step_ms(&self, layers: usize) -> f64 {
        self.submit_ms + layers as f64 * self.layer_ms + self.head_ms
    }

    /// A round of `depth` drafts from exit layer `exit`: the drafts (each through 0..E and the
    /// head), the last draft's own pass through 0..E, and the verification block of depth + 1
    /// rows through E..L and the head. `chained` rounds are one submission; otherwise every draft
    /// is its own.
    pub fn round_ms(&self, layers: usize, exit: usize, depth: usize, chained: bool) -> f64 {
        let (e, d) = (exit as f64, depth as f64);
        let g = self.block(depth + 1);
        let drafts = d * (e * self.layer_ms + self.head_ms) + e * self.layer_ms;
        let verify = ((layers - exit) as f64 * self.layer_ms + self.head_ms) * g;
        let submits = if chained { 1.0 } else { d + 1.0 };
        submits * self.submit_ms + drafts + verify
    }
}

/// Times of four call shapes, in milliseconds: [`Shapes::costs`] fits [`Costs`] from them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shapes {
    /// Layer 1 without the head: submit + layer.
    pub bare_ms: f64,
    /// Layer 1 and the head: submit + layer + head.
    pub one_ms: f64,
    /// A plain step, every layer and the head on one row: submit + L layer + head.
    pub step_ms: f64,
    /// Two rows through every layer and the head on both: submit + (L layer + head) x (1 +
    /// row_fraction).
    pub block_ms: f64,
}

impl Shapes {
    /// The costs of a model of `layers` layers.
    pub fn costs(&self, layers: usize) -> Costs {
        const TINY: f64 = 1e-6;
        let head_ms = (self.one_ms - self.bare_ms).max(TINY);
        let layer_ms =
            ((self.step_ms - self.one_ms) / layers.saturating_sub(1).max(1) as f64).max(TINY);
        let submit_ms = (self.bare_ms - layer_ms).max(0.0);
        let pass = (self.step_ms - submit_ms).max(TINY);
        Costs {
            submit_ms,
            layer_ms,
            head_ms,
            row_fraction: ((self.block_ms - submit_ms) / pass - 1.0).clamp(0.0, 1.0),
        }
    }
}

/// The [`Shapes`] `bare_ms` and `one_ms`, timed with `token` at position `pos`, the first
/// position decoding writes: the step there writes layer 1's KV row again before anything reads
/// it. With the block's second row, these calls are all that calibration adds to the first
/// adaptive generation: on SmolLM2-135M about 6 ms, less than a step, where timing the block on
/// its own took 13 ms. The steps are real decode steps, the caches are warm from the prefill,
/// each small shape takes the fastest of two runs, and [`Timing`] corrects what they get wrong
/// from the rounds that follow. The caller leaves room for the block at `pos + 1`.
pub async fn time_layer_one<E: Engine>(engine: &mut E, token: u32, pos: usize) -> Result<[f64; 2]> {
    if engine.max_rows() < 2 {
        return Err(Error::Invalid(
            "no room to measure costs for adaptive speculation: the engine runs one row at a time"
                .into(),
        ));
    }
    let one = [token];
    let mut time = async |calls: &[Call<'_>], runs: usize| -> Result<f64> {
        let mut best = f64::INFINITY;
        for _ in 0..runs {
            let t0 = now_ms();
            engine.run(calls).await?;
            best = best.min(now_ms() - t0);
        }
        Ok(best)
    };
    Ok([
        time(
            &[Call::new(Input::Tokens(&one), pos, 0..1).head(Head::None)],
            2,
        )
        .await?,
        time(&[Call::new(Input::Tokens(&one), pos, 0..1)], 2).await?,
    ])
}

/// Per exit layer (1..L-1) and cell (a draft position, a confidence bin), forgetting counts of
/// outcomes and of how many of them were good: what [`Acceptance`] and [`Confidence`] estimate
/// from.
#[derive(Debug, Clone)]
struct Tally<const N: usize> {
    good: Vec<[f64; N]>,
    seen: Vec<[f64; N]>,
}

impl<const N: usize> Tally<N> {
    fn new(layers: usize) -> Self {
        let n = layers.saturating_sub(1);
        Tally {
            good: vec![[0.0; N]; n],
            seen: vec![[0.0; N]; n],
        }
    }

    /// One outcome for exit layer `exit` in `cell` (cells past the last count as the last).
    fn observe(&mut self, exit: usize, cell: usize, good: bool) {
        let (l, i) = (exit - 1, cell.min(N - 1));
        self.good[l][i] = FORGET * self.good[l][i] + f64::from(u8::from(good));
        self.seen[l][i] = FORGET * self.seen[l][i] + 1.0;
    }

    /// The good fraction of `cell`, with `prior` weighing [`PRIOR_SEEN`] outcomes.
    fn rate(&self, exit: usize, cell: usize, prior: f64) -> f64 {
        let (l, i) = (exit - 1, cell.min(N - 1));
        (self.good[l][i] + PRIOR_SEEN * prior) / (self.seen[l][i] + PRIOR_SEEN)
    }
}

/// Accepted drafts in a round that start a streak: the next round reads the estimates kept for
/// rounds after a streak.
pub const STREAK: usize = 2;

/// Per exit layer (1..L-1) and draft position (0..MAX_AUTO_DEPTH), how often the exit head
/// agreed with the full model on a row whose earlier drafts were all accepted. Positions differ:
/// on the embedded model the first draft after the verifier's own token is accepted far more
/// often than later ones, so one rate per layer would overrate deep drafts. A position with few
/// observations leans on the position before it.
///
/// Acceptance comes in spells: where the text repeats itself or runs on with certainty every
/// draft is accepted, elsewhere only the first one or two. So the estimates are kept twice, for
/// rounds after one that accepted fewer than [`STREAK`] drafts and for rounds after a streak,
/// and a round reads (and teaches) the set its predecessor selects: a spell is met with deep
/// drafts from its second round on, instead of once one shared estimate has climbed.
#[derive(Debug, Clone)]
pub struct Acceptance {
    /// `[after a short round, after a streak]`.
    tallies: [Tally<MAX_AUTO_DEPTH>; 2],
    streak: bool,
}

impl Acceptance {
    pub fn new(layers: usize) -> Self {
        Acceptance {
            tallies: [Tally::new(layers), Tally::new(layers)],
            streak: false,
        }
    }

    /// One observation of exit layer `exit` at draft position `position` (positions past the
    /// deepest draft count as the deepest), in the current round.
    pub fn observe(&mut self, exit: usize, position: usize, agreed: bool) {
        self.tallies[usize::from(self.streak)].observe(exit, position, agreed);
    }

    /// The current round accepted `accepted` drafts (0 for a plain step): it selects the
    /// estimates of the next.
    pub fn ended(&mut self, accepted: usize) {
        self.streak = accepted >= STREAK;
    }

    /// One round has passed: every count fades by [`ROUND_FADE`].
    pub fn fade(&mut self) {
        for Tally { good, seen } in &mut self.tallies {
            for x in good.iter_mut().chain(seen.iter_mut()).flatten() {
                *x *= ROUND_FADE;
            }
        }
    }

    /// Estimated probability that the draft at `position` from `exit` is accepted in the
    /// current round, given that the drafts before it were.
    pub fn rate(&self, exit: usize, position: usize) -> f64 {
        self.chain(exit)[position.min(MAX_AUTO_DEPTH - 1)]
    }

    /// [`Acceptance::rate`] at every position, in one pass over the positions (each leans on
    /// the one before).
    pub fn chain(&self, exit: usize) -> [f64; MAX_AUTO_DEPTH] {
        Self::chain_in(&self.tallies[usize::from(self.streak)], exit)
    }

    fn chain_in(tally: &Tally<MAX_AUTO_DEPTH>, exit: usize) -> [f64; MAX_AUTO_DEPTH] {
        let mut rate = PRIOR_AGREE / PRIOR_SEEN;
        std::array::from_fn(|i| {
            rate = tally.rate(exit, i, rate);
            rate
        })
    }

    /// Per exit layer, the estimate at every draft position: after a short round (`streak`
    /// false) or after a streak.
    pub fn rates(&self, streak: bool) -> Vec<Vec<f64>> {
        let tally = &self.tallies[usize::from(streak)];
        (1..=tally.seen.len())
            .map(|e| Self::chain_in(tally, e).to_vec())
            .collect()
    }
}

/// Weight of the cost model's own predictions in [`Timing`]'s fits, in rounds.
const PRIOR_ROUNDS: f64 = 1.0;

/// Measured round times, per exit layer a line `ms = fixed + per_draft x depth` fitted by
/// forgetting least squares, anchored by the cost model's predictions at depths 1 and
/// [`MAX_AUTO_DEPTH`] (weighing [`PRIOR_ROUNDS`] rounds each). What calibration cannot see
/// shows up here: caches that stay warm while the same few layers draft again and again, host
/// work per round.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Per exit layer: sums of w, w d, w d^2, w t, w d t over timed rounds.
    fits: Vec<[f64; 5]>,
    prior: Vec<[f64; 5]>,
    /// Plain steps: forgetting sum of times and count, and the model's prediction.
    step: [f64; 2],
    step_prior: f64,
}

impl Timing {
    pub fn new(layers: usize, costs: &Costs, chained: bool) -> Self {
        let point = |d: usize, t: f64| {
            let (d, w) = (d as f64, PRIOR_ROUNDS);
            [w, w * d, w * d * d, w * t, w * d * t]
        };
        let prior = (1..layers)
            .map(|e| {
                let (a, b) = (
                    point(1, costs.round_ms(layers, e, 1, chained)),
                    point(
                        MAX_AUTO_DEPTH,
                        costs.round_ms(layers, e, MAX_AUTO_DEPTH, chained),
                    ),
                );
                std::array::from_fn(|k| a[k] + b[k])
            })
            .collect();
        Timing {
            fits: vec![[0.0; 5]; layers.saturating_sub(1)],
            prior,
            step: [0.0; 2],
            step_prior: costs.step_ms(layers),
        }
    }

    /// A round of `depth` drafts from `exit` (depth 0: a plain step) took `ms`.
    pub fn observe(&mut self, exit: usize, depth: usize, ms: f64) {
        if depth == 0 {
            self.step = [FORGET * self.step[0] + ms, FORGET * self.step[1] + 1.0];
            return;
        }
        let d = depth as f64;
        let f = &mut self.fits[exit - 1];
        for (sum, x) in f.iter_mut().zip([1.0, d, d * d, ms, d * ms]) {
            *sum = FORGET * *sum + x;
        }
    }

    /// Expected milliseconds of a round (depth 0: a plain step).
    pub fn ms(&self, exit: usize, depth: usize) -> f64 {
        if depth == 0 {
            let w = PRIOR_ROUNDS;
            return (self.step[0] + w * self.step_prior) / (self.step[1] + w);
        }
        let (f, p) = (&self.fits[exit - 1], &self.prior[exit - 1]);
        let [w, sd, sdd, st, sdt]: [f64; 5] = std::array::from_fn(|k| f[k] + p[k]);
        let det = w * sdd - sd * sd;
        let slope = ((w * sdt - sd * st) / det).max(0.0);
        let fixed = ((st - slope * sd) / w).max(f64::MIN_POSITIVE);
        fixed + slope * depth as f64
    }
}

/// Bins of a draft's top probability in [`Confidence`].
const CONFIDENCE_BINS: usize = 10;

/// Per exit layer, how often a draft whose top probability fell in each tenth of [0, 1] was
/// accepted: the draft's confidence calibrated against what verification said. An empty bin
/// reads as its own confidence (the uncalibrated cut-off).
#[derive(Debug, Clone)]
pub struct Confidence(Tally<CONFIDENCE_BINS>);

impl Confidence {
    pub fn new(layers: usize) -> Self {
        Confidence(Tally::new(layers))
    }

    fn bin(top: f32) -> usize {
        (top.clamp(0.0, 1.0) * CONFIDENCE_BINS as f32) as usize
    }

    pub fn observe(&mut self, exit: usize, top: f32, accepted: bool) {
        self.0.observe(exit, Self::bin(top), accepted);
    }

    /// Probability that a draft from `exit` with top probability `top` is accepted.
    pub fn probability(&self, exit: usize, top: f32) -> f64 {
        self.0.rate(exit, Self::bin(top), f64::from(top))
    }
}

/// Expected tokens from a round of `depth` drafts whose draft at position i is accepted with
/// probability `a(i)` once the drafts before it were: the accepted prefix plus the verifier's
/// token, 1 + a(0) + a(0) a(1) + ... (1 + a + ... + a^depth for a constant rate).
pub fn expected_tokens(a: impl Fn(usize) -> f64, depth: usize) -> f64 {
    let (mut total, mut all) = (1.0, 1.0);
    for i in 0..depth {
        all *= a(i);
        total += all;
    }
    total
}

/// One round's plan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    pub exit: usize,
    /// 0: a plain full-model step instead of a round.
    pub depth: usize,
    /// Expected tokens per millisecond.
    pub rate: f64,
}

/// The exit layer among `exits` and depth among `depths` (0 allowed: a plain step) with the
/// most expected tokens per millisecond; `acceptance(exit)` the estimates at every draft
/// position as [`Acceptance::chain`] (positions past the last read the last; asked for only
/// where a round is possible), `ms(exit, depth)` what a round (depth 0: a plain step) takes.
pub fn choose(
    acceptance: impl Fn(usize) -> [f64; MAX_AUTO_DEPTH],
    ms: impl Fn(usize, usize) -> f64,
    exits: &[usize],
    depths: std::ops::RangeInclusive<usize>,
) -> Plan {
    let mut best = Plan {
        exit: exits.first().copied().unwrap_or(1),
        depth: 0,
        rate: 1.0 / ms(0, 0),
    };
    if !depths.contains(&0) {
        best.rate = 0.0;
    }
    if *depths.end() == 0 {
        return best;
    }
    for &exit in exits {
        // expected_tokens for depths 1, 2, ... in one pass (a round is planned before every
        // step: with the sums redone per depth, the host's work per speculative step on
        // SmolLM2 was 0.06 ms, 0.6% of the step, against 0.015 ms for autoregression).
        let chain = acceptance(exit);
        let (mut tokens, mut all) = (1.0, 1.0);
        for depth in 1..=*depths.end() {
            all *= chain[(depth - 1).min(MAX_AUTO_DEPTH - 1)];
            tokens += all;
            if depth < *depths.start() {
                continue;
            }
            let rate = tokens / ms(exit, depth);
            if rate > best.rate {
                best = Plan { exit, depth, rate };
            }
        }
    }
    best
}

/// The shadow exit layers a probe looks at: candidates other than `exit`, nearest first, at most
/// [`MAX_SHADOW`], in increasing order.
pub fn probe_layers(candidates: &[usize], exit: usize) -> Vec<usize> {
    let mut near: Vec<usize> = candidates.iter().copied().filter(|&e| e != exit).collect();
    near.sort_by_key(|&e| (e.abs_diff(exit), e));
    near.truncate(MAX_SHADOW);
    near.sort_unstable();
    near
}

/// Whether to draft one more token in a round that stops early: the expected gain (the chance
/// that every draft so far and the next are accepted, at the time a token costs) must beat what
/// the next draft adds to the round.
pub fn worth_drafting(
    accepted_so_far: f64,
    next_acceptance: f64,
    ms_per_token: f64,
    next_draft_ms: f64,
) -> bool {
    accepted_so_far * next_acceptance * ms_per_token > next_draft_ms
}

/// What adaptive speculation has learned about a model on its device: kept by [`crate::Model`]
/// from one generation to the next, so a conversation or a benchmark does not start cold.
#[derive(Debug, Clone)]
pub struct Learned {
    pub costs: Costs,
    pub timing: Timing,
    pub acceptance: Acceptance,
    pub confidence: Confidence,
    /// How much longer than plain steps rounds and probes took over all generations, in ms:
    /// negative where speculation paid.
    pub excess_ms: f64,
}

impl Learned {
    /// Measured costs and no observations yet; `chained` as in [`Costs::round_ms`].
    pub fn new(layers: usize, costs: Costs, chained: bool) -> Self {
        Learned {
            costs,
            timing: Timing::new(layers, &costs, chained),
            acceptance: Acceptance::new(layers),
            confidence: Confidence::new(layers),
            excess_ms: 0.0,
        }
    }
}

/// The per-generation state of adaptive speculation: estimates, costs and what was chosen.
#[derive(Debug, Clone)]
pub struct Tuner {
    layers: usize,
    /// Candidate exit layers: 1..L-1, or the one the user fixed.
    exits: Vec<usize>,
    /// The depth the user fixed, if any.
    depth: Option<usize>,
    /// The checkpoint says it was trained for early exit.
    trained: bool,
    /// What it knows, carried over from earlier generations and handed on at the end.
    pub learned: Learned,
    /// Rounds draft one submit at a time and stop by confidence (see [`worth_drafting`]).
    pub cut_off: bool,
    rounds: usize,
    /// Expected tokens per millisecond of the last plan.
    rate: f64,
    /// This generation's decode time, and how much longer than plain steps its rounds, probes
    /// and calibration took (negative where speculation paid), in ms.
    elapsed_ms: f64,
    excess_ms: f64,
    /// The share of `elapsed_ms` that unproven speculation may lose: [`START_BUDGET`] in the
    /// generation that measured the costs, else [`EXPLORE_BUDGET`].
    budget: f64,
    /// The least any round can lose against a plain step (one draft, rejected, from the cheapest
    /// candidate exit layer), by the measured costs: while even that does not fit the budget, planning
    /// skips the chooser.
    least_loss_ms: f64,
    pub stats: AdaptiveStats,
}

impl Tuner {
    /// `calibrated`: the costs in `learned` were measured in this generation (it may risk 1.5%
    /// of its time); `trained`: the checkpoint says it was trained for early exit.
    pub fn new(
        layers: usize,
        exit: Setting,
        depth: Setting,
        learned: Learned,
        calibrated: bool,
        trained: bool,
    ) -> Self {
        let costs = learned.costs;
        let exits: Vec<usize> = match exit {
            Setting::Auto => (1..layers).collect(),
            Setting::Fixed(e) => vec![e],
        };
        let least_loss_ms = exits
            .iter()
            .map(|&e| costs.round_ms(layers, e, 1, true) - costs.step_ms(layers))
            .fold(f64::INFINITY, f64::min)
            .max(0.0);
        Tuner {
            layers,
            exits,
            depth: depth.fixed(),
            trained,
            learned,
            cut_off: false,
            rounds: 0,
            rate: 0.0,
            elapsed_ms: 0.0,
            excess_ms: 0.0,
            budget: if calibrated {
                START_BUDGET
            } else {
                EXPLORE_BUDGET
            },
            least_loss_ms,
            stats: AdaptiveStats {
                costs: Some(costs),
                ..AdaptiveStats::default()
            },
        }
    }

    /// Whether speculation may be tried without a budget: the depth is the user's, the
    /// checkpoint says it was trained for early exit, or speculation has paid on this model so
    /// far (its rounds over all generations took less time than plain steps would have).
    fn trusted(&self) -> bool {
        self.depth.is_some() || self.trained || self.learned.excess_ms < 0.0
    }

    /// Whether this generation may risk losing `ms` more to speculation: when trusted, or when
    /// its losses with `ms` stay within its budget share of its decode time so far.
    fn may_risk(&self, ms: f64) -> bool {
        self.trusted() || self.excess_ms + ms <= self.budget * self.elapsed_ms
    }

    /// What a round of `plan` loses against a plain step if every draft is rejected.
    fn worst_loss(&self, plan: &Plan) -> f64 {
        let t = &self.learned.timing;
        (t.ms(plan.exit, plan.depth) - t.ms(plan.exit, 0)).max(0.0)
    }

    /// Accounts a step that took `ms` and produced `tokens` tokens: a plain step (`round`
    /// false), or a round or probe, whose excess over plain steps is counted.
    pub fn account(&mut self, ms: f64, tokens: usize, round: bool) {
        self.elapsed_ms += ms;
        if round {
            let plain = self.learned.timing.ms(self.exits[0], 0);
            let excess = ms - tokens as f64 * plain;
            self.excess_ms += excess;
            self.learned.excess_ms += excess;
        }
    }

    /// Accounts what measuring the costs took beyond the plain steps it produced.
    pub fn calibrated(&mut self, ms: f64) {
        self.stats.calibration_ms = ms;
        self.excess_ms += ms;
    }

    /// The next round's exit layer and depth, at most `cap` drafts: the chooser's best, or a
    /// plain step where the round could lose more than the budget has left.
    pub fn plan(&mut self, cap: usize) -> Plan {
        let depths = match self.depth {
            Some(d) => d.min(cap)..=d.min(cap),
            None if !self.may_risk(self.least_loss_ms) => 0..=0,
            None => 0..=MAX_AUTO_DEPTH.min(cap),
        };
        let mut plan = choose(
            |e| self.learned.acceptance.chain(e),
            |e, d| self.learned.timing.ms(e, d),
            &self.exits,
            depths,
        );
        if plan.depth > 0 && !self.may_risk(self.worst_loss(&plan)) {
            plan = Plan {
                depth: 0,
                rate: 1.0 / self.learned.timing.ms(plan.exit, 0),
                ..plan
            };
        }
        self.rounds += 1;
        self.learned.acceptance.fade();
        self.rate = plan.rate;
        *self.stats.depths.entry(plan.depth).or_default() += 1;
        if plan.depth > 0 {
            *self.stats.exit_layers.entry(plan.exit).or_default() += 1;
        }
        plan
    }

    /// Shadow exit layers for a probe of `plan`'s round, every [`PROBE_EVERY`] rounds (the
    /// first included) where the budget covers the shadow heads; `None` for other rounds. A
    /// plain step probes its own exit layer too (in place of the farthest neighbour), so
    /// speculation can resume; a round's probe also looks one position past its drafts.
    pub fn probe(&mut self, plan: &Plan) -> Option<Vec<usize>> {
        let (exit, plain) = (plan.exit, plan.depth == 0);
        let rows = plan.depth + 1;
        let heads = self.learned.costs.head_ms * MAX_SHADOW as f64 * rows as f64;
        let risk = match plain {
            true => heads,
            false => heads + self.worst_loss(plan),
        };
        if !(self.rounds - 1).is_multiple_of(PROBE_EVERY) || !self.may_risk(risk) {
            return None;
        }
        let mut layers = probe_layers(&self.exits, exit);
        if plain {
            if layers.len() == MAX_SHADOW {
                // The neighbours are in increasing order: drop the one farthest from `exit`.
                let far = match layers[0].abs_diff(exit) > layers[MAX_SHADOW - 1].abs_diff(exit) {
                    true => 0,
                    false => MAX_SHADOW - 1,
                };
                layers.remove(far);
            }
            layers.push(exit);
            layers.sort_unstable();
        }
        Some(layers)
    }

    /// Records a probe's cost: `below` shadow layers over every draft call's row and `above`
    /// over the verification block's `rows` rows.
    pub fn probed(&mut self, below: usize, above: usize, rows: usize) {
        if below + above == 0 {
            return;
        }
        self.stats.probes += 1;
        self.stats.shadow_rows += (below + above) * rows;
        let c = &self.learned.costs;
        self.stats.shadow_ms +=
            c.head_ms * (below as f64 * rows as f64 + above as f64 * c.block(rows));
    }

    /// Whether a round that stops by confidence drafts a token at `position`, when the drafts
    /// before it are all accepted with probability `accepted_so_far` (their calibrated
    /// confidences multiplied).
    pub fn keep_drafting(&self, exit: usize, position: usize, accepted_so_far: f64) -> bool {
        let c = &self.learned.costs;
        let late = (self.layers - exit) as f64 * c.layer_ms + c.head_ms;
        let next_draft = c.submit_ms + exit as f64 * c.layer_ms + c.head_ms + late * c.row_fraction;
        worth_drafting(
            accepted_so_far,
            self.learned.acceptance.rate(exit, position),
            1.0 / self.rate.max(f64::MIN_POSITIVE),
            next_draft,
        )
    }

    /// The stats, and what was learned for the next generation.
    pub fn finish(mut self) -> (AdaptiveStats, Learned) {
        self.stats.acceptance = self.learned.acceptance.rates(false);
        self.stats.acceptance_in_streak = self.learned.acceptance.rates(true);
        (self.stats, self.learned)
    }
}

/// What the stats report about adaptive rounds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AdaptiveStats {
    /// Rounds per exit layer and per depth (depth 0: plain full-model steps).
    pub exit_layers: BTreeMap<usize, usize>,
    pub depths: BTreeMap<usize, usize>,
    /// The acceptance estimate per exit layer 1..L-1 and draft position at the end, after a
    /// short round and after a streak (see [`Acceptance`]).
    pub acceptance: Vec<Vec<f64>>,
    pub acceptance_in_streak: Vec<Vec<f64>>,
    /// The measured costs, and the time measuring them added to the generation (0 when the
    /// model already had them): the two small calls and what the block's second row took beyond
    /// a plain step. Costs and estimates carry over from the model's earlier adaptive
    /// generations. `None` while the first generation takes its first plain steps
    /// ([`STEPS_BEFORE_CALIBRATION`]), which `steps_before_calibration` counts.
    pub costs: Option<Costs>,
    pub calibration_ms: f64,
    pub steps_before_calibration: usize,
    /// Rounds that carried shadow probes, the head rows they added, and what those rows cost
    /// by the measured head cost.
    pub probes: usize,
    pub shadow_rows: usize,
    pub shadow_ms: f64,
    /// Rounds that stopped drafting before their depth because the drafts' confidence fell.
    pub cut_offs: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn costs() -> Costs {
        Costs {
            submit_ms: 1.0,
            layer_ms: 1.0,
            head_ms: 2.0,
            row_fraction: 0.1,
        }
    }

    #[test]
    fn settings_parse_from_text_and_json() {
        assert_eq!("auto".parse::<Setting>(), Ok(Setting::Auto));
        assert_eq!("3".parse::<Setting>(), Ok(Setting::Fixed(3)));
        assert!("three".parse::<Setting>().is_err());
        let s: Setting = serde_json::from_str("\"auto\"").unwrap();
        assert_eq!(s, Setting::Auto);
        let s: Setting = serde_json::from_str("5").unwrap();
        assert_eq!(s, Setting::Fixed(5));
        assert!(serde_json::from_str::<Setting>("\"often\"").is_err());
        assert!(serde_json::from_str::<Setting>("2.5").is_err());
        assert!(serde_json::from_str::<Setting>("-1").is_err());
        assert_eq!(serde_json::to_string(&Setting::Fixed(3)).unwrap(), "3");
        assert_eq!(serde_json::to_string(&Setting::Auto).unwrap(), "\"auto\"");
    }

    #[test]
    fn round_cost_follows_the_formula() {
        let c = costs();
        // 8 layers, E = 2, d = 3, one submit: drafts 3 x (2 + 2) + 2 = 14; verification
        // (6 + 2) x (1 + 0.1 x 3) = 10.4; submit 1.
        assert!((c.round_ms(8, 2, 3, true) - 25.4).abs() < 1e-9);
        // Host-looped: 4 submits.
        assert!((c.round_ms(8, 2, 3, false) - 28.4).abs() < 1e-9);
        assert!((c.step_ms(8) - 11.0).abs() < 1e-9);
    }

    /// The fit inverts the cost model: times made from known costs give those costs back.
    #[test]
    fn costs_are_fitted_from_the_shapes_and_a_step() {
        let c = Costs {
            submit_ms: 0.25,
            layer_ms: 0.2,
            head_ms: 2.5,
            row_fraction: 0.3,
        };
        let layers = 30;
        let step_ms = c.step_ms(layers);
        let shapes = Shapes {
            bare_ms: c.submit_ms + c.layer_ms,
            one_ms: c.submit_ms + c.layer_ms + c.head_ms,
            step_ms,
            block_ms: c.submit_ms + (step_ms - c.submit_ms) * c.block(2),
        };
        let fit = shapes.costs(layers);
        for (got, want) in [
            (fit.submit_ms, c.submit_ms),
            (fit.layer_ms, c.layer_ms),
            (fit.head_ms, c.head_ms),
            (fit.row_fraction, c.row_fraction),
        ] {
            assert!((got - want).abs() < 1e-9, "{fit:?} vs {c:?}");
        }
        // Noise that would make a cost negative leaves it at its floor instead.
        let noisy = Shapes {
            bare_ms: 3.0,
            ..shapes
        };
        let fit = noisy.costs(layers);
        assert!(fit.head_ms > 0.0 && fit.submit_ms >= 0.0 && fit.row_fraction >= 0.0);
    }

    #[test]
    fn expected_tokens_is_the_sum_of_prefix_products() {
        assert_eq!(expected_tokens(|_| 0.0, 4), 1.0);
        assert_eq!(expected_tokens(|_| 1.0, 4), 5.0);
        assert!((expected_tokens(|_| 0.5, 2) - 1.75).abs() < 1e-12);
        // 1 + 0.9 + 0.9 x 0.5 + 0.9 x 0.5 x 0.5
        let a = |i| if i == 0 { 0.9 } else { 0.5 };
        assert!((expected_tokens(a, 3) - 2.575).abs() < 1e-12);
    }

    /// Speculation not known to pay risks at most its budget, per generation: a round is tried
    /// only if losing it whole (one token for the round's time) keeps the generation's losses
    /// within 0.5% of its decode time so far (1.5% in the generation that measured the costs,
    /// calibration counted), and a probe only if its shadow heads fit too; a later generation
    /// starts again from nothing. A fixed depth, a checkpoint trained for early exit and a
    /// model where speculation paid are not held back.
    #[test]
    fn unproven_speculation_is_held_to_the_budget() {
        let costs = Costs {
            submit_ms: 0.1,
            layer_ms: 1.0,
            head_ms: 1.0,
            row_fraction: 0.1,
        };
        let tuner = |learned, calibrated, trained| {
            Tuner::new(
                8,
                Setting::Auto,
                Setting::Auto,
                learned,
                calibrated,
                trained,
            )
        };
        let fresh = || Learned::new(8, costs, true);
        // A plain step takes 0.1 + 8 + 1 = 9.1 ms. With every layer at the prior's 50%, the
        // best round is one draft from layer 1: 0.1 + (1 + 1) + 1 + (7 + 1) x 1.1 = 11.9 ms,
        // 2.8 ms lost if the draft is rejected.
        let mut t = tuner(fresh(), false, false);
        assert_eq!(t.plan(12).depth, 0, "nothing decoded: nothing to risk");
        let plain = Plan {
            exit: 1,
            depth: 0,
            rate: 0.0,
        };
        assert!(
            t.probe(&plain).is_none(),
            "two shadow heads do not fit either"
        );
        // 2.8 ms fits in 0.5% of 62 steps (564.2 ms), not of 61 (555.1 ms).
        for _ in 0..61 {
            t.account(9.1, 1, false);
        }
        assert_eq!(t.plan(12).depth, 0);
        t.account(9.1, 1, false);
        let round = t.plan(12);
        assert_eq!((round.exit, round.depth), (1, 1));
        // The draft was rejected, and the round took 20 ms: 10.9 ms lost, so the next round
        // waits until 0.5% of the decode time covers 10.9 + 2.8 ms.
        t.account(20.0, 1, true);
        let elapsed = 62.0 * 9.1 + 20.0;
        let steps = ((13.7 / EXPLORE_BUDGET - elapsed) / 9.1).ceil() as usize;
        for _ in 0..steps - 1 {
            t.account(9.1, 1, false);
        }
        assert_eq!(t.plan(12).depth, 0);
        t.account(9.1, 1, false);
        assert_eq!(t.plan(12).depth, 1);
        // The next generation knows speculation lost, and starts from nothing.
        let (_, learned) = t.finish();
        assert!(learned.excess_ms > 0.0);
        let mut next = tuner(learned, false, false);
        assert_eq!(next.plan(12).depth, 0);

        // The generation that measured the costs may risk 1.5%, its calibration counted: 9.1 +
        // 2.8 ms within 1.5% of 793 ms, 88 steps.
        let mut first = tuner(fresh(), true, false);
        first.calibrated(9.1);
        for _ in 0..87 {
            first.account(9.1, 1, false);
        }
        assert_eq!(first.plan(12).depth, 0);
        first.account(9.1, 1, false);
        assert_eq!(first.plan(12).depth, 1);

        for mut trusted in [
            tuner(fresh(), false, true),
            Tuner::new(8, Setting::Auto, Setting::Fixed(3), fresh(), false, false),
            tuner(
                Learned {
                    excess_ms: -1.0,
                    ..fresh()
                },
                false,
                false,
            ),
        ] {
            assert!(trusted.plan(12).depth > 0);
            assert!(trusted.probe(&plain).is_some());
        }
    }

    /// `acceptance(exit, position)` as the chains `choose` reads.
    fn chains(acceptance: impl Fn(usize, usize) -> f64) -> impl Fn(usize) -> [f64; MAX_AUTO_DEPTH] {
        move |e| std::array::from_fn(|i| acceptance(e, i))
    }

    /// The chooser returns the pair the formula ranks first, over a brute-force evaluation.
    #[test]
    fn chooser_picks_the_best_rate() {
        let c = costs();
        let rates = [0.3, 0.6, 0.8, 0.9, 0.95, 0.97, 0.99];
        // Deeper drafts are accepted less often.
        let acc = |e: usize, i: usize| rates[e - 1] * 0.97f64.powi(i as i32);
        let exits: Vec<usize> = (1..8).collect();
        let ms = |e, d| match d {
            0 => c.step_ms(8),
            d => c.round_ms(8, e, d, true),
        };
        let plan = choose(chains(acc), ms, &exits, 0..=8);
        let mut best = (0, 0, 1.0 / c.step_ms(8));
        for &e in &exits {
            for d in 1..=8 {
                let r = expected_tokens(|i| acc(e, i), d) / c.round_ms(8, e, d, true);
                if r > best.2 {
                    best = (e, d, r);
                }
            }
        }
        assert_eq!((plan.exit, plan.depth), (best.0, best.1));
        assert!((plan.rate - best.2).abs() < 1e-12);
        // Drafts that are never accepted lose to plain steps.
        let plan = choose(chains(|_, _| 0.0), ms, &exits, 0..=8);
        assert_eq!(plan.depth, 0);
        // Certain drafts from a cheap layer go as deep as allowed.
        let plan = choose(
            chains(|e, _| if e == 1 { 1.0 } else { 0.5 }),
            ms,
            &exits,
            0..=8,
        );
        assert_eq!((plan.exit, plan.depth), (1, 8));
        // A fixed depth is respected even when plain steps would be faster.
        let plan = choose(chains(|_, _| 0.0), ms, &[3], 2..=2);
        assert_eq!((plan.exit, plan.depth), (3, 2));
        // Only the first draft is ever right: one draft, not more.
        let plan = choose(
            chains(|_, i| if i == 0 { 1.0 } else { 0.0 }),
            ms,
            &[1],
            1..=8,
        );
        assert_eq!(plan.depth, 1);
    }

    /// Spells of text where every draft is accepted, between stretches where only the first is:
    /// after a streak the estimates (and so the chooser) go deep at once; after a short round
    /// they stay shallow.
    #[test]
    fn streaks_select_their_own_estimates() {
        let c = costs();
        let ms = |e, d| match d {
            0 => c.step_ms(8),
            d => c.round_ms(8, e, d, true),
        };
        let mut a = Acceptance::new(8);
        for spell in 0..40 {
            // A short round: the first draft agrees, the second does not.
            a.observe(1, 0, true);
            a.observe(1, 1, false);
            a.ended(1);
            // Every third time, the next rounds are a spell: 8 drafts agree, twice.
            if spell % 3 == 0 {
                for _ in 0..2 {
                    for i in 0..8 {
                        a.observe(1, i, true);
                    }
                    a.ended(8);
                }
                // The spell ends with a round that misses at once.
                a.observe(1, 0, false);
                a.ended(0);
            }
        }
        assert!(a.rate(1, 1) < 0.35, "{:?}", a.rates(false)[0]);
        let shallow = choose(|e| a.chain(e), ms, &[1], 0..=8);
        a.ended(STREAK);
        assert!(a.rate(1, 5) > 0.8, "{:?}", a.rates(true)[0]);
        let deep = choose(|e| a.chain(e), ms, &[1], 0..=8);
        assert!(
            shallow.depth <= 1 && deep.depth == 8,
            "{shallow:?} {deep:?}"
        );
    }

    #[test]
    fn acceptance_estimates_follow_observations() {
        let mut a = Acceptance::new(4);
        assert!(a.rates(false).iter().flatten().all(|&r| r == 0.5));
        for i in 0..200 {
            a.observe(2, 0, i % 4 != 0);
        }
        // 3 in 4 agree: the estimate approaches 0.75 (the prior weighs 1 of ~33 observations).
        assert!((a.rate(2, 0) - 0.75).abs() < 0.06, "{}", a.rate(2, 0));
        // An unobserved position leans on the one before it; observations pull it away.
        assert!((a.rate(2, 1) - a.rate(2, 0)).abs() < 0.02);
        for _ in 0..100 {
            a.observe(2, 1, false);
        }
        assert!(
            a.rate(2, 1) < 0.05 && a.rate(2, 0) > 0.7,
            "{:?}",
            a.rates(false)[1]
        );
        // Forgetting: after a run of disagreements the estimate falls below a half.
        for _ in 0..60 {
            a.observe(2, 0, false);
        }
        assert!(a.rate(2, 0) < 0.3, "{}", a.rate(2, 0));
        assert_eq!(a.rate(1, 0), 0.5);
        // Unobserved for long, position 1 drifts back towards position 0's estimate.
        for _ in 0..100 {
            a.observe(2, 0, true);
        }
        let stale = a.rate(2, 1);
        for _ in 0..200 {
            a.fade();
            a.observe(2, 0, true);
        }
        assert!(a.rate(2, 1) > stale + 0.3, "{stale} -> {}", a.rate(2, 1));
    }

    #[test]
    fn measured_round_times_replace_the_model() {
        let c = costs();
        let mut t = Timing::new(8, &c, true);
        // Without measurements, the model's line through depths 1 and 12.
        assert!((t.ms(2, 1) - c.round_ms(8, 2, 1, true)).abs() < 1e-9);
        assert!((t.ms(2, 12) - c.round_ms(8, 2, 12, true)).abs() < 1e-9);
        assert!((t.ms(2, 0) - c.step_ms(8)).abs() < 1e-9);
        // Rounds measured at 5 + 1 x depth at depths 1 and 8, far below the model's 15.8 and
        // 49.4: the fit follows the measurements (9 at depth 4, where the model says 30.2).
        for _ in 0..60 {
            t.observe(2, 1, 6.0);
            t.observe(2, 8, 13.0);
            t.observe(2, 0, 4.0);
        }
        assert!((t.ms(2, 4) - 9.0).abs() < 1.5, "{}", t.ms(2, 4));
        assert!((t.ms(2, 0) - 4.0).abs() < 0.3, "{}", t.ms(2, 0));
        // Other exit layers keep the model's figures.
        assert!((t.ms(3, 1) - c.round_ms(8, 3, 1, true)).abs() < 1e-9);
    }

    #[test]
    fn confidence_is_calibrated_by_what_was_accepted() {
        let mut c = Confidence::new(3);
        // Uncalibrated, a draft's confidence is its top probability.
        assert!((c.probability(1, 0.25) - 0.25).abs() < 1e-6);
        // A low-confidence draft that is nearly always accepted reads as likely.
        for i in 0..100 {
            c.observe(1, 0.25, i % 10 != 0);
        }
        assert!(
            (c.probability(1, 0.22) - 0.9).abs() < 0.05,
            "{}",
            c.probability(1, 0.22)
        );
        // Other bins and layers are unaffected.
        assert!((c.probability(1, 0.85) - 0.85).abs() < 1e-6);
        assert!((c.probability(2, 0.25) - 0.25).abs() < 1e-6);
    }

    #[test]
    fn probes_take_the_nearest_layers() {
        let candidates: Vec<usize> = (1..16).collect();
        assert_eq!(probe_layers(&candidates, 4), vec![3, 5]);
        assert_eq!(probe_layers(&candidates, 1), vec![2, 3]);
        assert_eq!(probe_layers(&[1, 2, 3], 2), vec![1, 3]);
        // A plain step probes its own exit layer too, wherever it sits among the candidates.
        let costs = costs();
        for exit in [1, 4, 7] {
            // A checkpoint trained for early exit: probes are not held to a budget.
            let mut t = Tuner::new(
                8,
                Setting::Auto,
                Setting::Auto,
                Learned::new(8, costs, true),
                false,
                true,
            );
            t.rounds = 1;
            let plain = Plan {
                exit,
                depth: 0,
                rate: 0.0,
            };
            let layers = t.probe(&plain).unwrap();
            assert!(
                layers.contains(&exit) && layers.len() <= MAX_SHADOW,
                "{exit}: {layers:?}"
            );
            assert!(layers.windows(2).all(|w| w[0] < w[1]), "{layers:?}");
        }
    }

    #[test]
    fn drafting_stops_when_the_gain_is_below_the_cost() {
        assert!(worth_drafting(0.9, 0.9, 10.0, 5.0));
        assert!(!worth_drafting(0.2, 0.9, 10.0, 5.0));
    }
}
