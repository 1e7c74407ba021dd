//! tract back end: the session (this file), reading ONNX files ([`onnx`],
//! feature `tract`) and tract's NNEF archives ([`nnef`], feature `nnef`),
//! the graph rewrite that puts the runtime's own convolution kernels into
//! tract's plan ([`rewrite`], [`tiled_conv`], [`tiled_deconv`]) and the CPU
//! tuning ([`isa`]).
//!
//! tract runs a graph fastest when every shape is concrete: a plan with
//! symbolic H/W measured 4.5-5x slower. So the graph is optimised for the
//! first input shape and the plan (and its state, which owns the
//! intermediate buffers) is reused until a frame of another shape arrives.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tract_core::prelude::*;
use tract_core::runtime::RunOptions;

use super::{DeclaredInput, Engine};
use crate::error::{Result, RuntimeError};
use crate::options::SessionOptions;
use crate::tensor::Tensor4;

mod attention_gate;
pub(crate) mod isa;
#[cfg(feature = "nnef")]
mod nnef;
#[cfg(feature = "tract")]
mod onnx;
mod pointwise_conv;
pub(crate) mod rewrite;
mod tiled_conv;
mod tiled_deconv;
mod tiled_winograd;

type Plan = Arc<TypedRunnableModel>;

/// The graph as its file describes it, before a frame size is bound.
enum Graph {
    /// tract-onnx's inference model: shapes are inferred per frame size.
    #[cfg(feature = "tract")]
    Onnx(tract_onnx::prelude::InferenceModel),
    /// tract's decluttered graph from an NNEF archive, N/H/W symbolic.
    #[cfg(feature = "nnef")]
    Nnef(TypedModel),
}

pub(crate) struct TractSession {
    graph: Graph,
    run_options: RunOptions,
    threads: usize,
    /// The plan for `shape`, its reusable state and its f32 FMAs per run.
    cached: Option<([usize; 4], TypedSimpleState, u64)>,
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

    /// Loads a model already in memory, an ONNX file or an NNEF archive by
    /// its content; `path` only names it in errors, `dir` is where ONNX
    /// external tensor data would be looked up (none for a buffer).
    pub fn load_bytes(
        path: &Path,
        bytes: &[u8],
        dir: Option<&Path>,
        options: &SessionOptions,
    ) -> Result<(TractSession, HashMap<String, String>, DeclaredInput)> {
        isa::tune_for_this_cpu();
        let (graph, metadata, declared) = if super::is_nnef_archive(bytes) {
            #[cfg(feature = "nnef")]
            {
                let (model, metadata, declared) = nnef::load(path, bytes)?;
                (Graph::Nnef(model), metadata, declared)
            }
            #[cfg(not(feature = "nnef"))]
            {
                let _ = dir;
                return Err(invalid(
                    path,
                    "an NNEF archive, and this build of the runtime reads ONNX only \
                     (cargo feature `nnef`)",
                ));
            }
        } else {
            #[cfg(feature = "tract")]
            {
                let (model, metadata, declared) = onnx::load(path, bytes, dir)?;
                (Graph::Onnx(model), metadata, declared)
            }
            #[cfg(not(feature = "tract"))]
            {
                let _ = dir;
                return Err(invalid(
                    path,
                    "not an NNEF archive, and this build of the runtime reads NNEF \
                     only (convert the ONNX file with `unet-export nnef`)",
                ));
            }
        };
        let run_options = RunOptions {
            executor: Some(executor(options.threads)?),
            ..RunOptions::default()
        };
        Ok((
            TractSession {
                graph,
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
        let typed = match &self.graph {
            #[cfg(feature = "tract")]
            Graph::Onnx(model) => onnx::typed(model, shape),
            #[cfg(feature = "nnef")]
            Graph::Nnef(model) => nnef::concretize(model, shape),
        };
        typed
            .and_then(|m| rewrite::optimize(m, self.threads))
            .and_then(|m| m.into_runnable_with_options(&self.run_options))
            .map_err(bad)
    }
}

impl Engine for TractSession {
    fn provider(&self) -> &'static str {
        "tract"
    }

    fn fmas(&self) -> Option<u64> {
        self.cached.as_ref().map(|(_, _, fmas)| *fmas)
    }

    fn run(&mut self, path: &Path, input: &Tensor4) -> Result<Tensor4> {
        let state = match &mut self.cached {
            Some((shape, state, _)) if *shape == input.shape => state,
            _ => {
                self.cached = None;
                let plan = self.plan(path, input.shape)?;
                let fmas = fmas(plan.model());
                let state = plan.spawn().map_err(|e| RuntimeError::Inference {
                    provider: "tract".into(),
                    path: path.to_path_buf(),
                    reason: format!("{e:#}"),
                })?;
                &mut self.cached.insert((input.shape, state, fmas)).1
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

/// The f32 FMAs of one run of `model`, as its ops (tract's and the
/// runtime's own) report them for their input shapes.
fn fmas(model: &TypedModel) -> u64 {
    let mut total = 0;
    for node in model.nodes() {
        let Ok(inputs) = model.node_input_facts(node.id) else {
            continue;
        };
        for (cost, count) in node.op.cost(&inputs).unwrap_or_default() {
            if cost == tract_core::ops::Cost::FMA(f32::datum_type()) {
                total += count.to_i64().map_or(0, |c| c.max(0) as u64);
            }
        }
    }
    total
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
