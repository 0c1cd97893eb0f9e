//! The sandbox: one command, fresh namespaces, a read-only root, and nothing left behind.
//!
//! The parent side ([`spawn`]) builds a [`plan::Plan`] from a [`SandboxSpec`], clones the child,
//! writes its id maps, places it in a cgroup and waits. The child side (`child.rs`, the whole
//! setup order in one function) walks the plan's mount steps, pivots into the root and becomes
//! pid 1 (`init.rs`), which forks the tool, reaps zombies and forwards signals. They talk over
//! the report protocol of `report.rs`; `child.rs` calls into `init.rs`, never the other way.

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
mod report;
pub mod seccomp;
pub mod spawn;
pub mod spec;
mod sys;
pub mod syscall_probe;
pub mod trace;
pub mod tty;
pub mod ulimit;
pub mod user;

pub use spawn::{check_stdio, run, Outcome, RunError, Stdio, Termination};

pub use spec::{parse_size, BindMount, Network, ProcMode, SandboxSpec, TmpfsMount};
