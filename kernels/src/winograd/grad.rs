//! The adjoint transforms, for a 3x3 convolution's weight gradient by
//! F(2×2, 3×3): `dU[p] = Σ_tiles dM[p] · V[p]ᵀ` over the 16 points, with
//! `dM = A dY Aᵀ` the output gradient's tiles taken back through the output
//! transform, and `dg = Gᵀ dU G` the weights' gradient taken back through the
//! weight transform. 2.25× fewer multiplications than im2col's `dY · colᵀ`,
//! and no patch matrix.

use super::{blocks, POINTS};

/// Rows of G (`U = G g Gᵀ`).
const G: [[f32; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];

/// `dg = Gᵀ dU G` per (output, input) channel: the adjoint of
/// [`super::transform_weights`], from `[16][cout][cin]` to OIHW
/// `[cout][cin][3][3]`.
pub fn transform_weights_grad(du: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    let pairs = cout * cin;
    assert_eq!(du.len(), POINTS * pairs, "transformed weight gradient");
    let mut dg = vec![0.0; pairs * 9];
    for (pair, g) in dg.chunks_exact_mut(9).enumerate() {
        // dU G: 4×3.
        let mut du_g = [[0.0f32; 3]; 4];
        for (a, row) in du_g.iter_mut().enumerate() {
            for (j, value) in row.iter_mut().enumerate() {
                *value = (0..4)
                    .map(|b| du[(4 * a + b) * pairs + pair] * G[b][j])
                    .sum();
            }
        }
        for i in 0..3 {
            for j in 0..3 {
                g[3 * i + j] = (0..4).map(|a| G[a][i] * du_g[a][j]).sum();
            }
        }
    }
    dg
}

/// `dM = A dY Aᵀ` for one row of output tiles of one channel: the adjoint
/// of [`super::transform_output_row`]. `rows` are the tile row's two rows of
/// the output gradient (`None` past the output), tile j covers their columns
/// 2j and 2j + 1 (zero past the row's end), and point p of tile j goes to
/// `dm[p * stride + j]`.
pub fn transform_output_grad_row(
    rows: [Option<&[f32]>; 2],
    tiles: usize,
    dm: &mut [f32],
    stride: usize,
) {
    assert!(stride >= tiles, "points overlap");
    assert!(
        tiles == 0 || dm.len() > 15 * stride + tiles - 1,
        "dm too short"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if cfg!(feature = "avx512") && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { x86::output_grad_row_avx512(rows, tiles, dm, stride) };
        }
        if super::x86::has_avx2() {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { x86::output_grad_row_avx2(rows, tiles, dm, stride) };
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: NEON is part of aarch64; dm's length is checked above.
        return unsafe { blocks::output_grad_row::<blocks::neon::Neon>(rows, tiles, dm, stride) };
    }
    #[allow(unreachable_code)]
    // SAFETY: one lane needs no vector unit; dm's length is checked above.
    unsafe {
        blocks::output_grad_row::<f32>(rows, tiles, dm, stride)
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::blocks::{self, x86::Avx2, x86::Avx512};

    #[target_feature(enable = "avx512f")]
    pub unsafe fn output_grad_row_avx512(
        rows: [Option<&[f32]>; 2],
        tiles: usize,
        dm: &mut [f32],
        stride: usize,
    ) {
        // SAFETY: the caller's.
        unsafe { blocks::output_grad_row::<Avx512>(rows, tiles, dm, stride) }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn output_grad_row_avx2(
        rows: [Option<&[f32]>; 2],
        tiles: usize,
        dm: &mut [f32],
        stride: usize,
    ) {
        // SAFETY: the caller's.
        unsafe { blocks::output_grad_row::<Avx2>(rows, tiles, dm, stride) }
    }
}
