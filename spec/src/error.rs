//! What can be wrong with a model's contract: its config, metadata or sizes.

/// A contract that cannot be honoured; callers add the file's path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("unknown preset `{name}` (known: {known})")]
    UnknownPreset { name: String, known: String },
    #[error("invalid configuration: {0}")]
    BadConfig(String),
    #[error("metadata `{key}` is invalid: {reason}")]
    BadMetadata { key: String, reason: String },
    #[error(
        "input size {height}x{width} is not accepted: {reason}; nearest valid heights: {}, widths: {}",
        fmt_nearest(*nearest_height), fmt_nearest(*nearest_width)
    )]
    InvalidInputSize {
        height: usize,
        width: usize,
        reason: String,
        nearest_height: (Option<usize>, Option<usize>),
        nearest_width: (Option<usize>, Option<usize>),
    },
    #[error("`{text}` is not a size: {reason}")]
    BadSize { text: String, reason: String },
}

fn fmt_nearest(n: (Option<usize>, Option<usize>)) -> String {
    match n {
        (Some(a), Some(b)) if a == b => a.to_string(),
        (Some(a), Some(b)) => format!("{a} or {b}"),
        (Some(a), None) | (None, Some(a)) => a.to_string(),
        (None, None) => "none".to_string(),
    }
}

pub type Result<T> = std::result::Result<T, SpecError>;
