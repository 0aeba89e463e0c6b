//! Exporting the static layout as a folder tree — `<version>/<arch>/<file
//! name>` with `.sha256` and `.json` (metadata) beside each object, and its
//! `.sig` and `.intoto.jsonl` when it is signed — for any
//! plain HTTP server or CDN, or a subset of it for an air-gapped mirror.
//!
//! Files are staged in a private folder made for this run inside the output
//! (`mkdtemp`: a random name, mode 0700) with `create_new`, then renamed
//! into place, so nothing is ever written through a name someone else could
//! have planted: a symlink at a destination is replaced, not followed, and
//! a symlinked `<version>` or `<arch>` folder is refused.

use std::io::Write;
use std::path::{Path, PathBuf};

use bpfarm_object::sign::{Attached, PROVENANCE_SUFFIX, SIGNATURE_SUFFIX};
use bpfarm_object::{Digest, ObjectMetadata};

use crate::blobs::BlobStore;
use crate::error::{Error, Result};
use crate::repo::{Filter, Repo};

/// Which objects to export; empty lists mean all.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    pub versions: Vec<String>,
    pub arches: Vec<String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_owned(), source }
}

/// Writes the tree under `out`; returns how many objects it holds. Objects
/// already there with the right bytes are left alone, so exporting again
/// only adds what is new.
pub async fn export(repo: &Repo, blobs: &BlobStore, out: &Path, filter: &ExportFilter) -> Result<usize> {
    std::fs::create_dir_all(out).map_err(io(out))?;
    let staging = tempfile::Builder::new().prefix(".bpfarm-export-").tempdir_in(out).map_err(io(out))?;
    let mut count = 0;
    let mut after = 0;
    loop {
        let rows = repo.list(&Filter { after, limit: 500, ..Filter::default() }).await?;
        let Some(last) = rows.last() else { break };
        after = last.id;
        for row in &rows {
            let meta = row.metadata()?;
            let id = &meta.identity;
            if (!filter.versions.is_empty() && !filter.versions.contains(&id.version))
                || (!filter.arches.is_empty()
                    && !filter.arches.iter().any(|a| a == id.arch.uname() || a == id.arch.debian()))
            {
                continue;
            }
            let signed =
                repo.signatures(row.id).await?.map(|r| crate::signatures::attached_view(&r)).unwrap_or_default();
            let job =
                Job { out: out.to_owned(), staging: staging.path().to_owned(), blobs: blobs.clone(), meta, signed };
            tokio::task::spawn_blocking(move || job.run()).await??;
            count += 1;
        }
    }
    staging.close().map_err(io(out))?;
    Ok(count)
}

/// One object's files.
struct Job {
    out: PathBuf,
    staging: PathBuf,
    blobs: BlobStore,
    meta: ObjectMetadata,
    /// Its `.sig` and `.intoto.jsonl`, when signed.
    signed: Attached,
}

impl Job {
    fn run(self) -> Result<()> {
        let meta = &self.meta;
        let dir = dir_in(&self.out, &[meta.identity.version.as_str(), meta.identity.arch.uname()])?;
        let dest = dir.join(&meta.file_name);
        if !holds(&dest, &meta.digest) {
            let mut src = self.blobs.open_now(&meta.digest)?;
            self.place(&dest, |f| std::io::copy(&mut src, f).map(drop))?;
        }
        let sum = format!("{}  {}\n", meta.digest.hex(), meta.file_name);
        self.place(&dir.join(format!("{}.sha256", meta.file_name)), |f| f.write_all(sum.as_bytes()))?;
        let json = serde_json::to_vec_pretty(meta)
            .map_err(|source| Error::Serialize { file: meta.file_name.clone(), source })?;
        self.place(&dir.join(format!("{}.json", meta.file_name)), |f| f.write_all(&json))?;
        // The signature and provenance beside the object, as the builder's
        // --out has them; an unsigned object (a replaced one, say) leaves
        // none of an earlier export's behind.
        for (suffix, blob) in
            [(SIGNATURE_SUFFIX, &self.signed.signature), (PROVENANCE_SUFFIX, &self.signed.attestation)]
        {
            let dest = dir.join(format!("{}{suffix}", meta.file_name));
            match blob {
                Some(b) if holds(&dest, &b.digest) => {}
                Some(b) => {
                    let mut src = self.blobs.open_now(&b.digest)?;
                    self.place(&dest, |f| std::io::copy(&mut src, f).map(drop))?;
                }
                None => match std::fs::remove_file(&dest) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(Error::Io { path: dest, source: e });
                    }
                    _ => {}
                },
            }
        }
        Ok(())
    }

    /// Writes a fresh file in the private staging folder (`create_new`,
    /// random name), syncs it and renames it over `dest`.
    fn place(&self, dest: &Path, write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>) -> Result<()> {
        let mut tmp = tempfile::NamedTempFile::new_in(&self.staging).map_err(io(&self.staging))?;
        write(tmp.as_file_mut()).map_err(io(dest))?;
        tmp.as_file().sync_all().map_err(io(dest))?;
        tmp.persist(dest).map_err(|e| Error::Io { path: dest.to_owned(), source: e.error })?;
        Ok(())
    }
}

/// `out/<a>/<b>`, creating what is missing and refusing symlinked folders.
fn dir_in(out: &Path, parts: &[&str]) -> Result<PathBuf> {
    let mut dir = out.to_owned();
    for p in parts {
        dir.push(p);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() => return Err(Error::Symlink(dir)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir(&dir).map_err(io(&dir))?,
            Err(e) => return Err(Error::Io { path: dir, source: e }),
        }
    }
    Ok(dir)
}

/// Whether `path` is a regular file (not a link) holding exactly `digest`.
fn holds(path: &Path, digest: &Digest) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
        && std::fs::File::open(path)
            .and_then(|f| Digest::of_reader(std::io::BufReader::new(f)))
            .is_ok_and(|(d, _)| &d == digest)
}
