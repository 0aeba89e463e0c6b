//! `bpfarm-registry mirror`: an incremental sync from an upstream bpfarm
//! registry (its `/v1` list and blobs) into this data folder, for a DMZ
//! host that an air-gapped site then reads.
//!
//! Only what is missing is fetched: an object whose identity already has
//! the same digest here is skipped, a blob already stored is not fetched
//! again. Every read goes through bpfarm_object's transport (TLS with the
//! system roots and `--ca-cert`, plain http only to loopback or with
//! `--insecure`, one deadline per request, bodies capped at the size the
//! metadata names), every blob is verified against its digest by the
//! client and again by the store, and becomes visible whole or not at all;
//! an object is then published through the `/v1` rules, replacing an older
//! object of its identity as the upstream did. Interrupted, a rerun
//! completes: what was stored is skipped.
//!
//! Signatures come along: the `.sig` and `.intoto.jsonl` an entry names
//! are fetched (capped as the agent caps them, digest-checked) and held to
//! the object and to the registry's `--trusted-key` (`signatures::
//! check_bytes`) and to the copy rules (`publish::carried_verdict`: never a
//! signed object replaced by an unsigned one, never a held object's
//! signatures swapped unless trusted keys verify the new ones) before any
//! byte of the object is stored; `publish_carried` checks it all again in
//! the write transaction. A refused object is reported and skipped, the
//! sync goes on.

use std::path::PathBuf;
use std::time::Duration;

use bpfarm_object::Digest;
use bpfarm_object::ObjectMetadata;
use bpfarm_object::client::{BlobRef as ClientBlobRef, RegistryClient};
use bpfarm_object::http::TransportError;
use bpfarm_object::http::{Overflow, Transport, TransportConfig};
use bpfarm_object::sign::{
    Attached, BlobRef, MAX_ATTESTATION_BLOB, MAX_SIGNATURE_BLOB, ManifestSignature, VerifyError, WireManifestSignature,
    cosign,
};
use serde_json::Value;

use crate::error::Error;
use crate::publish::{self, Outcome};
use crate::repo::SignatureRow;
use crate::signatures;
use crate::state::AppState;

/// Objects asked for per page of the upstream's list.
const PAGE: u32 = 200;
/// Cap on one page of the upstream's list.
const PAGE_LIMIT: u64 = 32 << 20;

#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// `http(s)://HOST[:PORT]` of a bpfarm registry, or
    /// `oci://HOST[:PORT]/NAMESPACE` of an OCI registry (for
    /// `oci_mirror::mirror`).
    pub from: String,
    /// A read token for it.
    pub token: Option<String>,
    pub ca_certs: Vec<PathBuf>,
    pub insecure: bool,
    /// Deadline of one request.
    pub timeout: Duration,
    /// Largest object fetched.
    pub max_blob_bytes: u64,
}

impl MirrorConfig {
    /// The HTTP transport to the upstream, as the flags set it.
    pub(crate) fn transport(&self) -> Result<Transport, TransportError> {
        Transport::new(TransportConfig {
            ca_certs: self.ca_certs.clone(),
            insecure: self.insecure,
            timeout: self.timeout,
            max_object_bytes: self.max_blob_bytes,
            ..Default::default()
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error(
        "{0} is neither a bpfarm registry URL (http(s)://HOST[:PORT]) nor an OCI target (oci://HOST[:PORT]/NAMESPACE)"
    )]
    Source(String),
    /// An OCI upstream (`oci://`): its answers, or reaching it.
    #[error(transparent)]
    Oci(bpfarm_object::oci_client::OciError),
    /// What the upstream serves is refused (a lying digest or size, an
    /// endless list, a bad graph, the signing policy): nothing of it was
    /// stored.
    #[error("{0}")]
    Refused(String),
    #[error("{what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
    #[error(transparent)]
    Transport(#[from] bpfarm_object::http::TransportError),
    #[error(transparent)]
    Client(#[from] bpfarm_object::client::ClientError),
    #[error("{url}: {message}")]
    Upstream { url: String, message: String },
    #[error("{url}: no answer within {}s (--timeout)", .after.as_secs())]
    Timeout { url: String, after: Duration },
    #[error(transparent)]
    Registry(#[from] Error),
    #[error("the mirror task: {0}")]
    Task(String),
}

impl MirrorError {
    /// Whether the upstream's content was refused (exit status 1), rather
    /// than the sync failing (2).
    pub fn is_refusal(&self) -> bool {
        match self {
            MirrorError::Refused(_) => true,
            MirrorError::Oci(bpfarm_object::oci_client::OciError::Invalid { .. }) => true,
            MirrorError::Registry(e) => refusal(e),
            _ => false,
        }
    }
}

/// What a mirror run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorReport {
    /// Blobs fetched (and verified).
    pub fetched: usize,
    pub bytes: u64,
    /// Objects already here with the same digest.
    pub present: usize,
    /// Objects made current (new or replacing), or newly signed.
    pub published: usize,
    /// Objects the signing policy refused, each with the reason (nothing
    /// of them was stored; the sync went on).
    pub refused: Vec<String>,
    pub warnings: Vec<String>,
}

/// Syncs `state` from `config.from` (see the module docs).
pub async fn mirror(state: &AppState, config: &MirrorConfig) -> Result<MirrorReport, MirrorError> {
    on_blocking_thread(state, config, run).await
}

/// A mirror's sync as `mirror` and `oci_mirror::mirror` run it: the
/// transport owns a runtime of its own, so `sync` is driven (and the
/// transport dropped) from a blocking thread, and its storage calls go
/// back to this runtime through the handle it is given.
pub(crate) async fn on_blocking_thread(
    state: &AppState,
    config: &MirrorConfig,
    sync: fn(&tokio::runtime::Handle, &AppState, &MirrorConfig) -> Result<MirrorReport, MirrorError>,
) -> Result<MirrorReport, MirrorError> {
    let handle = tokio::runtime::Handle::current();
    let state = state.clone();
    let config = config.clone();
    tokio::task::spawn_blocking(move || sync(&handle, &state, &config))
        .await
        .map_err(|e| MirrorError::Task(e.to_string()))?
}

fn run(h: &tokio::runtime::Handle, state: &AppState, config: &MirrorConfig) -> Result<MirrorReport, MirrorError> {
    let base = config.from.trim_end_matches('/').to_owned();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(MirrorError::Source(config.from.clone()));
    }
    let transport = config.transport()?;
    let mut report = MirrorReport::default();
    if let Some(w) = transport.check_url(&base)? {
        report.warnings.push(w);
    }
    let client = RegistryClient::new(&base, config.token.clone(), &transport)?;
    let headers: Vec<(String, String)> =
        config.token.iter().map(|t| ("Authorization".to_owned(), format!("Bearer {t}"))).collect();
    let canonical = state.settings.canonical_repo();
    let within = |url: &str| {
        let after = config.timeout;
        let url = url.to_owned();
        move || MirrorError::Timeout { url, after }
    };
    let mut after = 0i64;
    loop {
        let url = format!("{base}/v1/objects?limit={PAGE}&after={after}");
        let r =
            transport.within(transport.get(&url, &headers, PAGE_LIMIT, Overflow::Error)).ok_or_else(within(&url))??;
        if r.status != 200 {
            return Err(MirrorError::Upstream { url, message: format!("HTTP {}: {}", r.status, r.message()) });
        }
        let page: Value = serde_json::from_slice(r.body())
            .map_err(|e| MirrorError::Upstream { url: url.clone(), message: format!("the list is not JSON: {e}") })?;
        let entries = page["objects"].as_array().ok_or_else(|| MirrorError::Upstream {
            url: url.clone(),
            message: "the list has no objects array".into(),
        })?;
        for e in entries {
            let meta: ObjectMetadata = serde_json::from_value(e.clone()).map_err(|err| MirrorError::Upstream {
                url: url.clone(),
                message: format!("an entry is not object metadata: {err}"),
            })?;
            // Only what a /v1 answer names: the `.sig` and `.intoto.jsonl`.
            let named: Attached = serde_json::from_value(e.clone()).map_err(|err| MirrorError::Upstream {
                url: url.clone(),
                message: format!("{}: its signature or attestation reference is unreadable: {err}", meta.file_name),
            })?;
            let attached = Attached { manifest_signature: None, ..named };
            match one(h, state, config, &transport, &client, &base, &canonical, &meta, &attached, &mut report) {
                Ok(()) => {}
                Err(MirrorError::Registry(e)) if refusal(&e) => {
                    let id = &meta.identity;
                    report.refused.push(format!("{} ({}) {}: {e}", id.kernel_release, id.arch, id.version));
                }
                Err(e) => return Err(e),
            }
        }
        match page["next"].as_i64() {
            Some(n) if n > after => after = n,
            Some(_) => {
                return Err(MirrorError::Upstream { url, message: "the list's next cursor does not advance".into() });
            }
            None => break,
        }
    }
    Ok(report)
}

/// Whether a publish error is the signing policy refusing one object (the
/// sync goes on) rather than a failure (it stops).
fn refusal(e: &Error) -> bool {
    matches!(
        e,
        Error::Unsigned(_)
            | Error::SignatureRefused { .. }
            | Error::SignatureForm { .. }
            | Error::SignaturesDiffer { .. }
            | Error::WouldDropSignature { .. }
            | Error::SignaturesHeld { .. }
            | Error::BadRequest(_)
    )
}

/// Syncs one object of the upstream's list. The signing policy is applied
/// to what the list names and the attachments' bytes before anything is
/// fetched into the store, so a refused object leaves no trace here.
#[allow(clippy::too_many_arguments)]
fn one(
    h: &tokio::runtime::Handle,
    state: &AppState,
    config: &MirrorConfig,
    transport: &Transport,
    client: &RegistryClient,
    base: &str,
    canonical: &str,
    meta: &ObjectMetadata,
    attached: &Attached,
    report: &mut MirrorReport,
) -> Result<(), MirrorError> {
    let id = &meta.identity;
    let keys = state.settings.trusted_keys.as_ref();
    let here = h.block_on(state.repo.current(&id.kernel_release, id.arch.uname(), &id.version)).map_err(Error::from)?;
    let held = match &here {
        Some(row) => h.block_on(state.repo.signatures(row.id)).map_err(Error::from)?,
        None => None,
    };
    if let Some(row) = &here
        && row.digest == meta.digest.as_str()
    {
        let same = |held: &SignatureRow| {
            let view = signatures::attached_view(held);
            view.signature == attached.signature && view.attestation == attached.attestation
        };
        // The same object: nothing to carry, or what it carries is here.
        if attached.signature.is_none() || held.as_ref().is_some_and(same) {
            report.present += 1;
            return Ok(());
        }
    }
    let within = |url: String| {
        let after = config.timeout;
        move || MirrorError::Timeout { url, after }
    };
    // The attachments, capped as the agent caps them and digest-checked.
    for (what, r, max) in [
        ("signature", &attached.signature, MAX_SIGNATURE_BLOB),
        ("attestation", &attached.attestation, MAX_ATTESTATION_BLOB),
    ] {
        if let Some(r) = r
            && r.size > max
        {
            let source = VerifyError::TooLarge { what, len: r.size as usize, max: max as usize };
            return Err(Error::SignatureForm { what, source }.into());
        }
    }
    let fetch = |r: &BlobRef, cap: u64| -> Result<Vec<u8>, MirrorError> {
        let url = format!("{base}/v1/blobs/{}", r.digest);
        let want = ClientBlobRef { digest: r.digest.clone(), size: r.size };
        Ok(transport.within(client.fetch_attachment(&want, cap)).ok_or_else(within(url))??)
    };
    let sig = attached.signature.as_ref().map(|r| fetch(r, MAX_SIGNATURE_BLOB)).transpose()?;
    let att = match (&attached.signature, &attached.attestation) {
        (Some(_), Some(r)) => Some(fetch(r, MAX_ATTESTATION_BLOB)?),
        _ => None,
    };
    // The cosign signature of the object's manifest, from the upstream's
    // /v2, so this registry's `.sig` tag (what `cosign verify` and OCI
    // readers check) survives the copy. Best effort: the files above are
    // what the policy rests on.
    let mut attached = attached.clone();
    if attached.signature.is_some() {
        let found = upstream_manifest_signature(transport, config, base, canonical, meta, keys)?;
        attached.manifest_signature = found.as_ref().map(WireManifestSignature::from);
    }
    let attached = &attached;
    let checked = signatures::check_bytes(meta, attached, sig.as_deref(), att.as_deref(), keys)?;
    if let Some(row) = &here {
        publish::carried_verdict(&row.digest, held.as_ref(), meta, checked.as_ref(), keys.is_some())?;
    }
    // Passed: now the bytes.
    if h.block_on(state.blobs.size(&meta.digest)).is_none() {
        let blob_url = format!("{base}/v1/blobs/{}", meta.digest);
        let bytes = transport.within(client.fetch_object(meta)).ok_or_else(within(blob_url))??.into_bytes();
        let n = bytes.len() as u64;
        let body = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(bytes))]);
        h.block_on(state.blobs.put(&meta.digest, body, config.max_blob_bytes)).map_err(Error::from)?;
        report.fetched += 1;
        report.bytes += n;
    }
    for b in sig.iter().chain(&att) {
        h.block_on(state.blobs.put_bytes(b)).map_err(Error::from)?;
    }
    let outcome = h.block_on(publish::publish_carried(&state.repo, &state.blobs, canonical, meta, attached, keys))?;
    if outcome != Outcome::Unchanged {
        report.published += 1;
    }
    Ok(())
}

/// The first simple-signing layer of the upstream's `sha256-<hex>.sig` tag
/// for `meta`'s manifest that names that manifest (and, with `keys`,
/// verifies); `None` when there is none. Manifest and payload are capped
/// and digest-checked.
fn upstream_manifest_signature(
    transport: &Transport,
    config: &MirrorConfig,
    base: &str,
    repo: &str,
    meta: &ObjectMetadata,
    keys: Option<&bpfarm_object::sign::TrustedKeys>,
) -> Result<Option<ManifestSignature>, MirrorError> {
    let subject = signatures::manifest_digest(meta);
    let mut headers: Vec<(String, String)> =
        config.token.iter().map(|t| ("Authorization".to_owned(), format!("Bearer {t}"))).collect();
    headers.push(("Accept".to_owned(), bpfarm_object::oci::MANIFEST_MEDIA_TYPE.to_owned()));
    let get = |url: String, cap: u64| -> Result<Option<Vec<u8>>, MirrorError> {
        let after = config.timeout;
        let r = transport
            .within(transport.get(&url, &headers, cap, Overflow::Error))
            .ok_or_else(|| MirrorError::Timeout { url: url.clone(), after })?;
        match r {
            Ok(r) if r.status == 200 => Ok(Some(r.into_body())),
            Ok(_) | Err(TransportError::TooLarge { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    };
    let tag = cosign::signature_tag(&subject);
    let Some(bytes) = get(format!("{base}/v2/{repo}/manifests/{tag}"), cosign::MAX_MANIFEST as u64)? else {
        return Ok(None);
    };
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    for l in v["layers"].as_array().into_iter().flatten().take(cosign::MAX_LAYERS) {
        let (Some(d), Some(sig)) = (
            l["digest"].as_str().and_then(|d| d.parse::<Digest>().ok()),
            l["annotations"][cosign::ANN_SIGNATURE].as_str(),
        ) else {
            continue;
        };
        if l["mediaType"] != cosign::SIMPLE_SIGNING_MEDIA_TYPE {
            continue;
        }
        let Some(payload) = get(format!("{base}/v2/{repo}/blobs/{d}"), cosign::MAX_PAYLOAD)? else { continue };
        if Digest::of_bytes(&payload) != d {
            continue;
        }
        let s = ManifestSignature { payload, signature: sig.to_owned() };
        let fits = match keys {
            Some(keys) => s.verify(keys, &subject).is_ok(),
            None => s.subject().is_ok_and(|named| named == subject),
        };
        if fits {
            return Ok(Some(s));
        }
    }
    Ok(None)
}
