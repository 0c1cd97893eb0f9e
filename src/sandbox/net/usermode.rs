//! The user-mode NAT helper of a private run: pasta (Debian package `passt`) or slirp4netns.
//!
//! Started by the parent once the run's namespaces exist, attached to them through descriptors
//! the parent opened (`/proc/self/fd/N`, so neither helper needs access to the run's processes),
//! with every automatic port forwarding off (pasta's `-t/-u/-T/-U auto` would forward every port
//! listening on the host's loopback into the run) and the gateway-to-host-loopback mapping off
//! unless `host.nsrun.internal` is allowed. It belongs to the run: PDEATHSIG kills it with nsrun
//! (even on SIGKILL), it exits by itself when the run's network namespace goes away, and the
//! parent kills and reaps it when the run ends.

use std::fs::File;
use std::io::{Read, Seek};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::{Deserialize, Serialize};

use super::parent::NetError;
use super::{PortMap, Proto};
use crate::sandbox::sys;

/// Which user-mode helper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// pasta, from Debian's `passt` package: the default (faster start and far faster transfers,
    /// see the README's figures).
    Pasta,
    /// slirp4netns: the fallback (no TCP window scaling, no port publishing in nsrun).
    Slirp4netns,
}

impl Backend {
    pub fn program(self) -> &'static str {
        match self {
            Backend::Pasta => "pasta",
            Backend::Slirp4netns => "slirp4netns",
        }
    }

    pub fn package(self) -> &'static str {
        match self {
            Backend::Pasta => "passt",
            Backend::Slirp4netns => "slirp4netns",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pasta" => Ok(Backend::Pasta),
            "slirp4netns" => Ok(Backend::Slirp4netns),
            o => Err(format!(
                "unknown network helper {o:?}: expected pasta or slirp4netns"
            )),
        }
    }
}

/// Finds a program on `PATH` or in the usual system directories (a user's `PATH` often lacks
/// `/usr/sbin`, where `nft` lives).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .filter(|d| !d.is_empty())
        .chain(["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        });
    found
}

/// Picks the helper: the requested one, or pasta, else slirp4netns (with a notice to print).
pub fn choose(requested: Option<Backend>) -> Result<(Backend, PathBuf, Option<String>), NetError> {
    if let Some(b) = requested {
        return find_program(b.program())
            .map(|p| (b, p, None))
            .ok_or(NetError::Missing {
                program: b.program(),
                package: b.package(),
            });
    }
    if let Some(p) = find_program("pasta") {
        return Ok((Backend::Pasta, p, None));
    }
    if let Some(p) = find_program("slirp4netns") {
        return Ok((
            Backend::Slirp4netns,
            p,
            Some(
                "pasta not found (Debian package passt): using slirp4netns, which is slower".into(),
            ),
        ));
    }
    Err(NetError::Missing {
        program: "pasta",
        package: "passt",
    })
}

/// Rootless, both helpers open `/dev/net/tun`, which some machines ship 0600.
pub fn check_tun() -> Result<(), NetError> {
    // SAFETY: access(2) reads a NUL-terminated path.
    let ok = unsafe { libc::access(c"/dev/net/tun".as_ptr(), libc::R_OK | libc::W_OK) } == 0;
    if ok {
        return Ok(());
    }
    Err(NetError::Tun)
}

/// Where slirp4netns puts its gateway (and host loopback, when allowed).
const SLIRP_GATEWAY: &str = "10.0.2.2";

/// The gateway addresses the run will see: the host's default gateways for pasta (it copies the
/// host's routes), slirp4netns' fixed one.
pub fn gateways(backend: Backend) -> Vec<IpAddr> {
    match backend {
        Backend::Slirp4netns => vec![SLIRP_GATEWAY.parse().expect("addr")],
        Backend::Pasta => {
            let mut out = Vec::new();
            if let Ok(t) = std::fs::read_to_string("/proc/net/route") {
                out.extend(default_gateway_v4(&t));
            }
            if let Ok(t) = std::fs::read_to_string("/proc/net/ipv6_route") {
                out.extend(default_gateway_v6(&t));
            }
            out
        }
    }
}

/// The first default route's gateway in `/proc/net/route`.
pub fn default_gateway_v4(table: &str) -> Option<IpAddr> {
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 7 && f[1] == "00000000" && f[7] == "00000000" {
            let gw = u32::from_str_radix(f[2], 16).ok()?;
            // The kernel prints the address's bytes as a native-endian word.
            Some(IpAddr::V4(std::net::Ipv4Addr::from(gw.to_ne_bytes())))
        } else {
            None
        }
    })
}

/// The first default route's gateway in `/proc/net/ipv6_route`.
pub fn default_gateway_v6(table: &str) -> Option<IpAddr> {
    table.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 4 && f[0] == "00000000000000000000000000000000" && f[1] == "00" {
            let gw = u128::from_str_radix(f[4], 16).ok()?;
            (gw != 0).then_some(IpAddr::V6(gw.into()))
        } else {
            None
        }
    })
}

/// What the helper attaches to.
pub struct Attach<'a> {
    pub userns: &'a File,
    pub netns: &'a File,
    pub publish: &'a [PortMap],
    /// Map the gateway to the host's loopback (only when `host.nsrun.internal` is allowed).
    pub map_host_loopback: bool,
}

/// A running helper; killed and reaped on drop.
#[derive(Debug)]
pub struct Helper {
    child: Option<Child>,
    pub backend: Backend,
    /// slirp4netns quits when this closes.
    _exit_fd: Option<OwnedFd>,
}

impl Helper {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Helper {
    /// SIGKILL now; the reaping (tens of milliseconds: the kernel tears down the tap device
    /// first) happens on a thread of its own, so the run's end does not wait for it. When the
    /// process exits first, the helper is reaped by whoever inherits it, and is dead already.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = child.kill();
        let pid = child.id() as libc::pid_t;
        let _ = std::thread::Builder::new()
            .name("nsrun-net-reap".into())
            .spawn(move || sys::waitpid(pid, 0));
    }
}

fn memfd(name: &std::ffi::CStr) -> Result<File, NetError> {
    // SAFETY: memfd_create takes a NUL-terminated name; the fd returned is ours.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(NetError::Io(
            "memfd_create",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fd was just created and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Lets `fds` survive exec in the helper and arms PDEATHSIG. Runs between fork and exec.
fn prepare_child(cmd: &mut Command, fds: Vec<RawFd>) {
    // SAFETY: the closure calls only async-signal-safe syscalls (prctl, fcntl).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// A helper started but maybe not ready yet; see [`Starting::wait_ready`].
#[derive(Debug)]
pub struct Starting {
    helper: Helper,
    ready: File,
    log: File,
    /// slirp4netns only: its API socket's directory and the TCP ports to publish through it.
    api: Option<(ApiDir, Vec<PortMap>)>,
}

/// A private directory for slirp4netns' API socket, removed on drop (and as soon as the ports
/// are published: nothing of it stays on the host while the run goes on).
#[derive(Debug)]
struct ApiDir(PathBuf);

impl ApiDir {
    /// Root's slirp4netns sandboxes itself (`--enable-sandbox`) in a mount namespace that keeps
    /// only the host's /etc and /run: the socket must be under /run to be seen from here.
    fn create() -> Result<ApiDir, NetError> {
        // SAFETY: geteuid cannot fail.
        let base = if unsafe { libc::geteuid() } == 0 {
            PathBuf::from("/run")
        } else {
            std::env::temp_dir()
        };
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = base.join(format!("nsrun-slirp-{}-{n}", std::process::id()));
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| NetError::Io("create the directory of slirp4netns' API socket", e))?;
        Ok(ApiDir(dir))
    }

    fn socket(&self) -> PathBuf {
        self.0.join("api.sock")
    }
}

impl Drop for ApiDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Publishes `ports` through slirp4netns' API socket (`add_hostfwd`, one request per
/// connection). The socket appears just after the ready signal: it is waited for, briefly.
fn publish_through_api(api: &ApiDir, ports: &[PortMap]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    let path = api.socket();
    let deadline = Instant::now() + Duration::from_secs(5);
    for p in ports {
        let mut conn = loop {
            match UnixStream::connect(&path) {
                Ok(c) => break c,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("its API socket did not answer: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        };
        let request = serde_json::json!({
            "execute": "add_hostfwd",
            "arguments": {
                "proto": "tcp",
                "host_addr": p.host_ip.to_string(),
                "host_port": p.host_port,
                "guest_port": p.container_port,
            }
        });
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        conn.write_all(request.to_string().as_bytes())
            .and_then(|_| conn.shutdown(std::net::Shutdown::Write))
            .map_err(|e| format!("its API socket: {e}"))?;
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        let value: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
        if value.get("return").is_none() {
            let why = value["error"]["desc"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| answer.trim().to_string());
            return Err(format!(
                "-p {}:{}:{}: {why}",
                p.host_ip, p.host_port, p.container_port
            ));
        }
    }
    Ok(())
}

/// Starts `backend`; the caller does other set-up while it configures the run's interface, then
/// waits for it with [`Starting::wait_ready`].
pub fn start(backend: Backend, program: &Path, a: &Attach) -> Result<Starting, NetError> {
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| NetError::Io("pipe", e.into()))?;
    let log = memfd(c"nsrun-net-helper")?;
    let (u, n, w) = (
        a.userns.as_raw_fd(),
        a.netns.as_raw_fd(),
        ready_w.as_raw_fd(),
    );
    let mut cmd = Command::new(program);
    let mut keep = vec![u, n, w];
    let mut exit_fd = None;
    let mut api = None;
    match backend {
        Backend::Pasta => {
            cmd.args(["-f", "-q", "--config-net", "-T", "none", "-U", "none"]);
            // SAFETY: geteuid cannot fail.
            if nix::unistd::geteuid().is_root() {
                // pasta would switch to "nobody", who cannot open the namespace descriptors;
                // it confines itself (namespaces, seccomp, no capabilities) once attached.
                cmd.args(["--runas", "0"]);
            }
            if !a.map_host_loopback {
                cmd.arg("--no-map-gw");
            }
            // Published UDP ports are relayed by nsrun itself (see `relay`).
            let specs: Vec<String> = a
                .publish
                .iter()
                .filter(|p| p.proto == Proto::Tcp)
                .map(|p| format!("{}/{}:{}", p.host_ip, p.host_port, p.container_port))
                .collect();
            if specs.is_empty() {
                cmd.args(["-t", "none"]);
            }
            for s in specs {
                cmd.args(["-t", &s]);
            }
            cmd.args(["-u", "none"]);
            cmd.arg("-P").arg(format!("/proc/self/fd/{w}"));
            cmd.arg("--userns").arg(format!("/proc/self/fd/{u}"));
            cmd.arg("--netns").arg(format!("/proc/self/fd/{n}"));
        }
        Backend::Slirp4netns => {
            let tcp: Vec<PortMap> = a
                .publish
                .iter()
                .filter(|p| p.proto == Proto::Tcp)
                .cloned()
                .collect();
            if !tcp.is_empty() {
                if tcp.iter().any(|p| p.host_ip.is_ipv6()) {
                    return Err(NetError::PublishV6NeedsPasta);
                }
                let dir = ApiDir::create()?;
                cmd.arg(format!("--api-socket={}", dir.socket().display()));
                api = Some((dir, tcp));
            }
            let (exit_r, exit_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| NetError::Io("pipe", e.into()))?;
            keep.push(exit_r.as_raw_fd());
            cmd.args(["--configure", "--mtu=65520", "--disable-dns"]);
            if !a.map_host_loopback {
                cmd.arg("--disable-host-loopback");
            }
            if nix::unistd::geteuid().is_root() {
                cmd.arg("--enable-sandbox");
            }
            cmd.arg(format!("--ready-fd={w}"));
            cmd.arg(format!("--exit-fd={}", exit_r.as_raw_fd()));
            cmd.arg(format!("--userns-path=/proc/self/fd/{u}"));
            cmd.args(["--netns-type=path", &format!("/proc/self/fd/{n}"), "tap0"]);
            exit_fd = Some((exit_r, exit_w));
        }
    }
    let log_fd = log.try_clone().map_err(|e| NetError::Io("dup", e))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(
            log_fd.try_clone().map_err(|e| NetError::Io("dup", e))?,
        ))
        .stderr(Stdio::from(log_fd));
    prepare_child(&mut cmd, keep);
    let child = cmd
        .spawn()
        .map_err(|e| NetError::Spawn(backend.program(), e))?;
    drop(ready_w);
    let exit_fd = exit_fd.map(|(r, w)| {
        drop(r);
        w
    });
    Ok(Starting {
        helper: Helper {
            child: Some(child),
            backend,
            _exit_fd: exit_fd,
        },
        ready: File::from(ready_r),
        log,
        api,
    })
}

impl Starting {
    /// Waits (at most 10 s) until the helper has configured the run's interface.
    pub fn wait_ready(self) -> Result<Helper, NetError> {
        let Starting {
            mut helper,
            ready: mut file,
            mut log,
            api,
        } = self;
        let backend = helper.backend;

        // Ready when the helper writes its pid (pasta's -P) or "1" (slirp4netns' --ready-fd).
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = Vec::new();
        let mut ready = false;
        while Instant::now() < deadline {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as i32;
            let mut pfd = [PollFd::new(
                std::os::fd::AsFd::as_fd(&file),
                PollFlags::POLLIN,
            )];
            match poll(
                &mut pfd,
                PollTimeout::try_from(left.max(1)).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(0) => break,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(NetError::Io("poll", e.into())),
            }
            let mut buf = [0u8; 64];
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => {
                    got.extend_from_slice(&buf[..k]);
                    if !got.is_empty() {
                        ready = true;
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(NetError::Io("read", e)),
            }
        }
        if ready {
            let Some((dir, ports)) = api else {
                return Ok(helper);
            };
            let published = publish_through_api(&dir, &ports);
            drop(dir);
            return match published {
                Ok(()) => Ok(helper),
                Err(message) => Err(NetError::HelperFailed {
                    program: backend.program(),
                    message,
                }),
            };
        }
        let status = helper.child.take().and_then(|mut c| {
            let _ = c.kill();
            c.wait().ok()
        });
        let mut text = String::new();
        let _ = log.rewind();
        let _ = log.read_to_string(&mut text);
        let message = text
            .lines()
            .filter(|l| !l.contains("syslog") && !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        Err(NetError::HelperFailed {
            program: backend.program(),
            message: if message.is_empty() {
                match status {
                    Some(s) if s.code().is_some() => format!("exited with status {s}"),
                    _ => "did not get ready within 10 s".into(),
                }
            } else {
                message
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_gateways_are_read_from_proc() {
        let v4 =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                  eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(default_gateway_v4(v4), Some("192.0.2.1".parse().unwrap()));
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n";
        assert_eq!(default_gateway_v6(v6), Some("fd00::1".parse().unwrap()));
        assert_eq!(default_gateway_v4("header\n"), None);
    }

    #[test]
    fn backends_parse() {
        assert_eq!("pasta".parse::<Backend>(), Ok(Backend::Pasta));
        assert!("vde".parse::<Backend>().is_err());
    }
}
