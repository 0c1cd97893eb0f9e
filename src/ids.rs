//! Host ids of unpacked files and of container ids: the vocabulary the store, the unpacker and
//! the sandbox share. Which files an image's rootfs is owned by ([`Ownership`]) is decided here
//! for a [`Caller`], from the same id range the sandbox later maps container ids to
//! ([`root_range`]); writing the maps into a user namespace is the sandbox's
//! ([`crate::sandbox::idmap`]). This module depends on nothing else of the crate.

use serde::{Deserialize, Serialize};

/// Host uid (and gid) that container id 0 maps to when nsrun runs as root.
///
/// High enough to stay clear of the usual `/etc/subuid` allocations (100000 + 65536·n) and of
/// systemd's dynamic users, and documented so a host can keep it free.
pub const DEFAULT_ROOT_ID_BASE: u32 = 1_000_000_000;
/// Number of ids in a range mapping: as many as a normal distribution image uses.
pub const RANGE_SIZE: u32 = 65536;

/// Who owns the files of an unpacked rootfs, so that they are mapped inside the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ownership {
    /// Every file belongs to one host uid/gid (rootless: the caller, which maps to container root).
    Squash { uid: u32, gid: u32 },
    /// Container id N is host id `base + N` (root: the dedicated range).
    Shift {
        uid_base: u32,
        gid_base: u32,
        size: u32,
    },
}

/// Who should own the files of an image unpacked for `caller`, so that they show inside the
/// container with the ids the image gave them: shifted into the dedicated range as root (base
/// `root_base`, default [`DEFAULT_ROOT_ID_BASE`]), squashed to the caller otherwise (the caller
/// is container root in both rootless mappings).
pub fn image_ownership(caller: Caller, root_base: Option<u32>) -> Ownership {
    if caller.uid == 0 {
        let r = root_range(root_base);
        if r.size == 0 {
            // A user namespace that maps only root: its root is container root too.
            return Ownership::Squash { uid: 0, gid: 0 };
        }
        Ownership::Shift {
            uid_base: r.uid_base,
            gid_base: r.gid_base,
            size: r.size,
        }
    } else {
        Ownership::Squash {
            uid: caller.uid,
            gid: caller.gid,
        }
    }
}

/// The ids a run started by root may map container ids `0..size` to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootRange {
    pub uid_base: u32,
    pub gid_base: u32,
    /// 0 when the user namespace nsrun runs in maps nothing but its root.
    pub size: u32,
}

/// Where root's runs map their ids: `--uid-base` when given, else the dedicated range
/// [`DEFAULT_ROOT_ID_BASE`] when the user namespace nsrun runs in maps it (the host's does),
/// else what that namespace has (a rootless container, a Kubernetes pod with `hostUsers: false`):
/// its longest run of ids other than its root, at most [`RANGE_SIZE`]. Container root stays an
/// id other than nsrun's own wherever the namespace has one.
pub fn root_range(explicit: Option<u32>) -> RootRange {
    if let Some(base) = explicit {
        return RootRange {
            uid_base: base,
            gid_base: base,
            size: RANGE_SIZE,
        };
    }
    let pick = |file: &str| {
        std::fs::read_to_string(file)
            .ok()
            .map_or((DEFAULT_ROOT_ID_BASE, RANGE_SIZE), |t| pick_range(&t))
    };
    let (uid_base, us) = pick("/proc/self/uid_map");
    let (gid_base, gs) = pick("/proc/self/gid_map");
    RootRange {
        uid_base,
        gid_base,
        size: us.min(gs),
    }
}

/// Whether the `uid_map` text `map` maps every id of `start..start + count`.
pub fn maps_range(map: &str, start: u32, count: u32) -> bool {
    let (start, end) = (start as u64, start as u64 + count as u64);
    map.lines().any(|l| {
        let f: Vec<u64> = l
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        f.len() == 3 && f[0] <= start && end <= f[0] + f[2]
    })
}

/// Picks root's range from the text of a `uid_map`: the dedicated range if it is mapped,
/// otherwise the longest run of mapped ids other than 0 (capped at [`RANGE_SIZE`]); `(0, 0)`
/// when only 0 is mapped.
pub fn pick_range(map: &str) -> (u32, u32) {
    let extents: Vec<(u64, u64)> = map
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().map(|x| x.parse::<u64>());
            let (inside, _outside, count) = (f.next()?.ok()?, f.next()?.ok()?, f.next()?.ok()?);
            Some((inside, count))
        })
        .collect();
    let want = (DEFAULT_ROOT_ID_BASE as u64, RANGE_SIZE as u64);
    if extents
        .iter()
        .any(|&(start, count)| start <= want.0 && want.0 + want.1 <= start + count)
    {
        return (DEFAULT_ROOT_ID_BASE, RANGE_SIZE);
    }
    // Adjacent extents form one run of ids; id 0 is left out (it is nsrun's own root).
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut sorted: Vec<(u64, u64)> = extents
        .into_iter()
        .filter_map(|(start, count)| match start {
            0 if count > 1 => Some((1, count - 1)),
            0 => None,
            _ => Some((start, count)),
        })
        .collect();
    sorted.sort();
    for (start, count) in sorted {
        match runs.last_mut() {
            Some(last) if last.0 + last.1 == start => last.1 += count,
            _ => runs.push((start, count)),
        }
    }
    runs.iter()
        .map(|&(start, count)| (start, count.min(RANGE_SIZE as u64)))
        // Never a range that would reach the last 32-bit id (chown's "unchanged").
        .filter(|&(start, count)| start + count < u32::MAX as u64)
        .max_by_key(|&(start, count)| (count, std::cmp::Reverse(start)))
        .map_or((0, 0), |(start, count)| (start as u32, count as u32))
}

/// The identity of the calling process that a mapping is decided for.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

impl Caller {
    /// The effective ids of this process.
    pub fn current() -> Caller {
        Caller {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }
}
