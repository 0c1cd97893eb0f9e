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

mod local;
pub mod progress;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::ids::Ownership;
use crate::reference::{ReferenceError, Source};
use crate::registry::digest::{sha256_hex, FinishError, Verifier, VerifyingReader};
pub use crate::registry::manifest::ImageConfig;
use crate::registry::manifest::{self, Document, ImageManifest, ManifestError, Platform};
use crate::registry::{RegistryClient, RegistryError, RegistryOptions};
use crate::unpack::{self, Limits, UnpackError, Unpacker};
use local::LayerFile;

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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Refs {
    #[serde(default)]
    refs: BTreeMap<String, RefEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RefEntry {
    digest: String,
    updated: u64,
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

fn ref_key(canonical: &str, platform: &Platform) -> String {
    format!("{canonical}|{platform}")
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

    /// `lookup`, then pull according to `policy`.
    pub async fn ensure_image(
        &self,
        reference: &str,
        policy: PullPolicy,
        opts: &PullOptions,
    ) -> Result<ResolvedImage, StoreError> {
        match policy {
            PullPolicy::Always => self.pull(reference, opts).await,
            PullPolicy::Missing => match self.lookup(reference, opts)? {
                Some(img) => Ok(img),
                None => self.pull(reference, opts).await,
            },
            PullPolicy::Never => self
                .lookup(reference, opts)?
                .ok_or_else(|| StoreError::NotFound(reference.to_string())),
        }
    }

    /// Resolves `reference` at its source and installs it unless the same digest is installed.
    pub async fn pull(
        &self,
        reference: &str,
        opts: &PullOptions,
    ) -> Result<ResolvedImage, StoreError> {
        let source = Source::parse(reference)?;
        let platform = opts.platform()?;
        let canonical = source.canonical();
        // Before any download: an ownership that would give files to host root is never
        // installable (the unpacker refuses it too, this just fails first).
        unpack::check_ownership(opts.ownership).map_err(|source| StoreError::Ownership {
            reference: canonical.clone(),
            source,
        })?;
        let merr = |source| StoreError::Manifest {
            reference: canonical.clone(),
            source,
        };
        let plan = match &source {
            Source::Registry(r) => {
                let client = Arc::new(RegistryClient::new(r, &opts.registry)?);
                let (bytes, digest) = client.fetch_manifest(None).await?;
                let (bytes, digest, m) = match manifest::parse(&bytes, None).map_err(merr)? {
                    Document::Image(m) => (bytes, digest, m),
                    Document::Index(entries) => {
                        let d = manifest::choose_platform(&entries, &platform).map_err(merr)?;
                        let (b, dg) = client.fetch_manifest(Some(&d.digest)).await?;
                        match manifest::parse(&b, None).map_err(merr)? {
                            Document::Image(m) => (b, dg, m),
                            Document::Index(_) => {
                                return Err(StoreError::Source {
                                    source_ref: canonical.clone(),
                                    why: "index entry for the platform is itself an index".into(),
                                })
                            }
                        }
                    }
                };
                Plan {
                    manifest_bytes: bytes,
                    digest,
                    manifest: m,
                    fetch: Fetch::Registry(client),
                }
            }
            Source::OciLayout { dir, tag } => {
                let li = local::resolve_oci(dir, tag.as_deref(), &platform)?;
                Plan::local(li)
            }
            Source::DockerArchive { file } => Plan::local(local::resolve_docker_archive(file)?),
        };
        self.install(&canonical, &platform, plan, opts).await
    }

    async fn lock(&self, key: &str) -> Result<Flock<File>, StoreError> {
        let path = self.root.join("locks").join(format!("{key}.lock"));
        tokio::task::spawn_blocking(move || lock_file(&path, true))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
            .map(|l| l.expect("blocking lock always returns a lock"))
    }

    async fn install(
        &self,
        canonical: &str,
        platform: &Platform,
        plan: Plan,
        opts: &PullOptions,
    ) -> Result<ResolvedImage, StoreError> {
        // An explicit platform is a promise about what runs: a single-platform image (or an index
        // entry) whose config says otherwise is refused before it is recorded under that
        // platform, as Docker does. Without one, any image is taken as it comes.
        let early_config = match &opts.platform {
            Some(_) => {
                let bytes = self.config_bytes(&plan).await?;
                let config = ImageConfig::parse(&bytes).map_err(|source| StoreError::Manifest {
                    reference: canonical.to_string(),
                    source,
                })?;
                check_platform(canonical, platform, &config)?;
                Some(bytes)
            }
            None => None,
        };
        let key = Self::entry_key(&plan.digest, &opts.ownership)?;
        let _lock = self.lock(&key).await?;
        if let Some(img) = self.read_entry(&key, canonical)? {
            self.record_ref(canonical, platform, &plan.digest)?;
            return Ok(img);
        }
        // Whatever is here under our lock is debris: an entry without its marker, or staging
        // directories of a pull that died.
        let dir = self.entry_dir(&key);
        if dir.symlink_metadata().is_ok() {
            self.discard(&dir)?;
        }
        self.clean_staging(Some(&key))?;

        let staging = self.root.join("staging").join(format!(
            "{key}.{}.{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let guard = StagingGuard(Some(staging.clone()));
        let rootfs = staging.join("rootfs");
        let blobs = staging.join("blobs");
        for d in [&staging, &rootfs, &blobs] {
            std::fs::create_dir(d).map_err(|e| StoreError::io(d, "mkdir", e))?;
        }
        set_mode(&rootfs, 0o755)?;

        let config_bytes = match early_config {
            Some(b) => b,
            None => self.config_bytes(&plan).await?,
        };
        let config = ImageConfig::parse(&config_bytes).map_err(|source| StoreError::Manifest {
            reference: canonical.to_string(),
            source,
        })?;

        let stats = self
            .unpack_layers(canonical, &plan, &rootfs, &blobs, opts)
            .await?;
        std::fs::remove_dir(&blobs).map_err(|e| StoreError::io(&blobs, "rmdir", e))?;

        write_file(&staging.join("manifest.json"), &plan.manifest_bytes)?;
        write_file(&staging.join("config.json"), &config_bytes)?;
        let meta = EntryMeta {
            reference: canonical.to_string(),
            digest: plan.digest.clone(),
            config_digest: plan.manifest.config.digest.clone(),
            platform: platform.to_string(),
            ownership: ownership_key(&opts.ownership),
            size: stats.bytes,
            layers: plan.manifest.layers.len(),
            created: config.created.clone(),
            installed: now(),
            shared_bytes: stats.shared_bytes,
        };
        let meta_bytes =
            serde_json::to_vec_pretty(&meta).expect("serialising entry.json cannot fail");
        write_file(&staging.join("entry.json"), &meta_bytes)?;
        set_mode(&staging, 0o755)?;
        std::fs::rename(&staging, &dir)
            .map_err(|e| StoreError::io(&dir, "rename staging to", e))?;
        guard.disarm();
        self.record_ref(canonical, platform, &plan.digest)?;
        Ok(ResolvedImage {
            reference: canonical.to_string(),
            digest: plan.digest,
            rootfs: vec![dir.join("rootfs")],
            config,
            entry: dir,
            size: stats.bytes,
        })
    }

    /// The image config of `plan`, fetched (and verified) from the registry or read locally.
    async fn config_bytes(&self, plan: &Plan) -> Result<Vec<u8>, StoreError> {
        Ok(match &plan.fetch {
            Fetch::Registry(c) => {
                c.fetch_blob(&plan.manifest.config, manifest::MAX_CONFIG_BYTES)
                    .await?
            }
            Fetch::Local { config, .. } => config.clone(),
        })
    }

    /// Downloads layers in parallel while one blocking thread applies them in order.
    async fn unpack_layers(
        &self,
        canonical: &str,
        plan: &Plan,
        rootfs: &Path,
        blobs: &Path,
        opts: &PullOptions,
    ) -> Result<unpack::UnpackStats, StoreError> {
        let n = plan.manifest.layers.len();
        let layers_progress: Arc<Vec<progress::Layer>> = Arc::new(
            plan.manifest
                .layers
                .iter()
                .map(|l| progress::Layer {
                    name: l.digest.chars().skip(7).take(12).collect(),
                    total: l.size,
                    done: Default::default(),
                    state: Default::default(),
                })
                .collect(),
        );
        let _display = progress::Display::start(layers_progress.clone(), opts.progress);
        let _watch = progress::Watch::start(layers_progress.clone(), opts.observer.clone());
        let (tx, rx) = std::sync::mpsc::channel::<(usize, Result<LayerFile, StoreError>)>();
        let mut downloads = tokio::task::JoinSet::new();
        match &plan.fetch {
            Fetch::Registry(client) => {
                let sem = Arc::new(tokio::sync::Semaphore::new(
                    opts.registry.max_concurrent_downloads.max(1),
                ));
                for (i, desc) in plan.manifest.layers.iter().cloned().enumerate() {
                    let client = client.clone();
                    let sem = sem.clone();
                    let tx = tx.clone();
                    let path = blobs.join(i.to_string());
                    let prog = layers_progress.clone();
                    downloads.spawn(async move {
                        let _permit = sem.acquire_owned().await;
                        prog[i]
                            .state
                            .store(progress::DOWNLOADING, Ordering::Relaxed);
                        let r = client
                            .download_blob(&desc, &path, &prog[i].done)
                            .await
                            .map(|()| LayerFile {
                                path: path.clone(),
                                offset: 0,
                                len: desc.size,
                                verify: false,
                            })
                            .map_err(StoreError::from);
                        prog[i].state.store(progress::DOWNLOADED, Ordering::Relaxed);
                        let _ = tx.send((i, r));
                    });
                }
            }
            Fetch::Local { layers, .. } => {
                for (i, l) in layers.iter().cloned().enumerate() {
                    let _ = tx.send((i, Ok(l)));
                }
            }
        }
        drop(tx);
        let descs = plan.manifest.layers.clone();
        let rootfs = rootfs.to_path_buf();
        let ownership = opts.ownership;
        let limits = opts.limits;
        let canonical = canonical.to_string();
        let prog = layers_progress.clone();
        let pool = self.pool_dir(&ownership)?;
        let result =
            tokio::task::spawn_blocking(move || -> Result<unpack::UnpackStats, StoreError> {
                let uerr = |layer: &str, source| StoreError::Unpack {
                    reference: canonical.clone(),
                    layer: layer.to_string(),
                    source,
                };
                let mut unpacker =
                    Unpacker::new(&rootfs, ownership, limits).map_err(|e| uerr("-", e))?;
                unpacker
                    .share_files(&pool, SHARE_MIN_SIZE)
                    .map_err(|e| uerr("-", e))?;
                let mut ready: HashMap<usize, Result<LayerFile, StoreError>> = HashMap::new();
                for (i, desc) in descs.iter().enumerate().take(n) {
                    let lf = loop {
                        if let Some(r) = ready.remove(&i) {
                            break r?;
                        }
                        match rx.recv() {
                            Ok((j, r)) => {
                                ready.insert(j, r);
                            }
                            Err(_) => {
                                return Err(StoreError::Task("a layer download vanished".into()))
                            }
                        }
                    };
                    let reader = lf.open()?;
                    if lf.verify {
                        let v = Verifier::new(&desc.digest, Some(desc.size)).map_err(|e| {
                            StoreError::Source {
                                source_ref: canonical.clone(),
                                why: e.to_string(),
                            }
                        })?;
                        let mut vr = VerifyingReader::new(reader, v);
                        let r = unpacker.apply_layer(&mut vr);
                        if let Some(f) = vr.failure() {
                            return Err(StoreError::Verify {
                                reference: canonical.clone(),
                                layer: desc.digest.clone(),
                                source: FinishError::Digest(f.clone()),
                            });
                        }
                        r.map_err(|e| uerr(&desc.digest, e))?;
                        vr.finish().map_err(|source| StoreError::Verify {
                            reference: canonical.clone(),
                            layer: desc.digest.clone(),
                            source,
                        })?;
                    } else {
                        unpacker
                            .apply_layer(reader)
                            .map_err(|e| uerr(&desc.digest, e))?;
                        // Downloaded into staging: free the space as soon as it is applied.
                        let _ = std::fs::remove_file(&lf.path);
                    }
                    prog[i].state.store(progress::EXTRACTED, Ordering::Relaxed);
                }
                unpacker.finish().map_err(|e| uerr("-", e))
            })
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?;
        downloads.abort_all();
        while downloads.join_next().await.is_some() {}
        result
    }

    /// Where identical files of entries with this ownership are shared (see
    /// [`Unpacker::share_files`]).
    fn pool_dir(&self, ownership: &Ownership) -> Result<PathBuf, StoreError> {
        let p = self.root.join("shared").join(ownership_key(ownership));
        std::fs::create_dir_all(&p).map_err(|e| StoreError::io(&p, "mkdir", e))?;
        Ok(p)
    }

    /// Removes pool files no entry links to any more.
    fn clean_pool(&self) -> Result<u64, StoreError> {
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

    fn discard(&self, dir: &Path) -> Result<(), StoreError> {
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
    fn clean_staging(&self, key: Option<&str>) -> Result<Vec<String>, StoreError> {
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

    fn read_refs(&self) -> Result<Refs, StoreError> {
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
    fn update_refs(&self, f: impl FnOnce(&mut Refs)) -> Result<(), StoreError> {
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

    fn record_ref(
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

    fn entries(&self) -> Result<Vec<(String, Option<EntryMeta>)>, StoreError> {
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

    /// Both locks of an entry, taken without waiting: `None` when a pull is installing it or a
    /// run holds it ([`Store::hold`]).
    fn idle(&self, name: &str) -> Result<Option<EntryLocks>, StoreError> {
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
    fn clean_locks(&self) -> Result<Vec<String>, StoreError> {
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

/// Refuses `config` when it names an os/architecture (or a variant, when `wanted` names one too)
/// other than `wanted`. A config that names no os or architecture cannot be checked and passes.
fn check_platform(
    reference: &str,
    wanted: &Platform,
    config: &ImageConfig,
) -> Result<(), StoreError> {
    let (Some(os), Some(arch)) = (config.os.as_deref(), config.architecture.as_deref()) else {
        return Ok(());
    };
    let mut actual_s = format!("{os}/{arch}");
    if let Some(v) = config.variant.as_deref().filter(|v| !v.is_empty()) {
        actual_s.push('/');
        actual_s.push_str(v);
    }
    // Through the parser, so that `x86_64` in a config compares equal to `amd64`.
    let matches = match Platform::parse(&actual_s) {
        Ok(actual) => {
            actual.os == wanted.os
                && actual.architecture == wanted.architecture
                && match (&actual.variant, &wanted.variant) {
                    (Some(a), Some(w)) => a == w,
                    _ => true,
                }
        }
        Err(_) => false,
    };
    if matches {
        return Ok(());
    }
    Err(StoreError::PlatformMismatch {
        reference: reference.to_string(),
        wanted: wanted.to_string(),
        actual: one_line(&actual_s),
    })
}

/// An entry's install lock and use lock, both held.
type EntryLocks = (Flock<File>, Flock<File>);

/// See [`Store::hold`].
#[derive(Debug)]
pub struct ImageHold {
    _lock: Flock<File>,
}

/// What a pull installs, wherever it comes from.
struct Plan {
    manifest_bytes: Vec<u8>,
    digest: String,
    manifest: ImageManifest,
    fetch: Fetch,
}

enum Fetch {
    Registry(Arc<RegistryClient>),
    Local {
        config: Vec<u8>,
        layers: Vec<LayerFile>,
    },
}

impl Plan {
    fn local(li: local::LocalImage) -> Plan {
        Plan {
            manifest_bytes: li.manifest_bytes,
            digest: li.manifest_digest,
            manifest: li.manifest,
            fetch: Fetch::Local {
                config: li.config_bytes,
                layers: li.layers,
            },
        }
    }
}

/// Removes a staging directory unless the install completed.
struct StagingGuard(Option<PathBuf>);

impl StagingGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for StagingGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = unpack::remove_tree(&p);
        }
    }
}

/// flock on `path` (created if missing). Non-blocking: `None` when someone else holds it.
///
/// `gc` deletes the lock files of entries that do not exist, holding the lock while it does: a
/// process that opened the file before the unlink would then lock a file no one else can find.
/// So after locking, the path must still name the file locked; if not, try again.
fn lock_file(path: &Path, block: bool) -> Result<Option<Flock<File>>, StoreError> {
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
