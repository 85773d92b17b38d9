//! Single-flight loading: the first caller asking for a non-resident adapter loads it; callers
//! arriving meanwhile wait on the same [`Flight`] and share its result (adapter or error).

use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::error::PoolError;

/// The shared outcome of one load.
pub(crate) type Outcome<A> = Result<Arc<A>, PoolError>;

/// One load in progress, awaited by any number of callers.
pub(crate) struct Flight<A> {
    slot: Mutex<Option<Outcome<A>>>,
    done: Condvar,
}

impl<A> Flight<A> {
    /// A flight whose outcome is not known yet.
    pub(crate) fn new() -> Self {
        Self {
            slot: Mutex::new(None),
            done: Condvar::new(),
        }
    }

    /// Publishes the outcome and wakes every waiter. Called once, by the loader.
    pub(crate) fn complete(&self, outcome: Outcome<A>) {
        let mut slot = self.slot.lock();
        debug_assert!(slot.is_none(), "a flight completes once");
        *slot = Some(outcome);
        self.done.notify_all();
    }

    /// Blocks until the outcome is published and returns a copy of it.
    pub(crate) fn wait(&self) -> Outcome<A> {
        let mut slot = self.slot.lock();
        loop {
            if let Some(outcome) = slot.as_ref() {
                return outcome.clone();
            }
            self.done.wait(&mut slot);
        }
    }

    /// The outcome if it is already published.
    pub(crate) fn try_outcome(&self) -> Option<Outcome<A>> {
        self.slot.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_waiter_sees_the_one_outcome() {
        let f = Arc::new(Flight::<u32>::new());
        assert!(f.try_outcome().is_none());
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let f = Arc::clone(&f);
                std::thread::spawn(move || f.wait())
            })
            .collect();
        let value = Arc::new(7u32);
        f.complete(Ok(Arc::clone(&value)));
        for w in waiters {
            assert!(Arc::ptr_eq(&w.join().unwrap().unwrap(), &value));
        }
        assert!(f.try_outcome().is_some());
    }
}
