//! `layerskip eval`: cross-entropy, perplexity and top-1 accuracy of the exit head after every
//! layer on a text file, in the runtime itself (so a weight format's cost in quality is measured
//! where it runs).

use super::{load, ModelArgs};
use layerskip::{Error, Result};
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The text to score (UTF-8).
    #[arg(long)]
    text: PathBuf,
    /// Predicted tokens per window; each window starts a fresh context.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Score only the first N windows.
    #[arg(long)]
    max_windows: Option<usize>,
    #[arg(long)]
    json: bool,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.text)
        .map_err(|e| Error::file(args.text.display().to_string(), e))?;
    let mut model = load(&args.model)?;
    let bar = super::progress_bar("scoring windows");
    let result =
        pollster::block_on(
            model.evaluate(&text, args.window, args.max_windows, |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            }),
        );
    bar.finish_and_clear();
    let e = result?;
    if args.json {
        println!("{}", json!(e));
        return Ok(());
    }
    println!(
        "{} tokens scored in {} windows of {} ({})",
        e.tokens,
        e.windows,
        e.window,
        model.plan().weight_format
    );
    println!(
        "{:>5} {:>13} {:>11} {:>7}",
        "layer", "cross-entropy", "perplexity", "top-1"
    );
    for l in &e.layers {
        println!(
            "{:>5} {:>13.4} {:>11.2} {:>6.2}%",
            l.layer,
            l.cross_entropy,
            l.perplexity,
            100.0 * l.top1_accuracy
        );
    }
    Ok(())
}
