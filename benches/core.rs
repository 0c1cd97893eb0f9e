//! The in-process parts of a run, measured by criterion: image reference parsing, building a
//! run's plan, compiling the seccomp profile against loading it from the verified cache, and
//! unpacking a layer. Whole-process figures (start-up, concurrency, pulls against docker, podman,
//! crun, runc, bubblewrap) are `scripts/bench.sh`'s.
//!
//!     cargo bench --bench core            # all
//!     cargo bench --bench core -- seccomp # one group
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

use std::hint::black_box;
use std::io::Write;
use std::path::Path;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use nsrun::ids::Ownership;
use nsrun::reference::Reference;
use nsrun::sandbox::caps::CapSet;
use nsrun::sandbox::plan::Plan;
use nsrun::sandbox::seccomp::{compile, SeccompSource};
use nsrun::sandbox::SandboxSpec;
use nsrun::unpack::{Limits, Unpacker};

fn references(c: &mut Criterion) {
    let mut g = c.benchmark_group("reference");
    for r in [
        "alpine",
        "127.0.0.1:5000/tools/dnsx:1.2",
        "registry.example.com/a/b/c@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        g.bench_function(r.split(['@', ':']).next().unwrap_or(r), |b| {
            b.iter(|| Reference::parse(black_box(r)).unwrap())
        });
    }
    g.finish();
}

fn seccomp(c: &mut Criterion) {
    let state = tempfile::tempdir().unwrap();
    let caps = CapSet::default_set();
    // Fill the cache once; "cached" then reads and verifies the file every iteration.
    compile(&SeccompSource::Default, caps, Some(state.path())).unwrap();
    let mut g = c.benchmark_group("seccomp");
    g.bench_function("compile", |b| {
        b.iter(|| compile(&SeccompSource::Default, caps, None).unwrap())
    });
    g.bench_function("cached", |b| {
        b.iter(|| compile(&SeccompSource::Default, caps, Some(state.path())).unwrap())
    });
    g.finish();
}

/// A small root filesystem: the directories a plan resolves, and a passwd file.
fn rootfs(dir: &Path) {
    for d in ["bin", "etc", "proc", "dev", "sys", "tmp", "run"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\n").unwrap();
}

fn plan(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("rootfs");
    rootfs(&root);
    let mut spec = SandboxSpec::new(&root, ["/bin/true"]);
    spec.state_dir = Some(tmp.path().join("state"));
    spec.env = vec!["A=1".into(), "B=2".into()];
    Plan::build(&spec, "0123456789abcdef").unwrap();
    c.bench_function("plan/build (cached seccomp)", |b| {
        b.iter(|| Plan::build(black_box(&spec), "0123456789abcdef").unwrap())
    });
}

/// A gzip layer of `files` files of `size` bytes each, in `dirs` directories.
fn layer(files: usize, size: usize, dirs: usize) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    let header = || {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    };
    for d in 0..dirs {
        let mut h = header();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        tar.append_data(&mut h, format!("d{d}/"), std::io::empty())
            .unwrap();
    }
    for f in 0..files {
        let mut h = header();
        h.set_mode(0o644);
        h.set_size(size as u64);
        tar.append_data(&mut h, format!("d{}/f{f}", f % dirs), &data[..])
            .unwrap();
    }
    let raw = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    gz.finish().unwrap()
}

fn unpack(c: &mut Criterion) {
    let euid = nix::unistd::geteuid().as_raw();
    let egid = nix::unistd::getegid().as_raw();
    let mut g = c.benchmark_group("unpack");
    g.sample_size(20);
    for (name, files, size) in [("2000 x 4 KiB", 2000, 4096), ("16 x 1 MiB", 16, 1 << 20)] {
        let gz = layer(files, size, 20);
        g.throughput(Throughput::Bytes((files * size) as u64));
        g.bench_function(name, |b| {
            b.iter_batched(
                || tempfile::tempdir().unwrap(),
                |dir| {
                    let mut u = Unpacker::new(
                        dir.path(),
                        Ownership::Squash {
                            uid: euid,
                            gid: egid,
                        },
                        Limits::default(),
                    )
                    .unwrap();
                    u.apply_layer(&gz[..]).unwrap();
                    u.finish().unwrap();
                    dir
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, references, seccomp, plan, unpack);
criterion_main!(benches);
