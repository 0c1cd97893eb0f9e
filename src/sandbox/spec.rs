//! What a caller asks for: plain, serialisable data with no file descriptors and no `CString`s.
//!
//! A [`SandboxSpec`] crosses a process boundary (library → helper) as JSON, so every field is
//! owned, `serde`-friendly data. Turning it into something executable is [`super::plan`]'s job.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::cgroup::Limits;
use super::idmap::UsernsMode;
use super::seccomp::SeccompSource;

/// Default size cap of the `/tmp` tmpfs (64 MiB), like a small `docker run --tmpfs /tmp:size=64m`.
pub const DEFAULT_TMP_SIZE: u64 = 64 << 20;
/// Default grace between SIGTERM and SIGKILL when a timeout fires (Docker's `--stop-timeout` is 10 s;
/// tools run by a worker are expected to stop faster, and the caller can raise it).
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// Docker's default `PATH`, used when neither the image nor the caller sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything needed to run one command in a fresh sandbox.
///
/// Every field has a default (see [`SandboxSpec::default`]), so a JSON request may leave any of
/// them out (docs/helper-protocol.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SandboxSpec {
    /// Directories that make up the root filesystem, topmost first. One entry for `--rootfs DIR`.
    pub rootfs: Vec<PathBuf>,
    /// `argv` of the tool; `args[0]` is looked up in the container's `PATH` when it has no `/`.
    pub args: Vec<String>,
    /// `KEY=VALUE` pairs; later entries win. `PATH`, `HOSTNAME` and `HOME` are filled in when absent.
    pub env: Vec<String>,
    /// Working directory inside the container (default `/`). Created (read-only, empty) when missing.
    pub cwd: Option<String>,
    /// `UID[:GID]` or `NAME[:GROUP]`, resolved against the rootfs' `/etc/passwd` and `/etc/group`.
    pub user: Option<String>,
    /// UTS hostname (default: the first 12 hex digits of the run id, as Docker does).
    pub hostname: Option<String>,
    /// Bind mounts (`-v`), applied in order after the built-in mounts.
    pub binds: Vec<BindMount>,
    /// Extra tmpfs mounts (`--tmpfs PATH[:SIZE]`).
    pub tmpfs: Vec<TmpfsMount>,
    /// Size cap of the `/tmp` tmpfs in bytes.
    pub tmp_size: u64,
    /// Network mode.
    pub network: Network,
    /// Egress allowlist, published ports, DNS and extra hosts (see [`super::net`]).
    #[serde(default)]
    pub net: super::net::NetOptions,
    /// How container ids map to host ids.
    pub userns: UsernsMode,
    /// Host uid/gid that container id 0 maps to when running as root (see [`super::idmap`]).
    pub root_id_base: Option<u32>,
    /// Resource limits (cgroups, or rlimits when no cgroup can be created).
    pub limits: Limits,
    /// Capabilities to add to / drop from the default set (Docker names, with or without `CAP_`; `ALL`).
    pub cap_add: Vec<String>,
    /// See [`SandboxSpec::cap_add`].
    pub cap_drop: Vec<String>,
    /// Seccomp profile.
    pub seccomp: SeccompSource,
    /// Hard wall-clock limit; on expiry the tool gets SIGTERM, then SIGKILL after `stop_timeout`.
    pub timeout: Option<Duration>,
    /// Grace between SIGTERM and SIGKILL (timeouts and forwarded stops).
    pub stop_timeout: Duration,
    /// Whether the tool's stdin is connected (`-i`); otherwise it reads `/dev/null`.
    pub stdin: bool,
    /// Directory for nsrun's own state (seccomp BPF cache, …); `None` disables on-disk caches.
    pub state_dir: Option<PathBuf>,
    /// What `/proc` is: a fresh one of the run's pid namespace (default), or the caller's bound.
    #[serde(default)]
    pub proc: ProcMode,
    /// The run id (12 to 64 lowercase hex digits) when the caller chose it, so that its own
    /// records (scratch directory, audit) carry the same id as the cgroup and the hostname;
    /// `None`: a fresh random one.
    pub run_id: Option<String>,
    /// A pseudo-terminal for the tool (`-t`), allocated from the run's own devpts: the tool's
    /// stdin, stdout and stderr are its slave, and the caller's stdio are relayed to and from
    /// the master (see [`super::tty`]). Only for runs in the calling process
    /// ([`super::run`]); stderr then goes to the terminal too, and `TERM=xterm` is set unless
    /// `env` has a `TERM`, as with Docker.
    pub tty: bool,
    /// The signal that asks the tool to stop (`--stop-signal`, or the image's `StopSignal`):
    /// sent on timeout and in place of a SIGTERM nsrun receives, before SIGKILL after
    /// `stop_timeout`. A name (`SIGQUIT`, `QUIT`, `SIGRTMIN+3`) or a number; `None`: SIGTERM.
    pub stop_signal: Option<String>,
    /// Resource limits of the tool's processes (`--ulimit`), set by the parent on the run's
    /// pid 1 before it starts, so that raising a hard limit needs the caller's own privilege
    /// (root), never the container's.
    pub ulimits: Vec<super::ulimit::Ulimit>,
    /// Size cap of `/dev/shm` in bytes (`--shm-size`; default 64 MiB).
    pub shm_size: Option<u64>,
    /// Extra supplementary groups of the tool (`--group-add`): names of the container's
    /// `/etc/group` or numeric gids.
    pub group_add: Vec<String>,
}

impl Default for SandboxSpec {
    /// No root filesystem and no command: what a JSON request starts from.
    fn default() -> Self {
        SandboxSpec::new(PathBuf::new(), Vec::<String>::new())
    }
}

impl SandboxSpec {
    /// A spec with Docker-like defaults that runs `args` on `rootfs`.
    ///
    /// ```
    /// use nsrun::sandbox::SandboxSpec;
    /// let spec = SandboxSpec::new("/srv/rootfs", ["/bin/echo", "hi"]);
    /// assert_eq!(spec.args, ["/bin/echo", "hi"]);
    /// assert!(spec.timeout.is_none());
    /// ```
    pub fn new<I, S>(rootfs: impl Into<PathBuf>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        SandboxSpec {
            rootfs: vec![rootfs.into()],
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: None,
            user: None,
            hostname: None,
            binds: Vec::new(),
            tmpfs: Vec::new(),
            tmp_size: DEFAULT_TMP_SIZE,
            network: Network::None,
            net: Default::default(),
            userns: UsernsMode::Auto,
            root_id_base: None,
            limits: Limits::default(),
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            seccomp: SeccompSource::Default,
            timeout: None,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            stdin: false,
            state_dir: None,
            proc: ProcMode::Fresh,
            run_id: None,
            tty: false,
            stop_signal: None,
            ulimits: Vec::new(),
            shm_size: None,
            group_add: Vec::new(),
        }
    }
}

/// A `-v HOST:CONTAINER[:ro|rw]` bind mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

impl std::str::FromStr for BindMount {
    type Err = String;

    /// Parses Docker's `-v` syntax (see [`super::mount_opts::parse_volume`]; its notes about
    /// ignored options are dropped here).
    ///
    /// ```
    /// use nsrun::sandbox::BindMount;
    /// let b: BindMount = "/data:/in:ro".parse().unwrap();
    /// assert_eq!((b.source.to_str().unwrap(), b.target.as_str(), b.read_only), ("/data", "/in", true));
    /// assert!("relative:/in".parse::<BindMount>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, String> {
        super::mount_opts::parse_volume(s).map(|(b, _notes)| b)
    }
}

/// A `--tmpfs PATH[:OPTIONS]` mount (always nosuid and nodev).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmpfsMount {
    pub target: String,
    /// Size cap in bytes.
    pub size: u64,
    /// Mounted read-only (Docker's `ro`).
    #[serde(default)]
    pub read_only: bool,
    /// Mounted noexec (Docker's `noexec`; the CLI's `--tmpfs` and `--mount type=tmpfs` set it
    /// unless told `exec`, as Docker does).
    #[serde(default)]
    pub noexec: bool,
    /// Mode of its root directory (default 1777).
    #[serde(default)]
    pub mode: Option<u32>,
    /// Owner of its root directory, container ids (default root).
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
}

impl TmpfsMount {
    /// A writable, executable tmpfs of `size` bytes at `target`.
    pub fn new(target: impl Into<String>, size: u64) -> TmpfsMount {
        TmpfsMount {
            target: target.into(),
            size,
            read_only: false,
            noexec: false,
            mode: None,
            uid: None,
            gid: None,
        }
    }

    /// The tmpfs mount options (`size=…,mode=…[,uid=…][,gid=…]`).
    pub fn data(&self) -> String {
        let mut d = format!("size={},mode={:o}", self.size, self.mode.unwrap_or(0o1777));
        if let Some(u) = self.uid {
            d.push_str(&format!(",uid={u}"));
        }
        if let Some(g) = self.gid {
            d.push_str(&format!(",gid={g}"));
        }
        d
    }
}

impl std::str::FromStr for TmpfsMount {
    type Err = String;

    /// Parses Docker's `PATH[:OPTIONS]` (see [`super::mount_opts::parse_tmpfs`]), and nsrun's
    /// `PATH:SIZE`.
    ///
    /// ```
    /// use nsrun::sandbox::TmpfsMount;
    /// let t: TmpfsMount = "/scratch:16m".parse().unwrap();
    /// assert_eq!((t.target.as_str(), t.size), ("/scratch", 16 << 20));
    /// let t: TmpfsMount = "/run:rw,noexec,nosuid,size=65536k".parse().unwrap();
    /// assert_eq!((t.size, t.noexec), (64 << 20, true));
    /// ```
    fn from_str(s: &str) -> Result<Self, String> {
        super::mount_opts::parse_tmpfs(s)
    }
}

/// The largest size [`parse_size`] takes (1 EiB): anything larger is a typo, or an overflow.
pub const MAX_SIZE: u64 = 1 << 60;

pub use super::mount_opts::parse_size;

/// Network mode of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// A fresh network namespace with only loopback, up.
    #[default]
    None,
    /// Share the caller's network namespace.
    Host,
    /// A fresh network namespace with user-mode NAT to the outside (pasta or slirp4netns),
    /// an egress filter that keeps the host, link-local and private ranges out unless allowed,
    /// and nsrun's DNS forwarder.
    Private,
}

impl std::str::FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Network::None),
            "host" => Ok(Network::Host),
            "private" => Ok(Network::Private),
            other => Err(format!(
                "unsupported network mode {other:?}: expected none, host or private"
            )),
        }
    }
}

/// What the run's `/proc` is (`--proc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProcMode {
    /// A new procfs of the run's own pid namespace: the tool sees only its own processes.
    #[default]
    Fresh,
    /// The caller's `/proc` bound recursively, for hosts that refuse a fresh one (a container
    /// whose runtime masks parts of `/proc`). Weaker: the tool sees the processes of the
    /// caller's pid namespace (their command lines included; their memory, environment and
    /// descriptors stay out of reach, as they belong to another user namespace). Docker's
    /// masked paths are still masked and `/proc/sys` still read-only.
    HostBind,
}

impl std::str::FromStr for ProcMode {
    type Err = String;

    /// ```
    /// use nsrun::sandbox::spec::ProcMode;
    /// assert_eq!("host-bind".parse(), Ok(ProcMode::HostBind));
    /// assert!("host".parse::<ProcMode>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fresh" => Ok(ProcMode::Fresh),
            "host-bind" => Ok(ProcMode::HostBind),
            other => Err(format!(
                "invalid --proc {other:?}: expected fresh or host-bind"
            )),
        }
    }
}
