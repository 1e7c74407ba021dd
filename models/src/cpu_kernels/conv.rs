//! Stride-1 convolution: im2col and gemm forward, the input gradient as the
//! same convolution with the adjoint kernel, the weight gradient one gemm per
//! tile; a 3x3 f32 one's forward pass and weight gradient by Winograd
//! ([`super::winograd`]).

use candle_core::{bail, CpuStorage, CustomOp2, Device, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::matmul::{gemm, gemm_raw, Threads};
use super::{slice, with_data, Elem};

/// Geometry of a stride-1 square-kernel convolution.
#[derive(Clone, Copy)]
pub(super) struct ConvShape {
    pub(super) cin: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) k: usize,
    pub(super) padding: usize,
}

impl ConvShape {
    pub(super) fn out_hw(&self) -> (usize, usize) {
        (
            self.h + 2 * self.padding + 1 - self.k,
            self.w + 2 * self.padding + 1 - self.k,
        )
    }

    /// Output rows per im2col tile when a tile is spread over all threads:
    /// about 4096 output pixels, so a tile is a wide enough matrix for gemm.
    fn tile_rows(&self) -> usize {
        let (ho, wo) = self.out_hw();
        (4096 / wo.max(1)).clamp(1, ho.max(1))
    }

    /// Output rows per tile when each thread convolves whole tiles on its own,
    /// im2col and gemm back to back: a patch matrix of about 256 KiB of f32,
    /// which stays in the core's L2 cache in between (a 4096-pixel tile of 64
    /// channels is 9 MiB, written out to memory and read back by gemm's packing).
    /// `None` when such tiles would be thinner than 64 pixels or too few to
    /// keep the threads busy (the deep, low-resolution layers).
    fn per_thread_tile_rows(&self, n: usize) -> Option<usize> {
        const PATCH_ELEMS: usize = 64 << 10;
        let (ho, wo) = self.out_hw();
        let kk = self.cin * self.k * self.k;
        let rows = (PATCH_ELEMS / (kk * wo.max(1))).clamp(1, ho.max(1));
        let tiles = n * ho.div_ceil(rows);
        (rows * wo >= 64 && tiles >= 4 * rayon::current_num_threads()).then_some(rows)
    }
}

/// Patch matrix of output rows `y0..y1` of one image: row `(ci·k + ky)·k + kx`
/// holds the input pixels under kernel tap (ky, kx) of channel ci, zero outside.
fn im2col<T: Elem>(x: &[T], s: ConvShape, y0: usize, y1: usize, col: &mut [T]) {
    let n = (y1 - y0) * s.out_hw().1;
    col[..s.cin * s.k * s.k * n]
        .par_chunks_mut(s.k * s.k * n)
        .enumerate()
        .for_each(|(ci, taps)| im2col_channel(x, s, y0, y1, ci, taps));
}

/// [`im2col`] on the calling thread.
fn im2col_serial<T: Elem>(x: &[T], s: ConvShape, y0: usize, y1: usize, col: &mut [T]) {
    let n = (y1 - y0) * s.out_hw().1;
    for (ci, taps) in col[..s.cin * s.k * s.k * n]
        .chunks_mut(s.k * s.k * n)
        .enumerate()
    {
        im2col_channel(x, s, y0, y1, ci, taps);
    }
}

/// The k·k rows of input channel `ci` in the patch matrix of rows `y0..y1`.
fn im2col_channel<T: Elem>(x: &[T], s: ConvShape, y0: usize, y1: usize, ci: usize, taps: &mut [T]) {
    let (_, wo) = s.out_hw();
    let n = (y1 - y0) * wo;
    let zero = <T as Elem>::zero();
    let plane = &x[ci * s.h * s.w..(ci + 1) * s.h * s.w];
    for (tap, row) in taps.chunks_mut(n).enumerate() {
        let (ky, kx) = (tap / s.k, tap % s.k);
        // Output columns whose input column kx + x - padding is inside.
        let x_lo = s.padding.saturating_sub(kx).min(wo);
        let x_hi = (s.w + s.padding).saturating_sub(kx).clamp(x_lo, wo);
        for (r, y) in (y0..y1).enumerate() {
            let out = &mut row[r * wo..(r + 1) * wo];
            let iy = (y + ky).wrapping_sub(s.padding);
            if iy >= s.h {
                out.fill(zero);
                continue;
            }
            out[..x_lo].fill(zero);
            let src = iy * s.w + x_lo + kx - s.padding;
            out[x_lo..x_hi].copy_from_slice(&plane[src..src + x_hi - x_lo]);
            out[x_hi..].fill(zero);
        }
    }
}

/// Tiles of `rows` output rows, as (image, first row), for the per-thread paths.
pub(super) fn row_tiles(n: usize, ho: usize, rows: usize) -> Vec<(usize, usize)> {
    (0..n)
        .flat_map(|b| (0..ho).step_by(rows).map(move |y0| (b, y0)))
        .collect()
}

/// The output of [`conv_forward`], written by threads that each own whole tiles.
#[derive(Clone, Copy)]
pub(super) struct TileOutput<T>(pub(super) *mut T);
// SAFETY: the threads write disjoint tiles (see `conv_forward`).
unsafe impl<T> Send for TileOutput<T> {}
unsafe impl<T> Sync for TileOutput<T> {}

impl<T> TileOutput<T> {
    /// A method, so closures capture the whole (Sync) wrapper, not its pointer field.
    pub(super) fn ptr(self) -> *mut T {
        self.0
    }
}

/// `y[b] = W · im2col(x[b])`: `x [N, Cin, H, W]`, `weight [Cout, Cin, k, k]` flat.
fn conv_forward<T: Elem>(x: &[T], weight: &[T], n: usize, cout: usize, s: ConvShape) -> Vec<T> {
    if let Some(y) = T::conv_forward_fast(x, weight, n, cout, s) {
        return y;
    }
    let (ho, wo) = s.out_hw();
    let kk = s.cin * s.k * s.k;
    let mut y = vec![<T as Elem>::zero(); n * cout * ho * wo];
    let image = |b: usize| &x[b * s.cin * s.h * s.w..(b + 1) * s.cin * s.h * s.w];
    if let Some(rows) = s.per_thread_tile_rows(n) {
        let out = TileOutput(y.as_mut_ptr());
        row_tiles(n, ho, rows).par_iter().for_each_init(
            || vec![<T as Elem>::zero(); kk * rows * wo],
            |col, &(b, y0)| {
                let y1 = (y0 + rows).min(ho);
                let cols = (y1 - y0) * wo;
                im2col_serial(image(b), s, y0, y1, col);
                // SAFETY: this tile writes columns y0·wo..y1·wo of image b's
                // `cout` output rows and no other tile does; `y` outlives the loop.
                unsafe {
                    gemm_raw(
                        (cout, cols, kk),
                        out.ptr().add(b * cout * ho * wo + y0 * wo),
                        (ho * wo, 1),
                        false,
                        weight,
                        (kk, 1),
                        col,
                        (cols, 1),
                        Threads::Caller,
                    )
                }
            },
        );
        return y;
    }
    let rows = s.tile_rows();
    let mut col = vec![<T as Elem>::zero(); kk * rows * wo];
    for b in 0..n {
        let out = &mut y[b * cout * ho * wo..(b + 1) * cout * ho * wo];
        for y0 in (0..ho).step_by(rows) {
            let y1 = (y0 + rows).min(ho);
            let cols = (y1 - y0) * wo;
            im2col(image(b), s, y0, y1, &mut col);
            gemm(
                (cout, cols, kk),
                &mut out[y0 * wo..],
                (ho * wo, 1),
                false,
                weight,
                (kk, 1),
                &col,
                (cols, 1),
                Threads::All,
            );
        }
    }
    y
}

/// `dW = Σ_b grad[b] · im2col(x[b])ᵀ`, `[Cout, Cin·k·k]` flat.
fn conv_weight_grad<T: Elem>(x: &[T], grad: &[T], n: usize, cout: usize, s: ConvShape) -> Vec<T> {
    if let Some(dw) = T::conv_weight_grad_fast(x, grad, n, cout, s) {
        return dw;
    }
    let (ho, wo) = s.out_hw();
    let kk = s.cin * s.k * s.k;
    let image = |b: usize| &x[b * s.cin * s.h * s.w..(b + 1) * s.cin * s.h * s.w];
    // Adds tile (b, y0..y0 + rows) to `dw` (overwrites it if `first`).
    let add_tile = |dw: &mut [T],
                    col: &mut [T],
                    (b, y0): (usize, usize),
                    rows: usize,
                    first: bool,
                    threads: Threads| {
        let y1 = (y0 + rows).min(ho);
        let cols = (y1 - y0) * wo;
        match threads {
            Threads::All => im2col(image(b), s, y0, y1, col),
            Threads::Caller => im2col_serial(image(b), s, y0, y1, col),
        }
        gemm(
            (cout, kk, cols),
            dw,
            (kk, 1),
            !first,
            &grad[b * cout * ho * wo + y0 * wo..],
            (ho * wo, 1),
            col,
            (1, cols),
            threads,
        );
    };
    if let Some(rows) = s.per_thread_tile_rows(n) {
        let tiles = row_tiles(n, ho, rows);
        let per_thread = tiles.len().div_ceil(rayon::current_num_threads());
        // One partial sum per fixed run of tiles, added in order: the same
        // result whichever thread takes which run.
        let partials: Vec<Vec<T>> = tiles
            .par_chunks(per_thread)
            .map(|run| {
                let mut dw = vec![<T as Elem>::zero(); cout * kk];
                let mut col = vec![<T as Elem>::zero(); kk * rows * wo];
                for (i, &tile) in run.iter().enumerate() {
                    add_tile(&mut dw, &mut col, tile, rows, i == 0, Threads::Caller);
                }
                dw
            })
            .collect();
        let mut partials = partials.into_iter();
        let mut dw = partials.next().expect("at least one tile");
        for partial in partials {
            dw.par_iter_mut().zip(&partial).for_each(|(a, &b)| *a += b);
        }
        return dw;
    }
    let rows = s.tile_rows();
    let mut dw = vec![<T as Elem>::zero(); cout * kk];
    let mut col = vec![<T as Elem>::zero(); kk * rows * wo];
    for (i, tile) in row_tiles(n, ho, rows).into_iter().enumerate() {
        add_tile(&mut dw, &mut col, tile, rows, i == 0, Threads::All);
    }
    dw
}

/// The adjoint kernel of a stride-1 convolution: spatially flipped, in and
/// out channels swapped (`[Cout, Cin, k, k]` -> `[Cin, Cout, k, k]`).
fn adjoint_kernel<T: Elem>(w: &[T], cout: usize, cin: usize, k: usize) -> Vec<T> {
    let mut out = vec![<T as Elem>::zero(); w.len()];
    for o in 0..cout {
        for i in 0..cin {
            for t in 0..k * k {
                out[(i * cout + o) * k * k + (k * k - 1 - t)] = w[(o * cin + i) * k * k + t];
            }
        }
    }
    out
}

/// Stride-1 convolution `x [N, Cin, H, W] * w [Cout, Cin, k, k]` with zero
/// padding, as im2col and gemm; its input gradient is the same convolution
/// of the output gradient with the adjoint kernel, its weight gradient one gemm per tile.
struct Conv2d {
    padding: usize,
}

impl Conv2d {
    fn shape(&self, x: &[usize], w: &[usize]) -> Result<(usize, usize, ConvShape)> {
        let (&[n, cin, h, wd], &[cout, wcin, k, k2]) = (x, w) else {
            bail!("unet-conv2d: expected rank-4 input and kernel, got {x:?} and {w:?}")
        };
        if wcin != cin || k != k2 || k == 0 || k > h + 2 * self.padding || k > wd + 2 * self.padding
        {
            bail!(
                "unet-conv2d: input {x:?}, kernel {w:?}, padding {}",
                self.padding
            )
        }
        let s = ConvShape {
            cin,
            h,
            w: wd,
            k,
            padding: self.padding,
        };
        Ok((n, cout, s))
    }
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "unet-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, cout, s) = self.shape(l1.dims(), l2.dims())?;
        let (ho, wo) = s.out_hw();
        let y = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => f32::to_cpu_storage_owned(conv_forward(
                slice(s1, l1, self.name())?,
                slice(s2, l2, self.name())?,
                n,
                cout,
                s,
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => f64::to_cpu_storage_owned(conv_forward(
                slice(s1, l1, self.name())?,
                slice(s2, l2, self.name())?,
                n,
                cout,
                s,
            )),
            _ => bail!("{}: f32 or f64 input and kernel of one type", self.name()),
        };
        Ok((y, Shape::from((n, cout, ho, wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        fn run<T: Elem>(
            op: &Conv2d,
            x: &Tensor,
            w: &Tensor,
            grad: &Tensor,
        ) -> Result<(Option<Tensor>, Tensor)> {
            let (n, cout, s) = op.shape(x.dims(), w.dims())?;
            let (ho, wo) = s.out_hw();
            with_data::<T, _>(x, |xs| {
                with_data::<T, _>(w, |ws| {
                    with_data::<T, _>(grad, |g| {
                        // The network's first convolution reads the images, which
                        // need no gradient: its input gradient is a whole convolution.
                        let dx = if x.track_op() {
                            let adjoint = adjoint_kernel(ws, cout, s.cin, s.k);
                            let back = ConvShape {
                                cin: cout,
                                h: ho,
                                w: wo,
                                k: s.k,
                                padding: s.k - 1 - s.padding,
                            };
                            let dx = conv_forward(g, &adjoint, n, s.cin, back);
                            Some(Tensor::from_vec(dx, x.shape(), &Device::Cpu)?)
                        } else {
                            None
                        };
                        let dw = conv_weight_grad(xs, g, n, cout, s);
                        Ok((dx, Tensor::from_vec(dw, w.shape(), &Device::Cpu)?))
                    })
                })
            })
        }
        let (dx, dw) = match x.dtype() {
            candle_core::DType::F32 => run::<f32>(self, x, w, grad)?,
            candle_core::DType::F64 => run::<f64>(self, x, w, grad)?,
            dt => bail!("{}: unsupported dtype {dt:?}", self.name()),
        };
        Ok((dx, Some(dw)))
    }
}

/// Convolution with an input gradient as fast as its forward pass.
pub fn conv2d(x: &Tensor, weight: &Tensor, padding: usize) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, Conv2d { padding })
}
