//! `PointwiseConv`: a 1x1 convolution (the U-Net's output head) for tract,
//! as unpacked matrix products straight between the NCHW planes.
//!
//! tract declutters a 1x1 convolution into an `EinSum` whose codegen packs
//! the whole input first (`OptMatMulPack`): for unet-16's head, 16 channels
//! of 256² pixels to one, the copy took 0.6–1.2 ms of a 23 ms frame, five
//! times the product. Here each thread multiplies its tile of pixels in place.

use std::sync::Arc;

use tract_core::internal::*;
use tract_core::{as_op, op_as_typed_op, op_out_of_plan};
use unet_kernels::product;

use super::tiled_conv::{for_each_tile, on_tract_threads, plain_f32, OutputPtr};
use super::tiled_deconv::deconv_tile_rows;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PointwiseConv {
    pub input_channels: usize,
    pub output_channels: usize,
    /// `[Cout, Cin]`.
    pub weights: Arc<Tensor>,
    /// `[Cout]`.
    pub bias: Arc<Tensor>,
}

impl PointwiseConv {
    /// Pixels `p0..p1` of one image: `x` its `[Cin, plane]` input, `out` its
    /// `[Cout, plane]` output.
    ///
    /// # Safety
    /// `out` must point to the image's output, and no other thread may
    /// access its pixels `p0..p1` meanwhile.
    unsafe fn tile(
        &self,
        (weights, bias): (&[f32], &[f32]),
        x: &[f32],
        out: *mut f32,
        plane: usize,
        (p0, p1): (usize, usize),
    ) {
        let (cin, cout, cols) = (self.input_channels, self.output_channels, p1 - p0);
        // SAFETY: rows of x and of the output are `plane` floats apart,
        // pixels p0..p1 inside them.
        let done = unsafe {
            product::multiply(
                weights,
                (cout, cin, cols),
                (x.as_ptr().add(p0), plane),
                (out.add(p0), plane),
            )
        };
        for (co, &b) in bias.iter().enumerate() {
            // SAFETY: pixels p0..p1 of output channel co are this call's alone.
            let row = unsafe { std::slice::from_raw_parts_mut(out.add(co * plane + p0), cols) };
            if done {
                row.iter_mut().for_each(|y| *y += b);
            } else {
                // A CPU without the vector units `product` is written for.
                for (c, y) in row.iter_mut().enumerate() {
                    let w = &weights[co * cin..(co + 1) * cin];
                    *y = b + (0..cin).map(|k| w[k] * x[k * plane + p0 + c]).sum::<f32>();
                }
            }
        }
    }

    fn check_shape(&self, x: &[usize]) -> TractResult<()> {
        ensure!(
            x.len() == 4 && x[1] == self.input_channels,
            "PointwiseConv input shape {x:?}"
        );
        Ok(())
    }
}

impl Op for PointwiseConv {
    fn name(&self) -> StaticName {
        "PointwiseConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} -> {} channels",
            self.input_channels, self.output_channels
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for PointwiseConv {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 1);
        let shape = inputs[0].shape().to_vec();
        self.check_shape(&shape)?;
        let (n, h, w) = (shape[0], shape[2], shape[3]);
        let plane = h * w;
        let (cin, cout) = (self.input_channels, self.output_channels);
        let x = plain_f32(&inputs[0])?;
        // SAFETY: every element is written: the tiles cover every pixel of
        // every image, and each writes all output channels of its pixels.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&[n, cout, h, w])? };
        let mut view = output.try_as_plain_ram_mut()?;
        let out = OutputPtr(view.as_slice_mut::<f32>()?.as_mut_ptr());
        let weights_and_bias = (plain_f32(&self.weights)?, plain_f32(&self.bias)?);
        on_tract_threads(|threads| {
            let rows = deconv_tile_rows(cin + cout, n, (h, w), threads);
            for_each_tile(n, h, rows, threads, |b, y0, y1| {
                let x = &x[b * cin * plane..][..cin * plane];
                // SAFETY: image b's output, inside the tensor; tiles are
                // disjoint and each is taken by one thread.
                unsafe {
                    let out = out.get().add(b * cout * plane);
                    self.tile(weights_and_bias, x, out, plane, (y0 * w, y1 * w))
                }
            })
        });
        Ok(tvec!(output.into_tvalue()))
    }

    op_out_of_plan!();
}

impl TypedOp for PointwiseConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == f32::datum_type());
        let shape = inputs[0]
            .shape
            .as_concrete()
            .context("PointwiseConv needs concrete shapes")?;
        self.check_shape(shape)?;
        Ok(tvec!(f32::fact([
            shape[0],
            self.output_channels,
            shape[2],
            shape[3]
        ])))
    }

    /// Cin FMAs per output element, as tract's convolution counts them.
    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let x = &inputs[0].shape;
        let pixels = x[0].clone() * x[2].clone() * x[3].clone();
        let fmas = pixels * (self.input_channels * self.output_channels);
        Ok(tvec!((Cost::FMA(f32::datum_type()), fmas)))
    }

    as_op!();
}
