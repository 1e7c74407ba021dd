//! Builds the static library and runs the C smoke test (tests/c/smoke.sh)
//! against it.

use std::path::PathBuf;
use std::process::Command;

use crate::common::*;

/// The directory holding this build's libunet_runtime.a (target/<profile>).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/it-<hash>
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .to_path_buf()
}

/// `cargo test` builds only the rlib: build this profile's staticlib (a
/// relink at most after `cargo build --workspace`, as CI runs first) so the C
/// program links the code under test. `--workspace` keeps the dependency
/// features those of the test build, so nothing is recompiled.
fn build_staticlib() -> PathBuf {
    let dir = lib_dir();
    let profile = dir.file_name().and_then(|p| p.to_str()).expect("profile");
    let profile = if profile == "debug" { "dev" } else { profile };
    let mut features = Vec::new();
    if cfg!(feature = "tract") {
        features.push("unet-runtime/tract");
    }
    if cfg!(feature = "ort") {
        features.push("unet-runtime/ort");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(&cargo);
    build
        .args([
            "build",
            "--quiet",
            "--workspace",
            "--lib",
            "--profile",
            profile,
        ])
        .args(["--features", &features.join(",")])
        .arg("--target-dir")
        .arg(dir.parent().expect("target dir"))
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if !cfg!(feature = "tract") {
        build.arg("--no-default-features");
    }
    let status = build
        .status()
        .unwrap_or_else(|e| panic!("cannot run `{cargo}`: {e}"));
    assert!(status.success(), "building libunet_runtime.a failed");
    let lib = dir.join("libunet_runtime.a");
    assert!(lib.is_file(), "{} not built", lib.display());
    lib
}

/// Runs tests/c/smoke.sh: pkg-config, the link, the stack flags, then the
/// program on each back end (set `UNET_VALGRIND=1` to repeat it under valgrind).
fn run_smoke(lib: &std::path::Path, backends: &[&str]) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("bash")
        .arg(root.join("tests/c/smoke.sh"))
        .arg(lib)
        .arg(data("color.onnx"))
        .args(backends)
        .output()
        .expect("run bash tests/c/smoke.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.matches("smoke ok").count() >= backends.len(),
        "smoke.sh (backends {backends:?}) failed:\n{stdout}\n{stderr}"
    );
    println!("{}", stdout.trim());
}

#[test]
fn c_smoke_program() {
    let lib = build_staticlib();
    let mut backends = Vec::new();
    if cfg!(feature = "tract") {
        backends.push("1");
    }
    if ort_available("c_smoke_program on ort") {
        backends.push("2");
    }
    run_smoke(&lib, &backends);
}
