//! The one HTTP/TLS stack every bpfarm client uses (`/v1`, static mirrors,
//! OCI registries): reqwest with rustls, the system's roots plus any
//! `--ca-cert`, and the rules that make talking to a registry safe for a
//! root agent:
//!
//! - plain `http://` only to loopback, or anywhere with an explicit
//!   `--insecure` (the caller prints the warning [`Transport::check_url`]
//!   returns);
//! - every body is read with a cap (the size the metadata or descriptor
//!   names, else a fixed limit), hashed while it streams in, never read to
//!   its end unbounded;
//! - redirects are followed by hand: at most [`MAX_REDIRECTS`], never from
//!   https down to http, and a registry's own headers (token,
//!   `--registry-header`) go only to that registry's origin;
//! - one deadline bounds a whole attempt (connect, headers, body, retries):
//!   [`Transport::within`]; large downloads ([`Transport::open_blocking`])
//!   are bounded by their cap and an idle deadline per read instead.
//!
//! A Debian archive is the one peer spoken to over plain http anywhere
//! ([`Transport::for_signed_content`]): everything read from it is checked
//! against a gpgv-verified `InRelease` or a pinned sha256.

use std::future::Future;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use reqwest::header::{CONTENT_RANGE, HeaderMap, HeaderName, HeaderValue, LOCATION, RANGE};
use sha2::{Digest as _, Sha256};

use crate::{Digest, Hashed};

/// Redirects followed per request.
pub const MAX_REDIRECTS: usize = 5;
/// Default cap on an object's bytes, whatever its metadata claims.
pub const DEFAULT_MAX_OBJECT_BYTES: u64 = 64 << 20;
/// Cap on error bodies kept for messages (the rest is not read).
const MAX_ERROR_BODY: u64 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("reading the CA certificate {path}: {source}")]
    CaRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA certificate {path}: {message}")]
    CaInvalid { path: PathBuf, message: String },
    #[error("setting up HTTPS: {0}")]
    Client(String),
    #[error("starting the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("{url:?} is not a valid URL: {reason}")]
    Url { url: String, reason: String },
    #[error(
        "{url}: plain http:// to a host that is not loopback; use https:// (add a private CA with --ca-cert), or pass --insecure to allow it"
    )]
    PlainHttp { url: String },
    #[error("{url}: {message}")]
    Request { url: String, message: String },
    #[error("{url}: the response is larger than {limit} bytes; stopped reading")]
    TooLarge { url: String, limit: u64 },
    #[error("{url}: redirected to {to}: {reason}")]
    Redirect { url: String, to: String, reason: &'static str },
    #[error("{url}: no data for {}s; gave up", .after.as_secs_f64())]
    Stalled { url: String, after: Duration },
    #[error("{url}: asked for bytes from {offset}, the server answered {answer:?}; refused")]
    Range { url: String, offset: u64, answer: String },
}

/// How clients talk to registries. One per process; cheap to clone.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// PEM files with CAs to trust besides the system's roots (`--ca-cert`).
    pub ca_certs: Vec<PathBuf>,
    /// Allow plain `http://` to hosts other than loopback (`--insecure`).
    pub insecure: bool,
    /// Deadline of one attempt against one registry, as a whole.
    pub timeout: Duration,
    /// No object larger than this is read, whatever its metadata says.
    pub max_object_bytes: u64,
    /// Which thread drives the connections.
    pub driver: Driver,
}

/// Which thread drives the transport's connections (their sockets, timers
/// and hyper's connection tasks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Driver {
    /// A worker thread of its own: connections keep moving while callers
    /// do other work between calls (a download written to disk read by
    /// read), and callers on many threads share it (the builder's download
    /// workers).
    #[default]
    Worker,
    /// The thread blocked in the call, and only while it is: no worker
    /// thread is started and no answer is handed across threads. For a
    /// caller that makes one request at a time and reads each answer whole
    /// (the agent: on loopback this took 0.3–0.7 ms off a 672 KB fetch,
    /// `bench/agent.py`). Other threads may call too; one of them drives at
    /// a time.
    Caller,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            ca_certs: Vec::new(),
            insecure: false,
            timeout: Duration::from_secs(30),
            max_object_bytes: DEFAULT_MAX_OBJECT_BYTES,
            driver: Driver::Worker,
        }
    }
}

/// What to do when a body is longer than its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// The response is refused.
    Error,
    /// The first `cap` bytes are kept (error bodies, for their message).
    Truncate,
}

/// A response read within its cap.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// The URL that answered (after redirects).
    pub url: String,
    pub headers: HeaderMap,
    /// The body and its sha256, computed as it streamed in (private, so
    /// the digest is always the body's).
    body: Hashed,
}

impl Response {
    pub fn body(&self) -> &[u8] {
        self.body.bytes()
    }

    /// sha256 of the body, computed as it streamed in.
    pub fn digest(&self) -> &Digest {
        self.body.digest()
    }

    pub fn into_body(self) -> Vec<u8> {
        self.body.into_bytes()
    }

    /// The body with the digest computed as it streamed in.
    pub fn into_hashed(self) -> Hashed {
        self.body
    }

    /// The `message` of a JSON error body, else `HTTP <status>`.
    pub fn message(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(self.body.bytes())
            .ok()
            .and_then(|j| j["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("HTTP {}", self.status))
    }
}

/// Where plain `http://` may be spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlainHttp {
    /// Loopback only; anywhere else with `--insecure` (and a warning).
    Loopback,
    /// Anywhere, without a warning: what crosses it is checked against
    /// signed data, so the transport adds nothing to trust.
    Anywhere,
}

/// The shared client: reqwest (rustls), its runtime, and the rules above.
/// Clones (and [`Transport::for_signed_content`]) share one connection
/// pool and one runtime.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
    plain_http: PlainHttp,
}

struct Inner {
    /// For `http://`: no TLS roots loaded (loading the system's takes
    /// milliseconds, a loopback fetch's whole budget).
    plain: reqwest::Client,
    /// For `https://`: built on first use, with the system's roots and
    /// `--ca-cert`s (an error building it is kept and returned each time).
    tls: std::sync::OnceLock<Result<reqwest::Client, String>>,
    certs: Vec<reqwest::Certificate>,
    /// Owns the runtime; taken only when the last clone is dropped.
    rt: Option<tokio::runtime::Runtime>,
    /// What futures run on.
    handle: tokio::runtime::Handle,
    config: TransportConfig,
    /// The `--ca-cert` files' PEM bytes, for clients built elsewhere (OCI).
    #[cfg_attr(not(feature = "oci"), allow(dead_code))]
    ca_pems: Vec<Vec<u8>>,
}

impl Drop for Inner {
    /// The runtime's worker is told to stop and not waited for: nothing
    /// the transport hands out outlives it (every caller blocks on its own
    /// future), and joining the idle worker cost a loopback fetch a
    /// noticeable share of its budget.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("config", &self.inner.config)
            .field("plain_http", &self.plain_http)
            .finish_non_exhaustive()
    }
}

/// A response whose body is read as it arrives (downloads too large to
/// hold, resumable ones), from blocking code: each read waits at most the
/// idle deadline for data.
pub struct BlockingBody {
    transport: Transport,
    resp: reqwest::Response,
    url: String,
    idle: Duration,
    pending: bytes::Bytes,
    /// The server honoured the `Range` asked for (206 from that offset).
    pub resumed: bool,
    /// `Content-Length` of this response, when sent.
    pub length: Option<u64>,
}

impl std::fmt::Debug for BlockingBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingBody")
            .field("url", &self.url)
            .field("resumed", &self.resumed)
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

impl Read for BlockingBody {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pending.is_empty() {
            let next = self
                .transport
                .within_for(self.idle, self.resp.chunk())
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        TransportError::Stalled { url: self.url.clone(), after: self.idle },
                    )
                })?
                .map_err(|e| {
                    std::io::Error::other(TransportError::Request { url: self.url.clone(), message: chain(&e) })
                })?;
            match next {
                Some(b) => self.pending = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending.split_to(n));
        Ok(n)
    }
}

/// An error and every cause under it, on one line (reqwest's own message
/// hides the TLS or connect failure in its sources).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s += ": ";
            s += &m;
        }
        cur = c.source();
    }
    s
}

/// The settings both clients share.
fn client_builder(config: &TransportConfig) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(config.timeout)
        // bpfarm-registry closes idle keep-alive connections after 10 s
        // (its --header-timeout); drop ours first, so a request is never
        // sent on a connection the server is closing.
        .pool_idle_timeout(std::time::Duration::from_secs(5))
        .user_agent(concat!("bpfarm/", env!("CARGO_PKG_VERSION")))
}

/// Whether `host` (no port) is a loopback name or address.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `scheme://host:port` of a URL, for same-origin decisions.
fn origin(u: &Url) -> (String, Option<String>, Option<u16>) {
    (u.scheme().to_owned(), u.host_str().map(str::to_owned), u.port_or_known_default())
}

impl Transport {
    pub fn new(config: TransportConfig) -> Result<Self, TransportError> {
        let mut ca_pems = Vec::new();
        let mut certs = Vec::new();
        for path in &config.ca_certs {
            let pem = std::fs::read(path).map_err(|source| TransportError::CaRead { path: path.clone(), source })?;
            let found = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| TransportError::CaInvalid { path: path.clone(), message: chain(&e) })?;
            if found.is_empty() {
                return Err(TransportError::CaInvalid {
                    path: path.clone(),
                    message: "no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into(),
                });
            }
            certs.extend(found);
            ca_pems.push(pem);
        }
        let plain =
            client_builder(&config).tls_certs_only([]).build().map_err(|e| TransportError::Client(chain(&e)))?;
        // With a worker, it drives the connections and callers on any
        // thread (the builder's download workers) block on their own
        // futures; without one, the caller in `block_on` drives them.
        let rt = match config.driver {
            Driver::Worker => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("bpfarm-http")
                .enable_all()
                .build(),
            Driver::Caller => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        }
        .map_err(TransportError::Runtime)?;
        let handle = rt.handle().clone();
        let inner = Inner { plain, tls: std::sync::OnceLock::new(), certs, rt: Some(rt), handle, config, ca_pems };
        Ok(Self { inner: Arc::new(inner), plain_http: PlainHttp::Loopback })
    }

    /// The client for `u`'s scheme: the TLS one (built now if this is the
    /// first https request) or the plain one.
    fn client_for(&self, u: &Url) -> Result<&reqwest::Client, TransportError> {
        if u.scheme() != "https" {
            return Ok(&self.inner.plain);
        }
        self.inner
            .tls
            .get_or_init(|| {
                client_builder(&self.inner.config)
                    .tls_certs_merge(self.inner.certs.iter().cloned())
                    .build()
                    .map_err(|e| chain(&e))
            })
            .as_ref()
            .map_err(|e| TransportError::Client(e.clone()))
    }

    /// The same client for a peer whose every byte is checked against
    /// signed data (a Debian archive: `InRelease` verified by gpgv, indices
    /// and packages by the sha256 it or a pinned matrix names): plain http
    /// to any host, without a warning. Redirects from https down to http are
    /// still refused.
    pub fn for_signed_content(&self) -> Transport {
        Transport { inner: self.inner.clone(), plain_http: PlainHttp::Anywhere }
    }

    pub fn config(&self) -> &TransportConfig {
        &self.inner.config
    }

    #[cfg_attr(not(feature = "oci"), allow(dead_code))]
    pub(crate) fn ca_pems(&self) -> &[Vec<u8>] {
        &self.inner.ca_pems
    }

    /// Checks a registry URL against the plain-http rule. `Ok(Some(warning))`
    /// when it is plain http to a non-loopback host and `--insecure` allows it.
    pub fn check_url(&self, url: &str) -> Result<Option<String>, TransportError> {
        let u = Url::parse(url).map_err(|e| TransportError::Url { url: url.to_owned(), reason: e.to_string() })?;
        self.check_parsed(&u)
    }

    fn check_parsed(&self, u: &Url) -> Result<Option<String>, TransportError> {
        let url = u.as_str().to_owned();
        let host = u.host_str().unwrap_or("");
        match u.scheme() {
            "https" => Ok(None),
            "http" if is_loopback_host(host) || self.plain_http == PlainHttp::Anywhere => Ok(None),
            "http" if self.inner.config.insecure => Ok(Some(format!(
                "{url}: plain http to {host} (--insecure): anyone on the path can read and change what is fetched; only the digest check stands between them and this host"
            ))),
            "http" => Err(TransportError::PlainHttp { url }),
            other => Err(TransportError::Url { url, reason: format!("scheme {other:?} is not http or https") }),
        }
    }

    /// The plain-http rule for a `host[:port]` spoken to without a scheme
    /// (OCI): plain http for loopback, and for anything with `--insecure`
    /// (then with the warning to print); https otherwise.
    pub fn plain_http_for_host(&self, host_port: &str) -> (bool, Option<String>) {
        let host = match host_port.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host_port,
        };
        if is_loopback_host(host) {
            (true, None)
        } else if self.inner.config.insecure {
            (
                true,
                Some(format!(
                    "{host_port}: plain http (--insecure): anyone on the path can read and change what is fetched; only the digest check stands between them and this host"
                )),
            )
        } else {
            (false, None)
        }
    }

    /// Runs `fut` to completion on this transport's runtime.
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        match &self.inner.rt {
            // Only the runtime itself drives its IO and timers from the
            // calling thread (a current-thread runtime's handle cannot).
            Some(rt) if self.inner.config.driver == Driver::Caller => rt.block_on(fut),
            _ => self.inner.handle.block_on(fut),
        }
    }

    /// Runs `fut` within the attempt deadline (`timeout` of the config):
    /// `None` when the deadline passed first.
    pub fn within<F: Future>(&self, fut: F) -> Option<F::Output> {
        self.within_for(self.inner.config.timeout, fut)
    }

    /// Like [`Transport::within`], with another deadline.
    pub fn within_for<F: Future>(&self, deadline: Duration, fut: F) -> Option<F::Output> {
        self.block_on(async { tokio::time::timeout(deadline, fut).await.ok() })
    }

    /// GET `url` following redirects by hand. `own` headers are sent only
    /// while the request stays on `url`'s origin. A body over `cap` is an
    /// error or truncated per `overflow`; an error status reads at most
    /// 64 KiB.
    pub async fn get(
        &self,
        url: &str,
        own: &[(String, String)],
        cap: u64,
        overflow: Overflow,
    ) -> Result<Response, TransportError> {
        let resp = self.follow(url, own, None).await?;
        Self::read_body(resp, cap, overflow).await
    }

    /// GET `url` as [`Transport::get`] does, handing the response back as
    /// soon as its headers are in, so the caller can pick the body's cap
    /// from them; read the body with [`Transport::read_body`].
    pub async fn open(&self, url: &str, own: &[(String, String)]) -> Result<reqwest::Response, TransportError> {
        self.follow(url, own, None).await
    }

    /// Reads the body of a response from [`Transport::open`], hashing as it
    /// streams: at most `cap` bytes (per `overflow`) for a success status,
    /// at most 64 KiB (truncated) for an error status.
    pub async fn read_body(resp: reqwest::Response, cap: u64, overflow: Overflow) -> Result<Response, TransportError> {
        let (cap, overflow) =
            if resp.status().is_success() { (cap, overflow) } else { (cap.min(MAX_ERROR_BODY), Overflow::Truncate) };
        read_capped(resp, cap, overflow).await
    }

    /// GET `url` from byte `offset` (a `Range` request when it is not 0),
    /// following redirects as [`Transport::get`] does, for reading from
    /// blocking code as the body arrives. `Ok(None)` when the server says
    /// the file is not there (404, 410); other error statuses are errors. A
    /// partial answer (206) that does not start at `offset` is refused
    /// rather than spliced; a full answer (200) to a range request comes
    /// back with `resumed` false. Waiting for the answer, and each read of
    /// the body, is bounded by the transport's timeout.
    pub fn open_blocking(&self, url: &str, offset: u64) -> Result<Option<BlockingBody>, TransportError> {
        let idle = self.inner.config.timeout;
        let range = (offset > 0).then(|| format!("bytes={offset}-"));
        let resp = self
            .within_for(idle, self.follow(url, &[], range.as_deref()))
            .ok_or_else(|| TransportError::Stalled { url: url.to_owned(), after: idle })??;
        let status = resp.status();
        let at = resp.url().to_string();
        if matches!(status.as_u16(), 404 | 410) {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(TransportError::Request { url: at, message: format!("HTTP {}", status.as_u16()) });
        }
        let resumed = status.as_u16() == 206;
        if resumed {
            let answer = resp.headers().get(CONTENT_RANGE).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            if offset == 0 || answer.as_deref().and_then(content_range_start) != Some(offset) {
                return Err(TransportError::Range { url: at, offset, answer: answer.unwrap_or_default() });
            }
        }
        let length = resp.content_length();
        Ok(Some(BlockingBody {
            transport: self.clone(),
            resp,
            url: at,
            idle,
            pending: bytes::Bytes::new(),
            resumed,
            length,
        }))
    }

    /// Sends a GET (with `range`, when given) and follows redirects by hand.
    async fn follow(
        &self,
        url: &str,
        own: &[(String, String)],
        range: Option<&str>,
    ) -> Result<reqwest::Response, TransportError> {
        let start = Url::parse(url).map_err(|e| TransportError::Url { url: url.to_owned(), reason: e.to_string() })?;
        self.check_parsed(&start)?;
        let home = origin(&start);
        let mut own_headers = HeaderMap::new();
        for (k, v) in own {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| TransportError::Request { url: url.to_owned(), message: format!("header {k:?}: {e}") })?;
            let value = HeaderValue::from_str(v)
                .map_err(|e| TransportError::Request { url: url.to_owned(), message: format!("header {k:?}: {e}") })?;
            own_headers.append(name, value);
        }
        let mut current = start.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self.client_for(&current)?.get(current.clone());
            if origin(&current) == home {
                req = req.headers(own_headers.clone());
            }
            if let Some(r) = range {
                req = req.header(RANGE, r);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| TransportError::Request { url: current.to_string(), message: chain(&e) })?;
            let status = resp.status();
            if status.is_redirection()
                && let Some(loc) = resp.headers().get(LOCATION)
            {
                let to =
                    loc.to_str().ok().and_then(|l| current.join(l).ok()).ok_or_else(|| TransportError::Redirect {
                        url: current.to_string(),
                        to: String::from_utf8_lossy(loc.as_bytes()).into_owned(),
                        reason: "not a valid URL",
                    })?;
                if current.scheme() == "https" && to.scheme() != "https" {
                    return Err(TransportError::Redirect {
                        url: current.to_string(),
                        to: to.to_string(),
                        reason: "a redirect from https to plain http is refused",
                    });
                }
                self.check_parsed(&to).map_err(|e| TransportError::Redirect {
                    url: current.to_string(),
                    to: to.to_string(),
                    reason: match e {
                        TransportError::PlainHttp { .. } => {
                            "plain http to a host that is not loopback (see --insecure)"
                        }
                        _ => "not an http(s) URL",
                    },
                })?;
                current = to;
                continue;
            }
            return Ok(resp);
        }
        Err(TransportError::Redirect { url: url.to_owned(), to: current.to_string(), reason: "more than 5 redirects" })
    }

    /// A request with a body (publishing): no redirects are followed.
    pub async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<Response, TransportError> {
        let u = Url::parse(url).map_err(|e| TransportError::Url { url: url.to_owned(), reason: e.to_string() })?;
        self.check_parsed(&u)?;
        let mut req = self.client_for(&u)?.request(method, u).body(body);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req.send().await.map_err(|e| TransportError::Request { url: url.to_owned(), message: chain(&e) })?;
        read_capped(resp, MAX_ERROR_BODY, Overflow::Truncate).await
    }
}

/// The first byte a `Content-Range: bytes <first>-<last>/<total>` answer
/// holds.
fn content_range_start(v: &str) -> Option<u64> {
    let (first, _) = v.trim().strip_prefix("bytes ")?.split_once('-')?;
    first.parse().ok()
}

/// Reads a body chunk by chunk, hashing as it goes, stopping at `cap`.
async fn read_capped(mut resp: reqwest::Response, cap: u64, overflow: Overflow) -> Result<Response, TransportError> {
    let url = resp.url().to_string();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    if overflow == Overflow::Error && resp.content_length().is_some_and(|n| n > cap) {
        return Err(TransportError::TooLarge { url, limit: cap });
    }
    let mut body = Vec::with_capacity(resp.content_length().unwrap_or(0).min(cap).min(1 << 20) as usize);
    let mut hasher = Sha256::new();
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => return Err(TransportError::Request { url, message: chain(&e) }),
        };
        let room = cap.saturating_sub(body.len() as u64);
        if chunk.len() as u64 > room {
            if overflow == Overflow::Error {
                return Err(TransportError::TooLarge { url, limit: cap });
            }
            let keep = &chunk[..room as usize];
            hasher.update(keep);
            body.extend_from_slice(keep);
            break;
        }
        hasher.update(&chunk);
        body.extend_from_slice(&chunk);
    }
    Ok(Response { status, url, headers, body: Hashed::streamed(body, hasher) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback_unless_insecure() {
        let t = Transport::new(TransportConfig::default()).unwrap();
        for ok in ["http://127.0.0.1:8080", "http://localhost/x", "http://[::1]:1/", "https://registry.example"] {
            assert!(matches!(t.check_url(ok), Ok(None)), "{ok}");
        }
        assert!(matches!(t.check_url("http://registry.example"), Err(TransportError::PlainHttp { .. })));
        assert!(matches!(t.check_url("ftp://x/"), Err(TransportError::Url { .. })));
        assert!(matches!(t.check_url("not a url"), Err(TransportError::Url { .. })));
        let insecure = Transport::new(TransportConfig { insecure: true, ..Default::default() }).unwrap();
        assert!(insecure.check_url("http://registry.example").unwrap().unwrap().contains("--insecure"));
        assert_eq!(t.plain_http_for_host("127.0.0.1:5000"), (true, None));
        assert_eq!(t.plain_http_for_host("registry.example:5000"), (false, None));
        assert!(insecure.plain_http_for_host("registry.example").1.is_some());
    }

    #[test]
    fn signed_content_may_come_over_plain_http_from_anywhere() {
        let t = Transport::new(TransportConfig::default()).unwrap();
        let archive = t.for_signed_content();
        assert!(matches!(archive.check_url("http://deb.example/debian"), Ok(None)));
        assert!(matches!(t.check_url("http://deb.example/debian"), Err(TransportError::PlainHttp { .. })));
        assert!(matches!(archive.check_url("ftp://deb.example/"), Err(TransportError::Url { .. })));
    }

    #[test]
    fn content_ranges_are_read_exactly() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes 0-0/1"), Some(0));
        assert_eq!(content_range_start("bytes */200"), None);
        assert_eq!(content_range_start("items 1-2/3"), None);
        assert_eq!(content_range_start("bytes 1x-2/3"), None);
    }

    /// A one-shot HTTP server on loopback: answers the first request with
    /// `head` and `body`, then keeps the connection open for `hold`.
    fn serve_once(
        head: &'static str,
        body: &'static [u8],
        hold: Duration,
    ) -> (String, std::thread::JoinHandle<String>) {
        use std::io::{BufRead, BufReader, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/f", l.local_addr().unwrap());
        let t = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut request = String::new();
            let mut r = BufReader::new(c.try_clone().unwrap());
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                request += &line;
            }
            c.write_all(head.as_bytes()).unwrap();
            c.write_all(body).unwrap();
            c.flush().unwrap();
            std::thread::sleep(hold);
            request
        });
        (url, t)
    }

    fn quick_with(driver: Driver) -> Transport {
        Transport::new(TransportConfig { timeout: Duration::from_secs(1), driver, ..Default::default() }).unwrap()
    }

    fn quick() -> Transport {
        quick_with(Driver::Worker)
    }

    #[test]
    fn a_caller_driven_transport_serves_callers_on_several_threads_and_keeps_its_deadline() {
        let t = quick_with(Driver::Caller);
        let servers: Vec<_> = (0..3)
            .map(|_| serve_once("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", b"0123456789", Duration::ZERO))
            .collect();
        let got: Vec<_> = std::thread::scope(|s| {
            let calls: Vec<_> = servers
                .iter()
                .map(|(url, _)| {
                    let t = t.clone();
                    s.spawn(move || t.within(t.get(url, &[], 100, Overflow::Error)).unwrap().unwrap().into_hashed())
                })
                .collect();
            calls.into_iter().map(|c| c.join().unwrap()).collect()
        });
        for (h, (_, server)) in got.iter().zip(servers) {
            assert_eq!(h.bytes(), b"0123456789");
            assert_eq!(h.digest(), &Digest::of_bytes(b"0123456789"));
            server.join().unwrap();
        }
        // A peer that answers half and stalls: the deadline, driven by the
        // caller, still ends the wait.
        let (url, server) =
            serve_once("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"0123456789", Duration::from_secs(3));
        let start = std::time::Instant::now();
        assert!(t.within(t.get(&url, &[], 1000, Overflow::Error)).is_none(), "the stalled answer must time out");
        assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
        server.join().unwrap();
    }

    #[test]
    fn a_download_that_stalls_gives_up_after_the_idle_deadline() {
        let (url, t) =
            serve_once("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"0123456789", Duration::from_secs(3));
        let start = std::time::Instant::now();
        let mut body = quick().open_blocking(&url, 0).unwrap().unwrap();
        let mut got = Vec::new();
        let e = body.read_to_end(&mut got).unwrap_err();
        assert_eq!(got, b"0123456789", "what arrived before the stall is kept");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("no data for 1s"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
        t.join().unwrap();
    }

    #[test]
    fn a_partial_answer_from_another_offset_is_refused() {
        let (url, t) = serve_once(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-9/10\r\nContent-Length: 10\r\n\r\n",
            b"0123456789",
            Duration::ZERO,
        );
        let e = quick().open_blocking(&url, 5).unwrap_err();
        assert!(matches!(&e, TransportError::Range { offset: 5, answer, .. } if answer == "bytes 0-9/10"), "{e}");
        assert!(t.join().unwrap().to_ascii_lowercase().contains("range: bytes=5-"));

        let (url, t) = serve_once(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 5-9/10\r\nContent-Length: 5\r\n\r\n",
            b"56789",
            Duration::ZERO,
        );
        let mut body = quick().open_blocking(&url, 5).unwrap().unwrap();
        assert!(body.resumed);
        let mut got = Vec::new();
        body.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"56789");
        t.join().unwrap();

        let (url, t) = serve_once("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", b"", Duration::ZERO);
        assert!(quick().open_blocking(&url, 0).unwrap().is_none());
        t.join().unwrap();
    }

    #[test]
    fn ca_files_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = Transport::new(TransportConfig { ca_certs: vec![junk], ..Default::default() }).unwrap_err();
        assert!(matches!(e, TransportError::CaInvalid { .. }), "{e}");
        let missing = dir.path().join("missing.pem");
        let e = Transport::new(TransportConfig { ca_certs: vec![missing], ..Default::default() }).unwrap_err();
        assert!(matches!(e, TransportError::CaRead { .. }), "{e}");
    }
}
