//! The sqlite index: the only module that runs SQL. One writer connection
//! (sqlite has one writer anyway; queueing here beats SQLITE_BUSY) and a
//! pool of readers, in WAL mode.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use bpfarm_object::ObjectMetadata;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

#[derive(Debug, Clone)]
pub struct Repo {
    writer: SqlitePool,
    reader: SqlitePool,
}

/// One stored object row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ObjectRow {
    pub id: i64,
    pub digest: String,
    pub size: i64,
    pub metadata: String,
    pub published_at: String,
}

impl ObjectRow {
    pub fn metadata(&self) -> ObjectMetadata {
        serde_json::from_str(&self.metadata).expect("stored metadata was validated on publish")
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CoverageObject {
    pub kernel_release: String,
    pub arch: String,
    pub version: String,
    pub digest: String,
    pub size: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CoverageFailure {
    pub kernel_release: String,
    pub arch: String,
    pub version: String,
    pub message: String,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
        let writer = SqlitePoolOptions::new().max_connections(1).connect_with(opts.clone()).await?;
        sqlx::migrate!("./migrations").run(&writer).await?;
        let reader = SqlitePoolOptions::new().max_connections(8).connect_with(opts.read_only(true)).await?;
        Ok(Self { writer, reader })
    }

    pub async fn current(&self, release: &str, arch: &str, version: &str) -> Result<Option<ObjectRow>, sqlx::Error> {
        sqlx::query_as("SELECT id, digest, size, metadata, published_at FROM objects WHERE current = 1 AND kernel_release = ? AND arch = ? AND version = ?")
            .bind(release)
            .bind(arch)
            .bind(version)
            .fetch_optional(&self.reader)
            .await
    }

    /// The current objects a static-layout path names (file names are lossy,
    /// so there may be more than one).
    pub async fn by_file_name(
        &self,
        version: &str,
        arch: &str,
        file_name: &str,
    ) -> Result<Vec<ObjectRow>, sqlx::Error> {
        sqlx::query_as("SELECT id, digest, size, metadata, published_at FROM objects WHERE current = 1 AND version = ? AND arch = ? AND file_name = ? LIMIT 2")
            .bind(version)
            .bind(arch)
            .bind(file_name)
            .fetch_all(&self.reader)
            .await
    }

    pub async fn list(&self, f: &Filter) -> Result<Vec<ObjectRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, digest, size, metadata, published_at FROM objects WHERE current = 1 AND id > ?
               AND (? IS NULL OR kernel_release = ?) AND (? IS NULL OR arch = ?) AND (? IS NULL OR version = ?)
               AND (? IS NULL OR uname_version = ?) AND (? IS NULL OR config_digest = ?)
               AND (? IS NULL OR instr(kernel_release, ?) > 0)
             ORDER BY id LIMIT ?",
        )
        .bind(f.after)
        .bind(&f.kernel_release)
        .bind(&f.kernel_release)
        .bind(&f.arch)
        .bind(&f.arch)
        .bind(&f.version)
        .bind(&f.version)
        .bind(&f.uname_version)
        .bind(&f.uname_version)
        .bind(&f.config_digest)
        .bind(&f.config_digest)
        .bind(&f.search)
        .bind(&f.search)
        .bind(f.limit)
        .fetch_all(&self.reader)
        .await
    }

    /// Inserts `meta` as the current object of its identity, moving the
    /// previous current one (if `replace`) into history, in one transaction.
    /// Returns the previous current row when it blocked the insert.
    pub async fn insert(
        &self,
        meta: &ObjectMetadata,
        replace: bool,
        now: &str,
    ) -> Result<Result<(), ObjectRow>, sqlx::Error> {
        let mut tx = self.writer.begin().await?;
        let id = &meta.identity;
        let existing: Option<ObjectRow> = sqlx::query_as(
            "SELECT id, digest, size, metadata, published_at FROM objects WHERE current = 1 AND kernel_release = ? AND arch = ? AND version = ?",
        )
        .bind(&id.kernel_release)
        .bind(id.arch.uname())
        .bind(&id.version)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = existing {
            if !replace {
                return Ok(Err(row));
            }
            sqlx::query("UPDATE objects SET current = 0 WHERE id = ?").bind(row.id).execute(&mut *tx).await?;
        }
        sqlx::query(
            "INSERT INTO objects (kernel_release, arch, version, file_name, digest, size, uname_version, config_digest, metadata, published_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&id.kernel_release)
        .bind(id.arch.uname())
        .bind(&id.version)
        .bind(&meta.file_name)
        .bind(meta.digest.as_str())
        .bind(meta.size as i64)
        .bind(&meta.kernel.uname_version)
        .bind(meta.kernel.config_digest.as_ref().map(|d| d.as_str()))
        .bind(serde_json::to_string(meta).expect("metadata serializes"))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM failures WHERE kernel_release = ? AND arch = ? AND version = ?")
            .bind(&id.kernel_release)
            .bind(id.arch.uname())
            .bind(&id.version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Ok(()))
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

    /// Everything the coverage page shows: current objects and failures.
    pub async fn coverage(&self) -> Result<(Vec<CoverageObject>, Vec<CoverageFailure>), sqlx::Error> {
        let objects =
            sqlx::query_as("SELECT kernel_release, arch, version, digest, size FROM objects WHERE current = 1")
                .fetch_all(&self.reader)
                .await?;
        let failures = sqlx::query_as("SELECT kernel_release, arch, version, message FROM failures")
            .fetch_all(&self.reader)
            .await?;
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

    /// Every stored token hash with its scope.
    pub async fn token_hashes(&self) -> Result<Vec<(String, String)>, sqlx::Error> {
        sqlx::query_as("SELECT hash, scope FROM tokens").fetch_all(&self.reader).await
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
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM oci_blob_links WHERE repo = ? AND digest = ?")
            .bind(repo)
            .bind(digest)
            .fetch_one(&self.reader)
            .await?;
        Ok(n > 0)
    }

    pub async fn oci_unlink(&self, repo: &str, digest: &str) -> Result<bool, sqlx::Error> {
        Ok(sqlx::query("DELETE FROM oci_blob_links WHERE repo = ? AND digest = ?")
            .bind(repo)
            .bind(digest)
            .execute(&self.writer)
            .await?
            .rows_affected()
            > 0)
    }

    /// Stores a manifest row (its bytes are a blob) and, if given, points a tag at it.
    #[allow(clippy::too_many_arguments)]
    pub async fn oci_put_manifest(
        &self,
        repo: &str,
        digest: &str,
        media_type: &str,
        size: i64,
        artifact_type: Option<&str>,
        subject: Option<&str>,
        annotations: Option<&str>,
        tag: Option<&str>,
        now: &str,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO oci_manifests (repo, digest, media_type, size, artifact_type, subject, annotations, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (repo, digest) DO UPDATE SET media_type = excluded.media_type",
        )
        .bind(repo)
        .bind(digest)
        .bind(media_type)
        .bind(size)
        .bind(artifact_type)
        .bind(subject)
        .bind(annotations)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT OR IGNORE INTO oci_blob_links (repo, digest) VALUES (?, ?)")
            .bind(repo)
            .bind(digest)
            .execute(&mut *tx)
            .await?;
        if let Some(tag) = tag {
            sqlx::query("INSERT INTO oci_tags (repo, tag, digest) VALUES (?, ?, ?) ON CONFLICT (repo, tag) DO UPDATE SET digest = excluded.digest")
                .bind(repo)
                .bind(tag)
                .bind(digest)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
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

    /// Deletes a manifest (and the tags pointing at it), or just a tag.
    pub async fn oci_delete_manifest(&self, repo: &str, reference: &str) -> Result<bool, sqlx::Error> {
        let mut tx = self.writer.begin().await?;
        let n = if reference.starts_with("sha256:") {
            sqlx::query("DELETE FROM oci_tags WHERE repo = ? AND digest = ?")
                .bind(repo)
                .bind(reference)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM oci_manifests WHERE repo = ? AND digest = ?")
                .bind(repo)
                .bind(reference)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        } else {
            sqlx::query("DELETE FROM oci_tags WHERE repo = ? AND tag = ?")
                .bind(repo)
                .bind(reference)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        };
        tx.commit().await?;
        Ok(n > 0)
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
