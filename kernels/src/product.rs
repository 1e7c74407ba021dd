//! A matrix product `M = U · V` without packing, for `V`s whose rows (one per
//! input channel) are contiguous: Winograd's 16 products (along the tiles),
//! and 1x1 convolutions over NCHW planes (along the pixels).
//!
//! That is the layout a broadcast-FMA register block wants: a block of `MR`
//! output channels × `NV` vectors of columns keeps its sums in registers,
//! loads `NV` vectors of one row of `V` and multiplies them by `MR` broadcast
//! weights. gemm copies (packs) both operands first; with a product as
//! shallow as these (depth = input channels, 16 or 32 in the edge presets)
//! that copy costs as much as the arithmetic. Deep products (many input
//! channels, large weights) stay on gemm, whose cache blocking they need.

/// Columns in a vector block: whole multiples of it run in registers, the
/// last few columns of a product that is no multiple by a plain loop.
pub const COLUMN_ALIGN: usize = 16;

/// Input channels up to which the products run here rather than on gemm, on
/// this CPU's vector path (`winograd_layers` example): on AVX-512 86–100 % of
/// the FMA peak up to 256 channels, against gemm's 67–96 %, and from 512
/// gemm's cache blocking is as fast or faster; on AVX2, whose block has half
/// the registers, gemm wins from 256 (86–88 % against 74–75 %).
pub fn max_depth() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if cfg!(feature = "avx512") && std::arch::is_x86_feature_detected!("avx512f") {
            return 256;
        }
        128
    }
    #[cfg(not(target_arch = "x86_64"))]
    256
}

/// `M[r][c] = Σ_k U[r][k] · V[k][c]` for `rows × depth` row-major `u`, `V`'s
/// row k at `v + k · v_stride` and `M`'s row r at `m + r · m_stride`,
/// `cols` columns each. Returns false, computing nothing, where this CPU has
/// no vector path (the caller uses gemm).
///
/// # Safety
/// `v` must be valid for reads and `m` for writes of `cols` floats at each of
/// their rows; `u.len() == rows * depth`.
pub unsafe fn multiply(
    u: &[f32],
    dims: (usize, usize, usize),
    v: (*const f32, usize),
    m: (*mut f32, usize),
) -> bool {
    // SAFETY: the caller's.
    unsafe { run(u, dims, v, m, false) }
}

/// [`multiply`], adding the product to `M`: `M[r][c] += Σ_k U[r][k] · V[k][c]`
/// (a sum of products over operands that live apart, as two inputs' channels).
///
/// # Safety
/// As [`multiply`]; `m` must also be valid for reads.
pub unsafe fn multiply_add(
    u: &[f32],
    dims: (usize, usize, usize),
    v: (*const f32, usize),
    m: (*mut f32, usize),
) -> bool {
    // SAFETY: the caller's.
    unsafe { run(u, dims, v, m, true) }
}

/// [`multiply`] on gemm, which packs both operands first: for deep products,
/// whose weights outgrow the caches, and CPUs without a vector path here. On
/// `threads` threads of the current rayon pool (1: the calling thread).
///
/// # Safety
/// As [`multiply`].
#[cfg(feature = "conv")]
pub unsafe fn multiply_packed(
    u: &[f32],
    (rows, depth, cols): (usize, usize, usize),
    (v, v_stride): (*const f32, usize),
    (m, m_stride): (*mut f32, usize),
    threads: usize,
) {
    assert_eq!(u.len(), rows * depth, "weights");
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the caller's bounds.
    unsafe {
        gemm::gemm(
            rows,
            cols,
            depth,
            m,
            1,
            m_stride as isize,
            false,
            u.as_ptr(),
            1,
            depth as isize,
            v,
            1,
            v_stride as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

unsafe fn run(
    u: &[f32],
    (rows, depth, cols): (usize, usize, usize),
    (v, v_stride): (*const f32, usize),
    (m, m_stride): (*mut f32, usize),
    accumulate: bool,
) -> bool {
    assert_eq!(u.len(), rows * depth, "weights");
    let args = Operands {
        u: u.as_ptr(),
        depth,
        v,
        v_stride,
        m,
        m_stride,
        accumulate,
    };
    let whole = cols - cols % COLUMN_ALIGN;
    // A product of a few rows reads each panel too few times to repay its copy.
    let done = if aliases(v_stride) && rows > 8 {
        // SAFETY: the caller's bounds, of which `whole` columns.
        unsafe { by_copied_panels(args, rows, whole) }
    } else {
        // SAFETY: the caller's bounds, of which `whole` columns.
        unsafe { vector_blocks(args, rows, whole) }
    };
    if !done {
        return false;
    }
    for r in 0..rows {
        for c in whole..cols {
            // SAFETY: column c < cols of row k of v and row r of m.
            unsafe {
                let sum: f32 = (0..depth)
                    .map(|k| u[r * depth + k] * *v.add(k * v_stride + c))
                    .sum();
                let at = m.add(r * m_stride + c);
                *at = if accumulate { *at + sum } else { sum };
            }
        }
    }
    true
}

/// Whether rows of `V` at this stride (in floats) fall in a few L1 sets: a
/// multiple of 1 KiB, as the planes of an NCHW image of 256 or 1024 pixels are.
/// Such rows evict each other from L1 while a block walks its depth, every
/// load of `V` then comes from L2, across pages the prefetchers do not
/// follow, and the shorter AVX2 blocks (12 FMAs a row of `V`) wait on them:
/// about half the FMA peak on a Zen 4 (`product_layouts` example).
fn aliases(v_stride: usize) -> bool {
    v_stride.is_multiple_of(256)
}

/// Floats of `V` a copied panel holds (up to depth 42): a quarter of a 32 KiB
/// L1 cache.
const PANEL_FLOATS: usize = 2048;

/// [`vector_blocks`] a panel of `V`'s columns at a time, each copied first
/// into a contiguous buffer, where it stays in L1 (or, for deep products,
/// streams from L2 in order) across all the row blocks that read it.
unsafe fn by_copied_panels(args: Operands, rows: usize, cols: usize) -> bool {
    // Panels are whole blocks of both paths' widths (16 and 48 columns).
    let width = (PANEL_FLOATS / args.depth.max(1) / 48).max(1) * 48;
    PANEL.with_borrow_mut(|panel| {
        if panel.len() < args.depth * width {
            panel.resize(args.depth * width, 0.0);
        }
        for c in (0..cols).step_by(width) {
            let n = width.min(cols - c);
            for k in 0..args.depth {
                // SAFETY: row k of v holds the columns c..c + n (the caller's bounds).
                let from =
                    unsafe { std::slice::from_raw_parts(args.v.add(k * args.v_stride + c), n) };
                panel[k * width..][..n].copy_from_slice(from);
            }
            let copied = Operands {
                v: panel.as_ptr(),
                v_stride: width,
                // SAFETY: column c is inside the product.
                m: unsafe { args.m.add(c) },
                ..args
            };
            // SAFETY: the panel holds depth rows of n columns; M's bounds are the caller's.
            if !unsafe { vector_blocks(copied, rows, n) } {
                return false;
            }
        }
        true
    })
}

thread_local! {
    /// Each thread's copied panel of `V`, kept from product to product.
    static PANEL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The product's first `cols` (a multiple of [`COLUMN_ALIGN`]) columns on
/// this CPU's vector unit, if it has one this module is written for.
unsafe fn vector_blocks(args: Operands, rows: usize, cols: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if cfg!(feature = "avx512") && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F; the caller's bounds.
            unsafe { x86::multiply_avx512(args, rows, cols) };
            return true;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA; the caller's bounds.
            unsafe { x86::multiply_avx2(args, rows, cols) };
            return true;
        }
        false
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: NEON is part of aarch64; the caller's bounds.
        unsafe { multiply_blocks::<neon::Neon, 6, 4>(args, rows, cols) };
        true
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (args, rows, cols);
        false
    }
}

/// The product's operands, as `multiply` describes them.
#[derive(Clone, Copy)]
struct Operands {
    u: *const f32,
    depth: usize,
    v: *const f32,
    v_stride: usize,
    m: *mut f32,
    m_stride: usize,
    /// Whether the product adds to `M` rather than replacing it.
    accumulate: bool,
}

impl Operands {
    /// The block at output row `r` and column `c`.
    unsafe fn at(self, r: usize, c: usize) -> Self {
        // SAFETY: the caller keeps (r, c) inside the product.
        unsafe {
            Operands {
                u: self.u.add(r * self.depth),
                v: self.v.add(c),
                m: self.m.add(r * self.m_stride + c),
                ..self
            }
        }
    }
}

/// A vector of f32 lanes: what the register block is written in.
trait Lanes {
    type V: Copy;
    const LANES: usize;
    unsafe fn zero() -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// `acc + a · b`, fused.
    unsafe fn fma(acc: Self::V, a: f32, b: Self::V) -> Self::V;
}

/// The product in blocks of at most `MR` rows × `NV` vectors, a row of
/// blocks at a time: the block's rows of `U` stay in L1 while `V` streams
/// from L2 (one load of `V` serves `MR` FMAs, so L2 keeps up).
#[inline(always)]
unsafe fn multiply_blocks<L: Lanes, const MR: usize, const NV: usize>(
    args: Operands,
    rows: usize,
    cols: usize,
) {
    for r in (0..rows).step_by(MR) {
        let mr = (rows - r).min(MR);
        for c in (0..cols).step_by(NV * L::LANES) {
            let nv = ((cols - c) / L::LANES).min(NV);
            // SAFETY: (r, c) is inside the product; mr rows and nv vectors from it too.
            unsafe {
                let at = args.at(r, c);
                match nv {
                    n if n == NV => block_rows::<L, MR, NV>(at, mr),
                    1 => block_rows::<L, MR, 1>(at, mr),
                    2 => block_rows::<L, MR, 2>(at, mr),
                    3 => block_rows::<L, MR, 3>(at, mr),
                    _ => unreachable!("{nv} vectors"),
                }
            }
        }
    }
}

/// A block of `mr ≤ MAX_MR` rows: the register block of that many rows.
#[inline(always)]
unsafe fn block_rows<L: Lanes, const MAX_MR: usize, const NV: usize>(args: Operands, mr: usize) {
    // SAFETY: the caller's bounds.
    unsafe {
        match mr {
            n if n == MAX_MR => block::<L, MAX_MR, NV>(args),
            1 => block::<L, 1, NV>(args),
            2 => block::<L, 2, NV>(args),
            3 => block::<L, 3, NV>(args),
            4 => block::<L, 4, NV>(args),
            5 => block::<L, 5, NV>(args),
            6 => block::<L, 6, NV>(args),
            7 => block::<L, 7, NV>(args),
            _ => unreachable!("{mr} rows"),
        }
    }
}

/// `MR` rows × `NV` vectors of `M`, their sums in registers over the whole depth.
#[inline(always)]
unsafe fn block<L: Lanes, const MR: usize, const NV: usize>(args: Operands) {
    let Operands {
        u,
        depth,
        v,
        v_stride,
        m,
        m_stride,
        accumulate,
    } = args;
    // SAFETY: the caller's bounds: MR rows of u and m, NV vectors of each row of v and m.
    unsafe {
        let mut acc: [[L::V; NV]; MR] = std::array::from_fn(|r| {
            std::array::from_fn(|j| {
                let at = m.add(r * m_stride + j * L::LANES);
                if accumulate {
                    L::load(at)
                } else {
                    L::zero()
                }
            })
        });
        for k in 0..depth {
            let row = v.add(k * v_stride);
            let b: [L::V; NV] = std::array::from_fn(|j| L::load(row.add(j * L::LANES)));
            for (r, sums) in acc.iter_mut().enumerate() {
                let a = *u.add(r * depth + k);
                for (sum, &b) in sums.iter_mut().zip(&b) {
                    *sum = L::fma(*sum, a, b);
                }
            }
        }
        for (r, sums) in acc.iter().enumerate() {
            for (j, &sum) in sums.iter().enumerate() {
                L::store(m.add(r * m_stride + j * L::LANES), sum);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{multiply_blocks, Lanes, Operands};
    use std::arch::x86_64::*;

    /// 8 rows × 3 vectors: 24 of the 32 registers hold sums.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn multiply_avx512(args: Operands, rows: usize, cols: usize) {
        // SAFETY: the caller's bounds.
        unsafe { multiply_blocks::<Avx512, 8, 3>(args, rows, cols) }
    }

    /// 6 rows × 2 vectors: 12 of the 16 registers hold sums.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn multiply_avx2(args: Operands, rows: usize, cols: usize) {
        // SAFETY: the caller's bounds.
        unsafe { multiply_blocks::<Avx2, 6, 2>(args, rows, cols) }
    }

    struct Avx512;
    impl Lanes for Avx512 {
        type V = __m512;
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn fma(acc: __m512, a: f32, b: __m512) -> __m512 {
            unsafe { _mm512_fmadd_ps(_mm512_set1_ps(a), b, acc) }
        }
    }

    struct Avx2;
    impl Lanes for Avx2 {
        type V = __m256;
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn fma(acc: __m256, a: f32, b: __m256) -> __m256 {
            unsafe { _mm256_fmadd_ps(_mm256_set1_ps(a), b, acc) }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::Lanes;
    use std::arch::aarch64::*;

    /// 4 lanes; 6 rows × 4 vectors put sums in 24 of the 32 registers.
    pub struct Neon;
    impl Lanes for Neon {
        type V = float32x4_t;
        const LANES: usize = 4;
        #[inline(always)]
        unsafe fn zero() -> float32x4_t {
            unsafe { vdupq_n_f32(0.0) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> float32x4_t {
            unsafe { vld1q_f32(p) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: float32x4_t) {
            unsafe { vst1q_f32(p, v) }
        }
        #[inline(always)]
        unsafe fn fma(acc: float32x4_t, a: f32, b: float32x4_t) -> float32x4_t {
            unsafe { vfmaq_n_f32(acc, b, a) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::values;

    #[test]
    fn products_match_their_definition() {
        // Row counts around each path's block (8 and 6), column counts that
        // leave 1 and 2 vectors over, and some columns past the last whole
        // vector (or no whole vector); depth past one row of U's cache line.
        // Strides of V's rows at a multiple of 1 KiB take copied panels (the
        // last one partial; 48 or 96 columns wide at these depths).
        for (rows, depth, cols, v_stride) in [
            (16, 16, 48, 64),
            (13, 19, 32, 48),
            (3, 5, 16, 32),
            (8, 40, 80, 96),
            (7, 9, 37, 53),
            (5, 3, 11, 27),
            (13, 40, 165, 256),
            (9, 19, 250, 512),
            (24, 64, 64, 1024),
        ] {
            let u = values(rows * depth, 3);
            let m_stride = cols + 32;
            let v = values(depth * v_stride, 4);
            let mut m = vec![f32::NAN; rows * m_stride];
            // SAFETY: v has depth rows, m rows rows, of their strides ≥ cols.
            let done = unsafe {
                multiply(
                    &u,
                    (rows, depth, cols),
                    (v.as_ptr(), v_stride),
                    (m.as_mut_ptr(), m_stride),
                )
            };
            if !done {
                eprintln!("no vector path on this CPU");
                return;
            }
            let check = |m: &[f32], times: f32| {
                for r in 0..rows {
                    for c in 0..m_stride {
                        let got = m[r * m_stride + c];
                        if c >= cols {
                            assert!(got.is_nan(), "column {c} past the product written");
                            continue;
                        }
                        let want: f32 = (0..depth)
                            .map(|k| u[r * depth + k] * v[k * v_stride + c])
                            .sum::<f32>()
                            * times;
                        assert!(
                            (got - want).abs() < 1e-4,
                            "{rows}x{depth}x{cols}: M[{r}][{c}] = {got}, want {want}"
                        );
                    }
                }
            };
            check(&m, 1.0);
            // SAFETY: as above; m now holds the product, which this adds to.
            unsafe {
                multiply_add(
                    &u,
                    (rows, depth, cols),
                    (v.as_ptr(), v_stride),
                    (m.as_mut_ptr(), m_stride),
                );
            }
            check(&m, 2.0);
        }
    }
}
