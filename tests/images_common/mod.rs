//! Test support for the image tests: raw tar layers (malicious ones included), OCI layouts, a
//! hostile in-process registry, and pushing to a real one.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A tar stream built entry by entry, with no path validation (so we can write hostile names).
#[derive(Default)]
pub struct Tar {
    buf: Vec<u8>,
}

pub enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    Hardlink(String),
    Char(u32, u32),
    Fifo,
}

impl Tar {
    pub fn new() -> Tar {
        Tar::default()
    }

    pub fn entry(&mut self, path: &str, kind: Kind, mode: u32, uid: u64, gid: u64) -> &mut Tar {
        let mut h = tar::Header::new_ustar();
        let (etype, data, link): (tar::EntryType, Vec<u8>, Option<String>) = match kind {
            Kind::File(d) => (tar::EntryType::Regular, d, None),
            Kind::Dir => (tar::EntryType::Directory, vec![], None),
            Kind::Symlink(t) => (tar::EntryType::Symlink, vec![], Some(t)),
            Kind::Hardlink(t) => (tar::EntryType::Link, vec![], Some(t)),
            Kind::Char(ma, mi) => {
                h.set_device_major(ma).unwrap();
                h.set_device_minor(mi).unwrap();
                (tar::EntryType::Char, vec![], None)
            }
            Kind::Fifo => (tar::EntryType::Fifo, vec![], None),
        };
        h.set_entry_type(etype);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        // Raw name bytes: tar::Header::set_path refuses "..", which is exactly what we want to send.
        assert!(path.len() <= 100, "test paths fit the ustar name field");
        let name = &mut h.as_old_mut().name;
        name.fill(0);
        name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(l) = link {
            let ln = &mut h.as_old_mut().linkname;
            ln.fill(0);
            ln[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        self.buf.extend_from_slice(h.as_bytes());
        self.buf.extend_from_slice(&data);
        let pad = (512 - data.len() % 512) % 512;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    pub fn file(&mut self, path: &str, data: &[u8]) -> &mut Tar {
        self.entry(path, Kind::File(data.to_vec()), 0o644, 0, 0)
    }
    pub fn dir(&mut self, path: &str) -> &mut Tar {
        self.entry(path, Kind::Dir, 0o755, 0, 0)
    }
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Tar {
        self.entry(path, Kind::Symlink(target.into()), 0o777, 0, 0)
    }
    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Tar {
        self.entry(path, Kind::Hardlink(target.into()), 0o644, 0, 0)
    }

    /// With the two zero blocks of end padding.
    pub fn finish(&self) -> Vec<u8> {
        let mut b = self.buf.clone();
        b.extend(std::iter::repeat_n(0u8, 1024));
        b
    }

    /// Without end padding, as some tools write it.
    pub fn finish_unpadded(&self) -> Vec<u8> {
        self.buf.clone()
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// An image as blobs: layers (already compressed as wanted), config, manifest.
#[derive(Clone)]
pub struct Image {
    pub layers: Vec<(Vec<u8>, String)>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    pub docker: bool,
}

impl Image {
    /// `layers` are (blob, media type); `diff_ids` are computed from the uncompressed tars given.
    pub fn new(
        layers: Vec<(Vec<u8>, String)>,
        uncompressed: &[Vec<u8>],
        arch: &str,
        docker: bool,
        cmd: &[&str],
    ) -> Image {
        let diff_ids: Vec<String> = uncompressed.iter().map(|t| sha256(t)).collect();
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "created": "2024-01-02T03:04:05Z",
            "config": {"Cmd": cmd, "Env": ["PATH=/bin", "IMG=1"], "WorkingDir": "/w", "User": "1000:1000"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap();
        let (mt, cmt) = if docker {
            (
                DOCKER_MANIFEST,
                "application/vnd.docker.container.image.v1+json",
            )
        } else {
            (OCI_MANIFEST, "application/vnd.oci.image.config.v1+json")
        };
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": mt,
            "config": {"mediaType": cmt, "digest": sha256(&config), "size": config.len()},
            "layers": layers.iter().map(|(b, m)| serde_json::json!({"mediaType": m, "digest": sha256(b), "size": b.len()})).collect::<Vec<_>>(),
        }))
        .unwrap();
        Image {
            layers,
            config,
            manifest,
            docker,
        }
    }

    /// A one-layer gzip OCI image with /hello and /bin/tool.
    pub fn simple(arch: &str, marker: &str) -> Image {
        let mut t = Tar::new();
        t.dir("bin").file("hello", marker.as_bytes()).entry(
            "bin/tool",
            Kind::File(b"#!/bin/sh\necho tool\n".to_vec()),
            0o755,
            0,
            0,
        );
        let tar = t.finish();
        Image::new(
            vec![(
                gzip(&tar),
                "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            )],
            &[tar],
            arch,
            false,
            &["/bin/tool"],
        )
    }

    pub fn digest(&self) -> String {
        sha256(&self.manifest)
    }

    pub fn blobs(&self) -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = self.layers.iter().map(|(b, _)| b.clone()).collect();
        v.push(self.config.clone());
        v.push(self.manifest.clone());
        v
    }
}

/// An index over platform images: (image, arch, variant).
pub fn index(images: &[(&Image, &str, Option<&str>)], docker: bool) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": if docker { DOCKER_LIST } else { OCI_INDEX },
        "manifests": images.iter().map(|(img, arch, variant)| {
            let mut p = serde_json::json!({"os": "linux", "architecture": arch});
            if let Some(v) = variant { p["variant"] = serde_json::json!(v); }
            serde_json::json!({
                "mediaType": if img.docker { DOCKER_MANIFEST } else { OCI_MANIFEST },
                "digest": img.digest(), "size": img.manifest.len(), "platform": p,
            })
        }).collect::<Vec<_>>(),
    }))
    .unwrap()
}

/// Writes an OCI image layout with `images` tagged as given (`None` tag: untagged entry).
pub fn write_oci_layout(
    dir: &Path,
    images: &[(&Image, Option<&str>)],
    extra_index: Option<(&[u8], &str)>,
) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut manifests = Vec::new();
    for (img, tag) in images {
        for b in img.blobs() {
            std::fs::write(blobs.join(&sha256(&b)[7..]), &b).unwrap();
        }
        let mut d = serde_json::json!({"mediaType": OCI_MANIFEST, "digest": img.digest(), "size": img.manifest.len()});
        if let Some(t) = tag {
            d["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": t});
        }
        manifests.push(d);
    }
    if let Some((idx, tag)) = extra_index {
        std::fs::write(blobs.join(&sha256(idx)[7..]), idx).unwrap();
        manifests.push(
            serde_json::json!({"mediaType": OCI_INDEX, "digest": sha256(idx), "size": idx.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag}}),
        );
    }
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})).unwrap(),
    )
    .unwrap();
}

/// Writes a legacy `docker save` tarball of `img` (whose layers must be uncompressed tars).
/// With `content_addressed`, members are named as Docker 25+ writes them (`blobs/sha256/<hex>`).
pub fn write_docker_archive(path: &Path, img: &Image, tag: &str, content_addressed: bool) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data).unwrap();
    };
    let cfg_name = if content_addressed {
        format!("blobs/sha256/{}", &sha256(&img.config)[7..])
    } else {
        format!("{}.json", &sha256(&img.config)[7..])
    };
    add(&cfg_name, &img.config);
    let mut layer_names = Vec::new();
    for (i, (l, _)) in img.layers.iter().enumerate() {
        let n = if content_addressed {
            format!("blobs/sha256/{}", &sha256(l)[7..])
        } else {
            format!("layer{i}/layer.tar")
        };
        add(&n, l);
        layer_names.push(n);
    }
    let manifest = serde_json::to_vec(
        &serde_json::json!([{"Config": cfg_name, "RepoTags": [tag], "Layers": layer_names}]),
    )
    .unwrap();
    add("manifest.json", &manifest);
    b.finish().unwrap();
}

// ---------------------------------------------------------------------------------------------
// A hostile in-process registry.

/// How the fake registry misbehaves for one blob or manifest path.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Serve these bytes instead of the real ones.
    Replace(Vec<u8>),
    /// Close the connection after this many body bytes (Content-Length stays the real one).
    Truncate(usize),
    /// Answer 500 this many times, then serve normally.
    FailTimes(usize),
    /// Send headers and part of the body, then go silent for this long.
    Stall(Duration),
    /// Every time: truncate.
    AlwaysTruncate(usize),
}

/// Path → (body, content type).
pub type Content = Arc<Mutex<HashMap<String, (Vec<u8>, String)>>>;

pub struct FakeRegistry {
    pub addr: String,
    pub content: Content,
    pub faults: Arc<Mutex<HashMap<String, Fault>>>,
    pub hits: Arc<Mutex<HashMap<String, usize>>>,
    stop: Arc<AtomicBool>,
    pub connections: Arc<AtomicUsize>,
    /// When set, the registry wants bearer tokens, as Docker Hub does: `/token` hands one out to
    /// clients presenting these `user:pass` basic credentials (`""`: to anyone).
    pub bearer: Arc<Mutex<Option<String>>>,
}

impl FakeRegistry {
    /// Listens on 127.0.0.1:0; the server thread stops when this is dropped (or after 10 minutes).
    pub fn start() -> FakeRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let reg = FakeRegistry {
            addr,
            content: Default::default(),
            faults: Default::default(),
            hits: Default::default(),
            stop: Arc::new(AtomicBool::new(false)),
            connections: Default::default(),
            bearer: Default::default(),
        };
        let (content, faults, hits, stop, conns) = (
            reg.content.clone(),
            reg.faults.clone(),
            reg.hits.clone(),
            reg.stop.clone(),
            reg.connections.clone(),
        );
        let (bearer, addr) = (reg.bearer.clone(), reg.addr.clone());
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(600);
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                match listener.accept() {
                    Ok((s, _)) => {
                        conns.fetch_add(1, Ordering::Relaxed);
                        let (c, f, h, st) =
                            (content.clone(), faults.clone(), hits.clone(), stop.clone());
                        let (b, a) = (bearer.clone(), addr.clone());
                        std::thread::spawn(move || {
                            let _ = serve(s, &c, &f, &h, &st, &b, &a);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        reg
    }

    /// Publishes `img` under repository `repo` with `tag`.
    pub fn put_image(&self, repo: &str, tag: &str, img: &Image) {
        let mut c = self.content.lock().unwrap();
        for (l, _) in &img.layers {
            c.insert(
                format!("/v2/{repo}/blobs/{}", sha256(l)),
                (l.clone(), "application/octet-stream".into()),
            );
        }
        c.insert(
            format!("/v2/{repo}/blobs/{}", sha256(&img.config)),
            (img.config.clone(), "application/json".into()),
        );
        let mt = if img.docker {
            DOCKER_MANIFEST
        } else {
            OCI_MANIFEST
        };
        c.insert(
            format!("/v2/{repo}/manifests/{}", img.digest()),
            (img.manifest.clone(), mt.into()),
        );
        c.insert(
            format!("/v2/{repo}/manifests/{tag}"),
            (img.manifest.clone(), mt.into()),
        );
    }

    pub fn put_manifest(&self, repo: &str, tag: &str, body: &[u8], media_type: &str) {
        let mut c = self.content.lock().unwrap();
        c.insert(
            format!("/v2/{repo}/manifests/{}", sha256(body)),
            (body.to_vec(), media_type.into()),
        );
        c.insert(
            format!("/v2/{repo}/manifests/{tag}"),
            (body.to_vec(), media_type.into()),
        );
    }

    pub fn fault(&self, path: &str, f: Fault) {
        self.faults.lock().unwrap().insert(path.to_string(), f);
    }

    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(
    stream: TcpStream,
    content: &Mutex<HashMap<String, (Vec<u8>, String)>>,
    faults: &Mutex<HashMap<String, Fault>>,
    hits: &Mutex<HashMap<String, usize>>,
    stop: &AtomicBool,
    bearer: &Mutex<Option<String>>,
    addr: &str,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut authorization = String::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("authorization") {
                    authorization = v.trim().to_string();
                }
            }
        }
        *hits.lock().unwrap().entry(path.clone()).or_insert(0) += 1;
        let required = bearer.lock().unwrap().clone();
        if let Some(creds) = required {
            const TOKEN: &str = "fake-token-123";
            if path.starts_with("/token") {
                use base64::Engine;
                let want = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(&creds)
                );
                if creds.is_empty() || authorization == want {
                    let b = format!(
                        r#"{{"token":"{TOKEN}","access_token":"{TOKEN}","expires_in":300}}"#
                    );
                    write!(out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len())?;
                } else {
                    out.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")?;
                }
                continue;
            }
            if authorization != format!("Bearer {TOKEN}") {
                let b =
                    br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
                write!(out, "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://{addr}/token\",service=\"fake-registry\"\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", b.len())?;
                out.write_all(b)?;
                continue;
            }
        }
        if path == "/v2/" || path == "/v2" {
            out.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}",
            )?;
            continue;
        }
        let found = content.lock().unwrap().get(&path).cloned();
        let Some((mut body, ctype)) = found else {
            let b = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"not found"}]}"#;
            write!(out, "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", b.len())?;
            out.write_all(b)?;
            continue;
        };
        let fault = {
            let mut f = faults.lock().unwrap();
            match f.get_mut(&path) {
                Some(Fault::FailTimes(n)) if *n > 0 => {
                    *n -= 1;
                    Some(Fault::FailTimes(1))
                }
                Some(Fault::FailTimes(_)) => None,
                Some(other) => {
                    let o = other.clone();
                    if matches!(o, Fault::Truncate(_)) {
                        f.remove(&path);
                    }
                    Some(o)
                }
                None => None,
            }
        };
        let real_len = body.len();
        match fault {
            Some(Fault::FailTimes(_)) => {
                out.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\nConnection: close\r\n\r\noops")?;
                return Ok(());
            }
            Some(Fault::Replace(b)) => body = b,
            Some(Fault::Truncate(n)) | Some(Fault::AlwaysTruncate(n)) => {
                write!(out, "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {real_len}\r\nConnection: close\r\n\r\n")?;
                out.write_all(&body[..n.min(real_len)])?;
                out.flush()?;
                return Ok(());
            }
            Some(Fault::Stall(d)) => {
                write!(out, "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {real_len}\r\n\r\n")?;
                out.write_all(&body[..real_len / 2])?;
                out.flush()?;
                let until = std::time::Instant::now() + d;
                while std::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return Ok(());
            }
            None => {}
        }
        if method == "HEAD" {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )?;
            continue;
        }
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )?;
        out.write_all(&body)?;
        out.flush()?;
    }
}

/// Reads everything under `dir` into (relative path → description) to compare trees before/after.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    fn walk(base: &Path, d: &Path, out: &mut Vec<(PathBuf, String)>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let desc = if md.is_dir() {
                "dir".to_string()
            } else if md.file_type().is_symlink() {
                format!("link:{}", std::fs::read_link(&p).unwrap().display())
            } else if !md.is_file() {
                format!("special:{:?}", md.file_type())
            } else {
                let mut s = String::new();
                let _ = std::fs::File::open(&p).and_then(|mut f| f.read_to_string(&mut s));
                use std::os::unix::fs::MetadataExt;
                format!("file:{}:{}:{}", md.mode(), md.nlink(), s)
            };
            out.push((p.strip_prefix(base).unwrap().to_path_buf(), desc));
            if md.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[allow(unused_imports)] // not every test crate that includes this module asks
pub use crate::support::in_ci;
