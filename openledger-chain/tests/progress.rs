//! Large trees report their progress: leaves hashed in batches, the tree built, proofs made.

use std::sync::Mutex;

use openledger_chain::DynSolValue;
use openledger_chain::standard::{BuildProgress, BuildStage, StandardMerkleTree, TreeOptions};
use openledger_core::U256;

#[test]
fn building_a_large_tree_reports_monotonic_progress_to_completion() {
    let n = 150_000;
    let values: Vec<Vec<DynSolValue>> = (0..n)
        .map(|i| vec![DynSolValue::Uint(U256::from(i), 256)])
        .collect();
    let seen = Mutex::new(Vec::<BuildProgress>::new());
    let record = |p: BuildProgress| seen.lock().unwrap().push(p);
    let tree = StandardMerkleTree::of_with_progress(
        values.clone(),
        &["uint256"],
        TreeOptions::default(),
        &record,
    )
    .unwrap();
    let proofs = tree.all_proofs_with_progress(&record);
    assert_eq!(proofs.len(), n);
    let seen = seen.into_inner().unwrap();
    let hashed: Vec<usize> = seen
        .iter()
        .filter(|p| p.stage == BuildStage::LeavesHashed)
        .map(|p| p.done)
        .collect();
    assert_eq!(hashed, vec![65_536, 131_072, 150_000]);
    assert!(seen.contains(&BuildProgress {
        stage: BuildStage::TreeBuilt,
        done: n,
        total: n
    }));
    let last = seen.last().unwrap();
    assert_eq!(
        (last.stage, last.done, last.total),
        (BuildStage::Proofs, n, n)
    );
    // Reporting changes nothing: same root as the plain build, same proofs.
    let plain = StandardMerkleTree::of(values, &["uint256"], TreeOptions::default()).unwrap();
    assert_eq!(plain.root(), tree.root());
    assert_eq!(plain.proof(12_345).unwrap(), proofs[12_345]);
}
