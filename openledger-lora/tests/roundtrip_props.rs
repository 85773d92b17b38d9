//! Round-trip and robustness properties of the adapter encoder/decoder.

use openledger_core::DType;
use openledger_lora::adapter::build::AdapterBuilder;
use openledger_lora::adapter::config::ConfigSpec;
use openledger_lora::adapter::{LoadOptions, LoraAdapter};
use proptest::prelude::*;

const M: &str = "model.layers.0.self_attn.q_proj";

fn dtype() -> impl Strategy<Value = DType> {
    prop_oneof![Just(DType::F32), Just(DType::F16), Just(DType::BF16)]
}

fn builder(r: usize, n_in: usize, n_out: usize, dt: DType, seed: u64) -> AdapterBuilder {
    let mut b = AdapterBuilder::new(ConfigSpec::new(r, 2.0 * r as f64, &["q_proj"])).with_dtype(dt);
    b.random_lora(M, n_in, n_out, r, seed);
    b
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn written_adapters_load_back_with_the_same_values(
        r in 1usize..6, n_in in 1usize..10, n_out in 1usize..10, dt in dtype(), seed in any::<u64>()
    ) {
        let a = openledger_lora::adapter::build::random_values(r * n_in, seed);
        let bv = openledger_lora::adapter::build::random_values(n_out * r, seed + 1);
        let mut b = AdapterBuilder::new(ConfigSpec::new(r, 2.0 * r as f64, &["q_proj"])).with_dtype(dt);
        b.lora(M, n_in, n_out, r, &a, &bv);
        let ad = b.build(&LoadOptions::default()).unwrap();
        let m = ad.module(M).unwrap();
        prop_assert_eq!((m.rank(), m.in_features(), m.out_features()), (r, n_in, n_out));
        prop_assert_eq!(m.scale(), 2.0);
        // Values come back exactly as the dtype rounds them.
        let round = |v: &[f32]| dt.decode_le(&dt.encode_le(v)).unwrap();
        prop_assert_eq!(m.a_f32().into_owned(), round(&a));
        prop_assert_eq!(m.b_f32().into_owned(), round(&bv));
        prop_assert_eq!(ad.resident_bytes(), (r * n_in + n_out * r) * dt.size_in_bytes());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic(cut in 0usize..10_000, dt in dtype()) {
        let bytes = builder(2, 8, 8, dt, 3).safetensors_bytes().unwrap();
        let cut = cut % bytes.len();
        let config = builder(2, 8, 8, dt, 3).config_json();
        prop_assert!(LoraAdapter::from_bytes(config.as_bytes(), &bytes[..cut], &LoadOptions::default()).is_err());
    }

    #[test]
    fn corrupted_bytes_never_panic(pos in 0usize..10_000, byte in any::<u8>()) {
        let b = builder(2, 8, 8, DType::BF16, 5);
        let mut bytes = b.safetensors_bytes().unwrap();
        let pos = pos % bytes.len();
        bytes[pos] = byte;
        // Either a typed error or an adapter whose shapes are consistent.
        if let Ok(ad) = LoraAdapter::from_bytes(b.config_json().as_bytes(), &bytes, &LoadOptions { allow_non_finite: true }) {
            for (_, m) in ad.modules() {
                prop_assert_eq!(m.a().shape(), &[m.rank(), m.in_features()][..]);
                prop_assert_eq!(m.b().shape(), &[m.out_features(), m.rank()][..]);
            }
        }
    }
}
