//! Finding the object for this kernel, in DESIGN.md's order:
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
//! reaches the builder, so no compiler process can start.

use std::fs;
use std::path::{Path, PathBuf};

use bpfarm_object::client::{ClientError, Lookup, RegistryClient};
use bpfarm_object::embed::{self, EmbeddedIdentity};
use bpfarm_object::http::{Transport, TransportConfig, TransportError};
use bpfarm_object::{Arch, Digest, Identity, KernelFacts, ObjectMetadata, Origin};

use crate::trust::{TrustError, TrustedDir};

/// Cap on a `.json` beside a local object.
const MAX_LOCAL_METADATA: u64 = 1 << 20;

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
    /// #11: `--verify-key`, `--allow-downgrade`, `--state-dir` (see `verify`).
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

/// Bytes that passed every check, ready to load.
#[derive(Debug, Clone)]
pub struct Verified {
    pub bytes: Vec<u8>,
    pub digest: Digest,
    /// What the object says it is (`None` only under `--force-object`).
    pub embedded: Option<EmbeddedIdentity>,
    /// #11: its signature, once `verify::check` accepted it.
    pub signature: Option<crate::verify::Signature>,
}

#[derive(Debug, Clone, serde::Serialize)]
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
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("TRACEE_BPF_FILE={path} holds no usable {file_name}{}", trail_text(.trail))]
    BpfFileEmpty { path: String, file_name: String, trail: Vec<Step> },
    #[error("no object for kernel {release} ({arch}), version {version}, and the build policy is {policy}; tried:{}", trail_text(.trail))]
    NotFound { release: String, arch: Arch, version: String, policy: &'static str, trail: Vec<Step> },
    #[error("local build failed: {message}{}", trail_text(.trail))]
    BuildFailed { message: String, trail: Vec<Step> },
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
            | ResolveError::BuildFailed { trail, .. }
            | ResolveError::Transport { trail, .. } => trail,
        }
    }
}

fn trail_text(trail: &[Step]) -> String {
    trail.iter().map(|s| format!("\n  - {}: {}", s.place, s.outcome)).collect()
}

fn policy_name(p: BuildPolicy) -> &'static str {
    match p {
        BuildPolicy::Never => "never",
        BuildPolicy::IfNeeded => "if-needed",
        BuildPolicy::Always => "always",
    }
}

/// Checks bytes against what this host needs: the metadata (when there is
/// one) must name the same digest and identity, and the embedded identity
/// must name this kernel release, arch and version. `force` lets a missing
/// or different embedded identity pass, with the reason in the outcome.
fn verify(
    bytes: Vec<u8>,
    id: &Identity,
    meta: Option<&ObjectMetadata>,
    force: bool,
) -> Result<(Verified, String), String> {
    let digest = Digest::of_bytes(&bytes);
    let mut outcome = format!("digest {digest}");
    if let Some(m) = meta {
        if m.digest != digest {
            return Err(format!(
                "does not verify: bytes hash to {digest}, its metadata says {} (a partial or altered file)",
                m.digest
            ));
        }
        m.check_identity(id).map_err(|e| format!("refused: its metadata does not fit this host: {e}"))?;
        outcome += " matches its metadata";
    }
    let embedded = match embed::read(&bytes) {
        Ok(Some(e)) => match e.check(id) {
            Ok(()) => {
                outcome += "; its embedded identity names this kernel, arch and version";
                Some(e)
            }
            Err(m) if force => {
                outcome += &format!("; LOADED ANYWAY (--force-object): {m}");
                Some(e)
            }
            Err(m) => return Err(format!("refused: {m}")),
        },
        Ok(None) if force => {
            outcome += &format!("; LOADED ANYWAY (--force-object): it carries no {} section", embed::SECTION);
            None
        }
        Ok(None) => {
            return Err(format!(
                "refused: it carries no embedded identity ({} section), so nothing says which kernel it was built for",
                embed::SECTION
            ));
        }
        Err(e) if force => {
            outcome += &format!("; LOADED ANYWAY (--force-object): {e}");
            None
        }
        Err(e) => return Err(format!("refused: {e}")),
    };
    Ok((Verified { bytes, digest, embedded, signature: None }, outcome))
}

/// Reads `name` from a checked folder and verifies it; the `.json` beside
/// it is used when present and required when `require_metadata`.
fn check_local(
    dir: &TrustedDir,
    name: &str,
    id: &Identity,
    require_metadata: bool,
    force: bool,
    limit: u64,
    signing: &crate::verify::SignPolicy,
) -> Result<(Verified, String), String> {
    let bytes = match dir.read_file(name, limit) {
        Ok(Some(b)) => b,
        Ok(None) => return Err("not there".into()),
        Err(e) => return Err(format!("refusing: {e}")),
    };
    let json = format!("{name}.json");
    let meta = match dir.read_file(&json, MAX_LOCAL_METADATA) {
        Ok(Some(m)) => Some(
            serde_json::from_slice::<ObjectMetadata>(&m)
                .map_err(|e| format!("{} is unreadable: {e}", dir.path().join(&json).display()))?,
        ),
        Ok(None) if require_metadata => {
            return Err(format!("found, but no {} to verify it against: skipped", dir.path().join(&json).display()));
        }
        Ok(None) => None,
        Err(e) => return Err(format!("refusing: {e}")),
    };
    let (mut v, outcome) = verify(bytes, id, meta.as_ref(), force)?;
    // #11: the signature beside it, over exactly these bytes.
    let (signature, note) = crate::verify::check(signing, id, &v.bytes, crate::verify::read_local(dir, name))
        .map_err(|why| format!("found, but {why}"))?;
    v.signature = Some(signature);
    Ok((v, format!("{outcome}; {note}")))
}

/// Looks at one local candidate and records what was found there in the
/// trail; the verified bytes when it can be used.
/// `install_path` candidates must have their `.json` and are read under
/// the lock installs take (when one was ever taken; readers create none).
fn consider(
    trail: &mut Vec<Step>,
    place: String,
    dir: Result<TrustedDir, TrustError>,
    name: &str,
    cfg: &ResolveConfig,
    install_path: bool,
    force: bool,
) -> Option<Verified> {
    let id = &cfg.identity;
    let limit = cfg.transport.max_object_bytes;
    let outcome = match dir {
        Ok(dir) => {
            let lock = if install_path { dir.lock_shared() } else { Ok(None) };
            match lock {
                Err(e) => Err(format!("refusing: {e}")),
                Ok(_lock) => check_local(&dir, name, id, install_path, force, limit, &cfg.signing),
            }
        }
        Err(TrustError::Missing { .. }) => Err("not there".into()),
        Err(e) => Err(format!("refusing: {e}")),
    };
    match outcome {
        Ok((v, outcome)) => {
            trail.push(Step { place, outcome: format!("found; {outcome}") });
            Some(v)
        }
        Err(why) => {
            trail.push(Step { place, outcome: why });
            None
        }
    }
}

/// Resolves the object per the config and mode.
pub fn resolve(cfg: &ResolveConfig, mode: Mode) -> Result<Resolution, ResolveError> {
    let mut r = resolve_candidates(cfg, mode)?;
    // #11: an object accepted for use moves the rollback record forward.
    if mode != Mode::Locate
        && let Some(v) = &r.object
        && let Some(note) = crate::verify::remember(&cfg.signing, &cfg.identity, &v.digest, v.signature.as_ref())
    {
        r.trail.push(Step { place: "rollback state".into(), outcome: note });
    }
    Ok(r)
}

fn resolve_candidates(cfg: &ResolveConfig, mode: Mode) -> Result<Resolution, ResolveError> {
    let id = &cfg.identity;
    let name = id.file_name();
    let mut trail = Vec::new();
    let step = |trail: &mut Vec<Step>, place: String, outcome: String| trail.push(Step { place, outcome });
    let found = |path: PathBuf, source, v: Verified, trail: Vec<Step>| {
        Ok(Resolution { path, source, would: None, digest: Some(v.digest.clone()), trail, object: Some(v) })
    };
    let not_found = |trail: Vec<Step>| ResolveError::NotFound {
        release: id.kernel_release.clone(),
        arch: id.arch,
        version: id.version.clone(),
        policy: policy_name(cfg.policy),
        trail,
    };

    let local_first = matches!(mode, Mode::Run | Mode::Locate) && cfg.policy != BuildPolicy::Always;
    if local_first {
        // 1. TRACEE_BPF_FILE: a file, or a folder holding the expected name;
        //    set but unusable is an error, not a fall-through. Only here may
        //    --force-object override the embedded identity.
        if let Some(p) = &cfg.bpf_file {
            let (dir, file, candidate) = if p.is_dir() {
                (p.clone(), name.clone(), p.join(&name))
            } else {
                let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                let file = p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                (dir.to_owned(), file, p.clone())
            };
            let place = format!("TRACEE_BPF_FILE ({})", candidate.display());
            if let Some(v) = consider(&mut trail, place, TrustedDir::open(&dir), &file, cfg, false, cfg.force_object) {
                return found(candidate, Source::BpfFile, v, trail);
            }
            return Err(ResolveError::BpfFileEmpty { path: p.display().to_string(), file_name: name, trail });
        }
        step(&mut trail, "TRACEE_BPF_FILE".into(), "not set".into());
        // 2. The agent executable's folder.
        if let Some(dir) = &cfg.exe_dir {
            let place = format!("beside the agent ({})", dir.join(&name).display());
            if let Some(v) = consider(&mut trail, place, TrustedDir::open(dir), &name, cfg, false, false) {
                return found(dir.join(&name), Source::ExeDir, v, trail);
            }
        }
        // 3. The install path (where fetches and builds are installed).
        let candidate = cfg.install_path.join(&name);
        let place = format!("install path ({})", candidate.display());
        if let Some(v) = consider(&mut trail, place, TrustedDir::open(&cfg.install_path), &name, cfg, true, false) {
            return found(candidate, Source::InstallPath, v, trail);
        }
    }

    // #11: `fetch` under --verify-key replaces the installed object only
    // with a newer signed one (and keeps it when the registries have none).
    let installed = if mode == Mode::FetchOnly && cfg.signing.keys.is_some() {
        let candidate = cfg.install_path.join(&name);
        let place = format!("install path ({})", candidate.display());
        consider(&mut trail, place, TrustedDir::open(&cfg.install_path), &name, cfg, true, false)
    } else {
        None
    };
    let installed_at = installed.as_ref().and_then(|v| v.signature.as_ref()?.provenance.as_ref()).map(|p| p.built_at);

    // 4. Registries, in order, each within its own --timeout.
    if matches!(mode, Mode::Run | Mode::Locate | Mode::FetchOnly) && cfg.policy != BuildPolicy::Always {
        if cfg.registries.is_empty() {
            step(&mut trail, "registries".into(), "none configured (--registry)".into());
        } else {
            let transport = match Transport::new(cfg.transport.clone()) {
                Ok(t) => t,
                Err(source) => return Err(ResolveError::Transport { source, trail }),
            };
            for base in &cfg.registries {
                let place = format!("registry {base}");
                match fetch_one(&transport, base, cfg, mode == Mode::Locate) {
                    Ok(Fetched::Got(meta, bytes, how, evidence)) => match verify(bytes, id, Some(&meta), false)
                        .and_then(|(mut v, outcome)| {
                            // #11: its signature, then (for `fetch`) newer than the installed one.
                            let (sig, note) = crate::verify::check(&cfg.signing, id, &v.bytes, *evidence)?;
                            let built = sig.provenance.as_ref().map(|p| p.built_at);
                            if let Some(at) = installed_at
                                && built.is_none_or(|b| b <= at)
                            {
                                return Err(format!("{note}; not newer than the installed one: not replacing it"));
                            }
                            v.signature = Some(sig);
                            Ok((v, format!("{outcome}; {note}")))
                        }) {
                        Ok((v, outcome)) => match install(&cfg.install_path, &v.bytes, &meta, v.signature.as_ref()) {
                            Ok(path) => {
                                step(&mut trail, place, format!("{how}; {outcome}; installed"));
                                return found(path, Source::Registry, v, trail);
                            }
                            // A refused install path must not stop a fleet
                            // host (anyone can create /tmp/tracee first):
                            // `run` loads the verified bytes from memory.
                            Err(e) if mode == Mode::Run => {
                                step(
                                    &mut trail,
                                    place,
                                    format!("{how}; {outcome}; NOT installed ({e}): loading it from memory"),
                                );
                                let path = PathBuf::from(format!("{base} ({name}, in memory)"));
                                return found(path, Source::Registry, v, trail);
                            }
                            Err(e) => step(&mut trail, place, format!("{how}; {outcome}; but installing failed: {e}")),
                        },
                        Err(why) => step(&mut trail, place, format!("{how}, but {why}")),
                    },
                    Ok(Fetched::Available(msg)) => {
                        step(&mut trail, place, msg.clone());
                        return Ok(Resolution {
                            path: cfg.install_path.join(&name),
                            source: Source::Registry,
                            would: Some(msg),
                            digest: None,
                            trail,
                            object: None,
                        });
                    }
                    Err(why) => step(&mut trail, place, why),
                }
            }
        }
    }

    if let Some(v) = installed {
        step(&mut trail, "install path".into(), "no newer signed object in the registries; keeping it".into());
        return found(cfg.install_path.join(&name), Source::InstallPath, v, trail);
    }

    // 5. Local build.
    let may_build = match mode {
        Mode::BuildOnly => true,
        Mode::Run | Mode::Locate => cfg.policy != BuildPolicy::Never,
        Mode::FetchOnly => false,
    };
    // #11: a local build cannot be signed here (no private key reaches the
    // agent), so it cannot pass --verify-key; `build` still builds on request.
    if may_build && mode != Mode::BuildOnly && cfg.signing.keys.is_some() {
        step(
            &mut trail,
            "local build".into(),
            "not attempted: --verify-key requires signed objects, and a local build is unsigned".into(),
        );
        return Err(not_found(trail));
    }
    if !may_build {
        if mode != Mode::FetchOnly {
            step(&mut trail, "local build".into(), "not attempted: --build-policy never (no compiler is run)".into());
        }
        return Err(not_found(trail));
    }
    let input = match header_source(cfg) {
        Ok((input, desc)) => {
            step(&mut trail, "local build".into(), format!("headers from {desc}"));
            input
        }
        Err(why) => {
            step(&mut trail, "local build".into(), why);
            return Err(not_found(trail));
        }
    };
    if mode == Mode::Locate {
        let would = trail.last().map(|s| format!("build locally with {}", s.outcome)).unwrap_or_default();
        return Ok(Resolution {
            path: cfg.install_path.join(&name),
            source: Source::LocalBuild,
            would: Some(would),
            digest: None,
            trail,
            object: None,
        });
    }
    match build_locally(cfg, input) {
        Ok((path, v)) => {
            step(&mut trail, "local build".into(), format!("built and installed {}", path.display()));
            found(path, Source::LocalBuild, v, trail)
        }
        Err(message) => Err(ResolveError::BuildFailed { message, trail }),
    }
}

enum Fetched {
    /// Metadata, bytes (checked against the registry's digest and size) and
    /// how they came.
    Got(Box<ObjectMetadata>, Vec<u8>, String, Box<crate::verify::Evidence>),
    /// `locate`: the registry has it.
    Available(String),
}

/// One registry attempt, as a whole within `--timeout`.
fn fetch_one(transport: &Transport, base: &str, cfg: &ResolveConfig, look_only: bool) -> Result<Fetched, String> {
    let after = transport.config().timeout.as_secs_f64();
    let gave_up = || format!("gave up: no complete answer within {after}s (--timeout); trying the next place");
    if base.starts_with("oci://") {
        use bpfarm_object::oci_client::{OciRegistry, OciTarget, credentials};
        let target = OciTarget::parse(base).map_err(|e| format!("refused: {e}"))?;
        let auth = credentials(&target.registry, None, cfg.registry_token.as_deref());
        let registry = OciRegistry::new(target, auth, transport).map_err(|e| format!("refused: {e}"))?;
        warn(registry.warning());
        let got = transport.within(registry.fetch_with_manifest(&cfg.identity)).ok_or_else(gave_up)?;
        return match got {
            Ok(Some((meta, bytes, _))) if look_only => {
                drop(bytes);
                Ok(Fetched::Available(format!("has it ({}); would fetch and install it", meta.digest)))
            }
            Ok(Some((meta, bytes, manifest))) => Ok(Fetched::Got(
                Box::new(meta),
                bytes,
                format!("fetched from {}, verified against its manifest", registry.target().repository()),
                Box::new(crate::verify::read_oci(&registry, &manifest, cfg.signing.keys.as_ref())),
            )),
            Ok(None) => Err(format!(
                "no {} for this kernel and arch in {}",
                cfg.identity.file_name(),
                registry.target().repository()
            )),
            Err(e) => Err(format!("refused: {e}")),
        };
    }
    let client = RegistryClient::new(base, cfg.registry_token.clone(), transport)
        .map_err(|e| format!("refused: {e}"))?
        .with_headers(cfg.registry_headers.clone())
        .with_retries(3);
    warn(client.warning());
    transport.within(fetch_http(&client, cfg, look_only)).ok_or_else(gave_up)?
}

fn warn(w: Option<&str>) {
    if let Some(w) = w {
        eprintln!("bpfarm-agent: warning: {w}");
    }
}

/// One bpfarm registry: the `/v1` API if it speaks it, else the static layout.
async fn fetch_http(client: &RegistryClient, cfg: &ResolveConfig, look_only: bool) -> Result<Fetched, String> {
    let id = &cfg.identity;
    let why = |e: ClientError| match &e {
        ClientError::Transport(TransportError::Request { .. }) => format!("unreachable: {e}"),
        _ => format!("refused: {e}"),
    };
    let (lookup, attachments) = client.lookup_signed(id, cfg.kernel.uname_version.as_deref()).await.map_err(why)?;
    match lookup {
        Lookup::Found(meta) => {
            if look_only {
                let signed = if attachments.signature.is_some() { "signed" } else { "unsigned" };
                return Ok(Fetched::Available(format!(
                    "has it ({}, {signed}); would fetch and install it",
                    meta.digest
                )));
            }
            let bytes = client.fetch_object(&meta).await.map_err(why)?;
            let evidence = crate::verify::read_v1(client, &attachments).await;
            Ok(Fetched::Got(
                meta,
                bytes,
                "fetched through its /v1 API, matching the registry's digest".into(),
                Box::new(evidence),
            ))
        }
        Lookup::NotFound(msg) => Err(format!("no object ({msg})")),
        Lookup::NoApi => match client.fetch_static(id).await.map_err(why)? {
            Some(obj) if look_only => {
                Ok(Fetched::Available(format!("static layout has it ({}); would fetch and install it", obj.digest)))
            }
            Some(obj) => {
                let meta = match obj.metadata {
                    Some(m) => m,
                    None => ObjectMetadata::unattested(
                        id.clone(),
                        obj.digest.clone(),
                        obj.bytes.len() as u64,
                        Origin::StaticLayout,
                    ),
                };
                Ok(Fetched::Got(
                    Box::new(meta),
                    obj.bytes,
                    "fetched from its static layout, matching its .sha256".into(),
                    Box::new(crate::verify::read_static(client, id).await),
                ))
            }
            None => Err(format!("no /v1 API and no {} in its static layout", id.file_name())),
        },
    }
}

/// Writes `bytes` and `meta` into the install path (created `0700` when
/// missing, and checked like every folder the agent trusts) atomically,
/// under the lock: readers see the old pair, or the new object and then its
/// metadata, never half a file. Both names come from the identity.
pub fn install(
    install_path: &Path,
    bytes: &[u8],
    meta: &ObjectMetadata,
    signature: Option<&crate::verify::Signature>,
) -> Result<PathBuf, TrustError> {
    let dir = TrustedDir::open_or_create(install_path)?;
    let _lock = dir.lock_exclusive()?;
    let name = meta.identity.file_name();
    dir.write_atomic(&name, bytes)?;
    let mut json = serde_json::to_vec_pretty(meta).map_err(|e| TrustError::Io {
        path: install_path.join(format!("{name}.json")),
        source: std::io::Error::other(e),
    })?;
    json.push(b'\n');
    dir.write_atomic(&format!("{name}.json"), &json)?;
    crate::verify::install_beside(&dir, &name, signature)?; // #11
    Ok(install_path.join(name))
}

enum HeaderInput {
    Tree(PathBuf),
    Btf(PathBuf),
}

/// `KERN_HEADERS`, else `/lib/modules/<release>/build`, else the running
/// kernel's BTF.
fn header_source(cfg: &ResolveConfig) -> Result<(HeaderInput, String), String> {
    if let Some(h) = &cfg.kern_headers {
        if h.is_dir() {
            return Ok((HeaderInput::Tree(h.clone()), format!("KERN_HEADERS={}", h.display())));
        }
        return Err(format!("KERN_HEADERS={} is not a folder", h.display()));
    }
    let build = PathBuf::from(format!("/lib/modules/{}/build", cfg.identity.kernel_release));
    if build.join("include/generated/autoconf.h").is_file() || build.join("include/config/kernel.release").is_file() {
        return Ok((HeaderInput::Tree(build.clone()), build.display().to_string()));
    }
    let btf = PathBuf::from("/sys/kernel/btf/vmlinux");
    if cfg.running_kernel && btf.is_file() {
        return Ok((HeaderInput::Btf(btf.clone()), format!("the running kernel's BTF ({})", btf.display())));
    }
    Err(format!(
        "no headers: KERN_HEADERS is not set, {} does not exist{}",
        build.display(),
        if cfg.running_kernel {
            ", and this kernel has no BTF"
        } else {
            ", and BTF is only used for the running kernel"
        }
    ))
}

/// Builds with the builder's own pipeline (compile, validate, cache, embed
/// the identity), verifies the result like any other candidate and
/// installs it.
fn build_locally(cfg: &ResolveConfig, input: HeaderInput) -> Result<(PathBuf, Verified), String> {
    use bpfarm_builder::build::{self, BtfInput, BuildConfig, Request};
    let id = &cfg.identity;
    TrustedDir::open_or_create(&cfg.install_path).map_err(|e| e.to_string())?;
    let out = tempfile::Builder::new().prefix(".build-").tempdir_in(&cfg.install_path).map_err(|e| e.to_string())?;
    let mut req = Request::default();
    match input {
        HeaderInput::Tree(t) => req.headers.push(t),
        HeaderInput::Btf(file) => req.btf.push(BtfInput {
            file,
            release: id.kernel_release.clone(),
            arch: id.arch,
            facts: cfg.kernel.clone(),
        }),
    }
    let bcfg = BuildConfig {
        cache_dir: cfg.install_path.join(".cache"),
        out_dir: out.path().to_owned(),
        version: id.version.clone(),
        program: bpfarm_builder::program::ProgramSources::embedded(),
        jobs: 1,
        shard: None,
        retry_failed: true,
        progress_bar: false,
        limits: Default::default(),
        sandbox: Default::default(),
    };
    let report = build::run(&bcfg, &req).map_err(|e| e.to_string())?;
    let row = report.kernels.first().ok_or("the build produced nothing")?;
    if let Some(f) = row.failure() {
        return Err(f.message.clone());
    }
    if row.kernel != id.kernel_release {
        return Err(format!("the headers are for kernel {}, not {}", row.kernel, id.kernel_release));
    }
    let out = row.output().ok_or("the build produced no object")?;
    let bytes = fs::read(&out.path).map_err(|e| format!("{}: {e}", out.path.display()))?;
    let meta = &out.metadata;
    let (v, _) = verify(bytes, id, Some(meta), false)?;
    let path = install(&cfg.install_path, &v.bytes, meta, None).map_err(|e| e.to_string())?;
    Ok((path, v))
}
