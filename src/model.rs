//! A loaded model: the engine on the chosen device, its tokenizer and its stop ids.

use crate::checkpoint::{Checkpoint, Files, Progress};
use crate::config::Config;
use crate::cpu::CpuModel;
use crate::engine::{Call, Counters, Engine, Output};
use crate::error::{Error, Result};
use crate::generate::{generate, Flow, GenerateOptions, Stats, TokenKind};
use crate::gpu::{GpuContext, GpuModel, GpuOptions};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// Where the model runs.
#[derive(Debug, Clone)]
pub enum Device {
    Gpu(GpuOptions),
    Cpu,
}

/// The GPU model or the CPU reference, behind one `Engine`.
pub enum AnyEngine {
    Gpu(Box<GpuModel>),
    Cpu(Box<CpuModel>),
}

impl Engine for AnyEngine {
    fn config(&self) -> &Config {
        match self {
            AnyEngine::Gpu(m) => m.config(),
            AnyEngine::Cpu(m) => m.config(),
        }
    }
    fn max_context(&self) -> usize {
        match self {
            AnyEngine::Gpu(m) => m.max_context(),
            AnyEngine::Cpu(m) => m.max_context(),
        }
    }
    fn max_rows(&self) -> usize {
        match self {
            AnyEngine::Gpu(m) => m.max_rows(),
            AnyEngine::Cpu(m) => m.max_rows(),
        }
    }
    fn counters(&self) -> Counters {
        match self {
            AnyEngine::Gpu(m) => m.counters(),
            AnyEngine::Cpu(m) => m.counters(),
        }
    }
    async fn run(&mut self, calls: &[Call<'_>]) -> Result<Vec<Output>> {
        match self {
            AnyEngine::Gpu(m) => m.run(calls).await,
            AnyEngine::Cpu(m) => m.run(calls).await,
        }
    }
}

pub struct Model {
    pub engine: AnyEngine,
    pub tokenizer: Tokenizer,
    /// End-of-sequence ids from config.json and generation_config.json.
    pub eos_token_ids: Vec<u32>,
    /// The checkpoint's suggested exit layer (generation_config.json `assistant_early_exit`).
    pub default_exit_layer: Option<usize>,
}

impl Model {
    /// The exit layer to use when the caller names none: the checkpoint's `assistant_early_exit`,
    /// else a quarter of the layers.
    pub fn exit_layer(&self, requested: Option<usize>) -> usize {
        let layers = self.engine.config().num_hidden_layers;
        requested
            .or(self.default_exit_layer)
            .unwrap_or((layers / 4).max(1))
    }

    pub async fn load(
        files: &impl Files,
        device: &Device,
        max_context: usize,
        progress: impl FnMut(Progress),
    ) -> Result<Self> {
        let checkpoint = Checkpoint::open(files).await?;
        let tokenizer_json = files
            .read("tokenizer.json")
            .await?
            .ok_or_else(|| Error::file("tokenizer.json", "missing"))?;
        let tokenizer = Tokenizer::from_bytes(&tokenizer_json)?;
        if tokenizer.vocab_size() > checkpoint.config.vocab_size {
            return Err(Error::Tokenizer(format!(
                "tokenizer has {} tokens but the model's vocab_size is {}",
                tokenizer.vocab_size(),
                checkpoint.config.vocab_size
            )));
        }
        let engine = match device {
            Device::Gpu(options) => {
                let ctx = GpuContext::new(options).await?;
                AnyEngine::Gpu(Box::new(
                    GpuModel::load(ctx, &checkpoint, files, max_context, progress).await?,
                ))
            }
            Device::Cpu => AnyEngine::Cpu(Box::new(
                CpuModel::load(&checkpoint, files, max_context, progress).await?,
            )),
        };
        Ok(Self {
            engine,
            tokenizer,
            eos_token_ids: checkpoint.eos_token_ids,
            default_exit_layer: checkpoint.default_exit_layer,
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

/// The result of [`Model::complete`].
#[derive(Debug, Clone)]
pub struct Completion {
    pub prompt_tokens: Vec<u32>,
    pub tokens: Vec<u32>,
    pub text: String,
    pub stats: Stats,
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
        mut on_token: impl FnMut(Streamed<'_>) -> bool,
    ) -> Result<Completion> {
        let prompt_tokens = self.tokenizer.encode(prompt)?;
        let mut options = options.clone();
        options.eos_token_ids.extend(&self.eos_token_ids);
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
                        return Flow::Stop("error");
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
                Flow::Stop("stop_string")
            } else if go_on {
                Flow::Continue
            } else {
                Flow::Stop("cancelled")
            }
        })
        .await?;
        if let Some(e) = failure {
            return Err(e);
        }
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

/// The largest char boundary of `s` at or before `i`.
fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
