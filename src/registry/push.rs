//! Pushing images and indexes: what the tests and `examples/push_rootfs` use to publish fixtures.
//! Manifests are pushed as raw bytes, so any media type (OCI or Docker schema 2) can be published
//! exactly as built.

use oci_client::RegistryOperation;

use super::digest::sha256_digest;
use super::{RegistryClient, RegistryError};

/// A blob to push: bytes and media type.
pub type Blob = (Vec<u8>, String);

impl RegistryClient {
    /// Picks the protocol (HTTPS, else plain HTTP for loopback/insecure registries) and
    /// authenticates for pushing.
    async fn push_client(&self) -> Result<&oci_client::Client, RegistryError> {
        let mut errors = Vec::new();
        for (i, client) in self.clients.iter().enumerate() {
            match client
                .auth(&self.image, &self.auth, RegistryOperation::Push)
                .await
            {
                Ok(_) => {
                    self.chosen.store(i, std::sync::atomic::Ordering::Relaxed);
                    return Ok(client);
                }
                Err(e) => errors.push(super::error_chain(&e)),
            }
        }
        Err(RegistryError::Transfer {
            what: format!("push to {}", self.reference),
            registry: self.reference.registry.clone(),
            message: errors.join("; then: "),
            attempts: self.clients.len() as u32,
        })
    }

    fn push_err(&self, what: &str, e: oci_client::errors::OciDistributionError) -> RegistryError {
        RegistryError::Transfer {
            what: what.to_string(),
            registry: self.reference.registry.clone(),
            message: super::error_chain(&e),
            attempts: 1,
        }
    }

    /// Uploads blobs that the registry does not have yet.
    pub async fn push_blobs(&self, blobs: &[&[u8]]) -> Result<(), RegistryError> {
        let client = self.push_client().await?;
        for b in blobs {
            let digest = sha256_digest(b);
            let exists = client
                .blob_exists(&self.image, &digest)
                .await
                .unwrap_or(false);
            if !exists {
                client
                    .push_blob(&self.image, b.to_vec(), &digest)
                    .await
                    .map_err(|e| self.push_err(&format!("push blob {digest}"), e))?;
            }
        }
        Ok(())
    }

    /// Pushes a manifest (image or index) as given, under the reference's tag (or digest).
    /// Returns its digest.
    pub async fn push_manifest_bytes(
        &self,
        body: &[u8],
        media_type: &str,
    ) -> Result<String, RegistryError> {
        let client = self.push_client().await?;
        let ct = http::HeaderValue::from_str(media_type).map_err(|_| RegistryError::Transfer {
            what: "push manifest".into(),
            registry: self.reference.registry.clone(),
            message: format!("media type {media_type:?} is not a valid header value"),
            attempts: 0,
        })?;
        client
            .push_manifest_raw(&self.image, body.to_vec(), ct)
            .await
            .map_err(|e| self.push_err(&format!("push manifest {}", self.reference), e))?;
        Ok(sha256_digest(body))
    }

    /// Pushes layers and config, then builds and pushes the image manifest (OCI media types, or
    /// Docker schema 2 when `docker`). Returns the manifest digest.
    pub async fn push_image(
        &self,
        layers: &[Blob],
        config: &[u8],
        docker: bool,
    ) -> Result<String, RegistryError> {
        let mut all: Vec<&[u8]> = layers.iter().map(|(b, _)| b.as_slice()).collect();
        all.push(config);
        self.push_blobs(&all).await?;
        let (mt, cmt) = if docker {
            (
                super::manifest::DOCKER_MANIFEST,
                super::manifest::DOCKER_CONFIG,
            )
        } else {
            (super::manifest::OCI_MANIFEST, super::manifest::OCI_CONFIG)
        };
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": mt,
            "config": {"mediaType": cmt, "digest": sha256_digest(config), "size": config.len()},
            "layers": layers.iter().map(|(b, m)| serde_json::json!({
                "mediaType": m, "digest": sha256_digest(b), "size": b.len(),
            })).collect::<Vec<_>>(),
        }))
        .expect("manifest serialises");
        self.push_manifest_bytes(&manifest, mt).await
    }
}
