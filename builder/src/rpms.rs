//! RPM `kernel-devel` packages, read in process with the `rpm` crate: the
//! package's name, version and arch from its header, and its payload (cpio,
//! gzip / xz / zstd) unpacked under the same rules as a `.deb`
//! ([`crate::unpack`]): no `..`, no link whose target leaves the target
//! directory, no device, FIFO or socket, no hard link, room left under the
//! member, tree, entry, package and ratio limits, and a digest taken in the
//! same pass as the unpack (a package that changed since it was inspected is
//! refused).
//!
//! Before the crate parses a header, its declared size is checked here: the
//! crate allocates whatever a header's index and data sizes say (and sums
//! them in 32 bits). A panic inside the crate on a malformed header is caught
//! and becomes a refusal naming the package.
//!
//! RPM paths are absolute by convention (`/usr/src/kernels/<release>/...`):
//! they are taken relative to the package root; any `..` refuses the package.

use std::cell::RefCell;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bpfarm_object::{Arch, Digest};
use rpm::{FileFlags, FileType, PackageMetadata, PackageReader};
use sha2::{Digest as _, Sha256};

use crate::limits::{self, Counter, Counting, Guard, Guarded, Limit, Limits};
use crate::unpack::{self, Hashing, UnpackError, UnpackStats};

/// What an `.rpm` is, from its header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpmFacts {
    pub path: PathBuf,
    pub name: String,
    /// `version-release`, as repositories list it.
    pub version: String,
    /// RPM's arch name (`x86_64`, `aarch64`, `noarch`).
    pub rpm_arch: String,
    pub digest: Digest,
    pub size: u64,
}

impl RpmFacts {
    pub fn arch(&self) -> Option<Arch> {
        Arch::from_any(&self.rpm_arch)
    }
}

const LEAD_BYTES: usize = 96;
const LEAD_MAGIC: [u8; 4] = [0xed, 0xab, 0xee, 0xdb];
const HEADER_MAGIC: [u8; 4] = [0x8e, 0xad, 0xe8, 0x01];
/// Tags in one header: real packages have a few hundred at most.
const MAX_HEADER_TAGS: u64 = 1 << 16;

fn not_rpm(archive: &Path, reason: impl Into<String>) -> UnpackError {
    UnpackError::NotRpm { archive: archive.to_owned(), reason: reason.into() }
}

/// Checks the lead and both headers' declared sizes, reading past them.
fn preflight(archive: &Path, r: &mut impl Read) -> Result<(), UnpackError> {
    let mut lead = [0u8; LEAD_BYTES];
    r.read_exact(&mut lead).map_err(|_| not_rpm(archive, "shorter than an RPM lead"))?;
    if lead[..4] != LEAD_MAGIC {
        return Err(not_rpm(archive, "no RPM lead magic"));
    }
    for (which, pad) in [("signature header", true), ("header", false)] {
        let mut intro = [0u8; 16];
        r.read_exact(&mut intro).map_err(|_| not_rpm(archive, format!("truncated {which}")))?;
        if intro[..4] != HEADER_MAGIC {
            return Err(not_rpm(archive, format!("{which} has no header magic")));
        }
        let tags = u64::from(u32::from_be_bytes([intro[8], intro[9], intro[10], intro[11]]));
        let data = u64::from(u32::from_be_bytes([intro[12], intro[13], intro[14], intro[15]]));
        let len = tags * 16 + data;
        if tags > MAX_HEADER_TAGS || len > limits::RPM_HEADER_BYTES {
            return Err(UnpackError::Limit {
                archive: archive.to_owned(),
                member: format!("{which} ({tags} tags, {data} bytes of data)"),
                limit: Limit::RpmHeader(limits::RPM_HEADER_BYTES),
            });
        }
        let skip = len + if pad { (8 - data % 8) % 8 } else { 0 };
        let got = io::copy(&mut r.take(skip), &mut io::sink()).map_err(|e| UnpackError::io(archive, which, e))?;
        if got < skip {
            return Err(not_rpm(archive, format!("truncated {which}")));
        }
    }
    Ok(())
}

/// Runs the `rpm` crate on untrusted bytes: its panics become refusals.
fn guarded_parse<T>(archive: &Path, f: impl FnOnce() -> Result<T, UnpackError>) -> Result<T, UnpackError> {
    panic::catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(not_rpm(archive, "malformed header (parser panic)")))
}

fn rpm_error(archive: &Path, e: rpm::Error) -> UnpackError {
    match e {
        rpm::Error::Io(e) => UnpackError::io(archive, "payload", e),
        other => not_rpm(archive, other.to_string()),
    }
}

/// Reads an `.rpm`'s header (name, version-release, arch) and hashes the
/// whole package in the same pass.
pub fn rpm_info(path: &Path) -> Result<RpmFacts, UnpackError> {
    let mut file = unpack::open_package(path)?;
    preflight(path, &mut BufReader::new(&mut file))?;
    file.seek(SeekFrom::Start(0)).map_err(|e| UnpackError::io(path, "seek", e))?;
    let mut r = BufReader::new(Hashing::new(file));
    let meta = guarded_parse(path, || PackageMetadata::parse(&mut r).map_err(|e| rpm_error(path, e)))?;
    let field = |what: &str, v: Result<&str, rpm::Error>| {
        v.map(str::to_owned).map_err(|e| not_rpm(path, format!("header has no {what}: {e}")))
    };
    let name = field("name", meta.get_name())?;
    let version = format!("{}-{}", field("version", meta.get_version())?, field("release", meta.get_release())?);
    let rpm_arch = field("arch", meta.get_arch())?;
    if meta.is_source_package() {
        return Err(not_rpm(path, "a source package (.src.rpm), not kernel-devel"));
    }
    // The buffered bytes were hashed already; the rest is read and hashed here.
    let (digest, size) = r.into_inner().finish().map_err(|e| UnpackError::io(path, "read", e))?;
    Ok(RpmFacts { path: path.to_owned(), name, version, rpm_arch, digest, size })
}

/// A sha256 over every byte read from the file, shared with the reader the
/// `rpm` crate owns (it keeps the reader until it is dropped).
#[derive(Clone, Default)]
struct SharedHash(Rc<RefCell<(Sha256, u64)>>);

struct HashingFile {
    file: File,
    hash: SharedHash,
}

impl Read for HashingFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        let mut h = self.hash.0.borrow_mut();
        h.0.update(&buf[..n]);
        h.1 += n as u64;
        Ok(n)
    }
}

/// Unpacks the `.rpm`'s payload into `dest`, keeping the entries `keep`
/// accepts (paths relative to the package root). With `expected`, the
/// package must still hash to it.
pub fn unpack_rpm(
    rpm_path: &Path,
    expected: Option<&Digest>,
    dest: &Path,
    keep: &dyn Fn(&Path) -> bool,
    limits: &Limits,
) -> Result<UnpackStats, UnpackError> {
    let mut file = unpack::open_package(rpm_path)?;
    preflight(rpm_path, &mut BufReader::new(&mut file))?;
    file.seek(SeekFrom::Start(0)).map_err(|e| UnpackError::io(rpm_path, "seek", e))?;
    // A second descriptor on the same open file (same offset): what the
    // payload reader leaves unread is hashed through it at the end.
    let rest = file.try_clone().map_err(|e| UnpackError::io(rpm_path, "dup", e))?;
    let hash = SharedHash::default();
    let compressed = Counter::default();
    let input =
        BufReader::with_capacity(1 << 16, Counting::new(HashingFile { file, hash: hash.clone() }, compressed.clone()));
    let guard = Guard::default();
    let stats = guarded_parse(rpm_path, || {
        let reader = PackageReader::parse(input).map_err(|e| rpm_error(rpm_path, e))?;
        unpack_payload(rpm_path, reader, &guard, compressed, dest, keep, limits)
    })
    .map_err(|e| match guard.tripped() {
        Some(limit) => UnpackError::Limit { archive: rpm_path.to_owned(), member: "payload".into(), limit },
        None => e,
    })?;
    io::copy(&mut HashingFile { file: rest, hash: hash.clone() }, &mut io::sink())
        .map_err(|e| UnpackError::io(rpm_path, "read", e))?;
    let digest = {
        let h = hash.0.borrow();
        Digest::from_raw(h.0.clone().finalize().into())
    };
    if let Some(expected) = expected
        && *expected != digest
    {
        return Err(UnpackError::Changed { archive: rpm_path.to_owned(), expected: expected.clone(), actual: digest });
    }
    Ok(stats)
}

fn unpack_payload(
    archive: &Path,
    mut reader: PackageReader,
    guard: &Guard,
    compressed: Counter,
    dest: &Path,
    keep: &dyn Fn(&Path) -> bool,
    limits: &Limits,
) -> Result<UnpackStats, UnpackError> {
    let mut stats = UnpackStats::default();
    let mut links = Vec::new();
    let limit = |member: String, limit| UnpackError::Limit { archive: archive.to_owned(), member, limit };
    while let Some(mut f) = reader.next_file().map_err(|e| rpm_error(archive, e))? {
        stats.entries_seen += 1;
        if stats.entries_seen > limits.max_entries {
            return Err(limit("payload".into(), Limit::Entries(limits.max_entries)));
        }
        let raw = f.metadata.path();
        let rel = unpack::checked_relative(archive, raw.strip_prefix("/").unwrap_or(raw.as_path()))?;
        let kept = !rel.as_os_str().is_empty() && keep(&rel);
        let size = f.metadata.size() as u64;
        let (kind, ghost, has_payload) =
            (f.metadata.file_type(), f.metadata.flags().contains(FileFlags::GHOST), f.has_payload());
        let exec = u32::from(f.metadata.permissions() & 0o111);
        let linkto = f.metadata.linkto().map(PathBuf::from);
        // Every byte the payload yields is counted (kept or not), so a bomb
        // the filter skips still costs no more than the limits.
        let mut body = Guarded::resume(
            &mut f,
            guard,
            compressed.clone(),
            Limit::PackageBytes(limits.max_package_bytes),
            limits.max_package_bytes,
            limits.max_ratio,
            Limit::PackageBytes(limits.max_package_bytes),
        );
        match kind {
            FileType::Regular if ghost => {}
            FileType::Regular => {
                if !has_payload && size > 0 {
                    return Err(UnpackError::hostile(archive, &raw, "hard links are never unpacked from an RPM"));
                }
                if !kept {
                    io::copy(&mut body, &mut io::sink()).map_err(|e| UnpackError::io(archive, raw_name(&raw), e))?;
                    continue;
                }
                if size > limits.max_member_bytes {
                    return Err(limit(raw_name(&raw), Limit::MemberBytes(limits.max_member_bytes)));
                }
                if stats.bytes_written.saturating_add(size) > limits.max_tree_bytes {
                    return Err(limit("payload".into(), Limit::TreeBytes(limits.max_tree_bytes)));
                }
                let path = prepare(archive, &raw, dest, &rel)?;
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o644 | exec)
                    .open(&path)
                    .map_err(|e| UnpackError::hostile(archive, &raw, format!("cannot write it: {e}")))?;
                // The header's size is what was checked: a payload entry that
                // holds more is cut at the limit, never written past it.
                let wrote = io::copy(&mut (&mut body).take(limits.max_member_bytes + 1), &mut out)
                    .map_err(|e| UnpackError::io(archive, raw_name(&raw), e))?;
                if wrote > limits.max_member_bytes {
                    return Err(limit(raw_name(&raw), Limit::MemberBytes(limits.max_member_bytes)));
                }
                out.flush().map_err(|e| UnpackError::io(archive, raw_name(&raw), e))?;
                stats.files_written += 1;
                stats.bytes_written += wrote;
            }
            FileType::Dir => {
                if kept {
                    let path = prepare(archive, &raw, dest, &rel)?;
                    match fs::symlink_metadata(&path) {
                        Ok(m) if m.is_dir() => {}
                        Ok(_) => return Err(UnpackError::hostile(archive, &raw, "a folder over an existing entry")),
                        Err(_) => fs::create_dir(&path).map_err(|e| UnpackError::io(archive, raw_name(&raw), e))?,
                    }
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                        .map_err(|e| UnpackError::io(archive, raw_name(&raw), e))?;
                }
            }
            FileType::SymbolicLink => {
                let target = linkto.ok_or_else(|| UnpackError::hostile(archive, &raw, "link without a target"))?;
                if kept {
                    unpack::check_symlink_target(archive, &raw, &rel, &target)?;
                    let path = prepare(archive, &raw, dest, &rel)?;
                    if fs::symlink_metadata(&path).is_ok() {
                        return Err(UnpackError::hostile(archive, &raw, "a symlink over an existing entry"));
                    }
                    std::os::unix::fs::symlink(&target, &path)
                        .map_err(|e| UnpackError::io(archive, raw_name(&raw), e))?;
                    links.push(rel);
                }
            }
            other => {
                return Err(UnpackError::hostile(
                    archive,
                    &raw,
                    format!("unsupported entry type {other:?} (devices, fifos and sockets are never unpacked)"),
                ));
            }
        }
        f.finish().map_err(|e| UnpackError::io(archive, raw_name(&raw), e))?;
    }
    stats.bytes_decompressed = guard.decompressed();
    unpack::check_link_chains(archive, dest, &links)?;
    Ok(stats)
}

fn raw_name(raw: &Path) -> String {
    raw.display().to_string()
}

/// `dest/rel`, with its missing parent folders made: no folder on the way
/// may be a symlink (a link the package wrote earlier must not redirect a
/// later entry), and `rel` itself is not followed either.
fn prepare(archive: &Path, raw: &Path, dest: &Path, rel: &Path) -> Result<PathBuf, UnpackError> {
    let mut at = dest.to_owned();
    let parents: Vec<_> = rel.components().collect();
    for c in parents.iter().take(parents.len().saturating_sub(1)) {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(UnpackError::hostile(
                    archive,
                    raw,
                    format!(
                        "would be written through the symlink {}",
                        at.strip_prefix(dest).unwrap_or(at.as_path()).display()
                    ),
                ));
            }
            Ok(_) => return Err(UnpackError::hostile(archive, raw, "a parent folder is a file")),
            Err(_) => {
                fs::create_dir(&at).map_err(|e| UnpackError::io(archive, raw_name(raw), e))?;
                fs::set_permissions(&at, fs::Permissions::from_mode(0o755))
                    .map_err(|e| UnpackError::io(archive, raw_name(raw), e))?;
            }
        }
    }
    Ok(dest.join(rel))
}

/// The `.rpm` files under the given paths (files themselves, or folders,
/// not recursive).
pub fn find_rpms(paths: &[PathBuf]) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            for e in fs::read_dir(p)? {
                let e = e?;
                if is_rpm(&e.path()) {
                    out.push(e.path());
                }
            }
        } else if is_rpm(p) {
            out.push(p.clone());
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Named `*.rpm` (what is inside is checked when it is read).
pub fn is_rpm(p: &Path) -> bool {
    p.extension().is_some_and(|x| x == "rpm")
}
