//! The agent's side of signed objects (issue #11): `--verify-key` accepts
//! objects signed by the real `cosign sign-blob --tlog-upload=false` (run
//! with no network, in its own network namespace) from every place an
//! object comes from, and refuses tampered ones — a flipped object byte, a
//! flipped signature byte, the signature of another object, another key,
//! an older validly signed build after a newer one, an unsigned object in
//! the install path, a symlinked or planted `.sig` — each with its exit
//! code, a message naming the place and the reason, and proof that nothing
//! was loaded (no "attached", no events) or installed.
//!
//! Objects are the builder's real output for the running kernel; accepted
//! objects are loaded into the real kernel (`run`) where the test is
//! privileged. The provenance (`.intoto.jsonl`) is made with
//! `bpfarm_object::sign` and the same cosign key file (cosign has no SLSA
//! predicate of bpfarm's). Registries: `/v1` is the real registry (without
//! `--trusted-key`, so it serves what a compromised publisher sent, too);
//! the static layout is a small loopback server (`bpfarm_tests::hostile`)
//! standing in for any web server; OCI is the real distribution registry.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use base64::Engine as _;
use bpfarm_object::client::SignedUpload;
use bpfarm_object::oci_client::{OciRegistry, OciTarget, credentials};
use bpfarm_object::sign::{self, BuilderInfo, SigningKey, Subject};
use bpfarm_object::{Digest, ObjectMetadata, oci};
use bpfarm_tests::hostile::{HostileServer, Reply, Request};
use bpfarm_tests::{
    agent_in, assert_agent_refused, built_object, chmod, cosign, distribution, openssl_key, privileged,
    run_agent_for_a_second, run_ok, running_kernel_build, running_object_name, show,
};
use serde_json::Value;

const NEWER: &str = "2026-06-01T00:00:00Z";
const OLDER: &str = "2026-01-01T00:00:00Z";

/// The running kernel's real object and metadata, built once per test
/// process (the builder's cache in cargo's scratch folder keeps later runs
/// warm).
fn real_object() -> &'static (Vec<u8>, ObjectMetadata) {
    static OBJECT: OnceLock<(Vec<u8>, ObjectMetadata)> = OnceLock::new();
    OBJECT.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("agent-sign-object");
        let out = dir.join(format!("out-{}", std::process::id()));
        run_ok(&mut running_kernel_build(&dir.join("cache"), &out));
        let (object, meta) = built_object(&out);
        let bytes = std::fs::read(object).unwrap();
        let _ = std::fs::remove_dir_all(&out);
        (bytes, meta)
    })
}

/// Keys: cosign's own pair (trusted) and an openssl one (not trusted).
struct Keys {
    dir: tempfile::TempDir,
    cosign_key: PathBuf,
    cosign_pub: PathBuf,
    other_key: PathBuf,
    other_pub: PathBuf,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        run_ok(cosign::without_network(dir.path()).arg("generate-key-pair").current_dir(dir.path()));
        let (other_key, other_pub) = openssl_key(dir.path(), "other");
        Keys {
            cosign_key: dir.path().join("cosign.key"),
            cosign_pub: dir.path().join("cosign.pub"),
            other_key,
            other_pub,
            dir,
        }
    })
}

/// `cosign sign-blob --tlog-upload=false` over `bytes` with `key`: the
/// `.sig` text.
fn cosign_sign_blob(key: &Path, bytes: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob");
    std::fs::write(&file, bytes).unwrap();
    let sig = dir.path().join("blob.sig");
    run_ok(
        cosign::without_network(keys().dir.path())
            .args(["sign-blob", "--key"])
            .arg(key)
            .args(["--tlog-upload=false", "--yes", "--output-signature"])
            .arg(&sig)
            .arg(&file),
    );
    std::fs::read(sig).unwrap()
}

/// The `.sig` cosign made for the real object (once).
fn object_sig() -> &'static [u8] {
    static SIG: OnceLock<Vec<u8>> = OnceLock::new();
    SIG.get_or_init(|| cosign_sign_blob(&keys().cosign_key, &real_object().0))
}

/// A signature by the untrusted openssl key (cosign reads only its own
/// key files, so bpfarm's signer makes it, in the same format).
fn other_key_sig(bytes: &[u8]) -> Vec<u8> {
    sign::sign_blob(&SigningKey::load(&keys().other_key).unwrap(), bytes).unwrap().into_bytes()
}

fn signing_key(path: &Path) -> SigningKey {
    SigningKey::load_with_password(path, Some(cosign::PASSWORD.as_bytes())).unwrap()
}

/// The signed provenance of the real object, claiming build time `at`.
fn provenance(key: &Path, bytes: &[u8], at: &str) -> Vec<u8> {
    let mut meta = real_object().1.clone();
    meta.digest = Digest::of_bytes(bytes);
    meta.size = bytes.len() as u64;
    meta.built_at = at.into();
    sign::sign_provenance(&signing_key(key), &meta, &BuilderInfo::bpfarm("0.1.0-test")).unwrap().to_jsonl()
}

/// What goes into a folder beside (or as) the object.
#[derive(Clone)]
struct Files {
    object: Vec<u8>,
    sig: Option<Vec<u8>>,
    intoto: Option<Vec<u8>>,
}

/// The real object, cosign's `.sig` and a provenance built at `at`.
fn signed(at: &str) -> Files {
    let (bytes, _) = real_object();
    Files {
        object: bytes.clone(),
        sig: Some(object_sig().to_vec()),
        intoto: Some(provenance(&keys().cosign_key, bytes, at)),
    }
}

/// Writes the files into `dir` (created 0700); the object's `.json` too
/// when `with_json` (the install path requires it).
fn place(dir: &Path, f: &Files, with_json: bool) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    chmod(dir, 0o700);
    let object = dir.join(running_object_name());
    std::fs::write(&object, &f.object).unwrap();
    if let Some(s) = &f.sig {
        std::fs::write(dir.join(format!("{}.sig", running_object_name())), s).unwrap();
    }
    if let Some(p) = &f.intoto {
        std::fs::write(dir.join(format!("{}.intoto.jsonl", running_object_name())), p).unwrap();
    }
    if with_json {
        let mut meta = real_object().1.clone();
        meta.digest = Digest::of_bytes(&f.object);
        meta.size = f.object.len() as u64;
        std::fs::write(dir.join(format!("{}.json", running_object_name())), serde_json::to_vec(&meta).unwrap())
            .unwrap();
    }
    object
}

fn trusting<'c>(c: &'c mut Command, key: &Path) -> &'c mut Command {
    c.arg("--verify-key").arg(key)
}

fn assert_loaded(out: &Output) {
    let text = show(out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("attached"), "{text}");
}

fn state(root: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(root.join("state/rollback.json")).expect("a rollback record")).unwrap()
}

fn recorded_time(root: &Path) -> String {
    let s = state(root);
    let (_, r) = s["identities"].as_object().unwrap().iter().next().expect("one identity recorded");
    r["built_at"].as_str().unwrap().to_owned()
}

#[test]
fn cosign_signed_objects_are_accepted_loaded_and_their_provenance_printed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let object = place(&root.join("given"), &signed(NEWER), false);

    // locate names the key and the signed build time; --provenance prints it.
    let out = trusting(agent_in(root, "never").env("TRACEE_BPF_FILE", &object), &keys().cosign_pub)
        .args(["locate", "--provenance"])
        .output()
        .unwrap();
    let text = show(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let key_id = sign::PublicKey::load(&keys().cosign_pub).unwrap().id().to_string();
    assert!(text.contains(&format!("signature verified (its .sig, key {key_id})")), "{text}");
    assert!(text.contains(&format!("signed build time {NEWER}")), "{text}");
    let meta = &real_object().1;
    for s in &meta.sources {
        assert!(text.contains(&s.name) && text.contains(s.digest.hex()), "source {} not printed:\n{text}", s.name);
    }
    assert!(text.contains(&meta.compiler.clang), "{text}");
    assert!(text.contains("bpfarm-builder 0.1.0-test"), "{text}");
    assert!(text.contains(&format!("built:    {NEWER}")), "{text}");
    assert!(!root.join("state").exists(), "locate records nothing");

    // JSON: the signature block.
    let out = trusting(agent_in(root, "never").env("TRACEE_BPF_FILE", &object), &keys().cosign_pub)
        .args(["locate", "--output", "json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", show(&out)));
    assert_eq!(v["signature"]["status"], "verified", "{v}");
    assert_eq!(v["signature"]["key_id"], key_id.as_str(), "{v}");
    assert_eq!(v["signature"]["built_at"], NEWER, "{v}");

    // Without --verify-key: nothing changes, locate says it is signed.
    let out = agent_in(root, "never").env("TRACEE_BPF_FILE", &object).arg("locate").output().unwrap();
    assert!(show(&out).contains("signed (.sig with it; not checked without --verify-key)"), "{}", show(&out));
    // --provenance without a key is a usage error.
    let out =
        agent_in(root, "never").env("TRACEE_BPF_FILE", &object).args(["locate", "--provenance"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(show(&out).contains("needs --verify-key"), "{}", show(&out));

    // Rotation: the old and the new key both trusted.
    let out = trusting(
        trusting(agent_in(root, "never").env("TRACEE_BPF_FILE", &object), &keys().other_pub),
        &keys().cosign_pub,
    )
    .arg("locate")
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));

    if !privileged("cosign_signed_objects_are_accepted_loaded_and_their_provenance_printed") {
        return;
    }
    // run: loaded, and the signed build time recorded.
    let out =
        run_agent_for_a_second(trusting(agent_in(root, "never").env("TRACEE_BPF_FILE", &object), &keys().cosign_pub));
    assert_loaded(&out);
    assert_eq!(recorded_time(root), NEWER);
    let mode = std::fs::metadata(root.join("state/rollback.json")).unwrap().permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
}

/// One tampered candidate given as TRACEE_BPF_FILE: refused, not loaded.
fn refused_as_bpf_file(f: &Files, needles: &[&str], setup: impl FnOnce(&Path)) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let object = place(&root.join("given"), f, false);
    setup(&root.join("given"));
    let out =
        run_agent_for_a_second(trusting(agent_in(root, "never").env("TRACEE_BPF_FILE", &object), &keys().cosign_pub));
    let mut all = vec!["TRACEE_BPF_FILE"];
    all.extend_from_slice(needles);
    assert_agent_refused(&out, root, &all);
    assert!(!root.join("state").exists(), "a refused object recorded something");
}

#[test]
fn tampered_objects_and_signatures_are_refused_and_nothing_is_loaded() {
    let good = signed(NEWER);
    // A flipped object byte (in the license string: the embedded identity
    // and the ELF stay valid, only the signature can tell).
    let mut flipped = good.clone();
    let at = flipped.object.windows(4).position(|w| w == b"GPL\0").expect("a GPL license string");
    flipped.object[at + 2] ^= 0x01;
    refused_as_bpf_file(
        &Files { intoto: None, ..flipped },
        &["its signature does not verify", "does not verify with any trusted key"],
        |_| {},
    );
    // A flipped signature byte (inside r: still DER, no longer valid).
    let mut der = base64::engine::general_purpose::STANDARD.decode(object_sig().trim_ascii()).unwrap();
    der[10] ^= 0x01;
    let sig = base64::engine::general_purpose::STANDARD.encode(&der).into_bytes();
    refused_as_bpf_file(&Files { sig: Some(sig), ..good.clone() }, &["its signature does not verify"], |_| {});
    // The signature of another object.
    let other = cosign_sign_blob(&keys().cosign_key, b"another object");
    refused_as_bpf_file(&Files { sig: Some(other), ..good.clone() }, &["its signature does not verify"], |_| {});
    // Another key (signature and provenance both by it).
    let (bytes, _) = real_object();
    let by_other = Files { object: bytes.clone(), sig: Some(other_key_sig(bytes)), intoto: None };
    refused_as_bpf_file(&by_other, &["does not verify with any trusted key"], |_| {});
    // Malformed and missing signatures.
    refused_as_bpf_file(&Files { sig: Some(b"not base64!".to_vec()), ..good.clone() }, &["not base64"], |_| {});
    refused_as_bpf_file(&Files { sig: None, ..good.clone() }, &["unsigned (no .sig with it)"], |_| {});
    // A valid signature whose provenance is for another object.
    let wrong = provenance(&keys().cosign_key, b"another object", NEWER);
    refused_as_bpf_file(
        &Files { intoto: Some(wrong), ..good.clone() },
        &["its .intoto.jsonl does not verify", "the signed statement is for"],
        |_| {},
    );
    // A symlinked .sig (to a valid signature): never followed.
    refused_as_bpf_file(&Files { sig: None, ..good.clone() }, &["is a symbolic link"], |dir| {
        let real = dir.parent().unwrap().join("real.sig");
        std::fs::write(&real, object_sig()).unwrap();
        std::os::unix::fs::symlink(&real, dir.join(format!("{}.sig", running_object_name()))).unwrap();
    });
    // A planted .sig: writable by everyone, or owned by another user.
    refused_as_bpf_file(&good, &["writable by everyone"], |dir| {
        chmod(&dir.join(format!("{}.sig", running_object_name())), 0o666);
    });
    refused_as_bpf_file(&good, &["is owned by uid 65534"], |dir| {
        std::os::unix::fs::chown(dir.join(format!("{}.sig", running_object_name())), Some(65534), None).unwrap();
    });
}

#[test]
fn an_unsigned_object_in_the_install_path_is_refused_under_verify_key() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (bytes, _) = real_object();
    place(&root.join("install"), &Files { object: bytes.clone(), sig: None, intoto: None }, true);
    // if-needed: a local build would be next, but it cannot be signed.
    let out = run_agent_for_a_second(trusting(&mut agent_in(root, "if-needed"), &keys().cosign_pub));
    let text = show(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("install path") && text.contains("unsigned (no .sig with it)"), "{text}");
    assert!(text.contains("a local build is unsigned"), "no build is attempted: {text}");
    assert!(!text.contains("attached"), "{text}");
    // Without --verify-key the same object is used (nothing changes).
    let out = agent_in(root, "never").arg("locate").output().unwrap();
    assert!(show(&out).contains("; unsigned"), "{}", show(&out));
    assert!(show(&out).contains(&format!("would load {}", root.join("install").join(running_object_name()).display())));
}

#[test]
fn an_older_signed_build_after_a_newer_one_is_refused_unless_downgrades_are_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let newer = place(&root.join("newer"), &signed(NEWER), false);
    let older = place(&root.join("older"), &signed(OLDER), false);
    // Another object (one byte appended), validly signed, with no signed
    // build time; and the newer object itself without its provenance.
    let mut other = real_object().0.clone();
    other.push(0);
    let other_sig = sign::sign_blob(&signing_key(&keys().cosign_key), &other).unwrap().into_bytes();
    let no_time = place(&root.join("no-time"), &Files { object: other, sig: Some(other_sig), intoto: None }, false);
    let same_no_time = place(&root.join("same-no-time"), &Files { intoto: None, ..signed(NEWER) }, false);
    let go = |object: &Path, extra: &[&str]| {
        let mut c = agent_in(root, "never");
        c.env("TRACEE_BPF_FILE", object).args(extra);
        trusting(&mut c, &keys().cosign_pub);
        run_agent_for_a_second(&mut c)
    };
    // Before any record, the older one is fine (nothing says it is old)…
    let out = trusting(agent_in(root, "never").env("TRACEE_BPF_FILE", &older), &keys().cosign_pub)
        .arg("locate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    if !privileged("an_older_signed_build_after_a_newer_one_is_refused_unless_downgrades_are_allowed") {
        return;
    }
    // …the newer one is loaded and recorded…
    assert_loaded(&go(&newer, &[]));
    assert_eq!(recorded_time(root), NEWER);
    // …then the older one, validly signed, is a replay: refused.
    let out = go(&older, &[]);
    assert_agent_refused(&out, root, &["TRACEE_BPF_FILE", "a downgrade", OLDER, NEWER, "--allow-downgrade"]);
    // So is another object without a signed build time…
    let out = go(&no_time, &[]);
    assert_agent_refused(&out, root, &["no signed build time", "--allow-downgrade"]);
    // …but not the recorded object itself (same digest), and not the
    // recorded build again (same build time).
    assert_loaded(&go(&same_no_time, &[]));
    assert_loaded(&go(&newer, &[]));
    assert_eq!(recorded_time(root), NEWER);
    // --allow-downgrade loads it, and the record does not go back.
    assert_loaded(&go(&older, &["--allow-downgrade"]));
    assert_eq!(recorded_time(root), NEWER);
    // A damaged record refuses everything (it never means "no record").
    std::fs::write(root.join("state/rollback.json"), b"{").unwrap();
    let out = go(&newer, &[]);
    assert_agent_refused(&out, root, &["rollback state", "unreadable"]);
}

/// The real registry (no `--trusted-key`, so it stores what a compromised
/// publisher sends too) holding `f`'s object, published through `/v1` with
/// its signature, provenance and manifest signature when `f` has them.
struct V1 {
    _registry: bpfarm_tests::Registry,
    url: String,
    _dir: tempfile::TempDir,
}

fn v1_registry(f: &Files) -> V1 {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let push = bpfarm_tests::token(&data, "ci", "push");
    let registry = bpfarm_tests::serve(&data);
    let client = bpfarm_tests::client(&registry.url, Some(push));
    let mut meta = real_object().1.clone();
    meta.digest = Digest::of_bytes(&f.object);
    meta.size = f.object.len() as u64;
    match (&f.sig, &f.intoto) {
        (Some(signature), Some(attestation)) => {
            let manifest = Digest::of_bytes(&oci::manifest(&meta));
            let key = signing_key(&keys().cosign_key);
            let manifest_signature = sign::sign_manifest(&key, &client.docker_reference(), &manifest).unwrap();
            let up =
                SignedUpload { signature: signature.clone(), attestation: attestation.clone(), manifest_signature };
            client.publish_signed(&meta, &f.object, false, &up).unwrap();
        }
        (None, None) => {
            client.publish(&meta, &f.object, false).unwrap();
        }
        _ => panic!("the registry takes a provenance only with a signature"),
    }
    V1 { url: registry.url.clone(), _registry: registry, _dir: dir }
}

/// A static layout (no `/v1`): `<file>`, `.sha256`, `.sig`, `.intoto.jsonl`.
fn static_registry(f: &Files) -> HostileServer {
    let (bytes, sig, intoto) = (f.object.clone(), f.sig.clone(), f.intoto.clone());
    HostileServer::start(move |r: &Request| {
        let prefix =
            format!("/{}/{}/{}", real_object().1.identity.version, std::env::consts::ARCH, running_object_name());
        let Some(rest) = r.path.strip_prefix(&prefix) else { return Reply::not_found() };
        let some = |b: &Option<Vec<u8>>| {
            b.as_ref()
                .map(|b| Reply::bytes(200, "application/octet-stream", b.clone()))
                .unwrap_or_else(Reply::not_found)
        };
        match rest {
            "" => Reply::bytes(200, "application/octet-stream", bytes.clone()),
            ".sha256" => Reply::bytes(
                200,
                "text/plain",
                format!("{}  {}\n", Digest::of_bytes(&bytes).hex(), running_object_name()),
            ),
            ".sig" => some(&sig),
            ".intoto.jsonl" => some(&intoto),
            _ => Reply::not_found(),
        }
    })
}

fn fetch_from(root: &Path, url: &str, key: &Path) -> Output {
    trusting(&mut agent_in(root, "never"), key).args(["--registry", url, "fetch"]).output().unwrap()
}

#[test]
fn registries_serve_signed_objects_and_the_install_keeps_the_signature() {
    let (v1, statik) = (v1_registry(&signed(NEWER)), static_registry(&signed(NEWER)));
    for (what, url) in [("/v1", &v1.url), ("static", &statik.url)] {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let out = fetch_from(root, url, &keys().cosign_pub);
        let text = show(&out);
        assert_eq!(out.status.code(), Some(0), "{what}: {text}");
        assert!(text.contains("signature verified") && text.contains("installed"), "{what}: {text}");
        let install = root.join("install");
        assert_eq!(std::fs::read(install.join(running_object_name())).unwrap(), real_object().0);
        assert_eq!(std::fs::read(install.join(format!("{}.sig", running_object_name()))).unwrap(), object_sig());
        assert!(install.join(format!("{}.intoto.jsonl", running_object_name())).is_file(), "{what}");
        assert_eq!(recorded_time(root), NEWER, "{what}");
        // What was installed passes on its own (offline), signature and all.
        let out = trusting(&mut agent_in(root, "never"), &keys().cosign_pub).arg("locate").output().unwrap();
        assert!(show(&out).contains("install path") && show(&out).contains("signature verified"), "{}", show(&out));
    }
    // Tampered: the registry's signature is of another object, by another
    // key, or missing; each refused with the registry named, nothing
    // installed or recorded.
    let good = signed(NEWER);
    let cases = [
        (
            Files { sig: Some(cosign_sign_blob(&keys().cosign_key, b"another object")), ..good.clone() },
            "its signature does not verify",
        ),
        (Files { sig: Some(other_key_sig(&good.object)), ..good.clone() }, "does not verify with any trusted key"),
        (Files { sig: None, intoto: None, ..good.clone() }, "unsigned"),
    ];
    for (f, why) in cases {
        let (v1, statik) = (v1_registry(&f), static_registry(&f));
        for url in [&v1.url, &statik.url] {
            let tmp = tempfile::tempdir().unwrap();
            let out = fetch_from(tmp.path(), url, &keys().cosign_pub);
            assert_agent_refused(&out, tmp.path(), &[&format!("registry {url}"), why]);
            assert!(!tmp.path().join("state").exists());
        }
    }
}

#[test]
fn fetch_replaces_the_installed_object_only_with_a_newer_signed_one() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // Installed: signed, built at OLDER (and recorded).
    let older = v1_registry(&signed(OLDER));
    assert_eq!(fetch_from(root, &older.url, &keys().cosign_pub).status.code(), Some(0));
    assert_eq!(recorded_time(root), OLDER);
    // The registry now has a newer build: fetch checks it although the
    // install path holds one, and replaces it.
    let newer = v1_registry(&signed(NEWER));
    let out = fetch_from(root, &newer.url, &keys().cosign_pub);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(show(&out).contains("installed"), "{}", show(&out));
    assert_eq!(recorded_time(root), NEWER);
    let intoto = std::fs::read(root.join("install").join(format!("{}.intoto.jsonl", running_object_name()))).unwrap();
    assert_eq!(intoto, signed(NEWER).intoto.unwrap());
    // A registry with the older one again: refused as a downgrade, the
    // installed newer one is kept (success: the host has what it needs).
    let out = fetch_from(root, &older.url, &keys().cosign_pub);
    let text = show(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("a downgrade") && text.contains("keeping it"), "{text}");
    assert_eq!(
        std::fs::read(root.join("install").join(format!("{}.intoto.jsonl", running_object_name()))).unwrap(),
        intoto
    );
}

#[test]
fn oci_objects_need_the_cosign_signature_of_their_manifest() {
    let reg = distribution();
    let (bytes, meta) = real_object();
    let transport = bpfarm_object::http::Transport::new(Default::default()).unwrap();
    let target = OciTarget::parse(&format!("oci://{}/signed", reg.addr)).unwrap();
    let registry = OciRegistry::new(target, credentials(&reg.addr, None, None), &transport).unwrap();
    registry.publish(meta, bytes).unwrap();
    let url = format!("oci://{}/signed", reg.addr);

    // Unsigned: refused under --verify-key, reported as such without.
    let tmp = tempfile::tempdir().unwrap();
    let out = fetch_from(tmp.path(), &url, &keys().cosign_pub);
    assert_agent_refused(&out, tmp.path(), &[&format!("registry {url}"), "unsigned (no cosign signature tag sha256-"]);

    // Signed by another key: refused.
    let manifest = oci::manifest(meta);
    let md = Digest::of_bytes(&manifest);
    let subject = Subject::manifest(&manifest);
    let by = |key: &SigningKey| sign::sign_manifest(key, &registry.docker_reference(), &md).unwrap();
    let other = SigningKey::load(&keys().other_key).unwrap();
    registry.push_artifact(&sign::signature_artifact(&subject, &[by(&other)])).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = fetch_from(tmp.path(), &url, &keys().cosign_pub);
    assert_agent_refused(&out, tmp.path(), &["its cosign signature does not verify", "any trusted key"]);

    // Signed by the trusted key, with its attestation: accepted, recorded.
    let key = signing_key(&keys().cosign_key);
    registry.push_artifact(&sign::signature_artifact(&subject, &[by(&key)])).unwrap();
    let mut at = meta.clone();
    at.built_at = NEWER.into();
    let prov = sign::sign_provenance(&key, &at, &BuilderInfo::bpfarm("0.1.0-test")).unwrap();
    registry.push_artifact(&sign::attestation_artifact(&subject, &prov)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = fetch_from(tmp.path(), &url, &keys().cosign_pub);
    let text = show(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("signature verified (the cosign signature of its manifest"), "{text}");
    assert_eq!(std::fs::read(tmp.path().join("install").join(running_object_name())).unwrap(), *bytes);
    assert_eq!(recorded_time(tmp.path()), NEWER);
}
