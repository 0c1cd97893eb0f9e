//! The HTTP routes: authentication, errors, and the handlers of `/v1/runs`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::StreamExt;
use serde_json::json;

use super::policy::Refusal;
use super::state::{RateRefusal, Run};
use super::tokens::Tenant;
use super::Server;

/// An error response: `{"error": {"code", "message", "rule"?}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub rule: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            rule: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn forbidden(r: Refusal) -> ApiError {
        ApiError {
            rule: Some(r.rule),
            ..ApiError::new(StatusCode::FORBIDDEN, "forbidden", r.message)
        }
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
    /// A failure on the server's own files: the tenant learns what failed and why, the
    /// server's log also where (the state directory's path is none of a tenant's business).
    pub fn files(what: &str, path: &std::path::Path, e: std::io::Error) -> ApiError {
        eprintln!("nsrun serve: {what} {}: {e}", path.display());
        ApiError::internal(format!("{what}: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut err = json!({ "code": self.code, "message": self.message });
        if let Some(r) = self.rule {
            err["rule"] = json!(r);
        }
        let mut resp = (self.status, axum::Json(json!({ "error": err }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().unwrap());
        }
        resp
    }
}

type ApiResult<T = Response> = Result<T, ApiError>;

pub fn router(srv: Arc<Server>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/v1/runs", axum::routing::post(post_run))
        .route("/v1/runs/{id}", get(get_run).delete(delete_run))
        .route("/v1/runs/{id}/events", get(super::sse::events))
        .route("/v1/runs/{id}/outputs/{*name}", get(get_output))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(srv.clone(), count))
        .with_state(srv)
}

/// Counts every response by status.
async fn count(
    State(srv): State<Arc<Server>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let resp = next.run(req).await;
    srv.metrics.http(resp.status().as_u16());
    resp
}

/// The tenant whose bearer token the request carries.
pub fn auth(srv: &Server, headers: &HeaderMap) -> ApiResult<Arc<Tenant>> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing Authorization: Bearer <token>"))?;
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .ok_or_else(|| unauthorized("Authorization must be \"Bearer <token>\""))?;
    srv.keys()
        .authenticate(token)
        .ok_or_else(|| unauthorized("invalid or revoked token"))
}

pub fn find(srv: &Server, tenant: &Tenant, id: &str) -> ApiResult<Arc<Run>> {
    srv.runs
        .get(&tenant.name, id)
        .ok_or_else(|| ApiError::not_found(format!("no run {id:?}")))
}

async fn metrics(State(srv): State<Arc<Server>>, headers: HeaderMap) -> ApiResult {
    auth(&srv, &headers)?;
    let (running, queued) = srv.runs.counts();
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        srv.metrics.render(running, queued),
    )
        .into_response())
}

async fn get_run(
    State(srv): State<Arc<Server>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let t = auth(&srv, &headers)?;
    Ok(axum::Json(find(&srv, &t, &id)?.to_json()).into_response())
}

async fn delete_run(
    State(srv): State<Arc<Server>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let t = auth(&srv, &headers)?;
    let run = find(&srv, &t, &id)?;
    run.cancel.send_replace(true);
    run.wait_ended().await;
    srv.runs.remove(&run.id);
    remove_dir(run.dir.clone()).await;
    Ok(axum::Json(run.to_json()).into_response())
}

async fn get_output(
    State(srv): State<Arc<Server>>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let t = auth(&srv, &headers)?;
    let run = find(&srv, &t, &id)?;
    let path = match run.output(&name) {
        Ok(p) => p,
        Err(true) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("run {id} has not ended yet"),
            ))
        }
        Err(false) => {
            return Err(ApiError::not_found(format!(
                "run {id} has no output {name:?}"
            )))
        }
    };
    let f = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::not_found(format!("output {name:?}: {e}")))?;
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let body = Body::from_stream(tokio_util_stream(f));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response())
}

/// A file as a stream of chunks.
fn tokio_util_stream(
    f: tokio::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> {
    futures_util::stream::unfold(f, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 << 10];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
}

pub async fn remove_dir(dir: std::path::PathBuf) {
    let _ = tokio::task::spawn_blocking(move || {
        if dir.exists() {
            let _ = crate::unpack::remove_tree(&dir);
        }
    })
    .await;
}

#[derive(serde::Deserialize)]
struct PostQuery {
    #[serde(default)]
    wait: Option<String>,
}

async fn post_run(
    State(srv): State<Arc<Server>>,
    Query(q): Query<PostQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let r = post_run_inner(&srv, q, headers, body).await;
    if let Err(ApiError {
        rule: Some(rule), ..
    }) = &r
    {
        srv.metrics.rejected(rule);
    }
    r
}

async fn post_run_inner(
    srv: &Arc<Server>,
    q: PostQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let srv = srv.clone();
    let tenant = auth(&srv, &headers)?;
    if srv.stopping.load(Ordering::SeqCst) {
        return Err(shutting_down());
    }
    let wait = match q.wait.as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(v) => return Err(ApiError::bad_request(format!("wait: invalid value {v:?}"))),
    };
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let id = super::new_run_id();
    let dir = srv.state_dir.join(&id);
    let run = if ctype.starts_with("multipart/form-data") {
        super::upload::receive(&srv, &tenant, &id, &dir, &ctype, body).await?
    } else if ctype.is_empty() || ctype.starts_with("application/json") {
        let bytes = read_capped(body, srv.config.max_body).await?;
        let req = super::request::parse(&bytes)?;
        let checked = super::request::check(req, &tenant, srv.config.default_output, &id, &dir)?;
        super::Prepared::new(&srv, &tenant, &id, &dir, checked).await?
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_request",
            format!("Content-Type {ctype:?}: send application/json or multipart/form-data"),
        ));
    };
    // An upload may have been arriving when the stop came: it does not start a run then.
    if srv.stopping.load(Ordering::SeqCst) {
        return Err(shutting_down());
    }
    let run = run.start(&srv);
    if wait {
        run.wait_ended().await;
        return Ok(axum::Json(run.to_json()).into_response());
    }
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "id": run.id, "state": run.state().name() })),
    )
        .into_response())
}

/// The whole body, or 413 past `cap` bytes.
pub async fn read_capped(body: Body, cap: u64) -> ApiResult<Vec<u8>> {
    let mut out = Vec::new();
    let mut s = body.into_data_stream();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
        if out.len() as u64 + chunk.len() as u64 > cap {
            return Err(ApiError::too_large(format!(
                "body: over the server's cap of {cap} bytes (--max-body); send large inputs as multipart/form-data"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn shutting_down() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        "the server is shutting down",
    )
}

/// A refusal of a rate rule as a 429.
pub fn rate_refusal(r: RateRefusal) -> ApiError {
    let (rule, message) = match r {
        RateRefusal::MaxConcurrent(n) => (
            "maxConcurrent",
            format!("this tenant already has {n} runs in progress (maxConcurrent)"),
        ),
        RateRefusal::RunsPerMinute(n) => (
            "runsPerMinute",
            format!("this tenant started {n} runs in the last minute (runsPerMinute)"),
        ),
    };
    ApiError {
        rule: Some(rule),
        ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message)
    }
}
