//! The tile transforms that read or write an image's rows, on blocks of one
//! vector of tiles: the input transform (`Bᵀ d B`), the output transform
//! (`Aᵀ M A`, with bias and ReLU) and the output gradient's (`A dY Aᵀ`).
//!
//! Tile k of a block reads columns `2k .. 2k + 4` (input) or `2k, 2k + 1`
//! (output gradient): a row's even and odd columns, which two loads and two
//! lane permutations give for a whole block (and two more interleave the
//! output's pixels). Everything else is whole-vector
//! additions, and each of the 16 points is one (masked, for the last block)
//! store; the blocks at a row's ends load through masks. The loops the compiler vectorised on its own went through stack
//! arrays with scalar edges, and took 4–30 ns a tile; this is a fraction of that.
//!
//! One generic algorithm over [`TileLanes`], implemented for AVX-512 (16
//! tiles a block), AVX2 (8), NEON (4) and a one-lane fallback.

/// The vector operations the transforms need.
pub(super) trait TileLanes: Copy {
    const LANES: usize;
    /// # Safety
    /// `p` valid for reads of `LANES` floats; the CPU has the vector unit.
    unsafe fn load(p: *const f32) -> Self;
    /// Lane i is `row[at + i]`, zero outside the row (the blocks at its ends).
    /// # Safety
    /// The CPU has the vector unit.
    #[inline(always)]
    unsafe fn load_window(row: &[f32], at: isize) -> Self {
        let mut lanes = [0.0f32; MAX_LANES];
        for (i, lane) in lanes[..Self::LANES].iter_mut().enumerate() {
            if let Some(&x) = usize::try_from(at + i as isize)
                .ok()
                .and_then(|x| row.get(x))
            {
                *lane = x;
            }
        }
        // SAFETY: lanes holds LANES floats.
        unsafe { Self::load(lanes.as_ptr()) }
    }
    /// The first `n ≤ LANES` lanes to `p`, nothing past them.
    /// # Safety
    /// `p` valid for writes of `n` floats; the CPU has the vector unit.
    unsafe fn store_first(p: *mut f32, v: Self, n: usize);
    /// # Safety
    /// The CPU has the vector unit (also for the methods below).
    unsafe fn zero() -> Self;
    unsafe fn add(a: Self, b: Self) -> Self;
    unsafe fn sub(a: Self, b: Self) -> Self;
    unsafe fn splat(x: f32) -> Self;
    unsafe fn max(a: Self, b: Self) -> Self;
    /// `a0, b0, a1, b1, …`: the first LANES of them.
    unsafe fn zip_lo(a: Self, b: Self) -> Self;
    /// The last LANES of them.
    unsafe fn zip_hi(a: Self, b: Self) -> Self;
    /// Lanes 0, 2, 4, … of the 2·LANES values `lo, hi`.
    unsafe fn even(lo: Self, hi: Self) -> Self;
    /// Lanes 1, 3, 5, … of `lo, hi`.
    unsafe fn odd(lo: Self, hi: Self) -> Self;
}

/// The widest vector's lanes (AVX-512).
const MAX_LANES: usize = 16;

/// Loads `LANES` columns of `row` from each column `start + offset`: plain
/// loads where the block lies inside the row, else windows with zeros
/// outside it (or all zeros, for a row of padding).
#[inline(always)]
unsafe fn load_columns<V: TileLanes, const K: usize>(
    row: Option<&[f32]>,
    start: isize,
    offsets: [usize; K],
) -> [V; K] {
    let end = start + (offsets.iter().max().copied().unwrap_or(0) + V::LANES) as isize;
    // SAFETY (all three): the CPU has the vector unit; a plain load reads
    // columns start + offset .. + LANES, inside the row.
    // Loops, not closures: a closure does not inherit the caller's target
    // features, and the intrinsics in it would stay calls.
    unsafe {
        let mut columns = [V::zero(); K];
        match row {
            None => {}
            Some(row) if start >= 0 && end <= row.len() as isize => {
                let p = row.as_ptr().add(start as usize);
                for (column, offset) in columns.iter_mut().zip(offsets) {
                    *column = V::load(p.add(offset));
                }
            }
            Some(row) => {
                for (column, offset) in columns.iter_mut().zip(offsets) {
                    *column = V::load_window(row, start + offset as isize);
                }
            }
        }
        columns
    }
}

/// Bᵀ d down a block's four rows: d0 - d2, d1 + d2, d2 - d1, d1 - d3.
#[inline(always)]
unsafe fn bt_rows<V: TileLanes>(d: [V; 4]) -> [V; 4] {
    // SAFETY: the caller's CPU has the vector unit.
    unsafe {
        [
            V::sub(d[0], d[2]),
            V::add(d[1], d[2]),
            V::sub(d[2], d[1]),
            V::sub(d[1], d[3]),
        ]
    }
}

/// [`super::transform_input_row`] on blocks of `V::LANES` tiles.
///
/// # Safety
/// The CPU has `V`'s vector unit; `v` holds point 15 of the last tile
/// (`v.len() > 15 * stride + tiles - 1`).
#[inline(always)]
pub(super) unsafe fn input_row<V: TileLanes>(
    rows: [Option<&[f32]>; 4],
    left: usize,
    tiles: usize,
    v: &mut [f32],
    stride: usize,
) {
    let lanes = V::LANES;
    let out = v.as_mut_ptr();
    for j0 in (0..tiles).step_by(lanes) {
        let n = lanes.min(tiles - j0);
        let start = (2 * j0) as isize - left as isize;
        // Per row: even columns 2k (e) and 2k + 2 (e1), odd 2k + 1 (o) and 2k + 3 (o1).
        let mut e = [V::zero(); 4];
        let (mut o, mut e1, mut o1) = (e, e, e);
        for (r, row) in rows.into_iter().enumerate() {
            let [lo, hi, lo2, hi2] = load_columns::<V, 4>(row, start, [0, lanes, 2, lanes + 2]);
            (e[r], o[r]) = (V::even(lo, hi), V::odd(lo, hi));
            (e1[r], o1[r]) = (V::even(lo2, hi2), V::odd(lo2, hi2));
        }
        let (e, o, e1, o1) = (bt_rows(e), bt_rows(o), bt_rows(e1), bt_rows(o1));
        for a in 0..4 {
            // (Bᵀ d) B along the columns.
            let points = [
                V::sub(e[a], e1[a]),
                V::add(o[a], e1[a]),
                V::sub(e1[a], o[a]),
                V::sub(o[a], o1[a]),
            ];
            for (b, point) in points.into_iter().enumerate() {
                // SAFETY: within v, by the caller's bound.
                V::store_first(out.add((4 * a + b) * stride + j0), point, n);
            }
        }
    }
}

/// [`super::transform_output_grad_row`] on blocks of `V::LANES` tiles.
///
/// # Safety
/// As [`input_row`], for `dm`.
#[inline(always)]
pub(super) unsafe fn output_grad_row<V: TileLanes>(
    rows: [Option<&[f32]>; 2],
    tiles: usize,
    dm: &mut [f32],
    stride: usize,
) {
    let lanes = V::LANES;
    let out = dm.as_mut_ptr();
    for j0 in (0..tiles).step_by(lanes) {
        let n = lanes.min(tiles - j0);
        // Per row, A's columns over its even and odd columns: e, e + o, e - o, -o.
        let mut columns = [[V::zero(); 4]; 2];
        for (r, row) in rows.into_iter().enumerate() {
            let [lo, hi] = load_columns::<V, 2>(row, 2 * j0 as isize, [0, lanes]);
            let (e, o) = (V::even(lo, hi), V::odd(lo, hi));
            columns[r] = [e, V::add(e, o), V::sub(e, o), V::sub(V::zero(), o)];
        }
        let [upper, lower] = columns;
        for (b, (t0, t1)) in upper.into_iter().zip(lower).enumerate() {
            // Then down the rows alike.
            let points = [t0, V::add(t0, t1), V::sub(t0, t1), V::sub(V::zero(), t1)];
            for (a, point) in points.into_iter().enumerate() {
                // SAFETY: within dm, by the caller's bound.
                V::store_first(out.add((4 * a + b) * stride + j0), point, n);
            }
        }
    }
}

/// [`super::transform_output_row`] on blocks of `V::LANES` tiles.
///
/// # Safety
/// The CPU has `V`'s vector unit; `m` holds point 15 of the last tile
/// (`m.len() > 15 * stride + tiles - 1`); each output row has a pixel of
/// every tile (`len > 2 * (tiles - 1)`).
#[inline(always)]
pub(super) unsafe fn output_row<V: TileLanes>(
    m: &[f32],
    stride: usize,
    tiles: usize,
    (bias, relu): (f32, bool),
    [mut top, mut bottom]: [Option<&mut [f32]>; 2],
) {
    let lanes = V::LANES;
    let bias = V::splat(bias);
    for j0 in (0..tiles).step_by(lanes) {
        let n = lanes.min(tiles - j0);
        let mut points = [V::zero(); 16];
        for (p, point) in points.iter_mut().enumerate() {
            let at = p * stride + j0;
            *point = if n == lanes {
                // SAFETY: a whole block of tiles lies within m.
                V::load(m.as_ptr().add(at))
            } else {
                V::load_window(&m[at..at + n], 0)
            };
        }
        // Aᵀ M, per column b of the tiles' points: the rows m0 + m1 + m2 and
        // m1 - m2 - m3; then · A along the columns alike.
        let [mut upper, mut lower] = [[V::zero(); 4]; 2];
        for (b, (upper, lower)) in upper.iter_mut().zip(&mut lower).enumerate() {
            let (m0, m1, m2, m3) = (points[b], points[4 + b], points[8 + b], points[12 + b]);
            *upper = V::add(V::add(m0, m1), m2);
            *lower = V::sub(V::sub(m1, m2), m3);
        }
        for (row, s) in [top.as_deref_mut(), bottom.as_deref_mut()]
            .into_iter()
            .zip([upper, lower])
        {
            let Some(row) = row else { continue };
            let mut even = V::add(V::add(V::add(s[0], s[1]), s[2]), bias);
            let mut odd = V::add(V::sub(V::sub(s[1], s[2]), s[3]), bias);
            if relu {
                (even, odd) = (V::max(even, V::zero()), V::max(odd, V::zero()));
            }
            // An odd row's last tile has one pixel.
            let pixels = (2 * n).min(row.len() - 2 * j0);
            let p = row.as_mut_ptr().add(2 * j0);
            // SAFETY: the row holds `pixels` more from p.
            V::store_first(p, V::zip_lo(even, odd), pixels.min(lanes));
            if pixels > lanes {
                V::store_first(p.add(lanes), V::zip_hi(even, odd), pixels - lanes);
            }
        }
    }
}

/// One lane: the portable path, and a reference for the vector ones.
impl TileLanes for f32 {
    const LANES: usize = 1;
    #[inline(always)]
    unsafe fn load(p: *const f32) -> f32 {
        // SAFETY: the caller's.
        unsafe { *p }
    }
    #[inline(always)]
    unsafe fn store_first(p: *mut f32, v: f32, n: usize) {
        if n > 0 {
            // SAFETY: the caller's.
            unsafe { *p = v }
        }
    }
    #[inline(always)]
    unsafe fn zero() -> f32 {
        0.0
    }
    #[inline(always)]
    unsafe fn add(a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    unsafe fn sub(a: f32, b: f32) -> f32 {
        a - b
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    unsafe fn max(a: f32, b: f32) -> f32 {
        a.max(b)
    }
    #[inline(always)]
    unsafe fn zip_lo(a: f32, _: f32) -> f32 {
        a
    }
    #[inline(always)]
    unsafe fn zip_hi(_: f32, b: f32) -> f32 {
        b
    }
    #[inline(always)]
    unsafe fn even(lo: f32, _: f32) -> f32 {
        lo
    }
    #[inline(always)]
    unsafe fn odd(_: f32, hi: f32) -> f32 {
        hi
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::TileLanes;
    use std::arch::x86_64::*;

    /// The lanes `first .. end` of a `lanes`-wide window at column `at` that
    /// lie inside `row`.
    #[inline(always)]
    fn window_lanes(row: &[f32], at: isize, lanes: usize) -> (usize, usize) {
        let first = (-at).clamp(0, lanes as isize) as usize;
        let end = (row.len() as isize - at).clamp(first as isize, lanes as isize) as usize;
        (first, end)
    }

    #[derive(Clone, Copy)]
    pub struct Avx512(__m512);

    impl TileLanes for Avx512 {
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { Self(_mm512_loadu_ps(p)) }
        }
        #[inline(always)]
        unsafe fn load_window(row: &[f32], at: isize) -> Self {
            let (first, end) = window_lanes(row, at, 16);
            let mask = ((1u32 << end) - (1u32 << first)) as u16;
            // SAFETY: the masked-off lanes, those outside the row, are not read.
            unsafe {
                Self(_mm512_maskz_loadu_ps(
                    mask,
                    row.as_ptr().wrapping_offset(at),
                ))
            }
        }
        #[inline(always)]
        unsafe fn store_first(p: *mut f32, v: Self, n: usize) {
            let mask = if n >= 16 { !0 } else { (1u16 << n) - 1 };
            unsafe { _mm512_mask_storeu_ps(p, mask, v.0) }
        }
        #[inline(always)]
        unsafe fn zero() -> Self {
            unsafe { Self(_mm512_setzero_ps()) }
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            unsafe { Self(_mm512_add_ps(a.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn sub(a: Self, b: Self) -> Self {
            unsafe { Self(_mm512_sub_ps(a.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            unsafe { Self(_mm512_set1_ps(x)) }
        }
        #[inline(always)]
        unsafe fn max(a: Self, b: Self) -> Self {
            unsafe { Self(_mm512_max_ps(a.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn zip_lo(a: Self, b: Self) -> Self {
            unsafe {
                let index =
                    _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
                Self(_mm512_permutex2var_ps(a.0, index, b.0))
            }
        }
        #[inline(always)]
        unsafe fn zip_hi(a: Self, b: Self) -> Self {
            unsafe {
                let index =
                    _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
                Self(_mm512_permutex2var_ps(a.0, index, b.0))
            }
        }
        #[inline(always)]
        unsafe fn even(lo: Self, hi: Self) -> Self {
            unsafe {
                let index =
                    _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
                Self(_mm512_permutex2var_ps(lo.0, index, hi.0))
            }
        }
        #[inline(always)]
        unsafe fn odd(lo: Self, hi: Self) -> Self {
            unsafe {
                let index =
                    _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
                Self(_mm512_permutex2var_ps(lo.0, index, hi.0))
            }
        }
    }

    #[derive(Clone, Copy)]
    pub struct Avx2(__m256);

    impl Avx2 {
        /// 64-bit lanes 0, 2, 1, 3: after a per-half shuffle, the lower
        /// halves of both inputs first.
        const HALVES_IN_ORDER: i32 = 0b11_01_10_00;
    }

    impl TileLanes for Avx2 {
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { Self(_mm256_loadu_ps(p)) }
        }
        #[inline(always)]
        unsafe fn load_window(row: &[f32], at: isize) -> Self {
            let (first, end) = window_lanes(row, at, 8);
            unsafe {
                let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                let mask = _mm256_and_si256(
                    _mm256_cmpgt_epi32(lane, _mm256_set1_epi32(first as i32 - 1)),
                    _mm256_cmpgt_epi32(_mm256_set1_epi32(end as i32), lane),
                );
                // SAFETY: the masked-off lanes, those outside the row, are not read.
                Self(_mm256_maskload_ps(row.as_ptr().wrapping_offset(at), mask))
            }
        }
        #[inline(always)]
        unsafe fn store_first(p: *mut f32, v: Self, n: usize) {
            // Halves, quarters and a lane: AMD's masked stores are microcoded.
            unsafe {
                if n >= 8 {
                    return _mm256_storeu_ps(p, v.0);
                }
                let (mut p, mut n, mut x) = (p, n, _mm256_castps256_ps128(v.0));
                if n >= 4 {
                    _mm_storeu_ps(p, x);
                    (p, n, x) = (p.add(4), n - 4, _mm256_extractf128_ps::<1>(v.0));
                }
                if n >= 2 {
                    _mm_store_sd(p.cast(), _mm_castps_pd(x));
                    (p, n, x) = (p.add(2), n - 2, _mm_movehl_ps(x, x));
                }
                if n == 1 {
                    _mm_store_ss(p, x);
                }
            }
        }
        #[inline(always)]
        unsafe fn zero() -> Self {
            unsafe { Self(_mm256_setzero_ps()) }
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            unsafe { Self(_mm256_add_ps(a.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn sub(a: Self, b: Self) -> Self {
            unsafe { Self(_mm256_sub_ps(a.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            unsafe { Self(_mm256_set1_ps(x)) }
        }
        #[inline(always)]
        unsafe fn max(a: Self, b: Self) -> Self {
            unsafe { Self(_mm256_max_ps(a.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn zip_lo(a: Self, b: Self) -> Self {
            // unpacklo: a0 b0 a1 b1 | a4 b4 a5 b5; unpackhi: a2 b2 a3 b3 | a6 b6 a7 b7.
            unsafe {
                let (low, high) = (_mm256_unpacklo_ps(a.0, b.0), _mm256_unpackhi_ps(a.0, b.0));
                Self(_mm256_permute2f128_ps::<0x20>(low, high))
            }
        }
        #[inline(always)]
        unsafe fn zip_hi(a: Self, b: Self) -> Self {
            unsafe {
                let (low, high) = (_mm256_unpacklo_ps(a.0, b.0), _mm256_unpackhi_ps(a.0, b.0));
                Self(_mm256_permute2f128_ps::<0x31>(low, high))
            }
        }
        #[inline(always)]
        unsafe fn even(lo: Self, hi: Self) -> Self {
            unsafe {
                let pairs = _mm256_shuffle_ps::<0b10_00_10_00>(lo.0, hi.0);
                let ordered =
                    _mm256_permute4x64_pd::<{ Self::HALVES_IN_ORDER }>(_mm256_castps_pd(pairs));
                Self(_mm256_castpd_ps(ordered))
            }
        }
        #[inline(always)]
        unsafe fn odd(lo: Self, hi: Self) -> Self {
            unsafe {
                let pairs = _mm256_shuffle_ps::<0b11_01_11_01>(lo.0, hi.0);
                let ordered =
                    _mm256_permute4x64_pd::<{ Self::HALVES_IN_ORDER }>(_mm256_castps_pd(pairs));
                Self(_mm256_castpd_ps(ordered))
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
pub(super) mod neon {
    use super::TileLanes;
    use std::arch::aarch64::*;

    #[derive(Clone, Copy)]
    pub struct Neon(float32x4_t);

    impl TileLanes for Neon {
        const LANES: usize = 4;
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { Self(vld1q_f32(p)) }
        }
        #[inline(always)]
        unsafe fn store_first(p: *mut f32, v: Self, n: usize) {
            unsafe {
                if n >= 4 {
                    return vst1q_f32(p, v.0);
                }
                let mut lanes = [0.0f32; 4];
                vst1q_f32(lanes.as_mut_ptr(), v.0);
                std::ptr::copy_nonoverlapping(lanes.as_ptr(), p, n);
            }
        }
        #[inline(always)]
        unsafe fn zero() -> Self {
            unsafe { Self(vdupq_n_f32(0.0)) }
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            unsafe { Self(vaddq_f32(a.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn sub(a: Self, b: Self) -> Self {
            unsafe { Self(vsubq_f32(a.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            unsafe { Self(vdupq_n_f32(x)) }
        }
        #[inline(always)]
        unsafe fn max(a: Self, b: Self) -> Self {
            unsafe { Self(vmaxq_f32(a.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn zip_lo(a: Self, b: Self) -> Self {
            unsafe { Self(vzip1q_f32(a.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn zip_hi(a: Self, b: Self) -> Self {
            unsafe { Self(vzip2q_f32(a.0, b.0)) }
        }
        #[inline(always)]
        unsafe fn even(lo: Self, hi: Self) -> Self {
            unsafe { Self(vuzp1q_f32(lo.0, hi.0)) }
        }
        #[inline(always)]
        unsafe fn odd(lo: Self, hi: Self) -> Self {
            unsafe { Self(vuzp2q_f32(lo.0, hi.0)) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::values;

    /// Bᵀ, and A (4×2), of F(2×2, 3×3).
    const BT: [[f32; 4]; 4] = [
        [1.0, 0.0, -1.0, 0.0],
        [0.0, 1.0, 1.0, 0.0],
        [0.0, -1.0, 1.0, 0.0],
        [0.0, 1.0, 0.0, -1.0],
    ];
    const A: [[f32; 2]; 4] = [[1.0, 0.0], [1.0, 1.0], [1.0, -1.0], [0.0, -1.0]];

    /// Untouched outputs: a store past a row's last tile would overwrite one.
    const SENTINEL: f32 = 1234.5;

    type InputRow = unsafe fn([Option<&[f32]>; 4], usize, usize, &mut [f32], usize);
    type OutputRow = unsafe fn(&[f32], usize, usize, (f32, bool), [Option<&mut [f32]>; 2]);
    type OutputGradRow = unsafe fn([Option<&[f32]>; 2], usize, &mut [f32], usize);

    /// Every path this CPU runs: one lane, and each vector unit it has.
    fn input_paths() -> Vec<(&'static str, InputRow)> {
        let mut paths: Vec<(&'static str, InputRow)> = vec![("one lane", input_row::<f32>)];
        #[cfg(target_arch = "x86_64")]
        {
            if crate::winograd::x86::has_avx2() {
                paths.push(("avx2", crate::winograd::x86::input_row_avx2));
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                paths.push(("avx512", crate::winograd::x86::input_row_avx512));
            }
        }
        #[cfg(target_arch = "aarch64")]
        paths.push(("neon", input_row::<neon::Neon>));
        paths
    }

    fn output_paths() -> Vec<(&'static str, OutputRow)> {
        let mut paths: Vec<(&'static str, OutputRow)> = vec![("one lane", output_row::<f32>)];
        #[cfg(target_arch = "x86_64")]
        {
            if crate::winograd::x86::has_avx2() {
                paths.push(("avx2", crate::winograd::x86::output_row_avx2));
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                paths.push(("avx512", crate::winograd::x86::output_row_avx512));
            }
        }
        #[cfg(target_arch = "aarch64")]
        paths.push(("neon", output_row::<neon::Neon>));
        paths
    }

    fn output_grad_paths() -> Vec<(&'static str, OutputGradRow)> {
        let mut paths: Vec<(&'static str, OutputGradRow)> =
            vec![("one lane", output_grad_row::<f32>)];
        #[cfg(target_arch = "x86_64")]
        {
            if crate::winograd::x86::has_avx2() {
                paths.push(("avx2", crate::winograd::grad::x86::output_grad_row_avx2));
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                paths.push(("avx512", crate::winograd::grad::x86::output_grad_row_avx512));
            }
        }
        #[cfg(target_arch = "aarch64")]
        paths.push(("neon", output_grad_row::<neon::Neon>));
        paths
    }

    /// `row[x]`, zero outside the row and for a row of padding.
    fn at(row: Option<&[f32]>, x: isize) -> f32 {
        row.and_then(|r| usize::try_from(x).ok().and_then(|x| r.get(x)))
            .copied()
            .unwrap_or(0.0)
    }

    /// Checks the points of a row of `tiles` tiles against `expected` and
    /// that nothing past them was written.
    fn check(
        label: &str,
        out: &[f32],
        stride: usize,
        tiles: usize,
        expected: impl Fn(usize, usize) -> f32,
    ) {
        assert!(
            out[16 * stride..].iter().all(|&x| x == SENTINEL),
            "{label}: written past the last point"
        );
        for p in 0..16 {
            for j in 0..stride {
                let got = out[p * stride + j];
                let want = if j < tiles { expected(p, j) } else { SENTINEL };
                assert!(
                    (got - want).abs() <= 1e-6,
                    "{label}: point {p} of tile {j} is {got}, not {want}"
                );
            }
        }
    }

    #[test]
    fn input_blocks_compute_bt_d_b_on_every_path() {
        // Widths around every block size, with and without padding, and rows of padding.
        for width in (1..=40usize).chain([135]) {
            for left in [0, 1] {
                let Some(tiles) = (width + 2 * left).checked_sub(2).map(|wo| wo.div_ceil(2)) else {
                    continue;
                };
                let data: Vec<Vec<f32>> = (0..4)
                    .map(|r| values(width, (width * 8 + r) as u32))
                    .collect();
                for padding_row in [None, Some(0), Some(3)] {
                    let rows: [Option<&[f32]>; 4] =
                        std::array::from_fn(|r| (Some(r) != padding_row).then(|| &data[r][..]));
                    let expected = |p: usize, j: usize| {
                        let (a, b) = (p / 4, p % 4);
                        let mut sum = 0.0;
                        for (r, row) in rows.iter().enumerate() {
                            for (c, bt) in BT[b].iter().enumerate() {
                                let x = (2 * j + c) as isize - left as isize;
                                sum += BT[a][r] * at(*row, x) * bt;
                            }
                        }
                        sum
                    };
                    let stride = tiles + 3;
                    for (name, path) in input_paths() {
                        let mut v = vec![SENTINEL; 16 * stride + MAX_LANES];
                        // SAFETY: the path's CPU features were detected; v holds 16 rows and spare lanes.
                        unsafe { path(rows, left, tiles, &mut v, stride) };
                        let label = format!(
                            "{name}, width {width}, left {left}, padding row {padding_row:?}"
                        );
                        check(&label, &v, stride, tiles, expected);
                    }
                }
            }
        }
    }

    #[test]
    fn output_gradient_blocks_compute_a_dy_at_on_every_path() {
        for width in (1..=40usize).chain([135]) {
            let tiles = width.div_ceil(2);
            let data: Vec<Vec<f32>> = (0..2)
                .map(|r| values(width, (width * 4 + r) as u32))
                .collect();
            for last_row in [true, false] {
                let rows = [Some(&data[0][..]), last_row.then(|| &data[1][..])];
                let expected = |p: usize, j: usize| {
                    let (a, b) = (p / 4, p % 4);
                    let mut sum = 0.0;
                    for (r, row) in rows.iter().enumerate() {
                        for (c, a_bc) in A[b].iter().enumerate() {
                            sum += A[a][r] * at(*row, (2 * j + c) as isize) * a_bc;
                        }
                    }
                    sum
                };
                let stride = tiles + 3;
                for (name, path) in output_grad_paths() {
                    let mut dm = vec![SENTINEL; 16 * stride + MAX_LANES];
                    // SAFETY: the path's CPU features were detected; dm holds 16 rows and spare lanes.
                    unsafe { path(rows, tiles, &mut dm, stride) };
                    let label = format!("{name}, width {width}, second row {last_row}");
                    check(&label, &dm, stride, tiles, expected);
                }
            }
        }
    }

    #[test]
    fn output_blocks_compute_at_m_a_with_bias_and_relu_on_every_path() {
        // Odd widths end in a one-pixel tile; a missing second row is an odd height's last.
        for width in (1..=40usize).chain([135]) {
            let tiles = width.div_ceil(2);
            let stride = tiles + 3;
            let m = values(16 * stride, width as u32);
            for (bias, relu) in [(0.0, false), (0.25, true)] {
                for second_row in [true, false] {
                    let expected = |r: usize, x: usize| {
                        let (j, c) = (x / 2, x % 2);
                        let mut sum = 0.0;
                        for p in 0..16 {
                            sum += A[p / 4][r] * m[p * stride + j] * A[p % 4][c];
                        }
                        let sum = sum + bias;
                        if relu {
                            sum.max(0.0)
                        } else {
                            sum
                        }
                    };
                    for (name, path) in output_paths() {
                        let mut rows = vec![SENTINEL; 2 * width + MAX_LANES];
                        let (top, bottom) = rows.split_at_mut(width);
                        let bottom = second_row.then(|| &mut bottom[..width]);
                        // SAFETY: the path's CPU features were detected; m holds 16 rows.
                        unsafe { path(&m, stride, tiles, (bias, relu), [Some(top), bottom]) };
                        let label = format!("{name}, width {width}, bias {bias}, relu {relu}");
                        for (i, &got) in rows.iter().enumerate() {
                            let (r, x) = (i / width, i % width);
                            let want = if r == 0 || (r == 1 && second_row) {
                                expected(r, x)
                            } else {
                                SENTINEL
                            };
                            assert!(
                                (got - want).abs() <= 1e-5,
                                "{label}: pixel {x} of row {r} is {got}, not {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
