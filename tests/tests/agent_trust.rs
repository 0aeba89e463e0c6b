//! The agent as an attacker meets it (issue #8): hostile `/v1` registries,
//! static mirrors and OCI registries (paths for file names, another kernel
//! or arch, endless and trickling bodies), planted install paths and lock
//! symlinks, TLS with a private CA, bad OCI references and objects built
//! for another arch given by path. Each test runs the real `bpfarm-agent`
//! (and builder) and asserts the exit code, a message naming the cause, and
//! that nothing was written outside the install path.
//!
//! The hostile servers are `bpfarm_tests::hostile` (real HTTP on loopback);
//! TLS is real nginx with an openssl-made CA; objects are real builder
//! output for the running kernel and for a Debian arm64 kernel.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bpfarm_object::embed::{self, EmbeddedIdentity};
use bpfarm_object::{Arch, Digest, Identity, object_file_name};
use bpfarm_tests::hostile::{Body, HostileServer, Reply, Request};
use bpfarm_tests::{
    agent_command, assert_fetch_refused_in_bounds, bin, chmod, output_with_peak_rss, privileged, process_dir, run_ok,
    running_kernel_build, running_object_name, running_release, show, walk,
};
use serde_json::{Value, json};

/// The running kernel's object as the builder wrote it (identity embedded),
/// its metadata, and the same object as it sits in the builder's cache
/// (no embedded identity).
struct Fixture {
    bytes: Vec<u8>,
    meta: Value,
    bare: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = process_dir(Path::new(env!("CARGO_TARGET_TMPDIR")), "agent-trust-");
        run_ok(&mut running_kernel_build(&dir.join("cache"), &dir.join("out")));
        let object = dir.join("out").join(std::env::consts::ARCH).join(running_object_name());
        let bytes = std::fs::read(&object).unwrap();
        let meta: Value = serde_json::from_slice(
            &std::fs::read(object.with_file_name(format!("{}.json", running_object_name()))).unwrap(),
        )
        .unwrap();
        let bare = walk(&dir.join("cache/objects"))
            .into_iter()
            .find(|p| p.extension().is_some_and(|e| e == "o"))
            .map(|p| std::fs::read(p).unwrap())
            .expect("the cached object");
        assert!(embed::read(&bare).unwrap().is_none(), "the cache holds objects without the identity");
        assert!(embed::read(&bytes).unwrap().is_some(), "the builder embeds the identity");
        Fixture { bytes, meta, bare }
    })
}

/// Everything under `root` outside `install`.
fn outside(root: &Path, install: &Path) -> BTreeSet<PathBuf> {
    walk(root).into_iter().filter(|p| !p.starts_with(install)).collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A `/v1` registry that answers every lookup with `meta` and every blob
/// with `blob`.
fn v1(meta: Value, blob: Body) -> HostileServer {
    HostileServer::start(move |r: &Request| {
        if r.path.starts_with("/v1/objects/") {
            Reply::json(200, &meta)
        } else if r.path.starts_with("/v1/blobs/") {
            Reply {
                status: 200,
                headers: vec![("Content-Type".into(), "application/octet-stream".into())],
                body: blob.clone(),
            }
        } else {
            Reply::not_found()
        }
    })
}

/// An honest `/v1` registry for the fixture.
fn honest() -> HostileServer {
    let f = fixture();
    v1(f.meta.clone(), Body::Bytes(f.bytes.clone()))
}

/// A server with only the static layout: `files` maps a file name under
/// `/v0.1.0/<arch>/` to its reply; `/v1` is a plain 404.
fn static_mirror(files: Vec<(String, Reply)>) -> HostileServer {
    HostileServer::start(move |r: &Request| {
        let prefix = format!("/v0.1.0/{}/", std::env::consts::ARCH);
        r.path
            .strip_prefix(&prefix)
            .and_then(|f| files.iter().find(|(n, _)| n == f))
            .map(|(_, reply)| reply.clone())
            .unwrap_or_else(Reply::not_found)
    })
}

fn sha256_file(bytes: &[u8]) -> Reply {
    Reply::bytes(200, "text/plain", format!("{}  {}\n", Digest::of_bytes(bytes).hex(), running_object_name()))
}

/// Runs `agent fetch` against `registries` into a fresh install path of a
/// fresh folder, asserts it fails naming `cause`, and that nothing was
/// written anywhere (the install path included: nothing was accepted).
fn refused(registries: &[&str], extra: &[&str], cause: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let install = dir.path().join("install");
    let before = walk(dir.path());
    let mut c = agent_command(&install);
    for r in registries {
        c.args(["--registry", r]);
    }
    let out = c.args(extra).args(["--build-policy", "never", "fetch"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(stderr(&out).contains(cause), "the message does not name {cause:?}:\n{}", show(&out));
    assert!(!install.join(running_object_name()).exists(), "an object was installed:\n{}", show(&out));
    assert_eq!(walk(dir.path()).into_iter().filter(|p| !p.starts_with(&install)).collect::<BTreeSet<_>>(), before);
    assert!(walk(&install).iter().all(|p| p.ends_with(".bpfarm.lock")), "{:?}", walk(&install));
    out
}

#[test]
fn hostile_v1_metadata_is_refused_and_nothing_is_written() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let pwned = dir.path().join("pwned");
    let rel = "6.1.0-56-amd64";
    let cases: Vec<(&str, Value, String)> = vec![
        ("file_name", pwned.to_str().unwrap().into(), "is not the name its identity makes".into()),
        ("file_name", "../../pwned".into(), "is not the name its identity makes".into()),
        ("file_name", "/etc/cron.d/bpfarm-pwned".into(), "is not the name its identity makes".into()),
        ("arch", "aarch64".into(), "its arch is \"aarch64\", expected \"x86_64\"".into()),
        ("kernel_release", rel.into(), format!("its kernel_release is \"{rel}\", expected \"{}\"", running_release())),
        ("version", "v9.9.9".into(), "its version is \"v9.9.9\", expected \"v0.1.0\"".into()),
        ("kernel_release", "../../etc".into(), "invalid kernel release".into()),
    ];
    for (field, value, cause) in cases {
        let mut meta = f.meta.clone();
        meta[field] = value.clone();
        // Keep the name consistent with the identity, so the identity check
        // itself is what refuses.
        if field != "file_name" && field != "arch" {
            let (r, v) = (meta["kernel_release"].as_str().unwrap(), meta["version"].as_str().unwrap());
            meta["file_name"] = object_file_name(r, v).into();
        }
        let server = v1(meta, Body::Bytes(f.bytes.clone()));
        refused(&[&server.url], &[], &cause);
        assert!(!pwned.exists() && !Path::new("/etc/cron.d/bpfarm-pwned").exists());
    }
}

#[test]
fn a_registry_cannot_pass_off_another_kernels_object_or_an_unlabelled_one() {
    let f = fixture();
    // A real object, labelled for another kernel, with metadata (and digest)
    // claiming it is this host's.
    let other = EmbeddedIdentity {
        identity: Identity::new("6.1.0-56-amd64", Arch::X86_64, "v0.1.0").unwrap(),
        kernel: Default::default(),
        program_digest: Digest::of_bytes(b"p"),
    };
    let relabelled = embed::embed(&f.bytes, &other).unwrap();
    for (bytes, cause) in [
        (
            relabelled,
            format!(
                "built for kernel 6.1.0-56-amd64 (x86_64) version v0.1.0, but this host needs kernel {}",
                running_release()
            ),
        ),
        (f.bare.clone(), "it carries no embedded identity (.bpfarm.identity section)".to_owned()),
    ] {
        let mut meta = f.meta.clone();
        meta["digest"] = Digest::of_bytes(&bytes).to_string().into();
        meta["size"] = bytes.len().into();
        let server = v1(meta, Body::Bytes(bytes.clone()));
        refused(&[&server.url], &[], &cause);
        // The same through a static mirror with no .json at all.
        let mirror = static_mirror(vec![
            (format!("{}.sha256", running_object_name()), sha256_file(&bytes)),
            (running_object_name(), Reply::bytes(200, "application/octet-stream", bytes.clone())),
        ]);
        refused(&[&mirror.url], &[], &cause);
    }
}

#[test]
fn oversized_and_endless_bodies_stop_at_their_cap() {
    let f = fixture();
    let gib = 1u64 << 30;
    // Honest metadata, a blob that never ends: read stops at the metadata's size.
    let server = v1(f.meta.clone(), Body::Stream { total: gib, content_length: None });
    let cause = format!("it sent more than the {} bytes its metadata names", f.bytes.len());
    assert_fetch_refused_in_bounds("endless /v1 blob", &server.url, &cause);

    // Metadata that claims a 1 GiB object: refused before the download starts.
    let mut meta = f.meta.clone();
    meta["size"] = gib.into();
    let server = v1(meta, Body::Stream { total: gib, content_length: Some(gib) });
    refused(&[&server.url], &[], "its metadata says 1073741824 bytes, over the 67108864-byte limit");
    assert!(server.requests().iter().all(|r| !r.path.starts_with("/v1/blobs/")), "the blob was requested");

    // Metadata that never ends: capped at 1 MiB.
    let server = HostileServer::start(|_: &Request| Reply {
        status: 200,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: Body::Stream { total: 1 << 30, content_length: None },
    });
    refused(&[&server.url], &[], "the response is larger than 1048576 bytes");

    // A static mirror without .json whose object never ends: the object
    // limit holds (here lowered with --max-object-size).
    let mirror = static_mirror(vec![
        (format!("{}.sha256", running_object_name()), sha256_file(&f.bytes)),
        (
            running_object_name(),
            Reply { status: 200, headers: vec![], body: Body::Stream { total: gib, content_length: Some(gib) } },
        ),
    ]);
    refused(&[&mirror.url], &["--max-object-size", "1048576"], "the response is larger than 1048576 bytes");
}

#[test]
fn static_mirrors_json_is_checked_like_v1_metadata() {
    let f = fixture();
    for (field, value, cause) in [
        ("file_name", Value::from("../../pwned"), "is not the name its identity makes"),
        ("file_name", Value::from("/etc/cron.d/bpfarm-pwned"), "is not the name its identity makes"),
        ("arch", Value::from("aarch64"), "its arch is \"aarch64\", expected \"x86_64\""),
        ("kernel_release", Value::from("6.1.0-56-amd64"), "its kernel_release is \"6.1.0-56-amd64\""),
        ("digest", Value::from(Digest::of_bytes(b"other").to_string()), "the .sha256 says"),
    ] {
        let mut meta = f.meta.clone();
        meta[field] = value;
        if field == "kernel_release" {
            meta["file_name"] = object_file_name("6.1.0-56-amd64", "v0.1.0").into();
        }
        let mirror = static_mirror(vec![
            (format!("{}.sha256", running_object_name()), sha256_file(&f.bytes)),
            (format!("{}.json", running_object_name()), Reply::json(200, &meta)),
            (running_object_name(), Reply::bytes(200, "application/octet-stream", f.bytes.clone())),
        ]);
        refused(&[&mirror.url], &[], cause);
    }
}

#[test]
fn trickling_registries_time_out_as_a_whole_and_the_next_one_is_tried() {
    let f = fixture();
    let slow = |body: Vec<u8>| Body::Trickle { bytes: body, every: Duration::from_millis(100) };
    // /v1 metadata one byte every 100 ms (about 2 minutes in all).
    let meta_bytes = serde_json::to_vec(&f.meta).unwrap();
    let trickle_v1 = HostileServer::start(move |_: &Request| Reply {
        status: 200,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: slow(meta_bytes.clone()),
    });
    // A static mirror whose object trickles (each chunk well within any
    // read timeout: only a deadline on the whole attempt stops it).
    let trickle_static = static_mirror(vec![
        (format!("{}.sha256", running_object_name()), sha256_file(&f.bytes)),
        (running_object_name(), Reply { status: 200, headers: vec![], body: slow(f.bytes.clone()) }),
    ]);
    let good = honest();
    let dir = tempfile::tempdir().unwrap();
    let install = dir.path().join("install");
    let started = Instant::now();
    let out = agent_command(&install)
        .args(["--registry", &trickle_v1.url, "--registry", &trickle_static.url, "--registry", &good.url])
        .args(["--timeout", "2", "--build-policy", "never", "fetch"])
        .output()
        .unwrap();
    let took = started.elapsed();
    eprintln!("two trickling registries at --timeout 2, then a good one: {took:?}");
    assert!(out.status.success(), "{}", show(&out));
    let err = stderr(&out);
    assert_eq!(err.matches("gave up: no complete answer within 2s (--timeout)").count(), 2, "{err}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(std::fs::read(install.join(running_object_name())).unwrap(), f.bytes);
    // The agent made the install path itself: private to it.
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&install).unwrap().permissions()) & 0o777,
        0o700
    );
}

#[test]
fn the_identity_is_embedded_after_the_cache() {
    // Another version label is a cache hit (the label is not in the key),
    // yet its object says the new version; the same label gives the same
    // bytes again.
    let dir = tempfile::tempdir().unwrap();
    let build = |version: &str, out: &str| {
        let o = Command::new(bin("bpfarm-builder"))
            .args(["build", "--running-kernel", "--no-progress", "--version", version, "--cache-dir"])
            .arg(dir.path().join("cache"))
            .arg("--out")
            .arg(dir.path().join(out))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", show(&o));
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        let bytes = std::fs::read(
            dir.path().join(out).join(std::env::consts::ARCH).join(object_file_name(&running_release(), version)),
        )
        .unwrap();
        (stdout, bytes)
    };
    let (first, a) = build("v0.1.0", "a");
    assert!(first.contains("1 built"), "{first}");
    let (second, b) = build("v0.2.0", "b");
    assert!(second.contains("1 cached"), "the version label changed the cache key: {second}");
    assert_eq!(embed::read(&b).unwrap().unwrap().identity.version, "v0.2.0");
    assert_ne!(a, b);
    let (_, again) = build("v0.1.0", "c");
    assert_eq!(a, again, "the same cached object and identity must give the same bytes");
}

#[test]
fn registry_headers_and_tokens_stay_on_their_origin() {
    let f = fixture();
    let elsewhere = honest();
    let target = elsewhere.url.clone();
    // The registry redirects every request to another origin (another port).
    let redirecting = HostileServer::start(move |r: &Request| Reply::redirect(&format!("{target}{}", r.path)));
    let dir = tempfile::tempdir().unwrap();
    let install = dir.path().join("install");
    let out = agent_command(&install)
        .args(["--registry", &redirecting.url, "--registry-header", "X-Cdn-Secret: s3cr3t"])
        .args(["--registry-token", "tok3n", "--build-policy", "never", "fetch"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(std::fs::read(install.join(running_object_name())).unwrap(), f.bytes);
    let mine = redirecting.requests();
    assert!(!mine.is_empty() && mine.iter().all(|r| r.header("x-cdn-secret") == Some("s3cr3t")));
    assert!(mine.iter().all(|r| r.header("authorization") == Some("Bearer tok3n")));
    let theirs = elsewhere.requests();
    assert!(!theirs.is_empty(), "the redirect was not followed");
    for r in &theirs {
        assert!(
            r.header("x-cdn-secret").is_none() && r.header("authorization").is_none(),
            "leaked to another origin: {r:?}"
        );
    }
}

#[test]
fn a_foreign_owned_install_path_is_refused_and_never_written() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    // A shared sticky folder, like /tmp, where nobody plants the install path first.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o1777);
    let planted = shared.join("tracee");
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    chmod(&src, 0o755);
    chmod(dir.path(), 0o755);
    std::fs::write(src.join(running_object_name()), &f.bytes).unwrap();
    std::fs::write(src.join(format!("{}.json", running_object_name())), serde_json::to_vec(&f.meta).unwrap()).unwrap();
    // A self-consistent object and .json, planted as nobody.
    let script = format!(
        "mkdir {p} && cp {s}/{n} {s}/{n}.json {p}/",
        p = planted.display(),
        s = src.display(),
        n = running_object_name()
    );
    let st = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "sh", "-c", &script])
        .status()
        .unwrap();
    assert!(st.success(), "setpriv as nobody failed");
    let planted_files = walk(&planted);
    let before = walk(dir.path());

    let out = agent_command(&planted).args(["--build-policy", "never", "locate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(all.contains(&format!("{} is owned by uid 65534; refusing to load from it", planted.display())), "{all}");

    // Fetching from a registry works, but nothing is written into the planted folder.
    let good = honest();
    let out =
        agent_command(&planted).args(["--registry", &good.url, "--build-policy", "never", "fetch"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        stderr(&out).contains("installing failed") && stderr(&out).contains("owned by uid 65534"),
        "{}",
        show(&out)
    );
    assert_eq!(walk(&planted), planted_files, "the agent wrote into a folder nobody owns");
    assert_eq!(walk(dir.path()), before);

    // A folder everyone can write (root's, but 0777) is refused the same way.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    let out =
        agent_command(&open).args(["--registry", &good.url, "--build-policy", "never", "fetch"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(stderr(&out).contains("is writable by everyone (mode 0777)"), "{}", show(&out));
    assert!(walk(&open).is_empty());

    // `run` still works from the verified bytes in memory: a planted
    // /tmp/tracee cannot keep a fleet host from tracing.
    if privileged("a_foreign_owned_install_path_is_refused_and_never_written") {
        let out = agent_command(&planted)
            .args(["--registry", &good.url, "--build-policy", "never", "run", "--duration", "1", "--output", "json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", show(&out));
        assert!(
            stderr(&out).contains("NOT installed") && stderr(&out).contains("loading it from memory"),
            "{}",
            show(&out)
        );
        assert!(stderr(&out).contains("attached"), "{}", show(&out));
        assert_eq!(walk(&planted), planted_files);
    }
}

#[test]
fn the_lock_and_objects_are_never_followed_through_symlinks() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let install = dir.path().join("install");
    std::fs::create_dir(&install).unwrap();
    let target = dir.path().join("elsewhere").join("created-by-the-agent");
    std::fs::create_dir(dir.path().join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(&target, install.join(".bpfarm.lock")).unwrap();
    let good = honest();
    let out =
        agent_command(&install).args(["--registry", &good.url, "--build-policy", "never", "fetch"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        stderr(&out).contains(&format!("{}/.bpfarm.lock is a symbolic link; refusing to follow it", install.display())),
        "{}",
        show(&out)
    );
    assert!(!target.exists(), "the lock was followed through its symlink");
    assert!(!install.join(running_object_name()).exists());

    // An object in the install path that is a symlink (to a good object) is not read.
    std::fs::remove_file(install.join(".bpfarm.lock")).unwrap();
    let real = dir.path().join("elsewhere").join(running_object_name());
    std::fs::write(&real, &f.bytes).unwrap();
    std::os::unix::fs::symlink(&real, install.join(running_object_name())).unwrap();
    std::fs::write(install.join(format!("{}.json", running_object_name())), serde_json::to_vec(&f.meta).unwrap())
        .unwrap();
    let out = agent_command(&install).args(["--build-policy", "never", "locate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is a symbolic link; refusing to follow it"),
        "{}",
        show(&out)
    );
}

#[test]
fn an_install_removes_temp_files_a_killed_writer_left_and_nothing_else() {
    // A writer killed mid-write (SIGKILL, an OOM kill) leaves its
    // `.tmp-<16 hex>`; the next install, holding the lock every writer
    // holds, removes them, never following a link, and touches nothing else.
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let install = dir.path().join("install");
    std::fs::create_dir(&install).unwrap();
    chmod(&install, 0o700);
    let outside_file = dir.path().join("precious");
    std::fs::write(&outside_file, b"keep").unwrap();
    std::fs::write(install.join(".tmp-0123456789abcdef"), vec![7u8; 4096]).unwrap();
    std::os::unix::fs::symlink(&outside_file, install.join(".tmp-fedcba9876543210")).unwrap();
    std::fs::write(install.join(".tmp-not-ours"), b"x").unwrap();
    std::fs::write(install.join("notes.txt"), b"x").unwrap();
    let good = honest();
    let out =
        agent_command(&install).args(["--registry", &good.url, "--build-policy", "never", "fetch"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(std::fs::read(install.join(running_object_name())).unwrap(), f.bytes);
    assert!(!install.join(".tmp-0123456789abcdef").exists(), "a stale temp file stayed");
    assert!(std::fs::symlink_metadata(install.join(".tmp-fedcba9876543210")).is_err(), "the planted link stayed");
    assert_eq!(std::fs::read(&outside_file).unwrap(), b"keep", "the link was followed");
    assert!(install.join(".tmp-not-ours").exists() && install.join("notes.txt").exists(), "other files were removed");
}

#[test]
fn locate_writes_nothing() {
    let good = honest();
    let dir = tempfile::tempdir().unwrap();
    let install = dir.path().join("a/b/install");
    let out = agent_command(&install).args(["--registry", &good.url, "locate", "--output", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["source"], "registry", "{v:#}");
    assert!(walk(dir.path()).is_empty(), "locate wrote {:?}", walk(dir.path()));
    // An existing install path gets no lock file either.
    std::fs::create_dir_all(&install).unwrap();
    let out = agent_command(&install).args(["--registry", &good.url, "locate"]).output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(walk(&install).is_empty(), "locate wrote {:?}", walk(&install));
    // Only the registry's lookup was asked, never a download.
    assert!(good.requests().iter().all(|r| r.path.starts_with("/v1/objects/")));
}

/// A private CA and a server certificate for 127.0.0.1, made with openssl.
fn private_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl (ci/install-deps)");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bpfarm test CA"],
        &["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
    ]
    .concat());
    run(&[&["req"][..], &ec, &["-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1"]].concat());
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (dir.join("ca.pem"), dir.join("srv.pem"), dir.join("srv.key"))
}

/// nginx terminating TLS on loopback: `/static/` serves `tree`, everything
/// else goes to `upstream`. Stopped on drop.
struct Nginx(std::process::Child, String);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nginx(dir: &Path, cert: &Path, key: &Path, tree: &Path, upstream: &str) -> Nginx {
    // nginx takes its address from its config only: find a free port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process off; user root; pid {d}/nginx.pid; error_log {d}/nginx-error.log;\n\
             events {{}}\n\
             http {{ access_log off; client_body_temp_path {d}/cb; proxy_temp_path {d}/px; fastcgi_temp_path {d}/fc; uwsgi_temp_path {d}/uw; scgi_temp_path {d}/sc;\n\
               server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {cert}; ssl_certificate_key {key}; client_max_body_size 100m;\n\
                 location /static/ {{ alias {tree}/; }}\n\
                 location / {{ proxy_pass {upstream}; }} }} }}\n",
            d = dir.display(),
            cert = cert.display(),
            key = key.display(),
            tree = tree.display(),
        ),
    )
    .unwrap();
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.join("nginx-error.log"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nginx (ci/install-deps)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx did not start: {}",
            std::fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Nginx(child, format!("https://127.0.0.1:{port}"))
}

#[test]
fn https_registries_and_mirrors_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = private_ca(dir.path());
    let data = dir.path().join("registry");
    let push = bpfarm_tests::token(&data, "ci", "push");
    let registry = bpfarm_tests::serve(&data);
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    let tls = nginx(dir.path(), &cert, &key, &tree, &registry.url);

    // The builder publishes through TLS only when it trusts the CA.
    let publish = |extra: &[&str]| {
        Command::new(bin("bpfarm-builder"))
            .args(["build", "--running-kernel", "--no-progress", "--publish", &tls.1, "--token", &push, "--cache-dir"])
            .arg(dir.path().join("cache"))
            .arg("--out")
            .arg(dir.path().join("out"))
            .args(extra)
            .env_remove("BPFARM_CA_CERT")
            .output()
            .unwrap()
    };
    let out = publish(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("certificate"), "{}", show(&out));
    let out = publish(&["--ca-cert", ca.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 published"), "{}", show(&out));
    let object =
        std::fs::read(dir.path().join("out").join(std::env::consts::ARCH).join(running_object_name())).unwrap();

    // The static layout behind the same TLS.
    let out = Command::new(bin("bpfarm-registry"))
        .args(["export", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&tree)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let mirror = format!("{}/static", tls.1);

    let fetch = |registry: &str, install: &Path, ca: Option<&Path>, env_ca: Option<&Path>| {
        let mut c = agent_command(install);
        c.args(["--registry", registry, "--build-policy", "never", "--timeout", "10", "fetch"]);
        if let Some(ca) = ca {
            c.arg("--ca-cert").arg(ca);
        }
        if let Some(ca) = env_ca {
            c.env("BPFARM_CA_CERT", ca);
        }
        c.output().unwrap()
    };
    for (i, url) in [&tls.1, &mirror].into_iter().enumerate() {
        let install = dir.path().join(format!("without-{i}"));
        let out = fetch(url, &install, None, None);
        assert_eq!(out.status.code(), Some(1), "{}", show(&out));
        assert!(stderr(&out).contains("invalid peer certificate: UnknownIssuer"), "{}", show(&out));
        assert!(!install.join(running_object_name()).exists());
        let install = dir.path().join(format!("with-{i}"));
        let out = fetch(url, &install, Some(&ca), None);
        assert!(out.status.success(), "{}", show(&out));
        assert_eq!(std::fs::read(install.join(running_object_name())).unwrap(), object);
        let install = dir.path().join(format!("env-{i}"));
        let out = fetch(url, &install, None, Some(&ca));
        assert!(out.status.success(), "{}", show(&out));
        assert_eq!(std::fs::read(install.join(running_object_name())).unwrap(), object);
    }
    // A CA file that holds no certificate is a clear error, not "no CA".
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let out = fetch(&mirror, &dir.path().join("junk"), Some(&junk), None);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(stderr(&out).contains("junk.pem: no PEM certificate"), "{}", show(&out));
}

#[test]
fn plain_http_to_anything_but_loopback_needs_insecure() {
    let good = honest();
    // The same server, addressed as an IPv4-mapped IPv6 address: the rule
    // does not count it as loopback, so it stands in for a remote host
    // without leaving this machine.
    let port = good.url.rsplit(':').next().unwrap().to_owned();
    let remote = format!("http://[::ffff:127.0.0.1]:{port}");
    let out = refused(&[&remote], &[], "plain http:// to a host that is not loopback");
    assert!(stderr(&out).contains("--insecure"), "{}", show(&out));
    assert!(good.requests().is_empty(), "a request went out over plain http");
    let dir = tempfile::tempdir().unwrap();
    let install = dir.path().join("install");
    let out = agent_command(&install)
        .args(["--registry", &remote, "--insecure", "--build-policy", "never", "fetch"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(stderr(&out).contains("warning:") && stderr(&out).contains("(--insecure)"), "{}", show(&out));
    assert_eq!(std::fs::read(install.join(running_object_name())).unwrap(), fixture().bytes);
    // The builder's --publish follows the same rule, before building anything.
    let out = Command::new(bin("bpfarm-builder"))
        .args(["build", "--running-kernel", "--no-progress", "--publish", &remote, "--out"])
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(stderr(&out).contains("plain http:// to a host that is not loopback"), "{}", show(&out));
    assert!(!dir.path().join("out").exists(), "the builder built before refusing its --publish target");
}

/// A hostile OCI registry serving the fixture as `acme/tracee-bpf` whose
/// layer descriptor claims `claimed` bytes and whose blob is `blob`; the
/// manifest by digest is sent by `manifest_body` (e.g. trickled).
fn oci_registry(claimed: u64, blob: Body, trickle_manifest: bool, index_digest: Option<&str>) -> HostileServer {
    let f = fixture();
    let digest = Digest::of_bytes(&f.bytes);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": bpfarm_object::oci::MANIFEST_MEDIA_TYPE,
        "artifactType": bpfarm_object::oci::ARTIFACT_TYPE,
        "config": { "mediaType": bpfarm_object::oci::EMPTY_MEDIA_TYPE, "digest": Digest::of_bytes(b"{}").to_string(), "size": 2 },
        "layers": [{ "mediaType": bpfarm_object::oci::LAYER_MEDIA_TYPE, "digest": digest.to_string(), "size": claimed,
                     "annotations": { bpfarm_object::oci::ANN_TITLE: running_object_name() } }],
        "annotations": { bpfarm_object::oci::ANN_RELEASE: running_release(), bpfarm_object::oci::ANN_ARCH: std::env::consts::ARCH,
                         bpfarm_object::oci::ANN_VERSION: "v0.1.0" }
    })
    .to_string();
    let md = Digest::of_bytes(manifest.as_bytes());
    let index = json!({
        "schemaVersion": 2,
        "mediaType": bpfarm_object::oci::INDEX_MEDIA_TYPE,
        "manifests": [{ "mediaType": bpfarm_object::oci::MANIFEST_MEDIA_TYPE, "digest": index_digest.unwrap_or(md.as_str()),
                        "size": manifest.len(), "platform": { "architecture": "amd64", "os": "linux" } }],
        "annotations": { bpfarm_object::oci::ANN_RELEASE: running_release(), bpfarm_object::oci::ANN_VERSION: "v0.1.0" }
    })
    .to_string();
    let tag = bpfarm_object::oci::tag(&running_release(), "v0.1.0", false);
    HostileServer::start(move |r: &Request| {
        let p = r.path.as_str();
        if p == "/v2/" {
            Reply::json(200, &json!({}))
        } else if p == format!("/v2/acme/tracee-bpf/manifests/{tag}") {
            Reply::bytes(200, bpfarm_object::oci::INDEX_MEDIA_TYPE, index.clone())
        } else if p == format!("/v2/acme/tracee-bpf/manifests/{md}") {
            let mut reply = Reply::bytes(200, bpfarm_object::oci::MANIFEST_MEDIA_TYPE, manifest.clone());
            if trickle_manifest {
                reply.body = Body::Trickle { bytes: manifest.clone().into_bytes(), every: Duration::from_millis(100) };
            }
            reply
        } else if p.starts_with("/v2/acme/tracee-bpf/blobs/") {
            Reply { status: 200, headers: vec![], body: blob.clone() }
        } else {
            Reply::json(404, &json!({ "errors": [{ "code": "MANIFEST_UNKNOWN", "message": "unknown" }] }))
        }
    })
}

#[test]
fn oci_registries_that_trickle_flood_or_lie_are_bounded_and_the_next_is_tried() {
    let f = fixture();
    let size = f.bytes.len() as u64;
    let gib = 1u64 << 30;
    let oci = |s: &HostileServer| format!("oci://{}/acme", s.url.trim_start_matches("http://"));
    let good = honest();
    let cases: Vec<(HostileServer, Option<String>)> = vec![
        // An honest registry first: the OCI path works at all.
        (oci_registry(size, Body::Bytes(f.bytes.clone()), false, None), None),
        (
            oci_registry(size, Body::Bytes(f.bytes.clone()), true, None),
            Some("gave up: no complete answer within 3s (--timeout)".into()),
        ),
        (
            oci_registry(gib, Body::Stream { total: gib, content_length: Some(gib) }, false, None),
            Some(
                "its layer is 1073741824 bytes, over the 67108864-byte limit (--max-object-size); not downloading it"
                    .into(),
            ),
        ),
        (
            oci_registry(size, Body::Stream { total: gib, content_length: None }, false, None),
            Some(format!("the registry sent more than the {size} bytes the layer descriptor names")),
        ),
        (
            oci_registry(size, Body::Bytes(f.bytes.clone()), false, Some("sha256:NOT-A-DIGEST")),
            Some("the index's amd64 entry".into()),
        ),
    ];
    for (server, cause) in cases {
        let dir = tempfile::tempdir().unwrap();
        let install = dir.path().join("install");
        let mut c = agent_command(&install);
        c.args([
            "--registry",
            &oci(&server),
            "--registry",
            &good.url,
            "--timeout",
            "3",
            "--build-policy",
            "never",
            "fetch",
        ]);
        let started = Instant::now();
        let (out, rss) = output_with_peak_rss(&c);
        let took = started.elapsed();
        eprintln!("OCI {cause:?}: {took:?}, agent peak RSS {} MiB", rss >> 20);
        assert!(out.status.success(), "{}", show(&out));
        assert_eq!(std::fs::read(install.join(running_object_name())).unwrap(), f.bytes);
        let first = stderr(&out).lines().find(|l| l.contains("registry oci://")).unwrap_or_default().to_owned();
        match cause.as_deref() {
            None => {
                assert!(
                    first.contains("fetched from acme/tracee-bpf, verified against its manifest")
                        && first.contains("installed"),
                    "{}",
                    show(&out)
                )
            }
            Some(cause) => assert!(first.contains(cause), "{cause:?} not in {first:?}\n{}", show(&out)),
        }
        assert!(took < Duration::from_secs(12), "{took:?}");
        assert!(rss < 64 << 20, "peak RSS {} MiB", rss >> 20);
        assert!(outside(dir.path(), &install).is_empty());
    }
}

#[test]
fn uppercase_and_malformed_oci_targets_are_errors_and_later_registries_are_tried() {
    let good = honest();
    let dir = tempfile::tempdir().unwrap();
    let install = dir.path().join("install");
    let out = agent_command(&install)
        .args(["--registry", "oci://127.0.0.1:1/ACME", "--registry", "oci://127.0.0.1:1/a//b", "--registry", "oci://x"])
        .args(["--registry", &good.url, "--build-policy", "never", "fetch"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let err = stderr(&out);
    assert!(
        err.contains("OCI repository names are lowercase") && err.contains("oci://127.0.0.1:1/acme would do"),
        "{err}"
    );
    assert!(err.contains("\"\" is not a valid OCI repository path component"), "{err}");
    assert!(err.contains("it names no namespace after the host"), "{err}");
    // Alone, it is the reason nothing was found (exit 1, no panic's 101).
    refused(&["oci://127.0.0.1:1/ACME"], &[], "OCI repository names are lowercase");
    // The builder refuses it before building anything (usage error, 2).
    for target in ["oci://127.0.0.1:1/ACME", "oci://127.0.0.1:1/a//b"] {
        let out = Command::new(bin("bpfarm-builder"))
            .args(["build", "--running-kernel", "--no-progress", "--publish", target, "--out"])
            .arg(dir.path().join("out"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", show(&out));
        assert!(stderr(&out).contains("is not a usable OCI target"), "{}", show(&out));
        assert!(!dir.path().join("out").exists());
    }
}

/// A real arm64 object: the builder on Debian's arm64 header packages.
fn arm64_object(dir: &Path) -> PathBuf {
    let debs = bpfarm_tests::fixture_debs();
    let out = Command::new(bin("bpfarm-builder"))
        .args(["build", "--no-progress", "--package-cache"])
        .arg(&debs)
        .arg("--headers")
        .arg(bpfarm_tests::deb(&debs, "linux-headers-6.12.117+deb12-arm64"))
        .arg("--headers")
        .arg(bpfarm_tests::deb(&debs, "linux-headers-6.12.117+deb12-common"))
        .arg("--headers")
        .arg(
            std::fs::read_dir(&debs)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.to_string_lossy().contains("linux-kbuild-6.12.117+deb12_")
                        && p.to_string_lossy().ends_with("_arm64.deb")
                })
                .unwrap(),
        )
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    dir.join("out/aarch64").join(object_file_name("6.12.117+deb12-arm64", "v0.1.0"))
}

#[test]
fn objects_given_by_path_must_name_this_kernel_unless_forced() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    // Found by path, with no .json beside it: only the embedded identity speaks.
    let built = arm64_object(dir.path());
    let given = dir.path().join("given");
    std::fs::create_dir(&given).unwrap();
    let arm = given.join("tracee.bpf.arm64.o");
    std::fs::copy(&built, &arm).unwrap();
    assert_eq!(embed::read(&std::fs::read(&arm).unwrap()).unwrap().unwrap().identity.arch, Arch::Aarch64);
    let install = dir.path().join("install");
    let locate = |file: &Path, extra: &[&str]| {
        agent_command(&install)
            .env("TRACEE_BPF_FILE", file)
            .args(extra)
            .args(["locate", "--output", "json"])
            .output()
            .unwrap()
    };
    // Same release on paper, another arch: refused, naming both.
    let out = locate(&arm, &["--kernel-release", "6.12.117+deb12-arm64"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let trail = v["trail"].to_string();
    assert!(
        trail.contains("built for kernel 6.12.117+deb12-arm64 (aarch64) version v0.1.0, but this host needs kernel 6.12.117+deb12-arm64 (x86_64)"),
        "{v:#}"
    );
    // The running kernel: another release and arch.
    let out = locate(&arm, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("but this host needs kernel {} (x86_64)", running_release()))
    );
    // --force-object accepts it, loudly.
    let out = locate(&arm, &["--force-object"]);
    assert!(out.status.success(), "{}", show(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["source"], "bpf-file");
    assert!(v["trail"].to_string().contains("LOADED ANYWAY (--force-object)"), "{v:#}");

    // An object without the section (the builder's cache holds such) is refused, and forced.
    let bare = dir.path().join("bare.o");
    std::fs::write(&bare, &f.bare).unwrap();
    let out = locate(&bare, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("carries no embedded identity"), "{}", show(&out));
    assert!(locate(&bare, &["--force-object"]).status.success());

    // --force-object does nothing for the install path: an unlabelled
    // object there is refused even with a matching .json.
    std::fs::create_dir(&install).unwrap();
    std::fs::write(install.join(running_object_name()), &f.bare).unwrap();
    let mut meta = f.meta.clone();
    meta["digest"] = Digest::of_bytes(&f.bare).to_string().into();
    meta["size"] = f.bare.len().into();
    std::fs::write(install.join(format!("{}.json", running_object_name())), meta.to_string()).unwrap();
    let out = agent_command(&install).args(["--force-object", "--build-policy", "never", "locate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("carries no embedded identity"), "{}", show(&out));

    if privileged("objects_given_by_path_must_name_this_kernel_unless_forced") {
        // run refuses before loading...
        let run = |extra: &[&str]| {
            agent_command(&dir.path().join("run"))
                .env("TRACEE_BPF_FILE", &arm)
                .args(extra)
                .args(["run", "--duration", "1", "--output", "json"])
                .output()
                .unwrap()
        };
        let out = run(&[]);
        assert_eq!(out.status.code(), Some(1), "{}", show(&out));
        assert!(stderr(&out).contains("(aarch64)") && stderr(&out).contains("(x86_64)"), "{}", show(&out));
        assert!(!stderr(&out).contains("attached"), "{}", show(&out));
        // ...and with --force-object goes on to libbpf, saying so.
        let out = run(&["--force-object"]);
        assert!(
            stderr(&out).contains("warning: --force-object: loading")
                && stderr(&out).contains("not verified for this kernel"),
            "{}",
            show(&out)
        );
    }
}

#[test]
fn registries_come_from_flags_then_env_then_the_config_file() {
    let (a, b, c) = (honest(), honest(), honest());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, format!("registries = [\"{}\"]\nbuild_policy = \"never\"\n", a.url)).unwrap();
    let install = dir.path().join("install");
    let locate = |env: Option<&str>, flag: Option<&str>| {
        let mut cmd = agent_command(&install);
        cmd.arg("--config").arg(&config);
        if let Some(e) = env {
            cmd.env("BPFARM_REGISTRIES", e);
        }
        if let Some(f) = flag {
            cmd.args(["--registry", f]);
        }
        let out = cmd.args(["locate", "--output", "json"]).output().unwrap();
        assert!(out.status.success(), "{}", show(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["trail"].as_array().unwrap().iter().filter_map(|s| s["place"].as_str().map(str::to_owned)).collect::<Vec<_>>()
    };
    assert!(locate(None, None).contains(&format!("registry {}", a.url)));
    // A comma-separated list in the environment wins over the file.
    let places = locate(Some(&format!("{},{}", "http://127.0.0.1:1", b.url)), None);
    assert!(
        places.contains(&"registry http://127.0.0.1:1".to_owned()) && places.contains(&format!("registry {}", b.url)),
        "{places:?}"
    );
    assert!(!places.contains(&format!("registry {}", a.url)), "{places:?}");
    // A flag wins over both.
    let places = locate(Some(&b.url), Some(&c.url));
    assert!(
        places.contains(&format!("registry {}", c.url)) && !places.iter().any(|p| p.contains(&b.url)),
        "{places:?}"
    );
    // The file's build_policy applies: never, so nothing is built.
    let out = agent_command(&dir.path().join("empty"))
        .arg("--config")
        .arg(&config)
        .env("BPFARM_REGISTRIES", "http://127.0.0.1:1")
        .arg("locate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--build-policy never"), "{}", show(&out));

    // A config anyone could have written is not trusted; neither is a misspelt key.
    chmod(&config, 0o666);
    let out = agent_command(&install).arg("--config").arg(&config).arg("locate").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(stderr(&out).contains("config file") && stderr(&out).contains("is writable by everyone"), "{}", show(&out));
    chmod(&config, 0o600);
    std::fs::write(&config, "registires = []\n").unwrap();
    let out = agent_command(&install).arg("--config").arg(&config).arg("locate").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(stderr(&out).contains("unknown field `registires`"), "{}", show(&out));
    let out =
        agent_command(&install).arg("--config").arg(dir.path().join("missing.toml")).arg("locate").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(stderr(&out).contains("missing.toml does not exist"), "{}", show(&out));
}

#[test]
fn help_explains_every_trust_flag() {
    let out = Command::new(bin("bpfarm-agent")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--ca-cert",
        "--insecure",
        "--timeout",
        "--max-object-size",
        "--force-object",
        "BPFARM_REGISTRIES",
        "BPFARM_CA_CERT",
        "DANGEROUS",
        ".bpfarm.identity",
    ] {
        assert!(help.contains(flag), "--help does not explain {flag}:\n{help}");
    }
    let out = Command::new(bin("bpfarm-builder")).args(["build", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--ca-cert", "--insecure", "BPFARM_CA_CERT"] {
        assert!(help.contains(flag), "builder --help does not explain {flag}:\n{help}");
    }
}
