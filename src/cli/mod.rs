//! Command-line interface: generate, logits (the logit lens), info, bench and sweep.

mod bench;
mod default_model;
mod generate;
mod inspect;

use clap::{Args, Parser, Subcommand, ValueEnum};
use layerskip::checkpoint::Progress;
use layerskip::gpu::context::parse_backend;
use layerskip::gpu::GpuOptions;
use layerskip::{DirFiles, Error, GenerateOptions, Model, Result, SamplingParams, Strategy};
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
    Info(ModelArgs),
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

#[derive(Clone, Copy, ValueEnum)]
pub enum StrategyArg {
    Autoregressive,
    EarlyExit,
    SelfSpeculative,
}

/// How to decode: shared by generate, bench and sweep.
#[derive(Args)]
pub struct DecodeArgs {
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Layer whose output the exit head reads (1-based). Defaults to generation_config.json's
    /// `assistant_early_exit`, else a quarter of the layers.
    #[arg(long)]
    exit_layer: Option<usize>,
    /// Drafts per self-speculative round.
    #[arg(long, default_value_t = 4)]
    num_speculations: usize,
    /// Do not stop at end-of-sequence tokens: produce exactly --max-new-tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Sampling temperature; 0 (the default) decodes greedily.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sample among the K most likely tokens only (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample among the most likely tokens that reach this probability mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop drafting when the draft's top probability falls below this (self-speculative).
    #[arg(long)]
    draft_confidence: Option<f32>,
}

impl DecodeArgs {
    pub fn exit_layer(&self, model: &Model) -> usize {
        model.exit_layer(self.exit_layer)
    }

    pub fn options(&self, model: &Model, strategy: StrategyArg) -> Result<GenerateOptions> {
        let exit_layer = self.exit_layer(model);
        let strategy = match strategy {
            StrategyArg::Autoregressive => Strategy::Autoregressive,
            StrategyArg::EarlyExit => Strategy::EarlyExit { exit_layer },
            StrategyArg::SelfSpeculative => Strategy::SelfSpeculative {
                exit_layer,
                num_speculations: self.num_speculations,
            },
        };
        let sampling = (self.temperature > 0.0).then_some(SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
        });
        if self.temperature < 0.0 {
            return Err(Error::Invalid("--temperature must not be negative".into()));
        }
        Ok(GenerateOptions {
            strategy,
            max_new_tokens: self.max_new_tokens,
            ignore_eos: self.ignore_eos,
            eos_token_ids: vec![],
            sampling,
            draft_confidence: self.draft_confidence,
        })
    }
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
        Some(dir) if !dir.is_dir() => {
            return Err(Error::Invalid(format!(
                "model directory {} does not exist",
                dir.display()
            )))
        }
        Some(dir) => pollster::block_on(Model::load(
            &DirFiles(dir.clone()),
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
