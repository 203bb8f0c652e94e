//! The fast backend's weight-row products in vector registers on x86-64 (AVX-512 where the CPU
//! has it, else AVX2 with FMA and F16C; detected at run time). Weights are never widened to f32
//! copies in memory: each 32-element group is decoded in registers to its codes q as f32 (or its
//! floats), and a group's weights are w = a q + b (one FMA per 16 lanes), with a and b per group
//! (per half group in q6_k, whose scales cover 16 elements). A row's a and b are decoded from
//! its scales once, vectorized where the layout allows ([`Scratch`]), so the group loop only
//! decodes codes, applies them and multiplies. Several weight rows go together so each input
//! load serves all of them, and each input row's sums stay in registers until the end. These
//! kernels' arithmetic is f32: the weights are exactly the plain loop's dequantized values, and
//! results differ from it by summation order only. With 8-bit activations, quantized rows go to
//! the integer kernels of `vnni.rs` instead ([`dot_run`] chooses).

use super::activations::Codes8;
use super::operands::{Codes, Inputs, Steps, Sums};
use super::vnni::{Bytes, RowSteps, Unpacked};
use super::KvRows;
use crate::format::{half_to_f32, k_step_min, q6k_steps, Format};
use std::arch::x86_64::*;

/// The vector instructions a product runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx2,
    Avx512,
}

impl Isa {
    /// The widest this CPU has, if any.
    pub fn detect() -> Option<Isa> {
        let avx2 = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        let avx512 = is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw");
        match (avx2, avx512) {
            (true, true) => Some(Isa::Avx512),
            (true, false) => Some(Isa::Avx2),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx2 => "AVX2",
            Isa::Avx512 => "AVX-512",
        }
    }
}

/// How a row's scales give each group's w = a q + b ([`Steps`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scaling {
    /// Float formats: the codes are the weights.
    None,
    /// One half per group: a = d, no b (q8_0).
    Step,
    /// One half per group: a = d, b = -8 d (q4_0's codes are offset by 8).
    Centered,
    /// (d, m) halves per group: a = d, b = m (q4_1).
    StepMin,
    /// A k-quant super-block's 6-bit scales and mins: a = step, b = -min (q4_k, q5_k).
    KStepMin,
    /// One step per half group, no b (q6_k).
    HalfSteps,
}

impl Scaling {
    /// A row's `scales` as the VNNI kernels read them as stored (one or two halves per group),
    /// for the scalings that are.
    fn stored(self, scales: &[u16]) -> Option<RowSteps<'_>> {
        match self {
            Scaling::Step => Some(RowSteps::Step(scales)),
            Scaling::Centered => Some(RowSteps::Centered(scales)),
            Scaling::StepMin => Some(RowSteps::StepMin(scales)),
            Scaling::None | Scaling::KStepMin | Scaling::HalfSteps => None,
        }
    }
}

/// A format the vector kernels decode: its code layout and its scaling.
#[derive(Debug, Clone, Copy)]
pub struct Kernel {
    format: Format,
    codes: Codes,
    scaling: Scaling,
}

/// The formats with a vector kernel. A format missing here still runs, through the portable
/// loop (`fast.rs` asks [`Kernel::of`] per run of rows), so a new format needs a row here only
/// to be fast.
const KERNELS: [Kernel; 9] = {
    const fn k(format: Format, codes: Codes, scaling: Scaling) -> Kernel {
        Kernel {
            format,
            codes,
            scaling,
        }
    }
    [
        k(Format::F32, Codes::F32, Scaling::None),
        k(Format::F16, Codes::F16, Scaling::None),
        k(Format::Bf16, Codes::Bf16, Scaling::None),
        k(Format::Q8, Codes::I8, Scaling::Step),
        k(Format::Q4, Codes::U4, Scaling::Centered),
        k(Format::Q4_1, Codes::U4, Scaling::StepMin),
        k(Format::Q4K, Codes::U4, Scaling::KStepMin),
        k(Format::Q5K, Codes::U5, Scaling::KStepMin),
        k(Format::Q6K, Codes::I6, Scaling::HalfSteps),
    ]
};

impl Kernel {
    /// The vector kernel for `format`, if it has one.
    pub fn of(format: Format) -> Option<Kernel> {
        KERNELS.iter().find(|k| k.format == format).copied()
    }

    /// Its codes as the 8-bit activation kernels unpack them, if they can (quantized formats).
    pub fn bytes(self) -> Option<Bytes> {
        Bytes::of(self.codes)
    }
}

/// A task's buffers, reused from one set of weight rows to the next: the rows' decoded scales,
/// and their decoded weights when a block has enough inputs to decode them once (avx512.rs).
#[derive(Default)]
pub struct Scratch {
    scales: Scales,
    panel: Vec<f32>,
    /// The VNNI kernels' panel (vnni.rs).
    unpacked: Vec<Unpacked>,
}

/// Weight rows' a and b, decoded for a whole run of rows at once (a task's rows of one part):
/// their scales are contiguous, so the float formats' conversions run over the run without a
/// tail per row.
#[derive(Default)]
struct Scales {
    a: Vec<f32>,
    b: Vec<f32>,
    groups: usize,
}

impl Scales {
    /// Decodes `rows` rows of `groups` groups from their `scales` (the rows' halves, one row after
    /// the other) as `scaling` reads them (nothing for float formats).
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(&mut self, scaling: Scaling, scales: &[u16], rows: usize, groups: usize) {
        if scaling == Scaling::None {
            return;
        }
        self.groups = groups;
        let per_row = scales.len() / rows.max(1);
        let a_len = rows * groups * if scaling == Scaling::HalfSteps { 2 } else { 1 };
        self.a.resize(a_len, 0.0);
        self.b.resize(rows * groups, 0.0);
        let (a, b) = (&mut self.a[..], &mut self.b[..]);
        match scaling {
            Scaling::Step | Scaling::Centered => {
                if per_row == groups {
                    halves_to_f32(&scales[..rows * groups], a);
                } else {
                    // An odd group count: each row's halves are padded to whole words.
                    for (row, a) in scales.chunks(per_row).zip(a.chunks_mut(groups)) {
                        halves_to_f32(&row[..groups], a);
                    }
                }
                if scaling == Scaling::Centered {
                    for (b, a) in b.iter_mut().zip(&*a) {
                        *b = -8.0 * a;
                    }
                }
            }
            Scaling::StepMin => {
                // (d, m) pairs: eight halves become four d and four m. (q4_1 rows hold just
                // their pairs, so a run's pairs are contiguous.)
                let pairs = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
                let n = rows * groups;
                let mut g = 0;
                while g + 4 <= n {
                    _mm_prefetch::<_MM_HINT_T0>(scales.as_ptr().add(2 * g + AHEAD) as _);
                    let v = _mm256_cvtph_ps(_mm_loadu_si128(scales.as_ptr().add(2 * g) as _));
                    let v = _mm256_permutevar8x32_ps(v, pairs);
                    _mm_storeu_ps(a.as_mut_ptr().add(g), _mm256_castps256_ps128(v));
                    _mm_storeu_ps(b.as_mut_ptr().add(g), _mm256_extractf128_ps(v, 1));
                    g += 4;
                }
                for g in g..n {
                    a[g] = half_to_f32(scales[2 * g]);
                    b[g] = half_to_f32(scales[2 * g + 1]);
                }
            }
            Scaling::KStepMin => {
                for (r, row) in scales.chunks(per_row).enumerate().take(rows) {
                    for g in 0..groups {
                        let (step, min) = k_step_min(row, g);
                        a[r * groups + g] = step;
                        b[r * groups + g] = -min;
                    }
                }
            }
            Scaling::HalfSteps => {
                for (r, row) in scales.chunks(per_row).enumerate().take(rows) {
                    for g in 0..groups {
                        let at = 2 * (r * groups + g);
                        a[at..at + 2].copy_from_slice(&q6k_steps(row, g));
                    }
                }
            }
            Scaling::None => {}
        }
    }

    /// Row `r`'s decoded scales (`None` for float formats).
    #[inline(always)]
    fn steps(&self, scaling: Scaling, r: usize) -> Option<Steps<'_>> {
        let g = self.groups;
        let per_half = scaling == Scaling::HalfSteps;
        let a = if per_half { 2 * g } else { g };
        (scaling != Scaling::None).then(|| Steps {
            a: &self.a[r * a..(r + 1) * a],
            b: matches!(
                scaling,
                Scaling::Centered | Scaling::StepMin | Scaling::KStepMin
            )
            .then(|| &self.b[r * g..(r + 1) * g]),
            per_half,
        })
    }
}

/// How many halves ahead a run's scales are fetched into the cache while they are decoded: they
/// stream from memory, and the loads would otherwise wait on each line.
const AHEAD: usize = 512;

/// Halves to f32, eight at a time.
///
/// # Safety
/// The CPU must have AVX and F16C.
#[inline(always)]
unsafe fn halves_to_f32(halves: &[u16], out: &mut [f32]) {
    let mut i = 0;
    while i + 8 <= halves.len() {
        _mm_prefetch::<_MM_HINT_T0>(halves.as_ptr().add(i + AHEAD) as _);
        let v = _mm256_cvtph_ps(_mm_loadu_si128(halves.as_ptr().add(i) as _));
        _mm256_storeu_ps(out.as_mut_ptr().add(i), v);
        i += 8;
    }
    for i in i..halves.len() {
        out[i] = half_to_f32(halves[i]);
    }
}

/// Weight rows processed together by the kernels: their decoded groups share each input load.
pub const ROWS: usize = 4;

/// How far ahead (in weight rows of the same task) the next rows' bytes are fetched into the
/// cache: the rows stream from memory once per product, and without a hint the loads wait on
/// it (the exit head, 30 MB in q8_0 for SmolLM2, went from 6.6 to 4.2 ms on one thread).
pub const PREFETCH_ROWS: usize = 8;

/// A run of consecutive weight rows in one format: their words (`words` per row) and their
/// scales (`halves` per row).
#[derive(Clone, Copy)]
pub struct RowRun<'a> {
    pub data: &'a [u32],
    pub scales: &'a [u16],
    pub rows: usize,
}

/// sum_k w[r, k] x[t, k] for every weight row r of `run` (in `kernel`'s format) and every input
/// row t, added into `out` from its row 0: the run's scales decoded once, its rows in fours
/// (then one by one), on the VNNI kernels where `codes` holds the inputs rounded to 8 bits and
/// the format's codes unpack to bytes, else on `isa`'s f32 kernels over `inputs`.
///
/// # Safety
/// The CPU must have `isa` ([`Isa::detect`]), and what `vnni::available` checks where `codes`
/// is given; every row must be a whole row of the format with `inputs.groups` groups, and `out`
/// hold `run.rows` weight rows of `inputs.n` inputs.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_run(
    isa: Isa,
    kernel: Kernel,
    run: RowRun,
    inputs: &Inputs,
    codes: Option<&Codes8>,
    scratch: &mut Scratch,
    out: Sums,
) {
    let Scratch {
        scales,
        panel,
        unpacked,
    } = scratch;
    let (words, scaling) = (kernel.format.group_words(), kernel.scaling);
    let vnni = codes.zip(kernel.bytes());
    // The VNNI kernels read one or two halves per group as stored; other scales are decoded.
    let stored = vnni.is_some() && scaling.stored(run.scales).is_some();
    if !stored {
        scales.decode(scaling, run.scales, run.rows, inputs.groups);
    }
    let scales = &*scales;
    let per_row = run.data.len() / run.rows.max(1);
    let row = |r: usize| run.data.get_unchecked(r * per_row..(r + 1) * per_row);
    let mut r = 0;
    while r < run.rows {
        let out = out.at_row(r);
        macro_rules! rows {
            ($n:expr) => {{
                let data: [&[u32]; $n] = std::array::from_fn(|k| row(r + k));
                match (vnni, isa) {
                    (Some((x, bytes)), _) => {
                        let mut steps = [RowSteps::Decoded(None); $n];
                        for (k, steps) in steps.iter_mut().enumerate() {
                            *steps = row_steps(stored, scaling, run, scales, r + k);
                        }
                        super::vnni::dot_rows::<$n>(bytes, words, data, steps, x, unpacked, out)
                    }
                    (None, isa) => {
                        let f32_rows = match isa {
                            Isa::Avx512 => super::avx512::dot_rows::<$n>,
                            Isa::Avx2 => super::avx2::dot_rows::<$n>,
                        };
                        let mut steps = [None; $n];
                        for (k, steps) in steps.iter_mut().enumerate() {
                            *steps = scales.steps(scaling, r + k);
                        }
                        f32_rows(kernel.codes, words, data, steps, inputs, panel, out)
                    }
                }
                r += $n;
            }};
        }
        if run.rows - r >= ROWS {
            rows!(ROWS)
        } else {
            rows!(1)
        }
    }
}

/// Row `r` of `run`'s steps for the VNNI kernels: its scales as stored where they are, else
/// decoded. [`dot_run`] fills the rows' steps in a loop, not by `std::array::from_fn`: the
/// closure was called, not inlined, and each row's steps it returned through memory were read
/// back in one wide load before its narrower stores had landed, a stall per row (10% of
/// SmolLM2's decode time was in `dot_run` itself; without the stall it decoded 8-10% faster).
#[inline(always)]
unsafe fn row_steps<'a>(
    stored: bool,
    scaling: Scaling,
    run: RowRun<'a>,
    scales: &'a Scales,
    r: usize,
) -> RowSteps<'a> {
    let halves = run.scales.len() / run.rows.max(1);
    match stored {
        true => scaling.stored(run.scales.get_unchecked(r * halves..(r + 1) * halves)),
        false => None,
    }
    .unwrap_or_else(|| RowSteps::Decoded(scales.steps(scaling, r)))
}

/// One query head `q` over the first `keys` positions of kv head `kvh` of the caches (as
/// `reference::attend`, which is its oracle), in vector registers ([`attend_with`]). Halves are
/// widened by F16C.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `q.len()` (the head size) must be a multiple of 8, equal
/// `out.len()`, and both caches hold the `keys` positions (`fits`).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn attend(
    q: &[f32],
    k_cache: &KvRows,
    v_cache: &KvRows,
    keys: usize,
    kvh: usize,
    nkv: usize,
    out: &mut [f32],
) {
    let at = |j| (j * nkv + kvh) * q.len();
    match (k_cache, v_cache) {
        (KvRows::F16(k), KvRows::F16(v)) => attend_with(q, &k[..], &v[..], keys, at, out),
        (KvRows::F32(k), KvRows::F32(v)) => attend_with(q, &k[..], &v[..], keys, at, out),
        _ => super::reference::attend(q, k_cache, v_cache, keys, kvh, nkv, out),
    }
}

/// Whether [`attend`] may run on these caches: heads of whole 8-lane vectors, and `keys`
/// positions of `nkv` kv heads within both caches.
pub fn fits(hd: usize, k_cache: &KvRows, v_cache: &KvRows, keys: usize, nkv: usize) -> bool {
    let need = keys * nkv * hd;
    hd.is_multiple_of(8) && k_cache.elements() >= need && v_cache.elements() >= need
}

/// Eight cached values as f32 (written without closures, which would not inherit the caller's
/// target features and so would not be inlined).
trait Lanes {
    unsafe fn lanes(self, at: usize) -> __m256;
}

impl Lanes for &[u16] {
    #[inline(always)]
    unsafe fn lanes(self, at: usize) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(self.as_ptr().add(at) as _))
    }
}

impl Lanes for &[f32] {
    #[inline(always)]
    unsafe fn lanes(self, at: usize) -> __m256 {
        _mm256_loadu_ps(self.as_ptr().add(at))
    }
}

/// Keys scored together: their sums are independent chains, so the FMAs overlap instead of each
/// waiting on the one before, and one reduction adds up all four.
const KEYS: usize = 4;
/// Vectors of a head's values summed together over the keys (64 dimensions, a whole head of
/// most Llamas): each in its own register, for the same reason.
const VALUE_VECTORS: usize = 8;

/// Attention of one head in three passes: scores four keys at a time, their exponentials eight
/// at a time ([`exp`]), and the weighted values eight vectors at a time. Every output
/// dimension sums its keys in key order whatever the head size, and a query's result depends
/// only on its own keys, so a row gives the same bits in any block. One key, one `expf` and one
/// vector at a time (each sum waiting on the FMA before it), SmolLM2 decoded 10% and prefilled
/// 21% slower after a 780-token prompt, and 2% and 5% slower after a 130-token one.
#[inline(always)]
unsafe fn attend_with(
    q: &[f32],
    k: impl Lanes + Copy,
    v: impl Lanes + Copy,
    keys: usize,
    at: impl Fn(usize) -> usize,
    out: &mut [f32],
) {
    let hd = q.len();
    let scale = 1.0 / (hd as f32).sqrt();
    // Padded to whole vectors with scores whose exponential is 0.
    let mut scores = vec![f32::NEG_INFINITY; keys.next_multiple_of(8)];
    let mut j = 0;
    while j + KEYS <= keys {
        let rows: [usize; KEYS] = std::array::from_fn(|i| at(j + i));
        _mm_storeu_ps(
            scores.as_mut_ptr().add(j),
            _mm_mul_ps(four_sums(dots(q, k, rows)), _mm_set1_ps(scale)),
        );
        j += KEYS;
    }
    for (j, score) in scores.iter_mut().enumerate().take(keys).skip(j) {
        let [sum] = dots(q, k, [at(j)]);
        *score = horizontal_sum(sum) * scale;
    }
    let mut max = _mm256_set1_ps(f32::NEG_INFINITY);
    for chunk in scores.chunks_exact(8) {
        max = _mm256_max_ps(max, _mm256_loadu_ps(chunk.as_ptr()));
    }
    let max = _mm256_set1_ps(horizontal_max(max));
    let mut total = _mm256_setzero_ps();
    for chunk in scores.chunks_exact_mut(8) {
        let e = exp(_mm256_sub_ps(_mm256_loadu_ps(chunk.as_ptr()), max));
        _mm256_storeu_ps(chunk.as_mut_ptr(), e);
        total = _mm256_add_ps(total, e);
    }
    let norm = _mm256_set1_ps(1.0 / horizontal_sum(total));
    let weights = &scores[..keys];
    let mut c = 0;
    while c + 8 * VALUE_VECTORS <= hd {
        weigh::<VALUE_VECTORS>(weights, v, &at, c, norm, out);
        c += 8 * VALUE_VECTORS;
    }
    // What is left of a head whose size is not a multiple of 64, a vector at a time.
    while c < hd {
        weigh::<1>(weights, v, &at, c, norm, out);
        c += 8;
    }
}

/// The query `q` times each key row starting at `rows` (in `k`), as 8-lane partial sums: one
/// FMA chain per key, the chains side by side.
#[inline(always)]
unsafe fn dots<const N: usize>(q: &[f32], k: impl Lanes + Copy, rows: [usize; N]) -> [__m256; N] {
    let mut sums = [_mm256_setzero_ps(); N];
    let mut c = 0;
    while c < q.len() {
        let qc = _mm256_loadu_ps(q.as_ptr().add(c));
        for (sum, row) in sums.iter_mut().zip(rows) {
            *sum = _mm256_fmadd_ps(qc, k.lanes(row + c), *sum);
        }
        c += 8;
    }
    sums
}

/// Output dimensions `c..c + 8 N`: the values of every key (rows at `at(j)`) weighed by
/// `weights`, summed in key order, scaled by `norm` and added into `out`.
#[inline(always)]
unsafe fn weigh<const N: usize>(
    weights: &[f32],
    v: impl Lanes + Copy,
    at: &impl Fn(usize) -> usize,
    c: usize,
    norm: __m256,
    out: &mut [f32],
) {
    let mut sums = [_mm256_setzero_ps(); N];
    for (j, &p) in weights.iter().enumerate() {
        let (p, row) = (_mm256_set1_ps(p), at(j) + c);
        for (i, sum) in sums.iter_mut().enumerate() {
            *sum = _mm256_fmadd_ps(p, v.lanes(row + 8 * i), *sum);
        }
    }
    for (i, sum) in sums.into_iter().enumerate() {
        let o = out.as_mut_ptr().add(c + 8 * i);
        _mm256_storeu_ps(o, _mm256_fmadd_ps(sum, norm, _mm256_loadu_ps(o)));
    }
}

/// e^x in each lane for x <= 0, within 3e-7 relative (0 below -87, where e^x is no longer a
/// normal f32): x = n ln 2 + r with |r| <= ln 2 / 2 (ln 2 in two parts, so r keeps its low
/// bits), e^r by its Taylor series to r^6 (the next term is under 1.2e-7 of it), and 2^n put in
/// the exponent bits.
#[inline(always)]
unsafe fn exp(x: __m256) -> __m256 {
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    let normal = _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_set1_ps(-87.0));
    let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HIGH), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LOW), r);
    let mut p = _mm256_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let two_n = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(two_n)), normal)
}

/// The sums of four vectors' lanes.
#[inline(always)]
unsafe fn four_sums([a, b, c, d]: [__m256; 4]) -> __m128 {
    let abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    _mm_add_ps(
        _mm256_castps256_ps128(abcd),
        _mm256_extractf128_ps::<1>(abcd),
    )
}

#[inline(always)]
unsafe fn horizontal_sum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

#[inline(always)]
unsafe fn horizontal_max(v: __m256) -> f32 {
    let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector exponential against `f32::exp` from 0 down past where it flushes to 0: at
    /// most 2.5e-7 relative (2 ulps) measured, 0 below -87.
    #[test]
    fn exp_is_within_its_bound_of_expf() {
        if Isa::detect().is_none() {
            return;
        }
        let mut worst = 0f32;
        let xs: Vec<f32> = (0..=200_000)
            .map(|i| -100.0 * i as f32 / 200_000.0)
            .collect();
        for x in xs.chunks_exact(8) {
            let mut got = [0f32; 8];
            // SAFETY: `Isa::detect` found AVX2, FMA and F16C.
            unsafe { _mm256_storeu_ps(got.as_mut_ptr(), exp(_mm256_loadu_ps(x.as_ptr()))) };
            for (&x, got) in x.iter().zip(got) {
                match x < -87.0 {
                    true => assert_eq!(got, 0.0, "e^{x}"),
                    false => {
                        let want = x.exp();
                        worst = worst.max((got - want).abs() / want);
                    }
                }
            }
        }
        assert!(worst <= 3e-7, "{worst}");
    }
}
