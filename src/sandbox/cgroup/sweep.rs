//! Sweeping what killed runs left: run cgroups are named after the nsrun process that owns them
//! (`<pid>-<start time>-<run id>`), and one whose owner is gone — no such pid, another process
//! under that pid, or a zombie — is removed; one whose owner still runs never is.

use std::path::{Path, PathBuf};

use super::*;

/// This process as an owner of run resources: its pid and start time (see [`owner_gone`]).
pub(crate) fn owner_of_this_process() -> Result<(u32, u64), CgroupError> {
    let pid = std::process::id();
    Ok((pid, start_time(pid)?))
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks since boot. With the
/// pid, it names one process for the life of the system, even after the pid is reused.
pub(super) fn start_time(pid: u32) -> Result<u64, CgroupError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| {
        CgroupError::StartTime {
            pid,
            why: e.to_string(),
        }
    })?;
    parse_start_time(&text).ok_or_else(|| CgroupError::StartTime {
        pid,
        why: format!("unexpected contents {text:?}"),
    })
}

pub(super) fn parse_start_time(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces and ')': fields 3.. follow
    // the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Field 3 of `/proc/<pid>/stat`: the process state (`R`, `S`, … `Z` for a zombie).
pub(super) fn parse_state(stat: &str) -> Option<char> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().next()?.chars().next()
}

/// The owner of a run cgroup, from its directory name; `None` for names not of this form (a
/// directory nsrun did not create, or one from before owners were recorded: left alone).
pub(super) fn parse_owner(name: &str) -> Option<(u32, u64)> {
    let mut parts = name.splitn(3, '-');
    let (pid, start, run_id) = (parts.next()?, parts.next()?, parts.next()?);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(start) || run_id.is_empty() {
        return None;
    }
    let pid: u32 = pid.parse().ok()?;
    (pid > 0 && pid <= i32::MAX as u32).then_some((pid, start.parse().ok()?))
}

/// Whether the process that created a run cgroup is gone: no process has its pid, the one that
/// has it started at another time (the pid was reused), or it is a zombie. When in doubt (its
/// stat unreadable, say under `hidepid`), it is taken as alive.
pub(crate) fn owner_gone(pid: u32, start: u64) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the pid exists; nothing is sent.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie (its parent killed too, and not reaped yet) has left its cgroups for good.
        Ok(text) => {
            parse_state(&text).is_some_and(|st| st == 'Z' || st == 'X')
                || parse_start_time(&text).is_some_and(|s| s != start)
        }
        Err(_) => false,
    }
}

/// Removes the run cgroups whose owner is gone from our own `nsrun/` levels, on this host; returns
/// the directories removed. See [`sweep_at`].
pub fn sweep() -> Result<Vec<PathBuf>, CgroupError> {
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| CgroupError::ProcSelf(e.to_string()))?;
    sweep_at(Path::new("/sys/fs/cgroup"), &text)
}

/// [`sweep`] against the cgroupfs mounted at `fs_root`, for a process whose `/proc/self/cgroup`
/// reads `proc_self_cgroup`.
///
/// Looks only at the `nsrun/` level below the cgroup we run in — in the unified hierarchy and in
/// the v1 memory, cpu and pids hierarchies, where [`setup`] creates them — and there only at
/// directories named `<pid>-<start time>-<run id>`. One whose owner is gone has whatever is still
/// inside killed (normally nothing: the sandbox's processes die with its pid 1), then is removed
/// with any cgroups below it. The `nsrun/` level itself stays, as a concurrent [`setup`] may be
/// creating a cgroup in it. A level this process may not write to is skipped without error (an
/// unprivileged user sweeping a host where only root's runs have cgroups). Every stale cgroup
/// is tried; the first failure, if any, is returned after.
pub fn sweep_at(fs_root: &Path, proc_self_cgroup: &str) -> Result<Vec<PathBuf>, CgroupError> {
    let entries = parse_proc_self_cgroup(proc_self_cgroup)?;
    // Our own cgroup only: a path that climbs out of a cgroup namespace ("/../x") is not ours.
    let entries: Vec<Entry> = entries
        .into_iter()
        .filter(|e| {
            !Path::new(&e.path)
                .components()
                .any(|c| c == std::path::Component::ParentDir)
        })
        .collect();
    let mut levels: Vec<(PathBuf, Kind, bool)> = Vec::new();
    if let Some((base, emulated)) = v2::nsrun_level(fs_root, &entries) {
        levels.push((base, Kind::V2, emulated));
    }
    for (base, emulated) in v1::nsrun_levels(fs_root, &entries) {
        if !levels.iter().any(|(b, _, _)| *b == base) {
            levels.push((base, Kind::V1, emulated));
        }
    }
    let mut removed = Vec::new();
    let mut first_err = None;
    for (base, kind, emulated) in levels {
        // rmdir needs write access to the nsrun level; without it nothing here is ours to sweep.
        if nix::unistd::access(
            &base,
            nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
        )
        .is_err()
        {
            continue;
        }
        let dir = match std::fs::read_dir(&base) {
            Ok(d) => d,
            Err(e) if is_denied(&e) => continue,
            Err(source) => {
                first_err.get_or_insert(CgroupError::Read { path: base, source });
                continue;
            }
        };
        for entry in dir.flatten() {
            // Not followed: a symlink here is no cgroup of ours.
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name();
            let Some((pid, start)) = name.to_str().and_then(parse_owner) else {
                continue;
            };
            if !owner_gone(pid, start) {
                continue;
            }
            let path = entry.path();
            match remove_stale(&path, &kind, emulated) {
                Ok(()) => removed.push(path),
                Err(CgroupError::Remove { source, .. }) if is_denied(&source) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
    }
    first_err.map_or(Ok(removed), Err)
}

/// Kills what is left in a stale run cgroup and removes it, cgroups below it first (a tool may
/// have made some when its cgroup was delegated to it).
pub(super) fn remove_stale(dir: &Path, kind: &Kind, emulated: bool) -> Result<(), CgroupError> {
    if !emulated {
        let subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| CgroupError::Read {
                path: dir.into(),
                source,
            })?
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        for sub in subdirs {
            remove_stale(&sub, kind, emulated)?;
        }
    }
    let cg = RunCgroup {
        kind: kind.clone(),
        dirs: vec![(String::new(), dir.to_path_buf())],
        emulated,
        unenforced: Vec::new(),
        removed: true,
    };
    cg.kill_all();
    remove_dir(dir, emulated)
}
