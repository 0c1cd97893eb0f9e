//! `GET /v1/runs/{id}/events`: a run's event log as Server-Sent Events — replayed from the
//! start (or after `Last-Event-ID`), then live, ending after `exited`.

use std::fmt::Write;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};

use super::api::{auth, find, ApiError};
use super::state::Run;
use super::Server;

/// About how many bytes of events go out at once (a long log is replayed in several chunks,
/// each copied only when the client has taken the one before).
const CHUNK: usize = 256 << 10;

/// How long a stream stays silent at most: then a comment line goes out.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);

pub async fn events(
    State(srv): State<Arc<Server>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let t = auth(&srv, &headers)?;
    let run = find(&srv, &t, &id)?;
    let after = match headers.get("last-event-id") {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::bad_request("Last-Event-ID: expected an event id (a number)")
            })?,
    };
    let body = Body::from_stream(stream(run, after));
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response())
}

/// The events after `after`, each batch of new events as one chunk.
fn stream(
    run: Arc<Run>,
    after: u64,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::convert::Infallible>> {
    futures_util::stream::unfold((run, after, false), |(run, cursor, done)| async move {
        if done {
            return None;
        }
        loop {
            let (evs, ended) = run.events_after(cursor, CHUNK);
            if !evs.is_empty() {
                let mut chunk = String::new();
                for (i, e) in evs.iter().enumerate() {
                    let _ = write!(
                        chunk,
                        "id: {}\nevent: {}\ndata: {}\n\n",
                        cursor + 1 + i as u64,
                        e.kind,
                        e.data
                    );
                }
                let next = cursor + evs.len() as u64;
                return Some((Ok(bytes::Bytes::from(chunk)), (run, next, ended)));
            }
            if ended {
                return None;
            }
            // A quiet run still shows signs of life, so that proxies keep the stream open.
            if tokio::time::timeout(KEEPALIVE, run.wait_events(cursor))
                .await
                .is_err()
            {
                return Some((
                    Ok(bytes::Bytes::from_static(b": keepalive\n\n")),
                    (run, cursor, false),
                ));
            }
        }
    })
}
