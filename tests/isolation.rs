//! What the tool can see and change: a read-only root, capped scratch space, its own processes
//! and network, bind mounts owned by unprivileged ids.
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

mod support;

mod common;
use common::*;

use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::PermissionsExt;

#[test]
fn root_is_read_only_and_tmp_is_capped() {
    let o = sh(&[], "touch /x; echo $?; mkdir /etc/new; echo $?");
    assert!(
        stderr(&o).contains("Read-only file system"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stdout(&o), "1\n1\n");

    let o = sh(
        &["--tmpfs-size", "1m"],
        "echo ok > /tmp/a && cat /tmp/a; dd if=/dev/zero of=/tmp/big bs=64k count=32; echo dd=$?",
    );
    assert!(stdout(&o).starts_with("ok\n"), "{}", stdout(&o));
    assert!(stdout(&o).contains("dd=1"), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("No space left on device"),
        "{}",
        stderr(&o)
    );

    // --tmpfs adds more capped scratch space, even where the rootfs has no directory.
    let o = sh(
        &["--tmpfs", "/scratch:512k"],
        "dd if=/dev/zero of=/scratch/f bs=64k count=16 2>&1; df -k /scratch | tail -1",
    );
    assert!(
        stdout(&o).contains("No space left on device"),
        "{}",
        stdout(&o)
    );
    assert!(!rootfs().join("scratch").exists());
}

#[test]
fn only_the_containers_processes_are_visible() {
    let o = sh(
        &[],
        "ls -d /proc/[0-9]* | sed 's,/proc/,,' | sort -n | tr '\\n' ' '",
    );
    assert_code(&o, 0);
    let pids: Vec<u32> = stdout(&o)
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    // pid 1 (our init), 2 (sh), and the pipeline's own processes: all small numbers.
    assert_eq!(pids[..2], [1, 2], "{pids:?}");
    assert!(pids.len() <= 8 && pids.iter().all(|&p| p < 20), "{pids:?}");
}

#[test]
fn network_has_only_loopback_and_it_is_up() {
    let o = sh(
        &[],
        "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; cat /sys/class/net/lo/operstate",
    );
    assert_code(&o, 0);
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "lo");
    assert_eq!(lines.len(), 2, "{lines:?}");
    // UNKNOWN is what the kernel says of an up loopback; DOWN would mean we failed to raise it.
    assert_eq!(lines[1], "unknown");
}

#[test]
fn files_created_in_a_bind_mount_belong_to_an_unprivileged_host_id() {
    let dir = tempfile::tempdir().unwrap();
    // As root the container's root is host uid 1000000000, which needs the right to write here.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(dir.path().join("in.txt"), "from host\n").unwrap();
    let vol = format!("{}:/data", dir.path().display());
    let o = sh(
        &["-v", &vol],
        "cat /data/in.txt && echo from container > /data/out.txt",
    );
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "from host\n");
    let meta = std::fs::metadata(dir.path().join("out.txt")).unwrap();
    assert_eq!(meta.uid(), expected_host_root());
    assert_ne!(meta.uid(), 0, "container root must never be host root");

    // :ro really is read-only.
    let vol = format!("{}:/data:ro", dir.path().display());
    let o = sh(&["-v", &vol], "echo x > /data/nope");
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("Read-only file system"),
        "{}",
        stderr(&o)
    );
    assert!(!dir.path().join("nope").exists());

    // A file can be bound onto a path the rootfs lacks.
    let vol = format!("{}:/etc/tool.conf:ro", dir.path().join("in.txt").display());
    let o = sh(&["-v", &vol], "cat /etc/tool.conf");
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "from host\n");
}

#[test]
fn missing_mountpoints_never_write_into_the_rootfs() {
    // A rootfs with nothing but busybox: no /proc, /dev, /tmp, /sys, /etc.
    let rootfs_dir = tempfile::tempdir().unwrap();
    let r = rootfs_dir.path();
    std::fs::set_permissions(r, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(r.join("bin")).unwrap();
    std::fs::copy(rootfs().join("bin/busybox"), r.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", r.join("bin/sh")).unwrap();
    let before = listing(r);

    let data = tempfile::tempdir().unwrap();
    let vol = format!("{}:/mnt/deep/data", data.path().display());
    let o = std::process::Command::new(nsrun_bin())
        .args([
            "run",
            "--rootfs",
            r.to_str().unwrap(),
            "-v",
            &vol,
            "-w",
            "/work",
            "--",
            "/bin/sh",
            "-c",
        ])
        .arg("/bin/busybox ls / | /bin/busybox tr '\\n' ' '; /bin/busybox cat /proc/self/comm")
        .output()
        .unwrap();
    assert_code(&o, 0);
    for dir in ["dev", "mnt", "proc", "tmp", "work"] {
        assert!(
            stdout(&o).contains(dir),
            "{dir} missing from: {}",
            stdout(&o)
        );
    }
    assert_eq!(listing(r), before, "the rootfs directory was modified");
}

fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        out.push(e.file_name().to_string_lossy().into_owned());
        if e.file_type().unwrap().is_dir() {
            out.extend(
                listing(&e.path())
                    .into_iter()
                    .map(|n| format!("{}/{n}", e.file_name().to_string_lossy())),
            );
        }
    }
    out.sort();
    out
}

/// The uid_map the tool sees, as (inside, outside, count) triples.
fn uid_map(flags: &[&str]) -> Vec<(u64, u64, u64)> {
    let o = sh(flags, "cat /proc/self/uid_map");
    assert_code(&o, 0);
    stdout(&o)
        .lines()
        .map(|l| {
            let f: Vec<u64> = l.split_whitespace().map(|x| x.parse().unwrap()).collect();
            (f[0], f[1], f[2])
        })
        .collect()
}

#[test]
fn id_mappings_never_map_host_root() {
    let me = nix::unistd::geteuid().as_raw() as u64;
    if is_root() {
        assert_eq!(uid_map(&[]), [(0, 1_000_000_000, 65536)]);
        assert_eq!(
            uid_map(&["--uid-base", "2000000000"]),
            [(0, 2_000_000_000, 65536)]
        );
        // Single id as root: still an unprivileged host id, the base plus the uid asked for.
        assert_eq!(
            uid_map(&["--userns", "single", "-u", "1000"]),
            [(1000, 1_000_001_000, 1)]
        );
        // The user's supplementary group (users, 100) is not mapped there: it is left out.
        let o = sh(&["--userns", "single", "-u", "tool"], "id -G");
        assert_eq!(stdout(&o), "1000\n");
    } else {
        // Rootless, no helper: the caller is the one id, and it is whatever uid the tool runs as.
        assert_eq!(uid_map(&["--userns", "single"]), [(0, me, 1)]);
        assert_eq!(
            uid_map(&["--userns", "single", "-u", "1000"]),
            [(1000, me, 1)]
        );
        let o = sh(
            &["--userns", "single", "-u", "1000:100"],
            "id -u; id -g; cat /proc/self/gid_map",
        );
        assert_code(&o, 0);
        let gid = nix::unistd::getegid().as_raw();
        assert_eq!(
            stdout(&o).split_whitespace().collect::<Vec<_>>(),
            ["1000", "100", "100", &gid.to_string(), "1"]
        );
        // With /etc/subuid (CI gives the test user a range): podman's layout.
        let has_subid = std::fs::read_to_string("/etc/subuid").is_ok_and(|s| {
            let name = nix::unistd::User::from_uid(nix::unistd::geteuid())
                .unwrap()
                .unwrap()
                .name;
            s.lines().any(|l| l.starts_with(&format!("{name}:")))
        });
        if has_subid {
            let map = uid_map(&["--userns", "subid"]);
            assert_eq!(map[0], (0, me, 1));
            assert_eq!((map[1].0, map[1].2), (1, 65535));
            assert_eq!(
                uid_map(&[]),
                map,
                "auto uses the subordinate ids when configured"
            );
            // ... for a tool that starts as root; a non-root tool gets its uid mapped to the
            // caller, whose files (an image's, squashed) are then its own.
            assert_eq!(uid_map(&["-u", "1000"]), [(1000, me, 1)]);
        } else {
            assert!(!in_ci(), "CI gives the test user subordinate ids");
            let o = sh(&["--userns", "subid"], "true");
            assert_code(&o, 125);
            assert!(stderr(&o).contains("/etc/subuid"), "{}", stderr(&o));
        }
    }
}

#[test]
fn no_id_arithmetic_reaches_host_root() {
    if !is_root() {
        // Rootless, every mapping is of the caller's own ids: nothing to wrap around to.
        let o = sh(&["--userns", "single", "-u", "3294967296"], "id -u");
        assert_code(&o, 0);
        return;
    }
    for flags in [
        &["--userns", "single", "-u", "3294967296"][..],
        &["--uid-base", "0"],
        &["--uid-base", "4294967000"],
    ] {
        let o = sh(flags, "id -u");
        assert_code(&o, 125);
        assert!(
            stderr(&o).contains("range") || stderr(&o).contains("unprivileged"),
            "{flags:?}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn a_symlink_planted_in_a_volume_cannot_redirect_a_later_mount() {
    let outer = tempfile::tempdir().unwrap();
    let inner = tempfile::tempdir().unwrap();
    // Aimed at the child's view of the host during setup.
    std::os::unix::fs::symlink("../../old/etc", outer.path().join("sub")).unwrap();
    let v1 = format!("{}:/data", outer.path().display());
    let v2 = format!("{}:/data/sub:ro", inner.path().display());
    let o = sh(&["-v", &v1, "-v", &v2], "true");
    assert_code(&o, 125);
    assert!(
        stderr(&o).contains("/data/sub") && stderr(&o).contains("symbolic links"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn read_only_volumes_are_read_only_all_the_way_down() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o777)).unwrap();
    // A mount below the volume's source (only root can make one on the host).
    let mounted = is_root()
        && nix::mount::mount(
            Some("tmpfs"),
            &sub,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("mode=777"),
        )
        .is_ok();
    let vol = format!("{}:/data:ro", dir.path().display());
    let o = sh(
        &["-v", &vol],
        "touch /data/top; touch /data/sub/f; ls /data/sub | wc -l",
    );
    if mounted {
        nix::mount::umount(&sub).unwrap();
    }
    assert_eq!(
        stderr(&o).matches("Read-only file system").count(),
        2,
        "{}",
        stderr(&o)
    );
    assert_eq!(stdout(&o).trim(), "0");
}

#[test]
fn a_rootfs_that_folds_dev_onto_tmp_is_refused() {
    let r = tempfile::tempdir().unwrap();
    std::fs::set_permissions(r.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(r.path().join("bin")).unwrap();
    std::fs::create_dir_all(r.path().join("tmp")).unwrap();
    std::fs::copy(rootfs().join("bin/busybox"), r.path().join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("tmp", r.path().join("dev")).unwrap();
    let o = std::process::Command::new(nsrun_bin())
        .args([
            "run",
            "--rootfs",
            r.path().to_str().unwrap(),
            "--",
            "/bin/busybox",
            "true",
        ])
        .output()
        .unwrap();
    assert_code(&o, 125);
    assert!(
        stderr(&o).contains("/dev and /tmp the same place"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn even_cap_sys_admin_cannot_make_the_shared_rootfs_writable() {
    let marker = format!("poison-{}", std::process::id());
    let script =
        format!("mount -o remount,rw /; mount -o remount,rw,bind /; touch /{marker}; echo $?");
    for flags in [
        &[][..],
        &[
            "--cap-add",
            "SYS_ADMIN",
            "--security-opt",
            "seccomp=unconfined",
        ],
    ] {
        let o = sh(flags, &script);
        assert_eq!(stdout(&o), "1\n", "{flags:?}: {}", stderr(&o));
        assert!(
            !rootfs().join(&marker).exists(),
            "{flags:?} wrote into the rootfs"
        );
    }
}

/// The tool's CapInh, CapPrm and CapEff as hex strings.
fn cap_sets(rootfs: &std::path::Path, flags: &[&str]) -> Vec<String> {
    let o = std::process::Command::new(nsrun_bin())
        .args(["run", "--rootfs", rootfs.to_str().unwrap()])
        .args(flags)
        .args([
            "--",
            "/bin/sh",
            "-c",
            "grep -E '^Cap(Inh|Prm|Eff)' /proc/self/status",
        ])
        .output()
        .unwrap();
    assert_code(&o, 0);
    stdout(&o)
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
        .collect()
}

#[test]
fn file_capabilities_give_a_non_root_tool_nothing() {
    let none = "0000000000000000";
    assert_eq!(cap_sets(&rootfs(), &["-u", "1000"]), [none, none, none]);
    // Container root keeps the default set, but never in the inheritable set.
    assert_eq!(cap_sets(&rootfs(), &[])[0], none);
    if !is_root() {
        return; // setting file capabilities on the host needs CAP_SETFCAP there
    }
    // CVE-2022-24769: a binary with inheritable file capabilities, run by a non-root tool,
    // gains them at exec if the process's inheritable set holds them.
    let copy = tempfile::tempdir().unwrap();
    let r = copy.path().join("rootfs");
    assert!(std::process::Command::new("cp")
        .arg("-a")
        .arg(rootfs())
        .arg(&r)
        .status()
        .unwrap()
        .success());
    let st = std::process::Command::new("setcap")
        .args([
            "-n",
            &expected_host_root().to_string(),
            "cap_dac_override+ei",
        ])
        .arg(r.join("bin/busybox"))
        .status()
        .expect("setcap (libcap2-bin)");
    assert!(st.success());
    assert_eq!(cap_sets(&r, &["-u", "1000"]), [none, none, none]);
}
