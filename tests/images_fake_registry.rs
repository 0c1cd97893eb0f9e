//! Pulling from an in-process registry that we control, including hostile behaviour: wrong
//! digest, wrong size, truncated body, 500-then-success, a stalled body, an oversized manifest.
//! Also: platforms, media types and compressions, cache policies, corruption repair, rmi/gc,
//! registry-free sources, 8 concurrent pulling processes, and SIGKILL in the middle of a pull.
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

mod support;

mod images_common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use images_common::*;
use nsrun::registry::RegistryOptions;
use nsrun::store::{PullOptions, PullPolicy, Store, StoreError};

fn opts() -> PullOptions {
    PullOptions {
        registry: RegistryOptions {
            retries: 2,
            backoff: Duration::from_millis(10),
            read_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            docker_config: Some("/nonexistent/config.json".into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn store() -> (tempfile::TempDir, Store) {
    let tmp = tempfile::tempdir().unwrap();
    let s = Store::open(&tmp.path().join("cache")).unwrap();
    (tmp, s)
}

fn dir_is_empty(p: &Path) -> bool {
    std::fs::read_dir(p)
        .map(|mut r| r.next().is_none())
        .unwrap_or(true)
}

/// Nothing visible and nothing left behind after a failed pull.
fn assert_nothing_installed(s: &Store) {
    assert!(
        dir_is_empty(&s.root().join("images")),
        "an entry was installed"
    );
    assert!(
        dir_is_empty(&s.root().join("staging")),
        "staging was left behind"
    );
    assert!(s.list().unwrap().is_empty());
}

/// Three layers: gzip, zstd and plain tar, with a whiteout and an opaque directory.
fn layered(docker: bool) -> Image {
    let mut l1 = Tar::new();
    l1.dir("bin")
        .entry("bin/tool", Kind::File(b"v1".to_vec()), 0o755, 0, 0)
        .dir("etc")
        .file("etc/removed", b"x")
        .dir("cache")
        .file("cache/old", b"old");
    let mut l2 = Tar::new();
    l2.file("etc/.wh.removed", b"")
        .dir("cache")
        .file("cache/.wh..wh..opq", b"")
        .file("cache/new", b"new");
    let mut l3 = Tar::new();
    l3.entry("bin/tool", Kind::File(b"v3".to_vec()), 0o755, 0, 0);
    let (t1, t2, t3) = (l1.finish(), l2.finish(), l3.finish());
    let gz = if docker {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    } else {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    };
    let (zmt, tmt) = if docker {
        // Docker schema 2 has only the gzip type; registries and tools sniff the content.
        (gz, gz)
    } else {
        (
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.oci.image.layer.v1.tar",
        )
    };
    Image::new(
        vec![
            (gzip(&t1), gz.into()),
            (zstd(&t2), zmt.into()),
            (t3.clone(), tmt.into()),
        ],
        &[t1, t2, t3],
        "amd64",
        docker,
        &["/bin/tool", "--flag"],
    )
}

fn check_layered(img: &nsrun::store::ResolvedImage) {
    let root = &img.rootfs[0];
    assert_eq!(std::fs::read(root.join("bin/tool")).unwrap(), b"v3");
    assert!(!root.join("etc/removed").exists());
    assert!(!root.join("cache/old").exists());
    assert_eq!(std::fs::read(root.join("cache/new")).unwrap(), b"new");
    assert_eq!(
        img.config.cmd,
        Some(vec!["/bin/tool".to_string(), "--flag".to_string()])
    );
    assert_eq!(
        img.config.env,
        vec!["PATH=/bin".to_string(), "IMG=1".to_string()]
    );
    assert_eq!(img.config.working_dir.as_deref(), Some("/w"));
    assert_eq!(img.config.user.as_deref(), Some("1000:1000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_oci_and_docker_images_with_all_compressions() {
    let reg = FakeRegistry::start();
    let (_t, s) = store();
    for (docker, repo) in [(false, "oci/img"), (true, "docker/img")] {
        let img = layered(docker);
        reg.put_image(repo, "v1", &img);
        let r = format!("{}/{repo}:v1", reg.addr);
        let got = s.pull(&r, &opts()).await.unwrap();
        assert_eq!(got.digest, img.digest());
        assert_eq!(got.reference, r);
        check_layered(&got);
        // The cache answers without the network, synchronously.
        let again = s.lookup(&r, &opts()).unwrap().expect("cached");
        assert_eq!(again.digest, img.digest());
        assert_eq!(again.rootfs, got.rootfs);
    }
    // A second pull of the same digest downloads no layer again.
    let img = layered(false);
    let blob = format!("/v2/oci/img/blobs/{}", sha256(&img.layers[0].0));
    assert_eq!(reg.hits(&blob), 1);
    s.pull(&format!("{}/oci/img:v1", reg.addr), &opts())
        .await
        .unwrap();
    assert_eq!(reg.hits(&blob), 1);
    // By digest too.
    let by_digest = format!("{}/oci/img@{}", reg.addr, img.digest());
    assert_eq!(
        s.pull(&by_digest, &opts()).await.unwrap().digest,
        img.digest()
    );
    assert_eq!(s.list().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_with_two_platforms() {
    let reg = FakeRegistry::start();
    let (_t, s) = store();
    let amd = Image::simple("amd64", "amd64");
    let arm = Image::simple("arm64", "arm64-v8");
    reg.put_image("multi", "amd-only", &amd);
    reg.put_image("multi", "arm-only", &arm);
    for (docker, tag) in [(false, "oci"), (true, "docker")] {
        let idx = index(
            &[(&amd, "amd64", None), (&arm, "arm64", Some("v8"))],
            docker,
        );
        reg.put_manifest(
            "multi",
            tag,
            &idx,
            if docker { DOCKER_LIST } else { OCI_INDEX },
        );
        let r = format!("{}/multi:{tag}", reg.addr);
        for (platform, marker) in [
            ("linux/amd64", "amd64"),
            ("linux/arm64", "arm64-v8"),
            ("linux/arm64/v8", "arm64-v8"),
        ] {
            let o = PullOptions {
                platform: Some(platform.into()),
                ..opts()
            };
            let img = s.pull(&r, &o).await.unwrap();
            assert_eq!(
                std::fs::read_to_string(img.rootfs[0].join("hello")).unwrap(),
                marker,
                "{platform}"
            );
            assert_eq!(s.lookup(&r, &o).unwrap().unwrap().digest, img.digest);
        }
        let o = PullOptions {
            platform: Some("linux/s390x".into()),
            ..opts()
        };
        let err = s.pull(&r, &o).await.unwrap_err().to_string();
        assert!(
            err.contains("linux/s390x") && err.contains("linux/arm64/v8"),
            "{err}"
        );
    }
    if std::env::consts::ARCH == "x86_64" {
        let img = s
            .pull(&format!("{}/multi:oci", reg.addr), &opts())
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(img.rootfs[0].join("hello")).unwrap(),
            "amd64"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_digest_installs_nothing() {
    let reg = FakeRegistry::start();
    let (_t, s) = store();
    let img = Image::simple("amd64", "x");
    reg.put_image("a", "v1", &img);
    let good = &img.layers[0].0;
    let mut evil = good.clone();
    let n = evil.len();
    evil[n - 9] ^= 0xff; // same size, different content
    reg.fault(
        &format!("/v2/a/blobs/{}", sha256(good)),
        Fault::Replace(evil),
    );
    let err = s
        .pull(&format!("{}/a:v1", reg.addr), &opts())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("verification failed") && msg.contains(&sha256(good)),
        "{msg}"
    );
    assert_nothing_installed(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_size_installs_nothing() {
    let reg = FakeRegistry::start();
    let (_t, s) = store();
    let img = Image::simple("amd64", "x");
    reg.put_image("a", "v1", &img);
    let good = &img.layers[0].0;
    let mut longer = good.clone();
    longer.extend_from_slice(b"trailing garbage");
    reg.fault(
        &format!("/v2/a/blobs/{}", sha256(good)),
        Fault::Replace(longer),
    );
    let msg = s
        .pull(&format!("{}/a:v1", reg.addr), &opts())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("expected") && msg.contains(&good.len().to_string()),
        "{msg}"
    );
    assert_nothing_installed(&s);
    // Shorter, on the config this time.
    reg.fault(
        &format!("/v2/a/blobs/{}", sha256(&img.config)),
        Fault::Replace(img.config[..10].to_vec()),
    );
    reg.faults
        .lock()
        .unwrap()
        .remove(&format!("/v2/a/blobs/{}", sha256(good)));
    let msg = s
        .pull(&format!("{}/a:v1", reg.addr), &opts())
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains(&sha256(&img.config)), "{msg}");
    assert_nothing_installed(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_body_is_retried_then_reported() {
    let reg = FakeRegistry::start();
    let (_t, s) = store();
    let img = Image::simple("amd64", "x");
    reg.put_image("a", "v1", &img);
    let path = format!("/v2/a/blobs/{}", sha256(&img.layers[0].0));
    // Once: the retry succeeds.
    reg.fault(&path, Fault::Truncate(20));
    s.pull(&format!("{}/a:v1", reg.addr), &opts())
        .await
        .unwrap();
    assert_eq!(reg.hits(&path), 2);
    // Always: reported after the retries, nothing installed.
    let (_t2, s2) = store();
    reg.fault(&path, Fault::AlwaysTruncate(20));
    let msg = s2
        .pull(&format!("{}/a:v1", reg.addr), &opts())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("3 attempts") && msg.contains(&sha256(&img.layers[0].0)),
        "{msg}"
    );
    assert_nothing_installed(&s2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_then_success() {
    let reg = FakeRegistry::start();
    let (_t, s) = store();
    let img = Image::simple("amd64", "x");
    reg.put_image("a", "v1", &img);
    let blob = format!("/v2/a/blobs/{}", sha256(&img.layers[0].0));
    reg.fault(&blob, Fault::FailTimes(2));
    reg.fault("/v2/a/manifests/v1", Fault::FailTimes(1));
    s.pull(&format!("{}/a:v1", reg.addr), &opts())
        .await
        .unwrap();
    assert_eq!(reg.hits(&blob), 3);
    // More failures than retries: a clear error naming the status.
    let (_t2, s2) = store();
    reg.fault(&blob, Fault::FailTimes(10));
    let msg = s2
        .pull(&format!("{}/a:v1", reg.addr), &opts())
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("HTTP 500"), "{msg}");
    assert_nothing_installed(&s2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_body_times_out() {
    let reg = FakeRegistry::start();
    let (_t, s) = store();
    let img = Image::simple("amd64", "x");
    reg.put_image("a", "v1", &img);
    reg.fault(
        &format!("/v2/a/blobs/{}", sha256(&img.layers[0].0)),
        Fault::Stall(Duration::from_secs(60)),
    );
    let mut o = opts();
    o.registry.read_timeout = Duration::from_secs(1);
    o.registry.retries = 1;
    let start = Instant::now();
    let msg = s
        .pull(&format!("{}/a:v1", reg.addr), &o)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("stalled") || msg.contains("timed out"),
        "{msg}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
    assert_nothing_installed(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_manifest_is_refused() {
    let reg = FakeRegistry::start();
    let (_t, s) = store();
    let mut big =
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","pad":""#
            .to_vec();
    big.extend(std::iter::repeat_n(b'x', 5 << 20));
    big.extend_from_slice(b"\"}");
    reg.put_manifest("a", "big", &big, OCI_MANIFEST);
    let msg = s
        .pull(&format!("{}/a:big", reg.addr), &opts())
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("limit"), "{msg}");
    assert_nothing_installed(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_not_matching_pinned_digest_is_refused() {
    let reg = FakeRegistry::start();
    let (_t, s) = store();
    let a = Image::simple("amd64", "a");
    let b = Image::simple("amd64", "b");
    reg.put_image("r", "a", &a);
    // Serve b's manifest under a's digest.
    reg.content.lock().unwrap().insert(
        format!("/v2/r/manifests/{}", a.digest()),
        (b.manifest.clone(), OCI_MANIFEST.into()),
    );
    let err = s
        .pull(&format!("{}/r@{}", reg.addr, a.digest()), &opts())
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&a.digest()), "{err}");
    assert_nothing_installed(&s);
    let err = s
        .pull(&format!("{}/r:missing", reg.addr), &opts())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_corruption_rmi_and_gc() {
    let reg = FakeRegistry::start();
    let (_t, s) = store();
    let img = Image::simple("amd64", "p");
    reg.put_image("p", "v1", &img);
    let r = format!("{}/p:v1", reg.addr);
    let err = s
        .ensure_image(&r, PullPolicy::Never, &opts())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    let got = s
        .ensure_image(&r, PullPolicy::Missing, &opts())
        .await
        .unwrap();
    let manifest_hits = reg.hits("/v2/p/manifests/v1");
    // Missing and Never now use the cache without touching the registry.
    s.ensure_image(&r, PullPolicy::Missing, &opts())
        .await
        .unwrap();
    s.ensure_image(&r, PullPolicy::Never, &opts())
        .await
        .unwrap();
    assert_eq!(reg.hits("/v2/p/manifests/v1"), manifest_hits);
    s.ensure_image(&r, PullPolicy::Always, &opts())
        .await
        .unwrap();
    assert_eq!(reg.hits("/v2/p/manifests/v1"), manifest_hits + 1);

    // A corrupted entry (marker gone) is not used, and the next pull repairs it.
    std::fs::remove_file(got.entry.join("entry.json")).unwrap();
    assert!(s.lookup(&r, &opts()).unwrap().is_none());
    let repaired = s
        .ensure_image(&r, PullPolicy::Missing, &opts())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(repaired.rootfs[0].join("hello")).unwrap(),
        "p"
    );

    // inspect shows the config; rmi removes; gc clears unreferenced entries and staging debris.
    let j = s.inspect(&r, &opts()).unwrap();
    assert_eq!(j["digest"], img.digest());
    assert_eq!(j["config"]["config"]["Cmd"][0], "/bin/tool");
    // Held by a run: rmi forgets the name but keeps the files until the run lets go.
    let img_now = s.lookup(&r, &opts()).unwrap().unwrap();
    let hold = s.hold(&img_now).unwrap();
    assert!(s.remove(&r, &opts()).unwrap().is_empty());
    assert!(img_now.rootfs[0].join("hello").exists());
    assert!(s.gc().unwrap().entries.is_empty());
    drop(hold);
    s.pull(&r, &opts()).await.unwrap();
    let removed = s.remove(&r, &opts()).unwrap();
    assert_eq!(removed.len(), 1);
    assert!(s.lookup(&r, &opts()).unwrap().is_none());
    assert!(s.list().unwrap().is_empty());

    s.pull(&r, &opts()).await.unwrap();
    std::fs::create_dir_all(s.root().join("staging/deadbeef-squash-1-1.1.1/rootfs/x")).unwrap();
    std::fs::write(s.root().join("refs.json"), "{\"refs\":{}}").unwrap();
    let report = s.gc().unwrap();
    assert_eq!(report.entries.len(), 1);
    assert_eq!(report.staging.len(), 1);
    assert!(dir_is_empty(&s.root().join("images")));
    assert!(dir_is_empty(&s.root().join("staging")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_layout_and_docker_archive_sources() {
    let (tmp, s) = store();
    let a = Image::simple("amd64", "tagged-a");
    let b = Image::simple("amd64", "tagged-b");
    let arm = Image::simple("arm64", "arm");
    let layout = tmp.path().join("layout");
    let idx = index(&[(&a, "amd64", None), (&arm, "arm64", None)], false);
    write_oci_layout(
        &layout,
        &[(&a, Some("a")), (&b, Some("b"))],
        Some((&idx, "multi")),
    );
    // The arm image's blobs must be in the layout too for the index to resolve.
    for blob in arm.blobs() {
        std::fs::write(layout.join("blobs/sha256").join(&sha256(&blob)[7..]), &blob).unwrap();
    }
    let src_b = format!("oci:{}:b", layout.display());
    let got = s.pull(&src_b, &opts()).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(got.rootfs[0].join("hello")).unwrap(),
        "tagged-b"
    );
    assert_eq!(
        s.lookup(&src_b, &opts()).unwrap().unwrap().digest,
        b.digest()
    );
    let o = PullOptions {
        platform: Some("linux/arm64".into()),
        ..opts()
    };
    let got = s
        .pull(&format!("oci:{}:multi", layout.display()), &o)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(got.rootfs[0].join("hello")).unwrap(),
        "arm"
    );
    let err = s
        .pull(&format!("oci:{}:nope", layout.display()), &opts())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no image tagged \"nope\""),
        "{err}"
    );

    // A tampered blob in the layout is caught while unpacking.
    let layer = layout
        .join("blobs/sha256")
        .join(&sha256(&a.layers[0].0)[7..]);
    let mut bytes = std::fs::read(&layer).unwrap();
    let n = bytes.len();
    bytes[n - 9] ^= 0x55;
    std::fs::write(&layer, &bytes).unwrap();
    let (_t2, s2) = store();
    let err = s2
        .pull(&format!("oci:{}:a", layout.display()), &opts())
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&sha256(&a.layers[0].0)), "{err}");
    assert_nothing_installed(&s2);

    // docker save format: uncompressed layers checked against the config's diff_ids.
    let mut t = Tar::new();
    t.dir("etc").file("etc/os-release", b"ID=test\n");
    let tar1 = t.finish();
    let mut t = Tar::new();
    t.file("etc/.wh.os-release", b"").file("etc/other", b"o");
    let tar2 = t.finish();
    let dimg = Image::new(
        vec![
            (
                tar1.clone(),
                "application/vnd.docker.image.rootfs.diff.tar".into(),
            ),
            (tar2.clone(), "x".into()),
        ],
        &[tar1, tar2],
        "amd64",
        true,
        &["/bin/sh"],
    );
    let archive = tmp.path().join("saved.tar");
    write_docker_archive(&archive, &dimg, "saved:latest", false);
    let src = format!("docker-archive:{}", archive.display());
    let got = s.pull(&src, &opts()).await.unwrap();
    assert!(!got.rootfs[0].join("etc/os-release").exists());
    assert_eq!(
        std::fs::read(got.rootfs[0].join("etc/other")).unwrap(),
        b"o"
    );
    assert_eq!(s.lookup(&src, &opts()).unwrap().unwrap().digest, got.digest);
    // Docker 25+ names members by digest; same image, same synthesised manifest, same entry.
    let archive2 = tmp.path().join("saved-oci.tar");
    write_docker_archive(&archive2, &dimg, "saved:latest", true);
    let got2 = s
        .pull(&format!("docker-archive:{}", archive2.display()), &opts())
        .await
        .unwrap();
    assert_eq!(got2.digest, got.digest);
    // A layer that does not match the config's diff_id is refused.
    let mut bad = dimg.clone();
    let mut t = Tar::new();
    t.file("evil", b"x");
    bad.layers[1].0 = t.finish();
    let archive3 = tmp.path().join("saved-bad.tar");
    write_docker_archive(&archive3, &bad, "bad:latest", false);
    let (_t3, s3) = store();
    let err = s3
        .pull(&format!("docker-archive:{}", archive3.display()), &opts())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("verification failed") || err.to_string().contains("digest"),
        "{err}"
    );
    assert_nothing_installed(&s3);
}

// ------------------------------------------------------------------------------------------
// Several processes. The test binary re-runs itself with `--ignored --exact child_pull` and the
// environment below, so these exercise real cross-process locking.

#[test]
#[ignore = "helper run by other tests in a child process"]
fn child_pull() {
    let root = std::env::var("NSRUN_TEST_CHILD_ROOT").expect("run by the parent test");
    let reference = std::env::var("NSRUN_TEST_CHILD_REF").unwrap();
    let s = Store::open(Path::new(&root)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let img = rt.block_on(s.pull(&reference, &opts())).unwrap();
    println!("DIGEST={}", img.digest);
}

fn spawn_child(root: &Path, reference: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_pull",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("NSRUN_TEST_CHILD_ROOT", root)
        .env("NSRUN_TEST_CHILD_REF", reference)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn eight_concurrent_pulls_download_once() {
    let reg = FakeRegistry::start();
    let (_t, s) = store();
    // Big enough (8 MiB of noise) that the pulls really overlap.
    let mut noise = vec![0u8; 8 << 20];
    let mut x: u64 = 0x9E3779B97F4A7C15;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut t = Tar::new();
    t.file("noise", &noise).file("hello", b"concurrent");
    let tar = t.finish();
    let img = Image::new(
        vec![(
            gzip(&tar),
            "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        )],
        &[tar],
        "amd64",
        false,
        &["/x"],
    );
    reg.put_image("c", "v1", &img);
    let r = format!("{}/c:v1", reg.addr);
    let children: Vec<_> = (0..8).map(|_| spawn_child(s.root(), &r)).collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("DIGEST={}", img.digest())),
            "{stdout}"
        );
    }
    assert_eq!(
        reg.hits(&format!("/v2/c/blobs/{}", sha256(&img.layers[0].0))),
        1,
        "layer downloaded more than once"
    );
    assert_eq!(s.list().unwrap().len(), 1);
    assert!(dir_is_empty(&s.root().join("staging")));
}

#[test]
fn sigkill_mid_pull_leaves_nothing_visible() {
    let reg = FakeRegistry::start();
    let (_t, s) = store();
    let img = Image::simple("amd64", "after-kill");
    reg.put_image("k", "v1", &img);
    let blob = format!("/v2/k/blobs/{}", sha256(&img.layers[0].0));
    reg.fault(&blob, Fault::Stall(Duration::from_secs(120)));
    let r = format!("{}/k:v1", reg.addr);
    let mut child = spawn_child(s.root(), &r);
    // Wait until the child is inside the pull: staging exists and the layer request arrived.
    let deadline = Instant::now() + Duration::from_secs(60);
    while (reg.hits(&blob) == 0 || dir_is_empty(&s.root().join("staging")))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        reg.hits(&blob) > 0,
        "child never reached the layer download"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    assert!(
        dir_is_empty(&s.root().join("images")),
        "a partial entry is visible"
    );
    assert!(s.lookup(&r, &opts()).unwrap().is_none());
    // The next pull succeeds and sweeps the dead pull's staging.
    reg.faults.lock().unwrap().clear();
    let out = spawn_child(s.root(), &r).wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = s.lookup(&r, &opts()).unwrap().expect("installed");
    assert_eq!(
        std::fs::read_to_string(got.rootfs[0].join("hello")).unwrap(),
        "after-kill"
    );
    assert!(
        dir_is_empty(&s.root().join("staging")),
        "stale staging not swept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_flow_as_on_docker_hub() {
    let reg = FakeRegistry::start();
    let img = Image::simple("amd64", "bearer");
    reg.put_image("tok/img", "v1", &img);
    let r = format!("{}/tok/img:v1", reg.addr);
    // Anonymous token (Docker Hub's public images).
    *reg.bearer.lock().unwrap() = Some(String::new());
    let (_t, s) = store();
    let got = s.pull(&r, &opts()).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(got.rootfs[0].join("hello")).unwrap(),
        "bearer"
    );
    assert!(
        reg.hits
            .lock()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("/token")),
        "no token was fetched"
    );
    // A token only for the right basic credentials (private repositories).
    *reg.bearer.lock().unwrap() = Some("alice:pw".into());
    let (_t2, s2) = store();
    let err = s2.pull(&r, &opts()).await.unwrap_err().to_string();
    assert!(err.contains("refused the credentials"), "{err}");
    assert_nothing_installed(&s2);
    let mut o = opts();
    o.registry.creds = Some("alice:pw".into());
    let got = s2.pull(&r, &o).await.unwrap();
    assert_eq!(got.digest, img.digest());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_sharing_a_base_share_its_big_files() {
    use std::os::unix::fs::MetadataExt;
    let reg = FakeRegistry::start();
    let (_t, s) = store();
    let big = (0..200_000u32)
        .flat_map(|i| i.to_le_bytes())
        .collect::<Vec<u8>>(); // 800 kB
    let mut base = Tar::new();
    base.dir("usr")
        .file("usr/big", &big)
        .file("usr/small", b"small");
    let base = base.finish();
    let mk = |marker: &str| {
        let mut top = Tar::new();
        top.file("marker", marker.as_bytes())
            .file("own-big", &[marker.as_bytes(), &big[..]].concat());
        let top = top.finish();
        Image::new(
            vec![
                (
                    gzip(&base),
                    "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                ),
                (
                    gzip(&top),
                    "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                ),
            ],
            &[base.clone(), top],
            "amd64",
            false,
            &["/x"],
        )
    };
    reg.put_image("s/one", "v1", &mk("one"));
    reg.put_image("s/two", "v1", &mk("two"));
    let one = s
        .pull(&format!("{}/s/one:v1", reg.addr), &opts())
        .await
        .unwrap();
    let two = s
        .pull(&format!("{}/s/two:v1", reg.addr), &opts())
        .await
        .unwrap();
    let ino = |img: &nsrun::store::ResolvedImage, p: &str| {
        std::fs::metadata(img.rootfs[0].join(p)).unwrap().ino()
    };
    assert_eq!(
        ino(&one, "usr/big"),
        ino(&two, "usr/big"),
        "the shared base file is one inode"
    );
    assert_ne!(ino(&one, "own-big"), ino(&two, "own-big"));
    assert_ne!(
        ino(&one, "usr/small"),
        ino(&two, "usr/small"),
        "small files are not worth a link"
    );
    assert_eq!(std::fs::read(two.rootfs[0].join("usr/big")).unwrap(), big);
    // Removing one image keeps the other intact; once both are gone gc releases the pool copies.
    s.remove(&format!("{}/s/one:v1", reg.addr), &opts())
        .unwrap();
    assert_eq!(
        s.gc().unwrap().shared_files_released,
        1,
        "one's own-big is released"
    );
    assert_eq!(std::fs::read(two.rootfs[0].join("usr/big")).unwrap(), big);
    s.remove(&format!("{}/s/two:v1", reg.addr), &opts())
        .unwrap();
    assert_eq!(s.gc().unwrap().shared_files_released, 2);
    assert!(dir_is_empty(&s.root().join(format!(
        "shared/{}",
        nsrun::store::ownership_key(&opts().ownership)
    ))));
}
