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
        .args([
            "--backend",
            "tract",
            "--threshold",
            "0.8",
            "-q",
            "--overwrite",
        ])
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
        .args(["--backend", "tract", "--low-memory", "-q", "--overwrite"])
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

/// Left half red (foreground for color.onnx), right half green.
fn half_red(path: &std::path::Path) {
    RgbImage::from_fn(10, 6, |x, _| {
        if x < 5 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 255, 0])
        }
    })
    .save(path)
    .expect("save");
}

fn run(cmd: &mut Command) -> (Option<i32>, String, String) {
    let out = cmd.output().expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn directories_collisions_and_existing_outputs() {
    if !cfg!(feature = "tract") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).expect("mkdir");
    half_red(&frames.join("a.png"));
    half_red(&frames.join("a.bmp"));
    std::fs::write(frames.join("notes.txt"), "not an image").expect("write");
    let out = dir.path().join("out");
    let segment = |extra: &[&str]| {
        let mut c = unet_infer();
        c.arg(data("color.onnx"))
            .arg(&frames)
            .arg("-o")
            .arg(&out)
            .args(["--backend", "tract", "-q"])
            .args(extra);
        run(&mut c)
    };
    let (code, _, err) = segment(&[]);
    assert_eq!(code, Some(0), "{err}");
    // a.png and a.bmp share a stem: both masks are kept, told apart by extension.
    for name in ["a_png_mask.png", "a_bmp_mask.png"] {
        let mask = image::open(out.join(name)).expect(name).to_luma8();
        assert_eq!(mask.get_pixel(0, 0)[0], 255, "{name}");
        assert_eq!(mask.get_pixel(9, 0)[0], 0, "{name}");
    }
    // Masks get the mode File::create gives under this umask, not 0600.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let probe = out.join("probe");
        std::fs::File::create(&probe).expect("probe");
        let mode =
            |p: &std::path::Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&out.join("a_png_mask.png")), mode(&probe));
        std::fs::remove_file(&probe).expect("rm");
    }
    // A second run refuses to replace them, and leaves them as they are.
    std::fs::write(out.join("a_png_mask.png"), b"keep").expect("write");
    let (code, _, err) = segment(&[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("already exists") && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(out.join("a_png_mask.png")).expect("read"),
        b"keep"
    );
    let (code, _, err) = segment(&["--overwrite"]);
    assert_eq!(code, Some(0), "{err}");
    assert_ne!(
        std::fs::read(out.join("a_png_mask.png")).expect("read"),
        b"keep"
    );
    // Nothing but the masks is left in the output directory.
    assert_eq!(std::fs::read_dir(&out).expect("dir").count(), 2);
}

#[test]
fn a_bad_image_is_reported_and_the_rest_still_run() {
    if !cfg!(feature = "tract") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.jpg");
    // A PNG named .jpg: the format comes from the content.
    RgbImage::from_fn(10, 6, |x, _| {
        if x < 5 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 255, 0])
        }
    })
    .save_with_format(&good, image::ImageFormat::Png)
    .expect("save");
    let bad = dir.path().join("bad.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\ntruncated").expect("write");
    let out = dir.path().join("out");
    let (code, _, err) = run(unet_infer()
        .arg(data("color.onnx"))
        .arg(&bad)
        .arg(&good)
        .arg("-o")
        .arg(&out)
        .args(["--backend", "tract", "-q"]));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("bad.png") && err.contains("1 of 2 images failed"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.join("good_mask.png").is_file());
    assert!(!out.join("bad_mask.png").exists());
}

#[test]
fn eval_matches_hand_computed_dice() {
    if !cfg!(feature = "tract") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (images, masks) = (dir.path().join("images"), dir.path().join("masks"));
    std::fs::create_dir(&images).expect("mkdir");
    std::fs::create_dir(&masks).expect("mkdir");
    // a: predicted columns 0..5, truth columns 0..4: tp 24, fp 6, fn 0.
    half_red(&images.join("a.png"));
    image::GrayImage::from_fn(10, 6, |x, _| image::Luma([if x < 4 { 255 } else { 0 }]))
        .save(masks.join("a.png"))
        .expect("save");
    // b: nothing predicted, nothing there (mask named with the `_mask` suffix).
    RgbImage::from_pixel(10, 6, Rgb([0, 255, 0]))
        .save(images.join("b.png"))
        .expect("save");
    image::GrayImage::new(10, 6)
        .save(masks.join("b_mask.png"))
        .expect("save");
    let csv = dir.path().join("eval.csv");
    let (code, stdout, err) = run(unet_infer()
        .arg("eval")
        .arg(data("color.onnx"))
        .arg("--images")
        .arg(&images)
        .arg("--masks")
        .arg(&masks)
        .arg("-o")
        .arg(&csv)
        .args(["--backend", "tract"]));
    assert_eq!(code, Some(0), "{err}");
    let text = std::fs::read_to_string(&csv).expect("csv");
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows[0][2..6], ["dice", "iou", "precision", "recall"]);
    // Dice 2*24/(48+6), IoU 24/30, precision 24/30, recall 1.
    assert_eq!(
        rows[1][2..8],
        ["0.888889", "0.800000", "0.800000", "1.000000", "0.500000", "0.400000"]
    );
    assert_eq!(
        rows[2][2..6],
        ["1.000000", "1.000000", "1.000000", "1.000000"]
    );
    assert!(stdout.contains("mean Dice 0.9444"), "{stdout}");
    // The CSV is not replaced without --overwrite.
    let (code, _, err) = run(unet_infer()
        .arg("eval")
        .arg(data("color.onnx"))
        .arg("--images")
        .arg(&images)
        .arg("--masks")
        .arg(&masks)
        .arg("-o")
        .arg(&csv));
    assert_eq!(code, Some(1), "{err}");
}

#[test]
fn usage_errors_exit_1_and_version_names_the_binary() {
    let (code, stdout, _) = run(unet_infer().arg("--version"));
    assert_eq!(code, Some(0));
    assert_eq!(
        stdout.trim(),
        format!("unet-infer {}", env!("CARGO_PKG_VERSION"))
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let frame = dir.path().join("f.png");
    half_red(&frame);
    for args in [
        vec!["--bogus"],
        vec!["--threads", "100000"],
        vec!["--threads", "0"],
        vec!["--resize", "0x0"],
        vec!["--max-pixels", "10"],
        vec!["--threshold", "NaN"],
        vec!["--threshold", "2"],
    ] {
        let (code, _, err) = run(unet_infer()
            .arg(data("color.onnx"))
            .arg(&frame)
            .arg("-o")
            .arg(dir.path().join("out"))
            .args(["--backend", "tract"])
            .args(&args));
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.is_empty(),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn info_prints_the_contract() {
    if !cfg!(feature = "tract") {
        return;
    }
    let (code, stdout, err) = run(unet_infer().arg("info").arg(data("color.onnx")));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        stdout.contains("trained at") && stdout.contains("not recorded"),
        "{stdout}"
    );
}

/// A write that fails part-way (here the file-size limit, as a full disk
/// would) is an error with exit 1, and leaves no empty or partial mask.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_failed_write_is_an_error_and_leaves_no_file() {
    use std::os::unix::process::CommandExt;
    if !cfg!(feature = "tract") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let frame = dir.path().join("f.png");
    // Any PNG is above the 32-byte limit: its signature and header alone take 33.
    RgbImage::from_fn(64, 48, |x, y| {
        let v = ((x * 7919 + y * 104_729) % 251) as u8;
        Rgb([v, v.wrapping_mul(3), 255 - v])
    })
    .save(&frame)
    .expect("save");
    let out = dir.path().join("out");
    std::fs::create_dir(&out).expect("mkdir");
    let mut cmd = unet_infer();
    cmd.arg(data("color.onnx"))
        .arg(&frame)
        .arg("-o")
        .arg(&out)
        .args(["--backend", "tract", "-q", "--threshold", "0.6"]);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: 32,
                rlim_max: 32,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (code, _, err) = run(&mut cmd);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("f_mask.png"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&out)
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// `--strict-backend`: a provider this machine lacks (CUDA on CI's CPU-only
/// ONNX Runtime) is an error with the reason; without it, a CPU fallback.
#[test]
fn strict_backend_refuses_a_missing_provider() {
    if !ort_available("strict_backend_refuses_a_missing_provider") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let frame = dir.path().join("f.png");
    half_red(&frame);
    let segment = |extra: &[&str], out: &str| {
        let mut c = unet_infer();
        c.arg(data("color.onnx"))
            .arg(&frame)
            .arg("-o")
            .arg(dir.path().join(out))
            .args(["--backend", "ort-cuda"])
            .args(extra);
        run(&mut c)
    };
    let (code, _, err) = segment(&["--strict-backend"], "strict");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.to_lowercase().contains("cuda"), "{err}");
    assert!(!dir.path().join("strict/f_mask.png").exists());
    let (code, _, err) = segment(&[], "fallback");
    assert_eq!(code, Some(0), "{err}");
    assert!(dir.path().join("fallback/f_mask.png").is_file());
}
