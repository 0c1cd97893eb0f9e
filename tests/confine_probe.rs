//! The probe binary run under nsrun's confinement chain alone, in the order the core applies it
//! (bounding set, capabilities, no_new_privs, rlimits, seccomp, execve), inside a fresh user
//! namespace so the test is the same as root and unprivileged. The full sandbox (namespaces,
//! read-only root, masks) is covered by confine_escape.rs through `nsrun run`.
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

mod support;

#[path = "confine_common/mod.rs"]
mod confine_common;
use confine_common as common;
use confine_common::{assert_default_profile, table};

use std::ffi::CString;

use nsrun::sandbox::caps::{self, CapSet};
use nsrun::sandbox::cgroup::{apply_rlimits, Rlimit};
use nsrun::sandbox::seccomp::{compile, Filter, SeccompSource};

/// Forks; the child confines itself and execs `probe args…`; returns (stdout, exit status).
fn run_confined(
    caps_set: CapSet,
    filter: Option<&Filter>,
    rlimits: &[Rlimit],
    args: &[&str],
) -> (String, i32) {
    let probe = common::probe();
    let path = CString::new(probe.as_os_str().as_encoded_bytes()).unwrap();
    let cargs: Vec<CString> = std::iter::once("probe")
        .chain(args.iter().copied())
        .map(|a| CString::new(a).unwrap())
        .collect();
    let mut argv: Vec<*const libc::c_char> = cargs.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // Read before fork: the child must not allocate.
    let last_cap = caps::last_cap();
    // Root first becomes an ordinary uid, so that (as in a rootful nsrun run, which maps the
    // container to an unprivileged host range) RLIMIT_NPROC and capability rules apply to it.
    // SAFETY: getuid/getgid have no preconditions.
    let (mut uid, mut gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let drop_root = uid == 0;
    if drop_root {
        (uid, gid) = (60000, 60000);
    }
    let uid_map = CString::new(format!("0 {uid} 1")).unwrap();
    let gid_map = CString::new(format!("0 {gid} 1")).unwrap();
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid array of two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the child makes raw syscalls and calls _exit/execve only; all data is prebuilt.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: as above.
        unsafe {
            libc::dup2(fds[1], 1);
            if drop_root
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(gid, gid, gid) != 0
                    || libc::setresuid(uid, uid, uid) != 0)
            {
                libc::_exit(119);
            }
            // A uid change made us non-dumpable, which makes /proc/self/*_map root's.
            if drop_root && libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) != 0 {
                libc::_exit(119);
            }
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                libc::_exit(120);
            }
            // Map ourselves to root in the namespace, as the core does.
            for (file, text) in [
                (c"/proc/self/setgroups", c"deny".as_ptr()),
                (c"/proc/self/gid_map", gid_map.as_ptr()),
                (c"/proc/self/uid_map", uid_map.as_ptr()),
            ] {
                let fd = libc::open(file.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, text as *const libc::c_void, libc::strlen(text)) < 0 {
                    libc::_exit(118);
                }
                libc::close(fd);
            }
            if caps::drop_bounding(caps_set, last_cap).is_err() {
                libc::_exit(121);
            }
            if caps::apply(caps_set).is_err() {
                libc::_exit(122);
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                libc::_exit(123);
            }
            if apply_rlimits(rlimits).is_err() {
                libc::_exit(124);
            }
            if let Some(f) = filter {
                if f.load().is_err() {
                    libc::_exit(125);
                }
            }
            libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(126);
        }
    }
    let (out, status) = confine_common::collect_child(fds, pid);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    assert!(
        !(118..=126).contains(&code),
        "confinement step failed in the child: exit {code}"
    );
    (String::from_utf8(out).unwrap(), code)
}

#[test]
fn probe_syscalls_under_default_confinement() {
    let caps_set = CapSet::default_set();
    let f = compile(&SeccompSource::Default, caps_set, None)
        .unwrap()
        .unwrap();
    let (out, code) = run_confined(caps_set, Some(&f), &[], &["syscalls"]);
    assert_eq!(code, 0, "{out}");
    assert_default_profile(&out);
}

#[test]
fn probe_ids_shows_the_capability_sets() {
    let caps_set = CapSet::default_set();
    let f = compile(&SeccompSource::Default, caps_set, None)
        .unwrap()
        .unwrap();
    let (out, code) = run_confined(caps_set, Some(&f), &[], &["ids"]);
    assert_eq!(code, 0, "{out}");
    let want = format!(
        "eff {:016x} prm {:016x} bnd {:016x}",
        caps_set.0, caps_set.0, caps_set.0
    );
    assert!(out.contains(&want), "{out}\nwanted {want}");
    assert!(out.contains("nnp 1"), "{out}");
}

#[test]
fn unconfined_probe_reaches_the_kernel() {
    // Control: with every capability and no filter, the same probes get the kernel's own answers.
    let (out, _) = run_confined(CapSet::ALL, None, &[], &["syscalls"]);
    let t = table(&out);
    assert_eq!(t["unshare"], "EINVAL", "{out}");
    assert_eq!(t["clone3"], "EINVAL", "{out}");
    assert_eq!(t["setns"], "EBADF", "{out}");
}

#[test]
fn rlimit_nproc_stops_a_fork_bomb() {
    // RLIMIT_NPROC counts the uid's tasks in the new user namespace (Linux 5.14+): the probe and
    // 7 children make 8.
    let rl = [Rlimit {
        resource: libc::RLIMIT_NPROC,
        limit: 8,
    }];
    let (out, code) = run_confined(CapSet::default_set(), None, &rl, &["forkbomb", "1000"]);
    assert_eq!(code, 0, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("forked "))
        .unwrap_or_else(|| panic!("{out}"));
    let mut it = line.split_whitespace().skip(1);
    let n: u32 = it.next().unwrap().parse().unwrap();
    assert!(n < 8, "{line}");
    assert_eq!(it.next(), Some("EAGAIN"), "{line}");
}
