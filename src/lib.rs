//! nsrun: run untrusted tools in rootless containers, without a daemon.
//!
//! The crate has three parts, each usable on its own:
//! - [`sandbox`]: run a command on a root filesystem in fresh user, mount, pid, net, ipc, uts and
//!   cgroup namespaces, confined by seccomp, capabilities and cgroup limits;
//! - images ([`mod@reference`], [`registry`], [`store`], [`unpack`]): pull OCI images into a verified,
//!   content-addressed rootfs cache;
//! - [`runner`]: the API a worker links — a [`runner::RunSpec`] (image or rootfs, files in and
//!   out, limits, labels) in, a [`runner::RunResult`] and [`runner::Event`]s out, with a queue,
//!   capped capture and an audit log;
//! - the `nsrun` command line, a thin layer over the runner.
//!
//! A tokio program runs sandboxes through [`Runtime`] (or, lower down, [`helper`]), which
//! delegates the fork-sensitive work to a single-threaded helper process (see `DESIGN` in the
//! README for why).
//!
//! ```no_run
//! # async fn demo() -> Result<(), nsrun::Error> {
//! let rt = nsrun::Runtime::builder().max_concurrent(16).build()?;
//! let r = rt.run(nsrun::RunSpec::image("alpine").args(["echo", "hi"])).await?;
//! assert_eq!(r.stdout, b"hi\n");
//! # Ok(()) }
//! ```

// The unit tests also link the dev-dependencies (criterion, tempfile) they do not all use.
#![cfg_attr(test, allow(unused_crate_dependencies))]
// The binary's (src/main.rs) log output: `NSRUN_LOG=debug`. The library only emits events.
use tracing_subscriber as _;

pub mod doctor;
pub mod ids;
pub mod reference;
pub mod registry;
pub mod runner;
pub mod sandbox;
pub mod serve;
pub mod store;
pub mod unpack;

// The helper carries the runner's errors in its protocol, so it lives under the runner (no
// import cycle); `nsrun::helper` stays its public path.
pub use runner::helper;

pub use runner::{Error, Event, ImageRef, RunHandle, RunResult, RunSpec, Runtime};

/// The README's examples, compiled as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
