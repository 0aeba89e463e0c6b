//! `bpfarm-registry gc`: retention. Two sweeps, each inside the one write
//! transaction (`BEGIN IMMEDIATE`), so no publish commits while a sweep
//! decides:
//!
//! 1. with `keep_versions`, every object row (current and history) and
//!    failure of all but the newest program versions (newest by their
//!    latest publish), and their OCI form in the canonical repository:
//!    the per-release indexes and per-arch manifests annotated with the
//!    version, the tags naming them, and the signatures and attestations
//!    of those manifests (cosign's `sha256-<hex>.sig`/`.att` tags and any
//!    manifest whose subject they are);
//! 2. every stored blob that nothing names — no text cell of any table
//!    (objects, their metadata, manifests, subjects, tags, and columns
//!    added later) and no stored manifest's bytes — and that is older than
//!    the grace period, with the links to it.
//!
//! The grace period covers a publish in flight: its blob is uploaded
//! before the row that names it exists. A publish that found its blob
//! stored before `gc` removed it finds it gone when it re-checks under the
//! write lock (`publish::publish`, `/v2`'s reference check) and is refused
//! with "upload the object first", never left incomplete.
//! `--dry-run` runs both sweeps in one transaction that is rolled back and
//! deletes no file.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use bpfarm_object::{Digest, oci};
use serde_json::Value;

use crate::blobs::{BlobError, BlobStore};
use crate::error::{Error, Result};
use crate::repo::{Repo, WriteTx, digests_in};

#[derive(Debug, Clone)]
pub struct GcOptions {
    pub dry_run: bool,
    /// Keep the objects of this many newest versions; `None` keeps all.
    pub keep_versions: Option<usize>,
    /// Blobs modified more recently than this are kept.
    pub grace: Duration,
}

/// What `gc` removed (or, dry, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub versions_removed: Vec<String>,
    pub objects: u64,
    pub manifests: u64,
    pub tags: u64,
    pub blobs: u64,
    pub bytes: u64,
}

fn cosign_subject(tag: &str) -> Option<String> {
    let rest = tag.strip_prefix("sha256-")?;
    let hex =
        rest.strip_suffix(".sig").or_else(|| rest.strip_suffix(".att")).or_else(|| rest.strip_suffix(".bpfarm"))?;
    Some(format!("sha256:{hex}"))
}

/// Sweep 1 inside `tx`; returns the digests it stopped naming (the
/// objects' and manifests' bytes), which sweep 2 then takes whatever their
/// age: they were named until now, not uploaded for a publish in flight.
async fn drop_versions(
    tx: &mut WriteTx,
    canonical: &str,
    keep: usize,
    report: &mut GcReport,
) -> Result<BTreeSet<String>> {
    let versions = tx.versions_newest_first().await?;
    let old: Vec<String> = versions.into_iter().skip(keep).collect();
    if old.is_empty() {
        return Ok(BTreeSet::new());
    }
    let old_set: BTreeSet<&str> = old.iter().map(String::as_str).collect();
    // The OCI form: manifests of the canonical repository annotated with
    // an old version.
    let mut doomed: BTreeSet<String> = BTreeSet::new();
    for (digest, annotations) in tx.manifests_of(canonical).await? {
        let v = annotations.as_deref().and_then(|a| serde_json::from_str::<Value>(a).ok()).unwrap_or(Value::Null);
        if v[oci::ANN_RELEASE].is_string() && v[oci::ANN_VERSION].as_str().is_some_and(|x| old_set.contains(x)) {
            doomed.insert(digest);
        }
    }
    // What signs or refers to them: cosign tags, referrers.
    let tags = tx.all_tags().await?;
    for (repo, tag, digest) in &tags {
        if repo == canonical && cosign_subject(tag).is_some_and(|s| doomed.contains(&s)) {
            doomed.insert(digest.clone());
        }
    }
    for (repo, digest, subject) in tx.all_manifest_rows().await? {
        if repo == canonical && subject.is_some_and(|s| doomed.contains(&s)) {
            doomed.insert(digest);
        }
    }
    report.tags += tags.iter().filter(|(r, _, d)| r == canonical && doomed.contains(d)).count() as u64;
    for d in &doomed {
        tx.remove_manifest(canonical, d).await?;
    }
    report.manifests += doomed.len() as u64;
    let mut freed = doomed;
    for v in &old {
        let rows = tx.objects_of_version(v).await?;
        report.objects += rows.len() as u64;
        freed.extend(rows.into_iter().map(|(_, digest, _, _)| digest));
        tx.delete_version(v).await?;
    }
    report.versions_removed.extend(old);
    Ok(freed)
}

/// Sweep 2 inside `tx`: finds (and unless `dry`, removes) unnamed blobs.
async fn drop_blobs(
    tx: &mut WriteTx,
    blobs: &BlobStore,
    grace: Duration,
    freed: &BTreeSet<String>,
    dry: bool,
    report: &mut GcReport,
) -> Result<()> {
    let mut named = tx.every_named_digest().await?;
    for (_, digest, _) in tx.all_manifest_rows().await? {
        let Ok(d) = digest.parse::<Digest>() else { continue };
        match blobs.read(&d).await {
            Ok(bytes) => digests_in(&String::from_utf8_lossy(&bytes), &mut named),
            Err(BlobError::Missing(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let store = blobs.clone();
    let inventory = tokio::task::spawn_blocking(move || store.inventory())
        .await
        .map_err(|e| Error::Store(std::io::Error::other(e)))?
        .map_err(Error::Store)?;
    let now = SystemTime::now();
    for (d, size, modified) in inventory {
        if named.contains(d.as_str()) {
            continue;
        }
        if !freed.contains(d.as_str()) && now.duration_since(modified).unwrap_or_default() < grace {
            continue;
        }
        report.blobs += 1;
        report.bytes += size;
        if !dry {
            tx.unlink_everywhere(d.as_str()).await?;
            blobs.remove(&d).map_err(Error::Store)?;
        }
    }
    Ok(())
}

/// Runs retention over the registry in `repo`/`blobs` (see the module docs).
pub async fn gc(repo: &Repo, blobs: &BlobStore, canonical: &str, opts: &GcOptions) -> Result<GcReport> {
    let mut report = GcReport::default();
    if opts.dry_run {
        let mut tx = repo.begin_write().await?;
        let freed = match opts.keep_versions {
            Some(keep) => drop_versions(&mut tx, canonical, keep, &mut report).await?,
            None => BTreeSet::new(),
        };
        drop_blobs(&mut tx, blobs, opts.grace, &freed, true, &mut report).await?;
        // Dropped without commit: rolled back.
        return Ok(report);
    }
    let mut freed = BTreeSet::new();
    if let Some(keep) = opts.keep_versions {
        let mut tx = repo.begin_write().await?;
        freed = drop_versions(&mut tx, canonical, keep, &mut report).await?;
        tx.commit().await?;
    }
    // Rows first, files after: a crash between leaves unnamed blobs (the
    // next run takes them), never a row naming a missing blob.
    let mut tx = repo.begin_write().await?;
    drop_blobs(&mut tx, blobs, opts.grace, &freed, false, &mut report).await?;
    tx.commit().await?;
    Ok(report)
}
