//! Moving objects through any OCI registry with `oci-client`, in the
//! DESIGN.md format: publish merges the per-arch index (read, merge, write:
//! publishing one arch never drops another); fetch resolves the tag, picks
//! this arch, checks the annotated release exactly and verifies the layer.

use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde_json::Value;

use crate::client::Published;
use crate::{Arch, Digest, Identity, ObjectMetadata, oci};

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{0:?} is not oci://HOST[:PORT]/NAMESPACE")]
    Target(String),
    #[error("{reference}: {source}")]
    Registry {
        reference: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("{reference}: {message}")]
    Invalid { reference: String, message: String },
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// `oci://HOST[:PORT]/NAMESPACE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciTarget {
    pub registry: String,
    pub namespace: String,
}

impl OciTarget {
    pub fn parse(s: &str) -> Result<Self, OciError> {
        let rest = s.strip_prefix("oci://").ok_or_else(|| OciError::Target(s.to_owned()))?;
        let (registry, namespace) = rest.split_once('/').ok_or_else(|| OciError::Target(s.to_owned()))?;
        let namespace = namespace.trim_end_matches('/');
        if registry.is_empty() || namespace.is_empty() {
            return Err(OciError::Target(s.to_owned()));
        }
        Ok(Self { registry: registry.to_owned(), namespace: namespace.to_owned() })
    }

    /// `<namespace>/tracee-bpf` on the registry.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.namespace, oci::REPOSITORY)
    }

    fn reference(&self, tag_or_digest: &str) -> Reference {
        let r = if tag_or_digest.starts_with("sha256:") {
            format!("{}/{}@{tag_or_digest}", self.registry, self.repository())
        } else {
            format!("{}/{}:{tag_or_digest}", self.registry, self.repository())
        };
        r.parse().expect("a valid reference from a parsed target")
    }

    /// Loopback registries may speak plain HTTP; everything else is HTTPS.
    fn is_loopback(&self) -> bool {
        let host = self.registry.rsplit_once(':').map(|(h, _)| h).unwrap_or(&self.registry);
        matches!(host, "127.0.0.1" | "localhost" | "[::1]") || host.starts_with("127.")
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

/// A blocking façade over `oci-client` for one target.
pub struct OciRegistry {
    target: OciTarget,
    auth: RegistryAuth,
    client: Client,
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for OciRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciRegistry").field("target", &self.target).finish_non_exhaustive()
    }
}

impl OciRegistry {
    pub fn new(target: OciTarget, auth: RegistryAuth, timeout: Duration) -> Result<Self, OciError> {
        let protocol = if target.is_loopback() {
            ClientProtocol::HttpsExcept(vec![target.registry.clone()])
        } else {
            ClientProtocol::Https
        };
        let client = Client::new(ClientConfig {
            protocol,
            read_timeout: Some(timeout),
            connect_timeout: Some(timeout),
            ..Default::default()
        });
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(OciError::Runtime)?;
        Ok(Self { target, auth, client, rt })
    }

    pub fn target(&self) -> &OciTarget {
        &self.target
    }

    fn err(&self, reference: &Reference) -> impl Fn(oci_client::errors::OciDistributionError) -> OciError + '_ {
        let reference = reference.to_string();
        move |source| OciError::Registry { reference: reference.clone(), source }
    }

    /// A manifest's bytes, or `None` when the registry does not have it.
    fn manifest(&self, reference: &Reference, accept: &[&str]) -> Result<Option<Vec<u8>>, OciError> {
        match self.rt.block_on(self.client.pull_manifest_raw(reference, &self.auth, accept)) {
            Ok((bytes, _)) => Ok(Some(bytes.to_vec())),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.err(reference)(e)),
        }
    }

    /// The tag of (release, version): the plain one, or the hashed one when
    /// another release holds the plain tag. Returns it with its index.
    fn tag_and_index(&self, release: &str, version: &str) -> Result<(String, Option<Vec<u8>>), OciError> {
        let plain = oci::tag(release, version, false);
        let accept = [oci::INDEX_MEDIA_TYPE];
        match self.manifest(&self.target.reference(&plain), &accept)? {
            Some(b) if annotation(&b, oci::ANN_RELEASE).as_deref() != Some(release) => {
                let hashed = oci::tag(release, version, true);
                let existing = self.manifest(&self.target.reference(&hashed), &accept)?;
                Ok((hashed, existing))
            }
            other => Ok((plain, other)),
        }
    }

    /// Pushes the object (empty config, layer, manifest) and merges its
    /// manifest into the index of its tag.
    pub fn publish(&self, meta: &ObjectMetadata, bytes: &[u8]) -> Result<Published, OciError> {
        let repo = self.target.reference(oci::REPOSITORY);
        self.rt.block_on(self.client.auth(&repo, &self.auth, RegistryOperation::Push)).map_err(self.err(&repo))?;
        let config = Digest::of_bytes(oci::EMPTY_CONFIG);
        for (digest, data) in [(&config, oci::EMPTY_CONFIG), (&meta.digest, bytes)] {
            let exists = self.rt.block_on(self.client.blob_exists(&repo, digest.as_str())).unwrap_or(false);
            if !exists {
                self.rt
                    .block_on(self.client.push_blob(&repo, data.to_vec(), digest.as_str()))
                    .map_err(self.err(&repo))?;
            }
        }
        let manifest = oci::manifest(meta);
        let md = Digest::of_bytes(&manifest);
        let mref = self.target.reference(md.as_str());
        self.rt
            .block_on(self.client.push_manifest_raw(
                &mref,
                manifest.clone(),
                oci::MANIFEST_MEDIA_TYPE.parse().expect("media type"),
            ))
            .map_err(self.err(&mref))?;
        let id = &meta.identity;
        let (tag, existing) = self.tag_and_index(&id.kernel_release, &id.version)?;
        let index =
            oci::index(&id.kernel_release, &id.version, existing.as_deref(), id.arch, &md, manifest.len() as u64);
        if existing.as_deref() == Some(&index[..]) {
            return Ok(Published::Skipped);
        }
        let tref = self.target.reference(&tag);
        self.rt
            .block_on(self.client.push_manifest_raw(&tref, index, oci::INDEX_MEDIA_TYPE.parse().expect("media type")))
            .map_err(self.err(&tref))?;
        Ok(Published::Published)
    }

    /// Finds the object for an identity: tag → index → this arch's manifest
    /// (annotated release, arch and version must match exactly) → layer,
    /// verified against its digest. `None` when the registry has none.
    pub fn fetch(&self, id: &Identity) -> Result<Option<(ObjectMetadata, Vec<u8>)>, OciError> {
        let (tag, index) = self.tag_and_index(&id.kernel_release, &id.version)?;
        let tref = self.target.reference(&tag);
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
        let md = entry["digest"].as_str().unwrap_or("");
        let mref = self.target.reference(md);
        let manifest = self
            .manifest(&mref, &[oci::MANIFEST_MEDIA_TYPE])?
            .ok_or_else(|| invalid(format!("the index names {md}, which the registry does not have")))?;
        if Digest::of_bytes(&manifest).as_str() != md {
            return Err(invalid(format!("manifest {md} has different bytes")));
        }
        let m: Value = serde_json::from_slice(&manifest).map_err(|e| invalid(format!("manifest is not JSON: {e}")))?;
        let a = &m["annotations"];
        if a[oci::ANN_RELEASE] != id.kernel_release.as_str()
            || a[oci::ANN_ARCH].as_str().and_then(Arch::from_any) != Some(id.arch)
            || a[oci::ANN_VERSION] != id.version.as_str()
        {
            return Err(invalid(format!(
                "its annotations name {} {} {}, not this host's {} {} {}",
                a[oci::ANN_RELEASE],
                a[oci::ANN_ARCH],
                a[oci::ANN_VERSION],
                id.kernel_release,
                id.arch,
                id.version
            )));
        }
        let layer = &m["layers"][0];
        if layer["mediaType"] != oci::LAYER_MEDIA_TYPE {
            return Err(invalid(format!("its layer is {}, not {}", layer["mediaType"], oci::LAYER_MEDIA_TYPE)));
        }
        let digest: Digest =
            layer["digest"].as_str().unwrap_or("").parse().map_err(|e: crate::DigestError| invalid(e.to_string()))?;
        let mut bytes = Vec::new();
        self.rt.block_on(self.client.pull_blob(&mref, digest.as_str(), &mut bytes)).map_err(self.err(&mref))?;
        let actual = Digest::of_bytes(&bytes);
        if actual != digest {
            return Err(invalid(format!("layer bytes hash to {actual}, the manifest says {digest}")));
        }
        if layer["annotations"][oci::ANN_TITLE] != id.file_name().as_str() {
            return Err(invalid(format!(
                "its title is {}, not {}",
                layer["annotations"][oci::ANN_TITLE],
                id.file_name()
            )));
        }
        let meta = ObjectMetadata {
            identity: id.clone(),
            file_name: id.file_name(),
            digest,
            size: bytes.len() as u64,
            kernel: Default::default(),
            build_mode: "unknown (fetched through OCI)".into(),
            sources: vec![],
            program_digest: Digest::of_bytes(b""),
            compiler: crate::Compiler { clang: "unknown (fetched through OCI)".into(), llc: None },
            flags: vec![],
            built_at: String::new(),
        };
        Ok(Some((meta, bytes)))
    }
}

/// Signatures and attestations (`sign::OciArtifact`) beside the objects,
/// where cosign looks for them.
impl OciRegistry {
    /// `HOST[:PORT]/NAMESPACE/tracee-bpf`: the `docker-reference` of a
    /// simple-signing payload for this target.
    pub fn docker_reference(&self) -> String {
        format!("{}/{}", self.target.registry, self.target.repository())
    }

    /// Pushes an artifact's blobs (those missing), then its manifest under
    /// its tag.
    pub fn push_artifact(&self, artifact: &crate::sign::OciArtifact) -> Result<(), OciError> {
        let repo = self.target.reference(oci::REPOSITORY);
        self.rt.block_on(self.client.auth(&repo, &self.auth, RegistryOperation::Push)).map_err(self.err(&repo))?;
        for blob in &artifact.blobs {
            let exists = self.rt.block_on(self.client.blob_exists(&repo, blob.digest.as_str())).unwrap_or(false);
            if !exists {
                self.rt
                    .block_on(self.client.push_blob(&repo, blob.data.clone(), blob.digest.as_str()))
                    .map_err(self.err(&repo))?;
            }
        }
        let tref = self.target.reference(&artifact.tag);
        let media_type = oci::MANIFEST_MEDIA_TYPE
            .parse()
            .map_err(|_| OciError::Invalid { reference: tref.to_string(), message: "media type".into() })?;
        self.rt
            .block_on(self.client.push_manifest_raw(&tref, artifact.manifest.clone(), media_type))
            .map_err(self.err(&tref))?;
        Ok(())
    }

    /// The image manifest under `tag` (`sha256-<hex>.sig` / `.att`), or
    /// `None` when the registry has no such tag.
    pub fn pull_tagged_manifest(&self, tag: &str) -> Result<Option<Vec<u8>>, OciError> {
        self.manifest(&self.target.reference(tag), &[oci::MANIFEST_MEDIA_TYPE])
    }

    /// A small blob (a signature payload, an envelope) of this repository,
    /// at most `max` bytes (the transfer stops there) and checked against
    /// its digest.
    pub fn pull_small_blob(&self, digest: &Digest, max: usize) -> Result<Vec<u8>, OciError> {
        let repo = self.target.reference(oci::REPOSITORY);
        let mut out = BoundedBuffer { data: Vec::new(), max };
        self.rt.block_on(self.client.pull_blob(&repo, digest.as_str(), &mut out)).map_err(self.err(&repo))?;
        Ok(out.data)
    }
}

/// An in-memory sink that refuses to grow past `max`.
struct BoundedBuffer {
    data: Vec<u8>,
    max: usize,
}

impl tokio::io::AsyncWrite for BoundedBuffer {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.data.len() + buf.len() > self.max {
            let max = self.max;
            return std::task::Poll::Ready(Err(std::io::Error::other(format!("blob is larger than {max} bytes"))));
        }
        self.data.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

fn annotation(manifest: &[u8], key: &str) -> Option<String> {
    serde_json::from_slice::<Value>(manifest).ok()?["annotations"][key].as_str().map(str::to_owned)
}

fn is_not_found(e: &oci_client::errors::OciDistributionError) -> bool {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode as C};
    match e {
        E::ImageManifestNotFoundError(_) => true,
        E::RegistryError { envelope, .. } => {
            envelope.errors.iter().any(|x| matches!(x.code, C::ManifestUnknown | C::NameUnknown))
        }
        E::ServerError { code, .. } => *code == 404,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = OciTarget::parse("oci://127.0.0.1:5000/acme/fleet").unwrap();
        assert_eq!((t.registry.as_str(), t.repository().as_str()), ("127.0.0.1:5000", "acme/fleet/tracee-bpf"));
        assert!(t.is_loopback());
        assert!(!OciTarget::parse("oci://registry.example/x").unwrap().is_loopback());
        for bad in ["http://x/y", "oci://x", "oci:///y", "oci://x/"] {
            assert!(OciTarget::parse(bad).is_err(), "{bad}");
        }
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
