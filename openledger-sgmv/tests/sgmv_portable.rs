//! The portable kernels (what a CPU without AVX2 + FMA runs) against an f64 reference, in their
//! own test binary: `OPENLEDGER_SGMV_ISA=portable` is set before the first operator call, which
//! fixes the kernel choice for the process.

use half::{bf16, f16};
use openledger_sgmv::{
    BLayout, Isa, LoraElement, Segments, bgmv, detected_isa, padded_b_stride, sgmv, transpose_b,
    transpose_b_strided,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod sgmv_support;

fn check<T: LoraElement>(u: f64) {
    // enough rows that shrink and expand both run on the pool (above the sequential threshold)
    let (inp, out, rows) = (203, 97, 160);
    let ranks = [16usize, 3, 40];
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let mut rand = |n: usize| -> Vec<T> {
        (0..n)
            .map(|_| T::from_f32(rng.random_range(-1.0f32..1.0)))
            .collect()
    };
    let x = rand(rows * inp);
    let y0 = rand(rows * out);
    let a: Vec<Vec<T>> = ranks.iter().map(|&r| rand(r * inp)).collect();
    let b: Vec<Vec<T>> = ranks.iter().map(|&r| rand(out * r)).collect();
    let scales: Vec<f32> = (0..3).map(|i| 0.5 + i as f32).collect();
    let slots = sgmv_support::slots((inp, out), &a, &b, &ranks, &scales, BLayout::OutRank);
    let row_slots: Vec<Option<usize>> = (0..rows).map(|i| (i % 7 != 6).then_some(i % 3)).collect();
    let f = |t: T| f64::from(t.to_f32());
    let mut want = vec![0f64; rows * out];
    let mut mag = vec![0f64; rows * out];
    for row in 0..rows {
        for o in 0..out {
            let i = row * out + o;
            want[i] = f(y0[i]);
            mag[i] = f(y0[i]).abs();
            let Some(s) = row_slots[row] else { continue };
            let r = ranks[s];
            for j in 0..r {
                let (mut vj, mut vabs) = (0.0, 0.0);
                for k in 0..inp {
                    let p = f(x[row * inp + k]) * f(a[s][j * inp + k]);
                    vj += p;
                    vabs += p.abs();
                }
                let scale = 0.5 + s as f64;
                want[i] += scale * vj * f(b[s][o * r + j]);
                mag[i] += scale * vabs * f(b[s][o * r + j]).abs();
            }
        }
    }
    let mut ys = y0.clone();
    sgmv(&x, &slots, &Segments::from_row_slots(&row_slots), &mut ys).unwrap();
    let mut yb = y0.clone();
    bgmv(&x, &slots, &row_slots, &mut yb).unwrap();
    for (name, got) in [("sgmv", &ys), ("bgmv", &yb)] {
        for i in 0..rows * out {
            let g = f(got[i]);
            let tol = u * want[i].abs() + 1e-5 * mag[i] + 1e-7;
            assert!(
                (g - want[i]).abs() <= tol,
                "{name} [{}] {i}: {g} vs {}",
                T::NAME,
                want[i]
            );
        }
    }
    // Bᵀ stored ([`BLayout::RankOut`]): the same bits.
    let bts: Vec<Vec<T>> = (0..3).map(|i| transpose_b(&b[i], out, ranks[i])).collect();
    let rank_out = sgmv_support::slots((inp, out), &a, &bts, &ranks, &scales, BLayout::RankOut);
    let mut yt = y0.clone();
    sgmv(
        &x,
        &rank_out,
        &Segments::from_row_slots(&row_slots),
        &mut yt,
    )
    .unwrap();
    let bits = |v: &[T]| v.iter().map(|t| t.to_f32().to_bits()).collect::<Vec<u32>>();
    assert_eq!(bits(&yt), bits(&ys), "[{}] RankOut vs OutRank", T::NAME);
    // and padded (NaN padding, never read): the same bits again
    let stride = padded_b_stride::<T>(out);
    let nan = T::from_f32(f32::NAN);
    let bps: Vec<Vec<T>> = (0..3)
        .map(|i| transpose_b_strided(&b[i], out, ranks[i], stride, nan))
        .collect();
    let strided = BLayout::RankOutStrided { stride };
    let padded = sgmv_support::slots((inp, out), &a, &bps, &ranks, &scales, strided);
    let mut yp = y0.clone();
    let segs = Segments::from_row_slots(&row_slots);
    sgmv(&x, &padded, &segs, &mut yp).unwrap();
    assert_eq!(
        bits(&yp),
        bits(&ys),
        "[{}] RankOutStrided vs OutRank",
        T::NAME
    );
    let mut pooled = Vec::new();
    for threads in [1, 2, 7] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut y = y0.clone();
        pool.install(|| sgmv(&x, &slots, &Segments::from_row_slots(&row_slots), &mut y).unwrap());
        pooled.push(y.iter().map(|v| v.to_f32().to_bits()).collect::<Vec<u32>>());
    }
    assert!(
        pooled[0] == pooled[1] && pooled[0] == pooled[2],
        "thread count changed bits"
    );
}

#[test]
fn sgmv_portable_kernels_match_the_f64_reference_on_any_thread_count() {
    // SAFETY: the only test of this binary; no other thread reads the environment yet.
    unsafe { std::env::set_var("OPENLEDGER_SGMV_ISA", "portable") };
    assert_eq!(detected_isa(), Isa::Portable);
    check::<f32>(0.0);
    check::<f16>(2f64.powi(-11));
    check::<bf16>(2f64.powi(-8));
}
