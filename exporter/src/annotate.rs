//! Adds this project's metadata to an ONNX file exported elsewhere
//! (segmentation_models_pytorch, MONAI, a plain `torch.onnx.export`), so the
//! runtime reads its preprocessing, head and size multiple from the file like
//! from one of ours. The graph is left as it is.

use std::path::Path;

use prost::Message;
use tract_onnx::pb::ModelProto;
use unet_models::Preprocessing;
use unet_spec::keys::PREPROCESSING as PREPROCESSING_KEY;

use crate::error::{ExportError, Result};
use crate::lower::{keys, Head};
use crate::onnx;

/// What the user declares about a foreign file.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub channel_order: unet_spec::ChannelOrder,
    pub threshold: f32,
    pub class_names: Vec<String>,
    /// What the graph's output already is.
    pub head: Head,
    /// Height and width must be multiples of this.
    pub size_multiple: Option<usize>,
}

/// Reads `path`, checks the annotation against its input and returns the
/// model with the metadata entries set (entries of the same keys replaced).
pub fn annotate(path: &Path, ann: &Annotation) -> Result<ModelProto> {
    let bytes = std::fs::read(path).map_err(|reason| ExportError::Io {
        path: path.to_path_buf(),
        reason,
    })?;
    let not_onnx = |reason: String| ExportError::NotOnnx {
        path: path.to_path_buf(),
        reason,
    };
    let mut model = ModelProto::decode(bytes.as_slice()).map_err(|e| not_onnx(e.to_string()))?;
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| not_onnx("no graph".into()))?;
    let initializers: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    // Older exporters list the weights as inputs too.
    let input = graph
        .input
        .iter()
        .find(|i| !initializers.contains(&i.name.as_str()))
        .ok_or_else(|| not_onnx("the graph has no input".into()))?;
    let output = graph
        .output
        .first()
        .ok_or_else(|| not_onnx("the graph has no output".into()))?;
    let dims = crate::onnx::declared_dims(input);
    if dims.len() != 4 {
        return Err(not_onnx(format!(
            "input `{}` has rank {}, expected NCHW images",
            input.name,
            dims.len()
        )));
    }
    let channels = match dims[1] {
        Some(c) if c > 0 => c as usize,
        _ => {
            return Err(not_onnx(format!(
                "input `{}` has no fixed channel count",
                input.name
            )))
        }
    };
    let pre = Preprocessing {
        mean: ann.mean.clone(),
        std: ann.std.clone(),
        threshold: ann.threshold,
        class_names: ann.class_names.clone(),
        channel_order: ann.channel_order,
    };
    crate::validate::check_preprocessing(&pre, channels)?;
    if ann.size_multiple == Some(0) {
        return Err(ExportError::BadShape {
            shape: "multiple 0".into(),
            reason: "the size multiple must be at least 1".into(),
        });
    }
    let mut entries = vec![
        (PREPROCESSING_KEY.to_string(), pre.to_json()),
        (keys::HEAD.to_string(), ann.head.as_str().to_string()),
        (keys::NORMALIZE_IN_GRAPH.to_string(), "false".to_string()),
        (keys::LAYOUT.to_string(), "NCHW".to_string()),
        (keys::INPUT_NAME.to_string(), input.name.clone()),
        (keys::OUTPUT_NAME.to_string(), output.name.clone()),
        (keys::THRESHOLD.to_string(), ann.threshold.to_string()),
        (
            keys::CLASS_NAMES.to_string(),
            serde_json::to_string(&ann.class_names).unwrap_or_default(),
        ),
        (
            keys::EXPORTER.to_string(),
            format!("unet-export annotate {}", env!("CARGO_PKG_VERSION")),
        ),
    ];
    if let Some(m) = ann.size_multiple {
        entries.push((keys::SIZE_MULTIPLE.to_string(), m.to_string()));
    }
    model
        .metadata_props
        .retain(|e| !entries.iter().any(|(k, _)| *k == e.key));
    model
        .metadata_props
        .extend(entries.iter().map(|(k, v)| onnx::entry(k, v)));
    // Sorted so annotating twice gives the same bytes.
    model.metadata_props.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(model)
}
