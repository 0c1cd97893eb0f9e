//! The step data, built in the parent, and its child-side execution: [`Step::execute`] and
//! [`Source::reopen`] run after clone, in the new namespaces, and never allocate (see
//! [`super::super::sys`]).

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd};

use libc::c_ulong;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::super::sys;
use super::{cstr, MountError};

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
    pub(super) fn reserve() -> Result<Fds, MountError> {
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
