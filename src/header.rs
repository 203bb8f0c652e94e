//! The safetensors header: an 8-byte little-endian length, then a JSON object of tensor name to
//! `{dtype, shape, data_offsets}` (offsets relative to the data section that follows).
//!
//! Validated as the `safetensors` crate validates it (its `read_metadata` is the reference the
//! fuzz target compares against), plus duplicate names, which JSON parsers otherwise resolve by
//! keeping the last: offsets sorted, contiguous from 0 and non-overlapping, every size equal to its
//! shape times its dtype (checked arithmetic), and the tensors covering the data section exactly.
//! Offsets are u64 so files past 4 GiB also work on wasm32. Only the header is read; tensors are
//! read later by byte range.

use crate::error::{Error, Result};
use crate::files::Files;
use safetensors::Dtype;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::HashSet;

/// The safetensors crate's cap on the header.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// A tensor's element type: a safetensors dtype, or a GGUF (ggml) type, whose elements come in
/// blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    Safetensors(Dtype),
    Ggml(crate::gguf::GgmlType),
}

impl std::fmt::Display for TensorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TensorType::Safetensors(d) => write!(f, "{d}"),
            TensorType::Ggml(t) => write!(f, "{}", t.name()),
        }
    }
}

/// Where one tensor's bytes are.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    pub file: String,
    pub dtype: TensorType,
    pub shape: Vec<usize>,
    /// Absolute byte offset in the file.
    pub start: u64,
    pub len: u64,
}

impl TensorEntry {
    /// Elements in the tensor (the header check guarantees no overflow).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

#[derive(Deserialize)]
struct RawInfo {
    dtype: Dtype,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// The header's entries in file order, refusing a name that appears twice.
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object of tensor names")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Entries, A::Error> {
                let mut seen = HashSet::new();
                let mut out = vec![];
                while let Some((name, value)) = map.next_entry::<String, serde_json::Value>()? {
                    if !seen.insert(name.clone()) {
                        return Err(serde::de::Error::custom(format!(
                            "the name `{name}` appears twice"
                        )));
                    }
                    out.push((name, value));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Reads and validates the header of `file`.
pub async fn read(files: &impl Files, file: &str) -> Result<Vec<(String, TensorEntry)>> {
    let size = files.size_of(file).await?;
    let bad = |why: String| Error::Safetensors {
        file: file.into(),
        why,
    };
    if size < 8 {
        return Err(bad(format!("only {size} bytes, too short for a header")));
    }
    let prefix = files.read_range(file, 0, 8).await?;
    let n = u64::from_le_bytes(
        prefix
            .as_ref()
            .try_into()
            .map_err(|_| bad("short read".into()))?,
    );
    if n > MAX_HEADER_BYTES || n > size - 8 {
        return Err(bad(format!(
            "header length {n} does not fit in the file ({size} bytes) or exceeds {MAX_HEADER_BYTES}"
        )));
    }
    let header = files.read_range(file, 8, n as usize).await?;
    parse(file, size, &header)
}

/// Validates a header (the `n` bytes after the length prefix) of a file of `size` bytes.
pub fn parse(file: &str, size: u64, header: &[u8]) -> Result<Vec<(String, TensorEntry)>> {
    let bad = |why: String| Error::Safetensors {
        file: file.into(),
        why,
    };
    let n = header.len() as u64;
    let text = std::str::from_utf8(header).map_err(|e| bad(format!("header is not UTF-8: {e}")))?;
    let Entries(entries) =
        serde_json::from_str(text).map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
    let mut tensors: Vec<(String, RawInfo)> = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        if name == "__metadata__" {
            let strings = value
                .as_object()
                .is_some_and(|m| m.values().all(serde_json::Value::is_string));
            if !strings {
                return Err(bad("`__metadata__` must map strings to strings".into()));
            }
            continue;
        }
        let info: RawInfo =
            serde_json::from_value(value).map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
        tensors.push((name, info));
    }
    tensors.sort_by_key(|(_, info)| info.data_offsets);

    let mut at = 0u64;
    let mut out = Vec::with_capacity(tensors.len());
    for (name, info) in tensors {
        let (begin, end) = info.data_offsets;
        if begin != at || end < begin {
            return Err(bad(format!(
                "tensor `{name}`: data_offsets [{begin}, {end}] {}",
                if begin > at {
                    format!("leave bytes {at}..{begin} unused")
                } else if begin < at {
                    format!("overlap the tensor before it (which ends at {at})")
                } else {
                    "end before they begin".to_string()
                }
            )));
        }
        let bits = info
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|numel| numel.checked_mul(info.dtype.bitsize() as u64))
            .ok_or_else(|| bad(format!("tensor `{name}`: shape {:?} overflows", info.shape)))?;
        if bits % 8 != 0 {
            return Err(bad(format!(
                "tensor `{name}`: {bits} bits of {} do not fill whole bytes",
                info.dtype
            )));
        }
        if end - begin != bits / 8 {
            return Err(bad(format!(
                "tensor `{name}`: shape {:?} of {} needs {} bytes but data_offsets span {}",
                info.shape,
                info.dtype,
                bits / 8,
                end - begin
            )));
        }
        let shape = info
            .shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<std::result::Result<Vec<usize>, _>>()
            .map_err(|_| {
                bad(format!(
                    "tensor `{name}`: shape too large for this platform"
                ))
            })?;
        at = end;
        out.push((
            name,
            TensorEntry {
                file: file.into(),
                dtype: TensorType::Safetensors(info.dtype),
                shape,
                start: 8 + n + begin,
                len: end - begin,
            },
        ));
    }
    // 8 + n <= size was checked by the caller or is implied by the header being in memory.
    let data = size.saturating_sub(8 + n);
    if at != data {
        return Err(bad(if at > data {
            format!(
                "the tensors need {at} bytes of data after the header but the file has {data} (truncated?)"
            )
        } else {
            format!(
                "{} bytes after the last tensor are not covered by any tensor (wrong header length?)",
                data - at
            )
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend(header.as_bytes());
        out.extend(vec![0u8; data]);
        out
    }

    fn check(bytes: &[u8]) -> Result<Vec<(String, TensorEntry)>> {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        parse("f", bytes.len() as u64, &bytes[8..8 + n])
    }

    #[test]
    fn valid_headers_agree_with_the_safetensors_crate() {
        let h = r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}}"#;
        let bytes = file(h, 12);
        let ours = check(&bytes).unwrap();
        let (_, theirs) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(ours.len(), theirs.tensors().len());
        assert_eq!(ours[0].0, "a");
        assert_eq!(ours[1].1.start, 8 + h.len() as u64 + 4);
    }

    #[test]
    fn every_inconsistency_is_named() {
        let cases = [
            // Duplicate names (JSON parsers keep the last one).
            (
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                4,
                "appears twice",
            ),
            // Overlapping and gapped offsets.
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                8,
                "overlap",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                8,
                "unused",
            ),
            // A size that overflows, and one that wraps.
            (
                r#"{"a":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,0]}}"#,
                0,
                "overflows",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551615]}}"#,
                4,
                "needs 4 bytes",
            ),
            // Data the tensors do not cover, and data missing.
            (
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                5,
                "not covered",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                3,
                "truncated",
            ),
            (r#"{"__metadata__":{"x":1}}"#, 0, "__metadata__"),
            (
                r#"{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}}"#,
                1,
                "whole bytes",
            ),
        ];
        for (header, data, expected) in cases {
            let bytes = file(header, data);
            let err = check(&bytes).unwrap_err().to_string();
            assert!(
                err.contains(expected) && err.starts_with("f:"),
                "{header}: {err}"
            );
            if expected != "appears twice" {
                assert!(
                    safetensors::SafeTensors::read_metadata(&bytes).is_err(),
                    "{header}"
                );
            }
        }
    }

    #[test]
    fn a_length_prefix_one_byte_short_is_caught() {
        let h = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}  "#;
        let mut bytes = file(h, 4);
        bytes[..8].copy_from_slice(&(h.len() as u64 - 1).to_le_bytes());
        assert!(check(&bytes)
            .unwrap_err()
            .to_string()
            .contains("not covered"));
    }
}
