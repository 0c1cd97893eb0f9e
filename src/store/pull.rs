//! Pulling an image into the cache: resolve it (registry, OCI layout or `docker save` archive),
//! check the platform, fetch and verify config and layers, unpack them in a staging directory and
//! rename the complete entry into place.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::local::{self, LayerFile};
use super::*;
use crate::ids::Ownership;
use crate::reference::Source;
use crate::registry::digest::{FinishError, Verifier, VerifyingReader};
use crate::registry::manifest::{self, Document, ImageManifest, Platform};
use crate::registry::RegistryClient;
use crate::unpack::{self, Unpacker};

impl Store {
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
                PullPlan {
                    manifest_bytes: bytes,
                    digest,
                    manifest: m,
                    fetch: Fetch::Registry(client),
                }
            }
            Source::OciLayout { dir, tag } => {
                let li = local::resolve_oci(dir, tag.as_deref(), &platform)?;
                PullPlan::local(li)
            }
            Source::DockerArchive { file } => PullPlan::local(local::resolve_docker_archive(file)?),
        };
        self.install(&canonical, &platform, plan, opts).await
    }

    pub(super) async fn install(
        &self,
        canonical: &str,
        platform: &Platform,
        plan: PullPlan,
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
        tracing::debug!(reference = canonical, digest = %plan.digest, layers = plan.manifest.layers.len(), "installing: waiting for the entry lock");
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
        tracing::debug!(entry = %dir.display(), "installed");
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
    pub(super) async fn config_bytes(&self, plan: &PullPlan) -> Result<Vec<u8>, StoreError> {
        Ok(match &plan.fetch {
            Fetch::Registry(c) => {
                c.fetch_blob(&plan.manifest.config, manifest::MAX_CONFIG_BYTES)
                    .await?
            }
            Fetch::Local { config, .. } => config.clone(),
        })
    }

    /// Downloads layers in parallel while one blocking thread applies them in order.
    pub(super) async fn unpack_layers(
        &self,
        canonical: &str,
        plan: &PullPlan,
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
    pub(super) fn pool_dir(&self, ownership: &Ownership) -> Result<PathBuf, StoreError> {
        let p = self.root.join("shared").join(ownership_key(ownership));
        std::fs::create_dir_all(&p).map_err(|e| StoreError::io(&p, "mkdir", e))?;
        Ok(p)
    }
}

/// Refuses `config` when it names an os/architecture (or a variant, when `wanted` names one too)
/// other than `wanted`. A config that names no os or architecture cannot be checked and passes.
pub(super) fn check_platform(
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

/// What a pull installs, wherever it comes from.
pub(super) struct PullPlan {
    manifest_bytes: Vec<u8>,
    digest: String,
    manifest: ImageManifest,
    fetch: Fetch,
}

pub(super) enum Fetch {
    Registry(Arc<RegistryClient>),
    Local {
        config: Vec<u8>,
        layers: Vec<LayerFile>,
    },
}

impl PullPlan {
    fn local(li: local::LocalImage) -> PullPlan {
        PullPlan {
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
pub(super) struct StagingGuard(Option<PathBuf>);

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
