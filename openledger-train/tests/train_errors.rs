//! Bad training input is refused with a typed error naming the culprit, before any step runs;
//! a diverging run stops at the step whose loss is not finite.

use std::path::{Path, PathBuf};

use openledger_core::DType;
use openledger_lora::adapter::tensors::HostTensor;
use openledger_lora::model::RandomLlama;
use openledger_lora::model::{Model, ModelConfig};
use openledger_train::{Example, LoraSettings, TrainConfig, TrainError, Trainer};

fn model() -> Model {
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama");
    Model::from_dir(&dir).unwrap()
}

fn cfg() -> TrainConfig {
    let mut c = TrainConfig::new(LoraSettings::new(&["q_proj", "v_proj"], 2, 4.0));
    c.steps = 2;
    c.batch_size = 2;
    c
}

fn data() -> Vec<Example> {
    vec![Example::text(&[1, 5, 6, 7]), Example::text(&[1, 8, 9])]
}

#[test]
fn rank_zero_is_refused() {
    let mut c = cfg();
    c.lora.r = 0;
    assert!(matches!(
        Trainer::new(&model(), c),
        Err(TrainError::ZeroRank)
    ));
}

#[test]
fn unknown_target_module_is_named() {
    let mut c = cfg();
    c.lora = LoraSettings::new(&["q_proj", "qkv_proj"], 2, 4.0);
    match Trainer::new(&model(), c) {
        Err(TrainError::UnknownTargetModule { name, known }) => {
            assert_eq!(name, "qkv_proj");
            assert!(known.contains(&"down_proj"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_config_values_name_their_field() {
    type Edit = Box<dyn Fn(&mut TrainConfig)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("steps", Box::new(|c| c.steps = 0)),
        ("batch_size", Box::new(|c| c.batch_size = 0)),
        ("grad_accum", Box::new(|c| c.grad_accum = 0)),
        ("lora.dropout", Box::new(|c| c.lora.dropout = 1.0)),
        ("lora.alpha", Box::new(|c| c.lora.alpha = f64::NAN)),
        ("learning_rate", Box::new(|c| c.learning_rate = -1.0)),
        ("beta2", Box::new(|c| c.beta2 = 1.0)),
        ("max_grad_norm", Box::new(|c| c.max_grad_norm = Some(0.0))),
        ("eval_every", Box::new(|c| c.eval_every = Some(0))),
        (
            "checkpoint_steps",
            Box::new(|c| c.checkpoint_steps = vec![3]),
        ),
    ];
    for (field, edit) in cases {
        let mut c = cfg();
        edit(&mut c);
        match Trainer::new(&model(), c) {
            Err(TrainError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
}

#[test]
fn empty_datasets_are_refused() {
    let mut t = Trainer::new(&model(), cfg()).unwrap();
    assert!(matches!(
        t.train(&[], &[], &mut |_| {}),
        Err(TrainError::EmptyDataset { split: "train" })
    ));
    let mut c = cfg();
    c.eval_every = Some(1);
    let mut t = Trainer::new(&model(), c).unwrap();
    assert!(matches!(
        t.train(&data(), &[], &mut |_| {}),
        Err(TrainError::EmptyDataset { split: "eval" })
    ));
    assert_eq!(t.steps_taken(), 0);
}

#[test]
fn an_example_longer_than_the_context_is_named() {
    let mut c = cfg();
    c.max_seq_len = 4;
    let mut t = Trainer::new(&model(), c).unwrap();
    let mut d = data();
    d.push(Example::text(&[1, 2, 3, 4, 5]));
    match t.train(&d, &[], &mut |_| {}) {
        Err(TrainError::ExampleTooLong {
            split,
            index,
            len,
            max,
        }) => {
            assert_eq!((split, index, len, max), ("train", 2, 5, 4));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn tokens_outside_the_vocabulary_and_target_free_examples_are_named() {
    let mut t = Trainer::new(&model(), cfg()).unwrap();
    let before = t.parameters().unwrap();
    let mut d = data();
    d.push(Example::text(&[1, 320]));
    assert!(matches!(
        t.train(&d, &[], &mut |_| {}),
        Err(TrainError::TokenOutOfVocab {
            index: 2,
            position: 1,
            token: 320,
            vocab: 320
        })
    ));
    let mut d = data();
    d.insert(0, Example::prompt_response(&[1, 2, 3], &[]));
    assert!(matches!(
        t.train(&d, &[], &mut |_| {}),
        Err(TrainError::NoTargets {
            split: "train",
            index: 0
        })
    ));
    let mut bad = Example::text(&[1, 2, 3]);
    bad.loss_mask.pop();
    assert!(matches!(
        t.example_gradient(&bad),
        Err(TrainError::MaskLength {
            index: 0,
            tokens: 3,
            mask: 2
        })
    ));
    assert!(matches!(
        t.forward(&[&[1, 999]]),
        Err(TrainError::TokenOutOfVocab { token: 999, .. })
    ));
    assert_eq!(t.parameters().unwrap(), before);
}

#[test]
fn a_non_finite_loss_stops_the_run_at_that_step_before_its_update() {
    // A random tiny llama whose output head overflows f32: the logits are infinite.
    let shape = RandomLlama {
        vocab: 16,
        hidden: 8,
        intermediate: 16,
        layers: 1,
        heads: 2,
        kv_heads: 1,
    };
    let cfg_json = shape.config_json();
    let tensors = shape
        .tensors(3)
        .into_iter()
        .map(|(k, mut t)| {
            if k == "lm_head.weight" {
                t.data.iter_mut().for_each(|v| *v = v.signum() * 3e38);
            }
            (k, HostTensor::from_f32(DType::F32, t.shape, &t.data))
        })
        .collect();
    let model = Model::from_tensors(
        ModelConfig::from_json(cfg_json.as_bytes()).unwrap(),
        tensors,
    )
    .unwrap();
    let mut c = cfg();
    c.steps = 3;
    let mut t = Trainer::new(&model, c).unwrap();
    let before = t.parameters().unwrap();
    let mut events = 0;
    match t.train(&data()[1..], &[], &mut |_| events += 1) {
        Err(TrainError::NonFinite {
            what: "loss",
            step: 1,
            value,
        }) => assert!(value.is_nan()),
        other => panic!("{other:?}"),
    }
    assert_eq!((events, t.steps_taken()), (0, 0));
    assert_eq!(t.parameters().unwrap(), before);
}

#[test]
fn set_parameters_refuses_wrong_lengths_and_non_finite_values() {
    let mut t = Trainer::new(&model(), cfg()).unwrap();
    let p = t.parameters().unwrap();
    assert!(matches!(
        t.set_parameters(&p[1..]),
        Err(TrainError::InvalidConfig {
            field: "parameters",
            ..
        })
    ));
    let mut q = p.clone();
    q[7] = f32::NAN;
    assert!(t.set_parameters(&q).is_err());
    assert_eq!(t.parameters().unwrap(), p);
}
