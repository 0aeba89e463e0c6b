//! Small filesystem helpers every cache uses: atomic writes and renames.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Writes `bytes` to `path` atomically: a uniquely named temp file in the same
/// folder, fsync, rename. Readers see the old file or the whole new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Copies `from` to `to` atomically (temp file + rename), unless `to`
/// already holds the same bytes.
pub fn copy_atomic(from: &Path, to: &Path) -> io::Result<()> {
    if let (Ok(a), Ok(b)) = (fs::metadata(from), fs::metadata(to))
        && a.len() == b.len()
        && fs::read(from)? == fs::read(to)?
    {
        return Ok(());
    }
    let dir = to.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    let mut src = File::open(from)?;
    io::copy(&mut src, &mut tmp.as_file())?;
    tmp.as_file().sync_all()?;
    tmp.persist(to).map_err(|e| e.error)?;
    Ok(())
}
