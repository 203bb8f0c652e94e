//! Weight formats end to end: quantized checkpoints written by `quantize` load into exactly the
//! weights quantizing on load gives; q8 stays close to Hugging Face's f32 logits at every exit
//! layer; loading streams with bounded host memory; bad quantized checkpoints are named errors.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::*;
use layerskip::gpu::GpuOptions;
use layerskip::quantize::quantize;
use layerskip::{
    Call, Device, DirFiles, Engine, Files, Head, Input, KvFormat, LoadOptions, MemoryFiles, Model,
    Quantization,
};
use std::borrow::Cow;
use std::collections::HashMap;

const FIXTURES: [&str; 2] = ["llama2_tiny", "llama32_tiny"];

fn devices() -> [Device; 3] {
    [
        Device::CpuReference,
        cpu(),
        Device::Gpu(GpuOptions::default()),
    ]
}

/// The fixture quantized by `quantize` into files in memory.
fn quantized(files: &impl Files, q: Quantization, max_shard_bytes: u64) -> MemoryFiles {
    let mut out: HashMap<String, Vec<u8>> = HashMap::new();
    pollster::block_on(quantize(
        files,
        q,
        max_shard_bytes,
        1 << 20,
        |name, bytes| {
            out.entry(name.to_string())
                .or_default()
                .extend_from_slice(bytes);
            Ok(())
        },
        |_| {},
    ))
    .unwrap();
    MemoryFiles(out.into_iter().map(|(k, v)| (k, Cow::Owned(v))).collect())
}

fn load(files: &impl Files, options: &LoadOptions) -> Model {
    pollster::block_on(Model::load(files, options, |_| {})).unwrap()
}

fn lens(model: &mut Model, ids: &[u32]) -> Vec<Vec<f32>> {
    let layers = model.config().num_hidden_layers;
    let call = Call::new(Input::Tokens(ids), 0, 0..layers).head(Head::Lens);
    pollster::block_on(model.engine.run(&[call]))
        .unwrap()
        .remove(0)
        .logits
}

/// Exact f32 KV, so differences come from the weights alone.
fn opts(device: Device, quantize: Option<Quantization>) -> LoadOptions {
    let mut options = options(device, 128);
    options.engine.quantize = quantize;
    options.engine.kv_cache = KvFormat::F32;
    options
}

#[test]
fn a_saved_quantized_checkpoint_equals_quantizing_on_load() {
    for name in FIXTURES {
        let original = DirFiles::new(fixture(name)).unwrap();
        let r = reference(name);
        for q in [Quantization::Q8, Quantization::Q4] {
            // Small shards, so the index and a scale tensor beside its values are exercised.
            let saved = quantized(&original, q, 300_000);
            for device in devices() {
                let mut on_load = load(&original, &opts(device.clone(), Some(q)));
                let mut from_file = load(&saved, &opts(device.clone(), None));
                assert!(from_file.plan().weight_format.contains(q.name()));
                for p in &r.prompts {
                    assert_eq!(
                        lens(&mut on_load, &p.input_ids),
                        lens(&mut from_file, &p.input_ids),
                        "{name} {q:?} {device:?}: bit-identical logits"
                    );
                }
            }
        }
    }
}

/// q8 against Hugging Face's f32 logits. Q8_0 moves each weight by up to half a step of
/// max|w| / 127 in its group of 32, about 0.4% of the group's largest weight. These random
/// fixtures (weights ~ N(0, 0.2), norm weights up to 4, logits up to 17 and 24) amplify that
/// through every layer: measured worst errors are 0.60..0.92 (llama2_tiny, layers 1..4) and
/// 0.57..1.58 (llama32_tiny, layers 1..5), at most 6.5% of the largest logit; the CPU reference
/// and the GPU agree to 1e-4 on the same quantized weights, so this is rounding, not arithmetic.
/// q4 (steps of max|w| / 8, 16 times coarser) measures 6.4..15.0 and is reported, not held to a
/// bound: on a trained model `layerskip eval` is the measure of what a format costs.
#[test]
fn q8_logits_stay_close_to_hugging_face_at_every_exit_layer() {
    for name in FIXTURES {
        let r = reference(name);
        let files = DirFiles::new(fixture(name)).unwrap();
        let largest = r
            .prompts
            .iter()
            .flat_map(|p| p.exit_logits.iter().flat_map(|l| l.last().unwrap().iter()))
            .fold(0f32, |m, x| m.max(x.abs()));
        for device in devices() {
            for q in [Quantization::Q8, Quantization::Q4] {
                let mut model = load(&files, &opts(device.clone(), Some(q)));
                let mut worst = vec![0f32; r.prompts[0].exit_logits.len()];
                for p in &r.prompts {
                    for (l, (got, want)) in lens(&mut model, &p.input_ids)
                        .iter()
                        .zip(&p.exit_logits)
                        .enumerate()
                    {
                        worst[l] = worst[l].max(max_abs_diff(got, want.last().unwrap()));
                    }
                }
                println!("{name} {device:?} {q:?}: max |logit - HF f32| per exit layer: {worst:?} (largest |logit| {largest})");
                if q == Quantization::Q8 {
                    assert!(
                        worst.iter().all(|&e| e < 0.1 * largest),
                        "{name} q8: {worst:?}"
                    );
                }
            }
        }
    }
}

/// The loader never holds more than its staging budget of weight bytes on the host, here 64 KiB
/// for checkpoints of 0.77 MB (bf16) and 0.96 MB (f32), quantizing or not, on both backends.
#[test]
fn streamed_loading_stays_within_the_staging_budget() {
    const BUDGET: usize = 64 << 10;
    for name in FIXTURES {
        let files = DirFiles::new(fixture(name)).unwrap();
        let total: u64 = std::fs::read_dir(fixture(name))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .map(|p| p.metadata().unwrap().len())
            .sum();
        assert!(
            total > 10 * BUDGET as u64,
            "{name}: the checkpoint is larger than the budget"
        );
        for device in devices() {
            for quantize in [None, Some(Quantization::Q4)] {
                let mut options = opts(device.clone(), quantize);
                options.engine.staging_bytes = BUDGET;
                let model = load(&files, &options);
                let peak = model.load_report().peak_staging_bytes;
                println!("{name} {device:?} {quantize:?}: peak staging {peak} bytes of {total}");
                assert!(
                    peak as usize <= BUDGET && peak > 0,
                    "{name} {quantize:?}: {peak}"
                );
            }
        }
    }
}

/// Edits a saved q4 checkpoint's single safetensors file by rewriting its tensors.
fn edit_tensors(
    files: &MemoryFiles,
    edit: impl FnOnce(&mut Vec<(String, String, Vec<usize>, Vec<u8>)>),
) -> MemoryFiles {
    let bytes = files.0["model.safetensors"].to_vec();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                format!("{:?}", v.dtype()),
                v.shape().to_vec(),
                v.data().to_vec(),
            )
        })
        .collect();
    edit(&mut tensors);
    let mut header = serde_json::Map::new();
    let mut data = vec![];
    for (name, dtype, shape, bytes) in &tensors {
        header.insert(name.clone(), serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [data.len(), data.len() + bytes.len()]}));
        data.extend_from_slice(bytes);
    }
    let header = serde_json::Value::Object(header).to_string();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(data);
    let mut edited = MemoryFiles(files.0.clone());
    edited.0.insert("model.safetensors".into(), Cow::Owned(out));
    edited
}

fn with_config(files: &MemoryFiles, edit: impl FnOnce(&mut serde_json::Value)) -> MemoryFiles {
    let mut config: serde_json::Value = serde_json::from_slice(&files.0["config.json"]).unwrap();
    edit(&mut config);
    let mut edited = MemoryFiles(files.0.clone());
    edited.0.insert(
        "config.json".into(),
        Cow::Owned(config.to_string().into_bytes()),
    );
    edited
}

#[test]
fn bad_quantized_checkpoints_are_named_errors() {
    let original = DirFiles::new(fixture("llama32_tiny")).unwrap();
    let q4 = quantized(&original, Quantization::Q4, u64::MAX);
    let w = "model.layers.1.mlp.down_proj.weight";
    let scale = format!("{w}_scale");
    let missing = format!("`{scale}`");
    let cases: Vec<(MemoryFiles, Vec<&str>)> = vec![
        (
            edit_tensors(&q4, |t| {
                let x = t.iter_mut().find(|x| x.0 == w).unwrap();
                x.2[1] -= 1;
                x.3.truncate(x.2[0] * x.2[1]);
            }),
            vec![w, "shape [96, 79]", "expected [96, 80]"],
        ),
        (
            edit_tensors(&q4, |t| t.retain(|x| x.0 != scale)),
            vec!["model.safetensors", &missing, "is missing"],
        ),
        (
            edit_tensors(&q4, |t| {
                t.iter_mut().find(|x| x.0 == scale).unwrap().2.reverse()
            }),
            vec![&scale, "expected [96, 5]"],
        ),
        (
            edit_tensors(&q4, |t| {
                t.iter_mut().find(|x| x.0 == w).unwrap().1 = "I8".into()
            }),
            vec![
                w,
                "dtype I8",
                "expected U8 (q4 values, 16 bytes per group of 32)",
            ],
        ),
        (
            with_config(&q4, |c| c["quantization_config"]["format"] = "q3".into()),
            vec!["quantization_config.format = q3", "unknown format"],
        ),
        (
            with_config(&q4, |c| c["quantization_config"]["group_size"] = 64.into()),
            vec!["quantization_config.group_size = 64", "groups of 32"],
        ),
        (
            with_config(&q4, |c| {
                c["quantization_config"]["quant_method"] = "gptq".into()
            }),
            vec!["quantization_config.quant_method = gptq"],
        ),
        (
            {
                let mut f = MemoryFiles(q4.0.clone());
                let bytes = f.0["model.safetensors"].to_vec();
                f.0.insert(
                    "model.safetensors".into(),
                    Cow::Owned(bytes[..bytes.len() - 7].to_vec()),
                );
                f
            },
            vec!["model.safetensors", "truncated"],
        ),
    ];
    let n = cases.len();
    for (files, expected) in cases {
        for device in devices() {
            let err = pollster::block_on(Model::load(&files, &opts(device.clone(), None), |_| {}))
                .err()
                .expect("loading fails")
                .to_string();
            for part in &expected {
                assert!(
                    err.contains(part),
                    "{device:?}: {err:?} should mention {part:?}"
                );
            }
        }
    }
    // Quantizing what is quantized already, on load and into a file.
    let err = pollster::block_on(Model::load(
        &q4,
        &opts(cpu(), Some(Quantization::Q8)),
        |_| {},
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("already quantized (q4)"), "{err}");
    let err = pollster::block_on(quantize(
        &q4,
        Quantization::Q8,
        u64::MAX,
        1 << 20,
        |_, _| Ok(()),
        |_| {},
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("already quantized (q4)"), "{err}");
    println!("bad quantized checkpoints: {} cases", n + 2);
}

/// On the embedded model, q8's greedy continuations against the f16 checkpoint's, and q4's.
#[test]
fn q8_greedy_tokens_mostly_equal_f16_on_the_embedded_model() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/default_model");
    let files = DirFiles::new(&dir).unwrap();
    let prompts = [
        "def fibonacci(n):",
        "import os\n",
        "class Parser:",
        "for i in range(10):",
        "return self.",
        "if __name__ == '__main__':",
        "def __init__(self, name):",
        "try:\n    import",
        "with open(path) as f:",
        "    def close(self):",
        "from typing import",
        "raise ValueError(",
        "# Copyright",
        "while True:",
        "def main():",
        "self.assertEqual(",
        "lines = []",
        "async def fetch(",
        "print(",
        "@property\n",
    ];
    let mut f16 = load(&files, &opts(cpu(), None));
    let mut counts = vec![];
    for q in [Quantization::Q8, Quantization::Q4] {
        let mut model = load(&files, &opts(cpu(), Some(q)));
        let mut equal = 0;
        for p in prompts {
            let request = layerskip::GenerateRequest {
                max_new_tokens: 32,
                ignore_eos: true,
                ..Default::default()
            };
            let a = pollster::block_on(f16.generate(p, &request, |_| true))
                .unwrap()
                .tokens;
            let b = pollster::block_on(model.generate(p, &request, |_| true))
                .unwrap()
                .tokens;
            equal += usize::from(a == b);
        }
        println!(
            "{q:?}: greedy 32-token continuations equal to f16 on {equal} of {} prompts",
            prompts.len()
        );
        counts.push(equal);
    }
    assert!(
        counts[0] * 10 >= prompts.len() * 7,
        "q8 equals f16 on only {} prompts",
        counts[0]
    );
}
