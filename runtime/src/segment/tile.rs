//! Overlap-tile inference (Ronneberger et al. 2015, section 2 and Fig. 2).
//!
//! Tiles start at multiples of the model's pooling stride (2^depth) in image
//! coordinates, the same grid the untiled run uses, so every pooling window
//! sees the same pixels; the last tile may run past the image into mirrored
//! content instead of being shifted back off the grid. For `valid` models
//! every output pixel then depends on exactly the same input values whichever
//! tile computes it, and each pixel is taken from one tile: tiled equals
//! untiled. `same` models zero-pad at tile borders, so overlaps are blended
//! with linear ramps and results agree away from the seams.

use unet_spec::{Planar, SizeRule};

use super::{postprocess, preprocess, Segmentation, Segmenter, Tiling};
use crate::error::{Result, RuntimeError};
use crate::session::Tensor4;

/// One axis: tile starts and per-pixel weights of each tile.
struct Axis {
    starts: Vec<usize>,
    /// `weights[k][i]`: weight of tile `k` at its own output pixel `i`.
    weights: Vec<Vec<f32>>,
}

fn axis(len: usize, tile: usize, stride: usize, hard: bool) -> Axis {
    let mut starts = vec![0];
    while starts[starts.len() - 1] + tile < len {
        let next = starts[starts.len() - 1] + stride;
        starts.push(next);
    }
    let k_max = starts.len() - 1;
    let weights = starts
        .iter()
        .enumerate()
        .map(|(k, &p)| {
            (0..tile)
                .map(|i| {
                    let y = p + i;
                    // Overlap with the previous and the next tile.
                    let lead = (k > 0).then(|| starts[k - 1] + tile - p);
                    let trail = (k < k_max).then(|| p + tile - starts[k + 1]);
                    if hard {
                        // Split each overlap in its middle.
                        let from = lead.map_or(0, |o| p + o / 2);
                        let to = trail.map_or(usize::MAX, |o| starts[k + 1] + o / 2);
                        f32::from(u8::from(y >= from && y < to))
                    } else {
                        let mut w = 1.0f32;
                        if let Some(o) = lead.filter(|&o| o > 0) {
                            w = w.min((i + 1) as f32 / (o + 1) as f32);
                        }
                        if let Some(o) = trail.filter(|&o| o > 0) {
                            w = w.min((tile - i) as f32 / (o + 1) as f32);
                        }
                        w
                    }
                })
                .collect()
        })
        .collect();
    Axis { starts, weights }
}

impl Segmenter {
    pub(super) fn segment_tiled(&mut self, planar: &Planar, t: Tiling) -> Result<Segmentation> {
        let g = self.info.size_rule;
        let (align, hard) = match g {
            SizeRule::Same { multiple } => (multiple, false),
            SizeRule::Valid { depth } => (1 << depth, true),
        };
        // Output tile size the graph accepts, and its input size.
        let (tile_in, tile_out, margin) =
            g.input_for_output(t.tile)
                .ok_or_else(|| RuntimeError::BadOption {
                    option: "tiling",
                    reason: format!("no input size of {g:?} gives a {} px tile", t.tile),
                })?;
        // Fewer than four pooling strides leaves the deepest layers almost no
        // context: masks come out nearly empty, which no user asking for
        // small tiles means.
        if tile_out < 4 * align {
            return Err(RuntimeError::BadOption {
                option: "tiling",
                reason: format!(
                    "tile {} px is too small for this model: use at least {} (4 x its stride {align})",
                    t.tile,
                    4 * align
                ),
            });
        }
        let stride = (tile_out.saturating_sub(t.overlap) / align * align).max(align);
        if stride > tile_out {
            return Err(RuntimeError::BadOption {
                option: "tiling",
                reason: format!("tile {tile_out} is smaller than the model's stride {align}"),
            });
        }
        let (h, w) = (planar.height, planar.width);
        let ys = axis(h, tile_out, stride, hard);
        let xs = axis(w, tile_out, stride, hard);
        let mut acc: Vec<f32> = Vec::new();
        let mut norm = vec![0.0f32; h * w];
        let mut classes = 0;
        let mut input = Tensor4::zeros([1, planar.channels, tile_in, tile_in]);
        for (ky, &py) in ys.starts.iter().enumerate() {
            for (kx, &px) in xs.starts.iter().enumerate() {
                preprocess::gather(
                    planar,
                    &mut input,
                    0,
                    py as isize - margin as isize,
                    px as isize - margin as isize,
                );
                let output = self.run_checked(&input, tile_out, tile_out)?;
                // Only the part of the tile inside the image.
                let (th, tw) = ((h - py).min(tile_out), (w - px).min(tile_out));
                let (c, probs) =
                    postprocess::probabilities(&self.info, &output, 0, (0, 0), (th, tw));
                if acc.is_empty() {
                    classes = c;
                    acc = vec![0.0; c * h * w];
                }
                for y in 0..th {
                    let wy = ys.weights[ky][y];
                    for x in 0..tw {
                        let wgt = wy * xs.weights[kx][x];
                        if wgt == 0.0 {
                            continue;
                        }
                        let at = (py + y) * w + px + x;
                        norm[at] += wgt;
                        for ch in 0..c {
                            acc[ch * h * w + at] += wgt * probs[(ch * th + y) * tw + x];
                        }
                    }
                }
            }
        }
        for ch in 0..classes {
            for (a, &n) in acc[ch * h * w..][..h * w].iter_mut().zip(&norm) {
                *a /= n;
            }
        }
        Ok(postprocess::finish(
            self.info.preprocessing.threshold,
            classes,
            acc,
            h,
            w,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::axis;

    #[test]
    fn hard_split_covers_each_pixel_once() {
        // len 20, tile 8, stride 6: starts 0, 6, 12 (12 + 8 = 20).
        let a = axis(20, 8, 6, true);
        assert_eq!(a.starts, vec![0, 6, 12]);
        let mut cover = [0.0f32; 20];
        for (k, &p) in a.starts.iter().enumerate() {
            for i in 0..8 {
                if p + i < 20 {
                    cover[p + i] += a.weights[k][i];
                }
            }
        }
        assert_eq!(cover, [1.0; 20]);
        // Overlap [6, 8) splits at 7: tile 0 owns 0..7, tile 1 owns 7..13.
        assert_eq!(a.weights[0][6], 1.0);
        assert_eq!(a.weights[0][7], 0.0);
        assert_eq!(a.weights[1][1], 1.0);
    }

    #[test]
    fn ramps_are_positive_and_full_inside() {
        let a = axis(20, 8, 6, false);
        // Tile 1 overlaps tile 0 on its first 2 pixels: ramp 1/3, 2/3, then 1.
        assert_eq!(&a.weights[1][..3], &[1.0 / 3.0, 2.0 / 3.0, 1.0]);
        assert!(a.weights.iter().flatten().all(|&w| w > 0.0));
    }
}
