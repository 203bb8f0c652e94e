//! One constructor per GPU op. Each says which shader runs, the defines that shape it, the
//! buffers it binds (in binding order, with how each is accessed) and the grid it dispatches, so
//! a kernel's contract is written once: the model builds its layers from these and the kernel
//! tests run the very same kernels against the CPU.
//!
//! A new kernel: its `.wgsl` in shaders/ (found by name, see build.rs), a `Shader` variant, and a
//! constructor here.

use super::context::MatvecShape;
use super::kernels::{Access, Defines, Flag, Grid, Kernel, Shader};
use super::tensor::Block;
use crate::config::Config;
use crate::format::{groups, KvFormat};

/// Rows of token embeddings gathered from a block of the embedding matrix (rows of `hidden`):
/// token ids in, hidden rows out. Rows outside the block are left to the block that has them.
pub fn embed(hidden: usize, block: &Block) -> Kernel {
    Kernel {
        shader: Shader::Embed,
        defines: weights(block, hidden).u32("H", hidden),
        buffers: vec![Access::Read, Access::Write],
        grid: Grid::Threads(groups(hidden) as u32),
    }
}

/// RMS norm of each row from the step's `row0`: rows in, the norm's weight, rows out.
pub fn rms_norm(hidden: usize, eps: f32) -> Kernel {
    Kernel {
        shader: Shader::RmsNorm,
        defines: Defines::new().u32("H", hidden).f32("EPS", eps),
        buffers: vec![Access::Read, Access::Read, Access::Write],
        grid: Grid::PerToken(1),
    }
}

/// The shape of attention as the kernels see it: heads, their size, and the KV cache's format.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Attention {
    pub head_dim: usize,
    pub query_heads: usize,
    pub kv_heads: usize,
    pub kv: KvFormat,
}

impl Attention {
    pub fn of(config: &Config, kv: KvFormat) -> Self {
        Self {
            head_dim: config.head_dim,
            query_heads: config.num_attention_heads,
            kv_heads: config.num_key_value_heads,
            kv,
        }
    }

    /// Width of a q|k|v row.
    pub fn qkv_dim(&self) -> usize {
        (self.query_heads + 2 * self.kv_heads) * self.head_dim
    }

    fn defines(&self) -> Defines {
        Defines::new()
            .u32("HD", self.head_dim)
            .u32("NH", self.query_heads)
            .u32("NKV", self.kv_heads)
            .u32("QKV", self.qkv_dim())
            .flag_if(Flag::KvF16, self.kv == KvFormat::F16)
    }

    /// Output dimensions each invocation of the attention kernel handles (64 invocations a head).
    fn dims_per_thread(&self) -> usize {
        self.head_dim.div_ceil(64)
    }
}

/// Attention split over ranges of `chunk` keys, at most `splits` of them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Split {
    pub chunk: usize,
    pub splits: usize,
}

/// Rotary embedding of the block's queries and keys in place, keys and values stored into the
/// cache at their positions: q|k|v rows, the cos/sin table, the key cache, the value cache.
pub fn rope(a: &Attention) -> Kernel {
    Kernel {
        shader: Shader::Rope,
        defines: a.defines(),
        buffers: vec![Access::Write, Access::Read, Access::Write, Access::Write],
        grid: Grid::Threads(((a.query_heads + a.kv_heads) * a.head_dim / 2) as u32),
    }
}

/// Causal attention of the block's queries over the cache: q|k|v rows, keys, values, output.
pub fn attention(a: &Attention) -> Kernel {
    Kernel {
        shader: Shader::Attention,
        defines: a.defines().u32("DPT", a.dims_per_thread()),
        buffers: vec![Access::Read, Access::Read, Access::Read, Access::Write],
        grid: Grid::PerToken(a.query_heads as u32),
    }
}

/// Attention over one range of keys per workgroup, into partial results (output, maximum and
/// normaliser per range): q|k|v rows, keys, values, partial results.
pub fn attention_split(a: &Attention, s: Split) -> Kernel {
    Kernel {
        shader: Shader::Attention,
        defines: split_defines(a, s)
            .u32("DPT", a.dims_per_thread())
            .flag(Flag::Split),
        buffers: vec![Access::Read, Access::Read, Access::Read, Access::Write],
        grid: Grid::Splits {
            heads: a.query_heads as u32,
            chunk: s.chunk as u32,
        },
    }
}

/// The partial results of split attention merged: partial results in, output rows out.
pub fn attention_merge(a: &Attention, s: Split) -> Kernel {
    Kernel {
        shader: Shader::AttentionMerge,
        defines: split_defines(a, s),
        buffers: vec![Access::Read, Access::Write],
        grid: Grid::PerToken(a.query_heads as u32),
    }
}

fn split_defines(a: &Attention, s: Split) -> Defines {
    a.defines().u32("CHUNK", s.chunk).u32("SPLITS", s.splits)
}

/// Which kernel multiplies a matrix by a block of rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Product {
    /// The mat-vec kernel (bound by weight reads): small blocks, in the adapter's shape.
    Matvec {
        workgroup_size: u32,
        shape: MatvecShape,
    },
    /// The tiled kernel (bound by arithmetic): prompt chunks.
    Gemm,
}

/// What a product does around the multiplication.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Variant {
    /// Input rows are [gate | up]; the product reads silu(gate) * up.
    pub swiglu: bool,
    /// Add into the output (a residual) instead of storing.
    pub accumulate: bool,
}

/// One row block of a `cols`-wide matrix times a block of rows, into output rows `out_width`
/// wide (the block's rows at their own offsets): input rows, output rows.
pub fn product(
    kernel: Product,
    variant: Variant,
    cols: usize,
    out_width: usize,
    block: &Block,
) -> Kernel {
    let defines = weights(block, cols)
        .u32("K", cols)
        .u32("N", out_width)
        .flag_if(Flag::Swiglu, variant.swiglu)
        .flag_if(Flag::Accumulate, variant.accumulate)
        .flag_if(Flag::XVec4, cols.is_multiple_of(4));
    let (shader, defines, grid) = match kernel {
        Product::Matvec {
            workgroup_size,
            shape,
        } => (
            Shader::Matvec,
            defines
                .u32("WG", workgroup_size as usize)
                .u32("RPW", shape.rows_per_workgroup as usize)
                .flag_if(Flag::Subgroups, shape.subgroups),
            Grid::Rows {
                rows: block.rows as u32,
                per: shape.rows_per_workgroup,
            },
        ),
        Product::Gemm => (
            Shader::Gemm,
            defines,
            Grid::Tiles {
                rows: block.rows as u32,
            },
        ),
    };
    Kernel {
        shader,
        defines,
        buffers: vec![Access::Read, Access::Write],
        grid,
    }
}

/// A greedy pick per row of `width` logits: the argmax and the softmax normaliser, written from
/// the step's `out0`; with `map_ids`, index i stands for the token in a third buffer's entry i.
pub fn argmax(width: usize, map_ids: bool) -> Kernel {
    let mut buffers = vec![Access::Read, Access::Write];
    if map_ids {
        buffers.push(Access::Read);
    }
    Kernel {
        shader: Shader::Argmax,
        defines: Defines::new()
            .u32("V", width)
            .flag_if(Flag::MapIds, map_ids),
        buffers,
        grid: Grid::PerToken(1),
    }
}

/// What every kernel reading a block of a `cols`-wide matrix needs: the format's include, the
/// groups per row, and the rows the block holds.
fn weights(block: &Block, cols: usize) -> Defines {
    Defines::new()
        .weights(block.format.shader_include())
        .u32("GROUPS", groups(cols))
        .u32("ROW0", block.row0)
        .u32("ROWS", block.rows)
}
