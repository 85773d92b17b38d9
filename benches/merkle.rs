//! StandardMerkleTree of N `(uint256 index, address account, uint256 amount)` leaves: build the
//! tree and every proof in Rust, beside `@openzeppelin/merkle-tree` in node on the same leaves in
//! the same run (when node and the contracts' node_modules are present). Roots must agree.
//!
//! `OPENLEDGER_MERKLE_N` (default 1,000,000) sets the Rust size; `OPENLEDGER_MERKLE_NODE_N`
//! (default 100,000) the size both run at for the ratio: node needs about 9 minutes for 1M leaves
//! and all their proofs.
//!
//! Run: `cargo bench -p openledger-benches --bench merkle`

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use openledger_benches::Report;
use openledger_chain::DynSolValue;
use openledger_chain::claims::EpochClaims;
use openledger_chain::standard::{StandardMerkleTree, TreeOptions};
use openledger_core::RewardClaim;
use openledger_core::{Address, U256};

fn claim(i: usize) -> RewardClaim {
    let mask: U256 = (U256::from(1) << 160) - U256::from(1);
    let account: U256 =
        (U256::from(i as u64) * U256::from(0x9e3779b97f4a7c15u64) + U256::from(1)) & mask;
    RewardClaim {
        index: U256::from(i),
        account: Address::from_word(account.to_be_bytes::<32>().into()),
        amount: U256::from(i as u64) * U256::from(1_000_000_000_000_000u64) + U256::from(7),
    }
}

fn values(n: usize) -> Vec<Vec<DynSolValue>> {
    (0..n)
        .map(|i| {
            let c = claim(i);
            vec![
                DynSolValue::Uint(c.index, 256),
                DynSolValue::Address(c.account),
                DynSolValue::Uint(c.amount, 256),
            ]
        })
        .collect()
}

const ENC: [&str; 3] = ["uint256", "address", "uint256"];

/// Median seconds of `runs` builds of the tree plus all its proofs (each run gets fresh values).
fn rust_tree_and_proofs(n: usize, runs: usize) -> (f64, f64, String) {
    let base = values(n);
    let mut build = Vec::new();
    let mut proofs = Vec::new();
    let mut root = String::new();
    for _ in 0..runs {
        let v = base.clone();
        let t0 = Instant::now();
        let tree = StandardMerkleTree::of(v, &ENC, TreeOptions::default()).expect("tree");
        build.push(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        let all = tree.all_proofs();
        proofs.push(t0.elapsed().as_secs_f64());
        assert_eq!(all.len(), n);
        root = format!("{:#x}", tree.root());
    }
    build.sort_by(f64::total_cmp);
    proofs.sort_by(f64::total_cmp);
    (build[runs / 2], proofs[runs / 2], root)
}

struct NodeRun {
    root: String,
    build: f64,
    proofs: f64,
    wall: f64,
}

fn node_run(n: usize) -> Option<NodeRun> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../openledger-chain/contracts");
    if !dir.join("node_modules/@openzeppelin/merkle-tree").exists() {
        println!(
            "merkle: node_modules missing in openledger-chain/contracts (npm ci): Rust figures only"
        );
        return None;
    }
    let t0 = Instant::now();
    let out = Command::new("node")
        .arg("bench-merkle.mjs")
        .arg(n.to_string())
        .current_dir(&dir)
        .output()
        .ok()?;
    let wall = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        println!(
            "merkle: node failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |k: &str| -> Option<String> {
        let rest = &text[text.find(&format!("\"{k}\":"))? + k.len() + 3..];
        let end = rest.find([',', '}'])?;
        Some(rest[..end].trim_matches('"').to_string())
    };
    Some(NodeRun {
        root: field("root")?,
        build: field("buildSecs")?.parse().ok()?,
        proofs: field("proofsSecs")?.parse().ok()?,
        wall,
    })
}

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let n = env_usize("OPENLEDGER_MERKLE_N", 1_000_000);
    let node_n = env_usize("OPENLEDGER_MERKLE_NODE_N", 100_000);
    let mut r = Report::new("merkle");
    r.figure("threads", rayon::current_num_threads() as f64);

    let (build, proofs, _) = rust_tree_and_proofs(n, 3);
    r.figure(&format!("rust_{n}_build_s"), build);
    r.figure(&format!("rust_{n}_all_proofs_s"), proofs);
    r.figure(&format!("rust_{n}_total_s"), build + proofs);

    // The typed claims path (no dynamic ABI encoder).
    let claims: Vec<RewardClaim> = (0..n).map(claim).collect();
    let t0 = Instant::now();
    let epoch = EpochClaims::from_claims(0, claims).expect("claims");
    r.figure(
        &format!("rust_{n}_epoch_claims_build_s"),
        t0.elapsed().as_secs_f64(),
    );
    std::hint::black_box(epoch.root());

    // One thread, for a like-for-like comparison with single-threaded node.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let (b1, p1, _) = pool.install(|| rust_tree_and_proofs(n, 1));
    r.figure(&format!("rust_1thread_{n}_total_s"), b1 + p1);

    let (nb, np, rust_root) = rust_tree_and_proofs(node_n, 3);
    let (nb1, np1, _) = pool.install(|| rust_tree_and_proofs(node_n, 1));
    r.figure(&format!("rust_{node_n}_total_s"), nb + np);
    r.figure(&format!("rust_1thread_{node_n}_total_s"), nb1 + np1);
    if let Some(node) = node_run(node_n) {
        assert_eq!(node.root, rust_root, "node and Rust roots differ");
        r.figure(&format!("node_{node_n}_build_s"), node.build);
        r.figure(&format!("node_{node_n}_all_proofs_s"), node.proofs);
        r.figure(&format!("node_{node_n}_process_wall_s"), node.wall);
        let node_total = node.build + node.proofs;
        r.ratio(
            &format!("speedup_vs_node_{node_n}"),
            node_total,
            nb + np,
            ">= 20x",
        );
        r.ratio(
            &format!("speedup_1thread_vs_node_{node_n}"),
            node_total,
            nb1 + np1,
            ">= 20x",
        );
    }
    match r.save() {
        Ok(p) => println!("saved {}", p.display()),
        Err(e) => println!("could not save the report: {e}"),
    }
}
