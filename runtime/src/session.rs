//! One ONNX graph loaded on one back end, run on raw NCHW tensors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{guard, Result, RuntimeError};

/// Which inference engine runs the graph.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Backend {
    /// tract: pure Rust, CPU, no system library (cargo feature `tract`, default).
    Tract,
    /// ONNX Runtime through `ort` (cargo feature `ort`), library loaded at run time.
    Ort(Ep),
    /// ONNX Runtime on CPU when its library is found and loads, else tract.
    #[default]
    Auto,
}

/// ONNX Runtime execution provider. GPU providers fall back to CPU, with a
/// log line, when the library or the machine lacks them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Ep {
    #[default]
    Cpu,
    Cuda {
        device: i32,
    },
    /// TensorRT (through ONNX Runtime); an optimisation profile is built for
    /// each concrete input shape, engines are cached in `cache_dir` if given.
    TensorRt {
        fp16: bool,
        cache_dir: Option<PathBuf>,
    },
}

impl std::str::FromStr for Backend {
    type Err = RuntimeError;
    /// `tract`, `ort` (= `ort-cpu`), `ort-cuda[:N]`, `ort-tensorrt`, `ort-tensorrt-fp16`, `auto`.
    fn from_str(s: &str) -> Result<Self> {
        let backend = match s {
            "tract" => Backend::Tract,
            "auto" => Backend::Auto,
            "ort" | "ort-cpu" => Backend::Ort(Ep::Cpu),
            "ort-tensorrt" | "ort-trt" => Backend::Ort(Ep::TensorRt {
                fp16: false,
                cache_dir: None,
            }),
            "ort-tensorrt-fp16" | "ort-trt-fp16" => Backend::Ort(Ep::TensorRt {
                fp16: true,
                cache_dir: None,
            }),
            _ => match s.strip_prefix("ort-cuda") {
                Some("") => Backend::Ort(Ep::Cuda { device: 0 }),
                Some(n) => {
                    let device = n.strip_prefix(':').and_then(|n| n.parse().ok()).ok_or(
                        RuntimeError::BadOption {
                            option: "backend",
                            reason: format!("`{s}`: expected ort-cuda or ort-cuda:N"),
                        },
                    )?;
                    Backend::Ort(Ep::Cuda { device })
                }
                None => {
                    return Err(RuntimeError::BadOption {
                        option: "backend",
                        reason: format!(
                            "`{s}`: expected tract, ort, ort-cuda[:N], ort-tensorrt[-fp16] or auto"
                        ),
                    })
                }
            },
        };
        Ok(backend)
    }
}

/// A dense `f32` tensor in NCHW layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor4 {
    pub data: Vec<f32>,
    pub shape: [usize; 4],
}

impl Tensor4 {
    /// Checks that `data` holds exactly `shape` elements.
    pub fn new(data: Vec<f32>, shape: [usize; 4]) -> Result<Self> {
        let expected = shape.iter().product::<usize>();
        if data.len() != expected {
            return Err(RuntimeError::BadOption {
                option: "tensor",
                reason: format!(
                    "shape {shape:?} needs {expected} values, got {}",
                    data.len()
                ),
            });
        }
        Ok(Tensor4 { data, shape })
    }

    pub fn zeros(shape: [usize; 4]) -> Self {
        Tensor4 {
            data: vec![0.0; shape.iter().product()],
            shape,
        }
    }

    /// Index of element `(n, c, y, x)` in `data`.
    #[inline]
    pub fn index(&self, n: usize, c: usize, y: usize, x: usize) -> usize {
        let [_, cs, h, w] = self.shape;
        ((n * cs + c) * h + y) * w + x
    }
}

/// Knobs shared by all back ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOptions {
    /// Intra-op threads (tract's matrix products, ONNX Runtime's intra-op pool).
    pub threads: usize,
    /// ONNX Runtime shared library; overrides `ORT_DYLIB_PATH`.
    pub ort_library: Option<PathBuf>,
}

impl Default for SessionOptions {
    /// Two threads: the edge boards this targets have few cores, and the
    /// benchmarks in the README are taken at two.
    fn default() -> Self {
        SessionOptions {
            threads: 2,
            ort_library: None,
        }
    }
}

/// The ONNX Runtime library `ort` would load: `configured` if given, else
/// `ORT_DYLIB_PATH`; `None` unless that file exists.
pub fn ort_library_with(configured: Option<&Path>) -> Option<PathBuf> {
    let path = match configured {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from(std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty())?),
    };
    path.is_file().then_some(path)
}

/// The ONNX Runtime library from `ORT_DYLIB_PATH`, if that file exists.
pub fn ort_library() -> Option<PathBuf> {
    ort_library_with(None)
}

// One per loaded model, never in a collection: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Inner {
    #[cfg(feature = "tract")]
    Tract(crate::backend::tract::TractSession),
    #[cfg(feature = "ort")]
    Ort(crate::backend::ort::OrtSession),
}

/// One loaded ONNX graph on one back end.
pub struct Session {
    inner: Inner,
    path: PathBuf,
    provider: String,
    metadata: HashMap<String, String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("path", &self.path)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn from_file(path: impl AsRef<Path>, backend: Backend) -> Result<Session> {
        Self::from_file_with(path, backend, &SessionOptions::default())
    }

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
        let backend = match backend {
            Backend::Auto => auto_backend(options),
            b => b,
        };
        guard("model loading", || match backend {
            Backend::Tract => load_tract(&path, options),
            Backend::Ort(ep) => load_ort(&path, &ep, options),
            Backend::Auto => Err(RuntimeError::NotCompiled { backend: "tract" }),
        })
    }

    /// Runs the graph on `input` and returns its first output unchanged.
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
        let path = &self.path;
        let inner = &mut self.inner;
        guard("inference", move || match inner {
            #[cfg(feature = "tract")]
            Inner::Tract(s) => s.run(path, input),
            #[cfg(feature = "ort")]
            Inner::Ort(s) => s.run(path, input),
            #[allow(unreachable_patterns)]
            _ => Err(RuntimeError::NotCompiled { backend: "tract" }),
        })
    }

    /// What actually runs the graph: `tract`, `ort:CPUExecutionProvider`, ...
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The ONNX `metadata_props`.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Channels of the graph input when the file declares them.
    pub fn input_channels(&self) -> Option<usize> {
        match &self.inner {
            #[cfg(feature = "tract")]
            Inner::Tract(s) => s.input_channels(),
            #[cfg(feature = "ort")]
            Inner::Ort(s) => s.input_channels(),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }
}

fn auto_backend(options: &SessionOptions) -> Backend {
    #[cfg(feature = "ort")]
    {
        let lib = ort_library_with(options.ort_library.as_deref());
        if lib.is_some() && crate::backend::ort::environment(options).is_ok() {
            return Backend::Ort(Ep::Cpu);
        }
    }
    let _ = options;
    Backend::Tract
}

#[cfg(feature = "tract")]
fn load_tract(path: &Path, options: &SessionOptions) -> Result<Session> {
    let (s, metadata) = crate::backend::tract::TractSession::load(path, options)?;
    Ok(Session {
        inner: Inner::Tract(s),
        path: path.to_path_buf(),
        provider: "tract".into(),
        metadata,
    })
}

#[cfg(not(feature = "tract"))]
fn load_tract(_: &Path, _: &SessionOptions) -> Result<Session> {
    Err(RuntimeError::NotCompiled { backend: "tract" })
}

#[cfg(feature = "ort")]
fn load_ort(path: &Path, ep: &Ep, options: &SessionOptions) -> Result<Session> {
    let (s, metadata) = crate::backend::ort::OrtSession::load(path, ep, options)?;
    let provider = format!("ort:{}", s.provider());
    Ok(Session {
        inner: Inner::Ort(s),
        path: path.to_path_buf(),
        provider,
        metadata,
    })
}

#[cfg(not(feature = "ort"))]
fn load_ort(_: &Path, _: &Ep, _: &SessionOptions) -> Result<Session> {
    Err(RuntimeError::NotCompiled { backend: "ort" })
}
