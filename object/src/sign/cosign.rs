//! cosign's OCI forms, where `cosign verify` and `cosign verify-attestation`
//! look for them: for a manifest `sha256:<hex>` in a repository, the tag
//! `sha256-<hex>.sig` holds a manifest whose layers are "simple signing"
//! payloads (the signature in the `dev.cosignproject.cosign/signature`
//! annotation), and `sha256-<hex>.att` one whose layers are DSSE envelopes.
//!
//! The manifests bpfarm writes are byte-reproducible (fixed field order,
//! fixed config, RFC 6979 signatures) and also name the signed manifest as
//! their OCI `subject`, with an `artifactType`, so registries with the
//! referrers API list them too.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::blob::{decode_signature, sign_prehash, verify_prehash};
use super::dsse::Envelope;
use super::provenance::{SignedProvenance, VerifiedProvenance, verify_envelope};
use super::{SignError, SigningKey, TrustedKeys, Verified, VerifyError};
use crate::{Digest, oci};

pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const DSSE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// The `artifactType` of a signature manifest, as referrers-API clients
/// (cosign's OCI 1.1 mode, Ratify) look for it.
pub const SIGNATURE_ARTIFACT_TYPE: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
pub const ANN_SIGNATURE: &str = "dev.cosignproject.cosign/signature";
pub const ANN_PREDICATE_TYPE: &str = "predicateType";
/// `critical.type` of a simple-signing payload.
pub const SIMPLE_SIGNING_TYPE: &str = "cosign container image signature";

/// A signature or attestation manifest larger than this is refused unread.
pub const MAX_MANIFEST: usize = 256 * 1024;
/// Layers looked at per manifest (cosign appends one per signature).
pub const MAX_LAYERS: usize = 64;
/// A simple-signing payload is a few hundred bytes.
pub const MAX_PAYLOAD: u64 = 64 * 1024;

/// `sha256-<hex>.sig`: where cosign looks for the signatures of `subject`.
pub fn signature_tag(subject: &Digest) -> String {
    format!("sha256-{}.sig", subject.hex())
}

/// `sha256-<hex>.att`: where cosign looks for the attestations of `subject`.
pub fn attestation_tag(subject: &Digest) -> String {
    format!("sha256-{}.att", subject.hex())
}

/// One signed simple-signing payload: what a builder makes with its key and
/// what anyone can later turn into a signature manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestSignature {
    /// The payload's exact JSON.
    pub payload: Vec<u8>,
    /// base64 DER ECDSA signature over SHA-256 of `payload`.
    pub signature: String,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    critical: Critical,
    optional: Option<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
struct Critical {
    identity: PayloadIdentity,
    image: PayloadImage,
    #[serde(rename = "type")]
    type_: String,
}

#[derive(Serialize, Deserialize)]
struct PayloadIdentity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Serialize, Deserialize)]
struct PayloadImage {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

impl Payload {
    /// A simple-signing payload of cosign's type.
    fn parse(bytes: &[u8]) -> Result<Self, VerifyError> {
        let what = "simple-signing payload";
        let p: Payload =
            serde_json::from_slice(bytes).map_err(|e| VerifyError::Format { what, reason: e.to_string() })?;
        if p.critical.type_ != SIMPLE_SIGNING_TYPE {
            return Err(VerifyError::Format {
                what,
                reason: format!("type {:?} is not {SIMPLE_SIGNING_TYPE:?}", p.critical.type_),
            });
        }
        Ok(p)
    }
}

/// cosign's payload for `manifest_digest`, byte for byte as cosign writes it.
/// `docker_reference` is the repository (`HOST[:PORT]/NAMESPACE/tracee-bpf`);
/// verifiers (cosign's and bpfarm's) check the digest, not the reference,
/// so a mirrored copy stays valid.
pub fn simple_signing_payload(docker_reference: &str, manifest_digest: &Digest) -> Vec<u8> {
    let p = Payload {
        critical: Critical {
            identity: PayloadIdentity { docker_reference: docker_reference.to_owned() },
            image: PayloadImage { docker_manifest_digest: manifest_digest.to_string() },
            type_: SIMPLE_SIGNING_TYPE.to_owned(),
        },
        optional: None,
    };
    // Strings only: serialization cannot fail.
    serde_json::to_vec(&p).unwrap_or_default()
}

impl ManifestSignature {
    /// The manifest digest the payload names, after checking its form and
    /// that the signature is base64 DER (not that it verifies: see
    /// [`ManifestSignature::verify`]).
    pub fn subject(&self) -> Result<Digest, VerifyError> {
        decode_signature(self.signature.as_bytes())?;
        let what = "simple-signing payload";
        if self.payload.len() as u64 > MAX_PAYLOAD {
            return Err(VerifyError::TooLarge { what, len: self.payload.len(), max: MAX_PAYLOAD as usize });
        }
        Payload::parse(&self.payload)?
            .critical
            .image
            .docker_manifest_digest
            .parse()
            .map_err(|e: crate::DigestError| VerifyError::Format { what, reason: e.to_string() })
    }

    /// Checks that a trusted key signed the payload and that it names
    /// exactly the manifest `subject`.
    pub fn verify(&self, keys: &TrustedKeys, subject: &Digest) -> Result<Verified, VerifyError> {
        let named = self.subject()?;
        let sig = decode_signature(self.signature.as_bytes())?;
        let verified = verify_prehash(keys, &Sha256::digest(&self.payload).into(), &sig)?;
        if &named != subject {
            return Err(VerifyError::SubjectMismatch { expected: subject.clone(), found: named.to_string() });
        }
        Ok(verified)
    }
}

/// Signs the manifest `manifest_digest` as `cosign sign` does.
pub fn sign_manifest(
    key: &SigningKey,
    docker_reference: &str,
    manifest_digest: &Digest,
) -> Result<ManifestSignature, SignError> {
    let payload = simple_signing_payload(docker_reference, manifest_digest);
    let prehash: [u8; 32] = Sha256::digest(&payload).into();
    let sig = sign_prehash(key, &prehash)?;
    use base64::Engine as _;
    Ok(ManifestSignature { payload, signature: base64::engine::general_purpose::STANDARD.encode(sig.as_bytes()) })
}

/// A blob of an artifact, with its digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OciBlob {
    pub media_type: String,
    pub digest: Digest,
    pub data: Vec<u8>,
}

impl OciBlob {
    pub(super) fn new(media_type: &str, data: Vec<u8>) -> Self {
        Self { media_type: media_type.to_owned(), digest: Digest::of_bytes(&data), data }
    }
}

/// Everything to push for a signature or attestation: its blobs (config
/// first), then `manifest` under `tag`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OciArtifact {
    pub tag: String,
    pub manifest: Vec<u8>,
    pub blobs: Vec<OciBlob>,
}

impl OciArtifact {
    pub fn manifest_digest(&self) -> Digest {
        Digest::of_bytes(&self.manifest)
    }
}

/// The manifest an artifact signs, as an OCI descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

impl Subject {
    /// An image manifest given by its exact bytes.
    pub fn manifest(bytes: &[u8]) -> Self {
        Self {
            media_type: oci::MANIFEST_MEDIA_TYPE.to_owned(),
            digest: Digest::of_bytes(bytes),
            size: bytes.len() as u64,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType")]
    media_type: String,
    size: u64,
    digest: String,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    annotations: std::collections::BTreeMap<String, String>,
}

impl Descriptor {
    fn digest(&self) -> Result<Digest, VerifyError> {
        self.digest
            .parse()
            .map_err(|e: crate::DigestError| VerifyError::Format { what: "layer descriptor", reason: e.to_string() })
    }
}

/// An artifact's image manifest: fixed field order, no time in it. `D` is
/// the descriptor's form (its field order is part of the bytes too).
#[derive(Serialize)]
struct Manifest<'a, D> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    #[serde(rename = "artifactType")]
    artifact_type: &'a str,
    config: D,
    layers: Vec<D>,
    subject: &'a Subject,
}

/// The artifact under `tag` of type `artifact_type` for `subject`: its
/// config and layers, each a blob with the descriptor the manifest holds
/// for it. Blobs: the config, then the layers.
pub(super) fn assemble<D: Serialize>(
    tag: String,
    artifact_type: &str,
    subject: &Subject,
    config: (OciBlob, D),
    layers: Vec<(OciBlob, D)>,
) -> OciArtifact {
    let (layer_blobs, layer_descriptors): (Vec<OciBlob>, Vec<D>) = layers.into_iter().unzip();
    let manifest = Manifest {
        schema_version: 2,
        media_type: oci::MANIFEST_MEDIA_TYPE,
        artifact_type,
        config: config.1,
        layers: layer_descriptors,
        subject,
    };
    // Strings and numbers only: serialization cannot fail.
    let manifest = serde_json::to_vec(&manifest).unwrap_or_default();
    let mut blobs = vec![config.0];
    blobs.extend(layer_blobs);
    OciArtifact { tag, manifest, blobs }
}

/// cosign's image config for a signature image: nothing but the layers'
/// diff ids, at the zero time.
#[derive(Serialize)]
struct Config<'a> {
    architecture: &'a str,
    created: &'a str,
    history: [History<'a>; 1],
    os: &'a str,
    rootfs: RootFs,
    config: std::collections::BTreeMap<String, String>,
}

#[derive(Serialize)]
struct History<'a> {
    created: &'a str,
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    type_: &'static str,
    diff_ids: Vec<String>,
}

const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

fn artifact(
    tag: String,
    artifact_type: &str,
    subject: &Subject,
    layers: Vec<(OciBlob, Vec<(&str, String)>)>,
) -> OciArtifact {
    let config = Config {
        architecture: "",
        created: ZERO_TIME,
        history: [History { created: ZERO_TIME }],
        os: "",
        rootfs: RootFs { type_: "layers", diff_ids: layers.iter().map(|(b, _)| b.digest.to_string()).collect() },
        config: Default::default(),
    };
    let config = OciBlob::new(CONFIG_MEDIA_TYPE, serde_json::to_vec(&config).unwrap_or_default());
    let described = |b: OciBlob, annotations: Vec<(&str, String)>| {
        let d = Descriptor {
            media_type: b.media_type.clone(),
            size: b.data.len() as u64,
            digest: b.digest.to_string(),
            annotations: annotations.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        };
        (b, d)
    };
    let layers = layers.into_iter().map(|(b, a)| described(b, a)).collect();
    assemble(tag, artifact_type, subject, described(config, vec![]), layers)
}

/// The signature manifest of `subject` (tag `sha256-<hex>.sig`), one layer
/// per signature.
pub fn signature_artifact(subject: &Subject, signatures: &[ManifestSignature]) -> OciArtifact {
    let layers = signatures
        .iter()
        .map(|s| {
            (OciBlob::new(SIMPLE_SIGNING_MEDIA_TYPE, s.payload.clone()), vec![(ANN_SIGNATURE, s.signature.clone())])
        })
        .collect();
    artifact(signature_tag(&subject.digest), SIGNATURE_ARTIFACT_TYPE, subject, layers)
}

/// The attestation manifest of `subject` (tag `sha256-<hex>.att`): the v1
/// and v0.2 provenance envelopes, as `cosign attest` lays them out. Needs no
/// key: the statements already name the manifest.
pub fn attestation_artifact(subject: &Subject, provenance: &SignedProvenance) -> OciArtifact {
    let layer = |e: &Envelope, predicate: &str| {
        (
            OciBlob::new(DSSE_MEDIA_TYPE, e.to_json()),
            vec![(ANN_SIGNATURE, String::new()), (ANN_PREDICATE_TYPE, predicate.to_owned())],
        )
    };
    let layers =
        vec![layer(&provenance.v1, super::provenance::SLSA_V1), layer(&provenance.v02, super::provenance::SLSA_V02)];
    artifact(attestation_tag(&subject.digest), DSSE_MEDIA_TYPE, subject, layers)
}

/// Why a blob could not be had.
pub type FetchError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Deserialize)]
struct ParsedManifest {
    #[serde(default)]
    layers: Vec<Descriptor>,
}

fn parse_manifest(bytes: &[u8], what: &'static str) -> Result<Vec<Descriptor>, VerifyError> {
    if bytes.len() > MAX_MANIFEST {
        return Err(VerifyError::TooLarge { what, len: bytes.len(), max: MAX_MANIFEST });
    }
    let m: ParsedManifest =
        serde_json::from_slice(bytes).map_err(|e| VerifyError::Format { what, reason: e.to_string() })?;
    if m.layers.len() > MAX_LAYERS {
        return Err(VerifyError::TooLarge { what: "layer list", len: m.layers.len(), max: MAX_LAYERS });
    }
    Ok(m.layers)
}

/// A layer's bytes through `fetch`, bounded by `max` and checked against
/// the layer's digest.
fn layer_bytes(
    layer: &Descriptor,
    max: u64,
    fetch: &mut dyn FnMut(&Digest) -> Result<Vec<u8>, FetchError>,
) -> Result<Vec<u8>, VerifyError> {
    let digest = layer.digest()?;
    if layer.size > max {
        return Err(VerifyError::TooLarge { what: "layer", len: layer.size as usize, max: max as usize });
    }
    let data = fetch(&digest).map_err(|source| VerifyError::Fetch { digest: digest.clone(), source })?;
    let actual = Digest::of_bytes(&data);
    if actual != digest || data.len() as u64 != layer.size {
        return Err(VerifyError::BlobMismatch { expected: digest, found: actual });
    }
    Ok(data)
}

/// The first success (later layers are not fetched), else every failure.
fn first_ok<T>(results: impl Iterator<Item = Result<T, VerifyError>>, none: VerifyError) -> Result<T, VerifyError> {
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(v) => return Ok(v),
            Err(e) => errors.push(e),
        }
    }
    match errors.len() {
        0 => Err(none),
        1 => Err(errors.remove(0)),
        _ => Err(VerifyError::NoLayerVerified(errors)),
    }
}

/// Checks a signature manifest (as bpfarm or `cosign sign` wrote it) for
/// the manifest `subject`: some simple-signing layer must be signed by a
/// trusted key and name exactly `subject`. `fetch` returns a layer's bytes
/// by digest (bounded here, and checked against the digest).
pub fn verify_signature_manifest(
    keys: &TrustedKeys,
    subject: &Digest,
    manifest: &[u8],
    fetch: &mut dyn FnMut(&Digest) -> Result<Vec<u8>, FetchError>,
) -> Result<Verified, VerifyError> {
    let layers = parse_manifest(manifest, "signature manifest")?;
    let results = layers.iter().filter(|l| l.media_type == SIMPLE_SIGNING_MEDIA_TYPE).map(|l| {
        let sig = decode_signature(l.annotations.get(ANN_SIGNATURE).map(String::as_bytes).unwrap_or_default())?;
        let payload = layer_bytes(l, MAX_PAYLOAD, fetch)?;
        let verified = verify_prehash(keys, &Sha256::digest(&payload).into(), &sig)?;
        let p = Payload::parse(&payload)?;
        if p.critical.image.docker_manifest_digest != subject.as_str() {
            return Err(VerifyError::SubjectMismatch {
                expected: subject.clone(),
                found: p.critical.image.docker_manifest_digest,
            });
        }
        Ok(verified)
    });
    first_ok(results, VerifyError::NoSignature)
}

/// Checks an attestation manifest for `subject` and returns the SLSA v1
/// provenance a trusted key signed for it.
pub fn verify_attestation_manifest(
    keys: &TrustedKeys,
    subject: &Digest,
    manifest: &[u8],
    fetch: &mut dyn FnMut(&Digest) -> Result<Vec<u8>, FetchError>,
) -> Result<VerifiedProvenance, VerifyError> {
    let layers = parse_manifest(manifest, "attestation manifest")?;
    let results = layers.iter().filter(|l| l.media_type == DSSE_MEDIA_TYPE).filter_map(|l| {
        let envelope = layer_bytes(l, super::dsse::MAX_ENVELOPE as u64, fetch).and_then(|b| Envelope::parse(&b));
        envelope.and_then(|e| verify_envelope(keys, &e, subject)).transpose()
    });
    first_ok(results, VerifyError::NoProvenance)
}

/// One layer of a signature or attestation manifest, for a verifier that
/// fetches the layers itself (the agent, one at a time, within its
/// deadline, stopping at the first that verifies).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerRef {
    pub digest: Digest,
    pub size: u64,
    /// The `dev.cosignproject.cosign/signature` annotation, if any.
    pub signature: Option<String>,
}

fn layer_refs(manifest: &[u8], what: &'static str, media_type: &str) -> Result<Vec<LayerRef>, VerifyError> {
    parse_manifest(manifest, what)?
        .into_iter()
        .filter(|l| l.media_type == media_type)
        .map(|l| {
            Ok(LayerRef { digest: l.digest()?, size: l.size, signature: l.annotations.get(ANN_SIGNATURE).cloned() })
        })
        .collect()
}

/// The simple-signing layers of a signature manifest, in order (at most
/// [`MAX_LAYERS`]; a malformed manifest or descriptor is an error). Each,
/// with its payload, is a [`ManifestSignature`] to [`ManifestSignature::verify`].
pub fn signature_layers(manifest: &[u8]) -> Result<Vec<LayerRef>, VerifyError> {
    layer_refs(manifest, "signature manifest", SIMPLE_SIGNING_MEDIA_TYPE)
}

/// The DSSE layers of an attestation manifest, in order (at most
/// [`MAX_LAYERS`]); each envelope is for [`verify_attestation_envelope`].
pub fn attestation_layers(manifest: &[u8]) -> Result<Vec<LayerRef>, VerifyError> {
    layer_refs(manifest, "attestation manifest", DSSE_MEDIA_TYPE)
}

/// One attestation layer's DSSE envelope: the SLSA v1 provenance a trusted
/// key signed for the manifest `subject` ([`VerifyError::NoProvenance`]
/// for a valid statement of another predicate type).
pub fn verify_attestation_envelope(
    keys: &TrustedKeys,
    envelope: &[u8],
    subject: &Digest,
) -> Result<VerifiedProvenance, VerifyError> {
    if envelope.len() > super::dsse::MAX_ENVELOPE {
        return Err(VerifyError::TooLarge { what: "envelope", len: envelope.len(), max: super::dsse::MAX_ENVELOPE });
    }
    verify_envelope(keys, &Envelope::parse(envelope)?, subject)?.ok_or(VerifyError::NoProvenance)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::sign::keys::tests::PKCS8;
    use crate::sign::provenance::tests::meta;
    use crate::sign::{BuilderInfo, sign_provenance};

    fn setup() -> (SigningKey, TrustedKeys) {
        let key = SigningKey::from_pem(PKCS8.as_bytes(), None).unwrap();
        let keys = TrustedKeys::new([key.public_key().clone()]).unwrap();
        (key, keys)
    }

    fn store(a: &OciArtifact) -> HashMap<Digest, Vec<u8>> {
        a.blobs.iter().map(|b| (b.digest.clone(), b.data.clone())).collect()
    }

    fn fetcher(blobs: &HashMap<Digest, Vec<u8>>) -> impl FnMut(&Digest) -> Result<Vec<u8>, FetchError> + '_ {
        |d: &Digest| blobs.get(d).cloned().ok_or_else(|| format!("no blob {d}").into())
    }

    #[test]
    fn payload_bytes_are_cosigns() {
        let d = Digest::of_bytes(b"m");
        let p = simple_signing_payload("127.0.0.1:5000/ns/tracee-bpf", &d);
        assert_eq!(
            String::from_utf8(p).unwrap(),
            format!(
                r#"{{"critical":{{"identity":{{"docker-reference":"127.0.0.1:5000/ns/tracee-bpf"}},"image":{{"docker-manifest-digest":"{d}"}},"type":"cosign container image signature"}},"optional":null}}"#
            )
        );
        assert_eq!(signature_tag(&d), format!("sha256-{}.sig", d.hex()));
        assert_eq!(attestation_tag(&d), format!("sha256-{}.att", d.hex()));
    }

    #[test]
    fn signature_manifests_are_reproducible_and_verify() {
        let (key, keys) = setup();
        let object_manifest = oci::manifest(&meta(b"object"));
        let subject = Subject::manifest(&object_manifest);
        let sig = sign_manifest(&key, "reg/ns/tracee-bpf", &subject.digest).unwrap();
        let a = signature_artifact(&subject, std::slice::from_ref(&sig));
        assert_eq!(
            a,
            signature_artifact(&subject, &[sign_manifest(&key, "reg/ns/tracee-bpf", &subject.digest).unwrap()])
        );
        let v: serde_json::Value = serde_json::from_slice(&a.manifest).unwrap();
        assert_eq!(v["layers"][0]["mediaType"], SIMPLE_SIGNING_MEDIA_TYPE);
        assert_eq!(v["layers"][0]["annotations"][ANN_SIGNATURE], sig.signature);
        assert_eq!(v["subject"]["digest"], subject.digest.as_str());
        assert_eq!(v["artifactType"], SIGNATURE_ARTIFACT_TYPE);
        assert_eq!(a.tag, signature_tag(&subject.digest));
        let blobs = store(&a);
        let ok = verify_signature_manifest(&keys, &subject.digest, &a.manifest, &mut fetcher(&blobs)).unwrap();
        assert_eq!(&ok.key_id, key.id());

        // The signature of another manifest, presented for this one.
        let other = Digest::of_bytes(b"another manifest");
        let e = verify_signature_manifest(&keys, &other, &a.manifest, &mut fetcher(&blobs)).unwrap_err();
        assert!(matches!(e, VerifyError::SubjectMismatch { .. }), "{e}");
        // A payload swapped in the store (the registry lies about a blob).
        let mut lying = blobs.clone();
        let payload_digest = a.blobs[1].digest.clone();
        lying.insert(payload_digest, simple_signing_payload("reg/ns/tracee-bpf", &other));
        let e = verify_signature_manifest(&keys, &subject.digest, &a.manifest, &mut fetcher(&lying)).unwrap_err();
        assert!(matches!(e, VerifyError::BlobMismatch { .. }), "{e}");
        // A payload rewritten with its descriptor (new digest), old signature.
        let forged = String::from_utf8(a.manifest.clone()).unwrap();
        let new_payload = simple_signing_payload("reg/ns/tracee-bpf", &other);
        let forged = forged
            .replace(a.blobs[1].digest.as_str(), Digest::of_bytes(&new_payload).as_str())
            .replace(&format!("\"size\":{}", a.blobs[1].data.len()), &format!("\"size\":{}", new_payload.len()));
        let mut forged_store = blobs.clone();
        forged_store.insert(Digest::of_bytes(&new_payload), new_payload);
        let e = verify_signature_manifest(&keys, &other, forged.as_bytes(), &mut fetcher(&forged_store)).unwrap_err();
        assert!(matches!(e, VerifyError::NoKeyMatched { .. }), "{e}");
        // No signature layer at all, a missing blob, junk.
        let empty = signature_artifact(&subject, &[]);
        assert!(matches!(
            verify_signature_manifest(&keys, &subject.digest, &empty.manifest, &mut fetcher(&blobs)),
            Err(VerifyError::NoSignature)
        ));
        let none = HashMap::new();
        assert!(matches!(
            verify_signature_manifest(&keys, &subject.digest, &a.manifest, &mut fetcher(&none)),
            Err(VerifyError::Fetch { .. })
        ));
        assert!(matches!(
            verify_signature_manifest(&keys, &subject.digest, b"[1,2]", &mut fetcher(&blobs)),
            Err(VerifyError::Format { .. })
        ));
        let huge = vec![b' '; MAX_MANIFEST + 1];
        assert!(matches!(
            verify_signature_manifest(&keys, &subject.digest, &huge, &mut fetcher(&blobs)),
            Err(VerifyError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_layer_claiming_a_huge_size_is_not_fetched() {
        let (key, keys) = setup();
        let subject = Subject::manifest(b"{}");
        let a = signature_artifact(&subject, &[sign_manifest(&key, "r", &subject.digest).unwrap()]);
        let size = a.blobs[1].data.len();
        let big =
            String::from_utf8(a.manifest.clone()).unwrap().replace(&format!("\"size\":{size}"), "\"size\":1000000000");
        let mut fetched = false;
        let e = verify_signature_manifest(&keys, &subject.digest, big.as_bytes(), &mut |_: &Digest| {
            fetched = true;
            Ok(vec![])
        })
        .unwrap_err();
        assert!(matches!(e, VerifyError::TooLarge { .. }), "{e}");
        assert!(!fetched);
    }

    #[test]
    fn attestation_manifests_carry_both_provenance_versions() {
        let (key, keys) = setup();
        let m = meta(b"object");
        let subject = Subject::manifest(&oci::manifest(&m));
        let p = sign_provenance(&key, &m, &BuilderInfo::bpfarm("1")).unwrap();
        let a = attestation_artifact(&subject, &p);
        let v: serde_json::Value = serde_json::from_slice(&a.manifest).unwrap();
        assert_eq!(v["layers"][0]["annotations"][ANN_PREDICATE_TYPE], super::super::provenance::SLSA_V1);
        assert_eq!(v["layers"][1]["annotations"][ANN_PREDICATE_TYPE], super::super::provenance::SLSA_V02);
        assert_eq!(a.tag, attestation_tag(&subject.digest));
        let blobs = store(&a);
        let got = verify_attestation_manifest(&keys, &subject.digest, &a.manifest, &mut fetcher(&blobs)).unwrap();
        assert_eq!(got.identity, m.identity);
        // Attached to another manifest, it does not count.
        let e = verify_attestation_manifest(&keys, &Digest::of_bytes(b"x"), &a.manifest, &mut fetcher(&blobs));
        assert!(e.is_err());
    }

    #[test]
    fn a_sent_manifest_signature_is_checked_for_form_subject_and_key() {
        let (key, keys) = setup();
        let other_key = SigningKey::from_pem(crate::sign::keys::tests::SEC1.as_bytes(), None).unwrap();
        let d = Digest::of_bytes(b"manifest");
        let s = sign_manifest(&key, "127.0.0.1:1/ns/tracee-bpf", &d).unwrap();
        assert_eq!(s.subject().unwrap(), d);
        assert!(s.verify(&keys, &d).is_ok());
        // Another manifest's signature, another key, a flipped payload byte.
        assert!(matches!(s.verify(&keys, &Digest::of_bytes(b"x")), Err(VerifyError::SubjectMismatch { .. })));
        let foreign = sign_manifest(&other_key, "r/ns/tracee-bpf", &d).unwrap();
        assert!(matches!(foreign.verify(&keys, &d), Err(VerifyError::NoKeyMatched { .. })));
        let mut flipped = s.clone();
        let at = flipped.payload.iter().position(|b| *b == b'n').unwrap();
        flipped.payload[at] = b'm';
        assert!(flipped.verify(&keys, &d).is_err());
        // Not a simple-signing payload, not a signature.
        let junk = ManifestSignature { payload: b"{}".to_vec(), signature: s.signature.clone() };
        assert!(matches!(junk.subject(), Err(VerifyError::Format { .. })));
        let unsigned = ManifestSignature { payload: s.payload.clone(), signature: "%%%".into() };
        assert!(matches!(unsigned.subject(), Err(VerifyError::Base64(_))));
    }
}
