//! Augmentation and preprocessing: the frame is resized with the resampler the
//! runtime shares (`unet_spec::resample`), then one inverse geometric map per
//! output pixel (flips, rotation, elastic deformation as in the U-Net paper),
//! sampled bilinearly for the image and nearest for the mask (from the
//! original mask, under the same map) so both stay aligned; then gray-value
//! jitter and normalisation.

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use unet_spec::{Filter, InputGeometry, ResizeMode};

use crate::data::RawSample;

/// Random augmentation parameters (training split only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AugmentConfig {
    /// Probability of a horizontal flip.
    pub hflip: f32,
    /// Probability of a vertical flip.
    pub vflip: f32,
    /// Rotation angle drawn uniformly from `[-rotate, rotate]` degrees.
    pub rotate_degrees: f32,
    /// Standard deviation (output pixels) of the displacements on the 3x3 grid; 0 disables.
    pub elastic_sigma: f32,
    /// Probability of an elastic deformation.
    pub elastic_prob: f32,
    /// Additive brightness offset drawn from `[-brightness, brightness]`.
    pub brightness: f32,
    /// Contrast factor drawn from `[1 - contrast, 1 + contrast]`.
    pub contrast: f32,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            hflip: 0.5,
            vflip: 0.5,
            rotate_degrees: 20.0,
            elastic_sigma: 10.0,
            elastic_prob: 0.5,
            brightness: 0.1,
            contrast: 0.15,
        }
    }
}

impl AugmentConfig {
    /// No randomness: resize and normalise only.
    pub fn none() -> Self {
        AugmentConfig {
            hflip: 0.0,
            vflip: 0.0,
            rotate_degrees: 0.0,
            elastic_sigma: 0.0,
            elastic_prob: 0.0,
            brightness: 0.0,
            contrast: 0.0,
        }
    }
}

/// A network-ready sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// `[C, H, W]`, normalised.
    pub image: Vec<f32>,
    /// `[H, W]` class indices.
    pub mask: Vec<u8>,
}

/// The geometric part of one draw, shared by image and mask.
struct Geometry {
    hflip: bool,
    vflip: bool,
    /// Radians.
    angle: f32,
    /// Displacements `(dx, dy)` on the 3x3 grid, row-major; `None` = no deformation.
    grid: Option<[[f32; 2]; 9]>,
}

/// Catmull-Rom cubic weights for fractional offset `t` in [0, 1).
fn cubic_weights(t: f32) -> [f32; 4] {
    let t2 = t * t;
    let t3 = t2 * t;
    [
        0.5 * (-t3 + 2.0 * t2 - t),
        0.5 * (3.0 * t3 - 5.0 * t2 + 2.0),
        0.5 * (-3.0 * t3 + 4.0 * t2 + t),
        0.5 * (t3 - t2),
    ]
}

/// Bicubic interpolation of the 3x3 displacement grid at grid coordinates
/// `(gx, gy)` in [0, 2]; nodes beyond the grid repeat the edge ones.
fn grid_displacement(grid: &[[f32; 2]; 9], gx: f32, gy: f32) -> [f32; 2] {
    let (ix, fx) = ((gx.floor() as i32).min(1), gx - (gx.floor()).min(1.0));
    let (iy, fy) = ((gy.floor() as i32).min(1), gy - (gy.floor()).min(1.0));
    let (wx, wy) = (cubic_weights(fx), cubic_weights(fy));
    let mut out = [0f32; 2];
    for (j, wyj) in wy.iter().enumerate() {
        let y = (iy + j as i32 - 1).clamp(0, 2) as usize;
        for (i, wxi) in wx.iter().enumerate() {
            let x = (ix + i as i32 - 1).clamp(0, 2) as usize;
            let w = wxi * wyj;
            out[0] += w * grid[y * 3 + x][0];
            out[1] += w * grid[y * 3 + x][1];
        }
    }
    out
}

impl Geometry {
    fn is_identity(&self) -> bool {
        !self.hflip && !self.vflip && self.angle == 0.0 && self.grid.is_none()
    }

    fn identity() -> Self {
        Geometry {
            hflip: false,
            vflip: false,
            angle: 0.0,
            grid: None,
        }
    }

    fn draw(cfg: &AugmentConfig, rng: &mut impl Rng) -> Self {
        let hflip = rng.random::<f32>() < cfg.hflip;
        let vflip = rng.random::<f32>() < cfg.vflip;
        let angle = if cfg.rotate_degrees > 0.0 {
            rng.random_range(-cfg.rotate_degrees..=cfg.rotate_degrees)
                .to_radians()
        } else {
            0.0
        };
        let grid = if cfg.elastic_sigma > 0.0 && rng.random::<f32>() < cfg.elastic_prob {
            let mut g = [[0f32; 2]; 9];
            for v in g.iter_mut().flatten() {
                let n: f32 = StandardNormal.sample(rng);
                *v = n * cfg.elastic_sigma;
            }
            Some(g)
        } else {
            None
        };
        Geometry {
            hflip,
            vflip,
            angle,
            grid,
        }
    }

    /// Source pixel coordinates (continuous, pixel centres at +0.5) of output pixel `(x, y)`.
    fn source(&self, x: usize, y: usize, out: (usize, usize), src: (usize, usize)) -> (f32, f32) {
        let (w, h) = (out.0 as f32, out.1 as f32);
        let (mut px, mut py) = (x as f32 + 0.5, y as f32 + 0.5);
        if let Some(grid) = &self.grid {
            let gx = (px / w * 2.0).clamp(0.0, 2.0);
            let gy = (py / h * 2.0).clamp(0.0, 2.0);
            let d = grid_displacement(grid, gx, gy);
            px += d[0];
            py += d[1];
        }
        if self.angle != 0.0 {
            let (s, c) = self.angle.sin_cos();
            let (dx, dy) = (px - w / 2.0, py - h / 2.0);
            px = w / 2.0 + c * dx - s * dy;
            py = h / 2.0 + s * dx + c * dy;
        }
        if self.hflip {
            px = w - px;
        }
        if self.vflip {
            py = h - py;
        }
        (px * src.0 as f32 / w, py * src.1 as f32 / h)
    }
}

/// Resizes `raw` to `width x height` with the resampler the runtime uses
/// (`unet_spec::resample`, stretched as [`ResizeMode::Stretch`] records), and
/// with `aug` randomly transforms it at that size; then normalises
/// `(x - mean) / std` per channel. Without `aug` the image is exactly the
/// tensor the runtime feeds the exported model for the same frame.
pub fn prepare(
    raw: &RawSample,
    width: usize,
    height: usize,
    aug: Option<(&AugmentConfig, &mut dyn rand::RngCore)>,
    mean: &[f32],
    std: &[f32],
) -> Prepared {
    let c = raw.channels;
    let (sw, sh) = (raw.width, raw.height);
    let geometry = InputGeometry {
        width,
        height,
        resize: ResizeMode::Stretch,
        filter: Filter::Bilinear,
        size_multiple: 1,
    };
    let (mut resized, _) = geometry.fit(&raw.planar());
    let plane = width * height;
    let mut mask = vec![0u8; plane];
    let (warp, gain, offset) = match aug {
        Some((cfg, mut rng)) => {
            let g = Geometry::draw(cfg, &mut rng);
            let gain = if cfg.contrast > 0.0 {
                rng.random_range(1.0 - cfg.contrast..=1.0 + cfg.contrast)
            } else {
                1.0
            };
            let offset = if cfg.brightness > 0.0 {
                rng.random_range(-cfg.brightness..=cfg.brightness)
            } else {
                0.0
            };
            (Some(g), gain, offset)
        }
        None => (None, 1.0, 0.0),
    };
    let out = (width, height);
    let warp = warp.unwrap_or_else(Geometry::identity);
    if !warp.is_identity() {
        // Bilinear within the resized frame (edges replicated).
        let src = resized.clone();
        for y in 0..height {
            for x in 0..width {
                let (sx, sy) = warp.source(x, y, out, out);
                let fx = (sx - 0.5).clamp(0.0, (width - 1) as f32);
                let fy = (sy - 0.5).clamp(0.0, (height - 1) as f32);
                let (x0, y0) = (fx.floor() as usize, fy.floor() as usize);
                let (x1, y1) = ((x0 + 1).min(width - 1), (y0 + 1).min(height - 1));
                let (ax, ay) = (fx - x0 as f32, fy - y0 as f32);
                for ch in 0..c {
                    let p = |xx: usize, yy: usize| src.data[ch * plane + yy * width + xx];
                    let top = p(x0, y0) * (1.0 - ax) + p(x1, y0) * ax;
                    let bottom = p(x0, y1) * (1.0 - ax) + p(x1, y1) * ax;
                    resized.data[ch * plane + y * width + x] = top * (1.0 - ay) + bottom * ay;
                }
            }
        }
    }
    for y in 0..height {
        for x in 0..width {
            // Mask: nearest source pixel under the same continuous map.
            let (sx, sy) = warp.source(x, y, out, (sw, sh));
            let mx = (sx.floor().max(0.0) as usize).min(sw - 1);
            let my = (sy.floor().max(0.0) as usize).min(sh - 1);
            mask[y * width + x] = raw.mask[my * sw + mx];
        }
    }
    if gain != 1.0 || offset != 0.0 {
        for v in &mut resized.data {
            *v = ((*v - 0.5) * gain + 0.5 + offset).clamp(0.0, 1.0);
        }
    }
    unet_spec::preprocessing::normalise(&mut resized, mean, std);
    Prepared {
        image: resized.data,
        mask,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// A white square on black with the square as its mask.
    fn square(size: usize) -> RawSample {
        let mut image = vec![0f32; size * size * 3];
        let mut mask = vec![0u8; size * size];
        for y in size / 4..size * 3 / 4 {
            for x in size / 3..size * 3 / 4 {
                mask[y * size + x] = 1;
                image[(y * size + x) * 3..(y * size + x) * 3 + 3].fill(1.0);
            }
        }
        RawSample {
            width: size,
            height: size,
            channels: 3,
            image,
            mask,
        }
    }

    #[test]
    fn identity_resize_keeps_values() {
        let raw = square(32);
        let p = prepare(&raw, 32, 32, None, &[0.0; 3], &[1.0; 3]);
        assert_eq!(p.mask, raw.mask);
        let red: Vec<f32> = raw.image.iter().step_by(3).copied().collect();
        assert_eq!(&p.image[..32 * 32], red.as_slice());
    }

    #[test]
    fn normalisation_uses_mean_and_std() {
        let raw = square(8);
        let p = prepare(&raw, 8, 8, None, &[0.5, 0.25, 0.0], &[0.5, 0.25, 2.0]);
        // Pixel (0, 0) is black, (4, 4) is inside the square.
        assert_eq!(p.image[0], -1.0);
        assert_eq!(p.image[64], -1.0);
        assert_eq!(p.image[128], 0.0);
        assert_eq!(p.image[4 * 8 + 4], 1.0);
        assert_eq!(p.image[64 + 4 * 8 + 4], 3.0);
        assert_eq!(p.image[128 + 4 * 8 + 4], 0.5);
    }

    #[test]
    fn downscale_by_two_maps_blocks() {
        let raw = square(64);
        let p = prepare(&raw, 32, 32, None, &[0.0; 3], &[1.0; 3]);
        // Square rows 16..48, cols 21..48 at 64 -> rows 8..24, cols ~10.5..24 at 32.
        assert_eq!(p.mask[16 * 32 + 16], 1);
        assert_eq!(p.mask[4 * 32 + 4], 0);
        let fg = p.mask.iter().filter(|&&m| m == 1).count();
        let expected = raw.mask.iter().filter(|&&m| m == 1).count() / 4;
        assert!(fg.abs_diff(expected) <= 16, "{fg} vs {expected}");
    }

    /// Every geometric augmentation keeps the square under its mask: bright
    /// pixels are foreground and dark pixels background, except on the
    /// one-pixel interpolation rim.
    #[test]
    fn augmentation_keeps_image_and_mask_aligned() {
        let raw = square(48);
        let cfg = AugmentConfig {
            hflip: 0.5,
            vflip: 0.5,
            rotate_degrees: 40.0,
            elastic_sigma: 4.0,
            elastic_prob: 1.0,
            brightness: 0.0,
            contrast: 0.0,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut changed = 0;
        for _ in 0..40 {
            let p = prepare(&raw, 40, 40, Some((&cfg, &mut rng)), &[0.0; 3], &[1.0; 3]);
            let mut fg = 0;
            for i in 0..40 * 40 {
                let v = p.image[i];
                if v > 0.99 {
                    assert_eq!(p.mask[i], 1, "bright pixel {i} outside the mask");
                } else if v < 0.01 {
                    assert_eq!(p.mask[i], 0, "dark pixel {i} inside the mask");
                }
                fg += p.mask[i] as usize;
            }
            // The square (27x24 of 48x48) keeps roughly its share of the area.
            let share = fg as f32 / 1600.0;
            assert!((0.08..0.45).contains(&share), "foreground share {share}");
            let plain = prepare(&raw, 40, 40, None, &[0.0; 3], &[1.0; 3]);
            if p.mask != plain.mask {
                changed += 1;
            }
        }
        assert!(
            changed >= 38,
            "augmentation changed only {changed} of 40 draws"
        );
    }

    #[test]
    fn horizontal_flip_mirrors_exactly() {
        let raw = square(16);
        let cfg = AugmentConfig {
            hflip: 1.0,
            ..AugmentConfig::none()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let p = prepare(&raw, 16, 16, Some((&cfg, &mut rng)), &[0.0; 3], &[1.0; 3]);
        for y in 0..16 {
            for x in 0..16 {
                assert_eq!(p.mask[y * 16 + x], raw.mask[y * 16 + 15 - x]);
            }
        }
    }

    #[test]
    fn elastic_grid_interpolates_nodes() {
        let mut grid = [[0f32; 2]; 9];
        for (i, g) in grid.iter_mut().enumerate() {
            *g = [i as f32, -(i as f32)];
        }
        // Catmull-Rom passes through the nodes.
        assert_eq!(grid_displacement(&grid, 1.0, 1.0), [4.0, -4.0]);
        assert_eq!(grid_displacement(&grid, 0.0, 0.0), [0.0, 0.0]);
        assert_eq!(grid_displacement(&grid, 2.0, 2.0), [8.0, -8.0]);
        // Linear data along x (values x + 3y) is reproduced between nodes away from the edge.
        let d = grid_displacement(&grid, 1.5, 1.0);
        assert!((d[0] - 4.5).abs() < 0.07, "{d:?}");
    }

    #[test]
    fn same_seed_same_draw() {
        let raw = square(24);
        let cfg = AugmentConfig::default();
        let a = prepare(
            &raw,
            24,
            24,
            Some((&cfg, &mut ChaCha8Rng::seed_from_u64(9))),
            &[0.0; 3],
            &[1.0; 3],
        );
        let b = prepare(
            &raw,
            24,
            24,
            Some((&cfg, &mut ChaCha8Rng::seed_from_u64(9))),
            &[0.0; 3],
            &[1.0; 3],
        );
        assert_eq!(a, b);
    }
}
