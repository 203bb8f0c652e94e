//! The fuzz targets' bodies, shared by `cargo fuzz run <target>` (fuzz/fuzz_targets/) and by the
//! corpus replay in `cargo test` (tests/fuzz_corpus.rs), so CI replays every saved input on
//! stable Rust. Each must never panic; where the input is accepted, what was accepted must hold.
#![allow(dead_code)]

use layerskip::checkpoint::{parse_index, Checkpoint};
use layerskip::config::{Config, GenerationConfig};
use layerskip::header;
use layerskip::{MemoryFiles, Tokenizer};
use std::borrow::Cow;

/// A safetensors file. Differential against the `safetensors` crate's own validation: both
/// accept or both refuse, except that duplicate names (which the crate resolves by keeping one)
/// are refused here; accepted tensors lie inside the file.
pub fn safetensors_header(data: &[u8]) {
    let mut files = MemoryFiles::default();
    files.0.insert("f".into(), Cow::Owned(data.to_vec()));
    let ours = pollster::block_on(header::read(&files, "f"));
    let theirs = safetensors::SafeTensors::read_metadata(data);
    match (&ours, &theirs) {
        (Ok(tensors), Ok((_, metadata))) => {
            assert_eq!(tensors.len(), metadata.tensors().len());
            for (name, entry) in tensors {
                let info = metadata.info(name).expect("the crate knows every tensor");
                assert_eq!(
                    entry.len as usize,
                    info.data_offsets.1 - info.data_offsets.0
                );
                assert!(entry.start + entry.len <= data.len() as u64);
            }
        }
        (Ok(_), Err(e)) => panic!("accepted what the safetensors crate refuses: {e}"),
        (Err(e), Ok(_)) => assert!(
            e.to_string().contains("appears twice"),
            "refused what the safetensors crate accepts: {e}"
        ),
        (Err(_), Err(_)) => {}
    }
}

/// config.json, then a 0xFF byte, then generation_config.json; an accepted config also opens
/// against a one-layer checkpoint without panicking.
pub fn config(data: &[u8]) {
    let (config, generation) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let (Ok(config_text), Ok(generation_text)) =
        (std::str::from_utf8(config), std::str::from_utf8(generation))
    else {
        return;
    };
    let _ = GenerationConfig::from_json(generation_text);
    if let Ok(c) = Config::from_json(config_text) {
        assert!(c.head_dim % 2 == 0 && c.num_attention_heads % c.num_key_value_heads == 0);
        let _ = c.parameter_count();
        assert!(c.rope_inv_freq().iter().all(|f| f.is_finite()));
        let mut files = MemoryFiles::default();
        files
            .0
            .insert("config.json".into(), Cow::Owned(config.to_vec()));
        files.0.insert(
            "generation_config.json".into(),
            Cow::Owned(generation.to_vec()),
        );
        files
            .0
            .insert("model.safetensors".into(), Cow::Borrowed(ONE_LAYER));
        let _ = pollster::block_on(Checkpoint::open(&files));
    }
}

/// A shard index against the three shards of the llama2_tiny fixture: never a panic, and an
/// accepted index names only plain files.
pub fn shard_index(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(map) = parse_index(text) {
        assert!(map
            .values()
            .all(|f| layerskip::files::check_name(f).is_ok()));
    }
    let mut files = MemoryFiles::default();
    for (name, bytes) in LLAMA2_TINY {
        files.0.insert(name.to_string(), Cow::Borrowed(bytes));
    }
    files.0.insert(
        "model.safetensors.index.json".into(),
        Cow::Owned(data.to_vec()),
    );
    if let Ok(c) = pollster::block_on(Checkpoint::open(&files)) {
        assert!(c.files.iter().all(|f| files.0.contains_key(f)));
    }
}

/// tokenizer.json: loading, encoding and decoding never panic.
pub fn tokenizer(data: &[u8]) {
    if let Ok(t) = Tokenizer::from_bytes(data) {
        for text in ["def f(x):\n    return x", "héllo 🌍", ""] {
            if let Ok(ids) = t.encode(text) {
                let _ = t.decode(&ids);
            }
        }
        let _ = t.token_text(0);
    }
}

/// A GGUF file: opening it (the header, its metadata as a config, the tokenizer rebuilt from
/// it) never panics; an accepted header's tensors lie inside the file, and an accepted model's
/// tokenizer loads, encodes and decodes without panicking.
pub fn gguf(data: &[u8]) {
    let mut files = MemoryFiles::default();
    files.0.insert("m.gguf".into(), Cow::Owned(data.to_vec()));
    if let Ok(g) = pollster::block_on(layerskip::gguf::read(&files, "m.gguf")) {
        assert!(g
            .tensors
            .iter()
            .all(|t| t.start + t.len <= data.len() as u64));
    }
    if let Ok(c) = pollster::block_on(Checkpoint::open(&files)) {
        let extras = c.gguf.expect("a GGUF checkpoint");
        tokenizer(&extras.tokenizer_json);
    }
}

/// A valid one-layer checkpoint's weights (hidden 8, intermediate 8, vocab 16, 2 heads).
static ONE_LAYER: &[u8] = include_bytes!("one_layer.safetensors");

static LLAMA2_TINY: [(&str, &[u8]); 4] = [
    (
        "config.json",
        include_bytes!("../tests/fixtures/llama2_tiny/config.json"),
    ),
    (
        "model-00001-of-00003.safetensors",
        include_bytes!("../tests/fixtures/llama2_tiny/model-00001-of-00003.safetensors"),
    ),
    (
        "model-00002-of-00003.safetensors",
        include_bytes!("../tests/fixtures/llama2_tiny/model-00002-of-00003.safetensors"),
    ),
    (
        "model-00003-of-00003.safetensors",
        include_bytes!("../tests/fixtures/llama2_tiny/model-00003-of-00003.safetensors"),
    ),
];
