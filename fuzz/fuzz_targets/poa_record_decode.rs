//! Hostile bytes into the attribution-record decoder: typed errors only, and whatever decodes
//! re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openledger_poa::record::AttributionRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok(rec) = AttributionRecord::decode(data) {
        assert_eq!(rec.encode(), data);
    }
});
