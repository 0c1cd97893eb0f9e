//! Registry credentials: `--creds`, then `~/.docker/config.json` (`auths`, `credHelpers`,
//! `credsStore`), then anonymous. The bearer-token dance itself is oci-client's.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use serde::Deserialize;

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Anonymous,
    Basic { username: String, password: String },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => write!(f, "Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
        }
    }
}

/// Why credentials could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("--creds must be USER:PASS")]
    BadCreds,
    #[error("cannot read docker config {path}: {source}")]
    ReadConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("docker config {path} is not valid JSON: {source}")]
    ParseConfig {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("docker config {path}: auth for {registry} is not base64 of USER:PASS")]
    BadAuth { path: PathBuf, registry: String },
    #[error("credential helper docker-credential-{helper} for {registry} failed: {why}")]
    Helper {
        helper: String,
        registry: String,
        why: String,
    },
}

/// Parses `USER:PASS`.
pub fn parse_creds(s: &str) -> Result<Credentials, AuthError> {
    match s.split_once(':') {
        Some((u, p)) if !u.is_empty() => Ok(Credentials::Basic {
            username: u.to_string(),
            password: p.to_string(),
        }),
        _ => Err(AuthError::BadCreds),
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default)]
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: HashMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The docker config file to read: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
pub fn default_docker_config() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(Path::new(&d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker/config.json"))
}

/// The keys a registry may be filed under in `auths`/`credHelpers`, and the server URL to give a
/// helper (Docker Hub is filed under its v1 index URL for historical reasons).
fn keys_for(registry: &str) -> (Vec<String>, String) {
    if registry == "docker.io" {
        let url = "https://index.docker.io/v1/".to_string();
        (
            vec![
                url.clone(),
                "index.docker.io".into(),
                "docker.io".into(),
                "registry-1.docker.io".into(),
                "https://index.docker.io/v1".into(),
            ],
            url,
        )
    } else {
        (
            vec![
                registry.to_string(),
                format!("https://{registry}"),
                format!("http://{registry}"),
                format!("https://{registry}/v2/"),
            ],
            registry.to_string(),
        )
    }
}

/// Looks `registry` up in the docker config at `path` (absent file: anonymous).
pub fn from_docker_config(path: &Path, registry: &str) -> Result<Credentials, AuthError> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Credentials::Anonymous),
        Err(source) => {
            return Err(AuthError::ReadConfig {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let cfg: DockerConfig =
        serde_json::from_slice(&data).map_err(|source| AuthError::ParseConfig {
            path: path.to_path_buf(),
            source,
        })?;
    let (keys, server_url) = keys_for(registry);
    for k in &keys {
        if let Some(helper) = cfg.cred_helpers.get(k) {
            return run_helper(helper, &server_url, registry);
        }
    }
    for k in &keys {
        if let Some(e) = cfg.auths.get(k) {
            if let Some(a) = &e.auth {
                if a.is_empty() {
                    continue;
                }
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(a.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| AuthError::BadAuth {
                        path: path.to_path_buf(),
                        registry: registry.to_string(),
                    })?;
                return parse_creds(&decoded).map_err(|_| AuthError::BadAuth {
                    path: path.to_path_buf(),
                    registry: registry.to_string(),
                });
            }
            if let (Some(u), Some(p)) = (&e.username, &e.password) {
                return Ok(Credentials::Basic {
                    username: u.clone(),
                    password: p.clone(),
                });
            }
        }
    }
    if let Some(store) = &cfg.creds_store {
        return match run_helper(store, &server_url, registry) {
            Ok(c) => Ok(c),
            // A store that has nothing for this registry means anonymous, as in Docker.
            Err(AuthError::Helper { why, .. }) if why.contains("credentials not found") => {
                Ok(Credentials::Anonymous)
            }
            Err(e) => Err(e),
        };
    }
    Ok(Credentials::Anonymous)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperReply {
    username: String,
    secret: String,
}

fn run_helper(helper: &str, server_url: &str, registry: &str) -> Result<Credentials, AuthError> {
    let err = |why: String| AuthError::Helper {
        helper: helper.to_string(),
        registry: registry.to_string(),
        why,
    };
    if helper.is_empty() || helper.contains('/') {
        return Err(err("helper name must be a plain name".into()));
    }
    run_program(
        Path::new(&format!("docker-credential-{helper}")),
        server_url,
        err,
    )
}

fn run_program(
    program: &Path,
    server_url: &str,
    err: impl Fn(String) -> AuthError,
) -> Result<Credentials, AuthError> {
    let mut child = Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot start it: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server_url.as_bytes())
            .map_err(|e| err(format!("writing its stdin: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| err(format!("waiting for it: {e}")))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).trim().to_string()
            + String::from_utf8_lossy(&out.stderr).trim();
        return Err(err(format!("{}: {msg}", out.status)));
    }
    let reply: HelperReply =
        serde_json::from_slice(&out.stdout).map_err(|e| err(format!("bad reply: {e}")))?;
    Ok(Credentials::Basic {
        username: reply.username,
        password: reply.secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_auths() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        let b64 = base64::engine::general_purpose::STANDARD.encode("bob:s3cret");
        std::fs::write(
            &p,
            format!(r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{b64}"}},"127.0.0.1:5001":{{"auth":"{b64}"}}}}}}"#),
        )
        .unwrap();
        let want = Credentials::Basic {
            username: "bob".into(),
            password: "s3cret".into(),
        };
        assert_eq!(from_docker_config(&p, "docker.io").unwrap(), want);
        assert_eq!(from_docker_config(&p, "127.0.0.1:5001").unwrap(), want);
        assert_eq!(
            from_docker_config(&p, "ghcr.io").unwrap(),
            Credentials::Anonymous
        );
        assert_eq!(
            from_docker_config(&dir.path().join("none"), "ghcr.io").unwrap(),
            Credentials::Anonymous
        );
        assert!(parse_creds("nocolon").is_err());
    }

    #[test]
    fn cred_helper() {
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-nsruntest");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread url\necho \"{\\\"ServerURL\\\":\\\"$url\\\",\\\"Username\\\":\\\"u-$url\\\",\\\"Secret\\\":\\\"p\\\"}\"\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = run_program(&helper, "reg.example", |w| AuthError::Helper {
            helper: "nsruntest".into(),
            registry: "reg.example".into(),
            why: w,
        })
        .unwrap();
        assert_eq!(
            c,
            Credentials::Basic {
                username: "u-reg.example".into(),
                password: "p".into()
            }
        );
        let p = dir.path().join("config.json");
        std::fs::write(
            &p,
            r#"{"credHelpers":{"reg.example":"nsrun-no-such-helper"}}"#,
        )
        .unwrap();
        let e = from_docker_config(&p, "reg.example")
            .unwrap_err()
            .to_string();
        assert!(e.contains("docker-credential-nsrun-no-such-helper"), "{e}");
    }
}
