//! Training checkpoints: one safetensors file holding the model's `state_dict`
//! (PyTorch names, config and preprocessing metadata as `unet_models::io`
//! writes them), the optimiser state (`optimizer.*` tensors) and the training
//! state (epoch, step, RNG position, history) as JSON metadata. Written with
//! temp file + rename, so a kill never leaves a broken checkpoint.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use unet_models::candle_core::{DType, Device, Tensor};
use unet_models::config::{CONFIG_KEY, PREPROCESSING_KEY};
use unet_models::io::{ConfigSource, LoadedModel};
use unet_models::{Preprocessing, UNet};

use crate::amp::LossScaler;
use crate::error::{Result, TrainError};
use crate::report::EpochRecord;

/// Metadata key of the [`TrainState`] JSON.
pub const TRAIN_STATE_KEY: &str = "unet.train_state";
const OPTIMIZER_PREFIX: &str = "optimizer.";

/// Where a run stands. All randomness derives from `seed` and these counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub seed: u64,
    /// Next epoch to run (0-based).
    pub epoch: usize,
    /// Next batch of that epoch.
    pub batch: usize,
    /// Optimiser steps taken.
    pub global_step: u64,
    /// The model's dropout counter (keys its dropout masks).
    pub dropout_step: u64,
    /// Sum and count of the training losses of the unfinished epoch.
    pub epoch_loss_sum: f64,
    pub epoch_loss_count: u64,
    /// -inf until an epoch finishes; JSON has no -inf, so it is stored as null.
    #[serde(deserialize_with = "null_as_neg_infinity")]
    pub best_dice: f64,
    pub history: Vec<EpochRecord>,
    /// The run's options (JSON), to warn when a resume changes them.
    pub options: String,
    /// f16 loss scale (None in f32 and bf16).
    #[serde(default)]
    pub loss_scaler: Option<LossScaler>,
    /// Wall-clock seconds the run has trained so far (counts against `--time`).
    #[serde(default)]
    pub seconds_spent: f64,
}

/// serde_json writes a non-finite f64 as null; read null back as -inf.
fn null_as_neg_infinity<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NEG_INFINITY))
}

/// Writes a checkpoint atomically.
pub fn save(
    path: &Path,
    model: &UNet,
    preprocessing: &Preprocessing,
    optimizer: Vec<(String, Tensor)>,
    state: &TrainState,
) -> Result<()> {
    let mut metadata = HashMap::new();
    metadata.insert(CONFIG_KEY.to_string(), model.config().to_json());
    metadata.insert(PREPROCESSING_KEY.to_string(), preprocessing.to_json());
    metadata.insert(
        TRAIN_STATE_KEY.to_string(),
        serde_json::to_string(state).unwrap_or_default(),
    );
    let mut tensors = Vec::new();
    for (name, t) in model.state_dict().into_iter().chain(optimizer) {
        tensors.push((name, t.to_device(&Device::Cpu)?));
    }
    let bytes =
        safetensors::serialize(tensors, Some(metadata)).map_err(|e| TrainError::BadCheckpoint {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    crate::files::atomic_write(path, &bytes)
}

/// A checkpoint read back.
pub struct Checkpoint {
    pub loaded: LoadedModel,
    pub optimizer: HashMap<String, Tensor>,
    pub state: TrainState,
}

/// Reads a checkpoint: the model through `unet_models::io::load` (same
/// validation as any model file), the optimiser tensors and the state.
pub fn load(path: &Path, device: &Device) -> Result<Checkpoint> {
    let bad = |reason: String| TrainError::BadCheckpoint {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| TrainError::Io {
        dir: path.to_path_buf(),
        what: "cannot read the checkpoint".into(),
        source,
    })?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let state: TrainState = serde_json::from_str(
        metadata
            .get(TRAIN_STATE_KEY)
            .ok_or_else(|| bad(format!("no `{TRAIN_STATE_KEY}` metadata (a model file, not a checkpoint? pass the run's checkpoint.safetensors)")))?,
    )
    .map_err(|e| bad(format!("`{TRAIN_STATE_KEY}`: {e}")))?;

    let mut optimizer = HashMap::new();
    let mut model_views = Vec::new();
    for (name, view) in st.tensors() {
        if name.starts_with(OPTIMIZER_PREFIX) {
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => DType::F32,
                other => {
                    return Err(bad(format!(
                        "optimizer tensor `{name}` has dtype {other:?}"
                    )))
                }
            };
            let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)
                .and_then(|t| t.to_device(device))
                .map_err(|e| bad(format!("optimizer tensor `{name}`: {e}")))?;
            optimizer.insert(name, t);
        } else {
            model_views.push((name, view));
        }
    }
    // The model part is exactly a model file: validate and build it with the models crate.
    let mut model_meta = metadata.clone();
    model_meta.remove(TRAIN_STATE_KEY);
    let model_bytes =
        safetensors::serialize(model_views, Some(model_meta)).map_err(|e| bad(e.to_string()))?;
    let dir = tempfile::tempdir().map_err(|source| TrainError::Io {
        dir: std::env::temp_dir(),
        what: "cannot create a temporary folder".into(),
        source,
    })?;
    let tmp = dir.path().join("model.safetensors");
    std::fs::write(&tmp, &model_bytes).map_err(|source| TrainError::Io {
        dir: tmp.clone(),
        what: "cannot write".into(),
        source,
    })?;
    let loaded = unet_models::io::load(&tmp, ConfigSource::Metadata, device)
        .map_err(|e| bad(e.to_string()))?;
    Ok(Checkpoint {
        loaded,
        optimizer,
        state,
    })
}

/// A fresh model re-read through the checkpoint path, so fresh and resumed runs
/// build their models the same way (the dropout RNG seed included).
pub fn reload(model: &UNet, preprocessing: &Preprocessing, device: &Device) -> Result<UNet> {
    let dir = tempfile::tempdir().map_err(|source| TrainError::Io {
        dir: std::env::temp_dir(),
        what: "cannot create a temporary folder".into(),
        source,
    })?;
    let tmp = dir.path().join("init.safetensors");
    unet_models::io::save(model, preprocessing, &HashMap::new(), &tmp)?;
    Ok(unet_models::io::load(&tmp, ConfigSource::Metadata, device)?.model)
}
