//! The filesystem of a run: planned in the parent as an ordered list of [`Step`]s, replayed in the
//! child by [`Step::execute`] without allocating.
//!
//! Layout while the child sets up (after the first pivot):
//! ```text
//! /            a small tmpfs of our own (host /tmp, over-mounted in our mount namespace only)
//! /old         the host's root: sources of binds are reached as /old/<host path>
//! /skel        mountpoints missing from the rootfs, layered over it by a read-only overlay
//! /root        the container's root: rootfs bound read-only (or overlay), then /proc, /dev, …
//! ```
//! The final pivot makes `/root` the root and detaches everything else, host included.
//!
//! Mount targets are resolved in the parent against the rootfs layers, following the image's
//! symlinks inside the rootfs only, so a target is always a symlink-free path under `/root`:
//! once the child is inside the base tmpfs an absolute symlink would resolve against *it*.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

use std::path::{Component, Path, PathBuf};

use std::os::fd::{AsRawFd, OwnedFd};

use libc::c_ulong;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use thiserror::Error;

use super::masks::{MASKED_PATHS, READONLY_PATHS};
use super::spec::{Network, SandboxSpec};
use super::sys;

/// Where the child mounts its private tmpfs before the first pivot.
const BASE: &str = "/tmp";
/// Host devices bound into the container's `/dev` (no mknod in a user namespace).
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// Size of `/dev` (it holds only mountpoints and symlinks) and of `/dev/shm`, as in Docker.
const DEV_SIZE: &str = "size=64k,mode=755";
const SHM_SIZE: &str = "size=64m,mode=1777";
/// Size cap of `/run`.
const RUN_SIZE: &str = "size=16m,mode=755";

#[derive(Debug, Error)]
pub enum MountError {
    #[error("rootfs {0}: not a directory")]
    RootfsMissing(PathBuf),
    #[error("volume source {0}: {1}")]
    BindSource(PathBuf, std::io::Error),
    #[error("{target}: cannot mount a {what} there: the rootfs has a {found} at {resolved}")]
    TypeClash {
        target: String,
        what: &'static str,
        found: &'static str,
        resolved: String,
    },
    #[error("{0}: too many levels of symbolic links in the rootfs")]
    SymlinkLoop(String),
    #[error("{0}: path contains a NUL byte")]
    Nul(String),
    #[error("overlay options for {0} layers exceed one page; flatten the rootfs")]
    TooManyLayers(usize),
    #[error("open {0}: {1}")]
    Open(PathBuf, nix::Error),
    #[error("statvfs {0}: {1}")]
    Statvfs(PathBuf, nix::Error),
}

/// How the child may shrug off a failed step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tolerate {
    Nothing,
    /// ENOENT: the path is not there on this kernel (masked /proc entries).
    Missing,
    /// Any error: a nicety (mqueue, sysfs) whose absence the tool can live with.
    Anything,
}

/// One operation of the child's filesystem setup.
#[derive(Debug)]
pub enum Op {
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: c_ulong,
        data: Option<CString>,
    },
    Mkdir {
        path: CString,
        mode: libc::mode_t,
    },
    Touch {
        path: CString,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    /// `chdir(new_root); pivot_root(".", put_old)`: the old root stays reachable at `put_old`.
    PivotKeepOld {
        new_root: CString,
        put_old: CString,
    },
    /// Pivot into `new_root` and lazily detach the old root with everything under it.
    PivotDetachOld {
        new_root: CString,
    },
}

/// An operation with what to say if it fails.
#[derive(Debug)]
pub struct Step {
    pub op: Op,
    pub what: String,
    pub tolerate: Tolerate,
}

impl Step {
    /// Child side. Allocation-free.
    pub fn execute(&self) -> Result<(), i32> {
        let res = match &self.op {
            Op::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => sys::mount(
                source.as_deref(),
                target,
                fstype.as_deref(),
                *flags,
                data.as_deref(),
            ),
            Op::Mkdir { path, mode } => sys::mkdir(path, *mode),
            Op::Touch { path } => sys::touch(path, 0o644),
            Op::Symlink { target, link } => sys::symlink(target, link),
            Op::PivotKeepOld { new_root, put_old } => sys::chdir(new_root)
                .and_then(|_| sys::pivot_root(c".", put_old))
                .and_then(|_| sys::chdir(c"/")),
            Op::PivotDetachOld { new_root } => pivot_detach(new_root),
        };
        match (res, self.tolerate) {
            (Err(libc::ENOENT), Tolerate::Missing) | (Err(_), Tolerate::Anything) => Ok(()),
            (res, _) => res,
        }
    }
}

/// The `pivot_root(".", ".")` dance: the old root ends up stacked on the new one, where a lazy
/// unmount of "." detaches it (and the host tree below it) without needing a directory for it.
fn pivot_detach(new_root: &std::ffi::CStr) -> Result<(), i32> {
    // SAFETY: opening "/" read-only as a directory; the fd is closed below.
    let old = unsafe {
        libc::open(
            c"/".as_ptr(),
            libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if old < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    let res = (|| {
        sys::chdir(new_root)?;
        sys::pivot_root(c".", c".")?;
        // SAFETY: fchdir to a directory fd we hold.
        if unsafe { libc::fchdir(old) } < 0 {
            return Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO));
        }
        sys::mount(None, c".", None, libc::MS_SLAVE | libc::MS_REC, None)?;
        sys::umount2(c".", libc::MNT_DETACH)?;
        sys::chdir(c"/")
    })();
    sys::close(old);
    res
}

/// What kind of mountpoint a mount needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
}

/// A mount target resolved inside the rootfs.
#[derive(Debug, Clone)]
struct Target {
    /// Symlink-free absolute path inside the container.
    path: String,
}

/// A host path that steps mount from, reached by the child through `/proc/self/fd/N`.
#[derive(Debug)]
pub struct Source {
    pub path: CString,
    /// Holds the number N reserved in the parent until the run ends.
    pub fd: OwnedFd,
}

impl Source {
    /// Child side: opens the path onto the reserved number.
    pub fn reopen(&self) -> Result<(), i32> {
        // SAFETY: path is NUL-terminated; the temporary fd is closed or moved right after.
        let fd = unsafe { libc::open(self.path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO));
        }
        // SAFETY: dup3 onto a number this process holds; it replaces the parent's copy.
        let ret = unsafe { libc::dup3(fd, self.fd.as_raw_fd(), libc::O_CLOEXEC) };
        sys::close(fd);
        if ret < 0 {
            return Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO));
        }
        Ok(())
    }
}

/// The planned filesystem: steps for the child and the host paths they mount from.
#[derive(Debug)]
pub struct Mounts {
    pub steps: Vec<Step>,
    pub sources: Vec<Source>,
}

/// Plans the whole filesystem of a run on the rootfs layers of `spec` (topmost first).
pub fn plan(spec: &SandboxSpec, cwd: &str) -> Result<Mounts, MountError> {
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
    let tmpfs_t = spec
        .tmpfs
        .iter()
        .map(|t| Ok((p.target(&t.target, Kind::Dir)?, t.size)))
        .collect::<Result<Vec<_>, MountError>>()?;
    let mut binds = Vec::new();
    for b in &spec.binds {
        let meta = std::fs::metadata(&b.source)
            .map_err(|e| MountError::BindSource(b.source.clone(), e))?;
        let kind = if meta.is_dir() { Kind::Dir } else { Kind::File };
        let source = std::fs::canonicalize(&b.source)
            .map_err(|e| MountError::BindSource(b.source.clone(), e))?;
        let locked = locked_flags(&source)?;
        binds.push((p.target(&b.target, kind)?, source, b.read_only, locked));
    }
    // A missing working directory is made (empty, read-only) in the skeleton, as Docker makes it.
    p.target(cwd, Kind::Dir)?;

    p.base_and_root()?;
    p.proc(&proc_t);
    p.dev(&dev_t)?;
    p.sys(&sys_t, spec.network);
    p.tmpfs(&tmp_t, &format!("size={},mode=1777", spec.tmp_size), "/tmp");
    p.tmpfs(&run_t, RUN_SIZE, "/run");
    for (t, size) in &tmpfs_t {
        p.tmpfs(t, &format!("size={size},mode=1777"), &t.path);
    }
    for (t, source, ro, locked) in &binds {
        p.bind(t, source, *ro, *locked)?;
    }
    p.masks(&proc_t, &sys_t, &dev_t);
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
    })
}

struct Planner<'a> {
    layers: &'a [PathBuf],
    steps: Vec<Step>,
    sources: Vec<Source>,
    /// Missing mountpoints, made in `/skel`.
    skeleton: Vec<(String, Kind)>,
}

impl Planner<'_> {
    /// Names a host path for the child as `/old/proc/self/fd/N`. The child opens it onto fd N
    /// first thing, while it still has the caller's host ids: as root it then switches to the
    /// unprivileged range, which may not be able to traverse the path. The kernel binds only
    /// mounts of the caller's own mount namespace, so the parent cannot open it for the child;
    /// it opens it to check it exists and to reserve the number N.
    fn source(&mut self, path: &Path) -> Result<CString, MountError> {
        let fd = nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| MountError::Open(path.to_path_buf(), e))?;
        let name = format!("/old/proc/self/fd/{}", fd.as_raw_fd());
        let cpath = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| MountError::Nul(path.display().to_string()))?;
        self.sources.push(Source { path: cpath, fd });
        cstr(&name)
    }

    fn push(&mut self, op: Op, what: impl Into<String>, tolerate: Tolerate) {
        self.steps.push(Step {
            op,
            what: what.into(),
            tolerate,
        });
    }

    fn target(&mut self, path: &str, kind: Kind) -> Result<Target, MountError> {
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
        Ok(Target { path: resolved })
    }

    /// The base tmpfs, the first pivot, the skeleton and the read-only root.
    fn base_and_root(&mut self) -> Result<(), MountError> {
        self.push(
            Op::Mount {
                source: None,
                target: cstr("/")?,
                fstype: None,
                flags: libc::MS_SLAVE | libc::MS_REC,
                data: None,
            },
            "make / a slave mount (no propagation back to the host)",
            Tolerate::Nothing,
        );
        self.push(
            Op::Mount {
                source: Some(cstr("tmpfs")?),
                target: cstr(BASE)?,
                fstype: Some(cstr("tmpfs")?),
                flags: libc::MS_NOSUID | libc::MS_NODEV,
                data: Some(cstr("size=1m,mode=755")?),
            },
            format!("mount tmpfs on {BASE} (private to this mount namespace)"),
            Tolerate::Nothing,
        );
        self.push(
            Op::Mkdir {
                path: cstr(&format!("{BASE}/old"))?,
                mode: 0o755,
            },
            format!("mkdir {BASE}/old"),
            Tolerate::Nothing,
        );
        self.push(
            Op::PivotKeepOld {
                new_root: cstr(BASE)?,
                put_old: cstr("old")?,
            },
            format!("pivot_root into the tmpfs on {BASE}"),
            Tolerate::Nothing,
        );
        self.push(
            Op::Mkdir {
                path: cstr("/root")?,
                mode: 0o755,
            },
            "mkdir /root",
            Tolerate::Nothing,
        );

        let mut lowers: Vec<String> = Vec::new();
        for l in self.layers {
            lowers.push(self.source(l)?.into_string().expect("ASCII"));
        }
        if !self.skeleton.is_empty() {
            self.push(
                Op::Mkdir {
                    path: cstr("/skel")?,
                    mode: 0o755,
                },
                "mkdir /skel",
                Tolerate::Nothing,
            );
            let skeleton = std::mem::take(&mut self.skeleton);
            for (path, kind) in &skeleton {
                let mut acc = String::from("/skel");
                let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
                for (i, c) in comps.iter().enumerate() {
                    acc.push('/');
                    acc.push_str(c);
                    let op = if i + 1 == comps.len() && *kind == Kind::File {
                        Op::Touch { path: cstr(&acc)? }
                    } else {
                        Op::Mkdir {
                            path: cstr(&acc)?,
                            mode: 0o755,
                        }
                    };
                    self.push(
                        op,
                        format!("create mountpoint {path} (missing from the rootfs)"),
                        Tolerate::Nothing,
                    );
                }
            }
            lowers.insert(0, "/skel".into());
        }
        if lowers.len() == 1 {
            let src = cstr(&lowers[0])?;
            self.push(
                Op::Mount {
                    source: Some(src),
                    target: cstr("/root")?,
                    fstype: None,
                    flags: libc::MS_BIND | libc::MS_REC,
                    data: None,
                },
                format!("bind the rootfs {} on /root", self.layers[0].display()),
                Tolerate::Nothing,
            );
            let locked = locked_flags(&self.layers[0])?;
            self.push(
                Op::Mount {
                    source: None,
                    target: cstr("/root")?,
                    fstype: None,
                    flags: libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | locked,
                    data: None,
                },
                "remount the rootfs read-only",
                Tolerate::Nothing,
            );
        } else {
            let data = format!(
                "lowerdir={}",
                lowers
                    .iter()
                    .map(|l| escape_overlay(l))
                    .collect::<Vec<_>>()
                    .join(":")
            );
            if data.len() >= 4000 {
                return Err(MountError::TooManyLayers(lowers.len()));
            }
            self.push(
                Op::Mount {
                    source: Some(cstr("overlay")?),
                    target: cstr("/root")?,
                    fstype: Some(cstr("overlay")?),
                    flags: libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
                    data: Some(cstr(&data)?),
                },
                "mount the read-only overlay of the rootfs (and of mountpoints it lacks) on /root",
                Tolerate::Nothing,
            );
        }
        Ok(())
    }

    fn proc(&mut self, t: &Target) {
        let target = croot(&t.path);
        self.push(
            Op::Mount {
                source: Some(c"proc".into()),
                target,
                fstype: Some(c"proc".into()),
                flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                data: None,
            },
            "mount a fresh proc on /proc",
            Tolerate::Nothing,
        );
    }

    fn dev(&mut self, t: &Target) -> Result<(), MountError> {
        let dev = &t.path;
        self.push(
            Op::Mount {
                source: Some(c"tmpfs".into()),
                target: croot(dev),
                fstype: Some(c"tmpfs".into()),
                flags: libc::MS_NOSUID | libc::MS_NOEXEC,
                data: Some(CString::new(DEV_SIZE).expect("no NUL")),
            },
            "mount tmpfs on /dev",
            Tolerate::Nothing,
        );
        for d in DEVICES {
            let target = croot(&format!("{dev}/{d}"));
            let source = self.source(Path::new(&format!("/dev/{d}")))?;
            self.push(
                Op::Touch {
                    path: target.clone(),
                },
                format!("create /dev/{d}"),
                Tolerate::Nothing,
            );
            self.push(
                Op::Mount {
                    source: Some(source),
                    target,
                    fstype: None,
                    flags: libc::MS_BIND,
                    data: None,
                },
                format!("bind the host's /dev/{d}"),
                Tolerate::Nothing,
            );
        }
        for (link, to) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
            ("ptmx", "pts/ptmx"),
            ("core", "/proc/kcore"),
        ] {
            self.push(
                Op::Symlink {
                    target: CString::new(to).expect("no NUL"),
                    link: croot(&format!("{dev}/{link}")),
                },
                format!("symlink /dev/{link}"),
                Tolerate::Nothing,
            );
        }
        let pts = croot(&format!("{dev}/pts"));
        self.push(
            Op::Mkdir {
                path: pts.clone(),
                mode: 0o755,
            },
            "mkdir /dev/pts",
            Tolerate::Nothing,
        );
        self.push(
            Op::Mount {
                source: Some(c"devpts".into()),
                target: pts,
                fstype: Some(c"devpts".into()),
                flags: libc::MS_NOSUID | libc::MS_NOEXEC,
                data: Some(c"newinstance,ptmxmode=0666,mode=0620".into()),
            },
            "mount devpts on /dev/pts",
            Tolerate::Nothing,
        );
        let shm = croot(&format!("{dev}/shm"));
        self.push(
            Op::Mkdir {
                path: shm.clone(),
                mode: 0o1777,
            },
            "mkdir /dev/shm",
            Tolerate::Nothing,
        );
        self.push(
            Op::Mount {
                source: Some(c"shm".into()),
                target: shm,
                fstype: Some(c"tmpfs".into()),
                flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                data: Some(CString::new(SHM_SIZE).expect("no NUL")),
            },
            "mount tmpfs on /dev/shm",
            Tolerate::Nothing,
        );
        let mq = croot(&format!("{dev}/mqueue"));
        self.push(
            Op::Mkdir {
                path: mq.clone(),
                mode: 0o755,
            },
            "mkdir /dev/mqueue",
            Tolerate::Nothing,
        );
        self.push(
            Op::Mount {
                source: Some(c"mqueue".into()),
                target: mq,
                fstype: Some(c"mqueue".into()),
                flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                data: None,
            },
            "mount mqueue on /dev/mqueue",
            Tolerate::Anything,
        );
        Ok(())
    }

    fn sys(&mut self, t: &Target, network: Network) {
        // A fresh sysfs shows the network devices of our own namespace only, and is allowed only
        // there; with the host's network there is no sysfs of our own to show, so /sys stays empty.
        if network == Network::Host {
            return;
        }
        self.push(
            Op::Mount {
                source: Some(c"sysfs".into()),
                target: croot(&t.path),
                fstype: Some(c"sysfs".into()),
                flags: libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                data: None,
            },
            "mount sysfs read-only on /sys",
            Tolerate::Anything,
        );
    }

    fn tmpfs(&mut self, t: &Target, data: &str, shown: &str) {
        self.push(
            Op::Mount {
                source: Some(c"tmpfs".into()),
                target: croot(&t.path),
                fstype: Some(c"tmpfs".into()),
                flags: libc::MS_NOSUID | libc::MS_NODEV,
                data: Some(CString::new(data).expect("no NUL")),
            },
            format!("mount tmpfs ({data}) on {shown}"),
            Tolerate::Nothing,
        );
    }

    fn bind(
        &mut self,
        t: &Target,
        source: &Path,
        read_only: bool,
        locked: c_ulong,
    ) -> Result<(), MountError> {
        let src = self.source(source)?;
        let target = croot(&t.path);
        self.push(
            Op::Mount {
                source: Some(src),
                target: target.clone(),
                fstype: None,
                flags: libc::MS_BIND | libc::MS_REC,
                data: None,
            },
            format!("bind {} on {}", source.display(), t.path),
            Tolerate::Nothing,
        );
        if read_only {
            self.push(
                Op::Mount {
                    source: None,
                    target,
                    fstype: None,
                    flags: libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | locked,
                    data: None,
                },
                format!("remount {} read-only", t.path),
                Tolerate::Nothing,
            );
        }
        Ok(())
    }

    /// Docker's masked and read-only paths. What is a file and what a directory is read off the
    /// host's own /proc and /sys: the container sees the same kernel.
    fn masks(&mut self, proc_t: &Target, sys_t: &Target, dev_t: &Target) {
        let inside = |p: &str| -> String {
            if let Some(rest) = p.strip_prefix("/proc") {
                format!("{}{rest}", proc_t.path)
            } else if let Some(rest) = p.strip_prefix("/sys") {
                format!("{}{rest}", sys_t.path)
            } else {
                p.to_string()
            }
        };
        for p in MASKED_PATHS {
            let Ok(meta) = std::fs::symlink_metadata(p) else {
                continue;
            };
            let target = croot(&inside(p));
            let op = if meta.is_dir() {
                Op::Mount {
                    source: Some(c"tmpfs".into()),
                    target,
                    fstype: Some(c"tmpfs".into()),
                    flags: libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    data: Some(c"size=0".into()),
                }
            } else {
                Op::Mount {
                    source: Some(croot(&format!("{}/null", dev_t.path))),
                    target,
                    fstype: None,
                    flags: libc::MS_BIND,
                    data: None,
                }
            };
            self.push(op, format!("mask {p}"), Tolerate::Missing);
        }
        for p in READONLY_PATHS {
            if std::fs::symlink_metadata(p).is_err() {
                continue;
            }
            let target = croot(&inside(p));
            self.push(
                Op::Mount {
                    source: Some(target.clone()),
                    target: target.clone(),
                    fstype: None,
                    flags: libc::MS_BIND | libc::MS_REC,
                    data: None,
                },
                format!("bind {p} onto itself"),
                Tolerate::Missing,
            );
            self.push(
                Op::Mount {
                    source: None,
                    target,
                    fstype: None,
                    flags: libc::MS_REMOUNT
                        | libc::MS_BIND
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | libc::MS_NODEV
                        | libc::MS_NOEXEC,
                    data: None,
                },
                format!("remount {p} read-only"),
                Tolerate::Missing,
            );
        }
    }
}

/// `path` under the future root, as seen from the base tmpfs.
fn croot(path: &str) -> CString {
    CString::new(format!("/root{}", if path == "/" { "" } else { path }))
        .expect("resolved paths have no NUL")
}

fn cstr(s: &str) -> Result<CString, MountError> {
    CString::new(s).map_err(|_| MountError::Nul(s.to_string()))
}

fn escape_overlay(path: &str) -> String {
    path.replace('\\', "\\\\")
        .replace(':', "\\:")
        .replace(',', "\\,")
}

/// The flags a bind remount inside a user namespace must keep: the kernel refuses to clear
/// nosuid/nodev/noexec/atime flags that the mount had when it was "locked" by the namespace.
fn locked_flags(path: &Path) -> Result<c_ulong, MountError> {
    use nix::sys::statvfs::FsFlags;
    let st =
        nix::sys::statvfs::statvfs(path).map_err(|e| MountError::Statvfs(path.to_path_buf(), e))?;
    let f = st.flags();
    let mut out = 0;
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, libc::MS_NOSUID),
        (FsFlags::ST_NODEV, libc::MS_NODEV),
        (FsFlags::ST_NOEXEC, libc::MS_NOEXEC),
        (FsFlags::ST_NOATIME, libc::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, libc::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if f.contains(fs) {
            out |= ms;
        }
    }
    Ok(out)
}

/// Resolves `path` inside the union of `layers` (topmost first), following symlinks within the
/// rootfs as the container would see them. Returns the symlink-free path and what is there.
fn resolve(layers: &[PathBuf], path: &str) -> Result<(String, Option<Kind>), MountError> {
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
    fn missing_mountpoints_go_to_an_overlay_skeleton() {
        let d = tempfile::tempdir().unwrap();
        for dir in ["proc", "dev", "sys", "tmp"] {
            std::fs::create_dir(d.path().join(dir)).unwrap();
        }
        let mut spec = SandboxSpec::new(d.path(), ["/bin/true"]);
        spec.binds
            .push("/etc/hostname:/data/name:ro".parse().unwrap());
        let steps = plan(&spec, "/").unwrap().steps;
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
        let err = plan(&spec, "/").unwrap_err();
        assert!(
            err.to_string().contains("cannot mount a file there"),
            "{err}"
        );
        spec.binds.clear();
        let steps = plan(&spec, "/").unwrap().steps;
        assert!(steps.iter().any(|s| s.what.starts_with("bind the rootfs")));
        assert!(!steps
            .iter()
            .any(|s| s.what.starts_with("create mountpoint")));
    }
}
