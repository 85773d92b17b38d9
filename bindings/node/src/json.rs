//! JavaScript values as the JSON the Rust crates read (Solidity values of Merkle leaves and
//! contract calls): integers exact at any size, bytes as `0x` hex.

use napi::ValueType;
use napi::bindgen_prelude::{BigInt, Buffer, JsValue, Uint8Array, Unknown};
use openledger_core::U256;
use serde_json::Value;

use crate::error::{Result, invalid_arg};

/// Deepest array nesting accepted (Solidity arrays of arrays never come close; the limit keeps
/// hostile input from exhausting the stack).
const MAX_NESTING: usize = 32;

/// `v` in the JSON form the crates read: strings and booleans as they are, `bigint`s and safe
/// integer numbers as decimal strings, Buffers and Uint8Arrays as `0x` hex, arrays element-wise.
pub fn to_json(path: &str, v: &Unknown<'_>) -> Result<Value> {
    to_json_at(path, v, 0)
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * bytes.len());
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn to_json_at(path: &str, v: &Unknown<'_>, depth: usize) -> Result<Value> {
    let napi_err = |e: napi::Error| invalid_arg(path, e.reason);
    // SAFETY (every `cast` below): the value's type was checked first, and each
    // `FromNapiValue` checks it again.
    match v.get_type().map_err(napi_err)? {
        ValueType::Boolean => Ok(Value::Bool(unsafe { v.cast::<bool>() }.map_err(napi_err)?)),
        ValueType::String => Ok(Value::String(
            unsafe { v.cast::<String>() }.map_err(napi_err)?,
        )),
        ValueType::BigInt => {
            let b = unsafe { v.cast::<BigInt>() }.map_err(napi_err)?;
            if b.words.iter().skip(4).any(|w| *w != 0) {
                return Err(invalid_arg(path, "the integer needs more than 256 bits"));
            }
            let mut limbs = [0u64; 4];
            for (l, w) in limbs.iter_mut().zip(&b.words) {
                *l = *w;
            }
            let magnitude = U256::from_limbs(limbs);
            let sign = if b.sign_bit && !magnitude.is_zero() {
                "-"
            } else {
                ""
            };
            Ok(Value::String(format!("{sign}{magnitude}")))
        }
        ValueType::Number => {
            let x = unsafe { v.cast::<f64>() }.map_err(napi_err)?;
            if x.is_finite() && x.fract() == 0.0 && x.abs() <= 9_007_199_254_740_991.0 {
                Ok(Value::String(format!("{}", x as i64)))
            } else {
                Err(invalid_arg(
                    path,
                    format!("{x} is not a safe integer (pass a bigint or a decimal string)"),
                ))
            }
        }
        ValueType::Object if v.is_buffer().map_err(napi_err)? => {
            Ok(Value::String(hex(
                &unsafe { v.cast::<Buffer>() }.map_err(napi_err)?
            )))
        }
        ValueType::Object if v.is_typedarray().map_err(napi_err)? => {
            let bytes = unsafe { v.cast::<Uint8Array>() }
                .map_err(|_| invalid_arg(path, "only Uint8Array holds bytes"))?;
            Ok(Value::String(hex(&bytes)))
        }
        ValueType::Object if v.is_array().map_err(napi_err)? => {
            if depth == MAX_NESTING {
                return Err(invalid_arg(
                    path,
                    format!("arrays nested deeper than {MAX_NESTING}"),
                ));
            }
            let items = unsafe { v.cast::<Vec<Unknown<'_>>>() }.map_err(napi_err)?;
            items
                .iter()
                .enumerate()
                .map(|(i, x)| to_json_at(&format!("{path}[{i}]"), x, depth + 1))
                .collect::<Result<Vec<_>>>()
                .map(Value::Array)
        }
        other => Err(invalid_arg(
            path,
            format!(
                "expected a string, bigint, safe integer, boolean, Buffer or an array of them, \
                 found {other}"
            ),
        )),
    }
}

/// Each of `rows` (a list of lists) as JSON fields, naming the culprit as `name[i][j]`.
pub fn rows(name: &str, rows: &[Vec<Unknown<'_>>]) -> Result<Vec<Vec<Value>>> {
    rows.iter()
        .enumerate()
        .map(|(i, row)| {
            row.iter()
                .enumerate()
                .map(|(j, f)| to_json(&format!("{name}[{i}][{j}]"), f))
                .collect()
        })
        .collect()
}
