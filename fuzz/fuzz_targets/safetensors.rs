//! Arbitrary bytes as a safetensors model file: header metadata, then a full load.
#![no_main]

mod common;

#[path = "../../models/tests/fuzz_harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::report_panics_once_per_site();
    harness::safetensors(data);
});
