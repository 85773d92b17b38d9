//! Hostile JSONL into datanet import: typed errors only, and a failed import adds nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openledger_core::datanet::Datanet;

fuzz_target!(|data: &[u8]| {
    let mut net = Datanet::new("fuzz");
    if net.import_jsonl(data).is_err() {
        assert!(net.records().is_empty());
    }
});
