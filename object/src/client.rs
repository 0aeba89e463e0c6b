//! A blocking client for bpfarm's registry API (`/v1`): what the builder
//! publishes with and the agent will fetch with. Every request has a
//! timeout; errors name the URL and carry the registry's message.

use std::time::Duration;

use crate::{Digest, ObjectMetadata};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The registry lacks the bytes the metadata names (code BLOB_UNKNOWN).
    #[error("{url}: the registry does not have those bytes yet")]
    BlobUnknown { url: String },
    #[error("{url}: {message}")]
    Http { url: String, status: u16, message: String },
    #[error("{url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: ureq::Error,
    },
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Http { status, .. } => Some(*status),
            ClientError::Transport { .. } => None,
            ClientError::BlobUnknown { .. } => Some(400),
        }
    }
}

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// New on the registry.
    Published,
    /// The registry already held these exact bytes for the identity.
    Skipped,
}

/// What a registry said about an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(Box<ObjectMetadata>),
    /// A bpfarm registry answered: it has no such object.
    NotFound(String),
    /// The server does not speak bpfarm's `/v1` API (a plain static server).
    NoApi,
}

/// An object fetched from a static layout, verified against its `.sha256`.
#[derive(Debug, Clone)]
pub struct StaticObject {
    pub bytes: Vec<u8>,
    pub digest: Digest,
    /// The `.json` beside it, when the server has one.
    pub metadata: Option<ObjectMetadata>,
}

#[derive(Debug, Clone)]
pub struct RegistryClient {
    base: String,
    token: Option<String>,
    headers: Vec<(String, String)>,
    agent: ureq::Agent,
    /// Attempts per request on transport errors and 5xx (with backoff).
    attempts: u32,
    deadline: Option<std::time::Instant>,
}

impl RegistryClient {
    /// `base` like `http://127.0.0.1:8080` (a trailing `/` is fine). Proxy
    /// variables (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`) are
    /// honoured.
    pub fn new(base: &str, token: Option<String>, timeout: Duration) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .proxy(ureq::Proxy::try_from_env())
            .build()
            .into();
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            headers: Vec::new(),
            agent,
            attempts: 1,
            deadline: None,
        }
    }

    /// Extra headers on every request (e.g. a CDN's auth header).
    pub fn with_headers(mut self, headers: Vec<(String, String)>) -> Self {
        self.headers = headers;
        self
    }

    /// Retry transport errors and 5xx answers up to `attempts` times in all,
    /// backing off 200 ms, 400 ms, …, never past `deadline`.
    pub fn with_retries(mut self, attempts: u32, deadline: std::time::Instant) -> Self {
        self.attempts = attempts.max(1);
        self.deadline = Some(deadline);
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The request with this client's token and extra headers.
    fn authed<B>(&self, mut req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        if let Some(t) = &self.token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        req
    }

    /// GET with auth, extra headers and retries; returns status and body.
    fn get_bytes(&self, url: &str) -> Result<(u16, Vec<u8>), ClientError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self.authed(self.agent.get(url)).call().and_then(|mut r| {
                let status = r.status().as_u16();
                r.body_mut().with_config().limit(256 << 20).read_to_vec().map(|b| (status, b))
            });
            let retry = match &result {
                Ok((status, _)) => *status >= 500,
                Err(_) => true,
            };
            let backoff = Duration::from_millis(200 << (attempt - 1).min(5));
            let time_left = self.deadline.is_none_or(|d| std::time::Instant::now() + backoff < d);
            if !retry || attempt >= self.attempts || !time_left {
                return result.map_err(|source| ClientError::Transport { url: url.to_owned(), source });
            }
            std::thread::sleep(backoff);
        }
    }

    /// Looks an identity up through the `/v1` API, narrowed by the host's
    /// `uname -v` when given, telling "no such object" from "no API here".
    pub fn lookup_on(
        &self,
        release: &str,
        arch: &str,
        version: &str,
        uname_version: Option<&str>,
    ) -> Result<Lookup, ClientError> {
        let mut url = self.url(&format!("/v1/objects/{arch}/{version}/{}", encode(release)));
        if let Some(v) = uname_version {
            url += &format!("?uname_version={}", encode(v));
        }
        let (status, body) = self.get_bytes(&url)?;
        let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        let message = |j: Option<serde_json::Value>| j.and_then(|j| j["message"].as_str().map(str::to_owned));
        match status {
            200 => serde_json::from_slice(&body).map(|m| Lookup::Found(Box::new(m))).map_err(|e| ClientError::Http {
                url,
                status,
                message: format!("unreadable metadata: {e}"),
            }),
            404 if json.as_ref().is_some_and(|j| j["error"] == "NOT_FOUND") => {
                Ok(Lookup::NotFound(message(json).unwrap_or_default()))
            }
            404 | 405 => Ok(Lookup::NoApi),
            _ => Err(ClientError::Http {
                url,
                status,
                message: message(json).unwrap_or_else(|| format!("HTTP {status}")),
            }),
        }
    }

    /// Fetches `<base>/<version>/<arch>/<file>` and its `.sha256` (and
    /// `.json` if there), and checks the bytes against the `.sha256`.
    /// `Ok(None)` when the layout has no such file.
    pub fn fetch_static(
        &self,
        version: &str,
        arch: &str,
        file_name: &str,
    ) -> Result<Option<StaticObject>, ClientError> {
        let base = self.url(&format!("/{version}/{arch}/{}", encode(file_name)));
        let sum_url = format!("{base}.sha256");
        let (status, sum) = self.get_bytes(&sum_url)?;
        if status == 404 {
            return Ok(None);
        }
        if status != 200 {
            return Err(ClientError::Http { url: sum_url, status, message: format!("HTTP {status}") });
        }
        let hex = String::from_utf8_lossy(&sum).split_whitespace().next().unwrap_or("").to_owned();
        let digest: Digest = format!("sha256:{hex}").parse().map_err(|e: crate::DigestError| ClientError::Http {
            url: sum_url,
            status,
            message: e.to_string(),
        })?;
        let (status, bytes) = self.get_bytes(&base)?;
        if status != 200 {
            return Err(ClientError::Http {
                url: base,
                status,
                message: format!("HTTP {status} for an object whose .sha256 exists"),
            });
        }
        let actual = Digest::of_bytes(&bytes);
        if actual != digest {
            return Err(ClientError::Http {
                url: base,
                status,
                message: format!("received bytes hash to {actual}, the .sha256 says {digest}"),
            });
        }
        let json_url = format!("{base}.json");
        let metadata = match self.get_bytes(&json_url)? {
            (200, b) => Some(serde_json::from_slice(&b).map_err(|e| ClientError::Http {
                url: json_url,
                status: 200,
                message: format!("unreadable metadata: {e}"),
            })?),
            _ => None,
        };
        Ok(Some(StaticObject { bytes, digest, metadata }))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn check(
        &self,
        url: &str,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, String), ClientError> {
        let mut resp = resp.map_err(|source| ClientError::Transport { url: url.to_owned(), source })?;
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        if status >= 400 {
            let json = serde_json::from_str::<serde_json::Value>(&body).ok();
            if status == 400 && json.as_ref().is_some_and(|v| v["error"] == "BLOB_UNKNOWN") {
                return Err(ClientError::BlobUnknown { url: url.to_owned() });
            }
            let message = json
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("HTTP {status}: {}", body.trim()));
            return Err(ClientError::Http { url: url.to_owned(), status, message });
        }
        Ok((status, body))
    }

    /// The current object's metadata for an identity, if the registry has one.
    pub fn lookup(&self, release: &str, arch: &str, version: &str) -> Result<Option<ObjectMetadata>, ClientError> {
        Ok(match self.lookup_on(release, arch, version, None)? {
            Lookup::Found(meta) => Some(*meta),
            Lookup::NotFound(_) | Lookup::NoApi => None,
        })
    }

    /// Uploads the object's bytes, then its metadata. Refusals (409 for a
    /// different object under the same identity) come back as errors.
    pub fn publish(&self, meta: &ObjectMetadata, bytes: &[u8], replace: bool) -> Result<Published, ClientError> {
        if self
            .lookup(&meta.identity.kernel_release, meta.identity.arch.uname(), &meta.identity.version)?
            .is_some_and(|m| m.digest == meta.digest)
        {
            return Ok(Published::Skipped);
        }
        let obj_url = self.url(if replace { "/v1/objects?replace=true" } else { "/v1/objects" });
        let metadata = serde_json::to_vec(meta).expect("metadata serializes");
        let post = || {
            let post = self.authed(self.agent.post(&obj_url)).header("Content-Type", "application/json");
            self.check(&obj_url, post.send(&metadata[..]))
        };
        // The small metadata goes first: it is refused cleanly for a missing
        // or read-only token (a large body could race with an early refusal
        // and surface as a reset connection), and the blob is uploaded only
        // when the registry says it lacks those bytes.
        let status = match post() {
            Ok((status, _)) => status,
            Err(ClientError::BlobUnknown { .. }) => {
                let blob_url = self.url(&format!("/v1/blobs/{}", meta.digest));
                let put = self.authed(self.agent.put(&blob_url)).header("Content-Type", "application/octet-stream");
                self.check(&blob_url, put.send(bytes))?;
                post()?.0
            }
            Err(e) => return Err(e),
        };
        Ok(if status == 201 { Published::Published } else { Published::Skipped })
    }

    /// Tells the registry a kernel failed to build (shown on its coverage page).
    pub fn report_failure(&self, release: &str, arch: &str, version: &str, message: &str) -> Result<(), ClientError> {
        let url = self.url("/v1/failures");
        let post = self.authed(self.agent.post(&url)).header("Content-Type", "application/json");
        let body =
            serde_json::json!({ "kernel_release": release, "arch": arch, "version": version, "message": message });
        self.check(&url, post.send(body.to_string()))?;
        Ok(())
    }

    /// Downloads a blob and checks it against `digest` before returning it.
    pub fn download(&self, digest: &Digest) -> Result<Vec<u8>, ClientError> {
        let url = self.url(&format!("/v1/blobs/{digest}"));
        let (status, bytes) = self.get_bytes(&url)?;
        if status >= 400 {
            return Err(ClientError::Http { url, status, message: format!("download failed (HTTP {status})") });
        }
        let actual = Digest::of_bytes(&bytes);
        if &actual != digest {
            return Err(ClientError::Http {
                url,
                status: 200,
                message: format!("received bytes hash to {actual}, expected {digest}"),
            });
        }
        Ok(bytes)
    }
}

/// Percent-encodes what a path segment or query value cannot hold as is
/// (`+` in releases, spaces and `#` in `uname -v`).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
