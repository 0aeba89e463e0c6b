//! Hostile and broken inputs, crafted here in Rust (no binary fixtures):
//! decompression bombs in data and control, files that are not packages,
//! header trees whose links lead to devices and FIFOs, a refused archive as
//! a user who is not root, missing partners and empty folders, a corrupted
//! cache entry. Each asserts the refusal, its message, the exit code, that
//! nothing was left behind, and that memory and time stayed bounded (the
//! builder's peak RSS is printed: `cargo test -- --nocapture`).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bpfarm_tests::{
    Compression, DebSpec, Entry, FakeKernel, Measured, ToolShim, deb, fixture_debs, in_ci, leftovers, measured,
    write_deb_spec,
};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bpfarm-builder");
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// What a refused input may cost the builder at most.
const RSS_BOUND: u64 = 256 * MIB;

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// `bpfarm-builder build <args> --cache-dir <dir>/cache --out <dir>/out
/// --report <dir>/report.json`, measured, with a deadline.
fn build(dir: &Path, args: &[&str], timeout: Duration) -> (Measured, Option<Value>) {
    let report = dir.join("report.json");
    let _ = std::fs::remove_file(&report);
    let mut m = measured(BIN);
    m.cmd
        .arg("build")
        .args(args)
        .args(["--no-progress", "--cache-dir", p(&dir.join("cache")), "--out", p(&dir.join("out")), "--report"])
        .arg(&report)
        .env_remove("BPFARM_CACHE");
    let m = m.run(timeout);
    eprintln!(
        "--- exit {:?}, peak RSS {} MiB, {:.2}s\n--- stdout\n{}--- stderr\n{}",
        m.output.status.code(),
        m.max_rss / MIB,
        m.elapsed.as_secs_f64(),
        String::from_utf8_lossy(&m.output.stdout),
        String::from_utf8_lossy(&m.output.stderr)
    );
    let r = std::fs::read(&report).ok().map(|b| serde_json::from_slice(&b).expect("report is JSON"));
    (m, r)
}

fn row<'a>(report: &'a Value, kernel: &str) -> &'a Value {
    report["kernels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kernel"] == kernel)
        .unwrap_or_else(|| panic!("no row for {kernel}: {report:#}"))
}

fn stderr(m: &Measured) -> String {
    String::from_utf8_lossy(&m.output.stderr).into_owned()
}

/// The trees in the cache: complete ones (no temp folder), by name.
fn trees(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("cache/trees"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

fn assert_bounded(what: &str, m: &Measured, seconds: u64) {
    println!("{what}: peak RSS {} MiB, {:.2}s", m.max_rss / MIB, m.elapsed.as_secs_f64());
    assert!(m.max_rss < RSS_BOUND, "{what}: peak RSS {} MiB", m.max_rss / MIB);
    assert!(m.elapsed < Duration::from_secs(seconds), "{what}: took {:?}", m.elapsed);
}

#[test]
fn a_2_gib_file_in_the_common_package_fails_that_kernel_only() {
    // The bomb: a few hundred KB that expand to 2 GiB of header.
    let dir = tempfile::tempdir().unwrap();
    let debs = dir.path().join("debs");
    std::fs::create_dir(&debs).unwrap();
    let bomb = "./usr/src/linux-headers-6.1.0-91-common/include/linux/bomb.h";
    let k = FakeKernel {
        common_extra: vec![Entry::Zeros(bomb, 2 * GIB)],
        compression: Compression::Zstd,
        ..FakeKernel::new("6.1.0-91")
    };
    let (_, common, _) = k.write(&debs);
    println!("bomb package: {} KiB", std::fs::metadata(&common).unwrap().len() >> 10);
    let (m, r) = build(dir.path(), &["--headers", p(&debs)], Duration::from_secs(120));
    assert_eq!(m.output.status.code(), Some(1), "a failed kernel exits 1");
    let err = row(r.as_ref().unwrap(), &k.release())["error"].as_str().unwrap().to_owned();
    assert!(err.contains("linux-headers-6.1.0-91-common_1_all.deb") && err.contains("--max-member-bytes"), "{err}");
    assert!(err.contains("bomb.h"), "{err}");
    assert_bounded("2 GiB member bomb", &m, 60);
    assert_eq!(leftovers(&dir.path().join("cache")), Vec::<PathBuf>::new());
    // Only the (good) flavour tree stays: nothing of the refused package.
    assert_eq!(trees(dir.path()).len(), 1, "{:?}", trees(dir.path()));
}

#[test]
fn many_files_stop_at_the_tree_limit_and_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let debs = dir.path().join("debs");
    std::fs::create_dir(&debs).unwrap();
    let names: Vec<String> =
        (0..32).map(|i| format!("./usr/src/linux-headers-6.1.0-92-common/include/linux/part{i}.h")).collect();
    let k = FakeKernel {
        common_extra: names.iter().map(|n| Entry::Zeros(n, 32 * MIB)).collect(),
        compression: Compression::Zstd,
        ..FakeKernel::new("6.1.0-92")
    };
    k.write(&debs);
    // Zeros trip the ratio first (see below); with the ratio out of the way
    // the tree limit is what stops them.
    let (m, r) = build(
        dir.path(),
        &["--headers", p(&debs), "--max-tree-bytes", "256M", "--max-ratio", "1000000000"],
        Duration::from_secs(120),
    );
    assert_eq!(m.output.status.code(), Some(1));
    let err = row(r.as_ref().unwrap(), &k.release())["error"].as_str().unwrap().to_owned();
    assert!(err.contains("--max-tree-bytes (256 MiB)"), "{err}");
    assert_bounded("1 GiB in 32 files, tree limit 256 MiB", &m, 60);
    assert_eq!(leftovers(&dir.path().join("cache")), Vec::<PathBuf>::new());
    assert_eq!(trees(dir.path()).len(), 1);
}

#[test]
fn a_bomb_the_filter_skips_still_trips_the_ratio() {
    // Nothing of it would be written (usr/share is filtered out), but
    // decompressing 4 GiB costs time: the ratio stops it at once, and with
    // the ratio out of the way the package's decompressed total does. In
    // the flavour package, so it fails while planning.
    let dir = tempfile::tempdir().unwrap();
    let debs = dir.path().join("debs");
    std::fs::create_dir(&debs).unwrap();
    let k = FakeKernel {
        flavour_extra: vec![Entry::Zeros("./usr/share/doc/bomb", 4 * GIB)],
        compression: Compression::Zstd,
        ..FakeKernel::new("6.1.0-93")
    };
    k.write(&debs);
    let (m, r) = build(dir.path(), &["--headers", p(&debs)], Duration::from_secs(300));
    assert_eq!(m.output.status.code(), Some(1));
    let err = row(r.as_ref().unwrap(), "linux-headers-6.1.0-93-amd64")["error"].as_str().unwrap().to_owned();
    assert!(err.contains("--max-ratio (100:1"), "{err}");
    assert_bounded("4 GiB skipped-member bomb, ratio", &m, 60);
    assert_eq!(leftovers(&dir.path().join("cache")), Vec::<PathBuf>::new());
    assert_eq!(trees(dir.path()), Vec::<String>::new());

    let (m, r) = build(
        dir.path(),
        &["--headers", p(&debs), "--max-ratio", "1000000000", "--max-package-bytes", "512M"],
        Duration::from_secs(300),
    );
    assert_eq!(m.output.status.code(), Some(1));
    let err = row(r.as_ref().unwrap(), "linux-headers-6.1.0-93-amd64")["error"].as_str().unwrap().to_owned();
    assert!(err.contains("--max-package-bytes (512 MiB) decompressed from one package"), "{err}");
    assert_bounded("4 GiB skipped-member bomb, package total", &m, 60);
    assert_eq!(leftovers(&dir.path().join("cache")), Vec::<PathBuf>::new());
}

#[test]
fn too_many_entries_and_device_entries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let debs = dir.path().join("debs");
    std::fs::create_dir(&debs).unwrap();
    let names: Vec<String> =
        (0..2000).map(|i| format!("./usr/src/linux-headers-6.1.0-94-common/include/linux/n{i}.h")).collect();
    let k =
        FakeKernel { common_extra: names.iter().map(|n| Entry::File(n, b"")).collect(), ..FakeKernel::new("6.1.0-94") };
    k.write(&debs);
    let (m, r) = build(dir.path(), &["--headers", p(&debs), "--max-entries", "1000"], Duration::from_secs(60));
    assert_eq!(m.output.status.code(), Some(1));
    let err = row(r.as_ref().unwrap(), &k.release())["error"].as_str().unwrap().to_owned();
    assert!(err.contains("--max-entries (1000)"), "{err}");
    assert_eq!(leftovers(&dir.path().join("cache")), Vec::<PathBuf>::new());
}

#[test]
fn control_bombs_fifos_and_devices_beside_real_packages() {
    let dir = tempfile::tempdir().unwrap();
    let debs = dir.path().join("debs");
    std::fs::create_dir(&debs).unwrap();
    // The real 6.1 kernel, as links into the fixture cache.
    let fixture = fixture_debs();
    for pkg in ["linux-headers-6.1.0-56-amd64", "linux-headers-6.1.0-56-common", "linux-kbuild-6.1"] {
        let real = deb(&fixture, pkg);
        std::os::unix::fs::symlink(&real, debs.join(real.file_name().unwrap())).unwrap();
    }
    // A FIFO named .deb: opening it for reading would block forever.
    let fifo = debs.join("linux-headers-fifo_1_amd64.deb");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    // A device named .deb: /dev/zero, as a node where we may make one,
    // else as a link to it.
    let zero = debs.join("linux-headers-zero_1_amd64.deb");
    let made = Command::new("mknod").arg(&zero).args(["c", "1", "5"]).status().is_ok_and(|s| s.success());
    if !made {
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    }
    // Control bombs (the issue's: 157 KB that took the builder to 1.1 GiB):
    // a 1 GiB control file, and 1 GiB of md5sums before the control file.
    let control = b"Package: linux-headers-9.9.9-amd64\nVersion: 1\nArchitecture: amd64\n";
    write_deb_spec(
        &debs.join("linux-headers-cbomb_1_amd64.deb"),
        &DebSpec { control: vec![Entry::Zeros("./control", 2 * GIB)], data: vec![], compression: Compression::Zstd },
    );
    write_deb_spec(
        &debs.join("linux-headers-mbomb_1_amd64.deb"),
        &DebSpec {
            control: vec![Entry::Zeros("./md5sums", GIB), Entry::File("./control", control)],
            data: vec![],
            compression: Compression::Zstd,
        },
    );
    let (m, r) = build(dir.path(), &["--headers", p(&debs)], Duration::from_secs(300));
    assert_eq!(m.output.status.code(), Some(1), "some inputs failed");
    let r = r.unwrap();
    assert_eq!(row(&r, "6.1.0-56-amd64")["status"], "built", "the real kernel still builds");
    let err = |name: &str| row(&r, name)["error"].as_str().unwrap().to_owned();
    let e = err("linux-headers-fifo_1_amd64.deb");
    assert!(e.contains("not a regular file (a FIFO)"), "{e}");
    let e = err("linux-headers-zero_1_amd64.deb");
    assert!(e.contains("not a regular file (a character device)"), "{e}");
    let e = err("linux-headers-cbomb_1_amd64.deb");
    assert!(e.contains("control") && e.contains("1 MiB cap on control data"), "{e}");
    let e = err("linux-headers-mbomb_1_amd64.deb");
    assert!(e.contains("16 MiB cap on control data"), "{e}");
    assert_bounded("control bombs, FIFO, device beside a real kernel", &m, 240);
    assert_eq!(leftovers(&dir.path().join("cache")), Vec::<PathBuf>::new());
}

/// A --headers tree that plans (release, arch) and is self-contained, with
/// `link` → `target` added under include/.
fn hostile_tree(root: &Path, release: &str) -> PathBuf {
    let t = root.join("tree");
    std::fs::create_dir_all(t.join("include/generated")).unwrap();
    std::fs::create_dir_all(t.join("include/linux")).unwrap();
    std::fs::write(t.join("include/generated/utsrelease.h"), format!("#define UTS_RELEASE \"{release}\"\n")).unwrap();
    std::fs::write(t.join("include/generated/autoconf.h"), "#define CONFIG_X86_64 1\n").unwrap();
    std::fs::write(t.join("include/linux/kconfig.h"), "").unwrap();
    t
}

#[test]
fn header_tree_links_to_devices_and_fifos_are_errors_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    // include/zero.h -> /dev/zero: once 23 GiB of RSS.
    let t = hostile_tree(&dir.path().join("a"), "6.1.0-95-amd64");
    std::os::unix::fs::symlink("/dev/zero", t.join("include/zero.h")).unwrap();
    let (m, r) = build(&dir.path().join("a"), &["--headers", p(&t)], Duration::from_secs(60));
    assert_eq!(m.output.status.code(), Some(1));
    let e = row(r.as_ref().unwrap(), "6.1.0-95-amd64")["error"].as_str().unwrap().to_owned();
    assert!(e.contains("include/zero.h") && e.contains("/dev/zero") && e.contains("outside the header tree"), "{e}");
    assert_bounded("include/zero.h -> /dev/zero", &m, 30);

    // include/fifo.h -> a FIFO inside the tree: once a hang.
    let t = hostile_tree(&dir.path().join("b"), "6.1.0-96-amd64");
    assert!(Command::new("mkfifo").arg(t.join("fifo")).status().unwrap().success());
    std::os::unix::fs::symlink("../fifo", t.join("include/fifo.h")).unwrap();
    let (m, r) = build(&dir.path().join("b"), &["--headers", p(&t)], Duration::from_secs(60));
    assert_eq!(m.output.status.code(), Some(1));
    let e = row(r.as_ref().unwrap(), "6.1.0-96-amd64")["error"].as_str().unwrap().to_owned();
    assert!(e.contains("include/fifo.h") && e.contains("a FIFO"), "{e}");
    assert_bounded("include/fifo.h -> FIFO", &m, 30);

    // A .config that is a FIFO: read while planning, so it fails the tree
    // there (and, being the only input, leaves nothing to build).
    let t = hostile_tree(&dir.path().join("c"), "6.1.0-97-amd64");
    assert!(Command::new("mkfifo").arg(t.join(".config")).status().unwrap().success());
    let (m, _) = build(&dir.path().join("c"), &["--headers", p(&t)], Duration::from_secs(60));
    assert_eq!(m.output.status.code(), Some(2));
    assert!(stderr(&m).contains(".config") && stderr(&m).contains("a FIFO"), "{}", stderr(&m));
}

#[test]
fn nothing_to_build_exits_2_before_any_work_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let shim = ToolShim::new(&["clang", "llc"]);
    let run = |args: &[&str]| {
        let mut c = measured(BIN);
        c.cmd.arg("build").args(args).arg("--no-progress").env("PATH", shim.path_env()).env_remove("BPFARM_CACHE");
        let m = c.run(Duration::from_secs(60));
        eprintln!("{}", stderr(&m));
        m
    };
    let cache = dir.path().join("cache");
    let out = dir.path().join("out");
    let common = ["--cache-dir", p(&cache), "--out", p(&out)];

    // An empty folder.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let m = run(&[&["--headers", p(&empty)], &common[..]].concat());
    assert_eq!(m.output.status.code(), Some(2));
    let e = stderr(&m);
    assert!(
        e.contains("nothing to build") && e.contains(p(&empty)) && e.contains("not a configured kernel build tree"),
        "{e}"
    );

    // A flavour whose -common partner is not among the inputs.
    let flavour = deb(&fixture_debs(), "linux-headers-6.1.0-56-amd64");
    let m = run(&[&["--headers", p(&flavour)], &common[..]].concat());
    assert_eq!(m.output.status.code(), Some(2));
    let e = stderr(&m);
    assert!(
        e.contains(
            "linux-headers-6.1.0-56-amd64: its -common package linux-headers-6.1.0-56-common (= 6.1.192-2) is not among the inputs"
        ),
        "{e}"
    );
    assert!(!cache.join("trees").read_dir().is_ok_and(|mut d| d.next().is_some()), "something was unpacked");

    // Only a -common package.
    let c = deb(&fixture_debs(), "linux-headers-6.1.0-56-common");
    let m = run(&[&["--headers", p(&c)], &common[..]].concat());
    assert_eq!(m.output.status.code(), Some(2));
    assert!(stderr(&m).contains("linux-headers-6.1.0-56-common 6.1.192-2 (all): not a flavour"), "{}", stderr(&m));

    // A missing path, and an invalid --version: before anything is created.
    let fresh = dir.path().join("fresh-cache");
    let m = run(&["--headers", "/nonexistent/headers", "--cache-dir", p(&fresh), "--out", p(&dir.path().join("o2"))]);
    assert_eq!(m.output.status.code(), Some(2));
    assert!(stderr(&m).contains("/nonexistent/headers") && stderr(&m).contains("No such file"), "{}", stderr(&m));
    let m = run(&[
        "--running-kernel",
        "--version",
        "v1/../x",
        "--cache-dir",
        p(&fresh),
        "--out",
        p(&dir.path().join("o2")),
    ]);
    assert_eq!(m.output.status.code(), Some(2));
    assert!(stderr(&m).contains("invalid program version \"v1/../x\""), "{}", stderr(&m));
    assert!(!fresh.exists() && !dir.path().join("o2").exists(), "work started before the checks");
    assert_eq!(shim.compiles(), Vec::<String>::new(), "a compiler ran");
}

#[test]
fn a_refused_archive_leaves_nothing_as_a_user_who_is_not_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        assert!(!in_ci(), "needs root to switch to an unprivileged user (CI=true: failing instead of skipping)");
        eprintln!("SKIPPED: needs root to run the builder as nobody");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let debs = dir.path().join("debs");
    std::fs::create_dir(&debs).unwrap();
    // A read-only folder with a file in it, then a member over the limit.
    let ro = "./usr/src/linux-headers-6.1.0-98-common/include/ro";
    let k = FakeKernel {
        common_extra: vec![
            Entry::Dir(ro, 0o555),
            Entry::File("./usr/src/linux-headers-6.1.0-98-common/include/ro/a.h", b"int a;"),
            Entry::Dir("./usr/src/linux-headers-6.1.0-98-common/include/ro/sub", 0o500),
            Entry::Zeros("./usr/src/linux-headers-6.1.0-98-common/include/big.h", 8 * MIB),
        ],
        ..FakeKernel::new("6.1.0-98")
    };
    k.write(&debs);
    let work = dir.path().join("nobody");
    std::fs::create_dir(&work).unwrap();
    for d in [dir.path(), &debs] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    assert!(Command::new("chown").args(["-R", "65534:65534"]).arg(&work).status().unwrap().success());
    let mut m = measured(BIN);
    m.cmd
        // The namespace sandbox, which for a user who is not root means a user
        // namespace: its probe runs before any work.
        .args(["build", "--no-progress", "--headers", p(&debs), "--max-member-bytes", "1M", "-v"])
        .args(["--sandbox", "mount-namespace", "--cache-dir"])
        .arg(work.join("cache"))
        .arg("--out")
        .arg(work.join("out"))
        .env_remove("BPFARM_CACHE")
        .env("HOME", &work)
        .uid(65534)
        .gid(65534);
    let m = m.run(Duration::from_secs(60));
    eprintln!("{}{}", String::from_utf8_lossy(&m.output.stdout), stderr(&m));
    assert_eq!(m.output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&m.output.stdout).contains("--max-member-bytes"));
    assert!(stderr(&m).contains("mount namespace in a user namespace"), "{}", stderr(&m));
    assert_eq!(leftovers(&work.join("cache")), Vec::<PathBuf>::new());
    assert_eq!(trees(&work).len(), 1, "{:?}", trees(&work));
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

#[test]
fn a_corrupted_cache_entry_is_rebuilt_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let (first, r1) = build(dir.path(), &["--running-kernel"], Duration::from_secs(120));
    assert!(first.output.status.success());
    let obj = PathBuf::from(r1.unwrap()["kernels"][0]["object"].as_str().unwrap());
    let good = std::fs::read(&obj).unwrap();
    // Flip one byte of the cached object.
    let cached: Vec<PathBuf> = std::fs::read_dir(dir.path().join("cache/objects"))
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "o"))
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    // The cache holds the compiled object; the output adds the embedded
    // identity section, so the two are compared each with its own original.
    let cached_good = std::fs::read(&cached[0]).unwrap();
    let mut bytes = cached_good.clone();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&cached[0], &bytes).unwrap();

    let (second, r2) = build(dir.path(), &["--running-kernel"], Duration::from_secs(120));
    assert!(second.output.status.success());
    assert_eq!(r2.unwrap()["kernels"][0]["status"], "built", "the corrupt entry was served");
    assert!(stderr(&second).contains("corrupt"), "{}", stderr(&second));
    assert!(std::fs::read(&obj).unwrap() == good, "the rebuilt object differs");
    assert!(std::fs::read(&cached[0]).unwrap() == cached_good, "the cache was not repaired");
}
