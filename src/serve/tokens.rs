//! The tokens file: tenants, the SHA-256 of their bearer tokens, and their policies; and the
//! lookup of a presented token in constant time.
//!
//! The file is JSON (docs/serve-api.md), mode 0600, rewritten atomically (a temporary file in
//! the same directory, fsync, rename) under an exclusive lock on `FILE.lock`, so that two
//! `nsrun token` commands never lose each other's change and a server reading it on SIGHUP
//! never sees half a file.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::policy::Policy;

/// Prefix of every token, so that a leaked one is easy to recognise (and to scan for).
pub const TOKEN_PREFIX: &str = "nsr_";

/// A problem with the tokens file or a token command; the message names the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TokenError(pub String);

/// The tokens file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    pub tenants: Vec<TenantEntry>,
}

/// One tenant: its name, the SHA-256 (hex) of its token, and its policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantEntry {
    pub tenant: String,
    pub token_sha256: String,
    pub created: String,
    #[serde(default)]
    pub policy: Policy,
}

/// A tenant as the server knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    pub name: String,
    pub policy: Policy,
}

/// Checks a tenant name: 1 to 64 of `[A-Za-z0-9_.-]`.
pub fn check_tenant_name(name: &str) -> Result<(), TokenError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(TokenError(format!(
            "invalid tenant name {name:?}: use 1 to 64 letters, digits, '_', '.' or '-'"
        )));
    }
    Ok(())
}

/// `n` random bytes from the kernel.
pub fn random_bytes(n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

/// A new token: `nsr_` and 32 random bytes in unpadded base64url (43 characters).
pub fn new_token() -> Result<String, TokenError> {
    let b = random_bytes(32).map_err(|e| TokenError(format!("/dev/urandom: {e}")))?;
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    ))
}

/// SHA-256 of a token, as stored in the file.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokensFile {
    /// Reads and checks `path` (a missing file is an error: the server needs tenants).
    pub fn load(path: &Path) -> Result<TokensFile, TokenError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TokenError(format!("tokens file {}: {e}", path.display())))?;
        let f: TokensFile = serde_json::from_str(&text)
            .map_err(|e| TokenError(format!("tokens file {}: {e}", path.display())))?;
        f.check()
            .map_err(|e| TokenError(format!("tokens file {}: {}", path.display(), e.0)))?;
        Ok(f)
    }

    /// Reads `path`, or an empty file's contents when it does not exist.
    fn load_or_empty(path: &Path) -> Result<TokensFile, TokenError> {
        if path.exists() {
            TokensFile::load(path)
        } else {
            Ok(TokensFile::default())
        }
    }

    fn check(&self) -> Result<(), TokenError> {
        let mut seen = std::collections::HashSet::new();
        for t in &self.tenants {
            check_tenant_name(&t.tenant)?;
            if !seen.insert(t.tenant.as_str()) {
                return Err(TokenError(format!("tenant {:?} appears twice", t.tenant)));
            }
            let ok = hex::decode(&t.token_sha256).is_ok_and(|h| h.len() == 32);
            if !ok {
                return Err(TokenError(format!(
                    "tenant {:?}: tokenSha256 must be 64 hex digits",
                    t.tenant
                )));
            }
            t.policy
                .check()
                .map_err(|e| TokenError(format!("tenant {:?}: {e}", t.tenant)))?;
        }
        Ok(())
    }

    /// Writes the file atomically with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), TokenError> {
        let err = |what: &str, p: &Path, e: std::io::Error| {
            TokenError(format!("tokens file: {what} {}: {e}", p.display()))
        };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| TokenError(e.to_string()))?;
        json.push(b'\n');
        let write = || -> std::io::Result<()> {
            // The name is predictable: never write through something already there (a
            // symlink planted in a shared directory would have us overwrite its target).
            match std::fs::remove_file(&tmp) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(err("cannot write", &tmp, e));
        }
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err("cannot replace", path, e)
        })
    }

    /// Runs `change` on the file's contents under its lock and saves the result.
    pub fn update<T>(
        path: &Path,
        change: impl FnOnce(&mut TokensFile) -> Result<T, TokenError>,
    ) -> Result<T, TokenError> {
        let lock_path = PathBuf::from(format!("{}.lock", path.display()));
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| TokenError(format!("tokens file lock {}: {e}", lock_path.display())))?;
        let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| TokenError(format!("flock {}: {e}", lock_path.display())))?;
        let mut f = TokensFile::load_or_empty(path)?;
        let out = change(&mut f)?;
        f.save(path)?;
        Ok(out)
    }

    /// Adds `tenant` with a new token and returns the token (the file keeps only its hash).
    pub fn add_tenant(path: &Path, tenant: &str, policy: Policy) -> Result<String, TokenError> {
        check_tenant_name(tenant)?;
        policy.check().map_err(TokenError)?;
        let token = new_token()?;
        let hash = hex::encode(token_hash(&token));
        TokensFile::update(path, |f| {
            if f.tenants.iter().any(|t| t.tenant == tenant) {
                return Err(TokenError(format!(
                    "tenant {tenant:?} already has a token in {}: revoke it first",
                    path.display()
                )));
            }
            f.tenants.push(TenantEntry {
                tenant: tenant.to_string(),
                token_sha256: hash,
                created: crate::runner::result::rfc3339::format(std::time::SystemTime::now()),
                policy,
            });
            Ok(())
        })?;
        Ok(token)
    }

    /// Removes `tenant`; an unknown tenant is an error.
    pub fn revoke_tenant(path: &Path, tenant: &str) -> Result<(), TokenError> {
        TokensFile::update(path, |f| {
            let before = f.tenants.len();
            f.tenants.retain(|t| t.tenant != tenant);
            if f.tenants.len() == before {
                return Err(TokenError(format!(
                    "no tenant {tenant:?} in {}",
                    path.display()
                )));
            }
            Ok(())
        })
    }
}

/// The tenants by token hash, as loaded from the file.
#[derive(Debug, Default)]
pub struct Keys {
    entries: Vec<([u8; 32], Arc<Tenant>)>,
}

impl Keys {
    pub fn new(file: &TokensFile) -> Keys {
        Keys {
            entries: file
                .tenants
                .iter()
                .map(|t| {
                    let mut h = [0u8; 32];
                    // Checked by TokensFile::load.
                    if let Ok(b) = hex::decode(&t.token_sha256) {
                        h.copy_from_slice(&b[..32.min(b.len())]);
                    }
                    (
                        h,
                        Arc::new(Tenant {
                            name: t.tenant.clone(),
                            policy: t.policy.clone(),
                        }),
                    )
                })
                .collect(),
        }
    }

    /// The tenant whose token this is. Every entry is compared, in constant time, so the time
    /// taken says nothing about which hash (or how much of one) matched.
    pub fn authenticate(&self, token: &str) -> Option<Arc<Tenant>> {
        let h = token_hash(token);
        let mut found = None;
        for (k, t) in &self.entries {
            if bool::from(k.ct_eq(&h)) {
                found = Some(t.clone());
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_revoke_and_authenticate() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("tokens.json");
        let policy = Policy {
            allow_image: vec!["*".into()],
            ..Default::default()
        };
        let t1 = TokensFile::add_tenant(&p, "acme", policy.clone()).unwrap();
        let t2 = TokensFile::add_tenant(&p, "beta", policy.clone()).unwrap();
        assert!(t1.starts_with(TOKEN_PREFIX) && t1.len() == 4 + 43, "{t1}");
        assert!(TokensFile::add_tenant(&p, "acme", policy.clone()).is_err());
        assert!(TokensFile::add_tenant(&p, "bad name", policy).is_err());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(!text.contains(&t1[4..]), "the token itself is never stored");
        let keys = Keys::new(&TokensFile::load(&p).unwrap());
        assert_eq!(keys.authenticate(&t1).unwrap().name, "acme");
        assert_eq!(keys.authenticate(&t2).unwrap().name, "beta");
        assert!(keys.authenticate("nsr_nope").is_none());
        TokensFile::revoke_tenant(&p, "acme").unwrap();
        assert!(TokensFile::revoke_tenant(&p, "acme").is_err());
        let keys = Keys::new(&TokensFile::load(&p).unwrap());
        assert!(keys.authenticate(&t1).is_none());
        assert_eq!(keys.len(), 1);
    }

    #[test]
    fn save_never_writes_through_a_planted_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("tokens.json");
        let victim = d.path().join("victim");
        std::fs::write(&victim, "keep me").unwrap();
        let tmp = d
            .path()
            .join(format!(".tokens.json.tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        TokensFile::default().save(&p).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
        assert!(TokensFile::load(&p).unwrap().tenants.is_empty());
        assert!(!tmp.exists() && std::fs::symlink_metadata(&tmp).is_err());
    }
}
