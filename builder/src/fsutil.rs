//! Small filesystem helpers every cache uses: atomic writes and renames,
//! and removing a folder whatever permissions an archive gave its contents.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
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

/// Removes a folder and everything in it, first making every folder inside
/// writable (never following a symlink): an archive can create read-only
/// folders, and a builder that is not root could not empty them otherwise.
/// A missing folder is not an error.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    fn unlock(dir: &Path) -> io::Result<()> {
        let md = fs::symlink_metadata(dir)?;
        if !md.file_type().is_dir() {
            return Ok(());
        }
        if md.permissions().mode() & 0o700 != 0o700 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        for e in fs::read_dir(dir)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                unlock(&e.path())?;
            }
        }
        Ok(())
    }
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(md) if !md.file_type().is_dir() => return fs::remove_file(path),
        Ok(_) => {}
    }
    // A first attempt needs no chmod walk in the common case.
    if fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    unlock(path)?;
    fs::remove_dir_all(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_tree_empties_read_only_folders() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("t");
        fs::create_dir_all(t.join("ro/inner")).unwrap();
        fs::write(t.join("ro/inner/f"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", t.join("ro/link")).unwrap();
        fs::set_permissions(t.join("ro/inner"), fs::Permissions::from_mode(0o500)).unwrap();
        fs::set_permissions(t.join("ro"), fs::Permissions::from_mode(0o500)).unwrap();
        remove_tree(&t).unwrap();
        assert!(!t.exists());
        // The link was removed, not followed.
        assert!(Path::new("/etc").is_dir());
        remove_tree(&t).unwrap();
    }
}
