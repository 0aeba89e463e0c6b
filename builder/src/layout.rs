//! Where a header tree's kernel source tree is, in the layouts real systems
//! install: a Debian/Ubuntu flavour tree (`/usr/src/linux-headers-<r>`, or
//! `/lib/modules/<r>/build` pointing at it) holds only the configured part
//! and finds its `-common` tree through
//!
//! 1. a `source` entry inside it,
//! 2. the sibling `/lib/modules/<r>/source` link, or
//! 3. the `include <common>/Makefile` line of its `Makefile`;
//!
//! an RPM `kernel-devel` tree (`/usr/src/kernels/<r>`) is self-contained.
//!
//! A tree can sit under another root: an unpacked chroot, a container's
//! filesystem mounted on the host, `dpkg-deb -x` of the packages into a
//! folder. Its absolute links and `include` lines then name paths of that
//! root, so an absolute path is looked up under the tree's own root first
//! (`<root>/usr/src/...`, where the tree is `<root>/usr/src/<name>` or
//! `<root>/lib/modules/<r>/build`), then as it is, then under each folder
//! above the tree. The same root first, rather than the host's path: a host
//! can hold another build of a same-named package, and the tree's partner is
//! the one shipped beside it.

use std::fs;
use std::path::{Component, Path, PathBuf};

use crate::treefs::{self, Roots};

#[derive(Debug, thiserror::Error)]
#[error("{tree}: {reason}")]
pub struct LayoutError {
    pub tree: PathBuf,
    pub reason: String,
}

/// A build tree and the source tree paired with it (canonical paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub build: PathBuf,
    pub source: PathBuf,
    /// How the source tree was found, for messages.
    pub how: String,
}

/// The file that marks a kernel source tree (clang force-includes it).
const MARKER: &str = "include/linux/kconfig.h";

fn is_source_tree(p: &Path) -> bool {
    p.join(MARKER).is_file()
}

/// `<root>` when `path` is `<root>/usr/src/<name>` or
/// `<root>/lib/modules/<r>/build|source` (lexically, as given).
fn layout_root(path: &Path) -> Option<PathBuf> {
    let names: Vec<&str> =
        path.components().filter_map(|c| if let Component::Normal(s) = c { s.to_str() } else { None }).collect();
    let n = names.len();
    let strip = match names.as_slice() {
        [.., "usr", "src", _] => 3,
        [.., "usr", "src", "kernels", _] => 4,
        [.., "lib", "modules", _, "build" | "source"] => 4,
        _ => return None,
    };
    let mut root = path.to_owned();
    for _ in 0..strip {
        root.pop();
    }
    (n >= strip).then_some(root)
}

/// Candidates for an absolute path named inside a tree at `tree` (given
/// path) / `real` (canonical): under the tree's root, as is, under each
/// folder above the tree.
fn absolute_candidates(abs: &Path, tree: &Path, real: &Path) -> Vec<PathBuf> {
    let rel = abs.strip_prefix("/").unwrap_or(abs);
    let mut out = Vec::new();
    for root in [layout_root(tree), layout_root(real)].into_iter().flatten() {
        if root != Path::new("/") && !root.as_os_str().is_empty() {
            out.push(root.join(rel));
        }
    }
    out.push(abs.to_owned());
    out.extend(real.ancestors().skip(1).filter(|a| *a != Path::new("/")).map(|a| a.join(rel)));
    out.dedup();
    out
}

/// Follows `path` when it is a symlink, resolving an absolute target under
/// the root the link sits in (see the module doc); `None` when nothing
/// usable is there.
fn follow(path: &Path, accept: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    let md = fs::symlink_metadata(path).ok()?;
    if !md.file_type().is_symlink() {
        return path.canonicalize().ok().filter(|p| accept(p));
    }
    let target = fs::read_link(path).ok()?;
    if !target.is_absolute() {
        return path.canonicalize().ok().filter(|p| accept(p));
    }
    let parent = path.parent()?;
    let real_parent = parent.canonicalize().ok()?;
    // The link's own location decides the root: `<root>/lib/modules/<r>/build`.
    absolute_candidates(&target, path, &real_parent.join(path.file_name()?))
        .into_iter()
        .find_map(|c| c.canonicalize().ok().filter(|p| accept(p)))
}

/// The build tree a `--headers` path (or `KERN_HEADERS`) names: the folder
/// itself, or where its symlink leads (under the same root, see above).
pub fn build_tree(given: &Path) -> Result<PathBuf, LayoutError> {
    follow(given, Path::is_dir).ok_or_else(|| LayoutError {
        tree: given.to_owned(),
        reason: match fs::read_link(given) {
            Ok(t) => format!("symlink to {}, which does not exist here or under the same root", t.display()),
            Err(_) => "not a folder".into(),
        },
    })
}

/// The `include <dir>/Makefile` line of a flavour tree's Makefile.
fn makefile_include(build: &Path) -> Result<Option<PathBuf>, LayoutError> {
    let err = |reason: String| LayoutError { tree: build.to_owned(), reason };
    let roots = Roots::new([build]).map_err(|e| err(e.to_string()))?;
    let Some(bytes) = treefs::read_file(&roots, &build.join("Makefile"), 1 << 20).map_err(|e| err(e.to_string()))?
    else {
        return Ok(None);
    };
    Ok(String::from_utf8_lossy(&bytes).lines().find_map(|l| {
        let rest = l.trim().strip_prefix("include")?;
        if !rest.starts_with([' ', '\t']) {
            return None;
        }
        let dir = rest.trim().strip_suffix("/Makefile")?;
        (!dir.is_empty() && !dir.contains(['$', ' '])).then(|| PathBuf::from(dir))
    }))
}

/// Pairs the build tree named by `given` with its source tree. `release`
/// (from the tree's own facts) finds the sibling `/lib/modules/<r>/source`.
pub fn resolve(given: &Path, release: &str) -> Result<Layout, LayoutError> {
    let build = build_tree(given)?;
    let found = |source: PathBuf, how: String| Ok(Layout { build: build.clone(), source, how });

    // 1. `source` inside the tree (Debian's /lib/modules/<r>/build once had it).
    if let Some(s) = follow(&build.join("source"), is_source_tree) {
        return found(s, "its `source` link".into());
    }
    // 2. The sibling /lib/modules/<r>/source: beside the given path when that
    //    is `.../build`, and under the tree's root.
    let mut siblings = Vec::new();
    if given.file_name().is_some_and(|n| n == "build")
        && let Some(parent) = given.parent()
    {
        siblings.push(parent.join("source"));
    }
    for root in [layout_root(given), layout_root(&build)].into_iter().flatten() {
        siblings.push(root.join("lib/modules").join(release).join("source"));
    }
    for s in siblings {
        if let Some(src) = follow(&s, is_source_tree) {
            return found(src, format!("the sibling {}", s.display()));
        }
    }
    // 3. The Makefile's `include <common>/Makefile`.
    if let Some(dir) = makefile_include(&build)? {
        let candidates =
            if dir.is_absolute() { absolute_candidates(&dir, given, &build) } else { vec![build.join(&dir)] };
        if let Some(src) = candidates.iter().find_map(|c| c.canonicalize().ok().filter(|p| is_source_tree(p))) {
            return found(src, format!("its Makefile's `include {}/Makefile`", dir.display()));
        }
        return Err(LayoutError {
            tree: given.to_owned(),
            reason: format!(
                "its Makefile includes {}/Makefile, but that source tree is neither here nor under the tree's root ({} tried)",
                dir.display(),
                candidates.len()
            ),
        });
    }
    // 4. Self-contained (RPM kernel-devel, a full source tree).
    if is_source_tree(&build) {
        return found(build.clone(), "self-contained".into());
    }
    Err(LayoutError {
        tree: given.to_owned(),
        reason: format!(
            "no kernel source tree: no `source` link, no /lib/modules/{release}/source, no `include …/Makefile` line in its Makefile, and no {MARKER} of its own"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// `<root>/usr/src/linux-headers-9.9.9-{common,amd64}` as Debian installs them.
    fn debian_root(root: &Path, makefile: Option<&str>) -> (PathBuf, PathBuf) {
        let common = root.join("usr/src/linux-headers-9.9.9-common");
        let flavour = root.join("usr/src/linux-headers-9.9.9-amd64");
        fs::create_dir_all(common.join("include/linux")).unwrap();
        fs::write(common.join(MARKER), "").unwrap();
        fs::create_dir_all(flavour.join("include/generated")).unwrap();
        if let Some(m) = makefile {
            fs::write(flavour.join("Makefile"), m).unwrap();
        }
        (common, flavour)
    }

    #[test]
    fn makefile_include_under_the_same_root() {
        // The absolute path does not exist on this host: resolved under the
        // tree's own root, whether given as /usr/src/... or /lib/modules/.../build.
        let d = tempfile::tempdir().unwrap();
        let (common, flavour) = debian_root(
            d.path(),
            Some("# comment\nMAKEFLAGS += -rR\ninclude /usr/src/linux-headers-9.9.9-common/Makefile\n"),
        );
        let l = resolve(&flavour, "9.9.9-amd64").unwrap();
        assert_eq!(l.source, common.canonicalize().unwrap());
        assert!(l.how.contains("Makefile"), "{}", l.how);
        let modules = d.path().join("lib/modules/9.9.9-amd64");
        fs::create_dir_all(&modules).unwrap();
        symlink("/usr/src/linux-headers-9.9.9-amd64", modules.join("build")).unwrap();
        let l = resolve(&modules.join("build"), "9.9.9-amd64").unwrap();
        assert_eq!(l.build, flavour.canonicalize().unwrap());
        assert_eq!(l.source, common.canonicalize().unwrap());
    }

    #[test]
    fn sibling_source_link() {
        let d = tempfile::tempdir().unwrap();
        let (common, flavour) = debian_root(d.path(), None);
        let modules = d.path().join("lib/modules/9.9.9-amd64");
        fs::create_dir_all(&modules).unwrap();
        symlink("/usr/src/linux-headers-9.9.9-amd64", modules.join("build")).unwrap();
        symlink("/usr/src/linux-headers-9.9.9-common", modules.join("source")).unwrap();
        for given in [modules.join("build"), flavour.clone()] {
            let l = resolve(&given, "9.9.9-amd64").unwrap();
            assert_eq!(l.source, common.canonicalize().unwrap(), "{}", given.display());
            assert!(l.how.contains("sibling"), "{}", l.how);
        }
    }

    #[test]
    fn source_link_inside_and_self_contained() {
        let d = tempfile::tempdir().unwrap();
        let (common, flavour) = debian_root(d.path(), None);
        symlink("../linux-headers-9.9.9-common", flavour.join("source")).unwrap();
        assert_eq!(resolve(&flavour, "9.9.9-amd64").unwrap().source, common.canonicalize().unwrap());
        // kernel-devel: everything in one folder.
        let rpm = d.path().join("usr/src/kernels/9.9.9-1.el9.x86_64");
        fs::create_dir_all(rpm.join("include/linux")).unwrap();
        fs::write(rpm.join(MARKER), "").unwrap();
        let l = resolve(&rpm, "9.9.9-1.el9.x86_64").unwrap();
        assert_eq!(l.source, l.build);
    }

    #[test]
    fn a_missing_partner_is_named() {
        let d = tempfile::tempdir().unwrap();
        let flavour = d.path().join("usr/src/linux-headers-9.9.9-amd64");
        fs::create_dir_all(&flavour).unwrap();
        fs::write(flavour.join("Makefile"), "include /usr/src/linux-headers-9.9.9-common/Makefile\n").unwrap();
        let e = resolve(&flavour, "9.9.9-amd64").unwrap_err().to_string();
        assert!(e.contains("linux-headers-9.9.9-common/Makefile"), "{e}");
        fs::remove_file(flavour.join("Makefile")).unwrap();
        let e = resolve(&flavour, "9.9.9-amd64").unwrap_err().to_string();
        assert!(e.contains("no kernel source tree"), "{e}");
    }
}
