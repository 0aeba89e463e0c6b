//! `bpfarm-registry mirror --from oci://HOST[:PORT]/NAMESPACE`: an
//! incremental sync from any OCI registry the builder published to with
//! `--publish oci://…` (`NAMESPACE/tracee-bpf`), into this data folder.
//!
//! The repository's tags are listed (`bpfarm_object::oci_client`, paged,
//! capped, one deadline); each bpfarm per-release index tag is mirrored
//! with the cosign `sha256-<hex>.sig`/`.att` and bpfarm
//! `sha256-<hex>.bpfarm` tags of its manifests, as one unit: what this
//! registry lacks of its graph is fetched — each manifest and blob capped
//! at the size its descriptor names (and `--max-blob-bytes`), hashed, and
//! copied into the store's private staging folder — and the unit is then
//! checked and stored by exactly the path `import` takes for a bundle
//! (`import::plan`, `import::carried`, adopt, `import::apply`): the `/v2`
//! rules, so objects become `/v1` objects with their signatures, under the
//! registry's `--trusted-key` and the copy rules. A refused unit leaves no
//! trace (its staging folder goes with it) and the sync goes on with the
//! next; what is already here is not fetched again, so a second run only
//! reads the tags' manifests. Interrupted, a rerun completes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use bpfarm_object::Digest;
use bpfarm_object::oci;
use bpfarm_object::oci_client::{OciError, OciRegistry, OciTarget, TagListLimits, credentials};
use serde_json::Value;

use crate::blobs::{StageError, Staged, Staging};
use crate::distribution::MANIFEST_LIMIT;
use crate::error::Error;
use crate::import::{self, Content, ImportError, ImportReport, Refusal, Root};
use crate::mirror::{MirrorConfig, MirrorError, MirrorReport};
use crate::state::AppState;

/// Syncs `state` from `config.from`: an `oci://` target here, anything
/// else through `mirror::mirror` (see the module docs).
pub async fn mirror(state: &AppState, config: &MirrorConfig) -> Result<MirrorReport, MirrorError> {
    if !config.from.starts_with("oci://") {
        return crate::mirror::mirror(state, config).await;
    }
    crate::mirror::on_blocking_thread(state, config, run).await
}

/// Mirrors `config.from` (an `oci://` target) into `state`, from a blocking
/// thread; storage calls go to `h`.
fn run(h: &tokio::runtime::Handle, state: &AppState, config: &MirrorConfig) -> Result<MirrorReport, MirrorError> {
    let target = OciTarget::parse(config.from.trim_end_matches('/'))?;
    let transport = config.transport()?;
    let auth = credentials(&target.registry, None, config.token.as_deref());
    let registry = OciRegistry::new(target, auth, &transport)?;
    let mut report = MirrorReport::default();
    if let Some(w) = registry.warning() {
        report.warnings.push(w.to_owned());
    }
    let tags = registry.list_tags(TagListLimits::default())?;
    let signing: BTreeSet<&str> = tags.iter().map(String::as_str).filter(|t| import::is_signature_tag(t)).collect();
    let mut releases: Vec<&str> = tags.iter().map(String::as_str).filter(|t| !import::is_signature_tag(t)).collect();
    releases.sort_unstable();
    let canonical = state.settings.canonical_repo();
    for tag in releases {
        match unit(h, state, config, &registry, &canonical, tag, &signing, &mut report) {
            Ok(()) => {}
            Err(e) if e.is_refusal() => report.refused.push(format!("tag {tag}: {e}")),
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}

fn is_bpfarm_index(v: &Value) -> bool {
    v["mediaType"] == oci::INDEX_MEDIA_TYPE
        && v["annotations"][oci::ANN_RELEASE].is_string()
        && v["annotations"][oci::ANN_VERSION].is_string()
}

/// What a unit's graph reads from: what this run fetched (staged, not yet
/// visible) and what the store already holds.
struct Gathered {
    staging: Staging,
    staged: BTreeMap<Digest, Staged>,
    store: crate::blobs::BlobStore,
}

impl Gathered {
    fn read(&self, d: &Digest, max: u64) -> Result<Option<Vec<u8>>, ImportError> {
        let too_large = |size: u64, limit: u64| Refusal::TooLarge { entry: d.to_string(), size, limit };
        if let Some(s) = self.staged.get(d) {
            return match self.staging.read(s, max) {
                Ok(b) => Ok(Some(b)),
                Err(StageError::TooLarge { limit }) => Err(too_large(s.size, limit).into()),
                Err(StageError::Io(e)) => Err(ImportError::Io { path: "staging".into(), source: e }),
            };
        }
        let Some(size) = self.store.size_now(d) else { return Ok(None) };
        if size > max {
            return Err(too_large(size, max).into());
        }
        let f = self.store.open_now(d).map_err(Error::from)?;
        let mut b = Vec::with_capacity(size as usize);
        f.take(max).read_to_end(&mut b).map_err(|source| ImportError::Io { path: self.store.path(d), source })?;
        Ok(Some(b))
    }
}

impl Content for Gathered {
    fn manifest(&self, d: &Digest) -> Result<Option<Vec<u8>>, ImportError> {
        self.read(d, MANIFEST_LIMIT)
    }

    fn size(&self, d: &Digest) -> Option<u64> {
        self.staged.get(d).map(|s| s.size).or_else(|| self.store.size_now(d))
    }

    fn blob(&self, d: &Digest, max: u64) -> Result<Option<Vec<u8>>, ImportError> {
        self.read(d, max)
    }
}

/// Fetches what the store lacks of one unit, then stores it the way
/// `import` does.
#[allow(clippy::too_many_arguments)]
fn unit(
    h: &tokio::runtime::Handle,
    state: &AppState,
    config: &MirrorConfig,
    registry: &OciRegistry,
    canonical: &str,
    tag: &str,
    signing: &BTreeSet<&str>,
    report: &mut MirrorReport,
) -> Result<(), MirrorError> {
    let Some(index) = registry.run(registry.fetch_manifest(tag, MANIFEST_LIMIT))? else {
        // Deleted since the listing.
        return Ok(());
    };
    let v: Value = serde_json::from_slice(&index.bytes).unwrap_or(Value::Null);
    if !is_bpfarm_index(&v) {
        report.warnings.push(format!("tag {tag} is not a bpfarm release index; not mirrored"));
        return Ok(());
    }
    let staging = state.blobs.staging().map_err(|source| MirrorError::Io { what: "the staging folder", source })?;
    let mut g = Gathered { staging, staged: BTreeMap::new(), store: state.blobs.clone() };
    let mut fetched = Fetched::default();
    stage(&mut g, &index.bytes, &index.digest, &mut fetched, false)?;
    let mut roots = vec![Root {
        repo: canonical.to_owned(),
        tag: tag.to_owned(),
        digest: index.digest.clone(),
        media_type: index.media_type.clone(),
        size: index.bytes.len() as u64,
    }];
    // Each manifest once: an index may name a child any number of times.
    let mut subjects = BTreeSet::from([index.digest.clone()]);
    let mut seen = BTreeSet::new();
    gather(registry, config, &mut g, &v, &mut subjects, &mut seen, &mut fetched, 0)?;
    // The signing tags of the index and of every manifest under it.
    for subject in subjects {
        for suffix in ["sig", "att", "bpfarm"] {
            let stag = format!("sha256-{}.{suffix}", subject.hex());
            if !signing.contains(stag.as_str()) {
                continue;
            }
            let Some(m) = registry.run(registry.fetch_manifest(&stag, MANIFEST_LIMIT))? else { continue };
            stage(&mut g, &m.bytes, &m.digest, &mut fetched, false)?;
            let sv: Value = serde_json::from_slice(&m.bytes).unwrap_or(Value::Null);
            let mut none = BTreeSet::new();
            gather(registry, config, &mut g, &sv, &mut none, &mut seen, &mut fetched, 1)?;
            roots.push(Root {
                repo: canonical.to_owned(),
                tag: stag,
                digest: m.digest,
                media_type: m.media_type,
                size: m.bytes.len() as u64,
            });
        }
    }
    // Checked as an import checks a bundle; nothing is visible yet.
    let plan = import::plan(&roots, canonical, &g)?;
    let carried = import::carried(&roots, &plan, state.settings.trusted_keys.as_ref(), &g)?;
    h.block_on(import::conflicts(state, &plan, &carried))?;
    let Gathered { staging, staged, store } = g;
    for (d, s) in staged {
        if plan.reached.contains(&d) {
            store.adopt_staged(s).map_err(|source| MirrorError::Io { what: "the blob store", source })?;
        }
    }
    drop(staging);
    let mut done = ImportReport::default();
    h.block_on(import::apply(state, &plan, &carried, &mut done))?;
    report.fetched += fetched.count;
    report.bytes += fetched.bytes;
    report.published += done.published;
    report.present += done.present;
    Ok(())
}

/// What a unit fetched by digest (the tags' own manifests are not counted:
/// they are read on every run).
#[derive(Default)]
struct Fetched {
    count: usize,
    bytes: u64,
}

fn stage(g: &mut Gathered, bytes: &[u8], d: &Digest, fetched: &mut Fetched, count: bool) -> Result<(), MirrorError> {
    if g.staged.contains_key(d) || g.store.size_now(d).is_some() {
        return Ok(());
    }
    let s = g
        .staging
        .stage(&mut &bytes[..], bytes.len() as u64)
        .map_err(|e| MirrorError::Io { what: "the staging folder", source: std::io::Error::other(e) })?;
    if s.digest != *d {
        return Err(MirrorError::Refused(format!("{d}: the staged bytes hash to {}", s.digest)));
    }
    if count {
        fetched.count += 1;
        fetched.bytes += s.size;
    }
    g.staged.insert(d.clone(), s);
    Ok(())
}

/// A descriptor of `v` at `key`: its digest and size.
fn descriptor(d: &Value, named_by: &str) -> Result<(Digest, u64), MirrorError> {
    let digest = d["digest"]
        .as_str()
        .and_then(|s| s.parse::<Digest>().ok())
        .ok_or_else(|| MirrorError::Refused(format!("{named_by} has a descriptor without a valid sha256 digest")))?;
    let size = d["size"]
        .as_u64()
        .ok_or_else(|| MirrorError::Refused(format!("{named_by}: descriptor {digest} has no size")))?;
    Ok((digest, size))
}

/// Fetches what the store lacks under manifest `v`: child manifests (by
/// digest, capped at their descriptor's size) and, for image manifests,
/// the config and layers (capped at their size and `--max-blob-bytes`).
/// `subjects` collects the child manifests' digests; `seen` holds the
/// manifests already descended into, so a child named many times (or by
/// many indexes) is read and walked once.
#[allow(clippy::too_many_arguments)]
fn gather(
    registry: &OciRegistry,
    config: &MirrorConfig,
    g: &mut Gathered,
    v: &Value,
    subjects: &mut BTreeSet<Digest>,
    seen: &mut BTreeSet<Digest>,
    fetched: &mut Fetched,
    depth: usize,
) -> Result<(), MirrorError> {
    if depth > 4 {
        return Err(MirrorError::Refused("indexes nested deeper than 4".into()));
    }
    for c in v["manifests"].as_array().into_iter().flatten() {
        let (d, size) = descriptor(c, "an index")?;
        subjects.insert(d.clone());
        if !seen.insert(d.clone()) {
            continue;
        }
        let bytes = if g.size(&d).is_some() {
            match g.manifest(&d)? {
                Some(b) => b,
                None => continue,
            }
        } else {
            if size > MANIFEST_LIMIT {
                return Err(MirrorError::Refused(format!(
                    "manifest {d} is {size} bytes, over the {MANIFEST_LIMIT}-byte limit"
                )));
            }
            let m = registry.run(registry.fetch_manifest(d.as_str(), size))?.ok_or_else(|| {
                MirrorError::Refused(format!("the registry does not have manifest {d}, which an index names"))
            })?;
            if m.bytes.len() as u64 != size {
                return Err(MirrorError::Refused(format!(
                    "manifest {d} is {} bytes, its descriptor says {size}",
                    m.bytes.len()
                )));
            }
            stage(g, &m.bytes, &d, fetched, true)?;
            m.bytes
        };
        let child: Value = serde_json::from_slice(&bytes)
            .map_err(|e| MirrorError::Refused(format!("manifest {d} is not JSON: {e}")))?;
        gather(registry, config, g, &child, subjects, seen, fetched, depth + 1)?;
    }
    let blobs =
        v["config"].is_object().then_some(&v["config"]).into_iter().chain(v["layers"].as_array().into_iter().flatten());
    for b in blobs {
        let (d, size) = descriptor(b, "a manifest")?;
        if g.size(&d).is_some() {
            continue;
        }
        if size > config.max_blob_bytes {
            return Err(MirrorError::Refused(format!(
                "blob {d} is {size} bytes, over the {}-byte limit (--max-blob-bytes); not downloading it",
                config.max_blob_bytes
            )));
        }
        let bytes = registry.run(registry.fetch_blob(&d, size))?;
        stage(g, &bytes, &d, fetched, true)?;
    }
    Ok(())
}

impl From<OciError> for MirrorError {
    fn from(e: OciError) -> Self {
        MirrorError::Oci(e)
    }
}

impl From<ImportError> for MirrorError {
    fn from(e: ImportError) -> Self {
        match e {
            ImportError::Refused(r) => MirrorError::Refused(r.to_string()),
            ImportError::Registry(e) => MirrorError::Registry(e),
            ImportError::Io { path, source } => MirrorError::Io {
                what: "a file",
                source: std::io::Error::new(source.kind(), format!("{}: {source}", path.display())),
            },
        }
    }
}
