//! `Digest`: a validated `sha256:<64 lowercase hex>` content address, and a
//! writer that hashes what passes through it.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// A sha256 content digest, always in OCI form `sha256:<hex>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

/// Bytes with their sha256, computed over exactly these bytes. The fields
/// are private and nothing here changes the bytes, so the digest cannot go
/// stale: a gate that needs the digest of what it passes can take it from
/// the hash computed while the bytes streamed in ([`crate::http`]) instead
/// of hashing them a second time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hashed {
    bytes: Vec<u8>,
    digest: Digest,
}

impl Hashed {
    /// Hashes `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        let digest = Digest::of_bytes(&bytes);
        Self { bytes, digest }
    }

    /// `bytes` with the hasher that was fed exactly them, in order (the
    /// streaming reader's; crate-private so no other digest can be paired).
    #[cfg_attr(not(feature = "client"), allow(dead_code))]
    pub(crate) fn streamed(bytes: Vec<u8>, hasher: Sha256) -> Self {
        Self { bytes, digest: Digest::from_raw(hasher.finalize().into()) }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    pub fn into_parts(self) -> (Vec<u8>, Digest) {
        (self.bytes, self.digest)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest {0:?} does not start with \"sha256:\"")]
    Algorithm(String),
    #[error("digest {0:?} must have 64 lowercase hex characters after \"sha256:\"")]
    Hex(String),
}

impl Digest {
    /// The digest of a byte slice.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self::from_raw(Sha256::digest(bytes).into())
    }

    /// The digest of everything a reader yields.
    pub fn of_reader(mut r: impl Read) -> io::Result<(Self, u64)> {
        let mut w = Sha256Writer::new(io::sink());
        let n = io::copy(&mut r, &mut w)?;
        let (d, _) = w.finish();
        Ok((d, n))
    }

    pub fn from_raw(raw: [u8; 32]) -> Self {
        Self(format!("sha256:{}", hex::encode(raw)))
    }

    /// The 64 hex characters, without the algorithm prefix.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 32 raw bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        // Construction guarantees 64 lowercase hex characters.
        let nibble = |c: u8| match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => 0,
        };
        let mut raw = [0u8; 32];
        for (b, pair) in raw.iter_mut().zip(self.hex().as_bytes().chunks_exact(2)) {
            *b = nibble(pair[0]) << 4 | nibble(pair[1]);
        }
        raw
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some(hex) = s.strip_prefix("sha256:") else {
            return Err(DigestError::Algorithm(s.to_owned()));
        };
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError::Hex(s.to_owned()));
        }
        Ok(Self(s.to_owned()))
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

/// Hashes everything written through it, then hands back the digest, the
/// byte count and the inner writer.
#[derive(Debug)]
pub struct Sha256Writer<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Sha256Writer<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), len: 0 }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(self) -> (Digest, W) {
        (Digest::from_raw(self.hasher.finalize().into()), self.inner)
    }
}

impl<W: Write> Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        let d = Digest::of_bytes(b"abc");
        assert_eq!(d.as_str(), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(d.hex().len(), 64);
        assert_eq!(hex::encode(d.to_bytes()), d.hex());
        let (r, n) = Digest::of_reader(&b"abc"[..]).unwrap();
        assert_eq!((r, n), (d, 3));
    }

    #[test]
    fn parse_rejects_malformed() {
        assert!(matches!("md5:00".parse::<Digest>(), Err(DigestError::Algorithm(_))));
        assert!(matches!("sha256:abc".parse::<Digest>(), Err(DigestError::Hex(_))));
        let upper = format!("sha256:{}", "A".repeat(64));
        assert!(matches!(upper.parse::<Digest>(), Err(DigestError::Hex(_))));
        let ok = format!("sha256:{}", "0".repeat(64));
        assert_eq!(ok.parse::<Digest>().unwrap().as_str(), ok);
        let json: Result<Digest, _> = serde_json::from_str("\"sha256:nothex\"");
        assert!(json.is_err());
    }
}
