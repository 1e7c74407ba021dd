//! Gradient checks: candle's autograd through each layer kind against central
//! finite differences, in f64 so the difference quotient is accurate to ~1e-8.

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use unet_models::{layers, Padding, UNet, UNetConfig, Upsampling};

const FD_STEP: f64 = 1e-6;
/// Allowed |analytic - numeric| / max(1, |numeric|).
const GRAD_RTOL: f64 = 1e-5;
/// Elements probed per tensor.
const PROBES: usize = 6;

fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let data: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// Checks d(sum(f() * weights))/d(var) at a few elements of each var.
fn check<F: Fn() -> Tensor>(label: &str, vars: &[(&str, &Var)], f: F) {
    let out = f();
    let weights = random(out.dims(), 99);
    let loss = |t: &Tensor| t.mul(&weights).unwrap().sum_all().unwrap();
    let grads = loss(&out).backward().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for (name, var) in vars {
        let analytic: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{label}: no gradient for {name}"))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let original = var.as_tensor().detach().copy().unwrap();
        let base: Vec<f64> = original.flatten_all().unwrap().to_vec1().unwrap();
        let mut probed_nonzero = false;
        for _ in 0..PROBES {
            let i = rng.random_range(0..base.len());
            let eval_at = |delta: f64| {
                let mut v = base.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, original.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                loss(&f()).to_scalar::<f64>().unwrap()
            };
            let numeric = (eval_at(FD_STEP) - eval_at(-FD_STEP)) / (2.0 * FD_STEP);
            var.set(&original).unwrap();
            let err = (analytic[i] - numeric).abs() / numeric.abs().max(1.0);
            assert!(
                err < GRAD_RTOL,
                "{label}: d/d{name}[{i}] analytic {} vs numeric {numeric} (err {err:e})",
                analytic[i]
            );
            probed_nonzero |= numeric.abs() > 1e-9;
        }
        assert!(
            probed_nonzero,
            "{label}: all probed gradients of {name} are zero"
        );
    }
}

fn var(shape: &[usize], seed: u64) -> Var {
    Var::from_tensor(&random(shape, seed)).unwrap()
}

#[test]
fn conv2d_gradients() {
    let (x, w, b) = (var(&[2, 3, 6, 5], 1), var(&[4, 3, 3, 3], 2), var(&[4], 3));
    for padding in [0, 1] {
        check(
            &format!("conv2d padding {padding}"),
            &[("x", &x), ("weight", &w), ("bias", &b)],
            || layers::conv2d(&x, &w, Some(&b), padding).unwrap(),
        );
    }
}

#[test]
fn conv_transpose_gradients() {
    let (x, w, b) = (var(&[2, 4, 3, 5], 4), var(&[4, 2, 2, 2], 5), var(&[2], 6));
    check(
        "conv_transpose2x2",
        &[("x", &x), ("weight", &w), ("bias", &b)],
        || layers::conv_transpose2x2(&x, &w, &b).unwrap(),
    );
}

#[test]
fn attention_gate_product_gradients() {
    let (x, a) = (var(&[2, 3, 4, 5], 31), var(&[2, 1, 4, 5], 32));
    check("mul_channel_planes", &[("x", &x), ("a", &a)], || {
        layers::mul_channel_planes(&x, &a).unwrap()
    });
}

#[test]
fn max_pool_gradients() {
    let x = var(&[2, 3, 6, 8], 7);
    check("max_pool2x2", &[("x", &x)], || {
        layers::max_pool2x2(&x).unwrap()
    });
    // Same values as candle's own pooling.
    let ours = layers::max_pool2x2(x.as_tensor()).unwrap();
    let theirs = x.as_tensor().max_pool2d(2).unwrap();
    let diff: f64 = (ours - theirs)
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert_eq!(diff, 0.0);
}

#[test]
fn batch_norm_train_gradients() {
    let (x, w, b) = (var(&[3, 4, 5, 3], 8), var(&[4], 9), var(&[4], 10));
    check(
        "batch_norm_train",
        &[("x", &x), ("weight", &w), ("bias", &b)],
        || layers::batch_norm_train(&x, &w, &b).unwrap().0,
    );
}

#[test]
fn batch_norm_relu_train_gradients() {
    let (x, w, b) = (var(&[3, 4, 5, 3], 16), var(&[4], 17), var(&[4], 18));
    check(
        "batch_norm_relu_train",
        &[("x", &x), ("weight", &w), ("bias", &b)],
        || layers::batch_norm_relu_train(&x, &w, &b).unwrap().0,
    );
}

#[test]
fn batch_norm_eval_gradients() {
    let (x, w, b) = (var(&[2, 4, 3, 3], 11), var(&[4], 12), var(&[4], 13));
    let mean = random(&[4], 14);
    let var_ = (random(&[4], 15).abs().unwrap() + 0.5).unwrap();
    check(
        "batch_norm_eval",
        &[("x", &x), ("weight", &w), ("bias", &b)],
        || layers::batch_norm_eval(&x, &w, &b, &mean, &var_).unwrap(),
    );
}

#[test]
fn bilinear_upsample_gradients() {
    let x = var(&[2, 3, 4, 5], 16);
    for align_corners in [true, false] {
        check(
            &format!("upsample_bilinear2x align_corners={align_corners}"),
            &[("x", &x)],
            || layers::upsample_bilinear2x(&x, align_corners).unwrap(),
        );
    }
}

#[test]
fn center_crop_gradients() {
    let x = var(&[1, 2, 9, 8], 17);
    check("center_crop", &[("x", &x)], || {
        layers::center_crop(&x, 5, 4).unwrap()
    });
}

/// Whole networks: covers the attention gate, skip crop and dropout (off in
/// eval) as wired by the graph, in both BatchNorm modes.
#[test]
fn whole_network_gradients() {
    let base = UNetConfig {
        in_channels: 2,
        out_channels: 2,
        base_width: 4,
        depth: 2,
        padding: Padding::Same,
        batch_norm: true,
        upsampling: Upsampling::Transposed,
        dropout: 0.3,
        attention: true,
    };
    let cases = [
        ("attention, transposed", base.clone(), 8),
        (
            "bilinear",
            UNetConfig {
                upsampling: Upsampling::Bilinear,
                attention: false,
                ..base.clone()
            },
            8,
        ),
        (
            "valid, attention, no BN",
            UNetConfig {
                padding: Padding::Valid,
                batch_norm: false,
                ..base.clone()
            },
            44,
        ),
    ];
    for (label, cfg, size) in cases {
        let model = UNet::new(&cfg, &Device::Cpu, 3)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let x = var(&[2, 2, size, size], 21);
        let params = model.trainable_vars();
        // The first conv, a gate conv where present, a decoder conv and the head.
        let mut probed: Vec<(&str, &Var)> = vec![("input", &x)];
        for (name, v) in &params {
            if name == "encoder.0.conv.0.weight"
                || name.starts_with("decoder.0.attention.W_x.0.weight")
                || name == "decoder.0.attention.psi.0.weight"
                // A bias before a training-mode BatchNorm has zero gradient.
                || (name == "decoder.0.attention.psi.0.bias" && !cfg.batch_norm)
                || name == "decoder.0.up.weight"
                || name == "decoder.1.conv.0.weight"
                || name == "head.bias"
            {
                probed.push((name.as_str(), v));
            }
        }
        assert!(probed.len() >= 4, "{label}: too few parameters probed");
        let train = cfg.batch_norm;
        check(label, &probed, || {
            // Replay the same dropout mask on every evaluation.
            model.set_dropout_step(0);
            model.forward_t(&x, train).unwrap()
        });
    }
}
