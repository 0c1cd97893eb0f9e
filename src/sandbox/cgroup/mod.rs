//! cgroup limits: v2 first, v1 on hybrid hosts, rlimits when no cgroup can be had.
//!
//! A cgroup is a directory of text files, so this module is files, not a framework. For each run
//! with limits, [`setup`] creates `<the cgroup nsrun runs in>/nsrun/<owner>-<run-id>` — in the
//! unified hierarchy when the cgroup we live in delegates the needed controllers (its
//! `cgroup.subtree_control`), else in each v1 hierarchy that is needed (memory, cpu, pids; memory
//! also without a memory limit, for peak usage) — writes the limits, and hands back a [`RunCgroup`]. The parent writes
//! the child's pid into it before releasing the child, so the tool is inside before it execs.
//! After the run, [`RunCgroup::stats`] says whether the OOM killer fired, the peak memory and the
//! CPU time, and [`RunCgroup::remove`] deletes the directories.
//!
//! `<owner>` is `<pid>-<start time>` of the nsrun process that called [`setup`] (the start time is
//! field 22 of `/proc/<pid>/stat`, in clock ticks since boot). An nsrun killed with SIGKILL cannot
//! remove its cgroups; [`sweep`] later removes every run cgroup in our own `nsrun/` levels whose
//! owner is gone — no such pid, a pid now held by a process that started at another time, or a
//! zombie — and never one whose owner still runs.
//!
//! nsrun never changes a cgroup it did not create: no controller is enabled in, and no process is
//! moved out of, the cgroup it runs in.
//!
//! When no cgroup can be created (rootless without delegation, a read-only cgroupfs), the limits
//! rlimits can express become [`Rlimit`]s applied in the child, and every other limit is named in
//! `unenforced` so the caller can say so — never silently:
//! - `--pids-limit` → `RLIMIT_NPROC`. It counts the tasks of one uid in the run's user
//!   namespace (since Linux 5.14 these counts are per user namespace), which for a sandbox whose
//!   processes all share one uid is the whole run, as `pids.max` would be. Where the namespace
//!   maps many uids (subordinate ids), a tool with CAP_SETUID could spread its processes over
//!   them, so [`crate::sandbox::run`] drops SETUID and SETGID from such a run and says so.
//! - `--memory` → `RLIMIT_DATA` (private writable memory, heap and anonymous mmaps, since Linux
//!   4.7). It caps each process, not the run; shared mappings (`MAP_SHARED`, memfd, System V
//!   shm, tmpfs files) are not counted at all; and the kernel answers ENOMEM instead of
//!   killing. So it is reported as only partly enforced, saying all of that. `RLIMIT_AS` is not used: it also counts
//!   reservations that Go, Java and sanitizer runtimes make and never touch.
//! - `--memory-swap`, `--cpus` and `--cpu-shares` have no rlimit counterpart.
//!
//! The code takes the cgroupfs root and the text of `/proc/self/cgroup` as parameters
//! ([`setup_at`]), so tests run it against a fake tree in a temporary directory: a directory that
//! is not a cgroup filesystem is driven the way the kernel would drive it (a `mkdir` fills in
//! `cgroup.controllers`, `rmdir` removes the files).

mod fs;
mod limits;
mod rlimit;
mod sweep;
mod v1;
mod v2;

use fs::*;
pub use limits::Limits;
use limits::CPU_PERIOD_US;
pub use rlimit::apply_rlimits;
use rlimit::rlimit_fallback;
use sweep::*;
pub(crate) use sweep::{owner_gone, owner_of_this_process};
pub use sweep::{sweep, sweep_at};

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

/// Why the run's cgroup could not be set up, used or removed.
#[derive(Debug, Error)]
pub enum CgroupError {
    /// A limit that makes no sense.
    #[error("invalid limit: {0}")]
    InvalidLimit(String),
    /// The run id cannot be a directory name.
    #[error("run id {0:?} cannot name a cgroup (expected a non-empty name without '/')")]
    InvalidRunId(String),
    /// `/proc/self/cgroup` could not be read or understood.
    #[error("reading /proc/self/cgroup: {0}")]
    ProcSelf(String),
    /// A cgroup directory could not be created.
    #[error("creating cgroup {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A control file could not be written.
    #[error("writing {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    /// A control file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The start time of a process could not be read from `/proc/<pid>/stat`.
    #[error("reading the start time of process {pid} from /proc/{pid}/stat: {why}")]
    StartTime { pid: u32, why: String },
    /// A cgroup directory could not be removed.
    #[error("removing cgroup {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a cgroup tells after the run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// The kernel's OOM killer killed a process of the run.
    pub oom_killed: bool,
    /// Highest memory use of the run, bytes.
    pub peak_memory: Option<u64>,
    /// CPU time used by the run (user + system).
    pub cpu_time: Option<Duration>,
}

/// A resource limit applied with setrlimit(2) in the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: libc::__rlimit_resource_t,
    pub limit: u64,
}

/// How the limits of a run are enforced.
#[derive(Debug)]
pub enum Enforcement {
    /// No limits were asked for.
    None,
    /// A cgroup of our own holds the run.
    Cgroup(RunCgroup),
    /// No cgroup could be created: rlimits stand in where they can; `unenforced` names the rest
    /// (one phrase per limit, e.g. `"--cpus"`). [`setup_explained`] also says why.
    Rlimits {
        rlimits: Vec<Rlimit>,
        unenforced: Vec<String>,
    },
}

impl Enforcement {
    /// The one line the CLI prints when some limit is not (fully) enforced, or `None`.
    ///
    /// ```
    /// use nsrun::sandbox::cgroup::Enforcement;
    /// let e = Enforcement::Rlimits { rlimits: vec![], unenforced: vec!["--cpus".into()] };
    /// assert_eq!(e.warning().unwrap(), "warning: not enforced: --cpus (no writable cgroup)");
    /// ```
    pub fn warning(&self) -> Option<String> {
        let (list, reason) = match self {
            Enforcement::None => return None,
            Enforcement::Cgroup(c) => (&c.unenforced, "not supported by this host's cgroups"),
            Enforcement::Rlimits { unenforced, .. } => (unenforced, "no writable cgroup"),
        };
        if list.is_empty() {
            return None;
        }
        Some(format!(
            "warning: not enforced: {} ({reason})",
            list.join(", ")
        ))
    }
}

/// Which hierarchy a run cgroup lives in.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    V2,
    V1,
}

/// A cgroup created for one run: one directory in v2, one per controller hierarchy in v1.
#[derive(Debug)]
pub struct RunCgroup {
    kind: Kind,
    /// v2: one directory; v1: (controller, directory) per hierarchy.
    dirs: Vec<(String, PathBuf)>,
    emulated: bool,
    unenforced: Vec<String>,
    removed: bool,
}

/// Creates the run's cgroup (or decides on rlimits), on this host.
///
/// `run_id` names the directory (`…/nsrun/<pid>-<start time>-<run_id>`, the pid and start time
/// of this process, so that [`sweep`] can tell when its owner is gone); it must be unique among
/// this process's live runs.
pub fn setup(limits: &Limits, run_id: &str) -> Result<Enforcement, CgroupError> {
    let (enforcement, why) = setup_explained(limits, run_id)?;
    match (&enforcement, why) {
        (Enforcement::Cgroup(cg), _) => {
            tracing::debug!(run_id, dirs = ?cg.paths().collect::<Vec<_>>(), "run cgroup created")
        }
        (_, Some(reason)) => tracing::debug!(run_id, %reason, "limits fall back to rlimits"),
        _ => {}
    }
    Ok(enforcement)
}

/// [`setup`], plus why no cgroup could be created when it falls back to rlimits (e.g.
/// "cannot create /sys/fs/cgroup/pids/nsrun: Permission denied"), for verbose output.
pub fn setup_explained(
    limits: &Limits,
    run_id: &str,
) -> Result<(Enforcement, Option<String>), CgroupError> {
    if limits.is_empty() {
        return Ok((Enforcement::None, None));
    }
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| CgroupError::ProcSelf(e.to_string()))?;
    setup_at(Path::new("/sys/fs/cgroup"), &text, limits, run_id)
}

/// [`setup`] against the cgroupfs mounted at `fs_root` (normally `/sys/fs/cgroup`), for a process
/// whose `/proc/self/cgroup` reads `proc_self_cgroup`; returns what [`setup_explained`] does.
pub fn setup_at(
    fs_root: &Path,
    proc_self_cgroup: &str,
    limits: &Limits,
    run_id: &str,
) -> Result<(Enforcement, Option<String>), CgroupError> {
    if limits.is_empty() {
        return Ok((Enforcement::None, None));
    }
    limits.validate()?;
    if run_id.is_empty() || run_id.contains('/') || run_id == "." || run_id == ".." {
        return Err(CgroupError::InvalidRunId(run_id.into()));
    }
    let entries = parse_proc_self_cgroup(proc_self_cgroup)?;
    let name = run_dir_name(run_id)?;
    let run_id = name.as_str();
    let mut why_not = Vec::new();
    match v2::try_create(fs_root, &entries, limits, run_id)? {
        Ok(cg) => return Ok((Enforcement::Cgroup(cg), None)),
        Err(reason) => why_not.push(reason),
    }
    match v1::try_create(fs_root, &entries, limits, run_id)? {
        Ok(cg) => return Ok((Enforcement::Cgroup(cg), None)),
        Err(reason) => why_not.push(reason),
    }
    let reason = format!("no cgroup could be created: {}", why_not.join("; "));
    Ok((rlimit_fallback(limits), Some(reason)))
}

/// The directory name of run `run_id` owned by this process: `<pid>-<start time>-<run_id>`.
fn run_dir_name(run_id: &str) -> Result<String, CgroupError> {
    // Cached per pid: a forked copy of this process is another owner.
    static OWNER: std::sync::Mutex<Option<(u32, u64)>> = std::sync::Mutex::new(None);
    let pid = std::process::id();
    let mut owner = OWNER.lock().unwrap_or_else(|e| e.into_inner());
    let start = match *owner {
        Some((p, start)) if p == pid => start,
        _ => {
            let start = start_time(pid)?;
            *owner = Some((pid, start));
            start
        }
    };
    Ok(format!("{pid}-{start}-{run_id}"))
}

/// One line of `/proc/self/cgroup`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// Controller names; empty for the unified hierarchy (`0::/path`).
    controllers: Vec<String>,
    /// Path relative to the hierarchy's root, without the leading `/`.
    path: String,
}

fn parse_proc_self_cgroup(text: &str) -> Result<Vec<Entry>, CgroupError> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(CgroupError::ProcSelf(format!("unexpected line {line:?}")));
        };
        // A cgroup we were moved out of while in a cgroup namespace reads "/../x": not ours to use.
        let path = path.trim_start_matches('/').to_string();
        let controllers = ctrls
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect();
        out.push(Entry { controllers, path });
    }
    Ok(out)
}

impl RunCgroup {
    /// Moves `pid` (with all its threads) into the run's cgroup; call before the child execs.
    pub fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        for (_, dir) in &self.dirs {
            let procs = dir.join("cgroup.procs");
            if self.emulated {
                // A fake tree has no kernel to list the pid for us: append it as the kernel shows it.
                let mut all = std::fs::read_to_string(&procs).unwrap_or_default();
                all.push_str(&format!("{pid}\n"));
                write(&procs, &all, true)?;
            } else {
                write(&procs, &pid.to_string(), false)?;
            }
        }
        Ok(())
    }

    /// The directories of the run's cgroup: one for v2, one per controller for v1.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.dirs.iter().map(|(_, d)| d.as_path())
    }

    /// The v2 directory (`None` for v1).
    pub fn v2_dir(&self) -> Option<&Path> {
        (self.kind == Kind::V2).then(|| self.dirs[0].1.as_path())
    }

    /// An `O_PATH|O_DIRECTORY` descriptor of the v2 directory, the form the `cgroup` argument of
    /// `clone3(CLONE_INTO_CGROUP)` takes. nsrun does not call clone3 today (Docker's default
    /// seccomp profile answers it with ENOSYS, so `spawn` clones with `clone` and the parent writes
    /// the pid into `cgroup.procs`, see [`RunCgroup::add_pid`]); this is for a caller that does.
    /// `None` for v1.
    pub fn v2_dir_fd(&self) -> Option<Result<std::os::fd::OwnedFd, CgroupError>> {
        let dir = self.v2_dir()?;
        let res = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(dir)
            .map(std::os::fd::OwnedFd::from)
            .map_err(|source| CgroupError::Read {
                path: dir.into(),
                source,
            });
        Some(res)
    }

    /// Whether this is a v2 (unified) cgroup.
    pub fn is_v2(&self) -> bool {
        self.kind == Kind::V2
    }

    /// Limits this host's cgroups could not enforce (e.g. `--memory-swap` without swap accounting).
    pub fn unenforced(&self) -> &[String] {
        &self.unenforced
    }

    /// What happened to the run: OOM kills, peak memory, CPU time. Missing files give `None`s.
    pub fn stats(&self) -> CgroupStats {
        match self.kind {
            Kind::V2 => v2::stats(&self.dirs[0].1),
            Kind::V1 => v1::stats(&self.dirs),
        }
    }

    /// Kills every process in the run's cgroup: `cgroup.kill` on v2 (Linux 5.14+), else SIGKILL
    /// to each pid listed in `cgroup.procs` until it is empty (forks racing with us are caught by
    /// the next pass).
    pub fn kill_all(&self) {
        if self.kind == Kind::V2 {
            let k = self.dirs[0].1.join("cgroup.kill");
            if k.exists() && write(&k, "1", self.emulated).is_ok() {
                return;
            }
        }
        if self.emulated {
            return; // no processes behind a fake tree's pid list
        }
        // Every process of the run is in every one of our hierarchies (the child joined them all
        // before it could fork), so the first lists them all.
        let Some((_, dir)) = self.dirs.first() else {
            return;
        };
        for _ in 0..100 {
            let pids = read_pids(&dir.join("cgroup.procs")).unwrap_or_default();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                // SAFETY: kill(2) with a pid read from our own cgroup; no memory involved.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Removes the run's directories (retrying while exiting tasks keep them busy).
    pub fn remove(mut self) -> Result<(), CgroupError> {
        self.removed = true;
        let mut first_err = None;
        for (_, dir) in &self.dirs {
            if let Err(e) = remove_dir(dir, self.emulated) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for RunCgroup {
    /// Best effort on error paths: a run that failed half-way may still have processes inside,
    /// which would keep the directories busy, so they are killed first.
    fn drop(&mut self) {
        if !self.removed {
            self.kill_all();
            for (_, dir) in &self.dirs {
                let _ = remove_dir(dir, self.emulated);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hybrid_proc_self_cgroup() {
        let e =
            parse_proc_self_cgroup("4:memory:/process_api/x\n2:cpu,cpuacct:/\n0::/user.slice\n")
                .unwrap();
        assert_eq!(
            e[0],
            Entry {
                controllers: vec!["memory".into()],
                path: "process_api/x".into()
            }
        );
        assert_eq!(e[1].controllers, ["cpu", "cpuacct"]);
        assert_eq!(e[1].path, "");
        assert_eq!(
            e[2],
            Entry {
                controllers: vec![],
                path: "user.slice".into()
            }
        );
        assert!(parse_proc_self_cgroup("garbage").is_err());
    }

    #[test]
    fn docker_swap_semantics() {
        let l = |m: Option<u64>, s: Option<i64>| Limits {
            memory: m,
            memory_swap: s,
            ..Default::default()
        };
        assert_eq!(
            l(Some(100), None).swap().unwrap(),
            Some(100),
            "unset: as much swap as memory"
        );
        assert_eq!(l(Some(100), Some(-1)).swap().unwrap(), None);
        assert_eq!(
            l(Some(100), Some(100)).swap().unwrap(),
            Some(0),
            "equal: no swap"
        );
        assert_eq!(l(Some(100), Some(250)).swap().unwrap(), Some(150));
        assert!(l(Some(100), Some(50)).swap().is_err());
        assert!(l(None, Some(50)).swap().is_err());
        assert!(l(Some(100), Some(-2)).swap().is_err());
    }

    #[test]
    fn cpu_conversions_and_validation() {
        let l = Limits {
            cpus: Some(1.5),
            cpu_shares: Some(1),
            ..Default::default()
        };
        assert_eq!(l.cpu_quota_us(), Some(150_000));
        assert_eq!(l.shares(), Some(2));
        let tiny = Limits {
            cpus: Some(0.001),
            ..Default::default()
        };
        assert_eq!(tiny.cpu_quota_us(), Some(1000));
        assert!(Limits {
            cpus: Some(0.0),
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(Limits {
            cpus: Some(f64::NAN),
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(Limits {
            pids: Some(0),
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(Limits {
            memory: Some(0),
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(Limits {
            pids: Some(10),
            memory: Some(1 << 20),
            ..Default::default()
        }
        .validate()
        .is_ok());
    }

    #[test]
    fn start_time_is_field_22_even_with_odd_command_names() {
        let stat = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 \
                    1000 200 18446744073709551615";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_state(stat), Some('S'));
        assert_eq!(parse_start_time("1 (x) S 0"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_start_time(&own).is_some_and(|t| t > 0), "{own}");
    }

    #[test]
    fn owner_is_read_from_the_name_or_not_at_all() {
        assert_eq!(parse_owner("123-456-abc-def"), Some((123, 456)));
        for not_ours in [
            "0123abcdef",      // a run id alone: no owner recorded
            "test-pids-77",    // a name of someone else's
            "12-34-",          // no run id
            "12--ab",          // no start time
            "0-5-ab",          // pid 0 is no process
            "+12-34-ab",       // not plain digits
            "99999999999-1-a", // not a pid
        ] {
            assert_eq!(parse_owner(not_ours), None, "{not_ours}");
        }
        let me = std::process::id();
        let name = run_dir_name("r").unwrap();
        let (pid, start) = parse_owner(&name).unwrap();
        assert_eq!(pid, me);
        assert!(!owner_gone(pid, start), "we are alive");
        assert!(owner_gone(pid, start + 1), "same pid, another process");
    }

    #[test]
    fn fallback_names_every_unenforced_limit() {
        let l = Limits {
            memory: Some(1 << 30),
            memory_swap: Some(-1),
            cpus: Some(1.0),
            cpu_shares: Some(512),
            pids: Some(64),
        };
        let Enforcement::Rlimits {
            rlimits,
            unenforced,
        } = rlimit_fallback(&l)
        else {
            panic!("expected rlimits")
        };
        assert_eq!(
            rlimits,
            [
                Rlimit {
                    resource: libc::RLIMIT_NPROC,
                    limit: 64
                },
                Rlimit {
                    resource: libc::RLIMIT_DATA,
                    limit: 1 << 30
                }
            ]
        );
        assert_eq!(unenforced.len(), 4);
        assert!(unenforced[0].starts_with("--memory "));
        assert_eq!(
            &unenforced[1..],
            ["--memory-swap", "--cpus", "--cpu-shares"]
        );
        let only_pids = rlimit_fallback(&Limits {
            pids: Some(5),
            ..Default::default()
        });
        assert!(
            only_pids.warning().is_none(),
            "pids is fully enforced by RLIMIT_NPROC"
        );
    }
}
