//! Moving objects through any OCI registry, in the format of docs/contracts.md:
//! publish (with `oci-client`) merges the per-arch index (read, merge,
//! write: publishing one arch never drops another); fetch resolves the tag,
//! picks this arch, checks the annotated release exactly and verifies the
//! layer.
//!
//! Reads go through the shared [`Transport`]: every manifest and layer is
//! read with a cap (manifests 4 MiB, the layer at most the size its
//! descriptor names and never over the object limit), hashed as it streams,
//! and a fetch is bounded by one deadline. `oci-client` is used for what it
//! is made for: the registry's token dance and pushes. Nothing here panics
//! on user input or registry data: a bad target, reference or descriptor is
//! an [`OciError`].

use base64::Engine;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde_json::Value;

use crate::client::Published;
use crate::http::{Overflow, Response, Transport, TransportError};
use crate::{Digest, Identity, ObjectMetadata, Origin, oci};

/// Cap on a manifest or index (the limit registries commonly enforce).
const MAX_MANIFEST: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{target:?} is not a usable OCI target (oci://HOST[:PORT]/NAMESPACE): {reason}")]
    Target { target: String, reason: String },
    #[error("{reference}: {source}")]
    Registry {
        reference: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("{reference}: {message}")]
    Invalid { reference: String, message: String },
    /// The registry refused the credentials (or their absence): HTTP 401/403.
    #[error("{reference}: HTTP {status}: {message} (check --token or the docker config.json entry)")]
    Denied { reference: String, status: u16, message: String },
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("oci://{registry}: no answer within {}s (--timeout)", .after.as_secs_f64())]
    Timeout { registry: String, after: std::time::Duration },
}

/// `oci://HOST[:PORT]/NAMESPACE`, checked when parsed: the namespace must
/// be a valid (lowercase) OCI repository path, so every reference made from
/// it later is valid too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciTarget {
    pub registry: String,
    pub namespace: String,
}

/// One path component of an OCI repository name:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.first().is_none_or(|&x| !alnum(x)) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if b.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        if b.get(i).is_none_or(|&x| !alnum(x)) {
            return false;
        }
    }
    true
}

impl OciTarget {
    pub fn parse(s: &str) -> Result<Self, OciError> {
        let bad = |reason: String| OciError::Target { target: s.to_owned(), reason };
        let rest = s.strip_prefix("oci://").ok_or_else(|| bad("it does not start with oci://".into()))?;
        let (registry, namespace) =
            rest.split_once('/').ok_or_else(|| bad("it names no namespace after the host".into()))?;
        let namespace = namespace.trim_end_matches('/');
        if registry.is_empty() || namespace.is_empty() {
            return Err(bad("the host and the namespace must both be given".into()));
        }
        if !registry.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')) {
            return Err(bad(format!("{registry:?} is not a host[:port]")));
        }
        if namespace.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad(format!(
                "OCI repository names are lowercase, and {namespace:?} has uppercase letters (oci://{registry}/{} would do)",
                namespace.to_ascii_lowercase()
            )));
        }
        if let Some(c) = namespace.split('/').find(|c| !valid_component(c)) {
            return Err(bad(format!(
                "{c:?} is not a valid OCI repository path component (lowercase letters and digits, separated by '.', '_', '__' or '-')"
            )));
        }
        let t = Self { registry: registry.to_owned(), namespace: namespace.to_owned() };
        t.reference("latest").map_err(|e| bad(e.to_string()))?;
        Ok(t)
    }

    /// `<namespace>/tracee-bpf` on the registry.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.namespace, oci::REPOSITORY)
    }

    /// A tag or a `sha256:` digest of the repository, as a reference.
    pub fn reference(&self, tag_or_digest: &str) -> Result<Reference, OciError> {
        let r = if tag_or_digest.starts_with("sha256:") {
            format!("{}/{}@{tag_or_digest}", self.registry, self.repository())
        } else {
            format!("{}/{}:{tag_or_digest}", self.registry, self.repository())
        };
        r.parse().map_err(|e: oci_client::ParseError| OciError::Invalid {
            reference: r.clone(),
            message: format!("not a valid OCI reference: {e}"),
        })
    }

    /// Loopback registries may speak plain HTTP; everything else is HTTPS
    /// (unless `--insecure`).
    pub fn is_loopback(&self) -> bool {
        let host = match self.registry.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => &self.registry,
        };
        crate::http::is_loopback_host(host)
    }
}

/// Credentials for a registry: a token (as the Basic password, the way
/// registries take access tokens), else the docker `config.json` entry for
/// the host (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`), else
/// anonymous.
pub fn credentials(registry: &str, username: Option<&str>, token: Option<&str>) -> RegistryAuth {
    if let Some(t) = token {
        return RegistryAuth::Basic(username.unwrap_or("bpfarm").to_owned(), t.to_owned());
    }
    let path = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".docker")))
        .map(|d| d.join("config.json"));
    let entry = path
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["auths"][registry]["auth"].as_str().map(str::to_owned));
    if let Some(auth) = entry {
        use base64::Engine;
        if let Some((u, p)) = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())))
        {
            return RegistryAuth::Basic(u, p);
        }
    }
    RegistryAuth::Anonymous
}

/// One OCI target: `oci-client` for auth and pushes, the shared transport
/// for every read.
pub struct OciRegistry {
    target: OciTarget,
    auth: RegistryAuth,
    client: Client,
    transport: Transport,
    scheme: &'static str,
    warning: Option<String>,
}

impl std::fmt::Debug for OciRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciRegistry").field("target", &self.target).finish_non_exhaustive()
    }
}

impl OciRegistry {
    /// Plain HTTP for loopback (and, with a warning, for anything under
    /// `--insecure`); HTTPS with the system roots and `--ca-cert` otherwise.
    pub fn new(target: OciTarget, auth: RegistryAuth, transport: &Transport) -> Result<Self, OciError> {
        let (plain, warning) = transport.plain_http_for_host(&target.registry);
        let protocol =
            if plain { ClientProtocol::HttpsExcept(vec![target.registry.clone()]) } else { ClientProtocol::Https };
        let timeout = transport.config().timeout;
        let config = ClientConfig {
            protocol,
            extra_root_certificates: transport
                .ca_pems()
                .iter()
                .map(|pem| Certificate { encoding: CertificateEncoding::Pem, data: pem.clone() })
                .collect(),
            read_timeout: Some(timeout),
            connect_timeout: Some(timeout),
            ..Default::default()
        };
        // `Client::new` would fall back to defaults on a bad config; refuse instead.
        let client = Client::try_from(config).map_err(|source| OciError::Registry {
            reference: format!("oci://{}/{}", target.registry, target.namespace),
            source,
        })?;
        Ok(Self {
            target,
            auth,
            client,
            transport: transport.clone(),
            scheme: if plain { "http" } else { "https" },
            warning,
        })
    }

    pub fn target(&self) -> &OciTarget {
        &self.target
    }

    /// The warning to show for plain http allowed by `--insecure`.
    pub fn warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }

    fn err(reference: &Reference) -> impl Fn(oci_client::errors::OciDistributionError) -> OciError + '_ {
        move |source| OciError::Registry { reference: reference.to_string(), source }
    }

    /// The `Authorization` header for this registry's reads, after the
    /// registry's token dance (done by `oci-client`).
    async fn auth_header(&self, op: RegistryOperation) -> Result<Vec<(String, String)>, OciError> {
        let repo = self.target.reference(oci::REPOSITORY)?;
        let token = self.client.auth(&repo, &self.auth, op).await.map_err(Self::err(&repo))?;
        Ok(match (token, &self.auth) {
            (Some(t), _) => vec![("Authorization".into(), format!("Bearer {t}"))],
            (None, RegistryAuth::Basic(u, p)) => vec![(
                "Authorization".into(),
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))),
            )],
            (None, _) => vec![],
        })
    }

    fn url(&self, reference: &Reference, kind: &str, tag_or_digest: &str) -> String {
        format!(
            "{}://{}/v2/{}/{kind}/{tag_or_digest}",
            self.scheme,
            reference.resolve_registry(),
            reference.repository()
        )
    }

    /// Pushes blob `digest` (`data`) into `repo` unless it is there.
    async fn push_blob_if_missing(&self, repo: &Reference, digest: &Digest, data: &[u8]) -> Result<(), OciError> {
        let exists = self.client.blob_exists(repo, digest.as_str()).await.unwrap_or(false);
        if !exists {
            self.client.push_blob(repo, data.to_vec(), digest.as_str()).await.map_err(Self::err(repo))?;
        }
        Ok(())
    }

    /// Pushes `manifest`, of `media_type`, under a tag or its digest.
    async fn push_manifest(&self, tag_or_digest: &str, manifest: Vec<u8>, media_type: &str) -> Result<(), OciError> {
        let r = self.target.reference(tag_or_digest)?;
        self.client.push_manifest_raw(&r, manifest, header_value(&r, media_type)?).await.map_err(Self::err(&r))?;
        Ok(())
    }

    /// A GET of at most `cap` bytes; a larger body is the error `too_large`
    /// makes.
    async fn get_capped(
        &self,
        url: &str,
        headers: &[(String, String)],
        cap: u64,
        too_large: impl FnOnce() -> OciError,
    ) -> Result<Response, OciError> {
        self.transport.get(url, headers, cap, Overflow::Error).await.map_err(|e| match e {
            TransportError::TooLarge { .. } => too_large(),
            e => e.into(),
        })
    }

    /// A manifest's bytes (at most 4 MiB, or `size` when the descriptor
    /// names it), or `None` when the registry does not have it. Fetched by
    /// digest, the bytes must hash to it.
    async fn manifest(
        &self,
        tag_or_digest: &str,
        size: Option<u64>,
        auth: &[(String, String)],
        accept: &str,
    ) -> Result<Option<Vec<u8>>, OciError> {
        let reference = self.target.reference(tag_or_digest)?;
        let url = self.url(&reference, "manifests", tag_or_digest);
        let mut headers = auth.to_vec();
        headers.push(("Accept".into(), accept.into()));
        let cap = size.unwrap_or(MAX_MANIFEST).min(MAX_MANIFEST);
        let r = self.transport.get(&url, &headers, cap, Overflow::Error).await?;
        let invalid = |message: String| OciError::Invalid { reference: reference.to_string(), message };
        Ok(found_manifest(r, tag_or_digest, invalid)?.map(Response::into_body))
    }

    /// The tag of (release, version): the plain one, or the hashed one when
    /// another release holds the plain tag. Returns it with its index.
    async fn tag_and_index(
        &self,
        release: &str,
        version: &str,
        auth: &[(String, String)],
    ) -> Result<(String, Option<Vec<u8>>), OciError> {
        let plain = oci::tag(release, version, false);
        match self.manifest(&plain, None, auth, oci::INDEX_MEDIA_TYPE).await? {
            Some(b) if annotation(&b, oci::ANN_RELEASE).as_deref() != Some(release) => {
                let hashed = oci::tag(release, version, true);
                let existing = self.manifest(&hashed, None, auth, oci::INDEX_MEDIA_TYPE).await?;
                Ok((hashed, existing))
            }
            other => Ok((plain, other)),
        }
    }

    /// Pushes the object (empty config, layer, manifest) and merges its
    /// manifest into the index of its tag; bounded by the transport's
    /// timeout.
    pub fn publish(&self, meta: &ObjectMetadata, bytes: &[u8]) -> Result<Published, OciError> {
        self.within(self.publish_async(meta, bytes))
    }

    async fn publish_async(&self, meta: &ObjectMetadata, bytes: &[u8]) -> Result<Published, OciError> {
        let repo = self.target.reference(oci::REPOSITORY)?;
        let auth = self.auth_header(RegistryOperation::Push).await?;
        let config = Digest::of_bytes(oci::EMPTY_CONFIG);
        for (digest, data) in [(&config, oci::EMPTY_CONFIG), (&meta.digest, bytes)] {
            self.push_blob_if_missing(&repo, digest, data).await?;
        }
        let manifest = oci::manifest(meta);
        let md = Digest::of_bytes(&manifest);
        self.push_manifest(md.as_str(), manifest.clone(), oci::MANIFEST_MEDIA_TYPE).await?;
        let id = &meta.identity;
        let (tag, existing) = self.tag_and_index(&id.kernel_release, &id.version, &auth).await?;
        let index =
            oci::index(&id.kernel_release, &id.version, existing.as_deref(), id.arch, &md, manifest.len() as u64);
        if existing.as_deref() == Some(&index[..]) {
            return Ok(Published::Skipped);
        }
        self.push_manifest(&tag, index, oci::INDEX_MEDIA_TYPE).await?;
        Ok(Published::Published)
    }

    /// Finds the object for an identity: tag → index → this arch's manifest
    /// (annotated release, arch and version must match exactly) → layer,
    /// at most the size its descriptor names (never over the object
    /// limit), verified against its digest. `None` when the registry has
    /// none. The caller puts the deadline around it.
    pub async fn fetch(&self, id: &Identity) -> Result<Option<(ObjectMetadata, Vec<u8>)>, OciError> {
        Ok(self.fetch_with_manifest(id).await?.map(|(meta, bytes, _)| (meta, bytes)))
    }

    /// [`OciRegistry::fetch`], also returning the exact bytes of the
    /// platform manifest whose one layer is the object: what a cosign
    /// signature (`sha256-<hex>.sig`) names by digest.
    pub async fn fetch_with_manifest(
        &self,
        id: &Identity,
    ) -> Result<Option<crate::oci_layout::WithManifest>, OciError> {
        let auth = self.auth_header(RegistryOperation::Pull).await?;
        let (tag, index) = self.tag_and_index(&id.kernel_release, &id.version, &auth).await?;
        let tref = self.target.reference(&tag)?;
        let invalid = |message: String| OciError::Invalid { reference: tref.to_string(), message };
        let Some(index) = index else { return Ok(None) };
        if annotation(&index, oci::ANN_RELEASE).as_deref() != Some(id.kernel_release.as_str()) {
            return Ok(None);
        }
        let v: Value = serde_json::from_slice(&index).map_err(|e| invalid(format!("index is not JSON: {e}")))?;
        let Some(entry) = v["manifests"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["platform"]["architecture"] == oci::oci_arch(id.arch)))
        else {
            return Ok(None);
        };
        let md: Digest =
            entry["digest"].as_str().unwrap_or("").parse().map_err(|e: crate::DigestError| {
                invalid(format!("the index's {} entry: {e}", oci::oci_arch(id.arch)))
            })?;
        let manifest = self
            .manifest(md.as_str(), entry["size"].as_u64(), &auth, oci::MANIFEST_MEDIA_TYPE)
            .await?
            .ok_or_else(|| invalid(format!("the index names {md}, which the registry does not have")))?;
        let m: Value = serde_json::from_slice(&manifest).map_err(|e| invalid(format!("manifest is not JSON: {e}")))?;
        oci::check_annotations(&m, id, "this host's ").map_err(invalid)?;
        let layer = &m["layers"][0];
        oci::check_object_layer(layer, Some(&id.file_name())).map_err(invalid)?;
        let digest: Digest =
            layer["digest"].as_str().unwrap_or("").parse().map_err(|e: crate::DigestError| invalid(e.to_string()))?;
        let size = layer["size"].as_u64().ok_or_else(|| invalid("its layer descriptor has no size".into()))?;
        let limit = self.transport.config().max_object_bytes;
        if size > limit {
            return Err(invalid(format!(
                "its layer is {size} bytes, over the {limit}-byte limit (--max-object-size); not downloading it"
            )));
        }
        let mref = self.target.reference(md.as_str())?;
        let url = self.url(&mref, "blobs", digest.as_str());
        let r = self
            .get_capped(&url, &auth, size, || {
                invalid(format!("the registry sent more than the {size} bytes the layer descriptor names"))
            })
            .await?;
        if r.status != 200 {
            return Err(invalid(format!("HTTP {} for its layer: {}", r.status, registry_message(&r))));
        }
        if r.body().len() as u64 != size {
            return Err(invalid(format!("its layer is {} bytes, the descriptor says {size}", r.body().len())));
        }
        if *r.digest() != digest {
            return Err(invalid(format!("layer bytes hash to {}, the manifest says {digest}", r.digest())));
        }
        let meta = ObjectMetadata::unattested(id.clone(), digest, size, Origin::OciFetch);
        Ok(Some((meta, r.into_body(), manifest)))
    }
}

/// Signatures and attestations (`sign::OciArtifact`) beside the objects,
/// where cosign looks for them; each call bounded by the transport's
/// timeout, every read capped.
impl OciRegistry {
    /// `HOST[:PORT]/NAMESPACE/tracee-bpf`: the `docker-reference` of a
    /// simple-signing payload for this target.
    pub fn docker_reference(&self) -> String {
        format!("{}/{}", self.target.registry, self.target.repository())
    }

    fn within<T>(&self, fut: impl Future<Output = Result<T, OciError>>) -> Result<T, OciError> {
        let after = self.transport.config().timeout;
        self.transport
            .within(fut)
            .unwrap_or_else(|| Err(OciError::Timeout { registry: self.target.registry.clone(), after }))
    }

    /// Pushes an artifact's blobs (those missing), then its manifest under
    /// its tag.
    pub fn push_artifact(&self, artifact: &crate::sign::OciArtifact) -> Result<(), OciError> {
        self.within(async {
            let repo = self.target.reference(oci::REPOSITORY)?;
            self.auth_header(RegistryOperation::Push).await?;
            for blob in &artifact.blobs {
                self.push_blob_if_missing(&repo, &blob.digest, &blob.data).await?;
            }
            self.push_manifest(&artifact.tag, artifact.manifest.clone(), oci::MANIFEST_MEDIA_TYPE).await
        })
    }

    /// The image manifest under `tag` (`sha256-<hex>.sig` / `.att`), at most
    /// `sign::cosign::MAX_MANIFEST` bytes, or `None` when the registry has
    /// no such tag.
    pub fn pull_tagged_manifest(&self, tag: &str) -> Result<Option<Vec<u8>>, OciError> {
        self.within(self.tagged_manifest(tag))
    }

    /// [`OciRegistry::pull_tagged_manifest`] without its own deadline, for a
    /// caller that bounds a whole attempt.
    pub async fn tagged_manifest(&self, tag: &str) -> Result<Option<Vec<u8>>, OciError> {
        let auth = self.auth_header(RegistryOperation::Pull).await?;
        let cap = crate::sign::cosign::MAX_MANIFEST as u64;
        self.manifest(tag, Some(cap), &auth, oci::MANIFEST_MEDIA_TYPE).await
    }

    /// A small blob (a signature payload, an envelope) of this repository,
    /// at most `max` bytes (the transfer stops there) and checked against
    /// its digest.
    pub fn pull_small_blob(&self, digest: &Digest, max: usize) -> Result<Vec<u8>, OciError> {
        self.within(self.small_blob(digest, max))
    }

    /// [`OciRegistry::pull_small_blob`] without its own deadline.
    pub async fn small_blob(&self, digest: &Digest, max: usize) -> Result<Vec<u8>, OciError> {
        let auth = self.auth_header(RegistryOperation::Pull).await?;
        let repo = self.target.reference(oci::REPOSITORY)?;
        let invalid = |message: String| OciError::Invalid { reference: repo.to_string(), message };
        let url = self.url(&repo, "blobs", digest.as_str());
        let r = self
            .get_capped(&url, &auth, max as u64, || invalid(format!("blob {digest} is larger than {max} bytes")))
            .await?;
        if r.status != 200 {
            return Err(invalid(format!("HTTP {} for blob {digest}: {}", r.status, registry_message(&r))));
        }
        if r.digest() != digest {
            return Err(invalid(format!("blob {digest} has bytes hashing to {}", r.digest())));
        }
        Ok(r.into_body())
    }
}

/// Caps on a tag listing (`GET /v2/<name>/tags/list`).
#[derive(Debug, Clone, Copy)]
pub struct TagListLimits {
    /// Tags asked for per page (`?n=`).
    pub page_size: u32,
    /// Pages followed through `Link: <…>; rel="next"`.
    pub max_pages: u32,
    /// Bytes of one page.
    pub max_page_bytes: u64,
    /// Tags in all.
    pub max_tags: usize,
}

impl Default for TagListLimits {
    fn default() -> Self {
        Self { page_size: 1000, max_pages: 1000, max_page_bytes: 4 << 20, max_tags: 200_000 }
    }
}

/// A manifest as the registry answered it: its bytes, their digest and
/// its media type (the body's `mediaType`, else the `Content-Type`).
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub digest: Digest,
    pub media_type: String,
}

/// Reading a whole repository, for a mirror: its tags, its manifests by
/// tag or digest, its blobs by digest; every read capped and checked.
impl OciRegistry {
    /// Every tag of the repository, through the distribution API's
    /// pagination (`?n=`, `Link` next), bounded by `limits` and by one
    /// deadline for the whole listing. A `Link` leaving the registry's
    /// origin, a page that repeats, or a listing past the caps is an
    /// error: an endless list is refused, not followed.
    pub fn list_tags(&self, limits: TagListLimits) -> Result<Vec<String>, OciError> {
        self.within(self.tags(limits))
    }

    /// [`OciRegistry::list_tags`] without its own deadline.
    pub async fn tags(&self, limits: TagListLimits) -> Result<Vec<String>, OciError> {
        let auth = self.auth_header(RegistryOperation::Pull).await?;
        let repo = self.target.reference(oci::REPOSITORY)?;
        let invalid = |message: String| OciError::Invalid { reference: repo.to_string(), message };
        let origin = format!("{}://{}", self.scheme, repo.resolve_registry());
        let mut url = format!("{origin}/v2/{}/tags/list?n={}", repo.repository(), limits.page_size);
        let mut tags: Vec<String> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut pages = 0u32;
        loop {
            pages += 1;
            if pages > limits.max_pages {
                return Err(invalid(format!(
                    "the tag list goes on past {} pages; refusing to follow it further",
                    limits.max_pages
                )));
            }
            let r = self
                .get_capped(&url, &auth, limits.max_page_bytes, || {
                    invalid(format!("a page of the tag list is over {} bytes", limits.max_page_bytes))
                })
                .await?;
            match r.status {
                200 => {}
                // A repository nothing was pushed to has no tags.
                404 if pages == 1 => return Ok(tags),
                s @ (401 | 403) => {
                    return Err(OciError::Denied {
                        reference: repo.to_string(),
                        status: s,
                        message: registry_message(&r),
                    });
                }
                s => return Err(invalid(format!("HTTP {s} for the tag list: {}", registry_message(&r)))),
            }
            let v: Value =
                serde_json::from_slice(r.body()).map_err(|e| invalid(format!("the tag list is not JSON: {e}")))?;
            // `tags` is null for a repository without tags.
            if !v["tags"].is_null() && !v["tags"].is_array() {
                return Err(invalid("the tag list's tags is not an array".into()));
            }
            for t in v["tags"].as_array().into_iter().flatten() {
                let t = t.as_str().ok_or_else(|| invalid("the tag list holds a non-string".into()))?;
                // Not a tag a manifest can be fetched by (a page may be one
                // 4 MiB string): dropped, never stored.
                if !is_tag(t) {
                    continue;
                }
                if seen.insert(t.to_owned()) {
                    tags.push(t.to_owned());
                }
                if tags.len() > limits.max_tags {
                    return Err(invalid(format!("the tag list has more than {} tags", limits.max_tags)));
                }
            }
            let next = r.headers.get_all(reqwest::header::LINK).iter().find_map(|h| next_link(h.to_str().ok()?));
            let Some(next) = next else { return Ok(tags) };
            let next = if next.starts_with('/') {
                format!("{origin}{next}")
            } else if next.starts_with(&format!("{origin}/")) {
                next
            } else {
                return Err(invalid(format!("the tag list's next page {next:?} is on another origin")));
            };
            if next == url {
                return Err(invalid("the tag list's next page is the page itself".into()));
            }
            url = next;
        }
    }

    /// The manifest under a tag or digest, at most `cap` bytes (never over
    /// 4 MiB); `None` when the registry has none. By digest, its bytes must
    /// hash to it.
    pub async fn fetch_manifest(&self, tag_or_digest: &str, cap: u64) -> Result<Option<FetchedManifest>, OciError> {
        let auth = self.auth_header(RegistryOperation::Pull).await?;
        let accept = [oci::MANIFEST_MEDIA_TYPE, oci::INDEX_MEDIA_TYPE, DOCKER_MANIFEST, DOCKER_LIST].join(", ");
        let reference = self.target.reference(tag_or_digest)?;
        let url = self.url(&reference, "manifests", tag_or_digest);
        let mut headers = auth.clone();
        headers.push(("Accept".into(), accept));
        let cap = cap.min(MAX_MANIFEST);
        let invalid = |message: String| OciError::Invalid { reference: reference.to_string(), message };
        let r = self.get_capped(&url, &headers, cap, || invalid(format!("its manifest is over {cap} bytes"))).await?;
        let Some(r) = found_manifest(r, tag_or_digest, invalid)? else { return Ok(None) };
        let body_type =
            serde_json::from_slice::<Value>(r.body()).ok().and_then(|v| v["mediaType"].as_str().map(str::to_owned));
        let header_type = r
            .headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|h| h.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or("").trim().to_owned());
        let media_type = body_type.or(header_type).ok_or_else(|| invalid("its manifest names no media type".into()))?;
        let (bytes, digest) = r.into_hashed().into_parts();
        Ok(Some(FetchedManifest { digest, bytes, media_type }))
    }

    /// A blob of `size` bytes (as its descriptor names), never more: the
    /// transfer stops at `size`, and the bytes must be exactly `size` long
    /// and hash to `digest`.
    pub async fn fetch_blob(&self, digest: &Digest, size: u64) -> Result<Vec<u8>, OciError> {
        let auth = self.auth_header(RegistryOperation::Pull).await?;
        let repo = self.target.reference(oci::REPOSITORY)?;
        let invalid = |message: String| OciError::Invalid { reference: repo.to_string(), message };
        let url = self.url(&repo, "blobs", digest.as_str());
        let r = self
            .get_capped(&url, &auth, size, || {
                invalid(format!("blob {digest}: the registry sent more than the {size} bytes its descriptor names"))
            })
            .await?;
        if r.status != 200 {
            return Err(invalid(format!("HTTP {} for blob {digest}: {}", r.status, registry_message(&r))));
        }
        if r.body().len() as u64 != size {
            return Err(invalid(format!("blob {digest} is {} bytes, its descriptor says {size}", r.body().len())));
        }
        if r.digest() != digest {
            return Err(invalid(format!("blob {digest} has bytes hashing to {}", r.digest())));
        }
        Ok(r.into_body())
    }

    /// Runs `fut` under the transport's deadline (for a caller driving
    /// several reads from a blocking thread).
    pub fn run<T>(&self, fut: impl Future<Output = Result<T, OciError>>) -> Result<T, OciError> {
        self.within(fut)
    }
}

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The target of a `Link` header's `rel="next"` entry.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        let next = params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p == "rel=\"next\"" || p == "rel=next"
        });
        next.then(|| target.to_owned())
    })
}

fn header_value(reference: &Reference, v: &str) -> Result<reqwest::header::HeaderValue, OciError> {
    v.parse()
        .map_err(|e| OciError::Invalid { reference: reference.to_string(), message: format!("media type {v}: {e}") })
}

/// A manifest GET's answer for `tag_or_digest`: `None` for a 404, else it
/// must be a 200 and, asked for by digest, hash to it.
fn found_manifest(
    r: Response,
    tag_or_digest: &str,
    invalid: impl Fn(String) -> OciError,
) -> Result<Option<Response>, OciError> {
    match r.status {
        200 => {}
        404 => return Ok(None),
        s => return Err(invalid(format!("HTTP {s} for its manifest: {}", registry_message(&r)))),
    }
    if tag_or_digest.starts_with("sha256:") && r.digest().as_str() != tag_or_digest {
        return Err(invalid(format!("the manifest's bytes hash to {}, not {tag_or_digest}", r.digest())));
    }
    Ok(Some(r))
}

/// The first OCI error message of a body, else its status.
fn registry_message(r: &Response) -> String {
    serde_json::from_slice::<Value>(r.body())
        .ok()
        .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("HTTP {}", r.status))
}

fn annotation(manifest: &[u8], key: &str) -> Option<String> {
    serde_json::from_slice::<Value>(manifest).ok()?["annotations"][key].as_str().map(str::to_owned)
}

/// A valid OCI tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn is_tag(t: &str) -> bool {
    let b = t.as_bytes();
    (1..=128).contains(&b.len())
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..].iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_valid_oci_tags_are_tags() {
        let longest = format!("a{}", "b".repeat(127));
        for ok in ["v1", "_x", "6.1.0-56-amd64.v0.1.0", "sha256-ab.sig", "A_b.c-d", "0", longest.as_str()] {
            assert!(is_tag(ok), "{ok}");
        }
        let too_long = format!("a{}", "b".repeat(128));
        let huge = "t".repeat(4 << 20);
        for bad in ["", ".x", "-x", "a/b", "a b", "a:b", "é", "a\n", too_long.as_str(), huge.as_str()] {
            assert!(!is_tag(bad), "{bad:.40}");
        }
    }

    #[test]
    fn targets() {
        let t = OciTarget::parse("oci://127.0.0.1:5000/acme/fleet").unwrap();
        assert_eq!((t.registry.as_str(), t.repository().as_str()), ("127.0.0.1:5000", "acme/fleet/tracee-bpf"));
        assert!(t.is_loopback());
        assert!(!OciTarget::parse("oci://registry.example/x").unwrap().is_loopback());
        for bad in ["http://x/y", "oci://x", "oci:///y", "oci://x/", "oci://x/a//b", "oci://x/-a", "oci://x/a_-b"] {
            assert!(OciTarget::parse(bad).is_err(), "{bad}");
        }
        // Uppercase namespaces are refused at parse time, with the fix.
        let e = OciTarget::parse("oci://127.0.0.1:5000/ACME").unwrap_err().to_string();
        assert!(e.contains("lowercase") && e.contains("oci://127.0.0.1:5000/acme"), "{e}");
        for ok in ["oci://h/a.b", "oci://h/a__b", "oci://h/a---b/c_d", "oci://127.0.0.1:5000/x"] {
            assert!(OciTarget::parse(ok).is_ok(), "{ok}");
        }
        // A tag no release could make is an error, not a panic.
        let t = OciTarget::parse("oci://h/ns").unwrap();
        assert!(t.reference("-bad tag").is_err());
        assert!(t.reference("sha256:short").is_err());
    }

    #[test]
    fn link_next() {
        assert_eq!(
            next_link(r#"</v2/a/tracee-bpf/tags/list?n=2&last=b>; rel="next""#).as_deref(),
            Some("/v2/a/tracee-bpf/tags/list?n=2&last=b")
        );
        assert_eq!(next_link(r#"<https://h/x>; rel="prev""#), None);
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn docker_config_credentials() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"auths":{"reg:5000":{"auth":"dXNlcjpzZWNyZXQ="}}}"#)
            .unwrap();
        // SAFETY: this test alone reads DOCKER_CONFIG in this process.
        unsafe { std::env::set_var("DOCKER_CONFIG", dir.path()) };
        assert!(
            matches!(credentials("reg:5000", None, None), RegistryAuth::Basic(u, p) if u == "user" && p == "secret")
        );
        assert!(matches!(credentials("other:1", None, None), RegistryAuth::Anonymous));
        assert!(
            matches!(credentials("reg:5000", None, Some("tok")), RegistryAuth::Basic(u, p) if u == "bpfarm" && p == "tok")
        );
    }
}
