//! Every architecture of the family trains and round-trips: for random tiny Mistral (sliding
//! window), Qwen2 (q/k/v bias, window from layer 1), Gemma (GeGLU, `(1 + w)` norms, scaled
//! and tied embeddings) and LLaMA 3 (rope scaling, attention and MLP biases) models, a
//! trained adapter attached to the engine gives the trainer's logits, and the config the
//! trainer writes for a merged base reads back as the same config.

use std::collections::BTreeMap;

use openledger_core::DType;
use openledger_lora::adapter::tensors::HostTensor;
use openledger_lora::model::model_config_json;
use openledger_lora::model::{Model, ModelConfig, SeqInput};
use openledger_train::{Example, LoraSettings, TrainConfig, Trainer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random_model(config_json: &str, seed: u64) -> Model {
    let cfg = ModelConfig::from_json(config_json.as_bytes()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut t = BTreeMap::new();
    let mut put = |k: String, shape: Vec<usize>, amp: f32, offset: f32| {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| offset + rng.random_range(-amp..amp))
            .collect();
        t.insert(k, HostTensor::from_f32(DType::F32, shape, &v));
    };
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (qd, kvd) = (
        cfg.num_heads * cfg.head_dim,
        cfg.num_kv_heads * cfg.head_dim,
    );
    let gemma = cfg.arch == openledger_lora::model::Architecture::Gemma;
    let norm_offset = if gemma { 0.0 } else { 1.0 };
    // Gemma multiplies embeddings by √hidden and ties the head to them: keep them small.
    let embed_amp = if gemma { 0.1 } else { 0.5 };
    put(
        "model.embed_tokens.weight".into(),
        vec![v, h],
        embed_amp,
        0.0,
    );
    if !cfg.tie_word_embeddings {
        put("lm_head.weight".into(), vec![v, h], 0.5, 0.0);
    }
    put("model.norm.weight".into(), vec![h], 0.2, norm_offset);
    for l in 0..cfg.num_layers {
        let p = |n: &str| format!("model.layers.{l}.{n}");
        put(p("input_layernorm.weight"), vec![h], 0.2, norm_offset);
        put(
            p("post_attention_layernorm.weight"),
            vec![h],
            0.2,
            norm_offset,
        );
        let qkv_bias = cfg.attention_bias || cfg.qkv_bias;
        for (n, fin, fout, bias) in [
            ("self_attn.q_proj", h, qd, qkv_bias),
            ("self_attn.k_proj", h, kvd, qkv_bias),
            ("self_attn.v_proj", h, kvd, qkv_bias),
            ("self_attn.o_proj", qd, h, cfg.attention_bias),
            ("mlp.gate_proj", h, i, cfg.mlp_bias),
            ("mlp.up_proj", h, i, cfg.mlp_bias),
            ("mlp.down_proj", i, h, cfg.mlp_bias),
        ] {
            put(
                p(&format!("{n}.weight")),
                vec![fout, fin],
                1.0 / (fin as f32).sqrt(),
                0.0,
            );
            if bias {
                put(p(&format!("{n}.bias")), vec![fout], 0.1, 0.0);
            }
        }
    }
    Model::from_tensors(cfg, t).unwrap()
}

fn check(config_json: &str, dora: bool) {
    let (d, scale) = run(config_json, dora);
    assert!(d <= 1e-5 * scale.max(1.0), "max |diff| {d}");
}

fn run(config_json: &str, dora: bool) -> (f32, f32) {
    let model = random_model(config_json, 3);
    let cfg = model.config().clone();
    // The config the trainer writes for merged bases reads back as the same config.
    let again = ModelConfig::from_json(model_config_json(&cfg).as_bytes()).unwrap();
    assert_eq!(again, cfg);

    let mut l = LoraSettings::new(&["all-linear"], 4, 8.0);
    l.use_dora = dora;
    let mut c = TrainConfig::new(l);
    c.steps = 4;
    c.batch_size = 3;
    c.learning_rate = 1e-2;
    let v = cfg.vocab_size as u32;
    let data: Vec<Example> = (0..6u32)
        .map(|k| Example::text(&(0..9).map(|j| (k * 7 + j * 3) % v).collect::<Vec<_>>()))
        .collect();
    let mut t = Trainer::new(&model, c).unwrap();
    let summary = t.train(&data, &[], &mut |_| {}).unwrap();
    assert!(
        summary.losses[3] < summary.losses[0],
        "{:?}",
        summary.losses
    );
    let dir = tempfile::tempdir().unwrap();
    t.save_adapter(dir.path()).unwrap();
    let adapter = openledger_lora::adapter::LoraAdapter::from_dir(
        dir.path(),
        &openledger_lora::adapter::LoadOptions::default(),
    )
    .unwrap();
    let mut engine = model.clone();
    let id = engine.attach_adapter("t", &adapter).unwrap();
    let seq: Vec<u32> = (0..8).map(|j| (j * 5 + 1) % v).collect();
    let ours = t.forward(&[&seq]).unwrap();
    let theirs = engine
        .forward(&[SeqInput {
            adapter: Some(id),
            tokens: &seq,
        }])
        .unwrap();
    let base = engine
        .forward(&[SeqInput {
            adapter: None,
            tokens: &seq,
        }])
        .unwrap();
    let d = ours[0]
        .iter()
        .zip(&theirs[0])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    let moved = ours[0]
        .iter()
        .zip(&base[0])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    let scale = theirs[0].iter().map(|a| a.abs()).fold(0.0, f32::max);
    eprintln!("max |trainer - engine| = {d:e} (logits up to {scale}, adapter moved them {moved})");
    assert!(moved > 1e-3);
    assert!(
        summary.losses[3] < summary.losses[0],
        "{:?}",
        summary.losses
    );
    (d, scale)
}

#[test]
fn mistral_with_a_sliding_window_trains_and_round_trips() {
    check(
        r#"{"model_type": "mistral", "vocab_size": 40, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "sliding_window": 3, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}"#,
        false,
    );
}

#[test]
fn qwen2_with_qkv_bias_and_a_window_from_layer_one_trains_and_round_trips() {
    // Layer 0 attends to the whole prefix, layer 1 through the window.
    for dora in [false, true] {
        check(
            r#"{"model_type": "qwen2", "vocab_size": 40, "hidden_size": 32, "intermediate_size": 48,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1,
            "use_sliding_window": true, "sliding_window": 4, "max_window_layers": 1,
            "tie_word_embeddings": false, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0}"#,
            dora,
        );
    }
}

#[test]
fn gemma_with_tied_scaled_embeddings_trains_and_round_trips() {
    check(
        r#"{"model_type": "gemma", "vocab_size": 40, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 16, "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6}"#,
        false,
    );
}

#[test]
fn llama3_with_rope_scaling_and_biases_trains_and_round_trips_with_dora() {
    check(
        r#"{"model_type": "llama", "vocab_size": 40, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
        "attention_bias": true, "mlp_bias": true, "hidden_act": "silu", "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8}}"#,
        true,
    );
}
