//! The unpacked-header cache: each package's compile-relevant files, unpacked
//! once into `trees/<package digest>.f<FILTER_VERSION>/` and shared by every
//! kernel that needs them (all flavours of one ABI share one `-common` tree).
//!
//! A tree becomes visible by renaming a finished temp folder, so a crash
//! leaves only a `.tmp-*` folder (removed on the next start) and two builders
//! racing on one package both end with the same complete tree. A refused
//! package (hostile, over a limit, changed since it was inspected) has its
//! temp folder removed at once, whatever permissions its entries asked for.

use std::collections::HashMap;
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use bpfarm_object::Digest;

use crate::fsutil;
use crate::limits::Limits;
use crate::packages::PackageFacts;
use crate::rpms::{self, RpmFacts};
use crate::unpack::{self, UnpackStats};

/// Bumped whenever `keep` changes what a tree holds.
pub const FILTER_VERSION: u32 = 2;

/// The arch include folders kept from a (multi-arch) `-common` package.
const KEPT_ARCHES: [&str; 2] = ["x86", "arm64"];

/// Only what compiling against the headers needs: `include/` (without the
/// thousands of empty kbuild `include/config/*` stamp files and the
/// device-tree bindings), `arch/{x86,arm64}/include/`, `.config`, and the
/// top `Makefile` (its dialect flags, `compile::tree_flags`).
pub fn keep(p: &Path) -> bool {
    let c: Vec<&str> =
        p.components().filter_map(|c| if let Component::Normal(s) = c { s.to_str() } else { None }).collect();
    match c.as_slice() {
        [] | ["usr"] | ["usr", "src"] | ["usr", "src", _] => true,
        ["usr", "src", _, rest @ ..] => match rest {
            [".config"] | ["Makefile"] => true,
            ["include", "config", f] => matches!(*f, "kernel.release" | "auto.conf"),
            ["include", "config", ..] => false,
            ["include", "dt-bindings", ..] => false,
            ["include", ..] => true,
            ["arch"] => true,
            ["arch", a] => KEPT_ARCHES.contains(a),
            ["arch", a, "include", ..] => KEPT_ARCHES.contains(a),
            _ => false,
        },
        _ => false,
    }
}

/// [`keep`] for an RPM `kernel-devel` package, whose one tree sits at
/// `usr/src/kernels/<release>/` (the same files kept as from a Debian tree).
pub fn keep_rpm(p: &Path) -> bool {
    let c: Vec<&str> =
        p.components().filter_map(|c| if let Component::Normal(s) = c { s.to_str() } else { None }).collect();
    match c.as_slice() {
        [] | ["usr"] | ["usr", "src"] => true,
        ["usr", "src", "kernels", rest @ ..] => keep(&Path::new("usr/src").join(rest.iter().collect::<PathBuf>())),
        _ => false,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error(transparent)]
    Unpack(#[from] unpack::UnpackError),
    #[error("{package}: {what}: {source}")]
    Io {
        package: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{package}: expected exactly one folder under usr/src/, found {found:?}")]
    Layout { package: PathBuf, found: Vec<String> },
    #[error("{package}: expected exactly one kernel tree under usr/src/kernels/, found {found:?}")]
    RpmLayout { package: PathBuf, found: Vec<String> },
}

impl TreeError {
    /// Whether raising a limit could change the outcome (so it is not a
    /// failure to remember for these inputs).
    pub fn is_limit(&self) -> bool {
        matches!(self, TreeError::Unpack(e) if e.is_limit())
    }
}

/// An unpacked package: the folder holding its `usr/src/<top>/`.
#[derive(Clone, Debug)]
pub struct Tree {
    /// `<cache>/trees/<digest>.f1/usr/src/<top>`
    pub root: PathBuf,
    /// Set when this call unpacked it (a cache miss).
    pub unpacked: Option<UnpackStats>,
}

/// An unpack, done once, as the callers waiting on it see it.
type Slot = Arc<OnceLock<Result<PathBuf, Arc<TreeError>>>>;

/// Hands out unpacked trees, unpacking each package at most once per process
/// (concurrent callers for one package wait for the first).
#[derive(Debug)]
pub struct TreeCache {
    dir: PathBuf,
    limits: Limits,
    in_flight: Mutex<HashMap<Digest, Slot>>,
}

impl TreeCache {
    pub fn new(cache_dir: &Path, limits: Limits) -> std::io::Result<Self> {
        let dir = cache_dir.join("trees");
        fs::create_dir_all(&dir)?;
        // Leftovers of an interrupted unpack are never complete trees.
        for e in fs::read_dir(&dir)?.flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = fsutil::remove_tree(&e.path());
            }
        }
        Ok(Self { dir, limits, in_flight: Mutex::new(HashMap::new()) })
    }

    fn final_dir(&self, pkg: &PackageFacts) -> PathBuf {
        self.dir.join(format!("{}.f{FILTER_VERSION}", pkg.digest.hex()))
    }

    /// Whether `pkg` is unpacked already (no I/O beyond a stat).
    pub fn contains(&self, pkg: &PackageFacts) -> bool {
        self.final_dir(pkg).is_dir()
    }

    fn slot(&self, digest: &Digest) -> Slot {
        // A poisoned lock only means another worker panicked while holding
        // it; the map itself is still consistent.
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(digest.clone()).or_default().clone()
    }

    /// The package's unpacked `usr/src/<top>` folder, unpacking it if needed.
    /// Every caller waiting on one unpack gets the same error.
    pub fn get(&self, pkg: &PackageFacts) -> Result<Tree, Arc<TreeError>> {
        let (dir, unpacked) = self.unpacked_once(&pkg.digest, &pkg.path, self.final_dir(pkg), &|tmp| {
            unpack::unpack_deb(&pkg.path, Some(&pkg.digest), tmp, &keep, &self.limits)
        })?;
        Ok(Tree { root: top_folder(&pkg.path, &dir)?, unpacked })
    }

    /// The unpacked folder of the package with `digest`, unpacking it into
    /// `done` with `unpack` once however many callers ask at the same time
    /// (the stats go to the caller that unpacked). Every caller waiting on
    /// one unpack gets the same error, and a failure is forgotten so a later
    /// call (e.g. after a re-fetch) retries.
    fn unpacked_once(
        &self,
        digest: &Digest,
        package: &Path,
        done: PathBuf,
        unpack: &dyn Fn(&Path) -> Result<UnpackStats, unpack::UnpackError>,
    ) -> Result<(PathBuf, Option<UnpackStats>), Arc<TreeError>> {
        let slot = self.slot(digest);
        let mut unpacked = None;
        let dir = slot.get_or_init(|| match self.unpack_into(package, done, unpack) {
            Ok((dir, stats)) => {
                unpacked = stats;
                Ok(dir)
            }
            Err(e) => Err(Arc::new(e)),
        });
        match dir {
            Ok(d) => Ok((d.clone(), unpacked)),
            Err(e) => {
                self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(digest);
                Err(e.clone())
            }
        }
    }

    /// An RPM `kernel-devel` package's `usr/src/kernels/<release>` folder,
    /// unpacked once into `trees/<digest>.f<FILTER_VERSION>/` like a `.deb`.
    pub fn get_rpm(&self, pkg: &RpmFacts) -> Result<Tree, Arc<TreeError>> {
        let done = self.dir.join(format!("{}.f{FILTER_VERSION}", pkg.digest.hex()));
        let (dir, unpacked) = self.unpacked_once(&pkg.digest, &pkg.path, done, &|tmp| {
            rpms::unpack_rpm(&pkg.path, Some(&pkg.digest), tmp, &keep_rpm, &self.limits)
        })?;
        let kernels = dir.join("usr/src/kernels");
        let found: Vec<String> = fs::read_dir(&kernels)
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        match found.as_slice() {
            [one] if kernels.join(one).symlink_metadata().is_ok_and(|m| m.is_dir()) => {
                Ok(Tree { root: kernels.join(one), unpacked })
            }
            _ => Err(Arc::new(TreeError::RpmLayout { package: pkg.path.clone(), found })),
        }
    }

    /// Unpacks with `unpack` into a fresh temp folder renamed to `done`.
    fn unpack_into(
        &self,
        package: &Path,
        done: PathBuf,
        unpack: &dyn Fn(&Path) -> Result<UnpackStats, unpack::UnpackError>,
    ) -> Result<(PathBuf, Option<UnpackStats>), TreeError> {
        let io = |what, source| TreeError::Io { package: package.to_owned(), what, source };
        if done.is_dir() {
            return Ok((done, None));
        }
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempdir_in(&self.dir)
            .map_err(|e| io("create temp folder", e))?
            .keep();
        let stats = match unpack(&tmp) {
            Ok(stats) => stats,
            Err(e) => {
                if let Err(rm) = fsutil::remove_tree(&tmp) {
                    tracing::warn!("removing {}: {rm}", tmp.display());
                }
                return Err(e.into());
            }
        };
        match fs::rename(&tmp, &done) {
            Ok(()) => {}
            // Another process finished the same tree first: use theirs.
            Err(_) if done.is_dir() => {
                let _ = fsutil::remove_tree(&tmp);
            }
            Err(e) => {
                let _ = fsutil::remove_tree(&tmp);
                return Err(io("rename into place", e));
            }
        }
        Ok((done, Some(stats)))
    }
}

fn top_folder(package: &Path, dir: &Path) -> Result<PathBuf, TreeError> {
    let src = dir.join("usr/src");
    let found: Vec<String> = fs::read_dir(&src)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    match found.as_slice() {
        [one] if src.join(one).symlink_metadata().is_ok_and(|m| m.is_dir()) => Ok(src.join(one)),
        _ => Err(TreeError::Layout { package: package.to_owned(), found }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_takes_only_what_compiling_needs() {
        let k = |s: &str| keep(Path::new(s));
        assert!(k("usr/src/linux-headers-6.1.0-56-common/include/linux/sched.h"));
        assert!(k("usr/src/linux-headers-6.1.0-56-amd64/include/generated/autoconf.h"));
        assert!(k("usr/src/linux-headers-6.1.0-56-amd64/include/config/kernel.release"));
        assert!(k("usr/src/linux-headers-6.1.0-56-amd64/arch/x86/include/generated/asm/rwonce.h"));
        assert!(k("usr/src/linux-headers-6.1.0-56-common/arch/arm64/include/asm/ptrace.h"));
        assert!(k("usr/src/linux-headers-6.1.0-56-amd64/.config"));
        assert!(k("usr/src/linux-headers-7.3.4+deb13-common/Makefile"));
        assert!(!k("usr/src/linux-headers-7.3.4+deb13-common/arch/x86/Makefile"));
        assert!(!k("usr/src/linux-headers-6.1.0-56-amd64/include/config/HAVE_KPROBES"));
        assert!(!k("usr/src/linux-headers-6.1.0-56-common/arch/mips/include/asm/ptrace.h"));
        assert!(!k("usr/src/linux-headers-6.1.0-56-common/include/dt-bindings/clock/x.h"));
        assert!(!k("usr/src/linux-headers-6.1.0-56-amd64/scripts"));
        assert!(!k("usr/src/linux-headers-6.1.0-56-amd64/Module.symvers"));
        assert!(!k("lib/modules/6.1.0-56-amd64/build"));
        assert!(!k("usr/share/doc/x/copyright"));
    }

    #[test]
    fn keep_rpm_takes_the_same_files_from_usr_src_kernels() {
        let k = |s: &str| keep_rpm(Path::new(s));
        assert!(k("usr") && k("usr/src") && k("usr/src/kernels") && k("usr/src/kernels/6.1.0-56-amd64"));
        assert!(k("usr/src/kernels/6.1.0-56-amd64/include/linux/sched.h"));
        assert!(k("usr/src/kernels/6.1.0-56-amd64/arch/x86/include/generated/asm/rwonce.h"));
        assert!(k("usr/src/kernels/6.1.0-56-amd64/.config"));
        assert!(k("usr/src/kernels/6.1.0-56-amd64/Makefile"));
        assert!(!k("usr/src/kernels/6.1.0-56-amd64/include/config/HAVE_KPROBES"));
        assert!(!k("usr/src/kernels/6.1.0-56-amd64/scripts/mod/modpost"));
        assert!(!k("usr/src/linux-headers-6.1.0-56-amd64/include/linux/sched.h"));
        assert!(!k("lib/modules/6.1.0-56-amd64/build"));
    }
}
