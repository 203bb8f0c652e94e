//! Command-line interface: generate, chat, serve, logits (the logit lens), info, bench, sweep and the
//! checkpoint tools.

mod bench;
mod chat;
mod default_model;
mod eval;
mod generate;
mod inspect;
mod peers;
mod quantize;
mod serve;
mod vocab_stats;

use clap::{Args, Parser, Subcommand, ValueEnum};
use layerskip::checkpoint::Progress;
use layerskip::engine::DEFAULT_MAX_CONTEXT;
use layerskip::gpu::context::parse_backend;
use layerskip::gpu::GpuOptions;
use layerskip::{
    Activations, DirFiles, EngineOptions, Error, KvFormat, LoadOptions, Model, Quantization, Result,
};
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
    /// A conversation in the terminal with the model's chat template, streamed, multi-turn.
    Chat(chat::ChatArgs),
    /// An OpenAI-compatible HTTP server: /v1/chat/completions, /v1/completions, /v1/models.
    Serve(serve::ServeArgs),
    /// The exit head's logits at the last prompt position after every layer (the logit lens).
    Logits(inspect::LogitsArgs),
    /// Config summary, parameter count, weight bytes, adapter and limits.
    Info(inspect::InfoArgs),
    /// Autoregressive, early exit and self-speculative decoding on the same prompts, compared.
    Bench(bench::BenchArgs),
    /// Acceptance rate and speed of self-speculative decoding over a grid of exit layers and depths.
    Sweep(bench::SweepArgs),
    /// Write a q8 or q4 copy of a checkpoint.
    Quantize(quantize::QuantizeArgs),
    /// Cross-entropy, perplexity and top-1 accuracy of the exit head after every layer on a text.
    Eval(eval::EvalArgs),
    /// Token frequencies of a text, for the reduced draft vocabulary (--draft-vocab).
    VocabStats(vocab_stats::VocabStatsArgs),
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum DeviceArg {
    /// A hardware GPU when there is one, else the CPU.
    Auto,
    /// WGSL on wgpu, even on a software adapter.
    Gpu,
    /// The fast multi-threaded CPU backend.
    Cpu,
    /// The plain f32 CPU reference (the test oracle; slow).
    CpuReference,
}

#[derive(Args)]
pub struct ModelArgs {
    /// A GGUF file, or a Hugging Face checkpoint directory (config.json, tokenizer.json,
    /// *.safetensors). Without it, the small LayerSkip model embedded in this binary.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Restrict the GPU to one graphics API: vulkan, gl, metal or dx12.
    #[arg(long)]
    backend: Option<String>,
    /// Threads of the CPU backend (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Positions the KV cache holds (capped by the model's max_position_embeddings).
    #[arg(long, default_value_t = DEFAULT_MAX_CONTEXT)]
    max_context: usize,
    /// Quantize f32/f16/bf16 weights while loading (q8: 8-bit, q4: 4-bit, groups of 32).
    #[arg(long, value_enum)]
    quantize: Option<Quantization>,
    /// Precision of the KV cache (f16 halves its memory).
    #[arg(long, value_enum, default_value_t)]
    kv_cache: KvFormat,
    /// How the CPU backend multiplies activations with quantized weights: q8 rounds them to 8
    /// bits per group of 32 for integer dot products (as llama.cpp does); f32 multiplies the
    /// exactly dequantized weights (what the GPU computes).
    #[arg(long, value_enum, default_value_t)]
    activations: Activations,
    /// Mat-vec workgroup size on the GPU (default: 256, or the adapter's limit). For experiments.
    #[arg(long)]
    gpu_workgroup_size: Option<u32>,
    /// Weight rows per mat-vec workgroup on the GPU (default 4). For experiments.
    #[arg(long)]
    gpu_rows_per_workgroup: Option<u32>,
    /// Sum partial products through workgroup memory even where the GPU has subgroup operations.
    #[arg(long)]
    no_subgroups: bool,
    /// Draft with an exit head over only the N most frequent token ids (token_frequencies.json
    /// next to the model, else BPE merge order); verification keeps the full head.
    #[arg(long)]
    draft_vocab: Option<usize>,
}

impl ModelArgs {
    fn options(&self) -> Result<LoadOptions> {
        let cpu = matches!(self.device, DeviceArg::Cpu | DeviceArg::CpuReference);
        if cpu && self.backend.is_some() {
            return Err(Error::Invalid(
                "--backend chooses a GPU graphics API; it does not apply to --device cpu".into(),
            ));
        }
        if self.threads.is_some() && matches!(self.device, DeviceArg::Gpu | DeviceArg::CpuReference)
        {
            return Err(Error::Invalid(
                "--threads sets the CPU backend's threads (--device cpu or auto)".into(),
            ));
        }
        if self.threads == Some(0) {
            return Err(Error::Invalid("--threads must be at least 1".into()));
        }
        let gpu = GpuOptions {
            backend: self.backend.as_deref().map(parse_backend).transpose()?,
            workgroup_size: self.gpu_workgroup_size,
            rows_per_workgroup: self.gpu_rows_per_workgroup,
            no_subgroups: self.no_subgroups,
            max_binding_override: None,
        };
        let threads = self.threads;
        let device = match self.device {
            DeviceArg::Auto => layerskip::Device::Auto { gpu, threads },
            DeviceArg::Gpu => layerskip::Device::Gpu(gpu),
            DeviceArg::Cpu => layerskip::Device::Cpu { threads },
            DeviceArg::CpuReference => layerskip::Device::CpuReference,
        };
        Ok(LoadOptions {
            device,
            engine: EngineOptions {
                max_context: self.max_context,
                quantize: self.quantize,
                kv_cache: self.kv_cache,
                activations: self.activations,
                ..EngineOptions::default()
            },
            draft_vocab: self.draft_vocab,
        })
    }
}

/// A progress bar on stderr, drawn only when stderr is a terminal.
pub fn progress_bar(what: &str) -> indicatif::ProgressBar {
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    let style = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    );
    if let Ok(style) = style {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

pub fn load(args: &ModelArgs) -> Result<Model> {
    let options = args.options()?;
    let bar = progress_bar("loading weights");
    let progress = |p: Progress| {
        bar.set_length(p.total);
        bar.set_position(p.done);
    };
    let model = match &args.model {
        Some(dir) => pollster::block_on(Model::load(&DirFiles::new(dir)?, &options, progress)),
        None => pollster::block_on(Model::load(&default_model::files(), &options, progress)),
    };
    bar.finish_and_clear();
    let model = model?;
    let (backend, why) = model.backend();
    eprintln!("backend: {backend} ({why})");
    Ok(model)
}

pub fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Generate(args) => generate::run(args),
        Command::Chat(args) => chat::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Logits(args) => inspect::logits(args),
        Command::Info(args) => inspect::info(args),
        Command::Bench(args) => bench::bench(args),
        Command::Sweep(args) => bench::sweep(args),
        Command::Quantize(args) => quantize::run(args),
        Command::Eval(args) => eval::run(args),
        Command::VocabStats(args) => vocab_stats::run(args),
    }
}
