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
//!
//! The module's rooms: [`step`] holds the step data and its child-side execution (no
//! allocation), [`resolve`] the resolution of targets inside the rootfs and the checks on them,
//! [`mod@plan`] the planner that builds the step table (its order and the reasons for it are
//! documented there) and [`builtins`] the mounts nsrun makes itself (root, `/proc`, `/dev`,
//! `/sys`, masks).

use std::ffi::CString;
use std::path::PathBuf;

use thiserror::Error;

mod builtins;
mod plan;
mod resolve;
mod step;

pub use plan::plan;
pub use resolve::check_target;
pub use step::{Fds, Op, Source, Step};

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

fn cstr(s: &str) -> Result<CString, MountError> {
    CString::new(s).map_err(|_| MountError::Nul(s.to_string()))
}
