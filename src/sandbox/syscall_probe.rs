//! Which of the system calls nsrun needs does the seccomp filter this process runs under let
//! through? Tested, not guessed: each call is made for real, with arguments the kernel rejects
//! (EINVAL or EFAULT) *before* any permission check or side effect. A filter decides on the
//! syscall number and arguments before the kernel sees them, so getting the kernel's EINVAL or
//! EFAULT back means the filter let the call through; anything else (Docker's profile answers
//! EPERM, or ENOSYS for `clone3`) means the filter refused it.
//!
//! `pivot_root` and `sethostname` check the caller's capability before their arguments, so they
//! are tested in a child that owns a fresh user, mount and UTS namespace (where it holds every
//! capability): see [`probe_all`].

use std::os::fd::{AsRawFd, OwnedFd};

use serde::Serialize;

/// The calls nsrun makes that a container runtime's default profile may refuse, in the order
/// a run makes them, with why.
pub const NEEDED: &[(&str, &str)] = &[
    (
        "clone",
        "clone with CLONE_NEW* flags creates the sandbox's namespaces",
    ),
    (
        "unshare",
        "unshare(CLONE_NEWCGROUP) gives the run its own cgroup namespace",
    ),
    (
        "mount",
        "mounts the read-only root, /proc, /dev, tmpfs and binds",
    ),
    ("umount2", "detaches the host's root after pivot_root"),
    ("pivot_root", "switches to the container's root"),
    (
        "mount_setattr",
        "makes read-only binds and /proc/sys read-only recursively",
    ),
    ("sethostname", "sets the run's own hostname"),
];

/// The namespace flags nsrun clones with: a filter that checks `clone`'s flags (Docker's does)
/// must see the same ones.
const NS_FLAGS: libc::c_int = libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS;

/// What the test of one call found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "errno", rename_all = "lowercase")]
pub enum Verdict {
    /// The call reached the kernel.
    Allowed,
    /// Something refused the call before the kernel looked at its arguments (the errno it gave).
    Refused(i32),
    /// Could not be tested here (no namespace could be made to test it in).
    Untested,
}

impl Verdict {
    /// What the kernel's own early rejection looks like; anything else came from a filter.
    fn of(ret: Result<(), i32>) -> Verdict {
        match ret {
            Ok(()) | Err(libc::EINVAL) | Err(libc::EFAULT) => Verdict::Allowed,
            Err(e) => Verdict::Refused(e),
        }
    }
}

fn ret(r: libc::c_long) -> Result<(), i32> {
    if r < 0 {
        Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO))
    } else {
        Ok(())
    }
}

/// clone(NS_FLAGS | CLONE_FS): the kernel refuses CLONE_NEWUSER and CLONE_NEWNS with CLONE_FS
/// (EINVAL) first thing in copy_process, before creating anything.
fn try_clone() -> Result<(), i32> {
    let flags = (NS_FLAGS | libc::CLONE_FS | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: these flags are always rejected with EINVAL before a process is created; should a
    // kernel ever accept them, the child exits at once (see below) and the parent reaps it.
    let r = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match r {
        0 => {
            // SAFETY: we are a fork-like child; _exit is async-signal-safe.
            unsafe { libc::_exit(0) }
        }
        pid if pid > 0 => {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
            Ok(())
        }
        r => ret(r),
    }
}

/// unshare(CLONE_NEWCGROUP | CLONE_PARENT): CLONE_PARENT is not a valid unshare flag (EINVAL).
fn try_unshare() -> Result<(), i32> {
    // SAFETY: invalid flags: the kernel returns EINVAL and changes nothing.
    ret(unsafe { libc::unshare(libc::CLONE_NEWCGROUP | libc::CLONE_PARENT) } as libc::c_long)
}

/// mount with a NULL target: EFAULT when the kernel copies the path.
fn try_mount() -> Result<(), i32> {
    // SAFETY: NULL pointers are valid arguments here; the kernel answers EFAULT.
    ret(unsafe {
        libc::syscall(
            libc::SYS_mount,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_char>(),
            0 as libc::c_ulong,
            std::ptr::null::<libc::c_void>(),
        )
    })
}

/// umount2 with an unknown flag: EINVAL before the path is looked at.
fn try_umount2() -> Result<(), i32> {
    // SAFETY: an invalid flag: the kernel returns EINVAL and changes nothing.
    ret(unsafe {
        libc::syscall(
            libc::SYS_umount2,
            std::ptr::null::<libc::c_char>(),
            0x8000_0000u32 as libc::c_int,
        )
    })
}

/// mount_setattr with a zero-sized attribute: EINVAL before anything is looked up.
fn try_mount_setattr() -> Result<(), i32> {
    // SAFETY: size 0 is rejected with EINVAL; the NULL pointers are never read.
    ret(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1 as libc::c_int,
            std::ptr::null::<libc::c_char>(),
            0 as libc::c_uint,
            std::ptr::null::<libc::c_void>(),
            0usize,
        )
    })
}

/// pivot_root with NULL paths: EFAULT, once the capability check passed.
fn try_pivot_root() -> Result<(), i32> {
    // SAFETY: NULL paths: the kernel answers EFAULT and changes nothing.
    ret(unsafe {
        libc::syscall(
            libc::SYS_pivot_root,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_char>(),
        )
    })
}

/// sethostname with a negative length: EINVAL, once the capability check passed.
fn try_sethostname() -> Result<(), i32> {
    // SAFETY: the length is rejected before the NULL name would be read.
    ret(unsafe {
        libc::syscall(
            libc::SYS_sethostname,
            std::ptr::null::<libc::c_char>(),
            -1 as libc::c_int,
        )
    })
}

/// The calls that can be tested in this process, without side effects: every entry of
/// [`NEEDED`] but `pivot_root` and `sethostname`.
pub fn probe_stateless() -> Vec<(&'static str, Verdict)> {
    vec![
        ("clone", Verdict::of(try_clone())),
        ("unshare", Verdict::of(try_unshare())),
        ("mount", Verdict::of(try_mount())),
        ("umount2", Verdict::of(try_umount2())),
        ("mount_setattr", Verdict::of(try_mount_setattr())),
    ]
}

/// Every call of [`NEEDED`]. `pivot_root` and `sethostname` are tested in a short-lived child in
/// new user, mount and UTS namespaces (made with clone, or fork + unshare if only that is
/// allowed); they are [`Verdict::Untested`] when neither can make them.
///
/// Forks: call it from a single-threaded process (the CLI) only.
pub fn probe_all() -> Vec<(&'static str, Verdict)> {
    let mut out = probe_stateless();
    let (a, b) = match probe_in_namespace() {
        Some((a, b)) => (Verdict::of(a), Verdict::of(b)),
        None => (Verdict::Untested, Verdict::Untested),
    };
    out.insert(4, ("pivot_root", a));
    out.push(("sethostname", b));
    out
}

fn probe_in_namespace() -> Option<(Result<(), i32>, Result<(), i32>)> {
    let (r, w) = nix::unistd::pipe().ok()?;
    let flags = libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWUTS;
    let child = |w: &OwnedFd| -> ! {
        let enc = |r: Result<(), i32>| r.err().unwrap_or(0);
        let res = [enc(try_pivot_root()), enc(try_sethostname())];
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(&res[0].to_ne_bytes());
        buf[4..].copy_from_slice(&res[1].to_ne_bytes());
        // SAFETY: a write of a stack buffer, then _exit, both async-signal-safe.
        unsafe {
            libc::write(w.as_raw_fd(), buf.as_ptr().cast(), buf.len());
            libc::_exit(0)
        }
    };
    // First choice: clone straight into the namespaces.
    // SAFETY: a fork-like clone (no CLONE_VM); the child only makes raw syscalls and _exits.
    let mut pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid == 0 {
        child(&w);
    }
    if pid < 0 {
        // SAFETY: fork in a single-threaded caller (documented); the child only makes raw
        // syscalls and _exits.
        pid = unsafe { libc::fork() } as libc::c_long;
        if pid == 0 {
            // SAFETY: unshare takes flags only.
            if unsafe { libc::unshare(flags) } < 0 {
                // SAFETY: _exit is async-signal-safe.
                unsafe { libc::_exit(1) }
            }
            child(&w);
        }
    }
    drop(w);
    if pid < 0 {
        return None;
    }
    let mut buf = [0u8; 8];
    let got = std::io::Read::read_exact(&mut std::fs::File::from(r), &mut buf).is_ok();
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
    if !got {
        return None;
    }
    let dec = |b: &[u8]| match i32::from_ne_bytes(b.try_into().unwrap_or([0; 4])) {
        0 => Ok(()),
        e => Err(e),
    };
    Some((dec(&buf[..4]), dec(&buf[4..])))
}

/// The names of the calls among `verdicts` that something refused.
pub fn refused(verdicts: &[(&'static str, Verdict)]) -> Vec<&'static str> {
    verdicts
        .iter()
        .filter(|(_, v)| matches!(v, Verdict::Refused(_)))
        .map(|(n, _)| *n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_rejections_mean_the_filter_let_the_call_through() {
        assert_eq!(Verdict::of(Err(libc::EINVAL)), Verdict::Allowed);
        assert_eq!(Verdict::of(Err(libc::EFAULT)), Verdict::Allowed);
        assert_eq!(Verdict::of(Err(libc::EPERM)), Verdict::Refused(libc::EPERM));
        assert_eq!(
            Verdict::of(Err(libc::ENOSYS)),
            Verdict::Refused(libc::ENOSYS)
        );
    }

    #[test]
    fn stateless_probes_change_nothing_and_pass_unfiltered() {
        // The unit tests run without a seccomp filter of their own (cargo test on a host or in
        // CI), unless the whole test run is confined: then the refusals must match the status.
        let filtered = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .any(|l| l.starts_with("Seccomp:") && l.trim_end().ends_with('2'));
        let v = probe_stateless();
        assert_eq!(v.len(), 5);
        if !filtered {
            assert!(refused(&v).is_empty(), "{v:?}");
        }
        assert_eq!(
            refused(&[("x", Verdict::Refused(1)), ("y", Verdict::Allowed)]),
            ["x"]
        );
    }
}
