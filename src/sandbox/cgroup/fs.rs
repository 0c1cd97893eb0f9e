//! The cgroup filesystem as files: read, write, mkdir, rmdir (retried while the kernel counts
//! exiting tasks), and the emulation a fake tree in a plain directory gets in tests.

use std::path::Path;
use std::time::Duration;

use super::*;

/// Whether a failed mkdir/write means "no cgroup for us here" rather than a real error.
pub(super) fn is_denied(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EACCES)
            | Some(libc::EPERM)
            | Some(libc::EROFS)
            | Some(libc::ENOENT)
            | Some(libc::ENOTDIR)
    )
}

/// Whether `dir` is on a real cgroup filesystem (else: a fake tree the kernel does not drive).
pub(super) fn is_cgroupfs(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir)
        .map(|s| {
            let t = s.filesystem_type();
            t == nix::sys::statfs::CGROUP2_SUPER_MAGIC || t == nix::sys::statfs::CGROUP_SUPER_MAGIC
        })
        .unwrap_or(false)
}

pub(super) fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.into(),
        source,
    })
}

/// Writes one value to a control file. On a fake tree the file is created, as the kernel would
/// have; on cgroupfs it must exist (a missing file means a missing controller).
pub(super) fn write(path: &Path, value: &str, emulated: bool) -> Result<(), CgroupError> {
    use std::io::Write;
    let res = std::fs::OpenOptions::new()
        .write(true)
        .create(emulated)
        .truncate(emulated)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()));
    res.map_err(|source| CgroupError::Write {
        path: path.into(),
        value: value.into(),
        source,
    })
}

/// Creates `dir` (a new cgroup); `Ok(false)` if it already existed. On a fake tree, fills it in
/// with `init` the way the kernel would have.
pub(super) fn mkdir(
    dir: &Path,
    emulated: bool,
    init: impl Fn(&Path) -> std::io::Result<()>,
) -> std::io::Result<bool> {
    match std::fs::create_dir(dir) {
        Ok(()) => {
            if emulated {
                init(dir)?;
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// `rmdir`, retried while the kernel still counts exiting tasks (EBUSY). On a fake tree the
/// control files go with it.
pub(super) fn remove_dir(dir: &Path, emulated: bool) -> Result<(), CgroupError> {
    for attempt in 0..50 {
        let res = if emulated {
            std::fs::remove_dir_all(dir)
        } else {
            std::fs::remove_dir(dir)
        };
        match res {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 49 => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.into(),
                    source,
                })
            }
        }
    }
    unreachable!("the last attempt returns")
}

pub(super) fn read_pids(procs: &Path) -> Result<Vec<i32>, CgroupError> {
    Ok(read(procs)?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}
