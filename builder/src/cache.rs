//! The object cache: build results keyed by every input that can change the
//! object's bytes. A wrong key silently hands someone another kernel's
//! object, so each input has a test proving it changes the key.
//!
//! Layout: `objects/<key[..2]>/<key>.o` for an object with its digest in
//! `<key>.o.sha256` (recorded at insert, checked at every read: a corrupted
//! entry is dropped and rebuilt, never served), `<key>.failed.json` for a
//! failure (with clang's stderr) that is replayed until an input changes or
//! `--retry-failed`. All are written atomically.

use std::fs;
use std::path::{Path, PathBuf};

use bpfarm_object::{Arch, Digest, Flags};
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
    pub flags: &'a Flags,
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
        // The flags as one list, llc's after a `| llc` separator: the
        // encoding keys had before `Flags` was split in two, kept so that
        // existing caches stay valid (`the_key_encoding_is_stable`).
        let llc: &[&str] = if self.flags.llc.is_empty() { &[] } else { &["| llc"] };
        let all: Vec<&str> = self
            .flags
            .clang
            .iter()
            .map(String::as_str)
            .chain(llc.iter().copied())
            .chain(self.flags.llc.iter().map(String::as_str))
            .collect();
        field(&(all.len() as u64).to_le_bytes());
        for f in all {
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
    /// What may be published of it (see `diagnostics`).
    #[serde(default)]
    pub public: Option<String>,
    /// Its line in the terminal table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headline: Option<String>,
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

    /// The entry for `key`. An object whose bytes no longer match the digest
    /// recorded at insert (or that has none) is removed and reported as a
    /// miss, so it is rebuilt.
    pub fn get(&self, key: &str) -> Option<Cached> {
        let obj = self.path(key, ".o");
        if obj.is_file() {
            if self.verify(key, &obj) {
                return Some(Cached::Object(obj));
            }
            let _ = fs::remove_file(&obj);
            let _ = fs::remove_file(self.path(key, ".o.sha256"));
        }
        let failure = fs::read(self.path(key, ".failed.json")).ok()?;
        serde_json::from_slice(&failure).ok().map(Cached::Failure)
    }

    fn verify(&self, key: &str, obj: &Path) -> bool {
        let recorded =
            fs::read_to_string(self.path(key, ".o.sha256")).ok().and_then(|s| s.trim().parse::<Digest>().ok());
        let actual = fs::File::open(obj).and_then(Digest::of_reader).map(|(d, _)| d);
        match (recorded, actual) {
            (Some(r), Ok(a)) if r == a => true,
            (recorded, actual) => {
                tracing::warn!(
                    "object cache entry {} is corrupt (recorded {}, now {}): rebuilding it",
                    obj.display(),
                    recorded.map(|d| d.to_string()).unwrap_or_else(|| "nothing".into()),
                    actual.map(|d| d.to_string()).unwrap_or_else(|e| e.to_string())
                );
                false
            }
        }
    }

    /// Stores a validated object (copying `built` in) with its digest, and
    /// forgets any failure.
    pub fn put_object(&self, key: &str, built: &Path) -> std::io::Result<PathBuf> {
        let dest = self.path(key, ".o");
        let dir = dest.parent().unwrap_or(&self.dir);
        fs::create_dir_all(dir)?;
        let (digest, _) = Digest::of_reader(fs::File::open(built)?)?;
        crate::fsutil::copy_atomic(built, &dest)?;
        // The digest last: an object without one is a miss, not a hit.
        crate::fsutil::write_atomic(&self.path(key, ".o.sha256"), format!("{digest}\n").as_bytes())?;
        let _ = fs::remove_file(self.path(key, ".failed.json"));
        Ok(dest)
    }

    pub fn put_failure(&self, key: &str, failure: &Failure) -> std::io::Result<()> {
        let dest = self.path(key, ".failed.json");
        fs::create_dir_all(dest.parent().unwrap_or(&self.dir))?;
        crate::fsutil::write_atomic(&dest, &serde_json::to_vec_pretty(failure).map_err(std::io::Error::other)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Base {
        compiler: String,
        flags: Flags,
        arch: Arch,
        program: Digest,
        headers: Digest,
    }

    fn base() -> Base {
        Base {
            compiler: "clang 14.0.6 | llvm 14.0.6".into(),
            flags: Flags { clang: vec!["-O2".into(), "-g".into()], llc: vec!["-march=bpfel".into()] },
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

    /// The key of fixed inputs, as `KEY_VERSION` 1 computed it when flags
    /// were one list (`["-O2", "-g", "| llc", "-march=bpfel"]`): a change
    /// here orphans every cached object, so it needs a `KEY_VERSION` bump.
    #[test]
    fn the_key_encoding_is_stable() {
        assert_eq!(key(&base()), "bf5191b5e070f29bb4b32284ef80a37a408c3923dc1248ab93c5c8a9116c1a94");
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
        b.flags.clang.push("-DEXTRA".into());
        assert_ne!(key(&b), key(&base()));
        let mut b = base();
        b.flags.llc.push("-mcpu=v3".into());
        assert_ne!(key(&b), key(&base()));
        // Moving a character between flags is a different flag list.
        let mut c = base();
        c.flags.clang = vec!["-O2-".into(), "g".into()];
        assert_ne!(key(&c), key(&base()));
        // So is moving a flag from one stage to the other.
        let mut d = base();
        d.flags.llc.insert(0, d.flags.clang.pop().unwrap());
        assert_ne!(key(&d), key(&base()));
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
        let f = Failure { message: "clang: error".into(), public: None, headline: None, at: "t".into() };
        c.put_failure(&k, &f).unwrap();
        assert_eq!(c.get(&k), Some(Cached::Failure(f)));
        let built = dir.path().join("x.o");
        fs::write(&built, b"ELF").unwrap();
        let p = c.put_object(&k, &built).unwrap();
        assert_eq!(c.get(&k), Some(Cached::Object(p.clone())));
        assert_eq!(fs::read(&p).unwrap(), b"ELF");
    }

    #[test]
    fn a_corrupted_object_is_a_miss_and_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let c = ObjectCache::new(dir.path()).unwrap();
        let k = key(&base());
        let built = dir.path().join("x.o");
        fs::write(&built, b"\x7fELF object bytes").unwrap();
        let p = c.put_object(&k, &built).unwrap();
        let mut bytes = fs::read(&p).unwrap();
        bytes[5] ^= 0x01;
        fs::write(&p, &bytes).unwrap();
        assert_eq!(c.get(&k), None);
        assert!(!p.exists(), "the corrupt entry was left in place");
        // An object without a recorded digest (older cache, torn insert) is a miss too.
        let p = c.put_object(&k, &built).unwrap();
        fs::remove_file(p.with_extension("o.sha256")).unwrap();
        assert_eq!(c.get(&k), None);
    }
}
