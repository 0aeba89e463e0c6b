//! The build: plan the kernels (inspect and pair packages, read kernel facts,
//! shard), then build each — cache lookup, unpack what is missing, compile,
//! validate, store — on `jobs` workers, and write objects with their
//! metadata into the output folder.
//!
//! A kernel that fails does not stop the others; the report says what
//! happened to each. Everything that makes the whole run pointless (a
//! missing input, an invalid `--version`, nothing that can pair into a
//! kernel, no sandbox for the compiler) is an error before any work starts.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bpfarm_object::embed::{self, EmbeddedIdentity};
use bpfarm_object::{Arch, Compiler, Digest, Identity, KernelFacts, ObjectMetadata, SourceKind, SourcePackage};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::btf::Bpftool;
use crate::cache::{self, Cached, KeyInputs, ObjectCache};
use crate::compile::{self, CompileJob, Mode, Toolchain, Toolchains};
use crate::diagnostics::{self, PathMap};
use crate::fsutil;
use crate::kernel;
use crate::layout;
use crate::limits::Limits;
use crate::matrix::{Matrix, MatrixKernel};
use crate::packages::{self, DebKernel, PackageFacts};
use crate::program::ProgramSources;
use crate::sandbox::{Sandbox, SandboxError, SandboxMode};
use crate::treefs;
use crate::trees::{self, TreeCache};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cache folder {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("output folder {path}: {source}")]
    Out {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Toolchain(#[from] compile::CompileError),
    #[error(transparent)]
    Packages(#[from] packages::PackageError),
    #[error(transparent)]
    Matrix(#[from] crate::matrix::MatrixError),
    #[error("nothing to build: give --headers, --matrix, --btf or --running-kernel")]
    NoInputs,
    #[error("nothing to build; found:\n{}", found.iter().map(|f| format!("  {f}")).collect::<Vec<_>>().join("\n"))]
    NothingToBuild { found: Vec<String> },
    #[error("input {path}: {reason}")]
    Input { path: PathBuf, reason: String },
    #[error(transparent)]
    Version(#[from] bpfarm_object::identity::IdentityError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("could not start {jobs} build workers: {reason}")]
    Pool { jobs: usize, reason: String },
}

/// `--shard K/N`: the K-th of N deterministic slices, by kernel release, so
/// every arch of one release lands in the same shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub total: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (k, n) = s.split_once('/').ok_or_else(|| format!("shard {s:?} is not K/N"))?;
        let index: usize = k.trim().parse().map_err(|_| format!("shard index {k:?} is not a number"))?;
        let total: usize = n.trim().parse().map_err(|_| format!("shard count {n:?} is not a number"))?;
        if total == 0 || index == 0 || index > total {
            return Err(format!("shard {s:?}: need 1 <= K <= N"));
        }
        Ok(Shard { index, total })
    }
}

impl Shard {
    pub fn contains(&self, release: &str) -> bool {
        let h = Sha256::digest(release.as_bytes());
        let n = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
        (n % self.total as u64) as usize == self.index - 1
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.total)
    }
}

/// A BTF blob to build against.
#[derive(Debug, Clone)]
pub struct BtfInput {
    pub file: PathBuf,
    pub release: String,
    pub arch: Arch,
    pub facts: KernelFacts,
}

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `.deb` files, folders of them, or unpacked header trees.
    pub headers: Vec<PathBuf>,
    pub matrix: Option<PathBuf>,
    /// The package cache: pinned packages under `sha256/`, others by name.
    pub package_cache: PathBuf,
    pub btf: Vec<BtfInput>,
    /// `--select`: regexes on the kernel release picking matrix kernels.
    pub select: Vec<String>,
    /// Why a pinned package is not in the store (a failed fetch), by digest.
    pub unavailable: HashMap<Digest, String>,
}

/// How to build it.
#[derive(Debug, Clone)]
pub struct BuildConfig {
    pub cache_dir: PathBuf,
    pub out_dir: PathBuf,
    pub version: String,
    pub program: ProgramSources,
    pub jobs: usize,
    pub shard: Option<Shard>,
    pub retry_failed: bool,
    /// Draw a progress bar (else one plain line per kernel).
    pub progress_bar: bool,
    /// What one package or header tree may cost.
    pub limits: Limits,
    /// How clang and llc are confined.
    pub sandbox: SandboxMode,
}

#[derive(Debug, Clone)]
enum Source {
    Deb(Box<DebKernel>),
    Tree { build: PathBuf, source: PathBuf },
    Btf { file: PathBuf },
}

#[derive(Debug, Clone)]
struct KernelInput {
    release: String,
    arch: Arch,
    facts: KernelFacts,
    source: Source,
}

impl KernelInput {
    /// The `-common` package digest, to spread kernels that share it.
    fn group(&self) -> String {
        match &self.source {
            Source::Deb(d) => d.common.digest.to_string(),
            Source::Tree { source, .. } => source.display().to_string(),
            Source::Btf { file } => file.display().to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Compiled in this run.
    Built,
    /// Taken from the object cache.
    Cached,
    Failed,
}

/// An object in the output folder and its metadata (written beside it as
/// `<file name>.json`), kept in memory for whatever comes next (publish,
/// the agent's install).
#[derive(Debug, Clone)]
pub struct Output {
    pub path: PathBuf,
    pub metadata: ObjectMetadata,
}

/// Why a kernel did not build.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The whole message (report, logs).
    pub message: String,
    /// What of it may be published (to a registry's coverage page):
    /// compiler errors located in the kernel's headers or the program,
    /// host folders replaced, capped (see `diagnostics`).
    pub public: String,
    /// Replayed from the cache (retry with `--retry-failed`).
    pub replayed: bool,
}

/// What became of a kernel.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Compiled in this run.
    Built(Output),
    /// Taken from the object cache.
    Cached(Output),
    Failed(Failure),
}

/// One kernel's row in the report.
#[derive(Debug, Clone)]
pub struct KernelResult {
    /// The kernel release, or the package name when it could not be read.
    pub kernel: String,
    pub arch: Option<Arch>,
    /// `kernel` is the kernel release (not a package name or path).
    pub release_known: bool,
    pub duration_ms: u64,
    pub outcome: Outcome,
}

impl KernelResult {
    pub fn status(&self) -> Status {
        match self.outcome {
            Outcome::Built(_) => Status::Built,
            Outcome::Cached(_) => Status::Cached,
            Outcome::Failed(_) => Status::Failed,
        }
    }

    /// The object written, unless the kernel failed.
    pub fn output(&self) -> Option<&Output> {
        match &self.outcome {
            Outcome::Built(o) | Outcome::Cached(o) => Some(o),
            Outcome::Failed(_) => None,
        }
    }

    pub fn failure(&self) -> Option<&Failure> {
        match &self.outcome {
            Outcome::Failed(f) => Some(f),
            _ => None,
        }
    }
}

/// The report's JSON row (`--report`, read by `ci/coverage-gate`): flat,
/// as it has always been.
impl Serialize for KernelResult {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Row<'a> {
            kernel: &'a str,
            arch: Option<Arch>,
            status: Status,
            cached_failure: bool,
            release_known: bool,
            object: Option<&'a Path>,
            digest: Option<&'a Digest>,
            duration_ms: u64,
            error: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            public_error: Option<&'a str>,
        }
        let (out, failure) = (self.output(), self.failure());
        Row {
            kernel: &self.kernel,
            arch: self.arch,
            status: self.status(),
            cached_failure: failure.is_some_and(|f| f.replayed),
            release_known: self.release_known,
            object: out.map(|o| o.path.as_path()),
            digest: out.map(|o| &o.metadata.digest),
            duration_ms: self.duration_ms,
            error: failure.map(|f| f.message.as_str()),
            public_error: failure.map(|f| f.public.as_str()),
        }
        .serialize(s)
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub total: usize,
    pub built: usize,
    pub cached: usize,
    pub failed: usize,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub version: String,
    pub program_digest: Digest,
    /// The compiler's sandbox: `landlock`, `mount-namespace` or `off`.
    pub sandbox: String,
    pub shard: Option<String>,
    pub summary: Summary,
    pub kernels: Vec<KernelResult>,
}

impl Report {
    pub fn any_failed(&self) -> bool {
        self.summary.failed > 0
    }

    /// A fixed-width table for terminals and logs.
    pub fn table(&self) -> String {
        let w = self.kernels.iter().map(|k| k.kernel.len()).max().unwrap_or(6).max(6);
        let mut s = format!("{:<w$}  {:<7}  {:<6}  {:>7}  {}\n", "KERNEL", "ARCH", "STATUS", "TIME", "OBJECT / ERROR");
        for k in &self.kernels {
            let status = match k.status() {
                Status::Built => "built",
                Status::Cached => "cached",
                Status::Failed => "FAILED",
            };
            let what = match &k.outcome {
                Outcome::Failed(f) => {
                    let e = &f.message;
                    let first = e.lines().find(|l| l.contains("error")).or_else(|| e.lines().next()).unwrap_or("");
                    format!("{}{}", if f.replayed { "(cached failure) " } else { "" }, first)
                }
                Outcome::Built(o) | Outcome::Cached(o) => o.path.display().to_string(),
            };
            let arch = k.arch.map(|a| a.uname()).unwrap_or("?");
            s += &format!(
                "{:<w$}  {:<7}  {:<6}  {:>6.2}s  {}\n",
                k.kernel,
                arch,
                status,
                k.duration_ms as f64 / 1000.0,
                what
            );
        }
        let m = &self.summary;
        s += &format!(
            "{} kernel{}: {} built, {} cached, {} failed in {:.2}s{}\n",
            m.total,
            if m.total == 1 { "" } else { "s" },
            m.built,
            m.cached,
            m.failed,
            m.duration_ms as f64 / 1000.0,
            self.shard.as_ref().map(|s| format!(" (shard {s})")).unwrap_or_default()
        );
        s
    }
}

/// Everything a job needs, shared by all workers.
struct Ctx<'a> {
    cfg: &'a BuildConfig,
    toolchains: &'a Toolchains,
    bpftool: Option<&'a Bpftool>,
    trees: &'a TreeCache,
    objects: ObjectCache,
    program_dir: PathBuf,
    progress: Progress,
    sandbox: &'a Sandbox,
}

/// Runs a build. Setup problems (no compiler, unwritable cache) are errors;
/// a kernel that fails is a row in the report.
pub fn run(cfg: &BuildConfig, req: &Request) -> Result<Report, BuildError> {
    let start = Instant::now();
    check_request(cfg, req)?;
    let cache_err = |source| BuildError::Cache { path: cfg.cache_dir.clone(), source };
    fs::create_dir_all(&cfg.cache_dir).map_err(cache_err)?;
    fs::create_dir_all(&cfg.out_dir).map_err(|source| BuildError::Out { path: cfg.out_dir.clone(), source })?;
    let toolchains = Toolchains::discover()?;
    let tools: Vec<&Path> = toolchains.all().flat_map(|t| [t.clang.as_path(), t.llc.as_path()]).collect();
    let sandbox = Sandbox::new(cfg.sandbox, &tools, &cfg.cache_dir)?;
    if sandbox.is_on() {
        tracing::info!("compiler sandbox: {sandbox}");
    } else {
        tracing::warn!("compiler sandbox: {sandbox}");
    }
    crate::validate::route_libbpf_logs();
    let trees = TreeCache::new(&cfg.cache_dir, cfg.limits).map_err(cache_err)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.jobs.max(1))
        .build()
        .map_err(|e| BuildError::Pool { jobs: cfg.jobs, reason: e.to_string() })?;

    let (inputs, mut results) = pool.install(|| plan(cfg, req, &trees))?;
    let bpftool = if inputs.iter().any(|k| matches!(k.source, Source::Btf { .. })) {
        match Bpftool::discover() {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::error!("{e}");
                None
            }
        }
    } else {
        None
    };
    let program_dir = cfg
        .program
        .materialize(&cfg.cache_dir)
        .map_err(|e| BuildError::Cache { path: cfg.cache_dir.clone(), source: std::io::Error::other(e) })?;
    let ctx = Ctx {
        cfg,
        toolchains: &toolchains,
        bpftool: bpftool.as_ref(),
        trees: &trees,
        objects: ObjectCache::new(&cfg.cache_dir).map_err(cache_err)?,
        program_dir,
        progress: Progress::new(inputs.len(), cfg.progress_bar),
        sandbox: &sandbox,
    };
    let built: Vec<KernelResult> = pool.install(|| {
        inputs
            .par_iter()
            .with_max_len(1)
            .map(|k| {
                let r = build_one(&ctx, k);
                ctx.progress.done(&r);
                r
            })
            .collect()
    });
    ctx.progress.finish();
    results.extend(built);
    results.sort_by(|a, b| (&a.kernel, a.arch).cmp(&(&b.kernel, b.arch)));
    let summary = Summary {
        total: results.len(),
        built: results.iter().filter(|r| r.status() == Status::Built).count(),
        cached: results.iter().filter(|r| r.status() == Status::Cached).count(),
        failed: results.iter().filter(|r| r.status() == Status::Failed).count(),
        duration_ms: start.elapsed().as_millis() as u64,
    };
    Ok(Report {
        version: cfg.version.clone(),
        program_digest: cfg.program.digest().clone(),
        sandbox: sandbox.name().to_owned(),
        shard: cfg.shard.map(|s| s.to_string()),
        summary,
        kernels: results,
    })
}

/// What can be checked before any work: the version is valid, every input
/// path exists, a BTF blob is a regular file.
fn check_request(cfg: &BuildConfig, req: &Request) -> Result<(), BuildError> {
    bpfarm_object::identity::validate_version(&cfg.version)?;
    if req.headers.is_empty() && req.matrix.is_none() && req.btf.is_empty() {
        return Err(BuildError::NoInputs);
    }
    let missing = |path: &Path, e: std::io::Error| BuildError::Input { path: path.to_owned(), reason: e.to_string() };
    for p in &req.headers {
        // A link that does not resolve here may resolve under its own root
        // (see `layout`); planning says why when it does not.
        fs::metadata(p).or_else(|e| fs::symlink_metadata(p).map_err(|_| e)).map_err(|e| missing(p, e))?;
    }
    if let Some(m) = &req.matrix {
        fs::metadata(m).map_err(|e| missing(m, e))?;
    }
    for b in &req.btf {
        let md = fs::metadata(&b.file).map_err(|e| missing(&b.file, e))?;
        if !md.is_file() {
            return Err(BuildError::Input {
                path: b.file.clone(),
                reason: format!("{}, not a regular file", crate::unpack::kind_of(md.file_type())),
            });
        }
    }
    Ok(())
}

fn failed_row(kernel: String, arch: Option<Arch>, error: String) -> KernelResult {
    KernelResult {
        kernel,
        arch,
        release_known: false,
        duration_ms: 0,
        outcome: Outcome::Failed(Failure { public: diagnostics::message(&error), message: error, replayed: false }),
    }
}

/// Turns the request into kernels to build (and rows for inputs that are
/// already known to fail, such as a flavour package without its -common).
fn plan(
    cfg: &BuildConfig,
    req: &Request,
    trees: &TreeCache,
) -> Result<(Vec<KernelInput>, Vec<KernelResult>), BuildError> {
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
                .map(|rd| rd.flatten().any(|e| e.path().extension().is_some_and(|x| x == "deb")))
                .unwrap_or(false);
        // A folder, or a link to one that resolves only under its own root
        // (`<chroot>/lib/modules/<r>/build -> /usr/src/...`).
        let is_tree = (p.is_dir() && !has_debs)
            || (fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()) && layout::build_tree(p).is_ok());
        if is_tree {
            tree_dirs.push(p.clone());
            match tree_input(p) {
                Ok(k) => tree_inputs.push(k),
                Err(msg) => {
                    found.push(format!("{}: no .deb packages, and not a kernel header tree: {msg}", p.display()));
                    failed.push(failed_row(p.display().to_string(), None, msg));
                }
            }
        } else {
            deb_paths.push(p.clone());
        }
    }
    let matrix = req.matrix.as_deref().map(|p| Matrix::load(p).and_then(|m| m.select(&req.select, p))).transpose()?;
    // Pinned entries name their packages by digest; the others by name, in
    // the package cache.
    let (pinned, by_name): (Vec<&MatrixKernel>, Vec<&MatrixKernel>) =
        matrix.iter().flat_map(|m| &m.kernels).partition(|k| !k.debs.is_empty());
    if !by_name.is_empty() {
        deb_paths.push(req.package_cache.clone());
    }
    let debs = packages::find_debs(&deb_paths)?;
    let inspected: Vec<Result<PackageFacts, packages::PackageError>> =
        debs.par_iter().map(|p| packages::inspect(p, &facts_dir)).collect();
    let mut facts = Vec::new();
    for (path, r) in debs.iter().zip(inspected) {
        match r {
            Ok(f) => facts.push(f),
            Err(e) => {
                found.push(e.to_string());
                failed.push(failed_row(
                    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "package".into()),
                    None,
                    e.to_string(),
                ));
            }
        }
    }
    // Entries by name select flavour packages by (name, Debian arch).
    for k in &by_name {
        if !facts.iter().any(|f| f.name == k.package && f.deb_arch == k.arch) {
            let msg = format!(
                "{} ({}) is not in {}, and the matrix does not pin it ([[kernel.deb]]) for fetching: \
                     regenerate it with bpfarm-builder discover",
                k.package,
                k.arch,
                req.package_cache.display(),
            );
            found.push(msg.clone());
            failed.push(failed_row(k.label().to_owned(), Arch::from_any(&k.arch), msg));
        }
    }
    let explicit: Vec<PathBuf> =
        packages::find_debs(&req.headers.iter().filter(|p| !tree_dirs.contains(p)).cloned().collect::<Vec<_>>())?;
    let wanted = |f: &PackageFacts| {
        explicit.contains(&f.path) || by_name.iter().any(|k| k.package == f.name && k.arch == f.deb_arch)
    };
    let mut pairs: Vec<Result<DebKernel, Box<KernelResult>>> = packages::pair(&facts)
        .into_iter()
        .filter(|r| {
            wanted(match r {
                Ok(d) => &d.flavour,
                Err(e) => &e.0,
            })
        })
        .map(|r| r.map_err(|e| Box::new(failed_row(e.0.name.clone(), e.0.arch(), e.1))))
        .collect();
    let pinned_pairs: Vec<_> = pinned.par_iter().map(|k| pinned_pair(k, req, &facts_dir)).collect();
    pairs.extend(pinned_pairs);
    for r in &pairs {
        if let Err(row) = r {
            found.extend(row.failure().map(|f| f.message.clone()));
        }
    }
    // Decided before any unpacking: is there anything that can build? A
    // pinned matrix kernel is a kernel even when its packages could not be
    // had: that is its failed row (exit 1), not "nothing to build".
    if !pairs.iter().any(|r| r.is_ok()) && tree_inputs.is_empty() && req.btf.is_empty() && pinned.is_empty() {
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
    let deb_inputs: Vec<Result<KernelInput, Box<KernelResult>>> = pairs
        .into_par_iter()
        .map(|r| {
            let failed_row = |kernel, arch, error| Box::new(failed_row(kernel, arch, error));
            let d = r?;
            let label = d.flavour.name.clone();
            let arch = d.flavour.arch().ok_or_else(|| {
                failed_row(
                    label.clone(),
                    None,
                    format!("{}: unsupported Debian arch {}", d.flavour.name, d.flavour.deb_arch),
                )
            })?;
            let tree = trees.get(&d.flavour).map_err(|e| failed_row(label.clone(), Some(arch), e.to_string()))?;
            let tf =
                kernel::tree_facts(&tree.root).map_err(|e| failed_row(label.clone(), Some(arch), e.to_string()))?;
            if let Some(expected) = matrix
                .as_ref()
                .and_then(|m| m.kernels.iter().find(|k| k.package == d.flavour.name))
                .and_then(|k| k.release.clone())
                && expected != tf.release
            {
                return Err(failed_row(
                    label,
                    Some(arch),
                    format!("{} holds kernel {}, the matrix says {expected}", d.flavour.name, tf.release),
                ));
            }
            Ok(KernelInput { release: tf.release, arch, facts: tf.facts, source: Source::Deb(Box::new(d)) })
        })
        .collect();
    let mut inputs = Vec::new();
    for r in deb_inputs {
        match r {
            Ok(k) => inputs.push(k),
            Err(row) => failed.push(*row),
        }
    }
    inputs.extend(tree_inputs);
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
            failed.push(failed_row(
                k.release.clone(),
                Some(k.arch),
                format!("two inputs for the same kernel: {} and {}", first, describe(&k.source)),
            ));
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

/// A pinned matrix kernel: its three packages from the digest store, paired
/// by the same control-data rules as any other packages.
fn pinned_pair(k: &MatrixKernel, req: &Request, facts_dir: &Path) -> Result<DebKernel, Box<KernelResult>> {
    let arch = Arch::from_any(&k.arch);
    let fail = |msg: String| Box::new(failed_row(k.label().to_owned(), arch, msg));
    let mut facts = Vec::new();
    for d in &k.debs {
        let path = crate::fetch::store_path(&req.package_cache, &d.sha256);
        if !path.is_file() {
            return Err(fail(match req.unavailable.get(&d.sha256) {
                Some(why) => format!("{} {}: {why}", d.name, d.version),
                None => format!(
                    "{} {} is not in {}: run bpfarm-builder fetch --matrix, or build without --no-fetch",
                    d.name,
                    d.version,
                    req.package_cache.display()
                ),
            }));
        }
        let f = packages::inspect(&path, facts_dir).map_err(|e| fail(e.to_string()))?;
        if f.digest != d.sha256 {
            return Err(fail(format!("{}: holds {}, not the pinned {}", path.display(), f.digest, d.sha256)));
        }
        facts.push(f);
    }
    let found = packages::pair(&facts).into_iter().find(|r| match r {
        Ok(d) => d.flavour.name == k.package,
        Err(e) => e.0.name == k.package,
    });
    match found {
        Some(Ok(d)) => Ok(d),
        Some(Err(e)) => Err(fail(e.1)),
        None => Err(fail(format!("{} is not a flavour package: its control data names no -common", k.package))),
    }
}

fn describe(s: &Source) -> String {
    match s {
        Source::Deb(d) => d.flavour.path.display().to_string(),
        Source::Tree { build, .. } => build.display().to_string(),
        Source::Btf { file } => file.display().to_string(),
    }
}

/// An unpacked header tree: `build` is the configured tree, paired with its
/// kernel source tree as installed layouts do it (see `layout`).
fn tree_input(given: &Path) -> Result<KernelInput, String> {
    let build = layout::build_tree(given).map_err(|e| e.to_string())?;
    let tf = kernel::tree_facts(&build).map_err(|e| e.to_string())?;
    let arch = tf.arch.ok_or_else(|| {
        format!("{}: include/generated/autoconf.h names neither CONFIG_X86_64 nor CONFIG_ARM64", build.display())
    })?;
    let l = layout::resolve(given, &tf.release).map_err(|e| e.to_string())?;
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

fn headers_digest(
    k: &KernelInput,
    bpftool: Option<&Bpftool>,
    limits: &Limits,
) -> Result<(Digest, Vec<SourcePackage>), String> {
    Ok(match &k.source {
        Source::Deb(d) => {
            let mut h = Sha256::new();
            h.update(format!("deb\0{}\0{}\0f{}", d.flavour.digest, d.common.digest, trees::FILTER_VERSION));
            let src = |p: &PackageFacts| SourcePackage {
                kind: SourceKind::Deb,
                name: p.name.clone(),
                version: p.version.clone(),
                digest: p.digest.clone(),
            };
            (Digest::from_raw(h.finalize().into()), vec![src(&d.flavour), src(&d.common), src(&d.kbuild)])
        }
        Source::Tree { build, source } => {
            let (d, _) = treefs::tree_digest(build, source, k.arch, limits).map_err(|e| e.to_string())?;
            (
                d.clone(),
                vec![SourcePackage {
                    kind: SourceKind::Tree,
                    name: build.display().to_string(),
                    version: String::new(),
                    digest: d,
                }],
            )
        }
        Source::Btf { file } => {
            // Checked to be a regular file up front; opened without blocking
            // all the same (it could have been swapped since).
            let f = crate::unpack::open_package(file).map_err(|e| e.to_string())?;
            let len = f.metadata().map(|m| m.len()).map_err(|e| format!("{}: {e}", file.display()))?;
            if len > limits.max_tree_bytes {
                return Err(format!(
                    "{}: {len} bytes, exceeds {}",
                    file.display(),
                    crate::limits::Limit::TreeBytes(limits.max_tree_bytes)
                ));
            }
            let (blob, _) = Digest::of_reader(f).map_err(|e| format!("{}: {e}", file.display()))?;
            let tool = bpftool.map(|b| b.version.as_str()).unwrap_or("");
            let mut h = Sha256::new();
            h.update(format!("btf\0{blob}\0{tool}"));
            (
                Digest::from_raw(h.finalize().into()),
                vec![SourcePackage {
                    kind: SourceKind::Btf,
                    name: file.display().to_string(),
                    version: String::new(),
                    digest: blob,
                }],
            )
        }
    })
}

fn build_one(ctx: &Ctx<'_>, k: &KernelInput) -> KernelResult {
    let start = Instant::now();
    let outcome = build_inner(ctx, k).unwrap_or_else(|e| {
        Outcome::Failed(Failure {
            public: e.public.unwrap_or_else(|| diagnostics::message(&e.message)),
            message: e.message,
            replayed: e.cached,
        })
    });
    KernelResult {
        kernel: k.release.clone(),
        arch: Some(k.arch),
        release_known: true,
        duration_ms: start.elapsed().as_millis() as u64,
        outcome,
    }
}

/// A kernel's failure: the full message (report, logs), what of it may be
/// published (compiler failures: see `diagnostics`), and whether it was
/// replayed from the cache.
struct JobError {
    message: String,
    public: Option<String>,
    cached: bool,
}

fn build_inner(ctx: &Ctx<'_>, k: &KernelInput) -> Result<Outcome, JobError> {
    let fail = |message: String| JobError { message, public: None, cached: false };
    let (headers, sources) = headers_digest(k, ctx.bpftool, &ctx.cfg.limits).map_err(fail)?;
    let kind = if matches!(k.source, Source::Btf { .. }) { compile::Kind::Btf } else { compile::Kind::Headers };
    let (tc, tree_flags) = compiler_for(ctx, k).map_err(fail)?;
    let flags = compile::flags(k.arch, kind, &tree_flags);
    let compiler_id = if kind == compile::Kind::Headers {
        tc.identity()
    } else {
        let tool = ctx.bpftool.ok_or_else(|| fail(crate::btf::BtfError::NoBpftool.to_string()))?;
        format!("{} | {}", tc.clang_version, tool.version)
    };
    let program = ctx.cfg.program.digest();
    let key = KeyInputs { compiler: &compiler_id, flags: &flags, arch: k.arch, program, headers: &headers }.key();

    let (object, fresh) = match ctx.objects.get(&key) {
        Some(Cached::Object(p)) => (p, false),
        Some(Cached::Failure(f)) if !ctx.cfg.retry_failed => {
            return Err(JobError { message: f.message, public: f.public, cached: true });
        }
        _ => match compile_and_validate(ctx, k, &sources, tc, &tree_flags) {
            Ok(built) => {
                let stored = ctx
                    .objects
                    .put_object(&key, built.path())
                    .map_err(|e| fail(format!("storing in the cache: {e}")))?;
                (stored, true)
            }
            Err(Fault::Deterministic { message, public }) => {
                let _ = ctx.objects.put_failure(
                    &key,
                    &cache::Failure {
                        message: message.clone(),
                        public: public.clone(),
                        at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                    },
                );
                return Err(JobError { message, public, cached: false });
            }
            Err(Fault::Environment(msg)) => return Err(fail(msg)),
        },
    };
    let cached = fs::read(&object).map_err(|e| fail(format!("{}: {e}", object.display())))?;
    let identity = Identity::new(&k.release, k.arch, &ctx.cfg.version).map_err(|e| fail(e.to_string()))?;
    // The identity is embedded on the way out, after the cache: the cache
    // keeps the object without it (so the version label stays out of the
    // key), and the same cached object and identity always make the same
    // bytes.
    let embedded =
        EmbeddedIdentity { identity: identity.clone(), kernel: k.facts.clone(), program_digest: program.clone() };
    let bytes = embed::embed(&cached, &embedded).map_err(|e| fail(format!("embedding the identity: {e}")))?;
    let digest = Digest::of_bytes(&bytes);
    let built_at = fs::metadata(&object).and_then(|m| m.modified()).unwrap_or_else(|_| SystemTime::now());
    let meta = ObjectMetadata {
        file_name: identity.file_name(),
        identity,
        digest,
        size: bytes.len() as u64,
        kernel: k.facts.clone(),
        build_mode: kind.build_mode(),
        sources,
        program_digest: program.clone(),
        compiler: Compiler {
            clang: tc.clang_version.clone(),
            llc: (kind == compile::Kind::Headers).then(|| tc.llc_version.clone()),
        },
        flags,
        built_at: humantime::format_rfc3339_seconds(built_at).to_string(),
    };
    let out = write_out(&ctx.cfg.out_dir, &bytes, &meta).map_err(fail)?;
    crate::validate::validate(&out).map_err(|e| fail(format!("validation of {}: {e}", out.display())))?;
    let out = Output { path: out, metadata: meta };
    Ok(if fresh { Outcome::Built(out) } else { Outcome::Cached(out) })
}

/// The clang for a kernel and the flags its tree asks for. Headers mode
/// reads both from the tree (`compile::tree_flags`, `compile::clang_minimum`);
/// BTF mode uses the default clang and no tree flags.
fn compiler_for<'c>(ctx: &'c Ctx<'_>, k: &KernelInput) -> Result<(&'c Toolchain, Vec<String>), String> {
    let (source, build) = match &k.source {
        Source::Btf { .. } => return Ok((&ctx.toolchains.default, Vec::new())),
        Source::Tree { build, source } => (source.clone(), build.clone()),
        Source::Deb(d) => {
            let build = ctx.trees.get(&d.flavour).map_err(|e| e.to_string())?;
            let source = ctx.trees.get(&d.common).map_err(|e| e.to_string())?;
            (source.root, build.root)
        }
    };
    let flags = compile::tree_flags(&source, &build).map_err(|e| e.to_string())?;
    let minimum = compile::clang_minimum(&source, &build, k.arch);
    let tc = ctx.toolchains.select(minimum.as_ref()).map_err(|e| e.to_string())?;
    Ok((tc, flags))
}

/// A failure that the same inputs would repeat (cached), or one of this
/// machine or configuration (disk, missing tool, a limit the operator can
/// raise: not cached).
enum Fault {
    Deterministic { message: String, public: Option<String> },
    Environment(String),
}

impl Fault {
    fn deterministic(message: String) -> Self {
        Fault::Deterministic { message, public: None }
    }
}

impl From<trees::TreeError> for Fault {
    fn from(e: trees::TreeError) -> Self {
        if e.is_limit() { Fault::Environment(e.to_string()) } else { Fault::deterministic(e.to_string()) }
    }
}

/// `sources` are the inputs `headers_digest` already read (for BTF, the
/// blob's digest, so the blob is not hashed a second time).
fn compile_and_validate(
    ctx: &Ctx<'_>,
    k: &KernelInput,
    sources: &[SourcePackage],
    tc: &Toolchain,
    tree_flags: &[String],
) -> Result<tempfile::NamedTempFile, Fault> {
    let with = |mode: Mode<'_>, work: &Path, out: &Path| compile_with(ctx, k, tc, tree_flags, mode, work, out);
    let env = |e: String| Fault::Environment(e);
    let work = tempfile::Builder::new()
        .prefix("work-")
        .tempdir_in(&ctx.cfg.cache_dir)
        .map_err(|e| env(format!("scratch folder: {e}")))?;
    let out = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(".o")
        .tempfile_in(&ctx.cfg.cache_dir)
        .map_err(|e| env(format!("scratch file: {e}")))?;
    let result = match &k.source {
        Source::Deb(d) => {
            let build = ctx.trees.get(&d.flavour)?;
            let source = ctx.trees.get(&d.common)?;
            with(Mode::Headers { source: &source.root, build: &build.root }, work.path(), out.path())
        }
        Source::Tree { build, source } => with(Mode::Headers { source, build }, work.path(), out.path()),
        Source::Btf { file } => {
            let tool = ctx.bpftool.ok_or_else(|| env(crate::btf::BtfError::NoBpftool.to_string()))?;
            let blob = &sources.first().ok_or_else(|| env("a BTF input without its blob".into()))?.digest;
            let dir =
                tool.vmlinux_h(file, blob, &ctx.cfg.cache_dir).map_err(|e| Fault::deterministic(e.to_string()))?;
            with(Mode::Btf { vmlinux_dir: &dir }, work.path(), out.path())
        }
    };
    result?;
    crate::validate::validate(out.path()).map_err(|e| Fault::deterministic(format!("validation: {e}")))?;
    Ok(out)
}

fn compile_with(
    ctx: &Ctx<'_>,
    k: &KernelInput,
    tc: &Toolchain,
    tree_flags: &[String],
    mode: Mode<'_>,
    work: &Path,
    out: &Path,
) -> Result<(), Fault> {
    let job = CompileJob {
        arch: k.arch,
        mode,
        tree_flags,
        program_dir: &ctx.program_dir,
        work_dir: work,
        out,
        sandbox: ctx.sandbox,
    };
    tc.compile(&job).map_err(|e| match &e {
        compile::CompileError::Failed { stderr, .. } => {
            // The same fixed names the debug info uses.
            let mut map = PathMap::default();
            match mode {
                Mode::Headers { source, build } => {
                    map.add(source, "/bpfarm/kernel/source");
                    map.add(build, "/bpfarm/kernel/build");
                }
                Mode::Btf { vmlinux_dir } => map.add(vmlinux_dir, "/bpfarm/kernel/btf"),
            }
            map.add(&ctx.program_dir, "/bpfarm/tracer");
            map.add(work, "/bpfarm/work");
            Fault::Deterministic { public: Some(diagnostics::compiler_errors(stderr, &map)), message: e.to_string() }
        }
        _ => Fault::Environment(e.to_string()),
    })
}

/// `<out>/<arch>/<file name>` and `<file name>.json` beside it. Files that
/// already hold the same bytes are left alone.
fn write_out(out_dir: &Path, bytes: &[u8], meta: &ObjectMetadata) -> Result<PathBuf, String> {
    let dir = out_dir.join(meta.identity.arch.uname());
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let name = meta.identity.file_name();
    let dest = dir.join(&name);
    if fs::read(&dest).ok().as_deref() != Some(bytes) {
        fsutil::write_atomic(&dest, bytes).map_err(|e| format!("{}: {e}", dest.display()))?;
    }
    let json_path = dir.join(format!("{name}.json"));
    let mut json = serde_json::to_vec_pretty(meta).expect("metadata serializes");
    json.push(b'\n');
    if fs::read(&json_path).ok().as_deref() != Some(&json[..]) {
        fsutil::write_atomic(&json_path, &json).map_err(|e| format!("{}: {e}", json_path.display()))?;
    }
    Ok(dest)
}

/// A bar on a terminal, one line per kernel otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    total: usize,
    done: AtomicUsize,
}

impl Progress {
    fn new(total: usize, bar: bool) -> Self {
        let bar = (bar && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new(total as u64);
            b.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
                    .expect("template")
                    .progress_chars("=> "),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Self { bar, total, done: AtomicUsize::new(0) }
    }

    fn done(&self, r: &KernelResult) {
        let n = self.done.fetch_add(1, Ordering::SeqCst) + 1;
        let status = match r.status() {
            Status::Built => "built",
            Status::Cached => "cached",
            Status::Failed => "FAILED",
        };
        let arch = r.arch.map(|a| a.uname()).unwrap_or("?");
        let line =
            format!("[{n}/{}] {status:<6} {} {arch} ({:.2}s)", self.total, r.kernel, r.duration_ms as f64 / 1000.0);
        match &self.bar {
            Some(b) => {
                b.inc(1);
                b.set_message(format!("{} {arch}", r.kernel));
                if r.status() == Status::Failed {
                    b.println(line);
                }
            }
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--report` rows keep the flat shape `ci/coverage-gate` and users read.
    #[test]
    fn report_rows_serialize_flat() {
        let id = Identity::new("6.1.0-56-amd64", Arch::X86_64, "v1").unwrap();
        let meta = ObjectMetadata::unattested(id, Digest::of_bytes(b"o"), 1, bpfarm_object::Origin::StaticLayout);
        let built = KernelResult {
            kernel: "6.1.0-56-amd64".into(),
            arch: Some(Arch::X86_64),
            release_known: true,
            duration_ms: 5,
            outcome: Outcome::Cached(Output { path: "out/x.o".into(), metadata: meta }),
        };
        assert_eq!(
            serde_json::to_value(&built).unwrap(),
            serde_json::json!({ "kernel": "6.1.0-56-amd64", "arch": "x86_64", "status": "cached",
                "cached_failure": false, "release_known": true, "object": "out/x.o",
                "digest": Digest::of_bytes(b"o").to_string(), "duration_ms": 5, "error": null })
        );
        let failed = KernelResult {
            outcome: Outcome::Failed(Failure { message: "m".into(), public: "p".into(), replayed: true }),
            ..built
        };
        assert_eq!(
            serde_json::to_value(&failed).unwrap(),
            serde_json::json!({ "kernel": "6.1.0-56-amd64", "arch": "x86_64", "status": "failed",
                "cached_failure": true, "release_known": true, "object": null, "digest": null,
                "duration_ms": 5, "error": "m", "public_error": "p" })
        );
    }

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
