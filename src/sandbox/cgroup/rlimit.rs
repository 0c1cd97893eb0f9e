//! The fallback when no cgroup can be created: the limits rlimits can express, applied in the
//! child, and the names of those they cannot (see the module documentation of `cgroup`).

use super::*;

pub(super) fn rlimit_fallback(limits: &Limits) -> Enforcement {
    let mut rlimits = Vec::new();
    let mut unenforced = Vec::new();
    if let Some(p) = limits.pids {
        rlimits.push(Rlimit {
            resource: libc::RLIMIT_NPROC,
            limit: p,
        });
    }
    if let Some(m) = limits.memory {
        rlimits.push(Rlimit {
            resource: libc::RLIMIT_DATA,
            limit: m,
        });
        unenforced.push(
            "--memory for the run as a whole (each process's private memory is capped by \
             RLIMIT_DATA; shared memory — MAP_SHARED, memfd, shm, tmpfs — is not counted)"
                .into(),
        );
    }
    if limits.memory_swap.is_some() {
        unenforced.push("--memory-swap".into());
    }
    if limits.cpus.is_some() {
        unenforced.push("--cpus".into());
    }
    if limits.cpu_shares.is_some() {
        unenforced.push("--cpu-shares".into());
    }
    Enforcement::Rlimits {
        rlimits,
        unenforced,
    }
}

/// Child side: applies rlimits (soft = hard = limit). Allocation-free; returns the errno.
pub fn apply_rlimits(rlimits: &[Rlimit]) -> Result<(), i32> {
    for r in rlimits {
        let lim = libc::rlimit {
            rlim_cur: r.limit as libc::rlim_t,
            rlim_max: r.limit as libc::rlim_t,
        };
        // SAFETY: lim is a live, initialised rlimit struct; setrlimit only reads it.
        if unsafe { libc::setrlimit(r.resource, &lim) } != 0 {
            return Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO));
        }
    }
    Ok(())
}
