//! HTTP: routing, authentication, request parsing and error responses. The
//! publish rules themselves are in `publish`; storage in `repo` and `blobs`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bpfarm_object::{Digest, Identity, ObjectMetadata};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::blobs::{BlobError, BlobStore};
use crate::repo::{Filter, ObjectRow, Repo, Scope};

/// Server settings beyond the data folder.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Reads need a read (or push) token too.
    pub require_read_token: bool,
    /// Largest object accepted, in bytes.
    pub max_object_bytes: u64,
    /// Largest blob accepted through the OCI API, in bytes.
    pub max_blob_bytes: u64,
    /// `/v1` objects appear in OCI as `<namespace>/tracee-bpf`.
    pub oci_namespace: String,
    /// Unfinished OCI upload sessions older than this are removed.
    pub upload_ttl: std::time::Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            require_read_token: false,
            max_object_bytes: 64 << 20,
            max_blob_bytes: 2 << 30,
            oci_namespace: "bpfarm".into(),
            upload_ttl: std::time::Duration::from_secs(3600),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Debug, Default)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    bytes_served: Counter,
    registry: prometheus_client::registry::Registry,
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
        let mut m = Metrics::default();
        let requests = m.requests.clone();
        let bytes = m.bytes_served.clone();
        m.registry.register("bpfarm_http_requests", "HTTP requests by route, method and status", requests);
        m.registry.register("bpfarm_bytes_served", "Object bytes sent", bytes);
        Self { repo, blobs, settings, metrics: Arc::new(m) }
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
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
            message: &'a str,
        }
        (self.status, Json(Body { error: self.code, message: &self.message })).into_response()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!("index: {e}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", "index error")
    }
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::DigestMismatch { .. } => Self::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", e.to_string()),
            BlobError::TooLarge { .. } => Self::new(StatusCode::PAYLOAD_TOO_LARGE, "TOO_LARGE", e.to_string()),
            BlobError::Body(_) => Self::bad_request(e.to_string()),
            BlobError::Io(ref io) => {
                tracing::error!("blob store: {io}");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", "blob store error")
            }
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The whole API; `main` and the tests serve this same router.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(coverage))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/failures", post(report_failure))
        .route("/metrics", get(metrics))
        .route("/v1/blobs/{digest}", put(put_blob).get(get_blob).head(get_blob))
        .route("/v1/objects", post(publish).get(list))
        .route("/v1/objects/{arch}/{version}/{release}", get(lookup))
        .route("/{version}/{arch}/{file}", get(static_file))
        .route("/v2/", get(crate::oci::base))
        .route("/v2", get(crate::oci::base))
        .route("/v2/{*rest}", axum::routing::any(crate::oci::dispatch))
        // Blob bodies are limited (and streamed) by the handler itself.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

async fn count_requests(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let resp = next.run(req).await;
    s.metrics.requests.get_or_create(&RequestLabels { route, method, status: resp.status().as_u16() }).inc();
    resp
}

async fn metrics(State(s): State<AppState>) -> ApiResult<Response> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &s.metrics.registry).expect("metrics encode");
    let objects = s.repo.count_current().await?;
    text = text.replace(
        "# EOF\n",
        &format!(
            "# HELP bpfarm_objects Current objects.\n# TYPE bpfarm_objects gauge\nbpfarm_objects {objects}\n# EOF\n"
        ),
    );
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// Checks that the request carries a token granting `need`.
async fn authorize(s: &AppState, headers: &HeaderMap, need: Scope) -> ApiResult<()> {
    if need == Scope::Read && !s.settings.require_read_token {
        return Ok(());
    }
    let Some(token) = bearer(headers) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            format!("a {} token is required (Authorization: Bearer <token>)", need.as_str()),
        ));
    };
    match crate::tokens::scope_of(token, &s.repo.token_hashes().await?) {
        Some(Scope::Push) => Ok(()),
        Some(Scope::Read) if need == Scope::Read => Ok(()),
        Some(Scope::Read) => Err(ApiError::new(StatusCode::FORBIDDEN, "DENIED", "this token may read, not push")),
        None => Err(ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "unknown token")),
    }
}

fn parse_digest(s: &str) -> ApiResult<Digest> {
    s.parse().map_err(|e: bpfarm_object::DigestError| {
        ApiError::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", e.to_string())
    })
}

/// `PUT /v1/blobs/{digest}`: the object's bytes, streamed and checked.
async fn put_blob(
    State(s): State<AppState>,
    Path(digest): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    authorize(&s, &headers, Scope::Push).await?;
    let digest = parse_digest(&digest)?;
    if let Some(len) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > s.settings.max_object_bytes
    {
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
    authorize(&s, &headers, Scope::Read).await?;
    let digest = parse_digest(&digest)?;
    serve_blob(&s, &digest, &headers, method == axum::http::Method::HEAD).await
}

/// Sends a blob with Content-Length, its digest, ETag, If-None-Match and a
/// single `Range`.
pub(crate) async fn serve_blob(
    s: &AppState,
    digest: &Digest,
    headers: &HeaderMap,
    head_only: bool,
) -> ApiResult<Response> {
    let path = s.blobs.path(digest);
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", format!("no blob {digest}")))?;
    let size = file.metadata().await.map_err(BlobError::Io)?.len();
    let etag = format!("\"{digest}\"");
    let common = |b: axum::http::response::Builder| {
        b.header(header::ETAG, &etag)
            .header("x-bpfarm-digest", digest.as_str())
            .header("docker-content-digest", digest.as_str())
            .header(header::ACCEPT_RANGES, "bytes")
            .header(header::CONTENT_TYPE, "application/octet-stream")
    };
    if let Some(inm) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok())
        && inm.split(',').any(|t| t.trim() == etag || t.trim() == "*")
    {
        return Ok(common(Response::builder()).status(StatusCode::NOT_MODIFIED).body(Body::empty()).expect("response"));
    }
    let (status, start, len) = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => (StatusCode::OK, 0, size),
        Some(r) => match parse_range(r, size) {
            Some((a, b)) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
            None => {
                return Ok(common(Response::builder())
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                    .body(Body::empty())
                    .expect("response"));
            }
        },
    };
    let mut b = common(Response::builder()).status(status).header(header::CONTENT_LENGTH, len);
    if status == StatusCode::PARTIAL_CONTENT {
        b = b.header(header::CONTENT_RANGE, format!("bytes {start}-{}/{size}", start + len - 1));
    }
    if head_only {
        return Ok(b.body(Body::empty()).expect("response"));
    }
    file.seek(std::io::SeekFrom::Start(start)).await.map_err(BlobError::Io)?;
    s.metrics.bytes_served.inc_by(len);
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), 64 << 10);
    Ok(b.body(Body::from_stream(stream)).expect("response"))
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
    body: bytes::Bytes,
) -> ApiResult<Response> {
    authorize(&s, &headers, Scope::Push).await?;
    if body.len() > 1 << 20 {
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "TOO_LARGE", "metadata over 1 MiB"));
    }
    let meta: ObjectMetadata =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("metadata: {e}")))?;
    let (status, code) = crate::publish::publish_both(&s, &meta, q.replace).await?;
    Ok((status, Json(PublishAnswer { status: code, digest: meta.digest })).into_response())
}

/// `GET /`: the coverage page.
async fn coverage(State(s): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    authorize(&s, &headers, Scope::Read).await?;
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
async fn report_failure(
    State(s): State<AppState>,
    headers: HeaderMap,
    Json(f): Json<FailureReport>,
) -> ApiResult<Response> {
    authorize(&s, &headers, Scope::Push).await?;
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

fn view(row: &ObjectRow) -> ObjectView {
    ObjectView {
        metadata: row.metadata(),
        published_at: row.published_at.clone(),
        download: format!("/v1/blobs/{}", row.digest),
    }
}

#[derive(Debug, Serialize)]
struct Page {
    objects: Vec<ObjectView>,
    /// Pass as `after` for the next page; absent on the last one.
    next: Option<i64>,
}

/// `GET /v1/objects?kernel_release=&arch=&version=&uname_version=&config_digest=&q=&after=&limit=`
async fn list(State(s): State<AppState>, Query(q): Query<ListQuery>, headers: HeaderMap) -> ApiResult<Json<Page>> {
    authorize(&s, &headers, Scope::Read).await?;
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
    Ok(Json(Page { objects: rows.iter().map(view).collect(), next }))
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
    headers: HeaderMap,
) -> ApiResult<Json<ObjectView>> {
    authorize(&s, &headers, Scope::Read).await?;
    let arch: bpfarm_object::Arch =
        arch.parse().map_err(|e: bpfarm_object::IdentityError| ApiError::bad_request(e.to_string()))?;
    let id = Identity::new(&release, arch, &version).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let row =
        s.repo.current(&id.kernel_release, id.arch.uname(), &id.version).await?.ok_or_else(|| {
            ApiError::not_found(format!("no object for kernel {release} ({arch}), version {version}"))
        })?;
    let meta = row.metadata();
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
    Ok(Json(view(&row)))
}

/// The static layout: `/<version>/<arch>/<file name>` and `<file name>.sha256`,
/// what any plain HTTP server holding an exported tree would serve.
async fn static_file(
    State(s): State<AppState>,
    Path((version, arch, file)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    authorize(&s, &headers, Scope::Read).await?;
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
        Some(_) => return Ok(Json(row.metadata()).into_response()),
        None => {}
    }
    serve_blob(&s, &digest, &headers, false).await
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
