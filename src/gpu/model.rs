//! The Llama model on the GPU: weights uploaded once, activations allocated once, and every layer an
//! explicit list of ops over those buffers. `run` records a whole batch of calls (embedding, layer
//! ranges, exit-query cache copies, exit heads) into one command encoder and one submit, and reads
//! back only token picks (8 bytes a row) or, for the logit lens, the requested logits.

use super::context::GpuContext;
use super::context::Tuning;
use super::kernels::{Kernel, Kernels, Op, STEP_STRIDE};
use super::kv_cache::KvCache;
use super::ops;
use super::tensor::{Block, Matrix};
use crate::checkpoint::{Checkpoint, Progress};
use crate::config::{rope_cos_sin, Config};
use crate::engine::{
    self, Backend, Call, Counters, Engine, EngineOptions, Head, Input, OpKind, Output, Pick, Stage,
};
use crate::error::{Error, Result};
use crate::files::Files;
use crate::format::{groups, Layout, Packed};
use crate::llama::{self, LayerWeights, LoadReport, Store, Weights};
use crate::plan::{Blocks, MemoryPlan};
use std::collections::BTreeMap;

/// Rows one forward block holds: prompts are fed in chunks of this many tokens.
pub const BLOCK_ROWS: usize = 128;
/// Rows the exit head and the exit-query cache take at once: a verification block (drafts + 1),
/// the rows of `Head::All`.
pub const HEAD_ROWS: usize = 32;
/// Blocks of at most this many rows multiply with the mat-vec kernel (bound by weight reads);
/// larger ones with the tiled kernel (bound by arithmetic), and split attention over the keys
/// only pays for such small blocks.
pub const MATVEC_MAX_ROWS: usize = 8;
/// Step-parameter slots, picks and chained tokens one `run` may use.
const SLOTS: usize = 1024;
const MAX_PICKS: usize = 256;
/// Most key ranges split attention uses per (token, head).
const MAX_SPLITS: usize = 32;

/// A matrix product by both kernels, one op per row block of the matrix.
struct MatMul {
    matvec: Vec<Op>,
    gemm: Vec<Op>,
}

/// The reduced draft head's dispatches: its product (logits rows as wide as the draft
/// vocabulary) and an argmax that maps indices to token ids.
struct DraftOps {
    head: MatMul,
    argmax: Op,
}

impl MatMul {
    fn ops(&self, rows: u32) -> &[Op] {
        match rows as usize <= MATVEC_MAX_ROWS {
            true => &self.matvec,
            false => &self.gemm,
        }
    }
}

/// One decoder layer's dispatches.
struct LayerOps {
    input_norm: Op,
    qkv: MatMul,
    rope: Op,
    attention: Op,
    /// Attention split over ranges of keys, then merged.
    attention_split: [Op; 2],
    o: MatMul,
    post_norm: Op,
    gate_up: MatMul,
    down: MatMul,
}

/// Activation buffers, sized by the memory plan: a prompt chunk of rows (an exit-head block for
/// the exit head's).
struct Activations {
    step: wgpu::Buffer,
    tokens: wgpu::Buffer,
    x: wgpu::Buffer,
    xn: wgpu::Buffer,
    qkv: wgpu::Buffer,
    attn: wgpu::Buffer,
    gate_up: wgpu::Buffer,
    logits: wgpu::Buffer,
    picks: wgpu::Buffer,
    /// Logits rows to read back: the logit lens, or head rows wanted for host-side sampling.
    out_logits: wgpu::Buffer,
    exit_cache: wgpu::Buffer,
    rope: wgpu::Buffer,
    /// Split attention's per-range partial results.
    attention_parts: wgpu::Buffer,
}

pub struct GpuModel {
    ctx: GpuContext,
    config: Config,
    max_context: usize,
    weights: Weights<Matrix, wgpu::Buffer>,
    plan: MemoryPlan,
    report: LoadReport,
    kv: KvCache,
    buf: Activations,
    embed: Vec<Op>,
    layers: Vec<LayerOps>,
    final_norm: Op,
    head: MatMul,
    argmax: Op,
    /// The reduced draft head, when the model has a draft vocabulary.
    draft: Option<DraftOps>,
    /// Keys per range of split attention.
    attention_chunk: usize,
    /// Rows per prompt chunk and per exit-head block, as the memory plan sized them.
    blocks: Blocks,
    counters: Counters,
    /// GPU nanoseconds and dispatches per kind of op, while profiling.
    profile: Option<BTreeMap<Option<OpKind>, (f64, u64)>>,
}

/// Parameters of one step slot; mirrors `struct Step` in shaders/common.wgsl.
#[derive(Clone, Copy, Default)]
struct Step {
    n_tokens: u32,
    pos0: u32,
    row0: u32,
    tok0: u32,
    out0: u32,
}

/// Everything one `run` records before it submits.
struct Recording {
    encoder: wgpu::CommandEncoder,
    steps: Vec<Step>,
    dispatches: u64,
    /// With `bench --profile`: timestamps around each dispatch.
    timing: Option<Timing>,
}

/// Timestamp queries before and after each dispatch of one run, and what each dispatch was.
struct Timing {
    queries: wgpu::QuerySet,
    kinds: Vec<Option<OpKind>>,
}

/// Dispatches one run may time (two queries each, within wgpu's 4096 per query set).
const TIMED_DISPATCHES: usize = 2048;

impl Recording {
    fn slot(&mut self, step: Step) -> Result<u32> {
        if self.steps.len() == SLOTS {
            return Err(Error::Invalid(format!(
                "more than {SLOTS} forward blocks in one run"
            )));
        }
        self.steps.push(step);
        Ok(((self.steps.len() - 1) as u64 * STEP_STRIDE) as u32)
    }

    fn pass(&mut self, ops: &[&Op], slot: u32, step: Step, max_dim: u32) {
        self.dispatches += ops.len() as u64;
        if let Some(timing) = &mut self.timing {
            // One pass per dispatch, timestamped at its start and end (passes are the
            // granularity wgpu times without an extra feature).
            for op in ops {
                let i = timing.kinds.len() as u32;
                let writes = (timing.kinds.len() < TIMED_DISPATCHES).then(|| {
                    wgpu::ComputePassTimestampWrites {
                        query_set: &timing.queries,
                        beginning_of_pass_write_index: Some(2 * i),
                        end_of_pass_write_index: Some(2 * i + 1),
                    }
                });
                if writes.is_some() {
                    timing.kinds.push(op.kind());
                }
                let mut pass = self
                    .encoder
                    .begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: None,
                        timestamp_writes: writes,
                    });
                op.encode(&mut pass, slot, step.n_tokens, step.pos0, max_dim);
            }
            return;
        }
        let mut pass = self
            .encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor::default());
        for op in ops {
            op.encode(&mut pass, slot, step.n_tokens, step.pos0, max_dim);
        }
    }
}

/// Weights in GPU buffers. Uploads are flushed to the GPU (and, natively, waited for) whenever
/// the staging budget's worth is pending, so wgpu's own staging copies stay bounded too.
struct GpuStore<'a> {
    ctx: &'a GpuContext,
    pending: usize,
    budget: usize,
}

impl GpuStore<'_> {
    fn flush(&mut self) -> Result<()> {
        self.ctx.queue.submit([]);
        #[cfg(not(target_arch = "wasm32"))]
        self.ctx
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("uploading weights: {e}")))?;
        self.pending = 0;
        self.ctx.check()
    }
}

impl Store for GpuStore<'_> {
    type Matrix = Matrix;
    type Vector = wgpu::Buffer;
    fn matrix(&mut self, name: &str, layout: &Layout) -> Result<Matrix> {
        Matrix::new(self.ctx, name, layout)
    }
    fn write(&mut self, m: &mut Matrix, row0: usize, rows: &Packed) -> Result<()> {
        m.write_rows(&self.ctx.queue, row0, rows);
        self.pending += rows.bytes();
        if self.pending >= self.budget {
            self.flush()?;
        }
        Ok(())
    }
    fn vector(&mut self, name: &str, values: &[f32]) -> Result<wgpu::Buffer> {
        let buffer =
            self.ctx
                .storage(name, (values.len() * 4) as u64, wgpu::BufferUsages::empty())?;
        self.ctx
            .queue
            .write_buffer(&buffer, 0, bytemuck::cast_slice(values));
        Ok(buffer)
    }
}

/// cos and sin per (position, pair), computed on the host in the precision transformers uses,
/// written a block of positions at a time so the host never holds the whole table.
fn rope_table(ctx: &GpuContext, config: &Config, positions: usize) -> Result<wgpu::Buffer> {
    let pairs = config.head_dim / 2;
    let bytes = (positions as u64)
        .checked_mul(pairs as u64 * 8)
        .ok_or_else(|| Error::Invalid("the rope table size overflows".into()))?;
    let buffer = ctx.storage("rope", bytes, wgpu::BufferUsages::empty())?;
    let inv_freq = config.rope_inv_freq();
    const BLOCK: usize = 4096;
    for pos0 in (0..positions).step_by(BLOCK) {
        let table: Vec<f32> = (pos0..positions.min(pos0 + BLOCK))
            .flat_map(|pos| {
                inv_freq.iter().flat_map(move |&f| {
                    let (c, s) = rope_cos_sin(pos, f);
                    [c, s]
                })
            })
            .collect();
        ctx.queue.write_buffer(
            &buffer,
            (pos0 * pairs * 8) as u64,
            bytemuck::cast_slice(&table),
        );
    }
    Ok(buffer)
}

impl Activations {
    /// The buffers for blocks of `blocks.rows` rows (`blocks.head_rows` through the exit head),
    /// a KV cache of `max_context` positions and split attention over `split` ranges.
    fn new(
        ctx: &GpuContext,
        config: &Config,
        blocks: Blocks,
        max_context: usize,
        split: ops::Split,
    ) -> Result<Self> {
        let (h, i, v) = (
            config.hidden_size,
            config.intermediate_size,
            config.vocab_size,
        );
        let act = |name: &str, floats: usize| {
            ctx.storage(name, (floats * 4) as u64, wgpu::BufferUsages::COPY_SRC)
        };
        Ok(Activations {
            step: ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("step"),
                size: SLOTS as u64 * STEP_STRIDE,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            tokens: act("tokens", max_context + MAX_PICKS)?,
            x: act("x", blocks.rows * h)?,
            xn: act("xn", blocks.rows * h)?,
            qkv: act("qkv", blocks.rows * (config.q_dim() + 2 * config.kv_dim()))?,
            attn: act("attn", blocks.rows * config.q_dim())?,
            gate_up: act("gate_up", blocks.rows * 2 * i)?,
            logits: act("logits", blocks.head_rows * v)?,
            picks: act("picks", MAX_PICKS * 2)?,
            out_logits: act(
                "out_logits",
                (config.num_hidden_layers + blocks.head_rows) * v,
            )?,
            exit_cache: act("exit_cache", blocks.head_rows * h)?,
            rope: rope_table(ctx, config, max_context)?,
            attention_parts: act(
                "attention_parts",
                MATVEC_MAX_ROWS * config.num_attention_heads * split.splits * (config.head_dim + 2),
            )?,
        })
    }
}

/// Builds the model's ops over its activation buffers, each from its constructor in `ops.rs`.
struct OpBuilder<'a> {
    kernels: Kernels,
    buf: &'a Activations,
    config: &'a Config,
    attention: ops::Attention,
    split: ops::Split,
    tuning: Tuning,
}

impl OpBuilder<'_> {
    fn op(
        &mut self,
        kind: OpKind,
        kernel: &Kernel,
        buffers: &[&wgpu::Buffer],
        weights: Option<&Block>,
    ) -> Op {
        self.kernels
            .op(kernel, &self.buf.step, buffers, weights)
            .labeled(kind)
    }

    fn norm(&mut self, weight: &wgpu::Buffer) -> Op {
        let kernel = ops::rms_norm(self.config.hidden_size, self.config.rms_norm_eps);
        let buf = self.buf;
        self.op(OpKind::Norm, &kernel, &[&buf.x, weight, &buf.xn], None)
    }

    /// `m` times the rows of `x` into `y`, by both kernels, one op per row block of `m`.
    fn matmul(
        &mut self,
        kind: OpKind,
        m: &Matrix,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        variant: ops::Variant,
    ) -> MatMul {
        let matvec = ops::Product::Matvec {
            workgroup_size: self.tuning.workgroup_size,
            shape: self.tuning.matvec(groups(m.cols)),
        };
        let mut by = |product: ops::Product| -> Vec<Op> {
            m.blocks
                .iter()
                .map(|b| {
                    let kernel = ops::product(product, variant, m.cols, m.rows, b);
                    self.op(kind, &kernel, &[x, y], Some(b))
                })
                .collect()
        };
        MatMul {
            matvec: by(matvec),
            gemm: by(ops::Product::Gemm),
        }
    }

    fn layer(
        &mut self,
        w: &LayerWeights<Matrix, wgpu::Buffer>,
        keys: &wgpu::Buffer,
        values: &wgpu::Buffer,
    ) -> LayerOps {
        let (a, split, buf) = (self.attention, self.split, self.buf);
        let accumulate = ops::Variant {
            accumulate: true,
            ..ops::Variant::default()
        };
        LayerOps {
            input_norm: self.norm(&w.input_norm),
            qkv: self.matmul(OpKind::Qkv, &w.qkv, &buf.xn, &buf.qkv, Default::default()),
            rope: self.op(
                OpKind::Rope,
                &ops::rope(&a),
                &[&buf.qkv, &buf.rope, keys, values],
                None,
            ),
            attention: self.op(
                OpKind::Attention,
                &ops::attention(&a),
                &[&buf.qkv, keys, values, &buf.attn],
                None,
            ),
            attention_split: [
                self.op(
                    OpKind::Attention,
                    &ops::attention_split(&a, split),
                    &[&buf.qkv, keys, values, &buf.attention_parts],
                    None,
                ),
                self.op(
                    OpKind::Attention,
                    &ops::attention_merge(&a, split),
                    &[&buf.attention_parts, &buf.attn],
                    None,
                ),
            ],
            o: self.matmul(OpKind::O, &w.o, &buf.attn, &buf.x, accumulate),
            post_norm: self.norm(&w.post_norm),
            gate_up: self.matmul(
                OpKind::GateUp,
                &w.gate_up,
                &buf.xn,
                &buf.gate_up,
                Default::default(),
            ),
            down: self.matmul(
                OpKind::Down,
                &w.down,
                &buf.gate_up,
                &buf.x,
                ops::Variant {
                    swiglu: true,
                    accumulate: true,
                },
            ),
        }
    }

    /// The exit head over `m`'s rows (the full head or the draft head's).
    fn head(&mut self, m: &Matrix) -> MatMul {
        let buf = self.buf;
        self.matmul(OpKind::Head, m, &buf.xn, &buf.logits, Default::default())
    }

    /// Picks over logits rows of `width`; with `ids`, row index i stands for token ids[i].
    fn argmax(&mut self, width: usize, ids: Option<&wgpu::Buffer>) -> Op {
        let buf = self.buf;
        let mut bound = vec![&buf.logits, &buf.picks];
        bound.extend(ids);
        self.op(
            OpKind::Argmax,
            &ops::argmax(width, ids.is_some()),
            &bound,
            None,
        )
    }

    fn embed(&mut self, m: &Matrix) -> Vec<Op> {
        let buf = self.buf;
        m.blocks
            .iter()
            .map(|b| {
                let kernel = ops::embed(self.config.hidden_size, b);
                self.op(OpKind::Embed, &kernel, &[&buf.tokens, &buf.x], Some(b))
            })
            .collect()
    }
}

impl GpuModel {
    /// Loads a checkpoint onto the GPU. The context is capped by the model's own
    /// max_position_embeddings; the memory plan is checked against the adapter before anything
    /// is allocated.
    pub async fn load(
        ctx: GpuContext,
        checkpoint: &Checkpoint,
        files: &impl Files,
        options: &EngineOptions,
        draft_ids: Option<&[u32]>,
        progress: impl FnMut(Progress),
    ) -> Result<Self> {
        let config = checkpoint.config.clone();
        let max_context = options.max_context.min(config.max_position_embeddings);
        let (specs, layouts) =
            llama::planned_matrices(checkpoint, options.quantize, draft_ids.map(<[u32]>::len))?;
        let blocks = Blocks::fitting(&config, ctx.max_binding, BLOCK_ROWS, HEAD_ROWS, MAX_PICKS);
        let plan = MemoryPlan::new(
            &config,
            &specs,
            &layouts,
            None,
            max_context,
            options.kv_cache,
            blocks,
            options.staging_bytes,
        )?;
        plan.check_gpu(&config, ctx.max_binding)?;
        let kv = KvCache::new(&ctx, &config, max_context, options.kv_cache)?;
        let mut store = GpuStore {
            ctx: &ctx,
            pending: 0,
            budget: options.staging_bytes,
        };
        let (weights, report) = llama::load(
            checkpoint,
            files,
            options.quantize,
            options.staging_bytes,
            &mut store,
            draft_ids,
            progress,
        )
        .await?;
        store.flush()?;

        // Split attention: ranges of at least 256 keys, and at most MAX_SPLITS of them.
        let chunk = max_context.div_ceil(MAX_SPLITS).max(256);
        let split = ops::Split {
            chunk,
            splits: max_context.div_ceil(chunk),
        };
        let buf = Activations::new(&ctx, &config, blocks, max_context, split)?;
        let mut b = OpBuilder {
            kernels: Kernels::new(&ctx.device),
            buf: &buf,
            config: &config,
            attention: ops::Attention::of(&config, options.kv_cache),
            split,
            tuning: ctx.tuning,
        };
        let layers = (weights.layers.iter().enumerate())
            .map(|(l, w)| b.layer(w, &kv.keys[l], &kv.values[l]))
            .collect();
        let final_norm = b.norm(&weights.final_norm);
        let head = b.head(weights.head());
        let argmax = b.argmax(config.vocab_size, None);
        let draft = match &weights.draft_head {
            None => None,
            Some(d) => {
                let ids = ctx.storage(
                    "draft_ids",
                    (d.ids.len() * 4) as u64,
                    wgpu::BufferUsages::COPY_DST,
                )?;
                ctx.queue
                    .write_buffer(&ids, 0, bytemuck::cast_slice(&d.ids));
                // The bind group keeps `ids` alive.
                Some(DraftOps {
                    head: b.head(&d.matrix),
                    argmax: b.argmax(d.ids.len(), Some(&ids)),
                })
            }
        };
        let embed = b.embed(&weights.embed);
        ctx.check()?;
        Ok(Self {
            ctx,
            config,
            max_context,
            weights,
            plan,
            report,
            kv,
            buf,
            embed,
            layers,
            final_norm,
            head,
            argmax,
            draft,
            attention_chunk: chunk,
            blocks,
            counters: Counters::default(),
            profile: None,
        })
    }

    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Starts timing every dispatch on the GPU (each then gets its own pass), or fails where the
    /// adapter has no timestamp queries.
    pub fn start_profile(&mut self) -> Result<()> {
        if !self.ctx.timestamps {
            return Err(Error::Invalid(format!(
                "{} has no timestamp queries, so GPU time cannot be measured",
                self.ctx.describe()
            )));
        }
        self.profile = Some(BTreeMap::new());
        Ok(())
    }

    /// Stops timing; GPU milliseconds and dispatches per kind of op since `start_profile`.
    pub fn take_profile(&mut self) -> Vec<(Option<OpKind>, f64, u64)> {
        self.profile
            .take()
            .unwrap_or_default()
            .into_iter()
            .map(|(kind, (ns, n))| (kind, ns / 1e6, n))
            .collect()
    }

    /// Bytes one decode step reads per kind of op with `context` positions in the KV cache:
    /// every weight once (the mat-vec kernel reads them once for up to 4 rows) and the keys and
    /// values of every layer.
    pub fn decode_bytes(&self, context: usize) -> Vec<(OpKind, u64)> {
        let c = &self.config;
        let (h, l) = (c.hidden_size as u64, c.num_hidden_layers as u64);
        let layers = |f: fn(&crate::llama::LayerWeights<Matrix, wgpu::Buffer>) -> &Matrix| {
            self.weights
                .layers
                .iter()
                .map(|w| f(w).bytes())
                .sum::<u64>()
        };
        let kv_value = self.plan.kv_format.bytes_per_value() as u64;
        let embed_row = self.weights.embed.bytes() / c.vocab_size as u64;
        vec![
            (OpKind::Embed, embed_row),
            (OpKind::Norm, (2 * l + 1) * 2 * h * 4),
            (OpKind::Qkv, layers(|w| &w.qkv)),
            (OpKind::Rope, l * (c.q_dim() + c.kv_dim()) as u64 * 4),
            (
                OpKind::Attention,
                l * 2 * context as u64 * c.kv_dim() as u64 * kv_value,
            ),
            (OpKind::O, layers(|w| &w.o)),
            (OpKind::GateUp, layers(|w| &w.gate_up)),
            (OpKind::Down, layers(|w| &w.down)),
            (OpKind::Head, self.weights.head().bytes()),
            (OpKind::Argmax, c.vocab_size as u64 * 4),
        ]
    }

    /// Weight bytes read per row of a block of `rows` rows through every layer: the mat-vec
    /// kernel passes over the weights once per 4 rows, the tiled one once per 32 (prompts are fed
    /// in chunks of the plan's block rows).
    pub fn weight_bytes_per_row(&self, rows: usize) -> f64 {
        let rows = rows.clamp(1, self.blocks.rows);
        let passes = match rows <= MATVEC_MAX_ROWS {
            true => rows.div_ceil(4),
            false => rows.div_ceil(32),
        };
        let layers: u64 = self
            .weights
            .layers
            .iter()
            .map(|w| w.qkv.bytes() + w.o.bytes() + w.gate_up.bytes() + w.down.bytes())
            .sum();
        layers as f64 * passes as f64 / rows as f64
    }

    /// Rows per prompt chunk.
    pub fn block_rows(&self) -> usize {
        self.blocks.rows
    }

    /// Bytes of weights on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        self.report.weight_bytes
    }

    pub fn plan(&self) -> &MemoryPlan {
        &self.plan
    }

    pub fn load_report(&self) -> LoadReport {
        self.report
    }

    /// Weight matrices and the row blocks they occupy (more blocks than matrices means some
    /// were larger than the binding limit and were split).
    pub fn row_blocks(&self) -> (usize, usize) {
        let matrices: Vec<&Matrix> = self.weights.matrices().collect();
        (
            matrices.len(),
            matrices.iter().map(|m| m.blocks.len()).sum(),
        )
    }

    /// Bytes of the KV cache on the GPU.
    pub fn kv_bytes(&self) -> u64 {
        self.kv.bytes()
    }

    /// The readback buffer holds a logit lens (L rows) plus one block of head rows.
    fn check_logit_rows(&self, rows: usize) -> Result<()> {
        let most = self.config.num_hidden_layers + self.blocks.head_rows;
        match rows <= most {
            true => Ok(()),
            false => Err(Error::Invalid(format!(
                "{rows} logits rows requested in one run; at most {most}"
            ))),
        }
    }

    fn max_dim(&self) -> u32 {
        self.ctx.limits.max_compute_workgroups_per_dimension
    }

    /// Layer `l`'s dispatches for a block: mat-vec or tiled products by the block's size, and
    /// attention split over the keys when a small block sees more keys than one range holds.
    fn layer_ops(&self, l: usize, step: Step) -> Vec<&Op> {
        let w = &self.layers[l];
        let n = step.n_tokens;
        let split =
            n as usize <= MATVEC_MAX_ROWS && (step.pos0 + n) as usize > self.attention_chunk;
        let mut ops = vec![&w.input_norm];
        ops.extend(w.qkv.ops(n));
        ops.push(&w.rope);
        match split {
            true => ops.extend(&w.attention_split),
            false => ops.push(&w.attention),
        }
        ops.extend(w.o.ops(n));
        ops.push(&w.post_norm);
        ops.extend(w.gate_up.ops(n));
        ops.extend(w.down.ops(n));
        ops
    }

    /// The exit head's dispatches for `rows` rows: final norm and lm_head, or (`draft`, when the
    /// model has one) the draft head; with `pick`, the argmax too.
    fn head_ops(&self, rows: u32, draft: bool, pick: bool) -> Vec<&Op> {
        let (head, argmax) = match (draft, &self.draft) {
            (true, Some(d)) => (&d.head, &d.argmax),
            _ => (&self.head, &self.argmax),
        };
        let mut ops: Vec<&Op> = [&self.final_norm]
            .into_iter()
            .chain(head.ops(rows))
            .collect();
        if pick {
            ops.push(argmax);
        }
        ops
    }

    /// Logits per row of the full or the draft head.
    fn head_width(&self, draft: bool) -> usize {
        match (draft, &self.weights.draft_head) {
            (true, Some(d)) => d.ids.len(),
            _ => self.config.vocab_size,
        }
    }

    /// Embeds and runs one block of rows through the call's stages: layers, and the exit head
    /// where the call asks for it (the logit lens: the last row's logits copied out after each
    /// layer; shadow exits: a pick for every row).
    fn record_block(
        &self,
        rec: &mut Recording,
        step: Step,
        embed: bool,
        call: &Call<'_>,
        at: &mut Cursor,
    ) -> Result<()> {
        let slot = rec.slot(step)?;
        let max_dim = self.max_dim();
        let mut ops: Vec<&Op> = vec![];
        if embed {
            ops.extend(&self.embed);
        }
        let lens_step = Step {
            n_tokens: 1,
            row0: step.n_tokens - 1,
            ..step
        };
        // The lens head's uniforms, written at its first stage (the rows it will copy out
        // checked then, for the whole call).
        let mut lens_slot = None;
        let row_bytes = (self.config.vocab_size * 4) as u64;
        for stage in call.stages() {
            match stage {
                Stage::Layer(l) => ops.extend(self.layer_ops(l, step)),
                Stage::Lens => {
                    rec.pass(&ops, slot, step, max_dim);
                    ops.clear();
                    let lens_slot = match lens_slot {
                        Some(s) => s,
                        None => {
                            self.check_logit_rows(at.logit_rows + call.layers.len())?;
                            *lens_slot.insert(rec.slot(lens_step)?)
                        }
                    };
                    let head = self.head_ops(1, false, false);
                    rec.pass(&head, lens_slot, lens_step, max_dim);
                    rec.encoder.copy_buffer_to_buffer(
                        &self.buf.logits,
                        0,
                        &self.buf.out_logits,
                        at.logit_rows as u64 * row_bytes,
                        row_bytes,
                    );
                    at.logit_rows += 1;
                }
                Stage::Shadow { draft } => {
                    rec.pass(&ops, slot, step, max_dim);
                    ops.clear();
                    let head_step = Step {
                        n_tokens: step.n_tokens,
                        out0: at.take_picks(step.n_tokens as usize)? as u32,
                        ..Step::default()
                    };
                    let head_slot = rec.slot(head_step)?;
                    let head = self.head_ops(step.n_tokens, draft, true);
                    rec.pass(&head, head_slot, head_step, max_dim);
                }
            }
        }
        rec.pass(&ops, slot, step, max_dim);
        Ok(())
    }

    /// Records one call: its input, its blocks of rows, the rows saved to the exit cache, and
    /// the exit head on the rows it picks for.
    fn record_call(
        &self,
        rec: &mut Recording,
        call: &Call<'_>,
        at: &mut Cursor,
    ) -> Result<Landing> {
        let row_bytes = (self.config.hidden_size * 4) as u64;
        let n = engine::rows(call);
        let (rows0, shadow0) = (at.logit_rows, at.picks);
        match call.input {
            Input::Tokens(ids) => {
                if at.tokens + ids.len() > self.max_context + MAX_PICKS {
                    return Err(Error::Invalid("too many tokens in one run".into()));
                }
                self.ctx.queue.write_buffer(
                    &self.buf.tokens,
                    (at.tokens * 4) as u64,
                    bytemuck::cast_slice(ids),
                );
                let rows = self.blocks.rows;
                let chunks = ids.len().div_ceil(rows);
                for c in 0..chunks {
                    let step = Step {
                        n_tokens: rows.min(ids.len() - c * rows) as u32,
                        pos0: (call.pos0 + c * rows) as u32,
                        tok0: (at.tokens + c * rows) as u32,
                        ..Step::default()
                    };
                    // Only the last chunk is looked at by a logit lens.
                    let chunk_call = Call {
                        head: if c + 1 == chunks {
                            call.head
                        } else {
                            Head::None
                        },
                        ..call.clone()
                    };
                    self.record_block(rec, step, true, &chunk_call, at)?;
                }
                at.tokens += ids.len();
            }
            Input::PreviousPick => {
                let from = at.last_pick.ok_or_else(|| {
                    Error::Invalid("PreviousPick needs a previous call with a head".into())
                })?;
                rec.encoder.copy_buffer_to_buffer(
                    &self.buf.picks,
                    from as u64 * 8,
                    &self.buf.tokens,
                    at.tokens as u64 * 4,
                    4,
                );
                let step = Step {
                    n_tokens: 1,
                    pos0: call.pos0 as u32,
                    tok0: at.tokens as u32,
                    ..Step::default()
                };
                self.record_block(rec, step, true, call, at)?;
                at.tokens += 1;
            }
            Input::ExitCache { rows } => {
                rec.encoder.copy_buffer_to_buffer(
                    &self.buf.exit_cache,
                    0,
                    &self.buf.x,
                    0,
                    rows as u64 * row_bytes,
                );
                let step = Step {
                    n_tokens: rows as u32,
                    pos0: call.pos0 as u32,
                    ..Step::default()
                };
                self.record_block(rec, step, false, call, at)?;
            }
        }
        // After the last chunk, x holds the final rows of the call.
        let tail = (n - 1) % self.blocks.rows + 1;
        if let Some(row) = call.save {
            rec.encoder.copy_buffer_to_buffer(
                &self.buf.x,
                0,
                &self.buf.exit_cache,
                row as u64 * row_bytes,
                tail as u64 * row_bytes,
            );
        }
        let head_rows = call.head_rows(tail);
        let picks = at.picks;
        if head_rows > 0 {
            let head_step = Step {
                n_tokens: head_rows as u32,
                row0: (tail - head_rows) as u32,
                out0: at.take_picks(head_rows)? as u32,
                ..Step::default()
            };
            let slot = rec.slot(head_step)?;
            let ops = self.head_ops(head_rows as u32, call.draft_vocab, true);
            rec.pass(&ops, slot, head_step, self.max_dim());
            at.last_pick = Some(at.picks - 1);
            if call.logits {
                // Rows of `width` logits, packed after the earlier calls' full-width rows.
                self.check_logit_rows(at.logit_rows + head_rows)?;
                let width = self.head_width(call.draft_vocab) as u64;
                let vocab_bytes = (self.config.vocab_size * 4) as u64;
                rec.encoder.copy_buffer_to_buffer(
                    &self.buf.logits,
                    0,
                    &self.buf.out_logits,
                    at.logit_rows as u64 * vocab_bytes,
                    head_rows as u64 * width * 4,
                );
                at.logit_rows += head_rows;
            }
        }
        Ok(Landing {
            shadow: shadow0,
            shadow_rows: if call.shadow.is_empty() { 0 } else { n },
            picks,
            head_rows,
            logits: rows0,
            logit_rows: at.logit_rows - rows0,
            logit_width: match call.head {
                Head::Lens => self.config.vocab_size,
                _ => self.head_width(call.draft_vocab),
            },
        })
    }
}

/// How far one run has filled its buffers: token ids written, picks taken, logits rows copied
/// out, and the pick a `PreviousPick` embeds.
#[derive(Default)]
struct Cursor {
    tokens: usize,
    picks: usize,
    logit_rows: usize,
    last_pick: Option<usize>,
}

impl Cursor {
    /// Takes `n` pick slots; the first one's index.
    fn take_picks(&mut self, n: usize) -> Result<usize> {
        if self.picks + n > MAX_PICKS {
            return Err(Error::Invalid(format!(
                "more than {MAX_PICKS} picks in one run"
            )));
        }
        self.picks += n;
        Ok(self.picks - n)
    }
}

/// Where one call's results land in the picks and logits buffers.
struct Landing {
    /// First shadow pick; `shadow_rows` picks per shadow exit layer.
    shadow: usize,
    shadow_rows: usize,
    picks: usize,
    head_rows: usize,
    logits: usize,
    logit_rows: usize,
    /// Logits per row (the vocabulary, or the draft vocabulary), rows at a vocabulary's stride.
    logit_width: usize,
}

impl Engine for GpuModel {
    fn config(&self) -> &Config {
        &self.config
    }
    fn max_context(&self) -> usize {
        self.max_context
    }
    fn max_rows(&self) -> usize {
        self.blocks.head_rows
    }
    fn counters(&self) -> Counters {
        self.counters
    }
    fn backend(&self) -> Backend {
        Backend::Gpu
    }
    fn draft_vocab(&self) -> Option<&[u32]> {
        self.weights.draft_head.as_ref().map(|d| d.ids.as_slice())
    }

    async fn run(&mut self, calls: &[Call<'_>]) -> Result<Vec<Output>> {
        let outputs = self.run_calls(calls).await?;
        engine::check_finite(calls, &outputs)?;
        Ok(outputs)
    }
}

impl GpuModel {
    async fn run_calls(&mut self, calls: &[Call<'_>]) -> Result<Vec<Output>> {
        self.ctx.check()?;
        // Validate everything before recording anything, so a bad request leaves no trace.
        for call in calls {
            engine::validate(call, &self.config, self.max_context, self.blocks.head_rows)?;
        }
        let mut rec = Recording {
            encoder: self.ctx.device.create_command_encoder(&Default::default()),
            steps: vec![],
            dispatches: 0,
            timing: self.profile.is_some().then(|| Timing {
                queries: self.ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("profile"),
                    ty: wgpu::QueryType::Timestamp,
                    count: 2 * TIMED_DISPATCHES as u32,
                }),
                kinds: vec![],
            }),
        };
        let mut at = Cursor::default();
        let landings = calls
            .iter()
            .map(|call| self.record_call(&mut rec, call, &mut at))
            .collect::<Result<Vec<Landing>>>()?;

        let mut bytes = vec![0u8; rec.steps.len() * STEP_STRIDE as usize];
        for (i, s) in rec.steps.iter().enumerate() {
            let words = [s.n_tokens, s.pos0, s.row0, s.tok0, s.out0];
            bytes[i * STEP_STRIDE as usize..][..20].copy_from_slice(bytemuck::cast_slice(&words));
        }
        self.ctx.queue.write_buffer(&self.buf.step, 0, &bytes);
        self.counters.submits += 1;
        self.counters.dispatches += rec.dispatches;
        let (pick_words, logit_floats) = self.submit(rec, &at).await?;

        let (v, picks) = (self.config.vocab_size, &pick_words);
        let picks = |from: usize, n: usize| -> Vec<Pick> {
            (from..from + n)
                .map(|i| Pick {
                    token: picks[2 * i],
                    sum_exp: f32::from_bits(picks[2 * i + 1]),
                })
                .collect()
        };
        Ok(landings
            .into_iter()
            .zip(calls)
            .map(|(at, call)| Output {
                picks: picks(at.picks, at.head_rows),
                logits: (0..at.logit_rows)
                    .map(|r| {
                        let from = at.logits * v + r * at.logit_width;
                        logit_floats[from..from + at.logit_width].to_vec()
                    })
                    .collect(),
                shadow: (0..call.shadow.len())
                    .map(|j| picks(at.shadow + j * at.shadow_rows, at.shadow_rows))
                    .collect(),
            })
            .collect())
    }

    /// Submits a recorded run and reads back what it filled: the picks (token, normaliser bits)
    /// and the logits rows, and with profiling on, the dispatches' timestamps into the profile.
    async fn submit(&mut self, mut rec: Recording, at: &Cursor) -> Result<(Vec<u32>, Vec<f32>)> {
        let (picks, logit_rows) = (at.picks, at.logit_rows);
        let vocab_bytes = (self.config.vocab_size * 4) as u64;
        let mut reads = vec![];
        if picks > 0 {
            reads.push((&self.buf.picks, 0, picks as u64 * 8));
        }
        if logit_rows > 0 {
            reads.push((&self.buf.out_logits, 0, logit_rows as u64 * vocab_bytes));
        }
        let timestamps = rec.timing.as_ref().map(|t| {
            let bytes = t.kinds.len() as u64 * 16;
            let resolved = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile timestamps"),
                size: bytes.max(8),
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            rec.encoder
                .resolve_query_set(&t.queries, 0..2 * t.kinds.len() as u32, &resolved, 0);
            (resolved, bytes)
        });
        if let Some((resolved, bytes)) = &timestamps {
            reads.push((resolved, 0, *bytes));
        }
        if reads.is_empty() {
            self.ctx.queue.submit([rec.encoder.finish()]);
            self.ctx.check()?;
            return Ok((vec![], vec![]));
        }
        let mut data = self.ctx.read(rec.encoder, &reads).await?;
        if let (Some(timing), Some(profile)) = (&rec.timing, &mut self.profile) {
            let ticks: Vec<u64> = data
                .pop()
                .unwrap_or_default()
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect();
            let period = self.ctx.queue.get_timestamp_period() as f64;
            for (kind, t) in timing.kinds.iter().zip(ticks.chunks_exact(2)) {
                let entry = profile.entry(*kind).or_default();
                entry.0 += t[1].saturating_sub(t[0]) as f64 * period;
                entry.1 += 1;
            }
        }
        // Readback bytes carry no alignment guarantee, so decode them rather than cast.
        let words = |bytes: &[u8]| -> Vec<u32> {
            bytes
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        };
        let pick_words = match picks > 0 {
            true => words(&data[0]),
            false => vec![],
        };
        let logit_floats = match logit_rows > 0 {
            true => words(&data[usize::from(picks > 0)])
                .into_iter()
                .map(f32::from_bits)
                .collect(),
            false => vec![],
        };
        Ok((pick_words, logit_floats))
    }
}
