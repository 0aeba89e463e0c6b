//! SLSA provenance for an object: an in-toto statement whose subjects are
//! the object file (by name and sha256) and its OCI manifest (the
//! byte-reproducible one `oci::manifest` makes), and whose predicate names
//! the builder, every source package with its digest, the program, the
//! compiler and flags, and the build time — signed in a DSSE envelope.
//!
//! Two statements are made with the same content: SLSA provenance v1 (what
//! bpfarm itself reads back, and what `cosign verify-attestation --type
//! slsaprovenance1` checks) and v0.2 (what cosign 2.x means by `--type
//! slsaprovenance`). Beside an object they are the two lines of
//! `<file>.intoto.jsonl`.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::{Value, json};

use super::dsse::{Envelope, IN_TOTO_PAYLOAD_TYPE};
use super::{KeyId, SignError, SigningKey, TrustedKeys, VerifyError};
use crate::{Arch, Digest, Identity, ObjectMetadata, oci};

pub const STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";
pub const STATEMENT_V01: &str = "https://in-toto.io/Statement/v0.1";
pub const SLSA_V1: &str = "https://slsa.dev/provenance/v1";
pub const SLSA_V02: &str = "https://slsa.dev/provenance/v0.2";
/// What a bpfarm build is, as a SLSA build type.
pub const BUILD_TYPE: &str = concat!(env!("CARGO_PKG_REPOSITORY"), "/build-types/tracee-bpf/v1");
/// The subject name of an object's OCI manifest.
pub const MANIFEST_SUBJECT: &str = oci::REPOSITORY;
/// Lines looked at in an `.intoto.jsonl`.
const MAX_LINES: usize = 8;

/// Who built the object: SLSA's `builder.id` (a URI naming the trust
/// boundary, e.g. the CI runner) and the builder's version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuilderInfo {
    pub id: String,
    pub version: String,
}

impl BuilderInfo {
    /// The default id for bpfarm's builder at `version`.
    pub fn bpfarm(version: &str) -> Self {
        Self { id: concat!(env!("CARGO_PKG_REPOSITORY"), "/builder").to_owned(), version: version.to_owned() }
    }
}

/// The provenance envelopes of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedProvenance {
    pub v1: Envelope,
    pub v02: Envelope,
}

impl SignedProvenance {
    /// `<file>.intoto.jsonl`: one envelope per line, v1 first.
    pub fn to_jsonl(&self) -> Vec<u8> {
        let mut out = self.v1.to_json();
        out.push(b'\n');
        out.extend(self.v02.to_json());
        out.push(b'\n');
        out
    }
}

impl SignedProvenance {
    /// Reads an `.intoto.jsonl` as [`SignedProvenance::to_jsonl`] writes
    /// it: one SLSA v1 and one v0.2 envelope, told apart by the statement's
    /// `predicateType`. Only the form is checked here, no signature (see
    /// [`verify_provenance`]): this is for assembling the OCI attestation
    /// from stored envelopes.
    pub fn from_jsonl(bytes: &[u8]) -> Result<Self, VerifyError> {
        use base64::Engine as _;
        if bytes.len() > super::dsse::MAX_ENVELOPE * 2 {
            return Err(VerifyError::TooLarge {
                what: "provenance",
                len: bytes.len(),
                max: super::dsse::MAX_ENVELOPE * 2,
            });
        }
        let format = |reason: String| VerifyError::Format { what: "provenance", reason };
        let (mut v1, mut v02) = (None, None);
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.trim_ascii().is_empty()).take(MAX_LINES) {
            let e = Envelope::parse(line)?;
            if e.payload_type != IN_TOTO_PAYLOAD_TYPE {
                return Err(VerifyError::PayloadType {
                    expected: IN_TOTO_PAYLOAD_TYPE.to_owned(),
                    found: e.payload_type.clone(),
                });
            }
            let payload = base64::engine::general_purpose::STANDARD
                .decode(&e.payload)
                .map_err(|err| VerifyError::Base64(format!("DSSE payload: {err}")))?;
            let st: Statement = serde_json::from_slice(&payload).map_err(|err| format(err.to_string()))?;
            let slot = match st.predicate_type.as_str() {
                SLSA_V1 => &mut v1,
                SLSA_V02 => &mut v02,
                other => return Err(format(format!("predicate type {other:?} is not SLSA provenance"))),
            };
            if slot.replace(e).is_some() {
                return Err(format(format!("two statements of predicate type {}", st.predicate_type)));
            }
        }
        match (v1, v02) {
            (Some(v1), Some(v02)) => Ok(Self { v1, v02 }),
            (None, _) => Err(VerifyError::NoProvenance),
            (Some(_), None) => Err(format(format!("no {SLSA_V02} statement beside the {SLSA_V1} one"))),
        }
    }
}

impl SignedProvenance {
    /// Checks, without a key, that both statements name `subject` (the
    /// object's sha256) among their subjects: an attestation held to its
    /// object even where nothing can verify its signature.
    pub fn check_subject(&self, subject: &Digest) -> Result<(), VerifyError> {
        use base64::Engine as _;
        for e in [&self.v1, &self.v02] {
            let payload = base64::engine::general_purpose::STANDARD
                .decode(&e.payload)
                .map_err(|err| VerifyError::Base64(format!("DSSE payload: {err}")))?;
            let st: Statement = serde_json::from_slice(&payload)
                .map_err(|err| VerifyError::Format { what: "in-toto statement", reason: err.to_string() })?;
            let named: Vec<String> =
                st.subject.iter().filter_map(|s| s.digest.get("sha256").map(|h| format!("sha256:{h}"))).collect();
            if !named.iter().any(|d| d == subject.as_str()) {
                return Err(VerifyError::SubjectMismatch { expected: subject.clone(), found: named.join(", ") });
            }
        }
        Ok(())
    }
}

/// What a verified provenance statement says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedProvenance {
    pub key_id: KeyId,
    pub identity: Identity,
    /// `runDetails.metadata.finishedOn`: what rollback protection compares.
    pub built_at: SystemTime,
    /// The same, as signed (RFC 3339).
    pub built_at_text: String,
    /// (name, sha256) of every subject.
    pub subjects: Vec<(String, Digest)>,
    /// The statement's exact JSON, as signed.
    pub statement: Vec<u8>,
}

fn sha256(d: &Digest) -> Value {
    json!({ "sha256": d.hex() })
}

fn subjects(meta: &ObjectMetadata) -> Value {
    let manifest = Digest::of_bytes(&oci::manifest(meta));
    json!([
        { "name": meta.file_name, "digest": sha256(&meta.digest) },
        { "name": MANIFEST_SUBJECT, "digest": sha256(&manifest), "mediaType": oci::MANIFEST_MEDIA_TYPE },
    ])
}

fn checked_time(meta: &ObjectMetadata) -> Result<(), SignError> {
    humantime::parse_rfc3339(&meta.built_at).map(|_| ()).map_err(|_| SignError::BuiltAt(meta.built_at.clone()))
}

fn external_parameters(meta: &ObjectMetadata) -> Value {
    let id = &meta.identity;
    json!({
        "kernelRelease": id.kernel_release,
        "arch": id.arch.uname(),
        "version": id.version,
        "kernel": meta.kernel,
        "buildMode": meta.build_mode,
    })
}

fn internal_parameters(meta: &ObjectMetadata) -> Value {
    json!({ "compiler": meta.compiler, "flags": meta.flags })
}

fn dependencies(meta: &ObjectMetadata) -> Vec<Value> {
    let mut deps: Vec<Value> = meta
        .sources
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "digest": sha256(&s.digest),
                "annotations": { "kind": s.kind, "version": s.version },
            })
        })
        .collect();
    deps.push(
        json!({ "name": "tracer", "digest": sha256(&meta.program_digest), "annotations": { "kind": "program" } }),
    );
    deps
}

/// The SLSA v1 statement, as exact bytes.
pub fn statement_v1(meta: &ObjectMetadata, builder: &BuilderInfo) -> Result<Vec<u8>, SignError> {
    checked_time(meta)?;
    let v = json!({
        "_type": STATEMENT_V1,
        "subject": subjects(meta),
        "predicateType": SLSA_V1,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external_parameters(meta),
                "internalParameters": internal_parameters(meta),
                "resolvedDependencies": dependencies(meta),
            },
            "runDetails": {
                "builder": { "id": builder.id, "version": { "bpfarm-builder": builder.version } },
                "metadata": { "finishedOn": meta.built_at },
            },
        },
    });
    serde_json::to_vec(&v).map_err(|e| SignError::Json(e.to_string()))
}

/// The same content as SLSA provenance v0.2.
pub fn statement_v02(meta: &ObjectMetadata, builder: &BuilderInfo) -> Result<Vec<u8>, SignError> {
    checked_time(meta)?;
    let materials: Vec<Value> =
        dependencies(meta).into_iter().map(|d| json!({ "uri": d["name"], "digest": d["digest"] })).collect();
    let v = json!({
        "_type": STATEMENT_V01,
        "subject": subjects(meta),
        "predicateType": SLSA_V02,
        "predicate": {
            "builder": { "id": builder.id },
            "buildType": BUILD_TYPE,
            "invocation": {
                "parameters": external_parameters(meta),
                "environment": { "bpfarm-builder": builder.version, "internalParameters": internal_parameters(meta) },
            },
            "metadata": {
                "buildFinishedOn": meta.built_at,
                "completeness": { "parameters": true, "environment": true, "materials": true },
                // Same inputs, same bytes (ARCHITECTURE.md).
                "reproducible": true,
            },
            "materials": materials,
        },
    });
    serde_json::to_vec(&v).map_err(|e| SignError::Json(e.to_string()))
}

/// Both statements, signed with `key`.
pub fn sign_provenance(
    key: &SigningKey,
    meta: &ObjectMetadata,
    builder: &BuilderInfo,
) -> Result<SignedProvenance, SignError> {
    Ok(SignedProvenance {
        v1: Envelope::sign(key, IN_TOTO_PAYLOAD_TYPE, &statement_v1(meta, builder)?)?,
        v02: Envelope::sign(key, IN_TOTO_PAYLOAD_TYPE, &statement_v02(meta, builder)?)?,
    })
}

/// Verifies an `.intoto.jsonl` (or one envelope) and returns the SLSA v1
/// statement signed by a trusted key that names `subject` (the object's
/// sha256, or its OCI manifest's). Lines of other predicate types (the v0.2
/// twin) are skipped.
pub fn verify_provenance(
    keys: &TrustedKeys,
    bytes: &[u8],
    subject: &Digest,
) -> Result<VerifiedProvenance, VerifyError> {
    if bytes.len() > super::dsse::MAX_ENVELOPE * 2 {
        return Err(VerifyError::TooLarge { what: "provenance", len: bytes.len(), max: super::dsse::MAX_ENVELOPE * 2 });
    }
    let mut last = VerifyError::NoProvenance;
    let lines = bytes.split(|b| *b == b'\n').filter(|l| !l.trim_ascii().is_empty()).take(MAX_LINES);
    for line in lines {
        match Envelope::parse(line).and_then(|e| verify_envelope(keys, &e, subject)) {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[derive(Deserialize)]
struct Statement {
    #[serde(rename = "_type")]
    type_: String,
    subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    predicate_type: String,
    predicate: Value,
}

#[derive(Deserialize)]
struct Subject {
    #[serde(default)]
    name: String,
    digest: BTreeMap<String, String>,
}

/// `Ok(None)`: a valid statement of another predicate type.
pub(crate) fn verify_envelope(
    keys: &TrustedKeys,
    envelope: &Envelope,
    subject: &Digest,
) -> Result<Option<VerifiedProvenance>, VerifyError> {
    let (payload, verified) = envelope.verify(keys, IN_TOTO_PAYLOAD_TYPE)?;
    let format = |reason: String| VerifyError::Format { what: "in-toto statement", reason };
    let st: Statement = serde_json::from_slice(&payload).map_err(|e| format(e.to_string()))?;
    if st.type_ != STATEMENT_V1 && st.type_ != STATEMENT_V01 {
        return Err(format(format!("_type {:?} is not an in-toto statement", st.type_)));
    }
    if st.predicate_type != SLSA_V1 {
        return Ok(None);
    }
    let subjects: Vec<(String, Digest)> = st
        .subject
        .iter()
        .filter_map(|s| Some((s.name.clone(), format!("sha256:{}", s.digest.get("sha256")?).parse().ok()?)))
        .collect();
    if !subjects.iter().any(|(_, d)| d == subject) {
        return Err(VerifyError::SubjectMismatch {
            expected: subject.clone(),
            found: subjects.iter().map(|(_, d)| d.to_string()).collect::<Vec<_>>().join(", "),
        });
    }
    let def = &st.predicate["buildDefinition"];
    if def["buildType"] != BUILD_TYPE {
        return Err(format(format!("build type {} is not {BUILD_TYPE}", def["buildType"])));
    }
    let params = &def["externalParameters"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let arch = params["arch"]
        .as_str()
        .and_then(Arch::from_any)
        .ok_or_else(|| format(format!("arch {} is not one bpfarm builds for", params["arch"])))?;
    let identity = Identity::new(&text(&params["kernelRelease"]), arch, &text(&params["version"]))
        .map_err(|e| format(e.to_string()))?;
    let built_at_text = text(&st.predicate["runDetails"]["metadata"]["finishedOn"]);
    let built_at = humantime::parse_rfc3339(&built_at_text).map_err(|_| VerifyError::BuiltAt(built_at_text.clone()))?;
    Ok(Some(VerifiedProvenance {
        key_id: verified.key_id,
        identity,
        built_at,
        built_at_text,
        subjects,
        statement: payload,
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sign::keys::tests::PKCS8;
    use crate::{Compiler, KernelFacts, SourceKind, SourcePackage};

    pub(crate) fn meta(bytes: &[u8]) -> ObjectMetadata {
        let identity = Identity::new("6.1.0-56-amd64", Arch::X86_64, "v0.1.0").unwrap();
        ObjectMetadata {
            file_name: identity.file_name(),
            identity,
            digest: Digest::of_bytes(bytes),
            size: bytes.len() as u64,
            kernel: KernelFacts { uname_version: Some("#1 SMP Debian 6.1.192-2".into()), config_digest: None },
            build_mode: crate::BuildMode::Headers,
            sources: vec![
                SourcePackage {
                    kind: SourceKind::Deb,
                    name: "linux-headers-6.1.0-56-amd64".into(),
                    version: "6.1.192-2".into(),
                    digest: Digest::of_bytes(b"flavour"),
                },
                SourcePackage {
                    kind: SourceKind::Deb,
                    name: "linux-headers-6.1.0-56-common".into(),
                    version: "6.1.192-2".into(),
                    digest: Digest::of_bytes(b"common"),
                },
            ],
            program_digest: Digest::of_bytes(b"tracer"),
            compiler: Compiler { clang: "Debian clang version 14.0.6".into(), llc: Some("LLVM version 14.0.6".into()) },
            flags: crate::Flags { clang: vec!["-O2".into(), "-g".into()], llc: vec!["-march=bpf".into()] },
            built_at: "2026-03-01T12:00:00Z".into(),
        }
    }

    fn setup() -> (SigningKey, TrustedKeys) {
        let key = SigningKey::from_pem(PKCS8.as_bytes(), None).unwrap();
        let keys = TrustedKeys::new([key.public_key().clone()]).unwrap();
        (key, keys)
    }

    #[test]
    fn the_statement_names_everything_the_build_used() {
        let m = meta(b"object");
        let v: Value = serde_json::from_slice(&statement_v1(&m, &BuilderInfo::bpfarm("9.9.9")).unwrap()).unwrap();
        assert_eq!(v["subject"][0]["name"], m.file_name);
        assert_eq!(v["subject"][0]["digest"]["sha256"], m.digest.hex());
        assert_eq!(v["subject"][1]["digest"]["sha256"], Digest::of_bytes(&oci::manifest(&m)).hex());
        let def = &v["predicate"]["buildDefinition"];
        let deps: Vec<&str> =
            def["resolvedDependencies"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
        assert_eq!(deps, ["linux-headers-6.1.0-56-amd64", "linux-headers-6.1.0-56-common", "tracer"]);
        assert_eq!(def["resolvedDependencies"][1]["digest"]["sha256"], Digest::of_bytes(b"common").hex());
        assert_eq!(def["resolvedDependencies"][0]["annotations"]["version"], "6.1.192-2");
        assert_eq!(def["internalParameters"]["flags"], json!({"clang": ["-O2", "-g"], "llc": ["-march=bpf"]}));
        assert_eq!(def["internalParameters"]["compiler"]["clang"], "Debian clang version 14.0.6");
        assert_eq!(def["externalParameters"]["kernelRelease"], "6.1.0-56-amd64");
        assert_eq!(v["predicate"]["runDetails"]["builder"]["version"]["bpfarm-builder"], "9.9.9");
        assert_eq!(v["predicate"]["runDetails"]["metadata"]["finishedOn"], "2026-03-01T12:00:00Z");
        let v02: Value = serde_json::from_slice(&statement_v02(&m, &BuilderInfo::bpfarm("9.9.9")).unwrap()).unwrap();
        assert_eq!(v02["predicate"]["materials"].as_array().unwrap().len(), 3);
        assert_eq!(v02["predicate"]["metadata"]["buildFinishedOn"], "2026-03-01T12:00:00Z");
    }

    #[test]
    fn provenance_verifies_for_either_subject_and_reports_the_build_time() {
        let (key, keys) = setup();
        let m = meta(b"object");
        let p = sign_provenance(&key, &m, &BuilderInfo::bpfarm("1")).unwrap();
        let jsonl = p.to_jsonl();
        let v = verify_provenance(&keys, &jsonl, &m.digest).unwrap();
        assert_eq!(v.identity, m.identity);
        assert_eq!(v.built_at_text, "2026-03-01T12:00:00Z");
        assert_eq!(v.built_at, humantime::parse_rfc3339("2026-03-01T12:00:00Z").unwrap());
        assert_eq!(&v.key_id, key.id());
        let manifest = Digest::of_bytes(&oci::manifest(&m));
        assert!(verify_provenance(&keys, &jsonl, &manifest).is_ok());
        // Only the v0.2 line: valid, but not what bpfarm reads.
        let v02_only = p.v02.to_json();
        assert!(matches!(verify_provenance(&keys, &v02_only, &m.digest), Err(VerifyError::NoProvenance)));
        // The provenance of another object.
        let e = verify_provenance(&keys, &jsonl, &Digest::of_bytes(b"other")).unwrap_err();
        assert!(matches!(e, VerifyError::SubjectMismatch { .. }), "{e}");
        // Deterministic: same metadata, same key, same bytes.
        assert_eq!(sign_provenance(&key, &m, &BuilderInfo::bpfarm("1")).unwrap().to_jsonl(), jsonl);
        assert!(matches!(verify_provenance(&keys, b"garbage\n", &m.digest), Err(VerifyError::Format { .. })));
    }

    #[test]
    fn without_a_key_the_statements_are_still_held_to_their_object() {
        let (key, _) = setup();
        let m = meta(b"object");
        let p = sign_provenance(&key, &m, &BuilderInfo::bpfarm("1")).unwrap();
        assert!(p.check_subject(&m.digest).is_ok());
        let e = p.check_subject(&Digest::of_bytes(b"another object")).unwrap_err();
        assert!(matches!(e, VerifyError::SubjectMismatch { .. }), "{e}");
        assert!(e.to_string().contains(m.digest.as_str()), "{e}");
    }

    #[test]
    fn an_unparseable_build_time_is_not_signed() {
        let (key, _) = setup();
        let mut m = meta(b"object");
        m.built_at = "yesterday".into();
        assert!(matches!(sign_provenance(&key, &m, &BuilderInfo::bpfarm("1")), Err(SignError::BuiltAt(_))));
    }

    #[test]
    fn an_intoto_jsonl_reads_back_as_its_two_envelopes() {
        let (key, _) = setup();
        let p = sign_provenance(&key, &meta(b"object"), &BuilderInfo::bpfarm("1")).unwrap();
        assert_eq!(SignedProvenance::from_jsonl(&p.to_jsonl()).unwrap(), p);
        // One line only, the same line twice, not an envelope, empty.
        let one = p.v1.to_json();
        assert!(SignedProvenance::from_jsonl(&one).is_err());
        let mut twice = one.clone();
        twice.push(b'\n');
        twice.extend(&one);
        assert!(matches!(SignedProvenance::from_jsonl(&twice), Err(VerifyError::Format { .. })));
        assert!(SignedProvenance::from_jsonl(b"{\"a\":1}\n").is_err());
        assert!(matches!(SignedProvenance::from_jsonl(b""), Err(VerifyError::NoProvenance)));
    }
}
