//! Rollback protection (issue #11): per identity, the newest signed build
//! time the agent accepted, so that a replayed older object is refused even
//! though its signature is valid.
//!
//! The record is the agent's own state: one JSON file, `rollback.json`, in
//! a folder (`/var/lib/bpfarm/agent/` unless `--state-dir` or
//! `BPFARM_AGENT_STATE_DIR` says otherwise) that is checked like every
//! folder the agent trusts (`trust`: root or the agent's user owns it and
//! every folder above it, no one else can write it; created `0700`). The
//! file is `0600`, read never through a symlink, written atomically under
//! the folder's lock, and only ever moves forward: a record is replaced
//! only by a newer build time. An unreadable record is an error, never
//! "no record" (that would switch the protection off).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bpfarm_object::sign::VerifiedProvenance;
use bpfarm_object::{Digest, Identity};
use serde::{Deserialize, Serialize};

use crate::trust::{TrustError, TrustedDir};

/// The default state folder.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/bpfarm/agent";
/// The record's file name in the state folder.
pub const STATE_FILE: &str = "rollback.json";
const MAX_STATE: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("rollback state {path}: {source}")]
    Trust {
        path: PathBuf,
        #[source]
        source: TrustError,
    },
    #[error("rollback state {path} is unreadable ({reason}); refusing to guess (fix or remove it)")]
    Corrupt { path: PathBuf, reason: String },
}

/// The newest signed build accepted for one identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The signed build time, as signed (RFC 3339).
    pub built_at: String,
    /// The object that carried it.
    pub digest: Digest,
    /// The key that signed its provenance.
    pub key_id: String,
}

impl Record {
    /// The build time, or `None` when the stored text is not RFC 3339
    /// (caught when the file is read).
    pub fn time(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339(&self.built_at).ok()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    /// Keyed by `<arch>/<version>/<kernel release>`.
    identities: BTreeMap<String, Record>,
}

fn key(id: &Identity) -> String {
    format!("{}/{}/{}", id.arch.uname(), id.version, id.kernel_release)
}

/// The state folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackState {
    dir: PathBuf,
}

impl RollbackState {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file, for messages.
    pub fn file(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    fn trust(&self, source: TrustError) -> RollbackError {
        RollbackError::Trust { path: self.file(), source }
    }

    fn read_in(&self, dir: &TrustedDir) -> Result<StateFile, RollbackError> {
        let Some(bytes) = dir.read_file(STATE_FILE, MAX_STATE).map_err(|e| self.trust(e))? else {
            return Ok(StateFile::default());
        };
        let corrupt = |reason: String| RollbackError::Corrupt { path: self.file(), reason };
        let state: StateFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if let Some((k, r)) = state.identities.iter().find(|(_, r)| r.time().is_none()) {
            return Err(corrupt(format!("{k}: {:?} is not an RFC 3339 time", r.built_at)));
        }
        Ok(state)
    }

    /// The record for `id`, if any. Creates nothing: a missing folder or
    /// file means no record.
    pub fn read(&self, id: &Identity) -> Result<Option<Record>, RollbackError> {
        let dir = match TrustedDir::open(&self.dir) {
            Ok(d) => d,
            Err(TrustError::Missing { .. }) => return Ok(None),
            Err(e) => return Err(self.trust(e)),
        };
        let _lock = dir.lock_shared().map_err(|e| self.trust(e))?;
        Ok(self.read_in(&dir)?.identities.remove(&key(id)))
    }

    /// Records `provenance` for `id` when it is newer than the record (or
    /// there is none); returns whether the record changed.
    pub fn record(
        &self,
        id: &Identity,
        digest: &Digest,
        provenance: &VerifiedProvenance,
    ) -> Result<bool, RollbackError> {
        let dir = TrustedDir::open_or_create(&self.dir).map_err(|e| self.trust(e))?;
        let _lock = dir.lock_exclusive().map_err(|e| self.trust(e))?;
        let mut state = self.read_in(&dir)?;
        let k = key(id);
        if state.identities.get(&k).and_then(Record::time).is_some_and(|t| t >= provenance.built_at) {
            return Ok(false);
        }
        state.identities.insert(
            k,
            Record {
                built_at: provenance.built_at_text.clone(),
                digest: digest.clone(),
                key_id: provenance.key_id.to_string(),
            },
        );
        let mut json = serde_json::to_vec_pretty(&state)
            .map_err(|e| RollbackError::Corrupt { path: self.file(), reason: e.to_string() })?;
        json.push(b'\n');
        dir.write_atomic_mode(STATE_FILE, &json, 0o600).map_err(|e| self.trust(e))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use bpfarm_object::Arch;
    use bpfarm_object::sign::{KeyId, PublicKey};

    use super::*;

    const PUB: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEVUc5SjZ0BkcoYT4EAnxdZkFpw+gW
6fELCifFVg1CdoTO9hBLT91dG7elu30OiyOUM2TR4eUuyqVu/3cwEjvFqQ==
-----END PUBLIC KEY-----
";

    fn key_id() -> KeyId {
        PublicKey::from_pem(PUB.as_bytes()).unwrap().id().clone()
    }

    fn provenance(id: &Identity, at: &str) -> VerifiedProvenance {
        VerifiedProvenance {
            key_id: key_id(),
            identity: id.clone(),
            built_at: humantime::parse_rfc3339(at).unwrap(),
            built_at_text: at.into(),
            subjects: vec![],
            statement: vec![],
        }
    }

    #[test]
    fn records_only_move_forward_and_the_file_is_private() {
        let tmp = tempfile::tempdir().unwrap();
        let state = RollbackState::new(tmp.path().join("state"));
        let id = Identity::new("6.1.0-56-amd64", Arch::X86_64, "v0.1.0").unwrap();
        let other = Identity::new("6.1.0-56-amd64", Arch::Aarch64, "v0.1.0").unwrap();
        let d = Digest::of_bytes(b"x");
        assert_eq!(state.read(&id).unwrap(), None);
        assert!(!tmp.path().join("state").exists(), "reading creates nothing");
        assert!(state.record(&id, &d, &provenance(&id, "2026-03-01T12:00:00Z")).unwrap());
        assert!(!state.record(&id, &d, &provenance(&id, "2026-02-01T12:00:00Z")).unwrap(), "older: kept");
        assert!(state.record(&id, &d, &provenance(&id, "2026-04-01T00:00:00Z")).unwrap());
        assert_eq!(state.read(&id).unwrap().unwrap().built_at, "2026-04-01T00:00:00Z");
        assert_eq!(state.read(&other).unwrap(), None, "per identity");
        let meta = std::fs::metadata(state.file()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(state.dir()).unwrap().permissions().mode() & 0o777, 0o700);

        // A damaged record is an error, not "no record".
        std::fs::write(state.file(), b"{not json").unwrap();
        assert!(matches!(state.read(&id), Err(RollbackError::Corrupt { .. })));
        // A group-writable state file is not trusted.
        std::fs::write(state.file(), b"{\"identities\":{}}").unwrap();
        std::fs::set_permissions(state.file(), std::fs::Permissions::from_mode(0o664)).unwrap();
        assert!(matches!(state.read(&id), Err(RollbackError::Trust { .. })));
        // Nor one reached through a symlink.
        std::fs::remove_file(state.file()).unwrap();
        let elsewhere = tmp.path().join("elsewhere.json");
        std::fs::write(&elsewhere, b"{\"identities\":{}}").unwrap();
        std::os::unix::fs::symlink(&elsewhere, state.file()).unwrap();
        assert!(matches!(state.read(&id), Err(RollbackError::Trust { source: TrustError::Symlink { .. }, .. })));
    }
}
