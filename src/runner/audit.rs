//! One audit record per run: to `<root>/audit.log` as a JSON line, or wherever an
//! [`AuditSink`] sends it.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::SystemTime;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::result::{Durations, ImageRef};
use crate::sandbox::cgroup::Limits;
use crate::sandbox::Network;

/// What the audit log says about one run, successful or not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When the run ended.
    #[serde(with = "super::result::rfc3339")]
    pub time: SystemTime,
    pub run_id: String,
    pub labels: BTreeMap<String, String>,
    pub image: Option<ImageRef>,
    /// The rootfs directory of a rootfs run.
    pub rootfs: Option<PathBuf>,
    pub command: Vec<String>,
    pub limits: Limits,
    pub network: Network,
    /// `None` when the run failed before the tool ran (see `error`).
    pub exit_code: Option<i32>,
    /// nsrun's own failure, if any (the [`super::Error`] message) with its exit code.
    pub error: Option<String>,
    pub durations: Durations,
    pub timed_out: bool,
    pub oom_killed: bool,
    pub cancelled: bool,
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// Each output's path and size on disk (`None` when the tool did not create it).
    pub outputs: Vec<(String, Option<u64>)>,
}

/// Where audit records go. Called once per run, from a blocking context (never on an async
/// worker thread), possibly from several threads at once.
pub trait AuditSink: Send + Sync {
    fn record(&self, record: &AuditRecord);
}

/// Appends each record as one line to a file. Concurrent runs, in this process or others, never
/// interleave: each line is written with a single `write` to an `O_APPEND` file while holding
/// an exclusive `flock`.
#[derive(Debug, Clone)]
pub struct FileAudit {
    path: PathBuf,
}

impl FileAudit {
    pub fn new(path: impl Into<PathBuf>) -> FileAudit {
        FileAudit { path: path.into() }
    }

    /// Appends `record`; an error names the file.
    pub fn append(&self, record: &AuditRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)?;
        let mut f = Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| e)?;
        f.write_all(&line)?;
        Ok(())
    }
}

impl AuditSink for FileAudit {
    fn record(&self, record: &AuditRecord) {
        if let Err(e) = self.append(record) {
            // The run's result stands; losing its record must at least be visible.
            eprintln!(
                "nsrun: audit: cannot append to {}: {e}",
                self.path.display()
            );
        }
    }
}

/// Discards records.
#[derive(Debug, Clone, Copy)]
pub struct NoAudit;

impl AuditSink for NoAudit {
    fn record(&self, _: &AuditRecord) {}
}
