//! Child side, part two: pid 1 of the container. It starts the tool, forwards the signals a
//! container's main process expects, reaps every zombie, and leaves when the tool does, which
//! makes the kernel kill whatever else is left in the pid namespace.

use std::os::fd::RawFd;

use super::caps;
use super::cgroup::{self, Rlimit};
use super::child::{Report, Stage, REPORT_SIZE};
use super::plan::Plan;
use super::sys;

/// Signals pid 1 passes on to the tool (Docker's `--sig-proxy` set plus the usual user signals).
pub const FORWARDED: [libc::c_int; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// What pid 1 waits for: the forwarded signals and its children's deaths. A constant, because
/// pid 1 must not allocate.
pub const WAITED: [libc::c_int; 7] = [
    FORWARDED[0],
    FORWARDED[1],
    FORWARDED[2],
    FORWARDED[3],
    FORWARDED[4],
    FORWARDED[5],
    libc::SIGCHLD,
];

/// The fd pid 1 keeps its report pipe on, after closing everything it inherited.
const REPORT_FD: RawFd = 3;

/// Runs as pid 1. The parent blocked `FORWARDED` and SIGCHLD before clone, so they queue up for
/// `sigwaitinfo` here instead of acting on us.
pub fn run(plan: &Plan, report_w: RawFd, rlimits: &[Rlimit]) -> ! {
    // Non-dumpable: the tool must not be able to open /proc/1/{exe,mem,fd} (CVE-2019-5736 class),
    // even as the same uid.
    let _ = sys::prctl(libc::PR_SET_DUMPABLE, 0);
    // Keep only stdio and the report pipe: nothing of the caller's leaks into the container.
    let fail = |stage, errno| -> ! {
        Report::Failed { stage, errno }.send(report_w);
        sys::exit(125)
    };
    if report_w != REPORT_FD {
        if let Err(e) = sys::dup2(report_w, REPORT_FD) {
            fail(Stage::CloseFds, e);
        }
    }
    if let Err(e) = sys::close_range(REPORT_FD as u32 + 1, false) {
        fail(Stage::CloseFds, e);
    }
    let report = REPORT_FD;

    let (err_r, err_w) = match sys::pipe() {
        Ok(p) => p,
        Err(e) => fail(Stage::Fork, e),
    };
    let tool = match sys::fork() {
        Ok(0) => {
            sys::close(err_r);
            sys::close(report);
            exec_tool(plan, err_w, rlimits)
        }
        Ok(pid) => pid,
        Err(e) => fail(Stage::Fork, e),
    };
    sys::close(err_w);

    // The tool sends a `Report::Failed` here if it fails before exec; EOF means exec succeeded.
    let mut buf = [0u8; REPORT_SIZE];
    let got = sys::read_full(err_r, &mut buf).unwrap_or(0);
    sys::close(err_r);
    if got == REPORT_SIZE {
        let _ = sys::waitpid(tool, 0);
        let _ = sys::write_all(report, &buf);
        sys::exit(127);
    }
    Report::Started { pid: tool }.send(report);

    let set = sys::sigset(&WAITED);
    loop {
        let sig = sys::sigwait(&set);
        if sig != libc::SIGCHLD {
            let _ = sys::kill(tool, sig);
            continue;
        }
        // SIGCHLDs coalesce: reap everything that is ready, orphans included.
        while let Ok((pid, status)) = sys::waitpid(-1, libc::WNOHANG) {
            if pid <= 0 {
                break;
            }
            if pid != tool {
                continue;
            }
            let (report_msg, code) = if libc::WIFSIGNALED(status) {
                let s = libc::WTERMSIG(status);
                (Report::Signaled { signal: s }, 128 + s)
            } else {
                let c = libc::WEXITSTATUS(status);
                (Report::Exited { code: c }, c)
            };
            report_msg.send(report);
            // Leaving as pid 1 kills every process still in the namespace.
            sys::exit(code);
        }
    }
}

/// The tool's process: drop to the tool's identity and confinement, then exec. Never returns.
fn exec_tool(plan: &Plan, err_w: RawFd, rlimits: &[Rlimit]) -> ! {
    let fail = |stage: Stage, errno: i32| -> ! {
        Report::Failed { stage, errno }.send(err_w);
        sys::exit(127)
    };
    let e = &plan.exec;
    sys::sigmask(libc::SIG_SETMASK, &sys::sigset(&[]));
    sys::reset_signal_dispositions();
    // A session of its own, as a container's main process has; it cannot fail in a fresh fork.
    // SAFETY: setsid has no memory effects.
    unsafe { libc::setsid() };

    if let Err(err) = caps::drop_bounding(plan.caps, plan.last_cap) {
        fail(Stage::Bounding, err);
    }
    if let Err(err) = sys::prctl(libc::PR_SET_KEEPCAPS, 1) {
        fail(Stage::Caps, err);
    }
    if let Err(err) = sys::set_ids(e.uid, e.gid, e.groups.as_deref()) {
        fail(Stage::Ids, err);
    }
    if let Err(err) = caps::apply(plan.caps) {
        fail(Stage::Caps, err);
    }
    if let Err(err) = sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1) {
        fail(Stage::NoNewPrivs, err);
    }
    if let Err(err) = cgroup::apply_rlimits(rlimits) {
        fail(Stage::Rlimits, err);
    }
    if let Err(err) = sys::chdir(&e.cwd) {
        fail(Stage::Chdir, err);
    }
    if let Err(err) = sys::close_range(3, true) {
        fail(Stage::CloseFds, err);
    }
    // Last: from here on every syscall, exec included, goes through the filter.
    if let Some(filter) = &plan.seccomp {
        if let Err(err) = filter.load() {
            fail(Stage::Seccomp, err);
        }
    }
    let mut denied = None;
    for (i, path) in e.candidates.iter().enumerate() {
        match sys::execve(path, &e.argv_ptrs, &e.env_ptrs) {
            libc::ENOENT | libc::ENOTDIR => {}
            // Keep looking, as execvp does, but remember why this one did not run.
            libc::EACCES => denied = Some((i, libc::EACCES)),
            err => fail(Stage::Exec(i), err),
        }
    }
    match denied {
        Some((i, err)) => fail(Stage::Exec(i), err),
        None => fail(
            Stage::Exec(e.candidates.len().saturating_sub(1)),
            libc::ENOENT,
        ),
    }
}
