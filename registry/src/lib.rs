//! bpfarm's registry: a sqlite index and a content-addressed blob store
//! behind an HTTP API.
//!
//! Layering: `routes` (HTTP, auth, errors) → `publish` (the publish rules)
//! → `repo` (the only module that touches SQL) and `blobs` (the only one
//! that touches blob files).

pub mod blobs;
pub mod export;
pub mod oci;
pub mod page;
pub mod publish;
pub mod repo;
pub mod routes;
pub mod tokens;

pub use routes::{AppState, Settings, app};

/// Opens (creating) a registry's storage under `data`.
pub async fn open(data: &std::path::Path, settings: Settings) -> anyhow::Result<AppState> {
    use anyhow::Context;
    tokio::fs::create_dir_all(data).await.with_context(|| format!("creating {}", data.display()))?;
    let repo = repo::Repo::open(data).await.with_context(|| format!("opening the index in {}", data.display()))?;
    let blobs =
        blobs::BlobStore::open(data).await.with_context(|| format!("opening the blob store in {}", data.display()))?;
    Ok(AppState::new(repo, blobs, settings))
}
