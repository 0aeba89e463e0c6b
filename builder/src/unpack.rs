//! Unpacking archives in process: `.deb` (ar → control/data tar, xz, zstd or
//! gzip) and plain tar streams, writing only entries a filter keeps, and never
//! anything outside the target directory, held to [`Limits`] while streaming.
//!
//! Every entry is checked before anything is written: no `..`, no absolute
//! path, no link whose target leaves the target directory, no device, FIFO or
//! sparse file, and room left under the member, tree and entry limits.
//! Writing itself goes through `tar::Entry::unpack_in`, which also refuses to
//! write through a symlinked parent that resolves outside. After the last
//! entry every symlink written is resolved once more, so a chain of
//! individually harmless links cannot point out either. Decompressed bytes
//! are counted as they stream (total and ratio), and the tar reader's own
//! in-memory metadata (long names, pax records) is held to a window. Callers
//! unpack into a fresh temporary directory and remove it on error
//! (`fsutil::remove_tree`), so a refused archive leaves nothing behind.
//!
//! The ar layer is read here rather than with the `ar` crate: a `.deb` uses
//! only short member names (what dpkg itself accepts), and the crate
//! allocates whatever a hostile name-table header asks for.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use bpfarm_object::Digest;
use sha2::{Digest as _, Sha256};

use crate::limits::{self, Counter, Counting, Guard, Guarded, Limit, Limits};

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
    #[error("{archive}: not an RPM package: {reason}")]
    NotRpm { archive: PathBuf, reason: String },
    #[error("{archive}: {member}: exceeds {limit}; refused")]
    Limit { archive: PathBuf, member: String, limit: Limit },
    #[error("{archive}: not a regular file ({kind}); only regular files are read as packages")]
    NotRegular { archive: PathBuf, kind: &'static str },
    #[error("{archive}: changed since it was inspected (was {expected}, now {actual}); refused")]
    Changed { archive: PathBuf, expected: Digest, actual: Digest },
}

impl UnpackError {
    pub(crate) fn io(archive: &Path, what: impl Into<String>, source: io::Error) -> Self {
        Self::Io { archive: archive.to_owned(), what: what.into(), source }
    }
    pub(crate) fn hostile(archive: &Path, entry: &Path, reason: impl Into<String>) -> Self {
        Self::Hostile { archive: archive.to_owned(), entry: entry.display().to_string(), reason: reason.into() }
    }
    fn not_deb(archive: &Path, reason: impl Into<String>) -> Self {
        Self::NotDeb { archive: archive.to_owned(), reason: reason.into() }
    }
    /// Whether a configurable limit (not the archive alone) refused it.
    pub fn is_limit(&self) -> bool {
        matches!(self, Self::Limit { .. })
    }
}

/// What an unpack wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries_seen: u64,
    pub files_written: u64,
    pub bytes_written: u64,
    /// Bytes the data archive decompressed to.
    pub bytes_decompressed: u64,
}

/// The kind of a non-regular file, for messages.
pub fn kind_of(ft: fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_symlink() {
        "a symlink"
    } else if ft.is_file() {
        "a regular file"
    } else {
        "not a file"
    }
}

/// Opens a package file: non-blocking, so a FIFO named `*.deb` cannot hang
/// the build, and checked on the open descriptor to be a regular file (a
/// symlink is followed: folders of links into apt's cache are common; what
/// it ends at must be a regular file).
pub fn open_package(path: &Path) -> Result<File, UnpackError> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| UnpackError::io(path, "open", e))?;
    let ft = file.metadata().map_err(|e| UnpackError::io(path, "stat", e))?.file_type();
    if !ft.is_file() {
        return Err(UnpackError::NotRegular { archive: path.to_owned(), kind: kind_of(ft) });
    }
    Ok(file)
}

/// Passes bytes through a sha256.
pub(crate) struct Hashing<R> {
    inner: R,
    hash: Sha256,
    len: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

impl<R: Read> Hashing<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self { inner, hash: Sha256::new(), len: 0 }
    }
    /// Reads the rest and returns the digest and size of everything.
    pub(crate) fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((Digest::from_raw(self.hash.finalize().into()), self.len))
    }
}

/// One ar member header of a `.deb`.
struct ArMember {
    name: String,
    size: u64,
}

/// Reads the next ar member header (strict: dpkg's subset of the format).
fn ar_next(archive: &Path, r: &mut impl Read) -> Result<Option<ArMember>, UnpackError> {
    let mut h = [0u8; 60];
    let mut got = 0;
    while got < h.len() {
        match r.read(&mut h[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(UnpackError::io(archive, "ar member header", e)),
        }
    }
    if got == 0 {
        return Ok(None);
    }
    if got < h.len() || &h[58..60] != b"`\n" {
        return Err(UnpackError::not_deb(archive, "truncated or corrupt ar member header"));
    }
    let raw_name = std::str::from_utf8(&h[..16]).unwrap_or("").trim_end_matches(' ');
    let name = raw_name.strip_suffix('/').unwrap_or(raw_name);
    if name.is_empty() || name.starts_with('/') || name.starts_with('#') || !name.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(UnpackError::not_deb(
            archive,
            format!("ar member name {:?} (a .deb has only short plain names)", String::from_utf8_lossy(&h[..16])),
        ));
    }
    let size_text = std::str::from_utf8(&h[48..58]).unwrap_or("").trim_end_matches(' ');
    let size: u64 = (!size_text.is_empty() && size_text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| size_text.parse().ok())
        .flatten()
        .ok_or_else(|| UnpackError::not_deb(archive, format!("ar member {name:?} has size {size_text:?}")))?;
    Ok(Some(ArMember { name: name.to_owned(), size }))
}

/// Walks a `.deb`'s ar members, handing the one whose name starts with
/// `prefix` (decompressed and guarded) to `f`. Reads through the whole file
/// and returns its digest and size with `f`'s result.
fn with_deb_member<T>(
    deb: &Path,
    file: File,
    prefix: &str,
    total: (Limit, u64),
    max_ratio: u64,
    f: impl for<'a> FnOnce(&str, &mut Guarded<Box<dyn Read + 'a>>, &Guard) -> Result<T, UnpackError>,
) -> Result<(T, Digest, u64), UnpackError> {
    let mut r = Hashing::new(BufReader::with_capacity(1 << 16, file));
    let mut magic = [0u8; 8];
    if r.read_exact(&mut magic).is_err() || &magic != b"!<arch>\n" {
        return Err(UnpackError::not_deb(deb, "empty or not an ar archive"));
    }
    let mut first = true;
    let mut f = Some(f);
    let mut out = None;
    while let Some(m) = ar_next(deb, &mut r)? {
        if first && m.name != "debian-binary" {
            return Err(UnpackError::not_deb(deb, format!("first member is {:?}, not debian-binary", m.name)));
        }
        first = false;
        let mut member = (&mut r).take(m.size);
        if out.is_none()
            && m.name.starts_with(prefix)
            && let Some(f) = f.take()
        {
            let compressed = Counter::default();
            let raw = Counting::new(&mut member, compressed.clone());
            let dec = decoder(deb, &m.name, raw)?;
            let (mut guarded, guard) = Guarded::new(
                dec,
                compressed,
                total.0,
                total.1,
                max_ratio,
                Limit::TarMetadata(limits::TAR_METADATA_BYTES),
            );
            let res = f(&m.name, &mut guarded, &guard).map_err(|e| match guard.tripped() {
                Some(limit) => UnpackError::Limit { archive: deb.to_owned(), member: m.name.clone(), limit },
                None => e,
            })?;
            out = Some(res);
        }
        // The rest of the member, and the pad byte of an odd-sized one.
        io::copy(&mut member, &mut io::sink()).map_err(|e| UnpackError::io(deb, m.name.clone(), e))?;
        if m.size % 2 == 1 {
            let mut pad = [0u8; 1];
            let _ = r.read(&mut pad).map_err(|e| UnpackError::io(deb, "ar padding", e))?;
        }
    }
    let out = out.ok_or_else(|| {
        UnpackError::not_deb(deb, if first { "no members".into() } else { format!("no {prefix}.* member") })
    })?;
    let (digest, size) = r.finish().map_err(|e| UnpackError::io(deb, "read", e))?;
    Ok((out, digest, size))
}

/// A compressed member's decoder, chosen by the member's name.
fn decoder<'a>(archive: &Path, name: &str, r: impl Read + 'a) -> Result<Box<dyn Read + 'a>, UnpackError> {
    Ok(if name.ends_with(".xz") {
        let stream = liblzma::stream::Stream::new_stream_decoder(limits::XZ_MEMLIMIT, 0)
            .map_err(|e| UnpackError::io(archive, name, io::Error::other(e)))?;
        Box::new(liblzma::read::XzDecoder::new_stream(r, stream))
    } else if name.ends_with(".zst") {
        // zstd's default refuses frames whose window exceeds 128 MiB.
        Box::new(zstd::stream::read::Decoder::new(r).map_err(|e| UnpackError::io(archive, name, e))?)
    } else if name.ends_with(".gz") {
        Box::new(flate2::read::GzDecoder::new(r))
    } else if name.ends_with(".tar") {
        Box::new(r)
    } else {
        return Err(UnpackError::not_deb(archive, format!("unsupported member compression {name:?}")));
    })
}

/// A `.deb`'s control stanza, digest and size, from one read of the file.
#[derive(Debug, Clone)]
pub struct DebInfo {
    pub control: String,
    pub digest: Digest,
    pub size: u64,
}

/// Reads the `.deb`'s `control` file (capped: the control archive at
/// [`limits::CONTROL_TAR_BYTES`], the file at [`limits::CONTROL_FILE_BYTES`])
/// and hashes the whole package in the same pass.
pub fn deb_info(deb: &Path) -> Result<DebInfo, UnpackError> {
    let file = open_package(deb)?;
    let total = (Limit::ControlBytes(limits::CONTROL_TAR_BYTES), limits::CONTROL_TAR_BYTES);
    let (control, digest, size) = with_deb_member(deb, file, "control.tar", total, u64::MAX, |name, r, _| {
        let mut tar = tar::Archive::new(r);
        for entry in tar.entries().map_err(|e| UnpackError::io(deb, name, e))? {
            let entry = entry.map_err(|e| UnpackError::io(deb, name, e))?;
            let path = entry.path().map_err(|e| UnpackError::io(deb, name, e))?.into_owned();
            if path.file_name().is_some_and(|n| n == "control") && path.components().count() <= 2 {
                let mut bytes = Vec::new();
                entry
                    .take(limits::CONTROL_FILE_BYTES + 1)
                    .read_to_end(&mut bytes)
                    .map_err(|e| UnpackError::io(deb, "control", e))?;
                if bytes.len() as u64 > limits::CONTROL_FILE_BYTES {
                    return Err(UnpackError::Limit {
                        archive: deb.to_owned(),
                        member: format!("{name}: control"),
                        limit: Limit::ControlBytes(limits::CONTROL_FILE_BYTES),
                    });
                }
                return Ok(Some(String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
        Ok(None)
    })?;
    let control = control.ok_or_else(|| UnpackError::not_deb(deb, "control.tar has no control file"))?;
    Ok(DebInfo { control, digest, size })
}

/// Unpacks the `.deb`'s data archive into `dest`, keeping the entries `keep`
/// accepts (paths relative to the package root, without `./`). With
/// `expected`, the package must still hash to it (it was inspected before).
pub fn unpack_deb(
    deb: &Path,
    expected: Option<&Digest>,
    dest: &Path,
    keep: &dyn Fn(&Path) -> bool,
    limits: &Limits,
) -> Result<UnpackStats, UnpackError> {
    let file = open_package(deb)?;
    let total = (Limit::PackageBytes(limits.max_package_bytes), limits.max_package_bytes);
    let (stats, digest, _) = with_deb_member(deb, file, "data.tar", total, limits.max_ratio, |name, r, guard| {
        unpack_tar_guarded(deb, name, r, guard, dest, keep, limits)
    })?;
    if let Some(expected) = expected
        && *expected != digest
    {
        return Err(UnpackError::Changed { archive: deb.to_owned(), expected: expected.clone(), actual: digest });
    }
    Ok(stats)
}

/// Unpacks a tar stream into `dest` (which must exist), keeping what `keep`
/// accepts. `archive`/`member` only name things in errors.
pub fn unpack_tar(
    archive: &Path,
    member: &str,
    reader: impl Read,
    dest: &Path,
    keep: &dyn Fn(&Path) -> bool,
    limits: &Limits,
) -> Result<UnpackStats, UnpackError> {
    let (mut r, guard) = Guarded::new(
        reader,
        Counter::default(),
        Limit::PackageBytes(limits.max_package_bytes),
        limits.max_package_bytes,
        u64::MAX,
        Limit::TarMetadata(limits::TAR_METADATA_BYTES),
    );
    unpack_tar_guarded(archive, member, &mut r, &guard, dest, keep, limits).map_err(|e| match guard.tripped() {
        Some(limit) => UnpackError::Limit { archive: archive.to_owned(), member: member.to_owned(), limit },
        None => e,
    })
}

/// Rounds up to whole 512-byte tar blocks.
fn blocks(n: u64) -> u64 {
    n.div_ceil(512).saturating_mul(512)
}

fn unpack_tar_guarded(
    archive: &Path,
    member: &str,
    reader: impl Read,
    guard: &Guard,
    dest: &Path,
    keep: &dyn Fn(&Path) -> bool,
    limits: &Limits,
) -> Result<UnpackStats, UnpackError> {
    let mut tar = tar::Archive::new(reader);
    tar.set_preserve_permissions(false);
    tar.set_preserve_mtime(true);
    tar.set_unpack_xattrs(false);
    tar.set_overwrite(true);
    let mut stats = UnpackStats::default();
    let mut links = Vec::new();
    let mut last = PathBuf::new();
    let limit = |limit| UnpackError::Limit { archive: archive.to_owned(), member: member.to_owned(), limit };
    let mut entries = tar.entries().map_err(|e| UnpackError::io(archive, member, e))?;
    // Bytes of the previous entry the tar reader still has to skip.
    let mut unread = 0;
    loop {
        // Between two entries the tar reader skips what was not read and
        // reads headers, long names and pax records into memory: bounded.
        guard.set_window(Some(blocks(unread).saturating_add(limits::TAR_METADATA_BYTES)));
        let Some(entry) = entries.next() else { break };
        guard.set_window(None);
        let ctx = |last: &Path| format!("{member} after entry {:?}", last.display().to_string());
        let mut entry = entry.map_err(|e| UnpackError::io(archive, ctx(&last), e))?;
        unread = entry.size();
        stats.entries_seen += 1;
        if stats.entries_seen > limits.max_entries {
            return Err(limit(Limit::Entries(limits.max_entries)));
        }
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
        if kind == tar::EntryType::GNUSparse {
            return Err(UnpackError::hostile(archive, &raw, "sparse files are never unpacked"));
        }
        if rel.as_os_str().is_empty() || !keep(&rel) {
            continue;
        }
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                if size > limits.max_member_bytes {
                    return Err(UnpackError::Limit {
                        archive: archive.to_owned(),
                        member: format!("{member}: {}", raw.display()),
                        limit: Limit::MemberBytes(limits.max_member_bytes),
                    });
                }
                if stats.bytes_written.saturating_add(size) > limits.max_tree_bytes {
                    return Err(limit(Limit::TreeBytes(limits.max_tree_bytes)));
                }
                stats.files_written += 1;
                stats.bytes_written += size;
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
        let mode = entry.header().mode().unwrap_or(0o644);
        let wrote = entry.unpack_in(dest).map_err(|e| UnpackError::Hostile {
            archive: archive.to_owned(),
            entry: raw.display().to_string(),
            reason: e.to_string(),
        })?;
        if !wrote {
            return Err(UnpackError::hostile(archive, &raw, "refused by the tar unpacker (path escapes the target)"));
        }
        unread = 0;
        normalize_mode(archive, &raw, &dest.join(&rel), kind, mode)?;
    }
    stats.bytes_decompressed = guard.decompressed();
    check_link_chains(archive, dest, &links)?;
    Ok(stats)
}

/// A chain of links, each harmless alone, must not resolve outside `dest`
/// either: every symlink an unpack made (`links`, relative to `dest`) is
/// resolved once the whole archive is down.
pub(crate) fn check_link_chains(archive: &Path, dest: &Path, links: &[PathBuf]) -> Result<(), UnpackError> {
    let root = dest.canonicalize().map_err(|e| UnpackError::io(archive, "resolve target directory", e))?;
    for rel in links {
        if let Ok(resolved) = dest.join(rel).canonicalize()
            && !resolved.starts_with(&root)
        {
            return Err(UnpackError::hostile(
                archive,
                rel,
                format!("symlink resolves to {} outside the target", resolved.display()),
            ));
        }
    }
    Ok(())
}

/// Folders are made `rwxr-xr-x` and files at least owner-readable, whatever
/// the archive says: a read-only folder would stop the next entry (and the
/// clean-up) for a builder that is not root, and an unreadable header would
/// fail the compile in a way that looks like the compiler's fault.
fn normalize_mode(archive: &Path, raw: &Path, path: &Path, kind: tar::EntryType, mode: u32) -> Result<(), UnpackError> {
    let want = match kind {
        tar::EntryType::Directory if mode & 0o7777 != 0o755 => 0o755,
        tar::EntryType::Regular | tar::EntryType::Continuous if mode & 0o600 != 0o600 => 0o644 | (mode & 0o111),
        _ => return Ok(()),
    };
    // Never chmod through a symlink: only what the entry itself made.
    let md = fs::symlink_metadata(path).map_err(|e| UnpackError::io(archive, raw.display().to_string(), e))?;
    if md.file_type().is_dir() || md.file_type().is_file() {
        fs::set_permissions(path, fs::Permissions::from_mode(want))
            .map_err(|e| UnpackError::io(archive, raw.display().to_string(), e))?;
    }
    Ok(())
}

/// `./a/b` → `a/b`; refuses `..`, absolute paths and prefixes.
pub(crate) fn checked_relative(archive: &Path, raw: &Path) -> Result<PathBuf, UnpackError> {
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
pub(crate) fn check_symlink_target(archive: &Path, raw: &Path, rel: &Path, target: &Path) -> Result<(), UnpackError> {
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
        let r = unpack_tar(Path::new("test.tar"), "data.tar", &data[..], &dest, &|_| true, &Limits::default());
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
        let stats = unpack_tar(Path::new("t.tar"), "data.tar", &data[..], &dest, &keep, &Limits::default()).unwrap();
        assert_eq!(stats.files_written, 1);
        assert_eq!(std::fs::read_to_string(dest.join("usr/src/h/include/b.h")).unwrap(), "int a;");
        assert!(!dest.join("usr/src/h/scripts").exists());
        assert!(!dest.join("lib").exists());
    }

    #[test]
    fn truncated_tar_is_an_error() {
        let data = tar_of(&[("big", tar::EntryType::Regular, &"x".repeat(5000))]);
        let dir = tempfile::tempdir().unwrap();
        let r = unpack_tar(Path::new("t.tar"), "data.tar", &data[..1024], dir.path(), &|_| true, &Limits::default());
        let e = r.unwrap_err().to_string();
        assert!(e.contains("t.tar"), "{e}");
    }

    #[test]
    fn refuses_sparse_files() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_path("big").unwrap();
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_size(0);
        // A terabyte that is all hole: cheap to write, endless to hash.
        h.as_gnu_mut().unwrap().set_real_size(1 << 40);
        h.set_cksum();
        b.append(&h, io::empty()).unwrap();
        let data = b.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let r = unpack_tar(Path::new("t.tar"), "data.tar", &data[..], dir.path(), &|_| true, &Limits::default());
        let e = r.unwrap_err().to_string();
        assert!(e.contains("sparse"), "{e}");
    }

    #[test]
    fn a_huge_long_name_is_held_to_the_metadata_window() {
        // A GNU long-name entry the tar reader would read into memory whole.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_size(8 << 20);
        h.set_cksum();
        b.append(&h, io::repeat(b'a').take(8 << 20)).unwrap();
        let data = b.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let e = unpack_tar(Path::new("t.tar"), "data.tar", &data[..], dir.path(), &|_| true, &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("tar metadata"), "{e}");
    }

    /// An ar archive: magic, then (name, size field, bytes) members.
    fn ar_of(members: &[(&str, &str, &[u8])]) -> Vec<u8> {
        let mut v = b"!<arch>\n".to_vec();
        for (name, size, data) in members {
            v.extend(format!("{name:<16}{:<12}{:<6}{:<6}{:<8}{size:<10}`\n", 0, 0, 0, 644).as_bytes());
            v.extend(*data);
            if data.len() % 2 == 1 {
                v.push(b'\n');
            }
        }
        v
    }

    #[test]
    fn hostile_ar_headers_are_refused_without_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.deb");
        // GNU name tables and BSD long names (whose sizes the ar crate
        // allocates up front), and an absurd member size.
        for (members, want) in [
            (ar_of(&[("debian-binary", "4", b"2.0\n"), ("//", "9999999999", b"")]), "ar member name"),
            (ar_of(&[("debian-binary", "4", b"2.0\n"), ("#1/9999999999", "9999999999", b"")]), "ar member name"),
            (ar_of(&[("debian-binary", "4", b"2.0\n"), ("control.tar.xz", "12x", b"")]), "has size"),
            (ar_of(&[("control.tar.xz", "0", b"")]), "not debian-binary"),
        ] {
            std::fs::write(&p, members).unwrap();
            let e = deb_info(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn not_a_deb() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.deb");
        std::fs::write(&p, b"hello").unwrap();
        let e = deb_info(&p).unwrap_err().to_string();
        assert!(e.contains("x.deb") && e.contains("not a Debian package"), "{e}");
    }
}
