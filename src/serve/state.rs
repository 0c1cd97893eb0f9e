//! The server's runs: each run's record (state, event log, result), the per-tenant counters of
//! the rate rules, and retention of ended runs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::runner::{Error, Event, RunResult};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Queued,
    Pulling,
    Running,
    Exited,
    Cancelled,
    Failed,
}

impl RunState {
    pub fn name(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Pulling => "pulling",
            RunState::Running => "running",
            RunState::Exited => "exited",
            RunState::Cancelled => "cancelled",
            RunState::Failed => "failed",
        }
    }

    pub fn ended(self) -> bool {
        matches!(
            self,
            RunState::Exited | RunState::Cancelled | RunState::Failed
        )
    }
}

/// What a stdout or stderr event counts against the run's output cap beyond its data: about
/// what it costs in memory (the event, its JSON, their allocations).
pub const EVENT_COST: u64 = 64;

/// One event of a run's log; its id is its index + 1.
#[derive(Debug, Clone)]
pub struct LoggedEvent {
    pub kind: &'static str,
    pub data: Arc<str>,
}

/// One run, as the API shows it.
pub struct Run {
    pub id: String,
    pub tenant: String,
    pub labels: BTreeMap<String, String>,
    pub created: SystemTime,
    /// The run's directory under the server's state directory (uploads, outputs).
    pub dir: PathBuf,
    /// Cap of stdout and of stderr bytes logged as events.
    pub output_cap: u64,
    inner: Mutex<RunInner>,
    /// The number of logged events; bumped on every append (SSE streams wait on it).
    seq: watch::Sender<u64>,
    /// Set to ask the run's driver to kill it.
    pub cancel: watch::Sender<bool>,
}

struct RunInner {
    state: RunState,
    events: Vec<LoggedEvent>,
    result: Option<Value>,
    /// Output name -> file on disk, once ended.
    outputs: BTreeMap<String, PathBuf>,
    ended: Option<Instant>,
    logged: [u64; 2],
}

impl Run {
    pub fn new(
        id: String,
        tenant: String,
        labels: BTreeMap<String, String>,
        dir: PathBuf,
        output_cap: u64,
    ) -> Arc<Run> {
        let run = Arc::new(Run {
            id,
            tenant,
            labels,
            created: SystemTime::now(),
            dir,
            output_cap,
            inner: Mutex::new(RunInner {
                state: RunState::Queued,
                events: Vec::new(),
                result: None,
                outputs: BTreeMap::new(),
                ended: None,
                logged: [0, 0],
            }),
            seq: watch::channel(0).0,
            cancel: watch::channel(false).0,
        });
        run.log(&mut lock(&run.inner), "queued", json!({}));
        run
    }

    fn log(&self, inner: &mut RunInner, kind: &'static str, data: Value) {
        inner.events.push(LoggedEvent {
            kind,
            data: data.to_string().into(),
        });
        let n = inner.events.len() as u64;
        self.seq.send_replace(n);
    }

    pub fn state(&self) -> RunState {
        lock(&self.inner).state
    }

    /// Records one of the runner's events. Returns whether it was the first `Pulling`.
    pub fn on_event(&self, ev: Event) -> bool {
        let mut inner = lock(&self.inner);
        match ev {
            Event::Queued { .. } | Event::Exited { .. } | Event::Failed(_) => false,
            Event::Pulling { reference, .. } => {
                if inner.state == RunState::Queued {
                    inner.state = RunState::Pulling;
                    self.log(&mut inner, "pulling", json!({ "image": reference }));
                    return true;
                }
                false
            }
            Event::Started { setup_time, .. } => {
                inner.state = RunState::Running;
                self.log(
                    &mut inner,
                    "started",
                    json!({ "setupMs": setup_time.as_secs_f64() * 1000.0 }),
                );
                false
            }
            Event::Stdout(b) | Event::Stderr(b) if b.is_empty() => false,
            ev @ (Event::Stdout(_) | Event::Stderr(_)) => {
                let (i, kind, b) = match ev {
                    Event::Stdout(b) => (0, "stdout", b),
                    Event::Stderr(b) => (1, "stderr", b),
                    _ => unreachable!(),
                };
                // Each event costs its data and about EVENT_COST bytes more in memory: a
                // tool writing a byte at a time must not make the log many times its cap.
                let room = self
                    .output_cap
                    .saturating_sub(inner.logged[i])
                    .saturating_sub(EVENT_COST) as usize;
                if room == 0 {
                    return false;
                }
                let part = &b[..b.len().min(room)];
                inner.logged[i] += part.len() as u64 + EVENT_COST;
                let data = base64::engine::general_purpose::STANDARD.encode(part);
                self.log(&mut inner, kind, json!({ "data": data }));
                false
            }
        }
    }

    /// Records the end: state, result, outputs, the `exited` event. Returns the outcome
    /// (the result's `reason`) and the bytes produced.
    pub fn finish(&self, r: &Result<RunResult, Error>) -> (&'static str, u64) {
        let (state, reason, result, outputs, bytes) = match r {
            Ok(r) => {
                let reason = if r.cancelled {
                    "cancelled"
                } else if r.timed_out {
                    "timeout"
                } else if r.oom_killed {
                    "oom"
                } else if r.signal.is_some() {
                    "signaled"
                } else {
                    "exited"
                };
                let state = if r.cancelled {
                    RunState::Cancelled
                } else {
                    RunState::Exited
                };
                let mut outputs = BTreeMap::new();
                let mut bytes = r.stdout.len() as u64 + r.stderr.len() as u64;
                let list: Vec<Value> = r
                    .outputs
                    .iter()
                    .map(|o| {
                        if let Some(p) = &o.saved_to {
                            outputs.insert(o.path.clone(), p.clone());
                            bytes += o.size.min(self.output_cap);
                        }
                        let mut v = json!({
                            "name": o.path, "size": o.size, "missing": o.missing,
                            "truncated": o.truncated,
                        });
                        if let Some(e) = &o.error {
                            v["error"] = json!(e);
                        }
                        v
                    })
                    .collect();
                let ms = |d: Duration| d.as_secs_f64() * 1000.0;
                let result = json!({
                    "exitCode": r.exit_code,
                    "signal": r.signal,
                    "reason": reason,
                    "stdout": String::from_utf8_lossy(&r.stdout),
                    "stderr": String::from_utf8_lossy(&r.stderr),
                    "stdoutTruncated": r.stdout_truncated,
                    "stderrTruncated": r.stderr_truncated,
                    "outputs": list,
                    "image": r.image,
                    "durationMs": ms(r.durations.total),
                    "timing": {
                        "queueMs": ms(r.durations.queue),
                        "pullMs": ms(r.durations.pull),
                        "startMs": ms(r.durations.setup),
                        "runMs": ms(r.durations.run),
                    },
                    "error": null,
                    "errorKind": null,
                });
                (state, reason, result, outputs, bytes)
            }
            Err(e) => {
                let (state, reason) = if matches!(e, Error::Cancelled) {
                    (RunState::Cancelled, "cancelled")
                } else {
                    (RunState::Failed, "failed")
                };
                let result = json!({
                    "exitCode": null, "signal": null, "reason": reason,
                    "stdout": "", "stderr": "", "stdoutTruncated": false, "stderrTruncated": false,
                    "outputs": [], "image": null, "durationMs": self.created.elapsed().unwrap_or_default().as_secs_f64() * 1000.0,
                    "timing": null, "error": e.to_string(), "errorKind": e.kind(),
                });
                (state, reason, result, BTreeMap::new(), 0)
            }
        };
        let mut inner = lock(&self.inner);
        inner.state = state;
        inner.outputs = outputs;
        inner.ended = Some(Instant::now());
        inner.result = Some(result.clone());
        self.log(&mut inner, "exited", result);
        (reason, bytes)
    }

    /// The run object of the API.
    pub fn to_json(&self) -> Value {
        let inner = lock(&self.inner);
        json!({
            "id": self.id,
            "tenant": self.tenant,
            "state": inner.state.name(),
            "labels": self.labels,
            "createdAt": crate::runner::result::rfc3339::format(self.created),
            "result": inner.result,
        })
    }

    /// Events after `after` (their ids are `after + 1…`), about `max_bytes` of them at most
    /// (at least one), and whether they reach the end of a complete log.
    ///
    /// The bound matters: each SSE client of a run replays its log, and copying a whole log
    /// of several output caps at once per client would let a tenant multiply the server's
    /// memory by opening streams.
    pub fn events_after(&self, after: u64, max_bytes: usize) -> (Vec<LoggedEvent>, bool) {
        let inner = lock(&self.inner);
        let from = (after as usize).min(inner.events.len());
        let mut bytes = 0;
        let mut to = from;
        while to < inner.events.len() && (to == from || bytes < max_bytes) {
            bytes += inner.events[to].data.len();
            to += 1;
        }
        let complete = inner.state.ended() && to == inner.events.len();
        (inner.events[from..to].to_vec(), complete)
    }

    /// Waits for the log to grow past `n` events (or returns at once if it has).
    pub async fn wait_events(&self, n: u64) {
        let mut rx = self.seq.subscribe();
        let _ = rx.wait_for(|&len| len > n).await;
    }

    /// Waits for the run to end.
    pub async fn wait_ended(&self) {
        let mut rx = self.seq.subscribe();
        loop {
            if self.state().ended() {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// The file of output `name`: `Err(true)` while the run has not ended, `Err(false)` when
    /// there is no such output.
    pub fn output(&self, name: &str) -> Result<PathBuf, bool> {
        let inner = lock(&self.inner);
        if !inner.state.ended() {
            return Err(true);
        }
        inner.outputs.get(name).cloned().ok_or(false)
    }

    fn ended_at(&self) -> Option<Instant> {
        lock(&self.inner).ended
    }
}

/// A tenant's counters for the rate rules.
#[derive(Default)]
struct Usage {
    active: usize,
    starts: VecDeque<Instant>,
}

/// Every run the server knows.
#[derive(Default)]
pub struct Runs {
    map: Mutex<HashMap<String, Arc<Run>>>,
    usage: Mutex<HashMap<String, Usage>>,
}

/// Which rate rule refused a run.
pub enum RateRefusal {
    MaxConcurrent(usize),
    RunsPerMinute(usize),
}

impl Runs {
    /// Counts a new run of `tenant` against its rate rules, or refuses it.
    pub fn admit(
        &self,
        tenant: &str,
        max_concurrent: Option<usize>,
        per_minute: Option<usize>,
    ) -> Result<(), RateRefusal> {
        let mut all = lock(&self.usage);
        let u = all.entry(tenant.to_string()).or_default();
        let now = Instant::now();
        while u
            .starts
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            u.starts.pop_front();
        }
        if let Some(m) = max_concurrent {
            if u.active >= m {
                return Err(RateRefusal::MaxConcurrent(m));
            }
        }
        if let Some(m) = per_minute {
            if u.starts.len() >= m {
                return Err(RateRefusal::RunsPerMinute(m));
            }
        }
        u.active += 1;
        u.starts.push_back(now);
        Ok(())
    }

    /// A run counted by [`Runs::admit`] ended (or never started).
    pub fn release(&self, tenant: &str) {
        if let Some(u) = lock(&self.usage).get_mut(tenant) {
            u.active = u.active.saturating_sub(1);
        }
    }

    pub fn insert(&self, run: Arc<Run>) {
        lock(&self.map).insert(run.id.clone(), run);
    }

    /// The run `id` if `tenant` owns it.
    pub fn get(&self, tenant: &str, id: &str) -> Option<Arc<Run>> {
        lock(&self.map)
            .get(id)
            .filter(|r| r.tenant == tenant)
            .cloned()
    }

    pub fn remove(&self, id: &str) -> Option<Arc<Run>> {
        lock(&self.map).remove(id)
    }

    pub fn all(&self) -> Vec<Arc<Run>> {
        lock(&self.map).values().cloned().collect()
    }

    /// (running or pulling, queued) runs.
    pub fn counts(&self) -> (usize, usize) {
        let map = lock(&self.map);
        let mut c = (0, 0);
        for r in map.values() {
            match r.state() {
                RunState::Queued => c.1 += 1,
                RunState::Pulling | RunState::Running => c.0 += 1,
                _ => {}
            }
        }
        c
    }

    /// Removes ended runs older than `keep_for`, and the oldest beyond `keep` ended runs;
    /// returns them (the caller removes their directories).
    pub fn expire(&self, keep_for: Duration, keep: usize) -> Vec<Arc<Run>> {
        let mut map = lock(&self.map);
        let mut ended: Vec<(Instant, String)> = map
            .values()
            .filter_map(|r| r.ended_at().map(|t| (t, r.id.clone())))
            .collect();
        ended.sort();
        let excess = ended.len().saturating_sub(keep);
        let mut out = Vec::new();
        for (i, (t, id)) in ended.into_iter().enumerate() {
            if i < excess || t.elapsed() >= keep_for {
                if let Some(r) = map.remove(&id) {
                    out.push(r);
                }
            }
        }
        out
    }
}
