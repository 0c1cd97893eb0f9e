//! Per-run time through `Runtime` (cold helpers, then a warm pool) side by side with bubblewrap
//! at the same concurrency, alternating rounds so that the machine's noise hits every row alike.
//!
//! ```text
//! cargo build --release --bin nsrun --example runtime_bench
//! target/release/examples/runtime_bench --rootfs DIR [--helper target/release/nsrun]
//!     [--runs 200] [--concurrency 1,8] [--pool 8] [--rounds 3]
//! ```
//!
//! Each row runs `/bin/true` `--runs` times with `--concurrency` in flight and reports wall
//! time / runs (the median over `--rounds` rounds). bwrap gets the same rootfs with
//! `--unshare-all --ro-bind ROOTFS / --proc /proc --dev /dev --tmpfs /tmp`, started from a
//! thread per slot. Must call `run_if_helper` first: it can be its own helper.
#![allow(unused_crate_dependencies)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nsrun::runner::{NoAudit, RunSpec, Runtime};

struct Args {
    rootfs: PathBuf,
    helper: PathBuf,
    runs: usize,
    levels: Vec<usize>,
    pool: usize,
    rounds: usize,
}

fn parse() -> Args {
    let mut a = Args {
        rootfs: PathBuf::new(),
        helper: std::env::current_exe().expect("current exe"),
        runs: 200,
        levels: vec![1, 8],
        pool: 8,
        rounds: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--rootfs" => a.rootfs = v.into(),
            "--helper" => a.helper = v.into(),
            "--runs" => a.runs = v.parse().expect("--runs N"),
            "--pool" => a.pool = v.parse().expect("--pool N"),
            "--rounds" => a.rounds = v.parse().expect("--rounds N"),
            "--concurrency" => {
                a.levels = v
                    .split(',')
                    .map(|x| x.parse().expect("--concurrency N,M"))
                    .collect()
            }
            other => panic!("unknown option {other}"),
        }
    }
    assert!(a.rootfs.is_dir(), "--rootfs DIR is required");
    a
}

fn runtime(a: &Args, root: &std::path::Path, level: usize, pool: usize) -> Runtime {
    Runtime::builder()
        .root(root)
        .helper(&a.helper)
        .max_concurrent(level)
        .warm_pool(pool)
        .audit(std::sync::Arc::new(NoAudit))
        .build()
        .expect("runtime")
}

/// Wall time of `runs` runs through `rt` with `level` in flight.
fn through_runtime(
    tokio: &tokio::runtime::Runtime,
    rt: &Runtime,
    a: &Args,
    level: usize,
) -> Duration {
    tokio.block_on(async {
        let t = Instant::now();
        let mut left = a.runs;
        let mut inflight = Vec::new();
        while left > 0 || !inflight.is_empty() {
            while left > 0 && inflight.len() < level {
                inflight.push(rt.spawn(RunSpec::rootfs(&a.rootfs).args(["/bin/true"])));
                left -= 1;
            }
            let h = inflight.remove(0);
            let r = h.wait().await.expect("run");
            assert_eq!(r.exit_code, 0);
        }
        t.elapsed()
    })
}

/// Wall time of `runs` bwrap runs with `level` threads each starting them one after another.
fn through_bwrap(a: &Args, level: usize) -> Duration {
    let t = Instant::now();
    let per = a.runs.div_ceil(level);
    std::thread::scope(|s| {
        for _ in 0..level {
            s.spawn(|| {
                for _ in 0..per {
                    let st = std::process::Command::new("bwrap")
                        .args(["--unshare-all", "--ro-bind"])
                        .arg(&a.rootfs)
                        .args(["/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"])
                        .args(["--", "/bin/true"])
                        .status()
                        .expect("bwrap");
                    assert!(st.success());
                }
            });
        }
    });
    t.elapsed() * a.runs as u32 / (per * level) as u32
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    nsrun::helper::run_if_helper();
    let a = parse();
    let root = tempfile::tempdir().expect("tempdir");
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    println!(
        "| runs at once | bwrap (ms/run) | Runtime cold (ms/run) | Runtime warm pool {} (ms/run) | cold / bwrap | pool / bwrap |",
        a.pool
    );
    println!("|---|---|---|---|---|---|");
    for &level in &a.levels {
        let cold = runtime(&a, root.path(), level, 0);
        let warm = {
            let _g = tokio.enter();
            runtime(&a, root.path(), level, a.pool.max(level))
        };
        // Warm-up: one round each, not counted (fills the pool, faults in the binaries).
        through_runtime(&tokio, &cold, &a, level);
        through_runtime(&tokio, &warm, &a, level);
        through_bwrap(&a, level);
        let (mut b, mut c, mut w) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..a.rounds {
            b.push(through_bwrap(&a, level) / a.runs as u32);
            c.push(through_runtime(&tokio, &cold, &a, level) / a.runs as u32);
            w.push(through_runtime(&tokio, &warm, &a, level) / a.runs as u32);
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let (b, c, w) = (median(b), median(c), median(w));
        println!(
            "| {level} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            ms(b),
            ms(c),
            ms(w),
            ms(c) / ms(b),
            ms(w) / ms(b)
        );
    }
}
