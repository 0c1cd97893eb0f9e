//! The filesystem of a run: planned in the parent as an ordered list of [`Step`]s, replayed in the
//! child by [`Step::execute`] without allocating.
//!
//! Layout while the child sets up (after the first pivot):
//! ```text
//! /            a small tmpfs of our own (host /tmp, over-mounted in our mount namespace only)
//! /old         the host's root, kept until the end for /old/proc/self/fd
//! /skel        mountpoints missing from the rootfs, layered over it by a read-only overlay
//! /root        the container's root: rootfs bound read-only (or overlay), then /proc, /dev, …
//! ```
//! The final pivot makes `/root` the root and detaches everything else, host included.
//!
//! Mount targets are resolved in the parent against the rootfs layers, following the image's
//! symlinks inside the rootfs only, so a target is a symlink-free path under the container root.
//! The child opens each target with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS)` beneath
//! `/root` and mounts onto the descriptor: a symlink planted in a volume (or anything else that
//! changed since planning) makes the step fail instead of redirecting the mount. Host paths are
//! sources only, reached through descriptors as well (see [`Source`]).

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use libc::c_ulong;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use thiserror::Error;

use super::masks::{MASKED_PATHS, READONLY_PATHS};
use super::spec::{Network, ProcMode, SandboxSpec};
use super::sys;

/// Where the child mounts its private tmpfs before the first pivot.
const BASE: &str = "/tmp";
/// Host devices bound into the container's `/dev` (no mknod in a user namespace).
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// Size of `/dev` (it holds only mountpoints and symlinks) and of `/dev/shm` (unless
/// `--shm-size` says otherwise), as in Docker.
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
    #[error("the rootfs makes {a} and {b} the same place ({resolved}): nsrun mounts both")]
    Overlap {
        a: &'static str,
        b: &'static str,
        resolved: String,
    },
    #[error("{0}: cannot mount over the container's root")]
    OverRoot(String),
    #[error("{target}: cannot mount over {reserved}, which nsrun mounts and masks itself (it would hide procfs' masks, sysfs or the run's devices)")]
    Reserved {
        target: String,
        reserved: &'static str,
    },
}

/// Refuses a user mount (`-v`, `--tmpfs`) at `target` when it would cover what nsrun mounts
/// itself: `/proc` and `/sys` (and below: they carry the masks that hide the host's kernel
/// interfaces), `/dev` and `/dev/pts` (the run's devices). Below `/dev` the user's mounts are
/// fine (`/dev/shm`). `builtins` are where `/proc`, `/sys` and `/dev` resolve to in the rootfs.
fn reserved(target: &str, builtins: [&str; 3]) -> Result<(), MountError> {
    let inside =
        |x: &str, y: &str| x == y || x.starts_with(&format!("{}/", y.trim_end_matches('/')));
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

/// How the child may shrug off a failed step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tolerate {
    Nothing,
    /// ENOENT: the target is not there on this kernel (masked /proc entries).
    Missing,
    /// Any error: a nicety (mqueue, sysfs) whose absence the tool can live with.
    Anything,
}

/// Where a mount goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// A path of the child's own setup tree (`/tmp`, `/root`): no rootfs involved.
    Setup(CString),
    /// A symlink-free path relative to the container root, opened beneath it.
    InRoot(CString),
}

/// One operation of the child's filesystem setup.
#[derive(Debug)]
pub enum Op {
    Mount {
        source: Option<CString>,
        target: Target,
        fstype: Option<CString>,
        flags: c_ulong,
        data: Option<CString>,
    },
    /// Make a mount and everything below it read-only.
    ReadOnly {
        target: Target,
    },
    Mkdir {
        path: CString,
        mode: libc::mode_t,
    },
    Touch {
        path: CString,
    },
    /// Create a file in the setup tmpfs with these contents (generated `/etc` files).
    WriteFile {
        path: CString,
        data: Vec<u8>,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    /// Open the container root (`/root`) onto [`Fds::root`], once it is mounted.
    OpenRoot,
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

/// Descriptor numbers the steps use, reserved in the parent (the child `dup3`s onto them).
#[derive(Debug)]
pub struct Fds {
    root: OwnedFd,
    target: OwnedFd,
    /// `/old/proc/self/fd/<target>`: how mount(2) is pointed at the opened target.
    target_path: CString,
}

impl Fds {
    fn reserve() -> Result<Fds, MountError> {
        let open = || {
            nix::fcntl::open("/", OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(|e| MountError::Open("/".into(), e))
        };
        let (root, target) = (open()?, open()?);
        let target_path = cstr(&format!("/old/proc/self/fd/{}", target.as_raw_fd()))?;
        Ok(Fds {
            root,
            target,
            target_path,
        })
    }

    /// Child side: resolves `target` to a path mount(2) can take.
    fn resolve<'a>(&'a self, target: &'a Target) -> Result<&'a CStr, i32> {
        match target {
            Target::Setup(path) => Ok(path),
            Target::InRoot(rel) => {
                let fd = sys::open_beneath(self.root.as_raw_fd(), rel)?;
                sys::move_fd(fd, self.target.as_raw_fd())?;
                Ok(&self.target_path)
            }
        }
    }
}

impl Step {
    /// Child side. Allocation-free.
    pub fn execute(&self, fds: &Fds) -> Result<(), i32> {
        let res = match &self.op {
            Op::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => fds.resolve(target).and_then(|t| {
                sys::mount(
                    source.as_deref(),
                    t,
                    fstype.as_deref(),
                    *flags,
                    data.as_deref(),
                )
            }),
            Op::ReadOnly { target } => fds.resolve(target).and_then(|t| {
                let fd = sys::open_path(t, 0)?;
                let res = sys::make_read_only_recursive(fd);
                sys::close(fd);
                res
            }),
            Op::Mkdir { path, mode } => sys::mkdir(path, *mode),
            Op::Touch { path } => sys::touch(path, 0o644),
            Op::WriteFile { path, data } => {
                sys::touch(path, 0o644).and_then(|_| sys::write_file(path, data))
            }
            Op::Symlink { target, link } => sys::symlink(target, link),
            Op::OpenRoot => sys::open_path(c"/root", libc::O_DIRECTORY)
                .and_then(|fd| sys::move_fd(fd, fds.root.as_raw_fd())),
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
fn pivot_detach(new_root: &CStr) -> Result<(), i32> {
    let old = sys::open_path(c"/", libc::O_DIRECTORY)?;
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

/// A host path that steps mount from, reached by the child through `/proc/self/fd/N`.
#[derive(Debug)]
pub struct Source {
    pub path: CString,
    /// Holds the number N reserved in the parent until the run ends.
    pub fd: OwnedFd,
}

impl Source {
    /// Child side: opens the path onto the reserved number, while the child still has the
    /// caller's host ids (as root it then switches to the unprivileged range, which may not be
    /// able to traverse the path). The kernel binds only mounts of the caller's own mount
    /// namespace, so the parent's descriptor cannot be used directly; it serves to check that the
    /// path still names the same file, so a path swapped for a symlink meanwhile is refused.
    pub fn reopen(&self) -> Result<(), i32> {
        let fd = sys::open_path(&self.path, 0)?;
        let same = sys::dev_ino(fd).and_then(|a| sys::dev_ino(self.fd.as_raw_fd()).map(|b| a == b));
        if same != Ok(true) {
            sys::close(fd);
            return Err(same.err().unwrap_or(libc::ESTALE));
        }
        sys::move_fd(fd, self.fd.as_raw_fd())
    }
}

/// The planned filesystem: steps for the child, the host paths they mount from, and the
/// descriptor numbers they use.
#[derive(Debug)]
pub struct Mounts {
    pub steps: Vec<Step>,
    pub sources: Vec<Source>,
    pub fds: Fds,
}

/// Whether `x` is `y` or below it.
fn inside(x: &str, y: &str) -> bool {
    x == y || x.starts_with(&format!("{}/", y.trim_end_matches('/')))
}

/// What kind of mountpoint a mount needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
}

/// A mount target resolved inside the rootfs: a symlink-free absolute path.
#[derive(Debug, Clone)]
struct Resolved {
    path: String,
}

impl Resolved {
    /// The target for the child: relative to the container root.
    fn in_root(&self) -> Target {
        Target::InRoot(
            CString::new(self.path.trim_start_matches('/')).expect("resolved paths have no NUL"),
        )
    }

    fn child(&self, name: &str) -> Resolved {
        Resolved {
            path: format!("{}/{name}", self.path.trim_end_matches('/')),
        }
    }
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
            let inside = |x: &str, y: &str| {
                x == y || x.starts_with(&format!("{}/", y.trim_end_matches('/')))
            };
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

struct Planner<'a> {
    layers: &'a [PathBuf],
    steps: Vec<Step>,
    sources: Vec<Source>,
    /// Missing mountpoints, made in `/skel`.
    skeleton: Vec<(String, Kind)>,
}

impl Planner<'_> {
    /// Names a host path for the child as `/old/proc/self/fd/N`; see [`Source::reopen`]. The
    /// parent opens it to check it exists and to reserve the number N.
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

    /// The base tmpfs, the first pivot, the skeleton and the read-only root.
    fn base_and_root(&mut self, overlay_root: bool) -> Result<(), MountError> {
        self.push(
            mnt(
                None,
                Target::Setup(cstr("/")?),
                None,
                libc::MS_SLAVE | libc::MS_REC,
                None,
            ),
            "make / a slave mount (no propagation back to the host)",
            Tolerate::Nothing,
        );
        self.push(
            mnt(
                Some(c"tmpfs".into()),
                Target::Setup(cstr(BASE)?),
                Some(c"tmpfs"),
                libc::MS_NOSUID | libc::MS_NODEV,
                Some("size=1m,mode=755"),
            ),
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
        if !self.skeleton.is_empty() || (overlay_root && lowers.len() == 1) {
            // An overlay needs two lower layers; an empty skeleton is the cheapest second one.
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
                mnt(
                    Some(src),
                    Target::Setup(cstr("/root")?),
                    None,
                    libc::MS_BIND | libc::MS_REC,
                    None,
                ),
                format!("bind the rootfs {} on /root", self.layers[0].display()),
                Tolerate::Nothing,
            );
            self.push(
                Op::ReadOnly {
                    target: Target::Setup(cstr("/root")?),
                },
                "make the rootfs read-only",
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
                mnt(
                    Some(c"overlay".into()),
                    Target::Setup(cstr("/root")?),
                    Some(c"overlay"),
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
                    Some(&data),
                ),
                "mount the read-only overlay of the rootfs (and of mountpoints it lacks) on /root",
                Tolerate::Nothing,
            );
        }
        self.push(Op::OpenRoot, "open the container root", Tolerate::Nothing);
        Ok(())
    }

    fn proc(&mut self, t: &Resolved, mode: ProcMode) -> Result<(), MountError> {
        if mode == ProcMode::HostBind {
            // Recursive: the kernel refuses to bind a /proc whose masks (submounts a container
            // runtime put there) would be left behind, and they must stay anyway.
            let src = self.source(Path::new("/proc"))?;
            self.push(
                mnt(
                    Some(src),
                    t.in_root(),
                    None,
                    libc::MS_BIND | libc::MS_REC,
                    None,
                ),
                "bind the host's /proc on /proc (--proc host-bind)",
                Tolerate::Nothing,
            );
            return Ok(());
        }
        self.push(
            mnt(
                Some(c"proc".into()),
                t.in_root(),
                Some(c"proc"),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                None,
            ),
            "mount a fresh proc on /proc",
            Tolerate::Nothing,
        );
        Ok(())
    }

    fn dev(&mut self, t: &Resolved, shm_size: Option<u64>) -> Result<(), MountError> {
        self.push(
            mnt(
                Some(c"tmpfs".into()),
                t.in_root(),
                Some(c"tmpfs"),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                Some(DEV_SIZE),
            ),
            "mount tmpfs on /dev",
            Tolerate::Nothing,
        );
        // Below here everything is in the tmpfs just mounted: plain paths cannot be redirected.
        let path = |name: &str| cstr(&format!("/root{}", t.child(name).path));
        for d in DEVICES {
            let source = self.source(Path::new(&format!("/dev/{d}")))?;
            self.push(
                Op::Touch { path: path(d)? },
                format!("create /dev/{d}"),
                Tolerate::Nothing,
            );
            self.push(
                mnt(
                    Some(source),
                    t.child(d).in_root(),
                    None,
                    libc::MS_BIND,
                    None,
                ),
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
                    target: cstr(to)?,
                    link: path(link)?,
                },
                format!("symlink /dev/{link}"),
                Tolerate::Nothing,
            );
        }
        self.push(
            Op::Mkdir {
                path: path("pts")?,
                mode: 0o755,
            },
            "mkdir /dev/pts",
            Tolerate::Nothing,
        );
        self.push(
            mnt(
                Some(c"devpts".into()),
                t.child("pts").in_root(),
                Some(c"devpts"),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                Some("newinstance,ptmxmode=0666,mode=0620"),
            ),
            "mount devpts on /dev/pts",
            Tolerate::Nothing,
        );
        self.push(
            Op::Mkdir {
                path: path("shm")?,
                mode: 0o1777,
            },
            "mkdir /dev/shm",
            Tolerate::Nothing,
        );
        self.push(
            mnt(
                Some(c"shm".into()),
                t.child("shm").in_root(),
                Some(c"tmpfs"),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                Some(
                    &shm_size
                        .map_or_else(|| SHM_SIZE.to_string(), |s| format!("size={s},mode=1777")),
                ),
            ),
            "mount tmpfs on /dev/shm",
            Tolerate::Nothing,
        );
        self.push(
            Op::Mkdir {
                path: path("mqueue")?,
                mode: 0o755,
            },
            "mkdir /dev/mqueue",
            Tolerate::Nothing,
        );
        self.push(
            mnt(
                Some(c"mqueue".into()),
                t.child("mqueue").in_root(),
                Some(c"mqueue"),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                None,
            ),
            "mount mqueue on /dev/mqueue",
            Tolerate::Anything,
        );
        Ok(())
    }

    fn sys(&mut self, t: &Resolved, network: Network) {
        // A fresh sysfs shows the network devices of our own namespace only, and is allowed only
        // there; with the host's network there is no sysfs of our own to show, so /sys stays empty.
        if network == Network::Host {
            return;
        }
        self.push(
            mnt(
                Some(c"sysfs".into()),
                t.in_root(),
                Some(c"sysfs"),
                libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                None,
            ),
            "mount sysfs read-only on /sys",
            Tolerate::Anything,
        );
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

    /// Docker's masked and read-only paths. What is a file and what a directory is read off the
    /// host's own /proc and /sys: the container sees the same kernel.
    fn masks(&mut self, proc_t: &Resolved, sys_t: &Resolved) -> Result<(), MountError> {
        let mut null: Option<CString> = None;
        let inside = |p: &str| -> Resolved {
            let (base, rest) = match (p.strip_prefix("/proc/"), p.strip_prefix("/sys/")) {
                (Some(rest), _) => (proc_t, rest),
                (_, Some(rest)) => (sys_t, rest),
                _ => unreachable!("mask lists hold /proc and /sys paths only"),
            };
            base.child(rest)
        };
        for p in MASKED_PATHS {
            let Ok(meta) = std::fs::symlink_metadata(p) else {
                continue;
            };
            let target = inside(p).in_root();
            if meta.is_dir() {
                self.push(
                    mnt(
                        Some(c"tmpfs".into()),
                        target,
                        Some(c"tmpfs"),
                        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        Some("size=0"),
                    ),
                    format!("mask {p}"),
                    Tolerate::Missing,
                );
            } else {
                // The host's /dev/null itself, not the container's: an image cannot hide it.
                // One source serves every masked file.
                let null = match &null {
                    Some(n) => n.clone(),
                    None => null.insert(self.source(Path::new("/dev/null"))?).clone(),
                };
                self.push(
                    mnt(Some(null), target, None, libc::MS_BIND, None),
                    format!("mask {p}"),
                    Tolerate::Missing,
                );
            }
        }
        for p in READONLY_PATHS {
            if std::fs::symlink_metadata(p).is_err() {
                continue;
            }
            let t = inside(p);
            self.push(
                mnt(
                    Some(cstr(&format!("/root{}", t.path))?),
                    t.in_root(),
                    None,
                    libc::MS_BIND | libc::MS_REC,
                    None,
                ),
                format!("bind {p} onto itself"),
                Tolerate::Missing,
            );
            self.push(
                Op::ReadOnly {
                    target: t.in_root(),
                },
                format!("make {p} read-only"),
                Tolerate::Missing,
            );
        }
        Ok(())
    }
}

/// A mount(2) operation.
fn mnt(
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

fn cstr(s: &str) -> Result<CString, MountError> {
    CString::new(s).map_err(|_| MountError::Nul(s.to_string()))
}

fn escape_overlay(path: &str) -> String {
    path.replace('\\', "\\\\")
        .replace(':', "\\:")
        .replace(',', "\\,")
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
