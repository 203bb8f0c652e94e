//! The fast CPU backend: weights stay in their format (f16 and bf16 widened, q8 and q4
//! dequantized group by group inside the dot product; never expanded to f32 copies), the rows
//! of each matrix are split over threads (natively; wasm runs on one thread), and a block of
//! positions (a prompt chunk, or the d + 1 rows a self-speculative round verifies) reads each
//! weight row once for all of them, so verifying d drafts costs about one pass over the weights,
//! not d + 1.

use super::{Heads, Math};
use crate::error::{Error, Result};
use crate::format::{groups, Format, Packed, GROUP};
use crate::llama::Store;
use std::sync::atomic::{AtomicU64, Ordering};

/// A matrix in its format, rows padded to whole groups (see `format.rs`), in u32 words as the GPU
/// holds it.
pub struct PackedMatrix {
    pub format: Format,
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<u32>,
    pub scales: Vec<u16>,
}

impl PackedMatrix {
    fn row_words(&self) -> usize {
        self.format.row_data_bytes(self.cols) / 4
    }

    fn row_scales(&self) -> usize {
        self.format.row_scale_bytes(self.cols) / 2
    }

    /// Row `r`'s data words and scales.
    fn row_parts(&self, r: usize) -> (&[u32], &[u16]) {
        let (dw, sh) = (self.row_words(), self.row_scales());
        (
            &self.data[r * dw..(r + 1) * dw],
            &self.scales[r * sh..(r + 1) * sh],
        )
    }

    /// sum_k w[r, k] x[t, k] for the `n` rows of `x`, added into `out[..n]`, with the widest
    /// vector instructions this CPU has (x86-64: AVX2 and FMA when present, else the SSE2
    /// baseline every x86-64 build may assume).
    fn dot_row(&self, r: usize, x: &[f32], out: &mut [f32], avx2: bool) {
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: `avx2` is true only when the CPU reported AVX2 and FMA at run time.
            return unsafe { self.dot_row_avx2(r, x, out) };
        }
        let _ = avx2;
        self.dot_row_portable(r, x, out)
    }

    /// The same code compiled for AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn dot_row_avx2(&self, r: usize, x: &[f32], out: &mut [f32]) {
        self.dot_row_portable(r, x, out)
    }

    /// Each group of the row is dequantized once and multiplied into eight running sums per row
    /// of `x`, which are added up once at the end (a horizontal sum per group would cost as much
    /// as the group).
    #[inline(always)]
    fn dot_row_portable(&self, r: usize, x: &[f32], out: &mut [f32]) {
        let (f, cols) = (self.format, self.cols);
        let (data, scales) = self.row_parts(r);
        let size = f.group_words();
        let mut lanes = [[0f32; 8]; BLOCK_ROWS];
        let lanes = &mut lanes[..out.len()];
        let mut w = [0f32; GROUP];
        for g in 0..groups(cols) {
            f.unpack_group(
                &data[g * size..(g + 1) * size],
                f.group_scale(scales, g),
                &mut w,
            );
            let k0 = g * GROUP;
            for (t, lane) in lanes.iter_mut().enumerate() {
                let xs = &x[t * cols + k0..t * cols + (k0 + GROUP).min(cols)];
                match <&[f32; GROUP]>::try_from(xs) {
                    Ok(xs) => multiply_add(lane, &w, xs),
                    // The row's last, partial group: padding weights are zero, so stop at cols.
                    Err(_) => lane[0] += xs.iter().zip(&w).map(|(a, b)| a * b).sum::<f32>(),
                }
            }
        }
        for (acc, lane) in out.iter_mut().zip(lanes.iter()) {
            *acc += lane.iter().sum::<f32>();
        }
    }
}

/// lanes[j] += sum over i of w[8i + j] x[8i + j]: eight independent sums the compiler keeps in
/// vector registers.
#[inline(always)]
fn multiply_add(lanes: &mut [f32; 8], w: &[f32; GROUP], x: &[f32; GROUP]) {
    for i in 0..GROUP / 8 {
        for j in 0..8 {
            lanes[j] += w[8 * i + j] * x[8 * i + j];
        }
    }
}

/// The most rows one block multiplies at once (the CPU engine's block size).
pub const BLOCK_ROWS: usize = 64;

/// Output rows one task computes: enough work to be worth a thread's wake-up.
const MIN_WORK_PER_TASK: usize = 1 << 16;

pub struct Fast {
    threads: usize,
    /// The CPU has AVX2 and FMA (x86-64, detected at run time).
    avx2: bool,
    /// Weight bytes read by matrix products so far (data and scales), for the byte-count tests.
    weight_bytes_read: AtomicU64,
    #[cfg(not(target_arch = "wasm32"))]
    pool: rayon::ThreadPool,
}

impl Fast {
    /// A backend on `threads` threads (default: every core; wasm: one).
    pub fn new(threads: Option<usize>) -> Result<Self> {
        if threads == Some(0) {
            return Err(Error::Invalid("--threads must be at least 1".into()));
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let threads = threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("layerskip-cpu-{i}"))
                .build()
                .map_err(|e| Error::Invalid(format!("cannot start {threads} threads: {e}")))?;
            #[cfg(target_arch = "x86_64")]
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            #[cfg(not(target_arch = "x86_64"))]
            let avx2 = false;
            Ok(Self {
                threads,
                avx2,
                pool,
                weight_bytes_read: AtomicU64::new(0),
            })
        }
        #[cfg(target_arch = "wasm32")]
        {
            let _ = threads;
            Ok(Self {
                threads: 1,
                avx2: false,
                weight_bytes_read: AtomicU64::new(0),
            })
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Weight bytes matrix products have read so far.
    pub fn weight_bytes_read(&self) -> u64 {
        self.weight_bytes_read.load(Ordering::Relaxed)
    }

    /// Runs `f` on each chunk of `out` (chunks of `chunk` items, the chunk's index passed along),
    /// spread over the threads natively.
    fn for_chunks(
        &self,
        out: &mut [f32],
        chunk: usize,
        f: impl Fn(usize, &mut [f32]) + Sync + Send,
    ) {
        #[cfg(not(target_arch = "wasm32"))]
        {
            use rayon::prelude::*;
            if self.threads > 1 && out.len() > chunk {
                self.pool.install(|| {
                    out.par_chunks_mut(chunk)
                        .enumerate()
                        .for_each(|(i, c)| f(i, c))
                });
                return;
            }
        }
        for (i, c) in out.chunks_mut(chunk.max(1)).enumerate() {
            f(i, c)
        }
    }
}

impl Store for Fast {
    type Matrix = PackedMatrix;
    type Vector = Vec<f32>;
    fn matrix(
        &mut self,
        _: &str,
        format: Format,
        rows: usize,
        cols: usize,
    ) -> Result<PackedMatrix> {
        Ok(PackedMatrix {
            format,
            rows,
            cols,
            data: vec![0; rows * format.row_data_bytes(cols) / 4],
            scales: vec![0; rows * format.row_scale_bytes(cols) / 2],
        })
    }
    fn write(&mut self, m: &mut PackedMatrix, row0: usize, rows: &Packed) -> Result<()> {
        let (words, halves) = (rows.words(), rows.halves());
        let (dw, sh) = (m.row_words(), m.row_scales());
        m.data[row0 * dw..row0 * dw + words.len()].copy_from_slice(&words);
        m.scales[row0 * sh..row0 * sh + halves.len()].copy_from_slice(&halves);
        Ok(())
    }
    fn vector(&mut self, _: &str, values: &[f32]) -> Result<Vec<f32>> {
        Ok(values.to_vec())
    }
}

impl Math for Fast {
    fn name(&self) -> String {
        format!(
            "fast, {} thread{}",
            self.threads,
            if self.threads == 1 { "" } else { "s" }
        )
    }

    fn stored_as(&self) -> Option<Format> {
        None
    }

    fn backend(&self) -> crate::model::Backend {
        crate::model::Backend::Cpu
    }

    fn matmul(&self, x: &[f32], w: &PackedMatrix) -> Vec<f32> {
        let n_all = x.len() / w.cols;
        let mut y = vec![0f32; n_all * w.rows];
        let row_bytes = w.format.row_data_bytes(w.cols) + w.format.row_scale_bytes(w.cols);
        // Blocks of up to BLOCK_ROWS rows of x; each reads every weight row once.
        for (b, xb) in x.chunks(BLOCK_ROWS * w.cols).enumerate() {
            let n = xb.len() / w.cols;
            // Row-major [weight row][x row] while computing, so each task owns a contiguous
            // range of weight rows and reads each of them once for every row of x.
            let rows_per_task = (MIN_WORK_PER_TASK / (w.cols * n).max(1)).clamp(1, w.rows);
            let mut by_row = vec![0f32; w.rows * n];
            self.for_chunks(&mut by_row, rows_per_task * n, |i, out| {
                for (j, acc) in out.chunks_mut(n).enumerate() {
                    w.dot_row(i * rows_per_task + j, xb, acc, self.avx2);
                }
            });
            self.weight_bytes_read
                .fetch_add((w.rows * row_bytes) as u64, Ordering::Relaxed);
            for (r, accs) in by_row.chunks(n).enumerate() {
                for (t, &v) in accs.iter().enumerate() {
                    y[(b * BLOCK_ROWS + t) * w.rows + r] = v;
                }
            }
        }
        y
    }

    fn row(&self, w: &PackedMatrix, r: usize) -> Vec<f32> {
        let (data, scales) = w.row_parts(r);
        let mut out = vec![0f32; w.cols];
        w.format.unpack_row(data, scales, &mut out);
        out
    }

    /// One (token, head) pair per task when the context is long enough to be worth it.
    fn attention(
        &self,
        q: &[f32],
        k_cache: &[f32],
        v_cache: &[f32],
        pos0: usize,
        heads: Heads,
    ) -> Vec<f32> {
        let Heads {
            query: nh,
            kv: nkv,
            dim: hd,
        } = heads;
        let mut out = vec![0f32; q.len()];
        let keys = pos0 + q.len() / (nh * hd);
        let per_task = (MIN_WORK_PER_TASK / (keys * hd).max(1)).max(1) * hd;
        self.for_chunks(&mut out, per_task, |i, chunk| {
            for (j, o) in chunk.chunks_mut(hd).enumerate() {
                let pair = i * per_task / hd + j;
                let (t, head) = (pair / nh, pair % nh);
                let qh = &q[(t * nh + head) * hd..][..hd];
                super::reference::attend(
                    qh,
                    k_cache,
                    v_cache,
                    pos0 + t + 1,
                    head / (nh / nkv),
                    nkv,
                    o,
                );
            }
        });
        out
    }
}
