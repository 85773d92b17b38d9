//! Python face of `openledger_chain::standard`: OpenZeppelin-compatible `StandardMerkleTree`s
//! (leaf = `keccak256(keccak256(abi.encode(values)))`, sorted pairs) and their `standard-v1`
//! JSON dumps; and `MerkleTree`, the core tree over 32-byte leaves (`openledger_core::merkle`).

use std::sync::atomic::{AtomicUsize, Ordering};

use openledger_chain::abi::value_to_json;
use openledger_chain::standard::{BuildStage, StandardMerkleTree, TreeOptions};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyInt, PyList, PyString};
use serde_json::Value;

use crate::error::{Result, invalid_arg};
use crate::progress::Progress;
use crate::types::{b256, b256_str};

/// One field in the JSON form the tree reads: ints as decimal strings (exact at any size),
/// bytes as `0x` hex, lists element-wise, strings and bools as they are.
pub(crate) fn to_json(path: &str, obj: &Bound<'_, PyAny>) -> Result<Value> {
    to_json_at(path, obj, 0)
}

/// Deepest list nesting accepted in a field (Solidity arrays of arrays never come close; the
/// limit keeps hostile input from exhausting the stack).
const MAX_NESTING: usize = 32;

fn to_json_at(path: &str, obj: &Bound<'_, PyAny>, depth: usize) -> Result<Value> {
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if obj.is_instance_of::<PyInt>() {
        return Ok(Value::String(obj.str()?.to_cow()?.into_owned()));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::String(s.to_cow()?.into_owned()));
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        let hex: String = b.as_bytes().iter().map(|x| format!("{x:02x}")).collect();
        return Ok(Value::String(format!("0x{hex}")));
    }
    if let Ok(l) = obj.try_iter() {
        if depth == MAX_NESTING {
            return Err(invalid_arg(
                path,
                format!("lists nested deeper than {MAX_NESTING}"),
            ));
        }
        let items = l
            .enumerate()
            .map(|(i, v)| to_json_at(&format!("{path}[{i}]"), &v?, depth + 1))
            .collect::<Result<Vec<_>>>()?;
        return Ok(Value::Array(items));
    }
    let ty = obj.get_type().name()?;
    Err(invalid_arg(
        path,
        format!("expected int, str, bytes, bool or a list of them, found {ty}"),
    ))
}

/// A JSON value as the matching Python object.
fn from_json<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    let json = py.import("json")?;
    json.call_method1("loads", (v.to_string(),))
}

fn hashes(name: &str, proof: &Bound<'_, PyAny>) -> Result<Vec<openledger_core::B256>> {
    proof
        .try_iter()?
        .enumerate()
        .map(|(i, h)| b256(&format!("{name}[{i}]"), &h?))
        .collect()
}

/// A Merkle tree of ABI-encoded values, compatible with OpenZeppelin's `StandardMerkleTree`.
#[pyclass(name = "StandardMerkleTree", module = "openledger", frozen)]
pub struct PyStandardMerkleTree {
    inner: StandardMerkleTree,
}

#[pymethods]
impl PyStandardMerkleTree {
    /// Builds the tree of `values` (each a list of fields matching `leaf_encoding`, e.g.
    /// `["address", "uint256"]`). Ints of any size are exact. `sort_leaves=False` keeps the
    /// leaves in input order (the reference library's `sortLeaves` option).
    #[staticmethod]
    #[pyo3(signature = (values, leaf_encoding, *, sort_leaves = true))]
    fn of(
        py: Python<'_>,
        values: &Bound<'_, PyAny>,
        leaf_encoding: Vec<String>,
        sort_leaves: bool,
    ) -> Result<Self> {
        let rows = values
            .try_iter()?
            .enumerate()
            .map(|(i, row)| {
                let row = row?;
                if row.is_instance_of::<PyString>() || row.is_instance_of::<PyBytes>() {
                    return Err(invalid_arg(
                        &format!("values[{i}]"),
                        "expected a list of fields, found a single str/bytes",
                    ));
                }
                row.try_iter()?
                    .enumerate()
                    .map(|(j, f)| to_json(&format!("values[{i}][{j}]"), &f?))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let types: Vec<&str> = leaf_encoding.iter().map(String::as_str).collect();
        let options = TreeOptions { sort_leaves };
        let inner = py.detach(|| StandardMerkleTree::from_json_values(&rows, &types, options))?;
        Ok(Self { inner })
    }

    /// Loads and validates a `standard-v1` dump, given as a JSON string or as the dict that
    /// `dump()` returns.
    #[staticmethod]
    fn load(py: Python<'_>, dump: &Bound<'_, PyAny>) -> Result<Self> {
        let text = if let Ok(s) = dump.cast::<PyString>() {
            s.to_cow()?.into_owned()
        } else {
            let json = py.import("json")?;
            json.call_method1("dumps", (dump,))?.extract::<String>()?
        };
        let inner = py.detach(|| StandardMerkleTree::from_json(&text))?;
        Ok(Self { inner })
    }

    /// The root, as `0x` + 64 hex digits.
    #[getter]
    fn root(&self) -> String {
        b256_str(&self.inner.root())
    }

    /// The Solidity type of each field.
    #[getter]
    fn leaf_encoding(&self) -> Vec<String> {
        self.inner.leaf_encoding().to_vec()
    }

    /// Number of values.
    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// The values in their original order, in canonical JSON form (ints as decimal strings,
    /// addresses checksummed, bytes as hex).
    fn values<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let dump = self.inner.dump();
        let items = dump
            .values
            .iter()
            .map(|v| from_json(py, &Value::Array(v.value.clone())))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }

    /// The proof of value `index` (a list of `0x` hashes).
    fn proof(&self, index: usize) -> Result<Vec<String>> {
        Ok(self.inner.proof(index)?.iter().map(b256_str).collect())
    }

    /// The proof of every value, in input order (computed in parallel). `progress(n)` is called
    /// with the number of proofs made since the last call (`tqdm.update` works).
    #[pyo3(signature = (*, progress = None))]
    fn all_proofs(&self, py: Python<'_>, progress: Option<Py<PyAny>>) -> Result<Vec<Vec<String>>> {
        let progress = Progress::new(progress);
        let seen = AtomicUsize::new(0);
        let proofs = py.detach(|| {
            self.inner.all_proofs_with_progress(&|p| {
                if p.stage == BuildStage::Proofs {
                    let before = seen.fetch_max(p.done, Ordering::Relaxed);
                    progress.advance(p.done.saturating_sub(before));
                }
            })
        });
        progress.finish()?;
        Ok(proofs
            .iter()
            .map(|p| p.iter().map(b256_str).collect())
            .collect())
    }

    /// Whether `proof` proves value `index` against this tree's root.
    fn verify(&self, index: usize, proof: &Bound<'_, PyAny>) -> Result<bool> {
        let proof = hashes("proof", proof)?;
        Ok(self.inner.verify(index, &proof)?)
    }

    /// A multiproof of the values at `indices`, as the reference library's `getMultiProof`
    /// gives it: `{"leaves": [values in verification order], "proof": [...], "proofFlags":
    /// [...]}` (values in canonical JSON form, like `values()`).
    fn multi_proof<'py>(&self, py: Python<'py>, indices: Vec<usize>) -> Result<Bound<'py, PyDict>> {
        let m = py.detach(|| self.inner.multi_proof(&indices))?;
        let leaves = m
            .leaves
            .iter()
            .map(|v| from_json(py, &Value::Array(v.iter().map(value_to_json).collect())))
            .collect::<PyResult<Vec<_>>>()?;
        let out = PyDict::new(py);
        out.set_item("leaves", PyList::new(py, leaves)?)?;
        out.set_item("proof", m.proof.iter().map(b256_str).collect::<Vec<_>>())?;
        out.set_item("proofFlags", m.proof_flags)?;
        Ok(out)
    }

    /// The `standard-v1` dump as a dict (what `JSON.parse` of the reference library's dump gives).
    fn dump<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let json = py.import("json")?;
        json.call_method1("loads", (self.inner.to_json(),))
    }

    /// The dump as compact JSON text.
    fn to_json(&self) -> String {
        self.inner.to_json()
    }

    /// The tree drawn as text, as the reference library renders it.
    fn render(&self) -> String {
        self.inner.render()
    }

    fn __repr__(&self) -> String {
        format!(
            "StandardMerkleTree(root={}, len={}, leaf_encoding={:?})",
            self.inner.root(),
            self.inner.len(),
            self.inner.leaf_encoding()
        )
    }
}

/// A tree over 32-byte leaves in the order given (OpenZeppelin's core layout, no sorting).
#[pyclass(name = "MerkleTree", module = "openledger", frozen)]
pub struct PyMerkleTree {
    inner: openledger_core::merkle::MerkleTree,
}

#[pymethods]
impl PyMerkleTree {
    /// Builds the tree over `leaves` (32-byte hashes as `0x` hex or bytes).
    #[new]
    fn new(leaves: &Bound<'_, PyAny>) -> Result<Self> {
        let leaves = hashes("leaves", leaves)?;
        let inner = openledger_core::merkle::MerkleTree::new(&leaves)
            .map_err(openledger_chain::ChainError::from)?;
        Ok(Self { inner })
    }

    /// The root, as `0x` + 64 hex digits.
    #[getter]
    fn root(&self) -> String {
        b256_str(&self.inner.root())
    }

    /// The node array, root first.
    fn nodes(&self) -> Vec<String> {
        self.inner.nodes().iter().map(b256_str).collect()
    }

    /// Number of leaves.
    fn __len__(&self) -> usize {
        self.inner.leaf_count()
    }

    /// The proof of the leaf given at `position`.
    fn proof(&self, position: usize) -> Result<Vec<String>> {
        let p = self
            .inner
            .proof(position)
            .map_err(openledger_chain::ChainError::from)?;
        Ok(p.iter().map(b256_str).collect())
    }

    /// A multiproof of the leaves given at `positions`: `{"leaves", "proof", "proofFlags"}`.
    fn multi_proof<'py>(
        &self,
        py: Python<'py>,
        positions: Vec<usize>,
    ) -> Result<Bound<'py, PyDict>> {
        let m = self
            .inner
            .multi_proof(&positions)
            .map_err(openledger_chain::ChainError::from)?;
        let out = PyDict::new(py);
        out.set_item("leaves", m.leaves.iter().map(b256_str).collect::<Vec<_>>())?;
        out.set_item("proof", m.proof.iter().map(b256_str).collect::<Vec<_>>())?;
        out.set_item("proofFlags", m.proof_flags)?;
        Ok(out)
    }
}
