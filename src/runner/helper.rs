//! Running sandboxes from a multithreaded (tokio) program.
//!
//! After `fork` in a multithreaded process only async-signal-safe calls are allowed, and
//! `unshare(CLONE_NEWUSER)` is refused outright. So the library never forks the caller: it starts
//! a small single-threaded helper, the `nsrun` binary in a hidden mode, hands it the
//! [`SandboxSpec`] as JSON over a socket on fd 3, and lets it clone, wait and clean up. The
//! tool's stdin, stdout and stderr are the helper's own, so output flows without a copy through
//! the helper. If the caller goes away (the future is dropped, the process dies), the socket
//! closes and the helper kills the run and removes what it created.
//!
//! ```no_run
//! # async fn demo() -> Result<(), nsrun::helper::HelperError> {
//! use nsrun::helper::Helper;
//! use nsrun::sandbox::SandboxSpec;
//! let helper = Helper::locate()?;
//! let out = helper.run(&SandboxSpec::new("/srv/busybox", ["echo", "hi"]), None).await?;
//! assert_eq!(out.stdout, b"hi\n");
//! assert_eq!(out.outcome.exit_code(), 0);
//! # Ok(()) }
//! ```

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::runner::Error;
use crate::sandbox::{self, Outcome, SandboxSpec};

/// The hidden first argument that puts the `nsrun` binary in helper mode.
pub const HELPER_ARG: &str = "__nsrun-helper";
/// Environment variable naming the helper binary.
pub const HELPER_ENV: &str = "NSRUN_HELPER";
/// The descriptor the helper finds its control socket on.
pub const CONTROL_FD: i32 = 3;
/// The protocol version this library and helper speak.
pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum HelperError {
    #[error("no nsrun helper found: set {HELPER_ENV}, install nsrun next to this program or on PATH, or call nsrun::helper::run_if_helper() first thing in main and use Helper::current_exe()")]
    NotFound,
    #[error("starting the nsrun helper {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the nsrun helper: {0}")]
    Io(#[from] std::io::Error),
    #[error("the nsrun helper ended without a result ({0})")]
    NoResult(String),
    #[error("the request cannot be sent to the helper: {0}")]
    Request(String),
    /// The run failed before the tool ran; `exit_code` follows Docker (125, 126, 127).
    #[error("{message}")]
    Run {
        message: String,
        exit_code: i32,
        error: Error,
    },
}

impl From<HelperError> for Error {
    fn from(e: HelperError) -> Error {
        match e {
            HelperError::Run { error, .. } => error,
            HelperError::Request(message) => Error::BadSpec { message },
            other => Error::Helper {
                message: other.to_string(),
            },
        }
    }
}

/// What the library sends: one JSON line on fd 3. Any byte sent after it, or closing the
/// socket, kills the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Request {
    /// [`PROTOCOL_VERSION`]; a helper refuses a version it does not speak.
    pub protocol: u32,
    pub spec: SandboxSpec,
}

impl Default for Request {
    fn default() -> Self {
        Request {
            protocol: PROTOCOL_VERSION,
            spec: SandboxSpec::default(),
        }
    }
}

/// What the helper answers: JSON lines on fd 3, zero or one `started`, then exactly one
/// `done` or `failed`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// The tool has started.
    Started {
        run_id: String,
        /// From clone to the tool's start, in seconds.
        #[serde(with = "crate::runner::result::secs")]
        setup_time: Duration,
    },
    /// The tool ran and ended (whatever its exit status).
    Done { outcome: Outcome },
    /// The run failed before the tool ran.
    Failed { error: Error },
}

/// A finished run with its captured output.
#[derive(Debug, Clone)]
pub struct Output {
    pub outcome: Outcome,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// The helper binary used to run sandboxes.
#[derive(Debug, Clone)]
pub struct Helper {
    path: PathBuf,
}

/// A helper process running one sandbox: its control socket, and the tool's stdio pipes (when
/// asked for).
#[derive(Debug)]
pub struct HelperRun {
    child: tokio::process::Child,
    rx: tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    tx: tokio::net::unix::OwnedWriteHalf,
    pub stdin: Option<tokio::process::ChildStdin>,
    pub stdout: Option<tokio::process::ChildStdout>,
    pub stderr: Option<tokio::process::ChildStderr>,
    line: String,
}

impl HelperRun {
    /// The next message; `Ok(None)` once the helper closed the socket.
    pub async fn message(&mut self) -> Result<Option<Message>, HelperError> {
        self.line.clear();
        if self.rx.read_line(&mut self.line).await? == 0 {
            return Ok(None);
        }
        serde_json::from_str(&self.line)
            .map(Some)
            .map_err(|e| HelperError::NoResult(format!("unreadable message from the helper: {e}")))
    }

    /// Asks the helper to kill the run; it still answers with the outcome (`cancelled`).
    pub async fn cancel(&mut self) {
        // The helper may be gone already: nothing to kill then.
        let _ = self.tx.write_all(b"cancel\n").await;
    }

    /// Waits for the helper process to exit; returns a description of its status.
    pub async fn wait(&mut self) -> String {
        match self.child.wait().await {
            Ok(st) => st.to_string(),
            Err(e) => e.to_string(),
        }
    }
}

/// A started helper process that has not been sent its request yet.
#[derive(Debug)]
struct Idle {
    child: tokio::process::Child,
    ours: UnixStream,
}

impl Idle {
    /// Sends the request for `spec` (`with_stdin`: the tool's stdin is not null).
    fn send(mut self, spec: &SandboxSpec, with_stdin: bool) -> Result<HelperRun, HelperError> {
        let mut request = Request {
            protocol: PROTOCOL_VERSION,
            spec: spec.clone(),
        };
        request.spec.stdin = with_stdin;
        let mut line =
            serde_json::to_vec(&request).map_err(|e| HelperError::Request(e.to_string()))?;
        line.push(b'\n');
        // The request fits the socket buffer unless it is huge; written before going async so
        // that the helper never waits on us.
        (&self.ours).write_all(&line)?;
        self.ours.set_nonblocking(true)?;
        let (rx, tx) = tokio::net::UnixStream::from_std(self.ours)?.into_split();
        Ok(HelperRun {
            stdin: self.child.stdin.take(),
            stdout: self.child.stdout.take(),
            stderr: self.child.stderr.take(),
            child: self.child,
            rx: tokio::io::BufReader::new(rx),
            tx,
            line: String::new(),
        })
    }
}

/// A warm pool of helper processes, started ahead of the runs that will use them: a run takes
/// one that has already been executed, linked and initialised, and sends it its request, which
/// saves the helper's start-up (an exec of the `nsrun` binary) from the run's critical path.
///
/// A pooled helper is an idle `nsrun` process that has read nothing yet: it holds no namespace,
/// no mount, no id map and no file of any run. Each serves exactly one run and then exits, like
/// a helper started for that run, so the run's sandbox is created, confined and torn down the
/// same way as a cold one (see docs/confinement.md, "Warm pool"). Pooled helpers serve runs
/// whose stdin is null and whose output is captured (the [`crate::runner::Runtime`] default);
/// others start a helper of their own. The pool refills in the background (a blocking task per
/// helper taken); dropping the pool closes the idle helpers' sockets and they exit. A pooled
/// helper has the environment and working directory its caller had when the helper was started,
/// not when the run was asked for: a caller that changes either should not rely on relative
/// paths in its specs.
#[derive(Debug)]
pub struct Pool {
    helper: Helper,
    size: usize,
    /// Oldest first: a run takes the helper that has waited longest.
    idle: std::sync::Mutex<std::collections::VecDeque<Idle>>,
    /// Helpers being started by refill tasks.
    starting: std::sync::atomic::AtomicUsize,
}

impl Pool {
    /// A pool of `size` helpers of `helper`; filled by [`Pool::fill`] and by each
    /// [`Pool::start`].
    pub fn new(helper: Helper, size: usize) -> std::sync::Arc<Pool> {
        std::sync::Arc::new(Pool {
            helper,
            size,
            idle: std::sync::Mutex::new(std::collections::VecDeque::new()),
            starting: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Idle helpers ready now.
    pub fn ready(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Starts helpers in the background until the pool is full. Needs a tokio runtime.
    pub fn fill(self: &std::sync::Arc<Self>) {
        use std::sync::atomic::Ordering;
        loop {
            let have = self.ready() + self.starting.load(Ordering::SeqCst);
            if have >= self.size {
                return;
            }
            self.starting.fetch_add(1, Ordering::SeqCst);
            let pool = std::sync::Arc::clone(self);
            tokio::task::spawn_blocking(move || {
                let started = pool.helper.spawn_idle(None, true);
                if let Ok(idle) = started {
                    pool.idle
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_back(idle);
                }
                pool.starting.fetch_sub(1, Ordering::SeqCst);
            });
        }
    }

    /// Starts the run of `spec` (null stdin, captured output) in a pooled helper when one is
    /// ready, else in a fresh one; either way the pool is topped up in the background.
    pub fn start(
        self: &std::sync::Arc<Self>,
        spec: &SandboxSpec,
    ) -> Result<HelperRun, HelperError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front();
        self.fill();
        if let Some(idle) = idle {
            match idle.send(spec, false) {
                Ok(run) => return Ok(run),
                // It died while idle (killed from outside): the run gets a fresh one.
                Err(HelperError::Io(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.helper.start(spec, None, true)
    }
}

impl Helper {
    /// Uses the binary at `path` (an `nsrun` binary, or a program that calls [`run_if_helper`]).
    pub fn new(path: impl Into<PathBuf>) -> Helper {
        Helper { path: path.into() }
    }

    /// This program itself; it must call [`run_if_helper`] first thing in `main`.
    pub fn current_exe() -> Result<Helper, HelperError> {
        std::env::current_exe()
            .map(Helper::new)
            .map_err(|_| HelperError::NotFound)
    }

    /// Finds the helper: `$NSRUN_HELPER`, then `nsrun` next to the current executable (or one
    /// directory up, where cargo puts test binaries), then `nsrun` on `PATH`.
    pub fn locate() -> Result<Helper, HelperError> {
        if let Some(p) = std::env::var_os(HELPER_ENV) {
            return Ok(Helper::new(p));
        }
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf));
        let near = exe_dir
            .iter()
            .flat_map(|d| [d.join("nsrun"), d.join("../nsrun")]);
        let on_path = std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("nsrun"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        near.chain(on_path)
            .find(|p| p.is_file())
            .map(Helper::new)
            .ok_or(HelperError::NotFound)
    }

    /// The helper binary's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts a helper for `spec`. The tool's stdin is `stdin` (with `spec.stdin` set when it
    /// is not null); its stdout and stderr are piped to [`HelperRun::stdout`] and
    /// [`HelperRun::stderr`] when `capture`, else inherited.
    pub fn start(
        &self,
        spec: &SandboxSpec,
        stdin: Option<Stdio>,
        capture: bool,
    ) -> Result<HelperRun, HelperError> {
        let with_stdin = stdin.is_some();
        self.spawn_idle(stdin, capture)?.send(spec, with_stdin)
    }

    /// Starts a helper process that waits for its request on the control socket.
    fn spawn_idle(&self, stdin: Option<Stdio>, capture: bool) -> Result<Idle, HelperError> {
        let (ours, theirs) = UnixStream::pair()?;
        let theirs_fd = theirs.as_raw_fd();
        let mut cmd = tokio::process::Command::new(&self.path);
        let out = || {
            if capture {
                Stdio::piped()
            } else {
                Stdio::inherit()
            }
        };
        cmd.arg(HELPER_ARG)
            .stdin(stdin.unwrap_or_else(Stdio::null))
            .stdout(out())
            .stderr(out());
        // SAFETY: the closure runs between fork and exec and calls only dup2 and fcntl, which
        // are async-signal-safe. dup2 clears close-on-exec on the new descriptor, except when
        // the socket already is fd 3: then the flag is cleared by hand.
        unsafe {
            cmd.as_std_mut().pre_exec(move || {
                let ret = if theirs_fd == CONTROL_FD {
                    libc::fcntl(CONTROL_FD, libc::F_SETFD, 0)
                } else {
                    libc::dup2(theirs_fd, CONTROL_FD)
                };
                if ret < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| HelperError::Spawn {
            path: self.path.clone(),
            source,
        })?;
        drop(theirs);
        Ok(Idle { child, ours })
    }

    /// Runs `spec`, feeding `stdin` (if any) to the tool and collecting its output, all of it
    /// (see [`crate::runner::Runtime`] for capped capture). Dropping the returned future kills
    /// the run.
    pub async fn run(
        &self,
        spec: &SandboxSpec,
        stdin: Option<Vec<u8>>,
    ) -> Result<Output, HelperError> {
        let mut run = self.start(spec, stdin.as_ref().map(|_| Stdio::piped()), true)?;
        let mut child_stdin = run.stdin.take();
        let mut stdout = run.stdout.take().expect("piped");
        let mut stderr = run.stderr.take().expect("piped");
        let feed = async {
            if let (Some(pipe), Some(data)) = (child_stdin.as_mut(), stdin) {
                // A tool that exits without reading all of its input closes the pipe: not an error.
                let _ = pipe.write_all(&data).await;
            }
            drop(child_stdin.take());
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let answer = async {
            let mut last = None;
            while let Some(m) = run.message().await? {
                last = Some(m);
            }
            Ok::<_, HelperError>(last)
        };
        let ((), o, e, last) = tokio::join!(
            feed,
            stdout.read_to_end(&mut out),
            stderr.read_to_end(&mut err),
            answer
        );
        o?;
        e?;
        let last = last?;
        let status = run.wait().await;
        match last {
            Some(Message::Done { outcome }) => Ok(Output {
                outcome,
                stdout: out,
                stderr: err,
            }),
            Some(Message::Failed { error }) => Err(HelperError::Run {
                message: error.to_string(),
                exit_code: error.exit_code(),
                error,
            }),
            _ => Err(HelperError::NoResult(format!(
                "{status}; stderr: {}",
                String::from_utf8_lossy(&err).trim()
            ))),
        }
    }
}

/// For a program that is its own helper: call first thing in `main`, before any thread starts
/// (so in a plain `fn main`, not inside `#[tokio::main]`, which has started its workers by
/// then). In helper mode it runs the sandbox and exits; otherwise it returns at once.
pub fn run_if_helper() {
    if std::env::args_os().nth(1).is_some_and(|a| a == HELPER_ARG) {
        std::process::exit(helper_main());
    }
}

/// The helper's side: read the request from fd 3, run it (fd 3 closing or sending anything
/// cancels), answer on fd 3. Must be called in a single-threaded process.
pub fn helper_main() -> i32 {
    // Clone and fork are safe only in a single-threaded process (see the module docs).
    let threads = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().to_string()))
        });
    if threads.as_deref().is_some_and(|t| t != "1") {
        eprintln!("nsrun: helper mode needs a single-threaded process: call run_if_helper() before any thread or async runtime starts");
        return 125;
    }
    // Started by hand (or by a caller that got the descriptors wrong): no fd 3 to own.
    if nix::fcntl::fcntl(
        // SAFETY: only borrowed for this one fcntl(F_GETFD), which any descriptor number allows.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(CONTROL_FD) },
        nix::fcntl::FcntlArg::F_GETFD,
    )
    .is_err()
    {
        eprintln!(
            "nsrun: {HELPER_ARG} is for the nsrun library's own use (no control socket on fd 3)"
        );
        return 125;
    }
    // SAFETY: fd 3 is open (checked above), was set up by our caller for this process, and
    // nothing else in this process owns it.
    let control = unsafe { OwnedFd::from_raw_fd(CONTROL_FD) };
    // Not for newuidmap and friends.
    let _ = nix::fcntl::fcntl(
        &control,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let stream = UnixStream::from(control);
    let mut line = String::new();
    let mut reader = BufReader::new(&stream);
    if reader.read_line(&mut line).is_err() || line.is_empty() {
        eprintln!("nsrun: {HELPER_ARG} is for the nsrun library's own use");
        return 125;
    }
    // Bytes after the request, already buffered, are a cancel that came before the run.
    let cancelled_early = !reader.buffer().is_empty();
    drop(reader);
    let send = |m: &Message| {
        let mut out = serde_json::to_vec(m).expect("a message always serialises");
        out.push(b'\n');
        // The caller may be gone; nothing to do about it then.
        let _ = (&stream).write_all(&out);
    };
    let reply = match serde_json::from_str::<Request>(&line) {
        Err(e) => Message::Failed {
            error: Error::BadSpec {
                message: format!("invalid request from the library: {e}"),
            },
        },
        Ok(r) if r.protocol != PROTOCOL_VERSION => Message::Failed {
            error: Error::BadSpec {
                message: format!(
                    "helper protocol version {} is not supported: this nsrun speaks {PROTOCOL_VERSION}",
                    r.protocol
                ),
            },
        },
        Ok(_) if cancelled_early => Message::Failed {
            error: Error::Cancelled,
        },
        Ok(r) => {
            let mut started = |run_id: &str, setup_time: Duration| {
                send(&Message::Started {
                    run_id: run_id.to_string(),
                    setup_time,
                })
            };
            match sandbox::spawn::run_observed(
                &r.spec,
                sandbox::Stdio::default(),
                Some(stream.as_fd()),
                &mut started,
            ) {
                Ok(outcome) => Message::Done { outcome },
                Err(e) => Message::Failed {
                    error: Error::from(&e),
                },
            }
        }
    };
    send(&reply);
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = include_str!("../../docs/helper-protocol.schema.json");

    fn schema() -> serde_json::Value {
        serde_json::from_str(SCHEMA).unwrap()
    }

    fn keys(v: &serde_json::Value) -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    }

    /// The schema names every field a spec and an outcome have, so it cannot drift silently.
    #[test]
    fn the_schema_covers_every_field() {
        let s = schema();
        let spec = serde_json::to_value(SandboxSpec::default()).unwrap();
        assert_eq!(keys(&s["$defs"]["SandboxSpec"]["properties"]), keys(&spec));
        let limits = &spec["limits"];
        assert_eq!(
            keys(&s["$defs"]["SandboxSpec"]["properties"]["limits"]["properties"]),
            keys(limits)
        );
        let outcome = Outcome {
            run_id: "0123456789ab".into(),
            termination: sandbox::Termination::Exited(0),
            timed_out: false,
            oom_killed: false,
            cancelled: false,
            setup_time: Duration::ZERO,
            wall_time: Duration::ZERO,
            cpu_time: Duration::ZERO,
            peak_memory: None,
            unenforced: vec![],
            warnings: vec![],
            notes: vec![],
        };
        let o = serde_json::to_value(&outcome).unwrap();
        assert_eq!(keys(&s["$defs"]["Outcome"]["properties"]), keys(&o));
        let kinds: Vec<String> = s["$defs"]["Error"]["properties"]["kind"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        for e in [
            Error::Cancelled,
            Error::BadSpec {
                message: "m".into(),
            },
            Error::Setup {
                step: "mount".into(),
                errno: 1,
                message: "m".into(),
            },
        ] {
            let v = serde_json::to_value(&e).unwrap();
            assert!(kinds.contains(&v["kind"].as_str().unwrap().to_string()));
        }
        let started = serde_json::to_value(Message::Started {
            run_id: "x".into(),
            setup_time: Duration::from_millis(5),
        })
        .unwrap();
        assert_eq!(started["type"], "started");
        assert_eq!(started["setup_time"], 0.005);
    }

    /// Every field has a default: `{}` is a request (which fails later for lack of a command).
    #[test]
    fn every_field_has_a_default() {
        let r: Request = serde_json::from_str("{}").unwrap();
        assert_eq!(r.protocol, PROTOCOL_VERSION);
        assert!(r.spec.args.is_empty());
        let r: Request = serde_json::from_str(
            r#"{"spec": {"args": ["true"], "timeout": {"secs": 1, "nanos": 0}}}"#,
        )
        .unwrap();
        assert_eq!(r.spec.args, ["true"]);
        assert_eq!(r.spec.timeout, Some(Duration::from_secs(1)));
        assert_eq!(r.spec.stop_timeout, sandbox::spec::DEFAULT_STOP_TIMEOUT);
    }
}
