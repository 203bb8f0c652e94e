//! 8-bit activations (`Activations::Q8`): before a product with quantized weights, each input
//! row is rounded group by group (32 values, the weights' group) to a scale and 32 codes in
//! -127..=127, x ≈ scale * code, as llama.cpp's q8_0 does. The product is then exactly
//! sum w * (scale * code); the reference computes it that way in f32, the VNNI kernels
//! (`vnni.rs`) as integer sums of weight codes times activation codes, scaled once per group.
//! [`quantize_group`] is the one rounding rule both use, so they see the same codes.

use crate::format::GROUP;

/// The largest code; codes never reach -128, so negating one stays in range.
const CODE_MAX: f32 = 127.0;

/// Rounds `x` (at most one group; a row's last group may be partial) to codes written into
/// `codes[..x.len()]`, and returns their scale: max |x| / 127, codes x * (127 / max |x|)
/// rounded to nearest, ties to even. A group of zeros has scale 0.
pub fn quantize_group(x: &[f32], codes: &mut [i8]) -> f32 {
    // The largest magnitude as the largest bit pattern without the sign (the same order for
    // non-negative floats): an integer maximum, which vectorizes.
    let amax = f32::from_bits(
        x.iter()
            .map(|v| v.to_bits() & !(1 << 31))
            .max()
            .unwrap_or(0),
    );
    if amax == 0.0 {
        codes.fill(0);
        return 0.0;
    }
    let inverse = CODE_MAX / amax;
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = nearest(v * inverse) as i8;
    }
    amax / CODE_MAX
}

/// `y` rounded to the nearest integer, ties to even, for |y| <= 2^22: adding and subtracting
/// 1.5 x 2^23 leaves no fraction bits. Plain arithmetic (no libm call, which `f32::round` is
/// on baseline x86-64), so it is fast and vectorizes.
#[inline(always)]
fn nearest(y: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    (y + SHIFT) - SHIFT
}

/// The rows of `x` (each `cols` wide) as 8-bit activations see them: every group replaced by its
/// scale times its codes.
pub fn rounded(x: &[f32], cols: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    let mut codes = [0i8; GROUP];
    for row in x.chunks(cols.max(1)) {
        for group in row.chunks(GROUP) {
            let scale = quantize_group(group, &mut codes);
            out.extend(codes[..group.len()].iter().map(|&c| scale * c as f32));
        }
    }
    out
}

/// A block's inputs as the VNNI kernels read them: per input row, groups in pairs (one 64-byte
/// vector of codes per pair; a zero group pads an odd count), each group's scale, its scale
/// times the sum of its codes (for the weights' per-group offsets), and the sums of each 4
/// consecutive codes (for formats whose codes are stored offset, see `vnni.rs`).
#[cfg(target_arch = "x86_64")]
pub struct Codes8 {
    pub n: usize,
    pub groups: usize,
    /// [input row][pair][64] codes.
    pub codes: Vec<i8>,
    /// [input row][pair][2] scales.
    pub scales: Vec<f32>,
    /// [input row][pair][16] the groups' scale x sum of codes, over 8: group g's in lanes 0..8,
    /// g + 1's in 8..16 (the lanes the VNNI kernels add a per-group offset b into, times these).
    pub sums: Vec<f32>,
    /// [input row][pair][16] sums of codes 4i..4i + 4.
    pub quads: Vec<i32>,
}

#[cfg(target_arch = "x86_64")]
impl Codes8 {
    /// `x`'s rows (laid out as [`super::operands::Inputs`]: `groups` whole groups each, zeros
    /// past the matrix width) rounded to codes.
    pub fn new(x: &super::operands::Inputs) -> Self {
        let (n, groups) = (x.n, x.groups);
        let pairs = groups.div_ceil(2);
        let mut c = Codes8 {
            n,
            groups,
            codes: vec![0; n * pairs * 2 * GROUP],
            scales: vec![0.0; n * pairs * 2],
            sums: vec![0.0; n * pairs * 16],
            quads: vec![0; n * pairs * 16],
        };
        for t in 0..n {
            for g in 0..groups {
                let at = (t * groups + g) * GROUP;
                let slot = t * pairs * 2 + g;
                let codes = &mut c.codes[slot * GROUP..(slot + 1) * GROUP];
                let scale = quantize_group(&x.x[at..at + GROUP], codes);
                let total: i32 = codes.iter().map(|&q| q as i32).sum();
                for (quad, four) in c.quads[slot * 8..(slot + 1) * 8]
                    .iter_mut()
                    .zip(codes.chunks(4))
                {
                    *quad = four.iter().map(|&q| q as i32).sum();
                }
                c.scales[slot] = scale;
                // Over 8 (exact) for the 8 lanes that add it up.
                c.sums[slot * 8..(slot + 1) * 8].fill(scale * total as f32 / 8.0);
            }
        }
        c
    }

    pub fn pairs(&self) -> usize {
        self.groups.div_ceil(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rounding rule by hand: scale max|x| / 127, codes rounded half away from zero, the
    /// largest magnitude at ±127, a zero group at scale 0, a partial group rounded alone.
    #[test]
    fn groups_round_to_a_scale_and_codes() {
        let mut codes = [0i8; GROUP];
        let x: Vec<f32> = (0..GROUP).map(|i| i as f32 - 8.0).collect(); // -8..=23
        let scale = quantize_group(&x, &mut codes);
        assert_eq!(scale, 23.0 / 127.0);
        assert_eq!(codes[31], 127);
        assert_eq!(codes[0], -44); // -8 * 127 / 23 = -44.2
        assert_eq!(
            [nearest(2.5), nearest(-3.5), nearest(0.49999997)],
            [2.0, -4.0, 0.0]
        );
        assert_eq!(quantize_group(&[0.0; 5], &mut codes[..5]), 0.0);
        assert_eq!(&codes[..5], &[0; 5]);
        let r = rounded(&[0.5, -1.0, 0.25, 2.0, 0.0, 0.0], 3);
        assert_eq!(r[1], -1.0);
        assert_eq!(r[3], 2.0);
        assert!((r[0] - 0.5).abs() <= 1.0 / 254.0 && (r[2] - 0.25).abs() <= 1.0 / 254.0);
    }
}
