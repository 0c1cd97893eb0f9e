//! Locks: one flock per entry that a pull installs under (`<key>.lock`, exclusive), and one that
//! runs hold while they use an entry (`<key>.use`, shared), so `rmi` and `gc` leave it alone.

use std::fs::File;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use super::*;

impl Store {
    pub(super) async fn lock(&self, key: &str) -> Result<Flock<File>, StoreError> {
        let path = self.root.join("locks").join(format!("{key}.lock"));
        tokio::task::spawn_blocking(move || lock_file(&path, true))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
            .map(|l| l.expect("blocking lock always returns a lock"))
    }

    /// Keeps `img` from being removed by `rmi`/`gc` while the returned guard lives (a shared
    /// flock; any number of runs can hold one image). Fails if the entry was removed meanwhile.
    pub fn hold(&self, img: &ResolvedImage) -> Result<ImageHold, StoreError> {
        let name = img
            .entry
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = self.root.join("locks").join(format!("{name}.use"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, "open lock", e))?;
        let lock =
            Flock::lock(f, FlockArg::LockShared).map_err(|(_, source)| StoreError::Lock {
                path: path.clone(),
                source,
            })?;
        if !img.entry.join("entry.json").is_file() {
            return Err(StoreError::NotFound(img.reference.clone()));
        }
        Ok(ImageHold { _lock: lock })
    }
}

/// An entry's install lock and use lock, both held.
pub(super) type EntryLocks = (Flock<File>, Flock<File>);

/// See [`Store::hold`].
#[derive(Debug)]
pub struct ImageHold {
    _lock: Flock<File>,
}

/// flock on `path` (created if missing). Non-blocking: `None` when someone else holds it.
///
/// `gc` deletes the lock files of entries that do not exist, holding the lock while it does: a
/// process that opened the file before the unlink would then lock a file no one else can find.
/// So after locking, the path must still name the file locked; if not, try again.
pub(super) fn lock_file(path: &Path, block: bool) -> Result<Option<Flock<File>>, StoreError> {
    use std::os::unix::fs::MetadataExt;
    loop {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| StoreError::io(path, "open lock", e))?;
        let arg = if block {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockExclusiveNonblock
        };
        let lock = match Flock::lock(f, arg) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if !block => return Ok(None),
            Err((_, source)) => {
                return Err(StoreError::Lock {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let held = lock
            .metadata()
            .map_err(|e| StoreError::io(path, "stat lock", e))?;
        match std::fs::metadata(path) {
            Ok(now) if (now.dev(), now.ino()) == (held.dev(), held.ino()) => return Ok(Some(lock)),
            _ => continue,
        }
    }
}
