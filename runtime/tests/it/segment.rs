//! Pre- and post-processing on hand-computable graphs (tests/data/make_graphs.py)
//! and on the torch-exported fixtures.

use image::{DynamicImage, Rgb, RgbImage};
use unet_runtime::{
    Backend, Ep, Fit, Head, ImageView, PixelFormat, Segmenter, SegmenterOptions, Session, SizeRule,
    Tensor4,
};

use crate::common::*;

/// sigmoid(1), sigmoid(-1), sigmoid(4), sigmoid(-4) (numpy, float64).
const SIG1: f32 = 0.731_058_6;
const SIG_M1: f32 = 0.268_941_4;
const SIG4: f32 = 0.982_013_8;
const SIG_M4: f32 = 0.017_986_2;

/// Left half red, right half green.
fn red_green(w: u32, h: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, _| {
        if x < w / 2 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 255, 0])
        }
    }))
}

/// A deterministic texture.
pub fn texture(w: u32, h: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x * 7 + y * 3) as u8,
            ((x * y) % 251) as u8,
            (255u32.wrapping_sub(x * 2 + y) % 256) as u8,
        ])
    }))
}

fn assert_close(got: f32, want: f32, what: &str) {
    assert!((got - want).abs() < 1e-5, "{what}: got {got}, want {want}");
}

fn backends(test: &str) -> Vec<Backend> {
    let mut v = Vec::new();
    if cfg!(feature = "tract") {
        v.push(Backend::Tract);
    }
    if ort_available(test) {
        v.push(Backend::Ort(Ep::Cpu));
    }
    v
}

#[test]
fn metadata_drives_normalisation_and_threshold() {
    for backend in backends("metadata_drives_normalisation_and_threshold") {
        // 7x5: odd sizes are padded to the size multiple (2) and cropped back.
        let mut s = Segmenter::from_file(data("color.onnx"), backend.clone()).expect("load");
        assert_eq!(s.info().size_rule, SizeRule::Same { multiple: 2 });
        let seg = s.segment(&red_green(7, 5)).expect("segment");
        assert_eq!((seg.width, seg.height, seg.classes), (7, 5, 1));
        for y in 0..5 {
            for x in 0..7 {
                let red = x < 3;
                assert_close(
                    seg.probability(0, y, x),
                    if red { SIG1 } else { SIG_M1 },
                    "p",
                );
                assert_eq!(seg.mask[y * 7 + x], u8::from(red));
            }
        }
        // A threshold above sigmoid(1) empties the mask.
        let options = SegmenterOptions {
            threshold: Some(0.75),
            ..SegmenterOptions::default()
        };
        let mut s = Segmenter::from_file_with(data("color.onnx"), backend, options).expect("load");
        let seg = s.segment(&red_green(4, 4)).expect("segment");
        assert!(seg.mask.iter().all(|&m| m == 0));
    }
}

#[test]
fn channel_order_bgr() {
    for backend in backends("channel_order_bgr") {
        let mut s = Segmenter::from_file(data("color_bgr.onnx"), backend).expect("load");
        // The model sees (B, G, R): pure blue gives logit B - G = 1, red gives 0.
        let blue = DynamicImage::ImageRgb8(RgbImage::from_pixel(4, 4, Rgb([0, 0, 255])));
        let red = DynamicImage::ImageRgb8(RgbImage::from_pixel(4, 4, Rgb([255, 0, 0])));
        assert_close(
            s.segment(&blue).expect("blue").probabilities[0],
            SIG1,
            "blue",
        );
        assert_close(s.segment(&red).expect("red").probabilities[0], 0.5, "red");
        // A BGR buffer of blue pixels is the same image.
        let bgr = [255u8, 0, 0].repeat(16);
        let view = ImageView::new(&bgr, 4, 4, 12, PixelFormat::Bgr8).expect("view");
        assert_close(
            s.segment_buffer(&view).expect("bgr").probabilities[5],
            SIG1,
            "bgr",
        );
    }
}

#[test]
fn in_graph_head_and_normalisation_are_not_applied_twice() {
    for backend in backends("in_graph_head_and_normalisation") {
        let mut s = Segmenter::from_file(data("head_sigmoid.onnx"), backend).expect("load");
        assert_eq!(s.info().head, Head::Sigmoid);
        assert!(s.info().normalize_in_graph);
        let seg = s.segment(&red_green(4, 2)).expect("segment");
        assert_close(seg.probability(0, 1, 0), SIG4, "red");
        assert_close(seg.probability(0, 1, 3), SIG_M4, "green");
    }
}

#[test]
fn defaults_without_metadata_match_a_manual_pipeline() {
    // fixtures/unet/model.onnx is a plain torch export: no metadata, so
    // ImageNet mean/std, RGB, logits (sigmoid here), size multiple 16.
    let path = fixture("unet", "model.onnx");
    for backend in backends("defaults_without_metadata") {
        let mut s = Segmenter::from_file(&path, backend.clone()).expect("load");
        assert_eq!(s.info().size_rule, SizeRule::Same { multiple: 16 });
        assert_eq!(s.info().head, Head::Logits);
        let image = texture(48, 32);
        let seg = s.segment(&image).expect("segment");

        let (mean, std) = ([0.485f32, 0.456, 0.406], [0.229f32, 0.224, 0.225]);
        let rgb = image.to_rgb8();
        let mut input = Tensor4::zeros([1, 3, 32, 48]);
        for (x, y, p) in rgb.enumerate_pixels() {
            for c in 0..3 {
                let i = input.index(0, c, y as usize, x as usize);
                input.data[i] = (p[c] as f32 / 255.0 - mean[c]) / std[c];
            }
        }
        let mut raw = Session::from_file(&path, backend).expect("load");
        let logits = raw.run(&input).expect("run");
        let manual: Vec<f32> = logits
            .data
            .iter()
            .map(|&l| 1.0 / (1.0 + (-l).exp()))
            .collect();
        assert!(max_abs_diff(&seg.probabilities, &manual) < 1e-5);
        let fg = seg.mask.iter().filter(|&&m| m == 1).count();
        let want = manual.iter().filter(|&&p| p > 0.5).count();
        assert_eq!(fg, want);
        // Odd sizes: padded to 48x32 internally, result at the image's size.
        let seg = s.segment(&texture(37, 21)).expect("segment");
        assert_eq!(
            (seg.width, seg.height, seg.probabilities.len()),
            (37, 21, 37 * 21)
        );
    }
}

#[test]
fn batch_equals_single_images() {
    let path = fixture("attention-unet", "model.onnx");
    let mut s = Segmenter::from_file(&path, Backend::Auto).expect("load");
    let images = [texture(40, 24), red_green(40, 24)];
    let batch = s.segment_batch(&images).expect("batch");
    for (image, b) in images.iter().zip(&batch) {
        let single = s.segment(image).expect("single");
        assert!(max_abs_diff(&single.probabilities, &b.probabilities) < 1e-5);
    }
}

#[test]
fn multiclass_softmax_and_argmax() {
    // unet-paper: valid padding, 2 classes, no metadata: geometry given by hand.
    let options = SegmenterOptions {
        size_rule: Some(SizeRule::Valid { depth: 3 }),
        ..SegmenterOptions::default()
    };
    let path = fixture("unet-paper", "model.onnx");
    let mut s = Segmenter::from_file_with(&path, Backend::Auto, options).expect("load");
    let seg = s.segment(&texture(30, 22).grayscale()).expect("segment");
    assert_eq!((seg.width, seg.height, seg.classes), (30, 22, 2));
    let plane = 30 * 22;
    for i in 0..plane {
        let (p0, p1) = (seg.probabilities[i], seg.probabilities[plane + i]);
        assert!((p0 + p1 - 1.0).abs() < 1e-5);
        assert_eq!(seg.mask[i], u8::from(p1 > p0));
    }
}

#[test]
fn resize_fit_returns_the_original_size() {
    let options = SegmenterOptions {
        fit: Fit::Resize {
            width: 8,
            height: 8,
        },
        ..SegmenterOptions::default()
    };
    let mut s =
        Segmenter::from_file_with(data("color.onnx"), Backend::Auto, options).expect("load");
    let red = DynamicImage::ImageRgb8(RgbImage::from_pixel(13, 9, Rgb([255, 0, 0])));
    let seg = s.segment(&red).expect("segment");
    assert_eq!((seg.width, seg.height), (13, 9));
    assert!(seg.probabilities.iter().all(|&p| (p - SIG1).abs() < 1e-5));
}

#[test]
fn raw_tensor_call_post_processes_only() {
    let mut s = Segmenter::from_file(data("color.onnx"), Backend::Auto).expect("load");
    // Already-normalised input: channel 0 = 2, channel 1 = 0 -> logit 2.
    let mut input = Tensor4::zeros([2, 3, 2, 2]);
    for i in 0..4 {
        input.data[i] = 2.0;
    }
    let segs = s.segment_tensor(&input).expect("run");
    assert_eq!(segs.len(), 2);
    assert_close(segs[0].probabilities[0], 0.880_797_1, "sigmoid(2)");
    assert_close(segs[1].probabilities[0], 0.5, "sigmoid(0)");
}
