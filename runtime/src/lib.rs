//! Small embeddable U-Net inference.
//!
//! - [`Session`]: one ONNX graph on tract (pure Rust, CPU; cargo feature
//!   `tract`, default) or ONNX Runtime (feature `ort`; the shared library is
//!   loaded at run time from `ORT_DYLIB_PATH` or
//!   [`SessionOptions::ort_library`]), run on raw NCHW `f32` tensors.
//! - [`Segmenter`]: the model's contract from its ONNX `metadata_props`
//!   (`unet-spec`'s [`ModelInfo`]): by default every frame is brought to the
//!   geometry the model was trained at with the trainer's own resampler;
//!   post-processing (sigmoid/softmax, threshold/argmax); overlap-tile
//!   inference at native resolution for large frames.
//! - [`ffi`]: the C ABI (`include/unet_runtime.h`).
//! - [`set_memory_policy`]: keep freed memory for the next frame, or return it.
//!
//! Tensors are NCHW throughout.
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod backend;
mod error;
pub mod ffi;
mod memory;
pub mod segment;
mod session;

pub use error::{ErrorKind, Result, RuntimeError};
pub use memory::{set_memory_policy, MemoryPolicy};
pub use segment::decode::{decode_image, expand_inputs};
pub use segment::overlay::overlay;
pub use segment::{
    Fit, ImageView, PixelFormat, Segmentation, Segmenter, SegmenterOptions, Tiling,
    DEFAULT_MAX_PIXELS,
};
pub use unet_spec::{
    self as spec, ChannelOrder, Head, InputGeometry, ModelInfo, Preprocessing, Provenance,
    ResizeMode, SizeRule,
};
pub use session::{ort_library, ort_library_with, Backend, Ep, Session, SessionOptions, Tensor4};
