//! JavaScript bindings: the `LayerSkip` class of the npm package. Every method returns a Promise
//! that rejects with an Error carrying our message; nothing panics across the boundary.

mod files;

use crate::engine::{Call, Engine, Head, Input};
use crate::generate::{GenerateOptions, Strategy, TokenKind};
use crate::gpu::GpuOptions;
use crate::model::{AnyEngine, Device, Model};
use crate::sampler::{top_k, SamplingParams};
use files::BlobFiles;
use serde::Deserialize;
use serde_json::json;
use std::cell::RefCell;
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

#[wasm_bindgen(module = "/src/wasm/loader.js")]
extern "C" {
    #[wasm_bindgen(js_name = fetchModel, catch)]
    async fn fetch_model(base_url: &str, on_progress: &JsValue) -> Result<JsValue, JsValue>;
    #[wasm_bindgen(js_name = toBlobMap, catch)]
    fn to_blob_map(input: &JsValue) -> Result<JsValue, JsValue>;
}

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &'static str = r#"
export interface LoadOptions {
  /** Called with bytes done and bytes total while downloading, then while uploading to the GPU. */
  onProgress?: (phase: "download" | "upload", done: number, total: number) => void;
  /** KV cache positions (default 2048, capped by the model). */
  maxContext?: number;
}
export interface GenerateOptions {
  strategy?: "autoregressive" | "early-exit" | "self-speculative";
  exitLayer?: number;
  numSpeculations?: number;
  maxNewTokens?: number;
  /** 0 (default) decodes greedily. */
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  stop?: string[];
  ignoreEos?: boolean;
  draftConfidence?: number;
  onToken?: (token: { token: number | null; kind: "plain" | "accepted" | "bonus" | "rejected"; text: string }) => void;
  signal?: AbortSignal;
}
export interface Stats {
  strategy: string; prompt_tokens: number; generated_tokens: number; elapsed_ms: number;
  tokens_per_second: number; time_to_first_token_ms: number; time_per_output_token_ms: number;
  rounds: number; drafted: number; accepted: number; acceptance_rate: number;
  draft_ms: number; verify_ms: number; submits: number; dispatches: number;
  submits_per_token: number; dispatches_per_token: number; stop_reason: string;
}
export interface GenerateResult { prompt_tokens: number[]; tokens: number[]; text: string; stats: Stats }
export interface LogitLens { prompt_tokens: number[]; exits: { layer: number; top: [number, number, string][] }[] }
"#;

/// Generation options as JavaScript passes them (callbacks are read separately).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JsGenerateOptions {
    strategy: Option<String>,
    exit_layer: Option<usize>,
    num_speculations: Option<usize>,
    max_new_tokens: Option<usize>,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    seed: Option<u64>,
    stop: Vec<String>,
    ignore_eos: bool,
    draft_confidence: Option<f32>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct JsLoadOptions {
    max_context: Option<usize>,
}

fn error(e: impl std::fmt::Display) -> JsValue {
    js_sys::Error::new(&e.to_string()).into()
}

/// Plain data from a JS options object (functions and signals are dropped by JSON).
fn parse<T: for<'de> Deserialize<'de> + Default>(options: &JsValue) -> Result<T, JsValue> {
    if options.is_undefined() || options.is_null() {
        return Ok(T::default());
    }
    let text: String = js_sys::JSON::stringify(options)?.into();
    serde_json::from_str(&text).map_err(|e| error(format!("invalid options: {e}")))
}

fn field(object: &JsValue, name: &str) -> JsValue {
    if object.is_object() {
        js_sys::Reflect::get(object, &name.into()).unwrap_or(JsValue::UNDEFINED)
    } else {
        JsValue::UNDEFINED
    }
}

fn to_js(value: &serde_json::Value) -> Result<JsValue, JsValue> {
    js_sys::JSON::parse(&value.to_string())
}

/// A model loaded onto the browser's GPU.
#[wasm_bindgen]
pub struct LayerSkip {
    model: Rc<RefCell<Model>>,
}

async fn load(files: BlobFiles, options: JsValue) -> Result<LayerSkip, JsValue> {
    let parsed: JsLoadOptions = parse(&options)?;
    let on_progress = js_sys::Function::from(field(&options, "onProgress"));
    let has_progress = on_progress.is_function();
    let device = Device::Gpu(GpuOptions::default());
    let model = Model::load(&files, &device, parsed.max_context.unwrap_or(2048), |p| {
        if has_progress {
            let _ = on_progress.call3(&JsValue::NULL, &"upload".into(), &(p.done as f64).into(), &(p.total as f64).into());
        }
    })
    .await
    .map_err(|e| match e {
        crate::Error::NoAdapter(_) => error("WebGPU is not available in this browser (no GPU adapter); try a current Chrome, Edge or Safari"),
        e => error(e),
    })?;
    Ok(LayerSkip {
        model: Rc::new(RefCell::new(model)),
    })
}

#[wasm_bindgen]
impl LayerSkip {
    /// Loads a Hugging Face checkpoint directory from a URL (config.json, tokenizer.json,
    /// generation_config.json, model.safetensors or the shards of model.safetensors.index.json).
    /// Weights are kept in the Cache API, so a reload does not download them again.
    #[wasm_bindgen(js_name = fromUrl, unchecked_return_type = "Promise<LayerSkip>")]
    pub fn from_url(
        base_url: String,
        #[wasm_bindgen(unchecked_param_type = "LoadOptions")] options: JsValue,
    ) -> js_sys::Promise {
        future_to_promise(async move {
            let on_progress = field(&options, "onProgress");
            let report = if on_progress.is_function() {
                let f = js_sys::Function::from(on_progress);
                Closure::<dyn Fn(f64, f64)>::new(move |done: f64, total: f64| {
                    let _ = f.call3(
                        &JsValue::NULL,
                        &"download".into(),
                        &done.into(),
                        &total.into(),
                    );
                })
                .into_js_value()
            } else {
                JsValue::UNDEFINED
            };
            let map = fetch_model(&base_url, &report).await?;
            load(BlobFiles(map.into()), options)
                .await
                .map(JsValue::from)
        })
    }

    /// Loads from files the user picked or dropped (a FileList or File[]), or from an object or
    /// Map of file name to Blob / ArrayBuffer / typed array.
    #[wasm_bindgen(js_name = fromFiles, unchecked_return_type = "Promise<LayerSkip>")]
    pub fn from_files(
        #[wasm_bindgen(
            unchecked_param_type = "FileList | File[] | Map<string, Blob | ArrayBuffer> | Record<string, Blob | ArrayBuffer>"
        )]
        files: JsValue,
        #[wasm_bindgen(unchecked_param_type = "LoadOptions")] options: JsValue,
    ) -> js_sys::Promise {
        future_to_promise(async move {
            let map = to_blob_map(&files)?;
            load(BlobFiles(map.into()), options)
                .await
                .map(JsValue::from)
        })
    }

    /// Generates a continuation of `prompt`, streaming tokens to `options.onToken`. Resolves with
    /// the tokens, the text and the statistics; an aborted `options.signal` ends generation early
    /// (stop_reason "cancelled").
    // The model stays borrowed across awaits on purpose: it is taken with try_borrow_mut, so a
    // second concurrent request is refused as busy instead of panicking.
    #[allow(clippy::await_holding_refcell_ref)]
    #[wasm_bindgen(unchecked_return_type = "Promise<GenerateResult>")]
    pub fn generate(
        &self,
        prompt: String,
        #[wasm_bindgen(unchecked_param_type = "GenerateOptions")] options: JsValue,
    ) -> js_sys::Promise {
        let model = self.model.clone();
        future_to_promise(async move {
            let o: JsGenerateOptions = parse(&options)?;
            let on_token = js_sys::Function::from(field(&options, "onToken"));
            let signal = field(&options, "signal");
            let mut model = model
                .try_borrow_mut()
                .map_err(|_| error("the model is busy with another request"))?;
            let exit_layer = model.exit_layer(o.exit_layer);
            let strategy = match o.strategy.as_deref().unwrap_or("autoregressive") {
                "autoregressive" => Strategy::Autoregressive,
                "early-exit" => Strategy::EarlyExit { exit_layer },
                "self-speculative" => Strategy::SelfSpeculative {
                    exit_layer,
                    num_speculations: o.num_speculations.unwrap_or(4),
                },
                other => return Err(error(format!("unknown strategy {other:?}"))),
            };
            let temperature = o.temperature.unwrap_or(0.0);
            let options = GenerateOptions {
                strategy,
                max_new_tokens: o.max_new_tokens.unwrap_or(64),
                ignore_eos: o.ignore_eos,
                eos_token_ids: vec![],
                sampling: (temperature > 0.0).then_some(SamplingParams {
                    temperature,
                    top_k: o.top_k.unwrap_or(0),
                    top_p: o.top_p.unwrap_or(1.0),
                    seed: o.seed.unwrap_or(0),
                }),
                draft_confidence: o.draft_confidence,
            };
            let completion = model
                .complete(&prompt, &options, &o.stop, |s| {
                    if on_token.is_function() {
                        let kind = match s.kind {
                            TokenKind::Plain => "plain",
                            TokenKind::Accepted => "accepted",
                            TokenKind::Bonus => "bonus",
                            TokenKind::Rejected => "rejected",
                        };
                        let event = json!({"token": s.token, "kind": kind, "text": s.text});
                        if let Ok(event) = to_js(&event) {
                            let _ = on_token.call1(&JsValue::NULL, &event);
                        }
                    }
                    field(&signal, "aborted") != JsValue::TRUE
                })
                .await
                .map_err(error)?;
            to_js(&json!({
                "prompt_tokens": completion.prompt_tokens,
                "tokens": completion.tokens,
                "text": completion.text,
                "stats": completion.stats,
            }))
        })
    }

    /// The logit lens: the exit head's top `top` tokens (default 5) at the last prompt position
    /// after every layer.
    // The model stays borrowed across awaits on purpose: it is taken with try_borrow_mut, so a
    // second concurrent request is refused as busy instead of panicking.
    #[allow(clippy::await_holding_refcell_ref)]
    #[wasm_bindgen(unchecked_return_type = "Promise<LogitLens>")]
    pub fn logits(&self, prompt: String, top: Option<usize>) -> js_sys::Promise {
        let model = self.model.clone();
        future_to_promise(async move {
            let mut model = model
                .try_borrow_mut()
                .map_err(|_| error("the model is busy with another request"))?;
            let ids = model.tokenizer.encode(&prompt).map_err(error)?;
            if ids.is_empty() {
                return Err(error("the prompt encodes to no tokens"));
            }
            let layers = model.engine.config().num_hidden_layers;
            let call = Call::new(Input::Tokens(&ids), 0, 0..layers).head(Head::Lens);
            let exits = model
                .engine
                .run(&[call])
                .await
                .map_err(error)?
                .remove(0)
                .logits;
            let k = top.unwrap_or(5);
            let exits: Vec<_> = exits
                .iter()
                .enumerate()
                .map(|(l, logits)| {
                    let top: Vec<_> = top_k(logits, k)
                        .into_iter()
                        .map(|(i, logit)| json!([i, logit, model.tokenizer.token_text(i as u32)]))
                        .collect();
                    json!({"layer": l + 1, "top": top})
                })
                .collect();
            to_js(&json!({"prompt_tokens": ids, "exits": exits}))
        })
    }

    /// Adapter, limits and model summary.
    pub fn info(&self) -> Result<JsValue, JsValue> {
        let model = self
            .model
            .try_borrow()
            .map_err(|_| error("the model is busy with another request"))?;
        let c = model.engine.config();
        let mut info = json!({
            "layers": c.num_hidden_layers, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
            "heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads, "head_dim": c.head_dim,
            "vocab_size": c.vocab_size, "parameters": c.parameter_count(), "dtype": c.dtype,
            "default_exit_layer": model.default_exit_layer, "max_context": model.engine.max_context(),
        });
        if let AnyEngine::Gpu(m) = &model.engine {
            let ctx = m.context();
            info["adapter"] = json!({"name": ctx.info.name, "vendor": ctx.info.vendor, "backend": format!("{:?}", ctx.info.backend)});
            info["limits"] = json!({
                "max_storage_buffer_binding_size": ctx.limits.max_storage_buffer_binding_size,
                "max_buffer_size": ctx.limits.max_buffer_size,
                "max_compute_invocations_per_workgroup": ctx.limits.max_compute_invocations_per_workgroup,
            });
            info["weight_bytes"] = json!(m.weight_bytes());
            info["kv_cache_bytes"] = json!(m.kv_bytes());
        }
        to_js(&info)
    }
}
