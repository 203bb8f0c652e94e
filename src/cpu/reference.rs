//! The reference CPU backend: every weight dequantized to f32 and every operation a plain loop,
//! written to be obviously right. It is the oracle the kernel tests compare against and
//! `--device cpu-reference`.

use super::{KvRows, Math};
use crate::config::rope_cos_sin;
use crate::engine::Activations;
use crate::engine::Pick;
use crate::error::Result;
use crate::format::{Format, Layout, Packed};
use crate::llama::Store;
use std::ops::Range;

/// A matrix as the reference keeps it: dequantized to f32, row-major, no padding.
pub struct Dense {
    pub rows: usize,
    pub cols: usize,
    pub values: Vec<f32>,
    /// The formats it was loaded from.
    pub layout: Layout,
}

/// Weights in f32: the reference computes everything in f32 on dequantized weights, which is
/// what every kernel is compared against; with 8-bit activations, products with quantized
/// weights take the inputs rounded as `activations.rs` rounds them.
pub struct Reference {
    activations: Activations,
}

impl Reference {
    pub fn new(activations: Activations) -> Self {
        Reference { activations }
    }
}

impl Store for Reference {
    type Matrix = Dense;
    type Vector = Vec<f32>;
    fn matrix(&mut self, _: &str, layout: &Layout) -> Result<Dense> {
        Ok(Dense {
            rows: layout.rows,
            cols: layout.cols,
            values: vec![0.0; layout.rows * layout.cols],
            layout: layout.clone(),
        })
    }
    fn write(&mut self, m: &mut Dense, row0: usize, rows: &Packed) -> Result<()> {
        let format = m.layout.run_at(row0).map_or(Format::F32, |run| run.format);
        let n = rows.data.len() / format.row_data_bytes(m.cols);
        let values = format.unpack(rows, n, m.cols);
        m.values[row0 * m.cols..(row0 + n) * m.cols].copy_from_slice(&values);
        Ok(())
    }
    fn vector(&mut self, _: &str, values: &[f32]) -> Result<Vec<f32>> {
        Ok(values.to_vec())
    }
}

impl Math for Reference {
    fn name(&self) -> String {
        "f32 reference".into()
    }
    fn stored_as(&self) -> Option<Format> {
        Some(Format::F32)
    }
    fn backend(&self) -> crate::engine::Backend {
        crate::engine::Backend::CpuReference
    }
    fn matmul(&self, x: &[f32], w: &Dense) -> Vec<f32> {
        let quantized = w.layout.formats().iter().any(|f| f.quantized());
        if self.activations == Activations::F32 || !quantized {
            return matmul(x, &w.values, w.cols);
        }
        // Run by run: quantized rows meet the rounded inputs, float rows the inputs as they are.
        let rounded = super::activations::rounded(x, w.cols);
        let n = x.len() / w.cols;
        let mut y = vec![0f32; n * w.rows];
        for run in &w.layout.runs {
            let x = if run.format.quantized() { &rounded } else { x };
            let rows = &w.values[run.row0 * w.cols..(run.row0 + run.rows) * w.cols];
            let part = matmul(x, rows, w.cols);
            for (y, part) in y.chunks_mut(w.rows).zip(part.chunks(run.rows)) {
                y[run.row0..run.row0 + run.rows].copy_from_slice(part);
            }
        }
        y
    }
    fn row(&self, w: &Dense, r: usize) -> Vec<f32> {
        w.values[r * w.cols..(r + 1) * w.cols].to_vec()
    }
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

/// x * sigmoid(x).
#[inline]
fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// The SwiGLU activation: silu(gate) * up, element by element (an iterator, so a block's rows
/// extend one buffer).
pub fn swiglu<'a>(gate: &'a [f32], up: &'a [f32]) -> impl Iterator<Item = f32> + 'a {
    gate.iter().zip(up).map(|(&g, &u)| silu(g) * u)
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

/// The rotary embedding's (cos, sin) for a range of positions and every pair of a head. The CPU
/// model makes one for every position the cache holds at load (a forward pass would otherwise
/// take an f64 cos and sin per pair per row).
pub struct RopeTable {
    half: usize,
    first: usize,
    cos_sin: Vec<(f32, f32)>,
}

impl RopeTable {
    pub fn new(inv_freq: &[f32], positions: Range<usize>) -> Self {
        RopeTable {
            half: inv_freq.len(),
            first: positions.start,
            cos_sin: positions
                .flat_map(|pos| inv_freq.iter().map(move |&f| rope_cos_sin(pos, f)))
                .collect(),
        }
    }

    /// Rotates every head of `rows` (each `heads` heads) for positions pos0.. in place (within
    /// the table's positions).
    pub fn apply(&self, rows: &mut [f32], heads: usize, pos0: usize) {
        let half = self.half;
        for (t, row) in rows.chunks_mut(heads * 2 * half).enumerate() {
            let at = pos0 + t - self.first;
            let angles = &self.cos_sin[at * half..(at + 1) * half];
            for head in row.chunks_mut(2 * half) {
                let (low, high) = head.split_at_mut(half);
                for ((a, b), &(c, s)) in low.iter_mut().zip(high).zip(angles) {
                    (*a, *b) = (*a * c - *b * s, *b * c + *a * s);
                }
            }
        }
    }
}

/// The shape of attention: query heads, KV heads (fewer under grouped-query attention) and the
/// size of a head.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub query: usize,
    pub kv: usize,
    pub dim: usize,
}

/// Causal attention of the query rows `q` (`heads.query` heads each) at positions pos0.. over a
/// KV cache laid out as [position][kv head][head_dim].
pub fn attention(
    q: &[f32],
    k_cache: &KvRows,
    v_cache: &KvRows,
    pos0: usize,
    heads: Heads,
) -> Vec<f32> {
    let Heads {
        query: nh,
        kv: nkv,
        dim: hd,
    } = heads;
    let n = q.len() / (nh * hd);
    let mut out = vec![0.0; q.len()];
    for t in 0..n {
        for head in 0..nh {
            let at = (t * nh + head) * hd..(t * nh + head + 1) * hd;
            let kvh = head / (nh / nkv);
            attend(
                &q[at.clone()],
                k_cache,
                v_cache,
                pos0 + t + 1,
                kvh,
                nkv,
                &mut out[at],
            );
        }
    }
    out
}

/// One query head `q` over the first `keys` positions of kv head `kvh`, written into `out`.
pub fn attend(
    q: &[f32],
    k_cache: &KvRows,
    v_cache: &KvRows,
    keys: usize,
    kvh: usize,
    nkv: usize,
    out: &mut [f32],
) {
    let hd = q.len();
    let scale = 1.0 / (hd as f32).sqrt();
    let mut buf = vec![0f32; hd];
    let scores: Vec<f32> = (0..keys)
        .map(|j| {
            let kj = k_cache.read((j * nkv + kvh) * hd, &mut buf);
            q.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale
        })
        .collect();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
    let total: f32 = weights.iter().sum();
    for (j, w) in weights.iter().enumerate() {
        let vj = v_cache.read((j * nkv + kvh) * hd, &mut buf);
        for d in 0..hd {
            out[d] += w / total * vj[d];
        }
    }
}

/// Rotates every head of `rows` (each `heads` heads of `hd`) for positions pos0.. in place.
pub fn rope(rows: &mut [f32], heads: usize, hd: usize, pos0: usize, inv_freq: &[f32]) {
    let n = rows.len() / (heads * hd).max(1);
    RopeTable::new(inv_freq, pos0..pos0 + n).apply(rows, heads, pos0)
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
