//! Resolving `-u USER[:GROUP]` and `HOME` against the container's own `/etc/passwd` and `/etc/group`,
//! as Docker does: names are looked up in the image, never on the host.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum UserError {
    #[error("unable to find user {0}: no matching entries in the container's /etc/passwd")]
    NoUser(String),
    #[error("unable to find group {0}: no matching entries in the container's /etc/group")]
    NoGroup(String),
    #[error("invalid user {0:?}: expected UID[:GID] or NAME[:GROUP]")]
    Invalid(String),
}

/// The identity the tool runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups from the container's `/etc/group`.
    pub groups: Vec<u32>,
    /// Home directory from the container's `/etc/passwd`, if the user has an entry.
    pub home: Option<String>,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Resolves `spec` (`None`: root) using the files of the rootfs `layers` (topmost first).
pub fn resolve(spec: Option<&str>, layers: &[PathBuf]) -> Result<Identity, UserError> {
    let spec = spec.filter(|s| !s.is_empty()).unwrap_or("0");
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) if !u.is_empty() && !g.is_empty() => (u, Some(g)),
        Some(_) => return Err(UserError::Invalid(spec.to_string())),
        None => (spec, None),
    };
    let passwd = parse_passwd(&read_in_root(layers, "etc/passwd").unwrap_or_default());
    let groups = parse_group(&read_in_root(layers, "etc/group").unwrap_or_default());

    let entry = match user.parse::<u32>() {
        Ok(uid) => passwd.iter().find(|e| e.uid == uid),
        Err(_) => Some(
            passwd
                .iter()
                .find(|e| e.name == user)
                .ok_or_else(|| UserError::NoUser(user.to_string()))?,
        ),
    };
    let uid = entry.map_or_else(|| user.parse().expect("numeric, checked above"), |e| e.uid);
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| UserError::NoGroup(g.to_string()))?,
        },
        // Docker: a uid without a passwd entry runs with gid 0... unless a group was given.
        None => entry.map_or(0, |e| e.gid),
    };
    let supplementary = match (entry, group) {
        (Some(e), None) => groups
            .iter()
            .filter(|g| g.gid != gid && g.members.contains(&e.name))
            .map(|g| g.gid)
            .collect(),
        _ => Vec::new(),
    };
    Ok(Identity {
        uid,
        gid,
        groups: supplementary,
        home: entry.map(|e| e.home.clone()),
    })
}

/// Resolves `--group-add` entries (numeric gids, or names of the container's `/etc/group`).
pub fn resolve_groups(names: &[String], layers: &[PathBuf]) -> Result<Vec<u32>, UserError> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let groups = parse_group(&read_in_root(layers, "etc/group").unwrap_or_default());
    names
        .iter()
        .map(|n| match n.parse::<u32>() {
            Ok(gid) => Ok(gid),
            Err(_) => groups
                .iter()
                .find(|g| &g.name == n)
                .map(|g| g.gid)
                .ok_or_else(|| UserError::NoGroup(n.clone())),
        })
        .collect()
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(String::from)
                    .collect(),
            })
        })
        .collect()
}

/// Reads `rel` from the topmost layer that has it, resolving symlinks inside that layer only.
/// Files are capped at 1 MiB: these are small text files, and the image is untrusted.
pub fn read_in_root(layers: &[PathBuf], rel: &str) -> Option<String> {
    layers.iter().find_map(|layer| {
        let file = std::fs::File::from(open_in_root(layer, rel, OFlag::O_RDONLY).ok()?);
        // Sized from the start: these are read on every run.
        let len = file.metadata().map_or(0, |m| m.len()).min(1 << 20) as usize;
        let mut text = String::with_capacity(len + 1);
        file.take(1 << 20).read_to_string(&mut text).ok()?;
        Some(text)
    })
}

/// Opens `rel` beneath `root` as if `root` were `/`: `..` and absolute symlinks cannot leave it.
pub fn open_in_root(root: &Path, rel: &str, flags: OFlag) -> nix::Result<OwnedFd> {
    let dir = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    nix::fcntl::openat2(dir.as_fd(), rel.trim_start_matches('/'), how)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nscan:x:1000:1000::/home/scan:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nscan:x:1000:\nnet:x:50:scan,root\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn names_and_numbers_resolve_in_the_image() {
        let dir = rootfs();
        let layers = [dir.path().to_path_buf()];
        let id = resolve(Some("scan"), &layers).unwrap();
        assert_eq!(
            (id.uid, id.gid, id.groups.as_slice(), id.home.as_deref()),
            (1000, 1000, &[50][..], Some("/home/scan"))
        );
        let id = resolve(Some("1000:net"), &layers).unwrap();
        assert_eq!((id.uid, id.gid), (1000, 50));
        let id = resolve(Some("4242"), &layers).unwrap();
        assert_eq!((id.uid, id.gid, id.home), (4242, 0, None));
        assert!(matches!(
            resolve(Some("nobody"), &layers),
            Err(UserError::NoUser(_))
        ));
        assert!(matches!(
            resolve(Some("0:wheel"), &layers),
            Err(UserError::NoGroup(_))
        ));
        assert!(matches!(
            resolve(Some(":1"), &layers),
            Err(UserError::Invalid(_))
        ));
    }

    #[test]
    fn symlinks_cannot_read_host_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("../../../../etc/hostname", dir.path().join("etc/group"))
            .unwrap();
        let layers = [dir.path().to_path_buf()];
        assert_eq!(read_in_root(&layers, "etc/passwd"), None);
        assert_eq!(read_in_root(&layers, "etc/group"), None);
    }
}
