//! (being written)
use serde::{Deserialize, Serialize};

/// How container ids map to host ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsernsMode {
    #[default]
    Auto,
    Single,
    Subid,
}

/// Who owns the files of an unpacked rootfs, so that they are mapped inside the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ownership {
    /// Every file belongs to one host uid/gid (rootless: the caller, which maps to container root).
    Squash { uid: u32, gid: u32 },
    /// Container id N is host id `base + N` (root: the dedicated range).
    Shift { uid_base: u32, gid_base: u32, size: u32 },
}
