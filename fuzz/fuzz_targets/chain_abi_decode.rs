//! Fuzzes ABI decoding of the contracts' calls, events and errors from arbitrary bytes: decoding
//! never panics, and whatever decodes re-encodes to something that decodes to the same value.
#![no_main]

use alloy_primitives::B256;
use alloy_sol_types::{SolEventInterface, SolInterface};
use libfuzzer_sys::fuzz_target;
use openledger_chain::bindings::{
    AttributionRewards, DatanetRegistry, InferencePayments, ModelRegistry,
};
use openledger_chain::evm::{RevertReason, decode_revert};

fn calls<C: SolInterface + PartialEq + std::fmt::Debug>(data: &[u8]) {
    // Also try with a valid selector in front, so the argument decoders are reached.
    let pick = data.first().copied().unwrap_or(0) as usize % C::COUNT;
    let mut prefixed = C::selector_at(pick).expect("index below COUNT").to_vec();
    prefixed.extend_from_slice(data.get(1..).unwrap_or_default());
    for input in [data, &prefixed[..]] {
        if let Ok(c) = C::abi_decode(input) {
            let again = C::abi_decode(&c.abi_encode()).expect("re-encoded call decodes");
            assert_eq!(again, c);
        }
        let _ = decode_revert::<C>(input);
    }
}

fn events<E: SolEventInterface>(data: &[u8], selectors: &[[u8; 32]]) {
    // First byte: number of topics (0..=4); the first topic is taken from the known selectors
    // when the second byte is even.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = (n % 5) as usize;
    if rest.len() < 1 + 32 * n {
        return;
    }
    let (head, body) = rest.split_at(1 + 32 * n);
    let mut topics: Vec<B256> = head[1..].chunks_exact(32).map(B256::from_slice).collect();
    if n > 0 && head[0] % 2 == 0 {
        topics[0] = B256::from(selectors[head[0] as usize % selectors.len()]);
    }
    let _ = E::decode_raw_log(&topics, body);
}

fuzz_target!(|data: &[u8]| {
    calls::<DatanetRegistry::DatanetRegistryCalls>(data);
    calls::<ModelRegistry::ModelRegistryCalls>(data);
    calls::<InferencePayments::InferencePaymentsCalls>(data);
    calls::<AttributionRewards::AttributionRewardsCalls>(data);
    calls::<AttributionRewards::AttributionRewardsErrors>(data);
    calls::<InferencePayments::InferencePaymentsErrors>(data);
    events::<DatanetRegistry::DatanetRegistryEvents>(
        data,
        &DatanetRegistry::DatanetRegistryEvents::SELECTORS,
    );
    events::<ModelRegistry::ModelRegistryEvents>(
        data,
        &ModelRegistry::ModelRegistryEvents::SELECTORS,
    );
    events::<InferencePayments::InferencePaymentsEvents>(
        data,
        &InferencePayments::InferencePaymentsEvents::SELECTORS,
    );
    events::<AttributionRewards::AttributionRewardsEvents>(
        data,
        &AttributionRewards::AttributionRewardsEvents::SELECTORS,
    );
    if let RevertReason::Custom(e) =
        decode_revert::<InferencePayments::InferencePaymentsErrors>(data)
    {
        let _ = e.abi_encode();
    }
});
