//! The fast backend's weight-row products in vector registers on x86-64 (AVX-512 where the CPU
//! has it, else AVX2 with FMA and F16C; detected at run time). Weights are never widened to f32
//! copies in memory: each 32-element group is decoded in registers to its codes q as f32 (or its
//! floats), and a group's weights are w = a q + b (one FMA per 16 lanes), with a and b per group
//! (per half group in q6_k, whose scales cover 16 elements). A row's a and b are decoded from
//! its scales once, vectorized where the layout allows ([`Scratch`]), so the group loop only
//! decodes codes, applies them and multiplies. Several weight rows go together so each input
//! load serves all of them, and each input row's sums stay in registers until the end. The
//! arithmetic is f32 throughout (no 8-bit activations, unlike llama.cpp): the weights are exactly
//! the plain loop's dequantized values, and results differ from it by summation order only.

use super::fast::Sums;
use super::KvRows;
use crate::format::{half_to_f32, k_step_min, q6k_steps, Format, GROUP};
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

/// The inputs of a product, laid out for the kernels: `n` rows of `groups` x 32 values (zeros
/// past the matrix width, so no group is partial).
pub struct Inputs {
    pub n: usize,
    pub groups: usize,
    pub x: Vec<f32>,
}

impl Inputs {
    pub fn new(x: &[f32], cols: usize) -> Self {
        let groups = cols.div_ceil(GROUP);
        let n = x.len() / cols.max(1);
        let mut padded = vec![0f32; n * groups * GROUP];
        for (src, dst) in x.chunks(cols.max(1)).zip(padded.chunks_mut(groups * GROUP)) {
            dst[..src.len()].copy_from_slice(src);
        }
        Inputs {
            n,
            groups,
            x: padded,
        }
    }
}

/// One weight row's decoded scales: w = a q + b per group, or (`per_half`, q6_k) a per half
/// group and no b.
#[derive(Clone, Copy)]
pub struct Steps<'a> {
    pub a: &'a [f32],
    pub b: Option<&'a [f32]>,
    pub per_half: bool,
}

/// A task's buffers, reused from one set of weight rows to the next: the rows' decoded scales,
/// and their decoded weights when a block has enough inputs to decode them once (avx512.rs).
#[derive(Default)]
pub struct Scratch {
    scales: Scales,
    panel: Vec<f32>,
}

/// Weight rows' a and b, decoded once per row.
#[derive(Default)]
struct Scales {
    a: Vec<f32>,
    b: Vec<f32>,
    groups: usize,
}

impl Scales {
    /// Decodes rows of `groups` groups in `format` from their `scales` (nothing for float
    /// formats).
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn decode(&mut self, format: Format, scales: &[&[u16]], groups: usize) {
        if !format.quantized() {
            return;
        }
        self.groups = groups;
        self.a.resize(scales.len() * 2 * groups, 0.0);
        self.b.resize(scales.len() * groups, 0.0);
        for (r, scales) in scales.iter().enumerate() {
            let a = &mut self.a[r * 2 * groups..(r + 1) * 2 * groups];
            let b = &mut self.b[r * groups..(r + 1) * groups];
            match format {
                Format::Q8 | Format::Q4 => {
                    halves_to_f32(&scales[..groups], &mut a[..groups]);
                    if format == Format::Q4 {
                        for (b, a) in b.iter_mut().zip(&a[..groups]) {
                            *b = -8.0 * a;
                        }
                    }
                }
                Format::Q4_1 => {
                    // (d, m) pairs: eight halves become four d and four m.
                    let pairs = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
                    let mut g = 0;
                    while g + 4 <= groups {
                        let v = _mm256_cvtph_ps(_mm_loadu_si128(scales.as_ptr().add(2 * g) as _));
                        let v = _mm256_permutevar8x32_ps(v, pairs);
                        _mm_storeu_ps(a.as_mut_ptr().add(g), _mm256_castps256_ps128(v));
                        _mm_storeu_ps(b.as_mut_ptr().add(g), _mm256_extractf128_ps(v, 1));
                        g += 4;
                    }
                    for g in g..groups {
                        a[g] = half_to_f32(scales[2 * g]);
                        b[g] = half_to_f32(scales[2 * g + 1]);
                    }
                }
                Format::Q4K | Format::Q5K => {
                    for g in 0..groups {
                        let (step, min) = k_step_min(scales, g);
                        a[g] = step;
                        b[g] = -min;
                    }
                }
                Format::Q6K => {
                    for g in 0..groups {
                        a[2 * g..2 * g + 2].copy_from_slice(&q6k_steps(scales, g));
                    }
                }
                Format::F32 | Format::F16 | Format::Bf16 => {}
            }
        }
    }

    /// Row `r`'s decoded scales (`None` for float formats).
    #[inline(always)]
    pub(super) fn steps(&self, format: Format, r: usize) -> Option<Steps<'_>> {
        let g = self.groups;
        format.quantized().then(|| Steps {
            a: &self.a[r * 2 * g..(r + 1) * 2 * g],
            b: matches!(
                format,
                Format::Q4 | Format::Q4_1 | Format::Q4K | Format::Q5K
            )
            .then(|| &self.b[r * g..(r + 1) * g]),
            per_half: format == Format::Q6K,
        })
    }
}

/// Halves to f32, eight at a time.
///
/// # Safety
/// The CPU must have AVX and F16C.
#[inline(always)]
unsafe fn halves_to_f32(halves: &[u16], out: &mut [f32]) {
    let mut i = 0;
    while i + 8 <= halves.len() {
        let v = _mm256_cvtph_ps(_mm_loadu_si128(halves.as_ptr().add(i) as _));
        _mm256_storeu_ps(out.as_mut_ptr().add(i), v);
        i += 8;
    }
    for i in i..halves.len() {
        out[i] = half_to_f32(halves[i]);
    }
}

/// Weight rows processed together by [`dot_rows`]: their decoded groups share each input load.
pub const ROWS: usize = 4;

/// sum_k w[r, k] x[t, k] for every weight row r of `rows` (its words and scales, all in
/// `format`) and every input row t, added into `out`.
///
/// # Safety
/// The CPU must have `isa` ([`Isa::detect`]); every row must be a whole row of `format` with
/// `inputs.groups` groups, and `out` hold `rows.len()` weight rows of `inputs.n` inputs.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_rows<const R: usize>(
    isa: Isa,
    format: Format,
    rows: [(&[u32], &[u16]); R],
    inputs: &Inputs,
    scratch: &mut Scratch,
    out: Sums,
) {
    let Scratch { scales, panel } = scratch;
    scales.decode(format, &rows.map(|(_, s)| s), inputs.groups);
    let steps: [Option<Steps>; R] = std::array::from_fn(|r| scales.steps(format, r));
    let data = rows.map(|(d, _)| d);
    match isa {
        Isa::Avx2 => {
            for r in 0..R {
                super::avx2::dot_row(format, data[r], steps[r], inputs, out.from_row(r));
            }
        }
        Isa::Avx512 => super::avx512::dot_rows::<R>(format, data, steps, inputs, panel, out),
    }
}

/// One query head `q` over the first `keys` positions of kv head `kvh` of the caches (as
/// `reference::attend`, which is its oracle), eight lanes at a time: scores by FMA over the
/// head, the softmax in f32, and the weighted values summed eight dimensions at a time over the
/// keys. Halves are widened by F16C.
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
        (KvRows::F16(k), KvRows::F16(v)) => {
            attend_with(q, k.as_slice(), v.as_slice(), keys, at, out)
        }
        (KvRows::F32(k), KvRows::F32(v)) => {
            attend_with(q, k.as_slice(), v.as_slice(), keys, at, out)
        }
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
    let mut scores = vec![0f32; keys];
    let mut max = f32::NEG_INFINITY;
    for (j, score) in scores.iter_mut().enumerate() {
        let row = at(j);
        let mut sum = _mm256_setzero_ps();
        let mut c = 0;
        while c < hd {
            sum = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(c)), k.lanes(row + c), sum);
            c += 8;
        }
        *score = horizontal_sum(sum) * scale;
        max = max.max(*score);
    }
    let mut total = 0.0;
    for s in &mut scores {
        *s = (*s - max).exp();
        total += *s;
    }
    let norm = _mm256_set1_ps(1.0 / total);
    let mut c = 0;
    while c < hd {
        let mut sum = _mm256_setzero_ps();
        for (j, &p) in scores.iter().enumerate() {
            sum = _mm256_fmadd_ps(_mm256_set1_ps(p), v.lanes(at(j) + c), sum);
        }
        let o = out.as_mut_ptr().add(c);
        _mm256_storeu_ps(o, _mm256_fmadd_ps(sum, norm, _mm256_loadu_ps(o)));
        c += 8;
    }
}

#[inline(always)]
unsafe fn horizontal_sum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}
