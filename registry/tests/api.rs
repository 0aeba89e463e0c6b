//! The /v1 API, in process (`app()` + `oneshot`) over a real sqlite file and
//! blob folder: publish rules, auth, bad input, downloads, static layout.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bpfarm_object::{
    Arch, BuildMode, Compiler, Digest, Flags, Identity, KernelFacts, ObjectMetadata, SourceKind, SourcePackage,
};
use bpfarm_registry::repo::Scope;
use bpfarm_registry::{AppState, Settings, app, open, tokens};
use http_body_util::BodyExt;
use std::collections::{BTreeMap, BTreeSet};
use tower::ServiceExt;

struct Reg {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    state: AppState,
    push: String,
    read: String,
}

async fn registry(settings: Settings) -> Reg {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let state = open(&data, settings).await.unwrap();
    let push = tokens::generate().unwrap();
    let read = tokens::generate().unwrap();
    state.repo.add_token("ci", Scope::Push, &tokens::hash(&push), "t").await.unwrap();
    state.repo.add_token("fleet", Scope::Read, &tokens::hash(&read), "t").await.unwrap();
    Reg { _dir: dir, data, state, push, read }
}

fn meta(release: &str, bytes: &[u8]) -> ObjectMetadata {
    let identity = Identity::new(release, Arch::X86_64, "v0.1.0").unwrap();
    ObjectMetadata {
        file_name: identity.file_name(),
        identity,
        digest: Digest::of_bytes(bytes),
        size: bytes.len() as u64,
        kernel: KernelFacts { uname_version: Some("#1 SMP Debian".into()), config_digest: None },
        build_mode: BuildMode::Headers,
        sources: vec![SourcePackage {
            kind: SourceKind::Deb,
            name: "linux-headers-x".into(),
            version: "1".into(),
            digest: Digest::of_bytes(b"deb"),
        }],
        program_digest: Digest::of_bytes(b"prog"),
        compiler: Compiler { clang: "clang 14".into(), llc: None },
        flags: Flags::default(),
        built_at: "2026-11-25T00:00:00Z".into(),
    }
}

async fn call(r: &Reg, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let resp = app(r.state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, headers, body)
}

fn req(method: &str, uri: &str, token: Option<&str>, body: Vec<u8>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b.body(Body::from(body)).unwrap()
}

async fn publish(r: &Reg, m: &ObjectMetadata, bytes: &[u8], query: &str) -> (StatusCode, Vec<u8>) {
    let (s, _, _) = call(r, req("PUT", &format!("/v1/blobs/{}", m.digest), Some(&r.push), bytes.to_vec())).await;
    assert!(s == StatusCode::CREATED || s == StatusCode::OK, "blob upload: {s}");
    let (s, _, body) =
        call(r, req("POST", &format!("/v1/objects{query}"), Some(&r.push), serde_json::to_vec(m).unwrap())).await;
    (s, body)
}

/// Another connection to the registry's index, to seed rows at fleet
/// scale without publishing each.
async fn index_pool(r: &Reg) -> sqlx::SqlitePool {
    sqlx::sqlite::SqlitePool::connect(&format!("sqlite://{}", r.data.join("index.sqlite").display())).await.unwrap()
}

/// A bare x86_64 object row for (`release`, `version`) holding `digest`
/// (size 1, empty metadata).
async fn seed_object(db: &mut sqlx::SqliteConnection, release: &str, version: &str, digest: &Digest) {
    sqlx::query(
        "INSERT INTO objects (kernel_release, arch, version, file_name, digest, size, metadata, published_at)
         VALUES (?, 'x86_64', ?, 'f', ?, 1, '{}', 't')",
    )
    .bind(release)
    .bind(version)
    .bind(digest.as_str())
    .execute(db)
    .await
    .unwrap();
}

fn json(b: &[u8]) -> serde_json::Value {
    serde_json::from_slice(b).unwrap()
}

#[tokio::test]
async fn publish_is_idempotent_conflicts_are_refused_and_replacement_keeps_history() {
    let r = registry(Settings::default()).await;
    let m = meta("6.1.0-56-amd64", b"object one");
    assert_eq!(publish(&r, &m, b"object one", "").await.0, StatusCode::CREATED);
    let (s, body) = publish(&r, &m, b"object one", "").await;
    assert_eq!((s, json(&body)["status"].as_str().unwrap()), (StatusCode::OK, "unchanged"));

    let m2 = meta("6.1.0-56-amd64", b"object two");
    let (s, body) = publish(&r, &m2, b"object two", "").await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(json(&body)["message"].as_str().unwrap().contains("replace=true"));
    assert_eq!(publish(&r, &m2, b"object two", "?replace=true").await.0, StatusCode::CREATED);
    assert_eq!(r.state.repo.history_len("6.1.0-56-amd64", "x86_64", "v0.1.0").await.unwrap(), 2);

    let (s, _, body) = call(&r, req("GET", "/v1/objects/x86_64/v0.1.0/6.1.0-56-amd64", None, vec![])).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json(&body)["digest"], m2.digest.as_str());
    // Narrowed by the host's kernel build: a matching or unknown fact finds
    // it, a different build of the same release does not.
    let base = "/v1/objects/x86_64/v0.1.0/6.1.0-56-amd64";
    let (s, _, _) = call(&r, req("GET", &format!("{base}?uname_version=%231%20SMP%20Debian"), None, vec![])).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, body) = call(&r, req("GET", &format!("{base}?uname_version=%232%20SMP%20Other"), None, vec![])).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(json(&body)["message"].as_str().unwrap().contains("#1 SMP Debian"));
    let (s, _, _) =
        call(&r, req("GET", &format!("{base}?config_digest=sha256:{}", "0".repeat(64)), None, vec![])).await;
    assert_eq!(s, StatusCode::OK, "the object records no config digest, so it is not excluded");
    // The replaced object's bytes are still stored (history).
    assert!(r.state.blobs.path(&m.digest).is_file());
}

#[tokio::test]
async fn auth_bad_input_and_limits() {
    let r = registry(Settings { require_read_token: false, max_object_bytes: 16, ..Settings::default() }).await;
    let d = Digest::of_bytes(b"small");
    let (s, _, _) = call(&r, req("PUT", &format!("/v1/blobs/{d}"), None, b"small".to_vec())).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = call(&r, req("PUT", &format!("/v1/blobs/{d}"), Some("bpfarm_wrong"), b"small".to_vec())).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = call(&r, req("PUT", &format!("/v1/blobs/{d}"), Some(&r.read), b"small".to_vec())).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let (s, _, body) = call(&r, req("PUT", &format!("/v1/blobs/{d}"), Some(&r.push), b"other".to_vec())).await;
    assert_eq!((s, json(&body)["error"].as_str().unwrap()), (StatusCode::BAD_REQUEST, "DIGEST_INVALID"));
    let big = vec![7u8; 17];
    let (s, _, _) = call(&r, req("PUT", &format!("/v1/blobs/{}", Digest::of_bytes(&big)), Some(&r.push), big)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let (s, _, _) = call(&r, req("PUT", "/v1/blobs/sha256:nothex", Some(&r.push), vec![])).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Nothing partial stays behind.
    assert_eq!(std::fs::read_dir(r.data.join("blobs/tmp")).unwrap().count(), 0);
    assert!(!r.state.blobs.path(&d).exists());

    // Metadata for a blob that is not there, and a malformed identity.
    let m = meta("6.1.0-56-amd64", b"never uploaded");
    let (s, _, body) = call(&r, req("POST", "/v1/objects", Some(&r.push), serde_json::to_vec(&m).unwrap())).await;
    assert_eq!((s, json(&body)["error"].as_str().unwrap()), (StatusCode::BAD_REQUEST, "BLOB_UNKNOWN"));
    let mut bad = serde_json::to_value(meta("6.1.0-56-amd64", b"x")).unwrap();
    bad["kernel_release"] = "../../etc".into();
    let (s, _, body) = call(&r, req("POST", "/v1/objects", Some(&r.push), serde_json::to_vec(&bad).unwrap())).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        json(&body)["message"].as_str().unwrap().contains("invalid kernel release"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (s, _, _) = call(&r, req("GET", "/v1/objects/x86_64/v0.1.0/..%2Fetc", None, vec![])).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn read_tokens_when_required() {
    let r = registry(Settings { require_read_token: true, ..Settings::default() }).await;
    let (s, _, _) = call(&r, req("GET", "/v1/objects", None, vec![])).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = call(&r, req("GET", "/v1/objects", Some(&r.read), vec![])).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = call(&r, req("GET", "/healthz", None, vec![])).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn downloads_have_length_digest_etag_and_ranges() {
    let r = registry(Settings::default()).await;
    let bytes: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let m = meta("6.12.117+deb12-amd64", &bytes);
    publish(&r, &m, &bytes, "").await;
    let uri = format!("/v1/blobs/{}", m.digest);
    let (s, h, body) = call(&r, req("GET", &uri, None, vec![])).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, bytes);
    assert_eq!(h[header::CONTENT_LENGTH], "1000");
    assert_eq!(h["x-bpfarm-digest"], m.digest.as_str());
    let etag = h[header::ETAG].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", m.digest));

    let mut r304 = req("GET", &uri, None, vec![]);
    r304.headers_mut().insert(header::IF_NONE_MATCH, etag.parse().unwrap());
    let (s, _, body) = call(&r, r304).await;
    assert_eq!((s, body.len()), (StatusCode::NOT_MODIFIED, 0));

    let mut ranged = req("GET", &uri, None, vec![]);
    ranged.headers_mut().insert(header::RANGE, "bytes=10-19".parse().unwrap());
    let (s, h, body) = call(&r, ranged).await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, &bytes[10..20]);
    assert_eq!(h[header::CONTENT_RANGE], "bytes 10-19/1000");
    let mut bad = req("GET", &uri, None, vec![]);
    bad.headers_mut().insert(header::RANGE, "bytes=2000-".parse().unwrap());
    assert_eq!(call(&r, bad).await.0, StatusCode::RANGE_NOT_SATISFIABLE);

    // The static layout serves the same bytes, with a .sha256 beside them.
    let (s, _, body) = call(&r, req("GET", &format!("/v0.1.0/x86_64/{}", m.file_name), None, vec![])).await;
    assert_eq!((s, body), (StatusCode::OK, bytes.clone()));
    let (_, _, sum) = call(&r, req("GET", &format!("/v0.1.0/x86_64/{}.sha256", m.file_name), None, vec![])).await;
    assert_eq!(String::from_utf8(sum).unwrap(), format!("{}  {}\n", m.digest.hex(), m.file_name));
    assert_eq!(call(&r, req("GET", "/v0.1.0/x86_64/tracee.bpf.nope.o", None, vec![])).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn list_filters_and_pages() {
    let r = registry(Settings::default()).await;
    for n in 40..45 {
        let release = format!("6.1.0-{n}-amd64");
        let bytes = release.as_bytes().to_vec();
        publish(&r, &meta(&release, &bytes), &bytes, "").await;
    }
    let (_, _, body) = call(&r, req("GET", "/v1/objects?limit=2", None, vec![])).await;
    let page = json(&body);
    assert_eq!(page["objects"].as_array().unwrap().len(), 2);
    let mut seen = 2;
    let mut next = page["next"].as_i64();
    while let Some(after) = next {
        let (_, _, body) = call(&r, req("GET", &format!("/v1/objects?limit=2&after={after}"), None, vec![])).await;
        let p = json(&body);
        seen += p["objects"].as_array().unwrap().len();
        next = p["next"].as_i64();
    }
    assert_eq!(seen, 5);
    let (_, _, body) = call(&r, req("GET", "/v1/objects?kernel_release=6.1.0-42-amd64&arch=amd64", None, vec![])).await;
    assert_eq!(json(&body)["objects"][0]["kernel_release"], "6.1.0-42-amd64");
    let (_, _, body) = call(&r, req("GET", "/v1/objects?q=-43-", None, vec![])).await;
    assert_eq!(json(&body)["objects"].as_array().unwrap().len(), 1);
    let (_, _, body) =
        call(&r, req("GET", "/v1/objects?uname_version=%231%20SMP%20Debian&limit=1000", None, vec![])).await;
    assert_eq!(json(&body)["objects"].as_array().unwrap().len(), 5);
    // Filters together, and a search walked a page at a time.
    let (_, _, body) =
        call(&r, req("GET", "/v1/objects?version=v0.1.0&arch=x86_64&kernel_release=6.1.0-44-amd64", None, vec![]))
            .await;
    assert_eq!(json(&body)["objects"].as_array().unwrap().len(), 1);
    let (_, _, body) = call(&r, req("GET", "/v1/objects?version=v0.2.0", None, vec![])).await;
    assert_eq!(json(&body)["objects"].as_array().unwrap().len(), 0);
    let (_, _, body) = call(&r, req("GET", "/v1/objects?q=6.1.0-4&limit=3", None, vec![])).await;
    let page = json(&body);
    assert_eq!(page["objects"].as_array().unwrap().len(), 3);
    let after = page["next"].as_i64().unwrap();
    let (_, _, body) =
        call(&r, req("GET", &format!("/v1/objects?q=6.1.0-4&limit=3&after={after}"), None, vec![])).await;
    let page = json(&body);
    assert_eq!((page["objects"].as_array().unwrap().len(), page["next"].as_i64()), (2, None));
    // A page's signatures are read for the whole page at once: each row
    // gets its own, and only its own.
    let row = r.state.repo.current("6.1.0-42-amd64", "x86_64", "v0.1.0").await.unwrap().unwrap();
    let sig = Digest::of_bytes(b"a signature");
    let mut tx = r.state.repo.begin_write().await.unwrap();
    tx.set_signatures(&bpfarm_registry::repo::SignatureRow {
        object_id: row.id,
        signature_digest: sig.as_str().to_owned(),
        signature_size: 11,
        attestation_digest: None,
        attestation_size: None,
        payload_digest: None,
        manifest_signature: None,
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let (_, _, body) = call(&r, req("GET", "/v1/objects?limit=1000", None, vec![])).await;
    let listed = json(&body);
    let (_, _, one) = call(&r, req("GET", "/v1/objects/x86_64/v0.1.0/6.1.0-42-amd64", None, vec![])).await;
    assert_eq!(json(&one)["signature"]["digest"], sig.as_str());
    for o in listed["objects"].as_array().unwrap() {
        if o["kernel_release"] == "6.1.0-42-amd64" {
            assert_eq!(o["signature"], json(&one)["signature"], "{o}");
        } else {
            assert!(o.get("signature").is_none_or(|s| s.is_null()), "{o}");
        }
    }
    assert_eq!(call(&r, req("GET", "/v1/objects?limit=0", None, vec![])).await.0, StatusCode::BAD_REQUEST);

    let (_, _, metrics) = call(&r, req("GET", "/metrics", None, vec![])).await;
    let text = String::from_utf8(metrics).unwrap();
    assert!(text.contains("bpfarm_objects 5") && text.contains("bpfarm_http_requests_total"), "{text}");
}

#[tokio::test]
async fn every_rejection_is_json_in_its_face_and_v2_always_says_its_version() {
    let r = registry(Settings::default()).await;
    let cases: Vec<(Request<Body>, StatusCode)> = vec![
        (req("GET", "/v1/objects?limit=abc", None, vec![]), StatusCode::BAD_REQUEST),
        (req("GET", "/no/such/deep/path", None, vec![]), StatusCode::NOT_FOUND),
        (req("DELETE", "/v1/objects", Some(&r.push), vec![]), StatusCode::METHOD_NOT_ALLOWED),
        (req("BREW", "/v1/objects", None, vec![]), StatusCode::UNAUTHORIZED),
        (req("POST", "/v1/objects", Some(&r.push), vec![b' '; 70_000]), StatusCode::PAYLOAD_TOO_LARGE),
        (req("POST", "/v1/failures", Some(&r.push), b"{not json".to_vec()), StatusCode::BAD_REQUEST),
    ];
    for (request, want) in cases {
        let what = format!("{} {}", request.method(), request.uri());
        let (s, h, body) = call(&r, request).await;
        assert_eq!(s, want, "{what}");
        assert_eq!(h[header::CONTENT_TYPE], "application/json", "{what}");
        assert!(json(&body)["error"].is_string() && json(&body)["message"].is_string(), "{what}");
    }
    let v2: Vec<(Request<Body>, StatusCode)> = vec![
        (req("GET", "/v2/", None, vec![]), StatusCode::UNAUTHORIZED),
        (req("GET", "/v2/_catalog?n=%FF%FE", None, vec![]), StatusCode::BAD_REQUEST),
        (req("GET", "/v2/a/b/nothing-here", None, vec![]), StatusCode::NOT_FOUND),
        (req("POST", "/v2/a/blobs/uploads/", None, vec![]), StatusCode::UNAUTHORIZED),
        (req("POST", "/v2/a/blobs/uploads/", Some(&r.read), vec![]), StatusCode::FORBIDDEN),
    ];
    for (request, want) in v2 {
        let what = format!("{} {}", request.method(), request.uri());
        let (s, h, body) = call(&r, request).await;
        assert_eq!(s, want, "{what}");
        assert_eq!(h["docker-distribution-api-version"], "registry/2.0", "{what}");
        assert!(json(&body)["errors"][0]["code"].is_string(), "{what}: {}", String::from_utf8_lossy(&body));
        if s == StatusCode::UNAUTHORIZED {
            assert!(h[header::WWW_AUTHENTICATE].to_str().unwrap().starts_with("Basic"), "{what}");
        }
    }
    // Scheme names are case-insensitive; a wrong token is refused even where
    // none is needed.
    for auth in [format!("bearer {}", r.read), format!("BEARER {}", r.read)] {
        let mut q = req("GET", "/v2/", None, vec![]);
        q.headers_mut().insert(header::AUTHORIZATION, auth.parse().unwrap());
        assert_eq!(call(&r, q).await.0, StatusCode::OK, "{auth}");
    }
    let (s, _, _) = call(&r, req("GET", "/v1/objects", Some("bpfarm_wrong"), vec![])).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_object_without_its_oci_form_is_repaired_at_start() {
    let r = registry(Settings::default()).await;
    let bytes = b"an object whose OCI form a crash lost".to_vec();
    let m = meta("6.1.0-57-amd64", &bytes);
    let (s, _, _) = call(&r, req("PUT", &format!("/v1/blobs/{}", m.digest), Some(&r.push), bytes.clone())).await;
    assert_eq!(s, StatusCode::CREATED);
    // What an older version left after a crash between its two writes: the
    // /v1 row, and no OCI form.
    let mut tx = r.state.repo.begin_write().await.unwrap();
    tx.insert_object(&m, "t").await.unwrap();
    tx.commit().await.unwrap();
    let oci_repo = bpfarm_registry::faces::canonical_repo("bpfarm");
    let bad = bpfarm_registry::faces::disagreements(&r.state.repo, &r.state.blobs, &oci_repo).await.unwrap();
    assert_eq!(bad.len(), 1, "{bad:?}");
    let tag = bpfarm_object::oci::tag("6.1.0-57-amd64", "v0.1.0", false);
    let (s, _, _) = call(&r, req("GET", &format!("/v2/bpfarm/tracee-bpf/manifests/{tag}"), None, vec![])).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Opening the store to serve it repairs the OCI form.
    let state = open(&r.data, Settings::default()).await.unwrap();
    assert!(bpfarm_registry::faces::disagreements(&state.repo, &state.blobs, &oci_repo).await.unwrap().is_empty());
    let resp =
        app(state).oneshot(req("GET", &format!("/v2/bpfarm/tracee-bpf/manifests/{tag}"), None, vec![])).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let index = json(&resp.into_body().collect().await.unwrap().to_bytes());
    assert_eq!(index["manifests"][0]["platform"]["architecture"], "amd64");
}

/// The set-based start-up check finds exactly what checking each object
/// one by one finds — a crash between the faces, a tag naming the wrong
/// index, a manifest row or a manifest's bytes gone, a second arch under
/// one tag intact — and opening the store to serve it repairs them all.
#[tokio::test]
async fn the_set_based_faces_check_agrees_with_the_one_by_one_check() {
    use bpfarm_registry::faces::{Disagreement, disagreements, disagreements_one_by_one};
    let r = registry(Settings::default()).await;
    let oci_repo = bpfarm_registry::faces::canonical_repo("bpfarm");
    let mut metas = Vec::new();
    for n in 0..8 {
        let bytes = format!("object {n}").into_bytes();
        let m = meta(&format!("6.1.0-{}-amd64", 100 + n), &bytes);
        assert_eq!(publish(&r, &m, &bytes, "").await.0, StatusCode::CREATED);
        metas.push(m);
    }
    // Both arches of one release under one tag.
    let bytes = b"an arm64 object".to_vec();
    let mut arm = meta("5.15.0-91-generic", &bytes);
    arm.identity = Identity::new("5.15.0-91-generic", Arch::Aarch64, "v0.1.0").unwrap();
    assert_eq!(publish(&r, &arm, &bytes, "").await.0, StatusCode::CREATED);
    let bytes = b"an amd64 object".to_vec();
    let amd = meta("5.15.0-91-generic", &bytes);
    assert_eq!(publish(&r, &amd, &bytes, "").await.0, StatusCode::CREATED);
    let ids = |d: &[Disagreement]| d.iter().map(|d| (d.row.id, d.why.to_string())).collect::<Vec<_>>();
    assert!(disagreements(&r.state.repo, &r.state.blobs, &oci_repo).await.unwrap().is_empty());

    let db = index_pool(&r).await;
    let tag = |m: &ObjectMetadata| bpfarm_object::oci::tag(&m.identity.kernel_release, &m.identity.version, false);
    let index_of = |t: String| {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT digest FROM oci_tags WHERE tag = ?")
                .bind(t)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    // 0: a crash between the two faces (no tag recorded).
    sqlx::query("UPDATE objects SET oci_tag = NULL WHERE digest = ?")
        .bind(metas[0].digest.as_str())
        .execute(&db)
        .await
        .unwrap();
    // 1: its tag names object 2's index.
    let other = index_of(tag(&metas[2])).await;
    sqlx::query("UPDATE oci_tags SET digest = ? WHERE tag = ?")
        .bind(other)
        .bind(tag(&metas[1]))
        .execute(&db)
        .await
        .unwrap();
    // 3: its tag is gone; 4: its index's manifest row is gone.
    sqlx::query("DELETE FROM oci_tags WHERE tag = ?").bind(tag(&metas[3])).execute(&db).await.unwrap();
    let index4 = index_of(tag(&metas[4])).await;
    sqlx::query("DELETE FROM oci_manifests WHERE digest = ?").bind(&index4).execute(&db).await.unwrap();
    // 5: its index's bytes are gone; 6: its manifest's bytes are gone.
    let index5: Digest = index_of(tag(&metas[5])).await.parse().unwrap();
    std::fs::remove_file(r.state.blobs.path(&index5)).unwrap();
    let index6: Digest = index_of(tag(&metas[6])).await.parse().unwrap();
    let child: serde_json::Value =
        serde_json::from_slice(&std::fs::read(r.state.blobs.path(&index6)).unwrap()).unwrap();
    let child: Digest = child["manifests"][0]["digest"].as_str().unwrap().parse().unwrap();
    std::fs::remove_file(r.state.blobs.path(&child)).unwrap();
    // The arm64 child's manifest row is gone; the amd64 one under the same
    // tag still reaches its object.
    let index: Digest = index_of(tag(&arm)).await.parse().unwrap();
    let both: serde_json::Value = serde_json::from_slice(&std::fs::read(r.state.blobs.path(&index)).unwrap()).unwrap();
    let arm_child =
        both["manifests"].as_array().unwrap().iter().find(|c| c["platform"]["architecture"] == "arm64").unwrap();
    sqlx::query("DELETE FROM oci_manifests WHERE digest = ?")
        .bind(arm_child["digest"].as_str().unwrap())
        .execute(&db)
        .await
        .unwrap();
    db.close().await;

    let fast = disagreements(&r.state.repo, &r.state.blobs, &oci_repo).await.unwrap();
    let slow = disagreements_one_by_one(&r.state.repo, &r.state.blobs, &oci_repo).await.unwrap();
    assert_eq!(ids(&fast), ids(&slow));
    let found: Vec<&str> = fast.iter().map(|d| d.row.digest.as_str()).collect();
    let want: Vec<&str> =
        [0, 1, 3, 4, 5, 6].iter().map(|&i| metas[i].digest.as_str()).chain([arm.digest.as_str()]).collect();
    assert_eq!(found.len(), want.len(), "{fast:#?}");
    for w in &want {
        assert!(found.contains(w), "{w} not found: {fast:#?}");
    }
    let text = ids(&fast).into_iter().map(|(_, w)| w).collect::<Vec<_>>().join("\n");
    for part in [
        "no OCI form was recorded",
        "has no tag",
        "bytes of index",
        "bytes of manifest",
        "is not in bpfarm/tracee-bpf",
        "names layer",
    ] {
        assert!(text.contains(part), "{part:?} not in:\n{text}");
    }

    // Opening the store to serve it repairs every one.
    let state = open(&r.data, Settings::default()).await.unwrap();
    assert!(disagreements(&state.repo, &state.blobs, &oci_repo).await.unwrap().is_empty());
    assert!(disagreements_one_by_one(&state.repo, &state.blobs, &oci_repo).await.unwrap().is_empty());
}

/// A stored row whose metadata no longer parses (the index was changed
/// behind the registry's back) is an error on every read that needs it,
/// naming the row where it is logged and answered without detail; nothing
/// panics, and what does not need that row keeps working.
#[tokio::test]
async fn a_stored_row_that_no_longer_parses_is_an_error_not_a_panic() {
    let r = registry(Settings::default()).await;
    let bytes = b"an object whose row is damaged later".to_vec();
    let m = meta("6.1.0-58-amd64", &bytes);
    assert_eq!(publish(&r, &m, &bytes, "").await.0, StatusCode::CREATED);
    let db = index_pool(&r).await;
    sqlx::query("UPDATE objects SET metadata = '{\"kernel_release\": 7}'").execute(&db).await.unwrap();
    db.close().await;

    let reads = [
        "/v1/objects/x86_64/v0.1.0/6.1.0-58-amd64".to_owned(),
        "/v1/objects".to_owned(),
        format!("/v0.1.0/x86_64/{}.json", m.file_name),
    ];
    for uri in &reads {
        let (s, _, body) = call(&r, req("GET", uri, None, vec![])).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "{uri}");
        assert_eq!(
            (json(&body)["error"].as_str(), json(&body)["message"].as_str()),
            (Some("INTERNAL"), Some("stored metadata error")),
            "{uri}"
        );
    }
    // The bytes do not need the metadata, nor does the rest of the registry.
    let (s, _, body) = call(&r, req("GET", &format!("/v1/blobs/{}", m.digest), None, vec![])).await;
    assert_eq!((s, body), (StatusCode::OK, bytes));
    assert_eq!(call(&r, req("GET", "/", None, vec![])).await.0, StatusCode::OK);
    // The tools name the row.
    let out = r.data.join("export");
    let filter = bpfarm_registry::export::ExportFilter::default();
    let e = bpfarm_registry::export::export(&r.state.repo, &r.state.blobs, &out, &filter).await.unwrap_err();
    assert!(e.to_string().contains(&format!("({}): stored metadata does not parse", m.digest)), "{e}");
}

/// The coverage page stays under its size bound with thousands of objects
/// (the detail table is cut into pages, the counts cover everything), and
/// still shows every kernel of a matrix that is missing an object: it says
/// how many, names the first, and the pages its link leads to hold them
/// all. `GET /v1/coverage` pages its kernels the same way.
#[tokio::test]
async fn the_coverage_page_is_bounded_and_still_shows_every_missing_kernel() {
    use bpfarm_registry::page::MAX_PAGE_BYTES;
    let r = registry(Settings::default()).await;
    let (built, never, versions) = (400, 300, 10);
    let release = |k: usize| format!("6.1.0-{k}-amd64");
    let db = index_pool(&r).await;
    let mut tx = db.begin().await.unwrap();
    for k in 0..built {
        for v in 0..versions {
            let d = Digest::of_bytes(format!("{k}/{v}").as_bytes());
            seed_object(&mut tx, &release(k), &format!("v1.{v}.0"), &d).await;
        }
    }
    tx.commit().await.unwrap();
    db.close().await;
    // The matrix: every kernel built, and `never` more nothing was built for.
    let kernels: Vec<_> =
        (0..built + never).map(|k| serde_json::json!({"release": release(k), "arch": "x86_64"})).collect();
    let body = serde_json::to_vec(&serde_json::json!({ "kernels": kernels })).unwrap();
    let (s, _, _) = call(&r, req("PUT", "/v1/matrices/big", Some(&r.push), body)).await;
    assert_eq!(s, StatusCode::CREATED);
    let missing: std::collections::BTreeSet<String> = (built..built + never).map(release).collect();

    let page = |uri: String| {
        let r = &r;
        async move {
            let (s, h, body) = call(r, req("GET", &uri, None, vec![])).await;
            assert_eq!(s, StatusCode::OK, "{uri}");
            assert!(h[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
            assert!(body.len() <= MAX_PAGE_BYTES, "{uri}: {} bytes", body.len());
            String::from_utf8(body).unwrap()
        }
    };
    let rows = |html: &str| -> Vec<String> {
        html.split("<tr data-release=\"").skip(1).map(|s| s[..s.find('"').unwrap()].to_owned()).collect()
    };
    let next = |html: &str| -> Option<String> {
        let at = html.find("rel=\"next\" href=\"")? + "rel=\"next\" href=\"".len();
        Some(html[at..at + html[at..].find('"').unwrap()].replace("&amp;", "&"))
    };
    let html = page("/?matrix=big".into()).await;
    let all = (built + never) * versions;
    assert!(html.contains(&format!("{} present", built * versions)), "counts cover everything");
    assert!(html.contains(&format!("{} missing", never * versions)));
    assert!(html.contains(&format!("across {} kernel releases", built + never)));
    assert!(rows(&html).len() < built + never, "the whole table does not fit: it is cut into pages");
    assert!(
        html.contains(&format!("Releases 1–{} of {}", rows(&html).len(), built + never)),
        "the page says where it is"
    );
    // Every missing kernel: how many, the first by name, then all of them
    // through the link.
    assert!(html.contains(&format!("{never} kernels missing an object")), "the count");
    assert_eq!(html.matches("<li data-missing=").count(), 100);
    assert!(html.contains(&format!("and {} more", never - 100)));
    let at = html.find("class=\"all-missing\" href=\"").unwrap() + "class=\"all-missing\" href=\"".len();
    let mut uri = Some(html[at..at + html[at..].find('"').unwrap()].replace("&amp;", "&"));
    assert_eq!(uri.as_deref(), Some("/?matrix=big&state=missing"));
    let mut seen = std::collections::BTreeSet::new();
    let mut pages = 0;
    while let Some(u) = uri {
        let html = page(u).await;
        seen.extend(rows(&html));
        uri = next(&html);
        pages += 1;
        assert!(pages < 100, "the pages never end");
    }
    assert_eq!(seen, missing, "every missing kernel, and only those, in {pages} pages");
    // The server narrows by q when the table does not fit.
    let html = page("/?matrix=big&q=6.1.0-42-".into()).await;
    assert_eq!(rows(&html), ["6.1.0-42-amd64"]);
    let (s, _, _) = call(&r, req("GET", &format!("/?q={}", "x".repeat(65)), None, vec![])).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // The JSON: counts of everything, kernels a page at a time.
    let (s, _, body) = call(&r, req("GET", "/v1/coverage?matrix=big&limit=300", None, vec![])).await;
    assert_eq!(s, StatusCode::OK);
    let v = json(&body);
    assert_eq!(v["counts"]["present"].as_u64().unwrap() + v["counts"]["missing"].as_u64().unwrap(), all as u64);
    assert_eq!(v["by_series"]["6.1"]["x86_64"]["missing"], never * versions);
    assert_eq!(v["by_version"]["v1.0.0"]["x86_64"]["present"], built);
    assert_eq!(
        (v["kernels"].as_array().unwrap().len(), v["total_kernels"].as_u64()),
        (300, Some((built + never) as u64))
    );
    let mut walked = 0;
    let mut offset = Some(0);
    while let Some(o) = offset {
        let (_, _, body) =
            call(&r, req("GET", &format!("/v1/coverage?matrix=big&state=missing&limit=120&offset={o}"), None, vec![]))
                .await;
        let v = json(&body);
        walked += v["kernels"].as_array().unwrap().len();
        offset = v["next"].as_u64();
    }
    assert_eq!(walked, never);
    let (s, _, _) = call(&r, req("GET", "/v1/coverage?limit=0", None, vec![])).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

/// `PUT /v1/matrices/<name>` counts a pair listed twice once, and beyond
/// `max_matrices` a new name is refused (409, named limit, nothing stored)
/// while replacing a stored one still works.
#[tokio::test]
async fn matrices_count_unique_pairs_and_are_capped() {
    let r = registry(Settings { max_matrices: 2, ..Settings::default() }).await;
    let body = |releases: &[&str]| {
        let kernels: Vec<_> = releases.iter().map(|r| serde_json::json!({"release": r, "arch": "x86_64"})).collect();
        serde_json::to_vec(&serde_json::json!({ "kernels": kernels })).unwrap()
    };
    let put = |name: &str, b: Vec<u8>| req("PUT", &format!("/v1/matrices/{name}"), Some(&r.push), b);
    let (s, _, b) = call(&r, put("a", body(&["6.1.0-1-amd64", "6.1.0-1-amd64", "6.1.0-2-amd64"]))).await;
    assert_eq!((s, json(&b)["kernels"].as_u64()), (StatusCode::CREATED, Some(2)), "duplicates count once");
    assert_eq!(call(&r, put("b", body(&["6.1.0-3-amd64"]))).await.0, StatusCode::CREATED);
    let (s, _, b) = call(&r, put("c", body(&["6.1.0-4-amd64"]))).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let v = json(&b);
    assert_eq!(v["error"], "TOO_MANY");
    assert!(
        v["message"].as_str().unwrap().contains("holds 2 matrices")
            && v["message"].as_str().unwrap().contains("--max-matrices"),
        "{v}"
    );
    let (s, _, _) = call(&r, req("GET", "/v1/matrices/c", None, vec![])).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "nothing stored");
    // Replacing a stored matrix is not a new one.
    let (s, _, b) = call(&r, put("b", body(&["6.1.0-5-amd64", "6.1.0-6-amd64"]))).await;
    assert_eq!((s, json(&b)["kernels"].as_u64()), (StatusCode::CREATED, Some(2)));
    let (_, _, b) = call(&r, req("GET", "/v1/matrices/b", None, vec![])).await;
    assert_eq!(json(&b)["kernels"].as_array().unwrap().len(), 2);
}

/// A matrix over `coverage::MATRIX_KERNELS` pairs is refused (400, the
/// limit named, nothing stored); one at the limit against many versions is
/// answered in bounded time, its kernels a page at a time, its counts
/// covering every pair × the newest 12 versions.
#[tokio::test]
async fn an_oversized_matrix_is_refused_and_one_at_the_limit_is_counted_in_bounded_time() {
    use bpfarm_registry::coverage::MATRIX_KERNELS;
    let r = registry(Settings::default()).await;
    let versions = 60;
    let db = index_pool(&r).await;
    let mut tx = db.begin().await.unwrap();
    for v in 0..versions {
        let d = Digest::of_bytes(format!("v{v}").as_bytes());
        seed_object(&mut tx, "6.1.0-0-amd64", &format!("v1.{v}.0"), &d).await;
    }
    tx.commit().await.unwrap();
    db.close().await;
    let matrix = |n: usize| {
        let kernels: Vec<_> =
            (0..n).map(|k| serde_json::json!({"release": format!("6.1.0-{k}-amd64"), "arch": "x86_64"})).collect();
        serde_json::to_vec(&serde_json::json!({ "kernels": kernels })).unwrap()
    };
    let (s, _, body) = call(&r, req("PUT", "/v1/matrices/huge", Some(&r.push), matrix(MATRIX_KERNELS + 1))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let v = json(&body);
    assert!(v["message"].as_str().unwrap().contains(&format!("at most {MATRIX_KERNELS}")), "{v}");
    let (s, _, _) = call(&r, req("GET", "/v1/matrices/huge", None, vec![])).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "the refused matrix was stored");

    let (s, _, _) = call(&r, req("PUT", "/v1/matrices/big", Some(&r.push), matrix(MATRIX_KERNELS))).await;
    assert_eq!(s, StatusCode::CREATED);
    let started = std::time::Instant::now();
    let (s, _, body) = call(&r, req("GET", "/v1/coverage?matrix=big&limit=1", None, vec![])).await;
    let took = started.elapsed();
    assert_eq!(s, StatusCode::OK);
    let v = json(&body);
    // Without ?version=, the newest MAX_REPORT_VERSIONS of the 60.
    let counted = bpfarm_registry::coverage::MAX_REPORT_VERSIONS;
    assert_eq!(v["versions_total"], versions);
    assert_eq!(v["versions"].as_array().unwrap().len(), counted);
    assert!(v["versions"].as_array().unwrap().iter().any(|x| x == "v1.59.0"), "{}", v["versions"]);
    assert_eq!(v["counts"]["present"], counted);
    assert_eq!(v["counts"]["missing"], (MATRIX_KERNELS - 1) * counted);
    assert_eq!(v["kernels"].as_array().unwrap().len(), 1);
    assert_eq!(v["kernels"][0]["versions"].as_object().unwrap().len(), counted);
    assert_eq!(v["total_kernels"], MATRIX_KERNELS);
    println!("GET /v1/coverage over {MATRIX_KERNELS} kernels × {counted} of {versions} versions: {took:?}");
    // Far above what it takes (well under a second in a release build);
    // counting a row per pair and version as maps took minutes here.
    assert!(took < std::time::Duration::from_secs(30), "{took:?}");
}

/// Every object path (the static layout, `/v1/blobs`, `/v2/…/blobs`)
/// answers with the stored bytes and their exact `Content-Length`, for a
/// small, a multi-read and a 1 MB blob, whether the bytes come from the hot
/// cache or from the file: `GET` (the first fills the cache, the second is
/// a hit), `HEAD` and a byte range.
#[tokio::test]
async fn every_object_path_serves_the_same_bytes_from_memory_and_from_the_file() {
    for cached in [true, false] {
        let mut r = registry(Settings::default()).await;
        if !cached {
            // No blob fits: every download streams from the file.
            r.state = r.state.with_blobs(r.state.blobs.clone().with_hot_cache(0, 0));
        }
        for (i, size) in [1_000usize, 100_000, 1_000_000].into_iter().enumerate() {
            let bytes: Vec<u8> = (0..size).map(|n| (n * 31 + n / 7 + i) as u8).collect();
            let m = meta(&format!("6.12.{i}+deb12-amd64"), &bytes);
            let (s, body) = publish(&r, &m, &bytes, "").await;
            assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
            let paths = [
                format!("/v0.1.0/x86_64/{}", m.file_name),
                format!("/v1/blobs/{}", m.digest),
                format!("/v2/bpfarm/tracee-bpf/blobs/{}", m.digest),
            ];
            for path in &paths {
                let at = format!("{path} ({size} bytes, cached: {cached})");
                for _ in 0..2 {
                    let (s, h, body) = call(&r, req("GET", path, None, vec![])).await;
                    assert_eq!(s, StatusCode::OK, "{at}");
                    assert!(body == bytes, "{at}: body differs ({} bytes)", body.len());
                    assert_eq!(h[header::CONTENT_LENGTH], size.to_string().as_str(), "{at}");
                    assert_eq!(h["docker-content-digest"], m.digest.as_str(), "{at}");
                }
                let (a, b) = (size / 3, size / 3 + size / 2);
                let mut ranged = req("GET", path, None, vec![]);
                ranged.headers_mut().insert(header::RANGE, format!("bytes={a}-{b}").parse().unwrap());
                let (s, h, body) = call(&r, ranged).await;
                assert_eq!(s, StatusCode::PARTIAL_CONTENT, "{at}");
                assert!(body == bytes[a..=b], "{at}: range body differs");
                assert_eq!(h[header::CONTENT_LENGTH], (b - a + 1).to_string().as_str(), "{at}");
                assert_eq!(h[header::CONTENT_RANGE], format!("bytes {a}-{b}/{size}").as_str(), "{at}");
            }
            for path in &paths[1..] {
                let (s, h, body) = call(&r, req("HEAD", path, None, vec![])).await;
                assert_eq!((s, body.len()), (StatusCode::OK, 0), "HEAD {path}");
                assert_eq!(h[header::CONTENT_LENGTH], size.to_string().as_str(), "HEAD {path}");
            }
        }
        assert_eq!(r.state.blobs.hot_bytes() > 0, cached, "the hot cache holds what was served");
    }
}

/// A blob removed or damaged behind the server's back after it was served
/// (so it is in the hot cache) is answered exactly as from the file, on
/// every path: missing is a 404, a truncated file is not served from
/// memory; the right bytes uploaded again are served again.
#[tokio::test]
async fn a_blob_removed_or_damaged_behind_the_server_is_not_served_from_memory() {
    let r = registry(Settings::default()).await;
    let bytes: Vec<u8> = (0..300_000usize).map(|n| (n % 251) as u8).collect();
    let m = meta("6.12.7+deb12-amd64", &bytes);
    publish(&r, &m, &bytes, "").await;
    let paths = [
        format!("/v0.1.0/x86_64/{}", m.file_name),
        format!("/v1/blobs/{}", m.digest),
        format!("/v2/bpfarm/tracee-bpf/blobs/{}", m.digest),
    ];
    for path in &paths {
        assert_eq!(call(&r, req("GET", path, None, vec![])).await.2, bytes, "{path}");
    }
    assert!(r.state.blobs.hot_bytes() >= bytes.len() as u64, "the blob is cached");
    let file = r.state.blobs.path(&m.digest);

    std::fs::remove_file(&file).unwrap();
    for path in &paths {
        let (s, _, body) = call(&r, req("GET", path, None, vec![])).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path} after removal: {}", String::from_utf8_lossy(&body));
    }
    assert_eq!(r.state.blobs.hot_bytes(), 0, "a removed blob leaves the cache");

    // The right bytes again: served again (and cached again).
    let (s, _, _) = call(&r, req("PUT", &format!("/v1/blobs/{}", m.digest), Some(&r.push), bytes.clone())).await;
    assert_eq!(s, StatusCode::CREATED);
    for path in &paths {
        assert_eq!(call(&r, req("GET", path, None, vec![])).await.2, bytes, "{path} after the upload");
    }
    assert!(r.state.blobs.hot_bytes() > 0);

    // Cut short behind the server's back: what the file holds now, never
    // the 300,000 cached bytes.
    std::fs::write(&file, &bytes[..1000]).unwrap();
    for path in &paths {
        let (s, h, body) = call(&r, req("GET", path, None, vec![])).await;
        assert_eq!(s, StatusCode::OK, "{path}");
        assert_eq!((body.as_slice(), &h[header::CONTENT_LENGTH]), (&bytes[..1000], &"1000".parse().unwrap()), "{path}");
    }
    assert_eq!(r.state.blobs.hot_bytes(), 0, "damaged bytes are never cached");
}

/// What a download says about its blob (`ETag`, both digest headers,
/// `Content-Length`, `If-None-Match`) is held in the hot cache beside the
/// bytes: on a hit it is the blob's own, and it changes with the blob. A
/// replaced object's static path answers for the new blob at once, the
/// old blob's own paths still for the old one, and a blob cut short
/// behind the server's back is described as the file now holds it.
#[tokio::test]
async fn the_headers_held_beside_a_cached_blob_change_with_the_blob() {
    let r = registry(Settings::default()).await;
    let one: Vec<u8> = (0..100_000usize).map(|n| (n % 253) as u8).collect();
    let two: Vec<u8> = (0..123_457usize).map(|n| (n % 241) as u8).collect();
    let m1 = meta("6.12.9+deb12-amd64", &one);
    let mut m2 = meta("6.12.9+deb12-amd64", &two);
    m2.built_at = "2026-11-26T00:00:00Z".into();
    let static_path = format!("/v0.1.0/x86_64/{}", m1.file_name);
    let paths = |m: &ObjectMetadata| {
        [static_path.clone(), format!("/v1/blobs/{}", m.digest), format!("/v2/bpfarm/tracee-bpf/blobs/{}", m.digest)]
    };
    let check = |h: &axum::http::HeaderMap, m: &ObjectMetadata, len: usize, at: &str| {
        assert_eq!(h[header::ETAG], format!("\"{}\"", m.digest).as_str(), "{at}");
        assert_eq!(h["x-bpfarm-digest"], m.digest.as_str(), "{at}");
        assert_eq!(h["docker-content-digest"], m.digest.as_str(), "{at}");
        assert_eq!(h[header::CONTENT_LENGTH], len.to_string().as_str(), "{at}");
        assert_eq!(h[header::CONTENT_TYPE], "application/octet-stream", "{at}");
        assert_eq!(h[header::ACCEPT_RANGES], "bytes", "{at}");
    };
    // Asks each path twice (the second from the cache), then once with the
    // blob's tag (304) and once with another blob's tag (200).
    let served = |m: ObjectMetadata, bytes: Vec<u8>, other: Digest, paths: Vec<String>| {
        let r = &r;
        async move {
            for path in &paths {
                for round in 0..2 {
                    let (s, h, body) = call(r, req("GET", path, None, vec![])).await;
                    let at = format!("{path} (round {round})");
                    assert_eq!(s, StatusCode::OK, "{at}");
                    assert!(body == bytes, "{at}: body differs");
                    check(&h, &m, bytes.len(), &at);
                }
                let mut q = req("GET", path, None, vec![]);
                q.headers_mut().insert(header::IF_NONE_MATCH, format!("\"{}\"", m.digest).parse().unwrap());
                let (s, h, body) = call(r, q).await;
                assert_eq!((s, body.len()), (StatusCode::NOT_MODIFIED, 0), "{path}: If-None-Match its own tag");
                assert_eq!(h[header::ETAG], format!("\"{}\"", m.digest).as_str(), "{path}");
                let mut q = req("GET", path, None, vec![]);
                q.headers_mut().insert(header::IF_NONE_MATCH, format!("\"{other}\"").parse().unwrap());
                let (s, h, body) = call(r, q).await;
                assert_eq!(s, StatusCode::OK, "{path}: If-None-Match another blob's tag");
                assert!(body == bytes, "{path}");
                check(&h, &m, bytes.len(), path);
            }
        }
    };
    assert_eq!(publish(&r, &m1, &one, "").await.0, StatusCode::CREATED);
    served(m1.clone(), one.clone(), m2.digest.clone(), paths(&m1).to_vec()).await;
    assert!(r.state.blobs.hot_bytes() >= one.len() as u64, "the first blob is cached");

    // Replaced: the static path is the new blob's, with the new blob's
    // headers; the old blob's own paths are still the old blob's.
    assert_eq!(publish(&r, &m2, &two, "?replace=true").await.0, StatusCode::CREATED);
    served(m2.clone(), two.clone(), m1.digest.clone(), paths(&m2).to_vec()).await;
    served(m1.clone(), one.clone(), m2.digest.clone(), paths(&m1)[1..].to_vec()).await;
    assert!(r.state.blobs.hot_bytes() >= (one.len() + two.len()) as u64, "both blobs are cached");

    // Cut short behind the server's back: the length is the file's now,
    // on every path, not the cached one.
    std::fs::write(r.state.blobs.path(&m2.digest), &two[..777]).unwrap();
    for path in paths(&m2) {
        let (s, h, body) = call(&r, req("GET", &path, None, vec![])).await;
        assert_eq!(s, StatusCode::OK, "{path}");
        assert!(body == two[..777], "{path}: body is the file's");
        check(&h, &m2, 777, &path);
    }
}

/// The one-trip lookup (`Accept:` the object's media type) as the agent
/// sends it: status, bytes and the metadata header decoded, beside the
/// plain JSON answer of the same path. Each is asked twice, so the second
/// is the memo's answer.
async fn one_trip(r: &Reg, path: &str) -> (StatusCode, Vec<u8>, Option<serde_json::Value>, serde_json::Value) {
    use base64::Engine as _;
    let mut got = Vec::new();
    for _ in 0..2 {
        let mut q = req("GET", path, None, vec![]);
        q.headers_mut().insert(header::ACCEPT, bpfarm_object::client::OBJECT_MEDIA_TYPE.parse().unwrap());
        let (s, h, body) = call(r, q).await;
        let meta = h
            .get(bpfarm_object::client::METADATA_HEADER)
            .map(|v| json(&base64::engine::general_purpose::STANDARD.decode(v.as_bytes()).unwrap()));
        let (_, _, plain) = call(r, req("GET", path, None, vec![])).await;
        got.push((s, body, meta, json(&plain)));
    }
    assert_eq!(got[0], got[1], "{path}: the memoised answer differs from the first");
    got.remove(0)
}

/// The lookup's answer is memoised, yet never stale: a replace through
/// the API, a signature and a change written by another process (sqlite3)
/// and a delete are each seen by the next lookup, and the one-trip
/// answer's bytes and metadata header always match the JSON answer.
#[tokio::test]
async fn the_memoised_lookup_sees_every_change_to_the_index() {
    let r = registry(Settings::default()).await;
    let release = "6.1.0-99-amd64";
    let path = format!("/v1/objects/x86_64/v0.1.0/{release}");
    let db = r.data.join("index.sqlite");
    // sqlite3 is in ci/install-deps; a missing one fails here, loudly.
    let other_process = |sql: &str| {
        let out = std::process::Command::new("sqlite3").arg(&db).arg(sql).output().unwrap();
        assert!(out.status.success(), "sqlite3: {}", String::from_utf8_lossy(&out.stderr));
    };

    let one = b"object one".to_vec();
    let m1 = meta(release, &one);
    assert_eq!(publish(&r, &m1, &one, "").await.0, StatusCode::CREATED);
    let (s, body, header_meta, plain) = one_trip(&r, &path).await;
    assert_eq!((s, body), (StatusCode::OK, one.clone()));
    assert_eq!(header_meta.as_ref(), Some(&plain));
    assert_eq!(plain["digest"], m1.digest.as_str());
    assert!(plain.get("signature").is_none(), "{plain}");

    // Another process signs it.
    let sig = Digest::of_bytes(b"a signature");
    other_process(&format!(
        "INSERT INTO object_signatures (object_id, signature_digest, signature_size) \
         SELECT id, '{sig}', 11 FROM objects WHERE current = 1 AND kernel_release = '{release}';"
    ));
    let (s, body, header_meta, plain) = one_trip(&r, &path).await;
    assert_eq!((s, body), (StatusCode::OK, one.clone()));
    assert_eq!(header_meta.as_ref(), Some(&plain));
    assert_eq!(plain["signature"]["digest"], sig.as_str(), "{plain}");

    // Replaced through the API: the new object, unsigned.
    let two = b"object two, replacing one".to_vec();
    let m2 = meta(release, &two);
    assert_eq!(publish(&r, &m2, &two, "?replace=true").await.0, StatusCode::CREATED);
    let (s, body, header_meta, plain) = one_trip(&r, &path).await;
    assert_eq!((s, body), (StatusCode::OK, two.clone()));
    assert_eq!(header_meta.as_ref(), Some(&plain));
    assert_eq!(plain["digest"], m2.digest.as_str());
    assert!(plain.get("signature").is_none(), "{plain}");

    // Another process changes the row.
    other_process(&format!(
        "UPDATE objects SET published_at = '2001-02-03T04:05:06Z' WHERE current = 1 AND kernel_release = '{release}';"
    ));
    let (s, body, header_meta, plain) = one_trip(&r, &path).await;
    assert_eq!((s, body), (StatusCode::OK, two.clone()));
    assert_eq!(header_meta.as_ref(), Some(&plain));
    assert_eq!(plain["published_at"], "2001-02-03T04:05:06Z");

    // Deleted (as `gc` removes a version): gone from both answers.
    let mut tx = r.state.repo.begin_write().await.unwrap();
    assert_eq!(tx.delete_version("v0.1.0").await.unwrap(), 2, "the object and the one it replaced");
    tx.commit().await.unwrap();
    let (s, _, header_meta, plain) = one_trip(&r, &path).await;
    assert_eq!((s, header_meta), (StatusCode::NOT_FOUND, None));
    assert!(plain["message"].as_str().unwrap().contains("no object"), "{plain}");

    // Published again, then deleted by another process: gone too.
    assert_eq!(publish(&r, &m2, &two, "").await.0, StatusCode::CREATED);
    assert_eq!(one_trip(&r, &path).await.1, two);
    other_process(&format!("DELETE FROM object_signatures; DELETE FROM objects WHERE kernel_release = '{release}';"));
    assert_eq!(one_trip(&r, &path).await.0, StatusCode::NOT_FOUND);
}

/// An index file renamed over a serving registry (a restored backup with
/// a token revoked in it): every connection of the registry still reads
/// the old file, so the revoked token would pass. The registry fails
/// closed instead: no presented token is let through, `/healthz` fails so
/// a supervisor restarts it, and anonymous reads go on.
#[tokio::test]
async fn an_index_replaced_under_the_registry_lets_no_token_through() {
    let r = registry(Settings::default()).await;
    let read = |token: Option<&str>| {
        let token = token.map(str::to_owned);
        let r = &r;
        async move { call(r, req("GET", "/v1/objects", token.as_deref(), vec![])).await }
    };
    for _ in 0..2 {
        assert_eq!(read(Some(&r.read)).await.0, StatusCode::OK);
        assert_eq!(read(Some(&r.push)).await.0, StatusCode::OK);
    }
    assert_eq!(call(&r, req("GET", "/healthz", None, vec![])).await.0, StatusCode::OK);
    let db = r.data.join("index.sqlite");
    let copy = r.data.join("restored.sqlite");
    let out = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg(format!("VACUUM INTO '{}';", copy.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "sqlite3: {}", String::from_utf8_lossy(&out.stderr));
    let out = std::process::Command::new("sqlite3")
        .arg(&copy)
        .arg("DELETE FROM tokens WHERE name = 'fleet';")
        .output()
        .unwrap();
    assert!(out.status.success(), "sqlite3: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::rename(&copy, &db).unwrap();

    let (s, _, body) = read(Some(&r.read)).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "the token revoked in the new index was let through");
    assert!(
        json(&body)["message"].as_str().unwrap().contains("index file was replaced"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_ne!(read(Some(&r.push)).await.0, StatusCode::OK, "a token was checked against the old file");
    let (s, _, body) = call(&r, req("GET", "/healthz", None, vec![])).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("restart the registry"));
    // Anonymous reads are not a token check: they go on.
    assert_eq!(read(None).await.0, StatusCode::OK);
}

/// The access check reads the stored tokens from the memo while the index
/// is unchanged, yet a token revoked by another process is refused on the
/// very next request: `bpfarm-registry token revoke` (a process of its
/// own) and a raw `sqlite3` delete. A token another process creates is
/// taken at once too. (With the memo's change signal ignored, the revoked
/// tokens would still be let through here.)
#[tokio::test]
async fn a_token_revoked_by_another_process_is_refused_on_the_next_request() {
    let r = registry(Settings { require_read_token: true, ..Settings::default() }).await;
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bpfarm-registry"))
            .args(args)
            .arg("--data")
            .arg(&r.data)
            .env("BPFARM_LOG", "error")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let read = |token: &str| {
        let token = token.to_owned();
        let r = &r;
        async move { call(r, req("GET", "/v1/objects", Some(&token), vec![])).await }
    };
    let kernels = |release: &str| {
        let k = serde_json::json!({"kernels": [{"release": release, "arch": "x86_64"}]});
        serde_json::to_vec(&k).unwrap()
    };
    // Each token is let through again and again (from the memo after the first).
    for _ in 0..3 {
        assert_eq!(read(&r.read).await.0, StatusCode::OK);
        assert_eq!(read(&r.push).await.0, StatusCode::OK);
    }

    let (code, _, err) = cli(&["token", "revoke", "--name", "fleet"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("revoked token \"fleet\""), "{err}");
    let (s, _, body) = read(&r.read).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "the revoked read token was let through");
    assert_eq!(json(&body)["message"], "unknown token");
    // An anonymous read is still refused, and the push token still works.
    assert_eq!(call(&r, req("GET", "/v1/objects", None, vec![])).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(read(&r.push).await.0, StatusCode::OK);
    let put =
        |token: &str, name: &str| req("PUT", &format!("/v1/matrices/{name}"), Some(token), kernels("6.1.0-1-amd64"));
    assert_eq!(call(&r, put(&r.push, "a")).await.0, StatusCode::CREATED);
    // The memo holds the tokens again (the PUT's commit dropped them), so
    // the raw delete below races a warm memo, not a cold one.
    assert_eq!(read(&r.push).await.0, StatusCode::OK);

    // Revoked by a raw write of another process (no bpfarm code at all).
    let out = std::process::Command::new("sqlite3")
        .arg(r.data.join("index.sqlite"))
        .arg("DELETE FROM tokens WHERE name = 'ci';")
        .output()
        .unwrap();
    assert!(out.status.success(), "sqlite3: {}", String::from_utf8_lossy(&out.stderr));
    let (s, _, body) = call(&r, put(&r.push, "b")).await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "the revoked push token was let through: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(read(&r.push).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(call(&r, req("GET", "/v1/matrices/b", Some(&r.push), vec![])).await.0, StatusCode::UNAUTHORIZED);

    // A token created by another process works on its first request.
    let (code, token, err) = cli(&["token", "create", "--name", "later", "--scope", "read"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(read(token.trim()).await.0, StatusCode::OK);
    // Revoking a name nobody holds says so (exit 2), and changes nothing.
    let (code, _, err) = cli(&["token", "revoke", "--name", "fleet"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no token named \"fleet\""), "{err}");
    assert_eq!(read(token.trim()).await.0, StatusCode::OK);
    // A mistyped --data is refused (exit 2) and leaves no index behind.
    let typo = r.data.join("typo");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bpfarm-registry"))
        .args(["token", "revoke", "--name", "later", "--data"])
        .arg(&typo)
        .env("BPFARM_LOG", "error")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no registry index in") && err.contains("nothing to revoke"), "{err}");
    assert!(!typo.exists(), "a mistyped --data was created");
    assert_eq!(read(token.trim()).await.0, StatusCode::OK);
}

/// Rows written straight into the index (as `the_coverage_page_is_bounded…`
/// does): `objects` (release, arch, version, current) and `failures`.
async fn index_rows(r: &Reg, objects: &[(String, &str, String, bool)], failures: &[(String, &str, String)]) {
    let db = index_pool(r).await;
    let mut tx = db.begin().await.unwrap();
    for (i, (release, arch, version, current)) in objects.iter().enumerate() {
        sqlx::query(
            "INSERT INTO objects (kernel_release, arch, version, file_name, digest, size, metadata, published_at, current)
             VALUES (?, ?, ?, 'f', ?, 7, '{}', 't', ?)",
        )
        .bind(release)
        .bind(arch)
        .bind(version)
        .bind(Digest::of_bytes(format!("{i}").as_bytes()).as_str())
        .bind(i64::from(*current))
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    for (release, arch, version) in failures {
        sqlx::query("INSERT INTO failures (kernel_release, arch, version, message, reported_at) VALUES (?, ?, ?, 'error: x', 't')")
            .bind(release)
            .bind(arch)
            .bind(version)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    db.close().await;
}

/// Coverage counted by brute force over the rows sqlite holds now: every
/// (release, arch, version) present or failed, the pairs expected (each
/// release on every arch it can run on and any arch it has rows on), and
/// the versions (`v1.N.0`), newest (largest N) first.
struct Brute {
    present: BTreeSet<(String, String, String)>,
    failed: BTreeSet<(String, String, String)>,
    by_age: Vec<String>,
    releases: BTreeSet<String>,
    pairs: BTreeSet<(String, Arch)>,
}

/// Counts of a brute force: totals per state, and per (version, arch, state).
type BruteCounts = (BTreeMap<&'static str, usize>, BTreeMap<(String, Arch, &'static str), usize>);

impl Brute {
    async fn read(r: &Reg) -> Brute {
        let db = index_pool(r).await;
        let rows = |sql: &'static str| sqlx::query_as::<_, (String, String, String)>(sql).fetch_all(&db);
        let present: BTreeSet<_> = rows("SELECT kernel_release, arch, version FROM objects WHERE current = 1")
            .await
            .unwrap()
            .into_iter()
            .collect();
        let failed: BTreeSet<_> =
            rows("SELECT kernel_release, arch, version FROM failures").await.unwrap().into_iter().collect();
        db.close().await;
        let versions: BTreeSet<&str> = present.iter().chain(&failed).map(|(_, _, v)| v.as_str()).collect();
        let mut by_age: Vec<String> = versions.into_iter().map(str::to_owned).collect();
        by_age.sort_by_key(|v| std::cmp::Reverse(v[3..v.len() - 2].parse::<u32>().unwrap()));
        let releases = present.iter().chain(&failed).map(|(r, _, _)| r.clone()).collect();
        let mut pairs = BTreeSet::new();
        for (rel, arch, _) in present.iter().chain(&failed) {
            pairs.insert((rel.clone(), Arch::from_any(arch).unwrap()));
            for a in Arch::ALL {
                if a.can_run(rel) {
                    pairs.insert((rel.clone(), a));
                }
            }
        }
        Brute { present, failed, by_age, releases, pairs }
    }

    /// The 12 newest, newest first (what the page and the JSON count).
    fn newest(&self) -> Vec<&str> {
        self.by_age.iter().take(12).map(String::as_str).collect()
    }

    fn older(&self) -> Vec<&str> {
        self.by_age.iter().skip(12).map(String::as_str).collect()
    }

    fn state(&self, rel: &str, a: Arch, v: &str) -> &'static str {
        let key = (rel.to_owned(), a.uname().to_owned(), v.to_owned());
        if self.present.contains(&key) {
            "present"
        } else if self.failed.contains(&key) {
            "failed"
        } else {
            "missing"
        }
    }

    fn count(&self, counted: &[&str]) -> BruteCounts {
        let mut totals: BTreeMap<&str, usize> = BTreeMap::new();
        let mut per_version = BTreeMap::new();
        for (rel, a) in &self.pairs {
            for v in counted {
                let s = self.state(rel, *a, v);
                *totals.entry(s).or_default() += 1;
                *per_version.entry((v.to_string(), *a, s)).or_default() += 1;
            }
        }
        (totals, per_version)
    }

    /// `/v1/coverage` and the page `/` count the newest 12 as the brute
    /// force does: totals, per version and arch, every kernel's cell, the
    /// page's columns and rows. Returns the two bodies.
    async fn check(&self, r: &Reg) -> (Vec<u8>, Vec<u8>) {
        let newest = self.newest();
        let (totals, per_version) = self.count(&newest);
        let n = |s: &str| totals.get(s).copied().unwrap_or(0);

        let (s, _, json_body) = call(r, req("GET", "/v1/coverage?limit=10000", None, vec![])).await;
        assert_eq!(s, StatusCode::OK);
        let v = json(&json_body);
        assert_eq!(v["versions_total"], self.by_age.len());
        let mut want: Vec<&str> = newest.clone();
        want.sort();
        assert_eq!(v["versions"], serde_json::json!(want));
        assert_eq!(
            v["counts"],
            serde_json::json!({"present": n("present"), "failed": n("failed"), "missing": n("missing")})
        );
        assert_eq!(v["total_kernels"], self.pairs.len());
        for ((ver, a, st), count) in &per_version {
            assert_eq!(v["by_version"][ver][a.uname()][st], *count, "{ver} {a} {st}");
        }
        assert_eq!(v["kernels"].as_array().unwrap().len(), self.pairs.len());
        for k in v["kernels"].as_array().unwrap() {
            let (rel, a) = (k["release"].as_str().unwrap(), Arch::from_any(k["arch"].as_str().unwrap()).unwrap());
            for ver in &newest {
                assert_eq!(k["versions"][ver], self.state(rel, a, ver), "{rel} {a} {ver}");
            }
        }

        let (s, _, page_body) = call(r, req("GET", "/", None, vec![])).await;
        assert_eq!(s, StatusCode::OK);
        let html = String::from_utf8(page_body.clone()).unwrap();
        for st in ["present", "failed", "missing"] {
            assert!(html.contains(&format!("\">{} {st}</a>", n(st))), "{st}: {}", n(st));
        }
        let versions_said = if self.by_age.len() > 12 {
            format!("the 12 newest of {} versions", self.by_age.len())
        } else {
            format!("{} versions", self.by_age.len())
        };
        assert!(html.contains(&format!("across {} kernel releases, {versions_said}", self.releases.len())));
        // The detail: the 12 newest as columns, newest first, every cell as
        // the brute force has it.
        let columns: Vec<&str> = html.split("<th colspan=\"2\">").skip(1).map(|s| &s[..s.find('<').unwrap()]).collect();
        assert_eq!(columns, newest);
        let mut rows = 0;
        for tr in html.split("<tr data-release=\"").skip(1) {
            let rel = &tr[..tr.find('"').unwrap()];
            let tr = &tr[..tr.find("</tr>").unwrap()];
            let cells: Vec<&str> = tr.split("<td class=\"").skip(1).map(|s| &s[..s.find('"').unwrap()]).collect();
            let mut want = Vec::new();
            for ver in &newest {
                for a in Arch::ALL {
                    want.push(if self.pairs.contains(&(rel.to_owned(), a)) { self.state(rel, a, ver) } else { "none" });
                }
            }
            assert_eq!(cells, want, "{rel}");
            rows += 1;
        }
        assert_eq!(rows, self.releases.len());
        // The version table counts the 12, each as the brute force does.
        for ver in &newest {
            for a in Arch::ALL {
                let c = |st: &'static str| per_version.get(&(ver.to_string(), a, st)).copied().unwrap_or(0);
                if c("present") + c("failed") + c("missing") > 0 {
                    let cell = format!(
                        "<span class=\"p\">{}</span> / <span class=\"f\">{}</span> / <span class=\"m\">{}</span>",
                        c("present"),
                        c("failed"),
                        c("missing")
                    );
                    let at = html.find(&format!("\">{ver}</a></th>")).unwrap_or_else(|| panic!("no row for {ver}"));
                    let row = &html[at..at + html[at..].find("</tr>").unwrap()];
                    assert!(row.contains(&cell), "{ver} {a}: {row}");
                }
            }
        }
        (json_body, page_body)
    }
}

/// A write by another process: `sqlite3` on the registry's index (in
/// ci/install-deps; a missing one fails here, loudly).
fn sqlite3(r: &Reg, sql: &str) {
    let out = std::process::Command::new("sqlite3").arg(r.data.join("index.sqlite")).arg(sql).output().unwrap();
    assert!(out.status.success(), "sqlite3: {}", String::from_utf8_lossy(&out.stderr));
}

/// With more versions than it counts, the page counts what `/v1/coverage`
/// counts — the 12 newest (natural order: v1.30.0 before v1.9.0) — and its
/// counts, per version, per series and cell by cell, equal a brute-force
/// count over the same rows read back from sqlite; it says which versions
/// it leaves out and links them. `?version=` counts an older one alone.
/// Asked again, both answer the same from the memo; after another
/// process changes the index, both count the change.
#[tokio::test]
async fn the_page_counts_the_newest_versions_as_a_brute_force_count_does() {
    let r = registry(Settings::default()).await;
    let (kernels, versions) = (24usize, 31usize);
    let release = |k: usize| match k % 3 {
        0 => format!("6.1.0-{k}-amd64"),
        1 => format!("5.15.0-{k}-generic"),
        _ => format!("6.12.{k}+deb13-arm64"),
    };
    let arch_of = |k: usize| if k % 3 == 2 { "aarch64" } else { "x86_64" };
    let version = |v: usize| format!("v1.{v}.0");
    let (mut objects, mut failures) = (Vec::new(), Vec::new());
    for k in 0..kernels {
        for v in 0..versions {
            // The last kernel has only old versions: still a row.
            if k == kernels - 1 && v > 5 {
                continue;
            }
            match (k * 7 + v * 3) % 5 {
                0 | 1 => objects.push((release(k), arch_of(k), version(v), true)),
                2 => {
                    // A failure and then an object: present.
                    failures.push((release(k), arch_of(k), version(v)));
                    objects.push((release(k), arch_of(k), version(v), true));
                }
                3 => failures.push((release(k), arch_of(k), version(v))),
                // A replaced object only (history): missing.
                _ if v % 2 == 0 => objects.push((release(k), arch_of(k), version(v), false)),
                _ => {}
            }
        }
        // -generic kernels run on both: some aarch64 objects too.
        if k % 3 == 1 {
            objects.push((release(k), "aarch64", version(versions - 1), true));
        }
    }
    index_rows(&r, &objects, &failures).await;

    // The brute force, over the rows as sqlite holds them.
    let b = Brute::read(&r).await;
    assert_eq!(b.by_age.len(), versions);
    let (json_body, page_body) = b.check(&r).await;
    let html = String::from_utf8(page_body.clone()).unwrap();
    // What it leaves out, and how to see it.
    assert!(
        html.contains(&format!("The {} older versions are not", versions - 12)),
        "the page says what it leaves out"
    );
    assert!(html.contains("?version=&lt;name&gt;"));
    let older = b.older();
    for old in &older {
        assert!(html.contains(&format!("<a href=\"/?version={old}\">{old}</a>")), "no link to {old}");
        assert!(!html.contains(&format!("<th colspan=\"2\">{old}</th>")), "{old} is a column");
    }

    // An older version, alone: its own brute-force count.
    let old = older[3];
    let (s, _, body) = call(&r, req("GET", &format!("/?version={old}"), None, vec![])).await;
    assert_eq!(s, StatusCode::OK);
    let html = String::from_utf8(body).unwrap();
    let (totals, _) = b.count(&[old]);
    for st in ["present", "failed", "missing"] {
        assert!(html.contains(&format!("\">{} {st}</a>", totals.get(st).copied().unwrap_or(0))), "{old} {st}");
    }
    assert!(!html.contains("older versions are not"), "one version asked for, none left out");
    let (_, _, body) = call(&r, req("GET", &format!("/v1/coverage?version={old}"), None, vec![])).await;
    assert_eq!(json(&body)["counts"]["present"], totals.get("present").copied().unwrap_or(0));

    // Asked again (the memo's answer): the same bytes, the same count.
    assert_eq!(b.check(&r).await, (json_body.clone(), page_body.clone()));

    // Another process changes the index: an object of a counted version
    // goes, a kernel gains a failure, the newest version gains an object.
    let newest = b.newest()[0].to_owned();
    let (gone_rel, gone_arch, gone_ver) = b.present.iter().find(|(_, _, v)| *v == newest).unwrap().clone();
    sqlite3(
        &r,
        &format!(
            "DELETE FROM objects WHERE kernel_release = '{gone_rel}' AND arch = '{gone_arch}' AND version = '{gone_ver}';
             INSERT OR REPLACE INTO failures (kernel_release, arch, version, message, reported_at)
               VALUES ('{gone_rel}', '{gone_arch}', '{gone_ver}', 'error: gone', 't');
             INSERT INTO objects (kernel_release, arch, version, file_name, digest, size, metadata, published_at, current)
               VALUES ('7.0.0-1-amd64', 'x86_64', '{newest}', 'f', '{}', 7, '{{}}', 't', 1);",
            Digest::of_bytes(b"added by another process")
        ),
    );
    let changed = Brute::read(&r).await;
    assert_eq!(changed.state(&gone_rel, Arch::from_any(&gone_arch).unwrap(), &gone_ver), "failed");
    assert!(changed.releases.contains("7.0.0-1-amd64"));
    let (json_after, page_after) = changed.check(&r).await;
    assert_ne!((json_after, page_after), (json_body, page_body));
}

/// The coverage answers are memoised, yet every change to the index is
/// counted by the next request: a publish through the API (this
/// process), an import and a `gc` (other processes, `bpfarm-registry`
/// itself). Each time `/v1/coverage` and the page equal a brute-force
/// count. (With the memo's stamp ignored, the answers after the import
/// and the gc would be the warm ones of before.)
#[tokio::test]
async fn the_coverage_answers_follow_a_publish_an_import_and_a_gc() {
    let r = registry(Settings::default()).await;
    let cli = |args: &[&str], data: &std::path::Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bpfarm-registry"))
            .args(args)
            .arg("--data")
            .arg(data)
            .env("BPFARM_LOG", "error")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let object = |release: &str, version: &str| {
        let bytes = format!("{release} {version}").into_bytes();
        let mut m = meta(release, &bytes);
        m.identity = Identity::new(release, Arch::X86_64, version).unwrap();
        m.file_name = m.identity.file_name();
        (m, bytes)
    };
    for version in ["v1.1.0", "v1.2.0"] {
        for k in 1..=3 {
            let (m, bytes) = object(&format!("6.1.0-{k}-amd64"), version);
            assert_eq!(publish(&r, &m, &bytes, "").await.0, StatusCode::CREATED);
        }
    }
    let before = Brute::read(&r).await;
    let warm = before.check(&r).await;
    assert_eq!(before.check(&r).await, warm, "asked again");

    // Imported by another process: a bundle of another registry's objects.
    let other = registry(Settings::default()).await;
    for k in 2..=5 {
        let (m, bytes) = object(&format!("6.1.0-{k}-amd64"), "v1.3.0");
        assert_eq!(publish(&other, &m, &bytes, "").await.0, StatusCode::CREATED);
    }
    let tar = other._dir.path().join("bundle.tar");
    cli(&["bundle", "--out", tar.to_str().unwrap()], &other.data);
    cli(&["import", tar.to_str().unwrap()], &r.data);
    let imported = Brute::read(&r).await;
    assert_eq!(imported.by_age.first().map(String::as_str), Some("v1.3.0"));
    assert_eq!(imported.releases.len(), 5);
    let after_import = imported.check(&r).await;
    assert_ne!(after_import, warm);

    // Collected by another process: only the 2 newest versions are kept.
    cli(&["gc", "--keep-versions", "2"], &r.data);
    let collected = Brute::read(&r).await;
    assert_eq!(collected.by_age, ["v1.3.0", "v1.2.0"]);
    let after_gc = collected.check(&r).await;
    assert_ne!(after_gc, after_import);

    // Published through the API (this process): a new kernel.
    let (m, bytes) = object("6.12.1+deb13-amd64", "v1.3.0");
    assert_eq!(publish(&r, &m, &bytes, "").await.0, StatusCode::CREATED);
    let published = Brute::read(&r).await;
    assert!(published.releases.contains("6.12.1+deb13-amd64"));
    assert_ne!(published.check(&r).await, after_gc);
}

/// The guard in front of every route counts each request once, by route,
/// method and status class, whichever way it went: answered anonymously or
/// after a token read, refused before its handler (no token, an unknown
/// one), re-answered as JSON (a bad query), on `/v2` by the endpoint the
/// dispatcher chose, and on no route at all.
#[tokio::test]
async fn every_request_is_counted_once_by_route_method_and_status() {
    let r = registry(Settings::default()).await;
    let m = meta("6.1.0-56-amd64", b"counted");
    assert_eq!(publish(&r, &m, b"counted", "").await.0, StatusCode::CREATED);
    let blob = format!("/v1/blobs/{}", m.digest);
    for _ in 0..3 {
        assert_eq!(call(&r, req("GET", &blob, None, vec![])).await.0, StatusCode::OK);
    }
    assert_eq!(call(&r, req("GET", &blob, Some(&r.read), vec![])).await.0, StatusCode::OK);
    assert_eq!(call(&r, req("PUT", &blob, None, b"counted".to_vec())).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        call(&r, req("PUT", &blob, Some("bpfarm_wrong"), b"counted".to_vec())).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (s, h, _) = call(&r, req("GET", "/v1/objects?limit=abc", None, vec![])).await;
    assert_eq!((s, &h[header::CONTENT_TYPE]), (StatusCode::BAD_REQUEST, &"application/json".parse().unwrap()));
    let v2 = format!("/v2/bpfarm/tracee-bpf/blobs/{}", m.digest);
    assert_eq!(call(&r, req("GET", &v2, None, vec![])).await.0, StatusCode::OK);
    assert_eq!(call(&r, req("GET", "/no/such/deep/path", None, vec![])).await.0, StatusCode::NOT_FOUND);

    let (_, _, text) = call(&r, req("GET", "/metrics", None, vec![])).await;
    let text = String::from_utf8(text).unwrap();
    let counted: std::collections::BTreeMap<&str, u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("bpfarm_http_requests_total"))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(labels, n)| (labels, n.parse().unwrap()))
        .collect();
    let want: std::collections::BTreeMap<&str, u64> = [
        (r#"{route="/v1/blobs/{digest}",method="PUT",status="2xx"}"#, 1),
        (r#"{route="/v1/objects",method="POST",status="2xx"}"#, 1),
        (r#"{route="/v1/blobs/{digest}",method="GET",status="2xx"}"#, 4),
        (r#"{route="/v1/blobs/{digest}",method="PUT",status="4xx"}"#, 2),
        (r#"{route="/v1/objects",method="GET",status="4xx"}"#, 1),
        (r#"{route="/v2/{name}/blobs/{digest}",method="GET",status="2xx"}"#, 1),
        (r#"{route="other",method="GET",status="4xx"}"#, 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(counted, want, "{text}");
}
