//! Events of long work delivered to a JavaScript callback, and the state of an object that
//! serves one call at a time while that call's work runs on the thread pool.
//!
//! Work on a worker thread queues each event to the JavaScript thread without waiting for it;
//! before the work's promise settles it waits until every queued event was delivered, so a
//! caller sees all of them, in order, before the result.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use napi::Status;
use napi::bindgen_prelude::ToNapiValue;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};

use crate::error::{self, Error, ErrorCode, Result, busy};

/// Marks an object busy while a call's work runs; dropping the claim frees it.
struct Claim(Arc<AtomicBool>);

impl Claim {
    /// The claim of `flag`, unless another call holds it.
    fn take(flag: &Arc<AtomicBool>) -> Option<Self> {
        flag.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Self(flag.clone()))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The state of an object that serves one call at a time: behind a lock, with a busy flag a
/// call claims before its work reaches the thread pool and holds until the work ends.
pub struct Exclusive<T> {
    state: Arc<Mutex<T>>,
    busy: Arc<AtomicBool>,
    /// What the object is, in errors (`"loop"`, `"trainer"`).
    what: &'static str,
}

impl<T: Send + 'static> Exclusive<T> {
    /// `state`, free; `what` names it in `Busy` and `Panic` errors.
    pub fn new(state: T, what: &'static str) -> Self {
        Self {
            state: Arc::new(Mutex::new(state)),
            busy: Arc::default(),
            what,
        }
    }

    fn busy(&self) -> Error {
        busy(&format!("the {}", self.what))
    }

    fn poisoned(what: &str) -> Error {
        error::error(
            ErrorCode::Internal,
            format!("an earlier call stopped on an internal error; the {what}'s state is unknown"),
            None,
        )
    }

    /// The state now, for a quick call on the JavaScript thread: `Busy` while a call's work is
    /// claimed or runs, `Panic` once a call panicked holding it.
    pub fn lock(&self) -> Result<MutexGuard<'_, T>> {
        if self.busy.load(Ordering::Acquire) {
            return Err(self.busy());
        }
        match self.state.try_lock() {
            Ok(s) => Ok(s),
            Err(TryLockError::WouldBlock) => Err(self.busy()),
            Err(TryLockError::Poisoned(_)) => Err(Self::poisoned(self.what)),
        }
    }

    /// Claims the object now and returns the work to run on the thread pool: `f` over the
    /// locked state, the claim held until it ends. `Busy` when another call holds the claim.
    pub fn claim<R>(
        &self,
        f: impl FnOnce(&mut T) -> Result<R> + Send + 'static,
    ) -> Result<impl FnOnce() -> Result<R> + Send + 'static> {
        let claim = Claim::take(&self.busy).ok_or_else(|| self.busy())?;
        let (state, what) = (self.state.clone(), self.what);
        Ok(move || {
            let _claim = claim;
            let mut s = state.lock().map_err(|_| Self::poisoned(what))?;
            f(&mut s)
        })
    }
}

/// Events on their way to the JavaScript callback: how many are queued and not yet delivered.
#[derive(Default)]
struct InFlight {
    queued: Mutex<usize>,
    delivered: Condvar,
}

impl InFlight {
    fn count(&self) -> MutexGuard<'_, usize> {
        self.queued.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn one_delivered(&self) {
        let mut n = self.count();
        *n = n.saturating_sub(1);
        self.delivered.notify_all();
    }

    /// Waits until every queued event was delivered; gives up when none was for a minute
    /// (the JavaScript environment is going away).
    fn wait(&self) {
        let mut n = self.count();
        while *n > 0 {
            let before = *n;
            let (next, timeout) = self
                .delivered
                .wait_timeout(n, Duration::from_secs(60))
                .unwrap_or_else(|p| p.into_inner());
            n = next;
            if timeout.timed_out() && *n == before {
                return;
            }
        }
    }
}

/// Sends events of type `T` to an optional JavaScript callback, in order; an exception thrown
/// by the callback is reported by Node as an uncaught exception and does not stop the work.
pub struct Events<T: ToNapiValue + Send + 'static> {
    f: Option<ThreadsafeFunction<T, (), T, Status, false>>,
    in_flight: Arc<InFlight>,
}

impl<T: ToNapiValue + Send + 'static> Events<T> {
    /// Events for the callback `f`, if any.
    pub fn new(f: Option<ThreadsafeFunction<T, (), T, Status, false>>) -> Self {
        Self {
            f,
            in_flight: Arc::default(),
        }
    }

    /// Queues `event` for the callback (nothing without one).
    pub fn send(&self, event: T) {
        let Some(f) = &self.f else { return };
        *self.in_flight.count() += 1;
        let in_flight = self.in_flight.clone();
        let status = f.call_with_return_value(
            event,
            ThreadsafeFunctionCallMode::NonBlocking,
            move |r, _| {
                in_flight.one_delivered();
                r
            },
        );
        if status != Status::Ok {
            // Not queued: its delivery callback never runs.
            self.in_flight.one_delivered();
        }
    }

    /// Waits until every event sent so far reached the callback.
    pub fn flush(&self) {
        self.in_flight.wait();
    }
}
