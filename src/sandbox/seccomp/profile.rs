//! Docker's seccomp profile format, parsed by us, and its resolution for one run.
//!
//! Resolution is pure data: given the capability set, the native architecture and the kernel
//! version, [`Profile::resolve`] decides which architectures the filter covers and which rules
//! apply (`includes`/`excludes` on caps, arches and `minKernel`), with Docker's and runc's
//! semantics. [`super::compile`] then hands the result to libseccomp.

use serde::{Deserialize, Deserializer};

use super::SeccompError;
use crate::sandbox::caps::{cap_from_name, CapSet};

/// Docker's Go structs read `null` as an empty list or struct (its own default profile has
/// `"subArchitectures": null`): so do we.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A Docker-format profile (`profiles/default.json`, or a file given with `--security-opt`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// Action for syscalls no rule matches, e.g. `SCMP_ACT_ERRNO`.
    pub default_action: String,
    /// errno for a default `SCMP_ACT_ERRNO`/`SCMP_ACT_TRACE` (EPERM when absent).
    #[serde(default)]
    pub default_errno_ret: Option<u32>,
    /// Legacy list of architectures (`SCMP_ARCH_…`), used when `archMap` is absent.
    #[serde(default, deserialize_with = "null_as_default")]
    pub architectures: Vec<String>,
    /// Native architecture → the sub-architectures its filter must also cover.
    #[serde(default, deserialize_with = "null_as_default")]
    pub arch_map: Vec<ArchMap>,
    /// Rules, in order.
    #[serde(default, deserialize_with = "null_as_default")]
    pub syscalls: Vec<SyscallRule>,
    /// Filter flags (`SECCOMP_FILTER_FLAG_…`); accepted and ignored, as the ones nsrun needs are fixed.
    #[serde(default, deserialize_with = "null_as_default")]
    pub flags: Vec<String>,
    /// Unsupported: we never run a seccomp agent. Refused when set.
    #[serde(default)]
    pub listener_path: Option<String>,
    /// See `listener_path`.
    #[serde(default)]
    pub listener_metadata: Option<String>,
}

/// One `archMap` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchMap {
    pub architecture: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub sub_architectures: Vec<String>,
}

/// One entry of `syscalls`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyscallRule {
    #[serde(default, deserialize_with = "null_as_default")]
    pub names: Vec<String>,
    /// Old single-name form.
    #[serde(default)]
    pub name: Option<String>,
    pub action: String,
    #[serde(default)]
    pub errno_ret: Option<u32>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub args: Vec<Arg>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub includes: Filter,
    #[serde(default, deserialize_with = "null_as_default")]
    pub excludes: Filter,
    #[serde(default)]
    pub comment: Option<String>,
}

/// An argument condition.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arg {
    pub index: u32,
    pub value: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub value_two: u64,
    pub op: String,
}

/// `includes`/`excludes` of a rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    #[serde(default, deserialize_with = "null_as_default")]
    pub caps: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub arches: Vec<String>,
    #[serde(default)]
    pub min_kernel: Option<String>,
}

/// What a matching syscall gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Errno(u32),
    KillThread,
    KillProcess,
    Trap,
    Trace(u32),
    Log,
}

/// A comparison operator of an argument condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Ne,
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
    /// `(arg & mask) == datum`.
    MaskedEq(u64),
}

/// A resolved argument condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cond {
    pub index: u32,
    pub op: Op,
    pub datum: u64,
}

/// A resolved rule: each entry of `conds` is one libseccomp rule (conditions ANDed); the entries
/// are alternatives. An empty `conds` means "unconditionally".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub names: Vec<String>,
    pub action: Action,
    pub conds: Vec<Vec<Cond>>,
}

/// A profile resolved for one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub default_action: Action,
    /// `SCMP_ARCH_…` names the filter covers besides the native one.
    pub arches: Vec<String>,
    pub rules: Vec<Rule>,
    /// Every syscall name the profile mentions, applied or not: calls newer than all of them are
    /// answered ENOSYS rather than the default errno (see [`super::compile`]).
    pub known_names: Vec<String>,
}

const EPERM: u32 = libc::EPERM as u32;

fn parse_action(action: &str, errno: Option<u32>, what: &str) -> Result<Action, SeccompError> {
    Ok(match action {
        "SCMP_ACT_ALLOW" => Action::Allow,
        "SCMP_ACT_ERRNO" => Action::Errno(errno.unwrap_or(EPERM)),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => Action::KillThread,
        "SCMP_ACT_KILL_PROCESS" => Action::KillProcess,
        "SCMP_ACT_TRAP" => Action::Trap,
        "SCMP_ACT_TRACE" => Action::Trace(errno.unwrap_or(EPERM)),
        "SCMP_ACT_LOG" => Action::Log,
        "SCMP_ACT_NOTIFY" => {
            return Err(SeccompError::Profile(format!(
                "{what}: SCMP_ACT_NOTIFY needs a seccomp agent, which nsrun does not run"
            )))
        }
        other => {
            return Err(SeccompError::Profile(format!(
                "{what}: unknown action {other:?}"
            )))
        }
    })
}

fn parse_op(arg: &Arg, what: &str) -> Result<Cond, SeccompError> {
    if arg.index > 5 {
        return Err(SeccompError::Profile(format!(
            "{what}: argument index {} out of range 0..=5",
            arg.index
        )));
    }
    let (op, datum) = match arg.op.as_str() {
        "SCMP_CMP_NE" => (Op::Ne, arg.value),
        "SCMP_CMP_LT" => (Op::Lt, arg.value),
        "SCMP_CMP_LE" => (Op::Le, arg.value),
        "SCMP_CMP_EQ" => (Op::Eq, arg.value),
        "SCMP_CMP_GE" => (Op::Ge, arg.value),
        "SCMP_CMP_GT" => (Op::Gt, arg.value),
        // Docker's format: value is the mask, valueTwo the value compared with.
        "SCMP_CMP_MASKED_EQ" => (Op::MaskedEq(arg.value), arg.value_two),
        other => {
            return Err(SeccompError::Profile(format!(
                "{what}: unknown comparison {other:?}"
            )))
        }
    };
    Ok(Cond {
        index: arg.index,
        op,
        datum,
    })
}

/// Names an architecture may have in `includes.arches`: Docker's profiles use Go's names
/// (`amd64`, `arm64`, `386`…) and sometimes the kernel's (`x86_64`, `aarch64`, `x86`).
fn arch_aliases(native: &str) -> &'static [&'static str] {
    match native {
        "SCMP_ARCH_X86_64" => &["amd64", "x86_64"],
        "SCMP_ARCH_X86" => &["386", "x86", "i386", "i686"],
        "SCMP_ARCH_X32" => &["x32"],
        "SCMP_ARCH_AARCH64" => &["arm64", "aarch64"],
        "SCMP_ARCH_ARM" => &["arm"],
        "SCMP_ARCH_PPC64LE" => &["ppc64le"],
        "SCMP_ARCH_PPC64" => &["ppc64"],
        "SCMP_ARCH_S390X" => &["s390x"],
        "SCMP_ARCH_S390" => &["s390"],
        "SCMP_ARCH_RISCV64" => &["riscv64"],
        "SCMP_ARCH_LOONGARCH64" => &["loong64", "loongarch64"],
        "SCMP_ARCH_MIPS64" => &["mips64"],
        "SCMP_ARCH_MIPSEL64" => &["mips64le"],
        "SCMP_ARCH_MIPS" => &["mips"],
        "SCMP_ARCH_MIPSEL" => &["mipsle", "mipsel"],
        _ => &[],
    }
}

/// Parses a kernel version `"4.8"`, `"6.18.44-fc"` into (major, minor).
pub fn parse_kernel_version(s: &str) -> Option<(u32, u32)> {
    let mut it = s.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

impl Profile {
    /// Parses a profile from JSON. Unknown actions, operators and architectures are errors here
    /// (a typo must not silently weaken a filter); unknown syscall names are not (a profile lists
    /// calls of every architecture, as Docker's does).
    pub fn parse(json: &[u8]) -> Result<Profile, SeccompError> {
        let p: Profile =
            serde_json::from_slice(json).map_err(|e| SeccompError::Json(e.to_string()))?;
        if p.listener_path.as_deref().is_some_and(|l| !l.is_empty()) {
            return Err(SeccompError::Profile(
                "listenerPath is set, but nsrun does not run seccomp agents".into(),
            ));
        }
        Ok(p)
    }

    /// Resolves the profile for `caps` on `native` (`SCMP_ARCH_…`) and kernel `kernel`.
    ///
    /// Rule selection follows Docker: a rule is skipped when `excludes.arches` names the native
    /// arch, when `includes.arches` is set and does not, when any of `excludes.caps` is held,
    /// when any of `includes.caps` is not held, or when the kernel is older than
    /// `includes.minKernel` (newer than or equal to `excludes.minKernel`). Argument conditions
    /// follow runc: all ANDed in one rule, unless two of them test the same argument, in which
    /// case each becomes a rule of its own (libseccomp cannot AND two tests of one argument).
    pub fn resolve(
        &self,
        caps: CapSet,
        native: &str,
        kernel: (u32, u32),
    ) -> Result<Resolved, SeccompError> {
        let default_action = parse_action(
            &self.default_action,
            self.default_errno_ret,
            "defaultAction",
        )?;
        let mut arches = Vec::new();
        if !self.arch_map.is_empty() {
            for m in self.arch_map.iter().filter(|m| m.architecture == native) {
                arches.extend(m.sub_architectures.iter().cloned());
            }
        } else {
            arches.extend(self.architectures.iter().filter(|a| *a != native).cloned());
        }
        arches.retain(|a| a != native);
        arches.dedup();

        let aliases = arch_aliases(native);
        let holds = |name: &str| -> Result<bool, SeccompError> {
            let cap = cap_from_name(name).ok_or_else(|| {
                SeccompError::Profile(format!("unknown capability {name:?} in includes/excludes"))
            })?;
            Ok(caps.contains(cap))
        };
        let kernel_at_least = |v: &str| -> Result<bool, SeccompError> {
            let want = parse_kernel_version(v)
                .ok_or_else(|| SeccompError::Profile(format!("invalid minKernel {v:?}")))?;
            Ok(kernel >= want)
        };

        let mut rules = Vec::new();
        'rules: for (i, r) in self.syscalls.iter().enumerate() {
            let mut names = r.names.clone();
            names.extend(r.name.iter().cloned());
            let what = format!(
                "syscalls[{i}] ({})",
                names.first().map(String::as_str).unwrap_or("no name")
            );
            let action = parse_action(&r.action, r.errno_ret, &what)?;
            let mut conds = Vec::new();
            for a in &r.args {
                conds.push(parse_op(a, &what)?);
            }
            if names.is_empty() {
                continue;
            }
            let matches_arch = |list: &[String]| {
                list.iter()
                    .any(|a| a == native || aliases.contains(&a.as_str()))
            };
            if !r.excludes.arches.is_empty() && matches_arch(&r.excludes.arches) {
                continue;
            }
            if !r.includes.arches.is_empty() && !matches_arch(&r.includes.arches) {
                continue;
            }
            for c in &r.excludes.caps {
                if holds(c)? {
                    continue 'rules;
                }
            }
            for c in &r.includes.caps {
                if !holds(c)? {
                    continue 'rules;
                }
            }
            if let Some(v) = &r.excludes.min_kernel {
                if kernel_at_least(v)? {
                    continue;
                }
            }
            if let Some(v) = &r.includes.min_kernel {
                if !kernel_at_least(v)? {
                    continue;
                }
            }
            // libseccomp refuses a rule whose action is the default one; it would change nothing.
            if action == default_action {
                continue;
            }
            let mut per_index = [0u8; 6];
            for c in &conds {
                per_index[c.index as usize] += 1;
            }
            let conds = if conds.is_empty() {
                Vec::new()
            } else if per_index.iter().any(|n| *n > 1) {
                conds.into_iter().map(|c| vec![c]).collect()
            } else {
                vec![conds]
            };
            rules.push(Rule {
                names,
                action,
                conds,
            });
        }
        let mut known_names: Vec<String> = self
            .syscalls
            .iter()
            .flat_map(|r| r.names.iter().chain(r.name.iter()).cloned())
            .collect();
        known_names.sort();
        known_names.dedup();
        Ok(Resolved {
            default_action,
            arches,
            rules,
            known_names,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86: &str = "SCMP_ARCH_X86_64";

    fn caps(names: &[&str]) -> CapSet {
        let mut s = CapSet(0);
        for n in names {
            s.insert(cap_from_name(n).unwrap());
        }
        s
    }

    fn rule_names(r: &Resolved) -> Vec<&str> {
        r.rules
            .iter()
            .flat_map(|r| r.names.iter().map(String::as_str))
            .collect()
    }

    const PROFILE: &str = r#"{
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 38,
        "archMap": [
            {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}
        ],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"name": "close", "action": "SCMP_ACT_ALLOW"},
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
             "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                      {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "x32"]}},
            {"names": ["riscv_flush_icache"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["riscv64"]}},
            {"names": ["socket"], "action": "SCMP_ACT_ALLOW", "excludes": {"arches": ["x86_64"]}},
            {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
            {"names": ["old_thing"], "action": "SCMP_ACT_ALLOW", "excludes": {"minKernel": "5.0"}},
            {"names": ["getpid"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
        ]
    }"#;

    #[test]
    fn resolves_archmap_and_conditions() {
        let p = Profile::parse(PROFILE.as_bytes()).unwrap();
        let r = p.resolve(caps(&["CHOWN"]), X86, (6, 1)).unwrap();
        assert_eq!(r.default_action, Action::Errno(38));
        assert_eq!(r.arches, ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]);
        assert_eq!(
            rule_names(&r),
            [
                "read",
                "write",
                "close",
                "mkdir",
                "clone",
                "personality",
                "arch_prctl",
                "ptrace",
                "getpid"
            ],
            "mount needs SYS_ADMIN, riscv only on riscv, socket excluded on x86_64, \
             old_thing excluded since 5.0, getppid equals the default action"
        );
        let mkdir = &r.rules[2];
        assert_eq!(mkdir.action, Action::Errno(13));
        assert_eq!(
            r.rules.last().unwrap().action,
            Action::Errno(1),
            "errno defaults to EPERM"
        );
        let clone = &r.rules[3];
        assert_eq!(
            clone.conds,
            [vec![Cond {
                index: 0,
                op: Op::MaskedEq(2114060288),
                datum: 0
            }]]
        );
        let pers = &r.rules[4];
        assert_eq!(
            pers.conds.len(),
            2,
            "two tests of one argument become two rules"
        );
        assert_eq!(
            pers.conds[1],
            [Cond {
                index: 0,
                op: Op::Eq,
                datum: 8
            }]
        );
    }

    #[test]
    fn caps_switch_rules() {
        let p = Profile::parse(PROFILE.as_bytes()).unwrap();
        let r = p.resolve(caps(&["SYS_ADMIN"]), X86, (4, 4)).unwrap();
        let names = rule_names(&r);
        assert!(names.contains(&"mount"));
        assert!(
            !names.contains(&"clone"),
            "clone rule is excluded with SYS_ADMIN"
        );
        assert!(!names.contains(&"ptrace"), "minKernel 4.8 > 4.4");
        assert!(
            names.contains(&"old_thing"),
            "kernel below excludes.minKernel"
        );
    }

    #[test]
    fn other_native_arch() {
        let p = Profile::parse(PROFILE.as_bytes()).unwrap();
        let r = p.resolve(CapSet(0), "SCMP_ARCH_AARCH64", (6, 1)).unwrap();
        assert_eq!(r.arches, ["SCMP_ARCH_ARM"]);
        let names = rule_names(&r);
        assert!(!names.contains(&"arch_prctl"));
        assert!(names.contains(&"socket"));
    }

    #[test]
    fn legacy_architectures_list() {
        let json = r#"{"defaultAction":"SCMP_ACT_ALLOW",
            "architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86"],
            "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#;
        let r = Profile::parse(json.as_bytes())
            .unwrap()
            .resolve(CapSet(0), X86, (6, 1))
            .unwrap();
        assert_eq!(r.arches, ["SCMP_ARCH_X86"]);
        assert_eq!(r.default_action, Action::Allow);
        assert_eq!(r.rules[0].action, Action::Errno(1));
    }

    #[test]
    fn errors_name_the_culprit() {
        let bad = |json: &str| {
            let p = Profile::parse(json.as_bytes());
            match p {
                Err(e) => e.to_string(),
                Ok(p) => p.resolve(CapSet(0), X86, (6, 1)).unwrap_err().to_string(),
            }
        };
        assert!(bad(r#"{"defaultAction":"SCMP_ACT_NOPE"}"#).contains("SCMP_ACT_NOPE"));
        let e = bad(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["kill"],"action":"SCMP_ACT_ERRNO",
            "args":[{"index":0,"value":1,"op":"SCMP_CMP_ABOUT"}]}]}"#,
        );
        assert!(e.contains("SCMP_CMP_ABOUT") && e.contains("kill"), "{e}");
        let e = bad(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["kill"],"action":"SCMP_ACT_ERRNO",
            "args":[{"index":6,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
        );
        assert!(e.contains("index 6"), "{e}");
        let e = bad(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["kill"],"action":"SCMP_ACT_ERRNO",
            "includes":{"caps":["CAP_FLY"]}}]}"#,
        );
        assert!(e.contains("CAP_FLY"), "{e}");
        assert!(bad(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#).contains("agent"));
        assert!(bad("{not json").contains("JSON"));
        assert!(
            bad(r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/run/agent.sock"}"#)
                .contains("listenerPath")
        );
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_kernel_version("4.8"), Some((4, 8)));
        assert_eq!(parse_kernel_version("5"), Some((5, 0)));
        assert_eq!(parse_kernel_version("x"), None);
    }
}
