//! The process a user gets: exit codes, streams, environment, identity, and clear errors.
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

mod support;

mod common;
use common::*;

use std::io::Write;
use std::process::Stdio;

#[test]
fn exit_codes_follow_docker() {
    assert_code(&run(&[], &["/bin/true"]), 0);
    assert_code(&run(&[], &["/bin/false"]), 1);
    assert_code(&sh(&[], "exit 42"), 42);
    // Killed by SIGKILL: 128 + 9.
    assert_code(&sh(&[], "kill -9 $$"), 137);

    let o = run(&[], &["no-such-tool"]);
    assert_code(&o, 127);
    assert!(
        stderr(&o).contains("\"no-such-tool\": executable file not found in $PATH"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("/usr/local/sbin:"),
        "names the PATH searched: {}",
        stderr(&o)
    );
    let o = run(&[], &["/bin/no-such-tool"]);
    assert_code(&o, 127);
    assert!(
        stderr(&o).contains("no such file or directory"),
        "{}",
        stderr(&o)
    );

    // A file without execute permission: 126.
    let o = run(&[], &["/etc/passwd"]);
    assert_code(&o, 126);
    assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));
}

#[test]
fn stdout_and_stderr_stay_separate() {
    let o = sh(&[], "echo out; echo err >&2; echo out2");
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "out\nout2\n");
    assert_eq!(stderr(&o), "err\n");
}

#[test]
fn stdin_is_passed_through_with_i_and_empty_without() {
    let mut child = nsrun(&["-i"], &["/bin/sh", "-c", "tr a-z A-Z; echo done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello\nworld\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "HELLO\nWORLD\ndone\n");

    // Without -i the tool reads /dev/null, even if nsrun's stdin has data.
    let mut child = nsrun(&[], &["/bin/cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"ignored").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "");
}

#[test]
fn environment_and_env_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("env");
    std::fs::write(&file, "# comment\nFROM_FILE=1\nOVERRIDE=file\n\n").unwrap();
    let o = sh(
        &[
            "-e",
            "A=hello world",
            "--env-file",
            file.to_str().unwrap(),
            "-e",
            "OVERRIDE=flag",
            "-e",
            "PATH=/bin",
        ],
        "echo \"$A|$FROM_FILE|$OVERRIDE|$PATH|$HOME|$HOSTNAME\"",
    );
    assert_code(&o, 0);
    let out = stdout(&o);
    let fields: Vec<&str> = out.trim().split('|').collect();
    assert_eq!(&fields[..5], ["hello world", "1", "flag", "/bin", "/root"]);
    assert_eq!(
        fields[5].len(),
        12,
        "HOSTNAME defaults to a short run id: {out}"
    );

    let o = sh(&[], "echo $PATH");
    assert_eq!(
        stdout(&o),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    );
}

#[test]
fn workdir_user_and_hostname() {
    let o = sh(&["-w", "/tmp"], "pwd");
    assert_eq!(stdout(&o), "/tmp\n");
    // A missing working directory is created, as Docker does, without touching the rootfs.
    let o = sh(&["-w", "/work/deep"], "pwd");
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "/work/deep\n");
    assert!(!rootfs().join("work").exists());

    let o = sh(&[], "id -u; id -g");
    assert_eq!(stdout(&o), "0\n0\n");
    let o = sh(&["-u", "1000:100"], "id -u; id -g");
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "1000\n100\n");
    // Names come from the image's /etc/passwd, with its home and groups.
    let o = sh(&["-u", "tool"], "id -un; id -G; echo $HOME");
    assert_code(&o, 0);
    // Rootless, a non-root tool gets the one-id map (see idmap): its image group 100 is not
    // mapped there and is left out.
    let groups = if is_root() { "1000 100" } else { "1000" };
    assert_eq!(stdout(&o), format!("tool\n{groups}\n/home/tool\n"));
    let o = sh(&["-u", "nosuchuser"], "true");
    assert_code(&o, 125);
    assert!(
        stderr(&o).contains("unable to find user nosuchuser"),
        "{}",
        stderr(&o)
    );

    let o = sh(
        &["--hostname", "scanner-7"],
        "hostname; cat /proc/sys/kernel/hostname",
    );
    assert_eq!(stdout(&o), "scanner-7\nscanner-7\n");
}

#[test]
fn bad_input_is_one_line_and_exit_125() {
    let cases: &[&[&str]] = &[
        &["run", "--rootfs", "/nonexistent/rootfs", "--", "true"],
        &[
            "run",
            "--rootfs",
            "ROOTFS",
            "-v",
            "relative:/x",
            "--",
            "true",
        ],
        &[
            "run",
            "--rootfs",
            "ROOTFS",
            "-v",
            "/nonexistent-src:/x",
            "--",
            "true",
        ],
        &[
            "run", "--rootfs", "ROOTFS", "--memory", "lots", "--", "true",
        ],
        &["run", "--rootfs", "ROOTFS", "--memory", "1k", "--", "true"],
        &[
            "run",
            "--rootfs",
            "ROOTFS",
            "--network",
            "bogus",
            "--",
            "true",
        ],
        &["run", "--rootfs", "ROOTFS", "--timeout", "-3", "--", "true"],
        &["run", "--rootfs", "ROOTFS", "-e", "=x", "--", "true"],
        &["run", "--rootfs", "ROOTFS", "-w", "relative", "--", "true"],
        &[
            "run", "--rootfs", "ROOTFS", "--userns", "weird", "--", "true",
        ],
        &["run", "--rootfs", "ROOTFS", "--no-such-flag", "--", "true"],
        &["run", "--rootfs", "ROOTFS"],
    ];
    let root = rootfs();
    for case in cases {
        let args: Vec<&str> = case
            .iter()
            .map(|a| {
                if *a == "ROOTFS" {
                    root.to_str().unwrap()
                } else {
                    a
                }
            })
            .collect();
        let o = std::process::Command::new(nsrun_bin())
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_code(&o, 125);
        let err = stderr(&o);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        // clap adds a usage hint under its own errors; our errors are a single line.
        assert!(
            lines.len() == 1 || (lines[0].starts_with("error:") && lines.len() <= 5),
            "{args:?}: expected one line, got {err}"
        );
        assert!(o.stdout.is_empty());
    }
    // As root, ids past the 65536-id range are refused (rootless, the one id maps anything).
    if is_root() {
        let o = sh(&["-u", "70000"], "true");
        assert_code(&o, 125);
        assert!(stderr(&o).contains("maps uids 0-65535"), "{}", stderr(&o));
    }
}

#[test]
fn shorthand_without_run() {
    let o = std::process::Command::new(nsrun_bin())
        .args([
            "--rootfs",
            rootfs().to_str().unwrap(),
            "--",
            "echo",
            "short",
        ])
        .output()
        .unwrap();
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "short\n");
}
