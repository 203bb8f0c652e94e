//! The GPU model and the CPU reference against Hugging Face transformers' outputs, recorded by
//! tools/make_fixtures.py into tests/fixtures/*/reference.json: tokenization, the exit head's
//! logits after every layer, and greedy tokens for the full model and for every exit layer.
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::reference::Reference;
use common::*;
use layerskip::gpu::GpuOptions;
use layerskip::{
    generate, Call, DirFiles, Engine, Flow, GenerateOptions, Head, Input, KvFormat, Model, Strategy,
};

/// Largest tolerated |logit - HF logit|. Both fixtures compute in f32 (the bf16 one from bf16
/// weights, as HF's float32 reference does), so the differences are summation order only.
const TOLERANCE: f32 = 2e-4;
const FIXTURES: [&str; 2] = ["llama2_tiny", "llama32_tiny"];

/// Loads a fixture with an f32 KV cache: the exact baseline these tests hold to 2e-4.
fn load(name: &str, device: layerskip::Device) -> Model {
    load_kv(name, device, KvFormat::F32)
}

fn load_kv(name: &str, device: layerskip::Device, kv_cache: KvFormat) -> Model {
    let mut options = options(device, 128);
    options.engine.kv_cache = kv_cache;
    pollster::block_on(Model::load(
        &DirFiles::new(fixture(name)).unwrap(),
        &options,
        |_| {},
    ))
    .expect("fixture loads")
}

fn devices() -> Vec<(&'static str, layerskip::Device)> {
    vec![
        ("gpu", layerskip::Device::Gpu(GpuOptions::default())),
        ("cpu", cpu()),
        ("cpu-reference", layerskip::Device::CpuReference),
    ]
}

/// Checks the logit lens at the last position of every prompt; returns the worst error per layer.
fn check_logits(name: &str, model: &mut Model, reference: &Reference) -> Vec<f32> {
    check_logits_within(name, model, reference, TOLERANCE)
}

fn check_logits_within(
    name: &str,
    model: &mut Model,
    reference: &Reference,
    tolerance: f32,
) -> Vec<f32> {
    let mut worst = vec![];
    for p in &reference.prompts {
        let got = lens(model, &p.input_ids);
        assert_eq!(got.len(), p.exit_logits.len());
        for (l, (g, r)) in got.iter().zip(&p.exit_logits).enumerate() {
            let err = max_abs_diff(g, r.last().unwrap());
            if worst.len() <= l {
                worst.push(0.0f32);
            }
            worst[l] = worst[l].max(err);
            assert!(
                err < tolerance,
                "{name} {:?} layer {}: max logit error {err}",
                p.text,
                l + 1
            );
        }
    }
    worst
}

#[test]
fn tokenizer_matches_hugging_face() {
    for name in FIXTURES {
        let r = reference(name);
        let tokenizer = layerskip::Tokenizer::from_bytes(
            &std::fs::read(fixture(name).join("tokenizer.json")).unwrap(),
        )
        .unwrap();
        for (text, ids) in r
            .prompts
            .iter()
            .map(|p| (&p.text, &p.input_ids))
            .chain(r.tokenization.iter().map(|t| (&t.text, &t.ids)))
        {
            assert_eq!(&tokenizer.encode(text).unwrap(), ids, "{name}: {text:?}");
        }
    }
}

#[test]
fn logits_match_hugging_face_at_every_exit_layer() {
    for name in FIXTURES {
        let r = reference(name);
        for (device, d) in devices() {
            let mut model = load(name, d);
            let worst = check_logits(name, &mut model, &r);
            println!("{name} {device}: max |logit - HF| per exit layer: {worst:?}");
        }
    }
}

/// Largest tolerated |logit - HF logit| with the f16 KV cache (the default): keys and values
/// rounded to half precision (relative error up to 2^-11) shift attention scores and outputs by
/// about that much relative to their size, and the random fixtures amplify it layer by layer.
/// Measured worst (both backends alike): llama2_tiny 0.016, llama32_tiny 0.064 at its last layer,
/// about 1.3% of the logits' standard deviation of 5. Greedy tokens still equal HF's (the
/// fixtures' greedy margins are at least 0.03 and the speculative tests run on f16).
const F16_KV_TOLERANCE: f32 = 0.1;

/// The default f16 KV cache: logits close to Hugging Face at every exit layer on both backends
/// (the CPU reference rounds keys and values the same way), and the GPU within summation-order
/// error of the CPU reference with the same rounding.
#[test]
fn f16_kv_cache_stays_close_to_hugging_face() {
    for name in FIXTURES {
        let r = reference(name);
        let mut gpu = load_kv(
            name,
            layerskip::Device::Gpu(GpuOptions::default()),
            KvFormat::F16,
        );
        let mut cpu = load_kv(name, layerskip::Device::CpuReference, KvFormat::F16);
        for (device, model) in [("gpu", &mut gpu), ("cpu", &mut cpu)] {
            let worst = check_logits_within(name, model, &r, F16_KV_TOLERANCE);
            println!("{name} {device} f16 KV cache: max |logit - HF| per exit layer: {worst:?}");
        }
        let mut worst = 0f32;
        for p in &r.prompts {
            for (g, c) in lens(&mut gpu, &p.input_ids)
                .iter()
                .zip(lens(&mut cpu, &p.input_ids))
            {
                worst = worst.max(max_abs_diff(g, &c));
            }
        }
        println!("{name}: f16 KV cache, max |GPU - CPU reference| {worst}");
        // A key rounded differently after a 1e-6 difference moves a score by one f16 step.
        assert!(
            worst < 5e-3,
            "{name}: GPU and CPU reference differ by {worst}"
        );
    }
}

#[test]
fn greedy_tokens_match_hugging_face_for_full_model_and_every_exit() {
    for name in FIXTURES {
        let r = reference(name);
        for (device, d) in devices() {
            let mut model = load(name, d);
            let layers = model.engine.config().num_hidden_layers;
            for p in &r.prompts {
                let mut run = |strategy| {
                    let options = GenerateOptions {
                        ignore_eos: true,
                        ..GenerateOptions::greedy(strategy, p.greedy.max_new_tokens)
                    };
                    pollster::block_on(generate(
                        &mut model.engine,
                        &p.input_ids,
                        &options,
                        |_, _| Flow::Continue,
                    ))
                    .unwrap()
                    .tokens
                };
                let tokens = run(Strategy::Autoregressive);
                assert_eq!(tokens, p.greedy.tokens, "{name} {device} {:?}", p.text);
                for e in 1..layers {
                    let expected = &p.early_exit_greedy[&e.to_string()];
                    assert_eq!(
                        &run(Strategy::EarlyExit { exit_layer: e }),
                        expected,
                        "{name} {device} exit {e} {:?}",
                        p.text
                    );
                }
                assert_eq!(
                    model.tokenizer.decode(&tokens).unwrap(),
                    p.greedy.text,
                    "{name} {device} text"
                );
            }
        }
    }
}

#[test]
fn matrices_split_into_row_blocks_give_the_same_logits() {
    // Small enough to split the embedding, lm_head, q|k|v and gate|up into several row blocks,
    // large enough for the activation buffers.
    for (name, limit) in [("llama2_tiny", 48 << 10), ("llama32_tiny", 59 << 10)] {
        let r = reference(name);
        let mut model = load(
            name,
            layerskip::Device::Gpu(GpuOptions {
                max_binding_override: Some(limit),
                ..GpuOptions::default()
            }),
        );
        let (matrices, blocks) = match &model.engine {
            layerskip::AnyEngine::Gpu(m) => m.row_blocks(),
            _ => unreachable!("loaded on the GPU"),
        };
        assert!(
            blocks >= matrices + 4,
            "{name}: {matrices} matrices in only {blocks} blocks"
        );
        let worst = check_logits(name, &mut model, &r);
        println!("{name} split into {blocks} blocks for {matrices} matrices at {limit} bytes: max |logit - HF| per exit layer: {worst:?}");
    }
}

#[test]
fn long_prompts_equal_the_reference_on_every_backend() {
    // Longer than one block: the GPU feeds it in chunks, the CPU backends in one piece (the fast
    // one reading each weight row once for all 75 rows).
    let mut rng = Rng::new(7);
    for name in FIXTURES {
        let mut reference = load(name, layerskip::Device::CpuReference);
        let vocab = reference.config().vocab_size as u64;
        let ids: Vec<u32> = (0..75).map(|_| rng.below(vocab) as u32).collect();
        let want = lens(&mut reference, &ids);
        for (device, d) in devices().into_iter().filter(|(d, _)| *d != "cpu-reference") {
            let mut model = load(name, d);
            for (l, (got, want)) in lens(&mut model, &ids).iter().zip(&want).enumerate() {
                let err = max_abs_diff(got, want);
                assert!(err < TOLERANCE, "{name} {device} layer {}: {err}", l + 1);
            }
        }
    }
}

/// Past 256 keys a decode step's attention is split over ranges of keys and merged; the logits
/// after every layer still equal the reference's (prefill through the tiled kernel, then single
/// rows through the mat-vec kernel and split attention).
#[test]
fn long_contexts_split_attention_over_the_keys() {
    let mut rng = Rng::new(8);
    for name in FIXTURES {
        // The fixtures say 128 positions; their weights do not mind 400.
        let mut files = layerskip::MemoryFiles::default();
        for entry in std::fs::read_dir(fixture(name)).unwrap() {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_str().unwrap().to_string();
            let mut bytes = std::fs::read(&path).unwrap();
            if file == "config.json" {
                let mut config: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                config["max_position_embeddings"] = 400.into();
                bytes = config.to_string().into_bytes();
            }
            files.0.insert(file, std::borrow::Cow::Owned(bytes));
        }
        let load_long = |device| {
            let mut options = options(device, 400);
            options.engine.kv_cache = KvFormat::F32;
            pollster::block_on(Model::load(&files, &options, |_| {})).unwrap()
        };
        let mut gpu = load_long(layerskip::Device::Gpu(GpuOptions::default()));
        let mut reference = load_long(layerskip::Device::CpuReference);
        let vocab = gpu.config().vocab_size as u64;
        let layers = gpu.config().num_hidden_layers;
        let ids: Vec<u32> = (0..300).map(|_| rng.below(vocab) as u32).collect();
        let step = |model: &mut Model, ids: &[u32], pos0: usize| {
            let call = Call::new(Input::Tokens(ids), pos0, 0..layers).head(Head::Lens);
            pollster::block_on(model.engine.run(&[call]))
                .unwrap()
                .remove(0)
                .logits
        };
        let mut pos = 0;
        for chunk in [&ids[..], &[5], &[6, 7]] {
            let (g, r) = (step(&mut gpu, chunk, pos), step(&mut reference, chunk, pos));
            for (l, (g, r)) in g.iter().zip(&r).enumerate() {
                let err = max_abs_diff(g, r);
                assert!(
                    err < TOLERANCE,
                    "{name} at position {pos} layer {}: {err}",
                    l + 1
                );
            }
            pos += chunk.len();
        }
    }
}

/// Prompt chunks of 128 rows go through the tiled product, which reads each weight once per 32
/// rows: 1/32 of the layers' weight bytes per prompt token. Decoding reads them all per token.
#[test]
fn prompt_chunks_read_each_weight_once_per_32_rows() {
    let model = load(
        "llama32_tiny",
        layerskip::Device::Gpu(GpuOptions::default()),
    );
    let layerskip::AnyEngine::Gpu(gpu) = &model.engine else {
        unreachable!("loaded on the GPU")
    };
    assert_eq!(gpu.block_rows(), 128);
    let decode = gpu.weight_bytes_per_row(1);
    assert_eq!(gpu.weight_bytes_per_row(128) * 32.0, decode);
    assert_eq!(
        gpu.weight_bytes_per_row(5),
        decode * 2.0 / 5.0,
        "mat-vec: 4 rows a pass"
    );
}

/// The memory plan reports the KV cache as the backends hold it: on the CPU an f16 cache is
/// stored in halves (half the bytes of f32), counted from the storage itself.
#[test]
fn the_plan_reports_the_kv_cache_as_held() {
    let name = "llama32_tiny";
    for format in [KvFormat::F16, KvFormat::F32] {
        for (device, d) in devices() {
            let model = load_kv(name, d, format);
            let c = model.engine.config().clone();
            let plan = model.plan();
            let expected =
                (2 * c.num_hidden_layers * 128 * c.kv_dim() * format.bytes_per_value()) as u64;
            assert_eq!(plan.kv_format, format, "{device}");
            assert_eq!(plan.kv_cache, expected, "{device} {format}");
            match &model.engine {
                layerskip::AnyEngine::Cpu(m) => assert_eq!(m.kv_cache_bytes(), expected),
                layerskip::AnyEngine::CpuReference(m) => assert_eq!(m.kv_cache_bytes(), expected),
                layerskip::AnyEngine::Gpu(_) => {}
            }
        }
    }
}
