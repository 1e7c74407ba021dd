//! What a graph's output is: raw logits, probabilities or class indices.

use std::fmt;
use std::str::FromStr;

use crate::error::SpecError;

/// What the graph's output is (metadata [`crate::keys::HEAD`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Head {
    /// Raw scores `[N, C, H, W]` (output `logits`): the runtime applies
    /// sigmoid (one channel) or softmax.
    #[default]
    Logits,
    /// Element-wise sigmoid of the logits (output `probabilities`).
    Sigmoid,
    /// Softmax over the class axis (output `probabilities`).
    Softmax,
    /// Class index per pixel `[N, 1, H, W]` (output `labels`), as f32: ONNX
    /// ArgMax gives int64, which the graph casts so every runtime and the C ABI
    /// read one element type (indices are exact in f32 up to 2^24 classes).
    Argmax,
}

impl Head {
    pub const ALL: [Head; 4] = [Head::Logits, Head::Sigmoid, Head::Softmax, Head::Argmax];

    pub fn as_str(self) -> &'static str {
        match self {
            Head::Logits => "logits",
            Head::Sigmoid => "sigmoid",
            Head::Softmax => "softmax",
            Head::Argmax => "argmax",
        }
    }

    pub fn parse(s: &str) -> Option<Head> {
        Head::ALL.into_iter().find(|h| h.as_str() == s)
    }

    /// Name of the graph output.
    pub fn output_name(self) -> &'static str {
        match self {
            Head::Logits => "logits",
            Head::Sigmoid | Head::Softmax => "probabilities",
            Head::Argmax => "labels",
        }
    }
}

impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Head {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        Head::parse(s).ok_or_else(|| SpecError::BadMetadata {
            key: crate::keys::HEAD.into(),
            reason: format!("`{s}`: expected logits, sigmoid, softmax or argmax"),
        })
    }
}
