//! Counters for `GET /metrics`, in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the run-duration histogram's buckets.
const BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

#[derive(Default)]
pub struct Metrics {
    runs: Mutex<BTreeMap<&'static str, u64>>,
    durations: Mutex<Histogram>,
    pub pulls: AtomicU64,
    pub input_bytes: AtomicU64,
    pub output_bytes: AtomicU64,
    http: Mutex<BTreeMap<u16, u64>>,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
}

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    /// A run ended with `outcome` (a result's `reason`) after `secs`.
    pub fn run_ended(&self, outcome: &'static str, secs: f64) {
        *lock(&self.runs).entry(outcome).or_default() += 1;
        let mut h = lock(&self.durations);
        if h.counts.is_empty() {
            h.counts = vec![0; BUCKETS.len()];
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    pub fn http(&self, status: u16) {
        *lock(&self.http).entry(status).or_default() += 1;
    }

    pub fn rejected(&self, rule: &'static str) {
        *lock(&self.rejected).entry(rule).or_default() += 1;
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The text format; `running` and `queued` are counted by the caller at scrape time.
    pub fn render(&self, running: usize, queued: usize) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# HELP nsrun_runs_total Runs ended, by outcome.");
        let _ = writeln!(s, "# TYPE nsrun_runs_total counter");
        let runs = lock(&self.runs);
        for o in [
            "exited",
            "signaled",
            "timeout",
            "oom",
            "cancelled",
            "failed",
        ] {
            let n = runs.get(o).copied().unwrap_or(0);
            let _ = writeln!(s, "nsrun_runs_total{{outcome=\"{o}\"}} {n}");
        }
        drop(runs);
        let _ = writeln!(s, "# HELP nsrun_runs_running Runs pulling or running now.");
        let _ = writeln!(s, "# TYPE nsrun_runs_running gauge");
        let _ = writeln!(s, "nsrun_runs_running {running}");
        let _ = writeln!(
            s,
            "# HELP nsrun_runs_queued Runs accepted and not started yet."
        );
        let _ = writeln!(s, "# TYPE nsrun_runs_queued gauge");
        let _ = writeln!(s, "nsrun_runs_queued {queued}");
        let _ = writeln!(
            s,
            "# HELP nsrun_run_duration_seconds Time from request to result."
        );
        let _ = writeln!(s, "# TYPE nsrun_run_duration_seconds histogram");
        let h = lock(&self.durations);
        for (i, b) in BUCKETS.iter().enumerate() {
            let n = h.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(s, "nsrun_run_duration_seconds_bucket{{le=\"{b}\"}} {n}");
        }
        let _ = writeln!(
            s,
            "nsrun_run_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(s, "nsrun_run_duration_seconds_sum {}", h.sum);
        let _ = writeln!(s, "nsrun_run_duration_seconds_count {}", h.count);
        drop(h);
        for (name, help, c) in [
            (
                "nsrun_pulls_total",
                "Image pulls started by runs.",
                &self.pulls,
            ),
            (
                "nsrun_input_bytes_total",
                "Bytes of inputs and stdin received.",
                &self.input_bytes,
            ),
            (
                "nsrun_output_bytes_total",
                "Bytes of stdout, stderr and output files produced.",
                &self.output_bytes,
            ),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} counter");
            let _ = writeln!(s, "{name} {}", c.load(Ordering::Relaxed));
        }
        let _ = writeln!(
            s,
            "# HELP nsrun_http_requests_total HTTP responses, by status."
        );
        let _ = writeln!(s, "# TYPE nsrun_http_requests_total counter");
        for (code, n) in lock(&self.http).iter() {
            let _ = writeln!(s, "nsrun_http_requests_total{{code=\"{code}\"}} {n}");
        }
        let _ = writeln!(
            s,
            "# HELP nsrun_rejected_total Requests refused by a policy rule."
        );
        let _ = writeln!(s, "# TYPE nsrun_rejected_total counter");
        for (rule, n) in lock(&self.rejected).iter() {
            let _ = writeln!(s, "nsrun_rejected_total{{rule=\"{rule}\"}} {n}");
        }
        s
    }
}
