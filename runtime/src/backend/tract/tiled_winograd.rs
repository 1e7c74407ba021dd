//! [`TiledConv`]'s path for 3x3 convolutions: Winograd's F(2×2, 3×3)
//! ([`unet_kernels::winograd::Conv3x3`], shared with training). Per tile of
//! output rows, the input tiles' transform, 16 matrix products (2.25× fewer
//! multiplications than im2col's), and the output transform with the bias
//! and ReLU, then the pooled rows.
//!
//! Where there are enough tiles, each thread takes whole tiles, as on the
//! im2col path. The deep, low-resolution layers have too few: there each
//! image is one tile, spread over all threads (the transforms by channel,
//! the matrix products by gemm's own threads).

use unet_kernels::winograd::Conv3x3;

use super::tiled_conv::{for_each_tile, plain_f32, with_scratch, Geometry, OutputPtr, TiledConv};
use tract_core::internal::*;

impl TiledConv {
    /// The convolution of `n` images by Winograd, with the transformed weights `u`.
    pub(super) fn run_winograd(
        &self,
        u: &[f32],
        inputs: &[&[f32]],
        n: usize,
        g: Geometry,
        (out, pooled): (OutputPtr, OutputPtr),
        threads: usize,
    ) -> TractResult<()> {
        let bias = plain_f32(&self.bias)?;
        let [top, left, ..] = self.padding;
        let conv = Conv3x3 {
            cin: self.input_channels(),
            cout: self.output_channels,
            h: g.h,
            w: g.w,
            top,
            left,
            ho: g.ho,
            wo: g.wo,
        };
        // The input channels of image b: the planes of each concatenated input in turn.
        let plane = g.h * g.w;
        let channels = |b: usize| -> Vec<&[f32]> {
            inputs
                .iter()
                .zip(&self.parts)
                .flat_map(|(input, &c)| {
                    input[b * c * plane..(b + 1) * c * plane].chunks_exact(plane)
                })
                .collect()
        };
        let image_len = conv.cout * g.ho * g.wo;
        // SAFETY (both calls): `out` and `pooled` are the op's outputs; the rows
        // of image b from y0 (even) to y1 are this call's alone.
        let tile = |b: usize, (y0, y1), scratch: &mut [f32], threads| unsafe {
            let epilogue = (Some(bias), self.relu);
            let image = out.get().add(b * image_len);
            conv.tile(&channels(b), u, epilogue, (y0, y1), scratch, image, threads);
            self.pool_tile(g, b, y0, y1, out.get(), pooled.get());
        };
        if let Some(rows) = conv.per_thread_tile_rows(n, threads) {
            // Each thread takes whole tiles.
            for_each_tile(n, g.ho, rows, threads, |b, y0, y1| {
                with_scratch(conv.scratch_len(rows), |scratch| {
                    tile(b, (y0, y1), scratch, 1)
                })
            });
        } else {
            // Too few tiles: whole images one after the other, each on all threads.
            with_scratch(conv.scratch_len(g.ho), |scratch| {
                (0..n).for_each(|b| tile(b, (0, g.ho), scratch, threads))
            });
        }
        Ok(())
    }
}
