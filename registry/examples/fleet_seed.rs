//! Fills a registry's storage with a synthetic fleet for `bench/fleet.py`:
//! `--kernels` kernel releases times `--versions` tracer versions, each a
//! current object with its OCI form, written through the registry's own
//! publish code (`publish::make_current`) in batched transactions rather
//! than one HTTP publish each. Each kernel has its own small blob (all
//! versions of a kernel share it: only the index is under test).
//!
//!     cargo run --release -p bpfarm-registry --example fleet_seed -- --data DIR --kernels 10000 --versions 10

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
