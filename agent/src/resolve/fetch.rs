//! The registries, one attempt each within `--timeout`: an OCI image
//! layout folder (`oci-layout:DIR`, what `bpfarm-registry bundle` writes,
//! unpacked), an OCI registry (`oci://`), else a bpfarm registry through its `/v1` API, else any HTTP
//! server with the static layout. Every fetcher hands back typed metadata
//! and bytes already checked against the registry's digest and size; the
//! caller verifies them like every other candidate.

use std::fmt;

use bpfarm_object::client::{ClientError, Lookup, LookupObject, RegistryClient};
use bpfarm_object::http::{Transport, TransportError};
use bpfarm_object::oci_client::{OciError, OciRegistry, OciTarget, credentials};
use bpfarm_object::oci_layout::{LayoutError, OciLayout};
use bpfarm_object::{Digest, Hashed, ObjectMetadata, Origin};

use super::ResolveConfig;

/// What one registry had.
#[derive(Debug)]
pub enum Fetched {
    /// Metadata and bytes (checked against the registry's digest and size),
    /// and how they came.
    /// `evidence`: its signature and provenance, as they came (#11).
    /// The bytes come with the digest computed over them as they arrived.
    Got { metadata: Box<ObjectMetadata>, bytes: Hashed, via: Via, evidence: Box<crate::verify::Evidence> },
    /// `locate`: the registry has it (nothing was downloaded); `signed`
    /// when the registry said whether it is.
    Available { digest: Digest, via: Via, signed: Option<bool> },
}

/// How an object came, for the trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// An OCI registry's repository, checked against its manifest.
    Oci { repository: String },
    /// A bpfarm registry's `/v1` API.
    V1,
    /// The static layout (`<version>/<arch>/<file>` and its `.sha256`).
    StaticLayout,
    /// An OCI image layout folder, checked against its manifest.
    OciLayout,
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Via::Oci { repository } => write!(f, "fetched from {repository}, verified against its manifest"),
            Via::V1 => f.write_str("fetched through its /v1 API, matching the registry's digest"),
            Via::StaticLayout => f.write_str("fetched from its static layout, matching its .sha256"),
            Via::OciLayout => f.write_str("read from the OCI layout, verified against its manifest"),
        }
    }
}

impl Fetched {
    /// `locate`'s line for a registry that has the object.
    pub fn would(digest: &Digest, via: &Via, signed: Option<bool>) -> String {
        let signed = match signed {
            Some(true) => ", signed",
            Some(false) => ", unsigned",
            None => "",
        };
        match via {
            Via::StaticLayout => format!("static layout has it ({digest}{signed}); would fetch and install it"),
            _ => format!("has it ({digest}{signed}); would fetch and install it"),
        }
    }
}

/// Why a registry gave nothing. The wording is the trail's.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("gave up: no complete answer within {0}s (--timeout); trying the next place")]
    Timeout(f64),
    #[error("refused: {0}")]
    Oci(#[source] OciError),
    #[error("no {file} for this kernel and arch in {repository}")]
    NotInOci { file: String, repository: String },
    #[error("unreachable: {0}")]
    Unreachable(#[source] ClientError),
    #[error("refused: {0}")]
    Refused(#[source] ClientError),
    #[error("no object ({0})")]
    NotFound(String),
    #[error("no /v1 API and no {0} in its static layout")]
    NotInStatic(String),
    #[error("refused: {0}")]
    Layout(#[source] LayoutError),
    #[error("no {0} for this kernel and arch in this OCI layout")]
    NotInLayout(String),
}

impl From<ClientError> for FetchError {
    fn from(e: ClientError) -> Self {
        match &e {
            ClientError::Transport(TransportError::Request { .. }) => FetchError::Unreachable(e),
            _ => FetchError::Refused(e),
        }
    }
}

/// One registry attempt, as a whole within `--timeout`. `look_only`
/// (`locate`) downloads no object.
pub fn fetch_one(
    transport: &Transport,
    base: &str,
    cfg: &ResolveConfig,
    look_only: bool,
) -> Result<Fetched, FetchError> {
    let gave_up = || FetchError::Timeout(transport.config().timeout.as_secs_f64());
    // Under --verify-key, cosign's tags are read within the same deadline
    // (and, in a layout, under the same bounds) as the object.
    let keys = cfg.signing.keys.as_ref();
    if let Some(dir) = base.strip_prefix("oci-layout:") {
        let layout = OciLayout::open(std::path::Path::new(dir), transport.config().max_object_bytes)
            .map_err(FetchError::Layout)?;
        let via = Via::OciLayout;
        return match layout.fetch_with_manifest(&cfg.identity).map_err(FetchError::Layout)? {
            Some((meta, _, _)) if look_only => Ok(Fetched::Available { digest: meta.digest, via, signed: None }),
            Some((meta, bytes, manifest)) => {
                let evidence =
                    transport.within(crate::verify::read_cosign(&layout, manifest, keys)).ok_or_else(gave_up)?;
                Ok(Fetched::Got {
                    metadata: Box::new(meta),
                    bytes: Hashed::new(bytes),
                    via,
                    evidence: Box::new(evidence),
                })
            }
            None => Err(FetchError::NotInLayout(cfg.identity.file_name())),
        };
    }
    if base.starts_with("oci://") {
        let target = OciTarget::parse(base).map_err(FetchError::Oci)?;
        let auth = credentials(&target.registry, None, cfg.registry_token.as_deref());
        let registry = OciRegistry::new(target, auth, transport).map_err(FetchError::Oci)?;
        warn(registry.warning());
        let repository = registry.target().repository();
        let attempt = async {
            let found = registry.fetch_with_manifest(&cfg.identity).await?;
            Ok::<_, OciError>(match found {
                Some((meta, bytes, manifest)) if !look_only => {
                    let evidence = crate::verify::read_cosign(&registry, manifest, keys).await;
                    Some((meta, bytes, Some(evidence)))
                }
                Some((meta, bytes, _)) => Some((meta, bytes, None)),
                None => None,
            })
        };
        let got = transport.within(attempt).ok_or_else(gave_up)?;
        let via = Via::Oci { repository: repository.clone() };
        return match got.map_err(FetchError::Oci)? {
            Some((meta, bytes, Some(evidence))) => Ok(Fetched::Got {
                metadata: Box::new(meta),
                bytes: Hashed::new(bytes),
                via,
                evidence: Box::new(evidence),
            }),
            Some((meta, _, None)) => Ok(Fetched::Available { digest: meta.digest, via, signed: None }),
            None => Err(FetchError::NotInOci { file: cfg.identity.file_name(), repository }),
        };
    }
    let client = RegistryClient::new(base, cfg.registry_token.clone(), transport)?
        .with_headers(cfg.registry_headers.clone())
        .with_retries(3);
    warn(client.warning());
    transport.within(fetch_http(&client, cfg, look_only)).ok_or_else(gave_up)?
}

fn warn(w: Option<&str>) {
    if let Some(w) = w {
        eprintln!("bpfarm-agent: warning: {w}");
    }
}

/// One bpfarm registry: the `/v1` API if it speaks it, else the static layout.
/// A fetch from `/v1` is one round trip when the registry sends the object
/// with its lookup answer, else two (the lookup, then the bytes by digest);
/// from a static layout, the object, its `.sha256`, `.json` and signature
/// files are asked for at once.
async fn fetch_http(client: &RegistryClient, cfg: &ResolveConfig, look_only: bool) -> Result<Fetched, FetchError> {
    let id = &cfg.identity;
    let uname_version = cfg.kernel.uname_version.as_deref();
    let (lookup, attachments) = if look_only {
        client.lookup_signed(id, uname_version).await?
    } else {
        match client.lookup_object(id, uname_version).await? {
            LookupObject::Object { metadata, attachments, bytes } => {
                let evidence = Box::new(crate::verify::read_v1(client, &attachments).await);
                return Ok(Fetched::Got { metadata, bytes, via: Via::V1, evidence });
            }
            LookupObject::Answer(lookup, attachments) => (lookup, attachments),
        }
    };
    match lookup {
        Lookup::Found(meta) if look_only => {
            Ok(Fetched::Available { digest: meta.digest, via: Via::V1, signed: Some(attachments.signature.is_some()) })
        }
        Lookup::Found(meta) => {
            let bytes = client.fetch_object(&meta).await?;
            let evidence = Box::new(crate::verify::read_v1(client, &attachments).await);
            Ok(Fetched::Got { metadata: meta, bytes, via: Via::V1, evidence })
        }
        Lookup::NotFound(msg) => Err(FetchError::NotFound(msg)),
        Lookup::NoApi if look_only => match client.fetch_static(id).await? {
            Some(obj) => Ok(Fetched::Available { digest: obj.digest, via: Via::StaticLayout, signed: None }),
            None => Err(FetchError::NotInStatic(id.file_name())),
        },
        Lookup::NoApi => {
            let (obj, evidence) = tokio::join!(client.fetch_static(id), crate::verify::read_static(client, id));
            match obj? {
                Some(obj) => {
                    let size = obj.bytes.len() as u64;
                    let metadata = obj.metadata.unwrap_or_else(|| {
                        ObjectMetadata::unattested(id.clone(), obj.digest, size, Origin::StaticLayout)
                    });
                    Ok(Fetched::Got {
                        metadata: Box::new(metadata),
                        bytes: obj.bytes,
                        via: Via::StaticLayout,
                        evidence: Box::new(evidence),
                    })
                }
                None => Err(FetchError::NotInStatic(id.file_name())),
            }
        }
    }
}
