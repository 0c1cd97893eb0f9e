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
mod error;
pub mod helper;
mod image;
pub mod result;
pub mod scratch;
mod spec;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

pub use audit::{AuditRecord, AuditSink, FileAudit, NoAudit};
pub use error::Error;
pub use image::{apply_image, command_line};
pub use result::{Durations, ImageRef, RunResult};
pub use scratch::{OutputFile, OutputLimits};
pub use spec::{Data, Input, RunSpec, Source, Stdin, DEFAULT_WORK_DIR, INPUTS_DIR};

use crate::ids::{image_ownership, Caller};
use crate::registry::RegistryOptions;
use crate::sandbox::cgroup::Limits;
use crate::sandbox::{Network, Outcome, SandboxSpec, Termination};
use crate::store::progress::{Observer, PullProgress};
use crate::store::{ImageHold, PullOptions, PullPolicy, ResolvedImage, Store};
use helper::{Helper, Message};

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

/// Builds a [`Runtime`].
#[derive(Clone)]
pub struct RuntimeBuilder {
    root: Option<PathBuf>,
    helper: Option<PathBuf>,
    max_concurrent: usize,
    limits: Limits,
    network: Network,
    pull_policy: PullPolicy,
    registry: RegistryOptions,
    platform: Option<String>,
    capture_limit: usize,
    output_limits: OutputLimits,
    image_limits: crate::unpack::Limits,
    audit: Option<Arc<dyn AuditSink>>,
}

impl RuntimeBuilder {
    /// The image cache and state directory (default: [`Store::default_root`]). Scratch
    /// directories live in `<root>/runs`, the audit log is `<root>/audit.log`.
    pub fn root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.root = Some(dir.into());
        self
    }

    /// The helper binary (default: [`Helper::locate`]).
    pub fn helper(mut self, path: impl Into<PathBuf>) -> Self {
        self.helper = Some(path.into());
        self
    }

    /// How many runs may be set up or running at once (default: the number of CPUs); more
    /// wait in a FIFO queue.
    pub fn max_concurrent(mut self, n: usize) -> Self {
        self.max_concurrent = n.max(1);
        self
    }

    /// Limits of runs whose spec sets none.
    pub fn default_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Network of runs whose spec sets none (default `none`).
    pub fn default_network(mut self, network: Network) -> Self {
        self.network = network;
        self
    }

    /// Pull policy of runs whose spec sets none (default `missing`).
    pub fn pull_policy(mut self, policy: PullPolicy) -> Self {
        self.pull_policy = policy;
        self
    }

    /// Registry access: insecure registries, CAs, timeouts, and credentials (`creds`,
    /// `USER:PASS`; else `~/.docker/config.json`, else anonymous).
    pub fn registry(mut self, options: RegistryOptions) -> Self {
        self.registry = options;
        self
    }

    /// Registry credentials, `USER:PASS`.
    pub fn creds(mut self, user_pass: impl Into<String>) -> Self {
        self.registry.creds = Some(user_pass.into());
        self
    }

    /// `os/arch[/variant]` of images to pull (default: the host's).
    pub fn platform(mut self, platform: impl Into<String>) -> Self {
        self.platform = Some(platform.into());
        self
    }

    /// Cap of captured stdout and of stderr per run (default [`DEFAULT_CAPTURE_LIMIT`]).
    pub fn capture_limit(mut self, bytes: usize) -> Self {
        self.capture_limit = bytes;
        self
    }

    /// Limits on what a pulled image may unpack to (bytes, entries).
    pub fn image_limits(mut self, limits: crate::unpack::Limits) -> Self {
        self.image_limits = limits;
        self
    }

    pub fn output_limits(mut self, limits: OutputLimits) -> Self {
        self.output_limits = limits;
        self
    }

    /// Where audit records go (default: a [`FileAudit`] on `<root>/audit.log`).
    pub fn audit(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.audit = Some(sink);
        self
    }

    /// Finds the helper. The cache is opened (created) by the first image run.
    pub fn build(self) -> Result<Runtime, Error> {
        let root = self.root.unwrap_or_else(Store::default_root);
        let helper = match self.helper {
            Some(p) => Ok(Helper::new(p)),
            None => Helper::locate().map_err(|e| e.to_string()),
        };
        let audit = self
            .audit
            .unwrap_or_else(|| Arc::new(FileAudit::new(root.join("audit.log"))));
        Ok(Runtime {
            inner: Arc::new(Inner {
                root,
                helper,
                queue: Arc::new(Queue {
                    max: self.max_concurrent,
                    state: Mutex::new(QueueState::default()),
                }),
                limits: self.limits,
                network: self.network,
                pull_policy: self.pull_policy,
                registry: self.registry,
                platform: self.platform,
                capture_limit: self.capture_limit,
                output_limits: self.output_limits,
                image_limits: self.image_limits,
                audit,
            }),
        })
    }
}

/// Runs [`RunSpec`]s. Cheap to clone (shared state); safe to use from many tasks.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    helper: Result<Helper, String>,
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
        }
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
        let run_id = crate::sandbox::plan::new_run_id();
        let mut rec = Recorder::new(&self.inner, &spec, &run_id, started_at);
        let r = self.run_here_inner(&mut spec, stdio, &mut rec);
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
        let outcome = crate::sandbox::run(&prep.sandbox, stdio, None)?;
        let t_end = Instant::now();
        let outputs = match prep.scratch.take() {
            Some(s) => s.collect_outputs(
                &prep.outputs,
                inner.output_limits,
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

/// A FIFO of runs waiting for one of `max` slots.
struct Queue {
    max: usize,
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    running: usize,
    waiting: VecDeque<oneshot::Sender<Slot>>,
    /// Admissions so far: numbered under the lock, so the numbers show the queue's order.
    admitted: u64,
}

/// A slot of the queue; handed to the next waiter when dropped.
struct Slot {
    queue: Arc<Queue>,
    admitted: u64,
}

enum Ticket {
    Ready(Slot),
    Waiting {
        position: usize,
        slot: oneshot::Receiver<Slot>,
    },
}

impl Queue {
    fn enter(self: &Arc<Self>) -> Ticket {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.running < self.max && st.waiting.is_empty() {
            st.running += 1;
            st.admitted += 1;
            return Ticket::Ready(Slot {
                queue: self.clone(),
                admitted: st.admitted - 1,
            });
        }
        let (tx, rx) = oneshot::channel();
        st.waiting.push_back(tx);
        Ticket::Waiting {
            position: st.waiting.len() - 1,
            slot: rx,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.queue.state.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(tx) = st.waiting.pop_front() {
            let next = Slot {
                queue: self.queue.clone(),
                admitted: st.admitted,
            };
            match tx.send(next) {
                Ok(()) => {
                    st.admitted += 1;
                    return;
                }
                // That waiter gave up: the slot goes to the one after it. Forgotten, not
                // dropped, since dropping it would re-enter this function under the lock.
                Err(slot) => std::mem::forget(slot),
            }
        }
        st.running -= 1;
    }
}

// ---- preparing a run -------------------------------------------------------------------

/// What a run needs before the tool starts.
struct Prepared {
    sandbox: SandboxSpec,
    image: Option<ImageRef>,
    _hold: Option<ImageHold>,
    scratch: Option<scratch::Scratch>,
    outputs: Vec<String>,
    output_dir: Option<PathBuf>,
    tenant: Option<String>,
    work_dir: String,
}

impl Prepared {
    /// Applies the image's rules to the spec and holds its cache entry for the run.
    fn use_image(
        &mut self,
        store: &Store,
        img: ResolvedImage,
        spec: &RunSpec,
    ) -> Result<(), Error> {
        let hold = store
            .hold(&img)
            .map_err(|e| Error::from_store(&img.reference, &e))?;
        apply_image(
            &mut self.sandbox,
            &img.config,
            spec.entrypoint.as_deref(),
            &spec.args,
        )?;
        self.sandbox.rootfs = img.rootfs.clone();
        self.image = Some(ImageRef {
            reference: img.reference,
            digest: img.digest,
        });
        self._hold = Some(hold);
        Ok(())
    }

    /// Creates the scratch (after the image, whose rootfs decides nothing here, but whose
    /// failure should leave nothing behind) and adds its mounts.
    fn create_scratch(&mut self, root: &Path, run_id: &str) -> Result<(), Error> {
        let owner = nix::unistd::geteuid().is_root().then(|| {
            let base = self
                .sandbox
                .root_id_base
                .unwrap_or(crate::ids::DEFAULT_ROOT_ID_BASE);
            (base, base)
        });
        let s = scratch::Scratch::create(root, self.tenant.as_deref(), run_id, owner)?;
        self.sandbox.binds.extend(s.binds(&self.work_dir));
        // Tools write their results where they stand: unless the spec or the image says
        // otherwise, that is the work directory.
        if self.sandbox.cwd.is_none() {
            self.sandbox.cwd = Some(self.work_dir.clone());
        }
        self.scratch = Some(s);
        Ok(())
    }
}

/// Checks `spec` and turns what it says (with the runtime's defaults) into a sandbox spec;
/// creates nothing.
fn prepare_base(inner: &Inner, spec: &RunSpec, run_id: &str) -> Result<Prepared, Error> {
    let mut seen = std::collections::HashSet::new();
    for i in &spec.inputs {
        scratch::check_name("input", &i.name)?;
        if !seen.insert(i.name.as_str()) {
            return Err(Error::bad_spec(format!(
                "input {:?} is given twice",
                i.name
            )));
        }
    }
    for o in &spec.outputs {
        scratch::check_name("output", o)?;
    }
    if spec.uses_scratch() && !spec.work_dir.starts_with('/') {
        return Err(Error::bad_spec(format!(
            "work directory {:?} must be an absolute path",
            spec.work_dir
        )));
    }
    let defaults = SandboxSpec::default();
    let mut s = SandboxSpec {
        args: spec.args.clone(),
        env: spec.env.clone(),
        cwd: spec.workdir.clone(),
        user: spec.user.clone(),
        hostname: spec.hostname.clone(),
        binds: spec.binds.clone(),
        tmpfs: spec.tmpfs.clone(),
        tmp_size: spec.tmp_size.unwrap_or(defaults.tmp_size),
        network: spec.network.unwrap_or(inner.network),
        net: spec.net.clone(),
        userns: spec.userns,
        root_id_base: spec.uid_base,
        proc: spec.proc,
        limits: spec.limits.clone().unwrap_or_else(|| inner.limits.clone()),
        cap_add: spec.cap_add.clone(),
        cap_drop: spec.cap_drop.clone(),
        seccomp: spec.seccomp.clone(),
        timeout: spec.timeout,
        stop_timeout: spec.stop_timeout.unwrap_or(defaults.stop_timeout),
        ..defaults
    };
    s.stdin = !matches!(spec.stdin, Stdin::Null);
    s.state_dir = Some(inner.root.clone());
    s.run_id = Some(run_id.to_string());
    crate::sandbox::plan::check(&s).map_err(|e| Error::bad_spec(e.to_string()))?;
    if let Source::Rootfs(dir) = &spec.source {
        s.rootfs = vec![dir.clone()];
        if s.args.is_empty() {
            return Err(Error::bad_spec("no command given: pass one after `--`"));
        }
    }
    Ok(Prepared {
        sandbox: s,
        image: None,
        _hold: None,
        scratch: None,
        outputs: spec.outputs.clone(),
        output_dir: spec.output_dir.clone(),
        tenant: spec.labels.get("tenant").cloned(),
        work_dir: spec.work_dir.clone(),
    })
}

fn pull_options(inner: &Inner, spec: &RunSpec, observer: Option<Observer>) -> PullOptions {
    PullOptions {
        platform: inner.platform.clone(),
        ownership: image_ownership(Caller::current(), spec.uid_base),
        registry: inner.registry.clone(),
        limits: inner.image_limits,
        observer,
        ..Default::default()
    }
}

/// The cached image, or `None` when the policy says to pull.
fn lookup(
    inner: &Inner,
    reference: &str,
    policy: PullPolicy,
    opts: &PullOptions,
) -> Result<Option<ResolvedImage>, Error> {
    if policy == PullPolicy::Always {
        return Ok(None);
    }
    match inner.store()?.lookup(reference, opts) {
        Ok(Some(img)) => Ok(Some(img)),
        Ok(None) if policy == PullPolicy::Never => Err(Error::from_store(
            reference,
            &crate::store::StoreError::NotFound(reference.to_string()),
        )),
        Ok(None) => Ok(None),
        Err(e) => Err(Error::from_store(reference, &e)),
    }
}

// ---- results and audit -----------------------------------------------------------------

/// Captured output of one stream.
#[derive(Debug, Default)]
struct Captured {
    data: Vec<u8>,
    total: u64,
}

/// Collects what the result and the audit record need as the run goes.
struct Recorder {
    run_id: String,
    labels: std::collections::BTreeMap<String, String>,
    started_at: SystemTime,
    rootfs: Option<PathBuf>,
    image: Option<ImageRef>,
    command: Vec<String>,
    limits: Limits,
    network: Network,
}

impl Recorder {
    fn new(inner: &Inner, spec: &RunSpec, run_id: &str, started_at: SystemTime) -> Recorder {
        Recorder {
            run_id: run_id.to_string(),
            labels: spec.labels.clone(),
            started_at,
            rootfs: match &spec.source {
                Source::Rootfs(d) => Some(d.clone()),
                Source::Image(_) => None,
            },
            image: None,
            command: spec.args.clone(),
            limits: spec.limits.clone().unwrap_or_else(|| inner.limits.clone()),
            network: spec.network.unwrap_or(inner.network),
        }
    }

    fn fill(&mut self, s: &SandboxSpec) {
        self.command = s.args.clone();
        self.limits = s.limits.clone();
        self.network = s.network;
    }

    #[allow(clippy::too_many_arguments)]
    fn result(
        &self,
        prep: &Prepared,
        o: Outcome,
        stdout: Captured,
        stderr: Captured,
        outputs: Vec<OutputFile>,
        durations: Durations,
        admitted: u64,
    ) -> RunResult {
        let signal = match o.termination {
            Termination::Signaled(s) => Some(s),
            Termination::Exited(_) => None,
        };
        let cap_out = stdout.data.len() as u64;
        let cap_err = stderr.data.len() as u64;
        RunResult {
            run_id: o.run_id.clone(),
            image: prep.image.clone(),
            command: prep.sandbox.args.clone(),
            labels: self.labels.clone(),
            exit_code: o.exit_code(),
            signal,
            timed_out: o.timed_out,
            oom_killed: o.oom_killed,
            cancelled: o.cancelled,
            stdout_truncated: stdout.total > cap_out,
            stderr_truncated: stderr.total > cap_err,
            stdout_bytes: stdout.total,
            stderr_bytes: stderr.total,
            stdout: stdout.data,
            stderr: stderr.data,
            outputs,
            started_at: self.started_at,
            ended_at: SystemTime::now(),
            durations,
            peak_memory: o.peak_memory,
            cpu_time: o.cpu_time,
            unenforced: o.unenforced,
            warnings: o.warnings,
            notes: o.notes,
            limits: prep.sandbox.limits.clone(),
            network: prep.sandbox.network,
            admitted,
        }
    }

    fn audit(&self, inner: &Inner, r: &Result<RunResult, Error>) {
        let rec = match r {
            Ok(r) => AuditRecord {
                time: r.ended_at,
                run_id: r.run_id.clone(),
                labels: r.labels.clone(),
                image: r.image.clone(),
                rootfs: self.rootfs.clone(),
                command: r.command.clone(),
                limits: r.limits.clone(),
                network: r.network,
                exit_code: Some(r.exit_code),
                error: None,
                durations: r.durations,
                timed_out: r.timed_out,
                oom_killed: r.oom_killed,
                cancelled: r.cancelled,
                stdout_bytes: r.stdout_bytes,
                stderr_bytes: r.stderr_bytes,
                outputs: r
                    .outputs
                    .iter()
                    .map(|o| (o.path.clone(), (!o.missing).then_some(o.size)))
                    .collect(),
            },
            Err(e) => AuditRecord {
                time: SystemTime::now(),
                run_id: self.run_id.clone(),
                labels: self.labels.clone(),
                image: self.image.clone(),
                rootfs: self.rootfs.clone(),
                command: self.command.clone(),
                limits: self.limits.clone(),
                network: self.network,
                exit_code: None,
                error: Some(format!("{e} (exit {})", e.exit_code())),
                durations: Durations {
                    total: self.started_at.elapsed().unwrap_or_default(),
                    ..Default::default()
                },
                timed_out: false,
                oom_killed: false,
                cancelled: matches!(e, Error::Cancelled),
                stdout_bytes: 0,
                stderr_bytes: 0,
                outputs: Vec::new(),
            },
        };
        inner.audit.record(&rec);
    }
}

// ---- the async run ---------------------------------------------------------------------

async fn emit(tx: &Option<mpsc::Sender<Event>>, ev: Event) {
    if let Some(tx) = tx {
        // A consumer that dropped its stream just stops getting events.
        let _ = tx.send(ev).await;
    }
}

/// Resolves when the handle asks for a kill or is dropped.
async fn killed(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn run_task(
    inner: Arc<Inner>,
    mut spec: RunSpec,
    tx: Option<mpsc::Sender<Event>>,
    mut kill: watch::Receiver<bool>,
    ticket: Ticket,
) -> Result<RunResult, Error> {
    let t0 = Instant::now();
    let started_at = SystemTime::now();
    let run_id = crate::sandbox::plan::new_run_id();
    let mut rec = Recorder::new(&inner, &spec, &run_id, started_at);
    let r = run_inner(&inner, &mut spec, &tx, &mut kill, ticket, &mut rec, t0).await;
    if let Err(e) = &r {
        emit(&tx, Event::Failed(e.clone())).await;
    }
    let inner2 = inner.clone();
    let r2 = r.clone();
    // The audit sink may block (a file, a socket): not on an async worker thread.
    let _ = tokio::task::spawn_blocking(move || rec.audit(&inner2, &r2)).await;
    r
}

async fn run_inner(
    inner: &Arc<Inner>,
    spec: &mut RunSpec,
    tx: &Option<mpsc::Sender<Event>>,
    kill: &mut watch::Receiver<bool>,
    ticket: Ticket,
    rec: &mut Recorder,
    t0: Instant,
) -> Result<RunResult, Error> {
    let run_id = rec.run_id.clone();
    // A bad spec fails at once, without waiting for a slot.
    let mut prep = prepare_base(inner, spec, &run_id)?;
    rec.fill(&prep.sandbox);
    let helper = inner
        .helper
        .clone()
        .map_err(|message| Error::Helper { message })?;

    let slot = match ticket {
        Ticket::Ready(slot) => slot,
        Ticket::Waiting { position, slot } => {
            emit(tx, Event::Queued { position }).await;
            tokio::select! {
                s = slot => s.map_err(|_| Error::Helper { message: "the run queue went away".into() })?,
                _ = killed(kill) => return Err(Error::Cancelled),
            }
        }
    };
    let admitted = slot.admitted;
    let queue = t0.elapsed();

    let t_pull = Instant::now();
    if let Source::Image(reference) = &spec.source {
        let reference = reference.clone();
        let policy = spec.pull.unwrap_or(inner.pull_policy);
        let img = match lookup(inner, &reference, policy, &pull_options(inner, spec, None))? {
            Some(img) => img,
            None => {
                let (ptx, mut prx) = mpsc::unbounded_channel::<PullProgress>();
                let observer = Observer(Arc::new(move |p| {
                    let _ = ptx.send(p);
                }));
                let opts = pull_options(inner, spec, Some(observer));
                let store = inner.store()?;
                let r2 = reference.clone();
                let pull = async move { store.pull(&r2, &opts).await };
                let mut pull = std::pin::pin!(pull);
                let img = loop {
                    tokio::select! {
                        r = &mut pull => break r.map_err(|e| Error::from_store(&reference, &e))?,
                        Some(p) = prx.recv() => emit(tx, Event::Pulling { reference: reference.clone(), progress: p }).await,
                        _ = killed(kill) => return Err(Error::Cancelled),
                    }
                };
                // The final progress (everything done) may still be in the channel.
                while let Ok(p) = prx.try_recv() {
                    emit(
                        tx,
                        Event::Pulling {
                            reference: reference.clone(),
                            progress: p,
                        },
                    )
                    .await;
                }
                img
            }
        };
        prep.use_image(&inner.store()?, img, spec)?;
        rec.fill(&prep.sandbox);
        rec.image = prep.image.clone();
    }
    let pull = t_pull.elapsed();

    let t_setup = Instant::now();
    if spec.uses_scratch() {
        prep.create_scratch(&inner.root, &run_id)?;
    }
    let inputs = std::mem::take(&mut spec.inputs);
    if let Some(s) = &prep.scratch {
        tokio::select! {
            r = s.write_inputs(inputs) => { r?; }
            _ = killed(kill) => return Err(Error::Cancelled),
        }
    }

    let stdin_source = std::mem::take(&mut spec.stdin);
    let (stdin_stdio, feed): (
        Option<std::process::Stdio>,
        Option<Box<dyn AsyncRead + Send + Unpin>>,
    ) = match stdin_source {
        Stdin::Null => (None, None),
        Stdin::Inherit => (Some(std::process::Stdio::inherit()), None),
        Stdin::Data(Data::File(p)) => {
            let f = std::fs::File::open(&p).map_err(|e| Error::files(&p, "open stdin", e))?;
            (Some(f.into()), None)
        }
        Stdin::Data(Data::Bytes(b)) => (
            Some(std::process::Stdio::piped()),
            Some(Box::new(std::io::Cursor::new(b))),
        ),
        Stdin::Data(Data::Reader(r)) => (Some(std::process::Stdio::piped()), Some(r)),
    };
    let mut hr = helper.start(&prep.sandbox, stdin_stdio, true)?;
    let child_stdin = hr.stdin.take();
    let stdout = hr.stdout.take().expect("piped");
    let stderr = hr.stderr.take().expect("piped");
    let cap = spec.capture_limit.unwrap_or(inner.capture_limit);

    let (gate_tx, gate_rx) = watch::channel(false);
    let feed_task = async move {
        if let (Some(mut pipe), Some(mut src)) = (child_stdin, feed) {
            // A tool that exits without reading all of its input closes the pipe: not an error.
            let _ = tokio::io::copy(&mut src, &mut pipe).await;
            let _ = pipe.shutdown().await;
        }
    };
    let pumps = async {
        tokio::join!(
            pump(stdout, cap, tx, false, gate_rx.clone()),
            pump(stderr, cap, tx, true, gate_rx.clone())
        )
    };
    let control = async {
        let mut last: Option<Message> = None;
        let mut err: Option<String> = None;
        let mut cancel_sent = false;
        loop {
            tokio::select! {
                m = hr.message() => match m {
                    Ok(Some(Message::Started { run_id, setup_time })) => {
                        emit(tx, Event::Started { run_id, setup_time }).await;
                        let _ = gate_tx.send(true);
                    }
                    Ok(Some(m)) => last = Some(m),
                    Ok(None) => break,
                    Err(e) => { err = Some(e.to_string()); break; }
                },
                _ = killed(kill), if !cancel_sent => {
                    cancel_sent = true;
                    hr.cancel().await;
                }
            }
        }
        let _ = gate_tx.send(true);
        let status = hr.wait().await;
        (last, err, status)
    };
    // Stdin is fed until the run ends, not longer: a reader that never ends (or stalls) must
    // not keep a finished run waiting.
    let mut feed_task = std::pin::pin!(feed_task);
    let mut main = std::pin::pin!(async { tokio::join!(pumps, control) });
    let mut fed = false;
    let ((out, errs), (last, err, status)) = loop {
        tokio::select! {
            r = &mut main => break r,
            _ = &mut feed_task, if !fed => fed = true,
        }
    };
    let t_end = Instant::now();

    let outcome = match last {
        Some(Message::Done { outcome }) => outcome,
        Some(Message::Failed { error }) => return Err(error),
        _ => {
            return Err(Error::Helper {
                message: format!(
                    "the nsrun helper {} ended without a result ({status}{}){}",
                    helper.path().display(),
                    err.map(|e| format!("; {e}")).unwrap_or_default(),
                    if errs.data.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", String::from_utf8_lossy(&errs.data).trim())
                    }
                ),
            })
        }
    };
    let outputs = match prep.scratch.take() {
        Some(s) => {
            let names = prep.outputs.clone();
            let dir = prep.output_dir.clone();
            let lim = inner.output_limits;
            tokio::task::spawn_blocking(move || {
                let r = s.collect_outputs(&names, lim, dir.as_deref());
                drop(s); // removes the scratch
                r
            })
            .await
            .map_err(|e| Error::Helper {
                message: format!("output collection failed: {e}"),
            })??
        }
        None => Vec::new(),
    };
    let run = outcome.wall_time.saturating_sub(outcome.setup_time);
    let setup = (t_end - t_setup).saturating_sub(run);
    let result = rec.result(
        &prep,
        outcome,
        out,
        errs,
        outputs,
        Durations {
            queue,
            pull,
            setup,
            run,
            total: t0.elapsed(),
        },
        admitted,
    );
    emit(
        tx,
        Event::Exited {
            exit_code: result.exit_code,
            signal: result.signal,
            timed_out: result.timed_out,
            oom_killed: result.oom_killed,
        },
    )
    .await;
    Ok(result)
}

/// Reads one of the tool's streams to its end: keeps the first `cap` bytes, counts the rest,
/// and passes chunks on as events. Starts reading once the tool has started (or failed), so
/// that `Started` comes before any output.
async fn pump(
    mut r: impl AsyncRead + Unpin,
    cap: usize,
    tx: &Option<mpsc::Sender<Event>>,
    is_err: bool,
    mut gate: watch::Receiver<bool>,
) -> Captured {
    let _ = gate.wait_for(|open| *open).await;
    let mut c = Captured::default();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        c.total += n as u64;
        let room = cap.saturating_sub(c.data.len());
        c.data.extend_from_slice(&buf[..n.min(room)]);
        if tx.is_some() {
            let chunk = Bytes::copy_from_slice(&buf[..n]);
            emit(
                tx,
                if is_err {
                    Event::Stderr(chunk)
                } else {
                    Event::Stdout(chunk)
                },
            )
            .await;
        }
    }
    c
}
