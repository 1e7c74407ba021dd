//! The `unet-infer` binary end to end.

use std::process::Command;

use image::{Rgb, RgbImage};

use crate::common::*;

fn unet_infer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_unet-infer"))
}

#[test]
fn writes_masks_and_overlays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("frame.png");
    // Left half red (foreground for color.onnx), right half green.
    RgbImage::from_fn(10, 6, |x, _| {
        if x < 5 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 255, 0])
        }
    })
    .save(&input)
    .expect("save");
    let out = dir.path().join("out");
    let status = unet_infer()
        .arg(data("color.onnx"))
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .args(["--backend", "tract", "--overlay", "-q"])
        .status()
        .expect("run");
    if !cfg!(feature = "tract") {
        assert!(!status.success());
        return;
    }
    assert!(status.success());
    let mask = image::open(out.join("frame_mask.png"))
        .expect("mask")
        .to_luma8();
    assert_eq!(mask.dimensions(), (10, 6));
    for (x, _, p) in mask.enumerate_pixels() {
        assert_eq!(p[0], if x < 5 { 255 } else { 0 });
    }
    let overlay = image::open(out.join("frame_overlay.png"))
        .expect("overlay")
        .to_rgb8();
    assert_eq!(overlay.get_pixel(0, 0), &Rgb([255, 0, 0]));
    assert_eq!(overlay.get_pixel(9, 0), &Rgb([0, 255, 0]));
    // No temporary files left behind.
    assert_eq!(std::fs::read_dir(&out).expect("dir").count(), 2);

    // --threshold above sigmoid(1) gives an empty mask.
    let status = unet_infer()
        .arg(data("color.onnx"))
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .args(["--backend", "tract", "--threshold", "0.8", "-q"])
        .status()
        .expect("run");
    assert!(status.success());
    let mask = image::open(out.join("frame_mask.png"))
        .expect("mask")
        .to_luma8();
    assert!(mask.pixels().all(|p| p[0] == 0));

    // --low-memory (the allocator returns freed memory) gives the same mask.
    let status = unet_infer()
        .arg(data("color.onnx"))
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .args(["--backend", "tract", "--low-memory", "-q"])
        .status()
        .expect("run");
    assert!(status.success());
    let mask = image::open(out.join("frame_mask.png"))
        .expect("mask")
        .to_luma8();
    for (x, _, p) in mask.enumerate_pixels() {
        assert_eq!(p[0], if x < 5 { 255 } else { 0 });
    }
}

#[test]
fn bench_prints_percentiles() {
    if !cfg!(feature = "tract") {
        return;
    }
    let output = unet_infer()
        .args(["bench"])
        .arg(data("color.onnx"))
        .args(["--size", "32x16", "--runs", "3", "--backend", "tract"])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("p50") && stdout.contains("p99") && stdout.contains("tract"),
        "{stdout}"
    );
}

#[test]
fn errors_are_reported_not_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("frame.png");
    RgbImage::new(4, 4).save(&input).expect("save");
    // ONNX Runtime library missing.
    let output = unet_infer()
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .arg(data("color.onnx"))
        .arg(&input)
        .arg("-o")
        .arg(dir.path())
        .args(["--backend", "ort"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let expected = if cfg!(feature = "ort") {
        "ORT_DYLIB_PATH"
    } else {
        "not compiled"
    };
    assert!(stderr.contains(expected), "{stderr}");
    // A corrupt model.
    let bad = dir.path().join("bad.onnx");
    std::fs::write(&bad, b"not onnx").expect("write");
    let output = unet_infer()
        .arg(&bad)
        .arg(&input)
        .arg("-o")
        .arg(dir.path())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("bad.onnx") && !stderr.contains("panicked"),
        "{stderr}"
    );
}
