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
//! what it ran before), and prints both.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use bpfarm_object::Digest;
use bpfarm_registry::publish::{self, Replace};
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
