//! Builds an image from a root filesystem directory and pushes it to a registry.
//!
//! ```text
//! cargo run --release --example push_rootfs -- DIR 127.0.0.1:5000/busybox:latest
//!     [--layers N]            split the top-level entries over N layers (default 1)
//!     [--zstd]                compress layers with zstd instead of gzip
//!     [--docker]              Docker schema 2 media types instead of OCI
//!     [--cmd ARG]...          the image's Cmd (default: /bin/sh)
//!     [--creds USER:PASS] [--registry-ca FILE] [--insecure-registry HOST[:PORT]]
//! ```
//! Files keep their modes and owners; the registry is reached over HTTPS, or plain HTTP for
//! loopback and `--insecure-registry` hosts, as `nsrun pull` does.
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nsrun::reference::Reference;
use nsrun::registry::manifest::Platform;
use nsrun::registry::{RegistryClient, RegistryOptions};

struct Args {
    dir: PathBuf,
    reference: String,
    layers: usize,
    zstd: bool,
    docker: bool,
    cmd: Vec<String>,
    opts: RegistryOptions,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut pos = Vec::new();
    let mut a = Args {
        dir: PathBuf::new(),
        reference: String::new(),
        layers: 1,
        zstd: false,
        docker: false,
        cmd: Vec::new(),
        opts: RegistryOptions::default(),
    };
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--layers" => {
                a.layers = val("--layers")?
                    .parse()
                    .map_err(|e| format!("--layers: {e}"))?
            }
            "--zstd" => a.zstd = true,
            "--docker" => a.docker = true,
            "--cmd" => a.cmd.push(val("--cmd")?),
            "--creds" => a.opts.creds = Some(val("--creds")?),
            "--registry-ca" => a.opts.ca_files.push(val("--registry-ca")?.into()),
            "--insecure-registry" => a.opts.insecure.push(val("--insecure-registry")?),
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            _ => pos.push(arg),
        }
    }
    if pos.len() != 2 {
        return Err("usage: push_rootfs DIR REGISTRY/REPO:TAG [options]".into());
    }
    a.dir = pos[0].clone().into();
    a.reference = pos[1].clone();
    if a.cmd.is_empty() {
        a.cmd.push("/bin/sh".into());
    }
    a.layers = a.layers.max(1);
    Ok(a)
}

fn du(p: &Path) -> u64 {
    let md = match std::fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(_) => return 0,
    };
    if md.is_dir() {
        std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| du(&e.path())).sum())
            .unwrap_or(0)
    } else {
        md.len()
    }
}

/// One uncompressed tar of `entries` (top-level names under `dir`).
fn layer_tar(dir: &Path, entries: &[PathBuf]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    for e in entries {
        let full = dir.join(e);
        if std::fs::symlink_metadata(&full)?.is_dir() {
            b.append_dir_all(e, &full)?;
        } else {
            b.append_path_with_name(&full, e)?;
        }
    }
    b.into_inner()
}

fn compress(data: &[u8], zstd: bool) -> std::io::Result<Vec<u8>> {
    if zstd {
        zstd::encode_all(data, 3)
    } else {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data)?;
        e.finish()
    }
}

async fn run(a: Args) -> Result<String, String> {
    let reference = Reference::parse(&a.reference).map_err(|e| e.to_string())?;
    // Spread the top-level entries over the layers, largest first, onto the lightest layer.
    let mut top: Vec<(u64, PathBuf)> = std::fs::read_dir(&a.dir)
        .map_err(|e| format!("{}: {e}", a.dir.display()))?
        .flatten()
        .map(|e| (du(&e.path()), PathBuf::from(e.file_name())))
        .collect();
    top.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
    let mut bins: Vec<(u64, Vec<PathBuf>)> = vec![(0, Vec::new()); a.layers.min(top.len().max(1))];
    for (size, name) in top {
        let lightest = bins
            .iter_mut()
            .min_by_key(|b| b.0)
            .expect("at least one layer");
        lightest.0 += size;
        lightest.1.push(name);
    }
    let media_type = match (a.docker, a.zstd) {
        (true, _) => nsrun::registry::manifest::DOCKER_LAYER_GZIP,
        (false, true) => nsrun::registry::manifest::OCI_LAYER_ZSTD,
        (false, false) => nsrun::registry::manifest::OCI_LAYER_GZIP,
    };
    if a.docker && a.zstd {
        return Err("Docker schema 2 has no zstd layer type; drop --docker or --zstd".into());
    }
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for (_, entries) in &bins {
        let tar = layer_tar(&a.dir, entries).map_err(|e| format!("building layer: {e}"))?;
        diff_ids.push(nsrun::registry::digest::sha256_digest(&tar));
        layers.push((
            compress(&tar, a.zstd).map_err(|e| e.to_string())?,
            media_type.to_string(),
        ));
    }
    let host = Platform::host();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": host.architecture,
        "os": "linux",
        "variant": host.variant,
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Cmd": a.cmd,
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .map_err(|e| e.to_string())?;
    let client = RegistryClient::new(&reference, &a.opts).map_err(|e| e.to_string())?;
    client
        .push_image(&layers, &config, a.docker)
        .await
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("push_rootfs: {e}");
            return ExitCode::from(2);
        }
    };
    let reference = a.reference.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(a)) {
        Ok(digest) => {
            println!("{reference}@{digest}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("push_rootfs: {e}");
            ExitCode::FAILURE
        }
    }
}
