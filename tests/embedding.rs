//! The library inside a busy multithreaded tokio program, as a worker embeds it.
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

mod support;

mod common;
use common::*;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nsrun::helper::{Helper, HelperError};
use nsrun::sandbox::SandboxSpec;

#[test]
fn thirty_two_concurrent_runs_while_other_threads_allocate() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Allocator pressure on other threads: a fork taken while one of them holds the malloc
    // lock would deadlock a child that allocates. Ours must not.
    let hogs: Vec<_> = (0..3)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let v: Vec<Vec<u8>> = (0..64)
                        .map(|i| vec![(i + t) as u8; 1024 + i * 97])
                        .collect();
                    n += v.iter().map(|x| x.len() as u64).sum::<u64>();
                }
                n
            })
        })
        .collect();
    let helper = Helper::new(nsrun_bin());
    let results = rt.block_on(async {
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let helper = helper.clone();
                tokio::spawn(async move {
                    let spec = SandboxSpec::new(
                        rootfs(),
                        [
                            "/bin/sh",
                            "-c",
                            "read x; echo \"$0:$x\"; echo err-$0 >&2",
                            &i.to_string(),
                        ],
                    );
                    helper
                        .run(&spec, Some(format!("in{i}\n").into_bytes()))
                        .await
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    stop.store(true, Ordering::Relaxed);
    for h in hogs {
        assert!(h.join().unwrap() > 0);
    }
    for (i, r) in results.into_iter().enumerate() {
        let out = r.unwrap_or_else(|e| panic!("run {i}: {e}"));
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{i}:in{i}\n"));
        assert_eq!(String::from_utf8_lossy(&out.stderr), format!("err-{i}\n"));
        assert_eq!(out.outcome.exit_code(), 0);
    }
}

#[test]
fn library_errors_carry_docker_exit_codes() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let helper = Helper::new(nsrun_bin());
    let err = rt
        .block_on(helper.run(&SandboxSpec::new(rootfs(), ["nope"]), None))
        .unwrap_err();
    assert!(
        matches!(err, HelperError::Run { exit_code: 127, .. }),
        "{err}"
    );
    let err = rt
        .block_on(helper.run(&SandboxSpec::new("/no/such/rootfs", ["true"]), None))
        .unwrap_err();
    assert!(
        matches!(err, HelperError::Run { exit_code: 125, .. }),
        "{err}"
    );
    let mut spec = SandboxSpec::new(rootfs(), ["/bin/sh", "-c", "sleep 5"]);
    spec.timeout = Some(std::time::Duration::from_millis(300));
    let out = rt.block_on(helper.run(&spec, None)).unwrap();
    assert!(out.outcome.timed_out);
    assert_eq!(out.outcome.exit_code(), 124);
}

#[test]
fn dropping_the_future_kills_the_run() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let helper = Helper::new(nsrun_bin());
    let tok = token("drop");
    let spec = SandboxSpec::new(
        rootfs(),
        ["/bin/sh", "-c", "while :; do sleep 1; done", &tok],
    );
    let was_running = rt.block_on(async {
        let run = helper.run(&spec, None);
        tokio::pin!(run);
        // Wait until the tool is seen running, then drop the future (at the end of this block).
        let seen = async {
            while pids_with(&tok).is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            _ = &mut run => false,
            r = tokio::time::timeout(std::time::Duration::from_secs(20), seen) => r.is_ok(),
        }
    });
    assert!(
        was_running,
        "the tool never ran, so the drop would prove nothing"
    );
    assert!(
        wait_until(std::time::Duration::from_secs(5), || pids_with(&tok)
            .is_empty()),
        "left: {:?}",
        pids_with(&tok)
    );
}
