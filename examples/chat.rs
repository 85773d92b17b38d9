//! A terminal chat over a datanet with a real model: SmolLM2-135M-Instruct answers from the
//! records all-MiniLM-L6-v2 retrieves (one per near-duplicate cluster, so copies are never
//! cited), the answer streams as it is generated, ContextCite credits each source, and the
//! turn's fee is split to the wei: the protocol's and the data pool's basis points as the
//! `InferencePayments` contract takes them, the model owner the rest, the pool by ContextCite
//! share among the contributors of the sources.
//!
//! `cargo run --release --example chat -- [--datanet FILE.jsonl] [--fee WEI] [--ask QUESTION]…`
//!
//! With `--ask` it answers those questions and exits; otherwise it reads questions from
//! standard input, one per line. The datanet defaults to the shipped drug facts (with their
//! re-worded and copied records). Needs the models (`bash scripts/fetch-models.sh`).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use openledger::core::datanet::Datanet;
use openledger::core::{Address, U256};
use openledger::grounded::GroundedConfig;
use openledger::payable::{DRUG_FACTS_JSONL, LoopConfig, PARAPHRASE_THRESHOLD};
use openledger::poa::split::{FeeSplit, SplitPolicy};
use openledger_examples::{load_grounded, progress_bar};

type Error = Box<dyn std::error::Error>;

struct Args {
    datanet: Option<PathBuf>,
    fee: U256,
    ask: Vec<String>,
}

fn args() -> Result<Args, Error> {
    let mut out = Args {
        datanet: None,
        // 0.001 of an 18-decimal token
        fee: U256::from(10u64).pow(U256::from(15u64)),
        ask: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--datanet" => out.datanet = Some(value()?.into()),
            "--fee" => out.fee = value()?.parse()?,
            "--ask" => out.ask.push(value()?),
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    Ok(out)
}

fn short(a: Address) -> String {
    let s = a.to_string();
    format!("{}…{}", &s[..6], &s[s.len() - 4..])
}

fn main() -> Result<(), Error> {
    // SAFETY: the first thing `main` does, before any other thread runs.
    unsafe { openledger::lora::fix_cpu_threads() };
    let args = args()?;
    let mut g = load_grounded(GroundedConfig::default())?;

    let mut datanet = Datanet::new("chat");
    match &args.datanet {
        Some(path) => datanet.import_jsonl(std::io::BufReader::new(std::fs::File::open(path)?))?,
        None => datanet.import_jsonl(DRUG_FACTS_JSONL.as_bytes())?,
    };
    let loop_defaults = LoopConfig::standard(std::env::temp_dir());
    let indexed = g.index_datanet(
        &datanet,
        &loop_defaults.near_duplicates,
        PARAPHRASE_THRESHOLD,
        &mut |done, total| progress_bar("embedding records", done, total),
    )?;
    println!(
        "{} records indexed; {} near-duplicate copies left out (never retrieved, never paid)",
        indexed.kept.len(),
        indexed.copies.len()
    );
    // The fee split the InferencePayments contract applies by default.
    let [admin, treasury, operator, poster, owner] = [1u8, 2, 3, 4, 5].map(Address::repeat_byte);
    let deploy =
        openledger::chain::deploy::DeployConfig::with_accounts([admin, treasury, operator, poster]);
    let split = FeeSplit {
        owner,
        protocol: deploy.treasury,
        protocol_bps: deploy.protocol_bps,
        data_pool_bps: deploy.data_pool_bps,
        policy: SplitPolicy::default(),
    };
    println!(
        "fee per answer {} wei: protocol {} bps, data pool {} bps, model owner the rest\n",
        args.fee, split.protocol_bps, split.data_pool_bps
    );

    let turn = |question: &str| -> Result<(), Error> {
        let question = question.trim();
        if question.is_empty() {
            return Ok(());
        }
        let t = Instant::now();
        let sources = g.retrieve(question)?;
        print!("> ");
        let answer = g.answer(question, &sources, &mut |piece| {
            print!("{piece}");
            let _ = std::io::stdout().flush();
            true
        })?;
        println!("   ({:.1} s)", t.elapsed().as_secs_f64());
        let t = Instant::now();
        let credit = g.cite(&answer, &mut |done, total| {
            progress_bar("ContextCite ablations", done, total)
        })?;
        let shares = credit.shares();
        println!(
            "sources (ContextCite, {} prompts in {:.1} s; held-out Spearman {}):",
            credit.prompts_scored,
            t.elapsed().as_secs_f64(),
            credit
                .held_out_lds
                .map_or("n/a".into(), |l| format!("{l:.2}"))
        );
        for (s, share) in sources.iter().zip(&shares) {
            println!(
                "  [{}] {:>5.1}%  {}  ({}, relevance {:.2})",
                s.number,
                share * 100.0,
                s.text,
                short(s.contributor),
                s.relevance
            );
        }
        // One score per contributor: the shares of their sources summed.
        let mut by_contributor = std::collections::BTreeMap::<Address, f64>::new();
        for (s, w) in sources.iter().zip(&shares).filter(|(_, w)| **w > 0.0) {
            *by_contributor.entry(s.contributor).or_default() += w;
        }
        let scores: Vec<(Address, f64)> = by_contributor.into_iter().collect();
        let paid = split.split(args.fee, &scores)?;
        println!("fee split:");
        println!("  model owner  {:>20} wei", paid.owner.amount);
        println!("  protocol     {:>20} wei", paid.protocol.amount);
        for p in &paid.contributors {
            println!("  {} {:>20} wei", short(p.account), p.amount);
        }
        let total: U256 = paid.all().map(|p| p.amount).sum();
        assert_eq!(total, args.fee, "a split sums to its fee");
        println!("  total        {total:>20} wei\n");
        Ok(())
    };

    if !args.ask.is_empty() {
        for q in &args.ask {
            println!("? {q}");
            turn(q)?;
        }
        return Ok(());
    }
    println!("Ask about the datanet (an empty line or end of input quits).");
    let stdin = std::io::stdin();
    loop {
        print!("? ");
        std::io::stdout().flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Err(e) = turn(&line) {
            println!("error: {e}");
        }
    }
    Ok(())
}
