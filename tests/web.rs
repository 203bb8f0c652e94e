//! The same checks in a browser, on WebGPU (`wasm-pack test --headless --chrome`): the forward
//! pass on the committed fixtures against Hugging Face's logits at every exit layer, and greedy
//! self-speculative output against Hugging Face's greedy tokens.
#![cfg(target_arch = "wasm32")]

use layerskip::gpu::GpuOptions;
use layerskip::{
    generate, Call, Device, Engine, Flow, GenerateOptions, Head, Input, KvFormat, LoadOptions,
    MemoryFiles, Model, Strategy,
};
use std::borrow::Cow;
use wasm_bindgen::JsValue;
use wasm_bindgen_futures::JsFuture;
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

/// Both backends a browser runs: WebGPU, and the wasm CPU backend (what a browser without
/// WebGPU falls back to).
fn devices() -> [Device; 2] {
    [
        Device::Gpu(GpuOptions::default()),
        Device::Cpu { threads: None },
    ]
}

async fn load(files: &MemoryFiles, device: Device) -> Model {
    load_kv(files, device, KvFormat::default()).await
}

async fn load_kv(files: &MemoryFiles, device: Device, kv_cache: KvFormat) -> Model {
    let mut options = LoadOptions::on(device);
    options.engine.max_context = 128;
    options.engine.kv_cache = kv_cache;
    Model::load(files, &options, |_| {})
        .await
        .expect("fixture loads on WebGPU")
}

/// As natively (tests/hf_reference.rs), on WebGPU and on the wasm CPU backend: within 2e-4 of
/// Hugging Face with an f32 KV cache, within 0.1 with the default f16 one.
#[wasm_bindgen_test]
async fn logits_match_hugging_face_at_every_exit_layer() {
    for (name, files, json) in fixtures() {
        for device in devices() {
            for (kv, tolerance) in [(KvFormat::F32, 2e-4), (KvFormat::F16, 0.1)] {
                check_logits(name, &files, json, device.clone(), kv, tolerance).await;
            }
        }
    }
}

async fn check_logits(
    name: &str,
    files: &MemoryFiles,
    json: &str,
    device: Device,
    kv: KvFormat,
    tolerance: f32,
) {
    {
        let r = reference::parse(json);
        let mut model = load_kv(files, device.clone(), kv).await;
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
                assert!(
                    err < tolerance,
                    "{name} {kv} layer {}: max logit error {err}",
                    l + 1
                );
            }
        }
        console_log!("{name} on WebGPU, {kv} KV cache: max |logit - HF| per exit layer: {worst:?}");
    }
}

#[wasm_bindgen_test]
async fn greedy_self_speculative_equals_hugging_face_greedy() {
    for (name, files, json) in fixtures() {
        for device in devices() {
            let r = reference::parse(json);
            let mut model = load(&files, device.clone()).await;
            let layers = model.engine.config().num_hidden_layers;
            let p = &r.prompts[0];
            for e in 1..layers {
                for d in [1, 3, 8] {
                    let options = GenerateOptions {
                        ignore_eos: true,
                        ..GenerateOptions::greedy(
                            Strategy::speculative(e, d),
                            p.greedy.tokens.len(),
                        )
                    };
                    let g = generate(&mut model.engine, &p.input_ids, &options, |_, _| {
                        Flow::Continue
                    })
                    .await
                    .unwrap();
                    assert_eq!(g.tokens, p.greedy.tokens, "{name} {device:?} E={e} D={d}");
                }
            }
        }
    }
}

/// The files of a fixture as a JS Map of name to Uint8Array, as a page would pass them.
fn js_files(files: &MemoryFiles) -> js_sys::Map {
    let map = js_sys::Map::new();
    for (name, bytes) in &files.0 {
        map.set(
            &name.as_str().into(),
            &js_sys::Uint8Array::from(bytes.as_ref()).into(),
        );
    }
    map
}

async fn call(object: &JsValue, method: &str, args: &[JsValue]) -> Result<JsValue, String> {
    let f: js_sys::Function = js_sys::Reflect::get(object, &method.into()).unwrap().into();
    let promise = f
        .apply(object, &args.iter().collect::<js_sys::Array>())
        .unwrap();
    JsFuture::from(js_sys::Promise::from(promise))
        .await
        .map_err(|e| js_sys::Error::from(e).message().into())
}

/// The `tokens` of a `generate` result.
fn result_tokens(result: &JsValue) -> Vec<u32> {
    js_sys::Array::from(&js_sys::Reflect::get(result, &"tokens".into()).unwrap())
        .iter()
        .map(|t| t.as_f64().unwrap() as u32)
        .collect()
}

fn object(json: &str) -> JsValue {
    js_sys::JSON::parse(json).unwrap()
}

/// The JavaScript class checks options as the CLI does: bad values are refused by name instead
/// of falling back to a default, and a hostile shard index is refused before anything is read.
#[wasm_bindgen_test]
async fn the_javascript_api_refuses_bad_options() {
    let (_, files, _) = fixtures().remove(1);
    let promise =
        layerskip::wasm::LayerSkip::from_files(js_files(&files).into(), JsValue::UNDEFINED);
    let model = JsFuture::from(promise)
        .await
        .expect("loads through the JS API");
    let prompt: JsValue = "x".into();
    let temperature = js_sys::Object::new();
    js_sys::Reflect::set(&temperature, &"temperature".into(), &f64::NAN.into()).unwrap();
    let cases: Vec<(JsValue, &str)> = vec![
        (
            object(r#"{"temperature": -1}"#),
            "temperature must be a finite number >= 0",
        ),
        (temperature.into(), "`temperature` must be a finite number"),
        (object(r#"{"topP": 2}"#), "top_p must be in (0, 1]"),
        (object(r#"{"maxTokens": 3}"#), "unknown field `maxTokens`"),
        (object(r#"{"strategy": "fast"}"#), "unknown variant `fast`"),
        (
            object(r#"{"strategy": "self-speculative", "exitLayer": 5}"#),
            "exit layer 5 is outside 1..=4",
        ),
        (
            object(r#"{"numSpeculations": 0}"#),
            "num_speculations must be at least 1",
        ),
        (object(r#"{"seed": -1}"#), "invalid options"),
        (
            object(r#"{"exitLayer": "sometimes"}"#),
            "expected a whole number or \"auto\"",
        ),
        (
            object(r#"{"strategy": "early-exit", "exitLayer": "auto"}"#),
            "exit_layer auto needs the self-speculative strategy",
        ),
    ];
    for (options, expected) in cases {
        let err = call(&model, "generate", &[prompt.clone(), options])
            .await
            .unwrap_err();
        assert!(err.contains(expected), "{err}");
    }
    // On SwiftShader (a software adapter) "auto" chooses the CPU and says why.
    let info = js_sys::Reflect::get(&model, &"info".into()).unwrap();
    let info = js_sys::Function::from(info).call0(&model).unwrap();
    let backend = js_sys::Reflect::get(&info, &"backend".into()).unwrap();
    let reason: String = js_sys::Reflect::get(&info, &"backend_reason".into())
        .unwrap()
        .as_string()
        .unwrap();
    console_log!("auto chose {backend:?}: {reason}");
    assert_eq!(backend, "cpu", "{reason}");
    let ok = call(
        &model,
        "generate",
        &[
            prompt,
            object(r#"{"maxNewTokens": 2, "strategy": "self-speculative"}"#),
        ],
    )
    .await
    .unwrap();
    let stats = js_sys::Reflect::get(&ok, &"stats".into()).unwrap();
    assert_eq!(
        js_sys::Reflect::get(&stats, &"stop_reason".into()).unwrap(),
        "max_new_tokens"
    );

    let mut hostile = fixtures().remove(1).1;
    hostile.0.insert(
        "model.safetensors.index.json".into(),
        Cow::Borrowed(br#"{"weight_map": {"lm_head.weight": "../model.safetensors"}}"#),
    );
    let promise =
        layerskip::wasm::LayerSkip::from_files(js_files(&hostile).into(), JsValue::UNDEFINED);
    let err: String = js_sys::Error::from(JsFuture::from(promise).await.unwrap_err())
        .message()
        .into();
    assert!(err.contains("not a plain file name"), "{err}");
}

/// Through the JavaScript API, on WebGPU and on the wasm CPU backend: `exitLayer: 'auto'` and
/// `numSpeculations: 'auto'`, with and without a reduced draft vocabulary, give Hugging Face's
/// greedy tokens, and the stats carry the choices made.
#[wasm_bindgen_test]
async fn auto_speculation_and_a_draft_vocabulary_keep_greedy_output() {
    for (name, files, json) in fixtures() {
        let r = reference::parse(json);
        let p = &r.prompts[0];
        for (device, draft_vocab) in [
            ("gpu", ""),
            ("cpu", ""),
            ("gpu", r#", "draftVocab": 64"#),
            ("cpu", r#", "draftVocab": 64"#),
        ] {
            let options = object(&format!(
                r#"{{"device": "{device}", "maxContext": 128{draft_vocab}}}"#
            ));
            let promise = layerskip::wasm::LayerSkip::from_files(js_files(&files).into(), options);
            let model = JsFuture::from(promise)
                .await
                .expect("loads through the JS API");
            let request = object(&format!(
                r#"{{"strategy": "self-speculative", "exitLayer": "auto", "numSpeculations": "auto", "maxNewTokens": {}, "ignoreEos": true}}"#,
                p.greedy.tokens.len()
            ));
            let out = call(&model, "generate", &[p.text.as_str().into(), request])
                .await
                .unwrap();
            let tokens = result_tokens(&out);
            assert_eq!(tokens, p.greedy.tokens, "{name} {device}{draft_vocab}");
            let stats = js_sys::Reflect::get(&out, &"stats".into()).unwrap();
            let adaptive = js_sys::Reflect::get(&stats, &"adaptive".into()).unwrap();
            assert!(adaptive.is_object(), "{name} {device}: no adaptive stats");
        }
    }
}

/// A GGUF file (every tensor type, q|k|v fused across types) handed to the JavaScript API as a
/// page would pass a picked file: its tokenizer and weights come from the one file, and greedy
/// output (plain and self-speculative) equals transformers' on WebGPU and the wasm CPU backend.
#[wasm_bindgen_test]
async fn a_gguf_file_loads_through_the_javascript_api() {
    let mut files = MemoryFiles::default();
    files.0.insert(
        "tiny_mixed.gguf".into(),
        Cow::Borrowed(&include_bytes!("fixtures/gguf/tiny_mixed.gguf")[..]),
    );
    let r: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/gguf/tiny_mixed.json")).unwrap();
    let p = &r["prompts"][0];
    let want: Vec<u32> = p["greedy"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    for device in ["gpu", "cpu"] {
        // f32 activations: transformers' arithmetic (the CPU default rounds them to 8 bits).
        let options = object(&format!(
            r#"{{"device": "{device}", "maxContext": 64, "activations": "f32"}}"#
        ));
        let promise = layerskip::wasm::LayerSkip::from_files(js_files(&files).into(), options);
        let model = JsFuture::from(promise).await.expect("a GGUF file loads");
        for strategy in ["autoregressive", "self-speculative"] {
            let request = object(&format!(
                r#"{{"strategy": "{strategy}", "exitLayer": 2, "maxNewTokens": {}, "ignoreEos": true}}"#,
                want.len()
            ));
            let out = call(
                &model,
                "generate",
                &[p["text"].as_str().unwrap().into(), request],
            )
            .await
            .unwrap();
            let tokens = result_tokens(&out);
            assert_eq!(tokens, want, "{device} {strategy}");
        }
    }
}

/// A panic (there should be none) rejects the promise in flight with its message instead of
/// leaving the page waiting forever.
#[wasm_bindgen_test]
async fn a_panic_rejects_the_promise_in_flight() {
    let promise = layerskip::wasm::guard::guarded(async {
        if js_sys::Math::random() < 2.0 {
            panic!("deliberate test panic");
        }
        Ok(JsValue::NULL)
    });
    let before = layerskip::wasm::guard::panics();
    let err: String = js_sys::Error::from(JsFuture::from(promise).await.unwrap_err())
        .message()
        .into();
    assert!(
        err.contains("deliberate test panic") && err.contains("load it again"),
        "{err}"
    );
    assert_eq!(layerskip::wasm::guard::panics(), before + 1);
}

/// In the browser as natively: a q4 checkpoint written by `quantize` (here into memory) loads
/// through the JavaScript API into exactly the weights quantizing on load gives, with either KV
/// cache format.
#[wasm_bindgen_test]
async fn a_saved_quantized_checkpoint_equals_quantizing_on_load() {
    let (_, files, _) = fixtures().remove(1);
    let mut saved: std::collections::HashMap<String, Vec<u8>> = Default::default();
    layerskip::quantize::quantize(
        &files,
        layerskip::Quantization::Q4,
        u64::MAX,
        1 << 20,
        |name, bytes| {
            saved
                .entry(name.to_string())
                .or_default()
                .extend_from_slice(bytes);
            Ok(())
        },
        |_| {},
    )
    .await
    .unwrap();
    let saved = MemoryFiles(saved.into_iter().map(|(k, v)| (k, Cow::Owned(v))).collect());
    let load_js = |files: &MemoryFiles, options: &str| {
        JsFuture::from(layerskip::wasm::LayerSkip::from_files(
            js_files(files).into(),
            object(options),
        ))
    };
    for kv in ["f16", "f32"] {
        let on_load = load_js(
            &files,
            &format!(r#"{{"quantize": "q4", "kvCache": "{kv}"}}"#),
        )
        .await
        .unwrap();
        let from_file = load_js(&saved, &format!(r#"{{"kvCache": "{kv}"}}"#))
            .await
            .unwrap();
        let info = js_sys::Reflect::get(&from_file, &"info".into()).unwrap();
        let info = js_sys::Function::from(info).call0(&from_file).unwrap();
        let memory = js_sys::Reflect::get(&info, &"memory".into()).unwrap();
        assert_eq!(
            js_sys::Reflect::get(&memory, &"weight_format".into()).unwrap(),
            "q4"
        );
        let prompt: JsValue = "def add(a, b):".into();
        let a = call(&on_load, "logits", &[prompt.clone(), 8.into()])
            .await
            .unwrap();
        let b = call(&from_file, "logits", &[prompt, 8.into()])
            .await
            .unwrap();
        assert_eq!(
            js_sys::JSON::stringify(&a).unwrap(),
            js_sys::JSON::stringify(&b).unwrap(),
            "kv {kv}: the same top tokens and logits at every layer"
        );
    }
}

/// Calls `next()` on a JS async iterator until it is done; returns the values, or stops after
/// `limit` of them and calls `return()` (as leaving a `for await` loop does).
async fn iterate(iterable: &JsValue, limit: usize) -> Vec<JsValue> {
    let make = js_sys::Reflect::get(iterable, &js_sys::Symbol::async_iterator()).unwrap();
    let iterator = js_sys::Function::from(make).call0(iterable).unwrap();
    let mut values = vec![];
    loop {
        if values.len() == limit {
            call(&iterator, "return", &[]).await.unwrap();
            return values;
        }
        let step = call(&iterator, "next", &[]).await.unwrap();
        if js_sys::Reflect::get(&step, &"done".into()).unwrap() == JsValue::TRUE {
            return values;
        }
        values.push(js_sys::Reflect::get(&step, &"value".into()).unwrap());
    }
}

/// All the chunks of a streamed `create(...args)`.
async fn stream(completions: &JsValue, args: &[JsValue]) -> Vec<serde_json::Value> {
    let stream = call(completions, "create", args).await.unwrap();
    iterate(&stream, usize::MAX)
        .await
        .iter()
        .map(json)
        .collect()
}

/// A JS value as serde_json sees it.
fn json(value: &JsValue) -> serde_json::Value {
    let text: String = js_sys::JSON::stringify(value).unwrap().into();
    serde_json::from_str(&text).unwrap()
}

/// `model.chat.completions.create` through the JavaScript API, on WebGPU and on the wasm CPU
/// backend: the conversation is rendered as Hugging Face renders it (its ids from
/// tests/fixtures/chat/expected.json), the reply is the model's greedy continuation of those ids
/// (the Rust API on the same backend), whole and streamed; a bad request rejects `create`
/// itself; an aborted signal ends a stream with finish_reason "abort"; leaving a stream early
/// stops it, and the next request reuses the conversation's KV cache.
#[wasm_bindgen_test]
async fn the_openai_chat_api_answers_and_streams() {
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(include_str!("fixtures/chat/expected.json")).unwrap();
    let case = cases
        .iter()
        .find(|c| {
            c["template"] == "llama2.jinja"
                && c["tokenizer"] == "llama32_tiny"
                && c["add_generation_prompt"] == true
                && c["error"].is_null()
                && c["messages"].as_array().unwrap().len() == 2
        })
        .unwrap();
    let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
    let messages = case["messages"].to_string();
    let (_, mut files, _) = fixtures().remove(1);
    let mut config: serde_json::Value = serde_json::from_slice(include_bytes!(
        "fixtures/llama32_tiny/tokenizer_config.json"
    ))
    .unwrap();
    config["chat_template"] = include_str!("fixtures/chat/llama2.jinja").into();
    files.0.insert(
        "tokenizer_config.json".into(),
        Cow::Owned(serde_json::to_vec(&config).unwrap()),
    );
    for (device, device_name) in devices().into_iter().zip(["gpu", "cpu"]) {
        let mut reference = load(&files, device).await;
        let greedy = GenerateOptions {
            ignore_eos: true,
            ..GenerateOptions::greedy(Strategy::Autoregressive, 8)
        };
        let expected = reference
            .complete_ids(ids.clone(), &greedy, &[], |_| true)
            .await
            .unwrap()
            .text;

        let options = object(&format!(
            r#"{{"device": "{device_name}", "maxContext": 128}}"#
        ));
        let promise = layerskip::wasm::LayerSkip::from_files(js_files(&files).into(), options);
        let model = JsFuture::from(promise).await.unwrap();
        let chat = js_sys::Reflect::get(&model, &"chat".into()).unwrap();
        let completions = js_sys::Reflect::get(&chat, &"completions".into()).unwrap();
        let request = |extra: &str| {
            object(&format!(
                r#"{{"messages": {messages}, "max_tokens": 8, "temperature": 0, "ignore_eos": true{extra}}}"#
            ))
        };
        let whole = json(&call(&completions, "create", &[request("")]).await.unwrap());
        assert_eq!(whole["object"], "chat.completion");
        assert_eq!(
            whole["choices"][0]["message"]["content"],
            expected.as_str(),
            "{device_name}"
        );
        assert_eq!(whole["choices"][0]["finish_reason"], "length");
        assert_eq!(whole["usage"]["prompt_tokens"], ids.len());

        let extra = r#", "stream": true, "stream_options": {"include_usage": true}, "strategy": "self-speculative", "exit_layer": 2, "num_speculations": 3"#;
        let chunks = stream(&completions, &[request(extra)]).await;
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, expected, "{device_name}");
        let (closing, usage) = (&chunks[chunks.len() - 2], &chunks[chunks.len() - 1]);
        assert_eq!(closing["choices"][0]["finish_reason"], "length");
        assert_eq!(usage["stats"]["strategy"], "self-speculative");
        // The same conversation again: all but the last prompt token is still in the cache.
        assert_eq!(
            usage["usage"]["prompt_tokens_details"]["cached_tokens"],
            ids.len() - 1
        );

        // Bad requests reject `create`, streamed or not.
        for extra in [
            r#", "temperature": 5"#,
            r#", "stream": true, "logprobs": true"#,
        ] {
            let err = call(&completions, "create", &[request(extra)])
                .await
                .unwrap_err();
            assert!(
                err.contains("temperature") || err.contains("logprobs"),
                "{err}"
            );
        }
        // An aborted signal: the stream ends at once with finish_reason "abort".
        let aborted = object(r#"{"signal": {"aborted": true}}"#);
        let chunks = stream(&completions, &[request(r#", "stream": true"#), aborted]).await;
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "abort"
        );
        // Leaving a stream after its first chunk stops the generation (both backends hand the
        // event loop a turn between forward passes), and the model is free for the next request.
        let long = r#", "stream": true, "max_tokens": 60"#;
        let stream = call(&completions, "create", &[request(long)])
            .await
            .unwrap();
        assert_eq!(iterate(&stream, 1).await.len(), 1);
        let result = json(&call(&stream, "finalChatCompletion", &[]).await.unwrap());
        let (finish, tokens) = (
            &result["choices"][0]["finish_reason"],
            &result["usage"]["completion_tokens"],
        );
        assert_eq!(finish, "abort", "{device_name}: {result}");
        assert!(tokens.as_u64().unwrap() < 60, "{device_name}: {result}");
        let completions = js_sys::Reflect::get(&model, &"completions".into()).unwrap();
        let raw = object(
            r#"{"prompt": "def add(a, b):", "max_tokens": 3, "temperature": 0, "ignore_eos": true}"#,
        );
        let raw = json(&call(&completions, "create", &[raw]).await.unwrap());
        assert_eq!(raw["object"], "text_completion");
        assert_eq!(raw["usage"]["completion_tokens"], 3);
    }
}
