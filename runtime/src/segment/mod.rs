//! Image in, mask out: pre-processing from the model's metadata, the graph
//! run, post-processing, and overlap-tile inference for large images.
//!
//! Pre-processing: pixels are scaled to [0, 1], reordered to the channel
//! order the model expects, normalised with its mean/std (unless the graph
//! does it), and mirror-padded to a size the graph accepts (a multiple of
//! 2^depth for `same` models; for `valid` models the margin the unpadded
//! convolutions eat, so the output covers the whole image), or resized to a
//! fixed size with [`Fit::Resize`]. Post-processing: sigmoid (one channel) or
//! softmax over channels, threshold or argmax, crop (or resize) back to the
//! image's own size.

use std::path::Path;

use image::DynamicImage;

use crate::error::{Result, RuntimeError};
use crate::metadata::{ChannelOrder, Geometry, Head, ModelInfo};
use crate::session::{Backend, Session, SessionOptions, Tensor4};

mod tile;

/// How an image is brought to a size the graph accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fit {
    /// Mirror-pad to the next accepted size, crop the output back (no resampling).
    #[default]
    Pad,
    /// Resize (bilinear) to `width` x `height` first, e.g. the training size,
    /// and resize the probabilities back.
    Resize { width: usize, height: usize },
}

/// Overlap-tile inference (Ronneberger et al. 2015, Fig. 2): the image is cut
/// into `tile` x `tile` output tiles overlapping by `overlap` pixels; each
/// tile's input is extended by the model's context with mirrored image
/// content; overlaps are blended with linear ramps (`same` models) or split
/// at their middle (`valid` models, whose tiles agree exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    pub tile: usize,
    pub overlap: usize,
}

/// Options of a [`Segmenter`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SegmenterOptions {
    pub session: SessionOptions,
    pub fit: Fit,
    /// Tile images larger than one tile; `None` runs every image whole.
    pub tiling: Option<Tiling>,
    /// Overrides the threshold from the metadata (binary models).
    pub threshold: Option<f32>,
    /// Overrides the size geometry (for files without `unet.config`).
    pub geometry: Option<Geometry>,
}

/// Per-pixel result at the image's own size.
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

/// Layout of a caller's pixel buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    Rgb8,
    Bgr8,
    Gray8,
}

impl PixelFormat {
    pub fn channels(self) -> usize {
        match self {
            PixelFormat::Rgb8 | PixelFormat::Bgr8 => 3,
            PixelFormat::Gray8 => 1,
        }
    }
}

/// A borrowed 8-bit image, rows `stride` bytes apart.
#[derive(Debug, Clone, Copy)]
pub struct ImageView<'a> {
    pub data: &'a [u8],
    pub width: usize,
    pub height: usize,
    pub stride: usize,
    pub format: PixelFormat,
}

impl<'a> ImageView<'a> {
    /// Checks the buffer holds `height` rows of `stride` bytes (the last row
    /// may end after its pixels).
    pub fn new(
        data: &'a [u8],
        width: usize,
        height: usize,
        stride: usize,
        format: PixelFormat,
    ) -> Result<Self> {
        let bad = |reason: String| RuntimeError::BadImage {
            width,
            height,
            reason,
        };
        if width == 0 || height == 0 {
            return Err(bad("the image is empty".into()));
        }
        let row = width
            .checked_mul(format.channels())
            .ok_or_else(|| bad("width overflows".into()))?;
        if stride < row {
            return Err(bad(format!(
                "stride {stride} is smaller than a row of {row} bytes"
            )));
        }
        let needed = stride
            .checked_mul(height - 1)
            .and_then(|n| n.checked_add(row))
            .ok_or_else(|| bad("size overflows".into()))?;
        if data.len() < needed {
            return Err(bad(format!(
                "buffer holds {} bytes, the image needs {needed}",
                data.len()
            )));
        }
        Ok(ImageView {
            data,
            width,
            height,
            stride,
            format,
        })
    }
}

/// The normalised image, `[channels, height, width]`, read with mirror
/// indexing so any window around it can be gathered.
struct Planar {
    channels: usize,
    height: usize,
    width: usize,
    data: Vec<f32>,
}

/// Reflects `i` into `0..n` without repeating the edge pixel (numpy's
/// `reflect`), periodically for windows wider than the image.
#[inline]
fn mirror(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    if m < n as isize {
        m as usize
    } else {
        (period - m) as usize
    }
}

impl Planar {
    /// Gathers the window `[y0, y0 + h) x [x0, x0 + w)` (image coordinates,
    /// possibly outside the image) into `out` at batch index `n`.
    fn gather(&self, out: &mut Tensor4, n: usize, y0: isize, x0: isize) {
        let [_, c, h, w] = out.shape;
        let xs: Vec<usize> = (0..w)
            .map(|x| mirror(x0 + x as isize, self.width))
            .collect();
        for ch in 0..c.min(self.channels) {
            let plane = &self.data[ch * self.height * self.width..][..self.height * self.width];
            for y in 0..h {
                let sy = mirror(y0 + y as isize, self.height);
                let src = &plane[sy * self.width..][..self.width];
                let start = out.index(n, ch, y, 0);
                for (d, &sx) in out.data[start..start + w].iter_mut().zip(&xs) {
                    *d = src[sx];
                }
            }
        }
    }
}

/// A model ready to segment images.
pub struct Segmenter {
    session: Session,
    info: ModelInfo,
    options: SegmenterOptions,
}

impl std::fmt::Debug for Segmenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segmenter")
            .field("session", &self.session)
            .field("info", &self.info)
            .finish_non_exhaustive()
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
        let mut info =
            ModelInfo::from_metadata(session.path(), session.metadata(), session.input_channels())?;
        if let Some(g) = options.geometry {
            info.geometry = g;
        }
        if let Some(t) = options.threshold {
            info.preprocessing.threshold = t;
        }
        if let Some(t) = options.tiling {
            if t.tile == 0 || t.overlap >= t.tile {
                return Err(RuntimeError::BadOption {
                    option: "tiling",
                    reason: format!(
                        "tile {} with overlap {}: need tile >= 1 and overlap < tile",
                        t.tile, t.overlap
                    ),
                });
            }
        }
        if let Fit::Resize { width, height } = options.fit {
            if width == 0 || height == 0 {
                return Err(RuntimeError::BadOption {
                    option: "fit",
                    reason: "resize target must not be empty".into(),
                });
            }
        }
        Ok(Segmenter {
            session,
            info,
            options,
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

    /// Segments a decoded image (converted to RGB or grey as the model needs).
    pub fn segment(&mut self, image: &DynamicImage) -> Result<Segmentation> {
        let (w, h) = (image.width() as usize, image.height() as usize);
        if w == 0 || h == 0 {
            return Err(RuntimeError::BadImage {
                width: w,
                height: h,
                reason: "the image is empty".into(),
            });
        }
        let planar = self.segment_prepare(image)?;
        self.segment_planar(planar)
    }

    /// Segments a caller's pixel buffer. The format's channel count must be
    /// the model's (gray for 1-channel models, RGB or BGR for 3-channel ones).
    pub fn segment_buffer(&mut self, view: &ImageView<'_>) -> Result<Segmentation> {
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
        let view = ImageView::new(view.data, view.width, view.height, view.stride, view.format)?;
        let planar = self.normalise(&view)?;
        self.segment_planar(planar)
    }

    /// Segments several images; equally sized ones run as one batch.
    pub fn segment_batch(&mut self, images: &[DynamicImage]) -> Result<Vec<Segmentation>> {
        let same_size = images
            .windows(2)
            .all(|p| p[0].width() == p[1].width() && p[0].height() == p[1].height());
        if images.len() < 2
            || !same_size
            || self.options.tiling.is_some()
            || self.options.fit != Fit::Pad
        {
            return images.iter().map(|i| self.segment(i)).collect();
        }
        let (w, h) = (images[0].width() as usize, images[0].height() as usize);
        let (in_h, out_h, top_margin) = self.input_size(h)?;
        let (in_w, out_w, left_margin) = self.input_size(w)?;
        let c = self.info.in_channels;
        let mut input = Tensor4::zeros([images.len(), c, in_h, in_w]);
        for (n, image) in images.iter().enumerate() {
            let planar = self.segment_prepare(image)?;
            planar.gather(
                &mut input,
                n,
                -(top_margin as isize),
                -(left_margin as isize),
            );
        }
        let output = self.run_checked(&input, out_h, out_w)?;
        (0..images.len())
            .map(|n| self.postprocess(&output, n, 0, 0, h, w))
            .collect()
    }

    fn segment_prepare(&self, image: &DynamicImage) -> Result<Planar> {
        let (w, h) = (image.width() as usize, image.height() as usize);
        if self.info.in_channels == 1 {
            let g = image.to_luma8();
            self.normalise(&ImageView::new(g.as_raw(), w, h, w, PixelFormat::Gray8)?)
        } else {
            let rgb = image.to_rgb8();
            self.normalise(&ImageView::new(
                rgb.as_raw(),
                w,
                h,
                3 * w,
                PixelFormat::Rgb8,
            )?)
        }
    }

    /// Post-processes a raw network input the caller prepared (NCHW, already
    /// normalised, a size the graph accepts): one result per batch item at the
    /// output's size.
    pub fn segment_tensor(&mut self, input: &Tensor4) -> Result<Vec<Segmentation>> {
        let output = self.session.run(input)?;
        let [n, _, h, w] = output.shape;
        (0..n)
            .map(|i| self.postprocess(&output, i, 0, 0, h, w))
            .collect()
    }

    /// `(input side, output side, output offset)` for an image side of `n`.
    fn input_size(&self, n: usize) -> Result<(usize, usize, usize)> {
        self.info
            .geometry
            .input_for_output(n)
            .ok_or_else(|| RuntimeError::BadImage {
                width: n,
                height: n,
                reason: format!(
                    "no input size of {:?} covers {n} pixels",
                    self.info.geometry
                ),
            })
    }

    /// Scales to [0, 1], reorders channels and normalises: `[C, H, W]`.
    fn normalise(&self, view: &ImageView<'_>) -> Result<Planar> {
        let c = self.info.in_channels;
        if c != 1 && c != 3 {
            return Err(RuntimeError::BadImage {
                width: view.width,
                height: view.height,
                reason: format!(
                    "the model takes {c} channels; images give 1 or 3 (use segment_tensor)"
                ),
            });
        }
        let pre = &self.info.preprocessing;
        // Source byte offset of each model channel within a pixel.
        let src: Vec<usize> = match (view.format, pre.channel_order, c) {
            (PixelFormat::Gray8, _, _) => vec![0; c],
            (_, ChannelOrder::Gray, 1) | (_, _, 1) => vec![usize::MAX],
            (PixelFormat::Rgb8, ChannelOrder::Bgr, _)
            | (PixelFormat::Bgr8, ChannelOrder::Rgb | ChannelOrder::Gray, _) => {
                vec![2, 1, 0]
            }
            _ => vec![0, 1, 2],
        };
        let (scale, shift): (Vec<f32>, Vec<f32>) = (0..c)
            .map(|ch| {
                if self.info.normalize_in_graph {
                    (1.0 / 255.0, 0.0)
                } else {
                    let (m, s) = (pre.mean[ch], pre.std[ch]);
                    (1.0 / (255.0 * s), -m / s)
                }
            })
            .unzip();
        let (w, h) = (view.width, view.height);
        let px = view.format.channels();
        let mut data = vec![0.0f32; c * h * w];
        for y in 0..h {
            let row = &view.data[y * view.stride..][..w * px];
            for ch in 0..c {
                let dst = &mut data[(ch * h + y) * w..][..w];
                let (a, b) = (scale[ch], shift[ch]);
                if src[ch] == usize::MAX {
                    // Colour to grey: ITU-R BT.601 luma, as image's to_luma8.
                    let (r, g, bl) = match view.format {
                        PixelFormat::Bgr8 => (2, 1, 0),
                        _ => (0, 1, 2),
                    };
                    for (x, d) in dst.iter_mut().enumerate() {
                        let p = &row[x * px..];
                        let l = 0.299 * p[r] as f32 + 0.587 * p[g] as f32 + 0.114 * p[bl] as f32;
                        *d = l * a + b;
                    }
                } else {
                    for (x, d) in dst.iter_mut().enumerate() {
                        *d = row[x * px + src[ch]] as f32 * a + b;
                    }
                }
            }
        }
        Ok(Planar {
            channels: c,
            height: h,
            width: w,
            data,
        })
    }

    fn segment_planar(&mut self, planar: Planar) -> Result<Segmentation> {
        match self.options.fit {
            Fit::Pad => self.segment_padded(&planar),
            Fit::Resize { width, height } => {
                let (w0, h0) = (planar.width, planar.height);
                let resized = resize_planar(&planar, width, height);
                let seg = self.segment_padded(&resized)?;
                Ok(self.resize_back(seg, w0, h0))
            }
        }
    }

    fn segment_padded(&mut self, planar: &Planar) -> Result<Segmentation> {
        let (h, w) = (planar.height, planar.width);
        match self.options.tiling {
            Some(t) if h > t.tile || w > t.tile => self.segment_tiled(planar, t),
            _ => {
                let (in_h, out_h, mt) = self.input_size(h)?;
                let (in_w, out_w, ml) = self.input_size(w)?;
                // The image starts at output (0, 0); the input starts `margin`
                // before it. Padding goes right and down, so pooling windows
                // line up with those of overlap-tiles.
                let mut input = Tensor4::zeros([1, planar.channels, in_h, in_w]);
                planar.gather(&mut input, 0, -(mt as isize), -(ml as isize));
                let output = self.run_checked(&input, out_h, out_w)?;
                self.postprocess(&output, 0, 0, 0, h, w)
            }
        }
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
                     a file without `unet.config` metadata needs SegmenterOptions::geometry",
                    output.shape, input.shape, input.shape[0], self.info.geometry
                ),
            });
        }
        if let Some(expected) = self.info.out_channels {
            let got = if self.info.head == Head::Argmax {
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

    /// Probabilities `[C, h, w]` of batch item `n` from the output window at `(y0, x0)`.
    fn probabilities(
        &self,
        output: &Tensor4,
        n: usize,
        y0: usize,
        x0: usize,
        h: usize,
        w: usize,
    ) -> (usize, Vec<f32>) {
        let c = output.shape[1];
        let classes = match self.info.head {
            Head::Argmax => self.info.out_channels.unwrap_or(2).max(2),
            _ => c,
        };
        let mut probs = vec![0.0f32; classes * h * w];
        for y in 0..h {
            for x in 0..w {
                let at = |ch: usize| output.data[output.index(n, ch, y0 + y, x0 + x)];
                let dst = |ch: usize| (ch * h + y) * w + x;
                match (self.info.head, c) {
                    (Head::Argmax, _) => {
                        let k = (at(0).round().max(0.0) as usize).min(classes - 1);
                        probs[dst(k)] = 1.0;
                    }
                    (Head::Logits, 1) => probs[dst(0)] = sigmoid(at(0)),
                    (Head::Logits, _) => {
                        let max = (0..c).map(at).fold(f32::NEG_INFINITY, f32::max);
                        let mut sum = 0.0;
                        for ch in 0..c {
                            let e = (at(ch) - max).exp();
                            probs[dst(ch)] = e;
                            sum += e;
                        }
                        for ch in 0..c {
                            probs[dst(ch)] /= sum;
                        }
                    }
                    (Head::Sigmoid | Head::Softmax, _) => {
                        for ch in 0..c {
                            probs[dst(ch)] = at(ch);
                        }
                    }
                }
            }
        }
        (classes, probs)
    }

    fn postprocess(
        &self,
        output: &Tensor4,
        n: usize,
        y0: usize,
        x0: usize,
        h: usize,
        w: usize,
    ) -> Result<Segmentation> {
        let (classes, probabilities) = self.probabilities(output, n, y0, x0, h, w);
        Ok(self.finish(classes, probabilities, h, w))
    }

    /// Thresholds (binary) or argmaxes the probabilities.
    fn finish(&self, classes: usize, probabilities: Vec<f32>, h: usize, w: usize) -> Segmentation {
        let plane = h * w;
        let mask = if classes == 1 {
            let t = self.info.preprocessing.threshold;
            probabilities.iter().map(|&p| u8::from(p > t)).collect()
        } else {
            (0..plane)
                .map(|i| {
                    let mut best = 0;
                    for k in 1..classes {
                        if probabilities[k * plane + i] > probabilities[best * plane + i] {
                            best = k;
                        }
                    }
                    best.min(255) as u8
                })
                .collect()
        };
        Segmentation {
            width: w,
            height: h,
            classes,
            probabilities,
            mask,
        }
    }

    fn resize_back(&self, seg: Segmentation, w: usize, h: usize) -> Segmentation {
        let planar = Planar {
            channels: seg.classes,
            height: seg.height,
            width: seg.width,
            data: seg.probabilities,
        };
        let back = resize_planar(&planar, w, h);
        self.finish(seg.classes, back.data, h, w)
    }
}

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Bilinear resize of every plane (half-pixel centres, as OpenCV and PyTorch
/// `align_corners=False`).
fn resize_planar(p: &Planar, w: usize, h: usize) -> Planar {
    let axis = |out: usize, inp: usize| -> Vec<(usize, usize, f32)> {
        let scale = inp as f32 / out as f32;
        (0..out)
            .map(|o| {
                let s = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (s.floor() as usize).min(inp - 1);
                let i1 = (i0 + 1).min(inp - 1);
                (i0, i1, s - i0 as f32)
            })
            .collect()
    };
    let (ys, xs) = (axis(h, p.height), axis(w, p.width));
    let mut data = vec![0.0; p.channels * h * w];
    for c in 0..p.channels {
        let src = &p.data[c * p.height * p.width..][..p.height * p.width];
        for (y, &(y0, y1, fy)) in ys.iter().enumerate() {
            for (x, &(x0, x1, fx)) in xs.iter().enumerate() {
                let v = |yy: usize, xx: usize| src[yy * p.width + xx];
                let top = v(y0, x0) * (1.0 - fx) + v(y0, x1) * fx;
                let bottom = v(y1, x0) * (1.0 - fx) + v(y1, x1) * fx;
                data[(c * h + y) * w + x] = top * (1.0 - fy) + bottom * fy;
            }
        }
    }
    Planar {
        channels: p.channels,
        height: h,
        width: w,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::mirror;

    #[test]
    fn mirror_reflects_without_repeating_the_edge() {
        // numpy.pad([0,1,2,3], 5, mode="reflect") -> 1 2 3 2 1 | 0 1 2 3 | 2 1 0 1 2
        let got: Vec<usize> = (-5..9).map(|i| mirror(i, 4)).collect();
        assert_eq!(got, vec![1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2]);
        assert_eq!(mirror(-3, 1), 0);
    }
}
