//! The two API faces' conventions, in one place: how an `Error` is
//! answered on each face (`V1`: `{error, message}`; `V2`: OCI's
//! `{errors: [{code, message, detail}]}`, spec codes), and the middleware
//! that holds every response to them: `/v2` responses all carry
//! `Docker-Distribution-API-Version: registry/2.0` (clients recognise a v2
//! registry by it, on a 401 too), and every error — including axum's own
//! rejections (a bad query string, an unknown route, a wrong method), which
//! are plain text — is answered in the JSON error format of its face.
//!
//! The services decide what went wrong; only this module decides how each
//! face says it.

use axum::Json;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use crate::error::{BodyKind, Error};

/// Which API a path belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Face {
    /// `/v1`, the page, the static layout, health and metrics.
    V1,
    /// The OCI distribution API.
    V2,
}

impl Face {
    pub fn of(path: &str) -> Face {
        if path == "/v2" || path.starts_with("/v2/") { Face::V2 } else { Face::V1 }
    }

    /// `e` in this face's format.
    pub fn render(self, e: Error) -> Response {
        match self {
            Face::V1 => V1(e).into_response(),
            Face::V2 => V2(e).into_response(),
        }
    }
}

pub const API_VERSION_HEADER: &str = "docker-distribution-api-version";
/// The header's name and value, built at compile time: inserting them
/// allocates nothing (a name given as `&str` is copied per response).
static API_VERSION_NAME: HeaderName = HeaderName::from_static(API_VERSION_HEADER);
static API_VERSION_VALUE: HeaderValue = HeaderValue::from_static("registry/2.0");

/// An error answered on `/v1` (and the page, the static layout, metrics).
#[derive(Debug)]
pub struct V1(pub Error);

/// An error answered on the OCI API.
#[derive(Debug)]
pub struct V2(pub Error);

impl<E> From<E> for V1
where
    Error: From<E>,
{
    fn from(e: E) -> Self {
        V1(Error::from(e))
    }
}

impl<E> From<E> for V2
where
    Error: From<E>,
{
    fn from(e: E) -> Self {
        V2(Error::from(e))
    }
}

/// The registry's own failures are logged in full and answered as
/// "`<what>` error", never with their detail.
fn internal(e: &Error) -> Option<String> {
    let what = e.internal()?;
    tracing::error!(what, "{e}");
    Some(format!("{what} error"))
}

/// How `e` is answered: its status, the same on both faces, and its code
/// on `/v1` and on the OCI API (the spec's codes).
fn answer(e: &Error) -> (StatusCode, &'static str, &'static str) {
    use StatusCode as S;
    match e {
        Error::Digest(_) | Error::DigestMismatch { .. } | Error::ManifestDigest { .. } => {
            (S::BAD_REQUEST, "DIGEST_INVALID", "DIGEST_INVALID")
        }
        Error::TooLarge { what: BodyKind::Manifest, .. } => (S::PAYLOAD_TOO_LARGE, "TOO_LARGE", "MANIFEST_INVALID"),
        Error::TooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "TOO_LARGE", "SIZE_INVALID"),
        Error::Body(_) => (S::BAD_REQUEST, "BAD_REQUEST", "BLOB_UPLOAD_INVALID"),
        Error::BadRequest(_) => (S::BAD_REQUEST, "BAD_REQUEST", "UNSUPPORTED"),
        Error::RepoName(_) => (S::BAD_REQUEST, "BAD_REQUEST", "NAME_INVALID"),
        Error::Tag(_) => (S::BAD_REQUEST, "BAD_REQUEST", "TAG_INVALID"),
        Error::PageSize(_) => (S::BAD_REQUEST, "BAD_REQUEST", "PAGINATION_NUMBER_INVALID"),
        Error::Manifest(_) => (S::BAD_REQUEST, "BAD_REQUEST", "MANIFEST_INVALID"),
        Error::MissingBlobRef { .. } | Error::MissingManifestRef { .. } => {
            (S::BAD_REQUEST, "BAD_REQUEST", "MANIFEST_BLOB_UNKNOWN")
        }
        Error::Method(_) => (S::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED", "UNSUPPORTED"),
        Error::Identity(_) | Error::FileName { .. } => (S::BAD_REQUEST, "IDENTITY_INVALID", "MANIFEST_INVALID"),
        Error::ObjectBlobMissing(_) => (S::BAD_REQUEST, "BLOB_UNKNOWN", "MANIFEST_BLOB_UNKNOWN"),
        Error::Size { .. } | Error::BlobRefSize { .. } | Error::ManifestRefSize { .. } => {
            (S::BAD_REQUEST, "SIZE_INVALID", "SIZE_INVALID")
        }
        Error::Conflict { .. } | Error::SignaturesDiffer { .. } | Error::WouldDropSignature { .. } => {
            (S::CONFLICT, "CONFLICT", "MANIFEST_INVALID")
        }
        Error::Unsigned(_) => (S::FORBIDDEN, "SIGNATURE_REQUIRED", "DENIED"),
        Error::SignatureRefused { .. } => (S::FORBIDDEN, "SIGNATURE_INVALID", "DENIED"),
        Error::SignatureForm { .. } => (S::BAD_REQUEST, "SIGNATURE_MALFORMED", "MANIFEST_INVALID"),
        Error::SignatureBlobMissing { .. } => (S::BAD_REQUEST, "SIGNATURE_BLOB_UNKNOWN", "MANIFEST_BLOB_UNKNOWN"),
        Error::HeldByV1 { .. } | Error::SignaturesHeld { .. } => (S::CONFLICT, "DENIED", "DENIED"),
        Error::Ambiguous(_) => (S::CONFLICT, "AMBIGUOUS", "UNSUPPORTED"),
        Error::TooMany { .. } => (S::CONFLICT, "TOO_MANY", "DENIED"),
        Error::BlobMissing(_) | Error::NotInRepo { .. } => (S::NOT_FOUND, "BLOB_UNKNOWN", "BLOB_UNKNOWN"),
        Error::ManifestUnknown { .. } => (S::NOT_FOUND, "NOT_FOUND", "MANIFEST_UNKNOWN"),
        Error::UploadUnknown { .. } => (S::NOT_FOUND, "NOT_FOUND", "BLOB_UPLOAD_UNKNOWN"),
        Error::RepoUnknown(_) | Error::NotFound(_) => (S::NOT_FOUND, "NOT_FOUND", "NAME_UNKNOWN"),
        Error::Unauthenticated(_) | Error::UnknownToken | Error::Challenge => {
            (S::UNAUTHORIZED, "UNAUTHORIZED", "UNAUTHORIZED")
        }
        Error::ReadOnly => (S::FORBIDDEN, "DENIED", "DENIED"),
        Error::Unchecked(_)
        | Error::IndexReplaced
        | Error::Index(_)
        | Error::Store(_)
        | Error::CorruptRow(_)
        | Error::Io { .. }
        | Error::Symlink(_)
        | Error::Serialize { .. }
        | Error::Join(_)
        | Error::Metrics(_)
        | Error::Randomness(_) => (S::INTERNAL_SERVER_ERROR, "INTERNAL", "UNKNOWN"),
    }
}

impl IntoResponse for V1 {
    fn into_response(self) -> Response {
        let e = self.0;
        let (status, code, _) = answer(&e);
        let message = match &e {
            Error::ObjectBlobMissing(d) => format!("upload the object to /v1/blobs/{d} first"),
            e => internal(e).unwrap_or_else(|| e.to_string()),
        };
        v1_body(status, code, message)
    }
}

impl IntoResponse for V2 {
    fn into_response(self) -> Response {
        let e = self.0;
        let (status, _, code) = answer(&e);
        let message = match &e {
            // The client's own words for what went wrong with its body.
            Error::Body(m) => m.clone(),
            Error::Conflict { .. } => format!("{e} (through /v1: POST /v1/objects?replace=true)"),
            e => internal(e).unwrap_or_else(|| e.to_string()),
        };
        v2_body(status, code, message)
    }
}

/// A `/v1` error body: `{error, message}`; a 401 names the Bearer scheme.
pub fn v1_body(status: StatusCode, code: &str, message: String) -> Response {
    #[derive(Serialize)]
    struct Body<'a> {
        error: &'a str,
        message: &'a str,
    }
    let mut r = (status, Json(Body { error: code, message: &message })).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"bpfarm\""));
    }
    r
}

/// An OCI error body: `{errors: [{code, message, detail}]}`; a 401 names
/// the Basic scheme OCI clients answer.
pub fn v2_body(status: StatusCode, code: &str, message: String) -> Response {
    let mut r =
        (status, Json(json!({ "errors": [{ "code": code, "message": message, "detail": null }] }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"bpfarm\""));
    }
    r
}

fn is_json(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// An error answered in plain text (axum's rejections): `as_json` must
/// answer it again in its face's format.
pub fn needs_json(resp: &Response) -> bool {
    let status = resp.status();
    (status.is_client_error() || status.is_server_error()) && !is_json(resp)
}

impl Face {
    /// The headers every response of this face carries.
    pub fn stamp(self, resp: &mut Response) {
        if self == Face::V2 {
            resp.headers_mut().insert(&API_VERSION_NAME, API_VERSION_VALUE.clone());
        }
    }
}

/// The middleware, for the `--metrics-listen` router (the API's router
/// applies the same conventions in `auth::Guard`).
pub async fn conventions(req: Request, next: Next) -> Response {
    let face = Face::of(req.uri().path());
    let resp = next.run(req).await;
    let mut resp = if needs_json(&resp) { as_json(face, resp).await } else { resp };
    face.stamp(&mut resp);
    resp
}

/// Re-renders a non-JSON error response in the face's format, keeping its
/// status and headers (`Allow`, `WWW-Authenticate`, ...).
pub async fn as_json(face: Face, resp: Response) -> Response {
    let (parts, body) = resp.into_parts();
    let status = parts.status;
    // axum's rejection texts are short; anything longer is cut.
    let text = axum::body::to_bytes(body, 16 << 10).await.map(|b| String::from_utf8_lossy(&b).trim().to_owned());
    let message = match text {
        Ok(t) if !t.is_empty() => t,
        _ => status.canonical_reason().unwrap_or("error").to_owned(),
    };
    let mut fresh = match face {
        Face::V2 => v2_body(status, v2_code(status), message),
        Face::V1 => v1_body(status, v1_code(status), message),
    };
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            fresh.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fresh
}

fn v1_code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "NOT_FOUND",
        StatusCode::METHOD_NOT_ALLOWED => "METHOD_NOT_ALLOWED",
        StatusCode::PAYLOAD_TOO_LARGE => "TOO_LARGE",
        StatusCode::UNAUTHORIZED => "UNAUTHORIZED",
        StatusCode::FORBIDDEN => "DENIED",
        s if s.is_client_error() => "BAD_REQUEST",
        _ => "INTERNAL",
    }
}

fn v2_code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "NAME_UNKNOWN",
        StatusCode::METHOD_NOT_ALLOWED => "UNSUPPORTED",
        StatusCode::PAYLOAD_TOO_LARGE => "SIZE_INVALID",
        StatusCode::UNAUTHORIZED => "UNAUTHORIZED",
        StatusCode::FORBIDDEN => "DENIED",
        StatusCode::TOO_MANY_REQUESTS => "TOOMANYREQUESTS",
        s if s.is_client_error() => "UNSUPPORTED",
        _ => "UNKNOWN",
    }
}

/// The router's fallback: an unknown path, in the face's format.
pub async fn not_found(req: Request<Body>) -> Response {
    let path = req.uri().path().to_owned();
    match Face::of(&path) {
        Face::V2 => v2_body(StatusCode::NOT_FOUND, "NAME_UNKNOWN", format!("no such endpoint {path}")),
        Face::V1 => v1_body(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no such path {path}")),
    }
}
