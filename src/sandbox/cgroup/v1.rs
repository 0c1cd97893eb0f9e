//! The v1 hierarchies of hybrid hosts: one directory per controller hierarchy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::v2::keyed;
use super::{
    is_cgroupfs, is_denied, mkdir, read, write, CgroupError, CgroupStats, Entry, Kind, Limits,
    RunCgroup,
};

/// The directory of the v1 hierarchy holding `controller`, our path in it, and every controller
/// of that hierarchy (`cpu,cpuacct` when co-mounted).
fn hierarchy(
    fs_root: &Path,
    entries: &[Entry],
    controller: &str,
) -> Option<(PathBuf, PathBuf, String)> {
    let entry = entries
        .iter()
        .find(|e| e.controllers.iter().any(|c| c == controller))?;
    // Co-mounted controllers live in "cpu,cpuacct", usually with a "cpu" symlink to it.
    let mount = [
        fs_root.join(controller),
        fs_root.join(entry.controllers.join(",")),
    ]
    .into_iter()
    .find(|p| p.is_dir())?;
    // Resolve the symlink, so cpu and cpuacct are seen to be one directory.
    let mount = std::fs::canonicalize(&mount).unwrap_or(mount);
    let ours = mount.join(&entry.path);
    Some((mount, ours, entry.controllers.join(",")))
}

/// The `nsrun/` levels below our cgroup in the hierarchies [`try_create`] uses (memory, cpu,
/// pids), each once, with whether it is a fake tree.
pub(super) fn nsrun_levels(fs_root: &Path, entries: &[Entry]) -> Vec<(PathBuf, bool)> {
    let mut out: Vec<(PathBuf, bool)> = Vec::new();
    for controller in ["memory", "cpu", "pids"] {
        if let Some((mount, ours, _)) = hierarchy(fs_root, entries, controller) {
            let base = ours.join("nsrun");
            if !out.iter().any(|(b, _)| *b == base) {
                out.push((base, !is_cgroupfs(&mount)));
            }
        }
    }
    out
}

/// Creates `<our cgroup>/nsrun/<run_id>` in each needed hierarchy, or says (inner `Err`) why v1
/// cannot serve. Nothing is left behind on failure.
pub(super) fn try_create(
    fs_root: &Path,
    entries: &[Entry],
    limits: &Limits,
    run_id: &str,
) -> Result<Result<RunCgroup, String>, CgroupError> {
    // (controller, required). memory is also how peak usage and OOM kills are read, so it is
    // created when possible even without a memory limit. CPU time comes from cpuacct only when it
    // shares cpu's directory: otherwise the caller's wait4 rusage (which covers every process
    // the sandbox's pid 1 reaped) says the same without a fourth cgroup to create and join.
    let wanted = [
        ("memory", limits.needs_memory()),
        ("cpu", limits.needs_cpu()),
        ("pids", limits.pids.is_some()),
    ];
    let mut cg = RunCgroup {
        kind: Kind::V1,
        dirs: Vec::new(),
        emulated: false,
        unenforced: Vec::new(),
        removed: false,
    };
    let init = |dir: &Path| std::fs::write(dir.join("cgroup.procs"), "");
    for (controller, required) in wanted {
        let Some((mount, ours, label)) = hierarchy(fs_root, entries, controller) else {
            if required {
                return Ok(Err(format!(
                    "no v1 {controller} hierarchy under {}",
                    fs_root.display()
                )));
            }
            continue;
        };
        let dir = ours.join("nsrun").join(run_id);
        // Two wanted controllers in one hierarchy: one directory serves both.
        if cg.dirs.iter().any(|(_, d)| *d == dir) {
            continue;
        }
        let emulated = !is_cgroupfs(&mount);
        cg.emulated |= emulated;
        let created =
            mkdir(&ours.join("nsrun"), emulated, init).and_then(|_| mkdir(&dir, emulated, init));
        match created {
            Ok(true) => cg.dirs.push((label, dir)),
            Ok(false) => {
                return Err(CgroupError::Create {
                    path: dir,
                    source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
                })
            }
            Err(e) if is_denied(&e) && required => {
                return Ok(Err(format!("cannot create {}: {e}", dir.display())));
            }
            Err(e) if is_denied(&e) => {}
            Err(source) => return Err(CgroupError::Create { path: dir, source }),
        }
    }
    // On error, cg's Drop removes what was created.
    apply_limits(&mut cg, limits)?;
    Ok(Ok(cg))
}

fn dir_of<'a>(cg: &'a RunCgroup, controller: &str) -> Option<&'a Path> {
    dir_in(&cg.dirs, controller)
}

fn dir_in<'a>(dirs: &'a [(String, PathBuf)], controller: &str) -> Option<&'a Path> {
    dirs.iter()
        .find(|(c, _)| c.split(',').any(|x| x == controller))
        .map(|(_, d)| d.as_path())
}

fn apply_limits(cg: &mut RunCgroup, limits: &Limits) -> Result<(), CgroupError> {
    let em = cg.emulated;
    if let Some(dir) = dir_of(cg, "memory").map(Path::to_path_buf) {
        if let Some(m) = limits.memory {
            // The limit goes first: memsw must never be below it.
            write(&dir.join("memory.limit_in_bytes"), &m.to_string(), em)?;
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            if em || memsw.exists() {
                let total = limits
                    .swap()?
                    .map_or("-1".to_string(), |s| (m + s).to_string());
                write(&memsw, &total, em)?;
            } else if limits.memory_swap.is_some() {
                // No swap accounting (swapaccount=0): only memory is limited.
                cg.unenforced.push("--memory-swap".into());
            }
        }
    }
    if let Some(dir) = dir_of(cg, "cpu").map(Path::to_path_buf) {
        if let Some(q) = limits.cpu_quota_us() {
            write(
                &dir.join("cpu.cfs_period_us"),
                &super::CPU_PERIOD_US.to_string(),
                em,
            )?;
            write(&dir.join("cpu.cfs_quota_us"), &q.to_string(), em)?;
        }
        if let Some(s) = limits.shares() {
            write(&dir.join("cpu.shares"), &s.to_string(), em)?;
        }
    }
    if let Some(dir) = dir_of(cg, "pids").map(Path::to_path_buf) {
        if let Some(p) = limits.pids {
            write(&dir.join("pids.max"), &p.to_string(), em)?;
        }
    }
    Ok(())
}

pub(super) fn stats(dirs: &[(String, PathBuf)]) -> CgroupStats {
    let mut s = CgroupStats::default();
    if let Some(mem) = dir_in(dirs, "memory") {
        // "oom_kill" in memory.oom_control (Linux 4.13+) counts kills; under_oom alone does not.
        s.oom_killed = read(&mem.join("memory.oom_control"))
            .ok()
            .and_then(|t| keyed(&t, "oom_kill"))
            .is_some_and(|n| n > 0);
        s.peak_memory = read(&mem.join("memory.max_usage_in_bytes"))
            .ok()
            .and_then(|t| t.trim().parse().ok());
    }
    if let Some(acct) = dir_in(dirs, "cpuacct") {
        s.cpu_time = read(&acct.join("cpuacct.usage"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .map(Duration::from_nanos);
    }
    s
}
