//! Blob signatures in `cosign sign-blob` form: base64 of a DER ECDSA P-256
//! signature over the SHA-256 of the file's bytes. The text is what goes
//! into `<file>.sig`; `cosign verify-blob --key pub.pem --signature
//! <file>.sig --insecure-ignore-tlog <file>` checks it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::hazmat::{PrehashSigner as _, PrehashVerifier as _};
use p256::ecdsa::{DerSignature, Signature};

use super::{SignError, SigningKey, TrustedKeys, Verified, VerifyError};
use crate::Digest;

/// The longest `.sig` text read: a DER P-256 signature is at most 72 bytes
/// (96 in base64); anything much longer is not one.
pub const MAX_SIGNATURE_TEXT: usize = 1024;

/// Signs `bytes` as `cosign sign-blob` does; returns the `.sig` text.
pub fn sign_blob(key: &SigningKey, bytes: &[u8]) -> Result<String, SignError> {
    sign_blob_digest(key, &Digest::of_bytes(bytes))
}

/// Signs a blob known by its sha256 (what a content-addressed store holds).
pub fn sign_blob_digest(key: &SigningKey, digest: &Digest) -> Result<String, SignError> {
    Ok(STANDARD.encode(sign_prehash(key, &digest.to_bytes())?.as_bytes()))
}

/// Checks a `.sig` (as `cosign sign-blob` or [`sign_blob`] wrote it) over
/// exactly `bytes` against every trusted key; returns the key that signed.
pub fn verify_blob(keys: &TrustedKeys, bytes: &[u8], signature: &[u8]) -> Result<Verified, VerifyError> {
    verify_blob_digest(keys, &Digest::of_bytes(bytes), signature)
}

/// [`verify_blob`] for a blob known by its sha256.
pub fn verify_blob_digest(keys: &TrustedKeys, digest: &Digest, signature: &[u8]) -> Result<Verified, VerifyError> {
    let sig = decode_signature(signature)?;
    verify_prehash(keys, &digest.to_bytes(), &sig)
}

/// A base64 DER signature, surrounding whitespace (a trailing newline)
/// allowed.
/// Checks that `text` is a `.sig` in form (base64 of a DER ECDSA
/// signature, within [`MAX_SIGNATURE_TEXT`]), without a key to verify it.
pub fn check_form(text: &[u8]) -> Result<(), VerifyError> {
    decode_signature(text).map(drop)
}

pub(crate) fn decode_signature(text: &[u8]) -> Result<Signature, VerifyError> {
    if text.len() > MAX_SIGNATURE_TEXT {
        return Err(VerifyError::SignatureTooLong { len: text.len(), max: MAX_SIGNATURE_TEXT });
    }
    let trimmed = text.trim_ascii();
    if trimmed.is_empty() {
        return Err(VerifyError::EmptySignature);
    }
    let der = STANDARD.decode(trimmed).map_err(|e| VerifyError::Base64(e.to_string()))?;
    Signature::from_der(&der).map_err(|_| VerifyError::Der)
}

pub(crate) fn sign_prehash(key: &SigningKey, prehash: &[u8; 32]) -> Result<DerSignature, SignError> {
    // RFC 6979: the same key and bytes always give the same signature.
    let sig: Signature = key.ecdsa().sign_prehash(prehash).map_err(|_| SignError::Ecdsa)?;
    Ok(sig.to_der())
}

pub(crate) fn verify_prehash(keys: &TrustedKeys, prehash: &[u8; 32], sig: &Signature) -> Result<Verified, VerifyError> {
    keys.keys()
        .iter()
        .find(|k| k.verifying_key().verify_prehash(prehash, sig).is_ok())
        .map(|k| Verified { key_id: k.id().clone() })
        .ok_or_else(|| VerifyError::NoKeyMatched { keys: keys.ids() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::keys::tests::PKCS8;
    use crate::sign::{PublicKey, SigningKey};

    fn key() -> SigningKey {
        SigningKey::from_pem(PKCS8.as_bytes(), None).unwrap()
    }

    fn trust(k: &SigningKey) -> TrustedKeys {
        TrustedKeys::new([k.public_key().clone()]).unwrap()
    }

    /// A second, unrelated key (`openssl genpkey -algorithm EC
    /// -pkeyopt ec_paramgen_curve:P-256`).
    const OTHER: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEVUc5SjZ0BkcoYT4EAnxdZkFpw+gW
6fELCifFVg1CdoTO9hBLT91dG7elu30OiyOUM2TR4eUuyqVu/3cwEjvFqQ==
-----END PUBLIC KEY-----
";

    #[test]
    fn signatures_are_deterministic_and_verify() {
        let k = key();
        let s = sign_blob(&k, b"object").unwrap();
        assert_eq!(s, sign_blob(&k, b"object").unwrap(), "RFC 6979: reproducible");
        assert_eq!(verify_blob(&trust(&k), b"object", s.as_bytes()).unwrap().key_id, *k.id());
        // A trailing newline (as editors and `echo` add) is fine.
        assert!(verify_blob(&trust(&k), b"object", format!("{s}\n").as_bytes()).is_ok());
        assert!(verify_blob_digest(&trust(&k), &Digest::of_bytes(b"object"), s.as_bytes()).is_ok());
    }

    #[test]
    fn tampering_is_a_typed_refusal() {
        let k = key();
        let s = sign_blob(&k, b"object").unwrap();
        let keys = trust(&k);
        // A flipped object byte.
        assert!(matches!(verify_blob(&keys, b"objecu", s.as_bytes()), Err(VerifyError::NoKeyMatched { .. })));
        // A signature of another object.
        let other = sign_blob(&k, b"another object").unwrap();
        assert!(matches!(verify_blob(&keys, b"object", other.as_bytes()), Err(VerifyError::NoKeyMatched { .. })));
        // A flipped signature byte (inside r or s: still DER, no longer valid).
        let mut der = STANDARD.decode(&s).unwrap();
        der[10] ^= 1;
        let flipped = STANDARD.encode(&der);
        assert!(matches!(verify_blob(&keys, b"object", flipped.as_bytes()), Err(VerifyError::NoKeyMatched { .. })));
        // Another key.
        let other_key = TrustedKeys::new([PublicKey::from_pem(OTHER.as_bytes()).unwrap()]).unwrap();
        let e = verify_blob(&other_key, b"object", s.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("sha256:"), "names the keys tried: {e}");
        // Malformed text.
        assert!(matches!(verify_blob(&keys, b"object", b"not base64!"), Err(VerifyError::Base64(_))));
        assert!(matches!(verify_blob(&keys, b"object", b"aGVsbG8="), Err(VerifyError::Der)));
        assert!(matches!(verify_blob(&keys, b"object", b"  \n"), Err(VerifyError::EmptySignature)));
        let long = vec![b'A'; 4096];
        assert!(matches!(verify_blob(&keys, b"object", &long), Err(VerifyError::SignatureTooLong { .. })));
        // Rotation: any trusted key will do.
        let both = TrustedKeys::new([PublicKey::from_pem(OTHER.as_bytes()).unwrap(), k.public_key().clone()]).unwrap();
        assert_eq!(verify_blob(&both, b"object", s.as_bytes()).unwrap().key_id, *k.id());
    }
}
