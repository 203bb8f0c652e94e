//! A loaded model: the engine on the chosen device, its tokenizer and its stop ids.

use crate::chat::{self, ChatTemplate, Message};
use crate::checkpoint::{read_text, Checkpoint, Progress};
use crate::config::Config;
use crate::cpu::{CpuModel, Fast, Reference};
use crate::engine::{Backend, Call, Counters, Engine, EngineOptions, Head, Input, OpKind, Output};
use crate::error::{Error, Result};
use crate::files::{Files, MAX_JSON_BYTES, MAX_TOKENIZER_BYTES};
use crate::generate::{generate, Flow, GenerateOptions, Generation, Stats, StopReason, TokenKind};
use crate::gpu::{GpuContext, GpuModel, GpuOptions};
use crate::llama::LoadReport;
use crate::plan::MemoryPlan;
use crate::request::GenerateRequest;
use crate::tokenizer::{StreamDecoder, Tokenizer};
use crate::vocab;
use serde::Serialize;

/// Where the model runs.
#[derive(Debug, Clone)]
pub enum Device {
    /// A hardware GPU when there is one, else the CPU backend. A software adapter (llvmpipe,
    /// SwiftShader, WARP) counts as none: the CPU backend is many times faster than it.
    Auto {
        gpu: GpuOptions,
        threads: Option<usize>,
    },
    /// WGSL on wgpu, whatever the adapter.
    Gpu(GpuOptions),
    /// The fast CPU backend on `threads` threads (default: every core).
    Cpu { threads: Option<usize> },
    /// The plain f32 reference, the oracle the kernels are tested against.
    CpuReference,
}

impl Default for Device {
    fn default() -> Self {
        Device::Auto {
            gpu: GpuOptions::default(),
            threads: None,
        }
    }
}

/// Whether wgpu's adapter is a software rasterizer rather than a GPU.
fn is_software(info: &wgpu::AdapterInfo) -> bool {
    let name = info.name.to_lowercase();
    info.device_type == wgpu::DeviceType::Cpu
        || ["llvmpipe", "lavapipe", "swiftshader", "warp", "softpipe"]
            .iter()
            .any(|s| name.contains(s))
}

/// How to load a model: where, with what context, in which weight and KV formats.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub device: Device,
    /// Context, weight and KV formats, loader memory: what the engine is built with.
    pub engine: EngineOptions,
    /// Draft with a reduced exit head over this many of the most frequent token ids
    /// (`token_frequencies.json` next to the model, else BPE merge order; see `vocab.rs`).
    pub draft_vocab: Option<usize>,
}

impl LoadOptions {
    pub fn on(device: Device) -> Self {
        Self {
            device,
            ..Self::default()
        }
    }
}

/// The GPU model, the fast CPU backend or the CPU reference, behind one `Engine`.
pub enum AnyEngine {
    Gpu(Box<GpuModel>),
    Cpu(Box<CpuModel<Fast>>),
    CpuReference(Box<CpuModel<Reference>>),
}

/// `$body` with `$m` bound to whichever engine this is.
macro_rules! each {
    ($engine:expr, $m:ident => $body:expr) => {
        match $engine {
            AnyEngine::Gpu($m) => $body,
            AnyEngine::Cpu($m) => $body,
            AnyEngine::CpuReference($m) => $body,
        }
    };
}

impl Engine for AnyEngine {
    fn config(&self) -> &Config {
        each!(self, m => m.config())
    }
    fn max_context(&self) -> usize {
        each!(self, m => m.max_context())
    }
    fn max_rows(&self) -> usize {
        each!(self, m => m.max_rows())
    }
    fn counters(&self) -> Counters {
        each!(self, m => m.counters())
    }
    fn backend(&self) -> Backend {
        each!(self, m => m.backend())
    }
    fn draft_vocab(&self) -> Option<&[u32]> {
        each!(self, m => m.draft_vocab())
    }
    async fn run(&mut self, calls: &[Call<'_>]) -> Result<Vec<Output>> {
        each!(self, m => m.run(calls).await)
    }
}

/// A model ready to generate. Front ends use its methods; `engine` is public for tests and
/// research code that drive the layer-range API directly.
pub struct Model {
    pub engine: AnyEngine,
    /// Why this backend: the adapter found, or why the CPU runs instead.
    backend_reason: String,
    pub tokenizer: Tokenizer,
    /// tokenizer_config.json's `chat_template`, if the checkpoint has one, or why it cannot be
    /// used: a template this runtime cannot read fails chat calls, not loading (raw prompts
    /// still work).
    chat_template: std::result::Result<Option<ChatTemplate>, String>,
    /// End-of-sequence ids from config.json and generation_config.json.
    pub eos_token_ids: Vec<u32>,
    /// The checkpoint's suggested exit layer (generation_config.json `assistant_early_exit`).
    checkpoint_exit_layer: Option<usize>,
    /// The ids whose KV entries the cache holds in every layer after the last generation, and
    /// the engine's counters then: a later run on the engine (a benchmark, the logit lens, a
    /// test driving it) changes them, and nothing is reused.
    kv_ids: Vec<u32>,
    kv_counters: Counters,
    /// What adaptive speculation learned on this engine, kept for later generations of the
    /// same kind (see [`learned_key`]).
    learned: Vec<(LearnedKey, crate::adaptive::Learned)>,
}

/// What `info` reports: the config summary, where the model runs and what it occupies.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub layers: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub tied_embeddings: bool,
    pub rope_theta: f64,
    pub rope_scaling: String,
    pub parameters: u64,
    pub dtype: Option<String>,
    pub eos_token_ids: Vec<u32>,
    pub default_exit_layer: usize,
    /// Token ids the draft head scores, when loaded with a draft vocabulary.
    pub draft_vocab: Option<usize>,
    pub max_context: usize,
    pub backend: Backend,
    /// Why this backend runs (the adapter found, or why the CPU runs instead).
    pub backend_reason: String,
    /// What the model occupies, by part (computed before loading).
    pub memory: MemoryPlan,
    /// The most host bytes the loader held at once while streaming weights.
    pub loader_peak_staging_bytes: u64,
    pub device: DeviceInfo,
}

/// The device side of [`ModelInfo`].
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "backend", rename_all = "snake_case")]
pub enum DeviceInfo {
    Gpu {
        adapter: String,
        vendor: u32,
        graphics_backend: String,
        device_type: String,
        driver: String,
        matrices: usize,
        row_blocks: usize,
        max_storage_buffer_binding_size: u64,
        max_buffer_size: u64,
        max_compute_workgroups_per_dimension: u32,
        max_compute_invocations_per_workgroup: u32,
    },
    Cpu {
        implementation: String,
    },
}

impl Model {
    pub fn config(&self) -> &Config {
        self.engine.config()
    }

    /// The exit layer used when a request names none: the checkpoint's `assistant_early_exit`,
    /// else a quarter of the layers.
    pub fn default_exit_layer(&self) -> usize {
        let layers = self.config().num_hidden_layers;
        self.checkpoint_exit_layer.unwrap_or((layers / 4).max(1))
    }

    /// Positions the KV cache holds: prompt and output together.
    pub fn max_context(&self) -> usize {
        self.engine.max_context()
    }

    /// The most drafts one self-speculative round can verify.
    pub fn max_draft_depth(&self) -> usize {
        self.engine.max_rows() - 1
    }

    /// A request resolved against this model (default exit layer, layer bounds).
    pub fn options(&self, request: &GenerateRequest) -> Result<GenerateOptions> {
        request.options(self.config().num_hidden_layers, self.default_exit_layer())
    }

    /// Generates after `prompt` as `request` says: the entry point of every front end.
    pub async fn generate(
        &mut self,
        prompt: &str,
        request: &GenerateRequest,
        on_token: impl FnMut(Streamed<'_>) -> bool,
    ) -> Result<Completion> {
        let options = self.options(request)?;
        self.complete(prompt, &options, &request.stop, on_token)
            .await
    }

    /// Answers a conversation: its messages rendered with the model's chat template, ending with
    /// the assistant's header, then generated after as `request` says.
    pub async fn chat(
        &mut self,
        messages: &[Message],
        request: &GenerateRequest,
        on_token: impl FnMut(Streamed<'_>) -> bool,
    ) -> Result<Completion> {
        let options = self.options(request)?;
        let prompt = self.chat_prompt(messages, true)?;
        self.complete_ids(prompt, &options, &request.stop, on_token)
            .await
    }

    /// The model's chat template, or why there is none to use.
    pub fn chat_template(&self) -> Result<&ChatTemplate> {
        match &self.chat_template {
            Ok(Some(template)) => Ok(template),
            Ok(None) => Err(Error::file(
                chat::CONFIG_FILE,
                format!(
                    "the model has no `chat_template` (nor a {}): give it a raw prompt instead",
                    chat::JINJA_FILE
                ),
            )),
            Err(why) => Err(Error::Invalid(why.clone())),
        }
    }

    /// A conversation as prompt ids, rendered with the model's chat template (Hugging Face's
    /// `apply_chat_template(messages, add_generation_prompt=..., tokenize=True)`).
    pub fn chat_prompt(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let text =
            self.chat_template()?
                .render(messages, add_generation_prompt, &Default::default())?;
        self.tokenizer.encode_rendered(&text)
    }

    /// Generates after already tokenized `prompt` (benchmarks feed the same ids to every
    /// strategy). EOS ids come from `options` only.
    pub async fn generate_ids(
        &mut self,
        prompt: &[u32],
        options: &GenerateOptions,
    ) -> Result<Generation> {
        let options = self.with_learned(options);
        let g = generate(&mut self.engine, prompt, &options, |_, _| Flow::Continue).await?;
        self.keep_learned(&options, &g);
        Ok(g)
    }

    /// How many leading ids of `prompt` the KV cache still holds from the last generation (at
    /// most all but the last, which runs for the first pick); 0 when reuse is off or anything
    /// else ran on the engine since.
    fn reusable_prefix(&self, prompt: &[u32], options: &GenerateOptions) -> usize {
        if !options.reuse_prefix || self.engine.counters() != self.kv_counters {
            return 0;
        }
        let common = self
            .kv_ids
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        common.min(prompt.len().saturating_sub(1))
    }

    /// `options` with what earlier adaptive generations of the same kind learned, if anything,
    /// and whether the checkpoint says it was trained for early exit.
    fn with_learned(&self, options: &GenerateOptions) -> GenerateOptions {
        let key = learned_key(options);
        let kept = self.learned.iter().find(|(k, _)| *k == key);
        GenerateOptions {
            learned: options
                .learned
                .clone()
                .or_else(|| kept.map(|(_, l)| l.clone())),
            trained_for_early_exit: options.trained_for_early_exit
                || self.checkpoint_exit_layer.is_some(),
            ..options.clone()
        }
    }

    fn keep_learned(&mut self, options: &GenerateOptions, generation: &Generation) {
        if let Some(l) = &generation.learned {
            let key = learned_key(options);
            self.learned.retain(|(k, _)| *k != key);
            self.learned.push((key, l.clone()));
        }
    }

    /// Cross-entropy, perplexity and top-1 accuracy of the exit head after every layer on `text`,
    /// in windows of `window` predicted tokens (see `eval.rs`).
    pub async fn evaluate(
        &mut self,
        text: &str,
        window: usize,
        max_windows: Option<usize>,
        progress: impl FnMut(usize, usize),
    ) -> Result<crate::eval::Evaluation> {
        let ids = self.tokenizer.encode(text)?;
        crate::eval::evaluate(&mut self.engine, &ids, window, max_windows, progress).await
    }

    /// The logit lens: the exit head's logits at the last prompt position after every layer.
    /// Returns the prompt's ids and one row per layer.
    pub async fn logit_lens(&mut self, prompt: &str) -> Result<(Vec<u32>, Vec<Vec<f32>>)> {
        let ids = self.tokenizer.encode(prompt)?;
        if ids.is_empty() {
            return Err(Error::Invalid("the prompt encodes to no tokens".into()));
        }
        let layers = self.config().num_hidden_layers;
        let call = Call::new(Input::Tokens(&ids), 0, 0..layers).head(Head::Lens);
        let mut out = self.engine.run(&[call]).await?;
        Ok((ids, out.remove(0).logits))
    }

    /// The logit lens as every front end returns it: every logit per layer, or (`top`) the `top`
    /// largest with their token text.
    pub async fn lens(&mut self, prompt: &str, top: Option<usize>) -> Result<LogitLens> {
        let (prompt_tokens, rows) = self.logit_lens(prompt).await?;
        let exits = rows
            .into_iter()
            .enumerate()
            .map(|(l, logits)| match top {
                None => LensExit {
                    layer: l + 1,
                    logits: Some(logits),
                    top: None,
                },
                Some(k) => LensExit {
                    layer: l + 1,
                    logits: None,
                    top: Some(
                        crate::sampler::top_k(&logits, k)
                            .into_iter()
                            .map(|(id, logit)| {
                                (id as u32, logit, self.tokenizer.token_text(id as u32))
                            })
                            .collect(),
                    ),
                },
            })
            .collect();
        Ok(LogitLens {
            prompt_tokens,
            exits,
        })
    }

    pub fn plan(&self) -> &MemoryPlan {
        each!(&self.engine, m => m.plan())
    }

    pub fn load_report(&self) -> LoadReport {
        each!(&self.engine, m => m.load_report())
    }

    /// Starts timing every GPU dispatch (see [`GpuModel::start_profile`]).
    pub fn start_profile(&mut self) -> Result<()> {
        match &mut self.engine {
            AnyEngine::Gpu(m) => m.start_profile(),
            _ => Err(Error::Invalid(
                "--profile times GPU dispatches; this model runs on the CPU (try --device gpu)"
                    .into(),
            )),
        }
    }

    /// GPU milliseconds and dispatches per kind of op since [`Model::start_profile`].
    pub fn take_profile(&mut self) -> Vec<(Option<OpKind>, f64, u64)> {
        match &mut self.engine {
            AnyEngine::Gpu(m) => m.take_profile(),
            _ => vec![],
        }
    }

    /// Bytes one decode step reads per kind of op at `context` positions (GPU), or the weights
    /// and KV cache it reads in all (CPU backends, as one row each).
    pub fn decode_bytes(&self, context: usize) -> Vec<(Option<OpKind>, u64)> {
        match &self.engine {
            AnyEngine::Gpu(m) => m
                .decode_bytes(context)
                .into_iter()
                .map(|(k, b)| (Some(k), b))
                .collect(),
            _ => {
                let c = self.config();
                let kv = 2 * c.num_hidden_layers as u64 * context as u64 * c.kv_dim() as u64 * 4;
                vec![(None, self.plan().weights + kv)]
            }
        }
    }

    /// The backend and why it was chosen, as the first line of a run reports it.
    pub fn backend(&self) -> (Backend, &str) {
        (self.engine.backend(), &self.backend_reason)
    }

    pub fn info(&self) -> ModelInfo {
        let c = self.config();
        let device = match &self.engine {
            AnyEngine::Gpu(m) => {
                let ctx = m.context();
                let (matrices, row_blocks) = m.row_blocks();
                DeviceInfo::Gpu {
                    adapter: ctx.info.name.clone(),
                    vendor: ctx.info.vendor,
                    graphics_backend: format!("{:?}", ctx.info.backend),
                    device_type: format!("{:?}", ctx.info.device_type),
                    driver: ctx.info.driver_info.clone(),
                    matrices,
                    row_blocks,
                    max_storage_buffer_binding_size: ctx.limits.max_storage_buffer_binding_size,
                    max_buffer_size: ctx.limits.max_buffer_size,
                    max_compute_workgroups_per_dimension: ctx
                        .limits
                        .max_compute_workgroups_per_dimension,
                    max_compute_invocations_per_workgroup: ctx
                        .limits
                        .max_compute_invocations_per_workgroup,
                }
            }
            AnyEngine::Cpu(m) => DeviceInfo::Cpu {
                implementation: m.name(),
            },
            AnyEngine::CpuReference(m) => DeviceInfo::Cpu {
                implementation: m.name(),
            },
        };
        ModelInfo {
            layers: c.num_hidden_layers,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            vocab_size: c.vocab_size,
            max_position_embeddings: c.max_position_embeddings,
            tied_embeddings: c.tie_word_embeddings,
            rope_theta: c.rope_theta,
            rope_scaling: format!("{:?}", c.rope_scaling),
            parameters: c.parameter_count(),
            dtype: c.dtype.clone(),
            eos_token_ids: self.eos_token_ids.clone(),
            default_exit_layer: self.default_exit_layer(),
            draft_vocab: self.engine.draft_vocab().map(<[u32]>::len),
            max_context: self.max_context(),
            backend: self.engine.backend(),
            backend_reason: self.backend_reason.clone(),
            memory: self.plan().clone(),
            loader_peak_staging_bytes: self.load_report().peak_staging_bytes,
            device,
        }
    }

    pub async fn load(
        files: &impl Files,
        options: &LoadOptions,
        progress: impl FnMut(Progress),
    ) -> Result<Self> {
        let checkpoint = Checkpoint::open(files).await?;
        let (tokenizer_json, chat_template) = match &checkpoint.gguf {
            // A GGUF file carries its tokenizer and template in its metadata.
            Some(gguf) => (
                std::borrow::Cow::Borrowed(&gguf.tokenizer_json[..]),
                match &gguf.chat_template {
                    Some(source) => ChatTemplate::new(
                        source.clone(),
                        &format!("{} (tokenizer.chat_template)", gguf.file),
                        gguf.bos_token.clone(),
                        gguf.eos_token.clone(),
                    )
                    .map(Some)
                    .map_err(|e| e.to_string()),
                    None => Ok(None),
                },
            ),
            None => {
                let json = files
                    .read_capped("tokenizer.json", MAX_TOKENIZER_BYTES)
                    .await?
                    .ok_or_else(|| Error::file("tokenizer.json", "missing"))?;
                let config = files.read_capped(chat::CONFIG_FILE, MAX_JSON_BYTES).await?;
                let jinja = read_text(files, chat::JINJA_FILE).await?;
                let template =
                    ChatTemplate::from_config(config.as_deref(), jinja).map_err(|e| e.to_string());
                (json, template)
            }
        };
        let tokenizer = Tokenizer::from_bytes(&tokenizer_json)?;
        if tokenizer.vocab_size() > checkpoint.config.vocab_size {
            return Err(Error::Tokenizer(format!(
                "tokenizer has {} tokens but the model's vocab_size is {}",
                tokenizer.vocab_size(),
                checkpoint.config.vocab_size
            )));
        }
        let (ctx, threads, reason) = match &options.device {
            Device::Gpu(gpu) => {
                let ctx = GpuContext::new(gpu).await?;
                let reason = format!("--device gpu: {}", ctx.describe());
                (Some(ctx), None, reason)
            }
            Device::Auto { gpu, threads } => match GpuContext::new(gpu).await {
                Ok(ctx) if !is_software(&ctx.info) => {
                    let reason = format!("a hardware GPU: {}", ctx.describe());
                    (Some(ctx), None, reason)
                }
                Ok(ctx) => (
                    None,
                    *threads,
                    format!(
                        "the only GPU adapter, {}, is software rendering, slower than the CPU backend (--device gpu uses it anyway)",
                        ctx.describe()
                    ),
                ),
                Err(Error::NoAdapter(_)) => (None, *threads, "no GPU adapter was found".into()),
                Err(e) => (None, *threads, format!("the GPU could not be used ({e})")),
            },
            Device::Cpu { threads } => (None, *threads, "--device cpu".to_string()),
            Device::CpuReference => (None, None, "--device cpu-reference".to_string()),
        };
        let draft = match options.draft_vocab {
            None => None,
            Some(n) => Some(vocab::load(files, &tokenizer_json, n, &checkpoint).await?),
        };
        let draft = draft.as_deref();
        // What every engine is built with, whatever the device.
        let build_with = &options.engine;
        let engine = match (ctx, &options.device) {
            (Some(ctx), _) => AnyEngine::Gpu(Box::new(
                GpuModel::load(ctx, &checkpoint, files, build_with, draft, progress).await?,
            )),
            (None, Device::CpuReference) => AnyEngine::CpuReference(Box::new(
                CpuModel::load(
                    Reference::new(build_with.activations),
                    &checkpoint,
                    files,
                    build_with,
                    draft,
                    progress,
                )
                .await?,
            )),
            (None, _) => AnyEngine::Cpu(Box::new(
                CpuModel::load(
                    Fast::new(threads, build_with.activations)?,
                    &checkpoint,
                    files,
                    build_with,
                    draft,
                    progress,
                )
                .await?,
            )),
        };
        Ok(Self {
            engine,
            backend_reason: reason,
            tokenizer,
            chat_template,
            eos_token_ids: checkpoint.eos_token_ids,
            checkpoint_exit_layer: checkpoint.default_exit_layer,
            kv_ids: vec![],
            kv_counters: Counters::default(),
            learned: vec![],
        })
    }
}

/// A streamed piece of output: the token that completed it (`None` for the final flush of text
/// held back because it might have begun a stop string), how it was produced, and its text. The
/// text can be empty (a multi-byte character still incomplete, or text held back); for rejected
/// drafts it is the draft's own text, which is not part of the output.
#[derive(Debug, Clone)]
pub struct Streamed<'a> {
    pub token: Option<u32>,
    pub kind: TokenKind,
    pub text: &'a str,
}

/// The result of [`Model::complete`], as every front end returns it (`generate --json`, the
/// browser's `generate`).
#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    pub prompt_tokens: Vec<u32>,
    pub tokens: Vec<u32>,
    pub text: String,
    pub stats: Stats,
}

/// Top tokens per exit layer a front end shows when not told how many.
pub const DEFAULT_LENS_TOP: usize = 5;

/// The logit lens at the last prompt position (see [`Model::lens`]).
#[derive(Debug, Clone, Serialize)]
pub struct LogitLens {
    pub prompt_tokens: Vec<u32>,
    pub exits: Vec<LensExit>,
}

/// One exit layer of the lens (from 1): its logits, or its top tokens as [id, logit, text].
#[derive(Debug, Clone, Serialize)]
pub struct LensExit {
    pub layer: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logits: Option<Vec<f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top: Option<Vec<(u32, f32, String)>>,
}

/// Finds stop strings in streamed text, releasing only text that cannot be the start of one.
struct StopFinder<'a> {
    stop: &'a [String],
    text: String,
    released: usize,
}

impl StopFinder<'_> {
    /// Adds text; returns the text now safe to show and whether a stop string was reached (the
    /// text is then cut before it).
    fn push(&mut self, piece: &str) -> (String, bool) {
        let searched = self.released;
        self.text.push_str(piece);
        let longest = self.stop.iter().map(String::len).max().unwrap_or(0);
        let from = floor_boundary(&self.text, searched.saturating_sub(longest));
        let found = self
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        let (end, stopped) = match found {
            Some(at) => {
                self.text.truncate(at);
                (at, true)
            }
            // Hold back the longest tail that is a prefix of some stop string.
            None => {
                let held = (1..=longest.min(self.text.len()))
                    .filter(|&n| self.text.is_char_boundary(self.text.len() - n))
                    .filter(|&n| {
                        self.stop
                            .iter()
                            .any(|s| s.starts_with(&self.text[self.text.len() - n..]))
                    })
                    .max()
                    .unwrap_or(0);
                (self.text.len() - held, false)
            }
        };
        let out = self.text[self.released.min(end)..end].to_string();
        self.released = self.released.max(end);
        (out, stopped)
    }

    /// Text still held back at the end of generation.
    fn flush(&mut self) -> String {
        let out = self.text[self.released..].to_string();
        self.released = self.text.len();
        out
    }
}

impl Model {
    /// Generates a continuation of `prompt`: the one decoding loop behind the CLI and the browser.
    /// The model's EOS ids are added to `options.eos_token_ids`; generation also ends at the first
    /// of `stop` strings (the text is cut before it) or when `on_token` returns false (cancelled).
    pub async fn complete(
        &mut self,
        prompt: &str,
        options: &GenerateOptions,
        stop: &[String],
        on_token: impl FnMut(Streamed<'_>) -> bool,
    ) -> Result<Completion> {
        let prompt_tokens = self.tokenizer.encode(prompt)?;
        self.complete_ids(prompt_tokens, options, stop, on_token)
            .await
    }

    /// [`Model::complete`] after already tokenized `prompt_tokens`.
    pub async fn complete_ids(
        &mut self,
        prompt_tokens: Vec<u32>,
        options: &GenerateOptions,
        stop: &[String],
        mut on_token: impl FnMut(Streamed<'_>) -> bool,
    ) -> Result<Completion> {
        let mut options = self.with_learned(options);
        options.eos_token_ids.extend(&self.eos_token_ids);
        options.cached_prefix = self.reusable_prefix(&prompt_tokens, &options);
        // The cache is rewritten past the prefix from here on: only a finished generation says
        // what it holds.
        self.kv_ids.clear();
        let tokenizer = &self.tokenizer;
        let mut stream = StreamDecoder::new();
        let mut finder = StopFinder {
            stop,
            text: String::new(),
            released: 0,
        };
        let mut stopped = false;
        let mut failure = None;
        let generation = generate(&mut self.engine, &prompt_tokens, &options, |token, kind| {
            let piece = match kind {
                TokenKind::Rejected => {
                    on_token(Streamed {
                        token: Some(token),
                        kind,
                        text: &tokenizer.token_text(token),
                    });
                    return Flow::Continue;
                }
                _ => match stream.push(tokenizer, token) {
                    Ok(piece) => piece.unwrap_or_default(),
                    Err(e) => {
                        failure = Some(e);
                        return Flow::Stop(StopReason::Cancelled);
                    }
                },
            };
            let (text, found) = finder.push(&piece);
            let go_on = on_token(Streamed {
                token: Some(token),
                kind,
                text: &text,
            });
            if found {
                stopped = true;
                Flow::Stop(StopReason::StopString)
            } else if go_on {
                Flow::Continue
            } else {
                Flow::Stop(StopReason::Cancelled)
            }
        })
        .await?;
        if let Some(e) = failure {
            return Err(e);
        }
        self.kv_ids = prompt_tokens
            .iter()
            .chain(&generation.tokens)
            .take(generation.kv_valid)
            .copied()
            .collect();
        self.kv_counters = self.engine.counters();
        self.keep_learned(&options, &generation);
        if !stopped {
            // Text a stop string might have started, and a trailing partial character.
            let rest = stream.finish(&self.tokenizer)?;
            let (mut tail, found) = finder.push(&rest);
            match found {
                true => stopped = true,
                false => tail.push_str(&finder.flush()),
            }
            if !tail.is_empty() {
                on_token(Streamed {
                    token: None,
                    kind: TokenKind::Plain,
                    text: &tail,
                });
            }
        }
        let text = match stopped {
            true => finder.text,
            false => self.tokenizer.decode(&generation.tokens)?,
        };
        Ok(Completion {
            prompt_tokens,
            tokens: generation.tokens,
            text,
            stats: generation.stats,
        })
    }
}

/// Generations whose rounds cost and behave differently learn separately: drafting over the
/// draft vocabulary or the full head, and rounds that go back to the host after every draft
/// (sampling, a confidence cut-off) or not.
type LearnedKey = (bool, bool);

fn learned_key(options: &GenerateOptions) -> LearnedKey {
    (options.full_vocab_drafts, options.one_submit_rounds())
}

/// The largest char boundary of `s` at or before `i`.
fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
