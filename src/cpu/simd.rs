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

use super::activations::Codes8;
use super::operands::{Codes, Inputs, Steps, Sums};
use super::vnni::{Bytes, Unpacked};
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

/// Weight rows' a and b, decoded once per row.
#[derive(Default)]
struct Scales {
    a: Vec<f32>,
    b: Vec<f32>,
    groups: usize,
}

impl Scales {
    /// Decodes rows of `groups` groups from their `scales` as `scaling` reads them (nothing for
    /// float formats).
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode(&mut self, scaling: Scaling, scales: &[&[u16]], groups: usize) {
        if scaling == Scaling::None {
            return;
        }
        self.groups = groups;
        self.a.resize(scales.len() * 2 * groups, 0.0);
        self.b.resize(scales.len() * groups, 0.0);
        for (r, scales) in scales.iter().enumerate() {
            let a = &mut self.a[r * 2 * groups..(r + 1) * 2 * groups];
            let b = &mut self.b[r * groups..(r + 1) * groups];
            match scaling {
                Scaling::Step | Scaling::Centered => {
                    halves_to_f32(&scales[..groups], &mut a[..groups]);
                    if scaling == Scaling::Centered {
                        for (b, a) in b.iter_mut().zip(&a[..groups]) {
                            *b = -8.0 * a;
                        }
                    }
                }
                Scaling::StepMin => {
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
                Scaling::KStepMin => {
                    for g in 0..groups {
                        let (step, min) = k_step_min(scales, g);
                        a[g] = step;
                        b[g] = -min;
                    }
                }
                Scaling::HalfSteps => {
                    for g in 0..groups {
                        a[2 * g..2 * g + 2].copy_from_slice(&q6k_steps(scales, g));
                    }
                }
                Scaling::None => {}
            }
        }
    }

    /// Row `r`'s decoded scales (`None` for float formats).
    #[inline(always)]
    fn steps(&self, scaling: Scaling, r: usize) -> Option<Steps<'_>> {
        let g = self.groups;
        (scaling != Scaling::None).then(|| Steps {
            a: &self.a[r * 2 * g..(r + 1) * 2 * g],
            b: matches!(
                scaling,
                Scaling::Centered | Scaling::StepMin | Scaling::KStepMin
            )
            .then(|| &self.b[r * g..(r + 1) * g]),
            per_half: scaling == Scaling::HalfSteps,
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
/// `kernel`'s format) and every input row t, added into `out`.
///
/// # Safety
/// The CPU must have `isa` ([`Isa::detect`]); every row must be a whole row of the format with
/// `inputs.groups` groups, and `out` hold `rows.len()` weight rows of `inputs.n` inputs.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_rows<const R: usize>(
    isa: Isa,
    kernel: Kernel,
    rows: [(&[u32], &[u16]); R],
    inputs: &Inputs,
    scratch: &mut Scratch,
    out: Sums,
) {
    let Scratch { scales, panel, .. } = scratch;
    scales.decode(kernel.scaling, &rows.map(|(_, s)| s), inputs.groups);
    let steps: [Option<Steps>; R] = std::array::from_fn(|r| scales.steps(kernel.scaling, r));
    let data = rows.map(|(d, _)| d);
    let (codes, words) = (kernel.codes, kernel.format.group_words());
    match isa {
        Isa::Avx2 => {
            for r in 0..R {
                super::avx2::dot_row(codes, words, data[r], steps[r], inputs, out.at_row(r));
            }
        }
        Isa::Avx512 => super::avx512::dot_rows::<R>(codes, words, data, steps, inputs, panel, out),
    }
}

/// As [`dot_rows`], against 8-bit activations `x` on the VNNI kernels (`vnni.rs`), for a
/// kernel whose codes unpack to `bytes`.
///
/// # Safety
/// The CPU must have what `vnni::available` checks; rows as for [`dot_rows`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_rows_q8<const R: usize>(
    kernel: Kernel,
    bytes: Bytes,
    rows: [(&[u32], &[u16]); R],
    x: &Codes8,
    scratch: &mut Scratch,
    out: Sums,
) {
    let Scratch {
        scales, unpacked, ..
    } = scratch;
    scales.decode(kernel.scaling, &rows.map(|(_, s)| s), x.groups);
    let steps: [Option<Steps>; R] = std::array::from_fn(|r| scales.steps(kernel.scaling, r));
    let (words, data) = (kernel.format.group_words(), rows.map(|(d, _)| d));
    super::vnni::dot_rows::<R>(bytes, words, data, steps, x, unpacked, out)
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
