//! Pixels to the network's input: a caller's 8-bit buffer ([`ImageView`]) to
//! planar values in [0, 1] in the model's channel order, the shared resampler
//! (`unet_spec::InputGeometry::fit`), normalisation, and mirror-indexed
//! windows for padding and tiles.

use image::DynamicImage;
use unet_spec::{ChannelOrder, ModelInfo, Planar};

use crate::error::{Result, RuntimeError};
use crate::session::Tensor4;

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

/// A decoded image in [0, 1], `[C, H, W]` in the model's channel order:
/// exactly the values the trainer starts from (`to_rgb32f` / `to_luma32f`).
pub(super) fn from_image(image: &DynamicImage, info: &ModelInfo) -> Result<Planar> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let planar = match check_channels(info, w, h)? {
        1 => planar_from_hwc(&image.to_luma32f().into_raw(), 1, w, h),
        _ => planar_from_hwc(&image.to_rgb32f().into_raw(), 3, w, h),
    };
    Ok(in_model_order(planar, PixelFormat::Rgb8, info))
}

/// A caller's pixel buffer in [0, 1], `[C, H, W]` in the model's channel order.
pub(super) fn from_view(view: &ImageView<'_>, info: &ModelInfo) -> Result<Planar> {
    let (w, h) = (view.width, view.height);
    let c = check_channels(info, w, h)?;
    let planar = match (view.format, c) {
        (PixelFormat::Gray8, _) => {
            let grey = Planar::from_interleaved_u8(view.data, 1, w, h, view.stride);
            Planar::new(c, w, h, grey.data.repeat(c))
        }
        (_, 1) => {
            // Colour into a grey model: the luma `image` computes for training.
            let mut rgb = image::RgbImage::new(w as u32, h as u32);
            for (y, row) in rgb.rows_mut().enumerate() {
                let src = &view.data[y * view.stride..][..w * 3];
                for (x, px) in row.enumerate() {
                    let p = &src[x * 3..x * 3 + 3];
                    px.0 = match view.format {
                        PixelFormat::Bgr8 => [p[2], p[1], p[0]],
                        _ => [p[0], p[1], p[2]],
                    };
                }
            }
            let luma = DynamicImage::ImageRgb8(rgb).to_luma32f().into_raw();
            Planar::new(1, w, h, luma)
        }
        _ => Planar::from_interleaved_u8(view.data, 3, w, h, view.stride),
    };
    Ok(in_model_order(planar, view.format, info))
}

fn check_channels(info: &ModelInfo, width: usize, height: usize) -> Result<usize> {
    match info.in_channels {
        c @ (1 | 3) => Ok(c),
        c => Err(RuntimeError::BadImage {
            width,
            height,
            reason: format!(
                "the model takes {c} channels; images give 1 or 3 (use segment_tensor)"
            ),
        }),
    }
}

fn planar_from_hwc(hwc: &[f32], c: usize, w: usize, h: usize) -> Planar {
    let mut out = Planar::zeros(c, w, h);
    for (i, px) in hwc.chunks_exact(c).enumerate() {
        for (ch, &v) in px.iter().enumerate() {
            out.data[ch * w * h + i] = v;
        }
    }
    out
}

/// Swaps red and blue when the pixels' order is not the model's.
fn in_model_order(mut planar: Planar, format: PixelFormat, info: &ModelInfo) -> Planar {
    let swap = matches!(
        (format, info.preprocessing.channel_order),
        (PixelFormat::Rgb8, ChannelOrder::Bgr) | (PixelFormat::Bgr8, ChannelOrder::Rgb)
    );
    if swap && planar.channels == 3 {
        let plane = planar.width * planar.height;
        let (first, rest) = planar.data.split_at_mut(plane);
        first.swap_with_slice(&mut rest[plane..]);
    }
    planar
}

/// Normalises in place with the model's statistics (nothing when the graph does it).
pub(super) fn normalise(planar: &mut Planar, info: &ModelInfo) {
    if !info.normalize_in_graph {
        info.preprocessing.normalise(planar);
    }
}

/// Reflects `i` into `0..n` without repeating the edge pixel (numpy's
/// `reflect`), periodically for windows wider than the image.
#[inline]
pub(super) fn mirror(i: isize, n: usize) -> usize {
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

/// Gathers the window `[y0, y0 + h) x [x0, x0 + w)` of `planar` (image
/// coordinates, possibly outside the image: mirrored) into `out` at batch `n`.
pub(super) fn gather(planar: &Planar, out: &mut Tensor4, n: usize, y0: isize, x0: isize) {
    let [_, c, h, w] = out.shape;
    let xs: Vec<usize> = (0..w)
        .map(|x| mirror(x0 + x as isize, planar.width))
        .collect();
    for ch in 0..c.min(planar.channels) {
        let plane = planar.plane(ch);
        for y in 0..h {
            let sy = mirror(y0 + y as isize, planar.height);
            let src = &plane[sy * planar.width..][..planar.width];
            let start = out.index(n, ch, y, 0);
            for (d, &sx) in out.data[start..start + w].iter_mut().zip(&xs) {
                *d = src[sx];
            }
        }
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
