//! Back ends: each loads an ONNX file, reports its `metadata_props`, and runs
//! one NCHW `f32` tensor through the graph.

#[cfg(feature = "ort")]
pub mod ort;
#[cfg(feature = "tract")]
pub mod tract;
#[cfg(feature = "tract")]
pub mod tract_conv;
#[cfg(feature = "tract")]
pub mod tract_isa;
#[cfg(feature = "tract")]
pub mod tract_tiled_conv;
#[cfg(feature = "tract")]
pub mod tract_tiled_deconv;
