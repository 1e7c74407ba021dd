//! Reads PyTorch checkpoints (`torch.save`, the zip format of PyTorch >= 1.6)
//! with candle's pickle reader, into named tensors and metadata that the
//! safetensors loaders of `unet-models` then validate like any weights file.
//!
//! Accepted layouts:
//! - a bare `state_dict` (`torch.save(model.state_dict(), p)`), as
//!   milesial/Pytorch-UNet's `train.py` writes it, with its `mask_values`
//!   entry (the pixel values of each class in the training masks);
//! - a dict holding the `state_dict` under `state_dict` or `model`
//!   (`torch.save({"epoch": e, "state_dict": sd, ...}, p)`), other entries ignored;
//! - names prefixed `module.` by `nn.DataParallel`/`DistributedDataParallel`.

use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::Path;

use unet_models::candle_core::pickle::{Object, PthTensors, Stack};
use unet_models::candle_core::{DType, Tensor};

use crate::error::{ExportError, Result};

/// Metadata key of milesial's `mask_values` (JSON), kept from the checkpoint.
pub const MASK_VALUES_KEY: &str = "unet.milesial.mask_values";

/// Keys under which a training checkpoint holds its `state_dict`.
const STATE_DICT_KEYS: [&str; 2] = ["state_dict", "model"];

/// The tensors and metadata of a checkpoint.
pub struct Checkpoint {
    /// `state_dict` names (without `module.`) and tensors.
    pub tensors: Vec<(String, Tensor)>,
    /// Entries to keep in the model file's metadata (`mask_values`).
    pub metadata: HashMap<String, String>,
    /// Where the `state_dict` was found, for messages.
    pub layout: String,
}

impl Checkpoint {
    /// The tensors as a safetensors file in memory, for the validating loaders.
    pub fn safetensors_bytes(&self) -> Result<Vec<u8>> {
        safetensors::serialize(self.tensors.iter().map(|(n, t)| (n.as_str(), t)), None).map_err(
            |e| ExportError::BadCheckpoint {
                path: "checkpoint".into(),
                reason: e.to_string(),
            },
        )
    }
}

/// True when `path` starts like a zip archive, the container `torch.save` writes.
pub fn is_pth(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"PK\x03\x04"
}

/// Reads a PyTorch checkpoint. Errors name the file and what was expected.
pub fn read_pth(path: &Path) -> Result<Checkpoint> {
    let bad = |reason: String| ExportError::BadCheckpoint {
        path: path.to_path_buf(),
        reason,
    };
    let root = read_pickle(path).map_err(|e| bad(format!("not a PyTorch checkpoint: {e}")))?;
    let Object::Dict(entries) = root else {
        return Err(bad(
            "holds no dict: expected a state_dict, or a dict with one under `state_dict` or `model`"
                .into(),
        ));
    };
    // A training checkpoint: the state_dict one level down.
    let wrapped = STATE_DICT_KEYS.iter().find_map(|&key| {
        entries.iter().find_map(|(k, v)| match (k, v) {
            (Object::Unicode(k), Object::Dict(_)) if k == key => Some(key),
            _ => None,
        })
    });
    let mut metadata = HashMap::new();
    // milesial's train.py puts it beside the weights; a wrapper may hold it too.
    let mask_values = find_entry(&entries, "mask_values").or_else(|| {
        match wrapped.and_then(|w| find_entry(&entries, w)) {
            Some(Object::Dict(inner)) => find_entry(inner, "mask_values"),
            _ => None,
        }
    });
    if let Some(values) = mask_values {
        metadata.insert(MASK_VALUES_KEY.to_string(), to_json(values).to_string());
    }

    let pth =
        PthTensors::new(path, wrapped).map_err(|e| bad(format!("reading its tensors: {e}")))?;
    let mut names: Vec<&String> = pth.tensor_infos().keys().collect();
    names.sort_unstable();
    if names.is_empty() {
        return Err(bad(format!(
            "no tensors found{}: expected a state_dict, or a dict with one under `state_dict` or `model`",
            wrapped.map(|w| format!(" under `{w}`")).unwrap_or_default()
        )));
    }
    let prefixed = names.iter().all(|n| n.starts_with("module."));
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let tensor = pth
            .get(name)
            .and_then(|t| match t {
                // Half or double precision weights: the model computes in f32.
                Some(t) if t.dtype().is_float() && t.dtype() != DType::F32 => {
                    t.to_dtype(DType::F32).map(Some)
                }
                t => Ok(t),
            })
            .map_err(|e| bad(format!("tensor `{name}`: {e}")))?
            .ok_or_else(|| bad(format!("tensor `{name}` vanished while reading")))?;
        let name = if prefixed {
            name.strip_prefix("module.").unwrap_or(name)
        } else {
            name
        };
        tensors.push((name.to_string(), tensor));
    }
    let mut layout = match wrapped {
        Some(key) => format!("state_dict under `{key}`"),
        None => "bare state_dict".to_string(),
    };
    if prefixed {
        layout.push_str(", `module.` prefixes removed");
    }
    Ok(Checkpoint {
        tensors,
        metadata,
        layout,
    })
}

/// The unpickled object of the archive's `data.pkl`.
fn read_pickle(path: &Path) -> std::result::Result<Object, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(|e| e.to_string())?;
    let name = zip
        .file_names()
        .filter_map(|n| n.ok())
        .find(|n| n.ends_with("data.pkl"))
        .map(|n| n.into_owned())
        .ok_or("no data.pkl in the archive")?;
    let reader = zip.by_name(&name).map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(reader);
    let mut stack = Stack::empty();
    stack.read_loop(&mut reader).map_err(|e| e.to_string())?;
    stack.finalize().map_err(|e| e.to_string())
}

fn find_entry<'a>(entries: &'a [(Object, Object)], key: &str) -> Option<&'a Object> {
    entries.iter().find_map(|(k, v)| match k {
        Object::Unicode(k) if k == key => Some(v),
        _ => None,
    })
}

/// Plain pickled values (numbers, strings, lists, tuples) as JSON; anything
/// else as its debug text.
fn to_json(o: &Object) -> serde_json::Value {
    use serde_json::Value;
    match o {
        Object::Int(i) => Value::from(*i),
        Object::Long(i) => Value::from(*i),
        Object::Float(f) => Value::from(*f),
        Object::Bool(b) => Value::from(*b),
        Object::Unicode(s) => Value::from(s.as_str()),
        Object::None => Value::Null,
        Object::List(v) | Object::Tuple(v) => Value::Array(v.iter().map(to_json).collect()),
        other => Value::from(format!("{other:?}")),
    }
}
