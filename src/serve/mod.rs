//! `nsrun serve`: an authenticated runner service — a thin HTTP layer over [`Runtime`] with
//! bearer tokens naming tenants, each tenant's policy checked before anything runs, and an audit
//! record of every run with its tenant (the runner's audit sink; the label `tenant`).
//!
//! The API is docs/serve-api.md. Modules, one concern each: [`tokens`] (the tokens file and
//! the constant-time lookup), [`policy`] (what a tenant may ask), [`request`] (the JSON body to a
//! [`crate::runner::RunSpec`]), [`upload`] (multipart bodies streamed to disk), [`state`] (runs,
//! event logs, rate counters, retention), [`api`] and [`sse`] (the routes), [`metrics`],
//! [`tls`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), nsrun::serve::ServeError> {
//! use std::time::Duration;
//! let runtime = nsrun::Runtime::builder().max_concurrent(8).build().unwrap();
//! let config = nsrun::serve::Config::new("unix:/run/nsrun.sock", "/etc/nsrun/tokens.json", "/var/lib/nsrun/serve");
//! nsrun::serve::serve(config, runtime).await
//! # }
//! ```

pub mod api;
pub mod metrics;
pub mod policy;
pub mod request;
pub mod sse;
pub mod state;
pub mod tls;
pub mod tokens;
pub mod upload;

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use self::api::ApiError;
use self::metrics::Metrics;
use self::state::{Run, Runs};
use self::tokens::{Keys, Tenant, TokensFile};
use crate::runner::{RunSpec, Runtime};

/// Why the server could not start (or stop cleanly); one line naming the file or address.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ServeError(pub String);

/// How the server runs (the `nsrun serve` flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// `unix:PATH` or `HOST:PORT`.
    pub listen: String,
    pub tokens: PathBuf,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    /// The server's own directory (created, mode 0700; removed at exit): one directory per run
    /// for uploads and outputs.
    pub state_dir: PathBuf,
    /// Cap of a JSON body (and of a multipart `request` part).
    pub max_body: u64,
    /// Cap of a whole multipart body.
    pub max_upload: u64,
    /// How long runs may go on after SIGTERM before they are cancelled.
    pub shutdown_timeout: Duration,
    /// How long an ended run is kept.
    pub keep_for: Duration,
    /// How many ended runs are kept at most.
    pub keep_runs: usize,
    /// Output cap (each stream, each file) when neither the request nor the policy sets one.
    pub default_output: u64,
    /// How long a connection may take to send a request's headers (then it is closed).
    pub header_timeout: Duration,
}

impl Config {
    /// The defaults of `nsrun serve`.
    pub fn new(
        listen: impl Into<String>,
        tokens: impl Into<PathBuf>,
        state_dir: impl Into<PathBuf>,
    ) -> Config {
        Config {
            listen: listen.into(),
            tokens: tokens.into(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            state_dir: state_dir.into(),
            max_body: 16 << 20,
            max_upload: 4 << 30,
            shutdown_timeout: Duration::from_secs(30),
            keep_for: Duration::from_secs(600),
            keep_runs: 1000,
            default_output: crate::runner::DEFAULT_CAPTURE_LIMIT as u64,
            header_timeout: Duration::from_secs(30),
        }
    }
}

/// What the handlers share.
pub struct Server {
    pub runtime: Runtime,
    keys: RwLock<Arc<Keys>>,
    pub runs: Runs,
    pub metrics: Metrics,
    pub config: Config,
    pub state_dir: PathBuf,
    /// Set on SIGTERM: new runs get 503.
    pub stopping: AtomicBool,
}

impl Server {
    pub fn keys(&self) -> Arc<Keys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-reads the tokens file; on error the old tenants stay.
    fn reload(&self) {
        match TokensFile::load(&self.config.tokens) {
            Ok(f) => {
                let keys = Keys::new(&f);
                eprintln!("nsrun serve: reloaded {} tenant(s)", keys.len());
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
            }
            Err(e) => eprintln!("nsrun serve: reload failed, keeping the old tokens: {e}"),
        }
    }
}

/// `r-` and 20 random hex digits.
pub fn new_run_id() -> String {
    let b = tokens::random_bytes(10).unwrap_or_else(|_| {
        // /dev/urandom is always there on Linux; a clock-based id still never repeats here.
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        n.to_le_bytes()[..10].to_vec()
    });
    format!("r-{}", hex::encode(b))
}

/// A checked run, counted against its tenant's rate rules, with its directory made; not
/// started yet. Dropped unstarted (a failed upload), it gives its count back and removes its
/// directory.
pub struct Prepared {
    srv: Arc<Server>,
    tenant: String,
    id: String,
    dir: PathBuf,
    pub spec: RunSpec,
    output_cap: u64,
    labels: std::collections::BTreeMap<String, String>,
    armed: bool,
}

impl Prepared {
    pub async fn new(
        srv: &Arc<Server>,
        tenant: &Tenant,
        id: &str,
        dir: &Path,
        checked: request::Checked,
    ) -> Result<Prepared, ApiError> {
        srv.runs
            .admit(
                &tenant.name,
                tenant.policy.max_concurrent,
                tenant.policy.runs_per_minute,
            )
            .map_err(api::rate_refusal)?;
        let prep = Prepared {
            srv: srv.clone(),
            tenant: tenant.name.clone(),
            id: id.to_string(),
            dir: dir.to_path_buf(),
            spec: checked.spec,
            output_cap: checked.output_cap,
            labels: checked.labels,
            armed: true,
        };
        let d = dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            std::fs::DirBuilder::new().mode(0o700).create(&d)?;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(d.join("outputs"))
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::files("cannot create the run's directory", dir, e))?;
        Metrics::add(&srv.metrics.input_bytes, checked.input_bytes);
        Ok(prep)
    }

    /// Starts the run and the task that records its events and result.
    pub fn start(mut self, srv: &Arc<Server>) -> Arc<Run> {
        self.armed = false;
        let run = Run::new(
            self.id.clone(),
            self.tenant.clone(),
            std::mem::take(&mut self.labels),
            self.dir.clone(),
            self.output_cap,
        );
        let spec = std::mem::replace(&mut self.spec, RunSpec::image(""));
        let mut handle = srv.runtime.spawn(spec);
        srv.runs.insert(run.clone());
        let (srv, r) = (srv.clone(), run.clone());
        tokio::spawn(async move {
            let mut events = handle.events().expect("events are taken once");
            let mut cancel = r.cancel.subscribe();
            let mut killed = false;
            loop {
                tokio::select! {
                    ev = events.recv() => match ev {
                        Some(ev) => {
                            if r.on_event(ev) {
                                Metrics::add(&srv.metrics.pulls, 1);
                            }
                        }
                        None => break,
                    },
                    _ = cancel.wait_for(|c| *c), if !killed => {
                        killed = true;
                        handle.kill();
                    }
                }
            }
            let result = handle.wait().await;
            api::remove_dir(r.dir.join("uploads")).await;
            let (outcome, bytes) = r.finish(&result);
            let secs = r.created.elapsed().unwrap_or_default().as_secs_f64();
            srv.metrics.run_ended(outcome, secs);
            Metrics::add(&srv.metrics.output_bytes, bytes);
            srv.runs.release(&r.tenant);
        });
        run
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if self.armed {
            self.srv.runs.release(&self.tenant);
            let _ = crate::unpack::remove_tree(&self.dir);
        }
    }
}

/// Where the server listens.
enum Bound {
    Unix(tokio::net::UnixListener, PathBuf),
    Tcp(tokio::net::TcpListener),
    Tls(tls::TlsListener),
}

async fn bind(config: &Config) -> Result<Bound, ServeError> {
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(c), Some(k)) => {
            Some(tls::server_config(c, k, config.tls_client_ca.as_deref()).map_err(ServeError)?)
        }
        (None, None) if config.tls_client_ca.is_some() => {
            return Err(ServeError(
                "--tls-client-ca needs --tls-cert and --tls-key".into(),
            ))
        }
        (None, None) => None,
        _ => return Err(ServeError("--tls-cert and --tls-key go together".into())),
    };
    if let Some(path) = config.listen.strip_prefix("unix:") {
        if tls.is_some() {
            return Err(ServeError(
                "--listen unix:PATH: TLS is for HOST:PORT (a socket's access is its file mode)"
                    .into(),
            ));
        }
        let path = PathBuf::from(path);
        if path.exists() {
            // A live server answers; a stale socket file (a killed server) is replaced.
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(ServeError(format!(
                    "--listen unix:{}: another server is listening there",
                    path.display()
                )));
            }
            let is_socket = std::fs::symlink_metadata(&path).is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_socket()
            });
            if !is_socket {
                return Err(ServeError(format!(
                    "--listen unix:{}: exists and is not a socket",
                    path.display()
                )));
            }
            let _ = std::fs::remove_file(&path);
        }
        let l = tokio::net::UnixListener::bind(&path)
            .map_err(|e| ServeError(format!("--listen unix:{}: {e}", path.display())))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| ServeError(format!("chmod {}: {e}", path.display())))?;
        return Ok(Bound::Unix(l, path));
    }
    let l = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| ServeError(format!("--listen {}: {e}", config.listen)))?;
    Ok(match tls {
        Some(cfg) => Bound::Tls(
            tls::TlsListener::new(l, cfg)
                .map_err(|e| ServeError(format!("--listen {}: {e}", config.listen)))?,
        ),
        None => Bound::Tcp(l),
    })
}

/// Serves `app` on `l` until `stop` is set, then lets every open connection finish the
/// response it is sending (graceful shutdown) and returns once they have all closed.
///
/// Unlike `axum::serve`, a connection must send each request's headers within
/// `header_timeout`: anyone who can connect (no token needed) could otherwise hold connections,
/// and the server's file descriptors, open forever by sending headers a byte at a time.
async fn serve_connections<L: axum::serve::Listener>(
    mut l: L,
    app: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
    header_timeout: Duration,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    // Every connection task holds a receiver: the sender sees them all gone when closed.
    let (open_tx, open_rx) = tokio::sync::watch::channel(());
    loop {
        let (io, _) = tokio::select! {
            c = l.accept() => c,
            _ = stop.wait_for(|s| *s) => break,
        };
        let app = app.clone();
        let mut stop = stop.clone();
        let open = open_rx.clone();
        tokio::spawn(async move {
            let _open = open;
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let service = hyper_util::service::TowerToHyperService::new(app);
            let conn = builder.serve_connection(TokioIo::new(io), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
    drop(l);
    drop(open_rx);
    open_tx.closed().await;
}

/// Runs the server until SIGTERM or SIGINT (then shuts down gracefully: see the API doc).
/// Prints `nsrun serve: listening on URL` on stderr once it accepts connections.
pub async fn serve(config: Config, runtime: Runtime) -> Result<(), ServeError> {
    let keys = Keys::new(&TokensFile::load(&config.tokens).map_err(|e| ServeError(e.0))?);
    let state_dir = config.state_dir.clone();
    if let Some(p) = state_dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(p)
            .map_err(|e| ServeError(format!("create {}: {e}", p.display())))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&state_dir)
        .map_err(|e| ServeError(format!("state directory {}: {e}", state_dir.display())))?;
    let bound = match bind(&config).await {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_dir(&state_dir);
            return Err(e);
        }
    };
    let mut hup = signal(SignalKind::hangup()).map_err(|e| ServeError(format!("SIGHUP: {e}")))?;
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| ServeError(format!("SIGTERM: {e}")))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| ServeError(format!("SIGINT: {e}")))?;

    let srv = Arc::new(Server {
        runtime,
        keys: RwLock::new(Arc::new(keys)),
        runs: Runs::default(),
        metrics: Metrics::default(),
        config: config.clone(),
        state_dir: state_dir.clone(),
        stopping: AtomicBool::new(false),
    });
    let app = api::router(srv.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let stop_all = stop_tx.clone();

    // Signals: SIGHUP reloads, SIGTERM/SIGINT stop.
    let s2 = srv.clone();
    let signals = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = hup.recv() => s2.reload(),
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        s2.stopping.store(true, Ordering::SeqCst);
        let _ = stop_tx.send(true);
        eprintln!("nsrun serve: shutting down");
    });
    // Retention of ended runs.
    let s3 = srv.clone();
    let sweeper = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for r in s3.runs.expire(s3.config.keep_for, s3.config.keep_runs) {
                api::remove_dir(r.dir.clone()).await;
            }
        }
    });

    let stop_rx_srv = stop_rx.clone();
    let (url, socket) = match &bound {
        Bound::Unix(_, p) => (format!("unix:{}", p.display()), Some(p.clone())),
        Bound::Tcp(l) => (
            format!(
                "http://{}",
                l.local_addr().map_err(|e| ServeError(e.to_string()))?
            ),
            None,
        ),
        Bound::Tls(l) => (
            format!(
                "https://{}",
                axum::serve::Listener::local_addr(l).map_err(|e| ServeError(e.to_string()))?
            ),
            None,
        ),
    };
    eprintln!("nsrun serve: listening on {url}");
    let header_timeout = config.header_timeout;
    let server = async move {
        match bound {
            Bound::Unix(l, _) => serve_connections(l, app, stop_rx_srv, header_timeout).await,
            Bound::Tcp(l) => serve_connections(l, app, stop_rx_srv, header_timeout).await,
            Bound::Tls(l) => serve_connections(l, app, stop_rx_srv, header_timeout).await,
        }
        Ok::<(), std::io::Error>(())
    };
    // After the stop signal: runs may go on until the deadline, then they are cancelled —
    // again and again, so that a run whose upload was still arriving at the deadline is too.
    let s4 = srv.clone();
    let mut rx = stop_rx.clone();
    let deadline = tokio::spawn(async move {
        let _ = rx.wait_for(|s| *s).await;
        let t0 = tokio::time::Instant::now();
        let mut said = false;
        loop {
            let live: Vec<_> = s4
                .runs
                .all()
                .into_iter()
                .filter(|r| !r.state().ended())
                .collect();
            if t0.elapsed() >= s4.config.shutdown_timeout {
                if !said && !live.is_empty() {
                    eprintln!("nsrun serve: shutdown timeout: cancelling the runs still going");
                    said = true;
                }
                for r in &live {
                    r.cancel.send_replace(true);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut server = std::pin::pin!(server);
    let mut stop = stop_rx.clone();
    let served = tokio::select! {
        r = &mut server => r,
        _ = async {
            let _ = stop.wait_for(|s| *s).await;
            // Every response should be over shortly after every run ended; a client that
            // keeps a connection open longer does not keep the server up.
            tokio::time::sleep(config.shutdown_timeout + Duration::from_secs(15)).await;
        } => Ok(()),
    };
    // Should the server have ended without a signal, the runs still end.
    srv.stopping.store(true, Ordering::SeqCst);
    let _ = stop_all.send(true);
    // Every run's driver records its end (the runner has removed its scratch and written its
    // audit record by then).
    while srv.runs.all().iter().any(|r| !r.state().ended()) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    deadline.abort();
    signals.abort();
    sweeper.abort();
    if let Some(p) = socket {
        let _ = std::fs::remove_file(p);
    }
    let d = state_dir.clone();
    let _ = tokio::task::spawn_blocking(move || crate::unpack::remove_tree(&d)).await;
    served.map_err(|e| ServeError(format!("serving: {e}")))
}
