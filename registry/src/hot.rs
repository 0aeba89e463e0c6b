//! A bounded in-memory cache of hot blobs, for downloads.
//!
//! A fleet asks for few objects, each small (a tracer object is a few
//! hundred KB), again and again. Serving one from the file costs an open, a
//! stat and one blocking-pool hop per 64 KiB read; from memory it costs a
//! reference count. Blobs are content-addressed and never change in place
//! (a write renames a verified file into place), so cached bytes are the
//! stored bytes for as long as the file exists. Every hit checks that the
//! file is still there (one `stat` of a cached dentry): a blob removed or
//! quarantined behind the server's back is a miss, and is served — or
//! refused — exactly as from the file.
//!
//! A cached blob carries what a download says about it beside its bytes
//! (its digest, as text and as an entity tag, and its length in decimal),
//! formatted once when it is cached, and the path it is stored at: a hit
//! costs no formatting and no allocation. All of it is derived from the
//! digest and the bytes, so it changes exactly when the blob does.
//!
//! Bounded: at most `budget` bytes in all (a blob's bytes and its text), no
//! blob larger than `max_object` (larger ones stream from the file); the
//! least recently served blob makes room.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bpfarm_object::Digest;
use bytes::Bytes;

/// A blob in memory with what a download says about it; a clone is one
/// reference count.
#[derive(Debug, Clone)]
pub struct HotBlob(Arc<Held>);

#[derive(Debug)]
struct Held {
    bytes: Bytes,
    digest: Bytes,
    etag: Bytes,
    length: Bytes,
    path: PathBuf,
}

impl HotBlob {
    /// Blob `d`'s `bytes`, stored at `path`.
    pub fn new(d: &Digest, bytes: Bytes, path: PathBuf) -> Self {
        Self(Arc::new(Held {
            digest: Bytes::copy_from_slice(d.as_str().as_bytes()),
            etag: Bytes::from(format!("\"{d}\"")),
            length: Bytes::from(bytes.len().to_string()),
            bytes,
            path,
        }))
    }

    /// The blob's bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.0.bytes
    }

    /// Its digest, `sha256:<hex>`.
    pub fn digest(&self) -> &Bytes {
        &self.0.digest
    }

    /// Its digest as a strong entity tag, `"sha256:<hex>"`.
    pub fn etag(&self) -> &Bytes {
        &self.0.etag
    }

    /// Its length in decimal.
    pub fn length(&self) -> &Bytes {
        &self.0.length
    }

    /// Where the store holds it.
    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// What it costs the cache's budget.
    fn cost(&self) -> u64 {
        let h = &self.0;
        (h.bytes.len() + h.digest.len() + h.etag.len() + h.length.len() + h.path.as_os_str().len()) as u64
    }
}

/// Bytes held at most, in all.
pub const DEFAULT_BUDGET: u64 = 32 << 20;
/// Largest blob held.
pub const DEFAULT_MAX_OBJECT: u64 = 16 << 20;

#[derive(Debug)]
struct Entry {
    blob: HotBlob,
    last: u64,
}

#[derive(Debug, Default)]
struct Lru {
    map: HashMap<Digest, Entry>,
    used: u64,
    tick: u64,
}

#[derive(Debug)]
pub struct HotCache {
    inner: Mutex<Lru>,
    budget: u64,
    max_object: u64,
}

impl Default for HotCache {
    fn default() -> Self {
        Self::new(DEFAULT_BUDGET, DEFAULT_MAX_OBJECT)
    }
}

impl HotCache {
    pub fn new(budget: u64, max_object: u64) -> Self {
        Self { inner: Mutex::new(Lru::default()), budget, max_object: max_object.min(budget) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        match self.inner.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Whether a blob of `size` bytes may be held.
    pub fn admits(&self, size: u64) -> bool {
        size <= self.max_object
    }

    /// Cached blob `d`, marking it recently served.
    pub fn get(&self, d: &Digest) -> Option<HotBlob> {
        let mut lru = self.lock();
        lru.tick += 1;
        let tick = lru.tick;
        let e = lru.map.get_mut(d)?;
        e.last = tick;
        Some(e.blob.clone())
    }

    /// Holds `blob` as blob `d`, making room by dropping the least
    /// recently served blobs. A blob too large for the cache is not held.
    pub fn put(&self, d: &Digest, blob: HotBlob) {
        let len = blob.cost();
        if !self.admits(blob.bytes().len() as u64) || len > self.budget {
            return;
        }
        let mut lru = self.lock();
        if lru.map.contains_key(d) {
            return;
        }
        while lru.used + len > self.budget {
            let Some(oldest) = lru.map.iter().min_by_key(|(_, e)| e.last).map(|(k, _)| k.clone()) else { break };
            if let Some(e) = lru.map.remove(&oldest) {
                lru.used -= e.blob.cost();
            }
        }
        lru.tick += 1;
        let last = lru.tick;
        lru.used += len;
        lru.map.insert(d.clone(), Entry { blob, last });
    }

    /// Drops blob `d` (it is gone from the store).
    pub fn forget(&self, d: &Digest) {
        let mut lru = self.lock();
        if let Some(e) = lru.map.remove(d) {
            lru.used -= e.blob.cost();
        }
    }

    /// Bytes held now (blobs and their text).
    pub fn used(&self) -> u64 {
        self.lock().used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: u8, len: usize) -> (Digest, HotBlob) {
        let b = Bytes::from(vec![n; len]);
        let d = Digest::of_bytes(&b);
        let path = PathBuf::from(format!("/store/{}", d.hex()));
        let blob = HotBlob::new(&d, b, path);
        (d, blob)
    }

    /// What one blob of `len` bytes costs: its bytes, its digest twice
    /// (71 and 73 characters), its length's digits and a 71-byte path.
    fn cost(len: usize) -> u64 {
        (len + 71 + 73 + len.to_string().len() + 71) as u64
    }

    #[test]
    fn stays_within_its_budget_dropping_the_least_recently_served() {
        let cache = HotCache::new(3 * cost(100), 200);
        let (a, ab) = blob(1, 100);
        let (b, bb) = blob(2, 100);
        let (c, cb) = blob(3, 100);
        let (d, db) = blob(4, 100);
        cache.put(&a, ab.clone());
        cache.put(&b, bb);
        cache.put(&c, cb);
        assert_eq!(cache.used(), 3 * cost(100));
        // `a` is served again, so `b` is now the least recently served.
        assert_eq!(cache.get(&a).map(|h| h.bytes().clone()), Some(ab.bytes().clone()));
        cache.put(&d, db);
        assert_eq!(cache.used(), 3 * cost(100));
        assert!(cache.get(&b).is_none());
        assert!(cache.get(&a).is_some() && cache.get(&c).is_some() && cache.get(&d).is_some());
    }

    #[test]
    fn holds_no_blob_larger_than_its_limit() {
        let cache = HotCache::new(1000, 200);
        let (big, held) = blob(9, 201);
        assert!(!cache.admits(201));
        cache.put(&big, held);
        assert!(cache.get(&big).is_none());
        assert_eq!(cache.used(), 0);
        // A limit over the budget is cut to it.
        assert!(!HotCache::new(100, 1000).admits(101));
        // A blob whose bytes fit but whose text does not is not held.
        let cache = HotCache::new(100, 100);
        let (small, held) = blob(1, 100);
        cache.put(&small, held);
        assert_eq!(cache.used(), 0);
    }

    #[test]
    fn forgets() {
        let cache = HotCache::new(1000, 1000);
        let (a, ab) = blob(1, 10);
        cache.put(&a, ab);
        cache.forget(&a);
        assert!(cache.get(&a).is_none());
        assert_eq!(cache.used(), 0);
    }

    /// The text held beside a blob is its own: each blob's digest, tag and
    /// length, never another's.
    #[test]
    fn a_blobs_text_describes_that_blob() {
        let cache = HotCache::new(10_000, 10_000);
        let (a, ab) = blob(1, 10);
        let (b, bb) = blob(2, 1234);
        cache.put(&a, ab);
        cache.put(&b, bb);
        for (d, len) in [(&a, "10"), (&b, "1234")] {
            let h = cache.get(d).unwrap();
            assert_eq!(h.digest().as_ref(), d.as_str().as_bytes());
            assert_eq!(h.etag().as_ref(), format!("\"{d}\"").as_bytes());
            assert_eq!(h.length().as_ref(), len.as_bytes());
            assert_eq!(Digest::of_bytes(h.bytes()), *d);
            assert!(h.path().ends_with(d.hex()));
        }
    }
}
