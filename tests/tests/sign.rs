//! Signing against the real cosign (Debian's 2.5), offline: cosign checks
//! what bpfarm signed (`verify-blob`, `verify`, `verify-attestation`) and
//! bpfarm checks what cosign signed (`sign-blob`, `sign`), with keys from
//! `openssl` and `cosign generate-key-pair`; the artifacts live in a real
//! registry (distribution 2.8 on loopback) and oras lists them.
//!
//! cosign runs with no network: the blob commands inside a fresh network
//! namespace (`unshare -rn`: not even loopback), the registry commands with
//! every proxy pointed at a closed port, so only loopback is reachable, and
//! with an empty `HOME`/`TUF_ROOT` so no cached Sigstore state is used.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use bpfarm_object::oci_client::{OciRegistry, OciTarget};
use bpfarm_object::sign::{
    self, BuilderInfo, KeyError, PublicKey, SigningKey, Subject, TrustedKeys, VerifyError, attestation_artifact,
    sign_manifest, signature_artifact,
};
use bpfarm_object::{Digest, ObjectMetadata, oci};
use bpfarm_tests::{built_object, cosign, distribution, openssl_ec_key, openssl_key, run_ok, running_kernel_build};
use serde_json::Value;

/// The running kernel's real object and metadata, built once per test
/// process by the builder into cargo's test scratch folder (its cache keeps
/// later runs warm).
fn real_object() -> &'static (Vec<u8>, ObjectMetadata) {
    static OBJECT: OnceLock<(Vec<u8>, ObjectMetadata)> = OnceLock::new();
    OBJECT.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sign-object");
        let out = dir.join("out");
        let _ = std::fs::remove_dir_all(&out);
        run_ok(&mut running_kernel_build(&dir.join("cache"), &out));
        let (object, meta) = built_object(&out);
        (std::fs::read(object).unwrap(), meta)
    })
}

/// `cosign generate-key-pair` in `dir`: (cosign.key, cosign.pub).
fn cosign_key(dir: &Path) -> (PathBuf, PathBuf) {
    run_ok(cosign::without_network(dir).arg("generate-key-pair").current_dir(dir));
    (dir.join("cosign.key"), dir.join("cosign.pub"))
}

fn trust(public: &Path) -> TrustedKeys {
    TrustedKeys::load(&[public.to_owned()]).unwrap()
}

#[test]
fn cosign_verify_blob_accepts_what_bpfarm_signed_and_only_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, meta) = real_object();
    let (key, public) = openssl_key(dir.path(), "signer");
    let (_, stranger) = openssl_key(dir.path(), "stranger");
    let key = SigningKey::load(&key).unwrap();
    let signed = sign::sign_object(&key, meta, bytes, &BuilderInfo::bpfarm(env!("CARGO_PKG_VERSION"))).unwrap();
    let file = dir.path().join(&meta.file_name);
    let sig = dir.path().join(format!("{}{}", meta.file_name, sign::SIGNATURE_SUFFIX));
    std::fs::write(&file, bytes).unwrap();
    std::fs::write(&sig, &signed.signature).unwrap();

    let ok = cosign::verify_blob(dir.path(), &public, &sig, &file);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stderr).contains("Verified OK"));
    let bad = cosign::verify_blob(dir.path(), &stranger, &sig, &file);
    assert!(!bad.status.success(), "cosign accepted another key");

    // A flipped object byte fails for cosign as for bpfarm.
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 1;
    std::fs::write(&file, &flipped).unwrap();
    assert!(!cosign::verify_blob(dir.path(), &public, &sig, &file).status.success());
    assert!(matches!(
        sign::verify_blob(&trust(&public), &flipped, signed.signature.as_bytes()),
        Err(VerifyError::NoKeyMatched { .. })
    ));
}

#[test]
fn bpfarm_verifies_cosign_sign_blob_and_signs_with_cosigns_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, meta) = real_object();
    let (cosign_key, cosign_pub) = cosign_key(dir.path());
    let file = dir.path().join(&meta.file_name);
    std::fs::write(&file, bytes).unwrap();
    let sig = dir.path().join("by-cosign.sig");
    let out = cosign::without_network(dir.path())
        .args(["sign-blob", "--key"])
        .arg(&cosign_key)
        .args(["--tlog-upload=false", "--yes", "--output-signature"])
        .arg(&sig)
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let keys = trust(&cosign_pub);
    let v = sign::verify_blob(&keys, bytes, &std::fs::read(&sig).unwrap()).unwrap();
    assert_eq!(&v.key_id, PublicKey::load(&cosign_pub).unwrap().id());

    // bpfarm opens cosign's encrypted key file and signs; cosign verifies.
    let key = SigningKey::load_with_password(&cosign_key, Some(cosign::PASSWORD.as_bytes())).unwrap();
    assert_eq!(key.id(), &v.key_id);
    let ours = dir.path().join("by-bpfarm.sig");
    std::fs::write(&ours, sign::sign_blob(&key, bytes).unwrap()).unwrap();
    let ok = cosign::verify_blob(dir.path(), &cosign_pub, &ours, &file);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    // The wrong password, or none, is a clear error, not a bad signature.
    let e = SigningKey::load_with_password(&cosign_key, Some(b"wrong")).unwrap_err();
    assert!(matches!(&e, KeyError::File { source, .. } if matches!(**source, KeyError::Decrypt)), "{e:?}");
    assert!(anyhow_like(&e).contains("cosign.key: wrong password"), "{}", anyhow_like(&e));
    let e = SigningKey::load_with_password(&cosign_key, None).unwrap_err();
    assert!(matches!(&e, KeyError::File { source, .. } if matches!(**source, KeyError::PasswordNeeded)), "{e:?}");
}

/// The error chain as the binaries print it (`{:#}` of anyhow).
fn anyhow_like(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[test]
fn tampered_signatures_and_wrong_keys_are_typed_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, _) = real_object();
    let (key, public) = openssl_key(dir.path(), "signer");
    let (_, stranger) = openssl_key(dir.path(), "stranger");
    let key = SigningKey::load(&key).unwrap();
    let keys = trust(&public);
    let sig = sign::sign_blob(&key, bytes).unwrap();

    // A flipped signature byte: the base64 still decodes, the DER may or may
    // not parse, the signature never verifies.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut der = b64.decode(&sig).unwrap();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let flipped = b64.encode(&der);
    let e = sign::verify_blob(&keys, bytes, flipped.as_bytes()).unwrap_err();
    assert!(matches!(e, VerifyError::NoKeyMatched { .. } | VerifyError::Der), "{e:?}");
    // And cosign agrees.
    let file = dir.path().join("object.o");
    let sig_file = dir.path().join("object.o.sig");
    std::fs::write(&file, bytes).unwrap();
    std::fs::write(&sig_file, &flipped).unwrap();
    assert!(!cosign::verify_blob(dir.path(), &public, &sig_file, &file).status.success());

    // The signature of another object.
    let other = sign::sign_blob(&key, b"another object").unwrap();
    assert!(matches!(sign::verify_blob(&keys, bytes, other.as_bytes()), Err(VerifyError::NoKeyMatched { .. })));
    // Another key: the message names the key ids tried.
    let e = sign::verify_blob(&trust(&stranger), bytes, sig.as_bytes()).unwrap_err();
    let stranger_id = PublicKey::load(&stranger).unwrap().id().to_string();
    assert!(e.to_string().contains(&stranger_id), "{e}");
    // Rotation: the old and the new key together accept it.
    let both = TrustedKeys::load(&[stranger.clone(), public.clone()]).unwrap();
    assert!(sign::verify_blob(&both, bytes, sig.as_bytes()).is_ok());
    // Malformed signatures.
    assert!(matches!(sign::verify_blob(&keys, bytes, b"%%% not base64"), Err(VerifyError::Base64(_))));
    assert!(matches!(sign::verify_blob(&keys, bytes, b64.encode(b"not DER").as_bytes()), Err(VerifyError::Der)));
    assert!(matches!(sign::verify_blob(&keys, bytes, b""), Err(VerifyError::EmptySignature)));

    // Malformed and wrong-curve keys, as files.
    let junk = dir.path().join("junk.pub");
    std::fs::write(&junk, "-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----\n").unwrap();
    let e = PublicKey::load(&junk).unwrap_err();
    assert!(matches!(&e, KeyError::File { source, .. } if matches!(**source, KeyError::Pem(_))), "{e:?}");
    let (p384_key, p384_pub) = openssl_ec_key(dir.path(), "p384", "P-384");
    for e in [PublicKey::load(&p384_pub).unwrap_err(), SigningKey::load(&p384_key).unwrap_err()] {
        assert!(anyhow_like(&e).contains("P-384 (secp384r1); bpfarm signs and verifies with ECDSA P-256 only"), "{e}");
    }
    let ed = dir.path().join("ed25519.pem");
    run_ok(Command::new("openssl").args(["genpkey", "-algorithm", "ed25519", "-out"]).arg(&ed));
    assert!(anyhow_like(&SigningKey::load(&ed).unwrap_err()).contains("the key is Ed25519"));
    let e = PublicKey::load(&dir.path().join("missing.pub")).unwrap_err();
    assert!(anyhow_like(&e).contains("missing.pub: reading it"), "{e}");
}

/// The registry an artifact lives in, kept running while the test needs it.
#[allow(dead_code)] // held for their Drop
enum Server {
    Distribution(bpfarm_tests::Distribution),
    Bpfarm(bpfarm_tests::Registry, tempfile::TempDir),
}

/// A registry with the real object published as bpfarm publishes it.
struct Published {
    _server: Server,
    addr: String,
    reg: OciRegistry,
    manifest: Vec<u8>,
    subject: Subject,
}

/// The real object, published into distribution 2.8.
fn publish_real_object(meta: &ObjectMetadata, bytes: &[u8]) -> Published {
    let dist = distribution();
    let addr = dist.addr.clone();
    publish_into(Server::Distribution(dist), addr, oci_client::secrets::RegistryAuth::Anonymous, meta, bytes)
}

/// The real object, published through bpfarm's own `/v2` with a push token.
fn publish_real_object_to_bpfarm(meta: &ObjectMetadata, bytes: &[u8]) -> (Published, String) {
    let data = tempfile::tempdir().unwrap();
    let push = bpfarm_tests::token(data.path(), "ci", "push");
    let reg = bpfarm_tests::serve(data.path());
    let addr = reg.url.strip_prefix("http://").unwrap().to_owned();
    let auth = bpfarm_object::oci_client::credentials(&addr, None, Some(&push));
    (publish_into(Server::Bpfarm(reg, data), addr, auth, meta, bytes), push)
}

fn publish_into(
    server: Server,
    addr: String,
    auth: oci_client::secrets::RegistryAuth,
    meta: &ObjectMetadata,
    bytes: &[u8],
) -> Published {
    let transport = bpfarm_object::http::Transport::new(Default::default()).unwrap();
    let reg = OciRegistry::new(OciTarget::parse(&format!("oci://{addr}/ns")).unwrap(), auth, &transport).unwrap();
    reg.publish(meta, bytes).unwrap();
    let manifest = oci::manifest(meta);
    let subject = Subject::manifest(&manifest);
    Published { _server: server, addr, reg, manifest, subject }
}

impl Published {
    /// `127.0.0.1:PORT/ns/tracee-bpf@sha256:…` of the object's manifest.
    fn image(&self) -> String {
        format!("{}/ns/tracee-bpf@{}", self.addr, self.subject.digest)
    }

    fn cosign(&self, home: &Path, args: &[&str]) -> Output {
        cosign::on_registry(home, args, &self.image())
    }

    /// bpfarm's own check of what is under the `.sig` tag.
    fn verify_signature(&self, keys: &TrustedKeys) -> Result<sign::Verified, VerifyError> {
        let manifest =
            self.reg.pull_tagged_manifest(&sign::signature_tag(&self.subject.digest)).unwrap().expect("a .sig tag");
        sign::verify_signature_manifest(keys, &self.subject.digest, &manifest, &mut |d: &Digest| {
            self.reg.pull_small_blob(d, 64 * 1024).map_err(Into::into)
        })
    }
}

#[test]
fn cosign_verifies_bpfarms_oci_signature_and_provenance() {
    let home = tempfile::tempdir().unwrap();
    let (bytes, meta) = real_object();
    let p = publish_real_object(meta, bytes);
    let (key, public) = openssl_key(home.path(), "signer");
    let (_, stranger) = openssl_key(home.path(), "stranger");
    let key = SigningKey::load(&key).unwrap();

    let signature = sign_manifest(&key, &p.reg.docker_reference(), &p.subject.digest).unwrap();
    let sig_artifact = signature_artifact(&p.subject, std::slice::from_ref(&signature));
    p.reg.push_artifact(&sig_artifact).unwrap();
    let provenance = sign::sign_provenance(&key, meta, &BuilderInfo::bpfarm(env!("CARGO_PKG_VERSION"))).unwrap();
    let att_artifact = attestation_artifact(&p.subject, &provenance);
    p.reg.push_artifact(&att_artifact).unwrap();
    // The registry holds exactly the bytes bpfarm made (and the same inputs
    // make the same bytes again).
    assert_eq!(
        p.reg.pull_tagged_manifest(&sign::signature_tag(&p.subject.digest)).unwrap().unwrap(),
        sig_artifact.manifest
    );
    assert_eq!(
        signature_artifact(&p.subject, &[sign_manifest(&key, &p.reg.docker_reference(), &p.subject.digest).unwrap()]),
        sig_artifact
    );
    assert_eq!(p.manifest, oci::manifest(meta));

    // oras (a second client) sees the tags where cosign looks.
    let tags =
        run_ok(Command::new("oras").args(["repo", "tags", "--plain-http"]).arg(format!("{}/ns/tracee-bpf", p.addr)));
    let tags = String::from_utf8_lossy(&tags.stdout);
    assert!(tags.contains(&sign::signature_tag(&p.subject.digest)), "{tags}");
    assert!(tags.contains(&sign::attestation_tag(&p.subject.digest)), "{tags}");

    let key_arg = public.to_str().unwrap();
    let out = p.cosign(home.path(), &["verify", "--key", key_arg, "--insecure-ignore-tlog"]);
    assert!(out.status.success(), "cosign verify: {}", String::from_utf8_lossy(&out.stderr));
    let claims: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims[0]["critical"]["image"]["docker-manifest-digest"], p.subject.digest.as_str());
    let out = p.cosign(home.path(), &["verify", "--key", stranger.to_str().unwrap(), "--insecure-ignore-tlog"]);
    assert!(!out.status.success(), "cosign verify accepted another key");

    for predicate in ["slsaprovenance", "slsaprovenance1"] {
        let out = p.cosign(
            home.path(),
            &["verify-attestation", "--key", key_arg, "--insecure-ignore-tlog", "--type", predicate],
        );
        assert!(
            out.status.success(),
            "cosign verify-attestation --type {predicate}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = p.cosign(
        home.path(),
        &[
            "verify-attestation",
            "--key",
            stranger.to_str().unwrap(),
            "--insecure-ignore-tlog",
            "--type",
            "slsaprovenance1",
        ],
    );
    assert!(!out.status.success(), "cosign verify-attestation accepted another key");
    // What cosign printed is bpfarm's statement, naming the real sources.
    let out = p.cosign(
        home.path(),
        &["verify-attestation", "--key", key_arg, "--insecure-ignore-tlog", "--type", "slsaprovenance1"],
    );
    let envelope: Value = serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    use base64::Engine as _;
    let statement: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD.decode(envelope["payload"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let deps = &statement["predicate"]["buildDefinition"]["resolvedDependencies"];
    assert_eq!(deps[0]["digest"]["sha256"], meta.sources[0].digest.hex());
    assert_eq!(statement["predicate"]["runDetails"]["metadata"]["finishedOn"], meta.built_at.as_str());

    // bpfarm's own verifier, through the same registry.
    let keys = trust(&public);
    assert_eq!(&p.verify_signature(&keys).unwrap().key_id, key.id());
    assert!(matches!(p.verify_signature(&trust(&stranger)), Err(VerifyError::NoKeyMatched { .. })));
    let att = p.reg.pull_tagged_manifest(&sign::attestation_tag(&p.subject.digest)).unwrap().unwrap();
    let verified = sign::verify_attestation_manifest(&keys, &p.subject.digest, &att, &mut |d: &Digest| {
        p.reg.pull_small_blob(d, 1 << 20).map_err(Into::into)
    })
    .unwrap();
    assert_eq!(
        (verified.identity.clone(), verified.built_at_text.clone()),
        (meta.identity.clone(), meta.built_at.clone())
    );
    // The provenance names the object file too: the same envelopes verify
    // beside the object, against its bytes.
    let beside = sign::verify_provenance(&keys, &provenance.to_jsonl(), &Digest::of_bytes(bytes)).unwrap();
    assert_eq!(beside.built_at, verified.built_at);
}

#[test]
fn bpfarm_verifies_what_cosign_sign_pushed() {
    let home = tempfile::tempdir().unwrap();
    let (bytes, meta) = real_object();
    let p = publish_real_object(meta, bytes);
    let (cosign_key, cosign_pub) = cosign_key(home.path());
    let out = p.cosign(home.path(), &["sign", "--key", cosign_key.to_str().unwrap(), "--tlog-upload=false", "--yes"]);
    assert!(out.status.success(), "cosign sign: {}", String::from_utf8_lossy(&out.stderr));
    let keys = trust(&cosign_pub);
    let v = p.verify_signature(&keys).unwrap();
    assert_eq!(&v.key_id, PublicKey::load(&cosign_pub).unwrap().id());
    let (_, stranger) = openssl_key(home.path(), "stranger");
    assert!(matches!(p.verify_signature(&trust(&stranger)), Err(VerifyError::NoKeyMatched { .. })));

    // cosign's signature of this manifest, presented for another one.
    let manifest = p.reg.pull_tagged_manifest(&sign::signature_tag(&p.subject.digest)).unwrap().unwrap();
    let other = Digest::of_bytes(b"another manifest");
    let e = sign::verify_signature_manifest(&keys, &other, &manifest, &mut |d: &Digest| {
        p.reg.pull_small_blob(d, 64 * 1024).map_err(Into::into)
    })
    .unwrap_err();
    assert!(matches!(e, VerifyError::SubjectMismatch { .. }), "{e}");
    // A payload larger than the bound is not pulled whole.
    let payload =
        serde_json::from_slice::<Value>(&manifest).unwrap()["layers"][0]["digest"].as_str().unwrap().to_owned();
    assert!(p.reg.pull_small_blob(&payload.parse().unwrap(), 16).is_err());
}

#[test]
fn bpfarms_own_v2_lists_signatures_as_referrers_and_cosign_verifies_there() {
    let home = tempfile::tempdir().unwrap();
    let (bytes, meta) = real_object();
    let (p, push) = publish_real_object_to_bpfarm(meta, bytes);
    let (key, public) = openssl_key(home.path(), "signer");
    let key = SigningKey::load(&key).unwrap();
    let sig =
        signature_artifact(&p.subject, &[sign_manifest(&key, &p.reg.docker_reference(), &p.subject.digest).unwrap()]);
    let provenance = sign::sign_provenance(&key, meta, &BuilderInfo::bpfarm(env!("CARGO_PKG_VERSION"))).unwrap();
    let att = attestation_artifact(&p.subject, &provenance);
    p.reg.push_artifact(&sig).unwrap();
    p.reg.push_artifact(&att).unwrap();

    // The referrers API names both, by artifact type.
    let resp = reqwest::blocking::Client::new()
        .get(format!("http://{}/v2/ns/tracee-bpf/referrers/{}", p.addr, p.subject.digest))
        .header("Authorization", format!("Bearer {push}"))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let index: Value = serde_json::from_slice(&resp.bytes().unwrap()).unwrap();
    let mut found: Vec<(String, String)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["digest"].as_str().unwrap().to_owned(), m["artifactType"].as_str().unwrap().to_owned()))
        .collect();
    found.sort();
    let mut expected = vec![
        (sig.manifest_digest().to_string(), sign::cosign::SIGNATURE_ARTIFACT_TYPE.to_owned()),
        (att.manifest_digest().to_string(), sign::cosign::DSSE_MEDIA_TYPE.to_owned()),
    ];
    expected.sort();
    assert_eq!(found, expected);

    // cosign finds them by tag in bpfarm's registry too.
    let key_arg = public.to_str().unwrap();
    let out = p.cosign(home.path(), &["verify", "--key", key_arg, "--insecure-ignore-tlog"]);
    assert!(out.status.success(), "cosign verify: {}", String::from_utf8_lossy(&out.stderr));
    let out = p.cosign(
        home.path(),
        &["verify-attestation", "--key", key_arg, "--insecure-ignore-tlog", "--type", "slsaprovenance"],
    );
    assert!(out.status.success(), "cosign verify-attestation: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(&p.verify_signature(&trust(&public)).unwrap().key_id, key.id());
}
