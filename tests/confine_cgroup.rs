//! cgroup setup: v2 and v1 against fake cgroupfs trees (any user), v1 for real on this host
//! (root), the rlimit fallback for real (unprivileged), and rlimits applied in a child.
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nsrun::sandbox::cgroup::{
    apply_rlimits, setup, setup_at, setup_explained, sweep, sweep_at, Enforcement, Limits,
    RunCgroup,
};

fn read(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", p.as_ref().display()))
}

/// Field 22 of `/proc/<pid>/stat`, the start time that tells a process from a later one with its pid.
fn start_time(pid: u32) -> u64 {
    let stat = read(format!("/proc/{pid}/stat"));
    let after_comm = stat.rsplit_once(')').unwrap().1;
    after_comm
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap()
}

/// The directory name this process's run `run_id` gets: `<pid>-<start time>-<run id>`.
fn owned(run_id: &str) -> String {
    let me = std::process::id();
    format!("{me}-{}-{run_id}", start_time(me))
}

fn all_limits() -> Limits {
    Limits {
        memory: Some(64 << 20),
        memory_swap: None,
        cpus: Some(0.5),
        cpu_shares: Some(512),
        pids: Some(32),
    }
}

fn cgroup(e: Enforcement) -> RunCgroup {
    match e {
        Enforcement::Cgroup(c) => c,
        other => panic!("expected a cgroup, got {other:?}"),
    }
}

/// A fake v2 host: `/sys/fs/cgroup` with our process in `user.slice/app`, delegating `delegate`.
fn fake_v2(root: &Path, delegate: &str) {
    std::fs::write(root.join("cgroup.controllers"), "cpuset cpu io memory pids").unwrap();
    std::fs::write(root.join("cgroup.subtree_control"), "cpu memory pids").unwrap();
    let ours = root.join("user.slice/app");
    std::fs::create_dir_all(&ours).unwrap();
    std::fs::write(ours.join("cgroup.controllers"), "cpu memory pids").unwrap();
    std::fs::write(ours.join("cgroup.subtree_control"), delegate).unwrap();
    std::fs::write(ours.join("cgroup.kill"), "").unwrap();
    std::fs::write(ours.join("cgroup.procs"), "1234\n").unwrap();
}

#[test]
fn v2_fake_tree_limits_stats_kill_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fake_v2(root, "cpu memory pids");
    let cg = cgroup(
        setup_at(root, "0::/user.slice/app\n", &all_limits(), "run1")
            .unwrap()
            .0,
    );
    let dir = root.join("user.slice/app/nsrun").join(owned("run1"));
    assert!(cg.is_v2());
    assert_eq!(cg.v2_dir(), Some(dir.as_path()));
    let fd = cg.v2_dir_fd().unwrap().unwrap();
    let fd_path = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ))
    .unwrap();
    assert_eq!(fd_path, dir);
    assert_eq!(
        read(root.join("user.slice/app/nsrun/cgroup.subtree_control")),
        "memory cpu pids"
    );
    assert_eq!(read(dir.join("cgroup.controllers")), "memory cpu pids");
    assert_eq!(read(dir.join("memory.max")), (64u64 << 20).to_string());
    assert_eq!(
        read(dir.join("memory.swap.max")),
        (64u64 << 20).to_string(),
        "Docker: as much swap as memory"
    );
    assert_eq!(read(dir.join("cpu.max")), "50000 100000");
    assert_eq!(
        read(dir.join("cpu.weight")),
        "20",
        "runc's shares→weight mapping of 512"
    );
    assert_eq!(read(dir.join("pids.max")), "32");
    // The cgroup we run in is untouched.
    assert_eq!(
        read(root.join("user.slice/app/cgroup.subtree_control")),
        "cpu memory pids"
    );
    assert_eq!(read(root.join("user.slice/app/cgroup.procs")), "1234\n");

    cg.add_pid(4242).unwrap();
    assert_eq!(read(dir.join("cgroup.procs")), "4242\n");

    assert_eq!(cg.stats(), Default::default(), "nothing to read yet");
    std::fs::write(
        dir.join("memory.events"),
        "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\noom_group_kill 0\n",
    )
    .unwrap();
    std::fs::write(dir.join("memory.peak"), "67100672\n").unwrap();
    std::fs::write(
        dir.join("cpu.stat"),
        "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
    )
    .unwrap();
    let s = cg.stats();
    assert!(s.oom_killed);
    assert_eq!(s.peak_memory, Some(67100672));
    assert_eq!(s.cpu_time, Some(Duration::from_micros(1500)));

    cg.kill_all();
    assert_eq!(read(dir.join("cgroup.kill")), "1");

    cg.remove().unwrap();
    assert!(!dir.exists());
    assert!(
        root.join("user.slice/app/nsrun").is_dir(),
        "the shared nsrun level stays"
    );
}

#[test]
fn v2_swap_settings_and_only_needed_controllers() {
    let tmp = tempfile::tempdir().unwrap();
    fake_v2(tmp.path(), "cpu memory pids");
    let l = Limits {
        memory: Some(100 << 20),
        memory_swap: Some(-1),
        ..Default::default()
    };
    let cg = cgroup(
        setup_at(tmp.path(), "0::/user.slice/app", &l, "a")
            .unwrap()
            .0,
    );
    let dir = tmp.path().join("user.slice/app/nsrun").join(owned("a"));
    assert_eq!(read(dir.join("memory.swap.max")), "max");
    assert!(!dir.join("cpu.max").exists() && !dir.join("pids.max").exists());
    drop(cg);
    assert!(!dir.exists(), "Drop removes the cgroup");

    // Only pids asked for: memory is still enabled (for stats) since it is delegated.
    let l = Limits {
        pids: Some(5),
        ..Default::default()
    };
    let _cg = cgroup(
        setup_at(tmp.path(), "0::/user.slice/app", &l, "b")
            .unwrap()
            .0,
    );
    let ctl = read(
        tmp.path()
            .join("user.slice/app/nsrun/cgroup.subtree_control"),
    );
    assert!(ctl.contains("pids") && ctl.contains("memory"), "{ctl}");
}

#[test]
fn v2_without_delegation_falls_back_to_rlimits() {
    let tmp = tempfile::tempdir().unwrap();
    fake_v2(tmp.path(), "cpu");
    let l = Limits {
        memory: Some(1 << 30),
        pids: Some(10),
        cpus: Some(1.0),
        ..Default::default()
    };
    match setup_at(tmp.path(), "0::/user.slice/app", &l, "r").unwrap() {
        (
            Enforcement::Rlimits {
                rlimits,
                unenforced,
            },
            Some(reason),
        ) => {
            assert_eq!(rlimits.len(), 2);
            assert!(
                reason.contains("does not delegate memory, pids"),
                "{reason}"
            );
            assert!(unenforced.iter().any(|u| u == "--cpus"), "{unenforced:?}");
        }
        other => panic!("expected rlimits, got {other:?}"),
    }
    assert!(
        !tmp.path().join("user.slice/app/nsrun").exists(),
        "nothing created"
    );
}

/// A fake hybrid host like ours: v1 memory/cpu/cpuacct/pids, an empty unified hierarchy.
fn fake_hybrid(root: &Path, comount_cpu: bool) -> String {
    std::fs::create_dir_all(root.join("unified")).unwrap();
    std::fs::write(root.join("unified/cgroup.controllers"), "").unwrap();
    std::fs::write(root.join("unified/cgroup.subtree_control"), "").unwrap();
    std::fs::create_dir_all(root.join("memory/job/42")).unwrap();
    std::fs::create_dir_all(root.join("pids")).unwrap();
    if comount_cpu {
        std::fs::create_dir_all(root.join("cpu,cpuacct")).unwrap();
        std::os::unix::fs::symlink("cpu,cpuacct", root.join("cpu")).unwrap();
        std::os::unix::fs::symlink("cpu,cpuacct", root.join("cpuacct")).unwrap();
        "5:pids:/\n4:memory:/job/42\n2:cpu,cpuacct:/\n0::/\n".into()
    } else {
        std::fs::create_dir_all(root.join("cpu")).unwrap();
        std::fs::create_dir_all(root.join("cpuacct")).unwrap();
        "8:pids:/\n4:memory:/job/42\n2:cpuacct:/\n1:cpu:/\n0::/\n".into()
    }
}

#[test]
fn v1_fake_tree_limits_and_stats() {
    for comount in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let proc_text = fake_hybrid(root, comount);
        let limits = Limits {
            memory_swap: Some(96 << 20),
            ..all_limits()
        };
        let cg = cgroup(setup_at(root, &proc_text, &limits, "r1").unwrap().0);
        assert!(!cg.is_v2());
        assert!(cg.v2_dir_fd().is_none());
        let r1 = owned("r1");
        let mem = root.join("memory/job/42/nsrun").join(&r1);
        let cpu = if comount {
            root.join("cpu,cpuacct/nsrun").join(&r1)
        } else {
            root.join("cpu/nsrun").join(&r1)
        };
        let pids = root.join("pids/nsrun").join(&r1);
        assert_eq!(
            read(mem.join("memory.limit_in_bytes")),
            (64u64 << 20).to_string()
        );
        assert_eq!(
            read(mem.join("memory.memsw.limit_in_bytes")),
            (96u64 << 20).to_string()
        );
        assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "50000");
        assert_eq!(read(cpu.join("cpu.shares")), "512");
        assert_eq!(read(pids.join("pids.max")), "32");
        assert_eq!(
            cg.paths().count(),
            3,
            "memory, cpu (with cpuacct if co-mounted), pids"
        );
        if !comount {
            assert!(
                !root.join("cpuacct/nsrun").join(&r1).exists(),
                "no cgroup of its own for cpuacct"
            );
        }

        cg.add_pid(77).unwrap();
        for p in cg.paths() {
            assert_eq!(read(p.join("cgroup.procs")), "77\n");
        }
        std::fs::write(
            mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        std::fs::write(mem.join("memory.max_usage_in_bytes"), "5000000\n").unwrap();
        std::fs::write(cpu.join("cpuacct.usage"), "2500000\n").unwrap();
        let s = cg.stats();
        assert!(s.oom_killed);
        assert_eq!(s.peak_memory, Some(5_000_000));
        // CPU time from cpuacct when it lives with cpu; else the caller's rusage says it.
        let want = comount.then_some(Duration::from_micros(2500));
        assert_eq!(s.cpu_time, want);
        cg.remove().unwrap();
        assert!(!mem.exists() && !cpu.exists() && !pids.exists());
    }
}

#[test]
fn run_id_collisions_and_bad_ids_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    fake_v2(tmp.path(), "cpu memory pids");
    let l = Limits {
        pids: Some(3),
        ..Default::default()
    };
    let _a = cgroup(
        setup_at(tmp.path(), "0::/user.slice/app", &l, "same")
            .unwrap()
            .0,
    );
    let e = setup_at(tmp.path(), "0::/user.slice/app", &l, "same")
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("nsrun/{}", owned("same"))), "{e}");
    for bad in ["", "a/b", ".."] {
        assert!(
            setup_at(tmp.path(), "0::/user.slice/app", &l, bad).is_err(),
            "{bad:?}"
        );
    }
    assert!(matches!(
        setup_at(tmp.path(), "0::/", &Limits::default(), "x").unwrap(),
        (Enforcement::None, None)
    ));
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// This host's real cgroups, or `None` (with a reason) when it has no v1 memory/pids hierarchy.
fn host_has_v1() -> Result<(), String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    if text.lines().any(|l| l.contains(":memory:")) && text.lines().any(|l| l.contains(":pids:")) {
        Ok(())
    } else {
        Err("no v1 memory and pids hierarchies on this host".into())
    }
}

fn skip_or_fail(why: &str) {
    if crate::support::in_ci() {
        panic!("{why}");
    }
    crate::support::skipped(why);
}

/// A shell waiting for a line on stdin before running `script`, so it is in the cgroup first.
fn gated_shell(script: &str) -> Child {
    Command::new("/bin/sh")
        .args(["-c", &format!("read go; {script}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn release(child: &mut Child) {
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
}

fn run_id(tag: &str) -> String {
    format!("test-{tag}-{}", std::process::id())
}

#[test]
fn v1_for_real_limits_pids_and_cleans_up() {
    if !is_root() {
        return; // unprivileged: see rootless_falls_back_to_rlimits_with_a_message
    }
    if let Err(why) = host_has_v1() {
        return skip_or_fail(&why);
    }
    let limits = Limits {
        pids: Some(4),
        memory: Some(256 << 20),
        cpus: Some(1.0),
        ..Default::default()
    };
    let cg = cgroup(setup(&limits, &run_id("pids")).unwrap());
    let paths: Vec<_> = cg.paths().map(Path::to_path_buf).collect();
    for p in &paths {
        assert!(p.is_dir(), "{}", p.display());
    }
    // Forks beyond the limit fail; the shell reports it.
    let mut child = gated_shell("for i in 1 2 3 4 5 6 7 8; do sleep 3 & done; wait");
    cg.add_pid(child.id() as i32).unwrap();
    let cgroup_file = read(format!("/proc/{}/cgroup", child.id()));
    assert!(
        cgroup_file.contains(&format!("nsrun/{}", owned(&run_id("pids")))),
        "{cgroup_file}"
    );
    release(&mut child);
    std::thread::sleep(Duration::from_millis(300));
    let pids_dir = paths
        .iter()
        .find(|p| p.starts_with("/sys/fs/cgroup/pids"))
        .unwrap();
    let procs = read(pids_dir.join("cgroup.procs"));
    assert!(procs.lines().count() <= 4, "pids.max 4 but {procs}");
    assert_eq!(read(pids_dir.join("pids.max")).trim(), "4");
    cg.kill_all();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("fork") || stderr.contains("Resource temporarily unavailable"),
        "{stderr}"
    );
    assert!(
        read(pids_dir.join("cgroup.procs")).is_empty(),
        "kill_all emptied the cgroup"
    );
    let s = cg.stats();
    assert!(!s.oom_killed);
    assert!(s.peak_memory.is_some_and(|p| p > 0), "{s:?}");
    let comounted = read("/proc/self/cgroup").contains("cpu,cpuacct");
    assert_eq!(s.cpu_time.is_some(), comounted, "{s:?}");
    cg.remove().unwrap();
    for p in &paths {
        assert!(!p.exists(), "{} left behind", p.display());
    }
}

#[test]
fn v1_for_real_oom_kill_is_detected() {
    if !is_root() {
        return;
    }
    if let Err(why) = host_has_v1() {
        return skip_or_fail(&why);
    }
    let limits = Limits {
        memory: Some(32 << 20),
        memory_swap: Some(32 << 20),
        ..Default::default()
    };
    let cg = cgroup(setup(&limits, &run_id("oom")).unwrap());
    // dd touches a 128 MiB buffer: four times the limit.
    let mut child = gated_shell("exec dd if=/dev/zero of=/dev/null bs=128M count=1");
    cg.add_pid(child.id() as i32).unwrap();
    release(&mut child);
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    let s = cg.stats();
    assert!(s.oom_killed, "{s:?}");
    assert!(
        s.peak_memory.is_some_and(|p| p <= 33 << 20 && p > 16 << 20),
        "{s:?}"
    );
    cg.remove().unwrap();
}

#[test]
fn rootless_falls_back_to_rlimits_with_a_message() {
    if is_root() {
        return; // root gets a real cgroup: see v1_for_real_*
    }
    let limits = Limits {
        pids: Some(16),
        memory: Some(64 << 20),
        cpus: Some(1.0),
        ..Default::default()
    };
    match setup_explained(&limits, &run_id("rootless")).unwrap() {
        (
            Enforcement::Rlimits {
                rlimits,
                unenforced,
            },
            Some(reason),
        ) => {
            assert_eq!(rlimits.len(), 2);
            assert!(unenforced.iter().any(|u| u == "--cpus"));
            assert!(reason.contains("no cgroup could be created"), "{reason}");
            let line = Enforcement::Rlimits {
                rlimits,
                unenforced,
            }
            .warning()
            .unwrap();
            assert!(
                line.starts_with("warning: not enforced: --memory for the run as a whole"),
                "{line}"
            );
            assert!(!line.contains('\n'));
        }
        (Enforcement::Cgroup(cg), _) => {
            // A delegated v2 cgroup would do too; it must then really be ours to write.
            let dirs: Vec<_> = cg.paths().map(Path::to_path_buf).collect();
            cg.remove().unwrap();
            eprintln!("delegated cgroup available: {dirs:?}");
        }
        other => panic!("expected rlimits with a reason, got {other:?}"),
    }
}

/// Forks; the child applies the rlimits and tries to map `bytes` of private memory.
fn mmap_under_rlimits(limits: &Limits, bytes: usize) -> i32 {
    let rl = match setup_at(Path::new("/nonexistent"), "0::/", limits, "x")
        .unwrap()
        .0
    {
        Enforcement::Rlimits { rlimits, .. } => rlimits,
        other => panic!("no cgroupfs there: expected rlimits, got {other:?}"),
    };
    // SAFETY: the child makes raw syscalls and calls _exit only.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: as above; rl was built before the fork.
        unsafe {
            if apply_rlimits(&rl).is_err() {
                libc::_exit(2);
            }
            let p = libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            libc::_exit(if p == libc::MAP_FAILED { 1 } else { 0 });
        }
    }
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    libc::WEXITSTATUS(status)
}

#[test]
fn rlimit_data_caps_private_memory() {
    let l = Limits {
        memory: Some(32 << 20),
        ..Default::default()
    };
    assert_eq!(
        mmap_under_rlimits(&l, 256 << 20),
        1,
        "256 MiB refused under a 32 MiB RLIMIT_DATA"
    );
    assert_eq!(mmap_under_rlimits(&l, 4 << 20), 0, "4 MiB fits");
}

#[test]
fn dropping_a_cgroup_with_processes_inside_leaves_nothing() {
    if !is_root() {
        return;
    }
    if let Err(why) = host_has_v1() {
        return skip_or_fail(&why);
    }
    let limits = Limits {
        pids: Some(10),
        ..Default::default()
    };
    let cg = cgroup(setup(&limits, &run_id("drop")).unwrap());
    let paths: Vec<_> = cg.paths().map(Path::to_path_buf).collect();
    let mut child = gated_shell("sleep 30");
    cg.add_pid(child.id() as i32).unwrap();
    release(&mut child);
    // An error path: the cgroup goes out of scope with the tool still running in it.
    drop(cg);
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    for p in &paths {
        assert!(!p.exists(), "{} left behind", p.display());
    }
}

/// A pid no process has: a child of ours, reaped.
fn dead_pid() -> u32 {
    let mut c = Command::new("/bin/true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

/// A child of ours that has exited and is not reaped yet: an owner killed while its parent is
/// not looking. Reap it with `wait` when done.
#[allow(clippy::zombie_processes)] // a zombie is what it makes; the caller reaps it
fn zombie() -> Child {
    let c = Command::new("/bin/true").spawn().unwrap();
    for _ in 0..500 {
        let stat = read(format!("/proc/{}/stat", c.id()));
        if stat
            .rsplit_once(')')
            .unwrap()
            .1
            .trim_start()
            .starts_with('Z')
        {
            return c;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("/bin/true did not exit");
}

/// Fills the `nsrun/` level `base` with run cgroups of a gone owner, of a zombie one, of a live
/// one (us), of a reused pid (ours, with another start time), and with directories nsrun did not
/// name; returns (the stale ones, the ones to keep, the zombie to reap).
fn stale_and_live(base: &Path) -> (Vec<std::path::PathBuf>, Vec<std::path::PathBuf>, Child) {
    let me = std::process::id();
    let start = start_time(me);
    let gone = dead_pid();
    let z = zombie();
    let stale = vec![
        base.join(format!("{gone}-{start}-deadrun")),
        base.join(format!("{me}-{}-reused-pid", start + 1)),
        base.join(format!("{}-{}-zombie", z.id(), start_time(z.id()))),
    ];
    let keep = vec![
        base.join(owned("live")),
        base.join("0123456789abcdef"), // a run id alone: no owner to check
        base.join(format!("x{gone}-{start}-y")),
    ];
    for d in stale.iter().chain(&keep) {
        std::fs::create_dir_all(d).unwrap();
        // A fake tree's pid list is not the kernel's: nothing may be killed from it.
        std::fs::write(d.join("cgroup.procs"), format!("{me}\n")).unwrap();
        std::fs::write(d.join("pids.max"), "5").unwrap();
    }
    // Not directories: never touched.
    std::fs::write(base.join(format!("{gone}-{start}-afile")), "").unwrap();
    std::os::unix::fs::symlink(&keep[0], base.join(format!("{gone}-{start}-alink"))).unwrap();
    (stale, keep, z)
}

fn sorted(mut v: Vec<std::path::PathBuf>) -> Vec<std::path::PathBuf> {
    v.sort();
    v
}

#[test]
fn v2_fake_tree_sweep_removes_only_run_cgroups_of_gone_owners() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fake_v2(root, "cpu memory pids");
    let base = root.join("user.slice/app/nsrun");
    std::fs::create_dir_all(&base).unwrap();
    let (stale, keep, mut z) = stale_and_live(&base);
    // Outside our nsrun/ level: a cgroup named like a stale run, a sibling's nsrun/ level.
    let gone = dead_pid();
    let outside = [
        root.join(format!("user.slice/app/{gone}-1-run")),
        root.join(format!("user.slice/other/nsrun/{gone}-1-run")),
    ];
    for d in &outside {
        std::fs::create_dir_all(d).unwrap();
    }

    let removed = sweep_at(root, "0::/user.slice/app\n").unwrap();
    assert_eq!(sorted(removed), sorted(stale.clone()));
    for d in &stale {
        assert!(!d.exists(), "{} left", d.display());
    }
    for d in keep.iter().chain(&outside) {
        assert!(d.is_dir(), "{} removed", d.display());
    }
    assert_eq!(
        read(keep[0].join("cgroup.procs")),
        format!("{}\n", std::process::id())
    );
    assert!(base.is_dir(), "the nsrun level stays for concurrent runs");
    z.wait().unwrap();
    assert_eq!(
        sweep_at(root, "0::/user.slice/app\n").unwrap(),
        Vec::<std::path::PathBuf>::new(),
        "nothing left to sweep"
    );
}

#[test]
fn v1_fake_tree_sweep_covers_every_hierarchy_and_keeps_live_runs() {
    for comount in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let proc_text = fake_hybrid(root, comount);
        // A live run made by setup, in all three hierarchies.
        let live = cgroup(
            setup_at(root, &proc_text, &all_limits(), "running")
                .unwrap()
                .0,
        );
        let live_dirs: Vec<_> = live.paths().map(Path::to_path_buf).collect();
        let cpu = if comount { "cpu,cpuacct" } else { "cpu" };
        let mut want = Vec::new();
        let mut keep = live_dirs.clone();
        let mut zombies = Vec::new();
        for base in ["memory/job/42/nsrun", &format!("{cpu}/nsrun"), "pids/nsrun"] {
            let (s, k, z) = stale_and_live(&root.join(base));
            want.extend(s);
            keep.extend(k);
            zombies.push(z);
        }
        // cpuacct has no nsrun level of ours unless co-mounted; one found there is not looked at.
        if !comount {
            let d = root.join(format!("cpuacct/nsrun/{}-1-x", dead_pid()));
            std::fs::create_dir_all(&d).unwrap();
            keep.push(d);
        }
        let removed = sweep_at(root, &proc_text).unwrap();
        assert_eq!(sorted(removed), sorted(want.clone()), "comount {comount}");
        for d in &want {
            assert!(!d.exists(), "{} left", d.display());
        }
        for d in &keep {
            assert!(d.is_dir(), "{} removed", d.display());
        }
        live.remove().unwrap();
        for mut z in zombies {
            z.wait().unwrap();
        }
    }
}

/// Not a test of its own: the owner process for `sweep_removes_the_cgroups_of_a_killed_owner`,
/// started by it as a copy of this test binary. It sets up a run cgroup, joins it, leaves a
/// process inside, prints the cgroup's directories and waits to be killed.
#[test]
#[ignore = "the owner process of sweep_removes_the_cgroups_of_a_killed_owner, run by it"]
fn sweep_owner_helper() {
    if std::env::var_os("NSRUN_SWEEP_OWNER").is_none() {
        return;
    }
    let limits = Limits {
        pids: Some(20),
        memory: Some(64 << 20),
        cpus: Some(1.0),
        ..Default::default()
    };
    let cg = cgroup(setup(&limits, "killed-owner").unwrap());
    cg.add_pid(std::process::id() as i32).unwrap();
    // Spawned after joining, so inside: what a sandbox leaves when its pid 1 outlives nsrun.
    let mut orphan = Command::new("/bin/sleep").arg("60").spawn().unwrap();
    for p in cg.paths() {
        println!("{}", p.display());
    }
    std::io::stdout().flush().unwrap();
    std::mem::forget(cg); // the owner is killed before it could remove anything
    let _ = orphan.wait();
}

#[test]
fn sweep_removes_the_cgroups_of_a_killed_owner() {
    if !is_root() {
        return; // unprivileged: see unprivileged_sweep_is_a_quiet_no_op
    }
    if let Err(why) = host_has_v1() {
        return skip_or_fail(&why);
    }
    use std::io::BufRead;
    let mut owner = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "sweep_owner_helper", "--nocapture"])
        .env("NSRUN_SWEEP_OWNER", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut dirs = Vec::new();
    for line in std::io::BufReader::new(owner.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.starts_with("/sys/fs/cgroup/") {
            dirs.push(std::path::PathBuf::from(line));
            if dirs.len() == 3 {
                break;
            }
        }
    }
    assert_eq!(dirs.len(), 3, "memory, cpu and pids cgroups: {dirs:?}");
    let name = format!("{}-{}-killed-owner", owner.id(), start_time(owner.id()));
    let pids_dir = dirs
        .iter()
        .find(|d| d.starts_with("/sys/fs/cgroup/pids"))
        .unwrap();
    assert!(pids_dir.ends_with(&name), "{}", pids_dir.display());
    let inside = read(pids_dir.join("cgroup.procs"));
    assert_eq!(inside.lines().count(), 2, "owner and its orphan: {inside}");
    // A live run of ours at the same time: it must survive the sweep.
    let live = cgroup(
        setup(
            &Limits {
                pids: Some(5),
                ..Default::default()
            },
            &run_id("live"),
        )
        .unwrap(),
    );
    let live_dirs: Vec<_> = live.paths().map(Path::to_path_buf).collect();

    let orphan: i32 = inside
        .lines()
        .map(|l| l.parse().unwrap())
        .find(|p| *p != owner.id() as i32)
        .unwrap();
    owner.kill().unwrap(); // SIGKILL: no chance to clean up
    owner.wait().unwrap();
    assert!(
        dirs.iter().all(|d| d.is_dir()),
        "left behind by the killed owner"
    );

    let removed = sweep().unwrap();
    for d in &dirs {
        assert!(!d.exists(), "{} not swept", d.display());
        assert!(
            removed.contains(d),
            "{} not reported: {removed:?}",
            d.display()
        );
    }
    for d in &live_dirs {
        assert!(d.is_dir(), "live run {} swept", d.display());
        assert!(!removed.contains(d));
    }
    // The orphan was killed; init reaps it, as it is nobody's child now.
    let gone = |pid: i32| match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .unwrap()
            .1
            .trim_start()
            .starts_with('Z'),
    };
    for _ in 0..100 {
        if gone(orphan) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        gone(orphan),
        "the process left inside, {orphan}, still runs"
    );
    live.remove().unwrap();
}

#[test]
fn unprivileged_sweep_is_a_quiet_no_op() {
    if is_root() {
        return; // root can write its cgroups: see sweep_removes_the_cgroups_of_a_killed_owner
    }
    let probe = Limits {
        pids: Some(5),
        ..Default::default()
    };
    match setup_explained(&probe, &run_id("probe")).unwrap() {
        (Enforcement::Rlimits { .. }, Some(_)) => {
            // No cgroup this user may write: nothing to sweep, and no error for trying.
            assert_eq!(sweep().unwrap(), Vec::<std::path::PathBuf>::new());
        }
        (Enforcement::Cgroup(cg), _) => {
            // A delegated cgroup: the sweep runs, and must leave our live run alone.
            let dirs: Vec<_> = cg.paths().map(Path::to_path_buf).collect();
            let removed = sweep().unwrap();
            assert!(dirs.iter().all(|d| d.is_dir() && !removed.contains(d)));
            cg.remove().unwrap();
        }
        other => panic!("unexpected {other:?}"),
    }
}
