//! Child side, part one: from clone to a finished filesystem. Runs in the new namespaces and
//! never allocates (see [`super::sys`]). Every failure is reported to the parent as a
//! [`Report`] naming the stage, then the child exits.

use std::os::fd::RawFd;

use super::cgroup::Rlimit;
use super::init;
use super::plan::Plan;
use super::sys;

/// A stage of setup, sent to the parent on failure. Non-negative values index `Plan::steps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Step(usize),
    UnshareCgroup,
    Hostname,
    Loopback,
    Stdio,
    Fork,
    Bounding,
    Ids,
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
}

impl Stage {
    fn encode(self) -> i32 {
        match self {
            Stage::Step(i) => i as i32,
            Stage::Exec(i) => -1000 - i as i32,
            Stage::Source(i) => -100_000 - i as i32,
            other => -(other.ordinal() as i32),
        }
    }

    fn ordinal(self) -> u8 {
        match self {
            Stage::UnshareCgroup => 1,
            Stage::Hostname => 2,
            Stage::Loopback => 3,
            Stage::Stdio => 4,
            Stage::Fork => 5,
            Stage::Bounding => 6,
            Stage::Ids => 7,
            Stage::Caps => 8,
            Stage::NoNewPrivs => 9,
            Stage::Rlimits => 10,
            Stage::Chdir => 11,
            Stage::CloseFds => 12,
            Stage::Seccomp => 13,
            Stage::NestUnshare => 14,
            Stage::NestMaps => 15,
            Stage::UnprivilegedPorts => 16,
            Stage::Tty => 17,
            Stage::Step(_) | Stage::Exec(_) | Stage::Source(_) => 0,
        }
    }

    pub fn decode(v: i32) -> Stage {
        if v >= 0 {
            return Stage::Step(v as usize);
        }
        if v <= -100_000 {
            return Stage::Source((-100_000 - v) as usize);
        }
        if v <= -1000 {
            return Stage::Exec((-1000 - v) as usize);
        }
        [
            Stage::UnshareCgroup,
            Stage::Hostname,
            Stage::Loopback,
            Stage::Stdio,
            Stage::Fork,
            Stage::Bounding,
            Stage::Ids,
            Stage::Caps,
            Stage::NoNewPrivs,
            Stage::Rlimits,
            Stage::Chdir,
            Stage::CloseFds,
            Stage::Seccomp,
            Stage::NestUnshare,
            Stage::NestMaps,
            Stage::UnprivilegedPorts,
            Stage::Tty,
        ]
        .into_iter()
        .find(|s| s.ordinal() as i32 == -v)
        .unwrap_or(Stage::Fork)
    }

    /// What the stage does, for error messages.
    pub fn describe(self, plan: &Plan) -> String {
        match self {
            Stage::Step(i) => plan
                .steps
                .get(i)
                .map_or_else(|| format!("setup step {i}"), |s| s.what.clone()),
            Stage::UnshareCgroup => "unshare the cgroup namespace".into(),
            Stage::Hostname => "sethostname".into(),
            Stage::Loopback => "bring up the loopback interface".into(),
            Stage::Stdio => "set up stdin/stdout/stderr".into(),
            Stage::Fork => "fork the tool from pid 1".into(),
            Stage::Bounding => "drop capabilities from the bounding set".into(),
            Stage::Ids => format!("switch to uid {} gid {}", plan.exec.uid, plan.exec.gid),
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
}

pub const REPORT_SIZE: usize = 12;

impl Report {
    pub fn encode(self) -> [u8; REPORT_SIZE] {
        let (tag, a, b): (i32, i32, i32) = match self {
            Report::Failed { stage, errno } => (1, stage.encode(), errno),
            Report::Started { pid } => (2, pid, 0),
            Report::Exited { code } => (3, code, 0),
            Report::Signaled { signal } => (4, signal, 0),
        };
        let mut out = [0u8; REPORT_SIZE];
        out[0..4].copy_from_slice(&tag.to_ne_bytes());
        out[4..8].copy_from_slice(&a.to_ne_bytes());
        out[8..12].copy_from_slice(&b.to_ne_bytes());
        out
    }

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
            _ => return None,
        })
    }

    pub fn send(self, fd: RawFd) {
        // Nothing to do if the parent is gone: it was going to kill us anyway.
        let _ = sys::write_all(fd, &self.encode());
    }
}

/// Descriptors the child is handed. The parent's ends are closed first thing in the child.
#[derive(Debug, Clone, Copy)]
pub struct ChildFds {
    pub sync_r: RawFd,
    pub sync_w: RawFd,
    pub report_r: RawFd,
    pub report_w: RawFd,
    /// Descriptors to become the tool's 0, 1 and 2.
    pub stdio: [RawFd; 3],
    /// `-t`: the socket the terminal's master goes to the parent on (else -1); the slave then
    /// replaces `stdio`.
    pub tty: RawFd,
}

/// Entry point of the cloned child. Never returns.
pub fn main(plan: &Plan, fds: &ChildFds, rlimits: &[Rlimit]) -> ! {
    // If the parent dies from here on, so do we (and with pid 1, the whole namespace).
    let _ = sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    sys::close(fds.sync_w);
    sys::close(fds.report_r);
    // Wait until the parent has written our id maps and placed us in our cgroup. EOF means
    // it died before PDEATHSIG was armed, or gave up on us.
    let mut byte = [0u8; 1];
    if sys::read_full(fds.sync_r, &mut byte) != Ok(1) {
        sys::exit(125);
    }

    if let Err((stage, errno)) = setup(plan, fds) {
        Report::Failed { stage, errno }.send(fds.report_w);
        sys::exit(125);
    }
    init::run(plan, fds.report_w, rlimits)
}

/// Re-arms the parent-death signal, which the kernel clears on every credential change, and
/// checks the parent did not die before it was armed: the parent holds the sync pipe's write
/// end for the whole run, so a hang-up on our end means it is gone.
fn rearm_parent_death(sync_r: RawFd) -> Result<(), i32> {
    sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong)?;
    let mut pfd = libc::pollfd {
        fd: sync_r,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    if n > 0 && pfd.revents & libc::POLLHUP != 0 {
        sys::exit(125);
    }
    Ok(())
}

/// Namespaces' contents: cgroup root, filesystem, hostname, loopback, stdio.
fn setup(plan: &Plan, fds: &ChildFds) -> Result<(), (Stage, i32)> {
    for (i, source) in plan.sources.iter().enumerate() {
        source.reopen().map_err(|e| (Stage::Source(i), e))?;
    }
    // As root we were host uid 0, which is not mapped here: become a mapped id first.
    let groups: &[libc::gid_t] = &[];
    let (uid, gid) = plan.setup_ids;
    sys::set_ids(uid, gid, plan.idmap.setgroups.then_some(groups)).map_err(|e| (Stage::Ids, e))?;
    rearm_parent_death(fds.sync_r).map_err(|e| (Stage::Ids, e))?;
    if plan.nest.is_some() && plan.loopback_up {
        // The nested tool has no capability over the run's network namespace, which belongs to
        // the outer user namespace, so CAP_NET_BIND_SERVICE would mean nothing to it: let every
        // uid bind low ports there, as Docker does for every container. Written now, through
        // the host's /proc (net sysctls follow the writer's network namespace), because the
        // container's /proc/sys is read-only once mounted.
        sys::write_file(c"/proc/sys/net/ipv4/ip_unprivileged_port_start", b"0")
            .map_err(|e| (Stage::UnprivilegedPorts, e))?;
    }
    for (i, step) in plan.steps.iter().enumerate() {
        step.execute(&plan.mount_fds)
            .map_err(|e| (Stage::Step(i), e))?;
    }
    // The parent attached us to our cgroup meanwhile; wait for it to say so, then make that
    // cgroup the root of our view. Everything forked from here on starts inside it.
    let mut byte = [0u8; 1];
    if sys::read_full(fds.sync_r, &mut byte) != Ok(1) {
        sys::exit(125);
    }
    sys::close(fds.sync_r);
    sys::unshare(libc::CLONE_NEWCGROUP).map_err(|e| (Stage::UnshareCgroup, e))?;
    sys::sethostname(&plan.hostname).map_err(|e| (Stage::Hostname, e))?;
    if plan.loopback_up {
        sys::loopback_up().map_err(|e| (Stage::Loopback, e))?;
    }
    if let Some((rows, cols)) = plan.tty {
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let owner = (plan.exec.uid, plan.exec.gid);
        return super::tty::child_open(fds.tty, &size, owner).map_err(|e| (Stage::Tty, e));
    }
    for (target, &fd) in fds.stdio.iter().enumerate() {
        sys::dup2(fd, target as RawFd).map_err(|e| (Stage::Stdio, e))?;
    }
    Ok(())
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
            Report::Failed {
                stage: Stage::Tty,
                errno: libc::ENOENT,
            },
            Report::Started { pid: 2 },
            Report::Exited { code: 42 },
            Report::Signaled { signal: 9 },
        ] {
            assert_eq!(Report::decode(&r.encode()), Some(r));
        }
        assert_eq!(Report::decode(&[0; REPORT_SIZE]), None);
    }
}
