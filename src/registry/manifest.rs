//! Manifests, indexes and image configs (OCI and Docker schema 2), and platform choice.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Media types we ask registries for, most preferred first.
pub const ACCEPTED_MANIFESTS: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// Largest manifest or index we accept (Docker and containerd use 4 MiB as well).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Largest image config we accept.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Why a manifest, index or config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(serde_json::Error),
    #[error("manifest has unsupported media type {0:?} (want an OCI or Docker schema 2 image manifest or index)")]
    MediaType(String),
    #[error("manifest has schemaVersion {0}, only 2 is supported")]
    SchemaVersion(u32),
    #[error("manifest is {0} bytes, more than the {MAX_MANIFEST_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("no image for platform {wanted} in the index (available: {available})")]
    NoPlatform { wanted: String, available: String },
    #[error(
        "layer {digest} has media type {media_type:?}, which is not a container filesystem layer"
    )]
    LayerType { digest: String, media_type: String },
    #[error("invalid platform {0:?}: expected os/arch[/variant]")]
    BadPlatform(String),
    #[error("image config is not valid JSON: {0}")]
    Config(serde_json::Error),
    #[error("image config is {0} bytes, more than the limit of {MAX_CONFIG_BYTES}")]
    ConfigTooLarge(u64),
}

/// A content descriptor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// os/arch/variant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`, normalising architecture aliases (`x86_64` → `amd64`,
    /// `aarch64` → `arm64`).
    pub fn parse(s: &str) -> Result<Platform, ManifestError> {
        let parts: Vec<&str> = s.split('/').collect();
        if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty()) {
            return Err(ManifestError::BadPlatform(s.to_string()));
        }
        Ok(Platform {
            os: parts[0].to_ascii_lowercase(),
            architecture: normalise_arch(parts[1]),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }

    /// The platform this binary runs on.
    pub fn host() -> Platform {
        let arch = normalise_arch(std::env::consts::ARCH);
        let variant = match arch.as_str() {
            "arm64" => Some("v8".to_string()),
            "arm" => Some("v7".to_string()),
            _ => None,
        };
        Platform {
            os: "linux".to_string(),
            architecture: arch,
            variant,
        }
    }

    /// How well an index entry fits this (wanted) platform: `None` when it does not, higher is better.
    fn score(&self, candidate: &Platform) -> Option<u8> {
        if candidate.os != self.os || normalise_arch(&candidate.architecture) != self.architecture {
            return None;
        }
        let default_variant = |arch: &str| match arch {
            "arm64" => Some("v8"),
            _ => None,
        };
        let cv = candidate
            .variant
            .as_deref()
            .or(default_variant(&self.architecture));
        let wv = self
            .variant
            .as_deref()
            .or(default_variant(&self.architecture));
        match (wv, cv) {
            (Some(w), Some(c)) if w == c => Some(2),
            (Some(_), Some(_)) => None,
            (None, None) => Some(2),
            _ => Some(1),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

fn normalise_arch(a: &str) -> String {
    match a {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        "i386" | "i686" | "x86" => "386",
        "armhf" | "armel" => "arm",
        other => other,
    }
    .to_string()
}

/// A manifest document: either an image manifest or an index.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDoc {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// A parsed manifest.
#[derive(Debug, Clone)]
pub enum Document {
    Index(Vec<Descriptor>),
    Image(ImageManifest),
}

/// An image manifest: its config and layers, bottom first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageManifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// Parses a manifest or index, using the `Content-Type` when the document does not say.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Document, ManifestError> {
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge(bytes.len()));
    }
    let doc: RawDoc = serde_json::from_slice(bytes).map_err(ManifestError::Json)?;
    if doc.schema_version != 2 {
        return Err(ManifestError::SchemaVersion(doc.schema_version));
    }
    let mt = doc
        .media_type
        .clone()
        .or_else(|| content_type.map(str::to_string));
    match (mt.as_deref(), doc.manifests, doc.config, doc.layers) {
        (Some(OCI_INDEX | DOCKER_LIST) | None, Some(m), _, _) => Ok(Document::Index(m)),
        (Some(OCI_MANIFEST | DOCKER_MANIFEST) | None, None, Some(config), Some(layers)) => {
            for l in &layers {
                if !is_layer_type(&l.media_type) {
                    return Err(ManifestError::LayerType {
                        digest: l.digest.clone(),
                        media_type: l.media_type.clone(),
                    });
                }
            }
            Ok(Document::Image(ImageManifest { config, layers }))
        }
        (other, ..) => Err(ManifestError::MediaType(other.unwrap_or("").to_string())),
    }
}

fn is_layer_type(mt: &str) -> bool {
    matches!(
        mt,
        OCI_LAYER_TAR
            | OCI_LAYER_GZIP
            | OCI_LAYER_ZSTD
            | DOCKER_LAYER_GZIP
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | ""
    )
}

/// Picks the best entry of an index for `wanted`.
pub fn choose_platform<'a>(
    entries: &'a [Descriptor],
    wanted: &Platform,
) -> Result<&'a Descriptor, ManifestError> {
    entries
        .iter()
        .filter_map(|d| {
            let p = d.platform.as_ref()?;
            wanted.score(p).map(|s| (s, d))
        })
        .max_by_key(|(s, _)| *s)
        .map(|(_, d)| d)
        .ok_or_else(|| ManifestError::NoPlatform {
            wanted: wanted.to_string(),
            available: entries
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .filter(|p| p.os != "unknown")
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// What the sandbox needs from an image config, as Docker reads it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageConfig {
    /// `None` when the image sets none (different from an explicit empty list).
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
    pub created: Option<String>,
    pub os: Option<String>,
    pub architecture: Option<String>,
    pub variant: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawConfigFile {
    #[serde(default)]
    config: Option<RawRunConfig>,
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawRunConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    stop_signal: Option<String>,
}

impl ImageConfig {
    /// Reads the parts of an OCI/Docker image config that matter for running it.
    pub fn parse(bytes: &[u8]) -> Result<ImageConfig, ManifestError> {
        let raw: RawConfigFile = serde_json::from_slice(bytes).map_err(ManifestError::Config)?;
        let c = raw.config.unwrap_or_default();
        Ok(ImageConfig {
            entrypoint: c.entrypoint,
            cmd: c.cmd,
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.filter(|w| !w.is_empty()),
            user: c.user.filter(|u| !u.is_empty()),
            labels: c.labels.unwrap_or_default(),
            stop_signal: c.stop_signal,
            created: raw.created,
            os: raw.os,
            architecture: raw.architecture,
            variant: raw.variant,
        })
    }
}

impl ImageConfig {
    /// The command line Docker would run: `entrypoint` (`--entrypoint`; `Some(&[])` clears the
    /// image's) followed by `args`, or by the image's Cmd when `args` is empty and the entrypoint
    /// was not overridden (Docker drops the image's Cmd when `--entrypoint` is given).
    ///
    /// ```
    /// use nsrun::registry::manifest::ImageConfig;
    /// let c = ImageConfig {
    ///     entrypoint: Some(vec!["/bin/tool".into()]),
    ///     cmd: Some(vec!["--help".into()]),
    ///     ..Default::default()
    /// };
    /// assert_eq!(c.argv(None, &[]), ["/bin/tool", "--help"]);
    /// assert_eq!(c.argv(None, &["-v".into()]), ["/bin/tool", "-v"]);
    /// assert_eq!(c.argv(Some(&["/bin/sh".into()]), &[]), ["/bin/sh"]);
    /// ```
    pub fn argv(&self, entrypoint: Option<&[String]>, args: &[String]) -> Vec<String> {
        let (ep, cmd): (Vec<String>, Vec<String>) = match entrypoint {
            Some(ep) => (ep.to_vec(), args.to_vec()),
            None => (
                self.entrypoint.clone().unwrap_or_default(),
                if args.is_empty() {
                    self.cmd.clone().unwrap_or_default()
                } else {
                    args.to_vec()
                },
            ),
        };
        ep.into_iter().chain(cmd).collect()
    }

    /// The image's Env with `overrides` (`KEY=VALUE`) applied by key, as `docker run -e` does.
    pub fn env_with(&self, overrides: &[String]) -> Vec<String> {
        let key = |kv: &str| kv.split('=').next().unwrap_or("").to_string();
        let mut out: Vec<String> = self.env.clone();
        for o in overrides {
            let k = key(o);
            match out.iter_mut().find(|e| key(e) == k) {
                Some(e) => *e = o.clone(),
                None => out.push(o.clone()),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(os: &str, arch: &str, variant: Option<&str>, d: char) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{}", d.to_string().repeat(64)),
            size: 1,
            platform: Some(Platform {
                os: os.into(),
                architecture: arch.into(),
                variant: variant.map(Into::into),
            }),
            annotations: None,
        }
    }

    #[test]
    fn platform_choice() {
        let idx = vec![
            entry("linux", "amd64", None, 'a'),
            entry("linux", "arm64", Some("v8"), 'b'),
            entry("linux", "arm", Some("v7"), 'c'),
            entry("linux", "arm", Some("v6"), 'd'),
            entry("unknown", "unknown", None, 'e'),
        ];
        let pick = |s: &str| {
            choose_platform(&idx, &Platform::parse(s).unwrap())
                .map(|d| d.digest.chars().nth(7).unwrap())
        };
        assert_eq!(pick("linux/amd64").unwrap(), 'a');
        assert_eq!(pick("linux/x86_64").unwrap(), 'a');
        assert_eq!(pick("linux/arm64").unwrap(), 'b');
        assert_eq!(pick("linux/arm64/v8").unwrap(), 'b');
        assert_eq!(pick("linux/arm/v6").unwrap(), 'd');
        let err = pick("linux/s390x").unwrap_err().to_string();
        assert!(
            err.contains("linux/amd64") && !err.contains("unknown"),
            "{err}"
        );
        assert!(Platform::parse("linux").is_err());
    }

    #[test]
    fn parses_docker_and_oci() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"{DOCKER_CONFIG}","digest":"sha256:{}","size":3}},"layers":[{{"mediaType":"{DOCKER_LAYER_GZIP}","digest":"sha256:{}","size":4}}]}}"#,
            "1".repeat(64),
            "2".repeat(64)
        );
        assert!(matches!(
            parse(m.as_bytes(), None).unwrap(),
            Document::Image(_)
        ));
        let bad = m.replace(
            DOCKER_LAYER_GZIP,
            "application/vnd.wasm.content.layer.v1+wasm",
        );
        assert!(matches!(
            parse(bad.as_bytes(), None),
            Err(ManifestError::LayerType { .. })
        ));
        let i = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            parse(i.as_bytes(), Some(OCI_INDEX)).unwrap(),
            Document::Index(_)
        ));
        assert!(parse(&vec![b' '; MAX_MANIFEST_BYTES + 1], None).is_err());
    }

    #[test]
    fn docker_command_and_env_rules() {
        let c = ImageConfig {
            entrypoint: None,
            cmd: Some(vec!["sh".into(), "-c".into(), "echo".into()]),
            env: vec!["PATH=/bin".into(), "A=1".into()],
            ..Default::default()
        };
        assert_eq!(c.argv(None, &[]), ["sh", "-c", "echo"]);
        assert_eq!(c.argv(None, &["ls".into()]), ["ls"]);
        assert_eq!(c.argv(Some(&[]), &["ls".into()]), ["ls"]);
        assert!(ImageConfig::default().argv(None, &[]).is_empty());
        assert_eq!(
            c.env_with(&["A=2".into(), "B=3".into()]),
            ["PATH=/bin", "A=2", "B=3"]
        );
    }

    #[test]
    fn config() {
        let c = ImageConfig::parse(br#"{"config":{"Entrypoint":["/bin/sh"],"Env":["A=1"],"WorkingDir":"/w","User":""},"created":"2024-01-01T00:00:00Z"}"#).unwrap();
        assert_eq!(c.entrypoint, Some(vec!["/bin/sh".to_string()]));
        assert_eq!(c.cmd, None);
        assert_eq!(c.user, None);
        assert_eq!(c.working_dir.as_deref(), Some("/w"));
    }
}
