//! Fixtures shared by the confinement tests: the probe binary, the nsrun binary, the rootfs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

#[allow(unused_imports)] // not every test crate that includes this module asks
pub use crate::support::in_ci;

/// The static probe: `NSRUN_TEST_PROBE`, else built now by scripts/build-probe.sh into a
/// per-user temporary directory (so an unprivileged test user can build it too).
pub fn probe() -> PathBuf {
    if let Some(p) = std::env::var_os("NSRUN_TEST_PROBE") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "NSRUN_TEST_PROBE={} does not exist",
            p.display()
        );
        return p;
    }
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let out = std::env::temp_dir()
        .join(format!("nsrun-probe-{uid}"))
        .join("probe");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-probe.sh");
    let st = Command::new(script)
        .arg(&out)
        .status()
        .expect("running scripts/build-probe.sh");
    assert!(
        st.success(),
        "scripts/build-probe.sh failed (needs gcc and a static libc)"
    );
    out
}

/// The nsrun binary under test.
pub fn nsrun_bin() -> PathBuf {
    std::env::var_os("NSRUN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_nsrun")))
}

/// The busybox rootfs (`NSRUN_TEST_ROOTFS`, built by scripts/mkrootfs-busybox.sh), or `None`
/// after printing "skipped" (outside CI) — in CI a missing rootfs fails the test.
pub fn rootfs() -> Option<PathBuf> {
    match std::env::var_os("NSRUN_TEST_ROOTFS").map(PathBuf::from) {
        Some(p) if p.join("bin/busybox").is_file() => Some(p),
        other => {
            let why = format!("NSRUN_TEST_ROOTFS not set or not a busybox rootfs ({other:?})");
            assert!(!in_ci(), "{why}");
            crate::support::skipped(&why);
            None
        }
    }
}

/// The probe's `NAME ERRNO` lines as a map.
pub fn table(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Asserts that `probe syscalls` saw what the default profile promises: its 30 probes all
/// refused with EPERM, but for the harmless ones, mkdir reaching the kernel (EFAULT on a bad
/// pointer) and clone3 answered ENOSYS so that libcs fall back to clone.
#[track_caller]
pub fn assert_default_profile(out: &str) {
    let t = table(out);
    assert_eq!(t.len(), 30, "{out}");
    for (name, errno) in &t {
        let want = match name.as_str() {
            "getpid" | "socket_inet" => "0",
            "mkdir" => "EFAULT",
            "clone3" => "ENOSYS",
            _ => "EPERM",
        };
        assert_eq!(errno, want, "{name}:\n{out}");
    }
}

/// Parent side of a forked test child that writes to the pipe `fds`: closes the write end, reads
/// everything the child wrote, then reaps it. Returns the output and the raw wait status.
pub fn collect_child(fds: [i32; 2], pid: libc::pid_t) -> (Vec<u8>, i32) {
    // SAFETY: closing our copy of the write end, so that EOF comes when the child is done.
    unsafe { libc::close(fds[1]) };
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: reading into a live buffer of the given length.
        let n = unsafe { libc::read(fds[0], buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    let mut status = 0;
    // SAFETY: closing our read end and reaping our own child.
    unsafe {
        libc::close(fds[0]);
        libc::waitpid(pid, &mut status, 0);
    }
    (out, status)
}
