//! The warm pool (`RuntimeBuilder::warm_pool`): pooled runs are confined exactly like cold ones
//! (the in-sandbox probe's escape attempts, seccomp answers, ids and capabilities, compared with
//! a cold run's), each pooled helper serves one run, the pool refills, and nothing outlives the
//! runtime.
#![allow(unused_crate_dependencies)]

mod support;

mod common;
mod confine_common;

use std::path::Path;
use std::time::{Duration, Instant};

use nsrun::runner::{RunResult, RunSpec, Runtime};
use nsrun::sandbox::BindMount;

/// The tests count this process's helper children: one test at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn runtime(root: &Path, pool: usize) -> Runtime {
    Runtime::builder()
        .root(root)
        .helper(common::nsrun_bin())
        .warm_pool(pool)
        .build()
        .unwrap()
}

fn probe_spec(args: &[&str]) -> RunSpec {
    RunSpec::rootfs(common::rootfs())
        .bind(BindMount {
            source: confine_common::probe(),
            target: "/probe".into(),
            read_only: true,
        })
        .args(std::iter::once("/probe").chain(args.iter().copied()))
}

fn out(r: &RunResult) -> String {
    String::from_utf8_lossy(&r.stdout).into_owned()
}

/// Waits until the pool holds `n` ready helpers (they start in the background).
async fn until_ready(rt: &Runtime, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while rt.warm_pool_ready() < n {
        assert!(Instant::now() < deadline, "the pool never refilled to {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Helper processes (`nsrun __nsrun-helper`) whose parent is this test process.
fn our_helpers() -> Vec<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1).map(String::from));
            cmd.windows(14).any(|w| w == b"__nsrun-helper") && ppid.as_deref() == Some(&me)
        })
        .collect()
}

#[test]
fn pooled_runs_are_confined_like_cold_ones() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let rt = tokio();
    rt.block_on(async {
        let cold = runtime(root.path(), 0);
        let warm = runtime(root.path(), 2);
        until_ready(&warm, 2).await;

        // Escape attempts: every one blocked, in a pooled sandbox as in a cold one.
        let mut victim = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let victim_pid = victim.id().to_string();
        let r = warm
            .run(probe_spec(&["escape", &victim_pid]))
            .await
            .unwrap();
        let alive = victim.try_wait().unwrap().is_none();
        let _ = victim.kill();
        let _ = victim.wait();
        assert!(alive, "a pooled sandbox killed a host process");
        assert_eq!(
            r.exit_code,
            0,
            "{}{}",
            out(&r),
            String::from_utf8_lossy(&r.stderr)
        );
        let escaped: Vec<String> = out(&r)
            .lines()
            .filter(|l| !l.starts_with("blocked "))
            .map(String::from)
            .collect();
        assert!(
            escaped.is_empty(),
            "escaped from a pooled sandbox: {escaped:?}"
        );
        let cold_escape = cold
            .run(probe_spec(&["escape", &victim_pid]))
            .await
            .unwrap();
        // The victim is gone by now in both runs' eyes only through the pid: compare the
        // attempts' names and verdicts, not the details that name the pid.
        let verdicts = |s: &str| -> Vec<String> {
            s.lines()
                .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
                .collect()
        };
        assert_eq!(verdicts(&out(&r)), verdicts(&out(&cold_escape)));

        // The seccomp filter answers the same, and as the default profile promises.
        let pooled = warm.run(probe_spec(&["syscalls"])).await.unwrap();
        confine_common::assert_default_profile(&out(&pooled));
        let cold_sys = cold.run(probe_spec(&["syscalls"])).await.unwrap();
        assert_eq!(out(&pooled), out(&cold_sys));

        // The same ids and capability sets.
        let pooled = warm.run(probe_spec(&["ids"])).await.unwrap();
        let cold_ids = cold.run(probe_spec(&["ids"])).await.unwrap();
        assert_eq!(pooled.exit_code, 0);
        assert_eq!(out(&pooled), out(&cold_ids));
        assert!(!out(&pooled).is_empty());
    });
}

#[test]
fn each_pooled_helper_serves_one_run_and_the_pool_refills() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let rt = tokio();
    rt.block_on(async {
        let warm = runtime(root.path(), 3);
        until_ready(&warm, 3).await;
        let idle_before = our_helpers();
        assert_eq!(idle_before.len(), 3, "{idle_before:?}");
        // Eight runs at once drain the pool and run partly in fresh helpers; each is pid 2 of
        // a pid namespace of its own (pid 1 is nsrun's init).
        let hs: Vec<_> = (0..8)
            .map(|i| {
                warm.spawn(RunSpec::rootfs(common::rootfs()).args([
                    "/bin/sh",
                    "-c",
                    &format!("echo $$ {i}"),
                ]))
            })
            .collect();
        for (i, h) in hs.into_iter().enumerate() {
            let r = h.wait().await.unwrap();
            assert_eq!(r.exit_code, 0, "{}", String::from_utf8_lossy(&r.stderr));
            assert_eq!(out(&r), format!("2 {i}\n"), "run {i}");
        }
        until_ready(&warm, 3).await;
        let idle_after = our_helpers();
        assert_eq!(idle_after.len(), 3, "{idle_after:?}");
        // The helpers that were idle before served a run each and are gone: never reused.
        for pid in &idle_before {
            assert!(
                !idle_after.contains(pid),
                "helper {pid} was kept after its run"
            );
        }
        // Dropping the runtime ends the idle helpers.
        drop(warm);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !our_helpers().is_empty() {
            assert!(
                Instant::now() < deadline,
                "idle helpers outlived the runtime: {:?}",
                our_helpers()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

#[test]
fn runs_with_stdin_bypass_the_pool() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let rt = tokio();
    rt.block_on(async {
        let warm = runtime(root.path(), 1);
        until_ready(&warm, 1).await;
        let idle = our_helpers();
        let r = warm
            .run(
                RunSpec::rootfs(common::rootfs())
                    .args(["/bin/cat"])
                    .stdin(b"fed\n".to_vec()),
            )
            .await
            .unwrap();
        assert_eq!(out(&r), "fed\n");
        // The idle helper is still the same one: a run with stdin started its own.
        assert_eq!(our_helpers(), idle);
    });
}
