//! The runner for programs without an async runtime.

use super::{Error, RunResult, RunSpec, RuntimeBuilder};

/// A [`Runtime`] with its own small tokio runtime: `run` blocks until the result.
///
/// ```no_run
/// use nsrun::runner::{blocking, RunSpec};
/// let rt = blocking::Runtime::new(nsrun::runner::Runtime::builder().root("/tmp/nsrun"))?;
/// let r = rt.run(RunSpec::rootfs("/srv/busybox").args(["echo", "hi"]))?;
/// assert_eq!(r.stdout, b"hi\n");
/// # Ok::<(), nsrun::runner::Error>(())
/// ```
pub struct Runtime {
    tokio: tokio::runtime::Runtime,
    inner: super::Runtime,
}

impl Runtime {
    pub fn new(builder: RuntimeBuilder) -> Result<Runtime, Error> {
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::Sandbox {
                message: format!("cannot start the tokio runtime: {e}"),
            })?;
        let inner = builder.build()?;
        Ok(Runtime { tokio, inner })
    }

    /// Runs `spec` to the end (see [`super::Runtime::run`]).
    pub fn run(&self, spec: RunSpec) -> Result<RunResult, Error> {
        self.tokio.block_on(self.inner.run(spec))
    }

    /// The async runtime underneath, for `spawn` and events.
    pub fn runtime(&self) -> &super::Runtime {
        &self.inner
    }

    /// The tokio runtime, e.g. to `block_on` a [`super::RunHandle`].
    pub fn tokio(&self) -> &tokio::runtime::Runtime {
        &self.tokio
    }
}

#[allow(unused)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Runtime>();
    is::<super::Runtime>();
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("blocking::Runtime")
            .field("root", &self.inner.root())
            .finish()
    }
}
