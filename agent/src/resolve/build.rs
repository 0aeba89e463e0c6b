//! The local build: where the headers come from and, with the
//! `local-build` feature, the builder's own pipeline (compile, validate,
//! cache, embed the identity). Without the feature this module names the
//! headers it would use and nothing here can reach a compiler.

use std::path::PathBuf;

use super::ResolveConfig;

/// The headers a local build compiles against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderInput {
    /// A configured kernel build tree.
    Tree(PathBuf),
    /// A BTF file (the running kernel's), turned into `vmlinux.h`.
    Btf(PathBuf),
}

/// Why there are no headers to build with. The wording is the trail's.
#[derive(Debug, thiserror::Error)]
pub enum NoHeaders {
    #[error("KERN_HEADERS={0} is not a folder")]
    NotAFolder(PathBuf),
    #[error("no headers: KERN_HEADERS is not set, {} does not exist{}", .build.display(), btf_note(.running))]
    None { build: PathBuf, running: bool },
}

fn btf_note(running: &bool) -> &'static str {
    if *running { ", and this kernel has no BTF" } else { ", and BTF is only used for the running kernel" }
}

/// `KERN_HEADERS`, else `/lib/modules/<release>/build`, else the running
/// kernel's BTF; with how they are described in the trail.
pub fn header_source(cfg: &ResolveConfig) -> Result<(HeaderInput, String), NoHeaders> {
    if let Some(h) = &cfg.kern_headers {
        if h.is_dir() {
            return Ok((HeaderInput::Tree(h.clone()), format!("KERN_HEADERS={}", h.display())));
        }
        return Err(NoHeaders::NotAFolder(h.clone()));
    }
    let build = PathBuf::from(format!("/lib/modules/{}/build", cfg.identity.kernel_release));
    if build.join("include/generated/autoconf.h").is_file() || build.join("include/config/kernel.release").is_file() {
        return Ok((HeaderInput::Tree(build.clone()), build.display().to_string()));
    }
    let btf = PathBuf::from("/sys/kernel/btf/vmlinux");
    if cfg.running_kernel && btf.is_file() {
        return Ok((HeaderInput::Btf(btf.clone()), format!("the running kernel's BTF ({})", btf.display())));
    }
    Err(NoHeaders::None { build, running: cfg.running_kernel })
}

#[cfg(feature = "local-build")]
pub use compile::{BuildError, Built, build_locally};

#[cfg(feature = "local-build")]
mod compile {
    use std::fs;
    use std::path::PathBuf;

    use bpfarm_builder::build::{self, BtfInput, BuildConfig, Request};
    use bpfarm_builder::program::ProgramSources;
    use bpfarm_object::{Hashed, KernelFacts, ObjectMetadata, host};

    use super::HeaderInput;
    use crate::resolve::ResolveConfig;
    use crate::resolve::install::install;
    use crate::resolve::verify::{Rejected, Verified, verify};
    use crate::trust::{TrustError, TrustedDir};

    /// What a local build made: the installed object, its verified bytes
    /// and the metadata the builder produced for it (in memory; the `.json`
    /// it also wrote is not read back).
    #[derive(Debug)]
    pub struct Built {
        pub path: PathBuf,
        pub verified: Verified,
        pub metadata: ObjectMetadata,
    }

    /// Why a local build gave nothing.
    #[derive(Debug, thiserror::Error)]
    pub enum BuildError {
        #[error(transparent)]
        Trust(#[from] TrustError),
        #[error("{path}: {source}")]
        Io {
            path: PathBuf,
            #[source]
            source: std::io::Error,
        },
        #[error(transparent)]
        Builder(#[from] build::BuildError),
        #[error("the build produced nothing")]
        Nothing,
        /// The builder's message for the kernel, as its report has it.
        #[error("{0}")]
        Failed(String),
        #[error("the headers are for kernel {found}, not {wanted}")]
        OtherKernel { found: String, wanted: String },
        #[error("the build produced no object")]
        NoObject,
        #[error(transparent)]
        Rejected(#[from] Rejected),
    }

    /// Builds with the builder's own pipeline (compile, validate, cache,
    /// embed the identity), verifies the result like any other candidate
    /// and installs it.
    pub fn build_locally(cfg: &ResolveConfig, input: HeaderInput) -> Result<Built, BuildError> {
        let id = &cfg.identity;
        TrustedDir::open_or_create(&cfg.install_path)?;
        let out = tempfile::Builder::new()
            .prefix(".build-")
            .tempdir_in(&cfg.install_path)
            .map_err(|source| BuildError::Io { path: cfg.install_path.clone(), source })?;
        let mut req = Request::default();
        match input {
            HeaderInput::Tree(t) => req.headers.push(t),
            HeaderInput::Btf(file) => req.btf.push(BtfInput {
                file,
                release: id.kernel_release.clone(),
                arch: id.arch,
                // Read now: finding or fetching never needs it. Only for
                // the running kernel: `/proc/config.gz` is its config, not
                // another release's.
                facts: KernelFacts {
                    config_digest: cfg.kernel.config_digest.clone().or_else(|| {
                        let running = host::running_release().is_ok_and(|(r, _)| r == id.kernel_release);
                        running.then(|| host::config_digest(&id.kernel_release)).flatten()
                    }),
                    ..cfg.kernel.clone()
                },
            }),
        }
        let bcfg = BuildConfig {
            cache_dir: cfg.install_path.join(".cache"),
            out_dir: out.path().to_owned(),
            version: id.version.clone(),
            program: ProgramSources::embedded(),
            jobs: 1,
            shard: None,
            retry_failed: true,
            progress_bar: false,
            limits: Default::default(),
            sandbox: Default::default(),
        };
        let report = build::run(&bcfg, &req)?;
        let row = report.kernels.first().ok_or(BuildError::Nothing)?;
        if let Some(f) = row.failure() {
            return Err(BuildError::Failed(f.message.clone()));
        }
        if row.kernel != id.kernel_release {
            return Err(BuildError::OtherKernel { found: row.kernel.clone(), wanted: id.kernel_release.clone() });
        }
        let output = row.output().ok_or(BuildError::NoObject)?;
        let bytes = fs::read(&output.path).map_err(|source| BuildError::Io { path: output.path.clone(), source })?;
        let metadata = output.metadata.clone();
        let (verified, _) = verify(Hashed::new(bytes), id, Some(&metadata), false)?;
        let path = install(&cfg.install_path, &verified.bytes, &metadata, None)?;
        Ok(Built { path, verified, metadata })
    }
}
