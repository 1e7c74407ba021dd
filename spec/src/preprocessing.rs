//! How pixels become the network's input and probabilities become a mask:
//! normalisation, channel order, threshold and class names.

use serde::{Deserialize, Serialize};

use crate::config::UNetConfig;
use crate::error::{Result, SpecError};
use crate::keys;

/// Channel order the network expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    #[default]
    Rgb,
    Bgr,
    Gray,
}

/// Pre- and post-processing; travels with the weights as JSON under
/// [`keys::PREPROCESSING`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocessing {
    /// Per-channel mean subtracted from pixel values scaled to [0, 1].
    pub mean: Vec<f32>,
    /// Per-channel standard deviation the centred values are divided by.
    pub std: Vec<f32>,
    /// Probability above which a pixel is foreground (binary models).
    #[serde(default = "default_threshold")]
    pub threshold: f32,
    /// One name per output class; for binary models the foreground name.
    #[serde(default)]
    pub class_names: Vec<String>,
    #[serde(default)]
    pub channel_order: ChannelOrder,
}

fn default_threshold() -> f32 {
    0.5
}

impl Preprocessing {
    /// ImageNet statistics for 3 channels, 0.5/0.5 otherwise.
    pub fn default_for(cfg: &UNetConfig) -> Self {
        let mut pre = Self::default_for_channels(cfg.in_channels);
        pre.class_names = if cfg.out_channels == 1 {
            vec!["foreground".to_string()]
        } else {
            (0..cfg.out_channels).map(|c| format!("class{c}")).collect()
        };
        pre
    }

    /// The defaults for a file that records nothing but its input channels.
    pub fn default_for_channels(in_channels: usize) -> Self {
        let (mean, std, order) = if in_channels == 3 {
            (
                vec![0.485, 0.456, 0.406],
                vec![0.229, 0.224, 0.225],
                ChannelOrder::Rgb,
            )
        } else {
            (
                vec![0.5; in_channels],
                vec![0.5; in_channels],
                ChannelOrder::Gray,
            )
        };
        Preprocessing {
            mean,
            std,
            threshold: 0.5,
            class_names: Vec::new(),
            channel_order: order,
        }
    }

    /// Parses without validating (see [`Preprocessing::validate`]).
    pub fn from_json(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|e| SpecError::BadMetadata {
            key: keys::PREPROCESSING.into(),
            reason: e.to_string(),
        })
    }

    pub fn to_json(&self) -> String {
        // Serialising plain data cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Rejects statistics no pixel can be normalised with, for a network of
    /// `in_channels` inputs, and a threshold no probability can be compared with.
    pub fn validate(&self, in_channels: usize) -> Result<()> {
        let bad = |reason: String| {
            Err(SpecError::BadMetadata {
                key: keys::PREPROCESSING.into(),
                reason,
            })
        };
        if self.mean.len() != in_channels || self.std.len() != in_channels {
            return bad(format!(
                "{} means and {} stds for {in_channels} input channels",
                self.mean.len(),
                self.std.len()
            ));
        }
        if self.std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
            return bad("std must be finite and non-zero".into());
        }
        if self.mean.iter().any(|m| !m.is_finite()) {
            return bad("mean must be finite".into());
        }
        validate_threshold(self.threshold).or_else(bad)?;
        if self.channel_order == ChannelOrder::Gray && in_channels != 1 {
            return bad(format!(
                "channel_order gray with {in_channels} input channels"
            ));
        }
        Ok(())
    }
}

impl Preprocessing {
    /// `(x - mean) / std` per channel of `[C, H, W]` values in [0, 1], in place:
    /// the one normalisation training and inference share.
    pub fn normalise(&self, planar: &mut crate::resample::Planar) {
        normalise(planar, &self.mean, &self.std);
    }
}

/// `(x - mean[c]) / std[c]` over `[C, H, W]` values, in place.
pub fn normalise(planar: &mut crate::resample::Planar, mean: &[f32], std: &[f32]) {
    let plane = planar.width * planar.height;
    for (c, values) in planar.data.chunks_exact_mut(plane).enumerate() {
        let (m, s) = (mean[c], std[c]);
        for v in values {
            *v = (*v - m) / s;
        }
    }
}

/// A probability threshold must lie in `[0, 1)`: at 1 or above (or NaN) no
/// pixel is ever foreground.
pub fn validate_threshold(t: f32) -> std::result::Result<(), String> {
    if (0.0..1.0).contains(&t) {
        Ok(())
    } else {
        Err(format!("threshold {t} must be in [0, 1)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keeps_the_documented_spelling() {
        let cfg = UNetConfig::preset("unet-16").unwrap();
        let pre = Preprocessing::default_for(&cfg);
        let json = pre.to_json();
        assert!(json.contains("\"channel_order\":\"rgb\""), "{json}");
        assert_eq!(Preprocessing::from_json(&json).unwrap(), pre);
        pre.validate(3).unwrap();
    }

    #[test]
    fn refuses_what_no_pixel_can_be_normalised_with() {
        let base = Preprocessing::default_for_channels(3);
        let mut zero_std = base.clone();
        zero_std.std[1] = 0.0;
        let mut one_mean = base.clone();
        one_mean.mean = vec![0.5];
        let mut nan_threshold = base.clone();
        nan_threshold.threshold = f32::NAN;
        let mut high_threshold = base.clone();
        high_threshold.threshold = 2.0;
        for (name, p) in [
            ("std 0", zero_std),
            ("one mean", one_mean),
            ("NaN threshold", nan_threshold),
            ("threshold 2", high_threshold),
        ] {
            assert!(p.validate(3).is_err(), "{name} accepted");
        }
        assert!(base.validate(1).is_err(), "3 means for 1 channel accepted");
    }
}
