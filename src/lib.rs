//! nsrun: run untrusted tools in rootless containers, without a daemon.
//!
//! The crate has three parts, each usable on its own:
//! - [`sandbox`]: run a command on a root filesystem in fresh user, mount, pid, net, ipc, uts and
//!   cgroup namespaces, confined by seccomp, capabilities and cgroup limits;
//! - images ([`mod@reference`], [`registry`], [`store`], [`unpack`]): pull OCI images into a verified,
//!   content-addressed rootfs cache;
//! - the `nsrun` command line, a thin layer over both.
//!
//! A tokio program runs sandboxes through [`helper`], which delegates the fork-sensitive work to a
//! single-threaded helper process (see `DESIGN` in the README for why).

pub mod doctor;
pub mod helper;
pub mod reference;
pub mod registry;
pub mod sandbox;
pub mod store;
pub mod unpack;
