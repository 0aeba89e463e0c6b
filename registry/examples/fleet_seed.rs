//! Fills a registry's storage with a synthetic fleet for `bench/fleet.py`:
//! `--kernels` kernel releases times `--versions` tracer versions, each a
//! current object with its OCI form, written through the registry's own
//! publish code (`publish::make_current`) in batched transactions rather
//! than one HTTP publish each. Each kernel has its own small blob (all
//! versions of a kernel share it: only the index is under test).
//!
//!     cargo run --release -p bpfarm-registry --example fleet_seed -- --data DIR --kernels 10000 --versions 10
//!
//! With `--time-check` it seeds nothing: it times the start-up check of
//! the two faces on DIR both ways, set-based (`faces::disagreements`, what
//! `serve` runs) and one object at a time (`disagreements_one_by_one`,
//! what it ran before), and prints both. With `--rows-read QUERY...` it
//! seeds nothing either: it counts sqlite's VM steps per page of each list
//! query on DIR (and as before the list indexes, on `--old-data`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use bpfarm_object::Digest;
use bpfarm_registry::publish::{self, Replace};
use bpfarm_registry::repo::{Filter, LAST_ID, ListRest, ListSql, list_statements};
use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// The registry's data folder (created).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    kernels: usize,
    #[arg(long, default_value_t = 10)]
    versions: usize,
    /// Objects per transaction.
    #[arg(long, default_value_t = 2_000)]
    batch: usize,
    /// Bytes of each kernel's blob.
    #[arg(long, default_value_t = 2048)]
    blob_bytes: usize,
    /// Seed nothing; time the faces check of DIR both ways.
    #[arg(long)]
    time_check: bool,
    /// Seed nothing; for each `GET /v1/objects` query given (`arch=x86_64`,
    /// `q=6.1`, `version=v1.3.0&arch=x86_64`, ...) walk its pages of 1,000
    /// on DIR as the registry reads them, and print sqlite's VM steps per
    /// page (load-independent: what the page costs sqlite); with
    /// --old-data, the same terms as before the list indexes too.
    #[arg(long, num_args = 1..)]
    rows_read: Vec<String>,
    /// A copy of DIR's index without the list indexes (as the registry
    /// before them left it), for --rows-read.
    #[arg(long)]
    old_data: Option<PathBuf>,
}

/// The filter of a `GET /v1/objects` query (values unescaped), with the
/// registry's page of 1,000 (and one more, which says there is a next).
fn filter_of(query: &str) -> anyhow::Result<Filter> {
    let mut f = Filter { limit: 1001, ..Filter::default() };
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').with_context(|| format!("{pair:?}: not name=value"))?;
        let v = Some(v.to_owned());
        match k {
            "kernel_release" => f.kernel_release = v,
            "arch" => f.arch = v,
            "version" => f.version = v,
            "uname_version" => f.uname_version = v,
            "config_digest" => f.config_digest = v,
            "q" => f.search = v,
            _ => anyhow::bail!("{k}: not a filter of GET /v1/objects"),
        }
    }
    Ok(f)
}

/// Runs one statement: the ids it returns and its VM steps.
fn run(c: &rusqlite::Connection, st: &ListSql) -> anyhow::Result<(Vec<i64>, i64)> {
    let mut s = c.prepare(&st.sql)?;
    let ids = s.query_map(rusqlite::params_from_iter(&st.params), |r| r.get(0))?.collect::<Result<Vec<i64>, _>>()?;
    Ok((ids, i64::from(s.get_status(rusqlite::StatementStatus::VmStep))))
}

/// Every page of `f` on `db`, each read by `statements` (a statement and
/// the one that finishes a page the first did not fill): (pages, rows,
/// VM steps per page).
fn walk_steps(
    db: &std::path::Path,
    f: &Filter,
    statements: impl Fn(&Filter) -> (ListSql, Option<ListRest>),
) -> anyhow::Result<(usize, usize, f64)> {
    let c = rusqlite::Connection::open_with_flags(db.join("index.sqlite"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let (mut pages, mut rows, mut steps) = (0, 0, 0);
    let mut f = f.clone();
    loop {
        let (first, rest) = statements(&f);
        let (mut ids, mut n) = run(&c, &first)?;
        if let Some(rest) = rest.filter(|_| (ids.len() as i64) < f.limit) {
            let last: Option<i64> = c.query_row(LAST_ID, [], |r| r.get(0))?;
            if last.is_some_and(|last| last > rest.window) {
                let (more, m) = run(&c, &rest.sql)?;
                ids.extend(more);
                ids.truncate(usize::try_from(f.limit)?);
                n += m;
            }
        }
        pages += 1;
        steps += n;
        let page = ids.len().min(1000);
        rows += page;
        if ids.len() <= 1000 {
            return Ok((pages, rows, steps as f64 / pages as f64));
        }
        f.after = ids[page - 1];
    }
}

/// `--rows-read`: VM steps per page of each query, now and (with
/// `--old-data`) as before.
async fn rows_read(args: &Args) -> anyhow::Result<()> {
    // What every process does at open: the list indexes made if missing.
    let t = Instant::now();
    bpfarm_registry::repo::Repo::open(&args.data).await?.close().await;
    println!("rows read: DIR opened (list indexes made where missing) in {:.2} s", t.elapsed().as_secs_f64());
    for query in &args.rows_read {
        let f = filter_of(query)?;
        let (pages, rows, new) = walk_steps(&args.data, &f, list_statements)?;
        let mut line = format!("rows read: {query}: {rows} objects in {pages} pages, {new:.0} VM steps a page");
        if let Some(old) = &args.old_data {
            let (old_pages, old_rows, before) =
                walk_steps(old, &f, |f| (bpfarm_registry::repo::list_statement_as_before(f), None))?;
            anyhow::ensure!((old_pages, old_rows) == (pages, rows), "{query}: the walks disagree");
            line.push_str(&format!("; before the list indexes {before:.0} (new/old {:.4}x)", new / before));
        }
        println!("{line}");
    }
    Ok(())
}

/// Times the set-based and the one-by-one faces check on the same data.
async fn time_check(state: &bpfarm_registry::AppState) -> anyhow::Result<()> {
    let oci_repo = state.settings.canonical_repo();
    let t = Instant::now();
    let fast = bpfarm_registry::faces::disagreements(&state.repo, &state.blobs, &oci_repo).await?;
    let fast_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let slow = bpfarm_registry::faces::disagreements_one_by_one(&state.repo, &state.blobs, &oci_repo).await?;
    let slow_s = t.elapsed().as_secs_f64();
    println!(
        "faces check: set-based {fast_s:.2} s ({} disagree), one by one {slow_s:.2} s ({} disagree): {:.1}x",
        fast.len(),
        slow.len(),
        slow_s / fast_s
    );
    anyhow::ensure!(fast.len() == slow.len(), "the two checks disagree");
    Ok(())
}

/// The release of synthetic kernel `k`.
fn release(k: usize) -> String {
    format!("{}.{}.{}-{}-fleet-amd64", 4 + k % 3, k / 1000 % 20, k % 1000, k / 20_000)
}

fn metadata(
    release: &str,
    version: &str,
    digest: &Digest,
    size: usize,
) -> anyhow::Result<bpfarm_object::ObjectMetadata> {
    let id = bpfarm_object::Identity::new(release, bpfarm_object::Arch::X86_64, version)?;
    let v = serde_json::json!({
        "kernel_release": release, "arch": "x86_64", "version": version, "file_name": id.file_name(),
        "digest": digest.as_str(), "size": size, "kernel": {}, "build_mode": "btf", "sources": [],
        "program_digest": Digest::of_bytes(b"fleet").as_str(),
        "compiler": {"clang": "clang"}, "flags": {"clang": [], "llc": []}, "built_at": "2026-11-27T00:00:00Z",
    });
    Ok(serde_json::from_value(v)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.rows_read.is_empty() {
        return rows_read(&args).await;
    }
    let state = bpfarm_registry::open_tool(&args.data, bpfarm_registry::Settings::default()).await?;
    if args.time_check {
        return time_check(&state).await;
    }
    let oci_repo = state.settings.canonical_repo();
    let started = Instant::now();
    let versions: Vec<String> = (0..args.versions).map(|v| format!("v1.{v}.0")).collect();
    let mut pending = 0;
    let mut tx = state.repo.begin_write().await?;
    for k in 0..args.kernels {
        let rel = release(k);
        let mut bytes = Vec::with_capacity(args.blob_bytes);
        while bytes.len() < args.blob_bytes {
            bytes.extend_from_slice(Digest::of_bytes(format!("{rel}/{}", bytes.len()).as_bytes()).hex().as_bytes());
        }
        bytes.truncate(args.blob_bytes);
        let digest = state.blobs.put_bytes(&bytes).await.context("storing a blob")?;
        for version in &versions {
            let meta = metadata(&rel, version, &digest, bytes.len())?;
            publish::make_current(&mut tx, &state.blobs, &oci_repo, &meta, Replace::No).await?;
            pending += 1;
            if pending == args.batch {
                tx.commit().await?;
                tx = state.repo.begin_write().await?;
                pending = 0;
            }
        }
    }
    tx.commit().await?;
    let n = args.kernels * args.versions;
    eprintln!("seeded {n} objects in {:.1} s", started.elapsed().as_secs_f64());
    // The releases, for the bench's simulated agents.
    for k in 0..args.kernels {
        println!("{}", release(k));
    }
    Ok(())
}
