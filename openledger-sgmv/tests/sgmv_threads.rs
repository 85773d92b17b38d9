//! The CPU operators give bitwise identical results on thread pools of 1, 2 and 7 threads: the
//! work is cut into tiles by shape only and each output element has one fixed summation order.

use half::{bf16, f16};
use openledger_sgmv::{
    AdapterSlots, BLayout, LoraElement, LoraSlot, Segments, bgmv, padded_b_stride, sgmv,
    transpose_b, transpose_b_strided,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod sgmv_support;

fn random<T: LoraElement>(n: usize, rng: &mut ChaCha8Rng) -> Vec<T> {
    (0..n)
        .map(|_| T::from_f32(rng.random_range(-1.0f32..1.0)))
        .collect()
}

fn bits<T: LoraElement>(v: &[T]) -> Vec<u32> {
    v.iter().map(|t| t.to_f32().to_bits()).collect()
}

fn run_on_pools<T: LoraElement>() {
    let (in_f, out_f, rows) = (1000, 777, 41);
    let ranks = [16usize, 5, 64];
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let x = random::<T>(rows * in_f, &mut rng);
    let y0 = random::<T>(rows * out_f, &mut rng);
    let a: Vec<Vec<T>> = ranks.iter().map(|&r| random(r * in_f, &mut rng)).collect();
    let b: Vec<Vec<T>> = ranks.iter().map(|&r| random(r * out_f, &mut rng)).collect();
    let scales: Vec<f32> = (0..ranks.len()).map(|i| 0.75 + i as f32).collect();
    let slots = sgmv_support::slots((in_f, out_f), &a, &b, &ranks, &scales, BLayout::OutRank);
    let bt: Vec<Vec<T>> = ranks
        .iter()
        .zip(&b)
        .map(|(&r, b)| transpose_b(b, out_f, r))
        .collect();
    let rank_out = sgmv_support::slots((in_f, out_f), &a, &bt, &ranks, &scales, BLayout::RankOut);
    // the model's layout: rows padded (with NaN, which must never be read)
    let stride = padded_b_stride::<T>(out_f);
    let bp: Vec<Vec<T>> = ranks
        .iter()
        .zip(&b)
        .map(|(&r, b)| transpose_b_strided(b, out_f, r, stride, T::from_f32(f32::NAN)))
        .collect();
    let strided = BLayout::RankOutStrided { stride };
    let padded = sgmv_support::slots((in_f, out_f), &a, &bp, &ranks, &scales, strided);
    let segs = Segments::from_triples(&[(0, 1, 1), (3, 25, 0), (25, 26, 2), (30, 41, 2)]);
    let indices: Vec<Option<usize>> = (0..rows).map(|i| (i % 4 != 3).then_some(i % 3)).collect();

    let mut results = Vec::new();
    for threads in [1, 2, 7] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let (ys, yb, yt, yp) = pool.install(|| {
            let mut ys = y0.clone();
            sgmv(&x, &slots, &segs, &mut ys).unwrap();
            let mut yb = y0.clone();
            bgmv(&x, &slots, &indices, &mut yb).unwrap();
            let mut yt = y0.clone();
            sgmv(&x, &rank_out, &segs, &mut yt).unwrap();
            let mut yp = y0.clone();
            sgmv(&x, &padded, &segs, &mut yp).unwrap();
            (ys, yb, yt, yp)
        });
        assert!(
            bits(&yt) == bits(&ys),
            "sgmv [{}] with Bᵀ differs from B on {threads} threads",
            T::NAME
        );
        assert!(
            bits(&yp) == bits(&ys),
            "sgmv [{}] with padded Bᵀ differs from B on {threads} threads",
            T::NAME
        );
        results.push((threads, bits(&ys), bits(&yb)));
    }
    assert_ne!(results[0].1, bits(&y0), "the update must change y");
    for (threads, ys, yb) in &results[1..] {
        assert!(
            *ys == results[0].1,
            "sgmv [{}] differs between 1 and {threads} threads",
            T::NAME
        );
        assert!(
            *yb == results[0].2,
            "bgmv [{}] differs between 1 and {threads} threads",
            T::NAME
        );
    }
}

#[test]
fn sgmv_results_are_bitwise_identical_on_1_2_and_7_threads_f32() {
    run_on_pools::<f32>();
}

#[test]
fn sgmv_results_are_bitwise_identical_on_1_2_and_7_threads_f16() {
    run_on_pools::<f16>();
}

#[test]
fn sgmv_results_are_bitwise_identical_on_1_2_and_7_threads_bf16() {
    run_on_pools::<bf16>();
}

/// A row computed alone equals, bitwise, the same row inside a batch of `rows` rows of one
/// adapter (different register tiles, tile widths and the parallel or sequential path).
fn row_alone_equals_row_in_batch<T: LoraElement>(rows: usize) {
    let (in_f, out_f) = (300, 200);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let x = random::<T>(rows * in_f, &mut rng);
    let y0 = random::<T>(rows * out_f, &mut rng);
    let a = random::<T>(16 * in_f, &mut rng);
    let b = random::<T>(out_f * 16, &mut rng);
    let slots = AdapterSlots::new(
        in_f,
        out_f,
        vec![LoraSlot {
            a: &a,
            b: &b,
            rank: 16,
            scale: 1.5,
        }],
    )
    .unwrap();
    let mut batch = y0.clone();
    sgmv(
        &x,
        &slots,
        &Segments::from_triples(&[(0, rows, 0)]),
        &mut batch,
    )
    .unwrap();
    for row in 0..rows {
        let mut alone = y0[row * out_f..(row + 1) * out_f].to_vec();
        let xr = &x[row * in_f..(row + 1) * in_f];
        sgmv(
            xr,
            &slots,
            &Segments::from_triples(&[(0, 1, 0)]),
            &mut alone,
        )
        .unwrap();
        assert_eq!(
            bits(&alone),
            bits(&batch[row * out_f..(row + 1) * out_f]),
            "[{}] row {row} of {rows}",
            T::NAME
        );
    }
}

#[test]
fn sgmv_row_result_does_not_depend_on_the_rest_of_the_batch() {
    for rows in [3, 9, 37, 300] {
        row_alone_equals_row_in_batch::<f32>(rows);
        row_alone_equals_row_in_batch::<bf16>(rows);
        row_alone_equals_row_in_batch::<f16>(rows);
    }
}
