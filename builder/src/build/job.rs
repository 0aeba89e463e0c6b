//! One kernel's build, on a worker: key → cache hit (checked, copied out)
//! or miss (unpack what is missing, compile in the sandbox, validate, store)
//! → embed the identity → write out → validate what was written. A failure
//! is that kernel's row; one the same inputs would repeat is cached.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bpfarm_object::embed::EmbedError;
use bpfarm_object::identity::IdentityError;

use super::Ctx;
use super::key::{Keyed, key_for};
use super::output::{self, OutputError};
use super::plan::{KernelInput, Source};
use super::report::{Failure, KernelResult, Outcome};
use crate::btf::BtfError;
use crate::cache::{self, Cached};
use crate::compile::{CompileError, CompileJob, Mode};
use crate::diagnostics::{self, PathMap};
use crate::limits::Limit;
use crate::treefs::TreeFsError;
use crate::trees::TreeError;
use crate::unpack::UnpackError;
use crate::validate::ValidateError;

/// Why one kernel did not build. Each keeps what a user needs: the file,
/// the package, the limit; a compiler that refused keeps its command and
/// stderr (and the part of it that may be published).
#[derive(Debug, thiserror::Error)]
pub(super) enum JobError {
    #[error(transparent)]
    TreeDigest(#[from] TreeFsError),
    #[error(transparent)]
    Open(#[from] UnpackError),
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {len} bytes, exceeds {limit}")]
    BtfTooLarge { path: PathBuf, len: u64, limit: Limit },
    #[error(transparent)]
    Tree(#[from] Arc<TreeError>),
    /// The toolchain could not be used (not found, not runnable, no clang
    /// new enough, the sandbox refused).
    #[error(transparent)]
    Toolchain(#[from] CompileError),
    /// The compiler ran and refused the inputs.
    #[error("{error}")]
    Compiler {
        error: CompileError,
        /// Its errors about the kernel's tree or the program, in public
        /// form (see `diagnostics`).
        public: String,
    },
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("validation: {0}")]
    Invalid(#[source] ValidateError),
    #[error("validation of {path}: {source}")]
    InvalidOutput {
        path: PathBuf,
        #[source]
        source: ValidateError,
    },
    #[error("{what}: {source}")]
    Scratch {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("storing in the cache: {0}")]
    Store(#[source] io::Error),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("embedding the identity: {0}")]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Output(#[from] OutputError),
    /// The failure the cache holds for these inputs (`--retry-failed`
    /// builds them again).
    #[error("{}", .0.message)]
    Replayed(cache::Failure),
}

impl JobError {
    /// Whether the same inputs would fail the same way, so the failure is
    /// cached. Not: the machine or configuration (disk, a missing tool, a
    /// limit the operator can raise).
    fn is_deterministic(&self) -> bool {
        match self {
            JobError::Tree(e) => !e.is_limit(),
            JobError::Compiler { .. } | JobError::Invalid(_) => true,
            JobError::Btf(e) => !matches!(e, BtfError::NoBpftool),
            _ => false,
        }
    }

    /// What of the failure may be published (see `diagnostics`).
    fn public(&self) -> String {
        match self {
            JobError::Compiler { public, .. } => public.clone(),
            JobError::Replayed(f) => f.public.clone().unwrap_or_else(|| diagnostics::message(&f.message)),
            e => diagnostics::message(&e.to_string()),
        }
    }

    /// One line for the terminal table: the compiler's first error, else
    /// the first line of the message.
    fn headline(&self) -> String {
        match self {
            JobError::Compiler { error: CompileError::Failed { stderr, .. }, .. } => stderr
                .lines()
                .find(|l| l.contains("error"))
                .map(str::to_owned)
                .unwrap_or_else(|| first_line(&self.to_string())),
            JobError::Replayed(f) => f.headline.clone().unwrap_or_else(|| first_line(&f.message)),
            e => first_line(&e.to_string()),
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_owned()
}

pub(super) fn build_one(ctx: &Ctx<'_>, k: &KernelInput) -> KernelResult {
    let start = Instant::now();
    let outcome = build(ctx, k).unwrap_or_else(|e| {
        Outcome::Failed(Failure {
            public: e.public(),
            headline: e.headline(),
            replayed: matches!(e, JobError::Replayed(_)),
            message: e.to_string(),
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

fn build(ctx: &Ctx<'_>, k: &KernelInput) -> Result<Outcome, JobError> {
    let t = ctx.timings;
    let keyed = key_for(ctx, k)?;
    let (object, fresh) = match t.time("lookup", &k.release, || ctx.objects.get(&keyed.key)) {
        Some(Cached::Object(p)) => (p, false),
        Some(Cached::Failure(f)) if !ctx.cfg.retry_failed => return Err(JobError::Replayed(f)),
        _ => match compile_and_validate(ctx, k, &keyed) {
            Ok(built) => {
                let stored = t.time("store", &k.release, || ctx.objects.put_object(&keyed.key, built.path()));
                (stored.map_err(JobError::Store)?, true)
            }
            Err(e) => {
                if e.is_deterministic() {
                    let failure = cache::Failure {
                        message: e.to_string(),
                        public: Some(e.public()),
                        headline: Some(e.headline()),
                        at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                    };
                    if let Err(w) = ctx.objects.put_failure(&keyed.key, &failure) {
                        tracing::warn!("caching the failure of {}: {w}", k.release);
                    }
                }
                return Err(e);
            }
        },
    };
    let out = t.time("output", &k.release, || output::write(ctx, k, keyed, &object))?;
    Ok(if fresh { Outcome::Built(out) } else { Outcome::Cached(out) })
}

/// Compiles into a temp file in the cache folder and validates it.
fn compile_and_validate(
    ctx: &Ctx<'_>,
    k: &KernelInput,
    keyed: &Keyed<'_>,
) -> Result<tempfile::NamedTempFile, JobError> {
    let with = |mode: Mode<'_>, work: &Path, out: &Path| compile_with(ctx, k, keyed, mode, work, out);
    let work = tempfile::Builder::new()
        .prefix("work-")
        .tempdir_in(&ctx.cfg.cache_dir)
        .map_err(|source| JobError::Scratch { what: "scratch folder", source })?;
    let out = tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(".o")
        .tempfile_in(&ctx.cfg.cache_dir)
        .map_err(|source| JobError::Scratch { what: "scratch file", source })?;
    match &k.source {
        Source::Deb(d) => {
            let build = ctx.trees.get(&d.flavour)?;
            let source = ctx.trees.get(&d.common)?;
            with(Mode::Headers { source: &source.root, build: &build.root }, work.path(), out.path())?;
        }
        Source::Tree { build, source } => with(Mode::Headers { source, build }, work.path(), out.path())?,
        Source::Btf { file } => {
            let (tool, blob) = keyed.btf.as_ref().ok_or(BtfError::NoBpftool)?;
            let dir = tool.vmlinux_h(file, blob, &ctx.cfg.cache_dir)?;
            with(Mode::Btf { vmlinux_dir: &dir }, work.path(), out.path())?;
        }
    }
    ctx.timings.time("validate", &k.release, || crate::validate::validate(out.path())).map_err(JobError::Invalid)?;
    Ok(out)
}

fn compile_with(
    ctx: &Ctx<'_>,
    k: &KernelInput,
    keyed: &Keyed<'_>,
    mode: Mode<'_>,
    work: &Path,
    out: &Path,
) -> Result<(), JobError> {
    let job = CompileJob {
        arch: k.arch,
        mode,
        tree_flags: &keyed.tree_flags,
        program_dir: &ctx.program_dir,
        work_dir: work,
        out,
        sandbox: ctx.sandbox,
    };
    let runs = keyed.toolchain.compile(&job).map_err(|e| match &e {
        CompileError::Failed { stderr, .. } => {
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
            let public = diagnostics::compiler_errors(stderr, &map);
            JobError::Compiler { error: e, public }
        }
        _ => JobError::Toolchain(e),
    })?;
    for r in runs {
        ctx.timings.push(r.tool, &k.release, r.started, r.ended, r.cpu);
    }
    Ok(())
}
