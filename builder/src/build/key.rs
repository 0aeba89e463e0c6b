//! What a kernel's cache key is made of (see `cache::KeyInputs`): the
//! digest of its header inputs (package digests, a tree's content, or a BTF
//! blob; nothing is unpacked for it), the clang its tree asks for, and the
//! flags.

use bpfarm_object::{Digest, Flags, SourceKind, SourcePackage};
use sha2::{Digest as _, Sha256};

use super::Ctx;
use super::job::JobError;
use super::plan::{KernelInput, Source};
use crate::btf::{Bpftool, BtfError};
use crate::cache::KeyInputs;
use crate::compile::{self, Kind, Toolchain};
use crate::limits::{Limit, Limits};
use crate::packages::PackageFacts;
use crate::treefs;
use crate::trees;

/// A kernel's key with what it was computed from, as the rest of the job
/// uses it (compile, metadata).
#[derive(Debug)]
pub(super) struct Keyed<'c> {
    pub(super) key: String,
    pub(super) kind: Kind,
    pub(super) toolchain: &'c Toolchain,
    /// What the kernel's tree asks clang for (also in `flags.clang`).
    pub(super) tree_flags: Vec<String>,
    pub(super) flags: Flags,
    /// The inputs, as the metadata lists them.
    pub(super) sources: Vec<SourcePackage>,
    /// BTF mode: bpftool and the blob's digest (its `vmlinux.h` is cached
    /// under it, so the blob is hashed once).
    pub(super) btf: Option<(&'c Bpftool, Digest)>,
}

pub(super) fn key_for<'c>(ctx: &'c Ctx<'_>, k: &KernelInput) -> Result<Keyed<'c>, JobError> {
    let (headers, sources, blob) = headers_digest(k, ctx.bpftool, &ctx.cfg.limits)?;
    let (toolchain, tree_flags) = compiler_for(ctx, k)?;
    let (kind, compiler, btf) = match blob {
        None => (Kind::Headers, toolchain.identity(), None),
        Some(blob) => {
            let tool = ctx.bpftool.ok_or(BtfError::NoBpftool)?;
            (Kind::Btf, format!("{} | {}", toolchain.clang_version, tool.version), Some((tool, blob)))
        }
    };
    let flags = compile::flags(k.arch, kind, &tree_flags);
    let key = KeyInputs {
        compiler: &compiler,
        flags: &flags,
        arch: k.arch,
        program: ctx.cfg.program.digest(),
        headers: &headers,
    }
    .key();
    Ok(Keyed { key, kind, toolchain, tree_flags, flags, sources, btf })
}

/// The digest the key records of the kernel's header inputs, the inputs as
/// the metadata lists them, and (BTF mode) the blob's own digest.
fn headers_digest(
    k: &KernelInput,
    bpftool: Option<&Bpftool>,
    limits: &Limits,
) -> Result<(Digest, Vec<SourcePackage>, Option<Digest>), JobError> {
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
            (Digest::from_raw(h.finalize().into()), vec![src(&d.flavour), src(&d.common), src(&d.kbuild)], None)
        }
        Source::Tree { build, source } => {
            let (d, _) = treefs::tree_digest(build, source, k.arch, limits)?;
            (
                d.clone(),
                vec![SourcePackage {
                    kind: SourceKind::Tree,
                    name: build.display().to_string(),
                    version: String::new(),
                    digest: d,
                }],
                None,
            )
        }
        Source::Btf { file } => {
            // Checked to be a regular file up front; opened without blocking
            // all the same (it could have been swapped since).
            let f = crate::unpack::open_package(file)?;
            let read = |source| JobError::Read { path: file.clone(), source };
            let len = f.metadata().map(|m| m.len()).map_err(read)?;
            if len > limits.max_tree_bytes {
                return Err(JobError::BtfTooLarge {
                    path: file.clone(),
                    len,
                    limit: Limit::TreeBytes(limits.max_tree_bytes),
                });
            }
            let (blob, _) = Digest::of_reader(f).map_err(read)?;
            let tool = bpftool.map(|b| b.version.as_str()).unwrap_or("");
            let mut h = Sha256::new();
            h.update(format!("btf\0{blob}\0{tool}"));
            (
                Digest::from_raw(h.finalize().into()),
                vec![SourcePackage {
                    kind: SourceKind::Btf,
                    name: file.display().to_string(),
                    version: String::new(),
                    digest: blob.clone(),
                }],
                Some(blob),
            )
        }
    })
}

/// The clang for a kernel and the flags its tree asks for. Headers mode
/// reads both from the tree (`compile::tree_flags`, `compile::clang_minimum`);
/// BTF mode uses the default clang and no tree flags.
fn compiler_for<'c>(ctx: &'c Ctx<'_>, k: &KernelInput) -> Result<(&'c Toolchain, Vec<String>), JobError> {
    let (source, build) = match &k.source {
        Source::Btf { .. } => return Ok((&ctx.toolchains.default, Vec::new())),
        Source::Tree { build, source } => (source.clone(), build.clone()),
        Source::Deb(d) => {
            let build = super::timings::tree(ctx.timings, ctx.trees, &d.flavour)?;
            let source = super::timings::tree(ctx.timings, ctx.trees, &d.common)?;
            (source.root, build.root)
        }
    };
    let flags = compile::tree_flags(&source, &build)?;
    let minimum = compile::clang_minimum(&source, &build, k.arch);
    let tc = ctx.toolchains.select(minimum.as_ref())?;
    Ok((tc, flags))
}
