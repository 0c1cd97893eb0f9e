//! Parent half of a private run's network: planned before clone ([`plan`]), attached
//! after clone and before the tool starts ([`attach`]), torn down when the run ends
//! ([`Attached`]'s drop).

use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;

use thiserror::Error;

use super::dns::{self, Allow, Policy};
use super::filter::{self, Context};
use super::usermode::{self, Attach, Backend, Helper};
use super::{nssock, relay, Proto};
use super::{Dest, NetOptions};
use crate::sandbox::spec::Network;

/// Why a run's network could not be set up. Each is one line.
#[derive(Debug, Error)]
pub enum NetError {
    #[error(
        "--network private needs {program}, which is not installed (Debian package {package})"
    )]
    Missing {
        program: &'static str,
        package: &'static str,
    },
    #[error("--network private needs nft to enforce its egress filter, which is not installed (Debian package nftables)")]
    NoNft,
    #[error("/dev/net/tun is not readable and writable by this user (it is 0600 on this machine): rootless --network private needs it; most distributions ship it 0666 (chmod 0666 /dev/net/tun)")]
    Tun,
    #[error("-p with an IPv6 host address needs pasta (slirp4netns publishes IPv4 only): install it (Debian package passt)")]
    PublishV6NeedsPasta,
    #[error("{0} needs --network private")]
    NeedsPrivate(&'static str),
    #[error(
        "--cap-add NET_ADMIN would let the tool remove the egress filter of --network private"
    )]
    NetAdmin,
    #[error("--egress-allow {0}: the name does not exist (NXDOMAIN from {1})")]
    NoSuchName(String, IpAddr),
    #[error("-p {0}: the port is in use on the host ({1})")]
    PortInUse(String, std::io::Error),
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    #[error("start {0}: {1}")]
    Spawn(&'static str, std::io::Error),
    #[error("{program} failed: {message}")]
    HelperFailed {
        program: &'static str,
        message: String,
    },
    #[error("load the egress filter (nft): {0}")]
    Filter(String),
    #[error("bind nsrun's DNS forwarder in the run's network namespace: {what}: {err}")]
    Forwarder {
        what: &'static str,
        err: nix::errno::Errno,
    },
}

/// Everything a private run's network needs, resolved in the parent before clone.
#[derive(Debug)]
pub struct NetPlan {
    pub backend: Backend,
    pub program: PathBuf,
    /// Said once on stderr by the CLI: which helper stands in for which.
    pub notice: Option<String>,
    pub nft: PathBuf,
    pub ruleset: String,
    pub policy: Policy,
    pub opts: NetOptions,
    pub map_host_loopback: bool,
}

/// Checks the options against the mode; for `private`, finds the programs and builds the filter.
pub fn plan(
    network: Network,
    opts: &NetOptions,
    net_admin: bool,
) -> Result<Option<NetPlan>, NetError> {
    if network != Network::Private {
        if !opts.egress_allow.is_empty() {
            return Err(NetError::NeedsPrivate("--egress-allow"));
        }
        if !opts.publish.is_empty() {
            return Err(NetError::NeedsPrivate("-p"));
        }
        if !opts.dns.is_empty() {
            return Err(NetError::NeedsPrivate("--dns"));
        }
        return Ok(None);
    }
    if net_admin {
        return Err(NetError::NetAdmin);
    }
    let (backend, program, notice) = usermode::choose(opts.backend)?;
    let nft = usermode::find_program("nft").ok_or(NetError::NoNft)?;
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        usermode::check_tun()?;
    }
    for p in &opts.publish {
        check_port_free(p)?;
    }
    let map_host_loopback = opts.egress_allow.iter().any(|r| r.is_host_internal());
    let ctx = Context {
        gateways: usermode::gateways(backend),
        host_internal: map_host_loopback,
        host_addrs: host_addresses(),
    };
    let (ruleset, sets) = filter::ruleset(&opts.egress_allow, &ctx);
    let upstream = if opts.dns.is_empty() {
        dns::nameservers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
    } else {
        opts.dns.clone()
    };
    // An allowed name that does not exist is a typo the tool would only meet as a failed lookup
    // mid-run: refuse it now, in one line. Wildcards cannot be asked; an upstream that does not
    // answer (within a second) refuses nothing.
    for r in &opts.egress_allow {
        if let Dest::Host(name) = &r.dest {
            if r.is_host_internal() || name.starts_with("*.") {
                continue;
            }
            if let Some(server) =
                dns::nonexistent(name, &upstream, std::time::Duration::from_secs(1))
            {
                return Err(NetError::NoSuchName(name.clone(), server));
            }
        }
    }
    let policy = Policy {
        allowlist: !opts.egress_allow.is_empty(),
        sets,
        host_internal: map_host_loopback
            .then(|| ctx.gateways.iter().copied().find(IpAddr::is_ipv4))
            .flatten(),
        upstream,
        upstream_port: 53,
    };
    Ok(Some(NetPlan {
        backend,
        program,
        notice,
        nft,
        ruleset,
        policy,
        opts: opts.clone(),
        map_host_loopback,
    }))
}

/// Whether any rule names a hostname (only those need the forwarder to update the filter).
pub fn has_hostnames(opts: &NetOptions) -> bool {
    opts.egress_allow
        .iter()
        .any(|r| matches!(r.dest, Dest::Host(_)) && !r.is_host_internal())
}

/// A port pasta would fail to bind is refused up front, in one line.
fn check_port_free(p: &super::PortMap) -> Result<(), NetError> {
    let addr = std::net::SocketAddr::new(p.host_ip, p.host_port);
    let shown = format!("{}:{}", p.host_ip, p.host_port);
    match p.proto {
        super::Proto::Tcp => std::net::TcpListener::bind(addr).map(drop),
        super::Proto::Udp => UdpSocket::bind(addr).map(drop),
    }
    .map_err(|e| NetError::PortInUse(shown, e))
}

/// The host's own addresses (every interface): a run reaches none of them, whatever it is
/// allowed, except through `host.nsrun.internal`.
fn host_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<IpAddr> = Vec::new();
    for a in addrs {
        let Some(sa) = a.address else { continue };
        let ip = if let Some(v4) = sa.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = sa.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if !filter::is_special(ip, if ip.is_ipv4() { 32 } else { 128 }) && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// The network of a running private run; dropping it stops the forwarder and the helper.
#[derive(Debug)]
pub struct Attached {
    pub helper: Helper,
    stop: Option<OwnedFd>,
    forwarder: Option<JoinHandle<()>>,
    /// Published UDP ports; each stops when dropped.
    _relays: Vec<relay::UdpRelay>,
}

impl Drop for Attached {
    /// Closing the stop pipe ends the forwarder (after the query it may be forwarding, at most
    /// a few seconds); it is not waited for, so that the run's end is not either.
    fn drop(&mut self) {
        drop(self.stop.take());
        drop(self.forwarder.take());
    }
}

/// Runs nft in the run's namespaces.
struct Nft {
    program: PathBuf,
    userns: File,
    netns: File,
}

impl Nft {
    fn run(&self, script: &str) -> Result<(), String> {
        let (u, n) = (self.userns.as_raw_fd(), self.netns.as_raw_fd());
        // Root holds CAP_NET_ADMIN over every namespace already; a user gets it over the run's
        // network namespace by joining the run's user namespace, which it owns.
        // SAFETY: geteuid cannot fail.
        let join_user = unsafe { libc::geteuid() } != 0;
        let mut cmd = Command::new(&self.program);
        cmd.args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: only setns(2) runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if (join_user && libc::setns(u, libc::CLONE_NEWUSER) != 0)
                    || libc::setns(n, libc::CLONE_NEWNET) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("{}: {e}", self.program.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(script.as_bytes());
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            return Ok(());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        Err(err
            .lines()
            .find(|l| l.starts_with("Error") || l.contains("rror"))
            .unwrap_or(err.lines().next().unwrap_or("failed"))
            .trim()
            .to_string())
    }
}

impl Allow for Nft {
    fn allow(&mut self, script: &str) -> Result<(), String> {
        self.run(script)
    }
}

/// Opens the user and network namespaces of the run whose pid 1 is `pid`.
pub fn open_namespaces(pid: libc::pid_t) -> Result<(File, File), NetError> {
    let open = |what: &str| {
        File::open(format!("/proc/{pid}/ns/{what}"))
            .map_err(|e| NetError::Io("open the run's namespaces", e))
    };
    Ok((open("user")?, open("net")?))
}

/// Attaches the network to the run whose namespaces are given (its pid 1 not yet released to
/// start the tool): loads the filter, binds the forwarder, starts the helper. Nothing reaches
/// out before the filter is in place.
pub fn attach(np: &NetPlan, userns: File, netns: File) -> Result<Attached, NetError> {
    let nft = Nft {
        program: np.nft.clone(),
        userns: userns.try_clone().map_err(|e| NetError::Io("dup", e))?,
        netns: netns.try_clone().map_err(|e| NetError::Io("dup", e))?,
    };
    // The helper starts first and configures the interface while the filter loads: nothing
    // in the namespace sends before the tool starts, and it starts after both are done.
    let starting = usermode::start(
        np.backend,
        &np.program,
        &Attach {
            userns: &userns,
            netns: &netns,
            publish: &np.opts.publish,
            map_host_loopback: np.map_host_loopback,
        },
    )?;
    nft.run(&np.ruleset).map_err(NetError::Filter)?;
    let socks = forwarder_sockets(&userns, &netns)?;
    let mut relays = Vec::new();
    for p in np.opts.publish.iter().filter(|p| p.proto == Proto::Udp) {
        let shown = format!("{}:{}", p.host_ip, p.host_port);
        let host =
            UdpSocket::bind((p.host_ip, p.host_port)).map_err(|e| NetError::PortInUse(shown, e))?;
        let dup = |f: &File| f.try_clone().map_err(|e| NetError::Io("dup", e));
        relays.push(
            relay::start(host, p.container_port, dup(&userns)?, dup(&netns)?)
                .map_err(|e| NetError::Io("start the UDP relay thread", e))?,
        );
    }
    let helper = starting.wait_ready()?;
    let (stop_r, stop_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| NetError::Io("pipe", e.into()))?;
    let policy = np.policy.clone();
    let forwarder = std::thread::Builder::new()
        .name("nsrun-dns".into())
        .spawn(move || {
            let mut nft = nft;
            dns::serve(socks, stop_r, policy, &mut nft);
        })
        .map_err(|e| NetError::Io("start the DNS forwarder thread", e))?;
    Ok(Attached {
        helper,
        stop: Some(stop_w),
        forwarder: Some(forwarder),
        _relays: relays,
    })
}

/// Creates the forwarder's sockets on 127.0.0.53:53 inside the run's network namespace, UDP and
/// TCP (resolvers retry over TCP when an answer is truncated).
fn forwarder_sockets(userns: &File, netns: &File) -> Result<dns::Sockets, NetError> {
    let fds = nssock::make(userns, netns, nssock::Task::Forwarder)
        .map_err(|(what, err)| NetError::Forwarder { what, err })?;
    let [udp, tcp]: [OwnedFd; 2] = fds.try_into().map_err(|_| NetError::Forwarder {
        what: "send",
        err: nix::errno::Errno::EPIPE,
    })?;
    Ok(dns::Sockets {
        udp: UdpSocket::from(udp),
        tcp: std::net::TcpListener::from(tcp),
    })
}
