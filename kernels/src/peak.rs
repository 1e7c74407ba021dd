//! The machine's own fused multiply-add peak, measured: independent FMA
//! chains, enough of them to cover the FMA latency on every port, per
//! instruction set the CPU has (AVX-512, AVX2+FMA, NEON), on 1..n threads.
//!
//! A benchmark that prints a kernel's GFLOP/s as a fraction of this figure
//! says how much of the vector unit the kernel uses: a kernel at 80 % of the
//! AVX-512 peak on AMD Zen 4 (which executes a 512-bit FMA in two halves)
//! and at 80 % of its AVX2 peak should be near 80 % on an Intel part with
//! full-width AVX-512 too, whose peak is twice as high.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// A vector instruction set with fused multiply-add.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// x86-64 AVX-512F: 16 f32 lanes.
    Avx512,
    /// x86-64 AVX2 with FMA3: 8 f32 lanes.
    Avx2,
    /// AArch64 Advanced SIMD: 4 f32 lanes.
    Neon,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Neon => "neon",
        }
    }

    pub fn parse(name: &str) -> Option<Isa> {
        [Isa::Avx512, Isa::Avx2, Isa::Neon]
            .into_iter()
            .find(|isa| isa.name() == name)
    }

    /// f32 lanes per vector.
    pub fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 => 8,
            Isa::Neon => 4,
        }
    }

    /// Whether this CPU executes it.
    pub fn is_available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The instruction sets this CPU executes, widest first.
    pub fn available() -> Vec<Isa> {
        [Isa::Avx512, Isa::Avx2, Isa::Neon]
            .into_iter()
            .filter(|isa| isa.is_available())
            .collect()
    }

    /// The widest instruction set this build's kernels (and gemm's) run on:
    /// the widest available, less AVX-512 in a build without the `avx512`
    /// feature (the benchmarks' AVX2 path on an AVX-512 CPU).
    pub fn widest_built() -> Option<Isa> {
        Isa::available()
            .into_iter()
            .find(|&isa| cfg!(feature = "avx512") || isa != Isa::Avx512)
    }

    /// The widest instruction set a benchmark's kernels run on: the widest
    /// available, less AVX-512 when `TRACT_CPU_ISA` turns `avx512f` off (the
    /// benchmarks' way of forcing the AVX2 path on an AVX-512 CPU).
    pub fn widest_in_use() -> Option<Isa> {
        let avx512_off = std::env::var("TRACT_CPU_ISA").is_ok_and(|v| v.contains("-avx512f"));
        Isa::available()
            .into_iter()
            .find(|&isa| !(avx512_off && isa == Isa::Avx512))
    }
}

/// A measured peak.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Peak {
    pub isa: Isa,
    pub threads: usize,
    /// f32 GFLOP/s, an FMA counted as two operations, all threads together.
    pub gflops: f64,
}

/// Independent accumulators per thread: FMA latency (4 cycles) times the
/// FMA ports (2) on current x86-64 and ARM cores, with room to spare.
const CHAINS: usize = 12;
/// FMA rounds between clock reads.
const ROUNDS: u64 = 1 << 16;

/// The one-thread FMA peak, in GFLOP/s, of the widest instruction set this
/// build's kernels run on ([`Isa::widest_built`]), printed: what the
/// one-thread kernel benchmarks divide by. Panics without a vector unit.
pub fn one_thread_peak_of_this_build() -> f64 {
    let isa = Isa::widest_built().expect("a vector unit");
    let peak = measure(isa, 1, Duration::from_millis(500))
        .expect("peak")
        .gflops;
    println!("FMA peak, {} on 1 thread: {peak:.1} GFLOP/s", isa.name());
    peak
}

/// Runs FMA chains of `isa` on `threads` threads for about `duration`;
/// `None` when the CPU lacks `isa` or `threads` is 0.
pub fn measure(isa: Isa, threads: usize, duration: Duration) -> Option<Peak> {
    if !isa.is_available() || threads == 0 {
        return None;
    }
    let flops_per_round = (CHAINS * isa.lanes() * 2) as f64;
    // Every thread starts together and counts its own rounds; the slowest
    // thread's time is the wall time of the whole.
    let per_thread: Vec<(u64, f64)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| scope.spawn(move || run(isa, duration)))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("the FMA loop does not panic"))
            .collect()
    });
    let rounds: u64 = per_thread.iter().map(|(r, _)| r).sum();
    let seconds = per_thread.iter().map(|&(_, s)| s).fold(0.0, f64::max);
    Some(Peak {
        isa,
        threads,
        gflops: rounds as f64 * flops_per_round / seconds / 1e9,
    })
}

/// FMA rounds until `duration` has passed, and the seconds they took.
fn run(isa: Isa, duration: Duration) -> (u64, f64) {
    // A short warm-up, so the core has left any low-power state.
    kernel(isa, ROUNDS);
    let started = Instant::now();
    let mut rounds = 0;
    while started.elapsed() < duration {
        black_box(kernel(isa, black_box(ROUNDS)));
        rounds += ROUNDS;
    }
    (rounds, started.elapsed().as_secs_f64())
}

fn kernel(isa: Isa, rounds: u64) -> f32 {
    match isa {
        // SAFETY: `measure` runs only what `is_available` confirmed.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::avx512(rounds) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::avx2(rounds) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => arm::neon(rounds),
        #[allow(unreachable_patterns)]
        _ => unreachable!("{isa:?} is not available here"),
    }
}

// acc = acc · m + c converges to c / (1 - m) = 1.0: no overflow, no
// denormals, whatever the number of rounds. The chains start apart and the
// constants come through `black_box`, so the compiler can neither fold the
// loop (1.0 is already a fixed point) nor merge equal chains.
const M: f32 = 0.999_999;
const C: f32 = 1e-6;

fn start(chain: usize) -> f32 {
    black_box(0.5 + chain as f32 / 16.0)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use std::hint::black_box;

    use super::{start, C, CHAINS, M};

    #[target_feature(enable = "avx512f")]
    pub(super) fn avx512(rounds: u64) -> f32 {
        let (m, c) = (_mm512_set1_ps(black_box(M)), _mm512_set1_ps(black_box(C)));
        let mut acc: [__m512; CHAINS] = std::array::from_fn(|i| _mm512_set1_ps(start(i)));
        for _ in 0..rounds {
            for a in &mut acc {
                *a = _mm512_fmadd_ps(*a, m, c);
            }
        }
        let sum = acc
            .iter()
            .fold(_mm512_setzero_ps(), |s, &a| _mm512_add_ps(s, a));
        _mm512_reduce_add_ps(sum)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn avx2(rounds: u64) -> f32 {
        let (m, c) = (_mm256_set1_ps(black_box(M)), _mm256_set1_ps(black_box(C)));
        let mut acc: [__m256; CHAINS] = std::array::from_fn(|i| _mm256_set1_ps(start(i)));
        for _ in 0..rounds {
            for a in &mut acc {
                *a = _mm256_fmadd_ps(*a, m, c);
            }
        }
        let sum = acc
            .iter()
            .fold(_mm256_setzero_ps(), |s, &a| _mm256_add_ps(s, a));
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 f32.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
        lanes.iter().sum()
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;

    use std::hint::black_box;

    use super::{start, C, CHAINS, M};

    pub(super) fn neon(rounds: u64) -> f32 {
        // SAFETY: NEON is part of every AArch64 CPU.
        unsafe {
            let (m, c) = (vdupq_n_f32(black_box(M)), vdupq_n_f32(black_box(C)));
            let mut acc: [float32x4_t; CHAINS] = std::array::from_fn(|i| vdupq_n_f32(start(i)));
            for _ in 0..rounds {
                for a in &mut acc {
                    *a = vfmaq_f32(c, *a, m);
                }
            }
            let sum = acc.iter().fold(vdupq_n_f32(0.0), |s, &a| vaddq_f32(s, a));
            vaddvq_f32(sum)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chains_compute_what_they_claim() {
        // acc·m + c from 0.5 + i/16 after n rounds is 1 + (start - 1)·mⁿ:
        // the kernels ran their n FMAs on every chain and lane.
        for isa in Isa::available() {
            // f32 rounding drifts over a million rounds; a dropped loop
            // would be off by 10 % there (mⁿ = 0.37).
            for rounds in [0, 1000, 1_000_000] {
                let sum = kernel(isa, rounds);
                let decay = (M as f64).powi(rounds as i32);
                let expected: f64 = (0..CHAINS)
                    .map(|i| 1.0 + (start(i) as f64 - 1.0) * decay)
                    .sum::<f64>()
                    * isa.lanes() as f64;
                let err = (sum as f64 - expected).abs() / expected;
                assert!(err < 1e-2, "{isa:?} after {rounds}: {sum} vs {expected}");
            }
        }
    }

    #[test]
    fn a_peak_is_measured_and_no_threads_measure_nothing() {
        let Some(&isa) = Isa::available().first() else {
            return;
        };
        let one = measure(isa, 1, Duration::from_millis(50)).unwrap();
        assert!(one.gflops > 1.0, "{one:?}");
        assert_eq!(measure(isa, 0, Duration::from_millis(1)), None);
        assert_eq!(Isa::parse(isa.name()), Some(isa));
    }
}
