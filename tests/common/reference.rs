//! The Hugging Face outputs tools/make_fixtures.py records in tests/fixtures/*/reference.json.
#![allow(dead_code)]

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
pub struct Reference {
    pub prompts: Vec<PromptReference>,
    pub tokenization: Vec<Tokenization>,
}

#[derive(Deserialize)]
pub struct PromptReference {
    pub text: String,
    /// `tokenizer(text)["input_ids"]`, BOS included.
    pub input_ids: Vec<u32>,
    /// [layer][position][vocab]: lm_head(norm(hidden state after layer l)).
    pub exit_logits: Vec<Vec<Vec<f32>>>,
    pub greedy: Greedy,
    /// Greedy tokens with only layers 1..E and the exit head, keyed by E.
    pub early_exit_greedy: BTreeMap<String, Vec<u32>>,
}

#[derive(Deserialize)]
pub struct Greedy {
    pub max_new_tokens: usize,
    pub tokens: Vec<u32>,
    pub text: String,
}

#[derive(Deserialize)]
pub struct Tokenization {
    pub text: String,
    pub ids: Vec<u32>,
}

pub fn parse(json: &str) -> Reference {
    serde_json::from_str(json).expect("reference.json parses")
}
