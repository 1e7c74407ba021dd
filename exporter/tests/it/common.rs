//! Fixture access and helpers shared by the tests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::SafeTensors;
use unet_exporter::check::Tolerance;
use unet_exporter::runner::{Runner, Tensor4};
use unet_exporter::{lower, ExportOptions};
use unet_models::candle_core::Device;
use unet_models::io::{self, ConfigSource, LoadedModel};

/// The PyTorch reference cases of fixtures/ (base width 4, depth 3).
pub const CASES: [&str; 4] = ["unet", "unet-bilinear", "unet-paper", "attention-unet"];

/// Max abs error allowed against the PyTorch outputs (GOLDEN_ATOL in fixtures/README.md).
pub const GOLDEN_ATOL: f32 = 1e-4;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

pub fn weights(case: &str) -> PathBuf {
    fixtures().join(case).join("weights.safetensors")
}

pub fn load(case: &str) -> LoadedModel {
    io::load(&weights(case), ConfigSource::Metadata, &Device::Cpu).unwrap()
}

/// `name` of `fixtures/<case>/io.safetensors` as an f32 NCHW tensor.
pub fn io_tensor(case: &str, name: &str) -> Tensor4 {
    let bytes = std::fs::read(fixtures().join(case).join("io.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor(name).unwrap();
    let data = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Tensor4 {
        data,
        shape: view.shape().try_into().unwrap(),
    }
}

/// Exports `loaded` with `opts` into `dir/name.onnx`.
pub fn export_to(loaded: &LoadedModel, opts: &ExportOptions, dir: &Path, name: &str) -> PathBuf {
    let proto =
        lower::export(&loaded.model, &loaded.preprocessing, &loaded.metadata, opts).unwrap();
    let path = dir.join(format!("{name}.onnx"));
    std::fs::write(&path, lower::encode(&proto)).unwrap();
    path
}

/// Runs `path` on a back end.
pub fn run(runner: Runner, path: &Path, input: &Tensor4) -> Tensor4 {
    runner.open(path).unwrap().run(input).unwrap()
}

pub fn max_abs(a: &Tensor4, b: &Tensor4) -> f32 {
    assert_eq!(a.shape, b.shape);
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Asserts `got` is within `tol` (numpy allclose) of `expected`, element-wise.
pub fn assert_close(what: &str, expected: &Tensor4, got: &Tensor4, tol: Tolerance) {
    assert_eq!(expected.shape, got.shape, "{what}: shape");
    for (i, (e, g)) in expected.data.iter().zip(&got.data).enumerate() {
        assert!(
            (e - g).abs() <= tol.atol + tol.rtol * e.abs(),
            "{what}: element {i}: expected {e}, got {g}"
        );
    }
}

/// Back ends to test on: tract, and ONNX Runtime when `ORT_DYLIB_PATH` is set.
pub fn runners() -> Vec<Runner> {
    Runner::available().0
}

pub fn metadata(proto: &tract_onnx::pb::ModelProto) -> HashMap<String, String> {
    proto
        .metadata_props
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect()
}

/// Runs the `unet-export` binary.
pub fn unet_export(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unet-export"))
        .args(args)
        .output()
        .unwrap()
}

pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Nothing in `dir` but the given names (no output, no temp file).
pub fn assert_only(dir: &Path, names: &[&str]) {
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let mut names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    names.sort();
    assert_eq!(found, names);
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}
