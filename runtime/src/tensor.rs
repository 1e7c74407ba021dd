//! The tensor type the runtime's API and back ends exchange.

use crate::error::{Result, RuntimeError};

/// A dense `f32` tensor in NCHW layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor4 {
    pub data: Vec<f32>,
    pub shape: [usize; 4],
}

impl Tensor4 {
    /// Checks that `data` holds exactly `shape` elements.
    pub fn new(data: Vec<f32>, shape: [usize; 4]) -> Result<Self> {
        let expected = shape.iter().product::<usize>();
        if data.len() != expected {
            return Err(RuntimeError::BadOption {
                option: "tensor",
                reason: format!(
                    "shape {shape:?} needs {expected} values, got {}",
                    data.len()
                ),
            });
        }
        Ok(Tensor4 { data, shape })
    }

    pub fn zeros(shape: [usize; 4]) -> Self {
        Tensor4 {
            data: vec![0.0; shape.iter().product()],
            shape,
        }
    }

    /// Index of element `(n, c, y, x)` in `data`.
    #[inline]
    pub fn index(&self, n: usize, c: usize, y: usize, x: usize) -> usize {
        let [_, cs, h, w] = self.shape;
        ((n * cs + c) * h + y) * w + x
    }
}
