//! The Payable-AI loop end to end, on embedded defaults: a datanet of drug facts from five
//! contributors (one of whom submits re-worded copies of her records, and a sixth who copies
//! another's under three addresses; the copies are flagged and earn nothing) is published on an
//! embedded EVM with a training grant; three adapters are fine-tuned on it and registered with
//! their training-log heads and fees; ten requests for the three adapters are served in one
//! mixed batch, streaming; every answer is attributed (training influence + RAG citations),
//! receipted (EIP-712) and paid on chain; the epoch closes into a Merkle root every contributor
//! claims from, checked to the wei.
//!
//! Records and answers are embedded by all-MiniLM-L6-v2 when `bash scripts/fetch-models.sh` has
//! fetched it (or `--embedder DIR` names a sentence-transformers folder): RAG retrieves by
//! meaning and paraphrased copies are caught; otherwise (`--embedder none`, or the model absent)
//! by a feature-hashing bag of words, which the output says.
//!
//! With `--rpc URL` the contracts are deployed and every payment, root and claim is settled on
//! that node over JSON-RPC instead, sent from the keys in `OPENLEDGER_KEYS` (ten comma-separated
//! hex private keys, each account holding ether for gas) or, when that is unset, from anvil's
//! ten well-known dev keys (for a local anvil only).
//!
//! `--deployment FILE` (a file the `deploy` example wrote) uses that suite instead of deploying.
//!
//! With `--model smollm2` (or `--model FILE.gguf`) the adapters are fine-tuned over that
//! pretrained model instead (`LoopConfig::smollm2`): each request is answered from the records
//! retrieved for it and the RAG part of its pool is split by ContextCite; minutes, not seconds.
//!
//! `cargo run --release --example payable_ai -- [--quick] [--model random|smollm2|FILE]
//! [--report FILE] [--work-dir DIR]
//! [--embedder DIR|none] [--rpc URL [--deployment FILE]]`

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use openledger::chain::rpc::keys_from_env;
use openledger::core::Address;
use openledger::lora::embed::fetched_model;
use openledger::payable::{LoopConfig, LoopEvent, PayableAi, Report};

type Error = Box<dyn std::error::Error>;

struct Args {
    quick: bool,
    /// The JSON report (default: `report.json` in the work folder).
    report: Option<PathBuf>,
    work_dir: PathBuf,
    /// The sentence-transformers folder, or none.
    embedder: Option<PathBuf>,
    /// A pretrained GGUF base instead of the random one.
    model: Option<PathBuf>,
    /// A JSON-RPC endpoint to settle on instead of the embedded EVM.
    rpc: Option<String>,
    /// A deployment file (from the `deploy` example) to use on that node instead of deploying.
    deployment: Option<PathBuf>,
}

/// Where `scripts/fetch-models.sh` puts all-MiniLM-L6-v2, when it has.
fn fetched_embedder() -> Option<PathBuf> {
    fetched_model(Path::new("target/models"), "all-MiniLM-L6-v2").ok()
}

fn args(argv: impl IntoIterator<Item = String>) -> Result<Args, Error> {
    let mut a = Args {
        quick: false,
        report: None,
        work_dir: PathBuf::from("target/payable-ai"),
        embedder: fetched_embedder(),
        model: None,
        rpc: None,
        deployment: None,
    };
    let mut it = argv.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--quick" => a.quick = true,
            "--report" => a.report = Some(PathBuf::from(value()?)),
            "--work-dir" => a.work_dir = PathBuf::from(value()?),
            "--rpc" => a.rpc = Some(value()?),
            "--model" => {
                a.model = match value()?.as_str() {
                    "random" => None,
                    "smollm2" => Some(
                        fetched_model(Path::new("target/models"), "SmolLM2-135M-Instruct")
                            .map_err(|dir| {
                                format!(
                                    "{} is absent: run `bash scripts/fetch-models.sh`",
                                    dir.display()
                                )
                            })?
                            .join("SmolLM2-135M-Instruct.Q4_1.gguf"),
                    ),
                    file => Some(PathBuf::from(file)),
                }
            }
            "--deployment" => a.deployment = Some(PathBuf::from(value()?)),
            "--embedder" => {
                a.embedder = match value()?.as_str() {
                    "none" => None,
                    dir => Some(PathBuf::from(dir)),
                }
            }
            "-h" | "--help" => {
                println!(
                    "payable_ai [--quick] [--model random|smollm2|FILE.gguf] [--report FILE] [--work-dir DIR] [--embedder DIR|none] [--rpc URL [--deployment FILE]]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    if a.deployment.is_some() && a.rpc.is_none() {
        return Err("--deployment needs --rpc".into());
    }
    Ok(a)
}

/// Draws progress bars and the streaming answers: on a terminal, bars redraw in place and each
/// request's line grows as its tokens arrive; otherwise each bar prints once, when complete, and
/// the answers appear in the summary.
struct Screen {
    tty: bool,
    bar_open: bool,
    prompts: Vec<(String, String)>,
    lines: Vec<String>,
    drawn: bool,
}

impl Screen {
    fn new(prompts: Vec<(String, String)>) -> Self {
        let w = prompts.iter().map(|p| p.0.len()).max().unwrap_or(0);
        Self {
            tty: std::io::stderr().is_terminal() && std::io::stdout().is_terminal(),
            bar_open: false,
            lines: prompts
                .iter()
                .enumerate()
                .map(|(i, (adapter, prompt))| format!("  #{i:<2} {adapter:<w$} {prompt:<28} →"))
                .collect(),
            prompts,
            drawn: false,
        }
    }

    fn event(&mut self, e: &LoopEvent) {
        match e {
            LoopEvent::Stage { name } => {
                self.close_bar();
                if name == "attribute-and-pay" && !self.drawn {
                    // Not a terminal: the streamed answers, once complete.
                    for l in &self.lines {
                        println!("{l}");
                    }
                }
                println!("\n== {name}");
                if name == "serve" && self.tty {
                    for l in &self.lines {
                        println!("{l}");
                    }
                    self.drawn = true;
                }
            }
            LoopEvent::Progress {
                item,
                done,
                total,
                loss,
                ..
            } => {
                if !self.tty && done < total {
                    return;
                }
                const W: usize = 28;
                let filled = W * done / (*total).max(1);
                let loss = loss.map_or(String::new(), |l| format!("  loss {l:7.4}"));
                eprint!(
                    "\r  [{}{}] {done:>4}/{total:<4} {item}{loss}   ",
                    "#".repeat(filled),
                    ".".repeat(W - filled)
                );
                let _ = std::io::stderr().flush();
                self.bar_open = true;
                if done == total {
                    self.close_bar();
                }
            }
            LoopEvent::Token { request, text, .. } => {
                let Some(line) = self.lines.get_mut(*request) else {
                    return;
                };
                line.push(' ');
                line.push_str(text);
                if self.drawn {
                    // Up to the request's line, rewrite it, back down.
                    let up = self.prompts.len() - request;
                    print!("\x1b[{up}A\r\x1b[2K{line}\x1b[{up}B\r");
                    let _ = std::io::stdout().flush();
                }
            }
        }
    }

    fn close_bar(&mut self) {
        if self.bar_open {
            eprintln!();
            self.bar_open = false;
        }
    }
}

fn short(h: impl std::fmt::Display) -> String {
    let s = h.to_string();
    format!("{}…{}", &s[..10], &s[s.len() - 6..])
}

fn summary(r: &Report) {
    println!("\nbase model: {}", r.base_model);
    if let Some(d) = &r.datanet {
        println!(
            "\ndatanet {:?} id {} v{}: {} records from {} contributors, root {}; {} near-duplicate clusters, {} distinct records",
            d.name,
            d.id,
            d.version,
            d.records,
            d.contributors.len(),
            short(d.root),
            d.near_duplicate_clusters.len(),
            d.distinct_records
        );
        println!(
            "  embedder: {}; {} clusters joined as paraphrases",
            d.embedder, d.paraphrases
        );
        for ((who, owner), n) in d.copies_by_copier() {
            let whose = if who == owner {
                "their own".to_string()
            } else {
                format!("{}'s", r.name_of(owner))
            };
            println!(
                "  flagged: {n} records of {} copy {whose} earlier records (not trained on, not cited)",
                r.name_of(who)
            );
        }
    }
    println!(
        "\n{:<17} {:>5} {:>7} {:>15} {:>7} {:>14} {:>14} {:>22}",
        "adapter", "rank", "params", "loss", "recall", "log head", "artifact", "fee (wei)"
    );
    for a in &r.adapters {
        println!(
            "{:<17} {:>5} {:>7} {:>7.3}→{:<7.3} {:>6.0}% {:>14} {:>14} {:>22}",
            a.name,
            format!("{}{}", a.rank, if a.dora { "D" } else { "" }),
            a.parameters,
            a.first_loss,
            a.last_loss,
            100.0 * a.recall,
            short(a.training_log_head),
            short(a.artifact_hash),
            a.fee_wei
        );
    }
    if let Some(v) = &r.validation {
        let mut by: std::collections::BTreeMap<String, usize> = Default::default();
        for f in &v.flagged {
            *by.entry(r.name_of(f.contributor)).or_default() += 1;
        }
        let who: Vec<String> = by.iter().map(|(n, k)| format!("{n} ×{k}")).collect();
        println!(
            "\nvalidation: influence of {} trained records on {} gold answers (median {:.2e}); {} flagged below {:.2e}: {}; policy {}",
            v.records,
            v.answers,
            v.median,
            v.flagged.len(),
            v.threshold,
            if who.is_empty() {
                "none".into()
            } else {
                who.join(", ")
            },
            v.policy.name()
        );
        if let Some(p) = &v.planted {
            println!(
                "  planted poison: {} of {} caught, {} other records flagged, AUC {:.3}",
                p.caught, p.planted, p.false_flags, p.auc
            );
        }
    }
    if !r.reputation.is_empty() {
        let scores: Vec<String> = r
            .reputation
            .iter()
            .map(|c| {
                format!(
                    "{} {}/{}/{} → {:.2}",
                    c.name, c.accepted, c.harmful, c.copies, c.score
                )
            })
            .collect();
        println!(
            "reputation (accepted / harmful / copies of others' → the score weights are multiplied by): {}",
            scores.join(", ")
        );
    }
    if let Some(s) = &r.serving {
        println!(
            "\nserved {} requests for {} adapters in {} engine steps; the first step ran all {} sequences as one mixed batch",
            s.requests, s.adapters, s.engine_steps, s.first_step_sequences
        );
    }
    let w = r
        .requests
        .iter()
        .map(|q| q.adapter.len())
        .max()
        .unwrap_or(0);
    println!(
        "\n{:<3} {:<w$} {:<30} {:<30} {:<28} {:>20}",
        "#", "adapter", "prompt", "answer", "top citation", "data pool (wei)"
    );
    for q in &r.requests {
        let cite = q.citations.first().map_or(String::new(), |c| {
            format!("{} ({:.0}%)", r.name_of(c.contributor), 100.0 * c.share)
        });
        println!(
            "{:<3} {:<w$} {:<30} {:<30} {:<28} {:>20}",
            q.index, q.adapter, q.prompt, q.answer, cite, q.data_pool_wei
        );
    }
    // Ensembles: the fee is the members' fees weighted, the owners' part split by weight.
    for q in r.requests.iter().filter(|q| q.owner_shares_wei.len() > 1) {
        let owners: Vec<String> = q
            .owner_shares_wei
            .iter()
            .map(|(a, v)| format!("{v} to {a}'s owner"))
            .collect();
        println!(
            "#{} is an ensemble: fee {} wei (the members' fees, weighted), owners {}; its pool's influence part is split between the members by weight, each over its own training records",
            q.index,
            q.fee_wei,
            owners.join(" + ")
        );
    }
    if let Some(e) = &r.epoch {
        println!(
            "\nepoch {}: pool {} wei, root {} posted; claims:",
            e.number,
            e.pool_wei,
            short(e.root)
        );
        println!(
            "{:<10} {:>7} {:>22} {:>22} {:>22} {:>22}  balance = claim",
            "contributor",
            "records",
            "claimed (wei)",
            "balance (wei)",
            "before splitting",
            "no clustering",
        );
        for c in &e.contributors {
            println!(
                "{:<10} {:>7} {:>22} {:>22} {:>22} {:>22}  {}",
                c.name,
                c.records,
                c.claimed_wei,
                c.balance_wei,
                c.before_splitting_wei.as_deref().unwrap_or("-"),
                c.without_clustering_wei.as_deref().unwrap_or("-"),
                if c.matches { "✔" } else { "✘" }
            );
        }
        for (_, name, amount) in &e.withdrawn {
            println!("withdrawn by {name}: {amount} wei");
        }
        println!(
            "left in the contracts: rewards {} wei, payments {} wei; every balance to the wei: {}",
            e.rewards_left_wei,
            e.payments_left_wei,
            if e.claims_match { "✔" } else { "✘" }
        );
        for d in &e.debts {
            println!(
                "debt: {} owes {} wei for the harm of its flagged records; {} wei taken from its payout, {} wei carried to later epochs",
                d.name, d.charged_wei, d.taken_wei, d.carried_wei
            );
        }
        for (who, owner, paid) in copiers_paid(r) {
            println!(
                "copies: {} copied {}'s records and was paid {paid} wei ({})",
                r.name_of(who),
                r.name_of(owner),
                if paid == "0" { "nothing ✔" } else { "✘" }
            );
        }
        if let Some(n) = &e.near_duplicates {
            println!(
                "near-duplicates: {} earned {} wei with her copies, {} wei without them ({}), {} wei if copies were not clustered",
                n.name,
                n.paid_wei,
                n.before_splitting_wei,
                if n.holds { "no more ✔" } else { "MORE ✘" },
                n.without_clustering_wei
            );
        }
    }
    let secs: Vec<String> = r
        .seconds
        .iter()
        .map(|(k, v)| format!("{k} {v:.1}s"))
        .collect();
    println!("\ntime: {}", secs.join(", "));
}

/// Every contributor who copied someone else's records, whose, and what the epoch paid them.
fn copiers_paid(r: &Report) -> Vec<(Address, Address, String)> {
    let (Some(d), Some(e)) = (&r.datanet, &r.epoch) else {
        return Vec::new();
    };
    d.copies_by_copier()
        .into_keys()
        .filter(|(who, owner)| who != owner)
        .map(|(who, owner)| {
            let paid = e
                .contributors
                .iter()
                .find(|c| c.account == who)
                .map_or_else(|| "0".to_string(), |c| c.claimed_wei.clone());
            (who, owner, paid)
        })
        .collect()
}

/// Runs the loop as the command line says, prints it, writes the report; fails when a balance
/// misses its claim or the copies paid their contributor more.
fn run(a: &Args) -> Result<Report, Error> {
    let dir = a.work_dir.clone();
    let mut config = match (&a.model, a.quick) {
        (None, true) => LoopConfig::quick(dir),
        (None, false) => LoopConfig::standard(dir),
        (Some(m), true) => LoopConfig::smollm2_quick(dir, m.clone()),
        (Some(m), false) => LoopConfig::smollm2(dir, m.clone()),
    };
    config.embedder = a.embedder.clone();
    let started = Instant::now();
    let mut screen = Screen::new(
        config
            .requests
            .iter()
            .map(|r| (r.adapter.clone(), r.prompt.clone()))
            .collect(),
    );
    let l = match &a.rpc {
        None => PayableAi::new(config)?,
        Some(url) => {
            let keys = settlement_keys()?;
            let mut l = PayableAi::on_node(config, url, keys, a.deployment.as_deref())?;
            println!("settling on {url} (chain {})", l.chain().chain_id());
            l
        }
    };
    let report = l.run_stages(&mut |e| screen.event(e))?;
    screen.close_bar();
    summary(&report);
    let path = a
        .report
        .clone()
        .unwrap_or_else(|| a.work_dir.join("report.json"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, report.to_json())?;
    println!(
        "report: {} ({:.1} s in all)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    let e = report.epoch.as_ref().ok_or("the epoch did not close")?;
    if !e.claims_match {
        return Err("a balance does not match its claim".into());
    }
    if copiers_paid(&report).iter().any(|c| c.2 != "0") {
        return Err("a contributor was paid for copies of someone else's records".into());
    }
    if e.near_duplicates.as_ref().is_some_and(|n| !n.holds) {
        return Err("the near-duplicate contributor earned more than before splitting".into());
    }
    Ok(report)
}

/// The ten keys to settle from: `OPENLEDGER_KEYS`, or anvil's dev keys.
fn settlement_keys() -> Result<Vec<k256::ecdsa::SigningKey>, Error> {
    let (keys, anvil) = keys_from_env("OPENLEDGER_KEYS")?;
    if anvil {
        println!("OPENLEDGER_KEYS is not set: sending from anvil's well-known dev keys");
    }
    Ok(keys)
}

fn main() -> Result<(), Error> {
    // SAFETY: the first thing `main` does, before any other thread runs.
    unsafe { openledger::lora::fix_cpu_threads() };
    run(&args(std::env::args().skip(1))?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example as CI runs it: the quick loop, its report written where the flags say.
    #[test]
    fn the_quick_run_settles_to_the_wei_and_writes_its_report() {
        let dir = std::env::temp_dir().join(format!("payable-ai-example-{}", std::process::id()));
        let argv = ["--quick", "--work-dir", dir.to_str().expect("a UTF-8 path")];
        let a = args(argv.map(String::from)).unwrap();
        let report = run(&a).unwrap();
        let written = std::fs::read_to_string(dir.join("report.json")).unwrap();
        assert_eq!(written, report.to_json());
        let e = report.epoch.as_ref().unwrap();
        assert!(e.claims_match && e.near_duplicates.as_ref().unwrap().holds);
        assert_eq!(e.claimed_total_wei, e.pool_wei);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_flags_and_missing_values_are_refused() {
        assert!(args(["--nope".to_string()]).is_err());
        assert!(args(["--report".to_string()]).is_err());
        assert!(args(["--deployment".to_string(), "d.json".to_string()]).is_err());
    }
}
