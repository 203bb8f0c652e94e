//! The Llama forward pass on the CPU, written once over a matrix backend (`Math`): the plain f32
//! reference (`reference.rs`), which is the oracle every kernel is tested against, and the fast
//! backend (`fast.rs`) that keeps weights in their format, splits rows over threads and reads
//! each weight row once for a whole block of positions.

mod activations;
mod arena;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod fast;
mod operands;
#[cfg(not(target_arch = "wasm32"))]
mod pool;
pub mod reference;
#[cfg(target_arch = "x86_64")]
pub mod simd;
#[cfg(target_arch = "x86_64")]
mod vnni;

pub use fast::Fast;
pub use reference::{attention, matmul, pick, rms_norm, rope, swiglu, Heads, Reference, RopeTable};

use crate::checkpoint::{Checkpoint, Progress};
use crate::config::Config;
use crate::engine::{
    Backend, Call, Counters, Engine, EngineOptions, Head, Input, Output, Pick, Stage,
};
use crate::error::{Error, Result};
use crate::files::Files;
use crate::format::{f32_to_f16, half_to_f32, Format, KvFormat};
use crate::llama::{LoadReport, Store, Weights};
use arena::{Arena, Slice};

/// A CPU matrix backend: how weights are held and multiplied.
pub trait Math: Store<Vector = Vec<f32>, Matrix: Send> + Send {
    /// What `info` calls it.
    fn name(&self) -> String;
    fn backend(&self) -> Backend;
    /// The format weights are held in whatever they were loaded from (the reference's f32).
    fn stored_as(&self) -> Option<Format>;
    /// y[t, r] = sum_k x[t, k] W[r, k] for every row t of `x`.
    fn matmul(&self, x: &[f32], w: &Self::Matrix) -> Vec<f32>;
    /// Row `r` of `w` in f32 (the embedding lookup).
    fn row(&self, w: &Self::Matrix, r: usize) -> Vec<f32>;
    /// The argmax of a logits row and its probability (see [`pick`]).
    fn pick(&self, logits: &[f32]) -> Pick {
        pick(logits)
    }
    /// Causal attention of a block's queries over the cache (see [`attention`]).
    fn attention(
        &self,
        q: &[f32],
        k_cache: &KvRows,
        v_cache: &KvRows,
        pos0: usize,
        heads: Heads,
    ) -> Vec<f32> {
        attention(q, k_cache, v_cache, pos0, heads)
    }
}

/// One layer's keys or values, [position][kv head][head_dim], held in the KV format: f16 halves
/// the memory (and what attention reads), f32 keeps values exact.
pub enum KvRows {
    F32(Slice<f32>),
    F16(Slice<u16>),
}

impl KvRows {
    /// `len` zeros in `format`, from `arena` (where attention reads them on huge pages, as the
    /// weights).
    fn new(arena: &mut Arena, format: KvFormat, len: usize) -> Result<Self> {
        Ok(match format {
            KvFormat::F32 => KvRows::F32(arena.slice(len)?),
            KvFormat::F16 => KvRows::F16(arena.slice(len)?),
        })
    }

    /// An f32 cache holding `values`.
    pub fn f32(values: &[f32]) -> Result<Self> {
        let mut rows = Self::new(&mut Arena::default(), KvFormat::F32, values.len())?;
        rows.store(0, values);
        Ok(rows)
    }

    /// Stores `values` from element `at`, rounded to the format.
    fn store(&mut self, at: usize, values: &[f32]) {
        match self {
            KvRows::F32(v) => v[at..at + values.len()].copy_from_slice(values),
            KvRows::F16(v) => {
                for (dst, &x) in v[at..at + values.len()].iter_mut().zip(values) {
                    *dst = f32_to_f16(x);
                }
            }
        }
    }

    /// Elements held (positions x kv heads x head size, all of the context).
    pub fn elements(&self) -> usize {
        match self {
            KvRows::F32(v) => v.len(),
            KvRows::F16(v) => v.len(),
        }
    }

    /// Elements `at..at + buf.len()` as f32: a view of an f32 cache, or `buf` filled.
    #[inline]
    pub fn read<'a>(&'a self, at: usize, buf: &'a mut [f32]) -> &'a [f32] {
        match self {
            KvRows::F32(v) => &v[at..at + buf.len()],
            KvRows::F16(v) => {
                for (o, &h) in buf.iter_mut().zip(&v[at..]) {
                    *o = half_to_f32(h);
                }
                buf
            }
        }
    }
}

pub struct CpuModel<M: Math> {
    math: M,
    /// Whether products with quantized weights round the activations to 8 bits (`info` says so).
    rounds: bool,
    config: Config,
    weights: Weights<M::Matrix, Vec<f32>>,
    /// Keys and values per layer.
    k_cache: Vec<KvRows>,
    v_cache: Vec<KvRows>,
    rope: RopeTable,
    max_context: usize,
    max_rows: usize,
    /// Hidden rows of the current block.
    x: Vec<f32>,
    exit_cache: Vec<f32>,
    calls: u64,
    report: LoadReport,
    plan: crate::plan::MemoryPlan,
}

impl<M: Math> CpuModel<M> {
    pub async fn load(
        mut math: M,
        checkpoint: &Checkpoint,
        files: &impl Files,
        options: &EngineOptions,
        draft_ids: Option<&[u32]>,
        progress: impl FnMut(Progress),
    ) -> Result<Self> {
        let config = checkpoint.config.clone();
        let max_context = options.max_context.min(config.max_position_embeddings);
        // Weights as the backend holds them and the KV cache, checked before anything is
        // allocated.
        let (specs, layouts) = crate::llama::planned_matrices(
            checkpoint,
            options.quantize,
            draft_ids.map(<[u32]>::len),
        )?;
        let plan = crate::plan::MemoryPlan::new(
            &config,
            &specs,
            &layouts,
            math.stored_as(),
            max_context,
            options.kv_cache,
            crate::plan::Blocks {
                rows: fast::BLOCK_ROWS,
                head_rows: fast::BLOCK_ROWS,
                picks: fast::BLOCK_ROWS,
            },
            options.staging_bytes,
        )?;
        plan.check_host(match math.stored_as() {
            Some(_) => "try --device cpu (weights in their format) or a smaller --max-context",
            None => "try --quantize q4 or a smaller --max-context",
        })?;
        let kv_len = max_context
            .checked_mul(config.kv_dim())
            .ok_or_else(|| Error::Invalid("the KV cache size overflows".into()))?;
        let (weights, report) = crate::llama::load(
            checkpoint,
            files,
            options.quantize,
            options.staging_bytes,
            &mut math,
            draft_ids,
            progress,
        )
        .await?;
        let layers = config.num_hidden_layers;
        let mut arena = Arena::default();
        let mut caches = || {
            (0..layers)
                .map(|_| KvRows::new(&mut arena, options.kv_cache, kv_len))
                .collect::<Result<Vec<_>>>()
        };
        let (k_cache, v_cache) = (caches()?, caches()?);
        let quantized = layouts
            .iter()
            .any(|l| l.formats().iter().any(|f| f.quantized()));
        Ok(Self {
            math,
            rounds: quantized && options.activations == crate::engine::Activations::Q8,
            rope: RopeTable::new(&config.rope_inv_freq(), 0..max_context),
            weights,
            k_cache,
            v_cache,
            max_context,
            max_rows: fast::BLOCK_ROWS,
            x: vec![],
            exit_cache: vec![],
            calls: 0,
            report,
            plan,
            config,
        })
    }

    pub fn load_report(&self) -> LoadReport {
        self.report
    }

    pub fn plan(&self) -> &crate::plan::MemoryPlan {
        &self.plan
    }

    /// Bytes the KV cache holds, counted from its storage (what the plan must report).
    pub fn kv_cache_bytes(&self) -> u64 {
        self.k_cache
            .iter()
            .chain(&self.v_cache)
            .map(|rows| match rows {
                KvRows::F32(v) => 4 * v.len() as u64,
                KvRows::F16(v) => 2 * v.len() as u64,
            })
            .sum()
    }

    fn layer(&mut self, l: usize, pos0: usize) {
        let c = &self.config;
        let (hd, nh, nkv) = (c.head_dim, c.num_attention_heads, c.num_key_value_heads);
        let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());
        let w = &self.weights.layers[l];

        let xn = rms_norm(&self.x, &w.input_norm, c.rms_norm_eps);
        let qkv = self.math.matmul(&xn, &w.qkv);
        let width = q_dim + 2 * kv_dim;
        let rows = qkv.len() / width;
        let (mut q, mut k, mut v) = (
            Vec::with_capacity(rows * q_dim),
            Vec::with_capacity(rows * kv_dim),
            Vec::with_capacity(rows * kv_dim),
        );
        for r in qkv.chunks(width) {
            let (rq, rkv) = r.split_at(q_dim);
            q.extend_from_slice(rq);
            k.extend_from_slice(&rkv[..kv_dim]);
            v.extend_from_slice(&rkv[kv_dim..]);
        }
        self.rope.apply(&mut q, nh, pos0);
        self.rope.apply(&mut k, nkv, pos0);
        let (k_cache, v_cache) = (&mut self.k_cache[l], &mut self.v_cache[l]);
        k_cache.store(pos0 * kv_dim, &k);
        v_cache.store(pos0 * kv_dim, &v);

        let attn = self.math.attention(
            &q,
            k_cache,
            v_cache,
            pos0,
            Heads {
                query: nh,
                kv: nkv,
                dim: hd,
            },
        );
        for (x, o) in self.x.iter_mut().zip(self.math.matmul(&attn, &w.o)) {
            *x += o;
        }

        let xn = rms_norm(&self.x, &w.post_norm, c.rms_norm_eps);
        let i = c.intermediate_size;
        let gate_up = self.math.matmul(&xn, &w.gate_up);
        let mut act = Vec::with_capacity(gate_up.len() / 2);
        for r in gate_up.chunks(2 * i) {
            let (gate, up) = r.split_at(i);
            act.extend(swiglu(gate, up));
        }
        for (x, d) in self.x.iter_mut().zip(self.math.matmul(&act, &w.down)) {
            *x += d;
        }
    }

    /// The exit head applied to hidden rows: one logits row per hidden row and its pick, from
    /// the full head or (`draft`, when the model has one) the draft head, whose logits rows have
    /// one entry per draft id and whose picks are mapped back to token ids.
    fn exit_head(&self, rows: &[f32], draft: bool) -> (Vec<Vec<f32>>, Vec<Pick>) {
        let xn = rms_norm(rows, &self.weights.final_norm, self.config.rms_norm_eps);
        let (matrix, ids) = match (draft, &self.weights.draft_head) {
            (true, Some(d)) => (&d.matrix, Some(d.ids.as_slice())),
            _ => (self.weights.head(), None),
        };
        let width = ids.map_or(self.config.vocab_size, <[u32]>::len);
        let all = self.math.matmul(&xn, matrix);
        // One row (every decode step) is the product itself, not a copy of it.
        let logits: Vec<Vec<f32>> = match all.len() == width {
            true => vec![all],
            false => all.chunks(width).map(<[f32]>::to_vec).collect(),
        };
        let picks = logits
            .iter()
            .map(|r| {
                let p = self.math.pick(r);
                let token = ids.map_or(p.token, |ids| ids[p.token as usize]);
                Pick { token, ..p }
            })
            .collect();
        (logits, picks)
    }

    fn last_row(&self) -> &[f32] {
        &self.x[self.x.len() - self.config.hidden_size..]
    }
}

impl<M: Math> Engine for CpuModel<M> {
    fn config(&self) -> &Config {
        &self.config
    }
    fn max_context(&self) -> usize {
        self.max_context
    }
    fn max_rows(&self) -> usize {
        self.max_rows
    }
    fn counters(&self) -> Counters {
        Counters {
            submits: self.calls,
            dispatches: 0,
        }
    }
    fn backend(&self) -> Backend {
        self.math.backend()
    }
    fn draft_vocab(&self) -> Option<&[u32]> {
        self.weights.draft_head.as_ref().map(|d| d.ids.as_slice())
    }

    async fn run(&mut self, calls: &[Call<'_>]) -> Result<Vec<Output>> {
        // In a browser, a turn of the event loop between passes lets an abort or a Stop in.
        #[cfg(target_arch = "wasm32")]
        crate::event_loop::yield_now().await;
        let outputs = self.run_calls(calls)?;
        crate::engine::check_finite(calls, &outputs)?;
        Ok(outputs)
    }
}

impl<M: Math> CpuModel<M> {
    /// What `info` calls the backend.
    pub fn name(&self) -> String {
        let name = self.math.name();
        match self.rounds {
            true => format!("{name}, 8-bit activations"),
            false => name,
        }
    }

    /// The matrix backend (its counters, its threads).
    pub fn math(&self) -> &M {
        &self.math
    }

    fn run_calls(&mut self, calls: &[Call<'_>]) -> Result<Vec<Output>> {
        self.calls += 1;
        let h = self.config.hidden_size;
        let mut outputs: Vec<Output> = Vec::with_capacity(calls.len());
        for call in calls {
            crate::engine::validate(call, &self.config, self.max_context, self.max_rows)?;
        }
        for call in calls {
            let embed = |ids: &[u32], x: &mut Vec<f32>| {
                x.clear();
                for &id in ids {
                    x.extend(self.math.row(&self.weights.embed, id as usize));
                }
            };
            let mut x = std::mem::take(&mut self.x);
            match call.input {
                Input::Tokens(ids) => embed(ids, &mut x),
                Input::PreviousPick => {
                    let token = match outputs.last().and_then(|o| o.picks.last()) {
                        Some(p) => p.token,
                        None => {
                            return Err(Error::Invalid(
                                "PreviousPick needs a previous call with a head".into(),
                            ))
                        }
                    };
                    embed(&[token], &mut x)
                }
                Input::ExitCache { rows } => x = self.exit_cache[..rows * h].to_vec(),
            }
            self.x = x;
            let mut lens = vec![];
            let mut shadow = vec![];
            for stage in call.stages() {
                match stage {
                    Stage::Layer(l) => self.layer(l, call.pos0),
                    Stage::Lens => lens.extend(self.exit_head(self.last_row(), false).0),
                    Stage::Shadow { draft } => shadow.push(self.exit_head(&self.x, draft).1),
                }
            }
            if let Some(row) = call.save {
                let end = (row * h + self.x.len()).max(self.exit_cache.len());
                self.exit_cache.resize(end, 0.0);
                self.exit_cache[row * h..row * h + self.x.len()].copy_from_slice(&self.x);
            }
            let (rows, picks) = match call.head {
                Head::None | Head::Lens => (vec![], vec![]),
                Head::Last => self.exit_head(self.last_row(), call.draft_vocab),
                Head::All => self.exit_head(&self.x, call.draft_vocab),
            };
            outputs.push(Output {
                picks,
                logits: if call.head == Head::Lens {
                    lens
                } else if call.logits {
                    rows
                } else {
                    vec![]
                },
                shadow,
            });
        }
        Ok(outputs)
    }
}
