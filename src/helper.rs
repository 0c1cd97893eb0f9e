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

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::sandbox::{self, Outcome, SandboxSpec};

/// The hidden first argument that puts the `nsrun` binary in helper mode.
pub const HELPER_ARG: &str = "__nsrun-helper";
/// Environment variable naming the helper binary.
pub const HELPER_ENV: &str = "NSRUN_HELPER";
/// The descriptor the helper finds its control socket on.
const CONTROL_FD: i32 = 3;

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
    /// The run failed before the tool ran; `exit_code` follows Docker (125, 126, 127).
    #[error("{message}")]
    Run { message: String, exit_code: i32 },
}

/// What the helper answers.
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Done(Outcome),
    Failed { message: String, exit_code: i32 },
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

    /// Runs `spec`, feeding `stdin` (if any) to the tool and collecting its output.
    /// Dropping the returned future kills the run.
    pub async fn run(
        &self,
        spec: &SandboxSpec,
        stdin: Option<Vec<u8>>,
    ) -> Result<Output, HelperError> {
        let mut spec = spec.clone();
        spec.stdin = stdin.is_some();
        let (ours, theirs) = UnixStream::pair()?;
        let theirs_fd = theirs.as_raw_fd();
        let mut cmd = tokio::process::Command::new(&self.path);
        cmd.arg(HELPER_ARG)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
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
        let mut child = cmd.spawn().map_err(|source| HelperError::Spawn {
            path: self.path.clone(),
            source,
        })?;
        drop(theirs);

        let mut request = serde_json::to_vec(&spec).expect("a spec always serialises");
        request.push(b'\n');
        (&ours).write_all(&request)?;
        ours.set_nonblocking(true)?;
        let mut control = tokio::net::UnixStream::from_std(ours)?;

        let mut child_stdin = child.stdin.take();
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let feed = async {
            if let (Some(pipe), Some(data)) = (child_stdin.as_mut(), stdin) {
                // A tool that exits without reading all of its input closes the pipe: not an error.
                let _ = pipe.write_all(&data).await;
            }
            drop(child_stdin.take());
            Ok::<_, std::io::Error>(())
        };
        let (mut out, mut err, mut reply) = (Vec::new(), Vec::new(), Vec::new());
        let (fed, o, e, r) = tokio::join!(
            feed,
            stdout.read_to_end(&mut out),
            stderr.read_to_end(&mut err),
            control.read_to_end(&mut reply)
        );
        fed?;
        o?;
        e?;
        r?;
        let status = child.wait().await?;
        let reply: Reply = serde_json::from_slice(&reply).map_err(|_| {
            HelperError::NoResult(format!(
                "{status}; stderr: {}",
                String::from_utf8_lossy(&err).trim()
            ))
        })?;
        match reply {
            Reply::Done(outcome) => Ok(Output {
                outcome,
                stdout: out,
                stderr: err,
            }),
            Reply::Failed { message, exit_code } => Err(HelperError::Run { message, exit_code }),
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

/// The helper's side: read the spec from fd 3, run it (fd 3 closing cancels), answer on fd 3.
/// Must be called in a single-threaded process.
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
    // SAFETY: fd 3 was set up by `Helper::run` for this process and nothing else owns it.
    let control = unsafe { OwnedFd::from_raw_fd(CONTROL_FD) };
    // Not for newuidmap and friends.
    let _ = nix::fcntl::fcntl(
        &control,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let stream = UnixStream::from(control);
    let mut line = String::new();
    if BufReader::new(&stream).read_line(&mut line).is_err() || line.is_empty() {
        eprintln!("nsrun: {HELPER_ARG} is for the nsrun library's own use");
        return 125;
    }
    let reply = match serde_json::from_str::<SandboxSpec>(&line) {
        Err(e) => Reply::Failed {
            message: format!("invalid request from the library: {e}"),
            exit_code: 125,
        },
        Ok(spec) => match sandbox::run(&spec, sandbox::Stdio::default(), Some(stream.as_fd())) {
            Ok(outcome) => Reply::Done(outcome),
            Err(e) => Reply::Failed {
                message: e.to_string(),
                exit_code: e.exit_code(),
            },
        },
    };
    let mut out = serde_json::to_vec(&reply).expect("a reply always serialises");
    out.push(b'\n');
    // The caller may be gone; nothing to do about it then.
    let _ = (&stream).write_all(&out);
    0
}
