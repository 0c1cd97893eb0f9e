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
use super::net;
use super::seccomp::{self, Filter, SeccompError};
use super::spec::{Network, SandboxSpec, DEFAULT_PATH};
use super::trace::{self, Phase};
use super::user::{self, Identity, UserError};

#[derive(Debug, Error)]
pub enum PlanError {
    #[error("no command given: pass one after `--`")]
    NoCommand,
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Idmap(#[from] IdmapError),
    #[error(transparent)]
    Caps(#[from] CapsError),
    #[error("seccomp: {0}")]
    Seccomp(#[from] SeccompError),
    #[error("invalid environment variable {0:?}: expected KEY=VALUE with a KEY of no spaces, '=' or control characters")]
    BadEnv(String),
    #[error("invalid hostname {0:?}: 1 to 64 letters, digits, '-', '_' and '.'")]
    BadHostname(String),
    #[error("--pids-limit {0}: nsrun's own pid 1 counts toward the limit, which leaves the tool no process; use at least 2")]
    PidsTooLow(u64),
    #[error("tmpfs {0}: a size of 0 would mean no limit at all; give a positive size")]
    ZeroSize(String),
    #[error("working directory {0:?} must be an absolute path")]
    BadCwd(String),
    #[error("--memory {0}: the minimum memory limit is 6 MiB, as in Docker (nsrun's own setup needs some)")]
    MemoryTooLow(u64),
    #[error(transparent)]
    Net(#[from] net::parent::NetError),
    #[error("argument or variable contains a NUL byte: {0:?}")]
    Nul(String),
    #[error("invalid run id {0:?}: expected 12 to 64 lowercase hex digits")]
    BadRunId(String),
    /// A bad `--stop-signal`/`StopSignal` or `--ulimit`, or a `--group-add` the user namespace
    /// cannot express (the message says which).
    #[error("{0}")]
    Option(String),
}

/// Checks a caller-chosen run id: it names cgroups and scratch directories, so only hex digits.
pub fn check_run_id(id: &str) -> Result<(), PlanError> {
    let ok = (12..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
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
    /// A private run's network, attached by the parent after clone.
    pub net: Option<net::parent::NetPlan>,
    pub exec: Exec,
    pub caps: CapSet,
    /// The kernel's highest capability number, read here so the child need not.
    pub last_cap: u32,
    pub seccomp: Option<Filter>,
    /// Set when the tool holds CAP_SYS_ADMIN: it then runs in a user namespace of its own.
    pub nest: Option<Nest>,
    /// Where the caller's argument and environment strings sit in memory, which pid 1 (a fork of
    /// the caller that never execs) overwrites: see [`caller_memory`].
    pub caller_memory: [(usize, usize); 2],
    /// `-t`: the terminal's initial rows and columns (see [`super::tty`]).
    pub tty: Option<(u16, u16)>,
    /// What pid 1 sends the tool in place of a SIGTERM (`--stop-signal`).
    pub stop_signal: libc::c_int,
    /// With start-up tracing on, the trace's origin: the sandbox sends marks counted from it
    /// (see [`super::trace`]).
    pub trace_origin_ns: Option<u64>,
}

/// The tool's own user namespace, nested in the run's, for a tool that holds CAP_SYS_ADMIN.
///
/// Every mount of a run is made in the run's user namespace, where CAP_SYS_ADMIN could remount a
/// read-only bind read-write or unmount a mask. The tool's process therefore unshares a user
/// and a mount namespace of its own just before it drops to its capabilities; the kernel copies
/// the mounts into it *locked* (MNT_LOCK_READONLY and friends, MNT_LOCKED), as it does for any
/// mount that crosses into a less privileged user namespace: no remount, bind-then-remount,
/// unmount or `mount_setattr` can undo them. The nested namespace maps every id of the run's
/// onto itself, so files and ids look the same. What it costs the tool: capabilities over the
/// run's network, UTS, IPC, pid and cgroup namespaces, which belong to the outer namespace (so
/// no `sethostname`, interface changes, fresh `/proc` or cgroupfs mounts even with
/// `--cap-add SYS_ADMIN`); low ports stay bindable, as the run's network namespace lets every
/// uid bind them.
#[derive(Debug)]
pub struct Nest {
    /// `/proc/<tool>/uid_map` contents: the identity over the uids the run's namespace maps.
    pub uid_map: Vec<u8>,
    /// The same for gids.
    pub gid_map: Vec<u8>,
}

impl Nest {
    fn identity(idmap: &IdMap) -> Nest {
        let render = |extents: &[super::idmap::Extent]| {
            extents
                .iter()
                .map(|e| format!("{} {} {}\n", e.inside, e.inside, e.count))
                .collect::<String>()
                .into_bytes()
        };
        Nest {
            uid_map: render(&idmap.uids),
            gid_map: render(&idmap.gids),
        }
    }
}

/// `[start, end)` of this process's argument and environment strings (fields 48–51 of
/// `/proc/self/stat`), read once; zeros where they cannot be read.
pub fn caller_memory() -> [(usize, usize); 2] {
    static AREAS: std::sync::OnceLock<[(usize, usize); 2]> = std::sync::OnceLock::new();
    *AREAS.get_or_init(|| {
        std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_memory_areas(&s))
            .unwrap_or_default()
    })
}

fn parse_memory_areas(stat: &str) -> Option<[(usize, usize); 2]> {
    // Fields after the command name (in parentheses, which may hold anything) start at field 3.
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<usize> = rest
        .split_whitespace()
        .skip(48 - 3)
        .take(4)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    (f.len() == 4).then(|| [(f[0], f[1]), (f[2], f[3])])
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
        for u in &spec.ulimits {
            u.check().map_err(PlanError::Option)?;
            u.check_allowed().map_err(PlanError::Option)?;
        }
        let hostname = spec
            .hostname
            .clone()
            .unwrap_or_else(|| run_id[..12.min(run_id.len())].to_string());
        check_hostname(&hostname)?;
        let caps = CapSet::resolve(&spec.cap_add, &spec.cap_drop)?;
        // With CAP_SYS_ADMIN the tool could remount a bound rootfs read-write and write into
        // the cache other runs share; an overlay without an upper layer cannot be made writable.
        let sys_admin = caps.contains(super::caps::CAP_SYS_ADMIN);
        // NET_ADMIN in the run's user namespace could flush the egress filter; with SYS_ADMIN the
        // tool lives in a nested user namespace that has no say over the network namespace.
        let net_admin =
            super::caps::cap_from_name("NET_ADMIN").is_some_and(|c| caps.contains(c)) && !sys_admin;
        let net = net::parent::plan(spec.network, &spec.net, net_admin)?;
        let generated = if spec.network == Network::Host {
            Vec::new()
        } else {
            let host_internal = net.as_ref().and_then(|n| n.policy.host_internal);
            net::files::generate(net.is_some(), &spec.net, &hostname, host_internal)
        };
        let mounts = mounts::plan(spec, &cwd, sys_admin, &generated)?;
        trace::mark(Phase::Plan, "plan: ids, user, mounts resolved");
        let seccomp = seccomp::compile(&spec.seccomp, caps, spec.state_dir.as_deref())?;
        // `-t`: Docker's TERM for a terminal, unless the image or the caller set one.
        trace::mark(Phase::SeccompPrepare, "plan: seccomp filter ready");
        let mut env = spec.env.clone();
        if spec.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
            env.insert(0, "TERM=xterm".into());
        }
        let env = environment(&env, &hostname, &ident)?;
        // Supplementary groups the namespace cannot express are left out (setgroups would fail).
        let mut ident = ident;
        ident.groups.retain(|g| idmap.host_gid(*g).is_some());
        for t in &spec.tmpfs {
            let unmapped = t
                .uid
                .filter(|u| idmap.host_uid(*u).is_none())
                .map(|u| ("uid", u));
            let unmapped = unmapped.or(t
                .gid
                .filter(|g| idmap.host_gid(*g).is_none())
                .map(|g| ("gid", g)));
            if let Some((k, id)) = unmapped {
                return Err(PlanError::Option(format!(
                    "--tmpfs {}: {k}={id} is not mapped in this run's user namespace \
                     (rootless without subordinate ids maps only the tool's own ids)",
                    t.target
                )));
            }
        }
        for g in user::resolve_groups(&spec.group_add, &spec.rootfs)? {
            if !idmap.setgroups || idmap.host_gid(g).is_none() {
                return Err(PlanError::Option(format!(
                    "--group-add {g}: this run's user namespace cannot hold supplementary \
                     groups (rootless without /etc/subgid, or a gid outside the mapping)"
                )));
            }
            if g != ident.gid && !ident.groups.contains(&g) {
                ident.groups.push(g);
            }
        }
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
        if spec.network != Network::Host {
            clone_flags |= libc::CLONE_NEWNET;
        }
        let nest = sys_admin.then(|| Nest::identity(&idmap));
        Ok(Plan {
            run_id: run_id.to_string(),
            clone_flags,
            idmap,
            steps: mounts.steps,
            sources: mounts.sources,
            mount_fds: mounts.fds,
            setup_ids,
            hostname: hostname.into_bytes(),
            loopback_up: spec.network != Network::Host,
            net,
            exec,
            caps,
            last_cap: super::caps::last_cap(),
            seccomp,
            nest,
            caller_memory: caller_memory(),
            tty: spec.tty.then(|| {
                let ws = super::tty::caller_size();
                (ws.ws_row, ws.ws_col)
            }),
            stop_signal: stop_signal(spec)?,
            trace_origin_ns: trace::origin_ns(),
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
    stop_signal(spec)?;
    for u in &spec.ulimits {
        u.check().map_err(PlanError::Option)?;
        u.check_allowed().map_err(PlanError::Option)?;
    }
    if let Some(h) = &spec.hostname {
        check_hostname(h)?;
    }
    let caps = CapSet::resolve(&spec.cap_add, &spec.cap_drop)?;
    let net_admin = super::caps::cap_from_name("NET_ADMIN").is_some_and(|c| caps.contains(c))
        && !caps.contains(super::caps::CAP_SYS_ADMIN);
    net::parent::plan(spec.network, &spec.net, net_admin)?;
    if matches!(spec.seccomp, seccomp::SeccompSource::File(_)) {
        seccomp::compile(&spec.seccomp, caps, spec.state_dir.as_deref())?;
    }
    for b in &spec.binds {
        mounts::check_target(&b.target)?;
        std::fs::metadata(&b.source).map_err(|e| MountError::BindSource(b.source.clone(), e))?;
    }
    for t in &spec.tmpfs {
        mounts::check_target(&t.target)?;
    }
    IdMap::decide(spec.userns, Caller::current(), (0, 0), spec.root_id_base)?;
    Ok(())
}

/// The signal that stops the tool: the spec's, else SIGTERM.
fn stop_signal(spec: &SandboxSpec) -> Result<libc::c_int, PlanError> {
    spec.stop_signal
        .as_deref()
        .filter(|s| !s.is_empty())
        .map_or(Ok(libc::SIGTERM), super::ulimit::parse_signal)
        .map_err(PlanError::Option)
}

/// Docker's floor for `--memory`: below it the run dies of OOM before the tool starts.
const MIN_MEMORY: u64 = 6 << 20;

fn check_limits(spec: &SandboxSpec) -> Result<(), PlanError> {
    if let Some(m) = spec.limits.memory.filter(|&m| m < MIN_MEMORY) {
        return Err(PlanError::MemoryTooLow(m));
    }
    if let Some(p) = spec.limits.pids.filter(|&p| p < 2) {
        return Err(PlanError::PidsTooLow(p));
    }
    if spec.tmp_size == 0 {
        return Err(PlanError::ZeroSize("/tmp".into()));
    }
    if spec.shm_size == Some(0) {
        return Err(PlanError::ZeroSize("/dev/shm".into()));
    }
    if let Some(t) = spec.tmpfs.iter().find(|t| t.size == 0) {
        return Err(PlanError::ZeroSize(t.target.clone()));
    }
    Ok(())
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

/// A hostname as RFC 1123 allows: letters, digits, `-` and `.` (and `_`, which Docker takes), at
/// most 64 bytes (the kernel's limit). A `/` or a newline would end up in `/etc/hostname`,
/// `$HOSTNAME` and prompts.
fn check_hostname(hostname: &str) -> Result<(), PlanError> {
    let ok = !hostname.is_empty()
        && hostname.len() <= 64
        && !hostname.starts_with(['-', '.'])
        && hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !ok {
        return Err(PlanError::BadHostname(hostname.to_string()));
    }
    Ok(())
}

/// A `KEY=VALUE` pair with a key a shell or `env` could name: non-empty, without whitespace,
/// `=` (it ends the key) or control characters. Returns the key.
fn check_env(v: &str) -> Result<&str, PlanError> {
    match v.split_once('=') {
        Some((k, _))
            if !k.is_empty() && !k.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            Ok(k)
        }
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
        for bad in ["", "=", "A B=1", " A=1", "A\n=1", "A\t=1"] {
            assert!(check_env(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn hostnames_follow_rfc_1123() {
        for good in ["box", "a-b.example", "x1", &"a".repeat(64)] {
            assert!(check_hostname(good).is_ok(), "{good:?} refused");
        }
        for bad in ["", "a/b", "a\nb", "a b", "-a", ".a", "a\0", &"a".repeat(65)] {
            assert!(check_hostname(bad).is_err(), "{bad:?} accepted");
        }
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
    fn memory_areas_come_from_proc_self_stat() {
        let mine = caller_memory();
        assert!(mine[0].0 > 0 && mine[0].1 > mine[0].0, "{mine:?}");
        assert!(
            mine[1].0 >= mine[0].1,
            "environment follows the arguments: {mine:?}"
        );
        let stat = "1 (a b) c) S 0 1 1 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 5 1 1 1 1 1 1 1 1 \
                    0 0 0 0 0 0 0 17 0 0 0 0 0 0 1 2 3 100 200 300 400 0";
        assert_eq!(parse_memory_areas(stat), Some([(100, 200), (300, 400)]));
        assert_eq!(parse_memory_areas("1 (x) S 0"), None);
    }

    #[test]
    fn nested_maps_are_the_identity_over_the_outer_ranges() {
        let map = IdMap::decide(
            super::super::idmap::UsernsMode::Auto,
            Caller { uid: 0, gid: 0 },
            (0, 0),
            Some(1_000_000_000),
        )
        .unwrap();
        let nest = Nest::identity(&map);
        assert_eq!(nest.uid_map, b"0 0 65536\n");
        assert_eq!(nest.gid_map, b"0 0 65536\n");
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
