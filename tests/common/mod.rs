//! Shared helpers for the integration tests: where the binary and the test rootfs are, and a
//! way to run `nsrun` and look at what it did.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `nsrun` binary under test (`NSRUN_BIN` overrides: CI copies binaries for the rootless run).
pub fn nsrun_bin() -> PathBuf {
    std::env::var_os("NSRUN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_nsrun").into())
}

#[allow(unused_imports)] // not every test crate that includes this module asks
pub use crate::support::in_ci;

/// The busybox rootfs: `NSRUN_TEST_ROOTFS`, else built once under target/ with
/// scripts/mkrootfs-busybox.sh (needs Debian's busybox-static).
pub fn rootfs() -> PathBuf {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("NSRUN_TEST_ROOTFS") {
                return PathBuf::from(p);
            }
            assert!(
                !in_ci(),
                "CI must set NSRUN_TEST_ROOTFS (scripts/test.sh builds it)"
            );
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            let dir = manifest.join("target/test-rootfs/busybox");
            // Test binaries run in parallel: build under a lock, into a fresh name, then rename.
            let lock =
                std::fs::File::create(manifest.join("target/test-rootfs.lock")).expect("lock file");
            nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
                .map(|guard| {
                    if !dir.join("bin/busybox").exists() {
                        let st = Command::new(manifest.join("scripts/mkrootfs-busybox.sh"))
                            .arg(&dir)
                            .status()
                            .expect("mkrootfs");
                        assert!(
                            st.success(),
                            "scripts/mkrootfs-busybox.sh failed (apt-get install busybox-static)"
                        );
                    }
                    drop(guard);
                })
                .map_err(|(_, e)| e)
                .expect("flock");
            dir
        })
        .clone()
}

/// `nsrun run --rootfs ROOTFS <flags> -- <cmd>`.
pub fn nsrun(flags: &[&str], cmd: &[&str]) -> Command {
    let mut c = Command::new(nsrun_bin());
    c.arg("run")
        .arg("--rootfs")
        .arg(rootfs())
        .args(flags)
        .arg("--")
        .args(cmd);
    c.stdin(Stdio::null());
    c
}

/// Runs and collects; panics only if nsrun could not be started.
pub fn run(flags: &[&str], cmd: &[&str]) -> Output {
    nsrun(flags, cmd).output().expect("start nsrun")
}

/// `sh -c SCRIPT` in the sandbox.
pub fn sh(flags: &[&str], script: &str) -> Output {
    run(flags, &["/bin/sh", "-c", script])
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the exit code, showing both streams on failure.
#[track_caller]
pub fn assert_code(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Host uid that container root maps to for this caller (see `nsrun::sandbox::idmap`).
pub fn expected_host_root() -> u32 {
    if is_root() {
        nsrun::ids::DEFAULT_ROOT_ID_BASE
    } else {
        nix::unistd::geteuid().as_raw()
    }
}

/// Pids of processes whose command line contains `token`.
pub fn pids_with(token: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(token)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Polls `cond` every 20 ms until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A string unique to this test process and call, passed as `$0` of a shell so that the
/// processes of a run can be found by their command line.
pub fn token(tag: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("nsrun-test-{tag}-{}-{n}", std::process::id())
}

/// Run cgroups below ours, in every hierarchy: `<our cgroup>/nsrun/<run id>`. Hierarchies are
/// found in /proc/self/mountinfo (v1 controllers by their super options, v2 as cgroup2), so
/// the check looks where the cgroups really are, whatever the host's layout.
pub fn run_cgroups() -> Vec<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    // (mount point, controllers) for each cgroup mount; v2 has no controllers in this sense.
    let mounts: Vec<(String, Option<Vec<String>>)> = mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mut post = post.split_whitespace();
            let fstype = post.next()?;
            let point = pre.split_whitespace().nth(4)?.to_string();
            match fstype {
                "cgroup2" => Some((point, None)),
                "cgroup" => {
                    let opts = post.nth(1)?;
                    Some((point, Some(opts.split(',').map(String::from).collect())))
                }
                _ => None,
            }
        })
        .collect();
    assert!(!mounts.is_empty(), "no cgroup filesystem mounted");
    let mut out = Vec::new();
    for line in std::fs::read_to_string("/proc/self/cgroup")
        .unwrap()
        .lines()
    {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        let mount = mounts.iter().find(|(_, c)| match c {
            None => controllers.is_empty(),
            Some(opts) => {
                !controllers.is_empty()
                    && controllers.split(',').all(|k| opts.iter().any(|o| o == k))
            }
        });
        let Some((point, _)) = mount else { continue };
        let dir = std::path::Path::new(point)
            .join(path.trim_start_matches('/'))
            .join("nsrun");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            out.extend(
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.path().display().to_string()),
            );
        }
    }
    out.sort();
    out
}

/// Starts `nsrun FLAGS -- /bin/sh -c SCRIPT TOKEN` and waits for the script's first line, which
/// must be `ready`: from then on the tool is known to be running.
pub fn spawn_ready(flags: &[&str], script: &str, tok: &str) -> std::process::Child {
    use std::io::{BufRead, BufReader};
    let mut child = nsrun(flags, &["/bin/sh", "-c", script, tok])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    child
}
