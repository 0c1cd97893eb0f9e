//! Parent side: where a mount target lands in the rootfs, and whether it may go there.
//!
//! [`resolve()`] follows the image's symlinks within the rootfs layers only, so a target becomes
//! a symlink-free path under the container root; [`check_target`] and [`reserved`] refuse user
//! mounts over `/`, `/proc`, `/sys`, `/dev` and `/dev/pts`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::step::Target;
use super::MountError;

/// Refuses a user mount (`-v`, `--tmpfs`) at `target` when it would cover what nsrun mounts
/// itself: `/proc` and `/sys` (and below: they carry the masks that hide the host's kernel
/// interfaces), `/dev` and `/dev/pts` (the run's devices). Below `/dev` the user's mounts are
/// fine (`/dev/shm`). `builtins` are where `/proc`, `/sys` and `/dev` resolve to in the rootfs.
pub(super) fn reserved(target: &str, builtins: [&str; 3]) -> Result<(), MountError> {
    let [proc_p, sys_p, dev_p] = builtins;
    let reserved = if inside(target, proc_p) {
        "/proc"
    } else if inside(target, sys_p) {
        "/sys"
    } else if target == dev_p {
        "/dev"
    } else if inside(target, &format!("{}/pts", dev_p.trim_end_matches('/'))) {
        "/dev/pts"
    } else {
        return Ok(());
    };
    Err(MountError::Reserved {
        target: target.to_string(),
        reserved,
    })
}

/// [`reserved`] on the path as written, before any rootfs is at hand (the CLI checks its flags
/// before it pulls an image): `/proc/`, `//sys/x` and `/dev/./pts` count as what they name.
pub fn check_target(target: &str) -> Result<(), MountError> {
    let mut parts: Vec<&str> = Vec::new();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let normal = format!("/{}", parts.join("/"));
    if normal == "/" {
        return Err(MountError::OverRoot(target.to_string()));
    }
    reserved(&normal, ["/proc", "/sys", "/dev"])
}

/// Whether `x` is `y` or below it.
pub(super) fn inside(x: &str, y: &str) -> bool {
    x == y || x.starts_with(&format!("{}/", y.trim_end_matches('/')))
}

/// What kind of mountpoint a mount needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Dir,
    File,
}

/// A mount target resolved inside the rootfs: a symlink-free absolute path.
#[derive(Debug, Clone)]
pub(super) struct Resolved {
    pub(super) path: String,
}

impl Resolved {
    /// The target for the child: relative to the container root.
    pub(super) fn in_root(&self) -> Target {
        Target::InRoot(
            CString::new(self.path.trim_start_matches('/')).expect("resolved paths have no NUL"),
        )
    }

    pub(super) fn child(&self, name: &str) -> Resolved {
        Resolved {
            path: format!("{}/{name}", self.path.trim_end_matches('/')),
        }
    }
}

/// Resolves `path` inside the union of `layers` (topmost first), following symlinks within the
/// rootfs as the container would see them. Returns the symlink-free path and what is there.
pub(super) fn resolve(
    layers: &[PathBuf],
    path: &str,
) -> Result<(String, Option<Kind>), MountError> {
    let mut todo: Vec<String> = Path::new(path)
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut done: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(comp) = todo.pop() {
        if comp == ".." {
            done.pop();
            continue;
        }
        done.push(comp);
        let rel = done.join("/");
        let found = layers
            .iter()
            .find_map(|l| std::fs::symlink_metadata(l.join(&rel)).ok().map(|m| (l, m)));
        let Some((layer, meta)) = found else {
            // Missing: the rest is missing too.
            done.extend(todo.drain(..).rev());
            return Ok((format!("/{}", done.join("/")), None));
        };
        if meta.file_type().is_symlink() {
            links += 1;
            if links > 40 {
                return Err(MountError::SymlinkLoop(path.to_string()));
            }
            let dest = std::fs::read_link(layer.join(&rel))
                .map_err(|_| MountError::SymlinkLoop(path.to_string()))?;
            done.pop();
            if dest.is_absolute() {
                done.clear();
            }
            for c in dest.components().rev() {
                match c {
                    Component::Normal(s) => {
                        todo.push(String::from_utf8_lossy(s.as_bytes()).into_owned())
                    }
                    Component::ParentDir => todo.push("..".into()),
                    _ => {}
                }
            }
            continue;
        }
        if todo.is_empty() {
            let kind = if meta.is_dir() { Kind::Dir } else { Kind::File };
            return Ok((format!("/{rel}"), Some(kind)));
        }
        if !meta.is_dir() {
            return Err(MountError::TypeClash {
                target: path.to_string(),
                what: "directory",
                found: "non-directory",
                resolved: format!("/{rel}"),
            });
        }
    }
    Ok(("/".into(), Some(Kind::Dir)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn targets_resolve_through_image_symlinks_but_stay_inside() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("run")).unwrap();
        std::fs::create_dir_all(r.join("var")).unwrap();
        symlink("/run", r.join("var/run")).unwrap();
        symlink("../../../../..", r.join("var/up")).unwrap();
        std::fs::write(r.join("file"), "").unwrap();
        let layers = [r.to_path_buf()];
        assert_eq!(
            resolve(&layers, "/var/run/x").unwrap(),
            ("/run/x".into(), None)
        );
        assert_eq!(
            resolve(&layers, "/var/run").unwrap(),
            ("/run".into(), Some(Kind::Dir))
        );
        assert_eq!(
            resolve(&layers, "/var/up/etc").unwrap(),
            ("/etc".into(), None)
        );
        assert_eq!(
            resolve(&layers, "/../../file").unwrap(),
            ("/file".into(), Some(Kind::File))
        );
        assert!(resolve(&layers, "/file/sub").is_err());
        symlink("loop", r.join("loop")).unwrap();
        assert!(matches!(
            resolve(&layers, "/loop"),
            Err(MountError::SymlinkLoop(_))
        ));
    }

    #[test]
    fn inside_means_the_path_itself_or_below_it() {
        assert!(inside("/proc", "/proc"));
        assert!(inside("/proc/sys", "/proc"));
        assert!(inside("/proc/sys", "/proc/"));
        assert!(inside("/x", "/"));
        assert!(!inside("/procfs", "/proc"));
        assert!(!inside("/proc", "/proc/sys"));
        // The one helper now serves the checks on resolved paths as well.
        assert!(reserved("/srv/proc/x", ["/srv/proc", "/sys", "/dev"]).is_err());
        assert!(reserved("/srv/procfs", ["/srv/proc", "/sys", "/dev"]).is_ok());
        assert!(reserved("/dev/pts", ["/proc", "/sys", "/dev/"]).is_err());
    }

    #[test]
    fn mounts_over_procfs_sysfs_and_devices_are_refused() {
        for bad in [
            "/proc",
            "/proc/",
            "/proc/sys",
            "//sys/kernel",
            "/dev",
            "/dev/pts",
            "/dev/./pts/0",
            "/x/../proc",
            "/",
        ] {
            assert!(check_target(bad).is_err(), "{bad:?} accepted");
        }
        for good in [
            "/dev/shm",
            "/data",
            "/procfs",
            "/system",
            "/devices",
            "/dev/fuse",
        ] {
            assert!(check_target(good).is_ok(), "{good:?} refused");
        }
        let e = check_target("/proc").unwrap_err().to_string();
        assert!(e.contains("/proc") && !e.contains('\n'), "{e}");
    }
}
