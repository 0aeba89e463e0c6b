//! Finding the object for this kernel, in the order of docs/contracts.md:
//! `TRACEE_BPF_FILE` → the agent's own folder → the install path → each
//! registry → a local build (only if the policy allows). Every place looked
//! at goes into the trail, with what was found or why not.
//!
//! What is loaded is exactly the bytes that were checked: every candidate
//! is read once (through a checked folder, see `trust`), and its embedded
//! identity must name this kernel release, arch and version. Fetched bytes
//! must also match the registry's digest and size, and its metadata must be
//! for this identity; the install name always comes from the identity,
//! never from the wire. Installs are atomic (temp file + rename) under a
//! lock on the install path. Under `--build-policy never` no code path here
//! reaches the builder, so no compiler process can start; an agent built
//! without the `local-build` feature has no such code path at all.
//!
//! By concern: `local` (the local places), `fetch` (the registries),
//! `verify` (the one gate every candidate passes), `install`, `build` (the
//! headers, and the builder's pipeline with `local-build`). This module
//! holds the order and the trail.

mod build;
mod fetch;
mod install;
mod local;
mod verify;

use std::path::PathBuf;

use bpfarm_object::http::{Transport, TransportConfig, TransportError};
use bpfarm_object::{Arch, Digest, Identity, KernelFacts};

#[cfg(feature = "local-build")]
pub use build::{BuildError, Built};
pub use build::{HeaderInput, NoHeaders};
pub use fetch::{FetchError, Fetched, Via};
pub use install::{PendingInstall, install};
pub use local::Miss;
pub use verify::{Rejected, Verified};

/// `--build-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BuildPolicy {
    /// Find or fetch; never run a compiler.
    Never,
    /// Find or fetch; else build locally.
    IfNeeded,
    /// Build locally even when an object exists.
    Always,
}

/// What the caller wants from resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Find, fetch (and install) or build per the policy.
    Run,
    /// Look only: no downloads, no writes, no builds.
    Locate,
    /// Registries only, installing what is found.
    FetchOnly,
    /// Local build only.
    BuildOnly,
}

#[derive(Debug, Clone)]
pub struct ResolveConfig {
    pub identity: Identity,
    pub kernel: KernelFacts,
    /// `TRACEE_BPF_FILE`.
    pub bpf_file: Option<PathBuf>,
    /// The folder of the agent executable.
    pub exe_dir: Option<PathBuf>,
    pub install_path: PathBuf,
    pub registries: Vec<String>,
    pub registry_headers: Vec<(String, String)>,
    pub registry_token: Option<String>,
    pub policy: BuildPolicy,
    /// `KERN_HEADERS`.
    pub kern_headers: Option<PathBuf>,
    /// Whether the target is the running kernel (its BTF may be used).
    pub running_kernel: bool,
    /// TLS roots, the plain-http rule, the per-registry deadline and the
    /// object size limit.
    pub transport: TransportConfig,
    /// `--force-object`: load a `TRACEE_BPF_FILE` whose embedded identity
    /// is missing or names another kernel (dangerous).
    pub force_object: bool,
    /// `--verify-key`, `--allow-downgrade`, `--state-dir` (see `crate::verify`).
    pub signing: crate::verify::SignPolicy,
}

/// One place looked at.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    pub place: String,
    pub outcome: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    BpfFile,
    ExeDir,
    InstallPath,
    Registry,
    LocalBuild,
}

#[derive(Debug, serde::Serialize)]
pub struct Resolution {
    /// The object to load (for `locate`: where it is or would be).
    pub path: PathBuf,
    pub source: Source,
    /// `locate` only: what would happen (fetch from X, build with Y).
    pub would: Option<String>,
    /// The digest of the verified bytes, when there are bytes.
    pub digest: Option<Digest>,
    pub trail: Vec<Step>,
    /// The verified bytes; `None` only when `locate` found nothing local.
    #[serde(skip)]
    pub object: Option<Verified>,
    /// `run`: the install of a fetched object, still being written.
    #[serde(skip)]
    pub pending_install: Option<PendingInstall>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("TRACEE_BPF_FILE={path} holds no usable {file_name}{}", trail_text(.trail))]
    BpfFileEmpty { path: String, file_name: String, trail: Vec<Step> },
    #[error("no object for kernel {release} ({arch}), version {version}, and the build policy is {policy}; tried:{}", trail_text(.trail))]
    NotFound { release: String, arch: Arch, version: String, policy: &'static str, trail: Vec<Step> },
    #[cfg(feature = "local-build")]
    #[error("local build failed: {source}{}", trail_text(.trail))]
    BuildFailed {
        #[source]
        source: Box<BuildError>,
        trail: Vec<Step>,
    },
    #[error(
        "this agent was built without local builds (the `local-build` feature): it has no compiler path; use --build-policy never, or an agent built with local builds"
    )]
    NoLocalBuild { trail: Vec<Step> },
    #[error("{source}{}", trail_text(.trail))]
    Rollback {
        #[source]
        source: Box<crate::verify::RememberError>,
        trail: Vec<Step>,
    },
    #[error("setting up the registry client: {source}")]
    Transport {
        #[source]
        source: TransportError,
        trail: Vec<Step>,
    },
}

impl ResolveError {
    pub fn trail(&self) -> &[Step] {
        match self {
            ResolveError::BpfFileEmpty { trail, .. }
            | ResolveError::NotFound { trail, .. }
            | ResolveError::NoLocalBuild { trail, .. }
            | ResolveError::Rollback { trail, .. }
            | ResolveError::Transport { trail, .. } => trail,
            #[cfg(feature = "local-build")]
            ResolveError::BuildFailed { trail, .. } => trail,
        }
    }
}

fn trail_text(trail: &[Step]) -> String {
    trail.iter().map(|s| format!("\n  - {}: {}", s.place, s.outcome)).collect()
}

impl BuildPolicy {
    /// As the flag spells it.
    pub fn name(self) -> &'static str {
        match self {
            BuildPolicy::Never => "never",
            BuildPolicy::IfNeeded => "if-needed",
            BuildPolicy::Always => "always",
        }
    }
}

/// The trail being written: every place looked at, with its outcome.
#[derive(Debug, Default)]
pub(crate) struct Trail(Vec<Step>);

impl Trail {
    pub(crate) fn step(&mut self, place: impl Into<String>, outcome: impl Into<String>) {
        self.0.push(Step { place: place.into(), outcome: outcome.into() });
    }
}

/// The registry client, being built on its own thread.
struct EarlyTransport {
    config: TransportConfig,
    thread: Option<std::thread::JoinHandle<Result<Transport, TransportError>>>,
}

impl EarlyTransport {
    fn start(config: TransportConfig) -> Self {
        let for_thread = config.clone();
        // A thread that cannot start only means building it when needed.
        let thread =
            std::thread::Builder::new().name("bpfarm-client".into()).spawn(move || Transport::new(for_thread)).ok();
        Self { config, thread }
    }

    /// The client, built here if the thread could not be started or died.
    fn wait(self) -> Result<Transport, TransportError> {
        match self.thread.map(|t| t.join()) {
            Some(Ok(built)) => built,
            _ => Transport::new(self.config),
        }
    }
}

/// Resolves the object per the config and mode; an object accepted for
/// use moves the rollback record forward (`crate::rollback`).
pub fn resolve(cfg: &ResolveConfig, mode: Mode) -> Result<Resolution, ResolveError> {
    let mut r = resolve_candidates(cfg, mode)?;
    if mode != Mode::Locate
        && let Some(v) = &r.object
    {
        match crate::verify::remember(&cfg.signing, &cfg.identity, &v.digest, v.signature.as_ref()) {
            Ok(Some(note)) => r.trail.push(Step { place: "rollback state".into(), outcome: note }),
            Ok(None) => {}
            // Fail closed: an accepted object whose build time cannot be
            // recorded is not used.
            Err(source) => {
                let mut trail = r.trail;
                trail.push(Step { place: "rollback state".into(), outcome: source.to_string() });
                return Err(ResolveError::Rollback { source: Box::new(source), trail });
            }
        }
    }
    // Accepted (and recorded): only now is a fetched object written to the
    // install path. A failure to start is not fatal: it is used from memory.
    if let Some(pending) = r.pending_install.as_mut()
        && let Err(e) = pending.start()
    {
        r.trail.push(Step { place: "install path".into(), outcome: format!("NOT installed ({e}): used from memory") });
        r.pending_install = None;
    }
    Ok(r)
}

fn resolve_candidates(cfg: &ResolveConfig, mode: Mode) -> Result<Resolution, ResolveError> {
    let id = &cfg.identity;
    let name = id.file_name();
    let mut trail = Trail::default();
    let found = |path: PathBuf, source, v: Verified, trail: Trail| {
        Ok(Resolution {
            path,
            source,
            would: None,
            digest: Some(v.digest.clone()),
            trail: trail.0,
            object: Some(v),
            pending_install: None,
        })
    };
    let would = |source, would: String, trail: Trail| {
        Ok(Resolution {
            path: cfg.install_path.join(&name),
            source,
            would: Some(would),
            digest: None,
            trail: trail.0,
            object: None,
            pending_install: None,
        })
    };
    let not_found = |trail: Trail| ResolveError::NotFound {
        release: id.kernel_release.clone(),
        arch: id.arch,
        version: id.version.clone(),
        policy: cfg.policy.name(),
        trail: trail.0,
    };

    // The registry client (its runtime and HTTP stack) is built on another
    // thread while the local places are searched, so a miss does not wait
    // for it. Nothing goes on the wire before the search has ended: a local
    // hit is used and the registries are never contacted.
    let asks_registries = matches!(mode, Mode::Run | Mode::Locate | Mode::FetchOnly)
        && cfg.policy != BuildPolicy::Always
        && !cfg.registries.is_empty();
    let mut early_transport = asks_registries.then(|| EarlyTransport::start(cfg.transport.clone()));

    // 1-3. TRACEE_BPF_FILE, the agent's own folder, the install path.
    if matches!(mode, Mode::Run | Mode::Locate) && cfg.policy != BuildPolicy::Always {
        match local::search(cfg, &mut trail) {
            local::Local::Found(f) => return found(f.path, f.source, f.verified, trail),
            local::Local::BpfFileEmpty => {
                let path = cfg.bpf_file.as_deref().map(|p| p.display().to_string()).unwrap_or_default();
                return Err(ResolveError::BpfFileEmpty { path, file_name: name.clone(), trail: trail.0 });
            }
            local::Local::Nothing => {}
        }
    }

    // `fetch` under --verify-key replaces the installed object only with a
    // newer signed one (and keeps it when the registries have none).
    let installed =
        if mode == Mode::FetchOnly && cfg.signing.keys.is_some() { local::installed(cfg, &mut trail) } else { None };
    let installed_at = installed.as_ref().and_then(|v| v.signature.as_ref()?.provenance.as_ref()).map(|p| p.built_at);

    // 4. Registries, in order, each within its own --timeout.
    if matches!(mode, Mode::Run | Mode::Locate | Mode::FetchOnly) && cfg.policy != BuildPolicy::Always {
        if cfg.registries.is_empty() {
            trail.step("registries", "none configured (--registry)");
        } else {
            let built = match early_transport.take() {
                Some(early) => early.wait(),
                None => Transport::new(cfg.transport.clone()),
            };
            let transport = match built {
                Ok(t) => t,
                Err(source) => return Err(ResolveError::Transport { source, trail: trail.0 }),
            };
            for base in &cfg.registries {
                let place = format!("registry {base}");
                let (metadata, bytes, via, evidence) =
                    match fetch::fetch_one(&transport, base, cfg, mode == Mode::Locate) {
                        Ok(Fetched::Got { metadata, bytes, via, evidence }) => (metadata, bytes, via, evidence),
                        Ok(Fetched::Available { digest, via, signed }) => {
                            let msg = Fetched::would(&digest, &via, signed);
                            trail.step(place, msg.clone());
                            return would(Source::Registry, msg, trail);
                        }
                        Err(why) => {
                            trail.step(place, why.to_string());
                            continue;
                        }
                    };
                // Every fetched candidate is verified here before it is
                // installed or loaded.
                let (mut v, mut outcome) = match verify::verify(bytes, id, Some(&metadata), false) {
                    Ok(ok) => ok,
                    Err(why) => {
                        trail.step(place, format!("{via}, but {why}"));
                        continue;
                    }
                };
                // Its signature over exactly these bytes; for `fetch`, newer
                // than the installed one.
                match crate::verify::check(&cfg.signing, id, &v.bytes, *evidence) {
                    Ok((sig, note)) => {
                        let built = sig.provenance.as_ref().map(|p| p.built_at);
                        if let Some(at) = installed_at
                            && built.is_none_or(|b| b <= at)
                        {
                            trail.step(
                                place,
                                format!("{via}; {note}; not newer than the installed one: not replacing it"),
                            );
                            continue;
                        }
                        v.signature = Some(sig);
                        outcome = format!("{outcome}; {note}");
                    }
                    Err(why) => {
                        trail.step(place, format!("{via}, but {why}"));
                        continue;
                    }
                }
                // `run` loads the verified bytes from memory, so the files
                // are written (and synced) meanwhile, on another thread.
                if mode == Mode::Run {
                    match install::install_in_background(
                        &cfg.install_path,
                        v.bytes.clone(),
                        (*metadata).clone(),
                        v.signature.clone(),
                    ) {
                        Ok(pending) => {
                            trail.step(place, format!("{via}; {outcome}; installing (loaded from memory meanwhile)"));
                            let path = pending.path().to_owned();
                            let mut r = found(path, Source::Registry, v, trail)?;
                            r.pending_install = Some(pending);
                            return Ok(r);
                        }
                        // A refused install path must not stop a fleet host
                        // (anyone can create /tmp/tracee first).
                        Err(e) => {
                            trail.step(place, format!("{via}; {outcome}; NOT installed ({e}): loading it from memory"));
                            let path = PathBuf::from(format!("{base} ({name}, in memory)"));
                            return found(path, Source::Registry, v, trail);
                        }
                    }
                }
                // `fetch` writes the files now, so the object is accepted
                // first: its rollback record moves forward before anything
                // is written (a record that cannot be written refuses it, as
                // `resolve` would, with nothing installed).
                if mode != Mode::Locate {
                    match crate::verify::remember(&cfg.signing, id, &v.digest, v.signature.as_ref()) {
                        Ok(Some(note)) => trail.step("rollback state", note),
                        Ok(None) => {}
                        Err(source) => {
                            trail.step("rollback state", source.to_string());
                            return Err(ResolveError::Rollback { source: Box::new(source), trail: trail.0 });
                        }
                    }
                }
                match install(&cfg.install_path, &v.bytes, &metadata, v.signature.as_ref()) {
                    Ok(path) => {
                        trail.step(place, format!("{via}; {outcome}; installed"));
                        return found(path, Source::Registry, v, trail);
                    }
                    Err(e) => trail.step(place, format!("{via}; {outcome}; but installing failed: {e}")),
                }
            }
        }
    }

    if let Some(v) = installed {
        trail.step("install path", "no newer signed object in the registries; keeping it");
        return found(cfg.install_path.join(&name), Source::InstallPath, v, trail);
    }

    // 5. Local build.
    let may_build = match mode {
        Mode::BuildOnly => true,
        Mode::Run | Mode::Locate => cfg.policy != BuildPolicy::Never,
        Mode::FetchOnly => false,
    };
    // A local build cannot be signed here (no private key reaches the
    // agent), so it cannot pass --verify-key; `build` still builds on request.
    if may_build && mode != Mode::BuildOnly && cfg.signing.keys.is_some() {
        trail.step("local build", "not attempted: --verify-key requires signed objects, and a local build is unsigned");
        return Err(not_found(trail));
    }
    if !may_build {
        if mode != Mode::FetchOnly {
            trail.step("local build", "not attempted: --build-policy never (no compiler is run)");
        }
        return Err(not_found(trail));
    }
    if !cfg!(feature = "local-build") {
        trail.step("local build", "not possible: this agent was built without local builds");
        return Err(ResolveError::NoLocalBuild { trail: trail.0 });
    }
    let input = match build::header_source(cfg) {
        Ok((input, desc)) => {
            trail.step("local build", format!("headers from {desc}"));
            input
        }
        Err(why) => {
            trail.step("local build", why.to_string());
            return Err(not_found(trail));
        }
    };
    if mode == Mode::Locate {
        let w = trail.0.last().map(|s| format!("build locally with {}", s.outcome)).unwrap_or_default();
        return would(Source::LocalBuild, w, trail);
    }
    build_and_install(cfg, input, trail)
}

#[cfg(feature = "local-build")]
fn build_and_install(cfg: &ResolveConfig, input: HeaderInput, mut trail: Trail) -> Result<Resolution, ResolveError> {
    match build::build_locally(cfg, input) {
        Ok(built) => {
            trail.step("local build", format!("built and installed {}", built.path.display()));
            let digest = Some(built.verified.digest.clone());
            Ok(Resolution {
                path: built.path,
                source: Source::LocalBuild,
                would: None,
                digest,
                trail: trail.0,
                object: Some(built.verified),
                pending_install: None,
            })
        }
        Err(source) => Err(ResolveError::BuildFailed { source: Box::new(source), trail: trail.0 }),
    }
}

#[cfg(not(feature = "local-build"))]
fn build_and_install(_: &ResolveConfig, _: HeaderInput, trail: Trail) -> Result<Resolution, ResolveError> {
    Err(ResolveError::NoLocalBuild { trail: trail.0 })
}
