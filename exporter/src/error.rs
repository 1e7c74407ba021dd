use std::path::PathBuf;

use unet_models::ModelError;

/// Everything that can go wrong lowering, writing or checking an export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("opset {opset} is not supported: unet-export writes ai.onnx opsets {min} to {max}")]
    UnsupportedOpset { opset: i64, min: i64, max: i64 },
    #[error("input shape {shape}: {reason}")]
    BadShape { shape: String, reason: String },
    #[error(
        "preprocessing has {mean} mean and {std} std values but the model has {channels} input channels"
    )]
    PreprocessingChannels {
        mean: usize,
        std: usize,
        channels: usize,
    },
    #[error("preprocessing: {reason}")]
    BadPreprocessing { reason: String },
    #[error("weight `{name}`: {reason}")]
    BadWeight { name: String, reason: String },
    #[error("{path}: {reason}")]
    BadCheckpoint { path: PathBuf, reason: String },
    #[error("weight `{name}` is missing from the model")]
    MissingWeight { name: String },
    #[error("{path}: not a readable ONNX model: {reason}")]
    NotOnnx { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    BadGolden { path: PathBuf, reason: String },
    #[error("{backend}: {reason}")]
    Backend { backend: String, reason: String },
    #[error("{path}: {reason}")]
    Io {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Candle(#[from] unet_models::candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ExportError>;
