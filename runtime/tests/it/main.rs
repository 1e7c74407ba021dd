//! Integration tests of unet-runtime, one binary (`cargo test -p unet-runtime`).
//!
//! ort tests need `ORT_DYLIB_PATH` (the onnxruntime shared library); without
//! it they print a SKIPPED line and pass.

mod common;
mod golden;
