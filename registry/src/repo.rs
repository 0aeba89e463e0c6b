//! The sqlite index: the only module that runs SQL. One writer connection
//! (sqlite has one writer anyway; queueing here beats SQLITE_BUSY) and a
//! pool of readers, in WAL mode.
//!
//! Changes that must land together — an object row and its OCI form (tag,
//! index, manifest, links) — go through one `WriteTx`: a `BEGIN IMMEDIATE`
//! transaction on the writer, so concurrent publishes of one identity are
//! serialised and both faces always name the same object.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bpfarm_object::{Identity, ObjectMetadata};

use crate::memo::{CoverageKey, Memo};
use futures_util::TryStreamExt;
use futures_util::stream::BoxStream;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

#[derive(Debug, Clone)]
pub struct Repo {
    writer: SqlitePool,
    reader: SqlitePool,
    /// The hottest reads' answers (`memo`).
    memo: Arc<IndexMemo>,
}

/// The current object of an identity with what was signed for it: what
/// the `/v1` lookup answers (`None`: no current object).
pub type Signed = Option<(ObjectRow, Option<SignatureRow>)>;

/// Every stored token's hash with its scope (`token_hashes`).
pub type TokenHashes = Arc<[(String, Scope)]>;

/// A static-layout path's rows are shared, so a memoised answer is one
/// reference count per download, not a copy of every row's strings; so
/// are a coverage tally's states.
type IndexMemo = Memo<Arc<[ObjectRow]>, Signed, TokenHashes, CoverageAnswer>;

/// A coverage count as the memo holds it. Its type belongs to the
/// coverage service above this layer (`coverage::Tally`), so here it is
/// only something shared: `coverage_memoised` hands it back as the type
/// it was kept as.
pub type CoverageAnswer = Arc<dyn std::any::Any + Send + Sync>;

/// One stored object row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ObjectRow {
    pub id: i64,
    pub digest: String,
    pub size: i64,
    pub metadata: String,
    pub published_at: String,
}

/// A stored object row whose metadata no longer parses (it was validated
/// when published, so the index was changed behind the registry's back).
/// Reads of that row fail with this, naming it; nothing panics.
#[derive(Debug, thiserror::Error)]
#[error("object row {id} ({digest}): stored metadata does not parse: {source}")]
pub struct CorruptRow {
    pub id: i64,
    pub digest: String,
    #[source]
    pub source: serde_json::Error,
}

fn parse_metadata(id: i64, digest: &str, text: &str) -> Result<ObjectMetadata, CorruptRow> {
    serde_json::from_str(text).map_err(|source| CorruptRow { id, digest: digest.to_owned(), source })
}

impl ObjectRow {
    /// The metadata as published.
    pub fn metadata(&self) -> Result<ObjectMetadata, CorruptRow> {
        parse_metadata(self.id, &self.digest, &self.metadata)
    }
}

/// Every object row, for `fsck`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ObjectCheckRow {
    pub id: i64,
    pub kernel_release: String,
    pub arch: String,
    pub version: String,
    pub digest: String,
    pub size: i64,
    pub metadata: String,
    pub current: i64,
    pub oci_tag: Option<String>,
}

impl ObjectCheckRow {
    /// The metadata as published.
    pub fn metadata(&self) -> Result<ObjectMetadata, CorruptRow> {
        parse_metadata(self.id, &self.digest, &self.metadata)
    }
}

/// A current object as the faces check sees it first (`face_rows`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FaceRow {
    pub id: i64,
    pub arch: String,
    pub digest: String,
    pub size: i64,
    /// What its recorded tag names, when it has a tag and the tag exists.
    pub index_digest: Option<String>,
    /// Whether `index_digest` has a manifest row (1) or not (0).
    pub index_row: i64,
}

/// Also read from a JSON array of arrays (`coverage_detail`: a page's
/// cells in one row).
#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
pub struct CoverageObject {
    pub kernel_release: String,
    pub arch: String,
    pub version: String,
    pub digest: String,
    pub size: i64,
}

/// Which rows a coverage count reads (`coverage_pairs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellRows {
    Objects,
    Failures,
}

/// A (release, arch) pair with rows, as a coverage count reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CoveragePair {
    pub kernel_release: String,
    pub arch: String,
    /// Which of the counted versions it has rows for, `\n`-separated
    /// (versions hold no `\n`); `None`: none of them.
    pub versions: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Deserialize)]
pub struct CoverageFailure {
    pub kernel_release: String,
    pub arch: String,
    pub version: String,
    pub message: String,
}

/// Reader connections at most.
const READERS: u32 = 8;
/// Each reader's own page cache (`PRAGMA cache_size`; negative: KiB), 512
/// KiB where sqlite's default is 2,000 KiB: eight readers that had each
/// filled theirs held ~16 MiB of pages the kernel's page cache holds
/// anyway (what a miss costs is a `pread` of a cached page). The hottest
/// reads are memoised (`memo`), so few requests reach a reader at all.
const READER_CACHE: &str = "-512";

/// Every version with a current object or a failure (`coverage_versions`).
const COVERAGE_VERSIONS: &str = "SELECT version FROM objects WHERE current = 1 UNION SELECT version FROM failures";
/// Per (release, arch) pair with current objects, which of the counted
/// versions (`?1`, a JSON array) it has (`coverage_pairs`).
const COVERAGE_OBJECT_PAIRS: &str = "SELECT kernel_release, arch,
        group_concat(CASE WHEN version IN (SELECT value FROM json_each(?1)) THEN version END, char(10)) AS versions
   FROM objects WHERE current = 1 GROUP BY kernel_release, arch";
/// The same of failures.
const COVERAGE_FAILURE_PAIRS: &str = "SELECT kernel_release, arch,
        group_concat(CASE WHEN version IN (SELECT value FROM json_each(?1)) THEN version END, char(10)) AS versions
   FROM failures GROUP BY kernel_release, arch";

/// The current objects of some releases (`?1`) × versions (`?2`), both
/// JSON arrays, as one JSON array of `[release, arch, version, digest,
/// size]` (`coverage_detail`).
const COVERAGE_DETAIL_OBJECTS: &str =
    "SELECT json_group_array(json_array(kernel_release, arch, version, digest, size)) FROM objects
      WHERE current = 1 AND kernel_release IN (SELECT value FROM json_each(?1))
        AND +version IN (SELECT value FROM json_each(?2))";
/// Their failures, as `[release, arch, version, message]`, of each
/// message its first line, at most `?3` characters.
const COVERAGE_DETAIL_FAILURES: &str = "SELECT json_group_array(json_array(kernel_release, arch, version,
        rtrim(substr(message, 1, CASE instr(message, char(10)) WHEN 0 THEN ?3
                                      ELSE min(instr(message, char(10)) - 1, ?3) END), char(13))))
   FROM failures
  WHERE kernel_release IN (SELECT value FROM json_each(?1))
    AND +version IN (SELECT value FROM json_each(?2))";

/// Releases whose cells one `COVERAGE_DETAIL_*` query reads: at most
/// 128 × 12 counted versions × 2 arches cells of ~130 bytes of JSON.
const DETAIL_RELEASES: usize = 128;

/// The cells a `COVERAGE_DETAIL_*` query answered as one JSON array.
fn cells<T: serde::de::DeserializeOwned>(json: &str) -> Result<Vec<T>, sqlx::Error> {
    serde_json::from_str(json).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// Filters for listing; all optional, exact matches except `search`.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub kernel_release: Option<String>,
    pub arch: Option<String>,
    pub version: Option<String>,
    pub uname_version: Option<String>,
    pub config_digest: Option<String>,
    /// Substring of the kernel release.
    pub search: Option<String>,
    /// Rows with id greater than this (pagination cursor).
    pub after: i64,
    pub limit: i64,
}

/// The page's terms as one statement, sqlite choosing the plan: what
/// `list` ran before the list indexes (`list_statements`), which the
/// tests and `bench/fleet.py --compare-bin` compare with.
pub fn list_statement_as_before(f: &Filter) -> ListSql {
    let (first, _) = list_statements(f);
    let terms = first.sql.split_once(" WHERE ").map_or("", |(_, t)| t).replace("id > ? AND id <= ?", "id > ?");
    let mut params = first.params;
    if first.sql.contains("id <= ?") {
        params.remove(1);
    }
    ListSql { sql: format!("SELECT id, digest, size, metadata, published_at FROM objects WHERE {terms}"), params }
}

/// One statement of a list page (`list_statements`) with its parameters,
/// in order.
#[derive(Debug, Clone)]
pub struct ListSql {
    pub sql: String,
    pub params: Vec<ListParam>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListParam {
    Int(i64),
    Text(String),
}

impl ListSql {
    /// The statement with its parameters bound, for sqlx.
    fn query<'q, O>(&'q self) -> sqlx::query::QueryAs<'q, sqlx::Sqlite, O, sqlx::sqlite::SqliteArguments<'q>>
    where
        O: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>,
    {
        self.params.iter().fold(sqlx::query_as(&self.sql), |q, p| match p {
            ListParam::Int(i) => q.bind(*i),
            ListParam::Text(t) => q.bind(t.as_str()),
        })
    }
}

/// For running a list statement on a plain sqlite connection (the bench
/// counts the VM steps of each page).
impl rusqlite::ToSql for ListParam {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(match self {
            ListParam::Int(i) => (*i).into(),
            ListParam::Text(t) => t.as_str().into(),
        })
    }
}

/// The indexes a list page reads by (`sql/list_indexes.sql`, made at
/// open), each holding its filter's current rows in id order.
const LIST_INDEXES: &str = include_str!("../sql/list_indexes.sql");

/// The table's last id (the rowid b-tree's last entry): whether a search
/// has ids past its window (`ListRest`).
pub const LAST_ID: &str = "SELECT max(id) FROM objects";

/// A search's first try reads at most this many ids per row of its page
/// (`list_statements`).
const SEARCH_WINDOW: i64 = 8;

/// A search's second statement (`list_statements`): the rest of its page
/// past its first statement's window, ids above `window`; run when the
/// first did not fill the page and the table has ids past the window.
#[derive(Debug, Clone)]
pub struct ListRest {
    pub window: i64,
    pub sql: ListSql,
}

/// How `Repo::list` reads a page of `f`: a statement, and, for a search,
/// the one whose rows finish the page when the first did not fill it.
///
/// The index is named (`INDEXED BY`), the most selective filter's first,
/// so sqlite cannot trade it for a scan in id order that skips the sort
/// (which is what it chose before: a version's page sorted its 10,000
/// rows, a page of `arch=aarch64` read the table from `after`):
/// - a kernel release: the identity index (a release's few rows, sorted);
/// - else `uname -v`, else the config digest, else version and arch, else
///   version: their own indexes, read in id order from `after` (`column =
///   ? AND rowid > ?`), so the page ends where it is full (a search among
///   them reads the rows of that version at most);
/// - else a search (`q`, a substring of the release, which no b-tree
///   orders): first the ids from `after` to `after + SEARCH_WINDOW ×
///   limit` in id order (a search matching many rows fills its page
///   there); when that is not a full page and the table goes on, the
///   page's rest from the identity index's entries past the window
///   (release, arch, version, id: no table row), then those rows;
/// - else arch: its own index, from `after`;
/// - else the table in id order from `after`.
pub fn list_statements(f: &Filter) -> (ListSql, Option<ListRest>) {
    const COLUMNS: &str = "SELECT id, digest, size, metadata, published_at FROM objects";
    let mut params = vec![ListParam::Int(f.after)];
    let mut terms = String::from("current = 1 AND id > ?");
    let text = |v: &Option<String>| v.as_ref().map(|v| ListParam::Text(v.clone()));
    for (column, value) in [
        ("kernel_release", &f.kernel_release),
        ("arch", &f.arch),
        ("version", &f.version),
        ("uname_version", &f.uname_version),
        ("config_digest", &f.config_digest),
    ] {
        if let Some(v) = text(value) {
            terms.push_str(&format!(" AND {column} = ?"));
            params.push(v);
        }
    }
    if let Some(q) = text(&f.search) {
        terms.push_str(" AND instr(kernel_release, ?) > 0");
        params.push(q);
    }
    let index = if f.kernel_release.is_some() {
        Some("objects_current_identity")
    } else if f.uname_version.is_some() {
        Some("objects_by_uname_version")
    } else if f.config_digest.is_some() {
        Some("objects_by_config_digest")
    } else if f.version.is_some() {
        Some(if f.arch.is_some() { "objects_by_version_arch" } else { "objects_by_version" })
    } else if f.search.is_some() {
        let window = f.after.saturating_add(f.limit.saturating_mul(SEARCH_WINDOW));
        let mut first = params.clone();
        first.insert(1, ListParam::Int(window));
        first.push(ListParam::Int(f.limit));
        let first_terms = terms.replacen("id > ?", "id > ? AND id <= ?", 1);
        // Past the window.
        let mut rest = params;
        rest[0] = ListParam::Int(window);
        rest.push(ListParam::Int(f.limit));
        return (
            ListSql { sql: format!("{COLUMNS} NOT INDEXED WHERE {first_terms} ORDER BY id LIMIT ?"), params: first },
            Some(ListRest {
                window,
                sql: ListSql {
                    sql: format!(
                        "{COLUMNS} WHERE id IN (SELECT id FROM objects INDEXED BY objects_current_identity \
                         WHERE {terms} ORDER BY id LIMIT ?) ORDER BY id"
                    ),
                    params: rest,
                },
            }),
        );
    } else if f.arch.is_some() {
        Some("objects_by_arch")
    } else {
        None
    };
    let from = index.map(|i| format!(" INDEXED BY {i}")).unwrap_or_default();
    params.push(ListParam::Int(f.limit));
    (ListSql { sql: format!("{COLUMNS}{from} WHERE {terms} ORDER BY id LIMIT ?"), params }, None)
}

/// What a token may do; stored as `push` or `read` (the schema allows no
/// other value, and one that appears anyway fails the read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(rename_all = "lowercase")]
pub enum Scope {
    Push,
    Read,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Push => "push",
            Scope::Read => "read",
        }
    }
}

impl Repo {
    pub async fn open(data: &Path) -> Result<Self, sqlx::Error> {
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", data.join("index.sqlite").display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let db = data.join("index.sqlite");
        let writer = SqlitePoolOptions::new().max_connections(1).connect_with(opts.clone()).await?;
        // The file the first connection opened (it may have created it),
        // so a replacement before the memo is made is not missed.
        let first = crate::memo::file_identity(&db);
        sqlx::migrate!("./migrations").run(&writer).await?;
        sqlx::raw_sql(LIST_INDEXES).execute(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(opts.read_only(true).pragma("cache_size", READER_CACHE))
            .await?;
        let memo = Memo::new(&db);
        if let Ok(first) = first {
            memo.opened_first(first);
        }
        Ok(Self { writer, reader, memo: Arc::new(memo) })
    }

    pub async fn current(&self, release: &str, arch: &str, version: &str) -> Result<Option<ObjectRow>, sqlx::Error> {
        sqlx::query_as("SELECT id, digest, size, metadata, published_at FROM objects WHERE current = 1 AND kernel_release = ? AND arch = ? AND version = ?")
            .bind(release)
            .bind(arch)
            .bind(version)
            .fetch_optional(&self.reader)
            .await
    }

    /// The current object of an identity and what was signed for it, from
    /// the memo while the index is unchanged (the `/v1` lookup's answer:
    /// two queries, each a hop to a connection's thread, otherwise).
    pub async fn current_signed(&self, release: &str, arch: &str, version: &str) -> Result<Signed, sqlx::Error> {
        let stamp = self.memo.stamp();
        let key = (release.to_owned(), arch.to_owned(), version.to_owned());
        if let Some(answer) = self.memo.lookup(stamp, &key) {
            return Ok(answer);
        }
        let answer = match self.current(release, arch, version).await? {
            Some(row) => {
                let signed = self.signatures(row.id).await?;
                Some((row, signed))
            }
            None => None,
        };
        self.memo.put_lookup(stamp, key, answer.clone());
        Ok(answer)
    }

    /// The current objects a static-layout path names (file names are lossy,
    /// so there may be more than one). `path` is (version, arch as
    /// `uname -m`, file name), owned so that a memoised answer costs no copy.
    pub async fn by_file_name(&self, path: &(String, String, String)) -> Result<Arc<[ObjectRow]>, sqlx::Error> {
        let stamp = self.memo.stamp();
        if let Some(rows) = self.memo.file(stamp, path) {
            return Ok(rows);
        }
        let (version, arch, file_name) = path;
        let rows: Vec<ObjectRow> = sqlx::query_as("SELECT id, digest, size, metadata, published_at FROM objects WHERE current = 1 AND version = ? AND arch = ? AND file_name = ? LIMIT 2")
            .bind(version.as_str())
            .bind(arch.as_str())
            .bind(file_name.as_str())
            .fetch_all(&self.reader)
            .await?;
        let rows: Arc<[ObjectRow]> = rows.into();
        self.memo.put_file(stamp, path.clone(), rows.clone());
        Ok(rows)
    }

    /// A page of current objects in id order after `f.after` (keyset
    /// pagination: each page starts where the last ended, whatever the
    /// page's number), each filter's page read through an index that holds
    /// its rows in id order (`list_statements`), so a page reads about as
    /// many rows as it returns. A search's up to three statements read one
    /// snapshot (one read transaction on one connection): a republish
    /// between them cannot show an identity twice on a page.
    pub async fn list(&self, f: &Filter) -> Result<Vec<ObjectRow>, sqlx::Error> {
        let (first, rest) = list_statements(f);
        let mut snapshot = self.reader.begin().await?;
        let mut rows = first.query().fetch_all(&mut *snapshot).await?;
        if let Some(rest) = rest.filter(|_| (rows.len() as i64) < f.limit) {
            let last: Option<i64> = sqlx::query_scalar(LAST_ID).fetch_one(&mut *snapshot).await?;
            if last.is_some_and(|last| last > rest.window) {
                rows.extend(rest.sql.query().fetch_all(&mut *snapshot).await?);
                rows.truncate(usize::try_from(f.limit).unwrap_or(0));
            }
        }
        snapshot.commit().await?;
        Ok(rows)
    }

    /// Records (or updates) a failed build, unless the identity has an object.
    pub async fn record_failure(
        &self,
        id: &bpfarm_object::Identity,
        message: &str,
        now: &str,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "INSERT INTO failures (kernel_release, arch, version, message, reported_at)
             SELECT ?, ?, ?, ?, ? WHERE NOT EXISTS
               (SELECT 1 FROM objects WHERE current = 1 AND kernel_release = ? AND arch = ? AND version = ?)
             ON CONFLICT (kernel_release, arch, version) DO UPDATE SET message = excluded.message, reported_at = excluded.reported_at",
        )
        .bind(&id.kernel_release)
        .bind(id.arch.uname())
        .bind(&id.version)
        .bind(message)
        .bind(now)
        .bind(&id.kernel_release)
        .bind(id.arch.uname())
        .bind(&id.version)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Every version with a current object or a failure, each once (a
    /// coverage count picks the ones it counts from these), as they come.
    pub async fn coverage_versions(&self, mut each: impl FnMut(String)) -> Result<(), sqlx::Error> {
        let mut rows = sqlx::query_scalar::<_, String>(COVERAGE_VERSIONS).fetch(&self.reader);
        while let Some(v) = rows.try_next().await? {
            each(v);
        }
        Ok(())
    }

    /// One row per (release, arch) pair with current objects (or
    /// failures), naming which of the `counted` versions it has, as they
    /// come: what a coverage count reads, grouped by sqlite, instead of a
    /// row per object.
    pub async fn coverage_pairs(
        &self,
        rows: CellRows,
        counted: &[String],
        mut each: impl FnMut(CoveragePair),
    ) -> Result<(), sqlx::Error> {
        let sql = match rows {
            CellRows::Objects => COVERAGE_OBJECT_PAIRS,
            CellRows::Failures => COVERAGE_FAILURE_PAIRS,
        };
        let counted = serde_json::Value::from(counted.to_vec()).to_string();
        let mut pairs = sqlx::query_as::<_, CoveragePair>(sql).bind(counted).fetch(&self.reader);
        while let Some(p) = pairs.try_next().await? {
            each(p);
        }
        Ok(())
    }

    /// The cells of the coverage page's detail rows, `releases` ×
    /// `versions` only: current objects (digest and size: the download
    /// link) and failures, of each failure's message only its first line,
    /// at most `title` characters (messages are up to 16 KiB each; the
    /// page shows a title). Found by release (the identity index and the
    /// failures' key; `+version` keeps sqlite from scanning every row of
    /// each counted version instead). Each query answers one row, a JSON
    /// array of the cells (`COVERAGE_DETAIL_*`): a page's ~10,000 cells
    /// handed over one at a time from sqlx's connection thread cost more
    /// CPU than reading them. `DETAIL_RELEASES` releases a query, so no
    /// answer is larger than ~400 KB (one array of a whole page, ~1.3 MB,
    /// raised the registry's peak RSS in `bench/fleet.py` from 51 to 73
    /// MiB).
    pub async fn coverage_detail(
        &self,
        releases: &[&str],
        versions: &[String],
        title: usize,
    ) -> Result<(Vec<CoverageObject>, Vec<CoverageFailure>), sqlx::Error> {
        let versions = serde_json::Value::from(versions.to_vec()).to_string();
        let (mut objects, mut failures) = (Vec::new(), Vec::new());
        for releases in releases.chunks(DETAIL_RELEASES) {
            let releases = serde_json::Value::from(releases.to_vec()).to_string();
            let json: String = sqlx::query_scalar(COVERAGE_DETAIL_OBJECTS)
                .bind(releases.as_str())
                .bind(versions.as_str())
                .fetch_one(&self.reader)
                .await?;
            objects.extend(cells::<CoverageObject>(&json)?);
            let json: String = sqlx::query_scalar(COVERAGE_DETAIL_FAILURES)
                .bind(releases.as_str())
                .bind(versions.as_str())
                .bind(i64::try_from(title).unwrap_or(i64::MAX))
                .fetch_one(&self.reader)
                .await?;
            failures.extend(cells::<CoverageFailure>(&json)?);
        }
        Ok((objects, failures))
    }

    /// How many objects an identity has had, current and replaced.
    pub async fn history_len(&self, release: &str, arch: &str, version: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COUNT(*) FROM objects WHERE kernel_release = ? AND arch = ? AND version = ?")
            .bind(release)
            .bind(arch)
            .bind(version)
            .fetch_one(&self.reader)
            .await
    }

    pub async fn count_current(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COUNT(*) FROM objects WHERE current = 1").fetch_one(&self.reader).await
    }

    pub async fn add_token(&self, name: &str, scope: Scope, hash: &str, now: &str) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO tokens (name, scope, hash, created_at) VALUES (?, ?, ?, ?)")
            .bind(name)
            .bind(scope.as_str())
            .bind(hash)
            .bind(now)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Every stored token hash with its scope, from the memo while the
    /// index is unchanged: the access check of a request presenting a
    /// token makes no sqlite hop, and a token revoked by any process (any
    /// commit to the index) is read again by the next request.
    pub async fn token_hashes(&self) -> Result<TokenHashes, sqlx::Error> {
        let stamp = self.memo.stamp();
        if let Some(tokens) = self.memo.tokens(stamp) {
            return Ok(tokens);
        }
        let rows: Vec<(String, Scope)> =
            sqlx::query_as("SELECT hash, scope FROM tokens").fetch_all(&self.reader).await?;
        let tokens: TokenHashes = rows.into();
        self.memo.put_tokens(stamp, tokens.clone());
        Ok(tokens)
    }

    /// A coverage count (`coverage::count`) from the memo while the index
    /// is unchanged, else `read`'s, kept weighing what it holds (the
    /// stamp taken before reading: a write racing the reading makes it
    /// unusable). Nothing is kept when `read` fails or is dropped.
    /// `weigh` says what a count holds on the heap.
    pub async fn coverage_memoised<T, R>(
        &self,
        key: CoverageKey,
        weigh: impl FnOnce(&T) -> usize,
        read: impl FnOnce() -> R,
    ) -> Result<T, sqlx::Error>
    where
        T: Clone + Send + Sync + 'static,
        R: std::future::Future<Output = Result<T, sqlx::Error>>,
    {
        let stamp = self.memo.stamp();
        // An answer kept as another type (none is) is read again.
        if let Some(count) = self.memo.coverage(stamp, &key).and_then(|a| a.downcast_ref::<T>().cloned()) {
            return Ok(count);
        }
        let count = read().await?;
        let bytes = weigh(&count);
        self.memo.put_coverage(stamp, key, Arc::new(count.clone()), bytes);
        Ok(count)
    }

    /// Whether the index file was replaced under this registry (its
    /// connections all read the old one): checked now.
    pub fn index_replaced(&self) -> bool {
        self.memo.replaced()
    }

    /// Removes the token named `name`; whether there was one.
    pub async fn remove_token(&self, name: &str) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("DELETE FROM tokens WHERE name = ?").bind(name).execute(&self.writer).await?;
        Ok(done.rows_affected() > 0)
    }

    /// Starts the one kind of transaction that changes what is current.
    pub async fn begin_write(&self) -> Result<WriteTx, sqlx::Error> {
        Ok(WriteTx { tx: self.writer.begin_with("BEGIN IMMEDIATE").await?, memo: self.memo.clone() })
    }

    /// Every object row, current and history.
    pub async fn all_objects(&self) -> Result<Vec<ObjectCheckRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, kernel_release, arch, version, digest, size, metadata, current, oci_tag FROM objects ORDER BY id",
        )
        .fetch_all(&self.reader)
        .await
    }

    /// Every current object row.
    pub async fn current_objects(&self) -> Result<Vec<ObjectCheckRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, kernel_release, arch, version, digest, size, metadata, current, oci_tag FROM objects WHERE current = 1 ORDER BY id",
        )
        .fetch_all(&self.reader)
        .await
    }

    /// Every current object with what the faces check needs to prove its
    /// OCI form from sqlite: the digest its recorded tag names in
    /// `oci_repo` (if any) and whether that manifest has a row there. As
    /// they come, in tag order (the tag index's own order: no sort), so the
    /// rows of one index come together.
    pub fn face_rows(&self, oci_repo: &str) -> BoxStream<'_, Result<FaceRow, sqlx::Error>> {
        sqlx::query_as(
            "SELECT o.id, o.arch, o.digest, o.size, t.digest AS index_digest,
                    EXISTS (SELECT 1 FROM oci_manifests m WHERE m.repo = ?1 AND m.digest = t.digest) AS index_row
               FROM objects o LEFT JOIN oci_tags t ON t.repo = ?1 AND t.tag = o.oci_tag
              WHERE o.current = 1
              ORDER BY o.oci_tag",
        )
        .bind(oci_repo.to_owned())
        .fetch(&self.reader)
    }

    /// The digest of every manifest row of `repo`, as they come (in
    /// digest order: the primary key's).
    pub async fn manifest_digests(&self, repo: &str, mut each: impl FnMut(String)) -> Result<(), sqlx::Error> {
        let mut rows =
            sqlx::query_scalar::<_, String>("SELECT digest FROM oci_manifests WHERE repo = ? ORDER BY digest")
                .bind(repo)
                .fetch(&self.reader);
        while let Some(d) = rows.try_next().await? {
            each(d);
        }
        Ok(())
    }

    /// One object row, current or not, by id.
    pub async fn object_check_row(&self, id: i64) -> Result<Option<ObjectCheckRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, kernel_release, arch, version, digest, size, metadata, current, oci_tag FROM objects WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.reader)
        .await
    }

    /// Every manifest row: (repository, digest, size).
    pub async fn all_manifests(&self) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
        sqlx::query_as("SELECT repo, digest, size FROM oci_manifests ORDER BY repo, digest")
            .fetch_all(&self.reader)
            .await
    }

    /// Every blob link: (repository, digest).
    pub async fn all_links(&self) -> Result<Vec<(String, String)>, sqlx::Error> {
        sqlx::query_as("SELECT repo, digest FROM oci_blob_links ORDER BY repo, digest").fetch_all(&self.reader).await
    }

    /// Closes both pools (on shutdown: the WAL is checkpointed).
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

/// A manifest row to store: its bytes are already a blob.
#[derive(Debug, Clone)]
pub struct NewManifest<'a> {
    pub repo: &'a str,
    pub digest: &'a str,
    pub media_type: &'a str,
    pub size: i64,
    pub artifact_type: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub annotations: Option<&'a str>,
    /// Point this tag at it too.
    pub tag: Option<&'a str>,
    pub now: &'a str,
}

/// One write transaction (see the module docs). Dropped without `commit`,
/// it rolls back.
#[derive(Debug)]
pub struct WriteTx {
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    memo: Arc<IndexMemo>,
}

impl WriteTx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        // Before and after: a read between the two sees a new generation.
        self.memo.bump();
        let r = self.tx.commit().await;
        self.memo.bump();
        r
    }

    /// The current object of an identity.
    pub async fn current(&mut self, id: &Identity) -> Result<Option<ObjectRow>, sqlx::Error> {
        sqlx::query_as("SELECT id, digest, size, metadata, published_at FROM objects WHERE current = 1 AND kernel_release = ? AND arch = ? AND version = ?")
            .bind(&id.kernel_release)
            .bind(id.arch.uname())
            .bind(&id.version)
            .fetch_optional(&mut *self.tx)
            .await
    }

    /// Moves a current object into history.
    pub async fn retire(&mut self, row_id: i64) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE objects SET current = 0 WHERE id = ?").bind(row_id).execute(&mut *self.tx).await?;
        Ok(())
    }

    /// Inserts `meta` as the current object of its identity (the previous
    /// one must have been retired) and clears the identity's failure.
    pub async fn insert_object(&mut self, meta: &ObjectMetadata, now: &str) -> Result<(), sqlx::Error> {
        let id = &meta.identity;
        let json = serde_json::to_string(meta).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        sqlx::query(
            "INSERT INTO objects (kernel_release, arch, version, file_name, digest, size, uname_version, config_digest, metadata, published_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&id.kernel_release)
        .bind(id.arch.uname())
        .bind(&id.version)
        .bind(&meta.file_name)
        .bind(meta.digest.as_str())
        .bind(i64::try_from(meta.size).map_err(|e| sqlx::Error::Encode(Box::new(e)))?)
        .bind(&meta.kernel.uname_version)
        .bind(meta.kernel.config_digest.as_ref().map(|d| d.as_str()))
        .bind(json)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        sqlx::query("DELETE FROM failures WHERE kernel_release = ? AND arch = ? AND version = ?")
            .bind(&id.kernel_release)
            .bind(id.arch.uname())
            .bind(&id.version)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Records the tag of the current object's OCI form.
    pub async fn set_oci_tag(&mut self, id: &Identity, tag: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE objects SET oci_tag = ? WHERE current = 1 AND kernel_release = ? AND arch = ? AND version = ?",
        )
        .bind(tag)
        .bind(&id.kernel_release)
        .bind(id.arch.uname())
        .bind(&id.version)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Current objects whose OCI form lives under `tag`: (arch, digest, size).
    pub async fn objects_with_tag(&mut self, tag: &str) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
        sqlx::query_as("SELECT arch, digest, size FROM objects WHERE current = 1 AND oci_tag = ? ORDER BY arch")
            .bind(tag)
            .fetch_all(&mut *self.tx)
            .await
    }

    /// Whether `digest` is the blob of a current object.
    pub async fn is_current_object(&mut self, digest: &str) -> Result<bool, sqlx::Error> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM objects WHERE current = 1 AND digest = ?")
            .bind(digest)
            .fetch_one(&mut *self.tx)
            .await?;
        Ok(n > 0)
    }

    pub async fn count_current(&mut self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COUNT(*) FROM objects WHERE current = 1").fetch_one(&mut *self.tx).await
    }

    pub async fn link(&mut self, repo: &str, digest: &str) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT OR IGNORE INTO oci_blob_links (repo, digest) VALUES (?, ?)")
            .bind(repo)
            .bind(digest)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// A manifest by digest, or by tag when `reference` is not a digest.
    pub async fn manifest(&mut self, repo: &str, reference: &str) -> Result<Option<OciManifest>, sqlx::Error> {
        let digest: Option<String> = if reference.starts_with("sha256:") {
            Some(reference.to_owned())
        } else {
            sqlx::query_scalar("SELECT digest FROM oci_tags WHERE repo = ? AND tag = ?")
                .bind(repo)
                .bind(reference)
                .fetch_optional(&mut *self.tx)
                .await?
        };
        let Some(digest) = digest else { return Ok(None) };
        sqlx::query_as("SELECT digest, media_type, size, artifact_type, annotations FROM oci_manifests WHERE repo = ? AND digest = ?")
            .bind(repo)
            .bind(digest)
            .fetch_optional(&mut *self.tx)
            .await
    }

    pub async fn linked(&mut self, repo: &str, digest: &str) -> Result<bool, sqlx::Error> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM oci_blob_links WHERE repo = ? AND digest = ?")
            .bind(repo)
            .bind(digest)
            .fetch_one(&mut *self.tx)
            .await?;
        Ok(n > 0)
    }

    /// The tags pointing at a manifest.
    pub async fn tags_of(&mut self, repo: &str, digest: &str) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT tag FROM oci_tags WHERE repo = ? AND digest = ?")
            .bind(repo)
            .bind(digest)
            .fetch_all(&mut *self.tx)
            .await
    }

    pub async fn unlink(&mut self, repo: &str, digest: &str) -> Result<bool, sqlx::Error> {
        Ok(sqlx::query("DELETE FROM oci_blob_links WHERE repo = ? AND digest = ?")
            .bind(repo)
            .bind(digest)
            .execute(&mut *self.tx)
            .await?
            .rows_affected()
            > 0)
    }

    /// Deletes a manifest (and the tags pointing at it), or just a tag.
    pub async fn delete_manifest(&mut self, repo: &str, reference: &str) -> Result<bool, sqlx::Error> {
        if reference.starts_with("sha256:") {
            sqlx::query("DELETE FROM oci_tags WHERE repo = ? AND digest = ?")
                .bind(repo)
                .bind(reference)
                .execute(&mut *self.tx)
                .await?;
            Ok(sqlx::query("DELETE FROM oci_manifests WHERE repo = ? AND digest = ?")
                .bind(repo)
                .bind(reference)
                .execute(&mut *self.tx)
                .await?
                .rows_affected()
                > 0)
        } else {
            Ok(sqlx::query("DELETE FROM oci_tags WHERE repo = ? AND tag = ?")
                .bind(repo)
                .bind(reference)
                .execute(&mut *self.tx)
                .await?
                .rows_affected()
                > 0)
        }
    }

    /// Stores a manifest row, links its bytes into the repository and, if
    /// asked, points a tag at it.
    pub async fn put_manifest(&mut self, m: &NewManifest<'_>) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO oci_manifests (repo, digest, media_type, size, artifact_type, subject, annotations, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (repo, digest) DO UPDATE SET media_type = excluded.media_type",
        )
        .bind(m.repo)
        .bind(m.digest)
        .bind(m.media_type)
        .bind(m.size)
        .bind(m.artifact_type)
        .bind(m.subject)
        .bind(m.annotations)
        .bind(m.now)
        .execute(&mut *self.tx)
        .await?;
        self.link(m.repo, m.digest).await?;
        if let Some(tag) = m.tag {
            sqlx::query("INSERT INTO oci_tags (repo, tag, digest) VALUES (?, ?, ?) ON CONFLICT (repo, tag) DO UPDATE SET digest = excluded.digest")
                .bind(m.repo)
                .bind(tag)
                .bind(m.digest)
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }
}

/// One stored OCI manifest.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OciManifest {
    pub digest: String,
    pub media_type: String,
    pub size: i64,
    pub artifact_type: Option<String>,
    pub annotations: Option<String>,
}

/// The OCI face: links, manifests, tags, upload sessions.
impl Repo {
    pub async fn oci_link(&self, repo: &str, digest: &str) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT OR IGNORE INTO oci_blob_links (repo, digest) VALUES (?, ?)")
            .bind(repo)
            .bind(digest)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    pub async fn oci_linked(&self, repo: &str, digest: &str) -> Result<bool, sqlx::Error> {
        let stamp = self.memo.stamp();
        let key = (repo.to_owned(), digest.to_owned());
        if let Some(linked) = self.memo.link(stamp, &key) {
            return Ok(linked);
        }
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM oci_blob_links WHERE repo = ? AND digest = ?")
            .bind(repo)
            .bind(digest)
            .fetch_one(&self.reader)
            .await?;
        self.memo.put_link(stamp, key, n > 0);
        Ok(n > 0)
    }

    /// A manifest by digest, or by tag when `reference` is not a digest.
    pub async fn oci_manifest(&self, repo: &str, reference: &str) -> Result<Option<OciManifest>, sqlx::Error> {
        let digest: Option<String> = if reference.starts_with("sha256:") {
            Some(reference.to_owned())
        } else {
            sqlx::query_scalar("SELECT digest FROM oci_tags WHERE repo = ? AND tag = ?")
                .bind(repo)
                .bind(reference)
                .fetch_optional(&self.reader)
                .await?
        };
        let Some(digest) = digest else { return Ok(None) };
        sqlx::query_as("SELECT digest, media_type, size, artifact_type, annotations FROM oci_manifests WHERE repo = ? AND digest = ?")
            .bind(repo)
            .bind(digest)
            .fetch_optional(&self.reader)
            .await
    }

    pub async fn oci_tags(&self, repo: &str, last: &str, n: i64) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT tag FROM oci_tags WHERE repo = ? AND tag > ? ORDER BY tag LIMIT ?")
            .bind(repo)
            .bind(last)
            .bind(n)
            .fetch_all(&self.reader)
            .await
    }

    pub async fn oci_repo_exists(&self, repo: &str) -> Result<bool, sqlx::Error> {
        let n: i64 = sqlx::query_scalar("SELECT (SELECT COUNT(*) FROM oci_manifests WHERE repo = ?) + (SELECT COUNT(*) FROM oci_blob_links WHERE repo = ?)")
            .bind(repo)
            .bind(repo)
            .fetch_one(&self.reader)
            .await?;
        Ok(n > 0)
    }

    pub async fn oci_catalog(&self, last: &str, n: i64) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT DISTINCT repo FROM oci_manifests WHERE repo > ? ORDER BY repo LIMIT ?")
            .bind(last)
            .bind(n)
            .fetch_all(&self.reader)
            .await
    }

    /// Manifests whose subject is `digest`, optionally of one artifact type.
    pub async fn oci_referrers(
        &self,
        repo: &str,
        digest: &str,
        artifact_type: Option<&str>,
    ) -> Result<Vec<OciManifest>, sqlx::Error> {
        sqlx::query_as(
            "SELECT digest, media_type, size, artifact_type, annotations FROM oci_manifests
             WHERE repo = ? AND subject = ? AND (? IS NULL OR artifact_type = ?) ORDER BY digest",
        )
        .bind(repo)
        .bind(digest)
        .bind(artifact_type)
        .bind(artifact_type)
        .fetch_all(&self.reader)
        .await
    }

    pub async fn oci_upload_start(&self, id: &str, repo: &str, now: i64) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO oci_uploads (id, repo, started_at) VALUES (?, ?, ?)")
            .bind(id)
            .bind(repo)
            .bind(now)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// The repository of an open upload session.
    pub async fn oci_upload(&self, id: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT repo FROM oci_uploads WHERE id = ?").bind(id).fetch_optional(&self.reader).await
    }

    pub async fn oci_upload_end(&self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM oci_uploads WHERE id = ?").bind(id).execute(&self.writer).await?;
        Ok(())
    }

    /// Removes sessions started before `before` and returns their ids.
    pub async fn oci_expire_uploads(&self, before: i64) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("DELETE FROM oci_uploads WHERE started_at < ? RETURNING id")
            .bind(before)
            .fetch_all(&self.writer)
            .await
    }
}

/// What a publisher signed for one object row (migration 0005): the
/// `.sig` blob, the `.intoto.jsonl` blob, and the manifest signature (its
/// payload a blob, the signature text here).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SignatureRow {
    pub object_id: i64,
    pub signature_digest: String,
    pub signature_size: i64,
    pub attestation_digest: Option<String>,
    pub attestation_size: Option<i64>,
    pub payload_digest: Option<String>,
    pub manifest_signature: Option<String>,
}

impl SignatureRow {
    /// Every blob the row names.
    pub fn blobs(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.signature_digest.as_str())
            .chain(self.attestation_digest.as_deref())
            .chain(self.payload_digest.as_deref())
    }
}

macro_rules! signature_columns {
    () => {
        "object_id, signature_digest, signature_size, attestation_digest, attestation_size, payload_digest, manifest_signature"
    };
}
const SET_SIGNATURES: &str =
    concat!("INSERT OR REPLACE INTO object_signatures (", signature_columns!(), ") VALUES (?, ?, ?, ?, ?, ?, ?)");
const SIGNATURES_OF: &str = concat!("SELECT ", signature_columns!(), " FROM object_signatures WHERE object_id = ?");
const SIGNATURES_OF_MANY: &str = concat!(
    "SELECT ",
    signature_columns!(),
    " FROM object_signatures WHERE object_id IN (SELECT value FROM json_each(?))"
);
const ALL_SIGNATURES: &str = concat!("SELECT ", signature_columns!(), " FROM object_signatures ORDER BY object_id");

impl WriteTx {
    /// Sets what was signed for object row `row.object_id`, replacing what
    /// it had.
    pub async fn set_signatures(&mut self, row: &SignatureRow) -> Result<(), sqlx::Error> {
        sqlx::query(SET_SIGNATURES)
            .bind(row.object_id)
            .bind(&row.signature_digest)
            .bind(row.signature_size)
            .bind(&row.attestation_digest)
            .bind(row.attestation_size)
            .bind(&row.payload_digest)
            .bind(&row.manifest_signature)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// What was signed for object row `object_id`.
    pub async fn signatures(&mut self, object_id: i64) -> Result<Option<SignatureRow>, sqlx::Error> {
        sqlx::query_as(SIGNATURES_OF).bind(object_id).fetch_optional(&mut *self.tx).await
    }
}

impl Repo {
    /// What was signed for object row `object_id`.
    pub async fn signatures(&self, object_id: i64) -> Result<Option<SignatureRow>, sqlx::Error> {
        sqlx::query_as(SIGNATURES_OF).bind(object_id).fetch_optional(&self.reader).await
    }

    /// What was signed for each of the object rows `ids` (a page of a
    /// list: one query, not one per row), by object row id.
    pub async fn signatures_of(&self, ids: &[i64]) -> Result<HashMap<i64, SignatureRow>, sqlx::Error> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let ids = serde_json::Value::from(ids).to_string();
        let rows: Vec<SignatureRow> = sqlx::query_as(SIGNATURES_OF_MANY).bind(ids).fetch_all(&self.reader).await?;
        Ok(rows.into_iter().map(|r| (r.object_id, r)).collect())
    }

    /// Every signature row, for `fsck`.
    pub async fn all_signatures(&self) -> Result<Vec<SignatureRow>, sqlx::Error> {
        sqlx::query_as(ALL_SIGNATURES).fetch_all(&self.reader).await
    }
}

/// Whole-registry reads for `bundle`, `import`, `mirror` and `gc`.
impl Repo {
    /// Every tag of every repository: (repository, tag, manifest digest),
    /// sorted.
    pub async fn oci_all_tags(&self) -> Result<Vec<(String, String, String)>, sqlx::Error> {
        sqlx::query_as("SELECT repo, tag, digest FROM oci_tags ORDER BY repo, tag").fetch_all(&self.reader).await
    }

    /// Whether `tag` of `repo` names `digest` now.
    pub async fn oci_tag_is(&self, repo: &str, tag: &str, digest: &str) -> Result<bool, sqlx::Error> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM oci_tags WHERE repo = ? AND tag = ? AND digest = ?")
            .bind(repo)
            .bind(tag)
            .bind(digest)
            .fetch_one(&self.reader)
            .await?;
        Ok(n > 0)
    }
}

/// Retention (`gc`), inside the one write transaction.
impl WriteTx {
    /// Every program version with objects, newest first: ordered by its
    /// newest publish.
    pub async fn versions_newest_first(&mut self) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT version FROM objects GROUP BY version ORDER BY MAX(published_at) DESC, version DESC")
            .fetch_all(&mut *self.tx)
            .await
    }

    /// The object rows (current and history) of `version`: (id, digest, size, oci_tag).
    pub async fn objects_of_version(
        &mut self,
        version: &str,
    ) -> Result<Vec<(i64, String, i64, Option<String>)>, sqlx::Error> {
        sqlx::query_as("SELECT id, digest, size, oci_tag FROM objects WHERE version = ? ORDER BY id")
            .bind(version)
            .fetch_all(&mut *self.tx)
            .await
    }

    /// Deletes every object row and failure of `version`.
    pub async fn delete_version(&mut self, version: &str) -> Result<u64, sqlx::Error> {
        sqlx::query("DELETE FROM failures WHERE version = ?").bind(version).execute(&mut *self.tx).await?;
        // What was signed for those rows goes with them (its blobs become
        // unnamed, for the blob sweep).
        sqlx::query("DELETE FROM object_signatures WHERE object_id IN (SELECT id FROM objects WHERE version = ?)")
            .bind(version)
            .execute(&mut *self.tx)
            .await?;
        Ok(sqlx::query("DELETE FROM objects WHERE version = ?")
            .bind(version)
            .execute(&mut *self.tx)
            .await?
            .rows_affected())
    }

    /// Every manifest of `repo`: (digest, annotations).
    pub async fn manifests_of(&mut self, repo: &str) -> Result<Vec<(String, Option<String>)>, sqlx::Error> {
        sqlx::query_as("SELECT digest, annotations FROM oci_manifests WHERE repo = ? ORDER BY digest")
            .bind(repo)
            .fetch_all(&mut *self.tx)
            .await
    }

    /// Every tag: (repository, tag, digest).
    pub async fn all_tags(&mut self) -> Result<Vec<(String, String, String)>, sqlx::Error> {
        sqlx::query_as("SELECT repo, tag, digest FROM oci_tags ORDER BY repo, tag").fetch_all(&mut *self.tx).await
    }

    /// Every manifest row: (repository, digest, subject).
    pub async fn all_manifest_rows(&mut self) -> Result<Vec<(String, String, Option<String>)>, sqlx::Error> {
        sqlx::query_as("SELECT repo, digest, subject FROM oci_manifests ORDER BY repo, digest")
            .fetch_all(&mut *self.tx)
            .await
    }

    /// Every blob link: (repository, digest).
    pub async fn all_links(&mut self) -> Result<Vec<(String, String)>, sqlx::Error> {
        sqlx::query_as("SELECT repo, digest FROM oci_blob_links ORDER BY repo, digest").fetch_all(&mut *self.tx).await
    }

    /// Every `sha256:<hex>` any text cell of any table names (the schema
    /// grows: a column added later that names a blob keeps it alive without
    /// `gc` knowing of it). Upload sessions and tokens name no blob, and a
    /// blob link alone keeps nothing alive (pushed bytes no manifest came
    /// for are garbage once older than `gc`'s grace).
    pub async fn every_named_digest(&mut self) -> Result<std::collections::BTreeSet<String>, sqlx::Error> {
        use sqlx::{Row, TypeInfo, ValueRef};
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%'
               AND name NOT IN ('oci_blob_links', 'oci_uploads', 'tokens') ORDER BY name",
        )
        .fetch_all(&mut *self.tx)
        .await?;
        let mut out = std::collections::BTreeSet::new();
        for t in tables {
            let rows =
                sqlx::query(&format!("SELECT * FROM \"{}\"", t.replace('"', "\"\""))).fetch_all(&mut *self.tx).await?;
            for row in rows {
                for i in 0..row.len() {
                    let raw = row.try_get_raw(i)?;
                    if raw.is_null() || raw.type_info().name() != "TEXT" {
                        continue;
                    }
                    let Ok(text) = row.try_get::<String, _>(i) else { continue };
                    digests_in(&text, &mut out);
                }
            }
        }
        Ok(out)
    }

    /// Deletes a tag, and a manifest row of `repo` (with the tags naming it).
    pub async fn remove_manifest(&mut self, repo: &str, digest: &str) -> Result<(), sqlx::Error> {
        self.delete_manifest(repo, digest).await?;
        self.unlink(repo, digest).await?;
        Ok(())
    }
}

/// Every `sha256:` + 64 lowercase hex inside `text`.
pub fn digests_in(text: &str, out: &mut std::collections::BTreeSet<String>) {
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(i) = text[from..].find("sha256:") {
        let start = from + i;
        let hex = start + 7;
        let end = hex + 64;
        if end <= b.len() && b[hex..end].iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c)) {
            out.insert(text[start..end].to_owned());
        }
        from = hex;
    }
}

impl WriteTx {
    /// Drops every repository's link to blob `digest` (`gc`, removing it).
    pub async fn unlink_everywhere(&mut self, digest: &str) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query("DELETE FROM oci_blob_links WHERE digest = ?")
            .bind(digest)
            .execute(&mut *self.tx)
            .await?
            .rows_affected())
    }
}

/// Published kernel matrices: the (release, arch) pairs coverage counts
/// against.
impl Repo {
    /// Stores (or replaces) matrix `name`'s pairs, in one transaction,
    /// unless `name` is new and `max` matrices are stored already: then
    /// nothing is written and `Some(how many)` says why.
    pub async fn put_matrix(
        &self,
        name: &str,
        pairs: &[(String, String)],
        now: &str,
        max: u64,
    ) -> Result<Option<u64>, sqlx::Error> {
        let mut tx = self.writer.begin().await?;
        let held: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM matrices WHERE name != ?").bind(name).fetch_one(&mut *tx).await?;
        let held = u64::try_from(held).unwrap_or(0);
        if held >= max {
            return Ok(Some(held));
        }
        sqlx::query("DELETE FROM matrices WHERE name = ?").bind(name).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO matrices (name, uploaded_at) VALUES (?, ?)")
            .bind(name)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        for (release, arch) in pairs {
            sqlx::query("INSERT OR IGNORE INTO matrix_kernels (matrix, kernel_release, arch) VALUES (?, ?, ?)")
                .bind(name)
                .bind(release)
                .bind(arch)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(None)
    }

    /// Matrix `name`'s (release, arch) pairs; `None` when no such matrix.
    pub async fn matrix(&self, name: &str) -> Result<Option<Vec<(String, String)>>, sqlx::Error> {
        let known: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM matrices WHERE name = ?").bind(name).fetch_optional(&self.reader).await?;
        if known.is_none() {
            return Ok(None);
        }
        let pairs = sqlx::query_as(
            "SELECT kernel_release, arch FROM matrix_kernels WHERE matrix = ? ORDER BY kernel_release, arch",
        )
        .bind(name)
        .fetch_all(&self.reader)
        .await?;
        Ok(Some(pairs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How sqlite runs `sql`: its `EXPLAIN QUERY PLAN` steps.
    async fn plan(repo: &Repo, sql: &str) -> Vec<String> {
        let q = format!("EXPLAIN QUERY PLAN {sql}");
        let mut q = sqlx::query_as::<_, (i64, i64, i64, String)>(&q);
        if sql.contains("?1") {
            q = q.bind("[]");
        }
        q.fetch_all(&repo.reader).await.unwrap().into_iter().map(|(_, _, _, step)| step).collect()
    }

    /// Every reader connection keeps the small page cache, however many
    /// the pool opens.
    #[tokio::test]
    async fn readers_keep_a_small_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open(dir.path()).await.unwrap();
        let mut held = Vec::new();
        for _ in 0..READERS {
            let mut c = repo.reader.acquire().await.unwrap();
            let size: i64 = sqlx::query_scalar("PRAGMA cache_size").fetch_one(&mut *c).await.unwrap();
            assert_eq!(size.to_string(), READER_CACHE);
            held.push(c);
        }
        drop(held);
        repo.close().await;
    }

    /// The coverage count reads index entries only, never an object's
    /// table row (each holds its metadata: ~500 bytes, where an index
    /// entry of the count's columns is ~50).
    #[tokio::test]
    async fn the_coverage_count_reads_only_index_entries() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open(dir.path()).await.unwrap();
        for sql in [COVERAGE_VERSIONS, COVERAGE_OBJECT_PAIRS, COVERAGE_FAILURE_PAIRS] {
            let steps = plan(&repo, sql).await;
            let reads: Vec<&String> =
                steps.iter().filter(|s| s.starts_with("SCAN") || s.starts_with("SEARCH")).collect();
            assert!(!reads.is_empty(), "{sql}: {steps:?}");
            for step in reads {
                assert!(step.contains("COVERING INDEX") || step.contains("json_each"), "{sql}: {steps:?}");
            }
        }
        repo.close().await;
    }

    /// A row of the list tests, written straight into the index.
    #[derive(Debug, Clone)]
    struct Row {
        id: i64,
        release: String,
        arch: &'static str,
        version: String,
        uname: Option<String>,
        config: Option<String>,
        current: bool,
    }

    async fn insert(repo: &Repo, r: &Row) -> i64 {
        sqlx::query_scalar(
            "INSERT INTO objects (kernel_release, arch, version, file_name, digest, size, uname_version, config_digest,
                                  metadata, published_at, current)
             VALUES (?, ?, ?, 'f.o', 'sha256:0', 1, ?, ?, '{}', 't', ?) RETURNING id",
        )
        .bind(&r.release)
        .bind(r.arch)
        .bind(&r.version)
        .bind(&r.uname)
        .bind(&r.config)
        .bind(i64::from(r.current))
        .fetch_one(&repo.writer)
        .await
        .unwrap()
    }

    /// Rows of every kind a filter must tell apart: releases sharing
    /// substrings, both arches, four versions, replaced rows (not current),
    /// `uname -v` and config digests known for some and shared by a few.
    async fn seed_list_rows(repo: &Repo) -> Vec<Row> {
        let mut rows = Vec::new();
        for r in 0..40u32 {
            let flavour = ["amd64", "cloud-amd64", "arm64", "generic"][r as usize % 4];
            let release = format!("{}.{}.0-{}-{flavour}", 5 + r % 2, r % 7, r);
            let arches: &[&'static str] = match flavour {
                "arm64" => &["aarch64"],
                "generic" => &["x86_64", "aarch64"],
                _ => &["x86_64"],
            };
            for v in 0..4 {
                if (r + v) % 5 == 0 {
                    continue;
                }
                for &arch in arches {
                    let mut row = Row {
                        id: 0,
                        release: release.clone(),
                        arch,
                        version: format!("v1.{v}.0"),
                        uname: (r % 2 == 0).then(|| format!("#1 SMP Debian {}", r % 6)),
                        config: (r % 3 == 0).then(|| format!("sha256:{}", r % 4)),
                        current: false,
                    };
                    if (r + v) % 3 == 0 {
                        row.id = insert(repo, &row).await;
                        rows.push(row.clone());
                    }
                    row.current = true;
                    row.id = insert(repo, &row).await;
                    rows.push(row);
                }
            }
        }
        rows
    }

    /// Every combination of the list's filters (a value rows have, or one
    /// none has), each walked page by page with three page sizes, gives
    /// exactly the current rows a brute-force filter of every row gives,
    /// in id order, from every page's `after`; so do the searches' two
    /// ways (a search matching many rows fills its page in its window,
    /// one matching few reads the identity index).
    #[tokio::test]
    async fn list_pages_match_a_brute_force_walk_for_every_filter_combination() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open(dir.path()).await.unwrap();
        let rows = seed_list_rows(&repo).await;
        let current: Vec<&Row> = rows.iter().filter(|r| r.current).collect();
        let mut walked = 0;
        for mask in 0u32..64 {
            for pick in [3usize, 17, 29, 1000] {
                // `pick` 1000: values no row has (where a filter is set).
                let like = current.get(pick % 1000 * mask as usize % current.len()).filter(|_| pick < 1000);
                let value = |bit: u32, v: Option<String>| {
                    (mask & (1 << bit) != 0).then(|| v.unwrap_or_else(|| "none-has-this".to_owned()))
                };
                let search = match pick {
                    3 => like.map(|r| r.release[2..r.release.len() - 3].to_owned()),
                    17 => Some("-".to_owned()),
                    _ => like.map(|r| r.release.clone()),
                };
                let f = Filter {
                    kernel_release: value(0, like.map(|r| r.release.clone())),
                    arch: value(1, Some(like.map_or("aarch64", |r| r.arch).to_owned())),
                    version: value(2, like.map(|r| r.version.clone())),
                    uname_version: value(3, like.and_then(|r| r.uname.clone())),
                    config_digest: value(4, like.and_then(|r| r.config.clone())),
                    search: value(5, search),
                    after: 0,
                    limit: 0,
                };
                let eq = |want: &Option<String>, have: Option<&str>| want.as_deref().is_none_or(|w| have == Some(w));
                let expected: Vec<i64> = current
                    .iter()
                    .filter(|r| {
                        eq(&f.kernel_release, Some(&r.release))
                            && eq(&f.arch, Some(r.arch))
                            && eq(&f.version, Some(&r.version))
                            && eq(&f.uname_version, r.uname.as_deref())
                            && eq(&f.config_digest, r.config.as_deref())
                            && f.search.as_deref().is_none_or(|q| r.release.contains(q))
                    })
                    .map(|r| r.id)
                    .collect();
                for limit in [2, 7, 50] {
                    let mut after = 0;
                    let mut got: Vec<i64> = Vec::new();
                    loop {
                        let page = repo.list(&Filter { after, limit, ..f.clone() }).await.unwrap();
                        let ids: Vec<i64> = page.iter().map(|r| r.id).collect();
                        let want: Vec<i64> =
                            expected.iter().copied().filter(|id| *id > after).take(limit as usize).collect();
                        assert_eq!(ids, want, "{f:?} after {after} limit {limit}");
                        got.extend(&ids);
                        if ids.len() < limit as usize {
                            break;
                        }
                        after = *ids.last().unwrap();
                    }
                    assert_eq!(got, expected, "{f:?} limit {limit}");
                    walked += got.len();
                }
            }
        }
        assert!(walked > 4_000, "the walks returned {walked} rows in all");
        repo.close().await;
    }

    /// The filters a combination sets, values and all, for the plan and
    /// row-count tests: rows of `probe` (few) match them.
    fn probe_filter(mask: u32) -> Filter {
        let set = |bit: u32, v: &str| (mask & (1 << bit) != 0).then(|| v.to_owned());
        Filter {
            kernel_release: set(0, "9.9.9-probe-arm64"),
            arch: set(1, "aarch64"),
            version: set(2, "v9.0.0"),
            uname_version: set(3, "#9 probe"),
            config_digest: set(4, "sha256:probe"),
            search: set(5, "probe"),
            after: 0,
            limit: 11,
        }
    }

    /// How sqlite runs `statement`: its `EXPLAIN QUERY PLAN` steps.
    async fn list_plan(repo: &Repo, statement: &ListSql) -> Vec<String> {
        let explain =
            ListSql { sql: format!("EXPLAIN QUERY PLAN {}", statement.sql), params: statement.params.clone() };
        let steps: Vec<(i64, i64, i64, String)> = explain.query().fetch_all(&repo.reader).await.unwrap();
        steps.into_iter().map(|(_, _, _, step)| step).collect()
    }

    /// Every filter combination's page reads the objects through the index
    /// it names (never a scan of the table), and a search's second
    /// statement reads the identity index's entries only.
    #[tokio::test]
    async fn every_list_filter_reads_its_page_through_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open(dir.path()).await.unwrap();
        for mask in 0u32..64 {
            let f = probe_filter(mask);
            let (first, rest) = list_statements(&f);
            let steps = list_plan(&repo, &first).await;
            let want = if f.kernel_release.is_some() {
                "SEARCH objects USING INDEX objects_current_identity (kernel_release=?"
            } else if f.uname_version.is_some() {
                "SEARCH objects USING INDEX objects_by_uname_version (uname_version=? AND rowid>?)"
            } else if f.config_digest.is_some() {
                "SEARCH objects USING INDEX objects_by_config_digest (config_digest=? AND rowid>?)"
            } else if f.version.is_some() && f.arch.is_some() {
                "SEARCH objects USING INDEX objects_by_version_arch (version=? AND arch=? AND rowid>?)"
            } else if f.version.is_some() {
                "SEARCH objects USING INDEX objects_by_version (version=? AND rowid>?)"
            } else if f.search.is_some() {
                "SEARCH objects USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)"
            } else if f.arch.is_some() {
                "SEARCH objects USING INDEX objects_by_arch (arch=? AND rowid>?)"
            } else {
                "SEARCH objects USING INTEGER PRIMARY KEY (rowid>?)"
            };
            assert!(steps.iter().any(|s| s.starts_with(want)), "{f:?}: {steps:?}");
            assert!(!steps.iter().any(|s| s.starts_with("SCAN")), "{f:?}: {steps:?}");
            // Only a release's own rows are ever sorted.
            assert_eq!(
                steps.iter().any(|s| s.contains("TEMP B-TREE")),
                f.kernel_release.is_some() && (f.arch.is_none() || f.version.is_none()),
                "{f:?}: {steps:?}"
            );
            assert_eq!(rest.is_some(), f.search.is_some() && want.contains("rowid<?"), "{f:?}");
            if let Some(rest) = rest {
                let steps = list_plan(&repo, &rest.sql).await;
                assert!(
                    steps.iter().any(|s| s.starts_with("SCAN objects USING COVERING INDEX objects_current_identity")),
                    "{f:?}: {steps:?}"
                );
                assert!(
                    steps.iter().any(|s| s.starts_with("SEARCH objects USING INTEGER PRIMARY KEY (rowid=?)")),
                    "{f:?}: {steps:?}"
                );
            }
        }
        repo.close().await;
    }

    /// Load-independent: the sqlite VM steps of each filter combination's
    /// page (a few probe rows match; a search's first statement, its
    /// window) are the same with 3,000 or 6,000 rows in the table that
    /// match none of them, where the same terms on the schema before the
    /// list indexes, sqlite choosing, grow with them for every filter but a
    /// release's or a version's. (A search that leaves its window reads
    /// the identity index's entries: checked above.)
    #[tokio::test]
    async fn a_filtered_list_page_reads_as_many_rows_as_it_returns_whatever_the_table_holds() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open(dir.path()).await.unwrap();
        let probe = |v: u32| Row {
            id: 0,
            release: "9.9.9-probe-arm64".into(),
            arch: "aarch64",
            version: format!("v9.{v}.0"),
            uname: Some("#9 probe".into()),
            config: Some("sha256:probe".into()),
            current: true,
        };
        let filler = |n: u32| Row {
            id: 0,
            release: format!("6.1.0-{n}-amd64"),
            arch: "x86_64",
            version: "v1.0.0".into(),
            uname: Some(format!("#1 {n}")),
            config: Some(format!("sha256:{n}")),
            current: true,
        };
        let steps = |c: &rusqlite::Connection, statement: &ListSql| -> i32 {
            let mut s = c.prepare(&statement.sql).unwrap();
            let mut rows = s.query(rusqlite::params_from_iter(&statement.params)).unwrap();
            while rows.next().unwrap().is_some() {}
            drop(rows);
            s.get_status(rusqlite::StatementStatus::VmStep)
        };
        // Each combination's first statement; and the same terms with
        // sqlite free to choose, on the schema before the list indexes
        // (dropped inside a transaction that is rolled back).
        let measure = |dir: &Path| -> Vec<(i32, i32)> {
            let c = rusqlite::Connection::open(dir.join("index.sqlite")).unwrap();
            let new: Vec<i32> = (0u32..64).map(|mask| steps(&c, &list_statements(&probe_filter(mask)).0)).collect();
            c.execute_batch(
                "BEGIN; DROP INDEX objects_by_arch; DROP INDEX objects_by_version; DROP INDEX objects_by_version_arch;
                 DROP INDEX objects_by_uname_version; DROP INDEX objects_by_config_digest;",
            )
            .unwrap();
            let old = (0u32..64).map(|mask| steps(&c, &list_statement_as_before(&probe_filter(mask))));
            let both = new.into_iter().zip(old).collect();
            c.execute_batch("ROLLBACK").unwrap();
            both
        };
        for v in 0..3 {
            insert(&repo, &probe(v)).await;
        }
        for n in 0..3000 {
            insert(&repo, &filler(n)).await;
        }
        let before = measure(dir.path());
        for n in 3000..6000 {
            insert(&repo, &filler(n)).await;
        }
        insert(&repo, &probe(3)).await;
        let after = measure(dir.path());
        let mut free_grew = 0;
        for (mask, ((b, fb), (a, fa))) in before.iter().zip(&after).enumerate() {
            let f = probe_filter(mask as u32);
            // The probe added last is one more row in some pages.
            assert!(*a <= b + 100, "{f:?}: {b} VM steps with 3,000 other rows, {a} with 6,000");
            if *fa > fb + 3000 {
                free_grew += 1;
            }
        }
        // The probes' filters, each alone and unindexed before: arch,
        // version, `uname -v`, config digest, the search (a release's
        // filter used its index).
        assert!(free_grew >= 5, "only {free_grew} unchosen plans grew with the table");
        repo.close().await;
    }

    /// A page's cells read as one JSON row each are the rows the same
    /// terms give one by one — odd characters in a failure's first line
    /// and all — and are found by release (index searches), not by a scan.
    #[tokio::test]
    async fn the_page_cells_come_in_one_row_as_the_rows_would() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open(dir.path()).await.unwrap();
        let rows = seed_list_rows(&repo).await;
        let mut failed = std::collections::BTreeSet::new();
        for (n, r) in rows.iter().enumerate().filter(|(n, r)| r.current && n % 4 == 0) {
            failed.insert((format!("{}-failed", r.release), r.version.clone()));
            sqlx::query("INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?, 't')")
                .bind(format!("{}-failed", r.release))
                .bind(r.arch)
                .bind(&r.version)
                .bind(format!("\"quoted\"\t\\ ünïcode {n}\r\nsecond line"))
                .execute(&repo.writer)
                .await
                .unwrap();
        }
        let mut releases: Vec<String> = rows.iter().map(|r| r.release.clone()).collect();
        releases.extend(rows.iter().map(|r| format!("{}-failed", r.release)));
        releases.sort();
        releases.dedup();
        let picked: Vec<&str> = releases.iter().step_by(3).map(String::as_str).collect();
        let versions = vec!["v1.1.0".to_owned(), "v1.3.0".to_owned()];
        // Releases nothing has between them: the page's rows span queries.
        let nope: Vec<String> = (0..picked.len() * 5).map(|i| format!("nope-{i}")).collect();
        let asked: Vec<&str> =
            picked.iter().zip(nope.chunks(5)).flat_map(|(r, n)| n.iter().map(String::as_str).chain([*r])).collect();
        assert!(asked.len() > DETAIL_RELEASES, "{} releases asked", asked.len());
        let (objects, failures) = repo.coverage_detail(&asked, &versions, 12).await.unwrap();
        let mut want: Vec<CoverageObject> = sqlx::query_as(
            "SELECT kernel_release, arch, version, digest, size FROM objects
              WHERE current = 1 AND kernel_release IN (SELECT value FROM json_each(?1))
                AND version IN (SELECT value FROM json_each(?2))",
        )
        .bind(serde_json::Value::from(picked.clone()).to_string())
        .bind(serde_json::Value::from(versions.clone()).to_string())
        .fetch_all(&repo.reader)
        .await
        .unwrap();
        let key = |o: &CoverageObject| (o.kernel_release.clone(), o.arch.clone(), o.version.clone());
        let mut got = objects.clone();
        got.sort_by_key(key);
        want.sort_by_key(key);
        assert!(!want.is_empty());
        assert_eq!(format!("{got:?}"), format!("{want:?}"));
        assert!(!failures.is_empty());
        for f in &failures {
            assert!(picked.contains(&f.kernel_release.as_str()) && versions.contains(&f.version), "{f:?}");
            assert_eq!(f.message, "\"quoted\"\t\\ ü", "{f:?}");
        }
        let want_failures = failed.iter().filter(|(r, v)| picked.contains(&r.as_str()) && versions.contains(v)).count();
        assert_eq!(failures.len(), want_failures);
        for sql in [COVERAGE_DETAIL_OBJECTS, COVERAGE_DETAIL_FAILURES] {
            let steps = plan(&repo, sql).await;
            assert!(
                steps
                    .iter()
                    .any(|s| s.starts_with("SEARCH objects USING INDEX objects_current_identity (kernel_release=?)")
                        || s.starts_with("SEARCH failures USING INDEX sqlite_autoindex_failures_1 (kernel_release=?)")),
                "{sql}: {steps:?}"
            );
            assert!(
                !steps.iter().any(|s| s.starts_with("SCAN objects") || s.starts_with("SCAN failures")),
                "{sql}: {steps:?}"
            );
        }
        repo.close().await;
    }
}
