//! A run's life and death: timeouts, signals, zombies, and nothing left behind.
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

mod support;

mod common;
use common::*;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn timeout_kills_a_tool_that_ignores_sigterm_and_its_daemonised_grandchild() {
    let tok = token("timeout");
    // The grandchild detaches (its parent exits) and ignores SIGTERM too.
    let script = "trap '' TERM; (trap '' TERM; while :; do sleep 1; done) & echo started; while :; do sleep 1; done";
    let start = Instant::now();
    let o = run(
        &["--timeout", "1", "--stop-timeout", "0.5"],
        &["/bin/sh", "-c", script, &tok],
    );
    let took = start.elapsed();
    assert_code(&o, 124);
    assert_eq!(stdout(&o), "started\n");
    assert!(stderr(&o).contains("timed out after 1s"), "{}", stderr(&o));
    // Generous bound: the point is that it ends at all, not how fast (machines are noisy).
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(
        wait_until(Duration::from_secs(5), || pids_with(&tok).is_empty()),
        "left: {:?}",
        pids_with(&tok)
    );
}

#[test]
fn a_tool_that_stops_on_sigterm_still_reports_the_timeout() {
    let o = sh(
        &["--timeout", "0.5"],
        "trap 'echo term; exit 3' TERM; while :; do sleep 0.1; done",
    );
    assert_code(&o, 124);
    assert_eq!(stdout(&o), "term\n");
}

#[test]
fn zombies_are_reaped_by_pid_1() {
    // The subshell exits at once: its children are orphaned to pid 1, and exit shortly after.
    let o = sh(
        &[],
        "(sleep 0.2 & sleep 0.2 & sleep 0.2 &); sleep 1.5; for s in /proc/[0-9]*/stat; do read -r l < $s; set -- $l; echo \"$1 $3\"; done",
    );
    assert_code(&o, 0);
    let out = stdout(&o);
    assert!(
        !out.lines().any(|l| l.ends_with(" Z")),
        "zombie left:\n{out}"
    );
    assert!(out.lines().count() >= 2, "{out}");
}

#[test]
fn signals_reach_the_tool() {
    for (sig, name) in [
        (libc::SIGTERM, "TERM"),
        (libc::SIGINT, "INT"),
        (libc::SIGUSR1, "USR1"),
        (libc::SIGHUP, "HUP"),
    ] {
        let script = format!(
            "trap 'echo got-{name}; exit 7' {name}; echo ready; while :; do sleep 0.05; done"
        );
        let mut child = nsrun(&[], &["/bin/sh", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::try_from(sig).unwrap(),
        )
        .unwrap();
        line.clear();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, format!("got-{name}\n"));
        assert_eq!(child.wait().unwrap().code(), Some(7), "{name}");
    }
}

#[test]
fn nothing_survives_a_sigkill_of_nsrun() {
    let tok = token("sigkill");
    let mut child = spawn_ready(
        &[],
        "(while :; do sleep 1; done) & echo ready; while :; do sleep 1; done",
        &tok,
    );
    assert!(
        pids_with(&tok).len() >= 2,
        "expected the tool and its child: {:?}",
        pids_with(&tok)
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || pids_with(&tok).is_empty()),
        "left: {:?}",
        pids_with(&tok)
    );
}

#[test]
fn gc_removes_the_cgroups_a_sigkilled_run_leaves() {
    let tok = token("gc");
    let mut child = spawn_ready(
        &["--memory", "64m", "--pids-limit", "64"],
        "echo ready; while :; do sleep 1; done",
        &tok,
    );
    let owner = format!("/{}-", child.id());
    let mine = |cgs: Vec<String>| {
        cgs.into_iter()
            .filter(|c| c.contains(&owner))
            .collect::<Vec<_>>()
    };
    // Root gets a cgroup of its own per run; rootless has none to leave behind (rlimits).
    assert_eq!(
        mine(run_cgroups()).is_empty(),
        !is_root(),
        "{:?}",
        run_cgroups()
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(wait_until(Duration::from_secs(5), || pids_with(&tok).is_empty()));
    let cache = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(nsrun_bin())
        .args(["gc", "--root", cache.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_code(&o, 0);
    assert_eq!(
        mine(run_cgroups()),
        Vec::<String>::new(),
        "gc said: {}",
        stdout(&o)
    );
}
