//! The fast backend's weight-row products in vector registers on x86-64 (AVX-512 where the CPU
//! has it, else AVX2 with FMA and F16C; detected at run time). Weights are never widened to f32
//! copies: each 32-element group is decoded in registers to its codes as f32 (or its floats), and
//! a group's values are w_i = a q_i + b (a and b per half group, for q6_k's 16-element scales),
//! so
//!
//!     sum_i w_i x_i = sum_i (a q_i) x_i + b0 S0 + b1 S1,
//!
//! where S0, S1 are the input's half-group sums, computed once per product ([`Inputs`]), and
//! a q_i is formed once per group for all input rows. Products accumulate in f32 vector
//! registers per input row and are added up once per weight row, so the arithmetic is f32
//! throughout (no 8-bit activations, unlike llama.cpp): results differ from the plain loop by
//! rounding order only.

use crate::format::{half_to_f32, k_scale_min, Format, GROUP, SUPER_GROUPS};

/// The vector instructions a product runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx2,
    Avx512,
}

impl Isa {
    /// The widest this CPU has, if any.
    pub fn detect() -> Option<Isa> {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
            return Some(Isa::Avx512);
        }
        let avx2 = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        avx2.then_some(Isa::Avx2)
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx2 => "AVX2",
            Isa::Avx512 => "AVX-512",
        }
    }
}

/// The inputs of a product, laid out for the kernels: `n` rows of `groups` x 32 values (zeros
/// past the matrix width, so no group is partial) and each group's two half sums.
pub struct Inputs {
    pub n: usize,
    pub groups: usize,
    pub x: Vec<f32>,
    pub sums: Vec<f32>,
}

impl Inputs {
    pub fn new(x: &[f32], cols: usize) -> Self {
        let groups = cols.div_ceil(GROUP);
        let n = x.len() / cols.max(1);
        let mut padded = vec![0f32; n * groups * GROUP];
        for (src, dst) in x.chunks(cols.max(1)).zip(padded.chunks_mut(groups * GROUP)) {
            dst[..src.len()].copy_from_slice(src);
        }
        let sums = padded
            .chunks(GROUP / 2)
            .map(|half| half.iter().sum())
            .collect();
        Inputs {
            n,
            groups,
            x: padded,
            sums,
        }
    }
}

/// Group `g`'s values as w = a q + b per half, for the codes q the kernels decode (q6_k's
/// already less 32): ([a0, a1], [b0, b1]).
#[inline(always)]
pub fn affine(format: Format, scales: &[u16], g: usize) -> ([f32; 2], [f32; 2]) {
    match format {
        Format::F32 | Format::F16 | Format::Bf16 => ([1.0; 2], [0.0; 2]),
        Format::Q8 => ([half_to_f32(scales[g]); 2], [0.0; 2]),
        Format::Q4 => {
            let d = half_to_f32(scales[g]);
            ([d; 2], [-8.0 * d; 2])
        }
        Format::Q4_1 => (
            [half_to_f32(scales[2 * g]); 2],
            [half_to_f32(scales[2 * g + 1]); 2],
        ),
        Format::Q4K | Format::Q5K => {
            let sb = &scales[g / SUPER_GROUPS * 8..][..8];
            let (s, m) = k_scale_min(&sb[2..], g % SUPER_GROUPS);
            (
                [half_to_f32(sb[0]) * s as f32; 2],
                [-half_to_f32(sb[1]) * m as f32; 2],
            )
        }
        Format::Q6K => {
            let sb = &scales[g / SUPER_GROUPS * 10..][..10];
            let d = half_to_f32(sb[8]);
            let pair = sb[g % SUPER_GROUPS];
            (
                [
                    pair as u8 as i8 as f32 * d,
                    (pair >> 8) as u8 as i8 as f32 * d,
                ],
                [0.0; 2],
            )
        }
    }
}

/// sum_k w[k] x[t, k] for every input row t, added into `out[t]`, for one weight row in
/// `format`: `data` its words, `scales` its scales.
///
/// # Safety
/// The CPU must have `isa` ([`Isa::detect`]); `data` and `scales` must hold a whole row of
/// `format` with `inputs.groups` groups, and `out` at least `inputs.n` values.
pub unsafe fn dot_row(
    isa: Isa,
    format: Format,
    data: &[u32],
    scales: &[u16],
    inputs: &Inputs,
    out: &mut [f32],
) {
    match isa {
        Isa::Avx2 => super::avx2::dot_row(format, data, scales, inputs, out),
        Isa::Avx512 => super::avx512::dot_row(format, data, scales, inputs, out),
    }
}
