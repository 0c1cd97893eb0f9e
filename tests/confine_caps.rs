//! Capability sets applied for real in a forked child inside a fresh user namespace (so the same
//! test runs as root and as an unprivileged user), read back from /proc/self/status.
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

mod support;

#[path = "confine_common/mod.rs"]
mod confine_common;

use nsrun::sandbox::caps::{self, cap_from_name, CapSet};

/// Forks; the child enters a new user namespace (full capabilities there), runs `drop_bounding`
/// (walking up to `last_cap`) and `apply` with `set`, then sends /proc/self/status back. Only raw
/// syscalls in the child.
fn status_after_bounded(set: CapSet, last_cap: u32) -> Result<String, String> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid array of two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the child below makes raw syscalls and calls _exit only.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: async-signal-safe calls on stack buffers only.
        unsafe {
            libc::close(fds[0]);
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                libc::_exit(10);
            }
            if caps::drop_bounding(set, last_cap).is_err() {
                libc::_exit(11);
            }
            if caps::apply(set).is_err() {
                libc::_exit(12);
            }
            let fd = libc::open(c"/proc/self/status".as_ptr(), libc::O_RDONLY);
            if fd < 0 {
                libc::_exit(13);
            }
            let mut buf = [0u8; 4096];
            loop {
                let n = libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len());
                if n <= 0 {
                    break;
                }
                libc::write(fds[1], buf.as_ptr() as *const libc::c_void, n as usize);
            }
            libc::_exit(0);
        }
    }
    let (out, status) = confine_common::collect_child(fds, pid);
    match libc::WEXITSTATUS(status) {
        0 => Ok(String::from_utf8(out).unwrap()),
        10 => Err("unshare(CLONE_NEWUSER) refused".into()),
        n => Err(format!("child failed at step {n}")),
    }
}

fn field(status: &str, name: &str) -> u64 {
    let line = status
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name}"));
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

fn last_cap_mask() -> u64 {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    if last >= 63 {
        u64::MAX
    } else {
        (1u64 << (last + 1)) - 1
    }
}

/// The child's /proc/self/status, or `None` (skipped outside CI) without user namespaces.
fn status_or_skip(set: CapSet, last_cap: u32) -> Option<String> {
    match status_after_bounded(set, last_cap) {
        Ok(s) => Some(s),
        Err(e) if e.contains("unshare") && !crate::support::in_ci() => {
            crate::support::skipped(&format!("{e} (unprivileged user namespaces disabled?)"));
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn check(set: CapSet) {
    let Some(status) = status_or_skip(set, caps::last_cap()) else {
        return;
    };
    let want = set.0 & last_cap_mask();
    assert_eq!(field(&status, "CapEff:"), want, "effective");
    assert_eq!(field(&status, "CapPrm:"), want, "permitted");
    // Never inheritable: file capabilities must not hand the set to a non-root tool.
    assert_eq!(field(&status, "CapInh:"), 0, "inheritable");
    assert_eq!(field(&status, "CapBnd:"), want, "bounding");
    assert_eq!(field(&status, "CapAmb:"), 0, "ambient");
}

#[test]
fn default_set_is_what_remains() {
    check(CapSet::default_set());
}

#[test]
fn empty_set_drops_everything() {
    check(CapSet(0));
}

#[test]
fn added_capabilities_are_kept() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let set = CapSet::resolve(&s(&["NET_RAW", "SYS_ADMIN"]), &s(&["CHOWN"])).unwrap();
    assert!(set.contains(cap_from_name("NET_RAW").unwrap()));
    check(set);
}

#[test]
fn all_capabilities_survive_when_asked() {
    check(CapSet::ALL);
}

#[test]
fn last_cap_is_the_kernels() {
    let want = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .unwrap()
        .trim()
        .parse::<u32>()
        .unwrap();
    assert_eq!(caps::last_cap(), want);
    assert_eq!(caps::last_cap(), want, "cached value, same answer");
}

#[test]
fn bounding_walk_stops_at_last_cap() {
    // Told the kernel's last capability is 20, the walk drops 0..=20 only: the capabilities above
    // stay in the bounding set, which shows no prctl is spent past the given bound.
    let Some(status) = status_or_skip(CapSet(0), 20) else {
        return;
    };
    let above_20 = last_cap_mask() & !((1u64 << 21) - 1);
    assert_eq!(field(&status, "CapBnd:"), above_20, "bounding");
}

#[test]
fn guessed_last_cap_past_the_kernels_still_drops_everything() {
    // last_cap()'s fallback when /proc/sys/kernel/cap_last_cap is unreadable: 63. The kernel's
    // EINVAL past its own last capability ends the walk without an error.
    let Some(status) = status_or_skip(CapSet::default_set(), 63) else {
        return;
    };
    assert_eq!(
        field(&status, "CapBnd:"),
        CapSet::default_set().0 & last_cap_mask()
    );
}
