//! Every kind of bad input gets an error that says what is wrong and where, and no panic.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::*;
use layerskip::gpu::GpuOptions;
use layerskip::{generate, Device, Flow, GenerateOptions, MemoryFiles, Model, Strategy};
use std::borrow::Cow;

/// The llama32_tiny fixture in memory, its weights as (name, dtype, shape, bytes).
struct Checkpoint {
    files: Vec<(String, Vec<u8>)>,
    tensors: Vec<(String, String, Vec<usize>, Vec<u8>)>,
}

fn fixture_checkpoint() -> Checkpoint {
    let dir = fixture("llama32_tiny");
    let files = ["config.json", "tokenizer.json", "generation_config.json"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(dir.join(f)).unwrap()))
        .collect();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                format!("{:?}", view.dtype()),
                view.shape().to_vec(),
                view.data().to_vec(),
            )
        })
        .collect();
    Checkpoint { files, tensors }
}

/// Writes tensors in the safetensors layout: 8-byte header length, JSON header, data.
fn safetensors_bytes(tensors: &[(String, String, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = vec![];
    for (name, dtype, shape, bytes) in tensors {
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [data.len(), data.len() + bytes.len()]}),
        );
        data.extend_from_slice(bytes);
    }
    let header = serde_json::Value::Object(header).to_string().into_bytes();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.extend(data);
    out
}

impl Checkpoint {
    fn memory(&self, weights: Vec<u8>) -> MemoryFiles {
        let mut files = MemoryFiles::default();
        for (name, bytes) in &self.files {
            files.0.insert(name.clone(), Cow::Owned(bytes.clone()));
        }
        files
            .0
            .insert("model.safetensors".into(), Cow::Owned(weights));
        files
    }
    fn with_tensors(
        &self,
        edit: impl FnOnce(&mut Vec<(String, String, Vec<usize>, Vec<u8>)>),
    ) -> MemoryFiles {
        let mut tensors = self.tensors.clone();
        edit(&mut tensors);
        self.memory(safetensors_bytes(&tensors))
    }
}

fn load_error(files: &MemoryFiles, device: &Device) -> String {
    match pollster::block_on(Model::load(files, device, 64, |_| {})) {
        Ok(_) => panic!("loading should fail"),
        Err(e) => e.to_string(),
    }
}

fn assert_error(files: &MemoryFiles, expected: &[&str]) {
    for device in [Device::Cpu, Device::Gpu(GpuOptions::default())] {
        let err = load_error(files, &device);
        for part in expected {
            assert!(
                err.contains(part),
                "{device:?}: {err:?} should mention {part:?}"
            );
        }
    }
}

#[test]
fn the_unmodified_fixture_loads() {
    let c = fixture_checkpoint();
    let files = c.with_tensors(|_| {});
    pollster::block_on(Model::load(&files, &Device::Cpu, 64, |_| {})).unwrap();
}

#[test]
fn truncated_safetensors() {
    let c = fixture_checkpoint();
    let mut bytes = safetensors_bytes(&c.tensors);
    bytes.truncate(bytes.len() - 100);
    assert_error(&c.memory(bytes), &["model.safetensors", "truncated"]);
}

#[test]
fn corrupt_safetensors_header() {
    let c = fixture_checkpoint();
    let mut bytes = safetensors_bytes(&c.tensors);
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_error(
        &c.memory(bytes.clone()),
        &["model.safetensors", "header length"],
    );
    bytes[..8].copy_from_slice(&16u64.to_le_bytes());
    assert_error(&c.memory(bytes), &["model.safetensors", "not valid JSON"]);
    assert_error(
        &c.memory(vec![1, 2, 3]),
        &["model.safetensors", "too short"],
    );
}

#[test]
fn missing_tensor() {
    let c = fixture_checkpoint();
    let files =
        c.with_tensors(|t| t.retain(|(name, ..)| name != "model.layers.2.mlp.up_proj.weight"));
    assert_error(
        &files,
        &["missing tensor", "model.layers.2.mlp.up_proj.weight"],
    );
}

#[test]
fn misshapen_tensor() {
    let c = fixture_checkpoint();
    let files = c.with_tensors(|t| {
        let q = t
            .iter_mut()
            .find(|(name, ..)| name == "model.layers.0.self_attn.q_proj.weight")
            .unwrap();
        q.2.reverse();
    });
    assert_error(
        &files,
        &[
            "model.layers.0.self_attn.q_proj.weight",
            "shape [96, 80]",
            "expected [80, 96]",
        ],
    );
}

#[test]
fn unsupported_dtype() {
    let c = fixture_checkpoint();
    let files = c.with_tensors(|t| {
        let w = t
            .iter_mut()
            .find(|(name, ..)| name == "model.norm.weight")
            .unwrap();
        w.1 = "I16".into();
    });
    assert_error(&files, &["model.norm.weight", "I16", "F32, F16 and BF16"]);
}

#[test]
fn unsupported_or_broken_config() {
    let c = fixture_checkpoint();
    let mut broken = c.with_tensors(|_| {});
    let config = String::from_utf8(c.files[0].1.clone()).unwrap();
    let mistral = config.replace("\"llama\"", "\"mistral\"");
    broken
        .0
        .insert("config.json".into(), Cow::Owned(mistral.into_bytes()));
    assert_error(&broken, &["model_type = mistral"]);
    broken.0.remove("config.json");
    assert_error(&broken, &["config.json", "missing"]);
}

#[test]
fn malformed_tokenizer() {
    let c = fixture_checkpoint();
    let mut files = c.with_tensors(|_| {});
    files
        .0
        .insert("tokenizer.json".into(), Cow::Borrowed(b"{\"model\": 3}"));
    assert_error(&files, &["tokenizer.json"]);
}

#[test]
fn missing_shard() {
    let c = fixture_checkpoint();
    let mut files = c.with_tensors(|_| {});
    let index =
        r#"{"weight_map": {"model.embed_tokens.weight": "model-00002-of-00002.safetensors"}}"#;
    files.0.insert(
        "model.safetensors.index.json".into(),
        Cow::Borrowed(index.as_bytes()),
    );
    assert_error(
        &files,
        &["model-00002-of-00002.safetensors", "no such file"],
    );
}

#[test]
fn device_limits_too_small_for_one_row() {
    let c = fixture_checkpoint();
    let files = c.with_tensors(|_| {});
    let device = Device::Gpu(GpuOptions {
        max_binding_override: Some(64),
        ..GpuOptions::default()
    });
    let err = load_error(&files, &device);
    assert!(
        err.contains("embed_tokens")
            && err.contains("max_storage_buffer_binding_size")
            && err.contains("64"),
        "{err}"
    );
}

#[test]
fn prompt_past_the_context_length() {
    let c = fixture_checkpoint();
    let files = c.with_tensors(|_| {});
    for device in [Device::Cpu, Device::Gpu(GpuOptions::default())] {
        let mut model = pollster::block_on(Model::load(&files, &device, 16, |_| {})).unwrap();
        let prompt = model.tokenizer.encode(&"word ".repeat(20)).unwrap();
        let options = GenerateOptions::greedy(Strategy::Autoregressive, 4);
        let err = pollster::block_on(generate(&mut model.engine, &prompt, &options, |_, _| {
            Flow::Continue
        }))
        .unwrap_err()
        .to_string();
        assert!(err.contains("context holds 16"), "{err}");
    }
}
