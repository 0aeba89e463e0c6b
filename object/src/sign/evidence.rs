//! Offline evidence for an object that came from an OCI registry or an OCI
//! layout: what made it trusted there, kept beside the installed object as
//! `<file>.cosign.json`, so a later start verifies it with no registry.
//!
//! The file holds the platform manifest's exact bytes, the cosign
//! simple-signing payload and its signature (the layer of the
//! `sha256-<hex>.sig` tag that verified), and, when there was one, the DSSE
//! envelope of the SLSA provenance (from the `.att` tag). [`OciEvidence::verify`]
//! checks the chain offline: a trusted key signed the payload → the payload
//! names the manifest's digest → the manifest's bytes hash to it → its one
//! layer is the object (digest and size) and its annotations name the
//! identity → the provenance, when present, is signed by a trusted key for
//! that manifest. Nothing in the file is trusted before that chain holds.
//!
//! ```json
//! {"mediaType":"application/vnd.bpfarm.cosign-evidence.v1+json",
//!  "manifest":"<base64 of the platform manifest>",
//!  "payload":"<base64 of the simple-signing payload>",
//!  "signature":"<the dev.cosignproject.cosign/signature annotation>",
//!  "attestation":"<base64 of the DSSE envelope>"}
//! ```

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::cosign::{ManifestSignature, verify_attestation_envelope};
use super::{KeyId, TrustedKeys, VerifiedProvenance, VerifyError};
use crate::{Digest, Identity, oci};

/// The file name suffix beside the object.
pub const EVIDENCE_SUFFIX: &str = ".cosign.json";
/// The file's `mediaType`.
pub const EVIDENCE_MEDIA_TYPE: &str = "application/vnd.bpfarm.cosign-evidence.v1+json";
/// Cap on the file (a manifest of at most 4 MiB, a payload and an
/// envelope, in base64; in practice a few KiB).
pub const MAX_EVIDENCE: u64 = 8 << 20;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// What made an object from OCI trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OciEvidence {
    /// The platform manifest, exactly as fetched.
    pub manifest: Vec<u8>,
    /// The simple-signing payload and signature that named it.
    pub signature: ManifestSignature,
    /// The DSSE envelope of its SLSA provenance, when there was one.
    pub attestation: Option<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(rename = "mediaType")]
    media_type: String,
    manifest: String,
    payload: String,
    signature: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    attestation: Option<String>,
}

/// What the chain proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedEvidence {
    /// The key that signed the manifest's payload.
    pub key_id: KeyId,
    /// The manifest's digest.
    pub manifest: Digest,
    pub provenance: Option<VerifiedProvenance>,
}

fn format(reason: impl Into<String>) -> VerifyError {
    VerifyError::Format { what: "cosign evidence", reason: reason.into() }
}

impl OciEvidence {
    /// The file's bytes (one line of JSON and a newline).
    pub fn to_json(&self) -> Vec<u8> {
        let f = File {
            media_type: EVIDENCE_MEDIA_TYPE.into(),
            manifest: B64.encode(&self.manifest),
            payload: B64.encode(&self.signature.payload),
            signature: self.signature.signature.clone(),
            attestation: self.attestation.as_ref().map(|a| B64.encode(a)),
        };
        // Strings only: serialization cannot fail.
        let mut out = serde_json::to_vec(&f).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Parses the file (at most [`MAX_EVIDENCE`] bytes); checks its form,
    /// not its signatures.
    pub fn from_json(bytes: &[u8]) -> Result<Self, VerifyError> {
        if bytes.len() as u64 > MAX_EVIDENCE {
            return Err(VerifyError::TooLarge {
                what: "cosign evidence",
                len: bytes.len(),
                max: MAX_EVIDENCE as usize,
            });
        }
        let f: File = serde_json::from_slice(bytes).map_err(|e| format(e.to_string()))?;
        if f.media_type != EVIDENCE_MEDIA_TYPE {
            return Err(format(format!("mediaType {:?} is not {EVIDENCE_MEDIA_TYPE:?}", f.media_type)));
        }
        let decode = |what: &str, s: &str| B64.decode(s).map_err(|e| format(format!("{what} is not base64: {e}")));
        Ok(Self {
            manifest: decode("manifest", &f.manifest)?,
            signature: ManifestSignature { payload: decode("payload", &f.payload)?, signature: f.signature },
            attestation: f.attestation.as_deref().map(|a| decode("attestation", a)).transpose()?,
        })
    }

    /// Checks the chain (see the module docs) for the object `object`
    /// (digest of the exact bytes) of `size` bytes and `identity`.
    pub fn verify(
        &self,
        keys: &TrustedKeys,
        identity: &Identity,
        object: &Digest,
        size: u64,
    ) -> Result<VerifiedEvidence, VerifyError> {
        let manifest = Digest::of_bytes(&self.manifest);
        let key_id = self.signature.verify(keys, &manifest)?.key_id;
        check_manifest(&self.manifest, identity, object, size)?;
        let provenance = match &self.attestation {
            Some(envelope) => Some(verify_attestation_envelope(keys, envelope, &manifest)?),
            None => None,
        };
        Ok(VerifiedEvidence { key_id, manifest, provenance })
    }
}

/// A platform manifest of `identity` whose one layer is the object.
pub fn check_manifest(manifest: &[u8], identity: &Identity, object: &Digest, size: u64) -> Result<(), VerifyError> {
    let bad = |reason: String| VerifyError::Format { what: "OCI manifest", reason };
    let m: serde_json::Value = serde_json::from_slice(manifest).map_err(|e| bad(e.to_string()))?;
    oci::check_annotations(&m, identity, "").map_err(bad)?;
    let layers = m["layers"].as_array().map(Vec::as_slice).unwrap_or_default();
    let [layer] = layers else {
        return Err(bad(format!("it has {} layers, not the one object", layers.len())));
    };
    oci::check_object_layer(layer, None).map_err(bad)?;
    if layer["digest"] != object.as_str() || layer["size"].as_u64() != Some(size) {
        return Err(bad(format!(
            "its layer is {} ({} bytes), not this object {object} ({size} bytes)",
            layer["digest"], layer["size"]
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::keys::tests::PKCS8;
    use crate::sign::provenance::tests::meta;
    use crate::sign::{BuilderInfo, SigningKey, sign_manifest, sign_provenance};

    #[test]
    fn the_chain_holds_and_every_link_is_checked() {
        let key = SigningKey::from_pem(PKCS8.as_bytes(), None).unwrap();
        let keys = TrustedKeys::new([key.public_key().clone()]).unwrap();
        let m = meta(b"object");
        let manifest = oci::manifest(&m);
        let md = Digest::of_bytes(&manifest);
        let prov = sign_provenance(&key, &m, &BuilderInfo::bpfarm("1")).unwrap();
        let e = OciEvidence {
            manifest: manifest.clone(),
            signature: sign_manifest(&key, "reg/ns/tracee-bpf", &md).unwrap(),
            attestation: Some(prov.v1.to_json()),
        };
        let back = OciEvidence::from_json(&e.to_json()).unwrap();
        assert_eq!(back, e);
        let v = back.verify(&keys, &m.identity, &m.digest, m.size).unwrap();
        assert_eq!((&v.key_id, &v.manifest), (key.id(), &md));
        assert_eq!(v.provenance.unwrap().built_at_text, m.built_at);

        // Another object, same manifest: refused.
        assert!(e.verify(&keys, &m.identity, &Digest::of_bytes(b"other"), m.size).is_err());
        assert!(e.verify(&keys, &m.identity, &m.digest, m.size + 1).is_err());
        // A manifest byte changed: the payload no longer names it.
        let mut t = e.clone();
        t.manifest.push(b' ');
        assert!(matches!(t.verify(&keys, &m.identity, &m.digest, m.size), Err(VerifyError::SubjectMismatch { .. })));
        // A payload byte changed: the signature fails.
        let mut t = e.clone();
        let last = t.signature.payload.len() - 2;
        t.signature.payload[last] ^= 1;
        assert!(t.verify(&keys, &m.identity, &m.digest, m.size).is_err());
        // Another key.
        let other = SigningKey::from_pem(crate::sign::keys::tests::SEC1.as_bytes(), None).unwrap();
        let mut t = e.clone();
        t.signature = sign_manifest(&other, "reg/ns/tracee-bpf", &md).unwrap();
        assert!(matches!(t.verify(&keys, &m.identity, &m.digest, m.size), Err(VerifyError::NoKeyMatched { .. })));
        // An attestation for another manifest.
        let mut t = e.clone();
        let other_meta = meta(b"other object");
        t.attestation = Some(sign_provenance(&key, &other_meta, &BuilderInfo::bpfarm("1")).unwrap().v1.to_json());
        assert!(t.verify(&keys, &m.identity, &m.digest, m.size).is_err());
        // Malformed files.
        assert!(OciEvidence::from_json(b"{}").is_err());
        let unknown = String::from_utf8(e.to_json()).unwrap().replacen('{', "{\"extra\":1,", 1);
        assert!(OciEvidence::from_json(unknown.as_bytes()).is_err());
    }
}
