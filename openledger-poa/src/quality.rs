//! Quality governance: near-duplicate clustering (MinHash with LSH banding over character or
//! word shingles, plus exact hashes); rewards shared per cluster, each cluster owned by its first
//! committed record, so that neither splitting data into near-duplicate records nor copying
//! someone else's under other addresses gains anything; flags for the copies; and flags and
//! pluggable penalties for records whose influence is negative.
//!
//! ```
//! use openledger_poa::quality::{cluster_near_duplicates, MinHashConfig};
//!
//! let texts = [
//!     "The mitochondria is the powerhouse of the cell, producing ATP.",
//!     "The mitochondria is the powerhouse of the cell, producing ATP!",
//!     "Photosynthesis converts light into chemical energy in plants.",
//! ];
//! let c = cluster_near_duplicates(&texts, &MinHashConfig::default()).unwrap();
//! assert_eq!(c.cluster_of[0], c.cluster_of[1]);
//! assert_ne!(c.cluster_of[0], c.cluster_of[2]);
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};

use openledger_core::{Address, ContentId};
use rayon::prelude::*;

use crate::error::{PoaError, Result, check_dim, check_finite_f64};
use crate::rng::mix64;

/// What a shingle is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shingle {
    /// Runs of `n` characters (after lower-casing and collapsing whitespace).
    Chars(usize),
    /// Runs of `n` words.
    Words(usize),
}

/// MinHash / LSH parameters. Two records become candidates when all `rows` minhashes of one
/// of the `bands` agree (probability `1 − (1 − J^rows)^bands` for Jaccard `J`), and are joined
/// when their estimated Jaccard similarity is at least `threshold`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MinHashConfig {
    /// Shingling.
    pub shingle: Shingle,
    /// LSH bands.
    pub bands: usize,
    /// Minhashes per band (`bands · rows` in all).
    pub rows: usize,
    /// Estimated Jaccard similarity needed to join a candidate pair.
    pub threshold: f64,
    /// Seed of the hash family.
    pub seed: u64,
}

impl Default for MinHashConfig {
    fn default() -> Self {
        Self {
            shingle: Shingle::Chars(5),
            bands: 16,
            rows: 4,
            threshold: 0.7,
            seed: 0x6d69_6e68,
        }
    }
}

fn normalise(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    // FNV-1a, then a SplitMix finaliser for avalanche.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(seed, h)
}

fn shingles(text: &str, kind: Shingle, seed: u64) -> Vec<u64> {
    let norm = normalise(text);
    let mut out: Vec<u64> = match kind {
        Shingle::Chars(n) => {
            let idx: Vec<usize> = norm
                .char_indices()
                .map(|(i, _)| i)
                .chain([norm.len()])
                .collect();
            let chars = idx.len() - 1;
            if chars <= n {
                vec![hash_bytes(seed, norm.as_bytes())]
            } else {
                (0..=chars - n)
                    .map(|s| hash_bytes(seed, &norm.as_bytes()[idx[s]..idx[s + n]]))
                    .collect()
            }
        }
        Shingle::Words(n) => {
            let words: Vec<&str> = norm.split(' ').collect();
            if words.len() <= n {
                vec![hash_bytes(seed, norm.as_bytes())]
            } else {
                words
                    .windows(n)
                    .map(|w| hash_bytes(seed, w.join(" ").as_bytes()))
                    .collect()
            }
        }
    };
    out.sort_unstable();
    out.dedup();
    out
}

/// The MinHash signature of `text`: for each of `bands · rows` hash functions
/// `h_j(x) = a_j·x + b_j (mod 2⁶⁴)` (odd `a_j`), the minimum over the text's shingles.
pub fn signature(text: &str, cfg: &MinHashConfig) -> Vec<u64> {
    let m = cfg.bands * cfg.rows;
    let coeffs: Vec<(u64, u64)> = (0..m as u64)
        .map(|j| (mix64(cfg.seed, 2 * j) | 1, mix64(cfg.seed, 2 * j + 1)))
        .collect();
    let mut sig = vec![u64::MAX; m];
    for x in shingles(text, cfg.shingle, cfg.seed) {
        for (s, &(a, b)) in sig.iter_mut().zip(&coeffs) {
            *s = (*s).min(a.wrapping_mul(x).wrapping_add(b));
        }
    }
    sig
}

/// Near-duplicate clusters: `cluster_of[i]` is the smallest index in record `i`'s cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clusters {
    /// Cluster representative (smallest member index) of every record.
    pub cluster_of: Vec<usize>,
}

impl Clusters {
    /// Members of each cluster, clusters ordered by representative.
    pub fn groups(&self) -> Vec<Vec<usize>> {
        let mut g: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, &c) in self.cluster_of.iter().enumerate() {
            g.entry(c).or_default().push(i);
        }
        g.into_values().collect()
    }
}

fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

fn union(parent: &mut [usize], a: usize, b: usize) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    if ra != rb {
        // The smaller index becomes the root, so representatives are smallest members.
        let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
        parent[hi] = lo;
    }
}

/// Clusters exact duplicates (same keccak-256 of the normalised text) and near duplicates
/// (MinHash + LSH, verified by estimated Jaccard).
pub fn cluster_near_duplicates(texts: &[&str], cfg: &MinHashConfig) -> Result<Clusters> {
    if cfg.bands == 0 || cfg.rows == 0 || !(0.0..=1.0).contains(&cfg.threshold) {
        return Err(PoaError::InvalidConfig {
            what: "MinHash config".into(),
            reason: format!(
                "bands {} and rows {} must be positive, threshold {} in [0, 1]",
                cfg.bands, cfg.rows, cfg.threshold
            ),
        });
    }
    let n = texts.len();
    let (sigs, exact): (Vec<Vec<u64>>, Vec<ContentId>) = texts
        .par_iter()
        .map(|t| (signature(t, cfg), ContentId::of(normalise(t).as_bytes())))
        .unzip();
    let mut parent: Vec<usize> = (0..n).collect();
    let mut first: HashMap<ContentId, usize> = HashMap::new();
    for (i, h) in exact.iter().enumerate() {
        if let Some(&j) = first.get(h) {
            union(&mut parent, i, j);
        } else {
            first.insert(*h, i);
        }
    }
    let m = (cfg.bands * cfg.rows) as f64;
    let similar = |a: usize, b: usize| {
        sigs[a].iter().zip(&sigs[b]).filter(|(x, y)| x == y).count() as f64 / m >= cfg.threshold
    };
    for band in 0..cfg.bands {
        let range = band * cfg.rows..(band + 1) * cfg.rows;
        let mut buckets: HashMap<&[u64], Vec<usize>> = HashMap::new();
        for (i, s) in sigs.iter().enumerate() {
            buckets.entry(&s[range.clone()]).or_default().push(i);
        }
        for members in buckets.values().filter(|m| m.len() > 1) {
            // Compare with the bucket's first member and with each already-joined root.
            let head = members[0];
            for &other in &members[1..] {
                if find(&mut parent, head) != find(&mut parent, other) && similar(head, other) {
                    union(&mut parent, head, other);
                }
            }
        }
    }
    let cluster_of = (0..n).map(|i| find(&mut parent, i)).collect();
    Ok(Clusters { cluster_of })
}

/// Two records an embedding model reads as saying the same thing: a link
/// [`merge_paraphrases`] made between clusters that MinHash kept apart.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParaphraseLink {
    /// The earlier record.
    pub earlier: usize,
    /// The later record, now in the earlier one's cluster.
    pub later: usize,
    /// Their embeddings' cosine similarity.
    pub cosine: f32,
}

/// Joins the clusters of every two records whose embeddings (`embeddings`: one row of `dim`
/// values per record, in commit order) have cosine similarity at least `threshold`: a
/// paraphrase, which shares too few character shingles for MinHash, lands in the cluster of the
/// record it re-words, and [`flag_copies`] then flags it like any other copy. Exact search over
/// every pair (`n²/2` dot products). Returns the merged clusters (each named by its smallest
/// member, the first committed) and, in order, each link that joined two clusters.
pub fn merge_paraphrases(
    clusters: &Clusters,
    embeddings: &[f32],
    dim: usize,
    threshold: f32,
) -> Result<(Clusters, Vec<ParaphraseLink>)> {
    let n = clusters.cluster_of.len();
    if dim == 0 {
        return Err(PoaError::InvalidConfig {
            what: "embedding dimension".into(),
            reason: "must be positive".into(),
        });
    }
    check_dim(|| "embeddings".into(), n * dim, embeddings.len())?;
    if !(-1.0..=1.0).contains(&threshold) {
        return Err(PoaError::InvalidConfig {
            what: "paraphrase threshold".into(),
            reason: format!("{threshold} is not a cosine similarity in [-1, 1]"),
        });
    }
    let unit: Vec<Vec<f32>> = embeddings
        .chunks_exact(dim)
        .enumerate()
        .map(|(i, v)| {
            let norm = v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
            if !(norm.is_finite() && norm > 0.0) {
                return Err(PoaError::InvalidConfig {
                    what: format!("embedding of record {i}"),
                    reason: format!("norm {norm} has no direction"),
                });
            }
            Ok(v.iter().map(|&x| (x as f64 / norm) as f32).collect())
        })
        .collect::<Result<_>>()?;
    let candidates: Vec<ParaphraseLink> = (0..n)
        .into_par_iter()
        .flat_map_iter(|later| {
            let unit = &unit;
            (0..later).filter_map(move |earlier| {
                let cosine: f32 = unit[earlier]
                    .iter()
                    .zip(&unit[later])
                    .map(|(a, b)| a * b)
                    .sum();
                (cosine >= threshold).then_some(ParaphraseLink {
                    earlier,
                    later,
                    cosine,
                })
            })
        })
        .collect();
    let mut parent = clusters.cluster_of.clone();
    let mut links = Vec::new();
    for link in candidates {
        if find(&mut parent, link.earlier) != find(&mut parent, link.later) {
            union(&mut parent, link.earlier, link.later);
            links.push(link);
        }
    }
    let cluster_of = (0..n).map(|i| find(&mut parent, i)).collect();
    Ok((Clusters { cluster_of }, links))
}

/// Precision and recall of calling a pair positive when its score is at least a threshold.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Calibration {
    /// The threshold.
    pub threshold: f32,
    /// True positives / predicted positives (1 when nothing is predicted positive).
    pub precision: f64,
    /// True positives / positives.
    pub recall: f64,
    /// Pairs scored.
    pub pairs: usize,
    /// Positive pairs among them.
    pub positives: usize,
}

/// Precision and recall of `score ≥ threshold` against `labels`.
pub fn precision_recall(scores: &[f32], labels: &[bool], threshold: f32) -> Result<Calibration> {
    check_dim(|| "labels".into(), scores.len(), labels.len())?;
    let (mut tp, mut fp, mut pos) = (0usize, 0usize, 0usize);
    for (&s, &l) in scores.iter().zip(labels) {
        if !s.is_finite() {
            return Err(PoaError::InvalidConfig {
                what: "scores".into(),
                reason: format!("{s} is not finite"),
            });
        }
        pos += l as usize;
        if s >= threshold {
            if l { tp += 1 } else { fp += 1 }
        }
    }
    Ok(Calibration {
        threshold,
        precision: if tp + fp == 0 {
            1.0
        } else {
            tp as f64 / (tp + fp) as f64
        },
        recall: if pos == 0 {
            1.0
        } else {
            tp as f64 / pos as f64
        },
        pairs: scores.len(),
        positives: pos,
    })
}

/// The threshold that maximises F-β (`β < 1` weighs precision more: a false positive takes a
/// contributor's pay) on labelled scores, placed midway between the lowest score it accepts
/// and the next lower score (so that it does not sit on a tuning example).
pub fn choose_threshold(scores: &[f32], labels: &[bool], beta: f64) -> Result<Calibration> {
    check_dim(|| "labels".into(), scores.len(), labels.len())?;
    if !(beta > 0.0 && beta.is_finite()) {
        return Err(PoaError::InvalidConfig {
            what: "beta".into(),
            reason: format!("{beta} is not positive"),
        });
    }
    let mut sorted: Vec<f32> = scores.to_vec();
    if sorted.iter().any(|s| !s.is_finite()) {
        return Err(PoaError::InvalidConfig {
            what: "scores".into(),
            reason: "a score is not finite".into(),
        });
    }
    sorted.sort_by(|a, b| b.total_cmp(a));
    sorted.dedup();
    let b2 = beta * beta;
    let mut best: Option<(f64, Calibration)> = None;
    for (k, &s) in sorted.iter().enumerate() {
        let below = sorted.get(k + 1).copied().unwrap_or(s - 1e-3);
        let t = (s + below) / 2.0;
        let c = precision_recall(scores, labels, t)?;
        let f = if c.precision + c.recall == 0.0 {
            0.0
        } else {
            (1.0 + b2) * c.precision * c.recall / (b2 * c.precision + c.recall)
        };
        if best.as_ref().is_none_or(|(bf, _)| f > *bf) {
            best = Some((f, c));
        }
    }
    best.map(|(_, c)| c).ok_or_else(|| PoaError::InvalidConfig {
        what: "scores".into(),
        reason: "no labelled pairs".into(),
    })
}

/// How a cluster's reward is shared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClusterShare {
    /// All to the contributor of the cluster's first committed record: its lowest index, since
    /// a datanet only appends and each version is a prefix of its records (so "earlier version,
    /// then lower index" is "lower index"). Copies submitted later earn nothing, whoever
    /// submitted them. The default.
    #[default]
    FirstCommitted,
    /// Equally among the distinct contributors present in the cluster. Copying pays under this
    /// rule: whoever copies another contributor's record under `n` addresses takes `n/(n+1)` of
    /// its reward. Kept to measure that, not to pay with.
    PerContributor,
}

impl ClusterShare {
    /// The rule's name as the bindings spell it (`"first_committed"`, `"per_contributor"`).
    pub fn name(self) -> &'static str {
        match self {
            ClusterShare::FirstCommitted => "first_committed",
            ClusterShare::PerContributor => "per_contributor",
        }
    }
}

impl std::str::FromStr for ClusterShare {
    type Err = PoaError;

    /// A rule by [`ClusterShare::name`].
    fn from_str(s: &str) -> Result<Self> {
        [ClusterShare::FirstCommitted, ClusterShare::PerContributor]
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| PoaError::InvalidConfig {
                what: "cluster share".into(),
                reason: format!("{s:?} is not \"first_committed\" or \"per_contributor\""),
            })
    }
}

/// A record that copies an earlier one: a later member of a near-duplicate cluster. It earns
/// nothing under [`ClusterShare::FirstCommitted`]; the flag says whose record it copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyFlag {
    /// The copy's index.
    pub index: usize,
    /// Who submitted the copy.
    pub contributor: Address,
    /// The index of the cluster's first committed record.
    pub original: usize,
    /// Who submitted that record (the cluster's owner); `contributor` itself when someone
    /// copies their own record.
    pub owner: Address,
}

/// Flags every record that is not the first committed record of its cluster, in index order.
/// `clusters` must cover the datanet in commit order (index `i` is the `i`-th record
/// committed), as [`cluster_near_duplicates`] over its records gives.
pub fn flag_copies(clusters: &Clusters, contributors: &[Address]) -> Result<Vec<CopyFlag>> {
    check_dim(
        || "contributors".into(),
        clusters.cluster_of.len(),
        contributors.len(),
    )?;
    if let Some((i, &c)) = clusters
        .cluster_of
        .iter()
        .enumerate()
        .find(|&(i, &c)| c > i)
    {
        return Err(PoaError::InvalidConfig {
            what: format!("cluster_of[{i}]"),
            reason: format!(
                "{c} is not a record at or before {i} (a cluster is named by its first record)"
            ),
        });
    }
    Ok(clusters
        .cluster_of
        .iter()
        .enumerate()
        .filter(|&(i, &c)| c != i)
        .map(|(index, &original)| CopyFlag {
            index,
            contributor: contributors[index],
            original,
            owner: contributors[original],
        })
        .collect())
}

/// Per-contributor reward weights where each cluster counts once, with the score of its best
/// member (so near-duplicate copies add nothing), shared by `share`. Sorted by address. For
/// [`ClusterShare::FirstCommitted`], `clusters` must cover the records in commit order (see
/// [`flag_copies`]): a cluster's first member here is its owner.
pub fn cluster_rewards(
    clusters: &Clusters,
    contributors: &[Address],
    scores: &[f64],
    share: ClusterShare,
) -> Result<Vec<(Address, f64)>> {
    check_dim(
        || "contributors".into(),
        clusters.cluster_of.len(),
        contributors.len(),
    )?;
    check_dim(|| "scores".into(), clusters.cluster_of.len(), scores.len())?;
    check_finite_f64(|| "scores".into(), scores)?;
    let mut out: BTreeMap<Address, f64> = BTreeMap::new();
    for members in clusters.groups() {
        let best = members
            .iter()
            .map(|&i| scores[i])
            .fold(f64::NEG_INFINITY, f64::max);
        match share {
            ClusterShare::FirstCommitted => {
                *out.entry(contributors[members[0]]).or_default() += best
            }
            ClusterShare::PerContributor => {
                let who: BTreeSet<Address> = members.iter().map(|&i| contributors[i]).collect();
                for a in &who {
                    *out.entry(*a).or_default() += best / who.len() as f64;
                }
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// A record whose influence is below the flagging threshold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Flag {
    /// Its index.
    pub index: usize,
    /// Its contributor.
    pub contributor: Address,
    /// Its score.
    pub score: f64,
}

/// Flags every record scoring below `threshold` (e.g. `0.0`: harmful on balance).
pub fn flag_negative(
    contributors: &[Address],
    scores: &[f64],
    threshold: f64,
) -> Result<Vec<Flag>> {
    check_dim(|| "scores".into(), contributors.len(), scores.len())?;
    check_finite_f64(|| "scores".into(), scores)?;
    Ok(scores
        .iter()
        .enumerate()
        .filter(|(_, s)| **s < threshold)
        .map(|(index, &score)| Flag {
            index,
            contributor: contributors[index],
            score,
        })
        .collect())
}

/// Decides how flags change a contributor's reward weight.
pub trait PenaltyPolicy {
    /// The penalised weight of `contributor`, whose unpenalised weight is `weight` and whose
    /// flagged records are `flags`.
    fn penalise(&self, contributor: Address, weight: f64, flags: &[Flag]) -> f64;
}

/// Negative scores count against the contributor's positive ones, `factor` times, floored at 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ForfeitNegative {
    /// Multiplier of the negative scores.
    pub factor: f64,
}

impl PenaltyPolicy for ForfeitNegative {
    fn penalise(&self, _: Address, weight: f64, flags: &[Flag]) -> f64 {
        (weight + self.factor * flags.iter().map(|f| f.score.min(0.0)).sum::<f64>()).max(0.0)
    }
}

/// Contributors with at least `max_flags` flagged records get nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExcludeAfter {
    /// Flags tolerated before exclusion.
    pub max_flags: usize,
}

impl PenaltyPolicy for ExcludeAfter {
    fn penalise(&self, _: Address, weight: f64, flags: &[Flag]) -> f64 {
        if flags.len() >= self.max_flags {
            0.0
        } else {
            weight
        }
    }
}

/// Applies `policy` to every contributor's weight.
pub fn apply_penalties(
    weights: &[(Address, f64)],
    flags: &[Flag],
    policy: &dyn PenaltyPolicy,
) -> Vec<(Address, f64)> {
    weights
        .iter()
        .map(|&(a, w)| {
            let mine: Vec<Flag> = flags
                .iter()
                .filter(|f| f.contributor == a)
                .copied()
                .collect();
            (a, policy.penalise(a, w, &mine))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paraphrases_join_the_cluster_of_the_record_they_reword() {
        // Records 0 and 2 point the same way, 1 elsewhere, 3 near 1 but under the threshold.
        let e = [
            1.0, 0.0, 0.0, //
            0.0, 1.0, 0.0, //
            0.9, 0.1, 0.0, //
            0.0, 0.8, 0.6, //
        ];
        let start = Clusters {
            cluster_of: vec![0, 1, 2, 3],
        };
        let (c, links) = merge_paraphrases(&start, &e, 3, 0.9).unwrap();
        assert_eq!(c.cluster_of, vec![0, 1, 0, 3]);
        assert_eq!(links.len(), 1);
        assert_eq!((links[0].earlier, links[0].later), (0, 2));
        assert!((links[0].cosine - 0.9 / 0.82f32.sqrt()).abs() < 1e-6);
        let who = [Address::repeat_byte(1), Address::repeat_byte(2)];
        let flags = flag_copies(&c, &[who[0], who[1], who[1], who[1]]).unwrap();
        assert_eq!(flags.len(), 1);
        assert_eq!((flags[0].index, flags[0].owner), (2, who[0]));
        // A link inside a cluster MinHash already made adds nothing.
        let (c2, links2) = merge_paraphrases(&c, &e, 3, 0.9).unwrap();
        assert_eq!((c2, links2.len()), (c, 0));
        // Bad input is refused by name.
        assert!(merge_paraphrases(&start, &e[..9], 3, 0.9).is_err());
        assert!(merge_paraphrases(&start, &e, 3, 1.5).is_err());
        let mut zero = e;
        zero[3..6].fill(0.0);
        let err = merge_paraphrases(&start, &zero, 3, 0.9).unwrap_err();
        assert!(err.to_string().contains("record 1"), "{err}");
    }

    #[test]
    fn the_threshold_maximises_f_beta_between_two_scores() {
        let scores = [0.95, 0.9, 0.8, 0.7, 0.6, 0.3];
        let labels = [true, true, false, true, false, false];
        // F1: at 0.85 (P 1, R 2/3) 0.8; at 0.65 (P 3/4, R 1) 0.857 → 0.65.
        let c = choose_threshold(&scores, &labels, 1.0).unwrap();
        assert!((c.threshold - 0.65).abs() < 1e-6, "{c:?}");
        assert_eq!((c.precision, c.recall), (0.75, 1.0));
        // F0.5 weighs precision: 0.85 (0.909) beats 0.65 (0.789).
        let c = choose_threshold(&scores, &labels, 0.5).unwrap();
        assert!((c.threshold - 0.85).abs() < 1e-6, "{c:?}");
        let pr = precision_recall(&scores, &labels, 0.85).unwrap();
        assert_eq!((pr.precision, pr.positives, pr.pairs), (1.0, 3, 6));
        assert!(choose_threshold(&[], &[], 1.0).is_err());
        assert!(choose_threshold(&[f32::NAN], &[true], 1.0).is_err());
    }

    #[test]
    fn estimated_jaccard_tracks_true_jaccard() {
        let cfg = MinHashConfig {
            bands: 64,
            rows: 4,
            ..Default::default()
        };
        let a = "the quick brown fox jumps over the lazy dog near the river bank today";
        let b = "the quick brown fox jumps over the lazy cat near the river bank today";
        let (sa, sb) = (
            shingles(a, cfg.shingle, cfg.seed),
            shingles(b, cfg.shingle, cfg.seed),
        );
        let inter = sa.iter().filter(|x| sb.binary_search(x).is_ok()).count() as f64;
        let truth = inter / (sa.len() as f64 + sb.len() as f64 - inter);
        let (ga, gb) = (signature(a, &cfg), signature(b, &cfg));
        let est = ga.iter().zip(&gb).filter(|(x, y)| x == y).count() as f64 / 256.0;
        assert!((est - truth).abs() < 0.1, "{est} vs {truth}");
    }

    #[test]
    fn word_shingles_and_exact_copies_cluster() {
        let cfg = MinHashConfig {
            shingle: Shingle::Words(2),
            ..Default::default()
        };
        let t = ["A  b c d e", "a b c d e", "x y z w v u"];
        let c = cluster_near_duplicates(&t, &cfg).unwrap();
        assert_eq!(c.groups(), vec![vec![0, 1], vec![2]]);
        assert!(cluster_near_duplicates(&t, &MinHashConfig { bands: 0, ..cfg }).is_err());
    }

    #[test]
    fn penalties_are_pluggable() {
        let a = Address::repeat_byte(1);
        let b = Address::repeat_byte(2);
        let flags = flag_negative(&[a, a, b], &[-0.5, 2.0, -0.1], 0.0).unwrap();
        assert_eq!(flags.len(), 2);
        let w = [(a, 2.0), (b, 1.0)];
        assert_eq!(
            apply_penalties(&w, &flags, &ForfeitNegative { factor: 2.0 }),
            vec![(a, 1.0), (b, 0.8)]
        );
        assert_eq!(
            apply_penalties(&w, &flags, &ExcludeAfter { max_flags: 1 }),
            vec![(a, 0.0), (b, 0.0)]
        );
        assert!(matches!(
            flag_negative(&[a], &[f64::NAN], 0.0),
            Err(PoaError::NonFinite { .. })
        ));
    }
}
