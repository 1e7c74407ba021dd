//! Finds Attention U-Net's gate, as `unet-export` and PyTorch's exports
//! write it, and replaces it by one [`AttentionGate`]:
//! `Mul(x, Sigmoid(Conv1x1_ψ(Relu(Add(Conv1x1_g(g), Conv1x1_x(x))))))`,
//! the product's operands and the addition's either way round.

use std::sync::Arc;

use tract_core::ops::binary::TypedBinOp;
use tract_core::prelude::*;

use super::pointwise::{pointwise, Pointwise};
use super::{feeds_one_node, is_relu, nchw};
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

/// [`pointwise`], if only the next node reads the convolution's output.
fn pointwise_feeding_one(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Pointwise>> {
    if !feeds_one_node(model, OutletId::new(node.id, 0))? {
        return Ok(None);
    }
    pointwise(model, node)
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
    let Some(psi) = pointwise_feeding_one(model, psi_node)? else {
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
        let (Some(w_g), Some(w_x)) = (
            pointwise_feeding_one(model, from_g)?,
            pointwise_feeding_one(model, from_x)?,
        ) else {
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
