//! `layerskip bench` and `layerskip sweep`: speed and acceptance measured in one process, with the
//! strategies interleaved after a warm-up, in an order that changes every repetition, so drift
//! (clocks, caches) and what ran just before hit them all alike; with `--peers`, every
//! repetition is followed by one on each peer runtime (`peers.rs`), for the same reason.

use super::peers::Peers;
use super::{load, ModelArgs};
use layerskip::adaptive::{AdaptiveStats, Costs, Setting};
use layerskip::request::defaults;
use layerskip::{Error, GenerateOptions, GenerateRequest, Generation, Model, Result, StrategyKind};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct PromptArgs {
    /// One prompt.
    #[arg(long, conflicts_with = "prompts", required_unless_present = "prompts")]
    prompt: Option<String>,
    /// A JSONL file: one prompt per line, as a JSON string or an object with a "prompt" field.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Timed runs of every configuration (after one warm-up run).
    #[arg(long, default_value_t = 3)]
    repetitions: usize,
}

impl PromptArgs {
    fn check(&self) -> Result<()> {
        if self.repetitions == 0 {
            return Err(Error::Invalid("--repetitions must be at least 1".into()));
        }
        Ok(())
    }

    fn load(&self, model: &Model) -> Result<Vec<Vec<u32>>> {
        let texts = match (&self.prompt, &self.prompts) {
            (Some(p), _) => vec![p.clone()],
            (None, Some(path)) => {
                let file = std::fs::read_to_string(path)
                    .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
                file.lines()
                    .filter(|l| !l.trim().is_empty())
                    .enumerate()
                    .map(|(i, line)| {
                        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
                            Error::Invalid(format!("{} line {}: {e}", path.display(), i + 1))
                        })?;
                        v.as_str()
                            .or_else(|| v.get("prompt").and_then(|p| p.as_str()))
                            .map(str::to_string)
                            .ok_or_else(|| {
                                Error::Invalid(format!(
                                    "{} line {}: no prompt string",
                                    path.display(),
                                    i + 1
                                ))
                            })
                    })
                    .collect::<Result<_>>()?
            }
            (None, None) => vec![],
        };
        if texts.is_empty() {
            return Err(Error::Invalid(
                "no prompts to run (the prompts file is empty)".into(),
            ));
        }
        texts
            .iter()
            .map(|t| match model.tokenizer.encode(t)? {
                ids if ids.is_empty() => Err(Error::Invalid(format!(
                    "the prompt {t:?} encodes to no tokens"
                ))),
                ids => Ok(ids),
            })
            .collect()
    }
}

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    prompts: PromptArgs,
    /// Layer whose output drafts and early exit read (1-based); defaults as for generate.
    /// `auto`: chosen every round (early exit then uses the default layer).
    #[arg(long)]
    exit_layer: Option<Setting>,
    /// Drafts per self-speculative round, or `auto`.
    #[arg(long, default_value_t = Setting::Fixed(defaults::NUM_SPECULATIONS))]
    num_speculations: Setting,
    #[arg(long, default_value_t = defaults::MAX_NEW_TOKENS)]
    max_new_tokens: usize,
    /// Also run self-speculative decoding with this draft confidence cut-off.
    #[arg(long)]
    draft_confidence: Option<f32>,
    /// Time every GPU dispatch of an autoregressive run and report GPU time, bytes and GB/s per
    /// kind of op (needs timestamp queries).
    #[arg(long)]
    profile: bool,
    /// The device's memory bandwidth in GB/s: report the fraction of it decoding reaches.
    #[arg(long)]
    bandwidth: Option<f64>,
    /// Also run the same GGUF file, prompts and thread count on llama.cpp (llama-cpp-python)
    /// and Hugging Face transformers, where python3 has them, their repetitions interleaved
    /// with the bench's, and report prefill and decode tokens/s side by side.
    #[arg(long)]
    peers: bool,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct SweepArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    prompts: PromptArgs,
    /// Exit layers to try, "A..B" (inclusive) or "1,2,4"; default 1..L-1.
    #[arg(long)]
    exit_layers: Option<String>,
    /// Drafts per round to try, "A..B" (inclusive) or a list.
    #[arg(long, default_value = "1..8")]
    num_speculations: String,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Write the grid as CSV here.
    #[arg(long)]
    csv: Option<PathBuf>,
}

/// "A..B" (inclusive) or "a,b,c", every value in `1..=max`.
fn parse_list(text: &str, what: &str, max: usize) -> Result<Vec<usize>> {
    let bad = || {
        Error::Invalid(format!(
            "{what}: expected A..B or a list like 1,2,4 of values in 1..={max}, got {text:?}"
        ))
    };
    let num = |s: &str| {
        s.trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(bad)
    };
    let list: Vec<usize> = match text.split_once("..") {
        Some((a, b)) => (num(a)?..=num(b.trim_start_matches('='))?).collect(),
        None => text.split(',').map(num).collect::<Result<_>>()?,
    };
    if list.is_empty() {
        return Err(bad());
    }
    Ok(list)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs of one configuration over all prompts.
#[derive(Default)]
struct Runs {
    tokens_per_second: Vec<f64>,
    /// Prompt tokens over the time to the first token, and output tokens after the first over
    /// their time: the prefill and decode rates peers report.
    prefill_tokens_per_second: Vec<f64>,
    decode_tokens_per_second: Vec<f64>,
    /// Generation time of all runs together.
    elapsed_ms: f64,
    drafted: usize,
    accepted: usize,
    tokens: usize,
    dispatches: u64,
    submits: u64,
    rounds: usize,
    round_submits: u64,
    draft_ms: f64,
    verify_ms: f64,
    outputs: Vec<Vec<u32>>,
    adaptive: Option<Adaptive>,
}

/// Adaptive rounds summed over runs: what was chosen and what probing cost.
#[derive(Default, Serialize)]
struct Adaptive {
    exit_layers: BTreeMap<usize, usize>,
    depths: BTreeMap<usize, usize>,
    probes: usize,
    shadow_ms: f64,
    cut_offs: usize,
    steps_before_calibration: usize,
    elapsed_ms: f64,
    /// The last run's estimates (after a short round, after a streak) and the measured costs.
    acceptance: Vec<Vec<f64>>,
    acceptance_in_streak: Vec<Vec<f64>>,
    costs: Option<Costs>,
}

impl Adaptive {
    fn add(&mut self, a: &AdaptiveStats, elapsed_ms: f64) {
        for (k, v) in &a.exit_layers {
            *self.exit_layers.entry(*k).or_default() += v;
        }
        for (k, v) in &a.depths {
            *self.depths.entry(*k).or_default() += v;
        }
        self.probes += a.probes;
        self.shadow_ms += a.shadow_ms;
        self.cut_offs += a.cut_offs;
        self.steps_before_calibration += a.steps_before_calibration;
        self.elapsed_ms += elapsed_ms;
        self.acceptance.clone_from(&a.acceptance);
        self.acceptance_in_streak
            .clone_from(&a.acceptance_in_streak);
        self.costs = a.costs.or(self.costs);
    }

    /// Shares of a histogram: "3: 40%, 4: 60%".
    fn shares(h: &BTreeMap<usize, usize>) -> String {
        let total = h.values().sum::<usize>().max(1) as f64;
        h.iter()
            .map(|(k, v)| format!("{k}: {:.0}%", 100.0 * *v as f64 / total))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn print(&self, name: &str) {
        println!("{name}:");
        println!(
            "  exit layers chosen (rounds): {}",
            Self::shares(&self.exit_layers)
        );
        println!(
            "  depths chosen (0 = plain step): {}",
            Self::shares(&self.depths)
        );
        let estimates = [&self.acceptance, &self.acceptance_in_streak];
        for (rates, after) in estimates.into_iter().zip(["a short round", "a streak"]) {
            let rates: Vec<String> = rates
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let at = |p: usize| a.get(p).map_or(0.0, |r| 100.0 * r);
                    format!("{}: {:.0}/{:.0}/{:.0}%", i + 1, at(0), at(1), at(3))
                })
                .collect();
            println!(
                "  acceptance estimates after {after}, by exit layer (1st/2nd/4th draft): {}",
                rates.join(", ")
            );
        }
        if let Some(c) = &self.costs {
            println!(
                "  measured costs: submit {:.3} ms, layer {:.3} ms, head {:.3} ms, extra row {:.0}% of a pass",
                c.submit_ms,
                c.layer_ms,
                c.head_ms,
                100.0 * c.row_fraction
            );
        }
        if self.steps_before_calibration > 0 {
            println!(
                "  plain steps before measuring costs (the model's first generations): {}",
                self.steps_before_calibration
            );
        }
        println!(
            "  probes: {} rounds, shadow heads ~{:.1} ms ({:.1}% of the time); confidence cut-offs: {}",
            self.probes,
            self.shadow_ms,
            100.0 * self.shadow_ms / self.elapsed_ms.max(f64::MIN_POSITIVE),
            self.cut_offs
        );
    }
}

impl Runs {
    fn add(&mut self, g: Generation) {
        let s = &g.stats;
        self.tokens_per_second.push(s.tokens_per_second);
        let computed = (s.prompt_tokens - s.cached_prompt_tokens) as f64;
        self.prefill_tokens_per_second
            .push(ratio(computed, s.time_to_first_token_ms / 1e3));
        self.decode_tokens_per_second
            .push(ratio(1e3, s.time_per_output_token_ms));
        self.elapsed_ms += s.elapsed_ms;
        self.drafted += s.drafted;
        self.accepted += s.accepted;
        self.tokens += s.generated_tokens;
        self.dispatches += s.dispatches;
        self.submits += s.submits;
        self.rounds += s.rounds;
        self.round_submits += s.round_submits;
        self.draft_ms += s.draft_ms;
        self.verify_ms += s.verify_ms;
        if let Some(a) = &s.adaptive {
            self.adaptive
                .get_or_insert_with(Adaptive::default)
                .add(a, s.elapsed_ms);
        }
        self.outputs.push(g.tokens);
    }
    fn acceptance(&self) -> f64 {
        if self.drafted > 0 {
            self.accepted as f64 / self.drafted as f64
        } else {
            0.0
        }
    }
    /// Tokens per second over the whole prompt set: all tokens over all the time they took, so
    /// a slow prompt weighs by its time (the median of per-run rates does not see it).
    fn throughput(&self) -> f64 {
        ratio(self.tokens as f64, self.elapsed_ms / 1e3)
    }
    fn per_token(&self, n: u64) -> f64 {
        n as f64 / self.tokens.max(1) as f64
    }
}

/// Every configuration on every prompt, `repetitions` times after a warm-up, with
/// `after_each(warm_up)` run after each repetition (the peers' turn).
fn run_all(
    model: &mut Model,
    prompts: &[Vec<u32>],
    configs: &[GenerateOptions],
    repetitions: usize,
    mut after_each: impl FnMut(bool) -> Result<()>,
) -> Result<Vec<Runs>> {
    let mut runs: Vec<Runs> = configs.iter().map(|_| Runs::default()).collect();
    let mut sequence = 0;
    for rep in 0..=repetitions {
        for prompt in prompts {
            for i in order(sequence, configs.len()) {
                let (options, runs) = (&configs[i], &mut runs[i]);
                let g = pollster::block_on(model.generate_ids(prompt, options))?;
                // Repetition 0 is the warm-up: pipelines compiled, caches filled, clocks up.
                if rep > 0 {
                    runs.add(g);
                }
            }
            sequence += 1;
        }
        after_each(rep == 0)?;
    }
    Ok(runs)
}

/// The order of n configurations in the k-th sequence: rotations of 0..n, forward and backward
/// in turn, so that over 2n sequences each configuration runs right after the one before it in
/// the list as often as right after the one after it (for three, right after each other one
/// equally often). A run is measurably slower right after some others (after early exit, SmolLM2 decoded
/// 2-4% slower in either order); forward rotations alone put self-speculation after early exit
/// in 5 of 8 repetitions and autoregression in 2.
fn order(k: usize, n: usize) -> impl Iterator<Item = usize> {
    let rotation = k / 2;
    let backward = k % 2 == 1;
    (0..n).map(move |i| match backward {
        false => (i + rotation) % n,
        true => (n - 1 - i + rotation) % n,
    })
}

/// Greedy, to a fixed length (EOS ignored), so every strategy produces the same number of tokens.
fn greedy(model: &Model, request: GenerateRequest) -> Result<GenerateOptions> {
    model.options(&GenerateRequest {
        ignore_eos: true,
        temperature: 0.0,
        ..request
    })
}

/// One row of the bench table.
#[derive(Serialize)]
struct Row {
    strategy: String,
    tokens_per_second_median: f64,
    prefill_tokens_per_second_median: f64,
    decode_tokens_per_second_median: f64,
    speedup: f64,
    /// The speedup's 95% confidence interval (see [`Paired`]).
    speedup_interval: Option<[f64; 2]>,
    acceptance_rate: Option<f64>,
    dispatches_per_token: f64,
    submits_per_token: f64,
    submits_per_round: Option<f64>,
    draft_ms: f64,
    verify_ms: f64,
    /// Where drafting is its own submits (sampling, a confidence cut-off): its time per drafted
    /// token, and verification's per round.
    draft_ms_per_drafted_token: Option<f64>,
    verify_ms_per_round: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    adaptive: Option<Adaptive>,
}

/// How much faster `runs` were than `base`, run for run: the median of the ratios of runs paired
/// by prompt and repetition. The two runs of a pair are seconds apart, so a change in the
/// machine's speed over the bench (5-10% on a shared host) cancels in each ratio, which it does
/// not in a ratio of medians.
pub fn paired(runs: &[f64], base: &[f64]) -> Paired {
    let mut ratios: Vec<f64> = runs.iter().zip(base).map(|(&r, &b)| ratio(r, b)).collect();
    ratios.sort_by(f64::total_cmp);
    Paired {
        median: median(ratios.clone()),
        interval: median_interval(&ratios),
    }
}

/// A run-for-run ratio ([`paired`]) and how far it can be trusted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Paired {
    pub median: f64,
    /// The 95% confidence interval of the median ratio ([`median_interval`]): on a host whose
    /// speed varies from run to run it says which differences the bench can tell apart (a
    /// ratio of 0.98 whose interval is 0.95-1.03 does not show that anything was slower).
    pub interval: Option<[f64; 2]>,
}

impl Paired {
    /// `1.23x` and, when there is one, the interval: `1.23x (1.10-1.31)`.
    pub fn text(&self) -> String {
        match self.interval {
            Some([low, high]) => format!("{:.2}x ({low:.2}-{high:.2})", self.median),
            None => format!("{:.2}x", self.median),
        }
    }
}

/// The distribution-free 95% confidence interval of the median of `sorted` (increasing): its
/// k-th smallest and k-th largest values, k the largest for which a fair coin's n tosses give
/// fewer than k heads with probability at most 2.5%, so the true median lies outside with
/// probability at most 5% whatever the ratios' distribution. `None` for fewer than 6 values,
/// where even the smallest to the largest is not a 95% interval.
fn median_interval(sorted: &[f64]) -> Option<[f64; 2]> {
    let n = sorted.len();
    // P(heads <= j), from ln P(heads = j) so that no term underflows before it is negligible.
    let (mut ln_p, mut below) = (-(n as f64) * std::f64::consts::LN_2, 0.0);
    let mut k = 0;
    for j in 0..n / 2 {
        below += ln_p.exp();
        if below > 0.025 {
            break;
        }
        k = j + 1;
        ln_p += ((n - j) as f64 / (j + 1) as f64).ln();
    }
    (k > 0).then(|| [sorted[k - 1], sorted[n - k]])
}

/// tokens/s relative to a baseline; 0 when the baseline measured nothing.
fn ratio(tps: f64, base: f64) -> f64 {
    if base > 0.0 {
        tps / base
    } else {
        0.0
    }
}

pub fn bench(args: BenchArgs) -> Result<()> {
    args.prompts.check()?;
    let mut model = load(&args.model)?;
    let prompts = args.prompts.load(&model)?;
    let exit = args
        .exit_layer
        .unwrap_or(Setting::Fixed(model.default_exit_layer()));
    let base = GenerateRequest {
        exit_layer: Some(exit),
        num_speculations: args.num_speculations,
        max_new_tokens: args.max_new_tokens,
        ..GenerateRequest::default()
    };
    let speculative = GenerateRequest {
        strategy: StrategyKind::SelfSpeculative,
        ..base.clone()
    };
    let early = exit.fixed().unwrap_or(model.default_exit_layer());
    let mut configs = vec![
        greedy(&model, base.clone())?,
        greedy(
            &model,
            GenerateRequest {
                strategy: StrategyKind::EarlyExit,
                exit_layer: Some(Setting::Fixed(early)),
                ..base.clone()
            },
        )?,
        greedy(&model, speculative.clone())?,
    ];
    let mut names = vec![
        "autoregressive".to_string(),
        format!("early-exit E={early}"),
        format!("self-speculative E={exit} D={}", args.num_speculations),
    ];
    if let Some(p) = args.draft_confidence {
        configs.push(greedy(
            &model,
            GenerateRequest {
                draft_confidence: Some(p),
                ..speculative
            },
        )?);
        names.push(format!("{} confidence>={p}", names[2]));
    }
    // With a draft vocabulary, each self-speculative row again drafting with the full head.
    if let Some(n) = model.info().draft_vocab {
        for i in 2..configs.len() {
            configs.push(GenerateOptions {
                full_vocab_drafts: true,
                ..configs[i].clone()
            });
            let name = std::mem::take(&mut names[i]);
            names[i] = format!("{name} vocab {n}");
            names.push(format!("{name} full vocab"));
        }
    }
    let mut peers = match args.peers {
        true => Some(start_peers(&args, &prompts)?),
        false => None,
    };
    let runs = run_all(
        &mut model,
        &prompts,
        &configs,
        args.prompts.repetitions,
        |warm_up| match &mut peers {
            Some(peers) => peers.repetition(warm_up),
            None => Ok(()),
        },
    )?;
    let base = &runs[0];
    let peers = peers.map(|p| {
        p.results(
            &base.prefill_tokens_per_second,
            &base.decode_tokens_per_second,
        )
    });
    let base = base.tokens_per_second.clone();
    let equal = runs[2..].iter().all(|r| r.outputs == runs[0].outputs);
    let rows: Vec<Row> = names
        .iter()
        .zip(runs)
        .map(|(name, mut r)| {
            let tps = median(r.tokens_per_second.clone());
            let speedup = paired(&r.tokens_per_second, &base);
            Row {
                strategy: name.clone(),
                tokens_per_second_median: tps,
                prefill_tokens_per_second_median: median(r.prefill_tokens_per_second.clone()),
                decode_tokens_per_second_median: median(r.decode_tokens_per_second.clone()),
                speedup: speedup.median,
                speedup_interval: speedup.interval,
                acceptance_rate: (r.drafted > 0).then(|| r.acceptance()),
                dispatches_per_token: r.per_token(r.dispatches),
                submits_per_token: r.per_token(r.submits),
                submits_per_round: (r.rounds > 0).then(|| r.round_submits as f64 / r.rounds as f64),
                draft_ms: r.draft_ms,
                verify_ms: r.verify_ms,
                draft_ms_per_drafted_token: (r.draft_ms > 0.0 && r.drafted > 0)
                    .then(|| r.draft_ms / r.drafted as f64),
                verify_ms_per_round: (r.verify_ms > 0.0 && r.rounds > 0)
                    .then(|| r.verify_ms / r.rounds as f64),
                adaptive: r.adaptive.take(),
            }
        })
        .collect();
    let bytes = traffic(&mut model, &prompts, &configs[0], &args)?;
    if args.json {
        let out = json!({
            "prompts": prompts.len(),
            "max_new_tokens": args.max_new_tokens,
            "repetitions": args.prompts.repetitions,
            "results": rows,
            "self_speculative_equals_autoregressive": equal,
            "bytes": bytes,
            "peers": peers,
        });
        println!("{out}");
        return Ok(());
    }
    println!(
        "{} prompt(s), {} new tokens, {} repetitions after a warm-up, greedy, EOS ignored",
        prompts.len(),
        args.max_new_tokens,
        args.prompts.repetitions
    );
    println!(
        "{:<44} {:>10} {:>8} {:>11} {:>10} {:>10} {:>11} {:>13} {:>10} {:>10}",
        "strategy",
        "tokens/s",
        "speedup",
        "95% CI",
        "prefill/s",
        "decode/s",
        "acceptance",
        "dispatches/t",
        "submits/t",
        "submits/r"
    );
    for row in &rows {
        let acceptance = row
            .acceptance_rate
            .map_or("-".into(), |a| format!("{:.1}%", 100.0 * a));
        let per_round = row
            .submits_per_round
            .map_or("-".into(), |s| format!("{s:.2}"));
        // The CPU backend runs no dispatches; a blank says so better than 0.0.
        let dispatches = match row.dispatches_per_token {
            0.0 => "-".into(),
            d => format!("{d:.1}"),
        };
        println!(
            "{:<44} {:>10.1} {:>7.2}x {:>11} {:>10.1} {:>10.1} {:>11} {:>13} {:>10.2} {:>10}",
            row.strategy,
            row.tokens_per_second_median,
            row.speedup,
            row.speedup_interval
                .map_or("-".into(), |[low, high]| format!("{low:.2}-{high:.2}")),
            row.prefill_tokens_per_second_median,
            row.decode_tokens_per_second_median,
            acceptance,
            dispatches,
            row.submits_per_token,
            per_round
        );
    }
    println!(
        "greedy self-speculative output equals autoregressive: {}",
        if equal { "yes" } else { "NO" }
    );
    for row in &rows {
        if let (Some(d), Some(v)) = (row.draft_ms_per_drafted_token, row.verify_ms_per_round) {
            println!(
                "{}: drafting {d:.3} ms per drafted token, verifying {v:.3} ms per round",
                row.strategy
            );
        }
        if let Some(a) = &row.adaptive {
            a.print(&row.strategy);
        }
    }
    print_traffic(&bytes, rows[0].tokens_per_second_median, args.bandwidth);
    if let Some(peers) = &peers {
        print_peers(&args, &model, &rows[0], peers);
    }
    Ok(())
}

/// The peers on the same file, prompts and threads, loaded.
fn start_peers(args: &BenchArgs, prompts: &[Vec<u32>]) -> Result<Peers> {
    let path = args
        .model
        .model
        .as_ref()
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        })
        .ok_or_else(|| {
            Error::Invalid(
                "--peers compares runtimes on one GGUF file: give --model FILE.gguf".into(),
            )
        })?;
    Peers::start(path, prompts, args.max_new_tokens, peer_threads(args))
}

/// The peers' threads: the CPU backend's.
fn peer_threads(args: &BenchArgs) -> usize {
    args.model
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn print_peers(args: &BenchArgs, model: &Model, ours: &Row, peers: &serde_json::Value) {
    println!(
        "peers on the same file, prompts and {} thread(s) (autoregressive, greedy):",
        peer_threads(args)
    );
    println!(
        "{:<28} {:>14} {:>14}   layerskip / peer: prefill, decode (95% CI)",
        "runtime", "prefill tok/s", "decode tok/s"
    );
    println!(
        "{:<28} {:>14.1} {:>14.1}",
        format!("layerskip ({})", model.backend().0),
        ours.prefill_tokens_per_second_median,
        ours.decode_tokens_per_second_median
    );
    for (name, peer) in peers.as_object().into_iter().flatten() {
        let rate = |key: &str| peer.get(key).and_then(serde_json::Value::as_f64);
        let speedup = |key: &str| {
            Some(Paired {
                median: rate(key)?,
                interval: serde_json::from_value(peer.get(format!("{key}_interval"))?.clone())
                    .ok()?,
            })
        };
        match (
            rate("prefill_tokens_per_second"),
            rate("decode_tokens_per_second"),
            speedup("prefill_speedup"),
            speedup("decode_speedup"),
        ) {
            (Some(prefill), Some(decode), Some(prefill_speedup), Some(decode_speedup)) => println!(
                "{:<28} {prefill:>14.1} {decode:>14.1}   {} {}",
                format!("{name} {}", peer["version"].as_str().unwrap_or("")),
                prefill_speedup.text(),
                decode_speedup.text(),
            ),
            _ => println!("{name:<28} {peer}"),
        }
    }
}

/// What a decode step reads, per kind of op, and (profiling) the GPU time it took.
#[derive(Serialize)]
struct Traffic {
    /// The context the byte counts assume: the mean position of the decoded tokens.
    context: usize,
    kinds: Vec<KindTraffic>,
    /// Whether GPU times were measured (`--profile` on an adapter with timestamp queries).
    timed: bool,
}

#[derive(Serialize)]
struct KindTraffic {
    kind: String,
    bytes_per_token: u64,
    gpu_ms_per_token: Option<f64>,
    gigabytes_per_second: Option<f64>,
}

/// Bytes per decoded token from the model's op list, and with `--profile` GPU time per kind over
/// one autoregressive run of every prompt.
fn traffic(
    model: &mut Model,
    prompts: &[Vec<u32>],
    autoregressive: &GenerateOptions,
    args: &BenchArgs,
) -> Result<Traffic> {
    let mean_prompt = prompts.iter().map(Vec::len).sum::<usize>() / prompts.len().max(1);
    let context = mean_prompt + args.max_new_tokens / 2;
    let mut times = vec![];
    let mut tokens = 0;
    if args.profile {
        model.start_profile()?;
        for prompt in prompts {
            tokens += pollster::block_on(model.generate_ids(prompt, autoregressive))?
                .tokens
                .len();
        }
        times = model.take_profile();
    }
    let name = |kind: Option<layerskip::engine::OpKind>| match kind {
        Some(k) => serde_json::to_value(k)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        None => "weights and KV cache".to_string(),
    };
    let kinds = model
        .decode_bytes(context)
        .into_iter()
        .map(|(kind, bytes)| {
            let ms = times
                .iter()
                .find(|(k, ..)| *k == kind)
                .map(|(_, ms, _)| ms / tokens.max(1) as f64);
            KindTraffic {
                kind: name(kind),
                bytes_per_token: bytes,
                gpu_ms_per_token: ms,
                gigabytes_per_second: ms.filter(|&ms| ms > 0.0).map(|ms| bytes as f64 / ms / 1e6),
            }
        })
        .collect();
    Ok(Traffic {
        context,
        kinds,
        timed: args.profile,
    })
}

fn print_traffic(t: &Traffic, tokens_per_second: f64, bandwidth: Option<f64>) {
    let total: u64 = t.kinds.iter().map(|k| k.bytes_per_token).sum();
    println!(
        "bytes read per decoded token at context {}: {:.1} MB",
        t.context,
        total as f64 / 1e6
    );
    if t.timed {
        println!(
            "{:<22} {:>12} {:>14} {:>10}",
            "op", "MB/token", "GPU ms/token", "GB/s"
        );
        for k in &t.kinds {
            println!(
                "{:<22} {:>12.3} {:>14} {:>10}",
                k.kind,
                k.bytes_per_token as f64 / 1e6,
                k.gpu_ms_per_token
                    .map_or("-".into(), |ms| format!("{ms:.3}")),
                k.gigabytes_per_second
                    .map_or("-".into(), |g| format!("{g:.1}"))
            );
        }
        let ms: f64 = t.kinds.iter().filter_map(|k| k.gpu_ms_per_token).sum();
        if ms > 0.0 {
            println!(
                "GPU time per decoded token {ms:.3} ms: {:.1} GB/s over the whole step",
                total as f64 / ms / 1e6
            );
        }
    }
    let achieved = total as f64 * tokens_per_second / 1e9;
    match bandwidth {
        Some(b) if b > 0.0 => println!(
            "autoregressive decoding moves {achieved:.2} GB/s: {:.1}% of the {b} GB/s bandwidth limit (limit: {:.0} tokens/s)",
            100.0 * achieved / b,
            b * 1e9 / total.max(1) as f64
        ),
        _ => println!("autoregressive decoding moves {achieved:.2} GB/s (give --bandwidth GBPS for the fraction of the limit)"),
    }
}

pub fn sweep(args: SweepArgs) -> Result<()> {
    args.prompts.check()?;
    let mut model = load(&args.model)?;
    let prompts = args.prompts.load(&model)?;
    let layers = model.config().num_hidden_layers;
    let exits = match &args.exit_layers {
        Some(text) => parse_list(text, "--exit-layers", layers - 1)?,
        None => (1..layers).collect(),
    };
    let depths = parse_list(
        &args.num_speculations,
        "--num-speculations",
        model.max_draft_depth(),
    )?;
    let base = GenerateRequest {
        max_new_tokens: args.max_new_tokens,
        ..GenerateRequest::default()
    };
    let mut configs = vec![greedy(&model, base.clone())?];
    let mut grid = vec![];
    for &e in &exits {
        for &d in &depths {
            configs.push(greedy(
                &model,
                GenerateRequest {
                    strategy: StrategyKind::SelfSpeculative,
                    exit_layer: Some(Setting::Fixed(e)),
                    num_speculations: Setting::Fixed(d),
                    ..base.clone()
                },
            )?);
            grid.push((e, d));
        }
    }
    // The last row: exit layer and depth chosen every round.
    configs.push(greedy(
        &model,
        GenerateRequest {
            strategy: StrategyKind::SelfSpeculative,
            exit_layer: Some(Setting::Auto),
            num_speculations: Setting::Auto,
            ..base.clone()
        },
    )?);
    let runs = run_all(
        &mut model,
        &prompts,
        &configs,
        args.prompts.repetitions,
        |_| Ok(()),
    )?;
    // Two measures of a configuration on the prompt set: the median of its runs' rates (a
    // typical prompt) and all tokens over all time (the whole set, slow prompts weighing by their
    // time). Each ranks the static pairs on its own.
    let measures = |r: &Runs| [median(r.tokens_per_second.clone()), r.throughput()];
    let base = measures(&runs[0]);
    let mut csv = String::from(
        "exit_layer,num_speculations,acceptance_rate,tokens_per_second_median,speedup_median,tokens_per_second_set,speedup_set\n",
    );
    println!(
        "autoregressive: {:.1} tokens/s (median of runs), {:.1} tokens/s (whole set)",
        base[0], base[1]
    );
    println!(
        "{:>5} {:>3} {:>11} {:>12} {:>8} {:>12} {:>8}",
        "E", "D", "acceptance", "median t/s", "speedup", "set t/s", "speedup"
    );
    // One printed and CSV row: exit layer and depth (numbers or "auto"); returns both measures.
    let mut row = |e: &str, d: &str, r: &Runs| {
        let (acceptance, m) = (r.acceptance(), measures(r));
        let x = [ratio(m[0], base[0]), ratio(m[1], base[1])];
        println!(
            "{e:>5} {d:>3} {:>10.1}% {:>12.1} {:>7.2}x {:>12.1} {:>7.2}x",
            100.0 * acceptance,
            m[0],
            x[0],
            m[1],
            x[1]
        );
        csv.push_str(&format!(
            "{e},{d},{acceptance:.4},{:.2},{:.3},{:.2},{:.3}\n",
            m[0], x[0], m[1], x[1]
        ));
        m
    };
    let mut best = [(0, 0, 0.0); 2];
    for (&(e, d), r) in grid.iter().zip(&runs[1..runs.len() - 1]) {
        let m = row(&e.to_string(), &d.to_string(), r);
        for (best, tps) in best.iter_mut().zip(m) {
            if tps > best.2 {
                *best = (e, d, tps);
            }
        }
    }
    let auto = &runs[runs.len() - 1];
    let auto_tps = row("auto", "auto", auto);
    for (i, measure) in ["median of runs", "whole set"].iter().enumerate() {
        let (b, a) = (best[i], auto_tps[i]);
        println!(
            "{measure}: best pair exit layer {} with {} speculations, {:.1} tokens/s ({:.2}x autoregressive); auto {a:.1} tokens/s ({:.2}x, {:.1}% of the best pair)",
            b.0,
            b.1,
            b.2,
            ratio(b.2, base[i]),
            ratio(a, base[i]),
            100.0 * ratio(a, b.2)
        );
    }
    if !auto.outputs.iter().eq(runs[0].outputs.iter()) {
        return Err(Error::Invalid(
            "auto's greedy output differs from autoregressive".into(),
        ));
    }
    if let Some(a) = &auto.adaptive {
        a.print("auto");
    }
    if let Some(path) = &args.csv {
        std::fs::write(path, csv)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_ranges() {
        assert_eq!(parse_list("1..4", "x", 7).unwrap(), vec![1, 2, 3, 4]);
        assert_eq!(parse_list("2, 4,8", "x", 8).unwrap(), vec![2, 4, 8]);
        assert!(parse_list("a..b", "x", 7).is_err());
        // Bounded before anything is allocated.
        assert!(parse_list("1..1000000000", "x", 7).is_err());
        assert!(parse_list("1..18446744073709551615", "x", 7).is_err());
        assert!(parse_list("0,1", "x", 7).is_err());
        assert!(parse_list("5..2", "x", 7).is_err());
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }

    /// Runs 1% slower than the base, on a machine that turns half as fast from the middle of the
    /// second pair on: run for run they are 0.99x, by the ratio of medians 0.495x.
    #[test]
    fn paired_ratios_cancel_a_slower_machine() {
        let base = [100.0, 100.0, 50.0];
        let runs = [99.0, 49.5, 49.5];
        assert_eq!(paired(&runs, &base).median, 0.99);
        assert_eq!(median(runs.to_vec()) / median(base.to_vec()), 0.495);
        assert_eq!(paired(&[1.0], &[0.0]).median, 0.0);
    }

    /// The median's 95% interval from order statistics: with 40 values the 14th smallest and
    /// largest (a fair coin gives at most 13 heads in 40 tosses with probability 1.9%, at most
    /// 14 with 4.0%), with 6 to 8 the extremes (1/64 to 1/256 each side), with 5 none (1/32 is
    /// more than 2.5%); thousands of values do not underflow.
    #[test]
    fn median_intervals_come_from_the_binomial_tails() {
        let values = |n: usize| (1..=n).map(|v| v as f64).collect::<Vec<_>>();
        assert_eq!(median_interval(&values(40)), Some([14.0, 27.0]));
        assert_eq!(median_interval(&values(8)), Some([1.0, 8.0]));
        assert_eq!(median_interval(&values(6)), Some([1.0, 6.0]));
        assert_eq!(median_interval(&values(5)), None);
        assert_eq!(median_interval(&[]), None);
        // Normal approximation for n = 5000: 2500 - 1.96 x sqrt(5000) / 2 = 2430.7.
        let [low, high] = median_interval(&values(5000)).unwrap();
        assert!((2428.0..=2432.0).contains(&low), "{low}");
        assert_eq!(high, 5001.0 - low);
        let p = paired(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[1.0; 6]);
        assert_eq!(p.interval, Some([1.0, 6.0]));
        assert_eq!(p.text(), "3.50x (1.00-6.00)");
    }

    /// Every sequence runs every configuration once, and over six sequences of three each one
    /// runs right after each other one twice (the bench's autoregressive, early-exit and
    /// self-speculative runs).
    #[test]
    fn orders_balance_what_runs_before_what() {
        for n in 1..6 {
            for k in 0..2 * n {
                let mut seen: Vec<usize> = order(k, n).collect();
                seen.sort();
                assert_eq!(seen, (0..n).collect::<Vec<_>>(), "sequence {k} of {n}");
            }
        }
        let mut after = [[0; 3]; 3];
        for k in 0..6 {
            let seq: Vec<usize> = order(k, 3).collect();
            for pair in seq.windows(2) {
                after[pair[1]][pair[0]] += 1;
            }
        }
        assert_eq!(after, [[0, 2, 2], [2, 0, 2], [2, 2, 0]]);
    }
}
