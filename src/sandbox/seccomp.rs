//! Seccomp profiles. (Placeholder until the confinement work lands.)

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::caps::CapSet;

/// Which seccomp profile a run gets.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompSource {
    /// `profiles/default.json`, built into the binary.
    #[default]
    Default,
    /// No filter (`--security-opt seccomp=unconfined`).
    Unconfined,
    /// A Docker-format JSON profile.
    File(PathBuf),
}

#[derive(Debug, Error)]
pub enum SeccompError {
    #[error("seccomp profiles are not supported yet")]
    Unsupported,
}

/// A compiled BPF program, ready to load in the child.
#[derive(Debug)]
pub struct Filter {
    _insns: Vec<libc::sock_filter>,
}

/// Compiles `source` for the given capability set (for `includes`/`excludes` rules).
pub fn compile(
    source: &SeccompSource,
    _caps: CapSet,
    _cache_dir: Option<&Path>,
) -> Result<Option<Filter>, SeccompError> {
    match source {
        SeccompSource::Unconfined | SeccompSource::Default => Ok(None),
        SeccompSource::File(_) => Err(SeccompError::Unsupported),
    }
}

impl Filter {
    /// Child side: installs the filter. Allocation-free.
    pub fn load(&self) -> Result<(), i32> {
        Ok(())
    }
}
