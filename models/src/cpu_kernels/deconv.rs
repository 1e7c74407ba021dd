//! 2x2 stride-2 transposed convolution (the U-Net's up-sampling) as one
//! gemm per image and a scatter of its four taps.

use candle_core::{bail, CpuStorage, CustomOp2, Device, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::matmul::{gemm, Threads};
use super::{slice, with_data, Elem};

/// 2x2 stride-2 transposed convolution, `x [N, Cin, H, W]`, `w [Cin, Cout, 2, 2]`:
/// per image one gemm `Wᵀ · X` to `[Cout·4, H·W]`, then each of the four taps
/// scattered to its pixel of the 2x2 output blocks (candle's CPU version is a
/// direct loop nest, slower than the convolutions around it).
struct ConvTranspose2x2;

/// `t [Cout·4, H·W]` (tap-major) <-> `y [Cout, 2H, 2W]`. Output row 2i + di
/// interleaves row i of taps (di, 0) and (di, 1): written pairwise, a
/// pattern the compiler vectorises (unlike a store or load every other float).
fn scatter_taps<T: Elem>(t: &[T], y: &mut [T], h: usize, w: usize) {
    let hw = h * w;
    y.par_chunks_mut(4 * hw)
        .zip(t.par_chunks(4 * hw))
        .for_each(|(y, t)| {
            for di in 0..2 {
                let (even, odd) = t[2 * di * hw..(2 * di + 2) * hw].split_at(hw);
                for i in 0..h {
                    let row = &mut y[(2 * i + di) * 2 * w..(2 * i + di + 1) * 2 * w];
                    let taps = even[i * w..(i + 1) * w]
                        .iter()
                        .zip(&odd[i * w..(i + 1) * w]);
                    for (pair, (&a, &b)) in row.chunks_exact_mut(2).zip(taps) {
                        pair[0] = a;
                        pair[1] = b;
                    }
                }
            }
        });
}

fn gather_taps<T: Elem>(y: &[T], t: &mut [T], h: usize, w: usize) {
    let hw = h * w;
    t.par_chunks_mut(4 * hw)
        .zip(y.par_chunks(4 * hw))
        .for_each(|(t, y)| {
            for di in 0..2 {
                let (even, odd) = t[2 * di * hw..(2 * di + 2) * hw].split_at_mut(hw);
                for i in 0..h {
                    let row = &y[(2 * i + di) * 2 * w..(2 * i + di + 1) * 2 * w];
                    let taps = even[i * w..(i + 1) * w]
                        .iter_mut()
                        .zip(&mut odd[i * w..(i + 1) * w]);
                    for (pair, (a, b)) in row.chunks_exact(2).zip(taps) {
                        *a = pair[0];
                        *b = pair[1];
                    }
                }
            }
        });
}

fn conv_transpose_forward<T: Elem>(x: &[T], w: &[T], dims: [usize; 5]) -> Vec<T> {
    let [n, cin, cout, h, wd] = dims;
    let hw = h * wd;
    let mut y = vec![<T as Elem>::zero(); n * cout * 4 * hw];
    let mut taps = vec![<T as Elem>::zero(); cout * 4 * hw];
    for b in 0..n {
        gemm(
            (cout * 4, hw, cin),
            &mut taps,
            (hw, 1),
            false,
            w,
            (1, cout * 4),
            &x[b * cin * hw..],
            (hw, 1),
            Threads::All,
        );
        scatter_taps(
            &taps,
            &mut y[b * cout * 4 * hw..(b + 1) * cout * 4 * hw],
            h,
            wd,
        );
    }
    y
}

/// Input and weight gradients of [`conv_transpose_forward`].
fn conv_transpose_backward<T: Elem>(
    x: &[T],
    w: &[T],
    grad: &[T],
    dims: [usize; 5],
) -> (Vec<T>, Vec<T>) {
    let [n, cin, cout, h, wd] = dims;
    let hw = h * wd;
    let mut dx = vec![<T as Elem>::zero(); n * cin * hw];
    let mut dw = vec![<T as Elem>::zero(); cin * cout * 4];
    let mut taps = vec![<T as Elem>::zero(); cout * 4 * hw];
    for b in 0..n {
        gather_taps(
            &grad[b * cout * 4 * hw..(b + 1) * cout * 4 * hw],
            &mut taps,
            h,
            wd,
        );
        gemm(
            (cin, hw, cout * 4),
            &mut dx[b * cin * hw..],
            (hw, 1),
            false,
            w,
            (cout * 4, 1),
            &taps,
            (hw, 1),
            Threads::All,
        );
        gemm(
            (cin, cout * 4, hw),
            &mut dw,
            (cout * 4, 1),
            b > 0,
            &x[b * cin * hw..],
            (hw, 1),
            &taps,
            (1, hw),
            Threads::All,
        );
    }
    (dx, dw)
}

impl ConvTranspose2x2 {
    fn dims(x: &[usize], w: &[usize]) -> Result<[usize; 5]> {
        match (x, w) {
            (&[n, cin, h, wd], &[wcin, cout, 2, 2]) if wcin == cin => Ok([n, cin, cout, h, wd]),
            _ => bail!("unet-conv-transpose2x2: input {x:?}, kernel {w:?}"),
        }
    }
}

impl CustomOp2 for ConvTranspose2x2 {
    fn name(&self) -> &'static str {
        "unet-conv-transpose2x2"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = Self::dims(l1.dims(), l2.dims())?;
        let [n, _, cout, h, w] = dims;
        let name = self.name();
        let y = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => f32::to_cpu_storage_owned(
                conv_transpose_forward(slice(s1, l1, name)?, slice(s2, l2, name)?, dims),
            ),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => f64::to_cpu_storage_owned(
                conv_transpose_forward(slice(s1, l1, name)?, slice(s2, l2, name)?, dims),
            ),
            _ => bail!("{name}: f32 or f64 input and kernel of one type"),
        };
        Ok((y, Shape::from((n, cout, 2 * h, 2 * w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        fn run<T: Elem>(x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor)> {
            let dims = ConvTranspose2x2::dims(x.dims(), w.dims())?;
            with_data::<T, _>(x, |xs| {
                with_data::<T, _>(w, |ws| {
                    with_data::<T, _>(grad, |g| {
                        let (dx, dw) = conv_transpose_backward(xs, ws, g, dims);
                        Ok((
                            Tensor::from_vec(dx, x.shape(), &Device::Cpu)?,
                            Tensor::from_vec(dw, w.shape(), &Device::Cpu)?,
                        ))
                    })
                })
            })
        }
        let (dx, dw) = match x.dtype() {
            candle_core::DType::F32 => run::<f32>(x, w, grad)?,
            candle_core::DType::F64 => run::<f64>(x, w, grad)?,
            dt => bail!("{}: unsupported dtype {dt:?}", self.name()),
        };
        Ok((Some(dx), Some(dw)))
    }
}

pub fn conv_transpose2x2(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, ConvTranspose2x2)
}
