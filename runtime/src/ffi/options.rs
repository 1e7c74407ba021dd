//! The options of `unet_segmenter_create_with` and `_from_memory`: the
//! `UnetOptions` struct, read by its `struct_size`, and their validation
//! into the runtime's own options.

use super::{invalid, UnetStatus};
use crate::segment::{Fit, SegmenterOptions};
use crate::session::{Backend, Ep, SessionOptions};

/// Which engine runs the model: one of the `UNET_BACKEND_` values.
pub type UnetBackend = i32;
/// ONNX Runtime (CPU) when its library is found, else tract.
pub const UNET_BACKEND_AUTO: UnetBackend = 0;
pub const UNET_BACKEND_TRACT: UnetBackend = 1;
pub const UNET_BACKEND_ORT_CPU: UnetBackend = 2;
/// Falls back to CPU unless `require_backend` is set.
pub const UNET_BACKEND_ORT_CUDA: UnetBackend = 3;
/// Falls back to CPU unless `require_backend` is set.
pub const UNET_BACKEND_ORT_TENSORRT: UnetBackend = 4;

/// How a frame is brought to the network: one of the `UNET_FIT_` values.
pub type UnetFit = i32;
/// Reproduce the geometry the model was trained at (default).
pub const UNET_FIT_MODEL: UnetFit = 0;
/// Run at the frame's native resolution, mirror-padded to a size the
/// network accepts.
pub const UNET_FIT_NATIVE: UnetFit = 1;

/// The smallest `struct_size` accepted: the fields up to `overlap`. Fields
/// past a caller's `struct_size` take their defaults.
pub const UNET_OPTIONS_MIN_SIZE: u32 = 32;

/// A `struct_size` beyond this is garbage, not a future version.
const OPTIONS_MAX_SIZE: usize = 1024;

/// Options for `unet_segmenter_create_with` and `_from_memory`. Start from
/// `unet_options_default()`, which sets `struct_size`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct UnetOptions {
    /// `sizeof(UnetOptions)` as the caller was compiled; at least
    /// `UNET_OPTIONS_MIN_SIZE`. Bytes past the library's own size must be 0.
    pub struct_size: u32,
    /// A `UNET_BACKEND_` value.
    pub backend: UnetBackend,
    /// Intra-op threads (default 2; at most 4 per core of this machine).
    pub threads: u32,
    /// CUDA / TensorRT device.
    pub device: i32,
    /// TensorRT: build fp16 engines (0 or 1).
    pub fp16: u32,
    /// Overrides the threshold from the model's metadata when in [0, 1];
    /// negative: the model's.
    pub threshold: f32,
    /// Overlap-tile inference when > 0: tile size in pixels.
    pub tile: u32,
    /// Overlap of neighbouring tiles in pixels.
    pub overlap: u32,
    /// 1: fail with `UNET_STATUS_BACKEND_UNAVAILABLE` instead of falling back
    /// to CPU when the requested provider is unavailable (needs an explicit
    /// backend, not `UNET_BACKEND_AUTO`). Default 0.
    pub require_backend: u32,
    /// A `UNET_FIT_` value (default `UNET_FIT_MODEL`).
    pub fit: UnetFit,
}

/// Default options: `struct_size` set, automatic back end, 2 threads,
/// device 0, no fp16, threshold from the model, no tiling, fallback allowed,
/// the model's training geometry.
#[no_mangle]
pub extern "C" fn unet_options_default() -> UnetOptions {
    UnetOptions {
        struct_size: std::mem::size_of::<UnetOptions>() as u32,
        backend: UNET_BACKEND_AUTO,
        threads: 2,
        device: 0,
        fp16: 0,
        threshold: -1.0,
        tile: 0,
        overlap: 0,
        require_backend: 0,
        fit: UNET_FIT_MODEL,
    }
}

/// Copies the caller's options by their `struct_size`: an older, shorter
/// struct gets defaults for the rest; a newer, longer one must leave what
/// this library does not know at zero.
///
/// # Safety
/// `options` must be non-null and readable for its `struct_size` bytes.
pub(super) unsafe fn read_options(options: *const UnetOptions) -> Result<UnetOptions, UnetStatus> {
    // SAFETY: every version of the struct starts with its u32 size.
    let size = unsafe { options.cast::<u32>().read_unaligned() } as usize;
    let ours = std::mem::size_of::<UnetOptions>();
    if size < UNET_OPTIONS_MIN_SIZE as usize || size > OPTIONS_MAX_SIZE || !size.is_multiple_of(4) {
        return Err(invalid(&format!(
            "options.struct_size is {size}: set it with unet_options_default() \
             (this library's UnetOptions has {ours} bytes, at least {UNET_OPTIONS_MIN_SIZE})"
        )));
    }
    let mut o = unet_options_default();
    let src = options.cast::<u8>();
    // SAFETY: the caller's struct holds `size` bytes; every field is a plain
    // 4-byte integer or float, valid for any bit pattern.
    unsafe {
        std::ptr::copy_nonoverlapping(src, (&mut o as *mut UnetOptions).cast(), size.min(ours))
    };
    if size > ours {
        let extra = unsafe { std::slice::from_raw_parts(src.add(ours), size - ours) };
        if extra.iter().any(|&b| b != 0) {
            return Err(invalid(&format!(
                "options set fields past byte {ours} that this library ({}) does not know",
                env!("CARGO_PKG_VERSION")
            )));
        }
    }
    Ok(o)
}

/// The most intra-op threads accepted: 4 per core (more only thrash).
fn max_threads() -> usize {
    4 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// What `options` ask for, validated, and the provider that must run when
/// `require_backend` is set.
pub(super) fn configure(
    o: &UnetOptions,
) -> Result<(Backend, SegmenterOptions, Option<&'static str>), UnetStatus> {
    let flag = |v: u32, name: &str| match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(invalid(&format!("options.{name} is {v}; expected 0 or 1"))),
    };
    let fp16 = flag(o.fp16, "fp16")?;
    let require = flag(o.require_backend, "require_backend")?;
    let (backend, provider) = match o.backend {
        UNET_BACKEND_AUTO => (Backend::Auto, None),
        UNET_BACKEND_TRACT => (Backend::Tract, Some("tract")),
        UNET_BACKEND_ORT_CPU => (Backend::Ort(Ep::Cpu), Some("ort:CPUExecutionProvider")),
        UNET_BACKEND_ORT_CUDA => (
            Backend::Ort(Ep::Cuda { device: o.device }),
            Some("ort:CUDAExecutionProvider"),
        ),
        UNET_BACKEND_ORT_TENSORRT => (
            Backend::Ort(Ep::TensorRt {
                fp16,
                cache_dir: None,
            }),
            Some("ort:TensorrtExecutionProvider"),
        ),
        b => {
            return Err(invalid(&format!(
                "backend {b} is not a UNET_BACKEND_ value (0..=4)"
            )))
        }
    };
    if require && provider.is_none() {
        return Err(invalid(
            "require_backend needs an explicit backend, not UNET_BACKEND_AUTO",
        ));
    }
    let cap = max_threads();
    if o.threads == 0 || o.threads as usize > cap {
        return Err(invalid(&format!(
            "threads is {}; expected 1..={cap} (4 per core here)",
            o.threads
        )));
    }
    if o.threshold.is_nan() || o.threshold > 1.0 {
        return Err(invalid(&format!(
            "threshold is {}; expected a probability in [0, 1], or negative for the model's",
            o.threshold
        )));
    }
    let fit = match o.fit {
        UNET_FIT_MODEL => Fit::Model,
        UNET_FIT_NATIVE => Fit::Pad,
        f => {
            return Err(invalid(&format!(
                "fit {f} is not a UNET_FIT_ value (0 or 1)"
            )))
        }
    };
    let options = SegmenterOptions {
        session: SessionOptions {
            threads: o.threads as usize,
            strict_backend: require,
            ..SessionOptions::default()
        },
        fit,
        threshold: (o.threshold >= 0.0).then_some(o.threshold),
        tiling: (o.tile > 0).then_some(crate::Tiling {
            tile: o.tile as usize,
            overlap: o.overlap as usize,
        }),
        ..SegmenterOptions::default()
    };
    Ok((backend, options, provider.filter(|_| require)))
}
