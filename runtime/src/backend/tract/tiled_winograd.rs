//! [`TiledConv`]'s path for 3x3 convolutions: Winograd's F(2×2, 3×3)
//! ([`unet_kernels::winograd`]). Per tile of output rows, the input tiles'
//! transform, 16 matrix products of a quarter of im2col's depth each (2.25×
//! fewer multiplications), and the output transform with the bias and ReLU,
//! then the pooled rows.
//!
//! Where there are enough tiles, each thread takes whole tiles, as on the
//! im2col path. The deep, low-resolution layers have too few: there each
//! image is one tile, spread over all threads (the transforms by channel,
//! the matrix products by gemm's own threads).

use rayon::prelude::*;
use unet_kernels::winograd::{self, POINTS, TILE};

use super::tiled_conv::{for_each_tile, plain_f32, with_scratch, Geometry, OutputPtr, TiledConv};
use tract_core::internal::*;

/// Transformed input and product elements per tile on one thread: 512 KiB of
/// f32, so that each of the 16 matrix products has enough tiles (columns) to
/// pay for packing its weights, and the whole stays in a 1 MiB L2.
const TILE_ELEMS: usize = 128 << 10;

/// Input channels from which a 3x3 convolution runs by Winograd: below it the
/// matrix products are too shallow (depth = channels) for the transforms to pay.
pub const MIN_CHANNELS: usize = 8;

impl TiledConv {
    /// Output rows per one-thread tile: pairs of rows, about [`TILE_ELEMS`].
    fn winograd_rows(&self, g: Geometry) -> usize {
        let per_pair =
            POINTS * (self.input_channels() + self.output_channels) * g.wo.div_ceil(TILE);
        2 * (TILE_ELEMS / per_pair).clamp(1, g.ho.div_ceil(2))
    }

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
        let channels = self.input_channels() + self.output_channels;
        let scratch_len =
            |rows: usize| POINTS * channels * rows.div_ceil(TILE) * g.wo.div_ceil(TILE);
        let rows = self.winograd_rows(g);
        if threads == 1 || n * g.ho.div_ceil(rows) >= 4 * threads {
            for_each_tile(n, g.ho, rows, threads, |b, y0, y1| {
                with_scratch(scratch_len(rows), |scratch| {
                    // SAFETY: tiles are disjoint, start at even rows, and
                    // each is taken by one thread.
                    unsafe {
                        self.winograd_tile(
                            inputs,
                            g,
                            (u, bias),
                            (b, y0, y1),
                            scratch,
                            (out.get(), pooled.get()),
                            1,
                        )
                    }
                })
            });
        } else {
            with_scratch(scratch_len(g.ho), |scratch| {
                for b in 0..n {
                    // SAFETY: one whole image at a time, on this call's threads.
                    unsafe {
                        self.winograd_tile(
                            inputs,
                            g,
                            (u, bias),
                            (b, 0, g.ho),
                            scratch,
                            (out.get(), pooled.get()),
                            threads,
                        )
                    }
                }
            });
        }
        Ok(())
    }

    /// Output rows `y0..y1` of image `b`, on `threads` threads of the current
    /// pool (1: this thread only). `scratch` holds the transformed input as
    /// `[Σparts][16][tiles]`, then the products as `[output_channels][16][tiles]`:
    /// each channel's points together, so that threads take whole channels.
    ///
    /// # Safety
    /// `out` must point to the `[N, Cout, ho, wo]` output and, when pooling,
    /// `pooled` to the `[N, Cout, ho/2, wo/2]` one, with `y0` even; no other
    /// thread may access these rows of image `b` meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn winograd_tile(
        &self,
        inputs: &[&[f32]],
        g: Geometry,
        (u, bias): (&[f32], &[f32]),
        (b, y0, y1): (usize, usize, usize),
        scratch: &mut [f32],
        (out, pooled): (*mut f32, *mut f32),
        threads: usize,
    ) {
        let [top, left, ..] = self.padding;
        let (cin, cout) = (self.input_channels(), self.output_channels);
        let (ty, tx) = ((y1 - y0).div_ceil(TILE), g.wo.div_ceil(TILE));
        let tiles = ty * tx;
        let (v, rest) = scratch.split_at_mut(POINTS * cin * tiles);
        let m = &mut rest[..POINTS * cout * tiles];
        let plane = g.h * g.w;
        let channels: Vec<&[f32]> = inputs
            .iter()
            .zip(&self.parts)
            .flat_map(|(input, &c)| input[b * c * plane..(b + 1) * c * plane].chunks_exact(plane))
            .collect();
        let transform_input = |(v, channel): (&mut [f32], &&[f32])| {
            for i in 0..ty {
                let rows = std::array::from_fn(|r| {
                    let y = (y0 + 2 * i + r).wrapping_sub(top);
                    (y < g.h).then(|| &channel[y * g.w..(y + 1) * g.w])
                });
                winograd::transform_input_row(rows, left, tx, &mut v[i * tx..], tiles);
            }
        };
        let per_channel = POINTS * tiles;
        if threads > 1 {
            v.par_chunks_mut(per_channel)
                .zip(channels.par_iter())
                .for_each(transform_input);
        } else {
            v.chunks_mut(per_channel)
                .zip(channels.iter())
                .for_each(transform_input);
        }
        let parallelism = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        for p in 0..POINTS {
            // SAFETY: point p's `cout × cin` block of u, and its `cin × tiles`
            // and `cout × tiles` rows (at stride 16 · tiles) of v and m.
            unsafe {
                gemm::gemm(
                    cout,
                    tiles,
                    cin,
                    m.as_mut_ptr().add(p * tiles),
                    1,
                    per_channel as isize,
                    false,
                    u.as_ptr().add(p * cout * cin),
                    1,
                    cin as isize,
                    v.as_ptr().add(p * tiles),
                    1,
                    per_channel as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
        }
        let out = OutputPtr(out);
        let transform_output = |(co, m): (usize, &[f32])| {
            // SAFETY: the caller owns rows y0..y1 of image b, and this call
            // output channel co of them.
            let rows = unsafe {
                let first = out.get().add(((b * cout + co) * g.ho + y0) * g.wo);
                std::slice::from_raw_parts_mut(first, (y1 - y0) * g.wo)
            };
            for (i, pair) in rows.chunks_mut(2 * g.wo).enumerate() {
                let (upper, lower) = pair.split_at_mut(g.wo);
                let lower = (!lower.is_empty()).then_some(lower);
                let bias_relu = (bias[co], self.relu);
                winograd::transform_output_row(
                    &m[i * tx..],
                    tiles,
                    tx,
                    bias_relu,
                    [Some(upper), lower],
                );
            }
        };
        if threads > 1 {
            m.par_chunks(per_channel)
                .enumerate()
                .for_each(transform_output);
        } else {
            m.chunks(per_channel).enumerate().for_each(transform_output);
        }
        // SAFETY: as the caller's; rows y0..y1 are written.
        unsafe { self.pool_tile(g, b, y0, y1, out.get(), pooled) }
    }
}
