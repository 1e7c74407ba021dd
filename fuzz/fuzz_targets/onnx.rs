//! Arbitrary bytes as an ONNX file, or a known graph with fuzzed
//! `metadata_props`, loaded on tract and run on a small frame.
#![no_main]

mod common;

#[path = "../../runtime/tests/it/fuzz_harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::report_panics_once_per_site();
    harness::onnx(data);
});
