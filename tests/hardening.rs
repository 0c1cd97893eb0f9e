//! What a hostile tool and hostile input found against the first confinement, each closed and
//! kept closed: nsrun's own command line inside the run, read-only mounts a CAP_SYS_ADMIN tool
//! could make writable, rootless limits a tool escaped by switching uid, stdio that hands the
//! tool a host directory, a seccomp cache trusted blindly, sizes that mean "unlimited", and the
//! smaller ones. Every test here failed on the code before the fix; CI runs them as root and as
//! an unprivileged user with subordinate ids.
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

mod support;

mod common;
#[path = "confine_common/mod.rs"]
mod confine_common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{assert_code, is_root, run, sh, stderr, stdout};

/// A one-line error on stderr with exit status 125, naming `needle`.
#[track_caller]
fn assert_refused(o: &Output, needle: &str) {
    assert_code(o, 125);
    let err = stderr(o);
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.contains(needle), "wanted {needle:?} in: {err}");
}

/// Item 1: pid 1 is a fork of nsrun that never execs; its argv and environment (credentials,
/// host paths) must not be readable from inside.
#[test]
fn nothing_of_the_callers_command_line_or_environment_is_readable_inside() {
    let secret_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(secret_dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let vol = format!("{}:/data:ro", secret_dir.path().display());
    let o = common::nsrun(
        &["--creds", "someone:hunter2-argv", "-v", &vol],
        &[
            "/bin/sh",
            "-c",
            "cat /proc/1/cmdline; echo; cat /proc/1/environ; echo; \
             for p in /proc/[0-9]*; do cat $p/cmdline; echo; done",
        ],
    )
    .env("NSRUN_TEST_SECRET", "hunter2-env")
    .output()
    .unwrap();
    assert_code(&o, 0);
    let out = stdout(&o);
    for secret in ["hunter2-argv", "hunter2-env", "someone", "--creds"] {
        assert!(!out.contains(secret), "{secret:?} readable inside:\n{out}");
    }
    let dir = secret_dir.path().to_string_lossy();
    assert!(
        !out.contains(dir.as_ref()),
        "the volume's host path is readable:\n{out}"
    );
    assert!(out.contains("nsrun-init"), "pid 1 names itself:\n{out}");
}

/// Item 2: `ro` holds whatever the tool may do with CAP_SYS_ADMIN, seccomp or not: remount,
/// bind-then-remount, unmount of the masks; the rootfs and /sys stay read-only too.
#[test]
fn read_only_mounts_stay_read_only_with_sys_admin() {
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::write(vol.join("f"), "original\n").unwrap();
    // Owned by container root, so that only the mount's read-only flag stands in the way.
    let root = common::expected_host_root();
    std::os::unix::fs::chown(&vol, Some(root), Some(root)).unwrap();
    std::os::unix::fs::chown(vol.join("f"), Some(root), Some(root)).unwrap();
    std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let script = "mount -o remount,bind,rw /data; echo remounted >> /data/f; \
                  mkdir -p /tmp/b && mount -o bind /data /tmp/b && \
                  mount -o remount,bind,rw /tmp/b; echo rebound >> /tmp/b/f; \
                  umount /data; umount /proc/sysrq-trigger; umount -l /proc/acpi; \
                  mount -o remount,rw /; touch /rootfs-written; \
                  mount -o remount,rw /sys; mount -o remount,rw /proc/sys; \
                  grep -c . /proc/self/mountinfo; \
                  awk '$5==\"/\"||$5==\"/sys\"||$5==\"/proc/sys\"||$5==\"/data\"{print $5, $6}' \
                  /proc/self/mountinfo; [ -e /rootfs-written ] && echo ROOTFS-WRITTEN";
    let rw = format!("{}:/data", vol.display());
    let ro = format!("{rw}:ro");
    // Control: without :ro the same tool can write, so a refusal below is the mount's doing.
    let o = sh(
        &["--cap-add", "SYS_ADMIN", "-v", &rw],
        "echo writable >> /data/f",
    );
    assert_code(&o, 0);
    assert_eq!(
        std::fs::read_to_string(vol.join("f")).unwrap(),
        "original\nwritable\n"
    );
    std::fs::write(vol.join("f"), "original\n").unwrap();

    let baseline = sh(&["-v", &ro], "grep -c . /proc/self/mountinfo");
    assert_code(&baseline, 0);
    let mounts: usize = stdout(&baseline).trim().parse().unwrap();
    for extra in [&[][..], &["--security-opt", "seccomp=unconfined"][..]] {
        let mut flags = vec!["--cap-add", "SYS_ADMIN", "-v", &ro];
        flags.extend_from_slice(extra);
        let o = sh(&flags, script);
        let out = stdout(&o);
        assert_eq!(
            std::fs::read_to_string(vol.join("f")).unwrap(),
            "original\n",
            "{extra:?}: the read-only volume was written:\n{out}{}",
            stderr(&o)
        );
        let mut lines = out.lines();
        let count: usize = lines.next().unwrap_or("0").trim().parse().unwrap_or(0);
        // One more mount is the tool's own bind on /tmp/b: none of ours went away.
        assert!(
            count >= mounts,
            "{extra:?}: a mount was removed ({count} < {mounts}):\n{out}"
        );
        assert!(
            !out.contains("ROOTFS-WRITTEN"),
            "{extra:?}: the rootfs was written"
        );
        let watched: Vec<&str> = lines.collect();
        assert_eq!(
            watched.len(),
            4,
            "{extra:?}: /, /sys, /proc/sys, /data:\n{out}"
        );
        for l in watched {
            assert!(
                l.split(' ').nth(1).unwrap_or("").starts_with("ro"),
                "{extra:?}: {l}"
            );
        }
    }
}

/// Item 2, also: with CAP_SYS_ADMIN the tool cannot mount a cgroupfs (whose root would be the
/// caller's cgroup when the run has none of its own), nor a fresh procfs, and nsrun's other
/// promises still hold: it runs as root of its namespace, can mount a tmpfs of its own, and
/// binds a low port.
#[test]
fn sys_admin_tool_is_nested_but_usable() {
    let o = sh(
        &["--cap-add", "SYS_ADMIN"],
        "mkdir /tmp/cg /tmp/p /tmp/t; \
         mount -t cgroup2 none /tmp/cg && echo cgroup2-mounted; \
         mount -t cgroup -o memory none /tmp/cg && echo cgroup1-mounted; \
         mount -t proc proc /tmp/p && echo proc-mounted; \
         mount -t tmpfs -o size=1m none /tmp/t && echo tmpfs-ok; \
         (nc -l -p 80 -e true &) ; sleep 0.3; netstat -ltn | grep -q ':80 ' && echo port-80-ok; \
         id -u",
    );
    let out = stdout(&o);
    assert!(!out.contains("cgroup2-mounted"), "{out}");
    assert!(!out.contains("cgroup1-mounted"), "{out}");
    assert!(!out.contains("proc-mounted"), "{out}");
    assert!(out.contains("tmpfs-ok"), "{out}{}", stderr(&o));
    assert!(out.contains("port-80-ok"), "{out}{}", stderr(&o));
    assert!(out.trim_end().ends_with('0'), "{out}");
}

/// Item 3: `--pids-limit` holds for the whole run even when the tool spreads its processes
/// over several uids (rootless with subordinate ids it is an RLIMIT_NPROC, counted per uid).
#[test]
fn pids_limit_holds_across_uids() {
    let probe = confine_common::probe();
    let vol = format!("{}:/probe:ro", probe.display());
    let userns = if is_root() { "auto" } else { "subid" };
    let o = run(
        &["--pids-limit", "20", "--userns", userns, "-v", &vol],
        &["/probe", "uidbomb", "4", "12"],
    );
    let (out, err) = (stdout(&o), stderr(&o));
    if !is_root() && err.contains("subordinate") {
        // No /etc/subuid entry for this user: a single id cannot switch uid anyway.
        assert!(!common::in_ci(), "CI's user has subordinate ids: {err}");
        return;
    }
    let line = out
        .lines()
        .find(|l| l.starts_with("uidbomb "))
        .unwrap_or_else(|| panic!("{out}{err}"));
    let n: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    // pid 1 and the probe itself count too.
    assert!(
        n + 2 <= 20,
        "{n} processes under --pids-limit 20 ({line}):\n{err}"
    );
    if err.contains("RLIMIT_NPROC") {
        assert!(err.contains("SETUID"), "{err}");
        assert!(
            line.ends_with("EPERM"),
            "the uid switch was allowed: {line}"
        );
        assert_eq!(err.matches("RLIMIT_NPROC").count(), 1, "{err}");
    }
}

/// Item 3: where `--memory` falls back to RLIMIT_DATA, the run says what that leaves out.
#[test]
fn memory_fallback_names_what_it_does_not_count() {
    let o = run(&["--memory", "32m"], &["true"]);
    assert_code(&o, 0);
    let err = stderr(&o);
    if err.contains("not enforced") {
        assert!(
            err.contains("RLIMIT_DATA") && err.contains("shared memory"),
            "{err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    } else {
        assert!(err.is_empty(), "{err}");
    }
}

/// Item 4: stdin, stdout or stderr that are directories or O_PATH descriptors are refused before
/// anything is created.
#[test]
fn directory_and_o_path_stdio_are_refused() {
    let root = std::fs::File::open("/").unwrap();
    let o = common::nsrun(&["-i"], &["ls", "/proc/self/fd/0/"])
        .stdin(Stdio::from(root))
        .output()
        .unwrap();
    assert_refused(&o, "stdin is a directory");
    assert!(!stdout(&o).contains("etc"), "{}", stdout(&o));

    let etc = std::fs::File::open("/etc").unwrap();
    let o = common::nsrun(&[], &["ls", "/proc/self/fd/1/"])
        .stdout(Stdio::from(etc))
        .output()
        .unwrap();
    assert_refused(&o, "stdout is a directory");

    use std::os::unix::fs::OpenOptionsExt;
    let opath = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open("/etc/hostname")
        .unwrap();
    let o = common::nsrun(&["-i"], &["cat"])
        .stdin(Stdio::from(opath))
        .output()
        .unwrap();
    assert_refused(&o, "stdin is an O_PATH descriptor");

    // stderr a directory: nsrun cannot say why on it, but it refuses (and runs nothing).
    let etc = std::fs::File::open("/etc").unwrap();
    let marker = tempfile::tempdir().unwrap();
    std::fs::set_permissions(marker.path(), PermissionsExt::from_mode(0o777)).unwrap();
    let vol = format!("{}:/m", marker.path().display());
    let o = common::nsrun(&["-v", &vol], &["touch", "/m/ran"])
        .stderr(Stdio::from(etc))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125));
    assert!(!marker.path().join("ran").exists());
}

/// Item 5: the compiled-BPF cache is verified before use: an allow-all program dropped in its
/// place is not loaded (the run is still filtered, with a warning), a truncated one does not
/// break runs.
#[test]
fn a_tampered_seccomp_cache_is_not_loaded() {
    let state = tempfile::tempdir().unwrap();
    let root = state.path().to_str().unwrap();
    // `unshare -U` is refused by the default profile; without a filter it works.
    let probe = "unshare -U true && echo UNFILTERED || echo filtered";
    let o = sh(&["--root", root], probe);
    assert_code(&o, 0);
    assert!(stdout(&o).contains("filtered") && !stdout(&o).contains("UNFILTERED"));
    let unconfined = sh(
        &["--root", root, "--security-opt", "seccomp=unconfined"],
        probe,
    );
    assert!(
        stdout(&unconfined).contains("UNFILTERED"),
        "the probe can tell: {}",
        stdout(&unconfined)
    );

    let cache: Vec<_> = std::fs::read_dir(state.path().join("seccomp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bpf"))
        .collect();
    assert_eq!(cache.len(), 1, "{cache:?}");
    let allow_all: Vec<u8> = [
        &0x06u16.to_ne_bytes()[..],
        &[0, 0],
        &0x7fff_0000u32.to_ne_bytes(),
    ]
    .concat();
    let good = std::fs::read(&cache[0]).unwrap();
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 5);
    for (what, bytes) in [("allow-all", allow_all), ("truncated", truncated)] {
        std::fs::write(&cache[0], &bytes).unwrap();
        let o = sh(&["--root", root], probe);
        assert_code(&o, 0);
        assert!(
            stdout(&o).contains("filtered") && !stdout(&o).contains("UNFILTERED"),
            "{what} cache loaded: {}",
            stdout(&o)
        );
        let err = stderr(&o);
        assert!(
            err.contains("seccomp cache") && err.contains("compiling the profile again"),
            "{what}: {err}"
        );
        assert_eq!(
            std::fs::read(&cache[0]).unwrap(),
            good,
            "{what} entry not replaced"
        );
    }
    // A good entry that others may write is not trusted either.
    std::fs::set_permissions(&cache[0], PermissionsExt::from_mode(0o666)).unwrap();
    let o = sh(&["--root", root], probe);
    assert!(
        stderr(&o).contains("lets others write it"),
        "{}",
        stderr(&o)
    );
}

/// Item 6: sizes that would mean "unlimited" (zero, overflow) are refused with 125.
#[test]
fn zero_and_overflowing_sizes_are_refused() {
    for (flags, needle) in [
        (&["--tmpfs", "/x:0"][..], "size of 0"),
        (&["--tmpfs-size", "0"][..], "size of 0"),
        (&["--tmpfs", "/x:99999999999999999999"][..], "larger than"),
        (
            &["--tmpfs-size", "99999999999999999999k"][..],
            "larger than",
        ),
        (&["--tmpfs", "/x:size=0"][..], "size of 0"),
        (&["--memory", "99999999999999999999"][..], "larger than"),
        (&["--tmpfs", "/x:lots"][..], "invalid size"),
    ] {
        let o = run(flags, &["true"]);
        assert_refused(&o, needle);
    }
}

/// Item 7: mounts over what nsrun mounts itself, bad hostnames and variable names, a pids limit
/// that leaves no room, and clap's errors: one line each, status 125.
#[test]
fn smaller_refusals_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().to_str().unwrap();
    let over = |t: &str| format!("{src}:{t}");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["-v".into(), over("/proc")], "cannot mount over /proc"),
        (
            vec!["-v".into(), over("/proc/sys")],
            "cannot mount over /proc",
        ),
        (vec!["-v".into(), over("/sys/")], "cannot mount over /sys"),
        (
            vec!["--tmpfs".into(), "/proc".into()],
            "cannot mount over /proc",
        ),
        (
            vec!["--tmpfs".into(), "/dev".into()],
            "cannot mount over /dev",
        ),
        (
            vec!["--tmpfs".into(), "/dev/pts".into()],
            "cannot mount over /dev/pts",
        ),
        (vec!["-h".into(), "a/b".into()], "invalid hostname"),
        (vec!["-h".into(), "a\nb".into()], "invalid hostname"),
        (
            vec!["-e".into(), "A B=1".into()],
            "invalid environment variable",
        ),
        (vec!["-e".into(), "".into()], "invalid environment variable"),
        (
            vec!["-e".into(), "=x".into()],
            "invalid environment variable",
        ),
        (vec!["--pids-limit".into(), "1".into()], "--pids-limit 1"),
        (vec!["--memory".into(), "-5".into()], "--memory"),
        (vec!["--pids-limit".into(), "-5".into()], "--pids-limit"),
        (vec!["--no-such-flag".into()], "--no-such-flag"),
    ];
    for (flags, needle) in cases {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let o = run(&flags, &["true"]);
        assert_refused(&o, needle);
    }
    // /dev/shm is the user's to replace, as in Docker.
    let o = sh(
        &["--tmpfs", "/dev/shm:8m"],
        "grep ' /dev/shm ' /proc/self/mountinfo",
    );
    assert_code(&o, 0);
    assert!(stdout(&o).contains("size=8192k"), "{}", stdout(&o));
}

/// Item 7: `nsrun gc` removes the lock files a failed pull leaves.
#[test]
fn gc_removes_locks_of_failed_pulls() {
    let root = tempfile::tempdir().unwrap();
    let layout = root.path().join("not-an-oci-layout");
    std::fs::create_dir(&layout).unwrap();
    std::fs::write(layout.join("index.json"), "{\"schemaVersion\": 2, \"manifests\": [{\"mediaType\": \"application/vnd.oci.image.manifest.v1+json\", \"digest\": \"sha256:0000000000000000000000000000000000000000000000000000000000000000\", \"size\": 2}]}").unwrap();
    let cache = root.path().join("cache");
    let nsrun = |args: &[&str]| {
        Command::new(common::nsrun_bin())
            .args(args)
            .env("NSRUN_ROOT", &cache)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let o = nsrun(&["pull", &format!("oci:{}", layout.display())]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    let locks = |p: &Path| -> Vec<String> {
        std::fs::read_dir(p.join("locks"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "refs.lock")
                    .collect()
            })
            .unwrap_or_default()
    };
    // Whether this failure left one depends on how far the pull got; make sure one is there.
    std::fs::create_dir_all(cache.join("locks")).unwrap();
    std::fs::write(cache.join("locks/deadbeef-squash.lock"), "").unwrap();
    std::fs::write(cache.join("locks/deadbeef-squash.use"), "").unwrap();
    assert!(!locks(&cache).is_empty());
    let o = nsrun(&["gc"]);
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("removed the locks of failed pull deadbeef-squash"),
        "{}",
        stdout(&o)
    );
    assert_eq!(locks(&cache), Vec::<String>::new());
}
