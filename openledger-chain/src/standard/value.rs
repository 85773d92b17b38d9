//! Leaf values of a standard tree: reading them from JSON or strings against their Solidity types,
//! and writing them back in the canonical JSON form (integers as decimal strings, addresses
//! EIP-55 checksummed, bytes as lowercase `0x` hex).

use alloy_dyn_abi::{DynSolType, DynSolValue};
use alloy_primitives::hex;
use serde_json::Value;

/// Parses each leaf encoding entry as a Solidity type.
pub(crate) fn parse_types(leaf_encoding: &[String]) -> Result<Vec<DynSolType>, crate::ChainError> {
    leaf_encoding
        .iter()
        .map(|t| {
            DynSolType::parse(t).map_err(|e| crate::ChainError::InvalidLeafType {
                ty: t.clone(),
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Reads one field from its JSON form.
pub(crate) fn from_json(ty: &DynSolType, json: &Value) -> Result<DynSolValue, String> {
    match (ty, json) {
        (DynSolType::Array(inner), Value::Array(items)) => Ok(DynSolValue::Array(
            items
                .iter()
                .map(|v| from_json(inner, v))
                .collect::<Result<_, _>>()?,
        )),
        (DynSolType::FixedArray(inner, n), Value::Array(items)) => {
            if items.len() != *n {
                return Err(format!("expected {n} elements, found {}", items.len()));
            }
            Ok(DynSolValue::FixedArray(
                items
                    .iter()
                    .map(|v| from_json(inner, v))
                    .collect::<Result<_, _>>()?,
            ))
        }
        (DynSolType::Tuple(types), Value::Array(items)) => {
            if items.len() != types.len() {
                return Err(format!(
                    "expected {} tuple fields, found {}",
                    types.len(),
                    items.len()
                ));
            }
            Ok(DynSolValue::Tuple(
                types
                    .iter()
                    .zip(items)
                    .map(|(t, v)| from_json(t, v))
                    .collect::<Result<_, _>>()?,
            ))
        }
        (DynSolType::Bool, Value::Bool(b)) => Ok(DynSolValue::Bool(*b)),
        (DynSolType::String, Value::String(s)) => Ok(DynSolValue::String(s.clone())),
        (DynSolType::Uint(_) | DynSolType::Int(_), Value::Number(n)) => {
            // A JSON number past 64 bits arrives as an f64, already rounded: refuse it rather
            // than encode another amount.
            match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => from_str(ty, &u.to_string()),
                (None, Some(i)) => from_str(ty, &i.to_string()),
                (None, None) => Err(format!(
                    "{n} is not an exact integer as a JSON number: write it as a decimal string"
                )),
            }
        }
        (_, Value::String(s)) => from_str(ty, s),
        (_, other) => Err(format!("cannot read {other} as {ty}")),
    }
}

/// Reads one field from a string (decimal or `0x` hex integers, hex addresses and bytes, `true` /
/// `false`, the string itself for `string`).
pub(crate) fn from_str(ty: &DynSolType, s: &str) -> Result<DynSolValue, String> {
    match ty {
        DynSolType::String => Ok(DynSolValue::String(s.to_string())),
        _ => ty.coerce_str(s).map_err(|e| {
            let shown: String = s.chars().take(80).collect();
            format!("cannot read {shown:?}: {e}")
        }),
    }
}

/// The canonical JSON form of one field.
pub(crate) fn to_json(value: &DynSolValue) -> Value {
    match value {
        DynSolValue::Bool(b) => Value::Bool(*b),
        DynSolValue::Int(i, _) => Value::String(i.to_string()),
        DynSolValue::Uint(u, _) => Value::String(u.to_string()),
        DynSolValue::Address(a) => Value::String(a.to_checksum(None)),
        DynSolValue::FixedBytes(w, size) => Value::String(hex::encode_prefixed(&w[..*size])),
        DynSolValue::Function(f) => Value::String(hex::encode_prefixed(f.as_slice())),
        DynSolValue::Bytes(b) => Value::String(hex::encode_prefixed(b)),
        DynSolValue::String(s) => Value::String(s.clone()),
        DynSolValue::Array(items) | DynSolValue::FixedArray(items) | DynSolValue::Tuple(items) => {
            Value::Array(items.iter().map(to_json).collect())
        }
    }
}
