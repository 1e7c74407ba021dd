//! The parity check: run a written ONNX file on every available back end and
//! compare it with the candle forward pass (or with saved golden outputs), the
//! way NVIDIA Polygraphy compares ONNX Runtime with TensorRT.
//!
//! An element passes when `|actual - expected| <= atol + rtol * |expected|`
//! (numpy's `allclose`); a case passes when every element does and the output
//! shapes agree. Masks for the Dice column are the outputs thresholded at 0.5
//! as probabilities (sigmoid of one logit channel, softmax over several) or the
//! one-hot class labels of an argmax head.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use tract_onnx::pb::tensor_shape_proto::dimension::Value as DimValue;
use tract_onnx::pb::type_proto::Value as TypeValue;
use tract_onnx::pb::ModelProto;
use unet_models::candle_core::{Device, Tensor};
use unet_models::config::Padding;
use unet_models::{Graph, Preprocessing, UNet};

use crate::backend::{Runner, Tensor4 as Nchw};
use crate::error::{ExportError, Result};
use crate::lower::{keys, Head};

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
}

/// Reads the metadata and input shape of an ONNX file.
pub fn read_onnx_info(path: &Path) -> Result<OnnxInfo> {
    let bytes = std::fs::read(path).map_err(|reason| ExportError::Io {
        path: path.to_path_buf(),
        reason,
    })?;
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
    let dims: Vec<Option<usize>> = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(TypeValue::TensorType(t)) => t
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(DimValue::DimValue(v)) if v > 0 => Some(v as usize),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        None => vec![],
    };
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
    let flag = |key: &str| metadata.get(key).is_some_and(|v| v == "true");
    Ok(OnnxInfo {
        head: metadata
            .get(keys::HEAD)
            .and_then(|h| Head::parse(h))
            .unwrap_or_default(),
        normalize_in_graph: flag(keys::NORMALIZE_IN_GRAPH),
        fp16: flag(keys::FP16),
        batch: dims[0],
        spatial: dims[2].zip(dims[3]),
        metadata,
    })
}

/// One input batch of the check, in the network's (normalised) input space.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub input: Nchw,
}

/// Two input sizes the network accepts: a small square one and a larger
/// non-square one, so a transposed H/W or a size-dependent crop shows up.
pub fn default_sizes(graph: &Graph) -> Vec<(usize, usize)> {
    match graph.config.padding {
        Padding::Same => {
            let m = graph.config.size_multiple();
            let a = 64usize.div_ceil(m).max(2) * m;
            vec![(a, a), (a + m, a + 2 * m)]
        }
        Padding::Valid => {
            let next = |n: usize| graph.nearest_sizes(n).1.unwrap_or(n);
            let a = next(1);
            let b = next(a + 1);
            let c = next(b + 1);
            vec![(a, a), (b, c)]
        }
    }
}

/// Seeded standard-normal inputs and synthetic frames (ellipses on a shaded
/// background, normalised with `pre`) at every size, `batch` images each.
pub fn make_cases(
    in_channels: usize,
    pre: &Preprocessing,
    sizes: &[(usize, usize)],
    batch: usize,
    seed: u64,
) -> Vec<Case> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut cases = Vec::new();
    for &(h, w) in sizes {
        let shape = [batch, in_channels, h, w];
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
        cases.push(Case {
            name: format!("random {h}x{w}"),
            input: Nchw { data, shape },
        });
        let mut data = Vec::with_capacity(n);
        for _ in 0..batch {
            data.extend(synthetic_frame(&mut rng, in_channels, h, w, pre));
        }
        cases.push(Case {
            name: format!("frames {h}x{w}"),
            input: Nchw { data, shape },
        });
    }
    cases
}

/// A frame like an endoscopy image: a vignetted reddish background with a few
/// brighter elliptical blobs; values in [0, 1] then normalised.
fn synthetic_frame(
    rng: &mut ChaCha8Rng,
    channels: usize,
    h: usize,
    w: usize,
    pre: &Preprocessing,
) -> Vec<f32> {
    let base: Vec<f32> = (0..channels)
        .map(|c| [0.75, 0.35, 0.3][c % 3] + rng.random_range(-0.1..0.1))
        .collect();
    let blobs: Vec<(f32, f32, f32, f32, f32)> = (0..rng.random_range(1..4))
        .map(|_| {
            (
                rng.random_range(0.0..h as f32),
                rng.random_range(0.0..w as f32),
                rng.random_range(0.1..0.35) * h as f32,
                rng.random_range(0.1..0.35) * w as f32,
                rng.random_range(0.15..0.3),
            )
        })
        .collect();
    let mut out = vec![0f32; channels * h * w];
    for y in 0..h {
        for x in 0..w {
            let dy = y as f32 / h as f32 - 0.5;
            let dx = x as f32 / w as f32 - 0.5;
            let vignette = 1.0 - 0.8 * (dx * dx + dy * dy);
            let mut lift = 0.0;
            for &(cy, cx, ry, rx, amount) in &blobs {
                let d = ((y as f32 - cy) / ry).powi(2) + ((x as f32 - cx) / rx).powi(2);
                if d < 1.0 {
                    lift += amount * (1.0 - d);
                }
            }
            let noise: f32 = rng.random_range(-0.02..0.02);
            for c in 0..channels {
                let v = ((base[c] + lift) * vignette + noise).clamp(0.0, 1.0);
                let mean = pre.mean.get(c).copied().unwrap_or(0.0);
                let std = pre.std.get(c).copied().unwrap_or(1.0);
                out[(c * h + y) * w + x] = (v - mean) / std;
            }
        }
    }
    out
}

/// The candle forward pass (eval mode) on the CPU.
pub fn candle_logits(model: &UNet, input: &Nchw) -> Result<Nchw> {
    let x = Tensor::from_slice(&input.data, input.shape.as_slice(), &Device::Cpu)?
        .to_device(model.device())?;
    let y = model.forward(&x)?;
    let shape: [usize; 4] = y.dims4()?.into();
    let data = y.flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<f32>()?;
    Ok(Nchw { data, shape })
}

/// Applies an output head to logits, as the exported graph does.
pub fn apply_head(head: Head, logits: &Nchw) -> Nchw {
    let [n, c, h, w] = logits.shape;
    let hw = h * w;
    match head {
        Head::Logits => logits.clone(),
        Head::Sigmoid => Nchw {
            data: logits.data.iter().map(|&v| sigmoid(v)).collect(),
            shape: logits.shape,
        },
        Head::Softmax => {
            let mut data = logits.data.clone();
            for b in 0..n {
                for p in 0..hw {
                    let at = |k: usize| (b * c + k) * hw + p;
                    let max = (0..c).map(|k| logits.data[at(k)]).fold(f32::MIN, f32::max);
                    let sum: f32 = (0..c).map(|k| (logits.data[at(k)] - max).exp()).sum();
                    for k in 0..c {
                        data[at(k)] = (logits.data[at(k)] - max).exp() / sum;
                    }
                }
            }
            Nchw {
                data,
                shape: logits.shape,
            }
        }
        Head::Argmax => {
            let mut data = vec![0f32; n * hw];
            for b in 0..n {
                for p in 0..hw {
                    let at = |k: usize| (b * c + k) * hw + p;
                    // First maximum wins, as ONNX ArgMax with select_last_index = 0.
                    let mut best = 0;
                    for k in 1..c {
                        if logits.data[at(k)] > logits.data[at(best)] {
                            best = k;
                        }
                    }
                    data[b * hw + p] = best as f32;
                }
            }
            Nchw {
                data,
                shape: [n, 1, h, w],
            }
        }
    }
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// Foreground masks of an output: probabilities above 0.5, or one-hot labels.
fn masks(head: Head, out: &Nchw, classes: usize) -> Vec<bool> {
    match head {
        Head::Argmax => {
            let mut m = Vec::with_capacity(out.data.len() * classes);
            for k in 0..classes {
                m.extend(out.data.iter().map(|&l| l as usize == k));
            }
            m
        }
        Head::Sigmoid | Head::Softmax => out.data.iter().map(|&p| p > 0.5).collect(),
        Head::Logits if out.shape[1] == 1 => out.data.iter().map(|&v| v > 0.0).collect(),
        Head::Logits => apply_head(Head::Softmax, out)
            .data
            .iter()
            .map(|&p| p > 0.5)
            .collect(),
    }
}

/// Error statistics of one output against the reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub max_abs: f64,
    pub max_rel: f64,
    pub mean_abs: f64,
    /// Dice between the thresholded masks; 1 when both are empty.
    pub dice: f64,
    /// Elements outside the tolerance.
    pub mismatches: usize,
    pub count: usize,
}

impl Stats {
    pub fn passed(&self) -> bool {
        self.mismatches == 0
    }
}

/// Compares `actual` with `expected` (same shape) element-wise.
pub fn compare(
    expected: &Nchw,
    actual: &Nchw,
    tol: Tolerance,
    head: Head,
    classes: usize,
) -> Stats {
    let (mut max_abs, mut max_rel, mut sum_abs, mut mismatches) = (0f64, 0f64, 0f64, 0usize);
    for (&e, &a) in expected.data.iter().zip(&actual.data) {
        let (e, a) = (e as f64, a as f64);
        let abs = (a - e).abs();
        let abs = if abs.is_nan() { f64::INFINITY } else { abs };
        max_abs = max_abs.max(abs);
        max_rel = max_rel.max(abs / e.abs().max(f32::EPSILON as f64));
        sum_abs += abs;
        if abs > tol.atol as f64 + tol.rtol as f64 * e.abs() {
            mismatches += 1;
        }
    }
    let count = expected.data.len();
    let (me, ma) = (masks(head, expected, classes), masks(head, actual, classes));
    let both = me.iter().zip(&ma).filter(|(x, y)| **x && **y).count();
    let total = me.iter().filter(|x| **x).count() + ma.iter().filter(|x| **x).count();
    let dice = if total == 0 {
        1.0
    } else {
        2.0 * both as f64 / total as f64
    };
    Stats {
        max_abs,
        max_rel,
        mean_abs: sum_abs / count.max(1) as f64,
        dice,
        mismatches,
        count,
    }
}

/// One case on one back end.
#[derive(Debug, Clone)]
pub struct Row {
    pub case: String,
    pub input_shape: [usize; 4],
    pub output_shape: Option<[usize; 4]>,
    pub result: std::result::Result<Stats, String>,
}

#[derive(Debug, Clone)]
pub struct BackendReport {
    pub backend: String,
    pub provider: String,
    pub rows: Vec<Row>,
    /// Set when the back end could not load the file at all.
    pub error: Option<String>,
}

impl BackendReport {
    pub fn passed(&self) -> bool {
        self.error.is_none()
            && self
                .rows
                .iter()
                .all(|r| r.result.as_ref().is_ok_and(Stats::passed))
    }
}

/// The whole check: one table per back end.
#[derive(Debug, Clone)]
pub struct Report {
    pub reference: String,
    pub tolerance: Tolerance,
    pub backends: Vec<BackendReport>,
    /// Back ends not run, with the reason (e.g. no ONNX Runtime library).
    pub skipped: Vec<(String, String)>,
}

impl Report {
    /// True when at least one back end ran and every one passed.
    pub fn passed(&self) -> bool {
        !self.backends.is_empty() && self.backends.iter().all(BackendReport::passed)
    }

    /// The machine-readable form of the tables, for CI artefacts and dashboards.
    /// Non-finite errors (a NaN output) become `null`.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let backends: Vec<_> = self
            .backends
            .iter()
            .map(|b| {
                let rows: Vec<_> = b
                    .rows
                    .iter()
                    .map(|r| {
                        let mut row = json!({
                            "case": r.case,
                            "input_shape": r.input_shape,
                            "output_shape": r.output_shape,
                        });
                        match &r.result {
                            Ok(s) => {
                                row["max_abs"] = json!(s.max_abs);
                                row["max_rel"] = json!(s.max_rel);
                                row["mean_abs"] = json!(s.mean_abs);
                                row["dice"] = json!(s.dice);
                                row["mismatches"] = json!(s.mismatches);
                                row["count"] = json!(s.count);
                                row["passed"] = json!(s.passed());
                            }
                            Err(e) => {
                                row["error"] = json!(e);
                                row["passed"] = json!(false);
                            }
                        }
                        row
                    })
                    .collect();
                json!({
                    "backend": b.backend,
                    "provider": b.provider,
                    "error": b.error,
                    "passed": b.passed(),
                    "cases": rows,
                })
            })
            .collect();
        let skipped: Vec<_> = self
            .skipped
            .iter()
            .map(|(name, why)| json!({ "backend": name, "reason": why }))
            .collect();
        json!({
            "reference": self.reference,
            "atol": self.tolerance.atol,
            "rtol": self.tolerance.rtol,
            "passed": self.passed(),
            "backends": backends,
            "skipped": skipped,
        })
    }
}

fn shape_str(s: &[usize; 4]) -> String {
    format!("{}x{}x{}x{}", s[0], s[1], s[2], s[3])
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.backends {
            let provider = if b.provider.is_empty() || b.provider == b.backend {
                String::new()
            } else {
                format!(" ({})", b.provider)
            };
            writeln!(
                f,
                "{}{provider} vs {}, atol {:e}, rtol {:e}:",
                b.backend, self.reference, self.tolerance.atol, self.tolerance.rtol
            )?;
            if let Some(e) = &b.error {
                writeln!(f, "  FAIL: {e}")?;
                continue;
            }
            writeln!(
                f,
                "  {:<18} {:<15} {:<15} {:>10} {:>10} {:>10} {:>8}  result",
                "case", "input", "output", "max abs", "max rel", "mean abs", "dice"
            )?;
            for r in &b.rows {
                let out = r.output_shape.as_ref().map(shape_str).unwrap_or("-".into());
                match &r.result {
                    Ok(s) => writeln!(
                        f,
                        "  {:<18} {:<15} {:<15} {:>10.3e} {:>10.3e} {:>10.3e} {:>8.4}  {}",
                        r.case,
                        shape_str(&r.input_shape),
                        out,
                        s.max_abs,
                        s.max_rel,
                        s.mean_abs,
                        s.dice,
                        if s.passed() {
                            "PASS".to_string()
                        } else {
                            format!("FAIL ({} of {} outside tolerance)", s.mismatches, s.count)
                        }
                    )?,
                    Err(e) => writeln!(
                        f,
                        "  {:<18} {:<15} {:<15} FAIL: {e}",
                        r.case,
                        shape_str(&r.input_shape),
                        out
                    )?,
                }
            }
        }
        for (name, why) in &self.skipped {
            writeln!(f, "{name}: skipped ({why})")?;
        }
        write!(f, "parity: {}", if self.passed() { "PASS" } else { "FAIL" })
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

/// The cases for a file: its fixed shape if it has one, else two sizes at batch 2.
pub fn cases_for(graph: &Graph, pre: &Preprocessing, info: &OnnxInfo, seed: u64) -> Vec<Case> {
    let sizes = match info.spatial {
        Some(hw) => vec![hw],
        None => default_sizes(graph),
    };
    let batch = info.batch.unwrap_or(2);
    make_cases(graph.config.in_channels, pre, &sizes, batch, seed)
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
    let tolerance = opts.tolerance.unwrap_or(Tolerance::for_fp16(info.fp16));
    let mut backends = Vec::new();
    for &runner in &opts.runners {
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
        for (case, logits) in cases.iter().zip(expected_logits) {
            let expected = apply_head(info.head, logits);
            let input = if info.normalize_in_graph {
                denormalize(&case.input, pre)
            } else {
                case.input.clone()
            };
            let (output_shape, result) = match session.run(&input) {
                Ok(out) if out.shape != expected.shape => (
                    Some(out.shape),
                    Err(format!(
                        "output shape {} != expected {}",
                        shape_str(&out.shape),
                        shape_str(&expected.shape)
                    )),
                ),
                Ok(out) => (
                    Some(out.shape),
                    Ok(compare(&expected, &out, tolerance, info.head, classes)),
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
        skipped: opts.skipped.clone(),
    }
}

/// Network-space input back to pixels in [0, 1] for a graph that normalises itself.
fn denormalize(x: &Nchw, pre: &Preprocessing) -> Nchw {
    let [_, c, h, w] = x.shape;
    let hw = h * w;
    let data = x
        .data
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let k = (i / hw) % c;
            v * pre.std.get(k).copied().unwrap_or(1.0) + pre.mean.get(k).copied().unwrap_or(0.0)
        })
        .collect();
    Nchw {
        data,
        shape: x.shape,
    }
}
