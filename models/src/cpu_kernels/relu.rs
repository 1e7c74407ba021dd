//! ReLU with a one-pass backward.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::unary::{Unary, UnaryKernel};
use super::Elem;

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
