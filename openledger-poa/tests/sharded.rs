//! A feature store split into shards: the shards merge back into the store's bytes, and every
//! scoring method over the shards (DataInf in its three passes) equals the whole store's bit for
//! bit, for 1 to 4 shards; bad splits, merges and partial sums are typed errors that leave
//! other files alone.

use openledger_core::{Address, ContentId};
use openledger_poa::PoaError;
use openledger_poa::influence::score::{DataInf, ScoreMethod, score};
use openledger_poa::influence::sharded::{
    DataInfNorms, DataInfResidual, datainf_norms, datainf_residual, score_weights,
};
use openledger_poa::projection::{Projection, ProjectionKind};
use openledger_poa::rng::SeededStream;
use openledger_poa::store::{
    FeatureDType, FeatureStore, FeatureStoreWriter, SHARD_BLOCK, StoreConfig, TrainingExample,
};

fn config(dtype: FeatureDType) -> StoreConfig {
    StoreConfig::new(
        Projection::new(ProjectionKind::Rademacher, 3, 200, 32).unwrap(),
        vec![0.1, 0.05],
        dtype,
    )
    .unwrap()
}

fn store(path: &std::path::Path, cfg: StoreConfig, n: usize) -> FeatureStore {
    let mut s = SeededStream::new(11);
    let (p, c) = (cfg.projection.input_dim, cfg.checkpoints());
    let ex: Vec<TrainingExample> = (0..n)
        .map(|i| TrainingExample {
            record: ContentId::of((i as u64).to_le_bytes()),
            contributor: Address::with_last_byte((i % 7) as u8 + 1),
            gradients: (0..c)
                .map(|_| (0..p).map(|_| s.next_gaussian() as f32).collect())
                .collect(),
        })
        .collect();
    let mut w = FeatureStoreWriter::create(path, cfg).unwrap();
    w.append_batch(&ex).unwrap();
    FeatureStore::open(path).unwrap()
}

#[test]
fn shards_merge_into_the_stores_bytes_and_score_as_it_does() {
    let dir = tempfile::tempdir().unwrap();
    for dtype in [FeatureDType::F16, FeatureDType::F32] {
        let n = 3 * SHARD_BLOCK + 217;
        let whole = store(
            &dir.path().join(format!("{dtype:?}.olfs")),
            config(dtype),
            n,
        );
        let mut s = SeededStream::new(99);
        let raw: Vec<Vec<f32>> = (0..2)
            .map(|_| (0..200).map(|_| s.next_gaussian() as f32).collect())
            .collect();
        let q = whole.project_query(&raw).unwrap();
        let datainf = DataInf {
            layers: vec![0..16, 16..32],
            lambda_scale: 0.1,
        };
        let single: Vec<Vec<f32>> = [
            ScoreMethod::TracIn,
            ScoreMethod::Cosine,
            ScoreMethod::DataInf(datainf.clone()),
        ]
        .iter()
        .map(|m| score(&whole, &q, m, |_| {}).unwrap().values)
        .collect();
        for shards in 1..=4 {
            let sub = dir.path().join(format!("{dtype:?}-{shards}"));
            std::fs::create_dir(&sub).unwrap();
            let paths = whole.split(&sub, shards).unwrap();
            assert_eq!(paths.len(), shards);
            let parts: Vec<FeatureStore> = paths
                .iter()
                .map(|p| FeatureStore::open(p).unwrap())
                .collect();
            // Whole blocks in every shard but the last; the first shards take the extra block.
            let sizes: Vec<usize> = parts.iter().map(FeatureStore::len).collect();
            assert_eq!(sizes.iter().sum::<usize>(), n);
            assert!(sizes[..shards - 1].iter().all(|s| s % SHARD_BLOCK == 0));
            assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
            // Merged in order: the store's bytes.
            let merged = FeatureStore::merge(&paths, sub.join("merged.olfs")).unwrap();
            assert_eq!(
                std::fs::read(merged.path()).unwrap(),
                std::fs::read(whole.path()).unwrap(),
                "{dtype:?}, {shards} shards"
            );
            // Row-wise methods: each shard's scores are its rows' scores.
            for (m, method) in [ScoreMethod::TracIn, ScoreMethod::Cosine]
                .iter()
                .enumerate()
            {
                let sharded: Vec<f32> = parts
                    .iter()
                    .flat_map(|p| score(p, &q, method, |_| {}).unwrap().values)
                    .collect();
                assert_eq!(sharded, single[m], "{method:?}, {shards} shards");
            }
            // DataInf in three passes over the shards.
            let norms: Vec<DataInfNorms> = parts
                .iter()
                .map(|p| datainf_norms(p, &datainf, |_| {}).unwrap())
                .collect();
            let lambdas = DataInfNorms::concat(&norms)
                .unwrap()
                .lambdas(datainf.lambda_scale)
                .unwrap();
            let residuals: Vec<DataInfResidual> = parts
                .iter()
                .map(|p| datainf_residual(p, &q, &datainf, &lambdas, |_| {}).unwrap())
                .collect();
            let w = DataInfResidual::concat(&residuals)
                .unwrap()
                .weights(whole.config(), &q, &datainf, &lambdas)
                .unwrap();
            let sharded: Vec<f32> = parts
                .iter()
                .flat_map(|p| score_weights(p, &w, |_| {}).unwrap().values)
                .collect();
            assert_eq!(sharded, single[2], "DataInf, {dtype:?}, {shards} shards");
        }
    }
}

#[test]
fn bad_splits_merges_and_partial_sums_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let n = 2 * SHARD_BLOCK + 10;
    let whole = store(&dir.path().join("w.olfs"), config(FeatureDType::F16), n);
    for shards in [0, 4] {
        let err = whole.split(dir.path(), shards).unwrap_err();
        assert!(
            matches!(&err, PoaError::InvalidConfig { what, .. } if what == "shards"),
            "{err}"
        );
    }
    // A shard file already there is refused and left as it was; nothing else is written.
    let taken = dir.path().join("w.shard-001-of-002.olfs");
    std::fs::write(&taken, b"someone else's").unwrap();
    let err = whole.split(dir.path(), 2).unwrap_err();
    assert!(
        matches!(&err, PoaError::Io { path, .. } if *path == taken),
        "{err}"
    );
    assert_eq!(std::fs::read(&taken).unwrap(), b"someone else's");
    assert!(!dir.path().join("w.shard-000-of-002.olfs").exists());
    std::fs::remove_file(&taken).unwrap();
    let paths = whole.split(dir.path(), 2).unwrap();

    // Stores of another configuration do not merge; the output is not left behind.
    let other = store(&dir.path().join("o.olfs"), config(FeatureDType::F32), 3);
    let out = dir.path().join("m.olfs");
    let err =
        FeatureStore::merge(&[paths[0].clone(), other.path().to_path_buf()], &out).unwrap_err();
    assert!(
        matches!(&err, PoaError::ProjectionMismatch { path, .. } if path == other.path()),
        "{err}"
    );
    assert!(!out.exists());
    let none: [&std::path::Path; 0] = [];
    assert!(matches!(
        FeatureStore::merge(&none, &out),
        Err(PoaError::Empty { .. })
    ));
    // A truncated shard is named.
    let cut = dir.path().join("cut.olfs");
    let bytes = std::fs::read(&paths[1]).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 7]).unwrap();
    let err = FeatureStore::merge(&[paths[0].clone(), cut.clone()], &out).unwrap_err();
    assert!(
        matches!(&err, PoaError::Truncated { path, .. } if *path == cut),
        "{err}"
    );
    // An existing output is refused and kept.
    std::fs::write(&out, b"keep").unwrap();
    assert!(FeatureStore::merge(&paths, &out).is_err());
    assert_eq!(std::fs::read(&out).unwrap(), b"keep");

    // Partial sums out of block alignment, of other shapes, or with bad lambdas.
    let cfg = DataInf {
        layers: vec![],
        lambda_scale: 0.1,
    };
    let a = datainf_norms(&whole, &cfg, |_| {}).unwrap();
    let err = DataInfNorms::concat(&[a.clone(), a.clone()]).unwrap_err();
    assert!(err.to_string().contains("whole blocks"), "{err}");
    let mut wrong = a.clone();
    wrong.sums.pop();
    assert!(DataInfNorms::concat(&[wrong]).is_err());
    assert!(matches!(
        DataInfNorms::concat(&[]),
        Err(PoaError::Empty { .. })
    ));
    // Sizes that would overflow, or no width, are errors, not panics.
    let huge = DataInfNorms {
        rows: usize::MAX,
        segments: 3,
        sums: vec![],
    };
    assert!(DataInfNorms::concat(&[huge.clone(), huge]).is_err());
    let half = usize::MAX / 2 + 1;
    let blocks = DataInfNorms {
        rows: half - half % SHARD_BLOCK,
        segments: 1,
        sums: vec![],
    };
    assert!(DataInfNorms::concat(&[blocks.clone(), blocks]).is_err());
    let flat = DataInfNorms {
        rows: 5,
        segments: 0,
        sums: vec![],
    };
    assert!(flat.lambdas(0.1).is_err());
    assert!(a.lambdas(f64::NAN).is_err());
    let lambdas = a.lambdas(0.1).unwrap();
    let q = whole
        .project_query(&[vec![0.5; 200], vec![-0.5; 200]])
        .unwrap();
    assert!(datainf_residual(&whole, &q, &cfg, &[f64::NAN], |_| {}).is_err());
    assert!(datainf_residual(&whole, &q, &cfg, &[1.0, 1.0, 1.0], |_| {}).is_err());
    let r = datainf_residual(&whole, &q, &cfg, &lambdas, |_| {}).unwrap();
    assert!(r.weights(whole.config(), &q, &cfg, &[0.0, 1.0]).is_err());
    assert!(score_weights(&whole, &[1.0; 3], |_| {}).is_err());
    assert!(score_weights(&whole, &[f32::INFINITY; 64], |_| {}).is_err());
}
