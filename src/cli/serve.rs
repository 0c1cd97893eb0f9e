//! `nsrun serve` and `nsrun token new | revoke`: flags to [`nsrun::serve`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nsrun::runner::{FileAudit, Runtime};
use nsrun::sandbox::Network;
use nsrun::serve::policy::Policy;
use nsrun::serve::tokens::TokensFile;

use super::image::ImageOpts;
use super::Failure;

/// Serve the runner over HTTP: POST /v1/runs and friends (docs/serve-api.md).
///
/// Every request but GET /healthz needs `Authorization: Bearer <token>` from the --tokens file
/// (see `nsrun token new`); each tenant's policy is checked before anything runs. SIGHUP reloads
/// the tokens; SIGTERM stops accepting, lets runs finish for --shutdown-timeout, then cancels them.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Where to listen: unix:PATH (socket mode 0660) or HOST:PORT (port 0: any free port; the
    /// address is printed on stderr).
    #[arg(long, value_name = "unix:PATH|HOST:PORT")]
    pub listen: String,
    /// The tokens file (tenants, token hashes, policies), written by `nsrun token new`.
    #[arg(long, value_name = "FILE")]
    pub tokens: PathBuf,
    /// TLS certificate chain (PEM); with --tls-key, serves HTTPS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM) — mTLS; tokens are still required.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// The server's directory for uploads and outputs (default: <root>/serve/<pid>); created
    /// (it must not exist) and removed at exit.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Runs set up or running at once (default: the number of CPUs); more wait in a queue.
    #[arg(long, value_name = "N")]
    pub max_concurrent: Option<usize>,
    /// Cap of a JSON request body (413 beyond).
    #[arg(long, value_name = "SIZE", default_value = "16m")]
    pub max_body: String,
    /// Cap of a multipart/form-data request body, files included (413 beyond).
    #[arg(long, value_name = "SIZE", default_value = "4g")]
    pub max_upload: String,
    /// Seconds runs may go on after SIGTERM before they are cancelled.
    #[arg(long, value_name = "SECONDS", default_value = "30")]
    pub shutdown_timeout: f64,
    /// Seconds an ended run (its result, events and outputs) is kept.
    #[arg(long, value_name = "SECONDS", default_value = "600")]
    pub keep_for: f64,
    /// Seconds a connection may take to send a request's headers before it is closed (an
    /// unauthenticated client cannot hold connections open by sending them slowly).
    #[arg(long, value_name = "SECONDS", default_value = "30")]
    pub header_timeout: f64,
    /// Ended runs kept at most (the oldest go first).
    #[arg(long, value_name = "N", default_value = "1000")]
    pub keep_runs: usize,
    /// The audit log, one JSON line per run with its tenant (default: <root>/audit.log).
    #[arg(long, value_name = "FILE")]
    pub audit: Option<PathBuf>,
    #[command(flatten)]
    pub images: ImageOpts,
}

/// Manage the tenants of a tokens file.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Add a tenant with a new token and its policy; prints the token once (the file keeps only
    /// its SHA-256). Signal the server with SIGHUP to take it.
    New(TokenNewArgs),
    /// Remove a tenant (its token stops working on the server's next SIGHUP).
    Revoke(TokenRevokeArgs),
}

#[derive(Debug, clap::Args)]
pub struct TokenNewArgs {
    /// The tokens file (created if missing, mode 0600, rewritten atomically).
    #[arg(long, value_name = "FILE")]
    pub tokens: PathBuf,
    /// The tenant's name: 1 to 64 of A-Z a-z 0-9 _ . -
    #[arg(long, value_name = "NAME")]
    pub tenant: String,
    /// Allowed images: a glob over normalised references (`*` matches anything, `/` included)
    /// or a sha256:… digest. At least one; repeatable.
    #[arg(long = "allow-image", value_name = "PATTERN", required = true)]
    pub allow_image: Vec<String>,
    /// Allowed network modes: none, private, host (default: none only). Repeatable.
    #[arg(long = "allow-network", value_name = "MODE")]
    pub allow_network: Vec<String>,
    /// Allowed egress rules (globs over the rules as written, e.g. '*.example.com:443'). Repeatable.
    #[arg(long = "allow-egress", value_name = "PATTERN")]
    pub allow_egress: Vec<String>,
    /// Memory ceiling (and default) of a run, e.g. 256m.
    #[arg(long, value_name = "SIZE")]
    pub max_memory: Option<String>,
    /// CPU ceiling (and default) of a run.
    #[arg(long, value_name = "CPUS")]
    pub max_cpus: Option<f64>,
    /// Process ceiling (and default) of a run.
    #[arg(long, value_name = "N")]
    pub max_pids: Option<u64>,
    /// Timeout ceiling (and default) of a run, seconds.
    #[arg(long, value_name = "SECONDS")]
    pub max_timeout: Option<f64>,
    /// Ceiling (and default) of each captured stream and each output file, e.g. 16m.
    #[arg(long, value_name = "SIZE")]
    pub max_output: Option<String>,
    /// Runs of the tenant in progress at once (429 beyond).
    #[arg(long, value_name = "N")]
    pub max_concurrent: Option<usize>,
    /// Runs the tenant may start per minute (429 beyond).
    #[arg(long, value_name = "N")]
    pub runs_per_minute: Option<usize>,
}

#[derive(Debug, clap::Args)]
pub struct TokenRevokeArgs {
    #[arg(long, value_name = "FILE")]
    pub tokens: PathBuf,
    #[arg(long, value_name = "NAME")]
    pub tenant: String,
}

fn size(flag: &str, s: &Option<String>) -> Result<Option<u64>, Failure> {
    s.as_deref()
        .map(|v| nsrun::sandbox::parse_size(v).map_err(|e| Failure::usage(format!("{flag}: {e}"))))
        .transpose()
}

fn secs(flag: &str, v: f64) -> Result<Duration, Failure> {
    if !(v.is_finite() && v >= 0.0) {
        return Err(Failure::usage(format!(
            "{flag}: must be a non-negative number of seconds"
        )));
    }
    Ok(Duration::from_secs_f64(v))
}

pub fn token(a: TokenArgs) -> Result<i32, Failure> {
    match a.command {
        TokenCommand::New(a) => {
            let mut networks = Vec::new();
            for n in &a.allow_network {
                networks.push(
                    n.parse::<Network>()
                        .map_err(|e| Failure::usage(format!("--allow-network: {e}")))?,
                );
            }
            let policy = Policy {
                allow_image: a.allow_image,
                allow_network: (!networks.is_empty()).then_some(networks),
                allow_egress: a.allow_egress,
                max_memory: size("--max-memory", &a.max_memory)?,
                max_cpus: a.max_cpus,
                max_pids: a.max_pids,
                max_timeout: a.max_timeout,
                max_output: size("--max-output", &a.max_output)?,
                max_concurrent: a.max_concurrent,
                runs_per_minute: a.runs_per_minute,
            };
            let token = TokensFile::add_tenant(&a.tokens, &a.tenant, policy)
                .map_err(|e| Failure::usage(e.0))?;
            println!("{token}");
            Ok(0)
        }
        TokenCommand::Revoke(a) => {
            TokensFile::revoke_tenant(&a.tokens, &a.tenant).map_err(|e| Failure::usage(e.0))?;
            Ok(0)
        }
    }
}

pub fn main(a: ServeArgs) -> Result<i32, Failure> {
    let root = a
        .images
        .root
        .clone()
        .unwrap_or_else(nsrun::store::Store::default_root);
    let mut config = nsrun::serve::Config::new(
        a.listen.clone(),
        a.tokens.clone(),
        a.state_dir
            .clone()
            .unwrap_or_else(|| root.join("serve").join(std::process::id().to_string())),
    );
    config.tls_cert = a.tls_cert.clone();
    config.tls_key = a.tls_key.clone();
    config.tls_client_ca = a.tls_client_ca.clone();
    config.max_body = size("--max-body", &Some(a.max_body.clone()))?.unwrap_or(16 << 20);
    config.max_upload = size("--max-upload", &Some(a.max_upload.clone()))?.unwrap_or(4 << 30);
    config.shutdown_timeout = secs("--shutdown-timeout", a.shutdown_timeout)?;
    config.keep_for = secs("--keep-for", a.keep_for)?;
    config.keep_runs = a.keep_runs;
    config.header_timeout = secs("--header-timeout", a.header_timeout)?;
    if config.header_timeout.is_zero() {
        return Err(Failure::usage(
            "--header-timeout: must be more than 0 seconds",
        ));
    }
    let mut b = Runtime::builder()
        .root(root.clone())
        .registry(a.images.registry_options()?)
        .image_limits(a.images.unpack_limits()?)
        .audit(Arc::new(FileAudit::new(
            a.audit.clone().unwrap_or_else(|| root.join("audit.log")),
        )));
    if let Some(p) = &a.images.platform {
        b = b.platform(p.clone());
    }
    if let Some(p) = a.images.pull {
        b = b.pull_policy(p);
    }
    if let Some(n) = a.max_concurrent {
        b = b.max_concurrent(n);
    }
    let runtime = b.build().map_err(|e| Failure::usage(e.to_string()))?;
    std::fs::create_dir_all(&root)
        .map_err(|e| Failure::usage(format!("--root {}: {e}", root.display())))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::usage(format!("cannot start the tokio runtime: {e}")))?;
    rt.block_on(nsrun::serve::serve(config, runtime))
        .map_err(|e| Failure::usage(e.0))?;
    Ok(0)
}
