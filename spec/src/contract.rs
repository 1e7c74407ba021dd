//! A model file's whole contract read from its metadata (safetensors metadata
//! or ONNX `metadata_props`), with documented defaults for files that carry
//! none, e.g. a plain `torch.onnx.export`.

use std::collections::HashMap;

use crate::config::UNetConfig;
use crate::error::{Result, SpecError};
use crate::geometry::{InputGeometry, SizeRule, DEFAULT_SIZE_MULTIPLE};
use crate::head::Head;
use crate::keys;
use crate::preprocessing::Preprocessing;
use crate::provenance::Provenance;

/// Everything about a model that pre- and post-processing use.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// The `unet.config` metadata, when the file has it.
    pub config: Option<UNetConfig>,
    pub preprocessing: Preprocessing,
    pub head: Head,
    /// The graph normalises itself: feed pixels scaled to [0, 1].
    pub normalize_in_graph: bool,
    pub fp16: bool,
    pub in_channels: usize,
    /// From the config; `None` until the first output is seen otherwise.
    pub out_channels: Option<usize>,
    /// Which input sizes the graph accepts.
    pub size_rule: SizeRule,
    /// The size and resize the model was trained at; `None` for files that
    /// do not record it (older exports, foreign ONNX files).
    pub input_geometry: Option<InputGeometry>,
    pub provenance: Option<Provenance>,
}

fn bad(key: &str, reason: impl Into<String>) -> SpecError {
    SpecError::BadMetadata {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// The metadata value of a boolean key (absent = false).
fn flag(metadata: &HashMap<String, String>, key: &str) -> Result<bool> {
    match metadata.get(key).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(bad(key, format!("`{other}`: expected true or false"))),
    }
}

impl ModelInfo {
    /// Reads `metadata`; `graph_channels` is the input channel count the
    /// graph declares, used when the metadata is absent and checked when not.
    pub fn from_metadata(
        metadata: &HashMap<String, String>,
        graph_channels: Option<usize>,
    ) -> Result<Self> {
        let config = metadata
            .get(keys::CONFIG)
            .map(|json| UNetConfig::from_json(json))
            .transpose()
            .map_err(|e| bad(keys::CONFIG, e.to_string()))?;
        if let (Some(cfg), Some(c)) = (&config, graph_channels) {
            if c != cfg.in_channels {
                return Err(bad(
                    keys::CONFIG,
                    format!(
                        "in_channels {} but the graph input has {c}",
                        cfg.in_channels
                    ),
                ));
            }
        }
        let in_channels = config
            .as_ref()
            .map(|c| c.in_channels)
            .or(graph_channels)
            .unwrap_or(3);
        let preprocessing = match metadata.get(keys::PREPROCESSING) {
            None => Preprocessing::default_for_channels(in_channels),
            Some(json) => {
                let pre = Preprocessing::from_json(json)?;
                pre.validate(in_channels)?;
                pre
            }
        };
        let head = match metadata.get(keys::HEAD) {
            None => Head::Logits,
            Some(h) => h.parse()?,
        };
        let size_rule = match &config {
            Some(c) => SizeRule::of(c),
            None => SizeRule::Same {
                multiple: match metadata.get(keys::SIZE_MULTIPLE) {
                    None => DEFAULT_SIZE_MULTIPLE,
                    Some(m) => m
                        .parse::<usize>()
                        .ok()
                        .filter(|&m| (1..=4096).contains(&m))
                        .ok_or_else(|| {
                            bad(keys::SIZE_MULTIPLE, format!("`{m}`: expected 1..=4096"))
                        })?,
                },
            },
        };
        let input_geometry = metadata
            .get(keys::INPUT_GEOMETRY)
            .map(|json| InputGeometry::from_json(json))
            .transpose()?;
        if let (Some(g), SizeRule::Same { multiple }) = (&input_geometry, size_rule) {
            if g.width % multiple != 0 || g.height % multiple != 0 {
                return Err(bad(
                    keys::INPUT_GEOMETRY,
                    format!("{}x{} is not a multiple of {multiple}", g.width, g.height),
                ));
            }
        }
        let provenance = metadata
            .get(keys::PROVENANCE)
            .map(|json| Provenance::from_json(json))
            .transpose()?;
        Ok(ModelInfo {
            out_channels: config.as_ref().map(|c| c.out_channels),
            config,
            preprocessing,
            head,
            normalize_in_graph: flag(metadata, keys::NORMALIZE_IN_GRAPH)?,
            fp16: flag(metadata, keys::FP16)?,
            in_channels,
            size_rule,
            input_geometry,
            provenance,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::ResizeMode;
    use crate::resample::Filter;

    fn unet16() -> HashMap<String, String> {
        let cfg = UNetConfig::preset("unet-16").unwrap();
        HashMap::from([
            (keys::CONFIG.to_string(), cfg.to_json()),
            (
                keys::PREPROCESSING.to_string(),
                Preprocessing::default_for(&cfg).to_json(),
            ),
        ])
    }

    #[test]
    fn a_file_without_metadata_gets_the_documented_defaults() {
        let info = ModelInfo::from_metadata(&HashMap::new(), Some(1)).unwrap();
        assert_eq!(info.in_channels, 1);
        assert_eq!(info.head, Head::Logits);
        assert_eq!(info.size_rule, SizeRule::Same { multiple: 16 });
        assert_eq!(info.input_geometry, None);
        assert_eq!(info.preprocessing.mean, vec![0.5]);
    }

    #[test]
    fn reads_geometry_and_provenance() {
        let mut m = unet16();
        let g = InputGeometry {
            width: 128,
            height: 96,
            resize: ResizeMode::Stretch,
            filter: Filter::Bilinear,
            size_multiple: 16,
        };
        m.insert(keys::INPUT_GEOMETRY.into(), g.to_json());
        let p = Provenance {
            imgsz: [96, 128],
            names: [(0, "polyp".to_string())].into(),
            date: "2026-11-24T13:17:39Z".into(),
            tool: "unet-train 0.1.0".into(),
            data_fingerprint: "0123456789abcdef".into(),
            data_files: 400,
            git_commit: None,
        };
        m.insert(keys::PROVENANCE.into(), p.to_json());
        let info = ModelInfo::from_metadata(&m, Some(3)).unwrap();
        assert_eq!(info.input_geometry, Some(g));
        assert_eq!(info.provenance, Some(p));
    }

    #[test]
    fn refuses_contradictions() {
        let m = unet16();
        assert!(ModelInfo::from_metadata(&m, Some(1)).is_err(), "channels");
        let mut odd = unet16();
        let g = InputGeometry {
            width: 120,
            height: 96,
            resize: ResizeMode::Stretch,
            filter: Filter::Bilinear,
            size_multiple: 8,
        };
        odd.insert(keys::INPUT_GEOMETRY.into(), g.to_json());
        assert!(ModelInfo::from_metadata(&odd, Some(3)).is_err(), "multiple");
        let mut head = unet16();
        head.insert(keys::HEAD.into(), "tanh".into());
        assert!(ModelInfo::from_metadata(&head, Some(3)).is_err(), "head");
        let mut std0 = unet16();
        std0.insert(
            keys::PREPROCESSING.into(),
            r#"{"mean":[0,0,0],"std":[1,0,1]}"#.into(),
        );
        assert!(ModelInfo::from_metadata(&std0, Some(3)).is_err(), "std");
    }
}
