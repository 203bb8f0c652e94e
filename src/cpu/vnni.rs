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
use super::simd::PREFETCH_ROWS;
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

/// A code layout these kernels unpack to bytes (by the [`Pairs`] types below, which also know
/// the offset that makes its codes unsigned).
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
/// and their `steps`) and every input row t of `x`, added into `out`. `panel` holds the
/// rows unpacked once when a block has enough input rows to reuse them.
///
/// # Safety
/// The CPU must have what [`available`] checks; every row must hold `x.groups` groups.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
pub unsafe fn dot_rows<const R: usize>(
    bytes: Bytes,
    words: usize,
    rows: [&[u32]; R],
    steps: [RowSteps; R],
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

/// A weight row's steps and offsets: as stored, for the formats whose scales are one or two
/// halves per group (read beside the codes, so they stream from memory with them), else
/// decoded (k-quants).
#[derive(Clone, Copy)]
pub enum RowSteps<'a> {
    /// q8_0: d per group, w = d q.
    Step(&'a [u16]),
    /// q4_0: d per group, w = d q - 8 d.
    Centered(&'a [u16]),
    /// q4_1: (d, m) per group, w = d q + m.
    StepMin(&'a [u16]),
    Decoded(Option<Steps<'a>>),
}

impl RowSteps<'_> {
    /// Whether the weights carry a per-group offset b (w = a q + b).
    fn offsets(&self) -> bool {
        match self {
            RowSteps::Step(_) => false,
            RowSteps::Centered(_) | RowSteps::StepMin(_) => true,
            RowSteps::Decoded(steps) => steps.is_some_and(|s| s.b.is_some()),
        }
    }
}

/// A weight row's pair of groups unpacked: 64 code bytes, and the 16 lanes' steps a and
/// offsets b (group g in lanes 0..8, g + 1 in 8..16; a per-half-group step covers 4 lanes).
#[derive(Clone, Copy)]
pub struct Unpacked(__m512i, __m512, __m512);

type Args<'a, const R: usize> = (
    usize,
    [*const u8; R],
    &'a [RowSteps<'a>; R],
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
    let offsets = steps.iter().any(RowSteps::offsets);
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
        return chunks::<R, _>(&panel, x, offsets, P::OFFSET_SHIFT, out);
    }
    chunks::<R, _>(&rows, x, offsets, P::OFFSET_SHIFT, out)
}

/// Every input row of `x`, CHUNK at a time.
#[inline(always)]
unsafe fn chunks<const R: usize, S: Source>(
    source: &S,
    x: &Codes8,
    offsets: bool,
    code_shift: Option<u32>,
    out: Sums,
) {
    let code_shift = code_shift.map(|s| _mm_cvtsi32_si128(s as i32));
    let mut t0 = 0;
    while t0 < x.n {
        match x.n - t0 {
            1 => chunk::<R, 1, S>(source, x, t0, offsets, code_shift, out),
            2 => chunk::<R, 2, S>(source, x, t0, offsets, code_shift, out),
            3 => chunk::<R, 3, S>(source, x, t0, offsets, code_shift, out),
            _ => chunk::<R, CHUNK, S>(source, x, t0, offsets, code_shift, out),
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
    steps: &'a [RowSteps<'a>; R],
    groups: usize,
    /// Bytes ahead to prefetch.
    ahead: usize,
    layout: std::marker::PhantomData<P>,
}

impl<const R: usize, P: Pairs> Source for Rows<'_, R, P> {
    #[inline(always)]
    unsafe fn pair(&self, r: usize, p: usize) -> Unpacked {
        let (g, at) = (2 * p, self.rows[r].add(2 * p * self.stride));
        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(self.ahead) as _);
        let whole = g + 1 < self.groups;
        let w = P::pair(at, self.stride, whole);
        let (a, b) = step_lanes(self.steps[r], g, whole);
        Unpacked(w, a, b)
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

/// Input rows t0..t0 + T against the R weight rows, whose pairs `source` gives: codes stored
/// 1 << `code_shift` up where they are stored offset, and per-group offsets b added where
/// `offsets`.
#[inline(always)]
unsafe fn chunk<const R: usize, const T: usize, S: Source>(
    source: &S,
    x: &Codes8,
    t0: usize,
    offsets: bool,
    code_shift: Option<__m128i>,
    out: Sums,
) {
    let pairs = x.pairs();
    let mut acc = [[_mm512_setzero_ps(); R]; T];
    for p in 0..pairs {
        let zero = _mm512_setzero_ps();
        let mut w = [Unpacked(_mm512_setzero_si512(), zero, zero); R];
        for (r, w) in w.iter_mut().enumerate() {
            *w = source.pair(r, p);
        }
        for (t, acc) in acc.iter_mut().enumerate() {
            let at = (t0 + t) * pairs + p;
            let qx = _mm512_loadu_si512(x.codes.as_ptr().add(at * 2 * GROUP) as _);
            let s = x.scales.as_ptr().add(at * 2);
            let dx = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(*s), _mm512_set1_ps(*s.add(1)));
            let start = match code_shift {
                None => _mm512_setzero_si512(),
                Some(shift) => {
                    let quads = _mm512_loadu_si512(x.quads.as_ptr().add(at * 16) as _);
                    _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_sll_epi32(quads, shift))
                }
            };
            let sums = match offsets {
                true => _mm512_loadu_ps(x.sums.as_ptr().add(at * 16)),
                false => zero,
            };
            for (acc, &Unpacked(w, a, b)) in acc.iter_mut().zip(&w) {
                let sum = _mm512_dpbusd_epi32(start, w, qx);
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(a, dx), *acc);
                if offsets {
                    *acc = _mm512_fmadd_ps(b, sums, *acc);
                }
            }
        }
    }
    for (t, acc) in acc.iter().enumerate() {
        for (r, &acc) in acc.iter().enumerate() {
            out.add(r, t0 + t, _mm512_reduce_add_ps(acc));
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
        with_high_bits(at, high, &FIFTH_BITS, 0x10)
    }
}

impl Group for I6 {
    const OFFSET_SHIFT: Option<u32> = Some(5);
    #[inline(always)]
    unsafe fn group(at: *const u8) -> __m256i {
        let high = (at.add(16) as *const i64).read_unaligned();
        with_high_bits(at, high, &HIGH_PAIRS, 0x30)
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

/// The steps a and offsets b of groups g and g + 1 in the lanes their sums land in (see
/// [`Unpacked`]); without a second group its lanes are 0.
#[inline(always)]
unsafe fn step_lanes(steps: RowSteps, g: usize, whole: bool) -> (__m512, __m512) {
    let zero = _mm512_setzero_ps();
    match steps {
        RowSteps::Step(s) => (spread(halves(s, 1, g, whole), 0, 1, whole), zero),
        RowSteps::Centered(s) => {
            let a = spread(halves(s, 1, g, whole), 0, 1, whole);
            (a, _mm512_mul_ps(a, _mm512_set1_ps(-8.0)))
        }
        RowSteps::StepMin(s) => {
            let dm = halves(s, 2, g, whole);
            (spread(dm, 0, 2, whole), spread(dm, 1, 3, whole))
        }
        RowSteps::Decoded(None) => (_mm512_set1_ps(1.0), zero),
        RowSteps::Decoded(Some(steps)) => {
            let mask = if whole { 0b11 } else { 0b01 };
            let b = match steps.b {
                Some(b) => {
                    let two = _mm_maskz_loadu_ps(mask, b.as_ptr().add(g));
                    spread(_mm512_castps128_ps512(two), 0, 1, whole)
                }
                None => zero,
            };
            let a = steps.a.as_ptr();
            if steps.per_half {
                let four = _mm_maskz_loadu_ps(if whole { 0b1111 } else { 0b0011 }, a.add(2 * g));
                let lanes = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
                return (
                    _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(four)),
                    b,
                );
            }
            let two = _mm_maskz_loadu_ps(mask, a.add(g));
            (spread(_mm512_castps128_ps512(two), 0, 1, whole), b)
        }
    }
}

/// The halves of groups g (and g + 1 if `whole`), `per_group` of them each, as f32 from lane 0.
#[inline(always)]
unsafe fn halves(scales: &[u16], per_group: usize, g: usize, whole: bool) -> __m512 {
    let n = per_group * if whole { 2 } else { 1 };
    let at = scales.as_ptr().add(per_group * g);
    _mm512_cvtph_ps(_mm256_maskz_loadu_epi16((1 << n) - 1, at as _))
}

/// Lane `first` of `v` in lanes 0..8 and lane `second` in 8..16 (0 there unless `whole`).
#[inline(always)]
unsafe fn spread(v: __m512, first: i32, second: i32, whole: bool) -> __m512 {
    let (f, s) = (first, second);
    let lanes = _mm512_setr_epi32(f, f, f, f, f, f, f, f, s, s, s, s, s, s, s, s);
    let v = _mm512_permutexvar_ps(lanes, v);
    if whole {
        v
    } else {
        _mm512_maskz_mov_ps(0x00FF, v)
    }
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

/// A group's nibbles with their high bits, which `control` gathers from `high` to the bits
/// `mask` keeps.
#[inline(always)]
unsafe fn with_high_bits(at: *const u8, high: i64, control: &[u8; 32], mask: i8) -> __m256i {
    let control = _mm256_loadu_si256(control.as_ptr() as _);
    let bits = _mm256_multishift_epi64_epi8(control, _mm256_set1_epi64x(high));
    _mm256_or_si256(
        U4::group(at),
        _mm256_and_si256(bits, _mm256_set1_epi8(mask)),
    )
}
