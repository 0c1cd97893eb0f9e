//! [`RuntimeBuilder`]: the settings a [`Runtime`] is built with.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::*;
use crate::registry::RegistryOptions;
use crate::sandbox::cgroup::Limits;
use crate::sandbox::Network;
use crate::store::{PullPolicy, Store};
use helper::{Helper, Pool};

/// Builds a [`Runtime`].
#[derive(Clone)]
pub struct RuntimeBuilder {
    pub(super) root: Option<PathBuf>,
    pub(super) helper: Option<PathBuf>,
    pub(super) max_concurrent: usize,
    pub(super) limits: Limits,
    pub(super) network: Network,
    pub(super) pull_policy: PullPolicy,
    pub(super) registry: RegistryOptions,
    pub(super) platform: Option<String>,
    pub(super) capture_limit: usize,
    pub(super) output_limits: OutputLimits,
    pub(super) image_limits: crate::unpack::Limits,
    pub(super) audit: Option<Arc<dyn AuditSink>>,
    pub(super) warm_pool: usize,
}

/// Environment variable that sets [`RuntimeBuilder::warm_pool`] for runtimes that do not set it
/// (the test suite runs its `Runtime` tests through a pool with it).
pub const WARM_POOL_ENV: &str = "NSRUN_WARM_POOL";

impl RuntimeBuilder {
    /// Keep `n` helper processes started ahead of the runs (default 0: off; the CLI never
    /// sets it). A run with null stdin takes one instead of starting a helper, which takes the
    /// helper's exec off its start-up; each pooled helper serves one run and exits, and the
    /// pool refills in the background. Sandboxes are still created per run, the same way as
    /// without the pool: see [`crate::helper::Pool`] for what a pooled helper holds.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), nsrun::runner::Error> {
    /// use nsrun::runner::{RunSpec, Runtime};
    /// let rt = Runtime::builder().warm_pool(4).build()?;
    /// let r = rt.run(RunSpec::rootfs("/srv/busybox").args(["true"])).await?;
    /// assert_eq!(r.exit_code, 0);
    /// # Ok(()) }
    /// ```
    pub fn warm_pool(mut self, n: usize) -> Self {
        self.warm_pool = n;
        self
    }

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
        let pool_size = match self.warm_pool {
            0 => std::env::var(WARM_POOL_ENV)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            n => n,
        };
        let pool = match (&helper, pool_size) {
            (Ok(h), n) if n > 0 => {
                let pool = Pool::new(h.clone(), n);
                // Without a tokio runtime here, the first run fills it.
                if tokio::runtime::Handle::try_current().is_ok() {
                    pool.fill();
                }
                Some(pool)
            }
            _ => None,
        };
        Ok(Runtime {
            inner: Arc::new(Inner {
                root,
                pool,
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
