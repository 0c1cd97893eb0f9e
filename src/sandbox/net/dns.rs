//! nsrun's DNS forwarder: listens on 127.0.0.53:53 inside the run's network namespace (its
//! socket is made there), forwards from the host's, and applies the hostname allowlist.
//!
//! With `--egress-allow`, only queries for allowed names are forwarded (others get REFUSED), and
//! every A/AAAA record of an answer becomes reachable, through the nftables sets of the rules the
//! name matched, for the record's TTL (at least [`MIN_TTL`] seconds), before the answer reaches
//! the tool. Without an allowlist every name is forwarded and the filter's fixed rules decide.
//!
//! Queries arrive over UDP or TCP (a resolver retries over TCP when a UDP answer comes back
//! truncated) and go upstream over the same transport, so a large answer arrives whole. TCP
//! connections are served one at a time, each with short timeouts: a tool that holds one open
//! delays only its own lookups.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::filter::{self, NameSet};
use super::HOST_INTERNAL;

/// Shortest time an answered address stays reachable: a TTL of 0 would make it unusable.
pub const MIN_TTL: u32 = 5;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_REFUSED: u8 = 5;
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;

/// The question of a query: lower-case name without the final dot, type, and where the
/// question section ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub name: String,
    pub qtype: u16,
    pub end: usize,
}

/// Reads a (possibly compressed) name at `pos`; returns it and the offset just past it.
fn read_name(msg: &[u8], mut pos: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *msg.get(pos)? as usize;
        if len == 0 {
            return Some((name, end.unwrap_or(pos + 1)));
        }
        if len & 0xc0 == 0xc0 {
            let ptr = ((len & 0x3f) << 8) | *msg.get(pos + 1)? as usize;
            end.get_or_insert(pos + 2);
            pos = ptr;
            continue;
        }
        let label = msg.get(pos + 1..pos + 1 + len)?;
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
        pos += 1 + len;
    }
    None
}

/// Parses the single question of a query.
pub fn question(msg: &[u8]) -> Option<Question> {
    if msg.len() < 12 || u16::from_be_bytes([msg[4], msg[5]]) != 1 {
        return None;
    }
    let (name, pos) = read_name(msg, 12)?;
    let qtype = u16::from_be_bytes([*msg.get(pos)?, *msg.get(pos + 1)?]);
    msg.get(pos + 3)?;
    Some(Question {
        name,
        qtype,
        end: pos + 4,
    })
}

/// The A/AAAA records of an answer section, with their TTLs.
pub fn answers(msg: &[u8]) -> Vec<(IpAddr, u32)> {
    let mut out = Vec::new();
    let Some(q) = question(msg) else { return out };
    let count = u16::from_be_bytes([msg[6], msg[7]]);
    let mut pos = q.end;
    for _ in 0..count {
        let Some((_, p)) = read_name(msg, pos) else {
            break;
        };
        let Some(head) = msg.get(p..p + 10) else {
            break;
        };
        let rtype = u16::from_be_bytes([head[0], head[1]]);
        let ttl = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        let len = u16::from_be_bytes([head[8], head[9]]) as usize;
        let Some(data) = msg.get(p + 10..p + 10 + len) else {
            break;
        };
        match (rtype, len) {
            (TYPE_A, 4) => out.push((IpAddr::from(<[u8; 4]>::try_from(data).expect("4")), ttl)),
            (TYPE_AAAA, 16) => {
                out.push((IpAddr::from(<[u8; 16]>::try_from(data).expect("16")), ttl))
            }
            _ => {}
        }
        pos = p + 10 + len;
    }
    out
}

/// A reply to `query` with `rcode` and no records.
pub fn reply_error(query: &[u8], q: &Question, rcode: u8) -> Vec<u8> {
    let mut r = query[..q.end].to_vec();
    r[2] = 0x80 | (query[2] & 0x79); // QR, opcode and RD kept
    r[3] = 0x80 | rcode; // RA
    r[6..12].fill(0);
    r
}

/// A reply to `query` carrying one A or AAAA record for `addr`, or no record when the type
/// asked differs.
pub fn reply_address(query: &[u8], q: &Question, addr: IpAddr, ttl: u32) -> Vec<u8> {
    let mut r = reply_error(query, q, 0);
    let (t, data): (u16, Vec<u8>) = match addr {
        IpAddr::V4(a) => (TYPE_A, a.octets().to_vec()),
        IpAddr::V6(a) => (TYPE_AAAA, a.octets().to_vec()),
    };
    if q.qtype == t {
        r[7] = 1;
        r.extend_from_slice(&[0xc0, 12]);
        r.extend_from_slice(&t.to_be_bytes());
        r.extend_from_slice(&1u16.to_be_bytes());
        r.extend_from_slice(&ttl.to_be_bytes());
        r.extend_from_slice(&(data.len() as u16).to_be_bytes());
        r.extend_from_slice(&data);
    }
    r
}

/// The forwarder's configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Whether an allowlist is in force (otherwise every name is forwarded).
    pub allowlist: bool,
    pub sets: Vec<NameSet>,
    /// What `host.nsrun.internal` answers, when allowed.
    pub host_internal: Option<IpAddr>,
    /// Upstream resolvers, tried in order.
    pub upstream: Vec<IpAddr>,
    /// Their port: 53 (another one only in tests).
    pub upstream_port: u16,
}

/// The forwarder's sockets, made inside the run's network namespace.
#[derive(Debug)]
pub struct Sockets {
    pub udp: UdpSocket,
    pub tcp: TcpListener,
}

/// How a query arrived, and so how it goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// How long one upstream may take to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a tool's TCP connection is served before it is closed.
const TCP_CONNECTION_TIME: Duration = Duration::from_secs(5);

/// Makes addresses reachable: runs nft in the run's network namespace.
pub trait Allow: Send {
    fn allow(&mut self, script: &str) -> Result<(), String>;
}

/// Serves queries arriving on `socks` until `stop` becomes readable or hangs up.
pub fn serve(socks: Sockets, stop: OwnedFd, policy: Policy, allow: &mut dyn Allow) {
    let mut buf = vec![0u8; 65535];
    let _ = socks.tcp.set_nonblocking(true);
    loop {
        let mut fds = [
            PollFd::new(socks.udp.as_fd(), PollFlags::POLLIN),
            PollFd::new(socks.tcp.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue;
        }
        let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
        let (udp, tcp) = (ready(0), ready(1));
        if ready(2) {
            return;
        }
        if udp {
            if let Ok((n, from)) = socks.udp.recv_from(&mut buf) {
                if let Some(reply) = handle(&buf[..n], &policy, allow, Transport::Udp) {
                    let _ = socks.udp.send_to(&reply, from);
                }
            }
        }
        if tcp {
            if let Ok((conn, _)) = socks.tcp.accept() {
                serve_tcp(conn, &policy, allow);
            }
        }
    }
}

/// Serves the length-prefixed queries of one TCP connection (RFC 1035 4.2.2, RFC 7766) until
/// the tool closes it, sends garbage or [`TCP_CONNECTION_TIME`] has passed.
fn serve_tcp(mut conn: TcpStream, policy: &Policy, allow: &mut dyn Allow) {
    let end = Instant::now() + TCP_CONNECTION_TIME;
    let _ = conn.set_nonblocking(false);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() || conn.set_read_timeout(Some(left)).is_err() {
            return;
        }
        let _ = conn.set_write_timeout(Some(left));
        let Some(query) = read_framed(&mut conn) else {
            return;
        };
        let Some(reply) = handle(&query, policy, allow, Transport::Tcp) else {
            return;
        };
        if write_framed(&mut conn, &reply).is_err() {
            return;
        }
    }
}

/// Reads one message with its two-byte length in front; `None` at the end or on an error.
fn read_framed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).ok()?;
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut msg).ok()?;
    Some(msg)
}

/// Writes one message with its two-byte length in front.
fn write_framed(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| std::io::ErrorKind::InvalidData)?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    stream.write_all(&out)
}

/// Answers one query: refused, answered locally, or forwarded (and its addresses allowed).
pub fn handle(
    query: &[u8],
    policy: &Policy,
    allow: &mut dyn Allow,
    transport: Transport,
) -> Option<Vec<u8>> {
    let q = question(query)?;
    if q.name == HOST_INTERNAL {
        return Some(match policy.host_internal {
            Some(addr) => reply_address(query, &q, addr, 60),
            None => reply_error(query, &q, RCODE_REFUSED),
        });
    }
    let matched: Vec<&NameSet> = policy
        .sets
        .iter()
        .filter(|s| filter::name_matches(&s.pattern, &q.name))
        .collect();
    if policy.allowlist && matched.is_empty() {
        return Some(reply_error(query, &q, RCODE_REFUSED));
    }
    let Some(reply) = forward(query, policy, transport) else {
        return Some(reply_error(query, &q, RCODE_SERVFAIL));
    };
    if !matched.is_empty() {
        let mut script = String::new();
        for (addr, ttl) in answers(&reply) {
            for s in &matched {
                let set = if addr.is_ipv4() { &s.set4 } else { &s.set6 };
                script.push_str(&filter::add_element(set, addr, ttl.max(MIN_TTL)));
            }
        }
        if !script.is_empty() && allow.allow(&script).is_err() {
            return Some(reply_error(query, &q, RCODE_SERVFAIL));
        }
    }
    Some(reply)
}

/// A query for the A record of `name` (`id` as its id), or `None` for a name DNS cannot carry.
pub fn query_a(name: &str, id: u16) -> Option<Vec<u8>> {
    let name = name.trim_end_matches('.');
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&1u16.to_be_bytes()); // A
    q.extend_from_slice(&1u16.to_be_bytes()); // IN
    (q.len() <= 12 + 255 + 4).then_some(q)
}

/// The upstream that says `name` does not exist (NXDOMAIN), asked with a short timeout; `None`
/// when it exists, or when no upstream answers (then the run decides, as the tool's own lookups
/// will). For refusing an allowlisted name that never resolves before the run starts.
pub fn nonexistent(name: &str, upstream: &[IpAddr], timeout: Duration) -> Option<IpAddr> {
    let query = query_a(name, 0x6e73)?;
    // The first upstream that answers decides; RCODE 3 means the name does not exist.
    let (server, reply) = upstream
        .iter()
        .find_map(|server| ask(&query, (*server, 53).into(), timeout).map(|r| (*server, r)))?;
    (reply[3] & 0x0f == 3).then_some(server)
}

/// One query to one server over UDP: the reply with the query's id, or `None` by `timeout`.
fn ask(query: &[u8], server: SocketAddr, timeout: Duration) -> Option<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().expect("addr")
    } else {
        "[::]:0".parse().expect("addr")
    };
    let sock = UdpSocket::bind(bind).ok()?;
    sock.set_read_timeout(Some(timeout)).ok()?;
    sock.connect(server).ok()?;
    sock.send(query).ok()?;
    let mut buf = vec![0u8; 65535];
    while let Ok(n) = sock.recv(&mut buf) {
        if n >= 12 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

/// One query to one server over TCP: the reply with the query's id, or `None` by `timeout`.
fn ask_tcp(query: &[u8], server: SocketAddr, timeout: Duration) -> Option<Vec<u8>> {
    let mut conn = TcpStream::connect_timeout(&server, timeout).ok()?;
    conn.set_read_timeout(Some(timeout)).ok()?;
    conn.set_write_timeout(Some(timeout)).ok()?;
    write_framed(&mut conn, query).ok()?;
    let reply = read_framed(&mut conn)?;
    (reply.len() >= 12 && reply[..2] == query[..2]).then_some(reply)
}

/// Sends `query` to each upstream in turn over `transport`; the first answer with the same id
/// wins.
fn forward(query: &[u8], policy: &Policy, transport: Transport) -> Option<Vec<u8>> {
    policy.upstream.iter().find_map(|ip| {
        let server = SocketAddr::new(*ip, policy.upstream_port);
        match transport {
            Transport::Udp => ask(query, server, UPSTREAM_TIMEOUT),
            Transport::Tcp => ask_tcp(query, server, UPSTREAM_TIMEOUT),
        }
    })
}

/// The nameservers of a resolv.conf text.
pub fn nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().split('%').next()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queries_are_well_formed() {
        let q = query_a("example.test.", 7).unwrap();
        assert_eq!(question(&q).unwrap().name, "example.test");
        assert_eq!(&q[..2], &[0, 7]);
        assert!(query_a("a..b", 1).is_none());
        assert!(query_a(&"x".repeat(64), 1).is_none());
    }

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        q
    }

    struct Recorder(Vec<String>);
    impl Allow for Recorder {
        fn allow(&mut self, script: &str) -> Result<(), String> {
            self.0.push(script.to_string());
            Ok(())
        }
    }

    #[test]
    fn questions_and_local_answers_round_trip() {
        let q = query("Host.Example.com", TYPE_A);
        let parsed = question(&q).unwrap();
        assert_eq!(parsed.name, "host.example.com");
        let r = reply_address(&q, &parsed, "192.0.2.1".parse().unwrap(), 30);
        assert_eq!(answers(&r), [("192.0.2.1".parse().unwrap(), 30)]);
        let r = reply_address(&q, &parsed, "2001:db8::1".parse().unwrap(), 30);
        assert!(answers(&r).is_empty());
        let e = reply_error(&q, &parsed, RCODE_REFUSED);
        assert_eq!(e[3] & 0x0f, RCODE_REFUSED);
        assert_eq!(&e[..2], &q[..2]);
        assert!(question(&q[..10]).is_none());
    }

    #[test]
    fn disallowed_names_are_refused_without_forwarding() {
        let policy = Policy {
            allowlist: true,
            sets: vec![NameSet {
                pattern: "ok.test".into(),
                set4: "name0_4".into(),
                set6: "name0_6".into(),
            }],
            host_internal: None,
            upstream: vec![],
            upstream_port: 53,
        };
        let mut rec = Recorder(vec![]);
        let r = handle(
            &query("evil.test", TYPE_A),
            &policy,
            &mut rec,
            Transport::Udp,
        )
        .unwrap();
        assert_eq!(r[3] & 0x0f, RCODE_REFUSED);
        let r = handle(
            &query(HOST_INTERNAL, TYPE_A),
            &policy,
            &mut rec,
            Transport::Udp,
        )
        .unwrap();
        assert_eq!(r[3] & 0x0f, RCODE_REFUSED);
        // Allowed, but no upstream answers: SERVFAIL, nothing allowed.
        let r = handle(&query("ok.test", TYPE_A), &policy, &mut rec, Transport::Tcp).unwrap();
        assert_eq!(r[3] & 0x0f, RCODE_SERVFAIL);
        assert!(rec.0.is_empty());
    }

    /// An answer to `q` with `n` A records, 192.0.2.1 and up.
    fn many_records(q: &[u8], n: u8) -> Vec<u8> {
        let parsed = question(q).unwrap();
        let mut r = reply_error(q, &parsed, 0);
        r[7] = n;
        for i in 1..=n {
            r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, i]);
        }
        r
    }

    /// Over UDP the upstream truncates (TC, no records) and the tool gets that as it is; over
    /// TCP the whole answer comes through and every address in it is allowed.
    #[test]
    fn truncated_answers_are_retried_over_tcp() {
        let up_udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = up_udp.local_addr().unwrap().port();
        let up_tcp = TcpListener::bind(("127.0.0.1", port)).unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = up_udp.recv_from(&mut buf) {
                let mut r = many_records(&buf[..n], 0);
                r[2] |= 0x02; // TC
                let _ = up_udp.send_to(&r, from);
            }
        });
        std::thread::spawn(move || {
            for c in up_tcp.incoming() {
                let mut c = c.unwrap();
                while let Some(q) = read_framed(&mut c) {
                    write_framed(&mut c, &many_records(&q, 40)).unwrap();
                }
            }
        });
        let socks = Sockets {
            udp: UdpSocket::bind("127.0.0.1:0").unwrap(),
            tcp: TcpListener::bind("127.0.0.1:0").unwrap(),
        };
        let (udp_addr, tcp_addr) = (
            socks.udp.local_addr().unwrap(),
            socks.tcp.local_addr().unwrap(),
        );
        let policy = Policy {
            allowlist: true,
            sets: vec![NameSet {
                pattern: "big.test".into(),
                set4: "name0_4".into(),
                set6: "name0_6".into(),
            }],
            host_internal: None,
            upstream: vec!["127.0.0.1".parse().unwrap()],
            upstream_port: port,
        };
        let (stop_r, stop_w) = nix::unistd::pipe().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            let mut rec = Recorder(vec![]);
            serve(socks, stop_r, policy, &mut rec);
            tx.send(rec.0).unwrap();
        });

        let q = query("big.test", TYPE_A);
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        client.send_to(&q, udp_addr).unwrap();
        let mut buf = [0u8; 4096];
        let n = client.recv(&mut buf).unwrap();
        assert_ne!(buf[2] & 0x02, 0, "UDP answer not truncated");
        assert!(answers(&buf[..n]).is_empty());

        let mut conn = TcpStream::connect(tcp_addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // Two queries on one connection, as RFC 7766 allows.
        for _ in 0..2 {
            write_framed(&mut conn, &q).unwrap();
            let reply = read_framed(&mut conn).unwrap();
            assert_eq!(&reply[..2], &q[..2]);
            assert_eq!(answers(&reply).len(), 40);
        }
        // A refused name over TCP is answered locally.
        write_framed(&mut conn, &query("evil.test", TYPE_A)).unwrap();
        assert_eq!(read_framed(&mut conn).unwrap()[3] & 0x0f, RCODE_REFUSED);
        drop(conn);

        drop(stop_w);
        server.join().unwrap();
        let scripts = rx.recv().unwrap();
        assert_eq!(scripts.len(), 2, "{scripts:?}");
        assert!(scripts[0].contains("192.0.2.40"), "{}", scripts[0]);
    }

    #[test]
    fn resolv_conf_nameservers() {
        assert_eq!(
            nameservers("# x\nnameserver 10.0.0.1\nnameserver fe80::1%eth0\nsearch a\n"),
            [
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
    }
}
