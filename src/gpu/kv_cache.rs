//! Keys and values of every layer, on the GPU, for positions 0..capacity. The cache has no length
//! of its own: a call writes the positions it processes and attends to everything before them, so
//! rolling back rejected drafts is just the caller choosing an earlier position (no copies).

use super::context::GpuContext;
use crate::config::Config;
use crate::error::Result;
use crate::format::KvFormat;

pub struct KvCache {
    pub keys: Vec<wgpu::Buffer>,
    pub values: Vec<wgpu::Buffer>,
    pub capacity: usize,
}

impl KvCache {
    pub fn new(
        ctx: &GpuContext,
        config: &Config,
        capacity: usize,
        format: KvFormat,
    ) -> Result<Self> {
        let bytes = (capacity as u64)
            .checked_mul((config.kv_dim() * format.bytes_per_value()) as u64)
            .ok_or_else(|| crate::error::Error::Invalid("the KV cache size overflows".into()))?;
        let mut keys = vec![];
        let mut values = vec![];
        for l in 0..config.num_hidden_layers {
            keys.push(ctx.storage(&format!("k_cache[{l}]"), bytes, wgpu::BufferUsages::empty())?);
            values.push(ctx.storage(
                &format!("v_cache[{l}]"),
                bytes,
                wgpu::BufferUsages::empty(),
            )?);
        }
        Ok(Self {
            keys,
            values,
            capacity,
        })
    }

    pub fn bytes(&self) -> u64 {
        self.keys.iter().chain(&self.values).map(|b| b.size()).sum()
    }
}
