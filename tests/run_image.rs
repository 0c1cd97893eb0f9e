//! `nsrun run IMAGE`: an image pulled from a real registry (and from an OCI layout), run with
//! its Entrypoint, Cmd, Env, WorkingDir and User applied as Docker applies them.
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

mod support;

mod common;
mod images_common;

use common::*;
use images_common::{gzip, sha256, Image, OCI_MANIFEST};

use std::process::Command;

/// The busybox rootfs as one gzip layer, with an image config of our choosing.
fn busybox_image(config: serde_json::Value) -> Image {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", rootfs()).unwrap();
    // The image user's private home: readable only by uid 1000, as in a real image.
    for (path, mode, data) in [
        ("home/tool/", 0o700, &b""[..]),
        ("home/tool/secret", 0o600, &b"s3cret\n"[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(if path.ends_with('/') {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let layer = gzip(&tar);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [sha256(&tar)]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256(&layer), "size": layer.len()}],
    }))
    .unwrap();
    Image {
        layers: vec![(layer, "application/vnd.oci.image.layer.v1.tar+gzip".into())],
        config,
        manifest,
        docker: false,
    }
}

fn tool_config() -> serde_json::Value {
    serde_json::json!({
        "Entrypoint": ["/bin/sh", "-c", "echo \"entry:$*|$IMG|$OVER|$(pwd)|$(id -u):$(id -g)|$(cat /home/tool/secret 2>&1)\"", "tool"],
        "Cmd": ["default-arg"],
        "Env": ["PATH=/usr/bin:/bin", "IMG=from-image", "OVER=image"],
        "WorkingDir": "/srv/work",
        "User": "tool",
    })
}

/// `nsrun run` with a cache of its own under `cache`.
fn nsrun_image(cache: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(nsrun_bin())
        .arg("run")
        .arg("--root")
        .arg(cache)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn an_image_from_a_real_registry_runs_with_its_config() {
    let Some(registry) = std::env::var("NSRUN_TEST_REGISTRY")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        assert!(
            !in_ci(),
            "CI must start the test registry (scripts/registry.sh)"
        );
        crate::support::skipped("NSRUN_TEST_REGISTRY is not set");
        return;
    };
    let img = busybox_image(tool_config());
    let reference = format!(
        "{registry}/nsrun-test-{}/run-image:1",
        nix::unistd::geteuid()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = nsrun::reference::Reference::parse(&reference).unwrap();
    let client = nsrun::registry::RegistryClient::new(&r, &Default::default()).unwrap();
    let digest = rt
        .block_on(client.push_image(&img.layers, &img.config, false))
        .unwrap();
    assert_eq!(digest, img.digest());

    let cache = tempfile::tempdir().unwrap();
    let c = cache.path();
    // Entrypoint + Cmd, Env, WorkingDir (made, as the image lacks it) and User from the image.
    let o = nsrun_image(c, &[&reference]);
    assert_code(&o, 0);
    assert_eq!(
        stdout(&o),
        "entry:default-arg|from-image|image|/srv/work|1000:1000|s3cret\n"
    );
    // Arguments replace Cmd, not Entrypoint; -e overrides the image's Env; -w and -u override.
    let o = nsrun_image(
        c,
        &[
            "-e",
            "OVER=flag",
            "-w",
            "/tmp",
            "-u",
            "0:0",
            &reference,
            "a",
            "b",
        ],
    );
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "entry:a b|from-image|flag|/tmp|0:0|s3cret\n");
    // --entrypoint replaces Entrypoint and drops Cmd.
    let o = nsrun_image(c, &["--entrypoint", "/bin/echo", &reference, "plain"]);
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "plain\n");
    // The shorthand without `run`, and the cache: no registry needed the second time.
    let o = Command::new(nsrun_bin())
        .args(["--root", c.to_str().unwrap(), "--pull", "never", &reference])
        .output()
        .unwrap();
    assert_code(&o, 0);
    assert_eq!(
        stdout(&o),
        "entry:default-arg|from-image|image|/srv/work|1000:1000|s3cret\n"
    );
}

#[test]
fn an_image_from_an_oci_layout_runs_and_bad_images_fail_cleanly() {
    let layout = tempfile::tempdir().unwrap();
    let img =
        busybox_image(serde_json::json!({"Cmd": ["/bin/sh", "-c", "echo from-layout; hostname"]}));
    images_common::write_oci_layout(layout.path(), &[(&img, Some("v1"))], None);
    let cache = tempfile::tempdir().unwrap();
    let src = format!("oci:{}:v1", layout.path().display());
    let o = nsrun_image(cache.path(), &["--hostname", "from-oci", &src]);
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "from-layout\nfrom-oci\n");

    // No Entrypoint, no Cmd, no command: Docker's "no command specified".
    let bare = busybox_image(serde_json::json!({}));
    let layout2 = tempfile::tempdir().unwrap();
    images_common::write_oci_layout(layout2.path(), &[(&bare, Some("v1"))], None);
    let o = nsrun_image(
        cache.path(),
        &[&format!("oci:{}:v1", layout2.path().display())],
    );
    assert_code(&o, 125);
    assert!(
        stderr(&o).contains("no command specified"),
        "{}",
        stderr(&o)
    );

    // A bad flag is refused before anything is pulled into the cache.
    let fresh = tempfile::tempdir().unwrap();
    let mut bad: Vec<&[&str]> = vec![
        &["--memory", "lots"],
        &["--cap-add", "NO_SUCH_CAP"],
        &["--security-opt", "seccomp=/nonexistent/profile.json"],
        &["-v", "/nonexistent-source:/x"],
        &["-w", "relative"],
        &["-e", "=x"],
        &["--hostname", ""],
    ];
    if is_root() {
        bad.extend([
            &["--uid-base", "0"][..],
            &["--uid-base", "4294967295"],
            &["--uid-base", "4294967000"],
        ]);
    }
    for flags in bad {
        let mut args = flags.to_vec();
        args.extend([src.as_str(), "true"]);
        let o = nsrun_image(fresh.path(), &args);
        assert_code(&o, 125);
        assert_eq!(stderr(&o).lines().count(), 1, "{flags:?}: {}", stderr(&o));
        let o = Command::new(nsrun_bin())
            .args(["images", "--root", fresh.path().to_str().unwrap(), "-q"])
            .output()
            .unwrap();
        assert_eq!(
            stdout(&o),
            "",
            "{flags:?}: nothing may be pulled for a run that was refused"
        );
    }
}

#[test]
fn the_images_stop_signal_stops_the_tool_unless_stop_signal_overrides_it() {
    let layout = tempfile::tempdir().unwrap();
    let img = busybox_image(serde_json::json!({
        "Cmd": ["/bin/sh", "-c",
            "trap 'echo got-usr2; exit 0' USR2; trap 'echo got-hup; exit 0' HUP; \
             trap 'echo got-term; exit 0' TERM; while :; do sleep 0.1; done"],
        "StopSignal": "SIGUSR2",
    }));
    images_common::write_oci_layout(layout.path(), &[(&img, Some("v1"))], None);
    let cache = tempfile::tempdir().unwrap();
    let src = format!("oci:{}:v1", layout.path().display());
    let o = nsrun_image(cache.path(), &["--timeout", "1", &src]);
    assert_code(&o, 124);
    assert_eq!(stdout(&o), "got-usr2\n");
    let o = nsrun_image(
        cache.path(),
        &["--timeout", "1", "--stop-signal", "HUP", &src],
    );
    assert_code(&o, 124);
    assert_eq!(stdout(&o), "got-hup\n");
}
