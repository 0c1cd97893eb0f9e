//! What a caller asks the runner for: [`RunSpec`], with its inputs and stdin.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncRead;

use super::Error;
use crate::sandbox::cgroup::Limits;
use crate::sandbox::idmap::UsernsMode;
use crate::sandbox::seccomp::SeccompSource;
use crate::sandbox::{BindMount, Network, TmpfsMount};
use crate::store::PullPolicy;

/// Where the root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An image reference, `oci:DIR[:TAG]` or `docker-archive:FILE`; its Entrypoint, Cmd, Env,
    /// WorkingDir and User apply as Docker applies them.
    Image(String),
    /// A plain directory, bound read-only (no image rules: the command is `args`).
    Rootfs(PathBuf),
}

/// Bytes from memory, a host file or a reader. A file or a reader is streamed: it never sits in
/// memory as a whole.
pub enum Data {
    Bytes(Bytes),
    File(PathBuf),
    Reader(Box<dyn AsyncRead + Send + Unpin>),
}

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Data::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Data::File(p) => write!(f, "File({})", p.display()),
            Data::Reader(_) => f.write_str("Reader"),
        }
    }
}

impl From<Vec<u8>> for Data {
    fn from(v: Vec<u8>) -> Data {
        Data::Bytes(v.into())
    }
}
impl From<&[u8]> for Data {
    fn from(v: &[u8]) -> Data {
        Data::Bytes(Bytes::copy_from_slice(v))
    }
}
impl From<&str> for Data {
    fn from(v: &str) -> Data {
        Data::Bytes(Bytes::copy_from_slice(v.as_bytes()))
    }
}
impl From<String> for Data {
    fn from(v: String) -> Data {
        Data::Bytes(v.into())
    }
}
impl From<Bytes> for Data {
    fn from(v: Bytes) -> Data {
        Data::Bytes(v)
    }
}

/// The tool's standard input.
#[derive(Debug, Default)]
pub enum Stdin {
    /// `/dev/null`.
    #[default]
    Null,
    /// These bytes, a file's contents or a reader's, then end of file.
    Data(Data),
    /// The calling process's own stdin (the CLI's `-i`).
    Inherit,
}

/// A file placed at `/inputs/<name>` (read-only) before the tool starts.
#[derive(Debug)]
pub struct Input {
    /// A relative path: no `..`, `.` or empty components, no NUL, each component at most 255
    /// bytes, at most 1024 bytes in all.
    pub name: String,
    pub data: Data,
}

/// One run: what to run, on what, with what, and what to bring back.
///
/// ```
/// use std::time::Duration;
/// use nsrun::runner::RunSpec;
/// let spec = RunSpec::image("127.0.0.1:5000/tools/dnsx:1")
///     .args(["-l", "/inputs/domains.txt", "-o", "results.json"])
///     .input("domains.txt", "example.com\n")
///     .output("results.json")
///     .timeout(Duration::from_secs(600))
///     .label("tenant", "acme")
///     .label("run", "r-123");
/// assert_eq!(spec.inputs[0].name, "domains.txt");
/// ```
#[derive(Debug)]
pub struct RunSpec {
    pub source: Source,
    /// Replaces the image's Entrypoint (`Some(vec![])` clears it; either way the image's Cmd is
    /// dropped, as with `docker run --entrypoint`).
    pub entrypoint: Option<Vec<String>>,
    /// The command (with a rootfs) or the arguments replacing the image's Cmd.
    pub args: Vec<String>,
    /// `KEY=VALUE`, applied over the image's Env by key.
    pub env: Vec<String>,
    /// Working directory (default: the image's, else `/`).
    pub workdir: Option<String>,
    /// `UID[:GID]` or `NAME[:GROUP]` (default: the image's User, else root).
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub stdin: Stdin,
    /// `None`: the runtime's default.
    pub network: Option<Network>,
    /// Egress allowlist, published ports, DNS and extra hosts of the run's network (see
    /// [`crate::sandbox::net`]).
    pub net: crate::sandbox::net::NetOptions,
    pub timeout: Option<Duration>,
    /// Grace between SIGTERM and SIGKILL when the timeout fires (default 2 s).
    pub stop_timeout: Option<Duration>,
    /// `None`: the runtime's default limits.
    pub limits: Option<Limits>,
    pub binds: Vec<BindMount>,
    pub tmpfs: Vec<TmpfsMount>,
    /// Size cap of `/tmp` (default 64 MiB).
    pub tmp_size: Option<u64>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub seccomp: SeccompSource,
    pub userns: UsernsMode,
    /// Host id of container root when running as root (see [`crate::sandbox::idmap`]).
    pub uid_base: Option<u32>,
    /// What the run's `/proc` is (a fresh one, or, weaker, the caller's: `--proc host-bind`).
    pub proc: crate::sandbox::ProcMode,
    /// A pseudo-terminal for the tool (`-t`); only with [`super::Runtime::run_here`], which
    /// relays it to the caller's own stdio.
    pub tty: bool,
    /// The tool's stop signal (default: the image's `StopSignal`, else SIGTERM).
    pub stop_signal: Option<String>,
    /// `--ulimit`s (see [`crate::sandbox::ulimit`]).
    pub ulimits: Vec<crate::sandbox::ulimit::Ulimit>,
    /// Size cap of `/dev/shm` (default 64 MiB).
    pub shm_size: Option<u64>,
    /// Extra supplementary groups (names of the image's `/etc/group`, or gids).
    pub group_add: Vec<String>,
    /// The run id, when the caller chose it beforehand (12 to 64 lowercase hex digits, e.g.
    /// from [`crate::sandbox::plan::new_run_id`]); `None`: a fresh one.
    pub run_id: Option<String>,
    /// Files placed under `/inputs` (read-only).
    pub inputs: Vec<Input>,
    /// Files read back from the work directory after the run (relative paths).
    pub outputs: Vec<String>,
    /// Where outputs go: `None` into [`super::OutputFile::data`], else copied into this host
    /// directory (streamed, never whole in memory).
    pub output_dir: Option<PathBuf>,
    /// The writable scratch directory inside the container when inputs or outputs are used
    /// (default `/work`); also the working directory then, unless `workdir` or the image's
    /// WorkingDir says otherwise.
    pub work_dir: String,
    /// Free-form labels, recorded in the result and the audit log. `tenant` also names the
    /// scratch directory.
    pub labels: BTreeMap<String, String>,
    /// `None`: the runtime's policy.
    pub pull: Option<PullPolicy>,
    /// Capture at most this many bytes of stdout and of stderr (`None`: the runtime's cap).
    pub capture_limit: Option<usize>,
    /// Caps on reading outputs back (`None`: the runtime's, see
    /// [`super::RuntimeBuilder::output_limits`]); `nsrun serve` sets a tenant's `maxOutput` here.
    pub output_limits: Option<super::OutputLimits>,
}

impl RunSpec {
    fn new(source: Source) -> RunSpec {
        RunSpec {
            source,
            entrypoint: None,
            args: Vec::new(),
            env: Vec::new(),
            workdir: None,
            user: None,
            hostname: None,
            stdin: Stdin::Null,
            network: None,
            net: Default::default(),
            timeout: None,
            stop_timeout: None,
            limits: None,
            binds: Vec::new(),
            tmpfs: Vec::new(),
            tmp_size: None,
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            seccomp: SeccompSource::Default,
            userns: UsernsMode::Auto,
            uid_base: None,
            proc: crate::sandbox::ProcMode::Fresh,
            tty: false,
            stop_signal: None,
            ulimits: Vec::new(),
            shm_size: None,
            group_add: Vec::new(),
            run_id: None,
            inputs: Vec::new(),
            outputs: Vec::new(),
            output_dir: None,
            work_dir: DEFAULT_WORK_DIR.to_string(),
            labels: BTreeMap::new(),
            pull: None,
            capture_limit: None,
            output_limits: None,
        }
    }

    /// Runs an image (reference, `oci:DIR[:TAG]` or `docker-archive:FILE`).
    pub fn image(reference: impl Into<String>) -> RunSpec {
        RunSpec::new(Source::Image(reference.into()))
    }

    /// Runs on a root filesystem directory; `args` is the whole command.
    pub fn rootfs(dir: impl Into<PathBuf>) -> RunSpec {
        RunSpec::new(Source::Rootfs(dir.into()))
    }

    /// The command (rootfs) or the arguments replacing the image's Cmd.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> RunSpec {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Replaces the image's Entrypoint (an empty list clears it).
    pub fn entrypoint<I: IntoIterator<Item = S>, S: Into<String>>(mut self, ep: I) -> RunSpec {
        self.entrypoint = Some(ep.into_iter().map(Into::into).collect());
        self
    }

    /// Sets one environment variable.
    pub fn env(mut self, key: &str, value: &str) -> RunSpec {
        self.env.push(format!("{key}={value}"));
        self
    }

    pub fn workdir(mut self, dir: impl Into<String>) -> RunSpec {
        self.workdir = Some(dir.into());
        self
    }

    pub fn user(mut self, user: impl Into<String>) -> RunSpec {
        self.user = Some(user.into());
        self
    }

    pub fn stdin(mut self, data: impl Into<Data>) -> RunSpec {
        self.stdin = Stdin::Data(data.into());
        self
    }

    pub fn network(mut self, network: Network) -> RunSpec {
        self.network = Some(network);
        self
    }

    pub fn timeout(mut self, t: Duration) -> RunSpec {
        self.timeout = Some(t);
        self
    }

    pub fn limits(mut self, limits: Limits) -> RunSpec {
        self.limits = Some(limits);
        self
    }

    pub fn bind(mut self, bind: BindMount) -> RunSpec {
        self.binds.push(bind);
        self
    }

    /// Places `data` at `/inputs/<name>`.
    pub fn input(mut self, name: impl Into<String>, data: impl Into<Data>) -> RunSpec {
        self.inputs.push(Input {
            name: name.into(),
            data: data.into(),
        });
        self
    }

    /// Every regular file under the host directory `dir`, at the same relative path under
    /// `/inputs` (directories are recreated; symlinks and special files are refused).
    pub fn input_dir(mut self, dir: impl AsRef<Path>) -> Result<RunSpec, Error> {
        let dir = dir.as_ref();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let here = dir.join(&rel);
            let rd = std::fs::read_dir(&here).map_err(|e| Error::files(&here, "read", e))?;
            let mut names: Vec<_> = rd.filter_map(|e| e.ok()).collect();
            names.sort_by_key(|e| e.file_name());
            for e in names {
                let path = e.path();
                let ty = e.file_type().map_err(|e| Error::files(&path, "stat", e))?;
                let rel = rel.join(e.file_name());
                if ty.is_dir() {
                    stack.push(rel);
                } else if ty.is_file() {
                    let name = rel
                        .to_str()
                        .ok_or_else(|| {
                            Error::bad_spec(format!(
                                "input {}: names must be UTF-8",
                                path.display()
                            ))
                        })?
                        .to_string();
                    self.inputs.push(Input {
                        name,
                        data: Data::File(path),
                    });
                } else {
                    return Err(Error::bad_spec(format!(
                        "input directory entry {} is not a regular file or directory",
                        path.display()
                    )));
                }
            }
        }
        Ok(self)
    }

    /// Reads `path` (relative to the work directory) back after the run.
    pub fn output(mut self, path: impl Into<String>) -> RunSpec {
        self.outputs.push(path.into());
        self
    }

    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> RunSpec {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub fn pull(mut self, policy: PullPolicy) -> RunSpec {
        self.pull = Some(policy);
        self
    }

    pub fn capture_limit(mut self, bytes: usize) -> RunSpec {
        self.capture_limit = Some(bytes);
        self
    }

    /// Whether the run gets a scratch directory (`/inputs`, the work directory).
    pub fn uses_scratch(&self) -> bool {
        !self.inputs.is_empty() || !self.outputs.is_empty()
    }
}

/// The writable scratch directory inside the container, unless [`RunSpec::work_dir`] says else.
pub const DEFAULT_WORK_DIR: &str = "/work";
/// Where inputs appear inside the container.
pub const INPUTS_DIR: &str = "/inputs";
