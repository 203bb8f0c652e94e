//! Products of quantized weights with 8-bit activations (`activations.rs`) on AVX-512 VNNI:
//! `vpdpbusd` multiplies 64 unsigned weight codes by 64 signed activation codes and adds each
//! four products into one of 16 i32 lanes, so two groups of 32 take one instruction where f32
//! takes four FMAs, and the weights are only unpacked to bytes, never converted to floats.
//!
//! Per pair of groups and (weight row, input row), the lanes' integer sums are exact; they are
//! converted to f32 and scaled by the weight step times the activation scale of their group (or
//! half group), then summed into 16 f32 lanes; a format with a per-group offset b (w = a q + b)
//! adds b times the group's scale x sum of codes. Every (weight row, input row) sum takes the
//! same operations in the same order however many rows a call carries, so a verification
//! block gives the same bits as one-token steps (greedy self-speculation equals autoregression).
//!
//! Codes stored signed are made unsigned by an offset (q6_k: q + 32, q8_0: q + 128); the offset
//! times each lane's sum of activation codes is subtracted exactly, in the integer sum.

use super::activations::Codes8;
use super::operands::{Codes, Steps, Sums};
use crate::format::GROUP;
use std::arch::x86_64::*;

/// Whether this CPU has the instructions the kernels use (AVX-512 VNNI, and VBMI for the bit
/// gathers of q5_k and q6_k codes).
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx512vbmi")
}

/// A code layout these kernels unpack to bytes, with the offset that makes its codes unsigned
/// (as a shift: the offset is 1 << shift).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bytes {
    U4,
    U5,
    I6,
    I8,
}

impl Bytes {
    /// The byte layout of `codes`, if it is a quantized one.
    pub fn of(codes: Codes) -> Option<Bytes> {
        match codes {
            Codes::U4 => Some(Bytes::U4),
            Codes::U5 => Some(Bytes::U5),
            Codes::I6 => Some(Bytes::I6),
            Codes::I8 => Some(Bytes::I8),
            Codes::F32 | Codes::F16 | Codes::Bf16 => None,
        }
    }
}

/// sum_k w[r, k] x̂[t, k] for the weight rows `rows` (groups of `words` words in layout `bytes`,
/// and their decoded `steps`) and every input row t of `x`, added into `out`. `panel` holds the
/// rows unpacked once when a block has enough input rows to reuse them.
///
/// # Safety
/// The CPU must have what [`available`] checks; every row must hold `x.groups` groups.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
pub unsafe fn dot_rows<const R: usize>(
    bytes: Bytes,
    words: usize,
    rows: [&[u32]; R],
    steps: [Option<Steps>; R],
    x: &Codes8,
    panel: &mut Vec<Unpacked>,
    out: Sums,
) {
    let rows = rows.map(|r| r.as_ptr() as *const u8);
    let stride = 4 * words;
    let args = (stride, rows, &steps, x, panel, out);
    match bytes {
        Bytes::U4 if stride == 16 => for_chunks::<R, U4>(args),
        Bytes::I8 if stride == 32 => for_chunks::<R, I8>(args),
        Bytes::U4 => for_chunks::<R, ByGroup<U4>>(args),
        Bytes::I8 => for_chunks::<R, ByGroup<I8>>(args),
        Bytes::U5 => for_chunks::<R, ByGroup<U5>>(args),
        Bytes::I6 => for_chunks::<R, ByGroup<I6>>(args),
    }
}

/// A weight row's pair of groups unpacked: 64 code bytes and the 16 lanes' steps.
#[derive(Clone, Copy)]
pub struct Unpacked(__m512i, __m512);

type Args<'a, const R: usize> = (
    usize,
    [*const u8; R],
    &'a [Option<Steps<'a>>; R],
    &'a Codes8,
    &'a mut Vec<Unpacked>,
    Sums,
);

/// The input rows in chunks, the weight rows unpacked per chunk, or once into the panel from
/// [`PANEL_INPUTS`] input rows on (a prompt, a long verification): the same values summed in
/// the same order either way, so the results are the same bits.
#[inline(always)]
unsafe fn for_chunks<const R: usize, P: Pairs>(args: Args<R>) {
    let (stride, rows, steps, x, panel, out) = args;
    let pairs = x.pairs();
    let rows = Rows::<R, P> {
        rows,
        stride,
        steps,
        groups: x.groups,
        ahead: PREFETCH_ROWS * x.groups * stride,
        layout: std::marker::PhantomData,
    };
    if x.n >= PANEL_INPUTS {
        panel.clear();
        // Loops, not iterator adapters: their closures would not inline the intrinsics.
        for r in 0..R {
            for p in 0..pairs {
                panel.push(rows.pair(r, p));
            }
        }
        let panel = Panel { panel, pairs };
        return chunks::<R, _>(&panel, x, steps, P::OFFSET_SHIFT, out);
    }
    chunks::<R, _>(&rows, x, steps, P::OFFSET_SHIFT, out)
}

/// Every input row of `x`, CHUNK at a time.
#[inline(always)]
unsafe fn chunks<const R: usize, S: Source>(
    source: &S,
    x: &Codes8,
    steps: &[Option<Steps>; R],
    offset: Option<u32>,
    out: Sums,
) {
    let offset = offset.map(|s| _mm_cvtsi32_si128(s as i32));
    let mut t0 = 0;
    while t0 < x.n {
        match x.n - t0 {
            1 => chunk::<R, 1, S>(source, x, t0, steps, offset, out),
            2 => chunk::<R, 2, S>(source, x, t0, steps, offset, out),
            3 => chunk::<R, 3, S>(source, x, t0, steps, offset, out),
            _ => chunk::<R, CHUNK, S>(source, x, t0, steps, offset, out),
        }
        t0 += CHUNK;
    }
}

/// Where a chunk gets weight row r's pair p unpacked. (Traits, not closures: a closure does not
/// inherit its caller's target features, and called out of line its intrinsics are calls.)
trait Source {
    unsafe fn pair(&self, r: usize, p: usize) -> Unpacked;
}

/// Unpacked from the rows as they are stored.
struct Rows<'a, const R: usize, P> {
    rows: [*const u8; R],
    stride: usize,
    steps: &'a [Option<Steps<'a>>; R],
    groups: usize,
    /// Bytes ahead to prefetch.
    ahead: usize,
    layout: std::marker::PhantomData<P>,
}

impl<const R: usize, P: Pairs> Source for Rows<'_, R, P> {
    #[inline(always)]
    unsafe fn pair(&self, r: usize, p: usize) -> Unpacked {
        let (g, at) = (2 * p, self.rows[r].add(2 * p * self.stride));
        _mm_prefetch::<_MM_HINT_T0>(at.add(self.ahead) as _);
        let whole = g + 1 < self.groups;
        let w = P::pair(at, self.stride, whole);
        Unpacked(w, step_lanes(self.steps[r], g, whole))
    }
}

/// Read from a panel unpacked once.
struct Panel<'a> {
    panel: &'a [Unpacked],
    pairs: usize,
}

impl Source for Panel<'_> {
    #[inline(always)]
    unsafe fn pair(&self, r: usize, p: usize) -> Unpacked {
        *self.panel.get_unchecked(r * self.pairs + p)
    }
}

/// Input rows one chunk keeps sums of in registers: R x CHUNK sums beside R unpacked pairs and
/// R step vectors, within the 32 registers.
const CHUNK: usize = 4;

/// Input rows from which the weight rows are unpacked once into a panel.
const PANEL_INPUTS: usize = 5;

/// How far ahead (in weight rows of the same task) the next rows' bytes are fetched into the
/// cache: the rows stream from memory once per product, and without a hint the loads wait on
/// it (the exit head, 30 MB in q8_0 for SmolLM2, went from 6.6 to 4.2 ms on one thread).
pub const PREFETCH_ROWS: usize = 8;

/// Input rows t0..t0 + T against the R weight rows, whose pairs `source` gives (the codes
/// `offset` up, as a shift count, where they are stored offset).
#[inline(always)]
unsafe fn chunk<const R: usize, const T: usize, S: Source>(
    source: &S,
    x: &Codes8,
    t0: usize,
    steps: &[Option<Steps>; R],
    offset: Option<__m128i>,
    out: Sums,
) {
    let (groups, pairs) = (x.groups, x.pairs());
    let mut acc = [[_mm512_setzero_ps(); R]; T];
    for p in 0..pairs {
        let mut w = [Unpacked(_mm512_setzero_si512(), _mm512_setzero_ps()); R];
        for (r, w) in w.iter_mut().enumerate() {
            *w = source.pair(r, p);
        }
        for (t, acc) in acc.iter_mut().enumerate() {
            let at = (t0 + t) * pairs + p;
            let qx = _mm512_loadu_si512(x.codes.as_ptr().add(at * 2 * GROUP) as _);
            let s = x.scales.as_ptr().add(at * 2);
            let dx = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(*s), _mm512_set1_ps(*s.add(1)));
            let start = match offset {
                None => _mm512_setzero_si512(),
                Some(shift) => {
                    let quads = _mm512_loadu_si512(x.quads.as_ptr().add(at * 16) as _);
                    _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_sll_epi32(quads, shift))
                }
            };
            for (acc, &Unpacked(w, a)) in acc.iter_mut().zip(&w) {
                let sum = _mm512_dpbusd_epi32(start, w, qx);
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(a, dx), *acc);
            }
        }
    }
    for (t, acc) in acc.iter().enumerate() {
        let sums = x.sums.as_ptr().add((t0 + t) * x.sum_stride);
        for (r, &acc) in acc.iter().enumerate() {
            let mut sum = acc;
            if let Some(b) = steps[r].and_then(|s| s.b) {
                let mut g = 0;
                while g < groups {
                    let left = (groups - g).min(16);
                    let mask = ((1u32 << left) - 1) as u16;
                    let bs = _mm512_maskz_loadu_ps(mask, b.as_ptr().add(g));
                    sum = _mm512_fmadd_ps(bs, _mm512_loadu_ps(sums.add(g)), sum);
                    g += 16;
                }
            }
            out.add(r, t0 + t, _mm512_reduce_add_ps(sum));
        }
    }
}

/// How a code layout unpacks two groups (g from `at`, and g + 1 a `stride` on unless the row
/// ends first) into 64 unsigned bytes, and the offset its codes carry.
trait Pairs {
    const OFFSET_SHIFT: Option<u32>;
    unsafe fn pair(at: *const u8, stride: usize, whole: bool) -> __m512i;
}

/// A layout unpacked one group at a time.
trait Group {
    const OFFSET_SHIFT: Option<u32>;
    unsafe fn group(at: *const u8) -> __m256i;
}

struct ByGroup<G>(G);

impl<G: Group> Pairs for ByGroup<G> {
    const OFFSET_SHIFT: Option<u32> = G::OFFSET_SHIFT;
    #[inline(always)]
    unsafe fn pair(at: *const u8, stride: usize, whole: bool) -> __m512i {
        let second = if whole {
            G::group(at.add(stride))
        } else {
            _mm256_setzero_si256()
        };
        _mm512_inserti64x4(_mm512_castsi256_si512(G::group(at)), second, 1)
    }
}

/// Nibbles: byte i holds element i low and element i + 16 high.
struct U4;
/// Nibbles, and bit i of the group's fifth word is element i's bit 4 (q5_k).
struct U5;
/// Nibbles, and bits 2i..2i + 2 of words 4 and 5 (as one 64-bit word) are element i's bits
/// 4..6; the codes are stored 32 up (q6_k).
struct I6;
/// Signed bytes, made unsigned by flipping the sign bit: 128 up (q8_0).
struct I8;

impl Group for U4 {
    const OFFSET_SHIFT: Option<u32> = None;
    #[inline(always)]
    unsafe fn group(at: *const u8) -> __m256i {
        let v = _mm_loadu_si128(at as _);
        let both = _mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1);
        _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
    }
}

impl Pairs for U4 {
    const OFFSET_SHIFT: Option<u32> = None;
    /// Two adjacent groups' 32 bytes in one load: low and high nibbles are put in element order
    /// by one permutation of 128-bit quarters.
    #[inline(always)]
    unsafe fn pair(at: *const u8, _: usize, whole: bool) -> __m512i {
        if !whole {
            return ByGroup::<U4>::pair(at, 16, false);
        }
        let v = _mm256_loadu_si256(at as _);
        let (low, high) = (
            _mm512_castsi256_si512(v),
            _mm512_castsi256_si512(_mm256_srli_epi16(v, 4)),
        );
        let order = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
        _mm512_and_si512(
            _mm512_permutex2var_epi64(low, order, high),
            _mm512_set1_epi8(0x0F),
        )
    }
}

impl Group for U5 {
    const OFFSET_SHIFT: Option<u32> = None;
    #[inline(always)]
    unsafe fn group(at: *const u8) -> __m256i {
        let high = (at.add(16) as *const u32).read_unaligned() as i64;
        let bits = _mm256_multishift_epi64_epi8(control(&FIFTH_BITS), _mm256_set1_epi64x(high));
        _mm256_or_si256(
            U4::group(at),
            _mm256_and_si256(bits, _mm256_set1_epi8(0x10)),
        )
    }
}

impl Group for I6 {
    const OFFSET_SHIFT: Option<u32> = Some(5);
    #[inline(always)]
    unsafe fn group(at: *const u8) -> __m256i {
        let high = (at.add(16) as *const i64).read_unaligned();
        let bits = _mm256_multishift_epi64_epi8(control(&HIGH_PAIRS), _mm256_set1_epi64x(high));
        _mm256_or_si256(
            U4::group(at),
            _mm256_and_si256(bits, _mm256_set1_epi8(0x30)),
        )
    }
}

impl Group for I8 {
    const OFFSET_SHIFT: Option<u32> = Some(7);
    #[inline(always)]
    unsafe fn group(at: *const u8) -> __m256i {
        _mm256_xor_si256(_mm256_loadu_si256(at as _), _mm256_set1_epi8(i8::MIN))
    }
}

impl Pairs for I8 {
    const OFFSET_SHIFT: Option<u32> = Some(7);
    /// Two adjacent groups are 64 contiguous bytes.
    #[inline(always)]
    unsafe fn pair(at: *const u8, _: usize, whole: bool) -> __m512i {
        if !whole {
            return ByGroup::<I8>::pair(at, 32, false);
        }
        _mm512_xor_si512(_mm512_loadu_si512(at as _), _mm512_set1_epi8(i8::MIN))
    }
}

/// The weight steps of groups g and g + 1 in the lanes their sums land in: lanes 0..8 hold
/// group g (elements 4i..4i + 4 in lane i), 8..16 group g + 1; a per-half-group step (q6_k)
/// covers 4 lanes. Without a second group its lanes are 0.
#[inline(always)]
unsafe fn step_lanes(steps: Option<Steps>, g: usize, whole: bool) -> __m512 {
    let Some(steps) = steps else {
        return _mm512_set1_ps(1.0);
    };
    let a = steps.a.as_ptr();
    if steps.per_half {
        let four = _mm_maskz_loadu_ps(if whole { 0b1111 } else { 0b0011 }, a.add(2 * g));
        let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        return _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(four));
    }
    let second = if whole {
        _mm512_set1_ps(*a.add(g + 1))
    } else {
        _mm512_setzero_ps()
    };
    _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(*a.add(g)), second)
}

/// `vpmultishiftqb` controls: byte i of the result is the 8 bits of its 64-bit word from bit
/// `control[i]` on (wrapping), placed so the wanted bits land at bit 4.
const FIFTH_BITS: [u8; 32] = controls(1);
const HIGH_PAIRS: [u8; 32] = controls(2);

const fn controls(bits_per_element: usize) -> [u8; 32] {
    let mut c = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        c[i] = ((bits_per_element * i + 64 - 4) % 64) as u8;
        i += 1;
    }
    c
}

#[inline(always)]
unsafe fn control(bits: &[u8; 32]) -> __m256i {
    _mm256_loadu_si256(bits.as_ptr() as _)
}
