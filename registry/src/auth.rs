//! Who may do what. One middleware in front of every route decides from
//! the method and path alone which scope a request needs and checks the
//! caller's token before any handler runs — so before any request body is
//! read: an unauthenticated upload gets its 401 while it is still sending,
//! and a route added later is covered with nothing to remember.
//!
//! Rules: `GET`/`HEAD` need a read token only under `--require-read-token`
//! (anonymous otherwise); every other method, and every `/v2` upload
//! endpoint, needs a push token. A token that is presented is always
//! checked, even on an anonymous read. `GET /v2/` without credentials
//! answers the Basic challenge that OCI clients expect. `/healthz` is open.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::Error;
use crate::face::Face;
use crate::repo::Scope;
use crate::state::AppState;

/// What a request needs before it reaches its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Nothing,
    Scope(Scope),
    /// `GET /v2/`: credentials must be presented (the version check doubles
    /// as the login check), read scope suffices.
    Ping,
}

/// The scope a request needs, from its method and path.
pub fn need(method: &Method, path: &str) -> Need {
    if path == "/healthz" {
        return Need::Nothing;
    }
    if path == "/v2/" || path == "/v2" {
        return Need::Ping;
    }
    if path.starts_with("/v2/") && (path.contains("/blobs/uploads/") || path.ends_with("/blobs/uploads")) {
        return Need::Scope(Scope::Push);
    }
    if *method == Method::GET || *method == Method::HEAD { Need::Scope(Scope::Read) } else { Need::Scope(Scope::Push) }
}

/// The token in `Authorization: Bearer <t>` or `Basic base64(user:<t>)`;
/// scheme names are case-insensitive (RFC 9110 §11.1).
pub fn credential(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then(|| rest.to_owned());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
    let s = String::from_utf8(decoded).ok()?;
    // Clients without credentials answer the Basic challenge with empty
    // ones (containers/image sends `:`): that is no credential.
    let token = s.split_once(':').map(|(_, p)| p).unwrap_or(&s);
    (!token.is_empty()).then(|| token.to_owned())
}

/// Checks the request's credentials against `need`; returns the scope the
/// presented token grants (`None`: anonymous and allowed).
pub async fn authorize(s: &AppState, headers: &HeaderMap, need: Need) -> Result<Option<Scope>, Error> {
    if need == Need::Nothing {
        return Ok(None);
    }
    let granted = match credential(headers) {
        Some(token) => match crate::tokens::scope_of(&token, &s.repo.token_hashes().await?) {
            Some(scope) => Some(scope),
            None => return Err(Error::UnknownToken),
        },
        None => None,
    };
    match (need, granted) {
        (Need::Nothing, _) => Ok(None),
        (Need::Ping, None) => Err(Error::Challenge),
        (Need::Ping, g) => Ok(g),
        (Need::Scope(Scope::Read), None) if !s.settings.require_read_token => Ok(None),
        (Need::Scope(want), None) => Err(Error::Unauthenticated(want)),
        (Need::Scope(Scope::Push), Some(Scope::Read)) => Err(Error::ReadOnly),
        (Need::Scope(_), g) => Ok(g),
    }
}

/// The middleware: authorise, or answer in the face's error format.
pub async fn require(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let need = need(req.method(), req.uri().path());
    match authorize(&s, req.headers(), need).await {
        Ok(_) => next.run(req).await,
        Err(e) => Face::of(req.uri().path()).render(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_are_case_insensitive() {
        let mut h = HeaderMap::new();
        for v in ["Bearer tok", "bearer tok", "BEARER  tok ", "Basic dTp0b2s=", "basic dTp0b2s=", "BASIC dTp0b2s="] {
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            assert_eq!(credential(&h).as_deref(), Some("tok"), "{v}");
        }
        for v in ["Bearer", "Bearertok", "Digest tok", "Basic !!!", "Basic Og=="] {
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            assert_eq!(credential(&h), None, "{v}");
        }
    }

    #[test]
    fn needs_follow_method_and_path() {
        assert_eq!(need(&Method::GET, "/healthz"), Need::Nothing);
        assert_eq!(need(&Method::GET, "/v2/"), Need::Ping);
        assert_eq!(need(&Method::GET, "/v1/objects"), Need::Scope(Scope::Read));
        assert_eq!(need(&Method::HEAD, "/v2/a/blobs/sha256:x"), Need::Scope(Scope::Read));
        assert_eq!(need(&Method::GET, "/v2/a/blobs/uploads/abc"), Need::Scope(Scope::Push));
        assert_eq!(need(&Method::POST, "/v1/objects"), Need::Scope(Scope::Push));
        assert_eq!(need(&Method::from_bytes(b"BREW").unwrap(), "/v1/objects"), Need::Scope(Scope::Push));
    }
}
