//! The runner API (`nsrun::runner`): results, events, the queue, cancel, files in and out,
//! audit, errors — as a multithreaded worker uses it.
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

mod support;

mod common;
mod images_common;

use common::*;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nsrun::runner::{
    AuditRecord, Error, Event, OutputLimits, RunHandle, RunSpec, Runtime, RuntimeBuilder,
};

fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

fn builder(root: &Path) -> RuntimeBuilder {
    Runtime::builder().root(root).helper(nsrun_bin())
}

fn sh(script: &str) -> RunSpec {
    RunSpec::rootfs(rootfs()).args(["/bin/sh", "-c", script])
}

/// Scratch directories left under `<root>/runs`.
fn scratch_left(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join("runs"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn collect(mut h: RunHandle) -> (Vec<Event>, Result<nsrun::runner::RunResult, Error>) {
    let mut rx = h.events().unwrap();
    let mut events = Vec::new();
    while let Some(e) = rx.recv().await {
        events.push(e);
    }
    (events, h.wait().await)
}

#[test]
fn results_carry_exit_codes_output_and_timings() {
    let root = tempfile::tempdir().unwrap();
    let rt = tokio();
    let runtime = builder(root.path()).build().unwrap();
    rt.block_on(async {
        let r = runtime
            .run(sh("echo out; echo err >&2; exit 3").label("run", "r-1"))
            .await
            .unwrap();
        assert_eq!((r.exit_code, r.signal), (3, None));
        assert_eq!(
            (r.stdout.as_slice(), r.stderr.as_slice()),
            (&b"out\n"[..], &b"err\n"[..])
        );
        assert!(!r.stdout_truncated && !r.timed_out && !r.oom_killed && !r.cancelled);
        assert_eq!(r.run_id.len(), 64);
        assert_eq!(r.labels.get("run").map(String::as_str), Some("r-1"));
        assert_eq!(
            r.command,
            ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"]
        );
        assert!(r.ended_at >= r.started_at);
        assert!(r.durations.total >= r.durations.setup + r.durations.run);
        assert!(r.peak_memory.is_some());

        let r = runtime.run(sh("kill -9 $$")).await.unwrap();
        assert_eq!((r.exit_code, r.signal), (137, Some(9)));

        let r = runtime
            .run(sh("sleep 5").timeout(Duration::from_millis(300)))
            .await
            .unwrap();
        assert!(r.timed_out);
        assert_eq!(r.exit_code, 124);

        // stdin from bytes, binary-safe.
        let bin: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
        let r = runtime.run(sh("cat").stdin(bin.clone())).await.unwrap();
        assert_eq!(r.stdout, bin);

        // A stdin reader that never ends does not hold up a tool that does not read it.
        let (_keep, pending) = tokio::io::duplex(64);
        let done = runtime
            .run(sh("echo done").stdin(nsrun::runner::Data::Reader(Box::new(pending))))
            .await
            .unwrap();
        assert_eq!(done.stdout, b"done\n");

        // The JSON form round-trips, binary output included (as base64).
        let json = serde_json::to_string(&r).unwrap();
        let back: nsrun::runner::RunResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back.stdout, bin);
    });
}

#[test]
fn errors_are_typed_with_docker_exit_codes_and_audited() {
    let root = tempfile::tempdir().unwrap();
    let rt = tokio();
    let runtime = builder(root.path()).build().unwrap();
    rt.block_on(async {
        let e = runtime
            .run(RunSpec::rootfs(rootfs()).args(["no-such-tool"]))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::CommandNotFound { .. }), "{e:?}");
        assert_eq!(e.exit_code(), 127);
        let e = runtime
            .run(RunSpec::rootfs(rootfs()).args(["/etc/passwd"]))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::NotExecutable { .. }), "{e:?}");
        assert_eq!(e.exit_code(), 126);
        let e = runtime
            .run(sh("true").env("BAD\0KEY", "v"))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::BadSpec { .. }), "{e:?}");
        let e = runtime
            .run(
                RunSpec::image("127.0.0.1:1/nothing/here:v1").pull(nsrun::store::PullPolicy::Never),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, Error::ImageNotFound { .. }), "{e:?}");
        assert_eq!(e.exit_code(), 125);
        let e = Runtime::builder()
            .root(root.path())
            .helper("/no/such/helper")
            .build()
            .unwrap()
            .run(sh("true"))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Helper { .. }), "{e:?}");
    });
    // Failures are audited too, with their error.
    let log = std::fs::read_to_string(root.path().join("audit.log")).unwrap();
    let recs: Vec<AuditRecord> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 5);
    assert!(recs
        .iter()
        .all(|r| r.exit_code.is_none() && r.error.is_some()));
    assert!(
        recs[0].error.as_deref().unwrap().contains("exit 127"),
        "{:?}",
        recs[0]
    );
}

#[test]
fn events_come_in_order_and_complete_under_concurrency() {
    let root = tempfile::tempdir().unwrap();
    let rt = tokio();
    let runtime = builder(root.path()).max_concurrent(4).build().unwrap();
    let results = rt.block_on(async {
        let handles: Vec<_> = (0..12)
            .map(|i| {
                runtime.spawn(sh(&format!(
                    "for j in 1 2 3; do echo {i}-$j; echo e{i}-$j >&2; done"
                )))
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(tokio::spawn(collect(h)));
        }
        let mut done = Vec::new();
        for t in out {
            done.push(t.await.unwrap());
        }
        done
    });
    for (i, (events, r)) in results.into_iter().enumerate() {
        let r = r.unwrap();
        let kinds: Vec<&str> = events
            .iter()
            .map(|e| match e {
                Event::Queued { .. } => "queued",
                Event::Pulling { .. } => "pulling",
                Event::Started { .. } => "started",
                Event::Stdout(_) => "stdout",
                Event::Stderr(_) => "stderr",
                Event::Exited { .. } => "exited",
                Event::Failed(_) => "failed",
            })
            .collect();
        // The first four got a slot at once; the others waited.
        assert_eq!(kinds[0] == "queued", i >= 4, "{i}: {kinds:?}");
        let started = kinds.iter().position(|k| *k == "started").unwrap();
        assert!(kinds[..started].iter().all(|k| *k == "queued"), "{kinds:?}");
        assert_eq!(*kinds.last().unwrap(), "exited", "{kinds:?}");
        assert_eq!(kinds.iter().filter(|k| **k == "exited").count(), 1);
        let text = |err: bool| -> String {
            events
                .iter()
                .filter_map(|e| match (e, err) {
                    (Event::Stdout(b), false) | (Event::Stderr(b), true) => {
                        Some(String::from_utf8_lossy(b).into_owned())
                    }
                    _ => None,
                })
                .collect()
        };
        assert_eq!(text(false), format!("{i}-1\n{i}-2\n{i}-3\n"));
        assert_eq!(text(true), format!("e{i}-1\ne{i}-2\ne{i}-3\n"));
        assert_eq!(r.stdout, text(false).as_bytes());
        match (&events[started], events.last().unwrap()) {
            (Event::Started { run_id, .. }, Event::Exited { exit_code: 0, .. }) => {
                assert_eq!(run_id, &r.run_id)
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn two_hundred_requests_sixteen_at_a_time_fifo() {
    let root = tempfile::tempdir().unwrap();
    let rt = tokio();
    let runtime = builder(root.path()).max_concurrent(16).build().unwrap();
    let results = rt.block_on(async {
        let handles: Vec<_> = (0..200)
            .map(|i| {
                runtime.spawn(
                    RunSpec::rootfs(rootfs())
                        .args([
                            "/bin/sh",
                            "-c",
                            "cat /inputs/n; echo \" $0\"; cat /inputs/n > out",
                            &i.to_string(),
                        ])
                        .workdir("/work")
                        .input("n", format!("in{i}"))
                        .output("out")
                        .label("i", i.to_string()),
                )
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.wait().await);
        }
        out
    });
    for (i, r) in results.into_iter().enumerate() {
        let r = r.unwrap_or_else(|e| panic!("run {i}: {e}"));
        assert_eq!(String::from_utf8_lossy(&r.stdout), format!("in{i} {i}\n"));
        assert_eq!(r.outputs[0].data, format!("in{i}").as_bytes());
        // Admitted in the order they were submitted.
        assert_eq!(r.admitted, i as u64, "run {i}");
    }
    assert_eq!(scratch_left(root.path()), Vec::<String>::new());
}

#[test]
fn kill_and_drop_mid_run_leave_nothing() {
    let root = tempfile::tempdir().unwrap();
    let rt = tokio();
    let runtime = builder(root.path()).build().unwrap();
    rt.block_on(async {
        // kill(): the result says cancelled, everything is gone.
        let tok = token("kill");
        let mut h = runtime.spawn(
            RunSpec::rootfs(rootfs())
                .args([
                    "/bin/sh",
                    "-c",
                    "echo ready; while :; do sleep 1; done",
                    &tok,
                ])
                .input("x", "data")
                .output("y"),
        );
        let mut rx = h.events().unwrap();
        while let Some(e) = rx.recv().await {
            if matches!(e, Event::Stdout(_)) {
                break;
            }
        }
        assert!(!pids_with(&tok).is_empty());
        h.kill();
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let r = h.wait().await.unwrap();
        assert!(r.cancelled);
        assert_eq!(r.exit_code, 137);
        assert!(pids_with(&tok).is_empty());
        assert_eq!(scratch_left(root.path()), Vec::<String>::new());

        // Dropping the handle (or the future of run()) does the same.
        let tok = token("drop");
        let run = runtime.run(
            RunSpec::rootfs(rootfs())
                .args(["/bin/sh", "-c", "while :; do sleep 1; done", &tok])
                .input("x", "data"),
        );
        let _ = tokio::time::timeout(Duration::from_millis(1500), run).await;
        assert!(
            wait_until(Duration::from_secs(5), || pids_with(&tok).is_empty()
                && scratch_left(root.path()).is_empty()),
            "left: {:?} {:?}",
            pids_with(&tok),
            scratch_left(root.path())
        );

        // Killed while queued: never started.
        let busy = builder(root.path()).max_concurrent(1).build().unwrap();
        let first = busy.spawn(sh("sleep 1"));
        let second = busy.spawn(sh("echo never"));
        second.kill();
        assert!(matches!(second.wait().await, Err(Error::Cancelled)));
        assert_eq!(first.wait().await.unwrap().exit_code, 0);
    });
    assert!(
        wait_until(Duration::from_secs(5), || run_cgroups().is_empty()),
        "{:?}",
        run_cgroups()
    );
}

#[test]
fn files_in_and_out_binary_safe_capped_and_validated() {
    let root = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let bin: Vec<u8> = (0..=255u8).rev().cycle().take(1 << 20).collect();
    std::fs::write(host.path().join("file.bin"), &bin).unwrap();
    let rt = tokio();
    let runtime = builder(root.path())
        .output_limits(OutputLimits {
            per_file: 1000,
            total: 1500,
        })
        .build()
        .unwrap();
    rt.block_on(async {
        let reader: Box<dyn tokio::io::AsyncRead + Send + Unpin> =
            Box::new(std::io::Cursor::new(bin.clone()));
        let r = runtime
            .run(
                sh(
                    "cd /work && cat /inputs/a.bin > a && cat /inputs/sub/b.bin > b \
                    && cat /inputs/c.bin > c && head -c 1200 /dev/zero > big \
                    && ! touch /inputs/nope 2>/dev/null && echo ok",
                )
                .input("a.bin", bin.clone())
                .input(
                    "sub/b.bin",
                    nsrun::runner::Data::File(host.path().join("file.bin")),
                )
                .input("c.bin", nsrun::runner::Data::Reader(reader))
                .output("a")
                .output("big")
                .output("missing"),
            )
            .await
            .unwrap();
        assert_eq!(r.stdout, b"ok\n", "{}", String::from_utf8_lossy(&r.stderr));
        // Byte for byte up to the cap, then truncated and flagged.
        assert_eq!(r.outputs[0].data, &bin[..1000]);
        assert!(r.outputs[0].truncated);
        assert_eq!(r.outputs[0].size, 1 << 20);
        assert_eq!((r.outputs[1].data.len(), r.outputs[1].size), (500, 1200));
        assert!(r.outputs[1].truncated);
        assert!(r.outputs[2].missing);

        // Into a host directory, streamed.
        let outdir = tempfile::tempdir().unwrap();
        let mut spec = sh("cat /inputs/a > /work/copy")
            .input("a", bin[..900].to_vec())
            .output("copy");
        spec.output_dir = Some(outdir.path().to_path_buf());
        let r = runtime.run(spec).await.unwrap();
        assert_eq!(
            std::fs::read(outdir.path().join("copy")).unwrap(),
            &bin[..900]
        );
        assert!(r.outputs[0].data.is_empty() && !r.outputs[0].truncated);

        // A symlink to a host file in place of an output is refused, not followed; the run's
        // result stands.
        let r = runtime
            .run(
                sh("ln -s /etc/shadow /work/o; echo x > /work/p; exit 5")
                    .output("o")
                    .output("p"),
            )
            .await
            .unwrap();
        assert_eq!(r.exit_code, 5);
        let why = r.outputs[0].error.clone().unwrap_or_default();
        assert!(
            why.contains("symlink") && r.outputs[0].data.is_empty(),
            "{:?}",
            r.outputs
        );
        assert_eq!(
            (r.outputs[1].data.as_slice(), r.outputs[1].error.as_ref()),
            (&b"x\n"[..], None)
        );

        // Bad names: refused before anything is created.
        for bad in [
            "../x",
            "/etc/passwd",
            "a/../../b",
            "",
            "a\0b",
            &"n".repeat(2000),
        ] {
            let e = runtime.run(sh("true").input(bad, "x")).await.unwrap_err();
            assert!(matches!(e, Error::BadSpec { .. }), "{bad:?}: {e}");
            let e = runtime.run(sh("true").output(bad)).await.unwrap_err();
            assert!(matches!(e, Error::BadSpec { .. }), "{bad:?}: {e}");
        }
        let e = runtime
            .run(sh("true").input("same", "1").input("same", "2"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
    });
    assert_eq!(scratch_left(root.path()), Vec::<String>::new());
}

#[test]
fn tenants_cannot_see_each_others_files() {
    let root = tempfile::tempdir().unwrap();
    let rt = tokio();
    let runtime = builder(root.path()).build().unwrap();
    rt.block_on(async {
        let mut a = runtime.spawn(
            sh("echo ready; cp /inputs/secret-a.txt /work/; sleep 3")
                .input("secret-a.txt", "tenant-a-secret")
                .output("secret-a.txt")
                .label("tenant", "a"),
        );
        let mut rx = a.events().unwrap();
        while let Some(e) = rx.recv().await {
            if matches!(e, Event::Stdout(_)) {
                break;
            }
        }
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        // Tenant a's scratch exists, private to its owner.
        let dirs = scratch_left(root.path());
        assert_eq!(dirs.len(), 1);
        assert!(dirs[0].contains("-a-"), "{dirs:?}");
        let mode = std::fs::metadata(root.path().join("runs").join(&dirs[0]))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o700
        );
        let b = runtime
            .run(
                sh(
                    "ls -R /inputs /work; find / -name 'secret-a*' 2>/dev/null; \
                    grep -rs tenant-a-secret /inputs /work /tmp /run /home /root /srv; echo end",
                )
                .input("mine.txt", "b")
                .output("x")
                .label("tenant", "b"),
            )
            .await
            .unwrap();
        let out = String::from_utf8_lossy(&b.stdout);
        assert!(
            !out.contains("secret-a") && !out.contains("tenant-a-secret"),
            "{out}"
        );
        assert!(out.contains("mine.txt") && out.ends_with("end\n"), "{out}");
        let a = a.wait().await.unwrap();
        assert_eq!(a.outputs[0].data, b"tenant-a-secret");
    });
}

#[test]
fn audit_lines_are_whole_after_a_concurrent_burst() {
    let root = tempfile::tempdir().unwrap();
    let rt = tokio();
    let runtime = builder(root.path()).max_concurrent(8).build().unwrap();
    rt.block_on(async {
        let hs: Vec<_> = (0..40)
            .map(|i| {
                runtime.spawn(
                    sh("echo hi; echo x > /work/o")
                        .output("o")
                        .label("tenant", format!("t{}", i % 3))
                        .label("i", i.to_string()),
                )
            })
            .collect();
        for h in hs {
            h.wait().await.unwrap();
        }
    });
    let log = std::fs::read_to_string(root.path().join("audit.log")).unwrap();
    let recs: Vec<AuditRecord> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(recs.len(), 40);
    let mut seen: BTreeMap<String, AuditRecord> = BTreeMap::new();
    for r in recs {
        assert_eq!(r.exit_code, Some(0));
        assert_eq!(r.stdout_bytes, 3);
        assert_eq!(r.outputs, vec![("o".to_string(), Some(2))]);
        assert_eq!(r.command[0], "/bin/sh");
        assert!(r.durations.total > Duration::ZERO);
        assert!(seen.insert(r.labels["i"].clone(), r).is_none());
    }
    assert_eq!(seen.len(), 40);
}

#[test]
fn a_custom_audit_sink_gets_every_record() {
    #[derive(Default)]
    struct Sink(std::sync::Mutex<Vec<AuditRecord>>);
    impl nsrun::runner::AuditSink for Sink {
        fn record(&self, r: &AuditRecord) {
            self.0.lock().unwrap().push(r.clone());
        }
    }
    let root = tempfile::tempdir().unwrap();
    let sink = Arc::new(Sink::default());
    let rt = tokio();
    let runtime = builder(root.path()).audit(sink.clone()).build().unwrap();
    rt.block_on(async {
        runtime.run(sh("exit 7").label("k", "v")).await.unwrap();
    });
    let recs = sink.0.lock().unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(
        (recs[0].exit_code, recs[0].labels["k"].as_str()),
        (Some(7), "v")
    );
    assert!(!root.path().join("audit.log").exists());
}

#[test]
fn an_image_runs_with_its_rules_and_pull_events() {
    let layout = tempfile::tempdir().unwrap();
    let image = busybox_image();
    images_common::write_oci_layout(layout.path(), &[(&image, Some("v1"))], None);
    let reference = format!("oci:{}:v1", layout.path().display());
    let root = tempfile::tempdir().unwrap();
    let rt = tokio();
    let runtime = builder(root.path()).build().unwrap();
    rt.block_on(async {
        let (events, r) = collect(runtime.spawn(
            RunSpec::image(&reference).env("OVER", "spec"),
        ))
        .await;
        let r = r.unwrap();
        assert_eq!(String::from_utf8_lossy(&r.stdout), "ep default img spec /srv/w\n");
        assert_eq!(r.image.as_ref().unwrap().digest, image.digest());
        let pulling = events
            .iter()
            .filter_map(|e| match e {
                Event::Pulling { progress, .. } => Some(*progress),
                _ => None,
            })
            .collect::<Vec<_>>();
        let last = pulling.last().expect("pulling events");
        assert_eq!((last.layers_done, last.layers_total), (1, 1));
        assert!(matches!(events.iter().position(|e| matches!(e, Event::Started { .. })), Some(p) if p == pulling.len()));

        // Cached now: no pull; an args override replaces Cmd; an empty entrypoint clears it.
        let (events, r) = collect(runtime.spawn(RunSpec::image(&reference).args(["given"]))).await;
        assert!(!events.iter().any(|e| matches!(e, Event::Pulling { .. })));
        assert_eq!(String::from_utf8_lossy(&r.unwrap().stdout), "ep given img image /srv/w\n");
        let r = runtime
            .run(RunSpec::image(&reference).entrypoint(Vec::<String>::new()).args(["/bin/echo", "plain"]))
            .await
            .unwrap();
        assert_eq!(r.stdout, b"plain\n");
    });
}

#[path = "../examples/worker.rs"]
#[allow(dead_code)]
mod worker;

/// examples/worker.rs: JSON lines in, JSON lines out, each result its own.
#[test]
fn the_worker_example_answers_every_request() {
    let root = tempfile::tempdir().unwrap();
    let rt = tokio();
    let runtime = builder(root.path()).max_concurrent(4).build().unwrap();
    let rootfs = rootfs();
    let mut input = String::new();
    for i in 0..20 {
        input.push_str(
            &serde_json::json!({
                "id": format!("r{i}"), "rootfs": rootfs, "command": ["/bin/sh", "-c", "read x; echo \"$x:$N\"; exit $N"],
                "env": {"N": (i % 5).to_string()}, "stdin": format!("in{i}\n"), "timeout": 30,
            })
            .to_string(),
        );
        input.push('\n');
    }
    input.push_str("{\"id\": \"bad\", \"command\": [\"x\"]}\nnot json\n");
    let (out_w, out_r) = tokio::io::duplex(1 << 20);
    let out = rt.block_on(async move {
        let reader = tokio::spawn(async move {
            let mut s = String::new();
            let mut r = out_r;
            tokio::io::AsyncReadExt::read_to_string(&mut r, &mut s)
                .await
                .unwrap();
            s
        });
        worker::serve(runtime, input.as_bytes(), out_w)
            .await
            .unwrap();
        reader.await.unwrap()
    });
    let resps: Vec<worker::Response> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(resps.len(), 22);
    for r in &resps {
        match r.id.as_deref() {
            Some("bad") | None => {
                assert_eq!(r.exit_code, 125);
                assert!(r.error.is_some());
            }
            Some(id) => {
                let i: u32 = id[1..].parse().unwrap();
                assert_eq!(r.exit_code, (i % 5) as i32, "{r:?}");
                assert_eq!(r.stdout, format!("in{i}:{}\n", i % 5));
                assert!(r.error.is_none() && r.run_id.is_some());
            }
        }
    }
}

/// The Python example of docs/helper-protocol.md drives the helper as documented.
#[test]
fn the_protocol_doc_example_works_from_python() {
    let doc = include_str!("../docs/helper-protocol.md");
    let code = doc
        .split("```python\n")
        .nth(1)
        .and_then(|c| c.split("```").next())
        .expect("a python example");
    let code = code
        .replace(
            "[\"nsrun\", ",
            &format!("[{:?}, ", nsrun_bin().display().to_string()),
        )
        .replace("/srv/busybox", &rootfs().display().to_string());
    let o = std::process::Command::new("python3")
        .arg("-c")
        .arg(&code)
        .output()
        .expect("python3");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.starts_with("b'hi\\n' {'type': 'done'"), "{out}");
    assert!(
        out.contains("'termination': {'kind': 'exited', 'value': 0}"),
        "{out}"
    );
}

/// The busybox rootfs as an image whose Entrypoint, Env and WorkingDir apply.
fn busybox_image() -> images_common::Image {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", rootfs()).unwrap();
    let tar = b.into_inner().unwrap();
    let layer = images_common::gzip(&tar);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {
            "Entrypoint": ["/bin/sh", "-c", "echo \"$0 $1 $IMG $OVER $(pwd)\"", "ep"],
            "Cmd": ["default"],
            "Env": ["PATH=/bin", "IMG=img", "OVER=image"],
            "WorkingDir": "/srv/w",
        },
        "rootfs": {"type": "layers", "diff_ids": [images_common::sha256(&tar)]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": images_common::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": images_common::sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": images_common::sha256(&layer), "size": layer.len()}],
    }))
    .unwrap();
    images_common::Image {
        layers: vec![(layer, "application/vnd.oci.image.layer.v1.tar+gzip".into())],
        config,
        manifest,
        docker: false,
    }
}

/// A run holds its image: `rmi` and `gc` during the run leave the entry, `gc` after removes it.
#[test]
fn a_running_image_is_held_against_rmi_and_gc() {
    let layout = tempfile::tempdir().unwrap();
    images_common::write_oci_layout(layout.path(), &[(&busybox_image(), Some("v1"))], None);
    let reference = format!("oci:{}:v1", layout.path().display());
    let root = tempfile::tempdir().unwrap();
    let rt = tokio();
    let runtime = builder(root.path()).build().unwrap();
    let store = nsrun::store::Store::open(root.path()).unwrap();
    let opts = nsrun::store::PullOptions::default();
    rt.block_on(async {
        let mut h = runtime.spawn(
            RunSpec::image(&reference)
                .entrypoint(["/bin/sh", "-c", "echo ready; sleep 1"])
                .args(Vec::<String>::new()),
        );
        let mut rx = h.events().unwrap();
        while let Some(e) = rx.recv().await {
            if matches!(e, Event::Stdout(_)) {
                break;
            }
        }
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let entry = store.lookup(&reference, &opts).unwrap().unwrap().entry;
        store.remove(&reference, &opts).unwrap();
        store.gc().unwrap();
        assert!(entry.join("entry.json").is_file(), "removed while running");
        assert_eq!(h.wait().await.unwrap().exit_code, 0);
        assert_eq!(store.gc().unwrap().entries.len(), 1);
        assert!(!entry.exists());
    });
}

/// Events are bounded: a consumer that stops reading holds the tool up instead of buffering.
#[test]
fn a_slow_event_consumer_holds_the_tool_up() {
    let root = tempfile::tempdir().unwrap();
    let rt = tokio();
    let runtime = builder(root.path()).capture_limit(1024).build().unwrap();
    let tok = token("backpressure");
    rt.block_on(async {
        let mut h = runtime.spawn(RunSpec::rootfs(rootfs()).args([
            "/bin/sh",
            "-c",
            "head -c 33554432 /dev/zero; exec sleep 0",
            &tok,
        ]));
        let mut rx = h.events().unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // 32 MiB would take milliseconds to write; unread, the tool is still blocked in write.
        assert!(
            !pids_with(&tok).is_empty(),
            "the tool ran ahead of its consumer"
        );
        let mut bytes = 0;
        while let Some(e) = rx.recv().await {
            if let Event::Stdout(b) = e {
                bytes += b.len();
            }
        }
        let r = h.wait().await.unwrap();
        assert_eq!((bytes, r.stdout_bytes), (32 << 20, 32 << 20));
        assert_eq!(r.stdout.len(), 1024);
    });
}

/// The blocking wrapper, from a plain thread.
#[test]
fn the_blocking_runtime_runs_without_async_code() {
    let root = tempfile::tempdir().unwrap();
    let rt = nsrun::runner::blocking::Runtime::new(builder(root.path())).unwrap();
    let r = rt.run(sh("echo blocking")).unwrap();
    assert_eq!(r.stdout, b"blocking\n");
}

/// Registry credentials reach the pull, and a refusal is `Error::Auth`; a missing image is
/// `Error::ImageNotFound` (needs the test registries of scripts/registry.sh).
#[test]
fn registry_refusals_are_typed() {
    let (Ok(auth), Ok(plain)) = (
        std::env::var("NSRUN_TEST_REGISTRY_AUTH"),
        std::env::var("NSRUN_TEST_REGISTRY"),
    ) else {
        assert!(!in_ci(), "CI must start the test registries");
        crate::support::skipped("NSRUN_TEST_REGISTRY(_AUTH) not set");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let rt = tokio();
    rt.block_on(async {
        let bad = builder(root.path())
            .creds("nsrun:wrong-password")
            .build()
            .unwrap();
        let e = bad
            .run(RunSpec::image(format!("{auth}/nsrun-runner/none:v1")))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Auth { .. }), "{e:?}");
        assert_eq!(e.exit_code(), 125);
        let anon = builder(root.path()).build().unwrap();
        let e = anon
            .run(RunSpec::image(format!("{plain}/nsrun-runner/none:v1")))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::ImageNotFound { .. }), "{e:?}");
    });
    assert_eq!(scratch_left(root.path()), Vec::<String>::new());
}

#[test]
fn dockers_run_options_reach_the_run_through_the_library_and_a_tty_needs_run_here() {
    let root = tempfile::tempdir().unwrap();
    let rt = tokio();
    let runtime = builder(root.path()).build().unwrap();
    rt.block_on(async {
        let mut spec = sh(
            "grep 'open files' /proc/self/limits; grep ' /dev/shm ' /proc/self/mountinfo; id -G",
        );
        spec.ulimits = vec!["nofile=256:512".parse().unwrap()];
        spec.shm_size = Some(8 << 20);
        spec.group_add = vec!["123".into()];
        let r = runtime.run(spec).await.unwrap();
        let out = String::from_utf8_lossy(&r.stdout).into_owned();
        assert_eq!(r.exit_code, 0, "{out}");
        let limits: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(&limits[3..5], ["256", "512"], "{out}");
        assert!(out.contains("size=8192k"), "{out}");
        assert!(out.split_whitespace().any(|g| g == "123"), "{out}");

        let mut spec = sh("trap 'echo got-usr1; exit 0' USR1; while :; do sleep 0.1; done")
            .timeout(Duration::from_secs(1));
        spec.stop_signal = Some("SIGUSR1".into());
        let r = runtime.run(spec).await.unwrap();
        assert!(r.timed_out);
        assert_eq!(String::from_utf8_lossy(&r.stdout), "got-usr1\n");

        // Output through the helper is captured: a terminal has nowhere to go.
        let mut spec = sh("true");
        spec.tty = true;
        let e = runtime.run(spec).await.unwrap_err();
        assert!(matches!(e, Error::BadSpec { .. }), "{e:?}");
        assert!(e.to_string().contains("run_here"), "{e}");
    });
}
