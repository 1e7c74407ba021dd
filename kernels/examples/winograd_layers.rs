//! Where Winograd's 3x3 convolution spends its time, on one thread, for the
//! edge presets' layer shapes: the whole convolution ([`Conv3x3::tile`] over
//! the image in the runtime's per-thread tiles), and its 16 matrix products
//! alone, unpacked ([`product::multiply`]) and on gemm. Each as ms and as a
//! fraction of this CPU's FMA peak on one thread: the products by the FMAs
//! they do, the convolution by the direct convolution's (so it can pass 100 %).
//!
//! `cargo run --release -p unet-kernels --features conv,avx512 --example winograd_layers [-- CIN COUT SIDE]`
//! (without `avx512`: the AVX2 path; CIN COUT SIDE: that layer alone).

use std::time::Instant;

use unet_kernels::one_thread_peak_of_this_build;
use unet_kernels::product;
use unet_kernels::winograd::{transform_weights, Conv3x3, POINTS, TILE, TILE_ELEMS};

/// The median of `runs` timings of `f`, in seconds.
fn median(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

fn main() {
    let peak = one_thread_peak_of_this_build();
    println!(
        "{:<16} {:>9} {:>7} {:>14} {:>7} {:>14} {:>7}",
        "conv", "conv ms", "peak", "unpacked ms", "peak", "gemm ms", "peak"
    );
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("CIN COUT SIDE"))
        .collect();
    let layers = match args[..] {
        [cin, cout, side] => vec![(cin, cout, side)],
        _ => vec![
            (16, 16, 256),
            (32, 32, 128),
            (64, 64, 64),
            (128, 128, 32),
            (256, 256, 16),
            (32, 16, 256),
            (512, 512, 32),
            (1024, 1024, 16),
        ],
    };
    for (cin, cout, side) in layers {
        let conv = Conv3x3 {
            cin,
            cout,
            h: side,
            w: side,
            top: 1,
            left: 1,
            ho: side,
            wo: side,
        };
        let input: Vec<f32> = (0..cin * side * side)
            .map(|i| (i % 7) as f32 * 0.1)
            .collect();
        let weights: Vec<f32> = (0..cout * cin * 9).map(|i| (i % 5) as f32 * 0.01).collect();
        let u = transform_weights(&weights, cout, cin);
        let channels: Vec<&[f32]> = input.chunks_exact(side * side).collect();
        let rows = conv.tile_rows(TILE_ELEMS);
        let mut scratch = vec![0.0; conv.scratch_len(rows)];
        let mut out = vec![0.0; cout * side * side];
        let whole = median(9, || {
            for y0 in (0..side).step_by(rows) {
                // SAFETY: `out` is the whole output, written by this thread alone.
                unsafe {
                    conv.tile(
                        &channels,
                        &u,
                        (None, true),
                        (y0, (y0 + rows).min(side)),
                        &mut scratch,
                        out.as_mut_ptr(),
                        1,
                    )
                }
            }
        });
        let direct_flops = 2.0 * (cin * cout * 9 * side * side) as f64;

        // The products of one tile, `tiles` columns, as the convolution lays them out.
        let tiles = (rows / TILE * side / TILE).next_multiple_of(product::COLUMN_ALIGN);
        let stride = POINTS * tiles + product::COLUMN_ALIGN;
        let v = vec![0.5f32; cin * stride];
        let mut m = vec![0.0f32; cout * stride];
        let calls = side.div_ceil(rows);
        let mut products = |packed: bool| {
            median(9, || {
                for _ in 0..calls {
                    for p in 0..POINTS {
                        let weights = &u[p * cout * cin..(p + 1) * cout * cin];
                        let dims = (cout, cin, tiles);
                        // SAFETY: point p's rows of v and m, `tiles` columns
                        // each; m is written by this call alone.
                        unsafe {
                            let v = (v.as_ptr().add(p * tiles), stride);
                            let m = (m.as_mut_ptr().add(p * tiles), stride);
                            if packed {
                                product::multiply_packed(weights, dims, v, m, 1);
                            } else {
                                product::multiply(weights, dims, v, m);
                            }
                        }
                    }
                }
            })
        };
        let (unpacked, packed) = (products(false), products(true));
        let product_flops = 2.0 * (POINTS * cin * cout * tiles * calls) as f64;
        let share = |flops: f64, s: f64| 100.0 * flops / s / 1e9 / peak;
        println!(
            "{:<16} {:>9.2} {:>6.0}% {:>14.2} {:>6.0}% {:>14.2} {:>6.0}%",
            format!("{cin}->{cout} {side}²"),
            whole * 1e3,
            share(direct_flops, whole),
            unpacked * 1e3,
            share(product_flops, unpacked),
            packed * 1e3,
            share(product_flops, packed),
        );
    }
}
