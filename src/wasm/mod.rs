//! JavaScript bindings: the `LayerSkip` class of the npm package, a thin adapter over `Model`.
//! Every method returns a Promise that rejects with an Error carrying our message; a panic
//! (there should be none) rejects the promises in flight instead of leaving them pending.

mod files;
pub mod guard;

use crate::engine::{Activations, EngineOptions};
use crate::format::{KvFormat, Quantization};
use crate::generate::TokenKind;
use crate::gpu::GpuOptions;
use crate::model::{Device, LoadOptions, Model, DEFAULT_LENS_TOP};
use crate::openai::{Endpoint, OpenAiRequest, Reply};
use crate::request::GenerateRequest;
use files::BlobFiles;
use guard::{error, guarded};
use serde::Deserialize;
use serde_json::json;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use wasm_bindgen::prelude::*;

#[wasm_bindgen(module = "/src/wasm/openai.js")]
extern "C" {
    #[wasm_bindgen(js_name = openAiApi)]
    fn open_ai_api(run: &js_sys::Function) -> JsValue;
}

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
  /** Quantize f32/f16/bf16 weights while loading: 8-bit or 4-bit, groups of 32. */
  quantize?: "q8" | "q4";
  /** Precision of the KV cache (default f16, half the memory of f32). */
  kvCache?: "f16" | "f32";
  /** How the CPU backend multiplies activations with quantized weights (default "q8": rounded to
   *  8 bits per group of 32, as llama.cpp does; "f32": exact products, as the GPU computes). */
  activations?: "q8" | "f32";
  /** Draft with an exit head over only the N most frequent token ids (token_frequencies.json next
   *  to the model, else BPE merge order); verification keeps the full head, so output is unchanged. */
  draftVocab?: number;
  /** "auto" (default): WebGPU when the browser has a hardware adapter, else the wasm CPU backend.
   *  "gpu" fails clearly without WebGPU; "cpu" always runs on the CPU. */
  device?: "auto" | "gpu" | "cpu";
}
export interface GenerateOptions {
  strategy?: "autoregressive" | "early-exit" | "self-speculative";
  /** "auto" (self-speculative): chosen every round from measured costs and acceptance. */
  exitLayer?: number | "auto";
  numSpeculations?: number | "auto";
  maxNewTokens?: number;
  /** 0 (default) decodes greedily. */
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: number;
  stop?: string[];
  ignoreEos?: boolean;
  draftConfidence?: number;
  /** Hugging Face's repetition penalty (1 = none): logits of ids in the prompt or output are
   *  divided by it when positive, multiplied when not. */
  repetitionPenalty?: number;
  /** OpenAI's penalties in [-2, 2]: per time an id was generated, and once if it was. */
  frequencyPenalty?: number;
  presencePenalty?: number;
  /** Prefill the whole prompt even where the KV cache still holds a prefix of it from the
   *  previous generation (by default only what follows that prefix is computed). */
  noPrefixReuse?: boolean;
  onToken?: (token: { token: number | null; kind: "plain" | "accepted" | "bonus" | "rejected"; text: string }) => void;
  signal?: AbortSignal;
}
export interface Stats {
  backend: "gpu" | "cpu" | "cpu-reference";
  strategy: "autoregressive" | "early-exit" | "self-speculative"; prompt_tokens: number;
  /** Prompt tokens whose KV entries were kept from the previous generation. */
  cached_prompt_tokens: number; generated_tokens: number;
  elapsed_ms: number; tokens_per_second: number; time_to_first_token_ms: number; time_per_output_token_ms: number;
  rounds: number; drafted: number; accepted: number; acceptance_rate: number;
  /** Self-speculative rounds: their wall time (draft_ms and verify_ms where those are separate
   *  submits), their submits in all and per round (1 for greedy rounds). */
  round_ms: number; round_submits: number; submits_per_round: number;
  draft_ms: number; verify_ms: number; submits: number; dispatches: number;
  submits_per_token: number; dispatches_per_token: number;
  stop_reason: "max_new_tokens" | "eos" | "stop_string" | "cancelled";
  /** With exitLayer or numSpeculations "auto": rounds per exit layer and per depth (0: a plain
   *  step), acceptance estimates per exit layer and draft position (after a round that accepted
   *  fewer than 2 drafts, and after a streak), the measured costs (null while a model's first
   *  generation takes plain steps until measuring them fits its budget: steps_before_calibration)
   *  and what probing cost. */
  adaptive?: {
    exit_layers: Record<string, number>; depths: Record<string, number>;
    acceptance: number[][]; acceptance_in_streak: number[][];
    costs: { submit_ms: number; layer_ms: number; head_ms: number; row_fraction: number } | null;
    calibration_ms: number; steps_before_calibration: number;
    probes: number; shadow_rows: number; shadow_ms: number; cut_offs: number;
  };
}
/** OpenAI's request fields (defaults as OpenAI's: temperature 1, max_tokens 16 for completions and
 *  what the context leaves for chat, a fresh seed) and LayerSkip's own (defaults as generate's). */
export interface OpenAiOptions {
  model?: string;
  max_tokens?: number; max_completion_tokens?: number;
  temperature?: number; top_p?: number; seed?: number; stop?: string | string[];
  frequency_penalty?: number; presence_penalty?: number;
  stream?: boolean; stream_options?: { include_usage?: boolean };
  n?: 1; user?: string;
  strategy?: "autoregressive" | "early-exit" | "self-speculative";
  exit_layer?: number | "auto"; num_speculations?: number | "auto";
  draft_confidence?: number; top_k?: number; repetition_penalty?: number; ignore_eos?: boolean;
  signal?: AbortSignal;
}
export interface ChatMessage { role: "system" | "developer" | "user" | "assistant" | string; content: string | { type: "text"; text: string }[] }
export type FinishReason = "stop" | "length" | "abort";
export interface Usage { prompt_tokens: number; completion_tokens: number; total_tokens: number; prompt_tokens_details: { cached_tokens: number } }
export interface ChatCompletion {
  id: string; object: "chat.completion"; created: number; model: string;
  choices: { index: 0; message: { role: "assistant"; content: string }; logprobs: null; finish_reason: FinishReason }[];
  usage: Usage; stats: Stats;
}
export interface ChatCompletionChunk {
  id: string; object: "chat.completion.chunk"; created: number; model: string;
  /** `kind`: how the piece's token was made (accepted: a draft the full model agreed with). */
  choices: { index: 0; delta: { role?: "assistant"; content?: string; kind?: "plain" | "accepted" | "bonus" }; logprobs: null; finish_reason: FinishReason | null }[];
  /** On the last chunk, with stream_options.include_usage. */
  usage?: Usage; stats?: Stats;
}
export interface Completion {
  id: string; object: "text_completion"; created: number; model: string;
  choices: { index: 0; text: string; kind?: "plain" | "accepted" | "bonus"; logprobs: null; finish_reason: FinishReason | null }[];
  usage?: Usage; stats?: Stats;
}
export interface Chat {
  completions: {
    create(request: OpenAiOptions & { messages: ChatMessage[]; stream?: false }, options?: { signal?: AbortSignal }): Promise<ChatCompletion>;
    create(request: OpenAiOptions & { messages: ChatMessage[]; stream: true }, options?: { signal?: AbortSignal }): Promise<AsyncIterable<ChatCompletionChunk> & { finalChatCompletion(): Promise<ChatCompletion> }>;
  };
}
export interface Completions {
  create(request: OpenAiOptions & { prompt: string; stream?: false }, options?: { signal?: AbortSignal }): Promise<Completion>;
  create(request: OpenAiOptions & { prompt: string; stream: true }, options?: { signal?: AbortSignal }): Promise<AsyncIterable<Completion> & { finalCompletion(): Promise<Completion> }>;
}
export interface GenerateResult { prompt_tokens: number[]; tokens: number[]; text: string; stats: Stats }
export interface LogitLens { prompt_tokens: number[]; exits: { layer: number; top: [number, number, string][] }[] }
"#;

/// Load options as JavaScript passes them (the progress callback is read separately).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
struct JsLoadOptions {
    max_context: Option<usize>,
    quantize: Option<Quantization>,
    kv_cache: Option<KvFormat>,
    activations: Option<Activations>,
    device: Option<JsDevice>,
    draft_vocab: Option<usize>,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum JsDevice {
    #[default]
    Auto,
    Gpu,
    Cpu,
}

/// Plain data from a JS options object: the named callback fields are left out, and numbers that
/// JSON cannot carry (NaN, Infinity) are refused by name rather than turned into null.
fn parse<T: for<'de> Deserialize<'de> + Default>(
    options: &JsValue,
    callbacks: &[&str],
) -> Result<T, JsValue> {
    if options.is_undefined() || options.is_null() {
        return Ok(T::default());
    }
    let text = plain_json(options, callbacks)?;
    serde_json::from_str(&text).map_err(|e| error(format!("invalid options: {e}")))
}

/// A JS object as JSON, without the named callback fields; non-finite numbers are refused by name.
fn plain_json(options: &JsValue, callbacks: &[&str]) -> Result<String, JsValue> {
    if !options.is_object() {
        return Err(error("options must be an object"));
    }
    let data = js_sys::Object::new();
    let object: &js_sys::Object = options.unchecked_ref();
    for key in js_sys::Object::keys(object).iter() {
        let Some(name) = key.as_string() else {
            continue;
        };
        if callbacks.contains(&name.as_str()) {
            continue;
        }
        let value = js_sys::Reflect::get(options, &key)?;
        if let Some(x) = value.as_f64() {
            if !x.is_finite() {
                return Err(error(format!(
                    "invalid options: `{name}` must be a finite number, got {x}"
                )));
            }
        }
        js_sys::Reflect::set(&data, &key, &value)?;
    }
    Ok(js_sys::JSON::stringify(&data)?.into())
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

/// The entry point of the OpenAI-shaped API: (endpoint, request, onChunk, signal) -> Promise.
type OpenAiRun = dyn FnMut(String, JsValue, JsValue, JsValue) -> js_sys::Promise;

/// A model loaded onto the browser's GPU, or its CPU.
#[wasm_bindgen]
pub struct LayerSkip {
    model: Rc<RefCell<Model>>,
    /// Panics seen before this model was made (see `guard`).
    panics: u32,
    /// `{chat: {completions: {create}}, completions: {create}}` (openai.js), over `run`, which
    /// lives as long as the model.
    api: JsValue,
    _run: Closure<OpenAiRun>,
}

/// The model for one request, or why it cannot serve one: a panic since it was made (`panics`
/// then) may have left it half-updated.
fn usable(model: &Rc<RefCell<Model>>, panics: u32) -> Result<Rc<RefCell<Model>>, JsValue> {
    if guard::panics() > panics {
        return Err(guard::unusable());
    }
    Ok(model.clone())
}

fn busy() -> JsValue {
    error("the model is busy with another request")
}

/// Ids of OpenAI-shaped results.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// One OpenAI-shaped request: LayerSkip's fields default as in `generate`, OpenAI's as OpenAI's.
// The model stays borrowed across awaits on purpose: it is taken with try_borrow_mut, so a
// second concurrent request is refused as busy instead of panicking.
#[allow(clippy::await_holding_refcell_ref)]
async fn openai_request(
    model: Result<Rc<RefCell<Model>>, JsValue>,
    endpoint: String,
    request: JsValue,
    on_chunk: JsValue,
    signal: JsValue,
) -> Result<JsValue, JsValue> {
    let model = model?;
    let endpoint = match endpoint.as_str() {
        "chat" => Endpoint::Chat,
        _ => Endpoint::Completions,
    };
    let request = OpenAiRequest::from_json(plain_json(&request, &[])?.as_bytes()).map_err(error)?;
    let base = GenerateRequest::default();
    request.validate(endpoint, &base).map_err(error)?;
    let mut model = model.try_borrow_mut().map_err(|_| busy())?;
    // 2^53: every integer below it is exact in a JavaScript number.
    let seed = (js_sys::Math::random() * 9_007_199_254_740_992.0) as u64;
    let reply = Reply::new(
        &request,
        endpoint,
        SEQUENCE.fetch_add(1, Ordering::Relaxed),
        request.model.as_deref().unwrap_or("layerskip"),
    );
    let on_chunk = js_sys::Function::from(on_chunk);
    let streamed = reply.stream.is_some() && on_chunk.is_function();
    let send = |chunk: serde_json::Value| {
        if let Ok(chunk) = to_js(&chunk) {
            let _ = on_chunk.call1(&JsValue::NULL, &chunk);
        }
    };
    let completion = request
        .complete(
            &mut model,
            &base,
            seed,
            || {
                if let Some(opening) = reply.opening_chunk().filter(|_| streamed) {
                    send(opening);
                }
                true
            },
            |text, kind| {
                if streamed {
                    send(reply.text_chunk(text, kind));
                }
            },
            || field(&signal, "aborted") != JsValue::TRUE,
        )
        .await
        .map_err(error)?;
    if streamed {
        reply.closing_chunks(&completion).into_iter().for_each(send);
    }
    to_js(&reply.result(&completion))
}

async fn load(files: BlobFiles, options: JsValue) -> Result<LayerSkip, JsValue> {
    let parsed: JsLoadOptions = parse(&options, &["onProgress"])?;
    let on_progress = js_sys::Function::from(field(&options, "onProgress"));
    let has_progress = on_progress.is_function();
    let defaults = EngineOptions::default();
    let device = parsed.device.unwrap_or_default();
    let options = LoadOptions {
        device: match device {
            JsDevice::Auto => Device::Auto {
                gpu: GpuOptions::default(),
                threads: None,
            },
            JsDevice::Gpu => Device::Gpu(GpuOptions::default()),
            JsDevice::Cpu => Device::Cpu { threads: None },
        },
        engine: EngineOptions {
            max_context: parsed.max_context.unwrap_or(defaults.max_context),
            quantize: parsed.quantize,
            kv_cache: parsed.kv_cache.unwrap_or(defaults.kv_cache),
            activations: parsed.activations.unwrap_or(defaults.activations),
            ..defaults
        },
        draft_vocab: parsed.draft_vocab,
    };
    let panics = guard::panics();
    let model = Model::load(&files, &options, |p| {
        if has_progress {
            let _ = on_progress.call3(
                &JsValue::NULL,
                &"upload".into(),
                &(p.done as f64).into(),
                &(p.total as f64).into(),
            );
        }
    })
    .await
    .map_err(|e| match e {
        crate::Error::NoAdapter(_) => error(
            "WebGPU is not available in this browser (no GPU adapter); try a current Chrome, Edge or Safari, or { device: 'cpu' }",
        ),
        e => error(e),
    })?;
    let model = Rc::new(RefCell::new(model));
    let run = {
        let model = model.clone();
        Closure::<OpenAiRun>::new(move |endpoint, request, on_chunk, signal| {
            let model = usable(&model, panics);
            guarded(openai_request(model, endpoint, request, on_chunk, signal))
        })
    };
    Ok(LayerSkip {
        api: open_ai_api(run.as_ref().unchecked_ref()),
        _run: run,
        model,
        panics,
    })
}

impl LayerSkip {
    fn model(&self) -> Result<Rc<RefCell<Model>>, JsValue> {
        usable(&self.model, self.panics)
    }
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
        guarded(async move {
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
        guarded(async move {
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
        let model = self.model();
        guarded(async move {
            let model = model?;
            let request: GenerateRequest = parse(&options, &["onToken", "signal"])?;
            let on_token = js_sys::Function::from(field(&options, "onToken"));
            let signal = field(&options, "signal");
            let mut model = model.try_borrow_mut().map_err(|_| busy())?;
            let completion = model
                .generate(&prompt, &request, |s| {
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
            to_js(&json!(completion))
        })
    }

    /// The logit lens: the exit head's top `top` tokens (default 5) at the last prompt position
    /// after every layer.
    // The model stays borrowed across awaits on purpose: it is taken with try_borrow_mut, so a
    // second concurrent request is refused as busy instead of panicking.
    #[allow(clippy::await_holding_refcell_ref)]
    #[wasm_bindgen(unchecked_return_type = "Promise<LogitLens>")]
    pub fn logits(&self, prompt: String, top: Option<usize>) -> js_sys::Promise {
        let model = self.model();
        guarded(async move {
            let model = model?;
            let mut model = model.try_borrow_mut().map_err(|_| busy())?;
            let lens = model
                .lens(&prompt, Some(top.unwrap_or(DEFAULT_LENS_TOP)))
                .await
                .map_err(error)?;
            to_js(&json!(lens))
        })
    }

    /// OpenAI's chat API: `chat.completions.create({messages, stream, ...})` resolves with a
    /// chat.completion or, with `stream: true`, an async iterable of chat.completion.chunk
    /// objects; an AbortSignal (`create(request, {signal})`) ends it with finish_reason "abort".
    #[wasm_bindgen(getter, unchecked_return_type = "Chat")]
    pub fn chat(&self) -> JsValue {
        js_sys::Reflect::get(&self.api, &"chat".into()).unwrap_or(JsValue::UNDEFINED)
    }

    /// OpenAI's completions API for raw prompts: `completions.create({prompt, stream, ...})`.
    #[wasm_bindgen(getter, unchecked_return_type = "Completions")]
    pub fn completions(&self) -> JsValue {
        js_sys::Reflect::get(&self.api, &"completions".into()).unwrap_or(JsValue::UNDEFINED)
    }

    /// The model summary, where it runs and why (`backend`, `backend_reason`, adapter and limits),
    /// its memory plan, and `wasm_memory_bytes`: the size of this module's memory now.
    pub fn info(&self) -> Result<JsValue, JsValue> {
        let model = self.model()?;
        let model = model.try_borrow().map_err(|_| busy())?;
        let mut info = json!(model.info());
        let memory: js_sys::WebAssembly::Memory = wasm_bindgen::memory().unchecked_into();
        let buffer: js_sys::ArrayBuffer = memory.buffer().unchecked_into();
        info["wasm_memory_bytes"] = json!(buffer.byte_length());
        to_js(&info)
    }
}
