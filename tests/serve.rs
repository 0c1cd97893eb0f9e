//! `nsrun serve` end to end: the real binary, over real HTTP (TCP and a unix socket, TLS and
//! mTLS), with images from the test registry (scripts/registry.sh: NSRUN_TEST_REGISTRY).
#![allow(unused_crate_dependencies)]

mod support;

mod common;
mod images_common;

use common::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};

// ---- fixtures ----------------------------------------------------------------------------

/// The test registry, or `None` (outside CI only) to skip.
fn registry() -> Option<String> {
    match std::env::var("NSRUN_TEST_REGISTRY")
        .ok()
        .filter(|v| !v.is_empty())
    {
        Some(r) => Some(r),
        None => {
            assert!(
                !in_ci(),
                "CI must start the test registry (scripts/registry.sh)"
            );
            eprintln!("skipped: NSRUN_TEST_REGISTRY is not set");
            None
        }
    }
}

/// The busybox rootfs as an image (Cmd /bin/sh, PATH=/bin), pushed once per test process;
/// returns its reference.
fn image() -> Option<String> {
    static IMAGE: OnceLock<String> = OnceLock::new();
    let registry = registry()?;
    Some(
        IMAGE
            .get_or_init(|| {
                let mut b = tar::Builder::new(Vec::new());
                b.follow_symlinks(false);
                b.append_dir_all(".", rootfs()).unwrap();
                let tar = b.into_inner().unwrap();
                let layer = images_common::gzip(&tar);
                let config = serde_json::to_vec(&json!({
                    "architecture": "amd64", "os": "linux",
                    "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
                    "rootfs": {"type": "layers", "diff_ids": [images_common::sha256(&tar)]},
                }))
                .unwrap();
                let reference = format!(
                    "{registry}/nsrun-test-{}/serve-busybox:1",
                    nix::unistd::geteuid()
                );
                let r = nsrun::reference::Reference::parse(&reference).unwrap();
                let client = nsrun::registry::RegistryClient::new(&r, &Default::default()).unwrap();
                let layers = vec![(layer, "application/vnd.oci.image.layer.v1.tar+gzip".into())];
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(client.push_image(&layers, &config, false))
                    .unwrap();
                reference
            })
            .clone(),
    )
}

/// The repository pattern that allows [`image`].
fn image_pattern() -> String {
    let i = image().unwrap();
    format!("{}*", &i[..i.rfind('/').unwrap() + 1])
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

#[derive(Clone, Debug)]
enum Addr {
    Tcp(String),
    Unix(PathBuf),
}

/// A running `nsrun serve`, killed (SIGKILL, by pid) if the test did not stop it.
struct Server {
    child: Option<Child>,
    addr: Addr,
    dir: tempfile::TempDir,
    tokens: PathBuf,
}

/// `nsrun token new --tokens FILE --tenant NAME FLAGS…`; returns the token.
fn token_new(tokens: &Path, tenant: &str, flags: &[&str]) -> String {
    let o = Command::new(nsrun_bin())
        .args(["token", "new", "--tokens"])
        .arg(tokens)
        .args(["--tenant", tenant])
        .args(flags)
        .output()
        .unwrap();
    assert_code(&o, 0);
    stdout(&o).trim().to_string()
}

impl Server {
    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts a server on `listen` (`tcp` for 127.0.0.1 and a free port, `unix` for a socket in
    /// its directory) with the tokens file `prepare` fills.
    fn start(listen: &str, extra: &[&str], prepare: impl FnOnce(&Path)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens.json");
        prepare(&tokens);
        let listen_arg = match listen {
            "tcp" => "127.0.0.1:0".to_string(),
            "unix" => format!("unix:{}", dir.path().join("nsrun.sock").display()),
            other => other.to_string(),
        };
        let err_path = dir.path().join("serve.err");
        let child = Command::new(nsrun_bin())
            .args(["serve", "--listen", &listen_arg, "--tokens"])
            .arg(&tokens)
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .unwrap();
        let mut url = None;
        let up = wait_until(Duration::from_secs(30), || {
            let text = std::fs::read_to_string(&err_path).unwrap_or_default();
            url = text
                .lines()
                .find_map(|l| l.strip_prefix("nsrun serve: listening on "))
                .map(str::to_string);
            url.is_some()
        });
        assert!(
            up,
            "the server did not start: {}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        );
        let url = url.unwrap();
        let addr = if let Some(p) = url.strip_prefix("unix:") {
            Addr::Unix(p.into())
        } else {
            Addr::Tcp(
                url.trim_start_matches("http://")
                    .trim_start_matches("https://")
                    .to_string(),
            )
        };
        Server {
            child: Some(child),
            addr,
            dir,
            tokens,
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir().join("serve.err")).unwrap_or_default()
    }

    /// Waits (bounded) for the server to exit; returns its exit code.
    fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let child = self.child.as_mut().unwrap();
        let mut code = None;
        wait_until(limit, || match child.try_wait().unwrap() {
            Some(st) => {
                code = st.code();
                true
            }
            None => false,
        });
        if code.is_some() {
            self.child = None;
        }
        code
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---- a small HTTP client -----------------------------------------------------------------

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// Sends one request on a new connection; returns the response with its body unread.
async fn send(
    addr: &Addr,
    req: http::Request<Body>,
) -> hyper::Result<http::Response<hyper::body::Incoming>> {
    macro_rules! go {
        ($io:expr) => {{
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new($io)).await?;
            tokio::spawn(conn);
            sender.send_request(req).await
        }};
    }
    match addr {
        Addr::Tcp(a) => go!(tokio::net::TcpStream::connect(a).await.unwrap()),
        Addr::Unix(p) => go!(tokio::net::UnixStream::connect(p).await.unwrap()),
    }
}

fn request(method: &str, path: &str, token: Option<&str>) -> http::request::Builder {
    let mut b = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b
}

/// A request with a JSON (or empty) body; returns the status and the body (JSON if it is).
async fn call(
    addr: &Addr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut b = request(method, path, token);
    let body = match body {
        Some(v) => {
            b = b.header("content-type", "application/json");
            full(v.to_string())
        }
        None => full(Bytes::new()),
    };
    let resp = send(addr, b.body(body).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v)
}

/// The text body of a GET.
async fn get_text(addr: &Addr, path: &str, token: Option<&str>) -> (u16, String) {
    let resp = send(addr, request("GET", path, token).body(full("")).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
struct Sse {
    id: u64,
    kind: String,
    data: Value,
}

/// Reads the whole event stream of a run (it ends after `exited`).
async fn events(addr: &Addr, token: &str, id: &str, last: Option<u64>) -> Vec<Sse> {
    let mut b = request("GET", &format!("/v1/runs/{id}/events"), Some(token));
    if let Some(l) = last {
        b = b.header("last-event-id", l.to_string());
    }
    let resp = send(addr, b.body(full("")).unwrap()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    parse_sse(std::str::from_utf8(&text).unwrap())
}

fn parse_sse(text: &str) -> Vec<Sse> {
    text.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let mut e = Sse {
                id: 0,
                kind: String::new(),
                data: Value::Null,
            };
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    e.id = v.parse().unwrap();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    e.kind = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    e.data = serde_json::from_str(v).unwrap();
                }
            }
            e
        })
        .collect()
}

fn b64(v: &Value) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD
        .decode(v["data"].as_str().unwrap())
        .unwrap();
    String::from_utf8(b).unwrap()
}

fn sh_run(script: &str) -> Value {
    json!({"image": image().unwrap(), "command": ["sh", "-c", script]})
}

fn run_id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

/// Scratch directories the runner left under the server's cache root.
fn scratch_left(s: &Server) -> Vec<String> {
    std::fs::read_dir(s.dir().join("root/runs"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The runner's run ids in the server's audit log.
fn audited(s: &Server) -> Vec<Value> {
    std::fs::read_to_string(s.dir().join("root/audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

// ---- tests -------------------------------------------------------------------------------

/// The whole life of a run over a unix socket: wait=true with inputs, stdin, outputs and exit
/// code; the socket's mode; a stale socket file replaced; the audit record with the tenant.
#[test]
fn runs_over_a_unix_socket_with_files_in_and_out() {
    let Some(img) = image() else { return };
    let mut tok = String::new();
    let dir = tempfile::tempdir().unwrap();
    // A stale socket file (a killed server) does not stop a new server.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let s = Server::start(&format!("unix:{}", stale.display()), &[], |t| {
        tok = token_new(t, "acme", &["--allow-image", &image_pattern()]);
    });
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&stale).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let a = &s.addr;
    rt().block_on(async {
        assert_eq!(get_text(a, "/healthz", None).await, (200, "ok".into()));
        let (st, v) = call(
            a,
            "POST",
            "/v1/runs?wait=true",
            Some(&tok),
            Some(json!({
                "image": img,
                "command": ["sh", "-c", "cat /inputs/a.txt /inputs/sub/b.bin; read l; echo \"in:$l\"; echo $K; mkdir -p d; echo out > d/r.txt; echo err >&2; exit 3"],
                "inputs": {"a.txt": "A\n", "sub/b.bin": {"base64": "Qgo="}},
                "stdin": "typed\n",
                "env": {"K": "v"},
                "outputs": ["d/r.txt", "missing.txt"],
                "labels": {"job": "42"},
            })),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["state"], "exited");
        assert_eq!(v["tenant"], "acme");
        assert_eq!(v["labels"]["job"], "42");
        let r = &v["result"];
        assert_eq!(r["exitCode"], 3);
        assert_eq!(r["reason"], "exited");
        assert_eq!(r["stdout"], "A\nB\nin:typed\nv\n");
        assert_eq!(r["stderr"], "err\n");
        assert_eq!(r["outputs"][0], json!({"name": "d/r.txt", "size": 4, "missing": false, "truncated": false}));
        assert_eq!(r["outputs"][1]["missing"], true);
        assert!(r["image"]["digest"].as_str().unwrap().starts_with("sha256:"));
        let id = run_id(&v);
        assert_eq!(
            get_text(a, &format!("/v1/runs/{id}/outputs/d/r.txt"), Some(&tok)).await,
            (200, "out\n".into())
        );
        let (st, v) = call(a, "GET", &format!("/v1/runs/{id}/outputs/missing.txt"), Some(&tok), None).await;
        assert_eq!((st, v["error"]["code"].as_str()), (404, Some("not_found")));
        let (st, v) = call(a, "GET", &format!("/v1/runs/{id}"), Some(&tok), None).await;
        assert_eq!((st, &v["result"]["exitCode"]), (200, &json!(3)));
        // Every run is audited with its tenant.
        let audit = audited(&s);
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0]["labels"]["tenant"], "acme");
        assert_eq!(audit[0]["labels"]["run"], id.as_str());
    });
    drop(s);
    let _ = tok;
}

/// No token, a bad one, a good one; a revoked one stops working on SIGHUP, a new one starts.
#[test]
fn tokens_authenticate_and_reload_on_sighup() {
    if image().is_none() {
        return;
    }
    let mut tok = String::new();
    let s = Server::start("tcp", &[], |t| {
        tok = token_new(t, "acme", &["--allow-image", &image_pattern()]);
    });
    let a = &s.addr;
    rt().block_on(async {
        let (st, v) = call(a, "GET", "/metrics", None, None).await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (401, Some("unauthorized"))
        );
        let (st, _) = call(a, "GET", "/metrics", Some("nsr_not-a-token"), None).await;
        assert_eq!(st, 401);
        let (st, _) = call(
            a,
            "POST",
            "/v1/runs",
            Some("nsr_nope"),
            Some(sh_run("true")),
        )
        .await;
        assert_eq!(st, 401);
        let (st, _) = get_text(a, "/metrics", Some(&tok)).await;
        assert_eq!(st, 200);
        // The scheme is case-insensitive; another scheme is not a token.
        let lower =
            request("GET", "/metrics", None).header("authorization", format!("bearer {tok}"));
        assert_eq!(
            send(a, lower.body(full("")).unwrap())
                .await
                .unwrap()
                .status(),
            200
        );
        let basic =
            request("GET", "/metrics", None).header("authorization", format!("Basic {tok}"));
        assert_eq!(
            send(a, basic.body(full("")).unwrap())
                .await
                .unwrap()
                .status(),
            401
        );

        // Revoked in the file: still good until SIGHUP.
        let o = Command::new(nsrun_bin())
            .args(["token", "revoke", "--tokens"])
            .arg(&s.tokens)
            .args(["--tenant", "acme"])
            .output()
            .unwrap();
        assert_code(&o, 0);
        let tok2 = token_new(&s.tokens, "beta", &["--allow-image", &image_pattern()]);
        assert_eq!(get_text(a, "/metrics", Some(&tok)).await.0, 200);
        assert_eq!(get_text(a, "/metrics", Some(&tok2)).await.0, 401);
        s.signal(nix::sys::signal::Signal::SIGHUP);
        let mut ok = false;
        for _ in 0..250 {
            if get_text(a, "/metrics", Some(&tok)).await.0 == 401 {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            ok,
            "the revoked token still works after SIGHUP: {}",
            s.stderr()
        );
        assert_eq!(get_text(a, "/metrics", Some(&tok2)).await.0, 200);
        // A broken file on SIGHUP keeps the tenants the server has.
        std::fs::write(&s.tokens, "{broken").unwrap();
        s.signal(nix::sys::signal::Signal::SIGHUP);
        assert!(wait_until(Duration::from_secs(5), || s
            .stderr()
            .contains("reload failed")));
        assert_eq!(get_text(a, "/metrics", Some(&tok2)).await.0, 200);
    });
    // Bad token commands: one line, exit 125.
    let o = Command::new(nsrun_bin())
        .args(["token", "revoke", "--tokens"])
        .arg(s.dir().join("none.json"))
        .args(["--tenant", "x"])
        .output()
        .unwrap();
    assert_code(&o, 125);
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
}

/// Every rule of a policy refuses with its name, before anything runs; malformed requests are
/// 400 naming the field; an oversized body is 413.
#[test]
fn policy_ceilings_refuse_before_anything_runs() {
    let Some(img) = image() else { return };
    let mut tok = String::new();
    let mut open = String::new();
    let s = Server::start("tcp", &["--max-body", "4k"], |t| {
        tok = token_new(
            t,
            "strict",
            &[
                "--allow-image",
                &image_pattern(),
                "--allow-network",
                "none",
                "--allow-network",
                "private",
                "--allow-egress",
                "*.example.com:443",
                "--max-memory",
                "64m",
                "--max-cpus",
                "0.5",
                "--max-pids",
                "32",
                "--max-timeout",
                "10",
                "--max-output",
                "1k",
                "--runs-per-minute",
                "1000",
            ],
        );
        open = token_new(
            t,
            "open",
            &[
                "--allow-image",
                "*",
                "--max-concurrent",
                "1",
                "--runs-per-minute",
                "3",
            ],
        );
    });
    let a = &s.addr;
    rt().block_on(async {
        let with = |extra: Value| {
            let mut v = json!({"image": img, "command": ["true"]});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            v
        };
        let cases = [
            (
                json!({"image": "docker.io/library/alpine:3"}),
                403,
                Some("allowImage"),
            ),
            (json!({"network": "host"}), 403, Some("allowNetwork")),
            (
                json!({"network": "private", "egress": ["evil.org:443"]}),
                403,
                Some("egress"),
            ),
            (json!({"limits": {"memory": "65m"}}), 403, Some("maxMemory")),
            (json!({"limits": {"cpus": 1}}), 403, Some("maxCpus")),
            (json!({"limits": {"pids": 33}}), 403, Some("maxPids")),
            (json!({"timeout": 11}), 403, Some("maxTimeout")),
            (json!({"limits": {"output": "2k"}}), 403, Some("maxOutput")),
            (json!({"limits": {"memory": "lots"}}), 400, None),
            (json!({"limits": {"nope": 1}}), 400, None),
            (json!({"timeout": -1}), 400, None),
            (json!({"image": "oci:/etc"}), 400, None),
            (json!({"egress": ["a.example.com:443"]}), 400, None),
            (json!({"inputs": {"../x": "y"}}), 400, None),
            (json!({"command": "not-a-list"}), 400, None),
        ];
        for (extra, status, rule) in cases {
            let (st, v) = call(
                a,
                "POST",
                "/v1/runs?wait=true",
                Some(&tok),
                Some(with(extra.clone())),
            )
            .await;
            assert_eq!(st, status, "{extra}: {v}");
            assert_eq!(v["error"]["rule"].as_str(), rule, "{extra}: {v}");
            let msg = v["error"]["message"].as_str().unwrap();
            assert!(!msg.contains('\n'), "{msg}");
            if status == 400 {
                assert_eq!(v["error"]["code"], "bad_request");
            }
        }
        // The field is named.
        let (_, v) = call(
            a,
            "POST",
            "/v1/runs",
            Some(&tok),
            Some(with(json!({"limits": {"memory": "lots"}}))),
        )
        .await;
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("limits.memory: "),
            "{v}"
        );
        let (_, v) = call(
            a,
            "POST",
            "/v1/runs",
            Some(&tok),
            Some(with(json!({"command": "x"}))),
        )
        .await;
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("command: "),
            "{v}"
        );
        // Malformed JSON, and a body over --max-body.
        let resp = send(
            a,
            request("POST", "/v1/runs", Some(&tok))
                .header("content-type", "application/json")
                .body(full("{nope"))
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 400);
        let big = json!({"image": img, "stdin": "x".repeat(8192)});
        let (st, v) = call(a, "POST", "/v1/runs", Some(&tok), Some(big)).await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (413, Some("payload_too_large"))
        );
        // Nothing ran: no audit record, no scratch.
        assert!(audited(&s).is_empty());
        assert!(scratch_left(&s).is_empty());

        // Within the ceilings it runs, with the ceilings as its limits.
        let (st, v) = call(
            a,
            "POST",
            "/v1/runs?wait=true",
            Some(&tok),
            Some(with(
                json!({"command": ["sh", "-c", "head -c 3000 /dev/zero | tr '\\0' x"]}),
            )),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["result"]["exitCode"], 0);
        assert_eq!(v["result"]["stdout"].as_str().unwrap().len(), 1024);
        assert_eq!(v["result"]["stdoutTruncated"], true);
        let audit = audited(&s);
        assert_eq!(audit[0]["limits"]["memory"], 64 << 20);
        assert_eq!(audit[0]["limits"]["pids"], 32);

        // maxConcurrent 1: a second run while one goes is 429; runsPerMinute 3.
        let (st, v) = call(a, "POST", "/v1/runs", Some(&open), Some(sh_run("sleep 30"))).await;
        assert_eq!(st, 201, "{v}");
        let first = run_id(&v);
        let (st, v) = call(a, "POST", "/v1/runs", Some(&open), Some(sh_run("true"))).await;
        assert_eq!(
            (st, v["error"]["rule"].as_str()),
            (429, Some("maxConcurrent")),
            "{v}"
        );
        let (st, _) = call(a, "DELETE", &format!("/v1/runs/{first}"), Some(&open), None).await;
        assert_eq!(st, 200);
        for _ in 0..2 {
            let (st, v) = call(
                a,
                "POST",
                "/v1/runs?wait=true",
                Some(&open),
                Some(sh_run("true")),
            )
            .await;
            assert_eq!(st, 200, "{v}");
        }
        let (st, v) = call(a, "POST", "/v1/runs", Some(&open), Some(sh_run("true"))).await;
        assert_eq!(
            (st, v["error"]["rule"].as_str()),
            (429, Some("runsPerMinute")),
            "{v}"
        );
        assert_eq!(v["error"]["code"], "too_many_requests");
    });
}

/// A tenant sees only its own runs: another tenant's id is 404 everywhere.
#[test]
fn tenants_see_only_their_own_runs() {
    if image().is_none() {
        return;
    }
    let (mut ta, mut tb) = (String::new(), String::new());
    let s = Server::start("tcp", &[], |t| {
        ta = token_new(t, "a", &["--allow-image", &image_pattern()]);
        tb = token_new(t, "b", &["--allow-image", &image_pattern()]);
    });
    let a = &s.addr;
    rt().block_on(async {
        let (st, v) = call(a, "POST", "/v1/runs", Some(&ta), Some(json!({"image": image().unwrap(), "command": ["sh", "-c", "echo x > o; sleep 1"], "outputs": ["o"]}))).await;
        assert_eq!(st, 201, "{v}");
        let id = run_id(&v);
        for (m, p) in [
            ("GET", format!("/v1/runs/{id}")),
            ("GET", format!("/v1/runs/{id}/events")),
            ("GET", format!("/v1/runs/{id}/outputs/o")),
            ("DELETE", format!("/v1/runs/{id}")),
        ] {
            let (st, v) = call(a, m, &p, Some(&tb), None).await;
            assert_eq!((st, v["error"]["code"].as_str()), (404, Some("not_found")), "{m} {p}");
        }
        let (st, _) = call(a, "GET", "/v1/runs/r-0000", Some(&ta), None).await;
        assert_eq!(st, 404);
        // Still there, untouched, for its owner.
        let ev = events(a, &ta, &id, None).await;
        assert_eq!(ev.last().unwrap().data["exitCode"], 0);
        assert_eq!(get_text(a, &format!("/v1/runs/{id}/outputs/o"), Some(&ta)).await, (200, "x\n".into()));
    });
}

/// Events come in order (queued, pulling, started, stdout/stderr as written, exited) live;
/// a late client gets them all replayed, or those after Last-Event-ID.
#[test]
fn events_stream_in_order_and_replay_for_late_clients() {
    if image().is_none() {
        return;
    }
    let mut tok = String::new();
    let s = Server::start("tcp", &[], |t| {
        tok = token_new(t, "acme", &["--allow-image", &image_pattern()]);
    });
    let a = &s.addr;
    rt().block_on(async {
        let (st, v) = call(
            a,
            "POST",
            "/v1/runs",
            Some(&tok),
            Some(sh_run(
                "echo one; sleep 0.2; echo two >&2; sleep 0.2; echo three; exit 5",
            )),
        )
        .await;
        assert_eq!(st, 201, "{v}");
        assert_eq!(v["state"], "queued");
        let id = run_id(&v);
        let live = events(a, &tok, &id, None).await;
        let kinds: Vec<&str> = live.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["queued", "pulling", "started", "stdout", "stderr", "stdout", "exited"],
            "{live:?}"
        );
        assert_eq!(
            live.iter().map(|e| e.id).collect::<Vec<_>>(),
            (1..=7).collect::<Vec<_>>()
        );
        assert_eq!(live[1].data["image"], image().unwrap());
        assert_eq!(
            (b64(&live[3].data), b64(&live[4].data), b64(&live[5].data)),
            ("one\n".into(), "two\n".into(), "three\n".into())
        );
        assert_eq!(live[6].data["exitCode"], 5);
        assert_eq!(live[6].data["stdout"], "one\nthree\n");
        // Late: the same history; after Last-Event-ID only the rest.
        assert_eq!(events(a, &tok, &id, None).await, live);
        assert_eq!(events(a, &tok, &id, Some(4)).await, live[4..].to_vec());
        // The second run's image is cached: no pulling event.
        let (_, v) = call(a, "POST", "/v1/runs", Some(&tok), Some(sh_run("echo hi"))).await;
        let ev = events(a, &tok, &run_id(&v), None).await;
        let kinds: Vec<&str> = ev.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["queued", "started", "stdout", "exited"]);
    });
}

/// DELETE kills a running run and removes it (and nothing is left behind); a timeout and a
/// command that does not exist are results, not server errors.
#[test]
fn cancel_kills_and_cleans_up() {
    if image().is_none() {
        return;
    }
    let mut tok = String::new();
    let s = Server::start("tcp", &[], |t| {
        tok = token_new(t, "acme", &["--allow-image", &image_pattern()]);
    });
    let a = &s.addr;
    let marker = token("serve-cancel");
    rt().block_on(async {
        let (st, v) = call(a, "POST", "/v1/runs", Some(&tok), Some(json!({"image": image().unwrap(), "command": ["sh", "-c", "echo ready; sleep 60; echo never", &marker], "outputs": ["x"]}))).await;
        assert_eq!(st, 201);
        let id = run_id(&v);
        // Wait until it runs.
        let mut ready = false;
        for _ in 0..500 {
            let (_, v) = call(a, "GET", &format!("/v1/runs/{id}"), Some(&tok), None).await;
            if v["state"] == "running" && !pids_with(&marker).is_empty() {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ready, "the run never ran");
        let (st, v) = call(a, "GET", &format!("/v1/runs/{id}/outputs/x"), Some(&tok), None).await;
        assert_eq!((st, v["error"]["code"].as_str()), (409, Some("conflict")));
        let (st, v) = call(a, "DELETE", &format!("/v1/runs/{id}"), Some(&tok), None).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["state"], "cancelled");
        assert_eq!(v["result"]["reason"], "cancelled");
        assert!(pids_with(&marker).is_empty(), "the run's processes survived the cancel");
        assert!(scratch_left(&s).is_empty(), "{:?}", scratch_left(&s));
        assert!(!s.dir().join("state").join(&id).exists());
        let (st, _) = call(a, "GET", &format!("/v1/runs/{id}"), Some(&tok), None).await;
        assert_eq!(st, 404);
        let audit = audited(&s);
        assert_eq!(audit[0]["cancelled"], true);
        assert!(run_cgroups().iter().all(|c| !c.contains(audit[0]["run_id"].as_str().unwrap())));

        let (_, v) = call(a, "POST", "/v1/runs?wait=true", Some(&tok), Some(json!({"image": image().unwrap(), "command": ["sleep", "10"], "timeout": 0.5}))).await;
        assert_eq!((v["result"]["reason"].as_str(), &v["result"]["exitCode"]), (Some("timeout"), &json!(124)));
        let (_, v) = call(a, "POST", "/v1/runs?wait=true", Some(&tok), Some(json!({"image": image().unwrap(), "command": ["no-such-tool"]}))).await;
        assert_eq!(v["state"], "failed", "{v}");
        assert_eq!(v["result"]["exitCode"], Value::Null);
        assert!(v["result"]["error"].as_str().unwrap().contains("no-such-tool"), "{v}");
        let (_, v) = call(a, "POST", "/v1/runs?wait=true", Some(&tok), Some(json!({"image": format!("{}-missing", image().unwrap())}))).await;
        assert_eq!(v["state"], "failed", "{v}");
    });
}

/// 200 requests at once (most wait in the queue): each gets its own correct result.
#[test]
fn two_hundred_concurrent_requests_all_complete() {
    if image().is_none() {
        return;
    }
    let mut tok = String::new();
    let s = Server::start("tcp", &["--max-concurrent", "4"], |t| {
        tok = token_new(t, "acme", &["--allow-image", &image_pattern()]);
    });
    let a = s.addr.clone();
    rt().block_on(async {
        // Pull once first, so that the 200 runs measure nothing but the queue.
        let (st, _) = call(
            &a,
            "POST",
            "/v1/runs?wait=true",
            Some(&tok),
            Some(sh_run("true")),
        )
        .await;
        assert_eq!(st, 200);
        let mut tasks = Vec::new();
        for i in 0..200 {
            let (a, tok) = (a.clone(), tok.clone());
            tasks.push(tokio::spawn(async move {
                call(
                    &a,
                    "POST",
                    "/v1/runs?wait=true",
                    Some(&tok),
                    Some(sh_run(&format!("echo {i}"))),
                )
                .await
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            let (st, v) = t.await.unwrap();
            assert_eq!(st, 200, "{i}: {v}");
            assert_eq!(v["result"]["stdout"], format!("{i}\n"), "{i}: {v}");
            assert_eq!(v["result"]["exitCode"], 0);
        }
        let (_, m) = get_text(&a, "/metrics", Some(&tok)).await;
        assert!(
            m.contains("nsrun_runs_total{outcome=\"exited\"} 201\n"),
            "{m}"
        );
    });
    assert!(scratch_left(&s).is_empty());
}

/// A 1 GiB input streamed as multipart/form-data reaches the tool whole, and the server's
/// memory stays small (it is never held in memory).
#[test]
fn multipart_streams_a_1gib_input_in_small_memory() {
    if image().is_none() {
        return;
    }
    let mut tok = String::new();
    let s = Server::start("tcp", &[], |t| {
        tok = token_new(t, "acme", &["--allow-image", &image_pattern()]);
    });
    let a = &s.addr;
    const GIB: u64 = 1 << 30;
    rt().block_on(async {
        let boundary = "nsrunBOUNDARYx7";
        let req = json!({"image": image().unwrap(), "command": ["sh", "-c", "wc -c < /inputs/big.bin; tail -c 8 /inputs/big.bin; echo; cat"]});
        let head = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"request\"\r\nContent-Type: application/json\r\n\r\n{req}\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"stdin\"\r\n\r\nfrom-stdin\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"input\"; filename=\"big.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        );
        let tail = format!("\r\n--{boundary}--\r\n");
        // 1 GiB of 'a'..'z' lines in 1 MiB chunks, generated as it is sent.
        let chunk: Bytes = (0..(1 << 20)).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>().into();
        let parts = std::iter::once(Bytes::from(head))
            .chain(std::iter::repeat_n(chunk, (GIB >> 20) as usize))
            .chain(std::iter::once(Bytes::from(tail)))
            .map(|b| Ok::<_, std::io::Error>(Frame::data(b)));
        let body = StreamBody::new(futures_util::stream::iter(parts)).boxed();
        let resp = send(
            a,
            request("POST", "/v1/runs?wait=true", Some(&tok))
                .header("content-type", format!("multipart/form-data; boundary={boundary}"))
                .body(body)
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 200);
        let v: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        // Each chunk restarts at 'a'; 2^20 mod 26 = 22: a chunk (and the file) ends in 'o'..'v'.
        assert_eq!(v["result"]["stdout"], format!("{GIB}\nopqrstuv\nfrom-stdin"), "{v}");
        let (_, m) = get_text(a, "/metrics", Some(&tok)).await;
        assert!(m.contains(&format!("nsrun_input_bytes_total {}\n", GIB + 10)), "{m}");

        // The request part is checked before any file is read: its errors come first.
        let body = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"input\"; filename=\"x\"\r\n\r\nx\r\n--{boundary}--\r\n");
        let resp = send(a, request("POST", "/v1/runs", Some(&tok)).header("content-type", format!("multipart/form-data; boundary={boundary}")).body(full(body)).unwrap()).await.unwrap();
        assert_eq!(resp.status(), 400);
    });
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap()
            .trim()
            .trim_end_matches(" kB")
            .parse()
            .unwrap()
    };
    let (hwm, rss) = (kib("VmHWM:"), kib("VmRSS:"));
    eprintln!("server memory after a 1 GiB upload: VmHWM {hwm} KiB, VmRSS {rss} KiB");
    assert!(hwm < 200 << 10, "the server's peak RSS reached {hwm} KiB");
    assert!(scratch_left(&s).is_empty());
}

/// SIGTERM: new runs are refused, a run that ends before the deadline keeps its result, one
/// that does not is cancelled at it; the server exits 0 leaving no socket, scratch, process or
/// cgroup behind.
#[test]
fn sigterm_drains_then_cancels_and_leaves_nothing() {
    if image().is_none() {
        return;
    }
    let mut tok = String::new();
    let mut s = Server::start("unix", &["--shutdown-timeout", "3"], |t| {
        tok = token_new(t, "acme", &["--allow-image", &image_pattern()]);
    });
    let a = s.addr.clone();
    let marker = token("serve-term");
    let rt = rt();
    let (quick, slow) = rt.block_on(async {
        // Pull first.
        call(&a, "POST", "/v1/runs?wait=true", Some(&tok), Some(sh_run("true"))).await;
        let (a1, a2, t1, t2) = (a.clone(), a.clone(), tok.clone(), tok.clone());
        let quick = tokio::spawn(async move {
            call(&a1, "POST", "/v1/runs?wait=true", Some(&t1), Some(sh_run("echo started; sleep 1; echo done"))).await
        });
        let m = marker.clone();
        let slow = tokio::spawn(async move {
            call(&a2, "POST", "/v1/runs?wait=true", Some(&t2), Some(json!({"image": image().unwrap(), "command": ["sh", "-c", "sleep 60; echo never", &m]}))).await
        });
        assert!(wait_until(Duration::from_secs(20), || !pids_with(&marker).is_empty()));
        (quick, slow)
    });
    s.signal(nix::sys::signal::Signal::SIGTERM);
    let (quick, slow) = rt.block_on(async {
        let (q, sl) = (quick.await.unwrap(), slow.await.unwrap());
        (q, sl)
    });
    assert_eq!(quick.0, 200);
    assert_eq!(
        quick.1["result"]["stdout"], "started\ndone\n",
        "{}",
        quick.1
    );
    assert_eq!(slow.0, 200);
    assert_eq!(slow.1["state"], "cancelled", "{}", slow.1);
    assert_eq!(
        s.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        s.stderr()
    );
    let Addr::Unix(sock) = &s.addr else {
        unreachable!()
    };
    assert!(!sock.exists(), "the socket file was left");
    assert!(
        !s.dir().join("state").exists(),
        "the state directory was left"
    );
    assert!(scratch_left(&s).is_empty(), "{:?}", scratch_left(&s));
    assert!(pids_with(&marker).is_empty());
    let cgroups = run_cgroups();
    for rec in audited(&s) {
        let id = rec["run_id"].as_str().unwrap();
        assert!(
            cgroups.iter().all(|c| !c.contains(id)),
            "cgroup of {id} left"
        );
    }
}

/// The Prometheus counters follow what happened.
#[test]
fn metrics_count_runs_requests_and_refusals() {
    if image().is_none() {
        return;
    }
    let mut tok = String::new();
    let s = Server::start("tcp", &[], |t| {
        tok = token_new(
            t,
            "acme",
            &["--allow-image", &image_pattern(), "--max-memory", "64m"],
        );
    });
    let a = &s.addr;
    rt().block_on(async {
        call(a, "POST", "/v1/runs?wait=true", Some(&tok), Some(json!({"image": image().unwrap(), "command": ["sh", "-c", "printf 12345"], "stdin": "abc"}))).await;
        call(a, "POST", "/v1/runs?wait=true", Some(&tok), Some(sh_run("kill -9 $$"))).await;
        call(a, "POST", "/v1/runs?wait=true", Some(&tok), Some(json!({"image": image().unwrap(), "command": ["sleep", "5"], "timeout": 0.3}))).await;
        call(a, "POST", "/v1/runs", Some(&tok), Some(json!({"image": image().unwrap(), "limits": {"memory": "1g"}}))).await;
        call(a, "GET", "/metrics", Some("bad"), None).await;
        let (st, m) = get_text(a, "/metrics", Some(&tok)).await;
        assert_eq!(st, 200);
        for line in [
            "nsrun_runs_total{outcome=\"exited\"} 1",
            "nsrun_runs_total{outcome=\"signaled\"} 1",
            "nsrun_runs_total{outcome=\"timeout\"} 1",
            "nsrun_runs_total{outcome=\"failed\"} 0",
            "nsrun_runs_running 0",
            "nsrun_runs_queued 0",
            "nsrun_run_duration_seconds_count 3",
            "nsrun_pulls_total 1",
            "nsrun_input_bytes_total 3",
            "nsrun_output_bytes_total 5",
            "nsrun_http_requests_total{code=\"200\"} 3",
            "nsrun_http_requests_total{code=\"401\"} 1",
            "nsrun_http_requests_total{code=\"403\"} 1",
            "nsrun_rejected_total{rule=\"maxMemory\"} 1",
        ] {
            assert!(m.lines().any(|l| l == line), "{line} missing from:\n{m}");
        }
    });
}

/// An ended run is kept for --keep-for, then its record and its files are gone.
#[test]
fn ended_runs_expire() {
    if image().is_none() {
        return;
    }
    let mut tok = String::new();
    let s = Server::start("tcp", &["--keep-for", "1"], |t| {
        tok = token_new(t, "acme", &["--allow-image", &image_pattern()]);
    });
    let a = &s.addr;
    rt().block_on(async {
        let (st, v) = call(a, "POST", "/v1/runs?wait=true", Some(&tok), Some(json!({"image": image().unwrap(), "command": ["sh", "-c", "echo x > o"], "outputs": ["o"]}))).await;
        assert_eq!(st, 200);
        let id = run_id(&v);
        assert!(s.dir().join("state").join(&id).join("outputs/o").is_file());
        let mut gone = false;
        for _ in 0..300 {
            if call(a, "GET", &format!("/v1/runs/{id}"), Some(&tok), None).await.0 == 404 {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone, "the run was kept past --keep-for");
        assert!(wait_until(Duration::from_secs(5), || !s.dir().join("state").join(&id).exists()));
    });
}

// ---- TLS ---------------------------------------------------------------------------------

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl.
fn certs(dir: &Path) {
    let sh = |script: &str| {
        let o = Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(dir)
            .output()
            .expect("openssl (apt-get install openssl)");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj '/CN=serve test CA' -keyout ca.key -out ca.pem \
          -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext -out server.pem 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj /CN=worker -keyout client.key -out client.csr 2>/dev/null
        printf 'basicConstraints=CA:FALSE\\nextendedKeyUsage=clientAuth\\n' > client.ext
        openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile client.ext -out client.pem 2>/dev/null");
}

/// curl ARGS; returns (exit code, stdout).
fn curl(args: &[&str]) -> (i32, String) {
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "60"])
        .args(args)
        .output()
        .expect("curl (apt-get install curl)");
    (o.status.code().unwrap_or(-1), stdout(&o))
}

/// HTTPS with a server certificate; then mTLS: no client certificate, no connection.
#[test]
fn tls_and_client_certificates() {
    if image().is_none() {
        return;
    }
    let certdir = tempfile::tempdir().unwrap();
    certs(certdir.path());
    let c = |f: &str| certdir.path().join(f).display().to_string();
    let body = sh_run("echo over-tls").to_string();
    for mtls in [false, true] {
        let mut tok = String::new();
        let mut flags = vec![
            "--tls-cert".to_string(),
            c("server.pem"),
            "--tls-key".into(),
            c("server.key"),
        ];
        if mtls {
            flags.extend(["--tls-client-ca".to_string(), c("ca.pem")]);
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let s = Server::start("tcp", &flags, |t| {
            tok = token_new(t, "acme", &["--allow-image", &image_pattern()]);
        });
        let Addr::Tcp(addr) = &s.addr else {
            unreachable!()
        };
        let url = format!("https://{addr}");
        let auth = format!("Authorization: Bearer {tok}");
        let client: Vec<String> = if mtls {
            vec![
                "--cert".into(),
                c("client.pem"),
                "--key".into(),
                c("client.key"),
            ]
        } else {
            vec![]
        };
        let client: Vec<&str> = client.iter().map(String::as_str).collect();
        // Untrusted CA: refused by the client.
        assert_ne!(curl(&[&format!("{url}/healthz")]).0, 0);
        let (code, out) = curl(
            &[
                &["--cacert", &c("ca.pem")][..],
                &client,
                &[&format!("{url}/healthz")],
            ]
            .concat(),
        );
        assert_eq!((code, out.as_str()), (0, "ok"));
        let (code, out) = curl(
            &[
                &[
                    "--cacert",
                    &c("ca.pem"),
                    "-H",
                    &auth,
                    "-H",
                    "Content-Type: application/json",
                    "-d",
                    &body,
                ][..],
                &client,
                &[&format!("{url}/v1/runs?wait=true")],
            ]
            .concat(),
        );
        assert_eq!(code, 0, "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["result"]["stdout"], "over-tls\n");
        if mtls {
            // Without a client certificate the handshake fails.
            let (code, _) = curl(&["--cacert", &c("ca.pem"), &format!("{url}/healthz")]);
            assert_ne!(code, 0, "mTLS let a client without a certificate in");
        }
    }
}

/// Bad flags and files: one line, exit 125, and no state directory left behind.
#[test]
fn bad_serve_flags_fail_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.json");
    token_new(&tokens, "acme", &["--allow-image", "*"]);
    let t = tokens.to_str().unwrap();
    let state = dir.path().join("state");
    let st = state.to_str().unwrap();
    let none = dir.path().join("none.json");
    for (args, want) in [
        (
            vec![
                "--listen",
                "127.0.0.1:0",
                "--tokens",
                none.to_str().unwrap(),
            ],
            "none.json",
        ),
        (
            vec!["--listen", "nonsense", "--tokens", t],
            "--listen nonsense",
        ),
        (
            vec![
                "--listen",
                "127.0.0.1:0",
                "--tokens",
                t,
                "--tls-cert",
                t,
                "--tls-key",
                t,
            ],
            "--tls-cert",
        ),
        (
            vec![
                "--listen",
                "127.0.0.1:0",
                "--tokens",
                t,
                "--max-body",
                "lots",
            ],
            "--max-body",
        ),
    ] {
        let o = Command::new(nsrun_bin())
            .arg("serve")
            .args(&args)
            .args(["--state-dir", st, "--root"])
            .arg(dir.path().join("root"))
            .output()
            .unwrap();
        assert_code(&o, 125);
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!state.exists(), "{args:?} left the state directory");
    }
    // A policy file that is not one.
    std::fs::write(
        &tokens,
        r#"{"tenants": [{"tenant": "a", "tokenSha256": "xyz", "created": ""}]}"#,
    )
    .unwrap();
    let o = Command::new(nsrun_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tokens",
            t,
            "--state-dir",
            st,
        ])
        .output()
        .unwrap();
    assert_code(&o, 125);
    assert!(stderr(&o).contains("tokenSha256"), "{}", stderr(&o));
    // token new needs at least one --allow-image; serve needs --tokens: the line names them.
    let o = Command::new(nsrun_bin())
        .args(["token", "new", "--tokens", t, "--tenant", "b"])
        .output()
        .unwrap();
    assert_code(&o, 125);
    assert!(stderr(&o).contains("--allow-image"), "{}", stderr(&o));
    let o = Command::new(nsrun_bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_code(&o, 125);
    assert!(stderr(&o).contains("--tokens"), "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1);
}

/// An upload that breaks off, or goes over --max-upload, leaves no file and gives its tenant's
/// slot back.
#[test]
fn a_failed_upload_leaves_nothing() {
    if image().is_none() {
        return;
    }
    let mut tok = String::new();
    let s = Server::start("tcp", &["--max-upload", "1m"], |t| {
        tok = token_new(
            t,
            "acme",
            &["--allow-image", &image_pattern(), "--max-concurrent", "1"],
        );
    });
    let a = &s.addr;
    let boundary = "nsrunB";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"request\"\r\n\r\n{}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"input\"; filename=\"f\"\r\n\r\n",
        sh_run("true")
    );
    let state_entries = || {
        std::fs::read_dir(s.dir().join("state"))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
    };
    rt().block_on(async {
        let post = |parts: Vec<Result<Bytes, std::io::Error>>| {
            let body = StreamBody::new(futures_util::stream::iter(
                parts.into_iter().map(|p| p.map(Frame::data)),
            ))
            .boxed();
            send(
                a,
                request("POST", "/v1/runs?wait=true", Some(&tok))
                    .header(
                        "content-type",
                        format!("multipart/form-data; boundary={boundary}"),
                    )
                    .body(body)
                    .unwrap(),
            )
        };
        // The client breaks off mid-file.
        let chunk = Bytes::from(vec![b'x'; 64 << 10]);
        let r = post(vec![
            Ok(Bytes::from(head.clone())),
            Ok(chunk.clone()),
            Err(std::io::Error::other("client gave up")),
        ])
        .await;
        assert!(r.is_err() || r.unwrap().status() == 400);
        // Over --max-upload: 413 (or the connection closed under the client's feet).
        let mut parts = vec![Ok(Bytes::from(head.clone()))];
        parts.extend(std::iter::repeat_n(chunk, 40).map(Ok));
        if let Ok(resp) = post(parts).await {
            assert_eq!(resp.status(), 413);
        }
        assert!(
            wait_until(Duration::from_secs(10), || state_entries().is_empty()),
            "left in the state directory: {:?}",
            state_entries()
        );
        // The tenant's one slot is free again.
        let (st, v) = call(
            a,
            "POST",
            "/v1/runs?wait=true",
            Some(&tok),
            Some(sh_run("echo ok")),
        )
        .await;
        assert_eq!(
            (st, v["result"]["stdout"].as_str()),
            (200, Some("ok\n")),
            "{v}"
        );
    });
}

/// A request whose upload is still arriving when SIGTERM comes gets 503 and starts no run;
/// the server then exits at once and leaves nothing.
#[test]
fn an_upload_in_flight_at_sigterm_gets_503() {
    if image().is_none() {
        return;
    }
    let mut tok = String::new();
    let mut s = Server::start("tcp", &["--shutdown-timeout", "20"], |t| {
        tok = token_new(t, "acme", &["--allow-image", &image_pattern()]);
    });
    let a = s.addr.clone();
    let boundary = "nsrunB";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"request\"\r\n\r\n{}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"input\"; filename=\"f\"\r\n\r\nsome",
        sh_run("true")
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let rt = rt();
    let resp = rt.spawn(async move {
        let body = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
        }))
        .boxed();
        send(
            &a,
            request("POST", "/v1/runs?wait=true", Some(&tok))
                .header(
                    "content-type",
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .body(body)
                .unwrap(),
        )
        .await
        .unwrap()
    });
    rt.block_on(async {
        tx.send(Bytes::from(head)).await.unwrap();
        // The request part has arrived once the run's directory exists.
        let state = s.dir().join("state");
        let arrived = || std::fs::read_dir(&state).unwrap().next().is_some();
        for _ in 0..1000 {
            if arrived() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(arrived(), "the upload never reached the server");
        s.signal(nix::sys::signal::Signal::SIGTERM);
        assert!(wait_until(Duration::from_secs(10), || s
            .stderr()
            .contains("shutting down")));
        tx.send(Bytes::from(format!(" more\r\n--{boundary}--\r\n")))
            .await
            .unwrap();
        drop(tx);
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 503);
        let v: Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(v["error"]["code"], "shutting_down");
    });
    // No run to wait for: the server is gone well before --shutdown-timeout.
    assert_eq!(
        s.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        s.stderr()
    );
    assert!(audited(&s).is_empty(), "a run started during shutdown");
    assert!(!s.dir().join("state").exists());
}

// ---- adversarial review ------------------------------------------------------------------

/// A client that sends its headers a byte at a time (no token needed for that) is cut off
/// after --header-timeout, so it cannot hold the server's connections and descriptors; a
/// client that sent its request and waits for a slow answer is not.
#[test]
fn slow_headers_are_cut_off() {
    use std::io::{Read, Write};
    let s = Server::start("tcp", &["--header-timeout", "1"], |t| {
        token_new(t, "acme", &["--allow-image", "*"]);
    });
    let Addr::Tcp(a) = &s.addr else {
        unreachable!()
    };
    let mut c = std::net::TcpStream::connect(a).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let t0 = std::time::Instant::now();
    let mut buf = [0u8; 256];
    // The server closes the connection (maybe with a 408 first) well before 20 s.
    let mut got = Vec::new();
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "the server kept a connection without headers open for {:?}: {e}",
                t0.elapsed()
            ),
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    // A whole request on a connection that then stays quiet is answered, and the server
    // still serves.
    let mut c = std::net::TcpStream::connect(a).unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("ok"), "{text}");
}

/// More than 1024 inputs (JSON or multipart) is a 400: a 4 GiB upload of tiny parts would
/// otherwise be millions of files on the server's disk (and a quadratic check of their names).
#[test]
fn too_many_inputs_are_refused() {
    if image().is_none() {
        return;
    }
    let mut tok = String::new();
    let s = Server::start("tcp", &[], |t| {
        tok = token_new(t, "acme", &["--allow-image", &image_pattern()]);
    });
    let a = &s.addr;
    rt().block_on(async {
        let mut req = sh_run("true");
        req["inputs"] = (0..1025).map(|i| (format!("f{i}"), json!("x"))).collect();
        let (st, v) = call(a, "POST", "/v1/runs", Some(&tok), Some(req)).await;
        assert_eq!(st, 400, "{v}");
        assert_eq!(v["error"]["message"], "inputs: more than 1024");

        let boundary = "nsrunB";
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"request\"\r\n\r\n{}\r\n",
            sh_run("true")
        );
        for i in 0..1025 {
            body += &format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"input\"; filename=\"f{i}\"\r\n\r\nx\r\n"
            );
        }
        body += &format!("--{boundary}--\r\n");
        let resp = send(
            a,
            request("POST", "/v1/runs", Some(&tok))
                .header(
                    "content-type",
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .body(full(body))
                .unwrap(),
        )
        .await
        .unwrap();
        let st = resp.status().as_u16();
        let v: Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(st, 400, "{v}");
        assert_eq!(v["error"]["message"], "inputs: more than 1024");
    });
    let left: Vec<_> = std::fs::read_dir(s.dir().join("state"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in the state directory: {left:?}");
}

/// A failure on the server's own files is a one-line 500 that says what failed but not where:
/// the state directory's path goes to the server's log only.
#[test]
fn internal_errors_do_not_show_server_paths() {
    if image().is_none() {
        return;
    }
    let mut tok = String::new();
    let s = Server::start("tcp", &[], |t| {
        tok = token_new(t, "acme", &["--allow-image", &image_pattern()]);
    });
    let state = s.dir().join("state");
    let moved = s.dir().join("state.away");
    std::fs::rename(&state, &moved).unwrap();
    let (st, v) = rt().block_on(call(
        &s.addr,
        "POST",
        "/v1/runs",
        Some(&tok),
        Some(sh_run("true")),
    ));
    std::fs::rename(&moved, &state).unwrap();
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (500, Some("internal")),
        "{v}"
    );
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("cannot create the run's directory: ") && !msg.contains('\n'),
        "{msg}"
    );
    let dir = s.dir().to_str().unwrap();
    assert!(!v.to_string().contains(dir), "{v}");
    assert!(
        s.stderr().contains(&format!("{dir}/state/r-")),
        "{}",
        s.stderr()
    );
}

/// A tool writing a byte at a time cannot make a run's event log hold many times its output
/// cap in memory: each stdout/stderr event counts 64 bytes more than its data against the cap.
/// The result still has the whole capture.
#[test]
fn tiny_writes_do_not_blow_up_the_event_log() {
    if image().is_none() {
        return;
    }
    let mut tok = String::new();
    let s = Server::start("tcp", &[], |t| {
        tok = token_new(t, "acme", &["--allow-image", &image_pattern()]);
    });
    let a = &s.addr;
    rt().block_on(async {
        let mut req = sh_run("i=0; while [ $i -lt 20000 ]; do printf x; i=$((i+1)); done");
        req["limits"] = json!({"output": 32768});
        let (st, v) = call(a, "POST", "/v1/runs?wait=true", Some(&tok), Some(req)).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["result"]["stdout"].as_str().unwrap().len(), 20000, "{v}");
        let ev = events(a, &tok, &run_id(&v), None).await;
        let out: Vec<_> = ev.iter().filter(|e| e.kind == "stdout").collect();
        let bytes: usize = out.iter().map(|e| b64(&e.data).len()).sum();
        assert!(
            bytes + 64 * out.len() <= 32768,
            "{} stdout events carrying {bytes} bytes",
            out.len()
        );
        assert_eq!(ev.last().unwrap().kind, "exited");
    });
}

/// A late SSE client of a run with a long log gets it replayed in bounded chunks, each copied
/// only when the one before was taken: many streams of one run cannot each hold a copy of its
/// whole log at once. (Chunk sizes are read off the wire's chunked encoding.)
#[test]
fn replays_go_out_in_bounded_chunks() {
    use std::io::{Read, Write};
    if image().is_none() {
        return;
    }
    let mut tok = String::new();
    let s = Server::start("tcp", &[], |t| {
        tok = token_new(t, "acme", &["--allow-image", &image_pattern()]);
    });
    let Addr::Tcp(a) = &s.addr else {
        unreachable!()
    };
    let (st, v) = rt().block_on(call(
        &s.addr,
        "POST",
        "/v1/runs?wait=true",
        Some(&tok),
        Some(sh_run("head -c 3000000 /dev/zero")),
    ));
    assert_eq!(st, 200, "{v}");
    let id = run_id(&v);
    let mut c = std::net::TcpStream::connect(a).unwrap();
    write!(
        c,
        "GET /v1/runs/{id}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).unwrap();
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&raw[..head_end]).to_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let mut rest = &raw[head_end..];
    let mut chunks = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap(), 16).unwrap();
        if size == 0 {
            break;
        }
        chunks.push(String::from_utf8_lossy(&rest[eol + 2..eol + 2 + size]).into_owned());
        rest = &rest[eol + 2 + size + 2..];
    }
    let text = chunks.concat();
    let ev = parse_sse(&text);
    let out: usize = ev
        .iter()
        .filter(|e| e.kind == "stdout")
        .map(|e| b64(&e.data).len())
        .sum();
    assert_eq!(out, 3_000_000);
    assert_eq!(ev.last().unwrap().kind, "exited");
    // The chunks of output events stay near 256 KiB (the `exited` event, which holds the
    // result, goes out whole).
    for c in &chunks {
        let before_exited = c.split("event: exited").next().unwrap();
        assert!(
            before_exited.len() < 512 << 10,
            "a chunk of {} bytes of output events",
            before_exited.len()
        );
    }
}

/// Labels are capped (64, keys of 1 to 128 bytes, values of at most 4096): they stay in memory
/// with the run's record and go to the audit log, so 16 MiB of them per run is a 400.
#[test]
fn oversized_labels_are_refused() {
    if image().is_none() {
        return;
    }
    let mut tok = String::new();
    let s = Server::start("tcp", &[], |t| {
        tok = token_new(t, "acme", &["--allow-image", &image_pattern()]);
    });
    rt().block_on(async {
        let with = |labels: Value| {
            let mut r = sh_run("true");
            r["labels"] = labels;
            r
        };
        let many: Value = (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
        let long = json!({"big": "x".repeat(4097)});
        let key = json!({"k".repeat(129): "v"});
        for (labels, want) in [
            (many, "labels: more than 64"),
            (long, "labels.big: longer than 4096 bytes"),
            (key, "labels: a key must have 1 to 128 bytes"),
        ] {
            let (st, v) = call(&s.addr, "POST", "/v1/runs", Some(&tok), Some(with(labels))).await;
            assert_eq!(
                (st, v["error"]["message"].as_str()),
                (400, Some(want)),
                "{v}"
            );
        }
        let ok: Value = (0..64)
            .map(|i| (format!("k{i}"), json!("v".repeat(4096))))
            .collect();
        let (st, v) = call(
            &s.addr,
            "POST",
            "/v1/runs?wait=true",
            Some(&tok),
            Some(with(ok)),
        )
        .await;
        assert_eq!(
            (st, v["labels"]["k63"].as_str().map(str::len)),
            (200, Some(4096)),
            "{v}"
        );
    });
}
