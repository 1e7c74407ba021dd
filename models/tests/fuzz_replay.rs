//! Replays the checked-in fuzz corpus (`tests/fuzz_corpus/<target>/`: seeds
//! and every crash the fuzzer found, minimised) through the same code the
//! cargo-fuzz targets run (`fuzz/`), so a fixed crash stays fixed. No fuzzing here.

mod fuzz_harness;

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

#[test]
fn safetensors_corpus_loads_or_is_refused() {
    let files = corpus("safetensors");
    assert!(files.len() >= 3, "the corpus lost its seeds");
    for (path, bytes) in files {
        eprintln!("replaying {}", path.display());
        fuzz_harness::safetensors(&bytes);
    }
}
