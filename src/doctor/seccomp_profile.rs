//! The seccomp profile for the worker's own container: the engine's default plus exactly the
//! calls nsrun needs ([`crate::sandbox::syscall_probe::NEEDED`]), nothing else.
//!
//! For Docker the base is nsrun's own `profiles/default.json` (compiled in): our profile in
//! Docker's format, with the rules of Docker's default but for a handful of calls newer than it
//! (`fanotify_mark`, `listmount`, `statmount`, the `*xattrat` family, `uretprobe`) — so the
//! worker's container is confined at least as tightly as Docker's default would, and the profile
//! follows ours; podman's is read from the machine
//! (`/etc/containers/seccomp.json`, else containers-common's `/usr/share/containers/seccomp.json`),
//! so it is the one that podman itself uses. The calls are appended as one unconditional rule,
//! and taken out of any rule that refuses them (podman's default refuses `sethostname` to
//! containers without CAP_SYS_ADMIN; libseccomp rejects two unconditional rules with different
//! actions for one call). `clone3` keeps its ENOSYS answer (nsrun clones with `clone`, whose
//! flags a filter can read); nothing else is touched.

use serde_json::Value;

use crate::sandbox::syscall_probe::NEEDED;

/// The base of the Docker recipe's profile: nsrun's own Docker-format default
/// (`profiles/default.json`; see the module documentation).
pub const DOCKER_DEFAULT: &str = crate::sandbox::seccomp::DEFAULT_PROFILE;

/// The engines whose default profile nsrun can extend.
pub const ENGINES: &[&str] = &["docker", "podman"];

/// Where podman's default profile is looked for, first found wins (as podman does).
pub const PODMAN_PROFILES: &[&str] = &[
    "/etc/containers/seccomp.json",
    "/usr/share/containers/seccomp.json",
];

/// The engine's default profile plus one rule allowing the calls nsrun needs, pretty-printed
/// JSON.
///
/// ```
/// let json = nsrun::doctor::seccomp_profile::for_engine("docker").unwrap();
/// assert!(json.contains("pivot_root"));
/// assert!(nsrun::doctor::seccomp_profile::for_engine("lxc").is_err());
/// ```
pub fn for_engine(engine: &str) -> Result<String, String> {
    match engine {
        "docker" => extend(DOCKER_DEFAULT, "profiles/default.json"),
        "podman" => {
            let path = PODMAN_PROFILES
                .iter()
                .find(|p| std::path::Path::new(p).is_file())
                .ok_or_else(|| {
                    format!(
                        "--seccomp-profile podman: podman's default profile is not installed ({}); \
                         apt-get install golang-github-containers-common, or use --seccomp-profile docker",
                        PODMAN_PROFILES.join(", ")
                    )
                })?;
            let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
            extend(&text, path)
        }
        other => Err(format!(
            "--seccomp-profile {other:?}: expected one of {}",
            ENGINES.join(", ")
        )),
    }
}

/// `base` (a Docker-format profile, read from `source`) with the calls nsrun needs allowed.
pub fn extend(base: &str, source: &str) -> Result<String, String> {
    let needed: Vec<&str> = NEEDED.iter().map(|(n, _)| *n).collect();
    let mut profile: Value = serde_json::from_str(base).map_err(|e| format!("{source}: {e}"))?;
    let rules = profile
        .get_mut("syscalls")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| format!("{source} has no syscalls list"))?;
    // Refusals of the needed calls go (an ALLOW rule with conditions may stay: same action).
    rules.retain_mut(|rule| {
        if rule.get("action").and_then(Value::as_str) == Some("SCMP_ACT_ALLOW") {
            return true;
        }
        let Some(names) = rule.get_mut("names").and_then(Value::as_array_mut) else {
            return true;
        };
        names.retain(|n| !n.as_str().is_some_and(|n| needed.contains(&n)));
        !names.is_empty()
    });
    rules.push(serde_json::json!({
        "names": needed,
        "action": "SCMP_ACT_ALLOW",
        "comment": "nsrun: creating its sandboxes' namespaces and mounts (clone with CLONE_NEW* flags, unshare, \
mount, umount2, pivot_root, mount_setattr, sethostname); each run confines its tool with its own filter",
    }));
    let mut out = serde_json::to_string_pretty(&profile).map_err(|e| e.to_string())?;
    out.push('\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::caps::CapSet;
    use crate::sandbox::seccomp::profile::{Action, Profile};

    /// Docker's 14 default capabilities: the ones its profile's conditional rules see.
    fn docker_caps() -> CapSet {
        let extra = [
            "NET_RAW",
            "MKNOD",
            "SETFCAP",
            "SETPCAP",
            "SYS_CHROOT",
            "AUDIT_WRITE",
        ];
        CapSet::resolve(&extra.map(String::from), &[]).unwrap()
    }

    fn allowed_unconditionally(p: &Profile, name: &str) -> bool {
        let r = p
            .resolve(docker_caps(), "SCMP_ARCH_X86_64", (6, 1))
            .unwrap();
        r.rules.iter().any(|rule| {
            rule.action == Action::Allow
                && rule.conds.is_empty()
                && rule.names.iter().any(|n| n == name)
        })
    }

    #[test]
    fn docker_default_refuses_what_nsrun_needs_and_the_derived_profile_allows_it() {
        let docker = Profile::parse(DOCKER_DEFAULT.as_bytes()).unwrap();
        let derived = Profile::parse(for_engine("docker").unwrap().as_bytes()).unwrap();
        for (name, _) in NEEDED {
            assert!(!allowed_unconditionally(&docker, name), "{name}");
            assert!(allowed_unconditionally(&derived, name), "{name}");
        }
    }

    #[test]
    fn the_derived_profile_is_docker_default_plus_one_rule() {
        let docker: Value = serde_json::from_str(DOCKER_DEFAULT).unwrap();
        let mut derived: Value = serde_json::from_str(&for_engine("docker").unwrap()).unwrap();
        let rules = derived["syscalls"].as_array_mut().unwrap();
        let added = rules.pop().unwrap();
        assert_eq!(derived, docker);
        let names: Vec<&str> = added["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "clone",
                "unshare",
                "mount",
                "umount2",
                "pivot_root",
                "mount_setattr",
                "sethostname"
            ]
        );
        // Nothing else loosened: clone3 still answers ENOSYS, ptrace still needs its rule.
        let p = Profile::parse(for_engine("docker").unwrap().as_bytes()).unwrap();
        assert!(!allowed_unconditionally(&p, "clone3"));
        assert!(!allowed_unconditionally(&p, "setns"));
        assert!(!allowed_unconditionally(&p, "keyctl"));
    }

    #[test]
    fn refusals_of_the_needed_calls_are_taken_out() {
        // podman's default refuses sethostname without CAP_SYS_ADMIN.
        let base = r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["read", "sethostname"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["sethostname"], "action": "SCMP_ACT_ERRNO", "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["sethostname", "keyctl"], "action": "SCMP_ACT_ERRNO"}
        ]}"#;
        let out: Value = serde_json::from_str(&extend(base, "test").unwrap()).unwrap();
        let rules = out["syscalls"].as_array().unwrap();
        assert_eq!(rules.len(), 3);
        assert_eq!(
            rules[0]["names"],
            serde_json::json!(["read", "sethostname"])
        );
        assert_eq!(rules[1]["names"], serde_json::json!(["keyctl"]));
        assert_eq!(rules[2]["action"], "SCMP_ACT_ALLOW");
        let p = Profile::parse(extend(base, "test").unwrap().as_bytes()).unwrap();
        assert!(allowed_unconditionally(&p, "sethostname"));
        assert!(!allowed_unconditionally(&p, "keyctl"));
        assert!(for_engine("lxc").unwrap_err().contains("docker, podman"));
    }
}
