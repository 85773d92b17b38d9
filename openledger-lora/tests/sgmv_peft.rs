//! SGMV on the PEFT fixtures (a tiny Llama and three adapters saved by PEFT 0.21.2, see
//! `fixtures/peft/README.md`): for each reference layer, `x·Wᵀ` plus the SGMV delta of the
//! adapter equals `x·W'ᵀ` with `W'` the weight PEFT's `merge_and_unload()` produced, to 1e-5
//! absolute — for every adapter alone, and for all adapters mixed in one batch.

use openledger_lora::adapter::{LoadOptions, LoraAdapter};
use openledger_lora::sgmv::{AdapterSlots, LoraSlot, Segments, bgmv, sgmv};
use safetensors::SafeTensors;
use std::path::PathBuf;

const ADAPTERS: [&str; 3] = ["qv-r4", "all-r8-rslora", "attn-patterns"];
const PARAMS: [&str; 2] = [
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.1.mlp.down_proj.weight",
];
const TOL: f64 = 1e-5;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/peft/tiny-llama")
        .join(rel)
}

/// A float32 tensor of a safetensors file: (shape, row-major values).
fn read_f32(file: &str, key: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(fixture(file)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(key).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32, "{key}");
    let vals = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (t.shape().to_vec(), vals)
}

fn load(name: &str) -> LoraAdapter {
    LoraAdapter::from_dir(
        &fixture(&format!("adapters/{name}")),
        &LoadOptions::default(),
    )
    .unwrap()
}

/// Deterministic inputs in [-1, 1].
fn inputs(rows: usize, width: usize, salt: usize) -> Vec<f32> {
    (0..rows * width)
        .map(|i| (((i * 7919 + salt * 104729) % 2001) as f32 / 1000.0) - 1.0)
        .collect()
}

/// `x · Wᵀ` in f64, for W `[out, in]`.
fn matmul_t(x: &[f32], w: &[f32], inp: usize, out: usize) -> Vec<f64> {
    x.chunks(inp)
        .flat_map(|row| {
            (0..out).map(move |o| {
                row.iter()
                    .zip(&w[o * inp..(o + 1) * inp])
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum::<f64>()
            })
        })
        .collect()
}

/// Runs one layer: rows `rows_per` per adapter (in `ADAPTERS` order) plus two rows with no
/// adapter, one batch, through SGMV (or BGMV); checks every row against its merged weight.
fn check_layer(param: &str, adapters: &[&str], use_bgmv: bool) {
    let (shape, w) = read_f32("model.safetensors", param);
    let (out, inp) = (shape[0], shape[1]);
    let module_name = param.trim_end_matches(".weight");
    let loaded: Vec<LoraAdapter> = adapters.iter().map(|a| load(a)).collect();
    // Slots: the adapters that adapt this layer; rows of the others use none (merged == base).
    let mut owned = Vec::new();
    let mut slot_of = Vec::new();
    for ad in &loaded {
        match ad.modules().find(|(n, _)| *n == module_name) {
            Some((_, m)) => {
                slot_of.push(Some(owned.len()));
                owned.push((
                    m.a_f32().into_owned(),
                    m.b_f32().into_owned(),
                    m.rank(),
                    m.scale(),
                ));
            }
            None => slot_of.push(None),
        }
    }
    let slots = AdapterSlots::new(
        inp,
        out,
        owned
            .iter()
            .map(|(a, b, r, s)| LoraSlot {
                a,
                b,
                rank: *r,
                scale: *s,
            })
            .collect(),
    )
    .unwrap();
    let rows_per = 3;
    let rows = rows_per * adapters.len() + 2;
    let x = inputs(rows, inp, adapters.len());
    let mut row_slots = Vec::new();
    let mut triples = Vec::new();
    for (i, s) in slot_of.iter().enumerate() {
        row_slots.extend(std::iter::repeat_n(*s, rows_per));
        if let Some(s) = s {
            triples.push((1 + i * rows_per, 1 + (i + 1) * rows_per, *s));
        }
    }
    // first and last rows use no adapter
    row_slots.insert(0, None);
    row_slots.push(None);
    let base = matmul_t(&x, &w, inp, out);
    let mut y: Vec<f32> = base.iter().map(|&v| v as f32).collect();
    if use_bgmv {
        bgmv(&x, &slots, &row_slots, &mut y).unwrap();
    } else {
        sgmv(&x, &slots, &Segments::from_triples(&triples), &mut y).unwrap();
    }
    for row in 0..rows {
        let merged = match row.checked_sub(1).map(|r| r / rows_per) {
            Some(i) if i < adapters.len() => {
                read_f32(
                    "reference.safetensors",
                    &format!("merged.{}.{param}", adapters[i]),
                )
                .1
            }
            _ => w.clone(),
        };
        let want = matmul_t(&x[row * inp..(row + 1) * inp], &merged, inp, out);
        for o in 0..out {
            let got = f64::from(y[row * out + o]);
            assert!(
                (got - want[o]).abs() <= TOL,
                "{param} row {row} ({:?}) out {o}: sgmv {got} vs merged {}",
                row_slots[row],
                want[o]
            );
        }
    }
}

#[test]
fn each_peft_adapter_through_sgmv_equals_its_merged_weight() {
    for param in PARAMS {
        for adapter in ADAPTERS {
            check_layer(param, &[adapter], false);
        }
    }
}

#[test]
fn three_peft_adapters_of_different_ranks_in_one_sgmv_batch_equal_their_merged_weights() {
    for param in PARAMS {
        check_layer(param, &ADAPTERS, false);
    }
}

#[test]
fn sgmv_bgmv_three_peft_adapters_in_one_bgmv_batch_equal_their_merged_weights() {
    for param in PARAMS {
        check_layer(param, &ADAPTERS, true);
    }
}

#[test]
fn sgmv_fixture_peft_adapters_change_the_layer_they_target() {
    // guards the test above against a vacuous pass: the merged q_proj weights differ from base
    let (_, w) = read_f32("model.safetensors", PARAMS[0]);
    for adapter in ADAPTERS {
        let (_, m) = read_f32(
            "reference.safetensors",
            &format!("merged.{adapter}.{}", PARAMS[0]),
        );
        let max = w
            .iter()
            .zip(&m)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            max > 1e-3,
            "{adapter}: merged q_proj equals base (max diff {max})"
        );
    }
}
