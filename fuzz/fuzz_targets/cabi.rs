//! The C ABI's create and segment with fuzzer-chosen options, frame geometry,
//! pixel format and buffer lengths.
#![no_main]

mod common;

#[path = "../../runtime/tests/it/fuzz_harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::report_panics_once_per_site();
    harness::cabi(data);
});
