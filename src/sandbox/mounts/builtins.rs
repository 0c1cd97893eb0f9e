//! Parent side: the steps for the mounts nsrun makes itself, whatever the caller asks for: the
//! setup tmpfs and first pivot, the read-only root (with the skeleton of missing mountpoints),
//! `/proc`, `/dev`, `/sys`, and Docker's masks over `/proc` and `/sys`. Their place in the
//! order is [`super::plan()`]'s.

use std::ffi::CString;
use std::path::Path;

use super::super::masks::{MASKED_PATHS, READONLY_PATHS};
use super::super::spec::{Network, ProcMode};
use super::cstr;
use super::plan::{mnt, Planner};
use super::resolve::{Kind, Resolved};
use super::step::{Op, Target, Tolerate};
use super::MountError;

/// Where the child mounts its private tmpfs before the first pivot.
const BASE: &str = "/tmp";
/// Host devices bound into the container's `/dev` (no mknod in a user namespace).
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// Size of `/dev` (it holds only mountpoints and symlinks) and of `/dev/shm` (unless
/// `--shm-size` says otherwise), as in Docker.
const DEV_SIZE: &str = "size=64k,mode=755";
const SHM_SIZE: &str = "size=64m,mode=1777";

impl Planner<'_> {
    /// The base tmpfs, the first pivot, the skeleton and the read-only root.
    pub(super) fn base_and_root(&mut self, overlay_root: bool) -> Result<(), MountError> {
        self.push(
            mnt(
                None,
                Target::Setup(cstr("/")?),
                None,
                libc::MS_SLAVE | libc::MS_REC,
                None,
            ),
            "make / a slave mount (no propagation back to the host)",
            Tolerate::Nothing,
        );
        self.push(
            mnt(
                Some(c"tmpfs".into()),
                Target::Setup(cstr(BASE)?),
                Some(c"tmpfs"),
                libc::MS_NOSUID | libc::MS_NODEV,
                Some("size=1m,mode=755"),
            ),
            format!("mount tmpfs on {BASE} (private to this mount namespace)"),
            Tolerate::Nothing,
        );
        self.push(
            Op::Mkdir {
                path: cstr(&format!("{BASE}/old"))?,
                mode: 0o755,
            },
            format!("mkdir {BASE}/old"),
            Tolerate::Nothing,
        );
        self.push(
            Op::PivotKeepOld {
                new_root: cstr(BASE)?,
                put_old: cstr("old")?,
            },
            format!("pivot_root into the tmpfs on {BASE}"),
            Tolerate::Nothing,
        );
        self.push(
            Op::Mkdir {
                path: cstr("/root")?,
                mode: 0o755,
            },
            "mkdir /root",
            Tolerate::Nothing,
        );

        let mut lowers: Vec<String> = Vec::new();
        for l in self.layers {
            lowers.push(self.source(l)?.into_string().expect("ASCII"));
        }
        if !self.skeleton.is_empty() || (overlay_root && lowers.len() == 1) {
            // An overlay needs two lower layers; an empty skeleton is the cheapest second one.
            self.push(
                Op::Mkdir {
                    path: cstr("/skel")?,
                    mode: 0o755,
                },
                "mkdir /skel",
                Tolerate::Nothing,
            );
            let skeleton = std::mem::take(&mut self.skeleton);
            for (path, kind) in &skeleton {
                let mut acc = String::from("/skel");
                let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
                for (i, c) in comps.iter().enumerate() {
                    acc.push('/');
                    acc.push_str(c);
                    let op = if i + 1 == comps.len() && *kind == Kind::File {
                        Op::Touch { path: cstr(&acc)? }
                    } else {
                        Op::Mkdir {
                            path: cstr(&acc)?,
                            mode: 0o755,
                        }
                    };
                    self.push(
                        op,
                        format!("create mountpoint {path} (missing from the rootfs)"),
                        Tolerate::Nothing,
                    );
                }
            }
            lowers.insert(0, "/skel".into());
        }
        if lowers.len() == 1 {
            let src = cstr(&lowers[0])?;
            self.push(
                mnt(
                    Some(src),
                    Target::Setup(cstr("/root")?),
                    None,
                    libc::MS_BIND | libc::MS_REC,
                    None,
                ),
                format!("bind the rootfs {} on /root", self.layers[0].display()),
                Tolerate::Nothing,
            );
            self.push(
                Op::ReadOnly {
                    target: Target::Setup(cstr("/root")?),
                },
                "make the rootfs read-only",
                Tolerate::Nothing,
            );
        } else {
            let data = format!(
                "lowerdir={}",
                lowers
                    .iter()
                    .map(|l| escape_overlay(l))
                    .collect::<Vec<_>>()
                    .join(":")
            );
            if data.len() >= 4000 {
                return Err(MountError::TooManyLayers(lowers.len()));
            }
            self.push(
                mnt(
                    Some(c"overlay".into()),
                    Target::Setup(cstr("/root")?),
                    Some(c"overlay"),
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
                    Some(&data),
                ),
                "mount the read-only overlay of the rootfs (and of mountpoints it lacks) on /root",
                Tolerate::Nothing,
            );
        }
        self.push(Op::OpenRoot, "open the container root", Tolerate::Nothing);
        Ok(())
    }

    pub(super) fn proc(&mut self, t: &Resolved, mode: ProcMode) -> Result<(), MountError> {
        if mode == ProcMode::HostBind {
            // Recursive: the kernel refuses to bind a /proc whose masks (submounts a container
            // runtime put there) would be left behind, and they must stay anyway.
            let src = self.source(Path::new("/proc"))?;
            self.push(
                mnt(
                    Some(src),
                    t.in_root(),
                    None,
                    libc::MS_BIND | libc::MS_REC,
                    None,
                ),
                "bind the host's /proc on /proc (--proc host-bind)",
                Tolerate::Nothing,
            );
            return Ok(());
        }
        self.push(
            mnt(
                Some(c"proc".into()),
                t.in_root(),
                Some(c"proc"),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                None,
            ),
            "mount a fresh proc on /proc",
            Tolerate::Nothing,
        );
        Ok(())
    }

    pub(super) fn dev(&mut self, t: &Resolved, shm_size: Option<u64>) -> Result<(), MountError> {
        self.push(
            mnt(
                Some(c"tmpfs".into()),
                t.in_root(),
                Some(c"tmpfs"),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                Some(DEV_SIZE),
            ),
            "mount tmpfs on /dev",
            Tolerate::Nothing,
        );
        // Below here everything is in the tmpfs just mounted: plain paths cannot be redirected.
        let path = |name: &str| cstr(&format!("/root{}", t.child(name).path));
        for d in DEVICES {
            let source = self.source(Path::new(&format!("/dev/{d}")))?;
            self.push(
                Op::Touch { path: path(d)? },
                format!("create /dev/{d}"),
                Tolerate::Nothing,
            );
            self.push(
                mnt(
                    Some(source),
                    t.child(d).in_root(),
                    None,
                    libc::MS_BIND,
                    None,
                ),
                format!("bind the host's /dev/{d}"),
                Tolerate::Nothing,
            );
        }
        for (link, to) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
            ("ptmx", "pts/ptmx"),
            ("core", "/proc/kcore"),
        ] {
            self.push(
                Op::Symlink {
                    target: cstr(to)?,
                    link: path(link)?,
                },
                format!("symlink /dev/{link}"),
                Tolerate::Nothing,
            );
        }
        self.push(
            Op::Mkdir {
                path: path("pts")?,
                mode: 0o755,
            },
            "mkdir /dev/pts",
            Tolerate::Nothing,
        );
        self.push(
            mnt(
                Some(c"devpts".into()),
                t.child("pts").in_root(),
                Some(c"devpts"),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                Some("newinstance,ptmxmode=0666,mode=0620"),
            ),
            "mount devpts on /dev/pts",
            Tolerate::Nothing,
        );
        self.push(
            Op::Mkdir {
                path: path("shm")?,
                mode: 0o1777,
            },
            "mkdir /dev/shm",
            Tolerate::Nothing,
        );
        self.push(
            mnt(
                Some(c"shm".into()),
                t.child("shm").in_root(),
                Some(c"tmpfs"),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                Some(
                    &shm_size
                        .map_or_else(|| SHM_SIZE.to_string(), |s| format!("size={s},mode=1777")),
                ),
            ),
            "mount tmpfs on /dev/shm",
            Tolerate::Nothing,
        );
        self.push(
            Op::Mkdir {
                path: path("mqueue")?,
                mode: 0o755,
            },
            "mkdir /dev/mqueue",
            Tolerate::Nothing,
        );
        self.push(
            mnt(
                Some(c"mqueue".into()),
                t.child("mqueue").in_root(),
                Some(c"mqueue"),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                None,
            ),
            "mount mqueue on /dev/mqueue",
            Tolerate::Anything,
        );
        Ok(())
    }

    pub(super) fn sys(&mut self, t: &Resolved, network: Network) {
        // A fresh sysfs shows the network devices of our own namespace only, and is allowed only
        // there; with the host's network there is no sysfs of our own to show, so /sys stays empty.
        if network == Network::Host {
            return;
        }
        self.push(
            mnt(
                Some(c"sysfs".into()),
                t.in_root(),
                Some(c"sysfs"),
                libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                None,
            ),
            "mount sysfs read-only on /sys",
            Tolerate::Anything,
        );
    }

    /// Docker's masked and read-only paths. What is a file and what a directory is read off the
    /// host's own /proc and /sys: the container sees the same kernel.
    pub(super) fn masks(&mut self, proc_t: &Resolved, sys_t: &Resolved) -> Result<(), MountError> {
        let mut null: Option<CString> = None;
        let inside = |p: &str| -> Resolved {
            let (base, rest) = match (p.strip_prefix("/proc/"), p.strip_prefix("/sys/")) {
                (Some(rest), _) => (proc_t, rest),
                (_, Some(rest)) => (sys_t, rest),
                _ => unreachable!("mask lists hold /proc and /sys paths only"),
            };
            base.child(rest)
        };
        for p in MASKED_PATHS {
            let Ok(meta) = std::fs::symlink_metadata(p) else {
                continue;
            };
            let target = inside(p).in_root();
            if meta.is_dir() {
                self.push(
                    mnt(
                        Some(c"tmpfs".into()),
                        target,
                        Some(c"tmpfs"),
                        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        Some("size=0"),
                    ),
                    format!("mask {p}"),
                    Tolerate::Missing,
                );
            } else {
                // The host's /dev/null itself, not the container's: an image cannot hide it.
                // One source serves every masked file.
                let null = match &null {
                    Some(n) => n.clone(),
                    None => null.insert(self.source(Path::new("/dev/null"))?).clone(),
                };
                self.push(
                    mnt(Some(null), target, None, libc::MS_BIND, None),
                    format!("mask {p}"),
                    Tolerate::Missing,
                );
            }
        }
        for p in READONLY_PATHS {
            if std::fs::symlink_metadata(p).is_err() {
                continue;
            }
            let t = inside(p);
            self.push(
                mnt(
                    Some(cstr(&format!("/root{}", t.path))?),
                    t.in_root(),
                    None,
                    libc::MS_BIND | libc::MS_REC,
                    None,
                ),
                format!("bind {p} onto itself"),
                Tolerate::Missing,
            );
            self.push(
                Op::ReadOnly {
                    target: t.in_root(),
                },
                format!("make {p} read-only"),
                Tolerate::Missing,
            );
        }
        Ok(())
    }
}

fn escape_overlay(path: &str) -> String {
    path.replace('\\', "\\\\")
        .replace(':', "\\:")
        .replace(',', "\\,")
}
