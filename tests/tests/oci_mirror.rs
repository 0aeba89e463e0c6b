//! `bpfarm-registry mirror --from oci://…` (issue #13): the real builder
//! publishes a signed object to the real docker-registry with `--publish
//! oci://`, and the registry mirrors it from there into an empty data
//! folder, signatures and all, incrementally, under `--trusted-key`; a
//! hostile OCI upstream (a loopback server: a layer whose digest lies, an
//! endless tag list) is refused with nothing stored.

use std::path::Path;
use std::process::{Command, Output};

use bpfarm_object::{Arch, Digest, oci};
use bpfarm_tests::hostile::{HostileServer, Reply};
use bpfarm_tests::{
    beside, bin, built_object, distribution, openssl_key, registry_snapshot, running_kernel_build, sample_metadata,
    serve, show, stored_blobs,
};
use serde_json::{Value, json};

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn mirror(data: &Path, from: &str, extra: &[&str]) -> Output {
    Command::new(bin("bpfarm-registry"))
        .args(["mirror", "--data", p(data), "--from", from])
        .args(extra)
        .env_remove("BPFARM_REGISTRY_TRUSTED_KEYS")
        .env_remove("BPFARM_MIRROR_TOKEN")
        .env("DOCKER_CONFIG", data.with_extension("no-docker-config"))
        .output()
        .unwrap()
}

/// `bpfarm-builder build --running-kernel` into `dir/out`, with `args`.
fn build(dir: &Path, args: &[&str]) -> Output {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("oci-mirror-cache");
    running_kernel_build(&cache, &dir.join("out")).args(args).output().expect("running bpfarm-builder")
}

#[test]
fn mirror_from_an_oci_registry_carries_signed_objects_incrementally_and_obeys_trusted_keys() {
    let home = tempfile::tempdir().unwrap();
    let (key, public) = openssl_key(home.path(), "signer");
    let (_, stranger) = openssl_key(home.path(), "stranger");
    let dist = distribution();
    let target = format!("oci://{}/ns", dist.addr);
    let out = build(home.path(), &["--sign-key", p(&key), "--publish", &target]);
    assert!(out.status.success(), "{}", show(&out));
    let (object, meta) = built_object(&home.path().join("out"));
    let id = &meta.identity;

    // Cut mid-way: a proxy in front of the registry breaks the layer's
    // download. The run fails and nothing of the release is visible.
    let dmz = home.path().join("dmz");
    let upstream = format!("http://{}", dist.addr);
    let layer = format!("/v2/ns/tracee-bpf/blobs/{}", meta.digest);
    let size = meta.size;
    let proxy = HostileServer::start(move |req| {
        if req.path == layer {
            let mut r = Reply::bytes(200, "application/octet-stream", vec![]);
            r.body = bpfarm_tests::hostile::Body::Stream { total: size / 2, content_length: Some(size) };
            return r;
        }
        let mut get = reqwest::blocking::Client::new().get(format!("{upstream}{}", req.path));
        if let Some(a) = req.header("accept") {
            get = get.header("Accept", a);
        }
        let r = get.send().unwrap();
        let status = r.status().as_u16();
        let ct = r.headers().get("content-type").and_then(|h| h.to_str().ok()).unwrap_or("").to_owned();
        Reply::bytes(status, &ct, r.bytes().unwrap().to_vec())
    });
    let cut = format!("oci://{}/ns", proxy.url.trim_start_matches("http://"));
    let o = mirror(&dmz, &cut, &["--trusted-key", p(&public)]);
    assert!(!o.status.success(), "{}", show(&o));
    eprintln!("cut mid-way: {}", show(&o));
    assert!(stored_blobs(&dmz).is_empty(), "a cut run left blobs visible: {:?}", stored_blobs(&dmz));
    drop(proxy);

    // Rerun from the registry itself, into the same folder, under the
    // signer's key: it completes.
    let o = mirror(&dmz, &target, &["--trusted-key", p(&public)]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    eprintln!("first full run: {}", show(&o));
    let said = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(said.contains("1 objects published, 0 refused"), "{}", show(&o));
    assert!(!said.contains(" 0 fetched"), "{}", show(&o));
    {
        let served = serve(&dmz);
        let url = format!("{}/v1/objects/{}/{}/{}", served.url, id.arch.uname(), id.version, id.kernel_release);
        let r = reqwest::blocking::get(&url).unwrap();
        assert_eq!(r.status().as_u16(), 200, "{url}");
        let v: Value = r.json().unwrap();
        assert_eq!(v["digest"], meta.digest.as_str(), "{v}");
        let sig = std::fs::read(beside(&object, ".sig")).unwrap();
        let att = std::fs::read(beside(&object, ".intoto.jsonl")).unwrap();
        assert_eq!(v["signature"]["digest"], Digest::of_bytes(&sig).as_str(), "{v}");
        assert_eq!(v["attestation"]["digest"], Digest::of_bytes(&att).as_str(), "{v}");
        // The files themselves, byte for byte what the builder wrote.
        for (suffix, want) in [("", std::fs::read(&object).unwrap()), (".sig", sig), (".intoto.jsonl", att)] {
            let f = format!("{}/{}/{}/{}{suffix}", served.url, id.version, id.arch.uname(), meta.file_name);
            let got = reqwest::blocking::get(&f).unwrap();
            assert_eq!(got.status().as_u16(), 200, "{f}");
            assert_eq!(got.bytes().unwrap().to_vec(), want, "{f}");
        }
        // The cosign tags as the OCI upstream has them.
        let manifest = Digest::of_bytes(&oci::manifest(&meta));
        for tag in [
            bpfarm_object::sign::cosign::signature_tag(&manifest),
            bpfarm_object::sign::cosign::attestation_tag(&manifest),
            bpfarm_object::sign::files_tag(&manifest),
        ] {
            let get = |base: String| {
                let r = reqwest::blocking::Client::new()
                    .get(format!("{base}/manifests/{tag}"))
                    .header("Accept", oci::MANIFEST_MEDIA_TYPE)
                    .send()
                    .unwrap();
                (r.status().as_u16(), r.bytes().unwrap().to_vec())
            };
            let here = get(format!("{}/v2/bpfarm/tracee-bpf", served.url));
            assert_eq!(here.0, 200, "{tag}");
            assert_eq!(here, get(format!("http://{}/v2/ns/tracee-bpf", dist.addr)), "{tag}");
        }
    }

    // A second run transfers nothing new and changes nothing.
    let before = registry_snapshot(&dmz);
    let o = mirror(&dmz, &target, &["--trusted-key", p(&public)]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    eprintln!("second run: {}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(" 0 fetched (0 bytes)"), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("0 objects published"), "{}", show(&o));
    assert_eq!(registry_snapshot(&dmz), before, "a second mirror run changed the data folder");

    // Another key: everything refused, nothing stored, exit 1.
    let other = home.path().join("other");
    let o = mirror(&other, &target, &["--trusted-key", p(&stranger)]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("refused tag ") && err.contains("trusted key"), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("0 objects published, 1 refused"), "{}", show(&o));
    assert!(stored_blobs(&other).is_empty(), "a refused mirror stored blobs: {:?}", stored_blobs(&other));
    let (dump, _) = registry_snapshot(&other);
    assert!(!dump.contains(meta.digest.hex()), "a refused mirror stored rows naming the object");
}

/// An OCI registry on loopback that serves one bpfarm release whose layer
/// bytes are not the ones its manifest names (same size, other digest).
/// The same server serving the honest bytes is mirrored (the control), and
/// a layer over `--max-blob-bytes` is refused before it is downloaded.
#[test]
fn a_layer_whose_digest_lies_is_refused_and_nothing_is_stored() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let release = "6.1.0-56-amd64";
    let honest = b"\x7fELF honest object".to_vec();
    let mut swapped = honest.clone();
    swapped[5] ^= 0xff;
    let meta = sample_metadata(release, Arch::X86_64, &honest);
    let size = honest.len();
    let manifest = oci::manifest(&meta);
    let md = Digest::of_bytes(&manifest);
    let index = oci::index(release, "v0.1.0", None, Arch::X86_64, &md, manifest.len() as u64);
    let tag = oci::tag(release, "v0.1.0", false);
    let layer = format!("/v2/ns/tracee-bpf/blobs/{}", meta.digest);
    let config = format!("/v2/ns/tracee-bpf/blobs/{}", Digest::of_bytes(oci::EMPTY_CONFIG));
    let (tag_path, md_path) =
        (format!("/v2/ns/tracee-bpf/manifests/{tag}"), format!("/v2/ns/tracee-bpf/manifests/{md}"));
    let list = json!({"name": "ns/tracee-bpf", "tags": [tag]});
    let lie = Arc::new(AtomicBool::new(true));
    let lying = lie.clone();
    let served_bytes = honest.clone();
    let server = HostileServer::start(move |req| {
        let path = req.path.split('?').next().unwrap_or("");
        if path == "/v2/" {
            Reply::json(200, &json!({}))
        } else if path == "/v2/ns/tracee-bpf/tags/list" {
            Reply::json(200, &list)
        } else if path == tag_path {
            Reply::bytes(200, oci::INDEX_MEDIA_TYPE, index.clone())
        } else if path == md_path {
            Reply::bytes(200, oci::MANIFEST_MEDIA_TYPE, manifest.clone())
        } else if path == config {
            Reply::bytes(200, "application/octet-stream", oci::EMPTY_CONFIG)
        } else if path == layer {
            let body = if lying.load(Ordering::SeqCst) { swapped.clone() } else { served_bytes.clone() };
            Reply::bytes(200, "application/octet-stream", body)
        } else {
            Reply::not_found()
        }
    });
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("dmz");
    let from = format!("oci://{}/ns", server.url.trim_start_matches("http://"));
    let o = mirror(&data, &from, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("refused tag {tag}"))
            && err.contains(&format!("blob {} has bytes hashing to", meta.digest)),
        "{}",
        show(&o)
    );
    assert!(stored_blobs(&data).is_empty(), "the lying upstream's bytes were stored: {:?}", stored_blobs(&data));
    let (dump, _) = registry_snapshot(&data);
    assert!(!dump.contains(md.hex()) && !dump.contains(meta.digest.hex()), "rows were stored");

    // Over --max-blob-bytes: refused by its descriptor, not downloaded.
    let o = mirror(&data, &from, &["--max-blob-bytes", &(size - 1).to_string()]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("(--max-blob-bytes); not downloading it"), "{}", show(&o));
    assert!(stored_blobs(&data).is_empty());

    // The control: the same upstream, honest, is mirrored.
    lie.store(false, Ordering::SeqCst);
    let o = mirror(&data, &from, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("1 objects published, 0 refused"), "{}", show(&o));
    let served = serve(&data);
    let got = reqwest::blocking::get(format!("{}/v0.1.0/x86_64/{}", served.url, meta.file_name)).unwrap();
    assert_eq!(got.bytes().unwrap().to_vec(), honest);
}

/// A tag list whose `Link` always names one more page: refused at the
/// page cap with the reason, exit 1, nothing stored.
#[test]
fn an_endless_tag_list_is_refused() {
    let server = HostileServer::start(|req| {
        let path = req.path.split('?').next().unwrap_or("");
        if path == "/v2/" {
            return Reply::json(200, &json!({}));
        }
        if path != "/v2/ns/tracee-bpf/tags/list" {
            return Reply::not_found();
        }
        let n: u64 = req.path.rsplit_once("last=t").and_then(|(_, n)| n.parse().ok()).unwrap_or(0);
        let mut r = Reply::json(200, &json!({"name": "ns/tracee-bpf", "tags": [format!("t{}", n + 1)]}));
        r.headers.push(("Link".into(), format!("</v2/ns/tracee-bpf/tags/list?n=1000&last=t{}>; rel=\"next\"", n + 1)));
        r
    });
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("dmz");
    let from = format!("oci://{}/ns", server.url.trim_start_matches("http://"));
    let started = std::time::Instant::now();
    let o = mirror(&data, &from, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("the tag list goes on past 1000 pages"), "{}", show(&o));
    eprintln!("refused the endless tag list in {:.1}s", started.elapsed().as_secs_f64());
    assert!(stored_blobs(&data).is_empty());
    let (dump, _) = registry_snapshot(&data);
    assert!(!dump.contains("INSERT INTO oci_tags"), "tags were stored");
}

/// `--token` against a registry that wants one for reads: bpfarm's own
/// `/v2` under `--require-read-token` (an OCI registry like any other to
/// the mirror). Without the token the run fails saying so and stores
/// nothing; with it, both objects arrive.
#[test]
fn mirror_from_an_oci_registry_that_needs_a_token() {
    let home = tempfile::tempdir().unwrap();
    let up = home.path().join("up");
    let push = bpfarm_tests::token(&up, "ci", "push");
    let read = bpfarm_tests::token(&up, "dmz", "read");
    let reg = bpfarm_tests::serve_with(&["--listen", "127.0.0.1:0", "--data", p(&up), "--require-read-token"]);
    let c = bpfarm_tests::client(&reg.url, Some(push));
    let mut metas = Vec::new();
    for release in ["6.1.0-56-amd64", "6.1.0-57-amd64"] {
        let bytes = format!("\x7fELF stand-in object for {release}").into_bytes();
        let meta = sample_metadata(release, Arch::X86_64, &bytes);
        c.publish(&meta, &bytes, false).unwrap();
        metas.push((meta, bytes));
    }
    let from = format!("oci://{}/bpfarm", reg.url.trim_start_matches("http://"));
    let data = home.path().join("dmz");
    let o = mirror(&data, &from, &[]);
    assert!(!o.status.success(), "{}", show(&o));
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("HTTP 401"), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("check --token"), "{}", show(&o));
    assert!(stored_blobs(&data).is_empty());

    let o = mirror(&data, &from, &["--token", &read]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("2 objects published, 0 refused"), "{}", show(&o));
    drop(reg);
    let served = serve(&data);
    for (meta, bytes) in metas {
        let f = format!("{}/v0.1.0/x86_64/{}", served.url, meta.file_name);
        assert_eq!(reqwest::blocking::get(&f).unwrap().bytes().unwrap().to_vec(), bytes, "{f}");
    }
}

/// An upstream whose release index names one child index 2,000 times,
/// which names another 2,000 times, which names the object's manifest
/// 2,000 times (8·10⁹ paths, four distinct manifests): each manifest is
/// fetched and walked once, so the run ends fast, with a clear outcome and
/// a handful of requests.
#[test]
fn an_index_naming_one_child_thousands_of_times_is_walked_once() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let release = "6.1.0-56-amd64";
    let object = b"\x7fELF object under a repetitive index".to_vec();
    let meta = sample_metadata(release, Arch::X86_64, &object);
    let manifest = oci::manifest(&meta);
    let md = Digest::of_bytes(&manifest);
    let repeat = |media_type: &str, d: &Digest, size: usize, top: Option<Vec<u8>>| -> Vec<u8> {
        let one = json!({"mediaType": media_type, "digest": d.as_str(), "size": size,
            "platform": {"architecture": "amd64", "os": "linux"}});
        let mut v = match top {
            Some(b) => serde_json::from_slice::<Value>(&b).unwrap(),
            None => json!({"schemaVersion": 2, "mediaType": oci::INDEX_MEDIA_TYPE}),
        };
        v["manifests"] = Value::Array(vec![one; 2000]);
        v.to_string().into_bytes()
    };
    let l2 = repeat(oci::MANIFEST_MEDIA_TYPE, &md, manifest.len(), None);
    let l2d = Digest::of_bytes(&l2);
    let l1 = repeat(oci::INDEX_MEDIA_TYPE, &l2d, l2.len(), None);
    let l1d = Digest::of_bytes(&l1);
    let bpfarm_index = oci::index(release, "v0.1.0", None, Arch::X86_64, &md, manifest.len() as u64);
    let top = repeat(oci::INDEX_MEDIA_TYPE, &l1d, l1.len(), Some(bpfarm_index));
    let tag = oci::tag(release, "v0.1.0", false);
    let mut by_path: Vec<(String, &'static str, Vec<u8>)> = vec![
        (format!("/v2/ns/tracee-bpf/manifests/{tag}"), oci::INDEX_MEDIA_TYPE, top),
        (format!("/v2/ns/tracee-bpf/manifests/{l1d}"), oci::INDEX_MEDIA_TYPE, l1),
        (format!("/v2/ns/tracee-bpf/manifests/{l2d}"), oci::INDEX_MEDIA_TYPE, l2),
        (format!("/v2/ns/tracee-bpf/manifests/{md}"), oci::MANIFEST_MEDIA_TYPE, manifest),
        (format!("/v2/ns/tracee-bpf/blobs/{}", meta.digest), "application/octet-stream", object),
    ];
    by_path.push((
        format!("/v2/ns/tracee-bpf/blobs/{}", Digest::of_bytes(oci::EMPTY_CONFIG)),
        "application/octet-stream",
        oci::EMPTY_CONFIG.to_vec(),
    ));
    let list = json!({"name": "ns/tracee-bpf", "tags": [tag]});
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    let server = HostileServer::start(move |req| {
        counted.fetch_add(1, Ordering::SeqCst);
        let path = req.path.split('?').next().unwrap_or("");
        if path == "/v2/" {
            return Reply::json(200, &json!({}));
        }
        if path == "/v2/ns/tracee-bpf/tags/list" {
            return Reply::json(200, &list);
        }
        match by_path.iter().find(|(p, _, _)| p == path) {
            Some((_, ct, body)) => Reply::bytes(200, ct, body.clone()),
            None => Reply::not_found(),
        }
    });
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("dmz");
    let from = format!("oci://{}/ns", server.url.trim_start_matches("http://"));
    let started = std::time::Instant::now();
    let o = mirror(&data, &from, &[]);
    let took = started.elapsed();
    let n = requests.load(Ordering::SeqCst);
    eprintln!("mirrored a 2000×2000×2000 index in {:.1}s, {n} requests: {}", took.as_secs_f64(), show(&o));
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}: {}", show(&o));
    assert!(n <= 20, "{n} requests to the upstream");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("1 objects published, 0 refused"), "{}", show(&o));
}

/// An object mirrored unsigned, then signed upstream (the same bytes,
/// `?replace=true` with signatures): the next run refuses that release's
/// unit before writing anything, naming the object and the way to add
/// signatures here, exit 1, and mirrors the other releases; a rerun
/// changes nothing.
#[test]
fn signatures_for_an_object_held_unsigned_are_refused_per_unit() {
    use bpfarm_object::client::SignedUpload;
    use bpfarm_object::sign::{self, BuilderInfo, SigningKey};
    let home = tempfile::tempdir().unwrap();
    let (key_path, _) = openssl_key(home.path(), "signer");
    let key = SigningKey::load(&key_path).unwrap();
    let up = home.path().join("up");
    let push = bpfarm_tests::token(&up, "ci", "push");
    let reg = bpfarm_tests::serve(&up);
    let c = bpfarm_tests::client(&reg.url, Some(push));
    let object = |release: &str| {
        let bytes = format!("\x7fELF stand-in object for {release}").into_bytes();
        (sample_metadata(release, Arch::X86_64, &bytes), bytes)
    };
    let (signed_later, a) = object("6.1.0-56-amd64");
    let (plain, b) = object("6.1.0-57-amd64");
    c.publish(&signed_later, &a, false).unwrap();
    c.publish(&plain, &b, false).unwrap();
    let from = format!("oci://{}/bpfarm", reg.url.trim_start_matches("http://"));
    let data = home.path().join("dmz");
    let o = mirror(&data, &from, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("2 objects published, 0 refused"), "{}", show(&o));

    // Upstream: the first object gains signatures; a third one arrives.
    let s = sign::sign_object(&key, &signed_later, &a, &BuilderInfo::bpfarm("test")).unwrap();
    let manifest_signature =
        sign::sign_manifest(&key, &c.docker_reference(), &Digest::of_bytes(&oci::manifest(&signed_later))).unwrap();
    let up_sigs = SignedUpload {
        signature: s.signature.clone().into_bytes(),
        attestation: s.provenance.to_jsonl(),
        manifest_signature,
    };
    c.publish_signed(&signed_later, &a, true, &up_sigs).unwrap();
    let (third, t) = object("6.1.0-58-amd64");
    c.publish(&third, &t, false).unwrap();

    let o = mirror(&data, &from, &[]);
    eprintln!("signed upstream, unsigned here: {}", show(&o));
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let tag = oci::tag("6.1.0-56-amd64", "v0.1.0", false);
    assert!(
        err.contains(&format!("refused tag {tag}"))
            && err.contains("6.1.0-56-amd64 (x86_64) v0.1.0 without signatures")
            && err.contains("POST /v1/objects?replace=true"),
        "{}",
        show(&o)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("1 objects published, 1 refused"), "{}", show(&o));
    let (dump, _) = registry_snapshot(&data);
    let sig_digest = Digest::of_bytes(s.signature.as_bytes());
    assert!(!dump.contains(sig_digest.hex()), "the refused unit's signature was stored");
    assert!(
        !dump.contains(&sign::files_tag(&Digest::of_bytes(&oci::manifest(&signed_later)))),
        "a carrier tag was stored"
    );
    assert!(dump.contains(third.digest.hex()), "the other release was not mirrored");

    // A rerun: the same refusal, nothing changes.
    let before = registry_snapshot(&data);
    let o = mirror(&data, &from, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("0 objects published, 1 refused"), "{}", show(&o));
    assert_eq!(registry_snapshot(&data), before, "a refused rerun changed the data folder");
}
