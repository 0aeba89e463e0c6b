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

use bpfarm_object::client::{Attachments, RegistryClient};
use bpfarm_object::oci_client::OciRegistry;
use bpfarm_object::sign::{
    self, KeyId, PROVENANCE_SUFFIX, SIGNATURE_SUFFIX, TrustedKeys, VerifiedProvenance, VerifyError,
};
use bpfarm_object::{Digest, Identity};

use crate::rollback::{DEFAULT_STATE_DIR, RollbackState};
use crate::trust::{TrustError, TrustedDir};

/// Cap on a signature read from anywhere.
pub const MAX_SIGNATURE: u64 = 4 << 10;
/// Cap on an attestation (`.intoto.jsonl`) read from anywhere.
pub const MAX_ATTESTATION: u64 = 1 << 20;

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
#[derive(Debug, Clone)]
pub enum Evidence {
    /// `<file>.sig` and `<file>.intoto.jsonl`, each when present.
    Files { signature: Option<Vec<u8>>, provenance: Option<Vec<u8>> },
    /// An OCI registry's cosign artifacts for the platform manifest,
    /// checked where they were fetched (their layers come from there).
    Oci { manifest: Digest, signature: OciCheck<KeyId>, provenance: OciCheck<VerifiedProvenance> },
    /// Reading them failed (a symlinked or foreign `.sig`, a registry
    /// error): why.
    Unreadable(String),
}

/// One cosign artifact of an OCI registry.
#[derive(Debug, Clone)]
pub enum OciCheck<T> {
    /// No such tag.
    Absent,
    /// There, not checked (no `--verify-key`).
    Unchecked,
    Valid(T),
    Invalid(String),
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
    /// The `.sig` and `.intoto.jsonl` to install beside the object.
    #[serde(skip)]
    pub files: Option<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Signature {
    fn unsigned() -> Self {
        Self { status: "unsigned", key_id: None, built_at: None, provenance: None, files: None }
    }
}

fn refusal(what: &str, e: impl std::fmt::Display) -> String {
    format!("refused: {what}: {e}")
}

/// The `.sig` and `.intoto.jsonl` beside `name` in a checked folder, read
/// like the object (no symlinks, trusted owner and mode, capped).
pub fn read_local(dir: &TrustedDir, name: &str) -> Evidence {
    let read = |suffix: &str, cap| {
        dir.read_file(&format!("{name}{suffix}"), cap).map_err(|e: TrustError| format!("refusing its {suffix}: {e}"))
    };
    match (read(SIGNATURE_SUFFIX, MAX_SIGNATURE), read(PROVENANCE_SUFFIX, MAX_ATTESTATION)) {
        (Ok(signature), Ok(provenance)) => Evidence::Files { signature, provenance },
        (Err(e), _) | (_, Err(e)) => Evidence::Unreadable(e),
    }
}

/// The blobs a `/v1` answer names.
pub async fn read_v1(client: &RegistryClient, a: &Attachments) -> Evidence {
    let signature = match &a.signature {
        Some(r) => match client.fetch_attachment(r, MAX_SIGNATURE).await {
            Ok(b) => Some(b),
            Err(e) => return Evidence::Unreadable(format!("its signature blob: {e}")),
        },
        None => None,
    };
    let provenance = match &a.attestation {
        Some(r) => match client.fetch_attachment(r, MAX_ATTESTATION).await {
            Ok(b) => Some(b),
            Err(e) => return Evidence::Unreadable(format!("its attestation blob: {e}")),
        },
        None => None,
    };
    Evidence::Files { signature, provenance }
}

/// `<file>.sig` and `<file>.intoto.jsonl` of a static layout.
pub async fn read_static(client: &RegistryClient, id: &Identity) -> Evidence {
    let signature = match client.fetch_static_beside(id, SIGNATURE_SUFFIX, MAX_SIGNATURE).await {
        Ok(s) => s,
        Err(e) => return Evidence::Unreadable(format!("its {SIGNATURE_SUFFIX}: {e}")),
    };
    match client.fetch_static_beside(id, PROVENANCE_SUFFIX, MAX_ATTESTATION).await {
        Ok(provenance) => Evidence::Files { signature, provenance },
        Err(e) => Evidence::Unreadable(format!("its {PROVENANCE_SUFFIX}: {e}")),
    }
}

/// cosign's signature and attestation of the platform manifest `manifest`
/// in an OCI registry, checked against `keys` (just looked up without).
/// Blocking: call it outside the registry's async deadline.
pub fn read_oci(registry: &OciRegistry, manifest: &Digest, keys: Option<&TrustedKeys>) -> Evidence {
    let fetch = |cap: usize| {
        move |d: &Digest| registry.pull_small_blob(d, cap).map_err(|e| Box::new(e) as sign::cosign::FetchError)
    };
    let signature = match registry.pull_tagged_manifest(&sign::signature_tag(manifest)) {
        Err(e) => return Evidence::Unreadable(format!("its signature tag: {e}")),
        Ok(None) => OciCheck::Absent,
        Ok(Some(_)) if keys.is_none() => OciCheck::Unchecked,
        Ok(Some(m)) => match keys
            .map(|k| sign::verify_signature_manifest(k, manifest, &m, &mut fetch(sign::cosign::MAX_PAYLOAD as usize)))
        {
            Some(Ok(v)) => OciCheck::Valid(v.key_id),
            Some(Err(e)) => OciCheck::Invalid(e.to_string()),
            None => OciCheck::Unchecked,
        },
    };
    let provenance = match registry.pull_tagged_manifest(&sign::attestation_tag(manifest)) {
        Err(e) => return Evidence::Unreadable(format!("its attestation tag: {e}")),
        Ok(None) => OciCheck::Absent,
        Ok(Some(m)) => match keys
            .map(|k| sign::verify_attestation_manifest(k, manifest, &m, &mut fetch(sign::dsse::MAX_ENVELOPE)))
        {
            Some(Ok(v)) => OciCheck::Valid(v),
            Some(Err(e)) => OciCheck::Invalid(e.to_string()),
            None => OciCheck::Unchecked,
        },
    };
    Evidence::Oci { manifest: manifest.clone(), signature, provenance }
}

/// Decides on one candidate whose bytes already passed the digest and
/// identity checks: `Ok` with what is known about its signature and a note
/// for the trail, or `Err` with the refusal.
pub fn check(
    policy: &SignPolicy,
    id: &Identity,
    bytes: &[u8],
    evidence: Evidence,
) -> Result<(Signature, String), String> {
    let Some(keys) = &policy.keys else { return Ok(report_unchecked(evidence)) };
    let digest = Digest::of_bytes(bytes);
    let (key_id, provenance, files, form) = match evidence {
        Evidence::Unreadable(why) => return Err(format!("refused: {why}")),
        Evidence::Files { signature: None, .. } => {
            return Err(format!(
                "refused: unsigned (no {SIGNATURE_SUFFIX} with it), and --verify-key requires a signature by a trusted key"
            ));
        }
        Evidence::Files { signature: Some(sig), provenance } => {
            let v = sign::verify_blob(keys, bytes, &sig).map_err(|e| refusal("its signature does not verify", e))?;
            let p = match &provenance {
                Some(p) => Some(
                    sign::verify_provenance(keys, p, &digest)
                        .map_err(|e| refusal(&format!("its {PROVENANCE_SUFFIX} does not verify"), e))?,
                ),
                None => None,
            };
            (v.key_id, p, Some((sig, provenance)), "its .sig")
        }
        Evidence::Oci { manifest, signature, provenance } => {
            let key_id = match signature {
                OciCheck::Valid(k) => k,
                OciCheck::Absent | OciCheck::Unchecked => {
                    return Err(format!(
                        "refused: unsigned (no cosign signature tag {} for its manifest), and --verify-key requires one",
                        sign::signature_tag(&manifest)
                    ));
                }
                OciCheck::Invalid(e) => return Err(refusal("its cosign signature does not verify", e)),
            };
            let p = match provenance {
                OciCheck::Valid(p) => Some(p),
                OciCheck::Absent | OciCheck::Unchecked => None,
                OciCheck::Invalid(e) => return Err(refusal("its cosign attestation does not verify", e)),
            };
            (key_id, p, None, "the cosign signature of its manifest")
        }
    };
    if let Some(p) = &provenance
        && p.identity != *id
    {
        return Err(refusal(
            "its signed provenance names another object",
            VerifyError::IdentityMismatch { expected: Box::new(id.clone()), found: Box::new(p.identity.clone()) },
        ));
    }
    let mut note = format!("signature verified ({form}, key {key_id})");
    match &provenance {
        Some(p) => note += &format!("; signed build time {}", p.built_at_text),
        None => note += "; no signed build time",
    }
    check_rollback(policy, id, provenance.as_ref())?;
    let built_at = provenance.as_ref().map(|p| p.built_at_text.clone());
    Ok((Signature { status: "verified", key_id: Some(key_id.to_string()), built_at, provenance, files }, note))
}

/// Without `--verify-key`: say whether something came with it, refuse nothing.
fn report_unchecked(evidence: Evidence) -> (Signature, String) {
    let unchecked = |files| Signature { status: "unchecked", key_id: None, built_at: None, provenance: None, files };
    match evidence {
        Evidence::Files { signature: Some(sig), provenance } => (
            unchecked(Some((sig, provenance))),
            format!("signed ({SIGNATURE_SUFFIX} with it; not checked without --verify-key)"),
        ),
        Evidence::Oci { signature: OciCheck::Absent, .. } | Evidence::Files { signature: None, .. } => {
            (Signature::unsigned(), "unsigned".into())
        }
        Evidence::Oci { .. } => {
            (unchecked(None), "signed (cosign signature tag; not checked without --verify-key)".into())
        }
        Evidence::Unreadable(why) => (Signature::unsigned(), format!("signature not read: {why}")),
    }
}

/// Refuses a build older than the record (or one without a signed build
/// time once a record exists), unless `--allow-downgrade`.
fn check_rollback(policy: &SignPolicy, id: &Identity, provenance: Option<&VerifiedProvenance>) -> Result<(), String> {
    let record = policy.state.read(id).map_err(|e| format!("refused: {e}"))?;
    let Some(record) = record else { return Ok(()) };
    let file = policy.state.file();
    match provenance {
        Some(p) if record.time().is_some_and(|t| p.built_at < t) => {
            if policy.allow_downgrade {
                return Ok(());
            }
            Err(format!(
                "refused: a downgrade: signed build time {} is older than {} (the newest accepted for this kernel, \
                 recorded in {}); a replayed old object? (--allow-downgrade accepts it)",
                p.built_at_text,
                record.built_at,
                file.display()
            ))
        }
        Some(_) => Ok(()),
        None if policy.allow_downgrade => Ok(()),
        None => Err(format!(
            "refused: it has no signed build time ({PROVENANCE_SUFFIX}), and a build of {} was accepted before \
             (recorded in {}): it cannot show it is not an older one replayed (--allow-downgrade accepts it)",
            record.built_at,
            file.display()
        )),
    }
}

/// After an object was accepted for use: records its signed build time.
/// Returns a line for the trail (or `None` when there is nothing to say).
pub fn remember(policy: &SignPolicy, id: &Identity, digest: &Digest, signature: Option<&Signature>) -> Option<String> {
    policy.keys.as_ref()?;
    let p = signature?.provenance.as_ref()?;
    match policy.state.record(id, digest, p) {
        Ok(true) => {
            Some(format!("recorded signed build time {} in {}", p.built_at_text, policy.state.file().display()))
        }
        Ok(false) => None,
        Err(e) => Some(format!("warning: could not record the signed build time: {e}")),
    }
}

/// Writes (or, for an unsigned object, removes) the `.sig` and
/// `.intoto.jsonl` beside `name` in the install folder, atomically and
/// never through a symlink; the caller holds the install lock.
pub fn install_beside(dir: &TrustedDir, name: &str, signature: Option<&Signature>) -> Result<(), TrustError> {
    let sig_name = format!("{name}{SIGNATURE_SUFFIX}");
    let prov_name = format!("{name}{PROVENANCE_SUFFIX}");
    match signature.and_then(|s| s.files.as_ref()) {
        Some((sig, prov)) => {
            dir.write_atomic(&sig_name, sig)?;
            match prov {
                Some(p) => dir.write_atomic(&prov_name, p),
                None => dir.remove_file(&prov_name),
            }
        }
        None => {
            dir.remove_file(&sig_name)?;
            dir.remove_file(&prov_name)
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
