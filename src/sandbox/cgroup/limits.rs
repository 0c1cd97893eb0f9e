//! What a run may use, with Docker's flag semantics, and the conversions to cgroup values.

use serde::{Deserialize, Serialize};

use super::*;

/// Resource limits, with Docker's flag semantics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// `--memory`, bytes.
    pub memory: Option<u64>,
    /// `--memory-swap`, bytes of memory+swap; -1 for unlimited swap. Unset with `--memory`: as
    /// much swap as memory, as Docker does.
    pub memory_swap: Option<i64>,
    /// `--cpus`, number of CPUs (fractional).
    pub cpus: Option<f64>,
    /// `--cpu-shares`, relative weight (Docker's 2..262144, default 1024).
    pub cpu_shares: Option<u64>,
    /// `--pids-limit`.
    pub pids: Option<u64>,
}

impl Limits {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    pub(super) fn needs_memory(&self) -> bool {
        self.memory.is_some() || self.memory_swap.is_some()
    }

    pub(super) fn needs_cpu(&self) -> bool {
        self.cpus.is_some() || self.cpu_shares.is_some()
    }

    /// The swap limit in bytes (`None`: unlimited), from Docker's memory+swap total.
    pub(super) fn swap(&self) -> Result<Option<u64>, CgroupError> {
        match (self.memory, self.memory_swap) {
            (_, Some(-1)) => Ok(None),
            (Some(m), None) => Ok(Some(m)),
            (None, None) => Ok(None),
            (m, Some(total)) if total >= 0 => {
                let m = m.ok_or_else(|| {
                    CgroupError::InvalidLimit(
                        "--memory-swap needs --memory (it is memory plus swap)".into(),
                    )
                })?;
                (total as u64).checked_sub(m).map(Some).ok_or_else(|| {
                    CgroupError::InvalidLimit(format!(
                        "--memory-swap {total} is smaller than --memory {m} (it is memory plus swap)"
                    ))
                })
            }
            (_, Some(v)) => Err(CgroupError::InvalidLimit(format!(
                "--memory-swap {v}: expected -1 or a size"
            ))),
        }
    }

    pub(super) fn validate(&self) -> Result<(), CgroupError> {
        if self.memory == Some(0) {
            return Err(CgroupError::InvalidLimit(
                "--memory 0: expected a positive size".into(),
            ));
        }
        if let Some(c) = self.cpus {
            if !(c.is_finite() && c > 0.0) {
                return Err(CgroupError::InvalidLimit(format!(
                    "--cpus {c}: expected a positive number"
                )));
            }
        }
        if self.pids == Some(0) {
            return Err(CgroupError::InvalidLimit(
                "--pids-limit 0: expected at least 1".into(),
            ));
        }
        self.swap().map(|_| ())
    }

    /// `cpu.cfs_quota_us`/`cpu.max` quota for a 100 ms period (at least the kernel's 1 ms).
    pub(super) fn cpu_quota_us(&self) -> Option<u64> {
        self.cpus
            .map(|c| ((c * CPU_PERIOD_US as f64).round() as u64).max(1000))
    }

    /// Docker's shares clamped to 2..=262144, as the kernel does.
    pub(super) fn shares(&self) -> Option<u64> {
        self.cpu_shares.map(|s| s.clamp(2, 262_144))
    }
}

pub(super) const CPU_PERIOD_US: u64 = 100_000;
