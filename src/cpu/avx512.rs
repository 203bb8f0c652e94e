//! AVX-512 kernels of the fast backend's products (see `simd.rs`): a group's 32 codes decode
//! into 2 vectors of 16 lanes, one per half group.

use super::simd::{affine, Inputs};
use crate::format::{Format, GROUP};
use std::arch::x86_64::*;

/// See [`super::simd::dot_row`].
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn dot_row(
    format: Format,
    data: &[u32],
    scales: &[u16],
    inputs: &Inputs,
    out: &mut [f32],
) {
    let words = format.group_words();
    let at = |g: usize| data.as_ptr().add(g * words);
    let bytes = |g: usize| at(g) as *const u8;
    let word = |g: usize, w: usize| _mm512_set1_epi32(*at(g).add(w) as i32);
    let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    match format {
        Format::F32 => accumulate(format, scales, inputs, out, |g| {
            let p = bytes(g) as *const f32;
            [_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16))]
        }),
        Format::F16 => accumulate(format, scales, inputs, out, |g| {
            let p = bytes(g);
            [0, 32].map(|k| _mm512_cvtph_ps(_mm256_loadu_si256(p.add(k) as _)))
        }),
        Format::Bf16 => accumulate(format, scales, inputs, out, |g| {
            let p = bytes(g);
            [0, 32].map(|k| {
                let wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.add(k) as _));
                _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16))
            })
        }),
        Format::Q8 => accumulate(format, scales, inputs, out, |g| {
            let p = bytes(g);
            [0, 16]
                .map(|k| _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(k) as _))))
        }),
        Format::Q4 | Format::Q4_1 | Format::Q4K => {
            accumulate(format, scales, inputs, out, |g| floats(nibbles(bytes(g))))
        }
        Format::Q5K => accumulate(format, scales, inputs, out, |g| {
            // The fifth bits: bit i of the group's fifth word for element i.
            let high = word(g, 4);
            let mut q = nibbles(bytes(g));
            for (k, v) in q.iter_mut().enumerate() {
                let shift = _mm512_add_epi32(lanes, _mm512_set1_epi32(16 * k as i32));
                let bit = _mm512_and_si512(_mm512_srlv_epi32(high, shift), _mm512_set1_epi32(1));
                *v = _mm512_or_si512(*v, _mm512_slli_epi32(bit, 4));
            }
            floats(q)
        }),
        Format::Q6K => accumulate(format, scales, inputs, out, |g| {
            // 2-bit high parts: bits 2i..2i+1 of word 4 for element i, of word 5 for 16 + i.
            let mut q = nibbles(bytes(g));
            let shift = _mm512_slli_epi32(lanes, 1);
            for (k, v) in q.iter_mut().enumerate() {
                let high = _mm512_and_si512(
                    _mm512_srlv_epi32(word(g, 4 + k), shift),
                    _mm512_set1_epi32(3),
                );
                *v = _mm512_sub_epi32(
                    _mm512_or_si512(*v, _mm512_slli_epi32(high, 4)),
                    _mm512_set1_epi32(32),
                );
            }
            floats(q)
        }),
    }
}

/// The products of every input row with the groups `codes` decodes, group by group.
#[inline(always)]
unsafe fn accumulate(
    format: Format,
    scales: &[u16],
    inputs: &Inputs,
    out: &mut [f32],
    mut codes: impl FnMut(usize) -> [__m512; 2],
) {
    const MAX: usize = super::fast::BLOCK_ROWS;
    let (n, groups) = (inputs.n.min(MAX), inputs.groups);
    let mut acc = [_mm512_setzero_ps(); MAX];
    let mut offsets = [0f32; MAX];
    let x = inputs.x.as_ptr();
    for g in 0..groups {
        let q = codes(g);
        let (a, b) = affine(format, scales, g);
        let w0 = _mm512_mul_ps(q[0], _mm512_set1_ps(a[0]));
        let w1 = _mm512_mul_ps(q[1], _mm512_set1_ps(a[1]));
        for t in 0..n {
            let p = x.add((t * groups + g) * GROUP);
            let s = _mm512_fmadd_ps(w0, _mm512_loadu_ps(p), acc[t]);
            acc[t] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(p.add(16)), s);
            let sums = inputs.sums.get_unchecked(2 * (t * groups + g)..);
            offsets[t] += b[0] * sums[0] + b[1] * sums[1];
        }
    }
    for t in 0..n {
        out[t] += _mm512_reduce_add_ps(acc[t]) + offsets[t];
    }
}

/// A group's 4-bit codes from its 16 bytes (byte i: element i low, i + 16 high), as 2 x 16 i32.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> [__m512i; 2] {
    let v = _mm512_cvtepu8_epi32(_mm_loadu_si128(p as _));
    [
        _mm512_and_si512(v, _mm512_set1_epi32(15)),
        _mm512_srli_epi32(v, 4),
    ]
}

#[inline(always)]
unsafe fn floats(q: [__m512i; 2]) -> [__m512; 2] {
    q.map(|v| _mm512_cvtepi32_ps(v))
}
