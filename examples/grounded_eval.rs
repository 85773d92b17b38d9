//! Grounded answers on SmolLM2-135M-Instruct, measured: the shipped datanet's sixty questions
//! answered with retrieval (all-MiniLM-L6-v2, top-k records numbered in the prompt) and
//! without, scored against the owner's gold answers (exact match and token F1, SQuAD's
//! normalisation); ContextCite run on every grounded answer, its top source compared with the
//! record that holds the answer, its surrogate judged on held-out masks; timings of the
//! embedder, of an answer and of its ContextCite.
//!
//! `cargo run --release --example grounded_eval -- [questions] [out.json] [--no-cite]`
//!
//! Needs the models (`bash scripts/fetch-models.sh`).

use std::time::Instant;

use openledger::core::datanet::Datanet;
use openledger::grounded::{GroundedConfig, SourceRecord, exact_match, normalize_answer, token_f1};
use openledger::payable::{DRUG_FACTS_JSONL, DRUG_FACTS_VALIDATION_JSONL, without_copies};
use openledger_examples::{load_grounded, progress_bar};
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: the first thing `main` does, before any other thread runs.
    unsafe { openledger::lora::fix_cpu_threads() };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let limit: usize = args.first().map_or(Ok(60), |a| a.parse())?;
    let out = args
        .get(1)
        .map_or("target/grounded_eval.json", String::as_str);
    // `--no-cite`: answers only (a quick look at their quality).
    let cite = !args.iter().any(|a| a == "--no-cite");

    let t = Instant::now();
    let mut g = load_grounded(GroundedConfig::default())?;
    let load_s = t.elapsed().as_secs_f64();

    let mut datanet = Datanet::new("drug-facts");
    datanet.import_jsonl(without_copies(DRUG_FACTS_JSONL).as_bytes())?;
    let records: Vec<SourceRecord> = datanet
        .records()
        .iter()
        .map(SourceRecord::from_record)
        .collect();
    let t = Instant::now();
    g.index(&records, &mut |done, total| {
        progress_bar("embedding records", done, total)
    })?;
    let embed_s = t.elapsed().as_secs_f64();

    let questions: Vec<(String, String)> = DRUG_FACTS_VALIDATION_JSONL
        .lines()
        .take(limit)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("shipped JSONL");
            (
                v["prompt"].as_str().unwrap_or_default().to_owned(),
                v["response"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let gold_record = |q: &str| {
        datanet
            .records()
            .iter()
            .find(|r| r.metadata.get("prompt").and_then(|p| p.as_str()) == Some(q))
            .map(|r| r.hash)
    };

    let mut rows = Vec::new();
    let (mut em, mut f1, mut em0, mut f10) = (0.0, 0.0, 0.0, 0.0);
    let (mut retrieved_gold, mut top_is_gold, mut with_markers) = (0, 0, 0);
    // Answers that copy exactly one retrieved record's response, and of those, how many
    // ContextCite credits to that record.
    let (mut copied, mut top_is_origin) = (0, 0);
    let response_of = |record| {
        datanet
            .records()
            .iter()
            .find(|r| r.hash == record)
            .and_then(|r| r.metadata.get("response").and_then(|v| v.as_str()))
            .unwrap_or_default()
            .to_owned()
    };
    let copies = |answer: &str, response: &str| {
        let (a, r) = (normalize_answer(answer), normalize_answer(response));
        !r.is_empty() && a.windows(r.len()).any(|w| w == r.as_slice())
    };
    let (mut answer_s, mut plain_s, mut cite_s, mut prompts_scored) = (0.0, 0.0, 0.0, 0);
    let mut lds = Vec::new();
    let mut drops = Vec::new();
    for (i, (q, gold)) in questions.iter().enumerate() {
        progress_bar("answering", i, questions.len());
        let question = format!("{q}?");
        let t = Instant::now();
        let plain = g.answer(&question, &[], &mut |_| true)?;
        plain_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let sources = g.retrieve(&question)?;
        let answer = g.answer(&question, &sources, &mut |_| true)?;
        answer_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        // An empty answer (the model stopped at once) has nothing to credit.
        let credit = if cite && !answer.tokens.is_empty() {
            g.cite(&answer, &mut |_, _| {})?
        } else {
            Default::default()
        };
        cite_s += t.elapsed().as_secs_f64();
        prompts_scored += credit.prompts_scored;

        let want = gold_record(q);
        let gold_at = sources.iter().position(|s| Some(s.record) == want);
        retrieved_gold += usize::from(gold_at.is_some());
        let top = credit.top_source();
        top_is_gold += usize::from(top.is_some() && top == gold_at);
        with_markers += usize::from(!answer.cited.is_empty());
        let origins: Vec<usize> = (0..sources.len())
            .filter(|&k| copies(&answer.text, &response_of(sources[k].record)))
            .collect();
        let origin = (origins.len() == 1).then(|| origins[0]);
        copied += usize::from(origin.is_some());
        top_is_origin += usize::from(origin.is_some() && top == origin);
        let (e, f) = (
            exact_match(&answer.text, gold),
            token_f1(&answer.text, gold),
        );
        let (e0, f0) = (exact_match(&plain.text, gold), token_f1(&plain.text, gold));
        em += e;
        f1 += f;
        em0 += e0;
        f10 += f0;
        if let Some(l) = credit.held_out_lds {
            lds.push(l);
        }
        drops.push(credit.top_drop);
        rows.push(json!({
            "question": question, "gold": gold,
            "grounded": answer.text, "plain": plain.text,
            "f1": f, "f1_plain": f0,
            "gold_source": gold_at.map(|a| a + 1), "top_source": top.map(|a| a + 1),
            "origin_source": origin.map(|a| a + 1),
            "cited": answer.cited, "weights": credit.weights,
            "held_out_lds": credit.held_out_lds, "top_drop": credit.top_drop,
        }));
    }
    progress_bar("answering", questions.len(), questions.len());
    let n = questions.len() as f64;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let report = json!({
        "model": "SmolLM2-135M-Instruct Q4_1 (dequantized to f32)",
        "embedder": "all-MiniLM-L6-v2",
        "questions": questions.len(),
        "top_k": g.config().top_k,
        "ablations": g.config().context_cite.samples,
        "held_out_masks": g.config().held_out,
        "exact_match": {"grounded": em / n, "plain": em0 / n},
        "token_f1": {"grounded": f1 / n, "plain": f10 / n},
        "gold_record_retrieved": retrieved_gold as f64 / n,
        "contextcite_top_is_gold": top_is_gold as f64 / n,
        "answers_copying_one_record": copied,
        "contextcite_top_is_copied_record": top_is_origin as f64 / copied.max(1) as f64,
        "answers_with_citation_markers": with_markers as f64 / n,
        "held_out_lds_mean": mean(&lds),
        "top_drop_mean_nats": mean(&drops),
        "seconds": {
            "load": load_s,
            "embed_records": embed_s,
            "embedder_sentences_per_s": records.len() as f64 / embed_s,
            "plain_answer_mean": plain_s / n,
            "grounded_answer_mean": answer_s / n,
            "contextcite_mean": cite_s / n,
            "contextcite_over_grounded_answer": cite_s / answer_s,
            "prompts_scored_per_answer": prompts_scored as f64 / n,
        },
        "answers": rows,
    });
    std::fs::write(out, serde_json::to_string_pretty(&report)?)?;
    let mut summary = report.clone();
    summary.as_object_mut().map(|o| o.remove("answers"));
    println!("{}", serde_json::to_string_pretty(&summary)?);
    println!("wrote {out}");
    Ok(())
}
