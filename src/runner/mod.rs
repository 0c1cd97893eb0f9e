//! The runner: the API a worker links. A [`RunSpec`] in, a [`RunResult`] (and a stream of
//! [`Event`]s) out, with files in and out, labels and an audit record.
//!
//! This is the only place that knows Docker's image rules (Entrypoint/Cmd/Env/WorkingDir/User),
//! holds image cache entries for a run, owns the scratch directories for files in and out, caps
//! captured output, emits events and writes audit records. The `nsrun` command is a thin layer
//! over it ([`Runtime::run_here`]).
//!
//! ```no_run
//! use std::time::Duration;
//! use nsrun::runner::{Runtime, RunSpec};
//!
//! # async fn demo() -> Result<(), nsrun::runner::Error> {
//! let rt = Runtime::builder().root("/var/lib/nsrun").max_concurrent(16).build()?;
//! let result = rt
//!     .run(
//!         RunSpec::image("127.0.0.1:5000/tools/dnsx:1")
//!             .args(["-l", "/inputs/domains.txt", "-o", "results.json"])
//!             .input("domains.txt", "example.com\n")
//!             .output("results.json")
//!             .timeout(Duration::from_secs(600))
//!             .label("tenant", "acme")
//!             .label("run", "r-123"),
//!     )
//!     .await?;
//! println!("exit {}: {} bytes of results", result.exit_code, result.outputs[0].data.len());
//! # Ok(()) }
//! ```
//!
//! Runs beyond `max_concurrent` wait in a fair FIFO queue. Each run starts the `nsrun` binary
//! as a single-threaded helper ([`crate::helper`]): the caller's multithreaded process is never
//! forked.

pub mod audit;
pub mod blocking;
mod builder;
mod error;
pub mod helper;
mod image;
mod prepare;
mod queue;
mod record;
pub mod result;
pub mod scratch;
mod spec;
mod task;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

pub use audit::{AuditRecord, AuditSink, FileAudit, NoAudit};
pub use builder::{RuntimeBuilder, WARM_POOL_ENV};
pub use error::Error;
pub use image::{apply_image, command_line};
use prepare::*;
use queue::*;
use record::*;
pub use result::{Durations, ImageRef, RunResult};
pub use scratch::{OutputFile, OutputLimits};
pub use spec::{Data, Input, RunSpec, Source, Stdin, DEFAULT_WORK_DIR, INPUTS_DIR};
use task::*;

use crate::registry::RegistryOptions;
use crate::sandbox::cgroup::Limits;
use crate::sandbox::Network;
use crate::store::progress::PullProgress;
use crate::store::{PullPolicy, Store};
use helper::Helper;

/// Default cap of captured stdout and of captured stderr: 16 MiB each.
pub const DEFAULT_CAPTURE_LIMIT: usize = 16 << 20;

/// What happens to a run, in order: `Queued` (only when it had to wait), `Pulling` (only when
/// the image is pulled), `Started`, `Stdout`/`Stderr` chunks as they come, then exactly one of
/// `Exited` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Waiting for a slot; `position` runs are ahead (0: next).
    Queued {
        position: usize,
    },
    /// Pulling the image.
    Pulling {
        reference: String,
        progress: PullProgress,
    },
    /// The tool has started.
    Started {
        run_id: String,
        setup_time: Duration,
    },
    Stdout(Bytes),
    Stderr(Bytes),
    /// The tool ended; [`RunHandle::wait`] has the full result.
    Exited {
        exit_code: i32,
        signal: Option<i32>,
        timed_out: bool,
        oom_killed: bool,
    },
    /// The run failed before the tool ran.
    Failed(Error),
}

/// Runs [`RunSpec`]s. Cheap to clone (shared state); safe to use from many tasks.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    helper: Result<Helper, String>,
    /// Helpers started ahead of runs ([`RuntimeBuilder::warm_pool`]).
    pool: Option<Arc<helper::Pool>>,
    queue: Arc<Queue>,
    limits: Limits,
    network: Network,
    pull_policy: PullPolicy,
    registry: RegistryOptions,
    platform: Option<String>,
    capture_limit: usize,
    output_limits: OutputLimits,
    image_limits: crate::unpack::Limits,
    audit: Arc<dyn AuditSink>,
}

/// A run in flight. Dropping it kills the run and removes everything it created.
pub struct RunHandle {
    events: Option<mpsc::Receiver<Event>>,
    result: oneshot::Receiver<Result<RunResult, Error>>,
    kill: watch::Sender<bool>,
}

impl RunHandle {
    /// The run's events (see [`Event`]). The stream is bounded: a consumer that stops reading
    /// holds the tool up (its output pipe fills), it never grows memory. Take it at most once;
    /// if it is never taken, [`RunHandle::wait`] drains it.
    pub fn events(&mut self) -> Option<mpsc::Receiver<Event>> {
        self.events.take()
    }

    /// Kills the run (SIGKILL to every process of it). [`RunHandle::wait`] still returns its
    /// result, with `cancelled` set, or [`Error::Cancelled`] if the tool had not started.
    pub fn kill(&self) {
        let _ = self.kill.send(true);
    }

    /// Waits for the result (everything is cleaned up by then).
    pub async fn wait(mut self) -> Result<RunResult, Error> {
        let mut result = std::pin::pin!(&mut self.result);
        loop {
            let next = async {
                match &mut self.events {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = &mut result => {
                    return r.unwrap_or_else(|_| Err(Error::Helper { message: "the run's task ended without a result".into() }));
                }
                ev = next => {
                    if ev.is_none() {
                        self.events = None;
                    }
                }
            }
        }
    }
}

impl Runtime {
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder {
            root: None,
            helper: None,
            max_concurrent: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            limits: Limits::default(),
            network: Network::None,
            pull_policy: PullPolicy::Missing,
            registry: RegistryOptions::default(),
            platform: None,
            capture_limit: DEFAULT_CAPTURE_LIMIT,
            output_limits: OutputLimits::default(),
            image_limits: crate::unpack::Limits::default(),
            audit: None,
            warm_pool: 0,
        }
    }

    /// Pooled helpers ready now (0 without [`RuntimeBuilder::warm_pool`]).
    pub fn warm_pool_ready(&self) -> usize {
        self.inner.pool.as_ref().map_or(0, |p| p.ready())
    }

    /// The cache and state directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Runs `spec` to the end. Dropping the future kills the run and removes what it created.
    pub async fn run(&self, spec: RunSpec) -> Result<RunResult, Error> {
        self.start(spec, false).wait().await
    }

    /// Starts `spec` and returns at once (it enters the queue now: runs are admitted in the
    /// order of their `spawn` calls). Must be called within a tokio runtime.
    pub fn spawn(&self, spec: RunSpec) -> RunHandle {
        self.start(spec, true)
    }

    fn start(&self, spec: RunSpec, events: bool) -> RunHandle {
        let (ev_tx, ev_rx) = if events {
            let (t, r) = mpsc::channel(64);
            (Some(t), Some(r))
        } else {
            (None, None)
        };
        let (res_tx, res_rx) = oneshot::channel();
        let (kill_tx, kill_rx) = watch::channel(false);
        let ticket = self.inner.queue.enter();
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let r = run_task(inner, spec, ev_tx, kill_rx, ticket).await;
            let _ = res_tx.send(r);
        });
        RunHandle {
            events: ev_rx,
            result: res_rx,
            kill: kill_tx,
        }
    }

    /// Runs `spec` in this process, without a helper and without an async runtime (one is
    /// started only to pull). Only for single-threaded programs — the `nsrun` command: it clones
    /// the calling process. The tool's stdio are `stdio` (default: ours), so nothing is captured
    /// and `spec.stdin` must not be a reader; inputs, outputs, audit and the result are as with
    /// [`Runtime::run`], without the queue.
    pub fn run_here(
        &self,
        mut spec: RunSpec,
        stdio: crate::sandbox::Stdio,
    ) -> Result<RunResult, Error> {
        let started_at = SystemTime::now();
        let run_id = spec
            .run_id
            .clone()
            .unwrap_or_else(crate::sandbox::plan::new_run_id);
        let mut rec = Recorder::new(&self.inner, &spec, &run_id, started_at);
        let r = tracing::debug_span!("run", run_id = %run_id)
            .in_scope(|| self.run_here_inner(&mut spec, stdio, &mut rec));
        match &r {
            Ok(res) => tracing::debug!(run_id = %run_id, exit_code = res.exit_code, "run finished"),
            Err(e) => tracing::debug!(run_id = %run_id, error = %e, "run failed"),
        }
        rec.audit(&self.inner, &r);
        r
    }

    fn run_here_inner(
        &self,
        spec: &mut RunSpec,
        stdio: crate::sandbox::Stdio,
        rec: &mut Recorder,
    ) -> Result<RunResult, Error> {
        let t0 = Instant::now();
        let inner = &self.inner;
        if matches!(spec.stdin, Stdin::Data(_)) {
            return Err(Error::bad_spec(
                "Runtime::run_here takes the tool's stdin from its `stdio` argument",
            ));
        }
        let mut prep = prepare_base(inner, spec, &rec.run_id)?;
        rec.fill(&prep.sandbox);
        let t_pull = Instant::now();
        if let Source::Image(reference) = &spec.source {
            let policy = spec.pull.unwrap_or(inner.pull_policy);
            let opts = pull_options(inner, spec, None);
            let img = match lookup(inner, reference, policy, &opts)? {
                Some(img) => img,
                None => {
                    let mut opts = opts;
                    opts.progress = true;
                    // Dropped (its threads joined) before the clone below.
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .map_err(|e| Error::Sandbox {
                            message: format!("cannot start the tokio runtime: {e}"),
                        })?
                        .block_on(inner.store()?.pull(reference, &opts))
                        .map_err(|e| Error::from_store(reference, &e))?
                }
            };
            prep.use_image(&inner.store()?, img, spec)?;
            rec.fill(&prep.sandbox);
            rec.image = prep.image.clone();
        }
        let pull = t_pull.elapsed();
        let t_setup = Instant::now();
        if spec.uses_scratch() {
            prep.create_scratch(&inner.root, &rec.run_id)?;
        }
        if let Some(s) = &prep.scratch {
            s.write_inputs_blocking(std::mem::take(&mut spec.inputs))?;
        }
        crate::sandbox::trace::mark(
            crate::sandbox::trace::Phase::Image,
            "cached image found, scratch ready",
        );
        let outcome = crate::sandbox::run(&prep.sandbox, stdio, None)?;
        let t_end = Instant::now();
        let outputs = match prep.scratch.take() {
            Some(s) => s.collect_outputs(
                &prep.outputs,
                spec.output_limits.unwrap_or(inner.output_limits),
                prep.output_dir.as_deref(),
            )?,
            None => Vec::new(),
        };
        let run = outcome.wall_time.saturating_sub(outcome.setup_time);
        let setup = (t_end - t_setup).saturating_sub(run);
        Ok(rec.result(
            &prep,
            outcome,
            Captured::default(),
            Captured::default(),
            outputs,
            Durations {
                queue: Duration::ZERO,
                pull,
                setup,
                run,
                total: t0.elapsed(),
            },
            0,
        ))
    }
}

impl Inner {
    /// The image cache (opened, and created if needed, on each image run: a few `stat`s).
    fn store(&self) -> Result<Store, Error> {
        Store::open(&self.root).map_err(|e| Error::Files {
            path: self.root.display().to_string(),
            message: e.to_string(),
        })
    }
}

// ---- the queue -------------------------------------------------------------------------

// ---- preparing a run -------------------------------------------------------------------

// ---- results and audit -----------------------------------------------------------------

// ---- the async run ---------------------------------------------------------------------
