//! The sentence embedder (all-MiniLM-L6-v2, `bash scripts/fetch-models.sh`) on the shipped
//! datanet's 124 records: sentences per second batched ([`BATCH`] texts per forward pass, the
//! tokens of a batch packed without padding) against the same texts embedded one at a time,
//! measured in the same run; and the exact paraphrase search over every pair of records.
//!
//! `cargo bench -p openledger-benches --bench embed`

use std::path::Path;

use openledger_benches::{Report, median_secs};
use openledger_lora::embed::{BATCH, SentenceEmbedder, fetched_model};
use openledger_poa::quality::{Clusters, merge_paraphrases};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/models");
    let dir = match fetched_model(&root, "all-MiniLM-L6-v2") {
        Ok(d) => d,
        Err(d) => {
            eprintln!(
                "{} is absent: run `bash scripts/fetch-models.sh`",
                d.display()
            );
            std::process::exit(2);
        }
    };
    let e = SentenceEmbedder::from_dir(&dir).expect("the model loads");
    let data = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../openledger/data/drug-facts.jsonl"),
    )
    .expect("the shipped datanet");
    let texts: Vec<String> = data
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON");
            v["content"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let tokens: usize = refs
        .iter()
        .map(|t| e.tokenize(t).expect("tokens").len())
        .sum();
    let runs = 5;
    let t_batched = median_secs(runs, || e.embed_batch(&refs).expect("embed"));
    let t_each = median_secs(runs, || {
        refs.iter()
            .map(|t| e.embed(t).expect("embed").len())
            .sum::<usize>()
    });
    let vectors = e.embed_batch(&refs).expect("embed").concat();
    let clusters = Clusters {
        cluster_of: (0..refs.len()).collect(),
    };
    let t_pairs = median_secs(runs, || {
        merge_paraphrases(&clusters, &vectors, e.dim(), 0.84).expect("search")
    });
    let mut report = Report::new("embed");
    let n = refs.len() as f64;
    report.figure("texts", n);
    report.figure("tokens", tokens as f64);
    report.figure("batch", BATCH as f64);
    report.figure("batched_sentences_per_s", n / t_batched);
    report.figure("one_at_a_time_sentences_per_s", n / t_each);
    report.figure("paraphrase_search_all_pairs_s", t_pairs);
    report.ratio(
        "batched_vs_one_at_a_time",
        t_batched,
        t_each,
        "< 1: packing a batch pays",
    );
    match report.save() {
        Ok(p) => println!("saved {}", p.display()),
        Err(e) => eprintln!("could not save the report: {e}"),
    }
}
