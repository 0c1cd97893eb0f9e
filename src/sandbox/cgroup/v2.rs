//! The unified (v2) hierarchy: one directory, controllers enabled through `cgroup.subtree_control`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    is_cgroupfs, is_denied, mkdir, read, remove_dir, write, CgroupError, CgroupStats, Entry, Kind,
    Limits, RunCgroup,
};

/// Where the unified hierarchy is mounted: `/sys/fs/cgroup` on v2 hosts, `/sys/fs/cgroup/unified`
/// on hybrid ones.
fn mount_point(fs_root: &Path) -> Option<PathBuf> {
    [fs_root.to_path_buf(), fs_root.join("unified")]
        .into_iter()
        .find(|p| p.join("cgroup.controllers").is_file())
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// The `nsrun/` level below our cgroup in the unified hierarchy, with whether it is a fake tree.
pub(super) fn nsrun_level(fs_root: &Path, entries: &[Entry]) -> Option<(PathBuf, bool)> {
    let entry = entries.iter().find(|e| e.controllers.is_empty())?;
    let mount = mount_point(fs_root)?;
    Some((mount.join(&entry.path).join("nsrun"), !is_cgroupfs(&mount)))
}

/// Creates `<our cgroup>/nsrun/<run_id>` with `limits`, or says (inner `Err`) why v2 cannot serve.
pub(super) fn try_create(
    fs_root: &Path,
    entries: &[Entry],
    limits: &Limits,
    run_id: &str,
) -> Result<Result<RunCgroup, String>, CgroupError> {
    let Some(entry) = entries.iter().find(|e| e.controllers.is_empty()) else {
        return Ok(Err("no unified hierarchy in /proc/self/cgroup".into()));
    };
    let Some(mount) = mount_point(fs_root) else {
        return Ok(Err(format!(
            "no cgroup2 filesystem at {}",
            fs_root.display()
        )));
    };
    let ours = mount.join(&entry.path);
    let delegated = match std::fs::read_to_string(ours.join("cgroup.subtree_control")) {
        Ok(s) => words(&s),
        Err(e) => {
            return Ok(Err(format!(
                "reading {}/cgroup.subtree_control: {e}",
                ours.display()
            )))
        }
    };
    let mut needed: Vec<&str> = Vec::new();
    if limits.needs_memory() {
        needed.push("memory");
    }
    if limits.needs_cpu() {
        needed.push("cpu");
    }
    if limits.pids.is_some() {
        needed.push("pids");
    }
    let missing: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|c| !delegated.iter().any(|d| d == c))
        .collect();
    if !missing.is_empty() {
        return Ok(Err(format!(
            "{} does not delegate {} (its cgroup.subtree_control)",
            ours.display(),
            missing.join(", ")
        )));
    }
    // memory is also how peak usage and OOM kills are read: enable it when we may.
    if !needed.contains(&"memory") && delegated.iter().any(|d| d == "memory") {
        needed.push("memory");
    }
    let emulated = !is_cgroupfs(&mount);
    let init = |dir: &Path| -> std::io::Result<()> {
        // What the kernel does on mkdir: the child's controllers are the parent's subtree_control.
        let parent = dir.parent().expect("a cgroup below the mount");
        let ctl =
            std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
        std::fs::write(dir.join("cgroup.controllers"), ctl.trim())?;
        std::fs::write(dir.join("cgroup.subtree_control"), "")?;
        std::fs::write(dir.join("cgroup.procs"), "")?;
        if parent.join("cgroup.kill").exists() {
            std::fs::write(dir.join("cgroup.kill"), "")?;
        }
        Ok(())
    };

    let base = ours.join("nsrun");
    match mkdir(&base, emulated, init) {
        Ok(_) => {}
        Err(e) if is_denied(&e) => {
            return Ok(Err(format!("cannot create {}: {e}", base.display())))
        }
        Err(source) => return Err(CgroupError::Create { path: base, source }),
    }
    // Our own level: enabling controllers here changes no cgroup we did not create.
    let ctl = base.join("cgroup.subtree_control");
    let value = if emulated {
        let mut now = words(&std::fs::read_to_string(&ctl).unwrap_or_default());
        for c in &needed {
            if !now.iter().any(|n| n == c) {
                now.push(c.to_string());
            }
        }
        now.join(" ")
    } else {
        needed
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    match write(&ctl, &value, emulated) {
        Ok(()) => {}
        Err(CgroupError::Write { source, .. }) if is_denied(&source) => {
            return Ok(Err(format!(
                "cannot enable controllers in {}: {source}",
                ctl.display()
            )))
        }
        Err(e) => return Err(e),
    }
    let dir = base.join(run_id);
    match mkdir(&dir, emulated, init) {
        Ok(true) => {}
        Ok(false) => {
            return Err(CgroupError::Create {
                path: dir,
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            })
        }
        Err(e) if is_denied(&e) => return Ok(Err(format!("cannot create {}: {e}", dir.display()))),
        Err(source) => return Err(CgroupError::Create { path: dir, source }),
    }
    let mut cg = RunCgroup {
        kind: Kind::V2,
        dirs: vec![(String::new(), dir)],
        emulated,
        unenforced: Vec::new(),
        removed: false,
    };
    if let Err(e) = apply_limits(&mut cg, limits) {
        let _ = remove_dir(&cg.dirs[0].1, emulated);
        cg.removed = true;
        return Err(e);
    }
    Ok(Ok(cg))
}

fn apply_limits(cg: &mut RunCgroup, limits: &Limits) -> Result<(), CgroupError> {
    let dir = cg.dirs[0].1.clone();
    let em = cg.emulated;
    if let Some(m) = limits.memory {
        write(&dir.join("memory.max"), &m.to_string(), em)?;
    }
    if limits.needs_memory() {
        let swap = limits.swap()?;
        let file = dir.join("memory.swap.max");
        if em || file.exists() {
            write(&file, &swap.map_or("max".into(), |s| s.to_string()), em)?;
        } else if limits.memory_swap.is_some() {
            // No swap accounting on this kernel (CONFIG_MEMCG_SWAP off).
            cg.unenforced.push("--memory-swap".into());
        }
    }
    if let Some(q) = limits.cpu_quota_us() {
        write(
            &dir.join("cpu.max"),
            &format!("{q} {}", super::CPU_PERIOD_US),
            em,
        )?;
    }
    if let Some(s) = limits.shares() {
        // runc's mapping of shares [2, 262144] onto weight [1, 10000].
        let weight = 1 + ((s - 2) * 9999) / 262_142;
        write(&dir.join("cpu.weight"), &weight.to_string(), em)?;
    }
    if let Some(p) = limits.pids {
        write(&dir.join("pids.max"), &p.to_string(), em)?;
    }
    Ok(())
}

/// Value of `key` in a flat-keyed file (`memory.events`, `cpu.stat`).
pub(super) fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key))
            .then(|| it.next()?.parse().ok())
            .flatten()
    })
}

pub(super) fn stats(dir: &Path) -> CgroupStats {
    let events = read(&dir.join("memory.events")).ok();
    CgroupStats {
        oom_killed: events
            .as_deref()
            .and_then(|t| keyed(t, "oom_kill"))
            .is_some_and(|n| n > 0),
        peak_memory: read(&dir.join("memory.peak"))
            .ok()
            .and_then(|t| t.trim().parse().ok()),
        cpu_time: read(&dir.join("cpu.stat"))
            .ok()
            .and_then(|t| keyed(&t, "usage_usec"))
            .map(Duration::from_micros),
    }
}
