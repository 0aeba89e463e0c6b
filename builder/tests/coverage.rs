//! Coverage across kernel generations: a sample of the shipped Debian matrix
//! spanning 5.10, 6.1, 6.12 and 7.x on both arches, fetched and built from
//! the real archive; and the per-tree compiler choice, with real clangs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bpfarm_object::{ObjectMetadata, object_file_name};
use bpfarm_tests::{cache_root, deb, echoed, fixture_debs, in_ci, repo_root};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bpfarm-builder");
const VERSION: &str = "v0.1.0";

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// One kernel per generation and arch, all reachable on the machine's
/// mirror: the oldest and newest ABIs the tracer must handle.
const SAMPLE: [&str; 8] = [
    "5.10.0-32-amd64",
    "5.10.0-32-arm64",
    "6.1.0-56-amd64",
    "6.1.0-56-arm64",
    "6.12.118+deb13-amd64",
    "6.12.118+deb13-arm64",
    "7.3.4+deb13-amd64",
    "7.3.4+deb13-arm64",
];

#[test]
fn a_sample_from_5_10_to_7_x_builds_on_both_arches() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let mut cmd = Command::new(BIN);
    cmd.args(["build", "--no-progress", "--matrix"]).arg(repo_root().join("kernels/debian.toml"));
    for r in SAMPLE {
        cmd.arg(format!("--select=^{}$", regex_escape(r)));
    }
    // Packages come from (and stay in) the shared package cache; objects
    // are built from scratch.
    cmd.arg("--package-cache").arg(cache_root().join("debs"));
    cmd.arg("--cache-dir").arg(dir.path().join("cache"));
    cmd.arg("--out").arg(dir.path().join("out")).arg("--report").arg(&report);
    let o = echoed(cmd.env_remove("BPFARM_CACHE"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["summary"]["built"], SAMPLE.len(), "{r:#}");
    for release in SAMPLE {
        let arch = if release.ends_with("arm64") { "aarch64" } else { "x86_64" };
        let obj = dir.path().join("out").join(arch).join(object_file_name(release, VERSION));
        let meta: ObjectMetadata =
            serde_json::from_slice(&std::fs::read(format!("{}.json", obj.display())).unwrap()).unwrap();
        assert_eq!(meta.identity.kernel_release, release);
        assert!(meta.compiler.clang.contains("clang version"), "{}", meta.compiler.clang);
        bpfarm_builder::validate::validate(&obj).unwrap();
        // The dialect each tree's own Makefile asks for.
        let has = |f: &str| meta.flags.clang.iter().any(|x| x == f);
        match &release[..4] {
            "5.10" => assert!(has("-std=gnu89") && !has("-fms-extensions"), "{:?}", meta.flags),
            "6.1." | "6.12" => assert!(has("-std=gnu11") && !has("-fms-extensions"), "{:?}", meta.flags),
            _ => assert!(has("-std=gnu11") && has("-fms-extensions"), "{:?}", meta.flags),
        }
    }
}

fn regex_escape(s: &str) -> String {
    s.chars().map(|c| if c == '.' || c == '+' { format!("\\{c}") } else { c.to_string() }).collect()
}

/// `dpkg-deb -x` of the default 6.1 amd64 kernel into a `/lib/modules`-style
/// tree (`build/` with a `source` link), so a test can edit what the tree
/// states.
fn unpacked_tree(dir: &Path) -> PathBuf {
    let debs = fixture_debs();
    let root = dir.join("root");
    for pkg in ["linux-headers-6.1.0-56-amd64", "linux-headers-6.1.0-56-common"] {
        let st = Command::new("dpkg-deb").arg("-x").arg(deb(&debs, pkg)).arg(&root).status().expect("dpkg-deb");
        assert!(st.success());
    }
    let build = root.join("usr/src/linux-headers-6.1.0-56-amd64");
    std::os::unix::fs::symlink(root.join("usr/src/linux-headers-6.1.0-56-common"), build.join("source")).unwrap();
    build
}

fn build_tree(build: &Path, dir: &Path) -> (Output, Option<ObjectMetadata>) {
    let out = dir.join("out");
    let o = echoed(
        Command::new(BIN)
            .args(["build", "--no-progress", "--headers", p(build), "--cache-dir"])
            .arg(dir.join("cache"))
            .arg("--out")
            .arg(&out)
            .env_remove("BPFARM_CACHE"),
    );
    let json = out.join("x86_64").join(format!("{}.json", object_file_name("6.1.0-56-amd64", VERSION)));
    let meta = std::fs::read(json).ok().map(|b| serde_json::from_slice(&b).unwrap());
    (o, meta)
}

fn have(tool: &str) -> bool {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).any(|d| d.join(tool).is_file())
}

#[test]
fn the_tree_s_stated_minimum_picks_the_clang() {
    if !(have("clang-15") && have("llc-15")) {
        assert!(!in_ci(), "clang-15 and llc-15 are not installed (ci/install-deps installs them)");
        eprintln!("SKIPPED: clang-15 is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let build = unpacked_tree(dir.path());
    // As the tree ships: Debian's 6.1 states no minimum, the default clang builds it.
    let (o, meta) = build_tree(&build, &dir.path().join("a"));
    assert!(o.status.success());
    let default_clang = meta.unwrap().compiler.clang;
    assert!(!default_clang.contains("version 15."), "the default clang here is {default_clang}");

    // The same tree with the kernel's own min-tool-version.sh (as RPM
    // kernel-devel ships it) asking for LLVM 15 on x86: clang-15 is chosen,
    // and recorded in the metadata and the cache key (a second object).
    let scripts = build.join("source/scripts");
    // Debian's -common links scripts/ to the kbuild package, not unpacked here.
    if scripts.is_symlink() {
        std::fs::remove_file(&scripts).unwrap();
    }
    std::fs::create_dir_all(&scripts).unwrap();
    let script = scripts.join("min-tool-version.sh");
    std::fs::write(
        &script,
        "case \"$1\" in\nllvm)\n\tif [ \"$SRCARCH\" = s390 -o \"$SRCARCH\" = x86 ]; then\n\t\techo 15.0.0\n\telse\n\t\techo 13.0.1\n\tfi\n\t;;\nesac\n",
    )
    .unwrap();
    let shared = dir.path().join("a");
    let (o, meta) = build_tree(&build, &shared);
    assert!(o.status.success());
    let meta = meta.unwrap();
    assert!(meta.compiler.clang.contains("clang version 15."), "{}", meta.compiler.clang);
    assert!(meta.compiler.llc.as_deref().unwrap_or("").contains("version 15."), "{:?}", meta.compiler.llc);
    let objects = std::fs::read_dir(shared.join("cache/objects"))
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .filter(|f| f.file_name().to_string_lossy().ends_with(".o"))
        .count();
    assert!(String::from_utf8_lossy(&o.stdout).contains("built"), "a cached object of another clang was reused");
    assert!(objects >= 2, "one cache entry per compiler");

    // A minimum no installed clang meets: a clear error, nothing written.
    std::fs::write(&script, "case \"$1\" in\nllvm)\n\techo 99.0.0\n\t;;\nesac\n").unwrap();
    let fresh = dir.path().join("b");
    let (o, meta) = build_tree(&build, &fresh);
    assert_eq!(o.status.code(), Some(1));
    assert!(meta.is_none());
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("needs clang >= 99.0.0 (scripts/min-tool-version.sh)"), "{stdout}");
}
