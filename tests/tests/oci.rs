//! The registry's OCI face against real peers: skopeo and Debian's
//! distribution 2.8 (copies both ways, digests unchanged), the oras Python
//! SDK, and the distribution-spec workflows (pull, push incl. chunked and
//! out-of-order, content discovery, content management) written here
//! because the upstream Go conformance suite cannot be built on this machine.

use std::io::Read;
use std::process::Command;

use bpfarm_object::{Digest, oci};
use bpfarm_tests::{
    Registry, bin, distribution, peak_rss, repo_root, running_object_name, running_release, serve, token,
};
use serde_json::{Value, json};

/// A registry holding the running kernel's object, and its push token.
fn registry_with_object(dir: &std::path::Path) -> (Registry, String) {
    let p = bpfarm_tests::registry_with_running_object(dir);
    (p.registry, p.push_token)
}

fn host(url: &str) -> &str {
    url.strip_prefix("http://").unwrap()
}

fn skopeo(args: &[&str]) -> std::process::Output {
    let out =
        Command::new("skopeo").args(args).output().expect("skopeo is not installed (ci/install-deps installs it)");
    assert!(out.status.success(), "skopeo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// `skopeo copy --all --preserve-digests` from one plain-http registry's
/// image to another's, with `extra` flags.
fn skopeo_copy(from: &str, to: &str, extra: &[&str]) {
    let (from, to) = (format!("docker://{from}"), format!("docker://{to}"));
    let mut args = vec!["copy", "--all", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false"];
    args.extend_from_slice(extra);
    args.extend([from.as_str(), to.as_str()]);
    skopeo(&args);
}

fn raw_manifest(reference: &str) -> Vec<u8> {
    skopeo(&["inspect", "--tls-verify=false", "--raw", &format!("docker://{reference}")]).stdout
}

#[test]
fn skopeo_copies_to_distribution_and_back_with_digests_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (reg, _) = registry_with_object(dir.path());
    let dist = distribution();
    let tag = oci::tag(&running_release(), "v0.1.0", false);
    let ours = format!("{}/bpfarm/tracee-bpf:{tag}", host(&reg.url));
    let theirs = format!("{}/mirror/tracee-bpf:{tag}", dist.addr);
    let index = raw_manifest(&ours);
    let v: Value = serde_json::from_slice(&index).unwrap();
    assert_eq!(v["mediaType"], oci::INDEX_MEDIA_TYPE);
    assert_eq!(v["manifests"][0]["platform"]["architecture"], "amd64");
    assert_eq!(v["annotations"][oci::ANN_RELEASE], running_release());

    skopeo_copy(&ours, &theirs, &[]);
    assert_eq!(
        Digest::of_bytes(&raw_manifest(&theirs)),
        Digest::of_bytes(&index),
        "distribution holds a different index"
    );

    // Back into a fresh bpfarm registry: same digests, and the artifact
    // becomes a /v1 object of that registry.
    let fresh = dir.path().join("fresh");
    let push2 = token(&fresh, "ci", "push");
    let reg2 = serve(&fresh);
    let back = format!("{}/mirror/tracee-bpf:{tag}", host(&reg2.url));
    skopeo_copy(&theirs, &back, &["--dest-creds", &format!("ci:{push2}")]);
    assert_eq!(Digest::of_bytes(&raw_manifest(&back)), Digest::of_bytes(&index));
    let client = bpfarm_tests::client(&reg2.url, None);
    let meta = client.lookup(&running_release(), "x86_64", "v0.1.0").unwrap().expect("the OCI push is a /v1 object");
    let local = std::fs::read(dir.path().join("out/x86_64").join(&meta.file_name)).unwrap();
    assert_eq!(client.download(&meta.digest).unwrap(), local);
}

#[test]
fn oras_sdk_pushes_and_pulls_with_the_exact_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let (reg, push) = registry_with_object(dir.path());
    let script = repo_root().join("tests/oras_roundtrip.py");
    // Pull bpfarm's own artifact (the amd64 manifest of the index).
    let tag = oci::tag(&running_release(), "v0.1.0", false);
    let index: Value =
        serde_json::from_slice(&raw_manifest(&format!("{}/bpfarm/tracee-bpf:{tag}", host(&reg.url)))).unwrap();
    let amd64 = index["manifests"][0]["digest"].as_str().unwrap();
    let out_dir = dir.path().join("pulled");
    let out = Command::new("python3")
        .arg(&script)
        .args(["pull", host(&reg.url), &format!("bpfarm/tracee-bpf@{amd64}")])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let name = running_object_name();
    let pulled = out_dir.join(&name);
    assert!(pulled.is_file(), "oras wrote {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(std::fs::read(&pulled).unwrap(), std::fs::read(dir.path().join("out/x86_64").join(&name)).unwrap());

    // Push through oras, pull it back through oras.
    let file = dir.path().join("upload").join("tracee.bpf.6_1_0-99-amd64.v0_1_0.o");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, b"\x7fELF pushed by oras").unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .args(["push", host(&reg.url), "oras/tracee-bpf:test"])
        .arg(&file)
        .arg(&push)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let back = dir.path().join("back");
    let out = Command::new("python3")
        .arg(&script)
        .args(["pull", host(&reg.url), "oras/tracee-bpf:test"])
        .arg(&back)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(back.join("tracee.bpf.6_1_0-99-amd64.v0_1_0.o")).unwrap(), b"\x7fELF pushed by oras");
}

/// A tiny HTTP helper for the workflows: method, URL, headers, body.
struct Http {
    agent: reqwest::blocking::Client,
    base: String,
    push: String,
}

struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, k: &str) -> String {
        self.headers.get(k).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
    }
    fn code(&self) -> String {
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

impl Http {
    fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>, auth: bool) -> Resp {
        let url = if path.starts_with("http") { path.to_owned() } else { format!("{}{path}", self.base) };
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut b = self.agent.request(method, &url);
        if auth {
            b = b.header("Authorization", format!("Bearer {}", self.push));
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = b.body(body.map(|b| b.to_vec()).unwrap_or_default()).send().unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().map(|b| b.to_vec()).unwrap_or_default();
        Resp { status, headers, body }
    }
}

#[test]
fn distribution_spec_workflows() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("registry");
    let push = token(&data, "ci", "push");
    let read = token(&data, "fleet", "read");
    let reg = serve(&data);
    let agent = reqwest::blocking::Client::new();
    let h = Http { agent, base: reg.url.clone(), push };

    // Version check: the challenge without credentials, 200 with them.
    let r = h.call("GET", "/v2/", &[], None, false);
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").starts_with("Basic"));
    let r = h.call("GET", "/v2/", &[], None, true);
    assert_eq!((r.status, r.header("docker-distribution-api-version")), (200, "registry/2.0".into()));

    // Push: monolithic POST ?digest=.
    let config = b"{}".to_vec();
    let cd = Digest::of_bytes(&config);
    let r = h.call(
        "POST",
        &format!("/v2/w/app/blobs/uploads/?digest={cd}"),
        &[("Content-Type", "application/octet-stream")],
        Some(&config),
        true,
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("location"), format!("/v2/w/app/blobs/{cd}"));
    // Without a push token: 401; with a read token: 403.
    assert_eq!(h.call("POST", "/v2/w/app/blobs/uploads/", &[], None, false).status, 401);
    let r = h.call(
        "POST",
        "/v2/w/app/blobs/uploads/",
        &[("Authorization", &format!("Basic {}", b64(&format!("fleet:{read}"))))],
        None,
        false,
    );
    assert_eq!((r.status, r.code()), (403, "DENIED".into()));

    // Push: chunked, with an out-of-order chunk refused.
    let layer: Vec<u8> = (0..30_000u32).map(|i| (i % 251) as u8).collect();
    let ld = Digest::of_bytes(&layer);
    let r = h.call("POST", "/v2/w/app/blobs/uploads/", &[], None, true);
    assert_eq!(r.status, 202);
    let loc = r.header("location");
    let r = h.call(
        "PATCH",
        &loc,
        &[("Content-Range", "0-9999"), ("Content-Type", "application/octet-stream")],
        Some(&layer[..10_000]),
        true,
    );
    assert_eq!((r.status, r.header("range")), (202, "0-9999".into()));
    let r = h.call("PATCH", &loc, &[("Content-Range", "20000-29999")], Some(&layer[20_000..]), true);
    assert_eq!(r.status, 416, "an out-of-order chunk was accepted");
    let r = h.call("PATCH", &loc, &[("Content-Range", "10000-19999")], Some(&layer[10_000..20_000]), true);
    assert_eq!(r.status, 202);
    let r = h.call("GET", &loc, &[], None, true);
    assert_eq!((r.status, r.header("range")), (204, "0-19999".into()));
    let r =
        h.call("PUT", &format!("{loc}?digest={ld}"), &[("Content-Range", "20000-29999")], Some(&layer[20_000..]), true);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    // A wrong digest is refused and nothing is stored.
    let r = h.call("POST", "/v2/w/app/blobs/uploads/", &[], None, true);
    let wrong = Digest::of_bytes(b"something else");
    let r = h.call("PUT", &format!("{}?digest={wrong}", r.header("location")), &[], Some(b"these bytes"), true);
    assert_eq!((r.status, r.code()), (400, "DIGEST_INVALID".into()));
    assert_eq!(h.call("HEAD", &format!("/v2/w/app/blobs/{wrong}"), &[], None, false).status, 404);

    // Pull: blobs with length, digest, ranges.
    let r = h.call("HEAD", &format!("/v2/w/app/blobs/{ld}"), &[], None, false);
    assert_eq!(
        (r.status, r.header("content-length"), r.header("docker-content-digest")),
        (200, "30000".into(), ld.to_string())
    );
    let r = h.call("GET", &format!("/v2/w/app/blobs/{ld}"), &[("Range", "bytes=100-199")], None, false);
    assert_eq!((r.status, &r.body[..]), (206, &layer[100..200]));
    assert_eq!(h.call("GET", &format!("/v2/w/app/blobs/{ld}"), &[("Range", "bytes=40000-")], None, false).status, 416);
    assert_eq!(h.call("GET", &format!("/v2/other/blobs/{ld}"), &[], None, false).code(), "BLOB_UNKNOWN");

    // Manifests: a missing blob is refused; then by tag, by digest.
    let manifest = |layer: &Digest, size: usize, extra: Value| {
        let mut m = json!({
            "schemaVersion": 2, "mediaType": oci::MANIFEST_MEDIA_TYPE,
            "config": { "mediaType": oci::EMPTY_MEDIA_TYPE, "digest": cd.as_str(), "size": 2 },
            "layers": [{ "mediaType": "application/octet-stream", "digest": layer.as_str(), "size": size }]
        });
        for (k, v) in extra.as_object().unwrap() {
            m[k] = v.clone();
        }
        serde_json::to_vec(&m).unwrap()
    };
    let ct = [("Content-Type", oci::MANIFEST_MEDIA_TYPE)];
    let missing = manifest(&Digest::of_bytes(b"never uploaded"), 14, json!({}));
    let r = h.call("PUT", "/v2/w/app/manifests/v1", &ct, Some(&missing), true);
    assert_eq!((r.status, r.code()), (400, "MANIFEST_BLOB_UNKNOWN".into()));
    let m = manifest(&ld, layer.len(), json!({}));
    let md = Digest::of_bytes(&m);
    let r = h.call("PUT", "/v2/w/app/manifests/v1", &ct, Some(&m), true);
    assert_eq!(
        (r.status, r.header("docker-content-digest"), r.header("location")),
        (201, md.to_string(), format!("/v2/w/app/manifests/{md}"))
    );
    assert_eq!(h.call("PUT", "/v2/w/app/manifests/bad+tag", &ct, Some(&m), true).code(), "TAG_INVALID");
    assert_eq!(
        h.call("PUT", &format!("/v2/w/app/manifests/{}", Digest::of_bytes(b"x")), &ct, Some(&m), true).code(),
        "DIGEST_INVALID"
    );
    for reference in ["v1".to_owned(), md.to_string()] {
        let r = h.call("GET", &format!("/v2/w/app/manifests/{reference}"), &[], None, false);
        assert_eq!(
            (r.status, r.header("content-type"), r.body.clone()),
            (200, oci::MANIFEST_MEDIA_TYPE.into(), m.clone()),
            "exact bytes back"
        );
        let r = h.call("HEAD", &format!("/v2/w/app/manifests/{reference}"), &[], None, false);
        assert_eq!((r.status, r.header("content-length")), (200, m.len().to_string()));
    }
    // Cross-repository mount.
    let r = h.call("POST", &format!("/v2/w/copy/blobs/uploads/?mount={ld}&from=w/app"), &[], None, true);
    assert_eq!((r.status, r.header("location")), (201, format!("/v2/w/copy/blobs/{ld}")));

    // Discovery: tags with pagination, referrers with filtering, catalog.
    for t in ["v2", "v3"] {
        assert_eq!(h.call("PUT", &format!("/v2/w/app/manifests/{t}"), &ct, Some(&m), true).status, 201);
    }
    let r = h.call("GET", "/v2/w/app/tags/list?n=2", &[], None, false);
    let tags: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(tags["tags"], json!(["v1", "v2"]));
    assert_eq!(r.header("link"), "</v2/w/app/tags/list?n=2&last=v2>; rel=\"next\"");
    let r = h.call("GET", "/v2/w/app/tags/list?n=2&last=v2", &[], None, false);
    assert_eq!(serde_json::from_slice::<Value>(&r.body).unwrap()["tags"], json!(["v3"]));
    assert!(r.header("link").is_empty());
    let sig = manifest(
        &ld,
        layer.len(),
        json!({ "artifactType": "application/vnd.example.sig", "subject": { "mediaType": oci::MANIFEST_MEDIA_TYPE, "digest": md.as_str(), "size": m.len() } }),
    );
    let sd = Digest::of_bytes(&sig);
    let r = h.call("PUT", &format!("/v2/w/app/manifests/{sd}"), &ct, Some(&sig), true);
    assert_eq!((r.status, r.header("oci-subject")), (201, md.to_string()));
    let r = h.call("GET", &format!("/v2/w/app/referrers/{md}"), &[], None, false);
    let refs: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        (refs["manifests"][0]["digest"].as_str(), refs["manifests"][0]["artifactType"].as_str()),
        (Some(sd.as_str()), Some("application/vnd.example.sig"))
    );
    let r = h.call("GET", &format!("/v2/w/app/referrers/{md}?artifactType=application/vnd.other"), &[], None, false);
    assert_eq!(
        (serde_json::from_slice::<Value>(&r.body).unwrap()["manifests"].clone(), r.header("oci-filters-applied")),
        (json!([]), "artifactType".into())
    );
    let r = h.call("GET", "/v2/_catalog", &[], None, false);
    assert_eq!(serde_json::from_slice::<Value>(&r.body).unwrap()["repositories"], json!(["w/app"]));

    // Management: delete a tag, a manifest, a blob, an upload.
    assert_eq!(h.call("DELETE", "/v2/w/app/manifests/v3", &[], None, true).status, 202);
    assert_eq!(h.call("GET", "/v2/w/app/manifests/v3", &[], None, false).code(), "MANIFEST_UNKNOWN");
    assert_eq!(h.call("DELETE", &format!("/v2/w/app/manifests/{md}"), &[], None, true).status, 202);
    assert_eq!(h.call("GET", "/v2/w/app/manifests/v1", &[], None, false).status, 404);
    assert_eq!(h.call("DELETE", &format!("/v2/w/copy/blobs/{ld}"), &[], None, true).status, 202);
    assert_eq!(h.call("GET", &format!("/v2/w/copy/blobs/{ld}"), &[], None, false).code(), "BLOB_UNKNOWN");
    let r = h.call("POST", "/v2/w/app/blobs/uploads/", &[], None, true);
    let loc = r.header("location");
    assert_eq!(h.call("DELETE", &loc, &[], None, true).status, 204);
    assert_eq!(h.call("GET", &loc, &[], None, true).code(), "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(h.call("GET", "/v2/Bad_Name/tags/list", &[], None, false).code(), "NAME_INVALID");
}

#[test]
fn a_100_mb_blob_upload_streams_without_growing_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("registry");
    let push = token(&data, "ci", "push");
    let reg = serve(&data);
    const SIZE: u64 = 100 << 20;
    /// Deterministic bytes, generated while sent.
    struct Gen(u64);
    impl Read for Gen {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = (buf.len() as u64).min(SIZE - self.0) as usize;
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = (((self.0 + i as u64) * 2654435761) >> 13) as u8;
            }
            self.0 += n as u64;
            Ok(n)
        }
    }
    let digest = Digest::of_reader(Gen(0)).unwrap().0;
    let before = peak_rss(reg.child.id());
    let agent = reqwest::blocking::Client::new();
    let resp = agent
        .post(format!("{}/v2/big/blob/blobs/uploads/?digest={digest}", reg.url))
        .header("Authorization", format!("Bearer {push}"))
        .body(reqwest::blocking::Body::sized(Gen(0), SIZE))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let after = peak_rss(reg.child.id());
    eprintln!("registry peak RSS: {} MiB before, {} MiB after a 100 MiB upload", before >> 20, after >> 20);
    assert!(after < 40 << 20, "peak RSS {} MiB: the body was buffered", after >> 20);
    let head = agent.head(format!("{}/v2/big/blob/blobs/{digest}", reg.url)).send().unwrap();
    assert_eq!(head.headers()["content-length"], SIZE.to_string().as_str());
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn builder_publishes_into_distribution_and_the_agent_pulls_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let dist = distribution();
    let target = format!("oci://{}/acme", dist.addr);
    let build = |report: &str| {
        let out = Command::new(bin("bpfarm-builder"))
            .args(["build", "--matrix"])
            .arg(repo_root().join("kernels/default.toml"))
            .arg("--package-cache")
            .arg(bpfarm_tests::fixture_debs())
            .args(["--running-kernel", "--no-progress", "--publish", &target, "--cache-dir"])
            .arg(dir.path().join("cache"))
            .arg("--out")
            .arg(dir.path().join("out"))
            .arg("--report")
            .arg(dir.path().join(report))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        serde_json::from_slice::<Value>(&std::fs::read(dir.path().join(report)).unwrap()).unwrap()
    };
    assert_eq!(build("r1.json")["publish"]["published"], 5);
    let again = build("r2.json");
    assert_eq!((again["publish"]["published"].as_u64(), again["publish"]["skipped"].as_u64()), (Some(0), Some(5)));
    let index: Value =
        serde_json::from_slice(&raw_manifest(&format!("{}/acme/tracee-bpf:6.12.117_deb12-arm64.v0.1.0", dist.addr)))
            .unwrap();
    assert_eq!(index["manifests"][0]["platform"]["architecture"], "arm64");
    assert_eq!(index["annotations"][oci::ANN_RELEASE], "6.12.117+deb12-arm64");

    // One release on two arches (as Ubuntu's are): publishing the second
    // arch keeps the first in the index.
    use bpfarm_object::oci_client::{OciRegistry, OciTarget};
    use bpfarm_object::{Arch, Identity};
    let transport = bpfarm_object::http::Transport::new(Default::default()).unwrap();
    let reg = OciRegistry::new(OciTarget::parse(&target).unwrap(), oci_client_anonymous(), &transport).unwrap();
    for (arch, bytes) in [(Arch::X86_64, &b"amd64 object"[..]), (Arch::Aarch64, &b"arm64 object"[..])] {
        let meta = bpfarm_tests::sample_metadata("5.15.0-91-generic", arch, bytes);
        reg.publish(&meta, bytes).unwrap();
    }
    let index: Value =
        serde_json::from_slice(&raw_manifest(&format!("{}/acme/tracee-bpf:5.15.0-91-generic.v0.1.0", dist.addr)))
            .unwrap();
    let arches: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(arches, ["amd64", "arm64"]);
    let arm_id = Identity::new("5.15.0-91-generic", Arch::Aarch64, "v0.1.0").unwrap();
    let (_, arm) = transport.within(reg.fetch(&arm_id)).unwrap().unwrap().unwrap();
    assert_eq!(arm, b"arm64 object");

    // The agent pulls this host's object from distribution, verifies and loads it.
    let name = running_object_name();
    let built = std::fs::read(dir.path().join("out/x86_64").join(&name)).unwrap();
    let install = dir.path().join("install");
    let run_or_fetch: &[&str] = if bpfarm_tests::privileged("agent loads the object pulled from distribution") {
        &["run", "--duration", "1"]
    } else {
        &["fetch"]
    };
    let out = Command::new(bin("bpfarm-agent"))
        .arg("--install-path")
        .arg(&install)
        .args(["--build-policy", "never", "--registry", &target])
        .args(run_or_fetch)
        .env_remove("TRACEE_BPF_FILE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("verified against its manifest"), "{err}");
    if run_or_fetch[0] == "run" {
        assert!(err.contains("attached"), "{err}");
    }
    assert_eq!(std::fs::read(install.join(&name)).unwrap(), built);

    // Bytes altered inside distribution's own storage are refused.
    let layer = Digest::of_bytes(&built);
    let stored =
        dist.data.join("docker/registry/v2/blobs/sha256").join(&layer.hex()[..2]).join(layer.hex()).join("data");
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[300] ^= 0xff;
    std::fs::write(&stored, bytes).unwrap();
    let install2 = dir.path().join("install2");
    let out = Command::new(bin("bpfarm-agent"))
        .arg("--install-path")
        .arg(&install2)
        .args(["--build-policy", "never", "--registry", &target, "fetch"])
        .env_remove("TRACEE_BPF_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!install2.join(&name).exists());
}

fn oci_client_anonymous() -> oci_client::secrets::RegistryAuth {
    oci_client::secrets::RegistryAuth::Anonymous
}

#[test]
fn stale_upload_sessions_expire_and_are_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("registry");
    let push = token(&data, "ci", "push");
    let reg =
        bpfarm_tests::serve_with(&["--listen", "127.0.0.1:0", "--upload-ttl", "1", "--data", data.to_str().unwrap()]);
    let agent = reqwest::blocking::Client::new();
    let h = Http { agent, base: reg.url.clone(), push };
    let r = h.call("POST", "/v2/w/app/blobs/uploads/", &[], None, true);
    let loc = r.header("location");
    assert_eq!(h.call("PATCH", &loc, &[], Some(b"half an upload"), true).status, 202);
    let id = loc.rsplit('/').next().unwrap().to_owned();
    assert!(data.join("blobs/uploads").join(&id).is_file());
    // The TTL is what is under test: let it pass (no readiness signal exists for "old").
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(h.call("POST", "/v2/w/app/blobs/uploads/", &[], None, true).status, 202);
    assert_eq!(h.call("GET", &loc, &[], None, true).code(), "BLOB_UPLOAD_UNKNOWN");
    assert!(!data.join("blobs/uploads").join(&id).exists(), "the stale session's bytes stayed");
}

#[test]
fn v2_validates_every_write_in_full_before_storing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("registry");
    let push = token(&data, "ci", "push");
    let reg = serve(&data);
    let agent = reqwest::blocking::Client::new();
    let h = Http { agent, base: reg.url.clone(), push: push.clone() };
    let upload = |repo: &str, bytes: &[u8]| {
        let d = Digest::of_bytes(bytes);
        let r = h.call("POST", &format!("/v2/{repo}/blobs/uploads/?digest={d}"), &[], Some(bytes), true);
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        d
    };
    let config = upload("push/tracee-bpf", oci::EMPTY_CONFIG);
    let object = b"\x7fELF an object pushed through OCI".to_vec();
    let layer = upload("push/tracee-bpf", &object);
    let release = "6.1.0-70-amd64";
    let artifact = |release: &str, layer_size: Value| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": oci::MANIFEST_MEDIA_TYPE, "artifactType": oci::ARTIFACT_TYPE,
            "config": { "mediaType": oci::EMPTY_MEDIA_TYPE, "digest": config.as_str(), "size": 2 },
            "layers": [{ "mediaType": oci::LAYER_MEDIA_TYPE, "digest": layer.as_str(), "size": layer_size,
                         "annotations": { oci::ANN_TITLE: bpfarm_object::object_file_name(release, "v0.1.0") } }],
            "annotations": { oci::ANN_RELEASE: release, oci::ANN_ARCH: "x86_64", oci::ANN_VERSION: "v0.1.0" }
        }))
        .unwrap()
    };
    let ct = [("Content-Type", oci::MANIFEST_MEDIA_TYPE)];
    let nothing_stored = |what: &str, bytes: &[u8]| {
        let d = Digest::of_bytes(bytes);
        assert_eq!(
            h.call("GET", &format!("/v2/push/tracee-bpf/manifests/{d}"), &[], None, false).status,
            404,
            "{what}"
        );
        assert_eq!(
            h.call("GET", "/v2/push/tracee-bpf/tags/list", &[], None, false).body,
            br#"{"name":"push/tracee-bpf","tags":[]}"#,
            "{what}"
        );
        assert_eq!(
            h.call("GET", &format!("/v1/objects/x86_64/v0.1.0/{release}"), &[], None, false).status,
            404,
            "{what}"
        );
    };
    // A layer size that is not the stored blob's (1, 2^64-1): refused, and
    // nothing is stored or indexed.
    for size in [json!(1), json!(u64::MAX)] {
        let m = artifact(release, size.clone());
        let r = h.call("PUT", "/v2/push/tracee-bpf/manifests/v1", &ct, Some(&m), true);
        assert_eq!((r.status, r.code()), (400, "SIZE_INVALID".into()), "size {size}");
        nothing_stored("wrong size", &m);
    }
    // An identity the /v1 rules refuse.
    let m = artifact("../../etc", json!(object.len()));
    let r = h.call("PUT", "/v2/push/tracee-bpf/manifests/v1", &ct, Some(&m), true);
    assert_eq!((r.status, r.code()), (400, "MANIFEST_INVALID".into()));
    assert!(String::from_utf8_lossy(&r.body).contains("invalid kernel release"));
    // A subject that is not a descriptor: refused before anything is stored
    // (this used to answer 400 after storing and tagging the manifest).
    let mut v: Value = serde_json::from_slice(&artifact(release, json!(object.len()))).unwrap();
    v["subject"] = json!({ "mediaType": oci::MANIFEST_MEDIA_TYPE, "digest": "sha256:not-a-digest", "size": 1 });
    let m = serde_json::to_vec(&v).unwrap();
    let r = h.call("PUT", "/v2/push/tracee-bpf/manifests/v1", &ct, Some(&m), true);
    assert_eq!((r.status, r.code()), (400, "MANIFEST_INVALID".into()));
    nothing_stored("bad subject", &m);

    // The valid artifact is stored and becomes current in both faces.
    let m = artifact(release, json!(object.len()));
    let md = Digest::of_bytes(&m);
    let r = h.call("PUT", "/v2/push/tracee-bpf/manifests/v1", &ct, Some(&m), true);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let v1 = h.call("GET", &format!("/v1/objects/x86_64/v0.1.0/{release}"), &[], None, false);
    assert_eq!(serde_json::from_slice::<Value>(&v1.body).unwrap()["digest"], layer.as_str());
    let tag = oci::tag(release, "v0.1.0", false);
    let index = h.call("GET", &format!("/v2/bpfarm/tracee-bpf/manifests/{tag}"), &[], None, false);
    assert_eq!(index.status, 200, "the canonical OCI form was not written");

    // An index naming a tag, or a child of the wrong size.
    let idx = |child: &str, size: usize| {
        serde_json::to_vec(&json!({ "schemaVersion": 2, "mediaType": oci::INDEX_MEDIA_TYPE,
            "manifests": [{ "mediaType": oci::MANIFEST_MEDIA_TYPE, "digest": child, "size": size,
                            "platform": { "architecture": "amd64", "os": "linux" } }] }))
        .unwrap()
    };
    let ict = [("Content-Type", oci::INDEX_MEDIA_TYPE)];
    let r = h.call("PUT", "/v2/push/tracee-bpf/manifests/all", &ict, Some(&idx("v1", m.len())), true);
    assert_eq!((r.status, r.code()), (400, "MANIFEST_INVALID".into()));
    let r = h.call("PUT", "/v2/push/tracee-bpf/manifests/all", &ict, Some(&idx(md.as_str(), m.len() + 1)), true);
    assert_eq!((r.status, r.code()), (400, "SIZE_INVALID".into()));
    let r = h.call("PUT", "/v2/push/tracee-bpf/manifests/all", &ict, Some(&idx(md.as_str(), m.len())), true);
    assert_eq!(r.status, 201);

    // A different object for the held identity: the /v1 rule (409), nothing stored.
    let other = b"\x7fELF a different object".to_vec();
    let other_layer = upload("push/tracee-bpf", &other);
    let mut v: Value = serde_json::from_slice(&m).unwrap();
    v["layers"][0]["digest"] = json!(other_layer.as_str());
    v["layers"][0]["size"] = json!(other.len());
    let m2 = serde_json::to_vec(&v).unwrap();
    let r = h.call("PUT", &format!("/v2/push/tracee-bpf/manifests/{}", Digest::of_bytes(&m2)), &ct, Some(&m2), true);
    assert_eq!((r.status, r.code()), (409, "MANIFEST_INVALID".into()));
    assert!(String::from_utf8_lossy(&r.body).contains("replace=true"));
    assert_eq!(
        h.call("GET", &format!("/v2/push/tracee-bpf/manifests/{}", Digest::of_bytes(&m2)), &[], None, false).status,
        404
    );

    // In the canonical repository the OCI form of /v1 objects holds: its tag
    // names only an index reaching them, and it cannot be deleted.
    let r = h.call("PUT", &format!("/v2/bpfarm/tracee-bpf/manifests/{tag}"), &ct, Some(&m), true);
    assert_eq!((r.status, r.code()), (400, "MANIFEST_INVALID".into()), "a plain manifest under an object's tag");
    let index_digest = index.header("docker-content-digest");
    for (method, path) in [
        ("DELETE", format!("/v2/bpfarm/tracee-bpf/manifests/{tag}")),
        ("DELETE", format!("/v2/bpfarm/tracee-bpf/manifests/{index_digest}")),
        ("DELETE", format!("/v2/bpfarm/tracee-bpf/blobs/{layer}")),
    ] {
        let r = h.call(method, &path, &[], None, true);
        assert_eq!((r.status, r.code()), (409, "DENIED".into()), "{method} {path}");
    }
    let empty_index =
        serde_json::to_vec(&json!({ "schemaVersion": 2, "mediaType": oci::INDEX_MEDIA_TYPE, "manifests": [] }))
            .unwrap();
    let r = h.call("PUT", &format!("/v2/bpfarm/tracee-bpf/manifests/{tag}"), &ict, Some(&empty_index), true);
    assert_eq!((r.status, r.code()), (400, "MANIFEST_INVALID".into()));
    assert_eq!(
        h.call("GET", &format!("/v2/bpfarm/tracee-bpf/manifests/{tag}"), &[], None, false)
            .header("docker-content-digest"),
        index_digest
    );

    // A blob the store cannot read is a 500 (UNKNOWN), not BLOB_UNKNOWN;
    // a blob that is gone is BLOB_UNKNOWN.
    let path = data.join("blobs/sha256").join(&layer.hex()[..2]).join(layer.hex());
    let saved = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&path, &path).unwrap(); // a loop: open fails with ELOOP
    let r = h.call("GET", &format!("/v2/push/tracee-bpf/blobs/{layer}"), &[], None, false);
    assert_eq!((r.status, r.code()), (500, "UNKNOWN".into()));
    let r = h.call("GET", &format!("/v1/blobs/{layer}"), &[], None, false);
    assert_eq!(r.status, 500);
    std::fs::remove_file(&path).unwrap();
    let r = h.call("GET", &format!("/v2/push/tracee-bpf/blobs/{layer}"), &[], None, false);
    assert_eq!((r.status, r.code()), (404, "BLOB_UNKNOWN".into()));
    std::fs::write(&path, saved).unwrap();
}
