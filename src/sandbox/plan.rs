//! The plan: everything the child needs, resolved in the parent before clone.
//!
//! Strings are `CString`s, argv/envp are ready NULL-terminated pointer arrays, the mount steps are
//! an ordered list, the seccomp filter is compiled. The child only walks it, so it never
//! allocates, and most of the logic is testable without privileges.

use std::ffi::CString;

use thiserror::Error;

use super::caps::{CapSet, CapsError};
use super::idmap::{Caller, IdMap, IdmapError};
use super::mounts::{self, Fds, MountError, Source, Step};
use super::seccomp::{self, Filter, SeccompError};
use super::spec::{Network, SandboxSpec, DEFAULT_PATH};
use super::user::{self, Identity, UserError};

#[derive(Debug, Error)]
pub enum PlanError {
    #[error("no command given: pass one after `--`")]
    NoCommand,
    #[error("{0}")]
    Mount(#[from] MountError),
    #[error("{0}")]
    User(#[from] UserError),
    #[error("{0}")]
    Idmap(#[from] IdmapError),
    #[error("{0}")]
    Caps(#[from] CapsError),
    #[error("seccomp: {0}")]
    Seccomp(#[from] SeccompError),
    #[error("invalid environment variable {0:?}: expected KEY=VALUE")]
    BadEnv(String),
    #[error("invalid hostname {0:?}: at most 64 characters, no NUL")]
    BadHostname(String),
    #[error("working directory {0:?} must be an absolute path")]
    BadCwd(String),
    #[error("--memory {0}: the minimum memory limit is 6 MiB, as in Docker (nsrun's own setup needs some)")]
    MemoryTooLow(u64),
    #[error("argument or variable contains a NUL byte: {0:?}")]
    Nul(String),
    #[error("invalid run id {0:?}: expected 12 to 64 lowercase hex digits")]
    BadRunId(String),
}

/// Checks a caller-chosen run id: it names cgroups and scratch directories, so only hex digits.
pub fn check_run_id(id: &str) -> Result<(), PlanError> {
    let ok = (12..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(PlanError::BadRunId(id.to_string()))
    }
}

/// What the tool process executes.
#[derive(Debug)]
pub struct Exec {
    /// Paths to try in order: `args[0]` itself when it has a `/`, else each `PATH` entry joined with it.
    pub candidates: Vec<CString>,
    /// The `PATH` searched, for the "not found" message.
    pub search_path: String,
    pub argv0: String,
    _argv: Vec<CString>,
    pub argv_ptrs: Vec<*const libc::c_char>,
    _env: Vec<CString>,
    pub env_ptrs: Vec<*const libc::c_char>,
    pub cwd: CString,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups; `None` where setgroups(2) is denied (rootless single id).
    pub groups: Option<Vec<libc::gid_t>>,
}

/// Everything a run needs, ready for the child.
#[derive(Debug)]
pub struct Plan {
    pub run_id: String,
    pub clone_flags: libc::c_int,
    pub idmap: IdMap,
    pub steps: Vec<Step>,
    /// Host paths the steps mount from.
    pub sources: Vec<Source>,
    /// Descriptor numbers the steps use.
    pub mount_fds: Fds,
    /// The ids the child takes on inside the namespace before setting up (container root when
    /// mapped), so that what it creates is owned by a mapped id.
    pub setup_ids: (u32, u32),
    pub hostname: Vec<u8>,
    pub loopback_up: bool,
    pub exec: Exec,
    pub caps: CapSet,
    /// The kernel's highest capability number, read here so the child need not.
    pub last_cap: u32,
    pub seccomp: Option<Filter>,
}

impl Plan {
    /// Builds the plan for `spec`, for the calling process's identity.
    pub fn build(spec: &SandboxSpec, run_id: &str) -> Result<Plan, PlanError> {
        if spec.args.is_empty() {
            return Err(PlanError::NoCommand);
        }
        check_run_id(run_id)?;
        let ident = user::resolve(spec.user.as_deref(), &spec.rootfs)?;
        let idmap = IdMap::decide(
            spec.userns,
            Caller::current(),
            (ident.uid, ident.gid),
            spec.root_id_base,
        )?;
        idmap.check_ids(ident.uid, ident.gid)?;
        let cwd = working_dir(spec)?;
        check_limits(spec)?;
        let hostname = spec
            .hostname
            .clone()
            .unwrap_or_else(|| run_id[..12.min(run_id.len())].to_string());
        check_hostname(&hostname)?;
        let caps = CapSet::resolve(&spec.cap_add, &spec.cap_drop)?;
        // With CAP_SYS_ADMIN the tool could remount a bound rootfs read-write and write into
        // the cache other runs share; an overlay without an upper layer cannot be made writable.
        let sys_admin = super::caps::cap_from_name("SYS_ADMIN").is_some_and(|c| caps.contains(c));
        let mounts = mounts::plan(spec, &cwd, sys_admin)?;
        let seccomp = seccomp::compile(&spec.seccomp, caps, spec.state_dir.as_deref())?;
        let env = environment(&spec.env, &hostname, &ident)?;
        // Supplementary groups the namespace cannot express are left out (setgroups would fail).
        let mut ident = ident;
        ident.groups.retain(|g| idmap.host_gid(*g).is_some());
        let exec = exec_plan(&spec.args, env, &cwd, &ident, idmap.setgroups)?;

        let setup_ids = (
            if idmap.host_uid(0).is_some() {
                0
            } else {
                ident.uid
            },
            if idmap.host_gid(0).is_some() {
                0
            } else {
                ident.gid
            },
        );
        let mut clone_flags = libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS;
        if spec.network == Network::None {
            clone_flags |= libc::CLONE_NEWNET;
        }
        Ok(Plan {
            run_id: run_id.to_string(),
            clone_flags,
            idmap,
            steps: mounts.steps,
            sources: mounts.sources,
            mount_fds: mounts.fds,
            setup_ids,
            hostname: hostname.into_bytes(),
            loopback_up: spec.network == Network::None,
            exec,
            caps,
            last_cap: super::caps::last_cap(),
            seccomp,
        })
    }
}

/// Checks what can be checked of `spec` without its root filesystem: environment, working
/// directory, hostname, capabilities, a seccomp profile file, volume sources and the id mapping.
/// The CLI runs it before it pulls an image, so that a bad flag costs no download and leaves no
/// cache entry behind; [`Plan::build`] checks all of it again, and the rest.
pub fn check(spec: &SandboxSpec) -> Result<(), PlanError> {
    if let Some(id) = &spec.run_id {
        check_run_id(id)?;
    }
    for v in &spec.env {
        check_env(v)?;
    }
    working_dir(spec)?;
    check_limits(spec)?;
    if let Some(h) = &spec.hostname {
        check_hostname(h)?;
    }
    let caps = CapSet::resolve(&spec.cap_add, &spec.cap_drop)?;
    if matches!(spec.seccomp, seccomp::SeccompSource::File(_)) {
        seccomp::compile(&spec.seccomp, caps, spec.state_dir.as_deref())?;
    }
    for b in &spec.binds {
        std::fs::metadata(&b.source).map_err(|e| MountError::BindSource(b.source.clone(), e))?;
    }
    IdMap::decide(spec.userns, Caller::current(), (0, 0), spec.root_id_base)?;
    Ok(())
}

/// Docker's floor for `--memory`: below it the run dies of OOM before the tool starts.
const MIN_MEMORY: u64 = 6 << 20;

fn check_limits(spec: &SandboxSpec) -> Result<(), PlanError> {
    match spec.limits.memory {
        Some(m) if m < MIN_MEMORY => Err(PlanError::MemoryTooLow(m)),
        _ => Ok(()),
    }
}

fn working_dir(spec: &SandboxSpec) -> Result<String, PlanError> {
    let cwd = spec
        .cwd
        .clone()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(PlanError::BadCwd(cwd));
    }
    Ok(cwd)
}

fn check_hostname(hostname: &str) -> Result<(), PlanError> {
    if hostname.is_empty() || hostname.len() > 64 || hostname.contains('\0') {
        return Err(PlanError::BadHostname(hostname.to_string()));
    }
    Ok(())
}

/// A `KEY=VALUE` pair with a non-empty key; returns the key.
fn check_env(v: &str) -> Result<&str, PlanError> {
    match v.split_once('=') {
        Some((k, _)) if !k.is_empty() => Ok(k),
        _ => Err(PlanError::BadEnv(v.to_string())),
    }
}

/// The tool's environment: the caller's variables, then Docker's defaults for what is missing.
fn environment(
    vars: &[String],
    hostname: &str,
    ident: &Identity,
) -> Result<Vec<String>, PlanError> {
    let mut env: Vec<String> = Vec::with_capacity(vars.len() + 3);
    for v in vars {
        let k = check_env(v)?;
        // Later definitions win, as with repeated `-e`.
        env.retain(|e| e.split_once('=').map(|(ek, _)| ek) != Some(k));
        env.push(v.clone());
    }
    let has = |env: &[String], k: &str| {
        env.iter()
            .any(|e| e.split_once('=').is_some_and(|(ek, _)| ek == k))
    };
    if !has(&env, "PATH") {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    if !has(&env, "HOSTNAME") {
        env.insert(1, format!("HOSTNAME={hostname}"));
    }
    if !has(&env, "HOME") {
        let home = ident.home.clone().unwrap_or_else(|| {
            if ident.uid == 0 {
                "/root".into()
            } else {
                "/".into()
            }
        });
        env.push(format!("HOME={home}"));
    }
    Ok(env)
}

fn cstring(s: &str) -> Result<CString, PlanError> {
    CString::new(s).map_err(|_| PlanError::Nul(s.to_string()))
}

fn exec_plan(
    args: &[String],
    env: Vec<String>,
    cwd: &str,
    ident: &Identity,
    setgroups: bool,
) -> Result<Exec, PlanError> {
    let search_path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_string();
    let argv0 = args[0].clone();
    let candidates = if argv0.contains('/') {
        vec![cstring(&argv0)?]
    } else {
        search_path
            .split(':')
            .map(|d| if d.is_empty() { "." } else { d })
            .map(|d| cstring(&format!("{}/{argv0}", d.trim_end_matches('/'))))
            .collect::<Result<_, _>>()?
    };
    let argv: Vec<CString> = args.iter().map(|a| cstring(a)).collect::<Result<_, _>>()?;
    let envc: Vec<CString> = env.iter().map(|e| cstring(e)).collect::<Result<_, _>>()?;
    let ptrs = |v: &[CString]| {
        v.iter()
            .map(|c| c.as_ptr())
            .chain([std::ptr::null()])
            .collect::<Vec<_>>()
    };
    Ok(Exec {
        candidates,
        search_path,
        argv0,
        argv_ptrs: ptrs(&argv),
        _argv: argv,
        env_ptrs: ptrs(&envc),
        _env: envc,
        cwd: cstring(cwd)?,
        uid: ident.uid,
        gid: ident.gid,
        groups: setgroups.then(|| ident.groups.clone()),
    })
}

/// A fresh run id: 64 hex digits from the kernel's random pool, like Docker's container ids.
pub fn new_run_id() -> String {
    let mut buf = [0u8; 32];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: getrandom writes at most the given length into buf.
        let n = unsafe { libc::getrandom(buf[got..].as_mut_ptr().cast(), buf.len() - got, 0) };
        if n > 0 {
            got += n as usize;
        }
    }
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(uid: u32, home: Option<&str>) -> Identity {
        Identity {
            uid,
            gid: uid,
            groups: vec![],
            home: home.map(String::from),
        }
    }

    #[test]
    fn environment_fills_docker_defaults_and_later_wins() {
        let env = environment(
            &["A=1".into(), "A=2".into(), "B=x=y".into()],
            "box",
            &ident(0, None),
        )
        .unwrap();
        assert_eq!(
            env,
            [
                format!("PATH={DEFAULT_PATH}"),
                "HOSTNAME=box".into(),
                "A=2".into(),
                "B=x=y".into(),
                "HOME=/root".into()
            ]
        );
        let env = environment(
            &["PATH=/x".into(), "HOME=/h".into()],
            "box",
            &ident(5, Some("/home/u")),
        )
        .unwrap();
        assert_eq!(env, ["PATH=/x", "HOSTNAME=box", "HOME=/h"]);
        assert!(environment(&["NOEQUALS".into()], "b", &ident(0, None)).is_err());
        assert!(environment(&["=v".into()], "b", &ident(0, None)).is_err());
    }

    #[test]
    fn commands_are_searched_in_the_container_path() {
        let e = exec_plan(
            &["ls".into(), "-l".into()],
            vec!["PATH=/a:/b/".into()],
            "/",
            &ident(0, None),
            true,
        )
        .unwrap();
        assert_eq!(e.candidates, [c"/a/ls".to_owned(), c"/b/ls".to_owned()]);
        assert_eq!(e.argv_ptrs.len(), 3);
        assert!(e.argv_ptrs[2].is_null() && e.env_ptrs[1].is_null());
        let e = exec_plan(&["./x".into()], vec![], "/", &ident(0, None), false).unwrap();
        assert_eq!(e.candidates, [c"./x".to_owned()]);
        assert!(e.groups.is_none());
    }

    #[test]
    fn run_ids_are_unique_hex() {
        let (a, b) = (new_run_id(), new_run_id());
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(check_run_id(&a).is_ok());
        for bad in ["", "abc", "../../etc", "ABCDEF012345", &"a".repeat(65)] {
            assert!(check_run_id(bad).is_err(), "{bad}");
        }
    }
}
