//! `nsrun run` with files in and out (--input, --input-dir, --output, --output-dir), labels and
//! the result as JSON (--json, --result-json); `nsrun gc` sweeping a killed run's scratch.
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

mod support;

mod common;
use common::*;

use std::process::Command;

fn nsrun_root(root: &std::path::Path, flags: &[&str], cmd: &[&str]) -> std::process::Output {
    let mut c = Command::new(nsrun_bin());
    c.arg("run")
        .arg("--root")
        .arg(root)
        .arg("--rootfs")
        .arg(rootfs())
        .args(flags)
        .arg("--")
        .args(cmd)
        .stdin(std::process::Stdio::null());
    c.output().unwrap()
}

fn runs_left(root: &std::path::Path) -> usize {
    std::fs::read_dir(root.join("runs"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn inputs_and_outputs_through_host_files() {
    let root = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let bin: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    std::fs::write(host.path().join("data.bin"), &bin).unwrap();
    std::fs::create_dir_all(host.path().join("dir/sub")).unwrap();
    std::fs::write(host.path().join("dir/sub/x.txt"), "from-dir").unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = nsrun_root(
        root.path(),
        &[
            "--input",
            &format!("data.bin={}", host.path().join("data.bin").display()),
            "--input-dir",
            host.path().join("dir").to_str().unwrap(),
            "--output",
            "copy.bin",
            "--output",
            "res/x.txt",
            "--output-dir",
            out.path().to_str().unwrap(),
            "--label",
            "tenant=acme",
        ],
        &[
            "/bin/sh",
            "-c",
            "pwd; cp /inputs/data.bin copy.bin && mkdir res && cp /inputs/sub/x.txt res/",
        ],
    );
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "/work\n");
    assert_eq!(std::fs::read(out.path().join("copy.bin")).unwrap(), bin);
    assert_eq!(
        std::fs::read_to_string(out.path().join("res/x.txt")).unwrap(),
        "from-dir"
    );
    assert_eq!(runs_left(root.path()), 0);
}

#[test]
fn json_results_on_stdout_or_in_a_file() {
    let root = tempfile::tempdir().unwrap();
    let o = nsrun_root(
        root.path(),
        &["--json", "--label", "run=r1", "--output", "o"],
        &[
            "/bin/sh",
            "-c",
            "echo out; echo err >&2; echo -n file > o; exit 4",
        ],
    );
    assert_code(&o, 4);
    let r: nsrun::runner::RunResult =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)));
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );
    assert_eq!(r.exit_code, 4);
    assert_eq!(r.labels["run"], "r1");
    assert_eq!(r.outputs[0].data, b"file");
    assert_eq!(stdout(&o).lines().count(), 1);

    let file = root.path().join("result.json");
    let o = nsrun_root(
        root.path(),
        &["--result-json", file.to_str().unwrap()],
        &["/bin/sh", "-c", "echo streamed"],
    );
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "streamed\n");
    let r: nsrun::runner::RunResult =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!((r.exit_code, r.stdout.len()), (0, 0));
    assert_eq!(r.command, ["/bin/sh", "-c", "echo streamed"]);

    // nsrun's own failure: one line on stderr, the typed error in the JSON, Docker's code.
    let o = nsrun_root(root.path(), &["--json"], &["no-such-tool"]);
    assert_code(&o, 127);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "command_not_found");
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
}

#[test]
fn bad_file_flags_fail_in_one_line_leaving_nothing() {
    let root = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let f = host.path().join("f");
    std::fs::write(&f, "x").unwrap();
    let out = host.path().to_str().unwrap();
    for (flags, want) in [
        (
            vec!["--input".to_string(), format!("../x={}", f.display())],
            "invalid",
        ),
        (
            vec!["--input".to_string(), format!("/abs={}", f.display())],
            "invalid",
        ),
        (
            vec!["--input".to_string(), "noequals".into()],
            "NAME=HOSTFILE",
        ),
        (
            vec!["--input".to_string(), "a=/no/such/file".into()],
            "not a readable file",
        ),
        (vec!["--output".to_string(), "o".into()], "--output-dir"),
        (
            vec![
                "--output".into(),
                "../o".into(),
                "--output-dir".into(),
                out.into(),
            ],
            "invalid",
        ),
        (vec!["--label".to_string(), "novalue".into()], "KEY=VALUE"),
    ] {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let o = nsrun_root(root.path(), &flags, &["/bin/true"]);
        assert_code(&o, 125);
        assert!(stderr(&o).contains(want), "{flags:?}: {}", stderr(&o));
        assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
        assert_eq!(runs_left(root.path()), 0, "{flags:?}");
    }
}

#[test]
fn gc_sweeps_the_scratch_of_killed_runs() {
    let root = tempfile::tempdir().unwrap();
    let dead = root.path().join("runs/999999999-1-acme-0-0123456789abcdef");
    std::fs::create_dir_all(dead.join("work/deep")).unwrap();
    std::fs::write(dead.join("work/deep/f"), "x").unwrap();
    let o = Command::new(nsrun_bin())
        .args(["gc", "--root", root.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("removed leftover run scratch"),
        "{}",
        stdout(&o)
    );
    assert!(!dead.exists());
}
