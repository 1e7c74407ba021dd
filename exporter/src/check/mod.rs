//! The parity check: run an ONNX file on every available back end and
//! compare it with the candle forward pass (or with saved golden outputs, or
//! with ONNX Runtime for a file without weights), the way NVIDIA Polygraphy
//! compares ONNX Runtime with TensorRT.
//!
//! - [`cases`]: the seeded inputs and the candle reference;
//! - [`compare`]: element-wise statistics of one output (numpy's `allclose`,
//!   non-finite values always fail) and the mask Dice;
//! - [`report`]: the tables, as text and JSON.
//!
//! Masks for the Dice column are the outputs thresholded at 0.5 as
//! probabilities (sigmoid of one logit channel, softmax over several) or the
//! one-hot class labels of an argmax head.

mod cases;
mod compare;
mod report;

use std::collections::HashMap;
use std::path::Path;

use prost::Message;
use tract_onnx::pb::ModelProto;
use unet_models::{Preprocessing, UNet};

pub use cases::{candle_logits, cases_for, default_sizes, make_cases, Case};
pub use compare::{apply_head, compare, Stats};
pub use report::{BackendReport, Report, Row};

use crate::error::{ExportError, Result};
use crate::lower::{keys, Head};
use crate::runner::{Runner, Tensor4 as Nchw};

/// Element-wise tolerance, `|a - e| <= atol + rtol * |e|`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    pub atol: f32,
    pub rtol: f32,
}

impl Tolerance {
    /// f32 graphs: the back ends differ from candle by summation order only.
    pub const F32: Tolerance = Tolerance {
        atol: 1e-4,
        rtol: 1e-3,
    };
    /// f16 graphs: about 3 significant digits per layer, accumulated over ~20 layers.
    pub const F16: Tolerance = Tolerance {
        atol: 5e-2,
        rtol: 5e-2,
    };

    pub fn for_fp16(fp16: bool) -> Tolerance {
        if fp16 {
            Tolerance::F16
        } else {
            Tolerance::F32
        }
    }
}

/// What the exporter recorded about a file (defaults for foreign ONNX files).
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxInfo {
    pub head: Head,
    pub normalize_in_graph: bool,
    pub fp16: bool,
    /// Fixed input dims (`None` where symbolic).
    pub batch: Option<usize>,
    pub spatial: Option<(usize, usize)>,
    pub metadata: HashMap<String, String>,
    /// A tract NNEF archive (`unet-export nnef`): it runs on tract only.
    pub nnef: bool,
}

/// Reads the metadata and input shape of an ONNX file, or of an NNEF
/// archive written by `unet-export nnef`.
pub fn read_onnx_info(path: &Path) -> Result<OnnxInfo> {
    let bytes = std::fs::read(path).map_err(|reason| ExportError::Io {
        path: path.to_path_buf(),
        reason,
    })?;
    if unet_runtime::is_nnef_archive(&bytes) {
        drop(bytes);
        return read_nnef_info(path);
    }
    let not_onnx = |reason: String| ExportError::NotOnnx {
        path: path.to_path_buf(),
        reason,
    };
    let model = ModelProto::decode(bytes.as_slice()).map_err(|e| not_onnx(e.to_string()))?;
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| not_onnx("no graph".into()))?;
    let input = graph
        .input
        .first()
        .ok_or_else(|| not_onnx("the graph has no input".into()))?;
    let dims: Vec<Option<usize>> = crate::onnx::declared_dims(input)
        .into_iter()
        .map(|d| d.filter(|&v| v > 0).map(|v| v as usize))
        .collect();
    if dims.len() != 4 {
        return Err(not_onnx(format!(
            "input `{}` has rank {}, expected NCHW",
            input.name,
            dims.len()
        )));
    }
    let metadata: HashMap<String, String> = model
        .metadata_props
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    Ok(info_from(
        metadata,
        [dims[0], dims[1], dims[2], dims[3]],
        false,
    ))
}

/// [`read_onnx_info`] of an NNEF archive, read as the runtime reads it.
fn read_nnef_info(path: &Path) -> Result<OnnxInfo> {
    let session = Runner::Tract.open(path)?;
    Ok(info_from(
        session.metadata().clone(),
        session.input_dims(),
        true,
    ))
}

fn info_from(metadata: HashMap<String, String>, dims: [Option<usize>; 4], nnef: bool) -> OnnxInfo {
    let flag = |key: &str| metadata.get(key).is_some_and(|v| v == "true");
    OnnxInfo {
        head: metadata
            .get(keys::HEAD)
            .and_then(|h| Head::parse(h))
            .unwrap_or_default(),
        normalize_in_graph: flag(keys::NORMALIZE_IN_GRAPH),
        fp16: flag(keys::FP16),
        batch: dims[0],
        spatial: dims[2].zip(dims[3]),
        metadata,
        nnef,
    }
}

/// Options of [`check_model`] and [`crate::golden::check_golden`].
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// `None`: [`Tolerance::for_fp16`] of the file.
    pub tolerance: Option<Tolerance>,
    pub seed: u64,
    pub runners: Vec<Runner>,
    /// Back ends left out and why; printed under the tables.
    pub skipped: Vec<(String, String)>,
}

impl Default for CheckOptions {
    /// Every back end found on this machine.
    fn default() -> Self {
        let (runners, skipped) = Runner::available();
        CheckOptions {
            tolerance: None,
            seed: 0,
            runners,
            skipped,
        }
    }
}

/// Runs the file at `onnx` on every back end and compares with `model`'s candle forward.
pub fn check_model(
    model: &UNet,
    pre: &Preprocessing,
    onnx: &Path,
    opts: &CheckOptions,
) -> Result<Report> {
    let info = read_onnx_info(onnx)?;
    let cases = cases_for(model.graph(), pre, &info, opts.seed);
    let mut expected = Vec::with_capacity(cases.len());
    for case in &cases {
        expected.push(candle_logits(model, &case.input)?);
    }
    Ok(run_cases(
        "candle",
        onnx,
        &info,
        pre,
        model.config().out_channels,
        &cases,
        &expected,
        opts,
    ))
}

/// Runs every case on every back end and compares the outputs with
/// `expected_logits` (after the file's head).
#[allow(clippy::too_many_arguments)]
pub fn run_cases(
    reference: &str,
    onnx: &Path,
    info: &OnnxInfo,
    pre: &Preprocessing,
    classes: usize,
    cases: &[Case],
    expected_logits: &[Nchw],
    opts: &CheckOptions,
) -> Report {
    let expected: Vec<Nchw> = expected_logits
        .iter()
        .map(|l| apply_head(info.head, l))
        .collect();
    compare_runs(reference, onnx, info, pre, classes, cases, &expected, opts)
}

/// Compares tract with ONNX Runtime on a file without weights (one exported
/// elsewhere): ONNX Runtime's outputs are the reference.
pub fn check_foreign(onnx: &Path, opts: &CheckOptions) -> Result<Report> {
    if !opts.runners.contains(&Runner::OrtCpu) {
        let why = opts
            .skipped
            .iter()
            .find(|(name, _)| name == Runner::OrtCpu.name())
            .map(|(_, why)| why.clone())
            .unwrap_or_else(|| "not requested".into());
        return Err(ExportError::Backend {
            backend: Runner::OrtCpu.name().into(),
            reason: format!("an ONNX file alone is checked against ONNX Runtime: {why}"),
        });
    }
    check_against(onnx, Runner::OrtCpu, onnx, opts)
}

/// Runs `subject` on the back ends of `opts` other than `reference_runner`
/// and compares it with `reference` run on `reference_runner`: an ONNX file
/// alone against ONNX Runtime, an NNEF archive against the ONNX file it was
/// converted from. Inputs are sized by the reference's fixed shape, else by
/// its `unet.size_multiple` (32 if absent), and normalised with its
/// `unet.preprocessing` (defaults if absent).
pub fn check_against(
    reference: &Path,
    reference_runner: Runner,
    subject: &Path,
    opts: &CheckOptions,
) -> Result<Report> {
    let info = read_onnx_info(reference)?;
    let subject_info = read_onnx_info(subject)?;
    let mut reference_session = reference_runner.open(reference)?;
    let channels = reference_session.input_channels().unwrap_or(3);
    let pre = info
        .metadata
        .get(unet_models::config::PREPROCESSING_KEY)
        .and_then(|json| Preprocessing::from_json(json).ok())
        .filter(|p| crate::validate::check_preprocessing(p, channels).is_ok())
        .unwrap_or_else(|| default_preprocessing(channels));
    // A size either file fixes (an archive may be written for one size).
    let sizes = match subject_info.spatial.or(info.spatial) {
        Some(hw) => vec![hw],
        None => {
            let m = info
                .metadata
                .get(keys::SIZE_MULTIPLE)
                .and_then(|m| m.parse::<usize>().ok())
                .filter(|&m| m > 0)
                .unwrap_or(FOREIGN_SIZE_MULTIPLE);
            let a = 64usize.div_ceil(m).max(2) * m;
            vec![(a, a), (a + m, a + 2 * m)]
        }
    };
    let cases = make_cases(channels, &pre, &sizes, info.batch.unwrap_or(2), opts.seed);
    let mut expected = Vec::with_capacity(cases.len());
    for case in &cases {
        let input = if info.normalize_in_graph {
            cases::denormalize(&case.input, &pre)
        } else {
            case.input.clone()
        };
        let out = reference_session
            .run(&input)
            .map_err(|e| ExportError::Backend {
                backend: reference_runner.name().into(),
                reason: format!("{}: {e}", case.name),
            })?;
        expected.push(out);
    }
    let classes = expected.first().map_or(1, |o| o.shape[1]);
    let same_file = reference == subject;
    let runners: Vec<Runner> = opts
        .runners
        .iter()
        .copied()
        .filter(|&r| !(same_file && r == reference_runner))
        .collect();
    let opts = CheckOptions {
        runners,
        ..opts.clone()
    };
    let reference = if same_file {
        format!(
            "{} ({})",
            reference_runner.name(),
            reference_session.provider()
        )
    } else {
        format!("{} on {}", reference.display(), reference_runner.name())
    };
    Ok(compare_runs(
        &reference,
        subject,
        &subject_info,
        &pre,
        classes,
        &cases,
        &expected,
        &opts,
    ))
}

/// Size multiple assumed for a foreign file that does not say (a 5-level encoder).
pub const FOREIGN_SIZE_MULTIPLE: usize = 32;

/// Preprocessing for a file that carries none: the check only needs inputs
/// of a plausible scale.
fn default_preprocessing(channels: usize) -> Preprocessing {
    Preprocessing {
        mean: vec![0.5; channels],
        std: vec![0.25; channels],
        threshold: 0.5,
        class_names: Vec::new(),
        channel_order: if channels == 3 {
            unet_spec::ChannelOrder::Rgb
        } else {
            unet_spec::ChannelOrder::Gray
        },
    }
}

/// Runs every case on every back end of `opts` and compares the outputs with
/// `expected` (what the file should output, head included).
#[allow(clippy::too_many_arguments)]
fn compare_runs(
    reference: &str,
    onnx: &Path,
    info: &OnnxInfo,
    pre: &Preprocessing,
    classes: usize,
    cases: &[Case],
    expected: &[Nchw],
    opts: &CheckOptions,
) -> Report {
    let tolerance = opts.tolerance.unwrap_or(Tolerance::for_fp16(info.fp16));
    let mut backends = Vec::new();
    let mut skipped = opts.skipped.clone();
    for &runner in &opts.runners {
        if info.nnef && runner != Runner::Tract {
            skipped.push((
                runner.name().into(),
                "an NNEF archive runs on tract only".into(),
            ));
            continue;
        }
        let mut report = BackendReport {
            backend: runner.name().into(),
            provider: String::new(),
            rows: Vec::new(),
            error: None,
        };
        let mut session = match runner.open(onnx) {
            Ok(s) => s,
            Err(e) => {
                report.error = Some(e.to_string());
                backends.push(report);
                continue;
            }
        };
        report.provider = session.provider().to_string();
        for (case, expected) in cases.iter().zip(expected) {
            let input = if info.normalize_in_graph {
                cases::denormalize(&case.input, pre)
            } else {
                case.input.clone()
            };
            let (output_shape, result) = match session.run(&input) {
                Ok(out) if out.shape != expected.shape => (
                    Some(out.shape),
                    Err(format!(
                        "output shape {} != expected {}",
                        report::shape_str(&out.shape),
                        report::shape_str(&expected.shape)
                    )),
                ),
                Ok(out) => (
                    Some(out.shape),
                    Ok(compare(expected, &out, tolerance, info.head, classes)),
                ),
                Err(e) => (None, Err(format!("{}: {e}", runner.name()))),
            };
            report.rows.push(Row {
                case: case.name.clone(),
                input_shape: case.input.shape,
                output_shape,
                result,
            });
        }
        backends.push(report);
    }
    Report {
        reference: reference.into(),
        tolerance,
        backends,
        skipped,
    }
}
