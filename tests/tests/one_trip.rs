//! One-round-trip fetches (issue #15): a `/v1` lookup that asks for the
//! object gets its bytes with the metadata in a header, and is checked
//! exactly like the two-request fetch (identity, size cap, digest, the
//! embedded identity). The real registry serves both forms; hostile
//! servers (`bpfarm_tests::hostile`, real HTTP on loopback) lie in every
//! field, and each lie is refused with nothing installed.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bpfarm_object::client::{METADATA_HEADER, OBJECT_MEDIA_TYPE};
use bpfarm_object::embed::{self, EmbeddedIdentity};
use bpfarm_object::{Arch, Digest, Identity, object_file_name};
use bpfarm_tests::hostile::{Body, HostileServer, Reply, Request};
use bpfarm_tests::{
    agent_command, assert_fetch_refused_in_bounds, process_dir, registry_with_running_object, running_object_name,
    running_release, serve, show, walk,
};
use serde_json::{Value, json};

/// The running kernel's object, published to a real registry's data folder
/// (tests serve it with `serve`), with its metadata.
struct Fixture {
    data: PathBuf,
    bytes: Vec<u8>,
    meta: Value,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = process_dir(Path::new(env!("CARGO_TARGET_TMPDIR")), "one-trip-");
        let published = registry_with_running_object(&dir);
        let bytes = std::fs::read(&published.object).unwrap();
        let meta = serde_json::from_slice(
            &std::fs::read(published.object.with_file_name(format!("{}.json", running_object_name()))).unwrap(),
        )
        .unwrap();
        Fixture { data: dir.join("registry"), bytes, meta }
    })
}

fn lookup_url(base: &str) -> String {
    let arch = std::env::consts::ARCH;
    format!("{base}/v1/objects/{arch}/v0.1.0/{}", running_release().replace('+', "%2B"))
}

/// `agent fetch` from `url` into a fresh install path.
fn fetch(url: &str) -> (tempfile::TempDir, Output) {
    let dir = tempfile::tempdir().unwrap();
    let out = agent_command(&dir.path().join("install"))
        .args(["--registry", url, "--build-policy", "never", "fetch"])
        .output()
        .unwrap();
    (dir, out)
}

/// `agent fetch` from `url` fails naming `cause`, and nothing but the
/// install path's lock was written.
fn refused(url: &str, cause: &str) -> Output {
    let (dir, out) = fetch(url);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(cause),
        "the message does not name {cause:?}:\n{}",
        show(&out)
    );
    let written: Vec<PathBuf> = walk(dir.path()).into_iter().filter(|p| !p.ends_with("install")).collect();
    assert!(written.iter().all(|p| p.ends_with(".bpfarm.lock")), "{written:?}\n{}", show(&out));
    out
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::STANDARD.encode(v.to_string())
}

/// A `/v1` registry sending `header` as the metadata header and `body` as
/// the object for every lookup that asks for the object; a plain 404 else.
fn one_trip(header: String, body: Body) -> HostileServer {
    HostileServer::start(move |r: &Request| {
        if r.path.starts_with("/v1/objects/") && r.header("accept").is_some_and(|a| a.contains(OBJECT_MEDIA_TYPE)) {
            Reply {
                status: 200,
                headers: vec![
                    ("Content-Type".into(), OBJECT_MEDIA_TYPE.into()),
                    (METADATA_HEADER.into(), header.clone()),
                ],
                body: body.clone(),
            }
        } else {
            Reply::not_found()
        }
    })
}

#[test]
fn the_registry_sends_the_object_with_its_lookup_only_when_asked() {
    let f = fixture();
    let registry = serve(&f.data);
    let http = reqwest::blocking::Client::new();
    let url = lookup_url(&registry.url);
    // Asked for the object: its bytes, and the lookup's document in the header.
    let r = http.get(&url).header("Accept", OBJECT_MEDIA_TYPE).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], OBJECT_MEDIA_TYPE);
    let header = base64::engine::general_purpose::STANDARD.decode(r.headers()[METADATA_HEADER].as_bytes()).unwrap();
    let in_header: Value = serde_json::from_slice(&header).unwrap();
    assert_eq!(r.bytes().unwrap().as_ref(), f.bytes.as_slice());
    // Without it (every client before this one): the JSON document, the same one.
    let r = http.get(&url).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get(METADATA_HEADER).is_none());
    let json: Value = r.json().unwrap();
    assert_eq!(json, in_header);
    assert_eq!(json["digest"], f.meta["digest"]);
    // A lookup that finds nothing is the same 404 either way.
    let missing = url.replace("v0.1.0", "v9.9.9");
    for accept in [OBJECT_MEDIA_TYPE, "application/json"] {
        let r = http.get(&missing).header("Accept", accept).send().unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(r.json::<Value>().unwrap()["error"], "NOT_FOUND");
    }
    // The agent takes the one-trip answer and installs exactly those bytes.
    let (dir, out) = fetch(&registry.url);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(std::fs::read(dir.path().join("install").join(running_object_name())).unwrap(), f.bytes);
}

#[test]
fn one_request_where_the_registry_allows_it_two_where_it_does_not() {
    let f = fixture();
    let one = one_trip(b64(&f.meta), Body::Bytes(f.bytes.clone()));
    let (dir, out) = fetch(&one.url);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(std::fs::read(dir.path().join("install").join(running_object_name())).unwrap(), f.bytes);
    let paths: Vec<String> = one.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths.len(), 1, "{paths:?}");
    assert!(paths[0].starts_with("/v1/objects/"), "{paths:?}");

    // A registry answering lookups with JSON only: the lookup, then the blob.
    let (meta, bytes) = (f.meta.clone(), f.bytes.clone());
    let old = HostileServer::start(move |r: &Request| {
        if r.path.starts_with("/v1/objects/") {
            Reply::json(200, &meta)
        } else if r.path.starts_with("/v1/blobs/") {
            Reply::bytes(200, "application/octet-stream", bytes.clone())
        } else {
            Reply::not_found()
        }
    });
    let (dir, out) = fetch(&old.url);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(std::fs::read(dir.path().join("install").join(running_object_name())).unwrap(), f.bytes);
    let paths: Vec<String> = old.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert!(paths[1].starts_with("/v1/blobs/sha256:"), "{paths:?}");
}

#[test]
fn one_trip_answers_are_checked_like_two() {
    let f = fixture();
    let meta_with = |field: &str, value: Value| {
        let mut m = f.meta.clone();
        m[field] = value;
        m
    };
    let honest_body = || Body::Bytes(f.bytes.clone());
    let other = "6.1.0-56-amd64";
    let mut other_kernel = meta_with("kernel_release", other.into());
    other_kernel["file_name"] = object_file_name(other, "v0.1.0").into();
    let cases: Vec<(String, Body, String)> = vec![
        (
            b64(&meta_with("file_name", "../../pwned".into())),
            honest_body(),
            "is not the name its identity makes".into(),
        ),
        (b64(&other_kernel), honest_body(), format!("its kernel_release is \"{other}\"")),
        (b64(&meta_with("arch", "aarch64".into())), honest_body(), "its arch is \"aarch64\"".into()),
        ("not base64!".into(), honest_body(), format!("its {METADATA_HEADER} header is not base64")),
        (b64(&json!({"digest": "sha256:00"})), honest_body(), "unreadable metadata".into()),
        (
            b64(&meta_with("digest", Digest::of_bytes(b"other").to_string().into())),
            honest_body(),
            "received bytes hash to".into(),
        ),
        (
            b64(&meta_with("signature", json!({"digest": "nope", "size": 1}))),
            honest_body(),
            "its signature or attestation reference is unreadable".into(),
        ),
        ("A".repeat(200 << 10), honest_body(), format!("its {METADATA_HEADER} header is over")),
    ];
    for (header, body, cause) in cases {
        let server = one_trip(header, body);
        refused(&server.url, &cause);
    }

    // Bytes that are not the object: one byte changed (same size).
    let mut altered = f.bytes.clone();
    let mid = altered.len() / 2;
    altered[mid] ^= 0xff;
    let server = one_trip(b64(&f.meta), Body::Bytes(altered));
    refused(&server.url, "received bytes hash to");

    // Another kernel's real object, or one without an embedded identity,
    // with metadata (digest, size) claiming it is this host's: the
    // embedded identity refuses it.
    let relabelled = embed::embed(
        &f.bytes,
        &EmbeddedIdentity {
            identity: Identity::new(other, Arch::X86_64, "v0.1.0").unwrap(),
            kernel: Default::default(),
            program_digest: Digest::of_bytes(b"p"),
        },
    )
    .unwrap();
    let mut meta = f.meta.clone();
    meta["digest"] = Digest::of_bytes(&relabelled).to_string().into();
    meta["size"] = relabelled.len().into();
    let server = one_trip(b64(&meta), Body::Bytes(relabelled));
    refused(&server.url, &format!("built for kernel {other} (x86_64) version v0.1.0"));
}

#[test]
fn one_trip_bodies_stop_at_the_size_their_metadata_names() {
    let f = fixture();
    let gib = 1u64 << 30;
    // Honest metadata, a body that never ends: reading stops at its size.
    let server = one_trip(b64(&f.meta), Body::Stream { total: gib, content_length: None });
    let cause = format!("it sent more than the {} bytes its metadata names", f.bytes.len());
    assert_fetch_refused_in_bounds("endless one-trip body", &server.url, &cause);

    // Metadata claiming 1 GiB, with a Content-Length to match: refused on
    // the header, before the body is read.
    let mut meta = f.meta.clone();
    meta["size"] = gib.into();
    let server = one_trip(b64(&meta), Body::Stream { total: gib, content_length: Some(gib) });
    let started = Instant::now();
    refused(&server.url, "its metadata says 1073741824 bytes, over the 67108864-byte limit");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// The registry client is built while the local places are searched, but
/// nothing goes on the wire before the search has ended: with the object in
/// the install path, a configured registry is not even connected to (so no
/// registry, honest or hostile, can answer before a local hit wins). The
/// same registry is contacted once the install path is empty.
#[test]
fn a_local_hit_never_contacts_the_registries() {
    let f = fixture();
    // A registry that accepts connections (the kernel completes them into
    // the backlog) and never answers: any contact is left there to see.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let install = dir.path().join("install");
    std::fs::create_dir(&install).unwrap();
    std::fs::write(install.join(running_object_name()), &f.bytes).unwrap();
    std::fs::write(install.join(format!("{}.json", running_object_name())), f.meta.to_string()).unwrap();
    let locate = |install: &Path| {
        agent_command(install)
            .args(["--registry", &url, "--timeout", "1", "--build-policy", "never", "locate"])
            .output()
            .unwrap()
    };
    let out = locate(&install);
    assert!(out.status.success(), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("would load {}\n", install.join(running_object_name()).display())),
        "{}",
        show(&out)
    );
    assert!(!stdout.contains("registry http://"), "the trail names the registry:\n{}", show(&out));
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the registry was connected to although the install path had the object: {other:?}"),
    }

    // Without the object there, the registry is asked (and gives nothing).
    std::fs::remove_file(install.join(running_object_name())).unwrap();
    let out = locate(&install);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("gave up: no complete answer within 1s"), "{}", show(&out));
    assert!(listener.accept().is_ok(), "the registry was never asked:\n{}", show(&out));
}

/// A static layout (a plain file server, no `/v1`) costs one round trip
/// after the lookup: the object and its `.sha256`, `.json`, `.sig` and
/// `.intoto.jsonl` are all asked for before any of them is answered. The
/// server holds every answer until the five requests are in (at most 5 s,
/// then it answers anyway and the test fails), and the fetch is checked as
/// before: the object installed, byte for byte.
#[test]
fn a_static_layout_is_asked_for_its_five_files_at_once() {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Condvar, Mutex};
    let f = fixture();
    // The client percent-encodes the file name's `+`.
    let folder = format!("/v0.1.0/{}/", std::env::consts::ARCH);
    let name = running_object_name().replace('+', "%2B");
    let prefix = format!("{folder}{name}");
    let (bytes, meta) = (f.bytes.clone(), f.meta.clone());
    let seen: Arc<(Mutex<BTreeSet<String>>, Condvar)> = Arc::default();
    let held_all = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let server = {
        let (seen, held_all) = (seen.clone(), held_all.clone());
        HostileServer::start(move |r: &Request| {
            let Some(suffix) = r.path.strip_prefix(&prefix) else { return Reply::not_found() };
            let (set, arrived) = &*seen;
            let mut set = set.lock().unwrap();
            set.insert(suffix.to_owned());
            arrived.notify_all();
            let (set, waited) = arrived.wait_timeout_while(set, Duration::from_secs(5), |s| s.len() < 5).unwrap();
            if waited.timed_out() {
                held_all.store(false, std::sync::atomic::Ordering::SeqCst);
            }
            drop(set);
            match suffix {
                "" => Reply::bytes(200, "application/octet-stream", bytes.clone()),
                ".sha256" => Reply::bytes(
                    200,
                    "text/plain",
                    format!("{}  {}\n", Digest::of_bytes(&bytes).hex(), running_object_name()),
                ),
                ".json" => Reply::json(200, &meta),
                _ => Reply::not_found(),
            }
        })
    };
    let (dir, out) = fetch(&server.url);
    assert!(out.status.success(), "{}", show(&out));
    assert!(show(&out).contains("static layout"), "{}", show(&out));
    assert_eq!(std::fs::read(dir.path().join("install").join(running_object_name())).unwrap(), f.bytes);
    let paths: Vec<String> = server.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths.len(), 6, "the lookup and five files: {paths:?}");
    assert!(paths[0].starts_with("/v1/objects/"), "{paths:?}");
    let files: BTreeSet<&str> = paths[1..].iter().filter_map(|p| p.strip_prefix(&folder)).collect();
    let want: BTreeSet<String> =
        ["", ".sha256", ".json", ".sig", ".intoto.jsonl"].iter().map(|s| format!("{name}{s}")).collect();
    assert_eq!(files, want.iter().map(String::as_str).collect(), "{paths:?}");
    assert!(
        held_all.load(std::sync::atomic::Ordering::SeqCst),
        "a file was asked for only after another's answer: {paths:?}"
    );
}
