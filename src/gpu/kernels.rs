//! WGSL kernels: a small preprocessor for variants (`#include`, `#ifdef`/`#ifndef`/`#else`/`#endif`,
//! constants injected as a header), a pipeline cache keyed by (shader, defines, bindings), and `Op`,
//! one recorded dispatch over buffers allocated once.

use std::collections::HashMap;

/// The kernels, one per file in `shaders/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shader {
    Embed,
    RmsNorm,
    Matmul,
    Rope,
    Attention,
    Argmax,
}

impl Shader {
    fn name(self) -> &'static str {
        match self {
            Shader::Embed => "embed.wgsl",
            Shader::RmsNorm => "rmsnorm.wgsl",
            Shader::Matmul => "matmul.wgsl",
            Shader::Rope => "rope.wgsl",
            Shader::Attention => "attention.wgsl",
            Shader::Argmax => "argmax.wgsl",
        }
    }
}

fn source(name: &str) -> &'static str {
    match name {
        "common.wgsl" => include_str!("../../shaders/common.wgsl"),
        "weights.wgsl" => include_str!("../../shaders/weights.wgsl"),
        "reduce.wgsl" => include_str!("../../shaders/reduce.wgsl"),
        "embed.wgsl" => include_str!("../../shaders/embed.wgsl"),
        "rmsnorm.wgsl" => include_str!("../../shaders/rmsnorm.wgsl"),
        "matmul.wgsl" => include_str!("../../shaders/matmul.wgsl"),
        "rope.wgsl" => include_str!("../../shaders/rope.wgsl"),
        "attention.wgsl" => include_str!("../../shaders/attention.wgsl"),
        "argmax.wgsl" => include_str!("../../shaders/argmax.wgsl"),
        other => panic!("no shader named {other}"),
    }
}

/// Compile-time parameters of one kernel variant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Defines(Vec<(&'static str, Define)>);

#[derive(Debug, Clone, PartialEq)]
enum Define {
    Flag,
    U32(u32),
    F32(f32),
}

impl Defines {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn flag(mut self, name: &'static str) -> Self {
        self.0.push((name, Define::Flag));
        self
    }
    pub fn u32(mut self, name: &'static str, value: usize) -> Self {
        let value = u32::try_from(value).expect("shader constant exceeds u32");
        self.0.push((name, Define::U32(value)));
        self
    }
    pub fn f32(mut self, name: &'static str, value: f32) -> Self {
        self.0.push((name, Define::F32(value)));
        self
    }
    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| *n == name)
    }
    fn key(&self) -> String {
        self.0.iter().map(|(n, d)| format!("{n}={d:?};")).collect()
    }
}

/// Expands one shader for a set of defines.
pub fn preprocess(shader: Shader, defines: &Defines) -> String {
    let mut out = String::new();
    for (name, value) in &defines.0 {
        match value {
            Define::Flag => {}
            Define::U32(v) => out.push_str(&format!("const {name}: u32 = {v}u;\n")),
            Define::F32(v) => out.push_str(&format!("const {name}: f32 = {v:e}f;\n")),
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
            stack.push((defines.has(name.trim()), !active(&stack)));
        } else if let Some(name) = trimmed.strip_prefix("#ifndef ") {
            stack.push((!defines.has(name.trim()), !active(&stack)));
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
            expand(name.trim().trim_matches('"'), defines, out);
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

/// How many workgroups an op dispatches for a block of `tokens` rows.
#[derive(Debug, Clone, Copy)]
pub enum Grid {
    /// A fixed count of workgroups, whatever the block size (mat-vec: one per weight row).
    Fixed(u32),
    /// This many workgroups per token, the token in `workgroup_id.y`.
    PerToken(u32),
    /// One invocation per (token, item), `items` per token, in 64-wide workgroups.
    Threads(u32),
}

const WORKGROUP: u32 = 64;

impl Grid {
    fn dims(self, tokens: u32, max_dim: u32) -> (u32, u32) {
        let fold = |n: u32| {
            if n <= max_dim {
                (n, 1)
            } else {
                (max_dim, n.div_ceil(max_dim))
            }
        };
        match self {
            Grid::Fixed(n) => fold(n),
            Grid::PerToken(x) => (x, tokens),
            Grid::Threads(items) => fold((tokens * items).div_ceil(WORKGROUP)),
        }
    }
}

/// One dispatch: a pipeline, its buffers, and how big a grid to launch.
pub struct Op {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    grid: Grid,
}

impl Op {
    /// Records the dispatch for a block of `tokens` rows whose step parameters sit at `step_offset`.
    pub fn encode(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        step_offset: u32,
        tokens: u32,
        max_dim: u32,
    ) {
        let (x, y) = self.grid.dims(tokens, max_dim);
        if x == 0 || y == 0 {
            return;
        }
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[step_offset]);
        pass.dispatch_workgroups(x, y, 1);
    }
}

/// Byte stride between step-parameter slots (the minimum uniform offset alignment WebGPU allows).
pub const STEP_STRIDE: u64 = 256;
/// Bytes of `struct Step` in common.wgsl.
pub const STEP_SIZE: u64 = 32;

/// Builds ops, compiling each distinct kernel variant once.
pub struct Kernels {
    device: wgpu::Device,
    layouts: HashMap<Vec<Access>, (wgpu::BindGroupLayout, wgpu::PipelineLayout)>,
    pipelines: HashMap<String, wgpu::ComputePipeline>,
}

impl Kernels {
    pub fn new(device: &wgpu::Device) -> Self {
        Self {
            device: device.clone(),
            layouts: HashMap::new(),
            pipelines: HashMap::new(),
        }
    }

    fn layout(&mut self, access: &[Access]) -> &(wgpu::BindGroupLayout, wgpu::PipelineLayout) {
        let device = &self.device;
        self.layouts.entry(access.to_vec()).or_insert_with(|| {
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
            for (i, a) in access.iter().enumerate() {
                entries.push(wgpu::BindGroupLayoutEntry {
                    binding: i as u32 + 1,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage {
                            read_only: *a == Access::Read,
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

    /// An op running `shader` with `defines` over `buffers` (bound from 1 up), with the step
    /// parameters in `step` at binding 0.
    pub fn op(
        &mut self,
        shader: Shader,
        defines: &Defines,
        step: &wgpu::Buffer,
        buffers: &[(Access, &wgpu::Buffer)],
        grid: Grid,
    ) -> Op {
        let access: Vec<Access> = buffers.iter().map(|b| b.0).collect();
        let key = format!("{}|{}|{access:?}", shader.name(), defines.key());
        let (bgl, pl) = self.layout(&access).clone();
        let device = &self.device;
        let pipeline = self
            .pipelines
            .entry(key)
            .or_insert_with(|| {
                let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(shader.name()),
                    source: wgpu::ShaderSource::Wgsl(preprocess(shader, defines).into()),
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
        for (i, (_, buffer)) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
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
            grid,
        }
    }
}

/// Runs one kernel once over fresh copies of `buffers` and returns their contents afterwards.
/// This is how each kernel is tested on its own against the CPU implementation.
pub async fn run_once(
    ctx: &super::GpuContext,
    shader: Shader,
    defines: &Defines,
    step: [u32; 5],
    buffers: &[(Access, &[u8])],
    grid: Grid,
) -> crate::error::Result<Vec<Vec<u8>>> {
    let step_buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("step"),
        size: STEP_STRIDE,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    ctx.queue
        .write_buffer(&step_buffer, 0, bytemuck::cast_slice(&step));
    let mut gpu = vec![];
    for (i, (_, bytes)) in buffers.iter().enumerate() {
        let b = ctx.storage(
            &format!("binding {}", i + 1),
            bytes.len() as u64,
            wgpu::BufferUsages::COPY_SRC,
        )?;
        ctx.queue.write_buffer(&b, 0, bytes);
        gpu.push(b);
    }
    let bound: Vec<(Access, &wgpu::Buffer)> = buffers
        .iter()
        .zip(&gpu)
        .map(|((a, _), b)| (*a, b))
        .collect();
    let op = Kernels::new(&ctx.device).op(shader, defines, &step_buffer, &bound, grid);
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
        op.encode(
            &mut pass,
            0,
            step[0],
            ctx.limits.max_compute_workgroups_per_dimension,
        );
    }
    let reads: Vec<(&wgpu::Buffer, u64, u64)> = gpu
        .iter()
        .zip(buffers)
        .map(|(b, (_, bytes))| (b, 0, bytes.len() as u64))
        .collect();
    ctx.read(encoder, &reads).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preprocessor_selects_variants_and_injects_constants() {
        let src = preprocess(
            Shader::Matmul,
            &Defines::new()
                .u32("K", 8)
                .u32("ROWS", 3)
                .u32("ROW0", 0)
                .u32("N", 3)
                .flag("BF16")
                .flag("SWIGLU"),
        );
        assert!(src.starts_with("const K: u32 = 8u;\n"));
        assert!(
            src.contains("bitcast<f32>(v << 16u)"),
            "BF16 loader included"
        );
        assert!(!src.contains("unpack2x16float"), "F16 loader excluded");
        assert!(src.contains("g / (1.0 + exp(-g)) * u"), "SWIGLU input");
        assert!(!src.contains("y[at] += "), "ACCUMULATE off");
        assert!(!src.contains('#'), "no directives left");
        assert!(src.contains("struct Step"), "common.wgsl included");
        let src = preprocess(Shader::RmsNorm, &Defines::new().f32("EPS", 1e-5));
        assert!(src.starts_with("const EPS: f32 = 1e-5f;\n"));
    }

    #[test]
    fn grids_fold_past_the_dimension_limit() {
        assert_eq!(Grid::Fixed(70000).dims(3, 65535), (65535, 2));
        assert_eq!(Grid::Fixed(10).dims(3, 65535), (10, 1));
        assert_eq!(Grid::PerToken(4).dims(3, 65535), (4, 3));
        assert_eq!(Grid::Threads(100).dims(3, 65535), (5, 1));
    }
}
