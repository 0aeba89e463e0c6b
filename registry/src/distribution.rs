//! The OCI distribution rules over the store `/v1` uses: repository names
//! and tags, upload sessions (chunked, monolithic, cross-repository
//! mounts), manifests stored as their exact bytes only once they are valid
//! in full, and what `/v2` may not delete.
//!
//! An image manifest in bpfarm's artifact format goes through `publish`
//! (the `/v1` rules) and becomes current in both faces in the transaction
//! that stores it. In `<namespace>/tracee-bpf` the tags that carry `/v1`
//! objects' OCI form only ever name an index that reaches those objects,
//! and what they name cannot be deleted here.
//!
//! Everything returns `error::Error`; `oci` turns requests into these
//! calls and answers in OCI's format.

use bpfarm_object::{Arch, Digest, ObjectMetadata, oci};
use futures_util::Stream;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::faces::{self, Held};
use crate::manifest::{self, Kind};
use crate::publish;
use crate::repo::{NewManifest, OciManifest, WriteTx};
use crate::state::AppState;

/// Largest manifest accepted.
pub const MANIFEST_LIMIT: u64 = 4 << 20;

/// OCI repository names: `/`-separated components of lowercase letters and
/// digits joined by `.`, `_`, `__` or `-`s.
pub fn valid_repo(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
                && !c.contains("..")
                && !c.contains("___")
        })
}

pub fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_')
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Refuses a repository name outside OCI's grammar.
pub fn check_repo(repo: &str) -> Result<()> {
    if valid_repo(repo) { Ok(()) } else { Err(Error::RepoName(repo.to_owned())) }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn held_by_v1(repo: &str, what: impl Into<String>) -> Error {
    Error::HeldByV1 { repo: repo.to_owned(), what: what.into() }
}

/// `repo`'s blob `d`, if the repository has it (its bytes may still be
/// missing from the store; serving says so).
pub async fn linked_blob(s: &AppState, repo: &str, d: &Digest) -> Result<()> {
    if s.repo.oci_linked(repo, d.as_str()).await? {
        Ok(())
    } else {
        Err(Error::NotInRepo { repo: repo.to_owned(), digest: d.clone() })
    }
}

/// Unlinks blob `d` from `repo`, unless it is part of a current `/v1`
/// object's OCI form in the canonical repository.
pub async fn delete_blob(s: &AppState, repo: &str, d: &Digest) -> Result<()> {
    let mut tx = s.repo.begin_write().await?;
    if repo == s.settings.canonical_repo()
        && (tx.is_current_object(d.as_str()).await?
            || (*d == Digest::of_bytes(oci::EMPTY_CONFIG) && tx.count_current().await? > 0))
    {
        return Err(held_by_v1(repo, format!("blob {d}")));
    }
    let gone = tx.unlink(repo, d.as_str()).await?;
    tx.commit().await?;
    if gone { Ok(()) } else { Err(Error::NotInRepo { repo: repo.to_owned(), digest: d.clone() }) }
}

/// Removes upload sessions older than the upload TTL.
pub async fn expire_uploads(s: &AppState) -> Result<()> {
    for stale in s.repo.oci_expire_uploads(unix_now() - s.settings.upload_ttl.as_secs() as i64).await? {
        s.blobs.remove_upload(&stale).await;
    }
    Ok(())
}

/// Links blob `d`, which `from` has, into `repo`; `false` when it cannot be
/// mounted (the client then uploads it).
pub async fn mount(s: &AppState, repo: &str, from: &str, d: &Digest) -> Result<bool> {
    if valid_repo(from) && s.repo.oci_linked(from, d.as_str()).await? && s.blobs.size(d).await.is_some() {
        s.repo.oci_link(repo, d.as_str()).await?;
        return Ok(true);
    }
    Ok(false)
}

/// A monolithic upload: the body becomes blob `d` of `repo` if it hashes to it.
pub async fn put_blob<S, E>(s: &AppState, repo: &str, d: &Digest, body: S) -> Result<()>
where
    S: Stream<Item = std::result::Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    s.blobs.put(d, body, s.settings.max_blob_bytes).await?;
    s.repo.oci_link(repo, d.as_str()).await?;
    Ok(())
}

/// Opens an upload session in `repo`; returns its id.
pub async fn start_upload(s: &AppState, repo: &str) -> Result<String> {
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw)?;
    let id = hex::encode(raw);
    s.blobs.create_upload(&id).await?;
    s.repo.oci_upload_start(&id, repo, unix_now()).await?;
    Ok(id)
}

/// The size so far of `repo`'s upload session `id`.
pub async fn upload_size(s: &AppState, repo: &str, id: &str) -> Result<u64> {
    if !id.bytes().all(|b| b.is_ascii_hexdigit()) || s.repo.oci_upload(id).await?.as_deref() != Some(repo) {
        return Err(Error::UploadUnknown { repo: repo.to_owned(), id: id.to_owned() });
    }
    Ok(s.blobs.upload_size(id).await?)
}

/// Abandons an upload session (`upload_size` has checked it).
pub async fn cancel_upload(s: &AppState, id: &str) -> Result<()> {
    s.repo.oci_upload_end(id).await?;
    s.blobs.remove_upload(id).await;
    Ok(())
}

/// Appends a chunk to a session (`upload_size` has checked it); returns
/// the new size. The session never passes `--max-blob-bytes`.
pub async fn append<S, E>(s: &AppState, id: &str, body: S) -> Result<u64>
where
    S: Stream<Item = std::result::Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    Ok(s.blobs.append(id, body, s.settings.max_blob_bytes).await?)
}

/// Ends a session: its bytes become blob `d` of `repo` only if they hash
/// to it; either way the session is gone.
pub async fn finish_upload(s: &AppState, repo: &str, id: &str, d: &Digest) -> Result<()> {
    let adopted = s.blobs.adopt(id, d).await;
    s.repo.oci_upload_end(id).await?;
    if adopted.is_err() {
        s.blobs.remove_upload(id).await;
    }
    adopted?;
    s.repo.oci_link(repo, d.as_str()).await?;
    Ok(())
}

/// A manifest by tag or digest, with its bytes unless only its headers are
/// wanted.
pub async fn manifest(s: &AppState, repo: &str, reference: &str, with_bytes: bool) -> Result<(OciManifest, Vec<u8>)> {
    let unknown = || Error::ManifestUnknown { repo: repo.to_owned(), reference: reference.to_owned() };
    let m = s.repo.oci_manifest(repo, reference).await?.ok_or_else(unknown)?;
    let d: Digest = m.digest.parse()?;
    let bytes = if with_bytes {
        match s.blobs.read(&d).await {
            Ok(b) => b,
            Err(crate::blobs::BlobError::Missing(_)) => return Err(unknown()),
            Err(e) => return Err(e.into()),
        }
    } else {
        Vec::new()
    };
    Ok((m, bytes))
}

/// Deletes a manifest (or just a tag), unless it carries a current `/v1`
/// object's OCI form in the canonical repository, or its `.bpfarm`
/// carrier or cosign `.sig` (what a bundle and `import --trusted-key`
/// take its signature from).
pub async fn delete_manifest(s: &AppState, repo: &str, reference: &str) -> Result<()> {
    let mut tx = s.repo.begin_write().await?;
    if repo == s.settings.canonical_repo() {
        if let Some(tag) = held_signature_tag(s, &mut tx, repo, reference).await? {
            return Err(Error::SignaturesHeld {
                repo: repo.to_owned(),
                what: format!("the signature tag {tag}"),
                hint: "the registry writes it from the object's /v1 signature; it changes with POST /v1/objects?replace=true",
            });
        }
        if holds_v1_form(s, &mut tx, repo, reference).await? {
            return Err(held_by_v1(repo, reference));
        }
    }
    let gone = tx.delete_manifest(repo, reference).await?;
    tx.commit().await?;
    if gone { Ok(()) } else { Err(Error::ManifestUnknown { repo: repo.to_owned(), reference: reference.to_owned() }) }
}

/// Whether `reference` (a tag or a manifest digest) in the canonical
/// repository carries a current object's OCI form: a tag recorded for one,
/// the index such a tag names, or a bpfarm manifest whose layer is current.
async fn holds_v1_form(s: &AppState, tx: &mut WriteTx, repo: &str, reference: &str) -> Result<bool> {
    if !reference.starts_with("sha256:") {
        return Ok(!tx.objects_with_tag(reference).await?.is_empty());
    }
    for tag in tx.tags_of(repo, reference).await? {
        if !tx.objects_with_tag(&tag).await?.is_empty() {
            return Ok(true);
        }
    }
    let Ok(d) = reference.parse::<Digest>() else { return Ok(false) };
    is_held_manifest(s, tx, repo, &d).await
}

/// The `.bpfarm` carrier or cosign `.sig` tag of a held object that
/// `reference` is (a tag) or that names it (a manifest digest), if any.
async fn held_signature_tag(s: &AppState, tx: &mut WriteTx, repo: &str, reference: &str) -> Result<Option<String>> {
    let tags =
        if reference.starts_with("sha256:") { tx.tags_of(repo, reference).await? } else { vec![reference.to_owned()] };
    for tag in tags {
        if signs_held(s, tx, repo, &tag).await? {
            return Ok(Some(tag));
        }
    }
    Ok(None)
}

/// Whether `tag` is the `.bpfarm` carrier or cosign `.sig` tag of a held
/// object's manifest: what `bundle` and `import --trusted-key` read its
/// signature from, so the registry's, not a pusher's to delete.
async fn signs_held(s: &AppState, tx: &mut WriteTx, repo: &str, tag: &str) -> Result<bool> {
    let subject = bpfarm_object::sign::carrier::files_tag_subject(tag).or_else(|| cosign_signature_subject(tag));
    match subject {
        Some(d) => is_held_manifest(s, tx, repo, &d).await,
        None => Ok(false),
    }
}

/// Whether manifest `d` of `repo` is a bpfarm manifest whose layer is a
/// current `/v1` object.
async fn is_held_manifest(s: &AppState, tx: &mut WriteTx, repo: &str, d: &Digest) -> Result<bool> {
    if tx.manifest(repo, d.as_str()).await?.is_none() {
        return Ok(false);
    }
    let bytes = match s.blobs.read(d).await {
        Ok(b) => b,
        Err(crate::blobs::BlobError::Missing(_)) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    match v["layers"][0]["digest"].as_str() {
        Some(layer) if v["artifactType"] == oci::ARTIFACT_TYPE => Ok(tx.is_current_object(layer).await?),
        _ => Ok(false),
    }
}

/// Everything a manifest references must be in `repo`, with the sizes it
/// claims: blobs for an image manifest, manifests (by digest) for an index.
async fn check_references(s: &AppState, tx: &mut WriteTx, repo: &str, doc: &manifest::Manifest) -> Result<()> {
    match &doc.kind {
        Kind::Image { config, layers } => {
            for d in std::iter::once(config).chain(layers) {
                let stored =
                    if tx.linked(repo, d.digest.as_str()).await? { s.blobs.size(&d.digest).await } else { None };
                match stored {
                    None => return Err(Error::MissingBlobRef { repo: repo.to_owned(), digest: d.digest.clone() }),
                    Some(n) if n != d.size => {
                        return Err(Error::BlobRefSize { digest: d.digest.clone(), claimed: d.size, actual: n });
                    }
                    Some(_) => {}
                }
            }
        }
        Kind::Index { manifests } => {
            for d in manifests {
                match tx.manifest(repo, d.digest.as_str()).await? {
                    None => {
                        return Err(Error::MissingManifestRef { repo: repo.to_owned(), digest: d.digest.clone() });
                    }
                    Some(m) if u64::try_from(m.size).ok() != Some(d.size) => {
                        return Err(Error::ManifestRefSize {
                            digest: d.digest.clone(),
                            claimed: d.size,
                            actual: m.size,
                        });
                    }
                    Some(_) => {}
                }
            }
        }
    }
    Ok(())
}

/// In the canonical repository, a tag that carries `/v1` objects' OCI form
/// may only name an index that reaches each of them.
async fn check_canonical_tag(
    s: &AppState,
    tx: &mut WriteTx,
    repo: &str,
    tag: &str,
    doc: &manifest::Manifest,
    bytes: &[u8],
    adopting: Option<&ObjectMetadata>,
) -> Result<()> {
    let held = tx.objects_with_tag(tag).await?;
    let becomes_held = adopting.is_some_and(|m| {
        let id = &m.identity;
        tag == oci::tag(&id.kernel_release, &id.version, false)
            || tag == oci::tag(&id.kernel_release, &id.version, true)
    });
    if held.is_empty() && !becomes_held {
        return Ok(());
    }
    if !doc.is_index() {
        return Err(manifest::Invalid(format!(
            "tag {tag} in {repo} carries /v1 objects and names their image index; push the manifest by digest (the registry writes the index)"
        ))
        .into());
    }
    for (arch, digest, size) in &held {
        let Some(arch) = Arch::from_any(arch) else { continue };
        let h = Held { arch, digest, size: (*size).max(0) as u64 };
        if let Some(why) = faces::index_reaches(tx, &s.blobs, repo, bytes, &h).await? {
            return Err(manifest::Invalid(format!(
                "tag {tag} in {repo} must reach the {arch} object /v1 holds ({digest}): {why}"
            ))
            .into());
        }
    }
    Ok(())
}

/// The `.sig` and `.intoto.jsonl` a push put under the `.bpfarm` carrier
/// tag of manifest `digest` in `repo`, if any (its blobs were checked when
/// the carrier was stored; `signatures::check` reads them again).
async fn pushed_files(s: &AppState, repo: &str, digest: &Digest) -> Result<Option<bpfarm_object::sign::Attached>> {
    use bpfarm_object::sign::{Attached, BlobRef, VerifyError};
    let Some(m) = s.repo.oci_manifest(repo, &bpfarm_object::sign::files_tag(digest)).await? else {
        return Ok(None);
    };
    let d: Digest = m.digest.parse()?;
    let bytes = match s.blobs.read(&d).await {
        Ok(b) => b,
        Err(crate::blobs::BlobError::Missing(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let what = "signature carrier";
    let files =
        bpfarm_object::sign::read_files_artifact(&bytes).map_err(|source| Error::SignatureForm { what, source })?;
    if &files.subject != digest {
        let source = VerifyError::SubjectMismatch { expected: digest.clone(), found: files.subject.to_string() };
        return Err(Error::SignatureForm { what, source });
    }
    let blob = |b: bpfarm_object::sign::carrier::CarriedBlob| BlobRef { digest: b.digest, size: b.size };
    Ok(Some(Attached {
        signature: Some(blob(files.signature)),
        attestation: files.attestation.map(blob),
        manifest_signature: None,
    }))
}

/// The current object whose platform manifest in `repo` is `subject`, if
/// the registry holds one (inside the push's transaction).
async fn held_object(
    s: &AppState,
    tx: &mut WriteTx,
    repo: &str,
    subject: &Digest,
) -> Result<Option<(crate::repo::ObjectRow, ObjectMetadata)>> {
    let Some(m) = tx.manifest(repo, subject.as_str()).await? else { return Ok(None) };
    let bytes = match s.blobs.read(subject).await {
        Ok(b) => b,
        Err(crate::blobs::BlobError::Missing(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let Ok(doc) = manifest::parse(&bytes, &m.media_type) else { return Ok(None) };
    let Ok(Some(meta)) = doc.bpfarm_object() else { return Ok(None) };
    let Some(row) = tx.current(&meta.identity).await? else { return Ok(None) };
    let held = row.metadata()?;
    if &crate::signatures::manifest_digest(&held) != subject {
        return Ok(None);
    }
    Ok(Some((row, held)))
}

/// The signature tags of an object the registry holds (refused with
/// `Error::SignaturesHeld` otherwise). The `.bpfarm` carrier of a held
/// object's manifest is written by the registry from its `/v1` row: a
/// push of one is taken only when it names exactly those files. Under
/// `--trusted-key`, its cosign `.sig` tag takes only a signature a
/// trusted key made. Tags of manifests the registry holds no object for
/// (a builder pushes them before the object) are left to the generic
/// checks and to the object's own push.
async fn check_held_signatures(
    s: &AppState,
    tx: &mut WriteTx,
    repo: &str,
    tag: Option<&str>,
    doc: &manifest::Manifest,
    bytes: &[u8],
) -> Result<()> {
    use bpfarm_object::sign::FILES_ARTIFACT_TYPE;
    let carrier_type = doc.reported_artifact_type() == Some(FILES_ARTIFACT_TYPE);
    let subject = doc.subject.as_ref().map(|d| &d.digest);
    let carrier = tag
        .and_then(bpfarm_object::sign::carrier::files_tag_subject)
        .or_else(|| subject.filter(|_| carrier_type).cloned());
    if let Some(subject) = carrier
        && let Some((row, _)) = held_object(s, tx, repo, &subject).await?
    {
        let held = tx.signatures(row.id).await?;
        let files = bpfarm_object::sign::read_files_artifact(bytes).ok();
        let same = match (&held, &files) {
            (Some(h), Some(f)) => {
                f.subject == subject
                    && f.signature.digest.as_str() == h.signature_digest
                    && f.attestation.as_ref().map(|a| a.digest.as_str()) == h.attestation_digest.as_deref()
            }
            _ => false,
        };
        if !same {
            return Err(Error::SignaturesHeld {
                repo: repo.to_owned(),
                what: format!("the signature carrier {}", bpfarm_object::sign::files_tag(&subject)),
                hint: "the registry writes it from the object's /v1 signature; publish new signatures with POST /v1/objects?replace=true",
            });
        }
    }
    if let Some(keys) = &s.settings.trusted_keys
        && let Some(tag) = tag
        && let Some(subject) = cosign_signature_subject(tag)
        && held_object(s, tx, repo, &subject).await?.is_some()
    {
        crate::signatures::verify_v2_signature(tx, &s.blobs, repo, &subject, bytes, keys).await.map_err(|e| {
            tracing::info!(%repo, %tag, "refused a cosign signature of a held object: {e}");
            Error::SignaturesHeld {
                repo: repo.to_owned(),
                what: format!("the cosign signature tag {tag}"),
                hint: "this registry takes only signatures a trusted key made for the objects it holds",
            }
        })?;
    }
    Ok(())
}

/// The manifest digest a cosign signature tag (`sha256-<hex>.sig`) names.
fn cosign_signature_subject(tag: &str) -> Option<Digest> {
    tag.strip_prefix("sha256-")?.strip_suffix(".sig").and_then(|hex| format!("sha256:{hex}").parse().ok())
}

/// Stores a manifest's exact bytes under `reference` (a tag, or its own
/// digest) once it is fully valid: well-formed, everything it references
/// in `repo` with the right sizes, a bpfarm artifact through the publish
/// rules, a canonical tag still reaching `/v1`'s objects. Storing it, its
/// tag and (for a bpfarm artifact) the object in both faces is one
/// transaction. Returns its digest and its subject's.
pub async fn put_manifest(
    s: &AppState,
    repo: &str,
    reference: &str,
    bytes: &[u8],
    content_type: &str,
) -> Result<(Digest, Option<Digest>)> {
    put_manifest_carried(s, repo, reference, bytes, content_type, None).await
}

/// As `put_manifest`, with what an import carries for a bpfarm artifact
/// (its `.sig` and `.intoto.jsonl`, stored, and its manifest signature):
/// held to the object and the trusted keys by `signatures::check`, then
/// attached to the object's row. Without a `.sig` among them, the `/v2`
/// rule applies (under `--trusted-key`, the cosign signature tag first).
pub async fn put_manifest_carried(
    s: &AppState,
    repo: &str,
    reference: &str,
    bytes: &[u8],
    content_type: &str,
    carried: Option<&bpfarm_object::sign::Attached>,
) -> Result<(Digest, Option<Digest>)> {
    let digest = Digest::of_bytes(bytes);
    let tag = if reference.starts_with("sha256:") {
        if reference.parse::<Digest>()? != digest {
            return Err(Error::ManifestDigest { actual: digest, reference: reference.to_owned() });
        }
        None
    } else if valid_tag(reference) {
        Some(reference)
    } else {
        return Err(Error::Tag(reference.to_owned()));
    };
    let doc = manifest::parse(bytes, content_type)?;
    let artifact = doc.bpfarm_object()?;
    let mut checked = None;
    // A /v2 push keeps the /v2 rule under --trusted-key (the cosign
    // signature tag first); what an import carries was checked instead.
    let pushed = carried.is_none();
    if let Some(meta) = &artifact {
        publish::check(&s.blobs, meta).await?;
        // A push may have sent the object's files first, as the builder's
        // `--publish oci://` does (the `.bpfarm` carrier): they become its
        // /v1 `.sig` and `.intoto.jsonl`.
        let from_push = match carried {
            Some(_) => None,
            None => pushed_files(s, repo, &digest).await?,
        };
        if let Some(a) = carried.or(from_push.as_ref()).filter(|a| a.signature.is_some()) {
            checked = crate::signatures::check(&s.blobs, meta, a, s.settings.trusted_keys.as_ref()).await?;
        }
    }
    let canonical = s.settings.canonical_repo();
    let mut tx = s.repo.begin_write().await?;
    check_references(s, &mut tx, repo, &doc).await?;
    if repo == canonical && carried.is_none() {
        check_held_signatures(s, &mut tx, repo, tag, &doc, bytes).await?;
    }
    if let Some(meta) = &artifact {
        publish::check_current(&mut tx, meta, publish::Replace::No).await?;
        if let Some(keys) = &s.settings.trusted_keys
            && (pushed || checked.is_none())
        {
            crate::signatures::check_v2(&mut tx, &s.blobs, repo, &digest, keys).await?;
        }
    }
    if repo == canonical
        && let Some(tag) = tag
    {
        check_canonical_tag(s, &mut tx, repo, tag, &doc, bytes, artifact.as_ref()).await?;
    }
    // Valid: now store.
    s.blobs.put_bytes(bytes).await?;
    let now = now();
    tx.put_manifest(&NewManifest {
        repo,
        digest: digest.as_str(),
        media_type: &doc.media_type,
        size: bytes.len() as i64,
        artifact_type: doc.reported_artifact_type(),
        subject: doc.subject.as_ref().map(|d| d.digest.as_str()),
        annotations: doc.annotations.as_deref(),
        tag,
        now: &now,
    })
    .await?;
    if let Some(meta) = &artifact {
        publish::make_current_signed(&mut tx, &s.blobs, &canonical, meta, publish::Replace::No, checked.as_ref())
            .await?;
    }
    tx.commit().await?;
    Ok((digest, doc.subject.map(|d| d.digest)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tags() {
        for ok in ["bpfarm/tracee-bpf", "a", "a.b/c__d", "x-y/z--w"] {
            assert!(valid_repo(ok), "{ok}");
        }
        for bad in ["", "A/b", "a//b", "-a", "a-", "a/../b", "a/b/", "a:b"] {
            assert!(!valid_repo(bad), "{bad}");
        }
        assert!(valid_tag("6.1.0-47-amd64.v0.3.0") && valid_tag("_x"));
        assert!(!valid_tag(".x") && !valid_tag("a+b") && !valid_tag(&"a".repeat(129)));
    }
}
