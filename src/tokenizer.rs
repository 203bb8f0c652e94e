//! tokenizer.json through the `tokenizers` crate, encoding as Hugging Face's `tokenizer(prompt)`
//! does (the post-processor adds BOS where the tokenizer says so), and a streaming decoder.

use crate::error::{Error, Result};
use serde_json::Value;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        check_tokenizer_json(bytes)?;
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| Error::Tokenizer(format!("tokenizer.json: {e}")))?;
        Ok(Self { inner })
    }

    /// Encodes a prompt as Hugging Face's `tokenizer(prompt)` does: special tokens (BOS) added
    /// where the post-processor says.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, true)
    }

    /// Encodes text that already holds its special tokens (a rendered chat template places BOS
    /// itself), adding none, as Hugging Face's `apply_chat_template(tokenize=True)` does.
    pub fn encode_rendered(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, false)
    }

    fn encode_with(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::Tokenizer(format!("encoding failed: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::Tokenizer(format!("decoding failed: {e}")))
    }

    /// One token as text, special tokens included (for tables like the logit lens).
    pub fn token_text(&self, id: u32) -> String {
        self.inner
            .decode(&[id], false)
            .unwrap_or_else(|_| format!("<{id}>"))
    }

    /// The id of a token string such as `<|eot_id|>`, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Checks what the `tokenizers` crate assumes instead of checking itself (it panics otherwise, as
/// fuzzing found): the file is one valid JSON object. Its decoder is read through a buffered
/// untagged enum whose syntax errors hit an `expect`.
fn check_tokenizer_json(bytes: &[u8]) -> Result<()> {
    let bad = |why: String| Error::Tokenizer(format!("tokenizer.json: {why}"));
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(bad("the top level must be a JSON object".into()));
    }
    check_templates(&value).map_err(bad)
}

/// Every TemplateProcessing post-processor (also inside a Sequence) names only special tokens it
/// defines, each with as many ids as tokens, and its single-sequence template uses sequence A
/// only: otherwise encoding indexes out of bounds. Processors are matched by shape, not by their
/// "type" (the crate reads them untagged), so any object with a template is checked.
fn check_templates(value: &Value) -> std::result::Result<(), String> {
    match value {
        Value::Array(items) => items.iter().try_for_each(check_templates),
        Value::Object(obj) => {
            if ["single", "pair", "special_tokens"]
                .iter()
                .any(|k| obj.contains_key(*k))
            {
                check_template(obj)?;
            }
            obj.values().try_for_each(check_templates)
        }
        _ => Ok(()),
    }
}

fn check_template(obj: &serde_json::Map<String, Value>) -> std::result::Result<(), String> {
    let specials = obj.get("special_tokens").and_then(Value::as_object);
    for (template, one_sequence) in [("single", true), ("pair", false)] {
        let Some(pieces) = obj.get(template).and_then(Value::as_array) else {
            continue;
        };
        for piece in pieces {
            if let Some(id) = piece.pointer("/SpecialToken/id").and_then(Value::as_str) {
                let token = specials.and_then(|s| s.get(id)).ok_or_else(|| {
                    format!("the {template} template uses special token {id:?}, which special_tokens does not define")
                })?;
                let count = |key: &str| token.get(key).and_then(Value::as_array).map(Vec::len);
                if count("ids") != count("tokens") {
                    return Err(format!(
                        "special token {id:?} has a different number of ids and tokens"
                    ));
                }
            }
            let sequence = piece.pointer("/Sequence/id").and_then(Value::as_str);
            if one_sequence && sequence.is_some_and(|id| id != "A") {
                return Err(format!("the single template uses sequence {sequence:?}"));
            }
        }
    }
    Ok(())
}

/// Turns a growing list of token ids into text increments. Byte-level BPE tokens can split a UTF-8
/// character, so text is only released once it no longer ends in a replacement character.
///
/// Each step decodes a short window, not every id so far (which would make a long chat
/// quadratic): the ids of the last released piece, whose text is `prefix`, and those after it.
/// Decoding the window and dropping `prefix` gives the new text with the spacing the whole
/// sequence has (a SentencePiece decoder strips the first token's leading space, and the piece
/// before the window's new ids keeps that from touching them).
pub struct StreamDecoder {
    ids: Vec<u32>,
    /// `ids[..prefix_ids]` decode to `prefix`.
    prefix_ids: usize,
    prefix: String,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self {
            ids: vec![],
            prefix_ids: 0,
            prefix: String::new(),
        }
    }

    /// Adds a token; returns the text it completes, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = tokenizer.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}') || self.after_prefix(&text).is_empty() {
            return Ok(None);
        }
        self.release(tokenizer, &text).map(Some)
    }

    /// How many ids the decoder holds: the last released piece's and those after it, not the
    /// whole sequence.
    pub fn held_ids(&self) -> usize {
        self.ids.len()
    }

    /// Text not yet released (a trailing partial character at the end of generation).
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        let text = tokenizer.decode(&self.ids)?;
        self.release(tokenizer, &text)
    }

    /// What the window's `text` holds after the prefix. A decoder that rewrote the prefix (none
    /// known) still loses no text: what follows the prefix's length counts.
    fn after_prefix<'a>(&self, text: &'a str) -> &'a str {
        match text.strip_prefix(self.prefix.as_str()) {
            Some(new) => new,
            None => text.get(self.prefix.len()..).unwrap_or_default(),
        }
    }

    /// Releases the window's text after the prefix; the released piece becomes the next
    /// window's prefix.
    fn release(&mut self, tokenizer: &Tokenizer, text: &str) -> Result<String> {
        let new = self.after_prefix(text).to_string();
        self.ids.drain(..self.prefix_ids);
        self.prefix_ids = self.ids.len();
        self.prefix = tokenizer.decode(&self.ids)?;
        Ok(new)
    }
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new()
    }
}
