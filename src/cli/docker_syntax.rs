//! `docker run`'s structured flags, turned into the library's mounts: `--mount type=…,…` and
//! `--device HOST[:CONTAINER][:PERMS]`. Each value is checked here, before anything is pulled
//! or created; what nsrun cannot honour is refused in one line that says why.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use nsrun::sandbox::mount_opts::parse_size;
use nsrun::sandbox::{BindMount, TmpfsMount};

/// One `--mount`.
#[derive(Debug, PartialEq, Eq)]
pub enum MountArg {
    Bind(BindMount),
    Tmpfs(TmpfsMount),
}

/// Parses Docker's `--mount` keys: `type` (`bind` or `tmpfs`), `source`/`src`,
/// `target`/`dst`/`destination`, `readonly`/`ro` (bare, or `=true|false|1|0`), `tmpfs-size`,
/// `tmpfs-mode`, `consistency` (no effect on Linux); `bind-propagation` and volume mounts are
/// refused with the reason.
pub fn parse_mount(s: &str) -> Result<MountArg, String> {
    let bad = |why: String| format!("invalid --mount {s:?}: {why}");
    let (mut kind, mut source, mut target) = (None, None, None);
    let mut read_only = false;
    let (mut size, mut mode) = (None, None);
    for field in s.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        let (k, v) = match field.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (field, None),
        };
        let value = || v.ok_or_else(|| bad(format!("{k} needs a value ({k}=…)")));
        match k {
            "type" => kind = Some(value()?),
            "source" | "src" => source = Some(value()?),
            "target" | "dst" | "destination" => target = Some(value()?),
            "readonly" | "ro" => {
                read_only = match v {
                    None | Some("true" | "1") => true,
                    Some("false" | "0") => false,
                    Some(o) => return Err(bad(format!("{k}={o}: expected true or false"))),
                }
            }
            "tmpfs-size" => size = Some(parse_size(value()?).map_err(bad)?),
            "tmpfs-mode" => {
                let v = value()?;
                mode = Some(
                    u32::from_str_radix(v, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| bad(format!("tmpfs-mode {v:?}: expected octal")))?,
                )
            }
            "consistency" => {}
            "bind-propagation" => {
                return Err(bad(
                    "bind-propagation is not supported: a run's mounts are private to it, so \
                     nothing propagates either way"
                        .into(),
                ))
            }
            other => return Err(bad(format!("unsupported key {other:?}"))),
        }
    }
    let target = target.ok_or_else(|| bad("target= is required".into()))?;
    if !target.starts_with('/') {
        return Err(bad(format!("target {target:?} must be an absolute path")));
    }
    match kind {
        Some("bind") => {
            if size.is_some() || mode.is_some() {
                return Err(bad("tmpfs-size and tmpfs-mode are for type=tmpfs".into()));
            }
            let source = source.ok_or_else(|| bad("type=bind needs source=".into()))?;
            if !source.starts_with('/') {
                return Err(bad(format!("source {source:?} must be an absolute path")));
            }
            if !Path::new(source).exists() {
                // Docker's own check, worded as Docker words it.
                return Err(bad(format!("bind source path does not exist: {source}")));
            }
            Ok(MountArg::Bind(BindMount {
                source: source.into(),
                target: target.into(),
                read_only,
            }))
        }
        Some("tmpfs") => {
            if source.is_some() {
                return Err(bad("type=tmpfs takes no source".into()));
            }
            let mut t = TmpfsMount::new(
                target,
                size.unwrap_or(nsrun::sandbox::spec::DEFAULT_TMP_SIZE),
            );
            t.mode = mode;
            t.read_only = read_only;
            // Docker's default for tmpfs mounts, as with --tmpfs.
            t.noexec = true;
            Ok(MountArg::Tmpfs(t))
        }
        Some("volume") => Err(bad(
            "type=volume: nsrun has no named volumes; use type=bind with a host directory".into(),
        )),
        Some(other) => Err(bad(format!("type {other:?}: expected bind or tmpfs"))),
        None => Err(bad("type= is required (bind or tmpfs)".into())),
    }
}

/// Parses `--device HOST[:CONTAINER][:PERMS]` into a bind of the host's device node.
///
/// No user namespace may create device nodes, and nsrun sets up no device cgroup: a device is
/// the host's node bound in, opened with the host's permissions for the run's (unprivileged)
/// host ids. So it is honoured only where that works and grants nothing the node's permissions
/// do not: character devices, read-write (`rw`/`rwm`, Docker's default), that the run can open —
/// world read-write as root (container root is an unprivileged host id), readable and writable
/// by the caller rootless. Anything else is refused with the reason.
pub fn parse_device(s: &str, rootless: bool) -> Result<BindMount, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let perms_like = |p: &str| !p.is_empty() && p.chars().all(|c| "rwm".contains(c));
    let (host, target, perms) = match parts.as_slice() {
        [h] => (*h, *h, "rwm"),
        [h, p] if perms_like(p) => (*h, *h, *p),
        [h, t] => (*h, *t, "rwm"),
        [h, t, p] => (*h, *t, *p),
        _ => {
            return Err(format!(
                "invalid --device {s:?}: expected HOST[:CONTAINER][:PERMS]"
            ))
        }
    };
    if !perms_like(perms) {
        return Err(format!(
            "invalid --device {s:?}: permissions {perms:?} must be letters of rwm"
        ));
    }
    if !(perms.contains('r') && perms.contains('w')) {
        return Err(format!(
            "--device {s}: permissions {perms:?} cannot be enforced: nsrun has no device cgroup, \
             so a device is read-write or absent"
        ));
    }
    if !host.starts_with('/') || !target.starts_with('/') {
        return Err(format!("invalid --device {s:?}: paths must be absolute"));
    }
    let meta = std::fs::metadata(host).map_err(|e| format!("--device {host}: {e}"))?;
    let ft = meta.file_type();
    if ft.is_block_device() {
        return Err(format!(
            "--device {host}: block devices are refused: a run gets no raw disk access (bind a \
             directory with -v instead)"
        ));
    }
    if !ft.is_char_device() {
        return Err(format!(
            "--device {host}: not a character device (use -v for files and directories)"
        ));
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode();
    let usable = if rootless {
        nix::unistd::access(
            host,
            nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK,
        )
        .is_ok()
    } else {
        mode & 0o006 == 0o006
    };
    if !usable {
        let who = if rootless {
            "you cannot open it read-write"
        } else {
            "container root is an unprivileged host id and the node is not world read-write"
        };
        return Err(format!(
            "--device {host}: the run could not open it ({who}; mode {:o}); nsrun grants no \
             device access beyond the node's own permissions",
            mode & 0o7777
        ));
    }
    Ok(BindMount {
        source: host.into(),
        target: target.into(),
        read_only: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_in_dockers_keys() {
        let m = parse_mount("type=bind,source=/tmp,target=/data,readonly").unwrap();
        assert_eq!(
            m,
            MountArg::Bind(BindMount {
                source: "/tmp".into(),
                target: "/data".into(),
                read_only: true
            })
        );
        let m = parse_mount("type=bind,src=/tmp,dst=/data,ro=false").unwrap();
        assert!(matches!(m, MountArg::Bind(b) if !b.read_only));
        let m =
            parse_mount("type=tmpfs,destination=/scratch,tmpfs-size=1.5m,tmpfs-mode=700").unwrap();
        assert!(matches!(m, MountArg::Tmpfs(t) if t.size == 3 << 19 && t.mode == Some(0o700)));
        for bad in [
            "type=bind,source=/tmp,target=/d,bind-propagation=rshared",
            "type=volume,source=v,target=/d",
            "type=bind,target=/d",
            "type=bind,source=/nonexistent-nsrun,target=/d",
            "type=tmpfs,target=rel",
            "type=tmpfs,target=/x,tmpfs-size=lots",
            "source=/tmp,target=/d",
            "type=bind,source=/tmp,target=/d,bogus=1",
        ] {
            assert!(parse_mount(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn devices() {
        let b = parse_device("/dev/null:/dev/mynull:rwm", false).unwrap();
        assert_eq!(b.target, "/dev/mynull");
        assert_eq!(
            parse_device("/dev/zero:rw", true).unwrap().target,
            "/dev/zero"
        );
        assert!(parse_device("/dev/null:r", false)
            .unwrap_err()
            .contains("device cgroup"));
        assert!(parse_device("/etc/passwd", false)
            .unwrap_err()
            .contains("not a character device"));
        assert!(parse_device("/dev/nonexistent-nsrun", false).is_err());
    }
}
