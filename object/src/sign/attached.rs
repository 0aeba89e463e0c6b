//! What travels beside an object's metadata on `/v1` (the contract in
//! DESIGN.md "Signing"): top-level fields added to the metadata JSON of a
//! publish (`POST /v1/objects`) and of lookup and list answers, ignored by
//! readers that do not know them.
//!
//! - `signature`, `attestation`: the `<file>.sig` and `<file>.intoto.jsonl`
//!   as blobs (`PUT`/`GET /v1/blobs/{digest}`), by digest and size;
//! - `manifest_signature` (publish only): the cosign simple-signing payload
//!   for the object's OCI manifest and its signature, from which the
//!   registry writes the `sha256-<hex>.sig` tag of its `/v2` face.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::{ManifestSignature, VerifyError};
use crate::Digest;

/// The largest `<file>.sig` a registry stores or an agent reads.
pub const MAX_SIGNATURE_BLOB: u64 = 4 << 10;
/// The largest `<file>.intoto.jsonl` a registry stores or an agent reads.
pub const MAX_ATTESTATION_BLOB: u64 = 1 << 20;

/// A stored blob, by digest and size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    pub digest: Digest,
    pub size: u64,
}

impl BlobRef {
    pub fn of(bytes: &[u8]) -> Self {
        Self { digest: Digest::of_bytes(bytes), size: bytes.len() as u64 }
    }
}

/// A [`ManifestSignature`] on the wire: the payload in base64 (its exact
/// bytes are what is signed), the signature as cosign writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireManifestSignature {
    pub payload: String,
    pub signature: String,
}

impl From<&ManifestSignature> for WireManifestSignature {
    fn from(s: &ManifestSignature) -> Self {
        Self { payload: STANDARD.encode(&s.payload), signature: s.signature.clone() }
    }
}

impl WireManifestSignature {
    pub fn decode(&self) -> Result<ManifestSignature, VerifyError> {
        let payload =
            STANDARD.decode(&self.payload).map_err(|e| VerifyError::Base64(format!("simple-signing payload: {e}")))?;
        Ok(ManifestSignature { payload, signature: self.signature.clone() })
    }
}

/// The signing fields beside an object's metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<BlobRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<BlobRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_signature: Option<WireManifestSignature>,
}

impl Attached {
    pub fn is_empty(&self) -> bool {
        self.signature.is_none() && self.attestation.is_none() && self.manifest_signature.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fields_sit_beside_the_metadata_and_old_readers_ignore_them() {
        let a = Attached {
            signature: Some(BlobRef::of(b"sig")),
            attestation: None,
            manifest_signature: Some(WireManifestSignature {
                payload: STANDARD.encode(b"{}"),
                signature: "c2ln".into(),
            }),
        };
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(v["signature"]["digest"], Digest::of_bytes(b"sig").as_str());
        assert_eq!(v["signature"]["size"], 3);
        assert!(v.get("attestation").is_none());
        assert_eq!(serde_json::from_value::<Attached>(v).unwrap(), a);
        assert_eq!(serde_json::from_str::<Attached>(r#"{"file_name":"x"}"#).unwrap(), Attached::default());
        assert!(serde_json::from_str::<Attached>(r#"{"signature":{"digest":"md5:x","size":1}}"#).is_err());
        let bad = WireManifestSignature { payload: "%%".into(), signature: String::new() };
        assert!(matches!(bad.decode(), Err(VerifyError::Base64(_))));
    }
}
