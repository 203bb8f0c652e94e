//! A weight matrix on the GPU. Its format (f32, f16, bf16) lives here, so the model has one code
//! path for all of them: kernels pick the matching loader through a define. Half formats keep the
//! checkpoint's bytes as they are, two values per u32.
//!
//! A matrix larger than the device's storage binding limit is split into row blocks, each its own
//! buffer and dispatch: Llama-3.2's 128256 x 2048 lm_head (525 MB in f16) runs on a device with the
//! WebGPU default of 128 MiB per binding. Several checkpoint tensors can be stacked by rows into one
//! matrix (q|k|v, gate|up) so one dispatch serves them all.

use super::context::GpuContext;
use super::kernels::Defines;
use crate::checkpoint::DType;
use crate::error::{Error, Result};

pub struct Block {
    pub buffer: wgpu::Buffer,
    pub row0: usize,
    pub rows: usize,
}

pub struct Matrix {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub blocks: Vec<Block>,
}

impl Matrix {
    pub fn new(
        ctx: &GpuContext,
        name: &str,
        dtype: DType,
        rows: usize,
        cols: usize,
    ) -> Result<Self> {
        if !cols.is_multiple_of(2) {
            return Err(Error::Unsupported {
                field: "matrix width",
                value: format!("{name}: {cols}"),
                why: "weights are read two values at a time, so widths must be even",
            });
        }
        let row_bytes = (cols * dtype.size()) as u64;
        let per_block = (ctx.max_binding / row_bytes) as usize;
        if per_block == 0 {
            return Err(Error::Limit {
                name: format!("one row of {name}"),
                needed: row_bytes,
                limit: ctx.max_binding,
                limit_name: "max_storage_buffer_binding_size",
            });
        }
        let mut blocks = vec![];
        let mut row0 = 0;
        while row0 < rows {
            let n = per_block.min(rows - row0);
            let label = format!("{name}[{row0}..{}]", row0 + n);
            blocks.push(Block {
                buffer: ctx.storage(&label, n as u64 * row_bytes, wgpu::BufferUsages::empty())?,
                row0,
                rows: n,
            });
            row0 += n;
        }
        Ok(Self {
            dtype,
            rows,
            cols,
            blocks,
        })
    }

    fn row_bytes(&self) -> usize {
        self.cols * self.dtype.size()
    }

    /// Uploads whole rows (checkpoint bytes, little-endian) starting at row `row0`.
    pub fn write_rows(&self, queue: &wgpu::Queue, row0: usize, bytes: &[u8]) {
        let rb = self.row_bytes();
        let end = row0 + bytes.len() / rb;
        for b in &self.blocks {
            let (lo, hi) = (row0.max(b.row0), end.min(b.row0 + b.rows));
            if lo < hi {
                queue.write_buffer(
                    &b.buffer,
                    ((lo - b.row0) * rb) as u64,
                    &bytes[(lo - row0) * rb..(hi - row0) * rb],
                );
            }
        }
    }

    pub fn bytes(&self) -> u64 {
        (self.rows * self.row_bytes()) as u64
    }

    /// The define that selects this format's loader in `weights.wgsl`.
    pub fn format(&self, defines: Defines) -> Defines {
        defines.flag(match self.dtype {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
        })
    }
}
