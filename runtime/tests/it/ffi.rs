//! The C ABI called from Rust through its `extern "C"` functions: sharing a
//! handle between threads, hostile arguments, options by `struct_size`,
//! camera formats, loading from memory, warm-up and queries. (The C program
//! in tests/c covers the same ground from C; see `c_abi`.)

use std::ffi::{c_char, CStr, CString};
use std::path::Path;
use std::ptr::null_mut;

use unet_runtime::ffi::*;

use crate::common::*;

fn last_error() -> String {
    let e = unet_last_error();
    assert!(!e.is_null(), "a failed call left no message");
    unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
}

/// The back end these tests run on.
fn backend() -> UnetBackend {
    if cfg!(feature = "tract") {
        UNET_BACKEND_TRACT
    } else {
        UNET_BACKEND_ORT_CPU
    }
}

fn options() -> UnetOptions {
    UnetOptions {
        backend: backend(),
        ..unet_options_default()
    }
}

/// A handle destroyed on drop; shared between threads to test the lock.
#[derive(Debug)]
struct Handle(*mut UnetSegmenter);
// SAFETY: the C ABI documents a handle as shareable (calls serialise).
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        assert_eq!(
            unsafe { unet_segmenter_destroy(&mut self.0) },
            UnetStatus::Ok
        );
    }
}

fn create_with(path: &Path, options: &UnetOptions) -> Result<Handle, (UnetStatus, String)> {
    let c = CString::new(path.to_str().expect("utf-8 path")).expect("no NUL");
    let mut seg = std::ptr::dangling_mut::<UnetSegmenter>();
    let st = unsafe { unet_segmenter_create_with(c.as_ptr(), options, &mut seg) };
    if st == UnetStatus::Ok {
        assert!(!seg.is_null());
        Ok(Handle(seg))
    } else {
        assert!(seg.is_null(), "a failed create must null *out");
        Err((st, last_error()))
    }
}

fn create(path: &Path) -> Handle {
    create_with(path, &options()).unwrap_or_else(|e| panic!("create: {e:?}"))
}

/// Mask and probabilities of one frame, or the status and message.
type Outcome = Result<(Vec<u8>, Vec<f32>), (UnetStatus, String)>;

fn segment(
    h: &Handle,
    buf: &[u8],
    w: usize,
    ht: usize,
    stride: usize,
    f: UnetPixelFormat,
) -> Outcome {
    segment_len(h, buf, buf.len(), w, ht, stride, f)
}

/// As `segment`, claiming the buffer holds `len` bytes.
fn segment_len(
    h: &Handle,
    buf: &[u8],
    len: usize,
    w: usize,
    ht: usize,
    stride: usize,
    f: UnetPixelFormat,
) -> Outcome {
    let plane = w.saturating_mul(ht).min(1 << 16);
    let mut mask = vec![7u8; plane];
    let mut probs = vec![-1f32; plane];
    let st = unsafe {
        unet_segmenter_segment(
            h.0,
            buf.as_ptr(),
            len,
            w,
            ht,
            stride,
            f,
            mask.as_mut_ptr(),
            mask.len(),
            probs.as_mut_ptr(),
            probs.len(),
        )
    };
    if st == UnetStatus::Ok {
        Ok((mask, probs))
    } else {
        Err((st, last_error()))
    }
}

/// A deterministic packed RGB8 texture.
fn texture(w: usize, h: usize, seed: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(3 * w * h);
    for y in 0..h {
        for x in 0..w {
            v.extend_from_slice(&[
                ((x * 7 + y * 3 + seed) % 256) as u8,
                ((x * y + seed * 5) % 251) as u8,
                ((255 + seed).wrapping_sub(x * 2 + y) % 256) as u8,
            ]);
        }
    }
    v
}

fn assert_invalid(outcome: Result<impl std::fmt::Debug, (UnetStatus, String)>, needle: &str) {
    match outcome {
        Err((UnetStatus::InvalidArgument, msg)) => {
            assert!(msg.contains(needle), "message `{msg}` lacks `{needle}`")
        }
        other => panic!("expected INVALID_ARGUMENT ({needle}), got {other:?}"),
    }
}

/// Issue 14: 4 threads x 1000 calls with mixed frame sizes on one handle
/// segfaulted or returned other frames' masks with OK.
#[test]
fn one_handle_shared_by_four_threads_returns_each_frames_own_result() {
    shared_handle(
        &data("color.onnx"),
        &[(7, 5), (16, 9), (3, 11), (32, 24), (12, 4)],
        1000,
    );
    // A real U-Net (fewer calls: each size change replans the graph).
    shared_handle(
        &fixture("unet", "model.onnx"),
        &[(16, 16), (37, 21), (32, 48)],
        12,
    );
}

fn shared_handle(model: &Path, sizes: &[(usize, usize)], calls: usize) {
    let handle = create(model);
    let frames: Vec<(usize, usize, Vec<u8>)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &(w, h))| (w, h, texture(w, h, i)))
        .collect();
    let expected: Vec<_> = frames
        .iter()
        .map(|(w, h, f)| {
            segment(&handle, f, *w, *h, 3 * w, UNET_PIXEL_FORMAT_RGB8).expect("reference")
        })
        .collect();
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (handle, frames, expected) = (&handle, &frames, &expected);
            s.spawn(move || {
                for i in 0..calls {
                    let k = (i * 3 + t) % frames.len();
                    let (w, h, f) = &frames[k];
                    let got = segment(handle, f, *w, *h, 3 * w, UNET_PIXEL_FORMAT_RGB8)
                        .unwrap_or_else(|e| panic!("thread {t} call {i} ({w}x{h}): {e:?}"));
                    assert!(
                        got == expected[k],
                        "thread {t} call {i} ({w}x{h}): wrong result"
                    );
                }
            });
        }
    });
    println!(
        "{}: 4 threads x {calls} calls in {:.2?}",
        model.display(),
        started.elapsed()
    );
}

/// Issue 14: `UnetBackend` 99 or -1 segfaulted; pixel format 99 returned OK.
#[test]
fn out_of_range_enums_are_refused() {
    for b in [99, -1, 5, i32::MIN] {
        assert_invalid(
            create_with(
                &data("color.onnx"),
                &UnetOptions {
                    backend: b,
                    ..options()
                },
            ),
            "backend",
        );
        // The short form takes the same raw value.
        let c = CString::new(data("color.onnx").to_str().expect("utf-8")).expect("path");
        let mut seg = null_mut();
        assert_eq!(
            unsafe { unet_segmenter_create(c.as_ptr(), b, &mut seg) },
            UnetStatus::InvalidArgument
        );
        assert!(seg.is_null());
    }
    for fit in [2, -1, 99] {
        assert_invalid(
            create_with(&data("color.onnx"), &UnetOptions { fit, ..options() }),
            "fit",
        );
    }
    let handle = create(&data("color.onnx"));
    let frame = texture(4, 4, 0);
    for f in [99, -1, 8, i32::MAX] {
        assert_invalid(segment(&handle, &frame, 4, 4, 12, f), "pixel format");
    }
}

/// Issue 14: a frame larger than its buffer read past it (6000² segfaulted;
/// 72² over a 64² buffer returned OK after invalid reads).
#[test]
fn frames_larger_than_their_buffer_are_refused() {
    let handle = create(&data("color.onnx"));
    let small = texture(64, 64, 1);
    let rgb = UNET_PIXEL_FORMAT_RGB8;
    assert_invalid(
        segment(&handle, &small, 6000, 6000, 18000, rgb),
        "pixels holds 12288 bytes",
    );
    assert_invalid(segment(&handle, &small, 72, 72, 216, rgb), "pixels holds");
    // One byte short, with a stride longer than the row.
    let padded = vec![0u8; 13 * 3 + 12];
    assert_invalid(
        segment_len(&handle, &padded, padded.len() - 1, 4, 4, 13, rgb),
        "needs 51",
    );
    assert!(segment(&handle, &padded, 4, 4, 13, rgb).is_ok());
    // Sizes whose byte count overflows are refused before any arithmetic wraps.
    let e = segment(&handle, &small, usize::MAX / 2, 3, usize::MAX, rgb);
    assert!(matches!(e, Err((UnetStatus::InvalidInput, _))), "{e:?}");
    let e = segment(&handle, &small, 4, usize::MAX, 12, rgb);
    assert!(matches!(e, Err((UnetStatus::InvalidInput, _))), "{e:?}");
    // The camera formats' own geometry: NV12 needs 1.5 planes.
    let nv12 = vec![0u8; 64 * 64 * 3 / 2];
    assert_invalid(
        segment_len(
            &handle,
            &nv12,
            nv12.len() - 1,
            64,
            64,
            64,
            UNET_PIXEL_FORMAT_NV12,
        ),
        "needs 6144",
    );
    assert!(segment(&handle, &nv12, 64, 64, 64, UNET_PIXEL_FORMAT_NV12).is_ok());
}

/// Issue 14: `threads` 100000 started thousands of threads and hung.
#[test]
fn absurd_thread_counts_are_refused() {
    for threads in [0, 100_000, u32::MAX] {
        assert_invalid(
            create_with(
                &data("color.onnx"),
                &UnetOptions {
                    threads,
                    ..options()
                },
            ),
            "threads",
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    assert!(create_with(
        &data("color.onnx"),
        &UnetOptions {
            threads: 4 * cores,
            ..options()
        }
    )
    .is_ok());
    assert_invalid(
        create_with(
            &data("color.onnx"),
            &UnetOptions {
                threads: 4 * cores + 1,
                ..options()
            },
        ),
        "threads",
    );
}

#[test]
fn other_option_values_are_checked() {
    let path = data("color.onnx");
    for threshold in [f32::NAN, 1.5, f32::INFINITY] {
        assert_invalid(
            create_with(
                &path,
                &UnetOptions {
                    threshold,
                    ..options()
                },
            ),
            "threshold",
        );
    }
    assert_invalid(
        create_with(
            &path,
            &UnetOptions {
                fp16: 2,
                ..options()
            },
        ),
        "fp16",
    );
    assert_invalid(
        create_with(
            &path,
            &UnetOptions {
                require_backend: 3,
                ..options()
            },
        ),
        "require_backend",
    );
    assert_invalid(
        create_with(
            &path,
            &UnetOptions {
                backend: UNET_BACKEND_AUTO,
                require_backend: 1,
                ..options()
            },
        ),
        "explicit backend",
    );
}

/// `struct_size`: too small or garbage is refused; fields past a shorter
/// (older) caller's struct are not read; a longer (newer) caller's struct
/// is accepted while what this library does not know is zero.
#[test]
fn options_are_read_by_their_struct_size() {
    let path = data("color.onnx");
    let ours = std::mem::size_of::<UnetOptions>() as u32;
    assert_eq!(unet_options_default().struct_size, ours);
    for struct_size in [
        0,
        4,
        UNET_OPTIONS_MIN_SIZE - 4,
        UNET_OPTIONS_MIN_SIZE + 2,
        1 << 20,
        u32::MAX,
    ] {
        assert_invalid(
            create_with(
                &path,
                &UnetOptions {
                    struct_size,
                    ..options()
                },
            ),
            "struct_size",
        );
    }
    // An older caller: bad values past its size are never read.
    let old = UnetOptions {
        struct_size: UNET_OPTIONS_MIN_SIZE,
        fit: 12345,
        require_backend: 77,
        ..options()
    };
    assert!(create_with(&path, &old).is_ok());
    // The known fields are read: a threshold within the old size applies.
    let old = UnetOptions {
        threshold: 0.9,
        ..old
    };
    let handle = create_with(&path, &old).expect("old struct");
    let mut t = 0.0f32;
    assert_eq!(
        unsafe { unet_segmenter_threshold(handle.0, &mut t) },
        UnetStatus::Ok
    );
    assert_eq!(t, 0.9);

    // A newer caller: our struct followed by fields we do not know.
    #[repr(C)]
    struct Newer {
        base: UnetOptions,
        future: [u32; 2],
    }
    let mut newer = Newer {
        base: UnetOptions {
            struct_size: std::mem::size_of::<Newer>() as u32,
            ..options()
        },
        future: [0, 0],
    };
    let c = CString::new(path.to_str().expect("utf-8")).expect("path");
    let create_newer = |newer: &Newer| {
        let mut seg = null_mut();
        let p = (newer as *const Newer).cast::<UnetOptions>();
        let st = unsafe { unet_segmenter_create_with(c.as_ptr(), p, &mut seg) };
        if st == UnetStatus::Ok {
            Ok(Handle(seg))
        } else {
            Err((st, last_error()))
        }
    };
    assert!(create_newer(&newer).is_ok());
    newer.future[1] = 1;
    assert_invalid(create_newer(&newer), "does not know");
}

/// BT.601 limited range by hand, the integer form most capture software
/// uses (C = Y - 16, D = U - 128, E = V - 128; R = (298 C + 409 E + 128) >> 8,
/// G = (298 C - 100 D - 208 E + 128) >> 8, B = (298 C + 516 D + 128) >> 8):
/// independent of the runtime's own conversion, within 1 of it.
fn yuv_by_hand(y: u8, u: u8, v: u8) -> [u8; 3] {
    let (c, d, e) = (y as i32 - 16, u as i32 - 128, v as i32 - 128);
    let clip = |x: i32| ((x + 128) >> 8).clamp(0, 255) as u8;
    [
        clip(298 * c + 409 * e),
        clip(298 * c - 100 * d - 208 * e),
        clip(298 * c + 516 * d),
    ]
}

/// Segmenting a camera frame gives what converting it to RGB by hand first
/// gives.
#[test]
fn camera_formats_match_converting_to_rgb_first() {
    let handle = create(&data("color.onnx"));
    let (w, h) = (10, 6);
    // Deterministic Y, U, V planes at full resolution; chroma is taken at
    // even x (YUYV/UYVY) or even x and y (NV12).
    let yv = |x: usize, y: usize| (16 + (x * 23 + y * 31) % 220) as u8;
    let uv = |x: usize, y: usize| (16 + (x * 37 + y * 11) % 225) as u8;
    let vv = |x: usize, y: usize| (16 + (x * 13 + y * 41 + 60) % 225) as u8;
    let mut yuyv = Vec::new();
    let mut uyvy = Vec::new();
    let stride = 2 * w + 6;
    for y in 0..h {
        for x in (0..w).step_by(2) {
            let (y0, y1, u, v) = (yv(x, y), yv(x + 1, y), uv(x, y), vv(x, y));
            yuyv.extend_from_slice(&[y0, u, y1, v]);
            uyvy.extend_from_slice(&[u, y0, v, y1]);
        }
        yuyv.extend_from_slice(&[0xEE; 6]);
        uyvy.extend_from_slice(&[0xEE; 6]);
    }
    let mut nv12: Vec<u8> = (0..h).flat_map(|y| (0..w).map(move |x| yv(x, y))).collect();
    for y in (0..h).step_by(2) {
        for x in (0..w).step_by(2) {
            nv12.extend_from_slice(&[uv(x, y), vv(x, y)]);
        }
    }
    let by_hand = |chroma_row: fn(usize) -> usize| -> Vec<u8> {
        (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .flat_map(|(x, y)| {
                let (cx, cy) = (x & !1, chroma_row(y));
                yuv_by_hand(yv(x, y), uv(cx, cy), vv(cx, cy))
            })
            .collect()
    };
    let packed = by_hand(|y| y);
    let planar = by_hand(|y| y & !1);
    let mut rgba = Vec::new();
    let mut bgra = Vec::new();
    for p in texture(w, h, 3).chunks_exact(3) {
        rgba.extend_from_slice(&[p[0], p[1], p[2], 0x11]);
        bgra.extend_from_slice(&[p[2], p[1], p[0], 0x22]);
    }
    let rgb = UNET_PIXEL_FORMAT_RGB8;
    for (name, frame, stride, format, reference, tol) in [
        ("yuyv", &yuyv, stride, UNET_PIXEL_FORMAT_YUYV, &packed, 2e-3),
        ("uyvy", &uyvy, stride, UNET_PIXEL_FORMAT_UYVY, &packed, 2e-3),
        ("nv12", &nv12, w, UNET_PIXEL_FORMAT_NV12, &planar, 2e-3),
        (
            "rgba",
            &rgba,
            4 * w,
            UNET_PIXEL_FORMAT_RGBA8,
            &texture(w, h, 3),
            0.0,
        ),
        (
            "bgra",
            &bgra,
            4 * w,
            UNET_PIXEL_FORMAT_BGRA8,
            &texture(w, h, 3),
            0.0,
        ),
    ] {
        let (mask, probs) = segment(&handle, frame, w, h, stride, format)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let (want_mask, want) = segment(&handle, reference, w, h, 3 * w, rgb).expect("reference");
        // color.onnx: p = sigmoid((R - G) / 255); one code of R or G moves p
        // by at most 0.25 / 255 (1e-3), and each may be one code off.
        let diff = max_abs_diff(&probs, &want);
        assert!(diff <= tol as f32, "{name}: probabilities differ by {diff}");
        for i in 0..w * h {
            if (want[i] - 0.5).abs() > 2.5e-3 {
                assert_eq!(mask[i], want_mask[i], "{name}: mask at {i}");
            }
        }
    }
    // Known colours: BT.601 limited red (81, 90, 240) and green (145, 54, 34).
    let frame = [81, 90, 145, 240, 81, 90, 145, 240];
    let (mask, probs) = segment(&handle, &frame, 2, 2, 4, UNET_PIXEL_FORMAT_YUYV).expect("yuyv");
    // Pairs share chroma: red's (90, 240) makes both pixels of a pair reddish.
    assert_eq!(mask, vec![1, 1, 1, 1], "{probs:?}");
    let frame = [145, 54, 145, 34, 81, 90, 81, 240];
    let (mask, _) = segment(&handle, &frame, 2, 2, 4, UNET_PIXEL_FORMAT_YUYV).expect("yuyv");
    assert_eq!(mask, vec![0, 0, 1, 1]);
}

/// A model loaded from memory behaves as the same file; the buffer may be
/// freed once create returns; junk is refused like a bad file.
#[test]
fn create_from_memory() {
    let path = data("color.onnx");
    let from_file = create(&path);
    let mut bytes = std::fs::read(&path).expect("model");
    let mut seg = std::ptr::dangling_mut::<UnetSegmenter>();
    let st = unsafe {
        unet_segmenter_create_from_memory(bytes.as_ptr(), bytes.len(), &options(), &mut seg)
    };
    assert_eq!(st, UnetStatus::Ok);
    let from_memory = Handle(seg);
    bytes.fill(0);
    drop(bytes);
    let frame = texture(9, 7, 2);
    let rgb = UNET_PIXEL_FORMAT_RGB8;
    assert_eq!(
        segment(&from_memory, &frame, 9, 7, 27, rgb).expect("memory"),
        segment(&from_file, &frame, 9, 7, 27, rgb).expect("file")
    );
    let mut name = std::ptr::null();
    assert_eq!(
        unsafe { unet_segmenter_class_name(from_memory.0, 0, &mut name) },
        UnetStatus::Ok
    );
    assert_eq!(unsafe { CStr::from_ptr(name) }.to_str(), Ok("foreground"));

    let load = |data: *const u8, len: usize, options: *const UnetOptions| {
        let mut seg = std::ptr::dangling_mut::<UnetSegmenter>();
        let st = unsafe { unet_segmenter_create_from_memory(data, len, options, &mut seg) };
        assert!(seg.is_null());
        (st, last_error())
    };
    let junk = [0x5Au8; 100];
    let (st, msg) = load(junk.as_ptr(), junk.len(), &options());
    assert_eq!(st, UnetStatus::InvalidModel, "{msg}");
    assert!(msg.contains("<memory>"), "{msg}");
    // Truncated: a valid model cut short.
    let bytes = std::fs::read(fixture("unet", "model.onnx")).expect("model");
    let (st, msg) = load(bytes.as_ptr(), bytes.len() / 2, &options());
    assert_eq!(st, UnetStatus::InvalidModel, "{msg}");
    assert_eq!(
        load(std::ptr::null(), 10, &options()).0,
        UnetStatus::InvalidArgument
    );
    assert_eq!(
        load(junk.as_ptr(), 0, &options()).0,
        UnetStatus::InvalidArgument
    );
    assert_eq!(
        load(junk.as_ptr(), 10, std::ptr::null()).0,
        UnetStatus::InvalidArgument
    );
}

#[test]
fn queries_and_warmup() {
    let handle = create(&data("color.onnx"));
    let mut classes = 0usize;
    assert_eq!(
        unsafe { unet_segmenter_classes(handle.0, &mut classes) },
        UnetStatus::Ok
    );
    assert_eq!(classes, 1);
    let mut name: *const c_char = std::ptr::null();
    assert_eq!(
        unsafe { unet_segmenter_class_name(handle.0, 0, &mut name) },
        UnetStatus::Ok
    );
    assert_eq!(unsafe { CStr::from_ptr(name) }.to_str(), Ok("foreground"));
    assert_eq!(
        unsafe { unet_segmenter_class_name(handle.0, 1, &mut name) },
        UnetStatus::InvalidArgument
    );
    let mut t = 0.0f32;
    assert_eq!(
        unsafe { unet_segmenter_threshold(handle.0, &mut t) },
        UnetStatus::Ok
    );
    assert_eq!(t, 0.5, "color.onnx's metadata");
    let (mut w, mut h, mut c) = (9usize, 9usize, 0usize);
    assert_eq!(
        unsafe { unet_segmenter_input_size(handle.0, &mut w, &mut h, &mut c) },
        UnetStatus::Ok
    );
    assert_eq!((w, h, c), (0, 0, 3));
    let mut provider: *const c_char = std::ptr::null();
    assert_eq!(
        unsafe { unet_segmenter_provider(handle.0, &mut provider) },
        UnetStatus::Ok
    );
    let provider = unsafe { CStr::from_ptr(provider) }.to_string_lossy();
    assert!(
        provider == "tract" || provider.starts_with("ort:"),
        "{provider}"
    );
    // Null outs and handles.
    assert_eq!(
        unsafe { unet_segmenter_classes(handle.0, null_mut()) },
        UnetStatus::InvalidArgument
    );
    assert_eq!(
        unsafe { unet_segmenter_classes(null_mut(), &mut classes) },
        UnetStatus::InvalidArgument
    );
    assert_eq!(
        unsafe { unet_segmenter_threshold(null_mut(), &mut t) },
        UnetStatus::InvalidArgument
    );
    assert_eq!(
        unsafe { unet_segmenter_input_size(handle.0, &mut w, null_mut(), &mut c) },
        UnetStatus::InvalidArgument
    );
    assert_eq!(
        unsafe { unet_segmenter_class_name(handle.0, 0, null_mut()) },
        UnetStatus::InvalidArgument
    );

    // An overridden threshold is what the query reports, and what masks use.
    let over = create_with(
        &data("color.onnx"),
        &UnetOptions {
            threshold: 0.75,
            ..options()
        },
    )
    .expect("create");
    assert_eq!(
        unsafe { unet_segmenter_threshold(over.0, &mut t) },
        UnetStatus::Ok
    );
    assert_eq!(t, 0.75);
    let red = [255u8, 0, 0];
    let (mask, _) = segment(&over, &red, 1, 1, 3, UNET_PIXEL_FORMAT_RGB8).expect("red");
    assert_eq!(mask, vec![0], "sigmoid(1) = 0.73 is below 0.75");

    // Warm-up runs a frame of that size; bad sizes are refused.
    assert_eq!(
        unsafe { unet_segmenter_warmup(handle.0, 24, 16) },
        UnetStatus::Ok
    );
    assert_eq!(
        unsafe { unet_segmenter_warmup(handle.0, 0, 16) },
        UnetStatus::InvalidInput
    );
    assert_eq!(
        unsafe { unet_segmenter_warmup(handle.0, usize::MAX, 16) },
        UnetStatus::InvalidInput
    );
    assert_eq!(
        unsafe { unet_segmenter_warmup(null_mut(), 24, 16) },
        UnetStatus::InvalidArgument
    );
}

/// A file without `unet.config`: the class count is learnt from the first frame.
#[test]
fn classes_of_a_file_without_config_come_from_the_first_frame() {
    // fixtures/unet: a plain torch export (binary head); warm-up sees it.
    let handle = create(&fixture("unet", "model.onnx"));
    assert_eq!(
        unsafe { unet_segmenter_warmup(handle.0, 16, 16) },
        UnetStatus::Ok
    );
    let mut classes = 0usize;
    assert_eq!(
        unsafe { unet_segmenter_classes(handle.0, &mut classes) },
        UnetStatus::Ok
    );
    assert_eq!(classes, 1);
    let mut name: *const c_char = std::ptr::dangling::<c_char>();
    assert_eq!(
        unsafe { unet_segmenter_class_name(handle.0, 0, &mut name) },
        UnetStatus::Ok
    );
    assert!(name.is_null(), "the file records no class names");
}

/// `require_backend`: a provider that is not there fails instead of
/// falling back to CPU.
#[test]
fn require_backend_fails_instead_of_falling_back() {
    let path = data("color.onnx");
    if cfg!(feature = "tract") {
        let strict = UnetOptions {
            backend: UNET_BACKEND_TRACT,
            require_backend: 1,
            ..options()
        };
        assert!(create_with(&path, &strict).is_ok());
    }
    if !ort_available("require_backend on ort") {
        return;
    }
    // This machine has no CUDA: without the flag ORT falls back to CPU...
    let cuda = UnetOptions {
        backend: UNET_BACKEND_ORT_CUDA,
        ..options()
    };
    let handle = create_with(&path, &cuda).expect("fallback");
    let mut provider: *const c_char = std::ptr::null();
    assert_eq!(
        unsafe { unet_segmenter_provider(handle.0, &mut provider) },
        UnetStatus::Ok
    );
    let provider = unsafe { CStr::from_ptr(provider) }
        .to_string_lossy()
        .into_owned();
    if provider != "ort:CPUExecutionProvider" {
        println!("SKIPPED require_backend: this machine runs {provider}");
        return;
    }
    // ... and with it the load fails.
    match create_with(
        &path,
        &UnetOptions {
            require_backend: 1,
            ..cuda
        },
    ) {
        Err((UnetStatus::BackendUnavailable, msg)) => assert!(msg.contains("CUDA"), "{msg}"),
        other => panic!("expected BACKEND_UNAVAILABLE, got {:?}", other.map(|_| ())),
    }
}
