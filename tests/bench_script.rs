//! `scripts/bench.sh`'s options: what CI checks of the benchmark suite besides running
//! `--quick` (scripts/test.sh does that as root). The suite itself is never timed in a test.
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

mod support;

use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    // The rootless CI run cannot read the checkout: it gets a copy.
    let script = std::env::var("NSRUN_TEST_BENCH_SCRIPT")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench.sh").into());
    Command::new(script)
        .args(args)
        .output()
        .expect("run scripts/bench.sh")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn quick_plan_is_startup_only_three_runs_no_docker() {
    let o = bench(&["--quick", "--check"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("scenarios: startup\n"), "{out}");
    assert!(out.contains("runs: 3\n"), "{out}");
    assert!(out.contains("docker: false\n"), "{out}");
    let o = bench(&[
        "--quick",
        "--runs",
        "7",
        "--only",
        "startup,concurrent",
        "--out",
        "/x",
        "--check",
    ]);
    let (out, _) = text(&o);
    assert!(
        out.contains("scenarios: startup concurrent\n")
            && out.contains("runs: 7\n")
            && out.contains("output: /x\n"),
        "{out}"
    );
}

#[test]
fn full_plan_needs_root() {
    let o = bench(&["--check"]);
    let (out, err) = text(&o);
    if is_root() {
        assert!(o.status.success(), "{err}");
        assert!(
            out.contains("scenarios: startup confined concurrent pull memory\n"),
            "{out}"
        );
        assert!(
            out.contains("runs: 20\n") && out.contains("docker: true\n"),
            "{out}"
        );
    } else {
        assert_eq!(o.status.code(), Some(2), "{out}{err}");
        assert!(
            err.contains("runs as root") && err.contains("--quick"),
            "{err}"
        );
    }
}

#[test]
fn bad_options_are_one_line_with_status_2() {
    for (args, needle) in [
        (&["--bogus"][..], "unknown option '--bogus'"),
        (&["--runs", "0"][..], "--runs needs a positive whole number"),
        (&["--runs", "x"][..], "--runs needs a positive whole number"),
        (&["--runs"][..], "--runs needs a positive whole number"),
        (&["--only", "startup,nope"][..], "unknown scenario 'nope'"),
        (&["--only"][..], "--only needs"),
        (&["--out"][..], "--out needs a directory"),
    ] {
        let o = bench(args);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {out}{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?} printed {out}");
    }
}

#[test]
fn help_describes_every_scenario() {
    let o = bench(&["--help"]);
    let (out, _) = text(&o);
    assert!(o.status.success());
    for word in [
        "--quick",
        "--only",
        "--runs",
        "startup",
        "confined",
        "concurrent",
        "pull",
        "memory",
        "latest",
    ] {
        assert!(out.contains(word), "--help lacks {word}:\n{out}");
    }
}
