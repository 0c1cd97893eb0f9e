//! Capabilities kept by the tool. (Placeholder until the confinement work lands: keeps nothing.)

use thiserror::Error;

/// A set of capabilities as a bitmask indexed by capability number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapSet(pub u64);

#[derive(Debug, Error)]
pub enum CapsError {
    #[error("unknown capability {0:?}")]
    Unknown(String),
}

impl CapSet {
    /// Resolves `--cap-add`/`--cap-drop` against the default set.
    pub fn resolve(_add: &[String], _drop: &[String]) -> Result<CapSet, CapsError> {
        Ok(CapSet(0))
    }
}

/// Child side, before the uid change: drop every capability not in `set` from the bounding set.
pub fn drop_bounding(_set: CapSet) -> Result<(), i32> {
    Ok(())
}

/// Child side, after the uid change: make `set` the effective, permitted and inheritable sets.
pub fn apply(_set: CapSet) -> Result<(), i32> {
    Ok(())
}
