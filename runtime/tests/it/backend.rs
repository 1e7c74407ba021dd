//! The back ends agree on which files and tensors they take, and a requested
//! execution provider is never silently replaced in strict mode.

use unet_runtime::{
    Backend, Ep, ErrorKind, Fit, RuntimeError, Segmenter, SegmenterOptions, Session,
    SessionOptions, Tensor4,
};

use crate::common::*;

fn backends() -> Vec<Backend> {
    let mut v = vec![];
    if cfg!(feature = "tract") {
        v.push(Backend::Tract);
    }
    if ort_available("back-end agreement on ort") {
        v.push(Backend::Ort(Ep::Cpu));
    }
    v
}

fn load_err(file: &str, backend: &Backend) -> RuntimeError {
    Session::from_file(data(file), backend.clone()).expect_err(file)
}

/// `[n, 3, h, w]` with R = 1, G = 0.25, B = 0.5: the color graph gives 0.75.
fn rgb(n: usize, h: usize, w: usize) -> Tensor4 {
    let plane = h * w;
    let mut data = Vec::with_capacity(n * 3 * plane);
    for _ in 0..n {
        for v in [1.0, 0.25, 0.5] {
            data.extend(std::iter::repeat_n(v, plane));
        }
    }
    Tensor4::new(data, [n, 3, h, w]).expect("shape")
}

#[test]
fn non_f32_input_is_refused_at_load() {
    for backend in backends() {
        let e = load_err("int64_input.onnx", &backend);
        assert_eq!(e.kind(), ErrorKind::InvalidModel, "{backend:?}: {e}");
        let msg = e.to_string();
        assert!(
            msg.contains("int64_input.onnx") && msg.contains("i64") && msg.contains("f32"),
            "{backend:?}: {msg}"
        );
    }
}

/// The onnx fuzz target's find: a declared output nothing produces made
/// tract-onnx panic (caught, but reported as an internal error).
#[test]
fn an_output_nothing_produces_is_refused_at_load() {
    for backend in backends() {
        let e = load_err("dangling_output.onnx", &backend);
        assert_eq!(e.kind(), ErrorKind::InvalidModel, "{backend:?}: {e}");
        let msg = e.to_string();
        assert!(msg.contains("dangling_output.onnx"), "{backend:?}: {msg}");
        if backend == Backend::Tract {
            assert!(msg.contains("`missing`") && !msg.contains("panic"), "{msg}");
        }
    }
}

#[test]
fn unreleased_opset_is_refused_at_load() {
    for backend in backends() {
        let e = load_err("opset99.onnx", &backend);
        assert_eq!(e.kind(), ErrorKind::InvalidModel, "{backend:?}: {e}");
        let msg = e.to_string();
        assert!(
            msg.contains("opset99.onnx") && msg.contains("99"),
            "{backend:?}: {msg}"
        );
    }
}

#[test]
fn declared_input_dims() {
    for backend in backends() {
        let s = Session::from_file(data("color.onnx"), backend.clone()).expect("load");
        assert_eq!(s.input_dims(), [None, Some(3), None, None], "{backend:?}");
        let s = Session::from_file(data("fixed_64x48.onnx"), backend.clone()).expect("load");
        assert_eq!(
            s.input_dims(),
            [Some(1), Some(3), Some(48), Some(64)],
            "{backend:?}"
        );
        assert_eq!(s.input_channels(), Some(3));
    }
}

#[test]
fn fixed_input_shape_refuses_other_sizes_on_every_backend() {
    for backend in backends() {
        let mut s = Session::from_file(data("fixed_64x48.onnx"), backend.clone()).expect("load");
        let out = s.run(&rgb(1, 48, 64)).expect("the declared shape");
        assert_eq!(out.shape, [1, 1, 48, 64]);
        assert!(out.data.iter().all(|&v| (v - 0.75).abs() < 1e-6));

        for (tensor, says) in [
            (rgb(1, 64, 48), "fixed at 64x48"),
            (rgb(1, 32, 32), "fixed at 64x48"),
            (rgb(2, 48, 64), "batch size at 1"),
        ] {
            let e = s.run(&tensor).expect_err("another shape");
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{backend:?}: {e}");
            let msg = e.to_string();
            assert!(
                msg.contains(says) && msg.contains("fixed_64x48.onnx"),
                "{backend:?}: {msg}"
            );
        }
        // Still usable afterwards.
        assert!(s.run(&rgb(1, 48, 64)).is_ok(), "{backend:?}");
    }
}

/// A frame of another size is brought to a graph's fixed size by the
/// segmenter, the same way on every back end; at native resolution it is
/// refused with a clear error, the same way on every back end.
#[test]
fn segmenter_resizes_to_a_fixed_input_shape_on_every_backend() {
    // Left 80 columns red (foreground for the color graph), the rest green.
    let frame = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(160, 112, |x, _| {
        if x < 80 {
            image::Rgb([255, 0, 0])
        } else {
            image::Rgb([0, 255, 0])
        }
    }));
    let mut masks = Vec::new();
    for backend in backends() {
        let mut seg =
            Segmenter::from_file(data("fixed_64x48.onnx"), backend.clone()).expect("load");
        assert_eq!(seg.network_input_size(160, 112).expect("size"), (48, 64));
        let out = seg.segment(&frame).expect("resized to 64x48");
        assert_eq!((out.width, out.height), (160, 112), "{backend:?}");
        assert_eq!(out.mask[0], 1, "{backend:?}");
        assert_eq!(out.mask[159], 0, "{backend:?}");
        masks.push(out.mask);

        let native = SegmenterOptions {
            fit: Fit::Pad,
            ..SegmenterOptions::default()
        };
        let mut seg = Segmenter::from_file_with(data("fixed_64x48.onnx"), backend.clone(), native)
            .expect("load");
        let e = seg
            .segment(&frame)
            .expect_err("native 160x112 on a 64x48 graph");
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{backend:?}: {e}");
        assert!(e.to_string().contains("fixed at 64x48"), "{backend:?}: {e}");
    }
    assert!(masks.windows(2).all(|m| m[0] == m[1]), "back ends disagree");
}

/// The CPU build of ONNX Runtime CI installs has no CUDA or TensorRT
/// provider: strict mode must refuse them, the default must fall back. On a
/// build that has them, strict mode must run on them.
#[test]
fn strict_backend_refuses_a_missing_provider() {
    if !ort_available("strict backend") {
        return;
    }
    let gpu_eps = [
        (Ep::Cuda { device: 0 }, "CUDAExecutionProvider"),
        (
            Ep::TensorRt {
                fp16: false,
                cache_dir: None,
            },
            "TensorrtExecutionProvider",
        ),
    ];
    for (ep, name) in gpu_eps {
        let lenient = Session::from_file(data("color.onnx"), Backend::Ort(ep.clone()))
            .expect("falls back without strict mode");
        let strict = SessionOptions {
            strict_backend: true,
            ..SessionOptions::default()
        };
        match Session::from_file_with(data("color.onnx"), Backend::Ort(ep.clone()), &strict) {
            Ok(s) => assert_eq!(s.provider(), format!("ort:{name}"), "strict {ep:?}"),
            Err(e) => {
                assert_eq!(lenient.provider(), "ort:CPUExecutionProvider", "{ep:?}");
                assert_eq!(e.kind(), ErrorKind::BackendUnavailable, "{e}");
                let msg = e.to_string();
                assert!(msg.contains(name) && msg.contains("strict"), "{msg}");
            }
        }
    }
}

/// The FMA count a benchmark divides by: the fixture U-Net (base width 4,
/// depth 3, same padding) does `Σ c_in·c_out·k²` multiply-adds per output
/// pixel of each layer, so twice the height and width is four times the
/// work, and twice the batch twice; ONNX Runtime does not say.
#[cfg(feature = "tract")]
#[test]
fn tract_reports_the_multiply_adds_of_a_run() {
    let mut session = Session::from_file(fixture("unet", "model.onnx"), Backend::Tract).unwrap();
    assert_eq!(session.fmas(), None, "nothing planned yet");
    let run = |session: &mut Session, n: usize, h: usize, w: usize| {
        session
            .run(&Tensor4::new(vec![0.5; n * 3 * h * w], [n, 3, h, w]).unwrap())
            .unwrap();
        session.fmas().unwrap()
    };
    let small = run(&mut session, 1, 32, 48);
    // The first 3x3 convolution alone: 3 -> 4 channels over 32x48 pixels.
    assert!(small > 3 * 4 * 9 * 32 * 48, "{small}");
    assert_eq!(run(&mut session, 1, 64, 96), 4 * small);
    assert_eq!(run(&mut session, 2, 32, 48), 2 * small);
}
