//! The draft vocabulary: the N token ids a reduced draft head scores (FR-Spec). Drafting over the
//! most frequent tokens only makes each draft's exit head N/V of the full one; verification keeps
//! the full head, so output is unchanged (a token outside the draft vocabulary is simply never
//! drafted, and the verifier produces it).
//!
//! Ranks come from `token_frequencies.json` next to the model (written by `layerskip
//! vocab-stats`), else from the tokenizer's BPE merge order (a token made by an earlier merge was
//! more frequent in the tokenizer's training text).

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::files::{Files, MAX_JSON_BYTES};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The file `vocab-stats` writes and the loader reads.
pub const FREQUENCIES_FILE: &str = "token_frequencies.json";

/// Token counts over a text, most frequent first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Frequencies {
    /// Tokens counted.
    pub tokens: u64,
    /// Token ids, most frequent first (ties by id); ids never seen are left out.
    pub ids: Vec<u32>,
    /// How often each of `ids` occurred.
    pub counts: Vec<u64>,
}

impl Frequencies {
    /// Counts `ids` (token ids of a text).
    pub fn count(ids: &[u32]) -> Self {
        let mut counts: HashMap<u32, u64> = HashMap::new();
        for &id in ids {
            *counts.entry(id).or_default() += 1;
        }
        let mut ranked: Vec<(u32, u64)> = counts.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        Frequencies {
            tokens: ids.len() as u64,
            ids: ranked.iter().map(|r| r.0).collect(),
            counts: ranked.iter().map(|r| r.1).collect(),
        }
    }

    /// Parses and checks a frequencies file against a vocabulary of `vocab` tokens.
    pub fn parse(bytes: &[u8], vocab: usize) -> Result<Self> {
        let bad = |why: String| Error::file(FREQUENCIES_FILE, why);
        let f: Frequencies =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid: {e}")))?;
        if f.ids.len() != f.counts.len() {
            return Err(bad(format!(
                "{} ids but {} counts",
                f.ids.len(),
                f.counts.len()
            )));
        }
        let mut seen = vec![false; vocab];
        for &id in &f.ids {
            match seen.get_mut(id as usize) {
                None => {
                    return Err(bad(format!(
                        "token id {id} is outside the vocabulary ({vocab})"
                    )))
                }
                Some(true) => return Err(bad(format!("token id {id} is listed twice"))),
                Some(s) => *s = true,
            }
        }
        Ok(f)
    }
}

/// Token ids in BPE merge order: tokens no merge produces (bytes, characters) first by id, then
/// each merge's result in the order of `model.merges`, then the rest by id. Tokenizers without
/// merges (Unigram, WordPiece) rank by id.
pub fn merge_order(tokenizer_json: &[u8], vocab: usize) -> Result<Vec<u32>> {
    let bad = |why: String| Error::file("tokenizer.json", why);
    let v: serde_json::Value =
        serde_json::from_slice(tokenizer_json).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let model = &v["model"];
    let ids: HashMap<&str, u32> = model["vocab"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, id)| Some((k.as_str(), u32::try_from(id.as_u64()?).ok()?)))
                .collect()
        })
        .unwrap_or_default();
    // Merges are "a b" strings or ["a", "b"] pairs depending on the tokenizers version.
    let merged: Vec<String> = model["merges"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| match m {
                    serde_json::Value::String(s) => {
                        s.split_once(' ').map(|(a, b)| a.to_owned() + b)
                    }
                    serde_json::Value::Array(p) => {
                        Some(p.iter().filter_map(|x| x.as_str()).collect::<String>())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let mut rank: Vec<usize> = vec![usize::MAX; vocab];
    for (i, token) in merged.iter().enumerate() {
        if let Some(&id) = ids.get(token.as_str()) {
            if let Some(r) = rank.get_mut(id as usize) {
                *r = (*r).min(i + 1);
            }
        }
    }
    for &id in ids.values() {
        if let Some(r) = rank.get_mut(id as usize) {
            if *r == usize::MAX {
                *r = 0;
            }
        }
    }
    let mut order: Vec<u32> = (0..vocab as u32).collect();
    order.sort_by_key(|&id| (rank[id as usize], id));
    Ok(order)
}

/// The draft vocabulary: `always` (end-of-sequence ids) and the best-ranked other ids, `n` in
/// all, in increasing id order (the draft head's rows follow it).
pub fn draft_ids(ranked: &[u32], n: usize, always: &[u32], vocab: usize) -> Result<Vec<u32>> {
    if n == 0 || n > vocab {
        return Err(Error::Invalid(format!(
            "--draft-vocab must be in 1..={vocab} (the vocabulary size), got {n}"
        )));
    }
    let mut chosen = vec![false; vocab];
    let mut ids: Vec<u32> = vec![];
    // Ids already taken are skipped, so ranks shorter than N are filled in id order.
    let all = always.iter().chain(ranked).copied().chain(0..vocab as u32);
    for id in all {
        if ids.len() == n {
            break;
        }
        if let Some(c) = chosen.get_mut(id as usize).filter(|c| !**c) {
            *c = true;
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// The draft vocabulary of `n` ids for a checkpoint: ranked by `token_frequencies.json` when the
/// model folder has one, else by the merge order of `tokenizer_json`.
pub async fn load(
    files: &impl Files,
    tokenizer_json: &[u8],
    n: usize,
    checkpoint: &Checkpoint,
) -> Result<Vec<u32>> {
    let vocab = checkpoint.config.vocab_size;
    let ranked = match files.read_capped(FREQUENCIES_FILE, MAX_JSON_BYTES).await? {
        Some(bytes) => Frequencies::parse(&bytes, vocab)?.ids,
        None => merge_order(tokenizer_json, vocab)?,
    };
    draft_ids(&ranked, n, &checkpoint.eos_token_ids, vocab)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_rank_by_frequency_then_id() {
        let f = Frequencies::count(&[5, 3, 5, 7, 3, 5, 1]);
        assert_eq!(f.ids, vec![5, 3, 1, 7]);
        assert_eq!(f.counts, vec![3, 2, 1, 1]);
        assert_eq!(f.tokens, 7);
        let text = serde_json::to_vec(&f).unwrap();
        assert_eq!(Frequencies::parse(&text, 8).unwrap(), f);
        assert!(Frequencies::parse(&text, 6)
            .unwrap_err()
            .to_string()
            .contains("token id 7 is outside the vocabulary (6)"));
        let twice = br#"{"tokens": 2, "ids": [1, 1], "counts": [1, 1]}"#;
        assert!(Frequencies::parse(twice, 8)
            .unwrap_err()
            .to_string()
            .contains("listed twice"));
    }

    #[test]
    fn merge_order_puts_base_tokens_then_merges_in_order() {
        let json = br#"{"model": {"type": "BPE",
            "vocab": {"a": 0, "b": 1, "c": 2, "bc": 3, "ab": 4, "abc": 5},
            "merges": ["a b", ["b", "c"], "ab c"]}}"#;
        // Base tokens a, b, c by id; then ab (merge 1), bc (merge 2), abc (merge 3); then ids
        // the vocabulary does not name.
        assert_eq!(merge_order(json, 7).unwrap(), vec![0, 1, 2, 4, 3, 5, 6]);
    }

    #[test]
    fn draft_ids_keep_eos_and_the_best_ranked() {
        assert_eq!(
            draft_ids(&[9, 4, 7, 1], 3, &[2], 10).unwrap(),
            vec![2, 4, 9]
        );
        // Ranks shorter than N are filled in id order.
        assert_eq!(draft_ids(&[9], 3, &[], 10).unwrap(), vec![0, 1, 9]);
        assert!(draft_ids(&[], 11, &[], 10).is_err());
        assert!(draft_ids(&[], 0, &[], 10).is_err());
    }
}
