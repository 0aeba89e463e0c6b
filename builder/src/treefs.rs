//! Reading header trees that someone else laid out (`--headers` folders,
//! `KERN_HEADERS`, `/lib/modules/<r>/build`): only regular files inside the
//! tree are read. A symlink is followed only when it resolves inside one of
//! the tree's roots (the build tree and its paired source tree) and ends at a
//! regular file or a folder; a device, FIFO, socket, dangling or cyclic link,
//! or a link out of the tree is an error naming the path, never skipped. Every
//! file is opened non-blocking and checked on its descriptor, and reads are
//! held to [`Limits`], so `include/zero.h -> /dev/zero` costs nothing.
//!
//! The builder's tree inputs and the agent's local build (which reaches the
//! builder through `build::run`) share this code.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use bpfarm_object::{Arch, Digest};
use sha2::{Digest as _, Sha256};

use crate::limits::{Limit, Limits};
use crate::unpack::kind_of;

#[derive(Debug, thiserror::Error)]
pub enum TreeFsError {
    #[error("{path}: {reason}")]
    Refused { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{tree}: exceeds {limit}")]
    Limit { tree: PathBuf, limit: Limit },
}

fn refused(path: &Path, reason: impl Into<String>) -> TreeFsError {
    TreeFsError::Refused { path: path.to_owned(), reason: reason.into() }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TreeFsError + '_ {
    move |source| TreeFsError::Io { path: path.to_owned(), source }
}

/// The folders a tree's symlinks may resolve into (canonical paths).
#[derive(Debug, Clone)]
pub struct Roots(Vec<PathBuf>);

impl Roots {
    /// Canonicalizes every root (each must exist).
    pub fn new<'a>(roots: impl IntoIterator<Item = &'a Path>) -> Result<Self, TreeFsError> {
        let mut v = Vec::new();
        for r in roots {
            let c = r.canonicalize().map_err(io_err(r))?;
            if !v.contains(&c) {
                v.push(c);
            }
        }
        Ok(Self(v))
    }

    fn contains(&self, p: &Path) -> bool {
        self.0.iter().any(|r| p.starts_with(r))
    }

    /// Where `path` really is, if it may be read: itself when no symlink is
    /// involved, else its resolution, which must stay inside the roots.
    fn resolve(&self, path: &Path) -> Result<Resolved, TreeFsError> {
        let lmd = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Resolved::Missing),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(Resolved::Missing),
            Err(e) => return Err(io_err(path)(e)),
        };
        let real = match path.canonicalize() {
            Ok(r) => r,
            // Real trees ship a few links whose target is not packaged
            // (Debian's -common has three under include/dt-bindings): there
            // is nothing to read, and clang cannot read them either.
            Err(e) if lmd.file_type().is_symlink() && e.kind() == io::ErrorKind::NotFound => {
                return Ok(Resolved::Dangling(fs::read_link(path).map_err(io_err(path))?));
            }
            Err(e) if lmd.file_type().is_symlink() => {
                let target = fs::read_link(path).map(|t| t.display().to_string()).unwrap_or_default();
                return Err(refused(path, format!("symlink to {target} does not resolve ({e}); refused")));
            }
            Err(e) => return Err(io_err(path)(e)),
        };
        if !self.contains(&real) {
            return Err(refused(path, format!("resolves to {} outside the header tree; refused", real.display())));
        }
        let md = fs::metadata(&real).map_err(io_err(path))?;
        Ok(Resolved::Found(real, md))
    }
}

/// What is at a path of a tree.
enum Resolved {
    Missing,
    /// A symlink to nothing (its target as written).
    Dangling(PathBuf),
    Found(PathBuf, fs::Metadata),
}

/// Opens a regular file without following a final symlink and without
/// blocking, and checks the descriptor.
fn open_regular(shown: &Path, real: &Path) -> Result<(File, u64), TreeFsError> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(real)
        .map_err(io_err(shown))?;
    let md = f.metadata().map_err(io_err(shown))?;
    if !md.is_file() {
        return Err(refused(shown, format!("{}, not a regular file; refused", kind_of(md.file_type()))));
    }
    Ok((f, md.len()))
}

/// A small file of a tree (`include/generated/utsrelease.h`, `.config`):
/// `Ok(None)` when absent, an error when it is anything but a regular file
/// inside the roots or larger than `cap`.
pub fn read_file(roots: &Roots, path: &Path, cap: u64) -> Result<Option<Vec<u8>>, TreeFsError> {
    let (real, md) = match roots.resolve(path)? {
        Resolved::Missing | Resolved::Dangling(_) => return Ok(None),
        Resolved::Found(real, md) => (real, md),
    };
    if !md.is_file() {
        return Err(refused(path, format!("{}, not a regular file; refused", kind_of(md.file_type()))));
    }
    let (f, len) = open_regular(path, &real)?;
    if len > cap {
        return Err(refused(path, format!("{len} bytes, over the {cap}-byte cap for this file")));
    }
    let mut v = Vec::with_capacity(len as usize);
    f.take(cap + 1).read_to_end(&mut v).map_err(io_err(path))?;
    if v.len() as u64 > cap {
        return Err(refused(path, format!("grew past the {cap}-byte cap for this file while read")));
    }
    Ok(Some(v))
}

/// What a digest walk read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WalkStats {
    pub files: u64,
    pub bytes: u64,
}

struct Walk<'a> {
    roots: &'a Roots,
    limits: &'a Limits,
    tree: &'a Path,
    hash: Sha256,
    stats: WalkStats,
    /// Folders being walked (real paths): a link back to one is a cycle.
    stack: Vec<PathBuf>,
}

impl Walk<'_> {
    fn dir(&mut self, shown: &Path, real: &Path, rel: &Path) -> Result<(), TreeFsError> {
        if self.stack.iter().any(|d| d == real) {
            return Err(refused(shown, "symlink cycle (links back to a folder that contains it); refused"));
        }
        self.stack.push(real.to_owned());
        let mut entries: Vec<_> =
            fs::read_dir(real).map_err(io_err(shown))?.collect::<Result<_, _>>().map_err(io_err(shown))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            let shown = shown.join(&name);
            let rel = rel.join(&name);
            let ft = e.file_type().map_err(io_err(&shown))?;
            if ft.is_dir() {
                self.dir(&shown, &real.join(&name), &rel)?;
            } else if ft.is_file() {
                self.file(&shown, &real.join(&name), &rel)?;
            } else if ft.is_symlink() {
                let (target, md) = match self.roots.resolve(&shown)? {
                    Resolved::Found(t, md) => (t, md),
                    Resolved::Missing => return Err(refused(&shown, "vanished while read")),
                    Resolved::Dangling(to) => {
                        // Recorded, not read: a link that later resolves changes the digest.
                        let (name, to) = (rel.to_string_lossy(), to.to_string_lossy());
                        for part in [name.as_bytes(), b"\0dangling symlink\0", to.as_bytes()] {
                            self.hash.update((part.len() as u64).to_le_bytes());
                            self.hash.update(part);
                        }
                        continue;
                    }
                };
                if md.is_dir() {
                    self.dir(&shown, &target, &rel)?;
                } else if md.is_file() {
                    self.file(&shown, &target, &rel)?;
                } else {
                    return Err(refused(
                        &shown,
                        format!(
                            "symlink to {}, {}; only regular files are read",
                            target.display(),
                            kind_of(md.file_type())
                        ),
                    ));
                }
            } else {
                return Err(refused(&shown, format!("{}; only regular files are read", kind_of(ft))));
            }
        }
        self.stack.pop();
        Ok(())
    }

    fn file(&mut self, shown: &Path, real: &Path, rel: &Path) -> Result<(), TreeFsError> {
        let limit = |limit| TreeFsError::Limit { tree: self.tree.to_owned(), limit };
        self.stats.files += 1;
        if self.stats.files > self.limits.max_entries {
            return Err(limit(Limit::Entries(self.limits.max_entries)));
        }
        let (f, len) = open_regular(shown, real)?;
        if len > self.limits.max_member_bytes {
            return Err(TreeFsError::Limit {
                tree: shown.to_owned(),
                limit: Limit::MemberBytes(self.limits.max_member_bytes),
            });
        }
        if self.stats.bytes.saturating_add(len) > self.limits.max_tree_bytes {
            return Err(limit(Limit::TreeBytes(self.limits.max_tree_bytes)));
        }
        self.stats.bytes += len;
        let name = rel.to_string_lossy();
        self.hash.update((name.len() as u64).to_le_bytes());
        self.hash.update(name.as_bytes());
        self.hash.update(len.to_le_bytes());
        let mut body = HashWriter(&mut self.hash);
        let copied = io::copy(&mut f.take(len), &mut body).map_err(io_err(shown))?;
        if copied != len {
            return Err(refused(shown, format!("changed while read ({copied} of {len} bytes)")));
        }
        Ok(())
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Digest over the files of a header tree that compiling reads: `include/`
/// and `arch/<arch>/include/` of the build tree and of the source tree, each
/// file by its path and content.
pub fn tree_digest(
    build: &Path,
    source: &Path,
    arch: Arch,
    limits: &Limits,
) -> Result<(Digest, WalkStats), TreeFsError> {
    let roots = Roots::new([build, source])?;
    let mut w = Walk {
        roots: &roots,
        limits,
        tree: build,
        hash: Sha256::new(),
        stats: WalkStats::default(),
        stack: Vec::new(),
    };
    for (tag, root) in [("build", build), ("source", source)] {
        w.hash.update(tag.as_bytes());
        for sub in ["include".to_string(), format!("arch/{}/include", arch.kernel_dir())] {
            let shown = root.join(&sub);
            if let Resolved::Found(real, md) = roots.resolve(&shown)? {
                if !md.is_dir() {
                    return Err(refused(&shown, format!("{}, not a folder", kind_of(md.file_type()))));
                }
                w.dir(&shown, &real, Path::new(&sub))?;
            }
        }
    }
    Ok((Digest::from_raw(w.hash.finalize().into()), w.stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("b/include/linux")).unwrap();
        fs::create_dir_all(d.path().join("s/include/linux")).unwrap();
        fs::write(d.path().join("b/include/linux/a.h"), "int a;").unwrap();
        fs::write(d.path().join("s/include/linux/b.h"), "int b;").unwrap();
        d
    }

    fn digest(d: &Path) -> Result<(Digest, WalkStats), TreeFsError> {
        tree_digest(&d.join("b"), &d.join("s"), Arch::X86_64, &Limits::default())
    }

    #[test]
    fn links_inside_and_into_the_paired_tree_are_followed() {
        let d = tree();
        let (plain, stats) = digest(d.path()).unwrap();
        assert_eq!(stats.files, 2);
        symlink("a.h", d.path().join("b/include/linux/c.h")).unwrap();
        symlink(d.path().join("s/include/linux"), d.path().join("b/include/srclinux")).unwrap();
        let (linked, stats) = digest(d.path()).unwrap();
        assert_eq!(stats.files, 4);
        assert_ne!(plain, linked);
    }

    type Make<'a> = &'a dyn Fn(&Path);

    #[test]
    fn devices_fifos_escapes_dangling_links_and_cycles_are_refused() {
        let cases: [(&str, Make<'_>); 5] = [
            ("/dev/zero", &|p| symlink("/dev/zero", p).unwrap()),
            ("FIFO", &|p| {
                let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
                // SAFETY: a valid C string path.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
            }),
            ("outside the header tree", &|p| symlink("/etc/hostname", p).unwrap()),
            ("does not resolve", &|p| symlink("bad.h", p).unwrap()),
            ("cycle", &|p| symlink("..", p).unwrap()),
        ];
        for (what, make) in cases {
            let d = tree();
            let bad = d.path().join("b/include/linux/bad.h");
            make(&bad);
            let start = std::time::Instant::now();
            let e = digest(d.path()).unwrap_err().to_string();
            assert!(e.contains("bad.h") && e.contains(what), "{what}: {e}");
            assert!(start.elapsed().as_secs() < 5, "{what}: took {:?}", start.elapsed());
        }
    }

    #[test]
    fn dangling_links_are_recorded_not_read() {
        let d = tree();
        let (plain, _) = digest(d.path()).unwrap();
        symlink("../uapi/linux/missing.h", d.path().join("b/include/linux/gone.h")).unwrap();
        let (with_link, stats) = digest(d.path()).unwrap();
        assert_eq!(stats.files, 2);
        assert_ne!(plain, with_link);
    }

    #[test]
    fn limits_hold() {
        let d = tree();
        let small = Limits { max_member_bytes: 3, ..Limits::default() };
        let e = tree_digest(&d.path().join("b"), &d.path().join("s"), Arch::X86_64, &small).unwrap_err();
        assert!(e.to_string().contains("--max-member-bytes"), "{e}");
        let few = Limits { max_entries: 1, ..Limits::default() };
        let e = tree_digest(&d.path().join("b"), &d.path().join("s"), Arch::X86_64, &few).unwrap_err();
        assert!(e.to_string().contains("--max-entries"), "{e}");
        let tiny = Limits { max_tree_bytes: 7, ..Limits::default() };
        let e = tree_digest(&d.path().join("b"), &d.path().join("s"), Arch::X86_64, &tiny).unwrap_err();
        assert!(e.to_string().contains("--max-tree-bytes"), "{e}");
    }

    #[test]
    fn small_files_are_capped_and_must_be_regular() {
        let d = tree();
        let roots = Roots::new([d.path().join("b").as_path()]).unwrap();
        let a = d.path().join("b/include/linux/a.h");
        assert_eq!(read_file(&roots, &a, 100).unwrap().unwrap(), b"int a;");
        assert!(read_file(&roots, &a, 3).is_err());
        assert_eq!(read_file(&roots, &d.path().join("b/missing"), 100).unwrap(), None);
        let z = d.path().join("b/zero");
        symlink("/dev/zero", &z).unwrap();
        assert!(read_file(&roots, &z, 100).unwrap_err().to_string().contains("outside"));
    }
}
