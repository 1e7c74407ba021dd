//! What the runtime needs to know about a model, read from ONNX
//! `metadata_props` (written by `unet-export`), with documented defaults for
//! files that carry none (e.g. a plain `torch.onnx.export`).
//!
//! The structs mirror `unet_models::{UNetConfig, Preprocessing}` field by
//! field; the runtime keeps its own copies so it never links candle.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Result, RuntimeError};

/// Metadata key holding the U-Net config JSON.
pub const CONFIG_KEY: &str = "unet.config";
/// Metadata key holding the preprocessing JSON.
pub const PREPROCESSING_KEY: &str = "unet.preprocessing";
/// Optional: what the graph's output already is (`logits`, `sigmoid`, `softmax`, `argmax`).
pub const HEAD_KEY: &str = "unet.head";
/// Optional: `"true"` when the graph itself applies `(x - mean) / std`.
pub const NORMALIZE_IN_GRAPH_KEY: &str = "unet.normalize_in_graph";

/// Size multiple assumed for a `same` model whose file does not say (16 = depth 4).
pub const DEFAULT_SIZE_MULTIPLE: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    Same,
    Valid,
}

/// Mirror of `unet_models::UNetConfig` (only what inference needs is used).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ModelConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    #[serde(default = "default_base_width")]
    pub base_width: usize,
    #[serde(default = "default_depth")]
    pub depth: usize,
    #[serde(default = "default_padding")]
    pub padding: Padding,
    #[serde(default)]
    pub batch_norm: Option<bool>,
    #[serde(default)]
    pub upsampling: Option<String>,
    #[serde(default)]
    pub dropout: f32,
    #[serde(default)]
    pub attention: bool,
}

fn default_base_width() -> usize {
    64
}
fn default_depth() -> usize {
    4
}
fn default_padding() -> Padding {
    Padding::Same
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelOrder {
    Rgb,
    Bgr,
    Gray,
}

/// Mirror of `unet_models::Preprocessing`.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessing {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub threshold: f32,
    pub class_names: Vec<String>,
    pub channel_order: ChannelOrder,
}

#[derive(Deserialize)]
struct RawPreprocessing {
    mean: Vec<f32>,
    std: Vec<f32>,
    #[serde(default = "default_threshold")]
    threshold: f32,
    #[serde(default)]
    class_names: Vec<String>,
    #[serde(default = "default_order")]
    channel_order: String,
}

fn default_threshold() -> f32 {
    0.5
}
fn default_order() -> String {
    "rgb".into()
}

impl Preprocessing {
    /// ImageNet statistics and RGB for 3 channels, 0.5/0.5 and gray otherwise
    /// (the same defaults `unet-models` writes), threshold 0.5.
    pub fn default_for(in_channels: usize) -> Self {
        if in_channels == 3 {
            Preprocessing {
                mean: vec![0.485, 0.456, 0.406],
                std: vec![0.229, 0.224, 0.225],
                threshold: 0.5,
                class_names: Vec::new(),
                channel_order: ChannelOrder::Rgb,
            }
        } else {
            Preprocessing {
                mean: vec![0.5; in_channels],
                std: vec![0.5; in_channels],
                threshold: 0.5,
                class_names: Vec::new(),
                channel_order: ChannelOrder::Gray,
            }
        }
    }
}

/// What the graph's output is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// Raw scores: the runtime applies sigmoid (1 channel) or softmax.
    Logits,
    /// Probabilities already (1 channel).
    Sigmoid,
    /// Probabilities already (C channels).
    Softmax,
    /// One channel holding the class index.
    Argmax,
}

/// How input size relates to output size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Geometry {
    /// Output size = input size; input sides must be multiples of `multiple`.
    Same { multiple: usize },
    /// Unpadded convolutions (Ronneberger et al.): two 3x3 convs per level,
    /// `depth` 2x2 poolings; the output is smaller than the input.
    Valid { depth: usize },
}

impl Geometry {
    /// Output side for an input side of `n`, or `None` when `n` is not accepted.
    pub fn output_side(&self, n: usize) -> Option<usize> {
        match *self {
            Geometry::Same { multiple } => (n > 0 && n % multiple == 0).then_some(n),
            Geometry::Valid { depth } => {
                // Mirrors unet_models::arch: per level two 3x3 convs (-4) then a pool.
                let mut s = n;
                for _ in 0..depth {
                    s = s.checked_sub(4).filter(|&s| s > 0 && s % 2 == 0)? / 2;
                }
                s = s.checked_sub(4).filter(|&s| s > 0)?;
                for _ in 0..depth {
                    s = (s * 2).checked_sub(4).filter(|&s| s > 0)?;
                }
                Some(s)
            }
        }
    }

    /// The smallest accepted input side whose output covers `n`, with the
    /// output's offset into the input (the margin cut off at each side).
    pub fn input_for_output(&self, n: usize) -> Option<(usize, usize, usize)> {
        let start = match *self {
            Geometry::Same { multiple } => n.max(1).div_ceil(multiple) * multiple,
            Geometry::Valid { depth } => n.max(1) + self.total_margin(depth),
        };
        // Accepted valid sizes recur every 2^depth, so this search is short.
        (start..start + 4096).find_map(|i| {
            let o = self.output_side(i)?;
            (o >= n).then_some((i, o, (i - o) / 2))
        })
    }

    fn total_margin(&self, depth: usize) -> usize {
        // Each level loses 4 px at its scale on the way down and up, the bottleneck once.
        12 * (1 << depth) - 8
    }

    /// Pixels lost at each side (0 for `same`); 92 for the paper's depth-4 U-Net.
    pub fn margin(&self) -> usize {
        match *self {
            Geometry::Same { .. } => 0,
            Geometry::Valid { depth } => self.total_margin(depth) / 2,
        }
    }
}

/// Everything about a model that pre- and post-processing use.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// The `unet.config` metadata, when the file has it.
    pub config: Option<ModelConfig>,
    pub preprocessing: Preprocessing,
    pub head: Head,
    /// The graph normalises itself: feed pixels scaled to [0, 1].
    pub normalize_in_graph: bool,
    pub in_channels: usize,
    /// From the config; `None` until the first output is seen otherwise.
    pub out_channels: Option<usize>,
    pub geometry: Geometry,
}

impl ModelInfo {
    /// Reads the metadata of `path`; `graph_channels` is the input channel
    /// count the graph declares, used when the metadata is absent.
    pub fn from_metadata(
        path: &Path,
        metadata: &HashMap<String, String>,
        graph_channels: Option<usize>,
    ) -> Result<Self> {
        let bad = |key: &str, reason: String| RuntimeError::BadMetadata {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        let config = metadata
            .get(CONFIG_KEY)
            .map(|json| serde_json::from_str::<ModelConfig>(json))
            .transpose()
            .map_err(|e| bad(CONFIG_KEY, e.to_string()))?;
        if let Some(cfg) = &config {
            if cfg.in_channels == 0 || cfg.out_channels == 0 || cfg.depth == 0 || cfg.depth > 8 {
                return Err(bad(
                    CONFIG_KEY,
                    "in_channels, out_channels must be >= 1 and depth in 1..=8".into(),
                ));
            }
            if let Some(c) = graph_channels {
                if c != cfg.in_channels {
                    return Err(bad(
                        CONFIG_KEY,
                        format!(
                            "in_channels {} but the graph input has {c}",
                            cfg.in_channels
                        ),
                    ));
                }
            }
        }
        let in_channels = config
            .as_ref()
            .map(|c| c.in_channels)
            .or(graph_channels)
            .unwrap_or(3);
        let preprocessing = match metadata.get(PREPROCESSING_KEY) {
            None => Preprocessing::default_for(in_channels),
            Some(json) => {
                let raw: RawPreprocessing = serde_json::from_str(json)
                    .map_err(|e| bad(PREPROCESSING_KEY, e.to_string()))?;
                let channel_order = match raw.channel_order.as_str() {
                    "rgb" => ChannelOrder::Rgb,
                    "bgr" => ChannelOrder::Bgr,
                    "gray" => ChannelOrder::Gray,
                    other => {
                        return Err(bad(
                            PREPROCESSING_KEY,
                            format!("channel_order `{other}`: expected rgb, bgr or gray"),
                        ))
                    }
                };
                if raw.mean.len() != in_channels || raw.std.len() != in_channels {
                    return Err(bad(
                        PREPROCESSING_KEY,
                        format!(
                            "{} means and {} stds for {in_channels} input channels",
                            raw.mean.len(),
                            raw.std.len()
                        ),
                    ));
                }
                if raw.std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
                    return Err(bad(
                        PREPROCESSING_KEY,
                        "std must be finite and non-zero".into(),
                    ));
                }
                Preprocessing {
                    mean: raw.mean,
                    std: raw.std,
                    threshold: raw.threshold,
                    class_names: raw.class_names,
                    channel_order,
                }
            }
        };
        let head = match metadata.get(HEAD_KEY).map(String::as_str) {
            None | Some("logits") => Head::Logits,
            Some("sigmoid") => Head::Sigmoid,
            Some("softmax") => Head::Softmax,
            Some("argmax") => Head::Argmax,
            Some(other) => {
                return Err(bad(
                    HEAD_KEY,
                    format!("`{other}`: expected logits, sigmoid, softmax or argmax"),
                ))
            }
        };
        let normalize_in_graph = match metadata.get(NORMALIZE_IN_GRAPH_KEY).map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(bad(
                    NORMALIZE_IN_GRAPH_KEY,
                    format!("`{other}`: expected true or false"),
                ))
            }
        };
        let geometry = match &config {
            Some(c) if c.padding == Padding::Valid => Geometry::Valid { depth: c.depth },
            Some(c) => Geometry::Same {
                multiple: 1 << c.depth,
            },
            None => Geometry::Same {
                multiple: DEFAULT_SIZE_MULTIPLE,
            },
        };
        Ok(ModelInfo {
            out_channels: config.as_ref().map(|c| c.out_channels),
            config,
            preprocessing,
            head,
            normalize_in_graph,
            in_channels,
            geometry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_geometry() {
        // Ronneberger et al. 2015: 572 -> 388, 92 px lost per side.
        let g = Geometry::Valid { depth: 4 };
        assert_eq!(g.output_side(572), Some(388));
        assert_eq!(g.margin(), 92);
        assert_eq!(g.output_side(573), None);
        assert_eq!(g.input_for_output(388), Some((572, 388, 92)));
        // depth 1: n -> n - 16.
        let g = Geometry::Valid { depth: 1 };
        assert_eq!(g.output_side(20), Some(4));
        assert_eq!(g.input_for_output(5), Some((22, 6, 8)));
    }

    #[test]
    fn same_geometry() {
        let g = Geometry::Same { multiple: 16 };
        assert_eq!(g.output_side(48), Some(48));
        assert_eq!(g.output_side(50), None);
        assert_eq!(g.input_for_output(50), Some((64, 64, 0)));
    }
}
