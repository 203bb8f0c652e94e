//! layerskip: LayerSkip early-exit and self-speculative decoding for Llama checkpoints, with every
//! layer and the shared exit head in WGSL compute shaders on wgpu, natively and in the browser.

pub mod checkpoint;
mod clock;
pub mod config;
pub mod cpu;
pub mod engine;
pub mod error;
pub mod generate;
pub mod gpu;
pub mod model;
pub mod sampler;
pub mod tokenizer;
#[cfg(target_arch = "wasm32")]
pub mod wasm;

#[cfg(not(target_arch = "wasm32"))]
pub use checkpoint::DirFiles;
pub use checkpoint::{Files, MemoryFiles};
pub use config::Config;
pub use engine::{Call, Engine, Head, Input, Output, Pick};
pub use error::{Error, Result};
pub use generate::{generate, Flow, GenerateOptions, Generation, Stats, Strategy, TokenKind};
pub use model::{AnyEngine, Completion, Device, Model, Streamed};
pub use sampler::SamplingParams;
pub use tokenizer::{StreamDecoder, Tokenizer};
