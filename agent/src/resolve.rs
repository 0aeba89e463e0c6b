//! Finding the object for this kernel, in DESIGN.md's order:
//! `TRACEE_BPF_FILE` → the agent's own folder → the install path → each
//! registry → a local build (only if the policy allows). Every place looked
//! at goes into the trail, with what was found or why not.
//!
//! Nothing fetched is installed before its bytes match the registry's
//! digest and its metadata names this host's kernel release and arch;
//! installs are atomic (temp file + rename) under a lock on the install
//! path. Under `--build-policy never` no code path here reaches the builder,
//! so no compiler process can start.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bpfarm_object::client::{Lookup, RegistryClient};
use bpfarm_object::{Arch, Digest, Identity, KernelFacts, ObjectMetadata};

/// `--build-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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
    /// Bound on all registry work.
    pub timeout: Duration,
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

#[derive(Debug, Clone, serde::Serialize)]
pub struct Resolution {
    /// The object to load (for `locate`: where it is or would be).
    pub path: PathBuf,
    pub source: Source,
    /// `locate` only: what would happen (fetch from X, build with Y).
    pub would: Option<String>,
    pub trail: Vec<Step>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("TRACEE_BPF_FILE={path} holds no {file_name}{}", trail_text(.trail))]
    BpfFileEmpty { path: String, file_name: String, trail: Vec<Step> },
    #[error("no object for kernel {release} ({arch}), version {version}, and the build policy is {policy}; tried:{}", trail_text(.trail))]
    NotFound { release: String, arch: Arch, version: String, policy: &'static str, trail: Vec<Step> },
    #[error("local build failed: {message}{}", trail_text(.trail))]
    BuildFailed { message: String, trail: Vec<Step> },
}

impl ResolveError {
    pub fn trail(&self) -> &[Step] {
        match self {
            ResolveError::BpfFileEmpty { trail, .. }
            | ResolveError::NotFound { trail, .. }
            | ResolveError::BuildFailed { trail, .. } => trail,
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

/// Checks a local object: when a `<file>.json` is beside it, the bytes must
/// match its digest and it must name this identity. `require_metadata`
/// makes a missing `.json` a reason to skip (the install path always has one).
fn check_local(path: &Path, id: &Identity, require_metadata: bool) -> Result<String, String> {
    let bytes = fs::read(path).map_err(|e| format!("unreadable: {e}"))?;
    let meta_path = path.with_file_name(format!("{}.json", path.file_name().unwrap_or_default().to_string_lossy()));
    match fs::read(&meta_path) {
        Ok(m) => {
            let meta: ObjectMetadata =
                serde_json::from_slice(&m).map_err(|e| format!("{} is unreadable: {e}", meta_path.display()))?;
            let digest = Digest::of_bytes(&bytes);
            if digest != meta.digest {
                return Err(format!(
                    "does not verify: bytes hash to {digest}, its metadata says {} (a partial or altered file)",
                    meta.digest
                ));
            }
            if meta.identity != *id {
                return Err(format!(
                    "its metadata is for kernel {} ({}) version {}, not this host",
                    meta.identity.kernel_release, meta.identity.arch, meta.identity.version
                ));
            }
            Ok(format!("found, digest {digest} verified"))
        }
        Err(_) if require_metadata => {
            Err(format!("found, but no {} to verify it against: skipped", meta_path.display()))
        }
        Err(_) => Ok("found (no metadata beside it to verify)".into()),
    }
}

/// Looks at one local candidate and records what was found there in the
/// trail; true when it can be used.
fn consider(trail: &mut Vec<Step>, place: String, candidate: &Path, id: &Identity, require_metadata: bool) -> bool {
    let outcome =
        if candidate.is_file() { check_local(candidate, id, require_metadata) } else { Err("not there".into()) };
    let usable = outcome.is_ok();
    trail.push(Step { place, outcome: outcome.unwrap_or_else(|why| why) });
    usable
}

/// Resolves the object per the config and mode.
pub fn resolve(cfg: &ResolveConfig, mode: Mode) -> Result<Resolution, ResolveError> {
    let id = &cfg.identity;
    let name = id.file_name();
    let mut trail = Vec::new();
    let step = |trail: &mut Vec<Step>, place: String, outcome: String| trail.push(Step { place, outcome });
    let found = |path: PathBuf, source, trail: Vec<Step>| Ok(Resolution { path, source, would: None, trail });
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
        //    set but empty is an error, not a fall-through.
        if let Some(p) = &cfg.bpf_file {
            let candidate = if p.is_dir() { p.join(&name) } else { p.clone() };
            if consider(&mut trail, format!("TRACEE_BPF_FILE ({})", candidate.display()), &candidate, id, false) {
                return found(candidate, Source::BpfFile, trail);
            }
            return Err(ResolveError::BpfFileEmpty { path: p.display().to_string(), file_name: name, trail });
        }
        step(&mut trail, "TRACEE_BPF_FILE".into(), "not set".into());
        // 2. The agent executable's folder.
        if let Some(dir) = &cfg.exe_dir {
            let candidate = dir.join(&name);
            if consider(&mut trail, format!("beside the agent ({})", candidate.display()), &candidate, id, false) {
                return found(candidate, Source::ExeDir, trail);
            }
        }
        // 3. The install path (where fetches and builds are installed), read
        //    under the lock installs take.
        let candidate = cfg.install_path.join(&name);
        let usable = {
            let _lock = InstallLock::shared(&cfg.install_path);
            consider(&mut trail, format!("install path ({})", candidate.display()), &candidate, id, true)
        };
        if usable {
            return found(candidate, Source::InstallPath, trail);
        }
    }

    // 4. Registries, in order.
    if matches!(mode, Mode::Run | Mode::Locate | Mode::FetchOnly) && cfg.policy != BuildPolicy::Always {
        let deadline = Instant::now() + cfg.timeout;
        if cfg.registries.is_empty() {
            step(&mut trail, "registries".into(), "none configured (--registry)".into());
        }
        for base in &cfg.registries {
            if Instant::now() >= deadline {
                step(
                    &mut trail,
                    format!("registry {base}"),
                    format!("skipped: the {}s resolution bound ran out", cfg.timeout.as_secs()),
                );
                continue;
            }
            let per_request = deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(10));
            let fetched = if base.starts_with("oci://") {
                fetch_oci(base, cfg, per_request, mode == Mode::Locate)
            } else {
                let client = RegistryClient::new(base, cfg.registry_token.clone(), per_request)
                    .with_headers(cfg.registry_headers.clone())
                    .with_retries(3, deadline);
                fetch_from(&client, cfg, mode == Mode::Locate)
            };
            match fetched {
                Ok(Fetched::Installed(path, msg)) => {
                    step(&mut trail, format!("registry {base}"), msg);
                    return found(path, Source::Registry, trail);
                }
                Ok(Fetched::Available(msg)) => {
                    step(&mut trail, format!("registry {base}"), msg.clone());
                    return Ok(Resolution {
                        path: cfg.install_path.join(&name),
                        source: Source::Registry,
                        would: Some(msg),
                        trail,
                    });
                }
                Err(why) => step(&mut trail, format!("registry {base}"), why),
            }
        }
    }

    // 5. Local build.
    let may_build = match mode {
        Mode::BuildOnly => true,
        Mode::Run | Mode::Locate => cfg.policy != BuildPolicy::Never,
        Mode::FetchOnly => false,
    };
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
            trail,
        });
    }
    match build_locally(cfg, input) {
        Ok(path) => {
            step(&mut trail, "local build".into(), format!("built and installed {}", path.display()));
            found(path, Source::LocalBuild, trail)
        }
        Err(message) => Err(ResolveError::BuildFailed { message, trail }),
    }
}

enum Fetched {
    Installed(PathBuf, String),
    Available(String),
}

/// An OCI registry: tag → this arch's manifest (annotations checked
/// exactly) → layer verified against its digest → installed.
fn fetch_oci(base: &str, cfg: &ResolveConfig, timeout: Duration, look_only: bool) -> Result<Fetched, String> {
    use bpfarm_object::oci_client::{OciRegistry, OciTarget, credentials};
    let target = OciTarget::parse(base).map_err(|e| e.to_string())?;
    let auth = credentials(&target.registry, None, cfg.registry_token.as_deref());
    let registry = OciRegistry::new(target, auth, timeout).map_err(|e| e.to_string())?;
    match registry.fetch(&cfg.identity) {
        Ok(Some((meta, bytes))) => {
            if look_only {
                return Ok(Fetched::Available(format!("has it ({}); would fetch and install it", meta.digest)));
            }
            let path = install(&cfg.install_path, &bytes, &meta)
                .map_err(|e| format!("fetched, but installing failed: {e}"))?;
            Ok(Fetched::Installed(
                path,
                format!(
                    "fetched {} from {}, verified against its manifest and this kernel, installed",
                    meta.digest,
                    registry.target().repository()
                ),
            ))
        }
        Ok(None) => Err(format!(
            "no {} for this kernel and arch in {}",
            cfg.identity.file_name(),
            registry.target().repository()
        )),
        Err(e) => Err(format!("refused: {e}")),
    }
}

/// One registry: the `/v1` API if it speaks it, else the static layout.
fn fetch_from(client: &RegistryClient, cfg: &ResolveConfig, look_only: bool) -> Result<Fetched, String> {
    let id = &cfg.identity;
    let arch = id.arch.uname();
    let (bytes, meta) =
        match client.lookup_on(&id.kernel_release, arch, &id.version, cfg.kernel.uname_version.as_deref()) {
            Ok(Lookup::Found(meta)) => {
                if look_only {
                    return Ok(Fetched::Available(format!("has it ({}); would fetch and install it", meta.digest)));
                }
                let bytes = client.download(&meta.digest).map_err(|e| format!("refused: {e}"))?;
                (bytes, Some(*meta))
            }
            Ok(Lookup::NotFound(msg)) => return Err(format!("no object ({msg})")),
            Ok(Lookup::NoApi) => match client.fetch_static(&id.version, arch, &id.file_name()) {
                Ok(Some(obj)) => {
                    if look_only {
                        return Ok(Fetched::Available(format!(
                            "static layout has it ({}); would fetch and install it",
                            obj.digest
                        )));
                    }
                    let meta = obj.metadata.clone();
                    if let Some(m) = &meta
                        && m.digest != obj.digest
                    {
                        return Err(format!("refused: its .json says {}, its .sha256 says {}", m.digest, obj.digest));
                    }
                    (obj.bytes, meta)
                }
                Ok(None) => return Err(format!("no /v1 API and no {} in its static layout", id.file_name())),
                Err(e) => return Err(format!("refused: {e}")),
            },
            Err(e) => return Err(format!("unreachable: {e}")),
        };
    // The registry's word for which kernel this is must be this host's.
    let digest = Digest::of_bytes(&bytes);
    let meta = match meta {
        Some(m) => {
            if m.identity.kernel_release != id.kernel_release
                || m.identity.arch != id.arch
                || m.identity.version != id.version
            {
                return Err(format!(
                    "refused: its metadata is for kernel {} ({}) version {}, this host needs {} ({}) {}",
                    m.identity.kernel_release,
                    m.identity.arch,
                    m.identity.version,
                    id.kernel_release,
                    id.arch,
                    id.version
                ));
            }
            m
        }
        None => ObjectMetadata {
            identity: id.clone(),
            file_name: id.file_name(),
            digest: digest.clone(),
            size: bytes.len() as u64,
            kernel: KernelFacts::default(),
            build_mode: "unknown".into(),
            sources: vec![],
            program_digest: digest.clone(),
            compiler: bpfarm_object::Compiler { clang: "unknown (static layout without .json)".into(), llc: None },
            flags: vec![],
            built_at: String::new(),
        },
    };
    let path = install(&cfg.install_path, &bytes, &meta).map_err(|e| format!("fetched, but installing failed: {e}"))?;
    Ok(Fetched::Installed(
        path,
        format!("fetched {digest}, verified against the registry's digest and this kernel, installed"),
    ))
}

/// An advisory lock on the install path: one writer, or readers.
struct InstallLock(Option<File>);

impl InstallLock {
    fn open(dir: &Path) -> Option<File> {
        fs::create_dir_all(dir).ok()?;
        File::options().create(true).truncate(false).write(true).open(dir.join(".bpfarm.lock")).ok()
    }
    fn exclusive(dir: &Path) -> std::io::Result<Self> {
        let f = Self::open(dir)
            .ok_or_else(|| std::io::Error::other(format!("cannot open {}/.bpfarm.lock", dir.display())))?;
        f.lock()?;
        Ok(Self(Some(f)))
    }
    /// Best effort: a read-only install path still resolves.
    fn shared(dir: &Path) -> Self {
        let f = Self::open(dir);
        if let Some(f) = &f {
            let _ = f.lock_shared();
        }
        Self(f)
    }
}

impl Drop for InstallLock {
    fn drop(&mut self) {
        if let Some(f) = &self.0 {
            let _ = f.unlock();
        }
    }
}

/// Writes `bytes` and `meta` into the install path atomically, under the
/// lock: readers see the old pair, or the new object and then its metadata,
/// never half a file.
pub fn install(dir: &Path, bytes: &[u8], meta: &ObjectMetadata) -> std::io::Result<PathBuf> {
    let _lock = InstallLock::exclusive(dir)?;
    let dest = dir.join(&meta.file_name);
    write_atomic(dir, &dest, bytes)?;
    let mut json = serde_json::to_vec_pretty(meta).expect("metadata serializes");
    json.push(b'\n');
    write_atomic(dir, &dir.join(format!("{}.json", meta.file_name)), &json)?;
    Ok(dest)
}

fn write_atomic(dir: &Path, dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dest).map_err(|e| e.error)?;
    Ok(())
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

/// Builds with the builder's own pipeline (compile, validate, cache) and
/// installs the result.
fn build_locally(cfg: &ResolveConfig, input: HeaderInput) -> Result<PathBuf, String> {
    use bpfarm_builder::build::{self, BtfInput, BuildConfig, Request};
    let id = &cfg.identity;
    fs::create_dir_all(&cfg.install_path).map_err(|e| format!("{}: {e}", cfg.install_path.display()))?;
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
    if let Some(e) = &row.error {
        return Err(e.clone());
    }
    if row.kernel != id.kernel_release {
        return Err(format!("the headers are for kernel {}, not {}", row.kernel, id.kernel_release));
    }
    let object = row.object.clone().ok_or("the build produced no object")?;
    let bytes = fs::read(&object).map_err(|e| e.to_string())?;
    let meta: ObjectMetadata = fs::read(object.with_file_name(format!("{}.json", id.file_name())))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))?;
    install(&cfg.install_path, &bytes, &meta).map_err(|e| e.to_string())
}
