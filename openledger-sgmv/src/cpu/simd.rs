//! Register-blocked f32 micro-kernels of the shrink (`v = x · Aᵀ`) and expand
//! (`y += scale · v · Bᵀ`) steps: AVX2 + FMA (+ F16C for f16 weights) with explicit intrinsics,
//! and a portable version the compiler vectorises for the baseline target. The CPU's features
//! are detected once at run time. (AVX-512 CPUs run the AVX2 kernels: an auto-vectorised
//! AVX-512 build measured several times slower, and AVX-512 intrinsics need Rust 1.89, above
//! this workspace's minimum.)
//!
//! Each output element is one fixed chain of operations whatever the blocking around it: a dot
//! product of the shrink accumulates lane `l` of `L` lanes over `k ≡ l (mod L)` in increasing
//! `k`, folds the lanes in a fixed pairwise tree, then adds the tail elements in order; an
//! expand output sums over `j` in order. The result therefore depends on the instruction set
//! (lane count, fused or separate multiply-add) but never on how rows and columns are split
//! between threads, nor on the other rows of the batch.

use crate::element::LoraElement;
use std::sync::OnceLock;

/// The instruction set the CPU operators run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX2 with FMA and F16C (8 f32 lanes, fused multiply-add).
    Avx2Fma,
    /// Any CPU: separate multiply and add, vectorised by the compiler for the baseline target.
    Portable,
}

/// The instruction set detected on this CPU (cached after the first call). Setting the
/// environment variable `OPENLEDGER_SGMV_ISA` to `portable` selects the portable kernels (for
/// testing and comparison); the int8 projections also read `avx2` (no AVX-VNNI, AVX-512 or
/// AMX) and `avx512` (no AMX).
pub fn detected_isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let cap = std::env::var("OPENLEDGER_SGMV_ISA").unwrap_or_default();
        #[cfg(target_arch = "x86_64")]
        {
            if cap != "portable"
                && std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
            {
                return Isa::Avx2Fma;
            }
        }
        let _ = cap;
        Isa::Portable
    })
}

/// Multiply-add strategy of the portable kernels: a separate multiply and add (a software
/// `mul_add` would be slow where the CPU has no FMA).
trait Madd {
    fn madd(a: f32, b: f32, c: f32) -> f32;
}

struct Separate;
impl Madd for Separate {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// Folds `L` lanes pairwise (lane i with lane i + w/2), a fixed order.
#[inline(always)]
fn fold<const L: usize>(mut acc: [f32; L]) -> f32 {
    let mut w = L;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            acc[i] += acc[i + w];
        }
    }
    acc[0]
}

/// Dot products of `MR` x rows with `NR` A rows.
#[inline(always)]
fn shrink_tile<const MR: usize, const NR: usize, const L: usize, M: Madd>(
    xs: &[&[f32]],
    a: &[&[f32]],
    d: usize,
) -> [[f32; NR]; MR] {
    let xs: [&[f32]; MR] = std::array::from_fn(|m| &xs[m][..d]);
    let a: [&[f32]; NR] = std::array::from_fn(|n| &a[n][..d]);
    let mut acc = [[[0f32; L]; NR]; MR];
    let full = d - d % L;
    let mut k = 0;
    while k < full {
        let av: [&[f32; L]; NR] =
            std::array::from_fn(|n| <&[f32; L]>::try_from(&a[n][k..k + L]).expect("lane block"));
        for m in 0..MR {
            let xv = <&[f32; L]>::try_from(&xs[m][k..k + L]).expect("lane block");
            for n in 0..NR {
                for l in 0..L {
                    acc[m][n][l] = M::madd(xv[l], av[n][l], acc[m][n][l]);
                }
            }
        }
        k += L;
    }
    let mut out = [[0f32; NR]; MR];
    for m in 0..MR {
        for n in 0..NR {
            let mut s = fold(acc[m][n]);
            for k in full..d {
                s = M::madd(xs[m][k], a[n][k], s);
            }
            out[m][n] = s;
        }
    }
    out
}

#[inline(always)]
fn shrink_rows<const MR: usize, const NR: usize, const L: usize, M: Madd>(
    xs: &[&[f32]],
    a: &[&[f32]],
    out: &mut [&mut [f32]],
    d: usize,
) {
    let mut n = 0;
    while n + NR <= a.len() {
        let t = shrink_tile::<MR, NR, L, M>(xs, &a[n..n + NR], d);
        for (m, o) in out.iter_mut().enumerate().take(MR) {
            o[n..n + NR].copy_from_slice(&t[m]);
        }
        n += NR;
    }
    while n < a.len() {
        let t = shrink_tile::<MR, 1, L, M>(xs, &a[n..n + 1], d);
        for (m, o) in out.iter_mut().enumerate().take(MR) {
            o[n] = t[m][0];
        }
        n += 1;
    }
}

#[inline(always)]
fn shrink_generic<const MR: usize, const NR: usize, const L: usize, M: Madd>(
    xs: &[&[f32]],
    a: &[&[f32]],
    out: &mut [&mut [f32]],
    d: usize,
) {
    let mut m = 0;
    while m + MR <= xs.len() {
        shrink_rows::<MR, NR, L, M>(&xs[m..m + MR], a, &mut out[m..m + MR], d);
        m += MR;
    }
    while m < xs.len() {
        shrink_rows::<1, NR, L, M>(&xs[m..m + 1], a, &mut out[m..m + 1], d);
        m += 1;
    }
}

/// `y[m][o] += scale · Σ_j v[m][j] · bt[j][o]` for `MR` rows and `L` consecutive outputs.
#[inline(always)]
fn expand_rows<const MR: usize, const L: usize, T: LoraElement, M: Madd>(
    vs: &[&[f32]],
    bt: &[f32],
    on: usize,
    scale: f32,
    ys: &mut [&mut [T]],
) {
    let r = vs[0].len();
    let vs: [&[f32]; MR] = std::array::from_fn(|m| &vs[m][..r]);
    let full = on - on % L;
    let mut o = 0;
    while o < full {
        let mut acc = [[0f32; L]; MR];
        for j in 0..r {
            let b = <&[f32; L]>::try_from(&bt[j * on + o..j * on + o + L]).expect("lane block");
            for m in 0..MR {
                let vj = vs[m][j];
                for l in 0..L {
                    acc[m][l] = M::madd(vj, b[l], acc[m][l]);
                }
            }
        }
        for m in 0..MR {
            let y = &mut ys[m][o..o + L];
            for l in 0..L {
                y[l] = T::from_f32(y[l].to_f32() + scale * acc[m][l]);
            }
        }
        o += L;
    }
    for o in full..on {
        for m in 0..MR {
            let mut s = 0f32;
            for j in 0..r {
                s = M::madd(vs[m][j], bt[j * on + o], s);
            }
            let y = &mut ys[m][o];
            *y = T::from_f32(y.to_f32() + scale * s);
        }
    }
}

#[inline(always)]
fn expand_generic<const MR: usize, const L: usize, T: LoraElement, M: Madd>(
    vs: &[&[f32]],
    bt: &[f32],
    on: usize,
    scale: f32,
    ys: &mut [&mut [T]],
) {
    let mut m = 0;
    while m + MR <= vs.len() {
        expand_rows::<MR, L, T, M>(&vs[m..m + MR], bt, on, scale, &mut ys[m..m + MR]);
        m += MR;
    }
    while m < vs.len() {
        expand_rows::<1, L, T, M>(&vs[m..m + 1], bt, on, scale, &mut ys[m..m + 1]);
        m += 1;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! AVX2 + FMA kernels with explicit intrinsics: each output element is one `__m256`
    //! accumulator (lane `l` sums `k ≡ l mod 8`), folded like [`fold`], then the tail.
    use super::{LoraElement, fold};
    use std::arch::x86_64::*;

    #[inline(always)]
    fn lanes(v: __m256) -> [f32; 8] {
        // SAFETY: __m256 and [f32; 8] have the same size and any bit pattern is valid.
        unsafe { std::mem::transmute::<__m256, [f32; 8]>(v) }
    }

    /// `MR × NR` dot products over `d`, widening `X` and `W` to f32 in registers.
    ///
    /// # Safety
    /// AVX2, FMA and F16C available; every `xs[m]` and `a[n]` has at least `d` elements.
    #[inline(always)]
    unsafe fn shrink_tile<const MR: usize, const NR: usize, X: LoraElement, W: LoraElement>(
        xs: &[&[X]],
        a: &[&[W]],
        d: usize,
    ) -> [[f32; NR]; MR] {
        let full = d - d % 8;
        let xp: [*const X; MR] = std::array::from_fn(|m| xs[m].as_ptr());
        let ap: [*const W; NR] = std::array::from_fn(|n| a[n].as_ptr());
        // SAFETY: the caller guarantees the features; loads stay below `full <= d`.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); NR]; MR];
            let mut k = 0;
            while k < full {
                if MR == 1 {
                    // One x row: stream the A rows (NR independent chains hide the latency).
                    let xv = load8_t(xp[0].add(k));
                    for n in 0..NR {
                        acc[0][n] = _mm256_fmadd_ps(xv, load8_t(ap[n].add(k)), acc[0][n]);
                    }
                } else {
                    let av: [__m256; NR] = std::array::from_fn(|n| load8_t(ap[n].add(k)));
                    for m in 0..MR {
                        let xv = load8_t(xp[m].add(k));
                        for n in 0..NR {
                            acc[m][n] = _mm256_fmadd_ps(xv, av[n], acc[m][n]);
                        }
                    }
                }
                k += 8;
            }
            let mut out = [[0f32; NR]; MR];
            for m in 0..MR {
                for n in 0..NR {
                    let mut s = fold(lanes(acc[m][n]));
                    for k in full..d {
                        s = xs[m][k].to_f32().mul_add(a[n][k].to_f32(), s);
                    }
                    out[m][n] = s;
                }
            }
            out
        }
    }

    /// All of `a`'s rows against `MR` x rows, `NR` A rows at a time (then 2, then 1).
    #[inline(always)]
    unsafe fn shrink_rows<const MR: usize, const NR: usize, X: LoraElement, W: LoraElement>(
        xs: &[&[X]],
        a: &[&[W]],
        out: &mut [&mut [f32]],
        d: usize,
    ) {
        let mut n = 0;
        // (4 rows left after tiles of 3 go as 2 + 2 rather than 3 + 1.)
        while n + NR <= a.len() && !(NR == 3 && a.len() - n == 4) {
            // SAFETY: forwarded contract.
            let t = unsafe { shrink_tile::<MR, NR, X, W>(xs, &a[n..n + NR], d) };
            for (m, o) in out.iter_mut().enumerate().take(MR) {
                o[n..n + NR].copy_from_slice(&t[m]);
            }
            n += NR;
        }
        while n + 2 <= a.len() {
            // SAFETY: forwarded contract.
            let t = unsafe { shrink_tile::<MR, 2, X, W>(xs, &a[n..n + 2], d) };
            for (m, o) in out.iter_mut().enumerate().take(MR) {
                o[n..n + 2].copy_from_slice(&t[m]);
            }
            n += 2;
        }
        if n < a.len() {
            // SAFETY: forwarded contract.
            let t = unsafe { shrink_tile::<MR, 1, X, W>(xs, &a[n..n + 1], d) };
            for (m, o) in out.iter_mut().enumerate().take(MR) {
                o[n] = t[m][0];
            }
        }
    }

    /// `out[m][n] = Σ_k xs[m][k] · a[n][k]`: 4 x rows × 3 A rows per register tile (12 chains,
    /// 7 loads per 12 multiply-adds, all 16 registers), and a lone x row against 8 A rows (so
    /// that one token still keeps 8 multiply-add chains in flight).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C (checked by [`super::detected_isa`]); rows as in
    /// [`super::shrink`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn shrink_avx2<X: LoraElement, W: LoraElement>(
        xs: &[&[X]],
        a: &[&[W]],
        out: &mut [&mut [f32]],
        d: usize,
    ) {
        assert!(
            xs.iter().all(|x| x.len() >= d) && a.iter().all(|r| r.len() >= d),
            "row shorter than the dimension"
        );
        assert!(
            out.len() >= xs.len() && out.iter().all(|o| o.len() >= a.len()),
            "output tile too small"
        );
        let mut m = 0;
        while m + 4 <= xs.len() {
            // SAFETY: features enabled here; lengths asserted above.
            unsafe { shrink_rows::<4, 3, X, W>(&xs[m..m + 4], a, &mut out[m..m + 4], d) };
            m += 4;
        }
        while m < xs.len() {
            // SAFETY: as above.
            unsafe { shrink_rows::<1, 8, X, W>(&xs[m..m + 1], a, &mut out[m..m + 1], d) };
            m += 1;
        }
    }

    /// Loads 8 elements of `T` at `p` widened to f32.
    ///
    /// # Safety
    /// `p` valid for 8 reads; AVX2 and F16C available.
    #[inline(always)]
    unsafe fn load8_t<T: LoraElement>(p: *const T) -> __m256 {
        // SAFETY: caller's contract; the branch is resolved at compile time.
        unsafe {
            if T::IS_F32 {
                _mm256_loadu_ps(p.cast::<f32>())
            } else {
                let h = _mm_loadu_si128(p.cast::<__m128i>());
                if T::NAME == "bf16" {
                    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
                } else {
                    _mm256_cvtph_ps(h)
                }
            }
        }
    }

    /// 8 floats rounded to bf16 (to nearest even, NaN kept quiet, like `bf16::from_f32`), each
    /// in the low half of its 32-bit lane.
    ///
    /// # Safety
    /// AVX2 available.
    #[inline(always)]
    unsafe fn round_bf16(v: __m256) -> __m256i {
        // SAFETY: register-only operations; AVX2 per the caller.
        unsafe {
            let u = _mm256_castps_si256(v);
            let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(u), _mm256_set1_epi32(1));
            let bias = _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb);
            let rounded = _mm256_srli_epi32::<16>(_mm256_add_epi32(u, bias));
            let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
            let quiet = _mm256_or_si256(_mm256_srli_epi32::<16>(u), _mm256_set1_epi32(0x40));
            _mm256_blendv_epi8(rounded, quiet, nan)
        }
    }

    /// Rounds 8 floats to `T` (to nearest even, like `T::from_f32`) and stores them at `p`.
    ///
    /// # Safety
    /// `p` valid for 8 writes; AVX2 and F16C available.
    #[inline(always)]
    unsafe fn store8_t<T: LoraElement>(p: *mut T, v: __m256) {
        // SAFETY: caller's contract; the branch is resolved at compile time.
        unsafe {
            if T::IS_F32 {
                _mm256_storeu_ps(p.cast::<f32>(), v);
                return;
            }
            let h = if T::NAME == "bf16" {
                let r = round_bf16(v);
                let packed = _mm256_packus_epi32(r, r);
                _mm256_castsi256_si128(_mm256_permute4x64_epi64::<0b1000>(packed))
            } else {
                _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v)
            };
            _mm_storeu_si128(p.cast::<__m128i>(), h);
        }
    }

    /// [`store8_t`] of 16 floats (`lo` then `hi`) at `p`, packed into one store for 16-bit `T`.
    ///
    /// # Safety
    /// `p` valid for 16 writes; AVX2 and F16C available.
    #[inline(always)]
    unsafe fn store16_t<T: LoraElement>(p: *mut T, lo: __m256, hi: __m256) {
        // SAFETY: caller's contract; the branch is resolved at compile time.
        unsafe {
            if T::IS_F32 {
                _mm256_storeu_ps(p.cast::<f32>(), lo);
                _mm256_storeu_ps(p.cast::<f32>().add(8), hi);
                return;
            }
            let h = if T::NAME == "bf16" {
                // packus interleaves 128-bit halves: lo[0..4] hi[0..4] lo[4..8] hi[4..8]
                let packed = _mm256_packus_epi32(round_bf16(lo), round_bf16(hi));
                _mm256_permute4x64_epi64::<0b11_01_10_00>(packed)
            } else {
                _mm256_set_m128i(
                    _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(hi),
                    _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(lo),
                )
            };
            _mm256_storeu_si256(p.cast::<__m256i>(), h);
        }
    }

    /// Transposes 8 rows of 8 floats in registers.
    #[inline(always)]
    unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        // SAFETY: register-only shuffles; AVX available per the caller.
        unsafe {
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ]
        }
    }

    /// `MR` rows × 8 outputs `o..o + 8` of the tile: `B` rows are loaded 8 columns at a time and
    /// transposed in registers, so each output accumulates over `j` in order.
    ///
    /// # Safety
    /// AVX2 + FMA + F16C; `b` holds at least `(o + 8) · r` elements; `vs[m].len() == r`;
    /// `ys[m].len() >= o + 8`.
    #[inline(always)]
    unsafe fn expand_tile<const MR: usize, T: LoraElement, W: LoraElement>(
        vs: &[&[f32]],
        b: &[W],
        r: usize,
        o: usize,
        scale: f32,
        ys: &mut [&mut [T]],
    ) {
        let r8 = r - r % 8;
        // SAFETY: the caller guarantees the features and the bounds used below.
        unsafe {
            let bp = b.as_ptr().add(o * r);
            let mut acc = [_mm256_setzero_ps(); MR];
            let mut j = 0;
            while j < r8 {
                let rows: [__m256; 8] = std::array::from_fn(|i| load8_t(bp.add(i * r + j)));
                let cols = transpose8(rows);
                for (jj, col) in cols.iter().enumerate() {
                    for m in 0..MR {
                        let vj = _mm256_set1_ps(*vs[m].get_unchecked(j + jj));
                        acc[m] = _mm256_fmadd_ps(vj, *col, acc[m]);
                    }
                }
                j += 8;
            }
            while j < r {
                let col: [f32; 8] = std::array::from_fn(|i| (*bp.add(i * r + j)).to_f32());
                let col = _mm256_loadu_ps(col.as_ptr());
                for m in 0..MR {
                    let vj = _mm256_set1_ps(*vs[m].get_unchecked(j));
                    acc[m] = _mm256_fmadd_ps(vj, col, acc[m]);
                }
                j += 1;
            }
            let sv = _mm256_set1_ps(scale);
            for m in 0..MR {
                let p = ys[m][o..o + 8].as_mut_ptr();
                let sum = _mm256_add_ps(load8_t(p.cast_const()), _mm256_mul_ps(sv, acc[m]));
                store8_t(p, sum);
            }
        }
    }

    #[inline(always)]
    unsafe fn expand_rows<const MR: usize, T: LoraElement, W: LoraElement>(
        vs: &[&[f32]],
        b: &[W],
        on: usize,
        scale: f32,
        ys: &mut [&mut [T]],
    ) {
        let r = vs[0].len();
        let full = on - on % 8;
        let mut o = 0;
        while o < full {
            // SAFETY: forwarded contract; o + 8 <= full <= on.
            unsafe { expand_tile::<MR, T, W>(vs, b, r, o, scale, ys) };
            o += 8;
        }
        expand_scalar(&vs[..MR], full..on, scale, ys, |o, j| b[o * r + j].to_f32());
    }

    /// Expand for tiles of many rows: `B`'s tile is transposed once (8 × 8 blocks in registers)
    /// into an f32 scratch `[r, on]`, then each j step loads 16 outputs' weights for 4 rows.
    /// Same per-output chain (sum over `j` in order) as [`expand_rows`].
    ///
    /// # Safety
    /// AVX2 + FMA + F16C; `r` and `on` multiples of 8; shapes as asserted by [`expand_avx2`].
    #[inline(always)]
    unsafe fn expand_transposed<T: LoraElement, W: LoraElement>(
        vs: &[&[f32]],
        b: &[W],
        on: usize,
        scale: f32,
        ys: &mut [&mut [T]],
        bt: &mut Vec<f32>,
    ) {
        let r = vs[0].len();
        if bt.len() < r * on {
            bt.resize(r * on, 0.0);
        }
        // SAFETY: every block read lies in `b[..on * r]` and every write in `bt[..r * on]`;
        // with `r` and `on` multiples of 8 the blocks cover all of `bt[..r * on]`.
        unsafe {
            let bp = b.as_ptr();
            let tp = bt.as_mut_ptr();
            for ob in (0..on).step_by(8) {
                for jb in (0..r).step_by(8) {
                    let rows: [__m256; 8] =
                        std::array::from_fn(|i| load8_t(bp.add((ob + i) * r + jb)));
                    for (jj, col) in transpose8(rows).iter().enumerate() {
                        _mm256_storeu_ps(tp.add((jb + jj) * on + ob), *col);
                    }
                }
            }
        }
        // SAFETY: `bt[..r * on]` is `Bᵀ` with rows `on` apart; the rest forwarded.
        unsafe { expand_bt::<T, f32>(vs, bt, on, on, scale, ys) };
    }

    /// `MR` rows over the first `on` outputs of `bt` (`r` rows, `stride` apart, of `Bᵀ`, in any
    /// element type): `8·NW` outputs at a time, then 8, then the last `on % 8` one by one.
    ///
    /// # Safety
    /// AVX2 + FMA + F16C; `bt` holds `(r - 1) · stride + on` elements with `on <= stride`;
    /// `vs[m].len() == r`; `ys[m].len() >= on` for `m < MR`.
    #[inline(always)]
    unsafe fn expand_bt_rows<const MR: usize, const NW: usize, T: LoraElement, W: LoraElement>(
        vs: &[&[f32]],
        bt: &[W],
        stride: usize,
        on: usize,
        scale: f32,
        ys: &mut [&mut [T]],
    ) {
        // SAFETY: AVX available per the caller's contract.
        let sv = unsafe { _mm256_set1_ps(scale) };
        let mut o = 0;
        while o + 8 * NW <= on {
            // SAFETY: forwarded; o + 8·NW <= on.
            unsafe { expand_bt_block::<MR, NW, T, W>(vs, bt, stride, o, sv, ys) };
            o += 8 * NW;
        }
        while o + 8 <= on {
            // SAFETY: forwarded; o + 8 <= on.
            unsafe { expand_bt_block::<MR, 1, T, W>(vs, bt, stride, o, sv, ys) };
            o += 8;
        }
        expand_scalar(&vs[..MR], o..on, scale, ys, |o, j| {
            bt[j * stride + o].to_f32()
        });
    }

    /// The outputs `outs` past the last full vector, one by one: the same chain as a vector lane
    /// (`Σ_j v[j] · weight(o, j)` over `j` in order, then `y + scale · Σ`).
    #[inline(always)]
    fn expand_scalar<T: LoraElement>(
        vs: &[&[f32]],
        outs: std::ops::Range<usize>,
        scale: f32,
        ys: &mut [&mut [T]],
        weight: impl Fn(usize, usize) -> f32,
    ) {
        for o in outs {
            for (v, y) in vs.iter().zip(ys.iter_mut()) {
                let mut s = 0f32;
                for (j, vj) in v.iter().enumerate() {
                    s = vj.mul_add(weight(o, j), s);
                }
                y[o] = T::from_f32(y[o].to_f32() + scale * s);
            }
        }
    }

    /// `MR` rows × `8·NW` outputs from `o` of `Bᵀ`: one chain per output, over `j` in order.
    ///
    /// # Safety
    /// As [`expand_bt_rows`], and `o + 8·NW <= on`.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // register tiles: the same index into several arrays
    unsafe fn expand_bt_block<const MR: usize, const NW: usize, T: LoraElement, W: LoraElement>(
        vs: &[&[f32]],
        bt: &[W],
        stride: usize,
        o: usize,
        sv: __m256,
        ys: &mut [&mut [T]],
    ) {
        let r = vs[0].len();
        let vp: [*const f32; MR] = std::array::from_fn(|m| vs[m].as_ptr());
        // SAFETY: bounds by the caller's contract.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); NW]; MR];
            for j in 0..r {
                let row = bt.as_ptr().add(j * stride + o);
                let bv: [__m256; NW] = std::array::from_fn(|w| load8_t(row.add(8 * w)));
                for m in 0..MR {
                    let vj = _mm256_broadcast_ss(&*vp[m].add(j));
                    for w in 0..NW {
                        acc[m][w] = _mm256_fmadd_ps(vj, bv[w], acc[m][w]);
                    }
                }
            }
            for m in 0..MR {
                let y = ys[m].as_mut_ptr().add(o);
                let sum = |w: usize| {
                    let p = y.add(8 * w).cast_const();
                    _mm256_add_ps(load8_t(p), _mm256_mul_ps(sv, acc[m][w]))
                };
                let mut w = 0;
                while w + 2 <= NW {
                    store16_t(y.add(8 * w), sum(w), sum(w + 1));
                    w += 2;
                }
                if w < NW {
                    store8_t(y.add(8 * w), sum(w));
                }
            }
        }
    }

    /// Every row of a tile against `Bᵀ` (`bt`, rows `stride` apart): 6 rows × 16 outputs per
    /// register tile (12 chains in flight), then 4 × 16, 2 × 32 and 1 × 64 (8 each).
    ///
    /// # Safety
    /// As [`expand_bt_rows`], for every row of `vs`.
    #[inline(always)]
    unsafe fn expand_bt<T: LoraElement, W: LoraElement>(
        vs: &[&[f32]],
        bt: &[W],
        stride: usize,
        on: usize,
        scale: f32,
        ys: &mut [&mut [T]],
    ) {
        let mut m = 0;
        // SAFETY (each call): rows m.. exist; the rest forwarded.
        while m + 6 <= vs.len() {
            unsafe { expand_bt_rows::<6, 2, T, W>(&vs[m..], bt, stride, on, scale, &mut ys[m..]) };
            m += 6;
        }
        if m + 4 <= vs.len() {
            unsafe { expand_bt_rows::<4, 2, T, W>(&vs[m..], bt, stride, on, scale, &mut ys[m..]) };
            m += 4;
        }
        if m + 2 <= vs.len() {
            unsafe { expand_bt_rows::<2, 4, T, W>(&vs[m..], bt, stride, on, scale, &mut ys[m..]) };
            m += 2;
        }
        if m < vs.len() {
            unsafe { expand_bt_rows::<1, 8, T, W>(&vs[m..], bt, stride, on, scale, &mut ys[m..]) };
        }
    }

    /// Expand from `Bᵀ` laid out `[r, stride]` (`BLayout::RankOut`, `RankOutStrided`): the
    /// tile's outputs are its first `on` columns. Tiles of 8 rows or more read a contiguous f32
    /// copy of the tile's part of `Bᵀ` from `scratch`.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C (checked by [`super::detected_isa`]).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn expand_rank_out_avx2<T: LoraElement, W: LoraElement>(
        vs: &[&[f32]],
        bt: &[W],
        stride: usize,
        on: usize,
        scale: f32,
        ys: &mut [&mut [T]],
        scratch: &mut Vec<f32>,
    ) {
        let r = vs.first().map_or(0, |v| v.len());
        if r == 0 {
            return;
        }
        assert!(
            on <= stride && bt.len() >= (r - 1) * stride + on,
            "Bᵀ tile too small"
        );
        assert!(ys.len() >= vs.len(), "fewer output rows than v rows");
        for (v, y) in vs.iter().zip(ys.iter()) {
            assert!(v.len() == r && y.len() >= on, "row shapes");
        }
        if vs.len() >= 8 {
            // Many rows: copy the tile's rows of Bᵀ next to each other first. Rows a power of
            // two apart (out = 4096) fall in the same L1 sets, and `r` of them evict each other.
            // (Below 8 rows the copy costs about what it saves. With padded rows,
            // `BLayout::RankOutStrided`, reading in place measured the same for f32; the copy
            // still widens bf16 and f16 once per tile instead of once per row block.)
            super::bt_rows_into(bt, r, stride, on, scratch);
            // SAFETY: features enabled here; `scratch` is `[r, on]`; rows asserted above.
            unsafe { expand_bt::<T, f32>(vs, scratch, on, on, scale, ys) };
            return;
        }
        // SAFETY: features enabled here; shapes asserted above.
        unsafe { expand_bt(vs, bt, stride, on, scale, ys) };
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C (checked by [`super::detected_isa`]); shapes as
    /// in [`super::expand`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn expand_avx2<T: LoraElement, W: LoraElement>(
        vs: &[&[f32]],
        b: &[W],
        on: usize,
        scale: f32,
        ys: &mut [&mut [T]],
        bt: &mut Vec<f32>,
    ) {
        let r = vs.first().map_or(0, |v| v.len());
        assert!(b.len() >= r * on, "B tile smaller than on × r");
        assert!(ys.len() >= vs.len(), "fewer output rows than v rows");
        for (v, y) in vs.iter().zip(ys.iter()) {
            assert!(v.len() == r && y.len() >= on, "row shapes");
        }
        if vs.len() >= 8 && r.is_multiple_of(8) && on.is_multiple_of(8) {
            // SAFETY: features enabled here; shapes asserted above.
            unsafe { expand_transposed(vs, b, on, scale, ys, bt) };
            return;
        }
        let mut m = 0;
        while m + 4 <= vs.len() {
            // SAFETY: features enabled here; shapes asserted above.
            unsafe { expand_rows::<4, T, W>(&vs[m..m + 4], b, on, scale, &mut ys[m..m + 4]) };
            m += 4;
        }
        while m < vs.len() {
            // SAFETY: as above.
            unsafe { expand_rows::<1, T, W>(&vs[m..m + 1], b, on, scale, &mut ys[m..m + 1]) };
            m += 1;
        }
    }
}

/// The portable shrink on f32 rows (the dense tile kernel the model's 16-bit projections use
/// too): `out[m][n] = Σ_k xs[m][k] · a[n][k]` over `k < d`. Every
/// `xs` and `a` row holds at least `d` elements and every `out` row at least `a.len()`.
pub fn shrink_portable(xs: &[&[f32]], a: &[&[f32]], out: &mut [&mut [f32]], d: usize) {
    shrink_generic::<4, 2, 8, Separate>(xs, a, out, d)
}

/// The AVX2 shrink on rows of any element types (widened in registers, bitwise the result of
/// widening first): `out[m][n] = Σ_k xs[m][k] · a[n][k]`. `None` where the CPU lacks AVX2.
pub fn shrink_native<X: LoraElement, W: LoraElement>(
    isa: Isa,
    xs: &[&[X]],
    a: &[&[W]],
    out: &mut [&mut [f32]],
    d: usize,
) -> Option<()> {
    match isa {
        // SAFETY: `detected_isa` returned this variant only after checking the CPU features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => {
            unsafe { x86::shrink_avx2(xs, a, out, d) };
            Some(())
        }
        _ => {
            let _ = (xs, a, out, d);
            None
        }
    }
}

/// `ys[m][o] += scale · Σ_j vs[m][j] · b[o·r + j]` for `o < on`, where `b` is the tile's
/// `[on, r]` slice of `B` and every `vs` row has length `r`. The AVX2 kernel transposes `B` in
/// registers, or for tiles of 8 rows or more (with `r` and `on` multiples of 8) once into the f32
/// scratch `bt` (`[r, on]`); the portable one always through `bt`. Each output sums over `j` in
/// order.
pub(crate) fn expand<T: LoraElement, W: LoraElement>(
    isa: Isa,
    vs: &[&[f32]],
    b: &[W],
    on: usize,
    scale: f32,
    ys: &mut [&mut [T]],
    bt: &mut Vec<f32>,
) {
    match isa {
        // SAFETY: `detected_isa` returned this variant only after checking the CPU features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { x86::expand_avx2(vs, b, on, scale, ys, bt) },
        _ => {
            let r = vs.first().map_or(0, |v| v.len());
            bt.clear();
            bt.resize(r * on, 0.0);
            for (o, brow) in b.chunks_exact(r.max(1)).take(on).enumerate() {
                for (j, x) in brow.iter().enumerate() {
                    bt[j * on + o] = x.to_f32();
                }
            }
            expand_generic::<4, 8, T, Separate>(vs, bt, on, scale, ys)
        }
    }
}

/// `ys[m][o] += scale · Σ_j vs[m][j] · bt[j·stride + o]` for `o < on`, where `bt` is `Bᵀ`
/// starting at the tile's first output, its `r` rows `stride` apart. The AVX2 kernel reads it in
/// place; the portable one copies the tile into the f32 scratch first. Each output sums over `j`
/// in order, as [`expand`] does, so the two layouts give the same bits.
#[allow(clippy::too_many_arguments)]
pub(crate) fn expand_rank_out<T: LoraElement, W: LoraElement>(
    isa: Isa,
    vs: &[&[f32]],
    bt: &[W],
    stride: usize,
    on: usize,
    scale: f32,
    ys: &mut [&mut [T]],
    scratch: &mut Vec<f32>,
) {
    match isa {
        // SAFETY: `detected_isa` returned this variant only after checking the CPU features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe {
            x86::expand_rank_out_avx2(vs, bt, stride, on, scale, ys, scratch)
        },
        _ => {
            let r = vs.first().map_or(0, |v| v.len());
            bt_rows_into(bt, r, stride, on, scratch);
            expand_generic::<4, 8, T, Separate>(vs, scratch, on, scale, ys)
        }
    }
}

/// Copies the first `on` columns of `r` rows of `Bᵀ` (`stride` apart), widened to f32, next to
/// each other into `scratch` (`[r, on]`).
fn bt_rows_into<W: LoraElement>(
    bt: &[W],
    r: usize,
    stride: usize,
    on: usize,
    scratch: &mut Vec<f32>,
) {
    scratch.clear();
    for j in 0..r {
        let row = &bt[j * stride..j * stride + on];
        match W::as_f32_slice(row) {
            Some(f) => scratch.extend_from_slice(f),
            None => scratch.extend(row.iter().map(|w| w.to_f32())),
        }
    }
}
