//! Small embeddable U-Net inference.
//!
//! - [`Session`]: one ONNX graph on tract (pure Rust, CPU; cargo feature
//!   `tract`, default; feature `nnef` also reads tract's NNEF archives, and
//!   alone builds a runtime without the ONNX parser) or ONNX Runtime (feature `ort`; the shared library is
//!   loaded at run time from `ORT_DYLIB_PATH` or
//!   [`SessionOptions::ort_library`]), run on raw NCHW `f32` tensors.
//! - [`Segmenter`]: the model's contract from its ONNX `metadata_props`
//!   (`unet-spec`'s [`ModelInfo`]): by default every frame is brought to the
//!   geometry the model was trained at with the trainer's own resampler;
//!   post-processing (sigmoid/softmax, threshold/argmax); overlap-tile
//!   inference at native resolution for large frames.
//! - [`ffi`]: the C ABI (`include/unet_runtime.h`); [`pixels`]: camera
//!   formats (RGBA, NV12, YUYV, ...) converted to RGB for it.
//! - [`set_memory_policy`]: keep freed memory for the next frame, or return it.
//!
//! Tensors are NCHW throughout.
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod backend;
mod error;
pub mod ffi;
mod memory;
mod options;
pub mod pixels;
pub mod segment;
mod session;
mod tensor;

pub use backend::is_nnef_archive;
pub use error::{ErrorKind, Result, RuntimeError};
pub use memory::{set_memory_policy, MemoryPolicy};
pub use options::{ort_library, ort_library_with, Backend, Ep, SessionOptions};
pub use segment::decode::{decode_image, expand_inputs};
pub use segment::overlay::overlay;
pub use segment::{
    Fit, ImageView, PixelFormat, Segmentation, Segmenter, SegmenterOptions, Tiling,
    DEFAULT_MAX_PIXELS,
};
pub use session::Session;
pub use tensor::Tensor4;
pub use unet_spec::{
    self as spec, ChannelOrder, Head, InputGeometry, ModelInfo, Preprocessing, Provenance,
    ResizeMode, SizeRule,
};

/// The tract plan the runtime runs, for `examples/tract_profile.rs`, which
/// times it node by node. Not a stable API.
#[cfg(feature = "tract")]
#[doc(hidden)]
pub mod tract_plan {
    pub use crate::backend::tract::isa::tune_for_this_cpu;
    pub use crate::backend::tract::rewrite::optimize;
}
