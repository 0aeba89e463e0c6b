//! Signatures across the air gap (issues #11 and #13), with real
//! registries on loopback and real keys: `mirror` and `import` carry each
//! object's `.sig` and `.intoto.jsonl` and obey `--trusted-key`; a lying
//! upstream that strips or swaps signatures is refused with nothing
//! stored; a bundle carries the files (the `sha256-<hex>.bpfarm` tag) so an
//! imported registry serves them again byte for byte, checked by the real
//! cosign offline.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bpfarm_object::client::SignedUpload;
use bpfarm_object::oci_client::{OciRegistry, OciTarget, credentials};
use bpfarm_object::sign::{self, BuilderInfo, SigningKey, cosign};
use bpfarm_object::{Arch, Digest, ObjectMetadata, oci};
use bpfarm_tests::hostile::{HostileServer, Reply};
use bpfarm_tests::{beside, bin, client, openssl_key, registry_snapshot, sample_metadata, serve, show, token};
use serde_json::Value;

fn registry_cmd(args: &[&str]) -> Output {
    Command::new(bin("bpfarm-registry")).args(args).env_remove("BPFARM_REGISTRY_TRUSTED_KEYS").output().unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `cosign verify-blob` of `file` and its `.sig` beside it, with no network.
fn cosign_verify_blob(home: &Path, public: &Path, file: &Path) -> Output {
    bpfarm_tests::cosign::verify_blob(home, public, &beside(file, ".sig"), file)
}

/// Two P-256 keys made under `dir`: the signer (with its public key's
/// file) and a stranger.
fn signer_and_stranger(dir: &Path) -> (SigningKey, PathBuf, SigningKey) {
    let (key, public) = openssl_key(dir, "signer");
    let (stranger, _) = openssl_key(dir, "stranger");
    (SigningKey::load(&key).unwrap(), public, SigningKey::load(&stranger).unwrap())
}

fn object(release: &str) -> Vec<u8> {
    format!("\x7fELF stand-in object for {release}").into_bytes()
}

/// An object's metadata and what a signing builder sends with it.
fn signed(key: &SigningKey, reference: &str, release: &str) -> (ObjectMetadata, Vec<u8>, SignedUpload) {
    let bytes = object(release);
    let meta = sample_metadata(release, Arch::X86_64, &bytes);
    let s = sign::sign_object(key, &meta, &bytes, &BuilderInfo::bpfarm("test")).unwrap();
    let manifest_signature = sign::sign_manifest(key, reference, &Digest::of_bytes(&oci::manifest(&meta))).unwrap();
    let up =
        SignedUpload { signature: s.signature.into_bytes(), attestation: s.provenance.to_jsonl(), manifest_signature };
    (meta, bytes, up)
}

fn stored(data: &Path, d: &Digest) -> bool {
    data.join("blobs/sha256").join(&d.hex()[..2]).join(d.hex()).exists()
}

/// The `/v1` answer for `release` (x86_64, v0.1.0), if any.
fn lookup(url: &str, release: &str) -> Option<Value> {
    let r = reqwest::blocking::get(format!("{url}/v1/objects/x86_64/v0.1.0/{release}")).unwrap();
    (r.status() == 200).then(|| r.json().unwrap())
}

const SIGNED: &str = "6.1.0-56-amd64";
const UNSIGNED: &str = "6.1.0-57-amd64";
const FOREIGN: &str = "6.1.0-58-amd64";

/// A proxy in front of `upstream` whose `/v1/objects` list is rewritten by
/// `lie` (the rest is passed through).
fn lying_proxy(upstream: &str, lie: impl Fn(&mut Vec<Value>) + Send + Sync + 'static) -> HostileServer {
    let upstream = upstream.to_owned();
    HostileServer::start(move |req| {
        let r = reqwest::blocking::get(format!("{upstream}{}", req.path)).unwrap();
        let status = r.status().as_u16();
        let body = r.bytes().unwrap().to_vec();
        if req.path.starts_with("/v1/objects?") {
            let mut page: Value = serde_json::from_slice(&body).unwrap();
            let mut entries = page["objects"].as_array().unwrap().clone();
            lie(&mut entries);
            page["objects"] = Value::Array(entries);
            return Reply::json(status, &page);
        }
        Reply::bytes(status, "application/octet-stream", body)
    })
}

#[test]
fn mirror_carries_signatures_and_refuses_what_the_trust_policy_or_a_lying_upstream_would_lose() {
    let home = tempfile::tempdir().unwrap();
    let (key, public, stranger) = signer_and_stranger(home.path());

    // Upstream (no policy of its own): one object signed by the trusted
    // key, one unsigned, one signed by a stranger.
    let data_up = home.path().join("up");
    let push = token(&data_up, "ci", "push");
    let up = serve(&data_up);
    let c = client(&up.url, Some(push.clone()));
    let (meta_s, bytes_s, up_s) = signed(&key, &c.docker_reference(), SIGNED);
    c.publish_signed(&meta_s, &bytes_s, false, &up_s).unwrap();
    let bytes_u = object(UNSIGNED);
    let meta_u = sample_metadata(UNSIGNED, Arch::X86_64, &bytes_u);
    c.publish(&meta_u, &bytes_u, false).unwrap();
    let (meta_f, bytes_f, up_f) = signed(&stranger, &c.docker_reference(), FOREIGN);
    c.publish_signed(&meta_f, &bytes_f, false, &up_f).unwrap();
    let upstream_view = lookup(&up.url, SIGNED).unwrap();

    // The DMZ trusts the key: the signed object comes with its files, the
    // other two are refused by name, nothing of them is stored, exit 1.
    let dmz = home.path().join("dmz");
    let mirror = |from: &str, keys: bool| {
        let mut args = vec!["mirror", "--data", p(&dmz), "--from", from];
        if keys {
            args.extend(["--trusted-key", p(&public)]);
        }
        registry_cmd(&args)
    };
    let o = mirror(&up.url, true);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("refused {UNSIGNED} (x86_64) v0.1.0: {} carries no signature", meta_u.file_name)),
        "{}",
        show(&o)
    );
    assert!(
        err.contains(&format!("refused {FOREIGN} (x86_64) v0.1.0: the signature is refused"))
            && err.contains("does not verify with any trusted key"),
        "{}",
        show(&o)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("1 objects published, 2 refused"), "{}", show(&o));
    for d in [&meta_u.digest, &meta_f.digest, &Digest::of_bytes(&up_f.signature)] {
        assert!(!stored(&dmz, d), "{d} of a refused object was stored");
    }
    // Resumable: a rerun refuses the same two again and changes nothing.
    let before = registry_snapshot(&dmz);
    let o = mirror(&up.url, true);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("1 already here, 0 objects published, 2 refused"),
        "{}",
        show(&o)
    );
    assert_eq!(registry_snapshot(&dmz), before, "a rerun changed the mirror");
    {
        let served = serve(&dmz);
        let here = lookup(&served.url, SIGNED).unwrap();
        assert_eq!(here["signature"], upstream_view["signature"], "{here}");
        assert_eq!(here["attestation"], upstream_view["attestation"], "{here}");
        assert!(lookup(&served.url, UNSIGNED).is_none() && lookup(&served.url, FOREIGN).is_none());
        // Its /v2 face has the same cosign and carrier tags as upstream's
        // (the manifest signature came from the upstream's .sig tag).
        let manifest = Digest::of_bytes(&oci::manifest(&meta_s));
        for tag in [cosign::signature_tag(&manifest), cosign::attestation_tag(&manifest), sign::files_tag(&manifest)] {
            let get = |url: &str| {
                let r = reqwest::blocking::get(format!("{url}/v2/bpfarm/tracee-bpf/manifests/{tag}")).unwrap();
                (r.status().as_u16(), r.bytes().unwrap().to_vec())
            };
            let here = get(&served.url);
            assert_eq!(here.0, 200, "{tag}");
            assert_eq!(here, get(&up.url), "{tag}");
        }
        // cosign checks the mirrored object's files, downloaded from the
        // static layout, offline.
        let files = home.path().join("files");
        std::fs::create_dir_all(&files).unwrap();
        for suffix in ["", ".sig"] {
            let url = format!("{}/v0.1.0/x86_64/{}{suffix}", served.url, meta_s.file_name);
            let b = reqwest::blocking::get(url).unwrap().bytes().unwrap();
            std::fs::write(files.join(format!("{}{suffix}", meta_s.file_name)), b).unwrap();
        }
        let v = cosign_verify_blob(home.path(), &public, &files.join(&meta_s.file_name));
        assert!(v.status.success(), "cosign verify-blob: {}", show(&v));
    }

    // A lying upstream swaps the signed object's signature for the
    // stranger's: refused with the key and without (nothing can tell a
    // swap from a re-signing without one), the mirror unchanged.
    let (victim, thief) = (meta_s.file_name.clone(), meta_f.file_name.clone());
    let swapping = lying_proxy(&up.url, move |entries| {
        let foreign = entries.iter().find(|e| e["file_name"] == thief.as_str()).unwrap().clone();
        for e in entries.iter_mut().filter(|e| e["file_name"] == victim.as_str()) {
            e["signature"] = foreign["signature"].clone();
        }
    });
    let before = registry_snapshot(&dmz);
    for (keys, says) in
        [(true, "the signature is refused"), (false, "already has this object with other signatures attached")]
    {
        let o = mirror(&swapping.url, keys);
        assert_eq!(o.status.code(), Some(1), "{}", show(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(&format!("refused {SIGNED} (x86_64) v0.1.0: "))
                && String::from_utf8_lossy(&o.stderr).contains(says),
            "keys {keys}: {}",
            show(&o)
        );
        // Without keys the other two come in; the signed one keeps its files.
        if keys {
            assert_eq!(registry_snapshot(&dmz), before, "a refused swap changed the mirror");
        }
    }
    let after_swaps = registry_snapshot(&dmz);

    // A lying upstream strips the signatures: the same object here keeps
    // what it has (no refusal, nothing lost).
    let stripping = lying_proxy(&up.url, |entries| {
        for e in entries.iter_mut() {
            let m = e.as_object_mut().unwrap();
            m.remove("signature");
            m.remove("attestation");
        }
    });
    let o = mirror(&stripping.url, false);
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(registry_snapshot(&dmz), after_swaps, "stripped signatures changed the mirror");

    // The upstream replaces the signed object with an unsigned one: the
    // mirror refuses to lose the signature, with or without keys.
    let newer = b"\x7fELF an unsigned rebuild".to_vec();
    let newer_meta = sample_metadata(SIGNED, Arch::X86_64, &newer);
    c.publish(&newer_meta, &newer, true).unwrap();
    for keys in [false, true] {
        let o = mirror(&up.url, keys);
        assert_eq!(o.status.code(), Some(1), "{}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        let says = if keys {
            format!("refused {SIGNED} (x86_64) v0.1.0: {} carries no signature", newer_meta.file_name)
        } else {
            format!(
                "refused {SIGNED} (x86_64) v0.1.0: kernel {SIGNED} (x86_64) version v0.1.0 has a signed object ({}); it is not replaced by {}, which carries no signature",
                meta_s.digest, newer_meta.digest
            )
        };
        assert!(err.contains(&says), "keys {keys}: {}", show(&o));
        assert_eq!(registry_snapshot(&dmz), after_swaps, "a refused replacement changed the mirror");
        assert!(!stored(&dmz, &newer_meta.digest));
    }
    let served = serve(&dmz);
    let here = lookup(&served.url, SIGNED).unwrap();
    assert_eq!(
        (here["digest"].clone(), here["signature"].clone()),
        (upstream_view["digest"].clone(), upstream_view["signature"].clone())
    );
}

/// A registry under `dir` whose objects are published through `/v1` by
/// `publish(client)`; returns it with its data folder.
fn registry_with(
    dir: &Path,
    publish: impl FnOnce(&bpfarm_object::client::RegistryClient),
) -> (bpfarm_tests::Registry, PathBuf) {
    let data = dir.join("data");
    let push = token(&data, "ci", "push");
    let r = serve(&data);
    publish(&client(&r.url, Some(push)));
    (r, data)
}

fn bundle(data: &Path, out: &Path) {
    let o = registry_cmd(&["bundle", "--data", p(data), "--out", p(out)]);
    assert!(o.status.success(), "{}", show(&o));
}

fn export(data: &Path, out: &Path) {
    let o = registry_cmd(&["export", "--data", p(data), "--out", p(out)]);
    assert!(o.status.success(), "{}", show(&o));
}

#[test]
fn a_signed_bundle_imports_under_a_trusted_key_and_exports_the_same_files_cosign_verifies() {
    let home = tempfile::tempdir().unwrap();
    let (key_path, public) = openssl_key(home.path(), "signer");
    let key = SigningKey::load(&key_path).unwrap();
    let mut made = None;
    let (a, data_a) = registry_with(&home.path().join("a"), |c| {
        let (meta, bytes, up) = signed(&key, &c.docker_reference(), SIGNED);
        c.publish_signed(&meta, &bytes, false, &up).unwrap();
        made = Some((meta, up));
    });
    let (meta, up) = made.unwrap();
    let view_a = lookup(&a.url, SIGNED).unwrap();
    drop(a);
    let tar = home.path().join("a.tar");
    bundle(&data_a, &tar);

    // The carrier is an OCI artifact skopeo and oras read: oras pulls the
    // two files under their names, and cosign verifies them offline.
    let manifest = Digest::of_bytes(&oci::manifest(&meta));
    let ftag = sign::files_tag(&manifest);
    let o = Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci-archive:{}:{ftag}", tar.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let carrier: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(carrier["artifactType"], sign::FILES_ARTIFACT_TYPE);
    assert_eq!(carrier["subject"]["digest"], manifest.as_str());
    let layout = home.path().join("layout");
    std::fs::create_dir_all(&layout).unwrap();
    let o = Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&layout).output().unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let pulled = home.path().join("pulled");
    let o = Command::new("oras")
        .args(["pull", "--oci-layout", "-o"])
        .arg(&pulled)
        .arg(format!("{}:{ftag}", layout.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(std::fs::read(pulled.join(format!("{}.sig", meta.file_name))).unwrap(), up.signature);
    assert_eq!(std::fs::read(pulled.join(format!("{}.intoto.jsonl", meta.file_name))).unwrap(), up.attestation);
    std::fs::write(pulled.join(&meta.file_name), object(SIGNED)).unwrap();
    let v = cosign_verify_blob(home.path(), &public, &pulled.join(&meta.file_name));
    assert!(v.status.success(), "cosign verify-blob (oras pull of the bundle): {}", show(&v));

    // Imported into an empty registry that trusts the key: /v1 names the
    // same files, and an export of it has them byte for byte.
    let data_b = home.path().join("b");
    let o = registry_cmd(&["import", "--data", p(&data_b), "--trusted-key", p(&public), p(&tar)]);
    assert!(o.status.success(), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("1 objects published"), "{}", show(&o));
    let before = registry_snapshot(&data_b);
    let o = registry_cmd(&["import", "--data", p(&data_b), "--trusted-key", p(&public), p(&tar)]);
    assert!(String::from_utf8_lossy(&o.stdout).contains(": 0 new blobs (0 bytes), 0 new manifests"), "{}", show(&o));
    assert_eq!(registry_snapshot(&data_b), before, "importing again changed the registry");
    {
        let b = serve(&data_b);
        let view_b = lookup(&b.url, SIGNED).unwrap();
        assert_eq!(view_b["signature"], view_a["signature"], "{view_b}");
        assert_eq!(view_b["attestation"], view_a["attestation"], "{view_b}");
        for tag in [cosign::signature_tag(&manifest), cosign::attestation_tag(&manifest), ftag.clone()] {
            let r = reqwest::blocking::get(format!("{}/v2/bpfarm/tracee-bpf/manifests/{tag}", b.url)).unwrap();
            assert_eq!(r.status().as_u16(), 200, "{tag}");
        }
    }
    let (tree_a, tree_b) = (home.path().join("export-a"), home.path().join("export-b"));
    export(&data_a, &tree_a);
    export(&data_b, &tree_b);
    let file = Path::new("v0.1.0/x86_64").join(&meta.file_name);
    for suffix in ["", ".sig", ".intoto.jsonl"] {
        let name = format!("{}{suffix}", file.display());
        assert_eq!(std::fs::read(tree_b.join(&name)).unwrap(), std::fs::read(tree_a.join(&name)).unwrap(), "{name}");
    }
    let v = cosign_verify_blob(home.path(), &public, &tree_b.join(&file));
    assert!(v.status.success(), "cosign verify-blob (export of the imported registry): {}", show(&v));
    // And the imported registry bundles to the same bytes.
    let again = home.path().join("b.tar");
    bundle(&data_b, &again);
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&tar).unwrap(), "the round trip changed the bundle");
    let o = registry_cmd(&["fsck", "--data", p(&data_b)]);
    assert!(o.status.success(), "{}", show(&o));
    // A registry that signed objects before the carrier existed: fsck
    // names the missing tag, and --repair writes it from the row.
    let o = Command::new("sqlite3")
        .arg(data_b.join("index.sqlite"))
        .arg(format!("DELETE FROM oci_tags WHERE tag = '{ftag}'"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let o = registry_cmd(&["fsck", "--data", p(&data_b)]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("has no tag {ftag}")), "{}", show(&o));
    let o = registry_cmd(&["fsck", "--data", p(&data_b), "--repair"]);
    assert!(o.status.success(), "{}", show(&o));
    bundle(&data_b, &again);
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(&tar).unwrap(),
        "the repaired registry bundles differently"
    );
}

#[test]
fn import_refuses_unsigned_foreign_and_resigned_objects_and_writes_nothing() {
    let home = tempfile::tempdir().unwrap();
    let (key, public, stranger) = signer_and_stranger(home.path());
    // The target holds the object signed by the trusted key.
    let (_t, data) = registry_with(&home.path().join("t"), |c| {
        let (meta, bytes, up) = signed(&key, &c.docker_reference(), SIGNED);
        c.publish_signed(&meta, &bytes, false, &up).unwrap();
    });
    drop(_t);
    let before = registry_snapshot(&data);
    let attempt = |tar: &Path, keys: bool, says: &str| {
        let mut args = vec!["import", "--data", p(&data)];
        if keys {
            args.extend(["--trusted-key", p(&public)]);
        }
        args.push(p(tar));
        let o = registry_cmd(&args);
        assert_eq!(o.status.code(), Some(1), "{}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(says) && err.contains("nothing was imported"), "{says}: {}", show(&o));
        assert_eq!(registry_snapshot(&data), before, "a refused import changed the registry ({says})");
    };
    // An unsigned object, under the key.
    let (_u, data_u) = registry_with(&home.path().join("u"), |c| {
        let bytes = object(UNSIGNED);
        c.publish(&sample_metadata(UNSIGNED, Arch::X86_64, &bytes), &bytes, false).unwrap();
    });
    let tar_u = home.path().join("u.tar");
    bundle(&data_u, &tar_u);
    let file_u = sample_metadata(UNSIGNED, Arch::X86_64, &object(UNSIGNED)).file_name;
    attempt(
        &tar_u,
        true,
        &format!("kernel {UNSIGNED} (x86_64) version v0.1.0: {file_u} carries no signature by a trusted key"),
    );
    // An object signed by a stranger, under the key.
    let (_f, data_f) = registry_with(&home.path().join("f"), |c| {
        let (meta, bytes, up) = signed(&stranger, &c.docker_reference(), FOREIGN);
        c.publish_signed(&meta, &bytes, false, &up).unwrap();
    });
    let tar_f = home.path().join("f.tar");
    bundle(&data_f, &tar_f);
    attempt(&tar_f, true, &format!("kernel {FOREIGN} (x86_64) version v0.1.0: the signature is refused"));
    // The object the target holds, signed by someone else: without keys
    // an import never swaps the signatures it holds.
    let (_r, data_r) = registry_with(&home.path().join("r"), |c| {
        let (meta, bytes, up) = signed(&stranger, &c.docker_reference(), SIGNED);
        c.publish_signed(&meta, &bytes, false, &up).unwrap();
    });
    let tar_r = home.path().join("r.tar");
    bundle(&data_r, &tar_r);
    attempt(&tar_r, false, "carries other signatures than the bundle's");
    attempt(&tar_r, true, "the signature is refused");
}

/// The target holds an object unsigned; the bundle carries the same bytes
/// signed: refused before anything is written (an import never adds
/// signatures to a held object), saying how to add them here.
#[test]
fn import_refuses_signatures_for_an_object_held_unsigned_and_writes_nothing() {
    let home = tempfile::tempdir().unwrap();
    let (key_path, public) = openssl_key(home.path(), "signer");
    let key = SigningKey::load(&key_path).unwrap();
    let (_t, data) = registry_with(&home.path().join("t"), |c| {
        let bytes = object(UNSIGNED);
        c.publish(&sample_metadata(UNSIGNED, Arch::X86_64, &bytes), &bytes, false).unwrap();
    });
    drop(_t);
    let (_s, data_s) = registry_with(&home.path().join("s"), |c| {
        let (meta, bytes, up) = signed(&key, &c.docker_reference(), UNSIGNED);
        c.publish_signed(&meta, &bytes, false, &up).unwrap();
    });
    let tar = home.path().join("s.tar");
    bundle(&data_s, &tar);
    let before = registry_snapshot(&data);
    for keys in [false, true] {
        let mut args = vec!["import", "--data", p(&data)];
        if keys {
            args.extend(["--trusted-key", p(&public)]);
        }
        args.push(p(&tar));
        let o = registry_cmd(&args);
        assert_eq!(o.status.code(), Some(1), "{}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("holds the object for {UNSIGNED} (x86_64) v0.1.0 without signatures"))
                && err.contains("POST /v1/objects?replace=true")
                && err.contains("nothing was imported"),
            "{}",
            show(&o)
        );
        assert_eq!(registry_snapshot(&data), before, "a refused import changed the registry (keys: {keys})");
    }
}

#[test]
fn resent_signatures_replace_only_when_asked_and_attestations_name_their_object() {
    let home = tempfile::tempdir().unwrap();
    let (key, _, stranger) = signer_and_stranger(home.path());
    // No --trusted-key: what holds here holds for every registry.
    let data = home.path().join("data");
    let push = token(&data, "ci", "push");
    let r = serve(&data);
    let c = client(&r.url, Some(push.clone()));
    let (meta, bytes, mine) = signed(&key, &c.docker_reference(), SIGNED);
    c.publish_signed(&meta, &bytes, false, &mine).unwrap();
    let upload = |data: &[u8]| {
        let resp = reqwest::blocking::Client::new()
            .put(format!("{}/v1/blobs/{}", r.url, Digest::of_bytes(data)))
            .bearer_auth(&push)
            .body(data.to_vec())
            .send()
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
    };

    // The same object with other signatures: 409 and nothing changes;
    // with ?replace=true they replace the stored ones.
    let (_, _, theirs) = signed(&stranger, &c.docker_reference(), SIGNED);
    upload(&theirs.signature);
    upload(&theirs.attestation);
    let before = registry_snapshot(&data);
    let e = c.publish_signed(&meta, &bytes, false, &theirs).unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    assert!(e.to_string().contains("already has this object with other signatures attached"), "{e}");
    assert!(e.to_string().contains("?replace=true"), "{e}");
    assert_eq!(registry_snapshot(&data), before, "refused signatures changed the store");
    assert_eq!(lookup(&r.url, SIGNED).unwrap()["signature"]["digest"], Digest::of_bytes(&mine.signature).as_str());
    // The same signatures again are a no-op.
    assert_eq!(c.publish_signed(&meta, &bytes, false, &mine).unwrap(), bpfarm_object::client::Published::Skipped);
    c.publish_signed(&meta, &bytes, true, &theirs).unwrap();
    assert_eq!(lookup(&r.url, SIGNED).unwrap()["signature"]["digest"], Digest::of_bytes(&theirs.signature).as_str());

    // An attestation about other bytes beside this object's signature:
    // 400, naming both digests, nothing stored.
    let (other_meta, other_bytes, other) = signed(&key, &c.docker_reference(), UNSIGNED);
    let (_, _, another) = signed(&key, &c.docker_reference(), FOREIGN);
    let mixed = SignedUpload { attestation: another.attestation.clone(), ..other.clone() };
    upload(&other_bytes);
    upload(&mixed.signature);
    upload(&mixed.attestation);
    let before = registry_snapshot(&data);
    let e = c.publish_signed(&other_meta, &other_bytes, false, &mixed).unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    let text = e.to_string();
    assert!(text.contains("attestation is malformed") && text.contains(other_meta.digest.as_str()), "{text}");
    assert!(text.contains(Digest::of_bytes(&object(FOREIGN)).as_str()), "{text}");
    assert_eq!(registry_snapshot(&data), before, "a refused attestation changed the store");
    assert!(lookup(&r.url, UNSIGNED).is_none());
}

#[test]
fn a_v2_push_with_its_carrier_first_gets_its_v1_signature_files() {
    let home = tempfile::tempdir().unwrap();
    let (key_path, public) = openssl_key(home.path(), "signer");
    let key = SigningKey::load(&key_path).unwrap();
    let (r, _, push) = trusting_registry(home.path(), &public);
    let oci = oci_client(&r.url, "bpfarm", &push);
    let (meta, bytes, up) = signed(&key, &oci.docker_reference(), SIGNED);
    push_signed(&oci, &meta, &bytes, &up);
    let view = lookup(&r.url, SIGNED).unwrap();
    assert_eq!(view["signature"]["digest"], Digest::of_bytes(&up.signature).as_str(), "{view}");
    assert_eq!(view["attestation"]["digest"], Digest::of_bytes(&up.attestation).as_str(), "{view}");

    // A carrier holding another object's files, pushed under this one's
    // tag: the artifact is refused (the .sig file does not verify for it)
    // and /v1 gains nothing.
    let (meta2, bytes2, up2) = signed(&key, &oci.docker_reference(), UNSIGNED);
    let subject2 = sign::Subject::manifest(&oci::manifest(&meta2));
    oci.push_artifact(&sign::signature_artifact(&subject2, std::slice::from_ref(&up2.manifest_signature))).unwrap();
    let wrong = sign::files_artifact(&subject2, &meta2.file_name, &up.signature, Some(&up.attestation));
    oci.push_artifact(&wrong).unwrap();
    let e = oci.publish(&meta2, &bytes2).unwrap_err();
    assert!(e.to_string().contains("signature is refused"), "{e}");
    assert!(lookup(&r.url, UNSIGNED).is_none());
}

/// The digest a tag of the canonical repository names (`None`: no tag).
fn tag_digest(url: &str, tag: &str) -> Option<String> {
    let r = reqwest::blocking::Client::new()
        .head(format!("{url}/v2/bpfarm/tracee-bpf/manifests/{tag}"))
        .header("accept", oci::MANIFEST_MEDIA_TYPE)
        .send()
        .unwrap();
    (r.status() == 200).then(|| r.headers()["docker-content-digest"].to_str().unwrap().to_owned())
}

/// A `PUT` of manifest `bytes` under `tag` with `token`: (status, body).
fn put_manifest(url: &str, token: &str, tag: &str, bytes: &[u8]) -> (u16, String) {
    let r = reqwest::blocking::Client::new()
        .put(format!("{url}/v2/bpfarm/tracee-bpf/manifests/{tag}"))
        .bearer_auth(token)
        .header("content-type", oci::MANIFEST_MEDIA_TYPE)
        .body(bytes.to_vec())
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

/// A registry under `home` taking only objects signed by `public`: it,
/// its data folder and a push token.
fn trusting_registry(home: &Path, public: &Path) -> (bpfarm_tests::Registry, PathBuf, String) {
    let data = home.join("data");
    let push = token(&data, "ci", "push");
    let r = bpfarm_tests::serve_with(&["--listen", "127.0.0.1:0", "--data", p(&data), "--trusted-key", p(public)]);
    (r, data, push)
}

/// An OCI client for `oci://<the registry at url>/<namespace>`, pushing
/// with `push`.
fn oci_client(url: &str, namespace: &str, push: &str) -> OciRegistry {
    let addr = url.trim_start_matches("http://");
    let transport = bpfarm_object::http::Transport::new(Default::default()).unwrap();
    let target = OciTarget::parse(&format!("oci://{addr}/{namespace}")).unwrap();
    OciRegistry::new(target, credentials(addr, None, Some(push)), &transport).unwrap()
}

/// What `bpfarm-builder --sign-key … --publish oci://` pushes: the cosign
/// signature, the carrier of the `.sig` and `.intoto.jsonl` (returned),
/// then the object.
fn push_signed(oci: &OciRegistry, meta: &ObjectMetadata, bytes: &[u8], up: &SignedUpload) -> sign::OciArtifact {
    let subject = sign::Subject::manifest(&oci::manifest(meta));
    oci.push_artifact(&sign::signature_artifact(&subject, std::slice::from_ref(&up.manifest_signature))).unwrap();
    let carrier = sign::files_artifact(&subject, &meta.file_name, &up.signature, Some(&up.attestation));
    oci.push_artifact(&carrier).unwrap();
    oci.publish(meta, bytes).unwrap();
    carrier
}

/// Imports bundle `tar` into a new registry under `home` that trusts
/// `public`, and serves it: its `/v1` answer for the signed object
/// carries the signature and attestation of `view`.
fn import_keeps_signatures(home: &Path, public: &Path, tar: &Path, view: &Value) -> bpfarm_tests::Registry {
    let imported = home.join("imported");
    let o = registry_cmd(&["import", "--data", p(&imported), "--trusted-key", p(public), p(tar)]);
    assert!(o.status.success(), "{}", show(&o));
    let b = serve(&imported);
    let view_b = lookup(&b.url, SIGNED).unwrap();
    assert_eq!(view_b["signature"], view["signature"], "{view_b}");
    assert_eq!(view_b["attestation"], view["attestation"], "{view_b}");
    b
}

#[test]
fn the_signature_tags_of_a_held_object_take_no_foreign_files_or_untrusted_signatures() {
    let home = tempfile::tempdir().unwrap();
    let (key_path, public) = openssl_key(home.path(), "signer");
    let key = SigningKey::load(&key_path).unwrap();
    let (other_path, _) = openssl_key(home.path(), "other");
    let other = SigningKey::load(&other_path).unwrap();
    let (r, data, push) = trusting_registry(home.path(), &public);
    let oci = oci_client(&r.url, "bpfarm", &push);
    let (meta, bytes, up) = signed(&key, &oci.docker_reference(), SIGNED);
    let subject = sign::Subject::manifest(&oci::manifest(&meta));
    let ours = push_signed(&oci, &meta, &bytes, &up);
    let view = lookup(&r.url, SIGNED).unwrap();
    let ftag = sign::files_tag(&subject.digest);
    let stag = cosign::signature_tag(&subject.digest);
    let (carrier_before, sig_before) = (tag_digest(&r.url, &ftag).unwrap(), tag_digest(&r.url, &stag).unwrap());

    // `oras cp` of a carrier whose files another key made, to the held
    // object's carrier tag: refused, the tag and /v1 unchanged.
    let s = sign::sign_object(&other, &meta, &bytes, &BuilderInfo::bpfarm("test")).unwrap();
    let (foreign_sig, foreign_att) = (s.signature.into_bytes(), s.provenance.to_jsonl());
    let foreign = sign::files_artifact(&subject, &meta.file_name, &foreign_sig, Some(&foreign_att));
    let e = oci.push_artifact(&foreign).unwrap_err().to_string();
    assert!(
        e.contains("writes it from the object's /v1 signature") && e.contains("POST /v1/objects?replace=true"),
        "{e}"
    );
    let (status, body) = put_manifest(&r.url, &push, &ftag, &foreign.manifest);
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("\"DENIED\""), "{body}");
    // By digest too (the referrers API would list it).
    let (status, body) = put_manifest(&r.url, &push, foreign.manifest_digest().as_str(), &foreign.manifest);
    assert_eq!(status, 409, "{body}");
    // Our own files with another's attestation: refused as well.
    let mixed = sign::files_artifact(&subject, &meta.file_name, &up.signature, Some(&foreign_att));
    assert!(oci.push_artifact(&mixed).is_err());
    assert_eq!(tag_digest(&r.url, &ftag).as_deref(), Some(carrier_before.as_str()));
    assert_eq!(lookup(&r.url, SIGNED).unwrap(), view, "the /v1 answer changed");
    let ro = reqwest::blocking::get(format!("{}/v2/bpfarm/tracee-bpf/manifests/{}", r.url, foreign.manifest_digest()))
        .unwrap();
    assert_eq!(ro.status().as_u16(), 404, "the refused carrier is stored");
    // The same files again: taken, nothing changes.
    oci.push_artifact(&ours).unwrap();
    assert_eq!(tag_digest(&r.url, &ftag).as_deref(), Some(carrier_before.as_str()));

    // The cosign .sig tag under --trusted-key: a signature by the other
    // key is refused; a new one by the trusted key is taken.
    let untrusted = sign::sign_manifest(&other, &oci.docker_reference(), &subject.digest).unwrap();
    let e = oci.push_artifact(&sign::signature_artifact(&subject, &[untrusted])).unwrap_err().to_string();
    assert!(e.contains(&format!("the cosign signature tag {stag}")) && e.contains("trusted key"), "{e}");
    assert_eq!(tag_digest(&r.url, &stag).as_deref(), Some(sig_before.as_str()));
    let again = sign::sign_manifest(&key, &oci.docker_reference(), &subject.digest).unwrap();
    let resigned = sign::signature_artifact(&subject, &[again]);
    oci.push_artifact(&resigned).unwrap();
    assert_eq!(tag_digest(&r.url, &stag).as_deref(), Some(resigned.manifest_digest().as_str()));

    // A registry whose carrier tag was overwritten before these checks:
    // the foreign carrier (accepted in another repository, which holds no
    // object) is put under the tag by hand. The bundle carries the carrier
    // /v1's files make, and a registry trusting the key imports it.
    oci_client(&r.url, "elsewhere", &push).push_artifact(&foreign).unwrap();
    drop(r);
    let fd = foreign.manifest_digest();
    let o = Command::new("sqlite3")
        .arg(data.join("index.sqlite"))
        .arg(format!(
            "INSERT INTO oci_manifests SELECT 'bpfarm/tracee-bpf', digest, media_type, size, artifact_type, subject, annotations, created_at FROM oci_manifests WHERE repo = 'elsewhere/tracee-bpf' AND digest = '{fd}'; \
             UPDATE oci_tags SET digest = '{fd}' WHERE repo = 'bpfarm/tracee-bpf' AND tag = '{ftag}';"
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let tar = home.path().join("b.tar");
    bundle(&data, &tar);
    let o = Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci-archive:{}:{ftag}", tar.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(Digest::of_bytes(&o.stdout), ours.manifest_digest(), "the bundle carries the stale carrier");
    assert_eq!(o.stdout, ours.manifest);
    import_keeps_signatures(home.path(), &public, &tar, &view);
}

/// A `DELETE` of `/v2` manifest `reference` with `token`: (status, body).
fn delete_manifest(url: &str, token: &str, reference: &str) -> (u16, String) {
    let r = reqwest::blocking::Client::new()
        .delete(format!("{url}/v2/bpfarm/tracee-bpf/manifests/{reference}"))
        .bearer_auth(token)
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

#[test]
fn a_held_objects_signature_tags_are_not_deleted_and_a_bundle_carries_them_from_v1_anyway() {
    let home = tempfile::tempdir().unwrap();
    let (key_path, public) = openssl_key(home.path(), "signer");
    let key = SigningKey::load(&key_path).unwrap();
    let data = home.path().join("data");
    let push = token(&data, "ci", "push");
    let r = serve(&data);
    let (meta, bytes, up) = signed(&key, &client(&r.url, None).docker_reference(), SIGNED);
    client(&r.url, Some(push.clone())).publish_signed(&meta, &bytes, false, &up).unwrap();
    let view = lookup(&r.url, SIGNED).unwrap();
    let manifest = Digest::of_bytes(&oci::manifest(&meta));
    let (ftag, stag) = (sign::files_tag(&manifest), cosign::signature_tag(&manifest));
    let carrier = tag_digest(&r.url, &ftag).unwrap();
    let sig = tag_digest(&r.url, &stag).unwrap();

    // By tag and by the digest each names: refused, 409 DENIED, naming
    // the tag and how its signatures do change.
    for reference in [&ftag, &carrier, &stag, &sig] {
        let (status, body) = delete_manifest(&r.url, &push, reference);
        assert_eq!(status, 409, "{reference}: {body}");
        assert!(body.contains("\"DENIED\""), "{body}");
        assert!(body.contains("belongs to an object this registry holds"), "{body}");
        assert!(body.contains("POST /v1/objects?replace=true"), "{body}");
    }
    assert_eq!(tag_digest(&r.url, &ftag).as_deref(), Some(carrier.as_str()));
    assert_eq!(tag_digest(&r.url, &stag).as_deref(), Some(sig.as_str()));
    assert_eq!(lookup(&r.url, SIGNED).unwrap(), view, "the /v1 answer changed");
    // A cosign signature of a manifest /v1 does not hold is the pusher's.
    let oci = oci_client(&r.url, "bpfarm", &push);
    let (other, ..) = signed(&key, &oci.docker_reference(), UNSIGNED);
    let other = sign::Subject::manifest(&oci::manifest(&other));
    let s = sign::sign_manifest(&key, &oci.docker_reference(), &other.digest).unwrap();
    oci.push_artifact(&sign::signature_artifact(&other, &[s])).unwrap();
    let (status, body) = delete_manifest(&r.url, &push, &cosign::signature_tag(&other.digest));
    assert_eq!(status, 202, "{body}");
    drop(r);

    // Tags gone before deletes were refused (removed by hand): the bundle
    // writes both from the /v1 row, and a registry trusting the key
    // imports the object with its /v1 signature and serves both tags.
    let o = Command::new("sqlite3")
        .arg(data.join("index.sqlite"))
        .arg(format!("DELETE FROM oci_tags WHERE tag IN ('{ftag}', '{stag}')"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let tar = home.path().join("b.tar");
    bundle(&data, &tar);
    for tag in [&ftag, &stag] {
        let o = Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("oci-archive:{}:{tag}", tar.display()))
            .output()
            .unwrap();
        assert!(o.status.success(), "{tag} is not in the bundle: {}", show(&o));
    }
    let b = import_keeps_signatures(home.path(), &public, &tar, &view);
    assert_eq!(tag_digest(&b.url, &ftag).as_deref(), Some(carrier.as_str()));
    assert_eq!(tag_digest(&b.url, &stag).as_deref(), Some(sig.as_str()));
}
