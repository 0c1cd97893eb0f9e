//! `nsrun doctor`: will a confined run work here, and if not, which setting refuses and the
//! smallest change that allows it.
//!
//! Facts are gathered first ([`Facts::gather`]: sysctls, a per-call test of the seccomp filter,
//! a real probe sandbox, a real cgroup, the cache directory…), then judged by pure functions
//! ([`diagnose()`]) that the unit tests drive with made-up facts. Nothing is guessed: where a fact
//! could not be established the check says "not tested" and why.
//!
//! The probe's tool is the running executable itself (`/proc/self/exe`): a program other than
//! `nsrun` that gathers facts must call [`run_if_probe`] first thing in `main`, as it would
//! [`crate::helper::run_if_helper`].
//!
//! ```no_run
//! nsrun::doctor::run_if_probe();
//! let facts = nsrun::doctor::Facts::gather(&nsrun::doctor::Options::default());
//! let report = nsrun::doctor::diagnose(&facts);
//! println!("{}", report.render());
//! std::process::exit(if report.ok { 0 } else { 1 });
//! ```

pub mod probe;
pub mod seccomp_profile;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::sandbox::cgroup::{self, Enforcement, Limits};
use crate::sandbox::diagnose::{self, HostFacts};
use crate::sandbox::idmap::{self, Caller, IdMap, UsernsMode};
use crate::sandbox::spec::ProcMode;
use crate::sandbox::syscall_probe::{self, Verdict};

pub use probe::run_if_probe;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// A confined run works, but something is weaker or missing (named in the detail).
    Warn,
    /// A confined run will not work until the fix is applied.
    Fail,
}

/// One check: what was found and, unless it is ok, the fix in one line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }
    fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Every check, and whether a confined run will work (no check failed).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    /// Human-readable: one line per check, its fix indented below.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let status = match c.status {
                Status::Ok => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            out.push_str(&format!("{status}  {:<12} {}\n", c.name, c.detail));
            if let Some(fix) = &c.fix {
                out.push_str(&format!("      {:<12} fix: {fix}\n", ""));
            }
        }
        out.push_str(if self.ok {
            "nsrun can run confined sandboxes here.\n"
        } else {
            "nsrun cannot run confined sandboxes here: apply the fixes of the FAIL lines.\n"
        });
        out
    }
}

/// What `nsrun doctor` is asked.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The image cache directory to check (default: [`crate::store::Store::default_root`]).
    pub root: Option<PathBuf>,
    /// The `/proc` mode the probe sandbox uses (`--proc`).
    pub proc: ProcMode,
}

/// The cgroup a run would get, as found by creating (and removing) a real one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum CgroupFacts {
    /// A cgroup was created: v2 or v1, and the limits it cannot enforce.
    Cgroup { v2: bool, unenforced: Vec<String> },
    /// None could be: why, and the limits that rlimits cannot stand in for.
    Rlimits {
        reason: String,
        unenforced: Vec<String>,
    },
    /// Creating one failed outright.
    Error(String),
}

/// The image cache's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheFacts {
    pub path: PathBuf,
    /// The directory statfs looked at (the cache, or its nearest existing parent).
    pub existing: PathBuf,
    pub fs_type: String,
    pub free_bytes: u64,
    pub writable: bool,
    pub noexec: bool,
}

/// Everything the checks judge.
#[derive(Debug, Clone)]
pub struct Facts {
    /// `uname -r`.
    pub kernel: String,
    /// Namespace types missing from `/proc/self/ns`.
    pub namespaces_missing: Vec<&'static str>,
    pub host: HostFacts,
    /// `Seccomp:` of `/proc/self/status`, and `Seccomp_filters:`.
    pub seccomp_mode: String,
    pub seccomp_filters: Option<String>,
    /// Each needed call's test ([`syscall_probe::probe_all`]).
    pub syscalls: Vec<(&'static str, Verdict)>,
    /// The probe sandbox with the asked `/proc` mode.
    pub probe: probe::Probe,
    /// The caller's namespaces, to compare with what the probe saw.
    pub outer_namespaces: Vec<String>,
    /// When the fresh `/proc` was refused: the probe with `--proc host-bind`.
    pub probe_host_bind: Option<probe::Probe>,
    pub proc_mode: ProcMode,
    /// `/proc` submounts (what container runtimes mask), from `/proc/self/mountinfo`.
    pub proc_masks: Vec<String>,
    /// The id mapping a run would get (as `map: container → host` text), or why none.
    pub idmap: Result<String, String>,
    /// This user's `/etc/subuid` and `/etc/subgid` entries, and whether newuidmap and
    /// newgidmap are there and setuid (or have file capabilities).
    pub subuid: bool,
    pub subgid: bool,
    pub newuidmap: Option<bool>,
    pub newgidmap: Option<bool>,
    pub cgroup: CgroupFacts,
    /// pasta and slirp4netns on PATH, and whether `/dev/net/tun` exists.
    pub pasta: Option<PathBuf>,
    pub slirp4netns: Option<PathBuf>,
    pub dev_net_tun: bool,
    pub cache: Result<CacheFacts, String>,
}

impl Facts {
    /// Gathers the facts of this host. Forks and runs a probe sandbox: call it from a
    /// single-threaded process (the `nsrun` command, or a library helper).
    pub fn gather(opts: &Options) -> Facts {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        let caller = Caller::current();
        let probe = probe::run(opts.proc);
        let probe_host_bind = match &probe {
            probe::Probe::Failed {
                stage: probe::Stage::Proc,
                ..
            } if opts.proc == ProcMode::Fresh => Some(probe::run(ProcMode::HostBind)),
            _ => None,
        };
        let user = nix::unistd::User::from_uid(caller.uid.into())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| caller.uid.to_string());
        let has_subid = |file: &str| {
            std::fs::read_to_string(file).is_ok_and(|t| {
                t.lines().any(|l| {
                    let who = l.split(':').next().unwrap_or("");
                    who == user || who == caller.uid.to_string()
                })
            })
        };
        Facts {
            kernel: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            namespaces_missing: probe::NAMESPACES
                .iter()
                .copied()
                .filter(|n| !Path::new(&format!("/proc/self/ns/{n}")).exists())
                .collect(),
            host: HostFacts::probe(),
            seccomp_mode: field("Seccomp:").unwrap_or_default(),
            seccomp_filters: field("Seccomp_filters:"),
            syscalls: syscall_probe::probe_all(),
            probe,
            outer_namespaces: probe::own_namespaces(),
            probe_host_bind,
            proc_mode: opts.proc,
            proc_masks: proc_masks(
                &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
            ),
            idmap: IdMap::decide(UsernsMode::Auto, caller, (0, 0), None)
                .map(|m| describe_map(&m, caller))
                .map_err(|e| e.to_string()),
            subuid: has_subid("/etc/subuid"),
            subgid: has_subid("/etc/subgid"),
            newuidmap: find("newuidmap").map(|p| privileged_helper(&p)),
            newgidmap: find("newgidmap").map(|p| privileged_helper(&p)),
            cgroup: cgroup_facts(),
            pasta: find("pasta"),
            slirp4netns: find("slirp4netns"),
            dev_net_tun: Path::new("/dev/net/tun").exists(),
            cache: cache_facts(
                &opts
                    .root
                    .clone()
                    .unwrap_or_else(crate::store::Store::default_root),
            ),
        }
    }
}

fn describe_map(m: &IdMap, caller: Caller) -> String {
    let ext = |e: &[idmap::Extent]| {
        e.iter()
            .map(|x| {
                let last = |b: u32| b as u64 + x.count as u64 - 1;
                if x.count == 1 {
                    format!("{} → {}", x.inside, x.outside)
                } else {
                    format!(
                        "{}-{} → {}-{}",
                        x.inside,
                        last(x.inside),
                        x.outside,
                        last(x.outside)
                    )
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let whose = if caller.uid != 0 {
        "rootless"
    } else if idmap::pick_range(&std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default())
        .0
        == idmap::DEFAULT_ROOT_ID_BASE
    {
        "root"
    } else {
        "root in a user namespace (ids of that namespace)"
    };
    format!("{whose}: container uids {}", ext(&m.uids))
}

/// `/proc` submounts, as container runtimes leave them (their masked paths).
pub fn proc_masks(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with("/proc/") && !m.starts_with("/proc/sys/fs/binfmt_misc"))
        .map(String::from)
        .collect()
}

fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/bin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether a newuidmap-like helper can do its job: setuid root, or file capabilities.
fn privileged_helper(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let setuid_root = std::fs::metadata(p).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o4000 != 0);
    setuid_root || has_file_caps(p)
}

fn has_file_caps(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a size query (NULL buffer, size 0) of an extended attribute of a path we own.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"security.capability".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    n > 0
}

fn cgroup_facts() -> CgroupFacts {
    let limits = Limits {
        memory: Some(256 << 20),
        memory_swap: None,
        cpus: Some(1.0),
        cpu_shares: None,
        pids: Some(256),
    };
    let id = format!("doctor{}", std::process::id());
    match cgroup::setup_explained(&limits, &id) {
        Ok((Enforcement::Cgroup(cg), _)) => {
            let facts = CgroupFacts::Cgroup {
                v2: cg.is_v2(),
                unenforced: cg.unenforced().to_vec(),
            };
            let _ = cg.remove();
            facts
        }
        Ok((Enforcement::Rlimits { unenforced, .. }, reason)) => CgroupFacts::Rlimits {
            reason: reason.unwrap_or_default(),
            unenforced,
        },
        Ok((Enforcement::None, _)) => CgroupFacts::Error("no limits were tested".into()),
        Err(e) => CgroupFacts::Error(e.to_string()),
    }
}

/// Facts about the cache directory `path` (or its nearest existing parent).
pub fn cache_facts(path: &Path) -> Result<CacheFacts, String> {
    let existing = path
        .ancestors()
        .find(|p| p.is_dir())
        .ok_or_else(|| format!("{}: no existing parent", path.display()))?
        .to_path_buf();
    let fs = nix::sys::statfs::statfs(&existing)
        .map_err(|e| format!("statfs {}: {e}", existing.display()))?;
    let vfs = nix::sys::statvfs::statvfs(&existing)
        .map_err(|e| format!("statvfs {}: {e}", existing.display()))?;
    let writable = nix::unistd::access(&existing, nix::unistd::AccessFlags::W_OK).is_ok()
        && !vfs.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY);
    Ok(CacheFacts {
        path: path.to_path_buf(),
        existing: existing.clone(),
        fs_type: fs_name(fs.filesystem_type().0 as i64),
        free_bytes: vfs.blocks_available() as u64 * vfs.fragment_size() as u64,
        writable,
        noexec: vfs.flags().contains(nix::sys::statvfs::FsFlags::ST_NOEXEC),
    })
}

fn fs_name(magic: i64) -> String {
    match magic {
        0xEF53 => "ext4".into(),
        0x58465342 => "xfs".into(),
        0x9123683E => "btrfs".into(),
        0x01021994 => "tmpfs".into(),
        0x794C7630 => "overlayfs".into(),
        0x65735546 => "fuse".into(),
        0x6969 => "nfs".into(),
        0x2FC12FC1 => "zfs".into(),
        0x5346414F => "afs".into(),
        0x9fa0 => "proc".into(),
        m => format!("filesystem 0x{m:x}"),
    }
}

/// Judges the facts: one check each, in the order a run meets them.
pub fn diagnose(f: &Facts) -> Report {
    let checks = vec![
        kernel(f),
        userns(f),
        apparmor(f),
        seccomp(f),
        proc(f),
        sandbox(f),
        ids(f),
        subids(f),
        cgroups(f),
        network(f),
        cache(f),
    ];
    Report {
        ok: checks.iter().all(|c| c.status != Status::Fail),
        checks,
    }
}

/// Where the probe stopped, if it failed: the stage, the message and the fix.
fn failed_at(f: &Facts) -> Option<(probe::Stage, &str, String)> {
    match &f.probe {
        probe::Probe::Failed {
            stage,
            message,
            fix,
        } => Some((
            *stage,
            message.as_str(),
            fix.clone()
                .unwrap_or_else(|| diagnose::CONTAINER_RECIPE.to_string()),
        )),
        probe::Probe::Ran { .. } => None,
    }
}

fn kernel(f: &Facts) -> Check {
    let version = crate::sandbox::seccomp::profile::parse_kernel_version(&f.kernel);
    if !f.namespaces_missing.is_empty() {
        return Check::fail(
            "kernel",
            format!(
                "Linux {}: no {} namespaces",
                f.kernel,
                f.namespaces_missing.join(", ")
            ),
            "use a kernel built with CONFIG_USER_NS, CONFIG_PID_NS, CONFIG_NET_NS, CONFIG_IPC_NS, CONFIG_UTS_NS and CONFIG_CGROUPS",
        );
    }
    match version {
        Some(v) if v < (5, 12) => Check::fail(
            "kernel",
            format!(
                "Linux {} is too old (openat2, close_range and mount_setattr need 5.12)",
                f.kernel
            ),
            "run on Linux 5.12 or later",
        ),
        _ => Check::ok(
            "kernel",
            format!("Linux {}, every namespace type", f.kernel),
        ),
    }
}

fn userns(f: &Facts) -> Check {
    let h = &f.host;
    let name = "userns";
    if h.max_user_namespaces.as_deref() == Some("0") {
        return Check::fail(
            name,
            "user namespaces are disabled (user.max_user_namespaces=0)",
            "sysctl -w user.max_user_namespaces=15000 (and in /etc/sysctl.d/ to keep it)",
        );
    }
    if h.unprivileged_userns_clone.as_deref() == Some("0") && !h.root {
        return Check::fail(
            name,
            "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone=0)",
            "sysctl -w kernel.unprivileged_userns_clone=1 (and in /etc/sysctl.d/ to keep it)",
        );
    }
    let sysctls = format!(
        "user.max_user_namespaces={}{}",
        h.max_user_namespaces.as_deref().unwrap_or("?"),
        h.unprivileged_userns_clone
            .as_deref()
            .map(|v| format!(", kernel.unprivileged_userns_clone={v}"))
            .unwrap_or_default()
    );
    match failed_at(f) {
        Some((probe::Stage::Namespaces, msg, fix)) => {
            // The run's own diagnosis (seccomp, AppArmor, …) is the fix.
            Check::fail(name, format!("{sysctls}, but {msg}"), fix)
        }
        _ => Check::ok(name, format!("{sysctls}; the probe created its namespaces")),
    }
}

fn apparmor(f: &Facts) -> Check {
    let check = apparmor_restriction(f);
    let Some(label) = &f.host.lsm_label else {
        return check;
    };
    if check.status != Status::Ok {
        return check;
    }
    // A confined process whose probe failed at a mount, with no seccomp refusal to explain it.
    let filter_refuses = f
        .syscalls
        .iter()
        .any(|(_, v)| matches!(v, Verdict::Refused(_)));
    match failed_at(f) {
        Some((probe::Stage::Setup, msg, _)) if !filter_refuses => Check::fail(
            "apparmor",
            format!("confined by the LSM profile {label:?}, and the probe failed: {msg}"),
            diagnose::lsm_advice(label),
        ),
        _ => Check::ok(
            "apparmor",
            format!("{}; confined by the LSM profile {label:?}", check.detail),
        ),
    }
}

fn apparmor_restriction(f: &Facts) -> Check {
    let name = "apparmor";
    match f.host.apparmor_restrict.as_deref() {
        None => Check::ok(name, "no kernel.apparmor_restrict_unprivileged_userns (not Ubuntu's restriction)"),
        Some("0") => Check::ok(name, "kernel.apparmor_restrict_unprivileged_userns=0"),
        Some(_) if f.host.root => Check::ok(
            name,
            "kernel.apparmor_restrict_unprivileged_userns=1, which does not restrict root",
        ),
        Some(_) => match failed_at(f) {
            Some((stage, msg, _)) if stage != probe::Stage::Tool => Check::fail(
                name,
                format!(
                    "kernel.apparmor_restrict_unprivileged_userns=1, and the probe failed: {msg}"
                ),
                diagnose::APPARMOR_ADVICE,
            ),
            _ => Check::ok(
                name,
                "kernel.apparmor_restrict_unprivileged_userns=1, and the probe worked (a profile allows nsrun)",
            ),
        },
    }
}

fn seccomp(f: &Facts) -> Check {
    let name = "seccomp";
    if f.seccomp_mode != "2" {
        return Check::ok(name, "this process runs under no seccomp filter");
    }
    let filters = f
        .seccomp_filters
        .as_deref()
        .map(|n| format!("{n} filter(s)"))
        .unwrap_or_else(|| "a filter".into());
    let refused: Vec<String> = f
        .syscalls
        .iter()
        .filter_map(|(n, v)| match v {
            Verdict::Refused(e) => Some(format!("{n} ({:?})", nix::errno::Errno::from_raw(*e))),
            _ => None,
        })
        .collect();
    let untested: Vec<&str> = f
        .syscalls
        .iter()
        .filter(|(_, v)| *v == Verdict::Untested)
        .map(|(n, _)| *n)
        .collect();
    if !refused.is_empty() {
        return Check::fail(
            name,
            format!("{filters}; it refuses {}", refused.join(", ")),
            diagnose::CONTAINER_RECIPE,
        );
    }
    if !untested.is_empty() {
        return Check::warn(
            name,
            format!(
                "{filters}; it allows the calls tested, but {} could not be tested (no user namespace to test them in)",
                untested.join(", ")
            ),
            "fix the userns check first, then run nsrun doctor again",
        );
    }
    Check::ok(
        name,
        format!(
            "{filters}; it allows each call nsrun needs ({})",
            f.syscalls
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
}

fn proc(f: &Facts) -> Check {
    let name = "proc";
    let masks = if f.proc_masks.is_empty() {
        String::new()
    } else {
        format!(
            " ({} masked path(s) under /proc, e.g. {})",
            f.proc_masks.len(),
            f.proc_masks[0]
        )
    };
    if f.proc_mode == ProcMode::HostBind {
        return match failed_at(f) {
            Some((probe::Stage::Proc, msg, fix)) => {
                Check::fail(name, format!("binding this /proc failed: {msg}"), fix)
            }
            _ => Check::warn(
                name,
                "--proc host-bind: runs see the processes of nsrun's pid namespace",
                diagnose::PROC_ADVICE,
            ),
        };
    }
    match failed_at(f) {
        Some((probe::Stage::Proc, _, fix)) => {
            let host_bind = match &f.probe_host_bind {
                Some(probe::Probe::Ran { .. }) => {
                    "; `--proc host-bind` works (weaker: the tool sees nsrun's processes)"
                }
                Some(probe::Probe::Failed { .. }) => "; `--proc host-bind` fails too",
                None => "",
            };
            Check::fail(
                name,
                format!("a fresh /proc is refused{masks}{host_bind}"),
                fix,
            )
        }
        // The probe never got to /proc. The kernel's rule is known, though: a new procfs is
        // mounted only where an existing one is fully visible, no path of it covered by a mount
        // (other than on the few permanently empty directories, binfmt_misc's).
        Some((probe::Stage::Namespaces | probe::Stage::IdMap, _, _)) if !f.proc_masks.is_empty() => {
            Check::fail(
                name,
                format!(
                    "not probed (the probe failed first), but {} path(s) under /proc are covered (e.g. {}), \
                     and the kernel refuses a new procfs while one is",
                    f.proc_masks.len(),
                    f.proc_masks[0]
                ),
                diagnose::PROC_ADVICE,
            )
        }
        Some((probe::Stage::Namespaces | probe::Stage::IdMap, _, _)) => Check::warn(
            name,
            "not tested: the probe failed before mounting /proc",
            "fix the failures above, then run nsrun doctor again",
        ),
        _ => Check::ok(name, format!("a fresh /proc mounts{masks}")),
    }
}

fn sandbox(f: &Facts) -> Check {
    let name = "sandbox";
    match &f.probe {
        probe::Probe::Ran { inside, setup_ms } => {
            let missing = probe::missing_confinement(inside, &f.outer_namespaces);
            if missing.is_empty() {
                Check::ok(
                    name,
                    format!(
                        "a probe run worked: read-only root, own {} namespaces, seccomp, no_new_privs (set up in {setup_ms:.1} ms)",
                        probe::NAMESPACES.join("/")
                    ),
                )
            } else {
                Check::fail(
                    name,
                    format!(
                        "a probe run started but is not confined: {}",
                        missing.join("; ")
                    ),
                    "report this as a bug of nsrun, with the output of `nsrun doctor --json`",
                )
            }
        }
        probe::Probe::Failed { .. } => {
            let (_, message, fix) = failed_at(f).expect("the probe failed");
            Check::fail(name, format!("a probe run failed: {message}"), fix)
        }
    }
}

fn ids(f: &Facts) -> Check {
    match &f.idmap {
        Ok(text) => Check::ok("idmap", text.clone()),
        Err(e) => Check::fail(
            "idmap",
            e.clone(),
            "see the message; --userns single needs nothing",
        ),
    }
}

fn subids(f: &Facts) -> Check {
    let name = "subids";
    if f.host.root {
        return Check::ok(name, "not needed as root");
    }
    let mut missing = Vec::new();
    if !f.subuid {
        missing.push("no /etc/subuid entry");
    }
    if !f.subgid {
        missing.push("no /etc/subgid entry");
    }
    match (f.newuidmap, f.newgidmap) {
        (Some(true), Some(true)) => {}
        (None, _) | (_, None) => missing.push("newuidmap/newgidmap not installed"),
        _ => missing.push("newuidmap/newgidmap are neither setuid root nor file-capable"),
    }
    if missing.is_empty() {
        Check::ok(
            name,
            "subordinate ids and newuidmap/newgidmap: a tool starting as root gets 65536 ids",
        )
    } else {
        Check::warn(
            name,
            format!(
                "{}: runs map one id (tools that switch users inside cannot)",
                missing.join(", ")
            ),
            "usermod --add-subuids 100000-165535 --add-subgids 100000-165535 $USER; apt-get install uidmap",
        )
    }
}

fn cgroups(f: &Facts) -> Check {
    let name = "cgroups";
    match &f.cgroup {
        CgroupFacts::Cgroup { v2, unenforced } if unenforced.is_empty() => Check::ok(
            name,
            format!(
                "a cgroup {} of nsrun's own was created: --memory, --cpus and --pids-limit hold",
                if *v2 { "v2" } else { "v1" }
            ),
        ),
        CgroupFacts::Cgroup { v2, unenforced } => Check::warn(
            name,
            format!(
                "a cgroup {} of nsrun's own was created, but {} cannot be enforced",
                if *v2 { "v2" } else { "v1" },
                unenforced.join(", ")
            ),
            "enable the missing controllers in the parent cgroup's cgroup.subtree_control",
        ),
        CgroupFacts::Rlimits { reason, unenforced } => Check::warn(
            name,
            format!(
                "{reason}: --memory and --pids-limit fall back to rlimits (per process/uid){}",
                if unenforced.is_empty() {
                    String::new()
                } else {
                    format!(", not enforced: {}", unenforced.join(", "))
                }
            ),
            "give nsrun's user a delegated cgroup v2 subtree (systemd: Delegate=yes; a container: run the worker in a cgroup namespace of its own with the cgroup writable)",
        ),
        CgroupFacts::Error(e) => Check::warn(name, format!("not tested: {e}"), "see the message"),
    }
}

fn network(f: &Facts) -> Check {
    let name = "network";
    let found = f.pasta.as_ref().or(f.slirp4netns.as_ref());
    match found {
        None => Check::warn(
            name,
            "neither pasta nor slirp4netns is installed: runs get --network none or host only",
            "apt-get install passt (or slirp4netns) for user-mode outbound networking",
        ),
        Some(p) if !f.dev_net_tun => Check::warn(
            name,
            format!("{} is installed, but /dev/net/tun is missing", p.display()),
            "start the worker's container with `--device /dev/net/tun`",
        ),
        Some(p) => Check::ok(
            name,
            format!("{} and /dev/net/tun for user-mode networking", p.display()),
        ),
    }
}

fn cache(f: &Facts) -> Check {
    let name = "cache";
    let c = match &f.cache {
        Ok(c) => c,
        Err(e) => {
            return Check::fail(
                name,
                e.clone(),
                "set --root (NSRUN_ROOT) to a writable directory",
            )
        }
    };
    let gib = c.free_bytes as f64 / (1u64 << 30) as f64;
    let what = format!("{} on {} ({gib:.1} GiB free)", c.path.display(), c.fs_type);
    if !c.writable {
        return Check::fail(
            name,
            format!("{what}: {} is not writable", c.existing.display()),
            "set --root (NSRUN_ROOT) to a writable directory",
        );
    }
    if c.noexec {
        return Check::fail(
            name,
            format!("{what}: mounted noexec, so no tool in an image could start"),
            "set --root (NSRUN_ROOT) to a directory on a filesystem mounted without noexec",
        );
    }
    if c.free_bytes < 1 << 30 {
        return Check::warn(
            name,
            format!("{what}: little space for images"),
            "free space or set --root (NSRUN_ROOT) to a larger filesystem",
        );
    }
    Check::ok(name, what)
}

#[cfg(test)]
mod tests;
