//! Properties of the adapter math: DoRA merge round trips, fan_in_fan_out twins, PEFT's module
//! selection on the tiny-llama module list, and weighted combinations against dense reference
//! math written out here.

use std::collections::BTreeMap;
use std::path::PathBuf;

use openledger_core::DType;
use openledger_lora::adapter::base::BaseModel;
use openledger_lora::adapter::build::{AdapterBuilder, random_values};
use openledger_lora::adapter::combine::{
    Combination, CombineOptions, MajoritySign, add_weighted_adapter, magnitude_prune_one,
};
use openledger_lora::adapter::config::{BiasMode, ConfigSpec, LoraConfig, TargetModules};
use openledger_lora::adapter::merge::{DenseTensor, dora_weight, merge, unmerge};
use openledger_lora::adapter::{LoadOptions, LoraAdapter};
use openledger_lora::error::LoraError;

const Q: &str = "model.layers.0.self_attn.q_proj";

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

/// Dense `s·B·A` written out in the test.
fn dense_delta(a: &[f32], b: &[f32], r: usize, n_in: usize, n_out: usize, s: f32) -> Vec<f32> {
    let mut d = vec![0f32; n_out * n_in];
    for o in 0..n_out {
        for i in 0..n_in {
            d[o * n_in + i] = s * (0..r).map(|k| b[o * r + k] * a[k * n_in + i]).sum::<f32>();
        }
    }
    d
}

fn one_module(spec: ConfigSpec, n_in: usize, n_out: usize, seed: u64) -> LoraAdapter {
    let r = spec.r;
    let mut b = AdapterBuilder::new(spec);
    b.random_lora(Q, n_in, n_out, r, seed);
    b.build(&LoadOptions::default()).unwrap()
}

fn dora_adapter(fan_in_fan_out: bool) -> LoraAdapter {
    let mut spec = ConfigSpec::new(3, 6.0, &["q_proj"]);
    spec.use_dora = true;
    spec.fan_in_fan_out = fan_in_fan_out;
    let mut b = AdapterBuilder::new(spec);
    let mag: Vec<f32> = random_values(12, 9).iter().map(|v| 1.0 + v).collect();
    b.random_lora(Q, 10, 12, 3, 4).magnitude(Q, &mag);
    b.build(&LoadOptions::default()).unwrap()
}

#[test]
fn dora_merge_matches_the_dense_formula_and_unmerge_round_trips() {
    let ad = dora_adapter(false);
    let m = ad.module(Q).unwrap();
    let base = random_values(12 * 10, 21);
    let mut w = BTreeMap::from([(
        format!("{Q}.weight"),
        DenseTensor::new(vec![12, 10], base.clone()),
    )]);
    let rec = merge(&ad, &mut w).unwrap();
    // Reference: W' = m / ||W + sBA||_row ⊙ (W + sBA).
    let delta = dense_delta(&m.a_f32(), &m.b_f32(), 3, 10, 12, 2.0);
    let mag = m.magnitude().unwrap().to_f32();
    let mut want = vec![0f32; 120];
    for o in 0..12 {
        let row: Vec<f32> = (0..10)
            .map(|i| base[o * 10 + i] + delta[o * 10 + i])
            .collect();
        let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        for i in 0..10 {
            want[o * 10 + i] = mag[o] / n * row[i];
        }
    }
    let got = &w[&format!("{Q}.weight")].data;
    assert!(max_abs_diff(got, &want) < 1e-6);
    // Each merged row has the magnitude's norm.
    for o in 0..12 {
        let n = got[o * 10..(o + 1) * 10]
            .iter()
            .map(|x| x * x)
            .sum::<f32>()
            .sqrt();
        assert!((n - mag[o]).abs() < 1e-5);
    }
    assert_eq!(dora_weight(m, &base).unwrap(), *got);
    unmerge(&ad, &mut w, rec).unwrap();
    assert!(max_abs_diff(&w[&format!("{Q}.weight")].data, &base) < 1e-6);
}

#[test]
fn fan_in_fan_out_adapter_merges_like_its_transposed_standard_twin() {
    for dora in [false, true] {
        let (std_ad, ffo_ad) = if dora {
            (dora_adapter(false), dora_adapter(true))
        } else {
            let mut spec = ConfigSpec::new(3, 6.0, &["q_proj"]);
            let a = one_module(spec.clone(), 10, 12, 4);
            spec.fan_in_fan_out = true;
            (a, one_module(spec, 10, 12, 4))
        };
        assert!(ffo_ad.module(Q).unwrap().fan_in_fan_out());
        assert_eq!(
            ffo_ad.module(Q).unwrap().delta(),
            std_ad.module(Q).unwrap().delta()
        );
        let base = random_values(120, 5);
        let key = format!("{Q}.weight");
        let mut ws = BTreeMap::from([(key.clone(), DenseTensor::new(vec![12, 10], base.clone()))]);
        let mut wf = BTreeMap::from([(
            key.clone(),
            DenseTensor::new(vec![10, 12], transpose(&base, 12, 10)),
        )]);
        merge(&std_ad, &mut ws).unwrap();
        let rec = merge(&ffo_ad, &mut wf).unwrap();
        let back = transpose(&wf[&key].data, 10, 12);
        assert!(max_abs_diff(&back, &ws[&key].data) < 1e-6, "dora={dora}");
        unmerge(&ffo_ad, &mut wf, rec).unwrap();
        assert!(max_abs_diff(&wf[&key].data, &transpose(&base, 12, 10)) < 1e-6);
        // A standard-layout base is the wrong shape for the fan_in_fan_out adapter.
        let mut wrong =
            BTreeMap::from([(key.clone(), DenseTensor::new(vec![12, 10], base.clone()))]);
        assert!(matches!(
            merge(&ffo_ad, &mut wrong),
            Err(LoraError::ShapeMismatch { .. })
        ));
    }
}

#[test]
fn conv1d_style_factors_are_normalised_to_standard_orientation_at_load() {
    let mut spec = ConfigSpec::new(3, 6.0, &["q_proj"]);
    spec.fan_in_fan_out = true;
    let standard = one_module(spec.clone(), 10, 12, 4);
    let m = standard.module(Q).unwrap();
    let mut b = AdapterBuilder::new(spec);
    // A written [in, r], B written [r, out].
    let a_t = transpose(&m.a_f32(), 3, 10);
    let b_t = transpose(&m.b_f32(), 12, 3);
    b.raw_tensor(
        &format!("base_model.model.{Q}.lora_A.weight"),
        "F32",
        vec![10, 3],
        DType::F32.encode_le(&a_t),
    );
    b.raw_tensor(
        &format!("base_model.model.{Q}.lora_B.weight"),
        "F32",
        vec![3, 12],
        DType::F32.encode_le(&b_t),
    );
    let loaded = b.build(&LoadOptions::default()).unwrap();
    let n = loaded.module(Q).unwrap();
    assert_eq!((n.rank(), n.in_features(), n.out_features()), (3, 10, 12));
    assert_eq!(n.a(), m.a());
    assert_eq!(n.b(), m.b());
}

#[test]
fn lora_bias_and_saved_modules_merge_and_restore() {
    let mut spec = ConfigSpec::new(2, 4.0, &["q_proj"]);
    spec.lora_bias = true;
    spec.modules_to_save = vec!["lm_head".into()];
    let mut b = AdapterBuilder::new(spec);
    b.random_lora(Q, 4, 3, 2, 1).lora_bias(Q, &[1.0, 2.0, 3.0]);
    b.saved("lm_head.weight", vec![2, 4], &[9.0; 8]);
    let ad = b.build(&LoadOptions::default()).unwrap();
    let mut w = BTreeMap::from([
        (
            format!("{Q}.weight"),
            DenseTensor::new(vec![3, 4], vec![0.0; 12]),
        ),
        (format!("{Q}.bias"), DenseTensor::new(vec![3], vec![0.5; 3])),
        (
            "lm_head.weight".to_string(),
            DenseTensor::new(vec![2, 4], vec![1.0; 8]),
        ),
    ]);
    let before = w.clone();
    let rec = merge(&ad, &mut w).unwrap();
    assert_eq!(
        w[&format!("{Q}.bias")].data,
        vec![0.5 + 2.0, 0.5 + 4.0, 0.5 + 6.0]
    );
    assert_eq!(w["lm_head.weight"].data, vec![9.0; 8]);
    unmerge(&ad, &mut w, rec).unwrap();
    assert_eq!(w, before);
}

#[test]
fn bias_all_accepts_saved_biases_and_bias_none_rejects_them() {
    let mut spec = ConfigSpec::new(2, 4.0, &["q_proj"]);
    spec.bias = BiasMode::All;
    let mut b = AdapterBuilder::new(spec);
    b.random_lora(Q, 4, 3, 2, 1)
        .saved("model.layers.1.mlp.up_proj.bias", vec![3], &[1.0; 3]);
    let ad = b.build(&LoadOptions::default()).unwrap();
    assert_eq!(ad.saved_tensors().count(), 1);
    let mut spec = ConfigSpec::new(2, 4.0, &["q_proj"]);
    spec.bias = BiasMode::LoraOnly;
    let mut b = AdapterBuilder::new(spec.clone());
    b.random_lora(Q, 4, 3, 2, 1)
        .saved("model.layers.1.mlp.up_proj.bias", vec![3], &[1.0; 3]);
    assert!(matches!(
        b.build(&LoadOptions::default()),
        Err(LoraError::UnexpectedTensor { .. })
    ));
    spec.bias = BiasMode::None;
    let mut b = AdapterBuilder::new(spec);
    b.random_lora(Q, 4, 3, 2, 1)
        .saved(&format!("{Q}.bias"), vec![3], &[1.0; 3]);
    assert!(matches!(
        b.build(&LoadOptions::default()),
        Err(LoraError::UnexpectedTensor { .. })
    ));
}

#[test]
fn embedding_adapters_merge_into_vocab_by_hidden_weights() {
    let mut b = AdapterBuilder::new(ConfigSpec::new(2, 2.0, &["embed_tokens"]));
    let (a, bb) = (random_values(2 * 5, 1), random_values(3 * 2, 2));
    b.embedding("model.embed_tokens", 5, 3, 2, &a, &bb);
    let ad = b.build(&LoadOptions::default()).unwrap();
    let key = "model.embed_tokens.weight".to_string();
    let mut w = BTreeMap::from([(key.clone(), DenseTensor::new(vec![5, 3], vec![0.0; 15]))]);
    merge(&ad, &mut w).unwrap();
    // PEFT: delta = (B @ A)ᵀ · scale, [vocab, hidden].
    let want = transpose(&dense_delta(&a, &bb, 2, 5, 3, 1.0), 3, 5);
    assert!(max_abs_diff(&w[&key].data, &want) < 1e-7);
}

fn cfg(json: &str) -> LoraConfig {
    LoraConfig::from_json(format!(r#"{{"peft_type": "LORA", "r": 4, {json}}}"#).as_bytes()).unwrap()
}

#[test]
fn target_selection_on_the_tiny_llama_module_list() {
    let base = BaseModel::from_dir(&fixture()).unwrap();
    let sel = |json: &str| base.targeted_modules(&cfg(json));
    let l = |i: usize, m: &str| format!("model.layers.{i}.{m}");
    assert_eq!(
        sel(r#""target_modules": "model\\.layers\\.1\\.self_attn\\.(q|v)_proj""#),
        vec![l(1, "self_attn.q_proj"), l(1, "self_attn.v_proj")]
    );
    // A regex must match the whole name: no partial matches.
    assert!(sel(r#""target_modules": "q_proj""#).is_empty());
    assert_eq!(
        sel(r#""target_modules": ["q_proj", "down_proj"], "layers_to_transform": [1]"#),
        vec![l(1, "mlp.down_proj"), l(1, "self_attn.q_proj")]
    );
    assert_eq!(
        sel(
            r#""target_modules": ["o_proj"], "layers_to_transform": 0, "layers_pattern": "layers""#
        ),
        vec![l(0, "self_attn.o_proj")]
    );
    // A layers_pattern that does not occur selects nothing.
    assert!(
        sel(r#""target_modules": ["o_proj"], "layers_to_transform": [0], "layers_pattern": "h""#)
            .is_empty()
    );
    // An exact name bypasses layers_to_transform, as in PEFT.
    assert_eq!(
        sel(r#""target_modules": ["model.layers.1.mlp.up_proj"], "layers_to_transform": [0]"#),
        vec![l(1, "mlp.up_proj")]
    );
    let all = sel(r#""target_modules": "all-linear""#);
    assert_eq!(all.len(), 14);
    assert!(
        !all.iter()
            .any(|m| m.contains("lm_head") || m.contains("embed") || m.contains("norm"))
    );
    assert_eq!(
        sel(
            r#""target_modules": "all-linear", "exclude_modules": ".*mlp.*", "layers_to_transform": [0]"#
        ),
        ["k_proj", "o_proj", "q_proj", "v_proj"].map(|p| l(0, &format!("self_attn.{p}")))
    );
}

#[test]
fn rank_pattern_regex_keys_match_like_peft_get_pattern_key() {
    let c = cfg(
        r#""target_modules": ["q_proj", "v_proj"], "rank_pattern": {"layers\\.[01]\\.self_attn\\.v_proj": 2}, "alpha_pattern": {"^model.*q_proj": 3}"#,
    );
    assert_eq!(c.rank_for("model.layers.0.self_attn.v_proj"), 2);
    assert_eq!(c.rank_for("model.layers.1.self_attn.v_proj"), 2);
    assert_eq!(c.rank_for("model.layers.2.self_attn.v_proj"), 4);
    assert_eq!(c.alpha_for("model.layers.2.self_attn.q_proj"), 3.0);
    assert_eq!(
        c.spec().target_modules,
        TargetModules::Names(vec!["q_proj".into(), "v_proj".into()])
    );
}

#[test]
fn negative_alpha_is_accepted_like_peft_and_flips_the_delta() {
    let c = cfg(r#""target_modules": ["q_proj"], "lora_alpha": -8"#);
    assert_eq!(c.scale_for("a.q_proj"), -2.0);
}

#[test]
fn bf16_adapters_stay_bf16_in_memory() {
    let mut b = AdapterBuilder::new(ConfigSpec::new(4, 8.0, &["q_proj"])).with_dtype(DType::BF16);
    b.random_lora(Q, 64, 32, 4, 1);
    let ad = b.build(&LoadOptions::default()).unwrap();
    let m = ad.module(Q).unwrap();
    assert_eq!(m.a().dtype(), DType::BF16);
    assert_eq!(m.a().as_bf16().unwrap().len(), 4 * 64);
    assert_eq!(ad.resident_bytes(), (4 * 64 + 32 * 4) * 2);
}

// ---------- weighted combination ----------

fn pair(r1: usize, r2: usize) -> (LoraAdapter, LoraAdapter) {
    let mut s1 = ConfigSpec::new(r1, 2.0 * r1 as f64, &["q_proj"]);
    s1.alpha_pattern = vec![];
    let s2 = ConfigSpec::new(r2, 3.0, &["q_proj"]);
    (one_module(s1, 12, 10, 1), one_module(s2, 12, 10, 2))
}

fn delta_of(ad: &LoraAdapter) -> Vec<f32> {
    ad.module(Q).unwrap().delta()
}

#[test]
fn linear_of_one_adapter_with_weight_one_is_its_delta() {
    let (a, _) = pair(4, 4);
    for c in [
        Combination::Linear,
        Combination::Cat,
        Combination::Svd,
        Combination::Ties,
    ] {
        let out = add_weighted_adapter(&[&a], &[1.0], &CombineOptions::new(c), None).unwrap();
        assert!(max_abs_diff(&delta_of(&out), &delta_of(&a)) < 1e-6, "{c:?}");
        assert_eq!(out.config().r(), 4);
        assert_eq!(out.module(Q).unwrap().scale(), 1.0);
    }
}

#[test]
fn linear_sums_sqrt_weighted_factors() {
    let (a, b) = pair(4, 4);
    let w = [0.7f32, 0.4];
    let out = add_weighted_adapter(
        &[&a, &b],
        &w,
        &CombineOptions::new(Combination::Linear),
        None,
    )
    .unwrap();
    let (ma, mb) = (a.module(Q).unwrap(), b.module(Q).unwrap());
    let (ca, cb) = ((w[0] * ma.scale()).sqrt(), (w[1] * mb.scale()).sqrt());
    let want_a: Vec<f32> = ma
        .a_f32()
        .iter()
        .zip(mb.a_f32().iter())
        .map(|(x, y)| ca * x + cb * y)
        .collect();
    let want_b: Vec<f32> = ma
        .b_f32()
        .iter()
        .zip(mb.b_f32().iter())
        .map(|(x, y)| ca * x + cb * y)
        .collect();
    let m = out.module(Q).unwrap();
    assert!(max_abs_diff(&m.a_f32(), &want_a) < 1e-6);
    assert!(max_abs_diff(&m.b_f32(), &want_b) < 1e-6);
    // Negative weight·scale has no square root: PEFT raises, so do we.
    assert!(matches!(
        add_weighted_adapter(
            &[&a, &b],
            &[-1.0, 1.0],
            &CombineOptions::new(Combination::Linear),
            None
        ),
        Err(LoraError::InvalidArgument { .. })
    ));
    // Linear needs equal ranks.
    let (c, d) = pair(4, 2);
    assert!(
        add_weighted_adapter(
            &[&c, &d],
            &w,
            &CombineOptions::new(Combination::Linear),
            None
        )
        .is_err()
    );
}

#[test]
fn cat_delta_is_the_weighted_sum_of_deltas_with_rank_summed() {
    let (a, b) = pair(4, 2);
    let w = [0.7f32, -0.4];
    let out =
        add_weighted_adapter(&[&a, &b], &w, &CombineOptions::new(Combination::Cat), None).unwrap();
    assert_eq!(out.module(Q).unwrap().rank(), 6);
    let want: Vec<f32> = delta_of(&a)
        .iter()
        .zip(delta_of(&b))
        .map(|(x, y)| w[0] * x + w[1] * y)
        .collect();
    assert!(max_abs_diff(&delta_of(&out), &want) < 1e-6);
}

#[test]
fn svd_with_full_rank_reproduces_the_summed_delta() {
    let (a, b) = pair(4, 2);
    let w = [0.7f32, 0.4];
    let (sa, sb) = (a.module(Q).unwrap().scale(), b.module(Q).unwrap().scale());
    // PEFT's svd path weights the (already scaled) deltas by weight·scale.
    let want: Vec<f32> = delta_of(&a)
        .iter()
        .zip(delta_of(&b))
        .map(|(x, y)| w[0] * sa * x + w[1] * sb * y)
        .collect();
    let mut opts = CombineOptions::new(Combination::Svd);
    opts.svd_rank = Some(6);
    let mut calls = Vec::new();
    let mut progress = |d: usize, t: usize| calls.push((d, t));
    let out = add_weighted_adapter(&[&a, &b], &w, &opts, Some(&mut progress)).unwrap();
    assert_eq!(calls, vec![(1, 1)]);
    assert!(max_abs_diff(&delta_of(&out), &want) < 1e-5);
    // Default rank is the largest r (4): still exact, the sum has rank ≤ 6 but we check the
    // best rank-4 approximation error equals the tail singular values' energy bound loosely.
    let out4 =
        add_weighted_adapter(&[&a, &b], &w, &CombineOptions::new(Combination::Svd), None).unwrap();
    assert_eq!(out4.module(Q).unwrap().rank(), 4);
    let err4 = max_abs_diff(&delta_of(&out4), &want);
    assert!(err4 > 1e-6, "a rank-4 cut of a rank-6 sum cannot be exact");
    // svd_clamp: both factors are clamped to ±(the q-quantile of all their entries), as PEFT.
    opts.svd_clamp = Some(0.9);
    let out_c = add_weighted_adapter(&[&a, &b], &w, &opts, None).unwrap();
    let (m, mc) = (out.module(Q).unwrap(), out_c.module(Q).unwrap());
    let mut all: Vec<f32> = m.b_f32().iter().chain(m.a_f32().iter()).copied().collect();
    all.sort_by(f32::total_cmp);
    let pos = 0.9 * (all.len() - 1) as f32;
    let (lo, frac) = (pos.floor() as usize, pos - pos.floor());
    let hi = all[lo] + (all[lo + 1] - all[lo]) * frac;
    let clamp = |v: &[f32]| -> Vec<f32> { v.iter().map(|x| x.clamp(-hi, hi)).collect() };
    assert!(max_abs_diff(&mc.a_f32(), &clamp(&m.a_f32())) < 1e-6);
    assert!(max_abs_diff(&mc.b_f32(), &clamp(&m.b_f32())) < 1e-6);
    let bites = max_abs_diff(&mc.a_f32(), &m.a_f32()).max(max_abs_diff(&mc.b_f32(), &m.b_f32()));
    assert!(bites > 1e-3, "the clamp bites: {bites}");
}

/// TIES written out: magnitude prune, elect the sign, average the agreeing weighted values.
fn ties_reference(ts: &[Vec<f32>], w: &[f32], density: f32, method: MajoritySign) -> Vec<f32> {
    let p: Vec<Vec<f32>> = ts
        .iter()
        .map(|t| {
            let k = (density * t.len() as f32) as usize;
            let mut mags: Vec<f32> = t.iter().map(|x| x.abs()).collect();
            mags.sort_by(|a, b| b.total_cmp(a));
            let thr = if k == 0 { f32::INFINITY } else { mags[k - 1] };
            t.iter()
                .map(|x| if x.abs() >= thr { *x } else { 0.0 })
                .collect()
        })
        .collect();
    (0..ts[0].len())
        .map(|e| {
            let score: f32 = match method {
                MajoritySign::Total => p.iter().map(|t| t[e]).sum(),
                MajoritySign::Frequency => p
                    .iter()
                    .map(|t| t[e].signum() * (t[e] != 0.0) as i32 as f32)
                    .sum(),
            };
            let maj = if score >= 0.0 { 1.0 } else { -1.0 };
            let agree: Vec<f32> = p
                .iter()
                .zip(w)
                .filter(|(t, _)| t[e] != 0.0 && t[e].signum() == maj)
                .map(|(t, wj)| t[e] * wj)
                .collect();
            agree.iter().sum::<f32>() / (agree.len().max(1) as f32)
        })
        .collect()
}

#[test]
fn ties_matches_the_dense_reference_on_each_factor() {
    let (a, b) = pair(4, 4);
    let w = [0.7f32, 0.4];
    for method in [MajoritySign::Total, MajoritySign::Frequency] {
        let mut opts = CombineOptions::new(Combination::Ties);
        opts.density = Some(0.5);
        opts.majority_sign = method;
        let out = add_weighted_adapter(&[&a, &b], &w, &opts, None).unwrap();
        let (ma, mb) = (a.module(Q).unwrap(), b.module(Q).unwrap());
        let sw = [(w[0] * ma.scale()).sqrt(), (w[1] * mb.scale()).sqrt()];
        let want_a = ties_reference(
            &[ma.a_f32().into_owned(), mb.a_f32().into_owned()],
            &sw,
            0.5,
            method,
        );
        let want_b = ties_reference(
            &[ma.b_f32().into_owned(), mb.b_f32().into_owned()],
            &sw,
            0.5,
            method,
        );
        let m = out.module(Q).unwrap();
        assert!(max_abs_diff(&m.a_f32(), &want_a) < 1e-6, "{method:?}");
        assert!(max_abs_diff(&m.b_f32(), &want_b) < 1e-6, "{method:?}");
    }
}

#[test]
fn magnitude_prune_keeps_the_largest_entries_then_sums() {
    let t = vec![0.1, -0.5, 0.3, 0.05, -0.2, 0.4];
    assert_eq!(
        magnitude_prune_one(&t, 0.5),
        vec![0.0, -0.5, 0.3, 0.0, 0.0, 0.4]
    );
    assert_eq!(magnitude_prune_one(&t, 1.0), t);
    let (a, b) = pair(4, 4);
    let mut opts = CombineOptions::new(Combination::MagnitudePruneSvd);
    opts.density = Some(0.3);
    opts.svd_rank = Some(10);
    let w = [0.7f32, 0.4];
    let out = add_weighted_adapter(&[&a, &b], &w, &opts, None).unwrap();
    let (sa, sb) = (a.module(Q).unwrap().scale(), b.module(Q).unwrap().scale());
    let want: Vec<f32> = magnitude_prune_one(&delta_of(&a), 0.3)
        .iter()
        .zip(magnitude_prune_one(&delta_of(&b), 0.3))
        .map(|(x, y)| w[0] * sa * x + w[1] * sb * y)
        .collect();
    assert!(max_abs_diff(&delta_of(&out), &want) < 1e-5);
}

#[test]
fn dare_linear_drops_and_rescales_with_a_seeded_mask() {
    let (a, b) = pair(4, 4);
    let w = [0.7f32, 0.4];
    let density = 0.6f32;
    let mut opts = CombineOptions::new(Combination::DareLinearSvd);
    opts.density = Some(density);
    opts.svd_rank = Some(10);
    opts.seed = 42;
    let out = add_weighted_adapter(&[&a, &b], &w, &opts, None).unwrap();
    let again = add_weighted_adapter(&[&a, &b], &w, &opts, None).unwrap();
    assert_eq!(delta_of(&out), delta_of(&again), "same seed, same result");
    opts.seed = 43;
    let other = add_weighted_adapter(&[&a, &b], &w, &opts, None).unwrap();
    assert!(max_abs_diff(&delta_of(&out), &delta_of(&other)) > 1e-4);
    // Every entry is one of the four keep/drop combinations of the two rescaled deltas.
    let (sa, sb) = (a.module(Q).unwrap().scale(), b.module(Q).unwrap().scale());
    let (da, db) = (delta_of(&a), delta_of(&b));
    let got = delta_of(&out);
    let mut kept = 0usize;
    for e in 0..got.len() {
        let x = w[0] * sa * da[e] / density;
        let y = w[1] * sb * db[e] / density;
        let options = [(0.0, 0), (x, 1), (y, 1), (x + y, 2)];
        let (_, k) = options
            .iter()
            .min_by(|p, q| (p.0 - got[e]).abs().total_cmp(&(q.0 - got[e]).abs()))
            .unwrap();
        let best = options
            .iter()
            .map(|o| (o.0 - got[e]).abs())
            .fold(f32::INFINITY, f32::min);
        assert!(best < 1e-5, "entry {e}: {} matches no mask", got[e]);
        kept += k;
    }
    let frac = kept as f32 / (2 * got.len()) as f32;
    assert!((frac - density).abs() < 0.08, "kept fraction {frac}");
    // Density 1 keeps everything: DARE-linear equals linear.
    let mut full = CombineOptions::new(Combination::DareLinear);
    full.density = Some(1.0);
    let d1 = add_weighted_adapter(&[&a, &b], &w, &full, None).unwrap();
    let lin = add_weighted_adapter(
        &[&a, &b],
        &w,
        &CombineOptions::new(Combination::Linear),
        None,
    )
    .unwrap();
    assert!(max_abs_diff(&delta_of(&d1), &delta_of(&lin)) < 1e-6);
}

#[test]
fn dare_ties_with_full_density_is_ties_with_full_density() {
    let (a, b) = pair(4, 4);
    let w = [0.7f32, 0.4];
    let mut dt = CombineOptions::new(Combination::DareTies);
    dt.density = Some(1.0);
    let mut t = CombineOptions::new(Combination::Ties);
    t.density = Some(1.0);
    let x = add_weighted_adapter(&[&a, &b], &w, &dt, None).unwrap();
    let y = add_weighted_adapter(&[&a, &b], &w, &t, None).unwrap();
    assert_eq!(delta_of(&x), delta_of(&y));
    // Methods that prune need a density.
    assert!(matches!(
        add_weighted_adapter(&[&a, &b], &w, &CombineOptions::new(Combination::DareTies), None),
        Err(LoraError::InvalidArgument { name, .. }) if name == "density"
    ));
}

#[test]
fn combining_dora_adapters_is_unsupported() {
    let d = dora_adapter(false);
    assert!(matches!(
        add_weighted_adapter(
            &[&d, &d],
            &[1.0, 1.0],
            &CombineOptions::new(Combination::Cat),
            None
        ),
        Err(LoraError::Unsupported { .. })
    ));
}
