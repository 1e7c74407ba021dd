//! tract back end: loading (this file), the graph rewrite that puts the
//! runtime's own convolution kernels into tract's plan ([`rewrite`],
//! [`tiled_conv`], [`tiled_deconv`]) and the CPU tuning ([`isa`]).
//!
//! tract runs a graph fastest when every shape is concrete: a plan with
//! symbolic H/W measured 4.5-5x slower. So the graph is optimised for the
//! first input shape and the plan (and its state, which owns the
//! intermediate buffers) is reused until a frame of another shape arrives.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::runtime::RunOptions;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;

use super::{DeclaredInput, Engine};
use crate::error::{Result, RuntimeError};
use crate::options::SessionOptions;
use crate::tensor::Tensor4;

pub(crate) mod isa;
pub(crate) mod rewrite;
mod tiled_conv;
mod tiled_deconv;

type Plan = Arc<TypedRunnableModel>;

/// The newest ONNX operator set ONNX Runtime 1.31 (the version CI pins)
/// loads; it refuses later ones as unreleased. tract reads ops by name and
/// would run a file stamped with any number, whose ops may mean something
/// else there; the same ceiling keeps the two back ends agreeing on which
/// files load.
pub(crate) const NEWEST_OPSET: i64 = 26;

pub(crate) struct TractSession {
    model: InferenceModel,
    run_options: RunOptions,
    threads: usize,
    /// The plan for `shape` and its reusable state.
    cached: Option<([usize; 4], TypedSimpleState)>,
}

fn invalid(path: &Path, reason: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::InvalidModel {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl TractSession {
    pub fn load(
        path: &Path,
        options: &SessionOptions,
    ) -> Result<(TractSession, HashMap<String, String>, DeclaredInput)> {
        // Read into memory instead of tract's mmap: a file truncated while
        // mapped would fault instead of returning an error.
        let bytes = std::fs::read(path).map_err(|reason| RuntimeError::Io {
            path: path.to_path_buf(),
            reason,
        })?;
        Self::load_bytes(path, &bytes, path.parent(), options)
    }

    /// Loads a model already in memory; `path` only names it in errors,
    /// `dir` is where external tensor data would be looked up (none for a
    /// buffer).
    pub fn load_bytes(
        path: &Path,
        bytes: &[u8],
        dir: Option<&Path>,
        options: &SessionOptions,
    ) -> Result<(TractSession, HashMap<String, String>, DeclaredInput)> {
        isa::tune_for_this_cpu();
        // PyTorch's dynamo exporter writes value_info tract cannot reconcile;
        // tract infers those shapes itself anyway.
        let onnx = tract_onnx::onnx().with_ignore_value_info(true);
        let proto = onnx
            .proto_model_for_read(&mut &*bytes)
            .map_err(|e| invalid(path, format!("cannot decode the protobuf: {e:#}")))?;
        let metadata: HashMap<String, String> = proto
            .metadata_props
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect();
        check_opset(path, &proto)?;
        let dir = dir.and_then(|d| d.to_str());
        let parsed = onnx
            .parse(&proto, dir)
            .map_err(|e| invalid(path, format!("{e:#}")))?;
        if !parsed.unresolved_inputs.is_empty() {
            return Err(invalid(
                path,
                format!("unresolved inputs {:?}", parsed.unresolved_inputs),
            ));
        }
        let model = parsed.model;
        let inputs = model.input_outlets().map_err(|e| invalid(path, e))?.len();
        if model
            .output_outlets()
            .map_err(|e| invalid(path, e))?
            .is_empty()
        {
            return Err(invalid(path, "the graph has no output"));
        }
        let declared = match inputs {
            1 => declared_input(model.input_fact(0).map_err(|e| invalid(path, e))?),
            count => DeclaredInput {
                count,
                rank: None,
                dims: vec![],
                not_f32: None,
            },
        };
        let run_options = RunOptions {
            executor: Some(executor(options.threads)?),
            ..RunOptions::default()
        };
        Ok((
            TractSession {
                model,
                run_options,
                threads: options.threads,
                cached: None,
            },
            metadata,
            declared,
        ))
    }

    /// Optimises the graph for `shape`.
    fn plan(&self, path: &Path, shape: [usize; 4]) -> Result<Plan> {
        let bad = |e: TractError| RuntimeError::BadInput {
            path: path.to_path_buf(),
            shape: shape.to_vec(),
            reason: format!("{e:#}"),
        };
        let fact = InferenceFact::dt_shape(f32::datum_type(), shape);
        self.model
            .clone()
            .with_input_fact(0, fact)
            .and_then(|m| m.into_typed())
            .and_then(|m| rewrite::optimize(m, self.threads))
            .and_then(|m| m.into_runnable_with_options(&self.run_options))
            .map_err(bad)
    }
}

impl Engine for TractSession {
    fn provider(&self) -> &'static str {
        "tract"
    }

    fn run(&mut self, path: &Path, input: &Tensor4) -> Result<Tensor4> {
        let state = match &mut self.cached {
            Some((shape, state)) if *shape == input.shape => state,
            _ => {
                self.cached = None;
                let plan = self.plan(path, input.shape)?;
                let state = plan.spawn().map_err(|e| RuntimeError::Inference {
                    provider: "tract".into(),
                    path: path.to_path_buf(),
                    reason: format!("{e:#}"),
                })?;
                &mut self.cached.insert((input.shape, state)).1
            }
        };
        let failed = |e: TractError| RuntimeError::Inference {
            provider: "tract".into(),
            path: path.to_path_buf(),
            reason: format!("{e:#}"),
        };
        let tensor = tract_ndarray::ArrayView4::from_shape(input.shape, &input.data)
            .map_err(|e| failed(e.into()))?;
        let x: Tensor = tensor.to_owned().into();
        let outputs = state.run(tvec!(x.into())).map_err(failed)?;
        let first = outputs
            .first()
            .ok_or_else(|| failed(TractError::msg("no output")))?;
        let view = first.to_plain_array_view::<f32>().map_err(failed)?;
        let dims = view.shape();
        let shape: [usize; 4] = dims.try_into().map_err(|_| {
            failed(TractError::msg(format!(
                "the first output has shape {dims:?}, expected rank 4"
            )))
        })?;
        Ok(Tensor4 {
            data: view.iter().copied().collect(),
            shape,
        })
    }
}

/// Refuses an operator set newer than [`NEWEST_OPSET`], or none below 1.
fn check_opset(path: &Path, proto: &tract_onnx::pb::ModelProto) -> Result<()> {
    let default_domain = proto
        .opset_import
        .iter()
        .find(|i| i.domain.is_empty() || i.domain == "ai.onnx");
    match default_domain.map(|i| i.version) {
        Some(v) if !(1..=NEWEST_OPSET).contains(&v) => Err(invalid(
            path,
            format!("ONNX operator set {v} is not supported (1 to {NEWEST_OPSET})"),
        )),
        _ => Ok(()),
    }
}

/// The input's rank, dimensions and element type as the file declares them.
fn declared_input(fact: &InferenceFact) -> DeclaredInput {
    let dims: Vec<Option<usize>> = fact
        .shape
        .dims()
        .map(|d| d.concretize().and_then(|d| d.to_usize().ok()))
        .collect();
    let rank = fact
        .shape
        .rank()
        .concretize()
        .and_then(|r| usize::try_from(r).ok());
    let not_f32 = fact
        .datum_type
        .concretize()
        .filter(|&dt| dt != f32::datum_type())
        .map(|dt| format!("{dt:?}").to_lowercase());
    DeclaredInput {
        count: 1,
        rank,
        dims,
        not_f32,
    }
}

/// tract's matrix products on a private pool of `threads` threads.
fn executor(threads: usize) -> Result<tract_linalg::multithread::Executor> {
    use tract_linalg::multithread::Executor;
    if threads <= 1 {
        return Ok(Executor::SingleThread);
    }
    // `Executor::multithread` panics when the OS refuses the threads.
    std::panic::catch_unwind(|| Executor::multithread_with_name(threads, "unet-tract")).map_err(
        |p| RuntimeError::BadOption {
            option: "threads",
            reason: format!(
                "cannot start {threads} threads: {}",
                crate::error::panic_message(p.as_ref())
            ),
        },
    )
}
