//! Arbitrary bytes decoded as an image (format from the content) and
//! segmented with a tiny model under fuzzer-chosen options.
#![no_main]

mod common;

#[path = "../../runtime/tests/it/fuzz_harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::report_panics_once_per_site();
    harness::image(data);
});
