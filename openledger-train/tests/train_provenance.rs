//! Data access and provenance: records of a datanet are trained on only with an approved
//! grant, every optimizer step is appended to a hash-chained training log whose entries name
//! the batch's records and checkpoints, and text records are tokenised with the loss on the
//! response only.

use std::path::{Path, PathBuf};

use openledger_core::grant::{GrantError, Grants};
use openledger_core::{Address, B256, ContentId};
use openledger_lora::model::{Model, Tokenizer};
use openledger_train::{
    Example, LoraSettings, RecordText, TrainConfig, TrainError, TrainEvent, Trainer, tokenize,
};

fn model() -> Model {
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama");
    Model::from_dir(&dir).unwrap()
}

fn cfg(steps: usize) -> TrainConfig {
    let mut c = TrainConfig::new(LoraSettings::new(&["q_proj", "v_proj"], 2, 4.0));
    c.steps = steps;
    c.batch_size = 2;
    c.shuffle = false;
    c.checkpoint_steps = vec![2];
    c
}

#[test]
fn records_of_a_datanet_need_an_approved_grant_and_training_is_logged_step_by_step() {
    let (owner, trainer_acct) = (Address::repeat_byte(1), Address::repeat_byte(2));
    let mut grants = Grants::new();
    let datanet = grants.register_datanet(owner);
    let records: Vec<Example> = (0..4u32)
        .map(|i| {
            let tokens = [1, 10 + i, 20 + i, 30 + i];
            Example::text(&tokens).with_source(datanet, ContentId::of(format!("record {i}")))
        })
        .collect();
    let mut own = Example::text(&[1, 2, 3]);
    own.source = None;

    // No grant: refused before any step, naming the datanet and the requester.
    let mut t = Trainer::new(&model(), cfg(3)).unwrap();
    t.require_grants(grants.clone(), trainer_acct);
    match t.train(&records, &[], &mut |_| {}) {
        Err(TrainError::AccessDenied {
            index,
            datanet: d,
            requester,
            record,
            source,
        }) => {
            assert_eq!((index, d, requester), (0, datanet, trainer_acct));
            assert_eq!(record, ContentId::of("record 0"));
            assert!(matches!(*source, GrantError::NoAccess { .. }));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.steps_taken(), 0);

    // Approved: trains, logging every step.
    grants
        .request(datanet, trainer_acct, B256::repeat_byte(9))
        .unwrap();
    grants.approve(datanet, owner, trainer_acct).unwrap();
    let mut t = Trainer::new(&model(), cfg(3)).unwrap();
    t.require_grants(grants.clone(), trainer_acct);
    let genesis = t.start_log(B256::repeat_byte(0xba));
    let mut data = records.clone();
    data.push(own.clone());
    let mut heads = Vec::new();
    let mut batches = Vec::new();
    let mut ckpt = None;
    t.train(&data, &[], &mut |e| match e {
        TrainEvent::Step(s) => {
            heads.push(s.log_head.unwrap());
            batches.push(s.records.iter().map(|r| r.record).collect::<Vec<_>>());
        }
        TrainEvent::Checkpoint(c) => ckpt = Some(c.id),
        TrainEvent::Eval(_) => {}
    })
    .unwrap();
    let log = t.training_log().unwrap();
    assert_eq!(log.len(), 3);
    assert_eq!(log.genesis(), genesis);
    assert_eq!(log.head(), heads[2]);
    assert_eq!(log.verify().unwrap(), log.head());
    assert_eq!(
        heads.iter().collect::<std::collections::HashSet<_>>().len(),
        3
    );
    // Unshuffled: step 1 took records 0, 1; step 2 records 2, 3; step 3 the own example and
    // record 0 again.
    assert_eq!(
        batches[0],
        vec![ContentId::of("record 0"), ContentId::of("record 1")]
    );
    assert_eq!(log.was_used(&ContentId::of("record 0")), Some(vec![1, 3]));
    assert_eq!(log.was_used(&ContentId::of("record 3")), Some(vec![2]));
    let own_id = ContentId::of(
        [1u32, 2, 3]
            .iter()
            .flat_map(|t| t.to_le_bytes())
            .collect::<Vec<u8>>(),
    );
    assert_eq!(log.was_used(&own_id), Some(vec![3]));
    let entry = &log.entries()[1];
    assert_eq!(entry.header().checkpoint, Some(ckpt.unwrap().0));
    let proof = log.prove(&ContentId::of("record 2"), 2).unwrap();
    assert_eq!(
        proof.verify(&ContentId::of("record 2"), log.head()),
        Some(2)
    );

    // Revoked again: refused.
    grants.revoke(datanet, owner, trainer_acct).unwrap();
    let mut t = Trainer::new(&model(), cfg(2)).unwrap();
    t.require_grants(grants, trainer_acct);
    assert!(matches!(
        t.train(&records, &[], &mut |_| {}),
        Err(TrainError::AccessDenied { .. })
    ));
}

const WORDS: &str = r#"{"version": "1.0", "truncation": null, "padding": null,
    "added_tokens": [{"id": 1, "content": "<s>", "single_word": false, "lstrip": false,
        "rstrip": false, "normalized": false, "special": true}],
    "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
    "post_processor": {"type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
    "decoder": null, "model": {"type": "WordLevel",
    "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "what": 3, "is": 4, "two": 5, "plus": 6,
        "four": 7, "six": 8}, "unk_token": "<unk>"}}"#;

#[test]
fn prompt_response_records_put_the_loss_on_the_response_only() {
    let tok = Tokenizer::from_bytes(WORDS.as_bytes()).unwrap();
    let rec = RecordText::PromptResponse {
        prompt: "what is two plus four".into(),
        response: "six".into(),
    };
    let ex = tokenize(&tok, &rec, Some(2)).unwrap();
    assert_eq!(ex.tokens, vec![1, 3, 4, 5, 6, 7, 8, 2]);
    assert_eq!(
        ex.loss_mask,
        vec![false, false, false, false, false, false, true, true]
    );
    let text = tokenize(&tok, &RecordText::Text("two plus four".into()), None).unwrap();
    assert_eq!(text.tokens, vec![1, 5, 6, 7]);
    assert_eq!(text.targets(), 3);
    // Training on the record moves its loss.
    let mut c = TrainConfig::new(LoraSettings::new(&["all-linear"], 2, 4.0));
    c.steps = 5;
    c.batch_size = 1;
    c.learning_rate = 1e-2;
    let mut t = Trainer::new(&model(), c).unwrap();
    let before = t.evaluate(std::slice::from_ref(&ex)).unwrap();
    assert_eq!(before.tokens, 2);
    t.train(std::slice::from_ref(&ex), &[], &mut |_| {})
        .unwrap();
    assert!(t.evaluate(&[ex]).unwrap().loss < before.loss);
}
