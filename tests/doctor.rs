//! `nsrun doctor`, and nsrun inside a container-like confinement: under Docker's default seccomp
//! profile, under the profile `doctor --seccomp-profile docker` writes, behind a masked /proc, and
//! as root inside a user namespace. The "container" here is an nsrun sandbox, which filters with
//! the profile given and masks /proc as Docker does; scripts/container-test.sh does the same with
//! real Docker and podman.
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

mod support;

mod common;
use common::*;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn doctor(args: &[&str]) -> Output {
    Command::new(nsrun_bin())
        .arg("doctor")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("start nsrun")
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(o), stderr(o)))
}

fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {report}"))
}

#[test]
fn doctor_says_a_confined_run_works_on_this_host() {
    let cache = tempfile::tempdir().unwrap();
    let o = doctor(&["--json", "--root", cache.path().to_str().unwrap()]);
    assert_code(&o, 0);
    let r = json(&o);
    assert_eq!(r["ok"], true, "{r:#}");
    for name in [
        "kernel", "userns", "apparmor", "seccomp", "proc", "sandbox", "idmap", "subids", "cgroups",
        "network", "cache",
    ] {
        let c = check(&r, name);
        assert_ne!(c["status"], "fail", "{c}");
        if c["status"] == "warn" {
            assert!(c["fix"].as_str().is_some_and(|f| !f.is_empty()), "{c}");
        }
    }
    let sandbox = check(&r, "sandbox")["detail"].as_str().unwrap();
    assert!(
        sandbox.contains("read-only root") && sandbox.contains("seccomp"),
        "{sandbox}"
    );
    // The human form: one line per check, and the verdict.
    let o = doctor(&["--root", cache.path().to_str().unwrap()]);
    assert_code(&o, 0);
    assert!(stdout(&o).contains("nsrun can run confined sandboxes here."));
    // Nothing left behind: no probe root of a doctor that is gone (the test cgroup is removed
    // by the same code path as a run's, tested in confine_cgroup).
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid: u32 = name
                .strip_prefix("nsrun-doctor-")?
                .split('-')
                .next()?
                .parse()
                .ok()?;
            (!Path::new(&format!("/proc/{pid}")).exists()).then_some(name)
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn bad_doctor_flags_are_one_line_125() {
    let o = doctor(&["--seccomp-profile", "lxc"]);
    assert_code(&o, 125);
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    let o = doctor(&["--proc", "shared"]);
    assert_code(&o, 125);
    assert!(stderr(&o).contains("expected fresh or host-bind"));
}

/// A directory that can serve as root for running the host's nsrun (dynamically linked): the
/// host's /usr (and /lib* where they are real directories) bound read-only, nsrun at /nsrun,
/// the busybox rootfs at /bb.
struct HostRoot {
    dir: tempfile::TempDir,
    binds: Vec<String>,
}

impl HostRoot {
    fn new() -> HostRoot {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut binds = vec![
            "/usr:/usr:ro".to_string(),
            format!("{}:/nsrun:ro", nsrun_bin().display()),
            format!("{}:/bb:ro", rootfs().display()),
        ];
        for d in ["proc", "dev", "sys", "tmp", "run", "usr", "bb"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("nsrun"), "").unwrap();
        for d in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let host = Path::new("/").join(d);
            match std::fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() => std::os::unix::fs::symlink(
                    std::fs::read_link(&host).unwrap(),
                    dir.path().join(d),
                )
                .unwrap(),
                Ok(m) if m.is_dir() => {
                    std::fs::create_dir(dir.path().join(d)).unwrap();
                    binds.push(format!("/{d}:/{d}:ro"));
                }
                _ => {}
            }
        }
        HostRoot { dir, binds }
    }

    /// Runs `/nsrun ARGS` in an nsrun sandbox confined by `profile` (its masked /proc included).
    fn nsrun_inside(&self, profile: &Path, args: &[&str]) -> Output {
        let mut c = Command::new(nsrun_bin());
        c.arg("run").arg("--rootfs").arg(self.dir.path());
        for b in &self.binds {
            c.args(["-v", b]);
        }
        c.arg("--security-opt")
            .arg(format!("seccomp={}", profile.display()))
            .args(["-e", "NSRUN_ROOT=/tmp/nsrun", "--", "/nsrun"])
            .args(args)
            .stdin(Stdio::null());
        c.output().expect("start nsrun")
    }
}

fn docker_default() -> PathBuf {
    // nsrun's own default has Docker's default's rules (less a few newer calls): it refuses
    // what Docker's refuses, which is what these tests need of it.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/default.json")
}

fn derived_profile(dir: &Path) -> PathBuf {
    let o = doctor(&["--seccomp-profile", "docker"]);
    assert_code(&o, 0);
    let path = dir.join("nsrun-seccomp.json");
    std::fs::write(&path, &o.stdout).unwrap();
    path
}

#[test]
fn under_dockers_default_profile_doctor_and_run_blame_the_filter() {
    let root = HostRoot::new();
    let o = root.nsrun_inside(&docker_default(), &["doctor", "--json"]);
    assert_code(&o, 1);
    let r = json(&o);
    assert_eq!(r["ok"], false);
    let sc = check(&r, "seccomp");
    assert_eq!(sc["status"], "fail", "{sc}");
    for call in [
        "clone (EPERM)",
        "unshare (EPERM)",
        "mount (EPERM)",
        "umount2 (EPERM)",
    ] {
        assert!(sc["detail"].as_str().unwrap().contains(call), "{sc}");
    }
    assert!(sc["fix"]
        .as_str()
        .unwrap()
        .contains("--seccomp-profile docker"));
    let us = check(&r, "userns");
    assert_eq!(us["status"], "fail");
    let fix = us["fix"].as_str().unwrap();
    assert!(fix.contains("seccomp") && !fix.contains("sysctl"), "{us}");
    assert_eq!(check(&r, "sandbox")["status"], "fail");

    // A run says the same, in one line, with the recipe.
    let o = root.nsrun_inside(
        &docker_default(),
        &["run", "--rootfs", "/bb", "--", "/bin/true"],
    );
    assert_code(&o, 125);
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("seccomp filter refuses clone")
            && err.contains("nsrun doctor --seccomp-profile docker")
            && err.contains("systempaths=unconfined")
            && !err.contains("sysctl"),
        "{err}"
    );
}

#[test]
fn under_the_derived_profile_only_the_masked_proc_is_left() {
    let tmp = tempfile::tempdir().unwrap();
    let profile = derived_profile(tmp.path());
    let root = HostRoot::new();
    let o = root.nsrun_inside(&profile, &["doctor", "--json"]);
    assert_code(&o, 1);
    let r = json(&o);
    assert_eq!(check(&r, "seccomp")["status"], "ok", "{r:#}");
    assert_eq!(check(&r, "userns")["status"], "ok", "{r:#}");
    let proc = check(&r, "proc");
    assert_eq!(proc["status"], "fail", "{proc}");
    assert!(
        proc["detail"]
            .as_str()
            .unwrap()
            .contains("`--proc host-bind` works"),
        "{proc}"
    );
    assert!(proc["fix"].as_str().unwrap().contains("unmask=/proc/*"));
    // Root inside the sandbox's user namespace: the inner nsrun maps what that namespace has.
    let idmap = check(&r, "idmap")["detail"].as_str().unwrap().to_string();
    assert!(idmap.contains("root in a user namespace"), "{idmap}");

    // A run refuses in one line, naming the /proc mask and its fixes...
    let o = root.nsrun_inside(&profile, &["run", "--rootfs", "/bb", "--", "/bin/true"]);
    assert_code(&o, 125);
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("mount a fresh proc") && err.contains("systempaths=unconfined"),
        "{err}"
    );
    // ...and runs confined with the opt-in.
    let script = "touch /x 2>/dev/null && echo rw || echo ro; grep Seccomp: /proc/self/status; \
                  sed 1,2d /proc/self/net/dev | cut -d: -f1 | tr -d ' '; echo pid $$";
    let o = root.nsrun_inside(
        &profile,
        &[
            "run",
            "--proc",
            "host-bind",
            "--rootfs",
            "/bb",
            "--",
            "/bin/sh",
            "-c",
            script,
        ],
    );
    assert_code(&o, 0);
    let out = stdout(&o);
    assert!(out.starts_with("ro\nSeccomp:\t2\nlo\npid "), "{out}");
    // The host-bound /proc shows the outer sandbox's processes: that is why it is opt-in.
    let pid: u32 = out.trim().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(pid <= 3, "the tool has its own pid namespace: {out}");
}

/// Runs `cmd` as root of a new user namespace whose maps are `uid_map` and `gid_map` (written
/// by us as root, by newuidmap/newgidmap otherwise).
fn in_userns(uid_map: &[(u32, u32, u32)], cmd: &[&str]) -> Output {
    let mut child = Command::new("unshare")
        .args(["--user", "sh", "-c", "read _ && exec \"$@\"", "sh"])
        .args(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux)");
    let pid = child.id();
    // Wait until unshare(1) has made the namespace (it execs sh in it).
    let own = std::fs::read_link("/proc/self/ns/user").unwrap();
    assert!(wait_until(std::time::Duration::from_secs(5), || {
        std::fs::read_link(format!("/proc/{pid}/ns/user")).is_ok_and(|l| l != own)
    }));
    let me = nix::unistd::geteuid().as_raw();
    for (file, tool) in [("uid_map", "newuidmap"), ("gid_map", "newgidmap")] {
        if is_root() {
            let text: String = uid_map
                .iter()
                .map(|(i, o, c)| format!("{i} {o} {c}\n"))
                .collect();
            std::fs::write(format!("/proc/{pid}/{file}"), text).unwrap();
        } else {
            let mut c = Command::new(tool);
            c.arg(pid.to_string());
            for (i, o, n) in uid_map {
                // Our own id for 0 (newgidmap: our gid), subordinate ids for the rest.
                let o = if *i == 0 {
                    if tool == "newgidmap" {
                        nix::unistd::getegid().as_raw()
                    } else {
                        me
                    }
                } else {
                    *o
                };
                c.args([i.to_string(), o.to_string(), n.to_string()]);
            }
            let st = c.status().expect(tool);
            assert!(st.success(), "{tool} failed");
        }
    }
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    child.wait_with_output().unwrap()
}

/// This user's first subordinate id range, if any.
fn subids() -> Option<(u32, u32)> {
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()??
        .name;
    let text = std::fs::read_to_string("/etc/subuid").ok()?;
    let gtext = std::fs::read_to_string("/etc/subgid").ok()?;
    let find = |t: &str| {
        t.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() != 3 || f[0] != me {
                return None;
            }
            Some((f[1].parse().ok()?, f[2].parse().ok()?))
        })
    };
    let u: (u32, u32) = find(&text)?;
    (find(&gtext)? == u).then_some(u)
}

#[test]
fn root_inside_a_user_namespace_maps_what_it_has() {
    // A rootless container's shape: root is one id, 1..65536 are others.
    let base = if is_root() {
        200_000
    } else {
        match subids() {
            Some((start, count)) if count >= 65536 => start,
            _ => {
                assert!(
                    !in_ci(),
                    "CI gives nsrun-test 65536 subordinate ids with the same start"
                );
                return;
            }
        }
    };
    let script = "cat /proc/self/uid_map /proc/self/gid_map; id -u";
    let bin = nsrun_bin();
    let rootfs = rootfs();
    let cmd = [
        bin.to_str().unwrap(),
        "run",
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        script,
    ];
    let o = in_userns(&[(0, 0, 1), (1, base, 65536)], &cmd);
    assert_code(&o, 0);
    let maps: Vec<Vec<String>> = stdout(&o)
        .lines()
        .take(2)
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect();
    // Container 0..65535 are ids 1..65536 of the namespace: never its root.
    assert_eq!(maps, [["0", "1", "65536"], ["0", "1", "65536"]]);
    assert_eq!(stdout(&o).lines().nth(2), Some("0"));

    // An explicit --uid-base the namespace does not map: refused up front, in one line.
    let explicit = [&cmd[..2], &["--uid-base", "1000000000"], &cmd[2..]].concat();
    let o = in_userns(&[(0, 0, 1), (1, base, 65536)], &explicit);
    assert_code(&o, 125);
    let err = stderr(&o);
    assert!(
        err.lines().count() == 1 && err.contains("--uid-base 1000000000: those ids are not mapped"),
        "{err}"
    );

    // A namespace that maps only root: the run maps that one id.
    let o = in_userns(&[(0, 0, 1)], &cmd);
    assert_code(&o, 0);
    assert!(
        stdout(&o).starts_with(&format!("{:>10} {:>10} {:>10}\n", 0, 0, 1)),
        "{}",
        stdout(&o)
    );
}
