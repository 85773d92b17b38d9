//! Least-recently-used bookkeeping for the pool.
//!
//! Every resident entry carries the tick of its last use, taken from one shared monotonically
//! increasing clock. A hit only stores a new tick (no lock upgrade, no list surgery), and when a
//! load needs room the victims are the unpinned entries with the oldest ticks. Because the ticks
//! are a total order this is exact LRU, not an approximation; choosing victims costs a sort of
//! the resident set, which is small next to the load that asks for it.
//!
//! ```
//! use openledger_lora::pool::lru::{pick_victims, Candidate, LruClock};
//!
//! let clock = LruClock::default();
//! let (a, b, c) = (clock.tick(), clock.tick(), clock.tick());
//! let entries = [
//!     Candidate { key: "a", last_used: a, bytes: 10, pinned: false },
//!     Candidate { key: "b", last_used: b, bytes: 10, pinned: true },
//!     Candidate { key: "c", last_used: c, bytes: 10, pinned: false },
//! ];
//! // Free 15 bytes: "a" is oldest, "b" is pinned, so "a" then "c".
//! assert_eq!(pick_victims(entries, 15), Some(vec!["a", "c"]));
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

/// The shared use clock: each call to [`tick`](Self::tick) returns a larger value.
#[derive(Debug, Default)]
pub struct LruClock(AtomicU64);

impl LruClock {
    /// The next tick (strictly greater than every earlier one).
    pub fn tick(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// The last-use stamp of one resident entry, updated on every hit.
#[derive(Debug, Default)]
pub struct LastUsed(AtomicU64);

impl LastUsed {
    /// A stamp set to `tick`.
    pub fn new(tick: u64) -> Self {
        Self(AtomicU64::new(tick))
    }

    /// Records a use at `tick` (never moves the stamp backwards).
    pub fn touch(&self, tick: u64) {
        self.0.fetch_max(tick, Ordering::Relaxed);
    }

    /// The tick of the last use.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One resident entry as seen by victim selection.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<K> {
    /// Which entry.
    pub key: K,
    /// Tick of its last use.
    pub last_used: u64,
    /// Bytes it holds.
    pub bytes: usize,
    /// Pinned entries are never chosen.
    pub pinned: bool,
}

/// The unpinned entries to evict, least recently used first, so that at least `need` bytes are
/// freed; `None` when all unpinned entries together hold less than `need` (then nothing should be
/// evicted at all).
pub fn pick_victims<K>(
    entries: impl IntoIterator<Item = Candidate<K>>,
    need: usize,
) -> Option<Vec<K>> {
    if need == 0 {
        return Some(Vec::new());
    }
    let mut unpinned: Vec<Candidate<K>> = entries.into_iter().filter(|c| !c.pinned).collect();
    let available: usize = unpinned.iter().map(|c| c.bytes).sum();
    if available < need {
        return None;
    }
    unpinned.sort_unstable_by_key(|c| c.last_used);
    let mut freed = 0usize;
    let mut victims = Vec::new();
    for c in unpinned {
        if freed >= need {
            break;
        }
        freed += c.bytes;
        victims.push(c.key);
    }
    Some(victims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(key: u32, last_used: u64, bytes: usize, pinned: bool) -> Candidate<u32> {
        Candidate {
            key,
            last_used,
            bytes,
            pinned,
        }
    }

    #[test]
    fn clock_ticks_strictly_increase() {
        let c = LruClock::default();
        let ticks: Vec<u64> = (0..100).map(|_| c.tick()).collect();
        assert!(ticks.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn touch_never_moves_a_stamp_backwards() {
        let s = LastUsed::new(5);
        s.touch(9);
        s.touch(7);
        assert_eq!(s.get(), 9);
    }

    #[test]
    fn evicts_least_recently_used_first_and_only_as_many_as_needed() {
        let e = [
            cand(1, 30, 10, false),
            cand(2, 10, 10, false),
            cand(3, 20, 10, false),
        ];
        assert_eq!(pick_victims(e, 1), Some(vec![2]));
        assert_eq!(pick_victims(e, 10), Some(vec![2]));
        assert_eq!(pick_victims(e, 11), Some(vec![2, 3]));
        assert_eq!(pick_victims(e, 30), Some(vec![2, 3, 1]));
        assert_eq!(pick_victims(e, 0), Some(vec![]));
    }

    #[test]
    fn never_picks_pinned_entries() {
        let e = [
            cand(1, 1, 100, true),
            cand(2, 2, 10, false),
            cand(3, 3, 10, false),
        ];
        assert_eq!(pick_victims(e, 15), Some(vec![2, 3]));
    }

    #[test]
    fn picks_nothing_when_unpinned_bytes_cannot_cover_the_need() {
        let e = [cand(1, 1, 100, true), cand(2, 2, 10, false)];
        assert_eq!(pick_victims(e, 11), None);
        assert_eq!(pick_victims(Vec::<Candidate<u32>>::new(), 1), None);
    }
}
