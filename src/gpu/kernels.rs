//! WGSL kernels: a small preprocessor for variants (`#include "file"`, `#include WEIGHTS` for the
//! weight format's reader, `#ifdef FLAG`/`#ifndef`/`#else`/`#endif` over typed [`Flag`]s,
//! constants injected as a header), a pipeline cache keyed by (shader, defines, binding slots),
//! and `Op`, one recorded dispatch over buffers allocated once. Which kernel an op runs, with
//! what defines, buffers and grid, is written once per op in `ops.rs`. Weight matrices bring
//! their own bindings and include from their format (`tensor.rs`), so kernels read weights
//! through `w_group` whatever the format.

use super::tensor::{Block, Matrix};
use crate::engine::OpKind;
use crate::format::Packed;
use std::collections::HashMap;

/// The kernels, one per file in `shaders/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shader {
    Embed,
    RmsNorm,
    /// Matrix times a few rows (decode, verification).
    Matvec,
    /// Matrix times many rows, tiled (prompt chunks).
    Gemm,
    Rope,
    Attention,
    AttentionMerge,
    Argmax,
}

impl Shader {
    fn name(self) -> &'static str {
        match self {
            Shader::Embed => "embed.wgsl",
            Shader::RmsNorm => "rmsnorm.wgsl",
            Shader::Matvec => "matvec.wgsl",
            Shader::Gemm => "gemm.wgsl",
            Shader::Rope => "rope.wgsl",
            Shader::Attention => "attention.wgsl",
            Shader::AttentionMerge => "attention_merge.wgsl",
            Shader::Argmax => "argmax.wgsl",
        }
    }
}

include!(concat!(env!("OUT_DIR"), "/shaders.rs"));

fn source(name: &str) -> &'static str {
    SHADERS
        .iter()
        .find(|(file, _)| *file == name)
        .map(|(_, text)| *text)
        .unwrap_or_else(|| panic!("no shader named {name}"))
}

/// A switch in the shaders (`#ifdef NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flag {
    /// Products add into their output (a residual) instead of storing.
    Accumulate,
    /// Products read silu(gate) * up from [gate | up] input rows.
    Swiglu,
    /// Products load inputs 16 bytes at a time (K is a multiple of 4).
    XVec4,
    /// Mat-vec row sums by subgroup operations.
    Subgroups,
    /// The KV cache holds f16 pairs.
    KvF16,
    /// Attention over one range of keys, into partial results.
    Split,
    /// Argmax maps row indices to token ids (the draft head).
    MapIds,
}

impl Flag {
    pub const ALL: [Flag; 7] = [
        Flag::Accumulate,
        Flag::Swiglu,
        Flag::XVec4,
        Flag::Subgroups,
        Flag::KvF16,
        Flag::Split,
        Flag::MapIds,
    ];

    /// The name the shaders test with `#ifdef`.
    pub fn name(self) -> &'static str {
        match self {
            Flag::Accumulate => "ACCUMULATE",
            Flag::Swiglu => "SWIGLU",
            Flag::XVec4 => "X_VEC4",
            Flag::Subgroups => "SUBGROUPS",
            Flag::KvF16 => "KV_F16",
            Flag::Split => "SPLIT",
            Flag::MapIds => "MAP_IDS",
        }
    }

    fn named(name: &str) -> Option<Flag> {
        Flag::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// Compile-time parameters of one kernel variant: flags, constants injected as a header, and the
/// weight format's include. Part of the pipeline key, so it compares and hashes exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Defines {
    flags: Vec<Flag>,
    constants: Vec<(&'static str, Constant)>,
    /// The file `#include WEIGHTS` includes.
    weights: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Constant {
    U32(u32),
    /// An f32 by its bits, so that keys compare exactly.
    F32(u32),
}

impl Defines {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn flag(mut self, flag: Flag) -> Self {
        if !self.flags.contains(&flag) {
            self.flags.push(flag);
        }
        self
    }
    /// The flag when `on`.
    pub fn flag_if(self, flag: Flag, on: bool) -> Self {
        match on {
            true => self.flag(flag),
            false => self,
        }
    }
    pub fn u32(mut self, name: &'static str, value: usize) -> Self {
        let value = u32::try_from(value).expect("shader constant exceeds u32");
        self.constants.push((name, Constant::U32(value)));
        self
    }
    pub fn f32(mut self, name: &'static str, value: f32) -> Self {
        self.constants.push((name, Constant::F32(value.to_bits())));
        self
    }
    /// Makes `#include WEIGHTS` include `file` (a weight format's reader).
    pub fn weights(mut self, file: &'static str) -> Self {
        self.weights = Some(file);
        self
    }
    /// Whether `#ifdef name` holds. A name that is no [`Flag`] is a mistake in a shader.
    fn has(&self, file: &str, name: &str) -> bool {
        let flag = Flag::named(name)
            .unwrap_or_else(|| panic!("{file}: #ifdef {name} names no kernel flag"));
        self.flags.contains(&flag)
    }
    fn constant(&self, name: &str) -> bool {
        self.constants.iter().any(|(n, _)| *n == name)
    }
}

/// Workgroup size of the kernels that do not choose their own (`WG`).
pub const WORKGROUP: u32 = 64;

/// Expands one shader for a set of defines. `WG` is [`WORKGROUP`] unless the defines set it.
pub fn preprocess(shader: Shader, defines: &Defines) -> String {
    let mut out = String::new();
    if !defines.constant("WG") {
        out.push_str(&format!("const WG: u32 = {WORKGROUP}u;\n"));
    }
    for (name, value) in &defines.constants {
        match value {
            Constant::U32(v) => out.push_str(&format!("const {name}: u32 = {v}u;\n")),
            Constant::F32(bits) => out.push_str(&format!(
                "const {name}: f32 = {:e}f;\n",
                f32::from_bits(*bits)
            )),
        }
    }
    expand(shader.name(), defines, &mut out);
    out
}

fn expand(file: &str, defines: &Defines, out: &mut String) {
    // Each entry: (this branch is active, some enclosing branch is inactive).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let active = |stack: &[(bool, bool)]| stack.iter().all(|&(on, _)| on);
    for line in source(file).lines() {
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix("#ifdef ") {
            stack.push((defines.has(file, name.trim()), !active(&stack)));
        } else if let Some(name) = trimmed.strip_prefix("#ifndef ") {
            stack.push((!defines.has(file, name.trim()), !active(&stack)));
        } else if trimmed == "#else" {
            let top = stack
                .last_mut()
                .unwrap_or_else(|| panic!("{file}: #else without #ifdef"));
            top.0 = !top.0;
        } else if trimmed == "#endif" {
            stack
                .pop()
                .unwrap_or_else(|| panic!("{file}: #endif without #ifdef"));
        } else if !active(&stack) {
            continue;
        } else if let Some(name) = trimmed.strip_prefix("#include ") {
            let name = name.trim();
            let file = match (name.strip_prefix('"'), name) {
                (Some(quoted), _) => quoted.trim_end_matches('"'),
                (None, "WEIGHTS") => defines
                    .weights
                    .unwrap_or_else(|| panic!("{file}: #include WEIGHTS without a weight format")),
                (None, other) => panic!("{file}: #include {other} is neither a file nor WEIGHTS"),
            };
            expand(file, defines, out);
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(stack.is_empty(), "{file}: unterminated #ifdef");
}

/// How a kernel's buffer (bindings 1..) is accessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    Write,
}

/// How many workgroups an op dispatches for a block of `tokens` rows at position `pos0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Grid {
    /// One workgroup per `per` of `rows` (mat-vec: several weight rows per workgroup), whatever
    /// the block size, folded into 2D past the per-dimension limit.
    Rows { rows: u32, per: u32 },
    /// Tiles of 64 weight rows x 32 tokens (the tiled product), tokens in `workgroup_id.y`.
    Tiles { rows: u32 },
    /// This many workgroups per token, the token in `workgroup_id.y`.
    PerToken(u32),
    /// Per token, per head, and per range of `chunk` keys up to the block's last position (split
    /// attention), the range in `workgroup_id.z`.
    Splits { heads: u32, chunk: u32 },
    /// One invocation per (token, item), `items` per token, in [`WORKGROUP`]-wide workgroups.
    Threads(u32),
}

impl Grid {
    fn dims(self, tokens: u32, pos0: u32, max_dim: u32) -> (u32, u32, u32) {
        let fold = |n: u32| {
            if n <= max_dim {
                (n, 1, 1)
            } else {
                (max_dim, n.div_ceil(max_dim), 1)
            }
        };
        match self {
            Grid::Rows { rows, per } => fold(rows.div_ceil(per)),
            Grid::Tiles { rows } => (rows.div_ceil(64), tokens.div_ceil(32), 1),
            Grid::PerToken(x) => (x, tokens, 1),
            Grid::Splits { heads, chunk } => (heads, tokens, (pos0 + tokens).div_ceil(chunk)),
            Grid::Threads(items) => fold((tokens * items).div_ceil(WORKGROUP)),
        }
    }
}

/// One dispatch: a pipeline, its buffers, and how big a grid to launch.
pub struct Op {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    grid: Grid,
    kind: Option<OpKind>,
}

impl Op {
    /// The same op, labelled for the profile.
    pub fn labeled(self, kind: OpKind) -> Self {
        Op {
            kind: Some(kind),
            ..self
        }
    }

    pub fn kind(&self) -> Option<OpKind> {
        self.kind
    }

    /// Records the dispatch for a block of `tokens` rows at position `pos0` whose step
    /// parameters sit at `step_offset`.
    pub fn encode(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        step_offset: u32,
        tokens: u32,
        pos0: u32,
        max_dim: u32,
    ) {
        let (x, y, z) = self.grid.dims(tokens, pos0, max_dim);
        if x == 0 || y == 0 || z == 0 {
            return;
        }
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[step_offset]);
        pass.dispatch_workgroups(x, y, z);
    }
}

/// Byte stride between step-parameter slots (the minimum uniform offset alignment WebGPU allows).
pub const STEP_STRIDE: u64 = 256;
/// Bytes of `struct Step` in common.wgsl.
pub const STEP_SIZE: u64 = 32;

/// One kernel variant: the shader, its defines, how each buffer it binds from 1 up is accessed
/// (in binding order; a weight block's buffers come on top), and the grid it dispatches. Built by
/// the constructors in `ops.rs`.
#[derive(Debug, Clone, PartialEq)]
pub struct Kernel {
    pub shader: Shader,
    pub defines: Defines,
    pub buffers: Vec<Access>,
    pub grid: Grid,
}

/// What makes two pipelines the same: the shader, its defines and its binding slots.
#[derive(Debug, PartialEq, Eq, Hash)]
struct PipelineKey {
    shader: Shader,
    defines: Defines,
    slots: Vec<(u32, Access)>,
}

/// Builds ops, compiling each distinct kernel variant once.
pub struct Kernels {
    device: wgpu::Device,
    layouts: HashMap<Vec<(u32, Access)>, (wgpu::BindGroupLayout, wgpu::PipelineLayout)>,
    pipelines: HashMap<PipelineKey, wgpu::ComputePipeline>,
}

impl Kernels {
    pub fn new(device: &wgpu::Device) -> Self {
        Self {
            device: device.clone(),
            layouts: HashMap::new(),
            pipelines: HashMap::new(),
        }
    }

    fn layout(
        &mut self,
        slots: &[(u32, Access)],
    ) -> &(wgpu::BindGroupLayout, wgpu::PipelineLayout) {
        let device = &self.device;
        self.layouts.entry(slots.to_vec()).or_insert_with(|| {
            let mut entries = vec![wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: wgpu::BufferSize::new(STEP_SIZE),
                },
                count: None,
            }];
            for &(binding, access) in slots {
                entries.push(wgpu::BindGroupLayoutEntry {
                    binding,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage {
                            read_only: access == Access::Read,
                        },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                });
            }
            let bgl = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: None,
                entries: &entries,
            });
            let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: None,
                bind_group_layouts: &[Some(&bgl)],
                immediate_size: 0,
            });
            (bgl, pl)
        })
    }

    /// An op running `kernel` over `buffers` (bound from 1 up, one per access the kernel
    /// declares) and, for kernels that read a weight matrix, one of its blocks (bound where its
    /// format's include expects), with the step parameters in `step` at binding 0.
    pub fn op(
        &mut self,
        kernel: &Kernel,
        step: &wgpu::Buffer,
        buffers: &[&wgpu::Buffer],
        weights: Option<&Block>,
    ) -> Op {
        debug_assert_eq!(
            buffers.len(),
            kernel.buffers.len(),
            "{:?}: buffers bound vs declared",
            kernel.shader
        );
        let mut bound: Vec<(u32, Access, &wgpu::Buffer)> = kernel
            .buffers
            .iter()
            .zip(buffers)
            .enumerate()
            .map(|(i, (&access, &buffer))| (i as u32 + 1, access, buffer))
            .collect();
        if let Some(block) = weights {
            bound.extend(
                block
                    .bindings()
                    .into_iter()
                    .map(|(b, buf)| (b, Access::Read, buf)),
            );
        }
        let slots: Vec<(u32, Access)> = bound.iter().map(|&(b, a, _)| (b, a)).collect();
        let (bgl, pl) = self.layout(&slots).clone();
        let key = PipelineKey {
            shader: kernel.shader,
            defines: kernel.defines.clone(),
            slots,
        };
        let device = &self.device;
        let shader = kernel.shader;
        let pipeline = self
            .pipelines
            .entry(key)
            .or_insert_with(|| {
                let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(shader.name()),
                    source: wgpu::ShaderSource::Wgsl(preprocess(shader, &kernel.defines).into()),
                });
                device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(shader.name()),
                    layout: Some(&pl),
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: Default::default(),
                    cache: None,
                })
            })
            .clone();
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: step,
                offset: 0,
                size: wgpu::BufferSize::new(STEP_SIZE),
            }),
        }];
        for &(binding, _, buffer) in &bound {
            entries.push(wgpu::BindGroupEntry {
                binding,
                resource: buffer.as_entire_binding(),
            });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(shader.name()),
            layout: &bgl,
            entries: &entries,
        });
        Op {
            pipeline,
            bind_group,
            grid: kernel.grid,
            kind: None,
        }
    }
}

/// Runs single kernels over fresh copies of buffers and returns their contents afterwards, each
/// kernel variant compiled once: how each kernel is tested on its own against the CPU.
pub struct KernelRunner<'a> {
    ctx: &'a super::GpuContext,
    kernels: Kernels,
}

impl<'a> KernelRunner<'a> {
    pub fn new(ctx: &'a super::GpuContext) -> Self {
        Self {
            ctx,
            kernels: Kernels::new(&ctx.device),
        }
    }

    /// Runs `kernel` with `step` ([n_tokens, pos0, row0, tok0, out0]) over `buffers`.
    pub async fn run(
        &mut self,
        kernel: &Kernel,
        step: [u32; 5],
        buffers: &[&[u8]],
    ) -> crate::error::Result<Vec<Vec<u8>>> {
        self.dispatch(vec![(kernel.clone(), None)], step, buffers)
            .await
    }

    /// Runs the kernel `kernel` builds for each row block of `matrix` (holding `packed`), one
    /// dispatch per block, over `buffers`.
    pub async fn run_matrix(
        &mut self,
        kernel: impl Fn(&Block) -> Kernel,
        step: [u32; 5],
        buffers: &[&[u8]],
        matrix: &Matrix,
        packed: &Packed,
    ) -> crate::error::Result<Vec<Vec<u8>>> {
        matrix.write_rows(&self.ctx.queue, 0, packed);
        let kernels = (matrix.blocks.iter())
            .map(|b| (kernel(b), Some(b)))
            .collect();
        self.dispatch(kernels, step, buffers).await
    }

    /// One dispatch per kernel (with the weight block it reads, if any), in order, over fresh
    /// copies of `buffers`; their contents afterwards.
    async fn dispatch(
        &mut self,
        kernels: Vec<(Kernel, Option<&Block>)>,
        step: [u32; 5],
        buffers: &[&[u8]],
    ) -> crate::error::Result<Vec<Vec<u8>>> {
        let ctx = self.ctx;
        let step_buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("step"),
            size: STEP_STRIDE,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ctx.queue
            .write_buffer(&step_buffer, 0, bytemuck::cast_slice(&step));
        let gpu: Vec<wgpu::Buffer> = buffers
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                // Test buffers ignore a simulated binding limit, which is for the weights.
                let b = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&format!("binding {}", i + 1)),
                    size: (bytes.len() as u64).max(4).next_multiple_of(4),
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_DST
                        | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                });
                ctx.queue.write_buffer(&b, 0, bytes);
                b
            })
            .collect();
        let bound: Vec<&wgpu::Buffer> = gpu.iter().collect();
        let ops: Vec<Op> = kernels
            .iter()
            .map(|(kernel, block)| self.kernels.op(kernel, &step_buffer, &bound, *block))
            .collect();
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            for op in &ops {
                op.encode(
                    &mut pass,
                    0,
                    step[0],
                    step[1],
                    ctx.limits.max_compute_workgroups_per_dimension,
                );
            }
        }
        let reads: Vec<(&wgpu::Buffer, u64, u64)> = gpu
            .iter()
            .zip(buffers)
            .map(|(b, bytes)| (b, 0, bytes.len() as u64))
            .collect();
        ctx.read(encoder, &reads).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preprocessor_selects_variants_and_injects_constants() {
        let src = preprocess(
            Shader::Matvec,
            &Defines::new()
                .u32("K", 8)
                .u32("ROWS", 3)
                .u32("ROW0", 0)
                .u32("N", 3)
                .u32("GROUPS", 1)
                .u32("WG", 256)
                .u32("RPW", 4)
                .weights("formats/bf16.wgsl")
                .flag(Flag::Swiglu),
        );
        assert!(src.starts_with("const K: u32 = 8u;\n"));
        assert!(
            src.contains("bitcast<f32>(v << 16u)"),
            "the bf16 include chosen by the WEIGHTS define"
        );
        assert!(!src.contains("unpack2x16float"), "no other format");
        assert!(src.contains("g / (1.0 + exp(-g)) * u"), "SWIGLU input");
        assert!(!src.contains("y[at] += "), "ACCUMULATE off");
        assert!(!src.contains('#'), "no directives left");
        assert!(src.contains("struct Step"), "common.wgsl included");
        let src = preprocess(Shader::RmsNorm, &Defines::new().f32("EPS", 1e-5));
        assert!(src.contains("const EPS: f32 = 1e-5f;\n"));
    }

    /// A misspelt `#ifdef` would silently compile a kernel without its variant.
    #[test]
    fn every_shader_switch_is_a_flag_and_every_flag_switches_something() {
        let mut used = vec![];
        for (file, text) in SHADERS {
            for line in text.lines().map(str::trim) {
                let Some(name) = line
                    .strip_prefix("#ifdef ")
                    .or_else(|| line.strip_prefix("#ifndef "))
                else {
                    continue;
                };
                let flag = Flag::named(name.trim())
                    .unwrap_or_else(|| panic!("{file}: #ifdef {name} names no Flag"));
                used.push(flag);
            }
        }
        for flag in Flag::ALL {
            assert!(used.contains(&flag), "{flag:?} is tested by no shader");
        }
    }

    #[test]
    fn grids_fold_past_the_dimension_limit() {
        let rows = |rows, per| Grid::Rows { rows, per };
        assert_eq!(rows(70000, 1).dims(3, 0, 65535), (65535, 2, 1));
        assert_eq!(rows(10, 4).dims(3, 0, 65535), (3, 1, 1));
        assert_eq!(Grid::Tiles { rows: 130 }.dims(33, 0, 65535), (3, 2, 1));
        assert_eq!(Grid::PerToken(4).dims(3, 0, 65535), (4, 3, 1));
        assert_eq!(
            Grid::Splits {
                heads: 8,
                chunk: 16
            }
            .dims(2, 31, 65535),
            (8, 2, 3)
        );
        assert_eq!(Grid::Threads(100).dims(3, 0, 65535), (5, 1, 1));
    }

    #[test]
    fn workgroup_size_is_defined_once() {
        let src = preprocess(
            Shader::Matvec,
            &Defines::new()
                .u32("K", 8)
                .u32("GROUPS", 1)
                .u32("WG", 256)
                .u32("RPW", 4)
                .weights("formats/f32.wgsl")
                .flag(Flag::Subgroups),
        );
        assert_eq!(src.matches("const WG").count(), 1, "WG once, as defined");
        assert!(src.contains("subgroupAdd"));
        let src = preprocess(
            Shader::RmsNorm,
            &Defines::new().u32("H", 8).f32("EPS", 1e-5),
        );
        assert!(src.starts_with("const WG: u32 = 64u;\n"), "the default");
    }
}
