//! The object's `<file>.sig` and `<file>.intoto.jsonl` as an OCI artifact,
//! so they cross an air gap inside a bundle (or any OCI copy) and come back
//! out byte for byte (docs/contracts.md, "Signatures").
//!
//! One image manifest per signed object: `artifactType`
//! [`FILES_ARTIFACT_TYPE`], the OCI empty config, the two files as layers
//! (titled with their file names, so `oras pull` writes them beside each
//! other), and the object's platform manifest as its `subject` (registries
//! with the referrers API list it). It is tagged `sha256-<hex>.bpfarm`
//! beside cosign's `.sig`/`.att` tags, for registries and layouts without
//! referrers. Field order is fixed and there is no time in it: the same
//! files give the same bytes.

use serde::{Deserialize, Serialize};

use super::{MAX_ATTESTATION_BLOB, MAX_SIGNATURE_BLOB, OciArtifact, OciBlob, PROVENANCE_SUFFIX, SIGNATURE_SUFFIX};
use super::{Subject, VerifyError};
use crate::{Digest, oci};

/// The `artifactType` of the carrier.
pub const FILES_ARTIFACT_TYPE: &str = "application/vnd.bpfarm.tracee.bpf.signatures.v1";
/// The layer holding `<file>.sig` (cosign `sign-blob` text).
pub const SIGNATURE_LAYER_MEDIA_TYPE: &str = "application/vnd.bpfarm.tracee.bpf.signature.v1+base64";
/// The layer holding `<file>.intoto.jsonl` (DSSE envelopes, one a line).
pub const ATTESTATION_LAYER_MEDIA_TYPE: &str = "application/vnd.bpfarm.tracee.bpf.provenance.v1+jsonl";
/// A carrier larger than this is not one of ours (it is a few hundred bytes).
pub const MAX_CARRIER: usize = 16 << 10;

/// `sha256-<hex>.bpfarm`: where the carrier of manifest `subject` is tagged.
pub fn files_tag(subject: &Digest) -> String {
    format!("sha256-{}.bpfarm", subject.hex())
}

/// The manifest digest a carrier tag names, if `tag` is one.
pub fn files_tag_subject(tag: &str) -> Option<Digest> {
    tag.strip_prefix("sha256-")?.strip_suffix(".bpfarm").and_then(|hex| format!("sha256:{hex}").parse().ok())
}

#[derive(Serialize, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    annotations: std::collections::BTreeMap<String, String>,
}

/// The carrier of `subject` (the object's platform manifest) for the object
/// file `file_name`: its `.sig` text and, when there is one, its
/// `.intoto.jsonl`. Blobs: the empty config, then the layers.
pub fn files_artifact(subject: &Subject, file_name: &str, signature: &[u8], attestation: Option<&[u8]>) -> OciArtifact {
    // The blob with its descriptor, titled with its file name when it is one.
    let described = |media_type: &str, data: &[u8], title: Option<String>| {
        let b = OciBlob::new(media_type, data.to_vec());
        let d = Descriptor {
            media_type: b.media_type.clone(),
            digest: b.digest.to_string(),
            size: b.data.len() as u64,
            annotations: title.map(|t| (oci::ANN_TITLE.to_owned(), t)).into_iter().collect(),
        };
        (b, d)
    };
    let config = described(oci::EMPTY_MEDIA_TYPE, oci::EMPTY_CONFIG, None);
    let mut layers =
        vec![described(SIGNATURE_LAYER_MEDIA_TYPE, signature, Some(format!("{file_name}{SIGNATURE_SUFFIX}")))];
    if let Some(a) = attestation {
        layers.push(described(ATTESTATION_LAYER_MEDIA_TYPE, a, Some(format!("{file_name}{PROVENANCE_SUFFIX}"))));
    }
    super::cosign::assemble(files_tag(&subject.digest), FILES_ARTIFACT_TYPE, subject, config, layers)
}

/// A layer of a carrier, by digest and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CarriedBlob {
    pub digest: Digest,
    pub size: u64,
}

/// What a carrier names: the `.sig` layer, and the `.intoto.jsonl` layer
/// when there is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CarriedFiles {
    pub subject: Digest,
    pub signature: CarriedBlob,
    pub attestation: Option<CarriedBlob>,
}

#[derive(Deserialize)]
struct Parsed {
    #[serde(rename = "artifactType", default)]
    artifact_type: String,
    #[serde(default)]
    layers: Vec<Descriptor>,
    subject: Option<Subject>,
}

/// Reads a carrier manifest's form (not its blobs): the right artifact
/// type, a subject, exactly one `.sig` layer and at most one
/// `.intoto.jsonl` layer, each within the size an agent or registry reads
/// ([`MAX_SIGNATURE_BLOB`], [`MAX_ATTESTATION_BLOB`]).
pub fn read_files_artifact(manifest: &[u8]) -> Result<CarriedFiles, VerifyError> {
    let what = "signature carrier";
    let format = |reason: String| VerifyError::Format { what, reason };
    if manifest.len() > MAX_CARRIER {
        return Err(VerifyError::TooLarge { what, len: manifest.len(), max: MAX_CARRIER });
    }
    let m: Parsed = serde_json::from_slice(manifest).map_err(|e| format(e.to_string()))?;
    if m.artifact_type != FILES_ARTIFACT_TYPE {
        return Err(format(format!("artifactType {:?} is not {FILES_ARTIFACT_TYPE:?}", m.artifact_type)));
    }
    let subject = m.subject.ok_or_else(|| format("no subject".into()))?.digest;
    let (mut signature, mut attestation) = (None, None);
    for l in &m.layers {
        let (slot, max) = match l.media_type.as_str() {
            SIGNATURE_LAYER_MEDIA_TYPE => (&mut signature, MAX_SIGNATURE_BLOB),
            ATTESTATION_LAYER_MEDIA_TYPE => (&mut attestation, MAX_ATTESTATION_BLOB),
            other => return Err(format(format!("a layer of media type {other:?}"))),
        };
        if l.size > max {
            return Err(VerifyError::TooLarge { what: "carried file", len: l.size as usize, max: max as usize });
        }
        let digest: Digest = l.digest.parse().map_err(|e: crate::DigestError| format(e.to_string()))?;
        if slot.replace(CarriedBlob { digest, size: l.size }).is_some() {
            return Err(format(format!("two layers of media type {}", l.media_type)));
        }
    }
    let signature = signature.ok_or_else(|| format("no signature layer".into()))?;
    Ok(CarriedFiles { subject, signature, attestation })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_carrier_is_reproducible_and_reads_back() {
        let subject = Subject::manifest(b"{\"a platform manifest\":1}");
        let a = files_artifact(&subject, "tracee.bpf.x.o", b"c2ln", Some(b"{}\n{}\n"));
        assert_eq!(a, files_artifact(&subject, "tracee.bpf.x.o", b"c2ln", Some(b"{}\n{}\n")));
        assert_eq!(a.tag, files_tag(&subject.digest));
        assert_eq!(files_tag_subject(&a.tag), Some(subject.digest.clone()));
        assert_eq!(files_tag_subject("sha256-xyz.sig"), None);
        let v: serde_json::Value = serde_json::from_slice(&a.manifest).unwrap();
        assert_eq!(v["artifactType"], FILES_ARTIFACT_TYPE);
        assert_eq!(v["config"]["mediaType"], oci::EMPTY_MEDIA_TYPE);
        assert_eq!(v["subject"]["digest"], subject.digest.as_str());
        assert_eq!(v["layers"][0]["annotations"][oci::ANN_TITLE], "tracee.bpf.x.o.sig");
        assert_eq!(v["layers"][1]["annotations"][oci::ANN_TITLE], "tracee.bpf.x.o.intoto.jsonl");
        let read = read_files_artifact(&a.manifest).unwrap();
        assert_eq!(read.subject, subject.digest);
        assert_eq!(read.signature, CarriedBlob { digest: Digest::of_bytes(b"c2ln"), size: 4 });
        assert_eq!(read.attestation.unwrap().size, 6);
        let no_att = files_artifact(&subject, "f.o", b"c2ln", None);
        assert!(read_files_artifact(&no_att.manifest).unwrap().attestation.is_none());

        // Not a carrier, a layer over the cap, two signatures, no subject.
        let text = String::from_utf8(a.manifest.clone()).unwrap();
        for (bad, says) in [
            (text.replace(FILES_ARTIFACT_TYPE, "application/x"), "artifactType"),
            (text.replace("\"size\":4,", "\"size\":4097,"), "over the limit"),
            (text.replace(ATTESTATION_LAYER_MEDIA_TYPE, SIGNATURE_LAYER_MEDIA_TYPE), "two layers"),
            (text.replace("\"subject\"", "\"subjekt\""), "no subject"),
        ] {
            let e = read_files_artifact(bad.as_bytes()).unwrap_err();
            assert!(e.to_string().contains(says), "{e}");
        }
    }
}
