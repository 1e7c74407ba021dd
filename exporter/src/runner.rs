//! Runs an ONNX graph on the runtime's back ends (tract, ONNX Runtime) for the
//! parity check, through the runtime crate's raw tensor API (the same code
//! path `unet-infer` uses).

use std::path::Path;

use unet_runtime::{Backend, Ep, Session};

pub use unet_runtime::Tensor4;

use crate::error::{ExportError, Result};

/// Which back end runs the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runner {
    Tract,
    /// ONNX Runtime on CPU, library from `ORT_DYLIB_PATH`.
    OrtCpu,
}

impl Runner {
    pub fn name(self) -> &'static str {
        match self {
            Runner::Tract => "tract",
            Runner::OrtCpu => "onnxruntime",
        }
    }

    /// tract always; ONNX Runtime when its shared library is found. The second
    /// list says why a back end is left out.
    pub fn available() -> (Vec<Runner>, Vec<(String, String)>) {
        let mut runners = vec![Runner::Tract];
        let mut skipped = Vec::new();
        if !cfg!(feature = "ort") {
            skipped.push((
                Runner::OrtCpu.name().to_string(),
                "unet-export was built without its `ort` feature".to_string(),
            ));
        } else if unet_runtime::ort_library().is_some() {
            runners.push(Runner::OrtCpu);
        } else {
            skipped.push((
                Runner::OrtCpu.name().to_string(),
                "no ONNX Runtime library: set ORT_DYLIB_PATH to libonnxruntime.so".to_string(),
            ));
        }
        (runners, skipped)
    }

    /// A session on this back end for one model file.
    pub fn open(self, path: &Path) -> Result<Session> {
        let backend = match self {
            Runner::Tract => Backend::Tract,
            Runner::OrtCpu => Backend::Ort(Ep::Cpu),
        };
        Session::from_file(path, backend).map_err(|e| ExportError::Backend {
            backend: self.name().into(),
            reason: e.to_string(),
        })
    }
}
