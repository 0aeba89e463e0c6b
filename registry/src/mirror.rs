//! `bpfarm-registry mirror`: an incremental sync from an upstream bpfarm
//! registry (its `/v1` list and blobs) into this data folder, for a DMZ
//! host that an air-gapped site then reads.
//!
//! Only what is missing is fetched: an object whose identity already has
//! the same digest here is skipped, a blob already stored is not fetched
//! again. Every read goes through bpfarm_object's transport (TLS with the
//! system roots and `--ca-cert`, plain http only to loopback or with
//! `--insecure`, one deadline per request, bodies capped at the size the
//! metadata names), every blob is verified against its digest by the
//! client and again by the store, and becomes visible whole or not at all;
//! an object is then published through the `/v1` rules, replacing an older
//! object of its identity as the upstream did. Interrupted, a rerun
//! completes: what was stored is skipped.

use std::path::PathBuf;
use std::time::Duration;

use bpfarm_object::ObjectMetadata;
use bpfarm_object::client::RegistryClient;
use bpfarm_object::http::{Overflow, Transport, TransportConfig};
use serde_json::Value;

use crate::error::Error;
use crate::publish::{self, Outcome, Replace};
use crate::state::AppState;

/// Objects asked for per page of the upstream's list.
const PAGE: u32 = 200;
/// Cap on one page of the upstream's list.
const PAGE_LIMIT: u64 = 32 << 20;

#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// `http(s)://HOST[:PORT]` of a bpfarm registry.
    pub from: String,
    /// A read token for it.
    pub token: Option<String>,
    pub ca_certs: Vec<PathBuf>,
    pub insecure: bool,
    /// Deadline of one request.
    pub timeout: Duration,
    /// Largest object fetched.
    pub max_blob_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("{0} is not a bpfarm registry URL (http(s)://HOST[:PORT]); mirroring an OCI registry is not supported yet")]
    Source(String),
    #[error(transparent)]
    Transport(#[from] bpfarm_object::http::TransportError),
    #[error(transparent)]
    Client(#[from] bpfarm_object::client::ClientError),
    #[error("{url}: {message}")]
    Upstream { url: String, message: String },
    #[error("{url}: no answer within {}s (--timeout)", .after.as_secs())]
    Timeout { url: String, after: Duration },
    #[error(transparent)]
    Registry(#[from] Error),
    #[error("the mirror task: {0}")]
    Task(String),
}

/// What a mirror run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorReport {
    /// Blobs fetched (and verified).
    pub fetched: usize,
    pub bytes: u64,
    /// Objects already here with the same digest.
    pub present: usize,
    /// Objects made current (new or replacing).
    pub published: usize,
    pub warnings: Vec<String>,
}

/// Syncs `state` from `config.from` (see the module docs).
pub async fn mirror(state: &AppState, config: &MirrorConfig) -> Result<MirrorReport, MirrorError> {
    let handle = tokio::runtime::Handle::current();
    let state = state.clone();
    let config = config.clone();
    // The transport owns a runtime of its own: it is driven (and dropped)
    // from a blocking thread, and storage calls go back to this runtime.
    tokio::task::spawn_blocking(move || run(&handle, &state, &config))
        .await
        .map_err(|e| MirrorError::Task(e.to_string()))?
}

fn run(h: &tokio::runtime::Handle, state: &AppState, config: &MirrorConfig) -> Result<MirrorReport, MirrorError> {
    let base = config.from.trim_end_matches('/').to_owned();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(MirrorError::Source(config.from.clone()));
    }
    let transport = Transport::new(TransportConfig {
        ca_certs: config.ca_certs.clone(),
        insecure: config.insecure,
        timeout: config.timeout,
        max_object_bytes: config.max_blob_bytes,
    })?;
    let mut report = MirrorReport::default();
    if let Some(w) = transport.check_url(&base)? {
        report.warnings.push(w);
    }
    let client = RegistryClient::new(&base, config.token.clone(), &transport)?;
    let headers: Vec<(String, String)> =
        config.token.iter().map(|t| ("Authorization".to_owned(), format!("Bearer {t}"))).collect();
    let canonical = state.settings.canonical_repo();
    let within = |url: &str| {
        let after = config.timeout;
        let url = url.to_owned();
        move || MirrorError::Timeout { url, after }
    };
    let mut after = 0i64;
    loop {
        let url = format!("{base}/v1/objects?limit={PAGE}&after={after}");
        let r =
            transport.within(transport.get(&url, &headers, PAGE_LIMIT, Overflow::Error)).ok_or_else(within(&url))??;
        if r.status != 200 {
            return Err(MirrorError::Upstream { url, message: format!("HTTP {}: {}", r.status, r.message()) });
        }
        let page: Value = serde_json::from_slice(&r.body)
            .map_err(|e| MirrorError::Upstream { url: url.clone(), message: format!("the list is not JSON: {e}") })?;
        let entries = page["objects"].as_array().ok_or_else(|| MirrorError::Upstream {
            url: url.clone(),
            message: "the list has no objects array".into(),
        })?;
        for e in entries {
            let meta: ObjectMetadata = serde_json::from_value(e.clone()).map_err(|err| MirrorError::Upstream {
                url: url.clone(),
                message: format!("an entry is not object metadata: {err}"),
            })?;
            let id = &meta.identity;
            let here = h
                .block_on(state.repo.current(&id.kernel_release, id.arch.uname(), &id.version))
                .map_err(Error::from)?;
            if here.is_some_and(|row| row.digest == meta.digest.as_str()) {
                report.present += 1;
                continue;
            }
            if h.block_on(state.blobs.size(&meta.digest)).is_none() {
                let blob_url = format!("{base}/v1/blobs/{}", meta.digest);
                let bytes = transport.within(client.fetch_object(&meta)).ok_or_else(within(&blob_url))??;
                let n = bytes.len() as u64;
                let body = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(bytes))]);
                h.block_on(state.blobs.put(&meta.digest, body, config.max_blob_bytes)).map_err(Error::from)?;
                report.fetched += 1;
                report.bytes += n;
            }
            let outcome = h.block_on(publish::publish(&state.repo, &state.blobs, &canonical, &meta, Replace::Yes))?;
            if outcome != Outcome::Unchanged {
                report.published += 1;
            }
        }
        match page["next"].as_i64() {
            Some(n) if n > after => after = n,
            Some(_) => {
                return Err(MirrorError::Upstream { url, message: "the list's next cursor does not advance".into() });
            }
            None => break,
        }
    }
    Ok(report)
}
