//! Winograd's minimal filtering F(2×2, 3×3) (Lavin and Gray, "Fast Algorithms
//! for Convolutional Neural Networks", 2016): a 3×3 convolution's 2×2 output
//! tile from a 4×4 input tile with 16 multiplications instead of 36.
//!
//! Over C input and K output channels, the 16 transformed points are 16
//! independent matrix products, `M[p] = U[p] (K×C) · V[p] (C×tiles)`, where
//! `U = G g Gᵀ` are the transformed weights and `V = Bᵀ d B` the transformed
//! input tiles; `Y = Aᵀ M A` then gives each output tile. This module has
//! the three transforms, [`Conv3x3`] (feature `conv`) the convolution they
//! make with [`crate::product`]'s matrix products.
//! They work on a row of tiles at a time, a vector's worth of tiles per step
//! ([`blocks`]).
//!
//! The transforms add and subtract only, so F(2×2, 3×3) loses little
//! precision: its error stays within a few ulps of the direct sum's.

mod blocks;
#[cfg(feature = "conv")]
mod conv;
mod grad;
#[cfg(feature = "conv")]
pub use conv::{Conv3x3, MIN_CHANNELS, TILE_ELEMS};
pub use grad::{transform_output_grad_row, transform_weights_grad};

/// Side of an output tile.
pub const TILE: usize = 2;
/// Transformed points per tile: the number of matrix products.
pub const POINTS: usize = 16;

/// `U = G g Gᵀ` for OIHW 3×3 weights `[cout][cin][3][3]`, laid out as
/// `[16][cout][cin]`: point p's `cout × cin` matrix, row-major.
pub fn transform_weights(weights: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    assert_eq!(weights.len(), cout * cin * 9, "3x3 OIHW weights");
    let mut u = vec![0.0; POINTS * cout * cin];
    for (oc, g) in weights.chunks_exact(9).enumerate() {
        // G g: 4×3, one row of G per row.
        let mut gg = [[0.0f32; 3]; 4];
        for x in 0..3 {
            let (g0, g1, g2) = (g[x], g[3 + x], g[6 + x]);
            gg[0][x] = g0;
            gg[1][x] = 0.5 * (g0 + g1 + g2);
            gg[2][x] = 0.5 * (g0 - g1 + g2);
            gg[3][x] = g2;
        }
        for (a, row) in gg.iter().enumerate() {
            let [g0, g1, g2] = *row;
            let transformed = [g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2];
            for (b, value) in transformed.into_iter().enumerate() {
                u[(4 * a + b) * cout * cin + oc] = value;
            }
        }
    }
    u
}

/// One row of input tiles of one channel: `rows` are the four input rows
/// under it (`None` for a row of padding), tile j covers input columns
/// `2j - left .. 2j - left + 4` (zero outside the row), and point p of tile
/// j goes to `v[p * stride + j]`.
pub fn transform_input_row(
    rows: [Option<&[f32]>; 4],
    left: usize,
    tiles: usize,
    v: &mut [f32],
    stride: usize,
) {
    assert!(stride >= tiles, "points overlap");
    assert!(
        tiles == 0 || v.len() > 15 * stride + tiles - 1,
        "v too short"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if cfg!(feature = "avx512") && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { x86::input_row_avx512(rows, left, tiles, v, stride) };
        }
        if x86::has_avx2() {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { x86::input_row_avx2(rows, left, tiles, v, stride) };
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: NEON is part of aarch64; v's length is checked above.
        return unsafe { blocks::input_row::<blocks::neon::Neon>(rows, left, tiles, v, stride) };
    }
    #[allow(unreachable_code)]
    // SAFETY: one lane needs no vector unit; v's length is checked above.
    unsafe {
        blocks::input_row::<f32>(rows, left, tiles, v, stride)
    }
}

/// One row of output tiles of one output channel: point p of tile j is
/// `m[p * stride + j]`; tile j's pixels go to columns 2j, 2j + 1 of the two
/// output rows (those that exist: `out[1]` is `None` below an odd last row,
/// and a column past the row's end is dropped), plus `bias`, then the ReLU.
pub fn transform_output_row(
    m: &[f32],
    stride: usize,
    tiles: usize,
    (bias, relu): (f32, bool),
    out: [Option<&mut [f32]>; 2],
) {
    assert!(
        tiles == 0 || m.len() > 15 * stride + tiles - 1,
        "m too short"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if cfg!(feature = "avx512") && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { x86::output_row_avx512(m, stride, tiles, (bias, relu), out) };
        }
        if x86::has_avx2() {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { x86::output_row_avx2(m, stride, tiles, (bias, relu), out) };
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: NEON is part of aarch64; m's length is checked above.
        return unsafe {
            blocks::output_row::<blocks::neon::Neon>(m, stride, tiles, (bias, relu), out)
        };
    }
    #[allow(unreachable_code)]
    // SAFETY: one lane needs no vector unit; m's length is checked above.
    unsafe {
        blocks::output_row::<f32>(m, stride, tiles, (bias, relu), out)
    }
}

/// The transforms compiled for the wider x86 vector units, on [`blocks`]' vectors.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::blocks::{self, x86::Avx2, x86::Avx512};

    pub fn has_avx2() -> bool {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn input_row_avx512(
        rows: [Option<&[f32]>; 4],
        left: usize,
        tiles: usize,
        v: &mut [f32],
        stride: usize,
    ) {
        // SAFETY: the caller's.
        unsafe { blocks::input_row::<Avx512>(rows, left, tiles, v, stride) }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn input_row_avx2(
        rows: [Option<&[f32]>; 4],
        left: usize,
        tiles: usize,
        v: &mut [f32],
        stride: usize,
    ) {
        // SAFETY: the caller's.
        unsafe { blocks::input_row::<Avx2>(rows, left, tiles, v, stride) }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn output_row_avx512(
        m: &[f32],
        stride: usize,
        tiles: usize,
        bias_relu: (f32, bool),
        out: [Option<&mut [f32]>; 2],
    ) {
        // SAFETY: the caller's.
        unsafe { blocks::output_row::<Avx512>(m, stride, tiles, bias_relu, out) }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn output_row_avx2(
        m: &[f32],
        stride: usize,
        tiles: usize,
        bias_relu: (f32, bool),
        out: [Option<&mut [f32]>; 2],
    ) {
        // SAFETY: the caller's.
        unsafe { blocks::output_row::<Avx2>(m, stride, tiles, bias_relu, out) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) use crate::testing::values;

    /// A 3×3 convolution (correlation) with `pad` zeros on every side, by its definition.
    pub(super) fn direct(
        input: &[f32],
        weights: &[f32],
        (cin, cout, h, w, pad): (usize, usize, usize, usize, usize),
    ) -> Vec<f32> {
        let (ho, wo) = (h + 2 * pad - 2, w + 2 * pad - 2);
        let mut out = vec![0.0; cout * ho * wo];
        for oc in 0..cout {
            for y in 0..ho {
                for x in 0..wo {
                    let mut sum = 0.0f64;
                    for ic in 0..cin {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = (
                                    (y + ky) as isize - pad as isize,
                                    (x + kx) as isize - pad as isize,
                                );
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    sum += input[(ic * h + iy as usize) * w + ix as usize] as f64
                                        * weights[((oc * cin + ic) * 3 + ky) * 3 + kx] as f64;
                                }
                            }
                        }
                    }
                    out[(oc * ho + y) * wo + x] = sum as f32;
                }
            }
        }
        out
    }

    /// The same convolution through the three transforms and 16 plain matrix products.
    fn winograd(
        input: &[f32],
        weights: &[f32],
        (cin, cout, h, w, pad): (usize, usize, usize, usize, usize),
    ) -> Vec<f32> {
        let (ho, wo) = (h + 2 * pad - 2, w + 2 * pad - 2);
        let (ty, tx) = (ho.div_ceil(TILE), wo.div_ceil(TILE));
        let tiles = ty * tx;
        let u = transform_weights(weights, cout, cin);
        let mut v = vec![f32::NAN; POINTS * cin * tiles];
        for c in 0..cin {
            let plane = &input[c * h * w..(c + 1) * h * w];
            for i in 0..ty {
                let rows = std::array::from_fn(|r| {
                    let y = (2 * i + r) as isize - pad as isize;
                    (y >= 0 && (y as usize) < h)
                        .then(|| &plane[y as usize * w..(y as usize + 1) * w])
                });
                transform_input_row(rows, pad, tx, &mut v[c * tiles + i * tx..], cin * tiles);
            }
        }
        let mut m = vec![0.0; POINTS * cout * tiles];
        for p in 0..POINTS {
            for oc in 0..cout {
                for t in 0..tiles {
                    m[(p * cout + oc) * tiles + t] = (0..cin)
                        .map(|c| u[(p * cout + oc) * cin + c] * v[(p * cin + c) * tiles + t])
                        .sum();
                }
            }
        }
        let mut out = vec![f32::NAN; cout * ho * wo];
        for oc in 0..cout {
            let plane = &mut out[oc * ho * wo..(oc + 1) * ho * wo];
            for i in 0..ty {
                let (top, bottom) = plane[2 * i * wo..].split_at_mut(wo);
                let bottom = (2 * i + 1 < ho).then(|| &mut bottom[..wo]);
                transform_output_row(
                    &m[oc * tiles + i * tx..],
                    cout * tiles,
                    tx,
                    (0.0, false),
                    [Some(top), bottom],
                );
            }
        }
        out
    }

    #[test]
    fn winograd_computes_the_direct_convolution() {
        // Even and odd output sizes, with and without padding, many blocks of tiles wide.
        for (shape, seed) in [
            ((3, 2, 6, 6, 1), 1),
            ((4, 3, 7, 9, 1), 2),
            ((2, 5, 9, 8, 0), 3),
            ((3, 2, 5, 135, 1), 4),
        ] {
            let (cin, cout, h, w, _) = shape;
            let input = values(cin * h * w, seed);
            let weights = values(cout * cin * 9, seed + 100);
            let (expected, got) = (
                direct(&input, &weights, shape),
                winograd(&input, &weights, shape),
            );
            assert_eq!(expected.len(), got.len());
            let worst = expected
                .iter()
                .zip(&got)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(worst < 1e-5, "{shape:?}: max abs difference {worst}");
        }
    }

    #[test]
    fn bias_and_relu_are_applied_to_each_output() {
        // One tile row of two tiles, M = 0 except point 5 (the middle of A's support).
        let (stride, tiles) = (2, 2);
        let mut m = vec![0.0; POINTS * stride];
        m[5 * stride] = 1.0;
        m[5 * stride + 1] = -3.0;
        let (mut top, mut bottom) = (vec![9.0; 3], vec![9.0; 3]);
        transform_output_row(
            &m,
            stride,
            tiles,
            (0.5, true),
            [Some(&mut top), Some(&mut bottom)],
        );
        // Point (1,1) adds to all four outputs of its tile; the odd width drops the last column.
        assert_eq!(top, [1.5, 1.5, 0.0]);
        assert_eq!(bottom, [1.5, 1.5, 0.0]);
    }
}
