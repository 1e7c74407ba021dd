//! One ONNX graph loaded on one back end, run on raw NCHW tensors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::backend::{self, Engine};
use crate::error::{guard, Result, RuntimeError};
// Kept reachable as `crate::session::*` for the modules that import them from
// here; they live in `options` and `tensor`.
pub use crate::options::{Backend, Ep, SessionOptions};
pub use crate::tensor::Tensor4;

/// One loaded ONNX graph on one back end.
pub struct Session {
    engine: Box<dyn Engine>,
    path: PathBuf,
    metadata: HashMap<String, String>,
    input_dims: [Option<usize>; 4],
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("path", &self.path)
            .field("provider", &self.engine.provider())
            .field("input_dims", &self.input_dims)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn from_file(path: impl AsRef<Path>, backend: Backend) -> Result<Session> {
        Self::from_file_with(path, backend, &SessionOptions::default())
    }

    /// Loads `path`; refuses a graph that does not take exactly one f32
    /// tensor of rank 4.
    pub fn from_file_with(
        path: impl AsRef<Path>,
        backend: Backend,
        options: &SessionOptions,
    ) -> Result<Session> {
        let path = path.as_ref().to_path_buf();
        if options.threads == 0 {
            return Err(RuntimeError::BadOption {
                option: "threads",
                reason: "must be at least 1".into(),
            });
        }
        let loaded = guard("model loading", || backend::load(&path, backend, options))?;
        Ok(Session {
            engine: loaded.engine,
            path,
            metadata: loaded.metadata,
            input_dims: loaded.input_dims,
        })
    }

    /// Loads a model held in memory (firmware images carry it in flash);
    /// errors name it `<memory>`. Tract only: see [`backend::load_bytes`].
    pub fn from_bytes(bytes: &[u8], backend: Backend, options: &SessionOptions) -> Result<Session> {
        let path = PathBuf::from("<memory>");
        if options.threads == 0 {
            return Err(RuntimeError::BadOption {
                option: "threads",
                reason: "must be at least 1".into(),
            });
        }
        let loaded = guard("model loading", || {
            backend::load_bytes(&path, bytes, backend, options)
        })?;
        Ok(Session {
            engine: loaded.engine,
            path,
            metadata: loaded.metadata,
            input_dims: loaded.input_dims,
        })
    }

    /// Runs the graph on `input` and returns its first output unchanged.
    /// `input` must match every dimension the file fixes ([`Self::input_dims`]).
    pub fn run(&mut self, input: &Tensor4) -> Result<Tensor4> {
        let expected = input.shape.iter().product::<usize>();
        if input.data.len() != expected || expected == 0 {
            return Err(RuntimeError::BadInput {
                path: self.path.clone(),
                shape: input.shape.to_vec(),
                reason: format!(
                    "tensor holds {} values, its shape needs {expected} (and at least 1)",
                    input.data.len()
                ),
            });
        }
        backend::check_input(&self.path, &self.input_dims, input)?;
        let path = &self.path;
        let engine = &mut self.engine;
        guard("inference", move || engine.run(path, input))
    }

    /// What actually runs the graph: `tract`, `ort:CPUExecutionProvider`, ...
    pub fn provider(&self) -> &str {
        self.engine.provider()
    }

    /// f32 multiply-adds of one run at the last input shape, as the graph's
    /// ops report them (tract, after a first run; `None` on ONNX Runtime).
    /// Divided by a run's time: the GFLOP/s a benchmark compares with the
    /// CPU's FMA peak.
    pub fn fmas(&self) -> Option<u64> {
        self.engine.fmas()
    }

    /// The ONNX `metadata_props`.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The input's N, C, H, W as the file declares them: `Some` where it
    /// fixes a dimension, `None` where it leaves it symbolic.
    pub fn input_dims(&self) -> [Option<usize>; 4] {
        self.input_dims
    }

    /// Channels of the graph input when the file declares them.
    pub fn input_channels(&self) -> Option<usize> {
        self.input_dims[1]
    }
}
