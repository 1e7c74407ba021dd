//! Camera pixel formats (RGBA8, BGRA8, NV12, YUYV, UYVY): their buffer
//! geometry, and their conversion to the packed RGB8 the segmenter takes.
//!
//! YUV is read as ITU-R BT.601 limited ("studio") range, Y in 16..=235 and
//! Cb/Cr in 16..=240, which is what capture cards and most cameras deliver
//! over YUYV/UYVY/NV12. A full-range (JPEG) or BT.709 source comes out with
//! slightly wrong contrast and hue; convert such frames to RGB first.

use crate::error::{Result, RuntimeError};

/// A camera buffer layout. Planes and rows:
/// - `Rgba8`, `Bgra8`: 4 bytes a pixel; alpha is ignored.
/// - `Yuyv` (YUY2), `Uyvy`: 2 bytes a pixel, a pair of pixels sharing one
///   Cb/Cr sample (`Y0 U Y1 V`, `U Y0 V Y1`); the width must be even.
/// - `Nv12`: one contiguous buffer, the Y plane (`height` rows of `stride`
///   bytes) followed at offset `stride * height` by the interleaved `U V`
///   plane (`height / 2` rows of `stride` bytes, one pair for each 2x2
///   block); width and height must be even.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CameraFormat {
    Rgba8,
    Bgra8,
    Nv12,
    Yuyv,
    Uyvy,
}

impl CameraFormat {
    /// Bytes of one row's pixels in the first (or only) plane.
    fn row_bytes(self, width: usize) -> Option<usize> {
        match self {
            CameraFormat::Rgba8 | CameraFormat::Bgra8 => width.checked_mul(4),
            CameraFormat::Yuyv | CameraFormat::Uyvy => width.checked_mul(2),
            CameraFormat::Nv12 => Some(width),
        }
    }

    /// The bytes a `width` x `height` frame with rows `stride` bytes apart
    /// occupies (the last row may end right after its pixels), or why that
    /// geometry is impossible for this format.
    pub fn required_len(self, width: usize, height: usize, stride: usize) -> Result<usize> {
        let bad = |reason: String| RuntimeError::BadImage {
            width,
            height,
            reason,
        };
        let even_width = matches!(
            self,
            CameraFormat::Nv12 | CameraFormat::Yuyv | CameraFormat::Uyvy
        );
        if even_width && !width.is_multiple_of(2) {
            return Err(bad(format!("{self:?} needs an even width")));
        }
        if self == CameraFormat::Nv12 && !height.is_multiple_of(2) {
            return Err(bad("Nv12 needs an even height".into()));
        }
        // Nv12: the Y rows, then half as many chroma rows.
        let rows = match self {
            CameraFormat::Nv12 => height + height / 2,
            _ => height,
        };
        span(width, height, rows, stride, self.row_bytes(width))
    }
}

/// The bytes a packed `width` x `height` frame of `bytes_per_pixel` with
/// rows `stride` bytes apart occupies, or why that geometry is impossible.
pub fn packed_len(
    width: usize,
    height: usize,
    stride: usize,
    bytes_per_pixel: usize,
) -> Result<usize> {
    span(
        width,
        height,
        height,
        stride,
        width.checked_mul(bytes_per_pixel),
    )
}

/// `rows` rows `stride` bytes apart, the last ending after `row` bytes.
fn span(
    width: usize,
    height: usize,
    rows: usize,
    stride: usize,
    row: Option<usize>,
) -> Result<usize> {
    let bad = |reason: String| RuntimeError::BadImage {
        width,
        height,
        reason,
    };
    if width == 0 || height == 0 {
        return Err(bad("the image is empty".into()));
    }
    let row = row.ok_or_else(|| bad("width overflows".into()))?;
    if stride < row {
        return Err(bad(format!(
            "stride {stride} is smaller than a row of {row} bytes"
        )));
    }
    stride
        .checked_mul(rows - 1)
        .and_then(|n| n.checked_add(row))
        .ok_or_else(|| bad("size overflows".into()))
}

/// Converts one BT.601 limited-range sample to RGB (rounded, clamped).
#[inline]
pub fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    // Y' = 16 + 219 E'y, Cb/Cr = 128 + 224 E'cb/cr (BT.601 section 2.5.3);
    // E'r = E'y + 1.402 E'cr, E'g = E'y - 0.344136 E'cb - 0.714136 E'cr,
    // E'b = E'y + 1.772 E'cb, scaled to 0..255.
    let l = (f32::from(y) - 16.0) * (255.0 / 219.0);
    let cb = f32::from(u) - 128.0;
    let cr = f32::from(v) - 128.0;
    let r = l + 1.596_027 * cr;
    let g = l - 0.391_762 * cb - 0.812_968 * cr;
    let b = l + 2.017_232 * cb;
    [clamp(r), clamp(g), clamp(b)]
}

#[inline]
fn clamp(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// Writes the frame as packed RGB8 (`3 * width` bytes a row) into `out`,
/// which is cleared first (so a caller can keep it across frames).
pub fn to_rgb8(
    data: &[u8],
    width: usize,
    height: usize,
    stride: usize,
    format: CameraFormat,
    out: &mut Vec<u8>,
) -> Result<()> {
    let needed = format.required_len(width, height, stride)?;
    if data.len() < needed {
        return Err(RuntimeError::BadImage {
            width,
            height,
            reason: format!(
                "buffer holds {} bytes, the {format:?} image needs {needed}",
                data.len()
            ),
        });
    }
    out.clear();
    out.reserve(3 * width * height);
    for y in 0..height {
        let row = &data[y * stride..];
        match format {
            CameraFormat::Rgba8 | CameraFormat::Bgra8 => {
                let (r, b) = if format == CameraFormat::Rgba8 {
                    (0, 2)
                } else {
                    (2, 0)
                };
                for p in row[..4 * width].chunks_exact(4) {
                    out.extend_from_slice(&[p[r], p[1], p[b]]);
                }
            }
            CameraFormat::Yuyv | CameraFormat::Uyvy => {
                // Byte offsets of Y0, U, Y1, V in a pixel pair.
                let [y0, u, y1, v] = if format == CameraFormat::Yuyv {
                    [0, 1, 2, 3]
                } else {
                    [1, 0, 3, 2]
                };
                for p in row[..2 * width].chunks_exact(4) {
                    out.extend_from_slice(&yuv_to_rgb(p[y0], p[u], p[v]));
                    out.extend_from_slice(&yuv_to_rgb(p[y1], p[u], p[v]));
                }
            }
            CameraFormat::Nv12 => {
                let chroma = &data[stride * height + (y / 2) * stride..][..width];
                for (x, &l) in row[..width].iter().enumerate() {
                    let uv = &chroma[x & !1..];
                    out.extend_from_slice(&yuv_to_rgb(l, uv[0], uv[1]));
                }
            }
        }
    }
    Ok(())
}

/// Packed RGB8 to grey in place of `out` (ITU-R BT.601 luma, as the
/// segmenter's own colour-to-grey step), for 1-channel models.
pub fn rgb8_to_gray8(rgb: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend(rgb.chunks_exact(3).map(|p| {
        clamp(0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]))
    }));
}

#[cfg(test)]
#[allow(clippy::expect_used)] // tests fail loudly
mod tests {
    use super::*;

    /// BT.601 limited range, RGB to Y'CbCr (the standard's forward matrix,
    /// written independently of `yuv_to_rgb`): Y = 16 + 65.481 R' +
    /// 128.553 G' + 24.966 B', Cb = 128 - 37.797 R' - 74.203 G' + 112 B',
    /// Cr = 128 + 112 R' - 93.786 G' - 18.214 B' (R', G', B' in 0..1).
    fn rgb_to_yuv([r, g, b]: [u8; 3]) -> [u8; 3] {
        let (r, g, b) = (r as f64 / 255.0, g as f64 / 255.0, b as f64 / 255.0);
        let y = 16.0 + 65.481 * r + 128.553 * g + 24.966 * b;
        let u = 128.0 - 37.797 * r - 74.203 * g + 112.0 * b;
        let v = 128.0 + 112.0 * r - 93.786 * g - 18.214 * b;
        [y.round() as u8, u.round() as u8, v.round() as u8]
    }

    fn assert_near(got: &[u8], want: &[u8], tol: u8, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(g.abs_diff(*w) <= tol, "{what}[{i}]: got {g}, want {w}");
        }
    }

    #[test]
    fn known_bt601_limited_values() {
        // (Y, Cb, Cr) -> RGB: black, white, the 100 % primaries, mid grey.
        let table = [
            ([16, 128, 128], [0, 0, 0]),
            ([235, 128, 128], [255, 255, 255]),
            ([81, 90, 240], [255, 0, 0]),
            ([145, 54, 34], [0, 255, 0]),
            ([41, 240, 110], [0, 0, 255]),
            ([126, 128, 128], [128, 128, 128]),
        ];
        for ([y, u, v], rgb) in table {
            assert_near(&yuv_to_rgb(y, u, v), &rgb, 1, &format!("yuv {y},{u},{v}"));
        }
        // Out-of-range codes clamp instead of wrapping.
        assert_eq!(yuv_to_rgb(255, 255, 255)[0], 255);
        assert_eq!(yuv_to_rgb(0, 0, 0)[0], 0);
    }

    /// A 4x4 image of four uniform 2x2 blocks (so chroma subsampling loses
    /// nothing) and its encodings, built by hand from `rgb_to_yuv`.
    fn blocks() -> (Vec<[u8; 3]>, usize, usize) {
        let colours = [[200, 30, 40], [10, 220, 90], [60, 70, 250], [128, 128, 128]];
        let (w, h) = (4, 4);
        let px = (0..h)
            .flat_map(|y| (0..w).map(move |x| colours[(y / 2) * 2 + x / 2]))
            .collect();
        (px, w, h)
    }

    #[test]
    fn yuv_formats_match_converting_to_rgb_first() {
        let (px, w, h) = blocks();
        let want: Vec<u8> = px.iter().flatten().copied().collect();
        let stride = 2 * w + 3; // row padding that must be skipped
        let mut yuyv = vec![0xEEu8; stride * h];
        let mut uyvy = vec![0xEEu8; stride * h];
        for y in 0..h {
            for x in (0..w).step_by(2) {
                let [y0, u, v] = rgb_to_yuv(px[y * w + x]);
                let [y1, _, _] = rgb_to_yuv(px[y * w + x + 1]);
                yuyv[y * stride + 2 * x..][..4].copy_from_slice(&[y0, u, y1, v]);
                uyvy[y * stride + 2 * x..][..4].copy_from_slice(&[u, y0, v, y1]);
            }
        }
        let nv_stride = w + 2;
        let mut nv12 = vec![0xEEu8; nv_stride * h * 3 / 2];
        for y in 0..h {
            for x in 0..w {
                let [l, u, v] = rgb_to_yuv(px[y * w + x]);
                nv12[y * nv_stride + x] = l;
                let c = nv_stride * h + (y / 2) * nv_stride + (x / 2) * 2;
                nv12[c] = u;
                nv12[c + 1] = v;
            }
        }
        let mut out = Vec::new();
        for (format, buf, stride) in [
            (CameraFormat::Yuyv, &yuyv, stride),
            (CameraFormat::Uyvy, &uyvy, stride),
            (CameraFormat::Nv12, &nv12, nv_stride),
        ] {
            to_rgb8(buf, w, h, stride, format, &mut out).expect("convert");
            // 8-bit Y'CbCr keeps RGB within 2 codes.
            assert_near(&out, &want, 2, &format!("{format:?}"));
        }
    }

    #[test]
    fn rgba_and_bgra_drop_alpha_and_reorder() {
        let (px, w, h) = blocks();
        let want: Vec<u8> = px.iter().flatten().copied().collect();
        let stride = 4 * w + 4;
        let mut rgba = vec![0u8; stride * h];
        let mut bgra = vec![0u8; stride * h];
        for (i, [r, g, b]) in px.iter().copied().enumerate() {
            let at = (i / w) * stride + (i % w) * 4;
            rgba[at..at + 4].copy_from_slice(&[r, g, b, 7]);
            bgra[at..at + 4].copy_from_slice(&[b, g, r, 7]);
        }
        let mut out = Vec::new();
        to_rgb8(&rgba, w, h, stride, CameraFormat::Rgba8, &mut out).expect("rgba");
        assert_eq!(out, want);
        to_rgb8(&bgra, w, h, stride, CameraFormat::Bgra8, &mut out).expect("bgra");
        assert_eq!(out, want);
    }

    #[test]
    fn geometry_is_checked() {
        use CameraFormat::*;
        // NV12 4x4, stride 6: 4 Y rows + 2 chroma rows, the last one 4 bytes.
        assert_eq!(Nv12.required_len(4, 4, 6).expect("nv12"), 6 * 5 + 4);
        assert_eq!(Yuyv.required_len(4, 3, 10).expect("yuyv"), 10 * 2 + 8);
        assert_eq!(Rgba8.required_len(3, 2, 12).expect("rgba"), 12 + 12);
        for (format, w, h, stride) in [
            (Nv12, 3, 4, 4),
            (Nv12, 4, 3, 4),
            (Yuyv, 3, 2, 8),
            (Uyvy, 4, 2, 7),
            (Rgba8, 0, 2, 8),
            (Bgra8, usize::MAX, 1, usize::MAX),
            (Rgba8, 2, usize::MAX, usize::MAX),
        ] {
            assert!(
                format.required_len(w, h, stride).is_err(),
                "{format:?} {w}x{h} stride {stride}"
            );
        }
        let mut out = Vec::new();
        let short = vec![0u8; 6 * 5 + 3];
        assert!(to_rgb8(&short, 4, 4, 6, Nv12, &mut out).is_err());
    }

    #[test]
    fn gray_is_bt601_luma() {
        let mut out = Vec::new();
        rgb8_to_gray8(&[255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 10, 10], &mut out);
        assert_eq!(out, vec![76, 150, 29, 10]);
    }
}
