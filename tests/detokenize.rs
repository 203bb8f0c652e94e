//! Streaming detokenization: the pieces `StreamDecoder` releases, one token at a time, add up to
//! the tokenizer's decode of all the ids (Hugging Face's `tokenizer.decode(ids,
//! skip_special_tokens=True)`), for the byte-level BPE fixtures and the embedded model's
//! tokenizer, over random ids (split UTF-8 characters, special tokens) and real text; and no
//! piece holds a half character.

use layerskip::{StreamDecoder, Tokenizer};
use std::path::Path;

fn tokenizer(dir: &str) -> Tokenizer {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(dir)
        .join("tokenizer.json");
    Tokenizer::from_bytes(&std::fs::read(path).unwrap()).unwrap()
}

/// Streams `ids`, checks the pieces against the whole decode and returns them.
fn check(tokenizer: &Tokenizer, ids: &[u32]) -> Vec<String> {
    let mut stream = StreamDecoder::new();
    let mut pieces = vec![];
    let mut held = 0;
    for &id in ids {
        pieces.extend(stream.push(tokenizer, id).unwrap());
        held = held.max(stream.held_ids());
    }
    // Each step decodes a short window, not everything so far.
    if ids.len() > 64 {
        assert!(held <= 16, "held {held} of {} ids", ids.len());
    }
    pieces.push(stream.finish(tokenizer).unwrap());
    assert_eq!(
        pieces.concat(),
        tokenizer.decode(ids).unwrap(),
        "ids {ids:?}"
    );
    pieces
}

#[test]
fn streamed_pieces_add_up_to_the_whole_decode() {
    let text = "Streaming: caf\u{e9}, na\u{ef}ve, \u{1f642} emoji, \u{4e2d}\u{6587}, tabs\tand\nnewlines,   spaces.";
    for dir in [
        "tests/fixtures/llama2_tiny",
        "tests/fixtures/llama32_tiny",
        "src/default_model",
    ] {
        let t = tokenizer(dir);
        let ids = t.encode(&text.repeat(8)).unwrap();
        let pieces = check(&t, &ids);
        // Valid text: no piece ends inside a character.
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
        assert!(pieces.len() > 10, "{pieces:?}");
        // Random ids, special tokens included (a fixed xorshift sequence).
        let vocab = t.vocab_size() as u64;
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..200 {
            let ids: Vec<u32> = (0..24)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % vocab) as u32
                })
                .collect();
            check(&t, &ids);
        }
    }
}
