//! The unpacker against hostile layers: one test per attack, each asserting that nothing outside
//! the staging directory is created or changed. Runs as root (ownership shifted) and unprivileged
//! (ownership squashed to the caller).
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

mod support;

mod images_common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use images_common::*;
use nsrun::ids::Ownership;
use nsrun::store::default_ownership;
use nsrun::unpack::{Limits, UnpackError, Unpacker};

/// A sandbox for one test: `outer/` holds `staging/` (the unpack root) and bait files next to it.
struct Fixture {
    _tmp: tempfile::TempDir,
    outer: PathBuf,
    staging: PathBuf,
    before: Vec<(PathBuf, String)>,
    passwd_before: (Vec<u8>, u64, i64),
}

fn passwd_state() -> (Vec<u8>, u64, i64) {
    let md = std::fs::metadata("/etc/passwd").unwrap();
    (
        std::fs::read("/etc/passwd").unwrap(),
        md.nlink(),
        md.mtime(),
    )
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let outer = tmp.path().join("outer");
        let staging = outer.join("staging");
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::write(outer.join("victim"), "original").unwrap();
        std::fs::create_dir(outer.join("victim-dir")).unwrap();
        std::fs::write(outer.join("victim-dir/keep"), "keep").unwrap();
        let before = outside_snapshot(&outer);
        Fixture {
            _tmp: tmp,
            outer,
            staging,
            before,
            passwd_before: passwd_state(),
        }
    }

    fn unpack_with(
        &self,
        layers: &[Vec<u8>],
        limits: Limits,
    ) -> Result<nsrun::unpack::UnpackStats, UnpackError> {
        let mut u = Unpacker::new(&self.staging, default_ownership(), limits)?;
        for l in layers {
            u.apply_layer(&l[..])?;
        }
        u.finish()
    }

    fn unpack(&self, layers: &[Vec<u8>]) -> Result<nsrun::unpack::UnpackStats, UnpackError> {
        self.unpack_with(layers, Limits::default())
    }

    /// Nothing outside staging changed, and the host's /etc/passwd is untouched.
    fn assert_outside_untouched(&self) {
        assert_eq!(
            outside_snapshot(&self.outer),
            self.before,
            "something outside staging changed"
        );
        assert_eq!(passwd_state(), self.passwd_before, "/etc/passwd changed");
    }

    fn inside(&self, p: &str) -> PathBuf {
        self.staging.join(p)
    }
}

fn outside_snapshot(outer: &Path) -> Vec<(PathBuf, String)> {
    snapshot(outer)
        .into_iter()
        .filter(|(p, _)| !p.starts_with("staging"))
        .collect()
}

#[test]
fn dotdot_escape_is_refused() {
    let f = Fixture::new();
    let mut t = Tar::new();
    t.file("ok", b"fine")
        .file("../victim", b"pwned")
        .file("../escaped", b"x");
    let err = f.unpack(&[t.finish()]).unwrap_err();
    assert!(matches!(err, UnpackError::DotDot { .. }), "{err}");
    assert!(err.to_string().contains("../victim"), "{err}");
    f.assert_outside_untouched();
    // Also hidden mid-path.
    let mut t = Tar::new();
    t.dir("a").file("a/../../victim", b"pwned");
    assert!(matches!(
        f.unpack(&[t.finish()]),
        Err(UnpackError::DotDot { .. })
    ));
    f.assert_outside_untouched();
}

#[test]
fn absolute_path_lands_inside() {
    let f = Fixture::new();
    let victim = f.outer.join("victim");
    let mut t = Tar::new();
    t.file(victim.to_str().unwrap(), b"pwned")
        .file("/abs", b"inside");
    f.unpack(&[t.finish()]).unwrap();
    f.assert_outside_untouched();
    assert_eq!(std::fs::read(f.inside("abs")).unwrap(), b"inside");
    let relocated = f.staging.join(victim.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(relocated).unwrap(), b"pwned");
}

#[test]
fn symlink_then_write_through_stays_inside() {
    let f = Fixture::new();
    // The image has its own /etc: a -> /etc resolves to it, inside.
    let mut t = Tar::new();
    t.dir("etc")
        .symlink("a", "/etc")
        .file("a/passwd", b"root::0:0::/:/bin/sh\n");
    // A link to the real outer directory by absolute path: inside, that directory does not exist.
    t.symlink("b", f.outer.to_str().unwrap());
    f.unpack(&[t.finish()]).unwrap();
    f.assert_outside_untouched();
    assert_eq!(
        std::fs::read(f.inside("etc/passwd")).unwrap(),
        b"root::0:0::/:/bin/sh\n"
    );
    assert!(std::fs::symlink_metadata(f.inside("a"))
        .unwrap()
        .file_type()
        .is_symlink());
    let mut t = Tar::new();
    t.file("b/victim", b"pwned");
    let err = f.unpack(&[t.finish()]).unwrap_err();
    assert!(matches!(err, UnpackError::DanglingParent { .. }), "{err}");
    f.assert_outside_untouched();
    // Without /etc in the image: refused, and the host's /etc is untouched.
    let g = Fixture::new();
    let mut t = Tar::new();
    t.symlink("a", "/etc").file("a/passwd", b"pwned");
    let err = g.unpack(&[t.finish()]).unwrap_err();
    assert!(matches!(err, UnpackError::DanglingParent { .. }), "{err}");
    g.assert_outside_untouched();
    assert!(!g.inside("etc").exists());
}

#[test]
fn symlink_in_a_later_layer_is_not_followed() {
    // The layer-on-layer variant: layer 1 plants the link, layer 2 writes through it.
    let f = Fixture::new();
    let mut l1 = Tar::new();
    l1.symlink("etc", "/etc")
        .symlink("out", f.outer.to_str().unwrap());
    let mut l2 = Tar::new();
    l2.file("etc/passwd", b"pwned");
    let err = f.unpack(&[l1.finish(), l2.finish()]).unwrap_err();
    assert!(matches!(err, UnpackError::DanglingParent { .. }), "{err}");
    let mut l3 = Tar::new();
    l3.file("out/victim", b"pwned");
    assert!(f.unpack(&[l3.finish()]).is_err());
    // Replacing the link itself is fine: the new file replaces the symlink, not its target.
    let mut l4 = Tar::new();
    l4.file("out", b"now a file");
    f.unpack(&[l4.finish()]).unwrap();
    assert_eq!(std::fs::read(f.inside("out")).unwrap(), b"now a file");
    f.assert_outside_untouched();
}

#[test]
fn symlink_chain_stays_inside() {
    let f = Fixture::new();
    let outer = f.outer.to_str().unwrap().to_string();
    let mut t = Tar::new();
    t.symlink("a", "b")
        .symlink("b", "c/../d")
        .dir("c")
        .symlink("d", "../../../../../../..")
        .symlink("e", &outer)
        .symlink("f", "e")
        .file("a/victim", b"pwned-a");
    f.unpack(&[t.finish()]).unwrap();
    f.assert_outside_untouched();
    // a -> b -> c/../d -> ../../.. (clamped at the root): a/victim is /victim inside.
    assert_eq!(std::fs::read(f.inside("victim")).unwrap(), b"pwned-a");
    let mut t = Tar::new();
    t.file("f/victim", b"pwned-f");
    assert!(f.unpack(&[t.finish()]).is_err());
    f.assert_outside_untouched();
}

#[test]
fn hardlink_to_outside_is_refused() {
    let f = Fixture::new();
    let victim = f.outer.join("victim");
    let mut t = Tar::new();
    t.hardlink("l1", victim.to_str().unwrap());
    let err = f.unpack(&[t.finish()]).unwrap_err();
    assert!(matches!(err, UnpackError::BadLinkTarget { .. }), "{err}");
    f.assert_outside_untouched();

    let mut t = Tar::new();
    t.hardlink("l2", "/etc/passwd");
    assert!(matches!(
        f.unpack(&[t.finish()]),
        Err(UnpackError::BadLinkTarget { .. })
    ));
    let mut t = Tar::new();
    t.hardlink("l3", "../victim");
    assert!(matches!(
        f.unpack(&[t.finish()]),
        Err(UnpackError::BadLinkTarget { .. })
    ));
    // Through a symlink: resolved inside, so it names a missing inside file.
    let mut t = Tar::new();
    t.symlink("s", f.outer.to_str().unwrap())
        .hardlink("l4", "s/victim");
    assert!(matches!(
        f.unpack(&[t.finish()]),
        Err(UnpackError::BadLinkTarget { .. })
    ));
    f.assert_outside_untouched();
    assert_eq!(std::fs::metadata(&victim).unwrap().nlink(), 1);
}

#[test]
fn hardlink_inside_works() {
    let f = Fixture::new();
    let mut t = Tar::new();
    t.dir("d")
        .file("d/orig", b"data")
        .hardlink("d/copy", "d/orig")
        .hardlink("top", "/d/orig");
    f.unpack(&[t.finish()]).unwrap();
    let a = std::fs::metadata(f.inside("d/orig")).unwrap();
    let b = std::fs::metadata(f.inside("d/copy")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.nlink(), 3);
    f.assert_outside_untouched();
}

#[test]
fn whiteout_naming_dotdot_or_outside_is_refused() {
    let f = Fixture::new();
    let mut t = Tar::new();
    t.file(".wh...", b"");
    let err = f.unpack(&[t.finish()]).unwrap_err();
    assert!(matches!(err, UnpackError::BadWhiteout { .. }), "{err}");
    let mut t = Tar::new();
    t.file("../.wh.victim", b"");
    assert!(matches!(
        f.unpack(&[t.finish()]),
        Err(UnpackError::DotDot { .. })
    ));
    let mut t = Tar::new();
    t.dir("x").file("x/.wh..", b"");
    assert!(matches!(
        f.unpack(&[t.finish()]),
        Err(UnpackError::BadWhiteout { .. })
    ));
    // Through a symlink to the outside directory: resolved inside, so nothing to remove.
    let mut t = Tar::new();
    t.symlink("s", f.outer.to_str().unwrap())
        .file("s/.wh.victim", b"")
        .file("s/.wh.victim-dir", b"")
        .symlink("t", f.outer.join("victim-dir").to_str().unwrap())
        .file("t/.wh..wh..opq", b"");
    f.unpack(&[t.finish()]).unwrap();
    f.assert_outside_untouched();
}

#[test]
fn whiteouts_and_opaque_dirs() {
    let f = Fixture::new();
    let mut l1 = Tar::new();
    l1.dir("etc")
        .file("etc/a", b"a")
        .file("etc/b", b"b")
        .dir("opq")
        .file("opq/old", b"old")
        .dir("gone")
        .file("gone/x", b"x");
    let mut l2 = Tar::new();
    l2.file("etc/.wh.a", b"")
        .file(".wh.gone", b"")
        .dir("opq")
        .file("opq/new", b"new")
        .file("opq/.wh..wh..opq", b"");
    f.unpack(&[l1.finish(), gzip(&l2.finish())]).unwrap();
    assert!(!f.inside("etc/a").exists());
    assert!(f.inside("etc/b").exists());
    assert!(!f.inside("gone").exists());
    assert!(!f.inside("opq/old").exists());
    assert_eq!(std::fs::read(f.inside("opq/new")).unwrap(), b"new");
    assert!(!f.inside("etc/.wh.a").exists());
    f.assert_outside_untouched();
}

#[test]
fn device_node_is_skipped_with_a_warning() {
    let f = Fixture::new();
    let mut t = Tar::new();
    t.entry("dev/sda", Kind::Char(8, 0), 0o660, 0, 0)
        .entry("dev/null", Kind::Char(1, 3), 0o666, 0, 0)
        .entry("fifo", Kind::Fifo, 0o644, 0, 0);
    let stats = f.unpack(&[t.finish()]).unwrap();
    assert_eq!(
        stats.devices_skipped,
        vec!["dev/sda".to_string(), "dev/null".to_string()]
    );
    assert!(!f.inside("dev/sda").exists() && !f.inside("dev/null").exists());
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(f.inside("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    f.assert_outside_untouched();
}

#[test]
fn setuid_root_file_loses_its_bits() {
    let f = Fixture::new();
    let mut t = Tar::new();
    t.entry("su", Kind::File(b"\x7fELF".to_vec()), 0o4755, 0, 0)
        .entry("sg", Kind::File(b"x".to_vec()), 0o2755, 0, 0)
        .entry("sticky", Kind::Dir, 0o1777, 0, 0);
    let stats = f.unpack(&[t.finish()]).unwrap();
    assert_eq!(stats.setid_stripped, 2);
    assert_eq!(
        std::fs::metadata(f.inside("su")).unwrap().mode() & 0o7777,
        0o755
    );
    assert_eq!(
        std::fs::metadata(f.inside("sg")).unwrap().mode() & 0o7777,
        0o755
    );
    assert_eq!(
        std::fs::metadata(f.inside("sticky")).unwrap().mode() & 0o7777,
        0o1777
    );
    let md = std::fs::metadata(f.inside("su")).unwrap();
    match default_ownership() {
        Ownership::Shift { uid_base, .. } => assert_eq!(md.uid(), uid_base),
        Ownership::Squash { uid, .. } => assert_eq!(md.uid(), uid),
    }
    f.assert_outside_untouched();
}

#[test]
fn gzip_bomb_stops_at_the_size_limit() {
    let f = Fixture::new();
    // 64 MiB of zeros in one file: about 64 kB of gzip.
    let mut t = Tar::new();
    t.file("bomb", &vec![0u8; 64 << 20]);
    let bomb = gzip(&t.finish());
    assert!(bomb.len() < 1 << 20);
    let limits = Limits {
        max_bytes: 8 << 20,
        max_entries: 1000,
    };
    let err = f.unpack_with(&[bomb], limits).unwrap_err();
    assert!(matches!(err, UnpackError::TooLarge { .. }), "{err}");
    let written = std::fs::metadata(f.inside("bomb"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(written <= 8 << 20, "wrote {written} bytes past the limit");
    f.assert_outside_untouched();
}

#[test]
fn entry_count_limit() {
    let f = Fixture::new();
    let mut t = Tar::new();
    for i in 0..50 {
        t.file(&format!("f{i}"), b"");
    }
    let limits = Limits {
        max_bytes: 1 << 30,
        max_entries: 10,
    };
    let err = f.unpack_with(&[zstd(&t.finish())], limits).unwrap_err();
    assert!(
        matches!(err, UnpackError::TooManyEntries { limit: 10 }),
        "{err}"
    );
}

#[test]
fn missing_end_padding_is_accepted() {
    let f = Fixture::new();
    let mut t = Tar::new();
    t.file("a", b"one").file("b", b"two");
    f.unpack(&[t.finish_unpadded(), zstd(&t.finish_unpadded())])
        .unwrap();
    assert_eq!(std::fs::read(f.inside("b")).unwrap(), b"two");
}

#[test]
fn replacing_types_across_layers_and_readonly_dirs() {
    let f = Fixture::new();
    let mut l1 = Tar::new();
    l1.entry("ro", Kind::Dir, 0o555, 0, 0)
        .file("ro/f", b"1")
        .dir("was-dir")
        .file("was-dir/x", b"x")
        .file("was-file", b"f");
    let mut l2 = Tar::new();
    l2.file("ro/g", b"2")
        .file("was-dir", b"now a file")
        .dir("was-file")
        .file("was-file/y", b"y");
    f.unpack(&[l1.finish(), l2.finish()]).unwrap();
    assert_eq!(std::fs::read(f.inside("ro/g")).unwrap(), b"2");
    assert_eq!(
        std::fs::metadata(f.inside("ro"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o555
    );
    assert_eq!(std::fs::read(f.inside("was-dir")).unwrap(), b"now a file");
    assert_eq!(std::fs::read(f.inside("was-file/y")).unwrap(), b"y");
    // The unprivileged owner can still remove the tree.
    nsrun::unpack::remove_tree(&f.staging).unwrap();
    assert!(!f.staging.exists());
}

#[test]
fn shift_ownership_maps_ids() {
    if !nix::unistd::geteuid().is_root() {
        // Unprivileged: shifting needs CAP_CHOWN and must be refused up front.
        let tmp = tempfile::tempdir().unwrap();
        let err = Unpacker::new(
            tmp.path(),
            Ownership::Shift {
                uid_base: 100000,
                gid_base: 100000,
                size: 65536,
            },
            Limits::default(),
        )
        .err()
        .expect("shift refused without root");
        assert!(matches!(err, UnpackError::Ownership { .. }), "{err}");
        return;
    }
    let f = Fixture::new();
    let mut t = Tar::new();
    t.entry("mine", Kind::File(b"x".to_vec()), 0o644, 1000, 1001)
        .entry("l", Kind::Symlink("mine".into()), 0o777, 5, 6);
    let mut u = Unpacker::new(
        &f.staging,
        Ownership::Shift {
            uid_base: 200000,
            gid_base: 300000,
            size: 65536,
        },
        Limits::default(),
    )
    .unwrap();
    u.apply_layer(&t.finish()[..]).unwrap();
    u.finish().unwrap();
    let md = std::fs::metadata(f.inside("mine")).unwrap();
    assert_eq!((md.uid(), md.gid()), (201000, 301001));
    let md = std::fs::symlink_metadata(f.inside("l")).unwrap();
    assert_eq!((md.uid(), md.gid()), (200005, 300006));
    // Out of range ids are refused.
    let mut t = Tar::new();
    t.entry("big", Kind::File(vec![]), 0o644, 70000, 0);
    let mut u = Unpacker::new(
        &f.staging,
        Ownership::Shift {
            uid_base: 200000,
            gid_base: 300000,
            size: 65536,
        },
        Limits::default(),
    )
    .unwrap();
    assert!(matches!(
        u.apply_layer(&t.finish()[..]),
        Err(UnpackError::IdOutOfRange { .. })
    ));
}

/// Random hostile layers: names built from `..`, `.`, absolute prefixes, symlinks to the outside
/// and to each other, hardlinks, whiteouts and opaque markers, over several layers. Whatever the
/// unpacker accepts or refuses, nothing outside staging may change and it must not panic.
#[test]
fn random_hostile_layers_never_escape() {
    let f = Fixture::new();
    let outer = f.outer.to_str().unwrap().to_string();
    let parts = [
        "a",
        "b",
        "c",
        "..",
        ".",
        "etc",
        "victim",
        "victim-dir",
        "keep",
        ".wh.keep",
        ".wh.victim",
        ".wh..wh..opq",
        "",
        "passwd",
    ];
    let targets = [
        outer.clone(),
        format!("{outer}/victim-dir"),
        "/".into(),
        "/etc".into(),
        "..".into(),
        "../..".into(),
        "a".into(),
        "b/c".into(),
        "/a/../../..".into(),
        "victim".into(),
    ];
    // A small deterministic generator: the failures it finds must reproduce.
    let mut x: u64 = 0x853c49e6748fea9b;
    let mut next = |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    let mut accepted = 0;
    for round in 0..300 {
        let staging = f.outer.join("staging");
        let _ = nsrun::unpack::remove_tree(&staging);
        std::fs::create_dir(&staging).unwrap();
        let mut layers = Vec::new();
        for _ in 0..1 + next(3) {
            let mut t = Tar::new();
            for _ in 0..1 + next(8) {
                let depth = 1 + next(3);
                let mut path = if next(4) == 0 {
                    String::from("/")
                } else {
                    String::new()
                };
                for d in 0..depth {
                    if d > 0 {
                        path.push('/');
                    }
                    path.push_str(parts[next(parts.len())]);
                }
                if next(6) == 0 {
                    path = format!("{outer}/{}", parts[next(parts.len())]);
                }
                match next(6) {
                    0 | 1 => t.file(&path, b"pwned"),
                    2 => t.dir(&path),
                    3 => t.symlink(&path, &targets[next(targets.len())]),
                    4 => t.hardlink(&path, &targets[next(targets.len())]),
                    _ => t.entry(&path, Kind::File(b"s".to_vec()), 0o4755, 0, 0),
                };
            }
            layers.push(if next(2) == 0 {
                t.finish()
            } else {
                gzip(&t.finish())
            });
        }
        if f.unpack(&layers).is_ok() {
            accepted += 1;
        }
        assert_eq!(
            outside_snapshot(&f.outer),
            f.before,
            "round {round} changed the outside"
        );
        assert_eq!(
            passwd_state(),
            f.passwd_before,
            "round {round} changed /etc/passwd"
        );
    }
    eprintln!("accepted {accepted} of 300 random layers");
    // Both outcomes must have been exercised for the test to mean something.
    assert!(
        accepted > 10 && accepted < 290,
        "accepted {accepted} of 300"
    );
}

/// A shift whose range holds host id 0, or runs past `u32::MAX` (where `base + id` wraps to 0,
/// or reaches -1, chown's "unchanged"), would give cache files to host root: refused before
/// anything is written, as root and unprivileged alike. So is a squash to -1.
#[test]
fn ownership_reaching_host_root_is_refused() {
    use nsrun::ids::RANGE_SIZE;
    let shift = |uid_base, gid_base| Ownership::Shift {
        uid_base,
        gid_base,
        size: RANGE_SIZE,
    };
    for ownership in [
        shift(0, 0),
        shift(1_000_000, 0),
        shift(4_294_967_000, 4_294_967_000),
        shift(u32::MAX, u32::MAX),
        shift(u32::MAX - RANGE_SIZE + 1, 1_000_000),
        Ownership::Shift {
            uid_base: 1_000_000,
            gid_base: 1_000_000,
            size: 0,
        },
        Ownership::Squash {
            uid: u32::MAX,
            gid: u32::MAX,
        },
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let before = std::fs::metadata(tmp.path()).unwrap();
        let err = Unpacker::new(tmp.path(), ownership, Limits::default())
            .err()
            .unwrap_or_else(|| panic!("{ownership:?} accepted"));
        assert!(
            matches!(err, UnpackError::BadOwnership { .. }),
            "{ownership:?}: {err}"
        );
        assert_eq!(err.to_string().lines().count(), 1, "{err}");
        let after = std::fs::metadata(tmp.path()).unwrap();
        assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
        assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none());
    }
}

/// The highest base allowed maps the last container id to `u32::MAX - 1`, never further.
#[test]
fn shift_at_the_top_of_the_id_space_stays_in_range() {
    use nsrun::ids::RANGE_SIZE;
    if !nix::unistd::geteuid().is_root() {
        crate::support::skipped("shifting ids needs root");
        return;
    }
    let f = Fixture::new();
    let base = u32::MAX - RANGE_SIZE;
    let mut t = Tar::new();
    t.entry(
        "last",
        Kind::File(b"x".to_vec()),
        0o644,
        (RANGE_SIZE - 1) as u64,
        296,
    );
    let mut u = Unpacker::new(
        &f.staging,
        Ownership::Shift {
            uid_base: base,
            gid_base: base,
            size: RANGE_SIZE,
        },
        Limits::default(),
    )
    .unwrap();
    u.apply_layer(&t.finish()[..]).unwrap();
    u.finish().unwrap();
    let md = std::fs::metadata(f.inside("last")).unwrap();
    assert_eq!((md.uid(), md.gid()), (u32::MAX - 1, base + 296));
    f.assert_outside_untouched();
}

/// A layer that is not a tar at all: the error is one line and does not quote the bytes.
#[test]
fn non_tar_layer_error_is_one_line() {
    let f = Fixture::new();
    let junk =
        b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
            .repeat(20);
    let err = f.unpack(&[junk]).expect_err("junk accepted as a layer");
    let msg = err.to_string();
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(!msg.contains("daemon"), "{msg}");
}
