//! ONNX Runtime back end through `ort` with `load-dynamic`.
//!
//! `ort` panics when it cannot load the library on first use, so the library
//! is loaded explicitly through [`ort::init_from`] (which returns an error)
//! before any other `ort` call, once per process; every call into `ort` is
//! additionally wrapped in `catch_unwind` by [`crate::Session`].
//!
//! Sessions are built from the file's path, never from its bytes: ONNX
//! Runtime resolves external data against the model's folder only when it
//! knows where the model lives (from memory it would use the working
//! directory).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session as OrtRaw;
use ort::value::TensorRef;

use super::{DeclaredInput, Engine};
use crate::error::{panic_message, Result, RuntimeError};
use crate::options::{ort_library_with, Ep, SessionOptions};
use crate::tensor::Tensor4;

/// The library can be loaded once per process; remember what happened.
static ENVIRONMENT: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);

/// The process-wide ONNX Runtime environment, loading the library on first use.
pub(crate) fn environment(options: &SessionOptions) -> Result<Environment> {
    let path = ort_library_with(options.ort_library.as_deref());
    // An explicitly configured library must exist even when one is loaded.
    if let (Some(p), None) = (&options.ort_library, &path) {
        return Err(unavailable(format!(
            "the configured library {} does not exist",
            p.display()
        )));
    }
    let mut guard = ENVIRONMENT
        .lock()
        .map_err(|_| unavailable("a previous load attempt panicked".into()))?;
    if let Some((loaded, env)) = guard.as_ref() {
        if let Some(p) = path.filter(|p| p != loaded) {
            log::warn!(
                "ONNX Runtime is already loaded from {}; ignoring {}",
                loaded.display(),
                p.display()
            );
        }
        return Ok(env.clone());
    }
    let path = path.ok_or_else(|| {
        unavailable(match std::env::var_os("ORT_DYLIB_PATH") {
            Some(v) if !v.is_empty() => format!(
                "ORT_DYLIB_PATH={} does not name an existing file",
                Path::new(&v).display()
            ),
            _ => "set ORT_DYLIB_PATH to the onnxruntime shared library \
                  (e.g. libonnxruntime.so.1.* from the onnxruntime Python wheel)"
                .to_string(),
        })
    })?;
    let loaded = std::panic::catch_unwind(|| {
        ort::init_from(&path)
            .map_err(|e| format!("cannot load {}: {e}", path.display()))
            .and_then(|b| {
                b.with_name("unet-runtime").build().map_err(|e| {
                    format!("cannot create an environment from {}: {e}", path.display())
                })
            })
    });
    let env = match loaded {
        Ok(Ok(env)) => env,
        Ok(Err(reason)) => return Err(unavailable(reason)),
        Err(p) => return Err(unavailable(panic_message(p.as_ref()))),
    };
    log::info!("ONNX Runtime loaded from {}", path.display());
    *guard = Some((path, env.clone()));
    Ok(env)
}

fn unavailable(reason: String) -> RuntimeError {
    RuntimeError::OrtUnavailable { reason }
}

pub(crate) struct OrtSession {
    session: OrtRaw,
    provider: &'static str,
    /// TensorRT needs a concrete optimisation profile: its session is built
    /// per input shape and kept while the shape stays.
    tensorrt: Option<TensorRtState>,
    threads: usize,
    /// [`SessionOptions::strict_backend`]: a failed TensorRT engine is an error.
    strict: bool,
}

const CPU: &str = "ort:CPUExecutionProvider";
const CUDA: &str = "ort:CUDAExecutionProvider";
const TENSORRT: &str = "ort:TensorrtExecutionProvider";

struct TensorRtState {
    fp16: bool,
    cache_dir: Option<PathBuf>,
    shape: Option<[usize; 4]>,
}

fn invalid(path: &Path, reason: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::InvalidModel {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn builder(
    env: &Environment,
    threads: usize,
) -> ort::Result<ort::session::builder::SessionBuilder> {
    OrtRaw::builder(env)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| -> ort::Error { e.into() })?
        .with_intra_threads(threads)
        .map_err(|e| -> ort::Error { e.into() })
}

/// Opens the model file first: a missing or unreadable file is an I/O error,
/// not an ONNX Runtime one.
fn check_readable(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|reason| RuntimeError::Io {
            path: path.to_path_buf(),
            reason,
        })
}

fn cpu_session(env: &Environment, path: &Path, threads: usize) -> Result<OrtRaw> {
    builder(env, threads)
        .and_then(|mut b| b.commit_from_file(path))
        .map_err(|e| invalid(path, e))
}

/// The error for a requested provider that cannot run, in strict mode.
fn provider_unavailable(provider: &'static str, reason: String) -> RuntimeError {
    RuntimeError::ProviderUnavailable { provider, reason }
}

impl OrtSession {
    pub fn load(
        path: &Path,
        ep: &Ep,
        options: &SessionOptions,
    ) -> Result<(OrtSession, HashMap<String, String>, DeclaredInput)> {
        let env = environment(options)?;
        check_readable(path)?;
        let threads = options.threads;
        let strict = options.strict_backend;
        let (session, provider, tensorrt) = match ep {
            Ep::Cpu => (cpu_session(&env, path, threads)?, CPU, None),
            Ep::Cuda { device } => {
                let cuda = ep::CUDA::default().with_device_id(*device);
                match with_ep(&env, path, threads, cuda.build().error_on_failure()) {
                    Ok(s) => (s, CUDA, None),
                    Err(reason) if strict => {
                        return Err(provider_unavailable("CUDAExecutionProvider", reason))
                    }
                    Err(reason) => {
                        log::warn!("CUDA execution provider unavailable ({reason}); running on CPUExecutionProvider");
                        (cpu_session(&env, path, threads)?, CPU, None)
                    }
                }
            }
            Ep::TensorRt { fp16, cache_dir } => {
                // TensorRT needs CUDA underneath; check the build has both
                // before promising it. The engine itself is built on the
                // first frame, when the input shape is known.
                let available = ep::TensorRT::is_available().unwrap_or(false)
                    && ep::CUDA::is_available().unwrap_or(false);
                if !available && strict {
                    return Err(provider_unavailable(
                        "TensorrtExecutionProvider",
                        "this ONNX Runtime build lacks the TensorRT or CUDA execution provider"
                            .into(),
                    ));
                }
                let session = cpu_session(&env, path, threads)?;
                if available {
                    let state = TensorRtState {
                        fp16: *fp16,
                        cache_dir: cache_dir.clone(),
                        shape: None,
                    };
                    (session, TENSORRT, Some(state))
                } else {
                    log::warn!("TensorRT execution provider not in this ONNX Runtime build; running on CPUExecutionProvider");
                    (session, CPU, None)
                }
            }
        };
        let metadata = metadata(&session).map_err(|e| invalid(path, e))?;
        let declared = declared_input(&session);
        log::info!("{}: running on {provider}", path.display());
        let s = OrtSession {
            session,
            provider,
            tensorrt,
            threads,
            strict,
        };
        Ok((s, metadata, declared))
    }

    /// Builds the TensorRT session for `shape` unless it exists already.
    fn ensure_tensorrt(&mut self, path: &Path, shape: [usize; 4]) -> Result<()> {
        let Some(trt) = self.tensorrt.as_mut() else {
            return Ok(());
        };
        if trt.shape == Some(shape) {
            return Ok(());
        }
        let env = environment(&SessionOptions::default())?;
        let name = self
            .session
            .inputs()
            .first()
            .map(|i| i.name().to_string())
            .unwrap_or_default();
        let dims = shape.map(|d| d.to_string()).join("x");
        let profile = format!("{name}:{dims}");
        let mut tensorrt = ep::TensorRT::default()
            .with_fp16(trt.fp16)
            .with_profile_min_shapes(&profile)
            .with_profile_opt_shapes(&profile)
            .with_profile_max_shapes(&profile);
        if let Some(dir) = &trt.cache_dir {
            tensorrt = tensorrt
                .with_engine_cache(true)
                .with_engine_cache_path(dir.display())
                .with_timing_cache(true)
                .with_timing_cache_path(dir.display());
        }
        match with_ep(
            &env,
            path,
            self.threads,
            tensorrt.build().error_on_failure(),
        ) {
            Ok(session) => {
                self.session = session;
                trt.shape = Some(shape);
                log::info!(
                    "{}: TensorRT engine ready for {dims} (fp16: {})",
                    path.display(),
                    trt.fp16
                );
            }
            Err(reason) if self.strict => {
                return Err(provider_unavailable("TensorrtExecutionProvider", reason))
            }
            Err(reason) => {
                log::warn!("TensorRT execution provider failed ({reason}); running on CPUExecutionProvider");
                self.session = cpu_session(&env, path, self.threads)?;
                self.tensorrt = None;
                self.provider = CPU;
            }
        }
        Ok(())
    }
}

impl Engine for OrtSession {
    fn provider(&self) -> &'static str {
        self.provider
    }

    fn run(&mut self, path: &Path, input: &Tensor4) -> Result<Tensor4> {
        self.ensure_tensorrt(path, input.shape)?;
        let provider = self.provider;
        let failed = |e: ort::Error| RuntimeError::Inference {
            provider: provider.to_string(),
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let shape = input.shape.map(|d| d as i64);
        let tensor = TensorRef::from_array_view((shape, input.data.as_slice())).map_err(failed)?;
        let outputs = self.session.run(ort::inputs![tensor]).map_err(failed)?;
        if outputs.len() == 0 {
            return Err(failed(ort::Error::new("the graph returned no output")));
        }
        let (out_shape, data) = outputs[0].try_extract_tensor::<f32>().map_err(failed)?;
        let dims: Vec<usize> = out_shape.iter().map(|&d| d.max(0) as usize).collect();
        let shape: [usize; 4] = dims.as_slice().try_into().map_err(|_| {
            failed(ort::Error::new(format!(
                "the first output has shape {dims:?}, expected rank 4"
            )))
        })?;
        Ok(Tensor4 {
            data: data.to_vec(),
            shape,
        })
    }
}

fn with_ep(
    env: &Environment,
    path: &Path,
    threads: usize,
    ep: ep::ExecutionProviderDispatch,
) -> std::result::Result<OrtRaw, String> {
    builder(env, threads)
        .and_then(|b| {
            b.with_execution_providers([ep])
                .map_err(|e| -> ort::Error { e.into() })
        })
        .and_then(|mut b| b.commit_from_file(path))
        .map_err(|e| e.to_string())
}

fn metadata(session: &OrtRaw) -> ort::Result<HashMap<String, String>> {
    let meta = session.metadata()?;
    let mut map = HashMap::new();
    for key in meta.custom_keys()? {
        if let Some(value) = meta.custom(&key) {
            map.insert(key, value);
        }
    }
    Ok(map)
}

/// What the file declares about its graph inputs.
fn declared_input(session: &OrtRaw) -> DeclaredInput {
    let count = session.inputs().len();
    match session.inputs().first().map(|i| i.dtype()) {
        Some(ort::value::ValueType::Tensor { ty, shape, .. }) => DeclaredInput {
            count,
            rank: Some(shape.len()),
            // Symbolic dimensions are -1.
            dims: shape.iter().map(|&d| usize::try_from(d).ok()).collect(),
            not_f32: (*ty != ort::value::TensorElementType::Float32).then(|| ty.to_string()),
        },
        Some(other) => DeclaredInput {
            count,
            rank: None,
            dims: vec![],
            not_f32: Some(other.to_string()),
        },
        None => DeclaredInput {
            count,
            rank: None,
            dims: vec![],
            not_f32: None,
        },
    }
}
