//! The producer side of signing (issue #11), end to end with the real
//! binaries and the real cosign 2.5, offline: the builder's `--sign-key`
//! (the files beside each object in `--out`), publishing with signatures to
//! bpfarm's `/v1` (the registry's `/v1` fields, static layout, export tree,
//! fsck and `/v2` cosign tags) and to distribution (the `.sig`/`.att` tags),
//! and the registry's `--trusted-key` policy against hostile publishes.
//!
//! cosign runs with no network: `verify-blob` in a fresh network namespace
//! (`unshare -rn`), the registry commands with every proxy pointed at a
//! closed port so only loopback is reachable, and an empty `HOME`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bpfarm_object::client::{ClientError, SignedUpload};
use bpfarm_object::oci_client::{OciRegistry, OciTarget};
use bpfarm_object::sign::{self, BuilderInfo, SigningKey, Subject, TrustedKeys};
use bpfarm_object::{Arch, Digest, ObjectMetadata, oci};
use bpfarm_tests::{
    beside, bin, built_object, cosign, distribution, openssl_key, registry_snapshot, run_ok, running_kernel_build,
    sample_metadata, serve_with, token,
};
use serde_json::Value;

/// `cosign verify-blob` of `file` and its `.sig` beside it, with no network.
fn verify_blob(home: &Path, public: &Path, file: &Path) -> Output {
    cosign::verify_blob(home, public, &beside(file, ".sig"), file)
}

/// `bpfarm-builder build --running-kernel` into `dir/out` (cache shared per
/// test binary, so the object compiles once), with `args` added.
fn build(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("signed-publish-cache");
    let mut c = running_kernel_build(&cache, &dir.join("out"));
    c.args(args).envs(env.iter().copied());
    c.output().expect("running bpfarm-builder")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn the_builder_signs_what_it_writes_and_checks_the_key_before_building() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = openssl_key(dir.path(), "signer");
    let out = build(dir.path(), &["--sign-key", key.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let (object, meta) = built_object(&dir.path().join("out"));
    let sig = std::fs::read(beside(&object, ".sig")).unwrap();
    let jsonl = std::fs::read(beside(&object, ".intoto.jsonl")).unwrap();

    // cosign checks the blob signature offline; bpfarm checks both files.
    let ok = verify_blob(dir.path(), &public, &object);
    assert!(ok.status.success(), "cosign verify-blob: {}", text(&ok));
    let keys = TrustedKeys::load(std::slice::from_ref(&public)).unwrap();
    let bytes = std::fs::read(&object).unwrap();
    let v = sign::verify_object(&keys, &meta.identity, &bytes, &sig, Some(&jsonl)).unwrap();
    let p = v.provenance.unwrap();
    assert_eq!(p.built_at_text, meta.built_at);
    // The provenance names the builder's version, every source with its
    // digest, the compiler and the flags, as the row's metadata has them.
    let st: Value = serde_json::from_slice(&p.statement).unwrap();
    let pred = &st["predicate"];
    assert_eq!(pred["runDetails"]["builder"]["version"]["bpfarm-builder"], env!("CARGO_PKG_VERSION"), "{pred}");
    let deps = pred["buildDefinition"]["resolvedDependencies"].as_array().unwrap();
    for s in &meta.sources {
        assert!(deps.iter().any(|d| d["digest"]["sha256"] == s.digest.hex()), "{} missing from {pred}", s.name);
    }
    assert_eq!(pred["buildDefinition"]["internalParameters"]["compiler"]["clang"], meta.compiler.clang.as_str());
    assert_eq!(serde_json::to_value(&meta.flags).unwrap(), pred["buildDefinition"]["internalParameters"]["flags"]);
    // The key itself appears in no output.
    let pem = std::fs::read_to_string(&key).unwrap();
    let secret_line = pem.lines().nth(1).unwrap();
    assert!(!text(&out).contains(secret_line));

    // cosign's encrypted key, its password from COSIGN_PASSWORD.
    let cdir = tempfile::tempdir().unwrap();
    let mut keygen = Command::new("unshare");
    keygen.args(["-rn", "cosign", "generate-key-pair"]).current_dir(cdir.path());
    run_ok(cosign::env(&mut keygen, cdir.path()));
    let ckey = cdir.path().join("cosign.key");
    let out = build(cdir.path(), &["--sign-key", ckey.to_str().unwrap()], &[("COSIGN_PASSWORD", cosign::PASSWORD)]);
    assert!(out.status.success(), "{}", text(&out));
    let (cobject, _) = built_object(&cdir.path().join("out"));
    let ok = verify_blob(cdir.path(), &cdir.path().join("cosign.pub"), &cobject);
    assert!(ok.status.success(), "cosign verify-blob: {}", text(&ok));

    // A wrong password, no password, a junk key (from the environment too):
    // exit 2 with the reason, and nothing built or written.
    let junk = cdir.path().join("junk.pem");
    std::fs::write(&junk, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
    for (args, env, says) in [
        (vec!["--sign-key", ckey.to_str().unwrap()], vec![("COSIGN_PASSWORD", "wrong")], "wrong password"),
        (vec!["--sign-key", ckey.to_str().unwrap()], vec![], "COSIGN_PASSWORD"),
        (vec![], vec![("BPFARM_SIGN_KEY", junk.to_str().unwrap())], "junk.pem"),
        (vec!["--sign-key", "/nonexistent/key.pem"], vec![], "reading it"),
    ] {
        let fresh = tempfile::tempdir().unwrap();
        let out = build(fresh.path(), &args, &env);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("--sign-key") && said.contains(says), "{said}");
        assert!(!fresh.path().join("out").exists(), "something was written for {args:?}");
    }

    // The same --out rebuilt without a key: the object's bytes are
    // unchanged, so its signature is still valid and stays. (Changed bytes
    // drop both files first: `output::write_out`.)
    let again = build(dir.path(), &[], &[]);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(std::fs::read(beside(&object, ".sig")).unwrap(), sig);
}

/// A registry on an ephemeral port with a push token; extra `serve` args.
struct Bpfarm {
    reg: bpfarm_tests::Registry,
    data: PathBuf,
    push: String,
    _dir: tempfile::TempDir,
}

fn bpfarm(extra: &[&str]) -> Bpfarm {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let push = token(&data, "ci", "push");
    let mut args = vec!["--listen", "127.0.0.1:0", "--data", data.to_str().unwrap()];
    args.extend_from_slice(extra);
    let reg = serve_with(&args);
    Bpfarm { reg, data, push, _dir: dir }
}

impl Bpfarm {
    fn addr(&self) -> &str {
        self.reg.url.strip_prefix("http://").unwrap()
    }

    fn get(&self, path: &str) -> reqwest::blocking::Response {
        reqwest::blocking::get(format!("{}{path}", self.reg.url)).unwrap()
    }

    /// Everything stored: the index's dump and the blob files.
    fn snapshot(&self) -> (String, Vec<(String, String)>) {
        registry_snapshot(&self.data)
    }

    fn oci(&self) -> OciRegistry {
        let transport = bpfarm_object::http::Transport::new(Default::default()).unwrap();
        let auth = bpfarm_object::oci_client::credentials(self.addr(), None, Some(&self.push));
        OciRegistry::new(OciTarget::parse(&format!("oci://{}/bpfarm", self.addr())).unwrap(), auth, &transport).unwrap()
    }
}

#[test]
fn a_signed_publish_verifies_with_cosign_in_every_place_bpfarm_serves_it() {
    let home = tempfile::tempdir().unwrap();
    let (key, public) = openssl_key(home.path(), "signer");
    let (_, stranger) = openssl_key(home.path(), "stranger");
    // The registry trusts the key, so this is also the policy's happy path.
    let r = bpfarm(&["--trusted-key", public.to_str().unwrap()]);
    let out =
        build(home.path(), &["--sign-key", key.to_str().unwrap(), "--publish", &r.reg.url, "--token", &r.push], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("1 published"), "{}", text(&out));
    let (object, meta) = built_object(&home.path().join("out"));
    let sig = std::fs::read(beside(&object, ".sig")).unwrap();
    let jsonl = std::fs::read(beside(&object, ".intoto.jsonl")).unwrap();

    // /v1 names both, and serves their bytes.
    let id = &meta.identity;
    let lookup: Value =
        r.get(&format!("/v1/objects/{}/{}/{}", id.arch.uname(), id.version, id.kernel_release)).json().unwrap();
    assert_eq!(lookup["signature"]["digest"], Digest::of_bytes(&sig).as_str(), "{lookup}");
    assert_eq!(lookup["signature"]["size"], sig.len());
    assert_eq!(lookup["attestation"]["digest"], Digest::of_bytes(&jsonl).as_str());
    let listed: Value = r.get("/v1/objects").json().unwrap();
    assert_eq!(listed["objects"][0]["signature"], lookup["signature"]);
    let blob = r.get(&format!("/v1/blobs/{}", Digest::of_bytes(&sig))).bytes().unwrap();
    assert_eq!(&blob[..], &sig[..]);

    // The static layout serves them beside the object; cosign verifies the
    // downloaded copies.
    let fetched = home.path().join("static");
    std::fs::create_dir_all(&fetched).unwrap();
    let base = format!("/{}/{}/{}", id.version, id.arch.uname(), meta.file_name);
    for suffix in ["", ".sig", ".intoto.jsonl"] {
        let resp = r.get(&format!("{base}{suffix}"));
        assert_eq!(resp.status().as_u16(), 200, "{base}{suffix}");
        std::fs::write(fetched.join(format!("{}{suffix}", meta.file_name)), resp.bytes().unwrap()).unwrap();
    }
    assert_eq!(std::fs::read(fetched.join(format!("{}.intoto.jsonl", meta.file_name))).unwrap(), jsonl);
    let ok = verify_blob(home.path(), &public, &fetched.join(&meta.file_name));
    assert!(ok.status.success(), "cosign verify-blob (static layout): {}", text(&ok));
    let bad = verify_blob(home.path(), &stranger, &fetched.join(&meta.file_name));
    assert!(!bad.status.success(), "cosign verify-blob accepted another key");

    // /v2: the manifest the builder signed is the one the registry made,
    // and cosign finds its .sig and .att tags there.
    // (The builder signs `Digest::of_bytes(&oci::manifest(meta))`; the
    // registry's index names the manifest it wrote with the same function.)
    let manifest = Digest::of_bytes(&oci::manifest(&meta));
    let tag = oci::tag(&id.kernel_release, &id.version, false);
    let index: Value = reqwest::blocking::Client::new()
        .get(format!("{}/v2/bpfarm/tracee-bpf/manifests/{tag}", r.reg.url))
        .header("Accept", oci::INDEX_MEDIA_TYPE)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(index["manifests"][0]["digest"], manifest.as_str(), "{index}");
    let image = format!("{}/bpfarm/tracee-bpf@{manifest}", r.addr());
    let key_arg = public.to_str().unwrap();
    let v = cosign::on_registry(home.path(), &["verify", "--key", key_arg, "--insecure-ignore-tlog"], &image);
    assert!(v.status.success(), "cosign verify: {}", text(&v));
    let v = cosign::on_registry(
        home.path(),
        &["verify-attestation", "--key", key_arg, "--insecure-ignore-tlog", "--type", "slsaprovenance"],
        &image,
    );
    assert!(v.status.success(), "cosign verify-attestation: {}", text(&v));
    let stranger_arg = stranger.to_str().unwrap();
    let v = cosign::on_registry(home.path(), &["verify", "--key", stranger_arg, "--insecure-ignore-tlog"], &image);
    assert!(!v.status.success(), "cosign verify accepted another key");

    // An export tree carries both files; cosign verifies there too.
    let tree = home.path().join("export");
    run_ok(Command::new(bin("bpfarm-registry")).arg("export").arg("--data").arg(&r.data).arg("--out").arg(&tree));
    let exported = tree.join(&id.version).join(id.arch.uname()).join(&meta.file_name);
    assert_eq!(std::fs::read(beside(&exported, ".intoto.jsonl")).unwrap(), jsonl);
    let ok = verify_blob(home.path(), &public, &exported);
    assert!(ok.status.success(), "cosign verify-blob (export): {}", text(&ok));

    // fsck finds everything in place.
    let fsck = Command::new(bin("bpfarm-registry")).arg("fsck").arg("--data").arg(&r.data).output().unwrap();
    assert!(fsck.status.success(), "{}", text(&fsck));

    // Publishing the same object and signatures again is a skip.
    let again =
        build(home.path(), &["--sign-key", key.to_str().unwrap(), "--publish", &r.reg.url, "--token", &r.push], &[]);
    assert!(text(&again).contains("1 skipped"), "{}", text(&again));
}

/// A small object of `bytes` and what a signing builder sends with it.
fn signed(key: &SigningKey, reference: &str, bytes: &[u8]) -> (ObjectMetadata, SignedUpload) {
    let mut meta = sample_metadata("6.1.0-56-amd64", Arch::X86_64, bytes);
    meta.built_at = "2026-03-01T12:00:00Z".into();
    let s = sign::sign_object(key, &meta, bytes, &BuilderInfo::bpfarm("test")).unwrap();
    let manifest_signature = sign::sign_manifest(key, reference, &Digest::of_bytes(&oci::manifest(&meta))).unwrap();
    let upload =
        SignedUpload { signature: s.signature.into_bytes(), attestation: s.provenance.to_jsonl(), manifest_signature };
    (meta, upload)
}

fn refused(e: &ClientError, status: u16, says: &str) {
    assert_eq!(e.status(), Some(status), "{e}");
    assert!(e.to_string().contains(says), "{e}");
}

#[test]
fn a_trusted_key_registry_refuses_every_publish_it_cannot_verify_and_stores_nothing() {
    let home = tempfile::tempdir().unwrap();
    let (key_path, public) = openssl_key(home.path(), "signer");
    let (stranger_path, _) = openssl_key(home.path(), "stranger");
    let key = SigningKey::load(&key_path).unwrap();
    let stranger = SigningKey::load(&stranger_path).unwrap();
    let r = bpfarm(&["--trusted-key", public.to_str().unwrap()]);
    let client = bpfarm_tests::client(&r.reg.url, Some(r.push.clone()));
    let reference = client.docker_reference();
    let bytes = b"\x7fELF a signed object".to_vec();
    let (meta, good) = signed(&key, &reference, &bytes);

    // Each attack: the blobs it uploads may land (content-addressed, named
    // by no row), the publish is refused, and the index and the blob
    // store are as they were before the publish.
    let attempt = |meta: &ObjectMetadata, obj: &[u8], up: Option<&SignedUpload>, status: u16, says: &str| {
        // Upload everything first, so the refused publish itself is what
        // the snapshot compares.
        for data in [Some(obj.to_vec()), up.map(|u| u.signature.clone()), up.map(|u| u.attestation.clone())]
            .into_iter()
            .flatten()
        {
            let resp = reqwest::blocking::Client::new()
                .put(format!("{}/v1/blobs/{}", r.reg.url, Digest::of_bytes(&data)))
                .bearer_auth(&r.push)
                .body(data)
                .send()
                .unwrap();
            assert!(resp.status().is_success(), "{}", resp.status());
        }
        let before = r.snapshot();
        let e = match up {
            Some(up) => client.publish_signed(meta, obj, false, up).unwrap_err(),
            None => client.publish(meta, obj, false).unwrap_err(),
        };
        refused(&e, status, says);
        assert_eq!(r.snapshot(), before, "a refused publish changed the store");
    };

    // Unsigned.
    attempt(&meta, &bytes, None, 403, "carries no signature");
    // Signed by a key the registry does not trust.
    let (_, foreign) = signed(&stranger, &reference, &bytes);
    attempt(&meta, &bytes, Some(&foreign), 403, "does not verify with any trusted key");
    // The signature (and provenance) of another object.
    let other_bytes = b"\x7fELF another object".to_vec();
    let (_, other) = signed(&key, &reference, &other_bytes);
    attempt(&meta, &bytes, Some(&other), 403, "signature is refused");
    // A flipped object byte: the bytes published are not the ones signed.
    let mut flipped = bytes.clone();
    flipped[5] ^= 1;
    let flipped_meta = sample_metadata("6.1.0-56-amd64", Arch::X86_64, &flipped);
    attempt(&flipped_meta, &flipped, Some(&good), 403, "signature is refused");
    // A flipped signature byte.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut der = b64.decode(&good.signature).unwrap();
    let last = der.len() - 1;
    der[last] ^= 1;
    let bad_sig = SignedUpload { signature: b64.encode(&der).into_bytes(), ..good.clone() };
    let e = {
        let before = r.snapshot();
        let e = client.publish_signed(&meta, &bytes, false, &bad_sig).unwrap_err();
        assert_eq!(r.snapshot().0, before.0, "a refused publish changed the index");
        e
    };
    assert!(matches!(e.status(), Some(403) | Some(400)), "{e}");
    assert!(e.to_string().contains("signature"), "{e}");
    // A valid object signature with another object's manifest signature.
    let mixed = SignedUpload { manifest_signature: other.manifest_signature.clone(), ..good.clone() };
    attempt(&meta, &bytes, Some(&mixed), 400, "manifest signature is malformed");

    // The real thing passes, and /v1 shows it signed.
    assert_eq!(
        client.publish_signed(&meta, &bytes, false, &good).unwrap(),
        bpfarm_object::client::Published::Published
    );
    let lookup: Value = r.get("/v1/objects/x86_64/v0.1.0/6.1.0-56-amd64").json().unwrap();
    assert_eq!(lookup["signature"]["digest"], Digest::of_bytes(&good.signature).as_str());

    // Through /v2: a bpfarm artifact with no cosign signature under its
    // .sig tag, or one by a foreign key, is refused; pushed after a valid
    // signature, it is taken.
    let oci = r.oci();
    let id2 = bpfarm_object::Identity::new("6.1.0-57-amd64", Arch::X86_64, "v0.1.0").unwrap();
    let bytes2 = b"\x7fELF a /v2 object".to_vec();
    let meta2 =
        ObjectMetadata::unattested(id2, Digest::of_bytes(&bytes2), bytes2.len() as u64, bpfarm_object::Origin::OciPush);
    let manifest2 = oci::manifest(&meta2);
    let subject = Subject::manifest(&manifest2);
    // The manifest itself, as a client PUTs it: status and message.
    let put_manifest = || {
        let resp = reqwest::blocking::Client::new()
            .put(format!("{}/v2/bpfarm/tracee-bpf/manifests/{}", r.reg.url, subject.digest))
            .bearer_auth(&r.push)
            .header("Content-Type", oci::MANIFEST_MEDIA_TYPE)
            .body(manifest2.clone())
            .send()
            .unwrap();
        (resp.status().as_u16(), resp.text().unwrap())
    };
    assert!(oci.publish(&meta2, &bytes2).is_err(), "an unsigned /v2 artifact was taken");
    let before = r.snapshot();
    let (status, body) = put_manifest();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("DENIED") && body.contains(&sign::signature_tag(&subject.digest)), "{body}");
    assert_eq!(r.snapshot(), before, "a refused /v2 push changed the store");
    let foreign_sig = sign::sign_manifest(&stranger, &oci.docker_reference(), &subject.digest).unwrap();
    oci.push_artifact(&sign::signature_artifact(&subject, &[foreign_sig])).unwrap();
    let before = r.snapshot();
    let (status, body) = put_manifest();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("does not verify with any trusted key"), "{body}");
    assert_eq!(r.snapshot(), before, "a refused /v2 push changed the store");
    let objects: Value = r.get("/v1/objects").json().unwrap();
    assert_eq!(objects["objects"].as_array().unwrap().len(), 1, "a refused /v2 push made an object current");
    let good_sig = sign::sign_manifest(&key, &oci.docker_reference(), &subject.digest).unwrap();
    oci.push_artifact(&sign::signature_artifact(&subject, &[good_sig])).unwrap();
    oci.publish(&meta2, &bytes2).unwrap();
    let objects: Value = r.get("/v1/objects").json().unwrap();
    assert_eq!(objects["objects"].as_array().unwrap().len(), 2);
}

#[test]
fn replacing_an_object_leaves_no_signature_of_the_old_one_attached() {
    let home = tempfile::tempdir().unwrap();
    let (key_path, public) = openssl_key(home.path(), "signer");
    let key = SigningKey::load(&key_path).unwrap();
    let r = bpfarm(&[]);
    let client = bpfarm_tests::client(&r.reg.url, Some(r.push.clone()));
    let bytes = b"\x7fELF the first object".to_vec();
    let (meta, up) = signed(&key, &client.docker_reference(), &bytes);
    client.publish_signed(&meta, &bytes, false, &up).unwrap();
    let path = "/v1/objects/x86_64/v0.1.0/6.1.0-56-amd64";
    let file = format!("/v0.1.0/x86_64/{}", meta.file_name);
    assert_eq!(r.get(&format!("{file}.sig")).status().as_u16(), 200);
    let tree = home.path().join("export");
    let export = || {
        run_ok(Command::new(bin("bpfarm-registry")).arg("export").arg("--data").arg(&r.data).arg("--out").arg(&tree));
    };
    export();
    let exported = tree.join("v0.1.0/x86_64").join(&meta.file_name);
    assert!(verify_blob(home.path(), &public, &exported).status.success());
    let old_manifest = Digest::of_bytes(&oci::manifest(&meta));

    // An unsigned replacement: no signature in /v1, 404 in the static
    // layout, none left in the export tree; the old manifest keeps its own.
    let new_bytes = b"\x7fELF the replacement".to_vec();
    let new_meta = sample_metadata("6.1.0-56-amd64", Arch::X86_64, &new_bytes);
    client.publish(&new_meta, &new_bytes, true).unwrap();
    let lookup: Value = r.get(path).json().unwrap();
    assert_eq!(lookup["digest"], new_meta.digest.as_str());
    assert!(lookup.get("signature").is_none() && lookup.get("attestation").is_none(), "{lookup}");
    for suffix in [".sig", ".intoto.jsonl"] {
        assert_eq!(r.get(&format!("{file}{suffix}")).status().as_u16(), 404, "{suffix}");
    }
    export();
    assert!(!beside(&exported, ".sig").exists() && !beside(&exported, ".intoto.jsonl").exists());
    let new_manifest = Digest::of_bytes(&oci::manifest(&new_meta));
    let tag = |d: &Digest| r.get(&format!("/v2/bpfarm/tracee-bpf/manifests/{}", sign::signature_tag(d))).status();
    assert_eq!(tag(&new_manifest).as_u16(), 404);
    assert_eq!(tag(&old_manifest).as_u16(), 200);

    // A signed replacement carries its own signature, not the first one's.
    let third = b"\x7fELF the third object".to_vec();
    let (third_meta, third_up) = signed(&key, &client.docker_reference(), &third);
    client.publish_signed(&third_meta, &third, true, &third_up).unwrap();
    let sig = r.get(&format!("{file}.sig")).bytes().unwrap();
    assert_eq!(&sig[..], &third_up.signature[..]);
    assert_ne!(third_up.signature, up.signature);

    // Signatures sent for an object the registry already holds attach to it.
    let fourth = b"\x7fELF unsigned at first".to_vec();
    let fourth_meta = sample_metadata("6.1.0-58-amd64", Arch::X86_64, &fourth);
    client.publish(&fourth_meta, &fourth, false).unwrap();
    let (_, fourth_up) = {
        let mut m = fourth_meta.clone();
        m.built_at = "2026-03-01T12:00:00Z".into();
        let s = sign::sign_object(&key, &m, &fourth, &BuilderInfo::bpfarm("test")).unwrap();
        let ms = sign::sign_manifest(&key, &client.docker_reference(), &Digest::of_bytes(&oci::manifest(&m))).unwrap();
        (
            m,
            SignedUpload {
                signature: s.signature.into_bytes(),
                attestation: s.provenance.to_jsonl(),
                manifest_signature: ms,
            },
        )
    };
    assert_eq!(
        client.publish_signed(&fourth_meta, &fourth, false, &fourth_up).unwrap(),
        bpfarm_object::client::Published::Published
    );
    let lookup: Value = r.get("/v1/objects/x86_64/v0.1.0/6.1.0-58-amd64").json().unwrap();
    assert_eq!(lookup["signature"]["digest"], Digest::of_bytes(&fourth_up.signature).as_str());
}

#[test]
fn publishing_to_an_oci_registry_pushes_the_cosign_tags() {
    let home = tempfile::tempdir().unwrap();
    let (key, public) = openssl_key(home.path(), "signer");
    let (_, stranger) = openssl_key(home.path(), "stranger");
    let dist = distribution();
    let target = format!("oci://{}/ns", dist.addr);
    let out = build(home.path(), &["--sign-key", key.to_str().unwrap(), "--publish", &target, "--insecure"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let (_, meta) = built_object(&home.path().join("out"));
    let manifest = Digest::of_bytes(&oci::manifest(&meta));
    let image = format!("{}/ns/tracee-bpf@{manifest}", dist.addr);
    let key_arg = public.to_str().unwrap();
    let v = cosign::on_registry(home.path(), &["verify", "--key", key_arg, "--insecure-ignore-tlog"], &image);
    assert!(v.status.success(), "cosign verify: {}", text(&v));
    for predicate in ["slsaprovenance", "slsaprovenance1"] {
        let v = cosign::on_registry(
            home.path(),
            &["verify-attestation", "--key", key_arg, "--insecure-ignore-tlog", "--type", predicate],
            &image,
        );
        assert!(v.status.success(), "cosign verify-attestation --type {predicate}: {}", text(&v));
    }
    let stranger_arg = stranger.to_str().unwrap();
    let v = cosign::on_registry(home.path(), &["verify", "--key", stranger_arg, "--insecure-ignore-tlog"], &image);
    assert!(!v.status.success(), "cosign verify accepted another key");
    let v = cosign::on_registry(
        home.path(),
        &["verify-attestation", "--key", stranger_arg, "--insecure-ignore-tlog", "--type", "slsaprovenance"],
        &image,
    );
    assert!(!v.status.success(), "cosign verify-attestation accepted another key");
    // The .sig and .intoto.jsonl files ride along as the .bpfarm carrier,
    // byte for byte what the builder wrote beside the object.
    let (object, _) = built_object(&home.path().join("out"));
    let carrier = reqwest::blocking::Client::new()
        .get(format!("http://{}/v2/ns/tracee-bpf/manifests/{}", dist.addr, sign::files_tag(&manifest)))
        .header("Accept", oci::MANIFEST_MEDIA_TYPE)
        .send()
        .unwrap();
    assert_eq!(carrier.status().as_u16(), 200);
    let files = sign::read_files_artifact(&carrier.bytes().unwrap()).unwrap();
    assert_eq!(files.subject, manifest);
    assert_eq!(files.signature.digest, Digest::of_bytes(&std::fs::read(beside(&object, ".sig")).unwrap()));
    let jsonl = std::fs::read(beside(&object, ".intoto.jsonl")).unwrap();
    assert_eq!(files.attestation.map(|a| a.digest), Some(Digest::of_bytes(&jsonl)));
}
