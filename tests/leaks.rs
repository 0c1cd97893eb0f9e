//! Nothing of a run stays behind. In a file of its own: the counts below are of this whole test
//! process, so no other test may run beside it.
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

mod support;

mod common;
use common::*;

use std::time::Duration;

/// What a run could leak on the host, as seen from this process.
#[derive(Debug, PartialEq)]
struct HostState {
    mounts: usize,
    fds: usize,
    children: usize,
    tmp: Vec<String>,
    cgroups: Vec<String>,
}

fn host_state() -> HostState {
    let me = std::process::id().to_string();
    let children = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit(')')
                        .next()
                        .and_then(|r| r.split_whitespace().nth(1).map(|p| p == me))
                })
                .unwrap_or(false)
        })
        .count();
    // Anything temporary nsrun made would be in TMPDIR, which the helper gets to itself here
    // (the machine's /tmp is shared with whatever else runs, so it proves nothing).
    let mut tmp: Vec<String> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
        .collect();
    tmp.sort();
    HostState {
        mounts: std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .count(),
        fds: std::fs::read_dir("/proc/self/fd").unwrap().count(),
        children,
        tmp,
        cgroups: run_cgroups(),
    }
}

#[test]
fn two_hundred_sequential_runs_leave_nothing_behind() {
    use nsrun::helper::Helper;
    use nsrun::sandbox::SandboxSpec;
    let private_tmp = tempfile::tempdir().unwrap();
    // This binary runs this one test: no other thread reads the environment meanwhile.
    std::env::set_var("TMPDIR", private_tmp.path());
    let helper = Helper::new(nsrun_bin());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let spec = |i: usize| {
        let mut s = SandboxSpec::new(rootfs(), ["/bin/sh", "-c", "echo $0", &i.to_string()]);
        s.tmpfs.push("/scratch:1m".parse().unwrap());
        // Every tenth run with limits: a cgroup of its own as root, rlimits rootless.
        if i % 10 == 0 {
            s.limits.pids = Some(64);
            s.limits.memory = Some(64 << 20);
        }
        s
    };
    // One run first, so that lazily created process-wide state (tokio's reaper pipe) exists.
    rt.block_on(helper.run(&spec(0), None)).unwrap();
    if is_root() {
        // The cgroup check must be able to see a run's cgroup at all, or it proves nothing.
        let mut live = nsrun(
            &["--memory", "64m", "--pids-limit", "64"],
            &["/bin/sleep", "2"],
        )
        .spawn()
        .unwrap();
        let seen = wait_until(Duration::from_secs(5), || !run_cgroups().is_empty());
        live.wait().unwrap();
        assert!(
            seen,
            "no run cgroup visible while a run with limits was going"
        );
    }
    let before = host_state();
    for i in 1..=200 {
        let out = rt.block_on(helper.run(&spec(i), None)).unwrap();
        assert_eq!(
            out.stdout,
            format!("{i}\n").as_bytes(),
            "run {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.outcome.exit_code(), 0);
    }
    // Give the runtime a moment to reap the last helper.
    let settled = wait_until(Duration::from_secs(5), || host_state() == before);
    assert!(settled, "before: {before:?}\nafter: {:?}", host_state());
}
