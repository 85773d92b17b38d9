//! Fuzzes the training-log decoder: hostile bytes give a typed error, and whatever decodes
//! re-encodes to the same bytes and verifies without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openledger_core::trainlog::TrainLog;

fuzz_target!(|data: &[u8]| {
    if let Ok(log) = TrainLog::from_bytes(data) {
        assert_eq!(log.to_bytes(), data);
        let _ = log.verify();
    }
});
