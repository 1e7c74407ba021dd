//! Compiles tests/c/smoke.c with `cc` against the static library and runs it.

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

fn compile_smoke() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let lib = lib_dir().join("libunet_runtime.a");
    assert!(lib.is_file(), "{} not built", lib.display());
    let out = std::env::temp_dir().join(format!("unet_smoke_{}", std::process::id()));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&out)
        .arg(root.join("tests/c/smoke.c"))
        .arg("-I")
        .arg(root.join("include"))
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm"])
        .status()
        .unwrap_or_else(|e| panic!("cannot run `{cc}`: {e}"));
    assert!(status.success(), "compiling smoke.c failed");
    out
}

fn run_smoke(exe: &PathBuf, backend: &str) {
    let output = Command::new(exe)
        .arg(data("color.onnx"))
        .arg(backend)
        .output()
        .expect("run smoke");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("smoke ok"),
        "smoke (backend {backend}) failed:\n{stdout}\n{stderr}"
    );
    println!("{}", stdout.trim());
}

#[test]
fn c_smoke_program() {
    let exe = compile_smoke();
    if cfg!(feature = "tract") {
        run_smoke(&exe, "1");
    }
    if ort_available("c_smoke_program on ort") {
        run_smoke(&exe, "2");
    }
    let _ = std::fs::remove_file(exe);
}
