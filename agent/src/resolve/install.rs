//! Installing a verified object: the object and its metadata, written into
//! the install path atomically under its lock.

use std::path::{Path, PathBuf};

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
    let _lock = dir.lock_exclusive()?;
    let name = meta.identity.file_name();
    dir.write_atomic(&name, bytes)?;
    let mut json = serde_json::to_vec_pretty(meta).map_err(|e| TrustError::Io {
        path: install_path.join(format!("{name}.json")),
        source: std::io::Error::other(e),
    })?;
    json.push(b'\n');
    dir.write_atomic(&format!("{name}.json"), &json)?;
    crate::verify::install_beside(&dir, &name, signature)?;
    Ok(install_path.join(name))
}
