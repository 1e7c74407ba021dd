//! ONNX external data is read from the model's folder, whatever the working
//! directory, on every back end. Its own test binary without the test
//! harness: it changes the working directory, which would race with tests on
//! other threads.
//!
//! `tests/data/external/model.onnx` is the color graph (logit = R - G) with
//! its weights `[1, -1, 0]` and bias `0` in `weights.bin` beside it. The
//! working directory holds a decoy `weights.bin` (`[0, 0, 5]`, bias 7), which
//! a back end resolving against the working directory would read.

use std::path::{Path, PathBuf};

use unet_runtime::{Backend, Ep, Session, Tensor4};

fn data(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(file)
}

fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A 1x3x2x2 input with R = 1, G = 0.25, B = 0.5 everywhere: the model gives
/// 0.75, the decoy weights 9.5.
fn input() -> Tensor4 {
    let mut data = vec![1.0; 4];
    data.extend([0.25; 4]);
    data.extend([0.5; 4]);
    Tensor4::new(data, [1, 3, 2, 2]).expect("shape")
}

fn backends() -> Vec<Backend> {
    let mut v = vec![];
    if cfg!(feature = "tract") {
        v.push(Backend::Tract);
    }
    if cfg!(feature = "ort") && unet_runtime::ort_library().is_some() {
        v.push(Backend::Ort(Ep::Cpu));
    } else {
        println!("SKIPPED ort: needs the `ort` feature and ORT_DYLIB_PATH");
    }
    v
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model_dir = dir.path().join("model");
    std::fs::create_dir(&model_dir).expect("mkdir");
    for file in ["model.onnx", "weights.bin"] {
        std::fs::copy(data(&format!("external/{file}")), model_dir.join(file)).expect("copy");
    }
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    std::env::set_current_dir(&elsewhere).expect("chdir");
    let model = model_dir.join("model.onnx");
    let relative = PathBuf::from("../model/model.onnx");

    for backend in backends() {
        // No weights.bin in the working directory.
        for path in [&model, &relative] {
            let mut s = Session::from_file(path, backend.clone()).unwrap_or_else(|e| {
                panic!(
                    "{backend:?}, {} from another directory: {e}",
                    path.display()
                )
            });
            let out = s.run(&input()).expect("run");
            assert!(
                out.data.iter().all(|&v| (v - 0.75).abs() < 1e-6),
                "{backend:?}: {:?}",
                out.data
            );
        }
        // A same-named file in the working directory is never read.
        std::fs::write("weights.bin", le_bytes(&[0.0, 0.0, 5.0, 7.0])).expect("decoy");
        for path in [&model, &relative] {
            let mut s = Session::from_file(path, backend.clone()).expect("load beside a decoy");
            let out = s.run(&input()).expect("run");
            assert!(
                out.data.iter().all(|&v| (v - 0.75).abs() < 1e-6),
                "{backend:?} read the decoy in the working directory: {:?}",
                out.data
            );
        }
        std::fs::remove_file("weights.bin").expect("rm decoy");
        println!("ok {backend:?}: external data from the model's folder");
    }
}
