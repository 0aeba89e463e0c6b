//! `bpfarm-builder fetch`: a pinned matrix's packages, downloaded straight
//! from the archive into a content-addressed store, in parallel.
//!
//! Store layout, under the package cache (`$BPFARM_CACHE/debs`):
//! - `sha256/<hex>.deb`: a package whose bytes hashed to `<hex>` and whose
//!   size matched the matrix when it was written. A file is renamed into
//!   place only after that check, so presence is proof.
//! - `sha256/.partial/<hex>.part`: an interrupted download, resumed with a
//!   `Range` request (restarted when the server ignores the range).
//! - `<name>_<version>_<arch>.deb`: a hard link to the stored file under
//!   apt's name, for `--headers DIR` and people. A file already there under
//!   that name (an older cache) is adopted when it hashes right.
//!
//! A download never grows past the matrix's size for it: the body is cut
//! off one byte after and refused.

use std::fs::{self, File, OpenOptions};
use std::io::{self, IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bpfarm_object::Digest;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use sha2::{Digest as _, Sha256};

use bpfarm_object::http::TransportError;

use crate::archive::{self, Archive, HttpError};
use crate::discover::error_chain;
use crate::matrix::MatrixDeb;

/// Attempts per package on transport errors (each resumes the last).
const ATTEMPTS: usize = 3;

#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// The package cache (`$BPFARM_CACHE/debs`).
    pub store: PathBuf,
    /// Archive roots, tried in order for each file.
    pub roots: Vec<String>,
    pub jobs: usize,
    pub progress_bar: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{url}: {got_size} bytes with {got}, but the matrix says {want_size} bytes with {want}; discarded")]
    Mismatch { url: String, want: Digest, want_size: u64, got: Digest, got_size: u64 },
    #[error("{url}: the server sent more than the matrix's {size} bytes; discarded")]
    Oversized { url: String, size: u64 },
    #[error("{file}: no archive root has it (HTTP 404 from {roots})")]
    NotFound { file: String, roots: String },
    #[error("no archive root to download from: the apt sources name none; pass --apt-source URI")]
    NoRoots,
    #[error("could not start {jobs} download workers: {reason}")]
    Pool { jobs: usize, reason: String },
}

/// Where a verified package lives in the store.
pub fn store_path(store: &Path, digest: &Digest) -> PathBuf {
    store.join("sha256").join(format!("{}.deb", digest.hex()))
}

/// How each package ended up in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Got {
    Present,
    Adopted,
    Downloaded,
}

#[derive(Debug, Default)]
pub struct FetchReport {
    pub present: usize,
    pub adopted: usize,
    pub downloaded: usize,
    /// Bytes transferred in this run.
    pub bytes: u64,
    pub failed: Vec<(MatrixDeb, Arc<FetchError>)>,
    pub duration: Duration,
}

impl FetchReport {
    pub fn summary(&self) -> String {
        let secs = self.duration.as_secs_f64();
        format!(
            "fetch: {} downloaded ({:.1} MiB in {:.1}s, {:.1} MiB/s), {} already stored, {} adopted from apt names, {} failed",
            self.downloaded,
            self.bytes as f64 / 1048576.0,
            secs,
            if secs > 0.0 { self.bytes as f64 / 1048576.0 / secs } else { 0.0 },
            self.present,
            self.adopted,
            self.failed.len()
        )
    }
}

/// Which packages are not in the store yet (a stat each).
pub fn missing<'a>(store: &Path, debs: &[&'a MatrixDeb]) -> Vec<&'a MatrixDeb> {
    debs.iter().copied().filter(|d| !store_path(store, &d.sha256).is_file()).collect()
}

/// Puts every package in the store. Setup problems are errors; a package
/// that cannot be had is a row in `failed` and the others go on.
pub fn fetch(
    cfg: &FetchConfig,
    http: &Archive,
    debs: &[&MatrixDeb],
    say: &(dyn Fn(&str) + Sync),
) -> Result<FetchReport, FetchError> {
    let start = Instant::now();
    let io = |file: &Path| {
        let file = file.to_owned();
        move |source| FetchError::Io { file: file.clone(), source }
    };
    let sha_dir = cfg.store.join("sha256");
    fs::create_dir_all(sha_dir.join(".partial")).map_err(io(&sha_dir))?;
    let todo = missing(&cfg.store, debs);
    let mut report = FetchReport { present: debs.len() - todo.len(), ..Default::default() };
    for d in debs {
        // Keep the apt-named links of stored packages in place (cheap).
        if !todo.iter().any(|t| t.sha256 == d.sha256) {
            let _ = link_apt_name(&cfg.store, d);
        }
    }
    if todo.is_empty() {
        report.duration = start.elapsed();
        return Ok(report);
    }
    let needs_network = todo.iter().any(|d| !adoptable(&cfg.store, d));
    if needs_network && cfg.roots.is_empty() {
        return Err(FetchError::NoRoots);
    }
    let total: u64 = todo.iter().map(|d| d.size).sum();
    let progress = Progress::new(total, todo.len(), cfg.progress_bar);
    let preferred: Mutex<Vec<(String, usize)>> = Mutex::new(Vec::new());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.jobs.max(1))
        .build()
        .map_err(|e| FetchError::Pool { jobs: cfg.jobs, reason: e.to_string() })?;
    let results: Vec<Result<(Got, u64), FetchError>> = pool.install(|| {
        todo.par_iter()
            .with_max_len(1)
            .map(|d| {
                let r = get_one(cfg, http, d, &progress, &preferred);
                progress.done(d, &r, say);
                r
            })
            .collect()
    });
    progress.finish();
    for (d, r) in todo.iter().zip(results) {
        match r {
            Ok((Got::Downloaded, n)) => {
                report.downloaded += 1;
                report.bytes += n;
            }
            Ok((Got::Adopted, _)) => report.adopted += 1,
            Ok((Got::Present, _)) => report.present += 1,
            Err(e) => report.failed.push(((*d).clone(), Arc::new(e))),
        }
    }
    report.duration = start.elapsed();
    Ok(report)
}

/// A file under the package's apt name that could be adopted.
fn adoptable(store: &Path, d: &MatrixDeb) -> bool {
    fs::metadata(store.join(d.apt_file_name())).is_ok_and(|m| m.is_file() && m.len() == d.size)
}

fn get_one(
    cfg: &FetchConfig,
    http: &Archive,
    d: &MatrixDeb,
    progress: &Progress,
    preferred: &Mutex<Vec<(String, usize)>>,
) -> Result<(Got, u64), FetchError> {
    let dest = store_path(&cfg.store, &d.sha256);
    if dest.is_file() {
        return Ok((Got::Present, 0));
    }
    // An older cache may hold it under its apt name.
    let named = cfg.store.join(d.apt_file_name());
    if adoptable(&cfg.store, d) {
        let f = File::open(&named).map_err(|source| FetchError::Io { file: named.clone(), source })?;
        let (digest, _) = Digest::of_reader(f).map_err(|source| FetchError::Io { file: named.clone(), source })?;
        if digest == d.sha256 {
            place(&named, &dest, true)?;
            progress.add(d.size);
            return Ok((Got::Adopted, 0));
        }
    }
    // Files of one pool area come from one root: try the one that worked last.
    let area: String = d.filename.split('/').take(2).collect::<Vec<_>>().join("/");
    let first = preferred.lock().ok().and_then(|p| p.iter().find(|(a, _)| *a == area).map(|(_, i)| *i)).unwrap_or(0);
    let mut order: Vec<usize> = (0..cfg.roots.len()).collect();
    order.sort_by_key(|i| *i != first);
    for i in order {
        let url = archive::join(&cfg.roots[i], &d.filename);
        match download(cfg, http, d, &url, progress)? {
            Some(n) => {
                if let Ok(mut p) = preferred.lock() {
                    p.retain(|(a, _)| *a != area);
                    p.push((area, i));
                }
                let _ = link_apt_name(&cfg.store, d);
                return Ok((Got::Downloaded, n));
            }
            None => continue,
        }
    }
    Err(FetchError::NotFound { file: d.filename.clone(), roots: cfg.roots.join(", ") })
}

/// Downloads `url` into the store; `Ok(None)` when the root does not have
/// it. Resumes a partial file; retries transport errors.
fn download(
    cfg: &FetchConfig,
    http: &Archive,
    d: &MatrixDeb,
    url: &str,
    progress: &Progress,
) -> Result<Option<u64>, FetchError> {
    let part = cfg.store.join("sha256/.partial").join(format!("{}.part", d.sha256.hex()));
    let io = |source| FetchError::Io { file: part.clone(), source };
    let mut transferred = 0;
    let mut last_err = None;
    for _ in 0..ATTEMPTS {
        let mut f = OpenOptions::new().create(true).read(true).append(true).open(&part).map_err(io)?;
        let mut have = f.metadata().map_err(io)?.len();
        if have >= d.size {
            f.set_len(0).map_err(io)?;
            have = 0;
        }
        let body = match http.open(url, have) {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(None),
            // No answer, or a dropped connection: try again (resuming).
            Err(e @ (TransportError::Request { .. } | TransportError::Stalled { .. })) => {
                last_err = Some(HttpError::Transport(e));
                continue;
            }
            Err(e) => return Err(HttpError::from(e).into()),
        };
        let mut hasher = Sha256::new();
        if body.resumed {
            // Hash what is already there, then continue after it.
            f.seek(SeekFrom::Start(0)).map_err(io)?;
            let mut r = (&f).take(have);
            io::copy(&mut r, &mut HashWriter(&mut hasher)).map_err(io)?;
        } else {
            f.set_len(0).map_err(io)?;
            have = 0;
        }
        let room = d.size - have;
        if body.length.is_some_and(|n| n > room) {
            drop(f);
            let _ = fs::remove_file(&part);
            return Err(FetchError::Oversized { url: url.to_owned(), size: d.size });
        }
        let mut w = CountingWriter { file: &mut f, hasher: &mut hasher, n: 0, progress };
        let copied = io::copy(&mut body.take(room + 1), &mut w);
        let n = w.n;
        transferred += n;
        if let Err(e) = copied {
            // A broken connection: keep the partial file and resume.
            last_err = Some(HttpError::Body { url: url.to_owned(), source: e });
            continue;
        }
        if have + n > d.size {
            drop(f);
            let _ = fs::remove_file(&part);
            return Err(FetchError::Oversized { url: url.to_owned(), size: d.size });
        }
        let got = Digest::from_raw(hasher.finalize().into());
        if have + n != d.size || got != d.sha256 {
            drop(f);
            let _ = fs::remove_file(&part);
            return Err(FetchError::Mismatch {
                url: url.to_owned(),
                want: d.sha256.clone(),
                want_size: d.size,
                got,
                got_size: have + n,
            });
        }
        f.sync_all().map_err(io)?;
        drop(f);
        let dest = store_path(&cfg.store, &d.sha256);
        place(&part, &dest, false)?;
        return Ok(Some(transferred));
    }
    Err(last_err
        .map(FetchError::from)
        .unwrap_or(FetchError::NotFound { file: d.filename.clone(), roots: url.to_owned() }))
}

/// Moves (or, with `link`, hard-links) a checked file into the store and
/// syncs the folder.
fn place(from: &Path, dest: &Path, link: bool) -> Result<(), FetchError> {
    let io = |source| FetchError::Io { file: dest.to_owned(), source };
    if link {
        let tmp = dest.with_extension(format!("tmp-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        fs::hard_link(from, &tmp).or_else(|_| fs::copy(from, &tmp).map(|_| ())).map_err(io)?;
        fs::rename(&tmp, dest).map_err(io)?;
    } else {
        fs::rename(from, dest).map_err(io)?;
    }
    if let Some(dir) = dest.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

/// `<store>/<apt name>` as a hard link to the stored file (replaced when
/// it is something else).
fn link_apt_name(store: &Path, d: &MatrixDeb) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let stored = store_path(store, &d.sha256);
    let named = store.join(d.apt_file_name());
    let (a, b) = (fs::metadata(&stored)?, fs::metadata(&named).ok());
    if b.is_some_and(|b| b.ino() == a.ino() && b.dev() == a.dev()) {
        return Ok(());
    }
    let tmp = store.join(format!(".{}.tmp-{}", d.apt_file_name(), std::process::id()));
    let _ = fs::remove_file(&tmp);
    fs::hard_link(&stored, &tmp)?;
    fs::rename(&tmp, &named)
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct CountingWriter<'a> {
    file: &'a mut File,
    hasher: &'a mut Sha256,
    n: u64,
    progress: &'a Progress,
}

impl Write for CountingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.file.write(buf)?;
        self.hasher.update(&buf[..k]);
        self.n += k as u64;
        self.progress.add(k as u64);
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A byte bar on a terminal, one line per package otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    total: usize,
    done: AtomicUsize,
    bytes: AtomicU64,
}

impl Progress {
    fn new(bytes: u64, total: usize, bar: bool) -> Self {
        let bar = (bar && io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new(bytes);
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Self { bar, total, done: AtomicUsize::new(0), bytes: AtomicU64::new(0) }
    }

    fn add(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    fn done(&self, d: &MatrixDeb, r: &Result<(Got, u64), FetchError>, say: &(dyn Fn(&str) + Sync)) {
        let n = self.done.fetch_add(1, Ordering::SeqCst) + 1;
        let line = match r {
            Ok((Got::Downloaded, bytes)) => {
                format!("[{n}/{}] downloaded {} ({:.1} MiB)", self.total, d.apt_file_name(), *bytes as f64 / 1048576.0)
            }
            Ok((Got::Adopted, _)) => format!("[{n}/{}] adopted {}", self.total, d.apt_file_name()),
            Ok((Got::Present, _)) => format!("[{n}/{}] present {}", self.total, d.apt_file_name()),
            Err(e) => format!("[{n}/{}] FAILED {}: {}", self.total, d.apt_file_name(), error_chain(e)),
        };
        match &self.bar {
            Some(b) => {
                b.set_message(d.name.clone());
                if r.is_err() {
                    b.println(format!("fetch: {line}"));
                }
            }
            None => say(&format!("fetch: {line}")),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
