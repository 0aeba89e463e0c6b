//! Publishing a build's objects to a registry, after validation: each object
//! with the metadata written beside it. Objects the registry already holds
//! (same digest) are skipped; a registry that holds a different object for
//! the identity refuses, and that is reported, not retried.

use std::path::Path;

use bpfarm_object::ObjectMetadata;
use bpfarm_object::client::{Published, RegistryClient};
use bpfarm_object::oci_client::OciRegistry;

/// Where `--publish` sends objects: a bpfarm registry's `/v1` API, or any
/// OCI registry (`oci://HOST/NAMESPACE`).
#[derive(Debug)]
pub enum Destination {
    Registry(RegistryClient),
    Oci(Box<OciRegistry>),
}

impl Destination {
    fn publish(&self, meta: &ObjectMetadata, bytes: &[u8]) -> Result<Published, (Outcome, String)> {
        match self {
            Destination::Registry(c) => c
                .publish(meta, bytes, false)
                .map_err(|e| (if e.status() == Some(409) { Outcome::Refused } else { Outcome::Failed }, e.to_string())),
            Destination::Oci(r) => r.publish(meta, bytes).map_err(|e| (Outcome::Failed, format!("{e:#}"))),
        }
    }
}
use serde::Serialize;

use crate::build::{Report, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Published,
    Skipped,
    Refused,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct PublishResult {
    pub kernel: String,
    pub object: String,
    pub outcome: Outcome,
    pub message: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PublishSummary {
    pub registry: String,
    pub published: usize,
    pub skipped: usize,
    pub refused: usize,
    pub failed: usize,
    /// Failed builds reported to the registry (for its coverage page).
    pub failures_reported: usize,
    pub results: Vec<PublishResult>,
}

impl PublishSummary {
    pub fn ok(&self) -> bool {
        self.refused == 0 && self.failed == 0
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        for r in self.results.iter().filter(|r| matches!(r.outcome, Outcome::Refused | Outcome::Failed)) {
            s += &format!("publish {:?} {}: {}\n", r.outcome, r.kernel, r.message.as_deref().unwrap_or(""));
        }
        s += &format!(
            "published to {}: {} published, {} skipped, {} refused, {} failed; {} build failures reported\n",
            self.registry, self.published, self.skipped, self.refused, self.failed, self.failures_reported
        );
        s
    }
}

fn publish_one(dest: &Destination, object: &Path) -> Result<Published, (Outcome, String)> {
    let name = object.file_name().expect("object has a name").to_string_lossy();
    let meta_path = object.with_file_name(format!("{name}.json"));
    let meta: ObjectMetadata = std::fs::read(&meta_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| (Outcome::Failed, format!("{}: {e}", meta_path.display())))?;
    let bytes = std::fs::read(object).map_err(|e| (Outcome::Failed, format!("{}: {e}", object.display())))?;
    dest.publish(&meta, &bytes)
}

/// Publishes every object the build produced (built or from the cache).
pub fn publish(report: &Report, dest: &Destination, registry: &str) -> PublishSummary {
    let mut summary = PublishSummary { registry: registry.to_owned(), ..Default::default() };
    for k in report.kernels.iter().filter(|k| k.status != Status::Failed) {
        let Some(object) = &k.object else { continue };
        let (outcome, message) = match publish_one(dest, object) {
            Ok(Published::Published) => (Outcome::Published, None),
            Ok(Published::Skipped) => (Outcome::Skipped, None),
            Err((o, m)) => (o, Some(m)),
        };
        match outcome {
            Outcome::Published => summary.published += 1,
            Outcome::Skipped => summary.skipped += 1,
            Outcome::Refused => summary.refused += 1,
            Outcome::Failed => summary.failed += 1,
        }
        summary.results.push(PublishResult {
            kernel: k.kernel.clone(),
            object: object.display().to_string(),
            outcome,
            message,
        });
    }
    // Failed builds are news for the registry's coverage page; reporting
    // them is best effort and never fails the build.
    let Destination::Registry(client) = dest else { return summary };
    for k in report.kernels.iter().filter(|k| k.status == Status::Failed && k.release_known) {
        // Only the publishable part: compiler errors about the tree, capped.
        let (Some(arch), Some(error)) = (k.arch, &k.public_error) else { continue };
        match client.report_failure(&k.kernel, arch.uname(), &report.version, error) {
            Ok(()) => summary.failures_reported += 1,
            Err(e) => tracing::warn!("reporting the failure of {} to {registry}: {e}", k.kernel),
        }
    }
    summary
}
