//! Fuzzes adapter loading: the safetensors decoder with a fixed permissive config, and the
//! config parser together with the decoder by splitting the input in two.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openledger_lora::adapter::{LoadOptions, LoraAdapter};

const CONFIG: &[u8] = br#"{"peft_type": "LORA", "r": 1, "lora_alpha": 1, "target_modules": ".*",
  "rank_pattern": {"q_proj": 2, "v_proj": 4}, "bias": "all", "modules_to_save": ["lm_head"]}"#;

fn exercise(config: &[u8], weights: &[u8], opts: &LoadOptions) {
    if let Ok(adapter) = LoraAdapter::from_bytes(config, weights, opts) {
        let _ = adapter.resident_bytes();
        for (_, m) in adapter.modules() {
            // Loaded modules must have consistent shapes; the dense delta is bounded in size.
            assert_eq!(m.a().shape(), [m.rank(), m.in_features()]);
            assert_eq!(m.b().shape(), [m.out_features(), m.rank()]);
            if m.in_features() * m.out_features() <= 1 << 16 {
                let _ = m.delta();
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let opts = LoadOptions::default();
    exercise(CONFIG, data, &opts);
    // First two bytes pick where the config ends and the safetensors bytes begin.
    if data.len() >= 2 {
        let cut = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
        let (config, weights) = data[2..].split_at(cut);
        exercise(
            config,
            weights,
            &LoadOptions {
                allow_non_finite: true,
            },
        );
    }
});
