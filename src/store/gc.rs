//! Garbage collection: entries no reference points to, broken entries, stale staging
//! directories, trash, lock files of entries that do not exist, and unshared pool files.

use std::path::Path;

use super::*;

impl Store {
    /// Removes pool files no entry links to any more.
    pub(super) fn clean_pool(&self) -> Result<u64, StoreError> {
        use std::os::unix::fs::MetadataExt;
        let mut removed = 0;
        let shared = self.root.join("shared");
        let Ok(owners) = std::fs::read_dir(&shared) else {
            return Ok(0);
        };
        for owner in owners.flatten() {
            let Ok(files) = std::fs::read_dir(owner.path()) else {
                continue;
            };
            for f in files.flatten() {
                let p = f.path();
                // Only this link left: nobody shares it. A pull adding a link right now makes
                // the unlink harmless (its own link keeps the data).
                if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file() && m.nlink() == 1)
                    && std::fs::remove_file(&p).is_ok()
                {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    pub(super) fn discard(&self, dir: &Path) -> Result<(), StoreError> {
        let name = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let trash =
            self.root
                .join("trash")
                .join(format!("{name}.{}.{}", std::process::id(), now()));
        std::fs::rename(dir, &trash).map_err(|e| StoreError::io(dir, "rename to trash", e))?;
        unpack::remove_tree(&trash).map_err(|source| StoreError::Unpack {
            reference: name,
            layer: "-".into(),
            source,
        })
    }

    /// Removes staging directories nobody is working on (for `key` only, or all).
    pub(super) fn clean_staging(&self, key: Option<&str>) -> Result<Vec<String>, StoreError> {
        let staging = self.root.join("staging");
        let mut removed = Vec::new();
        let rd = match std::fs::read_dir(&staging) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
            Err(e) => return Err(StoreError::io(&staging, "readdir", e)),
        };
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            let entry_key = name.split('.').next().unwrap_or("").to_string();
            if let Some(k) = key {
                if entry_key != k {
                    continue;
                }
            } else {
                // Only stale if no pull holds the entry lock.
                let lp = self.root.join("locks").join(format!("{entry_key}.lock"));
                match lock_file(&lp, false)? {
                    Some(_held) => {}
                    None => continue,
                }
            }
            unpack::remove_tree(&ent.path()).map_err(|source| StoreError::Unpack {
                reference: name.clone(),
                layer: "-".into(),
                source,
            })?;
            removed.push(name);
        }
        Ok(removed)
    }

    pub(super) fn entries(&self) -> Result<Vec<(String, Option<EntryMeta>)>, StoreError> {
        let images = self.root.join("images");
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&images) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(StoreError::io(&images, "readdir", e)),
        };
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            let meta = std::fs::read(ent.path().join("entry.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<EntryMeta>(&b).ok());
            out.push((name, meta));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Both locks of an entry, taken without waiting: `None` when a pull is installing it or a
    /// run holds it ([`Store::hold`]).
    pub(super) fn idle(&self, name: &str) -> Result<Option<EntryLocks>, StoreError> {
        let locks = self.root.join("locks");
        let Some(install) = lock_file(&locks.join(format!("{name}.lock")), false)? else {
            return Ok(None);
        };
        let Some(used) = lock_file(&locks.join(format!("{name}.use")), false)? else {
            return Ok(None);
        };
        Ok(Some((install, used)))
    }

    /// Removes the lock files (`<name>.lock`, `<name>.use`) of entries that do not exist: what a
    /// pull that failed or was killed leaves. Each is removed while holding its install lock,
    /// so no pull is installing it meanwhile (and [`lock_file`] notices the unlink).
    pub(super) fn clean_locks(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.root.join("locks");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let names: std::collections::BTreeSet<String> = rd
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                let stem = n.strip_suffix(".lock").or_else(|| n.strip_suffix(".use"))?;
                (stem != "refs" && !stem.starts_with('.')).then(|| stem.to_string())
            })
            .collect();
        let mut removed = Vec::new();
        for name in names {
            if self.entry_dir(&name).exists() {
                continue;
            }
            let install = dir.join(format!("{name}.lock"));
            let Some(_lock) = lock_file(&install, false)? else {
                continue; // a pull holds it: not stale
            };
            if self.entry_dir(&name).exists() {
                continue;
            }
            let use_file = dir.join(format!("{name}.use"));
            for p in [&use_file, &install] {
                match std::fs::remove_file(p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::io(p, "remove", e)),
                }
            }
            removed.push(name);
        }
        Ok(removed)
    }

    /// Removes entries no reference points to, broken entries, stale staging and trash.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let refs = self.read_refs()?;
        for (name, meta) in self.entries()? {
            let Some(_locks) = self.idle(&name)? else {
                continue; // a pull is installing it, or a run holds it
            };
            match meta {
                None => {
                    self.discard(&self.entry_dir(&name))?;
                    report.broken.push(name);
                }
                Some(m) if !refs.refs.values().any(|e| e.digest == m.digest) => {
                    self.discard(&self.entry_dir(&name))?;
                    report.entries.push(name);
                }
                Some(_) => {}
            }
        }
        report.staging = self.clean_staging(None)?;
        report.shared_files_released = self.clean_pool()?;
        report.locks = self.clean_locks()?;
        let trash = self.root.join("trash");
        if let Ok(rd) = std::fs::read_dir(&trash) {
            for ent in rd.flatten() {
                let _ = unpack::remove_tree(&ent.path());
            }
        }
        Ok(report)
    }
}
