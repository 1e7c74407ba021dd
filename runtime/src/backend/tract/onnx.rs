//! ONNX files on tract: tract-onnx's parser, the operator-set ceiling, and
//! the graph typed for one frame size.

use std::collections::HashMap;
use std::path::Path;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;

use super::invalid;
use crate::backend::DeclaredInput;
use crate::error::Result;

/// The newest ONNX operator set ONNX Runtime 1.31 (the version CI pins)
/// loads; it refuses later ones as unreleased. tract reads ops by name and
/// would run a file stamped with any number, whose ops may mean something
/// else there; the same ceiling keeps the two back ends agreeing on which
/// files load.
const NEWEST_OPSET: i64 = 26;

/// The graph, its `metadata_props` and what it declares about its input;
/// `dir` is where external tensor data is looked up.
pub(super) fn load(
    path: &Path,
    bytes: &[u8],
    dir: Option<&Path>,
) -> Result<(InferenceModel, HashMap<String, String>, DeclaredInput)> {
    // PyTorch's dynamo exporter writes value_info tract cannot reconcile;
    // tract infers those shapes itself anyway.
    let onnx = tract_onnx::onnx().with_ignore_value_info(true);
    let proto = onnx
        .proto_model_for_read(&mut &*bytes)
        .map_err(|e| invalid(path, format!("cannot decode the protobuf: {e:#}")))?;
    let metadata: HashMap<String, String> = proto
        .metadata_props
        .iter()
        .map(|p| (p.key.clone(), p.value.clone()))
        .collect();
    check_opset(path, &proto)?;
    check_outputs(path, &proto)?;
    let dir = dir.and_then(|d| d.to_str());
    let parsed = onnx
        .parse(&proto, dir)
        .map_err(|e| invalid(path, format!("{e:#}")))?;
    if !parsed.unresolved_inputs.is_empty() {
        return Err(invalid(
            path,
            format!("unresolved inputs {:?}", parsed.unresolved_inputs),
        ));
    }
    let model = parsed.model;
    let inputs = model.input_outlets().map_err(|e| invalid(path, e))?.len();
    if model
        .output_outlets()
        .map_err(|e| invalid(path, e))?
        .is_empty()
    {
        return Err(invalid(path, "the graph has no output"));
    }
    let declared = match inputs {
        1 => declared_input(model.input_fact(0).map_err(|e| invalid(path, e))?),
        count => DeclaredInput {
            count,
            rank: None,
            dims: vec![],
            not_f32: None,
        },
    };
    Ok((model, metadata, declared))
}

/// The graph typed for one input shape.
pub(super) fn typed(model: &InferenceModel, shape: [usize; 4]) -> TractResult<TypedModel> {
    let fact = InferenceFact::dt_shape(f32::datum_type(), shape);
    model.clone().with_input_fact(0, fact)?.into_typed()
}

/// Refuses an operator set newer than [`NEWEST_OPSET`], or none below 1.
fn check_opset(path: &Path, proto: &tract_onnx::pb::ModelProto) -> Result<()> {
    let default_domain = proto
        .opset_import
        .iter()
        .find(|i| i.domain.is_empty() || i.domain == "ai.onnx");
    match default_domain.map(|i| i.version) {
        Some(v) if !(1..=NEWEST_OPSET).contains(&v) => Err(invalid(
            path,
            format!("ONNX operator set {v} is not supported (1 to {NEWEST_OPSET})"),
        )),
        _ => Ok(()),
    }
}

/// Refuses a graph output that no node, input or initializer produces
/// (tract-onnx 0.23 panics on one: "no entry found for key").
fn check_outputs(path: &Path, proto: &tract_onnx::pb::ModelProto) -> Result<()> {
    let Some(graph) = &proto.graph else {
        return Ok(());
    };
    let produced: std::collections::HashSet<&str> = graph
        .input
        .iter()
        .map(|i| i.name.as_str())
        .chain(graph.initializer.iter().map(|t| t.name.as_str()))
        .chain(
            graph
                .node
                .iter()
                .flat_map(|n| n.output.iter().map(String::as_str)),
        )
        .collect();
    match graph
        .output
        .iter()
        .find(|o| !produced.contains(o.name.as_str()))
    {
        Some(o) => Err(invalid(
            path,
            format!(
                "graph output `{}` is produced by no node, input or initializer",
                o.name
            ),
        )),
        None => Ok(()),
    }
}

/// The input's rank, dimensions and element type as the file declares them.
fn declared_input(fact: &InferenceFact) -> DeclaredInput {
    let dims: Vec<Option<usize>> = fact
        .shape
        .dims()
        .map(|d| d.concretize().and_then(|d| d.to_usize().ok()))
        .collect();
    let rank = fact
        .shape
        .rank()
        .concretize()
        .and_then(|r| usize::try_from(r).ok());
    let not_f32 = fact
        .datum_type
        .concretize()
        .filter(|&dt| dt != f32::datum_type())
        .map(|dt| format!("{dt:?}").to_lowercase());
    DeclaredInput {
        count: 1,
        rank,
        dims,
        not_f32,
    }
}
