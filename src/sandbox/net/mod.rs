//! Networking of a run: what the caller asks for (`--network private`, `--egress-allow`, `-p`,
//! `--dns`, `--add-host`), the files every run with its own network namespace gets, the egress
//! filter, nsrun's DNS forwarder and the user-mode NAT helper (pasta or slirp4netns).
//!
//! Parent half ([`parent`]): after clone, the parent holds descriptors of the run's user and
//! network namespaces; before the tool starts it loads the nftables filter into the run's own
//! network namespace, binds the DNS forwarder's socket there, and starts the user-mode helper
//! attached to it. Child half: the generated `/etc/resolv.conf`, `/etc/hosts` and
//! `/etc/hostname` are written into the child's private setup tmpfs and bound read-only over the
//! image's (see `mounts/plan.rs`), so nothing is ever written into the rootfs cache and nothing
//! is left on the host.
//!
//! Why the filter holds: it lives in the run's network namespace, which belongs to the run's user
//! namespace. Changing it takes CAP_NET_ADMIN there, which the default capability set does not
//! hold (and which nsrun refuses to add in private mode); a tool holding CAP_SYS_ADMIN runs in a
//! nested user namespace that has no capability over the network namespace at all.

pub mod dns;
pub mod files;
pub mod filter;
pub mod nssock;
pub mod parent;
pub mod relay;
pub mod usermode;

use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The name that stands for the host's loopback, reachable only when allowed explicitly.
pub const HOST_INTERNAL: &str = "host.nsrun.internal";
/// Where nsrun's DNS forwarder listens inside the run's network namespace.
pub const FORWARDER_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 53);

/// Network options besides the mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetOptions {
    /// `--egress-allow`: when non-empty, only these destinations (and the DNS forwarder) are
    /// reachable in private mode.
    pub egress_allow: Vec<EgressRule>,
    /// `--dns`: upstream resolvers of the forwarder (default: the host's `/etc/resolv.conf`).
    pub dns: Vec<IpAddr>,
    /// `--add-host NAME:IP` lines for `/etc/hosts`.
    pub add_hosts: Vec<HostEntry>,
    /// `-p`: ports published on the host.
    pub publish: Vec<PortMap>,
    /// Which user-mode helper to use; `None` picks pasta, falling back to slirp4netns.
    pub backend: Option<usermode::Backend>,
}

/// A transport protocol of a rule or a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// Where an egress rule points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dest {
    /// An address or a CIDR block (`prefix` bits).
    Net { addr: IpAddr, prefix: u8 },
    /// A hostname, lower case without the final dot; `*.example.com` matches every name below
    /// `example.com` (not `example.com` itself).
    Host(String),
}

/// One `--egress-allow DEST[:PORT[-PORT]][/tcp|/udp]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressRule {
    pub dest: Dest,
    /// Inclusive port range; `None` is every port.
    pub ports: Option<(u16, u16)>,
    /// `None` is TCP and UDP (and, without ports, every protocol).
    pub proto: Option<Proto>,
}

impl EgressRule {
    /// Whether this rule names `host.nsrun.internal`.
    pub fn is_host_internal(&self) -> bool {
        matches!(&self.dest, Dest::Host(h) if h == HOST_INTERNAL)
    }
}

/// Parses an address or CIDR block; the address is masked to its prefix.
fn parse_net(s: &str) -> Option<(IpAddr, u8)> {
    let (a, p) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = a.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match p {
        None => max,
        Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max)?,
    };
    Some((mask(addr, prefix), prefix))
}

/// `addr` with the bits past `prefix` cleared.
pub fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix)
            };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// Whether `s` is a hostname nsrun accepts (letters, digits, `-`, `_`, dots; an optional leading
/// `*.`).
fn valid_hostname(s: &str) -> bool {
    let s = s.strip_prefix("*.").unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn parse_ports(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b): (u16, u16) = (a.parse().ok()?, b.parse().ok()?);
    (a >= 1 && a <= b).then_some((a, b))
}

impl FromStr for EgressRule {
    type Err = String;

    /// Parses `DEST[:PORT[-PORT]][/tcp|/udp]`; an IPv6 destination with a port goes in brackets.
    ///
    /// ```
    /// use nsrun::sandbox::net::{Dest, EgressRule, Proto};
    /// let r: EgressRule = "10.0.0.0/8:443/tcp".parse().unwrap();
    /// assert_eq!((r.ports, r.proto), (Some((443, 443)), Some(Proto::Tcp)));
    /// let r: EgressRule = "api.example.com:8000-8100".parse().unwrap();
    /// assert_eq!(r.dest, Dest::Host("api.example.com".into()));
    /// let r: EgressRule = "[2001:db8::/32]:53/udp".parse().unwrap();
    /// assert!(matches!(r.dest, Dest::Net { prefix: 32, .. }));
    /// assert!("10.0.0.0/33".parse::<EgressRule>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid --egress-allow {s:?}: {why}");
        let (rest, proto) = if let Some(r) = s.strip_suffix("/tcp") {
            (r, Some(Proto::Tcp))
        } else if let Some(r) = s.strip_suffix("/udp") {
            (r, Some(Proto::Udp))
        } else {
            (s, None)
        };
        let (dest, ports) = if let Some(r) = rest.strip_prefix('[') {
            let (d, after) = r
                .split_once(']')
                .ok_or_else(|| bad("missing ] after an IPv6 address"))?;
            match after {
                "" => (d, None),
                p => (
                    d,
                    Some(
                        p.strip_prefix(':')
                            .ok_or_else(|| bad("expected :PORT after ]"))?,
                    ),
                ),
            }
        } else if parse_net(rest).is_some() {
            (rest, None)
        } else {
            match rest.rsplit_once(':') {
                Some((d, p)) => (d, Some(p)),
                None => (rest, None),
            }
        };
        let ports = ports
            .map(|p| {
                parse_ports(p).ok_or_else(|| bad("expected PORT or PORT-PORT between 1 and 65535"))
            })
            .transpose()?;
        let dest = if let Some((addr, prefix)) = parse_net(dest) {
            Dest::Net { addr, prefix }
        } else {
            let h = dest.trim_end_matches('.').to_ascii_lowercase();
            // A last label of digits is a mistyped address, not a name ("1.2.3").
            let numeric = h
                .rsplit('.')
                .next()
                .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
            if !valid_hostname(&h) || numeric {
                return Err(bad(
                    "expected an IP address, a CIDR block or a hostname, with optional :PORT[-PORT] and /tcp or /udp",
                ));
            }
            Dest::Host(h)
        };
        Ok(EgressRule { dest, ports, proto })
    }
}

/// One `--add-host NAME:IP`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    pub name: String,
    pub addr: IpAddr,
}

impl FromStr for HostEntry {
    type Err = String;

    /// ```
    /// let h: nsrun::sandbox::net::HostEntry = "db:10.1.2.3".parse().unwrap();
    /// assert_eq!(h.name, "db");
    /// assert!("db".parse::<nsrun::sandbox::net::HostEntry>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, ip) = s
            .split_once([':', '='])
            .ok_or_else(|| format!("invalid --add-host {s:?}: expected NAME:IP"))?;
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        let addr = ip
            .parse()
            .map_err(|_| format!("invalid --add-host {s:?}: {ip:?} is not an IP address"))?;
        if !valid_hostname(name) || name.starts_with('*') {
            return Err(format!(
                "invalid --add-host {s:?}: {name:?} is not a hostname"
            ));
        }
        Ok(HostEntry {
            name: name.to_string(),
            addr,
        })
    }
}

/// One `-p [IP:]HOSTPORT:CONTAINERPORT[/udp]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMap {
    /// Host address to listen on (default 127.0.0.1: published to this machine only).
    pub host_ip: IpAddr,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

impl FromStr for PortMap {
    type Err = String;

    /// ```
    /// let p: nsrun::sandbox::net::PortMap = "8080:80".parse().unwrap();
    /// assert_eq!((p.host_ip.to_string(), p.host_port, p.container_port), ("127.0.0.1".into(), 8080, 80));
    /// let p: nsrun::sandbox::net::PortMap = "0.0.0.0:5353:53/udp".parse().unwrap();
    /// assert_eq!(p.proto, nsrun::sandbox::net::Proto::Udp);
    /// ```
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid -p {s:?}: expected [IP:]HOSTPORT:CONTAINERPORT[/tcp|/udp]");
        let (rest, proto) = if let Some(r) = s.strip_suffix("/udp") {
            (r, Proto::Udp)
        } else {
            (s.strip_suffix("/tcp").unwrap_or(s), Proto::Tcp)
        };
        let (ip_part, ports) = match rest.rsplit_once(':') {
            Some((head, cport)) => match head.rsplit_once(':') {
                Some((ip, hport)) => (Some(ip), (hport, cport)),
                None => (None, (head, cport)),
            },
            None => return Err(bad()),
        };
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad);
        let host_ip = match ip_part {
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some(ip) => ip
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .map_err(|_| bad())?,
        };
        Ok(PortMap {
            host_ip,
            host_port: port(ports.0)?,
            container_port: port(ports.1)?,
            proto,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_rules_parse() {
        let r: EgressRule = "1.2.3.4".parse().unwrap();
        assert_eq!(
            r,
            EgressRule {
                dest: Dest::Net {
                    addr: "1.2.3.4".parse().unwrap(),
                    prefix: 32
                },
                ports: None,
                proto: None
            }
        );
        let r: EgressRule = "10.1.2.3/8".parse().unwrap();
        assert_eq!(
            r.dest,
            Dest::Net {
                addr: "10.0.0.0".parse().unwrap(),
                prefix: 8
            }
        );
        let r: EgressRule = "2001:db8::1".parse().unwrap();
        assert!(matches!(r.dest, Dest::Net { prefix: 128, .. }));
        let r: EgressRule = "Host.NSRUN.internal.:8080".parse().unwrap();
        assert!(r.is_host_internal());
        assert_eq!(r.ports, Some((8080, 8080)));
        let r: EgressRule = "*.example.com/udp".parse().unwrap();
        assert_eq!(r.dest, Dest::Host("*.example.com".into()));
        assert_eq!(r.proto, Some(Proto::Udp));
        for bad in [
            "",
            "a b",
            "x:0",
            "x:70000",
            "x:9-1",
            "[::1",
            "1.2.3.4/40",
            "host:port",
            "1.2.3",
        ] {
            assert!(bad.parse::<EgressRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn port_maps_and_hosts_parse() {
        let p: PortMap = "[::1]:8080:80".parse().unwrap();
        assert_eq!(p.host_ip, "::1".parse::<IpAddr>().unwrap());
        assert!("80".parse::<PortMap>().is_err());
        assert!("0:80".parse::<PortMap>().is_err());
        assert!("x:1:2".parse::<PortMap>().is_err());
        let h: HostEntry = "v6:2001:db8::1".parse().unwrap();
        assert!(h.addr.is_ipv6());
        assert!("bad name:1.2.3.4".parse::<HostEntry>().is_err());
    }
}
