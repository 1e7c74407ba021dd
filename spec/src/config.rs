//! The network's hyper-parameters and the named presets, serialised as JSON
//! under [`crate::keys::CONFIG`] in every model file.

use serde::{Deserialize, Serialize};

use crate::error::{Result, SpecError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    /// Zero-padded 3x3 convolutions: output size equals input size.
    Same,
    /// Unpadded convolutions as in Ronneberger et al. 2015; skips are cropped.
    Valid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Upsampling {
    /// 2x2 transposed convolution, stride 2, halving the channels.
    Transposed,
    /// Bilinear x2 (align_corners = true) with the channel halving moved into
    /// the convolutions, exactly as milesial/Pytorch-UNet's `bilinear=True`.
    Bilinear,
}

/// Architecture hyper-parameters. Field names are the JSON keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    #[serde(default = "default_base_width")]
    pub base_width: usize,
    #[serde(default = "default_depth")]
    pub depth: usize,
    #[serde(default = "default_padding")]
    pub padding: Padding,
    #[serde(default = "default_true")]
    pub batch_norm: bool,
    #[serde(default = "default_upsampling")]
    pub upsampling: Upsampling,
    /// Dropout probability applied at the end of the contracting path (after the bottleneck).
    #[serde(default)]
    pub dropout: f32,
    /// Additive attention gates on every skip connection (Oktay et al. 2018).
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
fn default_true() -> bool {
    true
}
fn default_upsampling() -> Upsampling {
    Upsampling::Transposed
}

/// The names accepted by [`UNetConfig::preset`].
pub const PRESET_NAMES: &[&str] = &[
    "unet-paper",
    "unet",
    "unet-bilinear",
    "attention-unet",
    "unet-16",
    "unet-32",
    "unet-bilinear-16",
    "unet-bilinear-32",
    "attention-unet-16",
    "attention-unet-32",
];

impl UNetConfig {
    /// A named preset. Edge presets (`-16`, `-32`) are the same architectures at
    /// base width 16 or 32.
    pub fn preset(name: &str) -> Result<Self> {
        let (family, width) = match name.rsplit_once('-') {
            Some((family, "16")) => (family, 16),
            Some((family, "32")) => (family, 32),
            _ => (name, 64),
        };
        let unet = UNetConfig {
            in_channels: 3,
            out_channels: 1,
            base_width: width,
            depth: 4,
            padding: Padding::Same,
            batch_norm: true,
            upsampling: Upsampling::Transposed,
            dropout: 0.0,
            attention: false,
        };
        let cfg = match family {
            "unet-paper" if width == 64 => UNetConfig {
                in_channels: 1,
                out_channels: 2,
                padding: Padding::Valid,
                batch_norm: false,
                dropout: 0.5,
                ..unet
            },
            "unet" => unet,
            "unet-bilinear" => UNetConfig {
                upsampling: Upsampling::Bilinear,
                ..unet
            },
            "attention-unet" => UNetConfig {
                attention: true,
                ..unet
            },
            _ => {
                return Err(SpecError::UnknownPreset {
                    name: name.to_string(),
                    known: PRESET_NAMES.join(", "),
                })
            }
        };
        Ok(cfg)
    }

    pub fn from_json(json: &str) -> Result<Self> {
        let cfg: UNetConfig =
            serde_json::from_str(json).map_err(|e| SpecError::BadConfig(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_json(&self) -> String {
        // Serialising plain data cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Rejects configurations no network can be built from.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(SpecError::BadConfig(m.to_string()));
        if self.in_channels == 0 || self.out_channels == 0 {
            return bad("in_channels and out_channels must be at least 1");
        }
        if self.depth == 0 || self.depth > 8 {
            return bad("depth must be between 1 and 8");
        }
        if self.base_width < 2 || !self.base_width.is_multiple_of(2) {
            return bad("base_width must be an even number of at least 2");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout must be in [0, 1)");
        }
        Ok(())
    }

    /// Channels of encoder level `level` (0 = full resolution); `level == depth` is the bottleneck.
    pub fn width(&self, level: usize) -> usize {
        self.base_width << level
    }

    /// Spatial sizes must be multiples of this (`same` padding).
    pub fn size_multiple(&self) -> usize {
        1 << self.depth
    }
}
