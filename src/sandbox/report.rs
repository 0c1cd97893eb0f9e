//! The report protocol between the sandbox and its parent: fixed-size records on a pipe.
//!
//! The child side (`child.rs`), pid 1 (`init.rs`) and the tool's process send; the parent
//! (`spawn.rs`) receives. Records are [`REPORT_SIZE`] bytes, below `PIPE_BUF`, so each write is
//! atomic even with several writers, and encoding needs no allocation (the child must not
//! allocate).

use std::os::fd::RawFd;

use super::plan::Plan;
use super::sys;

/// A stage of the sandbox's setup: what failed (in a [`Report::Failed`]) or what just finished
/// (in a [`Report::Mark`], sent only when start-up tracing is on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `Plan::steps[i]`, the mount step table of [`super::mounts::plan()`].
    Step(usize),
    /// Waiting for the parent to write the id maps (EOF: the parent gave up on us).
    WaitMaps,
    /// Taking on `Plan::setup_ids` (container root when mapped) before setting up.
    SetupIds,
    /// Re-arming the parent-death signal after the credential change.
    ParentDeath,
    /// Waiting for the parent to attach us to our cgroup.
    WaitCgroup,
    UnshareCgroup,
    Hostname,
    Loopback,
    Stdio,
    /// pid 1 closing what it inherited and forking the tool.
    Fork,
    Bounding,
    /// The tool's process taking on the tool's uid, gid and groups (`Plan::exec`).
    ToolIds,
    Caps,
    NoNewPrivs,
    Rlimits,
    Chdir,
    CloseFds,
    Seccomp,
    /// The tool's own user and mount namespaces (a tool holding CAP_SYS_ADMIN; see
    /// [`super::plan::Nest`]).
    NestUnshare,
    /// pid 1 writing the id maps of the tool's nested user namespace.
    NestMaps,
    /// `net.ipv4.ip_unprivileged_port_start` of the run's network namespace.
    UnprivilegedPorts,
    /// `-t`: the tool's terminal (see [`super::tty`]).
    Tty,
    /// exec of `Plan::exec.candidates[i]` (the last one tried).
    Exec(usize),
    /// Opening `Plan::sources[i]`.
    Source(usize),
    /// A code this build does not know (a record from another nsrun version, or garbage):
    /// kept as it came, so the error names it instead of blaming some other stage.
    Unknown(i32),
}

/// The stages with a fixed code, in code order: `-(index + 1)` on the wire.
const FIXED: [Stage; 21] = [
    Stage::UnshareCgroup,
    Stage::Hostname,
    Stage::Loopback,
    Stage::Stdio,
    Stage::Fork,
    Stage::Bounding,
    Stage::ToolIds,
    Stage::Caps,
    Stage::NoNewPrivs,
    Stage::Rlimits,
    Stage::Chdir,
    Stage::CloseFds,
    Stage::Seccomp,
    Stage::NestUnshare,
    Stage::NestMaps,
    Stage::UnprivilegedPorts,
    Stage::WaitMaps,
    Stage::SetupIds,
    Stage::ParentDeath,
    Stage::WaitCgroup,
    Stage::Tty,
];

/// Codes of [`Stage::Exec`] and [`Stage::Source`] start here (downwards).
const EXEC_BASE: i32 = -1000;
const SOURCE_BASE: i32 = -100_000;

impl Stage {
    pub(crate) fn encode(self) -> i32 {
        match self {
            Stage::Step(i) => i as i32,
            Stage::Exec(i) => EXEC_BASE - i as i32,
            Stage::Source(i) => SOURCE_BASE - i as i32,
            Stage::Unknown(code) => code,
            fixed => {
                let i = FIXED
                    .iter()
                    .position(|s| *s == fixed)
                    .expect("every fixed stage is in FIXED");
                -(i as i32 + 1)
            }
        }
    }

    pub(crate) fn decode(v: i32) -> Stage {
        if v >= 0 {
            Stage::Step(v as usize)
        } else if v <= SOURCE_BASE {
            Stage::Source((SOURCE_BASE - v) as usize)
        } else if v <= EXEC_BASE {
            Stage::Exec((EXEC_BASE - v) as usize)
        } else {
            FIXED
                .get((-v - 1) as usize)
                .copied()
                .unwrap_or(Stage::Unknown(v))
        }
    }

    /// What the stage does, for error messages and the start-up trace.
    pub fn describe(self, plan: &Plan) -> String {
        match self {
            Stage::Step(i) => plan
                .steps
                .get(i)
                .map_or_else(|| format!("setup step {i}"), |s| s.what.clone()),
            Stage::WaitMaps => "wait for the parent to write the id maps".into(),
            Stage::SetupIds => format!(
                "switch to uid {} gid {} (the ids the sandbox sets up as)",
                plan.setup_ids.0, plan.setup_ids.1
            ),
            Stage::ParentDeath => "arm the parent-death signal".into(),
            Stage::WaitCgroup => "wait for the parent to attach the run's cgroup".into(),
            Stage::UnshareCgroup => "unshare the cgroup namespace".into(),
            Stage::Hostname => "sethostname".into(),
            Stage::Loopback => "bring up the loopback interface".into(),
            Stage::Stdio => "set up stdin/stdout/stderr".into(),
            Stage::Fork => "fork the tool from pid 1".into(),
            Stage::Bounding => "drop capabilities from the bounding set".into(),
            Stage::ToolIds => match &plan.exec.groups {
                Some(g) if !g.is_empty() => format!(
                    "switch to the tool's uid {} gid {} groups {:?}",
                    plan.exec.uid, plan.exec.gid, g
                ),
                _ => format!(
                    "switch to the tool's uid {} gid {}",
                    plan.exec.uid, plan.exec.gid
                ),
            },
            Stage::Caps => "set the tool's capabilities".into(),
            Stage::NoNewPrivs => "set no_new_privs".into(),
            Stage::Rlimits => "apply resource limits (setrlimit)".into(),
            Stage::Chdir => format!("chdir to the working directory {:?}", plan.exec.cwd),
            Stage::CloseFds => "close inherited file descriptors".into(),
            Stage::Seccomp => "load the seccomp filter".into(),
            Stage::NestUnshare => {
                "unshare the tool's nested user and mount namespaces (CAP_SYS_ADMIN runs)".into()
            }
            Stage::NestMaps => "write the id maps of the tool's nested user namespace".into(),
            Stage::UnprivilegedPorts => {
                "set net.ipv4.ip_unprivileged_port_start to 0 in the run's network namespace".into()
            }
            Stage::Tty => "allocate the tool's terminal on the run's /dev/pts".into(),
            Stage::Exec(i) => format!("exec {:?}", plan.exec.candidates.get(i)),
            Stage::Source(i) => format!("open {:?}", plan.sources.get(i).map(|s| &s.path)),
            Stage::Unknown(code) => format!("unknown setup stage (code {code})"),
        }
    }
}

/// A fixed-size message from the sandbox to the parent (atomic on a pipe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Setup failed at `stage` with `errno`.
    Failed {
        stage: Stage,
        errno: i32,
    },
    /// The tool is running as pid `pid` of the namespace.
    Started {
        pid: i32,
    },
    Exited {
        code: i32,
    },
    Signaled {
        signal: i32,
    },
    /// Start-up tracing only: `stage` finished `micros` µs after the trace's origin
    /// ([`super::trace`]), on the monotonic clock.
    Mark {
        stage: Stage,
        micros: i32,
    },
}

pub const REPORT_SIZE: usize = 12;

impl Report {
    pub fn encode(self) -> [u8; REPORT_SIZE] {
        let (tag, a, b): (i32, i32, i32) = match self {
            Report::Failed { stage, errno } => (1, stage.encode(), errno),
            Report::Started { pid } => (2, pid, 0),
            Report::Exited { code } => (3, code, 0),
            Report::Signaled { signal } => (4, signal, 0),
            Report::Mark { stage, micros } => (5, stage.encode(), micros),
        };
        let mut out = [0u8; REPORT_SIZE];
        out[0..4].copy_from_slice(&tag.to_ne_bytes());
        out[4..8].copy_from_slice(&a.to_ne_bytes());
        out[8..12].copy_from_slice(&b.to_ne_bytes());
        out
    }

    /// `None` for a record of an unknown kind.
    pub fn decode(buf: &[u8; REPORT_SIZE]) -> Option<Report> {
        let word = |i: usize| i32::from_ne_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
        let (a, b) = (word(4), word(8));
        Some(match word(0) {
            1 => Report::Failed {
                stage: Stage::decode(a),
                errno: b,
            },
            2 => Report::Started { pid: a },
            3 => Report::Exited { code: a },
            4 => Report::Signaled { signal: a },
            5 => Report::Mark {
                stage: Stage::decode(a),
                micros: b,
            },
            _ => return None,
        })
    }

    /// Child side: allocation-free.
    pub fn send(self, fd: RawFd) {
        // Nothing to do if the parent is gone: it was going to kill us anyway.
        let _ = sys::write_all(fd, &self.encode());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        for r in [
            Report::Failed {
                stage: Stage::Step(7),
                errno: libc::EPERM,
            },
            Report::Failed {
                stage: Stage::Exec(3),
                errno: libc::ENOENT,
            },
            Report::Failed {
                stage: Stage::Source(12),
                errno: libc::EACCES,
            },
            Report::Failed {
                stage: Stage::Seccomp,
                errno: libc::EINVAL,
            },
            Report::Failed {
                stage: Stage::UnshareCgroup,
                errno: 1,
            },
            Report::Failed {
                stage: Stage::NestMaps,
                errno: libc::EPERM,
            },
            Report::Failed {
                stage: Stage::UnprivilegedPorts,
                errno: libc::EROFS,
            },
            Report::Started { pid: 2 },
            Report::Exited { code: 42 },
            Report::Signaled { signal: 9 },
            Report::Mark {
                stage: Stage::Step(3),
                micros: 1234,
            },
        ] {
            assert_eq!(Report::decode(&r.encode()), Some(r));
        }
        assert_eq!(Report::decode(&[0; REPORT_SIZE]), None);
    }

    #[test]
    fn every_fixed_stage_has_its_own_code() {
        let mut codes = std::collections::HashSet::new();
        for s in FIXED {
            let code = s.encode();
            assert!(codes.insert(code), "{s:?} shares code {code}");
            assert_eq!(Stage::decode(code), s);
        }
        for s in [Stage::Step(0), Stage::Exec(0), Stage::Source(0)] {
            assert_eq!(Stage::decode(s.encode()), s);
        }
    }

    #[test]
    fn unknown_stage_codes_stay_unknown() {
        // Past the table: must not pose as a real stage (it used to decode as `Fork`).
        for code in [-(FIXED.len() as i32) - 1, -999] {
            assert_eq!(Stage::decode(code), Stage::Unknown(code), "{code}");
        }
        let buf = Report::Failed {
            stage: Stage::Unknown(-500),
            errno: libc::EIO,
        }
        .encode();
        assert_eq!(
            Report::decode(&buf),
            Some(Report::Failed {
                stage: Stage::Unknown(-500),
                errno: libc::EIO
            })
        );
    }
}
