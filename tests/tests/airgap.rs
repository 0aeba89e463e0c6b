//! Air-gapped delivery and retention, with the real peers: `bundle` read
//! by skopeo (`oci-archive:`) and oras (`--oci-layout`), unpacked and read
//! by bpfarm_object's layout reader; `import` of it (and the attacks on
//! it) into a second registry; `mirror` from a live upstream (and a
//! hostile one); `gc` with and without publishes running beside it.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bpfarm_object::oci_layout::OciLayout;
use bpfarm_object::{Arch, Digest, Identity, ObjectMetadata, oci};
use bpfarm_tests::{Registry, bin, client, registry_snapshot, sample_metadata, serve, show, token};
use serde_json::Value;

fn registry_cmd(args: &[&str]) -> Output {
    Command::new(bin("bpfarm-registry")).args(args).output().unwrap()
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "{}", show(&o));
    o
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn meta(release: &str, arch: Arch, version: &str, bytes: &[u8]) -> ObjectMetadata {
    let mut m = sample_metadata(release, arch, bytes);
    m.identity = Identity::new(release, arch, version).unwrap();
    m.file_name = m.identity.file_name();
    m
}

fn object(release: &str, arch: Arch, version: &str) -> Vec<u8> {
    format!("\x7fELF stand-in object for {release} {arch} {version}").into_bytes()
}

/// A registry under `dir` serving `objects` (release, arch, version).
fn populated(dir: &Path, objects: &[(&str, Arch, &str)]) -> (Registry, String, PathBuf) {
    let data = dir.join("data");
    let push = token(&data, "ci", "push");
    let r = serve(&data);
    let c = client(&r.url, Some(push.clone()));
    for (release, arch, version) in objects {
        let bytes = object(release, *arch, version);
        c.publish(&meta(release, *arch, version, &bytes), &bytes, false).unwrap();
    }
    (r, push, data)
}

/// Everything a registry's data folder holds that matters: the index's
/// rows and every blob file with its bytes' digest
/// ([`registry_snapshot`]), and the entries of `blobs/` (no staging left
/// behind).
fn snapshot(data: &Path) -> (String, Vec<(String, String)>, Vec<String>) {
    let (rows, files) = registry_snapshot(data);
    let mut top: Vec<String> = std::fs::read_dir(data.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    top.sort();
    (rows, files, top)
}

fn http_get(url: &str) -> (u16, Vec<u8>) {
    let r = reqwest::blocking::Client::new()
        .get(url)
        .header("Accept", format!("{}, {}", oci::INDEX_MEDIA_TYPE, oci::MANIFEST_MEDIA_TYPE))
        .send()
        .unwrap();
    (r.status().as_u16(), r.bytes().unwrap().to_vec())
}

fn untar(tar: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let o = Command::new("tar").arg("-xf").arg(tar).arg("-C").arg(into).output().unwrap();
    assert!(o.status.success(), "{}", show(&o));
}

const OBJECTS: &[(&str, Arch, &str)] = &[
    ("6.1.0-56-amd64", Arch::X86_64, "v0.1.0"),
    ("6.1.0-56-arm64", Arch::Aarch64, "v0.1.0"),
    ("6.12.117+deb12-amd64", Arch::X86_64, "v0.1.0"),
    ("6.1.0-56-amd64", Arch::X86_64, "v0.2.0"),
];

#[test]
fn a_bundle_is_an_oci_layout_that_skopeo_oras_and_the_layout_reader_read() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _push, data) = populated(dir.path(), OBJECTS);
    let tar = dir.path().join("b.tar");
    let o = ok(registry_cmd(&["bundle", "--data", p(&data), "--out", p(&tar)]));
    assert!(String::from_utf8_lossy(&o.stdout).contains("bundled 4 tags"), "{}", show(&o));
    // Deterministic: the same data gives the same bytes.
    let again = dir.path().join("again.tar");
    ok(registry_cmd(&["bundle", "--data", p(&data), "--out", p(&again)]));
    assert_eq!(std::fs::read(&tar).unwrap(), std::fs::read(&again).unwrap(), "bundles differ");
    assert!(
        !std::fs::read_dir(dir.path()).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".bpfarm-bundle"))
    );

    let (release, arch, version) = OBJECTS[2];
    let tag = oci::tag(release, version, false);
    // skopeo reads the archive: the index under the tag is the one /v2 serves.
    let (status, served) = http_get(&format!("{}/v2/bpfarm/tracee-bpf/manifests/{tag}", r.url));
    assert_eq!(status, 200);
    let o = ok(Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci-archive:{}:{tag}", tar.display()))
        .output()
        .unwrap());
    assert_eq!(o.stdout, served, "skopeo's view of the bundle differs from /v2");
    let idx: Value = serde_json::from_slice(&served).unwrap();
    let md = idx["manifests"][0]["digest"].as_str().unwrap();

    // Unpacked, oras reads it as an OCI layout.
    let layout = dir.path().join("layout");
    untar(&tar, &layout);
    let o = ok(Command::new("oras")
        .args(["manifest", "fetch", "--oci-layout"])
        .arg(format!("{}:{tag}", layout.display()))
        .output()
        .unwrap());
    assert_eq!(o.stdout, served, "oras's view of the layout differs from /v2");
    let o = ok(Command::new("oras")
        .args(["manifest", "fetch", "--oci-layout"])
        .arg(format!("{}@{md}", layout.display()))
        .output()
        .unwrap());
    assert_eq!(Digest::of_bytes(&o.stdout).as_str(), md);
    let pulled = dir.path().join("pulled");
    ok(Command::new("oras")
        .args(["pull", "--oci-layout", "--platform", "linux/amd64", "-o"])
        .arg(&pulled)
        .arg(format!("{}:{tag}", layout.display()))
        .output()
        .unwrap());
    let id = Identity::new(release, arch, version).unwrap();
    assert_eq!(std::fs::read(pulled.join(id.file_name())).unwrap(), object(release, arch, version));

    // bpfarm_object's reader (the agent's oci-layout:DIR) finds every object.
    let reader = OciLayout::open(&layout, 1 << 20).unwrap();
    for (release, arch, version) in OBJECTS {
        let id = Identity::new(release, *arch, version).unwrap();
        let (m, bytes) = reader.fetch(&id).unwrap().unwrap_or_else(|| panic!("{release} {arch} {version} not found"));
        assert_eq!(bytes, object(release, *arch, version));
        assert_eq!(m.digest, Digest::of_bytes(&bytes));
    }
    assert!(reader.fetch(&Identity::new("6.1.0-56-amd64", Arch::Aarch64, "v0.1.0").unwrap()).unwrap().is_none());

    // Filters: one version; a matrix's kernels.
    let v2 = dir.path().join("v2.tar");
    ok(registry_cmd(&["bundle", "--data", p(&data), "--out", p(&v2), "--version", "v0.2.0"]));
    let l2 = dir.path().join("l2");
    untar(&v2, &l2);
    let names = ref_names(&l2);
    assert_eq!(names, [oci::tag("6.1.0-56-amd64", "v0.2.0", false)]);
    let matrix = dir.path().join("m.toml");
    std::fs::write(
        &matrix,
        "name = \"m\"\n[[kernel]]\nrelease = \"6.1.0-56-arm64\"\narch = \"arm64\"\npackage = \"linux-headers-6.1.0-56-arm64\"\n",
    )
    .unwrap();
    let mt = dir.path().join("m.tar");
    ok(registry_cmd(&["bundle", "--data", p(&data), "--out", p(&mt), "--matrix", p(&matrix)]));
    let lm = dir.path().join("lm");
    untar(&mt, &lm);
    assert_eq!(ref_names(&lm), [oci::tag("6.1.0-56-arm64", "v0.1.0", false)]);
    let only = OciLayout::open(&lm, 1 << 20).unwrap();
    assert!(only.fetch(&Identity::new("6.1.0-56-amd64", Arch::X86_64, "v0.1.0").unwrap()).unwrap().is_none());
    // A blob the filtered index does not reach is not in the bundle.
    let blobs = std::fs::read_dir(lm.join("blobs/sha256")).unwrap().count();
    assert_eq!(blobs, 4, "index, manifest, empty config, object");

    // A layout oras itself wrote (copied from the registry's /v2) reads too.
    let copied = dir.path().join("copied");
    let host = r.url.trim_start_matches("http://");
    ok(Command::new("oras")
        .args(["copy", "--from-plain-http", "--to-oci-layout"])
        .arg(format!("{host}/bpfarm/tracee-bpf:{tag}"))
        .arg(format!("{}:{tag}", copied.display()))
        .output()
        .unwrap());
    let (m, bytes) = OciLayout::open(&copied, 1 << 20).unwrap().fetch(&id).unwrap().unwrap();
    assert_eq!((m.digest, bytes), (Digest::of_bytes(&object(release, arch, version)), object(release, arch, version)));
}

fn ref_names(layout: &Path) -> Vec<String> {
    let v: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["annotations"][bpfarm_object::oci_layout::REF_NAME].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn import_publishes_a_bundle_once_and_a_second_import_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_a, _push, data_a) = populated(&dir.path().join("a"), OBJECTS);
    let tar = dir.path().join("b.tar");
    ok(registry_cmd(&["bundle", "--data", p(&data_a), "--out", p(&tar)]));

    let data_b = dir.path().join("b");
    let started = std::time::Instant::now();
    let o = ok(registry_cmd(&["import", "--data", p(&data_b), p(&tar)]));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(text.contains("4 objects published"), "{}", show(&o));
    eprintln!("import of 4 objects: {:?}", started.elapsed());
    let before = snapshot(&data_b);
    let o = ok(registry_cmd(&["import", "--data", p(&data_b), p(&tar)]));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(text.contains(": 0 new blobs (0 bytes), 0 new manifests, 0 objects published"), "{}", show(&o));
    assert_eq!(snapshot(&data_b), before, "a second import changed the registry");

    // The imported objects are /v1 objects, in the static layout and the
    // page, and /v2 serves the same index bytes as the origin.
    let b = serve(&data_b);
    let c = client(&b.url, None);
    for (release, arch, version) in OBJECTS {
        let m = c.lookup(release, arch.uname(), version).unwrap().unwrap_or_else(|| panic!("{release} not in /v1"));
        assert_eq!(c.download(&m.digest).unwrap(), object(release, *arch, version));
        let id = Identity::new(release, *arch, version).unwrap();
        let (s, body) = http_get(&format!("{}/{version}/{}/{}", b.url, arch.uname(), id.file_name()));
        assert_eq!((s, body), (200, object(release, *arch, version)));
    }
    let (_, page) = http_get(&format!("{}/", b.url));
    assert!(String::from_utf8_lossy(&page).contains("6.12.117+deb12-amd64"));
    let a = serve(&data_a);
    for (release, _, version) in OBJECTS {
        let tag = oci::tag(release, version, false);
        let path = format!("/v2/bpfarm/tracee-bpf/manifests/{tag}");
        assert_eq!(http_get(&format!("{}{path}", b.url)), http_get(&format!("{}{path}", a.url)), "{tag}");
    }
    // fsck agrees the imported registry is whole.
    drop(b);
    ok(registry_cmd(&["fsck", "--data", p(&data_b)]));
}

/// A tar built entry by entry, headers as given (the attacks).
struct Hostile {
    tar: tar::Builder<Vec<u8>>,
}

impl Hostile {
    fn new() -> Self {
        Self { tar: tar::Builder::new(Vec::new()) }
    }
    fn file(mut self, name: &str, bytes: &[u8]) -> Self {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        // set_path refuses `..`; write the name raw, as an attacker would.
        let name_field = &mut h.as_old_mut().name;
        name_field[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        self.tar.append(&h, bytes).unwrap();
        self
    }
    fn special(mut self, name: &str, kind: tar::EntryType, link: &str) -> Self {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(0o644);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        self.tar.append(&h, std::io::empty()).unwrap();
        self
    }
    fn blob(self, bytes: &[u8]) -> Self {
        let d = Digest::of_bytes(bytes);
        self.file(&format!("blobs/sha256/{}", d.hex()), bytes)
    }
    fn write(self, path: &Path) {
        std::fs::write(path, self.tar.into_inner().unwrap()).unwrap();
    }
}

const LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

fn index_naming(digest: &Digest, size: usize, media_type: &str) -> Vec<u8> {
    serde_json::json!({"schemaVersion": 2, "mediaType": oci::INDEX_MEDIA_TYPE, "manifests": [
        {"mediaType": media_type, "digest": digest.as_str(), "size": size,
         "annotations": {"org.opencontainers.image.ref.name": "x"}}
    ]})
    .to_string()
    .into_bytes()
}

#[test]
fn import_refuses_hostile_bundles_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // The target already holds an object: refusals must leave it as it is.
    let (target, _push, data) = populated(&dir.path().join("t"), &OBJECTS[..1]);
    drop(target);
    let before = snapshot(&data);
    // A valid image manifest whose layer size lies.
    let layer = b"layer bytes".to_vec();
    let lying = serde_json::json!({"schemaVersion": 2, "mediaType": oci::MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": oci::EMPTY_MEDIA_TYPE, "digest": Digest::of_bytes(oci::EMPTY_CONFIG).as_str(), "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": Digest::of_bytes(&layer).as_str(), "size": 5}]})
    .to_string()
    .into_bytes();
    let ld = Digest::of_bytes(&lying);
    let good_manifest = serde_json::json!({"schemaVersion": 2, "mediaType": oci::MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": oci::EMPTY_MEDIA_TYPE, "digest": Digest::of_bytes(oci::EMPTY_CONFIG).as_str(), "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": Digest::of_bytes(&layer).as_str(), "size": layer.len()}]})
    .to_string()
    .into_bytes();
    let gd = Digest::of_bytes(&good_manifest);
    let base = || Hostile::new().file("oci-layout", LAYOUT);
    let missing_message = format!("names blob {}", Digest::of_bytes(&layer));
    let big = vec![0u8; 4096];
    let cases: Vec<(&str, Hostile, &str, Vec<&str>)> = vec![
        ("traversal", base().file("../escaped", b"x"), "climbs out with ..", vec![]),
        ("absolute", base().file("/tmp/abs-bpfarm", b"x"), "is absolute", vec![]),
        ("symlink", base().special("blobs/sha256/aa", tar::EntryType::Symlink, "/etc/passwd"), "symbolic link", vec![]),
        ("hardlink", base().special("index.json", tar::EntryType::Link, "/etc/passwd"), "hard link", vec![]),
        ("device", base().special("blobs/sha256/ab", tar::EntryType::Char, ""), "character device", vec![]),
        ("fifo", base().special("index.json", tar::EntryType::Fifo, ""), "FIFO", vec![]),
        ("stray", base().file("etc/cron.d/x", b"x"), "not part of an OCI image layout", vec![]),
        ("oversized", base().blob(&big), "over the 1024-byte limit", vec!["--max-blob-bytes", "1024"]),
        (
            "bomb",
            (0..40).fold(base(), |h, i| h.blob(format!("tiny {i}").as_bytes())),
            "more than 30 entries",
            vec!["--max-entries", "30"],
        ),
        (
            "total",
            base().blob(&big).blob(&vec![1u8; 4096]),
            "more than 6000 bytes in all",
            vec!["--max-total-bytes", "6000"],
        ),
        ("duplicate", base().file("oci-layout", LAYOUT), "appears twice", vec![]),
        (
            "lying digest",
            base().file(&format!("blobs/sha256/{}", Digest::of_bytes(b"claimed").hex()), b"actual"),
            "not the digest its name claims",
            vec![],
        ),
        ("no index", base().blob(b"x"), "no index.json", vec![]),
        (
            "missing blob",
            base()
                .file("index.json", &index_naming(&gd, good_manifest.len(), oci::MANIFEST_MEDIA_TYPE))
                .blob(&good_manifest)
                .blob(oci::EMPTY_CONFIG),
            &missing_message,
            vec![],
        ),
        (
            "size lie",
            base()
                .file("index.json", &index_naming(&ld, lying.len(), oci::MANIFEST_MEDIA_TYPE))
                .blob(&lying)
                .blob(oci::EMPTY_CONFIG)
                .blob(&layer),
            "says sha256",
            vec![],
        ),
        (
            "media type lie",
            base()
                .file("index.json", &index_naming(&gd, good_manifest.len(), oci::INDEX_MEDIA_TYPE))
                .blob(&good_manifest)
                .blob(oci::EMPTY_CONFIG)
                .blob(&layer),
            "manifest sha256",
            vec![],
        ),
        (
            "index size lie",
            base()
                .file("index.json", &index_naming(&gd, good_manifest.len() + 1, oci::MANIFEST_MEDIA_TYPE))
                .blob(&good_manifest)
                .blob(oci::EMPTY_CONFIG)
                .blob(&layer),
            "the bundle's blob has",
            vec![],
        ),
    ];
    for (name, tar, message, extra) in cases {
        let path = dir.path().join(format!("{}.tar", name.replace(' ', "-")));
        tar.write(&path);
        let mut args = vec!["import", "--data", p(&data)];
        args.extend(extra.iter().copied());
        args.push(p(&path));
        let o = registry_cmd(&args);
        assert_eq!(o.status.code(), Some(1), "{name}: {}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("refused") && err.contains(message), "{name}: wanted {message:?}: {}", show(&o));
        assert!(err.contains("nothing was imported"), "{name}: {}", show(&o));
        assert_eq!(snapshot(&data), before, "{name}: the refused bundle changed the registry");
    }
    assert!(!Path::new("/tmp/abs-bpfarm").exists() && !dir.path().join("escaped").exists());
    // The same manifest with honest sizes imports (the cases above fail for
    // their attack alone).
    let fine = dir.path().join("fine.tar");
    base()
        .file("index.json", &index_naming(&gd, good_manifest.len(), oci::MANIFEST_MEDIA_TYPE))
        .blob(&good_manifest)
        .blob(oci::EMPTY_CONFIG)
        .blob(&layer)
        .write(&fine);
    let o = ok(registry_cmd(&["import", "--data", p(&data), p(&fine)]));
    assert!(String::from_utf8_lossy(&o.stdout).contains("1 new manifests"), "{}", show(&o));
}

#[test]
fn a_bundle_imports_into_a_registry_with_a_conflicting_object_only_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let (_a, _p, data_a) = populated(&dir.path().join("a"), OBJECTS);
    let tar = dir.path().join("b.tar");
    ok(registry_cmd(&["bundle", "--data", p(&data_a), "--out", p(&tar)]));
    // B holds a different object for the last identity of the bundle.
    let data_b = dir.path().join("b");
    let push = token(&data_b, "ci", "push");
    let b = serve(&data_b);
    let (release, arch, version) = OBJECTS[3];
    let other = b"\x7fELF a different build".to_vec();
    client(&b.url, Some(push)).publish(&meta(release, arch, version, &other), &other, false).unwrap();
    drop(b);
    let before = snapshot(&data_b);
    let o = registry_cmd(&["import", "--data", p(&data_b), p(&tar)]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("never replaces an object"), "{}", show(&o));
    assert_eq!(snapshot(&data_b), before);
}

#[test]
fn gc_dry_run_changes_nothing_and_gc_frees_old_versions_and_unnamed_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let (r, push, data) = populated(dir.path(), &OBJECTS[..3]);
    // The newer version a second later (versions are ordered by publish time).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let c = client(&r.url, Some(push));
    let (release, arch, version) = OBJECTS[3];
    let bytes = object(release, arch, version);
    c.publish(&meta(release, arch, version, &bytes), &bytes, false).unwrap();
    // An orphan: uploaded, never published, and old.
    let orphan = b"uploaded and abandoned".to_vec();
    let od = Digest::of_bytes(&orphan);
    let put = reqwest::blocking::Client::new()
        .put(format!("{}/v1/blobs/{od}", r.url))
        .bearer_auth(token(&data, "up", "push"))
        .body(orphan.clone())
        .send()
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let orphan_path = data.join("blobs/sha256").join(&od.hex()[..2]).join(od.hex());
    ok(Command::new("touch").args(["-d", "3 hours ago"]).arg(&orphan_path).output().unwrap());
    // A young orphan stays (a publish in flight looks just like it).
    let young = b"uploaded a moment ago".to_vec();
    let yd = Digest::of_bytes(&young);
    let up = token(&data, "up2", "push");
    reqwest::blocking::Client::new()
        .put(format!("{}/v1/blobs/{yd}", r.url))
        .bearer_auth(up)
        .body(young)
        .send()
        .unwrap();

    let before = snapshot(&data);
    let o = ok(registry_cmd(&["gc", "--data", p(&data), "--dry-run", "--keep-versions", "1"]));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(text.contains("would remove version v0.1.0") && text.contains("1 versions, 3 object rows"), "{text}");
    assert_eq!(snapshot(&data), before, "--dry-run changed the registry");

    let o = ok(registry_cmd(&["gc", "--data", p(&data), "--keep-versions", "1"]));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(text.contains("removed version v0.1.0"), "{text}");
    assert!(!orphan_path.exists(), "the old orphan is still there");
    assert!(data.join("blobs/sha256").join(&yd.hex()[..2]).join(yd.hex()).exists(), "the young orphan was removed");
    // v0.1.0 is gone from both faces; v0.2.0 is whole.
    for (release, arch, version) in &OBJECTS[..3] {
        assert!(c.lookup(release, arch.uname(), version).unwrap().is_none(), "{release} {version} still in /v1");
        let (s, _) =
            http_get(&format!("{}/v2/bpfarm/tracee-bpf/manifests/{}", r.url, oci::tag(release, version, false)));
        assert_eq!(s, 404);
        let old = Digest::of_bytes(&object(release, *arch, version));
        assert!(!data.join("blobs/sha256").join(&old.hex()[..2]).join(old.hex()).exists());
    }
    assert_whole(&r.url, release, arch, version);
    let freed: Vec<&str> = text.lines().filter(|l| l.starts_with("gc:")).collect();
    assert_eq!(freed.len(), 1, "{text}");
    eprintln!("{}", freed[0]);
    drop(r);
    ok(registry_cmd(&["fsck", "--data", p(&data)]));
    // Nothing left to do.
    let o = ok(registry_cmd(&["gc", "--data", p(&data), "--keep-versions", "1"]));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("0 versions, 0 object rows, 0 manifests, 0 tags; 0 blobs, 0 bytes"),
        "{}",
        show(&o)
    );
}

/// Neither face knows the object: no /v1 metadata, no /v2 tag.
fn assert_absent(url: &str, release: &str, arch: Arch, version: &str) {
    let c = client(url, None);
    assert!(c.lookup(release, arch.uname(), version).unwrap().is_none(), "{release} {version}: /v1 names it");
    let (s, _) = http_get(&format!("{url}/v2/bpfarm/tracee-bpf/manifests/{}", oci::tag(release, version, false)));
    assert_eq!(s, 404, "{release} {version}: /v2 has a tag");
}

/// The object is in /v1 with its blob, and /v2's tag reaches it.
fn assert_whole(url: &str, release: &str, arch: Arch, version: &str) {
    let c = client(url, None);
    let m =
        c.lookup(release, arch.uname(), version).unwrap().unwrap_or_else(|| panic!("{release} {version} not in /v1"));
    let bytes = c.download(&m.digest).unwrap();
    assert_eq!(Digest::of_bytes(&bytes), m.digest);
    let (s, index) = http_get(&format!("{url}/v2/bpfarm/tracee-bpf/manifests/{}", oci::tag(release, version, false)));
    assert_eq!(s, 200, "{release} {version}: no /v2 tag");
    let idx: Value = serde_json::from_slice(&index).unwrap();
    let entry = idx["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["platform"]["architecture"] == oci::oci_arch(arch))
        .unwrap();
    let (s, manifest) =
        http_get(&format!("{url}/v2/bpfarm/tracee-bpf/manifests/{}", entry["digest"].as_str().unwrap()));
    assert_eq!(s, 200);
    let mv: Value = serde_json::from_slice(&manifest).unwrap();
    let (s, layer) =
        http_get(&format!("{url}/v2/bpfarm/tracee-bpf/blobs/{}", mv["layers"][0]["digest"].as_str().unwrap()));
    assert_eq!((s, Digest::of_bytes(&layer)), (200, m.digest));
}

/// Runs `gc --data <data> <extra>` over and over on a thread until the
/// returned flag is set; joining the thread gives the number of runs.
fn gc_loop(data: &Path, extra: &'static [&'static str]) -> (Arc<AtomicBool>, std::thread::JoinHandle<u32>) {
    let stop = Arc::new(AtomicBool::new(false));
    let data = data.to_owned();
    let flag = stop.clone();
    let gc = std::thread::spawn(move || {
        let mut runs = 0;
        while !flag.load(Ordering::Relaxed) {
            let mut args = vec!["gc", "--data", p(&data)];
            args.extend_from_slice(extra);
            ok(registry_cmd(&args));
            runs += 1;
        }
        runs
    });
    (stop, gc)
}

#[test]
fn gc_beside_running_publishes_never_leaves_an_object_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let (r, push, data) = populated(dir.path(), &[]);
    let c = client(&r.url, Some(push));
    // 1. gc with no grace at all, over and over: the hardest case. A blob
    // uploaded a moment ago and not yet named is fair game, so a publish
    // may be refused (BLOB_UNKNOWN) however often it retries: gc holds the
    // write lock most of the time and the publish's re-check under that
    // lock finds the blob gone. What must never happen is an object left
    // incomplete: each publish ends whole or not there at all.
    let (stop, gc) = gc_loop(&data, &["--grace", "0"]);
    let (mut whole, mut refused) = (0, 0);
    for i in 0..40 {
        let (release, arch) = (format!("6.1.0-{i}-amd64"), Arch::X86_64);
        let bytes = object(&release, arch, "v0.1.0");
        let m = meta(&release, arch, "v0.1.0", &bytes);
        let outcome = (0..3)
            .map(|_| c.publish(&m, &bytes, false))
            .find(|r| r.is_ok())
            .unwrap_or_else(|| c.publish(&m, &bytes, false));
        match outcome {
            Ok(_) => {
                whole += 1;
                assert_whole(&r.url, &release, arch, "v0.1.0");
            }
            Err(bpfarm_object::client::ClientError::BlobUnknown { .. }) => {
                refused += 1;
                assert_absent(&r.url, &release, arch, "v0.1.0");
            }
            Err(e) => panic!("{release}: {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let runs = gc.join().unwrap();
    assert!(runs > 0);
    eprintln!("grace 0: {runs} gc runs beside 40 publishes; {whole} whole, {refused} refused cleanly");
    // 2. gc with its default grace, over and over: a publish in flight is
    // what the grace protects, so none is refused, not even once.
    let (stop, gc) = gc_loop(&data, &[]);
    let published: Vec<(String, Arch)> = (40..80).map(|i| (format!("6.1.0-{i}-amd64"), Arch::X86_64)).collect();
    for (release, arch) in &published {
        let bytes = object(release, *arch, "v0.1.0");
        let m = meta(release, *arch, "v0.1.0", &bytes);
        c.publish(&m, &bytes, false).unwrap_or_else(|e| panic!("{release} beside gc with its grace: {e}"));
        assert_whole(&r.url, release, *arch, "v0.1.0");
    }
    stop.store(true, Ordering::Relaxed);
    let runs = gc.join().unwrap();
    assert!(runs > 0);
    eprintln!("default grace: {runs} gc runs beside 40 publishes, none refused");
    for (release, arch) in &published {
        assert_whole(&r.url, release, *arch, "v0.1.0");
    }
    drop(r);
    ok(registry_cmd(&["fsck", "--data", p(&data)]));
}

#[test]
fn mirror_syncs_incrementally_resumes_and_refuses_a_lying_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let (up, push, data_up) = populated(&dir.path().join("up"), OBJECTS);
    let read = token(&data_up, "mirror", "read");
    let data = dir.path().join("dmz");
    // A blob of the upstream lies about its digest (its file was changed
    // behind its back): the mirror refuses it and stops there.
    let (release, arch, version) = OBJECTS[2];
    let victim = Digest::of_bytes(&object(release, arch, version));
    let victim_path = data_up.join("blobs/sha256").join(&victim.hex()[..2]).join(victim.hex());
    let good = std::fs::read(&victim_path).unwrap();
    let mut bad = good.clone();
    bad[0] ^= 0xff;
    std::fs::write(&victim_path, &bad).unwrap();
    let o = registry_cmd(&["mirror", "--data", p(&data), "--from", &up.url, "--token", &read]);
    assert!(!o.status.success(), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&victim.to_string()), "{}", show(&o));
    assert!(
        !data.join("blobs/sha256").join(&victim.hex()[..2]).join(victim.hex()).exists(),
        "a lying blob became visible"
    );
    // Fixed upstream: the rerun fetches only what is still missing.
    std::fs::write(&victim_path, &good).unwrap();
    let o = ok(registry_cmd(&["mirror", "--data", p(&data), "--from", &up.url, "--token", &read]));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(text.contains(": 2 fetched") && text.contains("2 already here"), "{text}");
    // Again: nothing to fetch.
    let o = ok(registry_cmd(&["mirror", "--data", p(&data), "--from", &up.url, "--token", &read]));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(": 0 fetched (0 bytes), 4 already here, 0 objects published"),
        "{}",
        show(&o)
    );
    // Upstream replaces an object: the mirror follows.
    let newer = b"\x7fELF rebuilt".to_vec();
    client(&up.url, Some(push)).publish(&meta(release, arch, version, &newer), &newer, true).unwrap();
    let o = ok(registry_cmd(&["mirror", "--data", p(&data), "--from", &up.url, "--token", &read]));
    assert!(String::from_utf8_lossy(&o.stdout).contains(": 1 fetched"), "{}", show(&o));
    let dmz = serve(&data);
    let c = client(&dmz.url, None);
    let m = c.lookup(release, arch.uname(), version).unwrap().unwrap();
    assert_eq!(c.download(&m.digest).unwrap(), newer);
    for (release, arch, version) in &OBJECTS[..2] {
        assert_whole(&dmz.url, release, *arch, version);
    }
    drop(dmz);
    ok(registry_cmd(&["fsck", "--data", p(&data)]));
}

#[test]
fn mirror_stops_an_endless_body_at_the_size_the_metadata_names() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = object("6.1.0-56-amd64", Arch::X86_64, "v0.1.0");
    let m = meta("6.1.0-56-amd64", Arch::X86_64, "v0.1.0", &bytes);
    let list = serde_json::json!({"objects": [m]}).to_string();
    // A hostile upstream: the list is honest, the blob never ends.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        for stream in listener.incoming().take(2) {
            let mut s = stream.unwrap();
            let mut line = String::new();
            BufReader::new(s.try_clone().unwrap()).read_line(&mut line).unwrap();
            if line.contains("/v1/objects") {
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{list}",
                    list.len()
                );
            } else {
                let _ = write!(s, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
                let chunk = vec![b'A'; 1 << 16];
                let mut sent = 0u64;
                while s.write_all(&chunk).is_ok() && sent < (1 << 30) {
                    sent += chunk.len() as u64;
                }
            }
        }
    });
    let data = dir.path().join("dmz");
    let o = registry_cmd(&["mirror", "--data", p(&data), "--from", &url]);
    assert!(!o.status.success(), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!("more than the {} bytes", bytes.len())),
        "{}",
        show(&o)
    );
    server.join().unwrap();
    let stored = std::fs::read_dir(data.join("blobs/sha256")).unwrap().count();
    assert_eq!(stored, 0, "something became visible");
}

/// The agent reads an unpacked bundle directly (`--registry
/// oci-layout:DIR`): no server. The object it installs is the builder's,
/// byte for byte; under `--verify-key` this unsigned bundle is refused
/// (no cosign signature tag in the layout) with the reason, and nothing is
/// installed; a layout whose blob was swapped is refused. (Signed bundles:
/// `agent_sign_oci`.)
#[test]
fn the_agent_fetches_from_an_unpacked_bundle_with_oci_layout() {
    let dir = tempfile::tempdir().unwrap();
    let published = bpfarm_tests::registry_with_running_object(dir.path());
    let tar = dir.path().join("bundle.tar");
    ok(registry_cmd(&["bundle", "--data", p(&dir.path().join("registry")), "--out", p(&tar)]));
    drop(published.registry);
    let layout = dir.path().join("layout");
    untar(&tar, &layout);
    let source = format!("oci-layout:{}", layout.display());
    let agent = |install: &Path, extra: &[&str]| {
        let mut c = Command::new(bin("bpfarm-agent"));
        c.env_remove("TRACEE_BPF_FILE").env_remove("KERN_HEADERS").env_remove("BPFARM_REGISTRIES");
        c.arg("--install-path").arg(install).args(["--build-policy", "never", "--registry", &source]);
        c.args(extra).output().unwrap()
    };

    let located = ok(agent(&dir.path().join("nothing-here"), &["locate"]));
    assert!(String::from_utf8_lossy(&located.stdout).contains("would fetch and install it"), "{}", show(&located));
    assert!(!dir.path().join("nothing-here").exists(), "locate wrote the install path");

    let install = dir.path().join("install");
    let o = ok(agent(&install, &["fetch"]));
    assert!(String::from_utf8_lossy(&o.stderr).contains("read from the OCI layout"), "{}", show(&o));
    let name = published.object.file_name().unwrap();
    assert_eq!(std::fs::read(install.join(name)).unwrap(), std::fs::read(&published.object).unwrap());

    // Under --verify-key: refused with the reason, nothing installed.
    let key = dir.path().join("key.pem");
    let public = dir.path().join("key.pub");
    let made = Command::new("openssl")
        .args(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", show(&made));
    let pubout = Command::new("openssl")
        .arg("pkey")
        .arg("-in")
        .arg(&key)
        .arg("-pubout")
        .arg("-out")
        .arg(&public)
        .output()
        .unwrap();
    assert!(pubout.status.success(), "{}", show(&pubout));
    let strict = dir.path().join("strict");
    let o = agent(&strict, &["--verify-key", p(&public), "--state-dir", p(&dir.path().join("state")), "fetch"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unsigned (no cosign signature tag sha256-"), "{}", show(&o));
    assert!(!strict.join(name).exists(), "an unverified object was installed");

    // A swapped layer: same size, other bytes.
    let digest = Digest::of_bytes(&std::fs::read(&published.object).unwrap());
    let blob = layout.join("blobs/sha256").join(digest.hex());
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let swapped = dir.path().join("swapped");
    let o = agent(&swapped, &["fetch"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("refused"), "{}", show(&o));
    assert!(!swapped.join(name).exists(), "a swapped object was installed");
}

/// A GNU long-name entry of 256 MiB (sparse on disk) ahead of everything:
/// the tar crate would read it whole into memory before `import` sees an
/// entry. It is refused by its type, unread: fast, and the message stays
/// short.
#[test]
fn import_refuses_a_huge_long_name_entry_unread() {
    let dir = tempfile::tempdir().unwrap();
    let (target, _push, data) = populated(&dir.path().join("t"), &OBJECTS[..1]);
    drop(target);
    let before = snapshot(&data);
    let path = dir.path().join("longname.tar");
    let mut h = tar::Header::new_gnu();
    h.set_path("././@LongLink").unwrap();
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_size(256 << 20);
    h.set_cksum();
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(h.as_bytes()).unwrap();
    f.set_len(512 + (256 << 20) + 1024).unwrap();
    drop(f);
    let started = std::time::Instant::now();
    let o = registry_cmd(&["import", "--data", p(&data), p(&path)]);
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("GNULongName") && err.contains("nothing was imported"), "{}", show(&o));
    assert!(o.stderr.len() < 4096, "the refusal printed {} bytes", o.stderr.len());
    assert!(took < std::time::Duration::from_secs(20), "took {took:?}: the entry was read");
    assert_eq!(snapshot(&data), before);
}
