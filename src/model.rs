//! A loaded model: the engine on the chosen device, its tokenizer and its stop ids.

use crate::checkpoint::{Checkpoint, Files, Progress};
use crate::config::Config;
use crate::cpu::CpuModel;
use crate::engine::{Call, Counters, Engine, Output};
use crate::error::{Error, Result};
use crate::gpu::{GpuContext, GpuModel, GpuOptions};
use crate::tokenizer::Tokenizer;

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
}

impl Model {
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
        })
    }
}
