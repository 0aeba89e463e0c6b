//! Trusting a folder before loading from it or writing into it, the way
//! ssh's StrictModes trusts `~/.ssh`: the folder and every folder above it
//! must belong to root or to the agent's own uid and must not be writable
//! by anyone else (a sticky folder such as `/tmp` is fine *above* it, never
//! as the folder itself). Symbolic links on the way are followed only when
//! root or the agent owns them.
//!
//! The walk opens each component relative to the one before with
//! `O_NOFOLLOW` and checks what it opened (`fstat`), so nothing can be
//! swapped between check and use; the checked folder is then used only
//! through its descriptor: files are opened with `openat(O_NOFOLLOW)`,
//! written as a temp file + `renameat`, and the lock file is never followed
//! through a symlink.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags, Stat};
use rustix::io::Errno;

/// Symlinks followed in one walk before it is called a loop.
const MAX_LINKS: usize = 40;
/// The lock that serialises installs.
pub const LOCK_FILE: &str = ".bpfarm.lock";

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{path} does not exist")]
    Missing { path: PathBuf },
    #[error("{path} is owned by uid {uid}; refusing to load from it (only root or uid {me} may own it)")]
    Foreign { path: PathBuf, uid: u32, me: u32 },
    #[error("{path} is writable by {who} (mode {mode:04o}); refusing to load from it")]
    Writable { path: PathBuf, mode: u32, who: &'static str },
    #[error("{path} is not a folder")]
    NotDir { path: PathBuf },
    #[error("{path} is not a regular file")]
    NotFile { path: PathBuf },
    #[error("{path} is a symbolic link; refusing to follow it")]
    Symlink { path: PathBuf },
    #[error("{path}: more than {MAX_LINKS} symbolic links")]
    Loop { path: PathBuf },
    #[error("{path} changed while it was being checked")]
    Raced { path: PathBuf },
    #[error("{path} is {size} bytes, over the {limit}-byte limit")]
    TooLarge { path: PathBuf, size: u64, limit: u64 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path, e: impl Into<std::io::Error>) -> TrustError {
    TrustError::Io { path: path.to_owned(), source: e.into() }
}

fn me() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Owner root or us; not group- or world-writable, except a sticky folder
/// that is not the last one.
fn check_owner_mode(st: &Stat, path: &Path, sticky_ok: bool) -> Result<(), TrustError> {
    let me = me();
    if st.st_uid != 0 && st.st_uid != me {
        return Err(TrustError::Foreign { path: path.to_owned(), uid: st.st_uid, me });
    }
    let mode = st.st_mode & 0o7777;
    if mode & 0o022 != 0 && !(sticky_ok && mode & 0o1000 != 0) {
        let who = if mode & 0o002 != 0 { "everyone" } else { "its group" };
        return Err(TrustError::Writable { path: path.to_owned(), mode, who });
    }
    Ok(())
}

/// A folder that passed the checks, held open.
#[derive(Debug)]
pub struct TrustedDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// A held `flock` on the install path's lock file (released on drop).
#[derive(Debug)]
pub struct DirLock(#[allow(dead_code)] OwnedFd);

impl TrustedDir {
    /// Opens `path` if it and every folder above it pass the checks.
    pub fn open(path: &Path) -> Result<Self, TrustError> {
        walk(path, false)
    }

    /// Like [`TrustedDir::open`], creating what is missing: the folder
    /// itself `0700`, folders above it `0755`, all owned by this process.
    pub fn open_or_create(path: &Path) -> Result<Self, TrustError> {
        walk(path, true)
    }

    /// The path as it was given (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A folder inside this one (created `0700` when missing), checked the same way.
    pub fn subdir(&self, name: &str) -> Result<TrustedDir, TrustError> {
        let path = self.path.join(name);
        match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(io(&path, e)),
        }
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::LOOP => TrustError::Symlink { path: path.clone() },
            Errno::NOTDIR => TrustError::NotDir { path: path.clone() },
            e => io(&path, e),
        })?;
        let st = rustix::fs::fstat(&fd).map_err(|e| io(&path, e))?;
        check_owner_mode(&st, &path, false)?;
        Ok(TrustedDir { fd, path })
    }

    /// Reads a file of this folder: never through a symlink, only a regular
    /// file owned by root or us and writable by no one else, at most
    /// `limit` bytes. `Ok(None)` when there is no such file.
    pub fn read_file(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>, TrustError> {
        let path = self.path.join(name);
        let fd = match rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) => return Err(TrustError::Symlink { path }),
            Err(e) => return Err(io(&path, e)),
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| io(&path, e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(TrustError::NotFile { path });
        }
        check_owner_mode(&st, &path, false)?;
        let size = st.st_size as u64;
        if size > limit {
            return Err(TrustError::TooLarge { path, size, limit });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        File::from(fd).take(limit + 1).read_to_end(&mut bytes).map_err(|e| io(&path, e))?;
        if bytes.len() as u64 > limit {
            return Err(TrustError::TooLarge { path, size: bytes.len() as u64, limit });
        }
        Ok(Some(bytes))
    }

    /// The install lock, exclusive (created when missing) for writers.
    pub fn lock_exclusive(&self) -> Result<DirLock, TrustError> {
        let path = self.path.join(LOCK_FILE);
        let fd = rustix::fs::openat(
            &self.fd,
            LOCK_FILE,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| if e == Errno::LOOP { TrustError::Symlink { path: path.clone() } } else { io(&path, e) })?;
        self.locked(fd, &path, FlockOperation::LockExclusive)
    }

    /// The install lock, shared, for readers: `None` when no install ever
    /// made one (readers create nothing).
    pub fn lock_shared(&self) -> Result<Option<DirLock>, TrustError> {
        let path = self.path.join(LOCK_FILE);
        match rustix::fs::openat(
            &self.fd,
            LOCK_FILE,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => self.locked(fd, &path, FlockOperation::LockShared).map(Some),
            Err(Errno::NOENT) => Ok(None),
            Err(Errno::LOOP) => Err(TrustError::Symlink { path }),
            Err(e) => Err(io(&path, e)),
        }
    }

    fn locked(&self, fd: OwnedFd, path: &Path, op: FlockOperation) -> Result<DirLock, TrustError> {
        let st = rustix::fs::fstat(&fd).map_err(|e| io(path, e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(TrustError::NotFile { path: path.to_owned() });
        }
        check_owner_mode(&st, path, false)?;
        rustix::fs::flock(&fd, op).map_err(|e| io(path, e))?;
        Ok(DirLock(fd))
    }

    /// Writes `name` atomically: a new temp file (`O_EXCL`, never through a
    /// symlink), fsync, `renameat` over the name, fsync the folder.
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), TrustError> {
        self.write_atomic_mode(name, bytes, 0o644)
    }

    /// [`TrustedDir::write_atomic`] with the file's mode (e.g. `0600` for
    /// the agent's own state).
    pub fn write_atomic_mode(&self, name: &str, bytes: &[u8], mode: u32) -> Result<(), TrustError> {
        let path = self.path.join(name);
        let mut created = None;
        for _ in 0..16 {
            let mut r = [0u8; 8];
            getrandom::fill(&mut r).map_err(|e| io(&path, std::io::Error::other(e.to_string())))?;
            let tmp = format!(".tmp-{}", hex::encode(r));
            match rustix::fs::openat(
                &self.fd,
                &tmp,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(mode),
            ) {
                Ok(fd) => {
                    created = Some((tmp, fd));
                    break;
                }
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(io(&path, e)),
            }
        }
        let (tmp, fd) = created.ok_or_else(|| io(&path, std::io::Error::other("no free temp file name")))?;
        let mut f = File::from(fd);
        let written = f.write_all(bytes).and_then(|()| f.sync_all());
        let renamed = written
            .map_err(|e| io(&path, e))
            .and_then(|()| rustix::fs::renameat(&self.fd, &tmp, &self.fd, name).map_err(|e| io(&path, e)));
        if renamed.is_err() {
            let _ = rustix::fs::unlinkat(&self.fd, &tmp, AtFlags::empty());
        }
        renamed?;
        rustix::fs::fsync(&self.fd).map_err(|e| io(&self.path, e))
    }
}

impl TrustedDir {
    /// Removes the temp files an earlier writer left here when it was killed
    /// mid-write (`.tmp-<16 hex>`, as [`TrustedDir::write_atomic`] names
    /// them). Only with this folder's exclusive lock held (`_held`): every
    /// writer holds it, so no temp file here is anyone's write in flight.
    /// Best effort: what cannot be listed or removed stays.
    pub fn remove_stale_temps(&self, _held: &DirLock) {
        let Ok(dir) = rustix::fs::Dir::read_from(&self.fd) else { return };
        for entry in dir.flatten() {
            let name = entry.file_name().to_bytes();
            let is_temp =
                name.strip_prefix(b".tmp-").is_some_and(|h| h.len() == 16 && h.iter().all(u8::is_ascii_hexdigit));
            if is_temp {
                // Never follows a link: a planted symlink is removed itself.
                let _ = rustix::fs::unlinkat(&self.fd, entry.file_name(), AtFlags::empty());
            }
        }
    }

    /// Removes `name` from this folder if it is there (never following a
    /// symlink: a link itself is removed, not its target).
    pub fn remove_file(&self, name: &str) -> Result<(), TrustError> {
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(io(&self.path.join(name), e)),
        }
    }
}

/// The walk: from `/`, one component at a time, each checked.
fn walk(path: &Path, create: bool) -> Result<TrustedDir, TrustError> {
    let abs =
        if path.is_absolute() { path.to_owned() } else { std::env::current_dir().map_err(|e| io(path, e))?.join(path) };
    // Components still to walk, last first.
    let mut pending: Vec<OsString> = Vec::new();
    push_components(&mut pending, &abs);
    let root = Path::new("/");
    let open_dir = |dir: &OwnedFd, name: &OsStr, last: bool| {
        let flags = if last { OFlags::RDONLY } else { OFlags::PATH };
        rustix::fs::openat(dir, name, flags | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
    };
    let root_fd =
        rustix::fs::openat(rustix::fs::CWD, "/", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| io(root, e))?;
    let st = rustix::fs::fstat(&root_fd).map_err(|e| io(root, e))?;
    check_owner_mode(&st, root, !pending.is_empty())?;
    let mut stack: Vec<(OwnedFd, PathBuf)> = vec![(root_fd, root.to_owned())];
    let mut links = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let last = pending.is_empty();
        let (dir, dir_path) = stack.last().ok_or_else(|| io(path, std::io::Error::other("empty walk")))?;
        let here = dir_path.join(&name);
        let st = match rustix::fs::statat(dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) if create => {
                let mode = if last { 0o700 } else { 0o755 };
                match rustix::fs::mkdirat(dir, name.as_os_str(), Mode::from_raw_mode(mode)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(io(&here, e)),
                }
                rustix::fs::statat(dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW).map_err(|e| io(&here, e))?
            }
            Err(Errno::NOENT) => return Err(TrustError::Missing { path: here }),
            Err(e) => return Err(io(&here, e)),
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
            // Its folder passed, so only its owner (or root) could have
            // made it; that owner must be root or us. (A link's own mode
            // means nothing.)
            let me = me();
            if st.st_uid != 0 && st.st_uid != me {
                return Err(TrustError::Foreign { path: here, uid: st.st_uid, me });
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(TrustError::Loop { path: here });
            }
            let target = rustix::fs::readlinkat(dir, name.as_os_str(), Vec::new()).map_err(|e| io(&here, e))?;
            let target = PathBuf::from(OsStr::from_bytes(target.as_bytes()));
            if target.is_absolute() {
                stack.truncate(1);
            }
            push_components(&mut pending, &target);
            continue;
        }
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            return Err(TrustError::NotDir { path: here });
        }
        let fd = open_dir(dir, &name, last).map_err(|e| match e {
            Errno::LOOP => TrustError::Raced { path: here.clone() },
            Errno::NOTDIR => TrustError::NotDir { path: here.clone() },
            e => io(&here, e),
        })?;
        let st2 = rustix::fs::fstat(&fd).map_err(|e| io(&here, e))?;
        if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino) {
            return Err(TrustError::Raced { path: here });
        }
        check_owner_mode(&st2, &here, !last)?;
        stack.push((fd, here));
    }
    let (fd, _) = stack.pop().ok_or_else(|| io(path, std::io::Error::other("empty walk")))?;
    Ok(TrustedDir { fd, path: path.to_owned() })
}

/// Pushes `p`'s components so that the first is popped first.
fn push_components(pending: &mut Vec<OsString>, p: &Path) {
    let comps: Vec<OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    pending.extend(comps.into_iter().rev());
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn private_folders_pass_and_shared_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok");
        let t = TrustedDir::open_or_create(&ok).unwrap();
        assert_eq!(std::fs::metadata(&ok).unwrap().permissions().mode() & 0o777, 0o700);
        t.write_atomic("f", b"bytes").unwrap();
        assert_eq!(t.read_file("f", 100).unwrap().unwrap(), b"bytes");
        assert!(t.read_file("missing", 100).unwrap().is_none());
        assert!(matches!(t.read_file("f", 2), Err(TrustError::TooLarge { .. })));
        // World-writable as the folder itself: refused, even when sticky.
        chmod(&ok, 0o1777);
        assert!(matches!(TrustedDir::open(&ok), Err(TrustError::Writable { who: "everyone", .. })));
        chmod(&ok, 0o770);
        assert!(matches!(TrustedDir::open(&ok), Err(TrustError::Writable { who: "its group", .. })));
        chmod(&ok, 0o700);
        // A group-writable file is refused too.
        chmod(&ok.join("f"), 0o664);
        assert!(matches!(t.read_file("f", 100), Err(TrustError::Writable { .. })));
        // A folder under a world-writable (not sticky) parent is refused.
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        chmod(&open, 0o777);
        let e = TrustedDir::open_or_create(&open.join("inner")).unwrap_err();
        assert!(matches!(e, TrustError::Writable { .. }), "{e}");
        // Sticky above is fine.
        chmod(&open, 0o1777);
        TrustedDir::open_or_create(&open.join("inner")).unwrap();
        assert!(matches!(TrustedDir::open(&dir.path().join("nope")), Err(TrustError::Missing { .. })));
    }

    #[test]
    fn symlinks_are_never_followed_for_files_and_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let t = TrustedDir::open_or_create(&dir.path().join("d")).unwrap();
        let outside = dir.path().join("outside");
        symlink(&outside, dir.path().join("d").join(LOCK_FILE)).unwrap();
        assert!(matches!(t.lock_exclusive(), Err(TrustError::Symlink { .. })));
        assert!(matches!(t.lock_shared(), Err(TrustError::Symlink { .. })));
        assert!(!outside.exists(), "the lock was followed through its symlink");
        symlink("/etc/passwd", dir.path().join("d/obj")).unwrap();
        assert!(matches!(t.read_file("obj", 1 << 20), Err(TrustError::Symlink { .. })));
        // A folder symlink we own is followed, and what it points at is checked.
        symlink(dir.path().join("d"), dir.path().join("link")).unwrap();
        assert!(TrustedDir::open(&dir.path().join("link")).is_ok());
        std::fs::remove_file(dir.path().join("d").join(LOCK_FILE)).unwrap();
        assert!(t.lock_shared().unwrap().is_none(), "a reader created the lock");
        assert!(!dir.path().join("d").join(LOCK_FILE).exists());
        let _l = t.lock_exclusive().unwrap();
        assert!(dir.path().join("d").join(LOCK_FILE).is_file());
    }
}
