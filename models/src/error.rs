use std::path::PathBuf;

/// Everything that can go wrong building, running, loading or saving a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Spec(#[from] unet_spec::SpecError),
    #[error("invalid configuration: {0}")]
    BadConfig(String),
    #[error("input tensor has shape {got:?}, expected [N, {channels}, H, W]")]
    InputShape { got: Vec<usize>, channels: usize },
    #[error("{path}: {reason}")]
    Io {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file: {reason}")]
    NotSafetensors { path: PathBuf, reason: String },
    #[error("{path}: no `{key}` in the safetensors metadata; pass a config or preset explicitly")]
    MissingMetadata { path: PathBuf, key: String },
    #[error("{path}: metadata `{key}` is invalid: {reason}")]
    BadMetadata {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("{path}: missing tensor `{name}` (expected shape {shape:?})")]
    MissingTensor {
        path: PathBuf,
        name: String,
        shape: Vec<usize>,
    },
    #[error("{path}: unexpected tensor `{name}` that this configuration does not use")]
    UnexpectedTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("{path}: tensor `{name}` has dtype {got}, expected {expected}")]
    DtypeMismatch {
        path: PathBuf,
        name: String,
        expected: String,
        got: String,
    },
    #[error("{path}: tensor `{name}` contains a non-finite value ({value}) at flat index {index}")]
    NonFinite {
        path: PathBuf,
        name: String,
        index: usize,
        value: f32,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;
