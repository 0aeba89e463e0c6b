//! `bpfarm-registry bundle`: what `/v2` serves, as one OCI image layout in
//! a tar — `oci-layout`, `index.json` naming every tag
//! (`org.opencontainers.image.ref.name`), `blobs/sha256/<hex>` once each —
//! for carrying across an air gap (`import` reads it; skopeo, oras and the
//! agent's `oci-layout:DIR` read it unpacked).
//!
//! Every tag of every repository is taken generically, so cosign's
//! `sha256-<hex>.sig` / `.att` tags come along with the manifests they
//! sign. Filters (`--version`, a matrix's kernels) keep the tags of
//! bpfarm indexes whose version and (release, arch) match, and the cosign
//! tags of what is kept; an index is carried whole (its bytes, so its
//! digest, unchanged), so a release in the matrix for one arch brings its
//! other arches along. The `.bpfarm` carrier of an object the registry
//! holds is the one its `/v1` signature row makes (written into the tar
//! when the stored tag names other bytes), so a stale tag is never carried;
//! a held, signed object whose `.bpfarm` or cosign `.sig` tag is missing
//! gets both written from that row, so `import --trusted-key` still finds
//! its signature.
//!
//! The tar is deterministic — entries sorted, mtime 0, owner 0:0, fixed
//! modes — so the same data gives the same bytes. It is written to a temp
//! file beside the output and renamed over it when complete; blobs are
//! streamed from the store and re-hashed on the way (a corrupt store is
//! refused, not bundled). Memory holds the list of digests, not their bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bpfarm_object::{Arch, Digest, oci, sign};
use serde_json::{Value, json};

use crate::blobs::{BlobError, BlobStore};
use crate::error::Error;
use crate::repo::Repo;

/// The annotation naming a tag in an OCI layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// On `index.json` entries of a repository other than the canonical one:
/// which repository the tag belongs to (its ref name is then `repo:tag`).
pub const ANN_REPOSITORY: &str = "io.bpfarm.repository";
/// `oci-layout`'s content.
pub const LAYOUT_FILE: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// Largest manifest or index read while walking (as `/v2` accepts).
const MANIFEST_LIMIT: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Registry(#[from] Error),
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("blob {digest} in the store hashes to {actual}: run `bpfarm-registry fsck`; nothing was written")]
    Corrupt { digest: Digest, actual: Digest },
    #[error("blob {0} is named by a manifest but not stored: run `bpfarm-registry fsck`; nothing was written")]
    Missing(Digest),
    #[error("manifest {digest} of {repo} does not parse: {why}")]
    BadManifest { repo: String, digest: String, why: String },
    #[error("the matrix: {0}")]
    Matrix(String),
}

type Result<T, E = BundleError> = std::result::Result<T, E>;

/// Which tags go into a bundle; empty means everything.
#[derive(Debug, Clone, Default)]
pub struct BundleFilter {
    /// Program versions to keep.
    pub versions: Vec<String>,
    /// (kernel release, arch) pairs to keep (a matrix's kernels).
    pub kernels: Option<BTreeSet<(String, Arch)>>,
}

impl BundleFilter {
    fn active(&self) -> bool {
        !self.versions.is_empty() || self.kernels.is_some()
    }
}

/// A kernel matrix (`kernels/<name>.toml`) as far as a bundle needs it:
/// the release and arch of every `[[kernel]]`.
pub fn matrix_kernels(text: &str) -> Result<BTreeSet<(String, Arch)>> {
    #[derive(serde::Deserialize)]
    struct M {
        #[serde(default)]
        kernel: Vec<K>,
    }
    #[derive(serde::Deserialize)]
    struct K {
        release: Option<String>,
        arch: String,
        package: Option<String>,
    }
    let m: M = toml::from_str(text).map_err(|e| BundleError::Matrix(e.to_string()))?;
    let mut out = BTreeSet::new();
    for k in m.kernel {
        let what = k.package.clone().unwrap_or_else(|| k.arch.clone());
        let release = k.release.ok_or_else(|| {
            BundleError::Matrix(format!(
                "kernel {what} has no release (a matrix written by `bpfarm-builder discover` has them)"
            ))
        })?;
        let arch = Arch::from_any(&k.arch)
            .ok_or_else(|| BundleError::Matrix(format!("kernel {release}: unknown arch {:?}", k.arch)))?;
        out.insert((release, arch));
    }
    if out.is_empty() {
        return Err(BundleError::Matrix("it lists no [[kernel]]".into()));
    }
    Ok(out)
}

/// What a bundle holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundleReport {
    pub tags: usize,
    pub blobs: usize,
    /// Bytes of blobs (the tar is a little larger).
    pub bytes: u64,
}

/// One tag to carry.
#[derive(Debug, Clone)]
struct Root {
    repo: String,
    tag: String,
    digest: Digest,
    media_type: String,
    size: u64,
}

fn is_cosign_tag(tag: &str) -> Option<String> {
    let rest = tag.strip_prefix("sha256-")?;
    let hex =
        rest.strip_suffix(".sig").or_else(|| rest.strip_suffix(".att")).or_else(|| rest.strip_suffix(".bpfarm"))?;
    Some(format!("sha256:{hex}"))
}

/// Whether a bpfarm index or manifest passes the filter; `None` when the
/// document is not bpfarm's.
fn passes(doc: &Value, filter: &BundleFilter) -> Option<bool> {
    let ann = &doc["annotations"];
    let release = ann[oci::ANN_RELEASE].as_str()?;
    let version = ann[oci::ANN_VERSION].as_str()?;
    if !filter.versions.is_empty() && !filter.versions.iter().any(|v| v == version) {
        return Some(false);
    }
    let Some(kernels) = &filter.kernels else { return Some(true) };
    let arches: Vec<Arch> = match doc["manifests"].as_array() {
        Some(children) => {
            children.iter().filter_map(|c| c["platform"]["architecture"].as_str().and_then(Arch::from_any)).collect()
        }
        None => ann[oci::ANN_ARCH].as_str().and_then(Arch::from_any).into_iter().collect(),
    };
    Some(arches.into_iter().any(|a| kernels.contains(&(release.to_owned(), a))))
}

async fn read_manifest(blobs: &BlobStore, repo: &str, d: &Digest) -> Result<Value> {
    let bytes = match blobs.read(d).await {
        Ok(b) => b,
        Err(BlobError::Missing(d)) => return Err(BundleError::Missing(d)),
        Err(e) => return Err(Error::from(e).into()),
    };
    if bytes.len() as u64 > MANIFEST_LIMIT {
        return Err(BundleError::BadManifest {
            repo: repo.to_owned(),
            digest: d.to_string(),
            why: format!("over {MANIFEST_LIMIT} bytes"),
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| BundleError::BadManifest {
        repo: repo.to_owned(),
        digest: d.to_string(),
        why: e.to_string(),
    })
}

/// What `/v1` makes the `.bpfarm` carrier of platform manifest `subject`
/// in `r`: `None` when no current object has that manifest; `Some(None)`
/// for one without a `/v1` signature (it has no carrier); else the
/// carrier's bytes, written from the object's signature row as the
/// registry writes them.
async fn carrier_from_v1(repo: &Repo, blobs: &BlobStore, r: &str, subject: &Digest) -> Result<Option<Option<Vec<u8>>>> {
    let Some(m) = repo.oci_manifest(r, subject.as_str()).await.map_err(Error::from)? else { return Ok(None) };
    let bytes = match blobs.read(subject).await {
        Ok(b) => b,
        Err(BlobError::Missing(_)) => return Ok(None),
        Err(e) => return Err(Error::from(e).into()),
    };
    let Ok(doc) = crate::manifest::parse(&bytes, &m.media_type) else { return Ok(None) };
    let Ok(Some(meta)) = doc.bpfarm_object() else { return Ok(None) };
    let id = &meta.identity;
    let Some(row) = repo.current(&id.kernel_release, id.arch.uname(), &id.version).await.map_err(Error::from)? else {
        return Ok(None);
    };
    let held = row.metadata().map_err(Error::from)?;
    if &crate::signatures::manifest_digest(&held) != subject {
        return Ok(None);
    }
    let Some(sigs) = repo.signatures(row.id).await.map_err(Error::from)? else { return Ok(Some(None)) };
    let read = |d: &str| {
        let d = d.parse::<Digest>().map_err(Error::from);
        async move {
            let d = d?;
            match blobs.read(&d).await {
                Ok(b) => Ok(b),
                Err(BlobError::Missing(d)) => Err(BundleError::Missing(d)),
                Err(e) => Err(Error::from(e).into()),
            }
        }
    };
    let signature = read(&sigs.signature_digest).await?;
    let attestation = match &sigs.attestation_digest {
        Some(d) => Some(read(d).await?),
        None => None,
    };
    let subject = bpfarm_object::sign::Subject::manifest(&oci::manifest(&held));
    let a = bpfarm_object::sign::files_artifact(&subject, &held.file_name, &signature, attestation.as_deref());
    Ok(Some(Some(a.manifest)))
}

/// The `.bpfarm` carrier and cosign `.sig` artifacts of every current,
/// signed object, from its `/v1` row (the tag each goes under, and its
/// bytes). A part whose blob is gone is left out (fsck reports it).
async fn held_signed_forms(repo: &Repo, blobs: &BlobStore) -> Result<Vec<(String, sign::cosign::OciArtifact)>> {
    let rows: BTreeMap<i64, crate::repo::SignatureRow> =
        repo.all_signatures().await.map_err(Error::from)?.into_iter().map(|r| (r.object_id, r)).collect();
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let stored = |d: &str| {
        let d = d.parse::<Digest>().ok();
        async move {
            let Some(d) = d else { return Ok(None) };
            match blobs.read(&d).await {
                Ok(b) => Ok(Some(b)),
                Err(BlobError::Missing(_)) => Ok(None),
                Err(e) => Err(BundleError::from(Error::from(e))),
            }
        }
    };
    let mut out = Vec::new();
    for o in repo.current_objects().await.map_err(Error::from)? {
        let Some(row) = rows.get(&o.id) else { continue };
        let meta = o.metadata().map_err(Error::from)?;
        let subject = sign::Subject::manifest(&oci::manifest(&meta));
        if let (Some(payload), Some(signature)) = (&row.payload_digest, &row.manifest_signature)
            && let Some(payload) = stored(payload).await?
        {
            let s = sign::ManifestSignature { payload, signature: signature.clone() };
            let a = sign::signature_artifact(&subject, std::slice::from_ref(&s));
            out.push((a.tag.clone(), a));
        }
        let Some(sig) = stored(&row.signature_digest).await? else { continue };
        let att = match &row.attestation_digest {
            Some(d) => match stored(d).await? {
                Some(b) => Some(b),
                None => continue,
            },
            None => None,
        };
        let a = sign::files_artifact(&subject, &meta.file_name, &sig, att.as_deref());
        out.push((sign::files_tag(&subject.digest), a));
    }
    Ok(out)
}

/// The tags to carry, every blob they reach (digest → size), and the
/// manifests written for the bundle rather than read from the store.
async fn plan(
    repo: &Repo,
    blobs: &BlobStore,
    canonical: &str,
    filter: &BundleFilter,
) -> Result<(Vec<Root>, BTreeMap<Digest, u64>, BTreeMap<Digest, Vec<u8>>)> {
    let mut roots = Vec::new();
    let mut cosign = Vec::new();
    let mut written: BTreeMap<Digest, Vec<u8>> = BTreeMap::new();
    let mut tags_seen: Vec<String> = Vec::new();
    for (r, tag, digest) in repo.oci_all_tags().await.map_err(Error::from)? {
        if r == canonical {
            tags_seen.push(tag.clone());
        }
        let Some(m) = repo.oci_manifest(&r, &digest).await.map_err(Error::from)? else { continue };
        let d: Digest = digest.parse().map_err(Error::from)?;
        let mut root = Root {
            repo: r.clone(),
            tag: tag.clone(),
            digest: d.clone(),
            media_type: m.media_type,
            size: m.size.max(0) as u64,
        };
        // A held object's carrier is what its /v1 row makes, whatever the
        // tag names (one stored before pushes of it were checked).
        if r == canonical
            && let Some(subject) = bpfarm_object::sign::carrier::files_tag_subject(&tag)
        {
            match carrier_from_v1(repo, blobs, &r, &subject).await? {
                None => {}
                Some(None) => {
                    tracing::warn!(%tag, "an unsigned object's carrier tag is not carried (/v1 holds no signature for it)");
                    continue;
                }
                Some(Some(bytes)) => {
                    let own = Digest::of_bytes(&bytes);
                    if own != d {
                        tracing::warn!(%tag, stored = %d, carried = %own, "the stored carrier is not what /v1 holds; carrying /v1's");
                        root.digest = own.clone();
                        root.size = bytes.len() as u64;
                        root.media_type = oci::MANIFEST_MEDIA_TYPE.to_owned();
                        written.insert(own, bytes);
                    }
                }
            }
        }
        if !filter.active() {
            roots.push(root);
            continue;
        }
        if is_cosign_tag(&tag).is_some() {
            cosign.push(root);
            continue;
        }
        let doc = read_manifest(blobs, &r, &root.digest).await?;
        if passes(&doc, filter) == Some(true) && r == canonical {
            roots.push(root);
        }
    }
    // A held, signed object whose `.bpfarm` or cosign `.sig` tag is gone
    // (deleted before such deletes were refused) still travels with both:
    // written from its /v1 row, as a publish writes them.
    let present: BTreeSet<&str> = tags_seen.iter().map(String::as_str).collect();
    let mut missing = Vec::new();
    for (tag, a) in held_signed_forms(repo, blobs).await? {
        if present.contains(tag.as_str()) {
            continue;
        }
        tracing::warn!(%tag, "a held object's signature tag is missing; carrying the one its /v1 row makes");
        let own = Digest::of_bytes(&a.manifest);
        let root = Root {
            repo: canonical.to_owned(),
            tag,
            digest: own.clone(),
            media_type: oci::MANIFEST_MEDIA_TYPE.to_owned(),
            size: a.manifest.len() as u64,
        };
        for b in a.blobs {
            written.insert(b.digest, b.data);
        }
        written.insert(own, a.manifest);
        missing.push(root);
    }
    if filter.active() {
        cosign.extend(missing);
    } else {
        roots.extend(missing);
    }
    // Walk what is kept: every manifest, its config, layers and children.
    let mut reached: BTreeMap<Digest, u64> = BTreeMap::new();
    let mut manifests: BTreeSet<(String, Digest)> = BTreeSet::new();
    let mut stack: Vec<(String, Digest, u64)> =
        roots.iter().map(|r| (r.repo.clone(), r.digest.clone(), r.size)).collect();
    loop {
        while let Some((r, d, size)) = stack.pop() {
            reached.insert(d.clone(), size);
            if !manifests.insert((r.clone(), d.clone())) {
                continue;
            }
            let doc = match written.get(&d) {
                Some(bytes) => serde_json::from_slice(bytes).map_err(|e| BundleError::BadManifest {
                    repo: r.clone(),
                    digest: d.to_string(),
                    why: e.to_string(),
                })?,
                None => read_manifest(blobs, &r, &d).await?,
            };
            let bad = |why: &str| BundleError::BadManifest { repo: r.clone(), digest: d.to_string(), why: why.into() };
            let desc = |v: &Value| -> Result<(Digest, u64)> {
                let cd: Digest = v["digest"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| bad("a descriptor without a valid digest"))?;
                Ok((cd, v["size"].as_u64().ok_or_else(|| bad("a descriptor without a size"))?))
            };
            if let Some(children) = doc["manifests"].as_array() {
                for c in children {
                    let (cd, cs) = desc(c)?;
                    stack.push((r.clone(), cd, cs));
                }
            } else {
                if !doc["config"].is_null() {
                    let (cd, cs) = desc(&doc["config"])?;
                    reached.insert(cd, cs);
                }
                for l in doc["layers"].as_array().into_iter().flatten() {
                    let (cd, cs) = desc(l)?;
                    reached.insert(cd, cs);
                }
            }
        }
        // Cosign tags whose signed manifest is now carried come along.
        let mut added = false;
        cosign.retain(|c| {
            let signed = is_cosign_tag(&c.tag).and_then(|s| s.parse::<Digest>().ok());
            if signed.is_some_and(|s| manifests.iter().any(|(r, d)| *r == c.repo && *d == s)) {
                stack.push((c.repo.clone(), c.digest.clone(), c.size));
                roots.push(c.clone());
                added = true;
                false
            } else {
                true
            }
        });
        if !added {
            break;
        }
    }
    // Sizes from the store: the bytes written are what it holds (checked
    // against the digest on the way).
    for (d, size) in reached.iter_mut() {
        *size = match written.get(d) {
            Some(bytes) => bytes.len() as u64,
            None => blobs.size(d).await.ok_or_else(|| BundleError::Missing(d.clone()))?,
        };
    }
    roots.sort_by(|a, b| (&a.repo, &a.tag).cmp(&(&b.repo, &b.tag)));
    Ok((roots, reached, written))
}

/// The `index.json` of a bundle: one entry per tag.
fn index_json(roots: &[Root], canonical: &str) -> Vec<u8> {
    let manifests: Vec<Value> = roots
        .iter()
        .map(|r| {
            let mut d = oci::descriptor(&r.media_type, &r.digest, r.size);
            d["annotations"] = if r.repo == canonical {
                json!({ REF_NAME: r.tag })
            } else {
                json!({ REF_NAME: format!("{}:{}", r.repo, r.tag), ANN_REPOSITORY: r.repo })
            };
            d
        })
        .collect();
    json!({ "schemaVersion": 2, "mediaType": oci::INDEX_MEDIA_TYPE, "manifests": manifests }).to_string().into_bytes()
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Reads through, hashing.
struct Hashing<R> {
    inner: R,
    hasher: bpfarm_object::Sha256Writer<std::io::Sink>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.write_all(&buf[..n])?;
        Ok(n)
    }
}

fn write_tar(
    file: std::fs::File,
    blobs: &BlobStore,
    index: &[u8],
    reached: &BTreeMap<Digest, u64>,
    written: &BTreeMap<Digest, Vec<u8>>,
) -> Result<std::fs::File> {
    let io = |source: std::io::Error| BundleError::Io { path: PathBuf::from("bundle"), source };
    let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 16, file));
    tar.mode(tar::HeaderMode::Deterministic);
    for (name, bytes) in [("oci-layout", LAYOUT_FILE), ("index.json", index)] {
        tar.append_data(&mut header(tar::EntryType::Regular, bytes.len() as u64, 0o644), name, bytes).map_err(io)?;
    }
    for dir in ["blobs/", "blobs/sha256/"] {
        tar.append_data(&mut header(tar::EntryType::Directory, 0, 0o755), dir, std::io::empty()).map_err(io)?;
    }
    for (d, size) in reached {
        if let Some(bytes) = written.get(d) {
            let name = format!("blobs/sha256/{}", d.hex());
            tar.append_data(&mut header(tar::EntryType::Regular, *size, 0o644), name, bytes.as_slice()).map_err(io)?;
            continue;
        }
        let f = blobs.open_now(d).map_err(|e| match e {
            BlobError::Missing(d) => BundleError::Missing(d),
            e => Error::from(e).into(),
        })?;
        let mut reader = Hashing { inner: f.take(*size), hasher: bpfarm_object::Sha256Writer::new(std::io::sink()) };
        tar.append_data(
            &mut header(tar::EntryType::Regular, *size, 0o644),
            format!("blobs/sha256/{}", d.hex()),
            &mut reader,
        )
        .map_err(io)?;
        let n = reader.hasher.len();
        let (actual, _) = reader.hasher.finish();
        if actual != *d || n != *size {
            return Err(BundleError::Corrupt { digest: d.clone(), actual });
        }
    }
    let out = tar.into_inner().map_err(io)?;
    out.into_inner().map_err(|e| io(e.into_error()))
}

/// Writes the bundle to `out` (replacing it only once complete).
pub async fn bundle(
    repo: &Repo,
    blobs: &BlobStore,
    canonical: &str,
    out: &Path,
    filter: &BundleFilter,
) -> Result<BundleReport> {
    let (roots, reached, written) = plan(repo, blobs, canonical, filter).await?;
    let index = index_json(&roots, canonical);
    let report = BundleReport { tags: roots.len(), blobs: reached.len(), bytes: reached.values().sum() };
    let out = out.to_owned();
    let blobs = blobs.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let io = |source| BundleError::Io { path: out.clone(), source };
        let tmp = tempfile::Builder::new().prefix(".bpfarm-bundle-").tempfile_in(&parent).map_err(io)?;
        let (file, tmp_path) = tmp.into_parts();
        let file = write_tar(file, &blobs, &index, &reached, &written)?;
        file.sync_all().map_err(io)?;
        tmp_path.persist(&out).map_err(|e| io(e.error))?;
        if let Ok(dir) = std::fs::File::open(&parent) {
            let _ = dir.sync_all();
        }
        Ok(())
    })
    .await
    .map_err(|e| BundleError::Io { path: PathBuf::from("bundle"), source: std::io::Error::other(e) })??;
    Ok(report)
}
