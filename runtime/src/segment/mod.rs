//! Image in, mask out. By default a frame is brought to the geometry the model
//! was trained at (its `unet.input_geometry` metadata, with the resampler the
//! trainer used), run, and the probabilities are mapped back onto the frame.
//! Running at native resolution (mirror-padded, or in overlap tiles) is an
//! explicit choice ([`Fit::Pad`], [`SegmenterOptions::tiling`]), and the
//! default for files that record no training geometry.
//!
//! - [`preprocess`]: pixels to normalised planes, mirror windows;
//! - [`postprocess`]: sigmoid/softmax, threshold/argmax;
//! - `tile`: overlap-tile inference; [`decode`]: image files; [`overlay`]: pictures of masks.

use std::path::Path;

use image::DynamicImage;
use unet_spec::{Filter, InputGeometry, ModelInfo, Placement, Planar, ResizeMode, SizeRule};

use crate::error::{Result, RuntimeError};
use crate::session::{Backend, Session, SessionOptions, Tensor4};

pub mod decode;
pub mod overlay;
mod postprocess;
mod preprocess;
mod tile;

pub use preprocess::{ImageView, PixelFormat};

/// How a frame is brought to a size the graph accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fit {
    /// As the model was trained: resized to its recorded input geometry.
    /// Files that record none run as [`Fit::Pad`] (said once in the log).
    #[default]
    Model,
    /// Native resolution: mirror-pad to the next accepted size, crop the
    /// output back (no resampling).
    Pad,
    /// Stretched to `width x height` with the shared resampler, probabilities
    /// resized back (for files that do not record their training size).
    Resize { width: usize, height: usize },
}

/// Overlap-tile inference (Ronneberger et al. 2015, Fig. 2) at native
/// resolution: `tile` x `tile` output tiles overlapping by `overlap` pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    pub tile: usize,
    pub overlap: usize,
}

/// Largest frame accepted at all (8192 x 8192): a decoded frame this size is
/// already 800 MB of f32 planes.
pub const DEFAULT_MAX_PIXELS: usize = 8192 * 8192;
/// Native-resolution frames above this (2048 x 2048) run in overlap tiles of
/// [`AUTO_TILE`], so memory stays bounded whatever the frame size.
pub const DEFAULT_MAX_UNTILED_PIXELS: usize = 2048 * 2048;
pub const AUTO_TILE: Tiling = Tiling {
    tile: 512,
    overlap: 32,
};

/// Options of a [`Segmenter`].
#[derive(Debug, Clone, PartialEq)]
pub struct SegmenterOptions {
    pub session: SessionOptions,
    pub fit: Fit,
    /// Tile frames larger than one tile, at native resolution; `None` runs
    /// every frame whole (or tiles it above `max_untiled_pixels`).
    pub tiling: Option<Tiling>,
    /// Overrides the threshold from the metadata (binary models).
    pub threshold: Option<f32>,
    /// Overrides the accepted sizes (for files without `unet.config`).
    pub size_rule: Option<SizeRule>,
    /// Frames with more pixels are refused.
    pub max_pixels: usize,
    /// Native-resolution frames with more pixels are tiled automatically.
    pub max_untiled_pixels: usize,
}

impl Default for SegmenterOptions {
    fn default() -> Self {
        SegmenterOptions {
            session: SessionOptions::default(),
            fit: Fit::Model,
            tiling: None,
            threshold: None,
            size_rule: None,
            max_pixels: DEFAULT_MAX_PIXELS,
            max_untiled_pixels: DEFAULT_MAX_UNTILED_PIXELS,
        }
    }
}

/// Per-pixel result at the frame's own size.
#[derive(Debug, Clone, PartialEq)]
pub struct Segmentation {
    pub width: usize,
    pub height: usize,
    /// Output channels: 1 for a binary model.
    pub classes: usize,
    /// `[classes, height, width]`: foreground probability (binary) or class
    /// probabilities (softmax).
    pub probabilities: Vec<f32>,
    /// `[height, width]`: 0/1 for binary models (probability > threshold),
    /// the argmax class index otherwise.
    pub mask: Vec<u8>,
}

impl Segmentation {
    pub fn probability(&self, class: usize, y: usize, x: usize) -> f32 {
        self.probabilities[(class * self.height + y) * self.width + x]
    }

    /// The mask as a grey image: 0/255 for binary models, class indices
    /// spread over 0..=255 otherwise.
    pub fn mask_image(&self) -> image::GrayImage {
        let scale = if self.classes <= 2 {
            255
        } else {
            (255 / (self.classes - 1)) as u8
        };
        let pixels = self.mask.iter().map(|&m| m.saturating_mul(scale)).collect();
        image::GrayImage::from_raw(self.width as u32, self.height as u32, pixels)
            .unwrap_or_default()
    }
}

/// A model ready to segment images.
pub struct Segmenter {
    session: Session,
    info: ModelInfo,
    options: SegmenterOptions,
    /// What every frame is resized to, or `None` for native resolution.
    resize: Option<InputGeometry>,
}

impl std::fmt::Debug for Segmenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segmenter")
            .field("session", &self.session)
            .field("info", &self.info)
            .field("resize", &self.resize)
            .finish_non_exhaustive()
    }
}

/// The runtime's view of a spec error: the file it came from, and the key.
pub(crate) fn bad_metadata(path: &Path, e: unet_spec::SpecError) -> RuntimeError {
    let (key, reason) = match e {
        unet_spec::SpecError::BadMetadata { key, reason } => (key, reason),
        other => ("unet.*".to_string(), other.to_string()),
    };
    RuntimeError::BadMetadata {
        path: path.to_path_buf(),
        key,
        reason,
    }
}

impl Segmenter {
    pub fn from_file(path: impl AsRef<Path>, backend: Backend) -> Result<Self> {
        Self::from_file_with(path, backend, SegmenterOptions::default())
    }

    pub fn from_file_with(
        path: impl AsRef<Path>,
        backend: Backend,
        options: SegmenterOptions,
    ) -> Result<Self> {
        let session = Session::from_file_with(path.as_ref(), backend, &options.session)?;
        Self::from_session(session, options)
    }

    /// Wraps a loaded session.
    pub fn from_session(session: Session, options: SegmenterOptions) -> Result<Self> {
        let path = session.path().to_path_buf();
        let mut info = ModelInfo::from_metadata(session.metadata(), session.input_channels())
            .map_err(|e| bad_metadata(&path, e))?;
        if let Some(rule) = options.size_rule {
            info.size_rule = rule;
        }
        if let ([_, _, Some(_), Some(_)], None, None) =
            (session.input_dims(), &info.config, options.size_rule)
        {
            // A foreign graph with a fixed size runs at exactly that size.
            info.size_rule = SizeRule::Same { multiple: 1 };
        }
        let bad = |option: &'static str, reason: String| RuntimeError::BadOption { option, reason };
        if let Some(t) = options.threshold {
            unet_spec::preprocessing::validate_threshold(t).map_err(|r| bad("threshold", r))?;
            info.preprocessing.threshold = t;
        }
        if let Some(t) = options.tiling {
            if t.tile == 0 || t.overlap >= t.tile {
                return Err(bad(
                    "tiling",
                    format!(
                        "tile {} with overlap {}: need tile >= 1 and overlap < tile",
                        t.tile, t.overlap
                    ),
                ));
            }
        }
        if options.max_pixels == 0 || options.max_untiled_pixels == 0 {
            return Err(bad("max_pixels", "must be at least 1".into()));
        }
        let multiple = match info.size_rule {
            SizeRule::Same { multiple } => multiple,
            SizeRule::Valid { depth } => 1 << depth,
        };
        let resize = match (options.fit, options.tiling) {
            (Fit::Resize { .. }, Some(_)) => {
                return Err(bad(
                    "fit",
                    "overlap tiles run at native resolution; they cannot follow a resize".into(),
                ))
            }
            (Fit::Resize { width, height }, None) => {
                if width == 0 || height == 0 {
                    return Err(bad("fit", "resize target must not be empty".into()));
                }
                Some(InputGeometry {
                    width,
                    height,
                    resize: ResizeMode::Stretch,
                    filter: Filter::Bilinear,
                    size_multiple: multiple,
                })
            }
            (Fit::Model, None) => {
                if info.input_geometry.is_none() {
                    log::warn!(
                        "{}: no training geometry recorded; frames run at native resolution, \
                         mirror-padded (--resize WxH to match the training size)",
                        path.display()
                    );
                }
                info.input_geometry
            }
            (Fit::Model, Some(_)) | (Fit::Pad, _) => None,
        };
        // A graph with a fixed input size runs frames at that size on every
        // back end (ONNX Runtime refuses any other; tract would accept it).
        let resize = match (session.input_dims(), resize, options.fit) {
            ([_, _, Some(h), Some(w)], Some(g), _) if (g.width, g.height) != (w, h) => {
                return Err(bad(
                    "fit",
                    format!(
                        "{} fixes its input at {w}x{h}, but frames would be resized to {}x{}",
                        path.display(),
                        g.width,
                        g.height
                    ),
                ))
            }
            ([_, _, Some(h), Some(w)], None, Fit::Model) if options.tiling.is_none() => {
                log::info!(
                    "{}: fixed input {w}x{h}: frames are resized to it",
                    path.display()
                );
                Some(InputGeometry {
                    width: w,
                    height: h,
                    resize: ResizeMode::Stretch,
                    filter: Filter::Bilinear,
                    size_multiple: 1,
                })
            }
            (_, resize, _) => resize,
        };
        Ok(Segmenter {
            session,
            info,
            options,
            resize,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The bare session, for running raw tensors without any processing.
    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    pub fn options(&self) -> &SegmenterOptions {
        &self.options
    }

    /// The geometry every frame is resized to, or `None` at native resolution.
    pub fn resize_geometry(&self) -> Option<&InputGeometry> {
        self.resize.as_ref()
    }

    /// The network input `[height, width]` a `width x height` frame runs at
    /// (whole, untiled).
    pub fn network_input_size(&self, width: usize, height: usize) -> Result<(usize, usize)> {
        let (w, h) = match &self.resize {
            Some(g) => (g.width, g.height),
            None => (width, height),
        };
        Ok((self.input_size(h)?.0, self.input_size(w)?.0))
    }

    /// Segments a decoded image (converted to RGB or grey as the model needs).
    pub fn segment(&mut self, image: &DynamicImage) -> Result<Segmentation> {
        self.check_frame(image.width() as usize, image.height() as usize)?;
        let planar = preprocess::from_image(image, &self.info)?;
        self.segment_unit(planar)
    }

    /// Segments a caller's pixel buffer. The format's channel count must be
    /// the model's (gray for 1-channel models, RGB or BGR for 3-channel ones).
    pub fn segment_buffer(&mut self, view: &ImageView<'_>) -> Result<Segmentation> {
        let view = ImageView::new(view.data, view.width, view.height, view.stride, view.format)?;
        if view.format.channels() != self.info.in_channels {
            return Err(RuntimeError::BadImage {
                width: view.width,
                height: view.height,
                reason: format!(
                    "{:?} has {} channels, the model takes {}",
                    view.format,
                    view.format.channels(),
                    self.info.in_channels
                ),
            });
        }
        self.check_frame(view.width, view.height)?;
        let planar = preprocess::from_view(&view, &self.info)?;
        self.segment_unit(planar)
    }

    /// The network input exactly as the model sees it for `image`: resized as
    /// in training and normalised, `[C, H, W]` (before any padding).
    pub fn prepare(&self, image: &DynamicImage) -> Result<Planar> {
        self.check_frame(image.width() as usize, image.height() as usize)?;
        let planar = preprocess::from_image(image, &self.info)?;
        let mut input = match &self.resize {
            Some(g) => g.fit(&planar).0,
            None => planar,
        };
        preprocess::normalise(&mut input, &self.info);
        Ok(input)
    }

    /// Segments several images. With a training geometry every frame becomes
    /// the same size, so all run as one batch; at native resolution equally
    /// sized frames do.
    pub fn segment_batch(&mut self, images: &[DynamicImage]) -> Result<Vec<Segmentation>> {
        for image in images {
            self.check_frame(image.width() as usize, image.height() as usize)?;
        }
        let batch_fixed = matches!(self.session.input_dims()[0], Some(n) if n != images.len());
        if images.len() < 2 || batch_fixed {
            return images.iter().map(|i| self.segment(i)).collect();
        }
        if let Some(g) = self.resize {
            let mut placed = Vec::with_capacity(images.len());
            for image in images {
                let (mut input, p) = g.fit(&preprocess::from_image(image, &self.info)?);
                preprocess::normalise(&mut input, &self.info);
                placed.push((input, p));
            }
            let inputs: Vec<&Planar> = placed.iter().map(|(i, _)| i).collect();
            let outputs = self.run_padded(&inputs)?;
            return outputs
                .into_iter()
                .zip(&placed)
                .map(|((classes, probs), (_, p))| Ok(self.unfit(&g, classes, probs, p)))
                .collect();
        }
        let same_size = images
            .windows(2)
            .all(|p| p[0].width() == p[1].width() && p[0].height() == p[1].height());
        if !same_size
            || self
                .tiling_for(images[0].width() as usize, images[0].height() as usize)
                .is_some()
        {
            return images.iter().map(|i| self.segment(i)).collect();
        }
        let mut planars = Vec::with_capacity(images.len());
        for image in images {
            let mut planar = preprocess::from_image(image, &self.info)?;
            preprocess::normalise(&mut planar, &self.info);
            planars.push(planar);
        }
        let inputs: Vec<&Planar> = planars.iter().collect();
        let threshold = self.info.preprocessing.threshold;
        Ok(self
            .run_padded(&inputs)?
            .into_iter()
            .map(|(classes, probs)| {
                postprocess::finish(
                    threshold,
                    classes,
                    probs,
                    planars[0].height,
                    planars[0].width,
                )
            })
            .collect())
    }

    /// Post-processes a raw network input the caller prepared (NCHW, already
    /// normalised, a size the graph accepts): one result per batch item at the
    /// output's size.
    pub fn segment_tensor(&mut self, input: &Tensor4) -> Result<Vec<Segmentation>> {
        let output = self.session.run(input)?;
        let [n, _, h, w] = output.shape;
        let threshold = self.info.preprocessing.threshold;
        Ok((0..n)
            .map(|i| {
                let (classes, probs) =
                    postprocess::probabilities(&self.info, &output, i, (0, 0), (h, w));
                postprocess::finish(threshold, classes, probs, h, w)
            })
            .collect())
    }

    fn check_frame(&self, width: usize, height: usize) -> Result<()> {
        let pixels = width.saturating_mul(height);
        if width == 0 || height == 0 {
            return Err(RuntimeError::BadImage {
                width,
                height,
                reason: "the image is empty".into(),
            });
        }
        if pixels > self.options.max_pixels {
            return Err(RuntimeError::BadImage {
                width,
                height,
                reason: format!(
                    "{pixels} pixels, above the limit of {} (SegmenterOptions::max_pixels, \
                     unet-infer --max-pixels)",
                    self.options.max_pixels
                ),
            });
        }
        Ok(())
    }

    /// The tiling a native-resolution frame runs with, if any.
    fn tiling_for(&self, width: usize, height: usize) -> Option<Tiling> {
        match self.options.tiling {
            Some(t) => (height > t.tile || width > t.tile).then_some(t),
            None if width * height > self.options.max_untiled_pixels => Some(AUTO_TILE),
            None => None,
        }
    }

    /// `(input side, output side, output offset)` for an image side of `n`.
    fn input_size(&self, n: usize) -> Result<(usize, usize, usize)> {
        self.info
            .size_rule
            .input_for_output(n)
            .ok_or_else(|| RuntimeError::BadImage {
                width: n,
                height: n,
                reason: format!(
                    "no input size of {:?} covers {n} pixels",
                    self.info.size_rule
                ),
            })
    }

    /// A frame in [0, 1], resized as in training (or not), normalised, run.
    fn segment_unit(&mut self, planar: Planar) -> Result<Segmentation> {
        match self.resize {
            Some(g) => {
                let (mut input, placement) = g.fit(&planar);
                preprocess::normalise(&mut input, &self.info);
                let (classes, probs) = self.run_padded(&[&input])?.remove(0);
                Ok(self.unfit(&g, classes, probs, &placement))
            }
            None => {
                let mut planar = planar;
                preprocess::normalise(&mut planar, &self.info);
                match self.tiling_for(planar.width, planar.height) {
                    Some(t) => self.segment_tiled(&planar, t),
                    None => {
                        let (classes, probs) = self.run_padded(&[&planar])?.remove(0);
                        Ok(postprocess::finish(
                            self.info.preprocessing.threshold,
                            classes,
                            probs,
                            planar.height,
                            planar.width,
                        ))
                    }
                }
            }
        }
    }

    /// Probabilities at the network's size mapped back onto the frame.
    fn unfit(
        &self,
        g: &InputGeometry,
        classes: usize,
        probs: Vec<f32>,
        p: &Placement,
    ) -> Segmentation {
        let at_input = Planar::new(classes, g.width, g.height, probs);
        let back = g.unfit(&at_input, p);
        postprocess::finish(
            self.info.preprocessing.threshold,
            classes,
            back.data,
            p.frame_h,
            p.frame_w,
        )
    }

    /// Runs equally sized inputs as one batch, mirror-padded to a size the
    /// graph accepts; probabilities `[classes, h, w]` at each input's size.
    fn run_padded(&mut self, inputs: &[&Planar]) -> Result<Vec<(usize, Vec<f32>)>> {
        let (h, w, c) = (inputs[0].height, inputs[0].width, inputs[0].channels);
        let (in_h, out_h, mt) = self.input_size(h)?;
        let (in_w, out_w, ml) = self.input_size(w)?;
        // The image starts at output (0, 0); the input starts `margin` before
        // it. Padding goes right and down, so pooling windows line up with
        // those of overlap tiles.
        let mut input = Tensor4::zeros([inputs.len(), c, in_h, in_w]);
        for (n, planar) in inputs.iter().enumerate() {
            preprocess::gather(planar, &mut input, n, -(mt as isize), -(ml as isize));
        }
        let output = self.run_checked(&input, out_h, out_w)?;
        Ok((0..inputs.len())
            .map(|n| postprocess::probabilities(&self.info, &output, n, (0, 0), (h, w)))
            .collect())
    }

    /// Runs and checks the output has the size the geometry promised.
    fn run_checked(&mut self, input: &Tensor4, out_h: usize, out_w: usize) -> Result<Tensor4> {
        let output = self.session.run(input)?;
        let [n, c, h, w] = output.shape;
        if n != input.shape[0] || h != out_h || w != out_w || c == 0 {
            return Err(RuntimeError::Inference {
                provider: self.session.provider().to_string(),
                path: self.session.path().to_path_buf(),
                reason: format!(
                    "output shape {:?} for input {:?}, expected [{}, C, {out_h}, {out_w}] from {:?}; \
                     a file without `unet.config` metadata needs SegmenterOptions::size_rule",
                    output.shape, input.shape, input.shape[0], self.info.size_rule
                ),
            });
        }
        if let Some(expected) = self.info.out_channels {
            let got = if self.info.head == unet_spec::Head::Argmax {
                expected
            } else {
                c
            };
            if got != expected {
                return Err(RuntimeError::Inference {
                    provider: self.session.provider().to_string(),
                    path: self.session.path().to_path_buf(),
                    reason: format!("{c} output channels, the config says {expected}"),
                });
            }
        }
        Ok(output)
    }
}
