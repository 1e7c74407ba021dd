//! How a session is asked for: the back end, its execution provider, and the
//! knobs shared by all back ends.

use std::path::{Path, PathBuf};

use crate::error::{Result, RuntimeError};

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
/// log line, when the library or the machine lacks them, unless
/// [`SessionOptions::strict_backend`] is set.
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

/// Knobs shared by all back ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOptions {
    /// Intra-op threads (tract's matrix products, ONNX Runtime's intra-op pool).
    pub threads: usize,
    /// ONNX Runtime shared library; overrides `ORT_DYLIB_PATH`.
    pub ort_library: Option<PathBuf>,
    /// Refuse to fall back: a requested execution provider (CUDA, TensorRT)
    /// that cannot run here is an error naming the reason, at load or, for
    /// TensorRT's engine, on the first frame. [`Backend::Auto`] names no
    /// provider and still picks what is there.
    pub strict_backend: bool,
}

impl Default for SessionOptions {
    /// Two threads: the edge boards this targets have few cores, and the
    /// benchmarks in the README are taken at two.
    fn default() -> Self {
        SessionOptions {
            threads: 2,
            ort_library: None,
            strict_backend: false,
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
