//! HTTP: routing, request parsing and error responses for `/v1`, the page,
//! the static layout, health and metrics. Authentication is the `auth`
//! middleware in front of every route; the face conventions (JSON errors,
//! the `/v2` version header) are `face`; the publish rules are `publish`;
//! storage is `repo` and `blobs`.
//!
//! Every body has a limit that fits its route, checked against
//! `Content-Length` before anything is read and again while streaming:
//! metadata and failure reports are small, blobs are `--max-object-bytes`
//! (`/v1`) or `--max-blob-bytes` (`/v2`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bpfarm_object::{Digest, Identity, ObjectMetadata};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::blobs::{BlobError, BlobStore};
use crate::metrics::Metrics;
use crate::publish::PublishError;
use crate::repo::{Filter, ObjectRow, Repo};

/// Largest object metadata accepted by `POST /v1/objects`.
pub const METADATA_LIMIT: u64 = 64 << 10;
/// Largest failure report accepted by `POST /v1/failures` (the message is
/// stored cut to 16 Ki characters; a compiler's error output may be longer).
pub const FAILURE_LIMIT: u64 = 256 << 10;

/// Server settings beyond the data folder.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Reads need a read (or push) token too (`/metrics` included, unless
    /// it is served on its own listener).
    pub require_read_token: bool,
    /// Largest object accepted through `/v1`, in bytes.
    pub max_object_bytes: u64,
    /// Largest blob accepted through the OCI API, in bytes.
    pub max_blob_bytes: u64,
    /// `/v1` objects appear in OCI as `<namespace>/tracee-bpf`.
    pub oci_namespace: String,
    /// Unfinished OCI upload sessions older than this are removed.
    pub upload_ttl: std::time::Duration,
    /// Serve `/metrics` on the API listener (off when `--metrics-listen`
    /// gives it a listener of its own).
    pub metrics_on_api: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            require_read_token: false,
            max_object_bytes: 64 << 20,
            max_blob_bytes: 2 << 30,
            oci_namespace: "bpfarm".into(),
            upload_ttl: std::time::Duration::from_secs(3600),
            metrics_on_api: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AppState {
    pub repo: Repo,
    pub blobs: BlobStore,
    pub settings: Settings,
    metrics: Arc<Metrics>,
}

impl AppState {
    pub fn new(repo: Repo, blobs: BlobStore, settings: Settings) -> Self {
        Self { repo, blobs, settings, metrics: Arc::new(Metrics::default()) }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

/// An API error: a status, a stable code and a message a person can act on.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        self.status
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }
    fn internal(what: &str, e: impl std::fmt::Display) -> Self {
        tracing::error!("{what}: {e}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", format!("{what} error"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
            message: &'a str,
        }
        let mut r = (self.status, Json(Body { error: self.code, message: &self.message })).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"bpfarm\""));
        }
        r
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::internal("index", e)
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> Self {
        Self::internal("stored metadata", e)
    }
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::DigestMismatch { .. } => Self::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", e.to_string()),
            BlobError::TooLarge { .. } => Self::new(StatusCode::PAYLOAD_TOO_LARGE, "TOO_LARGE", e.to_string()),
            BlobError::Body(_) => Self::bad_request(e.to_string()),
            BlobError::Missing(_) => Self::new(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", e.to_string()),
            BlobError::Io(io) => Self::internal("blob store", io),
        }
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        let (status, code) = match &e {
            PublishError::Identity(_) | PublishError::FileName { .. } => (StatusCode::BAD_REQUEST, "IDENTITY_INVALID"),
            PublishError::BlobUnknown(_) => (StatusCode::BAD_REQUEST, "BLOB_UNKNOWN"),
            PublishError::Size { .. } => (StatusCode::BAD_REQUEST, "SIZE_INVALID"),
            PublishError::Conflict { .. } => (StatusCode::CONFLICT, "CONFLICT"),
            PublishError::Store(s) => return Self::internal("store", s),
        };
        let message = match &e {
            PublishError::BlobUnknown(d) => format!("upload the object to /v1/blobs/{d} first"),
            e => e.to_string(),
        };
        Self::new(status, code, message)
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The whole API; `main` and the tests serve this same router.
pub fn app(state: AppState) -> Router {
    let mut r = Router::new()
        .route("/", get(coverage))
        .route("/healthz", get(healthz))
        .route("/v1/failures", post(report_failure))
        .route("/v1/blobs/{digest}", put(put_blob).get(get_blob).head(get_blob))
        .route("/v1/objects", post(publish).get(list))
        .route("/v1/objects/{arch}/{version}/{release}", get(lookup))
        .route("/{version}/{arch}/{file}", get(static_file))
        .route("/v2/", get(crate::oci::base))
        .route("/v2", get(crate::oci::base))
        .route("/v2/{*rest}", axum::routing::any(crate::oci::dispatch));
    if state.settings.metrics_on_api {
        r = r.route("/metrics", get(metrics));
    }
    r.fallback(crate::face::not_found)
        // Innermost first: authorise before any handler (or body) runs,
        // then the face conventions on whatever came back, then count.
        .layer(middleware::from_fn_with_state(state.clone(), crate::auth::require))
        .layer(middleware::from_fn(crate::face::conventions))
        .layer(middleware::from_fn_with_state(state.clone(), crate::metrics::count))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// `/metrics` and `/healthz` alone, for `--metrics-listen`: a listener the
/// operator keeps private, so it needs no token.
pub fn metrics_app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(crate::face::not_found)
        .layer(middleware::from_fn(crate::face::conventions))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(s): State<AppState>) -> ApiResult<Response> {
    let objects = s.repo.count_current().await?;
    let text = s.metrics.render(objects).map_err(|e| ApiError::internal("metrics", e))?;
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response())
}

fn parse_digest(s: &str) -> ApiResult<Digest> {
    s.parse().map_err(|e: bpfarm_object::DigestError| {
        ApiError::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", e.to_string())
    })
}

/// The declared `Content-Length`, if any.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse().ok())
}

/// A whole small body, refused with `TooLarge` as soon as its declared or
/// received length passes `limit` (nothing past the limit is buffered).
pub(crate) async fn read_limited(body: Body, headers: &HeaderMap, limit: u64) -> Result<bytes::Bytes, BlobError> {
    if content_length(headers).is_some_and(|n| n > limit) {
        return Err(BlobError::TooLarge { limit });
    }
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BlobError::Body(e.to_string()))?;
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(BlobError::TooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// `PUT /v1/blobs/{digest}`: the object's bytes, streamed and checked.
async fn put_blob(
    State(s): State<AppState>,
    Path(digest): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let digest = parse_digest(&digest)?;
    if content_length(&headers).is_some_and(|n| n > s.settings.max_object_bytes) {
        return Err(BlobError::TooLarge { limit: s.settings.max_object_bytes }.into());
    }
    if s.blobs.size(&digest).await.is_some() {
        return Ok((StatusCode::OK, [("x-bpfarm-digest", digest.to_string())]).into_response());
    }
    s.blobs.put(&digest, body.into_data_stream(), s.settings.max_object_bytes).await?;
    Ok((StatusCode::CREATED, [("x-bpfarm-digest", digest.to_string())]).into_response())
}

async fn get_blob(
    State(s): State<AppState>,
    Path(digest): Path<String>,
    headers: HeaderMap,
    method: axum::http::Method,
) -> ApiResult<Response> {
    let digest = parse_digest(&digest)?;
    Ok(serve_blob(&s, &digest, &headers, method == axum::http::Method::HEAD).await?)
}

/// Sends a blob with Content-Length, its digest, ETag, If-None-Match and a
/// single `Range`. `BlobError::Missing` when it is not stored; `Io` (a 500
/// on either face) when the store fails.
pub(crate) async fn serve_blob(
    s: &AppState,
    digest: &Digest,
    headers: &HeaderMap,
    head_only: bool,
) -> Result<Response, BlobError> {
    let (mut file, size) = s.blobs.open_blob(digest).await?;
    let etag = format!("\"{digest}\"");
    let common = |b: axum::http::response::Builder| {
        b.header(header::ETAG, &etag)
            .header("x-bpfarm-digest", digest.as_str())
            .header("docker-content-digest", digest.as_str())
            .header(header::ACCEPT_RANGES, "bytes")
            .header(header::CONTENT_TYPE, "application/octet-stream")
    };
    let build = |b: axum::http::response::Builder, body: Body| {
        b.body(body).map_err(|e| BlobError::Io(std::io::Error::other(format!("building a response: {e}"))))
    };
    if let Some(inm) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok())
        && inm.split(',').any(|t| t.trim() == etag || t.trim() == "*")
    {
        return build(common(Response::builder()).status(StatusCode::NOT_MODIFIED), Body::empty());
    }
    let (status, start, len) = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => (StatusCode::OK, 0, size),
        Some(r) => match parse_range(r, size) {
            Some((a, b)) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
            None => {
                return build(
                    common(Response::builder())
                        .status(StatusCode::RANGE_NOT_SATISFIABLE)
                        .header(header::CONTENT_RANGE, format!("bytes */{size}")),
                    Body::empty(),
                );
            }
        },
    };
    let mut b = common(Response::builder()).status(status).header(header::CONTENT_LENGTH, len);
    if status == StatusCode::PARTIAL_CONTENT {
        b = b.header(header::CONTENT_RANGE, format!("bytes {start}-{}/{size}", start + len - 1));
    }
    if head_only {
        return build(b, Body::empty());
    }
    file.seek(std::io::SeekFrom::Start(start)).await?;
    s.metrics.served(len);
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), 64 << 10);
    build(b, Body::from_stream(stream))
}

/// One `bytes=a-b`, `bytes=a-` or `bytes=-n` range within `size` bytes.
fn parse_range(h: &str, size: u64) -> Option<(u64, u64)> {
    let spec = h.strip_prefix("bytes=")?;
    if spec.contains(',') || size == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (size.checked_sub(n.min(size))?, size - 1)
        }
        (a, "") => (a.parse().ok()?, size - 1),
        (a, b) => (a.parse().ok()?, b.parse::<u64>().ok()?.min(size - 1)),
    };
    (start <= end && start < size).then_some((start, end))
}

#[derive(Debug, Deserialize)]
struct PublishQuery {
    #[serde(default)]
    replace: bool,
}

#[derive(Debug, Serialize)]
struct PublishAnswer {
    status: &'static str,
    digest: Digest,
}

/// `POST /v1/objects`: metadata of an object whose blob is already stored.
async fn publish(
    State(s): State<AppState>,
    Query(q): Query<PublishQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let body = read_limited(body, &headers, METADATA_LIMIT).await.map_err(|e| match e {
        BlobError::TooLarge { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "TOO_LARGE", format!("metadata over {METADATA_LIMIT} bytes"))
        }
        e => e.into(),
    })?;
    let meta: ObjectMetadata =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("metadata: {e}")))?;
    let outcome = crate::publish::publish(&s, &meta, q.replace).await?;
    let status = if outcome == crate::publish::Outcome::Unchanged { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(PublishAnswer { status: outcome.as_str(), digest: meta.digest })).into_response())
}

/// `GET /`: the coverage page.
async fn coverage(State(s): State<AppState>) -> ApiResult<Response> {
    let (objects, failures) = s.repo.coverage().await?;
    Ok(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], crate::page::render(&objects, &failures)).into_response())
}

#[derive(Debug, Deserialize)]
struct FailureReport {
    kernel_release: String,
    arch: String,
    version: String,
    message: String,
}

/// `POST /v1/failures`: a builder reports a kernel it could not build.
async fn report_failure(State(s): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let body = read_limited(body, &headers, FAILURE_LIMIT).await.map_err(|e| match e {
        BlobError::TooLarge { .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "TOO_LARGE",
            format!("failure report over {FAILURE_LIMIT} bytes"),
        ),
        e => e.into(),
    })?;
    let f: FailureReport =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("failure report: {e}")))?;
    let arch: bpfarm_object::Arch =
        f.arch.parse().map_err(|e: bpfarm_object::IdentityError| ApiError::bad_request(e.to_string()))?;
    let id = Identity::new(&f.kernel_release, arch, &f.version)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "IDENTITY_INVALID", e.to_string()))?;
    let message: String = f.message.chars().take(16 << 10).collect();
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let recorded = s.repo.record_failure(&id, &message, &now).await?;
    // An identity that has an object is not failed; the report is ignored.
    Ok((if recorded { StatusCode::CREATED } else { StatusCode::OK }, Json(serde_json::json!({ "recorded": recorded })))
        .into_response())
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    kernel_release: Option<String>,
    arch: Option<String>,
    version: Option<String>,
    uname_version: Option<String>,
    config_digest: Option<String>,
    q: Option<String>,
    after: Option<i64>,
    limit: Option<i64>,
}

#[derive(Debug, Serialize)]
struct ObjectView {
    #[serde(flatten)]
    metadata: ObjectMetadata,
    published_at: String,
    download: String,
}

fn view(row: &ObjectRow) -> ApiResult<ObjectView> {
    Ok(ObjectView {
        metadata: row.metadata()?,
        published_at: row.published_at.clone(),
        download: format!("/v1/blobs/{}", row.digest),
    })
}

#[derive(Debug, Serialize)]
struct Page {
    objects: Vec<ObjectView>,
    /// Pass as `after` for the next page; absent on the last one.
    next: Option<i64>,
}

/// `GET /v1/objects?kernel_release=&arch=&version=&uname_version=&config_digest=&q=&after=&limit=`
async fn list(State(s): State<AppState>, Query(q): Query<ListQuery>) -> ApiResult<Json<Page>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let arch = q
        .arch
        .map(|a| a.parse::<bpfarm_object::Arch>().map(|a| a.uname().to_owned()))
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let filter = Filter {
        kernel_release: q.kernel_release,
        arch,
        version: q.version,
        uname_version: q.uname_version,
        config_digest: q.config_digest,
        search: q.q,
        after: q.after.unwrap_or(0),
        limit: limit + 1,
    };
    let mut rows = s.repo.list(&filter).await?;
    let next = (rows.len() as i64 > limit).then(|| {
        rows.truncate(limit as usize);
        rows.last().map(|r| r.id).unwrap_or(0)
    });
    Ok(Json(Page { objects: rows.iter().map(view).collect::<ApiResult<_>>()?, next }))
}

#[derive(Debug, Deserialize)]
struct LookupQuery {
    /// The host kernel's `uname -v`.
    uname_version: Option<String>,
    /// The host kernel's config digest.
    config_digest: Option<String>,
}

/// `GET /v1/objects/{arch}/{version}/{release}[?uname_version=&config_digest=]`:
/// the current object's metadata. With the host's `uname -v` or config
/// digest, an object recorded as built for a different build of the same
/// release is not returned (facts the object lacks do not exclude it).
async fn lookup(
    State(s): State<AppState>,
    Path((arch, version, release)): Path<(String, String, String)>,
    Query(q): Query<LookupQuery>,
) -> ApiResult<Json<ObjectView>> {
    let arch: bpfarm_object::Arch =
        arch.parse().map_err(|e: bpfarm_object::IdentityError| ApiError::bad_request(e.to_string()))?;
    let id = Identity::new(&release, arch, &version).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let row =
        s.repo.current(&id.kernel_release, id.arch.uname(), &id.version).await?.ok_or_else(|| {
            ApiError::not_found(format!("no object for kernel {release} ({arch}), version {version}"))
        })?;
    let meta = row.metadata()?;
    if let (Some(want), Some(have)) = (&q.uname_version, &meta.kernel.uname_version)
        && want != have
    {
        return Err(ApiError::not_found(format!(
            "the object for {release} was built for kernel build {have:?}, not {want:?}"
        )));
    }
    if let (Some(want), Some(have)) = (&q.config_digest, &meta.kernel.config_digest)
        && want != have.as_str()
    {
        return Err(ApiError::not_found(format!("the object for {release} was built for config {have}, not {want}")));
    }
    Ok(Json(view(&row)?))
}

/// The static layout: `/<version>/<arch>/<file name>` and `<file name>.sha256`,
/// what any plain HTTP server holding an exported tree would serve.
async fn static_file(
    State(s): State<AppState>,
    Path((version, arch, file)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    // `<file>`, `<file>.sha256` or `<file>.json`, as an exported tree has them.
    let (name, extra) = if let Some(n) = file.strip_suffix(".sha256") {
        (n, Some("sha256"))
    } else if let Some(n) = file.strip_suffix(".json") {
        (n, Some("json"))
    } else {
        (file.as_str(), None)
    };
    let arch = arch.parse::<bpfarm_object::Arch>().map_err(|_| ApiError::not_found("no such arch"))?;
    let rows = s.repo.by_file_name(&version, arch.uname(), name).await?;
    let row = match rows.as_slice() {
        [] => return Err(ApiError::not_found(format!("no {name} for {version}/{arch}"))),
        [one] => one,
        _ => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "AMBIGUOUS",
                format!("{name} names more than one kernel release; use /v1/objects"),
            ));
        }
    };
    let digest = parse_digest(&row.digest)?;
    match extra {
        Some("sha256") => {
            return Ok(([(header::CONTENT_TYPE, "text/plain")], format!("{}  {name}\n", digest.hex())).into_response());
        }
        Some(_) => return Ok(Json(row.metadata()?).into_response()),
        None => {}
    }
    Ok(serve_blob(&s, &digest, &headers, false).await?)
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=95-200", 100), Some((95, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-1", 100), None);
        assert_eq!(parse_range("bytes=0-1,3-4", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
