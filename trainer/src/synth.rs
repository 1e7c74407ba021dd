//! Deterministic synthetic endoscopy-like frames with exact polyp masks, so
//! `unet-train --demo` trains offline: generated in memory ([`demo_source`])
//! or written to disk in Kvasir-SEG layout ([`write_synthetic`]). Sample `i`
//! of seed `s` is always the same image, whatever the size of the set or the
//! order of generation.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::data::{MemorySource, RawSample};
use crate::error::{Result, TrainError};

/// One polyp: a star-shaped blob whose radius varies smoothly with the angle.
struct Blob {
    cx: f32,
    cy: f32,
    radius: f32,
    aspect: f32,
    angle: f32,
    /// (amplitude, phase) of harmonics 2..=4 of the radial perturbation.
    harmonics: [(f32, f32); 3],
    colour: [f32; 3],
}

impl Blob {
    /// Normalised radial distance: < 1 inside, 1 on the boundary.
    fn distance(&self, x: f32, y: f32) -> f32 {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let (s, c) = self.angle.sin_cos();
        let u = dx * c + dy * s;
        let v = (-dx * s + dy * c) * self.aspect;
        let theta = v.atan2(u);
        let mut r = self.radius;
        for (k, &(a, phase)) in self.harmonics.iter().enumerate() {
            r *= 1.0 + a * ((k as f32 + 2.0) * theta + phase).sin();
        }
        (u * u + v * v).sqrt() / r
    }
}

/// Smooth random field: bilinear interpolation of a `cells x cells` random grid.
fn value_noise(rng: &mut ChaCha8Rng, size: usize, cells: usize) -> Vec<f32> {
    let n = cells + 1;
    let grid: Vec<f32> = (0..n * n).map(|_| rng.random::<f32>()).collect();
    let mut out = vec![0f32; size * size];
    let scale = cells as f32 / size as f32;
    for y in 0..size {
        let gy = y as f32 * scale;
        let (y0, fy) = (gy.floor() as usize, gy.fract());
        for x in 0..size {
            let gx = x as f32 * scale;
            let (x0, fx) = (gx.floor() as usize, gx.fract());
            // Smoothstep weights avoid visible grid creases.
            let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
            let g = |i: usize, j: usize| grid[(y0 + j).min(cells) * n + (x0 + i).min(cells)];
            let top = g(0, 0) * (1.0 - sx) + g(1, 0) * sx;
            let bottom = g(0, 1) * (1.0 - sx) + g(1, 1) * sx;
            out[y * size + x] = top * (1.0 - sy) + bottom * sy;
        }
    }
    out
}

/// `[1, 2, 1] / 4` separable blur, borders replicated.
fn blur(image: &mut [f32], size: usize, channels: usize) {
    let mut tmp = image.to_vec();
    for y in 0..size {
        for x in 0..size {
            let l = x.saturating_sub(1);
            let r = (x + 1).min(size - 1);
            for c in 0..channels {
                let at = |xx: usize| image[(y * size + xx) * channels + c];
                tmp[(y * size + x) * channels + c] = 0.25 * at(l) + 0.5 * at(x) + 0.25 * at(r);
            }
        }
    }
    for y in 0..size {
        let t = y.saturating_sub(1);
        let b = (y + 1).min(size - 1);
        for x in 0..size {
            for c in 0..channels {
                let at = |yy: usize| tmp[(yy * size + x) * channels + c];
                image[(y * size + x) * channels + c] = 0.25 * at(t) + 0.5 * at(y) + 0.25 * at(b);
            }
        }
    }
}

/// The `index`-th synthetic frame of `seed`, `size x size`, RGB in [0, 1], mask 0/1.
pub fn generate(seed: u64, index: u64, size: usize) -> RawSample {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ index.wrapping_mul(0xA076_1D64_78BD_642F));
    let s = size as f32;
    // Mucosa: pink-red base tone with low-frequency texture.
    let base = [
        rng.random_range(0.72..0.90f32),
        rng.random_range(0.32..0.48f32),
        rng.random_range(0.28..0.40f32),
    ];
    let coarse = value_noise(&mut rng, size, 4);
    let mid = value_noise(&mut rng, size, 9);
    let fine = value_noise(&mut rng, size, 24);
    // Level lines of a smooth field look like superficial vessels.
    let vessels = value_noise(&mut rng, size, 6);

    let blobs: Vec<Blob> = (0..if rng.random::<f32>() < 0.7 { 1 } else { 2 })
        .map(|_| {
            let radius = rng.random_range(0.08..0.24f32) * s;
            let margin = radius / s + 0.05;
            Blob {
                cx: rng.random_range(margin..1.0 - margin) * s,
                cy: rng.random_range(margin..1.0 - margin) * s,
                radius,
                aspect: rng.random_range(0.7..1.35f32),
                angle: rng.random_range(0.0..std::f32::consts::PI),
                harmonics: [
                    (
                        rng.random_range(0.0..0.12f32),
                        rng.random_range(0.0..6.3f32),
                    ),
                    (
                        rng.random_range(0.0..0.07f32),
                        rng.random_range(0.0..6.3f32),
                    ),
                    (
                        rng.random_range(0.0..0.04f32),
                        rng.random_range(0.0..6.3f32),
                    ),
                ],
                // Polyps are paler and more orange than the surrounding mucosa.
                colour: [
                    (base[0] + rng.random_range(0.02..0.10f32)).min(1.0),
                    base[1] + rng.random_range(0.10..0.20f32),
                    base[2] + rng.random_range(0.02..0.10f32),
                ],
            }
        })
        .collect();

    let mut image = vec![0f32; size * size * 3];
    let mut mask = vec![0u8; size * size];
    for y in 0..size {
        for x in 0..size {
            let i = y * size + x;
            let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
            let texture = 0.14 * (coarse[i] - 0.5) + 0.07 * (mid[i] - 0.5) + 0.04 * (fine[i] - 0.5);
            let vessel = if (vessels[i] - 0.5).abs() < 0.012 {
                0.78
            } else {
                1.0
            };
            let mut rgb = [0f32; 3];
            for c in 0..3 {
                rgb[c] = base[c] * (1.0 + texture) * if c == 0 { 1.0 } else { vessel };
            }
            for blob in &blobs {
                let d = blob.distance(fx, fy);
                if d < 1.0 {
                    mask[i] = 1;
                    // Dome shading: brighter towards the top of the polyp.
                    let shade = 0.82 + 0.3 * (1.0 - d * d).sqrt();
                    let grain = 1.0 + 0.08 * (fine[i] - 0.5);
                    for (v, c) in rgb.iter_mut().zip(blob.colour) {
                        *v = c * shade * grain;
                    }
                } else if d < 1.12 {
                    // Shadow ring where the polyp meets the wall.
                    for v in &mut rgb {
                        *v *= 0.8 + 0.2 * (d - 1.0) / 0.12;
                    }
                }
            }
            image[i * 3..i * 3 + 3].copy_from_slice(&rgb);
        }
    }

    // Specular highlights, mostly on the polyps (they do not change the mask).
    let highlights = rng.random_range(3..9);
    for h in 0..highlights {
        let (cx, cy) = match blobs.get(h % 3) {
            Some(b) if h < 3 => (
                b.cx + rng.random_range(-0.5..0.2f32) * b.radius,
                b.cy + rng.random_range(-0.5..0.2f32) * b.radius,
            ),
            _ => (rng.random_range(0.0..s), rng.random_range(0.0..s)),
        };
        let r = rng.random_range(0.008..0.03f32) * s + 0.5;
        let (x0, x1) = (
            (cx - r).max(0.0) as usize,
            ((cx + r) as usize + 1).min(size),
        );
        let (y0, y1) = (
            (cy - r).max(0.0) as usize,
            ((cy + r) as usize + 1).min(size),
        );
        for y in y0..y1 {
            for x in x0..x1 {
                let d2 = ((x as f32 + 0.5 - cx).powi(2) + (y as f32 + 0.5 - cy).powi(2)) / (r * r);
                if d2 < 1.0 {
                    let a = (1.0 - d2).sqrt();
                    for v in &mut image[(y * size + x) * 3..(y * size + x) * 3 + 3] {
                        *v = *v * (1.0 - a) + 0.98 * a;
                    }
                }
            }
        }
    }

    for _ in 0..rng.random_range(1..3) {
        blur(&mut image, size, 3);
    }
    // Vignetting of the endoscope's light source, plus sensor noise.
    let strength = rng.random_range(0.35..0.6f32);
    let half = s / 2.0;
    for y in 0..size {
        for x in 0..size {
            let r2 = ((x as f32 + 0.5 - half).powi(2) + (y as f32 + 0.5 - half).powi(2))
                / (2.0 * half * half);
            let v = 1.0 - strength * r2;
            for c in 0..3 {
                let p = &mut image[(y * size + x) * 3 + c];
                let n: f32 = StandardNormal.sample(&mut rng);
                *p = (*p * v + 0.012 * n).clamp(0.0, 1.0);
            }
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

/// Synthetic samples generated at the training size (in parallel; order-independent).
pub fn demo_source(count: usize, size: usize, seed: u64) -> MemorySource {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = count.div_ceil(threads).max(1);
    let samples = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .step_by(chunk)
            .map(|start| {
                scope.spawn(move || {
                    (start..(start + chunk).min(count))
                        .map(|i| generate(seed, i as u64, size))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            // A generator that panicked is a bug: re-raise it rather than drop its samples.
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    MemorySource { samples }
}

/// Writes `count` synthetic samples to `dir` in Kvasir-SEG layout
/// (`images/NAME.jpg`, `masks/NAME.png` with 0/255).
pub fn write_synthetic(dir: &Path, count: usize, size: usize, seed: u64) -> Result<()> {
    for sub in ["images", "masks"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|source| TrainError::Io {
            dir: dir.join(sub),
            what: "cannot create".into(),
            source,
        })?;
    }
    for i in 0..count {
        let s = generate(seed, i as u64, size);
        let name = format!("synthetic_{i:04}");
        let rgb: Vec<u8> = s.image.iter().map(|v| (v * 255.0).round() as u8).collect();
        let mask: Vec<u8> = s
            .mask
            .iter()
            .map(|&m| if m > 0 { 255 } else { 0 })
            .collect();
        let mut jpeg = Vec::new();
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95);
        let image_path = dir.join("images").join(format!("{name}.jpg"));
        image::ImageEncoder::write_image(
            encoder,
            &rgb,
            size as u32,
            size as u32,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|reason| TrainError::Image {
            path: image_path.clone(),
            reason,
        })?;
        crate::files::atomic_write(&image_path, &jpeg)?;
        let mask_path = dir.join("masks").join(format!("{name}.png"));
        crate::files::atomic_write(
            &mask_path,
            &crate::report::encode_png(&mask, size, size, 1, &mask_path)?,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_varied() {
        let a = generate(7, 3, 32);
        let b = generate(7, 3, 32);
        let c = generate(7, 4, 32);
        assert_eq!(a.image, b.image);
        assert_eq!(a.mask, b.mask);
        assert_ne!(a.mask, c.mask);
        let fg = a.mask.iter().filter(|&&m| m == 1).count();
        // Radii 8-24% of the side: between ~1% and ~25% of the area (two blobs at most).
        assert!(fg > 5 && fg < 600, "foreground pixels {fg}");
        assert!(a.image.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn polyps_differ_in_colour_from_mucosa() {
        let s = generate(1, 0, 64);
        let mean = |want: u8| {
            let (mut sum, mut n) = (0f32, 0f32);
            for (i, &m) in s.mask.iter().enumerate() {
                if m == want {
                    sum += s.image[i * 3 + 1];
                    n += 1.0;
                }
            }
            sum / n
        };
        // Green is where polyp and mucosa differ most (0.10-0.20 before shading).
        assert!(mean(1) - mean(0) > 0.05, "{} vs {}", mean(1), mean(0));
    }
}
