//! Talking to OCI registries: protocol choice, credentials, retries, and verified blob transfer.
//!
//! oci-client does the HTTP and the token dance; this module decides how to reach a registry
//! (HTTPS by default, plain HTTP as a fallback for loopback and `--insecure-registry` hosts, as
//! Docker does), which credentials to present, when to retry, and checks every byte against its
//! descriptor while it streams — we never trust the transport, or oci-client, to have done so.

pub mod auth;
pub mod digest;
pub mod manifest;
mod push;

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;

use crate::reference::{is_loopback_host, Reference};
use auth::{AuthError, Credentials};
use digest::{DigestError, Verifier};
use manifest::{Descriptor, ManifestError};

/// How to reach registries.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Hosts (`host[:port]`) reached over plain HTTP when HTTPS fails, and whose certificates are not
    /// verified; loopback registries get the HTTP fallback without being listed.
    pub insecure: Vec<String>,
    /// Extra PEM CA certificates to trust, besides the system roots.
    pub ca_files: Vec<PathBuf>,
    /// `USER:PASS` for the registry of the reference being pulled.
    pub creds: Option<String>,
    /// Docker config file; `None` means `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
    pub docker_config: Option<PathBuf>,
    /// A body that sends nothing for this long is abandoned (and retried).
    pub read_timeout: Duration,
    pub connect_timeout: Duration,
    /// Attempts after the first one, for 5xx, 429, resets and stalls.
    pub retries: u32,
    /// First backoff delay; doubles each attempt.
    pub backoff: Duration,
    /// Layers fetched at once.
    pub max_concurrent_downloads: usize,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            insecure: Vec::new(),
            ca_files: Vec::new(),
            creds: None,
            docker_config: None,
            read_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            retries: 4,
            backoff: Duration::from_millis(250),
            max_concurrent_downloads: 4,
        }
    }
}

/// Why talking to a registry failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("cannot read registry CA file {path}: {source}")]
    Ca {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{reference}: {source}")]
    Manifest {
        reference: String,
        source: ManifestError,
    },
    #[error("{reference}: verification failed: {source}")]
    Digest {
        reference: String,
        source: DigestError,
    },
    #[error("{reference}: manifest digest is {actual}, but the reference pins {expected}")]
    ManifestDigest {
        reference: String,
        expected: String,
        actual: String,
    },
    #[error("{reference}: not found in registry {registry}")]
    NotFound { reference: String, registry: String },
    #[error("{reference}: registry {registry} refused the credentials (use --creds USER:PASS or docker login)")]
    Unauthorized { reference: String, registry: String },
    #[error("{what} from {registry}: {message} (after {attempts} attempts)")]
    Transfer {
        what: String,
        registry: String,
        message: String,
        attempts: u32,
    },
    #[error("cannot reach registry {registry}: over https: {https}; over http: {http}")]
    Unreachable {
        registry: String,
        https: String,
        http: String,
    },
    #[error("{what}: stalled, no data for {secs} s (after {attempts} attempts)")]
    Stalled {
        what: String,
        secs: u64,
        attempts: u32,
    },
    #[error("cannot write blob to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} is {size} bytes, more than the limit of {limit}")]
    TooLarge { what: String, size: u64, limit: u64 },
}

/// Error kinds as far as retrying goes.
enum Attempt {
    Transient(String),
    Stalled,
    Fatal(RegistryError),
}

/// A client for one repository.
pub struct RegistryClient {
    reference: Reference,
    image: oci_client::Reference,
    auth: RegistryAuth,
    /// HTTPS first; for loopback/insecure registries a plain-HTTP client second.
    clients: Vec<oci_client::Client>,
    chosen: AtomicUsize,
    opts: RegistryOptions,
}

const UNCHOSEN: usize = usize::MAX;

impl RegistryClient {
    /// Prepares a client for `reference`'s repository (no network traffic yet).
    pub fn new(
        reference: &Reference,
        opts: &RegistryOptions,
    ) -> Result<RegistryClient, RegistryError> {
        let mut certs = Vec::new();
        for path in &opts.ca_files {
            let data = std::fs::read(path).map_err(|source| RegistryError::Ca {
                path: path.clone(),
                source,
            })?;
            certs.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
        let listed = opts.insecure.iter().any(|h| h == &reference.registry);
        let fallback = listed || is_loopback_host(&reference.registry);
        let make = |protocol: ClientProtocol| {
            oci_client::Client::new(ClientConfig {
                protocol,
                extra_root_certificates: certs.clone(),
                accept_invalid_certificates: listed,
                platform_resolver: None,
                read_timeout: Some(opts.read_timeout),
                connect_timeout: Some(opts.connect_timeout),
                max_concurrent_download: opts.max_concurrent_downloads,
                user_agent: concat!("nsrun/", env!("CARGO_PKG_VERSION")),
                ..Default::default()
            })
        };
        let mut clients = vec![make(ClientProtocol::Https)];
        if fallback {
            // oci-client resolves docker.io to index.docker.io; the exception list takes what it resolves.
            clients.push(make(ClientProtocol::HttpsExcept(vec![reference
                .registry
                .clone()])));
        }
        let creds = match &opts.creds {
            Some(c) => auth::parse_creds(c)?,
            None => match opts
                .docker_config
                .clone()
                .or_else(auth::default_docker_config)
            {
                Some(path) => auth::from_docker_config(&path, &reference.registry)?,
                None => Credentials::Anonymous,
            },
        };
        let auth = match creds {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => RegistryAuth::Basic(username, password),
        };
        let image = match (&reference.tag, &reference.digest) {
            (_, Some(d)) => oci_client::Reference::with_digest(
                reference.registry.clone(),
                reference.repository.clone(),
                d.clone(),
            ),
            (Some(t), None) => oci_client::Reference::with_tag(
                reference.registry.clone(),
                reference.repository.clone(),
                t.clone(),
            ),
            (None, None) => unreachable!("Reference::parse always sets a tag or a digest"),
        };
        Ok(RegistryClient {
            reference: reference.clone(),
            image,
            auth,
            chosen: AtomicUsize::new(if clients.len() == 1 { 0 } else { UNCHOSEN }),
            clients,
            opts: opts.clone(),
        })
    }

    fn image_at(&self, digest: &str) -> oci_client::Reference {
        oci_client::Reference::with_digest(
            self.reference.registry.clone(),
            self.reference.repository.clone(),
            digest.to_string(),
        )
    }

    /// Fetches the manifest (or index) the reference names, or `digest` in its repository.
    /// Returns the bytes and their digest, verified against the digest asked for.
    pub async fn fetch_manifest(
        &self,
        digest: Option<&str>,
    ) -> Result<(Vec<u8>, String), RegistryError> {
        let image = match digest {
            Some(d) => self.image_at(d),
            None => self.image.clone(),
        };
        let what = format!("manifest {image}");
        let bytes = if self.chosen.load(Ordering::Relaxed) == UNCHOSEN {
            // Decide the protocol on the first request, as Docker does for insecure registries.
            match self
                .manifest_with_retries(&self.clients[0], &image, &what, 0)
                .await
            {
                Ok(b) => {
                    self.chosen.store(0, Ordering::Relaxed);
                    b
                }
                Err(https_err) if is_transport_error(&https_err) => {
                    match self
                        .manifest_with_retries(&self.clients[1], &image, &what, self.opts.retries)
                        .await
                    {
                        Ok(b) => {
                            self.chosen.store(1, Ordering::Relaxed);
                            b
                        }
                        Err(http_err) if is_transport_error(&http_err) => {
                            return Err(RegistryError::Unreachable {
                                registry: self.reference.registry.clone(),
                                https: https_err.to_string(),
                                http: http_err.to_string(),
                            })
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        } else {
            self.manifest_with_retries(self.client(), &image, &what, self.opts.retries)
                .await?
        };
        let actual = digest::sha256_digest(&bytes);
        if let Some(expected) = digest.or(self.reference.digest.as_deref()) {
            if actual != expected {
                return Err(RegistryError::ManifestDigest {
                    reference: image.to_string(),
                    expected: expected.to_string(),
                    actual,
                });
            }
        }
        Ok((bytes, actual))
    }

    fn client(&self) -> &oci_client::Client {
        let i = self.chosen.load(Ordering::Relaxed);
        &self.clients[if i == UNCHOSEN { 0 } else { i }]
    }

    async fn manifest_with_retries(
        &self,
        client: &oci_client::Client,
        image: &oci_client::Reference,
        what: &str,
        retries: u32,
    ) -> Result<Vec<u8>, RegistryError> {
        self.retrying(what, retries, || async {
            let r = tokio::time::timeout(
                self.opts.read_timeout + self.opts.connect_timeout,
                client.pull_manifest_raw(image, &self.auth, manifest::ACCEPTED_MANIFESTS),
            )
            .await;
            match r {
                Err(_) => Err(Attempt::Stalled),
                Ok(Ok((bytes, _))) => {
                    if bytes.len() > manifest::MAX_MANIFEST_BYTES {
                        return Err(Attempt::Fatal(RegistryError::Manifest {
                            reference: image.to_string(),
                            source: ManifestError::TooLarge(bytes.len()),
                        }));
                    }
                    Ok(bytes.to_vec())
                }
                Ok(Err(e)) => Err(self.classify(e, image)),
            }
        })
        .await
    }

    fn classify(&self, e: OciDistributionError, image: &oci_client::Reference) -> Attempt {
        use OciDistributionError as E;
        match e {
            E::ServerError { code, message, .. } if code >= 500 || code == 429 => {
                Attempt::Transient(format!("HTTP {code}: {}", message.trim()))
            }
            E::ServerError { code: 404, .. } | E::ImageManifestNotFoundError(_) => {
                Attempt::Fatal(RegistryError::NotFound {
                    reference: image.to_string(),
                    registry: self.reference.registry.clone(),
                })
            }
            E::RegistryError { ref envelope, .. }
                if envelope.errors.iter().any(|x| {
                    let c = format!("{:?}", x.code);
                    c.contains("Unknown") || c.contains("NameUnknown")
                }) =>
            {
                Attempt::Fatal(RegistryError::NotFound {
                    reference: image.to_string(),
                    registry: self.reference.registry.clone(),
                })
            }
            E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => {
                Attempt::Fatal(RegistryError::Unauthorized {
                    reference: image.to_string(),
                    registry: self.reference.registry.clone(),
                })
            }
            E::RequestError(ref re) if re.is_timeout() => Attempt::Stalled,
            E::RequestError(_) | E::IoError(_) => Attempt::Transient(error_chain(&e)),
            other => Attempt::Fatal(RegistryError::Transfer {
                what: image.to_string(),
                registry: self.reference.registry.clone(),
                message: error_chain(&other),
                attempts: 1,
            }),
        }
    }

    async fn retrying<T, F, Fut>(
        &self,
        what: &str,
        retries: u32,
        mut f: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Attempt>>,
    {
        let mut delay = self.opts.backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match f().await {
                Ok(v) => return Ok(v),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(last) if attempt > retries => {
                    return Err(match last {
                        Attempt::Stalled => RegistryError::Stalled {
                            what: what.to_string(),
                            secs: self.opts.read_timeout.as_secs(),
                            attempts: attempt,
                        },
                        Attempt::Transient(message) => RegistryError::Transfer {
                            what: what.to_string(),
                            registry: self.reference.registry.clone(),
                            message,
                            attempts: attempt,
                        },
                        Attempt::Fatal(e) => e,
                    })
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2).min(Duration::from_secs(8));
                }
            }
        }
    }

    /// Downloads a blob into `path` (created or truncated), verifying digest and size as it streams;
    /// `progress` counts bytes received in the current attempt.
    pub async fn download_blob(
        &self,
        desc: &Descriptor,
        path: &Path,
        progress: &AtomicU64,
    ) -> Result<(), RegistryError> {
        let what = format!("blob {}", desc.digest);
        Verifier::new(&desc.digest, Some(desc.size)).map_err(|source| RegistryError::Digest {
            reference: self.reference.to_string(),
            source,
        })?;
        self.retrying(&what, self.opts.retries, || async {
            progress.store(0, Ordering::Relaxed);
            let file = std::fs::File::create(path).map_err(|source| {
                Attempt::Fatal(RegistryError::Write {
                    path: path.to_path_buf(),
                    source,
                })
            })?;
            let mut out = std::io::BufWriter::with_capacity(256 * 1024, file);
            let mut sink = |chunk: &[u8]| {
                out.write_all(chunk).map_err(|source| {
                    Attempt::Fatal(RegistryError::Write {
                        path: path.to_path_buf(),
                        source,
                    })
                })?;
                progress.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                Ok(())
            };
            self.stream_blob(desc, &mut sink).await?;
            out.flush().map_err(|source| {
                Attempt::Fatal(RegistryError::Write {
                    path: path.to_path_buf(),
                    source,
                })
            })?;
            Ok(())
        })
        .await
    }

    /// Fetches a small blob (a config) into memory, verified, refusing more than `limit` bytes.
    pub async fn fetch_blob(
        &self,
        desc: &Descriptor,
        limit: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        if desc.size > limit {
            return Err(RegistryError::TooLarge {
                what: format!("blob {}", desc.digest),
                size: desc.size,
                limit,
            });
        }
        let what = format!("blob {}", desc.digest);
        self.retrying(&what, self.opts.retries, || async {
            let mut buf = Vec::with_capacity(desc.size as usize);
            let mut sink = |chunk: &[u8]| {
                buf.extend_from_slice(chunk);
                Ok(())
            };
            self.stream_blob(desc, &mut sink).await?;
            Ok(buf)
        })
        .await
    }

    async fn stream_blob(
        &self,
        desc: &Descriptor,
        sink: &mut (dyn FnMut(&[u8]) -> Result<(), Attempt> + Send),
    ) -> Result<(), Attempt> {
        let image = self.image_at(&desc.digest);
        let digest_err = |source| {
            Attempt::Fatal(RegistryError::Digest {
                reference: self.reference.to_string(),
                source,
            })
        };
        let mut verifier = Verifier::new(&desc.digest, Some(desc.size)).map_err(digest_err)?;
        let oci_desc = oci_client::manifest::OciDescriptor {
            media_type: desc.media_type.clone(),
            digest: desc.digest.clone(),
            size: desc.size as i64,
            ..Default::default()
        };
        let stall = self.opts.read_timeout;
        let client = self.client();
        let mut stream = match tokio::time::timeout(
            stall + self.opts.connect_timeout,
            client.pull_blob_stream(&image, &oci_desc),
        )
        .await
        {
            Err(_) => return Err(Attempt::Stalled),
            Ok(Err(e)) => return Err(self.classify(e, &image)),
            Ok(Ok(s)) => s,
        };
        if let Some(len) = stream.content_length {
            if len != desc.size {
                return Err(digest_err(DigestError::Size {
                    digest: desc.digest.clone(),
                    expected: desc.size,
                    actual: len,
                }));
            }
        }
        loop {
            match tokio::time::timeout(stall, stream.next()).await {
                Err(_) => return Err(Attempt::Stalled),
                Ok(None) => break,
                Ok(Some(Ok(chunk))) => {
                    verifier.update(&chunk).map_err(digest_err)?;
                    sink(&chunk)?;
                }
                Ok(Some(Err(e))) => {
                    // oci-client reports its own digest check as a stream error at the end; ours
                    // gives the typed reason when all bytes arrived.
                    if verifier.seen() == desc.size {
                        verifier.clone().finish().map_err(digest_err)?;
                    }
                    let chain = error_chain(&e);
                    // reqwest's read timeout surfaces as a body error; call it what it is.
                    if chain.contains("timed out") {
                        return Err(Attempt::Stalled);
                    }
                    return Err(Attempt::Transient(format!(
                        "body ended after {} of {} bytes: {chain}",
                        verifier.seen(),
                        desc.size
                    )));
                }
            }
        }
        if verifier.seen() < desc.size {
            return Err(Attempt::Transient(format!(
                "body ended after {} of {} bytes",
                verifier.seen(),
                desc.size
            )));
        }
        verifier.finish().map_err(digest_err)
    }
}

fn is_transport_error(e: &RegistryError) -> bool {
    matches!(
        e,
        RegistryError::Transfer { .. } | RegistryError::Stalled { .. }
    )
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Shared byte counters for a progress display.
pub type Progress = Arc<Vec<(String, u64, AtomicU64)>>;
