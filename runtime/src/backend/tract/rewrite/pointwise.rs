//! Finds the 1x1 convolutions, as the exporters write them, and replaces
//! those the attention gates left (the output head) by a [`PointwiseConv`].

use std::sync::Arc;

use tract_core::ops::cnn::{Conv, KernelFormat};
use tract_core::ops::nn::DataFormat;
use tract_core::prelude::*;

use super::{nchw, unpadded};
use crate::backend::tract::pointwise_conv::PointwiseConv;

/// `model` with each 1x1 convolution replaced by a [`PointwiseConv`]. Before
/// tract's declutter, which turns them into reshaped `EinSum`s, and after
/// the attention gates took theirs.
pub(super) fn fuse_all(mut model: TypedModel) -> TractResult<TypedModel> {
    'search: loop {
        for node in &model.nodes {
            let Some(conv) = pointwise(&model, node)? else {
                continue;
            };
            let [cout, cin] = [0, 1].map(|i| conv.weights.shape()[i]);
            let op = PointwiseConv {
                input_channels: cin,
                output_channels: cout,
                weights: Arc::new(conv.weights),
                bias: Arc::new(conv.bias),
            };
            let mut patch = TypedModelPatch::default();
            let x = patch.tap_model(&model, conv.input)?;
            let wire = patch.wire_node(&node.name, op, &[x])?[0];
            patch.shunt_outside(&model, OutletId::new(node.id, 0), wire)?;
            patch.apply(&mut model)?;
            continue 'search;
        }
        return Ok(model);
    }
}

/// A 1x1 convolution's input, weights (`[cout, cin]`) and bias (`[cout]`).
pub(super) struct Pointwise {
    pub input: OutletId,
    pub weights: Tensor,
    pub bias: Tensor,
}

/// `node` as a stride-1, unpadded, ungrouped f32 NCHW 1x1 convolution with
/// constant weights and bias.
pub(super) fn pointwise(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Pointwise>> {
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    let spec = &conv.pool_spec;
    if spec.kernel_shape.as_slice() != [1, 1]
        || *spec.strides() != [1, 1]
        || *spec.dilations() != [1, 1]
        || !unpadded(&spec.padding)
        || conv.q_params.is_some()
        || conv.group != 1
        || spec.data_format != DataFormat::NCHW
        || conv.kernel_fmt != KernelFormat::OIHW
        || node.inputs.len() != 3
    {
        return Ok(None);
    }
    let Some([_, cin, _, _]) = nchw(model, node.inputs[0])? else {
        return Ok(None);
    };
    let cout = spec.output_channels;
    let (Some(kernel), Some(bias)) = (
        constant(model, node.inputs[1])?,
        constant(model, node.inputs[2])?,
    ) else {
        return Ok(None);
    };
    if kernel.shape() != [cout, cin, 1, 1] || !(bias.len() == cout || bias.len() == 1) {
        return Ok(None);
    }
    let bias_len = bias.len();
    Ok(Some(Pointwise {
        input: node.inputs[0],
        weights: kernel.into_shape(&[cout, cin])?,
        bias: bias.into_shape(&[bias_len])?.broadcast_to_shape(&[cout])?,
    }))
}

/// The f32 value of `outlet`, a constant or a `Cast` of one (as the ONNX
/// importer writes a convolution's bias; declutter has not folded it yet).
fn constant(model: &TypedModel, outlet: OutletId) -> TractResult<Option<Tensor>> {
    let fact = model.outlet_fact(outlet)?;
    let value = if let Some(konst) = &fact.konst {
        konst.clone().into_tensor()
    } else {
        let node = model.node(outlet.node);
        let Some(cast) = node.op_as::<tract_core::ops::cast::Cast>() else {
            return Ok(None);
        };
        let Some(konst) = &model.outlet_fact(node.inputs[0])?.konst else {
            return Ok(None);
        };
        konst.cast_to_dt(cast.to)?.into_owned()
    };
    Ok((value.datum_type() == f32::datum_type()).then_some(value))
}
