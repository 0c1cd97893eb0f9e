//! When the host says no: which setting refused, and the least-privilege way to allow it.
//! Modelled on bubblewrap's errno diagnosis; `--privileged` is never the advice.

use std::path::Path;

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Facts about the host that explain refusals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// `kernel.unprivileged_userns_clone` (Debian/Ubuntu kernels), when present.
    pub unprivileged_userns_clone: Option<String>,
    /// `user.max_user_namespaces`.
    pub max_user_namespaces: Option<String>,
    /// `kernel.apparmor_restrict_unprivileged_userns` (Ubuntu 23.10 and later).
    pub apparmor_restrict: Option<String>,
    /// Whether this process already runs under a seccomp filter (as inside Docker or podman).
    pub seccomp_filtered: bool,
    /// Whether this process seems to run inside a container.
    pub in_container: bool,
    pub root: bool,
}

impl HostFacts {
    /// Reads the facts of this host.
    pub fn probe() -> HostFacts {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        HostFacts {
            unprivileged_userns_clone: read_trim("/proc/sys/kernel/unprivileged_userns_clone"),
            max_user_namespaces: read_trim("/proc/sys/user/max_user_namespaces"),
            apparmor_restrict: read_trim("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
            seccomp_filtered: status
                .lines()
                .any(|l| l.starts_with("Seccomp:") && l.trim_end().ends_with('2')),
            in_container: Path::new("/.dockerenv").exists()
                || Path::new("/run/.containerenv").exists()
                || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
            root: nix::unistd::geteuid().is_root(),
        }
    }
}

const SECCOMP_ADVICE: &str = "this process runs under a seccomp filter (Docker's and podman's default profiles refuse \
namespace creation); start the worker's container with a seccomp profile that also allows clone, clone3, unshare, \
mount, umount2 and pivot_root (e.g. `--security-opt seccomp=PROFILE.json`), not with --privileged";

const APPARMOR_ADVICE: &str = "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1, \
the Ubuntu 24.04 default); allow nsrun alone with a profile: write `abi <abi/4.0>, include <tunables/global> profile nsrun \
/usr/local/bin/nsrun flags=(unconfined) { userns, }` (with nsrun's real path) to /etc/apparmor.d/nsrun and run \
`apparmor_parser -r /etc/apparmor.d/nsrun`";

/// Explains a failed `clone` with namespace flags.
pub fn clone_failure(errno: i32, facts: &HostFacts) -> String {
    let err = nix::errno::Errno::from_raw(errno);
    let why = match errno {
        libc::EPERM | libc::EACCES => {
            if facts.unprivileged_userns_clone.as_deref() == Some("0") && !facts.root {
                "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone=0); enable them with \
                 `sysctl -w kernel.unprivileged_userns_clone=1`"
                    .to_string()
            } else if facts.apparmor_restrict.as_deref() == Some("1") && !facts.root {
                APPARMOR_ADVICE.to_string()
            } else if facts.seccomp_filtered {
                SECCOMP_ADVICE.to_string()
            } else {
                "the kernel refused to create user namespaces (is this process chrooted, or confined by an LSM?)".to_string()
            }
        }
        libc::ENOSPC | libc::EUSERS => match facts.max_user_namespaces.as_deref() {
            Some("0") => "user namespaces are disabled (user.max_user_namespaces=0); enable them with \
                          `sysctl -w user.max_user_namespaces=15000`"
                .to_string(),
            _ => "the limit of user namespaces is reached (user.max_user_namespaces, or nesting deeper than 32)".to_string(),
        },
        libc::EINVAL => "the kernel does not support one of the namespace types (user, mount, pid, net, ipc, uts)".to_string(),
        libc::ENOSYS => SECCOMP_ADVICE.to_string(),
        _ => "creating the namespaces failed".to_string(),
    };
    format!(
        "cannot create the sandbox's namespaces (clone: {}): {why}",
        err.desc()
    )
}

/// Advice for a setup step that failed in the child, if the errno is one the host explains.
pub fn setup_hint(what: &str, errno: i32, facts: &HostFacts) -> Option<String> {
    if errno != libc::EPERM && errno != libc::EACCES {
        return None;
    }
    if what.contains("fresh proc") {
        return Some(
            "the kernel allows a new /proc only where the current one is fully visible; container runtimes mask \
             parts of it: start the worker's container with `--security-opt systempaths=unconfined` (Docker) or \
             `--security-opt unmask=/proc/*` (podman)"
                .to_string(),
        );
    }
    if facts.apparmor_restrict.as_deref() == Some("1") && !facts.root {
        return Some(APPARMOR_ADVICE.to_string());
    }
    if facts.seccomp_filtered
        && (what.contains("mount") || what.contains("pivot_root") || what.contains("unshare"))
    {
        return Some(SECCOMP_ADVICE.to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_setting_that_refuses() {
        let facts = HostFacts {
            unprivileged_userns_clone: Some("0".into()),
            ..Default::default()
        };
        assert!(clone_failure(libc::EPERM, &facts).contains("kernel.unprivileged_userns_clone=1"));
        let facts = HostFacts {
            apparmor_restrict: Some("1".into()),
            ..Default::default()
        };
        assert!(clone_failure(libc::EPERM, &facts).contains("apparmor_parser"));
        let facts = HostFacts {
            seccomp_filtered: true,
            root: true,
            ..Default::default()
        };
        assert!(clone_failure(libc::EPERM, &facts).contains("seccomp"));
        let facts = HostFacts {
            max_user_namespaces: Some("0".into()),
            ..Default::default()
        };
        assert!(clone_failure(libc::ENOSPC, &facts).contains("user.max_user_namespaces=15000"));
        assert!(setup_hint(
            "mount a fresh proc on /proc",
            libc::EPERM,
            &HostFacts::default()
        )
        .unwrap()
        .contains("systempaths=unconfined"));
        assert_eq!(
            setup_hint("mount tmpfs on /tmp", libc::ENOSPC, &facts),
            None
        );
    }
}
