//! Architecture details of the llama-family forward pass, each checked on a tiny synthetic
//! model against plain reference math written out here: LLaMA 3 rope scaling, grouped-query
//! head mapping, Gemma's `(1 + w)` norm / GeGLU / embedding scale / tied head, Qwen2's q/k/v
//! bias and Mistral's sliding-window mask. Tolerance: 1e-4 absolute on logits (f32).

use std::collections::BTreeMap;

use openledger_core::DType;
use openledger_lora::adapter::tensors::HostTensor;
use openledger_lora::model::ops::{gqa_kv_head, rope_inv_freq};
use openledger_lora::model::{Activation, Architecture, Model, ModelConfig, RopeScaling, SeqInput};

const TOL: f32 = 1e-4;

fn rand_vals(n: usize, seed: u64, amp: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
        })
        .collect()
}

type Weights = BTreeMap<String, Vec<f32>>;

/// Random weights for every parameter the config needs, with their shapes.
fn weights(cfg: &ModelConfig, seed: u64) -> (Weights, BTreeMap<String, Vec<usize>>) {
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (qd, kvd) = (
        cfg.num_heads * cfg.head_dim,
        cfg.num_kv_heads * cfg.head_dim,
    );
    let mut shapes: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    shapes.insert("model.embed_tokens.weight".into(), vec![v, h]);
    shapes.insert("model.norm.weight".into(), vec![h]);
    if !cfg.tie_word_embeddings {
        shapes.insert("lm_head.weight".into(), vec![v, h]);
    }
    for l in 0..cfg.num_layers {
        let p = |n: &str| format!("model.layers.{l}.{n}");
        shapes.insert(p("input_layernorm.weight"), vec![h]);
        shapes.insert(p("post_attention_layernorm.weight"), vec![h]);
        for (n, o, inp) in [
            ("self_attn.q_proj", qd, h),
            ("self_attn.k_proj", kvd, h),
            ("self_attn.v_proj", kvd, h),
            ("self_attn.o_proj", h, qd),
            ("mlp.gate_proj", i, h),
            ("mlp.up_proj", i, h),
            ("mlp.down_proj", h, i),
        ] {
            shapes.insert(p(&format!("{n}.weight")), vec![o, inp]);
            let attn_bias = n.starts_with("self_attn") && cfg.attention_bias;
            let qkv = cfg.qkv_bias && n != "self_attn.o_proj" && n.starts_with("self_attn");
            if attn_bias || qkv || (n.starts_with("mlp") && cfg.mlp_bias) {
                shapes.insert(p(&format!("{n}.bias")), vec![o]);
            }
        }
    }
    let w = shapes
        .iter()
        .enumerate()
        .map(|(k, (name, shape))| {
            let n = shape.iter().product();
            let amp = if shape.len() == 1 { 0.5 } else { 0.3 };
            let mut vals = rand_vals(n, seed + k as u64, amp);
            if shape.len() == 1 && name.ends_with("norm.weight") && cfg.arch != Architecture::Gemma
            {
                vals.iter_mut().for_each(|x| *x += 1.0);
            }
            (name.clone(), vals)
        })
        .collect();
    (w, shapes)
}

fn model(cfg: &ModelConfig, w: &Weights, shapes: &BTreeMap<String, Vec<usize>>) -> Model {
    let tensors = w
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                HostTensor::from_f32(DType::F32, shapes[k].clone(), v),
            )
        })
        .collect();
    Model::from_tensors(cfg.clone(), tensors).unwrap()
}

// ---- reference math, one token and one weight at a time ----

fn lin(x: &[f32], w: &Weights, name: &str, n_in: usize) -> Vec<f32> {
    let wt = &w[&format!("{name}.weight")];
    let n_out = wt.len() / n_in;
    let bias = w.get(&format!("{name}.bias"));
    x.chunks(n_in)
        .flat_map(|row| {
            (0..n_out).map(move |o| {
                let mut acc = 0f64;
                for k in 0..n_in {
                    acc += row[k] as f64 * wt[o * n_in + k] as f64;
                }
                acc as f32 + bias.map_or(0.0, |b| b[o])
            })
        })
        .collect()
}

fn norm(x: &[f32], g: &[f32], eps: f32, gemma: bool) -> Vec<f32> {
    x.chunks(g.len())
        .flat_map(|row| {
            let ms = row.iter().map(|v| (v * v) as f64).sum::<f64>() / g.len() as f64;
            let r = 1.0 / (ms + eps as f64).sqrt();
            row.iter().zip(g).map(move |(v, w)| {
                (*v as f64 * r * if gemma { 1.0 + *w as f64 } else { *w as f64 }) as f32
            })
        })
        .collect()
}

/// Reference inverse frequencies, LLaMA 3 scaling written from its definition.
fn ref_inv_freq(cfg: &ModelConfig) -> Vec<f64> {
    let d = cfg.head_dim;
    (0..d / 2)
        .map(|i| {
            let f = 1.0 / (cfg.rope_theta as f64).powf(2.0 * i as f64 / d as f64);
            match cfg.rope_scaling {
                RopeScaling::Default => f,
                RopeScaling::Llama3 {
                    factor,
                    low_freq_factor: lo,
                    high_freq_factor: hi,
                    original_max_position_embeddings: old,
                } => {
                    let (factor, lo, hi, old) = (factor as f64, lo as f64, hi as f64, old as f64);
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < old / hi {
                        f
                    } else if wavelen > old / lo {
                        f / factor
                    } else {
                        let s = (old / wavelen - lo) / (hi - lo);
                        (1.0 - s) * f / factor + s * f
                    }
                }
            }
        })
        .collect()
}

fn rope(x: &mut [f32], heads: usize, cfg: &ModelConfig) {
    let d = cfg.head_dim;
    let inv = ref_inv_freq(cfg);
    for (pos, row) in x.chunks_mut(heads * d).enumerate() {
        for hd in 0..heads {
            for i in 0..d / 2 {
                let a = pos as f64 * inv[i];
                let (s, c) = (a.sin(), a.cos());
                let (x1, x2) = (row[hd * d + i] as f64, row[hd * d + i + d / 2] as f64);
                row[hd * d + i] = (x1 * c - x2 * s) as f32;
                row[hd * d + i + d / 2] = (x2 * c + x1 * s) as f32;
            }
        }
    }
}

fn act(cfg: &ModelConfig, x: f32) -> f32 {
    let x = x as f64;
    (match cfg.activation {
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::GeluTanh => {
            0.5 * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
        }
        Activation::Gelu => unreachable!("not used by these configs"),
    }) as f32
}

fn reference(cfg: &ModelConfig, w: &Weights, tokens: &[u32]) -> Vec<f32> {
    let (h, t, d) = (cfg.hidden_size, tokens.len(), cfg.head_dim);
    let (nh, nkv) = (cfg.num_heads, cfg.num_kv_heads);
    let gemma = cfg.arch == Architecture::Gemma;
    let emb = &w["model.embed_tokens.weight"];
    let s = if gemma { (h as f32).sqrt() } else { 1.0 };
    let mut x: Vec<f32> = tokens
        .iter()
        .flat_map(|&tk| emb[tk as usize * h..][..h].iter().map(move |v| v * s))
        .collect();
    for l in 0..cfg.num_layers {
        let p = |n: &str| format!("model.layers.{l}.{n}");
        let xn = norm(
            &x,
            &w[&p("input_layernorm.weight")],
            cfg.rms_norm_eps,
            gemma,
        );
        let mut q = lin(&xn, w, &p("self_attn.q_proj"), h);
        let mut k = lin(&xn, w, &p("self_attn.k_proj"), h);
        let v = lin(&xn, w, &p("self_attn.v_proj"), h);
        rope(&mut q, nh, cfg);
        rope(&mut k, nkv, cfg);
        let mut att = vec![0f32; t * nh * d];
        for hd in 0..nh {
            let kv = hd * nkv / nh;
            for i in 0..t {
                let visible: Vec<usize> = (0..t)
                    .filter(|&j| j <= i && cfg.layer_window(l).is_none_or(|win| i - j < win))
                    .collect();
                let sc: Vec<f64> = visible
                    .iter()
                    .map(|&j| {
                        (0..d)
                            .map(|e| {
                                q[i * nh * d + hd * d + e] as f64
                                    * k[j * nkv * d + kv * d + e] as f64
                            })
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let m = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|s| (s - m).exp()).sum();
                for (&j, s) in visible.iter().zip(&sc) {
                    for e in 0..d {
                        att[i * nh * d + hd * d + e] +=
                            ((s - m).exp() / z * v[j * nkv * d + kv * d + e] as f64) as f32;
                    }
                }
            }
        }
        let o = lin(&att, w, &p("self_attn.o_proj"), nh * d);
        x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        let xn = norm(
            &x,
            &w[&p("post_attention_layernorm.weight")],
            cfg.rms_norm_eps,
            gemma,
        );
        let g = lin(&xn, w, &p("mlp.gate_proj"), h);
        let u = lin(&xn, w, &p("mlp.up_proj"), h);
        let a: Vec<f32> = g.iter().zip(&u).map(|(g, u)| act(cfg, *g) * u).collect();
        let dn = lin(&a, w, &p("mlp.down_proj"), cfg.intermediate_size);
        x.iter_mut().zip(&dn).for_each(|(a, b)| *a += b);
    }
    let xn = norm(&x, &w["model.norm.weight"], cfg.rms_norm_eps, gemma);
    let head = if cfg.tie_word_embeddings {
        "model.embed_tokens"
    } else {
        "lm_head"
    };
    lin(&xn, w, head, h)
}

fn config(json: &str) -> ModelConfig {
    ModelConfig::from_json(json.as_bytes()).unwrap()
}

fn check_against_reference(cfg: &ModelConfig, seed: u64) -> Model {
    let (w, shapes) = weights(cfg, seed);
    let m = model(cfg, &w, &shapes);
    let seqs: [&[u32]; 2] = [&[3, 7, 1, 30, 12, 5, 9], &[2, 2, 31, 0, 17]];
    let got = m
        .forward(&seqs.map(|tokens| SeqInput {
            adapter: None,
            tokens,
        }))
        .unwrap();
    for (seq, g) in seqs.iter().zip(&got) {
        let want = reference(cfg, &w, seq);
        let err = g
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err <= TOL, "{:?}: max abs diff {err}", cfg.arch);
    }
    m
}

const DIMS: &str = r#""vocab_size": 32, "hidden_size": 16, "intermediate_size": 24,
    "num_hidden_layers": 2, "num_attention_heads": 4, "rms_norm_eps": 1e-6"#;

#[test]
fn llama3_rope_scaling_follows_the_wavelength_bands() {
    let scaling = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 64.0,
    };
    let got = rope_inv_freq(16, 10_000.0, scaling);
    let plain = rope_inv_freq(16, 10_000.0, RopeScaling::Default);
    let (mut high, mut low, mut mid) = (0, 0, 0);
    for (g, p) in got.iter().zip(&plain) {
        let wavelen = 2.0 * std::f32::consts::PI / p;
        if wavelen < 16.0 {
            assert_eq!(g, p);
            high += 1;
        } else if wavelen > 64.0 {
            assert!((g - p / 8.0).abs() <= 1e-7 * p);
            low += 1;
        } else {
            let s = (64.0 / wavelen - 1.0) / 3.0;
            assert!((g - ((1.0 - s) * p / 8.0 + s * p)).abs() <= 1e-6 * p);
            mid += 1;
        }
    }
    assert!(high > 0 && low > 0 && mid > 0, "bands {high}/{mid}/{low}");
}

#[test]
fn llama3_scaled_gqa_model_with_explicit_head_dim_matches_reference() {
    let cfg = config(&format!(
        r#"{{"model_type": "llama", {DIMS}, "num_key_value_heads": 2, "head_dim": 8,
        "rope_scaling": {{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8}}, "rope_theta": 500000.0}}"#
    ));
    assert_eq!((cfg.head_dim, cfg.num_kv_heads), (8, 2));
    assert!(matches!(cfg.rope_scaling, RopeScaling::Llama3 { .. }));
    check_against_reference(&cfg, 1);
}

#[test]
fn gqa_maps_consecutive_query_heads_to_one_kv_head() {
    let map: Vec<usize> = (0..8).map(|h| gqa_kv_head(h, 8, 2)).collect();
    assert_eq!(map, [0, 0, 0, 0, 1, 1, 1, 1]);
    let map: Vec<usize> = (0..6).map(|h| gqa_kv_head(h, 6, 3)).collect();
    assert_eq!(map, [0, 0, 1, 1, 2, 2]);
    assert_eq!(
        (0..4).map(|h| gqa_kv_head(h, 4, 4)).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
}

#[test]
fn gemma_norm_geglu_embedding_scale_and_tied_head_match_reference() {
    let cfg = config(&format!(
        r#"{{"model_type": "gemma", {DIMS}, "num_key_value_heads": 1, "head_dim": 8}}"#
    ));
    assert_eq!(cfg.activation, Activation::GeluTanh);
    assert!(cfg.tie_word_embeddings, "gemma ties embeddings by default");
    check_against_reference(&cfg, 2);
}

#[test]
fn qwen2_qkv_bias_is_applied() {
    let cfg = config(&format!(
        r#"{{"model_type": "qwen2", {DIMS}, "num_key_value_heads": 2, "tie_word_embeddings": true}}"#
    ));
    assert!(cfg.qkv_bias && !cfg.attention_bias);
    let (mut w, shapes) = weights(&cfg, 3);
    assert!(shapes.contains_key("model.layers.0.self_attn.q_proj.bias"));
    assert!(!shapes.contains_key("model.layers.0.self_attn.o_proj.bias"));
    let with_bias = check_against_reference(&cfg, 3);
    // the biases change the output: zeroing them gives other logits
    for (k, v) in w.iter_mut() {
        if k.ends_with(".bias") {
            v.iter_mut().for_each(|x| *x = 0.0);
        }
    }
    let without = model(&cfg, &w, &shapes);
    let seq = SeqInput {
        adapter: None,
        tokens: &[4, 5, 6],
    };
    let (a, b) = (
        with_bias.forward(&[seq]).unwrap(),
        without.forward(&[seq]).unwrap(),
    );
    assert!(a[0].iter().zip(&b[0]).any(|(x, y)| (x - y).abs() > 1e-3));
}

#[test]
fn mistral_sliding_window_hides_tokens_older_than_the_window() {
    let one_layer = DIMS.replace(r#""num_hidden_layers": 2"#, r#""num_hidden_layers": 1"#);
    let cfg = config(&format!(
        r#"{{"model_type": "mistral", {one_layer}, "num_key_value_heads": 2, "sliding_window": 3}}"#
    ));
    let m = check_against_reference(&cfg, 4);
    let vocab = cfg.vocab_size;
    let a = m
        .forward(&[SeqInput {
            adapter: None,
            tokens: &[3, 8, 9, 10, 11, 12],
        }])
        .unwrap();
    let b = m
        .forward(&[SeqInput {
            adapter: None,
            tokens: &[20, 8, 9, 10, 11, 12],
        }])
        .unwrap();
    let row = |l: &Vec<f32>, i: usize| l[i * vocab..(i + 1) * vocab].to_vec();
    // position 2 still sees position 0; positions 3.. (i - 0 >= 3) no longer do
    assert_ne!(row(&a[0], 2), row(&b[0], 2));
    for i in 3..6 {
        assert_eq!(row(&a[0], i), row(&b[0], i), "position {i}");
    }
}

#[test]
fn qwen2_sliding_window_applies_only_when_enabled_and_from_max_window_layers_on() {
    let on = config(&format!(
        r#"{{"model_type": "qwen2", {DIMS}, "use_sliding_window": true, "sliding_window": 4,
        "max_window_layers": 1}}"#
    ));
    assert_eq!((on.layer_window(0), on.layer_window(1)), (None, Some(4)));
    check_against_reference(&on, 5);
    let off = config(&format!(
        r#"{{"model_type": "qwen2", {DIMS}, "use_sliding_window": false, "sliding_window": 4}}"#
    ));
    assert_eq!((off.layer_window(0), off.layer_window(1)), (None, None));
}
