//! The same checks in a browser, on WebGPU (`wasm-pack test --headless --chrome`): the forward
//! pass on the committed fixtures against Hugging Face's logits at every exit layer, and greedy
//! self-speculative output against Hugging Face's greedy tokens.
#![cfg(target_arch = "wasm32")]

use layerskip::gpu::GpuOptions;
use layerskip::{
    generate, Call, Device, Engine, Flow, GenerateOptions, Head, Input, MemoryFiles, Model,
    Strategy,
};
use std::borrow::Cow;
use wasm_bindgen_test::*;

#[path = "common/reference.rs"]
mod reference;

wasm_bindgen_test_configure!(run_in_browser);

macro_rules! fixture {
    ($name:literal, [$($file:literal),*]) => {{
        let mut files = MemoryFiles::default();
        $(files.0.insert($file.to_string(), Cow::Borrowed(&include_bytes!(concat!("fixtures/", $name, "/", $file))[..]));)*
        (files, include_str!(concat!("fixtures/", $name, "/reference.json")))
    }};
}

fn fixtures() -> Vec<(&'static str, MemoryFiles, &'static str)> {
    let (a, ra) = fixture!(
        "llama2_tiny",
        [
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "model.safetensors.index.json",
            "model-00001-of-00003.safetensors",
            "model-00002-of-00003.safetensors",
            "model-00003-of-00003.safetensors"
        ]
    );
    let (b, rb) = fixture!(
        "llama32_tiny",
        [
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "model.safetensors"
        ]
    );
    vec![("llama2_tiny", a, ra), ("llama32_tiny", b, rb)]
}

async fn load(files: &MemoryFiles) -> Model {
    Model::load(files, &Device::Gpu(GpuOptions::default()), 128, |_| {})
        .await
        .expect("fixture loads on WebGPU")
}

#[wasm_bindgen_test]
async fn logits_match_hugging_face_at_every_exit_layer() {
    for (name, files, json) in fixtures() {
        let r = reference::parse(json);
        let mut model = load(&files).await;
        let layers = model.engine.config().num_hidden_layers;
        let mut worst = vec![0.0f32; layers];
        for p in &r.prompts {
            let call = Call::new(Input::Tokens(&p.input_ids), 0, 0..layers).head(Head::Lens);
            let lens = model.engine.run(&[call]).await.unwrap().remove(0).logits;
            for (l, (got, want)) in lens.iter().zip(&p.exit_logits).enumerate() {
                let err = got
                    .iter()
                    .zip(want.last().unwrap())
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                worst[l] = worst[l].max(err);
                assert!(err < 2e-4, "{name} layer {}: max logit error {err}", l + 1);
            }
        }
        console_log!("{name} on WebGPU: max |logit - HF| per exit layer: {worst:?}");
    }
}

#[wasm_bindgen_test]
async fn greedy_self_speculative_equals_hugging_face_greedy() {
    for (name, files, json) in fixtures() {
        let r = reference::parse(json);
        let mut model = load(&files).await;
        let layers = model.engine.config().num_hidden_layers;
        let p = &r.prompts[0];
        for e in 1..layers {
            for d in [1, 3, 8] {
                let options = GenerateOptions {
                    ignore_eos: true,
                    ..GenerateOptions::greedy(
                        Strategy::SelfSpeculative {
                            exit_layer: e,
                            num_speculations: d,
                        },
                        p.greedy.tokens.len(),
                    )
                };
                let g = generate(&mut model.engine, &p.input_ids, &options, |_, _| {
                    Flow::Continue
                })
                .await
                .unwrap();
                assert_eq!(g.tokens, p.greedy.tokens, "{name} E={e} D={d}");
            }
        }
    }
}
