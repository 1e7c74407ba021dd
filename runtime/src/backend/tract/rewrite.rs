//! Which kernel runs each convolution: this crate's [`TiledConv`] or tract's own.
//!
//! tract 0.23 runs a stride-1 f32 convolution as `DirectSpatialConv` or as a
//! `Pad`, a lazy im2col and a matrix product, with the channel `Concat` before
//! a decoder convolution and the ReLU after every one as nodes of their own.
//! [`TiledConv`] does all of it per L2-sized tile, a 3x3 convolution by
//! Winograd. On its im2col path the deep, low-resolution layers, whose tiles
//! would be too thin, stay with tract ([`tiled_conv::suits`]); by Winograd
//! they share their tiles among the threads. The per-convolution
//! measurements behind these choices are in `docs/perf.md`.

use std::sync::Arc;

use tract_core::ops::array::TypedConcat;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::cnn::{Conv, Deconv, KernelFormat, MaxPool, PaddingSpec};
use tract_core::ops::nn::DataFormat;
use tract_core::optim::{Optimizer, OptimizerSession, TypedPass};
use tract_core::prelude::*;

use super::tiled_conv::{self, TiledConv};
use super::tiled_deconv::TiledDeconv;
use unet_kernels::winograd;

/// `model` declutterred and optimised as `into_optimized` does, with the
/// convolutions [`TiledConv`] suits on `threads` threads replaced by it, 3x3
/// ones by Winograd unless `UNET_WINOGRAD=0` (to measure the im2col path).
pub fn optimize(model: TypedModel, threads: usize) -> TractResult<TypedModel> {
    let winograd = std::env::var_os("UNET_WINOGRAD").is_none_or(|v| v != "0");
    optimize_with(model, threads, winograd)
}

/// [`optimize`], with or without Winograd for the 3x3 convolutions it suits.
pub fn optimize_with(model: TypedModel, threads: usize, winograd: bool) -> TractResult<TypedModel> {
    let mut model = model.into_decluttered()?;
    let mut optimizer = Optimizer::codegen();
    // After constant propagation and axis merging, before the generic codegen.
    optimizer.add_pass(2, Box::new(UseTiledConvs { threads, winograd }));
    optimizer.optimize(&mut model)?;
    Ok(model)
}

/// Replaces each convolution [`tiled_conv`] takes, with the channel `Concat`
/// feeding it and the ReLU after it, by one [`TiledConv`], and each
/// transposed convolution [`tiled_deconv`] takes by a [`TiledDeconv`]; a
/// max-pooling of a `TiledConv`'s output becomes its second output.
#[derive(Clone, Debug)]
struct UseTiledConvs {
    threads: usize,
    winograd: bool,
}

impl TypedPass for UseTiledConvs {
    fn reset(&mut self) -> TractResult<()> {
        Ok(())
    }

    fn next(
        &mut self,
        _session: &mut OptimizerSession,
        model: &TypedModel,
    ) -> TractResult<Option<TypedModelPatch>> {
        for node in &model.nodes {
            if let Some(patch) = tiled_conv(model, node, self.threads, self.winograd)? {
                return Ok(Some(patch));
            }
            if let Some(patch) = tiled_deconv(model, node, self.threads)? {
                return Ok(Some(patch));
            }
            if let Some(patch) = pooled_tiled_conv(model, node)? {
                return Ok(Some(patch));
            }
        }
        Ok(None)
    }
}

/// Whether `padding` adds nothing on any side.
fn unpadded(padding: &PaddingSpec) -> bool {
    match padding {
        PaddingSpec::Valid => true,
        PaddingSpec::Explicit(before, after) => before.iter().chain(after).all(|&p| p == 0),
        _ => false,
    }
}

/// A concrete-shape f32 NCHW tensor's dimensions.
fn nchw(model: &TypedModel, outlet: OutletId) -> TractResult<Option<[usize; 4]>> {
    let fact = model.outlet_fact(outlet)?;
    Ok((fact.datum_type == f32::datum_type())
        .then(|| {
            fact.shape
                .as_concrete()
                .and_then(|s| <[usize; 4]>::try_from(s).ok())
        })
        .flatten())
}

/// Whether `outlet` feeds exactly one node and is not a model output.
fn feeds_one_node(model: &TypedModel, outlet: OutletId) -> TractResult<bool> {
    Ok(model.outlet_successors(outlet).len() == 1 && !model.output_outlets()?.contains(&outlet))
}

/// Whether `node` is `max(x, 0)` with the zero a constant that broadcasts.
fn is_relu(model: &TypedModel, node: &TypedNode) -> TractResult<bool> {
    let Some(op) = node.op_as::<TypedBinOp>() else {
        return Ok(false);
    };
    if op.0.name() != "Max" || node.inputs.len() != 2 {
        return Ok(false);
    }
    let zero = model.outlet_fact(node.inputs[1])?;
    let Some(zero) = &zero.konst else {
        return Ok(false);
    };
    let Ok(values) = zero
        .try_as_plain_ram()
        .and_then(|v| v.as_slice::<f32>().map(|s| s.to_vec()))
    else {
        return Ok(false);
    };
    Ok(zero.len() == 1 && values == [0.0])
}

/// The f32 kernel (of `shape`, OIHW) and the bias (`[Cout]`, broadcast from a
/// scalar) of a convolution `node` whose second and third inputs are constants.
fn constant_weights(
    model: &TypedModel,
    node: &TypedNode,
    shape: [usize; 4],
) -> TractResult<Option<(Tensor, Tensor)>> {
    let (Some(kernel), Some(bias)) = (
        model.outlet_fact(node.inputs[1])?.konst.clone(),
        model.outlet_fact(node.inputs[2])?.konst.clone(),
    ) else {
        return Ok(None);
    };
    let cout = shape[0];
    if kernel.datum_type() != f32::datum_type()
        || kernel.shape() != shape
        || bias.datum_type() != f32::datum_type()
        || !(bias.len() == cout || bias.len() == 1)
    {
        return Ok(None);
    }
    let bias_len = bias.len();
    let bias = bias
        .into_tensor()
        .into_shape(&[bias_len])?
        .broadcast_to_shape(&[cout])?;
    Ok(Some((kernel.into_tensor(), bias)))
}

/// The patch turning `node` into a [`TiledConv`], if it is a stride-1,
/// ungrouped f32 NCHW convolution with constant weights, a kernel larger than
/// 1x1 (a 1x1 needs no im2col: tract runs it as one matrix product) and a
/// shape [`tiled_conv::suits`] on `threads` threads, or one that runs by
/// Winograd: where [`uses_winograd`] says so and `winograd` allows it.
fn tiled_conv(
    model: &TypedModel,
    node: &TypedNode,
    threads: usize,
    winograd: bool,
) -> TractResult<Option<TypedModelPatch>> {
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    let spec = &conv.pool_spec;
    let (&[kh, kw], [1, 1], [1, 1]) = (
        spec.kernel_shape.as_slice(),
        spec.strides().as_ref(),
        spec.dilations().as_ref(),
    ) else {
        return Ok(None);
    };
    if conv.q_params.is_some()
        || conv.group != 1
        || spec.data_format != DataFormat::NCHW
        || conv.kernel_fmt != KernelFormat::OIHW
        || (kh, kw) == (1, 1)
        || node.inputs.len() != 3
    {
        return Ok(None);
    }
    let padding = match &spec.padding {
        PaddingSpec::Valid => [0; 4],
        PaddingSpec::Explicit(before, after) if before.len() == 2 && after.len() == 2 => {
            [before[0], before[1], after[0], after[1]]
        }
        _ => return Ok(None),
    };
    let Some([n, cin, h, w]) = nchw(model, node.inputs[0])? else {
        return Ok(None);
    };
    let [top, left, bottom, right] = padding;
    let (Some(ho), Some(wo)) = (
        (h + top + bottom + 1).checked_sub(kh),
        (w + left + right + 1).checked_sub(kw),
    ) else {
        return Ok(None);
    };
    // Winograd spreads the tiles of deep, low-resolution layers over all threads.
    let winograd = winograd && uses_winograd((kh, kw), cin);
    if !winograd && !tiled_conv::suits(cin * kh * kw, n, (ho, wo), threads) {
        return Ok(None);
    }
    let cout = spec.output_channels;
    let Some((kernel, bias)) = constant_weights(model, node, [cout, cin, kh, kw])? else {
        return Ok(None);
    };
    let weights = kernel.into_shape(&[cout, cin * kh * kw])?;

    // A channel concatenation only this convolution reads is read in place.
    let mut inputs: TVec<OutletId> = tvec![node.inputs[0]];
    let mut parts: TVec<usize> = tvec![cin];
    let producer = model.node(node.inputs[0].node);
    if let Some(concat) = producer.op_as::<TypedConcat>() {
        let channels = producer
            .inputs
            .iter()
            .map(|&i| Ok(nchw(model, i)?.map(|s| s[1])))
            .collect::<TractResult<Option<TVec<usize>>>>()?;
        if let (1, true, Some(channels)) = (
            concat.axis,
            feeds_one_node(model, node.inputs[0])?,
            channels,
        ) {
            inputs = producer.inputs.iter().copied().collect();
            parts = channels;
        }
    }
    // So is a ReLU only it feeds.
    let mut output = OutletId::new(node.id, 0);
    let mut relu = false;
    if feeds_one_node(model, output)? {
        let next = model.node(model.outlet_successors(output)[0].node);
        if next.inputs[0] == output && is_relu(model, next)? {
            output = OutletId::new(next.id, 0);
            relu = true;
        }
    }
    let winograd = winograd.then(|| -> TractResult<_> {
        let u = winograd::transform_weights(tiled_conv::plain_f32(&weights)?, cout, cin);
        Ok(Arc::new(tensor1(&u).into_shape(&[
            winograd::POINTS,
            cout,
            cin,
        ])?))
    });
    let op = TiledConv {
        parts,
        output_channels: cout,
        kernel: (kh, kw),
        padding,
        weights: Arc::new(weights),
        bias: Arc::new(bias),
        relu,
        pool: false,
        winograd: winograd.transpose()?,
    };
    let mut patch = TypedModelPatch::default();
    let taps = inputs
        .iter()
        .map(|&i| patch.tap_model(model, i))
        .collect::<TractResult<TVec<_>>>()?;
    let wire = patch.wire_node(&node.name, op, &taps)?[0];
    patch.shunt_outside(model, output, wire)?;
    Ok(Some(patch))
}

/// Whether a [`TiledConv`] with this kernel and `cin` input channels suits
/// Winograd F(2×2, 3×3): a 3x3 kernel over at least
/// [`winograd::MIN_CHANNELS`] channels.
fn uses_winograd(kernel: (usize, usize), cin: usize) -> bool {
    kernel == (3, 3) && cin >= winograd::MIN_CHANNELS
}

/// The patch folding `node`, a 2x2, stride-2 max-pooling of a [`TiledConv`]'s
/// output (U-Net's encoder), into that op as its second output.
fn pooled_tiled_conv(model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
    let Some(pool) = node.op_as::<MaxPool>() else {
        return Ok(None);
    };
    let spec = &pool.pool_spec;
    let valid = unpadded(&spec.padding);
    if !valid
        || spec.kernel_shape.as_slice() != [2, 2]
        || *spec.strides() != [2, 2]
        || *spec.dilations() != [1, 1]
        || spec.data_format != DataFormat::NCHW
        || pool.with_index_outputs.is_some()
        || node.inputs.len() != 1
        || node.inputs[0].slot != 0
    {
        return Ok(None);
    }
    let producer = model.node(node.inputs[0].node);
    let Some(conv) = producer.op_as::<TiledConv>() else {
        return Ok(None);
    };
    let (Some([n, c, h, w]), Some(pooled)) = (
        nchw(model, node.inputs[0])?,
        nchw(model, OutletId::new(node.id, 0))?,
    ) else {
        return Ok(None);
    };
    if conv.pool || pooled != [n, c, h / 2, w / 2] {
        return Ok(None);
    }
    let op = TiledConv {
        pool: true,
        ..conv.clone()
    };
    let mut patch = TypedModelPatch::default();
    let taps = producer
        .inputs
        .iter()
        .map(|&i| patch.tap_model(model, i))
        .collect::<TractResult<TVec<_>>>()?;
    let wires = patch.wire_node(&producer.name, op, &taps)?;
    patch.shunt_outside(model, OutletId::new(producer.id, 0), wires[0])?;
    patch.shunt_outside(model, OutletId::new(node.id, 0), wires[1])?;
    Ok(Some(patch))
}

/// The patch turning `node` into a [`TiledDeconv`], if it is an ungrouped f32
/// NCHW transposed convolution whose kernel equals its stride (no padding,
/// dilation or output adjustment), with constant weights and a shape
/// [`tiled_conv::suits`] on `threads` threads.
fn tiled_deconv(
    model: &TypedModel,
    node: &TypedNode,
    threads: usize,
) -> TractResult<Option<TypedModelPatch>> {
    let Some(deconv) = node.op_as::<Deconv>() else {
        return Ok(None);
    };
    let spec = &deconv.pool_spec;
    let (&[kh, kw], [1, 1]) = (spec.kernel_shape.as_slice(), spec.dilations().as_ref()) else {
        return Ok(None);
    };
    let valid = unpadded(&spec.padding);
    if !valid
        || *spec.strides() != [kh, kw]
        || deconv.adjustments.iter().any(|&a| a != 0)
        || deconv.group != 1
        || spec.data_format != DataFormat::NCHW
        || deconv.kernel_format != KernelFormat::OIHW
        || node.inputs.len() != 3
    {
        return Ok(None);
    }
    let Some([n, cin, h, w]) = nchw(model, node.inputs[0])? else {
        return Ok(None);
    };
    let cout = spec.output_channels;
    if !tiled_conv::suits(cout * kh * kw, n, (h, w), threads) {
        return Ok(None);
    }
    let Some((kernel, bias)) = constant_weights(model, node, [cout, cin, kh, kw])? else {
        return Ok(None);
    };
    // [Cout, Cin, kh, kw] -> [Cout, kh, kw, Cin] -> [Cout·kh·kw, Cin].
    let weights = kernel
        .permute_axes(&[0, 2, 3, 1])?
        .into_shape(&[cout * kh * kw, cin])?;
    let op = TiledDeconv {
        input_channels: cin,
        output_channels: cout,
        kernel: (kh, kw),
        weights: Arc::new(weights),
        bias: Arc::new(bias),
    };
    let mut patch = TypedModelPatch::default();
    let x = patch.tap_model(model, node.inputs[0])?;
    let wire = patch.wire_node(&node.name, op, &[x])?[0];
    patch.shunt_outside(model, OutletId::new(node.id, 0), wire)?;
    Ok(Some(patch))
}

#[cfg(test)]
mod tests {
    use tract_core::ops::cnn::PoolSpec;
    use tract_core::ops::math::max;
    use tract_core::runtime::RunOptions;
    use tract_linalg::multithread::Executor;

    use super::*;

    /// A stride-1 f32 NCHW convolution with padding (top, left, bottom, right).
    fn conv(cin: usize, cout: usize, (kh, kw): (usize, usize), [t, l, b, r]: [usize; 4]) -> Conv {
        Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec!(kh, kw),
                padding: PaddingSpec::Explicit(tvec!(t, l), tvec!(b, r)),
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

    /// Values from a fixed pseudo-random sequence in [-0.5, 0.5).
    fn values(len: usize, mut seed: u32) -> Vec<f32> {
        (0..len)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    const N: usize = 2;
    /// Odd, so the pooling drops a last row.
    const H: usize = 65;
    /// So the first conv's tiles are 7 rows, which pooling must round to 8.
    const W: usize = 40;

    /// `relu(conv 3x3 same (concat(a [N, 8, H, W], b [N, 16, H, W])))`, then a
    /// 3x3 `valid` conv, then a 2x3 conv padded unevenly, both with bias; the
    /// 2x2 max-pooling of the first conv's output is a second model output.
    /// With `concat_out`, the concatenation is a third.
    /// (input channels, output channels, kernel, padding) of a test convolution.
    type Layer = (usize, usize, (usize, usize), [usize; 4]);

    /// A convolution per layer (cin, cout, kernel, padding) after `wire`,
    /// with bias (weights from seeds `seed + i`, biases `seed + 10 + i`);
    /// the first followed by a ReLU and a 2x2 max-pooling. Returns the last
    /// convolution's output and the pooling's.
    fn conv_chain(
        model: &mut TypedModel,
        mut wire: OutletId,
        layers: &[Layer],
        seed: u32,
    ) -> TractResult<(OutletId, OutletId)> {
        let mut pooled = wire;
        for (i, &(cin, cout, (kh, kw), padding)) in layers.iter().enumerate() {
            let seed = seed + i as u32;
            let kernel = tract_ndarray::Array4::from_shape_vec(
                (cout, cin, kh, kw),
                values(cout * cin * kh * kw, seed),
            )?;
            let kernel = model.add_const(format!("w{i}"), Tensor::from(kernel))?;
            let bias = tract_ndarray::Array1::from_vec(values(cout, seed + 10));
            let bias = model.add_const(format!("b{i}"), Tensor::from(bias))?;
            let op = conv(cin, cout, (kh, kw), padding);
            wire = model.wire_node(format!("conv{i}"), op, &[wire, kernel, bias])?[0];
            if i == 0 {
                let zero = model.add_const("zero", Tensor::zero::<f32>(&[1, 1, 1, 1])?)?;
                wire = model.wire_node("relu", max(), &[wire, zero])?[0];
                let pool = MaxPool {
                    pool_spec: PoolSpec {
                        data_format: DataFormat::NCHW,
                        kernel_shape: tvec!(2, 2),
                        padding: PaddingSpec::Valid,
                        dilations: None,
                        strides: Some(tvec!(2, 2)),
                        input_channels: cout,
                        output_channels: cout,
                    },
                    with_index_outputs: None,
                };
                pooled = model.wire_node("pool", pool, &[wire])?[0];
            }
        }
        Ok((wire, pooled))
    }

    fn model(concat_out: bool) -> TractResult<TypedModel> {
        let mut model = TypedModel::default();
        let a = model.add_source("a", f32::fact([N, 8, H, W]))?;
        let b = model.add_source("b", f32::fact([N, 16, H, W]))?;
        let concat = model.wire_node("concat", TypedConcat { axis: 1 }, &[a, b])?[0];
        let layers = [
            (24, 16, (3, 3), [1, 1, 1, 1]),
            (16, 24, (3, 3), [0, 0, 0, 0]),
            (24, 8, (2, 3), [1, 0, 0, 2]),
        ];
        let (wire, pooled) = conv_chain(&mut model, concat, &layers, 0)?;
        let mut outputs = vec![wire, pooled];
        if concat_out {
            outputs.push(concat);
        }
        model.select_output_outlets(&outputs)?;
        Ok(model)
    }

    fn op_names(model: &TypedModel) -> Vec<String> {
        model
            .nodes
            .iter()
            .map(|n| n.op.name().to_string())
            .collect()
    }

    fn count(model: &TypedModel, op: &str) -> usize {
        op_names(model).iter().filter(|n| *n == op).count()
    }

    /// The outputs of `model` on fixed inputs, one after the other, with `threads` threads.
    fn run(model: TypedModel, threads: usize) -> TractResult<Vec<f32>> {
        let a = tract_ndarray::Array4::from_shape_vec((N, 8, H, W), values(N * 8 * H * W, 20))?;
        let b = tract_ndarray::Array4::from_shape_vec((N, 16, H, W), values(N * 16 * H * W, 21))?;
        run_on(model, tvec!(Tensor::from(a), Tensor::from(b)), threads)
    }

    /// The outputs of `model` on `inputs`, one after the other, with `threads` threads.
    fn run_on(model: TypedModel, inputs: TVec<Tensor>, threads: usize) -> TractResult<Vec<f32>> {
        let executor = if threads > 1 {
            Executor::multithread(threads)
        } else {
            Executor::SingleThread
        };
        let options = RunOptions {
            executor: Some(executor),
            ..RunOptions::default()
        };
        let plan = model.into_runnable_with_options(&options)?;
        let out = plan.run(inputs.into_iter().map(TValue::from).collect())?;
        let mut values = vec![];
        for output in &out {
            values.extend(output.to_plain_array_view::<f32>()?.iter().copied());
        }
        Ok(values)
    }

    fn max_abs_difference(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    }

    #[test]
    fn tiled_convs_compute_what_tract_computes() -> TractResult<()> {
        let expected = run(model(false)?.into_optimized()?, 1)?;
        // The 2x3 conv's last output column sees only padding: its value is the bias.
        assert!(expected.iter().any(|v| *v != 0.0));
        for (threads, winograd) in [(1, false), (2, false), (1, true), (2, true)] {
            let ours = optimize_with(model(false)?, threads, winograd)?;
            assert_eq!(count(&ours, "TiledConv"), 3, "{:?}", op_names(&ours));
            // The two 3x3 convolutions (one over a concatenation, pooled; one
            // unpadded, to an odd height) by Winograd, the 2x3 one by im2col.
            let by_winograd = ours
                .nodes
                .iter()
                .filter_map(|n| n.op_as::<TiledConv>())
                .filter(|conv| conv.winograd.is_some())
                .count();
            assert_eq!(by_winograd, if winograd { 2 } else { 0 });
            // The concatenation, the ReLU and the max-pooling are folded in.
            assert_eq!(count(&ours, "Concat"), 0, "{:?}", op_names(&ours));
            assert!(
                !op_names(&ours).iter().any(|n| n.contains("Max")),
                "{:?}",
                op_names(&ours)
            );
            let err = max_abs_difference(&run(ours, threads)?, &expected);
            assert!(
                err < 1e-4,
                "{threads} threads, winograd {winograd}: max abs difference {err}"
            );
        }
        Ok(())
    }

    /// f32 FMAs of a whole graph, counted as the session counts them.
    fn fmas(model: &TypedModel) -> TractResult<i64> {
        Ok(super::super::fmas(model) as i64)
    }

    #[test]
    fn the_runtimes_ops_report_the_fmas_tracts_ops_report() -> TractResult<()> {
        // Profiles divide time by these counts: TiledConv and TiledDeconv
        // must count what tract's own Conv and Deconv count for the same graph.
        let convs = fmas(&model(false)?.into_decluttered()?)?;
        assert!(convs > 0);
        assert_eq!(fmas(&optimize(model(false)?, 2)?)?, convs);
        // tract's Deconv reports none: with stride = kernel each output
        // element takes one tap per input channel.
        let plain = deconvs()?.into_decluttered()?;
        let mut expected = 0;
        for node in plain.nodes().iter().filter(|n| n.op_is::<Deconv>()) {
            let channels = plain.node_input_facts(node.id)?[0].shape[1].to_i64()?;
            let output = plain.node_output_facts(node.id)?[0]
                .shape
                .volume()
                .to_i64()?;
            expected += output * channels;
        }
        assert_eq!(
            plain.nodes().iter().filter(|n| n.op_is::<Deconv>()).count(),
            2
        );
        assert_eq!(fmas(&optimize(deconvs()?, 2)?)?, expected);
        Ok(())
    }

    #[test]
    fn a_concatenation_read_elsewhere_is_kept() -> TractResult<()> {
        let ours = optimize(model(true)?, 2)?;
        assert_eq!(count(&ours, "TiledConv"), 3, "{:?}", op_names(&ours));
        assert_eq!(count(&ours, "Concat"), 1, "{:?}", op_names(&ours));
        let expected = run(model(true)?.into_optimized()?, 1)?;
        let err = max_abs_difference(&run(ours, 2)?, &expected);
        assert!(err < 1e-4, "max abs difference {err}");
        Ok(())
    }

    /// `x [N, 24, 64, 64]` -> transposed conv, kernel and stride 2x2 (24 -> 16)
    /// -> transposed conv, kernel and stride 2x3 (16 -> 8), both with bias.
    fn deconvs() -> TractResult<TypedModel> {
        let mut model = TypedModel::default();
        let mut wire = model.add_source("x", f32::fact([N, 24, 64, 64]))?;
        for (i, (cin, cout, (kh, kw))) in
            [(24, 16, (2, 2)), (16, 8, (2, 3))].into_iter().enumerate()
        {
            let kernel = tract_ndarray::Array4::from_shape_vec(
                (cout, cin, kh, kw),
                values(cout * cin * kh * kw, 30 + i as u32),
            )?;
            let kernel = model.add_const(format!("w{i}"), Tensor::from(kernel))?;
            let bias = tract_ndarray::Array1::from_vec(values(cout, 40 + i as u32));
            let bias = model.add_const(format!("b{i}"), Tensor::from(bias))?;
            let op = Deconv {
                pool_spec: PoolSpec {
                    data_format: DataFormat::NCHW,
                    kernel_shape: tvec!(kh, kw),
                    padding: PaddingSpec::Valid,
                    dilations: None,
                    strides: Some(tvec!(kh, kw)),
                    input_channels: cin,
                    output_channels: cout,
                },
                kernel_format: KernelFormat::OIHW,
                adjustments: tvec!(0, 0),
                group: 1,
            };
            wire = model.wire_node(format!("deconv{i}"), op, &[wire, kernel, bias])?[0];
        }
        model.select_output_outlets(&[wire])?;
        Ok(model)
    }

    #[test]
    fn tiled_deconvs_compute_what_tract_computes() -> TractResult<()> {
        let x =
            tract_ndarray::Array4::from_shape_vec((N, 24, 64, 64), values(N * 24 * 64 * 64, 50))?;
        let expected = deconvs()?
            .into_optimized()?
            .into_runnable()?
            .run(tvec!(Tensor::from(x.clone()).into()))?;
        let expected = expected[0].to_plain_array_view::<f32>()?;
        let (shape, expected): (Vec<usize>, Vec<f32>) = (
            expected.shape().to_vec(),
            expected.iter().copied().collect(),
        );
        assert_eq!(shape, [N, 8, 256, 384]);
        for threads in [1, 2] {
            let ours = optimize(deconvs()?, threads)?;
            assert_eq!(count(&ours, "TiledDeconv"), 2, "{:?}", op_names(&ours));
            let options = RunOptions {
                executor: Some(if threads > 1 {
                    Executor::multithread(threads)
                } else {
                    Executor::SingleThread
                }),
                ..RunOptions::default()
            };
            let out = ours
                .into_runnable_with_options(&options)?
                .run(tvec!(Tensor::from(x.clone()).into()))?;
            let out: Vec<f32> = out[0]
                .to_plain_array_view::<f32>()?
                .iter()
                .copied()
                .collect();
            let err = max_abs_difference(&out, &expected);
            assert!(err < 1e-4, "{threads} threads: max abs difference {err}");
        }
        Ok(())
    }

    #[test]
    fn deep_low_resolution_convs_run_by_winograd_on_all_threads() -> TractResult<()> {
        // Too few pixels for one-thread tiles: 40 channels at 9x7, to an odd
        // size, ReLU and pooled, then an unpadded conv.
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, 40, 9, 7]))?;
        let layers = [(40, 24, (3, 3), [1; 4]), (24, 16, (3, 3), [0; 4])];
        for &(cin, ..) in &layers {
            assert!(!tiled_conv::suits(cin * 9, 1, (9, 7), 2));
        }
        let (wire, pooled) = conv_chain(&mut model, x, &layers, 30)?;
        model.select_output_outlets(&[wire, pooled])?;
        let input = || -> TractResult<TVec<Tensor>> {
            let x = tract_ndarray::Array4::from_shape_vec((1, 40, 9, 7), values(40 * 63, 50))?;
            Ok(tvec!(Tensor::from(x)))
        };
        let expected = run_on(model.clone().into_optimized()?, input()?, 1)?;
        for threads in [1, 2] {
            let ours = optimize_with(model.clone(), threads, true)?;
            assert_eq!(count(&ours, "TiledConv"), 2, "{:?}", op_names(&ours));
            let err = max_abs_difference(&run_on(ours, input()?, threads)?, &expected);
            assert!(err < 1e-4, "{threads} threads: max abs difference {err}");
            let im2col = optimize_with(model.clone(), threads, false)?;
            assert_eq!(count(&im2col, "TiledConv"), 0, "{:?}", op_names(&im2col));
        }
        Ok(())
    }

    #[test]
    fn deep_low_resolution_convs_stay_with_tract() {
        // 64->64 at 256x256: 4-row tiles of 1024 pixels, 64 per image.
        assert!(tiled_conv::suits(64 * 9, 1, (256, 256), 2));
        // 512->512 at 32x32: one-row tiles of 32 pixels.
        assert!(!tiled_conv::suits(512 * 9, 1, (32, 32), 2));
        // 16 channels at 16x16: one 256-pixel tile, too few for 2 threads.
        assert!(!tiled_conv::suits(16 * 9, 1, (16, 16), 2));
        assert!(tiled_conv::suits(16 * 9, 4, (16, 16), 1));
    }
}
