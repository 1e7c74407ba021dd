//! Sizes: which input sizes a network accepts ([`SizeRule`]), and the input
//! geometry a model was trained at ([`InputGeometry`]): the size every frame
//! was brought to and how. The runtime's default reproduces the latter, so a
//! device runs the model at the scale it learned.

use serde::{Deserialize, Serialize};

use crate::config::{Padding, UNetConfig};
use crate::error::{Result, SpecError};
use crate::keys;
use crate::resample::{resample, Filter, Planar};

/// How input side relates to output side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeRule {
    /// Output size = input size; input sides must be multiples of `multiple`.
    Same { multiple: usize },
    /// Unpadded convolutions (Ronneberger et al.): two 3x3 convs per level,
    /// `depth` 2x2 poolings; the output is smaller than the input.
    Valid { depth: usize },
}

/// Size multiple assumed for a file that does not say (16 = depth 4).
pub const DEFAULT_SIZE_MULTIPLE: usize = 16;

impl SizeRule {
    pub fn of(cfg: &UNetConfig) -> Self {
        match cfg.padding {
            Padding::Valid => SizeRule::Valid { depth: cfg.depth },
            Padding::Same => SizeRule::Same {
                multiple: cfg.size_multiple(),
            },
        }
    }

    /// Output side for an input side of `n`, or `None` when `n` is not accepted.
    pub fn output_side(&self, n: usize) -> Option<usize> {
        match *self {
            SizeRule::Same { multiple } => (n > 0 && n.is_multiple_of(multiple)).then_some(n),
            SizeRule::Valid { depth } => {
                // As the architecture: per level two 3x3 convs (-4) then a pool.
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
            SizeRule::Same { multiple } => n.max(1).div_ceil(multiple) * multiple,
            SizeRule::Valid { depth } => n.max(1) + Self::total_margin(depth),
        };
        // Accepted valid sizes recur every 2^depth, so this search is short.
        (start..start + 4096).find_map(|i| {
            let o = self.output_side(i)?;
            (o >= n).then_some((i, o, (i - o) / 2))
        })
    }

    fn total_margin(depth: usize) -> usize {
        // Each level loses 4 px at its scale on the way down and up, the bottleneck once.
        12 * (1 << depth) - 8
    }

    /// Pixels lost at each side (0 for `same`); 92 for the paper's depth-4 U-Net.
    pub fn margin(&self) -> usize {
        match *self {
            SizeRule::Same { .. } => 0,
            SizeRule::Valid { depth } => Self::total_margin(depth) / 2,
        }
    }
}

/// How a frame was brought to the training size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// Resized to exactly `width x height`, aspect ratio not kept.
    Stretch,
    /// Resized to fit inside `width x height` with the aspect ratio kept, the
    /// rest zero-padded (black, as an endoscope's own border).
    Letterbox,
}

impl ResizeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ResizeMode::Stretch => "stretch",
            ResizeMode::Letterbox => "letterbox",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [ResizeMode::Stretch, ResizeMode::Letterbox]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// The geometry a model was trained and validated at (metadata
/// [`keys::INPUT_GEOMETRY`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputGeometry {
    /// The network input size during training.
    pub width: usize,
    pub height: usize,
    pub resize: ResizeMode,
    /// The resampling filter images were resized with.
    pub filter: Filter,
    /// Sizes the network accepts are multiples of this (`same` padding).
    pub size_multiple: usize,
}

/// Where the frame landed in the network input: the frame, resized to
/// `scaled_w x scaled_h`, starts at `(left, top)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub frame_w: usize,
    pub frame_h: usize,
    pub scaled_w: usize,
    pub scaled_h: usize,
    pub left: usize,
    pub top: usize,
}

impl InputGeometry {
    pub fn from_json(json: &str) -> Result<Self> {
        let g: InputGeometry = serde_json::from_str(json).map_err(|e| SpecError::BadMetadata {
            key: keys::INPUT_GEOMETRY.into(),
            reason: e.to_string(),
        })?;
        g.validate()?;
        Ok(g)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| SpecError::BadMetadata {
            key: keys::INPUT_GEOMETRY.into(),
            reason,
        };
        let max = crate::size::MAX_SIDE;
        if self.width == 0 || self.height == 0 || self.width > max || self.height > max {
            return Err(bad(format!(
                "size {}x{} outside 1..={max}",
                self.width, self.height
            )));
        }
        if self.size_multiple == 0
            || !self.width.is_multiple_of(self.size_multiple)
            || !self.height.is_multiple_of(self.size_multiple)
        {
            return Err(bad(format!(
                "size {}x{} is not a multiple of {}",
                self.width, self.height, self.size_multiple
            )));
        }
        Ok(())
    }

    /// Where a `frame_w x frame_h` frame lands in the network input.
    pub fn placement(&self, frame_w: usize, frame_h: usize) -> Placement {
        let (scaled_w, scaled_h) = match self.resize {
            ResizeMode::Stretch => (self.width, self.height),
            ResizeMode::Letterbox => {
                let s = f64::min(
                    self.width as f64 / frame_w as f64,
                    self.height as f64 / frame_h as f64,
                );
                let side = |n: usize, max: usize| ((n as f64 * s).round() as usize).clamp(1, max);
                (side(frame_w, self.width), side(frame_h, self.height))
            }
        };
        Placement {
            frame_w,
            frame_h,
            scaled_w,
            scaled_h,
            left: (self.width - scaled_w) / 2,
            top: (self.height - scaled_h) / 2,
        }
    }

    /// Brings a frame (`[C, H, W]`, values in [0, 1]) to the network input
    /// size, exactly as training did.
    pub fn fit(&self, frame: &Planar) -> (Planar, Placement) {
        let p = self.placement(frame.width, frame.height);
        let scaled = resample(frame, p.scaled_w, p.scaled_h, self.filter);
        if (p.scaled_w, p.scaled_h) == (self.width, self.height) {
            return (scaled, p);
        }
        let mut out = Planar::zeros(frame.channels, self.width, self.height);
        for c in 0..frame.channels {
            for y in 0..p.scaled_h {
                let src = &scaled.plane(c)[y * p.scaled_w..][..p.scaled_w];
                let start = (c * self.height + p.top + y) * self.width + p.left;
                out.data[start..start + p.scaled_w].copy_from_slice(src);
            }
        }
        (out, p)
    }

    /// Maps per-pixel values at the network's input size (probabilities) back
    /// onto the frame the placement came from.
    pub fn unfit(&self, values: &Planar, p: &Placement) -> Planar {
        let window = if (p.scaled_w, p.scaled_h) == (values.width, values.height) {
            None
        } else {
            Some(values.crop(p.left, p.top, p.scaled_w, p.scaled_h))
        };
        resample(
            window.as_ref().unwrap_or(values),
            p.frame_w,
            p.frame_h,
            Filter::Bilinear,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_geometry() {
        // Ronneberger et al. 2015: 572 -> 388, 92 px lost per side.
        let g = SizeRule::Valid { depth: 4 };
        assert_eq!(g.output_side(572), Some(388));
        assert_eq!(g.margin(), 92);
        assert_eq!(g.output_side(573), None);
        assert_eq!(g.input_for_output(388), Some((572, 388, 92)));
        // depth 1: n -> n - 16.
        let g = SizeRule::Valid { depth: 1 };
        assert_eq!(g.output_side(20), Some(4));
        assert_eq!(g.input_for_output(5), Some((22, 6, 8)));
    }

    #[test]
    fn same_geometry() {
        let g = SizeRule::Same { multiple: 16 };
        assert_eq!(g.output_side(48), Some(48));
        assert_eq!(g.output_side(50), None);
        assert_eq!(g.input_for_output(50), Some((64, 64, 0)));
    }

    fn geometry(resize: ResizeMode) -> InputGeometry {
        InputGeometry {
            width: 64,
            height: 32,
            resize,
            filter: Filter::Bilinear,
            size_multiple: 16,
        }
    }

    #[test]
    fn letterbox_keeps_the_aspect_ratio_and_centres() {
        // 200x200 into 64x32: scaled to 32x32, 16 px of black either side.
        let g = geometry(ResizeMode::Letterbox);
        let frame = Planar::new(1, 200, 200, vec![1.0; 200 * 200]);
        let (input, p) = g.fit(&frame);
        assert_eq!((p.scaled_w, p.scaled_h, p.left, p.top), (32, 32, 16, 0));
        assert_eq!(input.data[0], 0.0);
        assert_eq!(input.data[16], 1.0);
        assert_eq!(input.data[47], 1.0);
        assert_eq!(input.data[48], 0.0);
        // Back onto the frame: only the image part, at the frame's size.
        let back = g.unfit(&input, &p);
        assert_eq!((back.width, back.height), (200, 200));
        assert!(back.data.iter().all(|&v| (v - 1.0).abs() < 1e-6));
    }

    #[test]
    fn stretch_fills_the_input() {
        let g = geometry(ResizeMode::Stretch);
        let p = g.placement(256, 256);
        assert_eq!((p.scaled_w, p.scaled_h, p.left, p.top), (64, 32, 0, 0));
    }

    #[test]
    fn json_round_trip_and_validation() {
        let g = geometry(ResizeMode::Letterbox);
        assert_eq!(InputGeometry::from_json(&g.to_json()).unwrap(), g);
        let bad = InputGeometry { width: 60, ..g };
        assert!(InputGeometry::from_json(&bad.to_json()).is_err());
        let zero = InputGeometry { height: 0, ..g };
        assert!(zero.validate().is_err());
    }
}
