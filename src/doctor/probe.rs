//! The probe sandbox: a real, fully confined run whose tool is nsrun itself, reporting from the
//! inside what it sees (read-only root, its own namespaces, seccomp, no_new_privs).
//!
//! Its root is a throw-away directory holding only mountpoints, the host's `/usr` (and `/lib*`
//! where they are not symlinks into it) bound read-only, so the dynamically linked nsrun binary
//! can start; the tool is `/proc/self/exe`, which names nsrun's own binary wherever it lives.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::sandbox::spec::ProcMode;
use crate::sandbox::{self, BindMount, RunError, SandboxSpec, Stdio};

/// The argument that makes nsrun act as the probe's tool (see [`run_if_probe`]).
pub const PROBE_ARG: &str = "__nsrun-doctor-probe";

/// The namespaces a run gets, as named in `/proc/self/ns`.
pub const NAMESPACES: &[&str] = &["user", "mnt", "pid", "net", "ipc", "uts", "cgroup"];

/// What the tool saw from inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inside {
    /// Its pid in its own pid namespace.
    pub pid: u32,
    /// errno of creating a directory in `/` (EROFS when the root is read-only).
    pub root_write_errno: i32,
    /// `Seccomp:` of `/proc/self/status` (2: filtered).
    pub seccomp: String,
    /// `NoNewPrivs:` of `/proc/self/status`.
    pub no_new_privs: String,
    /// `/proc/self/ns/<name>` link targets, in [`NAMESPACES`] order.
    pub namespaces: Vec<String>,
    /// Network interfaces it sees.
    pub interfaces: Vec<String>,
}

/// Where a probe run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Creating the namespaces (clone).
    Namespaces,
    /// Writing the id maps.
    IdMap,
    /// Mounting `/proc`.
    Proc,
    /// Another setup step (mounts, pivot_root, hostname, seccomp, …).
    Setup,
    /// Starting the tool, or the tool's own report.
    Tool,
}

/// How a probe run went.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Probe {
    /// The tool ran and reported.
    Ran { inside: Inside, setup_ms: f64 },
    /// The run failed: where, nsrun's one-line error, and its diagnosis (the setting that
    /// refused and how to allow it) when it has one.
    Failed {
        stage: Stage,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        fix: Option<String>,
    },
}

/// Runs the probe sandbox with `/proc` in `proc` mode.
pub fn run(proc: ProcMode) -> Probe {
    match run_inner(proc) {
        Ok(p) => p,
        Err(message) => Probe::Failed {
            stage: Stage::Setup,
            message,
            fix: None,
        },
    }
}

fn run_inner(proc: ProcMode) -> Result<Probe, String> {
    let dir = TempRoot::new()?;
    let mut spec = SandboxSpec::new(
        dir.rootfs(),
        [String::from("/proc/self/exe"), PROBE_ARG.into()],
    );
    spec.binds = dir.binds.clone();
    spec.proc = proc;
    spec.timeout = Some(Duration::from_secs(30));
    let out = dir.file("stdout")?;
    let err = dir.file("stderr")?;
    let stdio = Stdio {
        stdin: None,
        stdout: Some(OwnedFd::from(out.try_clone().map_err(|e| e.to_string())?)),
        stderr: Some(OwnedFd::from(err.try_clone().map_err(|e| e.to_string())?)),
    };
    let outcome = match sandbox::run(&spec, stdio, None) {
        Ok(o) => o,
        Err(e) => {
            let stage = match &e {
                RunError::Clone(_) => Stage::Namespaces,
                RunError::Idmap(_) => Stage::IdMap,
                RunError::Setup { what, .. } if what.contains("proc on /proc") => Stage::Proc,
                RunError::NotFound { .. }
                | RunError::NoSuchFile { .. }
                | RunError::NotExecutable { .. } => Stage::Tool,
                _ => Stage::Setup,
            };
            // The error without its diagnosis, and the diagnosis as the fix.
            let (message, fix) = match &e {
                RunError::Setup { what, err, hint } => {
                    (format!("sandbox setup failed: {what}: {err}"), hint.clone())
                }
                RunError::Clone(msg) => match msg.split_once("): ") {
                    Some((what, why)) => (format!("{what})"), Some(why.to_string())),
                    None => (msg.clone(), None),
                },
                _ => (e.to_string(), None),
            };
            return Ok(Probe::Failed {
                stage,
                message,
                fix,
            });
        }
    };
    let read = |mut f: &std::fs::File| {
        let mut s = String::new();
        let _ = std::io::Seek::rewind(&mut f);
        let _ = f.read_to_string(&mut s);
        s
    };
    let (stdout, stderr) = (read(&out), read(&err));
    if outcome.exit_code() != 0 {
        return Ok(Probe::Failed {
            stage: Stage::Tool,
            message: format!(
                "the probe tool exited with status {}: {}",
                outcome.exit_code(),
                stderr.trim()
            ),
            fix: None,
        });
    }
    match serde_json::from_str::<Inside>(stdout.trim()) {
        Ok(inside) => Ok(Probe::Ran {
            inside,
            setup_ms: outcome.setup_time.as_secs_f64() * 1e3,
        }),
        Err(e) => Ok(Probe::Failed {
            stage: Stage::Tool,
            message: format!(
                "the probe tool's report is unreadable ({e}): {}",
                stdout.trim()
            ),
            fix: None,
        }),
    }
}

/// The probe's throw-away root, removed on drop.
struct TempRoot {
    dir: PathBuf,
    binds: Vec<BindMount>,
}

impl TempRoot {
    fn new() -> Result<TempRoot, String> {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir();
        let dir = (0..100)
            .map(|i| base.join(format!("nsrun-doctor-{}-{i}", std::process::id())))
            .find(|d| std::fs::create_dir(d).is_ok())
            .ok_or_else(|| format!("cannot create a directory in {}", base.display()))?;
        let mut t = TempRoot {
            dir,
            binds: Vec::new(),
        };
        let root = t.rootfs();
        let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
        // Container root (an unprivileged id as root) must be able to traverse it.
        std::fs::create_dir(&root).map_err(|e| err(&root, e))?;
        for d in [&t.dir, &root] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| err(d, e))?;
        }
        for d in ["proc", "dev", "sys", "tmp", "run", "usr"] {
            std::fs::create_dir(root.join(d)).map_err(|e| err(&root.join(d), e))?;
        }
        t.binds.push(BindMount {
            source: "/usr".into(),
            target: "/usr".into(),
            read_only: true,
        });
        for d in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let host = Path::new("/").join(d);
            match std::fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() => {
                    let to = std::fs::read_link(&host).map_err(|e| err(&host, e))?;
                    std::os::unix::fs::symlink(to, root.join(d)).map_err(|e| err(&host, e))?;
                }
                Ok(m) if m.is_dir() => {
                    std::fs::create_dir(root.join(d)).map_err(|e| err(&host, e))?;
                    t.binds.push(BindMount {
                        source: host,
                        target: format!("/{d}"),
                        read_only: true,
                    });
                }
                _ => {}
            }
        }
        Ok(t)
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    fn file(&self, name: &str) -> Result<std::fs::File, String> {
        let p = self.dir.join(name);
        std::fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&p)
            .map_err(|e| format!("{}: {e}", p.display()))
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The tool's side: when nsrun was started as the probe's tool, report and exit. Called first
/// thing in `main` (a program that embeds nsrun's doctor must do the same).
pub fn run_if_probe() {
    if std::env::args_os().nth(1).is_some_and(|a| a == PROBE_ARG) {
        let inside = look_around();
        println!(
            "{}",
            serde_json::to_string(&inside).expect("plain data serialises")
        );
        std::process::exit(0);
    }
}

fn look_around() -> Inside {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let root_write_errno = match std::fs::create_dir("/.nsrun-doctor-probe") {
        Ok(()) => {
            let _ = std::fs::remove_dir("/.nsrun-doctor-probe");
            0
        }
        Err(e) => e.raw_os_error().unwrap_or(-1),
    };
    let interfaces = std::fs::read_to_string("/proc/self/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|n| n.trim().to_string()))
        .collect();
    Inside {
        pid: std::process::id(),
        root_write_errno,
        seccomp: field("Seccomp:"),
        no_new_privs: field("NoNewPrivs:"),
        namespaces: own_namespaces(),
        interfaces,
    }
}

/// This process's namespaces, in [`NAMESPACES`] order.
pub fn own_namespaces() -> Vec<String> {
    NAMESPACES
        .iter()
        .map(|n| {
            std::fs::read_link(format!("/proc/self/ns/{n}"))
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect()
}

/// What of the confinement `inside` shows missing, compared with the caller's namespaces
/// `outer`; empty when the run was confined as promised.
pub fn missing_confinement(inside: &Inside, outer: &[String]) -> Vec<String> {
    let mut missing = Vec::new();
    if inside.root_write_errno != libc::EROFS {
        missing.push(format!(
            "the root is not read-only (mkdir in / gave errno {})",
            inside.root_write_errno
        ));
    }
    for ((name, a), b) in NAMESPACES.iter().zip(&inside.namespaces).zip(outer) {
        if a.is_empty() || a == b {
            missing.push(format!("no {name} namespace of its own"));
        }
    }
    if inside.seccomp != "2" {
        missing.push(format!("no seccomp filter (Seccomp: {:?})", inside.seccomp));
    }
    if inside.no_new_privs != "1" {
        missing.push("no_new_privs is not set".into());
    }
    if inside.interfaces.iter().any(|i| i != "lo") {
        missing.push(format!(
            "network interfaces other than lo: {}",
            inside.interfaces.join(", ")
        ));
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confined() -> Inside {
        Inside {
            pid: 2,
            root_write_errno: libc::EROFS,
            seccomp: "2".into(),
            no_new_privs: "1".into(),
            namespaces: NAMESPACES.iter().map(|n| format!("{n}:[2]")).collect(),
            interfaces: vec!["lo".into()],
        }
    }

    #[test]
    fn a_confined_run_misses_nothing_and_each_gap_is_named() {
        let outer: Vec<String> = NAMESPACES.iter().map(|n| format!("{n}:[1]")).collect();
        assert!(missing_confinement(&confined(), &outer).is_empty());
        let mut i = confined();
        i.root_write_errno = 0;
        i.namespaces[3] = "net:[1]".into();
        i.seccomp = "0".into();
        i.interfaces.push("eth0".into());
        let m = missing_confinement(&i, &outer);
        assert_eq!(m.len(), 4, "{m:?}");
        assert!(m[0].contains("read-only") && m[1].contains("net namespace"));
        assert!(m[2].contains("seccomp") && m[3].contains("eth0"));
    }
}
