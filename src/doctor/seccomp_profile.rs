//! The seccomp profile for the worker's own container: the engine's default plus exactly the
//! calls nsrun needs ([`crate::sandbox::syscall_probe::NEEDED`]), nothing else.
//!
//! Docker's default is shipped in `profiles/docker-default.json` and compiled in, so the profile
//! follows it whenever that file is refreshed; the calls are appended as one unconditional rule.
//! `clone3` keeps Docker's ENOSYS answer (nsrun clones with `clone`, whose flags a filter can
//! read), and no capability-conditional rule is touched.

use serde_json::Value;

use crate::sandbox::syscall_probe::NEEDED;

/// Docker's default seccomp profile (moby's `profiles/seccomp/default.json`, Apache-2.0), as
/// shipped in `profiles/docker-default.json`.
pub const DOCKER_DEFAULT: &str = include_str!("../../profiles/docker-default.json");

/// The engines whose default profile nsrun can extend.
pub const ENGINES: &[&str] = &["docker"];

/// Docker's default profile plus one rule allowing the calls nsrun needs, pretty-printed JSON.
///
/// ```
/// let json = nsrun::doctor::seccomp_profile::for_engine("docker").unwrap();
/// assert!(json.contains("pivot_root"));
/// assert!(nsrun::doctor::seccomp_profile::for_engine("lxc").is_err());
/// ```
pub fn for_engine(engine: &str) -> Result<String, String> {
    if engine != "docker" {
        return Err(format!(
            "--seccomp-profile {engine:?}: expected one of {} (podman's default already allows what nsrun needs)",
            ENGINES.join(", ")
        ));
    }
    let mut profile: Value = serde_json::from_str(DOCKER_DEFAULT)
        .map_err(|e| format!("profiles/docker-default.json: {e}"))?;
    let rules = profile
        .get_mut("syscalls")
        .and_then(Value::as_array_mut)
        .ok_or("profiles/docker-default.json has no syscalls list")?;
    rules.push(serde_json::json!({
        "names": NEEDED.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
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
}
