//! `TiledConv`: a stride-1 f32 NCHW convolution op for tract that works on
//! row tiles small enough to stay in a core's L2 cache.
//!
//! tract lowers a convolution to a separate `Pad`, a whole-image im2col and a
//! matrix product (or, with few output channels, a direct loop that streams
//! the input once per four of them), and a channel `Concat` before it is a
//! copy of its own. Here each thread takes whole tiles of output rows: it
//! gathers a tile's patch matrix (about 256 KiB, zero padding written in
//! place) straight from the inputs of the concatenation, multiplies it with
//! the weights on the same core, and adds the bias and the ReLU while the
//! tile is still in cache. When a 2x2 max-pooling reads the output (U-Net's
//! encoder), the pooled rows are a second output, made from the same tile.
//!
//! A 3x3 convolution over enough channels runs by Winograd's F(2×2, 3×3)
//! instead (`tiled_winograd.rs`).

use std::sync::Arc;

use rayon::prelude::*;
use tract_core::internal::*;
use tract_core::{as_op, op_as_typed_op, op_out_of_plan};
use tract_linalg::multithread::{current_tract_executor, Executor};
use unet_kernels::product;

/// A convolution of the channel concatenation of its inputs, then bias and
/// optionally ReLU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TiledConv {
    /// Input channels of each input, concatenated in this order.
    pub parts: TVec<usize>,
    pub output_channels: usize,
    /// (height, width).
    pub kernel: (usize, usize),
    /// Zero padding as (top, left, bottom, right).
    pub padding: [usize; 4],
    /// `[output_channels, Σparts · kh · kw]`: OIHW weights, one row per output channel.
    pub weights: Arc<Tensor>,
    /// `[output_channels]`.
    pub bias: Arc<Tensor>,
    pub relu: bool,
    /// Also output the 2x2, stride-2 max-pooling of the output (after the
    /// ReLU), computed while each tile is in cache.
    pub pool: bool,
    /// For a 3x3 kernel run by Winograd F(2×2, 3×3): the transformed weights,
    /// `[16, output_channels, Σparts]` ([`unet_kernels::winograd::transform_weights`]).
    pub winograd: Option<Arc<Tensor>>,
}

/// Patch-matrix elements per tile when each thread works alone: 256 KiB of f32.
const PATCH_ELEMS: usize = 64 << 10;

/// The geometry of one evaluation.
#[derive(Clone, Copy)]
pub(super) struct Geometry {
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
    /// Rows of the patch matrix: Σparts · kh · kw.
    pub(super) depth: usize,
}

impl TiledConv {
    pub(super) fn input_channels(&self) -> usize {
        self.parts.iter().sum()
    }

    fn output_hw(&self, h: usize, w: usize) -> TractResult<(usize, usize)> {
        let [top, left, bottom, right] = self.padding;
        let (kh, kw) = self.kernel;
        ensure!(
            h + top + bottom >= kh && w + left + right >= kw,
            "a {h}x{w} input is smaller than the {kh}x{kw} kernel"
        );
        Ok((h + top + bottom + 1 - kh, w + left + right + 1 - kw))
    }

    /// Writes the patch matrix of output rows `y0..y1` of image `b` into
    /// `patches`: row `(c·kh + ky)·kw + kx` holds channel c's pixels under
    /// kernel tap (ky, kx), zero outside the input.
    fn im2col(
        &self,
        inputs: &[&[f32]],
        g: Geometry,
        b: usize,
        y0: usize,
        y1: usize,
        patches: &mut [f32],
    ) {
        let (kh, kw) = self.kernel;
        let [top, left, ..] = self.padding;
        let cols = (y1 - y0) * g.wo;
        let plane = g.h * g.w;
        let channels = inputs
            .iter()
            .zip(&self.parts)
            .flat_map(|(input, &c)| input[b * c * plane..(b + 1) * c * plane].chunks_exact(plane));
        let taps = channels.flat_map(|channel| {
            (0..kh).flat_map(move |ky| (0..kw).map(move |kx| (channel, ky, kx)))
        });
        for (row, (channel, ky, kx)) in patches[..g.depth * cols].chunks_exact_mut(cols).zip(taps) {
            // Output columns whose input column x + kx - left is inside.
            let x_lo = left.saturating_sub(kx).min(g.wo);
            let x_hi = (g.w + left).saturating_sub(kx).clamp(x_lo, g.wo);
            for (out, y) in row.chunks_exact_mut(g.wo).zip(y0..y1) {
                let iy = (y + ky).wrapping_sub(top);
                if iy >= g.h {
                    out.fill(0.0);
                    continue;
                }
                out[..x_lo].fill(0.0);
                if x_hi > x_lo {
                    // Then x_lo + kx >= left: x_lo was not clamped.
                    let from = iy * g.w + x_lo + kx - left;
                    out[x_lo..x_hi].copy_from_slice(&channel[from..from + x_hi - x_lo]);
                }
                out[x_hi..].fill(0.0);
            }
        }
    }

    /// Output rows `y0..y1` of image `b`: weights × patches, then bias and ReLU,
    /// then the pooled rows `y0/2..y1/2`, on the calling thread.
    ///
    /// # Safety
    /// `out` must point to the `[N, Cout, ho, wo]` output and, when pooling,
    /// `pooled` to the `[N, Cout, ho/2, wo/2]` one, with `y0` even; no other
    /// thread may access these rows of image `b` meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        &self,
        g: Geometry,
        (weights, bias): (&[f32], &[f32]),
        b: usize,
        y0: usize,
        y1: usize,
        patches: &[f32],
        out: *mut f32,
        pooled: *mut f32,
    ) {
        let cols = (y1 - y0) * g.wo;
        let plane = g.ho * g.wo;
        // SAFETY: the caller owns rows y0..y1 of image b: `cout` rows of `cols`
        // floats at stride `plane`, inside the output.
        unsafe {
            let dst = out.add(b * self.output_channels * plane + y0 * g.wo);
            product::multiply_packed(
                weights,
                (self.output_channels, g.depth, cols),
                (patches.as_ptr(), cols),
                (dst, plane),
                1,
            );
            for (co, &bias) in bias.iter().enumerate() {
                let row = std::slice::from_raw_parts_mut(dst.add(co * plane), cols);
                if self.relu {
                    row.iter_mut().for_each(|v| *v = (*v + bias).max(0.0));
                } else {
                    row.iter_mut().for_each(|v| *v += bias);
                }
            }
            self.pool_tile(g, b, y0, y1, out, pooled);
        }
    }

    /// The pooled rows `y0/2..y1/2` of image `b` from output rows `y0..y1`.
    ///
    /// # Safety
    /// As for [`Self::tile`], and output rows `y0..y1` are written.
    pub(super) unsafe fn pool_tile(
        &self,
        g: Geometry,
        b: usize,
        y0: usize,
        y1: usize,
        out: *const f32,
        pooled: *mut f32,
    ) {
        if !self.pool {
            return;
        }
        let (hp, wp) = (g.ho / 2, g.wo / 2);
        let plane = g.ho * g.wo;
        for co in 0..self.output_channels {
            // SAFETY: the caller owns these rows, inside both outputs.
            unsafe {
                let first = out.add((b * self.output_channels + co) * plane + y0 * g.wo);
                let channel = std::slice::from_raw_parts(first, (y1 - y0) * g.wo);
                let into = pooled.add((b * self.output_channels + co) * hp * wp);
                // Pairs of rows within the tile; an odd last row pools into nothing.
                for (pair, y) in channel.chunks_exact(2 * g.wo).zip((y0 / 2)..hp) {
                    let (top, bottom) = pair.split_at(g.wo);
                    let row = std::slice::from_raw_parts_mut(into.add(y * wp), wp);
                    for (x, v) in row.iter_mut().enumerate() {
                        *v = top[2 * x]
                            .max(top[2 * x + 1])
                            .max(bottom[2 * x])
                            .max(bottom[2 * x + 1]);
                    }
                }
            }
        }
    }

    /// Output rows per tile: even when pooling, so row pairs never straddle tiles.
    fn rows_per_tile(&self, g: Geometry) -> usize {
        let rows = tile_rows(g.depth, g.ho, g.wo);
        if self.pool {
            (rows + 1) & !1
        } else {
            rows
        }
    }

    fn run(
        &self,
        inputs: &[&[f32]],
        n: usize,
        g: Geometry,
        (out, pooled): (OutputPtr, OutputPtr),
        threads: usize,
    ) -> TractResult<()> {
        if let Some(u) = &self.winograd {
            return self.run_winograd(plain_f32(u)?, inputs, n, g, (out, pooled), threads);
        }
        let rows = self.rows_per_tile(g);
        let weights_and_bias = (plain_f32(&self.weights)?, plain_f32(&self.bias)?);
        let len = g.depth * rows * g.wo;
        for_each_tile(n, g.ho, rows, threads, |b, y0, y1| {
            with_scratch(len, |patches| {
                self.im2col(inputs, g, b, y0, y1, patches);
                // SAFETY: tiles are disjoint, start at even rows, and each is
                // taken by one thread.
                unsafe {
                    self.tile(
                        g,
                        weights_and_bias,
                        b,
                        y0,
                        y1,
                        patches,
                        out.get(),
                        pooled.get(),
                    )
                }
            })
        });
        Ok(())
    }
}

/// Calls `tile(b, y0, y1)` for rows `y0..y1` of image `b`, tiles of `rows`
/// rows covering `n` images of `h` rows, each tile on one of `threads` threads.
pub(super) fn for_each_tile(
    n: usize,
    h: usize,
    rows: usize,
    threads: usize,
    tile: impl Fn(usize, usize, usize) + Sync,
) {
    let tiles: Vec<(usize, usize)> = (0..n)
        .flat_map(|b| (0..h).step_by(rows).map(move |y0| (b, y0)))
        .collect();
    let run = |&(b, y0): &(usize, usize)| tile(b, y0, (y0 + rows).min(h));
    if threads == 1 {
        tiles.iter().for_each(run);
    } else {
        tiles.par_iter().for_each(run);
    }
}

/// Runs `f(threads)` on tract's current thread pool.
pub(super) fn on_tract_threads<R: Send>(f: impl FnOnce(usize) -> R + Send) -> R {
    match current_tract_executor() {
        Executor::MultiThread(pool) => {
            let threads = pool.current_num_threads();
            pool.install(|| f(threads))
        }
        Executor::RayonGlobal => f(rayon::current_num_threads()),
        Executor::SingleThread => f(1),
    }
}

thread_local! {
    /// Each thread's tile buffer (a patch matrix, or a deconvolution's
    /// product), kept from tile to tile and frame to frame: a buffer allocated
    /// per tile churns the worker threads' malloc arenas.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A plain f32 tensor's values.
pub(super) fn plain_f32(tensor: &Tensor) -> TractResult<&[f32]> {
    tensor.try_as_plain_ram()?.as_slice::<f32>()
}

/// Runs `f` on this thread's tile buffer, at least `len` long.
pub(super) fn with_scratch(len: usize, f: impl FnOnce(&mut [f32])) {
    SCRATCH.with_borrow_mut(|scratch| {
        if scratch.len() < len {
            scratch.resize(len, 0.0);
        }
        f(&mut scratch[..len])
    })
}

/// Output rows per tile: a patch matrix of about 256 KiB of f32, which stays
/// in the core's L2 cache from its gathering to the matrix product.
pub(super) fn tile_rows(depth: usize, ho: usize, wo: usize) -> usize {
    (PATCH_ELEMS / (depth * wo).max(1)).clamp(1, ho.max(1))
}

/// Whether [`TiledConv`] suits a convolution with `depth` patch rows (Cin·kh·kw)
/// and `n` images of `ho`x`wo` outputs on `threads` threads: its tiles must be
/// at least 64 pixels wide, or the matrix product repacks the weights for too
/// little work, and at least four per thread, to balance the threads. The deep,
/// low-resolution layers fail this; tract's lazy im2col handles them as well
/// (unless they run by Winograd, `tiled_winograd.rs`).
pub fn suits(depth: usize, n: usize, (ho, wo): (usize, usize), threads: usize) -> bool {
    let rows = tile_rows(depth, ho, wo);
    rows * wo >= 64 && n * ho.div_ceil(rows) >= 4 * threads.max(1)
}

/// The output, written by threads that each own whole tiles.
#[derive(Clone, Copy)]
pub(super) struct OutputPtr(pub(super) *mut f32);
// SAFETY: the threads write disjoint tiles (see `TiledConv::run`).
unsafe impl Send for OutputPtr {}
unsafe impl Sync for OutputPtr {}

impl OutputPtr {
    /// A method, so closures capture the whole (Sync) wrapper, not its field.
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}

impl Op for TiledConv {
    fn name(&self) -> StaticName {
        "TiledConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{:?} -> {}, kernel {:?}, padding {:?}, relu {}, pool {}, winograd {}",
            self.parts,
            self.output_channels,
            self.kernel,
            self.padding,
            self.relu,
            self.pool,
            self.winograd.is_some()
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for TiledConv {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == self.parts.len());
        let shape = inputs[0].shape();
        ensure!(shape.len() == 4, "TiledConv takes NCHW inputs");
        let (n, h, w) = (shape[0], shape[2], shape[3]);
        for (input, &channels) in inputs.iter().zip(&self.parts) {
            ensure!(
                input.shape() == [n, channels, h, w],
                "input shape {:?}",
                input.shape()
            );
        }
        let (ho, wo) = self.output_hw(h, w)?;
        let (kh, kw) = self.kernel;
        let g = Geometry {
            h,
            w,
            ho,
            wo,
            depth: self.input_channels() * kh * kw,
        };
        let slices = inputs
            .iter()
            .map(|t| plain_f32(t))
            .collect::<TractResult<TVec<&[f32]>>>()?;
        // SAFETY: every element is written: each tile covers all output channels
        // of its rows, and the tiles cover all rows of all images; the pooled
        // output likewise, one row per pair of output rows.
        let mut output =
            unsafe { Tensor::uninitialized::<f32>(&[n, self.output_channels, ho, wo])? };
        let pooled_shape = [n, self.output_channels, ho / 2, wo / 2];
        let mut pooled = self
            .pool
            .then(|| unsafe { Tensor::uninitialized::<f32>(&pooled_shape) })
            .transpose()?;
        let pointer = |t: &mut Tensor| -> TractResult<OutputPtr> {
            Ok(OutputPtr(
                t.try_as_plain_ram_mut()?
                    .as_slice_mut::<f32>()?
                    .as_mut_ptr(),
            ))
        };
        let out = pointer(&mut output)?;
        // `tile` only writes the pooled output when pooling.
        let into = match &mut pooled {
            Some(pooled) => pointer(pooled)?,
            None => OutputPtr(std::ptr::null_mut()),
        };
        on_tract_threads(|threads| self.run(&slices, n, g, (out, into), threads))?;
        let mut outputs = tvec!(output.into_tvalue());
        outputs.extend(pooled.map(Tensor::into_tvalue));
        Ok(outputs)
    }

    op_out_of_plan!();
}

impl TypedOp for TiledConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == self.parts.len());
        let first = inputs[0]
            .shape
            .as_concrete()
            .context("TiledConv needs concrete shapes")?;
        ensure!(first.len() == 4);
        for (input, &channels) in inputs.iter().zip(&self.parts) {
            ensure!(input.datum_type == f32::datum_type());
            let shape = input
                .shape
                .as_concrete()
                .context("TiledConv needs concrete shapes")?;
            ensure!(
                shape == [first[0], channels, first[2], first[3]],
                "input shape {shape:?} for {channels} channels"
            );
        }
        let (ho, wo) = self.output_hw(first[2], first[3])?;
        let output = f32::fact([first[0], self.output_channels, ho, wo]);
        if self.pool {
            let pooled = f32::fact([first[0], self.output_channels, ho / 2, wo / 2]);
            Ok(tvec!(output, pooled))
        } else {
            Ok(tvec!(output))
        }
    }

    /// One FMA per output element and patch-matrix row (what profiles divide by).
    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let output = self.output_facts(inputs)?.remove(0);
        let (kh, kw) = self.kernel;
        let macs = output.shape.iter().product::<TDim>() * (self.input_channels() * kh * kw);
        Ok(tvec!((Cost::FMA(f32::datum_type()), macs)))
    }

    as_op!();
}
