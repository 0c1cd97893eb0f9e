//! The body of `POST /v1/runs`: parsing (errors name the field), the tenant's policy, and the
//! [`RunSpec`] it becomes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;

use super::api::ApiError;
use super::policy::Ask;
use super::tokens::Tenant;
use crate::runner::{OutputLimits, RunSpec};
use crate::sandbox::cgroup::Limits;
use crate::sandbox::Network;

/// Inputs of one run at most (JSON and multipart together): each is a file on the server's
/// disk and in the run's scratch, so a 4 GiB upload of tiny parts must not become millions.
pub const MAX_INPUTS: usize = 1024;

/// The 400 of a request with more than [`MAX_INPUTS`] inputs.
pub fn too_many_inputs() -> ApiError {
    ApiError::bad_request(format!("inputs: more than {MAX_INPUTS}"))
}

/// Labels of one run at most, and the longest key and value (bytes). A run's labels stay in
/// memory as long as its record (`--keep-for`, `--keep-runs`) and go to the audit log: without
/// a cap a tenant could keep `--keep-runs` × `--max-body` bytes of them.
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_KEY: usize = 128;
pub const MAX_LABEL_VALUE: usize = 4096;

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if labels.len() > MAX_LABELS {
        return Err(ApiError::bad_request(format!(
            "labels: more than {MAX_LABELS}"
        )));
    }
    for (k, v) in labels {
        if k.is_empty() || k.len() > MAX_LABEL_KEY {
            return Err(ApiError::bad_request(format!(
                "labels: a key must have 1 to {MAX_LABEL_KEY} bytes"
            )));
        }
        if v.len() > MAX_LABEL_VALUE {
            return Err(ApiError::bad_request(format!(
                "labels.{k}: longer than {MAX_LABEL_VALUE} bytes"
            )));
        }
    }
    Ok(())
}

/// `"text"` or `{"base64": "…"}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum DataField {
    Text(String),
    Base64 { base64: String },
}

/// A size: bytes, or a string such as `"256m"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SizeField {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsField {
    pub memory: Option<SizeField>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    pub output: Option<SizeField>,
}

/// The JSON request (docs/serve-api.md).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunRequest {
    pub image: String,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub stdin: Option<DataField>,
    #[serde(default)]
    pub inputs: BTreeMap<String, DataField>,
    #[serde(default)]
    pub outputs: Vec<String>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub egress: Vec<String>,
    #[serde(default)]
    pub limits: LimitsField,
    #[serde(default)]
    pub timeout: Option<f64>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Parses the JSON body; an error names the field (`limits.memory: invalid type…`).
pub fn parse(body: &[u8]) -> Result<RunRequest, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::bad_request(format!("body: {inner}"))
        } else {
            ApiError::bad_request(format!("{path}: {inner}"))
        }
    })
}

fn decode(field: &str, d: DataField) -> Result<Vec<u8>, ApiError> {
    match d {
        DataField::Text(t) => Ok(t.into_bytes()),
        DataField::Base64 { base64 } => base64::engine::general_purpose::STANDARD
            .decode(base64)
            .map_err(|e| ApiError::bad_request(format!("{field}: invalid base64: {e}"))),
    }
}

fn size(field: &str, s: &Option<SizeField>) -> Result<Option<u64>, ApiError> {
    match s {
        None => Ok(None),
        Some(SizeField::Bytes(n)) => Ok(Some(*n)),
        Some(SizeField::Text(t)) => crate::sandbox::parse_size(t)
            .map(Some)
            .map_err(|e| ApiError::bad_request(format!("{field}: {e}"))),
    }
}

/// A request turned into a spec the policy admits.
pub struct Checked {
    pub spec: RunSpec,
    /// Cap of each captured stream and each output file.
    pub output_cap: u64,
    /// Bytes of inputs and stdin carried in the JSON.
    pub input_bytes: u64,
    pub labels: BTreeMap<String, String>,
}

/// Checks `req` field by field, applies the tenant's ceilings as defaults, checks the policy,
/// and builds the spec (outputs go to `run_dir/outputs`).
pub fn check(
    req: RunRequest,
    tenant: &Tenant,
    default_output: u64,
    run_id: &str,
    run_dir: &Path,
) -> Result<Checked, ApiError> {
    let policy = &tenant.policy;
    let source = crate::reference::Source::parse(&req.image)
        .map_err(|e| ApiError::bad_request(format!("image: {e}")))?;
    let reference = match source {
        crate::reference::Source::Registry(r) => r,
        _ => {
            return Err(ApiError::bad_request(format!(
                "image: {:?} is a local source; the server runs registry references only",
                req.image
            )))
        }
    };
    let network = match &req.network {
        None => Network::None,
        Some(n) => n
            .parse::<Network>()
            .map_err(|e| ApiError::bad_request(format!("network: {e}")))?,
    };
    let mut egress = Vec::new();
    for (i, e) in req.egress.iter().enumerate() {
        egress.push(
            e.parse::<crate::sandbox::net::EgressRule>()
                .map_err(|m| ApiError::bad_request(format!("egress[{i}]: {m}")))?,
        );
    }
    if !egress.is_empty() && network != Network::Private {
        return Err(ApiError::bad_request(
            "egress: egress rules need \"network\": \"private\"",
        ));
    }
    let memory = size("limits.memory", &req.limits.memory)?.or(policy.max_memory);
    if memory == Some(0) {
        return Err(ApiError::bad_request("limits.memory: must be more than 0"));
    }
    if let Some(c) = req.limits.cpus {
        if !(c.is_finite() && c > 0.0) {
            return Err(ApiError::bad_request(
                "limits.cpus: must be a positive number",
            ));
        }
    }
    let cpus = req.limits.cpus.or(policy.max_cpus);
    if req.limits.pids == Some(0) {
        return Err(ApiError::bad_request("limits.pids: must be more than 0"));
    }
    let pids = req.limits.pids.or(policy.max_pids);
    let output = size("limits.output", &req.limits.output)?;
    if let Some(t) = req.timeout {
        if !(t.is_finite() && t > 0.0 && t < 1e9) {
            return Err(ApiError::bad_request(
                "timeout: must be a positive number of seconds",
            ));
        }
    }
    let timeout = req.timeout.or(policy.max_timeout);
    let ask = Ask {
        image: reference.to_string(),
        digest: reference.digest.clone(),
        network,
        egress: req.egress.clone(),
        memory,
        cpus,
        pids,
        timeout,
        output,
    };
    policy.admit(&ask).map_err(ApiError::forbidden)?;
    let output_cap = output.or(policy.max_output).unwrap_or(default_output);

    let mut spec = RunSpec::image(req.image.clone());
    if let Some(c) = req.command {
        spec.args = c;
    }
    spec.entrypoint = req.entrypoint;
    for (k, v) in &req.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(ApiError::bad_request(format!(
                "env: invalid variable name {k:?}"
            )));
        }
        spec.env.push(format!("{k}={v}"));
    }
    let mut input_bytes = 0u64;
    if let Some(s) = req.stdin {
        let b = decode("stdin", s)?;
        input_bytes += b.len() as u64;
        spec = spec.stdin(b);
    }
    if req.inputs.len() > MAX_INPUTS {
        return Err(too_many_inputs());
    }
    for (name, d) in req.inputs {
        crate::runner::scratch::check_name("input", &name)
            .map_err(|e| ApiError::bad_request(format!("inputs: {e}")))?;
        let b = decode(&format!("inputs.{name}"), d)?;
        input_bytes += b.len() as u64;
        spec = spec.input(name, b);
    }
    for o in &req.outputs {
        crate::runner::scratch::check_name("output", o)
            .map_err(|e| ApiError::bad_request(format!("outputs: {e}")))?;
    }
    spec.outputs = req.outputs;
    spec.workdir = req.workdir;
    spec.user = req.user;
    spec.network = Some(network);
    spec.net.egress_allow = egress;
    spec.limits = Some(Limits {
        memory,
        cpus,
        pids,
        ..Default::default()
    });
    spec.timeout = timeout.map(Duration::from_secs_f64);
    let cap = usize::try_from(output_cap).unwrap_or(usize::MAX);
    spec.capture_limit = Some(cap);
    spec.output_limits = Some(OutputLimits {
        per_file: output_cap,
        total: output_cap.saturating_mul(spec.outputs.len().max(1) as u64),
    });
    spec.output_dir = Some(run_dir.join("outputs"));
    check_labels(&req.labels)?;
    let mut labels = req.labels;
    labels.insert("tenant".into(), tenant.name.clone());
    labels.insert("run".into(), run_id.to_string());
    spec.labels = labels.clone();
    Ok(Checked {
        spec,
        output_cap,
        input_bytes,
        labels,
    })
}
