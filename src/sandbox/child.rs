//! Child side: everything the sandbox does between clone and the tool's exec, in order, in one
//! function ([`main`]). It runs in the new namespaces and never allocates (see [`super::sys`]).
//! Every failure is reported to the parent as a [`Report::Failed`] naming its [`Stage`], then
//! the process exits.
//!
//! Three processes take part: the cloned child, which becomes pid 1 of the new pid namespace
//! ([`init::become_pid1`] forks the tool and then supervises it, never returning there), and
//! the tool's process, which continues in [`main`] after that call and ends in execve.

use std::os::fd::RawFd;

use super::caps;
use super::cgroup::{self, Rlimit};
use super::init;
use super::plan::Plan;
use super::report::{Report, Stage};
use super::sys;
use super::trace;

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

/// Where failures (and trace marks) go, and the exit status that goes with a failure: 125 before
/// pid 1 forks the tool (nsrun's own failure), 127 in the tool's process (pid 1 relays it).
struct Reporter {
    fd: RawFd,
    /// Where trace marks go; `None` when start-up tracing is off.
    marks: Option<RawFd>,
    exit_code: i32,
    /// The trace's origin on the monotonic clock.
    origin_ns: u64,
}

impl Reporter {
    /// `result`'s value, or a report of `stage` and exit. With tracing on, marks `stage` done.
    fn check<T>(&self, stage: Stage, result: Result<T, i32>) -> T {
        match result {
            Ok(v) => {
                self.mark(stage);
                v
            }
            Err(errno) => self.fail(stage, errno),
        }
    }

    fn fail(&self, stage: Stage, errno: i32) -> ! {
        Report::Failed { stage, errno }.send(self.fd);
        sys::exit(self.exit_code)
    }

    fn mark(&self, stage: Stage) {
        if let Some(fd) = self.marks {
            let micros = (trace::now_ns().saturating_sub(self.origin_ns) / 1000) as i32;
            Report::Mark { stage, micros }.send(fd);
        }
    }
}

/// Entry point of the cloned child: the whole setup order of a sandbox. Never returns.
///
/// The filesystem is the step table [`super::mounts::plan()`] built in the parent (base tmpfs
/// and first pivot, read-only root, /proc, /dev, /sys, /tmp, /run, the caller's tmpfs, generated
/// /etc files, volumes, masks, final pivot); its order and the reasons for it are documented at
/// the top of `mounts/plan.rs`. The parent's half of the handshake is in
/// [`super::spawn::run_observed`].
pub fn main(plan: &Plan, fds: &ChildFds, rlimits: &[Rlimit]) -> ! {
    let mut to = Reporter {
        fd: fds.report_w,
        marks: plan.trace_origin_ns.map(|_| fds.report_w),
        exit_code: 125,
        origin_ns: plan.trace_origin_ns.unwrap_or(0),
    };
    // If the parent dies from here on, so do we (and with pid 1, the whole namespace).
    let _ = sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
    sys::close(fds.sync_w);
    sys::close(fds.report_r);

    // 1. The parent writes our id maps (we are nobody until then).
    to.check(Stage::WaitMaps, wait_for_parent(fds.sync_r));
    // 2. Host paths the mounts come from, opened while we still hold the caller's host ids.
    for (i, source) in plan.sources.iter().enumerate() {
        to.check(Stage::Source(i), source.reopen());
    }
    // 3. As root we were host uid 0, which is not mapped here: become a mapped id first.
    let (uid, gid) = plan.setup_ids;
    let no_groups: &[libc::gid_t] = &[];
    let groups = plan.idmap.setgroups.then_some(no_groups);
    to.check(Stage::SetupIds, sys::set_ids(uid, gid, groups));
    // The kernel clears the parent-death signal on every credential change.
    to.check(Stage::ParentDeath, rearm_parent_death(fds.sync_r));
    // 4. Low ports for a nested tool (see `unprivileged_ports`), while the host's /proc is ours.
    if plan.nest.is_some() && plan.loopback_up {
        to.check(Stage::UnprivilegedPorts, unprivileged_ports());
    }
    // 5. The filesystem: the mount step table, ending in the final pivot_root.
    for (i, step) in plan.steps.iter().enumerate() {
        to.check(Stage::Step(i), step.execute(&plan.mount_fds));
    }
    // 6. The parent attached us to our cgroup meanwhile; make it the root of our view.
    // Everything forked from here on starts inside it.
    to.check(Stage::WaitCgroup, wait_for_parent(fds.sync_r));
    sys::close(fds.sync_r);
    to.check(Stage::UnshareCgroup, sys::unshare(libc::CLONE_NEWCGROUP));
    to.check(Stage::Hostname, sys::sethostname(&plan.hostname));
    if plan.loopback_up {
        to.check(Stage::Loopback, sys::loopback_up());
    }
    if let Some((rows, cols)) = plan.tty {
        // `-t`: a terminal from the run's own devpts becomes the tool's stdio.
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let owner = (plan.exec.uid, plan.exec.gid);
        to.check(Stage::Tty, super::tty::child_open(fds.tty, &size, owner));
    } else {
        for (target, &fd) in fds.stdio.iter().enumerate() {
            to.check(Stage::Stdio, sys::dup2(fd, target as RawFd));
        }
    }

    // 7. Become pid 1: non-dumpable, the caller's memory cleared, every inherited fd closed,
    // the tool forked. pid 1 stays in there supervising; the tool's process comes back.
    let tool = init::become_pid1(plan, fds.report_w);
    to = Reporter {
        fd: tool.err_w,
        marks: tool.marks,
        exit_code: 127,
        ..to
    };
    to.mark(Stage::Fork);

    // 8. The tool's process. A tool with CAP_SYS_ADMIN first moves into namespaces of its own,
    // where the mounts above are locked (see `plan::Nest`).
    if let Some((ready_w, go_r)) = tool.nest {
        to.check(Stage::NestUnshare, nest(ready_w, go_r));
    }
    sys::sigmask(libc::SIG_SETMASK, &sys::sigset(&[]));
    sys::reset_signal_dispositions();
    // A session of its own, as a container's main process has; it cannot fail in a fresh fork.
    // SAFETY: setsid has no memory effects.
    unsafe { libc::setsid() };
    if plan.tty.is_some() {
        to.check(Stage::Tty, super::tty::child_take_control());
    }
    let e = &plan.exec;
    to.check(
        Stage::Bounding,
        caps::drop_bounding(plan.caps, plan.last_cap),
    );
    to.check(Stage::Caps, sys::prctl(libc::PR_SET_KEEPCAPS, 1));
    to.check(
        Stage::ToolIds,
        sys::set_ids(e.uid, e.gid, e.groups.as_deref()),
    );
    to.check(Stage::Caps, caps::apply(plan.caps));
    to.check(Stage::NoNewPrivs, sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1));
    to.check(Stage::Rlimits, cgroup::apply_rlimits(rlimits));
    to.check(Stage::Chdir, sys::chdir(&e.cwd));
    // Close-on-exec: the trace's descriptor is still written to below, until the exec.
    to.check(Stage::CloseFds, sys::close_range(3, true));
    // 9. Last: from here on every syscall, exec included, goes through the filter.
    if let Some(filter) = &plan.seccomp {
        to.check(Stage::Seccomp, filter.load());
    }
    let (stage, errno) = exec(plan, &to);
    to.fail(stage, errno)
}

/// Blocks until the parent releases us with one byte. EOF means it died before the
/// parent-death signal was armed, or gave up on us: leave quietly.
fn wait_for_parent(sync_r: RawFd) -> Result<(), i32> {
    let mut byte = [0u8; 1];
    if sys::read_full(sync_r, &mut byte) != Ok(1) {
        sys::exit(125);
    }
    Ok(())
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

/// The nested tool has no capability over the run's network namespace, which belongs to the
/// outer user namespace, so CAP_NET_BIND_SERVICE would mean nothing to it: let every uid bind
/// low ports there, as Docker does for every container. Written through the host's /proc (net
/// sysctls follow the writer's network namespace), because the container's /proc/sys is
/// read-only once mounted.
fn unprivileged_ports() -> Result<(), i32> {
    sys::write_file(c"/proc/sys/net/ipv4/ip_unprivileged_port_start", b"0")
}

/// The tool's side of the nested-namespace handshake: unshare, tell pid 1 (`ready_w`), wait
/// for it to write our maps (`go_r`).
fn nest(ready_w: RawFd, go_r: RawFd) -> Result<(), i32> {
    // The mounts are copied into the new mount namespace locked (see `plan::Nest`). Done before
    // anything else so that the rest happens with the nested namespace's fresh, full capability
    // set, which the steps after it narrow as for any other run. pid 1's non-dumpable flag,
    // inherited by the fork, makes our /proc/<pid> files belong to host root, whom pid 1 cannot
    // write for: it could not map us. Nothing else runs in the sandbox yet that could use the
    // window, and exec resets the flag anyway.
    sys::prctl(libc::PR_SET_DUMPABLE, 1)?;
    sys::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS)?;
    let mut byte = [0u8; 1];
    if sys::write_all(ready_w, &[1]).is_err() || sys::read_full(go_r, &mut byte) != Ok(1) {
        // pid 1 could not map us; it reports why.
        sys::exit(127);
    }
    sys::close(ready_w);
    sys::close(go_r);
    Ok(())
}

/// Tries each candidate path as execvp does; returns only on failure, with the stage to blame.
fn exec(plan: &Plan, to: &Reporter) -> (Stage, i32) {
    let e = &plan.exec;
    let mut denied = None;
    for (i, path) in e.candidates.iter().enumerate() {
        to.mark(Stage::Exec(i));
        match sys::execve(path, &e.argv_ptrs, &e.env_ptrs) {
            libc::ENOENT | libc::ENOTDIR => {}
            // Keep looking, as execvp does, but remember why this one did not run.
            libc::EACCES => denied = Some((i, libc::EACCES)),
            err => return (Stage::Exec(i), err),
        }
    }
    match denied {
        Some((i, err)) => (Stage::Exec(i), err),
        None => (
            Stage::Exec(e.candidates.len().saturating_sub(1)),
            libc::ENOENT,
        ),
    }
}
