//! `set_memory_policy` changes what glibc does with freed memory. Its own test
//! binary without the test harness: the setting is process-wide, the check
//! reads the process's RSS, and it must allocate on the main thread (glibc maps
//! a block this large outside the main arena whatever the policy).

#[cfg(all(target_os = "linux", target_env = "gnu"))]
use std::hint::black_box;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
use unet_runtime::{set_memory_policy, MemoryPolicy};

#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MIB: usize = 1 << 20;

/// Resident set size from /proc/self/statm, read without touching the heap
/// (a block allocated above the freed one would keep it off the heap top).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn rss() -> usize {
    use std::io::Read;
    let mut buf = [0u8; 128];
    let len = std::fs::File::open("/proc/self/statm")
        .and_then(|mut f| f.read(&mut buf))
        .expect("statm");
    let pages: usize = std::str::from_utf8(&buf[..len])
        .ok()
        .and_then(|s| s.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    // SAFETY: sysconf has no preconditions.
    pages * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn main() {
    keep_holds_freed_memory_and_return_gives_it_back();
    println!("test keep_holds_freed_memory_and_return_gives_it_back ... ok");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn main() {
    println!("memory_policy: glibc only, SKIPPED");
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_holds_freed_memory_and_return_gives_it_back() {
    set_memory_policy(MemoryPolicy::Keep);
    let before = rss();
    // 64 MiB, above glibc's largest mmap threshold: by default it would be
    // mapped and unmapped, its pages gone from RSS at the free.
    let block = black_box(vec![1u8; 64 * MIB]);
    let held = rss();
    assert!(held >= before + 60 * MIB, "RSS {before} -> {held} bytes");
    drop(block);
    let kept = rss();
    assert!(
        kept + 4 * MIB >= held,
        "Keep: RSS fell from {held} to {kept} bytes at the free"
    );

    set_memory_policy(MemoryPolicy::Return);
    // A free that reaches the heap top now trims it, the 64 MiB kept above included.
    drop(black_box(vec![1u8; MIB]));
    let returned = rss();
    assert!(
        returned + 48 * MIB <= kept,
        "Return: RSS {kept} -> {returned} bytes"
    );
}
