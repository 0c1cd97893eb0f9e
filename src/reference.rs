//! Image references: parsing and Docker's normalisation.
//!
//! `alpine` becomes `docker.io/library/alpine:latest`, `user/tool` becomes
//! `docker.io/user/tool:latest`, and a first component that looks like a host (it contains a `.` or
//! a `:`, or is `localhost`) names the registry. A reference may carry a tag, a digest or both; when
//! it has a digest the digest wins, as in Docker.
//!
//! Besides registry references, two registry-free sources are accepted wherever a reference is:
//! `oci:DIR[:TAG]` (an OCI image layout directory) and `docker-archive:FILE` (a `docker save`
//! tarball). See [`Source`].

use std::fmt;
use std::path::PathBuf;

/// The registry Docker uses when a reference names none.
pub const DOCKER_HUB: &str = "docker.io";
const DEFAULT_TAG: &str = "latest";

/// Why a reference was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("invalid image reference {0:?}: empty")]
    Empty(String),
    #[error("invalid image reference {reference:?}: repository path component {component:?} must be lowercase letters, digits and separators (., _, __, -)")]
    BadComponent {
        reference: String,
        component: String,
    },
    #[error("invalid image reference {reference:?}: tag {tag:?} must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")]
    BadTag { reference: String, tag: String },
    #[error("invalid image reference {reference:?}: digest {digest:?} must be sha256:<64 hex> or sha512:<128 hex>")]
    BadDigest { reference: String, digest: String },
    #[error(
        "invalid image reference {reference:?}: registry {registry:?} is not a valid host[:port]"
    )]
    BadRegistry { reference: String, registry: String },
    #[error("invalid image reference {0:?}: longer than 255 characters")]
    TooLong(String),
    #[error("invalid image source {0:?}: the path after the transport is empty")]
    EmptySourcePath(String),
}

/// A normalised registry reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host and optional port, e.g. `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/alpine`.
    pub repository: String,
    /// Tag; `None` only when the reference has a digest and no tag.
    pub tag: Option<String>,
    /// Content digest (`sha256:…`), when pinned.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses and normalises a registry reference.
    ///
    /// ```
    /// use nsrun::reference::Reference;
    /// let r = Reference::parse("alpine").unwrap();
    /// assert_eq!(r.to_string(), "docker.io/library/alpine:latest");
    /// let r = Reference::parse("127.0.0.1:5000/tools/dnsx:1.2").unwrap();
    /// assert_eq!(r.registry, "127.0.0.1:5000");
    /// assert_eq!(r.repository, "tools/dnsx");
    /// ```
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty(input.to_string()));
        }
        if input.len() > 255 + 72 {
            return Err(ReferenceError::TooLong(input.to_string()));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) => {
                validate_digest(d).map_err(|()| ReferenceError::BadDigest {
                    reference: input.to_string(),
                    digest: d.to_string(),
                })?;
                (r, Some(d.to_string()))
            }
            None => (input, None),
        };
        // A tag follows the last ':' that comes after the last '/' (a ':' before it is a port).
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let t = &rest[last_slash + i + 1..];
                if !valid_tag(t) {
                    return Err(ReferenceError::BadTag {
                        reference: input.to_string(),
                        tag: t.to_string(),
                    });
                }
                (&rest[..last_slash + i], Some(t.to_string()))
            }
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(ReferenceError::Empty(input.to_string()));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                if !valid_registry(first) {
                    return Err(ReferenceError::BadRegistry {
                        reference: input.to_string(),
                        registry: first.to_string(),
                    });
                }
                (first.to_string(), remainder.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            _ => registry,
        };
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if repository.len() > 255 {
            return Err(ReferenceError::TooLong(input.to_string()));
        }
        for component in repository.split('/') {
            if !valid_component(component) {
                return Err(ReferenceError::BadComponent {
                    reference: input.to_string(),
                    component: component.to_string(),
                });
            }
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            _ => tag,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// True for registries Docker talks plain HTTP to without being told: `localhost` and
    /// 127.0.0.0/8 (and `::1`).
    pub fn is_loopback_registry(&self) -> bool {
        is_loopback_host(&self.registry)
    }

    /// The same reference pinned to `digest` (tag dropped).
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest.to_string()),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A registry reference.
    Registry(Reference),
    /// An OCI image layout directory and an optional tag (`org.opencontainers.image.ref.name`).
    OciLayout { dir: PathBuf, tag: Option<String> },
    /// A `docker save` tarball.
    DockerArchive { file: PathBuf },
}

impl Source {
    /// Parses a reference or a transport-prefixed source.
    ///
    /// `oci:` and `docker-archive:` are always read as transports, as skopeo does; a registry host
    /// literally named `oci` needs its fully qualified name.
    ///
    /// ```
    /// use nsrun::reference::Source;
    /// assert!(matches!(Source::parse("oci:/srv/img:v1").unwrap(), Source::OciLayout { .. }));
    /// assert!(matches!(Source::parse("busybox").unwrap(), Source::Registry(_)));
    /// ```
    pub fn parse(input: &str) -> Result<Source, ReferenceError> {
        if let Some(rest) = input.strip_prefix("oci:") {
            // DIR[:TAG]: the tag is what follows the last ':' if it has no '/'.
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((d, t)) if !t.contains('/') && !d.is_empty() => {
                    (d.to_string(), Some(t.to_string()))
                }
                _ => (rest.to_string(), None),
            };
            if dir.is_empty() {
                return Err(ReferenceError::EmptySourcePath(input.to_string()));
            }
            return Ok(Source::OciLayout {
                dir: PathBuf::from(dir),
                tag: tag.filter(|t| !t.is_empty()),
            });
        }
        if let Some(rest) = input.strip_prefix("docker-archive:") {
            if rest.is_empty() {
                return Err(ReferenceError::EmptySourcePath(input.to_string()));
            }
            return Ok(Source::DockerArchive {
                file: PathBuf::from(rest),
            });
        }
        Reference::parse(input).map(Source::Registry)
    }

    /// A stable, normalised name for the refs index and for display. Local paths are made
    /// absolute so that the same directory is the same key from any working directory.
    pub fn canonical(&self) -> String {
        match self {
            Source::Registry(r) => r.to_string(),
            Source::OciLayout { dir, tag } => {
                let d = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
                match tag {
                    Some(t) => format!("oci:{}:{t}", d.display()),
                    None => format!("oci:{}", d.display()),
                }
            }
            Source::DockerArchive { file } => {
                let f = std::path::absolute(file).unwrap_or_else(|_| file.clone());
                format!("docker-archive:{}", f.display())
            }
        }
    }
}

/// True for `localhost`, 127.0.0.0/8 and `::1`, with or without a port.
pub fn is_loopback_host(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(registry)
    };
    if host == "localhost" {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => false,
    }
}

fn validate_digest(d: &str) -> Result<(), ()> {
    let (algo, hex) = d.split_once(':').ok_or(())?;
    let want = match algo {
        "sha256" => 64,
        "sha512" => 128,
        _ => return Err(()),
    };
    if hex.len() == want && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(())
    }
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn valid_registry(r: &str) -> bool {
    let (host, port) = if let Some(rest) = r.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => return false,
        }
    } else {
        match r.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (r, None),
        }
    };
    if let Some(p) = port {
        if p.parse::<u16>().is_err() {
            return false;
        }
    }
    !host.is_empty()
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        Reference::parse(s).unwrap().to_string()
    }

    #[test]
    fn docker_normalisation() {
        assert_eq!(n("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(n("alpine:3.19"), "docker.io/library/alpine:3.19");
        assert_eq!(n("user/tool"), "docker.io/user/tool:latest");
        assert_eq!(n("docker.io/alpine"), "docker.io/library/alpine:latest");
        assert_eq!(
            n("index.docker.io/library/alpine"),
            "docker.io/library/alpine:latest"
        );
        assert_eq!(n("localhost/x"), "localhost/x:latest");
        assert_eq!(n("localhost:5000/x:1"), "localhost:5000/x:1");
        assert_eq!(
            n("127.0.0.1:5000/tools/dnsx:1.2"),
            "127.0.0.1:5000/tools/dnsx:1.2"
        );
        assert_eq!(n("ghcr.io/a/b/c:v1.0-rc_1"), "ghcr.io/a/b/c:v1.0-rc_1");
    }

    #[test]
    fn digests() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("alpine@{d}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(r.to_string(), format!("docker.io/library/alpine@{d}"));
        let r = Reference::parse(&format!("alpine:3@{d}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("3"));
        assert!(Reference::parse("alpine@sha256:abc").is_err());
        assert!(Reference::parse(&format!("alpine@md5:{}", "a".repeat(32))).is_err());
        assert!(Reference::parse(&format!("alpine@sha256:{}", "A".repeat(64))).is_err());
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "",
            "Alpine",
            "a//b",
            "a/",
            "/a",
            "a:",
            "a:-x",
            "a..b",
            "-a",
            "a_",
            "host:notaport/x",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Reference::parse("a__b/c-d---e.f").is_ok());
    }

    #[test]
    fn loopback() {
        assert!(Reference::parse("127.0.0.1:5000/a")
            .unwrap()
            .is_loopback_registry());
        assert!(Reference::parse("127.5.0.1/a")
            .unwrap()
            .is_loopback_registry());
        assert!(Reference::parse("localhost:1/a")
            .unwrap()
            .is_loopback_registry());
        assert!(Reference::parse("[::1]:5000/a")
            .unwrap()
            .is_loopback_registry());
        assert!(!Reference::parse("128.0.0.1/a")
            .unwrap()
            .is_loopback_registry());
        assert!(!Reference::parse("alpine").unwrap().is_loopback_registry());
    }

    #[test]
    fn sources() {
        assert_eq!(
            Source::parse("oci:/srv/img:v1").unwrap(),
            Source::OciLayout {
                dir: "/srv/img".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            Source::parse("oci:rel/dir").unwrap(),
            Source::OciLayout {
                dir: "rel/dir".into(),
                tag: None
            }
        );
        assert_eq!(
            Source::parse("docker-archive:/x.tar").unwrap(),
            Source::DockerArchive {
                file: "/x.tar".into()
            }
        );
        assert!(Source::parse("oci:").is_err());
        assert!(Source::parse("docker-archive:").is_err());
    }
}
