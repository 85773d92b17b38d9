//! Helpers shared by the openledger benchmarks: timing a closure, writing each bench's figures
//! as JSON next to its printed ratios, and the synthetic model the model benches run.
//!
//! ```
//! use openledger_benches::{median_secs, Report};
//!
//! let t = median_secs(5, || (0..1000u64).sum::<u64>());
//! assert!(t >= 0.0);
//! let mut r = Report::new("example");
//! r.figure("sum_1000_s", t);
//! assert!(r.to_json().contains("sum_1000_s"));
//! ```

use std::path::PathBuf;
use std::time::Instant;

pub mod synthetic;

/// The median of `xs` (the upper one of an even count). Panics if `xs` is empty.
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `f` `runs` times (after one warm-up) and returns the median wall time in seconds.
pub fn median_secs<R>(runs: usize, mut f: impl FnMut() -> R) -> f64 {
    std::hint::black_box(f());
    let times: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let t0 = Instant::now();
            std::hint::black_box(f());
            t0.elapsed().as_secs_f64()
        })
        .collect();
    median(&times)
}

/// Named figures of one benchmark run, printed as they are recorded and saved as JSON.
#[derive(Debug, Default)]
pub struct Report {
    name: String,
    figures: Vec<(String, f64)>,
}

impl Report {
    /// Starts a report for the bench called `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            figures: Vec::new(),
        }
    }

    /// Records (and prints) one figure.
    pub fn figure(&mut self, key: &str, value: f64) {
        println!("{:<48} {value:>14.6}", format!("{}/{key}", self.name));
        self.figures.push((key.to_string(), value));
    }

    /// Records (and prints) a ratio `value / baseline` against the target it must meet.
    pub fn ratio(&mut self, key: &str, value: f64, baseline: f64, target: &str) {
        let r = value / baseline;
        println!(
            "{:<48} {r:>14.3}x   (target {target})",
            format!("{}/{key}", self.name)
        );
        self.figures.push((key.to_string(), r));
    }

    /// The figures as a flat JSON object.
    pub fn to_json(&self) -> String {
        let body: Vec<String> = self
            .figures
            .iter()
            .map(|(k, v)| {
                format!(
                    "  \"{k}\": {}",
                    if v.is_finite() {
                        v.to_string()
                    } else {
                        "null".into()
                    }
                )
            })
            .collect();
        format!(
            "{{\n  \"bench\": \"{}\",\n{}\n}}\n",
            self.name,
            body.join(",\n")
        )
    }

    /// Writes the JSON to `target/bench-results/<name>.json` (or `$OPENLEDGER_BENCH_OUT/<name>.json`)
    /// and returns the path.
    pub fn save(&self) -> std::io::Result<PathBuf> {
        let dir = std::env::var_os("OPENLEDGER_BENCH_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results")
            });
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}.json", self.name));
        std::fs::write(&path, self.to_json())?;
        Ok(path)
    }
}

impl Report {
    /// Saves the JSON ([`save`](Self::save)) and a PNG beside it drawn by `draw` (given the
    /// PNG's path), printing where they went or why they did not.
    pub fn save_with_plot(
        &self,
        draw: impl FnOnce(&std::path::Path) -> Result<(), Box<dyn std::error::Error>>,
    ) {
        match self.save() {
            Ok(p) => {
                let png = p.with_extension("png");
                match draw(&png) {
                    Ok(()) => println!("saved {} and {}", p.display(), png.display()),
                    Err(e) => println!("saved {}; could not draw: {e}", p.display()),
                }
            }
            Err(e) => println!("could not save: {e}"),
        }
    }
}

/// A size line of this process's `/proc/self/status` (`key` such as `"VmRSS:"` or `"VmHWM:"`)
/// in bytes; 0 where it cannot be read.
pub fn status_bytes(key: &str) -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
