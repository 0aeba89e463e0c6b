//! `bpfarm-builder discover`: which kernels a Debian archive serves, as a
//! pinned matrix.
//!
//! 1. Find the suites: each archive root is asked for the suite classes
//!    (`oldoldstable` … `experimental`) and the suites its apt entry names;
//!    every codename found that way is then asked for its `-updates`,
//!    `-backports`, `-backports-sloppy` and `-security` suites on every
//!    root. What exists is what the mirror answers, not a list kept here.
//!    `--suite` skips the walk.
//! 2. Per suite: `InRelease`, verified with gpgv against the archive keyring;
//!    per suite and arch: `Packages.xz`, checked against the signed SHA256.
//! 3. Pair every flavour package with its `-common` and `linux-kbuild` with
//!    the builder's own rules (`packages::pair`), and merge the suites into
//!    one matrix in a stable order.
//!
//! The completeness guard: any index that cannot be read, verified or
//! checked makes the whole run an error naming every such index, so a
//! partial crawl is never mistaken for the archive.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bpfarm_object::Arch;
use rayon::prelude::*;

use crate::archive::{self, Archive, HttpError};
use crate::archive::{index, release, sources};
use crate::matrix::{Matrix, MatrixDeb, MatrixKernel, MatrixSuite};
use crate::packages::{self, PackageFacts};

/// Debian's suite classes; each is an alias of one release's codename.
pub const SUITE_CLASSES: [&str; 6] = ["oldoldstable", "oldstable", "stable", "testing", "unstable", "experimental"];
/// The suites that ride along with a release codename.
pub const COMPANIONS: [&str; 5] = ["", "-updates", "-backports", "-backports-sloppy", "-security"];

/// `InRelease` files are ~200 KiB; anything this large is not one.
const INRELEASE_LIMIT: u64 = 16 << 20;

/// One archive root and the suites the machine's apt entry names there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    pub uri: String,
    pub suites: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct DiscoverConfig {
    pub roots: Vec<Root>,
    /// Only these suites (no walk) when not empty.
    pub suites: Vec<String>,
    pub arches: Vec<Arch>,
    pub keyring: PathBuf,
    /// An expired `Valid-Until` is an error (else a warning).
    pub check_valid_until: bool,
    /// Parallel requests.
    pub jobs: usize,
    /// The matrix's `name`.
    pub name: String,
}

/// An index that could not be read, verified or checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexFailure {
    /// `bookworm-security InRelease`, `trixie arm64 Packages.xz`.
    pub index: String,
    pub url: String,
    pub reason: String,
}

impl std::fmt::Display for IndexFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.index, self.url, self.reason)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("no archive to read: the apt sources name no Debian archive; pass --apt-source URI")]
    NoRoots,
    #[error("{}", incomplete(.0))]
    Incomplete(Vec<IndexFailure>),
    #[error("none of {roots} serves a Debian suite")]
    NoSuites { roots: String },
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("could not start {jobs} request workers: {reason}")]
    Pool { jobs: usize, reason: String },
    #[error(transparent)]
    Sources(#[from] sources::SourcesError),
    #[error("--apt-source {0:?} is not an http:// or https:// URI")]
    BadUri(String),
}

/// The archive roots: the `explicit` URIs (`--apt-source`) when given, else
/// the `deb` entries of the apt sources under `apt_dir` that are signed by
/// `keyring` or name no keyring (entries pinned to another vendor's keyring
/// are skipped, and said so through `say`).
pub fn roots(
    explicit: &[String],
    apt_dir: &Path,
    keyring: &Path,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Vec<Root>, DiscoverError> {
    if !explicit.is_empty() {
        let mut out: Vec<Root> = Vec::new();
        for u in explicit {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(DiscoverError::BadUri(u.clone()));
            }
            let uri = u.trim_end_matches('/').to_owned();
            if !out.iter().any(|r| r.uri == uri) {
                out.push(Root { uri, suites: vec![] });
            }
        }
        return Ok(out);
    }
    let all = sources::read(apt_dir)?;
    let (used, skipped) = sources::debian_roots(&all, keyring);
    for s in skipped {
        say(&format!(
            "discover: skipping {} ({}): signed by {}, not {}",
            s.uri,
            s.file.display(),
            s.signed_by.as_deref().unwrap_or("?"),
            keyring.display()
        ));
    }
    Ok(used
        .into_iter()
        .filter(|s| s.uri.starts_with("http://") || s.uri.starts_with("https://"))
        .map(|s| Root { uri: s.uri, suites: s.suites })
        .collect())
}

fn incomplete(f: &[IndexFailure]) -> String {
    let mut s = format!(
        "{} ind{} failed, so the archive was not read completely (nothing written):",
        f.len(),
        if f.len() == 1 { "ex" } else { "ices" }
    );
    for x in f {
        s.push_str("\n  ");
        s.push_str(&x.to_string());
    }
    s
}

/// What one suite gave, for the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuiteStats {
    pub suite: String,
    /// Per arch: kernels paired, flavours that could not be paired, and the
    /// index's compressed size.
    pub arches: Vec<(Arch, usize, usize, u64)>,
}

#[derive(Debug, Clone)]
pub struct Discovery {
    pub matrix: Matrix,
    pub stats: Vec<SuiteStats>,
    /// Things said on the way (expired Valid-Until, unpairable flavours, a
    /// kernel whose packages differ between suites).
    pub notes: Vec<String>,
    pub duration: std::time::Duration,
}

/// A suite found on a root.
#[derive(Debug, Clone)]
struct Found {
    root: String,
    dir: String,
    release: release::Release,
}

impl Found {
    fn url(&self, path: &str) -> String {
        archive::join(&self.root, &format!("dists/{}/{}", self.dir, path))
    }
}

/// Reads the archive. `say` gets one line per step (progress for stderr).
pub fn discover(cfg: &DiscoverConfig, http: &Archive, say: &(dyn Fn(&str) + Sync)) -> Result<Discovery, DiscoverError> {
    let start = Instant::now();
    if cfg.roots.is_empty() {
        return Err(DiscoverError::NoRoots);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.jobs.max(1))
        .build()
        .map_err(|e| DiscoverError::Pool { jobs: cfg.jobs, reason: e.to_string() })?;
    let mut notes = Vec::new();
    let mut failures = Vec::new();
    let found = pool.install(|| find_suites(cfg, http, &mut failures));
    if found.is_empty() && failures.is_empty() {
        let roots = cfg.roots.iter().map(|r| r.uri.as_str()).collect::<Vec<_>>().join(", ");
        return Err(DiscoverError::NoSuites { roots });
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    for f in &found {
        say(&format!(
            "discover: {} ({}{}), signed {}",
            f.dir,
            f.release.codename.as_deref().unwrap_or("?"),
            f.release.suite.as_deref().map(|s| format!(", {s}")).unwrap_or_default(),
            f.release.date.as_deref().unwrap_or("at an unknown date")
        ));
        if f.release.expired(now) == Some(true) {
            let msg = format!(
                "{} InRelease expired at {} (Valid-Until): the mirror is not current",
                f.dir,
                f.release.valid_until.as_deref().unwrap_or("?")
            );
            if cfg.check_valid_until {
                failures.push(IndexFailure {
                    index: format!("{} InRelease", f.dir),
                    url: f.url("InRelease"),
                    reason: msg,
                });
            } else {
                say(&format!("discover: warning: {msg}"));
                notes.push(msg);
            }
        }
    }
    // Per suite and arch: the package index and its kernels.
    let jobs: Vec<(&Found, Arch)> = found.iter().flat_map(|f| cfg.arches.iter().map(move |a| (f, *a))).collect();
    let results: Vec<IndexResult> =
        pool.install(|| jobs.par_iter().map(|(f, a)| read_index(f, *a, http, say)).collect());

    let mut kernels: BTreeMap<(Vec<Part>, String, String), MatrixKernel> = BTreeMap::new();
    let mut stats: BTreeMap<String, SuiteStats> = BTreeMap::new();
    let mut suites: BTreeMap<String, MatrixSuite> = BTreeMap::new();
    for ((f, arch), r) in jobs.iter().zip(results) {
        let st = stats.entry(f.dir.clone()).or_insert_with(|| SuiteStats { suite: f.dir.clone(), arches: vec![] });
        let ms = suites.entry(f.dir.clone()).or_insert_with(|| MatrixSuite {
            name: f.dir.clone(),
            codename: f.release.codename.clone(),
            class: f.release.suite.clone(),
            date: f.release.date.clone(),
            valid_until: f.release.valid_until.clone(),
            arches: vec![],
            kernels: vec![],
        });
        let (paired, unpaired, bytes) = match r {
            IndexResult::Failed(x) => {
                failures.push(x);
                continue;
            }
            IndexResult::NoArch => {
                notes.push(format!("{} does not carry {}", f.dir, arch.debian()));
                continue;
            }
            IndexResult::Read { paired, unpaired, bytes } => (paired, unpaired, bytes),
        };
        st.arches.push((*arch, paired.len(), unpaired.len(), bytes));
        ms.arches.push(arch.debian().to_owned());
        ms.kernels.push(paired.len());
        for (pkg, why) in unpaired {
            notes.push(format!("{} {}: {pkg} left out: {why}", f.dir, arch.debian()));
        }
        for k in paired {
            let release = k.release.clone().unwrap_or_default();
            let key = (natural(&release), release, k.arch.clone());
            match kernels.get_mut(&key) {
                None => {
                    kernels.insert(key, k);
                }
                Some(have) => {
                    if have.debs != k.debs {
                        notes.push(format!(
                            "{} ({}): {} pairs other packages than {}; keeping {}'s",
                            k.package,
                            k.arch,
                            f.dir,
                            have.suites.join(", "),
                            have.suites.first().map(String::as_str).unwrap_or("?")
                        ));
                    }
                    have.suites.extend(k.suites);
                }
            }
        }
    }
    if !failures.is_empty() {
        failures.sort_by(|a, b| (&a.index, &a.url).cmp(&(&b.index, &b.url)));
        return Err(DiscoverError::Incomplete(failures));
    }
    let matrix = Matrix {
        name: cfg.name.clone(),
        distro: "debian".into(),
        suites: suites.into_values().collect(),
        kernels: kernels.into_values().collect(),
    };
    Ok(Discovery { matrix, stats: stats.into_values().collect(), notes, duration: start.elapsed() })
}

/// GETs and verifies `dists/<dir>/InRelease` on `root`; `Ok(None)` when the
/// root does not serve that suite.
fn probe(cfg: &DiscoverConfig, http: &Archive, root: &str, dir: &str) -> Result<Option<Found>, IndexFailure> {
    let url = archive::join(root, &format!("dists/{dir}/InRelease"));
    let fail = |reason: String| IndexFailure { index: format!("{dir} InRelease"), url: url.clone(), reason };
    let Some(bytes) = http.get_bytes(&url, INRELEASE_LIMIT).map_err(|e| fail(error_chain(&e)))? else {
        return Ok(None);
    };
    let text = release::verify(&bytes, &cfg.keyring).map_err(|e| fail(e.to_string()))?;
    let release = release::parse(&text).map_err(|e| fail(e.to_string()))?;
    Ok(Some(Found { root: root.to_owned(), dir: dir.to_owned(), release }))
}

/// The suites to read, in a stable order (by folder name), each once.
fn find_suites(cfg: &DiscoverConfig, http: &Archive, failures: &mut Vec<IndexFailure>) -> Vec<Found> {
    let mut probed: BTreeSet<(String, String)> = BTreeSet::new();
    let mut found: Vec<Found> = Vec::new();
    let mut run = |candidates: Vec<(String, String)>, found: &mut Vec<Found>, failures: &mut Vec<IndexFailure>| {
        let fresh: Vec<(String, String)> = candidates.into_iter().filter(|c| probed.insert(c.clone())).collect();
        let got: Vec<Result<Option<Found>, IndexFailure>> =
            fresh.par_iter().map(|(root, dir)| probe(cfg, http, root, dir)).collect();
        for g in got {
            match g {
                Ok(Some(f)) => found.push(f),
                Ok(None) => {}
                Err(e) => failures.push(e),
            }
        }
    };
    if !cfg.suites.is_empty() {
        // Explicit suites: the first root that serves each.
        for s in &cfg.suites {
            let mut hit = None;
            for r in &cfg.roots {
                match probe(cfg, http, &r.uri, s) {
                    Ok(Some(f)) => {
                        hit = Some(f);
                        break;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        failures.push(e);
                        hit = None;
                        break;
                    }
                }
            }
            match hit {
                Some(f) => found.push(f),
                None if failures.iter().any(|f| f.index == format!("{s} InRelease")) => {}
                None => failures.push(IndexFailure {
                    index: format!("{s} InRelease"),
                    url: cfg.roots.iter().map(|r| r.uri.as_str()).collect::<Vec<_>>().join(", "),
                    reason: "no archive root serves this suite (HTTP 404)".into(),
                }),
            }
        }
        found.sort_by(|a, b| a.dir.cmp(&b.dir));
        return found;
    }
    // Round 1: the classes and the configured suites, on every root.
    let first: Vec<(String, String)> = cfg
        .roots
        .iter()
        .flat_map(|r| {
            SUITE_CLASSES.iter().map(|c| c.to_string()).chain(r.suites.iter().cloned()).map(|s| (r.uri.clone(), s))
        })
        .collect();
    run(first, &mut found, failures);
    // Round 2: every codename's companions, on every root.
    let bases: BTreeSet<String> = found
        .iter()
        .filter_map(|f| f.release.codename.as_deref())
        .filter_map(|c| c.split('-').next())
        .map(str::to_owned)
        .collect();
    let second: Vec<(String, String)> = cfg
        .roots
        .iter()
        .flat_map(|r| {
            bases.iter().flat_map(|b| COMPANIONS.iter().map(move |s| format!("{b}{s}"))).map(|s| (r.uri.clone(), s))
        })
        .collect();
    run(second, &mut found, failures);
    // One entry per (codename, or folder when there is none): the folder
    // named by the codename where the root has one (aliases like `stable`
    // may lag behind it), else the first root's alias (`experimental`).
    let root_rank = |uri: &str| cfg.roots.iter().position(|r| r.uri == uri).unwrap_or(usize::MAX);
    found.sort_by(|a, b| {
        let key = |f: &Found| {
            let named = f.release.codename.as_deref() == Some(f.dir.as_str());
            (f.release.codename.clone().unwrap_or_else(|| f.dir.clone()), !named, root_rank(&f.root), f.dir.clone())
        };
        key(a).cmp(&key(b))
    });
    found.dedup_by(|b, a| {
        a.release.codename.clone().unwrap_or_else(|| a.dir.clone())
            == b.release.codename.clone().unwrap_or_else(|| b.dir.clone())
    });
    found.sort_by(|a, b| a.dir.cmp(&b.dir));
    found
}

enum IndexResult {
    Read { paired: Vec<MatrixKernel>, unpaired: Vec<(String, String)>, bytes: u64 },
    NoArch,
    Failed(IndexFailure),
}

fn read_index(f: &Found, arch: Arch, http: &Archive, say: &(dyn Fn(&str) + Sync)) -> IndexResult {
    let deb_arch = arch.debian();
    if !f.release.architectures.is_empty() && !f.release.architectures.iter().any(|a| a == deb_arch) {
        return IndexResult::NoArch;
    }
    let label = format!("{} {deb_arch} Packages.xz", f.dir);
    let Some(idx) = f.release.packages_index(deb_arch) else {
        return IndexResult::Failed(IndexFailure {
            index: label,
            url: f.url("InRelease"),
            reason: format!("the signed Release lists no main/binary-{deb_arch}/Packages.xz"),
        });
    };
    let url = f.url(&idx.path);
    let fail = |reason: String| IndexResult::Failed(IndexFailure { index: label.clone(), url: url.clone(), reason });
    let bytes = match http.get_bytes(&url, idx.size) {
        Ok(Some(b)) => b,
        Ok(None) => return fail("HTTP 404, though the signed Release lists it".into()),
        Err(e) => return fail(error_chain(&e)),
    };
    let facts = match index::read(&idx, &bytes) {
        Ok(f) => f,
        Err(e) => return fail(e.to_string()),
    };
    let facts: Vec<PackageFacts> =
        facts.into_iter().filter(|p| p.deb_arch == deb_arch || p.deb_arch == "all").collect();
    let mut paired = Vec::new();
    let mut unpaired = Vec::new();
    for r in packages::pair(&facts) {
        match r {
            Ok(k) if k.flavour.deb_arch == deb_arch => paired.push(kernel_of(&k, &f.dir)),
            Ok(_) => {}
            Err(e) => unpaired.push((e.flavour.name.clone(), e.to_string())),
        }
    }
    say(&format!(
        "discover: {} {deb_arch}: {} kernels ({} KiB index){}",
        f.dir,
        paired.len(),
        bytes.len() / 1024,
        if unpaired.is_empty() { String::new() } else { format!(", {} unpaired", unpaired.len()) }
    ));
    IndexResult::Read { paired, unpaired, bytes: bytes.len() as u64 }
}

fn kernel_of(k: &packages::DebKernel, suite: &str) -> MatrixKernel {
    let deb = |p: &PackageFacts| MatrixDeb {
        name: p.name.clone(),
        version: p.version.clone(),
        arch: p.deb_arch.clone(),
        filename: p.path.to_string_lossy().into_owned(),
        size: p.size,
        sha256: p.digest.clone(),
    };
    MatrixKernel {
        // Debian names flavour packages linux-headers-<release>; the build
        // checks it against the tree's UTS_RELEASE.
        release: k.flavour.name.strip_prefix("linux-headers-").map(str::to_owned),
        arch: k.flavour.deb_arch.clone(),
        package: k.flavour.name.clone(),
        suites: vec![suite.to_owned()],
        debs: vec![deb(&k.flavour), deb(&k.common), deb(&k.kbuild)],
        rpms: vec![],
    }
}

/// Text and numbers, so `6.1.0-9` sorts before `6.1.0-10` and `6.12`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    Num(u64),
    Text(String),
}

pub fn natural(s: &str) -> Vec<Part> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut digits = false;
    for c in s.chars() {
        if !cur.is_empty() && c.is_ascii_digit() != digits {
            out.push(part(&cur, digits));
            cur.clear();
        }
        digits = c.is_ascii_digit();
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(part(&cur, digits));
    }
    out
}

fn part(s: &str, digits: bool) -> Part {
    match s.parse() {
        Ok(n) if digits => Part::Num(n),
        _ => Part::Text(s.to_owned()),
    }
}

/// An error and its causes on one line (reqwest's top level says little).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

impl Discovery {
    /// The per suite × arch table printed after a run.
    pub fn table(&self) -> String {
        let mut s = format!("{:<28} {:<6} {:>7} {:>9} {:>9}\n", "SUITE", "ARCH", "KERNELS", "UNPAIRED", "INDEX KiB");
        for st in &self.stats {
            for (arch, n, u, bytes) in &st.arches {
                s += &format!("{:<28} {:<6} {:>7} {:>9} {:>9}\n", st.suite, arch.debian(), n, u, bytes / 1024);
            }
        }
        let m = &self.matrix;
        let arches: BTreeSet<&str> = m.kernels.iter().map(|k| k.arch.as_str()).collect();
        s += &format!(
            "{} kernels ({}) from {} suites in {:.1}s\n",
            m.kernels.len(),
            arches.into_iter().collect::<Vec<_>>().join(", "),
            m.suites.len(),
            self.duration.as_secs_f64()
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        let mut v = vec!["6.12.1-amd64", "6.1.0-10-amd64", "5.10.0-9-amd64", "6.1.0-9-amd64", "7.3-amd64"];
        v.sort_by_key(|s| natural(s));
        assert_eq!(v, ["5.10.0-9-amd64", "6.1.0-9-amd64", "6.1.0-10-amd64", "6.12.1-amd64", "7.3-amd64"]);
    }
}
