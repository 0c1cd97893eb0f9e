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

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, fstatat, mkdirat, mknodat, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use sha2::{Digest, Sha256};

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

/// Compression of a layer blob, recognised by its magic bytes (registries do not always label
/// media types truthfully).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Sniffs the compression of a buffered stream without consuming it.
pub fn sniff<R: BufRead>(r: &mut R) -> io::Result<Compression> {
    let buf = r.fill_buf()?;
    Ok(if buf.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if buf.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    })
}

/// Wraps `raw` in the decoder its magic bytes call for.
pub fn decoder<'a, R: BufRead + 'a>(mut raw: R) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match sniff(&mut raw)? {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(raw)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(raw)?),
        Compression::None => Box::new(raw),
    })
}

/// Counts bytes and fails once over budget, so a bomb stops at the limit rather than at the disk.
struct Budget<R> {
    inner: R,
    used: Rc<Cell<u64>>,
    limit: u64,
}

impl<R: Read> Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let used = self.used.get() + n as u64;
        self.used.set(used);
        if used > self.limit {
            return Err(io::Error::other("uncompressed size limit exceeded"));
        }
        Ok(n)
    }
}

/// Reads decompressed chunks handed over by the decompression thread.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.cur = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Copies `r` to `w` through `buf`; returns the bytes copied.
fn copy_with(
    r: &mut impl Read,
    w: &mut impl Write,
    buf: &mut [u8],
    mut hasher: Option<&mut Sha256>,
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let n = match r.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..n])?;
        if let Some(h) = hasher.as_mut() {
            h.update(&buf[..n]);
        }
        total += n as u64;
    }
}

/// Fills `buf` unless the stream ends first; returns the bytes read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
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

    fn apply_tar<R: Read>(&mut self, tar_stream: R) -> Result<(), UnpackError> {
        let mut archive = tar::Archive::new(tar_stream);
        let mut this_layer: HashSet<PathBuf> = HashSet::new();
        let entries = archive.entries().map_err(UnpackError::Tar)?;
        for entry in entries {
            let mut entry = entry.map_err(UnpackError::Tar)?;
            self.stats.entries += 1;
            if self.stats.entries > self.limits.max_entries {
                return Err(UnpackError::TooManyEntries {
                    limit: self.limits.max_entries,
                });
            }
            let raw_path = entry.path_bytes().into_owned();
            let display = String::from_utf8_lossy(&raw_path).into_owned();
            let rel = sanitize(&raw_path).ok_or_else(|| UnpackError::DotDot {
                path: display.clone(),
            })?;
            let kind = entry.header().entry_type();
            let Some(name) = rel.file_name().map(|n| n.to_os_string()) else {
                // The root itself ("./"): its mode is ours to decide, not the layer's.
                continue;
            };
            let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
            let name_bytes = name.as_bytes();

            if let Some(target) = name_bytes.strip_prefix(b".wh.") {
                if target == b".wh..opq" {
                    self.opaque(&parent_rel, &this_layer, &display)?;
                } else {
                    if target.is_empty() || target == b"." || target == b".." {
                        return Err(UnpackError::BadWhiteout {
                            path: display,
                            name: String::from_utf8_lossy(target).into_owned(),
                        });
                    }
                    let victim = parent_rel.join(OsStr::from_bytes(target));
                    if !this_layer.contains(&victim) {
                        if let Some(dir) = self.open_existing_dir(&parent_rel, &display)? {
                            remove_at(&dir, OsStr::from_bytes(target), &display)?;
                            self.parent_cache = None;
                        }
                    }
                }
                continue;
            }

            let header = entry.header();
            let mode = header.mode().map_err(UnpackError::Tar)?;
            let uid = header.uid().map_err(UnpackError::Tar)?;
            let gid = header.gid().map_err(UnpackError::Tar)?;
            let mtime = header.mtime().unwrap_or(0);
            if mode & 0o6000 != 0 && !kind.is_dir() {
                self.stats.setid_stripped += 1;
            }
            let mode = strip_setid(mode);
            let (huid, hgid) = self.map_ids(uid, gid, &display)?;

            use tar::EntryType as T;
            match kind {
                T::Directory => {
                    let parent = self.parent(&parent_rel, &display)?;
                    match mkdirat(&*parent, name.as_os_str(), Mode::from_bits_truncate(0o700)) {
                        Ok(()) => {}
                        Err(Errno::EEXIST) => {
                            let st =
                                fstatat(&*parent, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                                    .map_err(|e| sys(&display, "fstatat", e))?;
                            if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
                                != SFlag::S_IFDIR
                            {
                                remove_at(&parent, &name, &display)?;
                                self.parent_cache = None;
                                mkdirat(
                                    &*parent,
                                    name.as_os_str(),
                                    Mode::from_bits_truncate(0o700),
                                )
                                .map_err(|e| sys(&display, "mkdirat", e))?;
                            }
                        }
                        Err(e) => return Err(sys(&display, "mkdirat", e)),
                    }
                    self.chown_at(&parent, &name, huid, hgid, &display)?;
                    self.dirs.insert(rel.clone(), (mode, mtime));
                }
                T::Regular | T::Continuous | T::GNUSparse => {
                    let parent = self.parent(&parent_rel, &display)?;
                    let fd = create_file(&parent, &name, &display)?;
                    if replaced_dir(&fd) {
                        self.parent_cache = None;
                    }
                    let fd = fd.0;
                    let mut file = std::fs::File::from(fd);
                    let size = entry.size();
                    let mut hasher = match &self.pool {
                        Some((_, min)) if size >= *min => Some(Sha256::new()),
                        _ => None,
                    };
                    let copied = copy_with(
                        &mut (&mut entry).take(size),
                        &mut file,
                        &mut self.buf,
                        hasher.as_mut(),
                    )
                    .map_err(|source| self.write_error(&display, source))?;
                    if copied != size {
                        return Err(UnpackError::Tar(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("entry {display:?} is truncated: {copied} of {size} bytes"),
                        )));
                    }
                    if self.chown {
                        nix::unistd::fchown(
                            &file,
                            Some(Uid::from_raw(huid)),
                            Some(Gid::from_raw(hgid)),
                        )
                        .map_err(|e| sys(&display, "fchown", e))?;
                    }
                    fchmod(&file, Mode::from_bits_truncate(mode))
                        .map_err(|e| sys(&display, "fchmod", e))?;
                    let t = TimeSpec::new(mtime as i64, 0);
                    nix::sys::stat::futimens(&file, &t, &t)
                        .map_err(|e| sys(&display, "futimens", e))?;
                    drop(file);
                    if let Some(h) = hasher {
                        let key = format!(
                            "{}-{mode:o}-{huid}-{hgid}-{mtime}",
                            hex::encode(h.finalize())
                        );
                        if self.share(&parent, &name, &key, &display)? {
                            self.stats.shared_files += 1;
                            self.stats.shared_bytes += size;
                        }
                    }
                }
                T::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .map(|c| c.into_owned())
                        .unwrap_or_default();
                    let parent = self.parent(&parent_rel, &display)?;
                    retry_exists(&parent, &name, &display, &mut self.parent_cache, |p| {
                        symlinkat(OsStr::from_bytes(&target), p, name.as_os_str())
                    })
                    .map_err(|e| sys(&display, "symlinkat", e))?;
                    self.chown_at(&parent, &name, huid, hgid, &display)?;
                    let t = TimeSpec::new(mtime as i64, 0);
                    utimensat(
                        &*parent,
                        name.as_os_str(),
                        &t,
                        &t,
                        UtimensatFlags::NoFollowSymlink,
                    )
                    .map_err(|e| sys(&display, "utimensat", e))?;
                }
                T::Link => {
                    let target_raw = entry
                        .link_name_bytes()
                        .map(|c| c.into_owned())
                        .unwrap_or_default();
                    let bad = || UnpackError::BadLinkTarget {
                        path: display.clone(),
                        target: String::from_utf8_lossy(&target_raw).into_owned(),
                    };
                    let target_rel = sanitize(&target_raw).ok_or_else(bad)?;
                    let Some(target_name) = target_rel.file_name().map(|n| n.to_os_string()) else {
                        return Err(bad());
                    };
                    if target_rel == rel {
                        continue;
                    }
                    let target_parent_rel =
                        target_rel.parent().unwrap_or(Path::new("")).to_path_buf();
                    let tparent = self
                        .open_existing_dir(&target_parent_rel, &display)?
                        .ok_or_else(bad)?;
                    let parent = self.parent(&parent_rel, &display)?;
                    retry_exists(&parent, &name, &display, &mut self.parent_cache, |p| {
                        linkat(
                            &*tparent,
                            target_name.as_os_str(),
                            p,
                            name.as_os_str(),
                            AtFlags::empty(),
                        )
                    })
                    .map_err(|e| match e {
                        Errno::ENOENT | Errno::EPERM | Errno::EXDEV => bad(),
                        e => sys(&display, "linkat", e),
                    })?;
                }
                T::Fifo => {
                    let parent = self.parent(&parent_rel, &display)?;
                    retry_exists(&parent, &name, &display, &mut self.parent_cache, |p| {
                        mknodat(
                            p,
                            name.as_os_str(),
                            SFlag::S_IFIFO,
                            Mode::from_bits_truncate(mode),
                            0,
                        )
                    })
                    .map_err(|e| sys(&display, "mknodat", e))?;
                    self.chown_at(&parent, &name, huid, hgid, &display)?;
                }
                T::Char | T::Block => {
                    self.stats.devices_skipped.push(display);
                    continue;
                }
                T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => continue,
                other => {
                    return Err(UnpackError::UnsupportedType {
                        path: display,
                        kind: other.as_byte(),
                    })
                }
            }
            this_layer.insert(rel);
        }
        Ok(())
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

    /// Replaces `name` by a hardlink to the pool's copy of `key`, or adds it to the pool.
    /// Returns whether it now shares an inode with an earlier file.
    fn share(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        key: &str,
        display: &str,
    ) -> Result<bool, UnpackError> {
        let Some((pool, _)) = &self.pool else {
            return Ok(false);
        };
        const TMP: &str = ".nsrun-share.tmp";
        match linkat(pool, key, parent, TMP, AtFlags::empty()) {
            Ok(()) => {
                if let Err(e) = nix::fcntl::renameat(parent, TMP, parent, name) {
                    let _ = unlinkat(parent, TMP, UnlinkatFlags::NoRemoveDir);
                    return Err(sys(display, "renameat", e));
                }
                Ok(true)
            }
            Err(Errno::ENOENT) => {
                // First of its kind: publish it. Losing a race to another pull is fine.
                match linkat(parent, name, pool, key, AtFlags::empty()) {
                    Ok(()) | Err(Errno::EEXIST) | Err(Errno::EMLINK) => Ok(false),
                    Err(e) => Err(sys(display, "linkat (share)", e)),
                }
            }
            // Too many links already, or the layer has a file of our temporary name: keep the copy.
            Err(Errno::EMLINK) | Err(Errno::EEXIST) => Ok(false),
            Err(e) => Err(sys(display, "linkat (share)", e)),
        }
    }

    fn write_error(&self, display: &str, source: io::Error) -> UnpackError {
        if self.stats.bytes > self.limits.max_bytes
            || source.to_string().contains("size limit exceeded")
        {
            UnpackError::TooLarge {
                limit: self.limits.max_bytes,
            }
        } else {
            UnpackError::Write {
                path: display.to_string(),
                source,
            }
        }
    }

    fn map_ids(&self, uid: u64, gid: u64, display: &str) -> Result<(u32, u32), UnpackError> {
        match self.ownership {
            Ownership::Squash { uid, gid } => Ok((uid, gid)),
            Ownership::Shift {
                uid_base,
                gid_base,
                size,
            } => {
                let check = |id: u64, base: u32| -> Result<u32, UnpackError> {
                    if id >= size as u64 {
                        return Err(UnpackError::IdOutOfRange {
                            path: display.to_string(),
                            id,
                            size,
                        });
                    }
                    // check_ownership made base + size fit in u32: no wrap to host root.
                    base.checked_add(id as u32)
                        .ok_or(UnpackError::BadOwnership {
                            ownership: self.ownership,
                            why: "the range runs past the last 32-bit id",
                        })
                };
                Ok((check(uid, uid_base)?, check(gid, gid_base)?))
            }
        }
    }

    fn chown_at(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        uid: u32,
        gid: u32,
        display: &str,
    ) -> Result<(), UnpackError> {
        if !self.chown {
            return Ok(());
        }
        fchownat(
            parent,
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| sys(display, "fchownat", e))
    }

    /// Opens (creating if missing) the directory `rel` inside the root.
    fn parent(&mut self, rel: &Path, display: &str) -> Result<Rc<OwnedFd>, UnpackError> {
        if rel.as_os_str().is_empty() {
            return Ok(self.root.clone());
        }
        if let Some((p, fd)) = &self.parent_cache {
            if p == rel {
                return Ok(fd.clone());
            }
        }
        let fd = match open_in_root(&self.root, rel) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => self.create_dirs(rel, display)?,
            Err(Errno::ELOOP) => {
                return Err(UnpackError::DanglingParent {
                    path: display.to_string(),
                    parent: rel.display().to_string(),
                })
            }
            Err(e) => return Err(sys(display, "openat2", e)),
        };
        let fd = Rc::new(fd);
        self.parent_cache = Some((rel.to_path_buf(), fd.clone()));
        Ok(fd)
    }

    /// `mkdir -p` inside the root, for layers that omit parent directory entries.
    fn create_dirs(&mut self, rel: &Path, display: &str) -> Result<OwnedFd, UnpackError> {
        let mut cur: Rc<OwnedFd> = self.root.clone();
        let mut prefix = PathBuf::new();
        for comp in rel.components() {
            prefix.push(comp);
            let fd = match open_in_root(&self.root, &prefix) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    let name = comp.as_os_str();
                    match mkdirat(&*cur, name, Mode::from_bits_truncate(0o700)) {
                        Ok(()) => {}
                        // openat2 said ENOENT but the name exists: a symlink to nowhere (inside).
                        Err(Errno::EEXIST) => {
                            return Err(UnpackError::DanglingParent {
                                path: display.to_string(),
                                parent: prefix.display().to_string(),
                            })
                        }
                        Err(e) => return Err(sys(display, "mkdirat", e)),
                    }
                    let (uid, gid) = self.map_ids(0, 0, display)?;
                    self.chown_at(&cur, name, uid, gid, display)?;
                    self.dirs.entry(prefix.clone()).or_insert((0o755, 0));
                    open_in_root(&self.root, &prefix).map_err(|e| sys(display, "openat2", e))?
                }
                Err(e) => return Err(sys(display, "openat2", e)),
            };
            cur = Rc::new(fd);
        }
        Rc::try_unwrap(cur).or_else(|rc| {
            rc.try_clone().map_err(|e| {
                sys(
                    display,
                    "dup",
                    Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                )
            })
        })
    }

    fn open_existing_dir(
        &mut self,
        rel: &Path,
        display: &str,
    ) -> Result<Option<Rc<OwnedFd>>, UnpackError> {
        if rel.as_os_str().is_empty() {
            return Ok(Some(self.root.clone()));
        }
        match open_in_root(&self.root, rel) {
            Ok(fd) => Ok(Some(Rc::new(fd))),
            Err(Errno::ENOENT | Errno::ENOTDIR) => Ok(None),
            Err(e) => Err(sys(display, "openat2", e)),
        }
    }

    /// `.wh..wh..opq`: remove everything in `dir` that lower layers put there.
    fn opaque(
        &mut self,
        dir_rel: &Path,
        this_layer: &HashSet<PathBuf>,
        display: &str,
    ) -> Result<(), UnpackError> {
        let Some(dir) = self.open_existing_dir(dir_rel, display)? else {
            return Ok(());
        };
        let names = list_dir(&dir, display)?;
        for name in names {
            if !this_layer.contains(&dir_rel.join(&name)) {
                remove_at(&dir, &name, display)?;
            }
        }
        self.parent_cache = None;
        Ok(())
    }
}

fn sys(path: &str, op: &'static str, source: Errno) -> UnpackError {
    UnpackError::Syscall {
        path: path.to_string(),
        op,
        source,
    }
}

/// A layer path made relative: empty and `.` components dropped, a leading `/` dropped, and `None`
/// when any component is `..`.
fn sanitize(raw: &[u8]) -> Option<PathBuf> {
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

fn open_in_root(root: &OwnedFd, rel: &Path) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(root, rel, how)
}

/// A newly created file fd, and whether a directory had to be removed to make room.
struct Created(OwnedFd, bool);

fn replaced_dir(c: &Created) -> bool {
    c.1
}

fn create_file(parent: &OwnedFd, name: &OsStr, display: &str) -> Result<Created, UnpackError> {
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
fn retry_exists(
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

fn list_dir(dir: &OwnedFd, display: &str) -> Result<Vec<OsString>, UnpackError> {
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
