//! Inner-product kernels: f32·f32 and f16·f32 with AVX2 + FMA + F16C when the CPU has them
//! (detected at run time), and portable loops with independent accumulators otherwise.
//!
//! ```
//! use openledger_poa::influence::kernel::{dot, dot_f16};
//! use half::f16;
//!
//! let a: Vec<f32> = (0..100).map(|i| i as f32).collect();
//! let h: Vec<f16> = a.iter().map(|&v| f16::from_f32(v)).collect();
//! assert_eq!(dot(&a, &a), dot_f16(&h, &a));
//! ```

use half::f16;

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma_f16c() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

/// `Σ a[i]·b[i]` over the common length.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    #[cfg(target_arch = "x86_64")]
    if n >= 32 && has_avx2_fma_f16c() {
        // SAFETY: the CPU supports the features the kernel is compiled for.
        return unsafe { x86::dot_f32(&a[..n], &b[..n]) };
    }
    dot_portable(&a[..n], &b[..n])
}

/// `Σ h[i]·b[i]` with `h` in f16, converted on the fly (no buffer).
#[inline]
pub fn dot_f16(h: &[f16], b: &[f32]) -> f32 {
    let n = h.len().min(b.len());
    #[cfg(target_arch = "x86_64")]
    if n >= 32 && has_avx2_fma_f16c() {
        // SAFETY: the CPU supports the features the kernel is compiled for.
        return unsafe { x86::dot_f16(&h[..n], &b[..n]) };
    }
    let mut acc = [0f32; 16];
    let (ch, cb) = (h[..n].chunks_exact(16), b[..n].chunks_exact(16));
    let (rh, rb) = (ch.remainder(), cb.remainder());
    let mut buf = [0f32; 16];
    for (x, y) in ch.zip(cb) {
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(x, &mut buf);
        for l in 0..16 {
            acc[l] += buf[l] * y[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in rh.iter().zip(rb) {
        s += x.to_f32() * y;
    }
    s
}

/// Converts f16 values to f32 (`out.len() >= h.len()`), with F16C when available.
pub fn f16_to_f32(h: &[f16], out: &mut [f32]) {
    let out = &mut out[..h.len()];
    #[cfg(target_arch = "x86_64")]
    if h.len() >= 8 && has_avx2_fma_f16c() {
        // SAFETY: the CPU supports the features the kernel is compiled for.
        unsafe { x86::convert(h, out) };
        return;
    }
    half::slice::HalfFloatSliceExt::convert_to_f32_slice(h, out);
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::f16;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `a.len() == b.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (l, acc) in acc.iter_mut().enumerate() {
                // SAFETY: i + 8l + 8 ≤ n for both slices.
                let (x, y) = unsafe {
                    (
                        _mm256_loadu_ps(pa.add(i + 8 * l)),
                        _mm256_loadu_ps(pb.add(i + 8 * l)),
                    )
                };
                *acc = _mm256_fmadd_ps(x, y, *acc);
            }
            i += 32;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut s = hsum(sum);
        while i < n {
            s += a[i] * b[i];
            i += 1;
        }
        s
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `h.len() == out.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn convert(h: &[f16], out: &mut [f32]) {
        let n = h.len();
        let (ph, po) = (h.as_ptr().cast::<u16>(), out.as_mut_ptr());
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 ≤ n for both slices; unaligned loads and stores.
            unsafe {
                let v = _mm256_cvtph_ps(_mm_loadu_si128(ph.add(i).cast::<__m128i>()));
                _mm256_storeu_ps(po.add(i), v);
            }
            i += 8;
        }
        while i < n {
            out[i] = h[i].to_f32();
            i += 1;
        }
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `h.len() == b.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_f16(h: &[f16], b: &[f32]) -> f32 {
        let n = h.len();
        let (ph, pb) = (h.as_ptr().cast::<u16>(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (l, acc) in acc.iter_mut().enumerate() {
                // SAFETY: i + 8l + 8 ≤ n for both slices; unaligned loads.
                let (x, y) = unsafe {
                    (
                        _mm256_cvtph_ps(_mm_loadu_si128(ph.add(i + 8 * l).cast::<__m128i>())),
                        _mm256_loadu_ps(pb.add(i + 8 * l)),
                    )
                };
                *acc = _mm256_fmadd_ps(x, y, *acc);
            }
            i += 32;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut s = hsum(sum);
        while i < n {
            s += h[i].to_f32() * b[i];
            i += 1;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededStream;

    #[test]
    fn simd_and_portable_kernels_agree_on_every_length() {
        let mut s = SeededStream::new(1);
        for n in [0, 1, 15, 16, 31, 32, 33, 100, 1024, 1031] {
            let a: Vec<f32> = (0..n).map(|_| s.next_gaussian() as f32).collect();
            let b: Vec<f32> = (0..n).map(|_| s.next_gaussian() as f32).collect();
            let h: Vec<f16> = a.iter().map(|&v| f16::from_f32(v)).collect();
            let ah: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
            let exact: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            let exact_h: f64 = ah
                .iter()
                .zip(&b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            let tol = 1e-5 * (n as f64).max(1.0);
            assert!((f64::from(dot(&a, &b)) - exact).abs() < tol, "n {n}");
            assert!(
                (f64::from(dot_portable(&a, &b)) - exact).abs() < tol,
                "n {n}"
            );
            assert!((f64::from(dot_f16(&h, &b)) - exact_h).abs() < tol, "n {n}");
            let mut conv = vec![0f32; n];
            f16_to_f32(&h, &mut conv);
            assert_eq!(conv, ah, "n {n}");
        }
    }
}
