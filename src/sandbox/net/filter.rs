//! The egress filter: an nftables ruleset for the run's own network namespace.
//!
//! Order of the output chain (policy drop):
//! 1. the run's own loopback (the DNS forwarder lives there), replies to connections that came
//!    in through published ports, IPv6 neighbour discovery;
//! 2. `host.nsrun.internal` rules (the helper's gateway address, which it maps to the host's
//!    loopback only when such a rule exists), then every other packet to that address is dropped;
//! 3. rules whose destination lies inside a special range (private, link-local, loopback, …):
//!    naming such a range explicitly is how a run is allowed into it;
//! 4. the special ranges and the host's own addresses: dropped;
//! 5. without `--egress-allow`: everything else is accepted (the public internet); with it, only
//!    the remaining rules, and addresses the DNS forwarder answered for allowed hostnames (sets
//!    with a timeout equal to the record's TTL). Hostname sets come after step 4, so a name that
//!    resolves to a private address (DNS rebinding) stays unreachable.

use std::fmt::Write as _;
use std::net::IpAddr;

use super::{mask, Dest, EgressRule};

/// Destinations a run may not reach unless a rule names them: IPv4 "this network", private,
/// shared (CGNAT), loopback, link-local (cloud metadata), multicast and reserved ranges; IPv6
/// unspecified, loopback, IPv4-mapped, NAT64, unique-local, link-local and multicast.
pub const SPECIAL_V4: &[(&str, u8)] = &[
    ("0.0.0.0", 8),
    ("10.0.0.0", 8),
    ("100.64.0.0", 10),
    ("127.0.0.0", 8),
    ("169.254.0.0", 16),
    ("172.16.0.0", 12),
    ("192.168.0.0", 16),
    ("224.0.0.0", 4),
    ("240.0.0.0", 4),
];
/// See [`SPECIAL_V4`].
pub const SPECIAL_V6: &[(&str, u8)] = &[
    ("::", 128),
    ("::1", 128),
    ("::ffff:0:0", 96),
    ("64:ff9b::", 96),
    ("fc00::", 7),
    ("fe80::", 10),
    ("ff00::", 8),
];

/// Whether `addr/prefix` lies inside one of the special ranges.
pub fn is_special(addr: IpAddr, prefix: u8) -> bool {
    let table = if addr.is_ipv4() {
        SPECIAL_V4
    } else {
        SPECIAL_V6
    };
    table.iter().any(|(net, len)| {
        let net: IpAddr = net.parse().expect("valid table entry");
        prefix >= *len && mask(addr, *len) == net
    })
}

/// A hostname rule's address sets, filled by the DNS forwarder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameSet {
    /// The rule's hostname pattern.
    pub pattern: String,
    pub set4: String,
    pub set6: String,
}

/// How refused packets end: an ICMP "administratively prohibited" (a TCP connect fails at once).
const REJECT: &str = "reject with icmpx type admin-prohibited";

/// The table nsrun loads.
pub const TABLE: &str = "nsrun";

/// What the filter needs to know about the host side.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The helper's gateway addresses, mapped to the host's loopback when `host_internal`.
    pub gateways: Vec<IpAddr>,
    /// Whether some rule allows `host.nsrun.internal`.
    pub host_internal: bool,
    /// The host's own addresses (other than what the run's interface copies), never reachable.
    pub host_addrs: Vec<IpAddr>,
}

fn family(a: IpAddr) -> &'static str {
    if a.is_ipv4() {
        "ip"
    } else {
        "ip6"
    }
}

/// `meta l4proto … th dport …` for a rule.
fn l4(rule: &EgressRule) -> String {
    let mut s = String::new();
    match (rule.proto, rule.ports) {
        (Some(p), _) => {
            let _ = write!(s, " meta l4proto {}", p.name());
        }
        (None, Some(_)) => s.push_str(" meta l4proto { tcp, udp }"),
        (None, None) => {}
    }
    if let Some((a, b)) = rule.ports {
        if a == b {
            let _ = write!(s, " th dport {a}");
        } else {
            let _ = write!(s, " th dport {a}-{b}");
        }
    }
    s
}

/// Builds the ruleset; returns it with the address sets of hostname rules.
pub fn ruleset(rules: &[EgressRule], ctx: &Context) -> (String, Vec<NameSet>) {
    let mut sets = Vec::new();
    let mut decl = String::new();
    let mut chain = String::new();
    let mut line = |s: String| {
        chain.push_str("    ");
        chain.push_str(&s);
        chain.push('\n');
    };
    line("oifname \"lo\" accept".into());
    line("ct state established,related accept".into());
    line(
        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept".into(),
    );

    // 2. host.nsrun.internal
    if ctx.host_internal {
        for r in rules.iter().filter(|r| r.is_host_internal()) {
            for gw in &ctx.gateways {
                line(format!("{} daddr {gw}{} accept", family(*gw), l4(r)));
            }
        }
    }
    for gw in &ctx.gateways {
        if ctx.host_internal {
            line(format!("{} daddr {gw} {REJECT}", family(*gw)));
        }
    }
    // 3. explicit rules into special ranges
    let explicit =
        |r: &&EgressRule| matches!(r.dest, Dest::Net { addr, prefix } if is_special(addr, prefix));
    for r in rules.iter().filter(explicit) {
        if let Dest::Net { addr, prefix } = r.dest {
            line(format!(
                "{} daddr {addr}/{prefix}{} accept",
                family(addr),
                l4(r)
            ));
        }
    }
    // 4. special ranges and the host's own addresses
    let list = |t: &[(&str, u8)]| {
        t.iter()
            .map(|(a, l)| format!("{a}/{l}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    line(format!("ip daddr {{ {} }} {REJECT}", list(SPECIAL_V4)));
    line(format!("ip6 daddr {{ {} }} {REJECT}", list(SPECIAL_V6)));
    for a in &ctx.host_addrs {
        line(format!("{} daddr {a} {REJECT}", family(*a)));
    }
    // 5. the rest
    if rules.is_empty() {
        line("accept".into());
    }
    for (i, r) in rules.iter().enumerate() {
        match &r.dest {
            Dest::Net { addr, prefix } if !is_special(*addr, *prefix) => {
                line(format!(
                    "{} daddr {addr}/{prefix}{} accept",
                    family(*addr),
                    l4(r)
                ));
            }
            Dest::Host(pattern) if !r.is_host_internal() => {
                let (set4, set6) = (format!("name{i}_4"), format!("name{i}_6"));
                let _ = writeln!(
                    decl,
                    "  set {set4} {{ type ipv4_addr; flags timeout; }}\n  set {set6} {{ type ipv6_addr; flags timeout; }}"
                );
                line(format!("ip daddr @{set4}{} accept", l4(r)));
                line(format!("ip6 daddr @{set6}{} accept", l4(r)));
                sets.push(NameSet {
                    pattern: pattern.clone(),
                    set4,
                    set6,
                });
            }
            _ => {}
        }
    }
    if !rules.is_empty() {
        // Refused rather than dropped, so that a tool fails at once instead of timing out.
        line(REJECT.into());
    }
    let text = format!(
        "table inet {TABLE} {{\n{decl}  chain output {{\n    type filter hook output priority 0; policy drop;\n{chain}  }}\n}}\n"
    );
    (text, sets)
}

/// Whether `name` (lower case, no final dot) matches a rule's `pattern`.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .strip_suffix(suffix)
            .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        None => pattern == name,
    }
}

/// The nft commands that make `addr` reachable through `set` for `ttl` seconds (refreshing the
/// timeout when it is there already: add, delete, add, in one transaction).
pub fn add_element(set: &str, addr: IpAddr, ttl: u32) -> String {
    let e = format!("inet {TABLE} {set} {{ {addr} timeout {ttl}s }}");
    let plain = format!("inet {TABLE} {set} {{ {addr} }}");
    format!("add element {e}\ndelete element {plain}\nadd element {e}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(v: &[&str]) -> Vec<EgressRule> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn special_ranges() {
        for a in [
            "10.1.2.3",
            "169.254.169.254",
            "127.0.0.1",
            "172.31.0.1",
            "100.64.1.1",
        ] {
            assert!(is_special(a.parse().unwrap(), 32), "{a}");
        }
        for a in ["fe80::1", "fd00::2", "::1"] {
            assert!(is_special(a.parse().unwrap(), 128), "{a}");
        }
        for a in ["8.8.8.8", "203.0.113.2", "172.32.0.1"] {
            assert!(!is_special(a.parse().unwrap(), 32), "{a}");
        }
        assert!(!is_special("2001:db8::1".parse().unwrap(), 128));
        // A rule wider than a special range is not "inside" it.
        assert!(!is_special("0.0.0.0".parse().unwrap(), 0));
    }

    #[test]
    fn default_ruleset_accepts_public_after_dropping_special_ranges() {
        let (text, sets) = ruleset(&[], &Context::default());
        assert!(sets.is_empty());
        let drop = text.find("10.0.0.0/8").unwrap();
        let accept = text.rfind("    accept\n").unwrap();
        assert!(drop < accept);
        assert!(text.contains("policy drop"));
    }

    #[test]
    fn allowlist_orders_explicit_special_before_drops_and_names_after() {
        let ctx = Context {
            gateways: vec!["192.0.2.1".parse().unwrap()],
            host_internal: true,
            host_addrs: vec!["198.51.100.7".parse().unwrap()],
        };
        let (text, sets) = ruleset(
            &rules(&[
                "10.77.0.2:80/tcp",
                "host.nsrun.internal:8080",
                "example.test:443",
                "0.0.0.0/0",
            ]),
            &ctx,
        );
        let pos = |s: &str| text.find(s).unwrap_or_else(|| panic!("{s} in {text}"));
        assert!(
            pos("ip daddr 192.0.2.1 meta l4proto { tcp, udp } th dport 8080 accept")
                < pos("ip daddr 192.0.2.1 reject")
        );
        assert!(
            pos("ip daddr 10.77.0.2/32 meta l4proto tcp th dport 80 accept") < pos("10.0.0.0/8, ")
        );
        assert!(
            pos("ip daddr 198.51.100.7 reject")
                < pos("ip daddr @name2_4 meta l4proto { tcp, udp } th dport 443 accept")
        );
        assert!(pos("10.0.0.0/8, ") < pos("ip daddr 0.0.0.0/0 accept"));
        assert!(!text.contains("    accept\n"));
        assert!(text.ends_with("    reject with icmpx type admin-prohibited\n  }\n}\n"));
        assert_eq!(sets.len(), 1);
        assert_eq!(sets[0].pattern, "example.test");
        assert!(text.contains("set name2_4 { type ipv4_addr; flags timeout; }"));
    }

    #[test]
    fn gateway_is_left_alone_without_host_internal() {
        let ctx = Context {
            gateways: vec!["192.0.2.1".parse().unwrap()],
            ..Default::default()
        };
        let (text, _) = ruleset(&rules(&["192.0.2.0/24"]), &ctx);
        assert!(!text.contains("192.0.2.1"));
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "badexample.com"));
        assert!(name_matches("example.com", "example.com"));
        assert!(!name_matches("example.com", "a.example.com"));
    }
}
