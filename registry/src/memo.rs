//! Answers of the index's two hottest reads kept in memory: which current
//! objects a static-layout path names, and whether a blob is linked into a
//! repository (`/v2/<name>/blobs/<digest>`). Each costs a sqlite query
//! (a hop to sqlx's connection thread and back) per download otherwise.
//!
//! Never stale: an answer is served only while the index is as it was
//! when the answer was read — the same write generation (`bump`, on every
//! commit of this process's `WriteTx`) and the same WAL-index header.
//! That header (the first 48 bytes of `index.sqlite-shm`, kept twice so a
//! reader can tell a torn read; sqlite's documented WAL-index format)
//! changes with every commit of any connection of any process: its
//! change counter and last valid frame move on every commit, its salts on
//! every restart of the WAL. Unlike a file's size and modification time,
//! it cannot look the same after another process's write within one clock
//! tick. A header that cannot be read, or whose two copies differ (a
//! write in progress), makes the stamp unusable: nothing is served or kept
//! under it. The stamp is taken before the query, so a write racing a read
//! only makes the answer unusable. Bounded: at most `MAX_ENTRIES` answers;
//! when full, or when the index changed, all are dropped.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Answers held at most (of each kind).
pub const MAX_ENTRIES: usize = 4096;

/// Bytes of one copy of the WAL-index header.
const WAL_INDEX_HEADER: usize = 48;

/// How the index looked when an answer was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    generation: u64,
    /// The WAL-index header; `None`: unknown, so the stamp is unusable.
    wal_index: Option<[u8; WAL_INDEX_HEADER]>,
}

impl Stamp {
    fn usable(&self) -> bool {
        self.wal_index.is_some()
    }
}

type FileKey = (String, String, String);
type LinkKey = (String, String);

#[derive(Debug)]
struct Answers<F> {
    stamp: Option<Stamp>,
    files: HashMap<FileKey, F>,
    links: HashMap<LinkKey, bool>,
}

/// The answers; `F` is what a static-layout path's query returns (`repo`'s
/// rows: generic so that this module needs nothing from `repo`).
#[derive(Debug)]
pub struct Memo<F> {
    shm: PathBuf,
    generation: AtomicU64,
    answers: Mutex<Answers<F>>,
}

/// The WAL-index header of `shm`, if both copies read the same.
fn wal_index(shm: &Path) -> Option<[u8; WAL_INDEX_HEADER]> {
    let mut both = [0u8; 2 * WAL_INDEX_HEADER];
    std::fs::File::open(shm).ok()?.read_exact(&mut both).ok()?;
    let (a, b) = both.split_at(WAL_INDEX_HEADER);
    if a != b {
        return None;
    }
    a.try_into().ok()
}

impl<F: Clone> Memo<F> {
    /// For the index file `db` (its WAL-index beside it).
    pub fn new(db: &Path) -> Self {
        let mut shm = db.as_os_str().to_owned();
        shm.push("-shm");
        Self {
            shm: PathBuf::from(shm),
            generation: AtomicU64::new(0),
            answers: Mutex::new(Answers { stamp: None, files: HashMap::new(), links: HashMap::new() }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Answers<F>> {
        match self.answers.lock() {
            Ok(a) => a,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// This process changed the index.
    pub fn bump(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// How the index looks now (one small read of the WAL-index file).
    pub fn stamp(&self) -> Stamp {
        Stamp { generation: self.generation.load(Ordering::SeqCst), wal_index: wal_index(&self.shm) }
    }

    /// The answers valid at `stamp`, dropping them all if the index changed.
    fn at(&self, stamp: Stamp) -> std::sync::MutexGuard<'_, Answers<F>> {
        let mut a = self.lock();
        if a.stamp != Some(stamp) {
            a.files.clear();
            a.links.clear();
            a.stamp = Some(stamp);
        }
        a
    }

    pub fn file(&self, stamp: Stamp, key: &FileKey) -> Option<F> {
        if !stamp.usable() {
            return None;
        }
        self.at(stamp).files.get(key).cloned()
    }

    pub fn put_file(&self, stamp: Stamp, key: FileKey, rows: F) {
        if !stamp.usable() {
            return;
        }
        let mut a = self.at(stamp);
        if a.files.len() >= MAX_ENTRIES {
            a.files.clear();
        }
        a.files.insert(key, rows);
    }

    pub fn link(&self, stamp: Stamp, key: &LinkKey) -> Option<bool> {
        if !stamp.usable() {
            return None;
        }
        self.at(stamp).links.get(key).copied()
    }

    pub fn put_link(&self, stamp: Stamp, key: LinkKey, linked: bool) {
        if !stamp.usable() {
            return;
        }
        let mut a = self.at(stamp);
        if a.links.len() >= MAX_ENTRIES {
            a.links.clear();
        }
        a.links.insert(key, linked);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAL-index file whose header reads `fill` (both copies).
    fn header(dir: &Path, fill: u8) {
        std::fs::write(dir.join("index.sqlite-shm"), [fill; 2 * WAL_INDEX_HEADER + 40]).unwrap();
    }

    #[test]
    fn an_answer_lives_only_while_the_index_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("index.sqlite");
        header(dir.path(), 1);
        let memo = Memo::<()>::new(&db);
        let key = ("r".to_owned(), "d".to_owned());
        let s = memo.stamp();
        memo.put_link(s, key.clone(), true);
        assert_eq!(memo.link(memo.stamp(), &key), Some(true));
        // This process commits.
        memo.bump();
        assert_eq!(memo.link(memo.stamp(), &key), None);
        // Another process commits (the header moves on).
        let s = memo.stamp();
        memo.put_link(s, key.clone(), false);
        header(dir.path(), 2);
        assert_eq!(memo.link(memo.stamp(), &key), None);
        // An answer read before a change is never served after it.
        let before = memo.stamp();
        header(dir.path(), 3);
        memo.put_link(before, key.clone(), true);
        assert_eq!(memo.link(memo.stamp(), &key), None);
        // A torn header (the copies differ) or none at all: nothing is
        // served or kept.
        let mut torn = vec![4u8; 2 * WAL_INDEX_HEADER];
        torn[WAL_INDEX_HEADER + 1] = 5;
        std::fs::write(dir.path().join("index.sqlite-shm"), torn).unwrap();
        let s = memo.stamp();
        memo.put_link(s, key.clone(), true);
        assert_eq!(memo.link(s, &key), None);
        std::fs::remove_file(dir.path().join("index.sqlite-shm")).unwrap();
        let s = memo.stamp();
        memo.put_link(s, key.clone(), true);
        assert_eq!(memo.link(s, &key), None);
    }

    #[test]
    fn holds_at_most_max_entries() {
        let dir = tempfile::tempdir().unwrap();
        header(dir.path(), 1);
        let memo = Memo::<()>::new(&dir.path().join("index.sqlite"));
        let s = memo.stamp();
        for i in 0..=MAX_ENTRIES {
            memo.put_link(s, ("r".to_owned(), i.to_string()), true);
        }
        assert!(memo.lock().links.len() <= MAX_ENTRIES);
    }
}
