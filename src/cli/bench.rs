//! `layerskip bench` and `layerskip sweep`: speed and acceptance measured in one process, with the
//! strategies interleaved after a warm-up so drift (clocks, caches) hits them all alike.

use super::{load, DecodeArgs, ModelArgs, StrategyArg};
use layerskip::{generate, Engine, Error, GenerateOptions, Generation, Model, Result, Strategy};
use serde_json::json;
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
            (None, None) => unreachable!("clap requires --prompt or --prompts"),
        };
        texts.iter().map(|t| model.tokenizer.encode(t)).collect()
    }
}

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    prompts: PromptArgs,
    #[command(flatten)]
    decode: DecodeArgs,
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

/// "A..B" (inclusive) or "a,b,c".
fn parse_list(text: &str, what: &str) -> Result<Vec<usize>> {
    let bad = || {
        Error::Invalid(format!(
            "{what}: expected A..B or a list like 1,2,4, got {text:?}"
        ))
    };
    let num = |s: &str| s.trim().parse::<usize>().map_err(|_| bad());
    match text.split_once("..") {
        Some((a, b)) => Ok((num(a)?..=num(b.trim_start_matches('='))?).collect()),
        None => text.split(',').map(num).collect(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
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
    drafted: usize,
    accepted: usize,
    tokens: usize,
    dispatches: u64,
    submits: u64,
    draft_ms: f64,
    verify_ms: f64,
    outputs: Vec<Vec<u32>>,
}

impl Runs {
    fn add(&mut self, g: Generation) {
        let s = &g.stats;
        self.tokens_per_second.push(s.tokens_per_second);
        self.drafted += s.drafted;
        self.accepted += s.accepted;
        self.tokens += s.generated_tokens;
        self.dispatches += s.dispatches;
        self.submits += s.submits;
        self.draft_ms += s.draft_ms;
        self.verify_ms += s.verify_ms;
        self.outputs.push(g.tokens);
    }
    fn acceptance(&self) -> f64 {
        if self.drafted > 0 {
            self.accepted as f64 / self.drafted as f64
        } else {
            0.0
        }
    }
    fn per_token(&self, n: u64) -> f64 {
        n as f64 / self.tokens.max(1) as f64
    }
}

/// Greedy and to a fixed length (EOS ignored), so every strategy produces the same number of tokens.
fn run_all(
    model: &mut Model,
    prompts: &[Vec<u32>],
    configs: &[GenerateOptions],
    repetitions: usize,
) -> Result<Vec<Runs>> {
    let mut runs: Vec<Runs> = configs.iter().map(|_| Runs::default()).collect();
    for rep in 0..=repetitions {
        for prompt in prompts {
            for (options, runs) in configs.iter().zip(&mut runs) {
                let g =
                    pollster::block_on(generate(&mut model.engine, prompt, options, |_, _| {
                        layerskip::Flow::Continue
                    }))?;
                // Repetition 0 is the warm-up: pipelines compiled, caches filled, clocks up.
                if rep > 0 {
                    runs.add(g);
                }
            }
        }
    }
    Ok(runs)
}

fn greedy(strategy: Strategy, max_new_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        ignore_eos: true,
        ..GenerateOptions::greedy(strategy, max_new_tokens)
    }
}

pub fn bench(args: BenchArgs) -> Result<()> {
    let mut model = load(&args.model)?;
    let prompts = args.prompts.load(&model)?;
    let exit = args.decode.exit_layer(&model);
    let n = args.decode.max_new_tokens;
    let mut configs = vec![
        greedy(Strategy::Autoregressive, n),
        greedy(Strategy::EarlyExit { exit_layer: exit }, n),
        args.decode
            .options(&model, StrategyArg::SelfSpeculative)
            .map(|o| GenerateOptions {
                ignore_eos: true,
                sampling: None,
                draft_confidence: None,
                ..o
            })?,
    ];
    let mut names = vec![
        "autoregressive".to_string(),
        format!("early-exit E={exit}"),
        format!(
            "self-speculative E={exit} D={}",
            args.decode.num_speculations
        ),
    ];
    if let Some(p) = args.decode.draft_confidence {
        configs.push(GenerateOptions {
            draft_confidence: Some(p),
            ..configs[2].clone()
        });
        names.push(format!("{} confidence>={p}", names[2]));
    }
    let runs = run_all(&mut model, &prompts, &configs, args.prompts.repetitions)?;
    let base = median(runs[0].tokens_per_second.clone());
    let equal = runs[2..].iter().all(|r| r.outputs == runs[0].outputs);
    let rows: Vec<_> = names
        .iter()
        .zip(&runs)
        .map(|(name, r)| {
            let tps = median(r.tokens_per_second.clone());
            json!({
                "strategy": name,
                "tokens_per_second_median": tps,
                "speedup": tps / base,
                "acceptance_rate": (r.drafted > 0).then(|| r.acceptance()),
                "dispatches_per_token": r.per_token(r.dispatches),
                "submits_per_token": r.per_token(r.submits),
                "draft_ms": r.draft_ms,
                "verify_ms": r.verify_ms,
            })
        })
        .collect();
    if args.json {
        let out = json!({
            "prompts": prompts.len(),
            "max_new_tokens": n,
            "repetitions": args.prompts.repetitions,
            "results": rows,
            "self_speculative_equals_autoregressive": equal,
        });
        println!("{out}");
        return Ok(());
    }
    println!(
        "{} prompt(s), {n} new tokens, {} repetitions after a warm-up, greedy, EOS ignored",
        prompts.len(),
        args.prompts.repetitions
    );
    println!(
        "{:<44} {:>12} {:>8} {:>11} {:>13} {:>11}",
        "strategy", "tokens/s", "speedup", "acceptance", "dispatches/t", "submits/t"
    );
    for row in &rows {
        let acceptance = row["acceptance_rate"]
            .as_f64()
            .map_or("-".into(), |a| format!("{:.1}%", 100.0 * a));
        println!(
            "{:<44} {:>12.1} {:>7.2}x {:>11} {:>13.1} {:>11.2}",
            row["strategy"].as_str().unwrap(),
            row["tokens_per_second_median"].as_f64().unwrap(),
            row["speedup"].as_f64().unwrap(),
            acceptance,
            row["dispatches_per_token"].as_f64().unwrap(),
            row["submits_per_token"].as_f64().unwrap()
        );
    }
    println!(
        "greedy self-speculative output equals autoregressive: {}",
        if equal { "yes" } else { "NO" }
    );
    Ok(())
}

pub fn sweep(args: SweepArgs) -> Result<()> {
    let mut model = load(&args.model)?;
    let prompts = args.prompts.load(&model)?;
    let layers = model.engine.config().num_hidden_layers;
    let exits = match &args.exit_layers {
        Some(text) => parse_list(text, "--exit-layers")?,
        None => (1..layers).collect(),
    };
    let depths = parse_list(&args.num_speculations, "--num-speculations")?;
    let n = args.max_new_tokens;
    let mut configs = vec![greedy(Strategy::Autoregressive, n)];
    let mut grid = vec![];
    for &e in &exits {
        for &d in &depths {
            configs.push(greedy(
                Strategy::SelfSpeculative {
                    exit_layer: e,
                    num_speculations: d,
                },
                n,
            ));
            grid.push((e, d));
        }
    }
    let runs = run_all(&mut model, &prompts, &configs, args.prompts.repetitions)?;
    let base = median(runs[0].tokens_per_second.clone());
    let mut csv =
        String::from("exit_layer,num_speculations,acceptance_rate,tokens_per_second,speedup\n");
    println!("autoregressive: {base:.1} tokens/s (median)");
    println!(
        "{:>5} {:>3} {:>11} {:>10} {:>8}",
        "E", "D", "acceptance", "tokens/s", "speedup"
    );
    let mut best = (0, 0, 0.0);
    for (&(e, d), r) in grid.iter().zip(&runs[1..]) {
        let tps = median(r.tokens_per_second.clone());
        println!(
            "{e:>5} {d:>3} {:>10.1}% {tps:>10.1} {:>7.2}x",
            100.0 * r.acceptance(),
            tps / base
        );
        csv.push_str(&format!(
            "{e},{d},{:.4},{tps:.2},{:.3}\n",
            r.acceptance(),
            tps / base
        ));
        if tps > best.2 {
            best = (e, d, tps);
        }
    }
    println!(
        "best: exit layer {} with {} speculations, {:.1} tokens/s ({:.2}x autoregressive)",
        best.0,
        best.1,
        best.2,
        best.2 / base
    );
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
        assert_eq!(parse_list("1..4", "x").unwrap(), vec![1, 2, 3, 4]);
        assert_eq!(parse_list("2, 4,8", "x").unwrap(), vec![2, 4, 8]);
        assert!(parse_list("a..b", "x").is_err());
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }
}
