//! Python face of the shared vocabulary of `openledger_core`: 20-byte addresses, 32-byte hashes
//! and 256-bit amounts.
//!
//! Addresses and hashes are `0x` hex strings (or `bytes` of the right length) going in, and
//! checksummed / lower-case hex strings coming out; amounts are exact Python `int`s both ways.

use openledger_core::{Address, B256, U256};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyInt, PyString};

use crate::error::{Result, invalid_arg};

/// A 256-bit unsigned amount from a Python `int` (refusing negatives, `bool`s and ≥ 2²⁵⁶).
pub(crate) fn u256(name: &str, obj: &Bound<'_, PyAny>) -> Result<U256> {
    if obj.is_instance_of::<PyBool>() || !obj.is_instance_of::<PyInt>() {
        let ty = obj.get_type().name()?;
        return Err(invalid_arg(name, format!("expected an int, found {ty}")));
    }
    let bytes = obj
        .call_method1("to_bytes", (32, "big"))
        .map_err(|_| invalid_arg(name, format!("{obj} is not in 0 ..= 2**256 - 1")))?;
    let bytes = bytes.cast::<PyBytes>().map_err(PyErr::from)?;
    Ok(U256::from_be_slice(bytes.as_bytes()))
}

/// A Python `int` equal to `x`.
pub(crate) fn py_u256<'py>(py: Python<'py>, x: U256) -> PyResult<Bound<'py, PyAny>> {
    let bytes = PyBytes::new(py, &x.to_be_bytes::<32>());
    py.get_type::<PyInt>()
        .call_method1("from_bytes", (bytes, "big"))
}

fn fixed<const N: usize>(name: &str, obj: &Bound<'_, PyAny>) -> Result<[u8; N]> {
    let mut out = [0u8; N];
    if let Ok(b) = obj.cast::<PyBytes>() {
        let b = b.as_bytes();
        if b.len() != N {
            return Err(invalid_arg(
                name,
                format!("expected {N} bytes, found {}", b.len()),
            ));
        }
        out.copy_from_slice(b);
        return Ok(out);
    }
    let Ok(s) = obj.cast::<PyString>() else {
        let ty = obj.get_type().name()?;
        return Err(invalid_arg(
            name,
            format!("expected a 0x hex string or {N} bytes, found {ty}"),
        ));
    };
    let s = s.to_cow()?;
    let hex = s.strip_prefix("0x").unwrap_or(&s);
    if hex.len() != 2 * N || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        let shown: String = s.chars().take(80).collect();
        return Err(invalid_arg(
            name,
            format!("expected {} hex digits, found {shown:?}", 2 * N),
        ));
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| invalid_arg(name, e))?;
    }
    Ok(out)
}

/// A 20-byte address from `0x` + 40 hex digits or 20 bytes.
pub(crate) fn address(name: &str, obj: &Bound<'_, PyAny>) -> Result<Address> {
    Ok(Address::from(fixed::<20>(name, obj)?))
}

/// A 32-byte hash from `0x` + 64 hex digits or 32 bytes.
pub(crate) fn b256(name: &str, obj: &Bound<'_, PyAny>) -> Result<B256> {
    Ok(B256::from(fixed::<32>(name, obj)?))
}

/// The checksummed hex form of an address.
pub(crate) fn address_str(a: &Address) -> String {
    a.to_checksum(None)
}

/// The lower-case `0x` hex form of a hash.
pub(crate) fn b256_str(h: &B256) -> String {
    h.to_string()
}

/// Refuses a numpy array whose data is not aligned to its element size (a view at an odd
/// byte offset, e.g. `np.frombuffer(b, offset=1)`): ndarray cannot view it, and reading it as a
/// slice would be undefined behaviour. Call before any `as_array` / `as_slice`.
pub(crate) fn aligned<T: numpy::Element, D: numpy::ndarray::Dimension>(
    name: &str,
    arr: &numpy::PyReadonlyArray<'_, T, D>,
) -> Result<()> {
    use numpy::PyArrayMethods;
    let p = arr.data() as usize;
    if p.is_multiple_of(std::mem::align_of::<T>()) {
        Ok(())
    } else {
        Err(invalid_arg(
            name,
            format!(
                "is not aligned to {} bytes (a view at an odd byte offset); np.require(a, requirements='CA') makes an aligned copy",
                std::mem::align_of::<T>()
            ),
        ))
    }
}
