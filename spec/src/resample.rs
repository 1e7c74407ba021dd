//! The one resampler: training and inference bring frames to the network's
//! size with this code, so a device sees the pixels the model was validated on.
//!
//! Separable convolution with PIL's coefficients (`Image.resize`, the same
//! filter torchvision applies with `antialias=True`): sample centres at
//! half pixels, and when downscaling the filter widens by the scale factor,
//! so a 600-pixel frame brought to 128 averages every source pixel instead of
//! point-sampling one in five (aliasing). Plain scalar f32, so every CPU and
//! ISA (x86-64 AVX2/AVX-512, ARM64 NEON) computes the same values.

use serde::{Deserialize, Serialize};

/// The resampling filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    /// Triangle filter, antialiased when downscaling (PIL's `BILINEAR`).
    #[default]
    Bilinear,
    /// The source pixel under each sample centre (masks, class indices).
    Nearest,
}

/// A planar f32 image, `[channels, height, width]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Planar {
    pub channels: usize,
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

impl Planar {
    /// Wraps `data`, which must hold `channels * height * width` values.
    pub fn new(channels: usize, width: usize, height: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), channels * width * height, "planar size");
        Planar {
            channels,
            width,
            height,
            data,
        }
    }

    pub fn zeros(channels: usize, width: usize, height: usize) -> Self {
        Self::new(
            channels,
            width,
            height,
            vec![0.0; channels * width * height],
        )
    }

    /// 8-bit interleaved pixels (`channels` bytes each, rows `stride` bytes
    /// apart) scaled to [0, 1], as `image`'s `to_rgb32f` does.
    pub fn from_interleaved_u8(
        pixels: &[u8],
        channels: usize,
        width: usize,
        height: usize,
        stride: usize,
    ) -> Self {
        let mut out = Self::zeros(channels, width, height);
        for y in 0..height {
            let row = &pixels[y * stride..][..width * channels];
            for c in 0..channels {
                let dst = &mut out.data[(c * height + y) * width..][..width];
                for (x, d) in dst.iter_mut().enumerate() {
                    *d = row[x * channels + c] as f32 / 255.0;
                }
            }
        }
        out
    }

    pub fn plane(&self, c: usize) -> &[f32] {
        &self.data[c * self.width * self.height..][..self.width * self.height]
    }

    /// The `w x h` window at `(left, top)`, which must lie inside.
    pub fn crop(&self, left: usize, top: usize, w: usize, h: usize) -> Planar {
        let mut out = Planar::zeros(self.channels, w, h);
        for c in 0..self.channels {
            for y in 0..h {
                let src = &self.plane(c)[(top + y) * self.width + left..][..w];
                out.data[(c * h + y) * w..][..w].copy_from_slice(src);
            }
        }
        out
    }
}

/// Taps of one output sample: the first source index and the weights.
struct Taps {
    start: usize,
    weights: Vec<f32>,
}

/// PIL's `precompute_coeffs` for the triangle filter (support 1).
fn axis_taps(inp: usize, out: usize, filter: Filter) -> Vec<Taps> {
    let scale = inp as f64 / out as f64;
    (0..out)
        .map(|o| {
            let centre = (o as f64 + 0.5) * scale;
            if filter == Filter::Nearest {
                let i = (centre.floor() as usize).min(inp - 1);
                return Taps {
                    start: i,
                    weights: vec![1.0],
                };
            }
            let filterscale = scale.max(1.0);
            let support = filterscale;
            let lo = ((centre - support + 0.5).floor().max(0.0) as usize).min(inp - 1);
            let hi = ((centre + support + 0.5).floor() as usize).clamp(lo + 1, inp);
            let raw: Vec<f64> = (lo..hi)
                .map(|i| {
                    let x = (i as f64 - centre + 0.5) / filterscale;
                    (1.0 - x.abs()).max(0.0)
                })
                .collect();
            let sum: f64 = raw.iter().sum();
            Taps {
                start: lo,
                weights: raw.iter().map(|w| (w / sum) as f32).collect(),
            }
        })
        .collect()
}

/// Resizes every plane of `src` to `width x height`: horizontal pass, then
/// vertical, as PIL.
pub fn resample(src: &Planar, width: usize, height: usize, filter: Filter) -> Planar {
    assert!(width > 0 && height > 0 && src.width > 0 && src.height > 0);
    if (width, height) == (src.width, src.height) {
        return src.clone();
    }
    let xs = axis_taps(src.width, width, filter);
    let ys = axis_taps(src.height, height, filter);
    let mut out = Planar::zeros(src.channels, width, height);
    let mut rows = vec![0.0f32; src.height * width];
    for c in 0..src.channels {
        let plane = src.plane(c);
        for (y, row) in rows.chunks_exact_mut(width).enumerate() {
            let line = &plane[y * src.width..][..src.width];
            for (d, t) in row.iter_mut().zip(&xs) {
                *d = line[t.start..][..t.weights.len()]
                    .iter()
                    .zip(&t.weights)
                    .map(|(v, w)| v * w)
                    .sum();
            }
        }
        let dst = &mut out.data[c * width * height..][..width * height];
        for (row, t) in dst.chunks_exact_mut(width).zip(&ys) {
            for (k, &w) in t.weights.iter().enumerate() {
                let line = &rows[(t.start + k) * width..][..width];
                for (d, v) in row.iter_mut().zip(line) {
                    *d += v * w;
                }
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::excessive_precision)] // PIL's values as printed
mod tests {
    use super::*;

    /// Pixel (x, y) of the 7x5 test image: `((x * 37 + y * 11) % 17) / 16`.
    fn pattern() -> Planar {
        let data = (0..5)
            .flat_map(|y| (0..7).map(move |x| ((x * 37 + y * 11) % 17) as f32 / 16.0))
            .collect();
        Planar::new(1, 7, 5, data)
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() < 1e-5, "value {i}: {g} vs PIL's {w}");
        }
    }

    // Expected values: PIL 13's `Image.fromarray(a, "F").resize(size, Image.BILINEAR)`
    // on the same 7x5 pattern.
    #[test]
    fn downscale_matches_pil_antialiased_bilinear() {
        let got = resample(&pattern(), 3, 2, Filter::Bilinear);
        assert_close(&got.data, &PIL_DOWN_3X2);
    }

    #[test]
    fn upscale_matches_pil_bilinear() {
        let got = resample(&pattern(), 11, 8, Filter::Bilinear);
        assert_close(&got.data, &PIL_UP_11X8);
    }

    #[test]
    fn constant_images_stay_constant_and_nearest_picks_pixels() {
        let flat = Planar::new(2, 9, 4, vec![0.25; 72]);
        let down = resample(&flat, 4, 3, Filter::Bilinear);
        assert!(down.data.iter().all(|&v| (v - 0.25).abs() < 1e-6));
        let n = resample(&pattern(), 3, 2, Filter::Nearest);
        // Centres at x = 1.17, 3.5, 5.83 -> 1, 3, 5; y = 1.25, 3.75 -> 1, 3.
        let p = pattern();
        let at = |x: usize, y: usize| p.data[y * 7 + x];
        assert_eq!(
            n.data,
            vec![at(1, 1), at(3, 1), at(5, 1), at(1, 3), at(3, 3), at(5, 3)]
        );
    }

    include!("resample_golden.rs");
}
