//! The output folder: `<out>/<arch>/<file name>` with its metadata beside
//! it as `<file name>.json`, the one place the build writes metadata as
//! JSON.

use std::fs;
use std::path::{Path, PathBuf};

use bpfarm_object::ObjectMetadata;

use crate::fsutil;

/// `<out>/<arch>/<file name>` and `<file name>.json` beside it. Files that
/// already hold the same bytes are left alone.
pub(super) fn write_out(out_dir: &Path, bytes: &[u8], meta: &ObjectMetadata) -> Result<PathBuf, String> {
    let dir = out_dir.join(meta.identity.arch.uname());
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let name = meta.identity.file_name();
    let dest = dir.join(&name);
    if fs::read(&dest).ok().as_deref() != Some(bytes) {
        fsutil::write_atomic(&dest, bytes).map_err(|e| format!("{}: {e}", dest.display()))?;
    }
    let json_path = dir.join(format!("{name}.json"));
    let mut json = serde_json::to_vec_pretty(meta).expect("metadata serializes");
    json.push(b'\n');
    if fs::read(&json_path).ok().as_deref() != Some(&json[..]) {
        fsutil::write_atomic(&json_path, &json).map_err(|e| format!("{}: {e}", json_path.display()))?;
    }
    Ok(dest)
}
