//! Matrix products on `gemm`'s kernels, for the convolutions and the
//! transposed convolution.

use super::Elem;

/// How a gemm call uses the threads: spread over all of them, or on the
/// calling thread alone (when the threads each work on their own tiles).
#[derive(Clone, Copy)]
pub(super) enum Threads {
    All,
    Caller,
}

/// `dst[m × n] (+)= lhs[m × k] · rhs[k × n]`, matrices given by (row, column) strides.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm<T: Elem>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    dst_strides: (usize, usize),
    accumulate: bool,
    lhs: &[T],
    lhs_strides: (usize, usize),
    rhs: &[T],
    rhs_strides: (usize, usize),
    threads: Threads,
) {
    let last = |(rs, cs): (usize, usize), rows: usize, cols: usize| {
        (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs
    };
    assert!(m == 0 || n == 0 || last(dst_strides, m, n) < dst.len());
    assert!(m == 0 || k == 0 || last(lhs_strides, m, k) < lhs.len());
    assert!(k == 0 || n == 0 || last(rhs_strides, k, n) < rhs.len());
    // SAFETY: the asserts keep every strided access inside the slices; `dst`
    // is borrowed mutably, so it cannot alias `lhs` or `rhs`.
    unsafe {
        gemm_raw(
            (m, n, k),
            dst.as_mut_ptr(),
            dst_strides,
            accumulate,
            lhs,
            lhs_strides,
            rhs,
            rhs_strides,
            threads,
        )
    }
}

/// [`gemm`] into a raw destination.
///
/// # Safety
/// `dst` must be valid for writes at every `(i, j)` offset `i·rs + j·cs`,
/// `i < m, j < n`, with no other access to those elements meanwhile; `lhs` and
/// `rhs` must hold their matrices at the strides given.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_raw<T: Elem>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    (dst_rs, dst_cs): (usize, usize),
    accumulate: bool,
    lhs: &[T],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[T],
    (rhs_rs, rhs_cs): (usize, usize),
    threads: Threads,
) {
    let parallelism = match threads {
        Threads::All => gemm::Parallelism::Rayon(rayon::current_num_threads()),
        Threads::Caller => gemm::Parallelism::None,
    };
    // SAFETY: as promised by the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            T::of(1.0),
            T::of(1.0),
            false,
            false,
            false,
            parallelism,
        )
    }
}
