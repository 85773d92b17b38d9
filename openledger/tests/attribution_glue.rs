//! The glue between the trainer, the training log and the feature store, on a tiny model.

use openledger::attribution::metrics::spearman;
use openledger::attribution::{AdapterInfluence, AttributionError};
use openledger::poa::PoaError;
use openledger::poa::influence::{FeatureSpace, Method, tracin_weights};
use openledger::synthetic::KeyValueTask;
use openledger::train::{checkpoint_parameters, lora_layers};
use openledger_core::grant::Grants;
use openledger_core::{Address, B256, ContentId};
use openledger_lora::model::RandomLlama;
use openledger_train::{Checkpoint, LoraSettings, TrainConfig, TrainError, TrainEvent, Trainer};

fn task() -> KeyValueTask {
    KeyValueTask {
        keys: 6,
        values: 3,
        alphabet: 5,
        distractors: 2,
    }
}

fn tiny(task: &KeyValueTask) -> openledger_lora::model::Model {
    RandomLlama {
        vocab: task.vocab(),
        hidden: 16,
        intermediate: 32,
        layers: 1,
        heads: 2,
        kv_heads: 1,
    }
    .model(3)
    .unwrap()
}

fn config(steps: usize, checkpoints: Vec<usize>) -> TrainConfig {
    let mut c = TrainConfig::new(LoraSettings::new(&["q_proj", "v_proj"], 2, 4.0));
    c.steps = steps;
    c.batch_size = 4;
    c.learning_rate = 1e-2;
    c.checkpoint_steps = checkpoints;
    c
}

#[test]
fn logged_checkpoints_restore_exact_parameters_and_weight_by_logged_rates() {
    let t = task();
    let model = tiny(&t);
    let table = t.table(1);
    let data = t.datanet("d", &table, 24, 0.25, 3, 5).unwrap();
    let mut grants = Grants::new();
    let owner = Address::repeat_byte(1);
    let me = Address::repeat_byte(2);
    let id = grants.register_datanet(owner);
    grants.request(id, me, B256::ZERO).unwrap();
    grants.approve(id, owner, me).unwrap();
    let train: Vec<_> = data
        .datanet
        .records()
        .iter()
        .map(|r| t.example(&r.content).unwrap().with_source(id, r.hash))
        .collect();
    let mut trainer = Trainer::new(&model, config(6, vec![3, 6])).unwrap();
    trainer.require_grants(grants, me);
    trainer.start_log(B256::repeat_byte(9));
    let layout = trainer.gradient_layout();
    let mut checkpoints: Vec<Checkpoint> = Vec::new();
    let mut lrs = Vec::new();
    trainer
        .train(&train, &[], &mut |e| match e {
            TrainEvent::Checkpoint(c) => checkpoints.push(c.clone()),
            TrainEvent::Step(s) => lrs.push(s.learning_rate),
            TrainEvent::Eval(_) => {}
        })
        .unwrap();
    // The last checkpoint is the trainer's current state, value for value.
    let params: Vec<_> = checkpoints
        .iter()
        .map(|c| checkpoint_parameters(&layout, c).unwrap())
        .collect();
    assert_eq!(params[1].parameters, trainer.parameters().unwrap());
    assert_ne!(params[0].parameters, params[1].parameters);
    // The log holds the checkpoint ids and the rates; weights sum the rates per interval.
    let log = trainer.training_log().unwrap();
    assert_eq!(log.verify().unwrap(), log.head());
    assert_eq!(log.entries()[2].step.checkpoint, Some(checkpoints[0].id.0));
    let w = tracin_weights(log, &[3, 6]).unwrap();
    assert_eq!(
        w,
        vec![lrs[..3].iter().sum::<f64>(), lrs[3..].iter().sum::<f64>()]
    );
    assert!(matches!(
        tracin_weights(log, &[3, 9]),
        Err(PoaError::StepNotLogged { step: 9, .. })
    ));
    assert!(matches!(
        tracin_weights(log, &[6, 3]),
        Err(PoaError::CheckpointOrder { .. })
    ));
    // Every record used in a step is provable against the head.
    let rec = train[0].source.as_ref().unwrap().record;
    let step = log.was_used(&rec).unwrap()[0];
    assert_eq!(
        log.prove(&rec, step).unwrap().verify(&rec, log.head()),
        Some(step)
    );

    // DataInf layers: one range per adapted module, covering the gradient.
    let layers = lora_layers(&layout);
    assert_eq!(layers.len(), 2);
    assert_eq!(trainer.num_parameters(), 112);
    assert_eq!(layers[1].end, trainer.num_parameters());

    // The index: TracIn-CP equals Σ_c η_c ⟨g_q, g_z⟩ computed by hand from the trainer.
    let dir = tempfile::tempdir().unwrap();
    let before = trainer.parameters().unwrap();
    let index = AdapterInfluence::build(
        &dir.path().join("f.olfs"),
        &mut trainer,
        &train,
        &data.datanet,
        params.iter().cloned().zip(w.iter().copied()).collect(),
        FeatureSpace::Exact,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(trainer.parameters().unwrap(), before, "parameters restored");
    let query = (
        t.prompt(&t.parse(&data.datanet.records()[1].content).unwrap()),
        vec![t.value_token(0)],
    );
    let q = index
        .featurize(&mut trainer, std::slice::from_ref(&query), &mut |_| {})
        .unwrap();
    let scores = index
        .index()
        .scores(&q, Method::TracIn, &mut |_| {})
        .unwrap();
    let mut expected = vec![0f64; train.len()];
    for (c, p) in params.iter().enumerate() {
        trainer.set_parameters(&p.parameters).unwrap();
        let gq = trainer.query_gradient(&query.0, &query.1).unwrap();
        for (i, ex) in train.iter().enumerate() {
            let gz = trainer.example_gradient(ex).unwrap();
            let dot: f64 = gq
                .iter()
                .zip(&gz)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            expected[i] += w[c] * dot;
        }
    }
    for (got, want) in scores[0].iter().zip(&expected) {
        assert!(
            (got - want).abs() <= 1e-4 * want.abs().max(1e-3),
            "{got} vs {want}"
        );
    }
    // The query-set shortcut equals the sum of per-query scores, for both methods.
    let two = [query.clone(), (query.0.clone(), vec![t.value_token(1)])];
    let q2 = index.featurize(&mut trainer, &two, &mut |_| {}).unwrap();
    for method in [Method::TracIn, Method::DataInf { lambda_scale: 0.1 }] {
        let each = index.index().scores(&q2, method, &mut |_| {}).unwrap();
        let set = index.index().query_set_scores(&q2, method).unwrap();
        for (i, s) in set.iter().enumerate() {
            let sum = each[0][i] + each[1][i];
            assert!(
                (s - sum).abs() <= 1e-4 * sum.abs().max(1e-3),
                "{method:?} {i}: {s} vs {sum}"
            );
        }
    }
    // A Rademacher sketch to 64 of the 112 gradient dimensions keeps the ranking of the exact
    // gradients, up to the sketch's error (inner products within ≈ 1/√k).
    let sketch = AdapterInfluence::build(
        &dir.path().join("sketch.olfs"),
        &mut trainer,
        &train,
        &data.datanet,
        params.iter().cloned().zip(w.iter().copied()).collect(),
        FeatureSpace::Sketch { k: 64, seed: 11 },
        &mut |_| {},
    )
    .unwrap();
    let qs = sketch
        .featurize(&mut trainer, std::slice::from_ref(&query), &mut |_| {})
        .unwrap();
    let approx = sketch
        .index()
        .scores(&qs, Method::TracIn, &mut |_| {})
        .unwrap();
    let rho = spearman(&approx[0], &scores[0]).unwrap();
    assert!(rho > 0.8, "sketch vs exact Spearman {rho}");
    let attribution = index.index().attribution(&scores).unwrap();
    assert_eq!(attribution.per_contributor.len(), 3);
    assert_eq!(
        attribution.per_record[0].0,
        train[0].source.as_ref().unwrap().record
    );
}

#[test]
fn training_without_an_approved_grant_is_refused_and_unknown_records_are_named() {
    let t = task();
    let model = tiny(&t);
    let data = t.datanet("d", &t.table(1), 8, 0.0, 2, 5).unwrap();
    let mut grants = Grants::new();
    let id = grants.register_datanet(Address::repeat_byte(1));
    grants
        .request(id, Address::repeat_byte(2), B256::ZERO)
        .unwrap();
    let train: Vec<_> = data
        .datanet
        .records()
        .iter()
        .map(|r| t.example(&r.content).unwrap().with_source(id, r.hash))
        .collect();
    let mut trainer = Trainer::new(&model, config(2, vec![2])).unwrap();
    trainer.require_grants(grants, Address::repeat_byte(2));
    let err = trainer.train(&train, &[], &mut |_| {}).unwrap_err();
    assert!(
        matches!(err, TrainError::AccessDenied { index: 0, .. }),
        "{err}"
    );

    // An example whose record is not in the datanet cannot be attributed.
    let mut free = Trainer::new(&model, config(2, vec![2])).unwrap();
    let mut cps = Vec::new();
    free.train(&train, &[], &mut |e| {
        if let TrainEvent::Checkpoint(c) = e {
            cps.push(c.clone())
        }
    })
    .unwrap();
    let p = checkpoint_parameters(&free.gradient_layout(), &cps[0]).unwrap();
    let mut stranger = train.clone();
    stranger[3] = stranger[3]
        .clone()
        .with_source(id, ContentId::of(b"not in the datanet"));
    let dir = tempfile::tempdir().unwrap();
    let err = AdapterInfluence::build(
        &dir.path().join("f.olfs"),
        &mut free,
        &stranger,
        &data.datanet,
        vec![(p, 0.01)],
        FeatureSpace::Exact,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(err, AttributionError::UnknownRecord { index: 3, .. }),
        "{err}"
    );
    // A checkpoint of another adapter shape is refused, naming the tensor.
    let mut other = Trainer::new(
        &model,
        TrainConfig::new(LoraSettings::new(&["k_proj"], 2, 4.0)),
    )
    .unwrap();
    let err = checkpoint_parameters(&other.gradient_layout(), &cps[0]).unwrap_err();
    assert!(err.to_string().contains("k_proj"), "{err}");
    other
        .set_parameters(&vec![0.0; other.num_parameters()])
        .unwrap();
}
