//! Vectors of data provenance: a datanet's versions, its records' hashes and inclusion proofs,
//! and a training log's usage proofs (as bytes), with what each check must answer.

use openledger_core::datanet::Datanet;
use openledger_core::trainlog::{TrainLog, TrainStep};
use openledger_core::{Address, B256, ContentId};
use serde_json::{Value, json};

use crate::{addr, h, hashes, hex, named, named_address};

fn record_lines() -> Vec<(String, Address)> {
    [
        ("Aspirin irreversibly inhibits cyclooxygenase.", "alice"),
        ("Metformin lowers hepatic glucose output.", "bob"),
        ("Donepezil inhibits acetylcholinesterase.", "carol"),
        (
            "Lisinopril inhibits angiotensin-converting enzyme.",
            "alice",
        ),
        ("Atorvastatin inhibits HMG-CoA reductase.", "dave"),
    ]
    .into_iter()
    .map(|(c, who)| (c.to_string(), named_address(who)))
    .collect()
}

/// `datanet`: the JSONL lines, then per version its root and every record's hash and proof.
pub fn datanet() -> Value {
    let lines = record_lines();
    let jsonl: Vec<String> = lines
        .iter()
        .map(|(c, who)| {
            json!({"content": c, "contributor": addr(who), "license": "CC-BY-4.0"}).to_string()
        })
        .collect();
    let mut net = Datanet::new("vectors");
    net.import_jsonl(jsonl[..3].join("\n").as_bytes()).unwrap();
    net.commit().unwrap();
    net.import_jsonl(jsonl[3..].join("\n").as_bytes()).unwrap();
    net.commit().unwrap();
    let versions: Vec<Value> = net
        .versions()
        .iter()
        .map(|v| {
            let records: Vec<Value> = (0..v.record_count)
                .map(|i| {
                    json!({
                        "hash": net.records()[i].hash.to_string(),
                        "proof": hashes(&net.inclusion_proof(v.number, i).unwrap()),
                    })
                })
                .collect();
            json!({"number": v.number, "record_count": v.record_count, "root": h(&v.root), "records": records})
        })
        .collect();
    json!({"name": "vectors", "jsonl": jsonl, "versions": versions})
}

/// `usage_proofs`: a training log's head and, per proof, its bytes, the record, the step it
/// proves, and a head it must not verify against.
pub fn usage_proofs() -> Value {
    let ids: Vec<ContentId> = record_lines()
        .iter()
        .map(|(c, _)| ContentId::of(c.as_bytes()))
        .collect();
    let mut log = TrainLog::new(named("vectors base model"), named("vectors adapter config"));
    for s in 1..=4u64 {
        let batch: Vec<ContentId> = (0..2).map(|k| ids[((s as usize) * 2 + k) % 5]).collect();
        let mut step = TrainStep::new(s, batch, 3.0 / s as f64, 1e-3);
        if s == 2 {
            step = step.with_checkpoint(named("vectors checkpoint"));
        }
        log.append(step).unwrap();
    }
    let proofs: Vec<Value> = [(ids[2], 1u64), (ids[0], 2), (ids[1], 3)]
        .into_iter()
        .map(|(record, step)| {
            let p = log.prove(&record, step).unwrap();
            json!({"record": record.to_string(), "step": step, "proof": hex(&p.to_bytes())})
        })
        .collect();
    json!({
        "base_model": h(&log.base_model()),
        "adapter_config_hash": h(&log.adapter_config_hash()),
        "head": h(&log.head()),
        "other_head": h(&B256::repeat_byte(0x5a)),
        "proofs": proofs,
    })
}
