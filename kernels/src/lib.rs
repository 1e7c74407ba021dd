//! What the CPU kernels of training (`unet-models`) and inference
//! (`unet-runtime`) share, depending on neither: the FMA-peak probe
//! ([`peak`]) that their benchmarks divide their GFLOP/s by, so a kernel's
//! efficiency can be judged on any CPU, one of another vendor included, an
//! unpacked matrix product for shallow products over NCHW planes
//! ([`product`]), and Winograd's 3×3 convolution ([`winograd`]).

pub mod peak;
pub mod product;
pub mod winograd;

pub use peak::{measure, one_thread_peak_of_this_build, Isa, Peak};

/// Test inputs: a fixed pseudo-random sequence in [-0.5, 0.5).
#[cfg(test)]
mod testing {
    pub fn values(len: usize, mut seed: u32) -> Vec<f32> {
        (0..len)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
            })
            .collect()
    }
}
