//! The image cache: verified, immutable root filesystems keyed by manifest digest and ownership.
//!
//! Layout under one root directory:
//! ```text
//! images/<manifest-hex>-<ownership>/   one installed image (immutable once renamed into place)
//!     rootfs/                          the flattened root filesystem
//!     manifest.json  config.json       as pulled, verified
//!     entry.json                       written last: its presence marks the entry complete
//! refs.json                            "<reference>|<platform>" -> manifest digest (temp + rename)
//! locks/<key>.lock                     flock per entry: one pull installs, the others wait and reuse
//! staging/<key>.<pid>.<nanos>/         a pull in progress (blobs/ + rootfs/), renamed into images/
//! trash/                               entries being deleted (renamed here first, so they vanish at once)
//! shared/<ownership>/<sha256>-<mode>-<uid>-<gid>-<mtime>
//!                                      one more link to every file >= 16 KiB: identical files of
//!                                      different entries are one inode
//! ```
//!
//! ```no_run
//! use nsrun::store::{PullOptions, PullPolicy, Store};
//! # async fn f() -> Result<(), nsrun::store::StoreError> {
//! let store = Store::open(&Store::default_root())?;
//! let opts = PullOptions::default(); // host platform, ownership for the current user
//! // Sync and network-free when cached: what `nsrun run IMAGE` does first.
//! if store.lookup("alpine:3.19", &opts)?.is_none() {
//!     let img = store.ensure_image("alpine:3.19", PullPolicy::Missing, &opts).await?;
//!     println!("{} {} at {}", img.reference, img.digest, img.rootfs[0].display());
//! }
//! # Ok(()) }
//! ```
//!
//! **Flattened, not overlaid.** Each image is unpacked into one directory (layers applied in
//! order, whiteouts resolved at unpack time), so the sandbox needs one read-only bind mount and
//! no overlayfs — which, unprivileged, needs kernel >= 5.11, is often refused inside a worker's own
//! container, and whose whiteouts are device nodes or trusted xattrs we cannot create rootless.
//! What layers share, entries share anyway: every file of at least [`SHARE_MIN_SIZE`] is
//! hardlinked to one copy in `shared/` (same content, mode, owner and mtime, same ownership key),
//! so two images on one base store its big files once. The measured figures are in
//! `rootfs-cache/README.md`.
//!
//! **Crash safety.** Nothing is visible until the rename of a complete staging directory; a pull
//! killed at any point leaves only a staging directory, removed by the next pull of the same entry
//! (it holds the entry lock, so no one else can be using it) or by `gc`.

mod gc;
mod local;
mod lock;
pub mod progress;
mod pull;
mod refs;

pub use lock::ImageHold;
use lock::{lock_file, EntryLocks};
use pull::check_platform;
use refs::ref_key;

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::ids::Ownership;
use crate::reference::{ReferenceError, Source};
use crate::registry::digest::{sha256_hex, FinishError};
pub use crate::registry::manifest::ImageConfig;
use crate::registry::manifest::{ManifestError, Platform};
use crate::registry::{RegistryError, RegistryOptions};
use crate::unpack::{self, Limits, UnpackError};

/// Files at least this big are shared between entries through hardlinks (smaller ones cost more
/// in link syscalls than they save in disk).
pub const SHARE_MIN_SIZE: u64 = 16 * 1024;

/// The first host id of the range container ids map to when nsrun runs as root.
pub const ROOT_ID_BASE: u32 = crate::ids::DEFAULT_ROOT_ID_BASE;

/// Why a cache operation failed. Every message is one line: inner errors are cut at their first
/// newline ([`one_line`]), since some (the `tar` crate's, a registry's error body) quote input.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {}: {}", path.display(), one_line(source))]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("{}", one_line(.0))]
    Reference(#[from] ReferenceError),
    #[error("{}", one_line(.0))]
    Registry(#[from] RegistryError),
    #[error("{reference}: {}", one_line(source))]
    Manifest {
        reference: String,
        source: ManifestError,
    },
    #[error("{reference}: layer {layer}: {}", one_line(source))]
    Unpack {
        reference: String,
        layer: String,
        source: UnpackError,
    },
    #[error("{reference}: {}", one_line(source))]
    Ownership {
        reference: String,
        source: UnpackError,
    },
    #[error("{reference}: layer {layer}: {}", one_line(source))]
    Verify {
        reference: String,
        layer: String,
        source: FinishError,
    },
    #[error("{source_ref}: {}", one_line(why))]
    Source { source_ref: String, why: String },
    #[error("image with reference {reference} was found but does not match the specified platform: wanted {wanted}, actual: {actual}")]
    PlatformMismatch {
        reference: String,
        wanted: String,
        actual: String,
    },
    #[error("image {} is not in the cache (pull it, or use --pull missing)", one_line(.0))]
    NotFound(String),
    #[error("cannot lock {}: {source}", path.display())]
    Lock { path: PathBuf, source: nix::Error },
    #[error("{} is not valid JSON: {}", path.display(), one_line(source))]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("pull task failed: {}", one_line(.0))]
    Task(String),
}

/// `e`'s message up to its first newline (marked with "(…)" when cut).
pub fn one_line(e: &impl std::fmt::Display) -> String {
    unpack::first_line(e)
}

impl StoreError {
    fn io(path: &Path, op: &'static str, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }
}

/// When to contact the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Always resolve the reference again (a cached image of the same digest is reused).
    Always,
    /// Pull only when the cache has no image for the reference.
    #[default]
    Missing,
    /// Never pull; fail when the image is not cached.
    Never,
}

/// How to pull and unpack.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// `os/arch[/variant]`; `None` means the host's.
    pub platform: Option<String>,
    /// Who owns the unpacked files (part of the cache key).
    pub ownership: Ownership,
    pub registry: RegistryOptions,
    pub limits: Limits,
    /// Per-layer progress on stderr when it is a terminal.
    pub progress: bool,
    /// Told of the layers' progress (the runner turns it into `pulling` events).
    pub observer: Option<progress::Observer>,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            platform: None,
            ownership: default_ownership(),
            registry: RegistryOptions::default(),
            limits: Limits::default(),
            progress: false,
            observer: None,
        }
    }
}

impl PullOptions {
    fn platform(&self) -> Result<Platform, StoreError> {
        match &self.platform {
            None => Ok(Platform::host()),
            Some(p) => Platform::parse(p).map_err(|source| StoreError::Manifest {
                reference: String::new(),
                source,
            }),
        }
    }
}

/// Squash to the caller when unprivileged; shift into [`ROOT_ID_BASE`]..+65536 as root.
pub fn default_ownership() -> Ownership {
    crate::ids::image_ownership(crate::ids::Caller::current(), None)
}

/// The part of the cache key that says who owns the files.
pub fn ownership_key(o: &Ownership) -> String {
    match *o {
        Ownership::Squash { uid, gid } => format!("squash-{uid}-{gid}"),
        Ownership::Shift {
            uid_base,
            gid_base,
            size,
        } if uid_base == gid_base && size == 65536 => format!("shift-{uid_base}"),
        Ownership::Shift {
            uid_base,
            gid_base,
            size,
        } => format!("shift-{uid_base}-{gid_base}-{size}"),
    }
}

/// An installed image, ready to run.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// Normalised reference, e.g. `docker.io/library/alpine:latest`.
    pub reference: String,
    /// Manifest digest (`sha256:…`) of the platform image.
    pub digest: String,
    /// Directories making up the root, topmost first (one: images are flattened).
    pub rootfs: Vec<PathBuf>,
    pub config: ImageConfig,
    /// The cache entry directory.
    pub entry: PathBuf,
    /// Uncompressed size of the layers, in bytes.
    pub size: u64,
}

/// What `entry.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryMeta {
    pub reference: String,
    pub digest: String,
    pub config_digest: String,
    pub platform: String,
    pub ownership: String,
    pub size: u64,
    pub layers: usize,
    pub created: Option<String>,
    pub installed: u64,
    /// Bytes of this entry stored once with other entries (hardlinked files).
    #[serde(default)]
    pub shared_bytes: u64,
}

/// One row of `nsrun images`.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    pub refs: Vec<String>,
    pub digest: String,
    pub ownership: String,
    pub size: u64,
    pub created: Option<String>,
    pub path: PathBuf,
}

/// What `gc` removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub entries: Vec<String>,
    pub staging: Vec<String>,
    pub broken: Vec<String>,
    /// Files of the sharing pool that no entry used any more.
    pub shared_files_released: u64,
    /// Entry names whose lock files were left by pulls that failed or were killed.
    pub locks: Vec<String>,
}

/// The cache.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Store {
    /// Cache root: `NSRUN_ROOT`; else `./rootfs-cache` of the checkout when the binary runs from
    /// one (it lives under `<checkout>/target/` and `<checkout>/rootfs-cache/README.md` exists); else
    /// `$XDG_DATA_HOME/nsrun` (or `~/.local/share/nsrun`) for users and `/var/lib/nsrun` for root.
    pub fn default_root() -> PathBuf {
        if let Some(r) = std::env::var_os("NSRUN_ROOT").filter(|r| !r.is_empty()) {
            return PathBuf::from(r);
        }
        if let Ok(exe) = std::env::current_exe() {
            for dir in exe.ancestors() {
                if dir.file_name() == Some(std::ffi::OsStr::new("target")) {
                    if let Some(checkout) = dir.parent() {
                        if checkout.join("rootfs-cache/README.md").is_file() {
                            return checkout.join("rootfs-cache");
                        }
                    }
                    break;
                }
            }
        }
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/var/lib/nsrun");
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
            return Path::new(&x).join("nsrun");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
        Path::new(&home).join(".local/share/nsrun")
    }

    /// Opens (creating if needed) the cache at `root`. A read-only cache can still be looked up.
    ///
    /// Creates nothing when the cache already exists (one `stat` per directory): it is opened on
    /// every `nsrun run IMAGE`, cached or not.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        for sub in ["images", "staging", "locks", "trash"] {
            let p = root.join(sub);
            if p.is_dir() {
                continue;
            }
            if let Err(e) = std::fs::create_dir_all(&p) {
                if !p.is_dir() {
                    return Err(StoreError::io(&p, "mkdir", e));
                }
            }
        }
        let tag = root.join("CACHEDIR.TAG");
        if !tag.exists() {
            let _ = std::fs::write(
                &tag,
                "Signature: 8a477f597d28d172789f06886806bc55\n# nsrun image cache; see `nsrun gc`.\n",
            );
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn entry_dir(&self, key: &str) -> PathBuf {
        self.root.join("images").join(key)
    }

    fn entry_key(digest: &str, ownership: &Ownership) -> Result<String, StoreError> {
        let hex = sha256_hex(digest).map_err(|e| StoreError::Source {
            source_ref: digest.to_string(),
            why: e.to_string(),
        })?;
        Ok(format!("{hex}-{}", ownership_key(ownership)))
    }

    /// Resolves a reference to an installed, complete entry without any network access and
    /// without an async runtime. `Ok(None)` when it is not cached (or the entry is broken, which
    /// the next pull repairs).
    pub fn lookup(
        &self,
        reference: &str,
        opts: &PullOptions,
    ) -> Result<Option<ResolvedImage>, StoreError> {
        let source = Source::parse(reference)?;
        let platform = opts.platform()?;
        let canonical = source.canonical();
        let digest = match &source {
            Source::Registry(r) => {
                let refs = self.read_refs()?;
                match refs.refs.get(&ref_key(&canonical, &platform)) {
                    Some(e) => Some(e.digest.clone()),
                    None => r.digest.clone(),
                }
            }
            // Local sources are re-resolved every time: cheap, and never stale.
            Source::OciLayout { dir, tag } => {
                Some(local::resolve_oci(dir, tag.as_deref(), &platform)?.manifest_digest)
            }
            Source::DockerArchive { file } => {
                Some(local::resolve_docker_archive(file)?.manifest_digest)
            }
        };
        let Some(digest) = digest else {
            return Ok(None);
        };
        let key = Self::entry_key(&digest, &opts.ownership)?;
        let found = self.read_entry(&key, &canonical)?;
        // Without --platform the host's is the key, so an image pulled as it came (say arm64
        // on an amd64 host) sits under the host platform; an explicit --platform must not run it.
        if let (Some(_), Some(img)) = (&opts.platform, &found) {
            check_platform(&canonical, &platform, &img.config)?;
        }
        Ok(found)
    }

    fn read_entry(&self, key: &str, reference: &str) -> Result<Option<ResolvedImage>, StoreError> {
        let dir = self.entry_dir(key);
        let meta_path = dir.join("entry.json");
        let meta: EntryMeta = match std::fs::read(&meta_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| StoreError::Json {
                path: meta_path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(&meta_path, "read", e)),
        };
        let rootfs = dir.join("rootfs");
        if !rootfs.is_dir() {
            return Ok(None);
        }
        let cfg_path = dir.join("config.json");
        let cfg = std::fs::read(&cfg_path).map_err(|e| StoreError::io(&cfg_path, "read", e))?;
        let config = ImageConfig::parse(&cfg).map_err(|source| StoreError::Manifest {
            reference: reference.to_string(),
            source,
        })?;
        Ok(Some(ResolvedImage {
            reference: reference.to_string(),
            digest: meta.digest,
            rootfs: vec![rootfs],
            config,
            entry: dir,
            size: meta.size,
        }))
    }
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let mut f = File::create(path).map_err(|e| StoreError::io(path, "create", e))?;
    f.write_all(data)
        .map_err(|e| StoreError::io(path, "write", e))?;
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| StoreError::io(path, "chmod", e))
}
