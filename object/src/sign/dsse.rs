//! DSSE envelopes (the signature wrapper of in-toto attestations and of
//! `cosign attest`): the signature covers the pre-authentication encoding
//! (PAE) of the payload type and the payload, never the JSON around them.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::blob::{decode_signature, sign_prehash, verify_prehash};
use super::{SignError, SigningKey, TrustedKeys, Verified, VerifyError};

/// The payload type of an in-toto statement.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// An envelope this large is not one of ours (a provenance statement is a
/// few KiB).
pub const MAX_ENVELOPE: usize = 1 << 20;
/// Signatures looked at per envelope; more is not a real envelope.
const MAX_SIGNATURES: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// base64 of the payload.
    pub payload: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    /// Left empty, as cosign does: verifiers try every trusted key.
    #[serde(default)]
    pub keyid: String,
    /// base64 of a DER ECDSA P-256 signature over SHA-256 of the PAE.
    pub sig: String,
}

/// `DSSEv1 <len(type)> <type> <len(body)> <body>`.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {payload_type} {} ", payload_type.len(), payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

impl Envelope {
    /// Signs `payload` of `payload_type` with `key`.
    pub fn sign(key: &SigningKey, payload_type: &str, payload: &[u8]) -> Result<Self, SignError> {
        let prehash: [u8; 32] = Sha256::digest(pae(payload_type, payload)).into();
        let sig = sign_prehash(key, &prehash)?;
        Ok(Self {
            payload_type: payload_type.to_owned(),
            payload: STANDARD.encode(payload),
            signatures: vec![EnvelopeSignature { keyid: String::new(), sig: STANDARD.encode(sig.as_bytes()) }],
        })
    }

    /// The envelope's JSON, one line (the `.intoto.jsonl` form).
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses an envelope, bounded in size.
    pub fn parse(bytes: &[u8]) -> Result<Self, VerifyError> {
        if bytes.len() > MAX_ENVELOPE {
            return Err(VerifyError::TooLarge { what: "DSSE envelope", len: bytes.len(), max: MAX_ENVELOPE });
        }
        serde_json::from_slice(bytes).map_err(|e| VerifyError::Format { what: "DSSE envelope", reason: e.to_string() })
    }

    /// Checks that one of the signatures is by a trusted key and that the
    /// payload type is `payload_type`; returns the verified payload bytes.
    pub fn verify(&self, keys: &TrustedKeys, payload_type: &str) -> Result<(Vec<u8>, Verified), VerifyError> {
        if self.payload_type != payload_type {
            return Err(VerifyError::PayloadType {
                expected: payload_type.to_owned(),
                found: self.payload_type.clone(),
            });
        }
        // DSSE allows either base64 alphabet.
        let payload = STANDARD
            .decode(&self.payload)
            .or_else(|_| URL_SAFE.decode(&self.payload))
            .map_err(|e| VerifyError::Base64(format!("DSSE payload: {e}")))?;
        let prehash: [u8; 32] = Sha256::digest(pae(&self.payload_type, &payload)).into();
        let mut last = VerifyError::NoSignature;
        for s in self.signatures.iter().take(MAX_SIGNATURES) {
            let verified = decode_signature(s.sig.as_bytes()).and_then(|sig| verify_prehash(keys, &prehash, &sig));
            match verified {
                Ok(v) => return Ok((payload, v)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::keys::tests::PKCS8;

    #[test]
    fn pae_matches_the_spec_example() {
        // From the DSSE protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
    }

    #[test]
    fn envelopes_verify_and_refuse_tampering() {
        let key = SigningKey::from_pem(PKCS8.as_bytes(), None).unwrap();
        let keys = TrustedKeys::new([key.public_key().clone()]).unwrap();
        let e = Envelope::sign(&key, IN_TOTO_PAYLOAD_TYPE, b"{\"a\":1}").unwrap();
        let back = Envelope::parse(&e.to_json()).unwrap();
        let (payload, v) = back.verify(&keys, IN_TOTO_PAYLOAD_TYPE).unwrap();
        assert_eq!((payload.as_slice(), &v.key_id), (&b"{\"a\":1}"[..], key.id()));

        let mut other_payload = back.clone();
        other_payload.payload = STANDARD.encode(b"{\"a\":2}");
        assert!(matches!(other_payload.verify(&keys, IN_TOTO_PAYLOAD_TYPE), Err(VerifyError::NoKeyMatched { .. })));
        // The type is signed too: relabelling the payload breaks the signature.
        let mut relabelled = back.clone();
        relabelled.payload_type = "text/plain".into();
        assert!(matches!(relabelled.verify(&keys, "text/plain"), Err(VerifyError::NoKeyMatched { .. })));
        assert!(matches!(relabelled.verify(&keys, IN_TOTO_PAYLOAD_TYPE), Err(VerifyError::PayloadType { .. })));
        let mut unsigned = back.clone();
        unsigned.signatures.clear();
        assert!(matches!(unsigned.verify(&keys, IN_TOTO_PAYLOAD_TYPE), Err(VerifyError::NoSignature)));
        assert!(matches!(Envelope::parse(b"{}"), Err(VerifyError::Format { .. })));
        assert!(matches!(Envelope::parse(&vec![b' '; MAX_ENVELOPE + 1]), Err(VerifyError::TooLarge { .. })));
    }
}
