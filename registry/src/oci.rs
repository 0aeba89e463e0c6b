//! The OCI face (`/v2/`): one dispatcher over `/v2/<name>/…` (names contain
//! `/`, so this is not expressible as fixed routes) that parses requests,
//! calls `distribution` (the OCI rules over the store) and answers in
//! OCI's format (`face::V2`). Access is the `auth` middleware (Basic and
//! Bearer, the same tokens as `/v1`); every write also needs the
//! middleware's `Caller` to hold push.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bpfarm_object::{Digest, oci};
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::body;
use crate::distribution::{self, MANIFEST_LIMIT, check_repo};
use crate::download::{self, Send};
use crate::error::{BodyKind, Error};
use crate::face::V2;
use crate::metrics::RouteLabel;
use crate::state::AppState;

type V2Result = Result<Response, V2>;

/// `GET /v2/`: the API version check. The `auth` middleware has already
/// answered an uncredentialed ping with the Basic challenge (as registries
/// with auth do: clients learn to send credentials when they have them,
/// and pull anonymously, where allowed, when they do not).
pub async fn base() -> V2Result {
    Ok(axum::Json(json!({})).into_response())
}

/// One `/v2/<name>/…` request, as the dispatcher hands it on.
struct Req<'a> {
    s: &'a AppState,
    caller: Caller,
    method: &'a Method,
    headers: &'a HeaderMap,
    q: &'a HashMap<String, String>,
}

impl Req<'_> {
    fn may_write(&self) -> Result<(), Error> {
        self.caller.require_push()
    }
}

/// Everything under `/v2/<name>/...`, dispatched on the path's shape. The
/// response carries the endpoint's route template for the metrics.
/// The request is taken whole, so its headers are read in place, not copied.
pub async fn dispatch(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().strip_prefix("/v2/").unwrap_or("");
    let r = Req { s: &s, caller, method: &parts.method, headers: &parts.headers, q: &q };
    let (route, resp) = if path == "_catalog" {
        ("/v2/_catalog", catalog(&r).await)
    } else if let Some(repo) = path.strip_suffix("/tags/list") {
        ("/v2/{name}/tags/list", tags(&r, repo).await)
    } else if let Some((repo, reference)) = path.rsplit_once("/manifests/") {
        ("/v2/{name}/manifests/{reference}", manifest(&r, repo, reference, body).await)
    } else if let Some((repo, digest)) = path.rsplit_once("/referrers/") {
        ("/v2/{name}/referrers/{digest}", referrers(&r, repo, digest).await)
    } else if let Some((repo, id)) = path.rsplit_once("/blobs/uploads/") {
        let route = if id.is_empty() { "/v2/{name}/blobs/uploads/" } else { "/v2/{name}/blobs/uploads/{id}" };
        (route, upload(&r, repo, id, body).await)
    } else if let Some(repo) = path.strip_suffix("/blobs/uploads") {
        ("/v2/{name}/blobs/uploads/", upload(&r, repo, "", body).await)
    } else if let Some((repo, digest)) = path.rsplit_once("/blobs/") {
        ("/v2/{name}/blobs/{digest}", blob(&r, repo, digest).await)
    } else {
        ("other", Err(Error::NotFound(format!("no such endpoint /v2/{path}")).into()))
    };
    let mut resp = resp.unwrap_or_else(IntoResponse::into_response);
    resp.extensions_mut().insert(RouteLabel(route));
    resp
}

async fn blob(r: &Req<'_>, repo: &str, digest: &str) -> V2Result {
    check_repo(repo)?;
    let d: Digest = digest.parse().map_err(Error::from)?;
    if *r.method == Method::DELETE {
        r.may_write()?;
        distribution::delete_blob(r.s, repo, &d).await?;
        return Ok(StatusCode::ACCEPTED.into_response());
    }
    let send = match *r.method {
        Method::GET => Send::Body,
        Method::HEAD => Send::HeadersOnly,
        _ => return Err(Error::Method("GET, HEAD or DELETE a blob").into()),
    };
    distribution::linked_blob(r.s, repo, &d).await?;
    Ok(download::serve(&r.s.blobs, r.s.metrics(), &d, r.headers, send).await?)
}

fn upload_location(repo: &str, id: &str) -> String {
    format!("/v2/{repo}/blobs/uploads/{id}")
}

fn upload_state(repo: &str, id: &str, size: u64, status: StatusCode) -> Response {
    let range = if size == 0 { "0-0".to_owned() } else { format!("0-{}", size - 1) };
    (
        status,
        [
            (header::LOCATION, upload_location(repo, id)),
            (header::RANGE, range),
            (header::HeaderName::from_static("docker-upload-uuid"), id.to_owned()),
        ],
        "",
    )
        .into_response()
}

fn blob_created(repo: &str, d: &Digest) -> Response {
    (
        StatusCode::CREATED,
        [
            (header::LOCATION, format!("/v2/{repo}/blobs/{d}")),
            (header::HeaderName::from_static("docker-content-digest"), d.to_string()),
        ],
        "",
    )
        .into_response()
}

/// Where a `Content-Range` chunk says it starts.
fn chunk_start(range: &str) -> Option<u64> {
    range.trim_start_matches("bytes ").split('-').next().and_then(|a| a.trim().parse::<u64>().ok())
}

async fn upload(r: &Req<'_>, repo: &str, id: &str, body: Body) -> V2Result {
    check_repo(repo)?;
    r.may_write()?;
    let s = r.s;
    let limit = s.settings.max_blob_bytes;
    // A declared length over the limit is refused before the body is read.
    body::check_declared(r.headers, BodyKind::Blob, limit)?;
    if id.is_empty() {
        if *r.method != Method::POST {
            return Err(Error::Method("start an upload with POST").into());
        }
        // Stale sessions go first: they expire after the upload TTL.
        distribution::expire_uploads(s).await?;
        if let (Some(from), Some(mount)) = (r.q.get("from"), r.q.get("mount")) {
            let d: Digest = mount.parse().map_err(Error::from)?;
            if distribution::mount(s, repo, from, &d).await? {
                return Ok(blob_created(repo, &d));
            }
            // Not mountable: fall through to a normal upload session.
        }
        if let Some(digest) = r.q.get("digest") {
            let d: Digest = digest.parse().map_err(Error::from)?;
            distribution::put_blob(s, repo, &d, body.into_data_stream()).await?;
            return Ok(blob_created(repo, &d));
        }
        let id = distribution::start_upload(s, repo).await?;
        return Ok(upload_state(repo, &id, 0, StatusCode::ACCEPTED));
    }
    let size = distribution::upload_size(s, repo, id).await?;
    match *r.method {
        Method::GET => Ok(upload_state(repo, id, size, StatusCode::NO_CONTENT)),
        Method::DELETE => {
            distribution::cancel_upload(s, id).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Method::PATCH | Method::PUT => {
            // A chunk must continue exactly where the session is.
            if let Some(range) = r.headers.get(header::CONTENT_RANGE).and_then(|v| v.to_str().ok())
                && chunk_start(range) != Some(size)
            {
                let mut resp = upload_state(repo, id, size, StatusCode::RANGE_NOT_SATISFIABLE);
                *resp.body_mut() = Body::from(json!({ "errors": [{ "code": "BLOB_UPLOAD_INVALID", "message": format!("chunk starts at {range}, the upload is at {size}") }] }).to_string());
                resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                return Ok(resp);
            }
            if body::content_length(r.headers).is_some_and(|n| size.saturating_add(n) > limit) {
                return Err(Error::TooLarge { what: BodyKind::Blob, limit }.into());
            }
            let size = distribution::append(s, id, body.into_data_stream()).await?;
            if *r.method == Method::PATCH {
                return Ok(upload_state(repo, id, size, StatusCode::ACCEPTED));
            }
            let d: Digest = r.q.get("digest").map(String::as_str).unwrap_or("").parse().map_err(Error::from)?;
            distribution::finish_upload(s, repo, id, &d).await?;
            Ok(blob_created(repo, &d))
        }
        _ => Err(Error::Method("method not allowed on an upload").into()),
    }
}

async fn manifest(r: &Req<'_>, repo: &str, reference: &str, body: Body) -> V2Result {
    check_repo(repo)?;
    let s = r.s;
    match *r.method {
        Method::GET | Method::HEAD => {
            let (m, bytes) = distribution::manifest(s, repo, reference, *r.method == Method::GET).await?;
            let mut resp = (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, m.media_type.clone()),
                    (header::HeaderName::from_static("docker-content-digest"), m.digest.clone()),
                    (header::ETAG, format!("\"{}\"", m.digest)),
                ],
                bytes,
            )
                .into_response();
            resp.headers_mut().insert(header::CONTENT_LENGTH, m.size.into());
            Ok(resp)
        }
        Method::DELETE => {
            r.may_write()?;
            distribution::delete_manifest(s, repo, reference).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        Method::PUT => {
            r.may_write()?;
            let bytes = body::read_limited(body, r.headers, BodyKind::Manifest, MANIFEST_LIMIT).await?;
            let content_type =
                r.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            let (digest, subject) = distribution::put_manifest(s, repo, reference, &bytes, &content_type).await?;
            let mut resp = (
                StatusCode::CREATED,
                [
                    (header::LOCATION, format!("/v2/{repo}/manifests/{digest}")),
                    (header::HeaderName::from_static("docker-content-digest"), digest.to_string()),
                ],
                "",
            )
                .into_response();
            if let Some(subject) = subject
                && let Ok(v) = HeaderValue::from_str(subject.as_str())
            {
                resp.headers_mut().insert("oci-subject", v);
            }
            Ok(resp)
        }
        _ => Err(Error::Method("method not allowed on a manifest").into()),
    }
}

fn page_params(q: &HashMap<String, String>) -> Result<(String, i64), Error> {
    let n = match q.get("n") {
        Some(n) => n.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| Error::PageSize(n.clone()))?,
        None => 1000,
    };
    Ok((q.get("last").cloned().unwrap_or_default(), n.min(10_000)))
}

/// Adds `Link: <url>; rel="next"` (names and tags are checked, so the
/// value is always a valid header).
fn link_next(resp: &mut Response, url: String) {
    if let Ok(v) = HeaderValue::from_str(&format!("<{url}>; rel=\"next\"")) {
        resp.headers_mut().insert(header::LINK, v);
    }
}

async fn tags(r: &Req<'_>, repo: &str) -> V2Result {
    check_repo(repo)?;
    if !r.s.repo.oci_repo_exists(repo).await? {
        return Err(Error::RepoUnknown(repo.to_owned()).into());
    }
    let (last, n) = page_params(r.q)?;
    let mut tags = r.s.repo.oci_tags(repo, &last, n + 1).await?;
    let more = tags.len() as i64 > n;
    tags.truncate(n as usize);
    let mut resp = axum::Json(json!({ "name": repo, "tags": tags })).into_response();
    if more && let Some(l) = tags.last() {
        link_next(&mut resp, format!("/v2/{repo}/tags/list?n={n}&last={l}"));
    }
    Ok(resp)
}

async fn catalog(r: &Req<'_>) -> V2Result {
    let (last, n) = page_params(r.q)?;
    let mut repos = r.s.repo.oci_catalog(&last, n + 1).await?;
    let more = repos.len() as i64 > n;
    repos.truncate(n as usize);
    let mut resp = axum::Json(json!({ "repositories": repos })).into_response();
    if more && let Some(l) = repos.last() {
        link_next(&mut resp, format!("/v2/_catalog?n={n}&last={l}"));
    }
    Ok(resp)
}

async fn referrers(r: &Req<'_>, repo: &str, digest: &str) -> V2Result {
    check_repo(repo)?;
    let d: Digest = digest.parse().map_err(Error::from)?;
    let filter = r.q.get("artifactType").map(String::as_str);
    let rows = r.s.repo.oci_referrers(repo, d.as_str(), filter).await?;
    let manifests: Vec<Value> = rows
        .iter()
        .map(|m| {
            let mut desc = json!({ "mediaType": m.media_type, "digest": m.digest, "size": m.size });
            if let Some(t) = &m.artifact_type {
                desc["artifactType"] = json!(t);
            }
            if let Some(a) = m.annotations.as_deref().and_then(|a| serde_json::from_str::<Value>(a).ok()) {
                desc["annotations"] = a;
            }
            desc
        })
        .collect();
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, oci::INDEX_MEDIA_TYPE)],
        json!({ "schemaVersion": 2, "mediaType": oci::INDEX_MEDIA_TYPE, "manifests": manifests }).to_string(),
    )
        .into_response();
    if filter.is_some() {
        resp.headers_mut().insert("oci-filters-applied", HeaderValue::from_static("artifactType"));
    }
    Ok(resp)
}
