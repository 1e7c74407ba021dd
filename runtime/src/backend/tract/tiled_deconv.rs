//! `TiledDeconv`: a transposed convolution whose kernel equals its stride
//! (U-Net's 2x2, stride-2 up-sampling) for tract, on row tiles.
//!
//! Each input pixel then feeds its own kh x kw block of output pixels, so the
//! op is one matrix product, `[Cout·kh·kw, Cin] · x[Cin, pixels]`, read
//! straight from the input (unpacked, [`product`], up to its depth; gemm's
//! beyond), and a scatter of its rows into the output. tract
//! writes the whole product to memory (`OptMatMul`) and scatters it in a
//! second, single-threaded op (`DeconvSum`); here each thread does both for
//! its tile while the product is in cache.

use std::sync::Arc;

use tract_core::internal::*;
use tract_core::{as_op, op_as_typed_op, op_out_of_plan};

use super::tiled_conv::{
    for_each_tile, on_tract_threads, plain_f32, tile_rows, with_scratch, OutputPtr,
};
use unet_kernels::product;

/// Input rows per tile: [`tile_rows`]' cache-sized tiles, but at least two a
/// thread, so that the deep up-samplings of a few input rows share the work.
pub(super) fn deconv_tile_rows(
    taps: usize,
    n: usize,
    (h, w): (usize, usize),
    threads: usize,
) -> usize {
    let per_image = (2 * threads.max(1)).div_ceil(n.max(1));
    tile_rows(taps, h, w).min((h / per_image).max(1))
}

/// Whether [`TiledDeconv`] suits an up-sampling of `n` images of `h`x`w`
/// input pixels on `threads` threads: each tile must still hold a few
/// vectors' worth of pixels.
pub fn suits(taps: usize, n: usize, (h, w): (usize, usize), threads: usize) -> bool {
    deconv_tile_rows(taps, n, (h, w), threads) * w >= 32
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TiledDeconv {
    pub input_channels: usize,
    pub output_channels: usize,
    /// (height, width), equal to the stride.
    pub kernel: (usize, usize),
    /// `[Cout·kh·kw, Cin]`: row `(co·kh + dy)·kw + dx` holds tap (dy, dx) of output channel co.
    pub weights: Arc<Tensor>,
    /// `[Cout]`.
    pub bias: Arc<Tensor>,
}

impl TiledDeconv {
    /// Rows of the matrix product: Cout·kh·kw.
    fn taps(&self) -> usize {
        self.output_channels * self.kernel.0 * self.kernel.1
    }

    /// Output rows `y0·kh..y1·kh` of image `b` from input rows `y0..y1`.
    ///
    /// # Safety
    /// `out` must point to the `[N, Cout, h·kh, w·kw]` output, and no other
    /// thread may access these rows of image `b` meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        &self,
        x: &[f32],
        (weights, bias): (&[f32], &[f32]),
        (h, w): (usize, usize),
        b: usize,
        y0: usize,
        y1: usize,
        product: &mut [f32],
        out: *mut f32,
    ) {
        let (kh, kw) = self.kernel;
        let cols = (y1 - y0) * w;
        let image = &x[(b * self.input_channels * h + y0) * w..];
        // SAFETY: `product` holds taps × cols floats; the input rows y0..y1 of
        // each channel are `cols` floats at stride h·w inside `x`.
        let unpacked = self.input_channels <= product::max_depth()
            && unsafe {
                product::multiply(
                    weights,
                    (self.taps(), self.input_channels, cols),
                    (image.as_ptr(), h * w),
                    (product.as_mut_ptr(), cols),
                )
            };
        if !unpacked {
            // SAFETY: as above.
            unsafe {
                product::multiply_packed(
                    weights,
                    (self.taps(), self.input_channels, cols),
                    (image.as_ptr(), h * w),
                    (product.as_mut_ptr(), cols),
                    1,
                )
            };
        }
        let (ho, wo) = (h * kh, w * kw);
        for (co, &bias) in bias.iter().enumerate() {
            for dy in 0..kh {
                for (r, y) in (y0..y1).enumerate() {
                    // SAFETY: output row y·kh + dy of channel co lies in this tile.
                    let row = unsafe {
                        std::slice::from_raw_parts_mut(
                            out.add(((b * self.output_channels + co) * ho + y * kh + dy) * wo),
                            wo,
                        )
                    };
                    let tap_row = |dx: usize| {
                        let tap = (co * kh + dy) * kw + dx;
                        &product[tap * cols + r * w..][..w]
                    };
                    if kw == 2 {
                        // U-Net's up-sampling: the two taps interleaved, a
                        // pattern the compiler vectorises (unlike a strided store).
                        let (even, odd) = (tap_row(0), tap_row(1));
                        for (pair, (&a, &b)) in row.chunks_exact_mut(2).zip(even.iter().zip(odd)) {
                            pair[0] = a + bias;
                            pair[1] = b + bias;
                        }
                        continue;
                    }
                    for dx in 0..kw {
                        let from = tap_row(dx);
                        for (value, &p) in row[dx..].iter_mut().step_by(kw).zip(from) {
                            *value = p + bias;
                        }
                    }
                }
            }
        }
    }
}

impl Op for TiledDeconv {
    fn name(&self) -> StaticName {
        "TiledDeconv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} -> {}, kernel and stride {:?}",
            self.input_channels, self.output_channels, self.kernel
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for TiledDeconv {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 1);
        let shape = inputs[0].shape();
        ensure!(
            shape.len() == 4 && shape[1] == self.input_channels,
            "TiledDeconv input shape {shape:?}"
        );
        let (n, h, w) = (shape[0], shape[2], shape[3]);
        let (kh, kw) = self.kernel;
        let x = plain_f32(&inputs[0])?;
        // SAFETY: every element is written: the tiles cover all input rows,
        // and each writes every output channel's kh·kw-pixel block per input pixel.
        let mut output =
            unsafe { Tensor::uninitialized::<f32>(&[n, self.output_channels, h * kh, w * kw])? };
        let mut view = output.try_as_plain_ram_mut()?;
        let out = OutputPtr(view.as_slice_mut::<f32>()?.as_mut_ptr());
        let weights_and_bias = (plain_f32(&self.weights)?, plain_f32(&self.bias)?);
        on_tract_threads(|threads| {
            let rows = deconv_tile_rows(self.taps(), n, (h, w), threads);
            let len = self.taps() * rows * w;
            for_each_tile(n, h, rows, threads, |b, y0, y1| {
                with_scratch(len, |product| {
                    // SAFETY: tiles are disjoint and each is taken by one thread.
                    unsafe { self.tile(x, weights_and_bias, (h, w), b, y0, y1, product, out.get()) }
                })
            })
        });
        Ok(tvec!(output.into_tvalue()))
    }

    op_out_of_plan!();
}

impl TypedOp for TiledDeconv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == f32::datum_type());
        let shape = inputs[0]
            .shape
            .as_concrete()
            .context("TiledDeconv needs concrete shapes")?;
        ensure!(shape.len() == 4 && shape[1] == self.input_channels);
        let (kh, kw) = self.kernel;
        Ok(tvec!(f32::fact([
            shape[0],
            self.output_channels,
            shape[2] * kh,
            shape[3] * kw
        ])))
    }

    /// One FMA per output element and input channel (each output pixel
    /// comes from one input pixel and one kernel tap).
    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let output = self.output_facts(inputs)?.remove(0);
        let macs = output.shape.iter().product::<TDim>() * self.input_channels;
        Ok(tvec!((Cost::FMA(f32::datum_type()), macs)))
    }

    as_op!();
}
