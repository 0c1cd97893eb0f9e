//! `--network private`: user-mode NAT (pasta, slirp4netns), the egress filter that is safe by
//! default, `--egress-allow`, nsrun's DNS forwarder, published ports, the generated `/etc`
//! files, and the helper process dying with the run.
//!
//! There is no outside network here, so the tests build their own. As root: a fake "internet"
//! host in a network namespace of its own, joined to the host by a veth pair, serving HTTP on
//! public (198.51.100.0/24, TEST-NET-2: the workplace's own egress sits in TEST-NET-3, which a
//! host route of ours must not capture; 2001:db8:1::/64), private (10.77.0.2) and metadata (169.254.169.254)
//! addresses, and DNS. Root and rootless: servers on the host's loopback, reached as
//! `host.nsrun.internal`.
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

mod support;

mod common;
mod confine_common;
use common::*;

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::Duration;

use nsrun::sandbox::net::dns;

/// `GET /` to ADDR PORT with busybox nc; prints the last line of the answer or nc's error.
fn fetch(addr: &str, port: u16) -> String {
    format!(
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 5 nc {addr} {port} 2>&1 | tail -1; echo\n"
    )
}

/// Serves `hello-<tag>` on every connection to a listener; returns its port.
fn serve_http(listener: TcpListener, tag: &'static str) -> u16 {
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 512];
            let _ = c.read(&mut buf);
            let _ = c.write_all(format!("HTTP/1.0 200 OK\r\n\r\nhello-{tag}\n").as_bytes());
        }
    });
    port
}

fn host_server(tag: &'static str) -> u16 {
    serve_http(TcpListener::bind("127.0.0.1:0").unwrap(), tag)
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn private(extra: &[&str]) -> Vec<String> {
    let mut v = vec!["--network".to_string(), "private".to_string()];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn sh_v(flags: &[String], script: &str) -> std::process::Output {
    let f: Vec<&str> = flags.iter().map(String::as_str).collect();
    sh(&f, script)
}

/// The helper pids among the children of `parent`.
fn helper_children(parent: u32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            status
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["PPid:", &parent.to_string()])
                && (comm.starts_with("pasta")
                    || comm.starts_with("passt")
                    || comm.starts_with("slirp4netns"))
        })
        .collect()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.split_whitespace().nth(2).is_none_or(|st| st != "Z"))
}

#[test]
fn generated_files_are_the_runs_own_and_read_only() {
    let hosts_before = std::fs::read(rootfs().join("etc/hosts")).ok();
    let o = sh_v(
        &private(&["--hostname", "boxy", "--add-host", "db.internal:10.1.2.3"]),
        "cat /etc/resolv.conf /etc/hosts /etc/hostname; echo x >> /etc/hosts; echo w=$?",
    );
    assert_code(&o, 0);
    let out = stdout(&o);
    assert!(out.contains("nameserver 127.0.0.53\n"), "{out}");
    assert!(out.contains("10.1.2.3\tdb.internal\n"), "{out}");
    assert!(out.contains("127.0.1.1\tboxy\n"), "{out}");
    assert!(out.contains("\nboxy\n"), "{out}");
    assert!(!out.contains("host.nsrun.internal"), "{out}");
    assert!(out.contains("w=1"), "{out}");
    // --network none has the files too, without a resolver; the rootfs is never written.
    let o = sh(
        &["--add-host", "a.test:192.0.2.9"],
        "cat /etc/resolv.conf /etc/hosts",
    );
    assert_code(&o, 0);
    assert!(!stdout(&o).contains("nameserver"), "{}", stdout(&o));
    assert!(stdout(&o).contains("192.0.2.9\ta.test"), "{}", stdout(&o));
    assert_eq!(std::fs::read(rootfs().join("etc/hosts")).ok(), hosts_before);
}

#[test]
fn bad_network_flags_are_one_line_refusals() {
    for (flags, needle) in [
        (
            vec!["--egress-allow", "10.0.0.0/33"],
            "invalid --egress-allow",
        ),
        (
            vec!["--network", "private", "--egress-allow", "a b"],
            "invalid --egress-allow",
        ),
        (vec!["--egress-allow", "1.2.3.4"], "needs --network private"),
        (vec!["-p", "8080:80"], "needs --network private"),
        (vec!["--network", "private", "-p", "80"], "invalid -p"),
        (
            vec!["--network", "private", "--dns", "resolver"],
            "invalid --dns",
        ),
        (vec!["--add-host", "nocolon"], "invalid --add-host"),
        (
            vec!["--network", "bridge"],
            "expected none, host or private",
        ),
        (
            vec!["--network", "private", "--cap-add", "NET_ADMIN"],
            "NET_ADMIN",
        ),
    ] {
        let o = run(&flags, &["true"]);
        assert_code(&o, 125);
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{flags:?}: {err}");
        assert!(err.contains(needle), "{flags:?}: {err}");
    }
    // A published port in use on the host.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let spec = format!("{}:80", busy.local_addr().unwrap().port());
    let o = run(&["--network", "private", "-p", &spec], &["true"]);
    assert_code(&o, 125);
    assert!(stderr(&o).contains("in use"), "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
}

/// Rootless too: the host's loopback, reachable only as an allowed `host.nsrun.internal`.
#[test]
fn host_loopback_only_when_allowed() {
    for helper in ["pasta", "slirp4netns"] {
        let (allowed, other) = (host_server("host"), host_server("other"));
        let gw = "$(ip route | awk '/default/ {print $3; exit}')";
        let script = format!(
            "{}{}{}",
            fetch(gw, allowed),
            fetch("127.0.0.1", allowed),
            fetch("host.nsrun.internal", allowed)
        );
        // Not allowed: neither the gateway nor the run's own loopback lead to the host.
        let o = sh_v(&private(&["--net-helper", helper]), &script);
        assert_code(&o, 0);
        assert!(!stdout(&o).contains("hello-"), "{helper}: {}", stdout(&o));

        let rule = format!("host.nsrun.internal:{allowed}/tcp");
        let script = format!(
            "grep -c host.nsrun.internal /etc/hosts; {}{}{}",
            fetch("host.nsrun.internal", allowed),
            fetch("host.nsrun.internal", other),
            fetch("198.51.100.3", 80)
        );
        let o = sh_v(
            &private(&["--net-helper", helper, "--egress-allow", &rule]),
            &script,
        );
        assert_code(&o, 0);
        let out = stdout(&o);
        let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines[0], "1", "{helper}: {out}");
        assert_eq!(lines[1], "hello-host", "{helper}: {out}");
        assert!(!out.contains("hello-other"), "{helper}: {out}");
        assert!(!out.contains("hello-inet"), "{helper}: {out}");
    }
}

/// TCP publishes through either helper: pasta's `-t`, slirp4netns' API socket (whose directory
/// is gone once the port is published).
#[test]
fn published_ports_reach_a_server_inside() {
    for helper in ["pasta", "slirp4netns"] {
        let port = free_port();
        let tok = token("publish");
        let spec = format!("127.0.0.1:{port}:8000");
        let mut child = spawn_ready(
            &[
                "--network",
                "private",
                "--net-helper",
                helper,
                "-p",
                &spec,
                "--timeout",
                "30",
            ],
            "mkdir /tmp/w; echo published > /tmp/w/index.html; httpd -p 8000 -h /tmp/w; echo ready; sleep 30",
            &tok,
        );
        let mut body = String::new();
        let ok = wait_until(Duration::from_secs(10), || {
            let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else {
                return false;
            };
            let _ = c.write_all(b"GET / HTTP/1.0\r\n\r\n");
            body.clear();
            let _ = c.read_to_string(&mut body);
            body.contains("published")
        });
        let leftover = slirp_api_dirs(child.id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(ok, "{helper}: {body}");
        assert!(leftover.is_empty(), "{helper}: {leftover:?}");
    }
}

/// slirp4netns API socket directories nsrun process `pid` made (in /run as root, else /tmp).
fn slirp_api_dirs(pid: u32) -> Vec<std::path::PathBuf> {
    let prefix = format!("nsrun-slirp-{pid}-");
    [std::path::PathBuf::from("/run"), std::env::temp_dir()]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// UDP publishes too, behind either helper (nsrun relays it): datagrams to the host port reach
/// a server inside, and its answers come back to each client (busybox has no UDP server, so the
/// probe's `udpecho` is the server).
#[test]
fn published_udp_ports_reach_a_server_inside() {
    let probe = confine_common::probe();
    let vol = format!("{}:/probe:ro", probe.display());
    for helper in ["pasta", "slirp4netns"] {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let spec = format!("127.0.0.1:{port}:5353/udp");
        let tok = token("publish-udp");
        let mut child = spawn_ready(
            &[
                "--network",
                "private",
                "--net-helper",
                helper,
                "-p",
                &spec,
                "-v",
                &vol,
                "--timeout",
                "30",
            ],
            "exec /probe udpecho 5353 50",
            &tok,
        );
        let clients: Vec<UdpSocket> = (0..2)
            .map(|_| {
                let c = UdpSocket::bind("127.0.0.1:0").unwrap();
                c.set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                c
            })
            .collect();
        let mut got = Vec::new();
        for (i, client) in clients.iter().enumerate() {
            let msg = format!("ping{i}");
            let ok = wait_until(Duration::from_secs(10), || {
                let _ = client.send_to(msg.as_bytes(), ("127.0.0.1", port));
                let mut buf = [0u8; 64];
                client.recv(&mut buf).is_ok_and(|n| {
                    got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                    true
                })
            });
            assert!(ok, "{helper}: no answer through the published UDP port");
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(got, ["echo:ping0", "echo:ping1"], "{helper}");
    }
}

/// The refusals of a machine set up differently, each one line with exit 125: neither helper
/// installed (naming the Debian package), the requested one missing, and rootless with
/// `/dev/net/tun` 0600. As root, a private mount namespace hides the helpers (a character device
/// bound over each) or swaps in a 0600 tun device; the last run drops to the test user.
#[test]
fn missing_helpers_and_a_closed_tun_are_one_line_refusals() {
    if !is_root() {
        // A user cannot mount over /usr/bin; the root pass covers the rootless refusal too.
        return;
    }
    let hide = |paths: &[&str]| -> String {
        paths
            .iter()
            .filter(|p| std::path::Path::new(p).exists())
            .map(|p| format!("mount --bind /dev/null {p} && "))
            .collect()
    };
    let in_ns = |setup: &str, prefix: &str, flags: &str| {
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "{setup}exec {prefix} \"$0\" run --rootfs \"$1\" --network private {flags} -- true"
            ))
            .arg(nsrun_bin())
            .arg(rootfs())
            .output()
            .expect("unshare(1)")
    };
    let both = hide(&[
        "/usr/bin/pasta",
        "/usr/bin/slirp4netns",
        "/usr/local/bin/pasta",
    ]);
    for (setup, flags, want) in [
        (
            both.as_str(),
            "",
            "nsrun: --network private needs pasta, which is not installed (Debian package passt)",
        ),
        (
            both.as_str(),
            "--net-helper slirp4netns",
            "nsrun: --network private needs slirp4netns, which is not installed (Debian package slirp4netns)",
        ),
    ] {
        let o = in_ns(setup, "", flags);
        assert_code(&o, 125);
        assert_eq!(stderr(&o).trim_end(), want, "{flags}");
    }
    // Only pasta missing: slirp4netns stands in, said once.
    let o = in_ns(&hide(&["/usr/bin/pasta", "/usr/local/bin/pasta"]), "", "");
    assert_code(&o, 0);
    assert!(stderr(&o).contains("pasta not found"), "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));

    // Rootless with /dev/net/tun 0600: the binary and rootfs must be readable by the user.
    if Command::new("id")
        .arg("nsrun-test")
        .output()
        .is_ok_and(|o| !o.status.success())
    {
        assert!(!in_ci(), "CI creates the user nsrun-test");
        return;
    }
    let dir = std::env::temp_dir().join(format!("nsrun-tun-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("nsrun");
    std::fs::copy(nsrun_bin(), &bin).unwrap();
    let closed = dir.join("tun");
    std::fs::write(&closed, "").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount --bind {} /dev/net/tun && exec setpriv --reuid=nsrun-test --regid=nsrun-test --init-groups env -i PATH=/usr/bin:/bin \"$0\" run --rootfs \"$1\" --network private -- true",
            closed.display()
        ))
        .arg(&bin)
        .arg(rootfs())
        .output()
        .expect("unshare(1)");
    let _ = std::fs::remove_dir_all(&dir);
    assert_code(&o, 125);
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("nsrun: /dev/net/tun is not readable and writable by this user"),
        "{err}"
    );
    assert!(err.contains("chmod 0666 /dev/net/tun"), "{err}");
}

/// The helper belongs to the run: gone after a normal end, a timeout, and a SIGKILL of nsrun;
/// never started for `none` or `host`.
#[test]
fn helper_dies_with_the_run() {
    for (mode, expect) in [("private", 1), ("none", 0), ("host", 0)] {
        let tok = token("helper");
        let mut child = spawn_ready(&["--network", mode], "echo ready; sleep 30", &tok);
        let helpers = helper_children(child.id());
        assert_eq!(helpers.len(), expect, "{mode}: {helpers:?}");
        // SIGKILL of nsrun itself.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        child.wait().unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || helpers
                .iter()
                .all(|p| !alive(*p))
                && pids_with(&tok).is_empty()),
            "{mode}: helper or tool survived SIGKILL of nsrun"
        );
    }
    // Normal end and timeout: the helper is killed when the run ends.
    for (script, flags) in [
        ("echo ready; sleep 1", vec![]),
        ("echo ready; sleep 30", vec!["--timeout", "1"]),
    ] {
        let tok = token("helper-end");
        let mut f = vec!["--network", "private"];
        f.extend(flags);
        let mut child = spawn_ready(&f, script, &tok);
        let helpers = helper_children(child.id());
        assert_eq!(helpers.len(), 1, "{script}");
        child.wait().unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || helpers
                .iter()
                .all(|p| !alive(*p))),
            "{script}: {helpers:?}"
        );
    }
}

// ---- as root: a fake internet ------------------------------------------------------------------

/// A network namespace with a veth to the host, addresses and routes; deleted on drop.
struct FakeInternet {
    name: String,
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("ip(8)");
    assert!(st.success(), "ip {args:?}");
}

impl FakeInternet {
    fn up() -> FakeInternet {
        let id = std::process::id() % 100000;
        let name = format!("nsrun-inet-{id}");
        let (h, i) = (format!("nsi{id}h"), format!("nsi{id}i"));
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        ip(&["netns", "add", &name]);
        let fi = FakeInternet { name: name.clone() };
        ip(&["link", "add", &h, "type", "veth", "peer", "name", &i]);
        ip(&["link", "set", &i, "netns", &name]);
        for a in ["198.51.100.1/24", "10.77.0.1/24"] {
            ip(&["addr", "add", a, "dev", &h]);
        }
        ip(&["-6", "addr", "add", "2001:db8:1::1/64", "dev", &h, "nodad"]);
        ip(&["link", "set", &h, "up"]);
        ip(&["route", "add", "169.254.169.254/32", "dev", &h]);
        for a in [
            "198.51.100.2/24",
            "198.51.100.3/24",
            "10.77.0.2/24",
            "169.254.169.254/32",
        ] {
            ip(&["-n", &name, "addr", "add", a, "dev", &i]);
        }
        ip(&[
            "-n",
            &name,
            "-6",
            "addr",
            "add",
            "2001:db8:1::2/64",
            "dev",
            &i,
            "nodad",
        ]);
        ip(&["-n", &name, "link", "set", &i, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &name,
            "route",
            "add",
            "default",
            "via",
            "198.51.100.1",
        ]);

        // Sockets stay in the namespace they were made in: bind them from a thread that joined it.
        let path = format!("/run/netns/{name}");
        let (tcp4, tcp6, udp, dns_tcp) = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            (
                TcpListener::bind("0.0.0.0:80").unwrap(),
                TcpListener::bind("[2001:db8:1::2]:80").unwrap(),
                UdpSocket::bind("198.51.100.2:53").unwrap(),
                TcpListener::bind("198.51.100.2:53").unwrap(),
            )
        })
        .join()
        .unwrap();
        serve_http(tcp4, "inet");
        serve_http(tcp6, "inet");
        std::thread::spawn(move || serve_dns(udp));
        std::thread::spawn(move || serve_dns_tcp(dns_tcp));
        fi
    }
}

impl Drop for FakeInternet {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The fake internet's answer to `q`: example.test, other.test, rebind.test (a public-looking
/// name with a private address) and big.test (40 addresses, too many for a 512-byte UDP answer;
/// the last one is other.test's).
fn dns_answer(q: &[u8]) -> Option<Vec<u8>> {
    let question = dns::question(q)?;
    let addr: Option<IpAddr> = match question.name.as_str() {
        "example.test" => Some("198.51.100.2".parse().unwrap()),
        "other.test" => Some("198.51.100.3".parse().unwrap()),
        "rebind.test" => Some("10.77.0.2".parse().unwrap()),
        "big.test" => {
            let mut r = dns::reply_error(q, &question, 0);
            r[7] = 40;
            for i in 0..40u8 {
                let last = if i == 39 { 3 } else { 100 + i };
                r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 51, 100, last]);
            }
            return Some(r);
        }
        _ => None,
    };
    Some(match addr {
        Some(a) => dns::reply_address(q, &question, a, 60),
        None => dns::reply_error(q, &question, 3),
    })
}

/// DNS over UDP: answers over 512 bytes are truncated (TC set, no records), as without EDNS.
fn serve_dns(sock: UdpSocket) {
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            return;
        };
        let q = &buf[..n];
        let Some(mut reply) = dns_answer(q) else {
            continue;
        };
        if reply.len() > 512 {
            let end = dns::question(q).unwrap().end;
            reply.truncate(end);
            reply[2] |= 0x02;
            reply[6..12].fill(0);
        }
        let _ = sock.send_to(&reply, from);
    }
}

/// DNS over TCP: two-byte length in front of every message.
fn serve_dns_tcp(listener: TcpListener) {
    for conn in listener.incoming() {
        let Ok(mut c) = conn else { continue };
        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
        loop {
            let mut len = [0u8; 2];
            if c.read_exact(&mut len).is_err() {
                break;
            }
            let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
            if c.read_exact(&mut q).is_err() {
                break;
            }
            let Some(reply) = dns_answer(&q) else { break };
            let mut out = (reply.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(&reply);
            if c.write_all(&out).is_err() {
                break;
            }
        }
    }
}

/// A shell `printf` argument that writes `bytes` (octal escapes: busybox printf has no `\x`).
fn printf_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:03o}")).collect()
}

#[test]
fn private_mode_against_a_fake_internet() {
    if !is_root() {
        // Rootless, a user cannot add interfaces to the host: host_loopback_only_when_allowed
        // covers what it can.
        return;
    }
    let _inet = FakeInternet::up();
    let dns_flags = ["--dns", "198.51.100.2"];

    for helper in ["pasta", "slirp4netns"] {
        // Safe by default: public v4 and v6 reachable, TCP and UDP; private and metadata not.
        let script = format!(
            "{}{}{}{}nslookup -type=a example.test | grep -c 198.51.100.2; nslookup -type=a other.test 198.51.100.2 | grep -c 198.51.100.3",
            fetch("198.51.100.3", 80),
            fetch("10.77.0.2", 80),
            fetch("169.254.169.254", 80),
            if helper == "pasta" { fetch("2001:db8:1::2", 80) } else { String::new() },
        );
        let mut f = vec!["--network", "private", "--net-helper", helper];
        f.extend(dns_flags);
        let o = sh(&f, &script);
        assert_code(&o, 0);
        let out = stdout(&o);
        let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines[0], "hello-inet", "{helper}: {out}");
        assert!(
            !lines[1].contains("hello"),
            "{helper}: private range reached: {out}"
        );
        assert!(
            !lines[2].contains("hello"),
            "{helper}: metadata reached: {out}"
        );
        if helper == "pasta" {
            assert_eq!(lines[3], "hello-inet", "{helper}: IPv6: {out}");
        }
        assert_eq!(
            &lines[lines.len() - 2..],
            ["1", "1"],
            "{helper}: DNS: {out}"
        );

        // Explicitly allowed private and metadata destinations are reachable.
        let mut f = vec!["--network", "private", "--net-helper", helper];
        f.extend([
            "--egress-allow",
            "10.77.0.2:80/tcp",
            "--egress-allow",
            "169.254.169.254",
            "--egress-allow",
            "0.0.0.0/0",
        ]);
        let o = sh(
            &f,
            &format!(
                "{}{}{}",
                fetch("10.77.0.2", 80),
                fetch("169.254.169.254", 80),
                fetch("198.51.100.3", 80)
            ),
        );
        assert_code(&o, 0);
        assert_eq!(
            stdout(&o).matches("hello-inet").count(),
            3,
            "{helper}: {}",
            stdout(&o)
        );
    }

    // none: nothing.
    let o = sh(&[], &fetch("198.51.100.3", 80));
    assert!(!stdout(&o).contains("hello"), "{}", stdout(&o));
    // host: the host's interfaces, the fake internet included.
    let o = sh(
        &["--network", "host"],
        &format!(
            "ip -4 addr | grep -c 198.51.100.1; {}",
            fetch("198.51.100.3", 80)
        ),
    );
    assert!(stdout(&o).starts_with("1\nhello-inet"), "{}", stdout(&o));

    // The allowlist: exactly example.test:80 (and what it resolves to, once resolved).
    let mut f = vec!["--network", "private", "--egress-allow", "example.test:80"];
    f.extend(dns_flags);
    let script = format!(
        "{}nslookup -type=a example.test >/dev/null; echo ns=$?; {}{}{}nslookup -type=a other.test; echo ns=$?; nslookup -type=a other.test 198.51.100.2; echo direct=$?",
        fetch("198.51.100.2", 80), // before the lookup: not yet allowed
        fetch("198.51.100.2", 80),
        fetch("198.51.100.3", 80), // a hard-coded address of another host
        fetch("2001:db8:1::2", 80),
    );
    let o = sh(&f, &script);
    assert_code(&o, 0);
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines[0].contains("hello"), "{out}");
    assert_eq!(lines[1], "ns=0", "{out}");
    assert_eq!(lines[2], "hello-inet", "{out}");
    assert!(!lines[3].contains("hello"), "{out}");
    assert!(!lines[4].contains("hello"), "{out}");
    assert!(out.contains("REFUSED"), "{out}");
    assert!(out.contains("direct=1"), "{out}");

    // An allowed name that does not exist is refused before anything starts, in one line.
    let mut f = vec!["--network", "private", "--egress-allow", "nosuch.test:443"];
    f.extend(dns_flags);
    let o = sh(&f, "echo ran");
    assert_code(&o, 125);
    assert!(!stdout(&o).contains("ran"), "{}", stdout(&o));
    assert_eq!(
        stderr(&o).trim_end(),
        "nsrun: --egress-allow nosuch.test: the name does not exist (NXDOMAIN from 198.51.100.2)",
    );

    // A name that resolves to a private address stays unreachable (DNS rebinding).
    let mut f = vec!["--network", "private", "--egress-allow", "rebind.test"];
    f.extend(dns_flags);
    let o = sh(
        &f,
        &format!(
            "nslookup -type=a rebind.test | grep -c 10.77.0.2; {}",
            fetch("10.77.0.2", 80)
        ),
    );
    assert!(stdout(&o).starts_with("1\n"), "{}", stdout(&o));
    assert!(!stdout(&o).contains("hello"), "{}", stdout(&o));

    // UDP to an allowed address and port goes through; to another port, not.
    let mut f = vec![
        "--network",
        "private",
        "--egress-allow",
        "198.51.100.2:53/udp",
    ];
    f.extend(dns_flags);
    let o = sh(
        &f,
        &format!(
            "nslookup -type=a other.test 198.51.100.2 | grep -c 198.51.100.3; {}",
            fetch("198.51.100.2", 80)
        ),
    );
    assert!(stdout(&o).starts_with("1\n"), "{}", stdout(&o));
    assert!(!stdout(&o).contains("hello"), "{}", stdout(&o));

    // A truncated UDP answer is retried over TCP: the forwarder takes TCP queries, asks the
    // upstream over TCP and allows every address of the whole answer (other.test's address is
    // the 40th, past what fits in 512 bytes).
    let q = dns::query_a("big.test", 0x4242).unwrap();
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    let mut f = vec!["--network", "private", "--egress-allow", "big.test:80"];
    f.extend(dns_flags);
    let o = sh(
        &f,
        &format!(
            "{}nslookup -type=a big.test >/dev/null 2>&1; {}printf '{}' | timeout 5 nc 127.0.0.53 53 | wc -c; {}",
            fetch("198.51.100.3", 80),
            fetch("198.51.100.3", 80),
            printf_bytes(&framed),
            fetch("198.51.100.3", 80),
        ),
    );
    assert_code(&o, 0);
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines[0].contains("hello"), "before any lookup: {out}");
    assert!(
        !lines[1].contains("hello"),
        "after the truncated UDP answer: {out}"
    );
    let size: usize = lines[2].trim().parse().unwrap_or(0);
    assert_eq!(size, 2 + q.len() + 40 * 16, "TCP answer: {out}");
    assert_eq!(lines[3], "hello-inet", "after the TCP answer: {out}");
}

/// The filter and the routes belong to the run's user namespace, where the tool holds no
/// CAP_NET_ADMIN: it cannot take the filter away or reroute around it.
#[test]
fn tool_cannot_change_the_runs_network() {
    let o = sh(
        &["--network", "private"],
        "ip route del default; echo route=$?; ip link set lo down; echo link=$?; ip addr add 10.9.9.9/32 dev lo; echo addr=$?",
    );
    assert_code(&o, 0);
    let out = stdout(&o);
    for k in ["route=0", "link=0", "addr=0"] {
        assert!(!out.contains(k), "{out}");
    }
    assert!(
        stderr(&o).contains("Operation not permitted"),
        "{}",
        stderr(&o)
    );
}
