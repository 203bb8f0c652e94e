//! GGUF, llama.cpp's single-file model format (ggml's docs/gguf.md): a little-endian header
//! (magic `GGUF`, version, tensor count, metadata count), typed key-value metadata, one info
//! record per tensor (name, dims, ggml type, offset), padding to the alignment, then the tensor
//! data.
//!
//! A GGUF file may come from anywhere, so its header is untrusted input: every count and length is
//! checked against the bytes left in the file and against caps before anything is allocated,
//! strings must be UTF-8, keys and tensor names must be unique, and every tensor's bytes (sized
//! from its dims and type) must lie inside the file, aligned, overlapping no other tensor. Versions
//! 2 and 3 are read (v3 only added big-endian files, which are refused); version 1 had 32-bit
//! counts and is refused. Only the header is read here; tensors are read later by byte range.

pub mod checkpoint;
pub mod tokenizer;

use crate::error::{Error, Result};
use crate::files::Files;
use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// Largest header (metadata and tensor infos) read. Llama 3's, with its 128k-token vocabulary
/// and 280k merges, is about 7 MB; multilingual vocabularies reach a few tens.
pub const MAX_METADATA_BYTES: u64 = 256 << 20;

/// The first read of a file: small headers fit; larger ones are read again, bigger.
const FIRST_READ_BYTES: u64 = 1 << 20;
/// Most metadata values (array elements included) in one file. A `Value` takes 32 bytes however
/// small its encoding, so this, not the byte cap, bounds the memory a hostile header can claim
/// (128 MiB). Real files hold about a million (vocabulary, scores, token types and merges).
const MAX_VALUES: u64 = 1 << 22;
/// Most tensors in one file (large mixture-of-experts models have a few thousand).
const MAX_TENSORS: u64 = 1 << 20;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// The alignment when `general.alignment` is absent (GGUF_DEFAULT_ALIGNMENT).
const DEFAULT_ALIGNMENT: u64 = 32;
const ALIGNMENT_KEY: &str = "general.alignment";
/// The smallest encodings: a metadata entry (key length, a one-byte key, value type, a one-byte
/// value) and a tensor info (name length, a one-byte name, n_dims, one dim, type, offset).
const MIN_KV_BYTES: u64 = 8 + 1 + 4 + 1;
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 1 + 4 + 8 + 4 + 8;

/// GGUF value type ids.
const TYPE_STRING: u32 = 8;
const TYPE_ARRAY: u32 = 9;

/// A metadata value. Arrays hold values of one type (arrays of arrays are allowed one level deep).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The GGUF type name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::Str(_) => "string",
            Value::Array(_) => "array",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
        }
    }

    /// Any unsigned integer, or a signed one that is not negative (converters differ in which
    /// integer type they write for counts and ids).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer that fits an i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::U64(v) => i64::try_from(v).ok(),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// A float, or an integer as a float (a converter may write `10000` for a rope base).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self
                .as_i64()
                .map(|v| v as f64)
                .or_else(|| self.as_u64().map(|v| v as f64)),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A tensor's element type. The named variants are the ones a loader is likely to handle;
/// every other type ggml defines is [`GgmlType::Other`], so a file holding it still parses (its
/// size is known) and the caller can refuse it by name.
#[allow(non_camel_case_types)] // ggml's own names: `Q4_0` reads better than `Q40`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
    Bf16,
    Other(OtherType),
}

/// A ggml type without a variant of its own. Only [`GgmlType::from_u32`] makes one, so its
/// block layout is always known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OtherType {
    id: u32,
    name: &'static str,
    block_elems: u64,
    block_bytes: u64,
}

impl OtherType {
    /// The ggml type id.
    pub fn id(&self) -> u32 {
        self.id
    }
}

/// ggml's other types, as (id, name, elements per block, bytes per block), from ggml's
/// type_traits table. Ids 4, 5 and 31..=33, 36..=38 were removed from ggml and never appear in
/// GGUF files.
const OTHER_TYPES: &[(u32, &str, u64, u64)] = &[
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
    (40, "NVFP4", 64, 36),
];

impl GgmlType {
    /// The type with ggml id `id`, or `None` when ggml (as far as this table knows) has no such
    /// type, so a tensor of it has no known size.
    pub fn from_u32(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            30 => GgmlType::Bf16,
            _ => {
                let &(id, name, block_elems, block_bytes) =
                    OTHER_TYPES.iter().find(|t| t.0 == id)?;
                GgmlType::Other(OtherType {
                    id,
                    name,
                    block_elems,
                    block_bytes,
                })
            }
        })
    }

    /// The ggml type id.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::Bf16 => 30,
            GgmlType::Other(t) => t.id,
        }
    }

    /// llama.cpp's name for the type ("Q4_K", "BF16", ...).
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
            GgmlType::Bf16 => "BF16",
            GgmlType::Other(t) => t.name,
        }
    }

    /// Elements per block: rows are whole blocks, so a tensor's `dims[0]` is a multiple of this.
    pub fn block_elems(self) -> u64 {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => 32,
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => 256,
            GgmlType::Other(t) => t.block_elems,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> u64 {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::Bf16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
            GgmlType::Other(t) => t.block_bytes,
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where one tensor's bytes are.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF (ggml) order: `dims[0]` is the number of elements per row (ne0), the reverse of
    /// PyTorch's shape.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute byte offset in the file.
    pub start: u64,
    pub len: u64,
}

impl TensorInfo {
    /// Elements in the tensor (the parser checked that the product does not overflow).
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed, validated GGUF header.
#[derive(Clone, Debug)]
pub struct Gguf {
    /// The file's name, for error messages.
    pub file: String,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    /// In the file's order.
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Where the tensor data section begins: the end of the tensor infos, rounded up to the
    /// alignment.
    pub data_start: u64,
}

impl Gguf {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// An error about metadata key `key`.
    pub fn field_error(&self, key: &str, why: impl fmt::Display) -> Error {
        Error::Field {
            file: self.file.clone(),
            field: key.into(),
            why: why.to_string(),
        }
    }

    /// `key`'s value converted by `convert`, `None` when absent, or an error saying the value is
    /// not `expected`.
    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        convert: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        match convert(value) {
            Some(v) => Ok(Some(v)),
            None => {
                Err(self.field_error(key, format!("must be {expected}, not {}", describe(value))))
            }
        }
    }

    fn required<T>(&self, key: &str, value: Result<Option<T>>) -> Result<T> {
        value?.ok_or_else(|| self.field_error(key, "is missing"))
    }

    /// A non-negative integer of any integer type.
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "a non-negative integer", Value::as_u64)
    }

    pub fn u64(&self, key: &str) -> Result<u64> {
        self.required(key, self.opt_u64(key))
    }

    /// A float, or an integer read as one.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.typed(key, "a number", Value::as_f64)
    }

    pub fn f64(&self, key: &str) -> Result<f64> {
        self.required(key, self.opt_f64(key))
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, "a string", Value::as_str)
    }

    pub fn str(&self, key: &str) -> Result<&str> {
        self.required(key, self.opt_str(key))
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "a bool", Value::as_bool)
    }

    pub fn opt_array(&self, key: &str) -> Result<Option<&[Value]>> {
        self.typed(key, "an array", Value::as_array)
    }
}

/// A value's type and, for scalars, the value itself, for error messages.
fn describe(value: &Value) -> String {
    match value {
        Value::Str(s) if s.len() <= 40 => format!("the string {s:?}"),
        Value::Str(_) => "a long string".into(),
        Value::Array(a) => format!("an array of {} values", a.len()),
        Value::F32(v) => format!("{v} (f32)"),
        Value::F64(v) => format!("{v} (f64)"),
        Value::Bool(v) => format!("{v} (bool)"),
        other => match other.as_i64() {
            Some(v) => format!("{v} ({})", other.type_name()),
            None => format!("a {}", other.type_name()),
        },
    }
}

/// Why [`parse`] stopped.
#[derive(Debug)]
pub enum Parse {
    /// The prefix ends inside the header: at least this many bytes are needed.
    NeedMore(u64),
    /// The file is not a valid GGUF file (or uses what this parser refuses).
    Bad(Error),
}

impl From<Error> for Parse {
    fn from(e: Error) -> Self {
        Parse::Bad(e)
    }
}

/// Reads and validates the header of GGUF file `name`, reading a larger prefix while the
/// header does not fit (up to [`MAX_METADATA_BYTES`]).
pub async fn read(files: &impl Files, name: &str) -> Result<Gguf> {
    read_with(files, name, FIRST_READ_BYTES, MAX_METADATA_BYTES).await
}

async fn read_with(files: &impl Files, name: &str, first: u64, cap: u64) -> Result<Gguf> {
    let size = files.size_of(name).await?;
    let mut len = first.min(size).min(cap);
    loop {
        let n = usize::try_from(len).map_err(|_| Error::file(name, "header too large"))?;
        let prefix = files.read_range(name, 0, n).await?;
        let needed = match parse(name, &prefix, size) {
            Ok(gguf) => return Ok(gguf),
            Err(Parse::Bad(e)) => return Err(e),
            Err(Parse::NeedMore(needed)) => needed,
        };
        if needed > cap {
            return Err(Error::file(
                name,
                format!("the GGUF header (metadata and tensor infos) needs more than {cap} bytes, the most read"),
            ));
        }
        // `parse` asks only for bytes inside the file, and for more than it was given.
        if needed <= len || needed > size {
            return Err(Error::file(
                name,
                format!("GGUF parser asked for {needed} bytes after reading {len} of {size}"),
            ));
        }
        // Doubling keeps the re-reads to a few for headers far past the first read.
        len = needed.max(len.saturating_mul(2)).min(size).min(cap);
    }
}

/// Parses a GGUF header from `prefix`, the first bytes of file `file` of `file_size` bytes.
/// Everything the header claims is checked against `file_size`, so a short prefix gives
/// [`Parse::NeedMore`] only when the file really holds more, and a truncated file gives an error.
pub fn parse(file: &str, prefix: &[u8], file_size: u64) -> std::result::Result<Gguf, Parse> {
    let mut r = Reader {
        file,
        bytes: prefix,
        file_size,
        pos: 0,
        values: 0,
    };
    let magic = r.take(4, format_args!("the magic"))?;
    if magic != b"GGUF" {
        return Err(r.refuse(format!(
            "not a GGUF file (it starts with {:?}, not \"GGUF\")",
            String::from_utf8_lossy(magic)
        )));
    }
    let version = r.u32(format_args!("the version"))?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(r.refuse(
                "GGUF version 1 is not supported (it predates 64-bit counts); convert the model again with a current llama.cpp",
            ))
        }
        v if (1..=3).contains(&v.swap_bytes()) => {
            return Err(r.refuse(format!(
                "a big-endian GGUF file (version {} byte-swapped) is not supported",
                v.swap_bytes()
            )))
        }
        v => return Err(r.refuse(format!("unsupported GGUF version {v} (expected 2 or 3)"))),
    }
    let tensor_count = r.u64(format_args!("the tensor count"))?;
    let kv_count = r.u64(format_args!("the metadata count"))?;
    if tensor_count > MAX_TENSORS {
        return Err(r.refuse(format!(
            "tensor count {tensor_count} is more than the {MAX_TENSORS} allowed"
        )));
    }
    if kv_count > MAX_VALUES {
        return Err(r.refuse(format!(
            "metadata count {kv_count} is more than the {MAX_VALUES} values allowed"
        )));
    }
    // Both counts are capped, so this cannot overflow.
    let least = tensor_count * MIN_TENSOR_INFO_BYTES + kv_count * MIN_KV_BYTES;
    if least > r.remaining() {
        return Err(r.refuse(format!(
            "{tensor_count} tensors and {kv_count} metadata entries need at least {least} bytes but {} remain in the file (truncated?)",
            r.remaining()
        )));
    }

    let mut metadata = BTreeMap::new();
    for i in 0..kv_count {
        let key = r.string(format_args!("metadata key {i}"))?;
        let ty = r.u32(format_args!("the type of metadata `{key}`"))?;
        r.count_values(1, &key)?;
        let value = r.value(ty, &key, 0)?;
        if metadata.contains_key(&key) {
            return Err(r.refuse(format!("metadata key `{key}` appears twice")));
        }
        metadata.insert(key, value);
    }
    let alignment = alignment(file, &metadata)?;

    let mut tensors = Vec::new();
    let mut names = HashSet::new();
    for i in 0..tensor_count {
        let info = r.tensor_info(i, alignment)?;
        if !names.insert(info.name.clone()) {
            return Err(r.refuse(format!("tensor `{}` appears twice", info.name)));
        }
        tensors.push(info);
    }

    let data_start = r.pos.checked_next_multiple_of(alignment).ok_or_else(|| {
        r.bad(format!(
            "the data section's start ({} rounded up to {alignment}) overflows",
            r.pos
        ))
    })?;
    place(&r, &mut tensors, data_start)?;
    Ok(Gguf {
        file: file.into(),
        version,
        metadata,
        tensors,
        alignment,
        data_start,
    })
}

/// `general.alignment`: a u32, nonzero power of two (the data section and every tensor offset
/// are multiples of it); 32 when absent.
fn alignment(file: &str, metadata: &BTreeMap<String, Value>) -> Result<u64> {
    let bad = |why: String| Error::Field {
        file: file.into(),
        field: ALIGNMENT_KEY.into(),
        why,
    };
    match metadata.get(ALIGNMENT_KEY) {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(&Value::U32(a)) if a.is_power_of_two() => Ok(a.into()),
        Some(&Value::U32(a)) => Err(bad(format!("is {a}, not a nonzero power of two"))),
        Some(other) => Err(bad(format!("must be a u32, not {}", describe(other)))),
    }
}

/// Turns the tensors' offsets (relative to the data section) into absolute byte ranges, checking
/// that each lies inside the file and that no two overlap.
fn place(r: &Reader, tensors: &mut [TensorInfo], data_start: u64) -> Result<()> {
    for t in tensors.iter_mut() {
        let offset = t.start;
        let fits = |start: &u64| {
            start
                .checked_add(t.len)
                .is_some_and(|end| end <= r.file_size)
        };
        let Some(start) = data_start.checked_add(offset).filter(fits) else {
            return Err(r.bad(format!(
                "tensor `{}` ({} bytes at offset {offset} after the data section's start {data_start}) does not fit in the file's {} bytes (truncated?)",
                t.name, t.len, r.file_size
            )));
        };
        t.start = start;
    }
    let mut order: Vec<&TensorInfo> = tensors.iter().collect();
    order.sort_by_key(|t| (t.start, t.len));
    for pair in order.windows(2) {
        if let [a, b] = pair {
            if a.start + a.len > b.start {
                return Err(r.bad(format!(
                    "tensors `{}` (bytes {}..{}) and `{}` (bytes {}..{}) overlap",
                    a.name,
                    a.start,
                    a.start + a.len,
                    b.name,
                    b.start,
                    b.start + b.len
                )));
            }
        }
    }
    Ok(())
}

/// A cursor over the header prefix that checks every read against the file's real size.
struct Reader<'a> {
    file: &'a str,
    bytes: &'a [u8],
    file_size: u64,
    pos: u64,
    /// Metadata values read so far (for [`MAX_VALUES`]).
    values: u64,
}

impl<'a> Reader<'a> {
    fn bad(&self, why: impl fmt::Display) -> Error {
        Error::file(self.file, why)
    }

    fn refuse(&self, why: impl fmt::Display) -> Parse {
        Parse::Bad(self.bad(why))
    }

    /// Bytes left in the file after the cursor.
    fn remaining(&self) -> u64 {
        self.file_size.saturating_sub(self.pos)
    }

    /// The next `n` bytes: an error when the file ends first, `NeedMore` when only the prefix
    /// does. `what` names what is being read, formatted only on error.
    fn take(&mut self, n: u64, what: fmt::Arguments) -> std::result::Result<&'a [u8], Parse> {
        let Some(end) = self.pos.checked_add(n).filter(|&e| e <= self.file_size) else {
            return Err(self.refuse(format!(
                "truncated: {what} needs {n} bytes at offset {} but the file has {} bytes",
                self.pos, self.file_size
            )));
        };
        let range = usize::try_from(self.pos)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(s, e)| self.bytes.get(s..e));
        let Some(bytes) = range else {
            return Err(Parse::NeedMore(end));
        };
        self.pos = end;
        Ok(bytes)
    }

    fn fixed<const N: usize>(
        &mut self,
        what: fmt::Arguments,
    ) -> std::result::Result<[u8; N], Parse> {
        let bytes = self.take(N as u64, what)?;
        // `take` returned exactly N bytes.
        bytes
            .try_into()
            .map_err(|_| self.refuse("internal error: short read"))
    }

    fn u32(&mut self, what: fmt::Arguments) -> std::result::Result<u32, Parse> {
        self.fixed(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: fmt::Arguments) -> std::result::Result<u64, Parse> {
        self.fixed(what).map(u64::from_le_bytes)
    }

    /// A length-prefixed UTF-8 string. The length is checked against the file before anything
    /// is allocated.
    fn string(&mut self, what: fmt::Arguments) -> std::result::Result<String, Parse> {
        let len = self.u64(format_args!("the length of {what}"))?;
        let at = self.pos;
        let bytes = self.take(len, format_args!("{what} ({len} bytes long)"))?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => Err(self.refuse(format!("{what} (at offset {at}) is not UTF-8: {e}"))),
        }
    }

    /// Counts `n` more metadata values against [`MAX_VALUES`].
    fn count_values(&mut self, n: u64, key: &str) -> Result<()> {
        match self.values.checked_add(n).filter(|&v| v <= MAX_VALUES) {
            Some(v) => {
                self.values = v;
                Ok(())
            }
            None => Err(self.bad(format!(
                "metadata `{key}` brings the file past the {MAX_VALUES} metadata values allowed"
            ))),
        }
    }

    /// The `N` bytes of a scalar value of metadata key `key`.
    fn scalar<const N: usize>(&mut self, key: &str) -> std::result::Result<[u8; N], Parse> {
        self.fixed(format_args!("metadata `{key}`"))
    }

    /// A value of GGUF type `ty` for metadata key `key`; `depth` is 1 inside an array.
    fn value(&mut self, ty: u32, key: &str, depth: u8) -> std::result::Result<Value, Parse> {
        Ok(match ty {
            0 => Value::U8(u8::from_le_bytes(self.scalar(key)?)),
            1 => Value::I8(i8::from_le_bytes(self.scalar(key)?)),
            2 => Value::U16(u16::from_le_bytes(self.scalar(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.scalar(key)?)),
            4 => Value::U32(u32::from_le_bytes(self.scalar(key)?)),
            5 => Value::I32(i32::from_le_bytes(self.scalar(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.scalar(key)?)),
            7 => match self.scalar::<1>(key)? {
                [0] => Value::Bool(false),
                [1] => Value::Bool(true),
                [b] => {
                    return Err(self.refuse(format!(
                        "metadata `{key}`: bool byte {b} is neither 0 nor 1"
                    )))
                }
            },
            TYPE_STRING => Value::Str(self.string(format_args!("metadata `{key}`"))?),
            TYPE_ARRAY => self.array_value(key, depth)?,
            10 => Value::U64(u64::from_le_bytes(self.scalar(key)?)),
            11 => Value::I64(i64::from_le_bytes(self.scalar(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.scalar(key)?)),
            other => {
                return Err(self.refuse(format!("metadata `{key}`: unknown value type {other}")))
            }
        })
    }

    /// An array: element type, count, elements. The count is checked against the bytes the
    /// elements need at least and against [`MAX_VALUES`] before any element is read.
    fn array_value(&mut self, key: &str, depth: u8) -> std::result::Result<Value, Parse> {
        let elem = self.u32(format_args!("the element type of metadata `{key}`"))?;
        let n = self.u64(format_args!("the length of metadata `{key}`"))?;
        if elem == TYPE_ARRAY && depth > 0 {
            return Err(self.refuse(format!(
                "metadata `{key}`: arrays nested more than two deep are not supported"
            )));
        }
        let Some(min) = min_encoded_size(elem) else {
            return Err(self.refuse(format!(
                "metadata `{key}`: unknown array element type {elem}"
            )));
        };
        let least = n.checked_mul(min).filter(|&b| b <= self.remaining());
        let Some(least) = least else {
            return Err(self.refuse(format!(
                "metadata `{key}`: an array of {n} elements of type {elem} needs at least {} bytes but {} remain in the file (truncated?)",
                n.saturating_mul(min),
                self.remaining()
            )));
        };
        self.count_values(n, key)?;
        // Ask for the whole array at once rather than growing the prefix element by element.
        let end = self.pos + least;
        if usize::try_from(end).map_or(true, |e| e > self.bytes.len()) {
            return Err(Parse::NeedMore(end));
        }
        let mut values = Vec::new();
        for _ in 0..n {
            values.push(self.value(elem, key, depth + 1)?);
        }
        Ok(Value::Array(values))
    }

    /// Tensor info `i`: name, dims, type and offset (still relative to the data section), with
    /// its byte length computed from dims and type.
    fn tensor_info(&mut self, i: u64, alignment: u64) -> std::result::Result<TensorInfo, Parse> {
        let name = self.string(format_args!("the name of tensor {i}"))?;
        let bad = |r: &Self, why: String| r.refuse(format!("tensor `{name}`: {why}"));
        let n_dims = self.u32(format_args!("the dimension count of tensor `{name}`"))?;
        if !(1..=MAX_DIMS).contains(&n_dims) {
            return Err(bad(
                self,
                format!("{n_dims} dimensions (expected 1 to {MAX_DIMS})"),
            ));
        }
        let mut dims = Vec::new();
        for _ in 0..n_dims {
            dims.push(self.u64(format_args!("the dimensions of tensor `{name}`"))?);
        }
        let type_id = self.u32(format_args!("the type of tensor `{name}`"))?;
        // Relative to the data section until `place` makes it absolute.
        let offset = self.u64(format_args!("the offset of tensor `{name}`"))?;

        if dims.contains(&0) {
            return Err(bad(self, format!("dims {dims:?} contain a zero")));
        }
        let elements = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| i64::try_from(n).is_ok());
        let Some(elements) = elements else {
            return Err(bad(self, format!("dims {dims:?} overflow")));
        };
        let Some(ggml_type) = GgmlType::from_u32(type_id) else {
            return Err(bad(
                self,
                format!(
                    "unknown ggml type id {type_id}, so its size (and the file) cannot be checked"
                ),
            ));
        };
        // n_dims >= 1 was checked above.
        if !dims[0].is_multiple_of(ggml_type.block_elems()) {
            return Err(bad(
                self,
                format!(
                    "rows of {} elements are not whole {} blocks of {}",
                    dims[0],
                    ggml_type,
                    ggml_type.block_elems()
                ),
            ));
        }
        let len = (elements / ggml_type.block_elems()).checked_mul(ggml_type.block_bytes());
        let Some(len) = len else {
            return Err(bad(self, format!("dims {dims:?} of {ggml_type} overflow")));
        };
        if !offset.is_multiple_of(alignment) {
            return Err(bad(
                self,
                format!("offset {offset} is not a multiple of the alignment {alignment}"),
            ));
        }
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            start: offset,
            len,
        })
    }
}

/// The fewest bytes a value of GGUF type `ty` takes, or `None` for an unknown type.
fn min_encoded_size(ty: u32) -> Option<u64> {
    match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        TYPE_STRING | 10..=12 => Some(8),
        // Element type and count.
        TYPE_ARRAY => Some(12),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes GGUF bytes.
    #[derive(Default)]
    struct Writer(Vec<u8>);

    impl Writer {
        fn header(version: u32, tensors: u64, kvs: u64) -> Self {
            let mut w = Writer(b"GGUF".to_vec());
            w.u32(version);
            w.u64(tensors);
            w.u64(kvs);
            w
        }
        fn u32(&mut self, v: u32) {
            self.0.extend(v.to_le_bytes());
        }
        fn u64(&mut self, v: u64) {
            self.0.extend(v.to_le_bytes());
        }
        fn str(&mut self, s: &str) {
            self.bytes_str(s.as_bytes());
        }
        fn bytes_str(&mut self, s: &[u8]) {
            self.u64(s.len() as u64);
            self.0.extend(s);
        }
        fn kv(&mut self, key: &str, v: &Value) {
            self.str(key);
            self.u32(type_id(v));
            self.value(v);
        }
        fn value(&mut self, v: &Value) {
            match v {
                Value::U8(x) => self.0.extend(x.to_le_bytes()),
                Value::I8(x) => self.0.extend(x.to_le_bytes()),
                Value::U16(x) => self.0.extend(x.to_le_bytes()),
                Value::I16(x) => self.0.extend(x.to_le_bytes()),
                Value::U32(x) => self.0.extend(x.to_le_bytes()),
                Value::I32(x) => self.0.extend(x.to_le_bytes()),
                Value::F32(x) => self.0.extend(x.to_le_bytes()),
                Value::Bool(x) => self.0.push(u8::from(*x)),
                Value::Str(s) => self.str(s),
                Value::Array(a) => {
                    // Empty arrays are written as arrays of u8.
                    self.u32(a.first().map_or(0, type_id));
                    self.u64(a.len() as u64);
                    for x in a {
                        self.value(x);
                    }
                }
                Value::U64(x) => self.0.extend(x.to_le_bytes()),
                Value::I64(x) => self.0.extend(x.to_le_bytes()),
                Value::F64(x) => self.0.extend(x.to_le_bytes()),
            }
        }
        fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) {
            self.str(name);
            self.u32(dims.len() as u32);
            for &d in dims {
                self.u64(d);
            }
            self.u32(ty);
            self.u64(offset);
        }
        /// Pads to `alignment` and appends `data` bytes of tensor data.
        fn data(mut self, alignment: usize, data: usize) -> Vec<u8> {
            while !self.0.len().is_multiple_of(alignment) {
                self.0.push(0);
            }
            self.0.extend(vec![0xAB; data]);
            self.0
        }
    }

    fn type_id(v: &Value) -> u32 {
        match v {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    fn check(bytes: &[u8]) -> std::result::Result<Gguf, String> {
        match parse("m.gguf", bytes, bytes.len() as u64) {
            Ok(g) => Ok(g),
            Err(Parse::Bad(e)) => Err(e.to_string()),
            Err(Parse::NeedMore(n)) => panic!("a whole file asked for {n} bytes"),
        }
    }

    fn assert_refused(bytes: &[u8], expected: &[&str]) {
        let err = check(bytes).expect_err("should be refused");
        assert!(err.starts_with("m.gguf: "), "{err}");
        for e in expected {
            assert!(err.contains(e), "expected {e:?} in: {err}");
        }
    }

    fn every_type() -> Vec<(&'static str, Value)> {
        vec![
            ("a.u8", Value::U8(200)),
            ("a.i8", Value::I8(-5)),
            ("a.u16", Value::U16(60000)),
            ("a.i16", Value::I16(-30000)),
            ("a.u32", Value::U32(4_000_000_000)),
            ("a.i32", Value::I32(-7)),
            ("a.f32", Value::F32(1.5)),
            ("a.bool", Value::Bool(true)),
            ("a.str", Value::Str("héllo".into())),
            ("a.u64", Value::U64(1 << 40)),
            ("a.i64", Value::I64(-(1 << 40))),
            ("a.f64", Value::F64(0.25)),
            (
                "a.strings",
                Value::Array(vec![Value::Str("x".into()), Value::Str(String::new())]),
            ),
            ("a.empty", Value::Array(vec![])),
            (
                "a.nested",
                Value::Array(vec![
                    Value::Array(vec![Value::U8(1), Value::U8(2)]),
                    Value::Array(vec![Value::U8(3)]),
                ]),
            ),
        ]
    }

    /// A valid file: every value type, alignment 64, an F32 tensor [4, 2] and a Q8_0 tensor
    /// [32] at offset 64 (the first tensor's 32 bytes padded to the alignment).
    fn valid() -> Vec<u8> {
        valid_header().data(64, 64 + 34)
    }

    /// [`valid`] up to the end of its tensor infos.
    fn valid_header() -> Writer {
        let kvs = every_type();
        let mut w = Writer::header(3, 2, kvs.len() as u64 + 1);
        for (k, v) in &kvs {
            w.kv(k, v);
        }
        w.kv(ALIGNMENT_KEY, &Value::U32(64));
        w.tensor("a", &[4, 2], 0, 0);
        w.tensor("b", &[32], 8, 64);
        w
    }

    #[test]
    fn a_valid_file_round_trips() {
        let bytes = valid();
        let g = check(&bytes).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.alignment, 64);
        assert_eq!(g.data_start % 64, 0);
        assert_eq!(g.data_start, bytes.len() as u64 - 98);
        for (k, v) in every_type() {
            assert_eq!(g.get(k), Some(&v), "{k}");
        }
        assert_eq!(
            g.tensors,
            vec![
                TensorInfo {
                    name: "a".into(),
                    dims: vec![4, 2],
                    ggml_type: GgmlType::F32,
                    start: g.data_start,
                    len: 32,
                },
                TensorInfo {
                    name: "b".into(),
                    dims: vec![32],
                    ggml_type: GgmlType::Q8_0,
                    start: g.data_start + 64,
                    len: 34,
                },
            ]
        );
        assert_eq!(g.tensor("b").map(TensorInfo::elements), Some(32));
        // Version 2 reads the same.
        let mut v2 = bytes.clone();
        v2[4] = 2;
        assert_eq!(check(&v2).unwrap().version, 2);
    }

    #[test]
    fn typed_getters_convert_or_name_the_key() {
        let g = check(&valid()).unwrap();
        assert_eq!(g.u64("a.u8").unwrap(), 200);
        assert_eq!(
            g.u64("a.i32").unwrap_err().to_string(),
            "m.gguf: `a.i32` must be a non-negative integer, not -7 (i32)"
        );
        assert_eq!(g.f64("a.f32").unwrap(), 1.5);
        assert_eq!(g.f64("a.u16").unwrap(), 60000.0);
        assert_eq!(g.str("a.str").unwrap(), "héllo");
        assert!(g
            .str("a.u8")
            .unwrap_err()
            .to_string()
            .contains("`a.u8` must be a string, not 200 (u8)"));
        assert_eq!(
            g.str("nope").unwrap_err().to_string(),
            "m.gguf: `nope` is missing"
        );
        assert_eq!(g.opt_str("nope").unwrap(), None);
        assert_eq!(g.opt_bool("a.bool").unwrap(), Some(true));
        assert_eq!(
            g.opt_array("a.strings").unwrap().map(<[Value]>::len),
            Some(2)
        );
        assert!(g.opt_array("a.str").is_err());
        assert_eq!(g.opt_f64("nope").unwrap(), None);
    }

    #[test]
    fn ggml_types_know_their_layouts() {
        let cases = [
            (0, "F32", 1, 4),
            (1, "F16", 1, 2),
            (2, "Q4_0", 32, 18),
            (3, "Q4_1", 32, 20),
            (8, "Q8_0", 32, 34),
            (12, "Q4_K", 256, 144),
            (13, "Q5_K", 256, 176),
            (14, "Q6_K", 256, 210),
            (30, "BF16", 1, 2),
            (6, "Q5_0", 32, 22),
            (11, "Q3_K", 256, 110),
        ];
        for (id, name, elems, bytes) in cases {
            let t = GgmlType::from_u32(id).unwrap();
            assert_eq!(
                (t.id(), t.name(), t.block_elems(), t.block_bytes()),
                (id, name, elems, bytes)
            );
        }
        assert!(matches!(GgmlType::from_u32(6), Some(GgmlType::Other(t)) if t.id() == 6));
        assert_eq!(GgmlType::from_u32(4), None);
        assert_eq!(GgmlType::from_u32(1000), None);
    }

    #[test]
    fn a_short_prefix_asks_for_more_and_a_short_file_is_truncated() {
        let bytes = valid();
        let header = valid_header().0.len();
        for cut in [3, 10, 30, 100, header - 1] {
            match parse("m.gguf", &bytes[..cut], bytes.len() as u64) {
                Err(Parse::NeedMore(n)) => {
                    assert!(n > cut as u64 && n <= bytes.len() as u64, "{cut}: {n}")
                }
                other => panic!("{cut}: {other:?}"),
            }
            assert_refused(&bytes[..cut], &["truncated"]);
        }
        // The tensors' data missing.
        assert_refused(
            &bytes[..bytes.len() - 1],
            &["tensor `b`", "does not fit", "truncated?"],
        );
    }

    #[test]
    fn header_level_problems_are_named() {
        let mut bad_magic = valid();
        bad_magic[..4].copy_from_slice(b"GGML");
        assert_refused(&bad_magic, &["not a GGUF file", "GGML"]);

        let v1 = Writer::header(1, 0, 0).0;
        assert_refused(&v1, &["GGUF version 1 is not supported"]);
        let v9 = Writer::header(9, 0, 0).0;
        assert_refused(&v9, &["unsupported GGUF version 9"]);
        let big_endian = Writer::header(3u32.swap_bytes(), 0, 0).0;
        assert_refused(&big_endian, &["big-endian"]);

        let mut huge = Writer::header(3, 1 << 40, 0);
        huge.0.extend([0; 64]);
        assert_refused(&huge.0, &["tensor count 1099511627776", "allowed"]);
        let mut many = Writer::header(3, 1000, 1000);
        many.0.extend([0; 64]);
        assert_refused(
            &many.0,
            &["1000 tensors and 1000 metadata entries need at least"],
        );
    }

    #[test]
    fn metadata_problems_are_named() {
        let one = |f: &dyn Fn(&mut Writer)| {
            let mut w = Writer::header(3, 0, 1);
            f(&mut w);
            w.0
        };
        // A string longer than the file.
        let huge_string = one(&|w| {
            w.u64(5);
            w.0.extend(b"a.key");
            w.u32(8);
            w.u64(u64::MAX / 2);
        });
        assert_refused(
            &huge_string,
            &["truncated", "metadata `a.key`", "9223372036854775807 bytes"],
        );
        // An array count no file could hold, and one past the value cap.
        let huge_array = one(&|w| {
            w.str("a.arr");
            w.u32(9);
            w.u32(10);
            w.u64(u64::MAX / 4);
            w.0.extend([0; 16]);
        });
        assert_refused(
            &huge_array,
            &["metadata `a.arr`", "needs at least", "remain in the file"],
        );
        let mut past_cap = one(&|w| {
            w.str("a.arr");
            w.u32(9);
            w.u32(0);
            w.u64(MAX_VALUES);
        });
        past_cap.extend(vec![0; MAX_VALUES as usize]);
        assert_refused(&past_cap, &["metadata `a.arr`", "metadata values allowed"]);
        // Arrays of arrays of arrays.
        let deep = one(&|w| {
            w.str("a.deep");
            w.u32(9);
            w.u32(9);
            w.u64(1);
            w.u32(9);
            w.u64(1);
        });
        assert_refused(&deep, &["metadata `a.deep`", "nested more than two deep"]);
        // Non-UTF-8 keys and strings, unknown types, bad bools.
        let bad_key = one(&|w| {
            w.bytes_str(b"a.\xFF");
            w.u32(0);
            w.0.push(0);
        });
        assert_refused(&bad_key, &["metadata key 0", "is not UTF-8"]);
        let bad_str = one(&|w| {
            w.str("a.s");
            w.u32(8);
            w.bytes_str(b"\xC3");
        });
        assert_refused(&bad_str, &["metadata `a.s`", "not UTF-8"]);
        let bad_type = one(&|w| {
            w.str("a.t");
            w.u32(13);
            w.u64(0);
        });
        assert_refused(&bad_type, &["metadata `a.t`", "unknown value type 13"]);
        let bad_bool = one(&|w| {
            w.str("a.b");
            w.u32(7);
            w.0.push(2);
        });
        assert_refused(&bad_bool, &["metadata `a.b`", "bool byte 2"]);

        let mut dup = Writer::header(3, 0, 2);
        dup.kv("a.k", &Value::U8(1));
        dup.kv("a.k", &Value::U8(2));
        assert_refused(&dup.0, &["metadata key `a.k` appears twice"]);

        for (alignment, expected) in [
            (Value::U32(0), "is 0, not a nonzero power of two"),
            (Value::U32(48), "is 48, not a nonzero power of two"),
            (Value::U64(32), "must be a u32, not 32 (u64)"),
        ] {
            let mut w = Writer::header(3, 0, 1);
            w.kv(ALIGNMENT_KEY, &alignment);
            assert_refused(&w.0, &["`general.alignment`", expected]);
        }
    }

    /// A tensor info: name, dims, ggml type id, offset.
    type Spec<'a> = (&'a str, &'a [u64], u32, u64);

    /// A file with these tensor infos and `data` bytes of tensor data.
    fn with_tensors(tensors: &[Spec], data: usize) -> Vec<u8> {
        let mut w = Writer::header(3, tensors.len() as u64, 0);
        for &(name, dims, ty, offset) in tensors {
            w.tensor(name, dims, ty, offset);
        }
        w.data(32, data)
    }

    #[test]
    fn tensor_problems_are_named() {
        let cases: &[(&[Spec], usize, &[&str])] = &[
            (
                &[("t", &[u64::MAX, 4], 0, 0)],
                64,
                &["tensor `t`", "overflow"],
            ),
            (
                &[("t", &[1 << 32, 1 << 31], 0, 0)],
                64,
                &["tensor `t`", "overflow"],
            ),
            // Fits in elements but not in bytes.
            (
                &[("t", &[1 << 31, 1 << 31], 0, 0)],
                64,
                &["tensor `t`", "of F32 overflow"],
            ),
            (
                &[("t", &[4, 0], 0, 0)],
                64,
                &["tensor `t`", "contain a zero"],
            ),
            (
                &[("t", &[1, 1, 1, 1, 1], 0, 0)],
                64,
                &["tensor `t`", "5 dimensions"],
            ),
            (&[("t", &[], 0, 0)], 64, &["tensor `t`", "0 dimensions"]),
            (
                &[("t", &[4], 0, 16)],
                64,
                &["tensor `t`", "offset 16", "alignment 32"],
            ),
            (&[("t", &[4], 0, 32)], 40, &["tensor `t`", "does not fit"]),
            (
                &[("t", &[16], 2, 0)],
                64,
                &["tensor `t`", "rows of 16", "Q4_0 blocks of 32"],
            ),
            (
                &[("t", &[4], 77, 0)],
                64,
                &["tensor `t`", "unknown ggml type id 77"],
            ),
            (
                &[("a", &[16], 0, 0), ("b", &[4], 0, 32)],
                64,
                &["tensors `a` (bytes", "and `b`", "overlap"],
            ),
            (
                &[("a", &[4], 0, 0), ("a", &[4], 0, 32)],
                64,
                &["tensor `a` appears twice"],
            ),
        ];
        for (tensors, data, expected) in cases {
            assert_refused(&with_tensors(tensors, *data), expected);
        }
        // Two tensors at the same offset overlap whichever comes first in the file.
        let same = with_tensors(&[("b", &[4], 0, 0), ("a", &[8], 0, 0)], 64);
        assert_refused(&same, &["overlap"]);

        let mut bad_name = Writer::header(3, 1, 0);
        bad_name.bytes_str(b"blk.\xFF");
        assert_refused(
            &bad_name.data(32, 0),
            &["the name of tensor 0", "not UTF-8"],
        );
        // A known type without a variant still parses.
        let q5 = check(&with_tensors(&[("t", &[32], 6, 0)], 22)).unwrap();
        assert_eq!(q5.tensors[0].ggml_type.name(), "Q5_0");
        assert_eq!(q5.tensors[0].len, 22);
    }

    // pollster (blocking on the reads) is a native dependency.
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn read_grows_the_prefix_until_the_header_fits() {
        let bytes = valid();
        let mut files = crate::files::MemoryFiles::default();
        files.0.insert("m.gguf".into(), bytes.clone().into());
        let whole = check(&bytes).unwrap();
        for first in [1, 64, 200, 1 << 20] {
            let g = pollster::block_on(read_with(&files, "m.gguf", first, 1 << 20)).unwrap();
            assert_eq!(g.metadata, whole.metadata);
            assert_eq!(g.tensors, whole.tensors);
        }
        let err = pollster::block_on(read_with(&files, "m.gguf", 64, 128)).unwrap_err();
        assert!(
            err.to_string().contains("needs more than 128 bytes"),
            "{err}"
        );
        assert!(pollster::block_on(read(&files, "m.gguf")).is_ok());
        let missing = pollster::block_on(read(&files, "x.gguf")).unwrap_err();
        assert_eq!(missing.to_string(), "x.gguf: no such file");
    }
}
