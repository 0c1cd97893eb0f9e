//! The `nsrun pull | images | inspect | rmi | gc` commands as processes: 8 parallel pulls of one
//! image download it once and all succeed; a SIGKILLed pull leaves nothing visible and the next
//! pull succeeds; errors are one line with exit status 125.
// A crate of its own that uses only some of the package's dependencies: the lint is the
// library's (Cargo.toml [lints]).
#![allow(unused_crate_dependencies)]

mod support;

mod images_common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use images_common::*;

fn nsrun(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nsrun"));
    c.args(args)
        .env("NSRUN_ROOT", root)
        .env("DOCKER_CONFIG", "/nonexistent");
    c
}

fn run(root: &Path, args: &[&str]) -> Output {
    nsrun(root, args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn empty(p: &Path) -> bool {
    std::fs::read_dir(p)
        .map(|mut r| r.next().is_none())
        .unwrap_or(true)
}

fn noise(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    let mut x: u64 = 0x2545F4914F6CDD1D;
    for b in v.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    v
}

fn big_image(marker: &str) -> Image {
    let mut t = Tar::new();
    t.file("noise", &noise(8 << 20))
        .file("hello", marker.as_bytes());
    let tar = t.finish();
    Image::new(
        vec![(
            gzip(&tar),
            "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        )],
        &[tar],
        "amd64",
        false,
        &["/hello"],
    )
}

#[test]
fn eight_parallel_pulls_download_once() {
    let reg = FakeRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let img = big_image("parallel");
    reg.put_image("par", "v1", &img);
    let r = format!("{}/par:v1", reg.addr);
    let children: Vec<_> = (0..8)
        .map(|_| {
            nsrun(&root, &["pull", "-q", &r])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), img.digest());
    }
    assert_eq!(
        reg.hits(&format!("/v2/par/blobs/{}", sha256(&img.layers[0].0))),
        1
    );
    let o = run(&root, &["images", "-q"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), img.digest());
    assert!(empty(&root.join("staging")));
}

#[test]
fn sigkill_mid_pull_then_pull_again() {
    let reg = FakeRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let img = big_image("survivor");
    reg.put_image("kill", "v1", &img);
    let blob = format!("/v2/kill/blobs/{}", sha256(&img.layers[0].0));
    reg.fault(&blob, Fault::Stall(Duration::from_secs(120)));
    let r = format!("{}/kill:v1", reg.addr);
    let mut child = nsrun(&root, &["pull", "-q", &r])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (reg.hits(&blob) == 0 || empty(&root.join("staging"))) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(reg.hits(&blob) > 0, "the pull never reached the layer");
    // Meanwhile the image is not there for --pull never.
    let o = run(&root, &["pull", "--pull", "never", &r]);
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));
    assert!(text(&o).contains("not in the cache"), "{}", text(&o));
    // Half the layer is on disk in staging now.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    assert!(empty(&root.join("images")), "a partial image is visible");
    let o = run(&root, &["images", "-q"]);
    assert!(o.status.success() && o.stdout.is_empty(), "{}", text(&o));

    reg.faults.lock().unwrap().clear();
    let o = run(&root, &["pull", "-q", &r]);
    assert!(o.status.success(), "{}", text(&o));
    let inspect = run(&root, &["inspect", &r]);
    let j: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let rootfs = j["rootfs"][0].as_str().unwrap();
    assert_eq!(
        std::fs::read_to_string(Path::new(rootfs).join("hello")).unwrap(),
        "survivor"
    );
    assert!(
        empty(&root.join("staging")),
        "the dead pull's staging was not swept"
    );
}

#[test]
fn errors_are_one_line_with_status_125() {
    let reg = FakeRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    for (args, needle) in [
        (
            vec!["pull".to_string(), "Not/Valid".to_string()],
            "invalid image reference".to_string(),
        ),
        (
            vec!["pull".into(), format!("{}/missing:v1", reg.addr)],
            "not found".to_string(),
        ),
        (
            vec![
                "pull".into(),
                "--platform".into(),
                "linux".into(),
                "busybox".into(),
            ],
            "invalid platform".to_string(),
        ),
        (
            vec!["inspect".into(), "never-pulled".into()],
            "not in the cache".to_string(),
        ),
        (
            vec!["rmi".into(), "never-pulled".into()],
            "not in the cache".to_string(),
        ),
        (
            vec![
                "pull".into(),
                format!("oci:{}", tmp.path().join("nodir").display()),
            ],
            "oci-layout".to_string(),
        ),
    ] {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run(&root, &a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(125), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(&needle), "{args:?}: {err}");
    }
}

#[test]
fn images_inspect_rmi_gc() {
    let reg = FakeRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let a = Image::simple("amd64", "a");
    let b = Image::simple("amd64", "b");
    reg.put_image("x/a", "v1", &a);
    reg.put_image("x/b", "v1", &b);
    let ra = format!("{}/x/a:v1", reg.addr);
    let rb = format!("{}/x/b:v1", reg.addr);
    for r in [&ra, &rb] {
        let o = run(&root, &["pull", r]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let o = run(&root, &["images"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("REFERENCE") && out.contains(&ra) && out.contains(&rb),
        "{out}"
    );
    let o = run(&root, &["images", "--json"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j.as_array().unwrap().len(), 2);
    let o = run(&root, &["inspect", &ra]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["digest"], a.digest());
    assert_eq!(j["config"]["config"]["Cmd"][0], "/bin/tool");
    let o = run(&root, &["rmi", &ra]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&root, &["images", "-q"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), b.digest());
    // gc keeps referenced images and sweeps debris.
    std::fs::create_dir_all(root.join("staging/abc-squash-1-1.99.1/rootfs")).unwrap();
    let o = run(&root, &["gc"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("stale pull"),
        "{}",
        text(&o)
    );
    assert!(empty(&root.join("staging")));
    let o = run(&root, &["images", "-q"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), b.digest());
}

#[test]
fn credentials_from_docker_config_helpers() {
    let reg = FakeRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let img = Image::simple("amd64", "helped");
    reg.put_image("priv/img", "v1", &img);
    *reg.bearer.lock().unwrap() = Some("helper-user:helper-pass".into());
    let r = format!("{}/priv/img:v1", reg.addr);
    // A docker-credential-* helper on PATH that answers for our registry only.
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let helper = bin.join("docker-credential-nsruntest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread url\nif [ \"$url\" = \"{}\" ]; then\n  echo '{{\"ServerURL\":\"'$url'\",\"Username\":\"helper-user\",\"Secret\":\"helper-pass\"}}'\nelse\n  echo 'credentials not found in native keychain'; exit 1\nfi\n",
            reg.addr
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (i, config) in [
        r#"{"credsStore":"nsruntest"}"#.to_string(),
        format!(r#"{{"credHelpers":{{"{}":"nsruntest"}}}}"#, reg.addr),
    ]
    .iter()
    .enumerate()
    {
        let cfg_dir = tmp.path().join(format!("docker{i}"));
        std::fs::create_dir(&cfg_dir).unwrap();
        std::fs::write(cfg_dir.join("config.json"), config).unwrap();
        let root = tmp.path().join(format!("cache{i}"));
        let o = nsrun(&root, &["pull", "-q", &r])
            .env("DOCKER_CONFIG", &cfg_dir)
            .env("PATH", &path)
            .output()
            .unwrap();
        assert!(o.status.success(), "{config}: {}", text(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), img.digest());
    }
    // Without the helper's answer the registry refuses, and says what to do.
    let o = run(&tmp.path().join("cache-anon"), &["pull", "-q", &r]);
    assert_eq!(o.status.code(), Some(125));
    assert!(text(&o).contains("--creds"), "{}", text(&o));
}

fn assert_one_line_125(o: &Output, needle: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(125), "{}", text(o));
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(needle), "wanted {needle:?} in: {err}");
    err
}

/// `--platform` is a promise: a single-platform image for another platform is refused (and not
/// recorded under the asked platform), even when that digest is already installed; without
/// `--platform`, any image is pulled.
#[test]
fn explicit_platform_must_match_a_single_platform_image() {
    let reg = FakeRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let img = Image::simple("amd64", "only-amd64");
    reg.put_image("solo", "v1", &img);
    let r = format!("{}/solo:v1", reg.addr);
    let o = run(&root, &["pull", "--platform", "linux/arm64", &r]);
    let err = assert_one_line_125(&o, "wanted linux/arm64");
    assert!(err.contains("actual: linux/amd64"), "{err}");
    let o = run(&root, &["images", "-q"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "",
        "{}",
        text(&o)
    );
    assert!(empty(&root.join("staging")));

    // No platform asked: pulled, whatever it is.
    let arm = Image::simple("arm64", "only-arm64");
    reg.put_image("arm", "v1", &arm);
    let ra = format!("{}/arm:v1", reg.addr);
    let o = run(&root, &["pull", "-q", &ra]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), arm.digest());
    // Installed already, asked for another platform: still refused, and not recorded for it.
    let o = run(&root, &["pull", "--platform", "linux/amd64", &ra]);
    let err = assert_one_line_125(&o, "wanted linux/amd64");
    assert!(err.contains("actual: linux/arm64"), "{err}");
    let o = run(&root, &["images", "-q"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), arm.digest());
    // Pulled without --platform, it sits under the host's platform (linux/amd64 here); asked
    // for explicitly, a cached lookup (run's default --pull missing) refuses it too.
    #[cfg(target_arch = "x86_64")]
    {
        let o = run(
            &root,
            &[
                "inspect",
                "--platform",
                "linux/amd64",
                "--pull",
                "never",
                &ra,
            ],
        );
        let err = assert_one_line_125(&o, "wanted linux/amd64");
        assert!(err.contains("actual: linux/arm64"), "{err}");
    }
    // The right platform, with or without a variant, is fine.
    for p in ["linux/arm64", "linux/arm64/v8"] {
        let o = run(&root, &["pull", "-q", "--platform", p, &ra]);
        assert!(o.status.success(), "{p}: {}", text(&o));
    }
    let o = run(&root, &["pull", "-q", "--platform", "linux/amd64", &r]);
    assert!(o.status.success(), "{}", text(&o));
}

/// A file that is not a `docker save` tarball: one line naming it, none of its content.
#[test]
fn docker_archive_of_a_text_file_is_one_line_without_its_content() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let secret = tmp.path().join("secret.txt");
    let body = "root:x:0:0:root:/root:/bin/bash\nTOPSECRET:x:1:1::/:/bin/sh\n".repeat(30);
    std::fs::write(&secret, body).unwrap();
    let src = format!("docker-archive:{}", secret.display());
    let o = run(&root, &["pull", &src]);
    let err = assert_one_line_125(&o, "is not a docker save tarball");
    assert!(err.contains(&secret.display().to_string()), "{err}");
    assert!(
        !err.contains("TOPSECRET") && !err.contains("/bin/bash"),
        "{err}"
    );
    // An empty file is a valid (empty) tar: still not a docker save tarball.
    let empty_file = tmp.path().join("empty.tar");
    std::fs::write(&empty_file, b"").unwrap();
    let o = run(
        &root,
        &["pull", &format!("docker-archive:{}", empty_file.display())],
    );
    assert_one_line_125(&o, "is not a docker save tarball");
}

/// `rmi` of a digest or tag the cache does not know fails (and removes nothing); of a known
/// digest it works.
#[test]
fn rmi_of_unknown_digest_or_tag_fails() {
    let reg = FakeRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let img = Image::simple("amd64", "rmi");
    reg.put_image("keep", "v1", &img);
    let r = format!("{}/keep:v1", reg.addr);
    let o = run(&root, &["pull", "-q", &r]);
    assert!(o.status.success(), "{}", text(&o));
    let unknown = format!("sha256:{}", "0".repeat(64));
    for args in [
        vec!["rmi", unknown.as_str()],
        vec!["rmi", "never-pulled:v9"],
        vec!["rmi", "docker.io/library/never-pulled@sha256:1111111111111111111111111111111111111111111111111111111111111111"],
    ] {
        let o = run(&root, &args);
        assert_one_line_125(&o, "not in the cache");
        assert!(
            !String::from_utf8_lossy(&o.stdout).contains("Untagged"),
            "{args:?}: {}",
            text(&o)
        );
        let o = run(&root, &["images", "-q"]);
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), img.digest());
    }
    let o = run(&root, &["rmi", &img.digest()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("Deleted:"),
        "{}",
        text(&o)
    );
    let o = run(&root, &["images", "-q"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "");
}

/// As root, a uid base whose range holds host id 0 or wraps past u32::MAX installs nothing (the
/// files would belong to host root). Unprivileged, files are squashed to the caller and the
/// base does not apply.
#[test]
fn uid_base_reaching_host_root_installs_nothing() {
    let reg = FakeRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let img = Image::simple("amd64", "base");
    reg.put_image("base", "v1", &img);
    let r = format!("{}/base:v1", reg.addr);
    for base in ["0", "4294967000", "4294967295"] {
        let o = nsrun(&root, &["pull", "-q", &r])
            .env("NSRUN_UID_BASE", base)
            .output()
            .unwrap();
        if !nix::unistd::geteuid().is_root() {
            assert!(o.status.success(), "{base}: {}", text(&o));
            continue;
        }
        assert_one_line_125(&o, "host root");
        assert!(empty(&root.join("images")), "{base}: something installed");
        assert!(empty(&root.join("staging")), "{base}: staging left behind");
        let o = run(&root, &["images", "-q"]);
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "");
    }
}

/// Opening an existing cache creates nothing: `nsrun images` and `inspect` run with mkdir and
/// mkdirat killing the process (seccomp), after a pull created the cache.
#[cfg(target_arch = "x86_64")]
#[test]
fn opening_an_existing_cache_makes_no_directories() {
    use std::os::unix::process::CommandExt;
    let reg = FakeRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cache");
    let img = Image::simple("amd64", "open");
    reg.put_image("open", "v1", &img);
    let r = format!("{}/open:v1", reg.addr);
    let o = run(&root, &["pull", "-q", &r]);
    assert!(o.status.success(), "{}", text(&o));
    for args in [vec!["images", "-q"], vec!["inspect", "--pull", "never", &r]] {
        let mut c = nsrun(&root, &args);
        // SAFETY: between fork and exec the closure only makes two prctl calls on a filter that
        // lives on the stack of this (copied) frame; nothing allocates or takes locks.
        unsafe {
            c.pre_exec(|| {
                const LD_W_ABS: u16 = 0x20;
                const JEQ_K: u16 = 0x15;
                const RET_K: u16 = 0x06;
                const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
                let f = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
                let prog = [
                    f(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
                    f(JEQ_K, 0, 4, AUDIT_ARCH_X86_64),
                    f(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
                    f(JEQ_K, 3, 0, libc::SYS_mkdir as u32),
                    f(JEQ_K, 2, 0, libc::SYS_mkdirat as u32),
                    f(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
                    f(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
                    f(RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
                ];
                let fprog = libc::sock_fprog {
                    len: prog.len() as u16,
                    filter: prog.as_ptr() as *mut libc::sock_filter,
                };
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::prctl(
                        libc::PR_SET_SECCOMP,
                        libc::SECCOMP_MODE_FILTER,
                        &fprog as *const libc::sock_fprog,
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let o = c.output().unwrap();
        assert!(
            o.status.success(),
            "{args:?} made a directory (or failed): {:?} {}",
            o.status,
            text(&o)
        );
    }
}

/// Credentials can come in without touching argv: `--creds-file FILE` and `--creds USER
/// --password-stdin`, as `docker login --password-stdin`; a malformed file is one line, 125.
#[test]
fn credentials_from_a_file_or_stdin() {
    let reg = FakeRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let img = Image::simple("amd64", "secret");
    reg.put_image("priv/file", "v1", &img);
    *reg.bearer.lock().unwrap() = Some("file-user:file-pass".into());
    let r = format!("{}/priv/file:v1", reg.addr);

    let creds = tmp.path().join("creds");
    std::fs::write(&creds, "file-user:file-pass\n").unwrap();
    let o = run(
        &tmp.path().join("c1"),
        &["pull", "-q", "--creds-file", creds.to_str().unwrap(), &r],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), img.digest());

    let mut child = nsrun(
        &tmp.path().join("c2"),
        &["pull", "-q", "--creds", "file-user", "--password-stdin", &r],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"file-pass\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), img.digest());

    // A wrong password from the file is refused by the registry, as from --creds.
    std::fs::write(&creds, "file-user:wrong\n").unwrap();
    let o = run(
        &tmp.path().join("c3"),
        &["pull", "-q", "--creds-file", creds.to_str().unwrap(), &r],
    );
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));

    std::fs::write(&creds, "no-colon\n").unwrap();
    let o = run(
        &tmp.path().join("c4"),
        &["pull", "-q", "--creds-file", creds.to_str().unwrap(), &r],
    );
    assert_one_line_125(&o, "expected USER:PASS");
    let o = run(
        &tmp.path().join("c5"),
        &["pull", "--creds", "u:p", "--password-stdin", &r],
    );
    assert_one_line_125(&o, "--creds USER without the password");
    let o = run(&tmp.path().join("c6"), &["run", "--help"]);
    assert!(text(&o).contains("--creds-file") && text(&o).contains("--password-stdin"));
}

/// podman's habit: `nsrun --root DIR pull IMAGE` pulls into DIR (it was taken for `nsrun run` of
/// an image named "pull", which then went looking for docker.io/library/pull).
#[test]
fn root_before_the_subcommand() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let img = Image::simple("amd64", "global");
    write_oci_layout(&layout, &[(&img, Some("v1"))], None);
    let cache = tmp.path().join("cache");
    let reference = format!("oci:{}:v1", layout.display());
    let o = Command::new(env!("CARGO_BIN_EXE_nsrun"))
        .args(["--root", cache.to_str().unwrap(), "pull", "-q", &reference])
        .env_remove("NSRUN_ROOT")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), img.digest());
    let o = Command::new(env!("CARGO_BIN_EXE_nsrun"))
        .args([&format!("--root={}", cache.display()), "images", "-q"])
        .env_remove("NSRUN_ROOT")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        img.digest(),
        "{}",
        text(&o)
    );
}

/// Docker's spellings: `images --format json`, `inspect --format json`; and `run --read-only
/// --init`, which nsrun always is and does, are accepted rather than refused.
#[test]
fn docker_format_and_always_on_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let img = Image::simple("amd64", "fmt");
    write_oci_layout(&layout, &[(&img, Some("v1"))], None);
    let cache = tmp.path().join("cache");
    let reference = format!("oci:{}:v1", layout.display());
    assert!(run(&cache, &["pull", "-q", &reference]).status.success());
    let o = run(&cache, &["images", "--format", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list[0]["digest"], img.digest());
    let o = run(&cache, &["inspect", "--format", "json", &reference]);
    assert!(o.status.success(), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["digest"], img.digest());
    let o = run(&cache, &["images", "--format", "yaml"]);
    assert_one_line_125(&o, "yaml");
    let o = run(&cache, &["run", "--read-only", "--init", "--help"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("--read-only") && text(&o).contains("--init"));
}
