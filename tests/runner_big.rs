//! A gigabyte in (a streamed input) and a gigabyte out (stdout) through the runner, while the
//! caller's memory stays small. One test in its own binary, so the peak RSS measured is its own.
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

mod support;

mod common;
use common::*;

use std::pin::Pin;
use std::task::{Context, Poll};

use nsrun::runner::{Data, RunSpec, Runtime};
use tokio::io::{AsyncRead, ReadBuf};

const GIB: u64 = 1 << 30;

/// `len` bytes of a pattern (byte i is i % 251), made as they are read.
struct Pattern {
    pos: u64,
    len: u64,
}

impl AsyncRead for Pattern {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.len - self.pos) as usize;
        let start = self.pos;
        let chunk: Vec<u8> = (0..n as u64).map(|i| ((start + i) % 251) as u8).collect();
        buf.put_slice(&chunk);
        self.pos += n as u64;
        Poll::Ready(Ok(()))
    }
}

/// Peak resident memory of this process, bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

#[test]
fn a_gigabyte_in_and_out_never_sits_in_memory() {
    let root = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let runtime = Runtime::builder()
        .root(root.path())
        .helper(nsrun_bin())
        .capture_limit(1 << 20)
        .build()
        .unwrap();
    let before = peak_rss();
    rt.block_on(async {
        let reader: Box<dyn AsyncRead + Send + Unpin> = Box::new(Pattern { pos: 0, len: GIB });
        let r = runtime
            .run(
                RunSpec::rootfs(rootfs())
                    .args([
                        "/bin/sh",
                        "-c",
                        "wc -c < /inputs/big; tail -c 3 /inputs/big | od -An -tu1",
                    ])
                    .input("big", Data::Reader(reader)),
            )
            .await
            .unwrap();
        let want_tail: Vec<String> = (GIB - 3..GIB).map(|i| (i % 251).to_string()).collect();
        let out = String::from_utf8_lossy(&r.stdout);
        let mut lines = out.lines();
        assert_eq!(lines.next().map(str::trim), Some("1073741824"), "{out}");
        assert_eq!(
            lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
            want_tail,
            "{out}"
        );

        let r = runtime
            .run(RunSpec::rootfs(rootfs()).args([
                "/bin/sh",
                "-c",
                "head -c 1073741824 /dev/zero; echo done >&2",
            ]))
            .await
            .unwrap();
        assert_eq!(r.exit_code, 0);
        assert_eq!(r.stdout_bytes, GIB);
        assert_eq!(r.stdout.len(), 1 << 20);
        assert!(r.stdout_truncated && !r.stderr_truncated);
        assert_eq!(r.stderr, b"done\n");
    });
    let peak = peak_rss();
    // A copy of either gigabyte would show; the capture cap is 1 MiB per stream.
    assert!(
        peak < before + (64 << 20),
        "peak RSS grew from {before} to {peak} bytes"
    );
    assert!(std::fs::read_dir(root.path().join("runs"))
        .unwrap()
        .next()
        .is_none());
}
