//! Runs per second of `/bin/true` through `Runtime::run` at concurrency 1, 2, 8 and 32, side by
//! side with `nsrun run` and `crun run` driven by `xargs -P` at the same concurrency.
//!
//! ```text
//! cargo bench --bench runner                 # as root; crun rows need crun (apt-get install crun)
//! NSRUN_BENCH_ROOTFS=DIR cargo bench ...     # the busybox rootfs (default target/test-rootfs/busybox)
//! ```
//!
//! Criterion reports each row's throughput in elements (runs) per second. The bench also prints
//! the caller's resident memory per concurrent run (the worker's own cost, not the sandboxes').
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use nsrun::runner::{RunSpec, Runtime};

const LEVELS: [usize; 4] = [1, 2, 8, 32];

fn rootfs() -> PathBuf {
    std::env::var_os("NSRUN_BENCH_ROOTFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-rootfs/busybox"))
}

fn nsrun_bin() -> PathBuf {
    std::env::var_os("NSRUN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_nsrun").into())
}

/// Runs `n` commands through `xargs -P c` (`@` in `line` is the run number); `private_ns`
/// runs the whole pipeline in a private mount namespace without the cgroup2 mount, for crun.
fn xargs(private_ns: bool, c: usize, n: usize, line: &str) -> Duration {
    let pipeline = format!("seq {n} | xargs -P {c} -I@ {line} >/dev/null");
    let mut cmd = if private_ns {
        // crun 1.8 refuses a hybrid cgroup host whose cgroup2 mount has a controller enabled;
        // with cgroups disabled it needs none, so it runs where that mount is not (the host's
        // mounts and cgroups are not touched: the umount is in a namespace of its own).
        let mut c = Command::new("unshare");
        c.args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "umount -l /sys/fs/cgroup/unified 2>/dev/null; {pipeline}"
            ));
        c
    } else {
        let mut c = Command::new("sh");
        c.arg("-c").arg(pipeline);
        c
    };
    let t = Instant::now();
    let st = cmd.status().unwrap();
    assert!(st.success(), "{line}");
    t.elapsed()
}

/// An OCI bundle for crun: the rootfs read-only, `/bin/true`, no terminal.
fn crun_bundle(dir: &Path) -> Option<PathBuf> {
    if Command::new("crun").arg("--version").output().is_err() {
        eprintln!("crun not found: its rows are skipped (apt-get install crun)");
        return None;
    }
    let st = Command::new("crun")
        .args(["spec"])
        .current_dir(dir)
        .status()
        .ok()?;
    if !st.success() {
        return None;
    }
    let cfg = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).ok()?).ok()?;
    // No cgroup (see `xargs`): no resources and no cgroup namespace.
    v["linux"].as_object_mut()?.remove("resources");
    if let Some(ns) = v["linux"]["namespaces"].as_array_mut() {
        ns.retain(|n| n["type"] != "cgroup");
    }
    v["root"]["path"] = serde_json::json!(rootfs());
    v["root"]["readonly"] = serde_json::json!(true);
    v["process"]["args"] = serde_json::json!(["/bin/true"]);
    v["process"]["terminal"] = serde_json::json!(false);
    std::fs::write(&cfg, serde_json::to_vec(&v).ok()?).ok()?;
    Some(dir.to_path_buf())
}

fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn runs_per_second(c: &mut Criterion) {
    let root = tempfile::tempdir().unwrap();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bundle_dir = tempfile::tempdir().unwrap();
    let bundle = crun_bundle(bundle_dir.path());
    let rootfs = rootfs();
    let nsrun = nsrun_bin();
    let mut g = c.benchmark_group("runs_per_second");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    for &level in &LEVELS {
        g.throughput(Throughput::Elements(level as u64));
        let rt = Runtime::builder()
            .root(root.path())
            .helper(&nsrun)
            .max_concurrent(level)
            .audit(std::sync::Arc::new(nsrun::runner::NoAudit))
            .build()
            .unwrap();
        g.bench_with_input(BenchmarkId::new("Runtime::run", level), &level, |b, &n| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    tokio.block_on(async {
                        let hs: Vec<_> = (0..n)
                            .map(|_| rt.spawn(RunSpec::rootfs(&rootfs).args(["/bin/true"])))
                            .collect();
                        for h in hs {
                            assert_eq!(h.wait().await.unwrap().exit_code, 0);
                        }
                    });
                }
                t.elapsed()
            })
        });
        let line = format!(
            "{} run --rootfs {} -- /bin/true",
            nsrun.display(),
            rootfs.display()
        );
        g.bench_with_input(
            BenchmarkId::new("nsrun run (xargs -P)", level),
            &level,
            |b, &n| b.iter_custom(|iters| (0..iters).map(|_| xargs(false, n, n, &line)).sum()),
        );
        if let Some(bundle) = &bundle {
            g.bench_with_input(BenchmarkId::new("crun run (xargs -P)", level), &level, |b, &n| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|i| {
                            let line = format!(
                                "crun --cgroup-manager=disabled run --bundle {} nsrun-bench-{}-{i}-@",
                                bundle.display(),
                                std::process::id()
                            );
                            xargs(true, n, n, &line)
                        })
                        .sum()
                })
            });
        }
    }
    g.finish();

    // The caller's own memory per run in flight: 32 runs of `sleep 1` at once.
    let rt = Runtime::builder()
        .root(root.path())
        .helper(&nsrun)
        .max_concurrent(32)
        .audit(std::sync::Arc::new(nsrun::runner::NoAudit))
        .build()
        .unwrap();
    let before = rss();
    let during = tokio.block_on(async {
        let hs: Vec<_> = (0..32)
            .map(|_| rt.spawn(RunSpec::rootfs(&rootfs).args(["/bin/sleep", "1"])))
            .collect();
        tokio::time::sleep(Duration::from_millis(700)).await;
        let during = rss();
        for h in hs {
            h.wait().await.unwrap();
        }
        during
    });
    println!(
        "caller memory: {:.2} MiB resident before, {:.2} MiB with 32 runs in flight: {:.0} KiB per run",
        before as f64 / 1048576.0,
        during as f64 / 1048576.0,
        during.saturating_sub(before) as f64 / 32.0 / 1024.0
    );
}

criterion_group!(benches, runs_per_second);
criterion_main!(benches);
