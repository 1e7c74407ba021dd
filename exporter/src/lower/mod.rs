//! Lowers the architecture description ([`unet_models::Graph`]) and a model's
//! weights to an ONNX `ModelProto`.
//!
//! The lowering ([`ops`]) walks `graph.nodes` once and maps every `Op` to ONNX nodes;
//! there is no second layer list. Tensor names are the graph's node names and
//! initializer names are the PyTorch `state_dict` names, so Netron shows
//! `encoder.0.conv.0` with `encoder.0.conv.0.weight`.

use std::collections::{BTreeMap, HashMap};

use tract_onnx::pb::{GraphProto, ModelProto, OperatorSetIdProto};
use unet_models::arch::Graph;
use unet_models::candle_core::Tensor;
use unet_models::config::Padding;
use unet_models::{ModelError, Preprocessing, UNet};

use crate::error::{ExportError, Result};
use crate::onnx::{self, Dim, Elem, MAX_OPSET, MIN_OPSET};

mod ops;
use ops::Lowering;

/// The metadata keys, defined once in the spec crate.
pub use unet_spec::keys;

/// Name of the graph input.
pub const INPUT_NAME: &str = "input";

/// What the graph's output is: the spec's head.
pub use unet_spec::Head;

/// The input shape of the exported graph; `None` leaves an axis symbolic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputShape {
    pub batch: Option<usize>,
    /// `(height, width)`.
    pub spatial: Option<(usize, usize)>,
}

impl InputShape {
    pub const DYNAMIC: InputShape = InputShape {
        batch: None,
        spatial: None,
    };
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExportOptions {
    /// `ai.onnx` opset, [`MIN_OPSET`]..=[`MAX_OPSET`].
    pub opset: i64,
    pub input: InputShape,
    /// Fold every BatchNorm into the convolution before it.
    pub fold_bn: bool,
    /// f16 weights and activations; the graph input and output stay f32.
    pub fp16: bool,
    pub head: Head,
    /// Subtract the mean and divide by the std inside the graph, so the input
    /// is pixels scaled to [0, 1].
    pub normalize_in_graph: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            opset: 17,
            input: InputShape::DYNAMIC,
            fold_bn: false,
            fp16: false,
            head: Head::Logits,
            normalize_in_graph: false,
        }
    }
}

/// Lowers `model` to a `ModelProto`. `metadata` is the source file's metadata:
/// `unet.config` and `unet.preprocessing` are copied verbatim when present (the
/// model's own config and `preprocessing` otherwise), every other entry too.
pub fn export(
    model: &UNet,
    preprocessing: &Preprocessing,
    metadata: &HashMap<String, String>,
    opts: &ExportOptions,
) -> Result<ModelProto> {
    if !(MIN_OPSET..=MAX_OPSET).contains(&opts.opset) {
        return Err(ExportError::UnsupportedOpset {
            opset: opts.opset,
            min: MIN_OPSET,
            max: MAX_OPSET,
        });
    }
    let graph = model.graph();
    let cfg = &graph.config;
    if let Some((h, w)) = opts.input.spatial {
        graph.spatial_sizes(h, w).map_err(ModelError::from)?;
    }
    if opts.input.batch == Some(0) {
        return Err(ExportError::BadShape {
            shape: "batch 0".into(),
            reason: "the batch size must be at least 1".into(),
        });
    }
    // The runtime refuses a file whose preprocessing it cannot apply: refuse it here first.
    crate::validate::check_preprocessing(preprocessing, cfg.in_channels)?;

    let weights: HashMap<String, Tensor> = model.state_dict().into_iter().collect();
    let mut lw = Lowering {
        graph,
        weights: &weights,
        opts,
        act: if opts.fp16 { Elem::F16 } else { Elem::F32 },
        nodes: Vec::new(),
        initializers: Vec::new(),
        value_info: Vec::new(),
        shared: Vec::new(),
        spatial: spatial_dims(graph, opts.input.spatial),
    };
    let (inputs, outputs) = lw.lower(preprocessing)?;

    let graph_proto = GraphProto {
        node: lw.nodes,
        name: graph_name(graph),
        initializer: lw.initializers,
        doc_string: doc_string(graph, opts),
        input: inputs,
        output: outputs,
        value_info: lw.value_info,
        ..Default::default()
    };
    Ok(ModelProto {
        ir_version: onnx::ir_version(opts.opset),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: opts.opset,
        }],
        producer_name: "unet-export".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        domain: "unet-edge".into(),
        model_version: 1,
        doc_string: doc_string(graph, opts),
        graph: Some(graph_proto),
        metadata_props: metadata_props(model, preprocessing, metadata, opts),
        ..Default::default()
    })
}

fn graph_name(graph: &Graph) -> String {
    if graph.config.attention {
        "attention_unet".into()
    } else {
        "unet".into()
    }
}

fn doc_string(graph: &Graph, opts: &ExportOptions) -> String {
    let cfg = &graph.config;
    format!(
        "{} (base width {}, depth {}, {} padding, {} upsampling{}{}), {} -> {} channels, NCHW. \
         Input `{INPUT_NAME}`: {}. Output `{}`: {}. Written by unet-export {} from the \
         unet-models architecture description.",
        if cfg.attention {
            "Attention U-Net"
        } else {
            "U-Net"
        },
        cfg.base_width,
        cfg.depth,
        match cfg.padding {
            Padding::Same => "same",
            Padding::Valid => "valid",
        },
        match cfg.upsampling {
            unet_models::Upsampling::Transposed => "transposed-conv",
            unet_models::Upsampling::Bilinear => "bilinear",
        },
        if cfg.batch_norm {
            if opts.fold_bn {
                ", BatchNorm folded into convolutions"
            } else {
                ", BatchNorm"
            }
        } else {
            ""
        },
        if opts.fp16 { ", f16 inside" } else { "" },
        cfg.in_channels,
        cfg.out_channels,
        if opts.normalize_in_graph {
            "pixels scaled to [0, 1]; mean/std normalisation happens in the graph"
        } else {
            "pixels scaled to [0, 1], then (x - mean) / std from `unet.preprocessing`"
        },
        opts.head.output_name(),
        match opts.head {
            Head::Logits => "logits",
            Head::Sigmoid => "per-class sigmoid probabilities",
            Head::Softmax => "softmax probabilities over the class axis",
            Head::Argmax => "class index per pixel, as f32 (ArgMax's int64 cast)",
        },
        env!("CARGO_PKG_VERSION"),
    )
}

fn metadata_props(
    model: &UNet,
    pre: &Preprocessing,
    source: &HashMap<String, String>,
    opts: &ExportOptions,
) -> Vec<tract_onnx::pb::StringStringEntryProto> {
    let cfg = model.config();
    // Sorted so the same export is byte-for-byte the same file.
    let mut m: BTreeMap<String, String> =
        source.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    m.entry(keys::CONFIG.into())
        .or_insert_with(|| cfg.to_json());
    m.entry(keys::PREPROCESSING.into())
        .or_insert_with(|| pre.to_json());
    let bool_str = |b: bool| if b { "true" } else { "false" }.to_string();
    let class_names = serde_json::to_string(&pre.class_names).unwrap_or_default();
    let entries = [
        (keys::HEAD, opts.head.as_str().to_string()),
        (keys::NORMALIZE_IN_GRAPH, bool_str(opts.normalize_in_graph)),
        (keys::FP16, bool_str(opts.fp16)),
        (keys::FOLD_BN, bool_str(opts.fold_bn && cfg.batch_norm)),
        (keys::CLASS_NAMES, class_names),
        (keys::THRESHOLD, pre.threshold.to_string()),
        (keys::SIZE_MULTIPLE, cfg.size_multiple().to_string()),
        (keys::LAYOUT, "NCHW".into()),
        (keys::INPUT_NAME, INPUT_NAME.into()),
        (keys::OUTPUT_NAME, opts.head.output_name().into()),
        (keys::NUM_PARAMETERS, model.num_parameters().to_string()),
        (
            keys::EXPORTER,
            format!("unet-export {}", env!("CARGO_PKG_VERSION")),
        ),
    ];
    for (k, v) in entries {
        m.insert(k.into(), v);
    }
    m.iter().map(|(k, v)| onnx::entry(k, v)).collect()
}

/// Fixed `(height, width)` of every node's output, or unknown when the input
/// size is symbolic. Intermediate symbolic sizes are not named: tract unifies
/// `value_info` with the shapes it infers for a concrete input, and a named
/// dimension (`batch`, `height/2`) then conflicts with the concrete value.
fn spatial_dims(graph: &Graph, fixed: Option<(usize, usize)>) -> Vec<(Dim, Dim)> {
    if let Some((h, w)) = fixed {
        if let Ok(sizes) = graph.spatial_sizes(h, w) {
            return sizes
                .into_iter()
                .map(|(h, w)| (Dim::Fixed(h), Dim::Fixed(w)))
                .collect();
        }
    }
    vec![(Dim::Unknown, Dim::Unknown); graph.nodes.len()]
}

/// Serialises a model to protobuf bytes.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    prost::Message::encode_to_vec(model)
}
