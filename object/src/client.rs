//! A blocking client for bpfarm's registry API (`/v1`): what the builder
//! publishes with and the agent will fetch with. Every request has a
//! timeout; errors name the URL and carry the registry's message.

use std::time::Duration;

use crate::{Digest, ObjectMetadata};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url}: {message}")]
    Http { url: String, status: u16, message: String },
    #[error("{url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: ureq::Error,
    },
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Http { status, .. } => Some(*status),
            ClientError::Transport { .. } => None,
        }
    }
}

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// New on the registry.
    Published,
    /// The registry already held these exact bytes for the identity.
    Skipped,
}

#[derive(Debug, Clone)]
pub struct RegistryClient {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl RegistryClient {
    /// `base` like `http://127.0.0.1:8080` (a trailing `/` is fine).
    pub fn new(base: &str, token: Option<String>, timeout: Duration) -> Self {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false).build().into();
        Self { base: base.trim_end_matches('/').to_owned(), token, agent }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn check(
        &self,
        url: &str,
        resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, String), ClientError> {
        let mut resp = resp.map_err(|source| ClientError::Transport { url: url.to_owned(), source })?;
        let status = resp.status().as_u16();
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        if status >= 400 {
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("HTTP {status}: {}", body.trim()));
            return Err(ClientError::Http { url: url.to_owned(), status, message });
        }
        Ok((status, body))
    }

    /// The current object's metadata for an identity, if the registry has one.
    pub fn lookup(&self, release: &str, arch: &str, version: &str) -> Result<Option<ObjectMetadata>, ClientError> {
        let url = self.url(&format!("/v1/objects/{arch}/{version}/{release}"));
        let mut req = self.agent.get(&url);
        if let Some(t) = &self.token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        match self.check(&url, req.call()) {
            Ok((_, body)) => serde_json::from_str(&body).map(Some).map_err(|e| ClientError::Http {
                url,
                status: 200,
                message: format!("unreadable metadata: {e}"),
            }),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Uploads the object's bytes, then its metadata. Refusals (409 for a
    /// different object under the same identity) come back as errors.
    pub fn publish(&self, meta: &ObjectMetadata, bytes: &[u8], replace: bool) -> Result<Published, ClientError> {
        if self
            .lookup(&meta.identity.kernel_release, meta.identity.arch.uname(), &meta.identity.version)?
            .is_some_and(|m| m.digest == meta.digest)
        {
            return Ok(Published::Skipped);
        }
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let blob_url = self.url(&format!("/v1/blobs/{}", meta.digest));
        let mut put = self.agent.put(&blob_url).header("Content-Type", "application/octet-stream");
        if let Some(a) = &auth {
            put = put.header("Authorization", a);
        }
        self.check(&blob_url, put.send(bytes))?;
        let obj_url = self.url(if replace { "/v1/objects?replace=true" } else { "/v1/objects" });
        let mut post = self.agent.post(&obj_url).header("Content-Type", "application/json");
        if let Some(a) = &auth {
            post = post.header("Authorization", a);
        }
        let (status, _) = self.check(&obj_url, post.send(serde_json::to_vec(meta).expect("metadata serializes")))?;
        Ok(if status == 201 { Published::Published } else { Published::Skipped })
    }

    /// Tells the registry a kernel failed to build (shown on its coverage page).
    pub fn report_failure(&self, release: &str, arch: &str, version: &str, message: &str) -> Result<(), ClientError> {
        let url = self.url("/v1/failures");
        let mut post = self.agent.post(&url).header("Content-Type", "application/json");
        if let Some(t) = &self.token {
            post = post.header("Authorization", &format!("Bearer {t}"));
        }
        let body =
            serde_json::json!({ "kernel_release": release, "arch": arch, "version": version, "message": message });
        self.check(&url, post.send(body.to_string()))?;
        Ok(())
    }

    /// Downloads a blob and checks it against `digest` before returning it.
    pub fn download(&self, digest: &Digest) -> Result<Vec<u8>, ClientError> {
        let url = self.url(&format!("/v1/blobs/{digest}"));
        let mut req = self.agent.get(&url);
        if let Some(t) = &self.token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let mut resp = req.call().map_err(|source| ClientError::Transport { url: url.clone(), source })?;
        if resp.status().as_u16() >= 400 {
            return Err(ClientError::Http { url, status: resp.status().as_u16(), message: "download failed".into() });
        }
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_vec()
            .map_err(|source| ClientError::Transport { url: url.clone(), source })?;
        let actual = Digest::of_bytes(&bytes);
        if &actual != digest {
            return Err(ClientError::Http {
                url,
                status: 200,
                message: format!("received bytes hash to {actual}, expected {digest}"),
            });
        }
        Ok(bytes)
    }
}
