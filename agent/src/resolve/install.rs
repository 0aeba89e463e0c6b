//! Installing a verified object: the object and its metadata, written into
//! the install path atomically under its lock. `run` installs in the
//! background ([`install_in_background`]): the object is loaded from the
//! verified bytes in memory meanwhile, so the install's fsyncs (several ms
//! each on a busy disk) are not on the way to attached programs.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use bpfarm_object::ObjectMetadata;

use crate::trust::{TrustError, TrustedDir};

/// Writes `bytes` and `meta` into the install path (created `0700` when
/// missing, and checked like every folder the agent trusts) atomically,
/// under the lock: readers see the old pair, or the new object and then its
/// metadata, never half a file. Both names come from the identity.
/// The object's `.sig` and `.intoto.jsonl` (from `signature`) go beside it
/// the same way, and stale ones are removed.
pub fn install(
    install_path: &Path,
    bytes: &[u8],
    meta: &ObjectMetadata,
    signature: Option<&crate::verify::Signature>,
) -> Result<PathBuf, TrustError> {
    let dir = TrustedDir::open_or_create(install_path)?;
    write_all(&dir, bytes, meta, signature)?;
    Ok(install_path.join(meta.identity.file_name()))
}

/// The files of an install, under the lock.
fn write_all(
    dir: &TrustedDir,
    bytes: &[u8],
    meta: &ObjectMetadata,
    signature: Option<&crate::verify::Signature>,
) -> Result<(), TrustError> {
    let lock = dir.lock_exclusive()?;
    dir.remove_stale_temps(&lock);
    let name = meta.identity.file_name();
    dir.write_atomic(&name, bytes)?;
    let mut json = serde_json::to_vec_pretty(meta).map_err(|e| TrustError::Io {
        path: dir.path().join(format!("{name}.json")),
        source: std::io::Error::other(e),
    })?;
    json.push(b'\n');
    dir.write_atomic(&format!("{name}.json"), &json)?;
    crate::verify::install_beside(dir, &name, signature)
}

/// A verified object's install for `run`: prepared (the install path
/// checked, nothing written) by [`install_in_background`], started by
/// [`PendingInstall::start`] once the object is accepted for use (after the
/// rollback record moved forward), then written on its own thread.
/// Dropping it before `start` writes nothing; dropping it after waits for
/// the thread, so the agent never exits half-way through an install (and
/// leaves no temp files behind).
#[derive(Debug)]
pub struct PendingInstall {
    path: PathBuf,
    state: InstallState,
}

#[derive(Debug)]
enum InstallState {
    Prepared(Box<Prepared>),
    Running(JoinHandle<Result<(), TrustError>>),
    Done,
}

#[derive(Debug)]
struct Prepared {
    dir: TrustedDir,
    bytes: bytes::Bytes,
    meta: ObjectMetadata,
    signature: Option<crate::verify::Signature>,
}

impl PendingInstall {
    /// Where the object goes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts writing the files on their own thread (once; later calls do
    /// nothing).
    pub fn start(&mut self) -> Result<(), TrustError> {
        if !matches!(self.state, InstallState::Prepared(_)) {
            return Ok(());
        }
        let InstallState::Prepared(p) = std::mem::replace(&mut self.state, InstallState::Done) else {
            return Ok(());
        };
        let thread = std::thread::Builder::new()
            .name("bpfarm-install".into())
            .spawn(move || write_all(&p.dir, &p.bytes, &p.meta, p.signature.as_ref()))
            .map_err(|source| TrustError::Io { path: self.path.clone(), source })?;
        self.state = InstallState::Running(thread);
        Ok(())
    }

    /// Waits for the install to end: the object's path, or why it failed
    /// (also when it was never started).
    pub fn wait(mut self) -> Result<PathBuf, TrustError> {
        match std::mem::replace(&mut self.state, InstallState::Done) {
            InstallState::Running(thread) => match thread.join() {
                Ok(r) => r.map(|()| self.path.clone()),
                Err(_) => Err(TrustError::Io {
                    path: self.path.clone(),
                    source: std::io::Error::other("the install thread panicked"),
                }),
            },
            InstallState::Prepared(_) | InstallState::Done => Err(TrustError::Io {
                path: self.path.clone(),
                source: std::io::Error::other("the install never started"),
            }),
        }
    }
}

impl Drop for PendingInstall {
    fn drop(&mut self) {
        if let InstallState::Running(thread) = std::mem::replace(&mut self.state, InstallState::Done) {
            // An error here was not waited for: the next start installs again.
            let _ = thread.join();
        }
    }
}

/// [`install`], prepared for `run`: the install path checked (or created)
/// here, the files written on another thread once [`PendingInstall::start`]
/// is called: the same files, names, lock and atomicity. A refused install
/// path is an error here, before anything is written.
pub fn install_in_background(
    install_path: &Path,
    bytes: bytes::Bytes,
    meta: ObjectMetadata,
    signature: Option<crate::verify::Signature>,
) -> Result<PendingInstall, TrustError> {
    let dir = TrustedDir::open_or_create(install_path)?;
    let path = install_path.join(meta.identity.file_name());
    Ok(PendingInstall { path, state: InstallState::Prepared(Box::new(Prepared { dir, bytes, meta, signature })) })
}
