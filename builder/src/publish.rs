//! Publishing a build's objects to a registry, after validation: each object
//! with the metadata the build made for it, taken from the report in memory
//! (never read back from the output folder). Objects the registry already
//! holds (same digest) are skipped; a registry that holds a different object
//! for the identity refuses, and that is reported, not retried.

use bpfarm_object::client::{ClientError, Published, RegistryClient, SignedUpload};
use bpfarm_object::oci_client::{OciError, OciRegistry};
use bpfarm_object::sign::{SignError, SignedObject, Subject, attestation_artifact, files_artifact, signature_artifact};
use bpfarm_object::{Digest, ObjectMetadata, oci};
use serde::Serialize;

use crate::build::{Output, Report};
use crate::signing::{Signatures, Signer};

/// Where `--publish` sends objects: a bpfarm registry's `/v1` API, or any
/// OCI registry (`oci://HOST/NAMESPACE`).
#[derive(Debug)]
pub enum Destination {
    Registry(RegistryClient),
    Oci(Box<OciRegistry>),
}

/// Why one object was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{path}: {source}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} changed since it was built: it hashes to {found}, its metadata says {expected}")]
    Changed { path: std::path::PathBuf, found: Digest, expected: Digest },
    #[error(transparent)]
    Registry(#[from] ClientError),
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error("signing the OCI manifest: {0}")]
    Sign(#[from] SignError),
    #[error("{path} has no signature: signing it failed, so it is not published")]
    Unsigned { path: std::path::PathBuf },
}

impl PublishError {
    /// A registry that holds another object for the identity refuses (409);
    /// everything else is a failure (a 403, too: a read-only token, or a
    /// registry that takes only objects signed by a key it trusts).
    fn outcome(&self) -> Outcome {
        match self {
            PublishError::Registry(e) if e.status() == Some(409) => Outcome::Refused,
            _ => Outcome::Failed,
        }
    }
}

impl Destination {
    fn publish(&self, meta: &ObjectMetadata, bytes: &[u8]) -> Result<Published, PublishError> {
        Ok(match self {
            Destination::Registry(c) => c.publish(meta, bytes, false)?,
            Destination::Oci(r) => r.publish(meta, bytes)?,
        })
    }

    /// Publishes a signed object: to `/v1` with its `.sig`, `.intoto.jsonl`
    /// and the signature of its OCI manifest (the registry writes the
    /// `.sig`/`.att` tags of its `/v2` face); to an OCI registry, the
    /// `sha256-<hex>.sig`, `.att` and `.bpfarm` tags of its manifest, then
    /// the object.
    fn publish_signed(
        &self,
        meta: &ObjectMetadata,
        bytes: &[u8],
        signer: &Signer,
        signed: &SignedObject,
    ) -> Result<Published, PublishError> {
        match self {
            Destination::Registry(c) => {
                let upload = SignedUpload {
                    signature: signed.signature.as_bytes().to_vec(),
                    attestation: signed.provenance.to_jsonl(),
                    manifest_signature: signer.sign_manifest(meta, &c.docker_reference())?,
                };
                Ok(c.publish_signed(meta, bytes, false, &upload)?)
            }
            Destination::Oci(r) => {
                // The signatures first: a registry that takes only signed
                // objects (bpfarm's `--trusted-key`) looks for the `.sig`
                // tag when the manifest arrives; others accept a referrer
                // before its subject.
                let subject = Subject::manifest(&oci::manifest(meta));
                let signature = signer.sign_manifest(meta, &r.docker_reference())?;
                r.push_artifact(&signature_artifact(&subject, std::slice::from_ref(&signature)))?;
                r.push_artifact(&attestation_artifact(&subject, &signed.provenance))?;
                // The `.sig` and `.intoto.jsonl` files themselves, as a
                // bpfarm registry serves them, so copies of this
                // repository (skopeo, oras, a bundle) carry them.
                let jsonl = signed.provenance.to_jsonl();
                r.push_artifact(&files_artifact(&subject, &meta.file_name, signed.signature.as_bytes(), Some(&jsonl)))?;
                Ok(r.publish(meta, bytes)?)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Published,
    Skipped,
    Refused,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct PublishResult {
    pub kernel: String,
    pub object: String,
    pub outcome: Outcome,
    pub message: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PublishSummary {
    pub registry: String,
    pub published: usize,
    pub skipped: usize,
    pub refused: usize,
    pub failed: usize,
    /// Failed builds reported to the registry (for its coverage page).
    pub failures_reported: usize,
    pub results: Vec<PublishResult>,
}

impl PublishSummary {
    pub fn ok(&self) -> bool {
        self.refused == 0 && self.failed == 0
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        for r in self.results.iter().filter(|r| matches!(r.outcome, Outcome::Refused | Outcome::Failed)) {
            s += &format!("publish {:?} {}: {}\n", r.outcome, r.kernel, r.message.as_deref().unwrap_or(""));
        }
        s += &format!(
            "published to {}: {} published, {} skipped, {} refused, {} failed; {} build failures reported\n",
            self.registry, self.published, self.skipped, self.refused, self.failed, self.failures_reported
        );
        s
    }
}

/// The object's bytes, which must still be the ones its metadata names;
/// with `signing`, the object goes with its signatures, and an object that
/// has none (its signing failed) is not sent.
fn publish_one_signed(
    dest: &Destination,
    out: &Output,
    signing: Option<(&Signer, &Signatures)>,
) -> Result<Published, PublishError> {
    let bytes = std::fs::read(&out.path).map_err(|source| PublishError::Read { path: out.path.clone(), source })?;
    let found = Digest::of_bytes(&bytes);
    if found != out.metadata.digest {
        return Err(PublishError::Changed { path: out.path.clone(), found, expected: out.metadata.digest.clone() });
    }
    match signing {
        None => dest.publish(&out.metadata, &bytes),
        Some((signer, sigs)) => {
            let signed = sigs.get(out).ok_or_else(|| PublishError::Unsigned { path: out.path.clone() })?;
            dest.publish_signed(&out.metadata, &bytes, signer, signed)
        }
    }
}

/// Publishes every object the build produced (built or from the cache).
pub fn publish(report: &Report, dest: &Destination, registry: &str) -> PublishSummary {
    publish_signed(report, dest, registry, None)
}

/// As `publish`; with `signing` (`--sign-key`), each object with its
/// signatures.
pub fn publish_signed(
    report: &Report,
    dest: &Destination,
    registry: &str,
    signing: Option<(&Signer, &Signatures)>,
) -> PublishSummary {
    let mut summary = PublishSummary { registry: registry.to_owned(), ..Default::default() };
    for k in &report.kernels {
        let Some(out) = k.output() else { continue };
        let (outcome, message) = match publish_one_signed(dest, out, signing) {
            Ok(Published::Published) => (Outcome::Published, None),
            Ok(Published::Skipped) => (Outcome::Skipped, None),
            Err(e) => (e.outcome(), Some(e.to_string())),
        };
        match outcome {
            Outcome::Published => summary.published += 1,
            Outcome::Skipped => summary.skipped += 1,
            Outcome::Refused => summary.refused += 1,
            Outcome::Failed => summary.failed += 1,
        }
        summary.results.push(PublishResult {
            kernel: k.kernel.clone(),
            object: out.path.display().to_string(),
            outcome,
            message,
        });
    }
    // Failed builds are news for the registry's coverage page; reporting
    // them is best effort and never fails the build.
    let Destination::Registry(client) = dest else { return summary };
    for k in report.kernels.iter().filter(|k| k.release_known) {
        // Only the publishable part: compiler errors about the tree, capped.
        let (Some(arch), Some(failure)) = (k.arch, k.failure()) else { continue };
        match client.report_failure(&k.kernel, arch.uname(), &report.version, &failure.public) {
            Ok(()) => summary.failures_reported += 1,
            Err(e) => tracing::warn!("reporting the failure of {} to {registry}: {e}", k.kernel),
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpfarm_object::http::{Transport, TransportConfig};
    use bpfarm_object::{Arch, Identity, Origin};

    /// What is published is the build's own metadata, in memory, and bytes
    /// that still match it: no `.json` is read back, and an object changed
    /// on disk since the build is refused before anything is sent.
    #[test]
    fn publish_takes_metadata_from_the_build_and_checks_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tracee.bpf.6_1_0-56-amd64.v1.o");
        std::fs::write(&path, b"object").unwrap();
        let id = Identity::new("6.1.0-56-amd64", Arch::X86_64, "v1").unwrap();
        let transport =
            Transport::new(TransportConfig { timeout: std::time::Duration::from_secs(5), ..Default::default() })
                .unwrap();
        // Port 9 (discard) on loopback: nothing listens, the send fails.
        let dest = Destination::Registry(RegistryClient::new("http://127.0.0.1:9", None, &transport).unwrap());

        let changed = Output {
            path: path.clone(),
            metadata: ObjectMetadata::unattested(id.clone(), Digest::of_bytes(b"other"), 5, Origin::StaticLayout),
        };
        let e = publish_one_signed(&dest, &changed, None).unwrap_err();
        assert!(matches!(e, PublishError::Changed { .. }), "{e}");
        assert_eq!(e.outcome(), Outcome::Failed);

        let good = Output {
            path,
            metadata: ObjectMetadata::unattested(id, Digest::of_bytes(b"object"), 6, Origin::StaticLayout),
        };
        // No .json beside the object, and the only failure is the registry's.
        let e = publish_one_signed(&dest, &good, None).unwrap_err();
        assert!(matches!(e, PublishError::Registry(_)), "{e}");
    }
}
