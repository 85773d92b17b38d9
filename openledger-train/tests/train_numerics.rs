//! The trainer's numerics: AdamW and the schedules against numbers printed by PyTorch and
//! transformers, LoRA / DoRA gradients against finite differences, gradient accumulation
//! against one large batch, and a loss that falls.

use std::path::{Path, PathBuf};

use openledger_core::ContentId;
use openledger_lora::model::Model;
use openledger_train::{
    AdamW, Example, LoraSettings, Schedule, TrainConfig, TrainEvent, Trainer, clip_grad_norm, lr_at,
};

fn tiny_llama() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama")
}

/// Prompt of four tokens; the response is the prompt shifted by 50.
fn dataset(n: usize, salt: usize) -> Vec<Example> {
    (0..n)
        .map(|i| {
            let p: Vec<u32> = (0..4)
                .map(|k| 3 + ((i * 7 + k * 5 + salt * 13) % 200) as u32)
                .collect();
            let r: Vec<u32> = p.iter().map(|t| t + 50).collect();
            let mut prompt = vec![1];
            prompt.extend(&p);
            Example::prompt_response(&prompt, &r)
        })
        .collect()
}

#[test]
fn adamw_matches_torch_optim_adamw_over_three_steps() {
    // torch.optim.AdamW(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1), float32,
    // torch 2.15, parameters [0.5, -1, 2] and these gradients; printed after each step.
    let torch = [
        [0.489500016f64, -0.989000022, 1.98800004],
        [0.486347139, -0.991672099, 1.97931147],
        [0.479279667, -0.995872855, 1.97444093],
    ];
    let grads = [[0.1f32, -0.2, 0.3], [-0.05, 0.4, 0.0], [0.2, 0.2, -0.1]];
    let mut opt = AdamW::new(0.9, 0.999, 1e-8, 0.1, &[3]);
    let mut p = vec![0.5f32, -1.0, 2.0];
    for (g, want) in grads.iter().zip(torch) {
        opt.step(0.01, &mut [&mut p[..]], &[&g[..]]);
        for (a, b) in p.iter().zip(want) {
            // One f32 ulp at 2.0 is 2.4e-7.
            assert!((*a as f64 - b).abs() <= 2e-7, "{p:?} vs {want:?}");
        }
    }
    // Step 1 by hand: m̂ = g, v̂ = g², so p₁ = p₀(1 − lr·wd) − lr·g/(|g| + ε).
    let hand = 0.5f64 * (1.0 - 0.01 * 0.1) - 0.01 * 0.1 / (0.1 + 1e-8);
    assert!((torch[0][0] - hand).abs() < 1e-7);
    assert_eq!(opt.steps(), 3);
}

#[test]
fn schedules_match_transformers_warmup_cosine_and_linear() {
    // get_cosine_schedule_with_warmup / get_linear_schedule_with_warmup(optimizer(lr=1e-3),
    // num_warmup_steps=3, num_training_steps=10): the rate of steps 0..=10.
    let cosine = [
        0.0,
        0.000333333333333,
        0.000666666666667,
        0.001,
        0.000950484433951,
        0.000811744900929,
        0.000611260466978,
        0.000388739533022,
        0.000188255099071,
        4.95155660488e-05,
        0.0,
    ];
    let linear = [
        0.0,
        0.000333333333333,
        0.000666666666667,
        0.001,
        0.000857142857143,
        0.000714285714286,
        0.000571428571429,
        0.000428571428571,
        0.000285714285714,
        0.000142857142857,
        0.0,
    ];
    for step in 0..=10 {
        let c = lr_at(Schedule::Cosine, 1e-3, 3, 10, step);
        let l = lr_at(Schedule::Linear, 1e-3, 3, 10, step);
        assert!((c - cosine[step]).abs() < 1e-14, "cosine step {step}: {c}");
        assert!((l - linear[step]).abs() < 1e-14, "linear step {step}: {l}");
        let k = lr_at(Schedule::Constant, 1e-3, 3, 10, step);
        assert!((k - if step < 3 { linear[step] } else { 1e-3 }).abs() < 1e-14);
    }
}

#[test]
fn gradient_clipping_scales_to_the_max_norm_like_torch() {
    let mut g = vec![vec![3.0f32, 0.0], vec![4.0]];
    let norm = clip_grad_norm(&mut g, Some(1.0));
    assert_eq!(norm, 5.0);
    let coef = (1.0 / (5.0 + 1e-6)) as f32;
    assert_eq!(g, vec![vec![3.0 * coef, 0.0], vec![4.0 * coef]]);
    let mut small = vec![vec![0.3f32]];
    assert!((clip_grad_norm(&mut small, Some(1.0)) - 0.3).abs() < 1e-7);
    assert_eq!(small, vec![vec![0.3f32]]);
}

/// Central differences of the example's loss against [`Trainer::example_gradient`], on the
/// largest gradient coordinates and along two directions, over the parameters whose layout
/// name contains `only`. Returns the worst relative error.
fn finite_difference_check(lora: LoraSettings, only: &str) -> f64 {
    let model = Model::from_dir(&tiny_llama()).unwrap();
    let mut c = TrainConfig::new(lora);
    c.steps = 3;
    c.learning_rate = 2e-2;
    c.batch_size = 4;
    let mut t = Trainer::new(&model, c).unwrap();
    t.train(&dataset(12, 0), &[], &mut |_| {}).unwrap();
    let ex = dataset(1, 3).remove(0);
    let p0 = t.parameters().unwrap();
    let mut g = t.example_gradient(&ex).unwrap();
    assert_eq!(g.len(), p0.len());
    let mut checked = 0;
    for s in t.gradient_layout() {
        let n: usize = s.shape.iter().product();
        if s.name.contains(only) {
            checked += n;
        } else {
            g[s.offset..s.offset + n].iter_mut().for_each(|v| *v = 0.0);
        }
    }
    assert!(checked > 0);
    let mut loss_at = |p: &[f32]| -> f64 {
        t.set_parameters(p).unwrap();
        t.evaluate(std::slice::from_ref(&ex)).unwrap().loss
    };
    let mut worst = 0.0f64;
    // Coordinates with the largest gradients.
    let mut idx: Vec<usize> = (0..g.len()).collect();
    idx.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
    let eps = 1e-2f32;
    for &i in &idx[..6] {
        let (mut hi, mut lo) = (p0.clone(), p0.clone());
        hi[i] += eps;
        lo[i] -= eps;
        let fd = (loss_at(&hi) - loss_at(&lo)) / (2.0 * eps as f64);
        let err = (fd - g[i] as f64).abs() / (g[i] as f64).abs();
        worst = worst.max(err);
    }
    // Directional derivatives: along the gradient and along a fixed mixed direction.
    let norm = g.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    let mixed: Vec<f32> = (0..g.len())
        .map(|i| match (g[i] == 0.0, i % 3) {
            (true, _) => 0.0,
            (false, 0) => 1.0,
            (false, _) => -0.5,
        })
        .collect();
    let mnorm = mixed
        .iter()
        .map(|v| (*v as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    for dir in [
        g.iter()
            .map(|v| (*v as f64 / norm) as f32)
            .collect::<Vec<_>>(),
        mixed.iter().map(|v| (*v as f64 / mnorm) as f32).collect(),
    ] {
        let h = 1e-2f32;
        let hi: Vec<f32> = p0.iter().zip(&dir).map(|(p, d)| p + h * d).collect();
        let lo: Vec<f32> = p0.iter().zip(&dir).map(|(p, d)| p - h * d).collect();
        let fd = (loss_at(&hi) - loss_at(&lo)) / (2.0 * h as f64);
        let an: f64 = g.iter().zip(&dir).map(|(a, b)| *a as f64 * *b as f64).sum();
        worst = worst.max((fd - an).abs() / an.abs().max(1e-3));
    }
    worst
}

#[test]
fn lora_gradients_match_central_finite_differences() {
    // f32 forward, step 1e-2: truncation and rounding errors stay below 1 % of these gradients.
    let lora = LoraSettings::new(&["q_proj", "v_proj", "down_proj"], 2, 4.0);
    let worst = finite_difference_check(lora, "lora_");
    eprintln!("worst relative error {worst:e}");
    assert!(worst < 1e-2, "worst relative error {worst}");
}

#[test]
fn dora_magnitude_gradients_match_central_finite_differences() {
    // Only the magnitudes: as in PEFT, the norm ‖W + ΔW‖ is detached, so the gradients of A
    // and B are deliberately not those of the loss (the engine round trip covers them).
    let mut l = LoraSettings::new(&["k_proj", "o_proj", "gate_proj"], 2, 4.0);
    l.use_dora = true;
    let worst = finite_difference_check(l, "magnitude");
    eprintln!("worst relative error {worst:e}");
    assert!(worst < 1e-2, "worst relative error {worst}");
}

#[test]
fn accumulating_two_batches_of_four_equals_one_batch_of_eight() {
    let model = Model::from_dir(&tiny_llama()).unwrap();
    let data = dataset(16, 1);
    let run = |batch: usize, accum: usize| {
        let mut c = TrainConfig::new(LoraSettings::new(&["all-linear"], 4, 8.0));
        c.steps = 2;
        c.batch_size = batch;
        c.grad_accum = accum;
        c.shuffle = false;
        c.learning_rate = 1e-2;
        let mut t = Trainer::new(&model, c).unwrap();
        let mut reports = Vec::new();
        t.train(&data, &[], &mut |e| {
            if let TrainEvent::Step(s) = e {
                reports.push((s.loss, s.grad_norm, s.tokens));
            }
        })
        .unwrap();
        (t.parameters().unwrap(), reports)
    };
    let (pa, ra) = run(4, 2);
    let (pb, rb) = run(8, 1);
    for ((la, na, ta), (lb, nb, tb)) in ra.iter().zip(&rb) {
        assert_eq!(ta, tb);
        assert!((la - lb).abs() <= 1e-6 * lb, "loss {la} vs {lb}");
        assert!((na - nb).abs() <= 1e-5 * nb, "grad norm {na} vs {nb}");
    }
    let d = pa
        .iter()
        .zip(&pb)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(d <= 1e-6, "parameters differ by {d}");
}

#[test]
fn loss_falls_on_a_tiny_task_with_eval_and_checkpoint_events() {
    let model = Model::from_dir(&tiny_llama()).unwrap();
    let mut c = TrainConfig::new(LoraSettings::new(&["all-linear"], 8, 16.0));
    c.steps = 40;
    c.batch_size = 8;
    c.learning_rate = 1e-2;
    c.warmup_steps = 4;
    c.eval_every = Some(20);
    c.checkpoint_steps = vec![20, 40];
    let train = dataset(32, 0);
    let eval = dataset(8, 0); // same task, to see the fit
    let mut t = Trainer::new(&model, c).unwrap();
    let before = t.evaluate(&eval).unwrap();
    let mut steps = Vec::new();
    let mut evals = Vec::new();
    let mut ckpts = Vec::new();
    let summary = t
        .train(&train, &eval, &mut |e| match e {
            TrainEvent::Step(s) => steps.push(s.clone()),
            TrainEvent::Eval(r) => evals.push(r.clone()),
            TrainEvent::Checkpoint(c) => ckpts.push(c.clone()),
        })
        .unwrap();
    assert_eq!(steps.len(), 40);
    assert!(
        steps
            .iter()
            .enumerate()
            .all(|(i, s)| s.step == i + 1 && s.total_steps == 40)
    );
    assert_eq!(steps[0].learning_rate, 0.0); // warm-up starts at 0, as transformers
    assert!(
        steps
            .iter()
            .all(|s| s.tokens == 8 * 9 && s.tokens_per_sec > 0.0)
    );
    assert_eq!(steps[39].eta_secs, 0.0);
    assert_eq!(
        evals.iter().map(|e| e.step).collect::<Vec<_>>(),
        vec![20, 40]
    );
    let after = summary.last_eval.clone().unwrap();
    assert!(
        after.loss < 0.5 * before.loss,
        "{} -> {}",
        before.loss,
        after.loss
    );
    assert!((after.perplexity - after.loss.exp()).abs() < 1e-9);
    assert_eq!(
        ckpts.iter().map(|c| c.step).collect::<Vec<_>>(),
        vec![20, 40]
    );
    assert_ne!(ckpts[0].id, ckpts[1].id);
    let (config, bytes) = t.adapter_files().unwrap();
    assert_eq!(ckpts[1].safetensors, bytes);
    assert_eq!(ckpts[1].config_json, config);
    assert_eq!(ckpts[1].id, ContentId::of(&bytes));
}

/// `got` equals `want` to 1e-5 of `want`'s largest entry (packed passes sum in another order).
fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0);
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * scale,
            "entry {i}: {a} vs {b} (scale {scale})"
        );
    }
}

/// Packed per-example gradients (one forward and backward pass over many examples of
/// different lengths, every projection adapted, rsLoRA scale) equal one pass per example,
/// across more examples than one packed pass holds; DoRA runs one pass per example.
#[test]
fn packed_per_example_gradients_equal_one_pass_per_example() {
    let model = Model::from_dir(&tiny_llama()).unwrap();
    let all_linear = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];
    for dora in [false, true] {
        let mut lora = LoraSettings::new(&all_linear, 4, 8.0);
        lora.use_rslora = true;
        lora.use_dora = dora;
        let mut c = TrainConfig::new(lora);
        c.steps = 3;
        c.learning_rate = 1e-2;
        let mut t = Trainer::new(&model, c).unwrap();
        t.train(&dataset(8, 0), &[], &mut |_| {}).unwrap();
        // Lengths 3 to 11, shuffled, over 4096 tokens: three packed passes of at most 2048.
        let exs: Vec<Example> = (0..720)
            .map(|i| {
                let n = 1 + (i * 7) % 5;
                let prompt: Vec<u32> = (0..n).map(|k| 3 + ((i * 5 + k * 3) % 200) as u32).collect();
                let answer: Vec<u32> = (0..1 + i % 5)
                    .map(|k| 60 + ((i + k) % 100) as u32)
                    .collect();
                Example::prompt_response(&prompt, &answer)
            })
            .collect();
        let tokens: usize = exs.iter().map(|e| e.tokens.len()).sum();
        assert!((4097..8192).contains(&tokens), "{tokens} tokens");
        // DoRA takes one pass per example anyway: a few show it.
        let exs = if dora { &exs[..20] } else { &exs[..] };
        let mut calls = 0;
        let packed = t.example_gradients(exs, &mut |_, _| calls += 1).unwrap();
        assert_eq!(calls, if dora { exs.len() } else { 3 });
        for (ex, g) in exs.iter().zip(&packed) {
            let one = t.example_gradient(ex).unwrap();
            if dora {
                assert_eq!(g, &one);
            } else {
                assert_close(g, &one);
            }
        }
    }
}

#[test]
fn example_gradients_reports_progress_and_matches_single_calls() {
    let model = Model::from_dir(&tiny_llama()).unwrap();
    let mut c = TrainConfig::new(LoraSettings::new(&["v_proj"], 2, 4.0));
    c.steps = 2;
    c.learning_rate = 1e-2;
    let mut t = Trainer::new(&model, c).unwrap();
    t.train(&dataset(8, 0), &[], &mut |_| {}).unwrap();
    let exs = dataset(3, 5);
    let mut seen = Vec::new();
    let all = t
        .example_gradients(&exs, &mut |d, n| seen.push((d, n)))
        .unwrap();
    assert_eq!(seen, vec![(3, 3)], "one packed pass");
    for (ex, g) in exs.iter().zip(&all) {
        assert_close(g, &t.example_gradient(ex).unwrap());
    }
    assert_ne!(all[0], all[1]);
    // Layout: per layer, v_proj A [2, 64] then B [32, 2].
    let layout = t.gradient_layout();
    assert_eq!(layout.len(), 4);
    assert_eq!(
        layout[0].name,
        "model.layers.0.self_attn.v_proj.lora_A.weight"
    );
    assert_eq!(
        (layout[1].shape.clone(), layout[1].offset),
        (vec![32, 2], 128)
    );
    assert_eq!(t.num_parameters(), 2 * (128 + 64));
    let q = t.query_gradient(&[1, 9, 10], &[11, 12]).unwrap();
    assert_eq!(
        q,
        t.example_gradient(&Example::prompt_response(&[1, 9, 10], &[11, 12]))
            .unwrap()
    );
}
