//! Token sampling and stop conditions.

use openledger_lora::serve::{
    Detokenize, FinishReason, SampleError, Sampler, SamplingParams, StopChecker,
};
use proptest::prelude::*;

fn params(temperature: f32, top_k: Option<usize>, top_p: Option<f32>, seed: u64) -> SamplingParams {
    SamplingParams {
        temperature,
        top_k,
        top_p,
        seed,
        ..Default::default()
    }
}

#[test]
fn greedy_picks_the_argmax_and_the_first_on_ties() {
    let mut s = Sampler::new(&SamplingParams::default()).unwrap();
    assert_eq!(s.sample(&[0.0, 3.0, 1.0, 2.9], &[]).unwrap(), 1);
    assert_eq!(s.sample(&[1.0, 5.0, 5.0], &[]).unwrap(), 1);
    assert_eq!(
        s.sample(&[f32::NEG_INFINITY, -7.0, f32::NEG_INFINITY], &[])
            .unwrap(),
        1
    );
}

/// The allowed set computed independently: indices of the k largest logits (ties to lower ids),
/// then the smallest prefix of them whose softmax mass reaches p.
fn allowed(logits: &[f32], t: f32, k: Option<usize>, p: Option<f32>) -> Vec<u32> {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].partial_cmp(&logits[a]).unwrap().then(a.cmp(&b)));
    if let Some(k) = k {
        idx.truncate(k);
    }
    let m = logits[idx[0]] as f64;
    let w: Vec<f64> = idx
        .iter()
        .map(|&i| ((logits[i] as f64 - m) / t as f64).exp())
        .collect();
    let z: f64 = w.iter().sum();
    let mut keep = idx.len();
    if let Some(p) = p {
        let mut acc = 0.0;
        for (j, x) in w.iter().enumerate() {
            acc += x / z;
            // a hair of slack for f32 vs f64 rounding at the boundary
            if acc >= p as f64 - 1e-5 {
                keep = j + 1;
                break;
            }
        }
    }
    idx[..keep].iter().map(|&i| i as u32).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn top_k_and_top_p_never_sample_outside_the_allowed_set(
        logits in proptest::collection::vec(-5.0f32..5.0, 2..40),
        t in 0.1f32..3.0,
        k in proptest::option::of(1usize..10),
        p in proptest::option::of(0.05f32..1.0),
        seed in any::<u64>(),
    ) {
        let ok = allowed(&logits, t, k, p);
        let mut s = Sampler::new(&params(t, k, p, seed)).unwrap();
        for _ in 0..30 {
            let tok = s.sample(&logits, &[]).unwrap();
            prop_assert!(ok.contains(&tok), "token {tok} outside {ok:?}");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens(seed in any::<u64>(), t in 0.2f32..2.0) {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37 % 11) as f32) * 0.3).collect();
        let mut a = Sampler::new(&params(t, None, Some(0.95), seed)).unwrap();
        let mut b = Sampler::new(&params(t, None, Some(0.95), seed)).unwrap();
        let xa: Vec<u32> = (0..40).map(|_| a.sample(&logits, &[]).unwrap()).collect();
        let xb: Vec<u32> = (0..40).map(|_| b.sample(&logits, &[]).unwrap()).collect();
        prop_assert_eq!(xa, xb);
    }
}

#[test]
fn different_seeds_give_different_streams() {
    let logits = vec![0.0f32; 100];
    let draw = |seed| {
        let mut s = Sampler::new(&params(1.0, None, None, seed)).unwrap();
        (0..20)
            .map(|_| s.sample(&logits, &[]).unwrap())
            .collect::<Vec<_>>()
    };
    assert_ne!(draw(1), draw(2));
}

#[test]
fn temperature_sampling_follows_the_softmax_distribution() {
    // Chi-square goodness of fit with a fixed seed; 5 categories (4 degrees of freedom):
    // the 99.9% quantile is 18.47.
    let logits = [1.0f32, 0.0, 2.0, -1.0, 0.5];
    let t = 0.7f32;
    let mut s = Sampler::new(&params(t, None, None, 42)).unwrap();
    let n = 40_000;
    let mut counts = [0usize; 5];
    for _ in 0..n {
        counts[s.sample(&logits, &[]).unwrap() as usize] += 1;
    }
    let w: Vec<f64> = logits
        .iter()
        .map(|&l| (l as f64 / t as f64).exp())
        .collect();
    let z: f64 = w.iter().sum();
    let chi2: f64 = counts
        .iter()
        .zip(&w)
        .map(|(&c, &wi)| {
            let e = n as f64 * wi / z;
            (c as f64 - e).powi(2) / e
        })
        .sum();
    assert!(chi2 < 18.47, "chi-square {chi2}, counts {counts:?}");
}

#[test]
fn nan_or_infinite_logits_are_a_typed_error() {
    let mut s = Sampler::new(&params(1.0, None, None, 0)).unwrap();
    assert!(matches!(
        s.sample(&[0.0, f32::NAN], &[]),
        Err(SampleError::NonFiniteLogit { index: 1, .. })
    ));
    assert!(matches!(
        s.sample(&[f32::INFINITY], &[]),
        Err(SampleError::NonFiniteLogit { index: 0, .. })
    ));
    assert_eq!(
        s.sample(&[f32::NEG_INFINITY; 3], &[]),
        Err(SampleError::NothingToSample { len: 3 })
    );
    assert_eq!(
        s.sample(&[], &[]),
        Err(SampleError::NothingToSample { len: 0 })
    );
}

#[test]
fn out_of_range_parameters_are_refused_by_name() {
    let cases = [
        (params(-1.0, None, None, 0), "temperature"),
        (params(f32::NAN, None, None, 0), "temperature"),
        (params(1.0, Some(0), None, 0), "top_k"),
        (params(1.0, None, Some(0.0), 0), "top_p"),
        (params(1.0, None, Some(1.5), 0), "top_p"),
        (
            SamplingParams {
                repetition_penalty: Some(0.0),
                ..Default::default()
            },
            "repetition_penalty",
        ),
        (
            SamplingParams {
                max_new_tokens: 0,
                ..Default::default()
            },
            "max_new_tokens",
        ),
    ];
    for (p, want) in cases {
        match Sampler::new(&p) {
            Err(SampleError::InvalidParams { name, .. }) => assert_eq!(name, want),
            other => panic!("{want}: {other:?}"),
        }
    }
}

#[test]
fn repetition_penalty_lowers_tokens_already_seen() {
    let p = SamplingParams {
        repetition_penalty: Some(2.0),
        ..Default::default()
    };
    let mut s = Sampler::new(&p).unwrap();
    // token 0 (logit 3) seen: 3 / 2 = 1.5 < 2 → token 1 wins
    assert_eq!(s.sample(&[3.0, 2.0, -1.0], &[0]).unwrap(), 1);
    // a negative logit is multiplied: -1 · 2 = -2 < -1.5
    assert_eq!(s.sample(&[-1.0, -1.5], &[0]).unwrap(), 1);
    assert_eq!(s.sample(&[3.0, 2.0], &[]).unwrap(), 0);
    // A penalty far below 1 pushes a seen positive logit past f32::MAX: an error naming it,
    // not a draw from NaN probabilities. (Unseen tokens are unaffected.)
    for temperature in [0.0, 0.7] {
        let p = SamplingParams {
            repetition_penalty: Some(1e-40),
            temperature,
            ..Default::default()
        };
        let mut s = Sampler::new(&p).unwrap();
        assert!(matches!(
            s.sample(&[1.0, 3.0, 0.5], &[2, 0]),
            Err(SampleError::NonFiniteLogit { index: 0, value }) if value == f32::INFINITY
        ));
        let next = s.sample(&[1.0, 3.0, 0.5], &[]).unwrap();
        assert!(temperature > 0.0 || next == 1, "{next}");
    }
}

#[test]
fn stop_strings_spanning_tokens_are_found() {
    let vocab = ["he", "ll", "o", " wor", "ld", "!"];
    let detok = |t: &[u32]| t.iter().map(|&i| vocab[i as usize]).collect::<String>();
    let p = SamplingParams {
        stop_strings: vec!["lo w".into()],
        max_new_tokens: 100,
        ..Default::default()
    };
    let mut c = StopChecker::new(&p);
    let d: &dyn Detokenize = &detok;
    assert_eq!(c.check(&[0, 1], Some(d)), None);
    assert_eq!(c.check(&[0, 1, 2], Some(d)), None);
    assert_eq!(
        c.check(&[0, 1, 2, 3], Some(d)),
        Some(FinishReason::StopString("lo w".into()))
    );
}

#[test]
fn max_new_tokens_and_stop_tokens_end_the_output() {
    let p = SamplingParams {
        max_new_tokens: 3,
        stop_tokens: vec![7],
        ..Default::default()
    };
    let mut c = StopChecker::new(&p);
    assert!(c.is_stop_token(7) && !c.is_stop_token(6));
    assert_eq!(c.check(&[1, 2], None), None);
    assert_eq!(c.check(&[1, 2, 3], None), Some(FinishReason::MaxNewTokens));
}
