//! Overlap-tile inference against whole-image inference.

use unet_runtime::{Segmenter, SegmenterOptions, SizeRule, Tiling};

use crate::common::*;
use crate::segment::texture;

fn segmenter(case: &str, geometry: SizeRule, tiling: Option<Tiling>) -> Segmenter {
    let options = SegmenterOptions {
        size_rule: Some(geometry),
        tiling,
        ..SegmenterOptions::default()
    };
    Segmenter::from_file_with(fixture(case, "model.onnx"), cpu_backend(), options).expect("load")
}

#[test]
fn valid_model_tiled_equals_untiled_exactly() {
    // unet-paper fixture: valid padding, depth 3 (margin 44 px per side).
    let g = SizeRule::Valid { depth: 3 };
    let image = texture(100, 70).grayscale();
    let whole = segmenter("unet-paper", g, None)
        .segment(&image)
        .expect("whole");
    let tiling = Tiling {
        tile: 36,
        overlap: 8,
    };
    let tiled = segmenter("unet-paper", g, Some(tiling))
        .segment(&image)
        .expect("tiled");
    assert_eq!(tiled.mask, whole.mask);
    // Every output pixel is computed from the same input values in the same
    // order of layers; tract picks matrix kernels by shape, so sums may
    // round differently in the last bits (measured 8e-7).
    let err = max_abs_diff(&tiled.probabilities, &whole.probabilities);
    assert!(err <= 2e-6, "valid tiling differs by {err}");
}

#[test]
fn same_model_tiled_matches_untiled_away_from_seams() {
    // unet fixture: same padding, depth 3 (multiple 8). 256 px with tiles of
    // 128 overlapping by 64 start at 0, 64, 128: the 64 px at each end of an
    // axis belong to one tile, everything between is blended across a seam
    // where both tiles see their own zero padding.
    let g = SizeRule::Same { multiple: 8 };
    let n = 256usize;
    let image = texture(n as u32, n as u32);
    let whole = segmenter("unet", g, None).segment(&image).expect("whole");
    let tiling = Tiling {
        tile: 128,
        overlap: 64,
    };
    let tiled = segmenter("unet", g, Some(tiling))
        .segment(&image)
        .expect("tiled");
    assert_eq!((tiled.width, tiled.height), (n, n));
    let single = |v: usize| !(64..192).contains(&v);
    let mut away = 0.0f32;
    for y in (0..n).filter(|&y| single(y)) {
        for x in (0..n).filter(|&x| single(x)) {
            let i = y * n + x;
            away = away.max((tiled.probabilities[i] - whole.probabilities[i]).abs());
            assert_eq!(tiled.mask[i], whole.mask[i], "mask at ({x}, {y})");
        }
    }
    assert!(away < 1e-5, "away from seams: {away}");
    assert!(tiled.probabilities.iter().all(|p| (0.0..=1.0).contains(p)));
}

/// Tiles of a few pixels leave a U-Net no context (masks come out nearly
/// empty): refused, naming the smallest tile that works.
#[test]
fn tiles_too_small_for_the_model_are_refused() {
    let g = SizeRule::Same { multiple: 8 };
    let image = texture(64, 48);
    let tiling = Tiling {
        tile: 7,
        overlap: 0,
    };
    let e = segmenter("unet", g, Some(tiling))
        .segment(&image)
        .expect_err("a 7 px tile");
    assert!(e.to_string().contains("at least 32"), "{e}");
}
