//! The operands of the fast backend's vector kernels (`simd.rs`, `avx2.rs`, `avx512.rs`), in
//! a module of their own so the kernels and their dispatch depend on it rather than on each
//! other: the inputs, a weight row's decoded scales, how a group's codes are laid out, and where
//! the sums go. Only [`Sums`] serves the portable loop too (ARM, wasm).

/// The inputs of a product, laid out for the kernels: `n` rows of `groups` x 32 values (zeros
/// past the matrix width, so no group is partial).
#[cfg(target_arch = "x86_64")]
pub struct Inputs {
    pub n: usize,
    pub groups: usize,
    pub x: Vec<f32>,
}

#[cfg(target_arch = "x86_64")]
impl Inputs {
    pub fn new(x: &[f32], cols: usize) -> Self {
        use crate::format::GROUP;
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
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub struct Steps<'a> {
    pub a: &'a [f32],
    pub b: Option<&'a [f32]>,
    pub per_half: bool,
}

/// How a group's 32 codes lie in its words, which is all a vector kernel decodes (the scales
/// are decoded apart, into [`Steps`]). Formats share a layout where only their scales differ.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codes {
    /// 32 f32 (the codes are the weights).
    F32,
    /// 32 halves.
    F16,
    /// 32 bfloat16.
    Bf16,
    /// 32 signed bytes.
    I8,
    /// 16 bytes of nibbles: byte i holds element i low and element i + 16 high.
    U4,
    /// `U4`, and bit i of the group's fifth word is element i's fifth bit (q5_k).
    U5,
    /// `U4`, and two high bits per element in words 4 (elements 0..16) and 5 (16..32), the
    /// whole less 32 (q6_k).
    I6,
}

/// Where a product's sums go: weight row r's sum for input row t is added at `ptr[r + t *
/// stride]` (the product's own layout, [input row][weight row]). The tasks of a product share
/// it, each adding only to its own weight rows.
#[derive(Clone, Copy)]
pub struct Sums {
    ptr: *mut f32,
    stride: usize,
}

// SAFETY: tasks write disjoint weight rows (see `Fast::matmul`).
unsafe impl Send for Sums {}
unsafe impl Sync for Sums {}

impl Sums {
    /// Sums for `out`, laid out [input row][weight row] with `stride` weight rows.
    pub fn new(out: &mut [f32], stride: usize) -> Self {
        Sums {
            ptr: out.as_mut_ptr(),
            stride,
        }
    }

    /// The same sums from weight row `r` on.
    ///
    /// # Safety
    /// Row `r` must be within the output.
    #[inline(always)]
    pub unsafe fn at_row(self, r: usize) -> Self {
        Sums {
            ptr: self.ptr.add(r),
            ..self
        }
    }

    /// Adds `v` to weight row `r`'s sum for input `t`.
    ///
    /// # Safety
    /// (r, t) must be within the output, and row `r` this task's.
    #[inline(always)]
    pub unsafe fn add(self, r: usize, t: usize, v: f32) {
        *self.ptr.add(r + t * self.stride) += v;
    }
}
