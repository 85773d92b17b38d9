//! Reading the strings that carry ids and amounts across the boundary: addresses and hashes as
//! `0x` hex, wei amounts as decimal strings (exact at any size). Each reader names the argument
//! it refuses; the caller wraps the message in its area's error.

use openledger_core::{Address, B256, U256};

/// Reads a 20-byte address from `0x` hex (any case; checksums are not enforced).
pub(crate) fn address(name: &str, s: &str) -> Result<Address, String> {
    s.parse::<Address>()
        .map_err(|e| format!("{name}: {s:?} is not a 20-byte hex address ({e})"))
}

/// Reads a 32-byte hash from `0x` hex.
pub(crate) fn b256(name: &str, s: &str) -> Result<B256, String> {
    s.parse::<B256>()
        .map_err(|e| format!("{name}: {s:?} is not 32 bytes of hex ({e})"))
}

/// Reads a list of 32-byte hashes, naming the bad element.
pub(crate) fn b256s(name: &str, xs: &[String]) -> Result<Vec<B256>, String> {
    xs.iter()
        .enumerate()
        .map(|(i, s)| b256(&format!("{name}[{i}]"), s))
        .collect()
}

/// Reads bytes from `0x` hex.
pub(crate) fn bytes(name: &str, s: &str) -> Result<Vec<u8>, String> {
    alloy_primitives::hex::decode(s).map_err(|e| format!("{name}: {s:?} is not hex ({e})"))
}

/// Reads a wei amount from a decimal string.
pub(crate) fn u256(name: &str, s: &str) -> Result<U256, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{name}: {s:?} is not a decimal integer"));
    }
    U256::from_str_radix(s, 10).map_err(|e| format!("{name}: {s:?} does not fit 256 bits ({e})"))
}

/// An index from the boundary as a `usize` (saturating on 32-bit targets, where the callee then
/// reports it out of range).
pub(crate) fn to_usize(i: u64) -> usize {
    usize::try_from(i).unwrap_or(usize::MAX)
}

/// The checksummed form of an address.
pub(crate) fn address_str(a: &Address) -> String {
    a.to_checksum(None)
}

/// The lower-case `0x` hex form of a hash.
pub(crate) fn b256_str(h: &B256) -> String {
    format!("{h:#x}")
}

/// The lower-case `0x` hex forms of hashes.
pub(crate) fn b256_strs(hs: &[B256]) -> Vec<String> {
    hs.iter().map(b256_str).collect()
}
