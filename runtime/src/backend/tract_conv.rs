//! Which kernel tract runs each convolution with.
//!
//! tract 0.23 lowers every f32 NCHW convolution with at most 576 inputs per
//! output point on rows of at least 128 pixels to `DirectSpatialConv`, a loop
//! that streams the input once per four output channels. Measured per node on
//! this project's exports at 256x256 (2 threads, x86-64 AVX-512), against the
//! im2col + matrix product tract uses otherwise:
//!
//! | conv (Cin->Cout, side) | direct ms | im2col ms (with its Pad) |
//! |------------------------|-----------|--------------------------|
//! | 3->64, 256             | 2.0-2.1   | 4.7 (without Pad)        |
//! | 16->16, 256            | 3.5-6.0   | 4.3-5.9 (without Pad)    |
//! | 32->16, 256            | 10.8      | 15.4                     |
//! | 16->32, 128            | 2.5       | 2.1                      |
//! | 32->32, 128            | 5.2-5.5   | 3.5-3.6                  |
//! | 64->32, 128            | 10.9      | 8.0                      |
//! | 64->128, 128           | 48        | 24                       |
//! | 64->64, 256            | 106-114   | 60                       |
//!
//! The direct loop wins with few output channels or a tiny Cin·Cout, so the
//! others are lowered to im2col here, before tract's own codegen sees them.
//! A frame of `unet` (base 64) at 256x256 takes 13 % less; see
//! `examples/tract_profile.rs` (`PLAIN_TRACT=1` for tract's own choice).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::knobs::KnobScope;
use tract_onnx::tract_core::ops::cnn::Conv;
use tract_onnx::tract_core::optim::{Optimizer, OptimizerSession, TypedPass};

/// Output channels up to which the direct loop is kept whatever the input.
const MAX_DIRECT_OUTPUT_CHANNELS: usize = 16;
/// Largest Cin·Cout the direct loop is kept for with more output channels.
const MAX_DIRECT_CHANNEL_PRODUCT: usize = 256;

/// Whether tract's direct spatial loop beats im2col for `conv` (see the table above).
pub fn prefers_direct(conv: &Conv) -> bool {
    let (cin, cout) = (conv.input_channels(), conv.output_channels());
    cout <= MAX_DIRECT_OUTPUT_CHANNELS || cin * cout <= MAX_DIRECT_CHANNEL_PRODUCT
}

/// `model` declutterred and optimised as `into_optimized` does, with the
/// convolution choice above on x86-64 (where it was measured).
pub fn optimize(model: TypedModel) -> TractResult<TypedModel> {
    let mut model = model.into_decluttered()?;
    let mut optimizer = Optimizer::codegen();
    if cfg!(target_arch = "x86_64") {
        // After constant propagation and axis merging, before the generic codegen.
        optimizer.add_pass(2, Box::new(LowerWideConvs));
    }
    optimizer.optimize(&mut model)?;
    Ok(model)
}

/// Codegens the convolutions [`prefers_direct`] rejects with tract's direct
/// spatial loop switched off, so they become im2col and a matrix product.
#[derive(Clone, Debug)]
struct LowerWideConvs;

impl TypedPass for LowerWideConvs {
    fn reset(&mut self) -> TractResult<()> {
        Ok(())
    }

    fn next(
        &mut self,
        _session: &mut OptimizerSession,
        model: &TypedModel,
    ) -> TractResult<Option<TypedModelPatch>> {
        let no_direct = KnobScope::new([("TRACT_DISABLE_DIRECT_SPATIAL", "true")])?;
        for node in &model.nodes {
            let Some(conv) = node.op_as::<Conv>() else {
                continue;
            };
            if prefers_direct(conv) {
                continue;
            }
            // Each patch replaces the Conv node, so the scan moves on.
            if let Some(patch) = no_direct.enter(|| conv.codegen(model, node))? {
                return Ok(Some(patch));
            }
        }
        Ok(None)
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use tract_onnx::tract_core::ops::cnn::{KernelFormat, PaddingSpec, PoolSpec};
    use tract_onnx::tract_core::ops::nn::DataFormat;

    use super::*;

    /// A 3x3, stride-1, zero-padded f32 NCHW convolution.
    fn conv_3x3(cin: usize, cout: usize) -> Conv {
        Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec!(3, 3),
                padding: PaddingSpec::Explicit(tvec!(1, 1), tvec!(1, 1)),
                dilations: None,
                strides: None,
                input_channels: cin,
                output_channels: cout,
            },
            kernel_fmt: KernelFormat::OIHW,
            group: 1,
            q_params: None,
        }
    }

    /// `x [1, cin, 4, 160] -> 3x3 conv (cin -> c1) -> 3x3 conv (c1 -> c2)`, rows wide
    /// enough for tract's direct loop, weights from a fixed pseudo-random sequence.
    fn two_convs(cin: usize, c1: usize, c2: usize) -> TractResult<TypedModel> {
        let mut model = TypedModel::default();
        let mut wire = model.add_source("x", f32::fact([1, cin, 4, 160]))?;
        let mut seed = 1u32;
        let mut next = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for (i, (cin, cout)) in [(cin, c1), (c1, c2)].into_iter().enumerate() {
            let weights: Vec<f32> = (0..cout * cin * 9).map(|_| next()).collect();
            let kernel = tract_ndarray::Array4::from_shape_vec((cout, cin, 3, 3), weights)?;
            let kernel = model.add_const(format!("w{i}"), Tensor::from(kernel))?;
            let bias = model.add_const(format!("b{i}"), Tensor::zero::<f32>(&[cout])?)?;
            let conv = conv_3x3(cin, cout);
            wire = model.wire_node(format!("conv{i}"), conv, &[wire, kernel, bias])?[0];
        }
        model.select_output_outlets(&[wire])?;
        Ok(model)
    }

    fn op_names(model: &TypedModel) -> Vec<String> {
        model
            .nodes
            .iter()
            .map(|n| n.op.name().to_string())
            .collect()
    }

    fn run(model: TypedModel, cin: usize) -> TractResult<Vec<f32>> {
        let x: Vec<f32> = (0..cin * 4 * 160)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let x = tract_ndarray::Array4::from_shape_vec((1, cin, 4, 160), x)?;
        let out = model.into_runnable()?.run(tvec!(Tensor::from(x).into()))?;
        let view = out[0].to_plain_array_view::<f32>()?;
        Ok(view.iter().copied().collect())
    }

    #[test]
    fn wide_convs_leave_the_direct_loop_and_compute_the_same() -> TractResult<()> {
        // 16->16 keeps the direct loop; 16->32 (Cin·Cout 512, 32 outputs) does not.
        let plain = two_convs(16, 16, 32)?.into_optimized()?;
        let ours = optimize(two_convs(16, 16, 32)?)?;
        let count = |names: &[String], op: &str| names.iter().filter(|n| *n == op).count();
        assert_eq!(
            count(&op_names(&plain), "DirectSpatialConv"),
            2,
            "{:?}",
            op_names(&plain)
        );
        let names = op_names(&ours);
        assert_eq!(count(&names, "DirectSpatialConv"), 1, "{names:?}");
        assert!(count(&names, "OptMatMul") >= 1, "{names:?}");
        let (a, b) = (run(plain, 16)?, run(ours, 16)?);
        let err = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(err < 1e-4, "max abs difference {err}");
        Ok(())
    }

    #[test]
    fn the_rule_follows_the_measurements() {
        for (cin, cout) in [(3, 64), (16, 16), (32, 16)] {
            assert!(prefers_direct(&conv_3x3(cin, cout)), "{cin}->{cout}");
        }
        for (cin, cout) in [(16, 32), (32, 32), (64, 32), (64, 64), (64, 128)] {
            assert!(!prefers_direct(&conv_3x3(cin, cout)), "{cin}->{cout}");
        }
    }
}
