//! Replays the checked-in fuzz corpora (`tests/fuzz_corpus/<target>/`: seeds
//! and every crash the fuzzer found, minimised) through the same code the
//! cargo-fuzz targets run (`fuzz/`), so a fixed crash stays fixed. No fuzzing here.

use std::path::PathBuf;

use crate::fuzz_harness;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "{}: the corpus lost its seeds",
        dir.display()
    );
    for path in files {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        eprintln!("replaying {}", path.display());
        run(&bytes);
    }
}

#[test]
fn onnx_corpus_loads_or_is_refused() {
    replay("onnx", fuzz_harness::onnx);
}

#[test]
fn image_corpus_decodes_or_is_refused() {
    replay("image", fuzz_harness::image);
}

#[test]
fn cabi_corpus_segments_or_is_refused() {
    replay("cabi", fuzz_harness::cabi);
}
