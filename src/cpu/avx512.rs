//! AVX-512 kernels of the fast backend's products (see `simd.rs`): a group's 32 codes decode
//! into 2 vectors of 16 lanes, one per half group, and several weight rows go together so each
//! input load serves all of them.

use super::operands::{Codes, Inputs, Steps, Sums};
use crate::format::GROUP;
use std::arch::x86_64::*;

/// sum_k w[r, k] x[t, k] for the weight rows `rows` (groups of `words` words holding `codes`,
/// and their decoded `steps`) and every input row t, added into `out[r * n + t]`.
#[target_feature(enable = "avx512f,avx512bw,fma,f16c")]
pub unsafe fn dot_rows<const R: usize>(
    codes: Codes,
    words: usize,
    rows: [&[u32]; R],
    steps: [Option<Steps>; R],
    inputs: &Inputs,
    panel: &mut Vec<f32>,
    out: Sums,
) {
    let at = |r: usize, g: usize| rows[r].as_ptr().add(g * words);
    let bytes = |r: usize, g: usize| at(r, g) as *const u8;
    let word = |r: usize, g: usize, w: usize| _mm512_set1_epi32(*at(r, g).add(w) as i32);
    let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    match codes {
        Codes::F32 => accumulate::<R>(&steps, inputs, panel, out, |r, g| {
            let p = bytes(r, g) as *const f32;
            [_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16))]
        }),
        Codes::F16 => accumulate::<R>(&steps, inputs, panel, out, |r, g| {
            let p = bytes(r, g);
            [0, 32].map(|k| _mm512_cvtph_ps(_mm256_loadu_si256(p.add(k) as _)))
        }),
        Codes::Bf16 => accumulate::<R>(&steps, inputs, panel, out, |r, g| {
            let p = bytes(r, g);
            [0, 32].map(|k| {
                let wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.add(k) as _));
                _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16))
            })
        }),
        Codes::I8 => accumulate::<R>(&steps, inputs, panel, out, |r, g| {
            let p = bytes(r, g);
            [0, 16]
                .map(|k| _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(k) as _))))
        }),
        Codes::U4 => accumulate::<R>(&steps, inputs, panel, out, |r, g| {
            floats(nibbles(bytes(r, g)))
        }),
        Codes::U5 => accumulate::<R>(&steps, inputs, panel, out, |r, g| {
            // The fifth bits: bit i of the group's fifth word for element i.
            let high = word(r, g, 4);
            let mut q = nibbles(bytes(r, g));
            for (k, v) in q.iter_mut().enumerate() {
                let shift = _mm512_add_epi32(lanes, _mm512_set1_epi32(16 * k as i32));
                let bit = _mm512_and_si512(_mm512_srlv_epi32(high, shift), _mm512_set1_epi32(1));
                *v = _mm512_or_si512(*v, _mm512_slli_epi32(bit, 4));
            }
            floats(q)
        }),
        Codes::I6 => accumulate::<R>(&steps, inputs, panel, out, |r, g| {
            // 2-bit high parts: bits 2i..2i+1 of word 4 for element i, of word 5 for 16 + i.
            let mut q = nibbles(bytes(r, g));
            let shift = _mm512_slli_epi32(lanes, 1);
            for (k, v) in q.iter_mut().enumerate() {
                let high = _mm512_and_si512(
                    _mm512_srlv_epi32(word(r, g, 4 + k), shift),
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

/// The products of every input row with the groups `codes` decodes (weight row, group): input
/// rows in chunks of up to [`CHUNK`], every weight row's sums for the chunk in registers. With
/// [`PANEL_INPUTS`] rows or more, the weight rows are first decoded into `panel` once, and the
/// chunks read them from there (no decoding per chunk): the same weights summed in the same
/// order, so the results are the same bits either way.
#[inline(always)]
unsafe fn accumulate<const R: usize>(
    steps: &[Option<Steps>; R],
    inputs: &Inputs,
    panel: &mut Vec<f32>,
    out: Sums,
    mut codes: impl FnMut(usize, usize) -> [__m512; 2],
) {
    let mut t0 = 0;
    if inputs.n >= PANEL_INPUTS {
        let width = inputs.groups * GROUP;
        panel.resize(R * width, 0.0);
        for (r, &steps) in steps.iter().enumerate() {
            for g in 0..inputs.groups {
                let w = weights(steps, codes(r, g), g);
                let p = panel.as_mut_ptr().add(r * width + g * GROUP);
                _mm512_storeu_ps(p, w[0]);
                _mm512_storeu_ps(p.add(16), w[1]);
            }
        }
        while t0 < inputs.n {
            match inputs.n - t0 {
                1 => panel_chunk::<R, 1>(panel, inputs, t0, out),
                2 => panel_chunk::<R, 2>(panel, inputs, t0, out),
                3 => panel_chunk::<R, 3>(panel, inputs, t0, out),
                4 => panel_chunk::<R, 4>(panel, inputs, t0, out),
                5 => panel_chunk::<R, 5>(panel, inputs, t0, out),
                _ => panel_chunk::<R, PANEL_INPUTS>(panel, inputs, t0, out),
            }
            t0 += PANEL_INPUTS;
        }
        return;
    }
    while t0 < inputs.n {
        match inputs.n - t0 {
            1 => chunk::<R, 1>(steps, inputs, t0, out, &mut codes),
            2 => chunk::<R, 2>(steps, inputs, t0, out, &mut codes),
            3 => chunk::<R, 3>(steps, inputs, t0, out, &mut codes),
            _ => chunk::<R, CHUNK>(steps, inputs, t0, out, &mut codes),
        }
        t0 += CHUNK;
    }
}

/// Input rows one chunk keeps sums of in registers: R x CHUNK of them, with the R rows' two
/// decoded vectors and two inputs, within AVX-512's 32 registers.
const CHUNK: usize = 4;

/// Input rows from which weight rows are decoded once into a panel, and input rows per chunk
/// then: with nothing to decode per chunk, R x 6 sums, R weights and an input fit the registers,
/// and each weight load serves 6 products.
const PANEL_INPUTS: usize = 6;

/// A group's weights from its codes (w = a q + b), or as they are (float formats).
#[inline(always)]
unsafe fn weights(steps: Option<Steps>, mut w: [__m512; 2], g: usize) -> [__m512; 2] {
    match steps {
        None => {}
        Some(Steps {
            a, per_half: true, ..
        }) => {
            w[0] = _mm512_mul_ps(w[0], _mm512_set1_ps(*a.get_unchecked(2 * g)));
            w[1] = _mm512_mul_ps(w[1], _mm512_set1_ps(*a.get_unchecked(2 * g + 1)));
        }
        Some(Steps { a, b: None, .. }) => {
            let a = _mm512_set1_ps(*a.get_unchecked(g));
            w = w.map(|q| _mm512_mul_ps(q, a));
        }
        Some(Steps { a, b: Some(b), .. }) => {
            let (a, b) = (
                _mm512_set1_ps(*a.get_unchecked(g)),
                _mm512_set1_ps(*b.get_unchecked(g)),
            );
            w = w.map(|q| _mm512_fmadd_ps(q, a, b));
        }
    }
    w
}

/// Input rows t0..t0 + T against the R weight rows, decoding their groups from `codes`.
#[inline(always)]
unsafe fn chunk<const R: usize, const T: usize>(
    steps: &[Option<Steps>; R],
    inputs: &Inputs,
    t0: usize,
    out: Sums,
    codes: &mut impl FnMut(usize, usize) -> [__m512; 2],
) {
    let groups = inputs.groups;
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let x = inputs.x.as_ptr().add(t0 * groups * GROUP);
    for g in 0..groups {
        let mut w = [[_mm512_setzero_ps(); 2]; R];
        for r in 0..R {
            w[r] = weights(steps[r], codes(r, g), g);
        }
        for t in 0..T {
            let p = x.add((t * groups + g) * GROUP);
            let (x0, x1) = (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)));
            for (acc, w) in acc.iter_mut().zip(&w) {
                acc[t] = _mm512_fmadd_ps(w[1], x1, _mm512_fmadd_ps(w[0], x0, acc[t]));
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (t, &sum) in acc.iter().enumerate() {
            out.add(r, t0 + t, _mm512_reduce_add_ps(sum));
        }
    }
}

/// Input rows t0..t0 + T against the R weight rows decoded in `panel`, 16 lanes at a time: R
/// weights and one input in registers beside the R x T sums. Each lane sums the same products in
/// the same order as [`chunk`]. (A function of its own: its registers are allocated apart from
/// the decoding kernels'.)
#[target_feature(enable = "avx512f,avx512bw,fma,f16c")]
#[inline(never)]
unsafe fn panel_chunk<const R: usize, const T: usize>(
    panel: &[f32],
    inputs: &Inputs,
    t0: usize,
    out: Sums,
) {
    let width = inputs.groups * GROUP;
    let mut acc = [[_mm512_setzero_ps(); R]; T];
    let x = inputs.x.as_ptr().add(t0 * width);
    let w = panel.as_ptr();
    let mut k = 0;
    while k < width {
        let wk: [__m512; R] = std::array::from_fn(|r| _mm512_loadu_ps(w.add(r * width + k)));
        for (t, acc) in acc.iter_mut().enumerate() {
            let xk = _mm512_loadu_ps(x.add(t * width + k));
            for (acc, &w) in acc.iter_mut().zip(&wk) {
                *acc = _mm512_fmadd_ps(w, xk, *acc);
            }
        }
        k += 16;
    }
    for (t, acc) in acc.iter().enumerate() {
        for (r, &sum) in acc.iter().enumerate() {
            out.add(r, t0 + t, _mm512_reduce_add_ps(sum));
        }
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
