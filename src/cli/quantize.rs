//! `layerskip quantize`: writes a q8 or q4 checkpoint folder that loads anywhere the original
//! does, natively or in a browser (a 4-bit Llama-3.2-1B is 0.7 GB instead of 2.5 GB).

use super::default_model;
use layerskip::llama::DEFAULT_STAGING_BYTES;
use layerskip::quantize::{quantize, DEFAULT_MAX_SHARD_BYTES};
use layerskip::{DirFiles, Error, Quantization, Result};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct QuantizeArgs {
    /// The f32/f16/bf16 checkpoint folder (default: the embedded model).
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, value_enum)]
    format: Quantization,
    /// The folder to write (created if missing; must not already hold a checkpoint).
    #[arg(long)]
    out: PathBuf,
    /// Largest safetensors file; bigger checkpoints are sharded with an index.
    #[arg(long, default_value_t = DEFAULT_MAX_SHARD_BYTES)]
    max_shard_bytes: u64,
}

/// Refuses an output folder that already holds a checkpoint or is the input.
fn check_out(args: &QuantizeArgs) -> Result<()> {
    let shown = args.out.display().to_string();
    std::fs::create_dir_all(&args.out).map_err(|e| Error::file(&shown, e))?;
    if let Some(model) = &args.model {
        let same = std::fs::canonicalize(model).ok() == std::fs::canonicalize(&args.out).ok();
        if same {
            return Err(Error::file(
                &shown,
                "is the input folder; choose another --out",
            ));
        }
    }
    for entry in std::fs::read_dir(&args.out).map_err(|e| Error::file(&shown, e))? {
        let name = entry.map_err(|e| Error::file(&shown, e))?.file_name();
        let name = name.to_string_lossy();
        if name == "config.json" || name.ends_with(".safetensors") {
            return Err(Error::file(
                &shown,
                format!("already holds a checkpoint ({name}); choose an empty folder"),
            ));
        }
    }
    Ok(())
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    check_out(&args)?;
    let started = std::time::Instant::now();
    let mut open: HashMap<String, std::io::BufWriter<std::fs::File>> = HashMap::new();
    let out = args.out.clone();
    let emit = |name: &str, bytes: &[u8]| -> Result<()> {
        let path = out.join(name);
        let err = |e: std::io::Error| Error::file(path.display().to_string(), e);
        if !open.contains_key(name) {
            let file = std::fs::File::create(&path).map_err(err)?;
            open.insert(name.to_string(), std::io::BufWriter::new(file));
        }
        match open.get_mut(name) {
            Some(w) => w.write_all(bytes).map_err(err),
            None => Ok(()),
        }
    };
    let bar = super::progress_bar(&format!("quantizing to {}", args.format));
    let progress = |p: layerskip::checkpoint::Progress| {
        bar.set_length(p.total);
        bar.set_position(p.done);
    };
    let report = match &args.model {
        Some(dir) => pollster::block_on(quantize(
            &DirFiles::new(dir)?,
            args.format,
            args.max_shard_bytes,
            DEFAULT_STAGING_BYTES,
            emit,
            progress,
        )),
        None => pollster::block_on(quantize(
            &default_model::files(),
            args.format,
            args.max_shard_bytes,
            DEFAULT_STAGING_BYTES,
            emit,
            progress,
        )),
    }?;
    bar.finish_and_clear();
    for (name, mut w) in open {
        w.flush()
            .map_err(|e| Error::file(args.out.join(name).display().to_string(), e))?;
    }
    for (name, bytes) in &report.files {
        println!("{:>14} bytes  {}", bytes, args.out.join(name).display());
    }
    println!(
        "{} weights: {} bytes read, {} bytes written ({:.1}%), in {:.1} s",
        args.format,
        report.bytes_in,
        report.bytes_out,
        100.0 * report.bytes_out as f64 / report.bytes_in.max(1) as f64,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
