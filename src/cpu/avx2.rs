//! AVX2 (with FMA and F16C) kernels of the fast backend's products (see `simd.rs`): a group's 32
//! codes decode into 4 vectors of 8 lanes.

use super::operands::{Codes, Inputs, Steps, Sums};
use crate::format::GROUP;
use std::arch::x86_64::*;

/// sum_k w[k] x[t, k] for one weight row (`data`: groups of `words` words holding `codes`,
/// and its decoded `steps`) and every input row t, added into `out[t]`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_row(
    codes: Codes,
    words: usize,
    data: &[u32],
    steps: Option<Steps>,
    inputs: &Inputs,
    out: Sums,
) {
    let at = |g: usize| data.as_ptr().add(g * words);
    let bytes = |g: usize| at(g) as *const u8;
    let word = |g: usize, w: usize| _mm256_set1_epi32(*at(g).add(w) as i32);
    match codes {
        Codes::F32 => accumulate(steps, inputs, out, |g| {
            let p = bytes(g) as *const f32;
            [0, 8, 16, 24].map(|k| _mm256_loadu_ps(p.add(k)))
        }),
        Codes::F16 => accumulate(steps, inputs, out, |g| {
            let p = bytes(g);
            [0, 16, 32, 48].map(|k| _mm256_cvtph_ps(_mm_loadu_si128(p.add(k) as _)))
        }),
        Codes::Bf16 => accumulate(steps, inputs, out, |g| {
            let p = bytes(g);
            [0, 16, 32, 48].map(|k| {
                let wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.add(k) as _));
                _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16))
            })
        }),
        Codes::I8 => accumulate(steps, inputs, out, |g| {
            let p = bytes(g);
            [0, 8, 16, 24]
                .map(|k| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.add(k) as _))))
        }),
        Codes::U4 => accumulate(steps, inputs, out, |g| floats(nibbles(bytes(g)))),
        Codes::U5 => accumulate(steps, inputs, out, |g| {
            // The fifth bits: bit i of the group's fifth word for element i.
            let high = word(g, 4);
            let mut q = nibbles(bytes(g));
            for (k, v) in q.iter_mut().enumerate() {
                let shift = _mm256_add_epi32(lanes(), _mm256_set1_epi32(8 * k as i32));
                let bit = _mm256_and_si256(_mm256_srlv_epi32(high, shift), _mm256_set1_epi32(1));
                *v = _mm256_or_si256(*v, _mm256_slli_epi32(bit, 4));
            }
            floats(q)
        }),
        Codes::I6 => accumulate(steps, inputs, out, |g| {
            // 2-bit high parts: bits 2i..2i+1 of word 4 for element i, of word 5 for 16 + i.
            let mut q = nibbles(bytes(g));
            for (k, v) in q.iter_mut().enumerate() {
                let shift = _mm256_slli_epi32(
                    _mm256_add_epi32(lanes(), _mm256_set1_epi32(8 * (k % 2) as i32)),
                    1,
                );
                let high = _mm256_and_si256(
                    _mm256_srlv_epi32(word(g, 4 + k / 2), shift),
                    _mm256_set1_epi32(3),
                );
                *v = _mm256_sub_epi32(
                    _mm256_or_si256(*v, _mm256_slli_epi32(high, 4)),
                    _mm256_set1_epi32(32),
                );
            }
            floats(q)
        }),
    }
}

/// The products of every input row with the groups `codes` decodes: input rows in chunks of
/// up to [`CHUNK`], each chunk's sums in registers, its inputs' groups close together in cache
/// (a group is decoded again per chunk, which costs less than keeping 64 sums in memory).
#[inline(always)]
unsafe fn accumulate(
    steps: Option<Steps>,
    inputs: &Inputs,
    out: Sums,
    mut codes: impl FnMut(usize) -> [__m256; 4],
) {
    let mut t0 = 0;
    while t0 < inputs.n {
        match inputs.n - t0 {
            1 => chunk::<1>(steps, inputs, t0, out, &mut codes),
            _ => chunk::<CHUNK>(steps, inputs, t0, out, &mut codes),
        }
        t0 += CHUNK;
    }
}

/// Input rows one chunk keeps sums of in registers: four per row (one per vector of a group, so
/// four chains of additions hide the latency of each), of AVX2's 16 registers.
const CHUNK: usize = 2;

/// Input rows t0..t0 + T.
#[inline(always)]
unsafe fn chunk<const T: usize>(
    steps: Option<Steps>,
    inputs: &Inputs,
    t0: usize,
    out: Sums,
    codes: &mut impl FnMut(usize) -> [__m256; 4],
) {
    let groups = inputs.groups;
    let mut acc = [[_mm256_setzero_ps(); 4]; T];
    let x = inputs.x.as_ptr().add(t0 * groups * GROUP);
    for g in 0..groups {
        let mut w = codes(g);
        // w = a q + b.
        match steps {
            None => {}
            Some(Steps {
                a, per_half: true, ..
            }) => {
                let (a0, a1) = (
                    _mm256_set1_ps(*a.get_unchecked(2 * g)),
                    _mm256_set1_ps(*a.get_unchecked(2 * g + 1)),
                );
                w = [
                    _mm256_mul_ps(w[0], a0),
                    _mm256_mul_ps(w[1], a0),
                    _mm256_mul_ps(w[2], a1),
                    _mm256_mul_ps(w[3], a1),
                ];
            }
            Some(Steps { a, b: None, .. }) => {
                let a = _mm256_set1_ps(*a.get_unchecked(g));
                w = w.map(|q| _mm256_mul_ps(q, a));
            }
            Some(Steps { a, b: Some(b), .. }) => {
                let (a, b) = (
                    _mm256_set1_ps(*a.get_unchecked(g)),
                    _mm256_set1_ps(*b.get_unchecked(g)),
                );
                w = w.map(|q| _mm256_fmadd_ps(q, a, b));
            }
        }
        for (t, acc) in acc.iter_mut().enumerate() {
            let p = x.add((t * groups + g) * GROUP);
            for k in 0..4 {
                acc[k] = _mm256_fmadd_ps(w[k], _mm256_loadu_ps(p.add(8 * k)), acc[k]);
            }
        }
    }
    for (t, acc) in acc.iter().enumerate() {
        let both = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        out.add(0, t0 + t, sum(both));
    }
}

/// 0, 1, ..., 7.
#[inline(always)]
unsafe fn lanes() -> __m256i {
    _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)
}

/// A group's 4-bit codes from its 16 bytes (byte i: element i low, i + 16 high), as 4 x 8 i32.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> [__m256i; 4] {
    let bytes = _mm_loadu_si128(p as _);
    let lo = _mm256_cvtepu8_epi32(bytes);
    let hi = _mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8));
    let mask = _mm256_set1_epi32(15);
    [
        _mm256_and_si256(lo, mask),
        _mm256_and_si256(hi, mask),
        _mm256_srli_epi32(lo, 4),
        _mm256_srli_epi32(hi, 4),
    ]
}

#[inline(always)]
unsafe fn floats(q: [__m256i; 4]) -> [__m256; 4] {
    q.map(|v| _mm256_cvtepi32_ps(v))
}

/// The sum of a vector's 8 lanes.
#[inline(always)]
unsafe fn sum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
}
