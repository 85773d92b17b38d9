//! Paraphrased copies: the threshold chosen on labelled pairs, and pat's re-worded copies of
//! bob's records caught in the loop by sentence embeddings (all-MiniLM-L6-v2) and missed by
//! MinHash alone.
//!
//! The model comes from `bash scripts/fetch-models.sh` (into `target/models`, or
//! `$OPENLEDGER_MODELS`). Without it these tests say so and pass, unless
//! `OPENLEDGER_REQUIRE_MODELS=1` (as the full test script sets).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use openledger::core::{Address, U256};
use openledger::lora::embed::{SentenceEmbedder, fetched_model_or_skip};
use openledger::payable::paraphrase::{calibrate, parse_pairs};
use openledger::payable::{
    DRUG_FACTS_JSONL, DRUG_FACTS_PARAPHRASED_JSONL, DatanetReport, LoopConfig, LoopEvent,
    PARAPHRASE_PAIRS_JSONL, PARAPHRASE_THRESHOLD, PayableAi,
};

fn model_dir() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/models");
    fetched_model_or_skip(&root, "all-MiniLM-L6-v2").unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_threshold_chosen_on_the_tuning_half_holds_on_the_test_half() {
    let Some(dir) = model_dir() else { return };
    let model = SentenceEmbedder::from_dir(&dir).unwrap();
    let pairs = parse_pairs(PARAPHRASE_PAIRS_JSONL).unwrap();
    assert_eq!(pairs.len(), 1800);
    let c = calibrate(&model, &pairs, 0.5, &mut |_, _| {}).unwrap();
    eprintln!("{c:#?}");
    // The shipped threshold is the one the tuning half gives (rounded to 0.01).
    assert!(
        (c.tune.threshold - PARAPHRASE_THRESHOLD).abs() <= 0.005,
        "tuned {} vs shipped {PARAPHRASE_THRESHOLD}",
        c.tune.threshold
    );
    // On drugs the threshold never saw: few false copies, few missed paraphrases.
    assert_eq!((c.test.pairs, c.test.positives), (900, 300));
    assert!(c.test.precision >= 0.97, "{:?}", c.test);
    assert!(c.test.recall >= 0.95, "{:?}", c.test);
    assert!(parse_pairs("{\"a\": \"x\", \"b\": \"y\", \"label\": true}\n").is_err());
}

fn address(s: &str) -> Address {
    s.parse().unwrap()
}

/// Stages 1 to 4 of the quick loop on the shipped datanet plus pat's paraphrases: the datanet
/// report and what each contributor is paid.
fn run(embedder: Option<PathBuf>, work: &Path) -> (DatanetReport, BTreeMap<Address, U256>) {
    let mut c = LoopConfig::quick(work.to_path_buf());
    c.datanet_jsonl = format!("{DRUG_FACTS_JSONL}{DRUG_FACTS_PARAPHRASED_JSONL}");
    c.counterfactual = false;
    c.embedder = embedder;
    let mut l = PayableAi::new(c).unwrap();
    let mut on = |_: &LoopEvent| {};
    let d = l.publish_datanet(&mut on).unwrap().clone();
    l.fine_tune(&mut on).unwrap();
    l.serve(&mut on).unwrap();
    let mut paid = BTreeMap::<Address, U256>::new();
    for r in l.attribute_and_pay(&mut on).unwrap() {
        for (a, v) in &r.contributors {
            *paid.entry(*a).or_default() += v.parse::<U256>().unwrap();
        }
    }
    (d, paid)
}

#[test]
fn paraphrased_copies_are_caught_by_sentence_embeddings_and_missed_by_minhash() {
    let Some(model) = model_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let pat = address("0x9a7000000000000000000000000000000000009a");
    let bob = address("0x00000000000000000000000000000000000b0b00");
    // Which records are copies, by the generator's own account (metadata `copy_of`).
    let lines: Vec<serde_json::Value> = format!("{DRUG_FACTS_JSONL}{DRUG_FACTS_PARAPHRASED_JSONL}")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let is_copy = |i: usize| lines[i]["metadata"].get("copy_of").is_some();

    let (minhash, paid_minhash) = run(None, &dir.path().join("minhash"));
    assert!(minhash.embedder.starts_with("feature hashing"));
    assert_eq!(minhash.paraphrases, 0);
    // MinHash catches the re-wordings that keep a long answer's characters, not the others.
    let by_minhash = minhash
        .copies
        .iter()
        .filter(|c| c.contributor == pat)
        .count();
    assert!(by_minhash < 12);
    assert!(paid_minhash.get(&pat).is_some_and(|v| *v > U256::ZERO));

    let (d, paid) = run(Some(model), &dir.path().join("minilm"));
    assert!(
        d.embedder.starts_with("all-MiniLM-L6-v2 (384 dims)"),
        "{}",
        d.embedder
    );
    let caught: Vec<_> = d.copies.iter().filter(|c| c.contributor == pat).collect();
    eprintln!(
        "pat: {} of 12 caught ({by_minhash} by MinHash alone), cosines {:?}; pat paid {:?} with the model, {:?} without",
        caught.len(),
        caught.iter().map(|c| c.paraphrase).collect::<Vec<_>>(),
        paid.get(&pat),
        paid_minhash.get(&pat)
    );
    // More of pat's 12 re-wordings than MinHash finds (their cosines with bob's originals:
    // 0.84-0.96), each a copy of bob's record.
    assert!(
        caught.len() >= 9 && caught.len() > by_minhash,
        "{} caught",
        caught.len()
    );
    assert!(caught.iter().all(|c| c.owner == bob));
    // No honest record is taken for a copy: every flagged record is one the generator copied.
    for c in &d.copies {
        assert!(
            is_copy(c.record),
            "record {} is not a copy: {c:?}",
            c.record
        );
    }
    assert_eq!(
        d.paraphrases,
        caught.iter().filter(|c| c.paraphrase.is_some()).count()
    );
    assert!(d.paraphrases > 0);
    // Caught copies earn nothing: what pat is paid shrinks.
    assert!(paid.get(&pat).copied().unwrap_or_default() < paid_minhash[&pat]);
}
