//! What a publisher signed for an object (issue #11), and the registry's
//! signing policy. No private key is here: the registry stores, checks
//! and re-serves signatures a builder made.
//!
//! A `/v1` publish may name, beside the metadata (`sign::Attached`), the
//! object's `.sig` and `.intoto.jsonl` (blobs uploaded first) and the
//! cosign signature of its OCI manifest (`oci::manifest`, the same bytes
//! the builder hashed). `check` holds them to the object: sizes within the
//! agent's caps, well-formed, the provenance naming this object, the
//! manifest signature naming this object's manifest; with `--trusted-key`,
//! each must verify with one of the keys and the `.sig` is required.
//! `store` records them on the object row and `write_oci_forms` writes the
//! `sha256-<hex>.sig` and `.att` tags of the object's manifest in the
//! canonical repository, and the `sha256-<hex>.bpfarm` tag carrying the
//! two files themselves (`sign::carrier`, what bundles take across an air
//! gap), all inside the publish's transaction. An attestation must name
//! the object's digest even without keys (`check_bytes`).
//!
//! Through `/v2`, a bpfarm artifact manifest pushed under `--trusted-key`
//! must already have its cosign signature in the repository: the
//! `sha256-<hex>.sig` tag is pushed first (cosign's own layout, which an
//! OCI registry accepts before its subject exists), and `check_v2` verifies
//! it before the artifact is stored.

use bpfarm_object::sign::{
    self, Attached, BlobRef, FILES_ARTIFACT_TYPE, MAX_ATTESTATION_BLOB, MAX_SIGNATURE_BLOB, ManifestSignature,
    SignedProvenance, Subject, TrustedKeys, VerifyError, attestation_artifact, cosign, files_artifact, files_tag,
    signature_artifact,
};
use bpfarm_object::{Digest, ObjectMetadata, oci};

use crate::blobs::{BlobError, BlobStore};
use crate::error::{Error, Result};
use crate::repo::{NewManifest, SignatureRow, WriteTx};

/// Signatures that passed `check`, ready to `store`.
#[derive(Debug, Clone)]
pub struct Checked {
    signature: BlobRef,
    attestation: Option<(BlobRef, SignedProvenance)>,
    manifest: Option<ManifestSignature>,
}

/// A blob the publish names: stored, of that size, within `max`.
async fn named_blob(blobs: &BlobStore, what: &'static str, r: &BlobRef, max: u64) -> Result<Vec<u8>> {
    if r.size > max {
        return Err(Error::SignatureForm {
            what,
            source: VerifyError::TooLarge { what, len: r.size as usize, max: max as usize },
        });
    }
    match blobs.size(&r.digest).await {
        None => return Err(Error::SignatureBlobMissing { what, digest: r.digest.clone() }),
        Some(stored) if stored != r.size => {
            return Err(Error::Size { digest: r.digest.clone(), claimed: r.size, stored });
        }
        Some(_) => {}
    }
    match blobs.read(&r.digest).await {
        Ok(b) => Ok(b),
        Err(BlobError::Missing(d)) => Err(Error::SignatureBlobMissing { what, digest: d }),
        Err(e) => Err(e.into()),
    }
}

/// The digest of `meta`'s platform manifest, as the registry writes it.
pub fn manifest_digest(meta: &ObjectMetadata) -> Digest {
    Digest::of_bytes(&oci::manifest(meta))
}

/// Holds what a publish attached to the object it publishes (see the
/// module docs). `None`: nothing attached (allowed without trusted keys).
pub async fn check(
    blobs: &BlobStore,
    meta: &ObjectMetadata,
    attached: &Attached,
    keys: Option<&TrustedKeys>,
) -> Result<Option<Checked>> {
    let sig = match &attached.signature {
        Some(r) => Some(named_blob(blobs, "signature", r, MAX_SIGNATURE_BLOB).await?),
        None => None,
    };
    let att = match (&attached.signature, &attached.attestation) {
        (Some(_), Some(r)) => Some(named_blob(blobs, "attestation", r, MAX_ATTESTATION_BLOB).await?),
        _ => None,
    };
    check_bytes(meta, attached, sig.as_deref(), att.as_deref(), keys)
}

/// `check` on bytes already in hand (a mirror checks what it fetched, an
/// import what its bundle carries, before storing any of it): `signature`
/// and `attestation` are the bytes `attached` names (the caller has
/// checked their digests and sizes against it).
pub fn check_bytes(
    meta: &ObjectMetadata,
    attached: &Attached,
    signature: Option<&[u8]>,
    attestation: Option<&[u8]>,
    keys: Option<&TrustedKeys>,
) -> Result<Option<Checked>> {
    let refuse = |what: &'static str| move |source: VerifyError| Error::SignatureRefused { what, source };
    let form = |what: &'static str| move |source: VerifyError| Error::SignatureForm { what, source };
    let (Some(sig_ref), Some(sig)) = (&attached.signature, signature) else {
        if keys.is_some() {
            return Err(Error::Unsigned(format!(
                "{} carries no signature; this registry takes only objects signed by a trusted key",
                meta.file_name
            )));
        }
        if !attached.is_empty() {
            return Err(Error::BadRequest(
                "an attestation or manifest signature needs the object's signature beside it".into(),
            ));
        }
        return Ok(None);
    };
    match keys {
        Some(keys) => {
            sign::verify_blob_digest(keys, &meta.digest, sig).map_err(refuse("signature"))?;
        }
        None => {
            sign::blob::check_form(sig).map_err(form("signature"))?;
        }
    }
    let attestation = match (&attached.attestation, attestation) {
        (None, _) => None,
        (Some(r), None) => return Err(Error::SignatureBlobMissing { what: "attestation", digest: r.digest.clone() }),
        (Some(r), Some(bytes)) => {
            let envelopes = SignedProvenance::from_jsonl(bytes).map_err(form("attestation"))?;
            // Held to this object whatever the keys: a statement about
            // other bytes is never attached to these.
            envelopes.check_subject(&meta.digest).map_err(form("attestation"))?;
            if let Some(keys) = keys {
                let v = sign::verify_provenance(keys, bytes, &meta.digest).map_err(refuse("attestation"))?;
                if v.identity != meta.identity {
                    return Err(Error::SignatureRefused {
                        what: "attestation",
                        source: VerifyError::IdentityMismatch {
                            expected: Box::new(meta.identity.clone()),
                            found: Box::new(v.identity),
                        },
                    });
                }
            }
            Some((r.clone(), envelopes))
        }
    };
    let manifest = match &attached.manifest_signature {
        None => None,
        Some(wire) => {
            let s = wire.decode().map_err(form("manifest signature"))?;
            let expected = manifest_digest(meta);
            let named = s.subject().map_err(form("manifest signature"))?;
            if named != expected {
                return Err(Error::SignatureForm {
                    what: "manifest signature",
                    source: VerifyError::SubjectMismatch { expected, found: named.to_string() },
                });
            }
            if let Some(keys) = keys {
                s.verify(keys, &expected).map_err(refuse("manifest signature"))?;
            }
            Some(s)
        }
    };
    Ok(Some(Checked { signature: sig_ref.clone(), attestation, manifest }))
}

/// Whether storing `checked` would change what `row` records: another
/// signature, attestation or manifest signature (the payload is compared
/// by its digest).
pub fn differs(row: &SignatureRow, checked: &Checked) -> bool {
    let payload = checked.manifest.as_ref().map(|m| Digest::of_bytes(&m.payload).to_string());
    row.signature_digest != checked.signature.digest.as_str()
        || row.attestation_digest.as_deref() != checked.attestation.as_ref().map(|(r, _)| r.digest.as_str())
        || row.payload_digest != payload
        || row.manifest_signature.as_deref() != checked.manifest.as_ref().map(|m| m.signature.as_str())
}

/// Records `checked` on object row `object_id` (its payload becomes a blob).
pub async fn store(tx: &mut WriteTx, blobs: &BlobStore, object_id: i64, checked: &Checked) -> Result<()> {
    let payload = match &checked.manifest {
        Some(m) => Some(blobs.put_bytes(&m.payload).await?),
        None => None,
    };
    let size = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    tx.set_signatures(&SignatureRow {
        object_id,
        signature_digest: checked.signature.digest.to_string(),
        signature_size: size(checked.signature.size),
        attestation_digest: checked.attestation.as_ref().map(|(r, _)| r.digest.to_string()),
        attestation_size: checked.attestation.as_ref().map(|(r, _)| size(r.size)),
        payload_digest: payload.map(|d| d.to_string()),
        manifest_signature: checked.manifest.as_ref().map(|m| m.signature.clone()),
    })
    .await?;
    Ok(())
}

/// The `/v1` fields of a signature row.
pub fn attached_view(row: &SignatureRow) -> Attached {
    let blob = |d: &str, n: i64| Some(BlobRef { digest: d.parse().ok()?, size: u64::try_from(n).ok()? });
    Attached {
        signature: blob(&row.signature_digest, row.signature_size),
        attestation: row.attestation_digest.as_deref().zip(row.attestation_size).and_then(|(d, n)| blob(d, n)),
        manifest_signature: None,
    }
}

async fn stored(blobs: &BlobStore, digest: &str) -> Result<Option<Vec<u8>>> {
    let Ok(d) = digest.parse::<Digest>() else { return Ok(None) };
    match blobs.read(&d).await {
        Ok(b) => Ok(Some(b)),
        Err(BlobError::Missing(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn put_artifact(
    tx: &mut WriteTx,
    blobs: &BlobStore,
    repo: &str,
    a: &cosign::OciArtifact,
    artifact_type: &str,
    subject: &Digest,
) -> Result<()> {
    for b in &a.blobs {
        blobs.put_bytes(&b.data).await?;
        tx.link(repo, b.digest.as_str()).await?;
    }
    let digest = blobs.put_bytes(&a.manifest).await?;
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    tx.put_manifest(&NewManifest {
        repo,
        digest: digest.as_str(),
        media_type: oci::MANIFEST_MEDIA_TYPE,
        size: a.manifest.len() as i64,
        artifact_type: Some(artifact_type),
        subject: Some(subject.as_str()),
        annotations: None,
        tag: Some(&a.tag),
        now: &now,
    })
    .await?;
    Ok(())
}

/// Writes the cosign `.sig` and `.att` tags of `meta`'s manifest in `repo`
/// from what `row` recorded (inside the caller's transaction). A stored
/// part whose bytes are gone is skipped with a warning (fsck reports it).
pub async fn write_oci_forms(
    tx: &mut WriteTx,
    blobs: &BlobStore,
    repo: &str,
    meta: &ObjectMetadata,
    row: &SignatureRow,
) -> Result<()> {
    let subject = Subject::manifest(&oci::manifest(meta));
    if let (Some(payload), Some(signature)) = (&row.payload_digest, &row.manifest_signature) {
        match stored(blobs, payload).await? {
            Some(payload) => {
                let s = ManifestSignature { payload, signature: signature.clone() };
                let a = signature_artifact(&subject, std::slice::from_ref(&s));
                put_artifact(tx, blobs, repo, &a, cosign::SIGNATURE_ARTIFACT_TYPE, &subject.digest).await?;
            }
            None => tracing::warn!(%payload, "the manifest signature's payload is missing; no .sig tag written"),
        }
    }
    // The `.sig` and `.intoto.jsonl` files themselves, for bundles.
    let sig = stored(blobs, &row.signature_digest).await?;
    let att = match &row.attestation_digest {
        Some(d) => stored(blobs, d).await?.map(Some),
        None => Some(None),
    };
    match (sig, att) {
        (Some(sig), Some(att)) => {
            let a = files_artifact(&subject, &meta.file_name, &sig, att.as_deref());
            put_artifact(tx, blobs, repo, &a, FILES_ARTIFACT_TYPE, &subject.digest).await?;
        }
        _ => tracing::warn!(object = %meta.file_name, "a signature file is missing; no .bpfarm tag written"),
    }
    if let Some(att) = &row.attestation_digest {
        match stored(blobs, att).await?.map(|b| SignedProvenance::from_jsonl(&b)) {
            Some(Ok(p)) => {
                let a = attestation_artifact(&subject, &p);
                put_artifact(tx, blobs, repo, &a, cosign::DSSE_MEDIA_TYPE, &subject.digest).await?;
            }
            Some(Err(e)) => tracing::warn!(%att, "the attestation does not read: {e}; no .att tag written"),
            None => tracing::warn!(%att, "the attestation is missing; no .att tag written"),
        }
    }
    Ok(())
}

/// Under `--trusted-key`, a bpfarm artifact pushed through `/v2` must
/// have a valid cosign signature already under `sha256-<hex>.sig` of its
/// manifest `manifest` in `repo` (inside the push's transaction).
pub async fn check_v2(
    tx: &mut WriteTx,
    blobs: &BlobStore,
    repo: &str,
    manifest: &Digest,
    keys: &TrustedKeys,
) -> Result<()> {
    let tag = cosign::signature_tag(manifest);
    let Some(m) = tx.manifest(repo, &tag).await? else {
        return Err(Error::Unsigned(format!(
            "{repo}@{manifest} has no signature: push its cosign signature to tag {tag} first; this registry takes only objects signed by a trusted key"
        )));
    };
    let sig_digest: Digest = m.digest.parse()?;
    let bytes = match blobs.read(&sig_digest).await {
        Ok(b) => b,
        Err(BlobError::Missing(d)) => {
            return Err(Error::SignatureBlobMissing { what: "signature manifest", digest: d });
        }
        Err(e) => return Err(e.into()),
    };
    verify_v2_signature(tx, blobs, repo, manifest, &bytes, keys).await
}

/// Verifies cosign signature manifest `bytes` of manifest `manifest` in
/// `repo` against `keys`, its layers read from `repo`'s blobs.
pub async fn verify_v2_signature(
    tx: &mut WriteTx,
    blobs: &BlobStore,
    repo: &str,
    manifest: &Digest,
    bytes: &[u8],
    keys: &TrustedKeys,
) -> Result<()> {
    // Layers are read from this repository only, within the bound the
    // verifier passes, from bytes the blob store checked when they came.
    let mut layers = Vec::new();
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) {
        for l in v["layers"].as_array().into_iter().flatten().take(cosign::MAX_LAYERS) {
            let Some(d) = l["digest"].as_str().and_then(|d| d.parse::<Digest>().ok()) else { continue };
            let linked = tx.linked(repo, d.as_str()).await?;
            let small = blobs.size(&d).await.is_some_and(|n| n <= cosign::MAX_PAYLOAD);
            if linked
                && small
                && let Some(b) = stored(blobs, d.as_str()).await?
            {
                layers.push((d, b));
            }
        }
    }
    let mut fetch = |d: &Digest| -> Result<Vec<u8>, sign::FetchError> {
        layers
            .iter()
            .find(|(l, _)| l == d)
            .map(|(_, b)| b.clone())
            .ok_or_else(|| format!("{repo} has no blob {d}").into())
    };
    sign::verify_signature_manifest(keys, manifest, bytes, &mut fetch)
        .map_err(|source| Error::SignatureRefused { what: "signature manifest", source })?;
    Ok(())
}

/// For fsck: what of an object's signed forms is missing — the `.sig` and
/// `.att` tags its row calls for, and their manifests' bytes. Empty when
/// all is there.
pub async fn missing_forms(
    repo: &crate::repo::Repo,
    blobs: &BlobStore,
    oci_repo: &str,
    meta: &ObjectMetadata,
    row: &SignatureRow,
) -> Result<Vec<String>> {
    let subject = manifest_digest(meta);
    let mut wanted = Vec::new();
    if row.payload_digest.is_some() && row.manifest_signature.is_some() {
        wanted.push(cosign::signature_tag(&subject));
    }
    if row.attestation_digest.is_some() {
        wanted.push(cosign::attestation_tag(&subject));
    }
    wanted.push(files_tag(&subject));
    let mut missing = Vec::new();
    for tag in wanted {
        match repo.oci_manifest(oci_repo, &tag).await? {
            None => missing.push(format!("{oci_repo} has no tag {tag}")),
            Some(m) => {
                let present = match m.digest.parse::<Digest>() {
                    Ok(d) => blobs.size(&d).await.is_some(),
                    Err(_) => false,
                };
                if !present {
                    missing.push(format!("the bytes of {oci_repo}:{tag} ({}) are missing", m.digest));
                }
            }
        }
    }
    Ok(missing)
}
