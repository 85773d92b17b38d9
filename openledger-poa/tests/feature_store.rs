//! The feature store's file format, bad input, and each scoring method against a direct
//! computation.

use openledger_core::{Address, ContentId};
use openledger_poa::PoaError;
use openledger_poa::influence::score::{DataInf, Preconditioner, ScoreMethod, score, tracin_many};
use openledger_poa::projection::{Projection, ProjectionKind};
use openledger_poa::rng::SeededStream;
use openledger_poa::store::{
    FeatureDType, FeatureStore, FeatureStoreWriter, StoreConfig, TrainingExample,
};

fn example(i: usize, s: &mut SeededStream, p: usize, c: usize) -> TrainingExample {
    TrainingExample {
        record: ContentId::of((i as u64).to_le_bytes()),
        contributor: Address::with_last_byte((i % 5) as u8),
        gradients: (0..c)
            .map(|_| (0..p).map(|_| s.next_gaussian() as f32).collect())
            .collect(),
    }
}

fn rademacher(seed: u64) -> StoreConfig {
    StoreConfig::f16(
        Projection::new(ProjectionKind::Rademacher, seed, 300, 32).unwrap(),
        vec![0.1, 0.05],
    )
    .unwrap()
}

/// Recomputes a store header's CRC-32 (bytes 56..60, over the header with them zero), as
/// whoever edits a header on purpose can.
fn reseal(bytes: &mut [u8]) {
    let len = u64::from_le_bytes(bytes[48..56].try_into().unwrap()) as usize;
    bytes[56..60].fill(0);
    let crc = crc32fast::hash(&bytes[..len]);
    bytes[56..60].copy_from_slice(&crc.to_le_bytes());
}

fn filled(path: &std::path::Path, cfg: StoreConfig, n: usize) -> Vec<TrainingExample> {
    let mut s = SeededStream::new(5);
    let (p, c) = (cfg.projection.input_dim, cfg.checkpoints());
    let ex: Vec<TrainingExample> = (0..n).map(|i| example(i, &mut s, p, c)).collect();
    let mut w = FeatureStoreWriter::replace(path, cfg).unwrap();
    w.append_batch(&ex).unwrap();
    ex
}

#[test]
fn stored_features_are_the_projected_gradients_in_f16() {
    for kind in [ProjectionKind::Rademacher, ProjectionKind::Gaussian] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.olfs");
        let cfg =
            StoreConfig::f16(Projection::new(kind, 1, 300, 32).unwrap(), vec![0.1, 0.05]).unwrap();
        let ex = filled(&path, cfg.clone(), 10);
        let store = FeatureStore::open_expecting(&path, &cfg).unwrap();
        assert_eq!(store.len(), 10);
        for (i, e) in ex.iter().enumerate() {
            assert_eq!(store.record(i), e.record);
            assert_eq!(store.contributor(i), e.contributor);
            let want: Vec<f32> = e
                .gradients
                .iter()
                .flat_map(|g| cfg.projection.project(g).unwrap())
                .collect();
            for (a, b) in store.features(i).iter().zip(&want) {
                // f16 keeps 11 significant bits: relative error ≤ 2^-11.
                assert!(
                    (a - b).abs() <= b.abs() * 4.9e-4 + 1e-6,
                    "{kind:?}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn a_store_from_another_projection_seed_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.olfs");
    filled(&path, rademacher(1), 3);
    let err = FeatureStore::open_expecting(&path, &rademacher(2)).unwrap_err();
    assert!(matches!(err, PoaError::ProjectionMismatch { .. }), "{err}");
    assert!(err.to_string().contains("seed 1"), "{err}");
    assert!(matches!(
        FeatureStoreWriter::open(&path, &rademacher(2)),
        Err(PoaError::ProjectionMismatch { .. })
    ));
}

#[test]
fn a_truncated_store_or_foreign_file_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.olfs");
    filled(&path, rademacher(1), 4);
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 10).unwrap();
    let err = FeatureStore::open(&path).unwrap_err();
    assert!(
        matches!(err, PoaError::Truncated { expected, found, .. } if expected == len && found == len - 10),
        "{err}"
    );
    f.set_len(20).unwrap();
    assert!(matches!(
        FeatureStore::open(&path),
        Err(PoaError::Truncated {
            expected: 64,
            found: 20,
            ..
        })
    ));
    std::fs::write(&path, vec![7u8; 4096]).unwrap();
    assert!(matches!(
        FeatureStore::open(&path),
        Err(PoaError::BadHeader { .. })
    ));
    assert!(matches!(
        FeatureStore::open(dir.path().join("missing")),
        Err(PoaError::Io { .. })
    ));
}

#[test]
fn a_failed_append_leaves_the_store_readable_with_the_old_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.olfs");
    let cfg = rademacher(1);
    filled(&path, cfg.clone(), 3);
    let mut w = FeatureStoreWriter::open(&path, &cfg).unwrap();
    let mut s = SeededStream::new(9);
    let mut batch: Vec<TrainingExample> = (0..3).map(|i| example(10 + i, &mut s, 300, 2)).collect();
    batch[2].gradients[1][17] = f32::NAN;
    let err = w.append_batch(&batch).unwrap_err();
    assert!(
        matches!(&err, PoaError::NonFinite { index: 17, what, .. } if what.contains("checkpoint 1")),
        "{err}"
    );
    batch[2].gradients[1].pop();
    assert!(matches!(
        w.append(&batch[2]),
        Err(PoaError::DimensionMismatch {
            expected: 300,
            found: 299,
            ..
        })
    ));
    let mut one_ckpt = batch[0].clone();
    one_ckpt.gradients.pop();
    assert!(matches!(
        w.append(&one_ckpt),
        Err(PoaError::DimensionMismatch {
            expected: 2,
            found: 1,
            ..
        })
    ));
    let huge = TrainingExample {
        gradients: vec![vec![1e30; 300], vec![0.0; 300]],
        ..batch[0].clone()
    };
    assert!(
        matches!(w.append(&huge), Err(PoaError::NonFinite { .. })),
        "beyond the f16 range"
    );
    assert_eq!(w.len(), 3);
    let store = FeatureStore::open_expecting(&path, &cfg).unwrap();
    assert_eq!(store.len(), 3);
    // A build that fails part-way keeps the examples committed before the failure.
    let good = example(20, &mut s, 300, 2);
    let items = vec![Ok(good.clone()), Ok(batch[2].clone()), Ok(good)];
    assert!(w.build(items, None, |_| {}).is_err());
    assert_eq!(FeatureStore::open(&path).unwrap().len(), 4);
}

#[test]
fn half_written_rows_past_the_count_are_ignored_and_dropped_by_the_next_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.olfs");
    let cfg = rademacher(1);
    filled(&path, cfg.clone(), 2);
    let len = std::fs::metadata(&path).unwrap().len();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&[0xAB; 100]);
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(FeatureStore::open(&path).unwrap().len(), 2);
    let mut w = FeatureStoreWriter::open(&path, &cfg).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
    w.append(&example(9, &mut SeededStream::new(3), 300, 2))
        .unwrap();
    assert_eq!(FeatureStore::open(&path).unwrap().len(), 3);
}

#[test]
fn a_store_is_readable_and_scorable_while_being_appended() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.olfs");
    let cfg = rademacher(4);
    let ex = filled(&path, cfg.clone(), 5);
    let mut reader = FeatureStore::open(&path).unwrap();
    let mut w = FeatureStoreWriter::open(&path, &cfg).unwrap();
    let q = reader.project_query(&ex[0].gradients).unwrap();
    let before = score(&reader, &q, &ScoreMethod::TracIn, |_| {}).unwrap();
    w.append(&example(50, &mut SeededStream::new(8), 300, 2))
        .unwrap();
    let during = score(&reader, &q, &ScoreMethod::TracIn, |_| {}).unwrap();
    assert_eq!(before, during, "the open view is a stable snapshot");
    reader.refresh().unwrap();
    assert_eq!(reader.len(), 6);
    let after = score(&reader, &q, &ScoreMethod::TracIn, |_| {}).unwrap();
    assert_eq!(&after.values[..5], &before.values[..]);
}

#[test]
fn bad_queries_and_empty_stores_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.olfs");
    let cfg = rademacher(1);
    FeatureStoreWriter::create(&path, cfg.clone()).unwrap();
    let empty = FeatureStore::open(&path).unwrap();
    let q = empty
        .project_query(&[vec![0.0; 300], vec![0.0; 300]])
        .unwrap();
    assert!(matches!(
        score(&empty, &q, &ScoreMethod::TracIn, |_| {}),
        Err(PoaError::Empty { .. })
    ));
    filled(&path, cfg, 2);
    let store = FeatureStore::open(&path).unwrap();
    assert!(matches!(
        store.project_query(&[vec![0.0; 300]]),
        Err(PoaError::DimensionMismatch {
            expected: 2,
            found: 1,
            ..
        })
    ));
    let mut bad = vec![vec![0.0; 300], vec![0.0; 300]];
    bad[1][3] = f32::INFINITY;
    assert!(matches!(
        store.project_query(&bad),
        Err(PoaError::NonFinite { index: 3, .. })
    ));
    let mut q = store
        .project_query(&[vec![1.0; 300], vec![1.0; 300]])
        .unwrap();
    q.features[0].pop();
    assert!(matches!(
        score(&store, &q, &ScoreMethod::Cosine, |_| {}),
        Err(PoaError::DimensionMismatch {
            expected: 32,
            found: 31,
            ..
        })
    ));
}

fn exact_store(
    dir: &std::path::Path,
    n: usize,
    k: usize,
    c: usize,
) -> (FeatureStore, Vec<Vec<Vec<f64>>>) {
    let path = dir.join("exact.olfs");
    let cfg = StoreConfig::new(
        Projection::new(ProjectionKind::Identity, 0, k, k).unwrap(),
        (0..c).map(|i| 0.1 / (i + 1) as f64).collect(),
        FeatureDType::F32,
    )
    .unwrap();
    let ex = filled(&path, cfg, n);
    let feats = ex
        .iter()
        .map(|e| {
            e.gradients
                .iter()
                .map(|g| g.iter().map(|&v| f64::from(v)).collect())
                .collect()
        })
        .collect();
    (FeatureStore::open(&path).unwrap(), feats)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn assert_close(got: &[f32], want: &[f64], rel: f64) {
    let scale = want.iter().map(|v| v.abs()).fold(0.0, f64::max);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(*g) - w).abs() <= rel * scale,
            "example {i}: {g} vs {w}"
        );
    }
}

#[test]
fn tracin_and_cosine_match_their_definitions() {
    let dir = tempfile::tempdir().unwrap();
    let (store, f) = exact_store(dir.path(), 40, 24, 3);
    let lrs = store.config().learning_rates.clone();
    let qg: Vec<Vec<f32>> = (0..3)
        .map(|c| store.features(7)[c * 24..(c + 1) * 24].to_vec())
        .collect();
    let q = store.project_query(&qg).unwrap();
    let qf: Vec<Vec<f64>> = qg
        .iter()
        .map(|g| g.iter().map(|&v| f64::from(v)).collect())
        .collect();
    let tracin: Vec<f64> = f
        .iter()
        .map(|e| (0..3).map(|c| lrs[c] * dot(&qf[c], &e[c])).sum())
        .collect();
    assert_close(
        &score(&store, &q, &ScoreMethod::TracIn, |_| {})
            .unwrap()
            .values,
        &tracin,
        1e-6,
    );
    let cos: Vec<f64> = f
        .iter()
        .map(|e| {
            (0..3)
                .map(|c| {
                    lrs[c] * dot(&qf[c], &e[c]) / (dot(&qf[c], &qf[c]) * dot(&e[c], &e[c])).sqrt()
                })
                .sum()
        })
        .collect();
    let got = score(&store, &q, &ScoreMethod::Cosine, |_| {}).unwrap();
    assert_close(&got.values, &cos, 1e-6);
    let top = got.top_k(&store, 3).unwrap();
    assert_eq!(top[0].index, 7, "an example is most similar to itself");
    assert!(top.windows(2).all(|w| w[0].score >= w[1].score));
    let per = got.per_contributor(&store);
    assert_eq!(per.len(), 5);
    let total: f64 = per.iter().map(|p| p.1).sum();
    assert!((total - cos.iter().sum::<f64>()).abs() < 1e-4);
}

/// Many queries in one pass over the store equal one pass per query, on an exact f32 store
/// wider than a tile with a row count that is not a multiple of a block, and on an f16 sketch.
#[test]
fn tracin_of_many_queries_in_one_pass_equals_one_query_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (exact, _) = exact_store(dir.path(), 29, 3000, 2);
    let path = dir.path().join("sketch.olfs");
    let ex = filled(&path, rademacher(5), 13);
    let sketch = FeatureStore::open(&path).unwrap();
    for (store, grads) in [
        (
            &exact,
            (0..5)
                .map(|i| {
                    (0..2)
                        .map(|c| exact.features(i)[c * 3000..(c + 1) * 3000].to_vec())
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>(),
        ),
        (
            &sketch,
            ex.iter().take(4).map(|e| e.gradients.clone()).collect(),
        ),
    ] {
        let queries: Vec<_> = grads
            .iter()
            .map(|g| store.project_query(g).unwrap())
            .collect();
        let mut reported = 0;
        let many = tracin_many(store, &queries, |p| reported += p.advanced).unwrap();
        assert_eq!(reported, store.len());
        assert_eq!(many.len(), queries.len());
        for (q, got) in queries.iter().zip(&many) {
            let one = score(store, q, &ScoreMethod::TracIn, |_| {})
                .unwrap()
                .values;
            let want: Vec<f64> = one.iter().map(|&v| f64::from(v)).collect();
            assert_close(got, &want, 1e-5);
        }
    }
}

#[test]
fn trak_equals_phi_times_inverse_gram_averaged_over_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (k, c, lambda) = (8, 2, 0.5);
    let (store, f) = exact_store(dir.path(), 60, k, c);
    let mut calls = 0;
    let pre = Preconditioner::trak(&store, lambda, |_| calls += 1).unwrap();
    assert!(calls > 0);
    let qg: Vec<Vec<f32>> = (0..c)
        .map(|i| (0..k).map(|j| ((i * k + j) as f32).sin()).collect())
        .collect();
    let q = store.project_query(&qg).unwrap();
    let got = score(&store, &q, &ScoreMethod::Preconditioned(&pre), |_| {}).unwrap();
    // Direct: for each checkpoint, solve (ΦᵀΦ + λI) x = q by normal equations in f64.
    let mut want = vec![0.0; f.len()];
    for ci in 0..c {
        let mut g = vec![0.0; k * k];
        for e in &f {
            for a in 0..k {
                for b in 0..k {
                    g[a * k + b] += e[ci][a] * e[ci][b];
                }
            }
        }
        for a in 0..k {
            g[a * k + a] += lambda;
        }
        let x = gauss(g, qg[ci].iter().map(|&v| f64::from(v)).collect());
        for (w, e) in want.iter_mut().zip(&f) {
            *w += dot(&x, &e[ci]) / c as f64;
        }
    }
    assert_close(&got.values, &want, 1e-5);
    assert!(matches!(
        Preconditioner::trak(&store, f64::NAN, |_| {}),
        Err(PoaError::InvalidConfig { .. })
    ));
}

fn gauss(mut a: Vec<f64>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for col in 0..n {
        for r in col + 1..n {
            let f = a[r * n + col] / a[col * n + col];
            for t in col..n {
                a[r * n + t] -= f * a[col * n + t];
            }
            b[r] -= f * b[col];
        }
    }
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|t| a[r * n + t] * b[t]).sum();
        b[r] = (b[r] - s) / a[r * n + r];
    }
    b
}

#[test]
fn datainf_matches_its_closed_form_per_layer() {
    let dir = tempfile::tempdir().unwrap();
    let (k, c) = (10, 1);
    let (store, f) = exact_store(dir.path(), 30, k, c);
    let layers = vec![0..4, 4..10];
    let cfg = DataInf {
        layers: layers.clone(),
        lambda_scale: 0.1,
    };
    let v: Vec<f32> = (0..k).map(|j| (j as f32 * 0.3).cos()).collect();
    let q = store.project_query(std::slice::from_ref(&v)).unwrap();
    let got = score(&store, &q, &ScoreMethod::DataInf(cfg), |_| {}).unwrap();
    let n = f.len() as f64;
    let vf: Vec<f64> = v.iter().map(|&x| f64::from(x)).collect();
    let mut want = vec![0.0; f.len()];
    for l in &layers {
        let g = |e: &Vec<Vec<f64>>| e[0][l.clone()].to_vec();
        let lam = 0.1 * f.iter().map(|e| dot(&g(e), &g(e))).sum::<f64>() / n;
        let vl = &vf[l.clone()];
        for (kk, ek) in f.iter().enumerate() {
            // −(1/(nλ)) Σ_i [v·g_k − (v·g_i)(g_i·g_k)/(λ + ‖g_i‖²)]
            let s: f64 = f
                .iter()
                .map(|ei| {
                    dot(vl, &g(ek))
                        - dot(vl, &g(ei)) * dot(&g(ei), &g(ek)) / (lam + dot(&g(ei), &g(ei)))
                })
                .sum();
            want[kk] += -s / (n * lam);
        }
    }
    assert_close(&got.values, &want, 1e-5);
    let bad = DataInf {
        layers: std::iter::once(3..20).collect(),
        lambda_scale: 0.1,
    };
    assert!(matches!(
        score(&store, &q, &ScoreMethod::DataInf(bad), |_| {}),
        Err(PoaError::InvalidConfig { .. })
    ));
}

#[test]
fn hostile_header_sizes_are_typed_errors_not_overflows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.olfs");
    filled(&path, rademacher(1), 1);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[40..48].copy_from_slice(&u64::MAX.to_le_bytes()); // count
    std::fs::write(&path, &bytes).unwrap();
    // An edited header fails its checksum; resealed (as a deliberate forger would), the sizes
    // it declares are still checked without overflow.
    assert!(matches!(
        FeatureStore::open(&path),
        Err(PoaError::Checksum { .. })
    ));
    reseal(&mut bytes);
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        FeatureStore::open(&path),
        Err(PoaError::Truncated { .. })
    ));
    assert!(matches!(
        FeatureStoreWriter::open(&path, &rademacher(1)),
        Err(PoaError::Truncated { .. })
    ));
    bytes[40..48].copy_from_slice(&1u64.to_le_bytes());
    bytes[16..20].copy_from_slice(&u32::MAX.to_le_bytes()); // k
    reseal(&mut bytes);
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        FeatureStore::open(&path),
        Err(PoaError::BadHeader { .. })
    ));
}

#[test]
fn progress_reports_add_up_to_the_rows_of_every_pass() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.olfs");
    let cfg = rademacher(3);
    let mut s = SeededStream::new(9);
    let (p, c) = (cfg.projection.input_dim, cfg.checkpoints());
    let n = 1_500;
    let ex: Vec<TrainingExample> = (0..n).map(|i| example(i, &mut s, p, c)).collect();
    let mut w = FeatureStoreWriter::create(&path, cfg).unwrap();
    let mut built = 0;
    w.build(ex.iter().cloned().map(Ok), Some(n), |b| built += b.advanced)
        .unwrap();
    assert_eq!(built, n);
    let store = FeatureStore::open(&path).unwrap();
    let q = store.project_query(&ex[0].gradients).unwrap();
    // TracIn reads the store once, DataInf three times (norms, its per-layer statistic, then the
    // scores): `advanced` sums to the rows read, while `done` restarts with each pass.
    let datainf = ScoreMethod::DataInf(DataInf {
        layers: std::iter::once(0..32).collect(),
        lambda_scale: 0.1,
    });
    for (method, passes) in [(ScoreMethod::TracIn, 1), (datainf, 3)] {
        let (mut advanced, mut ends) = (0, 0);
        score(&store, &q, &method, |p| {
            advanced += p.advanced;
            ends += usize::from(p.done == n);
            assert_eq!(p.total, n);
        })
        .unwrap();
        assert_eq!(advanced, passes * n, "{method:?}");
        assert_eq!(ends, passes, "{method:?}");
    }
}

#[test]
fn rows_appended_from_borrowed_gradients_are_the_bytes_of_a_batch_append() {
    // An f16 sketch, and an exact f32 store of more than one 1 MiB write.
    let exact = StoreConfig::new(
        Projection::new(ProjectionKind::Identity, 0, 3000, 3000).unwrap(),
        vec![0.1, 0.05],
        FeatureDType::F32,
    )
    .unwrap();
    for (cfg, n) in [(rademacher(3), 37), (exact, 61)] {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.olfs"), dir.path().join("b.olfs"));
        let ex = filled(&a, cfg.clone(), n);
        let mut w = FeatureStoreWriter::replace(&b, cfg.clone()).unwrap();
        let rows: Vec<(ContentId, Address)> =
            ex.iter().map(|e| (e.record, e.contributor)).collect();
        w.append_rows(&rows, |c, i| &ex[i].gradients[c]).unwrap();
        assert_eq!(w.len(), n);
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

        // One non-finite value anywhere and no row of the call is stored.
        let mut bad = ex[..5].to_vec();
        bad[3].gradients[1][7] = f32::INFINITY;
        let err = w
            .append_rows(&rows[..5], |c, i| &bad[i].gradients[c])
            .unwrap_err();
        assert!(
            matches!(&err, PoaError::NonFinite { index: 7, what, .. } if what.contains("checkpoint 1")),
            "{err}"
        );
        assert_eq!(w.len(), n);
        assert_eq!(FeatureStore::open_expecting(&b, &cfg).unwrap().len(), n);
    }
}
