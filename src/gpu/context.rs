//! The wgpu device: adapter choice, limits, and error reporting that turns validation
//! errors and device loss into `Error`s instead of panics (they must not cross the wasm boundary).

use crate::error::{Error, Result};
use std::sync::{Arc, Mutex};

/// How to pick and configure the GPU.
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// Restrict to one backend (vulkan, gl, metal, dx12); all native backends when `None`.
    pub backend: Option<wgpu::Backends>,
    /// Pretend the device's storage binding limit is this small (bytes). Used to test that
    /// big matrices are split into row blocks without needing a device that is actually small.
    pub max_binding_override: Option<u64>,
    /// Mat-vec workgroup size (default: 256, or the adapter's limit if lower). For experiments.
    pub workgroup_size: Option<u32>,
    /// Weight rows per mat-vec workgroup (default 4). For experiments.
    pub rows_per_workgroup: Option<u32>,
    /// Never use subgroup operations, even where the adapter has them (to test the fallback).
    pub no_subgroups: bool,
}

/// How the mat-vec kernel is shaped on this adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    pub workgroup_size: u32,
    /// Rows per workgroup when forced; otherwise chosen per matrix (see [`Tuning::matvec`]).
    pub rows_per_workgroup: Option<u32>,
    /// The adapter has subgroup operations (and they are not switched off).
    pub subgroups: bool,
    /// The largest subgroup the adapter may use.
    pub subgroup_max_size: u32,
}

/// The mat-vec kernel's shape for one matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatvecShape {
    pub rows_per_workgroup: u32,
    /// Sum a row's partial products with subgroup operations.
    pub subgroups: bool,
}

impl Tuning {
    /// From the adapter's limits and subgroup sizes, and the options' overrides.
    fn new(
        options: &GpuOptions,
        limits: &wgpu::Limits,
        info: &wgpu::AdapterInfo,
        subgroups: bool,
    ) -> Result<Self> {
        let cap = limits
            .max_compute_invocations_per_workgroup
            .min(limits.max_compute_workgroup_size_x);
        let workgroup_size = options.workgroup_size.unwrap_or(256.min(cap));
        let power = |n: u32| n.is_power_of_two();
        if !power(workgroup_size) || workgroup_size > cap || workgroup_size < 4 {
            return Err(Error::Invalid(format!(
                "workgroup size {workgroup_size} must be a power of two from 4 to the adapter's {cap}"
            )));
        }
        if let Some(rows) = options.rows_per_workgroup {
            if !power(rows) || rows > workgroup_size {
                return Err(Error::Invalid(format!(
                    "rows per workgroup {rows} must be a power of two up to the workgroup size {workgroup_size}"
                )));
            }
        }
        Ok(Self {
            workgroup_size,
            rows_per_workgroup: options.rows_per_workgroup,
            subgroups: subgroups && info.subgroup_max_size > 0,
            subgroup_max_size: info.subgroup_max_size,
        })
    }

    /// The mat-vec shape for rows of `groups` 32-element groups: as many invocations per row as
    /// the row has groups (up to the whole workgroup), so none idles on narrow matrices, and the
    /// rest of the workgroup on further rows. Subgroup sums when every subgroup size the adapter
    /// may pick divides the invocations of a row (sizes are powers of two, so the largest must).
    pub fn matvec(&self, groups: usize) -> MatvecShape {
        let per_row = (groups.max(1).next_power_of_two() as u32).min(self.workgroup_size);
        let rows_per_workgroup = self
            .rows_per_workgroup
            .unwrap_or(self.workgroup_size / per_row);
        let per_row = self.workgroup_size / rows_per_workgroup;
        MatvecShape {
            rows_per_workgroup,
            subgroups: self.subgroups
                && self.subgroup_max_size <= per_row
                && per_row.is_multiple_of(self.subgroup_max_size),
        }
    }
}

pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    /// Largest storage buffer binding we allow ourselves (the limit, or the override).
    pub max_binding: u64,
    pub tuning: Tuning,
    /// The device can write GPU timestamps between passes (`bench --profile`).
    pub timestamps: bool,
    /// The first uncaptured validation error or the device loss, reported on the next call.
    failure: Arc<Mutex<Option<Failure>>>,
}

#[derive(Debug, Clone)]
enum Failure {
    Validation(String),
    Lost(String),
}

/// The slot's value, also when a thread panicked while holding the lock (the value is plain data).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn parse_backend(name: &str) -> Result<wgpu::Backends> {
    Ok(match name {
        "vulkan" => wgpu::Backends::VULKAN,
        "gl" => wgpu::Backends::GL,
        "metal" => wgpu::Backends::METAL,
        "dx12" => wgpu::Backends::DX12,
        other => {
            return Err(Error::Invalid(format!(
                "unknown backend `{other}` (vulkan, gl, metal, dx12)"
            )))
        }
    })
}

impl GpuContext {
    pub async fn new(options: &GpuOptions) -> Result<Self> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = options.backend.unwrap_or(if cfg!(target_arch = "wasm32") {
            wgpu::Backends::BROWSER_WEBGPU
        } else {
            wgpu::Backends::PRIMARY | wgpu::Backends::GL
        });
        let instance = wgpu::Instance::new(desc);
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                apply_limit_buckets: false,
            })
            .await
            .map_err(|e| {
                let which = options
                    .backend
                    .map(|b| format!(" for backend {b:?}"))
                    .unwrap_or_default();
                Error::NoAdapter(format!("{which} ({e})"))
            })?;
        let info = adapter.get_info();
        // Ask for everything the adapter offers: larger bindings mean fewer row blocks.
        let limits = adapter.limits();
        let offered = adapter.features();
        let mut features = wgpu::Features::empty();
        if offered.contains(wgpu::Features::SUBGROUP) && !options.no_subgroups {
            features |= wgpu::Features::SUBGROUP;
        }
        if offered.contains(wgpu::Features::TIMESTAMP_QUERY) {
            features |= wgpu::Features::TIMESTAMP_QUERY;
        }
        let tuning = Tuning::new(
            options,
            &limits,
            &info,
            features.contains(wgpu::Features::SUBGROUP),
        )?;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("layerskip"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::Device(format!("{} ({:?}): {e}", info.name, info.backend)))?;

        let failure = Arc::new(Mutex::new(None::<Failure>));
        let slot = failure.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            lock(&slot).get_or_insert_with(|| Failure::Validation(e.to_string()));
        }));
        let slot = failure.clone();
        device.set_device_lost_callback(move |reason, message| {
            // A loss outranks an earlier validation error: the device is gone either way.
            *lock(&slot) = Some(Failure::Lost(format!("{reason:?}: {message}")));
        });

        let max_binding = options
            .max_binding_override
            .unwrap_or(u64::MAX)
            .min(limits.max_storage_buffer_binding_size as u64)
            .min(limits.max_buffer_size);
        Ok(Self {
            device,
            queue,
            info,
            limits,
            max_binding,
            tuning,
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            failure,
        })
    }

    /// "NVIDIA H200 (Vulkan, DiscreteGpu)"; in a browser, which does not name its adapter to
    /// wgpu, "the browser's WebGPU adapter (Cpu)".
    pub fn describe(&self) -> String {
        match self.info.name.is_empty() {
            true => format!("the browser's WebGPU adapter ({:?})", self.info.device_type),
            false => format!(
                "{} ({:?}, {:?})",
                self.info.name, self.info.backend, self.info.device_type
            ),
        }
    }

    /// Returns the first GPU error seen since the device was made, if any. After a device loss
    /// every call fails the same way, and the model must be loaded again.
    pub fn check(&self) -> Result<()> {
        match lock(&self.failure).clone() {
            Some(Failure::Validation(message)) => Err(Error::Gpu(message)),
            Some(Failure::Lost(message)) => Err(Error::DeviceLost(message)),
            None => Ok(()),
        }
    }

    /// Destroys the device, as a driver reset or a browser reclaiming the GPU would: every later
    /// call reports the loss. For tests of that path.
    pub fn lose_device(&self) {
        self.device.destroy();
    }

    /// A storage buffer, refused with a clear error when it exceeds the binding limit.
    pub fn storage(
        &self,
        name: &str,
        bytes: u64,
        extra: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer> {
        if bytes > self.max_binding {
            return Err(Error::Limit {
                name: name.into(),
                needed: bytes,
                limit: self.max_binding,
                limit_name: "max_storage_buffer_binding_size",
            });
        }
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(name),
            // Bindings of zero size are invalid; round tiny buffers up to one word.
            size: bytes.max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | extra,
            mapped_at_creation: false,
        }))
    }

    /// Reads `len` bytes of `buffer` from `offset` (which must allow COPY_SRC) back to the host.
    pub async fn read(
        &self,
        encoder: wgpu::CommandEncoder,
        reads: &[(&wgpu::Buffer, u64, u64)],
    ) -> Result<Vec<Vec<u8>>> {
        let mut encoder = encoder;
        let total: u64 = reads.iter().map(|r| r.2.next_multiple_of(4)).sum();
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: total.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut at = 0;
        for &(buffer, offset, len) in reads {
            let len4 = len.next_multiple_of(4);
            encoder.copy_buffer_to_buffer(buffer, offset, &staging, at, len4);
            at += len4;
        }
        self.queue.submit([encoder.finish()]);
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        if let Err(e) = self.device.poll(wgpu::PollType::wait_indefinitely()) {
            self.check()?;
            return Err(Error::Gpu(format!("waiting for the GPU: {e}")));
        }
        let mapped = rx.await;
        self.check()?;
        let mapped = mapped.map_err(|_| Error::Gpu("readback was cancelled".into()))?;
        mapped.map_err(|e| Error::Gpu(format!("mapping the readback buffer: {e}")))?;
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| Error::Gpu(format!("reading the readback buffer: {e}")))?;
        let mut out = Vec::with_capacity(reads.len());
        let mut at = 0usize;
        for &(_, _, len) in reads {
            out.push(view[at..at + len as usize].to_vec());
            at += len.next_multiple_of(4) as usize;
        }
        drop(view);
        staging.unmap();
        Ok(out)
    }
}
