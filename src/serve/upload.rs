//! `multipart/form-data` requests: the `request` part (JSON, checked against the policy before
//! any file is read), then `input` parts (the filename is the input's name) and an optional
//! `stdin` part, each streamed to a file in the run's directory — never whole in memory.

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use tokio::io::AsyncWriteExt;

use super::api::ApiError;
use super::tokens::Tenant;
use super::{Prepared, Server};
use crate::runner::{Data, Input, Stdin};

fn multipart_error(e: multer::Error) -> ApiError {
    match e {
        multer::Error::StreamSizeExceeded { limit } => ApiError::too_large(format!(
            "body: over the server's cap of {limit} bytes for uploads (--max-upload)"
        )),
        multer::Error::FieldSizeExceeded { limit, field_name } => ApiError::too_large(format!(
            "multipart part {:?}: over {limit} bytes",
            field_name.unwrap_or_default()
        )),
        e => ApiError::bad_request(format!("multipart: {e}")),
    }
}

pub async fn receive(
    srv: &Arc<Server>,
    tenant: &Tenant,
    id: &str,
    dir: &Path,
    content_type: &str,
    body: Body,
) -> Result<Prepared, ApiError> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| ApiError::bad_request(format!("Content-Type: {e}")))?;
    let constraints = multer::Constraints::new()
        .size_limit(multer::SizeLimit::new().whole_stream(srv.config.max_upload));
    let mut mp =
        multer::Multipart::with_constraints(body.into_data_stream(), boundary, constraints);
    let mut first = mp
        .next_field()
        .await
        .map_err(multipart_error)?
        .ok_or_else(|| ApiError::bad_request("multipart: no parts"))?;
    if first.name() != Some("request") {
        return Err(ApiError::bad_request(
            "multipart: the first part must be named \"request\" (the JSON request)",
        ));
    }
    let mut json = Vec::new();
    while let Some(c) = first.chunk().await.map_err(multipart_error)? {
        if (json.len() + c.len()) as u64 > srv.config.max_body {
            return Err(ApiError::too_large(format!(
                "multipart part \"request\": over {} bytes (--max-body)",
                srv.config.max_body
            )));
        }
        json.extend_from_slice(&c);
    }
    drop(first);
    let req = super::request::parse(&json)?;
    let checked = super::request::check(req, tenant, srv.config.default_output, id, dir)?;
    let mut prep = Prepared::new(srv, tenant, id, dir, checked).await?;

    let uploads = dir.join("uploads");
    tokio::fs::create_dir(&uploads)
        .await
        .map_err(|e| ApiError::files("cannot create the upload directory", &uploads, e))?;
    let mut n = 0usize;
    let mut total = 0u64;
    let mut names: std::collections::HashSet<String> =
        prep.spec.inputs.iter().map(|i| i.name.clone()).collect();
    while let Some(mut field) = mp.next_field().await.map_err(multipart_error)? {
        let part = field.name().unwrap_or("").to_string();
        let name = match part.as_str() {
            "input" => {
                let name = field.file_name().map(str::to_string).ok_or_else(|| {
                    ApiError::bad_request(
                        "multipart part \"input\": a filename (the input's name) is required",
                    )
                })?;
                crate::runner::scratch::check_name("input", &name)
                    .map_err(|e| ApiError::bad_request(format!("inputs: {e}")))?;
                if !names.insert(name.clone()) {
                    return Err(ApiError::bad_request(format!(
                        "inputs: {name:?} is given twice"
                    )));
                }
                if names.len() > super::request::MAX_INPUTS {
                    return Err(super::request::too_many_inputs());
                }
                Some(name)
            }
            "stdin" => {
                if !matches!(prep.spec.stdin, Stdin::Null) {
                    return Err(ApiError::bad_request("stdin: given twice"));
                }
                None
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "multipart: unexpected part {other:?} (expected \"input\" or \"stdin\")"
                )))
            }
        };
        let path = uploads.join(n.to_string());
        n += 1;
        let mut f = tokio::fs::File::create(&path)
            .await
            .map_err(|e| ApiError::files("cannot create an upload's file", &path, e))?;
        while let Some(c) = field.chunk().await.map_err(multipart_error)? {
            total += c.len() as u64;
            f.write_all(&c)
                .await
                .map_err(|e| ApiError::files("cannot write an upload's file", &path, e))?;
        }
        f.flush()
            .await
            .map_err(|e| ApiError::files("cannot write an upload's file", &path, e))?;
        match name {
            Some(name) => prep.spec.inputs.push(Input {
                name,
                data: Data::File(path),
            }),
            None => prep.spec.stdin = Stdin::Data(Data::File(path)),
        }
    }
    super::metrics::Metrics::add(&srv.metrics.input_bytes, total);
    Ok(prep)
}
