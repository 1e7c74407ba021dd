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

mod attention;
mod pointwise;

/// `model` declutterred and optimised as `into_optimized` does, with the
/// convolutions [`TiledConv`] suits on `threads` threads replaced by it, 3x3
/// ones by Winograd unless `UNET_WINOGRAD=0` (to measure the im2col path).
pub fn optimize(model: TypedModel, threads: usize) -> TractResult<TypedModel> {
    let winograd = std::env::var_os("UNET_WINOGRAD").is_none_or(|v| v != "0");
    optimize_with(model, threads, winograd)
}

/// [`optimize`], with or without Winograd for the 3x3 convolutions it suits.
pub fn optimize_with(model: TypedModel, threads: usize, winograd: bool) -> TractResult<TypedModel> {
    let model = pointwise::fuse_all(attention::fuse_all(model)?)?;
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
/// max-pooling of a `TiledConv`'s output becomes its second output, and an
/// attention gate one [`AttentionGate`](super::attention_gate::AttentionGate).
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
    if !super::tiled_deconv::suits(cout * kh * kw, n, (h, w), threads) {
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
mod tests;
