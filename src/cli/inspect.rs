//! `layerskip logits` (the logit lens) and `layerskip info`.

use super::{load, ModelArgs};
use clap::Args;
use layerskip::sampler::top_k as top;
use layerskip::{AnyEngine, Call, Engine, Error, Head, Input, Result};
use serde_json::json;

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
    let prompt = model.tokenizer.encode(&args.prompt)?;
    if prompt.is_empty() {
        return Err(Error::Invalid("the prompt encodes to no tokens".into()));
    }
    let layers = model.engine.config().num_hidden_layers;
    let call = Call::new(Input::Tokens(&prompt), 0, 0..layers).head(Head::Lens);
    let exits = pollster::block_on(model.engine.run(&[call]))?
        .remove(0)
        .logits;
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

pub fn info(args: ModelArgs) -> Result<()> {
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
