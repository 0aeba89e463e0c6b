//! The builder against real inputs: Debian's header packages from the
//! default matrix (a 6.1, two 6.12 flavours sharing a -common, an arm64),
//! the running kernel's BTF, real clang, and libbpf.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use bpfarm_builder::matrix::Matrix;
use bpfarm_builder::validate::validate;
use bpfarm_object::{Arch, BuildMode, Digest, ObjectMetadata, object_file_name};
use bpfarm_tests::{Entry, ToolShim, deb, echoed, fixture_debs, privileged, repo_root, running_release, write_deb};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bpfarm-builder");
const VERSION: &str = "v0.1.0";

fn builder(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).arg("--no-progress").env_remove("BPFARM_CACHE");
    c
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// One cold build of the default matrix plus the running kernel, shared by
/// the tests that only read it.
struct Built {
    dir: tempfile::TempDir,
    report: Value,
}

impl Built {
    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }
    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }
}

fn build_default(dir: &Path, extra: &[&str]) -> (Output, Value) {
    let debs = fixture_debs();
    let matrix = repo_root().join("kernels/default.toml");
    let report = dir.join("report.json");
    let out = echoed(
        builder(&[
            "build",
            "--matrix",
            p(&matrix),
            "--package-cache",
            p(&debs),
            "--running-kernel",
            "--cache-dir",
            p(&dir.join("cache")),
            "--out",
            p(&dir.join("out")),
            "--report",
            p(&report),
        ])
        .args(extra),
    );
    let report = serde_json::from_slice(&std::fs::read(&report).expect("report written")).expect("report is JSON");
    (out, report)
}

fn shared() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let timings = dir.path().join("timings.jsonl");
        let (out, report) = build_default(dir.path(), &["--timings", p(&timings)]);
        assert!(out.status.success(), "cold build failed");
        Built { dir, report }
    })
}

#[test]
fn default_matrix_and_running_kernel_build_and_validate() {
    let b = shared();
    let kernels = b.report["kernels"].as_array().unwrap();
    let expected = [
        ("6.1.0-56-amd64", Arch::X86_64),
        ("6.12.117+deb12-amd64", Arch::X86_64),
        ("6.12.117+deb12-cloud-amd64", Arch::X86_64),
        ("6.12.117+deb12-arm64", Arch::Aarch64),
        (running_release().leak() as &str, Arch::X86_64),
    ];
    assert_eq!(kernels.len(), expected.len(), "{kernels:#?}");
    assert_eq!(b.report["summary"]["built"], expected.len());
    for (release, arch) in expected {
        let name = object_file_name(release, VERSION);
        let obj = b.out().join(arch.uname()).join(&name);
        let bytes = std::fs::read(&obj).unwrap_or_else(|e| panic!("{}: {e}", obj.display()));
        // ELF, 64-bit, little-endian, e_machine = EM_BPF (247).
        assert_eq!(&bytes[..4], b"\x7fELF");
        assert_eq!(u16::from_le_bytes([bytes[18], bytes[19]]), 247, "{name} is not a BPF object");
        let meta: ObjectMetadata =
            serde_json::from_slice(&std::fs::read(obj.with_file_name(format!("{name}.json"))).unwrap()).unwrap();
        assert_eq!(meta.identity.kernel_release, release);
        assert_eq!(meta.identity.arch, arch);
        assert_eq!(meta.identity.version, VERSION);
        assert_eq!(meta.file_name, name);
        assert_eq!(meta.digest, Digest::of_bytes(&bytes));
        assert_eq!(meta.size, bytes.len() as u64);
        assert!(meta.compiler.clang.contains("clang"));
        if release == running_release() {
            assert_eq!(meta.build_mode, BuildMode::Btf);
            assert_eq!(meta.sources[0].name, "/sys/kernel/btf/vmlinux");
        } else {
            assert_eq!(meta.build_mode, BuildMode::Headers);
            let names: Vec<&str> = meta.sources.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names.len(), 3, "{names:?}");
            assert!(names[1].ends_with("-common"), "{names:?}");
            assert!(names[2].starts_with("linux-kbuild-"), "{names:?}");
            assert!(meta.kernel.uname_version.as_deref().unwrap().contains("Debian"), "{:?}", meta.kernel);
            assert!(meta.kernel.config_digest.is_some());
        }
        // libbpf opens it on its own and finds every program and map.
        let contents = validate(&obj).unwrap();
        assert!(contents.programs.iter().any(|p| p == "bpfarm_exec"));
    }
    // Objects are really per kernel: different ABIs, arches and modes give
    // different bytes. (Two flavours of one ABI may agree: 6.12.117's amd64
    // and cloud-amd64 lay out every field the tracer reads alike.)
    let digest =
        |release: &str| kernels.iter().find(|k| k["kernel"] == release).unwrap()["digest"].as_str().unwrap().to_owned();
    let mut distinct = vec![
        digest("6.1.0-56-amd64"),
        digest("6.12.117+deb12-amd64"),
        digest("6.12.117+deb12-arm64"),
        digest(&running_release()),
    ];
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "objects for different kernels are identical");
}

#[test]
fn flavours_share_one_unpacked_common_tree() {
    let b = shared();
    // 6.12 amd64, cloud-amd64 and arm64 share linux-headers-6.12.117+deb12-common:
    // 4 flavour trees + 2 common trees, not 4 + 4.
    let trees = std::fs::read_dir(b.cache().join("trees"))
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count();
    assert_eq!(trees, 6);
    // Only what compiling needs: no other arch, no kbuild scripts.
    let common =
        std::fs::read_dir(b.cache().join("trees")).unwrap().flatten().map(|e| e.path().join("usr/src")).find_map(
            |src| {
                std::fs::read_dir(&src)
                    .ok()?
                    .flatten()
                    .map(|e| e.path())
                    .find(|p| p.to_string_lossy().ends_with("6.12.117+deb12-common"))
            },
        );
    let common = common.expect("6.12 common tree");
    assert!(common.join("include/linux/sched.h").is_file());
    assert!(common.join("arch/arm64/include/asm/ptrace.h").is_file());
    assert!(!common.join("arch/mips").exists());
    assert!(!common.join("scripts").exists());
}

#[test]
fn timings_name_every_stage_of_the_cold_build_once() {
    let b = shared();
    let text = std::fs::read_to_string(b.dir.path().join("timings.jsonl")).expect("--timings wrote its file");
    let mut lines = text.lines().map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"));
    let head = lines.next().expect("the totals line");
    let wall = head["wall"].as_f64().unwrap();
    assert!(wall > 0.0 && head["cpu_self"].as_f64().unwrap() > 0.0, "{head}");
    // clang and llc are children the builder waited for.
    assert!(head["cpu_children"].as_f64().unwrap() > 0.0, "{head}");
    let spans: Vec<Value> = lines.collect();
    let of = |stage: &str| spans.iter().filter(|s| s["stage"] == stage).collect::<Vec<_>>();
    for s in &spans {
        let (start, end) = (s["start"].as_f64().unwrap(), s["end"].as_f64().unwrap());
        assert!(0.0 <= start && start <= end && end <= wall + 0.01, "{s}");
        assert!(s["cpu"].as_f64().unwrap() >= 0.0, "{s}");
    }
    // Each of the six packages unpacked exactly once (4 flavours, 2 -common),
    // whichever worker got to it first.
    let mut unpacked: Vec<&str> = of("unpack").iter().map(|s| s["subject"].as_str().unwrap()).collect();
    unpacked.sort();
    assert_eq!(
        unpacked,
        [
            "linux-headers-6.1.0-56-amd64",
            "linux-headers-6.1.0-56-common",
            "linux-headers-6.12.117+deb12-amd64",
            "linux-headers-6.12.117+deb12-arm64",
            "linux-headers-6.12.117+deb12-cloud-amd64",
            "linux-headers-6.12.117+deb12-common",
        ]
    );
    // One clang per kernel (the running kernel's BTF build too), one llc per
    // headers build, each with the CPU its process used.
    assert_eq!(of("clang").len(), 5);
    assert_eq!(of("llc").len(), 4);
    assert!(of("clang").iter().all(|s| s["cpu"].as_f64().unwrap() > 0.0));
    assert_eq!(of("job").len(), 5);
    assert_eq!(of("validate").len(), 5);
    assert_eq!(of("plan").len(), 1);
    // Subjects are package file names or releases, never a host path.
    assert!(spans.iter().all(|s| !s["subject"].as_str().unwrap().contains('/')), "a subject names a host path");
}

#[test]
fn builds_are_reproducible_across_folders_and_job_counts() {
    let b = shared();
    let other = tempfile::tempdir().unwrap();
    let (out, _) = build_default(other.path(), &["--jobs", "1"]);
    assert!(out.status.success());
    let mut compared = 0;
    for arch in ["x86_64", "aarch64"] {
        for e in std::fs::read_dir(b.out().join(arch)).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "o") {
                let mine = std::fs::read(e.path()).unwrap();
                let theirs = std::fs::read(other.path().join("out").join(arch).join(e.file_name())).unwrap();
                assert!(mine == theirs, "{} differs between two builds", e.file_name().to_string_lossy());
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 5);
}

#[test]
fn unchanged_rebuild_unpacks_and_compiles_nothing() {
    let b = shared();
    let shim = ToolShim::new(&["clang", "llc", "bpftool"]);
    let trees_before = std::fs::read_dir(b.cache().join("trees")).unwrap().count();
    let (out, report) = {
        let debs = fixture_debs();
        let report = b.dir.path().join("warm.json");
        let o = echoed(
            builder(&[
                "build",
                "--matrix",
                p(&repo_root().join("kernels/default.toml")),
                "--package-cache",
                p(&debs),
                "--running-kernel",
                "--cache-dir",
                p(&b.cache()),
                "--out",
                p(&b.out()),
                "--report",
                p(&report),
            ])
            .env("PATH", shim.path_env()),
        );
        (o, serde_json::from_slice::<Value>(&std::fs::read(report).unwrap()).unwrap())
    };
    assert!(out.status.success());
    assert_eq!(report["summary"]["cached"], 5, "{report:#}");
    assert_eq!(shim.compiles(), Vec::<String>::new(), "a warm rebuild ran a compiler");
    assert!(!shim.calls().iter().any(|c| c.starts_with("bpftool btf")), "a warm rebuild dumped BTF again");
    assert_eq!(std::fs::read_dir(b.cache().join("trees")).unwrap().count(), trees_before);
}

#[test]
fn shards_partition_the_matrix_by_release() {
    let b = shared();
    let mut seen = Vec::new();
    for k in 1..=3 {
        let report = b.dir.path().join(format!("shard{k}.json"));
        let out = echoed(builder(&[
            "build",
            "--matrix",
            p(&repo_root().join("kernels/default.toml")),
            "--package-cache",
            p(&fixture_debs()),
            "--cache-dir",
            p(&b.cache()),
            "--out",
            p(&b.dir.path().join(format!("shard{k}"))),
            "--shard",
            &format!("{k}/3"),
            "--report",
            p(&report),
        ]));
        assert!(out.status.success());
        let r: Value = serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
        assert_eq!(r["shard"], format!("{k}/3"));
        seen.extend(r["kernels"].as_array().unwrap().iter().map(|k| k["kernel"].as_str().unwrap().to_owned()));
    }
    seen.sort();
    assert_eq!(seen, ["6.1.0-56-amd64", "6.12.117+deb12-amd64", "6.12.117+deb12-arm64", "6.12.117+deb12-cloud-amd64"]);
}

/// The default matrix with its kernels by name only (`package`, `arch`,
/// `release`: what bench/builder.py writes), so a build searches the
/// package cache instead of the pinned store.
fn by_name_matrix(dir: &Path) -> PathBuf {
    let mut m = Matrix::load(&repo_root().join("kernels/default.toml")).unwrap();
    m.suites.clear();
    for k in &mut m.kernels {
        k.debs.clear();
    }
    let path = dir.join("by-name.toml");
    std::fs::write(&path, m.to_toml("the default matrix, by name").unwrap()).unwrap();
    path
}

/// A package cache holding every package of `from` under its apt name
/// (hard links where the file system allows), with nothing under sha256/.
fn package_cache_like(from: &Path, to: &Path) -> usize {
    std::fs::create_dir_all(to).unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.file_type().unwrap().is_file() && e.path().extension().is_some_and(|x| x == "deb") {
            let dest = to.join(e.file_name());
            std::fs::hard_link(e.path(), &dest).or_else(|_| std::fs::copy(e.path(), &dest).map(drop)).unwrap();
            n += 1;
        }
    }
    n
}

/// The package subjects of a run's `inspect` spans, sorted.
fn inspected(timings: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(timings).unwrap();
    let mut v: Vec<String> = text
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|s| s["stage"] == "inspect")
        .map(|s| s["subject"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_build_by_name_opens_only_the_packages_its_kernels_use() {
    let b = shared();
    let dir = tempfile::tempdir().unwrap();
    // Every real package this cache holds (the default matrix's, and any
    // other kernel's fetched into it), plus one that is no package at all
    // under the apt name of a kernel the matrix does not have.
    let debs = dir.path().join("debs");
    let real = package_cache_like(&fixture_debs(), &debs);
    std::fs::write(debs.join("linux-headers-9.9.9-1-amd64_9.9.9-1_amd64.deb"), b"not a package").unwrap();
    let matrix = by_name_matrix(dir.path());
    let pinned = Matrix::load(&repo_root().join("kernels/default.toml")).unwrap();
    let mut used: Vec<String> = pinned.debs().iter().map(|d| d.apt_file_name()).collect();
    used.sort();
    assert_eq!(used.len(), 9, "{used:?}");
    eprintln!("package cache: {real} real packages, {} of them used by the default matrix", used.len());
    let build = |extra: &[&str], cache: &str, out: &str| {
        let timings = dir.path().join(format!("{out}.jsonl"));
        let o = echoed(
            builder(&[
                "build",
                "--matrix",
                p(&matrix),
                "--package-cache",
                p(&debs),
                "--cache-dir",
                p(&dir.path().join(cache)),
                "--out",
                p(&dir.path().join(out)),
                "--timings",
                p(&timings),
            ])
            .args(extra),
        );
        (o, inspected(&timings))
    };

    // Cold: exactly the nine packages the four kernels use are opened, and
    // the objects are the pinned build's, byte for byte.
    let (out, opened) = build(&[], "cache", "out");
    assert!(out.status.success(), "an unrelated broken package failed the build");
    assert_eq!(opened, used, "a build by name opened packages its kernels do not use");
    let mut compared = 0;
    for arch in ["x86_64", "aarch64"] {
        for e in std::fs::read_dir(b.out().join(arch)).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".o") && name != object_file_name(&running_release(), VERSION) {
                let mine = dir.path().join("out").join(arch).join(&name);
                let theirs = std::fs::read(&mine).unwrap_or_else(|e| panic!("{}: {e}", mine.display()));
                assert!(std::fs::read(e.path()).unwrap() == theirs, "{name} differs from the pinned build's");
                let meta = |d: &Path| -> ObjectMetadata {
                    serde_json::from_slice(&std::fs::read(d.join(arch).join(format!("{name}.json"))).unwrap()).unwrap()
                };
                assert_eq!(meta(&dir.path().join("out")).sources, meta(&b.out()).sources, "{name}");
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 4);

    // One kernel: only its flavour, -common and linux-kbuild; the six other
    // real packages of the default matrix stay closed.
    let (out, opened) = build(&["--select", r"^6\.1\.0-56-amd64$"], "cache", "one");
    assert!(out.status.success());
    assert_eq!(
        opened,
        [
            "linux-headers-6.1.0-56-amd64_6.1.192-2_amd64.deb",
            "linux-headers-6.1.0-56-common_6.1.192-2_all.deb",
            "linux-kbuild-6.1_6.1.192-2_amd64.deb",
        ]
    );
}

/// Builds 6.1.0-56-amd64 by name from `debs` into `<dir>/out`; the run's
/// output and the packages it inspected.
fn build_6_1_by_name(dir: &Path, debs: &Path, cache: &Path) -> (std::process::Output, Vec<String>) {
    let timings = dir.join("t.jsonl");
    let out = echoed(builder(&[
        "build",
        "--matrix",
        p(&by_name_matrix(dir)),
        "--select",
        r"^6\.1\.0-56-amd64$",
        "--package-cache",
        p(debs),
        "--cache-dir",
        p(cache),
        "--out",
        p(&dir.join("out")),
        "--timings",
        p(&timings),
    ]));
    let opened = if out.status.success() { inspected(&timings) } else { Vec::new() };
    (out, opened)
}

/// `<dir>/out`'s 6.1.0-56-amd64 object and its sources are the pinned build's.
fn assert_6_1_is_the_pinned_build_s(dir: &Path, b: &Built) {
    let name = object_file_name("6.1.0-56-amd64", VERSION);
    let mine = dir.join("out/x86_64");
    let pinned = b.out().join("x86_64");
    assert!(
        std::fs::read(mine.join(&name)).unwrap() == std::fs::read(pinned.join(&name)).unwrap(),
        "{name} differs from the pinned build's"
    );
    let meta = |d: &Path| -> ObjectMetadata {
        serde_json::from_slice(&std::fs::read(d.join(format!("{name}.json"))).unwrap()).unwrap()
    };
    assert_eq!(meta(&mine).sources, meta(&pinned).sources, "{name}: recorded sources differ");
}

/// Builds 6.1.0-56-amd64 by name from a copy of the fixture package cache
/// in `<dir>/debs` that `plant` has changed, with the build cache `cache`
/// (else `<dir>/cache`): the build must succeed and make the pinned
/// build's object. The packages it inspected.
fn pinned_by_name_from(dir: &Path, cache: Option<&Path>, plant: impl FnOnce(&Path)) -> Vec<String> {
    let debs = dir.join("debs");
    package_cache_like(&fixture_debs(), &debs);
    plant(&debs);
    let own = dir.join("cache");
    let (out, opened) = build_6_1_by_name(dir, &debs, cache.unwrap_or(&own));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_6_1_is_the_pinned_build_s(dir, shared());
    opened
}

#[test]
fn a_package_under_another_file_name_is_still_found() {
    // File names only say which packages to open first: a flavour package
    // under a name apt would not give it is found by inspecting the rest of
    // the cache, and builds what the pinned build built.
    let dir = tempfile::tempdir().unwrap();
    let opened = pinned_by_name_from(dir.path(), Some(&shared().cache()), |debs| {
        let flavour = "linux-headers-6.1.0-56-amd64_6.1.192-2_amd64.deb";
        std::fs::rename(debs.join(flavour), debs.join("renamed.deb")).unwrap();
    });
    assert!(opened.iter().any(|s| s == "renamed.deb"), "{opened:?}");
}

#[test]
fn a_package_planted_under_a_partner_s_apt_name_cannot_stand_in_for_it() {
    // A file name only says what to open: the 6.1 -common's apt name holds
    // another real package (6.12's -common), and the real one sits under a
    // name apt would not give it. Control data decides: the planted file is
    // not taken as 6.1's -common, the real one is found by inspecting the
    // rest of the cache, and the object is the pinned build's.
    let dir = tempfile::tempdir().unwrap();
    let common = "linux-headers-6.1.0-56-common_6.1.192-2_all.deb";
    let opened = pinned_by_name_from(dir.path(), None, |debs| {
        let other = "linux-headers-6.12.117+deb12-common_6.12.117-1~deb12u1_all.deb";
        assert!(debs.join(other).is_file(), "the fixture cache lacks {other}");
        std::fs::rename(debs.join(common), debs.join("x.deb")).unwrap();
        std::fs::copy(debs.join(other), debs.join(common)).unwrap();
    });
    assert!(opened.iter().any(|s| s == "x.deb"), "the real -common was not looked for: {opened:?}");
    assert!(opened.iter().any(|s| s == common), "the planted file was not inspected: {opened:?}");
}

/// A copy of bpf/ with `edit` applied to tracer.bpf.c.
fn program_copy(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let prog = dir.join("program");
    std::fs::create_dir_all(&prog).unwrap();
    for e in std::fs::read_dir(repo_root().join("bpf")).unwrap().flatten() {
        std::fs::copy(e.path(), prog.join(e.file_name())).unwrap();
    }
    let src = prog.join("tracer.bpf.c");
    std::fs::write(&src, edit(std::fs::read_to_string(&src).unwrap())).unwrap();
    prog
}

#[test]
fn compile_failures_are_reported_cached_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let broken = program_copy(dir.path(), |s| s + "\nthis is not C;\n");
    let shim = ToolShim::new(&["clang", "llc"]);
    let args = |extra: &[&str]| {
        let mut v: Vec<String> = [
            "build",
            "--running-kernel",
            "--program",
            p(&broken),
            "--cache-dir",
            p(&dir.path().join("c")),
            "--out",
            p(&dir.path().join("o")),
        ]
        .map(String::from)
        .to_vec();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let first = echoed(Command::new(BIN).args(args(&[])).env("PATH", shim.path_env()));
    assert_eq!(first.status.code(), Some(1), "a failed kernel exits 1");
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(stdout.contains("FAILED"), "{stdout}");
    let compiles = shim.compiles().len();
    assert_eq!(compiles, 1);

    // The failure is replayed from the cache, with clang's stderr and command.
    let report = dir.path().join("r.json");
    let second = echoed(Command::new(BIN).args(args(&["--report", p(&report)])).env("PATH", shim.path_env()));
    assert_eq!(second.status.code(), Some(1));
    assert_eq!(shim.compiles().len(), compiles, "a cached failure ran clang again");
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let row = &r["kernels"][0];
    assert_eq!(row["cached_failure"], true);
    let err = row["error"].as_str().unwrap();
    assert!(err.contains("error:") && err.contains("tracer.bpf.c") && err.contains("-DBPFARM_BTF"), "{err}");

    // --retry-failed runs clang again.
    let third = echoed(Command::new(BIN).args(args(&["--retry-failed"])).env("PATH", shim.path_env()));
    assert_eq!(third.status.code(), Some(1));
    assert_eq!(shim.compiles().len(), compiles + 1);

    // Fixing the program is a new input: it builds.
    std::fs::write(broken.join("tracer.bpf.c"), std::fs::read(repo_root().join("bpf/tracer.bpf.c")).unwrap()).unwrap();
    let fixed = echoed(Command::new(BIN).args(args(&[])).env("PATH", shim.path_env()));
    assert!(fixed.status.success());
}

#[test]
fn program_changes_rebuild_and_change_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let a = program_copy(dir.path(), |s| s);
    let common = |prog: &Path, out: &str| {
        echoed(builder(&[
            "build",
            "--running-kernel",
            "--program",
            p(prog),
            "--cache-dir",
            p(&dir.path().join("c")),
            "--out",
            p(&dir.path().join(out)),
        ]))
    };
    assert!(common(&a, "a").status.success());
    std::fs::write(
        a.join("tracer.bpf.c"),
        std::fs::read_to_string(a.join("tracer.bpf.c")).unwrap()
            + "\n/* a comment changes the line table of nothing but the digest */\nint bpfarm_extra_symbol;\n",
    )
    .unwrap();
    let out = common(&a, "b");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("built"), "a changed program was served from the cache");
    let name = object_file_name(&running_release(), VERSION);
    assert_ne!(
        std::fs::read(dir.path().join("a/x86_64").join(&name)).unwrap(),
        std::fs::read(dir.path().join("b/x86_64").join(&name)).unwrap()
    );
}

#[test]
fn hostile_package_is_refused_and_nothing_escapes() {
    let dir = tempfile::tempdir().unwrap();
    let debs = dir.path().join("debs");
    std::fs::create_dir(&debs).unwrap();
    let control = |pkg: &str, deps: &str| format!("Package: {pkg}\nVersion: 1\nArchitecture: amd64\nDepends: {deps}\n");
    write_deb(
        &debs.join("linux-headers-6.1.0-99-amd64_1_amd64.deb"),
        &control("linux-headers-6.1.0-99-amd64", "linux-headers-6.1.0-99-common (= 1), linux-kbuild-6.1 (>= 1)"),
        &[
            Entry::File("./usr/src/linux-headers-6.1.0-99-amd64/include/ok.h", b"int ok;"),
            Entry::File("./usr/src/linux-headers-6.1.0-99-amd64/include/../../../../../../escaped", b"pwned"),
        ],
    );
    write_deb(
        &debs.join("linux-headers-6.1.0-99-common_1_all.deb"),
        &control("linux-headers-6.1.0-99-common", ""),
        &[],
    );
    write_deb(&debs.join("linux-kbuild-6.1_1_amd64.deb"), &control("linux-kbuild-6.1", ""), &[]);
    let report = dir.path().join("r.json");
    let cache = dir.path().join("cache");
    let out = echoed(builder(&[
        "build",
        "--headers",
        p(&debs),
        "--cache-dir",
        p(&cache),
        "--out",
        p(&dir.path().join("out")),
        "--report",
        p(&report),
    ]));
    assert_eq!(out.status.code(), Some(1));
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let err = r["kernels"][0]["error"].as_str().unwrap();
    assert!(
        err.contains("linux-headers-6.1.0-99-amd64_1_amd64.deb") && err.contains("escaped") && err.contains(".."),
        "{err}"
    );
    // Nothing written anywhere around the cache, and no half tree left.
    let mut leaked = Vec::new();
    for root in [dir.path().to_owned(), cache.clone(), cache.join("trees")] {
        for e in std::fs::read_dir(&root).unwrap().flatten() {
            if e.file_name() == "escaped" {
                leaked.push(e.path());
            }
        }
    }
    assert!(leaked.is_empty(), "{leaked:?}");
    assert_eq!(std::fs::read_dir(cache.join("trees")).unwrap().count(), 0, "a refused package left a tree");
}

#[test]
fn truncated_real_package_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let debs = fixture_debs();
    let flavour = deb(&debs, "linux-headers-6.1.0-56-amd64");
    let bytes = std::fs::read(&flavour).unwrap();
    let cut = dir.path().join(flavour.file_name().unwrap());
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let report = dir.path().join("r.json");
    let out = echoed(builder(&[
        "build",
        "--headers",
        p(&cut),
        "--headers",
        p(&deb(&debs, "linux-headers-6.1.0-56-common")),
        "--headers",
        p(&deb(&debs, "linux-kbuild-6.1")),
        "--cache-dir",
        p(&dir.path().join("cache")),
        "--out",
        p(&dir.path().join("out")),
        "--report",
        p(&report),
    ]));
    assert_eq!(out.status.code(), Some(1));
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let err = r["kernels"][0]["error"].as_str().unwrap();
    assert!(err.contains(cut.file_name().unwrap().to_str().unwrap()), "{err}");
}

#[test]
fn missing_partner_package_names_what_to_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let debs = fixture_debs();
    let report = dir.path().join("r.json");
    let out = echoed(builder(&[
        "build",
        "--headers",
        p(&deb(&debs, "linux-headers-6.1.0-56-amd64")),
        "--cache-dir",
        p(&dir.path().join("cache")),
        "--out",
        p(&dir.path().join("out")),
        "--report",
        p(&report),
    ]));
    // Nothing pairs into a kernel: a setup error, before any work.
    assert_eq!(out.status.code(), Some(2));
    assert!(!report.exists());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("its -common package linux-headers-6.1.0-56-common (= 6.1.192-2) is not among the inputs"),
        "{stderr}"
    );
}

#[test]
fn unpacked_header_tree_builds_like_its_packages() {
    // /lib/modules/<r>/build-style input: the flavour tree with a `source` link.
    let b = shared();
    let dir = tempfile::tempdir().unwrap();
    let trees = b.cache().join("trees");
    let find = |suffix: &str| {
        std::fs::read_dir(&trees).unwrap().flatten().find_map(|e| {
            let src = e.path().join("usr/src");
            std::fs::read_dir(src).ok()?.flatten().map(|e| e.path()).find(|p| p.to_string_lossy().ends_with(suffix))
        })
    };
    let build = dir.path().join("build");
    copy_dir(&find("linux-headers-6.1.0-56-amd64").unwrap(), &build);
    std::os::unix::fs::symlink(find("linux-headers-6.1.0-56-common").unwrap(), build.join("source")).unwrap();
    let out = echoed(builder(&[
        "build",
        "--headers",
        p(&build),
        "--cache-dir",
        p(&dir.path().join("c")),
        "--out",
        p(&dir.path().join("o")),
    ]));
    assert!(out.status.success());
    let name = object_file_name("6.1.0-56-amd64", VERSION);
    let from_tree = std::fs::read(dir.path().join("o/x86_64").join(&name)).unwrap();
    assert_eq!(
        from_tree,
        std::fs::read(b.out().join("x86_64").join(&name)).unwrap(),
        "a tree and its packages give different bytes"
    );
    let meta: ObjectMetadata =
        serde_json::from_slice(&std::fs::read(dir.path().join("o/x86_64").join(format!("{name}.json"))).unwrap())
            .unwrap();
    assert_eq!(meta.sources[0].kind, bpfarm_object::SourceKind::Tree);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else if ft.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn usage_errors_exit_2_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let nothing = echoed(builder(&["build", "--cache-dir", p(dir.path()), "--out", p(&dir.path().join("o"))]));
    assert_eq!(nothing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("nothing to build"));
    let shard = echoed(builder(&["build", "--running-kernel", "--shard", "3/2"]));
    assert_eq!(shard.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&shard.stderr).contains("1 <= K <= N"));
    let btf = echoed(builder(&["build", "--btf", "/sys/kernel/btf/vmlinux"]));
    assert_eq!(btf.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&btf.stderr).contains("--kernel-release"));
    let bad_release = echoed(builder(&[
        "build",
        "--btf",
        "/sys/kernel/btf/vmlinux",
        "--kernel-release",
        "../etc",
        "--out",
        p(dir.path()),
    ]));
    assert_eq!(bad_release.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_release.stderr).contains("invalid kernel release"));
    // A timings file that cannot be written is found before any build,
    // not after it (which would lose the run's report and publish).
    let out = dir.path().join("timings-out");
    let timings = echoed(builder(&[
        "build",
        "--running-kernel",
        "--cache-dir",
        p(dir.path()),
        "--out",
        p(&out),
        "--report",
        p(&dir.path().join("r.json")),
        "--timings",
        p(&dir.path().join("no-such-dir/t.jsonl")),
    ]));
    assert_eq!(timings.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&timings.stderr).contains("opening the timings file"), "{timings:?}");
    // A run that fails before building leaves an earlier run's timings as
    // they were, and no temp file beside them.
    let earlier = dir.path().join("t.jsonl");
    std::fs::write(&earlier, "earlier\n").unwrap();
    let failed = echoed(builder(&[
        "build",
        "--matrix",
        p(&dir.path().join("no-such-matrix.toml")),
        "--cache-dir",
        p(dir.path()),
        "--out",
        p(&out),
        "--timings",
        p(&earlier),
    ]));
    assert_eq!(failed.status.code(), Some(2), "{failed:?}");
    assert_eq!(std::fs::read_to_string(&earlier).unwrap(), "earlier\n");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".timings-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(!dir.path().join("r.json").exists());
    assert!(std::fs::read_dir(&out).map(|d| d.count()).unwrap_or(0) == 0, "nothing was built");
    let help = Command::new(BIN).args(["build", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in
        ["--headers", "--matrix", "--btf", "--jobs", "--shard", "--report", "--retry-failed", "--version", "--timings"]
    {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

/// The running kernel's BTF-mode object loads, every program that the
/// kernel supports attaches, and it reports a process we start.
#[test]
fn privileged_btf_object_loads_attaches_and_sees_an_exec() {
    if !privileged("privileged_btf_object_loads_attaches_and_sees_an_exec") {
        return;
    }
    let b = shared();
    let obj_path = b.out().join("x86_64").join(object_file_name(&running_release(), VERSION));
    let obj = libbpf_rs::ObjectBuilder::default()
        .open_file(&obj_path)
        .unwrap()
        .load()
        .expect("the kernel refused the object");
    let mut links = Vec::new();
    let mut skipped = Vec::new();
    for prog in obj.progs_mut() {
        let name = prog.name().to_string_lossy().into_owned();
        match prog.attach() {
            Ok(link) => links.push(link),
            Err(e) if bpfarm_builder::program::OPTIONAL_PROGRAMS.contains(&name.as_str()) => {
                skipped.push(format!("{name}: {e}"))
            }
            Err(e) => panic!("{name} did not attach: {e}"),
        }
    }
    assert!(links.len() >= 6, "attached {} programs; skipped {skipped:?}", links.len());

    let events = std::rc::Rc::new(std::cell::RefCell::new(Vec::<(u32, u32, String)>::new()));
    let sink = events.clone();
    let map = obj.maps().find(|m| libbpf_rs::MapCore::name(m) == "events").unwrap();
    let mut rb = libbpf_rs::RingBufferBuilder::new();
    rb.add(&map, move |data: &[u8]| {
        let kind = u32::from_le_bytes(data[8..12].try_into().unwrap());
        let pid = u32::from_le_bytes(data[12..16].try_into().unwrap());
        let filename = if kind == 1 {
            String::from_utf8_lossy(&data[48..]).split('\0').next().unwrap_or("").to_owned()
        } else {
            String::new()
        };
        std::cell::RefCell::borrow_mut(&sink).push((kind, pid, filename));
        0
    })
    .unwrap();
    let rb = rb.build().unwrap();
    let child = Command::new("/bin/true").spawn().unwrap();
    let pid = child.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let seen = |k: u32| {
        std::cell::RefCell::borrow(&events)
            .iter()
            .any(|(kind, p, f)| *kind == k && *p == pid && (k != 1 || f == "/bin/true"))
    };
    while !(seen(1) && seen(2)) && std::time::Instant::now() < deadline {
        rb.poll(std::time::Duration::from_millis(100)).unwrap();
    }
    let mut child = child;
    child.wait().unwrap();
    assert!(seen(1), "no exec event for pid {pid} (/bin/true)");
    assert!(seen(2), "no exit event for pid {pid}");
}
