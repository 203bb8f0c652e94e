//! Replays every saved fuzzing input (fuzz/corpus/<target>/) through the fuzz targets' bodies,
//! so the inputs that once found bugs, and the minimized corpus that covers the parsers, run on
//! stable Rust in every `cargo test`. Fuzzing itself: `cargo +nightly fuzz run <target>` in fuzz/.
#![cfg(not(target_arch = "wasm32"))]

#[path = "../fuzz/targets.rs"]
mod targets;

use std::path::PathBuf;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{target}: {} panicked", path.display());
        n += 1;
    }
    assert!(n > 0, "{target}: empty corpus");
    println!("{target}: {n} inputs replayed");
}

#[test]
fn safetensors_header_corpus() {
    replay("safetensors_header", targets::safetensors_header);
}

#[test]
fn config_corpus() {
    replay("config", targets::config);
}

#[test]
fn shard_index_corpus() {
    replay("shard_index", targets::shard_index);
}

#[test]
fn tokenizer_corpus() {
    replay("tokenizer", targets::tokenizer);
}

#[test]
fn gguf_corpus() {
    replay("gguf", targets::gguf);
}
