//! Inner-product kernels, picked once per process from what the CPU offers.
//!
//! Retrieval spends nearly all of its time in `dot`: an HNSW search at
//! ef 128 over 64-dim vectors evaluates a couple of thousand of them, an
//! exact scan one per item. The portable loop in [`dot_scalar`] is what the
//! compiler makes of plain Rust for the baseline x86-64 target (SSE2, no
//! FMA); the AVX2+FMA and AVX-512 versions are written with `std::arch` and
//! chosen at run time by [`kernels`], cached in a `OnceLock`, so one binary
//! runs everywhere and uses what it finds.
//!
//! Two kernel shapes: `f32 · f32`, and `f32 · i8` for the quantised copy of
//! the vectors (one byte a component, a quarter of the memory traffic).

use std::sync::OnceLock;

/// `a · b` over equal-length slices.
pub type DotF32 = unsafe fn(&[f32], &[f32]) -> f32;
/// `a · b` with `b` quantised to `i8` (the caller applies the scale).
pub type DotI8 = unsafe fn(&[f32], &[i8]) -> f32;
/// `q · row` for every `q.len()`-long row of a matrix, appended to `out`:
/// the same arithmetic as [`DotF32`] row by row, in one call (an exact scan
/// pays no call through a pointer per row).
pub type DotsF32 = unsafe fn(&[f32], &[f32], &mut Vec<f32>);

/// The kernels this CPU runs, and the name of the instruction set they use.
///
/// The fields are private: only this module, after checking what the CPU
/// supports, may put a kernel behind the safe [`Kernels::dot`]. A forged
/// value with, say, the AVX-512 kernel on a CPU without it would be
/// undefined behaviour from safe code, so it must not compile:
///
/// ```compile_fail,E0451
/// use cascade::catalog::simd::{dot_i8_scalar, dot_scalar, Kernels};
/// let forged = Kernels { name: "forged", dot: dot_scalar, dot_i8: dot_i8_scalar };
/// ```
#[derive(Clone, Copy)]
pub struct Kernels {
    name: &'static str,
    dot: DotF32,
    dot_i8: DotI8,
    dots: DotsF32,
}

impl Kernels {
    /// The instruction set the kernels use (`avx512`, `avx2`, `scalar`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// `a · b`; lengths must match (checked in debug builds).
    #[inline]
    pub fn dot(&self, a: &[f32], b: &[f32]) -> f32 {
        debug_assert_eq!(a.len(), b.len());
        let n = a.len().min(b.len());
        // SAFETY: the kernel was chosen by `kernels()` only after
        // `is_x86_feature_detected!` confirmed every feature it enables, and
        // the slices passed are of equal length.
        unsafe { (self.dot)(&a[..n], &b[..n]) }
    }

    /// `q · row` for every row of `rows` (each `q.len()` long), appended
    /// to `out`; each score is bit for bit what [`Kernels::dot`] gives.
    pub fn dots(&self, q: &[f32], rows: &[f32], out: &mut Vec<f32>) {
        if q.is_empty() {
            return;
        }
        let whole = rows.len() - rows.len() % q.len();
        // SAFETY: as in `dot`; every row is `q.len()` long.
        unsafe { (self.dots)(q, &rows[..whole], out) }
    }

    #[inline]
    pub fn dot_i8(&self, a: &[f32], b: &[i8]) -> f32 {
        debug_assert_eq!(a.len(), b.len());
        let n = a.len().min(b.len());
        // SAFETY: as in `dot`.
        unsafe { (self.dot_i8)(&a[..n], &b[..n]) }
    }
}

/// The best kernels for this CPU, detected on first use.
pub fn kernels() -> &'static Kernels {
    static CHOSEN: OnceLock<Kernels> = OnceLock::new();
    CHOSEN.get_or_init(detect)
}

/// The portable kernels, whatever the CPU (for tests and comparisons).
pub fn scalar_kernels() -> Kernels {
    Kernels {
        name: "scalar",
        dot: dot_scalar,
        dot_i8: dot_i8_scalar,
        dots: dots_scalar,
    }
}

fn detect() -> Kernels {
    if std::env::var_os("CASCADE_SIMD").is_some_and(|v| v == "scalar") {
        return scalar_kernels();
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::env::var_os("CASCADE_SIMD").is_none_or(|v| v != "avx2")
            && is_x86_feature_detected!("avx512f")
        {
            return Kernels {
                name: "avx512",
                dot: x86::dot_avx512,
                dot_i8: x86::dot_i8_avx512,
                dots: x86::dots_avx512,
            };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Kernels {
                name: "avx2",
                dot: x86::dot_avx2,
                dot_i8: x86::dot_i8_avx2,
                dots: x86::dots_avx2,
            };
        }
    }
    scalar_kernels()
}

/// # Safety
/// Safe for any input; `unsafe` only to share the kernels' pointer type.
pub unsafe fn dots_scalar(q: &[f32], rows: &[f32], out: &mut Vec<f32>) {
    // SAFETY: dot_scalar is safe for any input.
    out.extend(
        rows.chunks_exact(q.len())
            .map(|r| unsafe { dot_scalar(q, r) }),
    );
}

/// Eight independent accumulators so the compiler vectorises the loop for
/// whatever the build target has.
///
/// # Safety
/// Safe for any input; `unsafe` only to share the kernels' pointer type.
#[inline]
pub unsafe fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// # Safety
/// Safe for any input; `unsafe` only to share the kernels' pointer type.
pub unsafe fn dot_i8_scalar(a: &[f32], b: &[i8]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i] as f32;
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * *y as f32).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Sum of the eight lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum256(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; `rows` whole rows of `q.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dots_avx2(q: &[f32], rows: &[f32], out: &mut Vec<f32>) {
        // SAFETY: the caller's CPU check covers dot_avx2; rows match q.
        out.extend(
            rows.chunks_exact(q.len())
                .map(|r| unsafe { dot_avx2(q, r) }),
        );
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; `a` and `b` of equal length.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        // SAFETY (all loads): i + 16 <= n, or i + 8 <= n, bounds the reads.
        while i + 16 <= n {
            s0 = _mm256_fmadd_ps(
                unsafe { _mm256_loadu_ps(pa.add(i)) },
                unsafe { _mm256_loadu_ps(pb.add(i)) },
                s0,
            );
            s1 = _mm256_fmadd_ps(
                unsafe { _mm256_loadu_ps(pa.add(i + 8)) },
                unsafe { _mm256_loadu_ps(pb.add(i + 8)) },
                s1,
            );
            i += 16;
        }
        if i + 8 <= n {
            s0 = _mm256_fmadd_ps(
                unsafe { _mm256_loadu_ps(pa.add(i)) },
                unsafe { _mm256_loadu_ps(pb.add(i)) },
                s0,
            );
            i += 8;
        }
        let mut sum = hsum256(_mm256_add_ps(s0, s1));
        while i < n {
            sum += a[i] * b[i];
            i += 1;
        }
        sum
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; `a` and `b` of equal length.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_i8_avx2(a: &[f32], b: &[i8]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut s0 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n bounds both reads (8 floats, 8 bytes).
            let bytes = unsafe { _mm_loadl_epi64(pb.add(i) as *const __m128i) };
            let wide = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
            s0 = _mm256_fmadd_ps(unsafe { _mm256_loadu_ps(pa.add(i)) }, wide, s0);
            i += 8;
        }
        let mut sum = hsum256(s0);
        while i < n {
            sum += a[i] * b[i] as f32;
            i += 1;
        }
        sum
    }

    /// # Safety
    /// The CPU must support AVX-512F; `rows` whole rows of `q.len()`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dots_avx512(q: &[f32], rows: &[f32], out: &mut Vec<f32>) {
        // SAFETY: the caller's CPU check covers dot_avx512; rows match q.
        out.extend(
            rows.chunks_exact(q.len())
                .map(|r| unsafe { dot_avx512(q, r) }),
        );
    }

    /// # Safety
    /// The CPU must support AVX-512F; `a` and `b` of equal length.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut i = 0;
        // SAFETY (all loads): bounded by i + 32 <= n / i + 16 <= n, and the
        // tail load is masked to the lanes below n.
        while i + 32 <= n {
            s0 = _mm512_fmadd_ps(
                unsafe { _mm512_loadu_ps(pa.add(i)) },
                unsafe { _mm512_loadu_ps(pb.add(i)) },
                s0,
            );
            s1 = _mm512_fmadd_ps(
                unsafe { _mm512_loadu_ps(pa.add(i + 16)) },
                unsafe { _mm512_loadu_ps(pb.add(i + 16)) },
                s1,
            );
            i += 32;
        }
        if i + 16 <= n {
            s0 = _mm512_fmadd_ps(
                unsafe { _mm512_loadu_ps(pa.add(i)) },
                unsafe { _mm512_loadu_ps(pb.add(i)) },
                s0,
            );
            i += 16;
        }
        if i < n {
            let mask: __mmask16 = (1u32 << (n - i)) as u16 - 1;
            s1 = _mm512_fmadd_ps(
                unsafe { _mm512_maskz_loadu_ps(mask, pa.add(i)) },
                unsafe { _mm512_maskz_loadu_ps(mask, pb.add(i)) },
                s1,
            );
        }
        _mm512_reduce_add_ps(_mm512_add_ps(s0, s1))
    }

    /// # Safety
    /// The CPU must support AVX-512F; `a` and `b` of equal length.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_i8_avx512(a: &[f32], b: &[i8]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut s0 = _mm512_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n bounds both reads (16 floats, 16 bytes).
            let bytes = unsafe { _mm_loadu_si128(pb.add(i) as *const __m128i) };
            let wide = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes));
            s0 = _mm512_fmadd_ps(unsafe { _mm512_loadu_ps(pa.add(i)) }, wide, s0);
            i += 16;
        }
        let mut sum = _mm512_reduce_add_ps(s0);
        while i < n {
            sum += a[i] * b[i] as f32;
            i += 1;
        }
        sum
    }
}

/// Hints the CPU to start loading the cache line at `p` (no-op elsewhere).
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    fn all_kernels() -> Vec<Kernels> {
        let mut out = vec![scalar_kernels(), *kernels()];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                out.push(Kernels {
                    name: "avx2",
                    dot: x86::dot_avx2,
                    dot_i8: x86::dot_i8_avx2,
                    dots: x86::dots_avx2,
                });
            }
            if is_x86_feature_detected!("avx512f") {
                out.push(Kernels {
                    name: "avx512",
                    dot: x86::dot_avx512,
                    dot_i8: x86::dot_i8_avx512,
                    dots: x86::dots_avx512,
                });
            }
        }
        out
    }

    /// A matrix's scores in one call are each row's `dot`, bit for bit.
    #[test]
    fn dots_are_the_rows_dots_exactly() {
        for dim in [1, 7, 16, 32, 33, 64] {
            let q = sample(dim, 3);
            let rows = sample(dim * 50, 11);
            for k in all_kernels() {
                let mut got = vec![9.0];
                k.dots(&q, &rows, &mut got);
                let want: Vec<f32> = std::iter::once(9.0)
                    .chain(rows.chunks_exact(dim).map(|r| k.dot(&q, r)))
                    .collect();
                assert_eq!(
                    got.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
                    "{} dim {dim}",
                    k.name()
                );
            }
        }
    }

    #[test]
    fn every_kernel_matches_f64_on_odd_lengths() {
        for n in [
            0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 257,
        ] {
            let (a, b) = (sample(n, 1), sample(n, 7));
            let bq: Vec<i8> = b.iter().map(|x| (x * 127.0).round() as i8).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let want_q: f64 = a.iter().zip(&bq).map(|(x, y)| *x as f64 * *y as f64).sum();
            for k in all_kernels() {
                let got = k.dot(&a, &b) as f64;
                assert!(
                    (got - want).abs() < 1e-4 * (1.0 + n as f64),
                    "{} n={n}: {got} vs {want}",
                    k.name
                );
                let got_q = k.dot_i8(&a, &bq) as f64;
                assert!(
                    (got_q - want_q).abs() < 1e-2 * (1.0 + n as f64),
                    "{} i8 n={n}: {got_q} vs {want_q}",
                    k.name
                );
            }
        }
    }

    #[test]
    fn unaligned_slices_are_fine() {
        let a = sample(80, 3);
        let b = sample(80, 5);
        for k in all_kernels() {
            for off in 0..5 {
                let (x, y) = (&a[off..off + 64], &b[off + 1..off + 65]);
                let want: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
                assert!((k.dot(x, y) - want).abs() < 1e-4, "{} offset {off}", k.name);
            }
        }
    }
}
