//! Influence estimates checked on logistic regression, where the truth is computable:
//! closed-form influence functions, leave-one-out retraining, and mislabelled-example detection.

use openledger_core::{Address, ContentId};
use openledger_poa::influence::score::{Preconditioner, ScoreMethod, score, self_influence};
use openledger_poa::projection::{Projection, ProjectionKind};
use openledger_poa::rng::SeededStream;
use openledger_poa::store::{
    FeatureDType, FeatureStore, FeatureStoreWriter, StoreConfig, TrainingExample,
};

/// A labelled point, `y ∈ {−1, +1}`.
struct Point {
    x: Vec<f64>,
    y: f64,
}

fn sigmoid(t: f64) -> f64 {
    1.0 / (1.0 + (-t).exp())
}

fn dotf(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// ℓ(z) = log(1 + exp(−y wᵀx)).
fn loss(w: &[f64], z: &Point) -> f64 {
    let m = z.y * dotf(w, &z.x);
    (1.0 + (-m).exp()).ln()
}

/// ∇ℓ(z) = −y σ(−y wᵀx) x.
fn grad(w: &[f64], z: &Point) -> Vec<f64> {
    let c = -z.y * sigmoid(-z.y * dotf(w, &z.x));
    z.x.iter().map(|v| c * v).collect()
}

/// Hessian of the data term (1/n) Σ σ(1−σ) x xᵀ (row-major).
fn data_hessian(w: &[f64], data: &[Point], skip: Option<usize>, n_norm: f64) -> Vec<f64> {
    let d = w.len();
    let mut h = vec![0.0; d * d];
    for (i, z) in data.iter().enumerate() {
        if Some(i) == skip {
            continue;
        }
        let p = sigmoid(dotf(w, &z.x));
        for a in 0..d {
            for b in 0..d {
                h[a * d + b] += p * (1.0 - p) * z.x[a] * z.x[b] / n_norm;
            }
        }
    }
    h
}

/// Solves `A x = b` by Gaussian elimination with partial pivoting (independent of the crate).
fn solve(mut a: Vec<f64>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for col in 0..n {
        let piv = (col..n)
            .max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs()))
            .unwrap();
        for t in 0..n {
            a.swap(col * n + t, piv * n + t);
        }
        b.swap(col, piv);
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

/// Minimises (1/n) Σ_{i≠skip} ℓ_i + (λ/2)‖w‖² by Newton's method to machine precision.
fn train(data: &[Point], lambda: f64, skip: Option<usize>) -> Vec<f64> {
    let d = data[0].x.len();
    let n = data.len() as f64;
    let mut w = vec![0.0; d];
    for _ in 0..100 {
        let mut g: Vec<f64> = w.iter().map(|v| lambda * v).collect();
        for (i, z) in data.iter().enumerate() {
            if Some(i) != skip {
                for (ga, gz) in g.iter_mut().zip(grad(&w, z)) {
                    *ga += gz / n;
                }
            }
        }
        let mut h = data_hessian(&w, data, skip, n);
        for a in 0..d {
            h[a * d + a] += lambda;
        }
        let step = solve(h, g.clone());
        for (wa, s) in w.iter_mut().zip(&step) {
            *wa -= s;
        }
        if step.iter().map(|s| s.abs()).fold(0.0, f64::max) < 1e-15 {
            break;
        }
    }
    w
}

fn blobs(seed: u64, n: usize, d: usize, sep: f64, flip: f64) -> (Vec<Point>, Vec<bool>) {
    let mut s = SeededStream::new(seed);
    let mut pts = Vec::new();
    let mut flipped = Vec::new();
    for _ in 0..n {
        let y = if s.next_f64() < 0.5 { 1.0 } else { -1.0 };
        let mut x: Vec<f64> = (0..d).map(|_| s.next_gaussian() + y * sep).collect();
        x.push(1.0); // bias
        let f = s.next_f64() < flip;
        flipped.push(f);
        pts.push(Point {
            x,
            y: if f { -y } else { y },
        });
    }
    (pts, flipped)
}

fn exact_store(dir: &std::path::Path, w: &[f64], data: &[Point]) -> FeatureStore {
    let d = w.len();
    let path = dir.join("logreg.olfs");
    let cfg = StoreConfig::new(
        Projection::new(ProjectionKind::Identity, 0, d, d).unwrap(),
        vec![1.0],
        FeatureDType::F32,
    )
    .unwrap();
    let mut writer = FeatureStoreWriter::create(&path, cfg).unwrap();
    for (i, z) in data.iter().enumerate() {
        writer
            .append(&TrainingExample {
                record: ContentId::of((i as u64).to_le_bytes()),
                contributor: Address::with_last_byte((i % 7) as u8),
                gradients: vec![grad(w, z).iter().map(|&v| v as f32).collect()],
            })
            .unwrap();
    }
    FeatureStore::open(&path).unwrap()
}

fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    for (rank, &i) in idx.iter().enumerate() {
        r[i] = rank as f64;
    }
    r
}

fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let m = (n - 1.0) / 2.0;
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - m) * (y - m)).sum();
    let var: f64 = ra.iter().map(|x| (x - m) * (x - m)).sum();
    cov / var
}

#[test]
fn influence_function_scores_equal_the_closed_form_to_1e_6() {
    let (data, _) = blobs(11, 120, 4, 0.7, 0.0);
    let lambda = 0.01;
    let w = train(&data, lambda, None);
    let dir = tempfile::tempdir().unwrap();
    let store = exact_store(dir.path(), &w, &data);
    let d = w.len();
    let h = data_hessian(&w, &data, None, data.len() as f64);
    let (test, _) = blobs(12, 3, 4, 0.7, 0.0);
    for zq in &test {
        let gq = grad(&w, zq);
        let pre = Preconditioner::influence_function(std::slice::from_ref(&h), d, lambda).unwrap();
        let q = store
            .project_query(&[gq.iter().map(|&v| v as f32).collect()])
            .unwrap();
        let got = score(&store, &q, &ScoreMethod::Preconditioned(&pre), |_| {}).unwrap();
        // Closed form: −∇ℓ(z′)ᵀ (H + λI)⁻¹ ∇ℓ(z), in f64 with an independent solver.
        let mut hl = h.clone();
        for a in 0..d {
            hl[a * d + a] += lambda;
        }
        let hinv_gq = solve(hl, gq);
        let truth: Vec<f64> = data.iter().map(|z| -dotf(&hinv_gq, &grad(&w, z))).collect();
        let scale = truth.iter().map(|v| v.abs()).fold(0.0, f64::max);
        for (i, (g, t)) in got.values.iter().zip(&truth).enumerate() {
            assert!(
                (f64::from(*g) - t).abs() <= 1e-6 * scale,
                "example {i}: {g} vs {t} (scale {scale})"
            );
        }
    }
}

#[test]
fn influence_function_ranks_like_leave_one_out_retraining() {
    let (data, _) = blobs(21, 100, 4, 0.6, 0.05);
    let lambda = 0.01;
    let w = train(&data, lambda, None);
    let dir = tempfile::tempdir().unwrap();
    let store = exact_store(dir.path(), &w, &data);
    let d = w.len();
    let h = data_hessian(&w, &data, None, data.len() as f64);
    let pre = Preconditioner::influence_function(&[h], d, lambda).unwrap();
    let (test, _) = blobs(22, 1, 4, 0.6, 0.0);
    let zq = &test[0];
    let q = store
        .project_query(&[grad(&w, zq).iter().map(|&v| v as f32).collect()])
        .unwrap();
    let predicted = score(&store, &q, &ScoreMethod::Preconditioned(&pre), |_| {}).unwrap();
    // Removing z changes the query loss by ≈ −(1/n)·IF(z); compare rankings with the truth.
    let base = loss(&w, zq);
    let actual: Vec<f64> = (0..data.len())
        .map(|i| loss(&train(&data, lambda, Some(i)), zq) - base)
        .collect();
    let predicted_removal: Vec<f64> = predicted.values.iter().map(|&v| -f64::from(v)).collect();
    let rho = spearman(&predicted_removal, &actual);
    eprintln!("Spearman(influence function, leave-one-out) = {rho:.4}");
    assert!(rho >= 0.95, "Spearman {rho}");
}

#[test]
fn self_influence_finds_flipped_labels_with_auc_above_0_95() {
    let (data, flipped) = blobs(31, 500, 10, 0.8, 0.2);
    let d = data[0].x.len();
    let n = data.len() as f64;
    let lambda = 1e-3;
    // Full-batch gradient descent with checkpoints every 10 steps (TracIn-CP).
    let mut w = vec![0.0; d];
    let lr = 0.5;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flip.olfs");
    let mut checkpoints = Vec::new();
    for step in 1..=60 {
        let mut g: Vec<f64> = w.iter().map(|v| lambda * v).collect();
        for z in &data {
            for (ga, gz) in g.iter_mut().zip(grad(&w, z)) {
                *ga += gz / n;
            }
        }
        for (wa, ga) in w.iter_mut().zip(&g) {
            *wa -= lr * ga;
        }
        if step % 20 == 0 {
            checkpoints.push(w.clone());
        }
    }
    let cfg = StoreConfig::f16(
        Projection::new(ProjectionKind::Rademacher, 77, d, 64).unwrap(),
        vec![lr; checkpoints.len()],
    )
    .unwrap();
    let mut writer = FeatureStoreWriter::create(&path, cfg).unwrap();
    let mut reports = 0;
    let examples = data.iter().enumerate().map(|(i, z)| {
        Ok(TrainingExample {
            record: ContentId::of((i as u64).to_le_bytes()),
            contributor: Address::with_last_byte(i as u8),
            gradients: checkpoints
                .iter()
                .map(|wc| grad(wc, z).iter().map(|&v| v as f32).collect())
                .collect(),
        })
    });
    writer
        .build(examples, Some(data.len()), |_| reports += 1)
        .unwrap();
    assert!(reports >= 2, "progress reported per batch");
    let store = FeatureStore::open(&path).unwrap();
    let s = self_influence(&store, |_| {}).unwrap();
    // AUC = P(score of a flipped example > score of a clean one).
    let (mut pairs, mut wins) = (0u64, 0f64);
    for (i, &fi) in flipped.iter().enumerate() {
        for (j, &fj) in flipped.iter().enumerate() {
            if fi && !fj {
                pairs += 1;
                wins += match s.values[i].total_cmp(&s.values[j]) {
                    std::cmp::Ordering::Greater => 1.0,
                    std::cmp::Ordering::Equal => 0.5,
                    std::cmp::Ordering::Less => 0.0,
                };
            }
        }
    }
    let auc = wins / pairs as f64;
    eprintln!("self-influence AUC for flipped labels = {auc:.4}");
    assert!(auc >= 0.95, "AUC {auc}");
}
