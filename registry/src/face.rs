//! The two API faces' response conventions, applied to every response in
//! one place: `/v2` responses all carry `Docker-Distribution-API-Version:
//! registry/2.0` (clients recognise a v2 registry by it, on a 401 too), and
//! every error — including axum's own rejections (a bad query string, an
//! unknown route, a wrong method), which are plain text — is answered in
//! the JSON error format of the face it is on.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::oci::OciError;
use crate::routes::ApiError;

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
}

pub const API_VERSION_HEADER: &str = "docker-distribution-api-version";

fn is_json(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// The middleware.
pub async fn conventions(req: Request, next: Next) -> Response {
    let face = Face::of(req.uri().path());
    let resp = next.run(req).await;
    let status = resp.status();
    let mut resp = if (status.is_client_error() || status.is_server_error()) && !is_json(&resp) {
        as_json(face, resp).await
    } else {
        resp
    };
    if face == Face::V2 {
        resp.headers_mut().insert(API_VERSION_HEADER, HeaderValue::from_static("registry/2.0"));
    }
    resp
}

/// Re-renders a non-JSON error response in the face's format, keeping its
/// status and headers (`Allow`, `WWW-Authenticate`, ...).
async fn as_json(face: Face, resp: Response) -> Response {
    let (parts, body) = resp.into_parts();
    let status = parts.status;
    // axum's rejection texts are short; anything longer is cut.
    let text = axum::body::to_bytes(body, 16 << 10).await.map(|b| String::from_utf8_lossy(&b).trim().to_owned());
    let message = match text {
        Ok(t) if !t.is_empty() => t,
        _ => status.canonical_reason().unwrap_or("error").to_owned(),
    };
    let mut fresh = match face {
        Face::V2 => OciError::new(status, v2_code(status), message).into_response(),
        Face::V1 => ApiError::new(status, v1_code(status), message).into_response(),
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
        Face::V2 => {
            OciError::new(StatusCode::NOT_FOUND, "NAME_UNKNOWN", format!("no such endpoint {path}")).into_response()
        }
        Face::V1 => ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no such path {path}")).into_response(),
    }
}
