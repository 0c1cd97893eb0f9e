//! After a run: what it produced turned into a [`RunResult`] (or an error), and the audit record
//! written.

use std::path::PathBuf;
use std::time::SystemTime;

use super::*;
use crate::sandbox::cgroup::Limits;
use crate::sandbox::{Network, Outcome, SandboxSpec, Termination};

/// Captured output of one stream.
#[derive(Debug, Default)]
pub(super) struct Captured {
    pub(super) data: Vec<u8>,
    pub(super) total: u64,
}

/// Collects what the result and the audit record need as the run goes.
pub(super) struct Recorder {
    pub(super) run_id: String,
    pub(super) labels: std::collections::BTreeMap<String, String>,
    pub(super) started_at: SystemTime,
    pub(super) rootfs: Option<PathBuf>,
    pub(super) image: Option<ImageRef>,
    pub(super) command: Vec<String>,
    pub(super) limits: Limits,
    pub(super) network: Network,
}

impl Recorder {
    pub(super) fn new(
        inner: &Inner,
        spec: &RunSpec,
        run_id: &str,
        started_at: SystemTime,
    ) -> Recorder {
        Recorder {
            run_id: run_id.to_string(),
            labels: spec.labels.clone(),
            started_at,
            rootfs: match &spec.source {
                Source::Rootfs(d) => Some(d.clone()),
                Source::Image(_) => None,
            },
            image: None,
            command: spec.args.clone(),
            limits: spec.limits.clone().unwrap_or_else(|| inner.limits.clone()),
            network: spec.network.unwrap_or(inner.network),
        }
    }

    pub(super) fn fill(&mut self, s: &SandboxSpec) {
        self.command = s.args.clone();
        self.limits = s.limits.clone();
        self.network = s.network;
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn result(
        &self,
        prep: &Prepared,
        o: Outcome,
        stdout: Captured,
        stderr: Captured,
        outputs: Vec<OutputFile>,
        durations: Durations,
        admitted: u64,
    ) -> RunResult {
        let signal = match o.termination {
            Termination::Signaled(s) => Some(s),
            Termination::Exited(_) => None,
        };
        let cap_out = stdout.data.len() as u64;
        let cap_err = stderr.data.len() as u64;
        RunResult {
            run_id: o.run_id.clone(),
            image: prep.image.clone(),
            command: prep.sandbox.args.clone(),
            labels: self.labels.clone(),
            exit_code: o.exit_code(),
            signal,
            timed_out: o.timed_out,
            oom_killed: o.oom_killed,
            cancelled: o.cancelled,
            stdout_truncated: stdout.total > cap_out,
            stderr_truncated: stderr.total > cap_err,
            stdout_bytes: stdout.total,
            stderr_bytes: stderr.total,
            stdout: stdout.data,
            stderr: stderr.data,
            outputs,
            started_at: self.started_at,
            ended_at: SystemTime::now(),
            durations,
            peak_memory: o.peak_memory,
            cpu_time: o.cpu_time,
            unenforced: o.unenforced,
            warnings: o.warnings,
            notes: o.notes,
            limits: prep.sandbox.limits.clone(),
            network: prep.sandbox.network,
            admitted,
        }
    }

    pub(super) fn audit(&self, inner: &Inner, r: &Result<RunResult, Error>) {
        let rec = match r {
            Ok(r) => AuditRecord {
                time: r.ended_at,
                run_id: r.run_id.clone(),
                labels: r.labels.clone(),
                image: r.image.clone(),
                rootfs: self.rootfs.clone(),
                command: r.command.clone(),
                limits: r.limits.clone(),
                network: r.network,
                exit_code: Some(r.exit_code),
                error: None,
                durations: r.durations,
                timed_out: r.timed_out,
                oom_killed: r.oom_killed,
                cancelled: r.cancelled,
                stdout_bytes: r.stdout_bytes,
                stderr_bytes: r.stderr_bytes,
                outputs: r
                    .outputs
                    .iter()
                    .map(|o| (o.path.clone(), (!o.missing).then_some(o.size)))
                    .collect(),
            },
            Err(e) => AuditRecord {
                time: SystemTime::now(),
                run_id: self.run_id.clone(),
                labels: self.labels.clone(),
                image: self.image.clone(),
                rootfs: self.rootfs.clone(),
                command: self.command.clone(),
                limits: self.limits.clone(),
                network: self.network,
                exit_code: None,
                error: Some(format!("{e} (exit {})", e.exit_code())),
                durations: Durations {
                    total: self.started_at.elapsed().unwrap_or_default(),
                    ..Default::default()
                },
                timed_out: false,
                oom_killed: false,
                cancelled: matches!(e, Error::Cancelled),
                stdout_bytes: 0,
                stderr_bytes: 0,
                outputs: Vec::new(),
            },
        };
        inner.audit.record(&rec);
    }
}
