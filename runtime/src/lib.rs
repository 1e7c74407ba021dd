//! Small embeddable U-Net inference.
//!
//! - [`Session`]: one ONNX graph on tract (pure Rust, CPU; cargo feature
//!   `tract`, default) or ONNX Runtime (feature `ort`; the shared library is
//!   loaded at run time from `ORT_DYLIB_PATH` or
//!   [`SessionOptions::ort_library`]), run on raw NCHW `f32` tensors.
//! - [`Segmenter`]: pre-processing from the ONNX `metadata_props` written by
//!   `unet-export` ([`metadata`]), post-processing (sigmoid/softmax,
//!   threshold/argmax) and overlap-tile inference for large images.
//! - [`ffi`]: the C ABI (`include/unet_runtime.h`).
//! - [`set_memory_policy`]: keep freed memory for the next frame, or return it.
//!
//! Tensors are NCHW throughout.
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod backend;
mod error;
pub mod ffi;
mod memory;
pub mod metadata;
mod segment;
mod session;

pub use error::{ErrorKind, Result, RuntimeError};
pub use memory::{set_memory_policy, MemoryPolicy};
pub use metadata::{ChannelOrder, Geometry, Head, ModelInfo};
pub use segment::{Fit, ImageView, PixelFormat, Segmentation, Segmenter, SegmenterOptions, Tiling};
pub use session::{ort_library, ort_library_with, Backend, Ep, Session, SessionOptions, Tensor4};
