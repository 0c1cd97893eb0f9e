//! `-t`: a pseudo-terminal for the tool, allocated from the run's own devpts.
//!
//! The pair is made where runc and crun make it (their `--console-socket`): inside the sandbox,
//! after the root is in place, from the container's `/dev/pts/ptmx` — so the tool's terminal is
//! `/dev/pts/0` of its own devpts instance and nothing of the host's terminals is reachable.
//! The child half ([`child_open`]) keeps the slave as the tool's stdin, stdout and stderr and
//! hands the master to the parent over a socket (`SCM_RIGHTS`). The parent half ([`Relay`])
//! copies bytes between the caller's terminal and the master, passes window-size changes on
//! (`SIGWINCH` → `TIOCSWINSZ`) and, for `-i -t` on a terminal, puts that terminal in raw mode,
//! so that Ctrl-C travels as a byte and the run's line discipline turns it into the tool's
//! SIGINT. Raw mode is undone when the relay is dropped: on every way out of a run (the tool's
//! end, an error, a timeout, a signal nsrun receives — those are all collected by the wait loop,
//! not delivered).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, SetArg, Termios};

/// Where the child opens the multiplexer: the run's own devpts (mounted `newinstance`).
const PTMX: &std::ffi::CStr = c"/dev/pts/ptmx";

/// The caller's terminal size, from the first of stdin, stdout, stderr that is a terminal;
/// 0×0 when none is (as a terminal with no size).
pub fn caller_size() -> libc::winsize {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    for fd in [0, 1, 2] {
        if size_of(fd, &mut ws) {
            break;
        }
    }
    ws
}

fn size_of(fd: RawFd, ws: &mut libc::winsize) -> bool {
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`, which outlives the call.
    unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, ws as *mut libc::winsize) == 0 }
}

fn check(ret: libc::c_int) -> Result<libc::c_int, i32> {
    if ret < 0 {
        Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO))
    } else {
        Ok(ret)
    }
}

// ---- child side (after clone: no allocation) --------------------------------------------

/// Child side: opens a pair on the run's devpts, sizes it, gives the slave to `owner`, sends the
/// master over `sock` and makes the slave our 0, 1 and 2. Returns `Err(errno)`.
pub fn child_open(sock: RawFd, size: &libc::winsize, owner: (u32, u32)) -> Result<(), i32> {
    // SAFETY: a constant NUL-terminated path; the flags create nothing.
    let master = check(unsafe {
        libc::open(
            PTMX.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    })?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int, which outlives the call.
    check(unsafe { libc::ioctl(master, libc::TIOCSPTLCK, &unlock) })?;
    // SAFETY: TIOCSWINSZ reads one winsize, which outlives the call.
    check(unsafe { libc::ioctl(master, libc::TIOCSWINSZ, size as *const libc::winsize) })?;
    // The peer by descriptor, not by name: no path to build, nothing to race with.
    // SAFETY: TIOCGPTPEER takes open flags and returns a new descriptor.
    let slave = check(unsafe {
        libc::ioctl(
            master,
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    })?;
    // The tool may run as another user of the container: its terminal is its own, as
    // `docker run -t -u` gives it.
    // SAFETY: fchown on a descriptor we own.
    check(unsafe { libc::fchown(slave, owner.0, owner.1) })?;
    send_fd(sock, master)?;
    super::sys::close(master);
    super::sys::close(sock);
    for target in 0..3 {
        super::sys::dup2(slave, target)?;
    }
    super::sys::close(slave);
    Ok(())
}

/// Sends `fd` over the unix socket `sock` (`SCM_RIGHTS`), with one byte of payload.
fn send_fd(sock: RawFd, fd: RawFd) -> Result<(), i32> {
    // Room for one descriptor's control message, aligned for cmsghdr.
    #[repr(C)]
    union Control {
        _align: libc::cmsghdr,
        buf: [u8; 32],
    }
    let mut control = Control { buf: [0; 32] };
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: msghdr is plain data; every pointer set below points at locals that outlive the
    // sendmsg call, and CMSG_SPACE(sizeof(int)) is 24 bytes on Linux, within `control`.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = std::ptr::addr_of_mut!(control).cast();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        check(libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) as libc::c_int)?;
    }
    Ok(())
}

/// Tool side, after `setsid`: the slave on stdin becomes the session's controlling terminal,
/// so that the line discipline's signals (Ctrl-C, Ctrl-\, window changes) reach the tool.
pub fn child_take_control() -> Result<(), i32> {
    // SAFETY: TIOCSCTTY on our stdin with arg 0 (do not steal).
    check(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) }).map(drop)
}

// ---- parent side ------------------------------------------------------------------------

/// Receives the master the child sends with [`child_open`]; `Ok(None)` when the child closed
/// the socket without sending one (it failed, and says why on its report pipe).
fn recv_fd(sock: RawFd) -> Result<Option<OwnedFd>, nix::errno::Errno> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(RawFd);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            let mut owned: Vec<OwnedFd> = fds
                .into_iter()
                // SAFETY: the kernel just installed these descriptors for us.
                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
                .collect();
            return Ok(owned.pop());
        }
    }
    Ok(None)
}

/// The caller's terminal in raw mode, restored when dropped.
struct RawMode {
    fd: RawFd,
    saved: Termios,
}

impl RawMode {
    fn enter(fd: RawFd) -> Option<RawMode> {
        // SAFETY: borrowed for these calls only; the caller keeps `fd` open for the run.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let saved = termios::tcgetattr(borrowed).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(borrowed, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: as in `enter`.
        let borrowed = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let _ = termios::tcsetattr(borrowed, SetArg::TCSADRAIN, &self.saved);
    }
}

/// Whether `fd` is a terminal.
pub fn is_terminal(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// Parent side of `-t`: copies the caller's input to the master and the master's output to
/// the caller, and follows the caller's window size.
pub struct Relay {
    /// Our end of the socket the child sends the master on, until it has.
    sock: Option<OwnedFd>,
    master: Option<OwnedFd>,
    /// The caller's input (`-i`), until it ends.
    input: Option<RawFd>,
    output: RawFd,
    /// Input read but not yet taken by the master (it is non-blocking).
    pending: Vec<u8>,
    _raw: Option<RawMode>,
}

/// Which of the relay's descriptors poll found ready, by position in [`Relay::poll_fds`].
pub struct Ready(Vec<bool>);

impl Relay {
    /// A relay for a run whose child holds the other end of `sock`. `input` is the caller's
    /// stdin for `-i`; when it is a terminal it is put in raw mode until the relay is dropped.
    pub fn new(sock: OwnedFd, input: Option<RawFd>, output: RawFd) -> Relay {
        let raw = input.filter(|&fd| is_terminal(fd)).and_then(RawMode::enter);
        Relay {
            sock: Some(sock),
            master: None,
            input,
            output,
            pending: Vec::new(),
            _raw: raw,
        }
    }

    /// The descriptors to poll, in a fixed order that [`Relay::handle`] reads back.
    pub fn poll_fds(&self) -> Vec<PollFd<'_>> {
        let mut fds = Vec::with_capacity(3);
        if let Some(s) = &self.sock {
            fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
        }
        if let Some(m) = &self.master {
            let mut flags = PollFlags::POLLIN;
            if !self.pending.is_empty() {
                flags |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(m.as_fd(), flags));
            if let (Some(i), true) = (self.input, self.pending.is_empty()) {
                // SAFETY: the caller's stdin stays open for the run.
                fds.push(PollFd::new(
                    unsafe { BorrowedFd::borrow_raw(i) },
                    PollFlags::POLLIN,
                ));
            }
        }
        fds
    }

    /// Notes which of `fds` (from [`Relay::poll_fds`]) are ready.
    pub fn ready(fds: &[PollFd]) -> Ready {
        Ready(
            fds.iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect(),
        )
    }

    /// Does what the ready descriptors ask: takes the master, copies output and input.
    pub fn handle(&mut self, ready: Ready) {
        let mut it = ready.0.into_iter();
        if self.sock.is_some() {
            if it.next() == Some(true) {
                self.take_master();
            }
            return;
        }
        if self.master.is_none() {
            return;
        }
        if it.next() == Some(true) {
            if self.copy_output() == Copied::Done {
                // Every slave is closed: the run is ending, and poll would report it forever.
                self.master = None;
                return;
            }
            self.flush_input();
        }
        if it.next() == Some(true) {
            self.read_input();
        }
    }

    fn take_master(&mut self) {
        let Some(sock) = self.sock.take() else { return };
        if let Ok(Some(m)) = recv_fd(sock.as_raw_fd()) {
            let _ = nix::fcntl::fcntl(
                &m,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            );
            self.master = Some(m);
            // The size may have changed between planning and now.
            self.resize();
        }
    }

    /// Passes the caller's current window size on (after `SIGWINCH`); the kernel then sends
    /// the tool's foreground process group its own `SIGWINCH`.
    pub fn resize(&self) {
        if let Some(m) = &self.master {
            let ws = caller_size();
            if ws.ws_row == 0 && ws.ws_col == 0 {
                return;
            }
            // SAFETY: TIOCSWINSZ reads one winsize that outlives the call.
            unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws as *const libc::winsize) };
        }
    }

    /// Copies what the master has to the caller's output.
    fn copy_output(&mut self) -> Copied {
        let Some(m) = &self.master else {
            return Copied::Done;
        };
        let mut buf = [0u8; 16 << 10];
        match nix::unistd::read(m, &mut buf) {
            Ok(0) => Copied::Done,
            Ok(n) => {
                write_fully(self.output, &buf[..n]);
                Copied::Some
            }
            Err(nix::errno::Errno::EINTR) => Copied::Some,
            Err(nix::errno::Errno::EAGAIN) => Copied::Nothing,
            // EIO: every slave is closed and everything they wrote has been read.
            Err(_) => Copied::Done,
        }
    }

    fn read_input(&mut self) {
        let Some(fd) = self.input else { return };
        let mut buf = [0u8; 4096];
        // SAFETY: borrowed for this read only.
        match nix::unistd::read(unsafe { BorrowedFd::borrow_raw(fd) }, &mut buf) {
            Ok(0) => self.input = None,
            Ok(n) => {
                self.pending.extend_from_slice(&buf[..n]);
                self.flush_input();
            }
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
            Err(_) => self.input = None,
        }
    }

    fn flush_input(&mut self) {
        let Some(m) = &self.master else { return };
        while !self.pending.is_empty() {
            match nix::unistd::write(m, &self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(nix::errno::Errno::EINTR) => {}
                // EAGAIN: the tool is not reading; keep it for POLLOUT. Anything else: the
                // terminal is gone, and so is the tool.
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(_) => {
                    self.pending.clear();
                    return;
                }
            }
        }
    }

    /// After the run's pid 1 is gone: copies what the tool wrote last.
    pub fn drain(&mut self) {
        if self.sock.is_some() {
            // Sent just before the end (a tool that exits at once): take it, if it came.
            let ready = self
                .sock
                .as_ref()
                .map(|s| {
                    let mut f = [PollFd::new(s.as_fd(), PollFlags::POLLIN)];
                    poll(&mut f, PollTimeout::ZERO).unwrap_or(0) > 0
                })
                .unwrap_or(false);
            if ready {
                self.take_master();
            }
        }
        // The slaves are all closed by now (pid 1 leaves last), so the master hands out what
        // is left, then EIO.
        while self.copy_output() == Copied::Some {}
    }
}

/// What one read of the master gave.
#[derive(Debug, PartialEq, Eq)]
enum Copied {
    Some,
    Nothing,
    Done,
}

/// Writes all of `data` to `fd`, waiting when it is non-blocking and full; gives up on errors
/// (the caller's terminal went away: the run goes on, as with a closed stdout).
fn write_fully(fd: RawFd, mut data: &[u8]) {
    // SAFETY: borrowed for these calls only; the caller's output stays open for the run.
    let out = unsafe { BorrowedFd::borrow_raw(fd) };
    while !data.is_empty() {
        match nix::unistd::write(out, data) {
            Ok(n) => data = &data[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => {
                let mut f = [PollFd::new(out, PollFlags::POLLOUT)];
                let _ = poll(&mut f, PollTimeout::from(1000u16));
            }
            Err(_) => return,
        }
    }
}
