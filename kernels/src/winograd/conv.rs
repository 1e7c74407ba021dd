//! A stride-1 3x3 convolution of one image by F(2×2, 3×3), a tile of output
//! rows at a time: the input tiles' transform, 16 matrix products of depth
//! `cin` (a ninth of im2col's `9·cin` over 2.25× fewer columns; unpacked,
//! [`crate::product`], or on gemm for many channels), and the
//! output transform with an optional bias and ReLU. Which thread takes
//! which tile is the caller's: the runtime's `TiledConv` and the training
//! convolution each have their own way of sharing the work.

use rayon::prelude::*;

use super::{transform_input_row, transform_output_grad_row, transform_output_row, POINTS, TILE};
use crate::product::{self, COLUMN_ALIGN};

/// Input channels from which a 3x3 convolution runs by Winograd: below it the
/// matrix products are too shallow (depth = channels) for the transforms to pay.
pub const MIN_CHANNELS: usize = 8;

/// Scratch floats per one-thread tile: 512 KiB, so that each of the 16
/// products has enough tiles (columns) to pay for packing its weights, and
/// the whole stays in a 1 MiB L2.
pub const TILE_ELEMS: usize = 128 << 10;

/// Tiles (columns of the 16 products) a one-thread tile has at least, even
/// past [`TILE_ELEMS`]: each product reads all its `cout × cin` weights once
/// per tile, and the deep layers' weights (16 MiB at 512 channels) come from
/// memory; a row pair of 16 tiles at 32² left them memory-bound.
const MIN_TILE_COLUMNS: usize = 64;

/// The geometry of a stride-1 3x3 convolution of one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv3x3 {
    pub cin: usize,
    pub cout: usize,
    /// Input height and width.
    pub h: usize,
    pub w: usize,
    /// Zero rows above and columns left of the input; those below and right
    /// follow from the output size.
    pub top: usize,
    pub left: usize,
    /// Output height and width.
    pub ho: usize,
    pub wo: usize,
}

/// How a tile of output rows lies in the scratch: `ty × tx` tiles, each
/// point's row `tiles` long (padded), `per_channel` floats a channel.
struct TileLayout {
    ty: usize,
    tx: usize,
    tiles: usize,
    per_channel: usize,
}

/// The output, written by threads that each own whole output channels.
#[derive(Clone, Copy)]
struct OutputPtr(*mut f32);
// SAFETY: each thread writes the rows of its own output channels (see `tile`).
unsafe impl Send for OutputPtr {}
unsafe impl Sync for OutputPtr {}

impl OutputPtr {
    /// A method, so closures capture the whole (Sync) wrapper, not its field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

impl Conv3x3 {
    /// The f32 scratch a tile of `rows` output rows needs: its transformed
    /// input and its 16 products.
    pub fn scratch_len(&self, rows: usize) -> usize {
        let tiles = Self::columns(rows.div_ceil(TILE) * self.wo.div_ceil(TILE));
        (self.cin + self.cout) * Self::channel_len(tiles)
    }

    /// The columns each point's rows of the scratch take for `tiles` tiles:
    /// padded for the products' whole vectors.
    fn columns(tiles: usize) -> usize {
        tiles.next_multiple_of(COLUMN_ALIGN)
    }

    /// The floats one channel's 16 points of `tiles` columns take, and the
    /// stride of a product's rows: one cache line more than the points, so
    /// that the rows a product reads together do not all fall in the same L1
    /// sets (16 points of 256 tiles would make that stride exactly 16 KiB).
    fn channel_len(tiles: usize) -> usize {
        POINTS * tiles + COLUMN_ALIGN
    }

    fn check_tile(&self, channels: &[&[f32]], (y0, y1): (usize, usize)) {
        let ho = self.ho;
        assert!(
            y0 % TILE == 0 && y0 <= y1 && y1 <= ho,
            "rows {y0}..{y1} of {ho}"
        );
        assert!(
            channels.len() == self.cin && channels.iter().all(|c| c.len() == self.h * self.w),
            "input channels"
        );
    }

    /// The scratch of a tile of output rows `y0..y1`: the transformed input
    /// tiles (written here) and room for `cout` channels of 16 points, each
    /// channel's 16 points together, `[channel][16][tiles]`, so that threads
    /// take whole channels; the padding columns are never read.
    fn input_tiles<'s>(
        &self,
        channels: &[&[f32]],
        rows: (usize, usize),
        scratch: &'s mut [f32],
        threads: usize,
    ) -> (TileLayout, &'s mut [f32], &'s mut [f32]) {
        let (ty, tx) = ((rows.1 - rows.0).div_ceil(TILE), self.wo.div_ceil(TILE));
        let tiles = Self::columns(ty * tx);
        let per_channel = Self::channel_len(tiles);
        let (v, rest) = scratch.split_at_mut(self.cin * per_channel);
        let out = &mut rest[..self.cout * per_channel];
        self.transform_input(channels, rows, v, tiles, threads);
        let layout = TileLayout {
            ty,
            tx,
            tiles,
            per_channel,
        };
        (layout, v, out)
    }

    /// The input tiles under output rows `y0..y1` into `v`, `[channel][16][tiles]`.
    fn transform_input(
        &self,
        channels: &[&[f32]],
        (y0, y1): (usize, usize),
        v: &mut [f32],
        tiles: usize,
        threads: usize,
    ) {
        let Conv3x3 {
            h,
            w,
            top,
            left,
            wo,
            ..
        } = *self;
        let (ty, tx) = ((y1 - y0).div_ceil(TILE), wo.div_ceil(TILE));
        let transform = |(v, channel): (&mut [f32], &&[f32])| {
            for i in 0..ty {
                let rows = std::array::from_fn(|r| {
                    let y = (y0 + TILE * i + r).wrapping_sub(top);
                    (y < h).then(|| &channel[y * w..(y + 1) * w])
                });
                transform_input_row(rows, left, tx, &mut v[i * tx..], tiles);
            }
            // The rows the next tile down adds, fetched into L2 while this
            // tile's products run: one row pair per tile is too short a stream
            // for the hardware prefetcher, and the image is not in L2.
            let next =
                (y1 + 2).saturating_sub(top).min(h)..(2 * y1 - y0 + 2).saturating_sub(top).min(h);
            prefetch(&channel[next.start * w..next.end * w]);
        };
        for_each_channel(v, Self::channel_len(tiles), channels, threads, transform);
    }

    /// Output rows per tile (pairs of rows, at most the image) whose scratch
    /// is about `elems` floats.
    pub fn tile_rows(&self, elems: usize) -> usize {
        let per_pair = self.scratch_len(TILE);
        TILE * (elems / per_pair).clamp(1, self.ho.div_ceil(TILE))
    }

    /// How `n` images are shared among `threads` threads: `Some(rows)` when
    /// each thread takes whole tiles of `rows` rows (about [`TILE_ELEMS`] of
    /// scratch, at least four tiles per thread), `None` when there are too
    /// few and each image is one tile spread over all threads.
    pub fn per_thread_tile_rows(&self, n: usize, threads: usize) -> Option<usize> {
        let pairs_for_columns = MIN_TILE_COLUMNS.div_ceil(self.wo.div_ceil(TILE));
        let rows = self
            .tile_rows(TILE_ELEMS)
            .max(TILE * pairs_for_columns.min(self.ho.div_ceil(TILE)));
        (threads <= 1 || n * self.ho.div_ceil(rows) >= 4 * threads).then_some(rows)
    }

    /// Output rows `y0..y1` of the image whose input channel c is the `h × w`
    /// plane `channels[c]`, with the transformed weights `u`
    /// ([`super::transform_weights`]), plus `bias` per output channel, then
    /// the ReLU if `relu`. On `threads` threads of the current rayon pool
    /// (1: the calling thread only): the transforms by channel, the products
    /// by gemm's own threads. `scratch` is at least
    /// [`scratch_len`](Self::scratch_len)`(y1 - y0)` long.
    ///
    /// # Safety
    /// `out` must point to the image's `[cout, ho, wo]` output; `y0` must be
    /// even and `y1 <= ho`; no other thread may access rows `y0..y1` of it meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile(
        &self,
        channels: &[&[f32]],
        u: &[f32],
        (bias, relu): (Option<&[f32]>, bool),
        (y0, y1): (usize, usize),
        scratch: &mut [f32],
        out: *mut f32,
        threads: usize,
    ) {
        let Conv3x3 {
            cin, cout, ho, wo, ..
        } = *self;
        self.check_tile(channels, (y0, y1));
        assert_eq!(u.len(), POINTS * cout * cin, "transformed weights");
        assert!(
            bias.is_none_or(|b| b.len() == cout),
            "one bias per output channel"
        );
        let (
            TileLayout {
                tx,
                tiles,
                per_channel,
                ..
            },
            v,
            m,
        ) = self.input_tiles(channels, (y0, y1), scratch, threads);
        // SAFETY: v and m hold `cin` and `cout` rows of `per_channel` floats,
        // each point's `tiles` of them at offset p · tiles.
        unsafe { self.products(u, (v, m), tiles, threads) };
        let out = OutputPtr(out);
        let transform_output = |(co, m): (usize, &[f32])| {
            // SAFETY: the caller owns rows y0..y1 of the output, and this call
            // output channel co of them.
            let rows = unsafe {
                let first = out.get().add((co * ho + y0) * wo);
                std::slice::from_raw_parts_mut(first, (y1 - y0) * wo)
            };
            let bias_relu = (bias.map_or(0.0, |b| b[co]), relu);
            for (i, pair) in rows.chunks_mut(TILE * wo).enumerate() {
                let (upper, lower) = pair.split_at_mut(wo);
                let lower = (!lower.is_empty()).then_some(lower);
                transform_output_row(&m[i * tx..], tiles, tx, bias_relu, [Some(upper), lower]);
            }
        };
        if threads > 1 {
            m.par_chunks(per_channel)
                .enumerate()
                .for_each(transform_output);
        } else {
            m.chunks(per_channel).enumerate().for_each(transform_output);
        }
    }
}

impl Conv3x3 {
    /// The weight gradient's share of output rows `y0..y1` (`y0` even), as
    /// the transformed `dU`, `[16][cout][cin]`, added to `du` (written if
    /// not `accumulate`); [`super::transform_weights_grad`] turns the sum
    /// over all tiles into OIHW. `grad[co]` is output channel co's `ho × wo`
    /// gradient plane. The input tiles' transform as in [`tile`](Self::tile),
    /// the gradient's by the adjoint of the output transform, then
    /// `dU[p] += dM[p] · V[p]ᵀ` over the tiles, on `threads` threads as `tile`.
    #[allow(clippy::too_many_arguments)]
    pub fn weight_grad_tile(
        &self,
        channels: &[&[f32]],
        grad: &[&[f32]],
        (y0, y1): (usize, usize),
        scratch: &mut [f32],
        du: &mut [f32],
        accumulate: bool,
        threads: usize,
    ) {
        let Conv3x3 {
            cin, cout, ho, wo, ..
        } = *self;
        self.check_tile(channels, (y0, y1));
        assert!(
            grad.len() == cout && grad.iter().all(|g| g.len() == ho * wo),
            "gradient planes"
        );
        assert_eq!(du.len(), POINTS * cout * cin, "transformed weight gradient");
        let (
            TileLayout {
                ty,
                tx,
                tiles,
                per_channel,
            },
            v,
            dm,
        ) = self.input_tiles(channels, (y0, y1), scratch, threads);
        let transform_grad = |(dm, plane): (&mut [f32], &&[f32])| {
            for i in 0..ty {
                let rows = std::array::from_fn(|r| {
                    let y = y0 + TILE * i + r;
                    (y < y1).then(|| &plane[y * wo..(y + 1) * wo])
                });
                transform_output_grad_row(rows, tx, &mut dm[i * tx..], tiles);
            }
        };
        for_each_channel(dm, per_channel, grad, threads, transform_grad);
        let parallelism = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        for p in 0..POINTS {
            // SAFETY: point p's `cout × cin` block of du (checked above); its
            // rows of dm and v, `ty · tx` tiles (not the padding) each at
            // stride `per_channel`, inside the scratch split above.
            unsafe {
                gemm::gemm(
                    cout,
                    cin,
                    ty * tx,
                    du.as_mut_ptr().add(p * cout * cin),
                    1,
                    cin as isize,
                    accumulate,
                    dm.as_ptr().add(p * tiles),
                    1,
                    per_channel as isize,
                    v.as_ptr().add(p * tiles),
                    per_channel as isize,
                    1,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
        }
    }
}

impl Conv3x3 {
    /// The 16 products `M[p] = U[p] · V[p]`, point p's rows at offset
    /// `p · tiles` of each channel's [`channel_len`](Self::channel_len) floats of `v` and `m`:
    /// unpacked ([`product`]) where they are shallow, else gemm's.
    ///
    /// # Safety
    /// `v` and `m` hold `cin` and `cout` such rows; `u` is `[16][cout][cin]`.
    unsafe fn products(
        &self,
        u: &[f32],
        (v, m): (&[f32], &mut [f32]),
        tiles: usize,
        threads: usize,
    ) {
        let (cin, cout) = (self.cin, self.cout);
        let per_channel = Self::channel_len(tiles);
        let m_base = OutputPtr(m.as_mut_ptr());
        let unpacked = |p: usize| {
            // SAFETY: point p's weights, rows of v and rows of m (the caller's
            // bounds); each point's rows of m are written by this call alone.
            unsafe {
                product::multiply(
                    &u[p * cout * cin..(p + 1) * cout * cin],
                    (cout, cin, tiles),
                    (v.as_ptr().add(p * tiles), per_channel),
                    (m_base.get().add(p * tiles), per_channel),
                )
            }
        };
        if cin <= product::max_depth() {
            let done = if threads > 1 {
                (0..POINTS)
                    .into_par_iter()
                    .map(unpacked)
                    .collect::<Vec<_>>()
            } else {
                (0..POINTS).map(unpacked).collect()
            };
            if done.iter().all(|&done| done) {
                return;
            }
        }
        for p in 0..POINTS {
            // SAFETY: point p's `cout × cin` block of u, and its `cin × tiles`
            // and `cout × tiles` rows of v and m, at stride `per_channel`.
            unsafe {
                product::multiply_packed(
                    &u[p * cout * cin..(p + 1) * cout * cin],
                    (cout, cin, tiles),
                    (v.as_ptr().add(p * tiles), per_channel),
                    (m_base.get().add(p * tiles), per_channel),
                    threads,
                );
            }
        }
    }
}

/// `f` on each channel's `len` floats of `data` with that channel's plane,
/// on `threads` threads of the current pool (1: this one).
fn for_each_channel(
    data: &mut [f32],
    len: usize,
    planes: &[&[f32]],
    threads: usize,
    f: impl Fn((&mut [f32], &&[f32])) + Send + Sync,
) {
    if threads > 1 {
        data.par_chunks_mut(len).zip(planes.par_iter()).for_each(f);
    } else {
        data.chunks_mut(len).zip(planes.iter()).for_each(f);
    }
}

/// Asks for `data` in L2, where the CPU has a way to.
fn prefetch(data: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in data.chunks(16) {
        // SAFETY: a prefetch is a hint; the address is inside `data`.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
            _mm_prefetch::<_MM_HINT_T1>(line.as_ptr().cast());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

#[cfg(test)]
mod tests {
    use super::super::tests::{direct, values};
    use super::super::transform_weights;
    use super::*;

    /// `conv` of `input` by whole-image tiles on `threads` threads, or by
    /// `rows`-row tiles on this thread.
    fn run(
        conv: Conv3x3,
        input: &[f32],
        weights: &[f32],
        bias: &[f32],
        rows: usize,
        threads: usize,
    ) -> Vec<f32> {
        let u = transform_weights(weights, conv.cout, conv.cin);
        let channels: Vec<&[f32]> = input.chunks_exact(conv.h * conv.w).collect();
        let mut out = vec![f32::NAN; conv.cout * conv.ho * conv.wo];
        let mut scratch = vec![f32::NAN; conv.scratch_len(rows)];
        for y0 in (0..conv.ho).step_by(rows) {
            let y1 = (y0 + rows).min(conv.ho);
            // SAFETY: `out` is the image's whole output, written by this thread alone.
            unsafe {
                conv.tile(
                    &channels,
                    &u,
                    (Some(bias), true),
                    (y0, y1),
                    &mut scratch,
                    out.as_mut_ptr(),
                    threads,
                )
            }
        }
        out
    }

    #[test]
    fn tiles_compute_the_direct_convolution() {
        // 9x7 to 9x7 (padding 1): odd sizes; tiles of 2, 4 and all rows, on 1
        // and 2 threads; products unpacked (5 channels) and on gemm (more
        // than product::max_depth()).
        for cin in [5, product::max_depth() + 3] {
            let conv = Conv3x3 {
                cin,
                cout: 3,
                h: 9,
                w: 7,
                top: 1,
                left: 1,
                ho: 9,
                wo: 7,
            };
            let input = values(cin * 63, 7);
            let weights = values(3 * cin * 9, 8);
            let bias = [0.1, -0.2, 0.05];
            let mut expected = direct(&input, &weights, (cin, 3, 9, 7, 1));
            for (co, plane) in expected.chunks_mut(63).enumerate() {
                plane.iter_mut().for_each(|v| *v = (*v + bias[co]).max(0.0));
            }
            assert!(expected.iter().any(|&v| v > 0.0) && expected.contains(&0.0));
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .expect("pool");
            for (rows, threads) in [(2, 1), (4, 1), (10, 1), (10, 2)] {
                let got = pool.install(|| run(conv, &input, &weights, &bias, rows, threads));
                let worst = expected
                    .iter()
                    .zip(&got)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(
                    worst < 1e-5 * (cin as f32).sqrt(),
                    "{cin} channels, {rows}-row tiles, {threads} threads: max abs difference {worst}"
                );
            }
        }
    }

    /// `dW[co][ci][ky][kx] = Σ_(y, x) dY[co][y][x] · X[ci][y + ky - top][x + kx - left]`.
    fn direct_weight_grad(conv: Conv3x3, input: &[f32], grad: &[f32]) -> Vec<f32> {
        let Conv3x3 {
            cin,
            cout,
            h,
            w,
            top,
            left,
            ho,
            wo,
        } = conv;
        let mut dw = vec![0.0; cout * cin * 9];
        for co in 0..cout {
            for ci in 0..cin {
                for tap in 0..9 {
                    let (ky, kx) = (tap / 3, tap % 3);
                    let mut sum = 0.0;
                    for y in 0..ho {
                        for x in 0..wo {
                            let (iy, ix) =
                                ((y + ky).wrapping_sub(top), (x + kx).wrapping_sub(left));
                            if iy < h && ix < w {
                                sum += grad[(co * ho + y) * wo + x] * input[(ci * h + iy) * w + ix];
                            }
                        }
                    }
                    dw[(co * cin + ci) * 9 + tap] = sum;
                }
            }
        }
        dw
    }

    #[test]
    fn weight_gradient_tiles_compute_its_definition() {
        // Padded to the same odd size, and unpadded (7x5 out of 9x7); tiles of
        // 2, 4 and all rows, on 1 and 2 threads.
        for (top, ho, wo) in [(1, 9, 7), (0, 7, 5)] {
            let conv = Conv3x3 {
                cin: 5,
                cout: 3,
                h: 9,
                w: 7,
                top,
                left: top,
                ho,
                wo,
            };
            let input = values(5 * 63, 9);
            let grad = values(3 * ho * wo, 10);
            let expected = direct_weight_grad(conv, &input, &grad);
            let channels: Vec<&[f32]> = input.chunks_exact(63).collect();
            let planes: Vec<&[f32]> = grad.chunks_exact(ho * wo).collect();
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .expect("pool");
            for (rows, threads) in [(2, 1), (4, 1), (10, 2)] {
                let mut du = vec![f32::NAN; POINTS * 3 * 5];
                let mut scratch = vec![f32::NAN; conv.scratch_len(rows)];
                for y0 in (0..ho).step_by(rows) {
                    let y1 = (y0 + rows).min(ho);
                    pool.install(|| {
                        conv.weight_grad_tile(
                            &channels,
                            &planes,
                            (y0, y1),
                            &mut scratch,
                            &mut du,
                            y0 > 0,
                            threads,
                        )
                    });
                }
                let got = super::super::transform_weights_grad(&du, 3, 5);
                let worst = expected
                    .iter()
                    .zip(&got)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(
                    worst < 1e-5,
                    "padding {top}, {rows}-row tiles, {threads} threads: max abs difference {worst}"
                );
            }
        }
    }
}
