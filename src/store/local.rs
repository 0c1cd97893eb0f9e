//! Registry-free sources: OCI image layout directories and `docker save` tarballs.
//!
//! Both are resolved synchronously (plain file reads), so `lookup` can use them without a runtime,
//! and both hand the store [`LayerFile`]s that are verified while they are unpacked.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::StoreError;
use crate::registry::digest::{sha256_digest, sha256_hex};
use crate::registry::manifest::{self, Descriptor, Document, ImageManifest, Platform};

/// A layer (or other blob) stored in a local file, possibly inside a tar archive.
#[derive(Debug, Clone)]
pub struct LayerFile {
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
    /// Check the digest while reading (false only for blobs this process just downloaded and
    /// verified).
    pub verify: bool,
}

impl LayerFile {
    /// Opens the file positioned at the blob, limited to its length.
    pub fn open(&self) -> Result<std::io::Take<File>, StoreError> {
        let mut f = File::open(&self.path).map_err(|e| StoreError::io(&self.path, "open", e))?;
        f.seek(SeekFrom::Start(self.offset))
            .map_err(|e| StoreError::io(&self.path, "seek", e))?;
        Ok(f.take(self.len))
    }

    /// Reads a small blob whole, refusing more than `limit` bytes, and checks its digest.
    pub fn read_verified(&self, digest: &str, limit: u64) -> Result<Vec<u8>, StoreError> {
        if self.len > limit {
            return Err(StoreError::Source {
                source_ref: self.path.display().to_string(),
                why: format!(
                    "blob {digest} is {} bytes, more than the limit of {limit}",
                    self.len
                ),
            });
        }
        let mut buf = Vec::with_capacity(self.len as usize);
        self.open()?
            .read_to_end(&mut buf)
            .map_err(|e| StoreError::io(&self.path, "read", e))?;
        let actual = sha256_digest(&buf);
        if actual != digest {
            return Err(StoreError::Source {
                source_ref: self.path.display().to_string(),
                why: format!("blob {digest} has digest {actual}"),
            });
        }
        Ok(buf)
    }
}

/// An image found in a local source, ready to install.
pub struct LocalImage {
    pub manifest_bytes: Vec<u8>,
    pub manifest_digest: String,
    pub manifest: ImageManifest,
    pub config_bytes: Vec<u8>,
    /// One per manifest layer, bottom first.
    pub layers: Vec<LayerFile>,
}

fn src_err(src: &str, why: impl Into<String>) -> StoreError {
    StoreError::Source {
        source_ref: src.to_string(),
        why: why.into(),
    }
}

// ---------- OCI image layout ----------

fn oci_blob(dir: &Path, d: &Descriptor, src: &str) -> Result<LayerFile, StoreError> {
    let hex = sha256_hex(&d.digest).map_err(|e| src_err(src, e.to_string()))?;
    let path = dir.join("blobs/sha256").join(hex);
    let len = std::fs::metadata(&path)
        .map_err(|e| StoreError::io(&path, "stat", e))?
        .len();
    if len != d.size {
        return Err(src_err(
            src,
            format!(
                "blob {} is {len} bytes, its descriptor says {}",
                d.digest, d.size
            ),
        ));
    }
    Ok(LayerFile {
        path,
        offset: 0,
        len,
        verify: true,
    })
}

/// Resolves `tag` (or the only image) in an OCI layout directory for `platform`.
pub fn resolve_oci(
    dir: &Path,
    tag: Option<&str>,
    platform: &Platform,
) -> Result<LocalImage, StoreError> {
    let src = format!("oci:{}", dir.display());
    let layout_path = dir.join("oci-layout");
    if !layout_path.exists() {
        return Err(src_err(
            &src,
            "not an OCI image layout (no oci-layout file)",
        ));
    }
    let index_path = dir.join("index.json");
    let index_bytes =
        std::fs::read(&index_path).map_err(|e| StoreError::io(&index_path, "read", e))?;
    let Document::Index(entries) = manifest::parse(&index_bytes, Some(manifest::OCI_INDEX))
        .map_err(|e| src_err(&src, format!("index.json: {e}")))?
    else {
        return Err(src_err(&src, "index.json is not an image index"));
    };
    let name_of = |d: &Descriptor| {
        d.annotations
            .as_ref()
            .and_then(|a| a.get("org.opencontainers.image.ref.name").cloned())
    };
    let chosen = match tag {
        Some(t) => entries
            .iter()
            .find(|d| {
                name_of(d).as_deref() == Some(t)
                    || name_of(d).is_some_and(|n| n.rsplit_once(':').map(|x| x.1) == Some(t))
            })
            .ok_or_else(|| {
                let tags: Vec<String> = entries.iter().filter_map(name_of).collect();
                src_err(
                    &src,
                    format!("no image tagged {t:?} (tags: {})", tags.join(", ")),
                )
            })?,
        None if entries.len() == 1 => &entries[0],
        None => {
            // Several entries without a tag asked for: a multi-platform set, choose by platform.
            manifest::choose_platform(&entries, platform)
                .map_err(|e| src_err(&src, e.to_string()))?
        }
    };
    let mut desc = chosen.clone();
    for _ in 0..4 {
        let bytes = oci_blob(dir, &desc, &src)?
            .read_verified(&desc.digest, manifest::MAX_MANIFEST_BYTES as u64)?;
        let mt = (!desc.media_type.is_empty()).then_some(desc.media_type.as_str());
        match manifest::parse(&bytes, mt).map_err(|e| src_err(&src, e.to_string()))? {
            Document::Index(inner) => {
                desc = manifest::choose_platform(&inner, platform)
                    .map_err(|e| src_err(&src, e.to_string()))?
                    .clone();
            }
            Document::Image(m) => {
                let config_bytes = oci_blob(dir, &m.config, &src)?
                    .read_verified(&m.config.digest, manifest::MAX_CONFIG_BYTES)?;
                let layers = m
                    .layers
                    .iter()
                    .map(|l| oci_blob(dir, l, &src))
                    .collect::<Result<Vec<_>, _>>()?;
                return Ok(LocalImage {
                    manifest_bytes: bytes,
                    manifest_digest: desc.digest.clone(),
                    manifest: m,
                    config_bytes,
                    layers,
                });
            }
        }
    }
    Err(src_err(&src, "indexes nested more than 4 deep"))
}

// ---------- docker save ----------

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct DiffIds {
    rootfs: RootFs,
}
#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// Resolves the first image of a `docker save` tarball. Legacy layers (`<id>/layer.tar`) are
/// uncompressed and checked against the config's `diff_ids`; content-addressed members
/// (`blobs/sha256/<hex>`, Docker 25+) against their name.
pub fn resolve_docker_archive(file: &Path) -> Result<LocalImage, StoreError> {
    let src = format!("docker-archive:{}", file.display());
    let f = File::open(file).map_err(|e| StoreError::io(file, "open", e))?;
    let mut archive = tar::Archive::new(f);
    let mut members: HashMap<String, (u64, u64)> = HashMap::new();
    let mut symlinks: HashMap<String, String> = HashMap::new();
    // The tar crate's parse errors quote the header bytes they reject: for a file that is not a
    // tar at all, that is the file's content. Say what the file is not, never what it holds.
    let not_archive = |e: std::io::Error| match e.raw_os_error() {
        Some(_) => StoreError::io(file, "read", e),
        None => src_err(
            &src,
            format!(
                "{} is not a docker save tarball (not a tar archive)",
                file.display()
            ),
        ),
    };
    for entry in archive.entries_with_seek().map_err(not_archive)? {
        let entry = entry.map_err(not_archive)?;
        let name = String::from_utf8_lossy(&entry.path_bytes())
            .trim_start_matches("./")
            .to_string();
        if entry.header().entry_type().is_symlink() {
            if let Some(t) = entry.link_name_bytes() {
                symlinks.insert(name.clone(), String::from_utf8_lossy(&t).into_owned());
            }
        }
        members.insert(name, (entry.raw_file_position(), entry.size()));
        if members.len() > 100_000 {
            return Err(src_err(&src, "more than 100000 members"));
        }
    }
    let member = |name: &str| -> Result<LayerFile, StoreError> {
        let mut n = name.trim_start_matches("./").to_string();
        // Old docker save links identical layers to one another; follow (inside the archive) once.
        if let Some(t) = symlinks.get(&n) {
            let base = Path::new(&n).parent().unwrap_or(Path::new(""));
            n = normalise(&base.join(t));
        }
        let (offset, len) = members
            .get(&n)
            .copied()
            .ok_or_else(|| src_err(&src, format!("member {name:?} missing")))?;
        Ok(LayerFile {
            path: file.to_path_buf(),
            offset,
            len,
            verify: true,
        })
    };
    if !members.contains_key("manifest.json") {
        return Err(src_err(
            &src,
            format!(
                "{} is not a docker save tarball (it has no manifest.json)",
                file.display()
            ),
        ));
    }
    let mf = member("manifest.json")?;
    let mut mbytes = Vec::new();
    mf.open()?
        .take(1 << 20)
        .read_to_end(&mut mbytes)
        .map_err(|e| StoreError::io(file, "read", e))?;
    let list: Vec<ArchiveManifest> = serde_json::from_slice(&mbytes)
        .map_err(|e| src_err(&src, format!("manifest.json: {e}")))?;
    let first = list
        .into_iter()
        .next()
        .ok_or_else(|| src_err(&src, "manifest.json lists no image"))?;
    let _ = first.repo_tags;
    let cf = member(&first.config)?;
    if cf.len > manifest::MAX_CONFIG_BYTES {
        return Err(src_err(&src, "config too large"));
    }
    let mut config_bytes = Vec::new();
    cf.open()?
        .read_to_end(&mut config_bytes)
        .map_err(|e| StoreError::io(file, "read", e))?;
    let config_digest = sha256_digest(&config_bytes);
    let diff_ids: DiffIds =
        serde_json::from_slice(&config_bytes).map_err(|e| src_err(&src, format!("config: {e}")))?;
    if diff_ids.rootfs.diff_ids.len() != first.layers.len() {
        return Err(src_err(
            &src,
            format!(
                "config lists {} diff_ids for {} layers",
                diff_ids.rootfs.diff_ids.len(),
                first.layers.len()
            ),
        ));
    }
    let mut layers = Vec::new();
    let mut descs = Vec::new();
    for (name, diff_id) in first.layers.iter().zip(&diff_ids.rootfs.diff_ids) {
        let lf = member(name)?;
        let digest = match name.strip_prefix("blobs/sha256/") {
            Some(hex) => format!("sha256:{hex}"),
            None => diff_id.clone(),
        };
        sha256_hex(&digest).map_err(|e| src_err(&src, e.to_string()))?;
        descs.push(Descriptor {
            media_type: manifest::OCI_LAYER_TAR.to_string(),
            digest,
            size: lf.len,
            platform: None,
            annotations: None,
        });
        layers.push(lf);
    }
    let m = ImageManifest {
        config: Descriptor {
            media_type: manifest::OCI_CONFIG.to_string(),
            digest: config_digest,
            size: config_bytes.len() as u64,
            platform: None,
            annotations: None,
        },
        layers: descs,
    };
    // A synthesised, deterministic manifest: same archive content, same cache key.
    let manifest_bytes = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest::OCI_MANIFEST,
        "config": m.config,
        "layers": m.layers,
    }))
    .expect("serialising a manifest cannot fail");
    Ok(LocalImage {
        manifest_digest: sha256_digest(&manifest_bytes),
        manifest_bytes,
        manifest: m,
        config_bytes,
        layers,
    })
}

fn normalise(p: &Path) -> String {
    let mut out: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    out.join("/")
}
