//! Answers of the index's two hottest reads kept in memory: which current
//! objects a static-layout path names, and whether a blob is linked into a
//! repository (`/v2/<name>/blobs/<digest>`). Each costs a sqlite query
//! (a hop to sqlx's connection thread and back) per download otherwise.
//!
//! Never stale: an answer is served only while the index is as it was
//! when the answer was read — the same write generation (`bump`, on every
//! commit of this process's `WriteTx`) and the same WAL and database files
//! (size and modification time, which any other process's write changes).
//! The stamp is taken before the query, so a write racing a read only
//! makes the answer unusable. Bounded: at most `MAX_ENTRIES` answers; when
//! full, or when the index changed, all are dropped.
//!
//! Known gap: another process's commit within one mtime tick that leaves
//! the WAL's size unchanged (a WAL restarted from its start) is missed.
//! sqlite's WAL-index header (`index.sqlite-shm`) would be exact, but it
//! must never be read through a descriptor this process opens and closes:
//! closing any descriptor of a file drops every POSIX lock the process
//! holds on it, sqlite's connections' included (tried: beside a `gc`
//! process the serving registry then lost its index). `PRAGMA
//! data_version` is exact too, but is a query per stamp, which is what
//! this memo saves.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// Answers held at most (of each kind).
pub const MAX_ENTRIES: usize = 4096;

/// How the index looked when an answer was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    generation: u64,
    wal: Option<(SystemTime, u64)>,
    db: Option<(SystemTime, u64)>,
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
    db: PathBuf,
    wal: PathBuf,
    generation: AtomicU64,
    answers: Mutex<Answers<F>>,
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl<F: Clone> Memo<F> {
    /// For the index file `db` (its WAL beside it).
    pub fn new(db: &Path) -> Self {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        Self {
            db: db.to_owned(),
            wal: PathBuf::from(wal),
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

    /// How the index looks now (two stats of cached dentries).
    pub fn stamp(&self) -> Stamp {
        Stamp {
            generation: self.generation.load(Ordering::SeqCst),
            wal: file_stamp(&self.wal),
            db: file_stamp(&self.db),
        }
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
        self.at(stamp).files.get(key).cloned()
    }

    pub fn put_file(&self, stamp: Stamp, key: FileKey, rows: F) {
        let mut a = self.at(stamp);
        if a.files.len() >= MAX_ENTRIES {
            a.files.clear();
        }
        a.files.insert(key, rows);
    }

    pub fn link(&self, stamp: Stamp, key: &LinkKey) -> Option<bool> {
        self.at(stamp).links.get(key).copied()
    }

    pub fn put_link(&self, stamp: Stamp, key: LinkKey, linked: bool) {
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

    #[test]
    fn an_answer_lives_only_while_the_index_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("index.sqlite");
        std::fs::write(&db, b"x").unwrap();
        let memo = Memo::<()>::new(&db);
        let key = ("r".to_owned(), "d".to_owned());
        let s = memo.stamp();
        memo.put_link(s, key.clone(), true);
        assert_eq!(memo.link(memo.stamp(), &key), Some(true));
        // This process commits.
        memo.bump();
        assert_eq!(memo.link(memo.stamp(), &key), None);
        // Another process writes the WAL (it grows).
        let s = memo.stamp();
        memo.put_link(s, key.clone(), false);
        std::fs::write(dir.path().join("index.sqlite-wal"), b"frame").unwrap();
        assert_eq!(memo.link(memo.stamp(), &key), None);
        // An answer read before a change is never served after it.
        let before = memo.stamp();
        std::fs::write(dir.path().join("index.sqlite-wal"), b"frame2").unwrap();
        memo.put_link(before, key.clone(), true);
        assert_eq!(memo.link(memo.stamp(), &key), None);
    }

    #[test]
    fn holds_at_most_max_entries() {
        let dir = tempfile::tempdir().unwrap();
        let memo = Memo::<()>::new(&dir.path().join("index.sqlite"));
        let s = memo.stamp();
        for i in 0..=MAX_ENTRIES {
            memo.put_link(s, ("r".to_owned(), i.to_string()), true);
        }
        assert!(memo.lock().links.len() <= MAX_ENTRIES);
    }
}
