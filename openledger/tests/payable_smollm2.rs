//! The Payable-AI loop on a pretrained model: one LoRA fine-tuned over SmolLM2-135M-Instruct
//! (GGUF) on the shipped datanet, two requests answered from the records retrieved for them,
//! the RAG part of each pool split by ContextCite over those records, receipts, payments, the
//! epoch and every claim as on the random base. Kept short for the test suite (8 steps, one
//! checkpoint, no validation set, 16 ablations); `cargo run --release --example payable_ai --
//! --model smollm2` runs the configuration in full. Skipped with a message when the models are
//! absent, unless `OPENLEDGER_REQUIRE_MODELS=1`.

use std::path::Path;

use openledger::core::U256;
use openledger::grounded::normalize_answer;
use openledger::lora::embed::fetched_model_or_skip;
use openledger::payable::{LoopConfig, PayableAi};

#[test]
fn adapters_over_smollm2_answer_from_retrieved_records_and_context_cite_splits_their_part() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/models");
    let (Some(smol), Some(minilm)) = (
        fetched_model_or_skip(&root, "SmolLM2-135M-Instruct").unwrap_or_else(|e| panic!("{e}")),
        fetched_model_or_skip(&root, "all-MiniLM-L6-v2").unwrap_or_else(|e| panic!("{e}")),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut c = LoopConfig::smollm2_quick(
        dir.path().to_path_buf(),
        smol.join("SmolLM2-135M-Instruct.Q4_1.gguf"),
    );
    c.embedder = Some(minilm);
    c.adapters.truncate(1);
    c.requests = c
        .requests
        .into_iter()
        .filter(|r| r.adapter == c.adapters[0].name)
        .take(2)
        .collect();
    c.steps = 8;
    c.checkpoints = 1;
    c.validation_jsonl = None;
    c.context_cite_samples = 16;

    // The counterfactual trains again on the random base only.
    let mut refused = c.clone();
    refused.counterfactual = true;
    assert!(PayableAi::new(refused).is_err());

    let report = PayableAi::run(c, &mut |_| {}).unwrap();
    assert!(
        report.base_model.starts_with("SmolLM2-135M-Instruct"),
        "{}",
        report.base_model
    );
    let a = &report.adapters[0];
    assert!(
        a.last_loss < a.first_loss,
        "{} → {}",
        a.first_loss,
        a.last_loss
    );

    let datanet = openledger::payable::DRUG_FACTS_JSONL;
    let response_of = |record: &openledger::core::ContentId| -> String {
        datanet
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| {
                openledger::core::ContentId::of(v["content"].as_str().unwrap().as_bytes())
                    == *record
            })
            .map(|v| v["metadata"]["response"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let mut copied = 0;
    for q in &report.requests {
        assert!(
            !q.answer.trim().is_empty(),
            "request {} has no answer",
            q.index
        );
        // The records in the prompt, credited by ContextCite: shares sum to one, largest first.
        assert_eq!(q.citations.len(), 3, "{:?}", q.citations);
        let total: f64 = q.citations.iter().map(|c| c.share).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        assert!(q.citations.windows(2).all(|w| w[0].share >= w[1].share));
        // An answer that copies exactly one source's response credits that source most.
        let answer = normalize_answer(&q.answer);
        let copies: Vec<_> = q
            .citations
            .iter()
            .filter(|c| {
                let r = normalize_answer(&response_of(&c.record));
                answer.windows(r.len()).any(|w| w == r.as_slice())
            })
            .collect();
        if copies.len() == 1 {
            copied += 1;
            assert_eq!(
                copies[0].record, q.citations[0].record,
                "{}: {:?}",
                q.answer, q.citations
            );
        }
        // Every wei of the pool is split.
        let pool: U256 = q.data_pool_wei.parse().unwrap();
        let paid: U256 = q
            .contributors
            .values()
            .map(|v| v.parse::<U256>().unwrap())
            .sum();
        assert_eq!(paid, pool);
    }
    assert!(
        copied >= 1,
        "no answer copied a source: {:?}",
        report.requests
    );
    let epoch = report.epoch.as_ref().unwrap();
    assert!(epoch.claims_match);
    assert_eq!(epoch.rewards_left_wei, "0");
}
