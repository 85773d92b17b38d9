//! Prometheus metrics in the text exposition format: per model (the base or an adapter)
//! requests, failures, prompt and generated tokens, and histograms of time to first token and
//! time per output token (each gap between two tokens, as vLLM counts it); and the adapter
//! pool's residency, loads and evictions.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use openledger_lora::pool::PoolStats;
use openledger_lora::serve::RequestStats;
use parking_lot::Mutex;

const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
const TPOT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, d: Duration) {
        let x = d.as_secs_f64();
        for (c, &b) in self.counts.iter_mut().zip(self.bounds) {
            if x <= b {
                *c += 1;
            }
        }
        self.sum += x;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, model: &str) {
        for (c, b) in self.counts.iter().zip(self.bounds) {
            let _ = writeln!(out, "{name}_bucket{{model=\"{model}\",le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{model=\"{model}\",le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{{model=\"{model}\"}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{model=\"{model}\"}} {}", self.count);
    }
}

#[derive(Debug, Clone)]
struct PerModel {
    requests: u64,
    failures: u64,
    cancelled: u64,
    prompt_tokens: u64,
    generation_tokens: u64,
    ttft: Histogram,
    tpot: Histogram,
}

impl Default for PerModel {
    fn default() -> Self {
        Self {
            requests: 0,
            failures: 0,
            cancelled: 0,
            prompt_tokens: 0,
            generation_tokens: 0,
            ttft: Histogram::new(TTFT_BUCKETS),
            tpot: Histogram::new(TPOT_BUCKETS),
        }
    }
}

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    models: Mutex<BTreeMap<String, PerModel>>,
}

/// A label value with `\`, `"` and newlines escaped.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// A request for `model` with `prompt_tokens` tokens was taken.
    pub fn request(&self, model: &str, prompt_tokens: usize) {
        let mut m = self.models.lock();
        let e = m.entry(model.to_owned()).or_default();
        e.requests += 1;
        e.prompt_tokens += prompt_tokens as u64;
    }

    /// One output sequence of `model` ended (`failed`: with an error; `cancelled`: its client
    /// went away) with these statistics.
    pub fn finished(&self, model: &str, stats: &RequestStats, failed: bool, cancelled: bool) {
        let mut m = self.models.lock();
        let e = m.entry(model.to_owned()).or_default();
        e.failures += u64::from(failed);
        e.cancelled += u64::from(cancelled);
        e.generation_tokens += stats.tokens_generated as u64;
        if let Some(t) = stats.time_to_first_token {
            e.ttft.observe(t);
        }
        for &d in &stats.inter_token_latencies {
            e.tpot.observe(d);
        }
    }

    /// The exposition text, with the pool's figures and the resident adapters when there is a
    /// pool.
    pub fn render(&self, pool: Option<(&PoolStats, &[String])>) -> String {
        let mut out = String::new();
        let models = self.models.lock().clone();
        let counter = |out: &mut String, name: &str, help: &str, get: &dyn Fn(&PerModel) -> u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (model, m) in &models {
                let _ = writeln!(out, "{name}{{model=\"{}\"}} {}", label(model), get(m));
            }
        };
        counter(
            &mut out,
            "openledger_requests_total",
            "Requests taken, per model or adapter.",
            &|m| m.requests,
        );
        counter(
            &mut out,
            "openledger_request_failures_total",
            "Output sequences that ended in an error.",
            &|m| m.failures,
        );
        counter(
            &mut out,
            "openledger_sequences_cancelled_total",
            "Output sequences cancelled because their client went away.",
            &|m| m.cancelled,
        );
        counter(
            &mut out,
            "openledger_prompt_tokens_total",
            "Prompt tokens taken.",
            &|m| m.prompt_tokens,
        );
        counter(
            &mut out,
            "openledger_generation_tokens_total",
            "Tokens generated.",
            &|m| m.generation_tokens,
        );
        for (name, help, get) in [
            (
                "openledger_time_to_first_token_seconds",
                "From a request's submission to its first token.",
                (|m: &PerModel| &m.ttft) as fn(&PerModel) -> &Histogram,
            ),
            (
                "openledger_time_per_output_token_seconds",
                "Each gap between two output tokens.",
                |m: &PerModel| &m.tpot,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (model, m) in &models {
                get(m).write(&mut out, name, &label(model));
            }
        }
        if let Some((s, resident)) = pool {
            let gauges: [(&str, &str, f64); 5] = [
                (
                    "openledger_adapter_pool_registered",
                    "Adapters registered.",
                    s.registered_count as f64,
                ),
                (
                    "openledger_adapter_pool_resident",
                    "Adapters resident in memory.",
                    s.resident_count as f64,
                ),
                (
                    "openledger_adapter_pool_pinned",
                    "Resident adapters in use by a running request.",
                    s.pinned_count as f64,
                ),
                (
                    "openledger_adapter_pool_resident_bytes",
                    "Bytes of the resident adapters.",
                    s.resident_bytes as f64,
                ),
                (
                    "openledger_adapter_pool_budget_bytes",
                    "The pool's byte budget.",
                    s.budget_bytes as f64,
                ),
            ];
            for (name, help, v) in gauges {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
            }
            let counters: [(&str, &str, u64); 5] = [
                (
                    "openledger_adapter_loads_total",
                    "Adapters loaded into the pool.",
                    s.loads,
                ),
                (
                    "openledger_adapter_load_failures_total",
                    "Adapter loads that failed.",
                    s.load_failures,
                ),
                (
                    "openledger_adapter_evictions_total",
                    "Resident adapters evicted to make room.",
                    s.evictions,
                ),
                (
                    "openledger_adapter_pool_hits_total",
                    "Gets served by a resident adapter.",
                    s.hits,
                ),
                (
                    "openledger_adapter_pool_misses_total",
                    "Gets that waited for a load.",
                    s.misses,
                ),
            ];
            for (name, help, v) in counters {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
                );
            }
            let name = "openledger_adapter_resident";
            let _ = writeln!(
                out,
                "# HELP {name} 1 for each adapter resident in the pool.\n# TYPE {name} gauge"
            );
            for id in resident {
                let _ = writeln!(out, "{name}{{adapter=\"{}\"}} 1", label(id));
            }
        }
        out
    }
}
