//! Who may do what. One middleware in front of every route (`Guard`)
//! decides from the method and path alone which scope a request needs and
//! checks the caller's token before any handler runs — so before any
//! request body is read: an unauthenticated upload gets its 401 while it
//! is still sending, and a route added later is covered with nothing to
//! remember. The same service counts the request (`metrics`) and holds
//! its answer to the face's conventions (`face`), so a request passes one
//! middleware, not three.
//!
//! What it let through travels with the request as a typed `Caller`
//! (a request extension): handlers take it, or `Pusher`, the proof that
//! the caller may write, as an extractor — so a handler that writes states
//! the scope it needs in its signature and cannot mistake what it got.
//!
//! Rules: `GET`/`HEAD` need a read token only under `--require-read-token`
//! (anonymous otherwise); every other method, and every `/v2` upload
//! endpoint, needs a push token. A token that is presented is always
//! checked, even on an anonymous read. `GET /v2/` without credentials
//! answers the Basic challenge that OCI clients expect. `/healthz` is open.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::response::Response;
use tower::{Layer, Service, ServiceExt};

use crate::error::Error;
use crate::face::{self, Face};
use crate::metrics::Tally;
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

/// Who the middleware let through: the scope of the token presented, or
/// anonymous. Inserted into every request that passed; an extractor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    scope: Option<Scope>,
}

impl Caller {
    pub const ANONYMOUS: Caller = Caller { scope: None };

    /// The scope of the caller's token; `None` for an anonymous caller.
    pub fn scope(self) -> Option<Scope> {
        self.scope
    }

    /// `Ok` only for a caller holding a push token.
    pub fn require_push(self) -> Result<(), Error> {
        match self.scope {
            Some(Scope::Push) => Ok(()),
            Some(Scope::Read) => Err(Error::ReadOnly),
            None => Err(Error::Unauthenticated(Scope::Push)),
        }
    }
}

/// Reads the `Caller` the middleware inserted. A request that never
/// passed the middleware is refused (500), never taken as anonymous.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        match parts.extensions.get::<Caller>() {
            Some(c) => Ok(*c),
            None => Err(Face::of(parts.uri.path()).render(Error::Unchecked(parts.uri.path().to_owned()))),
        }
    }
}

/// Proof that the caller holds a push token: what a handler that writes
/// takes, so it cannot run for anyone else.
#[derive(Debug, Clone, Copy)]
pub struct Pusher;

impl<S: Send + Sync> FromRequestParts<S> for Pusher {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.require_push().map(|()| Pusher).map_err(|e| Face::of(parts.uri.path()).render(e))
    }
}

/// What the request's headers decide before the index is read.
enum Check {
    /// Decided: no credential was presented, or none is needed.
    Done(Result<Caller, Error>),
    /// A token was presented: its scope is read from the index.
    Token(String),
}

/// The decision for `need` that needs no token read: all of it for an
/// anonymous caller (every plain download), or the token to check.
fn check(s: &AppState, headers: &HeaderMap, need: Need) -> Check {
    if need == Need::Nothing {
        return Check::Done(Ok(Caller::ANONYMOUS));
    }
    match credential(headers) {
        Some(token) => Check::Token(token),
        None => Check::Done(grant(s, need, None)),
    }
}

/// Who a presented token makes the caller, for `need`.
async fn check_token(s: &AppState, token: &str, need: Need) -> Result<Caller, Error> {
    let hashes = s.repo.token_hashes().await?;
    // Read from a file the index's path no longer names: a token
    // revoked in the new one would pass. Fail closed.
    if s.repo.index_replaced() {
        return Err(Error::IndexReplaced);
    }
    match crate::tokens::scope_of(token, &hashes) {
        Some(scope) => grant(s, need, Some(scope)),
        None => Err(Error::UnknownToken),
    }
}

/// The rules: what `need` grants a caller holding `granted` (`None`: no
/// token presented).
fn grant(s: &AppState, need: Need, granted: Option<Scope>) -> Result<Caller, Error> {
    match (need, granted) {
        (Need::Nothing, _) => Ok(Caller::ANONYMOUS),
        (Need::Ping, None) => Err(Error::Challenge),
        (Need::Ping, scope) => Ok(Caller { scope }),
        (Need::Scope(Scope::Read), None) if !s.settings.require_read_token => Ok(Caller::ANONYMOUS),
        (Need::Scope(want), None) => Err(Error::Unauthenticated(want)),
        (Need::Scope(Scope::Push), Some(Scope::Read)) => Err(Error::ReadOnly),
        (Need::Scope(_), scope) => Ok(Caller { scope }),
    }
}

/// The middleware in front of every route, outermost first: count the
/// request (`metrics`), hold its answer to the face's conventions
/// (`face`), and authorise it, recording the `Caller`, before any handler
/// (or body) runs. One hand-written service rather than three
/// `from_fn` middlewares, each of which boxed its future, boxed the
/// inner service and cloned it per request: a request that presents no
/// token (every plain download) passes it with no boxed future and no
/// cloned, boxed inner service (the `Caller` extension it records is its
/// one allocation); one that does adds one boxed future, for the token
/// read.
#[derive(Debug, Clone)]
pub struct GuardLayer {
    state: AppState,
}

impl GuardLayer {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard { inner, state: self.state.clone() }
    }
}

/// The service `GuardLayer` puts around a route.
#[derive(Debug, Clone)]
pub struct Guard<S> {
    inner: S,
    state: AppState,
}

impl<S> Service<Request> for Guard<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + Unpin + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Guarded<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let face = Face::of(req.uri().path());
        let tally = self.state.metrics().start(&req);
        let need = need(req.method(), req.uri().path());
        let step = match check(&self.state, req.headers(), need) {
            Check::Done(Ok(caller)) => {
                req.extensions_mut().insert(caller);
                Step::Inner(self.inner.call(req))
            }
            Check::Done(Err(e)) => Step::Answer(std::future::ready(face.render(e))),
            Check::Token(token) => {
                // The service made ready is the one called; a clone
                // stays for the next request.
                let fresh = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, fresh);
                let state = self.state.clone();
                Step::Boxed(Box::pin(async move {
                    match check_token(&state, &token, need).await {
                        Ok(caller) => {
                            req.extensions_mut().insert(caller);
                            match ready.oneshot(req).await {
                                Ok(resp) => resp,
                                Err(never) => match never {},
                            }
                        }
                        Err(e) => face.render(e),
                    }
                }))
            }
        };
        Guarded { step, face, tally }
    }
}

type BoxedResponse = Pin<Box<dyn Future<Output = Response> + Send>>;

/// Where a guarded request is.
enum Step<F> {
    /// In the route's handler.
    Inner(F),
    /// Answered by the guard itself (refused).
    Answer(std::future::Ready<Response>),
    /// Reading the token, then in the handler.
    Boxed(BoxedResponse),
    /// A plain-text error being answered again in the face's JSON.
    Json(BoxedResponse),
}

/// The response future of `Guard`.
pub struct Guarded<F> {
    step: Step<F>,
    face: Face,
    tally: Tally,
}

impl<F> std::fmt::Debug for Guarded<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded").field("face", &self.face).field("tally", &self.tally).finish_non_exhaustive()
    }
}

impl<F> Future for Guarded<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            let resp = match &mut this.step {
                Step::Inner(f) => match ready!(Pin::new(f).poll(cx)) {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                },
                Step::Answer(resp) => ready!(Pin::new(resp).poll(cx)),
                Step::Boxed(f) => ready!(f.as_mut().poll(cx)),
                Step::Json(f) => {
                    let mut resp = ready!(f.as_mut().poll(cx));
                    this.face.stamp(&mut resp);
                    return Poll::Ready(Ok(this.tally.finish(resp)));
                }
            };
            if face::needs_json(&resp) {
                this.step = Step::Json(Box::pin(face::as_json(this.face, resp)));
                continue;
            }
            let mut resp = resp;
            this.face.stamp(&mut resp);
            return Poll::Ready(Ok(this.tally.finish(resp)));
        }
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

    #[test]
    fn only_a_push_token_may_write() {
        assert!(Caller { scope: Some(Scope::Push) }.require_push().is_ok());
        assert!(matches!(Caller { scope: Some(Scope::Read) }.require_push(), Err(Error::ReadOnly)));
        assert!(matches!(Caller::ANONYMOUS.require_push(), Err(Error::Unauthenticated(Scope::Push))));
    }

    /// The extractors are a second line: a route that somehow missed the
    /// middleware refuses instead of running as anonymous, and a write
    /// handler refuses a read token in its face's format.
    #[tokio::test]
    async fn handlers_see_the_callers_scope_and_refuse_without_one() {
        use axum::body::Body;
        use axum::http::{Request, StatusCode};
        use tower::ServiceExt;

        let app = |caller: Option<Caller>| {
            let r = axum::Router::new()
                .route("/v1/write", axum::routing::post(|_: Pusher| async { "wrote" }))
                .route("/v2/who", axum::routing::get(|c: Caller| async move { format!("{:?}", c.scope()) }));
            match caller {
                Some(c) => r.layer(axum::Extension(c)),
                None => r,
            }
        };
        let call = |caller: Option<Caller>, method: &'static str, uri: &'static str| async move {
            let req = Request::builder().method(method).uri(uri).body(Body::empty()).unwrap();
            let resp = app(caller).oneshot(req).await.unwrap();
            let status = resp.status();
            let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
            (status, String::from_utf8_lossy(&body).into_owned())
        };
        let (s, body) = call(None, "POST", "/v1/write").await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        let (s, body) = call(None, "GET", "/v2/who").await;
        assert!(s == StatusCode::INTERNAL_SERVER_ERROR && body.contains("\"errors\""), "{s} {body}");
        let (s, body) = call(Some(Caller { scope: Some(Scope::Read) }), "POST", "/v1/write").await;
        assert!(s == StatusCode::FORBIDDEN && body.contains("\"DENIED\""), "{s} {body}");
        let (s, _) = call(Some(Caller::ANONYMOUS), "POST", "/v1/write").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(
            call(Some(Caller { scope: Some(Scope::Push) }), "POST", "/v1/write").await,
            (StatusCode::OK, "wrote".into())
        );
        assert_eq!(call(Some(Caller { scope: Some(Scope::Read) }), "GET", "/v2/who").await.1, "Some(Read)");
    }
}
