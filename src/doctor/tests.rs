//! Each check's diagnosis, driven with made-up facts.

use super::probe::{Inside, Probe, Stage, NAMESPACES};
use super::*;

fn outer() -> Vec<String> {
    NAMESPACES.iter().map(|n| format!("{n}:[1]")).collect()
}

/// A host where everything works, as an unprivileged user.
fn good() -> Facts {
    Facts {
        kernel: "6.8.0-generic".into(),
        namespaces_missing: vec![],
        host: HostFacts {
            max_user_namespaces: Some("15000".into()),
            ..Default::default()
        },
        seccomp_mode: "0".into(),
        seccomp_filters: Some("0".into()),
        syscalls: syscall_probe::NEEDED
            .iter()
            .map(|(n, _)| (*n, Verdict::Allowed))
            .collect(),
        probe: Probe::Ran {
            inside: Inside {
                pid: 2,
                root_write_errno: libc::EROFS,
                seccomp: "2".into(),
                no_new_privs: "1".into(),
                namespaces: NAMESPACES.iter().map(|n| format!("{n}:[2]")).collect(),
                interfaces: vec!["lo".into()],
            },
            setup_ms: 7.0,
        },
        outer_namespaces: outer(),
        probe_host_bind: None,
        proc_mode: ProcMode::Fresh,
        proc_masks: vec![],
        idmap: Ok("rootless: container uids 0 → 1000".into()),
        subuid: true,
        subgid: true,
        newuidmap: Some(true),
        newgidmap: Some(true),
        cgroup: CgroupFacts::Cgroup {
            v2: true,
            unenforced: vec![],
        },
        pasta: Some("/usr/bin/pasta".into()),
        slirp4netns: None,
        dev_net_tun: true,
        cache: Ok(CacheFacts {
            path: "/home/u/.local/share/nsrun".into(),
            existing: "/home/u".into(),
            fs_type: "ext4".into(),
            free_bytes: 50 << 30,
            writable: true,
            noexec: false,
        }),
    }
}

fn check<'a>(r: &'a Report, name: &str) -> &'a Check {
    r.checks.iter().find(|c| c.name == name).unwrap()
}

fn failed(stage: Stage, message: &str, fix: Option<&str>) -> Probe {
    Probe::Failed {
        stage,
        message: message.into(),
        fix: fix.map(String::from),
    }
}

#[test]
fn a_good_host_is_ok_everywhere() {
    let r = diagnose(&good());
    assert!(r.ok);
    assert_eq!(r.checks.len(), 11);
    for c in &r.checks {
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert!(c.fix.is_none());
    }
    assert!(r
        .render()
        .ends_with("nsrun can run confined sandboxes here.\n"));
}

#[test]
fn every_non_ok_check_has_a_one_line_fix() {
    let mut f = good();
    f.kernel = "5.4.0".into();
    f.host.apparmor_restrict = Some("1".into());
    f.probe = failed(Stage::IdMap, "writing /proc/9/uid_map: EPERM", None);
    f.subuid = false;
    f.cgroup = CgroupFacts::Rlimits {
        reason: "no cgroup could be created".into(),
        unenforced: vec!["--cpus".into()],
    };
    f.pasta = None;
    let r = diagnose(&f);
    assert!(!r.ok);
    for c in r.checks.iter().filter(|c| c.status != Status::Ok) {
        let fix = c.fix.as_deref().unwrap();
        assert!(!fix.is_empty() && !fix.contains('\n'), "{c:?}");
        assert!(!fix.contains("--privileged`"), "{c:?}");
    }
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["ok"], false);
    assert_eq!(json["checks"][0]["name"], "kernel");
    assert_eq!(json["checks"][0]["status"], "fail");
}

#[test]
fn userns_sysctls() {
    let mut f = good();
    f.host.max_user_namespaces = Some("0".into());
    let c = diagnose(&f).checks[1].clone();
    assert_eq!((c.name, c.status), ("userns", Status::Fail));
    assert!(c
        .fix
        .unwrap()
        .contains("sysctl -w user.max_user_namespaces=15000"));

    let mut f = good();
    f.host.unprivileged_userns_clone = Some("0".into());
    let r = diagnose(&f);
    let c = check(&r, "userns");
    assert_eq!(c.status, Status::Fail);
    assert!(c
        .fix
        .as_deref()
        .unwrap()
        .contains("kernel.unprivileged_userns_clone=1"));
    // Root is not affected by that sysctl.
    f.host.root = true;
    assert_eq!(check(&diagnose(&f), "userns").status, Status::Ok);
}

#[test]
fn seccomp_refusals_are_named_and_fixed_with_the_recipe_not_a_sysctl() {
    let mut f = good();
    f.seccomp_mode = "2".into();
    f.seccomp_filters = Some("1".into());
    f.host.seccomp_filtered = true;
    f.host.unprivileged_userns_clone = Some("1".into());
    for (name, v) in f.syscalls.iter_mut() {
        if *name != "clone" {
            *v = Verdict::Refused(libc::EPERM);
        }
    }
    f.syscalls[0].1 = Verdict::Refused(libc::EPERM);
    f.probe = failed(
        Stage::Namespaces,
        "cannot create the sandbox's namespaces (clone: Operation not permitted)",
        Some(&diagnose::seccomp_advice(&["clone"])),
    );
    let r = diagnose(&f);
    assert!(!r.ok);
    let c = check(&r, "seccomp");
    assert_eq!(c.status, Status::Fail);
    assert!(c.detail.contains("refuses clone (EPERM)"), "{}", c.detail);
    let fix = c.fix.as_deref().unwrap();
    assert!(fix.contains("--seccomp-profile docker") && fix.contains("systempaths=unconfined"));
    let u = check(&r, "userns");
    assert_eq!(u.status, Status::Fail);
    assert!(!u.fix.as_deref().unwrap().contains("sysctl"), "{u:?}");
    // /proc was never reached: not tested, not blamed...
    let p = check(&r, "proc");
    assert_eq!(p.status, Status::Warn);
    assert!(p.detail.starts_with("not tested"));
    // ...unless it is covered, as engines cover it: then the kernel's rule says enough.
    f.proc_masks = vec!["/proc/bus".into(), "/proc/kcore".into()];
    let r = diagnose(&f);
    let p = check(&r, "proc");
    assert_eq!(p.status, Status::Fail);
    assert!(
        p.detail
            .contains("2 path(s) under /proc are covered (e.g. /proc/bus)"),
        "{}",
        p.detail
    );
    assert!(p.fix.as_deref().unwrap().contains("systempaths=unconfined"));
}

#[test]
fn seccomp_allowing_everything_is_ok_and_untested_calls_are_a_warning() {
    let mut f = good();
    f.seccomp_mode = "2".into();
    f.seccomp_filters = Some("1".into());
    assert_eq!(check(&diagnose(&f), "seccomp").status, Status::Ok);
    f.syscalls[4].1 = Verdict::Untested;
    let r = diagnose(&f);
    let c = check(&r, "seccomp");
    assert_eq!(c.status, Status::Warn);
    assert!(
        c.detail.contains("pivot_root could not be tested"),
        "{}",
        c.detail
    );
}

#[test]
fn a_refused_proc_says_whether_host_bind_works() {
    let mut f = good();
    f.proc_masks = vec!["/proc/kcore".into(), "/proc/keys".into()];
    f.probe = failed(
        Stage::Proc,
        "sandbox setup failed: mount a fresh proc on /proc: EPERM",
        Some(diagnose::PROC_ADVICE),
    );
    f.probe_host_bind = Some(good().probe);
    let r = diagnose(&f);
    assert!(!r.ok);
    let c = check(&r, "proc");
    assert_eq!(c.status, Status::Fail);
    assert!(c.detail.contains("2 masked path(s)") && c.detail.contains("`--proc host-bind` works"));
    assert!(c.fix.as_deref().unwrap().contains("unmask=/proc/*"));
    assert_eq!(check(&r, "sandbox").status, Status::Fail);

    // Asked for host-bind: a warning that says it is weaker.
    let mut f = good();
    f.proc_mode = ProcMode::HostBind;
    let r = diagnose(&f);
    assert!(r.ok);
    assert_eq!(check(&r, "proc").status, Status::Warn);
}

#[test]
fn apparmor_restriction_fails_only_when_the_probe_fails() {
    let mut f = good();
    f.host.apparmor_restrict = Some("1".into());
    assert_eq!(check(&diagnose(&f), "apparmor").status, Status::Ok);
    f.probe = failed(
        Stage::Setup,
        "sandbox setup failed: mount tmpfs on /tmp: EPERM",
        None,
    );
    let r = diagnose(&f);
    let c = check(&r, "apparmor");
    assert_eq!(c.status, Status::Fail);
    assert!(c
        .fix
        .as_deref()
        .unwrap()
        .contains("profiles/apparmor/nsrun"));
    f.host.root = true;
    assert_eq!(check(&diagnose(&f), "apparmor").status, Status::Ok);
}

#[test]
fn a_probe_that_runs_unconfined_fails() {
    let mut f = good();
    if let Probe::Ran { inside, .. } = &mut f.probe {
        inside.namespaces[2] = "pid:[1]".into();
    }
    let r = diagnose(&f);
    assert!(!r.ok);
    assert!(check(&r, "sandbox").detail.contains("no pid namespace"));
}

#[test]
fn limits_subids_network_and_cache_warn_or_fail() {
    let mut f = good();
    f.cgroup = CgroupFacts::Rlimits {
        reason: "no cgroup could be created: cannot create /sys/fs/cgroup/x".into(),
        unenforced: vec!["--cpus".into()],
    };
    f.subuid = false;
    f.newgidmap = None;
    f.pasta = None;
    let r = diagnose(&f);
    assert!(r.ok, "warnings do not fail");
    assert!(check(&r, "cgroups").detail.contains("not enforced: --cpus"));
    assert!(check(&r, "subids")
        .detail
        .contains("no /etc/subuid entry, newuidmap/newgidmap not installed"));
    assert_eq!(check(&r, "network").status, Status::Warn);

    f.pasta = Some("/usr/bin/pasta".into());
    f.dev_net_tun = false;
    assert!(check(&diagnose(&f), "network")
        .fix
        .as_deref()
        .unwrap()
        .contains("--device /dev/net/tun"));

    let mut f = good();
    if let Ok(c) = &mut f.cache {
        c.noexec = true;
    }
    assert_eq!(check(&diagnose(&f), "cache").status, Status::Fail);
    if let Ok(c) = &mut f.cache {
        c.noexec = false;
        c.free_bytes = 100 << 20;
    }
    assert_eq!(check(&diagnose(&f), "cache").status, Status::Warn);
    if let Ok(c) = &mut f.cache {
        c.writable = false;
    }
    assert_eq!(check(&diagnose(&f), "cache").status, Status::Fail);
}

#[test]
fn old_kernels_and_missing_namespaces_fail() {
    let mut f = good();
    f.kernel = "5.10.0".into();
    assert_eq!(check(&diagnose(&f), "kernel").status, Status::Fail);
    let mut f = good();
    f.namespaces_missing = vec!["user"];
    assert!(check(&diagnose(&f), "kernel")
        .detail
        .contains("no user namespaces"));
}

#[test]
fn proc_masks_are_read_from_mountinfo() {
    let mi = "22 1 0:5 / /proc rw - proc proc rw\n\
              30 22 0:6 /null /proc/kcore ro - devtmpfs udev rw\n\
              31 22 0:7 / /proc/sys/fs/binfmt_misc rw - binfmt_misc b rw\n\
              32 1 0:8 / /sys rw - sysfs s rw\n";
    assert_eq!(proc_masks(mi), ["/proc/kcore"]);
}

#[test]
fn an_lsm_profile_that_refuses_mounts_is_named() {
    let mut f = good();
    f.host.lsm_label = Some("docker-default (enforce)".into());
    let r = diagnose(&f);
    let c = check(&r, "apparmor");
    assert_eq!(c.status, Status::Ok);
    assert!(c.detail.contains("docker-default (enforce)"));
    f.probe = failed(
        Stage::Setup,
        "sandbox setup failed: mount tmpfs on /tmp: EPERM",
        None,
    );
    let r = diagnose(&f);
    let c = check(&r, "apparmor");
    assert_eq!(c.status, Status::Fail);
    assert!(c.fix.as_deref().unwrap().contains("`pivot_root,`"));
    // A seccomp refusal explains the failure better: the LSM is not blamed.
    f.syscalls[2].1 = Verdict::Refused(libc::EPERM);
    assert_eq!(check(&diagnose(&f), "apparmor").status, Status::Ok);
}
