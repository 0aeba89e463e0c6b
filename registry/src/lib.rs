//! bpfarm's registry: a sqlite index and a content-addressed blob store
//! behind an HTTP API with two faces, `/v1` and OCI's `/v2`.
//!
//! Layers, each importing only from the ones below it (the `layering`
//! test holds this, and that there is no import circle):
//!
//! - connections: `server` (timeouts, cap, shutdown) and `tls`;
//! - HTTP faces: `routes` (`/v1`, the page, the static layout, health,
//!   metrics; `app` is the router) and `oci` (`/v2`), with what every
//!   route shares — `auth` (the access middleware and the `Caller` it
//!   hands handlers), `face` (how each face renders an `Error`, its
//!   conventions), `download` (serving a blob), `body` (request bodies
//!   within limits) — and `page` (the coverage page);
//! - services, which know nothing of HTTP: `publish` (every rule about
//!   making an object current), `faces` (an object's OCI form and the
//!   check that it reaches the object), `distribution` (the OCI rules),
//!   `coverage` (counting present / failed / missing against a published
//!   matrix or the releases seen), the offline tools `fsck` and `export`,
//!   and the air-gap and retention tools `bundle` (an OCI layout in a
//!   tar), `import` (one checked in full, then published), `mirror` (an
//!   upstream, synced; `oci_mirror` for an `oci://` one) and `gc` (unreferenced blobs, old versions);
//! - the shared vocabulary: `state` (`AppState`, `Settings`), `error` (the
//!   one `Error` the services return);
//! - storage and plumbing: `repo` (the only module that runs SQL; `memo`
//!   keeps its hottest reads' answers while the index is unchanged), `blobs`
//!   (the only one that touches blob files; `hot` is its in-memory cache
//!   of hot blobs for downloads), `tokens`, `manifest` (parsing
//!   pushed manifests), `metrics`.

pub mod auth;
pub mod blobs;
pub mod body;
pub mod bundle;
pub mod coverage;
pub mod distribution;
pub mod download;
pub mod error;
pub mod export;
pub mod face;
pub mod faces;
pub mod fsck;
pub mod gc;
pub mod hot;
pub mod import;
pub mod manifest;
pub mod memo;
pub mod metrics;
pub mod mirror;
pub mod oci;
pub mod oci_mirror;
pub mod page;
pub mod publish;
pub mod repo;
pub mod routes;
pub mod server;
pub mod signatures;
pub mod state;
pub mod tls;
pub mod tokens;

use std::path::{Path, PathBuf};

pub use error::Error;
pub use routes::{app, metrics_app};
pub use state::{AppState, Settings};

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("creating {}: {source}", .path.display())]
    Create { path: PathBuf, source: std::io::Error },
    #[error("opening the index in {}: {source}", .path.display())]
    Index { path: PathBuf, source: sqlx::Error },
    #[error("opening the blob store in {}: {source}", .path.display())]
    Blobs { path: PathBuf, source: std::io::Error },
    #[error("checking /v1 against OCI: {0}")]
    Faces(#[from] Error),
}

async fn open_with(data: &Path, settings: Settings, serving: bool) -> Result<AppState, OpenError> {
    tokio::fs::create_dir_all(data).await.map_err(|source| OpenError::Create { path: data.to_owned(), source })?;
    let repo = repo::Repo::open(data).await.map_err(|source| OpenError::Index { path: data.to_owned(), source })?;
    let blobs = if serving { blobs::BlobStore::open(data).await } else { blobs::BlobStore::attach(data).await }
        .map_err(|source| OpenError::Blobs { path: data.to_owned(), source })?;
    Ok(AppState::new(repo, blobs, settings))
}

/// Opens (creating) a registry's storage under `data` to serve it:
/// unfinished writes are dropped, and every current object whose OCI form
/// is missing or does not reach it (an older version's crash between the
/// two) gets it rewritten before the first request.
pub async fn open(data: &Path, settings: Settings) -> Result<AppState, OpenError> {
    let state = open_with(data, settings, true).await?;
    let oci_repo = state.settings.canonical_repo();
    let bad = faces::disagreements(&state.repo, &state.blobs, &oci_repo).await?;
    for d in &bad {
        tracing::warn!("{}: /v1 and OCI disagree ({}); rewriting its OCI form", faces::describe(&d.row), d.why);
        publish::heal(&state.repo, &state.blobs, &oci_repo, &d.row).await?;
    }
    if !bad.is_empty() {
        tracing::info!(repaired = bad.len(), "OCI forms rewritten at start");
    }
    Ok(state)
}

/// Opens a registry's storage for a tool (`token`, `export`, `fsck`) that
/// may run beside a serving registry: nothing is cleaned or repaired.
pub async fn open_tool(data: &Path, settings: Settings) -> Result<AppState, OpenError> {
    open_with(data, settings, false).await
}
