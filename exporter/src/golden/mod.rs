//! Saved reference outputs, like Polygraphy's `--save-outputs`: `unet-export
//! golden` stores the check's inputs and the candle outputs, and `unet-export
//! check --golden DIR` compares a later export with them, without the weights
//! file or candle.
//!
//! Formats ([`GoldenFormat`]):
//! - `unet` (this module): `DIR/golden.safetensors`, tensors `case{i}.input`
//!   (normalised network input) and `case{i}.logits`, f32 NCHW; metadata:
//!   `unet.golden.cases` (JSON list of case names), the seed, and the model's
//!   `unet.config` / `unet.preprocessing`. The one `check --golden` reads.
//! - [`onnx_test`], [`npz`], [`polygraphy`]: the same inputs and the outputs
//!   of a graph with the chosen head, in the files other tools read.

mod npz;
mod onnx_test;
mod polygraphy;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use unet_models::{Preprocessing, UNet};
use unet_spec::keys::{CONFIG as CONFIG_KEY, PREPROCESSING as PREPROCESSING_KEY};

use crate::check::{self, Case, CheckOptions, Report};
use crate::error::{ExportError, Result};
use crate::lower::{Head, INPUT_NAME};
use crate::runner::Tensor4 as Nchw;

pub const GOLDEN_FILE: &str = "golden.safetensors";
const CASES_KEY: &str = "unet.golden.cases";
const SEED_KEY: &str = "unet.golden.seed";

/// Which files `unet-export golden` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum GoldenFormat {
    /// `golden.safetensors`, for `unet-export check --golden`.
    #[default]
    Unet,
    /// ONNX test-data folders `test_data_set_{i}/{input,output}_0.pb`
    /// (`TensorProto`), as `onnx_test_runner` and ONNX's backend tests read them.
    OnnxTest,
    /// `case{i}.npz` per case (NumPy, `tract --assert-output-bundle`), arrays
    /// named after the graph's input and output.
    Npz,
    /// `inputs.json` and `outputs.json` for `polygraphy run --load-inputs
    /// inputs.json --load-outputs outputs.json`.
    Polygraphy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoldenOptions {
    pub seed: u64,
    pub format: GoldenFormat,
    /// The head of the ONNX file the outputs are for (all but `Unet`, which
    /// stores logits and applies each checked file's own head).
    pub head: Head,
}

/// One case of a golden set in another tool's terms: the graph input and
/// the expected graph output, named as in the exported graph.
pub(crate) struct NamedCase<'a> {
    pub input: &'a Nchw,
    pub output: Nchw,
}

/// Writes the check's cases (two sizes, batch 2) and the model's outputs in
/// `opts.format` under `dir`; returns the files written.
pub fn write(
    model: &UNet,
    pre: &Preprocessing,
    dir: &Path,
    opts: &GoldenOptions,
) -> Result<Vec<PathBuf>> {
    if opts.format == GoldenFormat::Unet {
        return Ok(vec![write_golden(model, pre, dir, opts.seed)?]);
    }
    let (cases, logits) = cases_and_logits(model, pre, opts.seed)?;
    let named: Vec<NamedCase> = cases
        .iter()
        .zip(&logits)
        .map(|(case, logits)| NamedCase {
            input: &case.input,
            output: check::apply_head(opts.head, logits),
        })
        .collect();
    create_dir(dir)?;
    let output_name = opts.head.output_name();
    match opts.format {
        GoldenFormat::Unet => unreachable!("handled above"),
        GoldenFormat::OnnxTest => onnx_test::write(dir, &named, INPUT_NAME, output_name),
        GoldenFormat::Npz => npz::write(dir, &named, INPUT_NAME, output_name),
        GoldenFormat::Polygraphy => polygraphy::write(dir, &named, INPUT_NAME, output_name),
    }
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|reason| ExportError::Io {
        path: dir.to_path_buf(),
        reason,
    })
}

/// The check's cases at the model's default sizes and the candle logits.
fn cases_and_logits(
    model: &UNet,
    pre: &Preprocessing,
    seed: u64,
) -> Result<(Vec<Case>, Vec<Nchw>)> {
    let graph = model.graph();
    let sizes = check::default_sizes(graph);
    let cases = check::make_cases(graph.config.in_channels, pre, &sizes, 2, seed);
    let logits = cases
        .iter()
        .map(|case| check::candle_logits(model, &case.input))
        .collect::<Result<Vec<_>>>()?;
    Ok((cases, logits))
}

/// Writes the check's cases (two sizes, batch 2) and the model's logits to
/// `DIR/golden.safetensors`; returns the file written.
pub fn write_golden(model: &UNet, pre: &Preprocessing, dir: &Path, seed: u64) -> Result<PathBuf> {
    let (cases, all_logits) = cases_and_logits(model, pre, seed)?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, (case, logits)) in cases.iter().zip(&all_logits).enumerate() {
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
    create_dir(dir)?;
    unet_models::io::atomic_write(&path, &bytes)?;
    Ok(path)
}

pub(crate) fn le_bytes(v: &[f32]) -> Vec<u8> {
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
