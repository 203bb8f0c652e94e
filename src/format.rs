//! Weight formats: how a matrix is laid out in memory, the same way on the host (the CPU backend)
//! and in GPU buffers. Adding a format means a variant here (sizes, packing, dequantization, the
//! GGUF blocks it is read from), one include in shaders/formats/, and nothing in the model code.
//!
//! Every row is padded with zeros to whole groups of [`GROUP`] elements, so kernels work in
//! groups and any matrix width works. Per group of data:
//! - `f32`: 32 little-endian f32 (128 bytes).
//! - `f16`, `bf16`: 32 halves, two per u32, element 2i in the low half (64 bytes). These keep the
//!   checkpoint's bytes, so no `shader-f16` is needed anywhere.
//! - `q8` (Q8_0): 32 signed bytes q and one f16 scale d; x = q * d, d = max|x| / 127.
//! - `q4` (Q4_0): 32 four-bit values q (0..15) and one f16 scale d; x = (q - 8) * d, where
//!   d = m / -8 for the group's value m of largest magnitude. As in llama.cpp's Q4_0, byte i of
//!   the group holds element i in its low nibble and element i + 16 in its high nibble, so the low
//!   and the high nibbles each unpack to 16 consecutive elements (no interleaving shuffles).
//! - `q4_1` (Q4_1): four-bit q in q4's nibble order, an f16 scale d and an f16 minimum m per
//!   group; x = q * d + m.
//! - `q4_k`, `q5_k`, `q6_k` (llama.cpp's K-quants): super-blocks of 8 groups (256 elements).
//!   Data per group: q4's 16 bytes of low nibbles; `q5_k` adds a u32 of fifth bits (bit i for
//!   element i), `q6_k` two u32 of 2-bit high parts (bits 2i..2i+1 of the first for element i,
//!   of the second for element 16 + i). Scales per super-block: `q4_k` and `q5_k` keep GGUF's
//!   first 16 bytes (f16 d, f16 dmin, twelve bytes packing a 6-bit scale s and minimum m per
//!   group), x = d s q - dmin m; `q6_k` keeps GGUF's sixteen signed 8-bit scales (one per 16
//!   elements) and its f16 d, padded to 20 bytes, x = d scale (q - 32). The nibbles are regrouped
//!   from GGUF's order at load, so every 4-bit part decodes as q4's does (one 16-byte load per
//!   group where the group's data is 16 bytes: q4_1, q4_k).
//!
//! Scales live in a second buffer, each row's padded to a whole u32 (GPU copies move multiples
//! of 4 bytes).

use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use crate::header::TensorType;
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
    #[serde(rename = "q4_1")]
    Q4_1,
    #[serde(rename = "q4_k")]
    Q4K,
    #[serde(rename = "q5_k")]
    Q5K,
    #[serde(rename = "q6_k")]
    Q6K,
}

/// Groups per super-block of the K-quants (256 elements), the unit of their scales.
pub const SUPER_GROUPS: usize = 8;

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

    /// A checkpoint tensor's float type, if it has one.
    pub fn of_tensor(t: TensorType) -> Option<Self> {
        match t {
            TensorType::Safetensors(d) => Self::of(d),
            TensorType::Ggml(g) => Self::of_ggml(g),
        }
    }

    pub fn of_ggml(t: GgmlType) -> Option<Self> {
        match t {
            GgmlType::F32 => Some(FloatType::F32),
            GgmlType::F16 => Some(FloatType::F16),
            GgmlType::Bf16 => Some(FloatType::Bf16),
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

/// A run of a matrix's rows in one format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub row0: usize,
    pub rows: usize,
    pub format: Format,
}

/// A matrix's shape and formats: consecutive runs of rows, each in one format. Most matrices are
/// one run; a fused q|k|v read from a GGUF file can hold q and k in q4_k and v in q6_k, as
/// llama.cpp's mixed quantizations (Q4_K_M, ...) write them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub rows: usize,
    pub cols: usize,
    pub runs: Vec<Run>,
}

impl Layout {
    /// Every row in one format.
    pub fn uniform(format: Format, rows: usize, cols: usize) -> Self {
        Layout {
            rows,
            cols,
            runs: vec![Run {
                row0: 0,
                rows,
                format,
            }],
        }
    }

    /// Runs of `(rows, format)` in order, adjacent runs of one format merged.
    pub fn from_parts(cols: usize, parts: impl IntoIterator<Item = (usize, Format)>) -> Self {
        let mut runs: Vec<Run> = vec![];
        let mut row0 = 0;
        for (rows, format) in parts {
            match runs.last_mut() {
                Some(last) if last.format == format => last.rows += rows,
                _ => runs.push(Run { row0, rows, format }),
            }
            row0 += rows;
        }
        Layout {
            rows: row0,
            cols,
            runs,
        }
    }

    /// The run holding row `r`.
    pub fn run_at(&self, r: usize) -> Option<&Run> {
        self.runs
            .iter()
            .find(|run| (run.row0..run.row0 + run.rows).contains(&r))
    }

    /// Bytes of data and scales (checked).
    pub fn bytes(&self) -> Option<u64> {
        self.runs.iter().try_fold(0u64, |sum, run| {
            sum.checked_add(run.format.bytes(run.rows, self.cols)?)
        })
    }

    /// The formats in use, each once, in order of appearance.
    pub fn formats(&self) -> Vec<Format> {
        let mut out: Vec<Format> = vec![];
        for run in &self.runs {
            if !out.contains(&run.format) {
                out.push(run.format);
            }
        }
        out
    }
}

pub fn groups(cols: usize) -> usize {
    cols.div_ceil(GROUP)
}

impl Format {
    /// Every format, in the order of the table in format.rs's opening comment.
    pub const ALL: [Format; 9] = [
        Format::F32,
        Format::F16,
        Format::Bf16,
        Format::Q8,
        Format::Q4,
        Format::Q4_1,
        Format::Q4K,
        Format::Q5K,
        Format::Q6K,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Format::F32 => "f32",
            Format::F16 => "f16",
            Format::Bf16 => "bf16",
            Format::Q8 => "q8",
            Format::Q4 => "q4",
            Format::Q4_1 => "q4_1",
            Format::Q4K => "q4_k",
            Format::Q5K => "q5_k",
            Format::Q6K => "q6_k",
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
            Format::Q4_1 => "formats/q4_1.wgsl",
            Format::Q4K => "formats/q4_k.wgsl",
            Format::Q5K => "formats/q5_k.wgsl",
            Format::Q6K => "formats/q6_k.wgsl",
        }
    }

    /// Whether the format has scales (a second buffer).
    pub fn quantized(self) -> bool {
        !matches!(self, Format::F32 | Format::F16 | Format::Bf16)
    }

    /// The runtime format that keeps a GGUF tensor type's values as they are, if there is one.
    pub fn of_ggml(t: GgmlType) -> Option<Format> {
        Some(match t {
            GgmlType::F32 => Format::F32,
            GgmlType::F16 => Format::F16,
            GgmlType::Bf16 => Format::Bf16,
            GgmlType::Q8_0 => Format::Q8,
            GgmlType::Q4_0 => Format::Q4,
            GgmlType::Q4_1 => Format::Q4_1,
            GgmlType::Q4K => Format::Q4K,
            GgmlType::Q5K => Format::Q5K,
            GgmlType::Q6K => Format::Q6K,
            GgmlType::Other(_) => return None,
        })
    }

    /// The GGUF types a runtime format reads, by llama.cpp's names ("F32, F16, ... or BF16"),
    /// for errors.
    pub fn ggml_names() -> String {
        let names: Vec<&str> = (0..=u8::MAX as u32)
            .filter_map(GgmlType::from_u32)
            .filter(|&t| Format::of_ggml(t).is_some())
            .map(GgmlType::name)
            .collect();
        match names.split_last() {
            Some((last, [])) => last.to_string(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    }

    /// Data bytes of one group.
    pub fn group_bytes(self) -> usize {
        match self {
            Format::F32 => 4 * GROUP,
            Format::F16 | Format::Bf16 => 2 * GROUP,
            Format::Q8 => GROUP,
            Format::Q4 | Format::Q4_1 | Format::Q4K => GROUP / 2,
            Format::Q5K => GROUP / 2 + 4,
            Format::Q6K => GROUP / 2 + 8,
        }
    }

    /// Bytes of one row's data.
    pub fn row_data_bytes(self, cols: usize) -> usize {
        groups(cols) * self.group_bytes()
    }

    /// Bytes of one row's scales (none for float formats), padded to whole u32.
    pub fn row_scale_bytes(self, cols: usize) -> usize {
        let g = groups(cols);
        match self {
            Format::F32 | Format::F16 | Format::Bf16 => 0,
            Format::Q8 | Format::Q4 => 4 * g.div_ceil(2),
            Format::Q4_1 => 4 * g,
            Format::Q4K | Format::Q5K => 16 * g.div_ceil(SUPER_GROUPS),
            Format::Q6K => 20 * g.div_ceil(SUPER_GROUPS),
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

    /// Elements quantized together: a group, or a K-quant's super-block.
    fn block_elems(self) -> usize {
        match self {
            Format::Q4K | Format::Q5K | Format::Q6K => SUPER_GROUPS * GROUP,
            _ => GROUP,
        }
    }

    /// Packs f32 rows of `cols` values (quantizing: the K-quants with a plain min/max choice
    /// of scales, not llama.cpp's search, which only real GGUF files need).
    pub fn pack(self, values: &[f32], cols: usize) -> Result<Packed> {
        let rows = values.len() / cols.max(1);
        let mut out = Packed {
            data: Vec::with_capacity(rows * self.row_data_bytes(cols)),
            scales: Vec::with_capacity(rows * self.row_scale_bytes(cols)),
        };
        let block = self.block_elems();
        let mut padded = vec![0f32; block];
        for row in values.chunks(cols.max(1)) {
            let data0 = out.data.len();
            let scales0 = out.scales.len();
            for chunk in row.chunks(block) {
                padded.fill(0.0);
                padded[..chunk.len()].copy_from_slice(chunk);
                self.pack_block(&padded, &mut out)?;
            }
            // A K-quant's last super-block may be partial: keep only the row's groups.
            out.data.truncate(data0 + self.row_data_bytes(cols));
            out.scales.resize(scales0 + self.row_scale_bytes(cols), 0);
        }
        Ok(out)
    }

    /// Packs one block of `block_elems()` values.
    fn pack_block(self, b: &[f32], out: &mut Packed) -> Result<()> {
        match self {
            Format::Q4K => pack_q4k_q5k(b, 15, out),
            Format::Q5K => pack_q4k_q5k(b, 31, out),
            Format::Q6K => pack_q6k(b, out),
            _ => b
                .chunks_exact(GROUP)
                .try_for_each(|g| self.pack_group(g, out)),
        }
    }

    /// Packs one group of [`GROUP`] values (formats whose scales are per group).
    fn pack_group(self, g: &[f32], out: &mut Packed) -> Result<()> {
        let nibbles = |q: &dyn Fn(f32) -> u8, out: &mut Packed| {
            out.data
                .extend((0..GROUP / 2).map(|i| q(g[i]) | (q(g[i + GROUP / 2]) << 4)))
        };
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
                push_half_scale(out, d);
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
                push_half_scale(out, d);
                let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
                nibbles(&|x| ((x * inv + 8.5).floor().clamp(0.0, 15.0)) as u8, out);
            }
            Format::Q4_1 => {
                let lo = g.iter().fold(f32::INFINITY, |m, &x| m.min(x));
                let hi = g.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let (d, m) = (scale((hi - lo) / 15.0)?, scale(lo)?);
                out.scales.extend(f32_to_f16(d).to_le_bytes());
                out.scales.extend(f32_to_f16(m).to_le_bytes());
                let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
                nibbles(&|x| ((x - m) * inv).round().clamp(0.0, 15.0) as u8, out);
            }
            // Packed by super-block (pack_block).
            Format::Q4K | Format::Q5K | Format::Q6K => {}
        }
        Ok(())
    }

    /// Dequantizes (or widens) group `g` of a row: `words` is the group's data as little-endian
    /// u32 words (`group_words()` of them, laid out as the GPU reads them), `scales` the whole
    /// row's scales as f16 bits. The CPU's dequantization of this format, used by the reference
    /// and, inside its dot products, by the fast backend; it mirrors shaders/formats/*.wgsl.
    #[inline(always)]
    pub fn unpack_group(self, words: &[u32], scales: &[u16], g: usize, out: &mut [f32; GROUP]) {
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
                let d = half_to_f32(scales[g]);
                for (o, &b) in out.iter_mut().zip(le_bytes(words)) {
                    *o = b as i8 as f32 * d;
                }
            }
            Format::Q4 => {
                let d = half_to_f32(scales[g]);
                unpack_nibbles(words, out, |q, _| (q as i32 - 8) as f32 * d);
            }
            Format::Q4_1 => {
                let (d, m) = (half_to_f32(scales[2 * g]), half_to_f32(scales[2 * g + 1]));
                unpack_nibbles(words, out, |q, _| q as f32 * d + m);
            }
            Format::Q4K | Format::Q5K => {
                let (a, b) = k_step_min(scales, g);
                match (self, words.get(4)) {
                    (Format::Q5K, Some(&high)) => unpack_nibbles(words, out, |q, i| {
                        (q as u32 | ((high >> i) & 1) << 4) as f32 * a - b
                    }),
                    _ => unpack_nibbles(words, out, |q, _| q as f32 * a - b),
                }
            }
            Format::Q6K => {
                let [lo, hi] = q6k_steps(scales, g);
                let (h0, h1) = (words[4], words[5]);
                unpack_nibbles(words, out, |q, i| {
                    let (high, scale) = if i < 16 { (h0, lo) } else { (h1, hi) };
                    let q = q as i32 | (((high >> (2 * (i % 16))) & 3) << 4) as i32;
                    (q - 32) as f32 * scale
                });
            }
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
            self.unpack_group(&data[g * size..(g + 1) * size], scales, g, &mut group);
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

    /// Rows of a GGUF tensor of type `t` (`cols` elements per row, whole blocks) in this format:
    /// the same values regrouped when the format is the type's own (see the module comment),
    /// otherwise through f32 (quantizing on load). A scale that is NaN or infinite is an error
    /// naming its row (counted from `first_row`) and block.
    pub fn pack_ggml_rows(
        self,
        t: GgmlType,
        bytes: &[u8],
        cols: usize,
        first_row: usize,
    ) -> Result<Packed> {
        let own = Format::of_ggml(t).ok_or_else(|| {
            Error::Invalid(format!("GGUF tensors of type {} cannot be read", t.name()))
        })?;
        if own != self {
            let rows = bytes.len() / ggml_row_bytes(t, cols).max(1);
            let packed = own.pack_ggml_rows(t, bytes, cols, first_row)?;
            return self.pack(&own.unpack(&packed, rows, cols), cols);
        }
        if let Some(float) = FloatType::of_ggml(t) {
            return self.pack_file_rows(float, bytes, cols);
        }
        let block = t.block_bytes() as usize;
        let mut out = Packed::default();
        for (r, row) in bytes.chunks(ggml_row_bytes(t, cols).max(1)).enumerate() {
            let scales0 = out.scales.len();
            for (i, b) in row.chunks_exact(block).enumerate() {
                let half = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
                let finite = |at: usize| {
                    let h = half(at);
                    match h & 0x7c00 == 0x7c00 {
                        true => Err(Error::Invalid(format!(
                            "row {} block {i} has a non-finite scale ({})",
                            first_row + r,
                            f16_to_f32(h)
                        ))),
                        false => Ok(h),
                    }
                };
                match self {
                    Format::Q8 | Format::Q4 => {
                        out.scales.extend(finite(0)?.to_le_bytes());
                        out.data.extend_from_slice(&b[2..]);
                    }
                    Format::Q4_1 => {
                        out.scales.extend(finite(0)?.to_le_bytes());
                        out.scales.extend(finite(2)?.to_le_bytes());
                        out.data.extend_from_slice(&b[4..]);
                    }
                    Format::Q4K | Format::Q5K => {
                        finite(0)?;
                        finite(2)?;
                        out.scales.extend_from_slice(&b[..16]);
                        let (qh, qs) = match self {
                            Format::Q5K => (Some(&b[16..48]), &b[48..176]),
                            _ => (None, &b[16..144]),
                        };
                        for s in 0..SUPER_GROUPS {
                            let q = |l: usize| (qs[32 * (s / 2) + l] >> (4 * (s % 2))) & 15;
                            push_nibbles(&mut out, q);
                            if let Some(qh) = qh {
                                let high = (0..GROUP)
                                    .fold(0u32, |w, l| w | (((qh[l] >> s) & 1) as u32) << l);
                                out.data.extend(high.to_le_bytes());
                            }
                        }
                    }
                    Format::Q6K => {
                        let d = finite(208)?;
                        let (ql, qh) = (&b[..128], &b[128..192]);
                        for s in 0..SUPER_GROUPS {
                            let (n, quarter) = (s / 4, s % 4);
                            let low = |l: usize| {
                                (ql[64 * n + 32 * (quarter % 2) + l] >> (4 * (quarter / 2))) & 15
                            };
                            let high = |l: usize| (qh[32 * n + l] >> (2 * quarter)) & 3;
                            push_nibbles(&mut out, low);
                            push_pairs(&mut out, high);
                        }
                        out.scales.extend_from_slice(&b[192..208]);
                        out.scales.extend(d.to_le_bytes());
                        out.scales.extend([0, 0]);
                    }
                    // Float types returned above.
                    Format::F32 | Format::F16 | Format::Bf16 => {}
                }
            }
            out.scales.resize(scales0 + self.row_scale_bytes(cols), 0);
        }
        Ok(out)
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

/// Bytes of one row of `cols` elements of a GGUF tensor of type `t` (whole blocks).
pub fn ggml_row_bytes(t: GgmlType, cols: usize) -> usize {
    cols / (t.block_elems() as usize).max(1) * t.block_bytes() as usize
}

/// One f16 scale per group (q8, q4).
fn push_half_scale(out: &mut Packed, d: f32) {
    out.scales.extend(f32_to_f16(d).to_le_bytes());
}

/// A group's 4-bit parts q(0..32) in q4's order: byte i holds element i low, i + 16 high.
fn push_nibbles(out: &mut Packed, q: impl Fn(usize) -> u8) {
    out.data
        .extend((0..GROUP / 2).map(|i| (q(i) & 15) | ((q(i + GROUP / 2) & 15) << 4)));
}

/// A group's 2-bit parts h(0..32): two u32, bits 2i..2i+1 of the first for element i, of the
/// second for element 16 + i (q6_k's high bits).
fn push_pairs(out: &mut Packed, h: impl Fn(usize) -> u8) {
    for half in 0..2 {
        let w = (0..16).fold(0u32, |w, i| w | ((h(16 * half + i) & 3) as u32) << (2 * i));
        out.data.extend(w.to_le_bytes());
    }
}

/// Elements i and i + 16 of a group from byte i of its first four words' nibbles, through `f`
/// (the nibble, the element's index).
#[inline(always)]
fn unpack_nibbles(words: &[u32], out: &mut [f32; GROUP], f: impl Fn(u8, usize) -> f32) {
    if let Some(Ok(b)) = le_bytes(words)
        .get(..GROUP / 2)
        .map(<&[u8; GROUP / 2]>::try_from)
    {
        for i in 0..GROUP / 2 {
            out[i] = f(b[i] & 15, i);
            out[i + GROUP / 2] = f(b[i] >> 4, i + GROUP / 2);
        }
    }
}

/// (d s, dmin m) of group `g` of a q4_k / q5_k row's `scales`: its values are (d s) q - dmin m.
/// The CPU's plain loop and its register kernels both decode scales here.
#[inline(always)]
pub fn k_step_min(scales: &[u16], g: usize) -> (f32, f32) {
    let sb = &scales[g / SUPER_GROUPS * 8..][..8];
    let (s, m) = k_scale_min(&sb[2..], g % SUPER_GROUPS);
    (half_to_f32(sb[0]) * s as f32, half_to_f32(sb[1]) * m as f32)
}

/// The steps of the two halves of group `g` of a q6_k row's `scales`: d times the signed 8-bit
/// scale of each 16 elements (its values are step (q - 32)).
#[inline(always)]
pub fn q6k_steps(scales: &[u16], g: usize) -> [f32; 2] {
    let sb = &scales[g / SUPER_GROUPS * 10..][..10];
    let (d, pair) = (half_to_f32(sb[8]), sb[g % SUPER_GROUPS]);
    [
        pair as u8 as i8 as f32 * d,
        (pair >> 8) as u8 as i8 as f32 * d,
    ]
}

/// The 6-bit scale and minimum of group `j` of a q4_k / q5_k super-block, from the twelve bytes
/// that pack them (as six halves): groups 0..3 in the low 6 bits of bytes j and j + 4, groups
/// 4..7 in the nibbles of bytes j + 4 with their top two bits in the top bits of bytes j - 4, j.
#[inline(always)]
fn k_scale_min(packed: &[u16], j: usize) -> (u8, u8) {
    let byte = |k: usize| (packed[k / 2] >> (8 * (k % 2))) as u8;
    if j < 4 {
        (byte(j) & 63, byte(j + 4) & 63)
    } else {
        (
            (byte(j + 4) & 15) | ((byte(j - 4) >> 6) << 4),
            (byte(j + 4) >> 4) | ((byte(j) >> 6) << 4),
        )
    }
}

/// Quantizes a super-block to q4_k (`qmax` 15) or q5_k (31): each group's range [min(0, lo), hi]
/// in qmax steps, its step and minimum as 6-bit multiples of d and dmin.
fn pack_q4k_q5k(b: &[f32], qmax: u8, out: &mut Packed) -> Result<()> {
    let mut steps = [0f32; SUPER_GROUPS];
    let mut mins = [0f32; SUPER_GROUPS];
    for (s, g) in b.chunks_exact(GROUP).enumerate() {
        let lo = g.iter().fold(0f32, |m, &x| m.min(x));
        let hi = g.iter().fold(0f32, |m, &x| m.max(x));
        steps[s] = (hi - lo) / qmax as f32;
        mins[s] = -lo;
    }
    let d = scale(steps.iter().fold(0f32, |m, &x| m.max(x)) / 63.0)?;
    let dmin = scale(mins.iter().fold(0f32, |m, &x| m.max(x)) / 63.0)?;
    let six = |x: f32, unit: f32| match unit > 0.0 {
        true => (x / unit).round().clamp(0.0, 63.0) as u8,
        false => 0,
    };
    let sc: Vec<u8> = steps.iter().map(|&x| six(x, d)).collect();
    let m: Vec<u8> = mins.iter().map(|&x| six(x, dmin)).collect();
    out.scales.extend(f32_to_f16(d).to_le_bytes());
    out.scales.extend(f32_to_f16(dmin).to_le_bytes());
    let mut packed = [0u8; 12];
    for j in 0..4 {
        packed[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        packed[j + 4] = m[j] | ((m[j + 4] >> 4) << 6);
        packed[j + 8] = (sc[j + 4] & 15) | ((m[j + 4] & 15) << 4);
    }
    out.scales.extend(packed);
    for (s, g) in b.chunks_exact(GROUP).enumerate() {
        let (a, mm) = (d * sc[s] as f32, dmin * m[s] as f32);
        let q: Vec<u8> = g
            .iter()
            .map(|&x| match a > 0.0 {
                true => ((x + mm) / a).round().clamp(0.0, qmax as f32) as u8,
                false => 0,
            })
            .collect();
        push_nibbles(out, |i| q[i]);
        if qmax > 15 {
            let high = (0..GROUP).fold(0u32, |w, i| w | ((q[i] >> 4) as u32) << i);
            out.data.extend(high.to_le_bytes());
        }
    }
    Ok(())
}

/// Quantizes a super-block to q6_k: a signed 8-bit multiple of d per 16 elements, values
/// -32..31 of it.
fn pack_q6k(b: &[f32], out: &mut Packed) -> Result<()> {
    let steps: Vec<f32> = b
        .chunks_exact(16)
        .map(|c| c.iter().fold(0f32, |m, x| m.max(x.abs())) / 31.0)
        .collect();
    let d = scale(steps.iter().fold(0f32, |m, &x| m.max(x)) / 127.0)?;
    let sc: Vec<i8> = steps
        .iter()
        .map(|&x| match d > 0.0 {
            true => (x / d).round().clamp(0.0, 127.0) as i8,
            false => 0,
        })
        .collect();
    for g in 0..SUPER_GROUPS {
        let q: Vec<u8> = (0..GROUP)
            .map(|i| {
                let e = g * GROUP + i;
                let unit = d * sc[e / 16] as f32;
                match unit > 0.0 {
                    true => ((b[e] / unit).round().clamp(-32.0, 31.0) + 32.0) as u8,
                    false => 32,
                }
            })
            .collect();
        push_nibbles(out, |i| q[i]);
        push_pairs(out, |i| q[i] >> 4);
    }
    out.scales.extend(sc.iter().map(|&s| s as u8));
    out.scales.extend(f32_to_f16(d).to_le_bytes());
    out.scales.extend([0, 0]);
    Ok(())
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
    fn errors_list_the_gguf_types_the_runtime_reads() {
        assert_eq!(
            Format::ggml_names(),
            "F32, F16, Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K or BF16"
        );
    }

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
