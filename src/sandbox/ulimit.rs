//! `--ulimit NAME=SOFT[:HARD]` and `--stop-signal`: Docker's spellings, checked up front.
//!
//! Ulimits are applied by the parent with `prlimit(2)` on the run's pid 1 before releasing it,
//! and every process of the run inherits them. Done from outside because a user namespace gives
//! no say over limits: raising a hard limit needs CAP_SYS_RESOURCE of the initial namespace,
//! which container root never has. So as root (with CAP_SYS_RESOURCE) any limit can be set;
//! otherwise a hard limit can only be lowered (or kept), and asking for more is refused before
//! the run with the limit nsrun itself has.

use serde::{Deserialize, Serialize};

/// One resource limit, as `docker run --ulimit` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    /// Docker's name: `nofile`, `nproc`, `core`, `cpu`, `data`, `fsize`, `locks`, `memlock`,
    /// `msgqueue`, `nice`, `rss`, `rtprio`, `rttime`, `sigpending`, `stack`, `as`.
    pub name: String,
    /// `None`: unlimited (Docker's `-1`).
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// Docker's ulimit names and their resources.
const NAMES: &[(&str, libc::__rlimit_resource_t)] = &[
    ("as", libc::RLIMIT_AS),
    ("core", libc::RLIMIT_CORE),
    ("cpu", libc::RLIMIT_CPU),
    ("data", libc::RLIMIT_DATA),
    ("fsize", libc::RLIMIT_FSIZE),
    ("locks", libc::RLIMIT_LOCKS),
    ("memlock", libc::RLIMIT_MEMLOCK),
    ("msgqueue", libc::RLIMIT_MSGQUEUE),
    ("nice", libc::RLIMIT_NICE),
    ("nofile", libc::RLIMIT_NOFILE),
    ("nproc", libc::RLIMIT_NPROC),
    ("rss", libc::RLIMIT_RSS),
    ("rtprio", libc::RLIMIT_RTPRIO),
    ("rttime", libc::RLIMIT_RTTIME),
    ("sigpending", libc::RLIMIT_SIGPENDING),
    ("stack", libc::RLIMIT_STACK),
];

impl Ulimit {
    /// The kernel's resource number.
    pub fn resource(&self) -> Result<libc::__rlimit_resource_t, String> {
        NAMES
            .iter()
            .find(|(n, _)| *n == self.name)
            .map(|(_, r)| *r)
            .ok_or_else(|| {
                format!(
                    "invalid --ulimit name {:?}: expected one of {}",
                    self.name,
                    NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                )
            })
    }

    /// Checks the name and that soft ≤ hard.
    pub fn check(&self) -> Result<(), String> {
        self.resource()?;
        let lim = |v: Option<u64>| v.unwrap_or(u64::MAX);
        if lim(self.soft) > lim(self.hard) {
            return Err(format!(
                "invalid --ulimit {}: soft limit {} is above the hard limit {}",
                self.name,
                show(self.soft),
                show(self.hard)
            ));
        }
        Ok(())
    }

    /// Checks, before anything is created, that this process may set the limit: without
    /// CAP_SYS_RESOURCE (root's, which some containers drop), a hard limit above our own is
    /// refused (the kernel would say EPERM later).
    pub fn check_allowed(&self) -> Result<(), String> {
        let resource = self.resource()?;
        if super::caps::effective_has(
            super::caps::cap_from_name("SYS_RESOURCE").expect("a known capability"),
        ) {
            return Ok(());
        }
        let mut own = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit into `own`.
        if unsafe { libc::getrlimit(resource, &mut own) } != 0 {
            return Ok(());
        }
        let want = self.hard.unwrap_or(libc::RLIM_INFINITY);
        if own.rlim_max != libc::RLIM_INFINITY && want > own.rlim_max {
            return Err(self.too_high(own.rlim_max));
        }
        Ok(())
    }

    fn too_high(&self, own: u64) -> String {
        let own = (own != libc::RLIM_INFINITY).then_some(own);
        format!(
            "--ulimit {}={}:{}: raising the hard limit above nsrun's own ({}) needs root \
             (CAP_SYS_RESOURCE)",
            self.name,
            show(self.soft),
            show(self.hard),
            show(own)
        )
    }

    /// Sets the limit on process `pid` (the run's pid 1, before it starts the tool). A hard
    /// limit above the caller's own needs root: say so in one line.
    pub fn apply(&self, pid: libc::pid_t) -> Result<(), String> {
        let resource = self.resource()?;
        let new = libc::rlimit {
            rlim_cur: self.soft.unwrap_or(libc::RLIM_INFINITY),
            rlim_max: self.hard.unwrap_or(libc::RLIM_INFINITY),
        };
        // SAFETY: prlimit reads `new` and writes nothing (null old-limit pointer).
        let ret = unsafe { libc::prlimit(pid, resource, &new, std::ptr::null_mut()) };
        if ret == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EPERM) {
            let mut own = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes one rlimit into `own`.
            unsafe { libc::getrlimit(resource, &mut own) };
            return Err(self.too_high(own.rlim_max));
        }
        Err(format!("--ulimit {}: prlimit: {err}", self.name))
    }
}

fn show(v: Option<u64>) -> String {
    v.map_or_else(|| "unlimited".into(), |v| v.to_string())
}

impl std::str::FromStr for Ulimit {
    type Err = String;

    /// Docker's `NAME=SOFT[:HARD]` (HARD defaults to SOFT; `-1` is unlimited).
    ///
    /// ```
    /// use nsrun::sandbox::ulimit::Ulimit;
    /// let u: Ulimit = "nofile=1024:4096".parse().unwrap();
    /// assert_eq!((u.soft, u.hard), (Some(1024), Some(4096)));
    /// let u: Ulimit = "core=-1".parse().unwrap();
    /// assert_eq!((u.soft, u.hard), (None, None));
    /// assert!("nofile=2:1".parse::<Ulimit>().is_err());
    /// assert!("files=1".parse::<Ulimit>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, String> {
        let Some((name, values)) = s.split_once('=') else {
            return Err(format!(
                "invalid --ulimit {s:?}: expected NAME=SOFT[:HARD], e.g. nofile=1024:4096"
            ));
        };
        let value = |v: &str| -> Result<Option<u64>, String> {
            match v.trim() {
                "-1" | "unlimited" => Ok(None),
                n => n.parse().map(Some).map_err(|_| {
                    format!("invalid --ulimit {s:?}: {n:?} is not a number (or -1 for unlimited)")
                }),
            }
        };
        let (soft, hard) = match values.split_once(':') {
            Some((soft, hard)) => (value(soft)?, value(hard)?),
            None => {
                let v = value(values)?;
                (v, v)
            }
        };
        let u = Ulimit {
            name: name.trim().to_string(),
            soft,
            hard,
        };
        u.check()?;
        Ok(u)
    }
}

/// Parses a signal as `docker run --stop-signal` and an image's `StopSignal` take it: a name
/// with or without `SIG` (any case), `RTMIN+N`/`RTMAX-N`, or a number.
///
/// ```
/// use nsrun::sandbox::ulimit::parse_signal;
/// assert_eq!(parse_signal("SIGQUIT"), Ok(libc::SIGQUIT));
/// assert_eq!(parse_signal("usr1"), Ok(libc::SIGUSR1));
/// assert_eq!(parse_signal("9"), Ok(9));
/// assert_eq!(parse_signal("SIGRTMIN+3"), Ok(libc::SIGRTMIN() + 3));
/// assert!(parse_signal("SIGNOPE").is_err());
/// assert!(parse_signal("0").is_err());
/// ```
pub fn parse_signal(s: &str) -> Result<i32, String> {
    let bad = || format!("invalid stop signal {s:?}: expected a name like SIGTERM or a number");
    let upper = s.trim().to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    let n = if let Ok(n) = name.parse::<i32>() {
        n
    } else if let Some(off) = name.strip_prefix("RTMIN") {
        min + off
            .strip_prefix('+')
            .map_or(Ok(0), str::parse)
            .map_err(|_| bad())?
    } else if let Some(off) = name.strip_prefix("RTMAX") {
        max - off
            .strip_prefix('-')
            .map_or(Ok(0), str::parse)
            .map_err(|_| bad())?
    } else {
        let full = format!("SIG{name}");
        full.parse::<nix::sys::signal::Signal>()
            .map_err(|_| bad())? as i32
    };
    if !(1..=max).contains(&n) {
        return Err(bad());
    }
    Ok(n)
}
