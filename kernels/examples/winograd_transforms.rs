//! The Winograd tile transforms alone, one row of tiles of one channel at a
//! time as the convolutions call them, at the image widths of the presets'
//! levels: ns per tile for the input transform (`Bᵀ d B`), the output
//! transform (`Aᵀ M A` with bias and ReLU) and the output gradient's
//! (`A dY Aᵀ`, training's weight gradient). At 16 or 32 channels a tile's
//! products take only a few ns, so these decide those layers' speed.
//!
//! `cargo run --release -p unet-kernels --features avx512 --example winograd_transforms`
//! (without `avx512`: the AVX2 path).

use std::hint::black_box;
use std::time::Instant;

use unet_kernels::winograd::{
    transform_input_row, transform_output_grad_row, transform_output_row, POINTS,
};

/// ns per tile of `calls` calls of `f` over `tiles` tiles each, best of 5.
fn ns_per_tile(tiles: usize, calls: usize, mut f: impl FnMut(usize)) -> f64 {
    (0..5)
        .map(|_| {
            let start = Instant::now();
            (0..calls).for_each(&mut f);
            start.elapsed().as_secs_f64() * 1e9 / (calls * tiles) as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    println!(
        "{:>6} {:>6} {:>12} {:>12} {:>12}",
        "width", "tiles", "input ns", "output ns", "out-grad ns"
    );
    for width in [256usize, 128, 64, 32, 16, 8] {
        let tiles = width / 2;
        let rows: Vec<Vec<f32>> = (0..4)
            .map(|r| {
                (0..width)
                    .map(|x| ((x * 7 + r) % 13) as f32 * 0.1)
                    .collect()
            })
            .collect();
        let stride = tiles + 16;
        let mut points = vec![0.0f32; POINTS * stride];
        let (mut top, mut bottom) = (vec![0.0f32; width], vec![0.0f32; width]);
        let calls = 1_000_000 / tiles;
        let input = ns_per_tile(tiles, calls, |i| {
            // Every 64th row of tiles is the image's first, under a row of padding.
            let padded = i % 64 == 0;
            let r: [Option<&[f32]>; 4] =
                std::array::from_fn(|k| (k > 0 || !padded).then(|| &rows[k][..]));
            transform_input_row(r, 1, tiles, &mut points, stride);
            black_box(&mut points);
        });
        let output = ns_per_tile(tiles, calls, |_| {
            transform_output_row(
                &points,
                stride,
                tiles,
                (0.5, true),
                [Some(&mut top), Some(&mut bottom)],
            );
            black_box((&mut top, &mut bottom));
        });
        let output_grad = ns_per_tile(tiles, calls, |_| {
            transform_output_grad_row([Some(&rows[0]), Some(&rows[1])], tiles, &mut points, stride);
            black_box(&mut points);
        });
        println!("{width:>6} {tiles:>6} {input:>12.2} {output:>12.2} {output_grad:>12.2}");
    }
}
