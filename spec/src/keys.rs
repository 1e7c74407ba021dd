//! The metadata keys a model file carries, in safetensors metadata and in ONNX
//! `metadata_props` alike. Defined here once; every crate reads and writes
//! these names.

/// [`crate::UNetConfig`] as JSON.
pub const CONFIG: &str = "unet.config";
/// [`crate::Preprocessing`] as JSON.
pub const PREPROCESSING: &str = "unet.preprocessing";
/// [`crate::InputGeometry`] as JSON: the size and resize the model was trained at.
pub const INPUT_GEOMETRY: &str = "unet.input_geometry";
/// [`crate::Provenance`] as JSON: who trained it, on what, when.
pub const PROVENANCE: &str = "unet.provenance";
/// Which program wrote the safetensors file.
pub const PRODUCER: &str = "unet.producer";
/// Where imported weights came from (e.g. milesial/Pytorch-UNet).
pub const SOURCE: &str = "unet.source";
/// Epochs behind the weights, and the validation Dice they reached.
pub const TRAINED_EPOCHS: &str = "unet.trained_epochs";
pub const VAL_DICE: &str = "unet.val_dice";

/// What the graph's output already is ([`crate::Head`]).
pub const HEAD: &str = "unet.head";
/// `"true"` when the graph itself applies `(x - mean) / std`.
pub const NORMALIZE_IN_GRAPH: &str = "unet.normalize_in_graph";
pub const FP16: &str = "unet.fp16";
pub const FOLD_BN: &str = "unet.fold_bn";
pub const CLASS_NAMES: &str = "unet.class_names";
pub const THRESHOLD: &str = "unet.threshold";
pub const SIZE_MULTIPLE: &str = "unet.size_multiple";
pub const LAYOUT: &str = "unet.layout";
pub const INPUT_NAME: &str = "unet.input_name";
pub const OUTPUT_NAME: &str = "unet.output_name";
pub const NUM_PARAMETERS: &str = "unet.num_parameters";
pub const EXPORTER: &str = "unet.exporter";

/// Ultralytics' names for the same facts, written too so their readers find them.
pub const IMGSZ: &str = "imgsz";
pub const NAMES: &str = "names";
