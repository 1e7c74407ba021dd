use std::path::PathBuf;

use unet_runtime::Tensor4;

/// Max absolute error against the PyTorch golden outputs (fixtures/README.md).
pub const GOLDEN_ATOL: f32 = 1e-4;

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn fixture(case: &str, file: &str) -> PathBuf {
    workspace().join("fixtures").join(case).join(file)
}

pub fn data(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("data")
        .join(file)
}

/// A tensor from a safetensors file (f32, rank 4).
pub fn load_tensor(path: &std::path::Path, key: &str) -> Tensor4 {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors header");
    let view = st.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
    assert_eq!(view.dtype(), safetensors::Dtype::F32, "{key}");
    let shape: [usize; 4] = view.shape().try_into().expect("rank 4");
    let data = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Tensor4 { data, shape }
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `Some(())` when ONNX Runtime tests can run; prints a SKIPPED line otherwise.
#[allow(dead_code)]
pub fn ort_available(test: &str) -> bool {
    if !cfg!(feature = "ort") {
        println!("SKIPPED {test}: built without the `ort` feature");
        return false;
    }
    if unet_runtime::ort_library().is_none() {
        println!("SKIPPED {test}: ORT_DYLIB_PATH is unset or names no file");
        return false;
    }
    true
}

/// tract when compiled in (deterministic across shapes), else ONNX Runtime.
pub fn cpu_backend() -> unet_runtime::Backend {
    if cfg!(feature = "tract") {
        unet_runtime::Backend::Tract
    } else {
        unet_runtime::Backend::Auto
    }
}
