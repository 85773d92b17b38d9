//! How attribution is judged: the area under the ROC curve of a detector (noisy-label
//! detection), Spearman rank correlation, and the linear datamodeling score (LDS) of Park et
//! al. (2023) — the mean over queries of the Spearman correlation, across retrainings on data
//! subsets, between the attribution-predicted output and the actual output.
//!
//! ```
//! use openledger::attribution::metrics::{auc, spearman};
//!
//! assert_eq!(auc(&[0.9, 0.8, 0.1, 0.2], &[true, true, false, false]), Some(1.0));
//! assert_eq!(auc(&[0.5, 0.5], &[true, false]), Some(0.5)); // ties count half
//! assert_eq!(spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]), Some(1.0));
//! ```

/// Ranks `1..=n` of `x`, ties sharing their mean rank.
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = mean;
        }
        i = j + 1;
    }
    r
}

/// The probability that a random positive scores above a random negative (ties count half):
/// the area under the ROC curve. `None` without both classes, with mismatched lengths, or
/// with a NaN score.
pub fn auc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    if scores.len() != positive.len() || scores.iter().any(|s| s.is_nan()) {
        return None;
    }
    let pos = positive.iter().filter(|&&p| p).count();
    let neg = positive.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let r = ranks(scores);
    let rank_sum: f64 = r
        .iter()
        .zip(positive)
        .filter(|(_, p)| **p)
        .map(|(r, _)| r)
        .sum();
    let u = rank_sum - (pos * (pos + 1)) as f64 / 2.0;
    Some(u / (pos * neg) as f64)
}

/// The ROC curve `(false-positive rate, true-positive rate)` from the highest threshold down,
/// starting at `(0, 0)` and ending at `(1, 1)`; tied scores move diagonally.
pub fn roc_curve(scores: &[f64], positive: &[bool]) -> Vec<(f64, f64)> {
    let pos = positive.iter().filter(|&&p| p).count().max(1) as f64;
    let neg = positive.iter().filter(|&&p| !p).count().max(1) as f64;
    let mut idx: Vec<usize> = (0..scores.len().min(positive.len())).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut out = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j < idx.len() && scores[idx[j]] == scores[idx[i]] {
            if positive[idx[j]] {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            j += 1;
        }
        out.push((fp / neg, tp / pos));
        i = j;
    }
    out
}

/// Spearman's rank correlation (Pearson correlation of the tie-averaged ranks). `None` for
/// fewer than two points, mismatched lengths, NaN, or a constant input.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 2 || a.iter().chain(b).any(|v| v.is_nan()) {
        return None;
    }
    pearson(&ranks(a), &ranks(b))
}

/// Pearson's correlation; `None` when either input is constant.
pub fn pearson(a: &[f64], b: &[f64]) -> Option<f64> {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    (saa > 0.0 && sbb > 0.0).then(|| sab / (saa * sbb).sqrt())
}

/// The linear datamodeling score: `predicted[s][q]` and `actual[s][q]` hold, for subset `s` and
/// query `q`, the attribution-predicted output (e.g. the sum of the subset's scores) and the
/// output measured after retraining on the subset. Returns the mean over queries of the
/// Spearman correlation across subsets, and how many queries had a defined correlation
/// (queries whose actual outputs are all equal are skipped). `None` if no query qualifies.
pub fn lds(predicted: &[Vec<f64>], actual: &[Vec<f64>]) -> Option<(f64, usize)> {
    if predicted.len() != actual.len() || predicted.is_empty() {
        return None;
    }
    let queries = predicted[0].len();
    if predicted
        .iter()
        .chain(actual)
        .any(|row| row.len() != queries)
    {
        return None;
    }
    let mut sum = 0.0;
    let mut used = 0;
    for q in 0..queries {
        let p: Vec<f64> = predicted.iter().map(|row| row[q]).collect();
        let a: Vec<f64> = actual.iter().map(|row| row[q]).collect();
        if let Some(r) = spearman(&p, &a) {
            sum += r;
            used += 1;
        }
    }
    (used > 0).then(|| (sum / used as f64, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_equals_the_pairwise_count() {
        let s = [0.3, 0.9, 0.1, 0.9, 0.5, 0.2, 0.7];
        let p = [false, true, false, false, true, true, false];
        let mut wins = 0.0;
        let mut pairs = 0.0;
        for i in 0..s.len() {
            for j in 0..s.len() {
                if p[i] && !p[j] {
                    pairs += 1.0;
                    wins += if s[i] > s[j] {
                        1.0
                    } else if s[i] == s[j] {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        assert!((auc(&s, &p).unwrap() - wins / pairs).abs() < 1e-12);
        assert_eq!(auc(&s, &[true; 7]), None);
        assert_eq!(auc(&[f64::NAN, 1.0], &[true, false]), None);
        // Reversing the scores mirrors the AUC.
        let neg: Vec<f64> = s.iter().map(|v| -v).collect();
        assert!((auc(&neg, &p).unwrap() - (1.0 - wins / pairs)).abs() < 1e-12);
    }

    #[test]
    fn roc_curve_runs_from_origin_to_one_and_its_area_is_the_auc() {
        let s = [0.3, 0.9, 0.1, 0.9, 0.5, 0.2, 0.7];
        let p = [false, true, false, false, true, true, false];
        let c = roc_curve(&s, &p);
        assert_eq!(c.first(), Some(&(0.0, 0.0)));
        assert_eq!(c.last(), Some(&(1.0, 1.0)));
        let area: f64 = c
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
            .sum();
        assert!((area - auc(&s, &p).unwrap()).abs() < 1e-12);
    }

    #[test]
    fn spearman_handles_ties_and_monotone_maps() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0];
        let b: Vec<f64> = a.iter().map(|x: &f64| x.powi(3)).collect();
        assert!((spearman(&a, &b).unwrap() - 1.0).abs() < 1e-12);
        let r: Vec<f64> = b.iter().rev().copied().collect();
        assert!((spearman(&a, &r).unwrap() + 1.0).abs() < 1e-12);
        assert_eq!(ranks(&[2.0, 1.0, 2.0]), vec![2.5, 1.0, 2.5]);
        assert_eq!(spearman(&a, &[1.0; 5]), None);
        // A textbook value: ranks (1,2,3,4,5) vs (2,1,4,3,5) gives 1 − 6·4/(5·24) = 0.8.
        let x = [2.0, 1.0, 4.0, 3.0, 5.0];
        assert!((spearman(&a, &x).unwrap() - 0.8).abs() < 1e-12);
    }

    #[test]
    fn lds_averages_per_query_correlations_and_skips_constant_queries() {
        let predicted = vec![
            vec![1.0, 5.0, 0.0],
            vec![2.0, 4.0, 0.0],
            vec![3.0, 3.0, 0.0],
        ];
        let actual = vec![
            vec![1.0, 1.0, 7.0],
            vec![2.0, 2.0, 7.0],
            vec![3.0, 3.0, 7.0],
        ];
        // Query 0: +1, query 1: −1, query 2: constant (skipped).
        assert_eq!(lds(&predicted, &actual), Some((0.0, 2)));
        assert_eq!(lds(&predicted, &actual[..2]), None);
    }
}
