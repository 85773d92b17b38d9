//! Pool statistics: counters, a load-latency histogram and the [`PoolStats`] snapshot.
//!
//! Load latencies go into a log-linear histogram (8 sub-buckets per power of two of
//! nanoseconds), so p50 and p99 are reported within 12.5 % of the true value (and clamped to the
//! exact min and max), in constant memory however many loads happen.
//!
//! ```
//! use std::time::Duration;
//! use openledger_lora::pool::stats::LatencyHistogram;
//!
//! let mut h = LatencyHistogram::default();
//! for ms in 1..=100 {
//!     h.record(Duration::from_millis(ms));
//! }
//! let s = h.summary();
//! assert_eq!(s.count, 100);
//! assert_eq!(s.min, Duration::from_millis(1));
//! assert_eq!(s.max, Duration::from_millis(100));
//! let p50 = s.p50.as_secs_f64() * 1e3;
//! assert!((p50 - 50.0).abs() <= 50.0 * 0.125, "{p50}");
//! ```

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Stripes of a [`StripedCounter`]; threads spread over them round-robin.
const STRIPES: usize = 16;

/// One cache line per stripe, so threads counting at once do not share a line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

/// A counter incremented from many threads at once without contending on one cache line; reads
/// sum the stripes (exact once the writers are done, a lower bound while they run).
#[derive(Debug, Default)]
pub struct StripedCounter {
    stripes: [Stripe; STRIPES],
}

impl StripedCounter {
    /// Adds one.
    pub fn incr(&self) {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
        }
        let i = STRIPE.with(|s| *s);
        self.stripes[i].0.fetch_add(1, Ordering::Relaxed);
    }

    /// The sum over all stripes.
    pub fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// Sub-buckets per power of two (8 → at most 12.5 % relative bucket width).
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Buckets needed to cover every `u64` nanosecond value.
const BUCKETS: usize = (SUB + (64 - SUB_BITS as u64) * SUB) as usize;

/// Bucket index of `v` nanoseconds.
fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // floor(log2 v) >= SUB_BITS
    let sub = (v >> (e - SUB_BITS)) & (SUB - 1);
    (SUB + (e - SUB_BITS) as u64 * SUB + sub) as usize
}

/// Largest value that falls in bucket `i`.
fn bucket_upper(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let e = (i - SUB) / SUB + SUB_BITS as u64;
    let sub = (i - SUB) % SUB;
    let width = 1u64 << (e - SUB_BITS as u64);
    let lower = (1u64 << e) + sub * width;
    lower.saturating_add(width - 1)
}

/// A histogram of load durations with exact count, total, min and max.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    counts: Box<[u64]>,
    count: u64,
    total_ns: u128,
    min_ns: u64,
    max_ns: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            total_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }
}

impl LatencyHistogram {
    /// Records one duration.
    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[bucket_of(ns)] += 1;
        self.count += 1;
        self.total_ns += u128::from(ns);
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// The value below which a fraction `q` of the recorded durations fall (bucket upper bound,
    /// clamped to the exact min and max); zero when empty.
    fn quantile_ns(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_upper(i).clamp(self.min_ns, self.max_ns);
            }
        }
        self.max_ns
    }

    /// The summary of everything recorded so far.
    pub fn summary(&self) -> LatencyStats {
        let empty = self.count == 0;
        LatencyStats {
            count: self.count,
            total: Duration::from_nanos(u64::try_from(self.total_ns).unwrap_or(u64::MAX)),
            min: Duration::from_nanos(if empty { 0 } else { self.min_ns }),
            max: Duration::from_nanos(self.max_ns),
            p50: Duration::from_nanos(self.quantile_ns(0.50)),
            p99: Duration::from_nanos(self.quantile_ns(0.99)),
        }
    }
}

/// Load-latency figures (fetch + decode of one adapter). All zero when nothing was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatencyStats {
    /// Number of successful loads timed.
    pub count: u64,
    /// Sum of their durations.
    pub total: Duration,
    /// Shortest load.
    pub min: Duration,
    /// Longest load.
    pub max: Duration,
    /// Median load (within 12.5 %).
    pub p50: Duration,
    /// 99th percentile load (within 12.5 %).
    pub p99: Duration,
}

impl LatencyStats {
    /// Mean load duration (zero when nothing was loaded).
    pub fn mean(&self) -> Duration {
        if self.count == 0 {
            Duration::ZERO
        } else {
            self.total / u32::try_from(self.count).unwrap_or(u32::MAX)
        }
    }
}

/// A consistent snapshot of the pool's counters and occupancy.
///
/// Counting rules: a `get` served from a resident adapter is a hit; a successful `get` that had
/// to wait for a load (its own or one already in flight) is a miss; `loads` counts adapters
/// decoded *and made resident*, so `loads == evictions + resident_count + unregistered_resident`
/// (the last being residents dropped by `unregister`). A load that fails for any reason (source,
/// decode, budget) adds one to `load_failures`, once per load however many callers waited on it,
/// and changes nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Gets served from a resident adapter.
    pub hits: u64,
    /// Successful gets that waited for a load.
    pub misses: u64,
    /// Adapters loaded and made resident.
    pub loads: u64,
    /// Loads that failed (each counted once).
    pub load_failures: u64,
    /// Resident adapters evicted to make room.
    pub evictions: u64,
    /// Resident adapters dropped because they were unregistered.
    pub unregistered_resident: u64,
    /// Sum of `resident_bytes` over resident adapters (what the budget bounds).
    pub resident_bytes: usize,
    /// The byte budget.
    pub budget_bytes: usize,
    /// Number of resident adapters.
    pub resident_count: usize,
    /// Number of resident adapters currently pinned.
    pub pinned_count: usize,
    /// Number of registered adapters.
    pub registered_count: usize,
    /// Load-latency figures.
    pub load_latency: LatencyStats,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn striped_counter_counts_every_increment_from_every_thread() {
        let c = StripedCounter::default();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| (0..10_000).for_each(|_| c.incr()));
            }
        });
        assert_eq!(c.get(), 80_000);
    }

    #[test]
    fn buckets_are_contiguous_and_cover_u64() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_upper(BUCKETS - 1), u64::MAX);
        for i in 0..BUCKETS - 1 {
            let up = bucket_upper(i);
            assert_eq!(bucket_of(up), i, "upper of {i}");
            assert_eq!(bucket_of(up + 1), i + 1, "after upper of {i}");
        }
    }

    #[test]
    fn quantiles_are_within_an_eighth_of_exact() {
        let mut h = LatencyHistogram::default();
        let values: Vec<u64> = (1..=10_000u64)
            .map(|i| i * 997 % 1_000_003 + 1000)
            .collect();
        for &v in &values {
            h.record(Duration::from_nanos(v));
        }
        let mut sorted = values.clone();
        sorted.sort_unstable();
        let s = h.summary();
        for (got, q) in [(s.p50, 0.50), (s.p99, 0.99)] {
            let exact = sorted[(q * sorted.len() as f64).ceil() as usize - 1] as f64;
            let got = got.as_nanos() as f64;
            assert!(
                got >= exact && got <= exact * 1.125,
                "q{q}: {got} vs {exact}"
            );
        }
        assert_eq!(s.count, 10_000);
        assert_eq!(s.min.as_nanos() as u64, *sorted.first().unwrap());
        assert_eq!(s.max.as_nanos() as u64, *sorted.last().unwrap());
        assert_eq!(s.total.as_nanos() as u64, values.iter().sum::<u64>());
    }

    #[test]
    fn empty_histogram_reports_zeros() {
        let s = LatencyHistogram::default().summary();
        assert_eq!(s, LatencyStats::default());
        assert_eq!(s.mean(), Duration::ZERO);
    }
}
