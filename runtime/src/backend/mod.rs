//! Back ends: each loads a model file (ONNX; tract also its NNEF archives), reports its `metadata_props` and what
//! the file declares about its input, and runs one NCHW `f32` tensor through
//! the graph. [`load`] picks the back end; the checks every back end shares
//! (one f32 input of rank 4, a tensor that fits its declared dimensions) are
//! made here, once.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Result, RuntimeError};
use crate::options::{Backend, Ep, SessionOptions};
use crate::tensor::Tensor4;

#[cfg(feature = "ort")]
pub(crate) mod ort;
#[cfg(feature = "tract-engine")]
pub(crate) mod tract;

/// A graph loaded on one back end.
pub(crate) trait Engine: Send {
    /// What runs the graph now: `tract`, `ort:CPUExecutionProvider`, ...
    fn provider(&self) -> &'static str;

    /// Runs `input`, already checked by [`check_input`], and returns the
    /// graph's first output unchanged.
    fn run(&mut self, path: &Path, input: &Tensor4) -> Result<Tensor4>;

    /// f32 multiply-adds of one run at the last input shape, as the graph's
    /// ops report them; `None` where the back end does not say.
    fn fmas(&self) -> Option<u64> {
        None
    }
}

/// A loaded graph with what its file declares.
pub(crate) struct Loaded {
    pub engine: Box<dyn Engine>,
    pub metadata: HashMap<String, String>,
    /// The input's declared N, C, H, W; `None` where the file leaves a
    /// dimension symbolic.
    pub input_dims: [Option<usize>; 4],
}

/// What a file declares about its graph inputs, as a back end reads it.
pub(crate) struct DeclaredInput {
    /// Graph inputs (initializers excluded).
    pub count: usize,
    /// `None` when the file leaves the rank open.
    pub rank: Option<usize>,
    /// Per declared axis: its size, `None` when symbolic.
    pub dims: Vec<Option<usize>>,
    /// The element type's name, when it is not f32: nothing else is fed.
    pub not_f32: Option<String>,
}

impl DeclaredInput {
    /// The declared N, C, H, W, or why no image tensor can be fed: the
    /// runtime feeds exactly one f32 NCHW tensor.
    pub fn check(self, path: &Path) -> Result<[Option<usize>; 4]> {
        let invalid = |reason: String| RuntimeError::InvalidModel {
            path: path.to_path_buf(),
            reason,
        };
        if self.count != 1 {
            return Err(invalid(format!(
                "expected one graph input, found {}",
                self.count
            )));
        }
        if let Some(rank) = self.rank.filter(|&r| r != 4) {
            return Err(invalid(format!(
                "the input has rank {rank}; an image model takes NCHW (rank 4)"
            )));
        }
        if let Some(elem) = self.not_f32 {
            return Err(invalid(format!(
                "the input is {elem}; the runtime feeds f32 tensors \
                 (an fp16 export keeps an f32 input)"
            )));
        }
        let mut dims = [None; 4];
        for (d, declared) in dims.iter_mut().zip(self.dims) {
            // Zero is no size a tensor can have: read it as "any", as ONNX
            // Runtime does for `dim_value: 0`.
            *d = declared.filter(|&n| n > 0);
        }
        Ok(dims)
    }
}

/// Refuses a tensor that differs from a dimension `declared` fixes, with the
/// same message on every back end (tract would otherwise re-plan the graph
/// for any shape, ONNX Runtime refuses it).
pub(crate) fn check_input(
    path: &Path,
    declared: &[Option<usize>; 4],
    input: &Tensor4,
) -> Result<()> {
    let bad = |reason: String| RuntimeError::BadInput {
        path: path.to_path_buf(),
        shape: input.shape.to_vec(),
        reason,
    };
    if let Some(c) = declared[1].filter(|&c| c != input.shape[1]) {
        return Err(bad(format!("the model takes {c} input channels")));
    }
    if let [Some(h), Some(w)] = [declared[2], declared[3]] {
        if [h, w] != [input.shape[2], input.shape[3]] {
            return Err(bad(format!(
                "the model's input is fixed at {w}x{h} (width x height)"
            )));
        }
    }
    let names = ["batch size", "channels", "height", "width"];
    for ((name, want), got) in names.iter().zip(declared).zip(input.shape) {
        if let Some(want) = want.filter(|&w| w != got) {
            return Err(bad(format!("the model fixes its input {name} at {want}")));
        }
    }
    Ok(())
}

/// Whether `bytes` begin a tract NNEF archive (a tar file, or a gzipped
/// one) rather than an ONNX protobuf, which starts with neither.
pub fn is_nnef_archive(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b]) || bytes.get(257..262) == Some(b"ustar")
}

/// Whether the file at `path` is an NNEF archive (false when unreadable:
/// the back end then reports the file's own error).
fn is_nnef_file(path: &Path) -> bool {
    use std::io::Read;
    let mut head = Vec::with_capacity(512);
    std::fs::File::open(path)
        .and_then(|f| f.take(512).read_to_end(&mut head))
        .is_ok_and(|_| is_nnef_archive(&head))
}

/// Loads `path` on `backend` (resolved from [`Backend::Auto`] here).
pub(crate) fn load(path: &Path, backend: Backend, options: &SessionOptions) -> Result<Loaded> {
    match backend {
        Backend::Auto if is_nnef_file(path) => load_tract(path, options),
        Backend::Auto => load(path, auto(options), options),
        Backend::Tract => load_tract(path, options),
        Backend::Ort(_) if is_nnef_file(path) => Err(RuntimeError::InvalidModel {
            path: path.to_path_buf(),
            reason: "an NNEF archive: it runs on tract (--backend tract); \
                     ONNX Runtime reads the ONNX file it was converted from"
                .into(),
        }),
        Backend::Ort(ep) => load_ort(path, &ep, options),
    }
}

/// Loads a model held in memory; `label` names it in errors. Only tract
/// reads a buffer: ONNX Runtime sessions here are built from a path (TensorRT
/// rebuilds them per input shape), so [`Backend::Auto`] means tract.
pub(crate) fn load_bytes(
    label: &Path,
    bytes: &[u8],
    backend: Backend,
    options: &SessionOptions,
) -> Result<Loaded> {
    match backend {
        #[cfg(feature = "tract-engine")]
        Backend::Auto | Backend::Tract => {
            let (engine, metadata, declared) =
                tract::TractSession::load_bytes(label, bytes, None, options)?;
            Ok(Loaded {
                input_dims: declared.check(label)?,
                engine: Box::new(engine),
                metadata,
            })
        }
        #[cfg(not(feature = "tract-engine"))]
        Backend::Auto | Backend::Tract => {
            let _ = (label, bytes, options);
            Err(RuntimeError::NotCompiled { backend: "tract" })
        }
        Backend::Ort(_) => Err(RuntimeError::OrtUnavailable {
            reason: "a model in memory loads on tract only; \
                     load the file by path for ONNX Runtime"
                .into(),
        }),
    }
}

/// ONNX Runtime on CPU when its library is found and loads, else tract.
fn auto(options: &SessionOptions) -> Backend {
    #[cfg(feature = "ort")]
    {
        let lib = crate::options::ort_library_with(options.ort_library.as_deref());
        if lib.is_some() && ort::environment(options).is_ok() {
            return Backend::Ort(Ep::Cpu);
        }
    }
    let _ = options;
    Backend::Tract
}

#[cfg(feature = "tract-engine")]
fn load_tract(path: &Path, options: &SessionOptions) -> Result<Loaded> {
    let (engine, metadata, declared) = tract::TractSession::load(path, options)?;
    Ok(Loaded {
        input_dims: declared.check(path)?,
        engine: Box::new(engine),
        metadata,
    })
}

#[cfg(not(feature = "tract-engine"))]
fn load_tract(_: &Path, _: &SessionOptions) -> Result<Loaded> {
    Err(RuntimeError::NotCompiled { backend: "tract" })
}

#[cfg(feature = "ort")]
fn load_ort(path: &Path, ep: &Ep, options: &SessionOptions) -> Result<Loaded> {
    let (engine, metadata, declared) = ort::OrtSession::load(path, ep, options)?;
    Ok(Loaded {
        input_dims: declared.check(path)?,
        engine: Box::new(engine),
        metadata,
    })
}

#[cfg(not(feature = "ort"))]
fn load_ort(_: &Path, _: &Ep, _: &SessionOptions) -> Result<Loaded> {
    Err(RuntimeError::NotCompiled { backend: "ort" })
}
