//! Progress callbacks: Rust work running without the GIL reports to a Python callable.
//!
//! The callable receives the number of items just completed, so `tqdm.update` can be passed
//! directly. The first exception it raises stops further calls and is raised once the work is
//! done (the Rust work itself is not interrupted halfway, so nothing is left half-built).

use std::sync::Mutex;

use pyo3::prelude::*;

/// A Python progress callback usable from threads that do not hold the GIL.
pub(crate) struct Progress {
    callback: Option<Py<PyAny>>,
    error: Mutex<Option<PyErr>>,
}

impl Progress {
    /// Wraps an optional callable.
    pub(crate) fn new(callback: Option<Py<PyAny>>) -> Self {
        Self {
            callback,
            error: Mutex::new(None),
        }
    }

    /// A `(done, total)` callback for work that counts what is done so far: reports the
    /// increase of `done` since its last call.
    pub(crate) fn cumulative(&self) -> impl FnMut(usize, usize) + '_ {
        let mut before = 0;
        move |done, _| {
            self.advance(done.saturating_sub(before));
            before = done;
        }
    }

    /// Reports `n` more items done (no-op without a callback or after it failed).
    pub(crate) fn advance(&self, n: usize) {
        let Some(cb) = &self.callback else { return };
        if n == 0 {
            return;
        }
        let mut err = match self.error.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if err.is_some() {
            return;
        }
        Python::attach(|py| {
            if let Err(e) = cb.call1(py, (n,)) {
                *err = Some(e);
            }
        });
    }

    /// The callback's first exception, if any.
    pub(crate) fn finish(self) -> PyResult<()> {
        let err = match self.error.into_inner() {
            Ok(e) => e,
            Err(poisoned) => poisoned.into_inner(),
        };
        err.map_or(Ok(()), Err)
    }
}
