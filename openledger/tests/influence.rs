//! The influence experiment end to end (see `openledger::attribution::experiment`): a tiny
//! LLaMA pre-trained in code, a LoRA fine-tuned on a datanet with 20 % flipped labels, and the
//! influence rankings judged against the flipped labels and against retraining.
//!
//! Figures of this configuration (4 retrainings; the `influence_audit` example runs 32) are
//! printed with `--nocapture`.

use openledger::attribution::experiment::{ExperimentConfig, run};

#[test]
fn influence_ranks_flipped_labels_above_the_loss_baseline_and_predicts_retraining() {
    let mut cfg = ExperimentConfig::standard(4);
    // DataInf's LDS needs one DataInf pass per query: the example measures it.
    cfg.datainf_lds = false;
    let dir = tempfile::tempdir().unwrap();
    let t = std::time::Instant::now();
    let r = run(&cfg, dir.path(), &mut |p| {
        if p.done == p.total {
            eprintln!(
                "[{:6.1}s] {} {}",
                t.elapsed().as_secs_f64(),
                p.stage,
                p.total
            )
        }
    })
    .unwrap();
    eprintln!(
        "AUC self-influence {:.4}, TracIn queries {:.4}, DataInf queries {:.4}, loss {:.4}; \
         LDS TracIn {:?}, DataInf {:?} ({} retrainings); accuracy base {:.3} fine-tune {:.3}; seconds {:?}",
        r.auc_self_influence,
        r.auc_tracin_queries,
        r.auc_datainf_queries,
        r.auc_loss,
        r.lds_tracin,
        r.lds_datainf,
        r.retrainings,
        r.base_accuracy,
        r.finetune_accuracy,
        r.seconds
    );
    // The set-up did what it claims: the base reads the language, the fine-tune learned the
    // new table, a fifth of the records are flipped.
    assert!(r.base_accuracy >= 0.95, "{}", r.base_accuracy);
    assert!(r.finetune_accuracy >= 0.9, "{}", r.finetune_accuracy);
    assert_eq!((r.records, r.flipped), (200, 40));
    assert_eq!(r.per_record.len(), 200);

    // Noisy-label detection: TracIn-CP self-influence over the logged checkpoints finds the
    // flipped records (dattri reports ≈ 0.86 for TracIn on an MNIST MLP) and beats ranking by
    // the final training loss, which the fine-tune has partly memorised away.
    assert!(r.auc_self_influence >= 0.9, "{}", r.auc_self_influence);
    assert!(
        r.auc_self_influence > r.auc_loss,
        "self-influence {} vs loss {}",
        r.auc_self_influence,
        r.auc_loss
    );
    // Harm to held-out queries points at the flipped records too (weaker than self-influence).
    assert!(r.auc_tracin_queries >= 0.7, "{}", r.auc_tracin_queries);
    assert!(r.auc_datainf_queries >= 0.7, "{}", r.auc_datainf_queries);

    // LDS from 4 retrainings on random halves: clearly positive (the example's 32 retrainings
    // give the reported figure; dattri: TracIn ≈ 0.15, TRAK-50 ≈ 0.45 on MNIST-MLP).
    let (lds, queries) = r.lds_tracin.expect("LDS defined");
    assert!(queries >= 24, "{queries} queries had varying losses");
    assert!(lds >= 0.15, "LDS {lds}");
    assert_eq!(r.lds_datainf, None);

    // Per-contributor influence adds up the per-record influence on the query set.
    assert_eq!(r.per_contributor.len(), 10);
    let by_contributor: f64 = r.per_contributor.iter().map(|c| c.1).sum();
    let by_record: f64 = r.per_record.iter().map(|x| -x.1).sum();
    assert!((by_contributor - by_record).abs() <= 1e-9 * by_record.abs().max(1.0));
    assert_eq!(r.per_contributor.iter().map(|c| c.2).sum::<usize>(), 40);
}
