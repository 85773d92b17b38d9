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

use super::element::LoraElement;
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
/// testing and comparison).
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

    /// Loads 8 floats from `s[k..k + 8]`.
    ///
    /// # Safety
    /// `k + 8 <= s.len()` and the CPU supports AVX.
    #[inline(always)]
    unsafe fn load8(s: &[f32], k: usize) -> __m256 {
        debug_assert!(k + 8 <= s.len());
        // SAFETY: in bounds by the caller's contract; unaligned load.
        unsafe { _mm256_loadu_ps(s.as_ptr().add(k)) }
    }

    #[inline(always)]
    fn lanes(v: __m256) -> [f32; 8] {
        // SAFETY: __m256 and [f32; 8] have the same size and any bit pattern is valid.
        unsafe { std::mem::transmute::<__m256, [f32; 8]>(v) }
    }

    /// `MR × NR` dot products over `d`.
    ///
    /// # Safety
    /// AVX2 and FMA available; every `xs[m]` and `a[n]` has at least `d` elements.
    #[inline(always)]
    unsafe fn shrink_tile<const MR: usize, const NR: usize>(
        xs: &[&[f32]],
        a: &[&[f32]],
        d: usize,
    ) -> [[f32; NR]; MR] {
        let full = d - d % 8;
        // SAFETY: the caller guarantees AVX2 + FMA; loads stay below `full <= d`.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); NR]; MR];
            let mut k = 0;
            while k < full {
                let mut av = [_mm256_setzero_ps(); NR];
                for n in 0..NR {
                    av[n] = load8(a[n], k);
                }
                for m in 0..MR {
                    let xv = load8(xs[m], k);
                    for n in 0..NR {
                        acc[m][n] = _mm256_fmadd_ps(xv, av[n], acc[m][n]);
                    }
                }
                k += 8;
            }
            let mut out = [[0f32; NR]; MR];
            for m in 0..MR {
                for n in 0..NR {
                    let mut s = fold(lanes(acc[m][n]));
                    for k in full..d {
                        s = xs[m][k].mul_add(a[n][k], s);
                    }
                    out[m][n] = s;
                }
            }
            out
        }
    }

    #[inline(always)]
    unsafe fn shrink_rows<const MR: usize>(
        xs: &[&[f32]],
        a: &[&[f32]],
        out: &mut [&mut [f32]],
        d: usize,
    ) {
        let mut n = 0;
        while n + 2 <= a.len() {
            // SAFETY: forwarded contract.
            let t = unsafe { shrink_tile::<MR, 2>(xs, &a[n..n + 2], d) };
            for (m, o) in out.iter_mut().enumerate().take(MR) {
                o[n..n + 2].copy_from_slice(&t[m]);
            }
            n += 2;
        }
        if n < a.len() {
            // SAFETY: forwarded contract.
            let t = unsafe { shrink_tile::<MR, 1>(xs, &a[n..n + 1], d) };
            for (m, o) in out.iter_mut().enumerate().take(MR) {
                o[n] = t[m][0];
            }
        }
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA (checked by [`super::detected_isa`]); rows as in
    /// [`super::shrink`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn shrink_avx2(
        xs: &[&[f32]],
        a: &[&[f32]],
        out: &mut [&mut [f32]],
        d: usize,
    ) {
        for x in xs.iter().chain(a) {
            assert!(x.len() >= d, "row shorter than the dimension");
        }
        let mut m = 0;
        while m + 4 <= xs.len() {
            // SAFETY: features enabled here; lengths asserted above.
            unsafe { shrink_rows::<4>(&xs[m..m + 4], a, &mut out[m..m + 4], d) };
            m += 4;
        }
        while m < xs.len() {
            // SAFETY: as above.
            unsafe { shrink_rows::<1>(&xs[m..m + 1], a, &mut out[m..m + 1], d) };
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
                let u = _mm256_castps_si256(v);
                let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(u), _mm256_set1_epi32(1));
                let bias = _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb);
                let rounded = _mm256_srli_epi32::<16>(_mm256_add_epi32(u, bias));
                let abs = _mm256_and_si256(u, _mm256_set1_epi32(0x7fff_ffff));
                let nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f80_0000));
                let quiet = _mm256_or_si256(_mm256_srli_epi32::<16>(u), _mm256_set1_epi32(0x40));
                let r = _mm256_blendv_epi8(rounded, quiet, nan);
                let packed = _mm256_packus_epi32(r, r);
                _mm256_castsi256_si128(_mm256_permute4x64_epi64::<0b1000>(packed))
            } else {
                _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v)
            };
            _mm_storeu_si128(p.cast::<__m128i>(), h);
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
        for o in full..on {
            for m in 0..MR {
                let mut s = 0f32;
                for j in 0..r {
                    s = vs[m][j].mul_add(b[o * r + j].to_f32(), s);
                }
                let y = &mut ys[m][o];
                *y = T::from_f32(y.to_f32() + scale * s);
            }
        }
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
    ) {
        let r = vs[0].len();
        let mut bt = vec![0f32; r * on];
        // SAFETY: every block read lies in `b[..on * r]` and every write in `bt`.
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
        // SAFETY: AVX available per the caller's contract.
        let sv = unsafe { _mm256_set1_ps(scale) };
        let mut m = 0;
        while m < vs.len() {
            let mr = (vs.len() - m).min(4);
            let mut o = 0;
            while o < on {
                let w = if on - o >= 16 { 2 } else { 1 };
                // SAFETY: o + 8·w <= on; bt has r rows of on; rows m..m + mr exist.
                unsafe {
                    let mut acc = [[_mm256_setzero_ps(); 2]; 4];
                    for j in 0..r {
                        let row = bt.as_ptr().add(j * on + o);
                        let b0 = _mm256_loadu_ps(row);
                        let b1 = if w == 2 {
                            _mm256_loadu_ps(row.add(8))
                        } else {
                            b0
                        };
                        for (mm, acc_m) in acc.iter_mut().enumerate().take(mr) {
                            let vj = _mm256_set1_ps(*vs[m + mm].get_unchecked(j));
                            acc_m[0] = _mm256_fmadd_ps(vj, b0, acc_m[0]);
                            acc_m[1] = _mm256_fmadd_ps(vj, b1, acc_m[1]);
                        }
                    }
                    for (mm, acc_m) in acc.iter().enumerate().take(mr) {
                        for (h, a) in acc_m.iter().enumerate().take(w) {
                            let p = ys[m + mm][o + 8 * h..o + 8 * h + 8].as_mut_ptr();
                            let sum = _mm256_add_ps(load8_t(p.cast_const()), _mm256_mul_ps(sv, *a));
                            store8_t(p, sum);
                        }
                    }
                }
                o += 8 * w;
            }
            m += mr;
        }
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
    ) {
        let r = vs.first().map_or(0, |v| v.len());
        assert!(b.len() >= r * on, "B tile smaller than on × r");
        for (v, y) in vs.iter().zip(ys.iter()) {
            assert!(v.len() == r && y.len() >= on, "row shapes");
        }
        if vs.len() >= 8 && r.is_multiple_of(8) && on.is_multiple_of(8) {
            // SAFETY: features enabled here; shapes asserted above.
            unsafe { expand_transposed(vs, b, on, scale, ys) };
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

/// `out[m][n] = Σ_k xs[m][k] · a[n][k]` over `k < d`. Every `xs` and `a` row holds at least `d`
/// elements and every `out` row at least `a.len()`.
pub(crate) fn shrink(isa: Isa, xs: &[&[f32]], a: &[&[f32]], out: &mut [&mut [f32]], d: usize) {
    match isa {
        // SAFETY: `detected_isa` returned this variant only after checking the CPU features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { x86::shrink_avx2(xs, a, out, d) },
        _ => shrink_generic::<4, 2, 8, Separate>(xs, a, out, d),
    }
}

/// `ys[m][o] += scale · Σ_j vs[m][j] · b[o·r + j]` for `o < on`, where `b` is the tile's
/// `[on, r]` slice of `B` and every `vs` row has length `r`. The AVX2 kernel transposes `B` in
/// registers; the portable one through an f32 scratch copy. Each output sums over `j` in order.
pub(crate) fn expand<T: LoraElement, W: LoraElement>(
    isa: Isa,
    vs: &[&[f32]],
    b: &[W],
    on: usize,
    scale: f32,
    ys: &mut [&mut [T]],
) {
    match isa {
        // SAFETY: `detected_isa` returned this variant only after checking the CPU features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { x86::expand_avx2(vs, b, on, scale, ys) },
        _ => {
            let r = vs.first().map_or(0, |v| v.len());
            let mut bt = vec![0f32; r * on];
            for (o, brow) in b.chunks_exact(r).take(on).enumerate() {
                for (j, x) in brow.iter().enumerate() {
                    bt[j * on + o] = x.to_f32();
                }
            }
            expand_generic::<4, 8, T, Separate>(vs, &bt, on, scale, ys)
        }
    }
}
