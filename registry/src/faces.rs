//! The two faces of one object: its `/v1` row and its OCI form in
//! `<namespace>/tracee-bpf` — the empty config, the layer, the manifest and,
//! under the object's tag, the index with one manifest per arch.
//!
//! `write_oci_form` writes the OCI form inside the caller's `WriteTx`, the
//! same transaction that makes the object current (`publish` is its only
//! caller), so the faces cannot disagree after a race or a crash.
//! `check_object` says whether a tag's index reaches the object `/v1`
//! holds for an arch, and if not, how (`Unreached`): start-up repair, fsck,
//! and `/v2` writes to such a tag all use it.

use std::future::Future;

use bpfarm_object::{Arch, Digest, Identity, ObjectMetadata, oci};
use futures_util::StreamExt;
use serde_json::Value;

use crate::blobs::{BlobError, BlobStore};
use crate::error::Result;
use crate::repo::{FaceRow, NewManifest, ObjectCheckRow, OciManifest, Repo, WriteTx};

pub use crate::state::canonical_repo;

/// Reads manifests by repository and reference, from a transaction or
/// from the read pool.
pub trait ManifestLookup {
    fn manifest(
        &mut self,
        repo: &str,
        reference: &str,
    ) -> impl Future<Output = Result<Option<OciManifest>, sqlx::Error>> + Send;
}

impl ManifestLookup for WriteTx {
    fn manifest(
        &mut self,
        repo: &str,
        reference: &str,
    ) -> impl Future<Output = Result<Option<OciManifest>, sqlx::Error>> + Send {
        WriteTx::manifest(self, repo, reference)
    }
}

impl ManifestLookup for Repo {
    fn manifest(
        &mut self,
        repo: &str,
        reference: &str,
    ) -> impl Future<Output = Result<Option<OciManifest>, sqlx::Error>> + Send {
        self.oci_manifest(repo, reference)
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// What a tag currently holds, as far as choosing an object's tag goes.
enum AtTag {
    Nothing,
    /// The index of this same (release, version): merge into it.
    Ours(Vec<u8>),
    /// The index of another release whose tag sanitises the same.
    OtherRelease,
}

async fn at_tag(tx: &mut WriteTx, blobs: &BlobStore, repo: &str, tag: &str, release: &str) -> Result<AtTag> {
    let Some(m) = tx.manifest(repo, tag).await? else { return Ok(AtTag::Nothing) };
    let annotations = m.annotations.as_deref().and_then(|a| serde_json::from_str::<Value>(a).ok());
    match annotations.as_ref().and_then(|a| a[oci::ANN_RELEASE].as_str()) {
        Some(r) if r == release => {}
        Some(_) => return Ok(AtTag::OtherRelease),
        // Not a bpfarm index: the tag belongs to the object, start afresh.
        None => return Ok(AtTag::Nothing),
    }
    let Ok(digest) = m.digest.parse::<Digest>() else { return Ok(AtTag::Nothing) };
    match blobs.read(&digest).await {
        Ok(bytes) => Ok(AtTag::Ours(bytes)),
        Err(BlobError::Missing(_)) => {
            // Its bytes were lost (quarantined); the other arches come back
            // when their objects are checked.
            tracing::warn!(tag, %digest, "the index under this tag has no bytes; writing a new one");
            Ok(AtTag::Nothing)
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes the OCI form of `meta` (which must be current in `tx`) and
/// records its tag on the object row; returns the tag. Blobs are written
/// before the rows that name them (content-addressed, so a rollback only
/// leaves unreferenced bytes behind).
pub async fn write_oci_form(tx: &mut WriteTx, blobs: &BlobStore, repo: &str, meta: &ObjectMetadata) -> Result<String> {
    let id = &meta.identity;
    let now = now();
    let empty = blobs.put_bytes(oci::EMPTY_CONFIG).await?;
    tx.link(repo, empty.as_str()).await?;
    tx.link(repo, meta.digest.as_str()).await?;
    let manifest = oci::manifest(meta);
    let md = blobs.put_bytes(&manifest).await?;
    let annotations = serde_json::from_slice::<Value>(&manifest).ok().map(|v| v["annotations"].to_string());
    tx.put_manifest(&NewManifest {
        repo,
        digest: md.as_str(),
        media_type: oci::MANIFEST_MEDIA_TYPE,
        size: manifest.len() as i64,
        artifact_type: Some(oci::ARTIFACT_TYPE),
        subject: None,
        annotations: annotations.as_deref(),
        tag: None,
        now: &now,
    })
    .await?;
    // The plain tag, unless another release already holds it.
    let plain = oci::tag(&id.kernel_release, &id.version, false);
    let (tag, old) = match at_tag(tx, blobs, repo, &plain, &id.kernel_release).await? {
        AtTag::Ours(bytes) => (plain, Some(bytes)),
        AtTag::Nothing => (plain, None),
        AtTag::OtherRelease => {
            let hashed = oci::tag(&id.kernel_release, &id.version, true);
            match at_tag(tx, blobs, repo, &hashed, &id.kernel_release).await? {
                AtTag::Ours(bytes) => (hashed, Some(bytes)),
                _ => (hashed, None),
            }
        }
    };
    let index = oci::index(&id.kernel_release, &id.version, old.as_deref(), id.arch, &md, manifest.len() as u64);
    let xd = blobs.put_bytes(&index).await?;
    let annotations = serde_json::from_slice::<Value>(&index).ok().map(|v| v["annotations"].to_string());
    tx.put_manifest(&NewManifest {
        repo,
        digest: xd.as_str(),
        media_type: oci::INDEX_MEDIA_TYPE,
        size: index.len() as i64,
        artifact_type: None,
        subject: None,
        annotations: annotations.as_deref(),
        tag: Some(&tag),
        now: &now,
    })
    .await?;
    tx.set_oci_tag(id, &tag).await?;
    Ok(tag)
}

/// The object `/v1` holds for one arch, as the faces check sees it.
#[derive(Debug, Clone)]
pub struct Held<'a> {
    pub arch: Arch,
    pub digest: &'a str,
    pub size: u64,
}

/// How an object's OCI form fails to reach the object `/v1` holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreached {
    #[error("the index is not JSON")]
    NotJson,
    #[error("the index names no {0} manifest")]
    NoArch(&'static str),
    #[error("the index's {0} entry has no valid digest")]
    BadEntry(&'static str),
    #[error("the index's {arch} manifest {digest} is not in {repo}")]
    EntryMissing { arch: &'static str, digest: Digest, repo: String },
    #[error("the bytes of manifest {0} are missing")]
    ManifestBytesMissing(Digest),
    #[error(
        "its {arch} manifest {manifest} names layer {layer} ({layer_size} bytes), /v1 holds {held} ({held_size} bytes)"
    )]
    WrongLayer { arch: &'static str, manifest: Digest, layer: String, layer_size: String, held: String, held_size: u64 },
    #[error("no OCI form was recorded")]
    NoForm,
    #[error("{repo} has no tag {tag}")]
    NoTag { repo: String, tag: String },
    #[error("tag {tag} names {digest:?}, not a digest")]
    TagNotDigest { tag: String, digest: String },
    #[error("the bytes of index {digest} (tag {tag}) are missing")]
    IndexBytesMissing { digest: Digest, tag: String },
    #[error("tag {tag}: {why}")]
    Tag { tag: String, why: Box<Unreached> },
    #[error("unknown arch {0:?}")]
    UnknownArch(String),
}

/// The child of index bytes `index` for `arch`: the first whose platform
/// names it, by digest (`Err`: how the index fails to name one).
fn child_for(index: &[u8], arch: &'static str) -> Result<Digest, Unreached> {
    let Ok(v) = serde_json::from_slice::<Value>(index) else { return Err(Unreached::NotJson) };
    let Some(child) =
        v["manifests"].as_array().and_then(|c| c.iter().find(|c| c["platform"]["architecture"].as_str() == Some(arch)))
    else {
        return Err(Unreached::NoArch(arch));
    };
    child["digest"].as_str().and_then(|d| d.parse::<Digest>().ok()).ok_or(Unreached::BadEntry(arch))
}

/// Whether manifest bytes `manifest` have exactly `held` as their layer
/// (`Err`: the layer they name instead, and its size, for the message).
fn layer_is(manifest: &[u8], held: &Held<'_>) -> Result<(), (String, String)> {
    let mv: Value = serde_json::from_slice(manifest).unwrap_or(Value::Null);
    let layer = &mv["layers"][0];
    if layer["digest"].as_str() == Some(held.digest) && layer["size"].as_u64() == Some(held.size) {
        Ok(())
    } else {
        Err((layer["digest"].as_str().unwrap_or("none").to_owned(), layer["size"].to_string()))
    }
}

/// Whether the index bytes `index` reach `held` in `repo`: a child for its
/// arch, by digest, whose manifest's layer is exactly that blob. `Some`
/// says how they do not.
pub async fn index_reaches<M: ManifestLookup>(
    m: &mut M,
    blobs: &BlobStore,
    repo: &str,
    index: &[u8],
    held: &Held<'_>,
) -> Result<Option<Unreached>> {
    let arch = oci::oci_arch(held.arch);
    let cd = match child_for(index, arch) {
        Ok(cd) => cd,
        Err(why) => return Ok(Some(why)),
    };
    if m.manifest(repo, cd.as_str()).await?.is_none() {
        return Ok(Some(Unreached::EntryMissing { arch, digest: cd, repo: repo.to_owned() }));
    }
    let bytes = match blobs.read(&cd).await {
        Ok(b) => b,
        Err(BlobError::Missing(_)) => return Ok(Some(Unreached::ManifestBytesMissing(cd))),
        Err(e) => return Err(e.into()),
    };
    match layer_is(&bytes, held) {
        Ok(()) => Ok(None),
        Err((layer, layer_size)) => Ok(Some(Unreached::WrongLayer {
            arch,
            manifest: cd,
            layer,
            layer_size,
            held: held.digest.to_owned(),
            held_size: held.size,
        })),
    }
}

/// Whether the tag recorded for a current object reaches it (`Some`: how
/// it does not).
pub async fn check_object<M: ManifestLookup>(
    m: &mut M,
    blobs: &BlobStore,
    repo: &str,
    tag: Option<&str>,
    held: &Held<'_>,
) -> Result<Option<Unreached>> {
    let Some(tag) = tag else { return Ok(Some(Unreached::NoForm)) };
    let Some(index) = m.manifest(repo, tag).await? else {
        return Ok(Some(Unreached::NoTag { repo: repo.to_owned(), tag: tag.to_owned() }));
    };
    let Ok(digest) = index.digest.parse::<Digest>() else {
        return Ok(Some(Unreached::TagNotDigest { tag: tag.to_owned(), digest: index.digest }));
    };
    let bytes = match blobs.read(&digest).await {
        Ok(b) => b,
        Err(BlobError::Missing(_)) => {
            return Ok(Some(Unreached::IndexBytesMissing { digest, tag: tag.to_owned() }));
        }
        Err(e) => return Err(e.into()),
    };
    let why = index_reaches(m, blobs, repo, &bytes, held).await?;
    Ok(why.map(|why| Unreached::Tag { tag: tag.to_owned(), why: Box::new(why) }))
}

/// One current object whose faces disagree, and how.
#[derive(Debug, Clone)]
pub struct Disagreement {
    pub row: ObjectCheckRow,
    pub why: Unreached,
}

/// Every current object whose OCI form does not reach it.
///
/// Set-based, for start-up at fleet scale: one query reads which
/// manifests the repository has (held as sorted 32-byte digests), one
/// more joins every current object with its tag and whether the tag's
/// index has a manifest row, its rows streamed in tag order through a
/// bounded channel (none held after its turn); off the async runtime,
/// each distinct index's bytes and each child manifest's bytes are read
/// once and checked as `check_object` checks them. What passes
/// there is proven exactly as `check_object` would prove it (the same
/// bytes, the same rules); every other object — a suspect — goes through
/// `check_object` itself, which says how it fails (or finds it fine after
/// all, e.g. written since the first query).
pub async fn disagreements(repo: &Repo, blobs: &BlobStore, oci_repo: &str) -> Result<Vec<Disagreement>> {
    // Every manifest digest as its 32 bytes, sorted (never as text: at
    // fleet scale they are 300,000).
    let mut manifests: Vec<[u8; 32]> = Vec::new();
    repo.manifest_digests(oci_repo, |d| {
        if let Ok(d) = d.parse::<Digest>() {
            manifests.push(d.to_bytes());
        }
    })
    .await?;
    manifests.sort_unstable();
    manifests.dedup();
    manifests.shrink_to_fit();
    // The rows stream to the check, which runs off the runtime (it reads
    // blob files); none is held after its turn.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<FaceRow>(ROWS_IN_FLIGHT);
    let store = blobs.clone();
    let check =
        tokio::task::spawn_blocking(move || suspects(&store, &manifests, std::iter::from_fn(|| rx.blocking_recv())));
    let mut rows = repo.face_rows(oci_repo);
    let mut read = Ok(());
    while let Some(row) = rows.next().await {
        match row {
            Ok(row) => {
                if tx.send(row).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                read = Err(e);
                break;
            }
        }
    }
    drop(rows);
    drop(tx);
    let suspects = check.await?;
    read?;
    let mut out = Vec::new();
    let mut lookup = repo.clone();
    for id in suspects {
        let Some(row) = repo.object_check_row(id).await? else { continue };
        if row.current != 1 {
            continue;
        }
        out.extend(disagreement(&mut lookup, blobs, oci_repo, row).await?);
    }
    Ok(out)
}

/// The same as `disagreements`, one object at a time through
/// `check_object` (four queries and two blob reads each): what start-up
/// did before it was set-based, kept to compare against (`fleet_seed
/// --time-check`) and as the reference the fast path must agree with.
pub async fn disagreements_one_by_one(repo: &Repo, blobs: &BlobStore, oci_repo: &str) -> Result<Vec<Disagreement>> {
    let mut out = Vec::new();
    let mut lookup = repo.clone();
    for row in repo.current_objects().await? {
        out.extend(disagreement(&mut lookup, blobs, oci_repo, row).await?);
    }
    Ok(out)
}

/// How the current object of `row` and its OCI form disagree, through
/// `check_object`, if they do.
async fn disagreement(
    lookup: &mut Repo,
    blobs: &BlobStore,
    oci_repo: &str,
    row: ObjectCheckRow,
) -> Result<Option<Disagreement>> {
    let Some(arch) = Arch::from_any(&row.arch) else {
        return Ok(Some(Disagreement { why: Unreached::UnknownArch(row.arch.clone()), row }));
    };
    let held = Held { arch, digest: &row.digest, size: row.size.max(0) as u64 };
    let why = check_object(lookup, blobs, oci_repo, row.oci_tag.as_deref(), &held).await?;
    Ok(why.map(|why| Disagreement { why, row }))
}

/// Face rows between the query and the check at most.
const ROWS_IN_FLIGHT: usize = 256;

/// The ids of the rows the fast check cannot prove reach their object
/// (blocking: reads blob files). `rows` come with the rows of one index
/// together, so each index's bytes are read once; `manifests` sorted.
fn suspects(blobs: &BlobStore, manifests: &[[u8; 32]], rows: impl Iterator<Item = FaceRow>) -> Vec<i64> {
    let mut out = Vec::new();
    let mut index: Option<(String, Option<Vec<u8>>)> = None;
    for row in rows {
        let ok = (|| {
            let arch = Arch::from_any(&row.arch)?;
            let digest = row.index_digest.as_deref().filter(|_| row.index_row == 1)?;
            if index.as_ref().is_none_or(|(d, _)| d != digest) {
                let bytes = digest.parse::<Digest>().ok().and_then(|d| blobs.read_now(&d).ok());
                index = Some((digest.to_owned(), bytes));
            }
            let bytes = index.as_ref().and_then(|(_, b)| b.as_deref())?;
            let child = child_for(bytes, oci::oci_arch(arch)).ok()?;
            if manifests.binary_search(&child.to_bytes()).is_err() {
                return None;
            }
            let manifest = blobs.read_now(&child).ok()?;
            let held = Held { arch, digest: &row.digest, size: u64::try_from(row.size).ok()? };
            layer_is(&manifest, &held).ok()
        })()
        .is_some();
        if !ok {
            out.push(row.id);
        }
    }
    out.sort_unstable();
    out
}

/// The identity recorded in a check row (for messages).
pub fn describe(row: &ObjectCheckRow) -> String {
    match Arch::from_any(&row.arch).map(|a| Identity::new(&row.kernel_release, a, &row.version)) {
        Some(Ok(id)) => format!("{} ({}) {}", id.kernel_release, id.arch, id.version),
        _ => format!("{} ({}) {}", row.kernel_release, row.arch, row.version),
    }
}
