//! tract's NNEF archives (`unet-export nnef`) on tract: the model format of
//! the ONNX-free build (feature `nnef` without `tract`: no protobuf, no ONNX
//! op set). An archive holds tract's decluttered graph with symbolic N/H/W
//! and the model's metadata as string properties; each frame size binds the
//! symbols, and the plan is then optimised as an ONNX graph's is.

use std::collections::HashMap;
use std::path::Path;

use tract_core::internal::*;

use super::invalid;
use crate::backend::DeclaredInput;
use crate::error::Result;

/// NNEF's operators, tract_core's, and tract-onnx's extension: ONNX's
/// `Resize` (bilinear up-sampling) has no NNEF equivalent.
fn framework() -> tract_nnef::framework::Nnef {
    use tract_onnx_opl::WithOnnx;
    tract_nnef::nnef().with_onnx()
}

/// The graph, its metadata and what it declares about its input.
pub(super) fn load(
    path: &Path,
    bytes: &[u8],
) -> Result<(TypedModel, HashMap<String, String>, DeclaredInput)> {
    let nnef = framework();
    let model = nnef
        .proto_model_for_read(&mut &*bytes)
        .and_then(|proto| nnef.model_for_proto_model(&proto))
        .map_err(|e| invalid(path, format!("cannot read the NNEF archive: {e:#}")))?;
    if model.outputs.is_empty() {
        return Err(invalid(path, "the graph has no output"));
    }
    let declared = match model.inputs.len() {
        1 => {
            let fact = model.input_fact(0).map_err(|e| invalid(path, e))?;
            DeclaredInput {
                count: 1,
                rank: Some(fact.rank()),
                dims: fact.shape.iter().map(|d| d.to_usize().ok()).collect(),
                not_f32: (fact.datum_type != f32::datum_type())
                    .then(|| format!("{:?}", fact.datum_type).to_lowercase()),
            }
        }
        count => DeclaredInput {
            count,
            rank: None,
            dims: vec![],
            not_f32: None,
        },
    };
    let metadata = model
        .properties
        .iter()
        .filter_map(|(k, v)| {
            let text = v
                .try_as_plain_ram()
                .ok()?
                .to_scalar::<String>()
                .ok()?
                .clone();
            Some((k.clone(), text))
        })
        .collect();
    Ok((model, metadata, declared))
}

/// `model` with its input's symbols bound to `shape` (N, C, H, W). An axis
/// is a constant, or `a · s + b` in one symbol `s` (`unet-export nnef` writes
/// H as `multiple · h`): `s` is solved for, and must come out whole.
pub(super) fn concretize(model: &TypedModel, shape: [usize; 4]) -> TractResult<TypedModel> {
    let fact = model.input_fact(0)?;
    let names = ["batch size", "channels", "height", "width"];
    let mut values = SymbolValues::default();
    for ((dim, &size), name) in fact.shape.iter().zip(&shape).zip(names) {
        let size = size as i64;
        let symbols: Vec<Symbol> = dim.symbols().into_iter().collect();
        match symbols.as_slice() {
            [] if dim.to_i64().ok() == Some(size) => {}
            [] => bail!("the model fixes its input {name} at {dim}"),
            [s] => {
                let at = |v| dim.eval(&SymbolValues::default().with(s, v)).to_i64();
                let (b, a) = (at(0)?, at(1)? - at(0)?);
                if a <= 0 || (size - b) % a != 0 || size < b {
                    bail!(
                        "the model takes an input {name} of {dim} ({s} a whole number), not {size}"
                    );
                }
                values.set(s, (size - b) / a);
            }
            _ => bail!("the input {name} is {dim}: more than one symbol"),
        }
    }
    model.set_symbols(&values.to_dim_map())
}
