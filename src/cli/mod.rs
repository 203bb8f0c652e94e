//! Command-line interface: generate, logits (the logit lens), info, bench and sweep.

mod bench;
mod default_model;
mod generate;
mod inspect;

use clap::{Args, Parser, Subcommand, ValueEnum};
use layerskip::checkpoint::Progress;
use layerskip::gpu::context::parse_backend;
use layerskip::gpu::GpuOptions;
use layerskip::{DirFiles, Model, Result};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "layerskip",
    version,
    about = "LayerSkip early exit and self-speculative decoding on WebGPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text, streaming it as it comes.
    Generate(generate::GenerateArgs),
    /// The exit head's logits at the last prompt position after every layer (the logit lens).
    Logits(inspect::LogitsArgs),
    /// Config summary, parameter count, weight bytes, adapter and limits.
    Info(inspect::InfoArgs),
    /// Autoregressive, early exit and self-speculative decoding on the same prompts, compared.
    Bench(bench::BenchArgs),
    /// Acceptance rate and speed of self-speculative decoding over a grid of exit layers and depths.
    Sweep(bench::SweepArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    Gpu,
    Cpu,
}

#[derive(Args)]
pub struct ModelArgs {
    /// Hugging Face checkpoint directory (config.json, tokenizer.json, *.safetensors). Without
    /// it, the small LayerSkip model embedded in this binary.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "gpu")]
    device: DeviceArg,
    /// Restrict the GPU to one backend: vulkan, gl, metal or dx12.
    #[arg(long)]
    backend: Option<String>,
    /// Positions the KV cache holds (capped by the model's max_position_embeddings).
    #[arg(long, default_value_t = 2048)]
    max_context: usize,
}

pub fn load(args: &ModelArgs) -> Result<Model> {
    let device = match args.device {
        DeviceArg::Cpu => layerskip::Device::Cpu,
        DeviceArg::Gpu => layerskip::Device::Gpu(GpuOptions {
            backend: args.backend.as_deref().map(parse_backend).transpose()?,
            max_binding_override: None,
        }),
    };
    let show = std::io::stderr().is_terminal();
    let progress = |p: Progress| {
        if show && p.total > 0 {
            eprint!(
                "\rloading weights: {:3}% ({:.1} / {:.1} MB)",
                p.done * 100 / p.total,
                p.done as f64 / 1e6,
                p.total as f64 / 1e6
            );
        }
    };
    let model = match &args.model {
        Some(dir) => pollster::block_on(Model::load(
            &DirFiles::new(dir)?,
            &device,
            args.max_context,
            progress,
        )),
        None => pollster::block_on(Model::load(
            &default_model::files(),
            &device,
            args.max_context,
            progress,
        )),
    }?;
    if show {
        eprint!("\r\x1b[K");
    }
    Ok(model)
}

pub fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Generate(args) => generate::run(args),
        Command::Logits(args) => inspect::logits(args),
        Command::Info(args) => inspect::info(args),
        Command::Bench(args) => bench::bench(args),
        Command::Sweep(args) => bench::sweep(args),
    }
}
