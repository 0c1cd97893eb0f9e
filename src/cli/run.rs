//! `nsrun run [OPTIONS] (--rootfs DIR | IMAGE) [--] CMD [ARG…]`

use std::path::PathBuf;
use std::time::Duration;

use nsrun::runner::{self, Data, RunResult, RunSpec, Runtime, Stdin};
use nsrun::sandbox::cgroup::Limits;
use nsrun::sandbox::idmap::UsernsMode;
use nsrun::sandbox::seccomp::SeccompSource;
use nsrun::sandbox::trace;
use nsrun::sandbox::{self, parse_size, Network, Stdio, TmpfsMount};

use super::docker_syntax::{self, MountArg};
use super::image::ImageOpts;
use super::Failure;

/// Flags follow `docker run` where Docker has one.
#[derive(Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub struct RunArgs {
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// Run on this root filesystem directory instead of an image.
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// Set an environment variable (KEY=VALUE, or KEY to copy it from nsrun's environment).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read environment variables from a file of KEY=VALUE lines.
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// User to run as: UID[:GID] or NAME[:GROUP] of the container's /etc/passwd.
    #[arg(short = 'u', long = "user", value_name = "USER")]
    pub user: Option<String>,
    /// Keep stdin open and pass it to the tool (otherwise it reads /dev/null).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY from the run's own /dev/pts (stdout and stderr both go to it).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Container hostname (default: the first 12 digits of the run id).
    #[arg(short = 'h', long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Bind mount HOST:CONTAINER[:OPTIONS]: ro, rw; z/Z accepted and ignored (no SELinux
    /// relabelling); propagation flags refused.
    #[arg(short = 'v', long = "volume", value_name = "HOST:CONTAINER[:OPTS]")]
    pub volumes: Vec<String>,
    /// Mount a tmpfs at PATH: Docker's options rw, ro, exec, noexec, nosuid, nodev, size=SIZE,
    /// mode=OCTAL (or a bare SIZE; default size 64m, mode 1777, nosuid and nodev always).
    #[arg(long, value_name = "PATH[:OPTS]")]
    pub tmpfs: Vec<String>,
    /// Docker's --mount: type=bind,source=HOST,target=PATH[,readonly] or
    /// type=tmpfs,target=PATH[,tmpfs-size=SIZE][,tmpfs-mode=OCTAL].
    #[arg(long = "mount", value_name = "KEY=VALUE,...")]
    pub mounts: Vec<String>,
    /// Bind a host character device: HOST[:CONTAINER][:rwm]; opened with the node's own
    /// permissions (block devices and read-only devices are refused).
    #[arg(long, value_name = "HOST[:CONTAINER][:PERMS]")]
    pub device: Vec<String>,
    /// Size of /dev/shm (default 64m).
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub shm_size: Option<String>,
    /// Resource limit NAME=SOFT[:HARD] with Docker's names (nofile, nproc, core, stack, ...);
    /// -1 is unlimited; raising a hard limit needs root.
    #[arg(long, value_name = "NAME=SOFT[:HARD]")]
    pub ulimit: Vec<String>,
    /// Signal that stops the tool on --timeout or a SIGTERM to nsrun (default: the image's
    /// StopSignal, else SIGTERM); SIGKILL follows after --stop-timeout.
    #[arg(long, value_name = "SIGNAL")]
    pub stop_signal: Option<String>,
    /// Add a supplementary group (name of the image's /etc/group, or a gid).
    #[arg(long, value_name = "GROUP")]
    pub group_add: Vec<String>,
    /// Write the run id to FILE (which must not exist) before the tool starts.
    #[arg(long, value_name = "FILE")]
    pub cidfile: Option<PathBuf>,
    /// Size cap of the /tmp tmpfs.
    #[arg(
        long,
        value_name = "SIZE",
        default_value = "64m",
        allow_hyphen_values = true
    )]
    pub tmpfs_size: String,
    /// Network: none (own namespace, loopback only), private (outbound NAT, safe by default) or host.
    #[arg(long, alias = "net", value_name = "MODE", default_value = "none")]
    pub network: String,
    /// With --network private: allow only these destinations (CIDR, IP or hostname, optional
    /// :PORT[-PORT], optional /tcp or /udp); repeatable.
    #[arg(long, value_name = "DEST")]
    pub egress_allow: Vec<String>,
    /// Publish a container port on the host: [IP:]HOSTPORT:CONTAINERPORT[/udp] (IP defaults to 127.0.0.1).
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    pub publish: Vec<String>,
    /// Upstream DNS server of nsrun's forwarder (default: the host's resolvers); repeatable.
    #[arg(long, value_name = "IP")]
    pub dns: Vec<String>,
    /// Add a line to /etc/hosts: NAME:IP; repeatable.
    #[arg(long, value_name = "NAME:IP")]
    pub add_host: Vec<String>,
    /// User-mode network helper of --network private: pasta (default) or slirp4netns.
    #[arg(long, value_name = "HELPER", env = "NSRUN_NET_HELPER")]
    pub net_helper: Option<String>,
    /// /proc: fresh (the run's own) or host-bind (nsrun's own /proc bound: weaker, the tool
    /// sees the outer processes; for containers that refuse a fresh /proc).
    #[arg(long, value_name = "MODE", default_value = "fresh")]
    pub proc: String,
    /// User namespace mapping: auto, single or subid.
    #[arg(long, value_name = "MODE", default_value = "auto")]
    pub userns: String,
    /// Host uid/gid that container root maps to when running as root.
    #[arg(long, value_name = "ID", env = "NSRUN_UID_BASE")]
    pub uid_base: Option<u32>,
    /// Kill the run after SECONDS (SIGTERM, then SIGKILL after --stop-timeout); exit 124.
    #[arg(long, value_name = "SECONDS", allow_hyphen_values = true)]
    pub timeout: Option<f64>,
    /// Seconds between SIGTERM and SIGKILL.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value = "2",
        allow_hyphen_values = true
    )]
    pub stop_timeout: f64,
    /// Memory limit (e.g. 256m).
    #[arg(short = 'm', long, value_name = "SIZE", allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// Memory + swap limit; -1 for unlimited swap.
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// Number of CPUs (e.g. 0.5).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub cpus: Option<f64>,
    /// Relative CPU weight (Docker's 2..262144, default 1024).
    #[arg(short = 'c', long, value_name = "N", allow_hyphen_values = true)]
    pub cpu_shares: Option<u64>,
    /// Maximum number of processes.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub pids_limit: Option<u64>,
    /// Add a capability (e.g. NET_RAW, or ALL).
    #[arg(long, value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a capability (e.g. CHOWN, or ALL).
    #[arg(long, value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// seccomp=FILE|unconfined, no-new-privileges (always on).
    #[arg(long, value_name = "OPT")]
    pub security_opt: Vec<String>,
    /// Print peak memory and CPU time to stderr when the run ends.
    #[arg(long)]
    pub stats: bool,
    /// Accepted for Docker compatibility: nothing of a run is ever kept.
    #[arg(long)]
    pub rm: bool,
    /// Accepted for Docker compatibility: the root filesystem is always read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Accepted for Docker compatibility: nsrun's own pid 1 always forwards signals and reaps.
    #[arg(long)]
    pub init: bool,
    /// Override the image's entrypoint ("" clears it).
    #[arg(long, value_name = "CMD")]
    pub entrypoint: Option<String>,
    /// Place HOSTFILE at /inputs/NAME (read-only) before the tool starts.
    #[arg(long, value_name = "NAME=HOSTFILE")]
    pub input: Vec<String>,
    /// Place every file under DIR in /inputs (same relative paths).
    #[arg(long, value_name = "DIR")]
    pub input_dir: Vec<PathBuf>,
    /// Read PATH (relative to /work, the writable work directory) back after the run.
    #[arg(long, value_name = "PATH")]
    pub output: Vec<String>,
    /// Where --output files are copied (same relative paths).
    #[arg(long, value_name = "HOSTDIR")]
    pub output_dir: Option<PathBuf>,
    /// A label recorded in the result (`tenant` also names the run's scratch directory).
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Print the run's result as JSON on stdout, the tool's output inside it (captured up to
    /// 16 MiB per stream). The run goes through the helper: a signal to nsrun ends the run
    /// rather than being forwarded to the tool.
    #[arg(long)]
    pub json: bool,
    /// Write the run's result as JSON to FILE; stdout and stderr stream as usual.
    #[arg(long, value_name = "FILE")]
    pub result_json: Option<PathBuf>,
    #[command(flatten)]
    pub images: ImageOpts,
    /// The image to run (with --rootfs: the command).
    #[arg(value_name = "IMAGE")]
    pub image: Option<String>,
    /// The command and its arguments.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub args: Vec<String>,
}

/// Turns the flags into a run request and the runtime to run it with. Every flag value is
/// checked here, before anything is created; the image rules and the cache are the runner's.
pub fn request(a: &RunArgs) -> Result<(Runtime, RunSpec), Failure> {
    if a.tty && a.json {
        return Err(Failure::usage(
            "-t and --json: a terminal's output cannot be captured; drop one of them",
        ));
    }
    if a.tty && a.interactive && !nsrun::sandbox::tty::is_terminal(0) {
        // Docker's refusal, for the same reason: raw mode and window sizes need a terminal.
        return Err(Failure::usage(
            "the input device is not a TTY: drop -t, or run from a terminal",
        ));
    }
    if a.interactive && a.images.password_stdin {
        return Err(Failure::usage(
            "--password-stdin and -i both want stdin: use --creds-file for the credentials",
        ));
    }
    // The tool's stdio, before anything is pulled or created (the library checks again).
    let usage = |e: sandbox::RunError| Failure::usage(e.to_string());
    if a.interactive {
        sandbox::check_stdio(0, "stdin").map_err(usage)?;
    }
    sandbox::check_stdio(1, "stdout").map_err(usage)?;
    sandbox::check_stdio(2, "stderr").map_err(usage)?;
    let mut s = match (&a.rootfs, &a.image) {
        // With --rootfs there is no image: the first positional is the command.
        (Some(dir), _) => RunSpec::rootfs(dir.clone()).args(a.image.iter().chain(&a.args).cloned()),
        (None, Some(reference)) => RunSpec::image(reference.clone()).args(a.args.clone()),
        (None, None) => {
            return Err(Failure::usage(
                "no image given: nsrun run [OPTIONS] IMAGE [CMD...] (or --rootfs DIR)",
            ))
        }
    };
    for file in &a.env_file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| Failure::usage(format!("--env-file {}: {e}", file.display())))?;
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            push_env(&mut s.env, line)?;
        }
    }
    for e in &a.env {
        push_env(&mut s.env, e)?;
    }
    s.entrypoint = a.entrypoint.as_ref().map(|e| {
        if e.is_empty() {
            Vec::new()
        } else {
            vec![e.clone()]
        }
    });
    s.workdir = a.workdir.clone();
    s.user = a.user.clone();
    if a.interactive {
        s.stdin = Stdin::Inherit;
    }
    s.tty = a.tty;
    s.hostname = a.hostname.clone();
    for v in &a.volumes {
        let (b, notes) = sandbox::mount_opts::parse_volume(v).map_err(Failure::usage)?;
        notes.iter().for_each(super::log::note);
        s.binds.push(b);
    }
    s.tmpfs = a
        .tmpfs
        .iter()
        .map(|v| v.parse::<TmpfsMount>())
        .collect::<Result<_, _>>()
        .map_err(Failure::usage)?;
    for m in &a.mounts {
        match docker_syntax::parse_mount(m).map_err(Failure::usage)? {
            MountArg::Bind(b) => s.binds.push(b),
            MountArg::Tmpfs(t) => s.tmpfs.push(t),
        }
    }
    let rootless = !nix::unistd::geteuid().is_root();
    for d in &a.device {
        s.binds
            .push(docker_syntax::parse_device(d, rootless).map_err(Failure::usage)?);
    }
    s.shm_size = a
        .shm_size
        .as_deref()
        .map(|v| parse_size(v).map_err(|e| Failure::usage(format!("--shm-size: {e}"))))
        .transpose()?;
    s.ulimits = parse_all(&a.ulimit)?;
    if let Some(sig) = &a.stop_signal {
        sandbox::ulimit::parse_signal(sig)
            .map_err(|e| Failure::usage(format!("--stop-signal: {e}")))?;
        s.stop_signal = Some(sig.clone());
    }
    s.group_add = a.group_add.clone();
    s.tmp_size =
        Some(parse_size(&a.tmpfs_size).map_err(|e| Failure::usage(format!("--tmpfs-size: {e}")))?);
    s.network = Some(a.network.parse::<Network>().map_err(Failure::usage)?);
    s.net.egress_allow = parse_all(&a.egress_allow)?;
    s.net.publish = parse_all(&a.publish)?;
    s.net.add_hosts = parse_all(&a.add_host)?;
    s.net.dns = a
        .dns
        .iter()
        .map(|d| {
            d.parse()
                .map_err(|_| Failure::usage(format!("invalid --dns {d:?}: expected an IP address")))
        })
        .collect::<Result<_, _>>()?;
    s.net.backend = a
        .net_helper
        .as_deref()
        .filter(|h| !h.is_empty())
        .map(str::parse)
        .transpose()
        .map_err(Failure::usage)?;
    s.userns = a.userns.parse::<UsernsMode>().map_err(Failure::usage)?;
    s.proc = a.proc.parse().map_err(Failure::usage)?;
    s.uid_base = a.uid_base;
    s.timeout = a.timeout.map(|t| seconds("--timeout", t)).transpose()?;
    s.stop_timeout = Some(seconds("--stop-timeout", a.stop_timeout)?);
    s.limits = Some(limits(a)?);
    s.cap_add = a.cap_add.clone();
    s.cap_drop = a.cap_drop.clone();
    for opt in &a.security_opt {
        let (k, v) = opt.split_once(['=', ':']).unwrap_or((opt.as_str(), ""));
        match (k, v) {
            ("seccomp", "unconfined") => s.seccomp = SeccompSource::Unconfined,
            ("seccomp", "") => {
                return Err(Failure::usage(
                    "--security-opt seccomp needs =FILE or =unconfined",
                ))
            }
            ("seccomp", file) => s.seccomp = SeccompSource::File(file.into()),
            ("no-new-privileges", "" | "true") => {}
            ("no-new-privileges", "false") => {
                return Err(Failure::usage(
                    "--security-opt no-new-privileges=false: nsrun always sets no_new_privs",
                ))
            }
            _ => {
                return Err(Failure::usage(format!(
                    "unsupported --security-opt {opt:?}"
                )))
            }
        }
    }
    for i in &a.input {
        let Some((name, file)) = i.split_once('=') else {
            return Err(Failure::usage(format!(
                "--input {i:?}: expected NAME=HOSTFILE"
            )));
        };
        if !std::path::Path::new(file).is_file() {
            return Err(Failure::usage(format!(
                "--input {name}: {file:?} is not a readable file"
            )));
        }
        s = s.input(name, Data::File(file.into()));
    }
    for d in &a.input_dir {
        s = s.input_dir(d).map_err(|e| Failure::usage(e.to_string()))?;
    }
    s.outputs = a.output.clone();
    if !s.outputs.is_empty() && a.output_dir.is_none() && !a.json && a.result_json.is_none() {
        return Err(Failure::usage(
            "--output needs --output-dir HOSTDIR (or --json / --result-json to get the files in the result)",
        ));
    }
    if let Some(dir) = &a.output_dir {
        if !dir.is_dir() {
            return Err(Failure::usage(format!(
                "--output-dir {}: not a directory",
                dir.display()
            )));
        }
    }
    s.output_dir = a.output_dir.clone();
    for l in &a.label {
        let Some((k, v)) = l.split_once('=') else {
            return Err(Failure::usage(format!("--label {l:?}: expected KEY=VALUE")));
        };
        s = s.label(k, v);
    }
    s.pull = a.images.pull;
    let mut b = Runtime::builder()
        .root(
            a.images
                .root
                .clone()
                .unwrap_or_else(nsrun::store::Store::default_root),
        )
        .registry(a.images.registry_options()?)
        .image_limits(a.images.unpack_limits()?)
        // The command line writes no audit log: --result-json is its record.
        .audit(std::sync::Arc::new(runner::NoAudit));
    if let Some(p) = &a.images.platform {
        b = b.platform(p.clone());
    }
    if a.json {
        // Captured output needs the helper: this very binary.
        let exe = std::env::current_exe()
            .map_err(|e| Failure::usage(format!("cannot find the nsrun binary: {e}")))?;
        b = b.helper(exe);
    }
    let rt = b.build().map_err(|e| Failure {
        code: e.exit_code(),
        message: e.to_string(),
    })?;
    Ok((rt, s))
}

fn parse_all<T: std::str::FromStr<Err = String>>(v: &[String]) -> Result<Vec<T>, Failure> {
    v.iter()
        .map(|x| x.parse::<T>())
        .collect::<Result<_, _>>()
        .map_err(Failure::usage)
}

fn push_env(env: &mut Vec<String>, item: &str) -> Result<(), Failure> {
    if item.contains('=') {
        env.push(item.to_string());
    } else if item.is_empty() || item.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Failure::usage(format!(
            "invalid environment variable {item:?}: expected KEY=VALUE or the KEY of a variable to copy"
        )));
    } else if let Ok(v) = std::env::var(item) {
        // Docker's `-e KEY`: pass nsrun's own value through, or nothing if unset.
        env.push(format!("{item}={v}"));
    }
    Ok(())
}

fn seconds(flag: &str, v: f64) -> Result<Duration, Failure> {
    Duration::try_from_secs_f64(v)
        .ok()
        .filter(|d| !d.is_zero() || flag == "--stop-timeout")
        .ok_or_else(|| Failure::usage(format!("{flag} {v}: expected a positive number of seconds")))
}

fn limits(a: &RunArgs) -> Result<Limits, Failure> {
    let size = |flag: &str, v: &Option<String>| {
        v.as_deref()
            .map(|v| parse_size(v).map_err(|e| Failure::usage(format!("{flag}: {e}"))))
            .transpose()
    };
    let memory_swap = match a.memory_swap.as_deref() {
        Some("-1") => Some(-1),
        other => size("--memory-swap", &other.map(String::from))?.map(|v| v as i64),
    };
    if let Some(c) = a.cpus {
        if !(c.is_finite() && c > 0.0) {
            return Err(Failure::usage(format!(
                "--cpus {c}: expected a positive number"
            )));
        }
    }
    Ok(Limits {
        memory: size("--memory", &a.memory)?,
        memory_swap,
        cpus: a.cpus,
        cpu_shares: a.cpu_shares,
        pids: a.pids_limit,
    })
}

/// `nsrun run`: returns the exit status nsrun should leave with.
pub fn main(a: RunArgs) -> Result<i32, Failure> {
    let (rt, mut spec) = request(&a)?;
    trace::mark(
        trace::Phase::Parse,
        "command line parsed into a run request",
    );
    let run_id = nsrun::sandbox::plan::new_run_id();
    spec.run_id = Some(run_id.clone());
    super::log::debug(format_args!("run id {run_id}"));
    // Docker's --cidfile: written before the run, refused if it exists (another run may own
    // it), removed again if the run could not start.
    let _cidfile = a
        .cidfile
        .as_deref()
        .map(|f| CidFile::create(f, &run_id))
        .transpose()?;
    let memory = a.memory.clone();
    let timeout = spec.timeout;
    let result = if a.json {
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Failure::usage(format!("cannot start the tokio runtime: {e}")))?;
        tokio.block_on(rt.run(spec))
    } else {
        rt.run_here(spec, Stdio::default())
    };
    let write_result = |json: &str| -> Result<(), Failure> {
        if let Some(f) = &a.result_json {
            std::fs::write(f, format!("{json}\n")).map_err(|e| Failure {
                code: 125,
                message: format!("--result-json {}: {e}", f.display()),
            })?;
        }
        if a.json {
            println!("{json}");
        }
        Ok(())
    };
    let r = match result {
        Ok(r) => {
            if let Some(c) = _cidfile {
                c.keep();
            }
            r
        }
        Err(e) => {
            if a.json || a.result_json.is_some() {
                let json = serde_json::json!({ "error": e }).to_string();
                write_result(&json)?;
            }
            return Err(Failure {
                code: e.exit_code(),
                message: e.to_string(),
            });
        }
    };
    report(&r, timeout, memory.as_deref(), a.stats);
    if trace::enabled() {
        eprint!("{}", trace::render(&trace::take()));
    }
    write_result(&serde_json::to_string(&r).map_err(|e| Failure::usage(e.to_string()))?)?;
    Ok(r.exit_code)
}

/// `--cidfile`: removed on drop unless kept (the run started).
struct CidFile(Option<PathBuf>);

impl CidFile {
    fn create(path: &std::path::Path, run_id: &str) -> Result<CidFile, Failure> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| {
                Failure::usage(match e.kind() {
                    std::io::ErrorKind::AlreadyExists => format!(
                        "--cidfile {}: the file exists: another run may own it; remove it first",
                        path.display()
                    ),
                    _ => format!("--cidfile {}: {e}", path.display()),
                })
            })?;
        let file = CidFile(Some(path.to_path_buf()));
        f.write_all(run_id.as_bytes())
            .map_err(|e| Failure::usage(format!("--cidfile {}: {e}", path.display())))?;
        Ok(file)
    }

    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for CidFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// What `nsrun run` says on stderr about a finished run.
fn report(r: &RunResult, timeout: Option<Duration>, memory: Option<&str>, stats: bool) {
    use super::log;
    if !r.unenforced.is_empty() {
        log::warn(format_args!(
            "limits not enforced on this host: {}",
            r.unenforced.join("; ")
        ));
    }
    for note in &r.notes {
        log::note(note);
    }
    for w in &r.warnings {
        log::warn(w);
    }
    log::debug(format_args!(
        "run {} ended: exit status {} (signal {:?}), setup {:.1} ms, run {:.1} ms",
        r.run_id,
        r.exit_code,
        r.signal,
        r.durations.setup.as_secs_f64() * 1e3,
        r.durations.run.as_secs_f64() * 1e3,
    ));
    if r.timed_out {
        let t = timeout.unwrap_or_default().as_secs_f64();
        eprintln!(
            "nsrun: timed out after {t}s: sent the tool its stop signal (SIGTERM unless --stop-signal or the image say otherwise), then SIGKILL to every process of the run"
        );
    }
    if r.oom_killed {
        eprintln!(
            "nsrun: out of memory: the kernel's OOM killer ended the tool (--memory {})",
            memory.unwrap_or("limit")
        );
    }
    for e in r.outputs.iter().filter_map(|o| o.error.as_ref()) {
        log::warn(e);
    }
    for o in r.outputs.iter().filter(|o| o.missing) {
        log::warn(format_args!(
            "output {:?} was not created by the tool",
            o.path
        ));
    }
    for o in r.outputs.iter().filter(|o| o.truncated) {
        log::warn(format_args!(
            "output {:?} is {} bytes, more than the output cap: truncated",
            o.path, o.size
        ));
    }
    if stats {
        eprintln!(
            "nsrun: stats: setup {:.1} ms, wall {:.1} ms, cpu {:.1} ms, peak memory {}",
            r.durations.setup.as_secs_f64() * 1e3,
            (r.durations.setup + r.durations.run).as_secs_f64() * 1e3,
            r.cpu_time.as_secs_f64() * 1e3,
            r.peak_memory.map_or_else(
                || "unknown".to_string(),
                |b| format!("{:.1} MiB", b as f64 / 1048576.0)
            ),
        );
    }
}
