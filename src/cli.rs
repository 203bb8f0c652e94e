//! Command-line interface: generate, logits (the logit lens) and info.

use clap::{Args, Parser, Subcommand, ValueEnum};
use layerskip::checkpoint::Progress;
use layerskip::gpu::context::parse_backend;
use layerskip::gpu::GpuOptions;
use layerskip::{
    generate, AnyEngine, Call, DirFiles, Engine, Error, GenerateOptions, Head, Input, Model,
    Result, Strategy, StreamDecoder, TokenKind,
};
use serde_json::json;
use std::io::{IsTerminal, Write};
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
    /// Generate text greedily, streaming it as it comes.
    Generate(GenerateArgs),
    /// The exit head's logits at the last prompt position after every layer (the logit lens).
    Logits(LogitsArgs),
    /// Config summary, parameter count, weight bytes, adapter and limits.
    Info(ModelArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    Gpu,
    Cpu,
}

#[derive(Clone, Copy, ValueEnum)]
enum StrategyArg {
    Autoregressive,
    EarlyExit,
}

#[derive(Args)]
struct ModelArgs {
    /// Hugging Face checkpoint directory (config.json, tokenizer.json, *.safetensors).
    #[arg(long)]
    model: PathBuf,
    #[arg(long, value_enum, default_value = "gpu")]
    device: DeviceArg,
    /// Restrict the GPU to one backend: vulkan, gl, metal or dx12.
    #[arg(long)]
    backend: Option<String>,
    /// Positions the KV cache holds (capped by the model's max_position_embeddings).
    #[arg(long, default_value_t = 2048)]
    max_context: usize,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    #[arg(long, value_enum, default_value = "autoregressive")]
    strategy: StrategyArg,
    /// Layer whose output the exit head reads (1-based), for early exit.
    #[arg(long)]
    exit_layer: Option<usize>,
    /// Do not stop at end-of-sequence tokens: produce exactly --max-new-tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    prompt: String,
    /// Only the K largest logits per layer.
    #[arg(long)]
    top: Option<usize>,
    #[arg(long)]
    json: bool,
}

fn load(args: &ModelArgs) -> Result<Model> {
    let device = match args.device {
        DeviceArg::Cpu => layerskip::Device::Cpu,
        DeviceArg::Gpu => layerskip::Device::Gpu(GpuOptions {
            backend: args.backend.as_deref().map(parse_backend).transpose()?,
            max_binding_override: None,
        }),
    };
    if !args.model.is_dir() {
        return Err(Error::Invalid(format!(
            "model directory {} does not exist",
            args.model.display()
        )));
    }
    let files = DirFiles(args.model.clone());
    let show = std::io::stderr().is_terminal();
    let model = pollster::block_on(Model::load(
        &files,
        &device,
        args.max_context,
        |p: Progress| {
            if show && p.total > 0 {
                eprint!(
                    "\rloading weights: {:3}% ({:.1} / {:.1} MB)",
                    p.done * 100 / p.total,
                    p.done as f64 / 1e6,
                    p.total as f64 / 1e6
                );
            }
        },
    ))?;
    if show {
        eprint!("\r\x1b[K");
    }
    Ok(model)
}

pub fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Generate(args) => run_generate(args),
        Command::Logits(args) => run_logits(args),
        Command::Info(args) => run_info(args),
    }
}

fn run_generate(args: GenerateArgs) -> Result<()> {
    let mut model = load(&args.model)?;
    let layers = model.engine.config().num_hidden_layers;
    let strategy = match args.strategy {
        StrategyArg::Autoregressive => Strategy::Autoregressive,
        StrategyArg::EarlyExit => Strategy::EarlyExit {
            exit_layer: args.exit_layer.ok_or_else(|| {
                Error::Invalid(format!(
                    "--strategy early-exit needs --exit-layer (1..={layers})"
                ))
            })?,
        },
    };
    let prompt = model.tokenizer.encode(&args.prompt)?;
    let options = GenerateOptions {
        strategy,
        max_new_tokens: args.max_new_tokens,
        ignore_eos: args.ignore_eos,
        eos_token_ids: model.eos_token_ids.clone(),
    };
    let mut stream = StreamDecoder::new();
    let mut stdout = std::io::stdout();
    let tokenizer = &model.tokenizer;
    let mut failed = None;
    let generation = pollster::block_on(generate(
        &mut model.engine,
        &prompt,
        &options,
        |token, _kind: TokenKind| {
            if !args.json {
                match stream.push(tokenizer, token) {
                    Ok(Some(text)) => {
                        let _ = write!(stdout, "{text}");
                        let _ = stdout.flush();
                    }
                    Ok(None) => {}
                    Err(e) => {
                        failed = Some(e);
                        return false;
                    }
                }
            }
            true
        },
    ))?;
    if let Some(e) = failed {
        return Err(e);
    }
    let text = model.tokenizer.decode(&generation.tokens)?;
    if args.json {
        let out = json!({
            "prompt_tokens": prompt,
            "tokens": generation.tokens,
            "text": text,
            "stats": generation.stats,
        });
        println!("{out}");
    } else {
        println!("{}", stream.finish(&model.tokenizer)?);
        let s = &generation.stats;
        eprintln!(
            "[{}] {} tokens in {:.0} ms: {:.1} tokens/s, first token {:.0} ms, {:.1} dispatches/token, stop: {}",
            s.strategy, s.generated_tokens, s.elapsed_ms, s.tokens_per_second, s.time_to_first_token_ms, s.dispatches_per_token, s.stop_reason
        );
    }
    Ok(())
}

fn run_logits(args: LogitsArgs) -> Result<()> {
    let mut model = load(&args.model)?;
    let prompt = model.tokenizer.encode(&args.prompt)?;
    if prompt.is_empty() {
        return Err(Error::Invalid("the prompt encodes to no tokens".into()));
    }
    let layers = model.engine.config().num_hidden_layers;
    let call = Call::new(Input::Tokens(&prompt), 0, 0..layers).head(Head::Lens);
    let exits = pollster::block_on(model.engine.run(&[call]))?
        .remove(0)
        .logits;
    let top = |logits: &[f32], k: usize| -> Vec<(usize, f32)> {
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        idx.into_iter().take(k).map(|i| (i, logits[i])).collect()
    };
    if args.json {
        let exits: Vec<_> = exits
            .iter()
            .enumerate()
            .map(|(l, logits)| match args.top {
                Some(k) => json!({"layer": l + 1, "top": top(logits, k)}),
                None => json!({"layer": l + 1, "logits": logits}),
            })
            .collect();
        println!("{}", json!({"prompt_tokens": prompt, "exits": exits}));
        return Ok(());
    }
    let k = args.top.unwrap_or(5);
    println!(
        "logit lens at the last prompt position ({} tokens), top {k} per exit layer:",
        prompt.len()
    );
    for (l, logits) in exits.iter().enumerate() {
        let cells: Vec<String> = top(logits, k)
            .into_iter()
            .map(|(id, logit)| {
                format!(
                    "{:>12} {logit:7.3}",
                    format!("{:?}", model.tokenizer.token_text(id as u32))
                )
            })
            .collect();
        println!("layer {:>3}: {}", l + 1, cells.join(" | "));
    }
    Ok(())
}

fn run_info(args: ModelArgs) -> Result<()> {
    let model = load(&args)?;
    let c = model.engine.config();
    println!(
        "layers {}  hidden {}  intermediate {}  heads {}  kv heads {}  head_dim {}",
        c.num_hidden_layers,
        c.hidden_size,
        c.intermediate_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim
    );
    println!(
        "vocab {}  max positions {}  tied embeddings {}  rope theta {}  rope scaling {:?}",
        c.vocab_size,
        c.max_position_embeddings,
        c.tie_word_embeddings,
        c.rope_theta,
        c.rope_scaling
    );
    println!(
        "dtype {}  parameters {}  eos ids {:?}",
        c.dtype.as_deref().unwrap_or("?"),
        c.parameter_count(),
        model.eos_token_ids
    );
    match &model.engine {
        AnyEngine::Gpu(m) => {
            let ctx = m.context();
            println!(
                "adapter {} ({:?}, {:?}, driver {})",
                ctx.info.name, ctx.info.backend, ctx.info.device_type, ctx.info.driver_info
            );
            let (matrices, blocks) = m.row_blocks();
            println!("weights on GPU {} bytes in {matrices} matrices, {blocks} row blocks  KV cache {} bytes ({} positions)",
                     m.weight_bytes(), m.kv_bytes(), m.max_context());
            println!("limits: max_storage_buffer_binding_size {}  max_buffer_size {}  max_compute_workgroups_per_dimension {}  max_compute_invocations_per_workgroup {}",
                     ctx.limits.max_storage_buffer_binding_size, ctx.limits.max_buffer_size,
                     ctx.limits.max_compute_workgroups_per_dimension, ctx.limits.max_compute_invocations_per_workgroup);
        }
        AnyEngine::Cpu(m) => println!("device cpu (f32 reference), {} positions", m.max_context()),
    }
    Ok(())
}
