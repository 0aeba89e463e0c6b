//! What a kernel's cache key is made of (see `cache::KeyInputs`): the
//! digest of its header inputs (package digests, a tree's content, or a BTF
//! blob; nothing is unpacked for it), the clang its tree asks for, and the
//! flags.

use bpfarm_object::{Digest, SourceKind, SourcePackage};
use sha2::{Digest as _, Sha256};

use super::Ctx;
use super::plan::{KernelInput, Source};
use crate::btf::Bpftool;
use crate::compile::{self, Toolchain};
use crate::limits::Limits;
use crate::packages::PackageFacts;
use crate::treefs;
use crate::trees;

pub(super) fn headers_digest(
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

/// The clang for a kernel and the flags its tree asks for. Headers mode
/// reads both from the tree (`compile::tree_flags`, `compile::clang_minimum`);
/// BTF mode uses the default clang and no tree flags.
pub(super) fn compiler_for<'c>(ctx: &'c Ctx<'_>, k: &KernelInput) -> Result<(&'c Toolchain, Vec<String>), String> {
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
