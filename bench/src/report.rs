//! Latency recording and reporting (text and JSON).

use std::time::Duration;

use hdrhistogram::Histogram;

/// Latencies of one operation, in microseconds.
pub struct Latencies {
    hist: Histogram<u64>,
}

impl Latencies {
    /// An empty recorder (1 µs to 60 s, 3 significant digits).
    pub fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
        }
    }

    /// Records one operation.
    pub fn record(&mut self, d: Duration) {
        self.hist.saturating_record((d.as_micros() as u64).max(1));
    }

    /// Merges another recorder.
    pub fn merge(&mut self, other: &Latencies) {
        let _ = self.hist.add(&other.hist);
    }

    /// Percentile in microseconds.
    pub fn p(&self, q: f64) -> u64 {
        self.hist.value_at_quantile(q)
    }
}

/// One line of a report: an operation's throughput and latency percentiles.
pub struct Line {
    pub name: String,
    pub ops: u64,
    pub elapsed: Duration,
    pub lat: Latencies,
}

impl Line {
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    pub fn text(&self) -> String {
        format!(
            "{:<34} {:>9} ops {:>10.0} ops/s  p50 {:>7} µs  p90 {:>7} µs  p99 {:>7} µs  p99.9 {:>7} µs",
            self.name,
            self.ops,
            self.rate(),
            self.lat.p(0.5),
            self.lat.p(0.9),
            self.lat.p(0.99),
            self.lat.p(0.999)
        )
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "ops": self.ops,
            "seconds": self.elapsed.as_secs_f64(),
            "ops_per_second": self.rate(),
            "p50_us": self.lat.p(0.5),
            "p90_us": self.lat.p(0.9),
            "p99_us": self.lat.p(0.99),
            "p999_us": self.lat.p(0.999),
        })
    }
}
