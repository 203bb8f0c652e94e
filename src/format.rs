//! Weight formats: how a matrix is laid out in memory, the same way on the host (the CPU backend)
//! and in GPU buffers. Adding a format means a variant here (sizes, packing, dequantization), one
//! include in shaders/formats/, and nothing in the model code.
//!
//! Every row is padded with zeros to whole groups of [`GROUP`] elements, so kernels work in
//! groups and any matrix width works. Per group:
//! - `f32`: 32 little-endian f32 (128 bytes).
//! - `f16`, `bf16`: 32 halves, two per u32, element 2i in the low half (64 bytes). These keep the
//!   checkpoint's bytes, so no `shader-f16` is needed anywhere.
//! - `q8` (Q8_0): 32 signed bytes q and one f16 scale d; x = q * d, d = max|x| / 127.
//! - `q4` (Q4_0): 32 four-bit values q (0..15) and one f16 scale d; x = (q - 8) * d, where
//!   d = m / -8 for the group's value m of largest magnitude. As in llama.cpp's Q4_0, byte i of
//!   the group holds element i in its low nibble and element i + 16 in its high nibble, so the low
//!   and the high nibbles each unpack to 16 consecutive elements (no interleaving shuffles).
//!
//! Scales live in a second buffer of f16, one per group, each row's padded to a whole u32 (GPU
//! copies move multiples of 4 bytes).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Elements per group (and per quantization block).
pub const GROUP: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    F32,
    F16,
    Bf16,
    Q8,
    Q4,
}

/// The quantized formats, as `--quantize` and `quantization_config` name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::ValueEnum))]
pub enum Quantization {
    Q8,
    Q4,
}

impl From<Quantization> for Format {
    fn from(q: Quantization) -> Self {
        match q {
            Quantization::Q8 => Format::Q8,
            Quantization::Q4 => Format::Q4,
        }
    }
}

impl Quantization {
    pub fn name(self) -> &'static str {
        Format::from(self).name()
    }
}

/// Precision of the KV cache. f16 halves its memory (keys and values are rounded to half
/// precision as they are stored); f32 keeps them exact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(not(target_arch = "wasm32"), derive(clap::ValueEnum))]
pub enum KvFormat {
    #[default]
    F16,
    F32,
}

impl KvFormat {
    pub fn bytes_per_value(self) -> usize {
        match self {
            KvFormat::F16 => 2,
            KvFormat::F32 => 4,
        }
    }

    /// A value as the cache holds it.
    pub fn round(self, x: f32) -> f32 {
        match self {
            KvFormat::F16 => f16_to_f32(f32_to_f16(x)),
            KvFormat::F32 => x,
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::fmt::Display for Quantization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::fmt::Display for KvFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvFormat::F16 => "f16",
            KvFormat::F32 => "f32",
        })
    }
}

/// A float tensor's element type in a checkpoint file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatType {
    F32,
    F16,
    Bf16,
}

impl FloatType {
    pub fn of(dtype: safetensors::Dtype) -> Option<Self> {
        match dtype {
            safetensors::Dtype::F32 => Some(FloatType::F32),
            safetensors::Dtype::F16 => Some(FloatType::F16),
            safetensors::Dtype::BF16 => Some(FloatType::Bf16),
            _ => None,
        }
    }

    pub fn size(self) -> usize {
        match self {
            FloatType::F32 => 4,
            FloatType::F16 | FloatType::Bf16 => 2,
        }
    }

    /// The runtime format that keeps these bytes as they are.
    pub fn format(self) -> Format {
        match self {
            FloatType::F32 => Format::F32,
            FloatType::F16 => Format::F16,
            FloatType::Bf16 => Format::Bf16,
        }
    }

    /// One element's little-endian bytes as f32.
    pub fn read(self, b: &[u8]) -> f32 {
        match self {
            FloatType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            FloatType::F16 => f16_to_f32(u16::from_le_bytes([b[0], b[1]])),
            FloatType::Bf16 => f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16),
        }
    }

    /// Little-endian values as f32.
    pub fn to_f32(self, bytes: &[u8]) -> Vec<f32> {
        bytes
            .chunks_exact(self.size())
            .map(|b| self.read(b))
            .collect()
    }

    /// The first NaN or infinity, as (element, value). Half types are checked on their bits (an
    /// all-ones exponent), without converting.
    pub fn find_non_finite(self, bytes: &[u8]) -> Option<(usize, f32)> {
        let half = |mask: u16| {
            bytes
                .chunks_exact(2)
                .position(|b| u16::from_le_bytes([b[0], b[1]]) & mask == mask)
        };
        let at = match self {
            FloatType::F32 => bytes
                .chunks_exact(4)
                .position(|b| !self.read(b).is_finite()),
            FloatType::F16 => half(0x7c00),
            FloatType::Bf16 => half(0x7f80),
        }?;
        Some((at, self.read(&bytes[at * self.size()..])))
    }
}

/// Rows in a format: `data` and (for quantized formats) `scales`, each row padded to whole groups.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Packed {
    pub data: Vec<u8>,
    pub scales: Vec<u8>,
}

impl Packed {
    pub fn bytes(&self) -> usize {
        self.data.len() + self.scales.len()
    }

    /// The given rows (of `cols` columns in `format`), in that order.
    pub fn gather(&self, format: Format, cols: usize, rows: impl Iterator<Item = usize>) -> Packed {
        let (d, s) = (format.row_data_bytes(cols), format.row_scale_bytes(cols));
        let mut out = Packed::default();
        for r in rows {
            out.data.extend_from_slice(&self.data[r * d..(r + 1) * d]);
            out.scales
                .extend_from_slice(&self.scales[r * s..(r + 1) * s]);
        }
        out
    }

    /// The data as little-endian u32 words (rows are whole groups, so whole words).
    pub fn words(&self) -> Vec<u32> {
        self.data
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    /// The scales as f16 bits.
    pub fn halves(&self) -> Vec<u16> {
        self.scales
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect()
    }
}

pub fn groups(cols: usize) -> usize {
    cols.div_ceil(GROUP)
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::F32 => "f32",
            Format::F16 => "f16",
            Format::Bf16 => "bf16",
            Format::Q8 => "q8",
            Format::Q4 => "q4",
        }
    }

    /// The shader include that reads this format: it declares the weight bindings and
    /// `w_group(row, group)`.
    pub fn shader_include(self) -> &'static str {
        match self {
            Format::F32 => "formats/f32.wgsl",
            Format::F16 => "formats/f16.wgsl",
            Format::Bf16 => "formats/bf16.wgsl",
            Format::Q8 => "formats/q8.wgsl",
            Format::Q4 => "formats/q4.wgsl",
        }
    }

    pub fn quantized(self) -> bool {
        matches!(self, Format::Q8 | Format::Q4)
    }

    /// Data bytes of one group.
    pub fn group_bytes(self) -> usize {
        match self {
            Format::F32 => 4 * GROUP,
            Format::F16 | Format::Bf16 => 2 * GROUP,
            Format::Q8 => GROUP,
            Format::Q4 => GROUP / 2,
        }
    }

    /// Bytes of one row's data.
    pub fn row_data_bytes(self, cols: usize) -> usize {
        groups(cols) * self.group_bytes()
    }

    /// Bytes of one row's scales (an f16 per group, padded to 4 bytes; none for float formats).
    pub fn row_scale_bytes(self, cols: usize) -> usize {
        if self.quantized() {
            4 * groups(cols).div_ceil(2)
        } else {
            0
        }
    }

    /// Bytes of one row's scales in a checkpoint file (an f16 per group, no padding).
    pub fn file_scale_bytes(self, cols: usize) -> usize {
        if self.quantized() {
            2 * groups(cols)
        } else {
            0
        }
    }

    /// Bytes of `rows` rows of `cols`, data and scales (checked: a caller may size a buffer by it).
    pub fn bytes(self, rows: usize, cols: usize) -> Option<u64> {
        (rows as u64).checked_mul((self.row_data_bytes(cols) + self.row_scale_bytes(cols)) as u64)
    }

    /// Packs f32 rows of `cols` values.
    pub fn pack(self, values: &[f32], cols: usize) -> Result<Packed> {
        let rows = values.len() / cols.max(1);
        let mut out = Packed {
            data: Vec::with_capacity(rows * self.row_data_bytes(cols)),
            scales: Vec::with_capacity(rows * self.row_scale_bytes(cols)),
        };
        let mut group = [0f32; GROUP];
        for row in values.chunks(cols.max(1)) {
            for chunk in row.chunks(GROUP) {
                group.fill(0.0);
                group[..chunk.len()].copy_from_slice(chunk);
                self.pack_group(&group, &mut out)?;
            }
            if self.quantized() && groups(cols) % 2 == 1 {
                out.scales.extend([0, 0]);
            }
        }
        Ok(out)
    }

    fn pack_group(self, g: &[f32; GROUP], out: &mut Packed) -> Result<()> {
        match self {
            Format::F32 => g.iter().for_each(|x| out.data.extend(x.to_le_bytes())),
            Format::F16 => g
                .iter()
                .for_each(|&x| out.data.extend(f32_to_f16(x).to_le_bytes())),
            Format::Bf16 => g
                .iter()
                .for_each(|&x| out.data.extend(f32_to_bf16(x).to_le_bytes())),
            Format::Q8 => {
                let amax = g.iter().fold(0f32, |m, x| m.max(x.abs()));
                let d = scale(amax / 127.0)?;
                out.scales.extend(f32_to_f16(d).to_le_bytes());
                let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
                out.data.extend(
                    g.iter()
                        .map(|x| (x * inv).round().clamp(-127.0, 127.0) as i8 as u8),
                );
            }
            Format::Q4 => {
                // The value of largest magnitude maps to -8 exactly, as in Q4_0.
                let m = g
                    .iter()
                    .fold(0f32, |m, &x| if x.abs() > m.abs() { x } else { m });
                let d = scale(m / -8.0)?;
                out.scales.extend(f32_to_f16(d).to_le_bytes());
                let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
                let q = |x: f32| ((x * inv + 8.5).floor().clamp(0.0, 15.0)) as u8;
                out.data
                    .extend((0..GROUP / 2).map(|i| q(g[i]) | (q(g[i + GROUP / 2]) << 4)));
            }
        }
        Ok(())
    }

    /// Dequantizes (or widens) one group: its data as little-endian u32 words (`group_bytes()`
    /// / 4 of them, laid out as the GPU reads them) and, for quantized formats, its scale. The
    /// CPU's dequantization of this format, used by the reference and, inside its dot products,
    /// by the fast backend; it mirrors shaders/formats/*.wgsl word for word.
    #[inline(always)]
    pub fn unpack_group(self, words: &[u32], scale: f32, out: &mut [f32; GROUP]) {
        match self {
            Format::F32 => {
                for (o, &w) in out.iter_mut().zip(words) {
                    *o = f32::from_bits(w);
                }
            }
            Format::F16 => {
                for (pair, &w) in out.chunks_exact_mut(2).zip(words) {
                    pair[0] = half_to_f32(w as u16);
                    pair[1] = half_to_f32((w >> 16) as u16);
                }
            }
            Format::Bf16 => {
                for (pair, &w) in out.chunks_exact_mut(2).zip(words) {
                    pair[0] = f32::from_bits(w << 16);
                    pair[1] = f32::from_bits(w & 0xffff_0000);
                }
            }
            // Byte by byte (the words' little-endian bytes, in element order), in the shapes the
            // compiler turns into whole-vector conversions (measured on x86-64 with AVX2).
            Format::Q8 => {
                for (o, &b) in out.iter_mut().zip(le_bytes(words)) {
                    *o = b as i8 as f32 * scale;
                }
            }
            Format::Q4 => {
                if let Ok(b) = <&[u8; GROUP / 2]>::try_from(le_bytes(words)) {
                    for i in 0..GROUP / 2 {
                        out[i] = ((b[i] & 15) as i32 - 8) as f32 * scale;
                        out[i + GROUP / 2] = ((b[i] >> 4) as i32 - 8) as f32 * scale;
                    }
                }
            }
        }
    }

    /// The scale of group `g` from a row's scales (0 for float formats).
    #[inline(always)]
    pub fn group_scale(self, scales: &[u16], g: usize) -> f32 {
        match self.quantized() {
            true => half_to_f32(scales[g]),
            false => 0.0,
        }
    }

    /// u32 words of a row's data per group.
    pub fn group_words(self) -> usize {
        self.group_bytes() / 4
    }

    /// Dequantizes (or widens) one row into `out` (`cols` = out.len() values), from its data
    /// words and its scales.
    pub fn unpack_row(self, data: &[u32], scales: &[u16], out: &mut [f32]) {
        let mut group = [0f32; GROUP];
        let size = self.group_words();
        for (g, chunk) in out.chunks_mut(GROUP).enumerate() {
            self.unpack_group(
                &data[g * size..(g + 1) * size],
                self.group_scale(scales, g),
                &mut group,
            );
            chunk.copy_from_slice(&group[..chunk.len()]);
        }
    }

    /// Dequantizes `rows` packed rows of `cols` into f32 (no padding).
    pub fn unpack(self, packed: &Packed, rows: usize, cols: usize) -> Vec<f32> {
        let (data, scales) = (packed.words(), packed.halves());
        let (dw, sh) = (
            self.row_data_bytes(cols) / 4,
            self.row_scale_bytes(cols) / 2,
        );
        let mut out = vec![0f32; rows * cols];
        for (r, row) in out.chunks_mut(cols.max(1)).enumerate() {
            self.unpack_row(
                &data[r * dw..(r + 1) * dw],
                &scales[r * sh..(r + 1) * sh],
                row,
            );
        }
        out
    }

    /// Packs rows of a float checkpoint tensor: the same bytes, padded, when the format is the
    /// file's; otherwise through f32 (quantizing on load).
    pub fn pack_file_rows(self, dtype: FloatType, bytes: &[u8], cols: usize) -> Result<Packed> {
        if self == dtype.format() {
            let row_in = cols * dtype.size();
            let row_out = self.row_data_bytes(cols);
            let mut data = vec![0u8; bytes.len() / row_in.max(1) * row_out];
            for (src, dst) in bytes
                .chunks(row_in.max(1))
                .zip(data.chunks_mut(row_out.max(1)))
            {
                dst[..src.len()].copy_from_slice(src);
            }
            return Ok(Packed {
                data,
                scales: vec![],
            });
        }
        self.pack(&dtype.to_f32(bytes), cols)
    }

    /// Bytes of one row of a quantized tensor as a file stores it (see [`Format::file_rows`]):
    /// q8 one byte per value; q4 16 bytes per group of 32, the last group padded.
    pub fn file_row_bytes(self, cols: usize) -> usize {
        match self {
            Format::Q4 => self.row_data_bytes(cols),
            Format::Q8 => cols,
            other => cols * other.group_bytes() / GROUP,
        }
    }

    /// Rows of a quantized checkpoint tensor (the layout `layerskip quantize` writes: q8 rows of
    /// `cols` values without padding, q4 rows of whole groups) into the runtime layout.
    pub fn pack_quantized_rows(self, data: &[u8], scales: &[u8], cols: usize) -> Packed {
        let (row_in, row_out) = (self.file_row_bytes(cols), self.row_data_bytes(cols));
        let rows = data.len() / row_in.max(1);
        let mut out = vec![0u8; rows * row_out];
        for (src, dst) in data
            .chunks(row_in.max(1))
            .zip(out.chunks_mut(row_out.max(1)))
        {
            dst[..src.len()].copy_from_slice(src);
        }
        let (sin, sout) = (self.file_scale_bytes(cols), self.row_scale_bytes(cols));
        let mut padded = vec![0u8; rows * sout];
        for (src, dst) in scales
            .chunks(sin.max(1))
            .zip(padded.chunks_mut(sout.max(1)))
        {
            dst[..src.len()].copy_from_slice(src);
        }
        Packed {
            data: out,
            scales: padded,
        }
    }

    /// The file layout of packed rows, data and scales: the inverse of
    /// [`Format::pack_quantized_rows`].
    pub fn file_rows(self, packed: &Packed, cols: usize) -> (Vec<u8>, Vec<u8>) {
        let strip = |bytes: &[u8], row_in: usize, row_out: usize| -> Vec<u8> {
            bytes
                .chunks(row_in.max(1))
                .flat_map(|row| row[..row_out].iter().copied())
                .collect()
        };
        (
            strip(
                &packed.data,
                self.row_data_bytes(cols),
                self.file_row_bytes(cols),
            ),
            strip(
                &packed.scales,
                self.row_scale_bytes(cols),
                self.file_scale_bytes(cols),
            ),
        )
    }
}

/// A quantization scale as f16 (what is stored), refused when f16 cannot hold it.
fn scale(d: f32) -> Result<f32> {
    let h = f16_to_f32(f32_to_f16(d));
    if !h.is_finite() {
        return Err(Error::Invalid(format!(
            "a weight group needs a scale of {d}, beyond what an f16 scale holds (values over 8e6)"
        )));
    }
    Ok(h)
}

/// Little-endian u32 words as their bytes in order (a view: every supported target is
/// little-endian).
#[inline(always)]
fn le_bytes(words: &[u32]) -> &[u8] {
    bytemuck::cast_slice(words)
}

#[cfg(target_endian = "big")]
compile_error!("weights are stored and read as little-endian words");

/// Half to single precision for finite halves, branch-free (weights and scales are checked to be
/// finite when loaded): the half's exponent and mantissa moved into an f32 are its value times
/// 2^-112, subnormals included, so one multiplication by 2^112 restores it exactly.
#[inline(always)]
pub fn half_to_f32(h: u16) -> f32 {
    let magnitude = f32::from_bits(((h & 0x7fff) as u32) << 13) * f32::from_bits(0x7780_0000);
    f32::from_bits(magnitude.to_bits() | (((h & 0x8000) as u32) << 16))
}

/// IEEE half to single precision, subnormals and infinities included.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: value = frac * 2^-24.
            let v = frac as f32 * 2f32.powi(-24);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, _) => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 112) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// Single to half precision, rounding to nearest even (as numpy and torch do).
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let frac = bits & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if frac != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        // Subnormal half (or zero): shift the full mantissa into place, rounding to nearest even.
        if e < -10 {
            return sign;
        }
        let m = frac | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let mut v = m >> shift;
        let rest = m & ((1 << shift) - 1);
        if rest > half || (rest == half && v & 1 == 1) {
            v += 1;
        }
        return sign | v as u16;
    }
    let mut v = ((e as u32) << 10) | (frac >> 13);
    let rest = frac & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && v & 1 == 1) {
        // May carry into the exponent, and up to infinity: both are right.
        v += 1;
    }
    sign | v as u16
}

/// Single to bfloat16, rounding to nearest even.
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// The name of the scale tensor of a quantized weight (`...q_proj.weight` -> `...q_proj.weight_scale`).
pub fn scale_name(weight: &str) -> String {
    format!("{weight}_scale")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversions_round_trip_and_round_to_nearest_even() {
        for h in 0..=u16::MAX {
            let x = f16_to_f32(h);
            if x.is_finite() {
                assert_eq!(half_to_f32(h).to_bits(), x.to_bits(), "{h:#x}");
            }
            if x.is_nan() {
                assert!(f16_to_f32(f32_to_f16(x)).is_nan());
            } else {
                assert_eq!(f32_to_f16(x), h, "{h:#x} {x}");
            }
        }
        // Halfway between 1 and the next half (1 + 2^-10): ties go to the even one, 1.
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
        assert_eq!(f32_to_f16(65520.0), 0x7c00, "rounds up to infinity");
        assert_eq!(
            f32_to_f16(2f32.powi(-25)),
            0,
            "half the smallest subnormal ties to zero"
        );
        assert_eq!(f32_to_bf16(1.0 + 2f32.powi(-8)), 0x3f80);
        assert_eq!(f32_to_bf16(-3.0), 0xc040);
    }

    #[test]
    fn quantized_groups_follow_q8_0_and_q4_0() {
        let mut row: Vec<f32> = (0..40).map(|i| (i as f32 - 17.0) / 8.0).collect();
        row[3] = -4.0; // the largest magnitude, negative
        let q8 = Format::Q8.pack(&row, 40).unwrap();
        assert_eq!(q8.data.len(), 64, "two groups of 32, the second padded");
        assert_eq!(q8.scales.len(), 4);
        assert_eq!(
            Format::Q8.pack(&row[..32], 32).unwrap().scales.len(),
            4,
            "padded to 4 bytes"
        );
        let d = f16_to_f32(u16::from_le_bytes([q8.scales[0], q8.scales[1]]));
        assert_eq!(d, f16_to_f32(f32_to_f16(4.0 / 127.0)));
        assert_eq!(q8.data[3] as i8, -127);
        let back = Format::Q8.unpack(&q8, 1, 40);
        for (a, b) in back.iter().zip(&row) {
            assert!((a - b).abs() <= d / 2.0 + 1e-6, "{a} {b}");
        }
        let q4 = Format::Q4.pack(&row, 40).unwrap();
        assert_eq!(q4.data.len(), 32);
        let d = f16_to_f32(u16::from_le_bytes([q4.scales[0], q4.scales[1]]));
        assert_eq!(d, 0.5, "m / -8 with m = -4");
        assert_eq!(q4.data[3] & 15, 0, "element 3 maps to q = 0, that is -8 d");
        assert_eq!(
            q4.data[3] >> 4,
            8 + (row[19] / 0.5).round() as u8,
            "element 19 beside it"
        );
        let back = Format::Q4.unpack(&q4, 1, 40);
        assert_eq!(back[3], -4.0);
        for (a, b) in back.iter().zip(&row).take(32) {
            assert!((a - b).abs() <= d / 2.0 + 1e-6, "{a} {b}");
        }
        // Padding dequantizes to zero.
        let padded = Format::Q4.unpack(&q4, 1, 64.min(q4.data.len() * 2));
        assert!(padded[40..].iter().all(|&x| x == 0.0));
    }

    #[test]
    fn float_formats_keep_the_checkpoint_bytes() {
        let bytes: Vec<u8> = [1.0f32, -2.5, 3.25]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let p = Format::F32
            .pack_file_rows(FloatType::F32, &bytes, 3)
            .unwrap();
        assert_eq!(p.data.len(), 128);
        assert_eq!(&p.data[..12], &bytes[..]);
        assert_eq!(Format::F32.unpack(&p, 1, 3), vec![1.0, -2.5, 3.25]);
        let q = Format::Q8
            .pack_file_rows(FloatType::F32, &bytes, 3)
            .unwrap();
        assert_eq!(q.scales.len(), 4, "one f16 scale, padded to 4 bytes");
    }

    #[test]
    fn the_file_layout_round_trips() {
        let values: Vec<f32> = (0..3 * 37)
            .map(|i| ((i * 7919) % 61) as f32 / 13.0 - 2.0)
            .collect();
        for format in [Format::Q8, Format::Q4] {
            let packed = format.pack(&values, 37).unwrap();
            let (data, scales) = format.file_rows(&packed, 37);
            assert_eq!(data.len(), 3 * format.file_row_bytes(37));
            assert_eq!(
                scales.len(),
                3 * 2 * 2,
                "two groups, an f16 scale each, per row"
            );
            let again = format.pack_quantized_rows(&data, &scales, 37);
            assert_eq!(again, packed, "{format:?}: bit for bit");
        }
    }

    #[test]
    fn non_finite_values_are_found_in_every_float_type() {
        let f32s: Vec<u8> = [1.0f32, f32::NAN]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(FloatType::F32.find_non_finite(&f32s).unwrap().0, 1);
        let f16s: Vec<u8> = [0x3c00u16, 0x7bff, 0xfc00]
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        assert_eq!(
            FloatType::F16.find_non_finite(&f16s),
            Some((2, f32::NEG_INFINITY))
        );
        let bf16s: Vec<u8> = [0x7f7fu16, 0x7fc0]
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        let (i, v) = FloatType::Bf16.find_non_finite(&bf16s).unwrap();
        assert!(i == 1 && v.is_nan());
        assert!(FloatType::F16.find_non_finite(&f16s[..4]).is_none());
    }
}
