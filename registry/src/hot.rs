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
//! Bounded: at most `budget` bytes in all, no blob larger than
//! `max_object` (larger ones stream from the file); the least recently
//! served blob makes room.

use std::collections::HashMap;
use std::sync::Mutex;

use bpfarm_object::Digest;
use bytes::Bytes;

/// Bytes held at most, in all.
pub const DEFAULT_BUDGET: u64 = 32 << 20;
/// Largest blob held.
pub const DEFAULT_MAX_OBJECT: u64 = 16 << 20;

#[derive(Debug)]
struct Entry {
    bytes: Bytes,
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

    /// The cached bytes of `d`, marking them recently served.
    pub fn get(&self, d: &Digest) -> Option<Bytes> {
        let mut lru = self.lock();
        lru.tick += 1;
        let tick = lru.tick;
        let e = lru.map.get_mut(d)?;
        e.last = tick;
        Some(e.bytes.clone())
    }

    /// Holds `bytes` as blob `d`, making room by dropping the least
    /// recently served blobs. A blob too large for the cache is not held.
    pub fn put(&self, d: &Digest, bytes: Bytes) {
        let len = bytes.len() as u64;
        if !self.admits(len) {
            return;
        }
        let mut lru = self.lock();
        if lru.map.contains_key(d) {
            return;
        }
        while lru.used + len > self.budget {
            let Some(oldest) = lru.map.iter().min_by_key(|(_, e)| e.last).map(|(k, _)| k.clone()) else { break };
            if let Some(e) = lru.map.remove(&oldest) {
                lru.used -= e.bytes.len() as u64;
            }
        }
        lru.tick += 1;
        let last = lru.tick;
        lru.used += len;
        lru.map.insert(d.clone(), Entry { bytes, last });
    }

    /// Drops blob `d` (it is gone from the store).
    pub fn forget(&self, d: &Digest) {
        let mut lru = self.lock();
        if let Some(e) = lru.map.remove(d) {
            lru.used -= e.bytes.len() as u64;
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.lock().used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: u8, len: usize) -> (Digest, Bytes) {
        let b = Bytes::from(vec![n; len]);
        (Digest::of_bytes(&b), b)
    }

    #[test]
    fn stays_within_its_budget_dropping_the_least_recently_served() {
        let cache = HotCache::new(300, 200);
        let (a, ab) = blob(1, 100);
        let (b, bb) = blob(2, 100);
        let (c, cb) = blob(3, 100);
        let (d, db) = blob(4, 100);
        cache.put(&a, ab.clone());
        cache.put(&b, bb);
        cache.put(&c, cb);
        assert_eq!(cache.used(), 300);
        // `a` is served again, so `b` is now the least recently served.
        assert_eq!(cache.get(&a), Some(ab));
        cache.put(&d, db);
        assert_eq!(cache.used(), 300);
        assert!(cache.get(&b).is_none());
        assert!(cache.get(&a).is_some() && cache.get(&c).is_some() && cache.get(&d).is_some());
    }

    #[test]
    fn holds_no_blob_larger_than_its_limit() {
        let cache = HotCache::new(1000, 200);
        let (big, bytes) = blob(9, 201);
        assert!(!cache.admits(201));
        cache.put(&big, bytes);
        assert!(cache.get(&big).is_none());
        assert_eq!(cache.used(), 0);
        // A limit over the budget is cut to it.
        assert!(!HotCache::new(100, 1000).admits(101));
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
}
