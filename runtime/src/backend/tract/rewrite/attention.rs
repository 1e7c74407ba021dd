//! Finds Attention U-Net's gate, as `unet-export` and PyTorch's exports
//! write it, and replaces it by one [`AttentionGate`]:
//! `Mul(x, Sigmoid(Conv1x1_ψ(Relu(Add(Conv1x1_g(g), Conv1x1_x(x))))))`,
//! the product's operands and the addition's either way round.

use std::sync::Arc;

use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::cnn::{Conv, KernelFormat};
use tract_core::ops::nn::DataFormat;
use tract_core::prelude::*;

use super::{feeds_one_node, is_relu, nchw, unpadded};
use crate::backend::tract::attention_gate::AttentionGate;

/// `model` with each attention gate replaced by an [`AttentionGate`]. Before
/// tract's declutter, which turns the 1x1 convolutions into reshaped
/// `EinSum`s and drops a batch of one, while they are still the exporter's
/// `Conv`s.
pub(super) fn fuse_all(mut model: TypedModel) -> TractResult<TypedModel> {
    'search: loop {
        for node in &model.nodes {
            if let Some(patch) = fuse(&model, node)? {
                patch.apply(&mut model)?;
                continue 'search;
            }
        }
        return Ok(model);
    }
}

/// The patch replacing the gate that ends in `node`, its product, if it is one.
pub(super) fn fuse(model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
    if !is_binary(node, "Mul") {
        return Ok(None);
    }
    let [a, b] = [node.inputs[0], node.inputs[1]];
    for (x, attention) in [(a, b), (b, a)] {
        if let Some(patch) = gate(model, node, x, attention)? {
            return Ok(Some(patch));
        }
    }
    Ok(None)
}

fn is_binary(node: &TypedNode, name: &str) -> bool {
    node.inputs.len() == 2
        && node
            .op_as::<TypedBinOp>()
            .is_some_and(|op| op.0.name() == name)
}

/// A 1x1 convolution's input, weights (`[cout, cin]`) and bias (`[cout]`).
struct Pointwise {
    input: OutletId,
    weights: Tensor,
    bias: Tensor,
}

/// `node` as a stride-1, unpadded, ungrouped f32 NCHW 1x1 convolution with
/// constant weights and bias, whose output only the next node reads.
fn pointwise(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Pointwise>> {
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
        || !feeds_one_node(model, OutletId::new(node.id, 0))?
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

/// The node computing `outlet`, if one node alone reads it.
fn sole_producer(model: &TypedModel, outlet: OutletId) -> TractResult<Option<&TypedNode>> {
    Ok(feeds_one_node(model, outlet)?.then(|| model.node(outlet.node)))
}

/// The gate `product = x · attention`, if `attention` is the rest of one.
fn gate(
    model: &TypedModel,
    product: &TypedNode,
    x: OutletId,
    attention: OutletId,
) -> TractResult<Option<TypedModelPatch>> {
    let Some(sigmoid) = sole_producer(model, attention)? else {
        return Ok(None);
    };
    if sigmoid.op.name() != "Sigmoid" || sigmoid.inputs.len() != 1 {
        return Ok(None);
    }
    let psi_node = model.node(sigmoid.inputs[0].node);
    let Some(psi) = pointwise(model, psi_node)? else {
        return Ok(None);
    };
    let Some(relu) = sole_producer(model, psi.input)? else {
        return Ok(None);
    };
    if !is_relu(model, relu)? {
        return Ok(None);
    }
    let Some(add) = sole_producer(model, relu.inputs[0])? else {
        return Ok(None);
    };
    if !is_binary(add, "Add") || psi.weights.shape()[0] != 1 {
        return Ok(None);
    }
    let [a, b] = [add.inputs[0], add.inputs[1]].map(|i| model.node(i.node));
    for (from_g, from_x) in [(a, b), (b, a)] {
        let (Some(w_g), Some(w_x)) = (pointwise(model, from_g)?, pointwise(model, from_x)?) else {
            continue;
        };
        let (Some(g_shape), Some(x_shape), Some(out_shape)) = (
            nchw(model, w_g.input)?,
            nchw(model, x)?,
            nchw(model, OutletId::new(product.id, 0))?,
        ) else {
            continue;
        };
        let inter = w_g.weights.shape()[0];
        if w_x.input != x
            || w_x.weights.shape()[0] != inter
            || psi.weights.shape()[1] != inter
            || out_shape != x_shape
            || (g_shape[0], g_shape[2], g_shape[3]) != (x_shape[0], x_shape[2], x_shape[3])
        {
            continue;
        }
        let [b_g, b_x] = [&w_g.bias, &w_x.bias].map(|b| super::tiled_conv::plain_f32(b));
        let bias: Vec<f32> = b_g?.iter().zip(b_x?).map(|(g, x)| g + x).collect();
        let op = AttentionGate {
            gate_channels: g_shape[1],
            skip_channels: x_shape[1],
            inter_channels: inter,
            w_g: Arc::new(w_g.weights),
            w_x: Arc::new(w_x.weights),
            bias: Arc::new(tensor1(&bias)),
            psi: Arc::new(psi.weights.into_shape(&[inter])?),
            psi_bias: Arc::new(psi.bias),
        };
        let mut patch = TypedModelPatch::default();
        let taps = [
            patch.tap_model(model, w_g.input)?,
            patch.tap_model(model, x)?,
        ];
        let wire = patch.wire_node(&product.name, op, &taps)?[0];
        patch.shunt_outside(model, OutletId::new(product.id, 0), wire)?;
        return Ok(Some(patch));
    }
    Ok(None)
}
