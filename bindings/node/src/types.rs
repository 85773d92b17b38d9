//! JavaScript face of the shared vocabulary of `openledger_core`: 20-byte addresses, 32-byte
//! hashes and 256-bit amounts.
//!
//! Addresses and hashes go in as `0x` hex strings or Buffers of the right length, and come out
//! as checksummed / lower-case hex strings. Amounts (wei) go in as `bigint`s or decimal (or `0x`
//! hex) strings and come out as `bigint`s: money never passes through a JavaScript number.

use napi::Either;
use napi::bindgen_prelude::{BigInt, Buffer};
use openledger_core::{Address, B256, U256};

use crate::error::{Result, invalid_arg};

/// A hash, an address or other bytes as JavaScript passes them: `0x` hex or a Buffer.
#[napi_derive::napi]
pub type Bytes = Either<String, Buffer>;

/// An amount in wei (or another exact integer) as JavaScript passes it: a `bigint` or a
/// string of decimal digits (or `0x` hex).
#[napi_derive::napi]
pub type Amount = Either<BigInt, String>;

/// A 256-bit unsigned amount from a `bigint` or a string of digits, refusing negatives and
/// values of 2²⁵⁶ or more.
pub fn u256(name: &str, v: &Amount) -> Result<U256> {
    match v {
        Either::A(b) => {
            let nonzero = b.words.iter().any(|w| *w != 0);
            if b.sign_bit && nonzero {
                return Err(invalid_arg(name, "a negative amount"));
            }
            if b.words.iter().skip(4).any(|w| *w != 0) {
                return Err(invalid_arg(name, "the amount is 2**256 or more"));
            }
            let mut limbs = [0u64; 4];
            for (l, w) in limbs.iter_mut().zip(&b.words) {
                *l = *w;
            }
            Ok(U256::from_limbs(limbs))
        }
        Either::B(s) => {
            let t = s.trim();
            let parsed = match t.strip_prefix("0x") {
                Some(hex) if !hex.is_empty() => U256::from_str_radix(hex, 16),
                Some(_) => return Err(invalid_arg(name, format!("{s:?} is not an amount"))),
                None if !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit()) => {
                    U256::from_str_radix(t, 10)
                }
                None => {
                    let shown: String = s.chars().take(80).collect();
                    return Err(invalid_arg(
                        name,
                        format!("{shown:?} is not a non-negative integer in decimal or 0x hex"),
                    ));
                }
            };
            parsed.map_err(|_| invalid_arg(name, format!("{s} is 2**256 or more")))
        }
    }
}

/// `x` as a JavaScript `bigint`.
pub fn bigint(x: U256) -> BigInt {
    BigInt {
        sign_bit: false,
        words: x.as_limbs().to_vec(),
    }
}

fn fixed<const N: usize>(name: &str, v: &Bytes) -> Result<[u8; N]> {
    let mut out = [0u8; N];
    match v {
        Either::B(b) => {
            if b.len() != N {
                return Err(invalid_arg(
                    name,
                    format!("expected {N} bytes, found {}", b.len()),
                ));
            }
            out.copy_from_slice(b);
        }
        Either::A(s) => {
            let hex = s.strip_prefix("0x").unwrap_or(s);
            if hex.len() != 2 * N || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                let shown: String = s.chars().take(80).collect();
                return Err(invalid_arg(
                    name,
                    format!("expected {} hex digits, found {shown:?}", 2 * N),
                ));
            }
            for (i, o) in out.iter_mut().enumerate() {
                *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                    .map_err(|e| invalid_arg(name, e))?;
            }
        }
    }
    Ok(out)
}

/// A 20-byte address from `0x` + 40 hex digits or a Buffer of 20 bytes.
pub fn address(name: &str, v: &Bytes) -> Result<Address> {
    Ok(Address::from(fixed::<20>(name, v)?))
}

/// A 32-byte hash from `0x` + 64 hex digits or a Buffer of 32 bytes.
pub fn b256(name: &str, v: &Bytes) -> Result<B256> {
    Ok(B256::from(fixed::<32>(name, v)?))
}

/// The checksummed hex form of an address.
pub fn address_str(a: &Address) -> String {
    a.to_checksum(None)
}

/// The lower-case `0x` hex form of a hash.
pub fn b256_str(h: &B256) -> String {
    h.to_string()
}

/// Bytes of any length from `0x` hex (the prefix is optional) or a Buffer.
pub fn hex_bytes(name: &str, v: &Bytes) -> Result<Vec<u8>> {
    match v {
        Either::B(b) => Ok(b.to_vec()),
        Either::A(s) => {
            let hex = s.strip_prefix("0x").unwrap_or(s);
            if hex.len() % 2 != 0 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                let shown: String = s.chars().take(80).collect();
                return Err(invalid_arg(
                    name,
                    format!("expected hex bytes, found {shown:?}"),
                ));
            }
            (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| invalid_arg(name, e))
        }
    }
}
