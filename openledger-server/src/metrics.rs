//! Prometheus metrics in the text exposition format: per model (the base or an adapter)
//! requests, failures, prompt and generated tokens, and histograms of time to first token and
//! time per output token (each gap between two tokens, as vLLM counts it); the adapter
//! pool's residency, loads and evictions; the engine's queues, KV pool and counters; and the
//! model's own figures (on a GPU: device memory by component, the adapter tier, decode graphs).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use openledger_lora::model::{MetricKind, ServedStats};
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
    /// pool, and the engine's and model's figures when the engine answered (`None`: it has
    /// stopped, or did not answer in time; `openledger_engine_up` is then 0).
    pub fn render(
        &self,
        pool: Option<(&PoolStats, &[String])>,
        served: Option<&ServedStats>,
    ) -> String {
        let mut out = String::new();
        render_served(&mut out, served);
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
            unlabelled(&mut out, "gauge", &gauges);
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
            unlabelled(&mut out, "counter", &counters);
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

/// Metrics of `kind` without labels, each with its `HELP` and `TYPE`: (name, help, value).
fn unlabelled<V: std::fmt::Display>(out: &mut String, kind: &str, rows: &[(&str, &str, V)]) {
    for (name, help, v) in rows {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
}

/// The engine's gauges and counters, then the model's own metrics (grouped by name, so each
/// has one `HELP` and `TYPE` however many label sets it has).
fn render_served(out: &mut String, served: Option<&ServedStats>) {
    let name = "openledger_engine_up";
    let _ = writeln!(
        out,
        "# HELP {name} 1 when the engine answered this scrape, 0 when it has stopped or was busy \
         past the scrape's wait.\n# TYPE {name} gauge\n{name} {}",
        u8::from(served.is_some())
    );
    let Some(s) = served else {
        return;
    };
    let e = &s.engine;
    let gauges: [(&str, &str, f64); 7] = [
        (
            "openledger_num_requests_waiting",
            "Requests waiting to be admitted.",
            e.waiting as f64,
        ),
        (
            "openledger_num_requests_running",
            "Requests running.",
            e.running as f64,
        ),
        (
            "openledger_num_requests_swapped",
            "Requests preempted by swapping, their KV blocks on the host.",
            e.swapped as f64,
        ),
        (
            "openledger_kv_cache_blocks",
            "Blocks in the KV pool.",
            e.kv_blocks as f64,
        ),
        (
            "openledger_kv_cache_blocks_free",
            "Blocks of the KV pool free.",
            e.kv_blocks_free as f64,
        ),
        (
            "openledger_kv_cache_usage_ratio",
            "The share of the KV pool's blocks in use (0 to 1).",
            e.kv_usage(),
        ),
        (
            "openledger_kv_cache_bytes",
            "Bytes the KV pool holds.",
            e.kv_bytes as f64,
        ),
    ];
    unlabelled(out, "gauge", &gauges);
    let counters: [(&str, &str, u64); 4] = [
        (
            "openledger_engine_steps_total",
            "Engine steps that ran the model on a batch.",
            e.steps,
        ),
        (
            "openledger_num_preemptions_total",
            "Sequences preempted (recompute or swap).",
            e.preemptions,
        ),
        (
            "openledger_engine_prefill_tokens_total",
            "Prompt tokens and recomputed output run by the engine.",
            e.prefill_tokens,
        ),
        (
            "openledger_engine_decode_tokens_total",
            "Output tokens run one at a time by the engine.",
            e.decode_tokens,
        ),
    ];
    unlabelled(out, "counter", &counters);
    let mut names: Vec<&str> = Vec::new();
    for m in &s.model {
        if !names.contains(&m.name) {
            names.push(m.name);
        }
    }
    for name in names {
        let mut samples = s.model.iter().filter(|m| m.name == name).peekable();
        let Some(first) = samples.peek() else {
            continue;
        };
        let kind = match first.kind {
            MetricKind::Gauge => "gauge",
            MetricKind::Counter => "counter",
        };
        let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {kind}", first.help);
        for m in samples {
            let labels: Vec<String> = m
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
                .collect();
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {}", m.value);
            } else {
                let _ = writeln!(out, "{name}{{{}}} {}", labels.join(","), m.value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openledger_lora::model::ModelMetric;
    use openledger_lora::serve::EngineLoad;

    /// A model's metrics with several label sets share one `HELP` and `TYPE`, label values are
    /// escaped, and a stopped engine shows only `openledger_engine_up 0`.
    #[test]
    fn engine_and_model_figures_render_in_the_exposition_format() {
        let stats = ServedStats {
            engine: EngineLoad {
                running: 3,
                kv_blocks: 8,
                kv_blocks_free: 6,
                preemptions: 2,
                ..EngineLoad::default()
            },
            model: vec![
                ModelMetric::gauge("x_bytes", "Bytes.", 10.0).with_label("component", "w"),
                ModelMetric::counter("x_total", "Count.", 4.0),
                ModelMetric::gauge("x_bytes", "Bytes.", 2.5)
                    .with_label("component", "a\"b")
                    .with_label("device", "d"),
            ],
        };
        let text = Metrics::default().render(None, Some(&stats));
        for line in [
            "openledger_engine_up 1",
            "openledger_num_requests_running 3",
            "openledger_kv_cache_usage_ratio 0.25",
            "# TYPE openledger_num_preemptions_total counter\nopenledger_num_preemptions_total 2",
            "# HELP x_bytes Bytes.\n# TYPE x_bytes gauge\nx_bytes{component=\"w\"} 10\n\
             x_bytes{component=\"a\\\"b\",device=\"d\"} 2.5\n",
            "# TYPE x_total counter\nx_total 4\n",
        ] {
            assert!(text.contains(line), "{line:?} not in:\n{text}");
        }
        assert_eq!(text.matches("# TYPE x_bytes").count(), 1);
        let down = Metrics::default().render(None, None);
        assert!(down.contains("openledger_engine_up 0"), "{down}");
        assert!(!down.contains("openledger_num_requests_running"), "{down}");
    }
}
