//! The local places, in order: `TRACEE_BPF_FILE`, the agent's own folder,
//! the install path. Each is read through a checked folder (see `trust`);
//! what was found there, or why not, goes into the trail.

use std::path::{Path, PathBuf};

use bpfarm_object::{Hashed, Identity, ObjectMetadata};

use super::verify::{Rejected, Verified, verify};
use super::{ResolveConfig, Source, Trail};
use crate::trust::{TrustError, TrustedDir};

/// Cap on a `.json` beside a local object.
const MAX_LOCAL_METADATA: u64 = 1 << 20;

/// Why a local candidate is not used. The wording is the trail's.
#[derive(Debug, thiserror::Error)]
pub enum Miss {
    #[error("not there")]
    Absent,
    #[error("refusing: {0}")]
    Untrusted(#[source] TrustError),
    #[error("{path} is unreadable: {source}")]
    BadMetadata {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("found, but no {0} to verify it against: skipped")]
    NoMetadata(PathBuf),
    #[error(transparent)]
    Rejected(#[from] Rejected),
    /// Its signature (`--verify-key`) or rollback check refused it.
    #[error("found, but {0}")]
    Signature(#[source] crate::verify::CheckError),
}

/// A local place the object was found in, and its verified bytes.
#[derive(Debug)]
pub struct Found {
    pub path: PathBuf,
    pub source: Source,
    pub verified: Verified,
}

/// What the local search came to.
#[derive(Debug)]
pub enum Local {
    Found(Box<Found>),
    /// Nothing usable; the search goes on.
    Nothing,
    /// `TRACEE_BPF_FILE` is set but holds nothing usable: an error, not a
    /// fall-through.
    BpfFileEmpty,
}

/// Looks in the local places, in order, and stops at the first usable one.
pub fn search(cfg: &ResolveConfig, trail: &mut Trail) -> Local {
    let name = cfg.identity.file_name();
    // 1. TRACEE_BPF_FILE: a file, or a folder holding the expected name. Only
    //    here may --force-object override the embedded identity.
    if let Some(p) = &cfg.bpf_file {
        let (dir, file, candidate) = if p.is_dir() {
            (p.clone(), name.clone(), p.join(&name))
        } else {
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let file = p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            (dir.to_owned(), file, p.clone())
        };
        let place = format!("TRACEE_BPF_FILE ({})", candidate.display());
        return match consider(trail, place, TrustedDir::open(&dir), &file, cfg, false, cfg.force_object) {
            Some(verified) => Local::Found(Box::new(Found { path: candidate, source: Source::BpfFile, verified })),
            None => Local::BpfFileEmpty,
        };
    }
    trail.step("TRACEE_BPF_FILE", "not set");
    // 2. The agent executable's folder.
    if let Some(dir) = &cfg.exe_dir {
        let place = format!("beside the agent ({})", dir.join(&name).display());
        if let Some(verified) = consider(trail, place, TrustedDir::open(dir), &name, cfg, false, false) {
            return Local::Found(Box::new(Found { path: dir.join(&name), source: Source::ExeDir, verified }));
        }
    }
    // 3. The install path (where fetches and builds are installed).
    let candidate = cfg.install_path.join(&name);
    let place = format!("install path ({})", candidate.display());
    match consider(trail, place, TrustedDir::open(&cfg.install_path), &name, cfg, true, false) {
        Some(verified) => Local::Found(Box::new(Found { path: candidate, source: Source::InstallPath, verified })),
        None => Local::Nothing,
    }
}

/// Reads `name` from a checked folder and verifies it; the `.json` beside
/// it is used when present and required when `require_metadata`.
fn check_local(
    dir: &TrustedDir,
    name: &str,
    id: &Identity,
    require_metadata: bool,
    force: bool,
    limit: u64,
    signing: &crate::verify::SignPolicy,
) -> Result<(Verified, String), Miss> {
    let bytes = dir.read_file(name, limit).map_err(Miss::Untrusted)?.ok_or(Miss::Absent)?;
    let json = format!("{name}.json");
    let meta = match dir.read_file(&json, MAX_LOCAL_METADATA).map_err(Miss::Untrusted)? {
        Some(m) => Some(
            serde_json::from_slice::<ObjectMetadata>(&m)
                .map_err(|source| Miss::BadMetadata { path: dir.path().join(&json), source })?,
        ),
        None if require_metadata => return Err(Miss::NoMetadata(dir.path().join(&json))),
        None => None,
    };
    let (mut v, outcome) = verify(Hashed::new(bytes), id, meta.as_ref(), force)?;
    // The signature beside it, over exactly these bytes.
    let (signature, note) =
        crate::verify::check(signing, id, &v.bytes, crate::verify::read_local(dir, name)).map_err(Miss::Signature)?;
    v.signature = Some(signature);
    Ok((v, format!("{outcome}; {note}")))
}

/// The install path's object, for `fetch` under `--verify-key` (it is
/// replaced only by a newer signed one).
pub fn installed(cfg: &ResolveConfig, trail: &mut Trail) -> Option<Verified> {
    let name = cfg.identity.file_name();
    let place = format!("install path ({})", cfg.install_path.join(&name).display());
    consider(trail, place, TrustedDir::open(&cfg.install_path), &name, cfg, true, false)
}

/// Looks at one local candidate and records what was found there in the
/// trail; the verified bytes when it can be used.
/// `install_path` candidates must have their `.json` and are read under
/// the lock installs take (when one was ever taken; readers create none).
fn consider(
    trail: &mut Trail,
    place: String,
    dir: Result<TrustedDir, TrustError>,
    name: &str,
    cfg: &ResolveConfig,
    install_path: bool,
    force: bool,
) -> Option<Verified> {
    let limit = cfg.transport.max_object_bytes;
    let outcome = match dir {
        Ok(dir) => {
            let lock = if install_path { dir.lock_shared() } else { Ok(None) };
            match lock {
                Err(e) => Err(Miss::Untrusted(e)),
                Ok(_lock) => check_local(&dir, name, &cfg.identity, install_path, force, limit, &cfg.signing),
            }
        }
        Err(TrustError::Missing { .. }) => Err(Miss::Absent),
        Err(e) => Err(Miss::Untrusted(e)),
    };
    match outcome {
        Ok((v, outcome)) => {
            trail.step(place, format!("found; {outcome}"));
            Some(v)
        }
        Err(why) => {
            trail.step(place, why.to_string());
            None
        }
    }
}
