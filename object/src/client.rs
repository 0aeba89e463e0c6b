//! The client for bpfarm registries: the `/v1` API (what the builder
//! publishes with and the agent fetches with) and the static layout any
//! plain HTTP server can serve. It runs on the shared [`Transport`], so every
//! request follows its rules (TLS, plain-http only to loopback, capped
//! bodies, headers only to the registry's origin).
//!
//! The fetch side is async (`lookup_on`, `fetch_object`, `fetch_static`) so
//! that a caller can put one deadline around a whole attempt; the rest is
//! blocking, each call bounded by the transport's timeout. Everything read
//! is checked here: metadata must name the identity asked for (the error
//! names the field), bytes must match the digest and the size.

use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::http::{Overflow, Response, Transport, TransportError};
use crate::{Digest, Hashed, Identity, ObjectMetadata};

/// Cap on metadata documents.
const MAX_METADATA: u64 = 1 << 20;
/// What a `/v1` lookup asks for (in `Accept`) to get the object itself in
/// the same answer: the body is the object's bytes, the lookup's JSON
/// document comes base64 in [`METADATA_HEADER`].
pub const OBJECT_MEDIA_TYPE: &str = crate::oci::LAYER_MEDIA_TYPE;
/// The header of a one-round-trip lookup holding its JSON document, base64.
pub const METADATA_HEADER: &str = "x-bpfarm-metadata";
/// Cap on [`METADATA_HEADER`] (a registry sends the JSON answer instead of a
/// larger one).
pub const MAX_METADATA_HEADER: usize = 128 << 10;
/// Cap on a `.sha256` file.
const MAX_SUM: u64 = 4 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The registry lacks the bytes the metadata names (code BLOB_UNKNOWN).
    #[error("{url}: the registry does not have those bytes yet")]
    BlobUnknown { url: String },
    #[error("{url}: {message}")]
    Http { url: String, status: u16, message: String },
    /// What the registry sent does not check out (digest, size, identity).
    #[error("{url}: {message}")]
    Invalid { url: String, message: String },
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{base}: no answer within {}s (--timeout)", .after.as_secs_f64())]
    Timeout { base: String, after: Duration },
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Http { status, .. } => Some(*status),
            ClientError::BlobUnknown { .. } => Some(400),
            _ => None,
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

/// What a one-round-trip `/v1` lookup ([`RegistryClient::lookup_object`])
/// brought.
#[derive(Debug, Clone)]
pub enum LookupObject {
    /// The object with its metadata, in one answer: the metadata names the
    /// identity asked for, the bytes have its size and digest.
    /// The bytes come with the digest computed as they streamed in.
    Object { metadata: Box<ObjectMetadata>, attachments: Attachments, bytes: Hashed },
    /// The lookup's answer only (a registry that does not send objects in
    /// lookups, or could not this time): fetch the bytes by digest.
    Answer(Lookup, Attachments),
}

/// An object fetched from a static layout, verified against its `.sha256`
/// (and its `.json`, when the server has one).
#[derive(Debug, Clone)]
pub struct StaticObject {
    /// With the digest computed as they streamed in.
    pub bytes: Hashed,
    pub digest: Digest,
    pub metadata: Option<ObjectMetadata>,
}

#[derive(Debug, Clone)]
pub struct RegistryClient {
    base: String,
    token: Option<String>,
    headers: Vec<(String, String)>,
    transport: Transport,
    /// Attempts per request on transport errors and 5xx (with backoff).
    attempts: u32,
    warning: Option<String>,
}

impl RegistryClient {
    /// `base` like `https://registry.internal` (a trailing `/` is fine).
    /// Plain http is refused unless the host is loopback or the transport
    /// is `--insecure` (then [`RegistryClient::warning`] says so). Proxy
    /// variables (`HTTPS_PROXY`, `NO_PROXY`, ...) are honoured.
    pub fn new(base: &str, token: Option<String>, transport: &Transport) -> Result<Self, ClientError> {
        let base = base.trim_end_matches('/').to_owned();
        let warning = transport.check_url(&base)?;
        Ok(Self { base, token, headers: Vec::new(), transport: transport.clone(), attempts: 1, warning })
    }

    /// Extra headers (e.g. a CDN's auth header), sent only to this
    /// registry's origin, never along a redirect to another.
    pub fn with_headers(mut self, headers: Vec<(String, String)>) -> Self {
        self.headers = headers;
        self
    }

    /// Retry transport errors and 5xx answers up to `attempts` times in all,
    /// backing off 200 ms, 400 ms, ... (the caller's deadline still holds).
    pub fn with_retries(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The warning to show for a plain-http registry allowed by `--insecure`.
    pub fn warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }

    fn own_headers(&self) -> Vec<(String, String)> {
        let mut h = self.headers.clone();
        if let Some(t) = &self.token {
            h.push(("Authorization".into(), format!("Bearer {t}")));
        }
        h
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET with this registry's headers and retries, the body capped.
    async fn get(&self, url: &str, cap: u64) -> Result<Response, ClientError> {
        let own = self.own_headers();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self.transport.get(url, &own, cap, Overflow::Error).await;
            let retry = match &result {
                Ok(r) => r.status >= 500,
                Err(TransportError::Request { .. }) => true,
                Err(_) => false,
            };
            if !retry || attempt >= self.attempts {
                return Ok(result?);
            }
            tokio::time::sleep(Duration::from_millis(200 << (attempt - 1).min(5))).await;
        }
    }

    fn blocking<T>(&self, fut: impl std::future::Future<Output = Result<T, ClientError>>) -> Result<T, ClientError> {
        let after = self.transport.config().timeout;
        self.transport.within(fut).unwrap_or_else(|| Err(ClientError::Timeout { base: self.base.clone(), after }))
    }

    /// Looks an identity up through the `/v1` API, narrowed by the host's
    /// `uname -v` when given, telling "no such object" from "no API here".
    /// Found metadata must be for exactly `id`.
    pub async fn lookup_on(&self, id: &Identity, uname_version: Option<&str>) -> Result<Lookup, ClientError> {
        let found = self.lookup_raw(&id.kernel_release, id.arch.uname(), &id.version, uname_version).await?;
        if let Lookup::Found(meta) = &found {
            meta.check_identity(id).map_err(|e| ClientError::Invalid {
                url: self.url("/v1/objects"),
                message: format!("its metadata does not fit this host: {e}"),
            })?;
        }
        Ok(found)
    }

    async fn lookup_raw(
        &self,
        release: &str,
        arch: &str,
        version: &str,
        uname_version: Option<&str>,
    ) -> Result<Lookup, ClientError> {
        let (url, r) = self.lookup_response(release, arch, version, uname_version).await?;
        read_lookup(url, &r)
    }

    async fn lookup_response(
        &self,
        release: &str,
        arch: &str,
        version: &str,
        uname_version: Option<&str>,
    ) -> Result<(String, Response), ClientError> {
        let mut url = self.url(&format!("/v1/objects/{}/{}/{}", encode(arch), encode(version), encode(release)));
        if let Some(v) = uname_version {
            url += &format!("?uname_version={}", encode(v));
        }
        let r = self.get(&url, MAX_METADATA).await?;
        Ok((url, r))
    }

    /// Downloads the object `meta` names: at most `meta.size` bytes (and
    /// never over the transport's object limit), which must hash to
    /// `meta.digest`.
    pub async fn fetch_object(&self, meta: &ObjectMetadata) -> Result<Hashed, ClientError> {
        let url = self.url(&format!("/v1/blobs/{}", meta.digest));
        let limit = self.transport.config().max_object_bytes;
        if meta.size > limit {
            return Err(ClientError::Invalid {
                url,
                message: format!(
                    "its metadata says {} bytes, over the {limit}-byte limit (--max-object-size)",
                    meta.size
                ),
            });
        }
        let r = self.get(&url, meta.size).await.map_err(|e| match e {
            ClientError::Transport(TransportError::TooLarge { url, .. }) => ClientError::Invalid {
                url,
                message: format!("it sent more than the {} bytes its metadata names", meta.size),
            },
            e => e,
        })?;
        if r.status != 200 {
            return Err(ClientError::Http { url, status: r.status, message: r.message() });
        }
        verify(&url, &r, &meta.digest, Some(meta.size), "the registry's digest")?;
        Ok(r.into_hashed())
    }

    /// Fetches `<base>/<version>/<arch>/<file>` with its `.sha256` (and
    /// `.json` if there) for `id`: the `.json` must name `id` and the same
    /// digest; the bytes are read up to the `.json`'s size (or the object
    /// limit) and must hash to the `.sha256`. `Ok(None)` when the layout has
    /// no such file. The three requests go out at once (the path names the
    /// object, so nothing waits for another answer); the object's body is
    /// read only after the `.sha256` and `.json` checked out, capped by them.
    pub async fn fetch_static(&self, id: &Identity) -> Result<Option<StaticObject>, ClientError> {
        let file = id.file_name();
        let base = self.url(&format!("/{}/{}/{}", encode(&id.version), id.arch.uname(), encode(&file)));
        let sum_url = format!("{base}.sha256");
        let json_url = format!("{base}.json");
        let (sum, json, object) =
            tokio::join!(self.get(&sum_url, MAX_SUM), self.get(&json_url, MAX_METADATA), self.open(&base, &[]));
        let r = sum?;
        if r.status == 404 {
            return Ok(None);
        }
        if r.status != 200 {
            return Err(ClientError::Http { url: sum_url, status: r.status, message: r.message() });
        }
        let hex = String::from_utf8_lossy(r.body()).split_whitespace().next().unwrap_or("").to_owned();
        let digest: Digest = format!("sha256:{hex}")
            .parse()
            .map_err(|e: crate::DigestError| ClientError::Invalid { url: sum_url.clone(), message: e.to_string() })?;
        let r = json?;
        let metadata = match r.status {
            200 => {
                let m: ObjectMetadata = serde_json::from_slice(r.body()).map_err(|e| ClientError::Invalid {
                    url: json_url.clone(),
                    message: format!("unreadable metadata: {e}"),
                })?;
                let invalid = |message| ClientError::Invalid { url: json_url.clone(), message };
                m.check_identity(id).map_err(|e| invalid(format!("its metadata does not fit this host: {e}")))?;
                if m.digest != digest {
                    return Err(invalid(format!("its digest is {}, the .sha256 says {digest}", m.digest)));
                }
                Some(m)
            }
            _ => None,
        };
        let limit = self.transport.config().max_object_bytes;
        let cap = match &metadata {
            Some(m) if m.size > limit => {
                return Err(ClientError::Invalid {
                    url: base,
                    message: format!(
                        "its .json says {} bytes, over the {limit}-byte limit (--max-object-size)",
                        m.size
                    ),
                });
            }
            Some(m) => m.size,
            None => limit,
        };
        let r = Transport::read_body(object?, cap, Overflow::Error).await?;
        if r.status != 200 {
            return Err(ClientError::Http {
                url: base,
                status: r.status,
                message: format!("HTTP {} for an object whose .sha256 exists", r.status),
            });
        }
        verify(&base, &r, &digest, metadata.as_ref().map(|m| m.size), "the .sha256")?;
        Ok(Some(StaticObject { bytes: r.into_hashed(), digest, metadata }))
    }

    /// The current object's metadata for an identity, if the registry has one.
    pub fn lookup(&self, release: &str, arch: &str, version: &str) -> Result<Option<ObjectMetadata>, ClientError> {
        self.blocking(async {
            Ok(match self.lookup_raw(release, arch, version, None).await? {
                Lookup::Found(meta) => Some(*meta),
                Lookup::NotFound(_) | Lookup::NoApi => None,
            })
        })
    }

    /// Downloads a blob (at most the object limit) and checks it against
    /// `digest` before returning it.
    pub fn download(&self, digest: &Digest) -> Result<Vec<u8>, ClientError> {
        self.blocking(async {
            let url = self.url(&format!("/v1/blobs/{digest}"));
            let r = self.get(&url, self.transport.config().max_object_bytes).await?;
            if r.status >= 400 {
                return Err(ClientError::Http {
                    url,
                    status: r.status,
                    message: format!("download failed (HTTP {})", r.status),
                });
            }
            verify(&url, &r, digest, None, "the digest asked for")?;
            Ok(r.into_body())
        })
    }

    /// A request with a body; 4xx/5xx become errors carrying the registry's
    /// message (BLOB_UNKNOWN is its own variant).
    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<u16, ClientError> {
        let mut headers = self.own_headers();
        headers.push(("Content-Type".into(), content_type.into()));
        let r = self.transport.send(method, url, &headers, body).await?;
        if r.status >= 400 {
            let json = serde_json::from_slice::<serde_json::Value>(r.body()).ok();
            if r.status == 400 && json.as_ref().is_some_and(|v| v["error"] == "BLOB_UNKNOWN") {
                return Err(ClientError::BlobUnknown { url: url.to_owned() });
            }
            let message = json
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("HTTP {}: {}", r.status, String::from_utf8_lossy(r.body()).trim()));
            return Err(ClientError::Http { url: url.to_owned(), status: r.status, message });
        }
        Ok(r.status)
    }

    /// Uploads the object's bytes, then its metadata. Refusals (409 for a
    /// different object under the same identity) come back as errors.
    pub fn publish(&self, meta: &ObjectMetadata, bytes: &[u8], replace: bool) -> Result<Published, ClientError> {
        self.blocking(async {
            let id = &meta.identity;
            let existing = match self.lookup_raw(&id.kernel_release, id.arch.uname(), &id.version, None).await? {
                Lookup::Found(m) => Some(m),
                _ => None,
            };
            if existing.is_some_and(|m| m.digest == meta.digest) {
                return Ok(Published::Skipped);
            }
            let obj_url = self.url(if replace { "/v1/objects?replace=true" } else { "/v1/objects" });
            let metadata = serde_json::to_vec(meta).map_err(|e| ClientError::Invalid {
                url: obj_url.clone(),
                message: format!("serializing the metadata: {e}"),
            })?;
            self.post_object(&obj_url, metadata, meta, bytes).await
        })
    }

    /// POSTs an object's metadata `body` to `obj_url`. The small metadata
    /// goes first: it is refused cleanly for a missing or read-only token (a
    /// large body could race with an early refusal and surface as a reset
    /// connection), and the object's bytes are uploaded only when the
    /// registry says it lacks them, then the metadata again.
    async fn post_object(
        &self,
        obj_url: &str,
        body: Vec<u8>,
        meta: &ObjectMetadata,
        bytes: &[u8],
    ) -> Result<Published, ClientError> {
        let post = || self.send(reqwest::Method::POST, obj_url, "application/json", body.clone());
        let status = match post().await {
            Ok(status) => status,
            Err(ClientError::BlobUnknown { .. }) => {
                let blob_url = self.url(&format!("/v1/blobs/{}", meta.digest));
                self.send(reqwest::Method::PUT, &blob_url, "application/octet-stream", bytes.to_vec()).await?;
                post().await?
            }
            Err(e) => return Err(e),
        };
        Ok(if status == 201 { Published::Published } else { Published::Skipped })
    }

    /// Publishes a kernel matrix's (release, arch) pairs under `name`, so the
    /// registry counts coverage against what exists (`PUT /v1/matrices/<name>`,
    /// push token). Replaces what the name held.
    pub fn put_matrix(&self, name: &str, kernels: &[(String, crate::Arch)]) -> Result<(), ClientError> {
        let url = self.url(&format!("/v1/matrices/{}", encode(name)));
        let kernels: Vec<serde_json::Value> =
            kernels.iter().map(|(r, a)| serde_json::json!({ "release": r, "arch": a.uname() })).collect();
        let body = serde_json::json!({ "kernels": kernels });
        self.blocking(async {
            self.send(reqwest::Method::PUT, &url, "application/json", body.to_string().into_bytes()).await?;
            Ok(())
        })
    }

    /// Tells the registry a kernel failed to build (shown on its coverage page).
    pub fn report_failure(&self, release: &str, arch: &str, version: &str, message: &str) -> Result<(), ClientError> {
        let url = self.url("/v1/failures");
        let body =
            serde_json::json!({ "kernel_release": release, "arch": arch, "version": version, "message": message });
        self.blocking(async {
            self.send(reqwest::Method::POST, &url, "application/json", body.to_string().into_bytes()).await?;
            Ok(())
        })
    }
}

/// What a signing builder sends beside an object (see `sign::attached`).
#[derive(Debug, Clone)]
pub struct SignedUpload {
    /// `<file>.sig`.
    pub signature: Vec<u8>,
    /// `<file>.intoto.jsonl`.
    pub attestation: Vec<u8>,
    /// The cosign signature of the object's OCI manifest.
    pub manifest_signature: crate::sign::ManifestSignature,
}

impl RegistryClient {
    /// `HOST[:PORT]/tracee-bpf` of this registry: the `docker-reference` a
    /// builder writes into the simple-signing payload it sends (verifiers,
    /// cosign's and bpfarm's, check the manifest digest, not this name).
    pub fn docker_reference(&self) -> String {
        let authority = self.base.split_once("://").map_or(self.base.as_str(), |(_, rest)| rest);
        let authority = authority.split('/').next().unwrap_or(authority);
        format!("{authority}/{}", crate::oci::REPOSITORY)
    }

    /// Publishes an object with its signature, provenance and manifest
    /// signature: the two small files as blobs first, then the metadata
    /// naming them, then the object's bytes if the registry lacks them.
    /// Skipped only when the registry already holds these bytes with this
    /// signature and provenance; the same object with new signatures is
    /// sent again (the registry attaches them to it).
    pub fn publish_signed(
        &self,
        meta: &ObjectMetadata,
        bytes: &[u8],
        replace: bool,
        signed: &SignedUpload,
    ) -> Result<Published, ClientError> {
        use crate::sign::{Attached, BlobRef, WireManifestSignature};
        let attached = Attached {
            signature: Some(BlobRef::of(&signed.signature)),
            attestation: Some(BlobRef::of(&signed.attestation)),
            manifest_signature: Some(WireManifestSignature::from(&signed.manifest_signature)),
        };
        self.blocking(async {
            let id = &meta.identity;
            let url = self.url(&format!(
                "/v1/objects/{}/{}/{}",
                encode(id.arch.uname()),
                encode(&id.version),
                encode(&id.kernel_release)
            ));
            let r = self.get(&url, MAX_METADATA).await?;
            if r.status == 200 {
                let held: Option<(ObjectMetadata, Attached)> =
                    serde_json::from_slice(r.body()).ok().zip(serde_json::from_slice(r.body()).ok());
                if let Some((m, a)) = held
                    && m.digest == meta.digest
                    && a.signature == attached.signature
                    && a.attestation == attached.attestation
                {
                    return Ok(Published::Skipped);
                }
            }
            for data in [&signed.signature, &signed.attestation] {
                let blob_url = self.url(&format!("/v1/blobs/{}", Digest::of_bytes(data)));
                self.send(reqwest::Method::PUT, &blob_url, "application/octet-stream", data.clone()).await?;
            }
            let obj_url = self.url(if replace { "/v1/objects?replace=true" } else { "/v1/objects" });
            let invalid = |e: serde_json::Error| ClientError::Invalid {
                url: obj_url.clone(),
                message: format!("serializing the metadata: {e}"),
            };
            let mut body = serde_json::to_value(meta).map_err(invalid)?;
            if let (Some(fields), serde_json::Value::Object(extra)) =
                (body.as_object_mut(), serde_json::to_value(&attached).map_err(invalid)?)
            {
                fields.extend(extra);
            }
            self.post_object(&obj_url, body.to_string().into_bytes(), meta, bytes).await
        })
    }
}

/// A `/v1` lookup answer: metadata, "no such object", or "no API here".
fn read_lookup(url: String, r: &Response) -> Result<Lookup, ClientError> {
    let json: Option<serde_json::Value> = serde_json::from_slice(r.body()).ok();
    match r.status {
        200 => serde_json::from_slice(r.body())
            .map(|m| Lookup::Found(Box::new(m)))
            .map_err(|e| ClientError::Invalid { url, message: format!("unreadable metadata: {e}") }),
        404 if json.as_ref().is_some_and(|j| j["error"] == "NOT_FOUND") => Ok(Lookup::NotFound(r.message())),
        404 | 405 => Ok(Lookup::NoApi),
        status => Err(ClientError::Http { url, status, message: r.message() }),
    }
}

/// The body must have `size` bytes (when known) and hash to `digest`.
fn verify(url: &str, r: &Response, digest: &Digest, size: Option<u64>, whose: &str) -> Result<(), ClientError> {
    if let Some(size) = size
        && r.body().len() as u64 != size
    {
        return Err(ClientError::Invalid {
            url: url.to_owned(),
            message: format!("received {} bytes, its metadata says {size}", r.body().len()),
        });
    }
    if r.digest() != digest {
        return Err(ClientError::Invalid {
            url: url.to_owned(),
            message: format!("received bytes hash to {}, {whose} says {digest}", r.digest()),
        });
    }
    Ok(())
}

// ---- Signatures beside objects (issue #11, agent side) ----

/// A signature or attestation blob a `/v1` answer names beside the
/// metadata (`"signature"` / `"attestation"`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct BlobRef {
    pub digest: Digest,
    pub size: u64,
}

/// The signature and attestation a `/v1` answer names, each when present.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Attachments {
    #[serde(default)]
    pub signature: Option<BlobRef>,
    #[serde(default)]
    pub attestation: Option<BlobRef>,
}

impl RegistryClient {
    /// [`RegistryClient::lookup_on`], with the signature and attestation
    /// the answer names (from the same answer). A malformed `signature` or
    /// `attestation` field is an error, never "unsigned".
    pub async fn lookup_signed(
        &self,
        id: &Identity,
        uname_version: Option<&str>,
    ) -> Result<(Lookup, Attachments), ClientError> {
        let (url, r) = self.lookup_response(&id.kernel_release, id.arch.uname(), &id.version, uname_version).await?;
        self.read_signed(id, url, &r)
    }

    /// A `/v1` lookup answer with the attachments it names; found metadata
    /// must be for exactly `id`.
    fn read_signed(&self, id: &Identity, url: String, r: &Response) -> Result<(Lookup, Attachments), ClientError> {
        let found = read_lookup(url.clone(), r)?;
        let Lookup::Found(meta) = &found else { return Ok((found, Attachments::default())) };
        meta.check_identity(id).map_err(|e| ClientError::Invalid {
            url: url.clone(),
            message: format!("its metadata does not fit this host: {e}"),
        })?;
        let attachments = serde_json::from_slice(r.body()).map_err(|e| ClientError::Invalid {
            url,
            message: format!("its signature or attestation reference is unreadable: {e}"),
        })?;
        Ok((found, attachments))
    }

    /// [`RegistryClient::lookup_signed`] and [`RegistryClient::fetch_object`]
    /// in one round trip where the registry allows it: the lookup asks for
    /// the object itself (`Accept: `[`OBJECT_MEDIA_TYPE`]), and a registry
    /// that can sends its bytes with the metadata in [`METADATA_HEADER`].
    /// The same checks as the two requests: the metadata must be for exactly
    /// `id` and within the object limit, the bytes are read up to its size
    /// (hashed as they stream in) and must match its size and digest. A
    /// registry that answers with JSON (older ones) gets the usual answer
    /// back, for the caller to fetch the bytes by digest.
    pub async fn lookup_object(&self, id: &Identity, uname_version: Option<&str>) -> Result<LookupObject, ClientError> {
        let mut url = self.url(&format!(
            "/v1/objects/{}/{}/{}",
            encode(id.arch.uname()),
            encode(&id.version),
            encode(&id.kernel_release)
        ));
        if let Some(v) = uname_version {
            url += &format!("?uname_version={}", encode(v));
        }
        let accept = format!("{OBJECT_MEDIA_TYPE}, application/json;q=0.5");
        let resp = self.open(&url, &[("Accept".into(), accept)]).await?;
        let Some(header) = resp.headers().get(METADATA_HEADER).filter(|_| resp.status().as_u16() == 200) else {
            let r = Transport::read_body(resp, MAX_METADATA, Overflow::Error).await?;
            let (found, attachments) = self.read_signed(id, url, &r)?;
            return Ok(LookupObject::Answer(found, attachments));
        };
        let invalid = |message: String| ClientError::Invalid { url: url.clone(), message };
        if header.len() > MAX_METADATA_HEADER {
            return Err(invalid(format!("its {METADATA_HEADER} header is over {MAX_METADATA_HEADER} bytes")));
        }
        let json = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(header.as_bytes())
                .map_err(|e| invalid(format!("its {METADATA_HEADER} header is not base64: {e}")))?
        };
        let meta: ObjectMetadata =
            serde_json::from_slice(&json).map_err(|e| invalid(format!("unreadable metadata: {e}")))?;
        meta.check_identity(id).map_err(|e| invalid(format!("its metadata does not fit this host: {e}")))?;
        let attachments: Attachments = serde_json::from_slice(&json)
            .map_err(|e| invalid(format!("its signature or attestation reference is unreadable: {e}")))?;
        let limit = self.transport.config().max_object_bytes;
        if meta.size > limit {
            return Err(invalid(format!(
                "its metadata says {} bytes, over the {limit}-byte limit (--max-object-size)",
                meta.size
            )));
        }
        let r = Transport::read_body(resp, meta.size, Overflow::Error).await.map_err(|e| match e {
            TransportError::TooLarge { url, .. } => ClientError::Invalid {
                url,
                message: format!("it sent more than the {} bytes its metadata names", meta.size),
            },
            e => ClientError::Transport(e),
        })?;
        verify(&url, &r, &meta.digest, Some(meta.size), "its metadata")?;
        Ok(LookupObject::Object { metadata: Box::new(meta), attachments, bytes: r.into_hashed() })
    }

    /// GET `url` with this registry's headers and `extra`, with retries on
    /// transport errors and 5xx, up to the response's headers.
    async fn open(&self, url: &str, extra: &[(String, String)]) -> Result<reqwest::Response, ClientError> {
        let mut own = self.own_headers();
        own.extend_from_slice(extra);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self.transport.open(url, &own).await;
            let retry = match &result {
                Ok(r) => r.status().is_server_error(),
                Err(TransportError::Request { .. }) => true,
                Err(_) => false,
            };
            if !retry || attempt >= self.attempts {
                return Ok(result?);
            }
            tokio::time::sleep(Duration::from_millis(200 << (attempt - 1).min(5))).await;
        }
    }

    /// A signature or attestation blob: at most `min(r.size, cap)` bytes
    /// (the transfer stops there), which must be `r.size` bytes hashing to
    /// `r.digest`.
    pub async fn fetch_attachment(&self, r: &BlobRef, cap: u64) -> Result<Vec<u8>, ClientError> {
        let url = self.url(&format!("/v1/blobs/{}", r.digest));
        if r.size > cap {
            return Err(ClientError::Invalid {
                url,
                message: format!("its metadata says {} bytes, over the {cap}-byte limit for it", r.size),
            });
        }
        let resp = self.get(&url, r.size).await.map_err(|e| match e {
            ClientError::Transport(TransportError::TooLarge { url, .. }) => {
                ClientError::Invalid { url, message: format!("it sent more than the {} bytes named", r.size) }
            }
            e => e,
        })?;
        if resp.status != 200 {
            return Err(ClientError::Http { url, status: resp.status, message: resp.message() });
        }
        verify(&url, &resp, &r.digest, Some(r.size), "the metadata")?;
        Ok(resp.into_body())
    }

    /// `<base>/<version>/<arch>/<file><suffix>` of the static layout (a
    /// `.sig` or `.intoto.jsonl`), at most `cap` bytes; `Ok(None)` on 404.
    pub async fn fetch_static_beside(
        &self,
        id: &Identity,
        suffix: &str,
        cap: u64,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let url =
            self.url(&format!("/{}/{}/{}{suffix}", encode(&id.version), id.arch.uname(), encode(&id.file_name())));
        let r = self.get(&url, cap).await.map_err(|e| match e {
            ClientError::Transport(TransportError::TooLarge { url, .. }) => {
                ClientError::Invalid { url, message: format!("it is over the {cap}-byte limit for it") }
            }
            e => e,
        })?;
        match r.status {
            200 => Ok(Some(r.into_body())),
            404 => Ok(None),
            status => Err(ClientError::Http { url, status, message: r.message() }),
        }
    }
}

/// What a path segment or query value may hold as is: RFC 3986's
/// unreserved characters. Everything else (`+` in releases, spaces and `#`
/// in `uname -v`) is percent-encoded.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

fn encode(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::encode;

    #[test]
    fn path_segments_and_query_values_are_encoded() {
        assert_eq!(encode("6.12.117+deb12-amd64"), "6.12.117%2Bdeb12-amd64");
        assert_eq!(
            encode("#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-01-01)"),
            "%231%20SMP%20PREEMPT_DYNAMIC%20Debian%206.1.192-2%20%282026-01-01%29"
        );
        assert_eq!(encode("../x/y?z"), "..%2Fx%2Fy%3Fz");
        assert_eq!(encode("é"), "%C3%A9");
    }
}
