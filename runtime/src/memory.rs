//! Whether freed heap memory stays in the process for the next frame or goes
//! back to the operating system at once (glibc's malloc; elsewhere a no-op).
//!
//! tract allocates every intermediate tensor afresh per frame. glibc serves
//! the large ones with `mmap` or trims them off the heap top when freed, so
//! each frame faults them in again, page by page. Measured with `unet-infer`
//! (2 threads, tract, p50; peak RSS of `unet-16` on one 512x512 frame, and on six):
//!
//! | policy                  | unet-16 512² | unet 256² | peak RSS, 1 frame | 6 frames    |
//! |-------------------------|--------------|-----------|-------------------|-------------|
//! | glibc's default         | 179-185 ms   | 580 ms    | 108-111 MiB       | 123-149 MiB |
//! | [`MemoryPolicy::Keep`]  | 181-183 ms   | 542 ms    | 108-124 MiB       | 121-169 MiB |
//! | [`MemoryPolicy::Return`]| 256 ms       | 677 ms    | 92 MiB            | 93 MiB      |
//!
//! Before the runtime's own convolution ops (which allocate few large
//! temporaries), `Keep` was 28 % faster than glibc's default on `unet-16`.
//! The heap's high-water mark under `Keep` varies with the order the threads
//! free in. `Keep` is ONNX Runtime's CPU memory arena in effect; `Return`
//! suits a device short of RAM. The setting is process-wide: call it once, at start-up.
//! glibc still maps blocks of 64 MiB and more that threads other than the main
//! one allocate (`tests/memory_policy.rs` checks the policy on the main thread).

/// See the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryPolicy {
    /// Serve every block from the heap and never trim it: no page faults after
    /// the first frame; resident memory stays at its peak.
    Keep,
    /// Trim the heap after every free: resident memory follows what is live.
    Return,
}

/// Applies `policy` to the process's allocator; a no-op on allocators other than glibc's.
pub fn set_memory_policy(policy: MemoryPolicy) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's tuning parameters.
    unsafe {
        match policy {
            MemoryPolicy::Keep => {
                libc::mallopt(libc::M_MMAP_MAX, 0);
                libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            }
            MemoryPolicy::Return => {
                libc::mallopt(libc::M_TRIM_THRESHOLD, 0);
            }
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = policy;
}
