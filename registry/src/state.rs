//! What every request and service shares: the storage (`repo`, `blobs`),
//! the operator's `Settings` and the metrics registry. Nothing here speaks
//! HTTP.

use std::sync::Arc;
use std::time::Duration;

use crate::blobs::BlobStore;
use crate::metrics::Metrics;
use crate::repo::Repo;

/// Server settings beyond the data folder.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Reads need a read (or push) token too (`/metrics` included, unless
    /// it is served on its own listener).
    pub require_read_token: bool,
    /// Largest object accepted through `/v1`, in bytes.
    pub max_object_bytes: u64,
    /// Largest blob accepted through the OCI API, in bytes.
    pub max_blob_bytes: u64,
    /// `/v1` objects appear in OCI as `<namespace>/tracee-bpf`.
    pub oci_namespace: String,
    /// Unfinished OCI upload sessions older than this are removed.
    pub upload_ttl: Duration,
    /// Serve `/metrics` on the API listener (off when `--metrics-listen`
    /// gives it a listener of its own).
    pub metrics_on_api: bool,
    /// `--trusted-key`: publishes through `/v1` and `/v2` must carry a
    /// signature by one of these keys (see `signatures`).
    pub trusted_keys: Option<bpfarm_object::sign::TrustedKeys>,
    /// Most published matrices (`PUT /v1/matrices/<name>` of a new name
    /// beyond it is refused; replacing one is not).
    pub max_matrices: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            require_read_token: false,
            max_object_bytes: 64 << 20,
            max_blob_bytes: 2 << 30,
            oci_namespace: "bpfarm".into(),
            upload_ttl: Duration::from_secs(3600),
            metrics_on_api: true,
            trusted_keys: None,
            max_matrices: 256,
        }
    }
}

impl Settings {
    /// The OCI repository `/v1` objects appear in.
    pub fn canonical_repo(&self) -> String {
        canonical_repo(&self.oci_namespace)
    }
}

/// `<namespace>/tracee-bpf`, where `/v1` objects appear in OCI.
pub fn canonical_repo(namespace: &str) -> String {
    format!("{namespace}/{}", bpfarm_object::oci::REPOSITORY)
}

/// The registry a request is served from: one shared handle, so the clone
/// every extractor and middleware takes per request is one reference
/// count, never a copy of the store's path or of the settings.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

/// What an `AppState` shares (reached through it: `state.repo`, ...).
#[derive(Debug)]
pub struct Shared {
    pub repo: Repo,
    pub blobs: BlobStore,
    pub settings: Settings,
    metrics: Arc<Metrics>,
}

impl AppState {
    pub fn new(repo: Repo, blobs: BlobStore, settings: Settings) -> Self {
        Self(Arc::new(Shared { repo, blobs, settings, metrics: Arc::new(Metrics::default()) }))
    }

    /// The same registry (index, settings, metrics) over `blobs`.
    pub fn with_blobs(&self, blobs: BlobStore) -> Self {
        Self(Arc::new(Shared {
            repo: self.repo.clone(),
            blobs,
            settings: self.settings.clone(),
            metrics: self.metrics.clone(),
        }))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl Shared {
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}
