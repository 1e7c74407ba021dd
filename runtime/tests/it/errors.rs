//! Bad input gives a clear error, never a panic.

use image::DynamicImage;
use unet_runtime::{
    Backend, Ep, ErrorKind, ImageView, PixelFormat, RuntimeError, Segmenter, Session,
    SessionOptions, Tensor4,
};

use crate::common::*;

fn load_err(path: &std::path::Path, backend: Backend) -> RuntimeError {
    Session::from_file(path, backend).expect_err("must fail")
}

fn backends() -> Vec<Backend> {
    let mut v = vec![];
    if cfg!(feature = "tract") {
        v.push(Backend::Tract);
    }
    if ort_available("errors on ort") {
        v.push(Backend::Ort(Ep::Cpu));
    }
    v
}

#[test]
fn corrupt_and_truncated_onnx() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(&garbage, b"\x08\x07this is not a protobuf \xff\xff\xff").expect("write");
    let bytes = std::fs::read(fixture("unet", "model.onnx")).expect("fixture");
    let truncated = dir.path().join("truncated.onnx");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    let empty = dir.path().join("empty.onnx");
    std::fs::write(&empty, b"").expect("write");
    for backend in backends() {
        for path in [&garbage, &truncated, &empty] {
            let e = load_err(path, backend.clone());
            assert_eq!(e.kind(), ErrorKind::InvalidModel, "{}: {e}", path.display());
            assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");
        }
        let missing = dir.path().join("missing.onnx");
        let e = load_err(&missing, backend.clone());
        assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    }
}

#[test]
fn wrong_input_rank() {
    for backend in backends() {
        let e = load_err(&data("rank3.onnx"), backend);
        assert_eq!(e.kind(), ErrorKind::InvalidModel, "{e}");
        assert!(e.to_string().contains("rank 3"), "{e}");
    }
}

#[test]
fn wrong_channel_count() {
    for backend in backends() {
        let mut s =
            Session::from_file(fixture("unet", "model.onnx"), backend.clone()).expect("load");
        let e = s
            .run(&Tensor4::zeros([1, 1, 16, 16]))
            .expect_err("1 channel into 3");
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains("3 input channels"), "{e}");
        // Still usable afterwards.
        assert!(s.run(&Tensor4::zeros([1, 3, 16, 16])).is_ok());

        let mut seg = Segmenter::from_file(data("color.onnx"), backend).expect("load");
        let gray = [0u8; 16];
        let view = ImageView::new(&gray, 4, 4, 4, PixelFormat::Gray8).expect("view");
        let e = seg
            .segment_buffer(&view)
            .expect_err("gray into an RGB model");
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert!(e.to_string().contains("the model takes 3"), "{e}");
    }
}

#[test]
fn zero_size_image_and_bad_buffers() {
    let mut seg = Segmenter::from_file(data("color.onnx"), cpu_backend()).expect("load");
    let e = seg
        .segment(&DynamicImage::new_rgb8(0, 0))
        .expect_err("empty");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("empty"), "{e}");
    let e = seg
        .segment(&DynamicImage::new_rgb8(5, 0))
        .expect_err("empty");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let buf = [0u8; 10];
    assert!(ImageView::new(&buf, 4, 4, 12, PixelFormat::Rgb8).is_err());
    assert!(ImageView::new(&buf, 4, 1, 11, PixelFormat::Rgb8).is_err());
    let mut s = Session::from_file(data("color.onnx"), cpu_backend()).expect("load");
    let bad = Tensor4 {
        data: vec![0.0; 5],
        shape: [1, 3, 2, 2],
    };
    assert_eq!(
        s.run(&bad).expect_err("short").kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        s.run(&Tensor4::zeros([1, 3, 0, 4]))
            .expect_err("empty")
            .kind(),
        ErrorKind::InvalidInput
    );
}

#[test]
fn missing_onnx_runtime_library() {
    let options = SessionOptions {
        ort_library: Some("/nonexistent/libonnxruntime.so.1".into()),
        ..SessionOptions::default()
    };
    let e = Session::from_file_with(data("color.onnx"), Backend::Ort(Ep::Cpu), &options)
        .expect_err("no library");
    assert_eq!(e.kind(), ErrorKind::BackendUnavailable, "{e}");
    if cfg!(feature = "ort") {
        assert!(
            e.to_string().contains("/nonexistent/libonnxruntime.so.1"),
            "{e}"
        );
    }
    // Auto falls back to tract when ONNX Runtime cannot be loaded.
    if cfg!(feature = "tract") {
        let s = Session::from_file_with(data("color.onnx"), Backend::Auto, &options).expect("auto");
        assert_eq!(s.provider(), "tract");
    }
}
