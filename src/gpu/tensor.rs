//! A weight matrix on the GPU in its format (see `format.rs`): the format supplies the buffers
//! (data, and scales for quantized formats), the shader include that reads them and the define
//! that selects it, so the model has one code path for every format and the kernels never name
//! weight buffers themselves.
//!
//! A matrix larger than the device's storage binding limit is split into row blocks, each its own
//! buffers and dispatch: Llama-3.2's 128256 x 2048 lm_head (525 MB in f16) runs on a device with
//! the WebGPU default of 128 MiB per binding.

use super::context::GpuContext;
use crate::error::{Error, Result};
use crate::format::{Format, Layout, Packed};

/// Bindings a format's buffers take in every kernel that reads weights (shaders/formats/*.wgsl).
pub const DATA_BINDING: u32 = 8;
pub const SCALES_BINDING: u32 = 9;

pub struct Block {
    pub format: Format,
    pub data: wgpu::Buffer,
    pub scales: Option<wgpu::Buffer>,
    pub row0: usize,
    pub rows: usize,
}

impl Block {
    /// The block's buffers with the bindings the format's shader include declares.
    pub fn bindings(&self) -> Vec<(u32, &wgpu::Buffer)> {
        let mut out = vec![(DATA_BINDING, &self.data)];
        out.extend(self.scales.as_ref().map(|s| (SCALES_BINDING, s)));
        out
    }
}

pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub blocks: Vec<Block>,
    bytes: u64,
}

impl Matrix {
    /// Buffers for a matrix of this layout: a block per run of one format, split further where
    /// a run is larger than the storage binding limit.
    pub fn new(ctx: &GpuContext, name: &str, layout: &Layout) -> Result<Self> {
        let cols = layout.cols;
        let mut blocks = vec![];
        for run in &layout.runs {
            let format = run.format;
            let data_row = format.row_data_bytes(cols) as u64;
            let scale_row = format.row_scale_bytes(cols) as u64;
            let per_block = (ctx.max_binding / data_row.max(1)) as usize;
            if per_block == 0 {
                return Err(Error::Limit {
                    name: format!("one row of {name}"),
                    needed: data_row,
                    limit: ctx.max_binding,
                    limit_name: "max_storage_buffer_binding_size",
                });
            }
            let mut row0 = run.row0;
            while row0 < run.row0 + run.rows {
                let n = per_block.min(run.row0 + run.rows - row0);
                let label = format!("{name}[{row0}..{}]", row0 + n);
                let usage = wgpu::BufferUsages::empty();
                blocks.push(Block {
                    format,
                    data: ctx.storage(&label, n as u64 * data_row, usage)?,
                    scales: match format.quantized() {
                        true => Some(ctx.storage(
                            &format!("{label} scales"),
                            n as u64 * scale_row,
                            usage,
                        )?),
                        false => None,
                    },
                    row0,
                    rows: n,
                });
                row0 += n;
            }
        }
        Ok(Self {
            rows: layout.rows,
            cols,
            blocks,
            bytes: layout.bytes().unwrap_or(u64::MAX),
        })
    }

    /// Uploads packed rows starting at row `row0` (rows of one run, in its format).
    pub fn write_rows(&self, queue: &wgpu::Queue, row0: usize, rows: &Packed) {
        let Some(format) = self
            .blocks
            .iter()
            .find(|b| b.row0 + b.rows > row0)
            .map(|b| b.format)
        else {
            return;
        };
        let data_row = format.row_data_bytes(self.cols);
        let scale_row = format.row_scale_bytes(self.cols);
        let end = row0 + rows.data.len() / data_row.max(1);
        for b in &self.blocks {
            let (lo, hi) = (row0.max(b.row0), end.min(b.row0 + b.rows));
            if lo >= hi {
                continue;
            }
            queue.write_buffer(
                &b.data,
                ((lo - b.row0) * data_row) as u64,
                &rows.data[(lo - row0) * data_row..(hi - row0) * data_row],
            );
            if let Some(scales) = &b.scales {
                queue.write_buffer(
                    scales,
                    ((lo - b.row0) * scale_row) as u64,
                    &rows.scales[(lo - row0) * scale_row..(hi - row0) * scale_row],
                );
            }
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}
