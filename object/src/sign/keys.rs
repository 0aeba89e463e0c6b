//! Keys: an ECDSA P-256 signing key from PKCS#8 PEM (`openssl genpkey`),
//! SEC1 PEM (`openssl ecparam -genkey`) or cosign's encrypted key file
//! (`cosign generate-key-pair`: scrypt + NaCl secretbox around PKCS#8 DER);
//! public keys as SPKI PEM; the set of keys a verifier trusts.
//!
//! Every other algorithm or curve is refused by name at load time, so a
//! wrong key is a clear error here rather than a signature that never
//! verifies later.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::{Nonce, XSalsa20Poly1305};
use p256::ecdsa;
use p256::pkcs8::der::Decode as _;
use p256::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _, EncodePublicKey as _, LineEnding, ObjectIdentifier};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::Digest;

/// The password of an encrypted cosign key, as cosign reads it.
pub const PASSWORD_ENV: &str = "COSIGN_PASSWORD";

/// Largest key file read: a P-256 key in any of the formats is under 1 KiB.
const MAX_KEY_FILE: u64 = 64 * 1024;
/// scrypt memory (128·N·r bytes) an encrypted key may ask for: cosign's own
/// files use N=2^16, r=8 (64 MiB); 1 GiB allows its "sensitive" settings
/// and refuses a file that would exhaust memory.
const MAX_SCRYPT_MEMORY: u64 = 1 << 30;
const MAX_SCRYPT_P: u32 = 16;

const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: Box<KeyError>,
    },
    #[error("reading it: {0}")]
    Read(#[source] std::io::Error),
    #[error("it is {0} bytes; a key file is a few hundred")]
    TooLarge(u64),
    #[error("not PEM: {0}")]
    Pem(String),
    #[error("no PEM block in it")]
    NoPem,
    #[error("a PEM {label:?} block is not {expected}")]
    Label { label: String, expected: &'static str },
    #[error(
        "it holds a private key where a public key is expected: give the public key (cosign.pub, or `openssl pkey -pubout`)"
    )]
    PrivateWherePublic,
    #[error("it holds a public key where a private key is expected")]
    PublicWherePrivate,
    #[error("the key is {0}; bpfarm signs and verifies with ECDSA P-256 only")]
    Algorithm(String),
    #[error("malformed {format}: {reason}")]
    Malformed { format: &'static str, reason: String },
    #[error("an encrypted cosign key needs its password in {PASSWORD_ENV}")]
    PasswordNeeded,
    #[error("wrong password or corrupted key (the secretbox does not open)")]
    Decrypt,
    #[error("the encrypted key asks for {what}, which bpfarm does not read")]
    Unsupported { what: String },
    #[error(
        "scrypt parameters N={n} r={r} p={p} are out of range (N a power of two, 128·N·r at most 1 GiB, p at most 16)"
    )]
    KdfParams { n: u64, r: u32, p: u32 },
    #[error("no trusted keys: give at least one public key")]
    NoKeys,
}

impl KeyError {
    fn in_file(self, path: &Path) -> KeyError {
        KeyError::File { path: path.to_owned(), source: Box::new(self) }
    }
}

/// A key's id: sha256 of its SubjectPublicKeyInfo DER (the form `openssl
/// pkey -pubin -outform der` writes), for messages and logs.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(Digest);

impl KeyId {
    pub fn digest(&self) -> &Digest {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

/// A P-256 public key, as read from SPKI PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: ecdsa::VerifyingKey,
    id: KeyId,
    pem: String,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

impl PublicKey {
    /// A `PUBLIC KEY` PEM block (what cosign's `.pub` and `openssl pkey
    /// -pubout` hold).
    pub fn from_pem(text: &[u8]) -> Result<Self, KeyError> {
        let blocks = pem_blocks(text)?;
        let Some((label, der)) = blocks.into_iter().next() else { return Err(KeyError::NoPem) };
        match label.as_str() {
            "PUBLIC KEY" => Self::from_spki_der(&der),
            "PRIVATE KEY" | "EC PRIVATE KEY" | "ENCRYPTED PRIVATE KEY" => Err(KeyError::PrivateWherePublic),
            l if l.starts_with("ENCRYPTED ") && l.ends_with(" PRIVATE KEY") => Err(KeyError::PrivateWherePublic),
            _ => Err(KeyError::Label { label, expected: "PUBLIC KEY" }),
        }
    }

    /// Reads a public key file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        read_key_file(path).and_then(|b| Self::from_pem(&b)).map_err(|e| e.in_file(path))
    }

    fn from_spki_der(der: &[u8]) -> Result<Self, KeyError> {
        let spki = p256::pkcs8::SubjectPublicKeyInfoRef::from_der(der)
            .map_err(|e| KeyError::Malformed { format: "SubjectPublicKeyInfo", reason: e.to_string() })?;
        check_algorithm(spki.algorithm.oid, spki.algorithm.parameters_oid().ok())?;
        let key = p256::PublicKey::from_public_key_der(der)
            .map_err(|e| KeyError::Malformed { format: "P-256 public key", reason: e.to_string() })?;
        Self::from_key(ecdsa::VerifyingKey::from(key))
    }

    fn from_key(key: ecdsa::VerifyingKey) -> Result<Self, KeyError> {
        let public = p256::PublicKey::from(key);
        let malformed = |e: p256::pkcs8::spki::Error| KeyError::Malformed {
            format: "P-256 public key",
            reason: format!("cannot be encoded: {e}"),
        };
        let der = public.to_public_key_der().map_err(malformed)?;
        let pem = public.to_public_key_pem(LineEnding::LF).map_err(malformed)?;
        Ok(Self { key, id: KeyId(Digest::of_bytes(der.as_bytes())), pem })
    }

    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// SPKI PEM, as cosign writes `cosign.pub`.
    pub fn to_pem(&self) -> &str {
        &self.pem
    }

    pub(crate) fn verifying_key(&self) -> &ecdsa::VerifyingKey {
        &self.key
    }
}

/// A P-256 private key. Never printed: `Debug` shows its key id only.
#[derive(Clone)]
pub struct SigningKey {
    key: ecdsa::SigningKey,
    public: PublicKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public.id)
    }
}

impl SigningKey {
    /// A private key from PEM: `PRIVATE KEY` (PKCS#8), `EC PRIVATE KEY`
    /// (SEC1; an `EC PARAMETERS` block before it is skipped) or cosign's
    /// `ENCRYPTED SIGSTORE PRIVATE KEY` / `ENCRYPTED COSIGN PRIVATE KEY`,
    /// which needs `password`.
    pub fn from_pem(text: &[u8], password: Option<&[u8]>) -> Result<Self, KeyError> {
        let blocks = pem_blocks(text)?;
        let Some((label, der)) = blocks.into_iter().find(|(l, _)| l != "EC PARAMETERS") else {
            return Err(KeyError::NoPem);
        };
        let der = Zeroizing::new(der);
        match label.as_str() {
            "PRIVATE KEY" => Self::from_pkcs8_der(&der),
            "EC PRIVATE KEY" => Self::from_sec1_der(&der),
            "ENCRYPTED SIGSTORE PRIVATE KEY" | "ENCRYPTED COSIGN PRIVATE KEY" => {
                let password = password.ok_or(KeyError::PasswordNeeded)?;
                Self::from_pkcs8_der(&decrypt_cosign(&der, password)?)
            }
            "ENCRYPTED PRIVATE KEY" => Err(KeyError::Unsupported {
                what: "PKCS#8 password encryption (decrypt it with `openssl pkey`, or use a cosign key)".into(),
            }),
            "PUBLIC KEY" => Err(KeyError::PublicWherePrivate),
            _ => Err(KeyError::Label {
                label,
                expected: "PRIVATE KEY, EC PRIVATE KEY or ENCRYPTED SIGSTORE PRIVATE KEY",
            }),
        }
    }

    /// Reads a private key file; an encrypted cosign key takes its password
    /// from `COSIGN_PASSWORD`, as cosign does.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let password = std::env::var_os(PASSWORD_ENV).map(|p| Zeroizing::new(p.into_encoded_bytes()));
        Self::load_with_password(path, password.as_ref().map(|p| p.as_slice()))
    }

    /// Reads a private key file, with the password of an encrypted one.
    pub fn load_with_password(path: &Path, password: Option<&[u8]>) -> Result<Self, KeyError> {
        read_key_file(path).map(Zeroizing::new).and_then(|b| Self::from_pem(&b, password)).map_err(|e| e.in_file(path))
    }

    fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        let info = p256::pkcs8::PrivateKeyInfo::from_der(der)
            .map_err(|e| KeyError::Malformed { format: "PKCS#8 private key", reason: e.to_string() })?;
        check_algorithm(info.algorithm.oid, info.algorithm.parameters_oid().ok())?;
        let key = p256::SecretKey::from_pkcs8_der(der)
            .map_err(|e| KeyError::Malformed { format: "P-256 private key", reason: e.to_string() })?;
        Self::from_secret(&key)
    }

    fn from_sec1_der(der: &[u8]) -> Result<Self, KeyError> {
        let parsed = sec1::EcPrivateKey::from_der(der)
            .map_err(|e| KeyError::Malformed { format: "SEC1 EC private key", reason: e.to_string() })?;
        if let Some(curve) = parsed.parameters.and_then(|p| p.named_curve()) {
            check_algorithm(OID_EC_PUBLIC_KEY, Some(curve))?;
        }
        let key = p256::SecretKey::from_sec1_der(der).map_err(|_| KeyError::Malformed {
            format: "SEC1 EC private key",
            reason: "not a valid P-256 scalar".into(),
        })?;
        Self::from_secret(&key)
    }

    fn from_secret(key: &p256::SecretKey) -> Result<Self, KeyError> {
        let key = ecdsa::SigningKey::from(key);
        let public = PublicKey::from_key(*key.verifying_key())?;
        Ok(Self { key, public })
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    pub fn id(&self) -> &KeyId {
        &self.public.id
    }

    pub(crate) fn ecdsa(&self) -> &ecdsa::SigningKey {
        &self.key
    }
}

/// The public keys a verifier accepts: a signature by any one of them is
/// valid (rotation: trust the new key and the old one until every object
/// is re-signed).
#[derive(Clone, Debug)]
pub struct TrustedKeys(Vec<PublicKey>);

impl TrustedKeys {
    /// At least one key; duplicates (same key id) are kept once.
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Result<Self, KeyError> {
        let mut out: Vec<PublicKey> = Vec::new();
        for k in keys {
            if !out.iter().any(|o| o.id == k.id) {
                out.push(k);
            }
        }
        if out.is_empty() {
            return Err(KeyError::NoKeys);
        }
        Ok(Self(out))
    }

    /// Reads each public key file (`--verify-key`, `--trusted-key`).
    pub fn load(paths: &[PathBuf]) -> Result<Self, KeyError> {
        Self::new(paths.iter().map(|p| PublicKey::load(p)).collect::<Result<Vec<_>, _>>()?)
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.0
    }

    /// The ids, comma-separated, for messages.
    pub fn ids(&self) -> String {
        self.0.iter().map(|k| k.id.to_string()).collect::<Vec<_>>().join(", ")
    }
}

fn read_key_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(KeyError::Read)?;
    let mut buf = Vec::new();
    f.take(MAX_KEY_FILE + 1).read_to_end(&mut buf).map_err(KeyError::Read)?;
    if buf.len() as u64 > MAX_KEY_FILE {
        return Err(KeyError::TooLarge(buf.len() as u64));
    }
    Ok(buf)
}

/// Every PEM block in `text`, in order, as (label, DER). Text outside the
/// blocks (comments, `openssl` explanatory lines) is ignored.
fn pem_blocks(text: &[u8]) -> Result<Vec<(String, Vec<u8>)>, KeyError> {
    let text = std::str::from_utf8(text).map_err(|_| KeyError::Pem("not UTF-8 text".into()))?;
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let block = &rest[start..];
        let label_end = block["-----BEGIN ".len()..]
            .find("-----")
            .ok_or_else(|| KeyError::Pem("unterminated BEGIN line".into()))?;
        let label = &block["-----BEGIN ".len()..][..label_end];
        let end_marker = format!("-----END {label}-----");
        let end = block.find(&end_marker).ok_or_else(|| KeyError::Pem(format!("no {end_marker:?} line")))?;
        let one = &block[..end + end_marker.len()];
        let (label, der) = pem_rfc7468::decode_vec(one.as_bytes()).map_err(|e| KeyError::Pem(e.to_string()))?;
        out.push((label.to_owned(), der));
        rest = &block[end + end_marker.len()..];
    }
    Ok(out)
}

fn check_algorithm(algorithm: ObjectIdentifier, curve: Option<ObjectIdentifier>) -> Result<(), KeyError> {
    if algorithm != OID_EC_PUBLIC_KEY {
        let name = match algorithm.to_string().as_str() {
            "1.2.840.113549.1.1.1" => "RSA".to_owned(),
            "1.2.840.113549.1.1.10" => "RSA-PSS".to_owned(),
            "1.3.101.112" => "Ed25519".to_owned(),
            "1.3.101.113" => "Ed448".to_owned(),
            "1.2.840.10040.4.1" => "DSA".to_owned(),
            other => format!("algorithm {other}"),
        };
        return Err(KeyError::Algorithm(name));
    }
    match curve {
        Some(c) if c == OID_P256 => Ok(()),
        Some(c) => Err(KeyError::Algorithm(format!(
            "ECDSA on {}",
            match c.to_string().as_str() {
                "1.3.132.0.34" => "P-384 (secp384r1)".to_owned(),
                "1.3.132.0.35" => "P-521 (secp521r1)".to_owned(),
                "1.3.132.0.10" => "secp256k1".to_owned(),
                "1.2.840.10045.3.1.1" => "P-192 (prime192v1)".to_owned(),
                "1.3.132.0.33" => "P-224 (secp224r1)".to_owned(),
                other => format!("curve {other}"),
            }
        ))),
        None => Err(KeyError::Algorithm("ECDSA without a named curve".into())),
    }
}

/// cosign's key encryption (go-securesystemslib's `encrypted` package):
/// a JSON document with the scrypt parameters and salt, the secretbox
/// nonce and the sealed PKCS#8 DER.
#[derive(Deserialize)]
struct EncryptedKey {
    kdf: Kdf,
    cipher: Cipher,
    ciphertext: String,
}

#[derive(Deserialize)]
struct Kdf {
    name: String,
    params: ScryptParams,
    salt: String,
}

#[derive(Deserialize)]
struct ScryptParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(Deserialize)]
struct Cipher {
    name: String,
    nonce: String,
}

fn decrypt_cosign(doc: &[u8], password: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let malformed = |reason: String| KeyError::Malformed { format: "encrypted cosign key", reason };
    let k: EncryptedKey = serde_json::from_slice(doc).map_err(|e| malformed(e.to_string()))?;
    if k.kdf.name != "scrypt" {
        return Err(KeyError::Unsupported { what: format!("key derivation {:?}", k.kdf.name) });
    }
    if k.cipher.name != "nacl/secretbox" {
        return Err(KeyError::Unsupported { what: format!("cipher {:?}", k.cipher.name) });
    }
    let ScryptParams { n, r, p } = k.kdf.params;
    let in_range = n >= 2
        && n.is_power_of_two()
        && r >= 1
        && (1..=MAX_SCRYPT_P).contains(&p)
        && 128u64.checked_mul(n).and_then(|m| m.checked_mul(u64::from(r))).is_some_and(|m| m <= MAX_SCRYPT_MEMORY);
    if !in_range {
        return Err(KeyError::KdfParams { n, r, p });
    }
    let params =
        scrypt::Params::new(n.trailing_zeros() as u8, r, p, 32).map_err(|_| KeyError::KdfParams { n, r, p })?;
    let b64 = |what: &str, s: &str| STANDARD.decode(s).map_err(|e| malformed(format!("{what}: {e}")));
    let salt = b64("salt", &k.kdf.salt)?;
    let nonce = b64("nonce", &k.cipher.nonce)?;
    let sealed = b64("ciphertext", &k.ciphertext)?;
    if nonce.len() != 24 {
        return Err(malformed(format!("the nonce is {} bytes, not 24", nonce.len())));
    }
    let mut key = Zeroizing::new([0u8; 32]);
    scrypt::scrypt(password, &salt, &params, key.as_mut()).map_err(|_| KeyError::KdfParams { n, r, p })?;
    let cipher = XSalsa20Poly1305::new(crypto_secretbox::Key::from_slice(key.as_ref()));
    cipher.decrypt(Nonce::from_slice(&nonce), sealed.as_slice()).map(Zeroizing::new).map_err(|_| KeyError::Decrypt)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fixed test key (PKCS#8), so unit tests need no randomness.
    pub(crate) const PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgZDavLJDkqc/lSbuy
obfPAZKNxIub4ih6PRJHMZigpLihRANCAARqV2SVHxsFHHF15XfOexOH+OK7Nxcr
xIF6ePDoeo4L9wcAx4/Df4kXLEXBj9sMwTYFFdHuz4E0eqxHT16BOVE3
-----END PRIVATE KEY-----
";

    /// Made by `cosign generate-key-pair` (2.5) with COSIGN_PASSWORD=pw.
    const COSIGN_KEY: &str = "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----
eyJrZGYiOnsibmFtZSI6InNjcnlwdCIsInBhcmFtcyI6eyJOIjo2NTUzNiwiciI6
OCwicCI6MX0sInNhbHQiOiJveTRWS0p6aVJlWEhGTGxZU1BWVnVoSW1tcnRTdjlq
RUVsZ2pKTG9xS3FnPSJ9LCJjaXBoZXIiOnsibmFtZSI6Im5hY2wvc2VjcmV0Ym94
Iiwibm9uY2UiOiI4N0ZJd3FYSkFBUVd3eG1yalk4MTErWnlBQjZuMFE0SiJ9LCJj
aXBoZXJ0ZXh0IjoiZ0FOS1FIMkhpY2RZRnNWN3ZvL1Y2L29WZENHVjA0Vi8rSkI5
M1JwaVBMaG1RRjU3WUY0eFNPTndlOGtScmtuZmRQekZDWGcvbG9nbnEvTXlLMnAv
aC9TTDRiZVQyL0FCNURyQnhMczFFUnFhQk4xSkFPY2N5U2ZEZFpWZHVXZ1FQZGVn
Yi95VVdiQ1hsd29Lakp4Nk44V1NCUzh5SG52K3BheVU3OHQreG84SUp4SGUrdVl4
NUI3UHZxZFdaV1JRTzdpakhrN0FUUHhsdlE9PSJ9
-----END ENCRYPTED SIGSTORE PRIVATE KEY-----
";
    /// Its `cosign.pub`.
    const COSIGN_PUB: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEVUc5SjZ0BkcoYT4EAnxdZkFpw+gW
6fELCifFVg1CdoTO9hBLT91dG7elu30OiyOUM2TR4eUuyqVu/3cwEjvFqQ==
-----END PUBLIC KEY-----
";
    /// `openssl ecparam -name prime256v1 -genkey`: EC PARAMETERS, then SEC1.
    pub(crate) const SEC1: &str = "-----BEGIN EC PARAMETERS-----
BggqhkjOPQMBBw==
-----END EC PARAMETERS-----
-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIKns5CJmU0QxApJHuMbhFBqIqRwMFMcm19/L6zQa8bJWoAoGCCqGSM49
AwEHoUQDQgAEk4pZv1b80q96WXZi3pgCEeJmGi9Ov0Bgvg8jS/2YyJTY3JxRiVCI
NkKgixdW5YcguLGGGgeOweE4GLHC7rGdqw==
-----END EC PRIVATE KEY-----
";
    const SEC1_P384: &str = "-----BEGIN EC PRIVATE KEY-----
MIGkAgEBBDBi+OUbntY6dzMcLGS1mpouGjndsqksw5sY1pUHX3BSEFhxbmTmusMG
tuPIpf28+SegBwYFK4EEACKhZANiAAQO5PEwPDwTGgMuCj5cVrEMNbxVFXlLoPCU
KbZLoh7Egf9+Z9Ene0D9ryLTZxqDVXfeAPRRYkPUCSWhdGw8NyLEwmRqDFRFUP/z
Z85Ex/QuFpLGXwpDMRecMc7jNfX0MEY=
-----END EC PRIVATE KEY-----
";
    const P384_PUB: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEuc7THRaAo0ZjMgMLrgNrK/19aY7g/XLZ
KQEyv4gvp5z3a+bRUa4R6xEfvRUVP6fvMilzn165qkk3O7MKh5xA9ZA6ibMJwuwf
pGlPXil1n4VkVcHucGIHuuyAGRohGtAW
-----END PUBLIC KEY-----
";
    const ED25519: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIBeVjiRxMXUU3hjdBw/BpdBMLfh5w4zt9ZI5F8vLEmWb
-----END PRIVATE KEY-----
";

    #[test]
    fn cosign_encrypted_keys_open_with_their_password_only() {
        let k = SigningKey::from_pem(COSIGN_KEY.as_bytes(), Some(b"pw")).unwrap();
        assert_eq!(k.id(), PublicKey::from_pem(COSIGN_PUB.as_bytes()).unwrap().id());
        assert!(matches!(SigningKey::from_pem(COSIGN_KEY.as_bytes(), Some(b"wrong")), Err(KeyError::Decrypt)));
        assert!(matches!(SigningKey::from_pem(COSIGN_KEY.as_bytes(), None), Err(KeyError::PasswordNeeded)));
    }

    #[test]
    fn sec1_keys_are_read_after_their_parameters() {
        let k = SigningKey::from_pem(SEC1.as_bytes(), None).unwrap();
        assert!(k.public_key().to_pem().contains("PUBLIC KEY"));
    }

    #[test]
    fn other_curves_and_algorithms_are_refused_by_name() {
        let msg = |r: Result<_, KeyError>| match r {
            Err(KeyError::Algorithm(m)) => m,
            other => panic!("expected an algorithm error, got {other:?}"),
        };
        assert_eq!(msg(PublicKey::from_pem(P384_PUB.as_bytes()).map(|_| ())), "ECDSA on P-384 (secp384r1)");
        assert_eq!(msg(SigningKey::from_pem(SEC1_P384.as_bytes(), None).map(|_| ())), "ECDSA on P-384 (secp384r1)");
        assert_eq!(msg(SigningKey::from_pem(ED25519.as_bytes(), None).map(|_| ())), "Ed25519");
        let e = PublicKey::from_pem(P384_PUB.as_bytes()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the key is ECDSA on P-384 (secp384r1); bpfarm signs and verifies with ECDSA P-256 only"
        );
    }

    #[test]
    fn a_private_key_is_never_printed() {
        let k = SigningKey::from_pem(PKCS8.as_bytes(), None).unwrap();
        let shown = format!("{k:?}");
        assert!(shown.starts_with("SigningKey(sha256:"), "{shown}");
        assert!(!shown.contains("ZDav"));
    }

    #[test]
    fn public_pem_round_trips_with_the_same_id() {
        let k = SigningKey::from_pem(PKCS8.as_bytes(), None).unwrap();
        let p = PublicKey::from_pem(k.public_key().to_pem().as_bytes()).unwrap();
        assert_eq!(p.id(), k.id());
        assert!(p.to_pem().starts_with("-----BEGIN PUBLIC KEY-----\n"));
        // The id is sha256 of the SPKI DER, as `openssl pkey -pubout -outform der | sha256sum` prints it.
        assert_eq!(k.id().to_string(), "sha256:4ccfc91e20dc23752fae94cf0a2e2b3cf851698eea091a64329e22b7d0cab591");
    }

    #[test]
    fn keys_in_the_wrong_place_are_named() {
        let k = SigningKey::from_pem(PKCS8.as_bytes(), None).unwrap();
        assert!(matches!(PublicKey::from_pem(PKCS8.as_bytes()), Err(KeyError::PrivateWherePublic)));
        assert!(matches!(
            SigningKey::from_pem(k.public_key().to_pem().as_bytes(), None),
            Err(KeyError::PublicWherePrivate)
        ));
        assert!(matches!(PublicKey::from_pem(b"hello"), Err(KeyError::NoPem)));
        assert!(matches!(PublicKey::from_pem(b"\xff\xfe"), Err(KeyError::Pem(_))));
        let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(PublicKey::from_pem(cert.as_bytes()), Err(KeyError::Label { .. })));
        let truncated = &PKCS8[..PKCS8.len() - 30];
        assert!(matches!(SigningKey::from_pem(truncated.as_bytes(), None), Err(KeyError::Pem(_))));
        let garbage = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert!(matches!(PublicKey::from_pem(garbage.as_bytes()), Err(KeyError::Malformed { .. })));
        assert!(matches!(TrustedKeys::new([]), Err(KeyError::NoKeys)));
    }

    #[test]
    fn an_oversized_key_file_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.pem");
        std::fs::write(&path, vec![b'A'; 100_000]).unwrap();
        let e = PublicKey::load(&path).unwrap_err();
        assert!(matches!(&e, KeyError::File { source, .. } if matches!(**source, KeyError::TooLarge(_))), "{e:?}");
        assert!(e.to_string().contains("big.pem"));
    }

    #[test]
    fn hostile_scrypt_parameters_are_refused_before_deriving() {
        let doc = |n: u64, r: u32, p: u32| {
            format!(
                r#"{{"kdf":{{"name":"scrypt","params":{{"N":{n},"r":{r},"p":{p}}},"salt":"AAAA"}},"cipher":{{"name":"nacl/secretbox","nonce":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}},"ciphertext":"AAAA"}}"#
            )
        };
        for (n, r, p) in
            [(1u64 << 40, 8, 1), (1 << 20, 16, 1), (65536, 8, 1000), (65535, 8, 1), (0, 8, 1), (1024, 0, 1)]
        {
            let e = decrypt_cosign(doc(n, r, p).as_bytes(), b"pw").unwrap_err();
            assert!(matches!(e, KeyError::KdfParams { .. }), "N={n} r={r} p={p}: {e:?}");
        }
        let other = doc(1024, 8, 1).replace("nacl/secretbox", "aes-gcm");
        assert!(matches!(decrypt_cosign(other.as_bytes(), b"pw"), Err(KeyError::Unsupported { .. })));
    }
}
