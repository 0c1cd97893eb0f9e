//! `nsrun pull | images | inspect | rmi | gc`, and the image flags `run` shares ([`ImageOpts`]).
//!
//! Every handler returns the exit status or a one-line [`Failure`] (125: nsrun's own error).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use nsrun::ids::Ownership;
use nsrun::registry::RegistryOptions;
use nsrun::store::{self, PullOptions, PullPolicy, ResolvedImage, Store};
use nsrun::unpack::Limits;

use super::Failure;

/// Image and registry flags, shared by `pull`, `images`, `inspect`, `rmi`, `gc` and `run`.
#[derive(Debug, Clone, clap::Args)]
pub struct ImageOpts {
    /// Directory for nsrun's image cache (default: see README).
    #[arg(long, value_name = "DIR", env = "NSRUN_ROOT")]
    pub root: Option<PathBuf>,
    /// Platform to pull from a multi-platform image (default: the host's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Reach this registry over plain HTTP when HTTPS fails, without verifying its certificate
    /// (localhost and 127.0.0.0/8 get the HTTP fallback anyway). Repeatable; the environment
    /// variable takes a comma-separated list.
    #[arg(
        long = "insecure-registry",
        value_name = "HOST[:PORT]",
        env = "NSRUN_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registry: Vec<String>,
    /// Trust this PEM CA certificate for registries, besides the system roots.
    #[arg(
        long = "registry-ca",
        value_name = "FILE",
        env = "NSRUN_REGISTRY_CA",
        value_delimiter = ','
    )]
    pub registry_ca: Vec<PathBuf>,
    /// Registry credentials USER:PASS (default: ~/.docker/config.json, else anonymous). On the
    /// command line the password is visible to every local user (ps): prefer --creds-file,
    /// --creds USER with --password-stdin, or the NSRUN_CREDS variable.
    #[arg(
        long,
        value_name = "USER[:PASS]",
        env = "NSRUN_CREDS",
        hide_env_values = true
    )]
    pub creds: Option<String>,
    /// Read the registry credentials USER:PASS from the first line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "creds")]
    pub creds_file: Option<PathBuf>,
    /// Read the registry password from the first line of stdin; --creds names the user.
    #[arg(long, requires = "creds")]
    pub password_stdin: bool,
    /// The credentials once read (stdin can be read only once).
    #[arg(skip)]
    pub resolved_creds: std::sync::OnceLock<Option<String>>,
    /// When to pull: always, missing or never (default: missing for run, always for pull).
    #[arg(long, value_enum, value_name = "WHEN")]
    pub pull: Option<PullPolicy>,
    /// Refuse images whose layers unpack to more than SIZE (default 16g).
    #[arg(long, value_name = "SIZE")]
    pub max_image_bytes: Option<String>,
    /// Refuse images with more than N files in their layers (default 1000000).
    #[arg(long, value_name = "N")]
    pub max_image_entries: Option<u64>,
    /// Give up on a registry response that sends nothing for SECONDS (it is retried first).
    #[arg(long, value_name = "SECONDS", default_value = "30")]
    pub registry_timeout: f64,
}

fn fail(e: impl std::fmt::Display) -> Failure {
    Failure {
        code: 125,
        message: e.to_string(),
    }
}

impl ImageOpts {
    /// The cache these flags name.
    pub fn store(&self) -> Result<Store, Failure> {
        let root = self.root.clone().unwrap_or_else(Store::default_root);
        Store::open(&root).map_err(fail)
    }

    /// The registry credentials the flags give, as `USER:PASS`, reading a file or stdin once.
    fn creds(&self) -> Result<Option<String>, Failure> {
        if let Some(c) = self.resolved_creds.get() {
            return Ok(c.clone());
        }
        let first_line = |text: &str| {
            text.lines()
                .next()
                .unwrap_or("")
                .trim_end_matches('\r')
                .to_string()
        };
        let creds = if let Some(file) = &self.creds_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| Failure::usage(format!("--creds-file {}: {e}", file.display())))?;
            let line = first_line(&text);
            if !line.contains(':') {
                return Err(Failure::usage(format!(
                    "--creds-file {}: expected USER:PASS on the first line",
                    file.display()
                )));
            }
            Some(line)
        } else if self.password_stdin {
            let user = self.creds.clone().unwrap_or_default();
            if user.contains(':') {
                return Err(Failure::usage(
                    "--password-stdin: give --creds USER without the password",
                ));
            }
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text)
                .map_err(|e| Failure::usage(format!("--password-stdin: reading stdin: {e}")))?;
            let pass = first_line(&text);
            if pass.is_empty() {
                return Err(Failure::usage("--password-stdin: stdin held no password"));
            }
            Some(format!("{user}:{pass}"))
        } else {
            self.creds.clone()
        };
        let _ = self.resolved_creds.set(creds.clone());
        Ok(creds)
    }

    /// The registry flags.
    pub fn registry_options(&self) -> Result<RegistryOptions, Failure> {
        if !(self.registry_timeout.is_finite() && self.registry_timeout > 0.0) {
            return Err(Failure::usage(
                "--registry-timeout must be a positive number of seconds",
            ));
        }
        Ok(RegistryOptions {
            insecure: self.insecure_registry.clone(),
            ca_files: self.registry_ca.clone(),
            creds: self.creds()?,
            read_timeout: Duration::from_secs_f64(self.registry_timeout),
            ..Default::default()
        })
    }

    /// The unpacking limits (`--max-image-bytes`, `--max-image-entries`).
    pub fn unpack_limits(&self) -> Result<Limits, Failure> {
        let mut limits = Limits::default();
        if let Some(s) = &self.max_image_bytes {
            limits.max_bytes = nsrun::sandbox::parse_size(s)
                .map_err(|e| Failure::usage(format!("--max-image-bytes: {e}")))?;
        }
        if let Some(n) = self.max_image_entries {
            limits.max_entries = n;
        }
        if let Some(p) = &self.platform {
            nsrun::registry::manifest::Platform::parse(p)
                .map_err(|e| Failure::usage(e.to_string()))?;
        }
        Ok(limits)
    }

    /// Pull options for files owned per `ownership` (see [`store::default_ownership`]).
    pub fn pull_options(&self, ownership: Ownership) -> Result<PullOptions, Failure> {
        Ok(PullOptions {
            platform: self.platform.clone(),
            ownership,
            registry: self.registry_options()?,
            limits: self.unpack_limits()?,
            progress: true,
            observer: None,
        })
    }

    fn ensure_with(
        &self,
        reference: &str,
        opts: &PullOptions,
        policy: PullPolicy,
    ) -> Result<ResolvedImage, Failure> {
        self.ensure_in(&self.store()?, reference, opts, policy)
    }

    fn ensure_in(
        &self,
        s: &Store,
        reference: &str,
        opts: &PullOptions,
        policy: PullPolicy,
    ) -> Result<ResolvedImage, Failure> {
        if policy != PullPolicy::Always {
            if let Some(img) = s.lookup(reference, opts).map_err(fail)? {
                return Ok(img);
            }
            if policy == PullPolicy::Never {
                return Err(fail(store::StoreError::NotFound(reference.to_string())));
            }
        }
        block_on(s.pull(reference, opts)).map_err(fail)
    }
}

/// The ownership `run` would use (`NSRUN_UID_BASE` moves root's range), so that what `pull`
/// installs is what `run` finds.
fn ownership() -> Ownership {
    let base = std::env::var("NSRUN_UID_BASE")
        .ok()
        .and_then(|v| v.parse().ok());
    nsrun::ids::image_ownership(nsrun::ids::Caller::current(), base)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime")
        .block_on(f)
}

/// `nsrun pull IMAGE`
#[derive(Debug, clap::Args)]
pub struct PullArgs {
    #[command(flatten)]
    pub image: ImageOpts,
    /// No progress display; print only the digest.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Image reference, oci:DIR[:TAG] or docker-archive:FILE.
    #[arg(value_name = "IMAGE")]
    pub reference: String,
}

pub fn pull(a: PullArgs) -> Result<i32, Failure> {
    let mut opts = a.image.pull_options(ownership())?;
    opts.progress = !a.quiet;
    // `nsrun pull` re-resolves the reference unless told otherwise, as `docker pull` does.
    let policy = a.image.pull.unwrap_or(PullPolicy::Always);
    let img = a.image.ensure_with(&a.reference, &opts, policy)?;
    if a.quiet {
        println!("{}", img.digest);
    } else {
        println!("{}: {}", img.reference, img.digest);
        if !std::io::stdout().is_terminal() {
            return Ok(0);
        }
        println!("  rootfs {}", img.rootfs[0].display());
    }
    Ok(0)
}

/// `nsrun images`
#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    /// Directory for nsrun's image cache (default: see README).
    #[arg(long, value_name = "DIR", env = "NSRUN_ROOT")]
    pub root: Option<PathBuf>,
    /// Print JSON (one array) instead of a table (`--format json` says the same).
    #[arg(long)]
    pub json: bool,
    /// Output format: `json` (as --json) or `table` (the default).
    #[arg(long, value_name = "FORMAT", value_parser = ["json", "table"])]
    pub format: Option<String>,
    /// Print only digests.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

fn open(root: &Option<PathBuf>) -> Result<Store, Failure> {
    Store::open(&root.clone().unwrap_or_else(Store::default_root)).map_err(fail)
}

pub fn images(a: ImagesArgs) -> Result<i32, Failure> {
    let list = open(&a.root)?.list().map_err(fail)?;
    if a.json || a.format.as_deref() == Some("json") {
        println!("{}", serde_json::to_string_pretty(&list).map_err(fail)?);
        return Ok(0);
    }
    if a.quiet {
        for i in &list {
            println!("{}", i.digest);
        }
        return Ok(0);
    }
    println!(
        "{:<60} {:<19} {:>9} {:<20} OWNERSHIP",
        "REFERENCE", "DIGEST", "SIZE", "CREATED"
    );
    for i in list {
        let refs = if i.refs.is_empty() {
            vec!["<none>".to_string()]
        } else {
            i.refs.clone()
        };
        for r in refs {
            println!(
                "{:<60} {:<19} {:>9} {:<20} {}",
                r,
                i.digest.chars().take(19).collect::<String>(),
                nsrun::store::progress::human(i.size),
                i.created
                    .as_deref()
                    .unwrap_or("-")
                    .chars()
                    .take(19)
                    .collect::<String>(),
                i.ownership
            );
        }
    }
    Ok(0)
}

/// `nsrun inspect IMAGE`
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub image: ImageOpts,
    /// Output format: `json`, the only one (accepted as docker and podman take it).
    #[arg(long, value_name = "FORMAT", value_parser = ["json"])]
    pub format: Option<String>,
    #[arg(value_name = "IMAGE")]
    pub reference: String,
}

pub fn inspect(a: InspectArgs) -> Result<i32, Failure> {
    let s = a.image.store()?;
    let opts = a.image.pull_options(ownership())?;
    let j = s.inspect(&a.reference, &opts).map_err(fail)?;
    println!("{}", serde_json::to_string_pretty(&j).map_err(fail)?);
    Ok(0)
}

/// `nsrun rmi IMAGE…`
#[derive(Debug, clap::Args)]
pub struct RmiArgs {
    #[command(flatten)]
    pub image: ImageOpts,
    /// References, or manifest digests (sha256:…).
    #[arg(value_name = "IMAGE", required = true)]
    pub references: Vec<String>,
}

pub fn rmi(a: RmiArgs) -> Result<i32, Failure> {
    let s = a.image.store()?;
    let opts = a.image.pull_options(ownership())?;
    for r in &a.references {
        let removed = s.remove(r, &opts).map_err(fail)?;
        println!("Untagged: {r}");
        for e in removed {
            println!("Deleted: {e}");
        }
    }
    Ok(0)
}

/// `nsrun gc` (the image cache part)
#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// Directory for nsrun's image cache (default: see README).
    #[arg(long, value_name = "DIR", env = "NSRUN_ROOT")]
    pub root: Option<PathBuf>,
}

pub fn gc(a: GcArgs) -> Result<i32, Failure> {
    let r = open(&a.root)?.gc().map_err(fail)?;
    for e in &r.entries {
        println!("removed unreferenced image {e}");
    }
    for e in &r.broken {
        println!("removed incomplete image {e}");
    }
    for e in &r.staging {
        println!("removed stale pull {e}");
    }
    for e in &r.locks {
        println!("removed the locks of failed pull {e}");
    }
    // What a run killed with SIGKILL leaves behind: its cgroups, under ours.
    let swept = nsrun::sandbox::cgroup::sweep().map_err(fail)?;
    for c in &swept {
        println!("removed leftover run cgroup {}", c.display());
    }
    // And their scratch directories (files in and out).
    let root = a.root.clone().unwrap_or_else(Store::default_root);
    for d in nsrun::runner::scratch::sweep(&root).map_err(fail)? {
        println!("removed leftover run scratch {}", d.display());
    }
    Ok(0)
}
