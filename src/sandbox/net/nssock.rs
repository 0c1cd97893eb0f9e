//! Sockets made inside a run's network namespace, for nsrun's own use from the host's side: the
//! DNS forwarder's (127.0.0.53:53, UDP and TCP) and the UDP relay's (one per client of a
//! published UDP port, connected to the port inside).
//!
//! A socket stays in the namespace it was made in, and a multithreaded process cannot join a
//! user namespace, so a forked process joins the run's user and network namespaces, brings the
//! loopback up, makes the sockets and passes them back over a socketpair. The forked child
//! calls only async-signal-safe syscalls and never allocates: the parent may have other
//! threads.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

use super::FORWARDER_ADDR;
use crate::sandbox::sys;

/// What the forked child makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// UDP and TCP (listening) sockets bound to 127.0.0.53:53.
    Forwarder,
    /// A UDP socket connected to 127.0.0.1:PORT.
    UdpTo(u16),
}

/// The steps of the forked child, by the index it reports when one fails.
const STAGES: [&str; 10] = [
    "join the user namespace",
    "join the network namespace",
    "bring up lo",
    "socket (udp)",
    "bind 127.0.0.53:53/udp",
    "send",
    "socket (tcp)",
    "bind 127.0.0.53:53/tcp",
    "listen on 127.0.0.53:53/tcp",
    "connect to the published port",
];

/// Makes `task`'s sockets in the namespaces given; on failure, the step and its errno.
pub fn make(
    userns: &File,
    netns: &File,
    task: Task,
) -> Result<Vec<OwnedFd>, (&'static str, Errno)> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Datagram,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| ("socketpair", e))?;
    let pid = sys::fork().map_err(|e| ("fork", Errno::from_raw(e)))?;
    if pid == 0 {
        child(
            userns.as_raw_fd(),
            netns.as_raw_fd(),
            theirs.as_raw_fd(),
            task,
        );
    }
    drop(theirs);
    let mut data = [0i32; 2];
    let received = receive_fds(ours.as_raw_fd(), &mut data);
    let _ = sys::waitpid(pid, 0);
    let wanted = match task {
        Task::Forwarder => 2,
        Task::UdpTo(_) => 1,
    };
    if received.len() == wanted {
        return Ok(received);
    }
    Err((
        STAGES.get(data[0] as usize).copied().unwrap_or("fork"),
        Errno::from_raw(if data[1] == 0 { libc::EPIPE } else { data[1] }),
    ))
}

/// Receives `[stage, errno]` and, on success, the descriptors.
fn receive_fds(sock: RawFd, data: &mut [i32; 2]) -> Vec<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = [0u8; 8];
    let mut cmsg = nix::cmsg_space!([RawFd; 2]);
    let mut got = Vec::new();
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let Ok(msg) = recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) else {
        *data = [5, libc::EPIPE];
        return got;
    };
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(fds) = c {
                // SAFETY: the kernel just installed these descriptors for us.
                got.extend(fds.iter().map(|&f| unsafe { OwnedFd::from_raw_fd(f) }));
            }
        }
    }
    let n = msg.bytes;
    if n == 8 {
        data[0] = i32::from_ne_bytes(buf[..4].try_into().expect("4"));
        data[1] = i32::from_ne_bytes(buf[4..].try_into().expect("4"));
    } else {
        *data = [5, libc::EPIPE];
    }
    got
}

/// An IPv4 socket address for `ip:port` (host byte order in, network order out).
fn sockaddr(ip: u32, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: ip.to_be() },
        sin_zero: [0; 8],
    }
}

const SOCKADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;

/// The forked child of [`make`]. Never returns.
fn child(userns: RawFd, netns: RawFd, out: RawFd, task: Task) -> ! {
    let fail = |stage: i32| -> ! {
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        send_result(out, [stage, errno], &[]);
        sys::exit(1)
    };
    // SAFETY: setns on descriptors we hold.
    if unsafe { libc::setns(userns, libc::CLONE_NEWUSER) } != 0 {
        fail(0);
    }
    // SAFETY: as above.
    if unsafe { libc::setns(netns, libc::CLONE_NEWNET) } != 0 {
        fail(1);
    }
    if let Err(e) = sys::loopback_up() {
        send_result(out, [2, e], &[]);
        sys::exit(1);
    }
    // SAFETY: a new socket, owned by this process until sent.
    let udp = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if udp < 0 {
        fail(3);
    }
    let port = match task {
        Task::Forwarder => 0,
        Task::UdpTo(port) => port,
    };
    if task != Task::Forwarder {
        let to = sockaddr(u32::from(std::net::Ipv4Addr::LOCALHOST), port);
        // SAFETY: `to` is a valid sockaddr_in of the size given.
        if unsafe { libc::connect(udp, (&to as *const libc::sockaddr_in).cast(), SOCKADDR_LEN) }
            != 0
        {
            fail(9);
        }
        if !send_result(out, [0, 0], &[udp]) {
            fail(5);
        }
        sys::exit(0)
    }
    let addr = sockaddr(u32::from(FORWARDER_ADDR), 53);
    // SAFETY: addr is a valid sockaddr_in of the size given.
    if unsafe {
        libc::bind(
            udp,
            (&addr as *const libc::sockaddr_in).cast(),
            SOCKADDR_LEN,
        )
    } != 0
    {
        fail(4);
    }
    // SAFETY: a new socket, owned by this process until sent.
    let tcp = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if tcp < 0 {
        fail(6);
    }
    // SAFETY: as for the UDP socket above.
    if unsafe {
        libc::bind(
            tcp,
            (&addr as *const libc::sockaddr_in).cast(),
            SOCKADDR_LEN,
        )
    } != 0
    {
        fail(7);
    }
    // SAFETY: listen on a socket we own.
    if unsafe { libc::listen(tcp, 16) } != 0 {
        fail(8);
    }
    if !send_result(out, [0, 0], &[udp, tcp]) {
        fail(5);
    }
    sys::exit(0)
}

/// Sends `[stage, errno]` and up to two descriptors. Allocation-free.
fn send_result(sock: RawFd, data: [i32; 2], fds: &[RawFd]) -> bool {
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&data[0].to_ne_bytes());
    bytes[4..].copy_from_slice(&data[1].to_ne_bytes());
    let mut iov = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: bytes.len(),
    };
    let mut cbuf = [0u64; 4];
    let n = fds.len().min(2);
    // SAFETY: msghdr is plain data; all-zero is valid. The control buffer is 32 bytes, aligned,
    // more than CMSG_SPACE(8); the cmsg pointer comes from CMSG_FIRSTHDR over it, and at most
    // two descriptors are copied into its data.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if n > 0 {
            let len = (n * std::mem::size_of::<RawFd>()) as u32;
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(len) as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(len) as _;
            let data = libc::CMSG_DATA(c).cast::<RawFd>();
            for (i, fd) in fds.iter().take(n).enumerate() {
                std::ptr::write_unaligned(data.add(i), *fd);
            }
        }
        libc::sendmsg(sock, &msg, 0) == bytes.len() as isize
    }
}
