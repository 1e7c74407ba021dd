//! Saved reference outputs, like Polygraphy's `--save-outputs`: `unet-export
//! golden` stores the check's inputs and the candle logits in
//! `DIR/golden.safetensors`, and `unet-export check --golden DIR` compares a
//! later export with them, without the weights file or candle.
//!
//! Tensors `case{i}.input` (normalised network input) and `case{i}.logits`,
//! f32 NCHW; metadata: `unet.golden.cases` (JSON list of case names), the
//! seed, and the model's `unet.config` / `unet.preprocessing`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use unet_models::config::{CONFIG_KEY, PREPROCESSING_KEY};
use unet_models::{Preprocessing, UNet};

use crate::backend::Tensor4 as Nchw;
use crate::check::{self, Case, CheckOptions, Report};
use crate::error::{ExportError, Result};

pub const GOLDEN_FILE: &str = "golden.safetensors";
const CASES_KEY: &str = "unet.golden.cases";
const SEED_KEY: &str = "unet.golden.seed";

/// Writes the check's cases (two sizes, batch 2) and the model's logits;
/// returns the file written.
pub fn write_golden(model: &UNet, pre: &Preprocessing, dir: &Path, seed: u64) -> Result<PathBuf> {
    let graph = model.graph();
    let sizes = check::default_sizes(graph);
    let cases = check::make_cases(graph.config.in_channels, pre, &sizes, 2, seed);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let logits = check::candle_logits(model, &case.input)?;
        tensors.push((
            format!("case{i}.input"),
            case.input.shape.to_vec(),
            le_bytes(&case.input.data),
        ));
        tensors.push((
            format!("case{i}.logits"),
            logits.shape.to_vec(),
            le_bytes(&logits.data),
        ));
    }
    let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    let metadata = HashMap::from([
        (
            CASES_KEY.to_string(),
            serde_json::to_string(&names).unwrap_or_default(),
        ),
        (SEED_KEY.to_string(), seed.to_string()),
        (CONFIG_KEY.to_string(), model.config().to_json()),
        (PREPROCESSING_KEY.to_string(), pre.to_json()),
    ]);
    let path = dir.join(GOLDEN_FILE);
    let io_err = |reason| ExportError::Io {
        path: path.clone(),
        reason,
    };
    let views = tensors
        .iter()
        .map(|(name, shape, data)| {
            Ok((
                name.clone(),
                TensorView::new(Dtype::F32, shape.clone(), data)?,
            ))
        })
        .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| io_err(std::io::Error::other(e.to_string())))?;
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| io_err(std::io::Error::other(e.to_string())))?;
    std::fs::create_dir_all(dir).map_err(|reason| ExportError::Io {
        path: dir.to_path_buf(),
        reason,
    })?;
    unet_models::io::atomic_write(&path, &bytes)?;
    Ok(path)
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Cases, expected logits and preprocessing read back from a golden directory.
pub struct Golden {
    pub cases: Vec<Case>,
    pub logits: Vec<Nchw>,
    pub preprocessing: Preprocessing,
    pub out_channels: usize,
}

pub fn read_golden(dir: &Path) -> Result<Golden> {
    let path = dir.join(GOLDEN_FILE);
    let bad = |reason: String| ExportError::BadGolden {
        path: path.clone(),
        reason,
    };
    let bytes = std::fs::read(&path).map_err(|reason| ExportError::Io {
        path: path.clone(),
        reason,
    })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let get = |key: &str| {
        meta.get(key)
            .ok_or_else(|| bad(format!("no `{key}` metadata")))
    };
    let names: Vec<String> =
        serde_json::from_str(get(CASES_KEY)?).map_err(|e| bad(format!("{CASES_KEY}: {e}")))?;
    let preprocessing = Preprocessing::from_json(get(PREPROCESSING_KEY)?)
        .map_err(|e| bad(format!("{PREPROCESSING_KEY}: {e}")))?;
    let config = unet_models::UNetConfig::from_json(get(CONFIG_KEY)?)
        .map_err(|e| bad(format!("{CONFIG_KEY}: {e}")))?;
    let tensor = |name: String| -> Result<Nchw> {
        let view = st
            .tensor(&name)
            .map_err(|_| bad(format!("no tensor `{name}`")))?;
        let shape: [usize; 4] = view
            .shape()
            .try_into()
            .map_err(|_| bad(format!("`{name}` is not NCHW: {:?}", view.shape())))?;
        if view.dtype() != Dtype::F32 {
            return Err(bad(format!("`{name}` is {:?}, expected F32", view.dtype())));
        }
        let data = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(Nchw { data, shape })
    };
    let mut cases = Vec::with_capacity(names.len());
    let mut logits = Vec::with_capacity(names.len());
    for (i, name) in names.into_iter().enumerate() {
        cases.push(Case {
            name,
            input: tensor(format!("case{i}.input"))?,
        });
        logits.push(tensor(format!("case{i}.logits"))?);
    }
    Ok(Golden {
        cases,
        logits,
        preprocessing,
        out_channels: config.out_channels,
    })
}

/// Runs `onnx` on the saved inputs and compares with the saved logits.
pub fn check_golden(dir: &Path, onnx: &Path, opts: &CheckOptions) -> Result<Report> {
    let golden = read_golden(dir)?;
    let info = check::read_onnx_info(onnx)?;
    Ok(check::run_cases(
        &format!("golden {}", dir.join(GOLDEN_FILE).display()),
        onnx,
        &info,
        &golden.preprocessing,
        golden.out_channels,
        &golden.cases,
        &golden.logits,
        opts,
    ))
}
