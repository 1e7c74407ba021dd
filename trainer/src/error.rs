//! Typed errors of the training library; the binary wraps them with `anyhow`.

use std::fmt;
use std::path::PathBuf;

/// One file that cannot be used, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct FileProblem {
    pub path: PathBuf,
    pub reason: String,
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

/// How many problems an error message lists before summarising the rest.
const MAX_LISTED: usize = 20;

fn list(problems: &[FileProblem]) -> String {
    let mut s = String::new();
    for p in problems.iter().take(MAX_LISTED) {
        s.push_str("\n  - ");
        s.push_str(&p.to_string());
    }
    if problems.len() > MAX_LISTED {
        s.push_str(&format!("\n  ... and {} more", problems.len() - MAX_LISTED));
    }
    s
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{dir}: no data set layout found (expected `images/` + `masks/` (Kvasir-SEG) or `train/` + `train_masks/` (Carvana), or pass --images and --masks); it contains: {found}")]
    UnknownLayout { dir: PathBuf, found: String },
    #[error("{dir}: {what}")]
    Io {
        dir: PathBuf,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{dir}: no image files found")]
    Empty { dir: PathBuf },
    #[error(
        "{count} unusable file(s) in the data set (pass --skip-bad to skip them with a warning):{}",
        list(problems)
    )]
    BadFiles {
        count: usize,
        problems: Vec<FileProblem>,
    },
    #[error("{path}: {reason}")]
    BadSample { path: PathBuf, reason: String },
    #[error("not enough samples: {reason}")]
    TooFewSamples { reason: String },
    #[error("invalid option {option}: {reason}")]
    BadOption { option: String, reason: String },
    #[error("{path}: not a training checkpoint: {reason}")]
    BadCheckpoint { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Image {
        path: PathBuf,
        reason: image::ImageError,
    },
    #[error("{path}: cannot draw the plot: {reason}")]
    Plot { path: PathBuf, reason: String },
    #[error("data loader worker stopped: {0}")]
    Worker(String),
    #[error(transparent)]
    Model(#[from] unet_models::ModelError),
    #[error(transparent)]
    Candle(#[from] unet_models::candle_core::Error),
}

pub type Result<T> = std::result::Result<T, TrainError>;

impl TrainError {
    pub fn option(option: &str, reason: impl Into<String>) -> Self {
        TrainError::BadOption {
            option: option.to_string(),
            reason: reason.into(),
        }
    }
}
