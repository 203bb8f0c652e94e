//! A Hugging Face tokenizer.json (the `tokenizers` crate's format) rebuilt from a GGUF file's
//! tokenizer metadata, to match the tokenizer the model was converted from.
//!
//! llama.cpp's convert_hf_to_gguf.py stores the vocabulary (`tokenizer.ggml.tokens`, with a
//! llama.cpp token type per token), and then either BPE merges (`tokenizer.ggml.model` "gpt2":
//! byte-level BPE, its pre-tokenizer named by `tokenizer.ggml.pre`) or SentencePiece scores
//! ("llama"). Two kinds are rebuilt:
//!
//! - "gpt2": BPE over the vocabulary and merges as stored, with the pre-tokenizer Hugging Face's
//!   tokenizer.json uses for that `tokenizer.ggml.pre` (llama.cpp's llama-vocab.cpp maps the same
//!   names to its regexes). Only names whose Hugging Face pre-tokenizer is known exactly are
//!   accepted; another is refused rather than tokenized slightly wrong.
//! - "llama": Hugging Face's Llama (SentencePiece BPE) tokenizer.json: byte fallback, the
//!   `▁`-prefix normalizer, and merges derived from the scores as transformers' GGUF loader
//!   derives them (see `spm_merges`).
//!
//! Control and unknown tokens become special added tokens and user-defined ones non-special added
//! tokens (matched in raw text, as llama.cpp and the original tokenizer match them). BOS and EOS
//! are added by a post-processor as `tokenizer.ggml.add_bos_token` / `add_eos_token` say,
//! defaulting as llama.cpp does. Where this differs from transformers' own GGUF loader it follows
//! the file (and llama.cpp): transformers ignores `tokenizer.ggml.pre` and `add_bos_token` (always
//! adding BOS and splitting byte-level text with GPT-2's regex) and drops user-defined tokens.

use super::{describe, Gguf, Value};
use crate::error::Result;
use serde_json::{json, Map, Value as Json};
use std::collections::HashMap;

const MODEL: &str = "tokenizer.ggml.model";
const PRE: &str = "tokenizer.ggml.pre";
const TOKENS: &str = "tokenizer.ggml.tokens";
const SCORES: &str = "tokenizer.ggml.scores";
const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const MERGES: &str = "tokenizer.ggml.merges";
const BOS_ID: &str = "tokenizer.ggml.bos_token_id";
const EOS_ID: &str = "tokenizer.ggml.eos_token_id";
const UNK_ID: &str = "tokenizer.ggml.unknown_token_id";
const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
const ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
const CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// llama.cpp's token types (`llama_token_type`) that matter here.
const NORMAL: i64 = 1;
const UNKNOWN: i64 = 2;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// SentencePiece's word-boundary marker.
const SPACE_MARK: &str = "▁";

/// Most work (bytes hashed) spent deriving SentencePiece merges: every token is split at every
/// character and both halves looked up, so a token of n bytes costs about n² and a hostile
/// vocabulary of long tokens could take hours. Real vocabularies need a few percent of this at
/// most (Llama 2's about a million, 256k-token ones a few tens of millions).
const MAX_MERGE_WORK: u64 = 1 << 30;

/// Llama 3's pre-tokenizer regex, as in its tokenizer.json (llama.cpp spells the case-insensitive
/// group out for its own regex engine).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: Llama 3's, but one digit at a time.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A byte-level BPE pre-tokenizer, by the Hugging Face tokenizer.json that produced it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Pre {
    /// GPT-2's: ByteLevel with its built-in regex.
    Gpt2,
    /// Llama 3's: Split by [`LLAMA3_REGEX`], then ByteLevel without a regex; BPE with
    /// `ignore_merges` (a word already in the vocabulary is one token).
    Llama3,
    /// Qwen2's: NFC, Split by [`QWEN2_REGEX`], then ByteLevel without a regex.
    Qwen2,
    /// StarCoder's and SmolLM's: every digit alone, then GPT-2's ByteLevel.
    Digits,
}

/// `tokenizer.ggml.pre` names (as llama.cpp's llama-vocab.cpp reads them) and their
/// tokenizer.json. "default" is what llama.cpp assumes when the key is missing; llama.cpp then
/// splits with a regex of its own, but no Hugging Face tokenizer has that one, so GPT-2's (which
/// transformers uses for every byte-level GGUF) stands in for it.
const PRE_TYPES: &[(&str, Pre)] = &[
    ("default", Pre::Gpt2),
    ("gpt-2", Pre::Gpt2),
    ("gpt2", Pre::Gpt2),
    ("llama-bpe", Pre::Llama3),
    ("llama3", Pre::Llama3),
    ("llama-v3", Pre::Llama3),
    ("qwen2", Pre::Qwen2),
    ("smollm", Pre::Digits),
    ("starcoder", Pre::Digits),
    ("refact", Pre::Digits),
];

/// The text of the special tokens a chat template refers to as `bos_token` and `eos_token`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
}

/// The tokenizer.json for the GGUF file's tokenizer.
pub fn tokenizer_json(gguf: &Gguf) -> Result<Json> {
    let vocab = Vocab::read(gguf)?;
    match gguf.str(MODEL)? {
        "gpt2" => byte_level_bpe(gguf, &vocab),
        "llama" => sentencepiece_bpe(gguf, &vocab),
        other => Err(gguf.field_error(
            MODEL,
            format!("is {other:?}; only \"gpt2\" (byte-level BPE) and \"llama\" (SentencePiece) tokenizers are supported"),
        )),
    }
}

/// The BOS and EOS tokens' text (`tokenizer.ggml.bos_token_id` / `eos_token_id`), each `None`
/// when the file names none.
pub fn special_tokens(gguf: &Gguf) -> Result<SpecialTokens> {
    let vocab = Vocab::read(gguf)?;
    let text = |key| -> Result<Option<String>> {
        Ok(vocab.token(gguf, key)?.map(|(_, text)| text.to_owned()))
    };
    Ok(SpecialTokens {
        bos: text(BOS_ID)?,
        eos: text(EOS_ID)?,
    })
}

/// The chat template (`tokenizer.chat_template`, tokenizer_config.json's `chat_template`), if
/// the file has one.
pub fn chat_template(gguf: &Gguf) -> Result<Option<&str>> {
    gguf.opt_str(CHAT_TEMPLATE)
}

/// The vocabulary: token text and llama.cpp token type by id, and id by text.
struct Vocab<'a> {
    tokens: Vec<&'a str>,
    types: Vec<i64>,
    ids: HashMap<&'a str, u32>,
}

impl<'a> Vocab<'a> {
    fn read(gguf: &'a Gguf) -> Result<Self> {
        let list = gguf
            .opt_array(TOKENS)?
            .ok_or_else(|| gguf.field_error(TOKENS, "is missing"))?;
        if list.is_empty() {
            return Err(gguf.field_error(TOKENS, "is empty"));
        }
        let mut tokens = Vec::new();
        let mut ids = HashMap::new();
        for (i, value) in list.iter().enumerate() {
            let token = value.as_str().ok_or_else(|| {
                gguf.field_error(
                    TOKENS,
                    format!("element {i} is {}, not a string", describe(value)),
                )
            })?;
            let id = u32::try_from(i)
                .map_err(|_| gguf.field_error(TOKENS, "has more than 2^32 tokens"))?;
            // A tokenizer.json vocabulary maps each text to one id (llama.cpp refuses these too).
            if let Some(first) = ids.insert(token, id) {
                return Err(gguf.field_error(
                    TOKENS,
                    format!("holds {token:?} twice (ids {first} and {id})"),
                ));
            }
            tokens.push(token);
        }
        let types = match gguf.opt_array(TOKEN_TYPE)? {
            None => vec![NORMAL; tokens.len()],
            Some(list) => {
                same_length(gguf, TOKEN_TYPE, list, tokens.len())?;
                list.iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_i64().ok_or_else(|| {
                            gguf.field_error(
                                TOKEN_TYPE,
                                format!("element {i} is {}, not an integer", describe(v)),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>>>()?
            }
        };
        Ok(Vocab { tokens, types, ids })
    }

    fn len(&self) -> usize {
        self.tokens.len()
    }

    /// The id and text of the token whose id is stored under `key`; an error when the id is
    /// not in the vocabulary.
    fn token(&self, gguf: &Gguf, key: &str) -> Result<Option<(u32, &'a str)>> {
        let Some(id) = gguf.opt_u64(key)? else {
            return Ok(None);
        };
        let token = u32::try_from(id)
            .ok()
            .and_then(|id| Some((id, *self.tokens.get(id as usize)?)));
        match token {
            Some(token) => Ok(Some(token)),
            None => Err(gguf.field_error(
                key,
                format!("is {id} but the vocabulary has {} tokens", self.len()),
            )),
        }
    }

    /// The tokenizer.json `vocab`: text to id.
    fn json(&self) -> Json {
        let map: Map<String, Json> = self
            .tokens
            .iter()
            .zip(0u32..)
            .map(|(t, id)| ((*t).to_owned(), id.into()))
            .collect();
        Json::Object(map)
    }

    /// Control and unknown tokens as special added tokens, user-defined ones as plain added
    /// tokens; none normalized, so they match the raw text.
    fn added_tokens(&self) -> Json {
        let added = self
            .tokens
            .iter()
            .zip(&self.types)
            .zip(0u32..)
            .filter_map(|((token, &ty), id)| {
                let special = match ty {
                    CONTROL | UNKNOWN => true,
                    USER_DEFINED => false,
                    _ => return None,
                };
                Some(json!({
                    "id": id,
                    "content": token,
                    "single_word": false,
                    "lstrip": false,
                    "rstrip": false,
                    "normalized": false,
                    "special": special,
                }))
            })
            .collect();
        Json::Array(added)
    }
}

/// Checks that array `key` has one element per token.
fn same_length(gguf: &Gguf, key: &str, list: &[Value], tokens: usize) -> Result<()> {
    if list.len() != tokens {
        return Err(gguf.field_error(
            key,
            format!(
                "has {} values but the vocabulary has {tokens} tokens",
                list.len()
            ),
        ));
    }
    Ok(())
}

/// The "gpt2" tokenizer: byte-level BPE with the stored merges.
fn byte_level_bpe(gguf: &Gguf, vocab: &Vocab) -> Result<Json> {
    let name = gguf.opt_str(PRE)?.unwrap_or("default");
    let Some(&(_, pre)) = PRE_TYPES.iter().find(|(n, _)| *n == name) else {
        let known: Vec<&str> = PRE_TYPES.iter().map(|(n, _)| *n).collect();
        return Err(gguf.field_error(
            PRE,
            format!(
                "is {name:?}, a pre-tokenizer this runtime cannot rebuild exactly (supported: {})",
                known.join(", ")
            ),
        ));
    };
    let merges = stored_merges(gguf, vocab)?;

    let byte_level = |use_regex: bool| {
        json!({
            "type": "ByteLevel",
            "add_prefix_space": false,
            "trim_offsets": true,
            "use_regex": use_regex,
        })
    };
    let split = |regex: &str| {
        json!({
            "type": "Split",
            "pattern": {"Regex": regex},
            "behavior": "Isolated",
            "invert": false,
        })
    };
    let sequence = |steps: Vec<Json>| json!({"type": "Sequence", "pretokenizers": steps});
    let (normalizer, pre_tokenizer) = match pre {
        Pre::Gpt2 => (Json::Null, byte_level(true)),
        Pre::Llama3 => (
            Json::Null,
            sequence(vec![split(LLAMA3_REGEX), byte_level(false)]),
        ),
        Pre::Qwen2 => (
            json!({"type": "NFC"}),
            sequence(vec![split(QWEN2_REGEX), byte_level(false)]),
        ),
        Pre::Digits => (
            Json::Null,
            sequence(vec![
                json!({"type": "Digits", "individual_digits": true}),
                byte_level(true),
            ]),
        ),
    };
    // llama.cpp adds BOS by default only for Llama 3's family.
    let post_processor = post_processor(gguf, vocab, pre == Pre::Llama3)?;
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": vocab.added_tokens(),
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": pre == Pre::Llama3,
            "vocab": vocab.json(),
            "merges": merges_json(&merges),
        },
    }))
}

/// `tokenizer.ggml.merges`: strings "a b", split at the first space after the first byte as
/// llama.cpp splits them, with a, b and ab all in the vocabulary (the `tokenizers` crate refuses
/// a merge otherwise, naming neither file nor merge).
fn stored_merges<'a>(gguf: &'a Gguf, vocab: &Vocab) -> Result<Vec<(&'a str, &'a str)>> {
    let list = gguf.opt_array(MERGES)?.ok_or_else(|| {
        gguf.field_error(
            MERGES,
            "is missing (a byte-level BPE tokenizer needs its merges)",
        )
    })?;
    let mut merges = Vec::new();
    for (i, value) in list.iter().enumerate() {
        let bad = |why: String| gguf.field_error(MERGES, format!("element {i} {why}"));
        let merge = value
            .as_str()
            .ok_or_else(|| bad(format!("is {}, not a string", describe(value))))?;
        let split = merge
            .char_indices()
            .find(|&(at, c)| at > 0 && c == ' ')
            .map(|(at, _)| (&merge[..at], &merge[at + 1..]));
        let Some((a, b)) = split.filter(|(_, b)| !b.is_empty()) else {
            return Err(bad(format!("({merge:?}) is not of the form \"a b\"")));
        };
        for part in [a, b, &format!("{a}{b}")] {
            if !vocab.ids.contains_key(part) {
                return Err(bad(format!(
                    "({merge:?}) needs {part:?}, which is not in the vocabulary"
                )));
            }
        }
        merges.push((a, b));
    }
    Ok(merges)
}

/// Merges as tokenizer.json pairs, which (unlike "a b" strings) also hold tokens with spaces.
fn merges_json(merges: &[(&str, &str)]) -> Json {
    Json::Array(merges.iter().map(|&(a, b)| json!([a, b])).collect())
}

/// The "llama" tokenizer: Hugging Face's Llama tokenizer.json (SentencePiece BPE with byte
/// fallback).
fn sentencepiece_bpe(gguf: &Gguf, vocab: &Vocab) -> Result<Json> {
    let scores = scores(gguf, vocab)?;
    let merges = spm_merges(gguf, vocab, &scores)?;
    let add_space_prefix = gguf.opt_bool(ADD_SPACE_PREFIX)?.unwrap_or(true);
    // Without an id, the token typed unknown (as SentencePiece's <unk> is).
    let unk = match vocab.token(gguf, UNK_ID)? {
        Some((_, text)) => Some(text),
        None => vocab
            .tokens
            .iter()
            .zip(&vocab.types)
            .find_map(|(&text, &ty)| (ty == UNKNOWN).then_some(text)),
    };

    let replace = |from: &str, to: &str| json!({"type": "Replace", "pattern": {"String": from}, "content": to});
    let mut normalizers = Vec::new();
    let mut decoders = vec![
        replace(SPACE_MARK, " "),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_space_prefix {
        normalizers.push(json!({"type": "Prepend", "prepend": SPACE_MARK}));
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    normalizers.push(replace(" ", SPACE_MARK));
    let post_processor = post_processor(gguf, vocab, true)?;
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": vocab.added_tokens(),
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": null,
        "post_processor": post_processor,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": unk,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": true,
            "byte_fallback": true,
            "ignore_merges": false,
            "vocab": vocab.json(),
            "merges": merges_json(&merges),
        },
    }))
}

/// `tokenizer.ggml.scores`, one number per token (f32, or i32 as llama.cpp also accepts). NaN
/// is refused (it has no place in the merge order) and -0 read as 0, so scores compare as
/// Python compares them.
fn scores(gguf: &Gguf, vocab: &Vocab) -> Result<Vec<f64>> {
    let list = gguf.opt_array(SCORES)?.ok_or_else(|| {
        gguf.field_error(
            SCORES,
            "is missing (a SentencePiece tokenizer needs its scores)",
        )
    })?;
    same_length(gguf, SCORES, list, vocab.len())?;
    list.iter()
        .enumerate()
        .map(|(i, v)| match v.as_f64() {
            Some(s) if !s.is_nan() => Ok(s + 0.0),
            _ => Err(gguf.field_error(
                SCORES,
                format!("element {i} is {}, not a number", describe(v)),
            )),
        })
        .collect()
}

/// BPE merges for a SentencePiece vocabulary, derived from the scores exactly as transformers'
/// GGUF loader derives them (GGUFTokenizerSkeleton in transformers/integrations/ggml.py): for
/// each token in id order, every split into two pieces that are both tokens is a merge, those of
/// one token ordered by (left piece's score, right piece's score), descending; then all merges
/// are stably sorted by the merged token's score, descending (ties keep that order).
fn spm_merges<'a>(
    gguf: &Gguf,
    vocab: &Vocab<'a>,
    scores: &[f64],
) -> Result<Vec<(&'a str, &'a str)>> {
    let work = vocab.tokens.iter().fold(0u64, |sum, t| {
        let splits = t.chars().count().saturating_sub(1) as u64;
        sum.saturating_add(splits.saturating_mul(t.len() as u64))
    });
    if work > MAX_MERGE_WORK {
        return Err(gguf.field_error(
            TOKENS,
            format!("holds tokens too long to derive merges from ({work} bytes to compare; at most {MAX_MERGE_WORK})"),
        ));
    }
    let score: HashMap<&str, f64> = vocab
        .tokens
        .iter()
        .copied()
        .zip(scores.iter().copied())
        .collect();
    // (left, right, merged token's score, left's score, right's score)
    let mut merges: Vec<(&str, &str, f64, f64, f64)> = Vec::new();
    for (&token, &token_score) in vocab.tokens.iter().zip(scores) {
        let first = merges.len();
        for (at, _) in token.char_indices().skip(1) {
            let (left, right) = token.split_at(at);
            if let (Some(&l), Some(&r)) = (score.get(left), score.get(right)) {
                merges.push((left, right, token_score, l, r));
            }
        }
        if let Some(splits) = merges.get_mut(first..) {
            splits.sort_by(|a, b| b.3.total_cmp(&a.3).then(b.4.total_cmp(&a.4)));
        }
    }
    merges.sort_by(|a, b| b.2.total_cmp(&a.2));
    Ok(merges.into_iter().map(|(l, r, ..)| (l, r)).collect())
}

/// A TemplateProcessing that adds BOS and/or EOS as the file says (`default_add_bos` when it
/// does not say), as Hugging Face's Llama tokenizers do: "<bos> $A <eos>" and, for pairs,
/// "<bos> $A <eos> <bos> $B <eos>" with the second sequence's type id 1. Null when nothing is
/// added.
fn post_processor(gguf: &Gguf, vocab: &Vocab, default_add_bos: bool) -> Result<Json> {
    let special = |add_key: &str, id_key: &str, default: bool| -> Result<Option<(u32, &str)>> {
        if !gguf.opt_bool(add_key)?.unwrap_or(default) {
            return Ok(None);
        }
        let token = vocab.token(gguf, id_key)?.ok_or_else(|| {
            gguf.field_error(
                id_key,
                format!(
                    "is missing, but `{add_key}` is true (or defaults to true for this tokenizer)"
                ),
            )
        })?;
        Ok(Some(token))
    };
    let bos = special(ADD_BOS, BOS_ID, default_add_bos)?;
    let eos = special(ADD_EOS, EOS_ID, false)?;
    if bos.is_none() && eos.is_none() {
        return Ok(Json::Null);
    }
    let token = |t: Option<(u32, &str)>, type_id: u32| {
        t.map(|(_, text)| json!({"SpecialToken": {"id": text, "type_id": type_id}}))
    };
    let sequence =
        |name: &str, type_id: u32| Some(json!({"Sequence": {"id": name, "type_id": type_id}}));
    let single: Vec<Json> = [token(bos, 0), sequence("A", 0), token(eos, 0)]
        .into_iter()
        .flatten()
        .collect();
    let pair: Vec<Json> = single
        .iter()
        .cloned()
        .map(Some)
        .chain([token(bos, 1), sequence("B", 1), token(eos, 1)])
        .flatten()
        .collect();
    let special_tokens: Map<String, Json> = [bos, eos]
        .into_iter()
        .flatten()
        .map(|(id, text)| {
            (
                text.to_owned(),
                json!({"id": text, "ids": [id], "tokens": [text]}),
            )
        })
        .collect();
    Ok(json!({
        "type": "TemplateProcessing",
        "single": single,
        "pair": pair,
        "special_tokens": special_tokens,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::str::FromStr;

    fn gguf(kvs: Vec<(&str, Value)>) -> Gguf {
        Gguf {
            file: "m.gguf".into(),
            version: 3,
            metadata: kvs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect::<BTreeMap<_, _>>(),
            tensors: vec![],
            alignment: 32,
            data_start: 0,
        }
    }

    fn strings(v: &[&str]) -> Value {
        Value::Array(v.iter().map(|s| Value::Str((*s).into())).collect())
    }

    fn load(g: &Gguf) -> tokenizers::Tokenizer {
        let json = tokenizer_json(g).unwrap();
        tokenizers::Tokenizer::from_str(&json.to_string()).unwrap()
    }

    fn encode(t: &tokenizers::Tokenizer, text: &str, add_special: bool) -> Vec<u32> {
        t.encode(text, add_special).unwrap().get_ids().to_vec()
    }

    fn err(g: &Gguf) -> String {
        tokenizer_json(g).unwrap_err().to_string()
    }

    /// A SentencePiece vocabulary: <unk>, <s>, </s>, the 256 byte tokens (ids 3..=258), then
    /// pieces spelling "hello world", and a user-defined token.
    fn spm(extra: Vec<(&str, Value)>) -> Gguf {
        let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        let mut types = vec![UNKNOWN, CONTROL, CONTROL];
        let mut scores = vec![0.0f32; 3];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(6);
            scores.push(0.0);
        }
        let pieces = [
            ("▁", -100.0), // 259
            ("h", -101.0),
            ("e", -102.0),
            ("l", -103.0),
            ("o", -104.0),
            ("w", -105.0), // 264
            ("r", -106.0),
            ("d", -107.0),
            ("ll", -1.0), // 267
            ("▁h", -2.0),
            ("▁he", -3.0), // 269
            ("llo", -4.0),
            ("▁hello", -5.0), // 271
            ("▁w", -6.0),
            ("or", -7.0),
            ("▁wor", -8.0),
            ("ld", -9.0),
            ("▁world", -10.0), // 276
            ("<|user|>", 0.0), // 277
        ];
        for (p, s) in pieces {
            tokens.push(p.into());
            types.push(if p == "<|user|>" {
                USER_DEFINED
            } else {
                NORMAL
            });
            scores.push(s);
        }
        let mut kvs = vec![
            (MODEL, Value::Str("llama".into())),
            (
                TOKENS,
                Value::Array(tokens.into_iter().map(Value::Str).collect()),
            ),
            (
                SCORES,
                Value::Array(scores.into_iter().map(Value::F32).collect()),
            ),
            (
                TOKEN_TYPE,
                Value::Array(types.into_iter().map(|t| Value::I32(t as i32)).collect()),
            ),
            (BOS_ID, Value::U32(1)),
            (EOS_ID, Value::U32(2)),
            (UNK_ID, Value::U32(0)),
        ];
        kvs.extend(extra);
        gguf(kvs)
    }

    #[test]
    fn sentencepiece_encodes_merges_and_falls_back_to_bytes() {
        let t = load(&spm(vec![]));
        assert_eq!(encode(&t, "hello world", true), [1, 271, 276]);
        assert_eq!(encode(&t, "hello world", false), [271, 276]);
        // "é" is not a token: its UTF-8 bytes C3 A9 are.
        let he = encode(&t, "hé", true);
        assert_eq!(he, [1, 268, 3 + 0xC3, 3 + 0xA9]);
        assert_eq!(t.decode(&he, true).unwrap(), "hé");
        assert_eq!(t.decode(&[1, 271, 276, 2], true).unwrap(), "hello world");
        // Control tokens in the text are special; user-defined ones are matched but not special.
        assert_eq!(encode(&t, "<s>hello</s>", false), [1, 271, 2]);
        assert_eq!(encode(&t, "<|user|>", false), [277]);
        assert_eq!(t.decode(&[277, 2], true).unwrap(), "<|user|>");
        // Unknown characters without byte tokens would be <unk>; here bytes always exist.
        assert_eq!(t.get_vocab_size(true), 278);
    }

    #[test]
    fn sentencepiece_follows_the_flags() {
        let no_prefix = load(&spm(vec![(ADD_SPACE_PREFIX, Value::Bool(false))]));
        assert_eq!(encode(&no_prefix, "hello", true), [1, 260, 261, 270]);
        assert_eq!(no_prefix.decode(&[271], true).unwrap(), " hello");
        let eos_only = load(&spm(vec![
            (ADD_BOS, Value::Bool(false)),
            (ADD_EOS, Value::Bool(true)),
        ]));
        assert_eq!(encode(&eos_only, "hello", true), [271, 2]);
        let both = load(&spm(vec![(ADD_EOS, Value::Bool(true))]));
        let pair = both.encode(("hello", "world"), true).unwrap();
        assert_eq!(pair.get_ids(), [1, 271, 2, 1, 276, 2]);
        assert_eq!(pair.get_type_ids(), [0, 0, 0, 1, 1, 1]);
    }

    fn merges_of(pieces: &[(&str, f32)]) -> Vec<(String, String)> {
        let g = gguf(vec![
            (
                TOKENS,
                strings(&pieces.iter().map(|p| p.0).collect::<Vec<_>>()),
            ),
            (
                SCORES,
                Value::Array(pieces.iter().map(|p| Value::F32(p.1)).collect()),
            ),
        ]);
        let vocab = Vocab::read(&g).unwrap();
        let scores = scores(&g, &vocab).unwrap();
        spm_merges(&g, &vocab, &scores)
            .unwrap()
            .into_iter()
            .map(|(l, r)| (l.to_owned(), r.to_owned()))
            .collect()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(l, r)| ((*l).into(), (*r).into())).collect()
    }

    #[test]
    fn sentencepiece_merges_are_ordered_as_transformers_orders_them() {
        // "abc" splits as a+bc and ab+c; ties on the merged score keep token order, and within
        // one token the split with the better (left, right) scores comes first.
        let base = [
            ("a", 0.0),
            ("b", 0.0),
            ("c", 0.0),
            ("ab", -1.0),
            ("bc", -1.0),
            ("abc", -1.0),
            ("ca", 0.5),
        ];
        assert_eq!(
            merges_of(&base),
            pairs(&[("c", "a"), ("a", "b"), ("b", "c"), ("a", "bc"), ("ab", "c")])
        );
        let mut worse_a = base;
        worse_a[0].1 = -5.0;
        assert_eq!(
            merges_of(&worse_a),
            pairs(&[("c", "a"), ("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")])
        );
        // -0 ties with 0 (as in Python), so the right pieces' scores decide.
        assert_eq!(
            merges_of(&[
                ("a", 0.0),
                ("ab", -0.0),
                ("bc", -2.0),
                ("c", -1.0),
                ("abc", -3.0)
            ]),
            pairs(&[("ab", "c"), ("a", "bc")])
        );
        // Splits fall on characters, not bytes.
        assert_eq!(
            merges_of(&[("▁", 0.0), ("é", 0.0), ("▁é", -1.0), ("é▁", -1.0)]),
            pairs(&[("▁", "é"), ("é", "▁")])
        );
    }

    /// A byte-level vocabulary ("Ġ" is the space byte) with merges spelling "hello world" and
    /// digits, and a word ("xyz") that is a token no merge produces.
    fn bpe(pre: &str, extra: Vec<(&str, Value)>) -> Gguf {
        let tokens = [
            "<|begin_of_text|>",
            "<|eot_id|>",
            "h",
            "e",
            "l",
            "o",
            "Ġ",
            "w",
            "r",
            "d", // 0..=9
            "1",
            "2",
            "3",
            "4",
            "5", // 10..=14
            "he",
            "ll",
            "llo",
            "hello",
            "Ġw",
            "or",
            "Ġwor",
            "ld",
            "Ġworld", // 15..=23
            "12",
            "123",
            "45",
            "x",
            "y",
            "z",
            "xyz", // 24..=30
            "Ã",
            "©",
            "Ã©", // 31..=33: é's UTF-8 bytes
        ];
        let merges = [
            "h e", "l l", "ll o", "he llo", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "1 2", "12 3",
            "4 5", "Ã ©",
        ];
        let mut types = vec![Value::I32(CONTROL as i32); 2];
        types.extend(vec![Value::I32(NORMAL as i32); tokens.len() - 2]);
        let mut kvs = vec![
            (MODEL, Value::Str("gpt2".into())),
            (PRE, Value::Str(pre.into())),
            (TOKENS, strings(&tokens)),
            (TOKEN_TYPE, Value::Array(types)),
            (MERGES, strings(&merges)),
            (BOS_ID, Value::U32(0)),
            (EOS_ID, Value::U32(1)),
        ];
        kvs.extend(extra);
        gguf(kvs)
    }

    #[test]
    fn byte_level_pre_tokenizers_split_as_their_models_do() {
        // Llama 3: digits in threes, whole words that are tokens taken as they are, BOS added.
        let llama3 = load(&bpe("llama-bpe", vec![]));
        assert_eq!(encode(&llama3, "hello world", true), [0, 18, 23]);
        assert_eq!(encode(&llama3, "45123", false), [26, 10, 11, 12]);
        assert_eq!(encode(&llama3, "xyz", false), [30]);
        assert_eq!(encode(&llama3, "hello<|eot_id|>", false), [18, 1]);
        assert_eq!(llama3.decode(&[0, 18, 23, 1], true).unwrap(), "hello world");
        // GPT-2: one run of digits, merges only, no BOS.
        let gpt2 = load(&bpe("gpt-2", vec![]));
        assert_eq!(encode(&gpt2, "hello world", true), [18, 23]);
        assert_eq!(encode(&gpt2, "45123", true), [26, 25]);
        assert_eq!(encode(&gpt2, "xyz", true), [27, 28, 29]);
        // SmolLM: every digit alone; its GGUF says not to add BOS.
        let smollm = load(&bpe("smollm", vec![(ADD_BOS, Value::Bool(false))]));
        assert_eq!(
            encode(&smollm, "hello world 45123", true),
            [18, 23, 6, 13, 14, 10, 11, 12]
        );
        // Qwen2: NFC first, so e + combining acute is é.
        let qwen2 = load(&bpe("qwen2", vec![]));
        assert_eq!(encode(&qwen2, "e\u{301}", true), [33]);
        assert_eq!(qwen2.decode(&[33], true).unwrap(), "é");
        // A missing pre-tokenizer is llama.cpp's "default".
        let mut default = bpe("x", vec![]);
        default.metadata.remove(PRE);
        assert_eq!(encode(&load(&default), "45123", true), [26, 25]);
    }

    #[test]
    fn special_tokens_and_chat_template() {
        let g = bpe(
            "llama-bpe",
            vec![(CHAT_TEMPLATE, Value::Str("{{ bos_token }}".into()))],
        );
        assert_eq!(
            special_tokens(&g).unwrap(),
            SpecialTokens {
                bos: Some("<|begin_of_text|>".into()),
                eos: Some("<|eot_id|>".into()),
            }
        );
        assert_eq!(chat_template(&g).unwrap(), Some("{{ bos_token }}"));
        let mut bare = bpe("gpt-2", vec![]);
        bare.metadata.remove(BOS_ID);
        assert_eq!(special_tokens(&bare).unwrap().bos, None);
        assert_eq!(chat_template(&bare).unwrap(), None);
    }

    #[test]
    fn bad_metadata_is_named() {
        let set = |mut g: Gguf, key: &str, v: Value| {
            g.metadata.insert(key.into(), v);
            g
        };
        let drop = |mut g: Gguf, key: &str| {
            g.metadata.remove(key);
            g
        };
        let cases = [
            (drop(spm(vec![]), TOKENS), "`tokenizer.ggml.tokens` is missing"),
            (set(spm(vec![]), TOKENS, Value::Str("a".into())), "`tokenizer.ggml.tokens` must be an array"),
            (set(spm(vec![]), TOKENS, Value::Array(vec![Value::Str("a".into()), Value::U8(1)])), "element 1 is 1 (u8), not a string"),
            (set(spm(vec![]), TOKENS, strings(&["a", "b", "a"])), "holds \"a\" twice (ids 0 and 2)"),
            (set(spm(vec![]), SCORES, Value::Array(vec![Value::F32(0.0)])), "`tokenizer.ggml.scores` has 1 values but the vocabulary has 278 tokens"),
            (set(spm(vec![]), TOKEN_TYPE, Value::Array(vec![])), "`tokenizer.ggml.token_type` has 0 values"),
            (drop(spm(vec![]), SCORES), "`tokenizer.ggml.scores` is missing"),
            (set(spm(vec![]), BOS_ID, Value::U32(278)), "`tokenizer.ggml.bos_token_id` is 278 but the vocabulary has 278 tokens"),
            (set(spm(vec![]), UNK_ID, Value::I32(-1)), "`tokenizer.ggml.unknown_token_id` must be a non-negative integer"),
            (drop(spm(vec![]), BOS_ID), "`tokenizer.ggml.bos_token_id` is missing, but `tokenizer.ggml.add_bos_token` is true"),
            (set(spm(vec![]), MODEL, Value::Str("bert".into())), "`tokenizer.ggml.model` is \"bert\""),
            (set(bpe("gpt-2", vec![]), MERGES, strings(&["he"])), "`tokenizer.ggml.merges` element 0 (\"he\") is not of the form \"a b\""),
            (set(bpe("gpt-2", vec![]), MERGES, strings(&["h e", "q r"])), "element 1 (\"q r\") needs \"q\", which is not in the vocabulary"),
            (set(bpe("gpt-2", vec![]), MERGES, strings(&["h w"])), "needs \"hw\""),
            (drop(bpe("gpt-2", vec![]), MERGES), "`tokenizer.ggml.merges` is missing"),
            (bpe("deepseek-llm", vec![]), "`tokenizer.ggml.pre` is \"deepseek-llm\", a pre-tokenizer this runtime cannot rebuild exactly (supported: default, gpt-2"),
        ];
        for (g, expected) in cases {
            let e = err(&g);
            assert!(
                e.starts_with("m.gguf: ") && e.contains(expected),
                "expected {expected:?} in: {e}"
            );
        }
        let mut nan = spm(vec![]);
        if let Some(Value::Array(scores)) = nan.metadata.get_mut(SCORES) {
            scores[5] = Value::F32(f32::NAN);
        }
        assert!(err(&nan).contains("`tokenizer.ggml.scores` element 5 is NaN (f32), not a number"));
        assert!(special_tokens(&set(spm(vec![]), EOS_ID, Value::U64(1 << 40))).is_err());
    }
}
