//! The sandbox: one command, fresh namespaces, a read-only root, and nothing left behind.
//!
//! The parent side ([`spawn`]) builds a [`plan::Plan`] from a [`SandboxSpec`], clones the child,
//! writes its id maps, places it in a cgroup and waits. The child side (`child.rs`) walks the plan's
//! mount steps, pivots into the root and becomes pid 1 (`init.rs`), which starts the tool, reaps
//! zombies and forwards signals.

pub mod caps;
pub mod cgroup;
mod child;
pub mod diagnose;
pub mod idmap;
mod init;
pub mod masks;
pub mod mount_opts;
mod mounts;
pub mod net;
pub mod plan;
pub mod seccomp;
pub mod spawn;
pub mod spec;
mod sys;
pub mod syscall_probe;
pub mod tty;
pub mod ulimit;
pub mod user;

pub use spawn::{check_stdio, run, Outcome, RunError, Stdio, Termination};

pub use spec::{parse_size, BindMount, Network, ProcMode, SandboxSpec, TmpfsMount};
