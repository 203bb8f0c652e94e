//! The fast CPU backend: weights stay in their format (f16 and bf16 widened, quantized groups
//! dequantized inside the dot product, or with 8-bit activations multiplied as integer codes;
//! never expanded to f32 copies), the rows
//! of each matrix are split over threads (natively; wasm runs on one thread), and a block of
//! positions (a prompt chunk, or the d + 1 rows a self-speculative round verifies) reads each
//! weight row once for all of them, so verifying d drafts costs about one pass over the weights,
//! not d + 1.

#[cfg(target_arch = "x86_64")]
use super::activations::Codes8;
use super::arena::{Arena, Slice};
#[cfg(target_arch = "x86_64")]
use super::operands::Inputs;
use super::operands::Sums;
#[cfg(target_arch = "x86_64")]
use super::simd::{dot_run, Isa, Kernel, RowRun, Scratch};
use super::{Heads, KvRows, Math};
use crate::engine::{Activations, Pick};

use crate::error::{Error, Result};
use crate::format::{groups, Format, Layout, Packed, GROUP};
use crate::llama::Store;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A matrix in its formats: runs of rows, each in one format, rows padded to whole groups (see
/// `format.rs`), in u32 words as the GPU holds them.
pub struct PackedMatrix {
    pub rows: usize,
    pub cols: usize,
    pub parts: Vec<Part>,
    /// Bytes of data and scales, all parts.
    bytes: u64,
}

/// A run of rows in one format.
pub struct Part {
    pub format: Format,
    pub row0: usize,
    pub rows: usize,
    pub data: Slice<u32>,
    pub scales: Slice<u16>,
}

impl Part {
    fn row_words(&self, cols: usize) -> usize {
        self.format.row_data_bytes(cols) / 4
    }

    fn row_scales(&self, cols: usize) -> usize {
        self.format.row_scale_bytes(cols) / 2
    }

    /// Row `r` (of the part)'s data words and scales.
    fn row_parts(&self, r: usize, cols: usize) -> (&[u32], &[u16]) {
        let (dw, sh) = (self.row_words(cols), self.row_scales(cols));
        (
            &self.data[r * dw..(r + 1) * dw],
            &self.scales[r * sh..(r + 1) * sh],
        )
    }
}

impl PackedMatrix {
    /// The index of the part holding row `r`, if the matrix has that row.
    fn part_index(&self, r: usize) -> Option<usize> {
        self.parts.iter().position(|p| r < p.row0 + p.rows)
    }

    /// The part holding row `r` (a row of the matrix), and the row's index in it.
    fn part(&self, r: usize) -> (&Part, usize) {
        let part = &self.parts[self.part_index(r).unwrap_or(self.parts.len() - 1)];
        (part, r - part.row0)
    }

    /// sum_k w[r, k] x[t, k] for weight rows first..first + rows and the `n` rows of a block
    /// (laid out for the register kernels in `ops`), added into `out` from its row 0: each run
    /// of rows in one part by the vector kernels (`simd::dot_run`), or row by row through the
    /// portable loop where the format has none.
    ///
    /// # Safety
    /// `out` must hold rows 0..rows of this task, and `isa` be the CPU's.
    #[cfg(target_arch = "x86_64")]
    unsafe fn dot_rows_simd(
        &self,
        first: usize,
        rows: usize,
        isa: Isa,
        ops: &Operands,
        scratch: &mut Scratch,
        out: Sums,
    ) {
        let mut j = 0;
        while j < rows {
            let (part, r) = self.part(first + j);
            let count = (part.rows - r).min(rows - j);
            let out = out.at_row(j);
            let rounded = ops.rounded.as_ref().filter(|_| part.format.quantized());
            let (inputs, codes) = match rounded {
                None => (&ops.plain, None),
                Some(Rounded::Values(values)) => (values, None),
                // Only where every quantized part has a VNNI kernel (`Fast::operands`).
                Some(Rounded::Codes(codes)) => (&ops.plain, Some(codes)),
            };
            match Kernel::of(part.format) {
                // SAFETY: the parts' rows are whole rows of their format, and the inputs were
                // laid out for this matrix's width.
                Some(kernel) => {
                    let (dw, sh) = (part.row_words(self.cols), part.row_scales(self.cols));
                    let run = RowRun {
                        data: &part.data[r * dw..(r + count) * dw],
                        scales: &part.scales[r * sh..(r + count) * sh],
                        rows: count,
                    };
                    dot_run(isa, kernel, run, inputs, codes, scratch, out);
                }
                None => {
                    let stride = inputs.groups * GROUP;
                    for k in 0..count {
                        let out = out.at_row(k);
                        self.dot_row_portable(first + j + k, &inputs.x, stride, inputs.n, out);
                    }
                }
            }
            j += count;
        }
    }

    /// The portable product of weight row `r` with the `n` rows of `x` (`stride` apart, at least
    /// the matrix width), added into `out`'s row 0 (NEON on ARM and SIMD128 in wasm where the
    /// compiler vectorizes it). Each group of the row is dequantized once and multiplied into
    /// eight running sums per row of `x`, which are added up once at the end (a horizontal sum
    /// per group would cost as much as the group).
    ///
    /// # Safety
    /// `out` must hold row 0 of this task for the `n` inputs.
    #[inline(always)]
    unsafe fn dot_row_portable(&self, r: usize, x: &[f32], stride: usize, n: usize, out: Sums) {
        let cols = self.cols;
        let (part, r) = self.part(r);
        let f = part.format;
        let (data, scales) = part.row_parts(r, cols);
        let size = f.group_words();
        let mut lanes = [[0f32; 8]; BLOCK_ROWS];
        let lanes = &mut lanes[..n];
        let mut w = [0f32; GROUP];
        for g in 0..groups(cols) {
            f.unpack_group(&data[g * size..(g + 1) * size], scales, g, &mut w);
            let k0 = g * GROUP;
            for (t, lane) in lanes.iter_mut().enumerate() {
                let xs = &x[t * stride + k0..t * stride + (k0 + GROUP).min(cols)];
                match <&[f32; GROUP]>::try_from(xs) {
                    Ok(xs) => multiply_add(lane, &w, xs),
                    // The row's last, partial group: padding weights are zero, so stop at cols.
                    Err(_) => lane[0] += xs.iter().zip(&w).map(|(a, b)| a * b).sum::<f32>(),
                }
            }
        }
        for (t, lane) in lanes.iter().enumerate() {
            out.add(0, t, lane.iter().sum::<f32>());
        }
    }
}

/// What a thread's product tasks reuse from one to the next (the vector kernels' buffers).
#[cfg(target_arch = "x86_64")]
type TaskScratch = Scratch;
#[cfg(not(target_arch = "x86_64"))]
type TaskScratch = ();

/// A block's inputs as the register kernels read them: as they are, and (8-bit activations, for
/// quantized weights) rounded: in f32 for the f32 kernels and the portable loop, and as codes
/// for the VNNI kernels where the CPU has them.
#[cfg(target_arch = "x86_64")]
struct Operands {
    plain: Inputs,
    rounded: Option<Rounded>,
}

#[cfg(target_arch = "x86_64")]
enum Rounded {
    Values(Inputs),
    Codes(Codes8),
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

/// A task's weight rows are a multiple of this, so the register kernels take them together
/// however many inputs there are.
#[cfg(target_arch = "x86_64")]
const ROW_STEP: usize = super::simd::ROWS;
#[cfg(not(target_arch = "x86_64"))]
const ROW_STEP: usize = 1;

pub struct Fast {
    threads: usize,
    /// The register kernels' instruction set, where the CPU has one (x86-64, detected at run
    /// time).
    #[cfg(target_arch = "x86_64")]
    isa: Option<Isa>,
    /// Whether 8-bit activations run on the VNNI kernels (`vnni.rs`).
    #[cfg(target_arch = "x86_64")]
    vnni: bool,
    /// How activations meet quantized weights.
    activations: Activations,
    /// Weight bytes read by matrix products so far (data and scales), for the byte-count tests.
    weight_bytes_read: AtomicU64,
    /// Where the matrices are kept.
    arena: Arena,
    #[cfg(not(target_arch = "wasm32"))]
    pool: super::pool::Pool,
}

impl Fast {
    /// A backend on `threads` threads (default: every core; wasm: one), multiplying quantized
    /// weights with `activations`.
    pub fn new(threads: Option<usize>, activations: Activations) -> Result<Self> {
        if threads == Some(0) {
            return Err(Error::Invalid("--threads must be at least 1".into()));
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let threads = threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let pool = super::pool::Pool::new(threads)
                .map_err(|e| Error::Invalid(format!("cannot start {threads} threads: {e}")))?;

            #[cfg(target_arch = "x86_64")]
            let isa = Isa::detect();
            Ok(Self {
                threads,
                #[cfg(target_arch = "x86_64")]
                isa,
                #[cfg(target_arch = "x86_64")]
                vnni: isa == Some(Isa::Avx512) && super::vnni::available(),
                activations,
                pool,
                weight_bytes_read: AtomicU64::new(0),
                arena: Arena::default(),
            })
        }
        #[cfg(target_arch = "wasm32")]
        {
            let _ = threads;
            Ok(Self {
                threads: 1,
                activations,
                weight_bytes_read: AtomicU64::new(0),
                arena: Arena::default(),
            })
        }
    }

    /// A block's inputs laid out for the register kernels, where the CPU has them; rounded too
    /// where `w` has quantized rows and activations are 8-bit.
    #[cfg(target_arch = "x86_64")]
    fn operands(&self, x: &[f32], w: &PackedMatrix) -> Option<(Isa, Operands)> {
        let isa = self.isa?;
        let plain = Inputs::new(x, w.cols);
        // Codes where every quantized part has a VNNI kernel, else rounded f32 values.
        let by_vnni = |p: &Part| Kernel::of(p.format).and_then(Kernel::bytes).is_some();
        let rounded = self.rounds(w).then(|| {
            let quantized = || w.parts.iter().filter(|p| p.format.quantized());
            if self.vnni && quantized().all(by_vnni) {
                Rounded::Codes(Codes8::new(&plain))
            } else {
                Rounded::Values(Inputs::new(&super::activations::rounded(x, w.cols), w.cols))
            }
        });
        Some((isa, Operands { plain, rounded }))
    }

    /// Whether products with `w` round the activations to 8 bits.
    fn rounds(&self, w: &PackedMatrix) -> bool {
        self.activations == Activations::Q8 && w.parts.iter().any(|p| p.format.quantized())
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Weight bytes matrix products have read so far.
    pub fn weight_bytes_read(&self) -> u64 {
        self.weight_bytes_read.load(Ordering::Relaxed)
    }

    /// Runs `f(state, i)` for each task i in 0..tasks, spread over the threads natively (see
    /// [`super::pool::Pool::for_tasks`]); each thread's tasks share one `state` (buffers reused
    /// from task to task).
    fn for_tasks<S: Default>(&self, tasks: usize, f: impl Fn(&mut S, usize) + Sync) {
        #[cfg(not(target_arch = "wasm32"))]
        if self.threads > 1 && tasks > 1 {
            return self.pool.for_tasks(tasks, f);
        }
        let mut state = S::default();
        (0..tasks).for_each(|i| f(&mut state, i))
    }

    /// Runs `f` on each chunk of `out` (chunks of `chunk` items, the chunk's index passed along),
    /// spread over the threads natively.
    fn for_chunks(&self, out: &mut [f32], chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
        // Each task locks its own chunk once (never contended): disjoint `&mut`s without unsafe.
        let chunks: Vec<Mutex<&mut [f32]>> = out.chunks_mut(chunk.max(1)).map(Mutex::new).collect();
        self.for_tasks(chunks.len(), |_: &mut (), i| {
            let mut items = chunks[i].lock().unwrap_or_else(|p| p.into_inner());
            f(i, &mut items)
        });
    }
}

impl Store for Fast {
    type Matrix = PackedMatrix;
    type Vector = Vec<f32>;
    fn matrix(&mut self, _: &str, layout: &Layout) -> Result<PackedMatrix> {
        let cols = layout.cols;
        Ok(PackedMatrix {
            rows: layout.rows,
            cols,
            parts: layout
                .runs
                .iter()
                .map(|run| {
                    Ok(Part {
                        format: run.format,
                        row0: run.row0,
                        rows: run.rows,
                        data: self
                            .arena
                            .slice(run.rows * run.format.row_data_bytes(cols) / 4)?,
                        scales: self
                            .arena
                            .slice(run.rows * run.format.row_scale_bytes(cols) / 2)?,
                    })
                })
                .collect::<Result<_>>()?,
            bytes: layout.bytes().unwrap_or(u64::MAX),
        })
    }
    fn write(&mut self, m: &mut PackedMatrix, row0: usize, rows: &Packed) -> Result<()> {
        let cols = m.cols;
        let at = m
            .part_index(row0)
            .ok_or_else(|| Error::Invalid(format!("row {row0} is past the matrix")))?;
        let part = &mut m.parts[at];
        let (words, halves) = (rows.words(), rows.halves());
        let (dw, sh) = (part.row_words(cols), part.row_scales(cols));
        let r = row0 - part.row0;
        part.data[r * dw..r * dw + words.len()].copy_from_slice(&words);
        part.scales[r * sh..r * sh + halves.len()].copy_from_slice(&halves);
        Ok(())
    }
    fn vector(&mut self, _: &str, values: &[f32]) -> Result<Vec<f32>> {
        Ok(values.to_vec())
    }
}

impl Math for Fast {
    fn name(&self) -> String {
        #[cfg(target_arch = "x86_64")]
        let isa = match (self.isa, self.vnni) {
            (Some(isa), false) => isa.name().to_string(),
            (Some(isa), true) => format!("{} VNNI", isa.name()),
            (None, _) => String::new(),
        };
        #[cfg(not(target_arch = "x86_64"))]
        let isa = String::new();
        format!(
            "fast, {} thread{}{}{isa}",
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            if isa.is_empty() { "" } else { ", " },
        )
    }

    fn stored_as(&self) -> Option<Format> {
        None
    }

    fn backend(&self) -> crate::engine::Backend {
        crate::engine::Backend::Cpu
    }

    fn matmul(&self, x: &[f32], w: &PackedMatrix) -> Vec<f32> {
        let n_all = x.len() / w.cols;
        let mut y = vec![0f32; n_all * w.rows];
        // Blocks of up to BLOCK_ROWS rows of x; each reads every weight row once.
        for (xb, yb) in x
            .chunks(BLOCK_ROWS * w.cols)
            .zip(y.chunks_mut(BLOCK_ROWS * w.rows))
        {
            let n = xb.len() / w.cols;
            // Each task owns a contiguous range of weight rows and reads each of them once for
            // every row of x, adding into its own entries of y.
            let rows_per_task = (MIN_WORK_PER_TASK / (w.cols * n).max(1))
                .max(1)
                .next_multiple_of(ROW_STEP)
                .min(w.rows);
            let out = Sums::new(yb, w.rows);
            #[cfg(target_arch = "x86_64")]
            let simd = self.operands(xb, w);
            #[cfg(target_arch = "x86_64")]
            let portable = simd.is_none();
            #[cfg(not(target_arch = "x86_64"))]
            let portable = true;
            // The portable loop's rounded inputs (8-bit activations).
            let rounded =
                (portable && self.rounds(w)).then(|| super::activations::rounded(xb, w.cols));
            self.for_tasks(
                w.rows.div_ceil(rows_per_task),
                |scratch: &mut TaskScratch, i| {
                    let first = i * rows_per_task;
                    let rows = rows_per_task.min(w.rows - first);
                    // SAFETY: the task's rows first..first + rows are within y's w.rows columns, and
                    // no other task's.
                    unsafe {
                        let out = out.at_row(first);
                        #[cfg(target_arch = "x86_64")]
                        if let Some((isa, ops)) = &simd {
                            return w.dot_rows_simd(first, rows, *isa, ops, scratch, out);
                        }
                        // The portable loop has no buffers to reuse.
                        #[cfg(not(target_arch = "x86_64"))]
                        let () = *scratch;
                        for j in 0..rows {
                            let x = match &rounded {
                                Some(rounded) if w.part(first + j).0.format.quantized() => rounded,
                                _ => xb,
                            };
                            w.dot_row_portable(first + j, x, w.cols, n, out.at_row(j));
                        }
                    }
                },
            );
            self.weight_bytes_read.fetch_add(w.bytes, Ordering::Relaxed);
        }
        y
    }

    fn row(&self, w: &PackedMatrix, r: usize) -> Vec<f32> {
        let (part, r) = w.part(r);
        let (data, scales) = part.row_parts(r, w.cols);
        let mut out = vec![0f32; w.cols];
        part.format.unpack_row(data, scales, &mut out);
        out
    }

    /// The reference's pick of each stretch of the row, over the threads, combined in order: the
    /// token is the reference's (the first index of the maximum) and the sum of exponentials
    /// differs only in rounding. A 49152-entry head row took 1.5% of a decode step on one thread
    /// while the others waited.
    fn pick(&self, logits: &[f32]) -> Pick {
        const STRETCH: usize = 1 << 13;
        if self.threads == 1 || logits.len() <= STRETCH {
            return super::pick(logits);
        }
        // Each stretch's top logit and pick.
        let parts: Vec<Mutex<(f32, Pick)>> =
            logits.chunks(STRETCH).map(|_| Mutex::default()).collect();
        self.for_tasks(parts.len(), |_: &mut (), i| {
            let stretch = &logits[i * STRETCH..][..STRETCH.min(logits.len() - i * STRETCH)];
            let p = super::pick(stretch);
            let top = stretch[p.token as usize];
            let token = (i * STRETCH) as u32 + p.token;
            *parts[i].lock().unwrap_or_else(|e| e.into_inner()) = (top, Pick { token, ..p });
        });
        let parts: Vec<(f32, Pick)> = parts
            .into_iter()
            .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
            .collect();
        let mut best = 0;
        for (k, part) in parts.iter().enumerate() {
            if part.0 > parts[best].0 {
                best = k;
            }
        }
        let top = parts[best].0;
        Pick {
            token: parts[best].1.token,
            sum_exp: parts.iter().map(|(m, p)| p.sum_exp * (m - top).exp()).sum(),
        }
    }

    /// One (token, head) pair per task when the context is long enough to be worth it.
    fn attention(
        &self,
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
        let mut out = vec![0f32; q.len()];
        let keys = pos0 + q.len() / (nh * hd);
        let per_task = (MIN_WORK_PER_TASK / (keys * hd).max(1)).max(1) * hd;
        self.for_chunks(&mut out, per_task, |i, chunk| {
            for (j, o) in chunk.chunks_mut(hd).enumerate() {
                let pair = i * per_task / hd + j;
                let (t, head) = (pair / nh, pair % nh);
                let qh = &q[(t * nh + head) * hd..][..hd];
                let (keys, kvh) = (pos0 + t + 1, head / (nh / nkv));
                #[cfg(target_arch = "x86_64")]
                if self.isa.is_some() && super::simd::fits(hd, k_cache, v_cache, keys, nkv) {
                    // SAFETY: `isa` came from `Isa::detect` (AVX2, FMA and F16C at least) and
                    // `fits` checked the head size and the caches' length.
                    unsafe { super::simd::attend(qh, k_cache, v_cache, keys, kvh, nkv, o) };
                    continue;
                }
                super::reference::attend(qh, k_cache, v_cache, keys, kvh, nkv, o);
            }
        });
        out
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::super::{Heads, KvRows};
    use super::*;
    use crate::format::{KvFormat, Layout};

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    }

    /// Pseudo-random values in [-range, range] (xorshift from `seed`), in steps of range/1000.
    fn values(mut seed: u64, range: f32) -> impl FnMut() -> f32 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed % 2001) as f32 / 1000.0 - 1.0) * range
        }
    }

    /// Every format's products, with f32 and 8-bit activations, on the register kernels
    /// (AVX-512 with and without VNNI, and AVX2, where the CPU has them) and on the portable
    /// loop, against the reference's products (f32 on the same dequantized weights, with the
    /// same rounded inputs for 8-bit activations): widths with a partial group, an odd number of
    /// groups, partial and whole super-blocks, 1 to 64 input rows, a matrix of two runs. Each
    /// input row's products are the same bits whatever else is in its block (what makes greedy
    /// self-speculation equal autoregression).
    #[test]
    fn products_in_every_format_equal_the_reference_in_any_block() {
        use super::super::reference::Reference;
        let mut value = values(1, 1.0);
        let detected = Fast::new(Some(2), Activations::F32).unwrap();
        let avx2 = detected.isa.map(|_| Isa::Avx2);
        let kernels = [
            (detected.isa, detected.vnni),
            (detected.isa, false),
            (avx2, false),
            (None, false),
        ];
        for activations in [Activations::F32, Activations::Q8] {
            let mut reference = Reference::new(activations);
            for (isa, vnni) in kernels {
                let mut fast = Fast::new(Some(2), activations).unwrap();
                (fast.isa, fast.vnni) = (isa, vnni);
                for (cols, first, second) in Format::ALL
                    .iter()
                    .flat_map(|&f| [(70, f, f), (544, f, Format::Q6K), (256, Format::Q8, f)])
                {
                    let rows = 9;
                    let w: Vec<f32> = (0..rows * cols).map(|_| value()).collect();
                    let layout = Layout::from_parts(cols, [(5, first), (rows - 5, second)]);
                    let mut m = fast.matrix("w", &layout).unwrap();
                    let mut dense = reference.matrix("w", &layout).unwrap();
                    for run in &layout.runs {
                        let part = &w[run.row0 * cols..(run.row0 + run.rows) * cols];
                        let packed = run.format.pack(part, cols).unwrap();
                        fast.write(&mut m, run.row0, &packed).unwrap();
                        reference.write(&mut dense, run.row0, &packed).unwrap();
                    }
                    let case = format!(
                        "{first:?}+{second:?} {cols} cols, {activations:?}, {isa:?}, VNNI {vnni}"
                    );
                    for n in [1, 3, 5, 64] {
                        let x: Vec<f32> = (0..n * cols).map(|_| value()).collect();
                        let got = fast.matmul(&x, &m);
                        let want = reference.matmul(&x, &dense);
                        let err = max_abs_diff(&got, &want);
                        assert!(err < 1e-4, "{case}, {n} rows: {err}");
                        for (t, row) in x.chunks(cols).enumerate() {
                            let alone = fast.matmul(row, &m);
                            let within = &got[t * rows..(t + 1) * rows];
                            assert!(
                                alone
                                    .iter()
                                    .zip(within)
                                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                                "{case}: row {t} of {n} differs from its product alone"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Attention on the register kernels against the reference's, for both cache formats, with
    /// grouped-query heads, a block of queries over earlier positions (31 to 35 keys: whole and
    /// partial groups of four and of eight), head sizes of one and two blocks of 64 values, one
    /// with a vector left over, one under 64, and one that is not a multiple of 8 (which falls
    /// back to the reference).
    #[test]
    fn attention_equals_the_reference() {
        use super::super::reference;
        let mut value = values(7, 2.0);
        let fast = Fast::new(Some(2), Activations::F32).unwrap();
        for (dim, format) in [
            (64, KvFormat::F16),
            (64, KvFormat::F32),
            (128, KvFormat::F16),
            (72, KvFormat::F32),
            (24, KvFormat::F16),
            (20, KvFormat::F32),
        ] {
            let heads = Heads {
                query: 6,
                kv: 2,
                dim,
            };
            let (context, pos0, n) = (40, 30, 5);
            let kv_dim = heads.kv * dim;
            let mut arena = super::super::arena::Arena::default();
            let mut k = KvRows::new(&mut arena, format, context * kv_dim).unwrap();
            let mut v = KvRows::new(&mut arena, format, context * kv_dim).unwrap();
            let keys: Vec<f32> = (0..(pos0 + n) * kv_dim).map(|_| value()).collect();
            let values: Vec<f32> = (0..(pos0 + n) * kv_dim).map(|_| value()).collect();
            k.store(0, &keys);
            v.store(0, &values);
            let q: Vec<f32> = (0..n * heads.query * dim).map(|_| value()).collect();
            let got = fast.attention(&q, &k, &v, pos0, heads);
            let want = reference::attention(&q, &k, &v, pos0, heads);
            let err = max_abs_diff(&got, &want);
            assert!(err < 1e-5, "head size {dim}, {format:?}: {err}");
        }
    }

    /// Picks over the threads equal the reference's: the same token (the first index of the
    /// maximum, also when it repeats in a later stretch or sits in the last, short one) and the
    /// same sum of exponentials up to rounding.
    #[test]
    fn picks_over_threads_equal_the_reference() {
        let mut next = values(7, 8.0);
        let row: Vec<f32> = (0..49152 + 37).map(|_| next()).collect();
        let mut tied = row.clone();
        tied[20000] = 100.0;
        tied[9000] = 100.0;
        tied[40000] = 100.0;
        let mut last = row.clone();
        last[49152 + 30] = 100.0;
        for threads in [2, 3] {
            let fast = Fast::new(Some(threads), Activations::F32).unwrap();
            for (name, logits) in [("random", &row), ("tied", &tied), ("last", &last)] {
                let (got, want) = (fast.pick(logits), super::super::pick(logits));
                assert_eq!(got.token, want.token, "{name}, {threads} threads");
                // Against the sum in f64: the reference's one running f32 sum over 49k terms is
                // off by up to ~1e-4 of it, stretch by stretch sums less.
                let top = logits[want.token as usize];
                let exact: f64 = logits.iter().map(|&v| f64::from(v - top).exp()).sum();
                for (which, p) in [("threads", got), ("reference", want)] {
                    let rel = (f64::from(p.sum_exp) - exact).abs() / exact;
                    assert!(
                        rel < 1e-4,
                        "{name}, {threads} threads, {which}: {p:?} vs {exact}"
                    );
                }
            }
        }
        assert_eq!(super::super::pick(&tied).token, 9000);
    }
}
