//! Progress callbacks: a JavaScript function called from a worker thread as long work advances.

use napi::Status;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};

/// A JavaScript progress callback, called with the number of items done since its last call.
#[napi_derive::napi]
pub type ProgressFn = ThreadsafeFunction<f64, (), f64, Status, false>;

/// Reports progress to an optional JavaScript callback from any thread. Calls are queued to the
/// JavaScript thread and never block the work; an exception in the callback is reported by Node
/// as an uncaught exception and does not stop the work.
pub struct Progress(Option<ProgressFn>);

impl Progress {
    /// Wraps the callback `f`, if any.
    pub fn new(f: Option<ProgressFn>) -> Self {
        Self(f)
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

    /// Reports `n` more items done (nothing for 0).
    pub fn advance(&self, n: usize) {
        if let (Some(f), true) = (&self.0, n > 0) {
            f.call(n as f64, ThreadsafeFunctionCallMode::NonBlocking);
        }
    }
}
