//! Which host ids the container's ids stand for, and writing that into a new user namespace.
//!
//! Container root is never host root:
//! - **as root**, container ids `0..65536` map to a dedicated unprivileged host range starting at
//!   [`DEFAULT_ROOT_ID_BASE`] (override with `--uid-base` / `NSRUN_UID_BASE`);
//! - **rootless with subordinate ids** (`/etc/subuid` and `/etc/subgid` name the caller and
//!   `newuidmap`/`newgidmap` are installed), the caller maps to container root and container ids
//!   `1..=N` to the caller's subordinate range, as podman does;
//! - **rootless otherwise** (or `--userns single`), the caller maps to one container id: root, or
//!   the uid asked for with `-u`, as bubblewrap does. No setuid helper is involved.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use thiserror::Error;

// The shared id vocabulary lives in `crate::ids` (store and unpack use it without the sandbox);
// re-exported here so `sandbox::idmap::Ownership` and friends keep their paths.
pub use crate::ids::{
    image_ownership, maps_range, pick_range, root_range, Caller, Ownership, RootRange,
    DEFAULT_ROOT_ID_BASE, RANGE_SIZE,
};

/// How container ids map to host ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsernsMode {
    /// Root: the dedicated range. Rootless: subordinate ids when configured and the tool starts as
    /// root, else single.
    #[default]
    Auto,
    /// One id: the caller becomes container root (or the `-u` uid).
    Single,
    /// A 65536-id range (root: dedicated range; rootless: subordinate ids, required).
    Subid,
}

impl std::str::FromStr for UsernsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(UsernsMode::Auto),
            "single" => Ok(UsernsMode::Single),
            "subid" | "range" => Ok(UsernsMode::Subid),
            other => Err(format!(
                "invalid --userns {other:?}: expected auto, single or subid"
            )),
        }
    }
}

#[derive(Debug, Error)]
pub enum IdmapError {
    #[error("--userns subid: no entry for user {user} (uid {uid}) in {file}; add one (e.g. `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}`) or use --userns single")]
    NoSubid {
        user: String,
        uid: u32,
        file: &'static str,
    },
    #[error("--userns subid: {0} is not installed (Debian/Ubuntu: apt-get install uidmap)")]
    NoHelper(&'static str),
    #[error("container uid {0} is not mapped: this run's user namespace maps uids {1}")]
    UnmappedUid(u32, String),
    #[error("container gid {0} is not mapped: this run's user namespace maps gids {1}")]
    UnmappedGid(u32, String),
    #[error("--uid-base {base}: the range {base}..{end} must be unprivileged: above 0 and within 32 bits", end = *base as u64 + RANGE_SIZE as u64)]
    BadBase { base: u32 },
    #[error("uid/gid {0} is out of range for this mapping (container ids must be below {1})")]
    OutOfRange(u32, u32),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--uid-base {base}: those ids are not mapped in the user namespace nsrun runs in (its uid_map: {own}); leave --uid-base and NSRUN_UID_BASE unset to use the ids it maps")]
    BaseNotMapped { base: u32, own: String },
    #[error("{tool} failed ({status}): {stderr}")]
    Helper {
        tool: &'static str,
        status: String,
        stderr: String,
    },
    #[error("running {tool}: {source}")]
    Spawn {
        tool: &'static str,
        source: std::io::Error,
    },
}

/// One line of a `uid_map`/`gid_map`: `inside outside count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// How the maps get written.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Writer {
    /// Write `/proc/PID/{uid,gid}_map` ourselves (root, or a rootless single id).
    Direct,
    /// Ask the setuid `newuidmap`/`newgidmap` to write them (rootless ranges).
    Helpers {
        newuidmap: PathBuf,
        newgidmap: PathBuf,
    },
}

/// The id mapping of one run, decided in the parent before clone.
#[derive(Debug, Clone)]
pub struct IdMap {
    pub uids: Vec<Extent>,
    pub gids: Vec<Extent>,
    writer: Writer,
    /// Whether `setgroups(2)` is allowed in the namespace (not for a rootless single id).
    pub setgroups: bool,
}

impl IdMap {
    /// Decides the mapping. `want` is the container uid/gid the tool will run as: in single-id mode
    /// the caller maps straight to it, so that `-u 1000` works without any helper.
    pub fn decide(
        mode: UsernsMode,
        caller: Caller,
        want: (u32, u32),
        root_base: Option<u32>,
    ) -> Result<IdMap, IdmapError> {
        let range = if caller.uid == 0 {
            root_range(root_base)
        } else {
            RootRange {
                uid_base: DEFAULT_ROOT_ID_BASE,
                gid_base: DEFAULT_ROOT_ID_BASE,
                size: RANGE_SIZE,
            }
        };
        let mut map = Self::decide_in(mode, caller, want, root_base.is_some(), range)?;
        if let (0, Some(base)) = (caller.uid, root_base) {
            // A base the namespace nsrun runs in does not map would fail as a bare EPERM when
            // the maps are written: say so now.
            let own = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
            let ids = &map.uids[0];
            if !own.is_empty() && !maps_range(&own, ids.outside, ids.count) {
                return Err(IdmapError::BaseNotMapped {
                    base,
                    own: own.split_whitespace().collect::<Vec<_>>().join(" "),
                });
            }
        }
        // A user namespace whose maps newgidmap wrote for one id only (or `unshare -r`) has
        // setgroups(2) denied, and every namespace below it inherits that.
        if std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|s| s.trim() == "deny") {
            map.setgroups = false;
        }
        Ok(map)
    }

    /// [`IdMap::decide`] with root's range given (see [`root_range`]); `explicit` when it came
    /// from `--uid-base`.
    pub fn decide_in(
        mode: UsernsMode,
        caller: Caller,
        want: (u32, u32),
        explicit: bool,
        range: RootRange,
    ) -> Result<IdMap, IdmapError> {
        let base = range.uid_base;
        if caller.uid == 0 && explicit && (base == 0 || base.checked_add(RANGE_SIZE).is_none()) {
            // Host id 0 inside the range, or a range that wraps around to it, is host root.
            return Err(IdmapError::BadBase { base });
        }
        if caller.uid == 0 && range.size == 0 {
            // A user namespace that maps only its root (rootless podman without subordinate
            // ids): the tool's ids can only be that root.
            return Ok(IdMap {
                uids: vec![Extent {
                    inside: want.0,
                    outside: 0,
                    count: 1,
                }],
                gids: vec![Extent {
                    inside: want.1,
                    outside: 0,
                    count: 1,
                }],
                writer: Writer::Direct,
                setgroups: true,
            });
        }
        if caller.uid == 0 && mode != UsernsMode::Single {
            let ext = |base| {
                vec![Extent {
                    inside: 0,
                    outside: base,
                    count: range.size,
                }]
            };
            return Ok(IdMap {
                uids: ext(range.uid_base),
                gids: ext(range.gid_base),
                writer: Writer::Direct,
                setgroups: true,
            });
        }
        // Rootless, the image's files all belong to the caller (see `image_ownership`). With
        // subordinate ids the caller is container root, so a tool running as another user
        // (an image's USER, -u) would find its own files owned by root; one id mapped straight
        // to the tool's uid keeps them its own. The range pays off when the tool starts as root.
        let auto_range = mode == UsernsMode::Auto && want.0 == 0;
        if (auto_range || mode == UsernsMode::Subid) && caller.uid != 0 {
            match subid_map(caller, Path::new("/etc/subuid"), Path::new("/etc/subgid")) {
                Ok(map) => return Ok(map),
                Err(e) if mode == UsernsMode::Subid => return Err(e),
                Err(_) => {}
            }
        }
        // Single id. As root this still maps to an unprivileged id: the dedicated base plus the
        // uid asked for, never host root.
        let (out_uid, out_gid, setgroups) = if caller.uid == 0 {
            // Only ids inside the dedicated range: anything else could add up to host root.
            for id in [want.0, want.1] {
                if id >= range.size {
                    return Err(IdmapError::OutOfRange(id, range.size));
                }
            }
            (range.uid_base + want.0, range.gid_base + want.1, true)
        } else {
            (caller.uid, caller.gid, false)
        };
        Ok(IdMap {
            uids: vec![Extent {
                inside: want.0,
                outside: out_uid,
                count: 1,
            }],
            gids: vec![Extent {
                inside: want.1,
                outside: out_gid,
                count: 1,
            }],
            writer: Writer::Direct,
            setgroups,
        })
    }

    /// Host uid that container uid `uid` stands for.
    pub fn host_uid(&self, uid: u32) -> Option<u32> {
        lookup(&self.uids, uid)
    }

    /// Whether the namespace maps more than one uid (a range: root, or subordinate ids).
    pub fn maps_many_uids(&self) -> bool {
        self.uids.iter().map(|e| u64::from(e.count)).sum::<u64>() > 1
    }

    /// Host gid that container gid `gid` stands for.
    pub fn host_gid(&self, gid: u32) -> Option<u32> {
        lookup(&self.gids, gid)
    }

    /// Checks that the tool's ids exist in the namespace.
    pub fn check_ids(&self, uid: u32, gid: u32) -> Result<(), IdmapError> {
        self.host_uid(uid)
            .ok_or_else(|| IdmapError::UnmappedUid(uid, ranges(&self.uids)))?;
        self.host_gid(gid)
            .ok_or_else(|| IdmapError::UnmappedGid(gid, ranges(&self.gids)))?;
        Ok(())
    }

    /// Who should own an unpacked image's files for them to be mapped as in the image.
    pub fn ownership(&self) -> Ownership {
        match self.uids.as_slice() {
            [one] if one.inside == 0 && one.count > 1 => Ownership::Shift {
                uid_base: one.outside,
                gid_base: self.gids[0].outside,
                size: one.count,
            },
            _ => Ownership::Squash {
                uid: self.uids[0].outside,
                gid: self.gids[0].outside,
            },
        }
    }

    /// Parent side: writes the maps of the freshly cloned `pid`, which waits on its sync pipe.
    pub fn write(&self, pid: libc::pid_t) -> Result<(), IdmapError> {
        match &self.writer {
            Writer::Direct => {
                if !self.setgroups {
                    // An unprivileged process may map its gid only after giving up setgroups(2).
                    write_proc(pid, "setgroups", b"deny")?;
                }
                write_proc(pid, "gid_map", render(&self.gids).as_bytes())?;
                write_proc(pid, "uid_map", render(&self.uids).as_bytes())
            }
            Writer::Helpers {
                newuidmap,
                newgidmap,
            } => {
                // The two maps are independent: write them at once, which halves the cost of
                // the setuid helpers' start-up on every run.
                let gid = spawn_helper("newgidmap", newgidmap, pid, &self.gids)?;
                let uid = spawn_helper("newuidmap", newuidmap, pid, &self.uids);
                let gid = finish_helper("newgidmap", gid);
                finish_helper("newuidmap", uid?)?;
                gid
            }
        }
    }
}

fn lookup(extents: &[Extent], id: u32) -> Option<u32> {
    extents
        .iter()
        .find(|e| id >= e.inside && id - e.inside < e.count)
        .map(|e| e.outside + (id - e.inside))
}

/// `0-65535`, `0, 1-65535`: the container ids a map covers, for messages.
fn ranges(extents: &[Extent]) -> String {
    let one = |e: &Extent| match e.count {
        1 => e.inside.to_string(),
        n => format!("{}-{}", e.inside, e.inside as u64 + n as u64 - 1),
    };
    extents.iter().map(one).collect::<Vec<_>>().join(", ")
}

fn render(extents: &[Extent]) -> String {
    extents
        .iter()
        .map(|e| format!("{} {} {}\n", e.inside, e.outside, e.count))
        .collect()
}

fn write_proc(pid: libc::pid_t, file: &str, data: &[u8]) -> Result<(), IdmapError> {
    let path = PathBuf::from(format!("/proc/{pid}/{file}"));
    // One write(2): the kernel accepts a map only as a single write.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| f.write_all(data))
        .map_err(|source| IdmapError::Write { path, source })
}

fn spawn_helper(
    tool: &'static str,
    path: &Path,
    pid: libc::pid_t,
    extents: &[Extent],
) -> Result<std::process::Child, IdmapError> {
    let mut cmd = Command::new(path);
    cmd.arg(pid.to_string());
    for e in extents {
        cmd.args([
            e.inside.to_string(),
            e.outside.to_string(),
            e.count.to_string(),
        ]);
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    cmd.spawn()
        .map_err(|source| IdmapError::Spawn { tool, source })
}

fn finish_helper(tool: &'static str, child: std::process::Child) -> Result<(), IdmapError> {
    let out = child
        .wait_with_output()
        .map_err(|source| IdmapError::Spawn { tool, source })?;
    if !out.status.success() {
        return Err(IdmapError::Helper {
            tool,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// The subordinate-id mapping for a rootless caller: caller → 0, subordinate ids → 1..=N.
fn subid_map(caller: Caller, subuid: &Path, subgid: &Path) -> Result<IdMap, IdmapError> {
    let user = nix::unistd::User::from_uid(caller.uid.into())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| caller.uid.to_string());
    let (us, uc) = find_subid(subuid, &user, caller.uid).ok_or(IdmapError::NoSubid {
        user: user.clone(),
        uid: caller.uid,
        file: "/etc/subuid",
    })?;
    let (gs, gc) = find_subid(subgid, &user, caller.uid).ok_or(IdmapError::NoSubid {
        user: user.clone(),
        uid: caller.uid,
        file: "/etc/subgid",
    })?;
    let newuidmap = find_in_path("newuidmap").ok_or(IdmapError::NoHelper("newuidmap"))?;
    let newgidmap = find_in_path("newgidmap").ok_or(IdmapError::NoHelper("newgidmap"))?;
    let (uc, gc) = (uc.min(RANGE_SIZE - 1), gc.min(RANGE_SIZE - 1));
    Ok(IdMap {
        uids: vec![
            Extent {
                inside: 0,
                outside: caller.uid,
                count: 1,
            },
            Extent {
                inside: 1,
                outside: us,
                count: uc,
            },
        ],
        gids: vec![
            Extent {
                inside: 0,
                outside: caller.gid,
                count: 1,
            },
            Extent {
                inside: 1,
                outside: gs,
                count: gc,
            },
        ],
        writer: Writer::Helpers {
            newuidmap,
            newgidmap,
        },
        setgroups: true,
    })
}

/// First `NAME_OR_UID:START:COUNT` line of `file` for this user.
fn find_subid(file: &Path, user: &str, uid: u32) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(file).ok()?;
    parse_subid(&text, user, uid)
}

fn parse_subid(text: &str, user: &str, uid: u32) -> Option<(u32, u32)> {
    text.lines().find_map(|line| {
        let mut f = line.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        if who != user && who.parse::<u32>().ok() != Some(uid) {
            return None;
        }
        let (start, count) = (start.parse().ok()?, count.parse().ok()?);
        (count > 0).then_some((start, count))
    })
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_maps_to_the_dedicated_range() {
        let m = IdMap::decide(UsernsMode::Auto, Caller { uid: 0, gid: 0 }, (0, 0), None).unwrap();
        assert_eq!(m.host_uid(0), Some(DEFAULT_ROOT_ID_BASE));
        assert_eq!(m.host_uid(1000), Some(DEFAULT_ROOT_ID_BASE + 1000));
        assert_eq!(m.host_uid(RANGE_SIZE), None);
        assert_eq!(
            m.ownership(),
            Ownership::Shift {
                uid_base: DEFAULT_ROOT_ID_BASE,
                gid_base: DEFAULT_ROOT_ID_BASE,
                size: RANGE_SIZE
            }
        );
        assert_eq!(render(&m.uids), format!("0 {DEFAULT_ROOT_ID_BASE} 65536\n"));
    }

    #[test]
    fn rootless_single_maps_the_caller_to_the_wanted_uid() {
        let m = IdMap::decide(
            UsernsMode::Single,
            Caller { uid: 1234, gid: 99 },
            (1000, 1000),
            None,
        )
        .unwrap();
        assert_eq!(m.host_uid(1000), Some(1234));
        assert_eq!(m.host_uid(0), None);
        assert!(!m.setgroups);
        assert!(m.check_ids(0, 0).is_err());
        assert_eq!(m.ownership(), Ownership::Squash { uid: 1234, gid: 99 });
    }

    #[test]
    fn rootless_auto_maps_a_non_root_tool_to_the_caller() {
        // Whatever /etc/subuid says: the range is only for tools that start as root.
        let m = IdMap::decide(
            UsernsMode::Auto,
            Caller { uid: 1234, gid: 99 },
            (1000, 1000),
            None,
        )
        .unwrap();
        assert_eq!((m.uids.len(), m.host_uid(1000)), (1, Some(1234)));
    }

    #[test]
    fn root_single_never_maps_host_root() {
        let m = IdMap::decide(
            UsernsMode::Single,
            Caller { uid: 0, gid: 0 },
            (0, 0),
            Some(5000),
        )
        .unwrap();
        assert_eq!(m.host_uid(0), Some(5000));
    }

    #[test]
    fn no_arithmetic_reaches_host_root() {
        let root = Caller { uid: 0, gid: 0 };
        assert!(matches!(
            IdMap::decide(UsernsMode::Auto, root, (0, 0), Some(0)),
            Err(IdmapError::BadBase { .. })
        ));
        assert!(IdMap::decide(UsernsMode::Auto, root, (0, 0), Some(u32::MAX - 100)).is_err());
        let wrap = (u32::MAX - DEFAULT_ROOT_ID_BASE) + 1;
        assert!(matches!(
            IdMap::decide(UsernsMode::Single, root, (wrap, 0), None),
            Err(IdmapError::OutOfRange(..))
        ));
        assert!(IdMap::decide(UsernsMode::Single, root, (0, wrap), None).is_err());
    }

    #[test]
    fn subid_lines_match_by_name_or_uid() {
        let text = "alice:100000:65536\n1001:200000:1000\nbob:x:y\n";
        assert_eq!(parse_subid(text, "alice", 1000), Some((100000, 65536)));
        assert_eq!(parse_subid(text, "carol", 1001), Some((200000, 1000)));
        assert_eq!(parse_subid(text, "bob", 7), None);
    }

    #[test]
    fn root_in_a_user_namespace_maps_what_the_namespace_has() {
        // The host: everything is mapped, so the dedicated range is.
        assert_eq!(
            pick_range("0 0 4294967295\n"),
            (DEFAULT_ROOT_ID_BASE, RANGE_SIZE)
        );
        // Kubernetes hostUsers: false: 65536 ids; container root must not be the pod's root.
        assert_eq!(pick_range("0 1879048192 65536\n"), (1, 65535));
        // Rootless podman: root is the user, 1.. the subordinate ids.
        assert_eq!(pick_range("0 1000 1\n1 100000 65536\n"), (1, 65536));
        // Adjacent extents are one run; the longest run wins, capped at 65536.
        assert_eq!(
            pick_range("0 1000 1\n1 5000 10\n11 9000 100000\n"),
            (1, 65536)
        );
        assert_eq!(pick_range("0 1000 1\n5 5000 10\n100 9000 20\n"), (100, 20));
        assert!(maps_range(
            "0 0 4294967295\n",
            DEFAULT_ROOT_ID_BASE,
            RANGE_SIZE
        ));
        assert!(maps_range("0 1000 1\n1 100000 65536\n", 1, 65536));
        assert!(!maps_range("0 1000 1\n1 100000 65536\n", 1, 65537));
        assert!(!maps_range(
            "0 1879048192 65536\n",
            DEFAULT_ROOT_ID_BASE,
            RANGE_SIZE
        ));
        // Only root: no range at all.
        assert_eq!(pick_range("0 1000 1\n"), (0, 0));
        assert_eq!(pick_range(""), (0, 0));
        // Never up to the last 32-bit id.
        assert_eq!(pick_range("0 0 1\n4294967290 10 5\n"), (0, 0));

        let root = Caller { uid: 0, gid: 0 };
        let pod = RootRange {
            uid_base: 1,
            gid_base: 1,
            size: 65535,
        };
        let m = IdMap::decide_in(UsernsMode::Auto, root, (0, 0), false, pod).unwrap();
        assert_eq!(render(&m.uids), "0 1 65535\n");
        assert_eq!(m.host_uid(65534), Some(65535));
        assert_eq!(
            m.ownership(),
            Ownership::Shift {
                uid_base: 1,
                gid_base: 1,
                size: 65535
            }
        );
        let m = IdMap::decide_in(UsernsMode::Single, root, (1000, 1000), false, pod).unwrap();
        assert_eq!(m.host_uid(1000), Some(1001));
        assert!(matches!(
            IdMap::decide_in(UsernsMode::Single, root, (65535, 0), false, pod),
            Err(IdmapError::OutOfRange(65535, 65535))
        ));
        let only_root = RootRange {
            uid_base: 0,
            gid_base: 0,
            size: 0,
        };
        let m = IdMap::decide_in(UsernsMode::Auto, root, (0, 0), false, only_root).unwrap();
        assert_eq!(render(&m.uids), "0 0 1\n");
        let m = IdMap::decide_in(UsernsMode::Auto, root, (1000, 1000), false, only_root).unwrap();
        assert_eq!(render(&m.gids), "1000 0 1\n");
    }
}
