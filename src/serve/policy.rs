//! A tenant's policy, and its check of a request before anything runs.

use serde::{Deserialize, Serialize};

use crate::sandbox::Network;

/// What a tenant may ask for (docs/serve-api.md, "Policy rules"). Absent ceilings are no
/// ceilings; an empty `allow_image` allows nothing.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// Glob patterns (`*`: any characters) over normalised references, or `sha256:` digests.
    #[serde(default)]
    pub allow_image: Vec<String>,
    /// Network modes allowed (`None`: only `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_network: Option<Vec<Network>>,
    /// Glob patterns each egress rule of a request must match as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_egress: Vec<String>,
    /// Bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pids: Option<u64>,
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_timeout: Option<f64>,
    /// Bytes of each captured stream and each output file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output: Option<u64>,
    /// Runs of the tenant not yet ended (queued ones included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<usize>,
    /// Runs started in any 60 s window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_per_minute: Option<usize>,
}

/// What a request asks for, in the terms of the policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Ask {
    /// Normalised reference (`docker.io/library/busybox:latest`, `…@sha256:…`).
    pub image: String,
    /// The digest the reference is pinned to, if it is.
    pub digest: Option<String>,
    pub network: Network,
    pub egress: Vec<String>,
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    pub timeout: Option<f64>,
    pub output: Option<u64>,
}

/// A request the policy refuses: the rule and a one-line message.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub rule: &'static str,
    pub message: String,
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters (none included).
///
/// ```
/// use nsrun::serve::policy::glob;
/// assert!(glob("127.0.0.1:5000/tools/*", "127.0.0.1:5000/tools/a/b:1"));
/// assert!(glob("*.example.com:443", "api.example.com:443"));
/// assert!(!glob("*.example.com:443", "example.com:443"));
/// assert!(!glob("docker.io/library/busybox:*", "docker.io/library/alpine:1"));
/// ```
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

impl Policy {
    /// Checks the policy itself (the tokens file, `nsrun token new`).
    pub fn check(&self) -> Result<(), String> {
        if let Some(c) = self.max_cpus {
            if !(c.is_finite() && c > 0.0) {
                return Err(format!("maxCpus must be a positive number, not {c}"));
            }
        }
        if let Some(t) = self.max_timeout {
            if !(t.is_finite() && t > 0.0) {
                return Err(format!("maxTimeout must be a positive number, not {t}"));
            }
        }
        for p in &self.allow_image {
            if p.is_empty() {
                return Err("allowImage has an empty pattern".into());
            }
        }
        Ok(())
    }

    fn networks(&self) -> Vec<Network> {
        self.allow_network.clone().unwrap_or(vec![Network::None])
    }

    /// Refuses what the policy does not allow. Rate rules (`maxConcurrent`, `runsPerMinute`)
    /// are the server's to count.
    pub fn admit(&self, ask: &Ask) -> Result<(), Refusal> {
        let refuse = |rule, message: String| Err(Refusal { rule, message });
        let by_digest = ask
            .digest
            .as_ref()
            .is_some_and(|d| self.allow_image.iter().any(|p| p == d));
        if !by_digest && !self.allow_image.iter().any(|p| glob(p, &ask.image)) {
            return refuse(
                "allowImage",
                format!("image {} is not allowed for this tenant", ask.image),
            );
        }
        if !self.networks().contains(&ask.network) {
            return refuse(
                "allowNetwork",
                format!("network {:?} is not allowed for this tenant", ask.network).to_lowercase(),
            );
        }
        for rule in &ask.egress {
            if !self.allow_egress.iter().any(|p| glob(p, rule)) {
                return refuse(
                    "egress",
                    format!("egress rule {rule:?} is not allowed for this tenant"),
                );
            }
        }
        let over = |rule: &'static str, what: &str, asked: String, max: String| {
            Err(Refusal {
                rule,
                message: format!("{what} {asked} is over this tenant's ceiling of {max}"),
            })
        };
        if let (Some(max), asked) = (self.max_memory, ask.memory) {
            match asked {
                Some(a) if a <= max => {}
                Some(a) => {
                    return over("maxMemory", "limits.memory", a.to_string(), max.to_string())
                }
                None => {
                    return over(
                        "maxMemory",
                        "limits.memory",
                        "unlimited".into(),
                        max.to_string(),
                    )
                }
            }
        }
        if let (Some(max), asked) = (self.max_cpus, ask.cpus) {
            match asked {
                Some(a) if a <= max => {}
                Some(a) => return over("maxCpus", "limits.cpus", a.to_string(), max.to_string()),
                None => {
                    return over(
                        "maxCpus",
                        "limits.cpus",
                        "unlimited".into(),
                        max.to_string(),
                    )
                }
            }
        }
        if let (Some(max), asked) = (self.max_pids, ask.pids) {
            match asked {
                Some(a) if a <= max => {}
                Some(a) => return over("maxPids", "limits.pids", a.to_string(), max.to_string()),
                None => {
                    return over(
                        "maxPids",
                        "limits.pids",
                        "unlimited".into(),
                        max.to_string(),
                    )
                }
            }
        }
        if let (Some(max), asked) = (self.max_timeout, ask.timeout) {
            match asked {
                Some(a) if a <= max => {}
                Some(a) => {
                    return over("maxTimeout", "timeout", format!("{a}s"), format!("{max}s"))
                }
                None => return over("maxTimeout", "timeout", "none".into(), format!("{max}s")),
            }
        }
        if let (Some(max), Some(a)) = (self.max_output, ask.output) {
            if a > max {
                return over("maxOutput", "limits.output", a.to_string(), max.to_string());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask() -> Ask {
        Ask {
            image: "127.0.0.1:5000/tools/busybox:latest".into(),
            digest: None,
            network: Network::None,
            egress: vec![],
            memory: Some(1 << 20),
            cpus: Some(0.5),
            pids: Some(10),
            timeout: Some(5.0),
            output: Some(100),
        }
    }

    #[test]
    fn each_rule_refuses_with_its_name() {
        let p = Policy {
            allow_image: vec!["127.0.0.1:5000/tools/*".into(), "sha256:abc".into()],
            allow_network: Some(vec![Network::None, Network::Private]),
            allow_egress: vec!["*.example.com:443".into()],
            max_memory: Some(1 << 20),
            max_cpus: Some(0.5),
            max_pids: Some(10),
            max_timeout: Some(5.0),
            max_output: Some(100),
            ..Default::default()
        };
        assert_eq!(p.admit(&ask()), Ok(()));
        let rule = |f: &dyn Fn(&mut Ask)| {
            let mut a = ask();
            f(&mut a);
            p.admit(&a).unwrap_err().rule
        };
        assert_eq!(
            rule(&|a| a.image = "docker.io/library/x:1".into()),
            "allowImage"
        );
        let mut pinned = ask();
        pinned.image = "docker.io/library/x@sha256:abc".into();
        pinned.digest = Some("sha256:abc".into());
        assert_eq!(p.admit(&pinned), Ok(()));
        assert_eq!(rule(&|a| a.network = Network::Host), "allowNetwork");
        assert_eq!(rule(&|a| a.egress = vec!["evil.com:443".into()]), "egress");
        assert_eq!(rule(&|a| a.memory = Some(2 << 20)), "maxMemory");
        assert_eq!(rule(&|a| a.memory = None), "maxMemory");
        assert_eq!(rule(&|a| a.cpus = Some(1.0)), "maxCpus");
        assert_eq!(rule(&|a| a.pids = Some(11)), "maxPids");
        assert_eq!(rule(&|a| a.timeout = Some(6.0)), "maxTimeout");
        assert_eq!(rule(&|a| a.output = Some(101)), "maxOutput");
        assert_eq!(
            Policy::default().admit(&ask()).unwrap_err().rule,
            "allowImage"
        );
    }
}
