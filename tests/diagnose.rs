//! When the host refuses, nsrun says which setting refuses and how to allow it.
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

mod support;

mod common;
use common::*;

use std::process::Command;

/// Runs nsrun inside a user namespace of our own, after `setup` (a shell snippet) ran there.
fn nsrun_under(unshare_flags: &[&str], setup: &str) -> std::process::Output {
    let script = format!("{setup} && exec \"$0\" run --rootfs \"$1\" -- /bin/true",);
    // A state directory of its own: as root of its namespace, nsrun would otherwise pick the
    // machine's /var/lib/nsrun, whose files (another root's) it may not read.
    let state = tempfile::tempdir().unwrap();
    Command::new("unshare")
        .env("NSRUN_ROOT", state.path())
        .args(unshare_flags)
        .args(["sh", "-c", &script])
        .arg(nsrun_bin())
        .arg(rootfs())
        .output()
        .expect("unshare (util-linux)")
}

#[test]
fn names_the_sysctl_that_disables_user_namespaces() {
    // The limit is per user namespace, so a test can set it to 0 in one of its own.
    let o = nsrun_under(
        &["--user", "--map-root-user"],
        "echo 0 > /proc/sys/user/max_user_namespaces",
    );
    assert_code(&o, 125);
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("user.max_user_namespaces=0")
            && err.contains("sysctl -w user.max_user_namespaces="),
        "{err}"
    );
}

#[test]
fn explains_a_refused_proc_and_the_runtime_flag_that_allows_it() {
    if !is_root() {
        // Over-mounting the host's /proc needs a mount namespace owned by the initial user
        // namespace, which only root can make; rootless, the kernel check cannot be staged.
        assert!(Command::new("unshare")
            .args(["--mount", "true"])
            .status()
            .map(|s| !s.success())
            .unwrap_or(true));
        return;
    }
    // What Docker and podman do to their containers' /proc.
    let o = nsrun_under(
        &["--mount", "--propagation", "private"],
        "mount --bind /dev/null /proc/timer_list",
    );
    assert_code(&o, 125);
    let err = stderr(&o);
    assert!(
        err.contains("mount a fresh proc on /proc") && err.contains("systempaths=unconfined"),
        "{err}"
    );
    assert!(err.contains("unmask=/proc/*"), "{err}");
}
