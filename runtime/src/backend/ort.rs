//! ONNX Runtime back end through `ort` with `load-dynamic`.
//!
//! `ort` panics when it cannot load the library on first use, so the library
//! is loaded explicitly through [`ort::init_from`] (which returns an error)
//! before any other `ort` call, once per process; every call into `ort` is
//! additionally wrapped in `catch_unwind` by [`crate::Session`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session as OrtRaw;
use ort::value::TensorRef;

use crate::error::{panic_message, Result, RuntimeError};
use crate::session::{ort_library_with, Ep, SessionOptions, Tensor4};

/// The library can be loaded once per process; remember what happened.
static ENVIRONMENT: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);

/// The process-wide ONNX Runtime environment, loading the library on first use.
pub fn environment(options: &SessionOptions) -> Result<Environment> {
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

pub struct OrtSession {
    session: OrtRaw,
    provider: &'static str,
    input_channels: Option<usize>,
    /// TensorRT needs a concrete optimisation profile: its session is built
    /// per input shape and kept while the shape stays.
    tensorrt: Option<TensorRtState>,
    threads: usize,
}

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

/// Reads the model file first: a missing file is an I/O error, not an ORT one.
fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|reason| RuntimeError::Io {
        path: path.to_path_buf(),
        reason,
    })
}

fn cpu_session(env: &Environment, path: &Path, bytes: &[u8], threads: usize) -> Result<OrtRaw> {
    builder(env, threads)
        .and_then(|mut b| b.commit_from_memory(bytes))
        .map_err(|e| invalid(path, e))
}

impl OrtSession {
    pub fn load(
        path: &Path,
        ep: &Ep,
        options: &SessionOptions,
    ) -> Result<(OrtSession, HashMap<String, String>)> {
        let env = environment(options)?;
        let bytes = read(path)?;
        let threads = options.threads;
        let (session, provider, tensorrt) = match ep {
            Ep::Cpu => (
                cpu_session(&env, path, &bytes, threads)?,
                "CPUExecutionProvider",
                None,
            ),
            Ep::Cuda { device } => {
                let cuda = ep::CUDA::default().with_device_id(*device);
                match with_ep(&env, &bytes, threads, cuda.build().error_on_failure()) {
                    Ok(s) => (s, "CUDAExecutionProvider", None),
                    Err(reason) => {
                        log::warn!("CUDA execution provider unavailable ({reason}); running on CPUExecutionProvider");
                        (
                            cpu_session(&env, path, &bytes, threads)?,
                            "CPUExecutionProvider",
                            None,
                        )
                    }
                }
            }
            Ep::TensorRt { fp16, cache_dir } => {
                // TensorRT needs CUDA underneath; check the build has both
                // before promising it. The engine itself is built on the
                // first frame, when the input shape is known.
                let available = ep::TensorRT::is_available().unwrap_or(false)
                    && ep::CUDA::is_available().unwrap_or(false);
                let session = cpu_session(&env, path, &bytes, threads)?;
                if available {
                    let state = TensorRtState {
                        fp16: *fp16,
                        cache_dir: cache_dir.clone(),
                        shape: None,
                    };
                    (session, "TensorrtExecutionProvider", Some(state))
                } else {
                    log::warn!("TensorRT execution provider not in this ONNX Runtime build; running on CPUExecutionProvider");
                    (session, "CPUExecutionProvider", None)
                }
            }
        };
        let metadata = metadata(&session).map_err(|e| invalid(path, e))?;
        let (input_channels, rank) = input_info(&session);
        if session.inputs().len() != 1 {
            return Err(invalid(
                path,
                format!("expected one graph input, found {}", session.inputs().len()),
            ));
        }
        if let Some(rank) = rank {
            if rank != 4 {
                return Err(invalid(
                    path,
                    format!("the input has rank {rank}; an image model takes NCHW (rank 4)"),
                ));
            }
        }
        log::info!("{}: running on {provider}", path.display());
        let mut s = OrtSession {
            session,
            provider,
            input_channels,
            tensorrt,
            threads,
        };
        // Keep the bytes only as long as needed: TensorRT rebuilds from the file.
        drop(bytes);
        if s.tensorrt.is_some() {
            s.provider = "TensorrtExecutionProvider";
        }
        Ok((s, metadata))
    }

    pub fn provider(&self) -> &'static str {
        self.provider
    }

    pub fn input_channels(&self) -> Option<usize> {
        self.input_channels
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
        let bytes = read(path)?;
        match with_ep(
            &env,
            &bytes,
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
            Err(reason) => {
                log::warn!("TensorRT execution provider failed ({reason}); running on CPUExecutionProvider");
                self.session = cpu_session(&env, path, &bytes, self.threads)?;
                self.tensorrt = None;
                self.provider = "CPUExecutionProvider";
            }
        }
        Ok(())
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
        self.ensure_tensorrt(path, input.shape)?;
        let provider = self.provider;
        let failed = |e: ort::Error| RuntimeError::Inference {
            provider: format!("ort:{provider}"),
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
    bytes: &[u8],
    threads: usize,
    ep: ep::ExecutionProviderDispatch,
) -> std::result::Result<OrtRaw, String> {
    builder(env, threads)
        .and_then(|b| {
            b.with_execution_providers([ep])
                .map_err(|e| -> ort::Error { e.into() })
        })
        .and_then(|mut b| b.commit_from_memory(bytes))
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

/// Declared channel count and rank of the first input.
fn input_info(session: &OrtRaw) -> (Option<usize>, Option<usize>) {
    match session.inputs().first().map(|i| i.dtype()) {
        Some(ort::value::ValueType::Tensor { shape, .. }) => {
            let channels = shape.get(1).and_then(|&c| usize::try_from(c).ok());
            (channels, Some(shape.len()))
        }
        _ => (None, None),
    }
}
