//! Signed objects (issue #11, the agent's side): with `--verify-key`, every
//! candidate, from every place, must carry a valid signature by one of the
//! keys over exactly the bytes that will be loaded, and must not be older
//! than the newest signed build accepted before for its identity
//! (`rollback`). A candidate that fails is refused with the reason in the
//! trail, and the search goes on. Without `--verify-key` nothing is refused
//! here; the trail only says whether a signature came with the object.
//!
//! What counts as a signature (the contract with the builder and the
//! registry, ARCHITECTURE.md):
//! - beside an object (`TRACEE_BPF_FILE`, beside the agent, the install
//!   path, a static layout, `/v1`'s `signature`/`attestation` blobs):
//!   `<file>.sig` (`cosign sign-blob` form) and, optionally,
//!   `<file>.intoto.jsonl` (the signed SLSA provenance, whose
//!   `finishedOn` is the build time rollback protection compares);
//! - in an OCI registry: cosign's simple-signing signature of the platform
//!   manifest (tag `sha256-<hex>.sig`), whose one layer is the object, and
//!   the attestation at `sha256-<hex>.att`.
//!
//! Local files are read through the same checked folder as the object
//! (never through a symlink, only root- or agent-owned, not writable by
//! others), downloads are capped (signature 4 KiB, attestation 1 MiB).

use std::path::PathBuf;

use bpfarm_object::client::{Attachments, BlobRef, ClientError, RegistryClient};
use bpfarm_object::oci_client::OciRegistry;
use bpfarm_object::oci_layout::OciLayout;
use bpfarm_object::sign::{
    self, EVIDENCE_SUFFIX, FetchError, KeyId, LayerRef, ManifestSignature, OciEvidence, PROVENANCE_SUFFIX,
    SIGNATURE_SUFFIX, TrustedKeys, VerifiedProvenance, VerifyError,
};
use bpfarm_object::{Digest, Identity};

use crate::rollback::{DEFAULT_STATE_DIR, RollbackError, RollbackState};
use crate::trust::{TrustError, TrustedDir};

/// Cap on a signature read from anywhere.
pub const MAX_SIGNATURE: u64 = 4 << 10;
/// Cap on an attestation (`.intoto.jsonl`) read from anywhere.
pub const MAX_ATTESTATION: u64 = 1 << 20;
/// Signature layers fetched per `.sig` tag (cosign appends one layer per
/// signature; a hostile tag may list many): the first that verifies wins.
pub const MAX_SIGNATURE_LAYERS: usize = 8;
/// Attestation layers fetched per `.att` tag (bpfarm writes two: SLSA v1
/// and its v0.2 twin).
pub const MAX_ATTESTATION_LAYERS: usize = 4;

/// `--verify-key`, `--allow-downgrade` and `--state-dir`.
#[derive(Debug, Clone)]
pub struct SignPolicy {
    /// `None`: signatures are reported, not required.
    pub keys: Option<TrustedKeys>,
    /// Accept a validly signed object older than the record.
    pub allow_downgrade: bool,
    /// Where the newest accepted build times are kept.
    pub state: RollbackState,
}

impl Default for SignPolicy {
    fn default() -> Self {
        Self { keys: None, allow_downgrade: false, state: RollbackState::new(PathBuf::from(DEFAULT_STATE_DIR)) }
    }
}

/// What came with a candidate to show who made it.
#[derive(Debug)]
pub enum Evidence {
    /// `<file>.sig` and `<file>.intoto.jsonl`, each when present.
    Files { signature: Option<Vec<u8>>, provenance: Option<Vec<u8>> },
    /// cosign's signature (and attestation) of the platform manifest whose
    /// one layer is the object: from an OCI registry or layout, or kept
    /// beside an installed object (`<file>.cosign.json`).
    Cosign(CosignEvidence),
    /// Reading them failed (a symlinked or foreign `.sig`, a registry
    /// error): why.
    Unreadable(String),
}

/// The cosign form of [`Evidence`]: nothing in it is trusted until
/// [`check`] has verified the chain ([`OciEvidence::verify`]).
#[derive(Debug)]
pub struct CosignEvidence {
    /// The platform manifest's exact bytes.
    pub manifest: Vec<u8>,
    /// The simple-signing payload and signature a trusted key made for it.
    pub signature: OciCheck<ManifestSignature>,
    /// The DSSE envelope of its SLSA provenance.
    pub attestation: OciCheck<Vec<u8>>,
    /// Read from `<file>.cosign.json` beside the object (else fetched).
    pub kept: bool,
}

/// One cosign artifact of an OCI registry or layout.
#[derive(Debug)]
pub enum OciCheck<T> {
    /// No such tag.
    Absent,
    /// There, not checked (no `--verify-key`).
    Unchecked,
    /// The layer a trusted key signed for this manifest (checked again,
    /// with the whole chain, by [`check`]).
    Found(T),
    /// No layer of it verifies: why.
    Invalid(VerifyError),
}

/// What is known about a candidate's signature once it was accepted.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Signature {
    /// `verified` (by a trusted key), `unchecked` (present, no
    /// `--verify-key`) or `unsigned`.
    pub status: &'static str,
    /// The trusted key that signed the bytes (`verified` only).
    pub key_id: Option<String>,
    /// The signed build time, when a verified provenance came with it.
    pub built_at: Option<String>,
    #[serde(skip)]
    pub provenance: Option<VerifiedProvenance>,
    /// What to install beside the object.
    #[serde(skip)]
    pub beside: Option<Beside>,
}

/// The files an install writes beside the object, so that the next start
/// verifies it offline.
#[derive(Debug, Clone)]
pub enum Beside {
    /// `<file>.sig` and, when there is one, `<file>.intoto.jsonl`.
    Files { signature: Vec<u8>, provenance: Option<Vec<u8>> },
    /// `<file>.cosign.json` (an object from OCI).
    Cosign(Vec<u8>),
}

impl Signature {
    fn unsigned() -> Self {
        Self { status: "unsigned", key_id: None, built_at: None, provenance: None, beside: None }
    }
}

/// Why `--verify-key` (or the rollback record) refuses a candidate. The
/// wording is the trail's.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("refused: {0}")]
    Unreadable(String),
    #[error(
        "refused: unsigned (no {SIGNATURE_SUFFIX} with it), and --verify-key requires a signature by a trusted key"
    )]
    Unsigned,
    #[error("refused: unsigned (no cosign signature tag {tag} for its manifest), and --verify-key requires one")]
    UnsignedManifest { tag: String },
    #[error("refused: its signature does not verify: {0}")]
    Signature(#[source] VerifyError),
    #[error("refused: its {PROVENANCE_SUFFIX} does not verify: {0}")]
    Provenance(#[source] VerifyError),
    #[error("refused: its cosign signature does not verify: {}", chain(.0))]
    CosignSignature(#[source] VerifyError),
    #[error("refused: its cosign attestation does not verify: {}", chain(.0))]
    CosignAttestation(#[source] VerifyError),
    #[error("refused: {form} does not verify: {}", chain(.source))]
    Chain {
        form: &'static str,
        #[source]
        source: VerifyError,
    },
    #[error("refused: its signed provenance names another object: {0}")]
    OtherObject(#[source] VerifyError),
    #[error("refused: {0}")]
    Rollback(#[source] RollbackError),
    #[error(
        "refused: a downgrade: signed build time {built_at} is older than {recorded} (the newest accepted for this \
         kernel, recorded in {}); a replayed old object? (--allow-downgrade accepts it)",
        .file.display()
    )]
    Downgrade { built_at: String, recorded: String, file: PathBuf },
    #[error(
        "refused: it has no signed build time ({PROVENANCE_SUFFIX}), and a build of {recorded} was accepted before \
         (recorded in {}): it cannot show it is not an older one replayed (--allow-downgrade accepts it)",
        .file.display()
    )]
    NoBuildTime { recorded: String, file: PathBuf },
}

/// An error and its causes, for the trail (a layer's fetch error says
/// which blob, its source why).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out += &format!(": {cause}");
        next = cause.source();
    }
    out
}

/// The `.sig`, `.intoto.jsonl` and `.cosign.json` beside `name` in a
/// checked folder, read like the object (no symlinks, trusted owner and
/// mode, capped). A `.sig` wins over a `.cosign.json`.
pub fn read_local(dir: &TrustedDir, name: &str) -> Evidence {
    let read = |suffix: &str, cap| {
        dir.read_file(&format!("{name}{suffix}"), cap).map_err(|e: TrustError| format!("refusing its {suffix}: {e}"))
    };
    let files = (read(SIGNATURE_SUFFIX, MAX_SIGNATURE), read(PROVENANCE_SUFFIX, MAX_ATTESTATION));
    let (signature, provenance) = match files {
        (Ok(signature), Ok(provenance)) => (signature, provenance),
        (Err(e), _) | (_, Err(e)) => return Evidence::Unreadable(e),
    };
    if signature.is_some() {
        return Evidence::Files { signature, provenance };
    }
    match read(EVIDENCE_SUFFIX, sign::evidence::MAX_EVIDENCE) {
        Err(e) => Evidence::Unreadable(e),
        Ok(None) => Evidence::Files { signature, provenance },
        Ok(Some(bytes)) => match OciEvidence::from_json(&bytes) {
            Ok(e) => Evidence::Cosign(CosignEvidence {
                manifest: e.manifest,
                signature: OciCheck::Found(e.signature),
                attestation: e.attestation.map_or(OciCheck::Absent, OciCheck::Found),
                kept: true,
            }),
            Err(e) => Evidence::Unreadable(format!("its {EVIDENCE_SUFFIX}: {e}")),
        },
    }
}

/// The blobs a `/v1` answer names, asked for at once (one round trip for
/// both, each still capped and checked against its reference).
pub async fn read_v1(client: &RegistryClient, a: &Attachments) -> Evidence {
    let (signature, provenance) = tokio::join!(
        attachment(client, a.signature.as_ref(), MAX_SIGNATURE),
        attachment(client, a.attestation.as_ref(), MAX_ATTESTATION)
    );
    fetched(signature, provenance, ["signature blob", "attestation blob"])
}

/// The evidence from a signature's and a provenance's fetch (each named
/// in `what`, for the message): the signature's error is reported first,
/// as when they came one by one.
fn fetched(
    signature: Result<Option<Vec<u8>>, ClientError>,
    provenance: Result<Option<Vec<u8>>, ClientError>,
    what: [&str; 2],
) -> Evidence {
    match (signature, provenance) {
        (Err(e), _) => Evidence::Unreadable(format!("its {}: {e}", what[0])),
        (_, Err(e)) => Evidence::Unreadable(format!("its {}: {e}", what[1])),
        (Ok(signature), Ok(provenance)) => Evidence::Files { signature, provenance },
    }
}

/// The blob `r` names, if any, at most `cap` bytes.
async fn attachment(client: &RegistryClient, r: Option<&BlobRef>, cap: u64) -> Result<Option<Vec<u8>>, ClientError> {
    match r {
        Some(r) => client.fetch_attachment(r, cap).await.map(Some),
        None => Ok(None),
    }
}

/// `<file>.sig` and `<file>.intoto.jsonl` of a static layout, asked for at
/// once (one round trip for both, each still capped; a missing `.sig` is
/// `None`, any other failure makes the evidence unreadable).
pub async fn read_static(client: &RegistryClient, id: &Identity) -> Evidence {
    let (signature, provenance) = tokio::join!(
        client.fetch_static_beside(id, SIGNATURE_SUFFIX, MAX_SIGNATURE),
        client.fetch_static_beside(id, PROVENANCE_SUFFIX, MAX_ATTESTATION)
    );
    fetched(signature, provenance, [SIGNATURE_SUFFIX, PROVENANCE_SUFFIX])
}

/// Where cosign's tags are read from: an OCI registry (`oci://`) or an OCI
/// image layout (`oci-layout:`), each with its own bounds (caps, digest
/// checks; no symlinks in a layout). One reader, [`read_cosign`], for both.
pub(crate) trait CosignSource {
    /// The manifest under `tag`, or `None` when there is no such tag.
    async fn tagged_manifest(&self, tag: &str) -> Result<Option<Vec<u8>>, FetchError>;
    /// A blob of at most `max` bytes, hashing to `digest`.
    async fn blob(&self, digest: &Digest, max: u64) -> Result<Vec<u8>, FetchError>;
}

impl CosignSource for OciRegistry {
    async fn tagged_manifest(&self, tag: &str) -> Result<Option<Vec<u8>>, FetchError> {
        OciRegistry::tagged_manifest(self, tag).await.map_err(Into::into)
    }
    async fn blob(&self, digest: &Digest, max: u64) -> Result<Vec<u8>, FetchError> {
        self.small_blob(digest, max as usize).await.map_err(Into::into)
    }
}

impl CosignSource for OciLayout {
    async fn tagged_manifest(&self, tag: &str) -> Result<Option<Vec<u8>>, FetchError> {
        OciLayout::tagged_manifest(self, tag, sign::cosign::MAX_MANIFEST as u64).map_err(Into::into)
    }
    async fn blob(&self, digest: &Digest, max: u64) -> Result<Vec<u8>, FetchError> {
        self.blob_capped(digest, max).map_err(Into::into)
    }
}

/// cosign's signature and attestation of the platform manifest `manifest`
/// (its exact bytes) in a registry or layout. With `keys`, the first
/// layer of each tag that a trusted key signed for this manifest is kept
/// (at most [`MAX_SIGNATURE_LAYERS`] / [`MAX_ATTESTATION_LAYERS`] layers
/// fetched); without, the signature tag is only looked up. The caller
/// bounds it in time (the attempt's `--timeout`).
pub(crate) async fn read_cosign(source: &impl CosignSource, manifest: Vec<u8>, keys: Option<&TrustedKeys>) -> Evidence {
    let subject = Digest::of_bytes(&manifest);
    let signature = match source.tagged_manifest(&sign::signature_tag(&subject)).await {
        Err(e) => return Evidence::Unreadable(format!("its signature tag: {e}")),
        Ok(None) => OciCheck::Absent,
        Ok(Some(_)) if keys.is_none() => OciCheck::Unchecked,
        Ok(Some(m)) => match (keys, sign::signature_layers(&m)) {
            (_, Err(e)) => OciCheck::Invalid(e),
            (None, _) => OciCheck::Unchecked,
            (Some(keys), Ok(layers)) => {
                let verify = |l: &LayerRef, payload: Vec<u8>| {
                    let s = ManifestSignature { payload, signature: l.signature.clone().unwrap_or_default() };
                    s.verify(keys, &subject).map(|_| s)
                };
                let layers = layers.into_iter().filter(|l| l.signature.is_some());
                first_layer(source, layers, MAX_SIGNATURE_LAYERS, sign::cosign::MAX_PAYLOAD, verify).await
            }
        },
    };
    let Some(keys) = keys else {
        return Evidence::Cosign(CosignEvidence { manifest, signature, attestation: OciCheck::Unchecked, kept: false });
    };
    let attestation = match source.tagged_manifest(&sign::attestation_tag(&subject)).await {
        Err(e) => return Evidence::Unreadable(format!("its attestation tag: {e}")),
        Ok(None) => OciCheck::Absent,
        Ok(Some(m)) => match sign::attestation_layers(&m) {
            Err(e) => OciCheck::Invalid(e),
            Ok(layers) => {
                let verify = |_: &LayerRef, envelope: Vec<u8>| {
                    sign::verify_attestation_envelope(keys, &envelope, &subject).map(|_| envelope)
                };
                let max = sign::dsse::MAX_ENVELOPE as u64;
                first_layer(source, layers.into_iter(), MAX_ATTESTATION_LAYERS, max, verify).await
            }
        },
    };
    Evidence::Cosign(CosignEvidence { manifest, signature, attestation, kept: false })
}

/// Fetches at most `count` layers, in order, each at most `max` bytes, and
/// keeps the first that `verify` accepts; else every reason.
async fn first_layer<T>(
    source: &impl CosignSource,
    layers: impl Iterator<Item = LayerRef>,
    count: usize,
    max: u64,
    verify: impl Fn(&LayerRef, Vec<u8>) -> Result<T, VerifyError>,
) -> OciCheck<T> {
    let mut errors = Vec::new();
    for l in layers.take(count) {
        if l.size > max {
            errors.push(VerifyError::TooLarge { what: "layer", len: l.size as usize, max: max as usize });
            continue;
        }
        let bytes = match source.blob(&l.digest, l.size).await {
            Ok(b) if b.len() as u64 == l.size => b,
            Ok(b) => {
                errors.push(VerifyError::BlobMismatch { expected: l.digest.clone(), found: Digest::of_bytes(&b) });
                continue;
            }
            Err(source) => {
                errors.push(VerifyError::Fetch { digest: l.digest.clone(), source });
                continue;
            }
        };
        match verify(&l, bytes) {
            Ok(v) => return OciCheck::Found(v),
            Err(e) => errors.push(e),
        }
    }
    OciCheck::Invalid(match errors.len() {
        0 => VerifyError::NoSignature,
        1 => errors.remove(0),
        _ => VerifyError::NoLayerVerified(errors),
    })
}

/// Decides on one candidate whose bytes already passed the digest and
/// identity checks: `Ok` with what is known about its signature and a note
/// for the trail, or the refusal.
pub fn check(
    policy: &SignPolicy,
    id: &Identity,
    bytes: &[u8],
    evidence: Evidence,
) -> Result<(Signature, String), CheckError> {
    let Some(keys) = &policy.keys else { return Ok(report_unchecked(evidence)) };
    let digest = Digest::of_bytes(bytes);
    let (key_id, provenance, beside, form): (KeyId, _, _, &str) = match evidence {
        Evidence::Unreadable(why) => return Err(CheckError::Unreadable(why)),
        Evidence::Files { signature: None, .. } => return Err(CheckError::Unsigned),
        Evidence::Files { signature: Some(sig), provenance } => {
            let v = sign::verify_blob(keys, bytes, &sig).map_err(CheckError::Signature)?;
            let p = match &provenance {
                Some(p) => Some(sign::verify_provenance(keys, p, &digest).map_err(CheckError::Provenance)?),
                None => None,
            };
            (v.key_id, p, Beside::Files { signature: sig, provenance }, "its .sig")
        }
        Evidence::Cosign(c) => {
            let signature = match c.signature {
                OciCheck::Found(s) => s,
                OciCheck::Absent | OciCheck::Unchecked => {
                    let tag = sign::signature_tag(&Digest::of_bytes(&c.manifest));
                    return Err(CheckError::UnsignedManifest { tag });
                }
                OciCheck::Invalid(e) => return Err(CheckError::CosignSignature(e)),
            };
            let attestation = match c.attestation {
                OciCheck::Found(a) => Some(a),
                OciCheck::Absent | OciCheck::Unchecked => None,
                OciCheck::Invalid(e) => return Err(CheckError::CosignAttestation(e)),
            };
            let form = if c.kept {
                "the cosign signature of its manifest, kept beside it"
            } else {
                "the cosign signature of its manifest"
            };
            let e = OciEvidence { manifest: c.manifest, signature, attestation };
            let v =
                e.verify(keys, id, &digest, bytes.len() as u64).map_err(|source| CheckError::Chain { form, source })?;
            (v.key_id, v.provenance, Beside::Cosign(e.to_json()), form)
        }
    };
    if let Some(p) = &provenance
        && p.identity != *id
    {
        return Err(CheckError::OtherObject(VerifyError::IdentityMismatch {
            expected: Box::new(id.clone()),
            found: Box::new(p.identity.clone()),
        }));
    }
    let mut note = format!("signature verified ({form}, key {key_id})");
    match &provenance {
        Some(p) => note += &format!("; signed build time {}", p.built_at_text),
        None => note += "; no signed build time",
    }
    check_rollback(policy, id, &digest, provenance.as_ref())?;
    let built_at = provenance.as_ref().map(|p| p.built_at_text.clone());
    let key_id = Some(key_id.to_string());
    Ok((Signature { status: "verified", key_id, built_at, provenance, beside: Some(beside) }, note))
}

/// Without `--verify-key`: say whether something came with it, refuse nothing.
fn report_unchecked(evidence: Evidence) -> (Signature, String) {
    let unchecked = |beside| Signature { status: "unchecked", key_id: None, built_at: None, provenance: None, beside };
    match evidence {
        Evidence::Files { signature: Some(signature), provenance } => (
            unchecked(Some(Beside::Files { signature, provenance })),
            format!("signed ({SIGNATURE_SUFFIX} with it; not checked without --verify-key)"),
        ),
        Evidence::Cosign(CosignEvidence { signature: OciCheck::Absent, .. })
        | Evidence::Files { signature: None, .. } => (Signature::unsigned(), "unsigned".into()),
        Evidence::Cosign(CosignEvidence { kept: true, .. }) => {
            (unchecked(None), format!("signed ({EVIDENCE_SUFFIX} with it; not checked without --verify-key)"))
        }
        Evidence::Cosign(_) => {
            (unchecked(None), "signed (cosign signature tag; not checked without --verify-key)".into())
        }
        Evidence::Unreadable(why) => (Signature::unsigned(), format!("signature not read: {why}")),
    }
}

/// Refuses a build older than the record (or one without a signed build
/// time once a record exists), unless `--allow-downgrade`. A build as new
/// as the record passes; so does the very object recorded (same digest)
/// without a signed build time: it is what was accepted, not a replay of
/// something older.
fn check_rollback(
    policy: &SignPolicy,
    id: &Identity,
    digest: &Digest,
    provenance: Option<&VerifiedProvenance>,
) -> Result<(), CheckError> {
    let record = policy.state.read(id).map_err(CheckError::Rollback)?;
    let Some(record) = record else { return Ok(()) };
    if policy.allow_downgrade {
        return Ok(());
    }
    let file = policy.state.file();
    match provenance {
        Some(p) if record.time().is_some_and(|t| p.built_at < t) => {
            Err(CheckError::Downgrade { built_at: p.built_at_text.clone(), recorded: record.built_at, file })
        }
        Some(_) => Ok(()),
        None if record.digest == *digest => Ok(()),
        None => Err(CheckError::NoBuildTime { recorded: record.built_at, file }),
    }
}

/// The rollback record could not be moved forward.
#[derive(Debug, thiserror::Error)]
#[error(
    "the accepted object's signed build time {built_at} could not be recorded in {} ({source}); not using it: \
     without the record, a replay of an older signed build could not be refused later. Make {} writable by \
     the agent (root), or point --state-dir (BPFARM_AGENT_STATE_DIR) at a folder that is",
    .dir.display(),
    .dir.display()
)]
pub struct RememberError {
    pub dir: PathBuf,
    pub built_at: String,
    #[source]
    pub source: RollbackError,
}

/// After an object was accepted for use: records its signed build time.
/// Returns a line for the trail (or `None` when there is nothing to say),
/// or an error when the record had to move forward and could not: then
/// the object must not be used (fail closed).
pub fn remember(
    policy: &SignPolicy,
    id: &Identity,
    digest: &Digest,
    signature: Option<&Signature>,
) -> Result<Option<String>, RememberError> {
    if policy.keys.is_none() {
        return Ok(None);
    }
    let Some(p) = signature.and_then(|s| s.provenance.as_ref()) else { return Ok(None) };
    match policy.state.record(id, digest, p) {
        Ok(true) => {
            Ok(Some(format!("recorded signed build time {} in {}", p.built_at_text, policy.state.file().display())))
        }
        Ok(false) => Ok(None),
        // Nothing to record when the record already holds this build or a
        // newer one (read-only state folders are fine then).
        Err(_) if matches!(policy.state.read(id), Ok(Some(r)) if r.time().is_some_and(|t| t >= p.built_at)) => Ok(None),
        Err(source) => {
            Err(RememberError { dir: policy.state.dir().to_owned(), built_at: p.built_at_text.clone(), source })
        }
    }
}

/// Writes (or, for an unsigned object, removes) what goes beside `name`
/// in the install folder — `.sig` and `.intoto.jsonl`, or `.cosign.json`
/// for an object from OCI — atomically and never through a symlink, and
/// removes the other form; the caller holds the install lock.
pub fn install_beside(dir: &TrustedDir, name: &str, signature: Option<&Signature>) -> Result<(), TrustError> {
    let sig_name = format!("{name}{SIGNATURE_SUFFIX}");
    let prov_name = format!("{name}{PROVENANCE_SUFFIX}");
    let evidence_name = format!("{name}{EVIDENCE_SUFFIX}");
    match signature.and_then(|s| s.beside.as_ref()) {
        Some(Beside::Files { signature, provenance }) => {
            dir.write_atomic(&sig_name, signature)?;
            match provenance {
                Some(p) => dir.write_atomic(&prov_name, p)?,
                None => dir.remove_file(&prov_name)?,
            }
            dir.remove_file(&evidence_name)
        }
        Some(Beside::Cosign(evidence)) => {
            dir.write_atomic(&evidence_name, evidence)?;
            dir.remove_file(&sig_name)?;
            dir.remove_file(&prov_name)
        }
        None => {
            dir.remove_file(&sig_name)?;
            dir.remove_file(&prov_name)?;
            dir.remove_file(&evidence_name)
        }
    }
}

/// The provenance of a verified object, for `locate --provenance`: builder,
/// build time, source packages with digests, compiler and flags.
pub fn describe_provenance(p: &VerifiedProvenance) -> String {
    let v: serde_json::Value = serde_json::from_slice(&p.statement).unwrap_or_default();
    let def = &v["predicate"]["buildDefinition"];
    let run = &v["predicate"]["runDetails"];
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    let mut out = String::new();
    out += &format!("provenance (SLSA v1, signed by key {}):\n", p.key_id);
    out += &format!("  object:   {} {} {}\n", p.identity.kernel_release, p.identity.arch, p.identity.version);
    for (name, d) in &p.subjects {
        out += &format!("  subject:  {name} {d}\n");
    }
    out += &format!(
        "  builder:  {} (bpfarm-builder {})\n",
        s(&run["builder"]["id"]),
        s(&run["builder"]["version"]["bpfarm-builder"])
    );
    out += &format!("  built:    {}\n", p.built_at_text);
    let params = &def["externalParameters"];
    out += &format!("  mode:     {}\n", s(&params["buildMode"]));
    let compiler = &def["internalParameters"]["compiler"];
    out += &format!("  compiler: {}", s(&compiler["clang"]));
    if !compiler["llc"].is_null() {
        out += &format!("; {}", s(&compiler["llc"]));
    }
    out += "\n";
    let flags = &def["internalParameters"]["flags"];
    out += &format!("  flags:    clang {}; llc {}\n", s(&flags["clang"]), s(&flags["llc"]));
    out += "  sources:\n";
    for d in def["resolvedDependencies"].as_array().into_iter().flatten() {
        let kind = s(&d["annotations"]["kind"]);
        let version = d["annotations"]["version"].as_str().map(|v| format!(" {v}")).unwrap_or_default();
        out += &format!("    {kind:<8} {}{version} sha256:{}\n", s(&d["name"]), s(&d["digest"]["sha256"]));
    }
    out
}

/// Cap on a public key file.
const MAX_KEY_FILE: u64 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("--verify-key {path}: {source}")]
    Trust {
        path: PathBuf,
        #[source]
        source: TrustError,
    },
    #[error("--verify-key {path} does not exist")]
    Missing { path: PathBuf },
    #[error("--verify-key {path}: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: sign::KeyError,
    },
    #[error("--verify-key: {0}")]
    Keys(#[source] sign::KeyError),
}

/// Reads the trusted public keys. They decide what may enter the kernel,
/// so each file is read like the agent's config: through a checked folder,
/// never through a symlink, only when root or the agent's user owns it and
/// no one else can write it.
pub fn load_keys(paths: &[PathBuf]) -> Result<TrustedKeys, KeyFileError> {
    let mut keys = Vec::new();
    for path in paths {
        let trust = |source| KeyFileError::Trust { path: path.clone(), source };
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let pem = TrustedDir::open(dir)
            .map_err(trust)?
            .read_file(&name, MAX_KEY_FILE)
            .map_err(trust)?
            .ok_or_else(|| KeyFileError::Missing { path: path.clone() })?;
        keys.push(sign::PublicKey::from_pem(&pem).map_err(|source| KeyFileError::Key { path: path.clone(), source })?);
    }
    TrustedKeys::new(keys).map_err(KeyFileError::Keys)
}
