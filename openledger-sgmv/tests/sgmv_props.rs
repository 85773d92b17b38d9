//! SGMV / BGMV against a naive f64 reference on random layouts, for every dtype.
//!
//! Tolerances (`M` is the magnitude `|y0| + |scale| · Σ_j |B_oj| · Σ_k |x_k A_jk|`, the sum of the
//! absolute values of every term, computed in f64 from the rounded inputs):
//! - f32: `|got − ref| ≤ 1e-5 · M`;
//! - f16 / bf16: the output is rounded once to the storage type, so
//!   `|got − ref| ≤ u · |ref| + 1e-5 · M + tiny`, with `u = 2⁻¹¹` (f16) or `2⁻⁸` (bf16).

use half::{bf16, f16};
use openledger_sgmv::{
    AdapterSlots, BLayout, LoraElement, LoraSlot, Segments, SgmvError, SgmvPlan, bgmv, bgmv_expand,
    bgmv_shrink, padded_b_stride, sgmv, sgmv_expand, sgmv_shrink, transpose_b_strided,
};
use proptest::prelude::*;

mod sgmv_support;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One random problem: dims, slots, and a row layout as runs of `(rows, slot or none)`.
#[derive(Debug, Clone)]
struct Case {
    in_f: usize,
    out_f: usize,
    ranks: Vec<usize>,
    runs: Vec<(usize, Option<usize>)>,
    seed: u64,
}

struct Data<T> {
    x: Vec<T>,
    y0: Vec<T>,
    a: Vec<Vec<T>>,
    b: Vec<Vec<T>>,
    scales: Vec<f32>,
    rows: usize,
    segments: Segments,
    row_slots: Vec<Option<usize>>,
}

fn make<T: LoraElement>(c: &Case) -> Data<T> {
    let mut rng = ChaCha8Rng::seed_from_u64(c.seed);
    let rows: usize = c.runs.iter().map(|r| r.0).sum();
    let val = |n: usize, rng: &mut ChaCha8Rng| -> Vec<T> {
        (0..n)
            .map(|_| T::from_f32(rng.random_range(-1.0f32..1.0)))
            .collect()
    };
    let x = val(rows * c.in_f, &mut rng);
    let y0 = val(rows * c.out_f, &mut rng);
    let a = c.ranks.iter().map(|&r| val(r * c.in_f, &mut rng)).collect();
    let b = c
        .ranks
        .iter()
        .map(|&r| val(r * c.out_f, &mut rng))
        .collect();
    let scales = c
        .ranks
        .iter()
        .map(|_| rng.random_range(-2.0f32..2.0))
        .collect();
    let mut triples = Vec::new();
    let mut row_slots = Vec::new();
    let mut cursor = 0;
    for &(n, slot) in &c.runs {
        if let Some(s) = slot {
            triples.push((cursor, cursor + n, s));
        }
        row_slots.extend(std::iter::repeat_n(slot, n));
        cursor += n;
    }
    triples.shuffle(&mut rng);
    Data {
        x,
        y0,
        a,
        b,
        scales,
        rows,
        segments: Segments::from_triples(&triples),
        row_slots,
    }
}

fn slots_of<'a, T: LoraElement>(c: &Case, d: &'a Data<T>) -> AdapterSlots<'a, T> {
    let slots = (0..c.ranks.len())
        .map(|i| LoraSlot {
            a: &d.a[i],
            b: &d.b[i],
            rank: c.ranks[i],
            scale: d.scales[i],
        })
        .collect();
    AdapterSlots::new(c.in_f, c.out_f, slots).unwrap()
}

/// f64 reference: per row, the intermediate v, the output and the magnitude M.
struct Reference {
    v: Vec<Vec<f64>>,
    y: Vec<f64>,
    mag: Vec<f64>,
}

fn reference<T: LoraElement>(c: &Case, d: &Data<T>) -> Reference {
    let f = |t: T| f64::from(t.to_f32());
    let mut v = vec![Vec::new(); d.rows];
    let mut y: Vec<f64> = d.y0.iter().map(|&t| f(t)).collect();
    let mut mag: Vec<f64> = y.iter().map(|t| t.abs()).collect();
    for row in 0..d.rows {
        let Some(s) = d.row_slots[row] else { continue };
        let r = c.ranks[s];
        let x = &d.x[row * c.in_f..(row + 1) * c.in_f];
        let mut vabs = vec![0f64; r];
        for (j, vabs_j) in vabs.iter_mut().enumerate() {
            let arow = &d.a[s][j * c.in_f..(j + 1) * c.in_f];
            let mut acc = 0.0;
            for (xk, ak) in x.iter().zip(arow) {
                acc += f(*xk) * f(*ak);
                *vabs_j += (f(*xk) * f(*ak)).abs();
            }
            v[row].push(acc);
        }
        let scale = f64::from(d.scales[s]);
        for o in 0..c.out_f {
            let brow = &d.b[s][o * r..(o + 1) * r];
            let mut acc = 0.0;
            let mut m = 0.0;
            for j in 0..r {
                acc += v[row][j] * f(brow[j]);
                m += vabs[j] * f(brow[j]).abs();
            }
            y[row * c.out_f + o] += scale * acc;
            mag[row * c.out_f + o] += scale.abs() * m;
        }
    }
    Reference { v, y, mag }
}

/// Unit roundoff of the output type.
fn unit<T: LoraElement>() -> f64 {
    match T::NAME {
        "f16" => 2f64.powi(-11),
        "bf16" => 2f64.powi(-8),
        _ => 0.0,
    }
}

fn assert_close<T: LoraElement>(what: &str, got: &[T], want: &[f64], mag: &[f64]) {
    for (i, ((g, w), m)) in got.iter().zip(want).zip(mag).enumerate() {
        let g = f64::from(g.to_f32());
        let tol = unit::<T>() * w.abs() + 1e-5 * m + 1e-7;
        assert!(
            (g - w).abs() <= tol,
            "{what} [{}] element {i}: got {g}, want {w}, |diff| {} > tol {tol}",
            T::NAME,
            (g - w).abs()
        );
    }
}

fn check_case<T: LoraElement>(c: &Case) {
    let d = make::<T>(c);
    let slots = slots_of(c, &d);
    let want = reference(c, &d);

    // fused SGMV
    let mut y = d.y0.clone();
    sgmv(&d.x, &slots, &d.segments, &mut y).unwrap();
    assert_close("sgmv", &y, &want.y, &want.mag);

    // fused BGMV
    let mut y = d.y0.clone();
    bgmv(&d.x, &slots, &d.row_slots, &mut y).unwrap();
    assert_close("bgmv", &y, &want.y, &want.mag);

    // separate shrink and expand, checking the packed intermediate
    let plan = SgmvPlan::from_segments(&d.segments, &slots.ranks(), d.rows).unwrap();
    let mut v = vec![f32::NAN; plan.intermediate_len()];
    sgmv_shrink(&d.x, &slots, &d.segments, &mut v).unwrap();
    for row in 0..d.rows {
        match plan.row_intermediate(row) {
            None => assert!(want.v[row].is_empty()),
            Some((off, r)) => {
                assert_eq!(r, want.v[row].len());
                for j in 0..r {
                    let w = want.v[row][j];
                    let g = f64::from(v[off + j]);
                    let m: f64 = {
                        let s = d.row_slots[row].unwrap();
                        let x = &d.x[row * c.in_f..(row + 1) * c.in_f];
                        let a = &d.a[s][j * c.in_f..(j + 1) * c.in_f];
                        x.iter()
                            .zip(a)
                            .map(|(p, q)| (f64::from(p.to_f32()) * f64::from(q.to_f32())).abs())
                            .sum()
                    };
                    assert!(
                        (g - w).abs() <= 1e-5 * m + 1e-12,
                        "v row {row} col {j}: {g} vs {w}"
                    );
                }
            }
        }
    }
    let mut y = d.y0.clone();
    sgmv_expand(&v, &slots, &d.segments, &mut y).unwrap();
    assert_close("sgmv shrink+expand", &y, &want.y, &want.mag);

    let mut vb = vec![0f32; plan.intermediate_len()];
    bgmv_shrink(&d.x, &slots, &d.row_slots, &mut vb).unwrap();
    let mut y = d.y0.clone();
    bgmv_expand(&vb, &slots, &d.row_slots, &mut y).unwrap();
    assert_close("bgmv shrink+expand", &y, &want.y, &want.mag);

    // rows without an adapter are bitwise unchanged
    let mut y = d.y0.clone();
    sgmv(&d.x, &slots, &d.segments, &mut y).unwrap();
    for row in (0..d.rows).filter(|&r| d.row_slots[r].is_none()) {
        let s = row * c.out_f..(row + 1) * c.out_f;
        assert!(
            y[s.clone()]
                .iter()
                .zip(&d.y0[s])
                .all(|(p, q)| p.to_f32().to_bits() == q.to_f32().to_bits()),
            "row {row} without adapter changed"
        );
    }
}

fn case_strategy(max_rows_per_run: usize) -> impl Strategy<Value = Case> {
    (
        1usize..70,
        1usize..70,
        prop::collection::vec(prop_oneof![1usize..20, 1usize..129], 1..5),
        any::<u64>(),
    )
        .prop_flat_map(move |(in_f, out_f, ranks, seed)| {
            let n = ranks.len();
            let run = (
                prop_oneof![Just(0usize), 1usize..3, 0..=max_rows_per_run],
                prop::option::weighted(0.8, 0..n),
            );
            prop::collection::vec(run, 0..8).prop_map(move |runs| Case {
                in_f,
                out_f,
                ranks: ranks.clone(),
                runs,
                seed,
            })
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn sgmv_matches_f64_reference_f32(c in case_strategy(40)) {
        check_case::<f32>(&c);
    }

    #[test]
    fn sgmv_matches_f64_reference_f16(c in case_strategy(40)) {
        check_case::<f16>(&c);
    }

    #[test]
    fn sgmv_matches_f64_reference_bf16(c in case_strategy(40)) {
        check_case::<bf16>(&c);
    }
}

#[test]
fn sgmv_matches_reference_on_thousands_of_rows_in_every_dtype() {
    let c = Case {
        in_f: 37,
        out_f: 29,
        ranks: vec![3, 128, 1, 16],
        runs: vec![
            (1200, Some(1)),
            (7, None),
            (900, Some(0)),
            (1, Some(2)),
            (1500, Some(3)),
            (0, Some(1)),
            (300, None),
            (33, Some(1)),
        ],
        seed: 7,
    };
    check_case::<f32>(&c);
    check_case::<f16>(&c);
    check_case::<bf16>(&c);
}

#[test]
fn sgmv_matches_reference_at_model_width_with_vector_tails() {
    // widths that are not multiples of any vector width (8, 16, 32 lanes)
    let c = Case {
        in_f: 1031,
        out_f: 517,
        ranks: vec![16, 7, 64],
        runs: vec![
            (5, Some(0)),
            (1, None),
            (19, Some(2)),
            (3, Some(1)),
            (6, Some(0)),
        ],
        seed: 11,
    };
    check_case::<f32>(&c);
    check_case::<bf16>(&c);
    check_case::<f16>(&c);
}

fn slots_from<'a, W: LoraElement>(
    c: &Case,
    a: &'a [Vec<W>],
    b: &'a [Vec<W>],
    scales: &[f32],
    layout: BLayout,
) -> AdapterSlots<'a, W> {
    sgmv_support::slots((c.in_f, c.out_f), a, b, &c.ranks, scales, layout)
}

/// Weights narrower than the activations (f32 rows with f16 / bf16 adapters, as a model serving
/// half-precision adapters runs): bitwise the result of the same weights widened to f32, since
/// widening is exact and the arithmetic is the same.
fn check_mixed<W: LoraElement>(c: &Case) {
    let d = make::<f32>(c);
    let narrow = |v: &Vec<f32>| v.iter().map(|&t| W::from_f32(t)).collect::<Vec<W>>();
    let a: Vec<Vec<W>> = d.a.iter().map(narrow).collect();
    let b: Vec<Vec<W>> = d.b.iter().map(narrow).collect();
    let wide = |v: &Vec<W>| v.iter().map(|t| t.to_f32()).collect::<Vec<f32>>();
    let (a32, b32): (Vec<Vec<f32>>, Vec<Vec<f32>>) =
        (a.iter().map(wide).collect(), b.iter().map(wide).collect());
    let narrow_slots = slots_from(c, &a, &b, &d.scales, BLayout::OutRank);
    let wide_slots = slots_from(c, &a32, &b32, &d.scales, BLayout::OutRank);
    let bits = |y: &[f32]| y.iter().map(|v| v.to_bits()).collect::<Vec<_>>();

    let (mut got, mut want) = (d.y0.clone(), d.y0.clone());
    sgmv(&d.x, &narrow_slots, &d.segments, &mut got).unwrap();
    sgmv(&d.x, &wide_slots, &d.segments, &mut want).unwrap();
    assert_eq!(bits(&got), bits(&want), "sgmv, {} weights", W::NAME);

    let (mut got, mut want) = (d.y0.clone(), d.y0.clone());
    bgmv(&d.x, &narrow_slots, &d.row_slots, &mut got).unwrap();
    bgmv(&d.x, &wide_slots, &d.row_slots, &mut want).unwrap();
    assert_eq!(bits(&got), bits(&want), "bgmv, {} weights", W::NAME);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn half_precision_weights_on_f32_rows_equal_their_widened_values(c in case_strategy(40)) {
        check_mixed::<bf16>(&c);
        check_mixed::<f16>(&c);
    }
}

#[test]
fn half_precision_weights_on_f32_rows_at_model_width() {
    let c = Case {
        in_f: 1024,
        out_f: 2816,
        ranks: vec![16, 8],
        runs: vec![(1, Some(0)), (1, None), (12, Some(1)), (40, Some(0))],
        seed: 5,
    };
    check_mixed::<bf16>(&c);
    check_mixed::<f16>(&c);
}

/// `Bᵀ` stored ([`BLayout::RankOut`], and [`BLayout::RankOutStrided`] with the model's padded
/// stride and with an odd one) gives bitwise the results of PEFT's `[out, rank]` layout, for rows
/// and weights of type `X` and `W`. The padding is NaN, so a kernel that read it would show.
fn check_rank_out<X: LoraElement, W: LoraElement>(c: &Case) {
    let d = make::<X>(c);
    let narrow = |v: &Vec<X>| {
        v.iter()
            .map(|t| W::from_f32(t.to_f32()))
            .collect::<Vec<W>>()
    };
    let a: Vec<Vec<W>> = d.a.iter().map(narrow).collect();
    let b: Vec<Vec<W>> = d.b.iter().map(narrow).collect();
    let out_rank = slots_from(c, &a, &b, &d.scales, BLayout::OutRank);
    let bits = |y: &[X]| y.iter().map(|v| v.to_f32().to_bits()).collect::<Vec<_>>();
    let (mut want_s, mut want_b) = (d.y0.clone(), d.y0.clone());
    sgmv(&d.x, &out_rank, &d.segments, &mut want_s).unwrap();
    bgmv(&d.x, &out_rank, &d.row_slots, &mut want_b).unwrap();

    let strides = [c.out_f, padded_b_stride::<W>(c.out_f), c.out_f + 3];
    for (i, stride) in strides.into_iter().enumerate() {
        let nan = W::from_f32(f32::NAN);
        // (at stride = out_f, `transpose_b_strided` is `transpose_b`: no padding)
        let bt: Vec<Vec<W>> = b
            .iter()
            .zip(&c.ranks)
            .map(|(b, &r)| transpose_b_strided(b, c.out_f, r, stride, nan))
            .collect();
        let layout = if i == 0 {
            BLayout::RankOut
        } else {
            BLayout::RankOutStrided { stride }
        };
        let slots = slots_from(c, &a, &bt, &d.scales, layout);
        assert_eq!(slots.b_layout(), layout);
        let mut got = d.y0.clone();
        sgmv(&d.x, &slots, &d.segments, &mut got).unwrap();
        assert_eq!(
            bits(&got),
            bits(&want_s),
            "sgmv [{} x, {} W, {layout:?}]",
            X::NAME,
            W::NAME
        );
        let mut got = d.y0.clone();
        bgmv(&d.x, &slots, &d.row_slots, &mut got).unwrap();
        assert_eq!(
            bits(&got),
            bits(&want_b),
            "bgmv [{} x, {} W, {layout:?}]",
            X::NAME,
            W::NAME
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn transposed_b_gives_the_same_bits(c in case_strategy(40)) {
        check_rank_out::<f32, f32>(&c);
        check_rank_out::<f32, bf16>(&c);
        check_rank_out::<bf16, bf16>(&c);
        check_rank_out::<f16, f16>(&c);
    }
}

#[test]
fn transposed_b_gives_the_same_bits_at_model_width() {
    // power-of-two widths (rows of Bᵀ in the same cache sets), many rows, vector tails
    // (300, 75): a full 8-wide block after the 64- and 16-wide ones, then a 3-wide tail
    for (in_f, out_f) in [(1024, 4096), (1031, 517), (300, 75)] {
        let c = Case {
            in_f,
            out_f,
            ranks: vec![16, 8, 5],
            runs: vec![
                (1, Some(0)),
                (1, None),
                (12, Some(1)),
                (70, Some(0)),
                (4, Some(2)),
                (9, Some(2)),
            ],
            seed: 6,
        };
        check_rank_out::<f32, f32>(&c);
        check_rank_out::<f32, bf16>(&c);
        check_rank_out::<bf16, bf16>(&c);
    }
}

#[test]
fn transposed_b_of_the_wrong_length_is_a_typed_error_naming_b() {
    let slot = |a: &[f32], bt: &[f32], layout| {
        AdapterSlots::with_b_layout(
            10,
            7,
            vec![LoraSlot {
                a,
                b: bt,
                rank: 4,
                scale: 1.0,
            }],
            layout,
        )
        .map(|_| ())
        .unwrap_err()
    };
    let a = vec![0f32; 4 * 10];
    for (len, layout, want) in [
        (4 * 7 - 1, BLayout::RankOut, "[4, 7]"),
        // a strided Bᵀ holds whole rows, the last one's padding included
        (3 * 9 + 7, BLayout::RankOutStrided { stride: 9 }, "[4, 9]"),
    ] {
        match slot(&a, &vec![0f32; len], layout) {
            SgmvError::SlotShape { matrix, shape, .. } => {
                assert_eq!(matrix, "B");
                assert_eq!(shape, want);
            }
            other => panic!("unexpected error {other:?}"),
        }
    }
    // a stride shorter than a row of outputs
    match slot(&a, &[0f32; 4 * 6], BLayout::RankOutStrided { stride: 6 }) {
        SgmvError::BadStride {
            stride,
            out_features,
        } => assert_eq!((stride, out_features), (6, 7)),
        other => panic!("unexpected error {other:?}"),
    }
}

/// The vector kernels round each f16 / bf16 output exactly as `T::from_f32` does: ties to even,
/// overflow to infinity, NaN kept NaN (quiet), signed zeros and subnormals. Rank 1 with
/// `A = e₀`, `x[0] = 1` and `scale = 1` makes every sum exact, so the expected output is
/// `from_f32(y0 + d)` for the chosen f32 values `d` in `B`.
fn check_output_rounding<X: LoraElement>() {
    let specials = [
        1.0 + 2f32.powi(-8),       // bf16 tie, rounds down to even
        1.0 + 3.0 * 2f32.powi(-8), // bf16 tie, rounds up to even
        1.0 + 2f32.powi(-11),      // f16 tie
        1.0 + 3.0 * 2f32.powi(-11),
        1.0 + 2f32.powi(-9) + 2f32.powi(-20),
        f32::MAX,
        -f32::MAX,
        65520.0, // f16 overflow to infinity
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::from_bits(0x7f80_0001), // signalling NaN with a low payload bit
        f32::from_bits(0x7fff_ffff), // NaN whose rounding would carry into the sign bit
        f32::from_bits(0xffbf_ffff),
        f32::NAN,
        -0.0,
        1e-40,  // f32 subnormal
        -3e-39, // f32 subnormal
        6e-8,   // f16 subnormal
        1e-30,
    ];
    let (in_f, out_f) = (8, 75); // 64- and 8-wide blocks, then a 3-wide tail
    let d: Vec<f32> = (0..out_f).map(|o| specials[o % specials.len()]).collect();
    let mut a = vec![0f32; in_f];
    a[0] = 1.0;
    for rows in [1, 4, 9] {
        let mut x = vec![X::from_f32(0.25); rows * in_f];
        for r in 0..rows {
            x[r * in_f] = X::from_f32(1.0);
        }
        let y0: Vec<X> = (0..rows * out_f)
            .map(|i| X::from_f32(if i % 3 == 0 { 0.0 } else { -0.5 }))
            .collect();
        let want: Vec<u32> = y0
            .iter()
            .enumerate()
            .map(|(i, y)| X::from_f32(y.to_f32() + d[i % out_f]).to_f32().to_bits())
            .collect();
        let stride = padded_b_stride::<f32>(out_f);
        let bt = transpose_b_strided(&d, out_f, 1, stride, f32::NAN);
        for (b, layout) in [
            (&d, BLayout::OutRank),
            (&bt, BLayout::RankOutStrided { stride }),
        ] {
            let slot = LoraSlot {
                a: &a[..],
                b: &b[..],
                rank: 1,
                scale: 1.0,
            };
            let slots = AdapterSlots::with_b_layout(in_f, out_f, vec![slot], layout).unwrap();
            let mut y = y0.clone();
            sgmv(&x, &slots, &Segments::from_triples(&[(0, rows, 0)]), &mut y).unwrap();
            let got: Vec<u32> = y.iter().map(|v| v.to_f32().to_bits()).collect();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g,
                    w,
                    "[{}] {rows} rows, {layout:?}: output {i} (d = {:e})",
                    X::NAME,
                    d[i % out_f]
                );
            }
        }
    }
}

#[test]
fn half_precision_outputs_round_like_from_f32() {
    check_output_rounding::<bf16>();
    check_output_rounding::<f16>();
    check_output_rounding::<f32>();
}
