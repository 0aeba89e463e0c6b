//! Exporting the static layout as a folder tree — `<version>/<arch>/<file
//! name>` with `.sha256` and `.json` (metadata) beside each object — for any
//! plain HTTP server or CDN, or a subset of it for an air-gapped mirror.

use std::path::Path;

use crate::blobs::BlobStore;
use crate::repo::{Filter, Repo};

/// Which objects to export; empty lists mean all.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    pub versions: Vec<String>,
    pub arches: Vec<String>,
}

/// Writes the tree under `out`; returns how many objects it holds. Files
/// are written atomically and objects already there with the right bytes
/// are left alone, so exporting again only adds what is new.
pub async fn export(repo: &Repo, blobs: &BlobStore, out: &Path, filter: &ExportFilter) -> anyhow::Result<usize> {
    use anyhow::Context;
    let mut count = 0;
    let mut after = 0;
    loop {
        let rows = repo.list(&Filter { after, limit: 500, ..Filter::default() }).await?;
        let Some(last) = rows.last() else { break };
        after = last.id;
        for row in &rows {
            let meta = row.metadata();
            let id = &meta.identity;
            if (!filter.versions.is_empty() && !filter.versions.contains(&id.version))
                || (!filter.arches.is_empty()
                    && !filter.arches.iter().any(|a| a == id.arch.uname() || a == id.arch.debian()))
            {
                continue;
            }
            let dir = out.join(&id.version).join(id.arch.uname());
            tokio::fs::create_dir_all(&dir).await.with_context(|| format!("creating {}", dir.display()))?;
            let dest = dir.join(&meta.file_name);
            let have = tokio::fs::read(&dest).await.ok().map(|b| bpfarm_object::Digest::of_bytes(&b));
            if have.as_ref() != Some(&meta.digest) {
                let bytes = tokio::fs::read(blobs.path(&meta.digest))
                    .await
                    .with_context(|| format!("reading blob {}", meta.digest))?;
                write_atomic(&dest, &bytes).await?;
            }
            write_atomic(
                &dir.join(format!("{}.sha256", meta.file_name)),
                format!("{}  {}\n", meta.digest.hex(), meta.file_name).as_bytes(),
            )
            .await?;
            write_atomic(&dir.join(format!("{}.json", meta.file_name)), &serde_json::to_vec_pretty(&meta)?).await?;
            count += 1;
        }
    }
    Ok(count)
}

async fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    let tmp = path.with_extension("tmp-export");
    tokio::fs::write(&tmp, bytes).await.with_context(|| format!("writing {}", tmp.display()))?;
    tokio::fs::rename(&tmp, path).await.with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}
