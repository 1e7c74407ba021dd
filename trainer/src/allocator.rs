//! Keeps freed heap memory in the process for the next training step.
//!
//! A step allocates and frees the same few hundred MB of activations and
//! gradients every time. glibc's malloc serves blocks above its (adaptive,
//! at most 32 MiB) threshold with `mmap` and trims the heap top after frees, so
//! each step faulted most of that memory in again from the kernel, zeroed page
//! by page: 130k–260k page faults per step of the base-64 `unet` at 256²,
//! 5–10 % of its time. Serving everything from the heap and never trimming it
//! removes them; peak RSS stays the same (the step reaches it anyway).

/// Applies the policy; call once at start-up, before any thread allocates.
/// A no-op on allocators other than glibc's.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's tuning parameters; it is called
    // before the process starts other threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}
