//! The index of references (`refs.json`: `"<reference>|<platform>"` -> manifest digest), written by
//! write-temp-then-rename under its own lock, and what reads it: listing, inspecting, removing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::*;
use crate::registry::manifest::Platform;

impl Store {
    pub(super) fn read_refs(&self) -> Result<Refs, StoreError> {
        let p = self.root.join("refs.json");
        match std::fs::read(&p) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|source| StoreError::Json { path: p, source })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Refs::default()),
            Err(e) => Err(StoreError::io(&p, "read", e)),
        }
    }

    /// Read-modify-write of refs.json under its lock, replaced by rename.
    pub(super) fn update_refs(&self, f: impl FnOnce(&mut Refs)) -> Result<(), StoreError> {
        let _lock = lock_file(&self.root.join("locks/refs.lock"), true)?;
        let mut refs = self.read_refs()?;
        f(&mut refs);
        let p = self.root.join("refs.json");
        let tmp = self.root.join(format!("refs.json.{}", std::process::id()));
        write_file(
            &tmp,
            &serde_json::to_vec_pretty(&refs).expect("refs serialise"),
        )?;
        std::fs::rename(&tmp, &p).map_err(|e| StoreError::io(&p, "rename", e))
    }

    pub(super) fn record_ref(
        &self,
        canonical: &str,
        platform: &Platform,
        digest: &str,
    ) -> Result<(), StoreError> {
        let key = ref_key(canonical, platform);
        let refs = self.read_refs()?;
        if refs.refs.get(&key).map(|e| e.digest.as_str()) == Some(digest) {
            return Ok(());
        }
        self.update_refs(|r| {
            r.refs.insert(
                key,
                RefEntry {
                    digest: digest.to_string(),
                    updated: now(),
                },
            );
        })
    }

    /// Installed images with the references that point to them.
    pub fn list(&self) -> Result<Vec<ImageInfo>, StoreError> {
        let refs = self.read_refs()?;
        let mut out = Vec::new();
        for (name, meta) in self.entries()? {
            let Some(meta) = meta else { continue };
            let mut names: Vec<String> = refs
                .refs
                .iter()
                .filter(|(_, e)| e.digest == meta.digest)
                .map(|(k, _)| k.split('|').next().unwrap_or(k).to_string())
                .collect();
            names.dedup();
            out.push(ImageInfo {
                refs: names,
                digest: meta.digest,
                ownership: meta.ownership,
                size: meta.size,
                created: meta.created,
                path: self.entry_dir(&name),
            });
        }
        Ok(out)
    }

    /// The cached image for `reference`, with its manifest and entry metadata, as JSON.
    pub fn inspect(
        &self,
        reference: &str,
        opts: &PullOptions,
    ) -> Result<serde_json::Value, StoreError> {
        let img = self
            .lookup(reference, opts)?
            .ok_or_else(|| StoreError::NotFound(reference.to_string()))?;
        let read_json = |p: PathBuf| -> Result<serde_json::Value, StoreError> {
            let b = std::fs::read(&p).map_err(|e| StoreError::io(&p, "read", e))?;
            serde_json::from_slice(&b).map_err(|source| StoreError::Json { path: p, source })
        };
        Ok(serde_json::json!({
            "reference": img.reference,
            "digest": img.digest,
            "rootfs": img.rootfs,
            "size": img.size,
            "entry": read_json(img.entry.join("entry.json"))?,
            "manifest": read_json(img.entry.join("manifest.json"))?,
            "config": read_json(img.entry.join("config.json"))?,
        }))
    }

    /// Forgets `reference` (a reference or a manifest digest) and deletes the entries no other
    /// reference uses. Returns the removed entry names.
    pub fn remove(&self, reference: &str, opts: &PullOptions) -> Result<Vec<String>, StoreError> {
        let digest = if reference.starts_with("sha256:") {
            let hex = sha256_hex(reference).map_err(|e| StoreError::Source {
                source_ref: reference.to_string(),
                why: e.to_string(),
            })?;
            // A digest nothing knows is an error, not a silent no-op: neither a reference points
            // to it nor is an entry installed under it.
            let referenced = self
                .read_refs()?
                .refs
                .values()
                .any(|e| e.digest == reference);
            let prefix = format!("{hex}-");
            let installed = self
                .entries()?
                .iter()
                .any(|(name, _)| name.starts_with(&prefix));
            if !referenced && !installed {
                return Err(StoreError::NotFound(reference.to_string()));
            }
            reference.to_string()
        } else {
            let canonical = Source::parse(reference)?.canonical();
            let refs = self.read_refs()?;
            let platform = opts.platform()?;
            match refs.refs.get(&ref_key(&canonical, &platform)) {
                Some(e) => e.digest.clone(),
                None => match self.lookup(reference, opts)? {
                    Some(img) => img.digest,
                    None => return Err(StoreError::NotFound(reference.to_string())),
                },
            }
        };
        let canonical = if reference.starts_with("sha256:") {
            None
        } else {
            Some(Source::parse(reference)?.canonical())
        };
        self.update_refs(|r| {
            r.refs.retain(|k, e| match &canonical {
                Some(c) => !(k.split('|').next() == Some(c.as_str()) && e.digest == digest),
                None => e.digest != digest,
            })
        })?;
        let still_used = self.read_refs()?.refs.values().any(|e| e.digest == digest);
        let mut removed = Vec::new();
        if !still_used {
            let hex = sha256_hex(&digest).unwrap_or_default().to_string();
            for (name, _) in self.entries()? {
                if name.starts_with(&format!("{hex}-")) {
                    let Some(_locks) = self.idle(&name)? else {
                        continue; // being installed, or held by a run: gc removes it later
                    };
                    self.discard(&self.entry_dir(&name))?;
                    removed.push(name);
                }
            }
        }
        Ok(removed)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Refs {
    #[serde(default)]
    pub(super) refs: BTreeMap<String, RefEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct RefEntry {
    pub(super) digest: String,
    pub(super) updated: u64,
}

pub(super) fn ref_key(canonical: &str, platform: &Platform) -> String {
    format!("{canonical}|{platform}")
}
