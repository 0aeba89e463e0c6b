//! The output folder: `<out>/<arch>/<file name>` with its metadata beside
//! it as `<file name>.json`, the one place the build writes metadata as
//! JSON. The object is the cached one with the identity embedded, checked
//! by libbpf again as written.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bpfarm_object::embed::{self, EmbeddedIdentity};
use bpfarm_object::{Compiler, Digest, Identity, ObjectMetadata};

use super::Ctx;
use super::job::JobError;
use super::key::Keyed;
use super::plan::KernelInput;
use super::report::Output;
use crate::compile::Kind;
use crate::fsutil;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: writing the metadata: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The cached object `cached`, with the kernel's identity embedded, and its
/// metadata, written out and validated.
pub(super) fn write(ctx: &Ctx<'_>, k: &KernelInput, keyed: Keyed<'_>, cached: &Path) -> Result<Output, JobError> {
    let bytes = fs::read(cached).map_err(|source| JobError::Read { path: cached.to_owned(), source })?;
    let identity = Identity::new(&k.release, k.arch, &ctx.cfg.version)?;
    let program = ctx.cfg.program.digest();
    // The identity is embedded on the way out, after the cache: the cache
    // keeps the object without it (so the version label stays out of the
    // key), and the same cached object and identity always make the same
    // bytes.
    let embedded =
        EmbeddedIdentity { identity: identity.clone(), kernel: k.facts.clone(), program_digest: program.clone() };
    let bytes = embed::embed(&bytes, &embedded)?;
    let built_at = fs::metadata(cached).and_then(|m| m.modified()).unwrap_or_else(|_| SystemTime::now());
    let tc = keyed.toolchain;
    let metadata = ObjectMetadata {
        file_name: identity.file_name(),
        identity,
        digest: Digest::of_bytes(&bytes),
        size: bytes.len() as u64,
        kernel: k.facts.clone(),
        build_mode: keyed.kind.build_mode(),
        sources: keyed.sources,
        program_digest: program.clone(),
        compiler: Compiler {
            clang: tc.clang_version.clone(),
            llc: (keyed.kind == Kind::Headers).then(|| tc.llc_version.clone()),
        },
        flags: keyed.flags,
        built_at: humantime::format_rfc3339_seconds(built_at).to_string(),
    };
    let path = write_out(&ctx.cfg.out_dir, &bytes, &metadata)?;
    crate::validate::validate(&path).map_err(|source| JobError::InvalidOutput { path: path.clone(), source })?;
    Ok(Output { path, metadata })
}

/// `<out>/<arch>/<file name>` and `<file name>.json` beside it. Files that
/// already hold the same bytes are left alone.
fn write_out(out_dir: &Path, bytes: &[u8], meta: &ObjectMetadata) -> Result<PathBuf, OutputError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| OutputError::Io { path, source }
    };
    let dir = out_dir.join(meta.identity.arch.uname());
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    let name = meta.identity.file_name();
    let dest = dir.join(&name);
    if fs::read(&dest).ok().as_deref() != Some(bytes) {
        // The signature and provenance of the bytes replaced are stale:
        // they go first, so a crash never leaves them beside new bytes
        // (`--sign-key` writes new ones after the build).
        for suffix in [bpfarm_object::sign::SIGNATURE_SUFFIX, bpfarm_object::sign::PROVENANCE_SUFFIX] {
            let stale = dir.join(format!("{name}{suffix}"));
            match fs::remove_file(&stale) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io(&stale)(e)),
                _ => {}
            }
        }
        fsutil::write_atomic(&dest, bytes).map_err(io(&dest))?;
    }
    let json_path = dir.join(format!("{name}.json"));
    let mut json =
        serde_json::to_vec_pretty(meta).map_err(|source| OutputError::Json { path: json_path.clone(), source })?;
    json.push(b'\n');
    if fs::read(&json_path).ok().as_deref() != Some(&json[..]) {
        fsutil::write_atomic(&json_path, &json).map_err(io(&json_path))?;
    }
    Ok(dest)
}
