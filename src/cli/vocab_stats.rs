//! `layerskip vocab-stats`: token frequencies of a text, for the reduced draft vocabulary
//! (`--draft-vocab N` reads them from `token_frequencies.json` next to the model).

use super::default_model;
use layerskip::files::MAX_TOKENIZER_BYTES;
use layerskip::vocab::{Frequencies, FREQUENCIES_FILE};
use layerskip::{DirFiles, Error, Files, Result, Tokenizer};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct VocabStatsArgs {
    /// Checkpoint directory whose tokenizer.json encodes the text (default: the embedded model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The text to count (UTF-8), like what the model will be asked to write.
    #[arg(long)]
    text: PathBuf,
    /// Where to write the counts (the loader looks for DIR/token_frequencies.json).
    #[arg(long)]
    out: PathBuf,
}

async fn tokenizer(files: &impl Files) -> Result<Tokenizer> {
    let bytes = files
        .read_capped("tokenizer.json", MAX_TOKENIZER_BYTES)
        .await?
        .ok_or_else(|| Error::file("tokenizer.json", "missing"))?;
    Tokenizer::from_bytes(&bytes)
}

pub fn run(args: VocabStatsArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.text)
        .map_err(|e| Error::file(args.text.display().to_string(), e))?;
    let tokenizer = match &args.model {
        Some(dir) => pollster::block_on(tokenizer(&DirFiles::new(dir)?))?,
        None => pollster::block_on(tokenizer(&default_model::files()))?,
    };
    let ids = tokenizer.encode(&text)?;
    if ids.is_empty() {
        return Err(Error::file(
            args.text.display().to_string(),
            "encodes to no tokens",
        ));
    }
    let f = Frequencies::count(&ids);
    let json = serde_json::to_string(&f).map_err(|e| Error::Invalid(e.to_string()))?;
    std::fs::write(&args.out, json).map_err(|e| Error::file(args.out.display().to_string(), e))?;
    if args.out.file_name().and_then(|n| n.to_str()) != Some(FREQUENCIES_FILE) {
        eprintln!("note: --draft-vocab reads {FREQUENCIES_FILE} from the model folder");
    }
    println!(
        "{} tokens, {} distinct of {} in the vocabulary; written to {}",
        f.tokens,
        f.ids.len(),
        tokenizer.vocab_size(),
        args.out.display()
    );
    // How much of the text the most frequent N ids cover: the share of positions where a draft
    // over them could be right at all.
    let mut covered = 0u64;
    let mut next = 1usize;
    for (i, &c) in f.counts.iter().enumerate() {
        covered += c;
        if i + 1 == next || i + 1 == f.counts.len() {
            println!(
                "  top {:>6} ids cover {:>5.1}% of the tokens",
                i + 1,
                100.0 * covered as f64 / f.tokens as f64
            );
            next *= 4;
        }
    }
    Ok(())
}
