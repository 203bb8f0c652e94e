//! The WGSL implementation of the model on wgpu.

pub mod context;
pub mod kernels;
pub mod kv_cache;
pub mod model;
pub mod ops;
pub mod tensor;

pub use context::{GpuContext, GpuOptions};
pub use model::GpuModel;
