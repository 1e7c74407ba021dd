//! A 3x3 f32 convolution's forward pass and weight gradient by Winograd's
//! F(2×2, 3×3), on the tiles the runtime uses (`unet_kernels::winograd`):
//! each thread takes whole row tiles where there are enough of them,
//! otherwise each image is one tile spread over all threads. The input
//! gradient is the forward pass with the adjoint kernel ([`super::conv`]).

use rayon::prelude::*;
use unet_kernels::winograd::{self, Conv3x3, POINTS};

use super::conv::{row_tiles, ConvShape, TileOutput};

/// Whether 3x3 convolutions may run by Winograd: unless `UNET_WINOGRAD=0`
/// (to measure the im2col path), read once.
fn winograd_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os("UNET_WINOGRAD").is_none_or(|v| v != "0"))
}

/// The Winograd geometry of a convolution of `s` to `cout` channels, if it
/// runs by Winograd: a 3x3 kernel over enough channels.
fn winograd_conv(cout: usize, s: ConvShape) -> Option<Conv3x3> {
    if s.k != 3 || s.cin < winograd::MIN_CHANNELS || !winograd_enabled() {
        return None;
    }
    let (ho, wo) = s.out_hw();
    Some(Conv3x3 {
        cin: s.cin,
        cout,
        h: s.h,
        w: s.w,
        top: s.padding,
        left: s.padding,
        ho,
        wo,
    })
}

/// The `channels` planes of `h × w` of image b in `x`.
fn planes(x: &[f32], b: usize, channels: usize, plane: usize) -> Vec<&[f32]> {
    x[b * channels * plane..(b + 1) * channels * plane]
        .chunks_exact(plane)
        .collect()
}

/// `conv_forward` (`x [N, Cin, H, W]`, `weight [Cout, Cin, 3, 3]`) by Winograd.
pub(super) fn winograd_forward(
    x: &[f32],
    weight: &[f32],
    n: usize,
    cout: usize,
    s: ConvShape,
) -> Option<Vec<f32>> {
    let conv = winograd_conv(cout, s)?;
    let (ho, wo) = (conv.ho, conv.wo);
    let u = winograd::transform_weights(weight, cout, s.cin);
    let mut y = vec![0.0f32; n * cout * ho * wo];
    let out = TileOutput(y.as_mut_ptr());
    // SAFETY (both calls): the rows y0..y1 of image b are this call's alone,
    // inside `y`, which outlives them.
    let tile = |b: usize, rows: (usize, usize), scratch: &mut [f32], threads| unsafe {
        let image = out.ptr().add(b * cout * ho * wo);
        let channels = planes(x, b, s.cin, s.h * s.w);
        conv.tile(&channels, &u, (None, false), rows, scratch, image, threads)
    };
    let threads = rayon::current_num_threads();
    if let Some(rows) = conv.per_thread_tile_rows(n, threads) {
        row_tiles(n, ho, rows).par_iter().for_each_init(
            || vec![0.0; conv.scratch_len(rows)],
            |scratch, &(b, y0)| tile(b, (y0, (y0 + rows).min(ho)), scratch, 1),
        );
    } else {
        let mut scratch = vec![0.0; conv.scratch_len(ho)];
        (0..n).for_each(|b| tile(b, (0, ho), &mut scratch, threads));
    }
    Some(y)
}

/// Input channels up to which the weight gradient runs by Winograd. Its 16
/// products per tile have as many columns as the tile has tiles and a
/// `Cout × Cin` result added to; for the deep layers (512 channels and more
/// at 32², few tiles, a large result) that costs more than im2col saves
/// (`conv_layers`, backward: 512->512 at 32² 74 ms against 67 by im2col,
/// 256->256 at 64² 46 against 57).
const WEIGHT_GRAD_MAX_CHANNELS: usize = 256;

/// `conv_weight_grad` (`dW = Σ_b grad[b] ⋆ x[b]`, `[Cout, Cin, 3, 3]`) by
/// Winograd: the transformed gradient summed over the tiles, one partial
/// sum per fixed run of tiles added in order (the same result whichever
/// thread takes which run), then taken back to 3x3.
pub(super) fn winograd_weight_grad(
    x: &[f32],
    grad: &[f32],
    n: usize,
    cout: usize,
    s: ConvShape,
) -> Option<Vec<f32>> {
    if s.cin > WEIGHT_GRAD_MAX_CHANNELS {
        return None;
    }
    let conv = winograd_conv(cout, s)?;
    let (ho, wo) = (conv.ho, conv.wo);
    let len = POINTS * cout * s.cin;
    let add_tile = |b: usize, rows, scratch: &mut [f32], du: &mut [f32], first: bool, threads| {
        let channels = planes(x, b, s.cin, s.h * s.w);
        let grad = planes(grad, b, cout, ho * wo);
        conv.weight_grad_tile(&channels, &grad, rows, scratch, du, !first, threads);
    };
    let threads = rayon::current_num_threads();
    let du = if let Some(rows) = conv.per_thread_tile_rows(n, threads) {
        let tiles = row_tiles(n, ho, rows);
        let per_thread = tiles.len().div_ceil(threads);
        let partials: Vec<Vec<f32>> = tiles
            .par_chunks(per_thread)
            .map(|run| {
                let mut du = vec![0.0; len];
                let mut scratch = vec![0.0; conv.scratch_len(rows)];
                for (i, &(b, y0)) in run.iter().enumerate() {
                    let rows = (y0, (y0 + rows).min(ho));
                    add_tile(b, rows, &mut scratch, &mut du, i == 0, 1);
                }
                du
            })
            .collect();
        let mut partials = partials.into_iter();
        let mut du = partials.next().expect("at least one tile");
        for partial in partials {
            du.iter_mut().zip(&partial).for_each(|(a, &b)| *a += b);
        }
        du
    } else {
        let mut du = vec![0.0; len];
        let mut scratch = vec![0.0; conv.scratch_len(ho)];
        for b in 0..n {
            add_tile(b, (0, ho), &mut scratch, &mut du, b == 0, threads);
        }
        du
    };
    Some(winograd::transform_weights_grad(&du, cout, s.cin))
}
