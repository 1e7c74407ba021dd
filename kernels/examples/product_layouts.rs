//! The unpacked product ([`product::multiply`]) on the operand layouts its
//! callers give it, on one thread, in GFLOP/s and as a fraction of this CPU's
//! FMA peak: `V`'s rows one plane of an NCHW image apart (the 2x2
//! up-samplings and 1x1 convolutions read their input so, at strides that
//! are multiples of 1 KiB) and the same rows packed close together.
//!
//! `cargo run --release -p unet-kernels --features conv,avx512 --example product_layouts`
//! (without `avx512`: the AVX2 path).

use std::time::Instant;

use unet_kernels::one_thread_peak_of_this_build;
use unet_kernels::product;

/// (rows, depth, columns, stride of V's rows): the up-samplings of unet-16 at
/// 256² (64→32 channels from 64², 32→16 from 128²) on their row tiles.
const LAYOUTS: [(usize, usize, usize, usize); 4] = [
    (128, 64, 512, 64 * 64),
    (128, 64, 512, 512 + 16),
    (64, 32, 1024, 128 * 128),
    (64, 32, 1024, 1024 + 16),
];

fn main() {
    let peak = one_thread_peak_of_this_build();
    for (rows, depth, cols, v_stride) in LAYOUTS {
        let u = vec![0.5f32; rows * depth];
        let v = vec![0.25f32; depth * v_stride];
        let mut m = vec![0f32; rows * cols];
        let mut times: Vec<f64> = (0..201)
            .map(|_| {
                let start = Instant::now();
                // SAFETY: v has depth rows of v_stride ≥ cols, m rows rows of cols.
                unsafe {
                    product::multiply(
                        &u,
                        (rows, depth, cols),
                        (v.as_ptr(), v_stride),
                        (m.as_mut_ptr(), cols),
                    )
                };
                start.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let gflops = 2.0 * (rows * depth * cols) as f64 / times[times.len() / 2] / 1e9;
        println!(
            "{rows:4} x {depth:3} x {cols:5}, rows of V {v_stride:6} floats apart: {:7.1} us, {gflops:6.1} GFLOP/s, {:5.1} % of peak",
            times[times.len() / 2] * 1e6,
            100.0 * gflops / peak
        );
    }
}
