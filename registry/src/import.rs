//! `bpfarm-registry import`: a bundle (an OCI image layout in a tar, as
//! `bundle`, skopeo or oras write it) into this registry, checked in full
//! before anything is written.
//!
//! The tar is read once, as a stream: each entry's type, path and size are
//! checked from its header before its bytes are read (regular files and
//! the two blob folders only; no links, devices, traversal, duplicates;
//! caps on every entry, on their count and on their sum), and each blob is
//! copied into a private staging folder of the store while it is hashed
//! (its name must be its digest). Then `index.json` must reach every blob
//! it names, each with the size and media type its descriptor claims, and
//! every manifest must parse as `/v2` would accept it; a bpfarm object
//! that would conflict with the one this registry holds refuses the whole
//! bundle. Only then are blobs adopted into the store and manifests stored
//! through `distribution::put_manifest` — the `/v2` rules, so a bpfarm
//! artifact becomes a `/v1` object by `publish`, and the canonical
//! repository's per-release indexes are written by the registry itself
//! (the same bytes, `oci::index` being deterministic). What is already
//! here is skipped: importing again writes nothing.
//!
//! Signatures: for each bpfarm object the bundle's `sha256-<hex>.bpfarm`
//! tag (the `.sig` and `.intoto.jsonl` files, `sign::carrier`) and cosign
//! `.sig` tag are read from the checked tar and held to the object and to
//! the registry's `--trusted-key` (`carried`) before anything is written;
//! the object is then stored with them attached to its `/v1` row.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use bpfarm_object::sign::{
    self, Attached, BlobRef, MAX_ATTESTATION_BLOB, MAX_SIGNATURE_BLOB, ManifestSignature, TrustedKeys,
    WireManifestSignature, cosign,
};
use bpfarm_object::{Digest, oci};
use serde_json::Value;

use crate::blobs::{StageError, Staged, Staging};
use crate::bundle::{ANN_REPOSITORY, REF_NAME};
use crate::distribution::{self, MANIFEST_LIMIT};
use crate::error::Error;
use crate::manifest::{self, Kind};
use crate::signatures;
use crate::state::AppState;

/// Caps on what a bundle may hold.
#[derive(Debug, Clone)]
pub struct ImportLimits {
    /// Entries in the tar (a bomb of tiny entries is refused at this count).
    pub max_entries: u64,
    /// Bytes of one blob.
    pub max_blob_bytes: u64,
    /// Bytes of all entries together.
    pub max_total_bytes: u64,
}

impl Default for ImportLimits {
    fn default() -> Self {
        Self { max_entries: 1 << 20, max_blob_bytes: 2 << 30, max_total_bytes: 64 << 30 }
    }
}

/// Why a bundle is refused; nothing of it was written.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("not a readable tar: {0}")]
    Tar(String),
    #[error("entry {entry:?}: {why}")]
    Path { entry: String, why: &'static str },
    #[error("entry {entry:?} is a {kind}; a bundle holds regular files and folders only")]
    EntryType { entry: String, kind: String },
    #[error("entry {0:?} appears twice")]
    Duplicate(String),
    #[error("entry {entry:?} is {size} bytes, over the {limit}-byte limit")]
    TooLarge { entry: String, size: u64, limit: u64 },
    #[error("more than {0} entries (--max-entries)")]
    TooManyEntries(u64),
    #[error("more than {0} bytes in all (--max-total-bytes)")]
    TooManyBytes(u64),
    #[error("entry {entry:?} holds bytes hashing to {actual}, not the digest its name claims")]
    DigestMismatch { entry: String, actual: Digest },
    #[error("no {0} in the bundle: not an OCI image layout")]
    NoFile(&'static str),
    #[error("oci-layout: {0}")]
    Layout(String),
    #[error("index.json: {0}")]
    Index(String),
    #[error("{named_by} names blob {digest}, which the bundle does not hold")]
    MissingBlob { digest: Digest, named_by: String },
    #[error("{named_by} says {digest} has {claimed} bytes; the bundle's blob has {actual}")]
    SizeLies { digest: Digest, claimed: u64, actual: u64, named_by: String },
    #[error("manifest {digest} (named by {named_by}): {why}")]
    Manifest { digest: Digest, named_by: String, why: String },
    #[error("{0}")]
    Conflict(String),
    /// The signing policy refused an object (see `carried`).
    #[error("{0}")]
    Signing(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Registry(#[from] Error),
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

impl ImportError {
    /// Whether the bundle itself was refused (exit status 1), rather than
    /// the import failing (2).
    pub fn is_refusal(&self) -> bool {
        matches!(self, ImportError::Refused(_))
    }
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub new_blobs: usize,
    pub new_bytes: u64,
    pub new_manifests: usize,
    /// bpfarm objects newly made current.
    pub published: usize,
    /// Manifests and tags already here.
    pub present: usize,
    /// Blobs in the tar that nothing in `index.json` reaches (not imported).
    pub unreached: usize,
}

/// One tag of the bundle: which repository, which manifest.
#[derive(Debug, Clone)]
pub struct Root {
    pub repo: String,
    pub tag: String,
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// A manifest to store, its children stored before it.
#[derive(Debug, Clone)]
pub struct PlannedManifest {
    pub repo: String,
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Vec<u8>,
    /// The tag to point at it, if a root names it.
    pub tag: Option<String>,
    /// A bpfarm per-release index of the canonical repository: the
    /// registry writes it when the objects are published.
    pub written_by_registry: bool,
    pub bpfarm_object: bool,
}

/// A checked bundle: manifests in store order, and the plain blobs each
/// repository must link.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub manifests: Vec<PlannedManifest>,
    pub blobs: BTreeSet<(String, Digest)>,
    /// Every digest reached (manifests and blobs).
    pub reached: BTreeSet<Digest>,
}

/// Where a plan's bytes come from while it is checked.
pub trait Content {
    /// A manifest's bytes (at most `MANIFEST_LIMIT`); `None` when absent.
    fn manifest(&self, d: &Digest) -> Result<Option<Vec<u8>>, ImportError>;
    /// A blob's size; `None` when absent.
    fn size(&self, d: &Digest) -> Option<u64>;
    /// A small blob's bytes (at most `max`); `None` when absent.
    fn blob(&self, d: &Digest, max: u64) -> Result<Option<Vec<u8>>, ImportError>;
}

fn is_bpfarm_index(doc: &manifest::Manifest, bytes: &[u8]) -> bool {
    let v: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    doc.is_index() && v["annotations"][oci::ANN_RELEASE].is_string() && v["annotations"][oci::ANN_VERSION].is_string()
}

/// Checks the graph under `roots` against `content` — every descriptor's
/// digest present, with its size; every manifest valid as `/v2` would take
/// it, with the media type its descriptor names — and orders it for
/// storing (children first).
pub fn plan(roots: &[Root], canonical: &str, content: &dyn Content) -> Result<Plan, ImportError> {
    let mut plan = Plan::default();
    let mut done: BTreeSet<(String, Digest)> = BTreeSet::new();
    for root in roots {
        let named_by = format!("tag {} of {}", root.tag, root.repo);
        visit(&mut plan, &mut done, content, canonical, root, &root.digest, &root.media_type, root.size, named_by, 0)?;
    }
    Ok(plan)
}

#[allow(clippy::too_many_arguments)]
fn visit(
    plan: &mut Plan,
    done: &mut BTreeSet<(String, Digest)>,
    content: &dyn Content,
    canonical: &str,
    root: &Root,
    d: &Digest,
    media_type: &str,
    size: u64,
    named_by: String,
    depth: usize,
) -> Result<(), ImportError> {
    let refuse = |why: String| Refusal::Manifest { digest: d.clone(), named_by: named_by.clone(), why };
    if depth > 4 {
        return Err(refuse("indexes nested deeper than 4".into()).into());
    }
    let actual =
        content.size(d).ok_or_else(|| Refusal::MissingBlob { digest: d.clone(), named_by: named_by.clone() })?;
    if actual != size {
        return Err(Refusal::SizeLies { digest: d.clone(), claimed: size, actual, named_by }.into());
    }
    plan.reached.insert(d.clone());
    let is_root = depth == 0;
    if !done.insert((root.repo.clone(), d.clone())) && !is_root {
        return Ok(());
    }
    if size > MANIFEST_LIMIT {
        return Err(refuse(format!("{size} bytes, over the {MANIFEST_LIMIT}-byte manifest limit")).into());
    }
    let bytes =
        content.manifest(d)?.ok_or_else(|| Refusal::MissingBlob { digest: d.clone(), named_by: named_by.clone() })?;
    let doc = manifest::parse(&bytes, media_type).map_err(|e| refuse(e.to_string()))?;
    let artifact = doc.bpfarm_object().map_err(|e| refuse(e.to_string()))?;
    let here = format!("manifest {d}");
    match &doc.kind {
        Kind::Image { config, layers } => {
            for b in std::iter::once(config).chain(layers) {
                let actual = content
                    .size(&b.digest)
                    .ok_or_else(|| Refusal::MissingBlob { digest: b.digest.clone(), named_by: here.clone() })?;
                if actual != b.size {
                    return Err(Refusal::SizeLies {
                        digest: b.digest.clone(),
                        claimed: b.size,
                        actual,
                        named_by: here.clone(),
                    }
                    .into());
                }
                plan.reached.insert(b.digest.clone());
                plan.blobs.insert((root.repo.clone(), b.digest.clone()));
            }
        }
        Kind::Index { manifests } => {
            for c in manifests {
                visit(plan, done, content, canonical, root, &c.digest, &c.media_type, c.size, here.clone(), depth + 1)?;
            }
        }
    }
    let written_by_registry = is_root && root.repo == canonical && is_bpfarm_index(&doc, &bytes);
    plan.manifests.push(PlannedManifest {
        repo: root.repo.clone(),
        digest: d.clone(),
        media_type: media_type.to_owned(),
        bytes,
        tag: is_root.then(|| root.tag.clone()),
        written_by_registry,
        bpfarm_object: artifact.is_some(),
    });
    Ok(())
}

/// What a bundle carries for one bpfarm object manifest, checked.
#[derive(Debug, Clone, Default)]
pub struct Carried {
    /// For the `/v1` row: the `.sig` and `.intoto.jsonl` (from the
    /// `sha256-<hex>.bpfarm` tag) and the cosign signature of the manifest
    /// (from its `.sig` tag), when the manifest is the one the registry
    /// writes for the object.
    pub attached: Attached,
    /// What `signatures::check_bytes` made of it (`None`: no `.sig` file).
    pub checked: Option<signatures::Checked>,
}

/// A tag of `repo` among the bundle's roots.
fn root_tagged<'r>(roots: &'r [Root], repo: &str, tag: &str) -> Option<&'r Root> {
    roots.iter().find(|r| r.repo == repo && r.tag == tag)
}

/// The first simple-signing layer of a cosign signature manifest that
/// names `subject` (and, with `keys`, verifies).
fn manifest_signature(
    bytes: &[u8],
    subject: &Digest,
    keys: Option<&TrustedKeys>,
    content: &dyn Content,
) -> Result<Option<ManifestSignature>, ImportError> {
    let v: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    for l in v["layers"].as_array().into_iter().flatten().take(cosign::MAX_LAYERS) {
        if l["mediaType"] != cosign::SIMPLE_SIGNING_MEDIA_TYPE {
            continue;
        }
        let (Some(d), Some(sig)) = (
            l["digest"].as_str().and_then(|d| d.parse::<Digest>().ok()),
            l["annotations"][cosign::ANN_SIGNATURE].as_str(),
        ) else {
            continue;
        };
        let Some(payload) = content.blob(&d, cosign::MAX_PAYLOAD)? else { continue };
        let s = ManifestSignature { payload, signature: sig.to_owned() };
        let fits = match keys {
            Some(keys) => s.verify(keys, subject).is_ok(),
            None => s.subject().is_ok_and(|named| &named == subject),
        };
        if fits {
            return Ok(Some(s));
        }
    }
    Ok(None)
}

/// For every bpfarm object of `plan`, what the bundle carries for it,
/// held to the object and to `keys` (`--trusted-key`): with keys, an
/// object needs its `.sig` file verified by one of them or, lacking one,
/// a cosign signature of its manifest that verifies (what a `/v2` push
/// needs). Any refusal refuses the bundle: nothing is written.
pub fn carried(
    roots: &[Root],
    plan: &Plan,
    keys: Option<&TrustedKeys>,
    content: &dyn Content,
) -> Result<BTreeMap<(String, Digest), Carried>, ImportError> {
    let mut out = BTreeMap::new();
    for m in plan.manifests.iter().filter(|m| m.bpfarm_object) {
        let doc = manifest::parse(&m.bytes, &m.media_type).map_err(Error::from)?;
        let Some(meta) = doc.bpfarm_object().map_err(Error::from)? else { continue };
        let id = &meta.identity;
        let refuse = |why: String| {
            Refusal::Signing(format!("kernel {} ({}) version {}: {why}", id.kernel_release, id.arch, id.version))
        };
        let named_by = |tag: &str| format!("tag {tag} of {}", m.repo);
        let mut files: Option<(Vec<u8>, Option<Vec<u8>>)> = None;
        let ftag = sign::files_tag(&m.digest);
        if let Some(root) = root_tagged(roots, &m.repo, &ftag) {
            let bytes = content
                .manifest(&root.digest)?
                .ok_or_else(|| Refusal::MissingBlob { digest: root.digest.clone(), named_by: named_by(&ftag) })?;
            let cf = sign::read_files_artifact(&bytes).map_err(|e| refuse(format!("{}: {e}", named_by(&ftag))))?;
            if cf.subject != m.digest {
                return Err(refuse(format!("{} names {} as its subject", named_by(&ftag), cf.subject)).into());
            }
            let read = |b: &sign::carrier::CarriedBlob, max: u64| -> Result<Vec<u8>, ImportError> {
                let bytes = content
                    .blob(&b.digest, max)?
                    .ok_or_else(|| Refusal::MissingBlob { digest: b.digest.clone(), named_by: named_by(&ftag) })?;
                if bytes.len() as u64 != b.size {
                    return Err(Refusal::SizeLies {
                        digest: b.digest.clone(),
                        claimed: b.size,
                        actual: bytes.len() as u64,
                        named_by: named_by(&ftag),
                    }
                    .into());
                }
                Ok(bytes)
            };
            let sig = read(&cf.signature, MAX_SIGNATURE_BLOB)?;
            let att = cf.attestation.as_ref().map(|a| read(a, MAX_ATTESTATION_BLOB)).transpose()?;
            files = Some((sig, att));
        }
        let stag = cosign::signature_tag(&m.digest);
        let sig_manifest = match root_tagged(roots, &m.repo, &stag) {
            Some(root) => content.manifest(&root.digest)?,
            None => None,
        };
        let ms = match &sig_manifest {
            Some(b) => manifest_signature(b, &m.digest, keys, content)?,
            None => None,
        };
        let mut c = Carried::default();
        match files {
            Some((sig, att)) => {
                c.attached = Attached {
                    signature: Some(BlobRef::of(&sig)),
                    attestation: att.as_deref().map(BlobRef::of),
                    // The row's manifest signature is for the manifest the
                    // registry writes; a foreign manifest's stays a tag.
                    manifest_signature: ms
                        .as_ref()
                        .filter(|_| m.digest == signatures::manifest_digest(&meta))
                        .map(WireManifestSignature::from),
                };
                c.checked = signatures::check_bytes(&meta, &c.attached, Some(&sig), att.as_deref(), keys)
                    .map_err(|e| refuse(e.to_string()))?;
            }
            None if keys.is_some() && ms.is_none() => {
                return Err(refuse(format!(
                    "{} carries no signature by a trusted key (neither its {ftag} files nor a valid {stag})",
                    meta.file_name
                ))
                .into());
            }
            None => {}
        }
        out.insert((m.repo.clone(), m.digest.clone()), c);
    }
    Ok(out)
}

/// The bpfarm objects of `plan` that conflict with what this registry holds.
pub async fn conflicts(
    state: &AppState,
    plan: &Plan,
    carried: &BTreeMap<(String, Digest), Carried>,
) -> Result<(), ImportError> {
    for m in &plan.manifests {
        if !m.bpfarm_object {
            continue;
        }
        let doc = manifest::parse(&m.bytes, &m.media_type).map_err(Error::from)?;
        let Some(meta) = doc.bpfarm_object().map_err(Error::from)? else { continue };
        let id = &meta.identity;
        let here = state.repo.current(&id.kernel_release, id.arch.uname(), &id.version).await.map_err(Error::from)?;
        if let Some(row) = &here
            && row.digest == meta.digest.as_str()
            && let Some(checked) = carried.get(&(m.repo.clone(), m.digest.clone())).and_then(|c| c.checked.as_ref())
            && let Some(held) = state.repo.signatures(row.id).await.map_err(Error::from)?
            && signatures::differs(&held, checked)
        {
            return Err(Refusal::Conflict(format!(
                "this registry's object for {} ({}) {} carries other signatures than the bundle's; an import never replaces signatures (publish with --replace first)",
                id.kernel_release, id.arch, id.version
            ))
            .into());
        }
        // Held unsigned, carried signed: the registry writes a held
        // object's signature carrier from its `/v1` signatures, so the
        // carrier's push would be refused half-way through the unit.
        if let Some(row) = &here
            && row.digest == meta.digest.as_str()
            && carried
                .get(&(m.repo.clone(), m.digest.clone()))
                .is_some_and(|c| c.attached.signature.is_some() || c.checked.is_some())
            && state.repo.signatures(row.id).await.map_err(Error::from)?.is_none()
        {
            return Err(Refusal::Conflict(format!(
                "this registry holds the object for {} ({}) {} without signatures, the copy arriving carries signatures for it; an import or mirror never adds signatures to a held object (publish them on this registry with POST /v1/objects?replace=true first)",
                id.kernel_release, id.arch, id.version
            ))
            .into());
        }
        if let Some(row) = here
            && row.digest != meta.digest.as_str()
        {
            return Err(Refusal::Conflict(format!(
                "this registry's object for {} ({}) {} is {}, the bundle's is {}; an import never replaces an object (publish with --replace, or gc the version, first)",
                id.kernel_release, id.arch, id.version, row.digest, meta.digest
            ))
            .into());
        }
    }
    Ok(())
}

/// Stores a checked plan whose blobs are all in the store: links, then
/// manifests children first, skipping what is already here.
pub async fn apply(
    state: &AppState,
    plan: &Plan,
    carried: &BTreeMap<(String, Digest), Carried>,
    report: &mut ImportReport,
) -> Result<(), ImportError> {
    conflicts(state, plan, carried).await?;
    for (repo, d) in &plan.blobs {
        if !state.repo.oci_linked(repo, d.as_str()).await.map_err(Error::from)? {
            state.repo.oci_link(repo, d.as_str()).await.map_err(Error::from)?;
        }
    }
    // Signatures first: under --trusted-key an object whose only signature
    // is its cosign one needs it in the repository when it is stored.
    let (signing, rest): (Vec<&PlannedManifest>, Vec<&PlannedManifest>) =
        plan.manifests.iter().partition(|m| m.tag.as_deref().is_some_and(is_signature_tag));
    for m in signing.into_iter().chain(rest) {
        let stored = state.repo.oci_manifest(&m.repo, m.digest.as_str()).await.map_err(Error::from)?.is_some();
        let tag_done = match &m.tag {
            Some(t) if !m.written_by_registry => {
                state.repo.oci_tag_is(&m.repo, t, m.digest.as_str()).await.map_err(Error::from)?
            }
            _ => true,
        };
        if m.written_by_registry {
            // Its children (the objects) were stored just before: the
            // registry has written this index under its tag.
            continue;
        }
        if stored && tag_done {
            report.present += 1;
            continue;
        }
        let reference = match &m.tag {
            Some(t) => t.clone(),
            None => m.digest.to_string(),
        };
        let attached = carried.get(&(m.repo.clone(), m.digest.clone())).map(|c| &c.attached);
        distribution::put_manifest_carried(state, &m.repo, &reference, &m.bytes, &m.media_type, attached).await?;
        if !stored {
            report.new_manifests += 1;
            if m.bpfarm_object {
                report.published += 1;
            }
        }
    }
    Ok(())
}

/// cosign's `sha256-<hex>.sig`/`.att` and bpfarm's `sha256-<hex>.bpfarm`.
pub fn is_signature_tag(tag: &str) -> bool {
    tag.strip_prefix("sha256-").is_some_and(|t| t.ends_with(".sig") || t.ends_with(".att") || t.ends_with(".bpfarm"))
}

/// The tags of an `index.json`.
pub fn roots(index: &[u8], canonical: &str) -> Result<Vec<Root>, Refusal> {
    let bad = |m: String| Refusal::Index(m);
    let v: Value = serde_json::from_slice(index).map_err(|e| bad(format!("not JSON: {e}")))?;
    if v["schemaVersion"] != 2 {
        return Err(bad("schemaVersion is not 2".into()));
    }
    if !v["mediaType"].is_null() && v["mediaType"] != oci::INDEX_MEDIA_TYPE {
        return Err(bad(format!("mediaType is {}, not {}", v["mediaType"], oci::INDEX_MEDIA_TYPE)));
    }
    let entries = v["manifests"].as_array().ok_or_else(|| bad("no manifests array".into()))?;
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, e) in entries.iter().enumerate() {
        let what = format!("entry {i}");
        let media_type = e["mediaType"].as_str().ok_or_else(|| bad(format!("{what} has no mediaType")))?;
        if media_type != oci::MANIFEST_MEDIA_TYPE
            && media_type != oci::INDEX_MEDIA_TYPE
            && media_type != manifest::DOCKER_MANIFEST
            && media_type != manifest::DOCKER_LIST
        {
            return Err(bad(format!("{what} has media type {media_type:?}, not a manifest or an index")));
        }
        let digest: Digest = e["digest"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("{what} has no valid sha256 digest")))?;
        let size = e["size"].as_u64().ok_or_else(|| bad(format!("{what} has no size")))?;
        let name = e["annotations"][REF_NAME]
            .as_str()
            .ok_or_else(|| bad(format!("{what} ({digest}) has no {REF_NAME} (its tag)")))?;
        let (repo, tag) = match e["annotations"][ANN_REPOSITORY].as_str() {
            Some(r) => {
                let tag = name
                    .strip_prefix(r)
                    .and_then(|t| t.strip_prefix(':'))
                    .ok_or_else(|| bad(format!("{what}: ref name {name:?} is not {r}:<tag>")))?;
                if !distribution::valid_repo(r) {
                    return Err(bad(format!("{what}: {r:?} is not a valid repository name")));
                }
                (r.to_owned(), tag.to_owned())
            }
            None => (canonical.to_owned(), name.to_owned()),
        };
        if !distribution::valid_tag(&tag) {
            return Err(bad(format!("{what}: {tag:?} is not a valid tag")));
        }
        if !seen.insert((repo.clone(), tag.clone())) {
            return Err(bad(format!("{what}: tag {tag} of {repo} appears twice")));
        }
        out.push(Root { repo, tag, digest, media_type: media_type.to_owned(), size });
    }
    Ok(out)
}

/// What an entry's path is, once checked.
enum EntryName {
    Folder,
    Layout,
    Index,
    Blob(Digest),
}

/// An entry's name as messages show it: at most 200 characters, so a
/// hostile name cannot flood the output.
fn shown(path: &Path) -> String {
    let full = path.to_string_lossy();
    match full.char_indices().nth(200) {
        Some((cut, _)) => format!("{}… ({} bytes)", &full[..cut], full.len()),
        None => full.into_owned(),
    }
}

fn entry_name(path: &Path) -> Result<(String, EntryName), Refusal> {
    let shown = shown(path);
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => {
                parts.push(p.to_str().ok_or(Refusal::Path { entry: shown.clone(), why: "is not UTF-8" })?)
            }
            Component::CurDir => {}
            Component::ParentDir => return Err(Refusal::Path { entry: shown, why: "climbs out with .." }),
            Component::RootDir | Component::Prefix(_) => {
                return Err(Refusal::Path { entry: shown, why: "is absolute" });
            }
        }
    }
    let name = parts.join("/");
    let kind = match parts.as_slice() {
        [] | ["blobs"] | ["blobs", "sha256"] => EntryName::Folder,
        ["oci-layout"] => EntryName::Layout,
        ["index.json"] => EntryName::Index,
        ["blobs", "sha256", hex] => EntryName::Blob(
            format!("sha256:{hex}")
                .parse()
                .map_err(|_| Refusal::Path { entry: shown.clone(), why: "is not named by a sha256 digest" })?,
        ),
        _ => return Err(Refusal::Path { entry: shown, why: "is not part of an OCI image layout" }),
    };
    Ok((name, kind))
}

/// Everything pass one read: small files in memory, blobs staged.
struct Read1 {
    layout: Option<Vec<u8>>,
    index: Option<Vec<u8>>,
    blobs: BTreeMap<Digest, Staged>,
}

fn read_tar(file: std::fs::File, staging: &mut Staging, limits: &ImportLimits) -> Result<Read1, ImportError> {
    let mut tar = tar::Archive::new(std::io::BufReader::with_capacity(1 << 16, file));
    // Raw: the tar crate would read a GNU long-name or PAX extension entry
    // whole into memory, whatever its size, before handing over the entry
    // it names. A layout needs neither (its names are short): they are
    // refused by their type below, unread.
    let entries = tar.entries().map_err(|e| Refusal::Tar(e.to_string()))?.raw(true);
    let mut out = Read1 { layout: None, index: None, blobs: BTreeMap::new() };
    let mut names = BTreeSet::new();
    let (mut count, mut total) = (0u64, 0u64);
    for entry in entries {
        let mut entry = entry.map_err(|e| Refusal::Tar(e.to_string()))?;
        count += 1;
        if count > limits.max_entries {
            return Err(Refusal::TooManyEntries(limits.max_entries).into());
        }
        let kind = entry.header().entry_type();
        // A small global PAX header (what some writers put first) says
        // nothing a layout needs; a large one is refused unread.
        if kind == tar::EntryType::XGlobalHeader && entry.header().size().unwrap_or(u64::MAX) <= 4096 {
            continue;
        }
        let path = entry.path().map_err(|e| Refusal::Tar(e.to_string()))?.into_owned();
        let shown = shown(&path);
        // The type first: a link or a device is refused whatever its name.
        if !matches!(kind, tar::EntryType::Directory | tar::EntryType::Regular) {
            let kind = match kind {
                tar::EntryType::Symlink => "symbolic link".to_owned(),
                tar::EntryType::Link => "hard link".to_owned(),
                tar::EntryType::Char => "character device".to_owned(),
                tar::EntryType::Block => "block device".to_owned(),
                tar::EntryType::Fifo => "FIFO".to_owned(),
                tar::EntryType::GNUSparse => "sparse file".to_owned(),
                other => format!("{other:?} entry"),
            };
            return Err(Refusal::EntryType { entry: shown, kind }.into());
        }
        let (name, what) = entry_name(&path)?;
        let size = entry.size();
        if matches!(what, EntryName::Folder) != (kind == tar::EntryType::Directory) {
            return Err(Refusal::Path { entry: shown, why: "has the wrong type for its place in the layout" }.into());
        }
        if !names.insert(name.clone()) {
            return Err(Refusal::Duplicate(name).into());
        }
        let limit = match what {
            EntryName::Folder => 0,
            EntryName::Layout => 4 << 10,
            EntryName::Index => MANIFEST_LIMIT,
            EntryName::Blob(_) => limits.max_blob_bytes,
        };
        if size > limit {
            return Err(Refusal::TooLarge { entry: shown, size, limit }.into());
        }
        total += size;
        if total > limits.max_total_bytes {
            return Err(Refusal::TooManyBytes(limits.max_total_bytes).into());
        }
        let small = |entry: &mut tar::Entry<'_, _>| -> Result<Vec<u8>, ImportError> {
            let mut b = Vec::with_capacity(size as usize);
            entry.take(limit).read_to_end(&mut b).map_err(|e| Refusal::Tar(format!("{name}: {e}")))?;
            Ok(b)
        };
        match what {
            EntryName::Folder => {}
            EntryName::Layout => out.layout = Some(small(&mut entry)?),
            EntryName::Index => out.index = Some(small(&mut entry)?),
            EntryName::Blob(d) => {
                let staged = staging.stage(&mut entry, limit).map_err(|e| match e {
                    StageError::TooLarge { limit } => {
                        ImportError::from(Refusal::TooLarge { entry: shown.clone(), size, limit })
                    }
                    StageError::Io(e) => Refusal::Tar(format!("{name}: {e}")).into(),
                })?;
                if staged.size != size {
                    return Err(Refusal::Tar(format!("{name}: the tar ends inside it")).into());
                }
                if staged.digest != d {
                    return Err(Refusal::DigestMismatch { entry: name, actual: staged.digest.clone() }.into());
                }
                out.blobs.insert(d, staged);
            }
        }
    }
    Ok(out)
}

struct StagedContent<'a> {
    staging: &'a Staging,
    blobs: &'a BTreeMap<Digest, Staged>,
}

impl Content for StagedContent<'_> {
    fn manifest(&self, d: &Digest) -> Result<Option<Vec<u8>>, ImportError> {
        let Some(s) = self.blobs.get(d) else { return Ok(None) };
        match self.staging.read(s, MANIFEST_LIMIT) {
            Ok(b) => Ok(Some(b)),
            Err(StageError::TooLarge { limit }) => {
                Err(Refusal::TooLarge { entry: format!("blobs/sha256/{}", d.hex()), size: s.size, limit }.into())
            }
            Err(StageError::Io(e)) => Err(ImportError::Io { path: PathBuf::from("staging"), source: e }),
        }
    }

    fn size(&self, d: &Digest) -> Option<u64> {
        self.blobs.get(d).map(|s| s.size)
    }

    fn blob(&self, d: &Digest, max: u64) -> Result<Option<Vec<u8>>, ImportError> {
        let Some(s) = self.blobs.get(d) else { return Ok(None) };
        match self.staging.read(s, max) {
            Ok(b) => Ok(Some(b)),
            Err(StageError::TooLarge { limit }) => {
                Err(Refusal::TooLarge { entry: format!("blobs/sha256/{}", d.hex()), size: s.size, limit }.into())
            }
            Err(StageError::Io(e)) => Err(ImportError::Io { path: PathBuf::from("staging"), source: e }),
        }
    }
}

/// Imports the bundle `file` into `state` (see the module docs).
pub async fn import(state: &AppState, file: &Path) -> Result<ImportReport, ImportError> {
    import_with(state, file, &ImportLimits { max_blob_bytes: state.settings.max_blob_bytes, ..ImportLimits::default() })
        .await
}

/// `import` with explicit caps.
pub async fn import_with(state: &AppState, file: &Path, limits: &ImportLimits) -> Result<ImportReport, ImportError> {
    let canonical = state.settings.canonical_repo();
    let io = |source| ImportError::Io { path: file.to_owned(), source };
    let f = std::fs::File::open(file).map_err(io)?;
    let blobs = state.blobs.clone();
    let limits = limits.clone();
    let canon = canonical.clone();
    // Pass one and the checks are blocking file work.
    let keys = state.settings.trusted_keys.clone();
    let (staging, read, plan, carried) = tokio::task::spawn_blocking(move || -> Result<_, ImportError> {
        let mut staging = blobs.staging().map_err(|source| ImportError::Io { path: PathBuf::from("blobs"), source })?;
        let read = read_tar(f, &mut staging, &limits)?;
        let layout = read.layout.as_deref().ok_or(Refusal::NoFile("oci-layout"))?;
        let lv: Value = serde_json::from_slice(layout).map_err(|e| Refusal::Layout(format!("not JSON: {e}")))?;
        if lv["imageLayoutVersion"] != "1.0.0" {
            return Err(
                Refusal::Layout(format!("imageLayoutVersion is {}, not \"1.0.0\"", lv["imageLayoutVersion"])).into()
            );
        }
        let index = read.index.as_deref().ok_or(Refusal::NoFile("index.json"))?;
        let roots = roots(index, &canon)?;
        let content = StagedContent { staging: &staging, blobs: &read.blobs };
        let plan = plan(&roots, &canon, &content)?;
        let carried = carried(&roots, &plan, keys.as_ref(), &content)?;
        Ok((staging, read, plan, carried))
    })
    .await
    .map_err(|e| io(std::io::Error::other(e)))??;
    let mut report = ImportReport::default();
    conflicts(state, &plan, &carried).await?;
    // Checked in full: the reached blobs become visible, then the rows.
    let store = state.blobs.clone();
    let reached = plan.reached.clone();
    let (new_blobs, new_bytes, unreached) =
        tokio::task::spawn_blocking(move || -> std::io::Result<(usize, u64, usize)> {
            let (mut n, mut bytes, mut unreached) = (0, 0, 0);
            for (d, s) in read.blobs {
                if !reached.contains(&d) {
                    unreached += 1;
                    continue;
                }
                let size = s.size;
                if store.adopt_staged(s)? {
                    n += 1;
                    bytes += size;
                }
            }
            drop(staging);
            Ok((n, bytes, unreached))
        })
        .await
        .map_err(|e| io(std::io::Error::other(e)))?
        .map_err(|source| ImportError::Io { path: PathBuf::from("blobs"), source })?;
    report.new_blobs = new_blobs;
    report.new_bytes = new_bytes;
    report.unreached = unreached;
    apply(state, &plan, &carried, &mut report).await?;
    Ok(report)
}
