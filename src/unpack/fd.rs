//! fd-relative file system helpers: every path resolved inside the root being built
//! (`openat2(RESOLVE_IN_ROOT)`), created without following a planted symlink, removed without
//! leaving it.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

use super::*;

pub(super) fn sys(path: &str, op: &'static str, source: Errno) -> UnpackError {
    UnpackError::Syscall {
        path: path.to_string(),
        op,
        source,
    }
}

/// A layer path made relative: empty and `.` components dropped, a leading `/` dropped, and `None`
/// when any component is `..`.
pub(super) fn sanitize(raw: &[u8]) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => continue,
            b".." => return None,
            c => out.push(OsStr::from_bytes(c)),
        }
    }
    Some(out)
}

pub(super) fn open_in_root(root: &OwnedFd, rel: &Path) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(root, rel, how)
}

/// A newly created file fd, and whether a directory had to be removed to make room.
pub(super) struct Created(pub(super) OwnedFd, pub(super) bool);

pub(super) fn replaced_dir(c: &Created) -> bool {
    c.1
}

pub(super) fn create_file(
    parent: &OwnedFd,
    name: &OsStr,
    display: &str,
) -> Result<Created, UnpackError> {
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mode = Mode::from_bits_truncate(0o600);
    match openat(parent, name, flags, mode) {
        Ok(fd) => Ok(Created(fd, false)),
        Err(Errno::EEXIST) => {
            let was_dir = remove_at(parent, name, display)?;
            let fd = openat(parent, name, flags, mode).map_err(|e| sys(display, "openat", e))?;
            Ok(Created(fd, was_dir))
        }
        Err(e) => Err(sys(display, "openat", e)),
    }
}

/// Runs `op`; if the name exists, removes it (never following it) and runs `op` again.
pub(super) fn retry_exists(
    parent: &OwnedFd,
    name: &OsStr,
    display: &str,
    cache: &mut Option<(PathBuf, Rc<OwnedFd>)>,
    op: impl Fn(&OwnedFd) -> Result<(), Errno>,
) -> Result<(), Errno> {
    match op(parent) {
        Err(Errno::EEXIST) => {
            if remove_at(parent, name, display).map_err(|_| Errno::EEXIST)? {
                *cache = None;
            }
            op(parent)
        }
        r => r,
    }
}

pub(super) fn list_dir(dir: &OwnedFd, display: &str) -> Result<Vec<OsString>, UnpackError> {
    let fd = openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| sys(display, "openat", e))?;
    let mut d = nix::dir::Dir::from_fd(fd).map_err(|e| sys(display, "fdopendir", e))?;
    let mut names = Vec::new();
    for ent in d.iter() {
        let ent = ent.map_err(|e| sys(display, "readdir", e))?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    Ok(names)
}

/// Removes `name` in `parent` (recursively if a directory), never following symlinks. Directories
/// without owner write/search permission are made so first, so an unprivileged owner can always
/// remove what it unpacked. Returns whether `name` was a directory; a missing name is not an error.
pub fn remove_at(parent: &impl AsFd, name: &OsStr, display: &str) -> Result<bool, UnpackError> {
    let st = match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(sys(display, "fstatat", e)),
    };
    let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
    if !is_dir {
        match unlinkat(parent, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => return Ok(false),
            Err(e) => return Err(sys(display, "unlinkat", e)),
        }
    }
    if st.st_mode & 0o700 != 0o700 {
        nix::sys::stat::fchmodat(
            parent,
            name,
            Mode::from_bits_truncate((st.st_mode & 0o7777) | 0o700),
            nix::sys::stat::FchmodatFlags::NoFollowSymlink,
        )
        .map_err(|e| sys(display, "fchmodat", e))?;
    }
    let fd = openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| sys(display, "openat", e))?;
    for child in list_dir(&fd, display)? {
        remove_at(&fd, &child, display)?;
    }
    match unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(true),
        Err(e) => Err(sys(display, "unlinkat", e)),
    }
}

/// Removes a whole tree by path without following symlinks inside it (used for cache entries, whose
/// directories may be read-only).
pub fn remove_tree(path: &Path) -> Result<(), UnpackError> {
    let display = path.display().to_string();
    let parent = path.parent().unwrap_or(Path::new("/"));
    let Some(name) = path.file_name() else {
        return Ok(());
    };
    let pfd = nix::fcntl::open(
        parent,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    );
    match pfd {
        Ok(pfd) => remove_at(&pfd, name, &display).map(|_| ()),
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(sys(&display, "open", e)),
    }
}
