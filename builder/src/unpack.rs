//! Unpacking archives in process: `.deb` (ar → control/data tar, xz, zstd or
//! gzip) and plain tar streams, writing only entries a filter keeps, and never
//! anything outside the target directory.
//!
//! Every entry is checked before anything is written: no `..`, no absolute
//! path, no link whose target leaves the target directory. Writing itself goes
//! through `tar::Entry::unpack_in`, which also refuses to write through a
//! symlinked parent that resolves outside. After the last entry every symlink
//! written is resolved once more, so a chain of individually harmless links
//! cannot point out either. Callers unpack into a fresh temporary directory and
//! drop it on error, so a refused archive leaves nothing behind.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};

/// Why an archive could not be unpacked. Always names the archive, and the
/// entry when one is at fault.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("{archive}: entry {entry:?}: {reason}")]
    Hostile { archive: PathBuf, entry: String, reason: String },
    #[error("{archive}: {what}: {source}")]
    Io {
        archive: PathBuf,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{archive}: not a Debian package: {reason}")]
    NotDeb { archive: PathBuf, reason: String },
}

impl UnpackError {
    fn io(archive: &Path, what: impl Into<String>, source: io::Error) -> Self {
        Self::Io { archive: archive.to_owned(), what: what.into(), source }
    }
    fn hostile(archive: &Path, entry: &Path, reason: impl Into<String>) -> Self {
        Self::Hostile { archive: archive.to_owned(), entry: entry.display().to_string(), reason: reason.into() }
    }
}

/// What an unpack wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries_seen: u64,
    pub files_written: u64,
    pub bytes_written: u64,
}

/// A compressed member's decoder, chosen by the member's name.
fn decoder<'a>(archive: &Path, name: &str, r: impl Read + 'a) -> Result<Box<dyn Read + 'a>, UnpackError> {
    Ok(if name.ends_with(".xz") {
        Box::new(liblzma::read::XzDecoder::new(r))
    } else if name.ends_with(".zst") {
        Box::new(zstd::stream::read::Decoder::new(r).map_err(|e| UnpackError::io(archive, name, e))?)
    } else if name.ends_with(".gz") {
        Box::new(flate2::read::GzDecoder::new(r))
    } else if name.ends_with(".tar") {
        Box::new(r)
    } else {
        return Err(UnpackError::NotDeb {
            archive: archive.to_owned(),
            reason: format!("unsupported member compression {name:?}"),
        });
    })
}

/// Reads the `.deb`'s `control` file (the package's control stanza).
pub fn deb_control(deb: &Path) -> Result<String, UnpackError> {
    let mut found = None;
    with_deb_member(deb, "control.tar", |name, r| {
        let mut tar = tar::Archive::new(r);
        for entry in tar.entries().map_err(|e| UnpackError::io(deb, name, e))? {
            let mut entry = entry.map_err(|e| UnpackError::io(deb, name, e))?;
            let path = entry.path().map_err(|e| UnpackError::io(deb, name, e))?.into_owned();
            if path.file_name().is_some_and(|n| n == "control") && path.components().count() <= 2 {
                let mut s = String::new();
                entry.read_to_string(&mut s).map_err(|e| UnpackError::io(deb, "control", e))?;
                found = Some(s);
                break;
            }
        }
        Ok(())
    })?;
    found.ok_or_else(|| UnpackError::NotDeb {
        archive: deb.to_owned(),
        reason: "control.tar has no control file".into(),
    })
}

/// Unpacks the `.deb`'s data archive into `dest`, keeping the entries `keep`
/// accepts (paths relative to the package root, without `./`).
pub fn unpack_deb(deb: &Path, dest: &Path, keep: &dyn Fn(&Path) -> bool) -> Result<UnpackStats, UnpackError> {
    let mut stats = UnpackStats::default();
    with_deb_member(deb, "data.tar", |name, r| {
        stats = unpack_tar(deb, name, r, dest, keep)?;
        Ok(())
    })?;
    Ok(stats)
}

/// Finds the ar member whose name starts with `prefix` and hands its
/// decompressed stream to `f`.
fn with_deb_member(
    deb: &Path,
    prefix: &str,
    f: impl FnOnce(&str, &mut dyn Read) -> Result<(), UnpackError>,
) -> Result<(), UnpackError> {
    let file = File::open(deb).map_err(|e| UnpackError::io(deb, "open", e))?;
    let mut ar = ar::Archive::new(BufReader::with_capacity(1 << 16, file));
    let mut first = true;
    while let Some(entry) = ar.next_entry() {
        let entry = entry
            .map_err(|e| UnpackError::NotDeb { archive: deb.to_owned(), reason: format!("bad ar archive: {e}") })?;
        let name = String::from_utf8_lossy(entry.header().identifier()).into_owned();
        if first && name != "debian-binary" {
            return Err(UnpackError::NotDeb {
                archive: deb.to_owned(),
                reason: format!("first member is {name:?}, not debian-binary"),
            });
        }
        first = false;
        if name.starts_with(prefix) {
            let mut dec = decoder(deb, &name, entry)?;
            return f(&name, &mut dec);
        }
    }
    Err(UnpackError::NotDeb {
        archive: deb.to_owned(),
        reason: if first { "empty or not an ar archive".into() } else { format!("no {prefix}.* member") },
    })
}

/// Unpacks a tar stream into `dest` (which must exist), keeping what `keep`
/// accepts. `archive`/`member` only name things in errors.
pub fn unpack_tar(
    archive: &Path,
    member: &str,
    reader: impl Read,
    dest: &Path,
    keep: &dyn Fn(&Path) -> bool,
) -> Result<UnpackStats, UnpackError> {
    let mut tar = tar::Archive::new(reader);
    tar.set_preserve_permissions(false);
    tar.set_preserve_mtime(true);
    tar.set_unpack_xattrs(false);
    tar.set_overwrite(true);
    let mut stats = UnpackStats::default();
    let mut links = Vec::new();
    let mut last = PathBuf::new();
    let entries = tar.entries().map_err(|e| UnpackError::io(archive, member, e))?;
    for entry in entries {
        let ctx = |last: &Path| format!("{member} after entry {:?}", last.display().to_string());
        let mut entry = entry.map_err(|e| UnpackError::io(archive, ctx(&last), e))?;
        stats.entries_seen += 1;
        let raw = entry.path().map_err(|e| UnpackError::io(archive, ctx(&last), e))?.into_owned();
        let rel = checked_relative(archive, &raw)?;
        last = raw.clone();
        let kind = entry.header().entry_type();
        // Link targets are checked for every entry, kept or not: a hostile
        // archive is refused as a whole, not partly unpacked.
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(|e| UnpackError::io(archive, ctx(&raw), e))?
                .ok_or_else(|| UnpackError::hostile(archive, &raw, "link without a target"))?
                .into_owned();
            if kind.is_hard_link() {
                checked_relative(archive, &target).map_err(|_| {
                    UnpackError::hostile(archive, &raw, format!("hard link to {} leaves the target", target.display()))
                })?;
            } else if keep(&rel) {
                check_symlink_target(archive, &raw, &rel, &target)?;
            }
        }
        if rel.as_os_str().is_empty() || !keep(&rel) {
            continue;
        }
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                stats.files_written += 1;
                stats.bytes_written += entry.header().size().unwrap_or(0);
            }
            tar::EntryType::Directory | tar::EntryType::Link => {}
            tar::EntryType::Symlink => links.push(rel.clone()),
            other => {
                return Err(UnpackError::hostile(
                    archive,
                    &raw,
                    format!("unsupported entry type {other:?} (devices and fifos are never unpacked)"),
                ));
            }
        }
        let wrote = entry.unpack_in(dest).map_err(|e| UnpackError::Hostile {
            archive: archive.to_owned(),
            entry: raw.display().to_string(),
            reason: e.to_string(),
        })?;
        if !wrote {
            return Err(UnpackError::hostile(archive, &raw, "refused by the tar unpacker (path escapes the target)"));
        }
    }
    // A chain of links, each harmless alone, must not resolve outside either.
    let root = dest.canonicalize().map_err(|e| UnpackError::io(archive, "resolve target directory", e))?;
    for rel in links {
        if let Ok(resolved) = dest.join(&rel).canonicalize()
            && !resolved.starts_with(&root)
        {
            return Err(UnpackError::hostile(
                archive,
                &rel,
                format!("symlink resolves to {} outside the target", resolved.display()),
            ));
        }
    }
    Ok(stats)
}

/// `./a/b` → `a/b`; refuses `..`, absolute paths and prefixes.
fn checked_relative(archive: &Path, raw: &Path) -> Result<PathBuf, UnpackError> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(UnpackError::hostile(archive, raw, "path contains '..'"));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(UnpackError::hostile(archive, raw, "absolute path"));
            }
        }
    }
    Ok(out)
}

/// A symlink at `rel` pointing to `target` must stay inside the target
/// directory when resolved lexically from the link's own folder.
fn check_symlink_target(archive: &Path, raw: &Path, rel: &Path, target: &Path) -> Result<(), UnpackError> {
    if target.is_absolute() {
        return Err(UnpackError::hostile(archive, raw, format!("symlink to absolute path {}", target.display())));
    }
    let mut depth: usize = rel.components().count().saturating_sub(1);
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth = depth.checked_sub(1).ok_or_else(|| {
                    UnpackError::hostile(archive, raw, format!("symlink to {} escapes the target", target.display()))
                })?;
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(UnpackError::hostile(
                    archive,
                    raw,
                    format!("symlink to absolute path {}", target.display()),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tar in memory from (path, kind, data-or-link-target) rows,
    /// writing raw header names so hostile paths survive.
    fn tar_of(rows: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in rows {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            {
                let name = &mut h.as_gnu_mut().unwrap().name;
                name[..path.len()].copy_from_slice(path.as_bytes());
            }
            if kind.is_symlink() || kind.is_hard_link() {
                h.set_link_name_literal(data).unwrap();
                h.set_size(0);
                h.set_cksum();
                b.append(&h, io::empty()).unwrap();
            } else {
                h.set_size(data.len() as u64);
                h.set_cksum();
                b.append(&h, data.as_bytes()).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    fn unpack(rows: &[(&str, tar::EntryType, &str)]) -> (tempfile::TempDir, Result<UnpackStats, UnpackError>) {
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        let data = tar_of(rows);
        let r = unpack_tar(Path::new("test.tar"), "data.tar", &data[..], &dest, &|_| true);
        (outer, r)
    }

    /// Everything in `outer` other than `dest/` and its contents.
    fn outside(outer: &Path) -> Vec<String> {
        std::fs::read_dir(outer)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "dest")
            .collect()
    }

    #[test]
    fn refuses_parent_dir() {
        let (outer, r) = unpack(&[("ok.h", tar::EntryType::Regular, "x"), ("../evil", tar::EntryType::Regular, "x")]);
        let e = r.unwrap_err().to_string();
        assert!(e.contains("test.tar") && e.contains("../evil") && e.contains(".."), "{e}");
        assert!(outside(outer.path()).is_empty());
    }

    #[test]
    fn refuses_absolute_path() {
        let (outer, r) = unpack(&[("/tmp/bpfarm-evil", tar::EntryType::Regular, "x")]);
        let e = r.unwrap_err().to_string();
        assert!(e.contains("absolute path"), "{e}");
        assert!(!Path::new("/tmp/bpfarm-evil").exists());
        assert!(outside(outer.path()).is_empty());
    }

    #[test]
    fn refuses_symlink_escapes() {
        for target in ["/etc", "../..", "a/../../../x"] {
            let (outer, r) = unpack(&[
                ("dir/link", tar::EntryType::Symlink, target),
                ("dir/link/passwd", tar::EntryType::Regular, "x"),
            ]);
            let e = r.unwrap_err().to_string();
            assert!(e.contains("dir/link") && (e.contains("escapes") || e.contains("absolute")), "{target}: {e}");
            assert!(outside(outer.path()).is_empty(), "{target}");
        }
    }

    #[test]
    fn refuses_write_through_symlink_chain() {
        // `a -> .` and `b -> a/..` are each inside lexically; b resolves to the
        // parent of dest, and writing through it must be refused.
        let (outer, r) = unpack(&[
            ("a", tar::EntryType::Symlink, "."),
            ("b", tar::EntryType::Symlink, "a/.."),
            ("b/escaped", tar::EntryType::Regular, "x"),
        ]);
        assert!(r.is_err(), "chain accepted");
        assert!(outside(outer.path()).is_empty(), "wrote {:?}", outside(outer.path()));
    }

    #[test]
    fn refuses_hard_link_out() {
        let (_outer, r) = unpack(&[("h", tar::EntryType::Link, "../../etc/passwd")]);
        assert!(r.unwrap_err().to_string().contains("hard link"));
    }

    #[test]
    fn refuses_devices() {
        let (_outer, r) = unpack(&[("dev", tar::EntryType::Char, "")]);
        assert!(r.unwrap_err().to_string().contains("unsupported entry type"));
    }

    #[test]
    fn keeps_only_filtered_and_inside_links() {
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("dest");
        std::fs::create_dir(&dest).unwrap();
        let data = tar_of(&[
            ("./usr/src/h/include/a.h", tar::EntryType::Regular, "int a;"),
            ("./usr/src/h/include/b.h", tar::EntryType::Symlink, "a.h"),
            ("./usr/src/h/scripts/x", tar::EntryType::Regular, "skip"),
            // An absolute link the filter drops is fine (real packages have them).
            ("./lib/modules/6.1/build", tar::EntryType::Symlink, "/usr/src/h"),
        ]);
        let keep = |p: &Path| p.starts_with("usr/src/h/include") || p == Path::new("usr") || p == Path::new("usr/src");
        let stats = unpack_tar(Path::new("t.tar"), "data.tar", &data[..], &dest, &keep).unwrap();
        assert_eq!(stats.files_written, 1);
        assert_eq!(std::fs::read_to_string(dest.join("usr/src/h/include/b.h")).unwrap(), "int a;");
        assert!(!dest.join("usr/src/h/scripts").exists());
        assert!(!dest.join("lib").exists());
    }

    #[test]
    fn truncated_tar_is_an_error() {
        let data = tar_of(&[("big", tar::EntryType::Regular, &"x".repeat(5000))]);
        let dir = tempfile::tempdir().unwrap();
        let r = unpack_tar(Path::new("t.tar"), "data.tar", &data[..1024], dir.path(), &|_| true);
        let e = r.unwrap_err().to_string();
        assert!(e.contains("t.tar"), "{e}");
    }

    #[test]
    fn not_a_deb() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.deb");
        std::fs::write(&p, b"hello").unwrap();
        let e = deb_control(&p).unwrap_err().to_string();
        assert!(e.contains("x.deb") && e.contains("not a Debian package"), "{e}");
    }
}
