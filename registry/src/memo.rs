//! Answers of the index's hottest reads kept in memory: which current
//! objects a static-layout path names, whether a blob is linked into a
//! repository (`/v2/<name>/blobs/<digest>`), the `/v1` lookup's current
//! object of an identity with what was signed for it (the agent's one-trip
//! fetch), and the stored tokens' hashes (the access check of every request
//! that presents a token). Each costs sqlite queries (a hop to sqlx's
//! connection thread and back, and a wake-up, per query) per request
//! otherwise.
//!
//! Never stale: an answer is served only while the index is as it was
//! when the answer was read — the same write generation (`bump`, on every
//! commit of this process's `WriteTx`) and the same count of changes seen
//! by the memo's change signal. The signal is a few read-only connections
//! that only ever run `PRAGMA data_version`, which sqlite changes on every
//! commit by any other connection, this process's or another's (`import`,
//! `gc`, `fsck --repair` beside `serve`), whatever the files' sizes and
//! mtimes. A stamp runs the pragma on the first signal connection that is
//! free (the serving threads do not queue on one), and a connection that reads
//! a value other than its last (or its first) adds one to the shared
//! count before the count is read: a commit is counted by the first
//! pragma of each connection that sees it, so a stamp whose pragma comes
//! after a commit reads a count that was raised after the commit, and
//! differs from every stamp read before it. Two connections' values are
//! never compared (each has its own). The connections live as long as the
//! memo; sqlite's own descriptors keep every POSIX lock safe (a
//! descriptor of the index files opened and closed beside sqlite would
//! drop the process's locks). The stamp is taken before the query, so a
//! write racing a read only makes the answer unusable. A signal
//! connection that failed to open or to answer vouches for nothing; with
//! none left nothing is memoised (a failed one is passed over); a busy index (no busy wait here: this
//! runs on a serving thread) is unknown for that request only. An index
//! file renamed over while `serve` runs (a new inode) is seen by the
//! file's identity (device and inode, checked by path at every stamp,
//! whatever the signal's state: a `stat` opens no descriptor). The
//! registry's connections would then read either file (the signal's and
//! older pooled ones the old, connections sqlx opens later the new,
//! paired with the old file's WAL) — a token revoked in the new one might
//! still be accepted — so from then on nothing is memoised and `replaced`
//! holds: the access check refuses every presented token and `/healthz`
//! fails until the registry restarts (fail closed: a backstop, not a way
//! to restore; restore an index with the registry stopped). Writing into
//! the index file in place (`cp` over it) while serving is not supported
//! either: stop the registry.
//! So a revoked token (`bpfarm-registry token revoke`, or any other write
//! to the tokens table, from any process) is refused from the next request
//! on, as without the memo.
//! The coverage count (`coverage::count`: the page's and `/v1/coverage`'s
//! tally, whose reading groups every current object's index row) is a
//! fifth kind, so a fleet's repeated views cost no sqlite scan until the
//! index changes.
//! A hit takes no lock another hit waits on: the answers sit behind a
//! reader-writer lock (written only to keep an answer or to drop them all
//! when the index changed) and a stamp whose signal connection is taken
//! takes the next. A commit drops the answers once for each connection
//! that runs after it (each counts it): once on a quiet registry, whose
//! stamps all find the first connection free. Stamps only grow, so
//! a request whose stamp is older than the answers held (it raced a
//! change) is served nothing, and does not drop the newer answers.
//! Bounded: at most `MAX_ENTRIES` answers of each kind (the tokens are one
//! answer: the table); when a kind is full its answers are dropped, and
//! when the index changed, all are. Coverage answers are large (their
//! size follows the index's kernels), so they have their own bounds: at
//! most `MAX_COVERAGE` of them and `MAX_COVERAGE_BYTES` together (as
//! their `put` weighs them), the least recently used dropped first; one
//! heavier than that is served but not kept.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rusqlite::{Connection, OpenFlags};

/// Answers held at most (of each kind).
pub const MAX_ENTRIES: usize = 4096;
/// Coverage answers held at most: the page's and `/v1/coverage`'s counts
/// of the newest versions, and a few `?version=` ones.
pub const MAX_COVERAGE: usize = 8;
/// Bytes the coverage answers held may weigh together (a tally of 10,000
/// kernel releases × 12 versions weighs ~1.5 MB).
pub const MAX_COVERAGE_BYTES: usize = 16 << 20;
/// Signal connections at most: one per serving thread and one spare (for
/// a thread preempted while it holds one); each is an sqlite connection
/// (three descriptors, shared with the pools' where sqlite can).
const MAX_SIGNALS: usize = 9;

/// How the index looked when an answer was read. Both parts only grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    generation: u64,
    /// Changes the signal has seen; `None`: unknown, so nothing is served
    /// or kept at this stamp.
    changes: Option<u64>,
}

impl Stamp {
    /// Whether this stamp was taken after (or with) `held`: it reads both
    /// parts at least as high. Otherwise it is older, or raced a change.
    fn follows(&self, held: &Stamp) -> bool {
        self.generation >= held.generation && self.changes >= held.changes
    }
}

type FileKey = (String, String, String);
type LinkKey = (String, String);
/// An identity: kernel release, arch (`uname -m`), version.
type LookupKey = (String, String, String);
/// A coverage count: the version asked for (`None`: the newest), how many
/// versions it counts at most, how many older ones it names.
pub type CoverageKey = (Option<String>, usize, usize);

#[derive(Debug)]
struct Answers<F, L, T, C> {
    stamp: Option<Stamp>,
    files: HashMap<FileKey, F>,
    links: HashMap<LinkKey, bool>,
    lookups: HashMap<LookupKey, L>,
    tokens: Option<T>,
    /// Its own lock: a read moves the answer to the back (least recently
    /// used first), and the page's reads are rare.
    coverage: Mutex<Weighed<C>>,
}

/// Coverage answers with their weights, least recently used first.
#[derive(Debug)]
struct Weighed<C> {
    held: Vec<(CoverageKey, C, usize)>,
    bytes: usize,
}

impl<C: Clone> Weighed<C> {
    fn clear(&mut self) {
        self.held.clear();
        self.bytes = 0;
    }

    /// The answer at `key`, now the most recently used.
    fn get(&mut self, key: &CoverageKey) -> Option<C> {
        let at = self.held.iter().position(|(k, _, _)| k == key)?;
        let hit = self.held.remove(at);
        let answer = hit.1.clone();
        self.held.push(hit);
        Some(answer)
    }

    /// Holds `answer` weighing `bytes` at `key`, dropping the least
    /// recently used until both bounds hold; not held if it alone
    /// weighs more than `MAX_COVERAGE_BYTES`.
    fn put(&mut self, key: CoverageKey, answer: C, bytes: usize) {
        if let Some(at) = self.held.iter().position(|(k, _, _)| *k == key) {
            let (_, _, b) = self.held.remove(at);
            self.bytes -= b;
        }
        if bytes > MAX_COVERAGE_BYTES {
            return;
        }
        while !self.held.is_empty() && (self.held.len() >= MAX_COVERAGE || self.bytes + bytes > MAX_COVERAGE_BYTES) {
            let (_, _, b) = self.held.remove(0);
            self.bytes -= b;
        }
        self.bytes += bytes;
        self.held.push((key, answer, bytes));
    }
}

/// Holds `value` at `key` in `map`, emptying a full map first.
fn bounded_insert<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, key: K, value: V) {
    if map.len() >= MAX_ENTRIES && !map.contains_key(&key) {
        map.clear();
    }
    map.insert(key, value);
}

/// Takes `m`'s lock; a panic elsewhere while it was held leaves nothing
/// half-written here (every write is a whole insert or clear).
fn unpoisoned<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One connection of the change signal.
#[derive(Debug)]
struct Signal {
    /// `None`: failed to open or to answer; it vouches for nothing.
    conn: Option<Connection>,
    /// The `data_version` it read last (`None`: none yet).
    seen: Option<i64>,
}

/// The answers; `F` is what a static-layout path's query returns, `L`
/// what an identity's lookup does, `T` what the tokens' query does and `C`
/// what a coverage count does (`repo`'s rows, `coverage`'s tally: generic
/// so that this module needs nothing from either).
#[derive(Debug)]
pub struct Memo<F, L = (), T = (), C = ()> {
    /// The index file, whose identity is checked at every stamp.
    db: PathBuf,
    /// Its device and inode when the memo was made (after the registry's
    /// pools opened it); `None`: unknown, so `replaced` from the start.
    file: Option<(u64, u64)>,
    /// The change signal's connections (read-only; they run only the
    /// pragma), each with the value it read last.
    signals: Box<[Mutex<Signal>]>,
    /// Changes the signal's connections have seen (see the module docs).
    changes: AtomicU64,
    /// The path came to name another file than the signal's: set once,
    /// never cleared (the registry's connections all stay on the old file).
    replaced: AtomicBool,
    generation: AtomicU64,
    answers: RwLock<Answers<F, L, T, C>>,
}

/// The device and inode `db` names now.
pub(crate) fn file_identity(db: &Path) -> std::io::Result<(u64, u64)> {
    let m = std::fs::metadata(db)?;
    Ok((m.dev(), m.ino()))
}

fn open_signal(db: &Path) -> Option<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    // No busy wait: the pragma runs on a serving thread, so a busy index
    // is "unknown for this request", never a stall.
    match Connection::open_with_flags(db, flags).and_then(|c| c.busy_timeout(std::time::Duration::ZERO).map(|()| c)) {
        Ok(conn) => Some(conn),
        Err(e) => {
            tracing::warn!(db = %db.display(), error = %e, "a connection of the index's change signal is unavailable");
            None
        }
    }
}

fn data_version(c: &Connection) -> rusqlite::Result<i64> {
    c.prepare_cached("PRAGMA data_version")?.query_row([], |r| r.get(0))
}

impl<F: Clone, L: Clone, T: Clone, C: Clone> Memo<F, L, T, C> {
    /// For the index file `db` (an sqlite database).
    pub fn new(db: &Path) -> Self {
        // The identity before the signal opens: a file renamed over between
        // the two is then a replacement at the first stamp, never missed.
        let file = match file_identity(db) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::error!(db = %db.display(), error = %e, "cannot tell which index file this registry opened: tokens are refused and /healthz fails");
                None
            }
        };
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let signals = (0..(threads + 1).min(MAX_SIGNALS))
            .map(|_| Mutex::new(Signal { conn: open_signal(db), seen: None }))
            .collect();
        Self {
            db: db.to_path_buf(),
            file,
            signals,
            changes: AtomicU64::new(0),
            replaced: AtomicBool::new(file.is_none()),
            generation: AtomicU64::new(0),
            answers: RwLock::new(Answers {
                stamp: None,
                files: HashMap::new(),
                links: HashMap::new(),
                lookups: HashMap::new(),
                tokens: None,
                coverage: Mutex::new(Weighed { held: Vec::new(), bytes: 0 }),
            }),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Answers<F, L, T, C>> {
        self.answers.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Answers<F, L, T, C>> {
        self.answers.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the index's path names another file than the one this
    /// registry opened, checked now (one `stat`; whatever the signal's
    /// state). Once true it stays true until restart.
    pub fn replaced(&self) -> bool {
        self.same_file();
        self.replaced.load(Ordering::SeqCst)
    }

    /// The registry's first connection opened the file `first` (taken
    /// right after it connected): if the memo, made later, found another
    /// file at the path, the index was replaced while the registry was
    /// starting, and its older connections read the old one.
    pub fn opened_first(&self, first: (u64, u64)) {
        if self.file != Some(first) {
            self.mark_replaced("starting");
        }
    }

    /// Sets `replaced`, saying so once.
    fn mark_replaced(&self, when: &str) {
        if !self.replaced.swap(true, Ordering::SeqCst) {
            tracing::error!(db = %self.db.display(), "the index file was replaced while the registry was {when}: tokens are refused and /healthz fails until it restarts");
        }
    }

    /// Compares the path's file with the one opened: `Some(false)` (and
    /// `replaced` set) when it is another, `None` when the path names
    /// nothing for now (a rename in progress) or the flag is already set.
    fn same_file(&self) -> Option<bool> {
        if self.replaced.load(Ordering::SeqCst) {
            return Some(false);
        }
        let now = file_identity(&self.db).ok()?;
        if Some(now) == self.file {
            return Some(true);
        }
        self.mark_replaced("serving");
        Some(false)
    }

    /// This process changed the index.
    pub fn bump(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The first free signal connection, in order, else (every one taken)
    /// the first once freed. In order, not spread over the threads: each
    /// connection counts every commit once when it next runs, so a quiet
    /// registry, whose stamps all find the first free, drops its answers
    /// once per commit; the others serve only while it is taken.
    fn signal(&self) -> MutexGuard<'_, Signal> {
        for s in self.signals.iter() {
            let free = match s.try_lock() {
                Ok(s) => s,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => continue,
            };
            // A connection that failed vouches for nothing: the next one
            // answers instead, so one failure does not end the memo.
            if free.conn.is_some() {
                return free;
            }
        }
        // Every live one taken: wait for the first live one (or, with
        // none left, take the first: nothing is memoised then).
        for s in self.signals.iter() {
            let next = unpoisoned(s);
            if next.conn.is_some() {
                return next;
            }
        }
        unpoisoned(&self.signals[0])
    }

    /// How the index looks now: one `stat` of the index's path (is it still
    /// the file opened?) and one `PRAGMA data_version` (no I/O but sqlite's
    /// read locks and its mapped WAL index).
    pub fn stamp(&self) -> Stamp {
        let generation = self.generation.load(Ordering::SeqCst);
        let unknown = Stamp { generation, changes: None };
        // The pragma speaks for the file the connections opened: it vouches
        // only while the path still names that file (checked first, and
        // whatever the signal's state, so a replacement is never missed).
        if self.same_file() != Some(true) {
            // Another file, or none for now (a rename in progress):
            // unknown this time.
            return unknown;
        }
        let mut signal = self.signal();
        let version = match signal.conn.as_ref().map(data_version) {
            Some(Ok(v)) => v,
            // Busy or locked (another process recovering the WAL, an
            // exclusive lock): unknown this time, asked again next time.
            Some(Err(rusqlite::Error::SqliteFailure(e, _)))
                if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
            {
                return unknown;
            }
            Some(Err(e)) => {
                // Dropped, not retried: a connection that cannot read the
                // pragma cannot vouch for the answers.
                tracing::warn!(error = %e, "a connection of the index's change signal failed");
                signal.conn = None;
                return unknown;
            }
            None => return unknown,
        };
        // Counted before the count is read (and under this connection's
        // lock, so its next reader sees both).
        if signal.seen != Some(version) {
            signal.seen = Some(version);
            self.changes.fetch_add(1, Ordering::SeqCst);
        }
        Stamp { generation, changes: Some(self.changes.load(Ordering::SeqCst)) }
    }

    /// The answers valid at `stamp`. `None` when the stamp vouches for
    /// nothing or does not match them; a stamp newer than theirs drops
    /// them all (the index changed), an older one leaves them.
    fn at(&self, stamp: Stamp) -> Option<RwLockReadGuard<'_, Answers<F, L, T, C>>> {
        stamp.changes?;
        let a = self.read();
        if a.stamp == Some(stamp) {
            return Some(a);
        }
        drop(a);
        let mut a = self.write();
        match a.stamp {
            Some(held) if held == stamp || !stamp.follows(&held) => {}
            _ => {
                a.files.clear();
                a.links.clear();
                a.lookups.clear();
                a.tokens = None;
                a.coverage.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
                a.stamp = Some(stamp);
            }
        }
        // What was just dropped is not there to serve; one kept at this
        // stamp meanwhile is served next time.
        None
    }

    /// Where an answer read at `stamp` may be kept: only while the answers
    /// held are still at that stamp (or none is held yet). A read that
    /// took long (a coverage count) must not wipe what was kept since the
    /// index changed under it; its own answer is dropped, not kept.
    fn keep_at(&self, stamp: Stamp) -> Option<RwLockWriteGuard<'_, Answers<F, L, T, C>>> {
        stamp.changes?;
        let mut a = self.write();
        match a.stamp {
            Some(held) if held != stamp => None,
            Some(_) => Some(a),
            None => {
                a.stamp = Some(stamp);
                Some(a)
            }
        }
    }

    pub fn file(&self, stamp: Stamp, key: &FileKey) -> Option<F> {
        self.at(stamp)?.files.get(key).cloned()
    }

    pub fn put_file(&self, stamp: Stamp, key: FileKey, rows: F) {
        let Some(mut a) = self.keep_at(stamp) else { return };
        bounded_insert(&mut a.files, key, rows);
    }

    pub fn link(&self, stamp: Stamp, key: &LinkKey) -> Option<bool> {
        self.at(stamp)?.links.get(key).copied()
    }

    pub fn put_link(&self, stamp: Stamp, key: LinkKey, linked: bool) {
        let Some(mut a) = self.keep_at(stamp) else { return };
        bounded_insert(&mut a.links, key, linked);
    }

    pub fn lookup(&self, stamp: Stamp, key: &LookupKey) -> Option<L> {
        self.at(stamp)?.lookups.get(key).cloned()
    }

    pub fn put_lookup(&self, stamp: Stamp, key: LookupKey, answer: L) {
        let Some(mut a) = self.keep_at(stamp) else { return };
        bounded_insert(&mut a.lookups, key, answer);
    }

    /// The stored tokens as read at `stamp`, if they were.
    pub fn tokens(&self, stamp: Stamp) -> Option<T> {
        self.at(stamp)?.tokens.clone()
    }

    pub fn put_tokens(&self, stamp: Stamp, tokens: T) {
        let Some(mut a) = self.keep_at(stamp) else { return };
        a.tokens = Some(tokens);
    }

    /// The coverage count at `key` as read at `stamp`, if it was (and kept).
    pub fn coverage(&self, stamp: Stamp, key: &CoverageKey) -> Option<C> {
        unpoisoned(&self.at(stamp)?.coverage).get(key)
    }

    /// Keeps a coverage count read at `stamp`, weighing `bytes` (see the
    /// module docs for the bounds).
    pub fn put_coverage(&self, stamp: Stamp, key: CoverageKey, answer: C, bytes: usize) {
        let Some(mut a) = self.keep_at(stamp) else { return };
        a.coverage.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).put(key, answer, bytes);
    }

    /// How many coverage answers are held, and their weight.
    pub fn coverage_held(&self) -> (usize, usize) {
        let a = self.read();
        let c = unpoisoned(&a.coverage);
        (c.held.len(), c.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAL index with one row, and a writer connection of this process.
    fn index(dir: &Path) -> (std::path::PathBuf, Connection) {
        let db = dir.join("index.sqlite");
        let w = Connection::open(&db).unwrap();
        w.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)).unwrap();
        w.execute_batch("CREATE TABLE t (v TEXT NOT NULL); INSERT INTO t VALUES ('a');").unwrap();
        (db, w)
    }

    #[test]
    fn an_index_renamed_over_stops_the_memo() {
        let dir = tempfile::tempdir().unwrap();
        let (db, w) = index(dir.path());
        let memo = Memo::<(), (), Vec<String>>::new(&db);
        let s = memo.stamp();
        memo.put_tokens(s, vec!["revoked-later".to_owned()]);
        assert!(memo.tokens(memo.stamp()).is_some());
        // A copy of the index, changed, renamed over it: the signal's
        // connection still reads the old file, whose data_version never
        // moves again.
        let copy = dir.path().join("new.sqlite");
        w.execute("VACUUM INTO ?1", [copy.to_str().unwrap()]).unwrap();
        let c = Connection::open(&copy).unwrap();
        c.execute("UPDATE t SET v = 'z'", []).unwrap();
        drop(c);
        std::fs::rename(&copy, &db).unwrap();
        assert_eq!(memo.tokens(memo.stamp()), None);
        assert!(memo.replaced());
        // And it stays off: nothing put is ever served again.
        let s = memo.stamp();
        memo.put_tokens(s, vec!["x".to_owned()]);
        assert_eq!(memo.tokens(memo.stamp()), None);
        // A path that names nothing for a moment is unknown, not a change
        // missed.
        let sub = dir.path().join("b");
        std::fs::create_dir(&sub).unwrap();
        let (db2, _w2) = index(&sub);
        let memo2 = Memo::<()>::new(&db2);
        let key = ("r".to_owned(), "d".to_owned());
        let s = memo2.stamp();
        memo2.put_link(s, key.clone(), true);
        let aside = dir.path().join("aside.sqlite");
        std::fs::rename(&db2, &aside).unwrap();
        assert_eq!(memo2.link(memo2.stamp(), &key), None);
        assert!(!memo2.replaced(), "a path naming nothing for a moment is not a replacement");
    }

    #[test]
    fn a_slow_read_does_not_wipe_what_was_kept_after_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let (db, w) = index(dir.path());
        let memo = Memo::<(), (), Vec<String>>::new(&db);
        let key = ("r".to_owned(), "d".to_owned());
        // A slow read stamps, then the index changes while it reads.
        let slow = memo.stamp();
        assert_eq!(memo.tokens(slow), None);
        w.execute("UPDATE t SET v = 'b'", []).unwrap();
        let now = memo.stamp();
        assert_ne!(now, slow);
        assert_eq!(memo.link(now, &key), None);
        memo.put_link(now, key.clone(), true);
        // The slow read's answer comes in at its old stamp: dropped, and
        // what was kept at the new one stays.
        memo.put_tokens(slow, vec!["read-before-the-change".to_owned()]);
        assert_eq!(memo.link(memo.stamp(), &key), Some(true));
        assert_eq!(memo.tokens(memo.stamp()), None);
        assert_eq!(memo.tokens(slow), None, "an answer from before the change is never served");
    }

    #[test]
    fn a_replacement_while_starting_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _w) = index(dir.path());
        let first = file_identity(&db).unwrap();
        let memo = Memo::<()>::new(&db);
        memo.opened_first(first);
        assert!(!memo.replaced());
        // The file the first connection opened is not the one found later.
        let later = Memo::<()>::new(&db);
        later.opened_first((first.0, first.1.wrapping_add(1)));
        assert!(later.replaced());
    }

    #[test]
    fn a_replacement_is_seen_without_a_signal() {
        let dir = tempfile::tempdir().unwrap();
        // Not a database: the pragma fails and the signal is dropped.
        let db = dir.path().join("index.sqlite");
        std::fs::write(&db, vec![7u8; 4096]).unwrap();
        let memo = Memo::<()>::new(&db);
        let _ = memo.stamp();
        assert!(memo.signals.iter().any(|s| s.lock().unwrap().conn.is_none()), "the failed connection was kept");
        assert!(!memo.replaced());
        let new = dir.path().join("new.sqlite");
        std::fs::write(&new, vec![7u8; 4096]).unwrap();
        std::fs::rename(&new, &db).unwrap();
        assert!(memo.replaced(), "a replacement was missed once the signal was gone");
        // An index whose identity is unknown from the start is refused too.
        let missing = Memo::<()>::new(&dir.path().join("nothing.sqlite"));
        assert!(missing.replaced());
    }

    #[test]
    fn an_answer_lives_only_while_the_index_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let (db, w) = index(dir.path());
        let memo = Memo::<()>::new(&db);
        let key = ("r".to_owned(), "d".to_owned());
        let s = memo.stamp();
        memo.put_link(s, key.clone(), true);
        assert_eq!(memo.link(memo.stamp(), &key), Some(true));
        // This process commits through `WriteTx`.
        memo.bump();
        assert_eq!(memo.link(memo.stamp(), &key), None);
        // Another connection commits (no bump: `oci_link` writes so).
        let s = memo.stamp();
        memo.put_link(s, key.clone(), false);
        assert_eq!(memo.link(memo.stamp(), &key), Some(false));
        w.execute("UPDATE t SET v = 'b'", []).unwrap();
        assert_eq!(memo.link(memo.stamp(), &key), None);
        // An answer read before a change is never served after it.
        let before = memo.stamp();
        w.execute("UPDATE t SET v = 'c'", []).unwrap();
        memo.put_link(before, key.clone(), true);
        assert_eq!(memo.link(memo.stamp(), &key), None);
        // A read changes nothing.
        let s = memo.stamp();
        memo.put_link(s, key.clone(), true);
        w.query_row("SELECT v FROM t", [], |r| r.get::<_, String>(0)).unwrap();
        assert_eq!(memo.link(memo.stamp(), &key), Some(true));
    }

    /// What the last signal (size and mtime of the WAL and the database)
    /// could not see: another process commits into a restarted WAL (same
    /// size) within the same mtime tick (here: mtimes put back).
    #[test]
    fn another_process_s_same_size_same_second_write_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let (db, w) = index(dir.path());
        for i in 0..20 {
            w.execute("UPDATE t SET v = ?1", [format!("grow {i}")]).unwrap();
        }
        // Everything checkpointed: the next writer restarts the WAL at its
        // start, overwriting frames in place.
        w.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0)).unwrap();
        let memo = Memo::<()>::new(&db);
        let key = ("r".to_owned(), "d".to_owned());
        let s = memo.stamp();
        memo.put_link(s, key.clone(), true);
        assert_eq!(memo.link(memo.stamp(), &key), Some(true));

        let wal = dir.path().join("index.sqlite-wal");
        let look = |p: &Path| {
            let m = std::fs::metadata(p).unwrap();
            (m.len(), m.modified().unwrap())
        };
        let (db_before, wal_before) = (look(&db), look(&wal));
        // sqlite3 is in ci/install-deps; a missing one fails here, loudly.
        let out = std::process::Command::new("sqlite3").arg(&db).arg("UPDATE t SET v = 'other';").output().unwrap();
        assert!(out.status.success(), "sqlite3: {}", String::from_utf8_lossy(&out.stderr));
        for (p, (_, mtime)) in [(&db, db_before), (&wal, wal_before)] {
            std::fs::File::options().write(true).open(p).unwrap().set_modified(mtime).unwrap();
        }
        // The files look exactly as before, yet the index changed.
        assert_eq!((look(&db), look(&wal)), (db_before, wal_before));
        assert_eq!(w.query_row("SELECT v FROM t", [], |r| r.get::<_, String>(0)).unwrap(), "other");
        assert_eq!(memo.link(memo.stamp(), &key), None);
    }

    /// A busy index (another connection holds it exclusively) makes the
    /// stamp unknown for that request, at once (no busy wait on a serving
    /// thread), and the signal answers again once the lock is gone.
    #[test]
    fn a_busy_index_is_unknown_for_now_not_forever() {
        // A rollback-journal database: there an exclusive transaction
        // keeps every reader out (in WAL mode readers are never blocked,
        // short of a WAL recovery, which a test cannot hold open).
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("index.sqlite");
        let w = Connection::open(&db).unwrap();
        w.execute_batch("CREATE TABLE t (v TEXT NOT NULL); INSERT INTO t VALUES ('a');").unwrap();
        let memo = Memo::<()>::new(&db);
        assert!(memo.stamp().changes.is_some());
        w.execute_batch("BEGIN EXCLUSIVE; UPDATE t SET v = 'x';").unwrap();
        assert_eq!(memo.stamp().changes, None, "a busy index vouches for nothing");
        w.execute_batch("COMMIT;").unwrap();
        assert!(memo.stamp().changes.is_some(), "the signal was dropped for good");
    }

    #[test]
    fn without_a_signal_nothing_is_memoised() {
        let dir = tempfile::tempdir().unwrap();
        // Not a database: the pragma fails, the connection is dropped.
        let db = dir.path().join("index.sqlite");
        std::fs::write(&db, vec![7u8; 4096]).unwrap();
        let memo = Memo::<()>::new(&db);
        let key = ("r".to_owned(), "d".to_owned());
        let s = memo.stamp();
        memo.put_link(s, key.clone(), true);
        assert_eq!(memo.link(memo.stamp(), &key), None);
        assert_eq!(memo.link(s, &key), None);
    }

    /// The lookup's answers follow the same rules as the others.
    #[test]
    fn a_lookup_lives_only_while_the_index_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let (db, w) = index(dir.path());
        let memo = Memo::<(), Option<u32>>::new(&db);
        let key = ("6.1.0-28-amd64".to_owned(), "x86_64".to_owned(), "v0.1.0".to_owned());
        let s = memo.stamp();
        memo.put_lookup(s, key.clone(), Some(1));
        assert_eq!(memo.lookup(memo.stamp(), &key), Some(Some(1)));
        memo.bump();
        assert_eq!(memo.lookup(memo.stamp(), &key), None);
        // "No current object" is an answer too, and is dropped alike.
        let s = memo.stamp();
        memo.put_lookup(s, key.clone(), None);
        assert_eq!(memo.lookup(memo.stamp(), &key), Some(None));
        w.execute("UPDATE t SET v = 'b'", []).unwrap();
        assert_eq!(memo.lookup(memo.stamp(), &key), None);
        let before = memo.stamp();
        w.execute("UPDATE t SET v = 'c'", []).unwrap();
        memo.put_lookup(before, key.clone(), Some(2));
        assert_eq!(memo.lookup(memo.stamp(), &key), None);
    }

    /// The tokens' answer follows the same rules: another process's
    /// revoke (a commit, no bump) drops it, as does this process's write.
    #[test]
    fn the_tokens_live_only_while_the_index_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let (db, w) = index(dir.path());
        let memo = Memo::<(), (), Vec<&str>>::new(&db);
        let s = memo.stamp();
        assert_eq!(memo.tokens(s), None);
        memo.put_tokens(s, vec!["h1", "h2"]);
        assert_eq!(memo.tokens(memo.stamp()), Some(vec!["h1", "h2"]));
        let out = std::process::Command::new("sqlite3").arg(&db).arg("UPDATE t SET v = 'revoked';").output().unwrap();
        assert!(out.status.success(), "sqlite3: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(memo.tokens(memo.stamp()), None, "another process's write");
        let s = memo.stamp();
        memo.put_tokens(s, vec!["h1"]);
        memo.bump();
        assert_eq!(memo.tokens(memo.stamp()), None, "this process's write");
        let before = memo.stamp();
        w.execute("UPDATE t SET v = 'x'", []).unwrap();
        memo.put_tokens(before, vec!["stale"]);
        assert_eq!(memo.tokens(memo.stamp()), None, "read before a change, never served after it");
    }

    /// Coverage answers follow the same rules, with their own bounds: at
    /// most `MAX_COVERAGE`, weighing at most `MAX_COVERAGE_BYTES`
    /// together, the least recently used dropped first, one too heavy
    /// alone never kept.
    #[test]
    fn coverage_answers_are_bounded_by_count_and_by_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (db, w) = index(dir.path());
        let memo = Memo::<(), (), (), usize>::new(&db);
        let key = |v: usize| (Some(format!("v{v}")), 12, 0);
        let newest = (None, 12, 24);
        let s = memo.stamp();
        memo.put_coverage(s, newest.clone(), 0, 1000);
        for v in 1..=3 * MAX_COVERAGE {
            memo.put_coverage(s, key(v), v, 1000);
            // Read on every request, so never the least recently used.
            assert_eq!(memo.coverage(s, &newest), Some(0));
            let (n, bytes) = memo.coverage_held();
            assert!(n <= MAX_COVERAGE && bytes == n * 1000, "{n} answers, {bytes} bytes");
        }
        assert_eq!(memo.coverage_held().0, MAX_COVERAGE);
        assert_eq!(memo.coverage(s, &key(1)), None, "the least recently used is dropped first");
        assert_eq!(memo.coverage(s, &key(3 * MAX_COVERAGE)), Some(3 * MAX_COVERAGE));
        // Put again at the same key: held and weighed once.
        memo.put_coverage(s, newest.clone(), 7, 2000);
        assert_eq!(memo.coverage(s, &newest), Some(7));
        assert_eq!(memo.coverage_held(), (MAX_COVERAGE, (MAX_COVERAGE - 1) * 1000 + 2000));
        // By bytes: two answers of 3/5 of the bound each are never held together.
        let heavy = MAX_COVERAGE_BYTES / 5 * 3;
        memo.put_coverage(s, key(100), 100, heavy);
        memo.put_coverage(s, key(101), 101, heavy);
        assert_eq!(memo.coverage(s, &key(100)), None);
        assert_eq!(memo.coverage(s, &key(101)), Some(101));
        let (n, bytes) = memo.coverage_held();
        assert!(bytes <= MAX_COVERAGE_BYTES && n < MAX_COVERAGE, "{n} answers, {bytes} bytes");
        // Too heavy alone: the caller serves it, the memo keeps nothing of it.
        memo.put_coverage(s, key(102), 102, MAX_COVERAGE_BYTES + 1);
        assert_eq!(memo.coverage(s, &key(102)), None);
        assert_eq!(memo.coverage_held(), (n, bytes));
        // Any commit, another connection's included, drops them all.
        w.execute("UPDATE t SET v = 'b'", []).unwrap();
        assert_eq!(memo.coverage(memo.stamp(), &key(101)), None);
        assert_eq!(memo.coverage_held(), (0, 0));
        let before = memo.stamp();
        w.execute("UPDATE t SET v = 'c'", []).unwrap();
        memo.put_coverage(before, newest.clone(), 9, 1000);
        assert_eq!(memo.coverage(memo.stamp(), &newest), None, "read before a change, never served after it");
        memo.bump();
        let s = memo.stamp();
        memo.put_coverage(s, newest.clone(), 9, 1000);
        memo.bump();
        assert_eq!(memo.coverage(memo.stamp(), &newest), None, "this process's write");
    }

    /// Many serving threads ask while another process commits, one
    /// commit after another: no thread is ever served an answer older
    /// than a commit it saw complete before it asked. Each reads the
    /// committed value itself first (a connection of its own), then asks
    /// the memo, reading and keeping the value on a miss, as `repo` does.
    /// A stamp taken on the second signal connection: the test holds the
    /// first, as a serving thread would.
    fn on_second<L: Clone>(memo: &Memo<(), L>) -> Stamp {
        let _held = unpoisoned(&memo.signals[0]);
        memo.stamp()
    }

    /// The two ways two connections' counts could go wrong, driven in a
    /// fixed order (no timing): a connection's first pragma after a
    /// commit must count it, and each connection compares only its own
    /// values (the first sees two commits at once where the second saw
    /// them one at a time).
    #[test]
    fn commits_seen_by_two_signal_connections_in_turn_are_never_served_stale() {
        let dir = tempfile::tempdir().unwrap();
        let (db, w) = index(dir.path());
        let memo = Memo::<(), i64>::new(&db);
        assert!(memo.signals.len() >= 2, "one signal connection per core and a spare");
        let key = ("r".to_owned(), "x86_64".to_owned(), "v".to_owned());

        let first = memo.stamp();
        memo.put_lookup(first, key.clone(), 0);
        assert_eq!(memo.lookup(memo.stamp(), &key), Some(0));
        w.execute_batch("UPDATE t SET v = 'b'").unwrap();
        assert_eq!(memo.lookup(on_second(&memo), &key), None, "the second connection's first pragma after a commit");

        let _ = memo.stamp();
        let _ = on_second(&memo);
        w.execute_batch("UPDATE t SET v = 'c'").unwrap();
        let second = on_second(&memo);
        assert_eq!(memo.lookup(second, &key), None);
        memo.put_lookup(second, key.clone(), 2);
        assert_eq!(memo.lookup(on_second(&memo), &key), Some(2));
        w.execute_batch("UPDATE t SET v = 'd'").unwrap();
        assert_eq!(memo.lookup(memo.stamp(), &key), None, "the first connection, two commits since it last read");
        assert_eq!(memo.lookup(on_second(&memo), &key), None);
    }

    /// A signal connection that failed is passed over: the next answers,
    /// and the memo goes on serving (and dropping on a commit).
    #[test]
    fn a_failed_first_signal_connection_does_not_end_the_memo() {
        let dir = tempfile::tempdir().unwrap();
        let (db, w) = index(dir.path());
        let memo = Memo::<(), i64>::new(&db);
        unpoisoned(&memo.signals[0]).conn = None;
        let key = ("r".to_owned(), "x86_64".to_owned(), "v".to_owned());
        let stamp = memo.stamp();
        assert!(stamp.changes.is_some(), "the next connection vouches");
        memo.put_lookup(stamp, key.clone(), 1);
        assert_eq!(memo.lookup(memo.stamp(), &key), Some(1));
        w.execute_batch("UPDATE t SET v = 'b'").unwrap();
        assert_eq!(memo.lookup(memo.stamp(), &key), None);
    }

    #[test]
    fn threads_reading_while_another_process_writes_are_never_served_a_stale_answer() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;
        const COMMITS: i64 = 400;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("index.sqlite");
        let w = Connection::open(&db).unwrap();
        w.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)).unwrap();
        w.execute_batch("CREATE TABLE t (v INTEGER NOT NULL); INSERT INTO t VALUES (0);").unwrap();
        let memo = Arc::new(Memo::<(), i64>::new(&db));
        let key = ("6.1.0-28-amd64".to_owned(), "x86_64".to_owned(), "v1".to_owned());
        let done = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let (memo, key, done, db) = (memo.clone(), key.clone(), done.clone(), db.clone());
                std::thread::spawn(move || {
                    let c = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
                    let value = || c.query_row("SELECT v FROM t", [], |r| r.get::<_, i64>(0)).unwrap();
                    let (mut hits, mut newest) = (0u64, 0);
                    while !done.load(Ordering::SeqCst) {
                        let committed = value();
                        let s = memo.stamp();
                        let got = match memo.lookup(s, &key) {
                            Some(v) => {
                                hits += 1;
                                v
                            }
                            None => {
                                let v = value();
                                memo.put_lookup(s, key.clone(), v);
                                v
                            }
                        };
                        assert!(got >= committed, "served {got} after {committed} was committed");
                        newest = newest.max(got);
                    }
                    (hits, newest)
                })
            })
            .collect();
        // The writer: another process (no `bump`: only the signal sees it).
        // sqlite3 is in ci/install-deps; a missing one fails here, loudly.
        let script: String = std::iter::once(".bail on\n.timeout 10000\nPRAGMA synchronous = OFF;\n".to_owned())
            .chain((1..=COMMITS).map(|i| format!("UPDATE t SET v = {i};\n")))
            .collect();
        let mut writer = std::process::Command::new("sqlite3")
            .arg(&db)
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut writer.stdin.take().unwrap(), script.as_bytes()).unwrap();
        let out = writer.wait_with_output().unwrap();
        assert!(out.status.success(), "sqlite3: {}", String::from_utf8_lossy(&out.stderr));
        // A moment of answers after the last commit, then stop.
        std::thread::sleep(std::time::Duration::from_millis(100));
        done.store(true, Ordering::SeqCst);
        let results: Vec<(u64, i64)> = readers.into_iter().map(|t| t.join().unwrap()).collect();
        let hits: u64 = results.iter().map(|r| r.0).sum();
        assert!(hits > 0, "the memo served nothing: the test checked nothing");
        assert!(results.iter().all(|r| r.1 == COMMITS), "a reader never saw the last commit: {results:?}");
    }

    #[test]
    fn holds_at_most_max_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _w) = index(dir.path());
        let memo = Memo::<(), bool>::new(&db);
        let s = memo.stamp();
        for i in 0..=MAX_ENTRIES {
            memo.put_link(s, ("r".to_owned(), i.to_string()), true);
            memo.put_lookup(s, (i.to_string(), "x86_64".to_owned(), "v".to_owned()), true);
        }
        let a = memo.read();
        let (links, lookups) = (a.links.len(), a.lookups.len());
        assert!(links > 0 && links <= MAX_ENTRIES, "{links}");
        assert!(lookups > 0 && lookups <= MAX_ENTRIES, "{lookups}");
    }
}
