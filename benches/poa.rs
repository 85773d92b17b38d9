//! Proof-of-Attribution benchmarks, each as a ratio against a baseline measured in the same run:
//!
//! * scoring one query (TracIn) against N stored k = 1,024 f16 features (N = 1,000,000 by
//!   default, a 2.1 GB file; `OPENLEDGER_POA_BENCH_N` overrides), in GB/s of feature bytes,
//!   against a plain parallel scan summing the same bytes (target ≥ 0.6×);
//! * exact top-10 over 1,000,000 × 384 f32 embeddings, against a scan summing the same floats;
//! * near-duplicate clustering (MinHash + LSH) of 100,000 records, against exact-hash dedup.
//!
//! Run: `cargo bench -p openledger-benches --bench poa`.

use std::collections::HashMap;
use std::time::Instant;

use openledger_benches::{Report, median_secs};
use openledger_core::{Address, ContentId};
use openledger_poa::influence::score::{ScoreMethod, score};
use openledger_poa::projection::{Projection, ProjectionKind};
use openledger_poa::quality::{MinHashConfig, cluster_near_duplicates};
use openledger_poa::rag::{RagIndex, Similarity};
use openledger_poa::rng::{SeededStream, mix64};
use openledger_poa::store::{FeatureStore, FeatureStoreWriter, StoreConfig, TrainingExample};
use rayon::prelude::*;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sums the feature bytes of every row as u64 words: the memory-scan baseline.
fn scan_sum(store: &FeatureStore) -> u64 {
    let row = store.row_size();
    store
        .rows_bytes()
        .par_chunks(row * 512)
        .map(|block| {
            let mut s = 0u64;
            for r in block.chunks_exact(row) {
                for w in r[64..].chunks_exact(8) {
                    s = s.wrapping_add(u64::from_le_bytes(w.try_into().unwrap()));
                }
            }
            s
        })
        .reduce(|| 0, u64::wrapping_add)
}

fn bench_store(report: &mut Report) {
    let n = env_usize("OPENLEDGER_POA_BENCH_N", 1_000_000);
    let k = 1_024;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("features.olfs");
    let cfg = StoreConfig::f16(
        Projection::new(ProjectionKind::Identity, 0, k, k).unwrap(),
        vec![1e-3],
    )
    .unwrap();
    let base: Vec<Vec<f32>> = (0..64u64)
        .map(|b| {
            (0..k as u64)
                .map(|j| ((mix64(b, j) >> 40) as f32 / (1u64 << 24) as f32) - 0.5)
                .collect()
        })
        .collect();
    let mut writer = FeatureStoreWriter::create(&path, cfg).unwrap();
    let t0 = Instant::now();
    let examples = (0..n).map(|i| {
        let scale = 1.0 + (i % 1000) as f32 * 1e-3;
        Ok(TrainingExample {
            record: ContentId::of((i as u64).to_le_bytes()),
            contributor: Address::with_last_byte((i % 251) as u8),
            gradients: vec![base[i % 64].iter().map(|v| v * scale).collect()],
        })
    });
    writer.build(examples, Some(n), |_| {}).unwrap();
    let build = t0.elapsed().as_secs_f64();
    let store = FeatureStore::open(&path).unwrap();
    let feature_bytes = (n * k * 2) as f64;
    report.figure("store_examples", n as f64);
    report.figure("store_feature_gb", feature_bytes / 1e9);
    report.figure("store_build_examples_per_s", n as f64 / build);
    let q = store.project_query(&[base[3].clone()]).unwrap();
    let t_scan = median_secs(5, || scan_sum(&store));
    let t_score = median_secs(5, || {
        score(&store, &q, &ScoreMethod::TracIn, |_| {}).unwrap()
    });
    let t_cos = median_secs(3, || {
        score(&store, &q, &ScoreMethod::Cosine, |_| {}).unwrap()
    });
    let (gbs_scan, gbs_score) = (feature_bytes / t_scan / 1e9, feature_bytes / t_score / 1e9);
    report.figure("memory_scan_gb_per_s", gbs_scan);
    report.figure("tracin_score_gb_per_s", gbs_score);
    report.figure("tracin_score_s", t_score);
    report.figure("cosine_score_s", t_cos);
    report.ratio("tracin_vs_memory_scan", gbs_score, gbs_scan, ">= 0.6");
    let s = score(&store, &q, &ScoreMethod::TracIn, |_| {}).unwrap();
    let t_top = median_secs(5, || s.top_k(&store, 10).unwrap());
    report.figure("top10_of_scores_s", t_top);
}

/// A plain sum with 16 independent accumulators (vectorises like the scoring kernels).
fn sum_f32(c: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    for x in c.chunks_exact(16) {
        for l in 0..16 {
            acc[l] += x[l];
        }
    }
    acc.iter().sum::<f32>() + c.chunks_exact(16).remainder().iter().sum::<f32>()
}

fn bench_rag(report: &mut Report) {
    let (n, dim) = (env_usize("OPENLEDGER_POA_BENCH_EMB", 1_000_000), 384);
    let mut index = RagIndex::new(dim, Similarity::Cosine).unwrap();
    let mut e = vec![0f32; dim];
    for i in 0..n as u64 {
        for (j, v) in e.iter_mut().enumerate() {
            *v = (mix64(i, j as u64) >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
        }
        index
            .add(
                ContentId::of(i.to_le_bytes()),
                Address::with_last_byte(i as u8),
                "snippet",
                &e,
            )
            .unwrap();
    }
    let q: Vec<f32> = (0..dim as u64)
        .map(|j| (mix64(u64::MAX, j) >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
        .collect();
    let data = index.embeddings();
    let t_scan = median_secs(5, || data.par_chunks(4096 * dim).map(sum_f32).sum::<f32>());
    let t_search = median_secs(5, || index.search(&q, 10).unwrap());
    let bytes = (n * dim * 4) as f64;
    report.figure("rag_embeddings", n as f64);
    report.figure("rag_top10_s", t_search);
    report.figure("rag_scan_gb_per_s", bytes / t_scan / 1e9);
    report.figure("rag_top10_gb_per_s", bytes / t_search / 1e9);
    report.ratio("rag_top10_vs_memory_scan", t_scan, t_search, "reported");
}

const WORDS: [&str; 32] = [
    "protein",
    "binding",
    "enzyme",
    "kinase",
    "receptor",
    "signal",
    "pathway",
    "cell",
    "membrane",
    "ligand",
    "inhibitor",
    "dose",
    "trial",
    "patient",
    "response",
    "gene",
    "expression",
    "tissue",
    "marker",
    "assay",
    "result",
    "model",
    "sample",
    "effect",
    "growth",
    "factor",
    "immune",
    "antibody",
    "virus",
    "host",
    "strain",
    "culture",
];

fn bench_dedup(report: &mut Report) {
    let n = env_usize("OPENLEDGER_POA_BENCH_DEDUP", 100_000);
    let mut s = SeededStream::new(1);
    let mut texts: Vec<String> = Vec::with_capacity(n);
    while texts.len() < n {
        if texts.len() > 10 && s.below(10) == 0 {
            // A near-duplicate of an earlier record: one word changed.
            let src = &texts[s.below(texts.len() as u64) as usize];
            let mut w: Vec<&str> = src.split(' ').collect();
            let at = s.below(w.len() as u64) as usize;
            w[at] = WORDS[s.below(32) as usize];
            texts.push(w.join(" "));
        } else {
            texts.push(
                (0..40)
                    .map(|_| WORDS[s.below(32) as usize])
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let cfg = MinHashConfig::default();
    let t_exact = median_secs(3, || {
        let ids: Vec<ContentId> = refs
            .par_iter()
            .map(|t| ContentId::of(t.as_bytes()))
            .collect();
        let mut first: HashMap<ContentId, usize> = HashMap::new();
        for (i, id) in ids.into_iter().enumerate() {
            first.entry(id).or_insert(i);
        }
        first.len()
    });
    let t_near = median_secs(3, || cluster_near_duplicates(&refs, &cfg).unwrap());
    let clusters = cluster_near_duplicates(&refs, &cfg).unwrap().groups().len();
    report.figure("dedup_records", n as f64);
    report.figure("dedup_clusters", clusters as f64);
    report.figure("near_dup_cluster_s", t_near);
    report.figure("near_dup_records_per_s", n as f64 / t_near);
    report.figure("exact_hash_dedup_s", t_exact);
    report.ratio("near_dup_time_vs_exact_hash", t_near, t_exact, "reported");
}

fn main() {
    let mut report = Report::new("poa");
    let only = std::env::var("OPENLEDGER_POA_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "store" {
        bench_store(&mut report);
    }
    if only.is_empty() || only == "rag" {
        bench_rag(&mut report);
    }
    if only.is_empty() || only == "dedup" {
        bench_dedup(&mut report);
    }
    let path = report.save().unwrap();
    println!("saved {}", path.display());
}
