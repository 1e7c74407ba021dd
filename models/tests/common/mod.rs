//! Helpers shared by the integration tests.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

/// Uniform [-1, 1) f32 values from a fixed seed, so tests are reproducible.
pub fn seeded(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let data: Vec<f32> = (0..shape.iter().product())
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    abs_max(&a.sub(b).unwrap())
}

/// Largest absolute element.
pub fn abs_max(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Sum of squares of all elements (f32 tensors).
pub fn sum_sq(t: &Tensor) -> f32 {
    t.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap()
}
