//! `unet-export nnef`: an exported ONNX file re-encoded as tract's NNEF
//! archive (a tar file), which the runtime built with only its `nnef`
//! feature loads: no protobuf decoder, no ONNX op set, the smallest build
//! for firmware.
//!
//! The archive holds tract's own reading of the ONNX file, decluttered and
//! with symbolic N/H/W kept: nothing CPU-specific is serialised (the device
//! plans for its own CPU). The ONNX `metadata_props` become the archive's
//! properties under their own keys (`unet.config`, `unet.input_geometry`, ...),
//! so the runtime reads the same contract from either file.

use std::io::Write;
use std::path::Path;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use crate::error::{ExportError, Result};

/// What tract-onnx names an ONNX `metadata_props` entry among a model's properties.
const ONNX_METADATA_PREFIX: &str = "onnx.metadata_props.";

/// tract's decluttered graph of the ONNX file at `onnx`, with the file's
/// metadata as properties.
///
/// A symbolic height or width is typed as `multiple · h` (`multiple · w`),
/// the model's size multiple: a decoder's up-sampled `2 · (H / 8)` and its
/// skip connection's `H / 4` are then provably the same size, which tract
/// cannot show for an arbitrary `H`. `size` (width, height) fixes them
/// instead: a device with one camera resolution, or a graph whose sizes
/// tract cannot express in symbols (valid convolutions with cropping).
pub fn from_onnx(onnx: &Path, size: Option<(usize, usize)>) -> Result<TypedModel> {
    let bytes = std::fs::read(onnx).map_err(|reason| ExportError::Io {
        path: onnx.to_path_buf(),
        reason,
    })?;
    let not_onnx = |e: TractError| ExportError::NotOnnx {
        path: onnx.to_path_buf(),
        reason: format!("{e:#}"),
    };
    // As the runtime reads it: tract infers the shapes PyTorch's value_info would give.
    let onnx_reader = tract_onnx::onnx().with_ignore_value_info(true);
    let proto = onnx_reader
        .proto_model_for_read(&mut &*bytes)
        .map_err(not_onnx)?;
    let multiple = proto
        .metadata_props
        .iter()
        .find(|p| p.key == crate::lower::keys::SIZE_MULTIPLE)
        .and_then(|p| p.value.parse::<i64>().ok())
        .filter(|&m| m > 0)
        .unwrap_or(crate::check::FOREIGN_SIZE_MULTIPLE as i64);
    let mut model = onnx_reader
        .model_for_proto_model(&proto)
        .map_err(not_onnx)?;
    let input = model.input_fact(0).map_err(not_onnx)?.clone();
    let dims: Vec<TDim> = (0..4)
        .map(|axis| {
            let declared = input.shape.dims().nth(axis).and_then(|d| d.concretize());
            match (declared, size) {
                (Some(TDim::Val(v)), _) if v > 0 => TDim::Val(v),
                (_, Some((_, height))) if axis == 2 => TDim::Val(height as i64),
                (_, Some((width, _))) if axis == 3 => TDim::Val(width as i64),
                _ => match axis {
                    0 => model.symbols.sym("n").to_dim(),
                    1 => TDim::Val(0),
                    2 => TDim::Val(multiple) * model.symbols.sym("h").to_dim(),
                    _ => TDim::Val(multiple) * model.symbols.sym("w").to_dim(),
                },
            }
        })
        .collect();
    if let Some((width, height)) = size {
        if dims[2] != TDim::Val(height as i64) || dims[3] != TDim::Val(width as i64) {
            return Err(ExportError::NotOnnx {
                path: onnx.to_path_buf(),
                reason: format!(
                    "the file fixes its input at {}x{} (width x height), not {width}x{height}",
                    dims[3], dims[2]
                ),
            });
        }
    }
    if dims[1] == TDim::Val(0) {
        return Err(ExportError::NotOnnx {
            path: onnx.to_path_buf(),
            reason: "the input's channel count is not declared".into(),
        });
    }
    let fact = InferenceFact::dt_shape(f32::datum_type(), dims);
    model = model.with_input_fact(0, fact).map_err(not_onnx)?;
    let mut model = model
        .into_typed()
        .and_then(|m| m.into_decluttered())
        .map_err(not_onnx)?;
    model.properties = std::mem::take(&mut model.properties)
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(ONNX_METADATA_PREFIX)?.to_string(), v)))
        .collect();
    Ok(model)
}

/// NNEF's operators and tract_core's, with tract-onnx's extension for
/// ONNX's `Resize` (the same registry the runtime reads with).
fn framework() -> tract_nnef::framework::Nnef {
    use tract_onnx::WithOnnx;
    tract_nnef::nnef().with_onnx()
}

/// Writes `model` as an NNEF tar archive to `path`, byte for byte the same
/// for the same model (fixed timestamps), flushed (not yet synced).
pub fn write(model: &TypedModel, file: &mut std::fs::File, path: &Path) -> Result<()> {
    let failed = |reason: String| ExportError::Backend {
        backend: "tract-nnef".into(),
        reason: format!("{}: {reason}", path.display()),
    };
    let w = std::io::BufWriter::new(file);
    framework()
        .write_to_tar_with_config(model, w, false, true)
        .map_err(|e| failed(format!("cannot write the archive: {e:#}")))?
        .flush()
        .map_err(|e| failed(e.to_string()))
}
