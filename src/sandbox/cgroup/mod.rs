//! cgroup limits. (Placeholder until the confinement work lands.)

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Resource limits, with Docker's flag semantics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// `--memory`, bytes.
    pub memory: Option<u64>,
    /// `--memory-swap`, bytes of memory+swap; -1 for unlimited swap.
    pub memory_swap: Option<i64>,
    /// `--cpus`, number of CPUs (fractional).
    pub cpus: Option<f64>,
    /// `--cpu-shares`, relative weight (Docker's 2..262144, default 1024).
    pub cpu_shares: Option<u64>,
    /// `--pids-limit`.
    pub pids: Option<u64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("cgroup limits are not supported yet")]
    Unsupported,
}

/// A cgroup created for one run.
#[derive(Debug)]
pub struct RunCgroup {}

/// What a cgroup tells after the run.
#[derive(Debug, Clone, Default)]
pub struct CgroupStats {
    pub oom_killed: bool,
    pub peak_memory: Option<u64>,
    pub cpu_time: Option<std::time::Duration>,
}

/// A resource limit applied with setrlimit(2) in the child.
#[derive(Debug, Clone, Copy)]
pub struct Rlimit {
    pub resource: libc::__rlimit_resource_t,
    pub limit: u64,
}

/// How the limits of a run are enforced.
#[derive(Debug)]
pub enum Enforcement {
    /// No limits were asked for.
    None,
    /// A cgroup of our own holds the run.
    Cgroup(RunCgroup),
    /// No cgroup could be created: rlimits stand in where they can; `unenforced` names the rest.
    Rlimits {
        rlimits: Vec<Rlimit>,
        unenforced: Vec<String>,
    },
}

/// Creates the run's cgroup (or decides on rlimits).
pub fn setup(limits: &Limits, _run_id: &str) -> Result<Enforcement, CgroupError> {
    if limits.is_empty() {
        Ok(Enforcement::None)
    } else {
        Err(CgroupError::Unsupported)
    }
}

impl RunCgroup {
    pub fn add_pid(&self, _pid: i32) -> Result<(), CgroupError> {
        Ok(())
    }
    pub fn stats(&self) -> CgroupStats {
        CgroupStats::default()
    }
    pub fn kill_all(&self) {}
    pub fn remove(self) -> Result<(), CgroupError> {
        Ok(())
    }
}

/// Child side: applies rlimits. Allocation-free.
pub fn apply_rlimits(_rlimits: &[Rlimit]) -> Result<(), i32> {
    Ok(())
}
