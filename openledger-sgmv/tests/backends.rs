//! One test body on every backend present (candle's `test_device!` habit): the CPU backend
//! always, the CUDA backend where the crate has the `cuda` feature and a device opens (set
//! `OPENLEDGER_REQUIRE_GPU=1` on a GPU machine to make a missing device a failure). Each backend
//! runs the same plans — segments with gaps and empty ones, one row, thousands of rows, one slot
//! per row (BGMV) — with ranks from 1 to 128 and widths that are not multiples of any vector
//! width, in f32, f16 and bf16, `B` as PEFT stores it and transposed in padded rows, outputs
//! dense and inside the rows of a wider (fused) output, against an f64 reference of the same
//! inputs.
//!
//! Tolerance against the reference, `rel·|y| + abs`: f32 (1e-5, 1e-4): f32 sums of up to 4,099
//! products in different orders; f16 (2⁻¹⁰, 1e-3) and bf16 (2⁻⁷, 1e-2): two roundings of the
//! output's step (the backend's and the reference's own comparison), the sums' error far
//! below. Where two backends ran, each is also held to the other within the same bounds.

use half::{bf16, f16};
use openledger_sgmv::{
    AdapterSlots, BLayout, CudaSgmv, GpuElement, LoraElement, LoraSlot, OutputWindow, Segments,
    SgmvError, SgmvPlan, padded_b_stride, transpose_b_strided,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

enum Backend {
    Cpu,
    Cuda(Box<CudaSgmv>),
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda(_) => "cuda",
        }
    }

    /// `y += Σ scale · (x · Aᵀ) · Bᵀ` as `plan` lays it out, into `window`'s columns of `y`;
    /// `per_row` runs the BGMV kernels on the GPU (one slot per row), the SGMV ones otherwise.
    fn apply<T: GpuElement>(
        &self,
        plan: &SgmvPlan,
        x: &[T],
        slots: &AdapterSlots<'_, T>,
        y: &mut [T],
        window: OutputWindow,
        per_row: bool,
    ) -> Result<(), SgmvError> {
        match self {
            Backend::Cpu => openledger_sgmv::apply_with_plan_into(plan, x, slots, y, window),
            Backend::Cuda(gpu) => {
                let s = gpu.upload_slots(slots)?;
                let xg = gpu.upload(x)?;
                let mut yg = gpu.upload(y)?;
                let mut v = gpu.zeros::<f32>(plan.intermediate_len())?;
                if per_row {
                    gpu.bgmv_shrink(plan, &s, &xg, &mut v)?;
                    gpu.bgmv_expand(plan, &s, &v, &mut yg, window)?;
                } else {
                    gpu.sgmv_shrink(plan, &s, &xg, &mut v)?;
                    gpu.sgmv_expand(plan, &s, &v, &mut yg, window)?;
                }
                y.copy_from_slice(&gpu.download(&yg)?);
                Ok(())
            }
        }
    }
}

/// Every backend present: the CPU, and device 0 where it opens.
fn backends() -> Vec<Backend> {
    let mut out = vec![Backend::Cpu];
    match CudaSgmv::new(0) {
        Ok(gpu) => out.push(Backend::Cuda(Box::new(gpu))),
        Err(e) => {
            if std::env::var("OPENLEDGER_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("no GPU: {e}");
            }
            // Without the feature or a device the refusal is typed.
            assert!(
                matches!(
                    e,
                    SgmvError::NotCompiledWithCuda
                        | SgmvError::NoCudaDriver { .. }
                        | SgmvError::NoDevice { .. }
                        | SgmvError::Kernel(_)
                ),
                "{e}"
            );
            eprintln!("CUDA backend not run: {e}");
        }
    }
    out
}

fn tol<T: LoraElement>(want: f64) -> f64 {
    let (rel, abs) = match T::NAME {
        "f16" => (2f64.powi(-10), 1e-3),
        "bf16" => (2f64.powi(-7), 1e-2),
        _ => (1e-5, 1e-4),
    };
    rel * want.abs() + abs
}

/// One case: a layer `d → out`, slots of `ranks`, `rows` rows laid out by `plan_of`.
struct Case {
    name: &'static str,
    d: usize,
    out: usize,
    rows: usize,
    ranks: Vec<usize>,
    /// The segments (SGMV), or `None` for one random slot (or none) per row (BGMV).
    segments: Option<Vec<(usize, usize, usize)>>,
    /// Columns of `y` before and after the layer's outputs (a fused output), or none.
    fused: (usize, usize),
    /// `B` transposed into padded rows ([`BLayout::RankOutStrided`]) instead of PEFT's layout.
    b_transposed: bool,
}

fn run<T: GpuElement>(case: &Case, backends: &[Backend], seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut rand = |n: usize| -> Vec<T> {
        (0..n)
            .map(|_| T::from_f32(rng.random_range(-0.5f32..0.5)))
            .collect()
    };
    let (d, out, rows) = (case.d, case.out, case.rows);
    let window = OutputWindow {
        row_stride: case.fused.0 + out + case.fused.1,
        col_offset: case.fused.0,
    };
    let ld = window.row_stride;
    let x = rand(rows * d);
    let y0 = rand(rows * ld);
    let a: Vec<Vec<T>> = case.ranks.iter().map(|&r| rand(r * d)).collect();
    let b: Vec<Vec<T>> = case.ranks.iter().map(|&r| rand(out * r)).collect();
    let stride = padded_b_stride::<T>(out);
    let bt: Vec<Vec<T>> = b
        .iter()
        .zip(&case.ranks)
        .map(|(b, &r)| transpose_b_strided(b, out, r, stride, T::from_f32(f32::NAN)))
        .collect();
    let scales: Vec<f32> = (0..case.ranks.len())
        .map(|i| 0.25 * (i + 1) as f32)
        .collect();
    let layout = if case.b_transposed {
        BLayout::RankOutStrided { stride }
    } else {
        BLayout::OutRank
    };
    let slots = AdapterSlots::with_b_layout(
        d,
        out,
        (0..case.ranks.len())
            .map(|i| LoraSlot {
                a: &a[i],
                b: if case.b_transposed { &bt[i] } else { &b[i] },
                rank: case.ranks[i],
                scale: scales[i],
            })
            .collect(),
        layout,
    )
    .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let (plan, per_row) = match &case.segments {
        Some(t) => (
            SgmvPlan::from_segments(&Segments::from_triples(t), &slots.ranks(), rows).unwrap(),
            false,
        ),
        None => {
            let n = case.ranks.len();
            let idx: Vec<Option<usize>> = (0..rows)
                .map(|_| rng.random_bool(0.8).then(|| rng.random_range(0..n)))
                .collect();
            (
                SgmvPlan::from_row_slots(&idx, &slots.ranks()).unwrap(),
                true,
            )
        }
    };
    // The f64 reference from the same (rounded) inputs.
    let f = |v: &T| f64::from(v.to_f32());
    let row_slots = plan.row_slots();
    let mut want: Vec<f64> = y0.iter().map(f).collect();
    for (r, slot) in row_slots.iter().enumerate() {
        let Some(s) = *slot else { continue };
        let rank = case.ranks[s];
        let v: Vec<f64> = (0..rank)
            .map(|j| (0..d).map(|k| f(&x[r * d + k]) * f(&a[s][j * d + k])).sum())
            .collect();
        for o in 0..out {
            let add: f64 = (0..rank).map(|j| v[j] * f(&b[s][o * rank + j])).sum();
            want[r * ld + window.col_offset + o] += f64::from(scales[s]) * add;
        }
    }
    let in_window = |i: usize| (window.col_offset..window.col_offset + out).contains(&(i % ld));
    let mut results: Vec<(&str, Vec<T>)> = Vec::new();
    for backend in backends {
        let mut y = y0.clone();
        backend
            .apply(&plan, &x, &slots, &mut y, window, per_row)
            .unwrap_or_else(|e| panic!("{} {} {}: {e}", backend.name(), case.name, T::NAME));
        for (i, (g, w)) in y.iter().zip(&want).enumerate() {
            let g = f(g);
            assert!(
                (g - w).abs() <= tol::<T>(*w),
                "{} {} [{}] element {i}: {g} vs the reference's {w}",
                backend.name(),
                case.name,
                T::NAME
            );
        }
        // Columns outside the window are left as they were, bit for bit.
        for (i, (got, was)) in y.iter().zip(&y0).enumerate() {
            assert!(
                in_window(i) || got.to_f32().to_bits() == was.to_f32().to_bits(),
                "{} {}: element {i} is outside the window but changed",
                backend.name(),
                case.name
            );
        }
        // Rows without an adapter are left as they were, bit for bit.
        for (r, slot) in row_slots.iter().enumerate() {
            if slot.is_none() {
                let (got, was) = (&y[r * ld..(r + 1) * ld], &y0[r * ld..(r + 1) * ld]);
                assert!(
                    got.iter()
                        .zip(was)
                        .all(|(p, q)| p.to_f32().to_bits() == q.to_f32().to_bits()),
                    "{} {}: row {r} has no adapter but changed",
                    backend.name(),
                    case.name
                );
            }
        }
        results.push((backend.name(), y));
    }
    if let [(na, ya), (nb, yb)] = &results[..] {
        for (i, (p, q)) in ya.iter().zip(yb).enumerate() {
            let (p, q) = (f(p), f(q));
            assert!(
                (p - q).abs() <= tol::<T>(q),
                "{na} vs {nb} {} [{}] element {i}: {p} vs {q}",
                case.name,
                T::NAME
            );
        }
    }
}

fn cases() -> Vec<Case> {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // Thousands of rows in random segments over eight slots, with gaps and empty segments.
    let rows = 2500;
    let mut triples = Vec::new();
    let mut at = 0;
    while at < rows {
        let len = rng.random_range(0..60usize).min(rows - at);
        if rng.random_bool(0.85) {
            triples.push((at, at + len, rng.random_range(0..8)));
        }
        at += len + usize::from(rng.random_bool(0.3));
    }
    triples.push((rows, rows, 3));
    vec![
        Case {
            name: "segments with gaps and an empty one",
            d: 4099,
            out: 1001,
            rows: 37,
            ranks: vec![1, 7, 16, 64, 128],
            segments: Some(vec![
                (0, 10, 4),
                (10, 10, 0),
                (12, 13, 0),
                (13, 30, 2),
                (31, 37, 3),
            ]),
            fused: (0, 0),
            b_transposed: false,
        },
        Case {
            name: "one row",
            d: 257,
            out: 129,
            rows: 1,
            ranks: vec![3, 16],
            segments: Some(vec![(0, 1, 1)]),
            fused: (3, 5),
            b_transposed: true,
        },
        Case {
            name: "thousands of rows",
            d: 97,
            out: 83,
            rows,
            ranks: vec![1, 2, 4, 8, 16, 32, 64, 128],
            segments: Some(triples.clone()),
            fused: (0, 0),
            b_transposed: false,
        },
        Case {
            name: "k's outputs inside a fused q|k|v row, B transposed",
            d: 96,
            out: 40,
            rows,
            ranks: vec![1, 2, 4, 8, 16, 32, 64, 128],
            segments: Some(triples),
            fused: (64, 40),
            b_transposed: true,
        },
        Case {
            name: "one slot per row (BGMV)",
            d: 1031,
            out: 515,
            rows: 29,
            ranks: vec![5, 16, 33],
            segments: None,
            fused: (0, 0),
            b_transposed: false,
        },
        Case {
            name: "one slot per row (BGMV) into a fused row",
            d: 64,
            out: 24,
            rows: 300,
            ranks: vec![16, 8, 1],
            segments: None,
            fused: (8, 0),
            b_transposed: true,
        },
    ]
}

#[test]
fn every_backend_equals_the_reference_and_each_other_in_every_dtype() {
    let backends = backends();
    for (i, case) in cases().iter().enumerate() {
        let seed = 100 + i as u64;
        run::<f32>(case, &backends, seed);
        run::<f16>(case, &backends, seed);
        run::<bf16>(case, &backends, seed);
    }
}

#[test]
fn a_plan_for_other_slots_is_refused_on_every_backend() {
    let a = vec![0.5f32; 4 * 8];
    let b = vec![0.5f32; 6 * 4];
    let slots = AdapterSlots::new(
        8,
        6,
        vec![LoraSlot {
            a: &a,
            b: &b,
            rank: 4,
            scale: 1.0,
        }],
    )
    .unwrap();
    // Planned for a slot of rank 2.
    let plan = SgmvPlan::from_segments(&Segments::from_triples(&[(0, 2, 0)]), &[2], 2).unwrap();
    for backend in backends() {
        let mut y = vec![0f32; 12];
        let before = y.clone();
        let e = backend
            .apply(
                &plan,
                &[0.1f32; 16],
                &slots,
                &mut y,
                OutputWindow::dense(6),
                false,
            )
            .unwrap_err();
        assert!(
            matches!(
                e,
                SgmvError::PlanMismatch {
                    slot: 0,
                    planned: 2,
                    found: 4
                }
            ),
            "{}: {e}",
            backend.name()
        );
        assert_eq!(y, before, "{}: nothing written", backend.name());
    }
}

#[test]
fn a_window_that_cannot_hold_the_outputs_is_refused_on_every_backend() {
    let a = vec![0.5f32; 2 * 8];
    let b = vec![0.5f32; 6 * 2];
    let slots = AdapterSlots::new(
        8,
        6,
        vec![LoraSlot {
            a: &a,
            b: &b,
            rank: 2,
            scale: 1.0,
        }],
    )
    .unwrap();
    let plan = SgmvPlan::from_segments(&Segments::from_triples(&[(0, 2, 0)]), &[2], 2).unwrap();
    let window = OutputWindow {
        row_stride: 10,
        col_offset: 5,
    };
    for backend in backends() {
        let mut y = vec![1f32; 20];
        let e = backend
            .apply(&plan, &[0.1f32; 16], &slots, &mut y, window, false)
            .unwrap_err();
        assert!(
            matches!(
                e,
                SgmvError::BadWindow {
                    row_stride: 10,
                    col_offset: 5,
                    out_features: 6
                }
            ),
            "{}: {e}",
            backend.name()
        );
        assert_eq!(y, vec![1f32; 20], "{}: nothing written", backend.name());
    }
}

/// On the GPU only: layers of several adapters share one slab; a slab too small for a layer is
/// a typed error that leaves its pages as they were, and dropped slots give their pages back.
#[test]
fn slots_share_one_slab_and_give_their_pages_back() {
    let Some(gpu) = backends().into_iter().find_map(|b| match b {
        Backend::Cuda(g) => Some(g),
        Backend::Cpu => None,
    }) else {
        return;
    };
    let (d, out, r) = (300, 200, 8);
    let a = vec![half::bf16::from_f32(0.25); r * d];
    let b = vec![half::bf16::from_f32(0.5); out * r];
    let slot = LoraSlot {
        a: &a,
        b: &b,
        rank: r,
        scale: 1.0,
    };
    let slots = AdapterSlots::new(d, out, vec![slot; 3]).unwrap();
    // One slot: A 8 × 304 and Bᵀ 8 × 200 bf16, 4,864 + 3,200 bytes: 32 pages of 256 bytes.
    let slab = gpu.adapter_slab::<half::bf16>(100 * 256, 256).unwrap();
    assert_eq!(slab.pages(), 100);
    let first = slab.upload(&slots).unwrap();
    assert_eq!(first.pages(), 96);
    assert_eq!(slab.free_pages(), 4);
    let e = slab.upload(&slots).unwrap_err();
    assert!(
        matches!(
            e,
            SgmvError::SlabFull {
                needed_pages: 32,
                free_pages: 4,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(slab.free_pages(), 4, "a refused layer keeps no page");
    // The slots in the slab compute what the CPU does.
    let plan = SgmvPlan::from_row_slots(&[Some(2), None, Some(0)], &[r; 3]).unwrap();
    let x: Vec<half::bf16> = (0..3 * d)
        .map(|i| half::bf16::from_f32((i % 7) as f32 / 8.0))
        .collect();
    let mut want = vec![half::bf16::from_f32(0.0); 3 * out];
    openledger_sgmv::apply_with_plan(&plan, &x, &slots, &mut want).unwrap();
    let xg = gpu.upload(&x).unwrap();
    let mut yg = gpu.zeros::<half::bf16>(3 * out).unwrap();
    let mut v = gpu.zeros::<f32>(plan.intermediate_len()).unwrap();
    gpu.bgmv_shrink(&plan, &first, &xg, &mut v).unwrap();
    gpu.bgmv_expand(&plan, &first, &v, &mut yg, OutputWindow::dense(out))
        .unwrap();
    let got = gpu.download(&yg).unwrap();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let (g, w) = (f64::from(g.to_f32()), f64::from(w.to_f32()));
        assert!(
            (g - w).abs() <= tol::<half::bf16>(w),
            "element {i}: {g} vs {w}"
        );
    }
    drop(first);
    assert_eq!(
        slab.free_pages(),
        100,
        "dropped slots give their pages back"
    );
    let again = slab.upload(&slots).unwrap();
    assert_eq!(again.pages(), 96);
}
