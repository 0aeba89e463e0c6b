//! The `/v1` face: routing and request parsing for `/v1`, the coverage
//! page, the static layout, health and metrics; `app` is the whole router
//! (the OCI face's dispatcher included). Handlers parse, call a service or
//! a read, and answer; every error is rendered by `face::V1`.
//!
//! Access is the `auth` middleware in front of every route; handlers that
//! write take `auth::Pusher`, the middleware's proof that the caller may.
//! Every body has a limit that fits its route (`body`): metadata and
//! failure reports are small, objects `--max-object-bytes`.

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bpfarm_object::client::{METADATA_HEADER, OBJECT_MEDIA_TYPE};
use bpfarm_object::sign::{Attached, PROVENANCE_SUFFIX, SIGNATURE_SUFFIX};
use bpfarm_object::{Arch, Digest, Identity, ObjectMetadata};
use serde::{Deserialize, Serialize};

use crate::auth::Pusher;
use crate::body;
use crate::coverage;
use crate::download::{self, Send};
use crate::error::{BodyKind, Error};
use crate::face::V1;
use crate::publish::{self, Outcome, Replace};
use crate::repo::{Filter, ObjectRow, SignatureRow};
use crate::signatures;
use crate::state::AppState;

/// Largest object metadata accepted by `POST /v1/objects`.
pub const METADATA_LIMIT: u64 = 64 << 10;
/// Largest failure report accepted by `POST /v1/failures` (the message is
/// stored cut to 16 Ki characters; a compiler's error output may be longer).
pub const FAILURE_LIMIT: u64 = 256 << 10;

type V1Result<T> = Result<T, V1>;

/// The whole API; `main` and the tests serve this same router.
pub fn app(state: AppState) -> Router {
    let mut r = Router::new()
        .route("/", get(coverage))
        .route("/healthz", get(healthz))
        .route("/v1/failures", post(report_failure))
        .route("/v1/blobs/{digest}", put(put_blob).get(get_blob).head(get_blob))
        .route("/v1/objects", post(publish).get(list))
        .route("/v1/objects/{arch}/{version}/{release}", get(lookup))
        .route("/v1/matrices/{name}", put(put_matrix).get(get_matrix))
        .route("/v1/coverage", get(coverage_json))
        .route("/{version}/{arch}/{file}", get(static_file))
        .route("/v2/", get(crate::oci::base))
        .route("/v2", get(crate::oci::base))
        .route("/v2/{*rest}", axum::routing::any(crate::oci::dispatch));
    if state.settings.metrics_on_api {
        r = r.route("/metrics", get(metrics));
    }
    // One layer of the router, so a request passes one boxed service, not
    // one per middleware: axum boxes each `Router::layer` around every
    // route and clones every box per request. Outermost first: trace, then
    // the guard (count, the face conventions on whatever came back, and
    // innermost authorise before any handler or body runs), one
    // hand-written service that boxes no future for a request without a
    // token.
    let middleware = tower::ServiceBuilder::new()
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(crate::auth::GuardLayer::new(state.clone()));
    r.fallback(crate::face::not_found).layer(middleware).with_state(state)
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

/// Fails (503) once the index file was replaced under this registry, so a
/// supervisor restarts it onto the new one.
async fn healthz(State(s): State<AppState>) -> Response {
    if s.repo.index_replaced() {
        return (StatusCode::SERVICE_UNAVAILABLE, "the index file was replaced while serving: restart the registry\n")
            .into_response();
    }
    "ok\n".into_response()
}

async fn metrics(State(s): State<AppState>) -> V1Result<Response> {
    let objects = s.repo.count_current().await?;
    let text = s.metrics().render(objects)?;
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response())
}

fn parse_arch(arch: &str) -> Result<Arch, Error> {
    arch.parse().map_err(|e: bpfarm_object::IdentityError| Error::BadRequest(e.to_string()))
}

/// `PUT /v1/blobs/{digest}`: the object's bytes, streamed and checked.
async fn put_blob(
    _: Pusher,
    State(s): State<AppState>,
    Path(digest): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> V1Result<Response> {
    let digest: Digest = digest.parse().map_err(Error::from)?;
    body::check_declared(&headers, BodyKind::Blob, s.settings.max_object_bytes)?;
    if s.blobs.size(&digest).await.is_some() {
        return Ok((StatusCode::OK, [("x-bpfarm-digest", digest.to_string())]).into_response());
    }
    s.blobs.put(&digest, body.into_data_stream(), s.settings.max_object_bytes).await?;
    Ok((StatusCode::CREATED, [("x-bpfarm-digest", digest.to_string())]).into_response())
}

/// `GET`/`HEAD /v1/blobs/{digest}`. The request is taken whole: its
/// headers are read in place, not copied.
async fn get_blob(State(s): State<AppState>, Path(digest): Path<String>, req: Request) -> V1Result<Response> {
    let digest: Digest = digest.parse().map_err(Error::from)?;
    let send = if req.method() == Method::HEAD { Send::HeadersOnly } else { Send::Body };
    Ok(download::serve(&s.blobs, s.metrics(), &digest, req.headers(), send).await?)
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
    _: Pusher,
    State(s): State<AppState>,
    Query(q): Query<PublishQuery>,
    headers: HeaderMap,
    body: Body,
) -> V1Result<Response> {
    let body = body::read_limited(body, &headers, BodyKind::Metadata, METADATA_LIMIT).await?;
    let meta: ObjectMetadata =
        serde_json::from_slice(&body).map_err(|e| Error::BadRequest(format!("metadata: {e}")))?;
    let attached: Attached =
        serde_json::from_slice(&body).map_err(|e| Error::BadRequest(format!("signatures: {e}")))?;
    let replace = if q.replace { Replace::Yes } else { Replace::No };
    let keys = s.settings.trusted_keys.as_ref();
    let oci_repo = s.settings.canonical_repo();
    let outcome = publish::publish_signed(&s.repo, &s.blobs, &oci_repo, &meta, replace, &attached, keys).await?;
    let status = if outcome == Outcome::Unchanged { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(PublishAnswer { status: outcome.as_str(), digest: meta.digest })).into_response())
}

/// `?matrix=<name>&version=<v>&q=<substring>&state=<present|failed|missing>`
/// of the coverage page and `GET /v1/coverage`; the page pages with
/// `from`, the JSON with `offset` and `limit`.
#[derive(Debug, Deserialize)]
struct CoverageQuery {
    matrix: Option<String>,
    version: Option<String>,
    q: Option<String>,
    state: Option<coverage::State>,
    from: Option<usize>,
    offset: Option<usize>,
    limit: Option<usize>,
}

impl CoverageQuery {
    fn validate(&self) -> Result<(), Error> {
        if let Some(v) = &self.version {
            bpfarm_object::identity::validate_version(v)?;
        }
        if let Some(q) = &self.q {
            coverage::validate_query(q)?;
        }
        Ok(())
    }
}

/// The published matrix a coverage query names (404 when there is none).
async fn matrix_of(s: &AppState, name: Option<&str>) -> Result<Option<coverage::Matrix>, Error> {
    let Some(name) = name else { return Ok(None) };
    coverage::validate_matrix_name(name)?;
    let pairs =
        s.repo.matrix(name).await?.ok_or_else(|| Error::NotFound(format!("no matrix {name:?} was published")))?;
    let pairs = pairs.into_iter().filter_map(|(r, a)| Some((r, Arch::from_any(&a)?))).collect();
    Ok(Some(coverage::Matrix { name: name.to_owned(), pairs }))
}

/// `GET /`: the coverage page (`?matrix=<name>`: against a published
/// matrix; `?version=`, `?q=`, `?state=`, `?from=`: see `page::View`).
async fn coverage(State(s): State<AppState>, Query(q): Query<CoverageQuery>) -> V1Result<Response> {
    q.validate()?;
    // Dropped with this future when the client leaves: the work stops.
    let cancel = coverage::Cancel::default();
    let _gone = cancel.on_drop();
    let watch = Abandoned::watch(s.metrics());
    let answer = async {
        let matrix = matrix_of(&s, q.matrix.as_deref()).await?;
        let older = crate::page::OLDER_LINKED;
        let tally = coverage::count(&s.repo, q.version.as_deref(), coverage::MAX_REPORT_VERSIONS, older).await?;
        let repo = s.repo.clone();
        let runtime = tokio::runtime::Handle::current();
        // Counting pairs and rendering a page of rows: off the runtime; the
        // page's cells are read from there, for its rows only.
        tokio::task::spawn_blocking(move || {
            let view = crate::page::View {
                matrix: matrix.as_ref(),
                version: q.version.as_deref(),
                q: q.q.as_deref(),
                state: q.state,
                from: q.from.unwrap_or(0),
                cancel,
            };
            let mut detail = |releases: &[&str], versions: &[String]| {
                runtime.block_on(repo.coverage_detail(releases, versions, crate::page::FAILURE_TITLE_CHARS))
            };
            crate::page::render_view(tally, &mut detail, &view)
        })
        .await
        .map_err(Error::from)?
        .map_err(|e| match e {
            // Only after this future was dropped: nobody reads this answer.
            crate::page::PageError::Cancelled(c) => Error::BadRequest(c.to_string()),
            crate::page::PageError::Index(e) => Error::Index(e),
        })
    };
    let html = answer.await;
    watch.done();
    Ok(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html?).into_response())
}

/// Counts a coverage answer whose client left before it was ready (its
/// request's future was dropped, reading or counting): the work stopped.
struct Abandoned(Option<std::sync::Arc<crate::metrics::Metrics>>);

impl Abandoned {
    fn watch(metrics: &std::sync::Arc<crate::metrics::Metrics>) -> Self {
        Abandoned(Some(metrics.clone()))
    }

    /// The answer is ready (or failed): nothing was abandoned.
    fn done(mut self) {
        self.0 = None;
    }
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some(metrics) = self.0.take() {
            metrics.coverage_abandoned();
            tracing::debug!("coverage: the client left; the work stopped");
        }
    }
}

/// `GET /v1/coverage?matrix=<name>&version=<v>&q=&state=&offset=&limit=`:
/// present / failed / missing per (release, arch) and version, with
/// counts of everything (totals, per arch, per version, per kernel
/// series); `kernels` a page of at most `limit` rows (default 1000, at
/// most 10000), `next` the `offset` of the next. Without `version`, the
/// newest `MAX_REPORT_VERSIONS` versions are counted (`versions_total`
/// says how many there are), so the work stays kernels × 12.
async fn coverage_json(State(s): State<AppState>, Query(q): Query<CoverageQuery>) -> V1Result<Response> {
    q.validate()?;
    let limit = q.limit.unwrap_or(coverage::DEFAULT_KERNELS);
    if !(1..=coverage::MAX_KERNELS).contains(&limit) {
        return Err(Error::BadRequest(format!("limit must be between 1 and {}", coverage::MAX_KERNELS)).into());
    }
    let cancel = coverage::Cancel::default();
    let _gone = cancel.on_drop();
    let watch = Abandoned::watch(s.metrics());
    let answer = async {
        let matrix = matrix_of(&s, q.matrix.as_deref()).await?;
        let tally = coverage::count(&s.repo, q.version.as_deref(), coverage::MAX_REPORT_VERSIONS, 0).await?;
        tokio::task::spawn_blocking(move || {
            let select = coverage::Select { q: q.q.as_deref(), state: q.state, offset: q.offset.unwrap_or(0), limit };
            tally.finish(matrix.as_ref(), &cancel).map(|r| r.select(&select))
        })
        .await
        .map_err(Error::from)?
        .map_err(|e| Error::BadRequest(e.to_string()))
    };
    let report = answer.await;
    watch.done();
    Ok(Json(report?).into_response())
}

/// `PUT /v1/matrices/{name}`: the (release, arch) pairs a matrix expects,
/// `{"kernels": [{"release": "...", "arch": "x86_64"}, ...]}`; replaces
/// what the name held.
async fn put_matrix(
    _: Pusher,
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> V1Result<Response> {
    coverage::validate_matrix_name(&name)?;
    let body = body::read_limited(body, &headers, BodyKind::Matrix, coverage::MATRIX_LIMIT).await?;
    let upload: coverage::MatrixUpload =
        serde_json::from_slice(&body).map_err(|e| Error::BadRequest(format!("matrix: {e}")))?;
    // A pair listed twice is one kernel.
    let pairs: Vec<(String, String)> = upload
        .validate()?
        .into_iter()
        .map(|(r, a)| (r, a.uname().to_owned()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    if let Some(held) = s.repo.put_matrix(&name, &pairs, &now, s.settings.max_matrices).await? {
        return Err(Error::TooMany {
            what: "matrices",
            held,
            flag: "--max-matrices",
            hint: "replace one by uploading under its name, or raise the limit",
        }
        .into());
    }
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "matrix": name, "kernels": pairs.len() }))).into_response())
}

/// `GET /v1/matrices/{name}`: the pairs as uploaded.
async fn get_matrix(State(s): State<AppState>, Path(name): Path<String>) -> V1Result<Response> {
    let m = matrix_of(&s, Some(&name)).await?.unwrap_or_default();
    let kernels: Vec<coverage::MatrixKernel> =
        m.pairs.into_iter().map(|(release, arch)| coverage::MatrixKernel { release, arch }).collect();
    Ok(Json(serde_json::json!({ "matrix": name, "kernels": kernels })).into_response())
}

#[derive(Debug, Deserialize)]
struct FailureReport {
    kernel_release: String,
    arch: String,
    version: String,
    message: String,
}

/// `POST /v1/failures`: a builder reports a kernel it could not build.
async fn report_failure(_: Pusher, State(s): State<AppState>, headers: HeaderMap, body: Body) -> V1Result<Response> {
    let body = body::read_limited(body, &headers, BodyKind::FailureReport, FAILURE_LIMIT).await?;
    let f: FailureReport =
        serde_json::from_slice(&body).map_err(|e| Error::BadRequest(format!("failure report: {e}")))?;
    let id = Identity::new(&f.kernel_release, parse_arch(&f.arch)?, &f.version)?;
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
    /// `signature` and `attestation`, when the object has them.
    #[serde(flatten)]
    signed: Attached,
}

/// An object row as `/v1` answers it, with what was signed for it.
fn object_view(row: &ObjectRow, signatures: Option<&SignatureRow>) -> Result<ObjectView, Error> {
    let signed = signatures.map(signatures::attached_view).unwrap_or_default();
    Ok(ObjectView {
        metadata: row.metadata()?,
        published_at: row.published_at.clone(),
        download: format!("/v1/blobs/{}", row.digest),
        signed,
    })
}

#[derive(Debug, Serialize)]
struct Page {
    objects: Vec<ObjectView>,
    /// Pass as `after` for the next page; absent on the last one.
    next: Option<i64>,
}

/// `GET /v1/objects?kernel_release=&arch=&version=&uname_version=&config_digest=&q=&after=&limit=`
async fn list(State(s): State<AppState>, Query(q): Query<ListQuery>) -> V1Result<Json<Page>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Error::BadRequest("limit must be between 1 and 1000".into()).into());
    }
    let arch = q.arch.as_deref().map(parse_arch).transpose()?.map(|a| a.uname().to_owned());
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
    // One query for the page's signatures (one per row cost a page of
    // 1000 a thousand round trips to sqlite).
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let signed = s.repo.signatures_of(&ids).await?;
    let objects = rows.iter().map(|row| object_view(row, signed.get(&row.id))).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Page { objects, next }))
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
///
/// A client that accepts [`OBJECT_MEDIA_TYPE`] gets the object itself in
/// the same answer (one round trip): the bytes as the body and the same
/// JSON document, base64, in [`METADATA_HEADER`]. When that cannot be
/// served (the blob is missing, the header would be too large) the answer
/// is the JSON document, as for every other client.
async fn lookup(
    State(s): State<AppState>,
    Path((arch, version, release)): Path<(String, String, String)>,
    Query(q): Query<LookupQuery>,
    headers: HeaderMap,
) -> V1Result<Response> {
    let view = lookup_view(&s, &arch, &version, &release, &q).await?;
    let wants_object = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.split(';').next().is_some_and(|t| t.trim() == OBJECT_MEDIA_TYPE));
    if wants_object && let Some(r) = with_object(&s, &view).await {
        return Ok(r);
    }
    Ok(Json(view).into_response())
}

/// Largest [`METADATA_HEADER`] sent (the client reads up to
/// `client::MAX_METADATA_HEADER`); a larger document goes as the JSON answer.
const MAX_METADATA_HEADER: usize = 96 << 10;

/// The object `view` names, with `view` in [`METADATA_HEADER`]; `None`
/// when the JSON answer should be sent instead.
async fn with_object(s: &AppState, view: &ObjectView) -> Option<Response> {
    use base64::Engine as _;
    let json = serde_json::to_vec(view).ok()?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(json);
    if encoded.len() > MAX_METADATA_HEADER {
        return None;
    }
    let value = header::HeaderValue::from_str(&encoded).ok()?;
    let mut r =
        download::serve(&s.blobs, s.metrics(), &view.metadata.digest, &HeaderMap::new(), Send::Body).await.ok()?;
    if r.status() != StatusCode::OK {
        return None;
    }
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(OBJECT_MEDIA_TYPE));
    r.headers_mut().insert(METADATA_HEADER, value);
    r.headers_mut().insert(header::VARY, header::HeaderValue::from_static("accept"));
    Some(r)
}

async fn lookup_view(
    s: &AppState,
    arch: &str,
    version: &str,
    release: &str,
    q: &LookupQuery,
) -> Result<ObjectView, V1> {
    let arch = parse_arch(arch)?;
    let id = Identity::new(release, arch, version).map_err(|e| Error::BadRequest(e.to_string()))?;
    // One memoised read (row and signatures) while the index is unchanged.
    let (row, signatures) = s
        .repo
        .current_signed(&id.kernel_release, id.arch.uname(), &id.version)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no object for kernel {release} ({arch}), version {version}")))?;
    let meta = row.metadata()?;
    if let (Some(want), Some(have)) = (&q.uname_version, &meta.kernel.uname_version)
        && want != have
    {
        return Err(Error::NotFound(format!(
            "the object for {release} was built for kernel build {have:?}, not {want:?}"
        ))
        .into());
    }
    if let (Some(want), Some(have)) = (&q.config_digest, &meta.kernel.config_digest)
        && want != have.as_str()
    {
        return Err(Error::NotFound(format!("the object for {release} was built for config {have}, not {want}")).into());
    }
    Ok(object_view(&row, signatures.as_ref())?)
}

/// The static layout: `/<version>/<arch>/<file name>` and `<file name>.sha256`,
/// what any plain HTTP server holding an exported tree would serve.
async fn static_file(
    State(s): State<AppState>,
    Path((version, arch, file)): Path<(String, String, String)>,
    req: Request,
) -> V1Result<Response> {
    let headers = req.headers();
    // `<file>`, `<file>.sha256`, `<file>.json`, `<file>.sig` or
    // `<file>.intoto.jsonl`, as an exported tree has them.
    let (suffix, extra) = if file.ends_with(".sha256") {
        (".sha256", Some("sha256"))
    } else if file.ends_with(".json") {
        (".json", Some("json"))
    } else if file.ends_with(SIGNATURE_SUFFIX) {
        (SIGNATURE_SUFFIX, Some("sig"))
    } else if file.ends_with(PROVENANCE_SUFFIX) {
        (PROVENANCE_SUFFIX, Some("intoto"))
    } else {
        ("", None)
    };
    let arch = arch.parse::<Arch>().map_err(|_| Error::NotFound("no such arch".into()))?;
    // The path's own strings are the index memo's key: no copies.
    let mut name = file;
    name.truncate(name.len() - suffix.len());
    let path = (version, arch.uname().to_owned(), name);
    let rows = s.repo.by_file_name(&path).await?;
    let (version, name) = (&path.0, &path.2);
    let row = match &rows[..] {
        [] => return Err(Error::NotFound(format!("no {name} for {version}/{arch}")).into()),
        [one] => one,
        _ => return Err(Error::Ambiguous(name.to_owned()).into()),
    };
    let digest: Digest = row.digest.parse().map_err(Error::from)?;
    match extra {
        Some("sha256") => {
            return Ok(([(header::CONTENT_TYPE, "text/plain")], format!("{}  {name}\n", digest.hex())).into_response());
        }
        Some("json") => return Ok(Json(row.metadata()?).into_response()),
        Some(which) => {
            // The signature or provenance of this object, 404 when unsigned.
            let signed = s.repo.signatures(row.id).await?.map(|r| signatures::attached_view(&r)).unwrap_or_default();
            let blob = if which == "sig" { signed.signature } else { signed.attestation };
            let blob = blob.ok_or_else(|| Error::NotFound(format!("{name}{suffix}: {name} is not signed")))?;
            return Ok(download::serve(&s.blobs, s.metrics(), &blob.digest, headers, Send::Body).await?);
        }
        None => {}
    }
    Ok(download::serve(&s.blobs, s.metrics(), &digest, headers, Send::Body).await?)
}
