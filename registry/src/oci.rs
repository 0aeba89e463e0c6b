//! The OCI distribution API (`/v2/`) over the same store as `/v1`: blobs,
//! chunked and monolithic uploads with cross-repository mounts, manifests
//! by tag or digest (exact bytes, references checked), tags, catalog and
//! referrers, OCI error codes, Basic and Bearer auth with the same tokens.
//!
//! An image manifest in bpfarm's artifact format pushed here also becomes a
//! `/v1` object (and shows on the coverage page); `publish` writes the OCI
//! form of every `/v1` object (see `mirror_object`).

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bpfarm_object::{Arch, Digest, Identity, KernelFacts, ObjectMetadata, oci};
use serde_json::{Value, json};
use std::collections::HashMap;

use crate::blobs::BlobError;
use crate::repo::Scope;
use crate::routes::AppState;

/// An OCI error: status, spec code, message.
#[derive(Debug)]
pub struct OciError(StatusCode, &'static str, String);

impl IntoResponse for OciError {
    fn into_response(self) -> Response {
        let mut r = (self.0, axum::Json(json!({ "errors": [{ "code": self.1, "message": self.2, "detail": null }] })))
            .into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, "Basic realm=\"bpfarm\"".parse().expect("static header"));
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
            BlobError::Io(io) => {
                tracing::error!("blob store: {io}");
                err(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", "blob store error")
            }
        }
    }
}

type OciResult = Result<Response, OciError>;

/// The token in `Authorization: Bearer <t>` or `Basic base64(user:<t>)`.
fn credential(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(t) = v.strip_prefix("Bearer ") {
        return Some(t.trim().to_owned());
    }
    let b = v.strip_prefix("Basic ")?;
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD.decode(b.trim()).ok()?;
    let s = String::from_utf8(decoded).ok()?;
    Some(s.split_once(':').map(|(_, p)| p).unwrap_or(&s).to_owned())
}

async fn authorize(s: &AppState, headers: &HeaderMap, need: Scope) -> Result<(), OciError> {
    if need == Scope::Read && !s.settings.require_read_token {
        return Ok(());
    }
    let Some(token) = credential(headers) else {
        return Err(err(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            format!("authentication required ({} token)", need.as_str()),
        ));
    };
    match crate::tokens::scope_of(&token, &s.repo.token_hashes().await?) {
        Some(Scope::Push) => Ok(()),
        Some(Scope::Read) if need == Scope::Read => Ok(()),
        Some(Scope::Read) => Err(err(StatusCode::FORBIDDEN, "DENIED", "this token may pull, not push")),
        None => Err(err(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "unknown token")),
    }
}

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

/// `GET /v2/`: the API version check (and the auth challenge).
/// An uncredentialed ping always gets the Basic challenge, as registries
/// with auth answer it: clients learn to send credentials when they have
/// them (pushes), and pull anonymously (where allowed) when they do not.
pub async fn base(State(s): State<AppState>, headers: HeaderMap) -> OciResult {
    if credential(&headers).is_none() {
        return Err(err(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "authentication required to push; pulls may be anonymous",
        ));
    }
    authorize(&s, &headers, Scope::Read).await?;
    Ok(([("docker-distribution-api-version", "registry/2.0")], axum::Json(json!({}))).into_response())
}

/// Everything under `/v2/<name>/...`, dispatched on the path's shape (names
/// contain `/`, so this is not expressible as fixed routes).
pub async fn dispatch(
    State(s): State<AppState>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> OciResult {
    let path = uri.path().strip_prefix("/v2/").unwrap_or("");
    let mut r = if path == "_catalog" {
        catalog(&s, &headers, &q).await
    } else if let Some(repo) = path.strip_suffix("/tags/list") {
        tags(&s, repo, &headers, &q).await
    } else if let Some((repo, reference)) = path.rsplit_once("/manifests/") {
        manifest(&s, &method, repo, reference, &headers, body).await
    } else if let Some((repo, digest)) = path.rsplit_once("/referrers/") {
        referrers(&s, repo, digest, &headers, &q).await
    } else if let Some((repo, id)) = path.rsplit_once("/blobs/uploads/") {
        upload(&s, &method, repo, id, &headers, &q, body).await
    } else if let Some(repo) = path.strip_suffix("/blobs/uploads") {
        upload(&s, &method, repo, "", &headers, &q, body).await
    } else if let Some((repo, digest)) = path.rsplit_once("/blobs/") {
        blob(&s, &method, repo, digest, &headers).await
    } else {
        Err(err(StatusCode::NOT_FOUND, "NAME_UNKNOWN", format!("no such endpoint /v2/{path}")))
    };
    if let Ok(resp) = &mut r {
        resp.headers_mut().insert("docker-distribution-api-version", "registry/2.0".parse().expect("static header"));
    }
    r
}

fn check_repo(repo: &str) -> Result<(), OciError> {
    if valid_repo(repo) {
        Ok(())
    } else {
        Err(err(StatusCode::BAD_REQUEST, "NAME_INVALID", format!("invalid repository name {repo:?}")))
    }
}

async fn blob(s: &AppState, method: &Method, repo: &str, digest: &str, headers: &HeaderMap) -> OciResult {
    check_repo(repo)?;
    let d = parse_digest(digest)?;
    if *method == Method::DELETE {
        authorize(s, headers, Scope::Push).await?;
        return if s.repo.oci_unlink(repo, d.as_str()).await? {
            Ok(StatusCode::ACCEPTED.into_response())
        } else {
            Err(err(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", format!("{repo} has no blob {d}")))
        };
    }
    authorize(s, headers, Scope::Read).await?;
    if !s.repo.oci_linked(repo, d.as_str()).await? {
        return Err(err(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", format!("{repo} has no blob {d}")));
    }
    crate::routes::serve_blob(s, &d, headers, *method == Method::HEAD)
        .await
        .map_err(|e| err(e.status(), "BLOB_UNKNOWN", e.message().to_owned()))
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
    authorize(s, headers, Scope::Push).await?;
    let limit = s.settings.max_blob_bytes;
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
        getrandom::fill(&mut raw).expect("OS randomness");
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
                    return Ok(r);
                }
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
            authorize(s, headers, Scope::Read).await?;
            let m = s.repo.oci_manifest(repo, reference).await?.ok_or_else(|| {
                err(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", format!("{repo} has no manifest {reference}"))
            })?;
            let d = parse_digest(&m.digest)?;
            let bytes = if *method == Method::HEAD {
                Vec::new()
            } else {
                tokio::fs::read(s.blobs.path(&d)).await.map_err(BlobError::Io)?
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
            authorize(s, headers, Scope::Push).await?;
            if s.repo.oci_delete_manifest(repo, reference).await? {
                Ok(StatusCode::ACCEPTED.into_response())
            } else {
                Err(err(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", format!("{repo} has no manifest {reference}")))
            }
        }
        Method::PUT => {
            authorize(s, headers, Scope::Push).await?;
            let bytes = axum::body::to_bytes(body, 4 << 20).await.map_err(|e| {
                err(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "MANIFEST_INVALID",
                    format!("manifest over 4 MiB or unreadable: {e}"),
                )
            })?;
            let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            let digest = put_manifest(s, repo, reference, &bytes, &content_type).await?;
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let mut r = (
                StatusCode::CREATED,
                [
                    (header::LOCATION, format!("/v2/{repo}/manifests/{digest}")),
                    (header::HeaderName::from_static("docker-content-digest"), digest.to_string()),
                ],
                "",
            )
                .into_response();
            if let Some(subject) = v["subject"]["digest"].as_str() {
                r.headers_mut().insert(
                    "oci-subject",
                    subject.parse().map_err(|_| err(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", "bad subject"))?,
                );
            }
            Ok(r)
        }
        _ => Err(err(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", "method not allowed on a manifest")),
    }
}

/// Stores a manifest's exact bytes under `reference` (a tag, or its own
/// digest) after checking what it references is in `repo`.
pub async fn put_manifest(
    s: &AppState,
    repo: &str,
    reference: &str,
    bytes: &[u8],
    content_type: &str,
) -> Result<Digest, OciError> {
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
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| err(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", format!("not JSON: {e}")))?;
    let media_type = v["mediaType"].as_str().map(str::to_owned).unwrap_or_else(|| content_type.to_owned());
    if media_type.is_empty() {
        return Err(err(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", "no mediaType in the manifest or Content-Type"));
    }
    if !content_type.is_empty() && v["mediaType"].is_string() && content_type != media_type {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
            format!("Content-Type {content_type} differs from the manifest's mediaType {media_type}"),
        ));
    }
    // Everything it references must already be here.
    if let Some(children) = v["manifests"].as_array() {
        for c in children {
            let d = c["digest"].as_str().unwrap_or("");
            if s.repo.oci_manifest(repo, d).await?.is_none() {
                return Err(err(
                    StatusCode::BAD_REQUEST,
                    "MANIFEST_BLOB_UNKNOWN",
                    format!("the index references {d}, which {repo} does not have"),
                ));
            }
        }
    } else {
        let mut refs: Vec<&Value> = v["layers"].as_array().map(|l| l.iter().collect()).unwrap_or_default();
        if !v["config"].is_null() {
            refs.push(&v["config"]);
        }
        for r in refs {
            let d = r["digest"].as_str().unwrap_or("");
            if !s.repo.oci_linked(repo, d).await? {
                return Err(err(
                    StatusCode::BAD_REQUEST,
                    "MANIFEST_BLOB_UNKNOWN",
                    format!("the manifest references blob {d}, which {repo} does not have"),
                ));
            }
        }
    }
    s.blobs.put_bytes(bytes).await?;
    let artifact_type =
        v["artifactType"].as_str().or_else(|| v["config"]["mediaType"].as_str().filter(|_| v["manifests"].is_null()));
    let annotations = v.get("annotations").map(|a| a.to_string());
    s.repo
        .oci_put_manifest(
            repo,
            digest.as_str(),
            &media_type,
            bytes.len() as i64,
            artifact_type,
            v["subject"]["digest"].as_str(),
            annotations.as_deref(),
            tag,
            &now(),
        )
        .await?;
    // bpfarm's own artifacts also become /v1 objects.
    if v["artifactType"] == oci::ARTIFACT_TYPE && v["layers"].is_array() {
        adopt_object(s, &v).await;
    }
    Ok(digest)
}

/// Registers an artifact pushed through `/v2` as a `/v1` object (from its
/// annotations and layer), unless its identity already has another object.
async fn adopt_object(s: &AppState, v: &Value) {
    let a = &v["annotations"];
    let layer = &v["layers"][0];
    let (Some(release), Some(arch), Some(version), Some(digest), Some(size)) = (
        a[oci::ANN_RELEASE].as_str(),
        a[oci::ANN_ARCH].as_str().and_then(Arch::from_any),
        a[oci::ANN_VERSION].as_str(),
        layer["digest"].as_str(),
        layer["size"].as_u64(),
    ) else {
        tracing::warn!("a bpfarm artifact without release, arch, version or layer; not indexed");
        return;
    };
    let (Ok(identity), Ok(digest)) = (Identity::new(release, arch, version), digest.parse::<Digest>()) else {
        tracing::warn!(release, version, "a bpfarm artifact with an invalid identity; not indexed");
        return;
    };
    let meta = ObjectMetadata {
        file_name: identity.file_name(),
        identity,
        digest,
        size,
        kernel: KernelFacts::default(),
        build_mode: "unknown (pushed through OCI)".into(),
        sources: vec![],
        program_digest: Digest::of_bytes(b""),
        compiler: bpfarm_object::Compiler { clang: "unknown (pushed through OCI)".into(), llc: None },
        flags: vec![],
        built_at: String::new(),
    };
    match s.repo.insert(&meta, false, &now()).await {
        Ok(Ok(())) => {}
        Ok(Err(existing)) if existing.digest == meta.digest.as_str() => {}
        Ok(Err(existing)) => {
            tracing::warn!(release, version, held = %existing.digest, pushed = %meta.digest, "OCI push of a different object for a held identity; /v1 keeps the held one")
        }
        Err(e) => tracing::error!("indexing an OCI artifact: {e}"),
    }
}

/// Writes the OCI form of a `/v1` object into `<namespace>/tracee-bpf`:
/// the empty config, the layer link, the manifest, and the (merged) index
/// under the object's tag.
pub async fn mirror_object(s: &AppState, meta: &ObjectMetadata) -> Result<(), OciError> {
    let repo = format!("{}/{}", s.settings.oci_namespace, oci::REPOSITORY);
    let id = &meta.identity;
    let empty = s.blobs.put_bytes(oci::EMPTY_CONFIG).await?;
    s.repo.oci_link(&repo, empty.as_str()).await?;
    s.repo.oci_link(&repo, meta.digest.as_str()).await?;
    let manifest = oci::manifest(meta);
    let md =
        put_manifest(s, &repo, &Digest::of_bytes(&manifest).to_string(), &manifest, oci::MANIFEST_MEDIA_TYPE).await?;
    // The plain tag, unless another release already holds it.
    let mut tag = oci::tag(&id.kernel_release, &id.version, false);
    let existing = match s.repo.oci_manifest(&repo, &tag).await? {
        Some(m)
            if m.annotations
                .as_deref()
                .and_then(|a| serde_json::from_str::<Value>(a).ok())
                .is_some_and(|a| a[oci::ANN_RELEASE] != id.kernel_release.as_str()) =>
        {
            tag = oci::tag(&id.kernel_release, &id.version, true);
            s.repo.oci_manifest(&repo, &tag).await?
        }
        other => other,
    };
    let old = match existing {
        Some(m) => Some(tokio::fs::read(s.blobs.path(&parse_digest(&m.digest)?)).await.map_err(BlobError::Io)?),
        None => None,
    };
    let index = oci::index(&id.kernel_release, &id.version, old.as_deref(), id.arch, &md, manifest.len() as u64);
    put_manifest(s, &repo, &tag, &index, oci::INDEX_MEDIA_TYPE).await?;
    Ok(())
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

async fn tags(s: &AppState, repo: &str, headers: &HeaderMap, q: &HashMap<String, String>) -> OciResult {
    check_repo(repo)?;
    authorize(s, headers, Scope::Read).await?;
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
            format!("</v2/{repo}/tags/list?n={n}&last={l}>; rel=\"next\"").parse().expect("link header"),
        );
    }
    Ok(r)
}

async fn catalog(s: &AppState, headers: &HeaderMap, q: &HashMap<String, String>) -> OciResult {
    authorize(s, headers, Scope::Read).await?;
    let (last, n) = page_params(q)?;
    let mut repos = s.repo.oci_catalog(&last, n + 1).await?;
    let more = repos.len() as i64 > n;
    repos.truncate(n as usize);
    let mut r = axum::Json(json!({ "repositories": repos })).into_response();
    if more && let Some(l) = repos.last() {
        r.headers_mut()
            .insert(header::LINK, format!("</v2/_catalog?n={n}&last={l}>; rel=\"next\"").parse().expect("link header"));
    }
    Ok(r)
}

async fn referrers(
    s: &AppState,
    repo: &str,
    digest: &str,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
) -> OciResult {
    check_repo(repo)?;
    authorize(s, headers, Scope::Read).await?;
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
        r.headers_mut().insert("oci-filters-applied", "artifactType".parse().expect("static header"));
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
