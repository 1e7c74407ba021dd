//! Self-describing safetensors files: PyTorch `state_dict` names, the config
//! and preprocessing as JSON metadata, strict validation on load.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors};

use crate::arch::{Graph, ParamKind, ParamSpec};
use crate::config::{Preprocessing, UNetConfig, CONFIG_KEY, PREPROCESSING_KEY};
use crate::error::{ModelError, Result};
use crate::model::UNet;

/// Metadata key naming the tool that wrote the file.
pub const PRODUCER_KEY: &str = "unet.producer";

/// A model read from disk with what its file says about it.
pub struct LoadedModel {
    pub model: UNet,
    pub preprocessing: Preprocessing,
    /// All metadata entries of the file, including ones this crate does not interpret.
    pub metadata: HashMap<String, String>,
}

/// Where the configuration comes from when loading.
#[derive(Debug, Clone, Default)]
pub enum ConfigSource {
    /// The file's own metadata (an error when it has none).
    #[default]
    Metadata,
    /// Use this configuration; the file's metadata config, if any, is ignored.
    Explicit(UNetConfig),
}

/// Reads only the header metadata (config, preprocessing) of a safetensors file.
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let bytes = read(path)?;
    let (_, metadata) = SafeTensors::read_metadata(&bytes).map_err(|e| not_safetensors(path, e))?;
    Ok(metadata.metadata().clone().unwrap_or_default())
}

/// Loads and validates a model: every tensor present with the right shape and
/// dtype, none unexpected, all finite. Errors name the file and the first
/// offending tensor.
pub fn load(path: &Path, source: ConfigSource, device: &Device) -> Result<LoadedModel> {
    load_bytes(path, &read(path)?, source, device)
}

/// [`load`] of a file already in memory (e.g. converted from a PyTorch
/// checkpoint); `path` names it in errors.
pub fn load_bytes(
    path: &Path,
    bytes: &[u8],
    source: ConfigSource,
    device: &Device,
) -> Result<LoadedModel> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| not_safetensors(path, e))?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| not_safetensors(path, e))?;
    let metadata = header.metadata().clone().unwrap_or_default();

    let config = match source {
        ConfigSource::Explicit(cfg) => cfg,
        ConfigSource::Metadata => {
            let json = metadata
                .get(CONFIG_KEY)
                .ok_or_else(|| ModelError::MissingMetadata {
                    path: path.to_path_buf(),
                    key: CONFIG_KEY.into(),
                })?;
            UNetConfig::from_json(json).map_err(|e| bad_metadata(path, CONFIG_KEY, e))?
        }
    };
    let graph = Graph::build(&config)?;
    let preprocessing = match metadata.get(PREPROCESSING_KEY) {
        Some(json) => {
            Preprocessing::from_json(json).map_err(|e| bad_metadata(path, PREPROCESSING_KEY, e))?
        }
        None => Preprocessing::default_for(&config),
    };
    preprocessing
        .validate(config.in_channels)
        .map_err(|e| bad_metadata(path, PREPROCESSING_KEY, e))?;
    // The rest of the contract (geometry, provenance) must read back too.
    unet_spec::ModelInfo::from_metadata(&metadata, Some(config.in_channels))
        .map_err(|e| bad_metadata(path, "unet.*", e))?;
    let tensors = checked_tensors(path, &st, &graph)?;
    let model = UNet::from_named_tensors(graph, tensors, device, 0)?;
    Ok(LoadedModel {
        model,
        preprocessing,
        metadata,
    })
}

/// Checks the file's tensors against the graph's `state_dict` and converts them.
fn checked_tensors(
    path: &Path,
    st: &SafeTensors,
    graph: &Graph,
) -> Result<HashMap<String, Tensor>> {
    let specs = graph.params();
    let mut out = HashMap::with_capacity(specs.len());
    for spec in &specs {
        let view = match st.tensor(&spec.name) {
            Ok(view) => view,
            // Older PyTorch state_dicts lack the counter; it only matters for momentum=None.
            Err(_) if spec.kind == ParamKind::NumBatchesTracked => continue,
            Err(_) => {
                return Err(ModelError::MissingTensor {
                    path: path.to_path_buf(),
                    name: spec.name.clone(),
                    shape: spec.shape.clone(),
                })
            }
        };
        let tensor = tensor_from_view(path, &spec.name, spec, &view)?;
        out.insert(spec.name.clone(), tensor);
    }
    let known: HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let mut names = st.names();
    names.sort_unstable();
    if let Some(name) = names.into_iter().find(|n| !known.contains(n)) {
        return Err(ModelError::UnexpectedTensor {
            path: path.to_path_buf(),
            name: name.to_string(),
        });
    }
    Ok(out)
}

/// One stored tensor as the parameter `spec` (file name `name`): checks its
/// dtype, shape and that every weight is finite, naming the tensor on failure.
pub(crate) fn tensor_from_view(
    path: &Path,
    name: &str,
    spec: &ParamSpec,
    view: &safetensors::tensor::TensorView<'_>,
) -> Result<Tensor> {
    let expected = match spec.kind {
        ParamKind::NumBatchesTracked => Dtype::I64,
        _ => Dtype::F32,
    };
    if view.dtype() != expected {
        return Err(ModelError::DtypeMismatch {
            path: path.to_path_buf(),
            name: name.to_string(),
            expected: format!("{expected:?}"),
            got: format!("{:?}", view.dtype()),
        });
    }
    if view.shape() != spec.shape.as_slice() {
        return Err(ModelError::ShapeMismatch {
            path: path.to_path_buf(),
            name: name.to_string(),
            expected: spec.shape.clone(),
            got: view.shape().to_vec(),
        });
    }
    if expected == Dtype::I64 {
        return Ok(Tensor::from_raw_buffer(
            view.data(),
            DType::I64,
            &[],
            &Device::Cpu,
        )?);
    }
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(ModelError::NonFinite {
            path: path.to_path_buf(),
            name: name.to_string(),
            index,
            value,
        });
    }
    Ok(Tensor::from_vec(
        values,
        spec.shape.as_slice(),
        &Device::Cpu,
    )?)
}

/// Writes the model's `state_dict` with its config and preprocessing in the
/// metadata. The file appears atomically: a crash never leaves half of it.
pub fn save(
    model: &UNet,
    preprocessing: &Preprocessing,
    extra_metadata: &HashMap<String, String>,
    path: &Path,
) -> Result<()> {
    let mut metadata = extra_metadata.clone();
    metadata.insert(CONFIG_KEY.into(), model.config().to_json());
    metadata.insert(PREPROCESSING_KEY.into(), preprocessing.to_json());
    metadata.insert(
        PRODUCER_KEY.into(),
        format!("unet-models {}", env!("CARGO_PKG_VERSION")),
    );
    // safetensors needs host memory; move once rather than per tensor.
    let tensors: Vec<(String, Tensor)> = model
        .state_dict()
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(tensors, Some(metadata)).map_err(|e| ModelError::Io {
        path: path.to_path_buf(),
        reason: std::io::Error::other(e.to_string()),
    })?;
    atomic_write(path, &bytes)
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, then renames it
/// over `path`, so readers see either the old file or the whole new one.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let io_err = |reason| ModelError::Io {
        path: path.to_path_buf(),
        reason,
    };
    let mut tmp = temp_file_beside(path, ".tmp-", "").map_err(io_err)?;
    tmp.write_all(bytes).map_err(io_err)?;
    tmp.as_file().sync_all().map_err(io_err)?;
    tmp.persist(path).map_err(|e| io_err(e.error))?;
    Ok(())
}

/// A temporary file in `path`'s folder, to be renamed onto `path`: mode
/// 0666 less the umask, as `File::create` gives (tempfile's default, 0600,
/// would hide models in a shared folder from its other users).
pub fn temp_file_beside(
    path: &Path,
    prefix: &str,
    suffix: &str,
) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(prefix).suffix(suffix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder.tempfile_in(&dir).map_err(without_temp_path)
}

/// tempfile's errors name its random temp file (twice, in their text); the
/// error this goes into names the path the user asked for, so only the reason stays.
pub fn without_temp_path(e: std::io::Error) -> std::io::Error {
    use std::io::ErrorKind;
    if e.raw_os_error().is_some() {
        return e;
    }
    let reason = match e.kind() {
        ErrorKind::NotFound => "its folder does not exist".to_string(),
        ErrorKind::PermissionDenied => "no permission to write in its folder".to_string(),
        kind => kind.to_string(),
    };
    std::io::Error::new(e.kind(), reason)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|reason| ModelError::Io {
        path: path.to_path_buf(),
        reason,
    })
}

fn not_safetensors(path: &Path, e: safetensors::SafeTensorError) -> ModelError {
    ModelError::NotSafetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn bad_metadata(path: &Path, key: &str, e: unet_spec::SpecError) -> ModelError {
    let (key, reason) = match e {
        unet_spec::SpecError::BadMetadata { key, reason } => (key, reason),
        other => (key.to_string(), other.to_string()),
    };
    ModelError::BadMetadata {
        path: path.to_path_buf(),
        key,
        reason,
    }
}
