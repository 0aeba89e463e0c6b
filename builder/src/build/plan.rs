//! Planning: the request's inputs (`.deb` packages, header trees, BTF
//! blobs, matrix entries) become kernels to build, each named by the
//! release its own tree states, sharded, one per identity; inputs already
//! known to fail become rows of the report. Nothing is compiled here; a
//! flavour package's tree is unpacked, since only it says which kernel it
//! is.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bpfarm_object::{Arch, Digest, KernelFacts};
use rayon::prelude::*;
use sha2::{Digest as _, Sha256};

use super::report::{Failure, KernelResult, Outcome};
use super::timings::Recorder;
use super::{BuildConfig, BuildError, Request};
use crate::diagnostics;
use crate::kernel::{self, TreeFactsError};
use crate::layout::{self, LayoutError};
use crate::matrix::{Matrix, MatrixKernel};
use crate::packages::{self, DebKernel, PackageError, PackageFacts, Unpaired};
use crate::rpms;
use crate::trees::{TreeCache, TreeError};

/// Why an input cannot become a kernel to build.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error(transparent)]
    Unpaired(#[from] Box<Unpaired>),
    #[error(
        "{package} ({arch}) is not in {}, and the matrix does not pin it ([[kernel.deb]]) for fetching: \
         regenerate it with bpfarm-builder discover",
        .cache.display()
    )]
    NotInCache { package: String, arch: String, cache: PathBuf },
    #[error("{name} {version}: fetch failed: {}", crate::discover::error_chain(.source))]
    Unavailable { name: String, version: String, source: Arc<crate::fetch::FetchError> },
    #[error(
        "{name} {version} is not in {}: run bpfarm-builder fetch --matrix, or build without --no-fetch",
        .cache.display()
    )]
    NotFetched { name: String, version: String, cache: PathBuf },
    #[error("{}: holds {found}, not the pinned {pinned}", .path.display())]
    NotPinned { path: PathBuf, found: Digest, pinned: Digest },
    #[error("{0} is not a flavour package: its control data names no -common")]
    NotAFlavour(String),
    #[error("{package}: unsupported Debian arch {deb_arch}")]
    UnsupportedArch { package: String, deb_arch: String },
    #[error(transparent)]
    Tree(#[from] Arc<TreeError>),
    #[error(transparent)]
    Facts(#[from] TreeFactsError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("{}: include/generated/autoconf.h names neither CONFIG_X86_64 nor CONFIG_ARM64", .0.display())]
    NoArch(PathBuf),
    #[error("{package} holds kernel {found}, the matrix says {expected}")]
    MatrixRelease { package: String, found: String, expected: String },
    #[error("{package}: its tree usr/src/kernels/{folder} says it is kernel {release}; refused")]
    RpmRelease { package: String, folder: String, release: String },
    #[error("{package}: an {rpm_arch} package holding an {tree} kernel tree; refused")]
    RpmArch { package: String, rpm_arch: String, tree: Arch },
    #[error("two inputs for the same kernel: {first} and {second}")]
    Duplicate { first: String, second: String },
}

/// An input that will not build: its row in the report.
#[derive(Debug)]
pub(super) struct Unbuildable {
    /// The kernel release when known, else the input's name.
    kernel: String,
    arch: Option<Arch>,
    release_known: bool,
    error: PlanError,
}

impl Unbuildable {
    fn input(name: impl Into<String>, arch: Option<Arch>, error: impl Into<PlanError>) -> Box<Self> {
        Box::new(Unbuildable { kernel: name.into(), arch, release_known: false, error: error.into() })
    }

    pub(super) fn into_row(self) -> KernelResult {
        let message = self.error.to_string();
        KernelResult {
            kernel: self.kernel,
            arch: self.arch,
            release_known: self.release_known,
            duration_ms: 0,
            outcome: Outcome::Failed(Failure {
                public: diagnostics::message(&message),
                headline: message.lines().next().unwrap_or("").to_owned(),
                message,
                replayed: false,
            }),
        }
    }
}

/// `--shard K/N`: the K-th of N deterministic slices, by kernel release, so
/// every arch of one release lands in the same shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub total: usize,
}

/// A `--shard` that is not `K/N` with `1 <= K <= N`.
#[derive(Debug, thiserror::Error)]
#[error("shard {0:?}: expected K/N with 1 <= K <= N")]
pub struct ShardError(String);

impl std::str::FromStr for Shard {
    type Err = ShardError;
    fn from_str(s: &str) -> Result<Self, ShardError> {
        let bad = || ShardError(s.to_owned());
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = k.trim().parse().map_err(|_| bad())?;
        let total: usize = n.trim().parse().map_err(|_| bad())?;
        if total == 0 || index == 0 || index > total {
            return Err(bad());
        }
        Ok(Shard { index, total })
    }
}

impl Shard {
    pub fn contains(&self, release: &str) -> bool {
        let h = Sha256::digest(release.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&h[..8]);
        (u64::from_le_bytes(first) % self.total as u64) as usize == self.index - 1
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.total)
    }
}

#[derive(Debug, Clone)]
pub(super) enum Source {
    Deb(Box<DebKernel>),
    Tree { build: PathBuf, source: PathBuf },
    Btf { file: PathBuf },
}

#[derive(Debug, Clone)]
pub(super) struct KernelInput {
    pub(super) release: String,
    pub(super) arch: Arch,
    pub(super) facts: KernelFacts,
    pub(super) source: Source,
}

impl KernelInput {
    /// The `-common` package digest, to spread kernels that share it.
    pub(super) fn group(&self) -> String {
        match &self.source {
            Source::Deb(d) => d.common.digest.to_string(),
            Source::Tree { source, .. } => source.display().to_string(),
            Source::Btf { file } => file.display().to_string(),
        }
    }
}

/// Turns the request into kernels to build (and rows for inputs that are
/// already known to fail, such as a flavour package without its -common).
pub(super) fn plan(
    cfg: &BuildConfig,
    req: &Request,
    trees: &TreeCache,
    timings: &Recorder,
) -> Result<(Vec<KernelInput>, Vec<Unbuildable>), BuildError> {
    let facts_dir = cfg.cache_dir.join("facts");
    let mut failed = Vec::new();
    // What was found that will not build, and why: the listing of
    // "nothing to build".
    let mut found: Vec<String> = Vec::new();
    let mut deb_paths = Vec::new();
    let mut tree_dirs = Vec::new();
    let mut tree_inputs = Vec::new();
    for p in &req.headers {
        let has_debs = p.is_dir()
            && fs::read_dir(p)
                .map(|rd| rd.flatten().any(|e| e.path().extension().is_some_and(|x| x == "deb" || x == "rpm")))
                .unwrap_or(false);
        // A folder, or a link to one that resolves only under its own root
        // (`<chroot>/lib/modules/<r>/build -> /usr/src/...`).
        let is_tree = (p.is_dir() && !has_debs)
            || (fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()) && layout::build_tree(p).is_ok());
        if is_tree {
            tree_dirs.push(p.clone());
            match tree_input(p) {
                Ok(k) => tree_inputs.push(k),
                Err(e) => {
                    found.push(format!("{}: no .deb packages, and not a kernel header tree: {e}", p.display()));
                    failed.push(*Unbuildable::input(p.display().to_string(), None, e));
                }
            }
        } else {
            deb_paths.push(p.clone());
        }
    }
    // RPM kernel-devel packages, named or in the folders given.
    let rpm_paths =
        rpms::find_rpms(&deb_paths).map_err(|e| PackageError::Io { path: "--headers".into(), source: e })?;
    deb_paths.retain(|p| !rpms::is_rpm(p));
    let matrix = req.matrix.as_deref().map(|p| Matrix::load(p).and_then(|m| m.select(&req.select, p))).transpose()?;
    // Pinned entries name their packages by digest; the others by name, in
    // the package cache.
    let (rpm_kernels, deb_kernels): (Vec<&MatrixKernel>, Vec<&MatrixKernel>) =
        matrix.iter().flat_map(|m| &m.kernels).partition(|k| !k.rpms.is_empty());
    let (pinned, by_name): (Vec<&MatrixKernel>, Vec<&MatrixKernel>) =
        deb_kernels.into_iter().partition(|k| !k.debs.is_empty());
    let explicit: Vec<PathBuf> =
        packages::find_debs(&req.headers.iter().filter(|p| !tree_dirs.contains(p)).cloned().collect::<Vec<_>>())?;
    let wanted = |f: &PackageFacts| {
        explicit.contains(&f.path) || by_name.iter().any(|k| k.package == f.name && k.arch == f.deb_arch)
    };
    let given = packages::find_debs(&deb_paths)?;
    let cached = if by_name.is_empty() {
        Vec::new()
    } else {
        deb_paths.push(req.package_cache.clone());
        packages::find_debs(std::slice::from_ref(&req.package_cache))?
    };
    let inspect = |paths: &[PathBuf]| -> Vec<Inspection> {
        paths
            .par_iter()
            .map(|p| timings.time("inspect", &subject_name(p), || packages::inspect(p, &facts_dir)))
            .collect()
    };
    let mut facts = Vec::new();
    for (path, r) in inspect_usable(given, cached, &by_name, &wanted, &inspect) {
        match r {
            Ok(f) => facts.push(f),
            Err(e) => {
                found.push(e.to_string());
                let name =
                    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "package".into());
                failed.push(*Unbuildable::input(name, None, e));
            }
        }
    }
    // Entries by name select flavour packages by (name, Debian arch).
    for k in &by_name {
        if !facts.iter().any(|f| f.name == k.package && f.deb_arch == k.arch) {
            let e = PlanError::NotInCache {
                package: k.package.clone(),
                arch: k.arch.clone(),
                cache: req.package_cache.clone(),
            };
            found.push(e.to_string());
            failed.push(*Unbuildable::input(k.label(), Arch::from_any(&k.arch), e));
        }
    }
    let mut pairs: Vec<Result<DebKernel, Box<Unbuildable>>> = packages::pair(&facts)
        .into_iter()
        .filter(|r| {
            wanted(match r {
                Ok(d) => &d.flavour,
                Err(e) => &e.flavour,
            })
        })
        .map(|r| r.map_err(|e| Unbuildable::input(e.flavour.name.clone(), e.flavour.arch(), e)))
        .collect();
    let pinned_pairs: Vec<_> = pinned.par_iter().map(|k| pinned_pair(k, req, &facts_dir)).collect();
    pairs.extend(pinned_pairs);
    for r in &pairs {
        if let Err(u) = r {
            found.push(u.error.to_string());
        }
    }
    // Decided before any unpacking: is there anything that can build? A
    // pinned matrix kernel is a kernel even when its packages could not be
    // had: that is its failed row (exit 1), not "nothing to build".
    if !pairs.iter().any(|r| r.is_ok())
        && tree_inputs.is_empty()
        && req.btf.is_empty()
        && pinned.is_empty()
        && rpm_paths.is_empty()
        && rpm_kernels.is_empty()
    {
        for f in facts.iter().filter(|f| !f.is_flavour()) {
            found.push(format!(
                "{} {} ({}): not a flavour headers package, and no flavour among the inputs needs it",
                f.name, f.version, f.deb_arch
            ));
        }
        if found.is_empty() {
            found.push(format!(
                "no .deb packages or header trees in {}",
                deb_paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ));
        }
        return Err(BuildError::NothingToBuild { found });
    }

    // Each flavour package's tree says which kernel it is (unpacked once;
    // cheap, and needed for the build anyway).
    let deb_inputs: Vec<Result<KernelInput, Box<Unbuildable>>> = pairs
        .into_par_iter()
        .map(|r| {
            let d = r?;
            let label = d.flavour.name.as_str();
            let arch = d.flavour.arch().ok_or_else(|| {
                Unbuildable::input(
                    label,
                    None,
                    PlanError::UnsupportedArch { package: label.to_owned(), deb_arch: d.flavour.deb_arch.clone() },
                )
            })?;
            let fail = |e: PlanError| Unbuildable::input(label, Some(arch), e);
            let tree = super::timings::tree(timings, trees, &d.flavour).map_err(|e| fail(e.into()))?;
            let tf = kernel::tree_facts(&tree.root).map_err(|e| fail(e.into()))?;
            if let Some(expected) = matrix
                .as_ref()
                .and_then(|m| m.kernels.iter().find(|k| k.package == d.flavour.name))
                .and_then(|k| k.release.clone())
                && expected != tf.release
            {
                return Err(fail(PlanError::MatrixRelease { package: label.to_owned(), found: tf.release, expected }));
            }
            Ok(KernelInput { release: tf.release, arch, facts: tf.facts, source: Source::Deb(Box::new(d)) })
        })
        .collect();
    let mut inputs = Vec::new();
    for r in deb_inputs {
        match r {
            Ok(k) => inputs.push(k),
            Err(u) => failed.push(*u),
        }
    }
    inputs.extend(tree_inputs);
    // An RPM is one self-contained tree: unpacked once, it says its kernel.
    let mut rpm_inputs: Vec<Result<KernelInput, Box<Unbuildable>>> =
        rpm_paths.par_iter().map(|p| rpm_input(p, None, trees)).collect();
    rpm_inputs.extend(rpm_kernels.par_iter().map(|k| pinned_rpm(k, req, trees)).collect::<Vec<_>>());
    for r in rpm_inputs {
        match r {
            Ok(k) => inputs.push(k),
            Err(u) => failed.push(*u),
        }
    }
    for b in &req.btf {
        inputs.push(KernelInput {
            release: b.release.clone(),
            arch: b.arch,
            facts: b.facts.clone(),
            source: Source::Btf { file: b.file.clone() },
        });
    }
    if let Some(shard) = cfg.shard {
        inputs.retain(|k| shard.contains(&k.release));
        failed.retain(|r| shard.contains(&r.kernel));
    }
    // One object per identity: a second input for the same (release, arch) is refused.
    inputs.sort_by(|a, b| (&a.release, a.arch, a.group()).cmp(&(&b.release, b.arch, b.group())));
    let mut seen: HashMap<(String, Arch), String> = HashMap::new();
    inputs.retain(|k| match seen.get(&(k.release.clone(), k.arch)) {
        Some(first) => {
            failed.push(Unbuildable {
                kernel: k.release.clone(),
                arch: Some(k.arch),
                release_known: false,
                error: PlanError::Duplicate { first: first.clone(), second: describe(&k.source) },
            });
            false
        }
        None => {
            seen.insert((k.release.clone(), k.arch), describe(&k.source));
            true
        }
    });
    // Spread kernels that share a -common package across the queue so
    // workers do not wait on each other's unpack of it.
    let mut rank: BTreeMap<String, usize> = BTreeMap::new();
    let mut keyed: Vec<(usize, String, KernelInput)> = inputs
        .into_iter()
        .map(|k| {
            let g = k.group();
            let r = rank.entry(g.clone()).or_default();
            *r += 1;
            (*r, g, k)
        })
        .collect();
    keyed.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    Ok((keyed.into_iter().map(|(_, _, k)| k).collect(), failed))
}

/// What inspecting one package found.
type Inspection = Result<PackageFacts, PackageError>;

/// What `inspect` found for each package path.
type Inspected = Vec<(PathBuf, Inspection)>;

/// Inspects the packages the build can use: every package given with
/// `--headers`, and of the package cache (`cached`, read for by-name
/// matrix entries) only those whose apt file name (`packages::apt_name`)
/// is an entry's flavour package, then those a wanted flavour's control
/// data names as its `-common` or `linux-kbuild` partner (at the version
/// pairing would pick, then at any version). A file name only
/// says which packages to open; each one opened is inspected in full and
/// its control data alone says what it is, as before. Should that leave an
/// entry without its flavour or a wanted flavour without a partner (a
/// package under another file name), the rest of the cache is inspected
/// too, so nothing a full scan would build fails here. Where the packages
/// carry apt's names (as `fetch` and apt write them) each kernel gets the
/// packages a full scan gives it; what is not opened is neither chosen nor
/// reported (a broken package no kernel names no longer fails the build,
/// unless the fall-back to the whole cache above runs: then all is
/// inspected and reported as before).
/// The results come in path order, the order a full scan has.
fn inspect_usable(
    given: Vec<PathBuf>,
    cached: Vec<PathBuf>,
    by_name: &[&MatrixKernel],
    wanted: &dyn Fn(&PackageFacts) -> bool,
    inspect: &dyn Fn(&[PathBuf]) -> Vec<Inspection>,
) -> Inspected {
    let mut done: Inspected = Vec::new();
    let run = |paths: Vec<PathBuf>, done: &mut Inspected| {
        let results = inspect(&paths);
        done.extend(paths.into_iter().zip(results));
    };
    let rest: Vec<PathBuf> = cached.into_iter().filter(|p| !given.contains(p)).collect();
    run(given, &mut done);
    // What a file's apt name must say to be opened: a name, an arch, and a
    // version when only one can be chosen.
    type Want = (String, String, Option<String>);
    let named = |p: &PathBuf, wants: &[Want]| {
        packages::apt_name(p).is_some_and(|a| {
            wants
                .iter()
                .any(|(n, arch, v)| *n == a.name && *arch == a.arch && v.as_ref().is_none_or(|v| *v == a.version))
        })
    };
    let entries: Vec<Want> = by_name.iter().map(|k| (k.package.clone(), k.arch.clone(), None)).collect();
    let (flavours, rest): (Vec<PathBuf>, Vec<PathBuf>) = rest.into_iter().partition(|p| named(p, &entries));
    run(flavours, &mut done);
    // The partners `packages::pair` would choose: the `-common` of the
    // flavour's arch or `all` at the exact version its `Depends` pins, the
    // `linux-kbuild` of its arch at the flavour's own version (the one
    // pairing prefers over every other). Then, if that does not pair,
    // every version of them; then the rest of the cache.
    let partners = |done: &Inspected, exact: bool| -> Vec<Want> {
        let mut v = Vec::new();
        for f in done.iter().filter_map(|(_, r)| r.as_ref().ok()).filter(|f| wanted(f)) {
            if let Some(d) = f.common_dep() {
                let pinned = d.constraint.as_ref().filter(|(op, _)| exact && op == "=").map(|(_, v)| v.clone());
                v.push((d.name.clone(), "all".to_owned(), pinned.clone()));
                v.push((d.name.clone(), f.deb_arch.clone(), pinned));
            }
            if let Some(d) = f.kbuild_dep() {
                v.push((d.name.clone(), f.deb_arch.clone(), exact.then(|| f.version.clone())));
            }
        }
        v
    };
    // `strict`: a wanted flavour must also have its kbuild at its own
    // version, or the other versions must be looked at first.
    let complete = |done: &Inspected, strict: bool| {
        let facts: Vec<PackageFacts> = done.iter().filter_map(|(_, r)| r.as_ref().ok().cloned()).collect();
        by_name.iter().all(|k| facts.iter().any(|f| f.name == k.package && f.deb_arch == k.arch))
            && packages::pair(&facts).iter().all(|r| match r {
                Ok(d) => !strict || !wanted(&d.flavour) || d.kbuild.version == d.flavour.version,
                // No package can supply a kbuild the flavour does not name.
                Err(u) => !wanted(&u.flavour) || matches!(u.missing, packages::Missing::KbuildDepends),
            })
    };
    let wants = partners(&done, true);
    let (found, mut rest): (Vec<PathBuf>, Vec<PathBuf>) = rest.into_iter().partition(|p| named(p, &wants));
    run(found, &mut done);
    if !complete(&done, true) {
        let wants = partners(&done, false);
        let (found, others): (Vec<PathBuf>, Vec<PathBuf>) = rest.into_iter().partition(|p| named(p, &wants));
        run(found, &mut done);
        rest = others;
    }
    if !complete(&done, false) {
        run(rest, &mut done);
    }
    done.sort_by(|a, b| a.0.cmp(&b.0));
    done
}

/// A pinned matrix kernel: its three packages from the digest store, paired
/// by the same control-data rules as any other packages.
fn pinned_pair(k: &MatrixKernel, req: &Request, facts_dir: &Path) -> Result<DebKernel, Box<Unbuildable>> {
    let arch = Arch::from_any(&k.arch);
    let fail = |e: PlanError| Unbuildable::input(k.label(), arch, e);
    let mut facts = Vec::new();
    for d in &k.debs {
        let path = crate::fetch::store_path(&req.package_cache, &d.sha256);
        if !path.is_file() {
            let (name, version) = (d.name.clone(), d.version.clone());
            return Err(fail(match req.unavailable.get(&d.sha256) {
                Some(e) => PlanError::Unavailable { name, version, source: e.clone() },
                None => PlanError::NotFetched { name, version, cache: req.package_cache.clone() },
            }));
        }
        let f = packages::inspect(&path, facts_dir).map_err(|e| fail(e.into()))?;
        if f.digest != d.sha256 {
            return Err(fail(PlanError::NotPinned { path, found: f.digest, pinned: d.sha256.clone() }));
        }
        facts.push(f);
    }
    let found = packages::pair(&facts).into_iter().find(|r| match r {
        Ok(d) => d.flavour.name == k.package,
        Err(e) => e.flavour.name == k.package,
    });
    match found {
        Some(Ok(d)) => Ok(d),
        Some(Err(e)) => Err(fail(e.into())),
        None => Err(fail(PlanError::NotAFlavour(k.package.clone()))),
    }
}

fn describe(s: &Source) -> String {
    match s {
        Source::Deb(d) => d.flavour.path.display().to_string(),
        Source::Tree { build, .. } => build.display().to_string(),
        Source::Btf { file } => file.display().to_string(),
    }
}

/// An RPM `kernel-devel` package: its `usr/src/kernels/<release>` tree,
/// unpacked into the tree cache, whose own release must be the folder's name
/// and whose arch the package's.
fn rpm_input(path: &Path, pinned: Option<(&str, &Digest)>, trees: &TreeCache) -> Result<KernelInput, Box<Unbuildable>> {
    let label = match pinned {
        Some((label, _)) => label.to_owned(),
        None => path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "package".into()),
    };
    let facts = rpms::rpm_info(path).map_err(|e| Unbuildable::input(&label, None, PackageError::from(e)))?;
    let fail = |e: PlanError| Unbuildable::input(&label, facts.arch(), e);
    if let Some((_, digest)) = pinned
        && facts.digest != *digest
    {
        return Err(fail(PlanError::NotPinned {
            path: path.to_owned(),
            found: facts.digest.clone(),
            pinned: digest.clone(),
        }));
    }
    let tree = trees.get_rpm(&facts).map_err(|e| fail(e.into()))?;
    let tf = kernel::tree_facts(&tree.root).map_err(|e| fail(e.into()))?;
    let folder = tree.root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if folder != tf.release {
        return Err(fail(PlanError::RpmRelease { package: label.clone(), folder, release: tf.release }));
    }
    let arch = tf.arch.ok_or_else(|| fail(PlanError::NoArch(tree.root.clone())))?;
    if facts.arch().is_some_and(|a| a != arch) {
        return Err(fail(PlanError::RpmArch { package: label.clone(), rpm_arch: facts.rpm_arch.clone(), tree: arch }));
    }
    Ok(KernelInput {
        release: tf.release,
        arch,
        facts: tf.facts,
        source: Source::Tree { build: tree.root.clone(), source: tree.root },
    })
}

/// A matrix kernel pinned to one RPM (`[[kernel.rpm]]`), from the digest store.
fn pinned_rpm(k: &MatrixKernel, req: &Request, trees: &TreeCache) -> Result<KernelInput, Box<Unbuildable>> {
    let arch = Arch::from_any(&k.arch);
    let fail = |e: PlanError| Unbuildable::input(k.label(), arch, e);
    let Some(r) = k.rpms.first() else { return Err(fail(PlanError::NotAFlavour(k.package.clone()))) };
    let path = crate::fetch::store_path(&req.package_cache, &r.sha256);
    if !path.is_file() {
        let (name, version) = (r.name.clone(), r.version.clone());
        return Err(fail(match req.unavailable.get(&r.sha256) {
            Some(e) => PlanError::Unavailable { name, version, source: e.clone() },
            None => PlanError::NotFetched { name, version, cache: req.package_cache.clone() },
        }));
    }
    rpm_input(&path, Some((k.label(), &r.sha256)), trees)
}

/// An unpacked header tree: `build` is the configured tree, paired with its
/// kernel source tree as installed layouts do it (see `layout`).
fn tree_input(given: &Path) -> Result<KernelInput, PlanError> {
    let build = layout::build_tree(given)?;
    let tf = kernel::tree_facts(&build)?;
    let arch = tf.arch.ok_or_else(|| PlanError::NoArch(build.clone()))?;
    let l = layout::resolve(given, &tf.release)?;
    tracing::info!(
        "{}: build tree {}, source tree {} ({})",
        given.display(),
        l.build.display(),
        l.source.display(),
        l.how
    );
    Ok(KernelInput {
        release: tf.release,
        arch,
        facts: tf.facts,
        source: Source::Tree { build: l.build, source: l.source },
    })
}

/// A package's file name for the timings (never the host path of the
/// package cache).
fn subject_name(p: &std::path::Path) -> String {
    p.file_name().unwrap_or(p.as_os_str()).to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_parsing_and_partition() {
        assert!("0/2".parse::<Shard>().is_err());
        assert!("3/2".parse::<Shard>().is_err());
        assert!("x/2".parse::<Shard>().is_err());
        let shards: Vec<Shard> = (1..=3).map(|i| format!("{i}/3").parse().unwrap()).collect();
        let releases: Vec<String> = (40..80).map(|n| format!("6.1.0-{n}-amd64")).collect();
        for r in &releases {
            // Every release is in exactly one shard, whichever process asks.
            assert_eq!(shards.iter().filter(|s| s.contains(r)).count(), 1, "{r}");
        }
        assert!(shards.iter().all(|s| releases.iter().any(|r| s.contains(r))), "a shard got nothing of 40");
    }
}
