//! Integration tests of unet-runtime, one binary (`cargo test -p unet-runtime`).
//!
//! ort tests need `ORT_DYLIB_PATH` (the onnxruntime shared library) and the
//! `ort` feature; without them they print a SKIPPED line and pass.

mod backend;
mod c_abi;
#[cfg(feature = "cli")]
mod cli;
mod common;
mod errors;
mod ffi;
#[cfg(feature = "tract")]
mod fuzz_harness;
#[cfg(feature = "tract")]
mod fuzz_replay;
mod golden;
mod header;
mod segment;
mod tiling;
