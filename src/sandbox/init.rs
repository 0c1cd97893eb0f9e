//! pid 1 of the container. It forks the tool, forwards the signals a container's main process
//! expects, reaps every zombie, and leaves when the tool does, which makes the kernel kill
//! whatever else is left in the pid namespace. The tool's own setup, after the fork, is the end
//! of [`super::child::main`].

use std::os::fd::RawFd;

use super::plan::Plan;
use super::report::{Report, Stage, REPORT_SIZE};
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

/// The tool's process's ends of its pipes to pid 1, as [`become_pid1`] returns them in the tool.
pub struct ToolEnds {
    /// Where the tool reports a failure before exec (EOF at exec means it ran).
    pub err_w: RawFd,
    /// The nested-namespace handshake (ready, go), when the plan has one.
    pub nest: Option<(RawFd, RawFd)>,
    /// The report pipe, kept for trace marks when start-up tracing is on.
    pub marks: Option<RawFd>,
}

/// Turns the calling child into pid 1 and forks the tool. Returns only in the tool's process;
/// pid 1 supervises the tool and exits when it ends. The parent blocked `FORWARDED` and SIGCHLD
/// before clone, so they queue up for `sigwaitinfo` here instead of acting on us.
pub fn become_pid1(plan: &Plan, report_w: RawFd) -> ToolEnds {
    // Non-dumpable: the tool must not be able to open /proc/1/{exe,mem,fd} (CVE-2019-5736 class),
    // even as the same uid.
    let _ = sys::prctl(libc::PR_SET_DUMPABLE, 0);
    // We are a fork of the caller that never execs: its command line (registry credentials,
    // host paths) and environment would stay readable in /proc/1/cmdline, which needs no
    // ptrace access. Overwrite them.
    sys::clear_caller_memory(&plan.caller_memory, b"nsrun-init");
    // Keep only stdio and the report pipe: nothing of the caller's leaks into the container.
    if report_w != REPORT_FD {
        if let Err(errno) = sys::dup2(report_w, REPORT_FD) {
            Report::Failed {
                stage: Stage::CloseFds,
                errno,
            }
            .send(report_w);
            sys::exit(125)
        }
    }
    let report = REPORT_FD;
    // From here on failures go to REPORT_FD: `report_w` itself is closed next.
    let fail = |stage, errno| -> ! {
        Report::Failed { stage, errno }.send(report);
        sys::exit(125)
    };
    if let Err(e) = sys::close_range(REPORT_FD as u32 + 1, false) {
        fail(Stage::CloseFds, e);
    }

    let (err_r, err_w) = match sys::pipe() {
        Ok(p) => p,
        Err(e) => fail(Stage::Fork, e),
    };
    // With a nested user namespace, the tool unshares it and waits on `go` while we write its
    // maps (a process cannot map ids of a namespace it is already inside; its parent namespace
    // can).
    let nest_pipes = match &plan.nest {
        None => None,
        Some(_) => match (sys::pipe(), sys::pipe()) {
            (Ok(ready), Ok(go)) => Some((ready, go)),
            (Err(e), _) | (_, Err(e)) => fail(Stage::Fork, e),
        },
    };
    let tool = match sys::fork() {
        Ok(0) => {
            sys::close(err_r);
            let marks = plan.trace_origin_ns.map(|_| report);
            if marks.is_none() {
                sys::close(report);
            }
            let nest = nest_pipes.map(|((ready_r, ready_w), (go_r, go_w))| {
                sys::close(ready_r);
                sys::close(go_w);
                (ready_w, go_r)
            });
            return ToolEnds { err_w, nest, marks };
        }
        Ok(pid) => pid,
        Err(e) => fail(Stage::Fork, e),
    };
    sys::close(err_w);
    if let (Some(nest), Some(((ready_r, ready_w), (go_r, go_w)))) = (&plan.nest, nest_pipes) {
        sys::close(ready_w);
        sys::close(go_r);
        let mut byte = [0u8; 1];
        // EOF: the tool failed to unshare and says why on `err_r`, read below.
        if sys::read_full(ready_r, &mut byte) == Ok(1) {
            let mut path = [0u8; 64];
            let written = sys::write_file(
                sys::proc_pid_path(&mut path, tool, b"gid_map"),
                &nest.gid_map,
            )
            .and_then(|()| {
                sys::write_file(
                    sys::proc_pid_path(&mut path, tool, b"uid_map"),
                    &nest.uid_map,
                )
            });
            if let Err(e) = written {
                let _ = sys::kill(tool, libc::SIGKILL);
                let _ = sys::waitpid(tool, 0);
                fail(Stage::NestMaps, e);
            }
            let _ = sys::write_all(go_w, &[1]);
        }
        sys::close(ready_r);
        sys::close(go_w);
    }

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
            // A stop request (the timeout's, or a SIGTERM to nsrun) is the tool's stop signal.
            let sig = if sig == libc::SIGTERM {
                plan.stop_signal
            } else {
                sig
            };
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
