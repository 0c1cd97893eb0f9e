//! A job worker on top of nsrun: JSON run requests in, one per line on stdin; JSON results out,
//! one per line on stdout, in the order the runs finish. Runs go concurrently (at most
//! `NSRUN_WORKER_CONCURRENCY`, default the number of CPUs; more wait in a FIFO queue).
//!
//! ```text
//! $ cargo build --release && cargo run --release --example worker <<'EOF'
//! {"id": "a", "image": "127.0.0.1:5000/tools/busybox:latest", "command": ["sh", "-c", "echo hi; exit 3"]}
//! {"id": "b", "image": "127.0.0.1:5000/tools/busybox:latest", "command": ["cat"], "stdin": "from stdin", "timeout": 10}
//! EOF
//! {"id":"a","exitCode":3,"stdout":"hi\n","stderr":"","timedOut":false,...}
//! {"id":"b","exitCode":0,"stdout":"from stdin","stderr":"",...}
//! ```
//!
//! Request fields: `image` (or `rootfs`, a directory), `command` (replaces the image's Cmd),
//! `env` (`{"K": "V"}`), `stdin` (text), `network` (`none`|`host`), `timeout` (seconds),
//! `id` and `labels` (echoed, and recorded in `<root>/audit.log`). The helper is the `nsrun`
//! binary (`NSRUN_HELPER`, next to this program, or on `PATH`), else this program itself.
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]). tests/runner.rs includes this file as a module, where a
// crate-level attribute would be misplaced.
#![cfg_attr(not(test), allow(unused_crate_dependencies))]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use nsrun::runner::{RunSpec, Runtime};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// One line of input.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Request {
    pub id: Option<String>,
    pub image: Option<String>,
    pub rootfs: Option<String>,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub stdin: Option<String>,
    pub network: Option<String>,
    pub timeout: Option<f64>,
    pub labels: BTreeMap<String, String>,
}

/// One line of output.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    pub id: Option<String>,
    /// Docker's exit status (125 when nsrun itself failed, see `error`).
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    pub oom_killed: bool,
    pub run_id: Option<String>,
    pub duration_ms: f64,
    pub error: Option<String>,
}

fn spec(req: &Request) -> Result<RunSpec, String> {
    let mut s = match (&req.image, &req.rootfs) {
        (Some(image), None) => RunSpec::image(image).args(req.command.clone()),
        (None, Some(dir)) => RunSpec::rootfs(dir).args(req.command.clone()),
        _ => return Err("give exactly one of image and rootfs".into()),
    };
    for (k, v) in &req.env {
        s = s.env(k, v);
    }
    if let Some(input) = &req.stdin {
        s = s.stdin(input.clone());
    }
    if let Some(n) = &req.network {
        s = s.network(n.parse()?);
    }
    if let Some(t) = req.timeout {
        s = s.timeout(Duration::try_from_secs_f64(t).map_err(|e| format!("timeout: {e}"))?);
    }
    if let Some(id) = &req.id {
        s = s.label("id", id);
    }
    for (k, v) in &req.labels {
        s = s.label(k, v);
    }
    Ok(s)
}

async fn handle(rt: Runtime, line: String) -> Response {
    let req: Result<Request, String> = serde_json::from_str(&line).map_err(|e| e.to_string());
    let id = req.as_ref().ok().and_then(|r| r.id.clone());
    let failed = |id, error: String, code| Response {
        id,
        exit_code: code,
        stdout: String::new(),
        stderr: String::new(),
        timed_out: false,
        oom_killed: false,
        run_id: None,
        duration_ms: 0.0,
        error: Some(error),
    };
    let spec = match req.and_then(|r| spec(&r)) {
        Ok(s) => s,
        Err(e) => return failed(id, format!("bad request: {e}"), 125),
    };
    match rt.run(spec).await {
        Ok(r) => Response {
            id,
            exit_code: r.exit_code,
            stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
            timed_out: r.timed_out,
            oom_killed: r.oom_killed,
            run_id: Some(r.run_id),
            duration_ms: r.durations.total.as_secs_f64() * 1e3,
            error: None,
        },
        Err(e) => failed(id, e.to_string(), e.exit_code()),
    }
}

/// Reads requests from `input` until it ends, runs them concurrently on `rt`, and writes each
/// response as soon as its run finishes.
pub async fn serve(
    rt: Runtime,
    input: impl AsyncBufRead + Unpin,
    output: impl AsyncWrite + Unpin + Send + 'static,
) -> std::io::Result<()> {
    let output = Arc::new(tokio::sync::Mutex::new(output));
    let mut lines = input.lines();
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let (rt, output) = (rt.clone(), output.clone());
        tasks.spawn(async move {
            let resp = handle(rt, line).await;
            let mut text = serde_json::to_vec(&resp).expect("a response serialises");
            text.push(b'\n');
            let mut out = output.lock().await;
            out.write_all(&text).await?;
            out.flush().await
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(std::io::Error::other)??;
    }
    Ok(())
}

#[allow(dead_code)]
fn main() {
    // If no nsrun binary is around, this program is its own helper.
    nsrun::helper::run_if_helper();
    let mut b = Runtime::builder();
    if nsrun::helper::Helper::locate().is_err() {
        b = b.helper(std::env::current_exe().expect("current exe"));
    }
    if let Some(n) = std::env::var("NSRUN_WORKER_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        b = b.max_concurrent(n);
    }
    let rt = match b.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("worker: {e}");
            std::process::exit(125);
        }
    };
    let tokio = tokio::runtime::Runtime::new().expect("tokio runtime");
    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
    if let Err(e) = tokio.block_on(serve(rt, stdin, tokio::io::stdout())) {
        eprintln!("worker: {e}");
        std::process::exit(1);
    }
}
