//! Files in and out without volumes: a private scratch directory per run.
//!
//! `<root>/runs/<owner pid>-<owner start time>-<tenant>-<unix time>-<run id>/` (mode 0700)
//! holds `inputs/` (bound read-only at `/inputs`) and `work/` (bound read-write at the work
//! directory, `/work` by default). Two runs never share one, and no other host user can enter
//! one, so two tenants' concurrent runs cannot see each other's files. The directory is removed
//! when the run ends, however it ends ([`Scratch`]'s `Drop`); if the process that created it is
//! killed, `nsrun gc` ([`sweep`]) removes it, recognising dead owners by pid and start time as
//! it does for cgroups.
//!
//! Outputs are read back through `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from the
//! work directory: a tool that leaves a symlink to a host file (or a FIFO) in place of an
//! output gets that output refused ([`OutputFile::error`]), never the host file.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};

use super::spec::{Data, Input};
use super::Error;
use crate::sandbox::BindMount;

/// Longest input or output name, in bytes.
pub const MAX_NAME: usize = 1024;

/// Checks an input or output name: a relative path of normal components.
///
/// ```
/// use nsrun::runner::scratch::check_name;
/// assert!(check_name("input", "a/b.txt").is_ok());
/// for bad in ["", "/etc/passwd", "../x", "a/../../x", "a/./b", "a//b", "nul\0", "a/"] {
///     assert!(check_name("input", bad).is_err(), "{bad:?}");
/// }
/// ```
pub fn check_name(what: &str, name: &str) -> Result<(), Error> {
    let why = if name.is_empty() {
        Some("empty")
    } else if name.contains('\0') {
        Some("contains a NUL byte")
    } else if name.starts_with('/') {
        Some("absolute (names are relative to the directory)")
    } else if name.len() > MAX_NAME {
        Some("longer than 1024 bytes")
    } else if name
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        Some("has an empty, `.` or `..` component")
    } else if name.split('/').any(|c| c.len() > 255) {
        Some("has a component longer than 255 bytes")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(Error::bad_spec(format!(
            "{what} name {:?} is invalid: {why}",
            name.chars().take(80).collect::<String>()
        ))),
    }
}

/// The tenant part of a scratch name: `[A-Za-z0-9_.]`, at most 32 characters.
fn tenant_part(tenant: Option<&str>) -> String {
    let t: String = tenant
        .unwrap_or("_")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    if t.is_empty() || t.chars().all(|c| c == '.') {
        "_".into()
    } else {
        t
    }
}

/// A run's scratch directory; removed on drop.
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
    keep: bool,
}

impl Scratch {
    /// Creates `<root>/runs/<owner>-<tenant>-<time>-<run id>` (0700) with `inputs/` and `work/`.
    /// `work_owner` is the host uid/gid the work directory is given to (container root's when
    /// running as root), so that the tool can write there.
    pub fn create(
        root: &Path,
        tenant: Option<&str>,
        run_id: &str,
        work_owner: Option<(u32, u32)>,
    ) -> Result<Scratch, Error> {
        let runs = root.join("runs");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&runs)
            .map_err(|e| Error::files(&runs, "create", e))?;
        let (pid, start) = crate::sandbox::cgroup::owner_of_this_process()
            .map_err(|e| Error::files(&runs, "read our start time for", e))?;
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let dir = runs.join(format!(
            "{pid}-{start}-{}-{time}-{run_id}",
            tenant_part(tenant)
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::files(&dir, "create", e))?;
        let scratch = Scratch { dir, keep: false };
        // Only the owner (and root) can enter the scratch; inside it, the tool's ids need read
        // access to the inputs and write access to the work directory.
        let inputs = scratch.inputs();
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&inputs)
            .map_err(|e| Error::files(&inputs, "create", e))?;
        let work = scratch.work();
        std::fs::DirBuilder::new()
            .mode(0o777)
            .create(&work)
            .map_err(|e| Error::files(&work, "create", e))?;
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| Error::files(&work, "chmod", e))?;
        if let Some((uid, gid)) = work_owner {
            std::os::unix::fs::chown(&work, Some(uid), Some(gid))
                .map_err(|e| Error::files(&work, "chown", e))?;
        }
        Ok(scratch)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn inputs(&self) -> PathBuf {
        self.dir.join("inputs")
    }

    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }

    /// The two bind mounts: inputs read-only at `/inputs`, work read-write at `work_dir`.
    pub fn binds(&self, work_dir: &str) -> Vec<BindMount> {
        vec![
            BindMount {
                source: self.inputs(),
                target: super::spec::INPUTS_DIR.into(),
                read_only: true,
            },
            BindMount {
                source: self.work(),
                target: work_dir.into(),
                read_only: false,
            },
        ]
    }

    /// Creates the file for input `name` (and its parent directories), mode 0644.
    fn create_input(&self, name: &str) -> Result<(PathBuf, std::fs::File), Error> {
        let path = self.inputs().join(name);
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(|e| Error::files(parent, "create", e))?;
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => {
                    Error::bad_spec(format!("input {name:?} is given twice"))
                }
                _ => Error::files(&path, "create", e),
            })?;
        Ok((path, f))
    }

    /// Writes the inputs, streaming files and readers.
    pub async fn write_inputs(&self, inputs: Vec<Input>) -> Result<u64, Error> {
        let mut total = 0;
        for input in inputs {
            let (path, file) = self.create_input(&input.name)?;
            let mut file = tokio::fs::File::from_std(file);
            let n = match input.data {
                Data::Bytes(b) => {
                    tokio::io::AsyncWriteExt::write_all(&mut file, &b)
                        .await
                        .map_err(|e| Error::files(&path, "write", e))?;
                    b.len() as u64
                }
                Data::File(src) => {
                    let mut f = tokio::fs::File::open(&src)
                        .await
                        .map_err(|e| Error::files(&src, "open input", e))?;
                    tokio::io::copy(&mut f, &mut file)
                        .await
                        .map_err(|e| Error::files(&path, "copy into", e))?
                }
                Data::Reader(mut r) => tokio::io::copy(&mut r, &mut file)
                    .await
                    .map_err(|e| Error::files(&path, "copy into", e))?,
            };
            tokio::io::AsyncWriteExt::flush(&mut file)
                .await
                .map_err(|e| Error::files(&path, "write", e))?;
            total += n;
        }
        Ok(total)
    }

    /// [`Scratch::write_inputs`] without an async runtime (inputs from readers are refused).
    pub fn write_inputs_blocking(&self, inputs: Vec<Input>) -> Result<u64, Error> {
        let mut total = 0;
        for input in inputs {
            let (path, mut file) = self.create_input(&input.name)?;
            total += match input.data {
                Data::Bytes(b) => {
                    file.write_all(&b)
                        .map_err(|e| Error::files(&path, "write", e))?;
                    b.len() as u64
                }
                Data::File(src) => {
                    let mut f = std::fs::File::open(&src)
                        .map_err(|e| Error::files(&src, "open input", e))?;
                    std::io::copy(&mut f, &mut file)
                        .map_err(|e| Error::files(&path, "copy into", e))?
                }
                Data::Reader(_) => {
                    return Err(Error::bad_spec(
                        "inputs from an async reader need the async runtime (Runtime::run)",
                    ))
                }
            };
        }
        Ok(total)
    }

    /// Reads the outputs back after the run (see [`OutputLimits`] for the caps).
    pub fn collect_outputs(
        &self,
        names: &[String],
        limits: OutputLimits,
        output_dir: Option<&Path>,
    ) -> Result<Vec<OutputFile>, Error> {
        let work = self.work();
        let dirfd: OwnedFd = nix::fcntl::open(
            &work,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::files(&work, "open", e))?;
        let mut left = limits.total;
        let mut out = Vec::new();
        for name in names {
            let how = OpenHow::new()
                .flags(OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
                .resolve(
                    ResolveFlag::RESOLVE_BENEATH
                        | ResolveFlag::RESOLVE_NO_SYMLINKS
                        | ResolveFlag::RESOLVE_NO_MAGICLINKS
                        | ResolveFlag::RESOLVE_NO_XDEV,
                );
            let shown = Path::new(&self.work()).join(name);
            let fd = match nix::fcntl::openat2(dirfd.as_fd(), name.as_str(), how) {
                Ok(fd) => fd,
                Err(nix::errno::Errno::ENOENT) => {
                    out.push(OutputFile::missing(name));
                    continue;
                }
                Err(e @ (nix::errno::Errno::ELOOP | nix::errno::Errno::EXDEV)) => {
                    out.push(OutputFile::refused(
                        name,
                        format!("refused: its path goes through a symlink or a mount ({e})"),
                    ));
                    continue;
                }
                Err(e) => {
                    out.push(OutputFile::refused(name, format!("cannot open it: {e}")));
                    continue;
                }
            };
            let mut f = std::fs::File::from(fd);
            let meta = f
                .metadata()
                .map_err(|e| Error::files(&shown, "stat output", e))?;
            if !meta.is_file() {
                out.push(OutputFile::refused(
                    name,
                    "refused: not a regular file".into(),
                ));
                continue;
            }
            let size = meta.len();
            let allowed = limits.per_file.min(left);
            let truncated = size > allowed;
            let mut limited = (&mut f).take(allowed);
            let mut file = OutputFile {
                path: name.clone(),
                size,
                truncated,
                missing: false,
                error: None,
                data: Vec::new(),
                saved_to: None,
            };
            let copied = match output_dir {
                None => limited
                    .read_to_end(&mut file.data)
                    .map_err(|e| Error::files(&shown, "read output", e))?
                    as u64,
                Some(dir) => {
                    let dest = dir.join(name);
                    if let Some(p) = dest.parent() {
                        std::fs::create_dir_all(p).map_err(|e| Error::files(p, "create", e))?;
                    }
                    let mut d = std::fs::File::create(&dest)
                        .map_err(|e| Error::files(&dest, "create", e))?;
                    let n = std::io::copy(&mut limited, &mut d)
                        .map_err(|e| Error::files(&dest, "copy output to", e))?;
                    file.saved_to = Some(dest);
                    n
                }
            };
            left = left.saturating_sub(copied);
            file.truncated = truncated || copied < size;
            out.push(file);
        }
        Ok(out)
    }

    /// Leaves the directory in place (debugging).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = crate::unpack::remove_tree(&self.dir);
        }
    }
}

/// Caps on what is read back. An output over its cap is **truncated** to the cap, flagged
/// ([`OutputFile::truncated`]) and its real size reported; once `total` bytes are read, later
/// outputs come back empty and flagged the same way. The run does not fail because of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputLimits {
    pub per_file: u64,
    pub total: u64,
}

impl Default for OutputLimits {
    /// 64 MiB per file, 256 MiB in all.
    fn default() -> Self {
        OutputLimits {
            per_file: 64 << 20,
            total: 256 << 20,
        }
    }
}

/// An output read back after the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// The name asked for, relative to the work directory.
    pub path: String,
    /// Its size on disk after the run.
    pub size: u64,
    /// Fewer than `size` bytes were read (a cap of [`OutputLimits`]).
    pub truncated: bool,
    /// The tool did not create it.
    pub missing: bool,
    /// Why it was not read, when the tool left something that is not a plain file reachable
    /// without symlinks (a symlink, a FIFO, a directory…): never followed, never opened.
    #[serde(default)]
    pub error: Option<String>,
    /// The contents, unless an output directory was given.
    #[serde(with = "super::result::bytes_serde")]
    pub data: Vec<u8>,
    /// Where it was copied to, when an output directory was given.
    pub saved_to: Option<PathBuf>,
}

impl OutputFile {
    fn missing(name: &str) -> OutputFile {
        OutputFile {
            path: name.to_string(),
            size: 0,
            truncated: false,
            missing: true,
            error: None,
            data: Vec::new(),
            saved_to: None,
        }
    }

    fn refused(name: &str, why: String) -> OutputFile {
        OutputFile {
            error: Some(format!("output {name:?}: {why}")),
            missing: false,
            ..OutputFile::missing(name)
        }
    }
}

/// Removes the scratch directories under `<root>/runs` whose creating process is gone (a worker
/// or nsrun killed with SIGKILL). Returns the directories removed.
pub fn sweep(root: &Path) -> Result<Vec<PathBuf>, Error> {
    let runs = root.join("runs");
    let rd = match std::fs::read_dir(&runs) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::files(&runs, "read", e)),
    };
    let mut removed = Vec::new();
    for ent in rd.flatten() {
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        let mut parts = name.splitn(3, '-');
        let (Some(pid), Some(start)) = (parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
            continue;
        };
        if crate::sandbox::cgroup::owner_gone(pid, start) {
            let p = ent.path();
            crate::unpack::remove_tree(&p).map_err(|e| Error::files(&p, "remove", e))?;
            removed.push(p);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_are_sanitised() {
        assert_eq!(tenant_part(Some("acme")), "acme");
        assert_eq!(tenant_part(Some("../../etc")), ".._.._etc");
        assert_eq!(tenant_part(Some("a-b c")), "a_b_c");
        assert_eq!(tenant_part(None), "_");
        assert_eq!(tenant_part(Some("..")), "_");
        assert_eq!(tenant_part(Some(&"x".repeat(100))).len(), 32);
    }

    #[test]
    fn outputs_refuse_symlinks_and_fifos_and_cap_sizes() {
        let root = tempfile::tempdir().unwrap();
        let s = Scratch::create(root.path(), Some("t"), "0123456789ab", None).unwrap();
        let w = s.work();
        std::fs::write(w.join("big"), vec![7u8; 1000]).unwrap();
        std::fs::write(w.join("small"), b"hello").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", w.join("link")).unwrap();
        nix::unistd::mkfifo(&w.join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        let lim = OutputLimits {
            per_file: 100,
            total: 150,
        };
        let got = s
            .collect_outputs(&["big".into(), "small".into(), "none".into()], lim, None)
            .unwrap();
        assert_eq!(
            (got[0].data.len(), got[0].size, got[0].truncated),
            (100, 1000, true)
        );
        assert_eq!(
            (got[1].data.as_slice(), got[1].truncated),
            (&b"hello"[..], false)
        );
        assert!(got[2].missing);
        let lim = OutputLimits {
            per_file: 100,
            total: 102,
        };
        let got = s
            .collect_outputs(&["big".into(), "small".into()], lim, None)
            .unwrap();
        assert_eq!(
            (got[1].data.as_slice(), got[1].truncated),
            (&b"he"[..], true)
        );
        let got = s
            .collect_outputs(&["link".into(), "fifo".into(), "small".into()], lim, None)
            .unwrap();
        let err = |i: usize| got[i].error.clone().unwrap_or_default();
        assert!(
            err(0).contains("symlink") && got[0].data.is_empty(),
            "{got:?}"
        );
        assert!(err(1).contains("not a regular file"), "{got:?}");
        assert_eq!(
            (got[2].data.as_slice(), got[2].error.as_ref()),
            (&b"hello"[..], None)
        );
        let dir = s.path().to_path_buf();
        drop(s);
        assert!(!dir.exists());
    }

    #[test]
    fn sweep_removes_only_dead_owners() {
        let root = tempfile::tempdir().unwrap();
        let mine = Scratch::create(root.path(), None, "0123456789ab", None).unwrap();
        let dead = root.path().join("runs/999999999-1-_-0-0123456789ab");
        std::fs::create_dir_all(dead.join("work/sub")).unwrap();
        let other = root.path().join("runs/not-ours");
        std::fs::create_dir_all(&other).unwrap();
        assert_eq!(sweep(root.path()).unwrap(), vec![dead.clone()]);
        assert!(mine.path().exists() && other.exists() && !dead.exists());
    }
}
