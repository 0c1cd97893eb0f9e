//! Parent side: [`plan()`] builds the step table of a run, the [`Step`]s the child replays in
//! order, from a [`SandboxSpec`].
//!
//! Every target is resolved first ([`super::resolve`]), before any step is planned: mountpoints
//! missing from the rootfs go into a skeleton that must be in place before the root is mounted,
//! and the checks need to see where the image's symlinks lead (no two built-in mounts in one
//! place, no `-v` or `--tmpfs` over `/`, `/proc`, `/sys`, `/dev` or `/dev/pts`). A missing
//! working directory goes into the skeleton too, as Docker makes it. Then the steps, in order:
//!
//! 1. Make `/` a slave mount (nothing propagates back to the host), mount a private tmpfs on
//!    `/tmp` and `pivot_root` into it keeping the host's root at `/old`: the rest is built in a
//!    tree of our own, and host paths are reached only as `/old/proc/self/fd/N` ([`Source`]).
//! 2. The read-only root on `/root`: a recursive bind of the rootfs, made read-only; or a
//!    read-only overlay without an upper layer when the rootfs has several layers, lacks
//!    mountpoints (then made in `/skel`, the overlay's top layer) or the tool holds CAP_SYS_ADMIN
//!    (it could remount a bind read-write). Then `/root` is opened: every later target is opened
//!    beneath it ([`super::step::Target::InRoot`]).
//! 3. `/proc` (fresh, or the host's with `--proc host-bind`), `/dev` (a small tmpfs with the
//!    host's harmless devices bound in, devpts, `/dev/shm`, mqueue), `/sys` (read-only, and only
//!    with a network namespace of the run's own), then the `/tmp` and `/run` tmpfs: the built-in
//!    mounts come before the caller's, which may go below them (`/dev/shm`, `/tmp/x`).
//! 4. The caller's `--tmpfs` mounts, in order. From here on a mountpoint below a tmpfs of the run
//!    is made in that tmpfs right before its mount, since the tmpfs hides the skeleton's.
//! 5. Generated files (`/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`; none with the host's
//!    network), written in the setup tmpfs and bound read-only: before the volumes, so that a
//!    caller's `-v …:/etc/hosts` wins, as in Docker.
//! 6. The volumes (`-v`), in order, made read-only when asked; a mountpoint below an earlier
//!    volume is never created, as that would write into the host's directory.
//! 7. Docker's masks over `/proc` and `/sys` (masked and read-only paths), which need both
//!    mounted.
//! 8. The final `pivot_root` into `/root`, lazily detaching the setup tree and the host below it.

use std::ffi::{CStr, CString};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use libc::c_ulong;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::super::spec::SandboxSpec;
use super::resolve::{inside, reserved, resolve, Kind, Resolved};
use super::step::{Fds, Op, Source, Step, Target, Tolerate};
use super::{cstr, MountError};

/// Size cap of `/run`.
const RUN_SIZE: &str = "size=16m,mode=755";

/// The planned filesystem: steps for the child, the host paths they mount from, and the
/// descriptor numbers they use.
#[derive(Debug)]
pub struct Mounts {
    pub steps: Vec<Step>,
    pub sources: Vec<Source>,
    pub fds: Fds,
}

/// Plans the whole filesystem of a run on the rootfs layers of `spec` (topmost first).
/// `overlay_root` forces the root to be an overlay (read-only for good) even when a bind would do.
/// `generated` files (container path, contents) are written into the child's setup tmpfs and
/// bound read-only over the image's: the rootfs is never written and the host keeps nothing.
pub fn plan(
    spec: &SandboxSpec,
    cwd: &str,
    overlay_root: bool,
    generated: &[(&str, Vec<u8>)],
) -> Result<Mounts, MountError> {
    let layers = &spec.rootfs;
    for l in layers {
        if !l.is_dir() {
            return Err(MountError::RootfsMissing(l.clone()));
        }
    }
    let mut p = Planner {
        layers,
        steps: Vec::new(),
        sources: Vec::new(),
        skeleton: Vec::new(),
    };

    // Resolve every mountpoint first: the skeleton must exist before the root is mounted.
    let proc_t = p.target("/proc", Kind::Dir)?;
    let dev_t = p.target("/dev", Kind::Dir)?;
    let sys_t = p.target("/sys", Kind::Dir)?;
    let tmp_t = p.target("/tmp", Kind::Dir)?;
    let run_t = p.target("/run", Kind::Dir)?;
    // An image whose /dev is a symlink to /tmp would have one mount hide the other, masks
    // and devices included: refuse rather than run with less than promised.
    let builtins = [
        ("/proc", &proc_t),
        ("/dev", &dev_t),
        ("/sys", &sys_t),
        ("/tmp", &tmp_t),
        ("/run", &run_t),
    ];
    for (i, (a, ra)) in builtins.iter().enumerate() {
        for (b, rb) in &builtins[i + 1..] {
            if inside(&ra.path, &rb.path)
                || inside(&rb.path, &ra.path)
                || ra.path == "/"
                || rb.path == "/"
            {
                return Err(MountError::Overlap {
                    a,
                    b,
                    resolved: ra.path.clone(),
                });
            }
        }
    }
    let tmpfs_t = spec
        .tmpfs
        .iter()
        .map(|t| Ok((p.target(&t.target, Kind::Dir)?, t)))
        .collect::<Result<Vec<_>, MountError>>()?;
    let mut binds = Vec::new();
    for b in &spec.binds {
        let meta = std::fs::metadata(&b.source)
            .map_err(|e| MountError::BindSource(b.source.clone(), e))?;
        let kind = if meta.is_dir() { Kind::Dir } else { Kind::File };
        binds.push((p.target(&b.target, kind)?, b.source.clone(), b.read_only));
    }
    // `/proc` and `/sys` carry the masks that hide the host's kernel interfaces, `/dev` and
    // `/dev/pts` the run's devices: a volume or tmpfs over them (Docker refuses `/proc` too)
    // would silently take that away. Below `/dev`, the user's mounts are fine (`/dev/shm`).
    // Checked on the resolved paths: an image symlink `/data -> /proc` must not get around it.
    let user_targets = tmpfs_t
        .iter()
        .map(|(t, _)| t)
        .chain(binds.iter().map(|(t, _, _)| t));
    for t in user_targets {
        if t.path == "/" {
            return Err(MountError::OverRoot(t.path.clone()));
        }
        reserved(&t.path, [&proc_t.path, &sys_t.path, &dev_t.path])?;
    }
    let generated_t = generated
        .iter()
        .map(|(path, data)| Ok((p.target(path, Kind::File)?, *path, data)))
        .collect::<Result<Vec<_>, MountError>>()?;
    // A missing working directory is made (empty, read-only) in the skeleton, as Docker makes it.
    p.target(cwd, Kind::Dir)?;

    p.base_and_root(overlay_root)?;
    p.proc(&proc_t, spec.proc)?;
    p.dev(&dev_t, spec.shm_size)?;
    p.sys(&sys_t, spec.network);
    p.tmpfs(&tmp_t, &format!("size={},mode=1777", spec.tmp_size), "/tmp");
    p.tmpfs(&run_t, RUN_SIZE, "/run");
    // Mountpoints below a tmpfs of the run (`/dev`, `/tmp`, `/run`, a `--tmpfs`) are hidden
    // from the skeleton by that tmpfs: made in it, right before their mount (see `mountpoint`).
    let mut fresh: Vec<String> = [&dev_t, &tmp_t, &run_t]
        .iter()
        .map(|t| t.path.clone())
        .collect();
    for (t, m) in &tmpfs_t {
        p.mountpoint(t, Kind::Dir, &fresh)?;
        fresh.push(t.path.clone());
        let data = m.data();
        let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
        if m.read_only {
            flags |= libc::MS_RDONLY;
        }
        if m.noexec {
            flags |= libc::MS_NOEXEC;
        }
        p.tmpfs_flags(t, &data, &t.path, flags);
    }
    // Before the volumes, so that a `-v …:/etc/hosts` of the caller's wins, as in Docker.
    for (i, (t, shown, data)) in generated_t.iter().enumerate() {
        p.generated(i, t, shown, data)?;
    }
    let mut bound: Vec<&str> = Vec::new();
    for (t, source, ro) in &binds {
        // Never below an earlier volume: that would create the mountpoint in a host directory.
        if !bound.iter().any(|b| inside(&t.path, b)) {
            let kind = if source.is_dir() {
                Kind::Dir
            } else {
                Kind::File
            };
            p.mountpoint(t, kind, &fresh)?;
        }
        bound.push(&t.path);
        p.bind(t, source, *ro)?;
    }
    p.masks(&proc_t, &sys_t)?;
    p.push(
        Op::PivotDetachOld {
            new_root: cstr("/root")?,
        },
        "pivot_root into the container's root",
        Tolerate::Nothing,
    );
    Ok(Mounts {
        steps: p.steps,
        sources: p.sources,
        fds: Fds::reserve()?,
    })
}

pub(super) struct Planner<'a> {
    pub(super) layers: &'a [PathBuf],
    pub(super) steps: Vec<Step>,
    pub(super) sources: Vec<Source>,
    /// Missing mountpoints, made in `/skel`.
    pub(super) skeleton: Vec<(String, Kind)>,
}

impl Planner<'_> {
    /// Names a host path for the child as `/old/proc/self/fd/N`; see [`Source::reopen`]. The
    /// parent opens it to check it exists and to reserve the number N.
    pub(super) fn source(&mut self, path: &Path) -> Result<CString, MountError> {
        let fd = nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| MountError::Open(path.to_path_buf(), e))?;
        let name = format!("/old/proc/self/fd/{}", fd.as_raw_fd());
        let cpath = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| MountError::Nul(path.display().to_string()))?;
        self.sources.push(Source { path: cpath, fd });
        cstr(&name)
    }

    pub(super) fn push(&mut self, op: Op, what: impl Into<String>, tolerate: Tolerate) {
        self.steps.push(Step {
            op,
            what: what.into(),
            tolerate,
        });
    }

    fn target(&mut self, path: &str, kind: Kind) -> Result<Resolved, MountError> {
        let (resolved, found) = resolve(self.layers, path)?;
        let missing = match found {
            None => true,
            Some(found) if found == kind => false,
            Some(found) => {
                return Err(MountError::TypeClash {
                    target: path.to_string(),
                    what: if kind == Kind::Dir {
                        "directory"
                    } else {
                        "file"
                    },
                    found: if found == Kind::Dir {
                        "directory"
                    } else {
                        "non-directory"
                    },
                    resolved,
                })
            }
        };
        if missing && !self.skeleton.iter().any(|(p, _)| *p == resolved) {
            self.skeleton.push((resolved.clone(), kind));
        }
        Ok(Resolved { path: resolved })
    }

    /// Creates the mountpoint `t` (and its missing parents) when it lies strictly below one of
    /// `fresh`, the run's own tmpfs mounts, which hide what the skeleton made. Plain paths are
    /// fine here: nothing but nsrun has written in those tmpfs yet.
    fn mountpoint(&mut self, t: &Resolved, kind: Kind, fresh: &[String]) -> Result<(), MountError> {
        let Some(base) = fresh
            .iter()
            .filter(|f| t.path != **f && inside(&t.path, f))
            .max_by_key(|f| f.len())
        else {
            return Ok(());
        };
        let rest = t.path[base.len()..].trim_start_matches('/');
        let mut path = base.trim_end_matches('/').to_string();
        let parts: Vec<&str> = rest.split('/').filter(|c| !c.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            path = format!("{path}/{part}");
            let last = i + 1 == parts.len();
            let op = if last && kind == Kind::File {
                Op::Touch {
                    path: cstr(&format!("/root{path}"))?,
                }
            } else {
                Op::Mkdir {
                    path: cstr(&format!("/root{path}"))?,
                    mode: 0o755,
                }
            };
            self.push(
                op,
                format!("create the mountpoint {path}"),
                Tolerate::Nothing,
            );
        }
        Ok(())
    }

    fn tmpfs(&mut self, t: &Resolved, data: &str, shown: &str) {
        self.tmpfs_flags(t, data, shown, libc::MS_NOSUID | libc::MS_NODEV);
    }

    fn tmpfs_flags(&mut self, t: &Resolved, data: &str, shown: &str, flags: c_ulong) {
        self.push(
            mnt(
                Some(c"tmpfs".into()),
                t.in_root(),
                Some(c"tmpfs"),
                flags,
                Some(data),
            ),
            format!("mount tmpfs ({data}) on {shown}"),
            Tolerate::Nothing,
        );
    }

    /// Writes a generated file into the setup tmpfs and binds it read-only onto `t`.
    fn generated(
        &mut self,
        i: usize,
        t: &Resolved,
        shown: &str,
        data: &[u8],
    ) -> Result<(), MountError> {
        let path = cstr(&format!("/generated-{i}"))?;
        self.push(
            Op::WriteFile {
                path: path.clone(),
                data: data.to_vec(),
            },
            format!("write the run's {shown}"),
            Tolerate::Nothing,
        );
        self.push(
            mnt(Some(path), t.in_root(), None, libc::MS_BIND, None),
            format!("bind the run's {shown}"),
            Tolerate::Nothing,
        );
        self.push(
            Op::ReadOnly {
                target: t.in_root(),
            },
            format!("make {shown} read-only"),
            Tolerate::Nothing,
        );
        Ok(())
    }

    fn bind(&mut self, t: &Resolved, source: &Path, read_only: bool) -> Result<(), MountError> {
        let src = self.source(source)?;
        self.push(
            mnt(
                Some(src),
                t.in_root(),
                None,
                libc::MS_BIND | libc::MS_REC,
                None,
            ),
            format!("bind {} on {}", source.display(), t.path),
            Tolerate::Nothing,
        );
        if read_only {
            self.push(
                Op::ReadOnly {
                    target: t.in_root(),
                },
                format!("make {} read-only", t.path),
                Tolerate::Nothing,
            );
        }
        Ok(())
    }
}

/// A mount(2) operation.
pub(super) fn mnt(
    source: Option<CString>,
    target: Target,
    fstype: Option<&CStr>,
    flags: c_ulong,
    data: Option<&str>,
) -> Op {
    Op::Mount {
        source,
        target,
        fstype: fstype.map(CStr::to_owned),
        flags,
        data: data.map(|d| CString::new(d).expect("mount options have no NUL")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_mounts_an_image_puts_in_one_place_are_refused() {
        let d = tempfile::tempdir().unwrap();
        for dir in ["proc", "sys", "tmp/x", "run"] {
            std::fs::create_dir_all(d.path().join(dir)).unwrap();
        }
        // /dev below /tmp: the /tmp tmpfs would hide the run's devices.
        std::os::unix::fs::symlink("/tmp/x", d.path().join("dev")).unwrap();
        let spec = SandboxSpec::new(d.path(), ["/bin/true"]);
        let err = plan(&spec, "/", false, &[]).unwrap_err();
        assert!(
            matches!(
                err,
                MountError::Overlap {
                    a: "/dev",
                    b: "/tmp",
                    ..
                }
            ),
            "{err}"
        );
        std::fs::remove_file(d.path().join("dev")).unwrap();
        std::os::unix::fs::symlink("/tmpfs", d.path().join("dev")).unwrap();
        assert!(plan(&spec, "/", false, &[]).is_ok());
    }

    #[test]
    fn missing_mountpoints_go_to_an_overlay_skeleton() {
        let d = tempfile::tempdir().unwrap();
        for dir in ["proc", "dev", "sys", "tmp"] {
            std::fs::create_dir(d.path().join(dir)).unwrap();
        }
        let mut spec = SandboxSpec::new(d.path(), ["/bin/true"]);
        spec.binds
            .push("/etc/hostname:/data/name:ro".parse().unwrap());
        let steps = plan(&spec, "/", false, &[]).unwrap().steps;
        let whats: Vec<&str> = steps.iter().map(|s| s.what.as_str()).collect();
        assert!(whats.contains(&"create mountpoint /run (missing from the rootfs)"));
        assert!(whats.contains(&"create mountpoint /data/name (missing from the rootfs)"));
        assert!(whats
            .iter()
            .any(|w| w.starts_with("mount the read-only overlay")));
        assert!(!whats.iter().any(|w| w.starts_with("bind the rootfs")));
        assert!(matches!(
            steps.last().unwrap().op,
            Op::PivotDetachOld { .. }
        ));

        std::fs::create_dir(d.path().join("run")).unwrap();
        std::fs::create_dir_all(d.path().join("data/name")).unwrap();
        let err = plan(&spec, "/", false, &[]).unwrap_err();
        assert!(
            err.to_string().contains("cannot mount a file there"),
            "{err}"
        );
        spec.binds.clear();
        let steps = plan(&spec, "/", false, &[]).unwrap().steps;
        assert!(steps.iter().any(|s| s.what.starts_with("bind the rootfs")));
        assert!(!steps
            .iter()
            .any(|s| s.what.starts_with("create mountpoint")));
    }
}
