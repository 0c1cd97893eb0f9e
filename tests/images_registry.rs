//! Against real registries (Debian's docker-registry started by `scripts/registry.sh`): images
//! built here in Rust, pushed with oci-client, pulled back through every path — plain HTTP,
//! htpasswd basic auth (with `--creds` and with a docker config file), and TLS with a test CA.
//!
//! Needs the variables `scripts/registry.sh start` writes (NSRUN_TEST_REGISTRY, …). Without them
//! the tests fail in CI (`CI=true`) and are skipped elsewhere.
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

mod support;

mod images_common;

use std::time::Duration;

use images_common::*;
use nsrun::reference::Reference;
use nsrun::registry::{RegistryClient, RegistryOptions};
use nsrun::store::{PullOptions, Store};

struct Env {
    plain: String,
    auth: String,
    creds: String,
    tls: String,
    ca: String,
}

fn env() -> Option<Env> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (
        get("NSRUN_TEST_REGISTRY"),
        get("NSRUN_TEST_REGISTRY_AUTH"),
        get("NSRUN_TEST_REGISTRY_CREDS"),
        get("NSRUN_TEST_REGISTRY_TLS"),
        get("NSRUN_TEST_REGISTRY_CA"),
    ) {
        (Some(plain), Some(auth), Some(creds), Some(tls), Some(ca)) => Some(Env {
            plain,
            auth,
            creds,
            tls,
            ca,
        }),
        _ => {
            if in_ci() {
                panic!("CI=true but the test registries are not configured: run scripts/registry.sh start DIR and source DIR/registry.env");
            }
            crate::support::skipped(
                "no test registry (run scripts/registry.sh start DIR and source DIR/registry.env)",
            );
            None
        }
    }
}

fn ropts() -> RegistryOptions {
    RegistryOptions {
        retries: 1,
        backoff: Duration::from_millis(50),
        docker_config: Some("/nonexistent/config.json".into()),
        ..Default::default()
    }
}

fn popts(r: RegistryOptions) -> PullOptions {
    PullOptions {
        registry: r,
        ..Default::default()
    }
}

/// A repository name private to this user, so root and unprivileged runs do not collide.
fn repo(name: &str) -> String {
    format!("nsrun-test-{}/{name}", nix::unistd::geteuid())
}

async fn push(reference: &str, img: &Image, o: &RegistryOptions) -> String {
    let r = Reference::parse(reference).unwrap();
    let c = RegistryClient::new(&r, o).unwrap();
    let d = c
        .push_image(&img.layers, &img.config, img.docker)
        .await
        .unwrap();
    assert_eq!(d, img.digest(), "the pushed manifest is the one built here");
    d
}

fn multi_layer(docker: bool) -> Image {
    let mut l1 = Tar::new();
    l1.dir("etc")
        .file("etc/keep", b"keep")
        .file("etc/gone", b"gone")
        .dir("var")
        .dir("var/cache")
        .file("var/cache/stale", b"stale");
    let mut l2 = Tar::new();
    l2.file("etc/.wh.gone", b"")
        .dir("var/cache")
        .file("var/cache/.wh..wh..opq", b"")
        .file("var/cache/fresh", b"fresh")
        .symlink("etc/link", "keep")
        .hardlink("etc/hard", "etc/keep");
    let (t1, t2) = (l1.finish(), l2.finish());
    let mt = if docker {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    } else {
        "application/vnd.oci.image.layer.v1.tar+zstd"
    };
    let second = if docker { gzip(&t2) } else { zstd(&t2) };
    Image::new(
        vec![
            (
                gzip(&t1),
                if docker {
                    mt.into()
                } else {
                    "application/vnd.oci.image.layer.v1.tar+gzip".into()
                },
            ),
            (second, mt.into()),
        ],
        &[t1, t2],
        "amd64",
        docker,
        &["/bin/true"],
    )
}

fn check_multi_layer(root: &std::path::Path) {
    assert_eq!(std::fs::read(root.join("etc/keep")).unwrap(), b"keep");
    assert!(!root.join("etc/gone").exists());
    assert!(!root.join("var/cache/stale").exists());
    assert_eq!(
        std::fs::read(root.join("var/cache/fresh")).unwrap(),
        b"fresh"
    );
    assert_eq!(
        std::fs::read_link(root.join("etc/link")).unwrap().to_str(),
        Some("keep")
    );
    assert_eq!(std::fs::read(root.join("etc/hard")).unwrap(), b"keep");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_oci_docker_and_index() {
    let Some(e) = env() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let s = Store::open(tmp.path()).unwrap();
    for (docker, name) in [(false, "oci-multi"), (true, "docker-multi")] {
        let img = multi_layer(docker);
        let r = format!("{}/{}:v1", e.plain, repo(name));
        push(&r, &img, &ropts()).await;
        let got = s.pull(&r, &popts(ropts())).await.unwrap();
        assert_eq!(got.digest, img.digest());
        check_multi_layer(&got.rootfs[0]);
        assert_eq!(got.config.cmd, Some(vec!["/bin/true".to_string()]));
        // And pinned by digest.
        let by_digest = format!("{}/{}@{}", e.plain, repo(name), img.digest());
        assert_eq!(
            s.pull(&by_digest, &popts(ropts())).await.unwrap().digest,
            img.digest()
        );
    }

    // An index with two platforms, pushed platform manifests first (by digest), then the index.
    let amd = Image::simple("amd64", "from-amd64");
    let arm = Image::simple("arm64", "from-arm64");
    let base = format!("{}/{}", e.plain, repo("multiarch"));
    push(&format!("{base}:amd64"), &amd, &ropts()).await;
    push(&format!("{base}:arm64"), &arm, &ropts()).await;
    for (docker, tag) in [(false, "oci-index"), (true, "docker-list")] {
        let idx = index(
            &[(&amd, "amd64", None), (&arm, "arm64", Some("v8"))],
            docker,
        );
        let c = RegistryClient::new(
            &Reference::parse(&format!("{base}:{tag}")).unwrap(),
            &ropts(),
        )
        .unwrap();
        c.push_manifest_bytes(&idx, if docker { DOCKER_LIST } else { OCI_INDEX })
            .await
            .unwrap();
        for (platform, marker) in [
            ("linux/amd64", "from-amd64"),
            ("linux/arm64/v8", "from-arm64"),
        ] {
            let o = PullOptions {
                platform: Some(platform.into()),
                ..popts(ropts())
            };
            let got = s.pull(&format!("{base}:{tag}"), &o).await.unwrap();
            assert_eq!(
                std::fs::read_to_string(got.rootfs[0].join("hello")).unwrap(),
                marker
            );
        }
    }
    let err = s
        .pull(&format!("{base}:no-such-tag"), &popts(ropts()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_with_creds_and_docker_config() {
    let Some(e) = env() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let s = Store::open(&tmp.path().join("c")).unwrap();
    let img = Image::simple("amd64", "authed");
    let r = format!("{}/{}:v1", e.auth, repo("authed"));
    let with_creds = RegistryOptions {
        creds: Some(e.creds.clone()),
        ..ropts()
    };
    push(&r, &img, &with_creds).await;

    // Anonymous: refused with a message that says what to do.
    let err = s.pull(&r, &popts(ropts())).await.unwrap_err().to_string();
    assert!(
        err.contains("refused the credentials") || err.contains("401"),
        "{err}"
    );
    assert!(s.list().unwrap().is_empty());
    // Wrong password: refused.
    let wrong = RegistryOptions {
        creds: Some("nsrun:wrong".into()),
        ..ropts()
    };
    assert!(s.pull(&r, &popts(wrong)).await.is_err());
    // --creds
    let got = s.pull(&r, &popts(with_creds)).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(got.rootfs[0].join("hello")).unwrap(),
        "authed"
    );
    // ~/.docker/config.json style auths.
    use base64::Engine;
    let cfg = tmp.path().join("config.json");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&e.creds);
    std::fs::write(
        &cfg,
        format!(r#"{{"auths":{{"{}":{{"auth":"{b64}"}}}}}}"#, e.auth),
    )
    .unwrap();
    let s2 = Store::open(&tmp.path().join("c2")).unwrap();
    let via_config = RegistryOptions {
        docker_config: Some(cfg),
        ..ropts()
    };
    let got = s2.pull(&r, &popts(via_config)).await.unwrap();
    assert_eq!(got.digest, img.digest());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_test_ca() {
    let Some(e) = env() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let s = Store::open(tmp.path()).unwrap();
    let img = multi_layer(false);
    let r = format!("{}/{}:v1", e.tls, repo("tls"));
    let with_ca = RegistryOptions {
        ca_files: vec![e.ca.clone().into()],
        ..ropts()
    };
    push(&r, &img, &with_ca).await;
    let got = s.pull(&r, &popts(with_ca)).await.unwrap();
    check_multi_layer(&got.rootfs[0]);
    // Without the CA the certificate is not trusted, and nsrun does not silently drop to HTTP.
    let s2 = Store::open(&tmp.path().join("other")).unwrap();
    let err = s2.pull(&r, &popts(ropts())).await.unwrap_err().to_string();
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
    assert!(s2.list().unwrap().is_empty());
}
