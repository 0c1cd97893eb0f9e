//! End to end: the static probe inside `nsrun run --rootfs`, trying to get out and to starve the
//! host. Every attempt must fail, as root and as an unprivileged user (CI runs both).
//!
//! Fixtures: `NSRUN_TEST_ROOTFS` (busybox rootfs), `NSRUN_TEST_PROBE` (else built here), the
//! nsrun binary (`NSRUN_BIN` or cargo's). The probe is bind-mounted read-only at /probe.
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

mod support;

mod common;
#[path = "confine_common/mod.rs"]
mod confine_common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{assert_code, is_root, stderr, stdout};
use confine_common::{assert_default_profile, table};

/// `nsrun run --rootfs R -v PROBE:/probe:ro FLAGS -- /probe ARGS`.
fn probe_run(flags: &[&str], args: &[&str]) -> Output {
    probe_run_on(&common::rootfs(), flags, args)
}

fn probe_run_on(rootfs: &Path, flags: &[&str], args: &[&str]) -> Output {
    let probe = confine_common::probe();
    Command::new(common::nsrun_bin())
        .arg("run")
        .arg("--rootfs")
        .arg(rootfs)
        .arg("-v")
        .arg(format!("{}:/probe:ro", probe.display()))
        .args(flags)
        .arg("--")
        .arg("/probe")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("start nsrun")
}

#[test]
fn every_escape_attempt_fails() {
    // A host process the sandbox must not be able to signal.
    let mut victim = Command::new("sleep").arg("30").spawn().unwrap();
    let o = probe_run(&[], &["escape", &victim.id().to_string()]);
    let out = stdout(&o);
    let alive = victim.try_wait().unwrap().is_none();
    let _ = victim.kill();
    let _ = victim.wait();
    assert!(alive, "the host process was killed from inside the sandbox");
    assert_code(&o, 0);
    let escaped: Vec<&str> = out.lines().filter(|l| !l.starts_with("blocked ")).collect();
    assert!(
        escaped.is_empty(),
        "escaped:\n{}\nfull output:\n{out}",
        escaped.join("\n")
    );
    let t: BTreeMap<String, String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("blocked "))
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    // Each attempt, and what stopped it.
    for name in [
        "write_root",
        "mkdir_root",
        "mount_tmpfs",
        "unshare_user",
        "unshare_mount",
        "setns",
        "pivot_root",
        "read_kcore",
        "write_sysrq_trigger",
        "write_sys",
        "keyctl",
        "bpf",
        "perf_event_open",
        "reboot",
        "raw_socket",
        "open_by_handle_at",
        "kill_host_process",
        "init_module",
        "finit_module",
        "clone3",
        "clone_newuser",
    ] {
        assert!(t.contains_key(name), "no verdict for {name}:\n{out}");
    }
    assert_eq!(t["write_root"], "EROFS", "{out}");
    assert_eq!(t["mount_tmpfs"], "EPERM", "{out}");
    assert_eq!(t["unshare_user"], "EPERM", "{out}");
    assert_eq!(t["kill_host_process"], "ESRCH", "{out}");
    assert_eq!(t["clone3"], "ENOSYS", "{out}");
    assert_eq!(t["raw_socket"], "EPERM", "{out}");
}

#[test]
fn syscall_probe_sees_the_default_profile() {
    let o = probe_run(&[], &["syscalls"]);
    assert_code(&o, 0);
    let out = stdout(&o);
    assert_default_profile(&out);
}

#[test]
fn unconfined_seccomp_lets_calls_reach_the_kernel() {
    let o = probe_run(&["--security-opt", "seccomp=unconfined"], &["syscalls"]);
    assert_code(&o, 0);
    let t = table(&stdout(&o));
    // The kernel's own answers to the bad arguments: no filter in the way.
    assert_eq!(t["clone3"], "EINVAL");
    assert_eq!(t["unshare"], "EINVAL");
    assert_eq!(t["setns"], "EBADF");
    assert_eq!(t["keyctl"], "EOPNOTSUPP");
}

#[test]
fn capabilities_default_and_added() {
    let o = probe_run(&[], &["ids"]);
    assert_code(&o, 0);
    let out = stdout(&o);
    let want = nsrun::sandbox::caps::CapSet::default_set().0;
    assert!(
        out.contains(&format!("eff {want:016x} prm {want:016x} bnd {want:016x}")),
        "{out}"
    );
    assert!(out.contains("nnp 1"), "{out}");

    let o = probe_run(&["--cap-add", "NET_RAW"], &["syscalls"]);
    assert_code(&o, 0);
    let t = table(&stdout(&o));
    assert_eq!(
        t["socket_raw"], "0",
        "NET_RAW added: raw sockets in the run's own netns"
    );
    assert_eq!(t["socket_packet"], "0");

    let o = probe_run(&["--cap-drop", "ALL"], &["ids"]);
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("eff 0000000000000000 prm 0000000000000000 bnd 0000000000000000"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn custom_profile_denying_mkdir_gives_its_errno() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let profile = dir.path().join("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 122}]}"#,
    )
    .unwrap();
    std::fs::set_permissions(&profile, std::fs::Permissions::from_mode(0o644)).unwrap();
    let opt = format!("seccomp={}", profile.display());
    let o = probe_run(&["--security-opt", &opt], &["mkdir", "/tmp/d"]);
    assert_code(&o, 0);
    assert_eq!(
        stdout(&o).trim(),
        "mkdir EDQUOT",
        "errno 122 from the profile"
    );
    let o = probe_run(&[], &["mkdir", "/tmp/d"]);
    assert_eq!(
        stdout(&o).trim(),
        "mkdir 0",
        "the default profile allows mkdir"
    );

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"defaultAction": "SCMP_ACT_FROBNICATE"}"#).unwrap();
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = probe_run(
        &["--security-opt", &format!("seccomp={}", bad.display())],
        &["ids"],
    );
    assert_code(&o, 125);
    assert!(stderr(&o).contains("SCMP_ACT_FROBNICATE"), "{}", stderr(&o));
}

#[test]
fn fork_bomb_is_stopped_by_pids_limit() {
    let start = Instant::now();
    let o = probe_run(&["--pids-limit", "32"], &["forkbomb", "100000"]);
    let took = start.elapsed();
    assert_code(&o, 0);
    let out = stdout(&o);
    let line = out
        .lines()
        .find(|l| l.starts_with("forked "))
        .unwrap_or_else(|| panic!("{out}"));
    let mut it = line.split_whitespace().skip(1);
    let n: u32 = it.next().unwrap().parse().unwrap();
    assert!(n < 32, "{line}");
    assert_eq!(it.next(), Some("EAGAIN"), "{line}");
    // The host stayed responsive: the whole run, fork storm included, is quick.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert!(
        !stderr(&o).contains("not enforced"),
        "pids is enforced either way: {}",
        stderr(&o)
    );
}

#[test]
fn memory_hog_is_stopped_and_reported() {
    let o = probe_run(
        &["--memory", "32m", "--memory-swap", "32m", "--stats"],
        &["memhog", "512"],
    );
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(
        !out.contains("memhog done"),
        "the hog got all its memory:\n{out}"
    );
    if is_root() {
        // A real memory cgroup: the OOM killer, exit 137 and a message saying so.
        assert_code(&o, 137);
        assert!(err.contains("out of memory"), "{err}");
        assert!(err.contains("peak memory"), "{err}");
    } else {
        // Rootless without delegation: RLIMIT_DATA makes malloc fail, and nsrun says that
        // --memory is only enforced per process.
        let delegated = !err.contains("not enforced");
        if delegated {
            assert_code(&o, 137);
        } else {
            assert_code(&o, 2);
            assert!(out.contains("malloc failed"), "{out}");
            assert!(err.contains("--memory for the run as a whole"), "{err}");
            assert_eq!(
                err.matches("not enforced").count(),
                1,
                "printed once: {err}"
            );
        }
    }
}

#[test]
fn unenforced_limits_are_named_once() {
    let o = probe_run(
        &["--cpus", "0.5", "--cpu-shares", "512", "--pids-limit", "64"],
        &["ids"],
    );
    assert_code(&o, 0);
    let err = stderr(&o);
    // Root on a host with writable cpu and pids cgroups (v1 here, or delegated v2) enforces all.
    let proc_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let v1_cpu_pids = proc_cgroup.contains(":pids:") && proc_cgroup.contains("cpu");
    if is_root() && v1_cpu_pids {
        assert!(!err.contains("not enforced"), "{err}");
    }
    if err.contains("not enforced") {
        let line = err.lines().find(|l| l.contains("not enforced")).unwrap();
        assert!(
            line.contains("--cpus") && line.contains("--cpu-shares"),
            "{line}"
        );
        assert!(!line.contains("pids"), "{line}");
        assert_eq!(err.matches("not enforced").count(), 1, "{err}");
    }
}

#[test]
fn filling_tmp_gives_enospc() {
    let o = probe_run(&["--tmpfs-size", "8m"], &["fill", "/tmp/big"]);
    assert_code(&o, 0);
    let out = stdout(&o);
    let line = out
        .lines()
        .find(|l| l.starts_with("fill "))
        .unwrap_or_else(|| panic!("{out}"));
    let mut it = line.split_whitespace().skip(1);
    let bytes: u64 = it.next().unwrap().parse().unwrap();
    assert_eq!(it.next(), Some("ENOSPC"), "{line}");
    assert!(bytes <= 8 << 20, "{line}");
}

/// A setuid-root binary in the image runs with the caller's ids and no capabilities: the
/// image's root is a copy of the test rootfs with the probe installed 04755, owned by the host
/// uid that is root in the container.
#[test]
fn setuid_root_binary_gains_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(common::rootfs())
        .arg(&root)
        .status()
        .unwrap();
    assert!(st.success());
    let suid = root.join("suid-probe");
    std::fs::copy(confine_common::probe(), &suid).unwrap();
    let host_root = common::expected_host_root();
    if is_root() {
        std::os::unix::fs::chown(&suid, Some(host_root), Some(host_root)).unwrap();
    }
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let o = Command::new(common::nsrun_bin())
        .args(["run", "--rootfs"])
        .arg(&root)
        .args(["--user", "1000:1000", "--", "/suid-probe", "ids"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if !o.status.success() && stderr(&o).contains("1000") && !is_root() {
        // No subordinate ids for this user: uid 1000 does not exist in the container.
        assert!(!common::in_ci(), "{}", stderr(&o));
        crate::support::skipped(&stderr(&o));
        return;
    }
    assert_code(&o, 0);
    let out = stdout(&o);
    assert!(
        out.contains("uid 1000 euid 1000"),
        "setuid took effect:\n{out}"
    );
    assert!(
        out.contains("eff 0000000000000000 prm 0000000000000000"),
        "{out}"
    );
    // Check that the file really is setuid root as the container sees it.
    let o = Command::new(common::nsrun_bin())
        .args(["run", "--rootfs"])
        .arg(&root)
        .args(["--", "/bin/stat", "-c", "%u %a", "/suid-probe"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_code(&o, 0);
    assert_eq!(stdout(&o).trim(), "0 4755");
}
