//! The agent's signed objects from OCI (issue #11): `--registry
//! oci-layout:DIR` under `--verify-key` reads cosign's `.sig`/`.att` tags
//! from the layout, with the same reader as `oci://`; objects installed from
//! OCI keep `<file>.cosign.json` beside them so the next start verifies them
//! with no registry; the cosign reads of an `oci://` attempt stay inside its
//! `--timeout`; and the rollback record fails closed.
//!
//! Everything is real: the builder's object for the running kernel, signed
//! by the builder with an openssl key and published to the real registry,
//! `bpfarm-registry bundle` of it, unpacked; bpfarm's own `/v2` as the
//! `oci://` registry. The trickling registry of the timeout test is a
//! loopback server (`bpfarm_tests::hostile`) serving that same bundle's
//! bytes, because slowness on demand is its point. Refusals assert the exit
//! code, the message, nothing installed and nothing loaded.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bpfarm_object::oci_layout::REF_NAME;
use bpfarm_object::sign::{self, BuilderInfo, SigningKey, Subject};
use bpfarm_object::{Digest, ObjectMetadata, oci};
use bpfarm_tests::hostile::{Body, HostileServer, Reply, Request};
use bpfarm_tests::{
    agent_in, assert_agent_refused, bin, built_object, openssl_key, privileged, run_agent_for_a_second, run_ok,
    running_kernel_build, running_object_name, show,
};
use serde_json::{Value, json};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The real registry with the running kernel's object, published signed by
/// the builder, and its bundle; made once per test process.
struct Signed {
    _dir: tempfile::TempDir,
    key: PathBuf,
    public: PathBuf,
    other_key: PathBuf,
    other_public: PathBuf,
    /// The registry, serving `/v2` (`oci://ADDR/bpfarm`).
    registry: std::sync::Mutex<Option<bpfarm_tests::Registry>>,
    addr: String,
    tar: PathBuf,
    object: Vec<u8>,
    meta: ObjectMetadata,
}

fn signed() -> &'static Signed {
    static S: OnceLock<Signed> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (key, public) = openssl_key(dir.path(), "signer");
        let (other_key, other_public) = openssl_key(dir.path(), "stranger");
        let data = dir.path().join("registry");
        let push = bpfarm_tests::token(&data, "ci", "push");
        let registry = bpfarm_tests::serve(&data);
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("agent-sign-oci-cache");
        let out = dir.path().join("out");
        let built = run_ok(running_kernel_build(&cache, &out).arg("--sign-key").arg(&key).args([
            "--publish",
            &registry.url,
            "--token",
            &push,
        ]));
        assert!(String::from_utf8_lossy(&built.stdout).contains("1 published"), "{}", show(&built));
        let (object, meta) = built_object(&out);
        let object = std::fs::read(object).unwrap();
        let tar = dir.path().join("bundle.tar");
        run_ok(Command::new(bin("bpfarm-registry")).arg("bundle").arg("--data").arg(&data).arg("--out").arg(&tar));
        let addr = registry.url.trim_start_matches("http://").to_owned();
        Signed {
            _dir: dir,
            key,
            public,
            other_key,
            other_public,
            registry: std::sync::Mutex::new(Some(registry)),
            addr,
            tar,
            object,
            meta,
        }
    })
}

/// A fresh unpacked copy of the signed bundle.
fn layout(root: &Path) -> PathBuf {
    let dir = root.join("layout");
    std::fs::create_dir_all(&dir).unwrap();
    run_ok(Command::new("tar").arg("-xf").arg(&signed().tar).arg("-C").arg(&dir));
    dir
}

fn from_layout(root: &Path, layout: &Path, key: &Path) -> Command {
    let mut c = agent_in(root, "never");
    c.arg("--verify-key").arg(key).arg("--registry").arg(format!("oci-layout:{}", layout.display()));
    c
}

fn evidence_path(root: &Path) -> PathBuf {
    root.join("install").join(format!("{}.cosign.json", running_object_name()))
}

/// The layout's `index.json` entries.
fn index(layout: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap()
}

fn put_blob(layout: &Path, bytes: &[u8]) -> Digest {
    let d = Digest::of_bytes(bytes);
    std::fs::write(layout.join("blobs/sha256").join(d.hex()), bytes).unwrap();
    d
}

/// Points the index entry tagged `tag` at `manifest` (adding one if none).
fn retag(layout: &Path, tag: &str, manifest: &[u8]) {
    let d = put_blob(layout, manifest);
    let mut v = index(layout);
    let entries = v["manifests"].as_array_mut().unwrap();
    entries.retain(|e| e["annotations"][REF_NAME] != tag);
    entries.push(json!({
        "mediaType": oci::MANIFEST_MEDIA_TYPE, "digest": d.as_str(), "size": manifest.len(),
        "annotations": { REF_NAME: tag }
    }));
    std::fs::write(layout.join("index.json"), v.to_string()).unwrap();
}

/// The platform manifest the builder signed (the registry writes the same
/// bytes: `oci::manifest`).
fn manifest() -> Vec<u8> {
    oci::manifest(&signed().meta)
}

#[test]
fn a_signed_bundle_is_accepted_from_an_oci_layout_and_verified_offline_afterwards() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let layout = layout(root);
    let s = signed();
    let out = run_agent_for_a_second(&mut from_layout(root, &layout, &s.public));
    let text = show(&out);
    if privileged("oci-layout signed run") {
        assert_eq!(out.status.code(), Some(0), "{text}");
        assert!(text.contains("attached"), "{text}");
    }
    assert!(text.contains("read from the OCI layout"), "{text}");
    assert!(text.contains("signature verified (the cosign signature of its manifest, key"), "{text}");
    assert!(text.contains(&format!("signed build time {}", s.meta.built_at)), "{text}");
    assert_eq!(std::fs::read(root.join("install").join(running_object_name())).unwrap(), s.object);
    // The evidence went beside it; no blob signature form.
    let evidence: Value = serde_json::from_slice(&std::fs::read(evidence_path(root)).unwrap()).unwrap();
    assert_eq!(evidence["mediaType"], sign::evidence::EVIDENCE_MEDIA_TYPE);
    assert_eq!(B64.decode(evidence["manifest"].as_str().unwrap()).unwrap(), manifest());
    assert!(evidence["attestation"].is_string(), "{evidence}");
    assert!(!root.join("install").join(format!("{}.sig", running_object_name())).exists());
    let state: Value = serde_json::from_slice(&std::fs::read(root.join("state/rollback.json")).unwrap()).unwrap();
    let (_, record) = state["identities"].as_object().unwrap().iter().next().unwrap();
    assert_eq!(record["built_at"], s.meta.built_at.as_str());

    // The layout is gone: the installed object verifies from what is kept
    // beside it (its build time equals the record: accepted).
    std::fs::remove_dir_all(&layout).unwrap();
    let mut again = agent_in(root, "never");
    again.arg("--verify-key").arg(&s.public);
    let out = again.arg("locate").output().unwrap();
    let text = show(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("install path"), "{text}");
    assert!(text.contains("the cosign signature of its manifest, kept beside it"), "{text}");

    // Another key: the kept evidence does not verify.
    let out = agent_in(root, "never").arg("--verify-key").arg(&s.other_public).arg("locate").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(show(&out).contains("does not verify with any trusted key"), "{}", show(&out));

    // Every link of the kept chain, tampered: refused, nothing loaded.
    let good = std::fs::read(evidence_path(root)).unwrap();
    eprintln!("{}.cosign.json: {} bytes", running_object_name(), good.len());
    let key = SigningKey::load(&s.key).unwrap();
    let md = Digest::of_bytes(&manifest());
    let mut other_meta = s.meta.clone();
    other_meta.digest = Digest::of_bytes(b"another object");
    let other_manifest = oci::manifest(&other_meta);
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut v: Value = serde_json::from_slice(&good).unwrap();
        f(&mut v);
        v.to_string().into_bytes()
    };
    let signed_by = |k: &SigningKey, d: &Digest| sign::sign_manifest(k, "elsewhere/tracee-bpf", d).unwrap();
    let stranger = SigningKey::load(&s.other_key).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "payload signed by another key",
            edit(&|v| v["signature"] = signed_by(&stranger, &md).signature.into()),
            "does not verify with any trusted key",
        ),
        (
            "a payload for another manifest, validly signed",
            edit(&|v| {
                let s = signed_by(&key, &Digest::of_bytes(&other_manifest));
                v["payload"] = B64.encode(&s.payload).into();
                v["signature"] = s.signature.into();
            }),
            "the signed statement is for",
        ),
        (
            "a manifest byte changed",
            edit(&|v| {
                let mut m = manifest();
                m.push(b'\n');
                v["manifest"] = B64.encode(m).into();
            }),
            "the signed statement is for",
        ),
        (
            "a signed manifest whose layer is another object",
            edit(&|v| {
                let s = signed_by(&key, &Digest::of_bytes(&other_manifest));
                v["manifest"] = B64.encode(&other_manifest).into();
                v["payload"] = B64.encode(&s.payload).into();
                v["signature"] = s.signature.into();
                v.as_object_mut().unwrap().remove("attestation");
            }),
            "not this object",
        ),
        (
            "an attestation for another manifest",
            edit(&|v| {
                let p = sign::sign_provenance(&key, &other_meta, &BuilderInfo::bpfarm("test")).unwrap();
                v["attestation"] = B64.encode(p.v1.to_json()).into();
            }),
            "the signed statement is for",
        ),
        ("not JSON", b"{".to_vec(), ".cosign.json"),
    ];
    for (what, bytes, says) in cases {
        std::fs::write(evidence_path(root), &bytes).unwrap();
        let out = run_agent_for_a_second(agent_in(root, "never").arg("--verify-key").arg(&s.public));
        let text = show(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {text}");
        assert!(text.contains(says), "{what}: the output does not say {says:?}:\n{text}");
        assert!(text.contains("install path"), "{what}: {text}");
        assert!(!text.contains("attached") && out.stdout.is_empty(), "{what}: loaded:\n{text}");
    }
    // The trust rules of a `.sig` apply: world-writable, or a symlink.
    std::fs::write(evidence_path(root), &good).unwrap();
    std::fs::set_permissions(evidence_path(root), std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let out = run_agent_for_a_second(agent_in(root, "never").arg("--verify-key").arg(&s.public));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(show(&out).contains("refusing its .cosign.json"), "{}", show(&out));
    std::fs::remove_file(evidence_path(root)).unwrap();
    let elsewhere = root.join("elsewhere.json");
    std::fs::write(&elsewhere, &good).unwrap();
    std::os::unix::fs::symlink(&elsewhere, evidence_path(root)).unwrap();
    let out = run_agent_for_a_second(agent_in(root, "never").arg("--verify-key").arg(&s.public));
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(show(&out).contains("refusing its .cosign.json"), "{}", show(&out));

    // Without its attestation the object has no signed build time; it is
    // still the very object recorded (same digest), so it passes.
    std::fs::remove_file(evidence_path(root)).unwrap();
    let bare = {
        let mut v: Value = serde_json::from_slice(&good).unwrap();
        v.as_object_mut().unwrap().remove("attestation");
        v.to_string()
    };
    std::fs::write(evidence_path(root), bare).unwrap();
    let out = agent_in(root, "never").arg("--verify-key").arg(&s.public).arg("locate").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(show(&out).contains("no signed build time"), "{}", show(&out));
}

#[test]
fn tampered_layouts_are_refused_and_nothing_is_installed_or_loaded() {
    let s = signed();
    let md = Digest::of_bytes(&manifest());
    let sig_tag = sign::signature_tag(&md);
    let key = SigningKey::load(&s.key).unwrap();

    // Another key trusted: refused.
    let tmp = tempfile::tempdir().unwrap();
    let l = layout(tmp.path());
    let out = run_agent_for_a_second(&mut from_layout(tmp.path(), &l, &s.other_public));
    assert_agent_refused(&out, tmp.path(), &["its cosign signature does not verify", "any trusted key", "oci-layout:"]);

    // The `.sig` tag removed from index.json: unsigned.
    let tmp = tempfile::tempdir().unwrap();
    let l = layout(tmp.path());
    let mut v = index(&l);
    let before = v["manifests"].as_array().unwrap().len();
    v["manifests"].as_array_mut().unwrap().retain(|e| e["annotations"][REF_NAME] != sig_tag.as_str());
    assert_eq!(v["manifests"].as_array().unwrap().len(), before - 1, "the bundle has no {sig_tag}");
    std::fs::write(l.join("index.json"), v.to_string()).unwrap();
    let out = run_agent_for_a_second(&mut from_layout(tmp.path(), &l, &s.public));
    assert_agent_refused(&out, tmp.path(), &[&format!("unsigned (no cosign signature tag {sig_tag}")]);

    // The signature's payload blob swapped for other bytes: its digest
    // no longer names it.
    let tmp = tempfile::tempdir().unwrap();
    let l = layout(tmp.path());
    let sig_manifest = {
        let e = index(&l)["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["annotations"][REF_NAME] == sig_tag.as_str())
            .cloned()
            .unwrap();
        let d: Digest = e["digest"].as_str().unwrap().parse().unwrap();
        std::fs::read(l.join("blobs/sha256").join(d.hex())).unwrap()
    };
    let layers = sign::signature_layers(&sig_manifest).unwrap();
    let payload = l.join("blobs/sha256").join(layers[0].digest.hex());
    let mut bytes = std::fs::read(&payload).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&payload, bytes).unwrap();
    let out = run_agent_for_a_second(&mut from_layout(tmp.path(), &l, &s.public));
    assert_agent_refused(&out, tmp.path(), &["its cosign signature does not verify", "hashes to"]);

    // A validly signed payload of another manifest under this `.sig` tag.
    let tmp = tempfile::tempdir().unwrap();
    let l = layout(tmp.path());
    let subject = Subject::manifest(&manifest());
    let foreign = sign::sign_manifest(&key, "elsewhere/tracee-bpf", &Digest::of_bytes(b"another manifest")).unwrap();
    let artifact = sign::signature_artifact(&subject, &[foreign]);
    for b in &artifact.blobs {
        put_blob(&l, &b.data);
    }
    retag(&l, &sig_tag, &artifact.manifest);
    let out = run_agent_for_a_second(&mut from_layout(tmp.path(), &l, &s.public));
    assert_agent_refused(&out, tmp.path(), &["its cosign signature does not verify", "the signed statement is for"]);

    // A platform manifest whose layer is another object (same size, its
    // identity intact), with the genuine signature copied to its tag: the
    // signature names the genuine manifest, not this one.
    let tmp = tempfile::tempdir().unwrap();
    let l = layout(tmp.path());
    let mut other = s.object.clone();
    let last = other.len() - 1;
    other[last] ^= 0xff;
    let mut other_meta = s.meta.clone();
    other_meta.digest = put_blob(&l, &other);
    let other_manifest = oci::manifest(&other_meta);
    let om = put_blob(&l, &other_manifest);
    let mut v = index(&l);
    let tag = oci::tag(&s.meta.identity.kernel_release, &s.meta.identity.version, false);
    let entry =
        v["manifests"].as_array_mut().unwrap().iter_mut().find(|e| e["annotations"][REF_NAME] == tag.as_str()).unwrap();
    let xd: Digest = entry["digest"].as_str().unwrap().parse().unwrap();
    let mut x: Value = serde_json::from_slice(&std::fs::read(l.join("blobs/sha256").join(xd.hex())).unwrap()).unwrap();
    for m in x["manifests"].as_array_mut().unwrap() {
        if m["digest"] == md.as_str() {
            m["digest"] = om.as_str().into();
            m["size"] = other_manifest.len().into();
        }
    }
    let x = x.to_string().into_bytes();
    let nd = put_blob(&l, &x);
    entry["digest"] = nd.as_str().into();
    entry["size"] = x.len().into();
    std::fs::write(l.join("index.json"), v.to_string()).unwrap();
    retag(&l, &sign::signature_tag(&om), &sig_manifest);
    let out = run_agent_for_a_second(&mut from_layout(tmp.path(), &l, &s.public));
    assert_agent_refused(&out, tmp.path(), &["its cosign signature does not verify", "the signed statement is for"]);
}

#[test]
fn objects_from_oci_registries_are_verified_offline_once_the_registry_is_gone() {
    let s = signed();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let url = format!("oci://{}/bpfarm", s.addr);
    let out = agent_in(root, "never")
        .arg("--verify-key")
        .arg(&s.public)
        .args(["--registry", &url, "fetch"])
        .output()
        .unwrap();
    let text = show(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("signature verified (the cosign signature of its manifest, key"), "{text}");
    assert_eq!(std::fs::read(root.join("install").join(running_object_name())).unwrap(), s.object);
    assert!(evidence_path(root).is_file(), "{text}");

    // The registry stops: the next start verifies locally.
    drop(s.registry.lock().unwrap().take());
    let out =
        run_agent_for_a_second(agent_in(root, "never").arg("--verify-key").arg(&s.public).args(["--registry", &url]));
    let text = show(&out);
    if privileged("oci signed run, offline") {
        assert_eq!(out.status.code(), Some(0), "{text}");
        assert!(text.contains("attached"), "{text}");
    }
    assert!(text.contains("the cosign signature of its manifest, kept beside it"), "{text}");
}

/// A registry serving the signed bundle's bytes, whose cosign tags trickle
/// one byte every 100 ms, and whose platform manifest takes about 1.2 s (so
/// an attempt that gave its cosign reads a deadline of their own would run
/// well past its `--timeout`).
fn trickling_cosign_registry(layout: &Path) -> HostileServer {
    let layout = layout.to_owned();
    HostileServer::start(move |r: &Request| {
        let p = r.path.as_str();
        let blob = |d: &str| {
            let hex = d.strip_prefix("sha256:").unwrap_or("");
            std::fs::read(layout.join("blobs/sha256").join(hex)).ok()
        };
        let missing = || Reply::json(404, &json!({ "errors": [{ "code": "MANIFEST_UNKNOWN", "message": "unknown" }] }));
        if p == "/v2/" {
            return Reply::json(200, &json!({}));
        }
        if let Some(r) = p.strip_prefix("/v2/acme/tracee-bpf/manifests/") {
            let digest = if r.starts_with("sha256:") {
                Some(r.to_owned())
            } else {
                let v: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
                v["manifests"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|e| e["annotations"][REF_NAME] == r)
                    .map(|e| e["digest"].as_str().unwrap().to_owned())
            };
            let Some(bytes) = digest.as_deref().and_then(blob) else { return missing() };
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            let media = v["mediaType"].as_str().unwrap_or(oci::MANIFEST_MEDIA_TYPE).to_owned();
            let mut reply = Reply::bytes(200, &media, bytes.clone());
            if r.ends_with(".sig") || r.ends_with(".att") {
                reply.body = Body::Trickle { bytes, every: Duration::from_millis(100) };
            } else if media == oci::MANIFEST_MEDIA_TYPE {
                let every = Duration::from_millis(1200) / bytes.len() as u32;
                reply.body = Body::Trickle { bytes, every };
            }
            return reply;
        }
        match p.strip_prefix("/v2/acme/tracee-bpf/blobs/").and_then(blob) {
            Some(b) => Reply::bytes(200, "application/octet-stream", b),
            None => missing(),
        }
    })
}

#[test]
fn cosign_reads_of_an_oci_attempt_stay_within_its_timeout_and_the_next_registry_is_tried() {
    let s = signed();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let l = layout(root);
    let server = trickling_cosign_registry(&l);
    let slow = format!("oci://{}/acme", server.url.trim_start_matches("http://"));
    let started = Instant::now();
    let out = agent_in(root, "never")
        .arg("--verify-key")
        .arg(&s.public)
        .args(["--timeout", "2", "--registry", &slow, "--registry"])
        .arg(format!("oci-layout:{}", l.display()))
        .arg("fetch")
        .output()
        .unwrap();
    let took = started.elapsed();
    let text = show(&out);
    eprintln!("a registry whose cosign tags trickle, at --timeout 2, then a layout: {took:?}");
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(&format!("registry {slow}: gave up: no complete answer within 2s")), "{text}");
    assert!(text.contains("read from the OCI layout"), "{text}");
    // The attempt as a whole (object, signature tag, attestation tag) is
    // bounded by 2 s; a deadline for the object and another for its
    // signature would take over 3.2 s.
    assert!(took < Duration::from_millis(3000), "took {took:?}:\n{text}");
    assert!(server.requests().iter().any(|r| r.path.ends_with(".sig")), "the signature tag was never asked for");
    assert_eq!(std::fs::read(root.join("install").join(running_object_name())).unwrap(), s.object);
}

#[test]
fn an_unwritable_state_folder_fails_closed_and_nothing_is_loaded() {
    if !privileged("read-only state folder (mount namespace)") {
        return;
    }
    let s = signed();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let l = layout(root);
    let state = root.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    // The agent in its own mount namespace, with the state folder read-only.
    let agent_args = {
        let c = from_layout(root, &l, &s.public);
        c.get_args().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>()
    };
    let script =
        format!("mount --bind {st} {st} && mount -o remount,bind,ro {st} && exec \"$@\"", st = state.display());
    let read_only_cmd = || {
        let mut c = Command::new("unshare");
        c.args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"]);
        c.arg(bin("bpfarm-agent")).args(&agent_args);
        for v in ["TRACEE_BPF_FILE", "KERN_HEADERS", "BPFARM_REGISTRIES", "BPFARM_AGENT_CONFIG", "BPFARM_VERIFY_KEYS"] {
            c.env_remove(v);
        }
        c
    };
    let read_only = || run_agent_for_a_second(&mut read_only_cmd());
    let out = read_only();
    let text = show(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("could not be recorded in"), "{text}");
    assert!(text.contains(&state.display().to_string()) && text.contains("--state-dir"), "{text}");
    assert!(!text.contains("attached") && out.stdout.is_empty(), "loaded:\n{text}");
    assert!(!state.join("rollback.json").exists());
    // Nothing was installed either, however often it is tried: the install
    // starts only once the record moved forward (no object, no temp files).
    for _ in 0..3 {
        assert_eq!(read_only().status.code(), Some(1));
    }
    // `fetch` writes the files at once: it too is refused before writing.
    let out = read_only_cmd().arg("fetch").output().unwrap();
    let text = show(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("could not be recorded in"), "{text}");
    let left: Vec<String> = match std::fs::read_dir(root.join("install")) {
        Ok(dir) => {
            dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n != ".bpfarm.lock").collect()
        }
        Err(_) => vec![],
    };
    assert!(left.is_empty(), "the refused object left files in the install path: {left:?}");

    // Writable again: accepted and recorded. Then read-only once more: the
    // record already holds this build, so nothing needs writing and the
    // object is used.
    let out = run_agent_for_a_second(&mut from_layout(root, &l, &s.public));
    assert!(root.join("state/rollback.json").is_file(), "{}", show(&out));
    let out = read_only();
    let text = show(&out);
    assert!(!text.contains("could not be recorded"), "{text}");
    assert_eq!(out.status.code(), Some(0), "{text}");
}
