//! The influence audit: pre-trains a tiny LLaMA on a synthetic key→value language, fine-tunes
//! a LoRA on a datanet with 20 % flipped labels, ranks the records by influence (TracIn-CP
//! self-influence, TracIn-CP and DataInf on held-out queries) against the training-loss
//! baseline, measures the linear datamodeling score over random half-subsets, prints the
//! figures and draws the ROC curves.
//!
//! `cargo run --release -p openledger --example influence_audit -- [subsets] [out.png] [export-dir]`
//!
//! With `export-dir`, the run is also written there for a peer to repeat
//! (`scripts/dattri_side_by_side.py`): the base model, the examples, the LDS subsets and our
//! scores.

use std::time::Instant;

use openledger::attribution::experiment::{ExperimentConfig, ExperimentReport, run};
use plotters::prelude::*;

fn draw(report: &ExperimentReport, path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::new(path, (1200, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);
    let mut roc = ChartBuilder::on(&left)
        .caption("noisy-label detection (ROC)", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)?;
    roc.configure_mesh()
        .x_desc("false-positive rate")
        .y_desc("true-positive rate")
        .draw()?;
    let series = [
        (
            0,
            format!(
                "TracIn-CP self-influence (AUC {:.3})",
                report.auc_self_influence
            ),
        ),
        (
            1,
            format!(
                "TracIn-CP query harm (AUC {:.3})",
                report.auc_tracin_queries
            ),
        ),
        (2, format!("training loss (AUC {:.3})", report.auc_loss)),
    ];
    for (i, (which, label)) in series.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        roc.draw_series(LineSeries::new(report.roc(which), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    roc.draw_series(LineSeries::new(
        vec![(0.0, 0.0), (1.0, 1.0)],
        BLACK.mix(0.3),
    ))?;
    roc.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;

    let xs: Vec<f64> = report.per_record.iter().map(|r| r.2).collect();
    let ys: Vec<f64> = report.per_record.iter().map(|r| r.0).collect();
    let span = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let pad = (hi - lo).max(1e-12) * 0.05;
        (lo - pad)..(hi + pad)
    };
    let mut sc = ChartBuilder::on(&right)
        .caption("records: self-influence vs final loss", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(span(&xs), span(&ys))?;
    sc.configure_mesh()
        .x_desc("final training loss")
        .y_desc("self-influence")
        .draw()?;
    for (flipped, color, label) in [(false, BLUE, "clean"), (true, RED, "flipped label")] {
        sc.draw_series(
            report
                .per_record
                .iter()
                .filter(|r| r.3 == flipped)
                .map(|r| Circle::new((r.2, r.0), 3, color.filled())),
        )?
        .label(label)
        .legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
    }
    sc.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: the first thing `main` does, before any other thread runs.
    unsafe { openledger::lora::fix_cpu_threads() };
    let mut args = std::env::args().skip(1);
    let subsets: usize = args.next().map_or(Ok(32), |s| s.parse())?;
    let out = args
        .next()
        .unwrap_or_else(|| "influence_audit.png".to_string());
    let mut cfg = ExperimentConfig::standard(subsets);
    cfg.export = args.next().map(std::path::PathBuf::from);
    let dir = std::env::temp_dir().join(format!("influence-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let t = Instant::now();
    let mut last = "";
    let report = run(&cfg, &dir, &mut |p| {
        if p.stage != last || p.done == p.total {
            eprintln!(
                "[{:7.1}s] {} {}/{}",
                t.elapsed().as_secs_f64(),
                p.stage,
                p.done,
                p.total
            );
            last = p.stage;
        }
    });
    std::fs::remove_dir_all(&dir)?;
    let r = report?;
    println!(
        "model: {} base parameters, {} LoRA parameters; base accuracy on its own table {:.3}, fine-tuned accuracy on held-out queries {:.3}",
        r.base_parameters, r.lora_parameters, r.base_accuracy, r.finetune_accuracy
    );
    println!(
        "datanet: {} records, {} flipped labels",
        r.records, r.flipped
    );
    println!(
        "noisy-label AUC  TracIn-CP self-influence : {:.4}",
        r.auc_self_influence
    );
    println!(
        "noisy-label AUC  TracIn-CP query harm     : {:.4}",
        r.auc_tracin_queries
    );
    println!(
        "noisy-label AUC  DataInf query harm       : {:.4}",
        r.auc_datainf_queries
    );
    println!(
        "noisy-label AUC  training loss (baseline) : {:.4}",
        r.auc_loss
    );
    let show = |x: Option<(f64, usize)>| {
        x.map_or("n/a".to_string(), |(v, q)| {
            format!("{v:.4} over {q} queries")
        })
    };
    println!(
        "LDS ({} retrainings on random {}% subsets): TracIn-CP {}, DataInf {}",
        r.retrainings,
        (cfg.lds_fraction * 100.0).round(),
        show(r.lds_tracin),
        show(r.lds_datainf)
    );
    println!("per contributor (TracIn-CP influence on the queries, flipped records):");
    for (who, s, bad) in &r.per_contributor {
        println!("  {who}  {s:+.5}  {bad}");
    }
    println!("training log head: {}", r.log_head);
    println!(
        "seconds: pre-train {:.1}, fine-tune {:.1}, index {:.1}, queries+scores {:.1}, LDS {:.1}",
        r.seconds[0], r.seconds[1], r.seconds[2], r.seconds[3], r.seconds[4]
    );
    draw(&r, &out)?;
    println!("plot written to {out}");
    Ok(())
}
