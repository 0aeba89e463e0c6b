//! The build report: one row per kernel with its outcome (the object and
//! its metadata, in memory, or why it failed), the summary, the terminal
//! table and the JSON `--report` form.

use std::path::{Path, PathBuf};

use bpfarm_object::{Arch, Digest, ObjectMetadata};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Compiled in this run.
    Built,
    /// Taken from the object cache.
    Cached,
    Failed,
}

/// An object in the output folder and its metadata (written beside it as
/// `<file name>.json`), kept in memory for whatever comes next (publish,
/// the agent's install).
#[derive(Debug, Clone)]
pub struct Output {
    pub path: PathBuf,
    pub metadata: ObjectMetadata,
}

/// Why a kernel did not build.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The whole message (report, logs).
    pub message: String,
    /// What of it may be published (to a registry's coverage page):
    /// compiler errors located in the kernel's headers or the program,
    /// host folders replaced, capped (see `diagnostics`).
    pub public: String,
    /// One line for the terminal table (a compiler's first error).
    pub headline: String,
    /// Replayed from the cache (retry with `--retry-failed`).
    pub replayed: bool,
}

/// What became of a kernel.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Compiled in this run.
    Built(Output),
    /// Taken from the object cache.
    Cached(Output),
    Failed(Failure),
}

/// One kernel's row in the report.
#[derive(Debug, Clone)]
pub struct KernelResult {
    /// The kernel release, or the package name when it could not be read.
    pub kernel: String,
    pub arch: Option<Arch>,
    /// `kernel` is the kernel release (not a package name or path).
    pub release_known: bool,
    pub duration_ms: u64,
    pub outcome: Outcome,
}

impl KernelResult {
    pub fn status(&self) -> Status {
        match self.outcome {
            Outcome::Built(_) => Status::Built,
            Outcome::Cached(_) => Status::Cached,
            Outcome::Failed(_) => Status::Failed,
        }
    }

    /// The object written, unless the kernel failed.
    pub fn output(&self) -> Option<&Output> {
        match &self.outcome {
            Outcome::Built(o) | Outcome::Cached(o) => Some(o),
            Outcome::Failed(_) => None,
        }
    }

    pub fn failure(&self) -> Option<&Failure> {
        match &self.outcome {
            Outcome::Failed(f) => Some(f),
            _ => None,
        }
    }
}

/// The report's JSON row (`--report`, read by `ci/coverage-gate`): flat,
/// as it has always been.
impl Serialize for KernelResult {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Row<'a> {
            kernel: &'a str,
            arch: Option<Arch>,
            status: Status,
            cached_failure: bool,
            release_known: bool,
            object: Option<&'a Path>,
            digest: Option<&'a Digest>,
            duration_ms: u64,
            error: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            public_error: Option<&'a str>,
        }
        let (out, failure) = (self.output(), self.failure());
        Row {
            kernel: &self.kernel,
            arch: self.arch,
            status: self.status(),
            cached_failure: failure.is_some_and(|f| f.replayed),
            release_known: self.release_known,
            object: out.map(|o| o.path.as_path()),
            digest: out.map(|o| &o.metadata.digest),
            duration_ms: self.duration_ms,
            error: failure.map(|f| f.message.as_str()),
            public_error: failure.map(|f| f.public.as_str()),
        }
        .serialize(s)
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub total: usize,
    pub built: usize,
    pub cached: usize,
    pub failed: usize,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub version: String,
    pub program_digest: Digest,
    /// The compiler's sandbox: `landlock`, `mount-namespace` or `off`.
    pub sandbox: String,
    pub shard: Option<String>,
    pub summary: Summary,
    pub kernels: Vec<KernelResult>,
    /// Where the time went (`--timings`); not part of the JSON report.
    #[serde(skip)]
    pub timings: super::Timings,
}

impl Report {
    pub fn any_failed(&self) -> bool {
        self.summary.failed > 0
    }

    /// A fixed-width table for terminals and logs.
    pub fn table(&self) -> String {
        let w = self.kernels.iter().map(|k| k.kernel.len()).max().unwrap_or(6).max(6);
        let mut s = format!("{:<w$}  {:<7}  {:<6}  {:>7}  {}\n", "KERNEL", "ARCH", "STATUS", "TIME", "OBJECT / ERROR");
        for k in &self.kernels {
            let status = match k.status() {
                Status::Built => "built",
                Status::Cached => "cached",
                Status::Failed => "FAILED",
            };
            let what = match &k.outcome {
                Outcome::Failed(f) => {
                    format!("{}{}", if f.replayed { "(cached failure) " } else { "" }, f.headline)
                }
                Outcome::Built(o) | Outcome::Cached(o) => o.path.display().to_string(),
            };
            let arch = k.arch.map(|a| a.uname()).unwrap_or("?");
            s += &format!(
                "{:<w$}  {:<7}  {:<6}  {:>6.2}s  {}\n",
                k.kernel,
                arch,
                status,
                k.duration_ms as f64 / 1000.0,
                what
            );
        }
        let m = &self.summary;
        s += &format!(
            "{} kernel{}: {} built, {} cached, {} failed in {:.2}s{}\n",
            m.total,
            if m.total == 1 { "" } else { "s" },
            m.built,
            m.cached,
            m.failed,
            m.duration_ms as f64 / 1000.0,
            self.shard.as_ref().map(|s| format!(" (shard {s})")).unwrap_or_default()
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpfarm_object::Identity;

    /// `--report` rows keep the flat shape `ci/coverage-gate` and users read.
    #[test]
    fn report_rows_serialize_flat() {
        let id = Identity::new("6.1.0-56-amd64", Arch::X86_64, "v1").unwrap();
        let meta = ObjectMetadata::unattested(id, Digest::of_bytes(b"o"), 1, bpfarm_object::Origin::StaticLayout);
        let built = KernelResult {
            kernel: "6.1.0-56-amd64".into(),
            arch: Some(Arch::X86_64),
            release_known: true,
            duration_ms: 5,
            outcome: Outcome::Cached(Output { path: "out/x.o".into(), metadata: meta }),
        };
        assert_eq!(
            serde_json::to_value(&built).unwrap(),
            serde_json::json!({ "kernel": "6.1.0-56-amd64", "arch": "x86_64", "status": "cached",
                "cached_failure": false, "release_known": true, "object": "out/x.o",
                "digest": Digest::of_bytes(b"o").to_string(), "duration_ms": 5, "error": null })
        );
        let failed = KernelResult {
            outcome: Outcome::Failed(Failure {
                message: "m".into(),
                public: "p".into(),
                headline: "h".into(),
                replayed: true,
            }),
            ..built
        };
        assert_eq!(
            serde_json::to_value(&failed).unwrap(),
            serde_json::json!({ "kernel": "6.1.0-56-amd64", "arch": "x86_64", "status": "failed",
                "cached_failure": true, "release_known": true, "object": null, "digest": null,
                "duration_ms": 5, "error": "m", "public_error": "p" })
        );
    }
}
