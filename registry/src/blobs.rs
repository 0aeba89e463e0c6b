//! The content-addressed blob store: `<data>/blobs/sha256/<ab>/<hex>`.
//!
//! A write streams into a temp file created with `create_new` inside the
//! store, hashing as it goes; only when the digest matches what the
//! publisher claimed is the file fsynced and renamed into place. A crash
//! leaves a `tmp/` file, never a visible partial blob; `open` removes
//! leftovers. A blob is visible only after its digest is checked.
//!
//! `fsck` moves a blob whose bytes no longer hash to its name into
//! `quarantine/` (never deleting it); uploading the right bytes again
//! stores the blob afresh.
//!
//! This is the only module that touches the files under `blobs/`: the
//! faces, `export` and `fsck` read and write blobs and upload sessions
//! through `BlobStore` alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bpfarm_object::Digest;
use futures_util::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::hot::{HotBlob, HotCache};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("body has digest {actual}, not the {expected} it was published as")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("body is larger than the {limit}-byte limit")]
    TooLarge { limit: u64 },
    #[error("reading the request body: {0}")]
    Body(String),
    #[error("no blob {0}")]
    Missing(Digest),
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
    /// Hot blobs in memory, for downloads (`hot`).
    hot: Arc<HotCache>,
    /// One cache fill at a time: a burst of misses streams from the file
    /// rather than reading the same blob into memory many times over.
    filling: Arc<tokio::sync::Semaphore>,
}

/// Where a download's bytes come from.
#[derive(Debug)]
pub enum Source {
    /// The whole blob, from the hot cache (with its headers' text).
    Memory(HotBlob),
    /// The open file, to stream.
    File(tokio::fs::File),
}

impl BlobStore {
    /// Opens (creating) the store under `data` and drops unfinished writes:
    /// what a starting server does.
    pub async fn open(data: &Path) -> std::io::Result<Self> {
        let root = data.join("blobs");
        let tmp = root.join("tmp");
        if tmp.exists() {
            tokio::fs::remove_dir_all(&tmp).await?;
        }
        Self::attach(data).await
    }

    /// Opens (creating) the store without touching unfinished writes, for
    /// tools (`token`, `export`, `fsck`) that may run beside a server whose
    /// uploads are in flight.
    pub async fn attach(data: &Path) -> std::io::Result<Self> {
        let root = data.join("blobs");
        tokio::fs::create_dir_all(root.join("sha256")).await?;
        tokio::fs::create_dir_all(root.join("tmp")).await?;
        // OCI upload sessions span requests, so they live beside tmp/ and
        // are expired by age rather than wiped at start.
        tokio::fs::create_dir_all(root.join("uploads")).await?;
        Ok(Self { root, hot: Arc::default(), filling: Arc::new(tokio::sync::Semaphore::new(1)) })
    }

    /// The same store with a hot cache of `budget` bytes holding blobs of
    /// at most `max_object` bytes (`0` turns it off).
    pub fn with_hot_cache(mut self, budget: u64, max_object: u64) -> Self {
        self.hot = Arc::new(HotCache::new(budget, max_object));
        self
    }

    /// Opens a blob for a download: its bytes from the hot cache while the
    /// file is still stored, else the file (read into the cache first when
    /// it fits). Errors as `open_blob`.
    pub async fn open_for_download(&self, d: &Digest) -> Result<(Source, u64), BlobError> {
        if let Some(blob) = self.hot.get(d) {
            // One stat of a cached dentry: a blob removed or quarantined
            // behind the server's back is not served from memory.
            let len = blob.bytes().len() as u64;
            match std::fs::metadata(blob.path()) {
                Ok(m) if m.is_file() && m.len() == len => return Ok((Source::Memory(blob), len)),
                _ => self.hot.forget(d),
            }
        }
        let (file, size) = self.open_blob(d).await?;
        if !self.hot.admits(size) {
            return Ok((Source::File(file), size));
        }
        let Ok(_permit) = self.filling.try_acquire() else { return Ok((Source::File(file), size)) };
        let mut std_file = file.into_std().await;
        let d_owned = d.clone();
        let read = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut buf = Vec::with_capacity(size as usize);
            std_file.by_ref().take(size).read_to_end(&mut buf)?;
            // Only bytes that hash to their name enter the cache: a file
            // damaged behind the server's back must not outlive its repair
            // in memory (fsck, or a restore, fixes the file, not the cache).
            let sound = Digest::of_bytes(&buf) == d_owned;
            Ok::<_, std::io::Error>((buf, std_file, sound))
        })
        .await
        .map_err(|e| BlobError::Io(std::io::Error::other(format!("reading a blob: {e}"))))??;
        let (buf, std_file, sound) = read;
        if buf.len() as u64 != size {
            // Changed under us (it never should): serve the file as it is.
            let mut file = tokio::fs::File::from_std(std_file);
            tokio::io::AsyncSeekExt::rewind(&mut file).await?;
            return Ok((Source::File(file), size));
        }
        let blob = HotBlob::new(d, bytes::Bytes::from(buf), self.path(d));
        if sound {
            self.hot.put(d, blob.clone());
        }
        Ok((Source::Memory(blob), size))
    }

    /// Bytes the hot cache holds now.
    pub fn hot_bytes(&self) -> u64 {
        self.hot.used()
    }

    /// Where an OCI upload session's bytes accumulate.
    fn upload_path(&self, id: &str) -> PathBuf {
        self.root.join("uploads").join(id)
    }

    /// Starts an empty upload session `id`.
    pub async fn create_upload(&self, id: &str) -> Result<(), BlobError> {
        tokio::fs::File::create(self.upload_path(id)).await?;
        Ok(())
    }

    /// How many bytes upload session `id` holds so far.
    pub async fn upload_size(&self, id: &str) -> Result<u64, BlobError> {
        Ok(tokio::fs::metadata(self.upload_path(id)).await?.len())
    }

    /// Drops upload session `id`'s bytes (already gone is fine).
    pub async fn remove_upload(&self, id: &str) {
        if let Err(e) = tokio::fs::remove_file(self.upload_path(id)).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(upload = id, "removing an upload session's bytes: {e}");
        }
    }

    /// Stores bytes already in memory (manifests), verified like any blob.
    pub async fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, BlobError> {
        let d = Digest::of_bytes(bytes);
        if self.size(&d).await.is_none() {
            let chunk: Result<bytes::Bytes, std::io::Error> = Ok(bytes::Bytes::copy_from_slice(bytes));
            self.put(&d, futures_util::stream::iter([chunk]), u64::MAX).await?;
        }
        Ok(d)
    }

    /// Appends a streamed body to an upload session; returns the new size.
    /// The session never exceeds `limit` bytes.
    pub async fn append<S, E>(&self, id: &str, mut body: S, limit: u64) -> Result<u64, BlobError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut file = tokio::fs::OpenOptions::new().append(true).open(self.upload_path(id)).await?;
        let mut len = file.metadata().await?.len();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| BlobError::Body(e.to_string()))?;
            len += chunk.len() as u64;
            if len > limit {
                return Err(BlobError::TooLarge { limit });
            }
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        Ok(len)
    }

    /// Finishes an upload: the session's bytes become the blob `expected`
    /// only if they hash to it (then fsync and rename, as for `put`).
    pub async fn adopt(&self, id: &str, expected: &Digest) -> Result<u64, BlobError> {
        use tokio::io::AsyncReadExt;
        let path = self.upload_path(id);
        let mut file = tokio::fs::File::open(&path).await?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut len = 0u64;
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            len += n as u64;
        }
        self.commit(&file, &path, Digest::from_raw(hasher.finalize().into()), expected).await?;
        Ok(len)
    }

    /// The one way bytes become a visible blob: only if they hashed to
    /// `expected`, then fsync, rename into place, fsync the folder (the
    /// rename is durable only then).
    async fn commit(
        &self,
        file: &tokio::fs::File,
        from: &Path,
        actual: Digest,
        expected: &Digest,
    ) -> Result<(), BlobError> {
        if &actual != expected {
            return Err(BlobError::DigestMismatch { expected: expected.clone(), actual });
        }
        file.sync_all().await?;
        let dir = self.root.join("sha256").join(&expected.hex()[..2]);
        let dest = dir.join(expected.hex());
        tokio::fs::create_dir_all(&dir).await?;
        tokio::fs::rename(from, &dest).await?;
        tokio::fs::File::open(&dir).await?.sync_all().await?;
        Ok(())
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        self.root.join("sha256").join(&d.hex()[..2]).join(d.hex())
    }

    /// The blob's size, if it is stored.
    pub async fn size(&self, d: &Digest) -> Option<u64> {
        tokio::fs::metadata(self.path(d)).await.ok().filter(|m| m.is_file()).map(|m| m.len())
    }

    /// The blob's size if it is stored as a regular file (not a link), for
    /// blocking tools.
    pub fn size_now(&self, d: &Digest) -> Option<u64> {
        std::fs::symlink_metadata(self.path(d)).ok().filter(|m| m.is_file()).map(|m| m.len())
    }

    /// Opens a blob for a blocking reader (`export`): `Missing` when it is
    /// not stored.
    pub fn open_now(&self, d: &Digest) -> Result<std::fs::File, BlobError> {
        match std::fs::File::open(self.path(d)) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BlobError::Missing(d.clone())),
            Err(e) => Err(BlobError::Io(e)),
        }
    }

    /// Opens a blob for reading: `Missing` when it is not stored, `Io` for
    /// anything else (a store that cannot be read is not an unknown blob).
    pub async fn open_blob(&self, d: &Digest) -> Result<(tokio::fs::File, u64), BlobError> {
        let file = match tokio::fs::File::open(self.path(d)).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(BlobError::Missing(d.clone())),
            Err(e) => return Err(BlobError::Io(e)),
        };
        let meta = file.metadata().await?;
        if !meta.is_file() {
            return Err(BlobError::Io(std::io::Error::other(format!(
                "{} is not a regular file",
                self.path(d).display()
            ))));
        }
        Ok((file, meta.len()))
    }

    /// A small blob's bytes (manifests, indexes).
    pub async fn read(&self, d: &Digest) -> Result<Vec<u8>, BlobError> {
        use tokio::io::AsyncReadExt;
        let (mut file, len) = self.open_blob(d).await?;
        let mut bytes = Vec::with_capacity(len as usize);
        file.read_to_end(&mut bytes).await?;
        Ok(bytes)
    }

    /// A small blob's bytes, for a blocking reader (the faces check).
    pub fn read_now(&self, d: &Digest) -> Result<Vec<u8>, BlobError> {
        use std::io::Read;
        let mut file = self.open_now(d)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// Every file under `sha256/`, with the digest its name claims (`None`
    /// for a name that is not a digest in its right folder).
    pub fn stored(&self) -> std::io::Result<Vec<(PathBuf, Option<Digest>)>> {
        let mut out = Vec::new();
        let top = self.root.join("sha256");
        let at = |p: &Path, e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", p.display()));
        for dir in std::fs::read_dir(&top).map_err(|e| at(&top, e))? {
            let dir = dir.map_err(|e| at(&top, e))?;
            if !dir.file_type()?.is_dir() {
                out.push((dir.path(), None));
                continue;
            }
            let prefix = dir.file_name().to_string_lossy().into_owned();
            for f in std::fs::read_dir(dir.path()).map_err(|e| at(&dir.path(), e))? {
                let f = f.map_err(|e| at(&dir.path(), e))?;
                let name = f.file_name().to_string_lossy().into_owned();
                let digest = format!("sha256:{name}")
                    .parse::<Digest>()
                    .ok()
                    .filter(|d| d.hex().starts_with(&prefix) && prefix.len() == 2);
                out.push((f.path(), digest));
            }
        }
        out.sort();
        Ok(out)
    }

    /// What the bytes stored under `path` hash to, and how many there are.
    pub fn rehash(path: &Path) -> std::io::Result<(Digest, u64)> {
        Digest::of_reader(std::io::BufReader::new(std::fs::File::open(path)?))
    }

    /// Moves a blob file aside into `quarantine/` (never deleting it) and
    /// returns where it went.
    pub fn quarantine(&self, path: &Path) -> std::io::Result<PathBuf> {
        let dir = self.root.join("quarantine");
        std::fs::create_dir_all(&dir)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let stamp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let dest = dir.join(format!("{name}.{stamp}"));
        std::fs::rename(path, &dest)?;
        Ok(dest)
    }

    /// A fresh staging folder (see `Staging`).
    pub fn staging(&self) -> std::io::Result<Staging> {
        let dir = tempfile::Builder::new().prefix(".staging-").tempdir_in(&self.root)?;
        Ok(Staging { dir, count: 0 })
    }

    /// Makes a staged file the blob it hashed to (fsync, rename, fsync the
    /// folder), unless that blob is already stored. Returns whether it was new.
    pub fn adopt_staged(&self, staged: Staged) -> std::io::Result<bool> {
        if self.size_now(&staged.digest).is_some() {
            let _ = std::fs::remove_file(&staged.path);
            return Ok(false);
        }
        std::fs::File::open(&staged.path)?.sync_all()?;
        let dir = self.root.join("sha256").join(&staged.digest.hex()[..2]);
        std::fs::create_dir_all(&dir)?;
        std::fs::rename(&staged.path, dir.join(staged.digest.hex()))?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(true)
    }

    /// Every stored blob named by its digest: (digest, size, last modified),
    /// for `gc`. Files whose names are not digests are `fsck`'s business.
    pub fn inventory(&self) -> std::io::Result<Vec<(Digest, u64, std::time::SystemTime)>> {
        let mut out = Vec::new();
        for (path, digest) in self.stored()? {
            let Some(digest) = digest else { continue };
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) => return Err(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
            };
            if meta.is_file() {
                out.push((digest, meta.len(), meta.modified()?));
            }
        }
        Ok(out)
    }

    /// Removes blob `d` (gone already is fine); `gc` calls it only while it
    /// holds the write transaction, after checking nothing names it.
    pub fn remove(&self, d: &Digest) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(d)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Streams `body` in; it becomes visible only if it hashes to `expected`
    /// and stays within `limit` bytes. Returns the size.
    pub async fn put<S, E>(&self, expected: &Digest, mut body: S, limit: u64) -> Result<u64, BlobError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let tmp_path = self.root.join("tmp").join(format!("{}-{}", expected.hex(), random_suffix()?));
        let mut file = tokio::fs::OpenOptions::new().write(true).create_new(true).open(&tmp_path).await?;
        // Removes the temp file however this ends — an error, or the
        // request being dropped mid-body (a client cut for stalling).
        let mut guard = TempFile(Some(tmp_path.clone()));
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| BlobError::Body(e.to_string()))?;
            len += chunk.len() as u64;
            if len > limit {
                return Err(BlobError::TooLarge { limit });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
        }
        self.commit(&file, &tmp_path, Digest::from_raw(hasher.finalize().into()), expected).await?;
        guard.0 = None;
        Ok(len)
    }
}

/// Bytes copied into the store's private staging folder and hashed on
/// the way (`BlobStore::staging`), not yet visible: `BlobStore::adopt_staged`
/// makes them a blob, dropping the `Staging` removes them. An import checks
/// a whole bundle in staging before one byte of it becomes visible.
#[derive(Debug)]
pub struct Staged {
    path: PathBuf,
    pub digest: Digest,
    pub size: u64,
}

/// A staging folder inside the store (`blobs/.staging-<random>`), removed
/// with everything in it when dropped. On the store's file system, so
/// adopting a staged blob is a rename.
#[derive(Debug)]
pub struct Staging {
    dir: tempfile::TempDir,
    count: u64,
}

/// Why staging a stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("more than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Staging {
    /// Copies at most `limit` bytes of `from` into a new staged file,
    /// hashing as it goes (blocking).
    pub fn stage(&mut self, from: &mut dyn std::io::Read, limit: u64) -> Result<Staged, StageError> {
        use std::io::{Read, Write};
        self.count += 1;
        let path = self.dir.path().join(self.count.to_string());
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut size = 0u64;
        let mut limited = from.take(limit.saturating_add(1));
        loop {
            let n = limited.read(&mut buf)?;
            if n == 0 {
                break;
            }
            size += n as u64;
            if size > limit {
                drop(file);
                let _ = std::fs::remove_file(&path);
                return Err(StageError::TooLarge { limit });
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])?;
        }
        file.flush()?;
        Ok(Staged { path, digest: Digest::from_raw(hasher.finalize().into()), size })
    }

    /// A staged file's bytes, at most `limit` of them (manifests, indexes).
    pub fn read(&self, staged: &Staged, limit: u64) -> Result<Vec<u8>, StageError> {
        if staged.size > limit {
            return Err(StageError::TooLarge { limit });
        }
        Ok(std::fs::read(&staged.path)?)
    }
}

/// A temp file removed on drop unless disarmed.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn random_suffix() -> std::io::Result<String> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| std::io::Error::other(format!("OS randomness: {e}")))?;
    Ok(hex::encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(chunks: Vec<&'static [u8]>) -> impl Stream<Item = Result<bytes::Bytes, std::io::Error>> + Unpin {
        futures_util::stream::iter(chunks.into_iter().map(|c| Ok(bytes::Bytes::from_static(c))))
    }

    #[tokio::test]
    async fn stores_only_verified_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).await.unwrap();
        let d = Digest::of_bytes(b"hello world");
        assert_eq!(store.put(&d, stream(vec![b"hello ", b"world"]), 100).await.unwrap(), 11);
        assert_eq!(std::fs::read(store.path(&d)).unwrap(), b"hello world");

        let wrong = Digest::of_bytes(b"other");
        let e = store.put(&wrong, stream(vec![b"hello"]), 100).await.unwrap_err();
        assert!(matches!(e, BlobError::DigestMismatch { .. }));
        assert!(!store.path(&wrong).exists());
        let e = store.put(&Digest::of_bytes(b"xxxxx"), stream(vec![b"xxx", b"xx"]), 4).await.unwrap_err();
        assert!(matches!(e, BlobError::TooLarge { limit: 4 }));
        // Nothing partial stays behind.
        assert_eq!(std::fs::read_dir(dir.path().join("blobs/tmp")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn open_removes_unfinished_writes() {
        let dir = tempfile::tempdir().unwrap();
        BlobStore::open(dir.path()).await.unwrap();
        std::fs::write(dir.path().join("blobs/tmp/half"), b"partial").unwrap();
        BlobStore::open(dir.path()).await.unwrap();
        assert_eq!(std::fs::read_dir(dir.path().join("blobs/tmp")).unwrap().count(), 0);
    }
}
