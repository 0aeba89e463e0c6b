//! The build: plan the kernels (inspect and pair packages, read kernel facts,
//! shard), then build each — cache lookup, unpack what is missing, compile,
//! validate, store — on `jobs` workers in the order `schedule` sets, and
//! write objects with their metadata into the output folder. `timings`
//! records where the time went (`--timings`).
//!
//! A kernel that fails does not stop the others; the report says what
//! happened to each. Everything that makes the whole run pointless (a
//! missing input, an invalid `--version`, nothing that can pair into a
//! kernel, no sandbox for the compiler) is an error before any work starts.

mod job;
mod key;
mod output;
mod plan;
mod progress;
mod report;
mod schedule;
pub mod timings;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bpfarm_object::{Arch, Digest, KernelFacts};

use crate::btf::Bpftool;
use crate::cache::ObjectCache;
use crate::compile::{self, Toolchains};
use crate::fetch::FetchError;
use crate::limits::Limits;
use crate::packages;
use crate::program::ProgramSources;
use crate::sandbox::{Sandbox, SandboxError, SandboxMode};
use crate::trees::TreeCache;
use plan::Source;
pub use plan::{PlanError, Shard, ShardError};
use progress::Progress;
pub use report::{Failure, KernelResult, Outcome, Output, Report, Status, Summary};
use timings::Recorder;
pub use timings::Timings;

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
    #[error("input {path}: {source}")]
    Input {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("input {path}: {kind}, not a regular file")]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error(transparent)]
    Version(#[from] bpfarm_object::identity::IdentityError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("cache folder {path}: the program sources: {source}")]
    Program {
        path: PathBuf,
        #[source]
        source: crate::program::ProgramError,
    },
    #[error("could not start {jobs} build workers: {source}")]
    Pool {
        jobs: usize,
        #[source]
        source: rayon::ThreadPoolBuildError,
    },
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
    pub unavailable: HashMap<Digest, Arc<FetchError>>,
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
    timings: &'a Recorder,
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
    bpfarm_object::libbpf::route_logs();
    let trees = TreeCache::new(&cfg.cache_dir, cfg.limits).map_err(cache_err)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.jobs.max(1))
        .build()
        .map_err(|source| BuildError::Pool { jobs: cfg.jobs, source })?;

    let timings = Recorder::new(start);
    let planning = timings.start();
    let (inputs, unbuildable) = pool.install(|| plan::plan(cfg, req, &trees, &timings))?;
    timings.end(planning, "plan", "");
    let mut results: Vec<KernelResult> = unbuildable.into_iter().map(plan::Unbuildable::into_row).collect();
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
        .map_err(|source| BuildError::Program { path: cfg.cache_dir.clone(), source })?;
    let ctx = Ctx {
        cfg,
        toolchains: &toolchains,
        bpftool: bpftool.as_ref(),
        trees: &trees,
        objects: ObjectCache::new(&cfg.cache_dir).map_err(cache_err)?,
        program_dir,
        progress: Progress::new(inputs.len(), cfg.progress_bar),
        sandbox: &sandbox,
        timings: &timings,
    };
    let built = schedule::build_all(&ctx, &pool, cfg.jobs, &inputs);
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
        timings: timings.finish(cfg.jobs.max(1)),
    })
}

/// What can be checked before any work: the version is valid, every input
/// path exists, a BTF blob is a regular file.
fn check_request(cfg: &BuildConfig, req: &Request) -> Result<(), BuildError> {
    bpfarm_object::identity::validate_version(&cfg.version)?;
    if req.headers.is_empty() && req.matrix.is_none() && req.btf.is_empty() {
        return Err(BuildError::NoInputs);
    }
    let missing = |path: &Path, source| BuildError::Input { path: path.to_owned(), source };
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
            return Err(BuildError::NotAFile { path: b.file.clone(), kind: crate::unpack::kind_of(md.file_type()) });
        }
    }
    Ok(())
}
