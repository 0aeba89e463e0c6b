//! `--sign-key`: signing what a build wrote, beside it in `--out`.
//!
//! For every object the build produced (compiled or from the cache), with
//! the metadata its row carries in memory: `<file>.sig` (`cosign
//! sign-blob` form, over the file's exact bytes, re-read and checked
//! against the metadata first) and `<file>.intoto.jsonl` (the SLSA
//! provenance, v1 and its v0.2 twin, naming this builder's version, every
//! source package with its digest, the compiler, the flags and the build
//! time). Both are written atomically. The key is loaded once, before any
//! build, and never leaves this process: nothing here logs, reports or
//! sends it; only signatures leave.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bpfarm_object::sign::{
    self, BuilderInfo, KeyError, ManifestSignature, PROVENANCE_SUFFIX, SIGNATURE_SUFFIX, SignError, SignedObject,
    SigningKey,
};
use bpfarm_object::{Digest, ObjectMetadata, oci};

use crate::build::{Output, Report};
use crate::fsutil;

/// The builder's key and who it says built the objects.
pub struct Signer {
    key: SigningKey,
    builder: BuilderInfo,
}

impl std::fmt::Debug for Signer {
    // Only the key's id: the key itself is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("key", self.key.id()).field("builder", &self.builder).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} changed since it was built: it hashes to {found}, its metadata says {expected}")]
    Changed { path: PathBuf, found: Digest, expected: Digest },
    #[error("signing {path}: {source}")]
    Sign {
        path: PathBuf,
        #[source]
        source: SignError,
    },
    #[error("{path}: writing it: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Signer {
    /// Loads the key (an encrypted cosign key takes its password from
    /// `COSIGN_PASSWORD`).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        Ok(Self::new(SigningKey::load(path)?))
    }

    pub fn new(key: SigningKey) -> Self {
        Self { key, builder: BuilderInfo::bpfarm(env!("CARGO_PKG_VERSION")) }
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// Signs the object at `out.path` and writes `<file>.sig` and
    /// `<file>.intoto.jsonl` beside it.
    pub fn sign_output(&self, out: &Output) -> Result<SignedObject, SigningError> {
        let path = &out.path;
        let bytes = std::fs::read(path).map_err(|source| SigningError::Read { path: path.clone(), source })?;
        let found = Digest::of_bytes(&bytes);
        if found != out.metadata.digest {
            return Err(SigningError::Changed { path: path.clone(), found, expected: out.metadata.digest.clone() });
        }
        let signed = sign::sign_object(&self.key, &out.metadata, &bytes, &self.builder)
            .map_err(|source| SigningError::Sign { path: path.clone(), source })?;
        for (suffix, data) in [
            (SIGNATURE_SUFFIX, signed.signature.as_bytes().to_vec()),
            (PROVENANCE_SUFFIX, signed.provenance.to_jsonl()),
        ] {
            let dest = beside(path, suffix);
            if std::fs::read(&dest).ok().as_deref() != Some(&data[..]) {
                fsutil::write_atomic(&dest, &data).map_err(|source| SigningError::Write { path: dest, source })?;
            }
        }
        Ok(signed)
    }

    /// The cosign simple-signing signature of the object's OCI manifest
    /// (`oci::manifest`, the same bytes every registry's form of it has),
    /// with `docker_reference` as the payload's identity.
    pub fn sign_manifest(&self, meta: &ObjectMetadata, docker_reference: &str) -> Result<ManifestSignature, SignError> {
        sign::sign_manifest(&self.key, docker_reference, &manifest_digest(meta))
    }
}

/// The digest of the object's platform manifest, as every registry holds it.
pub fn manifest_digest(meta: &ObjectMetadata) -> Digest {
    Digest::of_bytes(&oci::manifest(meta))
}

/// `<path><suffix>`.
pub fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// What signing a build's objects did: the signatures by object path, and
/// the objects that could not be signed (by kernel).
#[derive(Debug, Default)]
pub struct Signatures {
    pub signed: HashMap<PathBuf, SignedObject>,
    pub failed: Vec<(String, SigningError)>,
}

impl Signatures {
    pub fn get(&self, out: &Output) -> Option<&SignedObject> {
        self.signed.get(&out.path)
    }
}

/// Signs every object the build produced (built or from the cache).
pub fn sign_report(signer: &Signer, report: &Report) -> Signatures {
    let mut s = Signatures::default();
    for k in &report.kernels {
        let Some(out) = k.output() else { continue };
        match signer.sign_output(out) {
            Ok(signed) => {
                s.signed.insert(out.path.clone(), signed);
            }
            Err(e) => s.failed.push((k.kernel.clone(), e)),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpfarm_object::sign::TrustedKeys;
    use bpfarm_object::{Arch, Identity, Origin};

    /// A fixed P-256 key (PKCS#8), so the test needs no randomness.
    const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgZDavLJDkqc/lSbuy
obfPAZKNxIub4ih6PRJHMZigpLihRANCAARqV2SVHxsFHHF15XfOexOH+OK7Nxcr
xIF6ePDoeo4L9wcAx4/Df4kXLEXBj9sMwTYFFdHuz4E0eqxHT16BOVE3
-----END PRIVATE KEY-----
";

    #[test]
    fn signs_the_bytes_on_disk_beside_them_and_refuses_changed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::new(SigningKey::from_pem(KEY.as_bytes(), None).unwrap());
        let keys = TrustedKeys::new([signer.key().public_key().clone()]).unwrap();
        let id = Identity::new("6.1.0-56-amd64", Arch::X86_64, "v1").unwrap();
        let path = dir.path().join(id.file_name());
        std::fs::write(&path, b"object").unwrap();
        let mut metadata = ObjectMetadata::unattested(id.clone(), Digest::of_bytes(b"object"), 6, Origin::StaticLayout);
        metadata.built_at = "2026-01-01T00:00:00Z".into();
        let out = Output { path: path.clone(), metadata };
        let signed = signer.sign_output(&out).unwrap();
        let sig = std::fs::read(beside(&path, SIGNATURE_SUFFIX)).unwrap();
        let jsonl = std::fs::read(beside(&path, PROVENANCE_SUFFIX)).unwrap();
        assert_eq!(sig, signed.signature.as_bytes());
        assert!(sign::verify_object(&keys, &id, b"object", &sig, Some(&jsonl)).is_ok());
        // The manifest signature names the manifest every registry writes.
        let m = signer.sign_manifest(&out.metadata, "r/ns/tracee-bpf").unwrap();
        assert_eq!(m.subject().unwrap(), Digest::of_bytes(&oci::manifest(&out.metadata)));
        assert!(m.verify(&keys, &manifest_digest(&out.metadata)).is_ok());

        std::fs::write(&path, b"objecT").unwrap();
        assert!(matches!(signer.sign_output(&out), Err(SigningError::Changed { .. })));
        // What was written for the old bytes is untouched, not re-signed.
        assert_eq!(std::fs::read(beside(&path, SIGNATURE_SUFFIX)).unwrap(), sig);
        // Debug shows the key's id only.
        assert!(!format!("{signer:?}").contains("MIGHAgEA"));
    }
}
