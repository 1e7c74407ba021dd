//! 2x2 stride-2 max pooling.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::unary::{Unary, UnaryKernel};
use super::Elem;

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
