//! Small filesystem helpers every cache uses: atomic writes and copies of
//! plain files (the builder's one implementation; the agent's install and
//! the registry's export have their own, see ARCHITECTURE.md), and removing
//! a folder whatever permissions an archive gave its contents.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Writes `bytes` to `path` atomically: readers see the old file or the
/// whole new one, and after a crash one of the two is there.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_with(path, |f| f.write_all(bytes))
}

/// Copies `from` to `to` atomically (as [`write_atomic`]), unless `to`
/// already holds the same bytes.
pub fn copy_atomic(from: &Path, to: &Path) -> io::Result<()> {
    if let (Ok(a), Ok(b)) = (fs::metadata(from), fs::metadata(to))
        && a.len() == b.len()
        && fs::read(from)? == fs::read(to)?
    {
        return Ok(());
    }
    let mut src = File::open(from)?;
    replace_with(to, |f| io::copy(&mut src, f).map(drop))
}

/// The one atomic replace of a plain file: a temp file with a random name
/// in the same folder (`create_new`), filled by `fill`, fsynced, renamed
/// over `path`; then the folder is fsynced, since only that makes the
/// rename durable. A failure removes the temp file.
fn replace_with(path: &Path, fill: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    fill(tmp.as_file_mut())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
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
    fn atomic_writes_replace_whole_files_and_leave_no_temp_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write_atomic(&p, b"old").unwrap();
        write_atomic(&p, b"new bytes").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new bytes");
        let src = d.path().join("src");
        fs::write(&src, b"copied").unwrap();
        copy_atomic(&src, &p).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"copied");
        // A folder where the file should go: refused, nothing left behind.
        fs::create_dir(d.path().join("dir")).unwrap();
        assert!(write_atomic(&d.path().join("dir"), b"x").is_err());
        let names: Vec<String> =
            fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| !n.starts_with(".tmp-")), "{names:?}");
    }

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
