//! Seccomp: Docker-format profiles parsed by us, compiled once by libseccomp, loaded last.
//!
//! The parent calls [`compile`]: it reads the profile, resolves it for the run's capabilities,
//! the native architecture (plus the sub-architectures of the profile's `archMap`, so 32-bit
//! binaries are filtered too) and the running kernel, and asks libseccomp for the BPF program.
//! The program is cached on disk keyed by a SHA-256 of everything that shaped it, so a run with a
//! known profile costs one small file read instead of a compile (crun spends ~20 ms here).
//! The child calls [`Filter::load`], the last step before `execve`.
//!
//! ```
//! use nsrun::sandbox::{caps::CapSet, seccomp::{compile, SeccompSource}};
//! let filter = compile(&SeccompSource::Default, CapSet::default_set(), None).unwrap().unwrap();
//! assert!(filter.len() > 10);
//! assert!(compile(&SeccompSource::Unconfined, CapSet::default_set(), None).unwrap().is_none());
//! ```

pub mod profile;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
    ScmpVersion,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use self::profile::{Action, Op, Profile, Resolved};
use super::caps::CapSet;

/// nsrun's default profile (`profiles/default.json`), built into the binary.
pub const DEFAULT_PROFILE: &str = include_str!("../../../profiles/default.json");

/// Bumped whenever the way a profile becomes BPF changes, so old cache entries are not reused.
const CACHE_FORMAT: &str = "nsrun-seccomp-bpf-v3";
/// First bytes of a cache file; a SHA-256 over the cache key and the program follows, then the
/// program.
const CACHE_MAGIC: &[u8; 8] = b"NSRUNBPF";
/// The kernel refuses longer programs (BPF_MAXINSNS).
const MAX_INSNS: usize = 4096;

/// Which seccomp profile a run gets.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompSource {
    /// `profiles/default.json`, built into the binary.
    #[default]
    Default,
    /// No filter (`--security-opt seccomp=unconfined`).
    Unconfined,
    /// A Docker-format JSON profile.
    File(PathBuf),
}

/// Why a profile could not be turned into a filter.
#[derive(Debug, Error)]
pub enum SeccompError {
    /// The profile file could not be read.
    #[error("reading seccomp profile {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The profile is not valid JSON for Docker's format.
    #[error("seccomp profile is not valid JSON for Docker's format: {0}")]
    Json(String),
    /// The profile is well-formed JSON but says something we cannot do.
    #[error("seccomp profile: {0}")]
    Profile(String),
    /// libseccomp refused an operation.
    #[error("libseccomp: {op}: {msg}")]
    Libseccomp { op: String, msg: String },
    /// The BPF program could not be exported from libseccomp.
    #[error("exporting seccomp BPF through a memfd: {0}")]
    Export(#[source] std::io::Error),
    /// The compiled program is longer than the kernel accepts.
    #[error("seccomp program has {0} instructions; the kernel accepts at most 4096")]
    TooLong(usize),
}

fn lib_err(op: impl Into<String>) -> impl FnOnce(libseccomp::error::SeccompError) -> SeccompError {
    let op = op.into();
    move |e| SeccompError::Libseccomp {
        op,
        msg: e.to_string(),
    }
}

/// A compiled BPF program, ready to load in the child.
#[derive(Debug, Clone)]
pub struct Filter {
    insns: Vec<libc::sock_filter>,
}

/// Compiles `source` for the capability set `caps` (which decides `includes`/`excludes` rules).
///
/// Returns `None` for [`SeccompSource::Unconfined`]. With `cache_dir` (nsrun's state directory),
/// the BPF is looked up in and stored to `<cache_dir>/seccomp/<sha256>.bpf` (created if missing,
/// written to a temporary name and renamed, so concurrent runs never see half a program). An unreadable or corrupt cache
/// entry is recompiled; a cache that cannot be written is not an error.
pub fn compile(
    source: &SeccompSource,
    caps: CapSet,
    cache_dir: Option<&Path>,
) -> Result<Option<Filter>, SeccompError> {
    let owned;
    let bytes: &[u8] = match source {
        SeccompSource::Unconfined => return Ok(None),
        SeccompSource::Default => DEFAULT_PROFILE.as_bytes(),
        SeccompSource::File(path) => {
            owned = std::fs::read(path).map_err(|source| SeccompError::Read {
                path: path.clone(),
                source,
            })?;
            &owned
        }
    };
    let native = native_arch()?;
    let kernel = kernel_version();
    // A cache directory that is not ours alone (another user's state dir, root's seen from a
    // user namespace) is not used at all, silently: it is not a cache we made.
    let cache_dir = cache_dir
        .map(|d| d.join("seccomp"))
        .filter(|d| std::fs::symlink_metadata(d).map_or(true, |m| trusted(&m).is_ok() || ours(&m)));
    let cache_file = cache_dir
        .as_deref()
        .map(|d| d.join(format!("{}.bpf", cache_key(bytes, caps, native, kernel))));
    let key = cache_file
        .as_deref()
        .and_then(|f| f.file_stem())
        .map(|k| k.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let (Some(dir), Some(file)) = (cache_dir.as_deref(), cache_file.as_deref()) {
        match read_cached(dir, file, &key) {
            Ok(Some(f)) => return Ok(Some(f)),
            Ok(None) => {}
            // Never trusted, never fatal: compile afresh, say so once, replace the file.
            Err(why) => eprintln!(
                "nsrun: warning: seccomp cache {}: {why}; compiling the profile again",
                file.display()
            ),
        }
    }
    let resolved = Profile::parse(bytes)?.resolve(caps, native, kernel)?;
    let filter = build(&resolved)?;
    if let (Some(dir), Some(file)) = (cache_dir.as_deref(), cache_file.as_deref()) {
        // Best effort: a read-only or full state dir costs speed, not correctness.
        let _ = write_cached(dir, file, &key, &filter);
    }
    Ok(Some(filter))
}

/// The `SCMP_ARCH_…` name of the architecture we run on.
fn native_arch() -> Result<&'static str, SeccompError> {
    let arch = ScmpArch::native();
    Ok(match arch {
        ScmpArch::X8664 => "SCMP_ARCH_X86_64",
        ScmpArch::X86 => "SCMP_ARCH_X86",
        ScmpArch::X32 => "SCMP_ARCH_X32",
        ScmpArch::Aarch64 => "SCMP_ARCH_AARCH64",
        ScmpArch::Arm => "SCMP_ARCH_ARM",
        ScmpArch::Ppc64Le => "SCMP_ARCH_PPC64LE",
        ScmpArch::Ppc64 => "SCMP_ARCH_PPC64",
        ScmpArch::S390X => "SCMP_ARCH_S390X",
        ScmpArch::S390 => "SCMP_ARCH_S390",
        ScmpArch::Riscv64 => "SCMP_ARCH_RISCV64",
        ScmpArch::Loongarch64 => "SCMP_ARCH_LOONGARCH64",
        ScmpArch::Mips64 => "SCMP_ARCH_MIPS64",
        ScmpArch::Mipsel64 => "SCMP_ARCH_MIPSEL64",
        ScmpArch::Mips => "SCMP_ARCH_MIPS",
        ScmpArch::Mipsel => "SCMP_ARCH_MIPSEL",
        other => {
            return Err(SeccompError::Profile(format!(
                "unsupported native architecture {other:?}"
            )));
        }
    })
}

/// (major, minor) of the running kernel; (0, 0) if uname cannot say, which makes every
/// `minKernel` rule conservative (includes skipped, excludes kept).
fn kernel_version() -> (u32, u32) {
    nix::sys::utsname::uname()
        .ok()
        .and_then(|u| u.release().to_str().and_then(profile::parse_kernel_version))
        .unwrap_or((0, 0))
}

/// SHA-256 of everything that decides the program: the profile bytes, the capability set, the
/// native arch, the kernel version (for `minKernel`), libseccomp's version and our format.
fn cache_key(bytes: &[u8], caps: CapSet, native: &str, kernel: (u32, u32)) -> String {
    let v = ScmpVersion::current()
        .map(|v| (v.major, v.minor, v.micro))
        .unwrap_or((0, 0, 0));
    let mut h = Sha256::new();
    h.update(CACHE_FORMAT.as_bytes());
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
    h.update(caps.0.to_le_bytes());
    h.update(
        format!(
            "\0{native}\0{}.{}\0{}.{}.{}",
            kernel.0, kernel.1, v.0, v.1, v.2
        )
        .as_bytes(),
    );
    hex::encode(h.finalize())
}

/// What a cache file holds for `key`: magic, SHA-256 of (key, program), program.
fn cache_bytes(key: &str, filter: &Filter) -> Vec<u8> {
    let program = filter.to_bytes();
    let mut out = Vec::with_capacity(CACHE_MAGIC.len() + 32 + program.len());
    out.extend_from_slice(CACHE_MAGIC);
    out.extend_from_slice(&cache_digest(key, &program));
    out.extend_from_slice(&program);
    out
}

fn cache_digest(key: &str, program: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    h.update([0]);
    h.update(program);
    h.finalize().into()
}

/// Whether `meta` belongs to us (whatever its mode: [`write_cached`] tightens it).
fn ours(meta: &std::fs::Metadata) -> bool {
    std::os::unix::fs::MetadataExt::uid(meta) == nix::unistd::geteuid().as_raw()
}

/// Whether `meta` belongs to us and no one else may write it: a cache that changes what the
/// sandbox filters must be as trusted as nsrun's own files.
fn trusted(meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(format!(
            "owned by uid {}, not by us (uid {euid})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "mode {:o} lets others write it",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// The cached program for `key`, verified: `Ok(None)` when there is none, `Err(why)` when the
/// file (or its directory) is not ours alone, or its content is not the program it claims to be
/// (truncated, replaced, written by another version).
fn read_cached(dir: &Path, file: &Path, key: &str) -> Result<Option<Filter>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(file)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let dir_meta = std::fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
    trusted(&dir_meta).map_err(|why| format!("its directory is {why}"))?;
    let meta = f.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    trusted(&meta)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    let header = CACHE_MAGIC.len() + 32;
    if bytes.len() < header || &bytes[..CACHE_MAGIC.len()] != CACHE_MAGIC {
        return Err("not a cache file of this nsrun version".into());
    }
    let program = &bytes[header..];
    if bytes[CACHE_MAGIC.len()..header] != cache_digest(key, program) {
        return Err("its checksum does not match its program (truncated or altered)".into());
    }
    Filter::from_bytes(program)
        .map(Some)
        .ok_or_else(|| "not a whole BPF program".into())
}

fn write_cached(dir: &Path, file: &Path, key: &str, filter: &Filter) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // A directory an older nsrun made under a lax umask would fail every check: it is ours, so
    // close it to others rather than warn on every run.
    let meta = std::fs::symlink_metadata(dir)?;
    if trusted(&meta).is_err()
        && std::os::unix::fs::MetadataExt::uid(&meta) == nix::unistd::geteuid().as_raw()
    {
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(".tmp-{}-{nanos}.bpf", std::process::id()));
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&cache_bytes(key, filter)))
        .and_then(|_| std::fs::rename(&tmp, file));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn scmp_action(a: Action) -> ScmpAction {
    match a {
        Action::Allow => ScmpAction::Allow,
        Action::Errno(e) => ScmpAction::Errno(e as i32),
        Action::KillThread => ScmpAction::KillThread,
        Action::KillProcess => ScmpAction::KillProcess,
        Action::Trap => ScmpAction::Trap,
        Action::Trace(e) => ScmpAction::Trace(e as u16),
        Action::Log => ScmpAction::Log,
    }
}

/// Turns a resolved profile into BPF with libseccomp.
fn build(r: &Resolved) -> Result<Filter, SeccompError> {
    let mut ctx = ScmpFilterContext::new(scmp_action(r.default_action))
        .map_err(lib_err("creating a filter"))?;
    for a in &r.arches {
        let arch = ScmpArch::from_str(a)
            .map_err(|_| SeccompError::Profile(format!("unknown architecture {a:?}")))?;
        ctx.add_arch(arch)
            .map_err(lib_err(format!("adding architecture {a}")))?;
    }
    // A binary tree of syscall numbers instead of a linear scan: fewer instructions per syscall.
    ctx.set_ctl_optimize(2)
        .map_err(lib_err("setting SCMP_FLTATR_CTL_OPTIMIZE"))?;
    for rule in &r.rules {
        let action = scmp_action(rule.action);
        for name in &rule.names {
            // Names unknown to libseccomp on every arch we filter are skipped, as Docker does:
            // profiles list the calls of all architectures.
            let Ok(sc) = ScmpSyscall::from_name(name) else {
                continue;
            };
            if rule.conds.is_empty() {
                ctx.add_rule(action, sc)
                    .map_err(lib_err(format!("adding rule for {name}")))?;
                continue;
            }
            for conds in &rule.conds {
                let cmps: Vec<ScmpArgCompare> = conds
                    .iter()
                    .map(|c| {
                        let op = match c.op {
                            Op::Ne => ScmpCompareOp::NotEqual,
                            Op::Lt => ScmpCompareOp::Less,
                            Op::Le => ScmpCompareOp::LessOrEqual,
                            Op::Eq => ScmpCompareOp::Equal,
                            Op::Ge => ScmpCompareOp::GreaterEqual,
                            Op::Gt => ScmpCompareOp::Greater,
                            Op::MaskedEq(m) => ScmpCompareOp::MaskedEqual(m),
                        };
                        ScmpArgCompare::new(c.index, op, c.datum)
                    })
                    .collect();
                ctx.add_rule_conditional(action, sc, &cmps)
                    .map_err(lib_err(format!("adding conditional rule for {name}")))?;
            }
        }
    }
    let memfd = memfd()?;
    ctx.export_bpf(&memfd).map_err(lib_err("exporting BPF"))?;
    let mut f = File::from(memfd);
    let mut bytes = Vec::new();
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.read_to_end(&mut bytes))
        .map_err(SeccompError::Export)?;
    let program = Filter::from_bytes(&bytes).ok_or_else(|| {
        SeccompError::Export(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "libseccomp exported {} bytes, not a whole BPF program",
                bytes.len()
            ),
        ))
    })?;
    let mut insns = enosys_stub(r);
    insns.extend_from_slice(&program.insns);
    if insns.len() > MAX_INSNS {
        return Err(SeccompError::TooLong(insns.len()));
    }
    Ok(Filter { insns })
}

/// `AUDIT_ARCH_…` of the architectures the ENOSYS stub knows; `seccomp_data.arch` holds it.
fn audit_arch(arch: &str) -> Option<u32> {
    Some(match arch {
        "SCMP_ARCH_X86_64" => 0xC000_003E,
        "SCMP_ARCH_X86" => 0x4000_0003,
        "SCMP_ARCH_AARCH64" => 0xC000_00B7,
        "SCMP_ARCH_ARM" => 0x4000_0028,
        "SCMP_ARCH_PPC64LE" => 0xC000_0015,
        "SCMP_ARCH_S390X" => 0x8000_0016,
        "SCMP_ARCH_RISCV64" => 0xC000_00F3,
        _ => return None,
    })
}

/// x32 syscalls arrive under AUDIT_ARCH_X86_64 with this bit set; libseccomp filters them.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// A prologue that answers ENOSYS to syscall numbers above every call the profile names, per
/// architecture, then falls through to libseccomp's program (as runc does).
///
/// A syscall newer than the profile is then "not implemented", which programs handle with a
/// fallback (glibc and Go probe new calls that way), instead of the default EPERM, which they
/// take as a real refusal. Nothing allowed changes: every rule's call is at or below the maximum.
/// Skipped when the default action allows.
fn enosys_stub(r: &Resolved) -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGT_K: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
    const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
    const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    if matches!(r.default_action, Action::Allow | Action::Log) {
        return Vec::new();
    }
    let Ok(native) = native_arch() else {
        return Vec::new();
    };
    // (audit arch, highest known syscall number, whether x32 shares the arch value)
    let mut blocks: Vec<(u32, u32, bool)> = Vec::new();
    for arch in std::iter::once(native).chain(r.arches.iter().map(String::as_str)) {
        let (Some(audit), Ok(scmp)) = (audit_arch(arch), ScmpArch::from_str(arch)) else {
            continue;
        };
        let max = r
            .known_names
            .iter()
            .filter_map(|n| ScmpSyscall::from_name_by_arch(n, scmp).ok())
            .map(ScmpSyscall::as_raw_syscall)
            .filter(|nr| *nr >= 0)
            .max();
        if let Some(max) = max {
            if !blocks.iter().any(|b| b.0 == audit) {
                blocks.push((audit, max as u32, arch == "SCMP_ARCH_X86_64"));
            }
        }
    }
    if blocks.is_empty() {
        return Vec::new();
    }
    let block_len = |x32: bool| if x32 { 4 } else { 3 };
    let ja_main = 1 + blocks.iter().map(|b| block_len(b.2)).sum::<usize>();
    let mut out = vec![insn(LD_W_ABS, 0, 0, 4)]; // seccomp_data.arch
    for (audit, max, x32) in blocks {
        let len = block_len(x32);
        // Not this arch: on to the next block (the last one's "next" is the jump to the program).
        out.push(insn(JEQ_K, 0, (len - 1) as u8, audit));
        out.push(insn(LD_W_ABS, 0, 0, 0)); // seccomp_data.nr
        if x32 {
            let pc = out.len();
            out.push(insn(JSET_K, (ja_main - pc - 1) as u8, 0, X32_SYSCALL_BIT));
        }
        let pc = out.len();
        out.push(insn(
            JGT_K,
            (ja_main + 1 - pc - 1) as u8,
            (ja_main - pc - 1) as u8,
            max,
        ));
    }
    debug_assert_eq!(out.len(), ja_main);
    out.push(insn(JA, 0, 0, 1)); // over the return, into libseccomp's program
    out.push(insn(RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::ENOSYS as u32));
    out
}

fn memfd() -> Result<OwnedFd, SeccompError> {
    // SAFETY: the name is a NUL-terminated literal; the returned fd is checked and owned below.
    let fd = unsafe { libc::memfd_create(c"nsrun-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(SeccompError::Export(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;

impl Filter {
    /// Number of BPF instructions.
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    /// Whether the program is empty (never true for a compiled filter).
    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// The raw program (8 bytes per instruction, native endian), e.g. to pass it to a helper.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.insns.len() * 8);
        for i in &self.insns {
            out.extend_from_slice(&i.code.to_ne_bytes());
            out.push(i.jt);
            out.push(i.jf);
            out.extend_from_slice(&i.k.to_ne_bytes());
        }
        out
    }

    /// A program from [`Filter::to_bytes`] output; `None` unless it is 1..=4096 whole instructions.
    pub fn from_bytes(bytes: &[u8]) -> Option<Filter> {
        if bytes.is_empty() || bytes.len() % 8 != 0 || bytes.len() / 8 > MAX_INSNS {
            return None;
        }
        let insns = bytes
            .chunks_exact(8)
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        Some(Filter { insns })
    }

    /// Child side: installs the filter on the calling thread. Allocation-free; returns the errno.
    ///
    /// The caller must have set `PR_SET_NO_NEW_PRIVS` (or hold `CAP_SYS_ADMIN`), or the kernel
    /// answers EACCES.
    pub fn load(&self) -> Result<(), i32> {
        let prog = libc::sock_fprog {
            len: self.insns.len() as libc::c_ushort,
            filter: self.insns.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: prog points at our live instruction vector for the duration of the call; the
        // kernel copies the program and keeps no pointer to it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                0 as libc::c_ulong,
                &prog,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO));
        }
        Ok(())
    }
}
