//! The OCI distribution API (`/v2/`) over the same store as `/v1`: blobs,
//! chunked and monolithic uploads with cross-repository mounts, manifests
//! by tag or digest (exact bytes, validated in full before anything is
//! stored), tags, catalog and referrers, OCI error codes. Authentication is
//! the `auth` middleware (Basic and Bearer, the same tokens as `/v1`).
//!
//! An image manifest in bpfarm's artifact format pushed here goes through
//! the `/v1` publish rules and becomes current in both faces in the same
//! transaction that stores it. In `<namespace>/tracee-bpf` the tags that
//! carry `/v1` objects' OCI form only ever name an index that reaches those
//! objects, and what they name cannot be deleted through `/v2`.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bpfarm_object::{Arch, Digest, oci};
use serde_json::{Value, json};
use std::collections::HashMap;

use crate::blobs::BlobError;
use crate::faces::{self, Held};
use crate::manifest::{self, Kind};
use crate::metrics::RouteLabel;
use crate::publish::PublishError;
use crate::repo::{NewManifest, WriteTx};
use crate::routes::AppState;

/// Largest manifest accepted.
pub const MANIFEST_LIMIT: u64 = 4 << 20;

/// An OCI error: status, spec code, message.
#[derive(Debug)]
pub struct OciError(StatusCode, &'static str, String);

impl OciError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self(status, code, message.into())
    }
}

impl IntoResponse for OciError {
    fn into_response(self) -> Response {
        let mut r = (self.0, axum::Json(json!({ "errors": [{ "code": self.1, "message": self.2, "detail": null }] })))
            .into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"bpfarm\""));
        }
        r
    }
}

fn err(status: StatusCode, code: &'static str, msg: impl Into<String>) -> OciError {
    OciError(status, code, msg.into())
}

impl From<sqlx::Error> for OciError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!("index: {e}");
        err(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", "index error")
    }
}

impl From<BlobError> for OciError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::DigestMismatch { .. } => err(StatusCode::BAD_REQUEST, "DIGEST_INVALID", e.to_string()),
            BlobError::TooLarge { .. } => err(StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID", e.to_string()),
            BlobError::Body(m) => err(StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID", m),
            BlobError::Missing(_) => err(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", e.to_string()),
            BlobError::Io(io) => {
                tracing::error!("blob store: {io}");
                err(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", "blob store error")
            }
        }
    }
}

impl From<PublishError> for OciError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::Identity(_) | PublishError::FileName { .. } => {
                err(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", e.to_string())
            }
            PublishError::BlobUnknown(_) => err(StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN", e.to_string()),
            PublishError::Size { .. } => err(StatusCode::BAD_REQUEST, "SIZE_INVALID", e.to_string()),
            PublishError::Conflict { .. } => err(
                StatusCode::CONFLICT,
                "MANIFEST_INVALID",
                format!("{e} (through /v1: POST /v1/objects?replace=true)"),
            ),
            PublishError::Store(s) => {
                tracing::error!("store: {s}");
                err(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", "store error")
            }
        }
    }
}

impl From<manifest::Invalid> for OciError {
    fn from(e: manifest::Invalid) -> Self {
        err(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", e.0)
    }
}

type OciResult = Result<Response, OciError>;

/// OCI repository names: `/`-separated components of lowercase letters and
/// digits joined by `.`, `_`, `__` or `-`s.
pub fn valid_repo(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
                && !c.contains("..")
                && !c.contains("___")
        })
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_')
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn parse_digest(s: &str) -> Result<Digest, OciError> {
    s.parse().map_err(|e: bpfarm_object::DigestError| err(StatusCode::BAD_REQUEST, "DIGEST_INVALID", e.to_string()))
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// `GET /v2/`: the API version check. The `auth` middleware has already
/// answered an uncredentialed ping with the Basic challenge (as registries
/// with auth do: clients learn to send credentials when they have them,
/// and pull anonymously, where allowed, when they do not).
pub async fn base() -> OciResult {
    Ok(axum::Json(json!({})).into_response())
}

/// Everything under `/v2/<name>/...`, dispatched on the path's shape (names
/// contain `/`, so this is not expressible as fixed routes). The response
/// carries the endpoint's route template for the metrics.
pub async fn dispatch(
    State(s): State<AppState>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = uri.path().strip_prefix("/v2/").unwrap_or("");
    let (route, r) = if path == "_catalog" {
        ("/v2/_catalog", catalog(&s, &q).await)
    } else if let Some(repo) = path.strip_suffix("/tags/list") {
        ("/v2/{name}/tags/list", tags(&s, repo, &q).await)
    } else if let Some((repo, reference)) = path.rsplit_once("/manifests/") {
        ("/v2/{name}/manifests/{reference}", manifest(&s, &method, repo, reference, &headers, body).await)
    } else if let Some((repo, digest)) = path.rsplit_once("/referrers/") {
        ("/v2/{name}/referrers/{digest}", referrers(&s, repo, digest, &q).await)
    } else if let Some((repo, id)) = path.rsplit_once("/blobs/uploads/") {
        let route = if id.is_empty() { "/v2/{name}/blobs/uploads/" } else { "/v2/{name}/blobs/uploads/{id}" };
        (route, upload(&s, &method, repo, id, &headers, &q, body).await)
    } else if let Some(repo) = path.strip_suffix("/blobs/uploads") {
        ("/v2/{name}/blobs/uploads/", upload(&s, &method, repo, "", &headers, &q, body).await)
    } else if let Some((repo, digest)) = path.rsplit_once("/blobs/") {
        ("/v2/{name}/blobs/{digest}", blob(&s, &method, repo, digest, &headers).await)
    } else {
        ("other", Err(err(StatusCode::NOT_FOUND, "NAME_UNKNOWN", format!("no such endpoint /v2/{path}"))))
    };
    let mut resp = r.unwrap_or_else(IntoResponse::into_response);
    resp.extensions_mut().insert(RouteLabel(route));
    resp
}

fn check_repo(repo: &str) -> Result<(), OciError> {
    if valid_repo(repo) {
        Ok(())
    } else {
        Err(err(StatusCode::BAD_REQUEST, "NAME_INVALID", format!("invalid repository name {repo:?}")))
    }
}

/// Refuses a `/v2` delete that would take a current `/v1` object's OCI
/// form out of `<namespace>/tracee-bpf`.
fn held_by_v1(repo: &str, what: &str) -> OciError {
    err(
        StatusCode::CONFLICT,
        "DENIED",
        format!("{what} in {repo} is the OCI form of a current /v1 object; it changes only when the object does"),
    )
}

async fn blob(s: &AppState, method: &Method, repo: &str, digest: &str, headers: &HeaderMap) -> OciResult {
    check_repo(repo)?;
    let d = parse_digest(digest)?;
    if *method == Method::DELETE {
        let mut tx = s.repo.begin_write().await?;
        if repo == faces::canonical_repo(&s.settings.oci_namespace)
            && (tx.is_current_object(d.as_str()).await?
                || (d == Digest::of_bytes(oci::EMPTY_CONFIG) && tx.count_current().await? > 0))
        {
            return Err(held_by_v1(repo, &format!("blob {d}")));
        }
        let gone = tx.unlink(repo, d.as_str()).await?;
        tx.commit().await?;
        return if gone {
            Ok(StatusCode::ACCEPTED.into_response())
        } else {
            Err(err(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", format!("{repo} has no blob {d}")))
        };
    }
    if *method != Method::GET && *method != Method::HEAD {
        return Err(err(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", "GET, HEAD or DELETE a blob"));
    }
    if !s.repo.oci_linked(repo, d.as_str()).await? {
        return Err(err(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", format!("{repo} has no blob {d}")));
    }
    Ok(crate::routes::serve_blob(s, &d, headers, *method == Method::HEAD).await?)
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

async fn upload(
    s: &AppState,
    method: &Method,
    repo: &str,
    id: &str,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    body: Body,
) -> OciResult {
    check_repo(repo)?;
    let limit = s.settings.max_blob_bytes;
    // A declared length over the limit is refused before the body is read.
    if crate::routes::content_length(headers).is_some_and(|n| n > limit) {
        return Err(BlobError::TooLarge { limit }.into());
    }
    if id.is_empty() {
        if *method != Method::POST {
            return Err(err(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", "start an upload with POST"));
        }
        // Stale sessions go first: they expire after the upload TTL.
        for stale in s.repo.oci_expire_uploads(unix_now() - s.settings.upload_ttl.as_secs() as i64).await? {
            let _ = tokio::fs::remove_file(s.blobs.upload_path(&stale)).await;
        }
        if let (Some(from), Some(mount)) = (q.get("from"), q.get("mount")) {
            let d = parse_digest(mount)?;
            if valid_repo(from) && s.repo.oci_linked(from, d.as_str()).await? && s.blobs.size(&d).await.is_some() {
                s.repo.oci_link(repo, d.as_str()).await?;
                return Ok(blob_created(repo, &d));
            }
            // Not mountable: fall through to a normal upload session.
        }
        if let Some(digest) = q.get("digest") {
            let d = parse_digest(digest)?;
            s.blobs.put(&d, body.into_data_stream(), limit).await?;
            s.repo.oci_link(repo, d.as_str()).await?;
            return Ok(blob_created(repo, &d));
        }
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).map_err(|e| BlobError::Io(std::io::Error::other(format!("OS randomness: {e}"))))?;
        let id = hex::encode(raw);
        tokio::fs::File::create(s.blobs.upload_path(&id)).await.map_err(BlobError::Io)?;
        s.repo.oci_upload_start(&id, repo, unix_now()).await?;
        return Ok(upload_state(repo, &id, 0, StatusCode::ACCEPTED));
    }
    if !id.bytes().all(|b| b.is_ascii_hexdigit()) || s.repo.oci_upload(id).await?.as_deref() != Some(repo) {
        return Err(err(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN", format!("no upload {id} in {repo}")));
    }
    let path = s.blobs.upload_path(id);
    let size = tokio::fs::metadata(&path).await.map(|m| m.len()).map_err(BlobError::Io)?;
    match *method {
        Method::GET => Ok(upload_state(repo, id, size, StatusCode::NO_CONTENT)),
        Method::DELETE => {
            s.repo.oci_upload_end(id).await?;
            let _ = tokio::fs::remove_file(&path).await;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Method::PATCH | Method::PUT => {
            // A chunk must continue exactly where the session is.
            if let Some(range) = headers.get(header::CONTENT_RANGE).and_then(|v| v.to_str().ok()) {
                let start =
                    range.trim_start_matches("bytes ").split('-').next().and_then(|a| a.trim().parse::<u64>().ok());
                if start != Some(size) {
                    let mut r = upload_state(repo, id, size, StatusCode::RANGE_NOT_SATISFIABLE);
                    *r.body_mut() = Body::from(json!({ "errors": [{ "code": "BLOB_UPLOAD_INVALID", "message": format!("chunk starts at {range}, the upload is at {size}") }] }).to_string());
                    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    return Ok(r);
                }
            }
            if crate::routes::content_length(headers).is_some_and(|n| size.saturating_add(n) > limit) {
                return Err(BlobError::TooLarge { limit }.into());
            }
            let size = s.blobs.append(id, body.into_data_stream(), limit).await?;
            if *method == Method::PATCH {
                return Ok(upload_state(repo, id, size, StatusCode::ACCEPTED));
            }
            let d = parse_digest(q.get("digest").map(String::as_str).unwrap_or(""))?;
            let result = s.blobs.adopt(id, &d).await;
            s.repo.oci_upload_end(id).await?;
            if result.is_err() {
                let _ = tokio::fs::remove_file(&path).await;
            }
            result?;
            s.repo.oci_link(repo, d.as_str()).await?;
            Ok(blob_created(repo, &d))
        }
        _ => Err(err(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", "method not allowed on an upload")),
    }
}

async fn manifest(
    s: &AppState,
    method: &Method,
    repo: &str,
    reference: &str,
    headers: &HeaderMap,
    body: Body,
) -> OciResult {
    check_repo(repo)?;
    match *method {
        Method::GET | Method::HEAD => {
            let unknown =
                || err(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", format!("{repo} has no manifest {reference}"));
            let m = s.repo.oci_manifest(repo, reference).await?.ok_or_else(unknown)?;
            let d = parse_digest(&m.digest)?;
            let bytes = if *method == Method::HEAD {
                Vec::new()
            } else {
                match s.blobs.read(&d).await {
                    Ok(b) => b,
                    Err(BlobError::Missing(_)) => return Err(unknown()),
                    Err(e) => return Err(e.into()),
                }
            };
            let mut r = (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, m.media_type.clone()),
                    (header::HeaderName::from_static("docker-content-digest"), m.digest.clone()),
                    (header::ETAG, format!("\"{}\"", m.digest)),
                ],
                bytes,
            )
                .into_response();
            r.headers_mut().insert(header::CONTENT_LENGTH, m.size.into());
            Ok(r)
        }
        Method::DELETE => {
            let mut tx = s.repo.begin_write().await?;
            if repo == faces::canonical_repo(&s.settings.oci_namespace)
                && holds_v1_form(s, &mut tx, repo, reference).await?
            {
                return Err(held_by_v1(repo, reference));
            }
            let gone = tx.delete_manifest(repo, reference).await?;
            tx.commit().await?;
            if gone {
                Ok(StatusCode::ACCEPTED.into_response())
            } else {
                Err(err(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", format!("{repo} has no manifest {reference}")))
            }
        }
        Method::PUT => {
            let bytes = crate::routes::read_limited(body, headers, MANIFEST_LIMIT).await.map_err(|e| match e {
                BlobError::TooLarge { .. } => err(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "MANIFEST_INVALID",
                    format!("manifests are limited to {MANIFEST_LIMIT} bytes"),
                ),
                e => e.into(),
            })?;
            let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            let (digest, subject) = put_manifest(s, repo, reference, &bytes, &content_type).await?;
            let mut r = (
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
                r.headers_mut().insert("oci-subject", v);
            }
            Ok(r)
        }
        _ => Err(err(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", "method not allowed on a manifest")),
    }
}

/// Whether `reference` (a tag or a manifest digest) in the canonical
/// repository carries a current object's OCI form: a tag recorded for one,
/// the index such a tag names, or a bpfarm manifest whose layer is current.
async fn holds_v1_form(s: &AppState, tx: &mut WriteTx, repo: &str, reference: &str) -> Result<bool, OciError> {
    if !reference.starts_with("sha256:") {
        return Ok(!tx.objects_with_tag(reference).await?.is_empty());
    }
    for tag in tx.tags_of(repo, reference).await? {
        if !tx.objects_with_tag(&tag).await?.is_empty() {
            return Ok(true);
        }
    }
    let Ok(d) = reference.parse::<Digest>() else { return Ok(false) };
    if tx.manifest(repo, d.as_str()).await?.is_none() {
        return Ok(false);
    }
    let bytes = match s.blobs.read(&d).await {
        Ok(b) => b,
        Err(BlobError::Missing(_)) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    match v["layers"][0]["digest"].as_str() {
        Some(layer) if v["artifactType"] == oci::ARTIFACT_TYPE => Ok(tx.is_current_object(layer).await?),
        _ => Ok(false),
    }
}

/// Everything a manifest references must be in `repo`, with the sizes it
/// claims: blobs for an image manifest, manifests (by digest) for an index.
async fn check_references(
    s: &AppState,
    tx: &mut WriteTx,
    repo: &str,
    doc: &manifest::Manifest,
) -> Result<(), OciError> {
    match &doc.kind {
        Kind::Image { config, layers } => {
            for d in std::iter::once(config).chain(layers) {
                let stored =
                    if tx.linked(repo, d.digest.as_str()).await? { s.blobs.size(&d.digest).await } else { None };
                match stored {
                    None => {
                        return Err(err(
                            StatusCode::BAD_REQUEST,
                            "MANIFEST_BLOB_UNKNOWN",
                            format!("the manifest references blob {}, which {repo} does not have", d.digest),
                        ));
                    }
                    Some(n) if n != d.size => {
                        return Err(err(
                            StatusCode::BAD_REQUEST,
                            "SIZE_INVALID",
                            format!("the manifest says blob {} has {} bytes; it has {n}", d.digest, d.size),
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        Kind::Index { manifests } => {
            for d in manifests {
                match tx.manifest(repo, d.digest.as_str()).await? {
                    None => {
                        return Err(err(
                            StatusCode::BAD_REQUEST,
                            "MANIFEST_BLOB_UNKNOWN",
                            format!("the index references {}, which {repo} does not have", d.digest),
                        ));
                    }
                    Some(m) if u64::try_from(m.size).ok() != Some(d.size) => {
                        return Err(err(
                            StatusCode::BAD_REQUEST,
                            "SIZE_INVALID",
                            format!("the index says manifest {} has {} bytes; it has {}", d.digest, d.size, m.size),
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
    }
    Ok(())
}

/// In the canonical repository, a tag that carries `/v1` objects' OCI form
/// may only name an index that reaches each of them.
async fn check_canonical_tag(
    s: &AppState,
    tx: &mut WriteTx,
    repo: &str,
    tag: &str,
    doc: &manifest::Manifest,
    bytes: &[u8],
    adopting: Option<&bpfarm_object::ObjectMetadata>,
) -> Result<(), OciError> {
    let held = tx.objects_with_tag(tag).await?;
    let becomes_held = adopting.is_some_and(|m| {
        let id = &m.identity;
        tag == oci::tag(&id.kernel_release, &id.version, false)
            || tag == oci::tag(&id.kernel_release, &id.version, true)
    });
    if held.is_empty() && !becomes_held {
        return Ok(());
    }
    if !doc.is_index() {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
            format!(
                "tag {tag} in {repo} carries /v1 objects and names their image index; push the manifest by digest (the registry writes the index)"
            ),
        ));
    }
    for (arch, digest, size) in &held {
        let Some(arch) = Arch::from_any(arch) else { continue };
        let h = Held { arch, digest, size: (*size).max(0) as u64 };
        if let Err(why) = faces::index_reaches(tx, &s.blobs, repo, bytes, &h).await.map_err(|e| {
            tracing::error!("checking tag {tag}: {e}");
            err(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", "store error")
        })? {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "MANIFEST_INVALID",
                format!("tag {tag} in {repo} must reach the {arch} object /v1 holds ({digest}): {why}"),
            ));
        }
    }
    Ok(())
}

/// Stores a manifest's exact bytes under `reference` (a tag, or its own
/// digest) once it is fully valid: well-formed, everything it references
/// in `repo` with the right sizes, a bpfarm artifact through the publish
/// rules, a canonical tag still reaching `/v1`'s objects. Storing it, its
/// tag and (for a bpfarm artifact) the object in both faces is one
/// transaction. Returns its digest and its subject's.
pub async fn put_manifest(
    s: &AppState,
    repo: &str,
    reference: &str,
    bytes: &[u8],
    content_type: &str,
) -> Result<(Digest, Option<Digest>), OciError> {
    let digest = Digest::of_bytes(bytes);
    let tag = if reference.starts_with("sha256:") {
        if parse_digest(reference)? != digest {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                format!("the manifest's bytes hash to {digest}, not {reference}"),
            ));
        }
        None
    } else if valid_tag(reference) {
        Some(reference)
    } else {
        return Err(err(StatusCode::BAD_REQUEST, "TAG_INVALID", format!("invalid tag {reference:?}")));
    };
    let doc = manifest::parse(bytes, content_type)?;
    let artifact = doc.bpfarm_object()?;
    if let Some(meta) = &artifact {
        crate::publish::check(&s.blobs, meta).await?;
    }
    let canonical = faces::canonical_repo(&s.settings.oci_namespace);
    let mut tx = s.repo.begin_write().await?;
    check_references(s, &mut tx, repo, &doc).await?;
    if let Some(meta) = &artifact
        && let Some(row) = tx.current(&meta.identity).await?
        && row.digest != meta.digest.as_str()
    {
        return Err(PublishError::Conflict { identity: meta.identity.clone(), existing: row.digest }.into());
    }
    if repo == canonical
        && let Some(tag) = tag
    {
        check_canonical_tag(s, &mut tx, repo, tag, &doc, bytes, artifact.as_ref()).await?;
    }
    // Valid: now store.
    s.blobs.put_bytes(bytes).await?;
    let now = now();
    tx.put_manifest(&NewManifest {
        repo,
        digest: digest.as_str(),
        media_type: &doc.media_type,
        size: bytes.len() as i64,
        artifact_type: doc.reported_artifact_type(),
        subject: doc.subject.as_ref().map(|d| d.digest.as_str()),
        annotations: doc.annotations.as_deref(),
        tag,
        now: &now,
    })
    .await?;
    if let Some(meta) = &artifact {
        crate::publish::make_current(&mut tx, &s.blobs, &canonical, meta, false).await?;
    }
    tx.commit().await?;
    Ok((digest, doc.subject.map(|d| d.digest)))
}

fn page_params(q: &HashMap<String, String>) -> Result<(String, i64), OciError> {
    let n = match q.get("n") {
        Some(n) => n
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| err(StatusCode::BAD_REQUEST, "PAGINATION_NUMBER_INVALID", format!("n={n}")))?,
        None => 1000,
    };
    Ok((q.get("last").cloned().unwrap_or_default(), n.min(10_000)))
}

async fn tags(s: &AppState, repo: &str, q: &HashMap<String, String>) -> OciResult {
    check_repo(repo)?;
    if !s.repo.oci_repo_exists(repo).await? {
        return Err(err(StatusCode::NOT_FOUND, "NAME_UNKNOWN", format!("no repository {repo}")));
    }
    let (last, n) = page_params(q)?;
    let mut tags = s.repo.oci_tags(repo, &last, n + 1).await?;
    let more = tags.len() as i64 > n;
    tags.truncate(n as usize);
    let mut r = axum::Json(json!({ "name": repo, "tags": tags })).into_response();
    if more && let Some(l) = tags.last() {
        r.headers_mut().insert(
            header::LINK,
            HeaderValue::from_str(&format!("</v2/{repo}/tags/list?n={n}&last={l}>; rel=\"next\""))
                .map_err(|_| err(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", "link header"))?,
        );
    }
    Ok(r)
}

async fn catalog(s: &AppState, q: &HashMap<String, String>) -> OciResult {
    let (last, n) = page_params(q)?;
    let mut repos = s.repo.oci_catalog(&last, n + 1).await?;
    let more = repos.len() as i64 > n;
    repos.truncate(n as usize);
    let mut r = axum::Json(json!({ "repositories": repos })).into_response();
    if more && let Some(l) = repos.last() {
        r.headers_mut().insert(
            header::LINK,
            HeaderValue::from_str(&format!("</v2/_catalog?n={n}&last={l}>; rel=\"next\""))
                .map_err(|_| err(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", "link header"))?,
        );
    }
    Ok(r)
}

async fn referrers(s: &AppState, repo: &str, digest: &str, q: &HashMap<String, String>) -> OciResult {
    check_repo(repo)?;
    let d = parse_digest(digest)?;
    let filter = q.get("artifactType").map(String::as_str);
    let rows = s.repo.oci_referrers(repo, d.as_str(), filter).await?;
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
    let mut r = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, oci::INDEX_MEDIA_TYPE)],
        json!({ "schemaVersion": 2, "mediaType": oci::INDEX_MEDIA_TYPE, "manifests": manifests }).to_string(),
    )
        .into_response();
    if filter.is_some() {
        r.headers_mut().insert("oci-filters-applied", HeaderValue::from_static("artifactType"));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tags() {
        for ok in ["bpfarm/tracee-bpf", "a", "a.b/c__d", "x-y/z--w"] {
            assert!(valid_repo(ok), "{ok}");
        }
        for bad in ["", "A/b", "a//b", "-a", "a-", "a/../b", "a/b/", "a:b"] {
            assert!(!valid_repo(bad), "{bad}");
        }
        assert!(valid_tag("6.1.0-47-amd64.v0.3.0") && valid_tag("_x"));
        assert!(!valid_tag(".x") && !valid_tag("a+b") && !valid_tag(&"a".repeat(129)));
    }
}
