//! Seccomp profiles compiled by nsrun, loaded in a forked test child, probed with raw syscalls.
//!
//! Every probe forks; the child sets no_new_privs, loads the filter, makes one raw syscall with
//! harmless bad arguments and reports the errno through a pipe, using nothing but raw syscalls
//! and `_exit` (the test harness is multithreaded, so the child must not allocate or lock).
//! Where the kernel itself would answer something other than EPERM (bad flags are checked before
//! permissions), the same probe without a filter proves that the filter made the difference.
//! Runs the same as root and as an unprivileged user.
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

mod support;

use std::path::Path;

use nsrun::sandbox::caps::{cap_from_name, CapSet};
use nsrun::sandbox::seccomp::{compile, Filter, SeccompSource};

/// What the child saw: the errno of the probe (0 on success) or the signal that killed it.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Outcome {
    Errno(i32),
    Signal(i32),
}

fn last_errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot; reading it is async-signal-safe.
    unsafe { *libc::__errno_location() }
}

/// Runs `probe` in a forked child under `filter`; `probe` returns a raw syscall's result.
fn run(filter: Option<&Filter>, probe: fn() -> i64) -> Outcome {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid array of two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the child below only makes raw syscalls and calls _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: prctl, write and _exit are async-signal-safe; the filter is already built.
        unsafe {
            libc::close(fds[0]);
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                libc::_exit(90);
            }
            if let Some(f) = filter {
                if f.load().is_err() {
                    libc::_exit(91);
                }
            }
            let rc = probe();
            let e: i32 = if rc < 0 { last_errno() } else { 0 };
            libc::write(fds[1], &e as *const i32 as *const libc::c_void, 4);
            libc::_exit(0);
        }
    }
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(fds[1]) };
    let mut e = -1i32;
    // SAFETY: reading at most 4 bytes into an i32.
    let n = unsafe { libc::read(fds[0], &mut e as *mut i32 as *mut libc::c_void, 4) };
    // SAFETY: closing our read end.
    unsafe { libc::close(fds[0]) };
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    if libc::WIFSIGNALED(status) {
        return Outcome::Signal(libc::WTERMSIG(status));
    }
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "child failed to set up (90: no_new_privs, 91: load)"
    );
    assert_eq!(n, 4, "child reported nothing");
    Outcome::Errno(e)
}

/// A probe: makes one raw syscall, returns its raw result.
type Probe = fn() -> i64;

fn sc(nr: libc::c_long, a: [usize; 5]) -> i64 {
    // SAFETY: callers pass harmless bad arguments (null pointers, invalid fds/flags) only.
    unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4]) }
}

const EPERM: Outcome = Outcome::Errno(libc::EPERM);

fn default_filter() -> Filter {
    compile(&SeccompSource::Default, CapSet::default_set(), None)
        .unwrap()
        .expect("a filter")
}

// Probes. Each comment says what the kernel answers without a filter.
fn p_getppid() -> i64 {
    sc(libc::SYS_getppid, [0; 5])
}
fn p_uname() -> i64 {
    let mut u = std::mem::MaybeUninit::<libc::utsname>::uninit();
    sc(libc::SYS_uname, [u.as_mut_ptr() as usize, 0, 0, 0, 0])
}
fn p_openat_root() -> i64 {
    let rc = sc(
        libc::SYS_openat,
        [
            libc::AT_FDCWD as usize,
            c"/".as_ptr() as usize,
            libc::O_RDONLY as usize,
            0,
            0,
        ],
    );
    if rc >= 0 {
        // SAFETY: closing the fd just opened.
        unsafe { libc::close(rc as i32) };
    }
    rc
}
/// A plain fork through raw clone(SIGCHLD); the grandchild exits at once.
fn p_clone_plain() -> i64 {
    let rc = sc(libc::SYS_clone, [libc::SIGCHLD as usize, 0, 0, 0, 0]);
    if rc == 0 {
        // SAFETY: grandchild leaves at once.
        unsafe { libc::_exit(0) };
    }
    if rc > 0 {
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(rc as i32, std::ptr::null_mut(), 0) };
    }
    rc
}
/// EINVAL without a filter: CLONE_NEWNS together with CLONE_FS is refused before anything else.
fn p_clone_newns() -> i64 {
    sc(
        libc::SYS_clone,
        [(libc::CLONE_NEWNS | libc::CLONE_FS) as usize, 0, 0, 0, 0],
    )
}
/// EINVAL without a filter (size 0 is below CLONE_ARGS_SIZE_VER0).
fn p_clone3() -> i64 {
    sc(libc::SYS_clone3, [0, 0, 0, 0, 0])
}
/// EINVAL without a filter: unknown flag bits.
fn p_unshare() -> i64 {
    sc(libc::SYS_unshare, [0x8000_0000, 0, 0, 0, 0])
}
/// EBADF without a filter.
fn p_setns() -> i64 {
    sc(libc::SYS_setns, [usize::MAX, 0, 0, 0, 0])
}
/// EOPNOTSUPP without a filter: no such keyctl operation.
fn p_keyctl() -> i64 {
    sc(libc::SYS_keyctl, [0xdead, 0, 0, 0, 0])
}
/// EFAULT without a filter: null key type.
fn p_add_key() -> i64 {
    sc(libc::SYS_add_key, [0, 0, 0, 0, 0])
}
fn p_request_key() -> i64 {
    sc(libc::SYS_request_key, [0, 0, 0, 0, 0])
}
/// EINVAL without a filter: unknown flags.
fn p_userfaultfd() -> i64 {
    sc(libc::SYS_userfaultfd, [0xffff_ffff, 0, 0, 0, 0])
}
/// EFAULT without a filter: null attr.
fn p_perf_event_open() -> i64 {
    sc(libc::SYS_perf_event_open, [0, 0, usize::MAX, usize::MAX, 0])
}
fn p_mount() -> i64 {
    sc(
        libc::SYS_mount,
        [
            c"none".as_ptr() as usize,
            c"/nonexistent-nsrun".as_ptr() as usize,
            c"tmpfs".as_ptr() as usize,
            0,
            0,
        ],
    )
}
fn p_umount2() -> i64 {
    sc(
        libc::SYS_umount2,
        [c"/nonexistent-nsrun".as_ptr() as usize, 0, 0, 0, 0],
    )
}
fn p_pivot_root() -> i64 {
    sc(libc::SYS_pivot_root, [0, 0, 0, 0, 0])
}
fn p_bpf() -> i64 {
    sc(libc::SYS_bpf, [usize::MAX, 0, 0, 0, 0])
}
fn p_kexec_load() -> i64 {
    sc(libc::SYS_kexec_load, [0, 0, 0, usize::MAX, 0])
}
fn p_init_module() -> i64 {
    sc(libc::SYS_init_module, [0, 0, 0, 0, 0])
}
fn p_finit_module() -> i64 {
    sc(libc::SYS_finit_module, [usize::MAX, 0, 0, 0, 0])
}
fn p_open_by_handle_at() -> i64 {
    sc(libc::SYS_open_by_handle_at, [usize::MAX, 0, 0, 0, 0])
}
/// EINVAL without a filter: bad magic (checked after the capability, so root sees EINVAL).
fn p_reboot() -> i64 {
    sc(libc::SYS_reboot, [0, 0, 0, 0, 0])
}
fn p_swapon() -> i64 {
    sc(libc::SYS_swapon, [0, 0, 0, 0, 0])
}
/// ESRCH/EIO without a filter: no such request/pid.
fn p_ptrace() -> i64 {
    sc(libc::SYS_ptrace, [0xdead, 0, 0, 0, 0])
}
fn p_mkdir_null() -> i64 {
    sc(libc::SYS_mkdirat, [libc::AT_FDCWD as usize, 0, 0o700, 0, 0])
}
fn p_fchmod_777() -> i64 {
    sc(libc::SYS_fchmod, [usize::MAX, 0o777, 0, 0, 0])
}
fn p_fchmod_700() -> i64 {
    sc(libc::SYS_fchmod, [usize::MAX, 0o700, 0, 0, 0])
}
/// personality(0xffffffff) only queries.
fn p_personality_query() -> i64 {
    sc(libc::SYS_personality, [0xffff_ffff, 0, 0, 0, 0])
}
/// ADDR_NO_RANDOMIZE (0x0040000): not in the default profile's list.
fn p_personality_norandom() -> i64 {
    sc(libc::SYS_personality, [0x0040000, 0, 0, 0, 0])
}
/// AF_VSOCK sockets reach the hypervisor host; the default profile refuses them.
fn p_socket_vsock() -> i64 {
    let rc = sc(
        libc::SYS_socket,
        [libc::AF_VSOCK as usize, libc::SOCK_STREAM as usize, 0, 0, 0],
    );
    if rc >= 0 {
        // SAFETY: closing the socket just made.
        unsafe { libc::close(rc as i32) };
    }
    rc
}
fn p_socket_unix() -> i64 {
    let rc = sc(
        libc::SYS_socket,
        [libc::AF_UNIX as usize, libc::SOCK_STREAM as usize, 0, 0, 0],
    );
    if rc >= 0 {
        // SAFETY: closing the socket just made.
        unsafe { libc::close(rc as i32) };
    }
    rc
}

#[test]
fn default_profile_allows_what_tools_need() {
    let f = default_filter();
    for (name, p) in [
        ("getppid", p_getppid as fn() -> i64),
        ("uname", p_uname),
        ("openat /", p_openat_root),
        ("clone(SIGCHLD)", p_clone_plain),
        ("personality query", p_personality_query),
        ("socket(AF_UNIX)", p_socket_unix),
    ] {
        assert_eq!(
            run(Some(&f), p),
            Outcome::Errno(0),
            "{name} should be allowed"
        );
    }
}

#[test]
fn default_profile_denies_the_dangerous_calls() {
    let f = default_filter();
    let probes: &[(&str, Probe)] = &[
        ("clone(CLONE_NEWNS)", p_clone_newns),
        ("unshare", p_unshare),
        ("setns", p_setns),
        ("keyctl", p_keyctl),
        ("add_key", p_add_key),
        ("request_key", p_request_key),
        ("userfaultfd", p_userfaultfd),
        ("perf_event_open", p_perf_event_open),
        ("mount", p_mount),
        ("umount2", p_umount2),
        ("pivot_root", p_pivot_root),
        ("bpf", p_bpf),
        ("kexec_load", p_kexec_load),
        ("init_module", p_init_module),
        ("finit_module", p_finit_module),
        ("open_by_handle_at", p_open_by_handle_at),
        ("reboot", p_reboot),
        ("swapon", p_swapon),
        ("ptrace", p_ptrace),
        ("personality(ADDR_NO_RANDOMIZE)", p_personality_norandom),
        ("socket(AF_VSOCK)", p_socket_vsock),
    ];
    for (name, p) in probes {
        assert_eq!(run(Some(&f), *p), EPERM, "{name} under the default profile");
    }
    // Without the filter the kernel answers these differently, so EPERM above is the filter's.
    for (name, p) in [
        ("clone(CLONE_NEWNS|CLONE_FS)", p_clone_newns as fn() -> i64),
        ("unshare(bad flags)", p_unshare),
        ("setns(-1)", p_setns),
        ("keyctl(bad op)", p_keyctl),
        ("add_key(NULL)", p_add_key),
        ("userfaultfd(bad flags)", p_userfaultfd),
        ("perf_event_open(NULL)", p_perf_event_open),
        ("ptrace(bad request)", p_ptrace),
    ] {
        let got = run(None, p);
        assert!(
            got != EPERM && got != Outcome::Errno(0),
            "{name} unconfined: {got:?}"
        );
    }
}

#[test]
fn clone3_gets_enosys_so_libcs_fall_back() {
    assert_eq!(run(None, p_clone3), Outcome::Errno(libc::EINVAL));
    assert_eq!(
        run(Some(&default_filter()), p_clone3),
        Outcome::Errno(libc::ENOSYS)
    );
}

#[test]
fn cap_sys_admin_switches_namespace_rules() {
    let mut caps = CapSet::default_set();
    caps.insert(cap_from_name("SYS_ADMIN").unwrap());
    let f = compile(&SeccompSource::Default, caps, None)
        .unwrap()
        .unwrap();
    // With SYS_ADMIN the calls reach the kernel, which answers with its own errno.
    assert_eq!(run(Some(&f), p_clone3), Outcome::Errno(libc::EINVAL));
    assert_eq!(run(Some(&f), p_unshare), Outcome::Errno(libc::EINVAL));
    assert_eq!(run(Some(&f), p_setns), Outcome::Errno(libc::EBADF));
    // ... but not the ones gated on other capabilities.
    assert_eq!(run(Some(&f), p_ptrace), EPERM);
}

fn write_profile(dir: &Path, name: &str, json: &str) -> SeccompSource {
    let p = dir.join(name);
    std::fs::write(&p, json).unwrap();
    SeccompSource::File(p)
}

#[test]
fn custom_profile_errno_args_and_caps() {
    let dir = tempfile::tempdir().unwrap();
    let src = write_profile(
        dir.path(),
        "custom.json",
        r#"{
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 122},
            {"names": ["fchmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 77,
             "args": [{"index": 1, "value": 511, "op": "SCMP_CMP_EQ"}]},
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 88,
             "includes": {"caps": ["CAP_NET_RAW"]}},
            {"names": ["unshare"], "action": "SCMP_ACT_ERRNO", "errnoRet": 99,
             "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["no_such_syscall_anywhere"], "action": "SCMP_ACT_ERRNO"}
        ]}"#,
    );
    let f = compile(&src, CapSet::default_set(), None).unwrap().unwrap();
    assert_eq!(
        run(Some(&f), p_mkdir_null),
        Outcome::Errno(122),
        "mkdir gets the profile's errno"
    );
    assert_eq!(run(None, p_mkdir_null), Outcome::Errno(libc::EFAULT));
    assert_eq!(
        run(Some(&f), p_fchmod_777),
        Outcome::Errno(77),
        "argument condition matches"
    );
    assert_eq!(
        run(Some(&f), p_fchmod_700),
        Outcome::Errno(libc::EBADF),
        "argument condition does not match"
    );
    assert_eq!(
        run(Some(&f), p_getppid),
        Outcome::Errno(0),
        "rule needs NET_RAW, not held"
    );
    assert_eq!(
        run(Some(&f), p_unshare),
        Outcome::Errno(99),
        "rule applies without SYS_ADMIN"
    );

    let mut caps = CapSet::default_set();
    caps.insert(cap_from_name("NET_RAW").unwrap());
    caps.insert(cap_from_name("SYS_ADMIN").unwrap());
    let f = compile(&src, caps, None).unwrap().unwrap();
    assert_eq!(
        run(Some(&f), p_getppid),
        Outcome::Errno(88),
        "includes.caps now held"
    );
    assert_eq!(
        run(Some(&f), p_unshare),
        Outcome::Errno(libc::EINVAL),
        "excludes.caps now held"
    );
}

#[test]
fn kill_actions() {
    let dir = tempfile::tempdir().unwrap();
    let src = write_profile(
        dir.path(),
        "kill.json",
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"},
                         {"names": ["setns"], "action": "SCMP_ACT_TRAP"}]}"#,
    );
    let f = compile(&src, CapSet(0), None).unwrap().unwrap();
    assert_eq!(run(Some(&f), p_getppid), Outcome::Signal(libc::SIGSYS));
    assert_eq!(run(Some(&f), p_setns), Outcome::Signal(libc::SIGSYS));
    assert_eq!(run(Some(&f), p_uname), Outcome::Errno(0));
}

/// i386 syscalls from a 64-bit process (`int 0x80`) are filtered under the x86 sub-architecture:
/// covered when the profile's archMap lists it, killed (bad arch) when it does not.
#[cfg(target_arch = "x86_64")]
#[test]
fn arch_map_covers_i386_entry() {
    fn i386_mkdir_null() -> i64 {
        let mut ret: i64 = 39; // __NR_mkdir on i386
                               // SAFETY: mkdir(NULL, 0) through the i386 entry point: a harmless EFAULT at worst. rbx (the
                               // first argument) is reserved by LLVM, so it is swapped in and out; r8-r11 are declared clobbered.
        unsafe {
            std::arch::asm!("xchg {b}, rbx", "int 0x80", "xchg {b}, rbx", b = inout(reg) 0u64 => _,
                inout("rax") ret, in("rcx") 0u64, out("r8") _, out("r9") _, out("r10") _, out("r11") _);
        }
        if ret < 0 {
            // SAFETY: publish the errno the way the probe harness reads it.
            unsafe { *libc::__errno_location() = -ret as i32 };
            return -1;
        }
        ret
    }
    fn i386_syscall_1000() -> i64 {
        let mut ret: i64 = 1000;
        // SAFETY: as above; no such syscall, so nothing happens at all.
        unsafe {
            std::arch::asm!("xchg {b}, rbx", "int 0x80", "xchg {b}, rbx", b = inout(reg) 0u64 => _,
                inout("rax") ret, out("r8") _, out("r9") _, out("r10") _, out("r11") _);
        }
        if ret < 0 {
            // SAFETY: publish the errno the way the probe harness reads it.
            unsafe { *libc::__errno_location() = -ret as i32 };
            return -1;
        }
        ret
    }
    // Without a filter the i386 entry point exists (IA32 emulation) and says EFAULT; if the kernel
    // was built without it, there is nothing to test.
    match run(None, i386_mkdir_null) {
        Outcome::Errno(libc::EFAULT) => {}
        other => {
            crate::support::skipped(&format!("no IA32 emulation here ({other:?})"));
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let with_x86 = write_profile(
        dir.path(),
        "x86.json",
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 122}]}"#,
    );
    let native_only = write_profile(
        dir.path(),
        "native.json",
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "archMap": [{"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 122}]}"#,
    );
    let f = compile(&with_x86, CapSet(0), None).unwrap().unwrap();
    assert_eq!(run(Some(&f), i386_mkdir_null), Outcome::Errno(122));
    let f = compile(&native_only, CapSet(0), None).unwrap().unwrap();
    assert_eq!(
        run(Some(&f), i386_mkdir_null),
        Outcome::Signal(libc::SIGSYS)
    );
    // The default profile covers i386 too: mkdir is allowed there, and a call newer than the
    // profile is ENOSYS there as well.
    let f = default_filter();
    assert_eq!(run(Some(&f), i386_mkdir_null), Outcome::Errno(libc::EFAULT));
    assert_eq!(
        run(Some(&f), i386_syscall_1000),
        Outcome::Errno(libc::ENOSYS)
    );
    assert_eq!(run(None, i386_syscall_1000), Outcome::Errno(libc::ENOSYS));
}

#[test]
fn bpf_cache_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let cache = state.join("seccomp");
    let fresh = default_filter();
    let first = compile(&SeccompSource::Default, CapSet::default_set(), Some(&state))
        .unwrap()
        .unwrap();
    let files: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one entry: {files:?}");
    let entry = &files[0];
    assert_eq!(entry.extension().unwrap(), "bpf");
    let key = entry.file_stem().unwrap().to_str().unwrap().to_string();
    // magic, SHA-256 of (key, program), program
    let cached = std::fs::read(entry).unwrap();
    assert_eq!(&cached[..8], b"NSRUNBPF");
    assert_eq!(&cached[40..], fresh.to_bytes().as_slice());
    assert_eq!(first.to_bytes(), fresh.to_bytes());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(entry).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
        0o700
    );

    // A hit is served from the file: a different (valid, properly checksummed) program there
    // comes back, which shows the cache is used at all.
    let other = compile(&SeccompSource::Default, CapSet(0), None)
        .unwrap()
        .unwrap();
    let sealed = |program: &[u8]| {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(key.as_bytes());
        h.update([0]);
        h.update(program);
        let mut out = b"NSRUNBPF".to_vec();
        out.extend_from_slice(&h.finalize());
        out.extend_from_slice(program);
        out
    };
    std::fs::write(entry, sealed(&other.to_bytes())).unwrap();
    let hit = compile(&SeccompSource::Default, CapSet::default_set(), Some(&state))
        .unwrap()
        .unwrap();
    assert_eq!(hit.to_bytes(), other.to_bytes(), "served from the cache");

    // Never trusted blindly: each of these is recompiled (and the file replaced).
    let allow_all: Vec<u8> = [
        0x06u16.to_ne_bytes().as_slice(),
        &[0, 0],
        &0x7fff_0000u32.to_ne_bytes(),
    ]
    .concat();
    let mut truncated = sealed(&fresh.to_bytes());
    truncated.truncate(truncated.len() - 8);
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        ("a raw allow-all program", allow_all.clone(), 0o600),
        (
            "an allow-all program with a stale checksum",
            {
                let mut b = sealed(&fresh.to_bytes());
                b.truncate(40);
                b.extend_from_slice(&allow_all);
                b
            },
            0o600,
        ),
        ("a truncated program", truncated, 0o600),
        ("garbage", b"garbage".to_vec(), 0o600),
        (
            "a valid entry others may write",
            sealed(&other.to_bytes()),
            0o666,
        ),
    ];
    for (what, bytes, mode) in cases {
        std::fs::write(entry, &bytes).unwrap();
        std::fs::set_permissions(entry, std::fs::Permissions::from_mode(mode)).unwrap();
        let again = compile(&SeccompSource::Default, CapSet::default_set(), Some(&state))
            .unwrap()
            .unwrap();
        assert_eq!(again.to_bytes(), fresh.to_bytes(), "{what} was trusted");
        assert_eq!(
            std::fs::read(entry).unwrap(),
            sealed(&fresh.to_bytes()),
            "{what} was not replaced"
        );
    }

    // Another cap set or another profile is another entry; no temporary files are left.
    let mut caps = CapSet::default_set();
    caps.insert(cap_from_name("SYS_ADMIN").unwrap());
    compile(&SeccompSource::Default, caps, Some(&state))
        .unwrap()
        .unwrap();
    let src = write_profile(
        dir.path(),
        "p.json",
        r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#,
    );
    compile(&src, CapSet::default_set(), Some(&state))
        .unwrap()
        .unwrap();
    let names: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.ends_with(".bpf") && n.len() == 64 + 4),
        "{names:?}"
    );

    // The cached program still works.
    assert_eq!(run(Some(&hit), p_mount), EPERM);
}

#[test]
fn unwritable_cache_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let f = compile(
        &SeccompSource::Default,
        CapSet::default_set(),
        Some(&file.join("cache")),
    )
    .unwrap();
    assert!(f.is_some());
}

#[test]
fn profile_errors_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let missing = SeccompSource::File(dir.path().join("missing.json"));
    let e = compile(&missing, CapSet(0), None).unwrap_err().to_string();
    assert!(e.contains("missing.json"), "{e}");
    let bad = write_profile(
        dir.path(),
        "bad.json",
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "archMap":
        [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_Z80"]}]}"#,
    );
    if cfg!(target_arch = "x86_64") {
        let e = compile(&bad, CapSet(0), None).unwrap_err().to_string();
        assert!(e.contains("SCMP_ARCH_Z80"), "{e}");
    }
    let notify = write_profile(
        dir.path(),
        "n.json",
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]}"#,
    );
    let e = compile(&notify, CapSet(0), None).unwrap_err().to_string();
    assert!(e.contains("NOTIFY") && e.contains("mkdir"), "{e}");
}

#[test]
fn filter_bytes_round_trip() {
    let f = default_filter();
    let bytes = f.to_bytes();
    assert_eq!(bytes.len(), f.len() * 8);
    assert_eq!(Filter::from_bytes(&bytes).unwrap().to_bytes(), bytes);
    assert!(Filter::from_bytes(&bytes[..7]).is_none());
    assert!(Filter::from_bytes(&[]).is_none());
}

/// 1000: no kernel has a syscall that high (yet): ENOSYS without a filter.
fn p_syscall_1000() -> i64 {
    sc(1000, [0; 5])
}

#[test]
fn syscalls_newer_than_the_profile_get_enosys() {
    assert_eq!(run(None, p_syscall_1000), Outcome::Errno(libc::ENOSYS));
    // Unknown to the profile and newer than all it names: "not implemented", so programs fall
    // back, rather than the default EPERM.
    assert_eq!(
        run(Some(&default_filter()), p_syscall_1000),
        Outcome::Errno(libc::ENOSYS)
    );
    // Known but not allowed: still the default errno.
    assert_eq!(run(Some(&default_filter()), p_mount), EPERM);
    // A profile that allows by default has no such prologue to need.
    let dir = tempfile::tempdir().unwrap();
    let allow = write_profile(
        dir.path(),
        "allow.json",
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}"#,
    );
    let f = compile(&allow, CapSet(0), None).unwrap().unwrap();
    assert_eq!(run(Some(&f), p_syscall_1000), Outcome::Errno(libc::ENOSYS));
    // A deny-by-default profile naming only old calls: a call above them all is ENOSYS, one
    // below the highest but unnamed keeps the profile's errno.
    let small = write_profile(
        dir.path(),
        "small.json",
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 13,
            "syscalls": [{"names": ["exit", "exit_group", "write", "getppid", "prctl", "seccomp"], "action": "SCMP_ACT_ALLOW"}]}"#,
    );
    let f = compile(&small, CapSet(0), None).unwrap().unwrap();
    assert_eq!(run(Some(&f), p_getppid), Outcome::Errno(0));
    assert_eq!(run(Some(&f), p_syscall_1000), Outcome::Errno(libc::ENOSYS));
    assert_eq!(
        run(Some(&f), p_uname),
        Outcome::Errno(13),
        "uname (63) is below seccomp (317)"
    );
    assert_eq!(
        run(Some(&f), p_clone3),
        Outcome::Errno(libc::ENOSYS),
        "clone3 (435) is above"
    );
}

/// x32 calls (same audit arch as x86-64, bit 30 set) are left to libseccomp's own x32 rules.
#[cfg(target_arch = "x86_64")]
#[test]
fn x32_calls_bypass_the_enosys_prologue() {
    fn x32_getpid() -> i64 {
        sc(0x4000_0000 | 39, [0; 5])
    }
    match run(None, x32_getpid) {
        Outcome::Errno(0) => {}
        other => {
            crate::support::skipped(&format!("no x32 ABI here ({other:?})"));
            return;
        }
    }
    assert_eq!(run(Some(&default_filter()), x32_getpid), Outcome::Errno(0));
}
