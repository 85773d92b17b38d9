//! End-to-end parity with PEFT: a plain f32 Llama forward pass, written out here, over the
//! tiny-llama fixture weights with each adapter merged by this crate, reproduces the logits
//! PEFT's `PeftModel` produced (fixtures/peft/tiny-llama/reference.safetensors; torch 2.15.0,
//! transformers 5.24.0, peft 0.21.2) to 1e-5 absolute, and the same 8 greedy tokens.

use std::collections::BTreeMap;
use std::path::PathBuf;

use openledger_lora::adapter::merge::{DenseTensor, merge};
use openledger_lora::adapter::tensors::read_safetensors;
use openledger_lora::adapter::{LoadOptions, LoraAdapter};

const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 16;
const LAYERS: usize = 2;
const VOCAB: usize = 320;
const EPS: f32 = 1e-5;
const THETA: f32 = 10000.0;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama")
}

type Weights = BTreeMap<String, DenseTensor>;

fn load(path: PathBuf) -> Weights {
    read_safetensors(&path, false)
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            (
                k,
                DenseTensor::new(t.shape().to_vec(), t.to_f32().into_owned()),
            )
        })
        .collect()
}

/// `x [t, in] · Wᵀ` for `W [out, in]`.
fn linear(x: &[f32], w: &DenseTensor) -> Vec<f32> {
    let (n_out, n_in) = (w.shape[0], w.shape[1]);
    let t = x.len() / n_in;
    let mut y = vec![0f32; t * n_out];
    for r in 0..t {
        for o in 0..n_out {
            y[r * n_out + o] = (0..n_in)
                .map(|k| x[r * n_in + k] * w.data[o * n_in + k])
                .sum();
        }
    }
    y
}

fn rms_norm(x: &[f32], g: &DenseTensor) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(HIDDEN) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / HIDDEN as f32;
        let inv = 1.0 / (ms + EPS).sqrt();
        out.extend(row.iter().zip(&g.data).map(|(v, gi)| gi * (v * inv)));
    }
    out
}

/// Rotary embedding (rotate-half convention) on `[t, heads·HEAD_DIM]`.
fn rope(x: &mut [f32], heads: usize) {
    let half = HEAD_DIM / 2;
    let t = x.len() / (heads * HEAD_DIM);
    for pos in 0..t {
        for h in 0..heads {
            let base = pos * heads * HEAD_DIM + h * HEAD_DIM;
            for i in 0..half {
                let inv_freq = 1.0 / THETA.powf((2 * i) as f32 / HEAD_DIM as f32);
                let (s, c) = (pos as f32 * inv_freq).sin_cos();
                let (x1, x2) = (x[base + i], x[base + i + half]);
                x[base + i] = x1 * c - x2 * s;
                x[base + i + half] = x2 * c + x1 * s;
            }
        }
    }
}

fn forward(w: &Weights, tokens: &[u32]) -> Vec<f32> {
    let t = tokens.len();
    let emb = &w["model.embed_tokens.weight"];
    let mut h: Vec<f32> = tokens
        .iter()
        .flat_map(|&tok| emb.data[tok as usize * HIDDEN..(tok as usize + 1) * HIDDEN].to_vec())
        .collect();
    for l in 0..LAYERS {
        let p = |n: &str| &w[&format!("model.layers.{l}.{n}.weight")];
        let x = rms_norm(&h, p("input_layernorm"));
        let mut q = linear(&x, p("self_attn.q_proj"));
        let mut k = linear(&x, p("self_attn.k_proj"));
        let v = linear(&x, p("self_attn.v_proj"));
        rope(&mut q, HEADS);
        rope(&mut k, KV_HEADS);
        let mut attn = vec![0f32; t * HEADS * HEAD_DIM];
        let scale = 1.0 / (HEAD_DIM as f32).sqrt();
        for hd in 0..HEADS {
            let kv = hd / (HEADS / KV_HEADS);
            for i in 0..t {
                let qi = &q[i * HEADS * HEAD_DIM + hd * HEAD_DIM..][..HEAD_DIM];
                let scores: Vec<f32> = (0..=i)
                    .map(|j| {
                        let kj = &k[j * KV_HEADS * HEAD_DIM + kv * HEAD_DIM..][..HEAD_DIM];
                        qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale
                    })
                    .collect();
                let m = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f32 = e.iter().sum();
                for (j, ej) in e.iter().enumerate() {
                    let vj = &v[j * KV_HEADS * HEAD_DIM + kv * HEAD_DIM..][..HEAD_DIM];
                    let out = &mut attn[i * HEADS * HEAD_DIM + hd * HEAD_DIM..][..HEAD_DIM];
                    out.iter_mut().zip(vj).for_each(|(o, vv)| *o += ej / z * vv);
                }
            }
        }
        let o = linear(&attn, p("self_attn.o_proj"));
        h.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        let x = rms_norm(&h, p("post_attention_layernorm"));
        let gate = linear(&x, p("mlp.gate_proj"));
        let up = linear(&x, p("mlp.up_proj"));
        let act: Vec<f32> = gate
            .iter()
            .zip(&up)
            .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
            .collect();
        let down = linear(&act, p("mlp.down_proj"));
        h.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
    }
    let x = rms_norm(&h, &w["model.norm.weight"]);
    linear(&x, &w["lm_head.weight"])
}

fn greedy(w: &Weights, seq: &[u32], n: usize) -> Vec<u32> {
    let mut tokens = seq.to_vec();
    for _ in 0..n {
        let logits = forward(w, &tokens);
        let last = &logits[(tokens.len() - 1) * VOCAB..];
        let best = (0..VOCAB)
            .max_by(|&a, &b| last[a].total_cmp(&last[b]).then(b.cmp(&a)))
            .unwrap();
        tokens.push(best as u32);
    }
    tokens[seq.len()..].to_vec()
}

#[test]
fn merged_adapters_reproduce_peft_logits_and_greedy_tokens() {
    let reference = load(fixture().join("reference.safetensors"));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture().join("reference.json")).unwrap()).unwrap();
    let seqs: Vec<Vec<u32>> = json["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s.as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    let mut worst = 0f32;
    for name in ["base", "qv-r4", "all-r8-rslora", "attn-patterns"] {
        let mut w = load(fixture().join("model.safetensors"));
        if name != "base" {
            let dir = fixture().join("adapters").join(name);
            merge(
                &LoraAdapter::from_dir(&dir, &LoadOptions::default()).unwrap(),
                &mut w,
            )
            .unwrap();
        }
        for (i, seq) in seqs.iter().enumerate() {
            let got = forward(&w, seq);
            let want = &reference[&format!("logits.{name}.{i}")];
            assert_eq!(want.shape, vec![seq.len(), VOCAB]);
            let err = got
                .iter()
                .zip(&want.data)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err <= 1e-5, "{name}.{i}: max abs logit diff {err}");
            worst = worst.max(err);
            let want_tokens: Vec<u32> = json["greedy"][format!("{name}.{i}")]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(greedy(&w, seq, 8), want_tokens, "{name}.{i}");
        }
    }
    eprintln!("worst max abs logit diff over all adapters and sequences: {worst}");
}
