//! One fuzz input per runtime entry point, shared by the cargo-fuzz targets
//! (`fuzz/fuzz_targets/`) and the corpus replay (`fuzz_replay.rs`): any input
//! may be refused with an error, none may panic past the runtime, and what
//! succeeds must have the image's own size.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use image::{DynamicImage, GrayImage, RgbImage};
use unet_runtime::{
    Backend, Fit, RuntimeError, Segmentation, Segmenter, SegmenterOptions, SessionOptions, Tiling,
};

/// Tiny hand-built graphs (`tests/data/make_graphs.py`), compiled in so the
/// fuzz targets need no path.
const GRAPHS: [&[u8]; 3] = [
    include_bytes!("../data/color.onnx"),
    include_bytes!("../data/color_bgr.onnx"),
    include_bytes!("../data/head_sigmoid.onnx"),
];

/// Metadata keys the runtime reads, and one it must ignore.
const KEYS: [&str; 5] = [
    "unet.config",
    "unet.preprocessing",
    "unet.head",
    "unet.normalize_in_graph",
    "unet.other",
];

/// A scratch file holding `data`, removed on drop (the loaders take paths).
struct Scratch(PathBuf);

impl Scratch {
    fn new(ext: &str, data: &[u8]) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "unet-fuzz-{}-{}.{ext}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, data).expect("writing the scratch file");
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn options() -> SegmenterOptions {
    SegmenterOptions {
        session: SessionOptions {
            threads: 1,
            ..SessionOptions::default()
        },
        ..SegmenterOptions::default()
    }
}

/// Appends `metadata_props` entries (ModelProto field 14, StringStringEntryProto
/// key 1 / value 2) to an encoded model: protobuf concatenates repeated fields.
fn with_metadata(model: &[u8], entries: &[(&str, String)]) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut n: usize) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    fn field(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
        out.push(tag);
        varint(out, bytes.len());
        out.extend_from_slice(bytes);
    }
    let mut out = model.to_vec();
    for (key, value) in entries {
        let mut entry = Vec::new();
        field(&mut entry, 0x0a, key.as_bytes());
        field(&mut entry, 0x12, value.as_bytes());
        field(&mut out, (14 << 3) | 2, &entry);
    }
    out
}

/// Checks a result against the image it came from.
fn check(seg: &Segmentation, width: usize, height: usize) {
    assert_eq!((seg.width, seg.height), (width, height), "mask size");
    assert_eq!(seg.mask.len(), width * height, "mask length");
    assert_eq!(
        seg.probabilities.len(),
        seg.classes * width * height,
        "probabilities length"
    );
    if seg.classes == 1 {
        assert!(seg.mask.iter().all(|&m| m <= 1), "binary mask values");
    } else {
        assert!(
            seg.mask.iter().all(|&m| (m as usize) < seg.classes),
            "class indices"
        );
    }
}

/// First byte even: the rest is an ONNX file. Odd: one of the tiny graphs
/// (chosen by the byte) with the rest as metadata entries, separated by NUL,
/// each a key selector byte then its value. Loaded on tract and, when that
/// succeeds, run on a 20x12 frame.
pub fn onnx(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        let entries: Vec<(&str, String)> = rest
            .split(|&b| b == 0)
            .filter_map(|e| e.split_first())
            .map(|(&k, v)| {
                (
                    KEYS[k as usize % KEYS.len()],
                    String::from_utf8_lossy(v).into(),
                )
            })
            .collect();
        with_metadata(GRAPHS[(mode as usize / 2) % GRAPHS.len()], &entries)
    };
    let scratch = Scratch::new("onnx", &file);
    let Ok(mut segmenter) = Segmenter::from_file_with(&scratch.0, Backend::Tract, options()) else {
        return;
    };
    let (w, h) = (20, 12);
    let frame = if segmenter.info().in_channels == 1 {
        DynamicImage::ImageLuma8(GrayImage::from_fn(w, h, |x, y| {
            image::Luma([(x * 13 + y * 7) as u8])
        }))
    } else {
        DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 13) as u8, (y * 21) as u8, (x * y) as u8])
        }))
    };
    if let Ok(seg) = segmenter.segment(&frame) {
        check(&seg, w as usize, h as usize);
    }
}

/// First byte: options (bit 0 tiling, bits 1-2 tile size 8..64, bits 3-4
/// overlap, bit 5 resize to 24x16, bit 6 threshold 0.3); the rest is an image
/// file, its format guessed from its content, decoded and segmented with
/// `color.onnx`. Images are capped at 256 pixels a side (`unet-infer` has
/// larger limits) so each input runs in milliseconds.
pub fn image(data: &[u8]) {
    let Some((&flags, file)) = data.split_first() else {
        return;
    };
    let Ok(reader) = image::ImageReader::new(Cursor::new(file)).with_guessed_format() else {
        return;
    };
    let mut reader = reader;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(256);
    limits.max_image_height = Some(256);
    limits.max_alloc = Some(16 << 20);
    reader.limits(limits);
    let Ok(decoded) = reader.decode() else {
        return;
    };
    let mut options = options();
    if flags & 1 != 0 {
        options.tiling = Some(Tiling {
            tile: 8 << ((flags >> 1) & 3),
            overlap: 4 * ((flags >> 3) & 3) as usize,
        });
    }
    if flags & 32 != 0 {
        options.fit = Fit::Resize {
            width: 24,
            height: 16,
        };
    }
    if flags & 64 != 0 {
        options.threshold = Some(0.3);
    }
    let model = Scratch::new("onnx", GRAPHS[0]);
    let mut segmenter = match Segmenter::from_file_with(&model.0, Backend::Tract, options) {
        Ok(s) => s,
        // Fuzzed options may be impossible (overlap >= tile, tiles with a
        // resize): refused, as they must be.
        Err(RuntimeError::BadOption { .. }) => return,
        Err(e) => panic!("color.onnx loads: {e}"),
    };
    if let Ok(seg) = segmenter.segment(&decoded) {
        check(&seg, decoded.width() as usize, decoded.height() as usize);
    }
}

/// Reads fuzz bytes as little-endian fields, zeros once they run out.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
}

/// The C ABI as firmware calls it: options from the fuzz input (threads,
/// threshold, tiling, fit; backend, fit and pixel format as the raw integers
/// a C caller may pass, valid or not), `color.onnx` loaded, then one frame of
/// fuzzer-chosen size, stride and pixel format whose bytes are the rest of
/// the input, with a `pixels_len` that may fall short of the frame, into
/// mask and probability buffers of fuzzer-chosen lengths. Buffers are
/// exactly as long as the lengths passed, so a read or write past them is
/// caught (by AddressSanitizer under cargo-fuzz), and an accepted frame
/// must fit its buffer.
pub fn cabi(data: &[u8]) {
    use std::ffi::CString;
    use unet_runtime::ffi::*;

    let mut f = Fields(data);
    let mut options = unet_options_default();
    // Mostly meaningful values, sometimes any integer (the header promises
    // UNET_STATUS_INVALID_ARGUMENT for those).
    fn raw(f: &mut Fields<'_>, valid: i32) -> i32 {
        match f.u8() {
            0..=223 => i32::from(f.u8()) % valid,
            _ => f.u32() as i32,
        }
    }
    options.backend = match f.u8() % 4 {
        0 => UNET_BACKEND_TRACT,
        1 => UNET_BACKEND_AUTO,
        _ => raw(&mut f, 6),
    };
    options.fit = raw(&mut f, 3);
    if f.u8() == 0xff {
        options.struct_size = f.u32();
    }
    options.threads = u32::from(f.u8() % 9);
    options.threshold = f32::from_bits(f.u32());
    let tiling = f.u8();
    if tiling & 1 != 0 {
        options.tile = u32::from(tiling >> 1);
        options.overlap = u32::from(f.u8() % 64);
    }
    let width = usize::from(f.u16() % 300);
    let height = usize::from(f.u16() % 300);
    let pad = usize::from(f.u8());
    let format = raw(&mut f, 8);
    // Bytes per pixel of the first (or only) plane; 0 for no such format.
    let bytes_per_pixel = match format {
        UNET_PIXEL_FORMAT_RGB8 | UNET_PIXEL_FORMAT_BGR8 => 3,
        UNET_PIXEL_FORMAT_GRAY8 | UNET_PIXEL_FORMAT_NV12 => 1,
        UNET_PIXEL_FORMAT_RGBA8 | UNET_PIXEL_FORMAT_BGRA8 => 4,
        UNET_PIXEL_FORMAT_YUYV | UNET_PIXEL_FORMAT_UYVY => 2,
        _ => 0,
    };
    let mask_short = usize::from(f.u8() % 4);
    let probabilities = f.u8();
    let stride = width * bytes_per_pixel.max(1) + pad;
    // The least any frame of this geometry reads: the first plane's rows.
    let least = if width == 0 || height == 0 {
        0
    } else {
        stride * (height - 1) + width * bytes_per_pixel.max(1)
    };
    // NV12's chroma plane follows: half the rows again, rounded up.
    let planes = if format == UNET_PIXEL_FORMAT_NV12 {
        least + stride * height.div_ceil(2)
    } else {
        least
    };
    let short = usize::from(f.u8());
    let len = match short {
        0..=191 => planes,
        _ => planes.saturating_sub(usize::from(f.u16())),
    };
    let pixels: Vec<u8> = f.0.iter().copied().cycle().take(len).collect();
    if pixels.len() < len {
        return;
    }

    let model = Scratch::new("onnx", GRAPHS[0]);
    let path = CString::new(model.0.to_string_lossy().as_bytes()).expect("no NUL in a temp path");
    let mut seg: *mut UnetSegmenter = std::ptr::null_mut();
    // SAFETY: valid C string, options and out-pointer.
    let status = unsafe { unet_segmenter_create_with(path.as_ptr(), &options, &mut seg) };
    if status != UnetStatus::Ok {
        assert!(seg.is_null(), "a failed create must not hand out a handle");
        return;
    }
    let plane = width * height;
    let mut mask = vec![0u8; plane.saturating_sub(mask_short)];
    let mut probs = vec![0f32; (plane * usize::from(probabilities % 3)).saturating_sub(mask_short)];
    let probs_ptr = if probabilities % 3 == 0 {
        std::ptr::null_mut()
    } else {
        probs.as_mut_ptr()
    };
    // A frame with no pixels still gets a non-null pointer.
    let one = [0u8];
    // SAFETY: every buffer is at least as long as the length passed with it.
    let status = unsafe {
        unet_segmenter_segment(
            seg,
            if pixels.is_empty() {
                one.as_ptr()
            } else {
                pixels.as_ptr()
            },
            pixels.len(),
            width,
            height,
            stride,
            format,
            mask.as_mut_ptr(),
            mask.len(),
            probs_ptr,
            probs.len(),
        )
    };
    if status == UnetStatus::Ok {
        assert!(width > 0 && height > 0, "an empty frame was accepted");
        assert!(bytes_per_pixel > 0, "pixel format {format} was accepted");
        assert!(
            pixels.len() >= least,
            "a frame longer than its buffer was accepted"
        );
        assert!(mask.len() >= plane, "a short mask buffer was accepted");
        assert!(mask.iter().all(|&m| m <= 1), "binary mask values");
    }
    // SAFETY: the handle came from create; destroy nulls it.
    unsafe { unet_segmenter_destroy(&mut seg) };
    assert!(seg.is_null());
}
