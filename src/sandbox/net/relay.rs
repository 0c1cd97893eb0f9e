//! Published UDP ports (`-p HOST:CONTAINER/udp`), relayed by nsrun itself rather than by the
//! user-mode helper: Debian 12's pasta (2023-03) drops datagrams it forwards from the host's
//! loopback into the run (its tap path, for other host addresses, works), and slirp4netns has no
//! port publishing in nsrun. The relay works the same behind either helper.
//!
//! The host socket is bound by nsrun on the host's side. Each client address gets a socket of
//! its own made inside the run's network namespace ([`nssock`]), connected to 127.0.0.1:PORT
//! there, so the tool's answers find their way back to the right client. The relay is a thread
//! of the run's parent: it ends when the run ends, with nothing left behind.

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::nssock;

/// Most clients served at once; the least recently active one gives way to a new one.
const MAX_CLIENTS: usize = 64;
/// A client silent this long is forgotten (its socket closed), as conntrack forgets UDP flows.
const IDLE: Duration = Duration::from_secs(120);

/// A running relay; dropping it stops the thread (it is not waited for).
#[derive(Debug)]
pub struct UdpRelay {
    stop: Option<OwnedFd>,
    _thread: Option<JoinHandle<()>>,
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        drop(self.stop.take());
    }
}

struct Client {
    addr: SocketAddr,
    sock: UdpSocket,
    last: Instant,
}

/// Starts relaying datagrams arriving on `host` to 127.0.0.1:`port` in the run whose user and
/// network namespaces are given, and their answers back.
pub fn start(host: UdpSocket, port: u16, userns: File, netns: File) -> std::io::Result<UdpRelay> {
    let (stop_r, stop_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let thread = std::thread::Builder::new()
        .name("nsrun-udp-relay".into())
        .spawn(move || relay(host, port, &userns, &netns, stop_r))?;
    Ok(UdpRelay {
        stop: Some(stop_w),
        _thread: Some(thread),
    })
}

fn relay(host: UdpSocket, port: u16, userns: &File, netns: &File, stop: OwnedFd) {
    let mut clients: Vec<Client> = Vec::new();
    let mut buf = vec![0u8; 65535];
    loop {
        clients.retain(|c| c.last.elapsed() < IDLE);
        let mut fds = vec![
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            PollFd::new(host.as_fd(), PollFlags::POLLIN),
        ];
        fds.extend(
            clients
                .iter()
                .map(|c| PollFd::new(c.sock.as_fd(), PollFlags::POLLIN)),
        );
        if poll(&mut fds, PollTimeout::from(10_000u16)).is_err() {
            continue;
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        if ready[0] {
            return;
        }
        // Answers from inside, back to their clients.
        for (i, c) in clients.iter_mut().enumerate() {
            if ready[i + 2] {
                if let Ok(n) = c.sock.recv(&mut buf) {
                    c.last = Instant::now();
                    let _ = host.send_to(&buf[..n], c.addr);
                }
            }
        }
        if ready[1] {
            let Ok((n, from)) = host.recv_from(&mut buf) else {
                continue;
            };
            let at = match clients.iter().position(|c| c.addr == from) {
                Some(i) => i,
                None => {
                    // A datagram whose socket cannot be made is dropped, as UDP may be.
                    let Ok(mut fds) = nssock::make(userns, netns, nssock::Task::UdpTo(port)) else {
                        continue;
                    };
                    if clients.len() >= MAX_CLIENTS {
                        if let Some(oldest) = (0..clients.len()).min_by_key(|&i| clients[i].last) {
                            clients.swap_remove(oldest);
                        }
                    }
                    clients.push(Client {
                        addr: from,
                        sock: UdpSocket::from(fds.remove(0)),
                        last: Instant::now(),
                    });
                    clients.len() - 1
                }
            };
            clients[at].last = Instant::now();
            let _ = clients[at].sock.send(&buf[..n]);
        }
    }
}
