//! When the host says no: which setting refused, and the least-privilege way to allow it.
//! Modelled on bubblewrap's errno diagnosis; `--privileged` is never the advice.

use std::path::Path;

use super::syscall_probe;

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
    /// The calls nsrun needs that the seccomp filter refuses, as tested by
    /// [`syscall_probe::probe_stateless`] (empty when unfiltered).
    pub seccomp_refused: Vec<&'static str>,
    /// The AppArmor profile or SELinux label confining this process, unless unconfined.
    pub lsm_label: Option<String>,
    /// Whether this process seems to run inside a container.
    pub in_container: bool,
    pub root: bool,
}

impl HostFacts {
    /// Reads the facts of this host.
    pub fn probe() -> HostFacts {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let seccomp_filtered = status
            .lines()
            .any(|l| l.starts_with("Seccomp:") && l.trim_end().ends_with('2'));
        HostFacts {
            unprivileged_userns_clone: read_trim("/proc/sys/kernel/unprivileged_userns_clone"),
            max_user_namespaces: read_trim("/proc/sys/user/max_user_namespaces"),
            apparmor_restrict: read_trim("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
            seccomp_filtered,
            seccomp_refused: if seccomp_filtered {
                syscall_probe::refused(&syscall_probe::probe_stateless())
            } else {
                Vec::new()
            },
            lsm_label: lsm_label(),
            in_container: Path::new("/.dockerenv").exists()
                || Path::new("/run/.containerenv").exists()
                || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
            root: nix::unistd::geteuid().is_root(),
        }
    }
}

/// The LSM confinement of this process: AppArmor's profile (`docker-default (enforce)`) or an
/// SELinux label; `None` when unconfined or when no LSM reports one.
fn lsm_label() -> Option<String> {
    [
        "/proc/self/attr/apparmor/current",
        "/proc/self/attr/current",
    ]
    .iter()
    .find_map(|p| read_trim(p))
    .map(|l| l.trim_end_matches('\0').to_string())
    .filter(|l| !l.is_empty() && l != "unconfined" && !l.starts_with("unconfined "))
}

/// Why an LSM label is the likely cause of a refused mount, and what to change.
pub fn lsm_advice(label: &str) -> String {
    format!(
        "this process is confined by the LSM profile {label:?}, which refuses mounts (Docker's and \
         containerd's default AppArmor profiles do): give the worker's container an AppArmor profile made from \
         the engine's default plus `mount,`, `umount,`, `pivot_root,` and `userns,` (docs/deploy.md)"
    )
}

/// The least-privilege recipe for running nsrun inside a container, in one line.
pub const CONTAINER_RECIPE: &str = "run the worker's container as a non-root user with the seccomp profile \
`nsrun doctor --seccomp-profile docker` (or `podman`) writes to nsrun-seccomp.json (the engine's default plus clone, \
unshare, mount, umount2, pivot_root, mount_setattr and sethostname) and /proc unmasked: Docker \
`--security-opt seccomp=nsrun-seccomp.json --security-opt systempaths=unconfined`, podman \
`--security-opt seccomp=nsrun-seccomp.json --security-opt unmask=/proc/*`; never --privileged (docs/deploy.md)";

/// Why a seccomp filter is the cause, naming the refused calls, and the recipe.
pub fn seccomp_advice(refused: &[&str]) -> String {
    let calls = if refused.is_empty() {
        "the namespace and mount calls nsrun needs".to_string()
    } else {
        refused.join(", ")
    };
    format!("this process's seccomp filter refuses {calls} (as container engines' default profiles do): {CONTAINER_RECIPE}")
}

/// Why a fresh /proc is refused, and the runtime flags that allow it.
pub const PROC_ADVICE: &str = "the kernel allows a new /proc only where the current one is fully visible, and container \
runtimes mask parts of it: start the worker's container with `--security-opt systempaths=unconfined` (Docker) or \
`--security-opt unmask=/proc/*` (podman), or run with `--proc host-bind` (weaker: the tool sees the outer processes)";

/// The AppArmor profile nsrun ships for Ubuntu's userns restriction, and how to load it.
pub const APPARMOR_ADVICE: &str = "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1, \
the Ubuntu 24.04 default); allow nsrun alone: install profiles/apparmor/nsrun (set nsrun's real path in it) as \
/etc/apparmor.d/nsrun and run `apparmor_parser -r /etc/apparmor.d/nsrun`";

/// Explains a failed `clone` with namespace flags.
pub fn clone_failure(errno: i32, facts: &HostFacts) -> String {
    let err = nix::errno::Errno::from_raw(errno);
    let why = match errno {
        libc::EPERM | libc::EACCES => {
            // The filter is tested, not assumed: a filter that refuses clone is the cause even
            // where a sysctl would refuse too, and a sysctl is not blamed for a filter's refusal.
            if facts.seccomp_refused.contains(&"clone") {
                seccomp_advice(&facts.seccomp_refused)
            } else if facts.unprivileged_userns_clone.as_deref() == Some("0") && !facts.root {
                "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone=0); enable them with \
                 `sysctl -w kernel.unprivileged_userns_clone=1`"
                    .to_string()
            } else if facts.apparmor_restrict.as_deref() == Some("1") && !facts.root {
                APPARMOR_ADVICE.to_string()
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
        libc::ENOSYS => seccomp_advice(&facts.seccomp_refused),
        _ => "creating the namespaces failed".to_string(),
    };
    format!(
        "cannot create the sandbox's namespaces (clone: {}): {why}",
        err.desc()
    )
}

/// Advice for a setup step that failed in the child, if the errno is one the host explains.
pub fn setup_hint(what: &str, errno: i32, facts: &HostFacts) -> Option<String> {
    if errno != libc::EPERM && errno != libc::EACCES && errno != libc::ENOSYS {
        return None;
    }
    let refused = |call: &str| facts.seccomp_refused.contains(&call);
    let call = if what.contains("pivot_root") {
        "pivot_root"
    } else if what.contains("unshare") {
        "unshare"
    } else if what.contains("sethostname") {
        "sethostname"
    } else if what.contains("read-only") {
        "mount_setattr"
    } else {
        "mount"
    };
    // Inside the child nsrun holds every capability of its own user namespace: a refusal of
    // pivot_root or sethostname there comes from a filter or an LSM, never from a sysctl.
    let filter_refuses =
        refused(call) || (facts.seccomp_filtered && matches!(call, "pivot_root" | "sethostname"));
    if filter_refuses {
        let mut calls = facts.seccomp_refused.clone();
        if !calls.contains(&call) {
            calls.push(call);
        }
        return Some(seccomp_advice(&calls));
    }
    if what.contains("fresh proc") {
        return Some(PROC_ADVICE.to_string());
    }
    if facts.apparmor_restrict.as_deref() == Some("1") && !facts.root {
        return Some(APPARMOR_ADVICE.to_string());
    }
    if let Some(label) = &facts.lsm_label {
        if call != "sethostname" {
            return Some(lsm_advice(label));
        }
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
            seccomp_refused: vec!["clone", "unshare"],
            root: true,
            ..Default::default()
        };
        let msg = clone_failure(libc::EPERM, &facts);
        assert!(
            msg.contains("seccomp filter refuses clone, unshare"),
            "{msg}"
        );
        assert!(
            msg.contains("nsrun doctor --seccomp-profile docker"),
            "{msg}"
        );
        assert!(!msg.contains("privileged`") && msg.contains("never --privileged"));
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

    #[test]
    fn a_filter_that_refuses_is_blamed_before_a_sysctl() {
        // Both would refuse: the filter is what the user must change first, and the sysctl
        // must not be named (changing it would not help).
        let facts = HostFacts {
            unprivileged_userns_clone: Some("0".into()),
            apparmor_restrict: Some("1".into()),
            seccomp_filtered: true,
            seccomp_refused: vec!["clone"],
            ..Default::default()
        };
        let msg = clone_failure(libc::EPERM, &facts);
        assert!(msg.contains("seccomp") && !msg.contains("sysctl"), "{msg}");
        // Filtered, but the filter lets clone through: then the sysctl is the cause.
        let facts = HostFacts {
            unprivileged_userns_clone: Some("0".into()),
            seccomp_filtered: true,
            seccomp_refused: vec!["mount"],
            ..Default::default()
        };
        let msg = clone_failure(libc::EPERM, &facts);
        assert!(
            msg.contains("unprivileged_userns_clone=1") && !msg.contains("seccomp"),
            "{msg}"
        );
    }

    #[test]
    fn setup_refusals_name_the_filter_or_the_proc_mask() {
        let filtered = HostFacts {
            seccomp_filtered: true,
            seccomp_refused: vec!["mount", "umount2", "pivot_root"],
            ..Default::default()
        };
        // A filter refusing mount explains a refused /proc better than the mask does.
        let hint = setup_hint("mount a fresh proc on /proc", libc::EPERM, &filtered).unwrap();
        assert!(
            hint.contains("refuses mount, umount2, pivot_root"),
            "{hint}"
        );
        let allows_mount = HostFacts {
            seccomp_filtered: true,
            seccomp_refused: vec![],
            ..Default::default()
        };
        let hint = setup_hint("mount a fresh proc on /proc", libc::EPERM, &allows_mount).unwrap();
        assert!(
            hint.contains("unmask=/proc/*") && hint.contains("--proc host-bind"),
            "{hint}"
        );
        // pivot_root refused inside our own user namespace can only be a filter (or an LSM).
        let hint = setup_hint(
            "pivot_root into the container's root",
            libc::EPERM,
            &allows_mount,
        );
        assert!(hint.unwrap().contains("seccomp"));
        assert_eq!(
            setup_hint(
                "pivot_root into the container's root",
                libc::EPERM,
                &HostFacts::default()
            ),
            None
        );
    }
}
