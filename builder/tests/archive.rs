//! `discover` and `fetch` against package archives: the machine's own mirror
//! (from its apt sources) for one small real suite, and a crafted mirror on
//! loopback, made from that suite's real signed files and the default
//! matrix's real packages, for each way an archive can lie or fail. Every
//! refusal is checked for its exit code, its message, and that nothing was
//! written.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use bpfarm_builder::archive::{self as http, Archive};
use bpfarm_builder::archive::{DEFAULT_KEYRING, release};
use bpfarm_builder::matrix::Matrix;
use bpfarm_object::Digest;
use bpfarm_object::http::{Transport, TransportConfig};
use bpfarm_tests::mirror::{Answer, Mirror};
use bpfarm_tests::{echoed, fixture_debs, repo_root};

const BIN: &str = env!("CARGO_BIN_EXE_bpfarm-builder");
/// A real suite with kernels and small indices (~300 KiB per arch).
const SUITE: &str = "bookworm-backports";
/// The default matrix's 6.1 kernel: three real packages, ~14 MiB.
const KERNEL: &str = r"^6\.1\.0-56-amd64$";

fn builder(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).env_remove("BPFARM_CACHE").env_remove("BPFARM_APT_SOURCE");
    c
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// The real suite's signed files, as the machine's mirror serves them.
struct RealSuite {
    inrelease: Vec<u8>,
    /// `main/binary-amd64/Packages.xz` (below `dists/<suite>/`).
    index_path: String,
    index: Vec<u8>,
}

fn real_suite() -> &'static RealSuite {
    static S: OnceLock<RealSuite> = OnceLock::new();
    S.get_or_init(|| {
        let keyring = Path::new(DEFAULT_KEYRING);
        let roots = bpfarm_builder::discover::roots(&[], Path::new("/etc/apt"), keyring, &|_| {}).expect("apt sources");
        let http = Archive::new(&Transport::new(TransportConfig::default()).expect("client"));
        for r in roots {
            let url = http::join(&r.uri, &format!("dists/{SUITE}/InRelease"));
            let Some(inrelease) = http.get_bytes(&url, 16 << 20).expect("the machine's mirror answers") else {
                continue;
            };
            let text = release::verify(&inrelease, keyring).expect("the real InRelease verifies");
            let idx = release::parse(&text).unwrap().packages_index("amd64").expect("an amd64 index");
            let index = http
                .get_bytes(&http::join(&r.uri, &format!("dists/{SUITE}/{}", idx.path)), idx.size)
                .unwrap()
                .expect("the index is there");
            return RealSuite { inrelease, index_path: idx.path, index };
        }
        panic!("no archive in the apt sources serves {SUITE}: the tests need the machine's Debian mirror");
    })
}

/// A folder laid out as an archive with the real suite in it (also under
/// `aliases`), and its server.
fn crafted(aliases: &[&str]) -> (tempfile::TempDir, Mirror) {
    let s = real_suite();
    let dir = tempfile::tempdir().unwrap();
    for d in std::iter::once(SUITE).chain(aliases.iter().copied()) {
        let base = dir.path().join("debian/dists").join(d);
        std::fs::create_dir_all(base.join(Path::new(&s.index_path).parent().unwrap())).unwrap();
        std::fs::write(base.join("InRelease"), &s.inrelease).unwrap();
        std::fs::write(base.join(&s.index_path), &s.index).unwrap();
    }
    let m = Mirror::serve(dir.path());
    (dir, m)
}

fn discover_from(m: &Mirror, out: &Path, extra: &[&str]) -> Output {
    let root = format!("{}/debian", m.url);
    echoed(builder(&["discover", "--apt-source", &root, "--arch", "amd64", "--output", p(out)]).args(extra))
}

/// An output file with content that must survive a failed run.
fn sentinel(dir: &Path) -> PathBuf {
    let out = dir.join("matrix.toml");
    std::fs::write(&out, "# the previous, complete matrix\n").unwrap();
    out
}

fn assert_untouched(out: &Path) {
    assert_eq!(std::fs::read_to_string(out).unwrap(), "# the previous, complete matrix\n", "the output was touched");
    let stray: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(stray.is_empty(), "temp files left: {stray:?}");
}

#[test]
fn real_suite_is_discovered_verified_paired_and_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.toml");
    let o = echoed(&mut builder(&["discover", "--suite", SUITE, "--arch", "amd64,arm64", "--output", p(&out)]));
    assert!(o.status.success(), "{}", stderr(&o));
    let m = Matrix::load(&out).unwrap();
    for arch in ["amd64", "arm64"] {
        assert!(m.kernels.iter().any(|k| k.arch == arch), "no {arch} kernel in {SUITE}");
    }
    for k in &m.kernels {
        assert_eq!(k.suites, [SUITE]);
        let names: Vec<&str> = k.debs.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names[0], k.package);
        assert!(names[1].ends_with("-common") || names[1].ends_with("-common-rt"), "{names:?}");
        assert!(names[2].starts_with("linux-kbuild-"), "{names:?}");
    }
    // Same indices, same bytes.
    let again = dir.path().join("again.toml");
    let o = echoed(&mut builder(&["discover", "--suite", SUITE, "--arch", "amd64,arm64", "--output", p(&again)]));
    assert!(o.status.success());
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());

    // Fetch one kernel straight from the mirror; then nothing to do.
    let store = dir.path().join("debs");
    let fetch = || {
        echoed(&mut builder(&["fetch", "--matrix", p(&out), "--select=-cloud-amd64$", "--package-cache", p(&store)]))
    };
    let o = fetch();
    assert!(o.status.success(), "{}", stderr(&o));
    let k = m.kernels.iter().find(|k| k.package.ends_with("-cloud-amd64")).unwrap();
    for d in &k.debs {
        let stored = store.join("sha256").join(format!("{}.deb", d.sha256.hex()));
        let (digest, size) = Digest::of_reader(std::fs::File::open(&stored).unwrap()).unwrap();
        assert_eq!((digest, size), (d.sha256.clone(), d.size), "{}", d.name);
        assert!(store.join(d.apt_file_name()).is_file(), "no apt-named link for {}", d.name);
    }
    let o = fetch();
    assert!(o.status.success());
    assert!(stderr(&o).contains("fetch: 0 downloaded") && stderr(&o).contains("3 already stored"), "{}", stderr(&o));
}

#[test]
fn crafted_mirror_of_real_files_is_accepted() {
    // The baseline for the attacks below: unmodified, the crafted archive
    // gives the same kernels as the real one.
    let (dir, m) = crafted(&[]);
    let out = dir.path().join("m.toml");
    let o = discover_from(&m, &out, &["--suite", SUITE]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = Matrix::load(&out).unwrap();
    assert!(!got.kernels.is_empty());
    assert!(got.kernels.iter().all(|k| k.arch == "amd64" && k.debs.len() == 3));
}

#[test]
fn tampered_package_index_is_refused_and_nothing_written() {
    let (dir, m) = crafted(&[]);
    let s = real_suite();
    let mut xz = s.index.clone();
    let n = xz.len();
    xz[n / 2] ^= 0x40;
    std::fs::write(dir.path().join("debian/dists").join(SUITE).join(&s.index_path), &xz).unwrap();
    let out = sentinel(dir.path());
    let o = discover_from(&m, &out, &["--suite", SUITE]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains(&format!("{SUITE} amd64 Packages.xz")) && e.contains("but the signed Release says"), "{e}");
    assert!(e.contains("nothing written"), "{e}");
    assert_untouched(&out);
}

#[test]
fn oversized_package_index_is_cut_off() {
    let (dir, m) = crafted(&[]);
    let s = real_suite();
    let mut xz = s.index.clone();
    xz.extend(std::iter::repeat_n(0u8, 1 << 20));
    m.set(&format!("debian/dists/{SUITE}/{}", s.index_path), Answer::Chunked(xz));
    let out = sentinel(dir.path());
    let o = discover_from(&m, &out, &["--suite", SUITE]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("larger than the {} bytes expected", s.index.len())), "{}", stderr(&o));
    assert_untouched(&out);
}

/// The real InRelease with one byte of its signed text changed.
fn forged_inrelease(edit: impl Fn(&str) -> String) -> Vec<u8> {
    let text = String::from_utf8(real_suite().inrelease.clone()).unwrap();
    let forged = edit(&text);
    assert_ne!(forged, text, "the edit changed nothing");
    forged.into_bytes()
}

#[test]
fn bad_inrelease_signature_is_refused() {
    let (dir, m) = crafted(&[]);
    // Point the suite at another codename: signed bytes changed.
    let forged = forged_inrelease(|t| t.replacen("Codename: bookworm", "Codename: bookwurm", 1));
    std::fs::write(dir.path().join("debian/dists").join(SUITE).join("InRelease"), forged).unwrap();
    let out = sentinel(dir.path());
    let o = discover_from(&m, &out, &["--suite", SUITE]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains(&format!("{SUITE} InRelease")) && e.contains("does not verify against"), "{e}");
    assert!(e.contains("BADSIG"), "gpgv's verdict is named: {e}");
    assert_untouched(&out);
}

#[test]
fn index_hashes_outside_the_signature_are_not_believed() {
    // A tampered index, and its hash appended after the signature block,
    // where gpgv does not look: only the signed text counts.
    let (dir, m) = crafted(&[]);
    let s = real_suite();
    let mut xz = s.index.clone();
    xz[100] ^= 1;
    let base = dir.path().join("debian/dists").join(SUITE);
    std::fs::write(base.join(&s.index_path), &xz).unwrap();
    let forged =
        forged_inrelease(|t| format!("{t}SHA256:\n {} {} {}\n", Digest::of_bytes(&xz).hex(), xz.len(), s.index_path));
    std::fs::write(base.join("InRelease"), forged).unwrap();
    let out = sentinel(dir.path());
    let o = discover_from(&m, &out, &["--suite", SUITE]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("but the signed Release says"), "{}", stderr(&o));
    assert_untouched(&out);
}

#[test]
fn an_unreachable_suite_fails_the_whole_run() {
    let (dir, m) = crafted(&[]);
    m.set("debian/dists/trixie-backports/InRelease", Answer::Status(500));
    let out = sentinel(dir.path());
    let o = discover_from(&m, &out, &["--suite", &format!("{SUITE},trixie-backports")]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("trixie-backports InRelease") && e.contains("HTTP 500"), "{e}");
    assert_untouched(&out);
    // A suite asked for by name that no root serves is no better.
    let o = discover_from(&m, &out, &["--suite", &format!("{SUITE},sid")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("sid InRelease") && stderr(&o).contains("no archive root serves"), "{}", stderr(&o));
    assert_untouched(&out);
}

#[test]
fn the_walk_finds_suites_from_the_mirror_and_guards_them() {
    // The real suite also answers as `oldstable` (its Suite field says
    // oldstable-backports, its Codename bookworm-backports): the walk must
    // find it through the class alias, then ask for its codename's
    // companions, and keep one entry, under the codename's folder.
    let (dir, m) = crafted(&["oldstable"]);
    let out = dir.path().join("m.toml");
    let o = discover_from(&m, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = Matrix::load(&out).unwrap();
    assert_eq!(got.suites.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), [SUITE]);
    assert!(got.kernels.iter().all(|k| k.suites == [SUITE]));
    let asked: Vec<String> = m.requests().into_iter().map(|(p, _)| p).collect();
    for want in [
        "debian/dists/stable/InRelease",
        "debian/dists/experimental/InRelease",
        "debian/dists/bookworm-security/InRelease",
        "debian/dists/bookworm-updates/InRelease",
    ] {
        assert!(asked.iter().any(|a| a == want), "{want} was not asked: {asked:?}");
    }
    // A companion the mirror fails to answer is a failed index.
    m.set("debian/dists/bookworm-security/InRelease", Answer::Status(503));
    let out = sentinel(dir.path());
    let o = discover_from(&m, &out, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("bookworm-security InRelease") && stderr(&o).contains("HTTP 503"), "{}", stderr(&o));
    assert_untouched(&out);
}

/// An archive holding the default 6.1 kernel's three real packages at their
/// pool paths.
fn package_mirror() -> (tempfile::TempDir, Mirror, Matrix) {
    let matrix = repo_root().join("kernels/default.toml");
    let m = Matrix::load(&matrix).unwrap().select(&[KERNEL.to_owned()], &matrix).unwrap();
    let store = fixture_debs();
    let dir = tempfile::tempdir().unwrap();
    for d in m.debs() {
        let dest = dir.path().join("debian").join(&d.filename);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(store.join("sha256").join(format!("{}.deb", d.sha256.hex())), &dest).unwrap();
    }
    let mirror = Mirror::serve(dir.path());
    (dir, mirror, m)
}

fn fetch_from(m: &Mirror, store: &Path) -> Output {
    let matrix = repo_root().join("kernels/default.toml");
    let root = format!("{}/debian", m.url);
    echoed(&mut builder(&[
        "fetch",
        "--matrix",
        p(&matrix),
        "--select",
        KERNEL,
        "--apt-source",
        &root,
        "--package-cache",
        p(store),
        "--no-progress",
    ]))
}

fn stored(store: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(store.join("sha256"))
        .map(|rd| {
            rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".deb")).collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn partials(store: &Path) -> usize {
    std::fs::read_dir(store.join("sha256/.partial")).map(|rd| rd.count()).unwrap_or(0)
}

#[test]
fn fetch_checks_every_package_and_resumes_a_cut_download() {
    let (_dir, m, matrix) = package_mirror();
    let common = &matrix.kernels[0].debs[1];
    m.set(&format!("debian/{}", common.filename), Answer::CutAfter(3 << 20));
    let store = tempfile::tempdir().unwrap();
    let o = fetch_from(&m, store.path());
    assert!(o.status.success(), "{}", stderr(&o));
    for d in matrix.debs() {
        let f = store.path().join("sha256").join(format!("{}.deb", d.sha256.hex()));
        assert_eq!(Digest::of_reader(std::fs::File::open(f).unwrap()).unwrap(), (d.sha256.clone(), d.size));
    }
    // One range request, for the cut file, from where the cut left it.
    let ranges: Vec<_> = m.requests().into_iter().filter_map(|(p, r)| r.map(|r| (p, r))).collect();
    assert_eq!(ranges.len(), 1, "{ranges:?}");
    assert_eq!(ranges[0].0, format!("debian/{}", common.filename));
    let from: u64 = ranges[0].1.strip_prefix("bytes=").and_then(|r| r.strip_suffix('-')).unwrap().parse().unwrap();
    assert!(from > 0 && from <= 3 << 20, "resumed from {from}");
    assert_eq!(partials(store.path()), 0);
}

#[test]
fn a_package_whose_bytes_differ_from_the_matrix_is_discarded() {
    let (dir, m, matrix) = package_mirror();
    let flavour = &matrix.kernels[0].debs[0];
    let path = dir.path().join("debian").join(&flavour.filename);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let store = tempfile::tempdir().unwrap();
    let o = fetch_from(&m, store.path());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains(&format!("but the matrix says {} bytes with {}; discarded", flavour.size, flavour.sha256)),
        "{e}"
    );
    let want: Vec<String> = matrix.kernels[0].debs[1..]
        .iter()
        .map(|d| format!("{}.deb", d.sha256.hex()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(stored(store.path()), want, "only the two good packages are stored");
    assert!(!store.path().join(flavour.apt_file_name()).exists());
    assert_eq!(partials(store.path()), 0, "the bad bytes were not kept");
}

#[test]
fn a_download_larger_than_the_matrix_says_is_refused() {
    let (dir, m, matrix) = package_mirror();
    let flavour = &matrix.kernels[0].debs[0];
    let mut bytes = std::fs::read(dir.path().join("debian").join(&flavour.filename)).unwrap();
    bytes.extend(std::iter::repeat_n(7u8, 8 << 20));
    // Announced (Content-Length), and not announced (chunked): both stop.
    for answer in [Answer::Bytes(bytes.clone()), Answer::Chunked(bytes.clone())] {
        m.set(&format!("debian/{}", flavour.filename), answer);
        let store = tempfile::tempdir().unwrap();
        let o = fetch_from(&m, store.path());
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("more than the matrix's {} bytes; discarded", flavour.size)),
            "{}",
            stderr(&o)
        );
        assert!(!stored(store.path()).contains(&format!("{}.deb", flavour.sha256.hex())));
        assert_eq!(partials(store.path()), 0);
        // What is stored is exactly the two other packages.
        let others: u64 = matrix.kernels[0].debs[1..].iter().map(|d| d.size).sum();
        let on_disk: u64 = std::fs::read_dir(store.path().join("sha256"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| e.metadata().unwrap().len())
            .sum();
        assert_eq!(on_disk, others, "bytes beyond the matrix were kept");
    }
}

#[test]
fn build_reports_a_kernel_whose_package_cannot_be_had() {
    let (_dir, m, matrix) = package_mirror();
    let kbuild = &matrix.kernels[0].debs[2];
    m.set(&format!("debian/{}", kbuild.filename), Answer::Status(404));
    let work = tempfile::tempdir().unwrap();
    let report = work.path().join("report.json");
    let root = format!("{}/debian", m.url);
    let o = echoed(&mut builder(&[
        "build",
        "--matrix",
        p(&repo_root().join("kernels/default.toml")),
        "--select",
        KERNEL,
        "--apt-source",
        &root,
        "--cache-dir",
        p(&work.path().join("cache")),
        "--out",
        p(&work.path().join("out")),
        "--report",
        p(&report),
        "--no-progress",
    ]));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["summary"]["failed"], 1, "{r:#}");
    let err = r["kernels"][0]["error"].as_str().unwrap();
    assert!(
        err.contains("fetch failed") && err.contains("no archive root has it") && err.contains(&kbuild.filename),
        "{err}"
    );
    assert_eq!(r["kernels"][0]["kernel"], "6.1.0-56-amd64");
    assert!(!work.path().join("out/x86_64").exists(), "an object was written");
}
