//! What a finished run reports: [`RunResult`].

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::scratch::OutputFile;
use crate::sandbox::cgroup::Limits;
use crate::sandbox::Network;

/// The image a run used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    /// Normalised reference (`docker.io/library/alpine:latest`).
    pub reference: String,
    /// Manifest digest (`sha256:…`).
    pub digest: String,
}

/// Where the time went. Serialised as seconds (floating point).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Durations {
    /// Waiting for a slot (`max_concurrent`).
    #[serde(with = "secs")]
    pub queue: Duration,
    /// Resolving the image and pulling it when needed.
    #[serde(with = "secs")]
    pub pull: Duration,
    /// Scratch and inputs, the helper, namespaces, mounts, up to the tool's exec.
    #[serde(with = "secs")]
    pub setup: Duration,
    /// From the tool's start to the end of the run.
    #[serde(with = "secs")]
    pub run: Duration,
    /// From the request to the result.
    #[serde(with = "secs")]
    pub total: Duration,
}

/// A finished run. The tool's own failure (any exit code, a signal, a timeout, OOM) is a
/// `RunResult`; only nsrun's failures are [`super::Error`]s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub run_id: String,
    /// `None` for a rootfs run.
    pub image: Option<ImageRef>,
    /// The command line that ran (after the image's Entrypoint/Cmd rules).
    pub command: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Docker's exit status: the tool's code; 128+N for signal N; 124 when the timeout fired;
    /// 137 when the OOM killer ended it (as `nsrun run` exits).
    pub exit_code: i32,
    /// The signal that ended the tool, if one did.
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub oom_killed: bool,
    /// Killed by [`super::RunHandle::kill`].
    pub cancelled: bool,
    /// Captured output, at most the capture limit (UTF-8 text in JSON, or `{"base64": …}`).
    #[serde(with = "bytes_serde")]
    pub stdout: Vec<u8>,
    #[serde(with = "bytes_serde")]
    pub stderr: Vec<u8>,
    /// Bytes the tool wrote, captured or not.
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// More was written than captured.
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// Outputs, in the order asked for.
    pub outputs: Vec<OutputFile>,
    /// Wall-clock start (the request) and end, RFC 3339 in JSON.
    #[serde(with = "rfc3339")]
    pub started_at: SystemTime,
    #[serde(with = "rfc3339")]
    pub ended_at: SystemTime,
    pub durations: Durations,
    /// Peak memory of the run, bytes (the cgroup's, else the largest process's RSS).
    pub peak_memory: Option<u64>,
    /// User + system CPU time of every process of the run.
    #[serde(with = "secs")]
    pub cpu_time: Duration,
    /// Limits that could not be enforced on this host, one phrase each.
    pub unenforced: Vec<String>,
    /// Problems that did not change the result (a cgroup left for `nsrun gc`).
    pub warnings: Vec<String>,
    /// How the run differs from what was asked, to enforce what was asked (e.g. capabilities
    /// dropped so that an rlimit holds), one sentence each.
    pub notes: Vec<String>,
    /// The limits and network the run had (after the runtime's defaults).
    pub limits: Limits,
    pub network: Network,
    /// In which order the runtime admitted this run out of its queue (0 first).
    pub admitted: u64,
}

/// Bytes as a UTF-8 string when they are text, else as `{"base64": "…"}`.
pub mod bytes_serde {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Base64 { base64: String },
    }

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(v) {
            Ok(t) => s.serialize_str(t),
            Err(_) => Repr::Base64 {
                base64: base64::engine::general_purpose::STANDARD.encode(v),
            }
            .serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Text(t) => Ok(t.into_bytes()),
            Repr::Base64 { base64 } => base64::engine::general_purpose::STANDARD
                .decode(base64)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// A duration as floating-point seconds.
pub mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

/// A `SystemTime` as RFC 3339 UTC with milliseconds (`2026-12-03T15:40:21.123Z`).
pub mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    /// Formats `t`.
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// let t = UNIX_EPOCH + Duration::from_millis(1_796_312_421_123);
    /// assert_eq!(nsrun::runner::result::rfc3339::format(t), "2026-12-03T15:40:21.123Z");
    /// ```
    pub fn format(t: SystemTime) -> String {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        let (days, rem) = (secs / 86400, secs % 86400);
        // Howard Hinnant's days-to-civil.
        let z = days as i64 + 719468;
        let era = z.div_euclid(146097);
        let doe = z - era * 146097;
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            d.subsec_millis()
        )
    }

    /// Parses what [`format()`] writes.
    pub fn parse(s: &str) -> Option<SystemTime> {
        let b = s.as_bytes();
        if b.len() != 24 || b[23] != b'Z' {
            return None;
        }
        let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
        let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
        let (hh, mm, ss, ms) = (n(11..13)?, n(14..16)?, n(17..19)?, n(20..23)?);
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = if m > 2 { m - 3 } else { m + 9 };
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146097 + doe - 719468;
        let secs = days * 86400 + hh * 3600 + mm * 60 + ss;
        Some(
            UNIX_EPOCH
                + Duration::from_secs(secs.try_into().ok()?)
                + Duration::from_millis(ms as u64),
        )
    }

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let v = String::deserialize(d)?;
        parse(&v).ok_or_else(|| serde::de::Error::custom(format!("invalid time {v:?}")))
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn round_trips() {
            use std::time::{Duration, UNIX_EPOCH};
            for ms in [0u64, 951_782_400_000, 1_796_312_421_123, 4_102_444_799_999] {
                let t = UNIX_EPOCH + Duration::from_millis(ms);
                assert_eq!(super::parse(&super::format(t)), Some(t), "{ms}");
            }
        }
    }
}
