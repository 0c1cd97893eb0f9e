//! Start-up tracing: where each millisecond of a run's start goes (`NSRUN_TRACE_STARTUP=1`).
//!
//! Off by default and then free (one relaxed atomic load per mark). When on, the parent records
//! named marks on the monotonic clock; the sandbox (child, pid 1, the tool's process) sends a
//! `Mark` record of the report protocol after each setup stage, in µs since the same origin,
//! over the report pipe, without allocating. `nsrun run` prints the merged timeline on stderr after the
//! run ([`render`]), with a summary by phase.
//!
//! ```
//! use nsrun::sandbox::trace;
//! trace::enable();
//! trace::mark(trace::Phase::Parse, "arguments parsed");
//! let marks = trace::take();
//! assert_eq!(marks.len(), 1);
//! assert!(trace::render(&marks).contains("arguments parsed"));
//! ```

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

/// The environment variable that turns tracing on (any value but `0` or empty).
pub const ENV: &str = "NSRUN_TRACE_STARTUP";

static ENABLED: AtomicBool = AtomicBool::new(false);
static ORIGIN: OnceLock<u64> = OnceLock::new();
static MARKS: Mutex<Vec<Mark>> = Mutex::new(Vec::new());

/// Where a mark happened. The parent and the sandbox run in parallel after clone, so each has
/// its own timeline for the durations of [`render`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Parent,
    /// The cloned child, pid 1 and the tool's process before exec.
    Sandbox,
}

/// The step of the start-up a mark ends. The summary adds durations up per phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Command line to a run request.
    Parse,
    /// Finding the cached image, scratch, inputs.
    Image,
    /// Building the plan: users, id map, mounts (resolution), environment.
    Plan,
    /// Seccomp: compiling the profile or loading the cached BPF (parent).
    SeccompPrepare,
    /// Creating the run's cgroup.
    Cgroup,
    /// clone(2) of the sandbox with its namespaces.
    Clone,
    /// Writing the id maps (directly, or newuidmap/newgidmap).
    IdMaps,
    /// Attaching the sandbox to its cgroup.
    CgroupAttach,
    /// The sandbox waiting for the parent (id maps, cgroup).
    Wait,
    /// Sandbox: ids, sources, parent-death signal.
    Ids,
    /// Sandbox: every mount step up to the final pivot.
    Mounts,
    /// Sandbox: the final pivot_root and detach of the old root.
    Pivot,
    /// Sandbox: cgroup namespace, hostname, loopback, stdio.
    Namespaces,
    /// pid 1 forking the tool; the tool's capabilities, ids, no_new_privs, rlimits, chdir, fds.
    Drop,
    /// Loading the seccomp filter in the tool's process.
    SeccompLoad,
    /// From the last mark before execve to the parent hearing that the tool started.
    Exec,
    /// The tool running, and pid 1's exit reaching the parent.
    Run,
    /// After pid 1's exit: cgroup removal, outputs.
    Cleanup,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Parse => "parse",
            Phase::Image => "image",
            Phase::Plan => "plan",
            Phase::SeccompPrepare => "seccomp (prepare)",
            Phase::Cgroup => "cgroup",
            Phase::Clone => "clone",
            Phase::IdMaps => "id maps",
            Phase::CgroupAttach => "cgroup attach",
            Phase::Wait => "wait for parent",
            Phase::Ids => "ids, sources",
            Phase::Mounts => "mounts",
            Phase::Pivot => "pivot",
            Phase::Namespaces => "cgroupns, hostname, lo, stdio",
            Phase::Drop => "pid 1, fork, caps, ids, nnp",
            Phase::SeccompLoad => "seccomp (load)",
            Phase::Exec => "exec",
            Phase::Run => "run + exit",
            Phase::Cleanup => "cleanup",
        }
    }
}

/// One point of the timeline.
#[derive(Debug, Clone)]
pub struct Mark {
    /// Nanoseconds on `CLOCK_MONOTONIC`.
    pub at_ns: u64,
    pub side: Side,
    pub phase: Phase,
    pub what: String,
}

/// `CLOCK_MONOTONIC` in nanoseconds. Async-signal-safe (the vDSO), so the child may call it.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Turns tracing on if [`ENV`] asks for it and fixes the origin: call first thing in `main`.
pub fn init_from_env() {
    if std::env::var_os(ENV).is_some_and(|v| !v.is_empty() && v != "0") {
        enable();
    }
}

/// Turns tracing on; the origin is now (or the first call's time).
pub fn enable() {
    ORIGIN.get_or_init(now_ns);
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether marks are being recorded.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The origin on the monotonic clock, when tracing is on (the sandbox's marks count from it).
pub fn origin_ns() -> Option<u64> {
    enabled().then(|| *ORIGIN.get_or_init(now_ns))
}

/// Records that `phase` ended now, on the parent's side.
pub fn mark(phase: Phase, what: impl Into<String>) {
    if enabled() {
        record(Mark {
            at_ns: now_ns(),
            side: Side::Parent,
            phase,
            what: what.into(),
        });
    }
}

/// Records a mark taken elsewhere (the sandbox's).
pub fn record(m: Mark) {
    if enabled() {
        MARKS.lock().unwrap_or_else(|e| e.into_inner()).push(m);
    }
}

/// The marks so far, emptied.
pub fn take() -> Vec<Mark> {
    std::mem::take(&mut *MARKS.lock().unwrap_or_else(|e| e.into_inner()))
}

/// The timeline, one mark a line (time since the origin, time since the previous mark of the
/// same side; the sandbox's first mark counts from the parent's clone, the parent's "tool
/// started" from the sandbox's last mark), then the total per phase and side.
pub fn render(marks: &[Mark]) -> String {
    let origin = ORIGIN.get().copied().unwrap_or(0);
    let mut marks = marks.to_vec();
    marks.sort_by_key(|m| m.at_ns);
    let ms = |ns: u64| ns as f64 / 1e6;
    let mut out = String::from("nsrun: start-up trace (ms, monotonic clock)\n");
    let _ = writeln!(out, "  {:>8}  {:>7}  {:<7}  step", "at", "took", "side");
    let mut last_parent = origin;
    let mut last_sandbox: Option<u64> = None;
    let mut clone_at = origin;
    let mut totals: Vec<(Side, Phase, u64)> = Vec::new();
    for m in &marks {
        // The parent hearing that the tool started waited for the sandbox: it counts from
        // whichever side's last mark came later.
        let since = match (m.side, m.phase) {
            (Side::Parent, Phase::Exec) => last_parent.max(last_sandbox.unwrap_or(0)),
            (Side::Parent, _) => last_parent,
            (Side::Sandbox, _) => last_sandbox.unwrap_or(clone_at),
        };
        let took = m.at_ns.saturating_sub(since);
        match m.side {
            Side::Parent => last_parent = m.at_ns,
            Side::Sandbox => last_sandbox = Some(m.at_ns),
        }
        if m.side == Side::Parent && m.phase == Phase::Clone {
            clone_at = m.at_ns;
        }
        match totals
            .iter_mut()
            .find(|(s, p, _)| *s == m.side && *p == m.phase)
        {
            Some(t) => t.2 += took,
            None => totals.push((m.side, m.phase, took)),
        }
        let side = match m.side {
            Side::Parent => "parent",
            Side::Sandbox => "sandbox",
        };
        let _ = writeln!(
            out,
            "  {:>8.3}  {:>7.3}  {:<7}  {}",
            ms(m.at_ns.saturating_sub(origin)),
            ms(took),
            side,
            m.what
        );
    }
    totals.sort_by_key(|(s, p, _)| (*p, *s == Side::Sandbox));
    out.push_str("nsrun: by phase (ms):");
    for (side, phase, ns) in totals {
        let s = if side == Side::Sandbox { "*" } else { "" };
        let _ = write!(out, " {}{s} {:.3};", phase.name(), ms(ns));
    }
    out.push_str(" (* in the sandbox, in parallel with the parent)\n");
    out
}
