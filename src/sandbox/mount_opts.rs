//! Docker's spellings of mount options and sizes: `--tmpfs PATH:rw,noexec,nosuid,size=65536k`,
//! `-v SRC:DST:ro,Z`, and go-units sizes (`64MiB`, `1.5g`, `64 m`, `65536k`).
//!
//! What nsrun cannot honour is refused with the reason, never silently dropped; what has no
//! meaning here (SELinux relabelling) is accepted and reported as a note.

use super::spec::{BindMount, TmpfsMount, DEFAULT_TMP_SIZE, MAX_SIZE};

/// Parses a size as Docker's go-units `RAMInBytes` does: a number (decimals allowed), an
/// optional space, an optional unit `k`, `m`, `g`, `t` or `p` (any case, powers of 1024),
/// optionally followed by `i` and/or `b`.
///
/// ```
/// use nsrun::sandbox::parse_size;
/// assert_eq!(parse_size("64MiB"), Ok(64 << 20));
/// assert_eq!(parse_size("1.5g"), Ok(3 << 29));
/// assert_eq!(parse_size("64 m"), Ok(64 << 20));
/// assert_eq!(parse_size("65536k"), Ok(64 << 20));
/// assert_eq!(parse_size("4096"), Ok(4096));
/// assert!(parse_size("64 mm").is_err());
/// ```
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid size {s:?}: expected e.g. 64m, 1.5g, 64MiB, 4096");
    let t = s.trim();
    let digits = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, rest) = t.split_at(digits);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return Err(bad());
    }
    let rest = rest.strip_prefix(' ').unwrap_or(rest).to_ascii_lowercase();
    let mut unit = rest.as_str();
    let shift = match unit.chars().next() {
        Some(c @ ('k' | 'm' | 'g' | 't' | 'p')) => {
            unit = &unit[1..];
            10 * (1 + "kmgtp".find(c).expect("listed"))
        }
        _ => 0,
    };
    let unit = unit.strip_prefix('i').unwrap_or(unit);
    let unit = unit.strip_prefix('b').unwrap_or(unit);
    if !unit.is_empty() {
        return Err(bad());
    }
    let n: f64 = num.parse().map_err(|_| bad())?;
    let bytes = n * (1u64 << shift) as f64;
    // A float cast saturates: 99999999999999999999 would silently become u64::MAX, which the
    // kernel takes as "no limit".
    if !(bytes.is_finite() && bytes <= MAX_SIZE as f64) {
        return Err(format!("invalid size {s:?}: larger than 1 EiB"));
    }
    Ok(bytes as u64)
}

/// Parses `--tmpfs PATH[:OPTIONS]`: Docker's comma-separated options `rw`, `ro`, `exec`,
/// `noexec`, `nosuid`, `nodev`, `size=SIZE`, `mode=OCTAL`, `uid=N`, `gid=N` (container ids), and
/// nsrun's own bare `SIZE`.
/// Docker's defaults: noexec (`exec` lifts it), nosuid, nodev. `suid` and `dev` are refused
/// (every tmpfs of a run is nosuid and nodev).
pub fn parse_tmpfs(s: &str) -> Result<TmpfsMount, String> {
    let (target, opts) = s.split_once(':').unwrap_or((s, ""));
    if !target.starts_with('/') {
        return Err(format!(
            "invalid tmpfs {s:?}: path {target:?} must be absolute"
        ));
    }
    let mut t = TmpfsMount {
        target: target.into(),
        size: DEFAULT_TMP_SIZE,
        read_only: false,
        // Docker mounts every --tmpfs noexec unless told `exec`.
        noexec: true,
        mode: None,
        uid: None,
        gid: None,
    };
    let bad = |why: String| format!("invalid tmpfs {s:?}: {why}");
    for opt in opts.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        match opt.split_once('=') {
            None => match opt {
                "rw" => t.read_only = false,
                "ro" => t.read_only = true,
                "exec" => t.noexec = false,
                "noexec" => t.noexec = true,
                "nosuid" | "nodev" => {}
                "suid" | "dev" => {
                    return Err(bad(format!(
                        "{opt}: every tmpfs of a run is nosuid and nodev (the run may not \
                         create devices or gain privileges)"
                    )))
                }
                size => t.size = parse_size(size).map_err(bad)?,
            },
            Some(("size", v)) => t.size = parse_size(v).map_err(bad)?,
            Some(("mode", v)) => {
                let m = u32::from_str_radix(v, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| bad(format!("mode {v:?}: expected octal, e.g. 1777")))?;
                t.mode = Some(m);
            }
            Some((k @ ("uid" | "gid"), v)) => {
                let id = v
                    .parse::<u32>()
                    .map_err(|_| bad(format!("{k} {v:?}: expected a number")))?;
                if k == "uid" {
                    t.uid = Some(id);
                } else {
                    t.gid = Some(id);
                }
            }
            Some((k, _)) => {
                return Err(bad(format!(
                    "unsupported option {k:?}: expected rw, ro, exec, noexec, nosuid, nodev, \
                     size=, mode=, uid= or gid="
                )))
            }
        }
    }
    Ok(t)
}

/// Docker's bind propagation flags: a run's mount namespace is private, so none is honoured.
const PROPAGATION: &[&str] = &[
    "shared", "rshared", "slave", "rslave", "private", "rprivate",
];

/// Parses `-v HOST:CONTAINER[:OPTIONS]`: `ro`, `rw`, `z`/`Z` (accepted, ignored: returned as a
/// note), the macOS consistency hints `consistent`, `cached`, `delegated` (accepted, no effect
/// on Linux, as in Docker); propagation flags are refused with the reason.
pub fn parse_volume(s: &str) -> Result<(BindMount, Vec<String>), String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, opts) = match parts.as_slice() {
        [src, dst] => (*src, *dst, ""),
        [src, dst, opts] => (*src, *dst, *opts),
        _ => {
            return Err(format!(
                "invalid volume {s:?}: expected HOST:CONTAINER[:OPTIONS]"
            ))
        }
    };
    let mut read_only = false;
    let mut notes = Vec::new();
    for opt in opts.split(',').filter(|o| !o.is_empty()) {
        match opt {
            "ro" | "readonly" => read_only = true,
            "rw" => read_only = false,
            "z" | "Z" => notes.push(format!(
                "-v {s}: {opt} (SELinux relabelling) ignored: nsrun never relabels host files"
            )),
            "consistent" | "cached" | "delegated" => {}
            p if PROPAGATION.contains(&p) => {
                return Err(format!(
                    "invalid volume {s:?}: propagation {p:?} is not supported: a run's mounts \
                     are private to it, so nothing propagates either way"
                ))
            }
            other => {
                return Err(format!(
                    "invalid volume option {other:?} in {s:?}: expected ro, rw, z or Z"
                ))
            }
        }
    }
    if !source.starts_with('/') {
        return Err(format!(
            "invalid volume {s:?}: host path {source:?} must be absolute (nsrun has no named volumes)"
        ));
    }
    if !target.starts_with('/') {
        return Err(format!(
            "invalid volume {s:?}: container path {target:?} must be absolute"
        ));
    }
    Ok((
        BindMount {
            source: source.into(),
            target: target.into(),
            read_only,
        },
        notes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_go_units_spells_them() {
        for (s, v) in [
            ("64m", 64 << 20),
            ("64M", 64 << 20),
            ("64mb", 64 << 20),
            ("64MiB", 64 << 20),
            ("64 m", 64 << 20),
            ("65536k", 64 << 20),
            ("1.5g", 3 << 29),
            ("1G", 1 << 30),
            ("4096", 4096),
            ("4096b", 4096),
            ("1t", 1 << 40),
            ("1p", 1 << 50),
        ] {
            assert_eq!(parse_size(s), Ok(v), "{s}");
        }
        for s in [
            "", "lots", "m", "64  m", "64 mm", "-1", ".5m", "5.m", "1e3", "64x",
        ] {
            assert!(parse_size(s).is_err(), "{s}");
        }
        assert!(parse_size("99999999999999999999").is_err());
    }

    #[test]
    fn tmpfs_options_as_docker_documents_them() {
        let t = parse_tmpfs("/run:rw,noexec,nosuid,size=65536k").unwrap();
        assert_eq!((t.size, t.noexec, t.read_only), (64 << 20, true, false));
        let t = parse_tmpfs("/x:ro,mode=700,size=1.5m").unwrap();
        assert_eq!((t.mode, t.read_only, t.size), (Some(0o700), true, 3 << 19));
        assert_eq!(parse_tmpfs("/x:16m").unwrap().size, 16 << 20);
        assert!(parse_tmpfs("/x").unwrap().noexec);
        assert!(!parse_tmpfs("/x:exec").unwrap().noexec);
        assert_eq!(parse_tmpfs("/x").unwrap().size, DEFAULT_TMP_SIZE);
        let t = parse_tmpfs("/x:uid=1000,gid=100").unwrap();
        assert_eq!((t.uid, t.gid), (Some(1000), Some(100)));
        assert_eq!(t.data(), "size=67108864,mode=1777,uid=1000,gid=100");
        for bad in [
            "x:16m",
            "/x:suid",
            "/x:mode=999",
            "/x:uid=me",
            "/x:nr_inodes=1",
            "/x:size=lots",
        ] {
            assert!(parse_tmpfs(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn volume_options() {
        let (b, notes) = parse_volume("/a:/b:ro,Z").unwrap();
        assert!(b.read_only);
        assert_eq!(notes.len(), 1);
        let (b, notes) = parse_volume("/a:/b").unwrap();
        assert!(!b.read_only && notes.is_empty());
        let e = parse_volume("/a:/b:rshared").unwrap_err();
        assert!(e.contains("propagation"), "{e}");
        assert!(parse_volume("/a:/b:bogus").is_err());
        assert!(parse_volume("vol:/b").is_err());
    }
}
