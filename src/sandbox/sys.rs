//! The few raw system calls the sandbox needs that neither `std` nor `nix` offers in an
//! allocation-free form. Most `unsafe` blocks of process setup live here; the others sit next to
//! the one call they wrap, each with its `// SAFETY:` note (`clippy::undocumented_unsafe_blocks`
//! is on for the whole crate): `caps`, `seccomp`, `cgroup` (setrlimit), `spawn`, `child`,
//! `init`, `mounts`, `plan`, `net`, `syscall_probe`, `doctor` and the helper.
//!
//! Functions used after `clone` return `Err(errno)` and never allocate: the child may have been
//! cloned from a multithreaded process whose allocator lock another thread held.

use std::ffi::CStr;
use std::os::fd::RawFd;

use libc::{c_int, c_ulong};

/// `Err(errno)` of the last failed libc call.
fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn check(ret: c_int) -> Result<c_int, i32> {
    if ret < 0 {
        Err(errno())
    } else {
        Ok(ret)
    }
}

/// Forks with `flags` (namespace flags; `SIGCHLD` is added). Returns 0 in the child, the child's
/// pid in the parent.
///
/// The child runs on a copy of the caller's stack like after `fork`, but no `pthread_atfork`
/// handlers run: it must stick to async-signal-safe calls until it execs or exits.
pub fn clone_process(flags: c_int) -> Result<libc::pid_t, i32> {
    // SAFETY: a raw clone without CLONE_VM or a new stack behaves as fork(2): the child gets a
    // private copy of the address space and continues here with a return value of 0.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if ret < 0 {
        Err(errno())
    } else {
        Ok(ret as libc::pid_t)
    }
}

/// A plain fork for pid 1 starting the tool.
pub fn fork() -> Result<libc::pid_t, i32> {
    clone_process(0)
}

/// `pidfd_open(2)`: a descriptor that becomes readable when `pid` exits.
pub fn pidfd_open(pid: libc::pid_t) -> Result<std::os::fd::OwnedFd, i32> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::PIDFD_NONBLOCK) };
    if ret < 0 {
        return Err(errno());
    }
    // SAFETY: the kernel just handed us this descriptor; nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(ret as RawFd) })
}

/// `mount(2)` with optional source, type and data.
pub fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: c_ulong,
    data: Option<&CStr>,
) -> Result<(), i32> {
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is either null or a NUL-terminated string that outlives the call.
    check(unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            ptr(data).cast(),
        )
    })
    .map(drop)
}

/// `umount2(2)`.
pub fn umount2(target: &CStr, flags: c_int) -> Result<(), i32> {
    // SAFETY: target is NUL-terminated.
    check(unsafe { libc::umount2(target.as_ptr(), flags) }).map(drop)
}

/// `pivot_root(2)`; glibc has no wrapper.
pub fn pivot_root(new_root: &CStr, put_old: &CStr) -> Result<(), i32> {
    // SAFETY: both arguments are NUL-terminated paths.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
    check(ret as c_int).map(drop)
}

/// `chdir(2)`.
pub fn chdir(path: &CStr) -> Result<(), i32> {
    // SAFETY: path is NUL-terminated.
    check(unsafe { libc::chdir(path.as_ptr()) }).map(drop)
}

/// `mkdir(2)`; an existing entry is not an error (the caller checked types when planning).
pub fn mkdir(path: &CStr, mode: libc::mode_t) -> Result<(), i32> {
    // SAFETY: path is NUL-terminated.
    match check(unsafe { libc::mkdir(path.as_ptr(), mode) }) {
        Err(libc::EEXIST) | Ok(_) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates an empty file to bind-mount a file onto.
pub fn touch(path: &CStr, mode: libc::mode_t) -> Result<(), i32> {
    // SAFETY: path is NUL-terminated; the returned fd is closed right away.
    let fd = check(unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
            mode,
        )
    })?;
    close(fd);
    Ok(())
}

/// `symlink(2)`.
pub fn symlink(target: &CStr, link: &CStr) -> Result<(), i32> {
    // SAFETY: both are NUL-terminated.
    check(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) }).map(drop)
}

/// Writes all of `data` to `fd`, retrying on EINTR and short writes.
pub fn write_all(fd: RawFd, mut data: &[u8]) -> Result<(), i32> {
    while !data.is_empty() {
        // SAFETY: data points to initialised memory of the given length.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// Reads into `buf` until it is full or EOF; returns the number of bytes read.
pub fn read_full(fd: RawFd, buf: &mut [u8]) -> Result<usize, i32> {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: the destination range lies within buf.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        match n {
            0 => break,
            n if n < 0 => {
                let e = errno();
                if e != libc::EINTR {
                    return Err(e);
                }
            }
            n => got += n as usize,
        }
    }
    Ok(got)
}

/// `close(2)`, ignoring errors (there is nothing useful to do about them here).
pub fn close(fd: RawFd) {
    // SAFETY: closing an fd we own; a stale fd only yields EBADF.
    unsafe { libc::close(fd) };
}

/// `dup2(2)`; clears `O_CLOEXEC` on the new descriptor.
pub fn dup2(old: RawFd, new: RawFd) -> Result<(), i32> {
    if old == new {
        // dup2 would keep CLOEXEC; the caller wants the descriptor to survive exec.
        // SAFETY: fcntl on a descriptor we own.
        return check(unsafe { libc::fcntl(old, libc::F_SETFD, 0) }).map(drop);
    }
    // SAFETY: plain descriptor duplication.
    check(unsafe { libc::dup2(old, new) }).map(drop)
}

/// Closes (or, with `cloexec`, marks close-on-exec) every descriptor from `first` up.
pub fn close_range(first: u32, cloexec: bool) -> Result<(), i32> {
    let flags = if cloexec {
        libc::CLOSE_RANGE_CLOEXEC
    } else {
        0
    };
    // SAFETY: close_range only affects this process's descriptor table.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, flags) };
    check(ret as c_int).map(drop)
}

/// `prctl(2)` with one integer argument.
pub fn prctl(option: c_int, arg: c_ulong) -> Result<(), i32> {
    // SAFETY: the options used here take integer arguments only.
    check(unsafe { libc::prctl(option, arg, 0 as c_ulong, 0 as c_ulong, 0 as c_ulong) }).map(drop)
}

/// `unshare(2)`.
pub fn unshare(flags: c_int) -> Result<(), i32> {
    // SAFETY: unshare takes flags only.
    check(unsafe { libc::unshare(flags) }).map(drop)
}

/// `sethostname(2)`.
pub fn sethostname(name: &[u8]) -> Result<(), i32> {
    // SAFETY: name points to name.len() readable bytes.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// Sets the uid, gid and supplementary groups of the calling process.
pub fn set_ids(uid: u32, gid: u32, groups: Option<&[libc::gid_t]>) -> Result<(), i32> {
    if let Some(groups) = groups {
        // SAFETY: groups points to groups.len() gids.
        check(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) })?;
    }
    // SAFETY: plain id changes.
    check(unsafe { libc::setresgid(gid, gid, gid) })?;
    // SAFETY: as above.
    check(unsafe { libc::setresuid(uid, uid, uid) }).map(drop)
}

/// Brings the loopback interface of the current network namespace up.
pub fn loopback_up() -> Result<(), i32> {
    // SAFETY: a datagram socket used only for the interface ioctl, closed before returning.
    let sock =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    let ret = unsafe { libc::ioctl(sock, libc::SIOCSIFFLAGS, &req) };
    close(sock);
    check(ret).map(drop)
}

/// Replaces the signal mask; returns the previous one.
pub fn sigmask(how: c_int, set: &libc::sigset_t) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; both pointers are valid for the call.
    unsafe {
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(how, set, &mut old);
        old
    }
}

/// A signal set holding `signals`.
pub fn sigset(signals: &[c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set before sigaddset touches it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Waits for one signal of `set` (which must be blocked) and returns its number.
pub fn sigwait(set: &libc::sigset_t) -> c_int {
    loop {
        // SAFETY: set is initialised; no siginfo is requested.
        let sig = unsafe { libc::sigwaitinfo(set, std::ptr::null_mut()) };
        if sig > 0 {
            return sig;
        }
    }
}

/// Resets every catchable signal to its default disposition (the tool must not inherit ignores).
pub fn reset_signal_dispositions() {
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL is always a valid disposition; invalid numbers just fail.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

/// `kill(2)`.
pub fn kill(pid: libc::pid_t, sig: c_int) -> Result<(), i32> {
    // SAFETY: sending a signal has no memory effects.
    check(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// `waitpid(2)`; returns `(pid, raw status)`, pid 0 when nothing is ready under `WNOHANG`.
pub fn waitpid(pid: libc::pid_t, flags: c_int) -> Result<(libc::pid_t, c_int), i32> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        let ret = unsafe { libc::waitpid(pid, &mut status, flags) };
        if ret >= 0 {
            return Ok((ret, status));
        }
        let e = errno();
        if e != libc::EINTR {
            return Err(e);
        }
    }
}

/// `wait4(2)` for one child, with its resource usage (which includes the children it reaped).
pub fn wait4(pid: libc::pid_t) -> Result<(c_int, libc::rusage), i32> {
    let mut status = 0;
    // SAFETY: rusage is plain data; both out-pointers are valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: as above.
        let ret = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if ret >= 0 {
            return Ok((status, usage));
        }
        let e = errno();
        if e != libc::EINTR {
            return Err(e);
        }
    }
}

/// `execve(2)` with pre-built, NULL-terminated pointer arrays. Returns only on failure.
pub fn execve(path: &CStr, argv: &[*const libc::c_char], envp: &[*const libc::c_char]) -> i32 {
    debug_assert!(
        argv.last().is_some_and(|p| p.is_null()) && envp.last().is_some_and(|p| p.is_null())
    );
    // SAFETY: argv and envp are NULL-terminated arrays of pointers to NUL-terminated strings
    // owned by the plan, which outlives this call.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    errno()
}

/// `_exit(2)`: leaves without running atexit handlers or flushing stdio buffers shared with the parent.
pub fn exit(code: c_int) -> ! {
    // SAFETY: _exit never returns and is async-signal-safe.
    unsafe { libc::_exit(code) }
}

/// A pipe whose both ends are close-on-exec.
pub fn pipe() -> Result<(RawFd, RawFd), i32> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid out-array of two ints.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok((fds[0], fds[1]))
}

/// Opens `rel` beneath the directory `root` as `O_PATH`, refusing any symlink on the way and
/// never leaving `root`: a mount target the parent resolved must still be exactly that path.
pub fn open_beneath(root: RawFd, rel: &CStr) -> Result<RawFd, i32> {
    /// `struct open_how` of openat2(2).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: rel is NUL-terminated and how is a valid open_how of the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root,
            rel.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if ret < 0 {
        Err(errno())
    } else {
        Ok(ret as RawFd)
    }
}

/// `open(2)` of a path as an `O_PATH` descriptor.
pub fn open_path(path: &CStr, flags: c_int) -> Result<RawFd, i32> {
    // SAFETY: path is NUL-terminated.
    check(unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC | flags) })
}

/// Moves descriptor `fd` to number `to` (close-on-exec), closing `fd`.
pub fn move_fd(fd: RawFd, to: RawFd) -> Result<(), i32> {
    if fd == to {
        return Ok(());
    }
    // SAFETY: dup3 onto a number this process holds for the purpose.
    let ret = check(unsafe { libc::dup3(fd, to, libc::O_CLOEXEC) });
    close(fd);
    ret.map(drop)
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Makes the mount at `fd` and every mount below it read-only (mount_setattr(2), Linux 5.12).
/// Unlike a bind remount, this reaches submounts, and leaves the flags the kernel locked alone.
pub fn make_read_only_recursive(fd: RawFd) -> Result<(), i32> {
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: attr is a valid mount_attr of the size passed; "" with AT_EMPTY_PATH means fd itself.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(ret as c_int).map(drop)
}

/// `fstat(2)`'s device and inode numbers, to tell whether two descriptors name the same file.
pub fn dev_ino(fd: RawFd) -> Result<(u64, u64), i32> {
    // SAFETY: stat is plain data and a valid out-pointer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok((st.st_dev, st.st_ino))
}

/// Writes `data` to the file at `path` in one write(2) (what `/proc` id maps and sysctls want).
pub fn write_file(path: &CStr, data: &[u8]) -> Result<(), i32> {
    // SAFETY: path is NUL-terminated.
    let fd = check(unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) })?;
    let ret = write_all(fd, data);
    close(fd);
    ret
}

/// `/proc/<pid>/<file>` as a NUL-terminated string in `buf`, without allocating.
pub fn proc_pid_path<'a>(buf: &'a mut [u8; 64], pid: libc::pid_t, file: &[u8]) -> &'a CStr {
    let mut digits = [0u8; 12];
    let mut n = pid.unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut len = 0;
    for part in [b"/proc/".as_slice(), &digits[i..], b"/", file] {
        let take = part.len().min(buf.len() - 1 - len);
        buf[len..len + take].copy_from_slice(&part[..take]);
        len += take;
    }
    buf[len] = 0;
    CStr::from_bytes_until_nul(&buf[..=len]).expect("NUL-terminated above")
}

/// Overwrites the caller's argument and environment strings in this process's memory, so that
/// `/proc/<pid>/cmdline` and `environ` tell nothing of them: `label` at the start of the
/// argument area, zeros everywhere else. `areas` are `[start, end)` address ranges as
/// `/proc/self/stat` gives them (fields 48–51); empty ranges are skipped.
///
/// Meant for pid 1, a fork of the caller that never execs: nothing in it reads the strings again.
pub fn clear_caller_memory(areas: &[(usize, usize); 2], label: &[u8]) {
    for (i, &(start, end)) in areas.iter().enumerate() {
        if start == 0 || end <= start {
            continue;
        }
        // SAFETY: [start, end) is the argument (or environment) string area the kernel set up on
        // this process's stack at exec, read from /proc/self/stat by the process we were forked
        // from; it is mapped and writable, and no live Rust reference points into it here (pid 1
        // never reads argv or the environment).
        let area = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, end - start) };
        area.fill(0);
        if i == 0 {
            // Keep the last byte NUL: the kernel then reads the area as plain arguments.
            let take = label.len().min(area.len().saturating_sub(1));
            area[..take].copy_from_slice(&label[..take]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_paths_are_formatted_without_allocating() {
        let mut buf = [0u8; 64];
        assert_eq!(proc_pid_path(&mut buf, 1, b"uid_map"), c"/proc/1/uid_map");
        assert_eq!(
            proc_pid_path(&mut buf, 4194304, b"gid_map"),
            c"/proc/4194304/gid_map"
        );
        assert_eq!(proc_pid_path(&mut buf, 0, b"x"), c"/proc/0/x");
    }
}
