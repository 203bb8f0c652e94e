//! layerskip: LayerSkip early-exit and self-speculative decoding for Llama checkpoints, with every
//! layer and the shared exit head in WGSL compute shaders on wgpu, natively and in the browser.

pub mod adaptive;
pub mod chat;
pub mod checkpoint;
pub mod clock;
pub mod config;
pub mod cpu;
pub mod engine;
pub mod error;
pub mod eval;
#[cfg(target_arch = "wasm32")]
pub mod event_loop;
pub mod files;
pub mod format;
pub mod generate;
pub mod gguf;
pub mod gpu;
pub mod header;
pub mod llama;
pub mod model;
pub mod openai;
pub mod penalty;
pub mod plan;
pub mod quantize;
pub mod request;
pub mod sampler;
pub mod tokenizer;
pub mod vocab;
#[cfg(target_arch = "wasm32")]
pub mod wasm;

pub use chat::{ChatTemplate, Message};
pub use config::Config;
pub use engine::{Activations, Backend, Call, Engine, EngineOptions, Head, Input, Output, Pick};
pub use error::{Error, Result};
#[cfg(not(target_arch = "wasm32"))]
pub use files::DirFiles;
pub use files::{Files, MemoryFiles};
pub use format::{Format, KvFormat, Quantization};
pub use generate::{
    generate, Flow, GenerateOptions, Generation, Stats, StopReason, Strategy, StrategyKind,
    TokenKind,
};
pub use model::{
    AnyEngine, Completion, Device, DeviceInfo, LensExit, LoadOptions, LogitLens, Model, ModelInfo,
    Streamed,
};
pub use penalty::Penalties;
pub use request::GenerateRequest;
pub use sampler::SamplingParams;
pub use tokenizer::{StreamDecoder, Tokenizer};
