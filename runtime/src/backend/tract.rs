//! tract back end.
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

use crate::error::{Result, RuntimeError};
use crate::session::{SessionOptions, Tensor4};

type Plan = Arc<TypedRunnableModel>;

pub struct TractSession {
    model: InferenceModel,
    run_options: RunOptions,
    threads: usize,
    input_channels: Option<usize>,
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
    ) -> Result<(TractSession, HashMap<String, String>)> {
        super::tract_isa::tune_for_this_cpu();
        // Read into memory instead of tract's mmap: a file truncated while
        // mapped would fault instead of returning an error.
        let bytes = std::fs::read(path).map_err(|reason| RuntimeError::Io {
            path: path.to_path_buf(),
            reason,
        })?;
        // PyTorch's dynamo exporter writes value_info tract cannot reconcile;
        // tract infers those shapes itself anyway.
        let onnx = tract_onnx::onnx().with_ignore_value_info(true);
        let proto = onnx
            .proto_model_for_read(&mut bytes.as_slice())
            .map_err(|e| invalid(path, format!("cannot decode the protobuf: {e:#}")))?;
        let metadata: HashMap<String, String> = proto
            .metadata_props
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect();
        let dir = path.parent().and_then(|d| d.to_str());
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
        let inputs = model.input_outlets().map_err(|e| invalid(path, e))?;
        if inputs.len() != 1 {
            return Err(invalid(
                path,
                format!("expected one graph input, found {}", inputs.len()),
            ));
        }
        if model
            .output_outlets()
            .map_err(|e| invalid(path, e))?
            .is_empty()
        {
            return Err(invalid(path, "the graph has no output"));
        }
        let fact = model.input_fact(0).map_err(|e| invalid(path, e))?;
        let mut input_channels = None;
        if let Some(shape) = fact.shape.concretize() {
            if shape.len() != 4 {
                return Err(invalid(
                    path,
                    format!(
                        "the input has rank {} ({:?}); an image model takes NCHW (rank 4)",
                        shape.len(),
                        fact.shape
                    ),
                ));
            }
            input_channels = shape[1].to_usize().ok();
        } else if let Some(rank) = fact.shape.rank().concretize() {
            if rank != 4 {
                return Err(invalid(
                    path,
                    format!("the input has rank {rank}; an image model takes NCHW (rank 4)"),
                ));
            }
        }
        if input_channels.is_none() {
            input_channels = fact
                .shape
                .dims()
                .nth(1)
                .and_then(|d| d.concretize())
                .and_then(|d| d.to_usize().ok());
        }
        let run_options = RunOptions {
            executor: Some(executor(options.threads)?),
            ..RunOptions::default()
        };
        Ok((
            TractSession {
                model,
                run_options,
                threads: options.threads,
                input_channels,
                cached: None,
            },
            metadata,
        ))
    }

    pub fn input_channels(&self) -> Option<usize> {
        self.input_channels
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
            .and_then(|m| super::tract_conv::optimize(m, self.threads))
            .and_then(|m| m.into_runnable_with_options(&self.run_options))
            .map_err(bad)
    }

    pub fn run(&mut self, path: &Path, input: &Tensor4) -> Result<Tensor4> {
        if let Some(c) = self.input_channels {
            if input.shape[1] != c {
                return Err(RuntimeError::BadInput {
                    path: path.to_path_buf(),
                    shape: input.shape.to_vec(),
                    reason: format!("the model takes {c} input channels"),
                });
            }
        }
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
            .ok_or_else(|| failed(anyhow::anyhow!("no output")))?;
        let view = first.to_plain_array_view::<f32>().map_err(failed)?;
        let dims = view.shape();
        let shape: [usize; 4] = dims.try_into().map_err(|_| {
            failed(anyhow::anyhow!(
                "the first output has shape {dims:?}, expected rank 4"
            ))
        })?;
        Ok(Tensor4 {
            data: view.iter().copied().collect(),
            shape,
        })
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
