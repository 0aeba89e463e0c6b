//! `bpfarm-registry fsck`: re-hashes every blob, checks the index rows
//! against the blobs (objects, manifests, links) and the two faces against
//! each other, and with `repair` fixes what can be fixed here: a blob whose
//! bytes no longer hash to its name is quarantined (moved aside, never
//! deleted; uploading the right bytes again restores it), a stray file in
//! the store is quarantined, and an object whose OCI form does not reach it
//! gets its OCI form rewritten. A row whose blob is missing cannot be fixed
//! here: the report says which bytes to upload again.
//!
//! It may run beside a serving registry: it opens the store without
//! touching in-flight uploads, and repairs go through the same write
//! transaction as publishes.

use std::collections::HashMap;

use bpfarm_object::Digest;

use crate::blobs::BlobStore;
use crate::error::{Error, Result};
use crate::repo::Repo;
use crate::{faces, publish, signatures};

/// Why a row's bytes are not what it records.
#[derive(Debug, thiserror::Error)]
enum Unbacked {
    #[error("{0:?} is not a digest")]
    NotDigest(String),
    #[error("its blob {0} is not stored")]
    Missing(Digest),
    #[error("it records {recorded} bytes, blob {digest} has {stored}")]
    Size { recorded: i64, digest: Digest, stored: u64 },
}

/// What fsck found and did.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub blobs_checked: usize,
    pub objects_checked: usize,
    /// Problems that remain (after repair, if asked).
    pub problems: Vec<String>,
    /// What was repaired.
    pub fixed: Vec<String>,
}

impl Report {
    pub fn clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks (and with `repair`, fixes) the registry stored in `repo`/`blobs`,
/// whose `/v1` objects appear in OCI as `oci_repo`.
pub async fn fsck(repo: &Repo, blobs: &BlobStore, oci_repo: &str, repair: bool) -> Result<Report> {
    let mut report = Report::default();

    // 1. Every blob file hashes to its name.
    let store = blobs.clone();
    let files = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<_>> {
        let mut out = Vec::new();
        for (path, claimed) in store.stored()? {
            let actual = match &claimed {
                Some(_) => Some(BlobStore::rehash(&path)?),
                None => None,
            };
            out.push((path, claimed, actual));
        }
        Ok(out)
    })
    .await?
    .map_err(Error::Store)?;
    let mut good: HashMap<Digest, u64> = HashMap::new();
    for (path, claimed, actual) in files {
        report.blobs_checked += 1;
        let problem = match (&claimed, &actual) {
            (Some(d), Some((a, size))) if a == d => {
                good.insert(d.clone(), *size);
                continue;
            }
            (Some(d), Some((a, _))) => format!("corrupt blob {d}: its bytes hash to {a}"),
            _ => format!("stray file {} in the blob store", path.display()),
        };
        if repair {
            let to = blobs.quarantine(&path).map_err(Error::Store)?;
            let again = claimed.map(|d| format!("; upload {d} again to restore it")).unwrap_or_default();
            report.fixed.push(format!("{problem}: quarantined to {}{again}", to.display()));
        } else {
            report.problems.push(problem);
        }
    }

    // 2. The two faces agree on every current object (repairing first
    //    rewrites OCI forms whose bytes were just quarantined).
    for bad in faces::disagreements(repo, blobs, oci_repo).await? {
        let what = format!("{}: /v1 and OCI disagree: {}", faces::describe(&bad.row), bad.why);
        if !repair {
            report.problems.push(what);
            continue;
        }
        match publish::heal(repo, blobs, oci_repo, &bad.row).await? {
            Some(tag) => report.fixed.push(format!("{what}: rewrote its OCI form under {oci_repo}:{tag}")),
            None => report.fixed.push(format!("{what}: no longer current")),
        }
    }
    if repair {
        for bad in faces::disagreements(repo, blobs, oci_repo).await? {
            report.problems.push(format!("{}: still disagrees after repair: {}", faces::describe(&bad.row), bad.why));
        }
    }
    // 2b. Every signed current object has its cosign `.sig`/`.att` tags
    //     (repair rewrites them from the signatures its row records).
    for row in repo.current_objects().await? {
        let Some(sigs) = repo.signatures(row.id).await? else { continue };
        let meta = row.metadata()?;
        let missing = signatures::missing_forms(repo, blobs, oci_repo, &meta, &sigs).await?;
        if missing.is_empty() {
            continue;
        }
        let what = format!("{}: its signatures' OCI form: {}", faces::describe(&row), missing.join("; "));
        if !repair {
            report.problems.push(what);
            continue;
        }
        publish::heal(repo, blobs, oci_repo, &row).await?;
        let still = signatures::missing_forms(repo, blobs, oci_repo, &meta, &sigs).await?;
        if still.is_empty() {
            report.fixed.push(format!("{what}: rewrote them"));
        } else {
            report.problems.push(format!("{what}: still missing after repair: {}", still.join("; ")));
        }
    }
    // 3. Every row names stored bytes of the size it records. After a repair
    //    the store holds only verified bytes, including any just rewritten.
    let stored_size =
        |d: &Digest| -> Option<u64> { good.get(d).copied().or_else(|| if repair { blobs.size_now(d) } else { None }) };
    let unbacked = |d: &str, size: i64| -> Option<Unbacked> {
        let Ok(digest) = d.parse::<Digest>() else { return Some(Unbacked::NotDigest(d.to_owned())) };
        match stored_size(&digest) {
            None => Some(Unbacked::Missing(digest)),
            Some(stored) if i64::try_from(stored).ok() != Some(size) => {
                Some(Unbacked::Size { recorded: size, digest, stored })
            }
            Some(_) => None,
        }
    };
    for row in repo.all_objects().await? {
        report.objects_checked += 1;
        if let Some(why) = unbacked(&row.digest, row.size) {
            let kind = if row.current == 1 { "current object" } else { "replaced object" };
            report.problems.push(format!(
                "{kind} {}: {why} (upload its bytes again: PUT /v1/blobs/{})",
                faces::describe(&row),
                row.digest
            ));
        }
    }
    for sigs in repo.all_signatures().await? {
        let parts = [
            ("signature", Some(sigs.signature_digest.as_str()), Some(sigs.signature_size)),
            ("attestation", sigs.attestation_digest.as_deref(), sigs.attestation_size),
        ];
        for (what, digest, size) in parts {
            let (Some(d), Some(size)) = (digest, size) else { continue };
            if let Some(why) = unbacked(d, size) {
                report.problems.push(format!(
                    "the {what} of object row {}: {why} (upload it again: PUT /v1/blobs/{d})",
                    sigs.object_id
                ));
            }
        }
        if let Some(d) = &sigs.payload_digest
            && d.parse::<Digest>().ok().and_then(|d| stored_size(&d)).is_none()
        {
            report.problems.push(format!(
                "the manifest signature payload of object row {}: blob {d} is not stored (publish the object again with its signatures)",
                sigs.object_id
            ));
        }
    }
    for (r, d, size) in repo.all_manifests().await? {
        if let Some(why) = unbacked(&d, size) {
            report.problems.push(format!("manifest {r}@{d}: {why}"));
        }
    }
    for (r, d) in repo.all_links().await? {
        if d.parse::<Digest>().ok().and_then(|d| stored_size(&d)).is_none() {
            report.problems.push(format!("{r} links blob {d}, which is not stored"));
        }
    }
    Ok(report)
}
