//! `unet-export`: lowers a U-Net from [`unet_models`] to a checked ONNX graph.
//!
//! - [`lower::export`] walks the one architecture description
//!   ([`unet_models::Graph`]) and emits an ONNX `ModelProto`: node and tensor
//!   names follow the graph, initializer names are the PyTorch `state_dict`
//!   names, `metadata_props` carry the model's config and preprocessing.
//! - [`check`] runs the written file on tract (and ONNX Runtime when its
//!   library is found) and compares it with the candle forward pass, as NVIDIA
//!   Polygraphy compares back ends.
//!
//! # Why `tract_onnx::pb` for the protobuf
//! The ONNX messages are written with the prost-generated types that
//! `tract-onnx` exposes as [`tract_onnx::pb`]. They are generated ahead of time
//! and committed in tract, so nothing runs `protoc` at build time; they cover
//! the full `onnx.proto3` (IR 10: `ModelProto`, `TensorProto` with `raw_data`,
//! `TypeProto`, `metadata_props`); and the runtime and this crate's check
//! already depend on `tract-onnx`, so the exporter adds no second ONNX schema
//! crate that could drift from the one the file is read back with. Encoding uses
//! `prost::Message` from the same prost release tract uses.

pub mod annotate;
pub mod check;
pub mod error;
pub mod golden;
pub mod import;
pub mod lower;
pub mod nnef;
pub mod onnx;
pub mod runner;
pub mod validate;

pub use error::{ExportError, Result};
pub use lower::{export, ExportOptions, Head, InputShape};
