//! Capabilities kept by the tool.
//!
//! The parent resolves `--cap-add`/`--cap-drop` into a [`CapSet`] (a bitmask); the child applies it
//! with two allocation-free calls: [`drop_bounding`] (bounded by [`last_cap`], which the parent
//! reads) while it still holds every capability of its
//! user namespace, then [`apply`] after the uid change.
//!
//! # The default set, and why it is smaller than Docker's
//!
//! Docker keeps 14 capabilities. nsrun keeps the 8 a normal tool (package scripts, servers that
//! drop privileges, build steps that `chown`) needs, and drops the 6 whose only use in a worker is
//! as an attack surface. All of them only act on objects owned by the run's user namespace: a
//! capability inside it is never a capability on the host.
//!
//! | capability         | Docker | nsrun | why                                                          |
//! |--------------------|--------|-------|--------------------------------------------------------------|
//! | `CHOWN`            | yes    | yes   | package managers and `tar -p` chown what they unpack          |
//! | `DAC_OVERRIDE`     | yes    | yes   | root in the container expects to read/write its own files     |
//! | `FOWNER`           | yes    | yes   | `chmod`/`utime` on files owned by other container users       |
//! | `FSETID`           | yes    | yes   | keep setgid bits on directories that build tools create       |
//! | `KILL`             | yes    | yes   | signal the tool's own processes running as other uids         |
//! | `SETGID`           | yes    | yes   | servers and `su`/`gosu` drop to an unprivileged group         |
//! | `SETUID`           | yes    | yes   | same, for the uid                                             |
//! | `NET_BIND_SERVICE` | yes    | yes   | bind ports < 1024 in the run's own network namespace          |
//! | `NET_RAW`          | yes    | no    | raw/packet sockets: spoofing and a long CVE history (CVE-2020-14386); `ping` works with ICMP datagram sockets |
//! | `MKNOD`            | yes    | no    | useless in a user namespace (the kernel refuses device nodes); /dev is ours |
//! | `SETFCAP`          | yes    | no    | writes file capabilities: a way to mint privileged binaries    |
//! | `SETPCAP`          | yes    | no    | changes bounding/inheritable sets; no tool needs it           |
//! | `SYS_CHROOT`       | yes    | no    | chroot is a classic building block of escapes; tools rarely need it |
//! | `AUDIT_WRITE`      | yes    | no    | there is no audit daemon to write to inside a run             |
//!
//! Everything dropped can be given back with `--cap-add` (e.g. `--cap-add NET_RAW`).

use thiserror::Error;

/// Capability names, indexed by number (`CAP_CHOWN` is 0). Names are given without `CAP_`.
const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// `CAP_SETGID`: changing gids.
pub const CAP_SETGID: u32 = 6;
/// `CAP_SETUID`: changing uids.
pub const CAP_SETUID: u32 = 7;
/// `CAP_SYS_ADMIN`: among much else, mount(2) and umount(2).
pub const CAP_SYS_ADMIN: u32 = 21;

/// The capabilities a run keeps unless told otherwise (see the module documentation for why).
pub const DEFAULT_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "NET_BIND_SERVICE",
];

/// A set of capabilities as a bitmask indexed by capability number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapSet(pub u64);

/// Why a capability list could not be resolved.
#[derive(Debug, Error)]
pub enum CapsError {
    /// A name that is neither a capability (with or without `CAP_`, any case) nor `ALL`.
    #[error("unknown capability {0:?} (expected e.g. NET_RAW, CAP_SYS_ADMIN or ALL)")]
    Unknown(String),
}

/// The number of capability `name` (`"net_raw"`, `"CAP_NET_RAW"`, …), or `None`.
///
/// ```
/// use nsrun::sandbox::caps::cap_from_name;
/// assert_eq!(cap_from_name("CAP_SYS_ADMIN"), Some(21));
/// assert_eq!(cap_from_name("net_raw"), Some(13));
/// assert_eq!(cap_from_name("CAP_FLY"), None);
/// ```
pub fn cap_from_name(name: &str) -> Option<u32> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    NAMES.iter().position(|n| *n == bare).map(|i| i as u32)
}

/// The name of capability number `cap`, with its `CAP_` prefix.
pub fn cap_name(cap: u32) -> Option<String> {
    NAMES.get(cap as usize).map(|n| format!("CAP_{n}"))
}

impl CapSet {
    /// Every capability this crate knows of.
    pub const ALL: CapSet = CapSet((1u64 << NAMES.len()) - 1);

    /// The default set ([`DEFAULT_CAPS`]).
    pub fn default_set() -> CapSet {
        let mut set = CapSet(0);
        for name in DEFAULT_CAPS {
            set.insert(cap_from_name(name).expect("DEFAULT_CAPS holds known names"));
        }
        set
    }

    /// Resolves `--cap-add`/`--cap-drop` against the default set, as Docker does: `ALL` in `add`
    /// starts from every capability, `ALL` in `drop` from none; then the named adds and drops
    /// apply, drops last.
    ///
    /// ```
    /// use nsrun::sandbox::caps::{CapSet, cap_from_name};
    /// let s = CapSet::resolve(&["net_raw".into()], &["CAP_CHOWN".into()]).unwrap();
    /// assert!(s.contains(cap_from_name("NET_RAW").unwrap()));
    /// assert!(!s.contains(cap_from_name("CHOWN").unwrap()));
    /// assert_eq!(CapSet::resolve(&[], &["ALL".into()]).unwrap(), CapSet(0));
    /// assert!(CapSet::resolve(&["CAP_FLY".into()], &[]).is_err());
    /// ```
    pub fn resolve(add: &[String], drop: &[String]) -> Result<CapSet, CapsError> {
        let is_all = |s: &String| s.trim().eq_ignore_ascii_case("ALL");
        let mut set = CapSet::default_set();
        if drop.iter().any(is_all) {
            set = CapSet(0);
        }
        if add.iter().any(is_all) {
            set = CapSet::ALL;
        }
        let lookup = |s: &String| cap_from_name(s).ok_or_else(|| CapsError::Unknown(s.clone()));
        for name in add.iter().filter(|s| !is_all(s)) {
            set.insert(lookup(name)?);
        }
        for name in drop.iter().filter(|s| !is_all(s)) {
            set.remove(lookup(name)?);
        }
        Ok(set)
    }

    /// Whether capability number `cap` is in the set.
    pub fn contains(self, cap: u32) -> bool {
        cap < 64 && self.0 & (1u64 << cap) != 0
    }

    /// Adds capability number `cap`.
    pub fn insert(&mut self, cap: u32) {
        if cap < 64 {
            self.0 |= 1u64 << cap;
        }
    }

    /// Removes capability number `cap`.
    pub fn remove(&mut self, cap: u32) {
        if cap < 64 {
            self.0 &= !(1u64 << cap);
        }
    }

    /// The names (`CAP_…`) of the capabilities in the set, in number order.
    pub fn names(self) -> Vec<String> {
        (0..64)
            .filter(|c| self.contains(*c))
            .filter_map(cap_name)
            .collect()
    }
}

/// The errno of the last failed libc call. Async-signal-safe.
fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Whether this process holds `cap` in its effective set (read from `/proc/self/status`; a
/// process that cannot read it is taken not to hold it).
pub fn effective_has(cap: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|eff| cap < 64 && eff & (1u64 << cap) != 0)
}

/// The highest capability number this kernel knows (`/proc/sys/kernel/cap_last_cap`), read once
/// per process; 63 (every bit of a [`CapSet`]) when it cannot be read, so that nothing the kernel
/// knows escapes [`drop_bounding`] (numbers past the kernel's last one then cost one EINVAL each).
///
/// Parent side: it reads a file and caches the value, so call it before forking and hand the
/// number to the child.
///
/// ```
/// let last = nsrun::sandbox::caps::last_cap();
/// assert!((37..=63).contains(&last)); // CAP_AUDIT_READ (Linux 3.16) at least; 63 fits a CapSet
/// ```
pub fn last_cap() -> u32 {
    static LAST: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *LAST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .map_or(63, |n| n.min(63))
    })
}

/// Child side, before the uid change: drops every capability in `0..=last_cap` that is not in
/// `set` from the bounding set — one `PR_CAPBSET_DROP` per dropped capability, none for the kept
/// ones or past the kernel's last capability (`last_cap` comes from [`last_cap`], read by the
/// parent), so capabilities newer than this crate's table are dropped too.
///
/// A number above the kernel's last capability (when `last_cap` was guessed) answers EINVAL,
/// which ends the walk: there is nothing above it to drop. Allocation-free; returns the errno.
pub fn drop_bounding(set: CapSet, last_cap: u32) -> Result<(), i32> {
    for cap in 0..=last_cap.min(63) {
        if set.contains(cap) {
            continue;
        }
        // SAFETY: PR_CAPBSET_DROP takes plain integers and touches no memory of ours.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            let e = errno();
            if e == libc::EINVAL {
                return Ok(()); // past the kernel's last capability
            }
            return Err(e);
        }
    }
    Ok(())
}

/// The kernel's `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// The kernel's `struct __user_cap_data_struct` (two of them for 64 capability bits).
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Child side, after the uid change (with `PR_SET_KEEPCAPS` set): makes `set` the effective and
/// permitted sets, empties the inheritable set and clears the ambient set. The inheritable set
/// stays empty because a file with inheritable file capabilities would hand them to a non-root
/// tool at exec, no_new_privs notwithstanding (CVE-2022-24769, fixed the same way in runc).
///
/// Ambient capabilities stay empty, as in Docker: a tool run as a non-zero uid loses every
/// capability at `execve`, and container root keeps what the bounding set allows.
/// Allocation-free; returns the errno.
pub fn apply(set: CapSet) -> Result<(), i32> {
    let lo = set.0 as u32;
    let hi = (set.0 >> 32) as u32;
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: lo,
            permitted: lo,
            inheritable: 0,
        },
        CapData {
            effective: hi,
            permitted: hi,
            inheritable: 0,
        },
    ];
    // SAFETY: header and data are live, correctly laid out (#[repr(C)]) for capset(2) version 3,
    // which reads two data structs.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(errno());
    }
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes integers only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(errno());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_of(names: &[&str]) -> CapSet {
        let mut s = CapSet(0);
        for n in names {
            s.insert(cap_from_name(n).unwrap());
        }
        s
    }

    #[test]
    fn names_match_kernel_numbers() {
        // Spot checks against linux/capability.h.
        assert_eq!(cap_from_name("CAP_NET_RAW"), Some(13));
        assert_eq!(cap_from_name("SYS_ADMIN"), Some(21));
        assert_eq!(cap_from_name("mknod"), Some(27));
        assert_eq!(cap_from_name("CAP_SETFCAP"), Some(31));
        assert_eq!(cap_from_name("bpf"), Some(39));
        assert_eq!(cap_from_name("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(cap_from_name("CAP_"), None);
        assert_eq!(cap_name(13).as_deref(), Some("CAP_NET_RAW"));
    }

    #[test]
    fn default_set_is_documented_set() {
        let d = CapSet::default_set();
        assert_eq!(d, set_of(DEFAULT_CAPS));
        assert_eq!(d.0.count_ones(), 8);
        for dropped in [
            "NET_RAW",
            "MKNOD",
            "SETFCAP",
            "SETPCAP",
            "SYS_CHROOT",
            "AUDIT_WRITE",
            "SYS_ADMIN",
        ] {
            assert!(
                !d.contains(cap_from_name(dropped).unwrap()),
                "{dropped} kept"
            );
        }
    }

    #[test]
    fn resolve_add_drop_all() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(CapSet::resolve(&[], &[]).unwrap(), CapSet::default_set());
        assert_eq!(CapSet::resolve(&s(&["all"]), &[]).unwrap(), CapSet::ALL);
        assert_eq!(
            CapSet::resolve(&s(&["NET_RAW"]), &s(&["ALL"])).unwrap(),
            set_of(&["NET_RAW"]),
            "drop ALL then add keeps only the adds"
        );
        let all_but = CapSet::resolve(&s(&["ALL"]), &s(&["cap_sys_admin"])).unwrap();
        assert!(!all_but.contains(21));
        assert!(all_but.contains(0));
        let added = CapSet::resolve(&s(&["Cap_Net_Raw", "SYS_PTRACE"]), &s(&["KILL"])).unwrap();
        assert!(added.contains(13) && added.contains(19) && !added.contains(5));
        match CapSet::resolve(&[], &s(&["NET_FLY"])) {
            Err(CapsError::Unknown(n)) => assert_eq!(n, "NET_FLY"),
            other => panic!("expected Unknown, got {other:?}"),
        }
        assert_eq!(
            set_of(&["CHOWN", "NET_RAW"]).names(),
            ["CAP_CHOWN", "CAP_NET_RAW"]
        );
    }
}
