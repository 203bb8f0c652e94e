//! The plain CPU implementation of the Llama forward pass, in f32 and written to be obviously
//! right: the test oracle for every kernel, and `--device cpu` on machines without an adapter.

use crate::checkpoint::{Checkpoint, Progress};
use crate::config::Config;
use crate::engine::{Call, Counters, Engine, Head, Input, Output, Pick};
use crate::error::{Error, Result};
use crate::files::Files;
use crate::format::{Format, KvFormat, Packed};
use crate::llama::{LoadReport, Store, Weights};
use crate::model::LoadOptions;

/// A matrix as the reference keeps it: dequantized to f32, row-major, no padding.
pub struct Dense {
    pub rows: usize,
    pub cols: usize,
    pub values: Vec<f32>,
    /// The format it was loaded from (kept for reporting).
    pub format: Format,
}

/// Weights in f32: the reference computes everything in f32 on dequantized weights, which is
/// what every kernel is compared against.
struct DenseStore;

impl Store for DenseStore {
    type Matrix = Dense;
    type Vector = Vec<f32>;
    fn matrix(&mut self, _: &str, format: Format, rows: usize, cols: usize) -> Result<Dense> {
        Ok(Dense {
            rows,
            cols,
            values: vec![0.0; rows * cols],
            format,
        })
    }
    fn write(&mut self, m: &mut Dense, row0: usize, rows: &Packed) -> Result<()> {
        let n = rows.data.len() / m.format.row_data_bytes(m.cols);
        let values = m.format.unpack(rows, n, m.cols);
        m.values[row0 * m.cols..(row0 + n) * m.cols].copy_from_slice(&values);
        Ok(())
    }
    fn vector(&mut self, _: &str, values: &[f32]) -> Result<Vec<f32>> {
        Ok(values.to_vec())
    }
}

pub struct CpuModel {
    config: Config,
    weights: Weights<Dense, Vec<f32>>,
    /// Keys and values per layer, [position][kv head][head_dim], stored as `kv_format` rounds them.
    k_cache: Vec<Vec<f32>>,
    v_cache: Vec<Vec<f32>>,
    kv_format: KvFormat,
    inv_freq: Vec<f32>,
    max_context: usize,
    max_rows: usize,
    /// Hidden rows of the current block.
    x: Vec<f32>,
    exit_cache: Vec<f32>,
    calls: u64,
    report: LoadReport,
    plan: crate::plan::MemoryPlan,
}

/// y[t, r] = sum_k x[t, k] w[r, k]
pub fn matmul(x: &[f32], w: &[f32], k: usize) -> Vec<f32> {
    x.chunks(k)
        .flat_map(|xt| {
            w.chunks(k)
                .map(move |wr| xt.iter().zip(wr).map(|(a, b)| a * b).sum::<f32>())
        })
        .collect()
}

/// The SwiGLU activation: silu(gate) * up.
pub fn swiglu(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter()
        .zip(up)
        .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
        .collect()
}

pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let h = weight.len();
    x.chunks(h)
        .flat_map(|row| {
            let inv = 1.0 / (row.iter().map(|v| v * v).sum::<f32>() / h as f32 + eps).sqrt();
            row.iter().zip(weight).map(move |(v, w)| v * inv * w)
        })
        .collect()
}

/// cos and sin of the rotary angle, with the angle rounded to f32 as transformers computes it.
pub fn rope_cos_sin(pos: usize, inv_freq: f32) -> (f32, f32) {
    let angle = (pos as f32 * inv_freq) as f64;
    (angle.cos() as f32, angle.sin() as f32)
}

fn rotate(head: &mut [f32], pos: usize, inv_freq: &[f32]) {
    let half = head.len() / 2;
    for i in 0..half {
        let (c, s) = rope_cos_sin(pos, inv_freq[i]);
        let (a, b) = (head[i], head[i + half]);
        head[i] = a * c - b * s;
        head[i + half] = b * c + a * s;
    }
}

/// Causal attention of `n` query rows (`nh` heads each) at positions pos0.. over a KV cache laid
/// out as [position][kv head][head_dim].
pub fn attention(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    pos0: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
) -> Vec<f32> {
    let n = q.len() / (nh * hd);
    let mut out = vec![0.0; q.len()];
    let scale = 1.0 / (hd as f32).sqrt();
    for t in 0..n {
        for head in 0..nh {
            let kvh = head / (nh / nkv);
            let qh = &q[(t * nh + head) * hd..][..hd];
            let scores: Vec<f32> = (0..pos0 + t + 1)
                .map(|j| {
                    let kj = &k_cache[(j * nkv + kvh) * hd..][..hd];
                    qh.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale
                })
                .collect();
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let weights: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f32 = weights.iter().sum();
            let o = &mut out[(t * nh + head) * hd..][..hd];
            for (j, w) in weights.iter().enumerate() {
                let vj = &v_cache[(j * nkv + kvh) * hd..][..hd];
                for d in 0..hd {
                    o[d] += w / total * vj[d];
                }
            }
        }
    }
    out
}

/// Rotates every head of `rows` (each `heads` heads of `hd`) for positions pos0.. in place.
pub fn rope(rows: &mut [f32], heads: usize, hd: usize, pos0: usize, inv_freq: &[f32]) {
    for (t, row) in rows.chunks_mut(heads * hd).enumerate() {
        for head in row.chunks_mut(hd) {
            rotate(head, pos0 + t, inv_freq);
        }
    }
}

pub fn pick(logits: &[f32]) -> Pick {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    let top = logits[best];
    Pick {
        token: best as u32,
        sum_exp: logits.iter().map(|v| (v - top).exp()).sum(),
    }
}

impl CpuModel {
    pub async fn load(
        checkpoint: &Checkpoint,
        files: &impl Files,
        options: &LoadOptions,
        progress: impl FnMut(Progress),
    ) -> Result<Self> {
        let config = checkpoint.config.clone();
        let max_context = options.max_context.min(config.max_position_embeddings);
        // f32 copies of every weight and the KV cache, checked before anything is allocated.
        let specs = crate::llama::matrix_specs(&config);
        let formats = crate::llama::matrix_formats(checkpoint, &specs, options.quantize)?;
        let plan = crate::plan::MemoryPlan::new(
            &config,
            &specs,
            &formats,
            Some(Format::F32),
            max_context,
            KvFormat::F32,
            crate::plan::Blocks {
                rows: 64,
                picks: 64,
            },
            options.staging_bytes,
        )?;
        plan.check_host("try a smaller --max-context")?;
        let kv_len = max_context
            .checked_mul(config.kv_dim())
            .ok_or_else(|| Error::Invalid("the KV cache size overflows".into()))?;
        let (weights, report) = crate::llama::load(
            checkpoint,
            files,
            options.quantize,
            options.staging_bytes,
            &mut DenseStore,
            progress,
        )
        .await?;
        let layers = config.num_hidden_layers;
        Ok(Self {
            inv_freq: config.rope_inv_freq(),
            weights,
            k_cache: vec![vec![0.0; kv_len]; layers],
            v_cache: vec![vec![0.0; kv_len]; layers],
            kv_format: options.kv_cache,
            max_context,
            max_rows: 64,
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

    fn layer(&mut self, l: usize, pos0: usize) {
        let c = &self.config;
        let (h, hd, nh, nkv) = (
            c.hidden_size,
            c.head_dim,
            c.num_attention_heads,
            c.num_key_value_heads,
        );
        let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());
        let inv_freq = &self.inv_freq;
        let w = &self.weights.layers[l];
        let n = self.x.len() / h;

        let xn = rms_norm(&self.x, &w.input_norm, c.rms_norm_eps);
        let qkv = matmul(&xn, &w.qkv.values, h);
        let width = q_dim + 2 * kv_dim;
        let mut q: Vec<f32> = qkv
            .chunks(width)
            .flat_map(|r| r[..q_dim].to_vec())
            .collect();
        let mut k: Vec<f32> = qkv
            .chunks(width)
            .flat_map(|r| r[q_dim..q_dim + kv_dim].to_vec())
            .collect();
        let v: Vec<f32> = qkv
            .chunks(width)
            .flat_map(|r| r[q_dim + kv_dim..].to_vec())
            .collect();
        rope(&mut q, nh, hd, pos0, inv_freq);
        rope(&mut k, nkv, hd, pos0, inv_freq);
        let round = |x: &f32| self.kv_format.round(*x);
        let (k_cache, v_cache) = (&mut self.k_cache[l], &mut self.v_cache[l]);
        for t in 0..n {
            let at = (pos0 + t) * kv_dim;
            let rows = t * kv_dim..(t + 1) * kv_dim;
            for (dst, src) in k_cache[at..at + kv_dim].iter_mut().zip(&k[rows.clone()]) {
                *dst = round(src);
            }
            for (dst, src) in v_cache[at..at + kv_dim].iter_mut().zip(&v[rows]) {
                *dst = round(src);
            }
        }

        let attn = attention(&q, k_cache, v_cache, pos0, nh, nkv, hd);
        for (x, o) in self.x.iter_mut().zip(matmul(&attn, &w.o.values, q_dim)) {
            *x += o;
        }

        let xn = rms_norm(&self.x, &w.post_norm, c.rms_norm_eps);
        let i = c.intermediate_size;
        let gate_up = matmul(&xn, &w.gate_up.values, h);
        let act: Vec<f32> = gate_up
            .chunks(2 * i)
            .flat_map(|r| swiglu(&r[..i], &r[i..]))
            .collect();
        for (x, d) in self.x.iter_mut().zip(matmul(&act, &w.down.values, i)) {
            *x += d;
        }
    }

    /// Exit-head logits of hidden rows.
    fn logits(&self, rows: &[f32]) -> Vec<f32> {
        let xn = rms_norm(rows, &self.weights.final_norm, self.config.rms_norm_eps);
        matmul(&xn, &self.weights.head().values, self.config.hidden_size)
    }

    fn last_row(&self) -> &[f32] {
        &self.x[self.x.len() - self.config.hidden_size..]
    }
}

impl Engine for CpuModel {
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

    async fn run(&mut self, calls: &[Call<'_>]) -> Result<Vec<Output>> {
        let outputs = self.run_calls(calls)?;
        crate::engine::check_finite(calls, &outputs)?;
        Ok(outputs)
    }
}

impl CpuModel {
    fn run_calls(&mut self, calls: &[Call<'_>]) -> Result<Vec<Output>> {
        self.calls += 1;
        let h = self.config.hidden_size;
        let v = self.config.vocab_size;
        let mut outputs: Vec<Output> = Vec::with_capacity(calls.len());
        for call in calls {
            crate::engine::validate(call, &self.config, self.max_context, self.max_rows)?;
        }
        for call in calls {
            let embed = |ids: &[u32], x: &mut Vec<f32>| {
                x.clear();
                for &id in ids {
                    x.extend_from_slice(&self.weights.embed.values[id as usize * h..][..h]);
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
            for l in call.layers.clone() {
                self.layer(l, call.pos0);
                if call.head == Head::Lens {
                    lens.push(self.logits(self.last_row()));
                }
            }
            if let Some(row) = call.save {
                let end = (row * h + self.x.len()).max(self.exit_cache.len());
                self.exit_cache.resize(end, 0.0);
                self.exit_cache[row * h..row * h + self.x.len()].copy_from_slice(&self.x);
            }
            let rows: Vec<Vec<f32>> = match call.head {
                Head::None | Head::Lens => vec![],
                Head::Last => vec![self.logits(self.last_row())],
                Head::All => self
                    .logits(&self.x)
                    .chunks(v)
                    .map(<[f32]>::to_vec)
                    .collect(),
            };
            outputs.push(Output {
                picks: rows.iter().map(|r| pick(r)).collect(),
                logits: if call.head == Head::Lens {
                    lens
                } else if call.logits {
                    rows
                } else {
                    vec![]
                },
            });
        }
        Ok(outputs)
    }
}
