//! Layer → directory: hostile-input parsing with the `tar` crate as parser only.
//!
//! Every write goes through a directory fd opened with `openat2(RESOLVE_IN_ROOT)` on the root being
//! built, so a path in a layer — `../x`, `/etc/passwd`, `a/passwd` after `a -> /etc`, a chain of
//! symlinks, a hardlink target — is resolved as if the root were `/`, and never reaches outside. The
//! final component is always created with `O_EXCL`/`O_NOFOLLOW` semantics (`mkdirat`, `symlinkat`,
//! `linkat` without `AT_SYMLINK_FOLLOW`, `openat(O_CREAT|O_EXCL|O_NOFOLLOW)`), so a symlink planted by
//! an earlier entry is replaced, never written through.
//!
//! Rules for what a layer may contain:
//! - a path component `..` is refused (the whole layer fails); a leading `/` is dropped, as tar does;
//! - whiteouts `.wh.NAME` remove NAME from lower layers, `.wh..wh..opq` empties its directory of
//!   lower-layer content; a whiteout naming `.`, `..` or an empty name is refused;
//! - hardlinks must name a path inside the root (resolved the same way);
//! - character and block devices are skipped with a warning: a device node in a shared cache is a
//!   host risk, and the sandbox supplies its own `/dev`;
//! - setuid and setgid bits are stripped. A setuid binary in a cache owned by host ids would be a way
//!   up for any host user who can reach the cache; inside the sandbox `no_new_privs` makes those bits
//!   inert anyway, so nothing a tool needs is lost. Extended attributes (file capabilities included)
//!   are not restored, for the same reason;
//! - ownership follows [`Ownership`]: squashed to one host id (rootless), or shifted into the
//!   container's host id range (root);
//! - a layer that ends without the two zero blocks of tar end padding is accepted, as the Go tools do;
//! - the total uncompressed bytes and the number of entries are limited ([`Limits`]).
//!
//! Directory modes are applied once, after the last layer, so that a read-only directory in a lower
//! layer does not stop an unprivileged unpack of a later one.

mod entries;
mod fd;
mod stream;

use fd::*;
pub use fd::{remove_at, remove_tree};
use stream::*;
pub use stream::{decoder, sniff, Compression};

use std::cell::Cell;
use std::collections::HashMap;
use std::io::{self, BufReader, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, Mode};
use nix::sys::time::TimeSpec;

use crate::ids::{Ownership, DEFAULT_ROOT_ID_BASE, RANGE_SIZE};

/// Limits against decompression and entry-count bombs. They apply to a whole image (all layers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum uncompressed bytes read from all layers (tar headers included).
    pub max_bytes: u64,
    /// Maximum number of tar entries in all layers.
    pub max_entries: u64,
}

impl Default for Limits {
    /// 16 GiB and one million entries: far above real images, far below a bomb's reach.
    fn default() -> Self {
        Limits {
            max_bytes: 16 << 30,
            max_entries: 1_000_000,
        }
    }
}

/// Why unpacking failed.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("cannot open unpack root {path}: {source}")]
    OpenRoot { path: PathBuf, source: Errno },
    #[error(
        "layer entry {path:?}: a path component is \"..\"; refusing a path that leaves the root"
    )]
    DotDot { path: String },
    #[error("layer entry {path:?}: whiteout names {name:?}, which is not a file name")]
    BadWhiteout { path: String, name: String },
    #[error("layer entry {path:?}: parent {parent:?} is a symlink to a directory that does not exist (or loops)")]
    DanglingParent { path: String, parent: String },
    #[error("layer entry {path:?}: hardlink target {target:?} is not inside the root")]
    BadLinkTarget { path: String, target: String },
    #[error("layer entry {path:?}: {op} failed: {source}")]
    Syscall {
        path: String,
        op: &'static str,
        source: Errno,
    },
    #[error(
        "layer entry {path:?}: writing file data failed: {}",
        first_line(source)
    )]
    Write { path: String, source: io::Error },
    #[error("layer exceeds the uncompressed size limit of {limit} bytes (raise it with --max-image-bytes)")]
    TooLarge { limit: u64 },
    #[error("layer exceeds the limit of {limit} entries (raise it with --max-image-entries)")]
    TooManyEntries { limit: u64 },
    #[error("layer entry {path:?}: container id {id} is outside the mapped range of {size} ids")]
    IdOutOfRange { path: String, id: u64, size: u32 },
    #[error("cannot unpack with ownership {ownership:?}: {why} (host ids must stay within 1..{max}; the default base is {DEFAULT_ROOT_ID_BASE} for {RANGE_SIZE} ids)", max = u32::MAX)]
    BadOwnership {
        ownership: Ownership,
        why: &'static str,
    },
    #[error("layer entry {path:?}: unsupported tar entry type {kind:?}")]
    UnsupportedType { path: String, kind: u8 },
    #[error("reading layer tar stream failed: {}", first_line(.0))]
    Tar(io::Error),
    #[error("cannot unpack with ownership {ownership:?} as uid {euid}: {why}")]
    Ownership {
        ownership: Ownership,
        euid: u32,
        why: &'static str,
    },
}

/// What an unpack did, for reports and warnings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    pub bytes: u64,
    /// Files whose setuid/setgid bits were removed.
    pub setid_stripped: u64,
    /// Device nodes skipped (paths).
    pub devices_skipped: Vec<String>,
    /// Files replaced by a hardlink to an identical file already in the sharing pool, and their
    /// bytes (see [`Unpacker::share_files`]).
    pub shared_files: u64,
    pub shared_bytes: u64,
}

/// Builds a root filesystem from layers applied in order (bottom first).
pub struct Unpacker {
    root: Rc<OwnedFd>,
    ownership: Ownership,
    chown: bool,
    limits: Limits,
    stats: UnpackStats,
    /// Deferred directory (mode, mtime), applied by [`Unpacker::finish`].
    dirs: HashMap<PathBuf, (u32, u64)>,
    /// The last parent directory opened: consecutive entries mostly share one.
    parent_cache: Option<(PathBuf, Rc<OwnedFd>)>,
    /// One copy buffer for all files (a fresh 128 KiB buffer per file costs an mmap/munmap each).
    buf: Vec<u8>,
    /// Sharing pool directory and the smallest file worth sharing.
    pool: Option<(OwnedFd, u64)>,
}

/// The first line of an error's message: inner errors (the `tar` crate's among them) may quote
/// the bytes they choked on, newlines included, and nsrun's errors are one line.
pub fn first_line(e: &impl std::fmt::Display) -> String {
    let s = e.to_string();
    match s.split_once('\n') {
        Some((first, _)) => format!("{} (…)", first.trim_end()),
        None => s,
    }
}

/// Refuses an ownership whose files could end up owned by host root, or by nobody we chose.
/// Host id 0 inside a shifted range, or a range wrapping past `u32::MAX`, gives files to host
/// root; id `u32::MAX` is `(uid_t)-1`, which chown reads as "leave unchanged" (the creator, root).
/// The sandbox refuses such bases too (`sandbox::idmap::IdmapError::BadBase`).
pub fn check_ownership(ownership: Ownership) -> Result<(), UnpackError> {
    let bad = |why| Err(UnpackError::BadOwnership { ownership, why });
    match ownership {
        Ownership::Squash { uid, gid } => {
            if uid == u32::MAX || gid == u32::MAX {
                return bad("id 4294967295 is chown's \"unchanged\", not an owner");
            }
        }
        Ownership::Shift {
            uid_base,
            gid_base,
            size,
        } => {
            if size == 0 {
                return bad("an empty id range maps nothing");
            }
            if uid_base == 0 || gid_base == 0 {
                return bad("a range starting at host id 0 maps container root to host root");
            }
            // base + size must not exceed u32::MAX: the last id mapped is then at most
            // u32::MAX - 1, never the wrapped-around 0 nor the "unchanged" -1.
            if uid_base.checked_add(size).is_none() || gid_base.checked_add(size).is_none() {
                return bad("the range runs past the last 32-bit id and would wrap to host root");
            }
        }
    }
    Ok(())
}

fn strip_setid(mode: u32) -> u32 {
    mode & 0o1777
}

impl Unpacker {
    /// Prepares to unpack into `root`, an existing, empty directory that only we write to.
    ///
    /// Fails with [`UnpackError::BadOwnership`] for an ownership that could hand files to host
    /// root (see [`check_ownership`]), before touching anything.
    pub fn new(root: &Path, ownership: Ownership, limits: Limits) -> Result<Unpacker, UnpackError> {
        check_ownership(ownership)?;
        let fd = nix::fcntl::open(
            root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|source| UnpackError::OpenRoot {
            path: root.to_path_buf(),
            source,
        })?;
        let euid = nix::unistd::geteuid().as_raw();
        let egid = nix::unistd::getegid().as_raw();
        let chown = match ownership {
            Ownership::Squash { uid, gid } => {
                if uid == euid && gid == egid {
                    false
                } else if euid == 0 {
                    true
                } else {
                    return Err(UnpackError::Ownership {
                        ownership,
                        euid,
                        why: "only root can give files to another uid/gid",
                    });
                }
            }
            Ownership::Shift { .. } => {
                if euid != 0 {
                    return Err(UnpackError::Ownership {
                        ownership,
                        euid,
                        why: "shifting ids needs root (CAP_CHOWN)",
                    });
                }
                true
            }
        };
        if chown {
            // The root directory itself belongs to container root too, or `/` shows as nobody.
            let (uid, gid) = match ownership {
                Ownership::Squash { uid, gid } => (uid, gid),
                Ownership::Shift {
                    uid_base, gid_base, ..
                } => (uid_base, gid_base),
            };
            std::os::unix::fs::chown(root, Some(uid), Some(gid)).map_err(|e| {
                UnpackError::OpenRoot {
                    path: root.to_path_buf(),
                    source: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                }
            })?;
        }
        Ok(Unpacker {
            root: Rc::new(fd),
            ownership,
            chown,
            limits,
            stats: UnpackStats::default(),
            dirs: HashMap::new(),
            parent_cache: None,
            buf: vec![0; 256 * 1024],
            pool: None,
        })
    }

    /// Shares regular files of at least `min_size` bytes with other roots unpacked with the same
    /// pool (which must be on the same filesystem and hold files of the same ownership): a file
    /// whose content, mode, owner and mtime are already in `pool` becomes a hardlink to that
    /// copy; a new one is added to the pool. Cache entries are immutable, so identical files may
    /// be one inode; this is how flattened images still share what their layers have in common.
    pub fn share_files(&mut self, pool: &Path, min_size: u64) -> Result<(), UnpackError> {
        let fd = nix::fcntl::open(
            pool,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|source| UnpackError::OpenRoot {
            path: pool.to_path_buf(),
            source,
        })?;
        self.pool = Some((fd, min_size.max(1)));
        Ok(())
    }

    /// Applies one layer, compressed or not (sniffed), on top of what is already unpacked.
    ///
    /// A compressed layer is decompressed on a second thread, a few MiB ahead of the writer, so
    /// inflating and creating files overlap (together they are most of a pull's time).
    pub fn apply_layer<R: Read + Send>(&mut self, raw: R) -> Result<(), UnpackError> {
        let mut raw = BufReader::with_capacity(256 * 1024, raw);
        let compressed = sniff(&mut raw).map_err(UnpackError::Tar)? != Compression::None;
        let used = Rc::new(Cell::new(self.stats.bytes));
        let result = if compressed {
            std::thread::scope(|scope| {
                let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(8);
                let reader = scope.spawn(move || {
                    let mut dec = match decoder(raw) {
                        Ok(d) => d,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    loop {
                        let mut buf = vec![0u8; 512 * 1024];
                        match read_full(&mut dec, &mut buf) {
                            Ok(0) => return,
                            Ok(n) => {
                                buf.truncate(n);
                                // A closed channel means the writer stopped: stop too.
                                if tx.send(Ok(buf)).is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                let _ = tx.send(Err(e));
                                return;
                            }
                        }
                    }
                });
                let budget = Budget {
                    inner: ChannelReader {
                        rx,
                        cur: Vec::new(),
                        pos: 0,
                    },
                    used: used.clone(),
                    limit: self.limits.max_bytes,
                };
                let r = self.apply_tar(budget);
                // The budget (and its receiver) is gone: the reader thread ends at its next send.
                let _ = reader.join();
                r
            })
        } else {
            let budget = Budget {
                inner: raw,
                used: used.clone(),
                limit: self.limits.max_bytes,
            };
            self.apply_tar(budget)
        };
        self.stats.bytes = used.get();
        if used.get() > self.limits.max_bytes {
            return Err(UnpackError::TooLarge {
                limit: self.limits.max_bytes,
            });
        }
        result
    }

    /// Applies deferred directory modes and times; returns what was done.
    pub fn finish(mut self) -> Result<UnpackStats, UnpackError> {
        self.parent_cache = None;
        if !self.stats.devices_skipped.is_empty() {
            let mut names = self.stats.devices_skipped.clone();
            names.sort();
            names.dedup();
            eprintln!(
                "nsrun: warning: skipped {} device node(s) in the image (the sandbox provides /dev): {}",
                names.len(),
                names.join(", ")
            );
        }
        let mut dirs: Vec<(PathBuf, (u32, u64))> = self.dirs.drain().collect();
        // Deepest first, so a parent's restrictive mode does not stop us reaching its children.
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (rel, (mode, mtime)) in dirs {
            let display = rel.display().to_string();
            let how = OpenHow::new()
                .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
                .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
            let fd = match openat2(&*self.root, rel.as_path(), how) {
                Ok(fd) => fd,
                // Replaced or removed by a later layer.
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => continue,
                Err(e) => return Err(sys(&display, "openat2", e)),
            };
            fchmod(&fd, Mode::from_bits_truncate(mode)).map_err(|e| sys(&display, "fchmod", e))?;
            let t = TimeSpec::new(mtime as i64, 0);
            nix::sys::stat::futimens(&fd, &t, &t).map_err(|e| sys(&display, "futimens", e))?;
        }
        Ok(self.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_rules() {
        assert_eq!(sanitize(b"/etc/passwd"), Some(PathBuf::from("etc/passwd")));
        assert_eq!(sanitize(b"./a//b/./c/"), Some(PathBuf::from("a/b/c")));
        assert_eq!(sanitize(b"a/../b"), None);
        assert_eq!(sanitize(b".."), None);
        assert_eq!(sanitize(b"./"), Some(PathBuf::new()));
        assert_eq!(strip_setid(0o4755), 0o755);
        assert_eq!(strip_setid(0o3777), 0o1777);
    }
}
