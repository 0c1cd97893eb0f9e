//! nsrun's DNS forwarder: listens on 127.0.0.53:53 inside the run's network namespace (its
//! socket is made there), forwards from the host's, and applies the hostname allowlist.
//!
//! With `--egress-allow`, only queries for allowed names are forwarded (others get REFUSED), and
//! every A/AAAA record of an answer becomes reachable, through the nftables sets of the rules the
//! name matched, for the record's TTL (at least [`MIN_TTL`] seconds), before the answer reaches
//! the tool. Without an allowlist every name is forwarded and the filter's fixed rules decide.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

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
    /// Upstream resolvers (port 53), tried in order.
    pub upstream: Vec<IpAddr>,
}

/// Makes addresses reachable: runs nft in the run's network namespace.
pub trait Allow: Send {
    fn allow(&mut self, script: &str) -> Result<(), String>;
}

/// Serves queries arriving on `sock` until `stop` becomes readable or hangs up.
pub fn serve(sock: UdpSocket, stop: OwnedFd, policy: Policy, allow: &mut dyn Allow) {
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [
            PollFd::new(sock.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue;
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return;
        }
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        if let Some(reply) = handle(&buf[..n], &policy, allow) {
            let _ = sock.send_to(&reply, from);
        }
    }
}

/// Answers one query: refused, answered locally, or forwarded (and its addresses allowed).
pub fn handle(query: &[u8], policy: &Policy, allow: &mut dyn Allow) -> Option<Vec<u8>> {
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
    let Some(reply) = forward(query, &policy.upstream) else {
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
        .find_map(|server| ask(&query, *server, timeout).map(|r| (*server, r)))?;
    (reply[3] & 0x0f == 3).then_some(server)
}

/// One query to one server over UDP: the reply with the query's id, or `None` by `timeout`.
fn ask(query: &[u8], server: IpAddr, timeout: Duration) -> Option<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().expect("addr")
    } else {
        "[::]:0".parse().expect("addr")
    };
    let sock = UdpSocket::bind(bind).ok()?;
    sock.set_read_timeout(Some(timeout)).ok()?;
    sock.connect((server, 53)).ok()?;
    sock.send(query).ok()?;
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        if n >= 12 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

/// Sends `query` to each upstream in turn; the first answer with the same id wins.
fn forward(query: &[u8], upstream: &[IpAddr]) -> Option<Vec<u8>> {
    upstream
        .iter()
        .find_map(|server| ask(query, *server, Duration::from_secs(3)))
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
        };
        let mut rec = Recorder(vec![]);
        let r = handle(&query("evil.test", TYPE_A), &policy, &mut rec).unwrap();
        assert_eq!(r[3] & 0x0f, RCODE_REFUSED);
        let r = handle(&query(HOST_INTERNAL, TYPE_A), &policy, &mut rec).unwrap();
        assert_eq!(r[3] & 0x0f, RCODE_REFUSED);
        // Allowed, but no upstream answers: SERVFAIL, nothing allowed.
        let r = handle(&query("ok.test", TYPE_A), &policy, &mut rec).unwrap();
        assert_eq!(r[3] & 0x0f, RCODE_SERVFAIL);
        assert!(rec.0.is_empty());
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
