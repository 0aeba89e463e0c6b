//! One kernel's build, on a worker: key → cache hit (checked, copied out)
//! or miss (unpack what is missing, compile in the sandbox, validate, store)
//! → embed the identity → write out → validate what was written. A failure
//! is that kernel's row; one the same inputs would repeat is cached.

use std::fs;
use std::path::Path;
use std::time::{Instant, SystemTime};

use bpfarm_object::embed::{self, EmbeddedIdentity};
use bpfarm_object::{Compiler, Digest, Identity, ObjectMetadata, SourcePackage};

use super::Ctx;
use super::key::{compiler_for, headers_digest};
use super::output::write_out;
use super::plan::{KernelInput, Source};
use super::report::{Failure, KernelResult, Outcome, Output};
use crate::cache::{self, Cached, KeyInputs};
use crate::compile::{self, CompileJob, Mode, Toolchain};
use crate::diagnostics::{self, PathMap};
use crate::trees;

pub(super) fn build_one(ctx: &Ctx<'_>, k: &KernelInput) -> KernelResult {
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
