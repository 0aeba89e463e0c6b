//! Signing and offline verification of objects, in the formats cosign
//! checks, with keys the operator holds (no Sigstore services: no Fulcio,
//! no Rekor, nothing online).
//!
//! # What is signed, and how
//!
//! | what | form | where it lives | checked by |
//! |---|---|---|---|
//! | the object file | `cosign sign-blob`: base64 DER ECDSA P-256 over SHA-256 of the file | `<file>.sig` | [`verify_blob`], `cosign verify-blob` |
//! | its provenance | in-toto statement, SLSA provenance v1 (and a v0.2 twin), in a DSSE envelope | `<file>.intoto.jsonl` | [`verify_provenance`] |
//! | its OCI manifest | cosign "simple signing" payload | tag `sha256-<hex>.sig` | [`verify_signature_manifest`], `cosign verify` |
//! | the provenance, in OCI | the same envelopes as layers | tag `sha256-<hex>.att` | [`verify_attestation_manifest`], `cosign verify-attestation` |
//! | the `.sig` and `.intoto.jsonl` files, in OCI | a bpfarm artifact carrying both ([`carrier`]) | tag `sha256-<hex>.bpfarm` | what they carry |
//!
//! Keys are ECDSA P-256 ([`keys`]): PKCS#8 or SEC1 PEM as `openssl` writes
//! them, or cosign's encrypted `cosign.key` (password from
//! `COSIGN_PASSWORD`); public keys are SPKI PEM (`cosign.pub`). A
//! [`TrustedKeys`] set verifies a signature by any one of its keys, for
//! rotation. Signatures are deterministic (RFC 6979), so everything here is
//! byte-reproducible for the same key and input.
//!
//! The provenance carries the build time (`runDetails.metadata.finishedOn`)
//! under the signature: [`VerifiedProvenance::built_at`] is what rollback
//! protection compares, per [`Identity`].
//!
//! # One call per part
//!
//! - builder: [`SigningKey::load`], then [`sign_object`] for the files
//!   beside the object; when publishing to OCI, [`sign_manifest`] +
//!   [`signature_artifact`] and [`attestation_artifact`] give the manifests
//!   and blobs to push.
//! - registry (`--trusted-key`): [`TrustedKeys::load`], then
//!   [`verify_blob_digest`] for a `/v1` publish (it knows the stored
//!   blob's digest) or [`verify_signature_manifest`] for `/v2`.
//! - agent (`--verify-key`): [`verify_object`] on the exact bytes it will
//!   load, with the `.sig` and, when present, the `.intoto.jsonl`.
//!
//! No private key is needed to verify, to assemble the OCI artifacts from
//! stored signatures, or anywhere but in the builder.

pub mod attached;
pub mod blob;
pub mod carrier;
pub mod cosign;
pub mod dsse;
pub mod evidence;
pub mod keys;
pub mod provenance;

pub use attached::{Attached, BlobRef, MAX_ATTESTATION_BLOB, MAX_SIGNATURE_BLOB, WireManifestSignature};
pub use blob::{sign_blob, sign_blob_digest, verify_blob, verify_blob_digest};
pub use carrier::{CarriedFiles, FILES_ARTIFACT_TYPE, files_artifact, files_tag, read_files_artifact};
pub use cosign::{
    FetchError, LayerRef, ManifestSignature, OciArtifact, OciBlob, Subject, attestation_artifact, attestation_layers,
    attestation_tag, sign_manifest, signature_artifact, signature_layers, signature_tag, simple_signing_payload,
    verify_attestation_envelope, verify_attestation_manifest, verify_signature_manifest,
};
pub use dsse::Envelope;
pub use evidence::{EVIDENCE_SUFFIX, OciEvidence, VerifiedEvidence};
pub use keys::{KeyError, KeyId, PublicKey, SigningKey, TrustedKeys};
pub use provenance::{BuilderInfo, SignedProvenance, VerifiedProvenance, sign_provenance, verify_provenance};

use crate::{Digest, Identity, ObjectMetadata};

/// Which trusted key made a signature that verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub key_id: KeyId,
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("ECDSA signing failed")]
    Ecdsa,
    #[error("the build time {0:?} is not an RFC 3339 UTC time (e.g. 2026-01-01T00:00:00Z)")]
    BuiltAt(String),
    #[error("serializing the statement: {0}")]
    Json(String),
    #[error(
        "the metadata names {expected} ({expected_size} bytes), but the bytes to sign are {found} ({found_size} bytes)"
    )]
    ObjectMismatch { expected: Digest, expected_size: u64, found: Digest, found_size: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the signature is empty")]
    EmptySignature,
    #[error("the signature is {len} bytes; a P-256 signature is under {max}")]
    SignatureTooLong { len: usize, max: usize },
    #[error("the signature is not base64: {0}")]
    Base64(String),
    #[error("the signature is not a DER-encoded ECDSA P-256 signature")]
    Der,
    #[error("the signature does not verify with any trusted key (tried {keys})")]
    NoKeyMatched { keys: String },
    #[error("no signature")]
    NoSignature,
    #[error("no SLSA provenance v1 statement")]
    NoProvenance,
    #[error("{what} is {len} bytes, over the limit of {max}")]
    TooLarge { what: &'static str, len: usize, max: usize },
    #[error("{what} is malformed: {reason}")]
    Format { what: &'static str, reason: String },
    #[error("payload type {found:?}, expected {expected:?}")]
    PayloadType { expected: String, found: String },
    #[error("the signed statement is for {found}, not {expected}")]
    SubjectMismatch { expected: Digest, found: String },
    #[error("the signed provenance is for {found:?}, not {expected:?}")]
    IdentityMismatch { expected: Box<Identity>, found: Box<Identity> },
    #[error("the signed build time {0:?} is not RFC 3339")]
    BuiltAt(String),
    #[error("fetching {digest}")]
    Fetch {
        digest: Digest,
        #[source]
        source: FetchError,
    },
    #[error("blob {expected} has different bytes ({found})")]
    BlobMismatch { expected: Digest, found: Digest },
    #[error("no layer verifies: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    NoLayerVerified(Vec<VerifyError>),
}

/// What the builder writes beside an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedObject {
    /// `<file>.sig`.
    pub signature: String,
    /// `<file>.intoto.jsonl` (see [`SignedProvenance::to_jsonl`]).
    pub provenance: SignedProvenance,
}

/// File name suffixes of what [`sign_object`] makes.
pub const SIGNATURE_SUFFIX: &str = ".sig";
pub const PROVENANCE_SUFFIX: &str = ".intoto.jsonl";

/// Signs an object's exact bytes and its provenance. Refuses metadata that
/// does not describe `bytes`.
pub fn sign_object(
    key: &SigningKey,
    meta: &ObjectMetadata,
    bytes: &[u8],
    builder: &BuilderInfo,
) -> Result<SignedObject, SignError> {
    let found = Digest::of_bytes(bytes);
    if found != meta.digest || bytes.len() as u64 != meta.size {
        return Err(SignError::ObjectMismatch {
            expected: meta.digest.clone(),
            expected_size: meta.size,
            found,
            found_size: bytes.len() as u64,
        });
    }
    Ok(SignedObject { signature: sign_blob(key, bytes)?, provenance: sign_provenance(key, meta, builder)? })
}

/// What the agent learns from a verified object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedObject {
    /// The key that signed the bytes.
    pub key_id: KeyId,
    /// The provenance, when one was given (it must then verify too).
    pub provenance: Option<VerifiedProvenance>,
}

/// Checks the exact bytes to be loaded against their `.sig` and, if given,
/// their `.intoto.jsonl`, which must name these bytes and `identity`.
pub fn verify_object(
    keys: &TrustedKeys,
    identity: &Identity,
    bytes: &[u8],
    signature: &[u8],
    provenance: Option<&[u8]>,
) -> Result<VerifiedObject, VerifyError> {
    let digest = Digest::of_bytes(bytes);
    let Verified { key_id } = verify_blob_digest(keys, &digest, signature)?;
    let provenance = match provenance {
        None => None,
        Some(p) => {
            let v = verify_provenance(keys, p, &digest)?;
            if v.identity != *identity {
                return Err(VerifyError::IdentityMismatch {
                    expected: Box::new(identity.clone()),
                    found: Box::new(v.identity),
                });
            }
            Some(v)
        }
    };
    Ok(VerifiedObject { key_id, provenance })
}

#[cfg(test)]
mod tests {
    use super::keys::tests::PKCS8;
    use super::provenance::tests::meta;
    use super::*;
    use crate::Arch;

    #[test]
    fn sign_object_then_verify_object() {
        let key = SigningKey::from_pem(PKCS8.as_bytes(), None).unwrap();
        let keys = TrustedKeys::new([key.public_key().clone()]).unwrap();
        let m = meta(b"object");
        let s = sign_object(&key, &m, b"object", &BuilderInfo::bpfarm("1")).unwrap();
        let jsonl = s.provenance.to_jsonl();
        let v = verify_object(&keys, &m.identity, b"object", s.signature.as_bytes(), Some(&jsonl)).unwrap();
        assert_eq!(v.provenance.unwrap().built_at_text, m.built_at);
        assert!(
            verify_object(&keys, &m.identity, b"object", s.signature.as_bytes(), None).unwrap().provenance.is_none()
        );

        // A flipped object byte fails the signature before anything else.
        assert!(matches!(
            verify_object(&keys, &m.identity, b"objecT", s.signature.as_bytes(), Some(&jsonl)),
            Err(VerifyError::NoKeyMatched { .. })
        ));
        // A valid object and provenance, presented as another identity.
        let other = Identity::new("6.1.0-57-amd64", Arch::X86_64, "v0.1.0").unwrap();
        assert!(matches!(
            verify_object(&keys, &other, b"object", s.signature.as_bytes(), Some(&jsonl)),
            Err(VerifyError::IdentityMismatch { .. })
        ));
        // The provenance of another object, beside this one.
        let m2 = meta(b"other object");
        let s2 = sign_object(&key, &m2, b"other object", &BuilderInfo::bpfarm("1")).unwrap();
        assert!(matches!(
            verify_object(&keys, &m.identity, b"object", s.signature.as_bytes(), Some(&s2.provenance.to_jsonl())),
            Err(VerifyError::SubjectMismatch { .. })
        ));
        // Metadata that does not describe the bytes is not signed.
        assert!(matches!(
            sign_object(&key, &m, b"objecT", &BuilderInfo::bpfarm("1")),
            Err(SignError::ObjectMismatch { .. })
        ));
    }
}
