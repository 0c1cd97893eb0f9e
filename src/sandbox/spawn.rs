//! Parent side: clone the sandbox, write its id maps, place it in its cgroup, release it, then
//! wait for it while forwarding signals and enforcing the timeout; clean up whatever happens.
//!
//! Must run in a process that may fork safely: a single-threaded one (the CLI), or the helper
//! that [`crate::helper`] starts for multithreaded callers.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::SigSet;
use nix::sys::signalfd::{SfdFlags, SignalFd};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::cgroup::{self, CgroupError, Enforcement};
use super::child::{self, ChildFds};
use super::diagnose::{self, HostFacts};
use super::init::{FORWARDED, WAITED};
use super::mounts::Op;
use super::net;
use super::plan::{new_run_id, Plan, PlanError};
use super::report::{Report, Stage, REPORT_SIZE};
use super::spec::SandboxSpec;
use super::sys;
use super::trace::{self, Phase};

/// Why a run could not produce an outcome. [`RunError::exit_code`] follows Docker.
#[derive(Debug, Error)]
pub enum RunError {
    #[error("{0}")]
    Plan(#[from] PlanError),
    #[error("{0}")]
    Net(#[from] net::parent::NetError),
    #[error("cgroup: {0}")]
    Cgroup(#[from] CgroupError),
    #[error("{0}")]
    Clone(String),
    #[error("{0}")]
    Idmap(#[from] super::idmap::IdmapError),
    #[error("sandbox setup failed: {what}: {err}{}", hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())]
    Setup {
        what: String,
        err: nix::errno::Errno,
        hint: Option<String>,
    },
    #[error("exec: {cmd:?}: executable file not found in $PATH ({path})")]
    NotFound { cmd: String, path: String },
    #[error("exec: {cmd:?}: no such file or directory")]
    NoSuchFile { cmd: String },
    #[error("exec: {cmd:?}: {err}")]
    NotExecutable { cmd: String, err: nix::errno::Errno },
    #[error("{what}: {err}")]
    Sys {
        what: &'static str,
        err: nix::errno::Errno,
    },
    #[error("the run ran out of memory before the tool started: raise --memory")]
    SetupOom,
    #[error("the sandbox's pid 1 exited before starting the tool (status {0})")]
    Vanished(i32),
    #[error("{which} is {what}: the tool could reach the host's files through it; redirect it from a file, a pipe or /dev/null")]
    BadStdio {
        which: &'static str,
        what: &'static str,
    },
}

impl RunError {
    /// Docker's convention: 127 command not found, 126 not executable, 125 our own failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::NotFound { .. } | RunError::NoSuchFile { .. } => 127,
            RunError::NotExecutable { .. } => 126,
            _ => 125,
        }
    }
}

/// How the tool ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "value")]
pub enum Termination {
    Exited(i32),
    Signaled(i32),
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub run_id: String,
    pub termination: Termination,
    /// The timeout fired (the tool got SIGTERM, then SIGKILL if it did not stop).
    pub timed_out: bool,
    /// The memory limit was hit and the kernel's OOM killer ended a process of the run.
    pub oom_killed: bool,
    /// The caller went away (helper mode) and the run was killed.
    pub cancelled: bool,
    /// From clone to the tool's exec.
    pub setup_time: Duration,
    /// From clone to the end of pid 1.
    pub wall_time: Duration,
    /// User + system CPU time of every process of the run.
    pub cpu_time: Duration,
    /// Peak memory: the cgroup's when there is one, else the largest process's RSS.
    pub peak_memory: Option<u64>,
    /// Limits that could not be enforced on this host, one phrase each.
    pub unenforced: Vec<String>,
    /// What went wrong after the tool ended without changing its result (a cgroup that could
    /// not be removed: `nsrun gc` removes it later), one line each.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// How the run differs from what was asked, to enforce what was asked (one sentence each),
    /// e.g. capabilities dropped so that an rlimit holds.
    #[serde(default)]
    pub notes: Vec<String>,
}

impl Outcome {
    /// The exit status Docker would give: 137 when the OOM killer ended the run (as Docker
    /// reports it, whichever process it picked), 124 for a timeout (like timeout(1)), 128+N for
    /// signal N, else the tool's own code.
    pub fn exit_code(&self) -> i32 {
        if self.oom_killed {
            return 137;
        }
        if self.timed_out {
            return 124;
        }
        match self.termination {
            Termination::Exited(c) => c,
            Termination::Signaled(s) => 128 + s,
        }
    }
}

/// Where the tool's stdin, stdout and stderr come from. `None` inherits ours (stdin: `/dev/null`
/// unless the spec asks for it).
#[derive(Debug, Default)]
pub struct Stdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Refuses a descriptor the tool would get as stdin, stdout or stderr when it is a directory or
/// an `O_PATH` descriptor: through `/proc/self/fd/N/` the tool would walk the host's filesystem
/// from there (`nsrun run -i … < /`). `which` names the stream for the message.
///
/// ```
/// use std::os::fd::AsRawFd;
/// let dir = std::fs::File::open("/").unwrap();
/// let err = nsrun::sandbox::check_stdio(dir.as_raw_fd(), "stdin").unwrap_err();
/// assert!(err.to_string().starts_with("stdin is a directory"));
/// let file = std::fs::File::open("/dev/null").unwrap();
/// assert!(nsrun::sandbox::check_stdio(file.as_raw_fd(), "stdin").is_ok());
/// ```
pub fn check_stdio(fd: RawFd, which: &'static str) -> Result<(), RunError> {
    let bad = |what| Err(RunError::BadStdio { which, what });
    // A closed descriptor is the caller's business: the tool then gets none either.
    let Ok(flags) = nix::fcntl::fcntl(
        // SAFETY: only borrowed for this call; fcntl(F_GETFL) does not affect it.
        unsafe { BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFL,
    ) else {
        return Ok(());
    };
    if flags & libc::O_PATH != 0 {
        return bad("an O_PATH descriptor");
    }
    match nix::sys::stat::fstat(
        // SAFETY: as above; fstat only reads.
        unsafe { BorrowedFd::borrow_raw(fd) },
    ) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => bad("a directory"),
        _ => Ok(()),
    }
}

fn sys_err(what: &'static str) -> impl Fn(nix::errno::Errno) -> RunError {
    move |err| RunError::Sys { what, err }
}

/// Kills and reaps the child if the parent bails out between clone and the end of the run.
struct ChildGuard(Option<libc::pid_t>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = sys::kill(pid, libc::SIGKILL);
            let _ = sys::waitpid(pid, 0);
        }
    }
}

/// Restores the signal mask when the run is over.
struct MaskGuard(libc::sigset_t);

impl Drop for MaskGuard {
    fn drop(&mut self) {
        sys::sigmask(libc::SIG_SETMASK, &self.0);
    }
}

/// Runs `spec` to completion. `cancel`, when given, is watched: if it becomes readable or hangs
/// up, the run is killed (the helper passes the pipe from its caller).
///
/// ```no_run
/// use nsrun::sandbox::{run, SandboxSpec, Stdio};
/// let spec = SandboxSpec::new("/srv/busybox", ["echo", "hello"]);
/// let outcome = run(&spec, Stdio::default(), None).expect("sandbox");
/// assert_eq!(outcome.exit_code(), 0);
/// ```
pub fn run(
    spec: &SandboxSpec,
    stdio: Stdio,
    cancel: Option<BorrowedFd>,
) -> Result<Outcome, RunError> {
    run_observed(spec, stdio, cancel, &mut |_, _| {})
}

/// [`run`], calling `on_started(run_id, setup_time)` as soon as the tool has started (the
/// helper turns it into the protocol's `started` message).
pub fn run_observed(
    spec: &SandboxSpec,
    stdio: Stdio,
    cancel: Option<BorrowedFd>,
    on_started: &mut dyn FnMut(&str, Duration),
) -> Result<Outcome, RunError> {
    // Before anything is created: what the tool's stdio will be.
    let raw = |fd: &Option<OwnedFd>, default: RawFd| fd.as_ref().map_or(default, |f| f.as_raw_fd());
    if stdio.stdin.is_some() || spec.stdin {
        check_stdio(raw(&stdio.stdin, 0), "stdin")?;
    }
    check_stdio(raw(&stdio.stdout, 1), "stdout")?;
    check_stdio(raw(&stdio.stderr, 2), "stderr")?;

    let run_id = spec.run_id.clone().unwrap_or_else(new_run_id);
    let mut plan = Plan::build(spec, &run_id)?;
    let enforcement = cgroup::setup(&spec.limits, &run_id)?;
    trace::mark(Phase::Cgroup, "cgroup created (or rlimits chosen)");
    let mut notes = Vec::new();
    if let Some(n) = plan.net.as_ref().and_then(|n| n.notice.clone()) {
        notes.push(n);
    }
    let (rlimits, unenforced) = match &enforcement {
        Enforcement::Rlimits {
            rlimits,
            unenforced,
        } => (rlimits.clone(), unenforced.clone()),
        Enforcement::Cgroup(cg) => (Vec::new(), cg.unenforced().to_vec()),
        Enforcement::None => (Vec::new(), Vec::new()),
    };
    if rlimits.iter().any(|r| r.resource == libc::RLIMIT_NPROC) && plan.idmap.maps_many_uids() {
        // RLIMIT_NPROC counts per uid: a tool that could switch among the namespace's uids
        // would get the limit once per uid. Without SETUID and SETGID it keeps the uid it
        // starts with (no_new_privs already makes setuid binaries useless), so the rlimit holds
        // for the whole run.
        plan.caps.remove(super::caps::CAP_SETUID);
        plan.caps.remove(super::caps::CAP_SETGID);
        notes.push(
            "--pids-limit is enforced as RLIMIT_NPROC (no writable cgroup), which counts per \
             uid: the tool's SETUID and SETGID capabilities were dropped so that it cannot \
             switch uid to escape it"
                .into(),
        );
    }

    let devnull;
    let stdin_fd: RawFd = match (&stdio.stdin, spec.stdin) {
        (Some(fd), _) => fd.as_raw_fd(),
        (None, true) => 0,
        (None, false) => {
            devnull = std::fs::File::open("/dev/null").map_err(|e| RunError::Sys {
                what: "open /dev/null",
                err: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            })?;
            devnull.as_raw_fd()
        }
    };
    let (sync_r, sync_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys_err("pipe"))?;
    let (report_r, report_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys_err("pipe"))?;
    // `-t`: the child sends the terminal's master back on this (see `tty`).
    let tty_socks = spec
        .tty
        .then(|| {
            use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
            socketpair(
                AddressFamily::Unix,
                SockType::SeqPacket,
                None,
                SockFlag::SOCK_CLOEXEC,
            )
            .map_err(sys_err("socketpair"))
        })
        .transpose()?;
    let fds = ChildFds {
        sync_r: sync_r.as_raw_fd(),
        sync_w: sync_w.as_raw_fd(),
        report_r: report_r.as_raw_fd(),
        report_w: report_w.as_raw_fd(),
        stdio: [stdin_fd, raw(&stdio.stdout, 1), raw(&stdio.stderr, 2)],
        tty: tty_socks
            .as_ref()
            .map_or(-1, |(_, child)| child.as_raw_fd()),
    };

    // Blocked here, inherited blocked by pid 1, which collects them with sigwaitinfo; we read
    // ours from a signalfd and pass them on.
    let _mask = MaskGuard(sys::sigmask(libc::SIG_BLOCK, &sys::sigset(&WAITED)));
    if spec.tty {
        // Window changes of the caller's terminal, read from the same signalfd.
        sys::sigmask(libc::SIG_BLOCK, &sys::sigset(&[libc::SIGWINCH]));
    }

    let started = Instant::now();
    let pid = match sys::clone_process(plan.clone_flags) {
        Ok(0) => child::main(&plan, &fds, &rlimits),
        Ok(pid) => pid,
        Err(e) => {
            return Err(RunError::Clone(diagnose::clone_failure(
                e,
                &HostFacts::probe(),
            )))
        }
    };
    let mut guard = ChildGuard(Some(pid));
    trace::mark(Phase::Clone, "clone: sandbox created");
    drop(sync_r);
    drop(report_w);
    // The relay owns the caller's terminal mode from here: dropped on every way out.
    let relay = tty_socks.map(|(ours, _child)| {
        let input = spec.stdin.then_some(stdin_fd);
        super::tty::Relay::new(ours, input, raw(&stdio.stdout, 1))
    });
    // The ulimits, set from outside (see `ulimit`), before the child may start anything.
    for u in &spec.ulimits {
        u.apply(pid)
            .map_err(|m| RunError::Plan(PlanError::Option(m)))?;
    }

    // Two releases: the first once the id maps are written, so the child sets up its mounts
    // while we attach it to its cgroup (the first write to a v1 cgroup.procs waits for an RCU
    // grace period, milliseconds); the second once it is attached, before anything is forked.
    plan.idmap.write(pid)?;
    trace::mark(Phase::IdMaps, "id maps written");
    // Opened before the child changes its credentials, while we may still reach its /proc.
    let namespaces = match &plan.net {
        Some(_) => Some(net::parent::open_namespaces(pid)?),
        None => None,
    };
    let release = |what| match sys::write_all(sync_w.as_raw_fd(), &[1]) {
        // The child already failed a setup step (a mount, say) and exited while we attached it:
        // its report, read below, says why, which "broken pipe" would hide.
        Ok(()) | Err(libc::EPIPE) => Ok(()),
        Err(e) => Err(RunError::Sys {
            what,
            err: nix::errno::Errno::from_raw(e),
        }),
    };
    release("release the sandbox")?;
    if let Enforcement::Cgroup(cg) = &enforcement {
        cg.add_pid(pid)?;
        trace::mark(Phase::CgroupAttach, "sandbox attached to its cgroup");
    }
    // The filter, the DNS forwarder and the user-mode helper, before the tool can start.
    let _network = match (&plan.net, namespaces) {
        (Some(np), Some((userns, netns))) => Some(net::parent::attach(np, userns, netns)?),
        _ => None,
    };
    release("release the sandbox into its cgroup")?;
    // `sync_w` stays open until the run ends: the child watches it to notice our death.

    let mut waiter = Waiter::new(pid, report_r, cancel, spec, started)?;
    waiter.tty = relay;
    let events = waiter.wait(&mut |setup| on_started(&run_id, setup))?;
    let (status, usage) = sys::wait4(pid).map_err(|e| RunError::Sys {
        what: "wait4",
        err: nix::errno::Errno::from_raw(e),
    })?;
    guard.0 = None;
    drop(sync_w);
    let wall_time = started.elapsed();
    trace::mark(Phase::Run, "pid 1 exited and reaped");
    record_marks(&plan, &events.marks);

    let mut stats = None;
    let mut warnings = Vec::new();
    if let Enforcement::Cgroup(cg) = enforcement {
        cg.kill_all();
        stats = Some(cg.stats());
        // The tool's result stands: a cgroup left behind is swept by `nsrun gc`.
        if let Err(e) = cg.remove() {
            warnings.push(format!("{e} (nsrun gc removes it)"));
        }
        trace::mark(Phase::Cleanup, "cgroup read and removed");
    }

    if let Some(Report::Failed { stage, errno }) = events.failure {
        return Err(setup_error(&plan, stage, errno));
    }
    let Some(setup_time) = events.started else {
        if events.timed_out || events.cancelled {
            // Killed while still setting up: report it as what it is, not as a setup failure.
            return Ok(Outcome {
                run_id,
                termination: Termination::Signaled(libc::SIGKILL),
                timed_out: events.timed_out,
                oom_killed: false,
                cancelled: events.cancelled,
                setup_time: wall_time,
                wall_time,
                cpu_time: cpu_time(&usage),
                peak_memory: None,
                unenforced,
                warnings,
                notes,
            });
        }
        if stats.as_ref().is_some_and(|s| s.oom_killed) {
            return Err(RunError::SetupOom);
        }
        return Err(RunError::Vanished(status));
    };
    let termination = events.termination.unwrap_or(if libc::WIFSIGNALED(status) {
        // pid 1 was killed (timeout, cancel, OOM) before it could report the tool's end.
        Termination::Signaled(libc::WTERMSIG(status))
    } else {
        Termination::Exited(libc::WEXITSTATUS(status))
    });
    let oom_killed = stats.as_ref().is_some_and(|s| s.oom_killed);
    Ok(Outcome {
        run_id,
        termination,
        timed_out: events.timed_out,
        oom_killed,
        cancelled: events.cancelled,
        setup_time,
        wall_time,
        cpu_time: stats
            .as_ref()
            .and_then(|s| s.cpu_time)
            .unwrap_or_else(|| cpu_time(&usage)),
        peak_memory: stats
            .and_then(|s| s.peak_memory)
            .or(Some(usage.ru_maxrss as u64 * 1024)),
        unenforced,
        warnings,
        notes,
    })
}

/// Adds the sandbox's trace marks to the timeline, named after their stages.
fn record_marks(plan: &Plan, marks: &[(Stage, i32)]) {
    let Some(origin) = plan.trace_origin_ns else {
        return;
    };
    for &(stage, micros) in marks {
        let phase = match stage {
            Stage::WaitMaps | Stage::WaitCgroup => Phase::Wait,
            Stage::Source(_) | Stage::SetupIds | Stage::ParentDeath | Stage::UnprivilegedPorts => {
                Phase::Ids
            }
            Stage::Step(i)
                if matches!(
                    plan.steps.get(i).map(|s| &s.op),
                    Some(Op::PivotDetachOld { .. })
                ) =>
            {
                Phase::Pivot
            }
            Stage::Step(_) => Phase::Mounts,
            Stage::UnshareCgroup | Stage::Hostname | Stage::Loopback | Stage::Stdio => {
                Phase::Namespaces
            }
            Stage::Seccomp => Phase::SeccompLoad,
            _ => Phase::Drop,
        };
        let what = match stage {
            Stage::Exec(_) => format!("about to {}", stage.describe(plan)),
            _ => stage.describe(plan),
        };
        trace::record(trace::Mark {
            at_ns: origin + micros.max(0) as u64 * 1000,
            side: trace::Side::Sandbox,
            phase,
            what,
        });
    }
}

fn cpu_time(usage: &libc::rusage) -> Duration {
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn setup_error(plan: &Plan, stage: Stage, errno: i32) -> RunError {
    let err = nix::errno::Errno::from_raw(errno);
    if let Stage::Exec(i) = stage {
        let cmd = plan.exec.argv0.clone();
        return match (errno, plan.exec.candidates.len() > 1 || !cmd.contains('/')) {
            (libc::ENOENT, true) => RunError::NotFound {
                cmd,
                path: plan.exec.search_path.clone(),
            },
            (libc::ENOENT, false) => RunError::NoSuchFile { cmd },
            _ => RunError::NotExecutable {
                cmd: plan
                    .exec
                    .candidates
                    .get(i)
                    .map_or(cmd, |c| c.to_string_lossy().into_owned()),
                err,
            },
        };
    }
    let what = stage.describe(plan);
    let hint = diagnose::setup_hint(&what, errno, &HostFacts::probe());
    RunError::Setup { what, err, hint }
}

/// What the wait loop saw.
#[derive(Debug, Default)]
struct Events {
    started: Option<Duration>,
    failure: Option<Report>,
    /// Start-up trace marks: (stage done, µs since the trace's origin).
    marks: Vec<(Stage, i32)>,
    termination: Option<Termination>,
    timed_out: bool,
    cancelled: bool,
}

impl Drop for Waiter<'_> {
    /// Signals that arrived after pid 1 was gone have no one to go to; left pending, they would
    /// hit nsrun itself once the mask is restored.
    fn drop(&mut self) {
        while let Ok(Some(_)) = self.signals.read_signal() {}
    }
}

/// The parent's wait loop: pid 1's exit, its reports, our signals, the timeout and the cancel fd.
struct Waiter<'a> {
    pid: libc::pid_t,
    pidfd: OwnedFd,
    report: Option<OwnedFd>,
    signals: SignalFd,
    cancel: Option<BorrowedFd<'a>>,
    deadline: Option<Instant>,
    stop_timeout: Duration,
    started: Instant,
    events: Events,
    /// `-t`: the terminal relay.
    tty: Option<super::tty::Relay>,
}

impl<'a> Waiter<'a> {
    fn new(
        pid: libc::pid_t,
        report: OwnedFd,
        cancel: Option<BorrowedFd<'a>>,
        spec: &SandboxSpec,
        started: Instant,
    ) -> Result<Self, RunError> {
        let pidfd = sys::pidfd_open(pid).map_err(|e| RunError::Sys {
            what: "pidfd_open",
            err: nix::errno::Errno::from_raw(e),
        })?;
        let mut set = SigSet::empty();
        for s in FORWARDED {
            set.add(nix::sys::signal::Signal::try_from(s).expect("valid signal"));
        }
        if spec.tty {
            set.add(nix::sys::signal::Signal::SIGWINCH);
        }
        let signals = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(sys_err("signalfd"))?;
        Ok(Waiter {
            pid,
            pidfd,
            report: Some(report),
            signals,
            cancel,
            deadline: spec.timeout.map(|t| started + t),
            stop_timeout: spec.stop_timeout,
            started,
            events: Events::default(),
            tty: None,
        })
    }

    fn wait(&mut self, on_started: &mut dyn FnMut(Duration)) -> Result<Events, RunError> {
        loop {
            let timeout = match self.deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32 + 1)
                        .unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = vec![
                PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
            ];
            if let Some(r) = &self.report {
                fds.push(PollFd::new(r.as_fd(), PollFlags::POLLIN));
            }
            if let Some(c) = self.cancel {
                fds.push(PollFd::new(c, PollFlags::POLLIN));
            }
            let ours = fds.len();
            if let Some(t) = &self.tty {
                fds.extend(t.poll_fds());
            }
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    return Err(RunError::Sys {
                        what: "poll",
                        err: e,
                    })
                }
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            let exited = ready(&fds[0]);
            let signalled = ready(&fds[1]);
            let report_ready = self.report.is_some() && ready(&fds[2]);
            let cancelled = self.cancel.is_some() && ready(&fds[ours - 1]);
            let tty_ready = super::tty::Relay::ready(&fds[ours..]);
            drop(fds);
            if let Some(t) = &mut self.tty {
                t.handle(tty_ready);
            }

            if report_ready || exited {
                self.read_reports(on_started);
            }
            if exited {
                // Reports written just before exit are in the pipe already.
                self.read_reports(on_started);
                if let Some(t) = &mut self.tty {
                    t.drain();
                }
                return Ok(std::mem::take(&mut self.events));
            }
            if signalled {
                while let Ok(Some(info)) = self.signals.read_signal() {
                    match (info.ssi_signo as i32, &self.tty) {
                        (libc::SIGWINCH, Some(t)) => t.resize(),
                        (libc::SIGWINCH, None) => {}
                        (sig, _) => {
                            let _ = sys::kill(self.pid, sig);
                        }
                    }
                }
            }
            if cancelled && !self.events.cancelled {
                self.events.cancelled = true;
                let _ = sys::kill(self.pid, libc::SIGKILL);
            }
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                if self.events.timed_out {
                    // Grace is over: killing pid 1 kills the whole pid namespace.
                    let _ = sys::kill(self.pid, libc::SIGKILL);
                    self.deadline = None;
                } else {
                    self.events.timed_out = true;
                    let _ = sys::kill(self.pid, libc::SIGTERM);
                    self.deadline = Some(Instant::now() + self.stop_timeout);
                }
            }
        }
    }

    fn read_reports(&mut self, on_started: &mut dyn FnMut(Duration)) {
        let Some(fd) = &self.report else { return };
        let mut buf = [0u8; REPORT_SIZE];
        // The pipe is drained only when poll says it is readable or pid 1 is gone, so these
        // reads do not block for long: pid 1 writes whole records or exits.
        let mut poll_fd = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        while poll(&mut poll_fd, PollTimeout::ZERO).unwrap_or(0) > 0 {
            match sys::read_full(fd.as_raw_fd(), &mut buf) {
                Ok(REPORT_SIZE) => match Report::decode(&buf) {
                    Some(Report::Started { .. }) => {
                        trace::mark(Phase::Exec, "tool started (pid 1's report received)");
                        let setup = self.started.elapsed();
                        self.events.started = Some(setup);
                        on_started(setup);
                    }
                    Some(Report::Exited { code }) => {
                        self.events.termination = Some(Termination::Exited(code))
                    }
                    Some(Report::Signaled { signal }) => {
                        self.events.termination = Some(Termination::Signaled(signal))
                    }
                    Some(failure @ Report::Failed { .. }) => self.events.failure = Some(failure),
                    Some(Report::Mark { stage, micros }) => self.events.marks.push((stage, micros)),
                    None => {}
                },
                _ => {
                    self.report = None;
                    return;
                }
            }
        }
    }
}
