//! `layerskip logits` (the logit lens) and `layerskip info`.

use super::{load, ModelArgs};
use clap::Args;
use layerskip::model::DEFAULT_LENS_TOP;
use layerskip::{DeviceInfo, Result};
use serde_json::json;

#[derive(Args)]
pub struct InfoArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct LogitsArgs {
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

pub fn logits(args: LogitsArgs) -> Result<()> {
    let mut model = load(&args.model)?;
    if args.json {
        let lens = pollster::block_on(model.lens(&args.prompt, args.top))?;
        println!("{}", json!(lens));
        return Ok(());
    }
    let k = args.top.unwrap_or(DEFAULT_LENS_TOP);
    let lens = pollster::block_on(model.lens(&args.prompt, Some(k)))?;
    println!(
        "logit lens at the last prompt position ({} tokens), top {k} per exit layer:",
        lens.prompt_tokens.len()
    );
    for exit in &lens.exits {
        let cells: Vec<String> = (exit.top.iter().flatten())
            .map(|(_, logit, text)| format!("{:>12} {logit:7.3}", format!("{text:?}")))
            .collect();
        println!("layer {:>3}: {}", exit.layer, cells.join(" | "));
    }
    Ok(())
}

pub fn info(args: InfoArgs) -> Result<()> {
    let model = load(&args.model)?;
    let info = model.info();
    if args.json {
        println!("{}", json!(info));
        return Ok(());
    }
    println!(
        "layers {}  hidden {}  intermediate {}  heads {}  kv heads {}  head_dim {}",
        info.layers,
        info.hidden_size,
        info.intermediate_size,
        info.heads,
        info.kv_heads,
        info.head_dim
    );
    println!(
        "vocab {}  max positions {}  tied embeddings {}  rope theta {}  rope scaling {}",
        info.vocab_size,
        info.max_position_embeddings,
        info.tied_embeddings,
        info.rope_theta,
        info.rope_scaling
    );
    println!("backend {} ({})", info.backend, info.backend_reason);
    if let Some(n) = info.draft_vocab {
        println!("draft vocabulary: {n} of {} token ids", info.vocab_size);
    }
    println!(
        "dtype {}  parameters {}  eos ids {:?}  default exit layer {}",
        info.dtype.as_deref().unwrap_or("?"),
        info.parameters,
        info.eos_token_ids,
        info.default_exit_layer
    );
    match info.device {
        DeviceInfo::Gpu {
            adapter,
            graphics_backend,
            device_type,
            driver,
            matrices,
            row_blocks,
            max_storage_buffer_binding_size,
            max_buffer_size,
            max_compute_workgroups_per_dimension,
            max_compute_invocations_per_workgroup,
            ..
        } => {
            println!("adapter {adapter} ({graphics_backend}, {device_type}, driver {driver})");
            println!(
                "weights on GPU {} bytes ({}) in {matrices} matrices, {row_blocks} row blocks  KV cache {} bytes ({}, {} positions)",
                info.memory.weights, info.memory.weight_format, info.memory.kv_cache,
                info.memory.kv_format, info.max_context
            );
            println!("limits: max_storage_buffer_binding_size {max_storage_buffer_binding_size}  max_buffer_size {max_buffer_size}  max_compute_workgroups_per_dimension {max_compute_workgroups_per_dimension}  max_compute_invocations_per_workgroup {max_compute_invocations_per_workgroup}");
        }
        DeviceInfo::Cpu { implementation } => {
            println!(
                "device cpu ({implementation}), {} positions",
                info.max_context
            )
        }
    }
    println!("memory plan: {}", info.memory.describe());
    println!(
        "loader peak staging {} bytes (budget {})",
        info.loader_peak_staging_bytes, info.memory.staging
    );
    Ok(())
}
