//! One error type for the crate. Every variant says what was wrong and where, because the
//! user usually holds a checkpoint we have never seen and needs to know which file or tensor to fix.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("{file}: `{field}` {why}")]
    Field {
        file: String,
        field: String,
        why: String,
    },

    #[error("unsupported config: {field} = {value} ({why})")]
    Unsupported {
        field: &'static str,
        value: String,
        why: &'static str,
    },

    #[error("{file}: malformed safetensors: {why}")]
    Safetensors { file: String, why: String },

    #[error("missing tensor `{0}` in the checkpoint")]
    MissingTensor(String),

    #[error("tensor `{name}` has shape {got:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },

    #[error("tensor `{name}` has dtype {dtype}; expected {expected}")]
    TensorDtype {
        name: String,
        dtype: String,
        expected: String,
    },

    #[error("{file}: {why}")]
    File { file: String, why: String },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("the prompt and generation need {needed} positions but the context holds {limit}")]
    ContextLength { needed: u128, limit: usize },

    #[error("no GPU adapter found{0}; try --device cpu")]
    NoAdapter(String),

    #[error("GPU device request failed: {0}")]
    Device(String),

    #[error(
        "buffer `{name}` needs {needed} bytes but the adapter allows at most {limit} ({limit_name})"
    )]
    Limit {
        name: String,
        needed: u64,
        limit: u64,
        limit_name: &'static str,
    },

    #[error("GPU error: {0}")]
    Gpu(String),

    #[error("the GPU device was lost ({0}); load the model again")]
    DeviceLost(String),

    #[error("tensor `{name}` in {file} holds a non-finite value ({value}) at element {index}")]
    NonFiniteWeight {
        name: String,
        file: String,
        value: f32,
        index: usize,
    },

    #[error("the exit head produced non-finite logits after layer {layer} (the activations overflowed, or the weights are corrupt)")]
    NonFiniteLogits { layer: usize },

    /// The memory plan does not fit the device (the message names the sizes and what would fit).
    #[error("{0}")]
    DoesNotFit(String),

    #[error("invalid argument: {0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error about one file, naming it.
    pub fn file(file: impl Into<String>, why: impl std::fmt::Display) -> Self {
        Error::File {
            file: file.into(),
            why: why.to_string(),
        }
    }
}
