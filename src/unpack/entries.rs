//! One layer's tar entries applied to the root: the match over entry types (files, directories,
//! symlinks, hardlinks, whiteouts, devices) and the directory, ownership and sharing steps each
//! entry takes.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::{fchmod, fstatat, mkdirat, mknodat, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use sha2::{Digest, Sha256};

use crate::ids::Ownership;

use super::*;

impl Unpacker {
    pub(super) fn apply_tar<R: Read>(&mut self, tar_stream: R) -> Result<(), UnpackError> {
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

    /// Replaces `name` by a hardlink to the pool's copy of `key`, or adds it to the pool.
    /// Returns whether it now shares an inode with an earlier file.
    pub(super) fn share(
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

    pub(super) fn write_error(&self, display: &str, source: io::Error) -> UnpackError {
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

    pub(super) fn map_ids(
        &self,
        uid: u64,
        gid: u64,
        display: &str,
    ) -> Result<(u32, u32), UnpackError> {
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

    pub(super) fn chown_at(
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
    pub(super) fn parent(&mut self, rel: &Path, display: &str) -> Result<Rc<OwnedFd>, UnpackError> {
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
    pub(super) fn create_dirs(
        &mut self,
        rel: &Path,
        display: &str,
    ) -> Result<OwnedFd, UnpackError> {
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

    pub(super) fn open_existing_dir(
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
    pub(super) fn opaque(
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
