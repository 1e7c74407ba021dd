//! The runtime's error type. [`RuntimeError::kind`] gives the coarse category
//! the C ABI maps to its status codes.

use std::path::PathBuf;

/// Coarse category of a [`RuntimeError`], stable across releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A file could not be read or written.
    Io,
    /// The ONNX file is corrupt, truncated, or not a single-input image model.
    InvalidModel,
    /// The model's `metadata_props` are present but unreadable.
    BadMetadata,
    /// A tensor or image the caller passed does not fit the model.
    InvalidInput,
    /// The back end failed while running a valid input.
    Inference,
    /// The requested back end is not usable here (not compiled in, library missing).
    BackendUnavailable,
    /// A panic inside a dependency was caught.
    Internal,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    #[error("cannot read {path}: {reason}")]
    Io {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("cannot write {path}: {reason}")]
    Write {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("{path} is not a usable model: {reason}")]
    InvalidModel { path: PathBuf, reason: String },
    #[error("metadata `{key}` of {path} is invalid: {reason}")]
    BadMetadata {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("input tensor of shape {shape:?} does not fit {path}: {reason}")]
    BadInput {
        path: PathBuf,
        shape: Vec<usize>,
        reason: String,
    },
    #[error("{path}: {reason}")]
    BadImageFile { path: PathBuf, reason: String },
    #[error("image {width}x{height} rejected: {reason}")]
    BadImage {
        width: usize,
        height: usize,
        reason: String,
    },
    #[error("{provider} failed on {path}: {reason}")]
    Inference {
        provider: String,
        path: PathBuf,
        reason: String,
    },
    #[error("back end `{backend}` is not compiled into this build (enable the cargo feature `{backend}`)")]
    NotCompiled { backend: &'static str },
    #[error("ONNX Runtime is not available: {reason}")]
    OrtUnavailable { reason: String },
    /// A requested execution provider cannot run, and falling back was
    /// refused ([`crate::SessionOptions::strict_backend`]).
    #[error(
        "execution provider {provider} is not available (strict backend, no fallback): {reason}"
    )]
    ProviderUnavailable {
        provider: &'static str,
        reason: String,
    },
    #[error("invalid option `{option}`: {reason}")]
    BadOption {
        option: &'static str,
        reason: String,
    },
    #[error("internal panic in {context} caught: {message}")]
    Panic {
        context: &'static str,
        message: String,
    },
}

impl RuntimeError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            RuntimeError::Io { .. } | RuntimeError::Write { .. } => ErrorKind::Io,
            RuntimeError::InvalidModel { .. } => ErrorKind::InvalidModel,
            RuntimeError::BadMetadata { .. } => ErrorKind::BadMetadata,
            RuntimeError::BadInput { .. }
            | RuntimeError::BadImage { .. }
            | RuntimeError::BadImageFile { .. }
            | RuntimeError::BadOption { .. } => ErrorKind::InvalidInput,
            RuntimeError::Inference { .. } => ErrorKind::Inference,
            RuntimeError::NotCompiled { .. }
            | RuntimeError::OrtUnavailable { .. }
            | RuntimeError::ProviderUnavailable { .. } => ErrorKind::BackendUnavailable,
            RuntimeError::Panic { .. } => ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Runs `f`, turning a panic inside it (ort and tract both panic on some
/// malformed inputs) into [`RuntimeError::Panic`].
pub(crate) fn guard<T>(context: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => Err(RuntimeError::Panic {
            context,
            message: panic_message(payload.as_ref()),
        }),
    }
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}
