//! Real installed header layouts. `ci/install-deps` installs, with apt, the
//! amd64 flavour of kernels/default.toml (linux-headers-6.1.0-56-amd64, its
//! -common and linux-kbuild-6.1): the layout every Debian and Ubuntu host's
//! `/lib/modules/<r>/build` has, where the flavour tree holds no `source`
//! entry and names its -common tree in its Makefile and in the sibling
//! `/lib/modules/<r>/source`. Built from the `.deb`s, from the installed
//! tree (both paths) and from unpacked copies (`dpkg-deb -x` of the same
//! packages under another root), the object is the same, byte for byte.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bpfarm_object::object_file_name;
use bpfarm_tests::{deb, fixture_debs, in_ci};

const BIN: &str = env!("CARGO_BIN_EXE_bpfarm-builder");
const RELEASE: &str = "6.1.0-56-amd64";
const PACKAGES: [&str; 3] = ["linux-headers-6.1.0-56-amd64", "linux-headers-6.1.0-56-common", "linux-kbuild-6.1"];

fn build(dir: &Path, name: &str, headers: &[&Path]) -> (Output, Option<Vec<u8>>) {
    let mut c = Command::new(BIN);
    c.args(["-v", "build", "--no-progress"]).env_remove("BPFARM_CACHE");
    for h in headers {
        c.arg("--headers").arg(h);
    }
    // A cache of its own: every build really compiles.
    let out_dir = dir.join(name);
    c.arg("--cache-dir").arg(dir.join(format!("{name}.cache"))).arg("--out").arg(&out_dir);
    let out = c.output().expect("running bpfarm-builder");
    eprintln!("--- {name}\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let obj = std::fs::read(out_dir.join("x86_64").join(object_file_name(RELEASE, "v0.1.0"))).ok();
    (out, obj)
}

/// The installed packages are there and are the fixture's version.
fn installed() -> bool {
    let tree = Path::new("/usr/src/linux-headers-6.1.0-56-amd64");
    if !tree.is_dir() {
        assert!(!in_ci(), "{} is not installed: ci/install-deps installs it (CI=true: failing)", tree.display());
        eprintln!("SKIPPED: {} is not installed (ci/install-deps installs it)", tree.display());
        return false;
    }
    let fixture = deb(&fixture_debs(), PACKAGES[0]);
    for pkg in PACKAGES {
        let out = Command::new("dpkg-query").args(["-W", "-f", "${Version}", pkg]).output().unwrap();
        let version = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            fixture.to_string_lossy().contains(&format!("_{version}_")),
            "installed {pkg} {version} is not the version of {}",
            fixture.display()
        );
    }
    true
}

#[test]
fn installed_and_unpacked_layouts_build_the_same_bytes_as_the_packages() {
    if !installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let debs: Vec<PathBuf> = PACKAGES.iter().map(|p| deb(&fixture_debs(), p)).collect();
    let (out, from_debs) = build(dir.path(), "debs", &debs.iter().map(PathBuf::as_path).collect::<Vec<_>>());
    assert!(out.status.success());
    let from_debs = from_debs.expect("object from the packages");

    // Builds from `headers`, checks the -v line saying how the trees were
    // paired, and compares the object with the packages'.
    let same = |name: &str, headers: &Path, build_tree: &Path, source_tree: &Path, route: &str| {
        let (out, obj) = build(dir.path(), name, &[headers]);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stdout));
        let log = String::from_utf8_lossy(&out.stderr);
        let line = format!("build tree {}, source tree {} ({route})", build_tree.display(), source_tree.display());
        assert!(log.contains(&line), "{name}: expected {line:?} in:\n{log}");
        assert!(obj.as_ref() == Some(&from_debs), "{name}: differs from the object built from the packages");
    };
    // As installed by apt.
    let (flavour, common) =
        (Path::new("/usr/src/linux-headers-6.1.0-56-amd64"), Path::new("/usr/src/linux-headers-6.1.0-56-common"));
    let sibling = "the sibling /lib/modules/6.1.0-56-amd64/source";
    same("modules-build", Path::new("/lib/modules/6.1.0-56-amd64/build"), flavour, common, sibling);
    same("usr-src", flavour, flavour, common, sibling);

    // Unpacked under another root, as a chroot or a container's filesystem
    // mounted on the host: absolute links resolve under that root.
    let root = dir.path().join("root");
    for d in &debs {
        let st = Command::new("dpkg-deb").arg("-x").arg(d).arg(&root).status().unwrap();
        assert!(st.success(), "dpkg-deb -x {}", d.display());
    }
    let root = root.canonicalize().unwrap();
    let flavour = root.join("usr/src/linux-headers-6.1.0-56-amd64");
    let common = root.join("usr/src/linux-headers-6.1.0-56-common");
    let modules = root.join("lib/modules/6.1.0-56-amd64");
    let sibling = format!("the sibling {}", modules.join("source").display());
    same("copy-modules-build", &modules.join("build"), &flavour, &common, &sibling);
    // Links whose absolute targets do not exist on this host at all: they
    // resolve only under the root they sit in.
    let renamed = dir.path().join("renamed");
    copy_tree(&root, &renamed);
    let renamed = renamed.canonicalize().unwrap();
    let (rf, rc) = (renamed.join("usr/src/bpfarm-test-flavour"), renamed.join("usr/src/bpfarm-test-common"));
    std::fs::rename(renamed.join("usr/src/linux-headers-6.1.0-56-amd64"), &rf).unwrap();
    std::fs::rename(renamed.join("usr/src/linux-headers-6.1.0-56-common"), &rc).unwrap();
    let rm = renamed.join("lib/modules/6.1.0-56-amd64");
    for (link, target) in [("build", "/usr/src/bpfarm-test-flavour"), ("source", "/usr/src/bpfarm-test-common")] {
        std::fs::remove_file(rm.join(link)).unwrap();
        std::os::unix::fs::symlink(target, rm.join(link)).unwrap();
    }
    assert!(!Path::new("/usr/src/bpfarm-test-flavour").exists());
    let sibling = format!("the sibling {}", rm.join("source").display());
    same("copy-dangling-here", &rm.join("build"), &rf, &rc, &sibling);

    // Without /lib/modules, only the Makefile's `include` line names the
    // -common tree: an absolute path, found under the same root (though
    // this host has its own copy at that path).
    std::fs::remove_dir_all(root.join("lib/modules")).unwrap();
    let makefile = "its Makefile's `include /usr/src/linux-headers-6.1.0-56-common/Makefile`";
    same("copy-makefile", &flavour, &flavour, &common, makefile);

    // An RPM kernel-devel-style tree: everything in one folder, no partner.
    let merged = dir.path().join("kernels/6.1.0-56-amd64");
    copy_tree(&common, &merged);
    copy_tree(&flavour, &merged);
    std::fs::remove_file(merged.join("Makefile")).unwrap();
    let (out, obj) = build(dir.path(), "self-contained", &[&merged]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stderr).contains("self-contained"));
    // One folder maps to one debug-info name, so only the paths in the
    // debug info differ from the packages' object; it must load all the same.
    bpfarm_builder::validate::validate(
        &dir.path().join("self-contained/x86_64").join(object_file_name(RELEASE, "v0.1.0")),
    )
    .expect("the self-contained tree's object validates");
    assert!(obj.is_some());
}

/// `cp -a from/. to/` for the parts a compile reads (links kept as links).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let st = Command::new("cp").arg("-a").arg(format!("{}/.", from.display())).arg(to).status().unwrap();
    assert!(st.success());
}
