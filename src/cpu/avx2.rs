//! AVX2 (with FMA and F16C) kernels of the fast backend's products (see `simd.rs`): a group's 32
//! codes decode into 4 vectors of 8 lanes, and two weight rows go together so each input load
//! serves both (as `avx512.rs` does with four, within AVX2's 16 registers).

use super::operands::{Codes, Inputs, Steps, Sums};
use super::simd::PREFETCH_ROWS;
use crate::format::GROUP;
use std::arch::x86_64::*;

/// sum_k w[r, k] x[t, k] for the weight rows `rows` (groups of `words` words holding `codes`,
/// and their decoded `steps`) and every input row t, added into `out[r * n + t]`.
#[target_feature(enable = "avx2,fma,f16c")]
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
    let word = |r: usize, g: usize, w: usize| _mm256_set1_epi32(*at(r, g).add(w) as i32);
    let ahead = Ahead {
        rows: rows.map(|r| r.as_ptr() as *const u8),
        group_bytes: 4 * words,
        bytes: PREFETCH_ROWS * inputs.groups * 4 * words,
    };
    let args = (&steps, inputs, ahead, panel, out);
    match codes {
        Codes::F32 => accumulate::<R>(args, |r, g| {
            let p = bytes(r, g) as *const f32;
            [0, 8, 16, 24].map(|k| _mm256_loadu_ps(p.add(k)))
        }),
        Codes::F16 => accumulate::<R>(args, |r, g| {
            let p = bytes(r, g);
            [0, 16, 32, 48].map(|k| _mm256_cvtph_ps(_mm_loadu_si128(p.add(k) as _)))
        }),
        Codes::Bf16 => accumulate::<R>(args, |r, g| {
            let p = bytes(r, g);
            [0, 16, 32, 48].map(|k| {
                let wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.add(k) as _));
                _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16))
            })
        }),
        Codes::I8 => accumulate::<R>(args, |r, g| {
            let p = bytes(r, g);
            [0, 8, 16, 24]
                .map(|k| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.add(k) as _))))
        }),
        Codes::U4 => accumulate::<R>(args, |r, g| floats(nibbles(bytes(r, g)))),
        Codes::U5 => accumulate::<R>(args, |r, g| {
            // The fifth bits: bit i of the group's fifth word for element i.
            let high = word(r, g, 4);
            let mut q = nibbles(bytes(r, g));
            for (k, v) in q.iter_mut().enumerate() {
                let shift = _mm256_add_epi32(lanes(), _mm256_set1_epi32(8 * k as i32));
                let bit = _mm256_and_si256(_mm256_srlv_epi32(high, shift), _mm256_set1_epi32(1));
                *v = _mm256_or_si256(*v, _mm256_slli_epi32(bit, 4));
            }
            floats(q)
        }),
        Codes::I6 => accumulate::<R>(args, |r, g| {
            // 2-bit high parts: bits 2i..2i+1 of word 4 for element i, of word 5 for 16 + i.
            let mut q = nibbles(bytes(r, g));
            for (k, v) in q.iter_mut().enumerate() {
                let shift = _mm256_slli_epi32(
                    _mm256_add_epi32(lanes(), _mm256_set1_epi32(8 * (k % 2) as i32)),
                    1,
                );
                let high = _mm256_and_si256(
                    _mm256_srlv_epi32(word(r, g, 4 + k / 2), shift),
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

type Args<'a, const R: usize> = (
    &'a [Option<Steps<'a>>; R],
    &'a Inputs,
    Ahead<R>,
    &'a mut Vec<f32>,
    Sums,
);

/// Where the weight rows are, to fetch the bytes of later rows into the cache while these are
/// decoded: two rows stream from memory at once, which the hardware prefetcher alone does not
/// keep up with (SmolLM2's decode on AVX2, against one row at a time: four rows without hints
/// 0.57x, two rows with a hint per cache line 0.99x).
#[derive(Clone, Copy)]
struct Ahead<const R: usize> {
    rows: [*const u8; R],
    group_bytes: usize,
    /// How far ahead: [`PREFETCH_ROWS`] rows.
    bytes: usize,
}

impl<const R: usize> Ahead<R> {
    #[inline(always)]
    unsafe fn fetch(&self, r: usize, g: usize) {
        // Once per cache line: where group g starts one.
        let start = g * self.group_bytes;
        if start % 64 < self.group_bytes {
            let at = self.rows[r].wrapping_add(start + self.bytes);
            _mm_prefetch::<_MM_HINT_T0>(at as _);
        }
    }
}

/// The products of every input row with the groups `codes` decodes (weight row, group), two
/// weight rows at a time (each input load serves both): input rows in chunks of up to
/// [`CHUNK`], each group decoded again per chunk. With [`PANEL_INPUTS`] rows or more, the weight
/// rows are first decoded into `panel` once, and [`PANEL_CHUNK`] input rows at a time read them
/// from there. Either way each (weight row, input row) product keeps two running sums, of a
/// group's even and odd vectors (two chains of additions per row, four per pair of rows, hide
/// each one's latency), added the same way at the end: the same bits whatever else is in the
/// block.
#[inline(always)]
unsafe fn accumulate<const R: usize>(
    (steps, inputs, ahead, panel, out): Args<R>,
    mut codes: impl FnMut(usize, usize) -> [__m256; 4],
) {
    if inputs.n >= PANEL_INPUTS {
        let width = inputs.groups * GROUP;
        panel.resize(R * width, 0.0);
        for (r, &steps) in steps.iter().enumerate() {
            for g in 0..inputs.groups {
                let p = panel.as_mut_ptr().add(r * width + g * GROUP);
                for (k, w) in weights(steps, codes(r, g), g).into_iter().enumerate() {
                    _mm256_storeu_ps(p.add(8 * k), w);
                }
            }
        }
        let mut r = 0;
        while r < R {
            let (rows, out) = (&panel[r * width..], out.at_row(r));
            let mut t0 = 0;
            while t0 < inputs.n {
                match (R - r, inputs.n - t0) {
                    (1, 1) => panel_chunk::<1, 1>(rows, inputs, t0, out),
                    (1, 2) => panel_chunk::<1, 2>(rows, inputs, t0, out),
                    (1, _) => panel_chunk::<1, PANEL_CHUNK>(rows, inputs, t0, out),
                    (_, 1) => panel_chunk::<2, 1>(rows, inputs, t0, out),
                    (_, 2) => panel_chunk::<2, 2>(rows, inputs, t0, out),
                    _ => panel_chunk::<2, PANEL_CHUNK>(rows, inputs, t0, out),
                }
                t0 += PANEL_CHUNK;
            }
            r += 2;
        }
        return;
    }
    let mut r = 0;
    while r < R {
        let steps = [steps[r], steps[(r + 1).min(R - 1)]];
        let out = out.at_row(r);
        let mut codes = |k: usize, g| {
            ahead.fetch(r + k, g);
            codes(r + k, g)
        };
        let mut t0 = 0;
        while t0 < inputs.n {
            match (R - r, inputs.n - t0) {
                (1, 1) => chunk::<1, 1>(steps, inputs, t0, out, &mut codes),
                (1, _) => chunk::<1, CHUNK>(steps, inputs, t0, out, &mut codes),
                (_, 1) => chunk::<2, 1>(steps, inputs, t0, out, &mut codes),
                _ => chunk::<2, CHUNK>(steps, inputs, t0, out, &mut codes),
            }
            t0 += CHUNK;
        }
        r += 2;
    }
}

/// Input rows one chunk keeps sums of in registers while it decodes: 2 x 2 x CHUNK of them,
/// beside a decoded group's four vectors and an input vector, of AVX2's 16 registers.
const CHUNK: usize = 2;

/// Input rows from which weight rows are decoded once into a panel (a prompt, or a verification
/// of 3 drafts or more), and input rows per chunk then: 2 x 2 x 3 sums, two rows' weight vectors
/// and an input vector fit the registers.
const PANEL_INPUTS: usize = 4;
const PANEL_CHUNK: usize = 3;

/// A group's weights from its codes (w = a q + b), or as they are (float formats).
#[inline(always)]
unsafe fn weights(steps: Option<Steps>, w: [__m256; 4], g: usize) -> [__m256; 4] {
    match steps {
        None => w,
        Some(Steps {
            a, per_half: true, ..
        }) => {
            let (a0, a1) = (
                _mm256_set1_ps(*a.get_unchecked(2 * g)),
                _mm256_set1_ps(*a.get_unchecked(2 * g + 1)),
            );
            [
                _mm256_mul_ps(w[0], a0),
                _mm256_mul_ps(w[1], a0),
                _mm256_mul_ps(w[2], a1),
                _mm256_mul_ps(w[3], a1),
            ]
        }
        Some(Steps { a, b: None, .. }) => {
            let a = _mm256_set1_ps(*a.get_unchecked(g));
            w.map(|q| _mm256_mul_ps(q, a))
        }
        Some(Steps { a, b: Some(b), .. }) => {
            let (a, b) = (
                _mm256_set1_ps(*a.get_unchecked(g)),
                _mm256_set1_ps(*b.get_unchecked(g)),
            );
            w.map(|q| _mm256_fmadd_ps(q, a, b))
        }
    }
}

/// Input rows t0..t0 + T against weight rows 0..RR of `steps` (1 or 2), decoding their groups
/// from `codes` (row, group).
#[inline(always)]
unsafe fn chunk<const RR: usize, const T: usize>(
    steps: [Option<Steps>; 2],
    inputs: &Inputs,
    t0: usize,
    out: Sums,
    codes: &mut impl FnMut(usize, usize) -> [__m256; 4],
) {
    let groups = inputs.groups;
    let mut acc = [[[_mm256_setzero_ps(); 2]; T]; RR];
    let x = inputs.x.as_ptr().add(t0 * groups * GROUP);
    for g in 0..groups {
        for (r, acc) in acc.iter_mut().enumerate() {
            let w = weights(steps[r], codes(r, g), g);
            for (t, acc) in acc.iter_mut().enumerate() {
                let p = x.add((t * groups + g) * GROUP);
                for (k, &w) in w.iter().enumerate() {
                    let x = _mm256_loadu_ps(p.add(8 * k));
                    acc[k % 2] = _mm256_fmadd_ps(w, x, acc[k % 2]);
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (t, acc) in acc.iter().enumerate() {
            out.add(r, t0 + t, sum(_mm256_add_ps(acc[0], acc[1])));
        }
    }
}

/// Input rows t0..t0 + T against the RR weight rows decoded in `rows` (each `inputs`' width),
/// 16 weights of each at a time: each sum the same products in the same order as [`chunk`].
/// (A function of its own: its registers are allocated apart from the decoding kernels'.)
#[target_feature(enable = "avx2,fma,f16c")]
#[inline(never)]
unsafe fn panel_chunk<const RR: usize, const T: usize>(
    rows: &[f32],
    inputs: &Inputs,
    t0: usize,
    out: Sums,
) {
    let width = inputs.groups * GROUP;
    let mut acc = [[[_mm256_setzero_ps(); 2]; RR]; T];
    let x = inputs.x.as_ptr().add(t0 * width);
    let w = rows.as_ptr();
    let mut k = 0;
    while k < width {
        for half in 0..2 {
            let at = k + 8 * half;
            let wk: [__m256; RR] = std::array::from_fn(|r| _mm256_loadu_ps(w.add(r * width + at)));
            for (t, acc) in acc.iter_mut().enumerate() {
                let xk = _mm256_loadu_ps(x.add(t * width + at));
                for (acc, &w) in acc.iter_mut().zip(&wk) {
                    acc[half] = _mm256_fmadd_ps(w, xk, acc[half]);
                }
            }
        }
        k += 16;
    }
    for (t, acc) in acc.iter().enumerate() {
        for (r, acc) in acc.iter().enumerate() {
            out.add(r, t0 + t, sum(_mm256_add_ps(acc[0], acc[1])));
        }
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
