//! The object cache: build results keyed by every input that can change the
//! object's bytes. A wrong key silently hands someone another kernel's
//! object, so each input has a test proving it changes the key.
//!
//! Layout: `objects/<key[..2]>/<key>.o` for an object, `<key>.failed.json`
//! for a failure (with clang's stderr) that is replayed until an input
//! changes or `--retry-failed`. Both are written atomically.

use std::fs;
use std::path::{Path, PathBuf};

use bpfarm_object::{Arch, Digest};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Bumped whenever the meaning of any key input changes.
pub const KEY_VERSION: u32 = 1;

/// Everything an object's bytes depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInputs<'a> {
    /// The compiler's identity (clang, llc; bpftool in BTF mode).
    pub compiler: &'a str,
    /// Flags with input folders as fixed placeholders.
    pub flags: &'a [String],
    pub arch: Arch,
    /// Digest of the program's source files.
    pub program: &'a Digest,
    /// Digest of the kernel's header inputs (packages + unpack filter, a
    /// tree's contents, or a BTF blob).
    pub headers: &'a Digest,
}

impl KeyInputs<'_> {
    /// Hex sha256 over the length-prefixed inputs and `KEY_VERSION`.
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        let mut field = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        field(&KEY_VERSION.to_le_bytes());
        field(self.compiler.as_bytes());
        field(&(self.flags.len() as u64).to_le_bytes());
        for f in self.flags {
            field(f.as_bytes());
        }
        field(self.arch.uname().as_bytes());
        field(self.program.as_str().as_bytes());
        field(self.headers.as_str().as_bytes());
        hex::encode(h.finalize())
    }
}

/// A failed build, as cached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub message: String,
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    Object(PathBuf),
    Failure(Failure),
}

#[derive(Debug, Clone)]
pub struct ObjectCache {
    dir: PathBuf,
}

impl ObjectCache {
    pub fn new(cache_dir: &Path) -> std::io::Result<Self> {
        let dir = cache_dir.join("objects");
        fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    fn path(&self, key: &str, suffix: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(format!("{key}{suffix}"))
    }

    pub fn get(&self, key: &str) -> Option<Cached> {
        let obj = self.path(key, ".o");
        if obj.is_file() {
            return Some(Cached::Object(obj));
        }
        let failure = fs::read(self.path(key, ".failed.json")).ok()?;
        serde_json::from_slice(&failure).ok().map(Cached::Failure)
    }

    /// Stores a validated object (moving `built` in) and forgets any failure.
    pub fn put_object(&self, key: &str, built: &Path) -> std::io::Result<PathBuf> {
        let dest = self.path(key, ".o");
        fs::create_dir_all(dest.parent().expect("has parent"))?;
        crate::fsutil::copy_atomic(built, &dest)?;
        let _ = fs::remove_file(self.path(key, ".failed.json"));
        Ok(dest)
    }

    pub fn put_failure(&self, key: &str, failure: &Failure) -> std::io::Result<()> {
        let dest = self.path(key, ".failed.json");
        fs::create_dir_all(dest.parent().expect("has parent"))?;
        crate::fsutil::write_atomic(&dest, &serde_json::to_vec_pretty(failure).expect("failure serializes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Base {
        compiler: String,
        flags: Vec<String>,
        arch: Arch,
        program: Digest,
        headers: Digest,
    }

    fn base() -> Base {
        Base {
            compiler: "clang 14.0.6 | llvm 14.0.6".into(),
            flags: vec!["-O2".into(), "-g".into()],
            arch: Arch::X86_64,
            program: Digest::of_bytes(b"program"),
            headers: Digest::of_bytes(b"headers"),
        }
    }

    fn key(b: &Base) -> String {
        KeyInputs { compiler: &b.compiler, flags: &b.flags, arch: b.arch, program: &b.program, headers: &b.headers }
            .key()
    }

    #[test]
    fn same_inputs_same_key() {
        assert_eq!(key(&base()), key(&base()));
    }

    #[test]
    fn compiler_changes_key() {
        let mut b = base();
        b.compiler = "clang 16.0.6 | llvm 16.0.6".into();
        assert_ne!(key(&b), key(&base()));
    }

    #[test]
    fn flags_change_key() {
        let mut b = base();
        b.flags.push("-DEXTRA".into());
        assert_ne!(key(&b), key(&base()));
        // Moving a character between flags is a different flag list.
        let mut c = base();
        c.flags = vec!["-O2-".into(), "g".into()];
        assert_ne!(key(&c), key(&base()));
    }

    #[test]
    fn arch_changes_key() {
        let mut b = base();
        b.arch = Arch::Aarch64;
        assert_ne!(key(&b), key(&base()));
    }

    #[test]
    fn program_changes_key() {
        let mut b = base();
        b.program = Digest::of_bytes(b"program v2");
        assert_ne!(key(&b), key(&base()));
    }

    #[test]
    fn headers_change_key() {
        let mut b = base();
        b.headers = Digest::of_bytes(b"other kernel");
        assert_ne!(key(&b), key(&base()));
    }

    #[test]
    fn store_and_replay() {
        let dir = tempfile::tempdir().unwrap();
        let c = ObjectCache::new(dir.path()).unwrap();
        let k = key(&base());
        assert_eq!(c.get(&k), None);
        let f = Failure { message: "clang: error".into(), at: "t".into() };
        c.put_failure(&k, &f).unwrap();
        assert_eq!(c.get(&k), Some(Cached::Failure(f)));
        let built = dir.path().join("x.o");
        fs::write(&built, b"ELF").unwrap();
        let p = c.put_object(&k, &built).unwrap();
        assert_eq!(c.get(&k), Some(Cached::Object(p.clone())));
        assert_eq!(fs::read(p).unwrap(), b"ELF");
    }
}
