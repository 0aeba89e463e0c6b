//! RPM `kernel-devel` packages. No real RPM repository is reachable from
//! here, so the packages are made in the test: `rpmbuild` (Debian's rpm
//! 4.18) packs a real Debian header tree, laid out as Fedora's kernel-devel
//! is (`/usr/src/kernels/<release>`, the flavour tree merged over its
//! `-common` tree), and the builder must make the same validated object from
//! it as from the `.deb`s. Hostile packages are made with the `rpm` crate's
//! builder (rpmbuild refuses to make them): each is refused with its
//! message, the build exits 1 for that kernel, and nothing of it stays in
//! the tree cache.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bpfarm_builder::limits::Limits;
use bpfarm_builder::rpms;
use bpfarm_object::object_file_name;
use bpfarm_tests::mirror::{Answer, Mirror};
use bpfarm_tests::{deb, fixture_debs, in_ci, leftovers, run_ok};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bpfarm-builder");
const RELEASE: &str = "6.1.0-56-amd64";
const FLAVOUR: &str = "linux-headers-6.1.0-56-amd64";
const COMMON: &str = "linux-headers-6.1.0-56-common";
const KBUILD: &str = "linux-kbuild-6.1";

/// Whether rpmbuild is here; under CI=true its absence fails the test.
fn have_rpmbuild() -> bool {
    if which("rpmbuild") {
        return true;
    }
    assert!(!in_ci(), "rpmbuild is not installed: ci/install-deps installs rpm (CI=true: failing)");
    eprintln!("SKIPPED: rpmbuild is not installed (ci/install-deps installs rpm)");
    false
}

fn which(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success())
}

/// Fedora's layout from Debian's packages: `dpkg-deb -x` of the flavour and
/// its `-common`, the common tree with the flavour's generated files and
/// `.config` over it (its own Makefile, not the flavour's wrapper that
/// includes it), at `<root>/usr/src/kernels/<release>`. The dangling links
/// into linux-kbuild (scripts, tools) are left out, as kernel-devel has
/// those folders itself.
fn merged_tree(dir: &Path) -> PathBuf {
    let x = dir.join("x");
    for p in [FLAVOUR, COMMON] {
        run_ok(Command::new("dpkg-deb").arg("-x").arg(deb(&fixture_debs(), p)).arg(&x));
    }
    let merged = dir.join("merged").join(RELEASE);
    std::fs::create_dir_all(&merged).unwrap();
    run_ok(Command::new("cp").arg("-a").arg(x.join(format!("usr/src/{COMMON}/."))).arg(&merged));
    let makefile = std::fs::read(merged.join("Makefile")).unwrap();
    run_ok(Command::new("cp").arg("-a").arg(x.join(format!("usr/src/{FLAVOUR}/."))).arg(&merged));
    std::fs::write(merged.join("Makefile"), makefile).unwrap();
    for link in ["scripts", "tools"] {
        let _ = std::fs::remove_file(merged.join(link));
    }
    std::fs::remove_dir_all(&x).unwrap();
    merged
}

/// `rpmbuild -bb` of `tree` as `/usr/src/kernels/<release>` in package
/// `name`, payload compressed with `payload` (rpm's `_binary_payload`,
/// e.g. `w19.zstdio`).
fn rpmbuild(dir: &Path, tree: &Path, release: &str, name: &str, payload: &str) -> PathBuf {
    let top = dir.join(format!("rpmbuild-{name}-{payload}"));
    let spec = dir.join(format!("{name}.spec"));
    std::fs::write(
        &spec,
        format!(
            "Name: {name}\nVersion: 6.1.192\nRelease: 56.test\nSummary: kernel headers (from Debian's packages)\n\
             License: GPL-2.0-only\nBuildArch: x86_64\nAutoReqProv: no\n\
             %global debug_package %{{nil}}\n%global __os_install_post %{{nil}}\n%global _build_id_links none\n\
             %description\nThe headers of Debian's {release}, laid out as kernel-devel.\n\
             %install\nmkdir -p %{{buildroot}}/usr/src/kernels\ncp -a {} %{{buildroot}}/usr/src/kernels/{release}\n\
             %files\n%defattr(-,root,root)\n/usr/src/kernels/{release}\n",
            tree.display()
        ),
    )
    .unwrap();
    run_ok(
        Command::new("rpmbuild")
            .arg("-bb")
            .arg("--quiet")
            .arg("--define")
            .arg(format!("_topdir {}", top.display()))
            .arg("--define")
            .arg(format!("_binary_payload {payload}"))
            .arg(&spec),
    );
    let rpm = top.join("RPMS/x86_64").join(format!("{name}-6.1.192-56.test.x86_64.rpm"));
    assert!(rpm.is_file(), "{} was not made", rpm.display());
    rpm
}

fn build(dir: &Path, name: &str, args: &[&std::ffi::OsStr]) -> (Output, Option<Value>) {
    let report = dir.join(format!("{name}.json"));
    let out = Command::new(BIN)
        .args(["build", "--no-progress"])
        .args(args)
        .arg("--cache-dir")
        .arg(dir.join(format!("{name}.cache")))
        .arg("--out")
        .arg(dir.join(name))
        .arg("--report")
        .arg(&report)
        .env_remove("BPFARM_CACHE")
        .output()
        .unwrap();
    eprintln!(
        "--- {name}: exit {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r = std::fs::read(&report).ok().map(|b| serde_json::from_slice(&b).expect("report is JSON"));
    (out, r)
}

#[test]
fn an_rpm_of_a_real_debian_tree_builds_the_object_the_debs_build() {
    if !have_rpmbuild() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = merged_tree(dir.path());
    let rpm = rpmbuild(dir.path(), &tree, RELEASE, "kernel-devel", "w3.zstdio");
    std::fs::remove_dir_all(dir.path().join("merged")).unwrap();
    println!("kernel-devel rpm: {} KiB", std::fs::metadata(&rpm).unwrap().len() >> 10);

    let (out, report) = build(dir.path(), "rpm", &["--headers".as_ref(), rpm.as_os_str()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let report = report.unwrap();
    let row = &report["kernels"][0];
    assert_eq!(row["kernel"], RELEASE, "{report:#}");
    assert_eq!(row["arch"], "x86_64");
    let object = std::fs::read(dir.path().join("rpm/x86_64").join(object_file_name(RELEASE, "v0.1.0"))).unwrap();
    // Unpacked once into the tree cache, by the package's digest.
    let trees: Vec<_> = std::fs::read_dir(dir.path().join("rpm.cache/trees")).unwrap().flatten().collect();
    assert_eq!(trees.len(), 1, "{trees:?}");
    assert!(trees[0].path().join(format!("usr/src/kernels/{RELEASE}/include/generated/autoconf.h")).is_file());
    assert_eq!(leftovers(&dir.path().join("rpm.cache")), Vec::<PathBuf>::new());

    // The same kernel from its three .debs: the same bytes.
    let debs: Vec<PathBuf> = [FLAVOUR, COMMON, KBUILD].iter().map(|p| deb(&fixture_debs(), p)).collect();
    let mut args: Vec<&std::ffi::OsStr> = Vec::new();
    for d in &debs {
        args.push("--headers".as_ref());
        args.push(d.as_os_str());
    }
    let (out, _) = build(dir.path(), "debs", &args);
    assert!(out.status.success());
    let from_debs = std::fs::read(dir.path().join("debs/x86_64").join(object_file_name(RELEASE, "v0.1.0"))).unwrap();
    assert!(object == from_debs, "the object from the RPM differs from the one from the .debs");

    // The same package through a yum repository (createrepo_c) on loopback:
    // discover pins it, build --matrix fetches it by its sha256 and builds it.
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("Packages")).unwrap();
    std::fs::rename(&rpm, repo.join("Packages").join(rpm.file_name().unwrap())).unwrap();
    createrepo(&repo, "xz");
    let mirror = Mirror::serve(&repo);
    let matrix = dir.path().join("yum.toml");
    let out = builder(&["discover", "--yum-repo", &mirror.url, "--name", "yum-test", "--output", p(&matrix)]);
    assert!(out.status.success());
    let text = std::fs::read_to_string(&matrix).unwrap();
    assert!(
        text.contains("[[kernel.rpm]]") && text.contains("Packages/kernel-devel-6.1.192-56.test.x86_64.rpm"),
        "{text}"
    );
    let (out, report) = build(
        dir.path(),
        "matrix",
        &[
            "--matrix".as_ref(),
            matrix.as_os_str(),
            "--yum-repo".as_ref(),
            mirror.url.as_ref(),
            "--package-cache".as_ref(),
            dir.path().join("store").as_os_str(),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(report.unwrap()["kernels"][0]["kernel"], RELEASE);
    let from_matrix =
        std::fs::read(dir.path().join("matrix/x86_64").join(object_file_name(RELEASE, "v0.1.0"))).unwrap();
    assert!(from_matrix == from_debs);
    assert!(dir.path().join("store/kernel-devel_6.1.192-56.test_x86_64.rpm").is_file());
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// `bpfarm-builder <args>`, printed.
fn builder(args: &[&str]) -> Output {
    let out = Command::new(BIN).args(args).env_remove("BPFARM_CACHE").output().unwrap();
    eprintln!(
        "--- {args:?}: exit {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `createrepo_c` over `repo`, its metadata compressed with `compression`.
fn createrepo(repo: &Path, compression: &str) {
    assert!(which("createrepo_c") || !in_ci(), "createrepo_c is not installed: ci/install-deps installs createrepo-c");
    let _ = std::fs::remove_dir_all(repo.join("repodata"));
    run_ok(
        Command::new("createrepo_c")
            .arg("--quiet")
            .arg("--no-database")
            .arg(format!("--general-compress-type={compression}"))
            .arg(repo),
    );
}

/// The primary index's path in a createrepo_c repository.
fn primary_href(repo: &Path) -> String {
    let repomd = std::fs::read_to_string(repo.join("repodata/repomd.xml")).unwrap();
    let i = repomd.find("<data type=\"primary\">").unwrap();
    let h = repomd[i..].find("href=\"").unwrap() + i + 6;
    repomd[h..h + repomd[h..].find('"').unwrap()].to_owned()
}

#[test]
fn yum_repositories_every_compression_and_their_lies() {
    if !have_rpmbuild() || !which("createrepo_c") {
        assert!(!in_ci(), "createrepo_c is not installed (CI=true: failing)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("include/config")).unwrap();
    std::fs::write(tree.join("include/config/kernel.release"), format!("{RELEASE}\n")).unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("Packages")).unwrap();
    for name in ["kernel-devel", "kernel-rt-devel", "kernel-tools"] {
        let rpm = rpmbuild(dir.path(), &tree, RELEASE, name, "w9.gzdio");
        std::fs::rename(&rpm, repo.join("Packages").join(rpm.file_name().unwrap())).unwrap();
    }
    let mirror = Mirror::serve(&repo);
    let matrix = dir.path().join("m.toml");
    for compression in ["gz", "xz"] {
        createrepo(&repo, compression);
        let _ = std::fs::remove_file(&matrix);
        let out = builder(&["discover", "--yum-repo", &mirror.url, "--output", p(&matrix)]);
        assert!(out.status.success(), "{compression}");
        let m = std::fs::read_to_string(&matrix).unwrap();
        assert_eq!(
            m.matches("\n[[kernel.rpm]]\n").count(),
            2,
            "{compression}: kernel-devel and kernel-rt-devel, not kernel-tools:\n{m}"
        );
        assert!(!m.contains("kernel-tools"), "{m}");
    }
    // The same repository gives the same bytes.
    let again = dir.path().join("again.toml");
    assert!(builder(&["discover", "--yum-repo", &mirror.url, "--output", p(&again)]).status.success());
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&matrix).unwrap());

    // fetch: each package checked against the matrix's sha256; one whose
    // bytes differ is refused and never stored.
    let store = dir.path().join("store");
    let href = "Packages/kernel-devel-6.1.192-56.test.x86_64.rpm";
    mirror.set(
        href,
        Answer::Bytes(std::fs::read(repo.join("Packages/kernel-tools-6.1.192-56.test.x86_64.rpm")).unwrap()),
    );
    let out = builder(&[
        "fetch",
        "--no-progress",
        "--matrix",
        p(&matrix),
        "--yum-repo",
        &mirror.url,
        "--package-cache",
        p(&store),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(href) && err.contains("the matrix") && err.contains("discarded"), "{err}");
    assert!(!store.join("kernel-devel_6.1.192-56.test_x86_64.rpm").exists());
    assert!(store.join("kernel-rt-devel_6.1.192-56.test_x86_64.rpm").is_file());
    let out = builder(&["fetch", "--no-progress", "--matrix", p(&matrix), "--package-cache", p(&store)]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --yum-repo URL"));

    // A primary whose checksum lies, and a repomd.xml pointing outside the
    // repository: exit 1, the URL named, the output untouched.
    let before = std::fs::read(&matrix).unwrap();
    let primary = primary_href(&repo);
    let mut lying = std::fs::read(repo.join(&primary)).unwrap();
    lying.extend_from_slice(b"\n");
    mirror.set(&primary, Answer::Bytes(lying));
    let out = builder(&["discover", "--yum-repo", &mirror.url, "--output", p(&matrix)]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&primary) && err.contains("but repomd.xml says") && err.contains("no matrix written"),
        "{err}"
    );
    assert_eq!(std::fs::read(&matrix).unwrap(), before);

    let repomd = std::fs::read_to_string(repo.join("repodata/repomd.xml")).unwrap();
    mirror
        .set("repodata/repomd.xml", Answer::Bytes(repomd.replace(&primary, "../../etc/primary.xml.zst").into_bytes()));
    let out = builder(&["discover", "--yum-repo", &mirror.url, "--output", p(&matrix)]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a plain path under repodata/; refused"), "{err}");
    assert_eq!(std::fs::read(&matrix).unwrap(), before);
    assert!(!mirror.requests().iter().any(|(path, _)| path.contains("etc/primary")), "fetched outside the repository");
}

#[test]
fn gzip_xz_and_zstd_payloads_unpack_the_same_tree() {
    if !have_rpmbuild() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("include/linux")).unwrap();
    std::fs::create_dir_all(tree.join("include/config")).unwrap();
    std::fs::write(tree.join("include/linux/a.h"), "#define A 1\n".repeat(1000)).unwrap();
    std::fs::write(tree.join("include/config/kernel.release"), format!("{RELEASE}\n")).unwrap();
    std::fs::write(tree.join("include/config/HAVE_KPROBES"), "").unwrap();
    std::fs::write(tree.join(".config"), "CONFIG_X86_64=y\n").unwrap();
    std::os::unix::fs::symlink("linux/a.h", tree.join("include/a.h")).unwrap();
    let mut seen = Vec::new();
    for payload in ["w9.gzdio", "w6.xzdio", "w19.zstdio"] {
        let rpm = rpmbuild(dir.path(), &tree, RELEASE, "kernel-devel", payload);
        let facts = rpms::rpm_info(&rpm).unwrap();
        assert_eq!(
            (facts.name.as_str(), facts.version.as_str(), facts.rpm_arch.as_str()),
            ("kernel-devel", "6.1.192-56.test", "x86_64")
        );
        assert_eq!(facts.size, std::fs::metadata(&rpm).unwrap().len());
        assert_eq!(facts.digest, bpfarm_object::Digest::of_bytes(&std::fs::read(&rpm).unwrap()));
        let out = dir.path().join(format!("out-{payload}"));
        std::fs::create_dir(&out).unwrap();
        let stats =
            rpms::unpack_rpm(&rpm, Some(&facts.digest), &out, &bpfarm_builder::trees::keep_rpm, &Limits::default())
                .unwrap_or_else(|e| panic!("{payload}: {e}"));
        let root = out.join("usr/src/kernels").join(RELEASE);
        assert_eq!(
            std::fs::read(root.join("include/linux/a.h")).unwrap(),
            std::fs::read(tree.join("include/linux/a.h")).unwrap()
        );
        assert_eq!(std::fs::read_link(root.join("include/a.h")).unwrap(), Path::new("linux/a.h"));
        assert!(root.join(".config").is_file() && root.join("include/config/kernel.release").is_file());
        assert!(!root.join("include/config/HAVE_KPROBES").exists(), "{payload}: the filter was not applied");
        assert_eq!(stats.files_written, 3, "{payload}: {stats:?}");
        seen.push(stats.bytes_written);

        // A package that changed since it was inspected is refused.
        let other = bpfarm_object::Digest::of_bytes(b"another package");
        let again = dir.path().join(format!("again-{payload}"));
        std::fs::create_dir(&again).unwrap();
        let e = rpms::unpack_rpm(&rpm, Some(&other), &again, &bpfarm_builder::trees::keep_rpm, &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("changed since it was inspected"), "{e}");
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
}

/// A hostile package made with the rpm crate: `add` puts its entries in.
fn crafted(
    dir: &Path,
    name: &str,
    compression: rpm::CompressionType,
    add: impl FnOnce(&mut rpm::PackageBuilder) -> Result<(), rpm::Error>,
) -> PathBuf {
    let mut b = rpm::PackageBuilder::new("kernel-devel", "6.1.0", "GPL-2.0-only", "x86_64", "hostile");
    b.release("99");
    b.using_config(rpm::BuildConfig::v4().compression(compression));
    b.with_file_contents(
        format!("{RELEASE}\n"),
        rpm::FileOptions::new(format!("/usr/src/kernels/{RELEASE}/include/config/kernel.release")),
    )
    .unwrap();
    add(&mut b).unwrap();
    let path = dir.join(format!("{name}.rpm"));
    b.build().unwrap().write_file(&path).unwrap();
    path
}

/// Builds `--headers <rpm>` with `extra` flags: exits 1 with the package's
/// row naming `want`, and leaves no tree and no temp folder.
fn refused(dir: &Path, rpm: &Path, extra: &[&str], want: &[&str]) {
    let name = rpm.file_stem().unwrap().to_string_lossy().into_owned();
    let mut args: Vec<&std::ffi::OsStr> = vec!["--headers".as_ref(), rpm.as_os_str()];
    args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
    let (out, report) = build(dir, &name, &args);
    assert_eq!(out.status.code(), Some(1), "{name}: a refused package fails its kernel (exit 1)");
    let report = report.unwrap_or_else(|| panic!("{name}: no report"));
    let rows = report["kernels"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{report:#}");
    let err = rows[0]["error"].as_str().unwrap();
    assert!(err.contains(&format!("{name}.rpm")), "{name}: {err}");
    for w in want {
        assert!(err.contains(w), "{name}: expected {w:?} in {err}");
    }
    let cache = dir.join(format!("{name}.cache"));
    let trees: Vec<_> =
        std::fs::read_dir(cache.join("trees")).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert_eq!(trees, Vec::<PathBuf>::new(), "{name}: something stayed in the tree cache");
    assert_eq!(leftovers(&cache), Vec::<PathBuf>::new());
    assert!(!dir.join("etc").exists() && !dir.join("evil").exists(), "{name}: wrote outside");
}

#[test]
fn hostile_rpms_are_refused_and_leave_nothing() {
    use rpm::{CompressionType as C, FileOptions};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let k = |rest: &str| format!("/usr/src/kernels/{RELEASE}/{rest}");

    let rpm = crafted(d, "traversal", C::Gzip, |b| {
        b.with_file_contents("x", FileOptions::new(k("include/../../../../../../evil")))?;
        Ok(())
    });
    refused(d, &rpm, &[], &["path contains '..'"]);

    let rpm = crafted(d, "symlink-escape", C::Xz, |b| {
        b.with_symlink(FileOptions::symlink(k("include/linux/passwd.h"), "../../../../../../../etc/passwd"))?;
        Ok(())
    });
    refused(d, &rpm, &[], &["escapes the target"]);

    let rpm = crafted(d, "symlink-absolute", C::Zstd, |b| {
        b.with_symlink(FileOptions::symlink(k("include/linux/passwd.h"), "/etc/passwd"))?;
        Ok(())
    });
    refused(d, &rpm, &[], &["symlink to absolute path /etc/passwd"]);

    // A link to a folder, then a file written "through" it.
    let rpm = crafted(d, "through-a-link", C::Gzip, |b| {
        b.with_symlink(FileOptions::symlink(k("include/up"), ".."))?;
        b.with_file_contents("x", FileOptions::new(k("include/up/evil.h")))?;
        Ok(())
    });
    refused(d, &rpm, &[], &["through the symlink"]);

    let rpm = crafted(d, "hard-link", C::Gzip, |b| {
        b.with_file_contents("same", FileOptions::new(k("include/linux/a.h")).hardlink("h"))?;
        b.with_file_contents("same", FileOptions::new(k("include/linux/b.h")).hardlink("h"))?;
        Ok(())
    });
    refused(d, &rpm, &[], &["hard links are never unpacked"]);

    let rpm = crafted(d, "device", C::Gzip, |b| {
        b.with_special_file(FileOptions::character_device(k("include/linux/mem"), 1, 1))?;
        Ok(())
    });
    refused(d, &rpm, &[], &["devices, fifos and sockets are never unpacked"]);

    let rpm = crafted(d, "fifo", C::Gzip, |b| {
        b.with_special_file(FileOptions::fifo(k("include/linux/pipe")))?;
        Ok(())
    });
    refused(d, &rpm, &[], &["never unpacked"]);

    // 64 MiB of zeros in a folder the filter skips: the ratio trips.
    let rpm = crafted(d, "bomb", C::Xz, |b| {
        b.with_file_contents(vec![0u8; 64 << 20], FileOptions::new("/usr/share/doc/bomb"))?;
        Ok(())
    });
    println!("bomb rpm: {} KiB", std::fs::metadata(&rpm).unwrap().len() >> 10);
    refused(d, &rpm, &[], &["--max-ratio (100:1"]);

    let rpm = crafted(d, "oversize", C::Gzip, |b| {
        b.with_file_contents(vec![b'x'; 2 << 20], FileOptions::new(k("include/linux/big.h")))?;
        Ok(())
    });
    refused(d, &rpm, &["--max-member-bytes", "1M"], &["--max-member-bytes (1 MiB)", "big.h"]);

    let rpm = crafted(d, "many", C::Gzip, |b| {
        for i in 0..50 {
            b.with_file_contents("", FileOptions::new(k(&format!("include/linux/n{i}.h"))))?;
        }
        Ok(())
    });
    refused(d, &rpm, &["--max-entries", "20"], &["--max-entries (20)"]);

    // Not an RPM at all, and a header that claims 4 GiB.
    let rpm = d.join("garbage.rpm");
    std::fs::write(&rpm, b"hello, not a package").unwrap();
    refused(d, &rpm, &[], &["not an RPM package"]);
    let mut lying = vec![0xed, 0xab, 0xee, 0xdb];
    lying.resize(96, 0);
    lying.extend([0x8e, 0xad, 0xe8, 0x01, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xf0]);
    let rpm = d.join("lying-header.rpm");
    std::fs::write(&rpm, &lying).unwrap();
    refused(d, &rpm, &[], &["cap on an RPM header"]);
}

/// Unpack time of the same kernel as an RPM (zstd and xz payloads) and as
/// its two `.deb`s (flavour + `-common`, xz), in process, with the tree
/// cache's filters; median of three, ratio printed. A benchmark, not a
/// test: `cargo test -p bpfarm-builder --test rpm -- --ignored --nocapture`.
#[test]
#[ignore = "a benchmark: run with --ignored --nocapture"]
fn bench_rpm_unpack_against_the_debs() {
    assert!(have_rpmbuild());
    let dir = tempfile::tempdir().unwrap();
    let tree = merged_tree(dir.path());
    let zstd = rpmbuild(dir.path(), &tree, RELEASE, "kernel-devel", "w19.zstdio");
    let xz = rpmbuild(dir.path(), &tree, RELEASE, "kernel-devel", "w6.xzdio");
    let debs: Vec<PathBuf> = [FLAVOUR, COMMON].iter().map(|p| deb(&fixture_debs(), p)).collect();
    let limits = Limits::default();
    let median = |f: &dyn Fn(&Path)| {
        let mut t: Vec<f64> = (0..3)
            .map(|i| {
                let out = dir.path().join(format!("t{i}"));
                let _ = std::fs::remove_dir_all(&out);
                std::fs::create_dir(&out).unwrap();
                let start = std::time::Instant::now();
                f(&out);
                let s = start.elapsed().as_secs_f64();
                std::fs::remove_dir_all(&out).unwrap();
                s
            })
            .collect();
        t.sort_by(f64::total_cmp);
        t[1]
    };
    let deb_s = median(&|out| {
        for d in &debs {
            bpfarm_builder::unpack::unpack_deb(d, None, out, &bpfarm_builder::trees::keep, &limits).unwrap();
        }
    });
    let deb_bytes: u64 = debs.iter().map(|d| std::fs::metadata(d).unwrap().len()).sum();
    println!("debs (xz):  {:>6} KiB  {deb_s:.2}s", deb_bytes >> 10);
    for (what, rpm) in [("rpm (zstd)", &zstd), ("rpm (xz)", &xz)] {
        let s = median(&|out| {
            rpms::unpack_rpm(rpm, None, out, &bpfarm_builder::trees::keep_rpm, &limits).unwrap();
        });
        println!(
            "{what}: {:>6} KiB  {s:.2}s  ({:.2}x the debs' time)",
            std::fs::metadata(rpm).unwrap().len() >> 10,
            s / deb_s
        );
    }
}
