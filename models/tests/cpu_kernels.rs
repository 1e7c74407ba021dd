//! The CPU training kernels (conv, max pooling, training BatchNorm with
//! hand-written backward passes, used by `layers` on the CPU) against candle's
//! own ops composed the slow way: outputs, gradients and running statistics.
//! The finite-difference checks in `gradients.rs` cover them in f64 as well.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{max_abs_diff, seeded};
use unet_models::layers;

/// Output and gradients (w.r.t. each var) of `sum(f(vars) * weights)`.
fn value_and_grads(vars: &[&Var], f: impl Fn(&[&Tensor]) -> Tensor) -> (Tensor, Vec<Tensor>) {
    let inputs: Vec<&Tensor> = vars.iter().map(|v| v.as_tensor()).collect();
    let out = f(&inputs);
    let weights = seeded(out.dims(), 77);
    let grads = out
        .mul(&weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g = vars
        .iter()
        .map(|v| grads.get(v.as_tensor()).expect("gradient").clone())
        .collect();
    (out, g)
}

fn assert_close(label: &str, a: &Tensor, b: &Tensor, tol: f32) {
    let d = max_abs_diff(a, b);
    assert!(d < tol, "{label}: max abs difference {d:e} >= {tol:e}");
}

#[test]
fn conv2d_matches_candle_conv_and_its_backward() {
    // The last two run by Winograd (3x3 over 8 or more channels), tiles
    // shared by the threads: padded to an odd size, and unpadded.
    let shapes = [
        ([2, 3, 9, 11], 4, 1),
        ([1, 5, 12, 10], 3, 0),
        ([1, 16, 7, 9], 12, 1),
        ([2, 8, 10, 9], 8, 0),
    ];
    for (shape, cout, padding) in shapes {
        let x = Var::from_tensor(&seeded(&shape, 1)).unwrap();
        let w = Var::from_tensor(&seeded(&[cout, shape[1], 3, 3], 2)).unwrap();
        let (ours, our_grads) = value_and_grads(&[&x, &w], |t| {
            layers::conv2d(t[0], t[1], None, padding).unwrap()
        });
        let (theirs, their_grads) =
            value_and_grads(&[&x, &w], |t| t[0].conv2d(t[1], padding, 1, 1, 1).unwrap());
        assert_close("conv output", &ours, &theirs, 1e-5);
        assert_close("conv dx", &our_grads[0], &their_grads[0], 1e-4);
        assert_close("conv dw", &our_grads[1], &their_grads[1], 1e-4);
    }
}

#[test]
fn conv_transpose_matches_candle_and_its_backward() {
    let x = Var::from_tensor(&seeded(&[2, 5, 3, 4], 11)).unwrap();
    let w = Var::from_tensor(&seeded(&[5, 3, 2, 2], 12)).unwrap();
    let b = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
    let (ours, g1) = value_and_grads(&[&x, &w], |t| {
        layers::conv_transpose2x2(t[0], t[1], &b).unwrap()
    });
    let (theirs, g2) = value_and_grads(&[&x, &w], |t| {
        t[0].conv_transpose2d(t[1], 0, 0, 2, 1).unwrap()
    });
    assert_eq!(ours.dims(), &[2, 3, 6, 8]);
    assert_close("conv-transpose output", &ours, &theirs, 1e-5);
    assert_close("conv-transpose dx", &g1[0], &g2[0], 1e-4);
    assert_close("conv-transpose dw", &g1[1], &g2[1], 1e-4);
}

#[test]
fn channel_bias_and_plane_product_match_candle_broadcasts() {
    // 65x70 pixels: the gate's backward sums a plane in two tasks, one partial.
    for shape in [[2, 3, 5, 7], [2, 3, 65, 70]] {
        let [n, c, h, w] = shape;
        let x = Var::from_tensor(&seeded(&shape, 21)).unwrap();
        let b = Var::from_tensor(&seeded(&[c], 22)).unwrap();
        let a = Var::from_tensor(&seeded(&[n, 1, h, w], 23)).unwrap();
        let (ours, g1) = value_and_grads(&[&x, &b], |t| {
            layers::conv2d(
                t[0],
                &Tensor::ones((c, c, 1, 1), DType::F32, &Device::Cpu).unwrap(),
                Some(t[1]),
                0,
            )
            .unwrap()
        });
        let (theirs, g2) = value_and_grads(&[&x, &b], |t| {
            t[0].conv2d(
                &Tensor::ones((c, c, 1, 1), DType::F32, &Device::Cpu).unwrap(),
                0,
                1,
                1,
                1,
            )
            .unwrap()
            .broadcast_add(&t[1].reshape((1, c, 1, 1)).unwrap())
            .unwrap()
        });
        assert_close("bias output", &ours, &theirs, 1e-5);
        assert_close("bias dx", &g1[0], &g2[0], 1e-4);
        assert_close("bias db", &g1[1], &g2[1], 1e-3);

        let (ours, g1) = value_and_grads(&[&x, &a], |t| {
            layers::mul_channel_planes(t[0], t[1]).unwrap()
        });
        let (theirs, g2) = value_and_grads(&[&x, &a], |t| t[0].broadcast_mul(t[1]).unwrap());
        assert_close("gate output", &ours, &theirs, f32::MIN_POSITIVE);
        assert_close("gate dx", &g1[0], &g2[0], f32::MIN_POSITIVE);
        assert_close("gate da", &g1[1], &g2[1], 1e-5);
    }
}

#[test]
fn relu_matches_candle_relu() {
    let x = Var::from_tensor(&seeded(&[2, 3, 5, 7], 8)).unwrap();
    let (ours, g1) = value_and_grads(&[&x], |t| layers::relu(t[0]).unwrap());
    let (theirs, g2) = value_and_grads(&[&x], |t| t[0].relu().unwrap());
    assert_close("relu output", &ours, &theirs, f32::MIN_POSITIVE);
    assert_close("relu dx", &g1[0], &g2[0], f32::MIN_POSITIVE);
}

#[test]
fn max_pool_matches_the_composed_pool_including_odd_sizes() {
    for shape in [[2, 3, 8, 6], [1, 2, 7, 9]] {
        let x = Var::from_tensor(&seeded(&shape, 3)).unwrap();
        let (ours, g1) = value_and_grads(&[&x], |t| layers::max_pool2x2(t[0]).unwrap());
        let (theirs, g2) = value_and_grads(&[&x], |t| layers::max_pool2x2_composed(t[0]).unwrap());
        assert_eq!(
            ours.dims(),
            &[shape[0], shape[1], shape[2] / 2, shape[3] / 2]
        );
        assert_close("pool output", &ours, &theirs, f32::MIN_POSITIVE);
        assert_close("pool dx", &g1[0], &g2[0], f32::MIN_POSITIVE);
    }
}

#[test]
fn max_pool_ties_route_the_gradient_to_the_first_maximum_as_pytorch() {
    let x =
        Var::from_tensor(&Tensor::ones((1, 1, 2, 2), DType::F32, &Device::Cpu).unwrap()).unwrap();
    let y = layers::max_pool2x2(x.as_tensor()).unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    let dx: Vec<f32> = g
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(dx, vec![1.0, 0.0, 0.0, 0.0]);
}

#[test]
fn batch_norm_train_matches_the_composed_batch_norm() {
    let shape = [3, 4, 5, 6];
    let x = Var::from_tensor(&seeded(&shape, 4).affine(3.0, 1.5).unwrap()).unwrap();
    let gamma = Var::from_tensor(&seeded(&[4], 5)).unwrap();
    let beta = Var::from_tensor(&seeded(&[4], 6)).unwrap();
    let vars = [&x, &gamma, &beta];
    let (ours, g1) = value_and_grads(&vars, |t| {
        layers::batch_norm_train(t[0], t[1], t[2]).unwrap().0
    });
    let (theirs, g2) = value_and_grads(&vars, |t| {
        layers::batch_norm_train_composed(t[0], t[1], t[2])
            .unwrap()
            .0
    });
    assert_close("bn output", &ours, &theirs, 1e-5);
    for (name, a, b) in [
        ("dx", &g1[0], &g2[0]),
        ("dgamma", &g1[1], &g2[1]),
        ("dbeta", &g1[2], &g2[2]),
    ] {
        assert_close(name, a, b, 1e-4);
    }
    let (_, s1) =
        layers::batch_norm_train(x.as_tensor(), gamma.as_tensor(), beta.as_tensor()).unwrap();
    let (_, s2) =
        layers::batch_norm_train_composed(x.as_tensor(), gamma.as_tensor(), beta.as_tensor())
            .unwrap();
    assert_close("running mean", &s1.mean, &s2.mean, 1e-5);
    assert_close("running var", &s1.unbiased_var, &s2.unbiased_var, 1e-4);
}

#[test]
fn fused_batch_norm_relu_matches_batch_norm_then_relu() {
    // Shifted so that about a third of the outputs are cut by the ReLU.
    let x = Var::from_tensor(&seeded(&[2, 4, 5, 6], 21).affine(2.0, 0.5).unwrap()).unwrap();
    let gamma = Var::from_tensor(&seeded(&[4], 22).affine(1.0, 0.2).unwrap()).unwrap();
    let beta = Var::from_tensor(&seeded(&[4], 23).affine(1.0, -0.3).unwrap()).unwrap();
    let vars = [&x, &gamma, &beta];
    let (ours, g1) = value_and_grads(&vars, |t| {
        layers::batch_norm_relu_train(t[0], t[1], t[2]).unwrap().0
    });
    let (theirs, g2) = value_and_grads(&vars, |t| {
        let (y, _) = layers::batch_norm_train_composed(t[0], t[1], t[2]).unwrap();
        y.relu().unwrap()
    });
    let cut = theirs.eq(0f32).unwrap().to_dtype(DType::F32).unwrap();
    let cut = cut.mean_all().unwrap().to_scalar::<f32>().unwrap();
    assert!((0.1..0.9).contains(&cut), "ReLU cut {cut} of the outputs");
    assert_close("bn+relu output", &ours, &theirs, 1e-5);
    for (name, a, b) in [
        ("dx", &g1[0], &g2[0]),
        ("dgamma", &g1[1], &g2[1]),
        ("dbeta", &g1[2], &g2[2]),
    ] {
        assert_close(name, a, b, 1e-4);
    }
    let (_, fused) =
        layers::batch_norm_relu_train(x.as_tensor(), gamma.as_tensor(), beta.as_tensor()).unwrap();
    let (_, plain) =
        layers::batch_norm_train(x.as_tensor(), gamma.as_tensor(), beta.as_tensor()).unwrap();
    assert_close("running mean", &fused.mean, &plain.mean, f32::MIN_POSITIVE);
    assert_close(
        "running var",
        &fused.unbiased_var,
        &plain.unbiased_var,
        f32::MIN_POSITIVE,
    );
}

#[test]
fn conv2d_skips_the_input_gradient_of_an_input_that_needs_none() {
    let x = seeded(&[1, 3, 8, 7], 31);
    let w = Var::from_tensor(&seeded(&[4, 3, 3, 3], 32)).unwrap();
    let (_, tracked) = value_and_grads(&[&Var::from_tensor(&x).unwrap(), &w], |t| {
        layers::conv2d(t[0], t[1], None, 1).unwrap()
    });
    let (_, untracked) = value_and_grads(&[&w], |t| layers::conv2d(&x, t[0], None, 1).unwrap());
    assert_close("dw", &untracked[0], &tracked[1], f32::MIN_POSITIVE);
    let y = layers::conv2d(&x, w.as_tensor(), None, 1).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&x).is_none(), "a gradient for the plain input");
}

#[test]
fn conv2d_tiles_per_thread_match_candle_and_repeat_bit_for_bit() {
    // Wide enough for 19 row tiles per image (the last one partial), the path
    // where each thread convolves its own tiles; a 2-thread pool whatever the machine.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    // The second is deep and narrow: tiles of 32 rows (4 tiles of 2x2 a row
    // pair, 64 a tile), past the scratch size, the last one partial.
    let shapes = [([2, 32, 127, 32], 8), ([4, 96, 40, 8], 96)];
    pool.install(|| {
        shapes.iter().for_each(|&(shape, cout)| {
            let x = Var::from_tensor(&seeded(&shape, 41)).unwrap();
            let w = Var::from_tensor(&seeded(&[cout, shape[1], 3, 3], 42)).unwrap();
            let ours =
                || value_and_grads(&[&x, &w], |t| layers::conv2d(t[0], t[1], None, 1).unwrap());
            let (y, g) = ours();
            let (theirs, their_grads) =
                value_and_grads(&[&x, &w], |t| t[0].conv2d(t[1], 1, 1, 1, 1).unwrap());
            assert_close("conv output", &y, &theirs, 1e-4);
            assert_close("conv dx", &g[0], &their_grads[0], 1e-3);
            assert_close("conv dw", &g[1], &their_grads[1], 1e-2);
            let (y2, g2) = ours();
            for (label, a, b) in [
                ("output", &y, &y2),
                ("dx", &g[0], &g2[0]),
                ("dw", &g[1], &g2[1]),
            ] {
                assert_eq!(max_abs_diff(a, b), 0.0, "{label} differs between runs");
            }
        })
    });
}
