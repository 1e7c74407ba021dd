//! `AttentionGate`: Attention U-Net's additive gate (Oktay et al., 2018) as
//! one op for tract, on row tiles:
//! `x · σ(ψ · relu(W_g g + W_x x + b) + b_ψ)`, with `g` the up-sampled
//! decoder features and `x` the skip connection, both `[N, C, H, W]`.
//!
//! tract runs it as three 1x1 convolutions (each a packed matrix product
//! between reshapes), an addition, a ReLU, a sigmoid and a product, every one
//! writing a whole tensor: a third of attention-unet-16's time on 2 threads.
//! Here each thread takes a tile of rows: one sum of two unpacked matrix
//! products straight from the input planes, then the rest per pixel while
//! the tile is in cache.

use std::sync::Arc;

use tract_core::internal::*;
use tract_core::{as_op, op_as_typed_op, op_out_of_plan};
use tract_linalg::element_wise::ElementWise;
use tract_linalg::routines::Func;
use unet_kernels::product;

use super::tiled_conv::{
    for_each_tile, on_tract_threads, plain_f32, tile_rows, with_scratch, OutputPtr,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttentionGate {
    /// Channels of `g`, of `x`, and of the intermediate sum (F_int).
    pub gate_channels: usize,
    pub skip_channels: usize,
    pub inter_channels: usize,
    /// `W_g`, `[F_int, Cg]`, and `W_x`, `[F_int, Cx]`.
    pub w_g: Arc<Tensor>,
    pub w_x: Arc<Tensor>,
    /// `b_g + b_x`, `[F_int]`.
    pub bias: Arc<Tensor>,
    /// ψ, `[F_int]`, and its bias, `[1]`.
    pub psi: Arc<Tensor>,
    pub psi_bias: Arc<Tensor>,
}

/// The inputs of one image, and its output.
struct Planes<'a> {
    g: &'a [f32],
    x: &'a [f32],
    out: *mut f32,
}

/// The gate's weights as slices, and tract's sigmoid kernel: looked up once
/// per call, not per tile.
struct Weights<'a> {
    w_g: &'a [f32],
    w_x: &'a [f32],
    bias: &'a [f32],
    psi: &'a [f32],
    psi_bias: f32,
    sigmoid: Box<dyn ElementWise<f32>>,
}

impl AttentionGate {
    /// Pixels `p0..p1` of one image; `sums` holds F_int + 1 rows of
    /// `p1 - p0` floats.
    ///
    /// # Safety
    /// `planes.out` must point to the image's `[Cx, plane]` output, and no
    /// other thread may access its pixels `p0..p1` meanwhile.
    unsafe fn tile(
        &self,
        weights: &Weights,
        planes: &Planes,
        plane: usize,
        (p0, p1): (usize, usize),
        sums: &mut [f32],
    ) -> TractResult<()> {
        let (cg, cx, f) = (self.gate_channels, self.skip_channels, self.inter_channels);
        let (w_g, w_x) = (weights.w_g, weights.w_x);
        let cols = p1 - p0;
        let (m, psi) = sums.split_at_mut(f * cols);
        let psi = &mut psi[..cols];
        // W_g g + W_x x, straight from the input planes.
        // SAFETY: rows of g and x are `plane` floats apart, pixels p0..p1
        // inside them; m holds F_int rows of `cols` floats.
        let done = unsafe {
            product::multiply(
                w_g,
                (f, cg, cols),
                (planes.g.as_ptr().add(p0), plane),
                (m.as_mut_ptr(), cols),
            ) && product::multiply_add(
                w_x,
                (f, cx, cols),
                (planes.x.as_ptr().add(p0), plane),
                (m.as_mut_ptr(), cols),
            )
        };
        if !done {
            // A CPU without the vector units `product` is written for.
            for (r, row) in m.chunks_exact_mut(cols).enumerate() {
                for (c, sum) in row.iter_mut().enumerate() {
                    let from_g = (0..cg).map(|k| w_g[r * cg + k] * planes.g[k * plane + p0 + c]);
                    let from_x = (0..cx).map(|k| w_x[r * cx + k] * planes.x[k * plane + p0 + c]);
                    *sum = from_g.chain(from_x).sum();
                }
            }
        }
        // ψ · relu(… + b) + b_ψ, then the sigmoid, per pixel.
        psi.fill(weights.psi_bias);
        let rows = m.chunks_exact(cols).zip(weights.bias).zip(weights.psi);
        for ((row, &bias), &weight) in rows {
            for (s, &sum) in psi.iter_mut().zip(row) {
                *s += weight * (sum + bias).max(0.0);
            }
        }
        weights.sigmoid.run(psi)?;
        for c in 0..cx {
            let x = &planes.x[c * plane + p0..c * plane + p1];
            // SAFETY: pixels p0..p1 of output channel c are this call's alone.
            let out =
                unsafe { std::slice::from_raw_parts_mut(planes.out.add(c * plane + p0), cols) };
            for ((o, &x), &s) in out.iter_mut().zip(x).zip(&*psi) {
                *o = x * s;
            }
        }
        Ok(())
    }
}

impl Op for AttentionGate {
    fn name(&self) -> StaticName {
        "AttentionGate".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "g: {}, x: {}, F_int: {}",
            self.gate_channels, self.skip_channels, self.inter_channels
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for AttentionGate {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 2);
        let facts = [inputs[0].shape(), inputs[1].shape()];
        self.check_shapes(facts[0], facts[1])?;
        let shape = facts[1].to_vec();
        let (n, h, w) = (shape[0], shape[2], shape[3]);
        let plane = h * w;
        let (g, x) = (plain_f32(&inputs[0])?, plain_f32(&inputs[1])?);
        // SAFETY: every element is written: the tiles cover every pixel of
        // every image, and each writes all Cx channels of its pixels.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        let mut view = output.try_as_plain_ram_mut()?;
        let out = OutputPtr(view.as_slice_mut::<f32>()?.as_mut_ptr());
        // Tiles of rows, as many as about a patch's worth of sums.
        let rows = tile_rows(self.inter_channels + 1, h, w);
        let len = (self.inter_channels + 1) * rows * w;
        let weights = Weights {
            w_g: plain_f32(&self.w_g)?,
            w_x: plain_f32(&self.w_x)?,
            bias: plain_f32(&self.bias)?,
            psi: plain_f32(&self.psi)?,
            psi_bias: plain_f32(&self.psi_bias)?[0],
            sigmoid: Func::Sigmoid.ew_f32()?,
        };
        let failed = std::sync::Mutex::new(None);
        on_tract_threads(|threads| {
            for_each_tile(n, h, rows, threads, |b, y0, y1| {
                let planes = Planes {
                    g: &g[b * self.gate_channels * plane..][..self.gate_channels * plane],
                    x: &x[b * self.skip_channels * plane..][..self.skip_channels * plane],
                    // SAFETY: image b's output, inside the tensor.
                    out: unsafe { out.get().add(b * self.skip_channels * plane) },
                };
                with_scratch(len, |sums| {
                    // SAFETY: tiles are disjoint and each is taken by one thread.
                    if let Err(e) =
                        unsafe { self.tile(&weights, &planes, plane, (y0 * w, y1 * w), sums) }
                    {
                        *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    }
                })
            })
        });
        if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        Ok(tvec!(output.into_tvalue()))
    }

    op_out_of_plan!();
}

impl AttentionGate {
    fn check_shapes(&self, g: &[usize], x: &[usize]) -> TractResult<()> {
        ensure!(
            g.len() == 4
                && x.len() == 4
                && g[1] == self.gate_channels
                && x[1] == self.skip_channels
                && (g[0], g[2], g[3]) == (x[0], x[2], x[3]),
            "AttentionGate input shapes {g:?} and {x:?}"
        );
        Ok(())
    }
}

impl TypedOp for AttentionGate {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 2 && inputs.iter().all(|i| i.datum_type == f32::datum_type()));
        let [g, x] = [0, 1].map(|i| inputs[i].shape.as_concrete());
        let (Some(g), Some(x)) = (g, x) else {
            bail!("AttentionGate needs concrete shapes");
        };
        self.check_shapes(g, x)?;
        Ok(tvec!(f32::fact(x)))
    }

    /// The FMAs of tract's three 1x1 convolutions: F_int · (Cg + Cx) + F_int per pixel.
    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let x = &inputs[1].shape;
        let pixels = x[0].clone() * x[2].clone() * x[3].clone();
        let per_pixel = self.inter_channels * (self.gate_channels + self.skip_channels + 1);
        Ok(tvec!((Cost::FMA(f32::datum_type()), pixels * per_pixel)))
    }

    as_op!();
}
