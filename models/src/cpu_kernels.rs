//! Training kernels for the CPU with hand-written backward passes.
//!
//! candle 0.11's CPU backward of these layers is the bulk of a training step:
//! the input gradient of a convolution runs its naive `conv_transpose2d`, and
//! BatchNorm and max pooling, composed from broadcast and reduction ops, make
//! a dozen passes over every activation. Each op here computes the same
//! function in one or two passes (the convolution's input gradient becomes a
//! regular im2col convolution with the flipped, transposed kernel). They are
//! used on the CPU only; on CUDA the composed ops of [`crate::layers`] run,
//! and those stay the reference the tests compare these kernels with.
//! f32 and f64 (the finite-difference tests) are supported.

use std::sync::{Arc, Mutex};

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Device, Layout, Result, Shape, Storage,
    Tensor, WithDType,
};
use rayon::prelude::*;

/// Element types of the kernels (f32, f64); sums are taken in f64.
trait Elem:
    WithDType + PartialOrd + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self>
{
    fn zero() -> Self {
        Self::of(0.0)
    }
    fn of(v: f64) -> Self {
        <Self as WithDType>::from_f64(v)
    }
    fn f64(self) -> f64 {
        <Self as WithDType>::to_f64(self)
    }
    fn max(self, other: Self) -> Self {
        if other > self {
            other
        } else {
            self
        }
    }
}
impl Elem for f32 {}
impl Elem for f64 {}

/// The contiguous slice behind a custom op's argument.
fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&s.as_slice::<T>()?[start..end]),
        None => bail!("{op}: non-contiguous input"),
    }
}

/// Runs `f` on the contiguous data of a CPU tensor.
fn with_data<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("cpu kernel on a non-CPU tensor")
    };
    f(slice(cpu, layout, "cpu kernel")?)
}

/// Geometry of a stride-1 square-kernel convolution.
#[derive(Clone, Copy)]
struct ConvShape {
    cin: usize,
    h: usize,
    w: usize,
    k: usize,
    padding: usize,
}

impl ConvShape {
    fn out_hw(&self) -> (usize, usize) {
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

/// How a gemm call uses the threads: spread over all of them, or on the
/// calling thread alone (when the threads each work on their own tiles).
#[derive(Clone, Copy)]
enum Threads {
    All,
    Caller,
}

/// `dst[m × n] (+)= lhs[m × k] · rhs[k × n]`, matrices given by (row, column) strides.
#[allow(clippy::too_many_arguments)]
fn gemm<T: Elem>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    dst_strides: (usize, usize),
    accumulate: bool,
    lhs: &[T],
    lhs_strides: (usize, usize),
    rhs: &[T],
    rhs_strides: (usize, usize),
    threads: Threads,
) {
    let last = |(rs, cs): (usize, usize), rows: usize, cols: usize| {
        (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs
    };
    assert!(m == 0 || n == 0 || last(dst_strides, m, n) < dst.len());
    assert!(m == 0 || k == 0 || last(lhs_strides, m, k) < lhs.len());
    assert!(k == 0 || n == 0 || last(rhs_strides, k, n) < rhs.len());
    // SAFETY: the asserts keep every strided access inside the slices; `dst`
    // is borrowed mutably, so it cannot alias `lhs` or `rhs`.
    unsafe {
        gemm_raw(
            (m, n, k),
            dst.as_mut_ptr(),
            dst_strides,
            accumulate,
            lhs,
            lhs_strides,
            rhs,
            rhs_strides,
            threads,
        )
    }
}

/// [`gemm`] into a raw destination.
///
/// # Safety
/// `dst` must be valid for writes at every `(i, j)` offset `i·rs + j·cs`,
/// `i < m, j < n`, with no other access to those elements meanwhile; `lhs` and
/// `rhs` must hold their matrices at the strides given.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw<T: Elem>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    (dst_rs, dst_cs): (usize, usize),
    accumulate: bool,
    lhs: &[T],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[T],
    (rhs_rs, rhs_cs): (usize, usize),
    threads: Threads,
) {
    let parallelism = match threads {
        Threads::All => gemm::Parallelism::Rayon(rayon::current_num_threads()),
        Threads::Caller => gemm::Parallelism::None,
    };
    // SAFETY: as promised by the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            T::of(1.0),
            T::of(1.0),
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Tiles of `rows` output rows, as (image, first row), for the per-thread paths.
fn row_tiles(n: usize, ho: usize, rows: usize) -> Vec<(usize, usize)> {
    (0..n)
        .flat_map(|b| (0..ho).step_by(rows).map(move |y0| (b, y0)))
        .collect()
}

/// The output of [`conv_forward`], written by threads that each own whole tiles.
#[derive(Clone, Copy)]
struct TileOutput<T>(*mut T);
// SAFETY: the threads write disjoint tiles (see `conv_forward`).
unsafe impl<T> Send for TileOutput<T> {}
unsafe impl<T> Sync for TileOutput<T> {}

impl<T> TileOutput<T> {
    /// A method, so closures capture the whole (Sync) wrapper, not its pointer field.
    fn ptr(self) -> *mut T {
        self.0
    }
}

/// `y[b] = W · im2col(x[b])`: `x [N, Cin, H, W]`, `weight [Cout, Cin, k, k]` flat.
fn conv_forward<T: Elem>(x: &[T], weight: &[T], n: usize, cout: usize, s: ConvShape) -> Vec<T> {
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

/// 2x2 stride-2 transposed convolution, `x [N, Cin, H, W]`, `w [Cin, Cout, 2, 2]`:
/// per image one gemm `Wᵀ · X` to `[Cout·4, H·W]`, then each of the four taps
/// scattered to its pixel of the 2x2 output blocks (candle's CPU version is a
/// direct loop nest, slower than the convolutions around it).
struct ConvTranspose2x2;

/// `t [Cout·4, H·W]` (tap-major) <-> `y [Cout, 2H, 2W]`.
fn scatter_taps<T: Elem>(t: &[T], y: &mut [T], h: usize, w: usize) {
    y.par_chunks_mut(4 * h * w)
        .zip(t.par_chunks(4 * h * w))
        .for_each(|(y, t)| {
            for tap in 0..4 {
                let (di, dj) = (tap / 2, tap % 2);
                for i in 0..h {
                    let row = &mut y[(2 * i + di) * 2 * w..(2 * i + di + 1) * 2 * w];
                    for j in 0..w {
                        row[2 * j + dj] = t[tap * h * w + i * w + j];
                    }
                }
            }
        });
}

fn gather_taps<T: Elem>(y: &[T], t: &mut [T], h: usize, w: usize) {
    t.par_chunks_mut(4 * h * w)
        .zip(y.par_chunks(4 * h * w))
        .for_each(|(t, y)| {
            for tap in 0..4 {
                let (di, dj) = (tap / 2, tap % 2);
                for i in 0..h {
                    let row = &y[(2 * i + di) * 2 * w..(2 * i + di + 1) * 2 * w];
                    for j in 0..w {
                        t[tap * h * w + i * w + j] = row[2 * j + dj];
                    }
                }
            }
        });
}

fn conv_transpose_forward<T: Elem>(x: &[T], w: &[T], dims: [usize; 5]) -> Vec<T> {
    let [n, cin, cout, h, wd] = dims;
    let hw = h * wd;
    let mut y = vec![<T as Elem>::zero(); n * cout * 4 * hw];
    let mut taps = vec![<T as Elem>::zero(); cout * 4 * hw];
    for b in 0..n {
        gemm(
            (cout * 4, hw, cin),
            &mut taps,
            (hw, 1),
            false,
            w,
            (1, cout * 4),
            &x[b * cin * hw..],
            (hw, 1),
            Threads::All,
        );
        scatter_taps(
            &taps,
            &mut y[b * cout * 4 * hw..(b + 1) * cout * 4 * hw],
            h,
            wd,
        );
    }
    y
}

/// Input and weight gradients of [`conv_transpose_forward`].
fn conv_transpose_backward<T: Elem>(
    x: &[T],
    w: &[T],
    grad: &[T],
    dims: [usize; 5],
) -> (Vec<T>, Vec<T>) {
    let [n, cin, cout, h, wd] = dims;
    let hw = h * wd;
    let mut dx = vec![<T as Elem>::zero(); n * cin * hw];
    let mut dw = vec![<T as Elem>::zero(); cin * cout * 4];
    let mut taps = vec![<T as Elem>::zero(); cout * 4 * hw];
    for b in 0..n {
        gather_taps(
            &grad[b * cout * 4 * hw..(b + 1) * cout * 4 * hw],
            &mut taps,
            h,
            wd,
        );
        gemm(
            (cin, hw, cout * 4),
            &mut dx[b * cin * hw..],
            (hw, 1),
            false,
            w,
            (cout * 4, 1),
            &taps,
            (hw, 1),
            Threads::All,
        );
        gemm(
            (cin, cout * 4, hw),
            &mut dw,
            (cout * 4, 1),
            b > 0,
            &x[b * cin * hw..],
            (hw, 1),
            &taps,
            (1, hw),
            Threads::All,
        );
    }
    (dx, dw)
}

impl ConvTranspose2x2 {
    fn dims(x: &[usize], w: &[usize]) -> Result<[usize; 5]> {
        match (x, w) {
            (&[n, cin, h, wd], &[wcin, cout, 2, 2]) if wcin == cin => Ok([n, cin, cout, h, wd]),
            _ => bail!("unet-conv-transpose2x2: input {x:?}, kernel {w:?}"),
        }
    }
}

impl CustomOp2 for ConvTranspose2x2 {
    fn name(&self) -> &'static str {
        "unet-conv-transpose2x2"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = Self::dims(l1.dims(), l2.dims())?;
        let [n, _, cout, h, w] = dims;
        let name = self.name();
        let y = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => f32::to_cpu_storage_owned(
                conv_transpose_forward(slice(s1, l1, name)?, slice(s2, l2, name)?, dims),
            ),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => f64::to_cpu_storage_owned(
                conv_transpose_forward(slice(s1, l1, name)?, slice(s2, l2, name)?, dims),
            ),
            _ => bail!("{name}: f32 or f64 input and kernel of one type"),
        };
        Ok((y, Shape::from((n, cout, 2 * h, 2 * w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        fn run<T: Elem>(x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
            let dims = ConvTranspose2x2::dims(x.dims(), w.dims())?;
            with_data::<T, _>(x, |xs| {
                with_data::<T, _>(w, |ws| {
                    with_data::<T, _>(grad, |g| {
                        let (dx, dw) = conv_transpose_backward(xs, ws, g, dims);
                        Ok((
                            Tensor::from_vec(dx, x.shape(), &Device::Cpu)?,
                            Tensor::from_vec(dw, w.shape(), &Device::Cpu)?,
                        ))
                    })
                })
            })
        }
        let (dx, dw) = match x.dtype() {
            candle_core::DType::F32 => run::<f32>(x, w, grad)?,
            candle_core::DType::F64 => run::<f64>(x, w, grad)?,
            dt => bail!("{}: unsupported dtype {dt:?}", self.name()),
        };
        Ok((Some(dx), Some(dw)))
    }
}

pub fn conv_transpose2x2(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, ConvTranspose2x2)
}

/// A one-input kernel in both element types: the forward pass, and the
/// input gradient from a saved tensor (the op's input or output) and the
/// output gradient. `dims` are the input's NCHW dims.
trait UnaryKernel {
    /// Whether `backward` takes the op's output (else its input).
    const BACKWARD_FROM_OUTPUT: bool;
    fn name(&self) -> &'static str;
    fn output_dims(&self, dims: &[usize]) -> Vec<usize>;
    fn forward<T: Elem>(&self, x: &[T], dims: &[usize]) -> Vec<T>;
    fn backward<T: Elem>(&self, saved: &[T], grad: &[T], dims: &[usize]) -> Vec<T>;
}

/// The candle op of a [`UnaryKernel`].
struct Unary<K>(K);

impl<K: UnaryKernel> CustomOp1 for Unary<K> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        unary_fwd(&self.0, s, l)
    }

    fn bwd(&self, x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let saved = if K::BACKWARD_FROM_OUTPUT { res } else { x };
        unary_bwd(&self.0, x, saved, grad).map(Some)
    }
}

fn unary_fwd<K: UnaryKernel>(k: &K, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
    let dims = l.shape().dims();
    let out = match s {
        CpuStorage::F32(_) => f32::to_cpu_storage_owned(k.forward(slice(s, l, k.name())?, dims)),
        CpuStorage::F64(_) => f64::to_cpu_storage_owned(k.forward(slice(s, l, k.name())?, dims)),
        _ => bail!("{}: only f32 and f64 are supported", k.name()),
    };
    Ok((out, Shape::from(k.output_dims(dims))))
}

fn unary_bwd<K: UnaryKernel>(k: &K, x: &Tensor, saved: &Tensor, grad: &Tensor) -> Result<Tensor> {
    fn run<T: Elem, K: UnaryKernel>(
        k: &K,
        x: &Tensor,
        saved: &Tensor,
        grad: &Tensor,
    ) -> Result<Tensor> {
        with_data::<T, _>(saved, |s| {
            with_data::<T, _>(grad, |g| {
                Tensor::from_vec(k.backward(s, g, x.dims()), x.shape(), &Device::Cpu)
            })
        })
    }
    match x.dtype() {
        candle_core::DType::F32 => run::<f32, K>(k, x, saved, grad),
        candle_core::DType::F64 => run::<f64, K>(k, x, saved, grad),
        dt => bail!("{}: unsupported dtype {dt:?}", k.name()),
    }
}

/// 2x2 stride-2 max pooling; the gradient goes to the first maximum of each
/// window, as PyTorch's; odd trailing rows and columns are dropped.
struct MaxPool2x2;

impl UnaryKernel for MaxPool2x2 {
    const BACKWARD_FROM_OUTPUT: bool = false;

    fn name(&self) -> &'static str {
        "unet-max-pool2x2"
    }

    fn output_dims(&self, d: &[usize]) -> Vec<usize> {
        vec![d[0], d[1], d[2] / 2, d[3] / 2]
    }

    fn forward<T: Elem>(&self, x: &[T], d: &[usize]) -> Vec<T> {
        let (h, w) = (d[2], d[3]);
        let (ho, wo) = (h / 2, w / 2);
        let mut out = vec![<T as Elem>::zero(); d[0] * d[1] * ho * wo];
        out.par_chunks_mut(ho * wo)
            .zip(x.par_chunks(h * w))
            .for_each(|(out, x)| {
                for y in 0..ho {
                    let (r0, r1) = (&x[2 * y * w..], &x[(2 * y + 1) * w..]);
                    for (xo, o) in out[y * wo..(y + 1) * wo].iter_mut().enumerate() {
                        let c = 2 * xo;
                        *o = Elem::max(Elem::max(r0[c], r0[c + 1]), Elem::max(r1[c], r1[c + 1]));
                    }
                }
            });
        out
    }

    fn backward<T: Elem>(&self, x: &[T], grad: &[T], d: &[usize]) -> Vec<T> {
        let (h, w) = (d[2], d[3]);
        let (ho, wo) = (h / 2, w / 2);
        let mut dx = vec![<T as Elem>::zero(); x.len()];
        dx.par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w))
            .zip(grad.par_chunks(ho * wo))
            .for_each(|((dx, x), g)| {
                for y in 0..ho {
                    for xo in 0..wo {
                        let top = 2 * y * w + 2 * xo;
                        // First maximum in row-major order, as PyTorch's argmax.
                        let mut best = top;
                        for i in [top + 1, top + w, top + w + 1] {
                            if x[i] > x[best] {
                                best = i;
                            }
                        }
                        dx[best] = g[y * wo + xo];
                    }
                }
            });
        dx
    }
}

pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Unary(MaxPool2x2))
}

/// `max(x, 0)`; the gradient passes where the output is positive (candle's
/// own ReLU backward builds a zeros tensor, a mask and a cast first).
struct Relu;

impl UnaryKernel for Relu {
    const BACKWARD_FROM_OUTPUT: bool = true;

    fn name(&self) -> &'static str {
        "unet-relu"
    }

    fn output_dims(&self, dims: &[usize]) -> Vec<usize> {
        dims.to_vec()
    }

    fn forward<T: Elem>(&self, x: &[T], _: &[usize]) -> Vec<T> {
        let zero = <T as Elem>::zero();
        x.par_iter()
            .map(|&v| if v > zero { v } else { zero })
            .collect()
    }

    fn backward<T: Elem>(&self, y: &[T], grad: &[T], _: &[usize]) -> Vec<T> {
        let zero = <T as Elem>::zero();
        y.par_iter()
            .zip(grad.par_iter())
            .map(|(&y, &g)| if y > zero { g } else { zero })
            .collect()
    }
}

pub fn relu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Unary(Relu))
}

/// Per-channel mean and biased variance of the last training forward pass.
type ChannelStats = Arc<Mutex<(Vec<f64>, Vec<f64>)>>;

/// Training-mode BatchNorm `(x - mean) / sqrt(var + eps) * weight + bias`
/// over batch statistics, differentiated through the statistics, with the
/// ReLU that follows it in every U-Net block optionally fused: one op instead
/// of two saves an activation-sized tensor, a pass each way and the zero-fill
/// and sum candle's backward spends on every op's input gradient.
struct BatchNormTrain {
    eps: f64,
    relu: bool,
    stats: ChannelStats,
}

/// Mean and biased variance per channel (two passes, f64 sums).
fn channel_stats<T: Elem>(x: &[T], n: usize, c: usize, hw: usize) -> (Vec<f64>, Vec<f64>) {
    let count = (n * hw) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let planes = || (0..n).map(move |b| &x[(b * c + ch) * hw..(b * c + ch + 1) * hw]);
            let sum: f64 = planes()
                .map(|p| p.iter().map(|v| v.f64()).sum::<f64>())
                .sum();
            let mean = sum / count;
            let sq: f64 = planes()
                .map(|p| p.iter().map(|v| (v.f64() - mean).powi(2)).sum::<f64>())
                .sum();
            (mean, sq / count)
        })
        .unzip()
}

fn bn_fwd<T: Elem>(
    x: &[T],
    weight: &[T],
    bias: &[T],
    (n, c, hw): (usize, usize, usize),
    eps: f64,
    relu: bool,
) -> (Vec<T>, Vec<f64>, Vec<f64>) {
    let (mean, var) = channel_stats(x, n, c, hw);
    let mut y = vec![<T as Elem>::zero(); x.len()];
    y.par_chunks_mut(hw)
        .zip(x.par_chunks(hw))
        .enumerate()
        .for_each(|(plane, (y, x))| {
            let ch = plane % c;
            let scale = weight[ch].f64() / (var[ch] + eps).sqrt();
            let shift = bias[ch].f64() - mean[ch] * scale;
            let (scale, shift) = (T::of(scale), T::of(shift));
            for (y, &x) in y.iter_mut().zip(x) {
                *y = x * scale + shift;
            }
            if relu {
                let zero = <T as Elem>::zero();
                for y in y.iter_mut() {
                    *y = if *y > zero { *y } else { zero };
                }
            }
        });
    (y, mean, var)
}

/// Gradients of [`bn_fwd`]: with x̂ the normalised input and M = N·H·W,
/// dβ = Σ g, dγ = Σ g·x̂, dx = γ/σ · (g − dβ/M − x̂·dγ/M). With a fused ReLU,
/// `relu_out` is the op's output and g is zero wherever it is.
#[allow(clippy::too_many_arguments)]
fn bn_bwd<T: Elem>(
    x: &[T],
    grad: &[T],
    relu_out: Option<&[T]>,
    weight: &[T],
    (mean, var): (&[f64], &[f64]),
    (n, c, hw): (usize, usize, usize),
    eps: f64,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    // dx starts as the gradient reaching the normalisation (zero where a fused
    // ReLU cut) and becomes the input gradient in place: no second buffer.
    let zero = <T as Elem>::zero();
    let mut dx: Vec<T> = match relu_out {
        Some(y) => grad
            .par_iter()
            .zip(y.par_iter())
            .map(|(&g, &y)| if y > zero { g } else { zero })
            .collect(),
        None => grad.to_vec(),
    };
    let count = (n * hw) as f64;
    let g = &dx;
    let (dbeta, dgamma): (Vec<f64>, Vec<f64>) = (0..c)
        .into_par_iter()
        .map(|ch| {
            let inv_std = 1.0 / (var[ch] + eps).sqrt();
            let (mut sum_g, mut sum_gx) = (0f64, 0f64);
            for b in 0..n {
                let at = (b * c + ch) * hw;
                for (&g, &x) in g[at..at + hw].iter().zip(&x[at..at + hw]) {
                    let g = g.f64();
                    sum_g += g;
                    sum_gx += g * (x.f64() - mean[ch]) * inv_std;
                }
            }
            (sum_g, sum_gx)
        })
        .unzip();
    dx.par_chunks_mut(hw)
        .zip(x.par_chunks(hw))
        .enumerate()
        .for_each(|(plane, (dx, x))| {
            let ch = plane % c;
            let inv_std = 1.0 / (var[ch] + eps).sqrt();
            let k = weight[ch].f64() * inv_std;
            // dx = k·g − k·dβ/M − k·dγ/M · (x − mean)·inv_std, as a·g + b·x + d.
            let b_coef = -k * dgamma[ch] / count * inv_std;
            let d = -k * dbeta[ch] / count - b_coef * mean[ch];
            let (k, b_coef, d) = (T::of(k), T::of(b_coef), T::of(d));
            for (dx, &x) in dx.iter_mut().zip(x) {
                *dx = k * *dx + b_coef * x + d;
            }
        });
    let cast = |v: Vec<f64>| v.into_iter().map(T::from_f64).collect();
    (dx, cast(dgamma), cast(dbeta))
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "unet-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let dims = (n, c, h * w);
        let name = self.name();
        let (y, mean, var) = match s1 {
            CpuStorage::F32(_) => {
                let (y, m, v) = bn_fwd::<f32>(
                    slice(s1, l1, name)?,
                    slice(s2, l2, name)?,
                    slice(s3, l3, name)?,
                    dims,
                    self.eps,
                    self.relu,
                );
                (f32::to_cpu_storage_owned(y), m, v)
            }
            CpuStorage::F64(_) => {
                let (y, m, v) = bn_fwd::<f64>(
                    slice(s1, l1, name)?,
                    slice(s2, l2, name)?,
                    slice(s3, l3, name)?,
                    dims,
                    self.eps,
                    self.relu,
                );
                (f64::to_cpu_storage_owned(y), m, v)
            }
            _ => bail!("{name}: only f32 and f64 are supported"),
        };
        *self.stats.lock().expect("stats lock") = (mean, var);
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, w) = x.dims4()?;
        let dims = (n, c, h * w);
        let stats = self.stats.lock().expect("stats lock");
        let (mean, var) = (stats.0.as_slice(), stats.1.as_slice());
        let relu_out = self.relu.then_some(res);
        fn run<T: Elem>(
            x: &Tensor,
            grad: &Tensor,
            relu_out: Option<&Tensor>,
            weight: &Tensor,
            stats: (&[f64], &[f64]),
            dims: (usize, usize, usize),
            eps: f64,
        ) -> Result<(Tensor, Tensor, Tensor)> {
            let bwd = |xs: &[T], g: &[T], y: Option<&[T]>| {
                with_data::<T, _>(weight, |wt| {
                    let (dx, dgamma, dbeta) = bn_bwd(xs, g, y, wt, stats, dims, eps);
                    let c = dims.1;
                    Ok((
                        Tensor::from_vec(dx, x.shape(), &Device::Cpu)?,
                        Tensor::from_vec(dgamma, c, &Device::Cpu)?,
                        Tensor::from_vec(dbeta, c, &Device::Cpu)?,
                    ))
                })
            };
            with_data::<T, _>(x, |xs| {
                with_data::<T, _>(grad, |g| match relu_out {
                    Some(y) => with_data::<T, _>(y, |y| bwd(xs, g, Some(y))),
                    None => bwd(xs, g, None),
                })
            })
        }
        let stats = (mean, var);
        let (dx, dgamma, dbeta) = match x.dtype() {
            candle_core::DType::F32 => {
                run::<f32>(x, grad, relu_out, weight, stats, dims, self.eps)?
            }
            candle_core::DType::F64 => {
                run::<f64>(x, grad, relu_out, weight, stats, dims, self.eps)?
            }
            dt => bail!("{}: unsupported dtype {dt:?}", self.name()),
        };
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// Training-mode BatchNorm, followed by a ReLU if `relu`; returns the output
/// and the batch's per-channel mean and biased variance.
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let stats: ChannelStats = Arc::default();
    let op = BatchNormTrain {
        eps,
        relu,
        stats: stats.clone(),
    };
    let y = x
        .contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?;
    let guard = stats.lock().expect("stats lock");
    let c = guard.0.len();
    let mean = Tensor::from_slice(&guard.0, c, &Device::Cpu)?.to_dtype(x.dtype())?;
    let var = Tensor::from_slice(&guard.1, c, &Device::Cpu)?.to_dtype(x.dtype())?;
    Ok((y, mean, var))
}
