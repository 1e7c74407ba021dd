//! Which instruction set tract's kernels are picked from on this CPU.
//!
//! AMD's Zen 4 (family 19h) executes AVX-512 on 256-bit units, a zmm operation
//! in two passes, and there tract 0.23's AVX-512 matrix kernels (16x12, 32x6)
//! lose to its AVX2/FMA ones (`docs/perf.md`: the base-64 `unet` runs 13-19 %
//! faster without them). So on that family tract is told to leave AVX-512 out.
//! Zen 3 shares the family but has no AVX-512; Zen 5 (1Ah) executes it at full
//! width and keeps it. The setting sits below the environment: a
//! `TRACT_CPU_ISA` the user sets still wins. Other architectures have nothing
//! to tune: there this module compiles to an empty function.

/// Applies the choice above once per process, before tract first probes the CPU.
pub fn tune_for_this_cpu() {
    #[cfg(target_arch = "x86_64")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if double_pumped_avx512() {
                // Fails only if another config set the knob already; that one stands.
                let _ = tract_core::knobs::set_config_global("TRACT_CPU_ISA", "-avx512f");
            }
        });
    }
}

/// Whether this is an AMD family 19h CPU (Zen 3 / Zen 4).
#[cfg(target_arch = "x86_64")]
fn double_pumped_avx512() -> bool {
    use std::arch::x86_64::__cpuid;
    // SAFETY: every x86-64 CPU implements CPUID leaves 0 and 1 (the
    // intrinsic is safe from Rust 1.94 on, unsafe before).
    #[allow(unused_unsafe)]
    let (vendor, signature) = unsafe { (__cpuid(0), __cpuid(1)) };
    is_amd_family_19h([vendor.ebx, vendor.edx, vendor.ecx], signature.eax)
}

/// From CPUID leaf 0's vendor registers (EBX, EDX, ECX) and leaf 1's EAX.
#[cfg(target_arch = "x86_64")]
fn is_amd_family_19h(vendor: [u32; 3], signature: u32) -> bool {
    const AUTHENTIC_AMD: [u32; 3] = [0x6874_7541, 0x6974_6e65, 0x444d_4163];
    let base = (signature >> 8) & 0xf;
    let family = if base == 0xf {
        base + ((signature >> 20) & 0xff)
    } else {
        base
    };
    vendor == AUTHENTIC_AMD && family == 0x19
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    const AMD: [u32; 3] = [0x6874_7541, 0x6974_6e65, 0x444d_4163];
    const INTEL: [u32; 3] = [0x756e_6547, 0x4965_6e69, 0x6c65_746e];

    #[test]
    fn only_amd_family_19h_matches() {
        assert!(is_amd_family_19h(AMD, 0x00A1_0F11), "EPYC 9004 (Zen 4)");
        assert!(is_amd_family_19h(AMD, 0x00A6_0F12), "Ryzen 7040 (Zen 4)");
        assert!(
            !is_amd_family_19h(AMD, 0x00B0_0F21),
            "EPYC 9005 (Zen 5, family 1Ah)"
        );
        assert!(
            !is_amd_family_19h(AMD, 0x0083_0F10),
            "EPYC 7002 (Zen 2, family 17h)"
        );
        assert!(!is_amd_family_19h(INTEL, 0x0005_0654), "Xeon Skylake-SP");
        assert!(
            !is_amd_family_19h(INTEL, 0x00A1_0F11),
            "another vendor, same signature"
        );
    }
}
