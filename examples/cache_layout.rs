//! Measures the two cache layouts nsrun could use for a multi-layer image:
//! one flattened directory per image (what nsrun does) against one directory per layer assembled
//! by a read-only overlayfs mount at run time.
//!
//! ```text
//! sudo target/release/examples/cache_layout ROOTFS_DIR LAYERS WORK_DIR
//! ```
//! Splits ROOTFS_DIR into LAYERS layers (as `push_rootfs --layers` does), unpacks them both ways
//! with nsrun's unpacker, and prints unpack time, disk use (alone, and for two images sharing all
//! but the last layer), and the per-run mount cost (bind vs overlay), which needs root.
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nsrun::store::default_ownership;
use nsrun::unpack::{Limits, Unpacker};

fn du_apparent(p: &Path) -> u64 {
    du_unique(p, &mut std::collections::HashSet::new())
}

/// Disk blocks under `p`, counting each inode once (hardlinks are shared storage).
fn du_unique(p: &Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> u64 {
    let Ok(md) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    let own = if seen.insert((md.dev(), md.ino())) {
        md.blocks() * 512
    } else {
        0
    };
    if md.is_dir() {
        own + std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| du_unique(&e.path(), seen))
                    .sum::<u64>()
            })
            .unwrap_or(0)
    } else {
        own
    }
}

fn layer_tars(dir: &Path, n: usize) -> Vec<Vec<u8>> {
    let mut top: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .expect("read rootfs")
        .flatten()
        .map(|e| (du_apparent(&e.path()), PathBuf::from(e.file_name())))
        .collect();
    top.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
    let mut bins: Vec<(u64, Vec<PathBuf>)> = vec![(0, Vec::new()); n.max(1)];
    for (size, name) in top {
        let b = bins.iter_mut().min_by_key(|b| b.0).expect("a layer");
        b.0 += size;
        b.1.push(name);
    }
    bins.into_iter()
        .map(|(_, entries)| {
            let mut b = tar::Builder::new(Vec::new());
            b.follow_symlinks(false);
            b.mode(tar::HeaderMode::Complete);
            for e in entries {
                let full = dir.join(&e);
                if std::fs::symlink_metadata(&full)
                    .map(|m| m.is_dir())
                    .unwrap_or(false)
                {
                    b.append_dir_all(&e, &full).expect("tar");
                } else {
                    b.append_path_with_name(&full, &e).expect("tar");
                }
            }
            b.into_inner().expect("tar")
        })
        .collect()
}

fn unpack(dest: &Path, layers: &[&Vec<u8>], pool: Option<&Path>) -> f64 {
    std::fs::create_dir_all(dest).unwrap();
    let t = Instant::now();
    let mut u = Unpacker::new(dest, default_ownership(), Limits::default()).unwrap();
    if let Some(p) = pool {
        std::fs::create_dir_all(p).unwrap();
        u.share_files(p, nsrun::store::SHARE_MIN_SIZE).unwrap();
    }
    for l in layers {
        u.apply_layer(&l[..]).unwrap();
    }
    u.finish().unwrap();
    t.elapsed().as_secs_f64()
}

fn mount_cost(flat: &Path, layers: &[PathBuf], target: &Path) -> Option<(f64, f64)> {
    use nix::mount::{mount, umount, MsFlags};
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).ok()?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .ok()?;
    std::fs::create_dir_all(target).ok()?;
    const N: u32 = 200;
    let t = Instant::now();
    for _ in 0..N {
        mount(
            Some(flat),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .ok()?;
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .ok()?;
        umount(target).ok()?;
    }
    let bind = t.elapsed().as_secs_f64() / N as f64;
    // Overlay wants the topmost lower first.
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let data = format!("lowerdir={}", lower.join(":"));
    let t = Instant::now();
    for _ in 0..N {
        mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::MS_RDONLY,
            Some(data.as_str()),
        )
        .ok()?;
        umount(target).ok()?;
    }
    let overlay = t.elapsed().as_secs_f64() / N as f64;
    Some((bind, overlay))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: cache_layout ROOTFS_DIR LAYERS WORK_DIR");
        std::process::exit(2);
    }
    let (rootfs, n, work) = (
        Path::new(&args[1]),
        args[2].parse::<usize>().expect("LAYERS"),
        Path::new(&args[3]),
    );
    let tars = layer_tars(rootfs, n);
    let all: Vec<&Vec<u8>> = tars.iter().collect();
    let flat_dir = work.join("flat");
    let t_flat = unpack(&flat_dir, &all, None);
    // Flattened with the sharing pool: image A (all layers) and image B (all but the last).
    let pool = work.join("shared");
    let t_shared = unpack(&work.join("shared-a"), &all, Some(&pool));
    unpack(
        &work.join("shared-b"),
        &all[..all.len().saturating_sub(1)],
        Some(&pool),
    );
    let mut seen = std::collections::HashSet::new();
    let d_shared_one = du_unique(&work.join("shared-a"), &mut seen);
    let d_shared_two =
        d_shared_one + du_unique(&work.join("shared-b"), &mut seen) + du_unique(&pool, &mut seen);
    let mut t_layers = 0.0;
    let mut layer_dirs = Vec::new();
    for (i, t) in tars.iter().enumerate() {
        let d = work.join(format!("layer{i}"));
        t_layers += unpack(&d, &[t], None);
        layer_dirs.push(d);
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let d_flat = du_apparent(&flat_dir);
    let d_layers: Vec<u64> = layer_dirs.iter().map(|d| du_apparent(d)).collect();
    let d_sum: u64 = d_layers.iter().sum();
    let last = *d_layers.last().unwrap_or(&0);
    println!(
        "layers: {} (uncompressed tar total {:.1} MiB)",
        tars.len(),
        mib(tars.iter().map(|t| t.len() as u64).sum())
    );
    let d_flat_b = d_flat.saturating_sub(last);
    println!(
        "{:<34} {:>12} {:>12} {:>12}",
        "", "flattened", "flat+shared", "overlay"
    );
    println!(
        "{:<34} {:>12.3} {:>12.3} {:>12.3}",
        "unpack time (s)", t_flat, t_shared, t_layers
    );
    println!(
        "{:<34} {:>12.1} {:>12.1} {:>12.1}",
        "disk, one image (MiB)",
        mib(d_flat),
        mib(d_shared_one),
        mib(d_sum)
    );
    println!(
        "{:<34} {:>12.1} {:>12.1} {:>12.1}",
        "disk, + image of the first n-1",
        mib(d_flat + d_flat_b),
        mib(d_shared_two),
        mib(d_sum)
    );
    match mount_cost(&flat_dir, &layer_dirs, &work.join("mnt")) {
        Some((bind, overlay)) => println!(
            "{:<34} {:>12.1} {:>12.1}",
            "per-run mount+umount (us)",
            bind * 1e6,
            overlay * 1e6
        ),
        None => println!("per-run mount cost: needs root (skipped)"),
    }
}
