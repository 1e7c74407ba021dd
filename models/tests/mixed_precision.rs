//! Mixed precision (`UNet::set_compute_dtype`): bf16/f16 forwards and gradients
//! against the same network in f32, with the master weights staying f32.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{abs_max, max_abs_diff, seeded, sum_sq};
use unet_models::{UNet, UNetConfig};

fn small(preset: &str) -> UNetConfig {
    UNetConfig {
        base_width: 8,
        depth: 2,
        ..UNetConfig::preset(preset).unwrap()
    }
}

/// ||a - b|| / ||b|| over all elements.
fn rel_l2(a: &Tensor, b: &Tensor) -> f32 {
    (sum_sq(&a.sub(b).unwrap()) / sum_sq(b)).sqrt()
}

/// (bf16, f16) tolerances relative to the f32 result: 8 and 11 mantissa bits.
fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => 0.05,
        DType::F16 => 0.01,
        _ => unreachable!(),
    }
}

/// `err` (relative to f32) is within `dtype`'s tolerance, and not zero: the
/// half-precision rounding must show, or the model silently ran in f32.
fn assert_rounded_like_f32(err: f32, dtype: DType, what: &str) {
    assert!(
        err <= tolerance(dtype),
        "{what} {dtype:?}: relative error {err}"
    );
    assert!(err > 1e-6, "{what} {dtype:?}: identical to f32");
}

#[test]
fn eval_forward_follows_f32_and_returns_f32_logits() {
    let x = seeded(&[2, 3, 32, 32], 1);
    for preset in ["unet", "unet-bilinear", "attention-unet"] {
        let reference = UNet::new(&small(preset), &Device::Cpu, 3).unwrap();
        let expected = reference.forward(&x).unwrap();
        for dtype in [DType::BF16, DType::F16] {
            let mut mixed = UNet::new(&small(preset), &Device::Cpu, 3).unwrap();
            mixed.set_compute_dtype(dtype).unwrap();
            assert_eq!(mixed.compute_dtype(), dtype);
            assert_eq!(mixed.param_dtype(), DType::F32);
            let got = mixed.forward(&x).unwrap();
            assert_eq!(got.dtype(), DType::F32, "{preset} {dtype:?}");
            let err = max_abs_diff(&got, &expected) / abs_max(&expected);
            assert_rounded_like_f32(err, dtype, &format!("{preset} logits"));
        }
    }
}

/// Eval-mode gradients (a training-mode BatchNorm's backward removes the
/// gradient's mean and scale components, which amplifies any rounding of what
/// is left, so its comparison would test that cancellation rather than the casts).
#[test]
fn gradients_reach_the_f32_master_weights_and_follow_f32() {
    let x = seeded(&[2, 3, 32, 32], 2);
    let target = seeded(&[2, 1, 32, 32], 9)
        .ge(0.0)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let loss = |logits: &Tensor| logits.sub(&target).unwrap().sqr().unwrap().mean_all();
    for preset in ["unet", "unet-bilinear", "attention-unet"] {
        let reference = UNet::new(&small(preset), &Device::Cpu, 4).unwrap();
        let ref_grads = loss(&reference.forward_t(&x, false).unwrap())
            .unwrap()
            .backward()
            .unwrap();
        for dtype in [DType::BF16, DType::F16] {
            let mut mixed = UNet::new(&small(preset), &Device::Cpu, 4).unwrap();
            mixed.set_compute_dtype(dtype).unwrap();
            // f16 needs loss scaling (as the trainer does) to keep small
            // gradients out of its subnormal range.
            let scale = if dtype == DType::F16 { 1024.0 } else { 1.0 };
            let grads = (loss(&mixed.forward_t(&x, false).unwrap()).unwrap() * scale)
                .unwrap()
                .backward()
                .unwrap();
            let (mut diff, mut norm) = (0f32, 0f32);
            for ((name, var), (_, ref_var)) in mixed
                .trainable_vars()
                .iter()
                .zip(reference.trainable_vars().iter())
            {
                let g = grads.get(var.as_tensor()).unwrap_or_else(|| {
                    panic!("{preset} {dtype:?}: no gradient for {name}");
                });
                assert_eq!(g.dtype(), DType::F32, "{preset} {dtype:?} {name}");
                let g = (g / scale).unwrap();
                let expected = ref_grads.get(ref_var.as_tensor()).unwrap();
                let err = rel_l2(&g, expected);
                // A sum over pixels whose terms cancel (an attention gate's bias)
                // amplifies rounding: this bound only catches a broken path.
                assert!(
                    err <= 0.15,
                    "{preset} {dtype:?} {name}: relative gradient error {err}"
                );
                diff += sum_sq(&g.sub(expected).unwrap());
                norm += sum_sq(expected);
            }
            assert_rounded_like_f32((diff / norm).sqrt(), dtype, &format!("{preset} gradients"));
        }
    }
}

/// Training mode: BatchNorm normalises and updates its running statistics in
/// f32 from half-precision activations.
#[test]
fn training_forward_updates_f32_running_statistics() {
    let x = seeded(&[2, 3, 32, 32], 6);
    let reference = UNet::new(&small("unet"), &Device::Cpu, 8).unwrap();
    let expected = reference.forward_t(&x, true).unwrap();
    for dtype in [DType::BF16, DType::F16] {
        let mut mixed = UNet::new(&small("unet"), &Device::Cpu, 8).unwrap();
        mixed.set_compute_dtype(dtype).unwrap();
        let got = mixed.forward_t(&x, true).unwrap();
        let err = max_abs_diff(&got, &expected) / abs_max(&expected);
        assert_rounded_like_f32(err, dtype, "training logits");
        for ((name, a), (_, b)) in mixed.state_dict().iter().zip(reference.state_dict().iter()) {
            if name.contains("running") {
                assert_eq!(a.dtype(), DType::F32, "{name}");
                let err = rel_l2(a, b);
                assert!(err <= tolerance(dtype) / 4.0, "{dtype:?} {name}: {err}");
            }
        }
    }
}

#[test]
fn the_parameter_dtype_turns_mixed_precision_off() {
    let x = seeded(&[1, 3, 32, 32], 3);
    let mut model = UNet::new(&small("unet"), &Device::Cpu, 5).unwrap();
    let expected = model.forward(&x).unwrap();
    model.set_compute_dtype(DType::BF16).unwrap();
    model.set_compute_dtype(DType::F32).unwrap();
    assert_eq!(model.compute_dtype(), DType::F32);
    assert_eq!(max_abs_diff(&model.forward(&x).unwrap(), &expected), 0.0);
    assert!(model.set_compute_dtype(DType::U8).is_err());
}
