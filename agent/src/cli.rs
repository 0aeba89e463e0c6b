//! The command line: flags, subcommands and how they, the environment and
//! the settings file (`config`) make the resolver's settings. Flags and
//! environment variables (clap) win over the file, which wins over the
//! defaults.

use std::path::PathBuf;
use std::time::Duration;

use bpfarm_object::http::{Driver, TransportConfig};
use bpfarm_object::{Arch, Identity, IdentityError, KernelFacts};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, ConfigError};
use crate::resolve::{BuildPolicy, ResolveConfig};
use crate::run::Output;

#[derive(Parser, Debug)]
#[command(
    name = "bpfarm-agent",
    version,
    about = "Find, fetch and verify (or build) this kernel's tracer object, load it and stream events"
)]
#[command(
    after_help = "Search order: TRACEE_BPF_FILE (file or folder), the agent's own folder, --install-path, each --registry in turn, then a local build if --build-policy allows (headers from KERN_HEADERS, /lib/modules/<release>/build, or the running kernel's BTF).\n\nTrust: folders are used only when they and every folder above them belong to root or this user and no one else can write them; files are never read through symlinks. Every object must carry an embedded identity (.bpfarm.identity) naming this kernel release, arch and version; fetched objects must also match the registry's digest and size. Exactly the verified bytes are loaded.\n\nSigning: with --verify-key, every object must also carry a valid signature by a trusted key (<file>.sig beside it, from the registry, or the cosign signature of its OCI manifest), and a signed build time older than the newest accepted (recorded in --state-dir) is refused unless --allow-downgrade. A local build cannot be signed, so it is not attempted under --verify-key (`build` still builds on request). `fetch` then replaces an installed object only with a newer signed one.\n\nExit codes: 0 success, 1 no usable object or a load/run failure, 2 usage error."
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug)]
pub struct Common {
    /// A settings file (TOML) with any of: registries, registry_headers,
    /// registry_token, install_path, build_policy, timeout, ca_cert,
    /// insecure, max_object_size, verify_keys, state_dir. Flags and
    /// environment variables win over
    /// it. Read only when root or this user owns it and no one else can
    /// write it. [default: /etc/bpfarm/agent.toml, when it exists]
    #[arg(long, global = true, value_name = "FILE", env = "BPFARM_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// never: find or fetch, never compile; if-needed: build when nothing is
    /// found; always: build even when an object exists. [default: if-needed;
    /// never in an agent built without local builds, which refuses the others]
    #[arg(long, value_enum, global = true, env = "BPFARM_BUILD_POLICY")]
    pub build_policy: Option<BuildPolicy>,
    /// Where fetched and built objects are installed (and looked for). The
    /// agent uses it only when it and every folder above it belong to root
    /// or this user and no one else can write them; it creates it 0700.
    /// [default: /tmp/tracee]
    #[arg(long, global = true, value_name = "DIR")]
    pub install_path: Option<PathBuf>,
    /// A registry to fetch from: a bpfarm registry (its /v1 API), any HTTP
    /// server with the static layout, an OCI registry as
    /// oci://HOST[:PORT]/NAMESPACE, or an unpacked OCI image layout folder
    /// as oci-layout:DIR (`bpfarm-registry bundle`, untarred: a USB stick,
    /// a ConfigMap, an image volume). Repeatable, tried in order; the
    /// environment variable takes a comma-separated list.
    #[arg(long = "registry", global = true, value_name = "URL", env = "BPFARM_REGISTRIES", value_delimiter = ',')]
    pub registries: Vec<String>,
    /// An extra header for registry requests, K:V. Repeatable. Sent only to
    /// that registry's own origin, never along a redirect to another host.
    #[arg(long = "registry-header", global = true, value_name = "K:V", value_parser = parse_header)]
    pub registry_headers: Vec<(String, String)>,
    /// Read token for registries that require one (for OCI registries, the
    /// password; without it the docker config.json is used).
    #[arg(long, global = true, env = "BPFARM_REGISTRY_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub registry_token: Option<String>,
    /// A PEM file of CA certificates to trust besides the system's roots,
    /// for https registries with a private CA.
    #[arg(long, global = true, value_name = "PATH", env = "BPFARM_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Allow plain http:// (and oci:// without TLS) to hosts other than
    /// loopback. Dangerous: anyone on the path sees and can change what is
    /// fetched; only the digest check remains. Prints a warning.
    #[arg(long, global = true)]
    pub insecure: bool,
    /// Resolve for this kernel release instead of `uname -r` (diagnostics).
    #[arg(long, global = true, value_name = "RELEASE")]
    pub kernel_release: Option<String>,
    /// Program version to look for [default: this agent's tracer version].
    #[arg(long = "obj-version", global = true, value_name = "VERSION")]
    pub obj_version: Option<String>,
    /// Deadline for each registry, as a whole (connect, answers, download),
    /// in seconds; then the next place is tried. [default: 30]
    #[arg(long, global = true, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Largest object read from anywhere, in bytes, whatever its metadata
    /// claims. [default: 67108864]
    #[arg(long, global = true, value_name = "BYTES")]
    pub max_object_size: Option<u64>,
    /// DANGEROUS: load the object TRACEE_BPF_FILE names even when its
    /// embedded identity is missing or names another kernel, arch or
    /// version. Such an object can load, attach and report wrong data
    /// without a word (an arm64 object on x86_64 does). Has no effect on
    /// any other place an object comes from.
    #[arg(long, global = true)]
    pub force_object: bool,
    #[command(flatten)]
    pub signing: SigningArgs,
}

/// Signed objects: `--verify-key`, `--allow-downgrade`, `--state-dir`.
#[derive(Args, Debug)]
pub struct SigningArgs {
    /// A public key (PEM: cosign.pub, or `openssl pkey -pubout`). With it,
    /// every object, from every place, must carry a valid signature by one
    /// of the keys over its exact bytes (`<file>.sig` beside it, or the
    /// cosign signature of its OCI manifest, from oci:// or oci-layout:,
    /// kept beside the install as `<file>.cosign.json`), else it is
    /// refused and the search goes on. Repeatable (key rotation). BPFARM_VERIFY_KEYS takes
    /// a comma- or colon-separated list; the config file
    /// `verify_keys = [...]`. Read only from a folder root or this user
    /// owns that no one else can write.
    #[arg(long = "verify-key", global = true, value_name = "FILE")]
    pub verify_keys: Vec<PathBuf>,
    /// Accept a validly signed object whose signed build time is older
    /// than the newest one accepted before for this kernel (a rollback),
    /// or one without a signed build time once one was accepted.
    #[arg(long, global = true)]
    pub allow_downgrade: bool,
    /// Where the newest accepted signed build time per kernel is recorded
    /// (rollback.json, 0600; the folder 0700, checked like the install
    /// path). An accepted object whose newer build time cannot be recorded
    /// here is not used. [default: /var/lib/bpfarm/agent]
    #[arg(long, global = true, value_name = "DIR", env = "BPFARM_AGENT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

impl SigningArgs {
    /// Keys from the flags, else `BPFARM_VERIFY_KEYS` (comma- or
    /// colon-separated), else the config file.
    fn policy(
        &self,
        file_keys: Option<Vec<PathBuf>>,
        file_state: Option<PathBuf>,
    ) -> Result<crate::verify::SignPolicy, crate::verify::KeyFileError> {
        let from_env = || {
            std::env::var("BPFARM_VERIFY_KEYS").ok().map(|v| {
                v.split([',', ':']).map(str::trim).filter(|p| !p.is_empty()).map(PathBuf::from).collect::<Vec<_>>()
            })
        };
        let paths = if self.verify_keys.is_empty() {
            from_env().or(file_keys).unwrap_or_default()
        } else {
            self.verify_keys.clone()
        };
        let mut policy =
            crate::verify::SignPolicy { allow_downgrade: self.allow_downgrade, ..crate::verify::SignPolicy::default() };
        if !paths.is_empty() {
            policy.keys = Some(crate::verify::load_keys(&paths)?);
        }
        if let Some(dir) = self.state_dir.clone().or(file_state) {
            policy.state = crate::rollback::RollbackState::new(dir);
        }
        Ok(policy)
    }
}

pub fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once(':').ok_or_else(|| format!("{s:?} is not K:V"))?;
    if k.trim().is_empty() {
        return Err(format!("{s:?} has an empty header name"));
    }
    Ok((k.trim().to_owned(), v.trim().to_owned()))
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Resolve the object, load it and stream events until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Print where the object would come from, without loading, fetching or building.
    Locate {
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
        /// Also print the verified provenance of the object it would load
        /// (builder, build time, source packages with digests, compiler,
        /// flags). Needs --verify-key.
        #[arg(long)]
        provenance: bool,
    },
    /// Fetch from the registries only and install (for baking images).
    Fetch,
    /// Build locally only and install (needs clang; no privileges; not in an
    /// agent built without local builds).
    Build,
    /// List the events the tracer reports.
    ListEvents,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// table (default on a terminal) or json (one object per line).
    #[arg(long, value_enum)]
    pub output: Option<Output>,
    /// Only events of these commands (repeatable).
    #[arg(long)]
    pub comm: Vec<String>,
    /// Only events of these process ids (repeatable).
    #[arg(long)]
    pub pid: Vec<u32>,
    /// Only events of these user ids (repeatable).
    #[arg(long)]
    pub uid: Vec<u32>,
    /// Only these events (repeatable): exec, exit, fork, open, connect, creds.
    #[arg(long = "event", value_parser = clap::builder::PossibleValuesParser::new(["exec", "exit", "fork", "open", "connect", "creds"]))]
    pub events: Vec<String>,
    /// Copy each executed binary into <install-path>/out/, deduplicated by content.
    #[arg(long, value_enum)]
    pub capture: Option<Capture>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// The host name events carry [default: uname -n]. In a Kubernetes
    /// DaemonSet, set it to the node's name (downward API spec.nodeName).
    #[arg(long, env = "BPFARM_HOST_NAME", value_name = "NAME")]
    pub host_name: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Capture {
    Exec,
}

/// Why the flags, environment and settings file make no settings.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("reading the running kernel's release: {0}")]
    Kernel(#[source] std::io::Error),
    #[error("this machine's arch is not one bpfarm builds for")]
    Arch,
    #[error(transparent)]
    Version(#[from] bpfarm_object::program::NoVersion),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("registry_headers in the config file: {0}")]
    Header(String),
    #[error(transparent)]
    Keys(#[from] crate::verify::KeyFileError),
    /// A usage error: exit code 2.
    #[error(
        "--build-policy {0} (flag, BPFARM_BUILD_POLICY or build_policy in the config file) needs local builds, and this agent was built without them (no `local-build` feature: it holds no compiler path); use --build-policy never"
    )]
    NoLocalBuild(&'static str),
}

impl SettingsError {
    /// A usage error (exit code 2) rather than a failure (1).
    pub fn is_usage(&self) -> bool {
        matches!(self, SettingsError::NoLocalBuild(_))
    }
}

/// The build policy when none is given: build if needed when this agent
/// can, else never.
pub const DEFAULT_POLICY: BuildPolicy =
    if cfg!(feature = "local-build") { BuildPolicy::IfNeeded } else { BuildPolicy::Never };

impl Common {
    /// Flags and environment (clap) over the settings file over the defaults.
    pub fn settings(&self) -> Result<ResolveConfig, SettingsError> {
        let c = self;
        let (file, _) = config::load(c.config.as_deref())?;
        let policy = c.build_policy.or(file.build_policy).unwrap_or(DEFAULT_POLICY);
        if !cfg!(feature = "local-build") && policy != BuildPolicy::Never {
            return Err(SettingsError::NoLocalBuild(policy.name()));
        }
        // The config digest is left for a local build to read (it costs a
        // decompression and a hash that a local hit or a fetch never needs).
        let (running_release, uname_version) = bpfarm_object::host::running_release().map_err(SettingsError::Kernel)?;
        let release = c.kernel_release.clone().unwrap_or_else(|| running_release.clone());
        let arch = Arch::host().ok_or(SettingsError::Arch)?;
        let version = match &c.obj_version {
            Some(v) => v.clone(),
            None => bpfarm_object::program::embedded_version()?,
        };
        let running = release == running_release;
        let registries =
            if c.registries.is_empty() { file.registries.unwrap_or_default() } else { c.registries.clone() };
        let registry_headers = if c.registry_headers.is_empty() {
            file.registry_headers
                .unwrap_or_default()
                .iter()
                .map(|h| parse_header(h).map_err(SettingsError::Header))
                .collect::<Result<_, _>>()?
        } else {
            c.registry_headers.clone()
        };
        let defaults = TransportConfig::default();
        let signing = c.signing.policy(file.verify_keys, file.state_dir)?;
        Ok(ResolveConfig {
            identity: Identity::new(&release, arch, &version)?,
            kernel: if running { KernelFacts { uname_version, config_digest: None } } else { Default::default() },
            bpf_file: std::env::var_os("TRACEE_BPF_FILE").filter(|v| !v.is_empty()).map(PathBuf::from),
            exe_dir: std::env::current_exe().ok().and_then(|e| e.parent().map(|p| p.to_owned())),
            install_path: c.install_path.clone().or(file.install_path).unwrap_or_else(|| PathBuf::from("/tmp/tracee")),
            registries,
            registry_headers,
            registry_token: c.registry_token.clone().or(file.registry_token),
            policy,
            kern_headers: std::env::var_os("KERN_HEADERS").filter(|v| !v.is_empty()).map(PathBuf::from),
            running_kernel: running,
            transport: TransportConfig {
                ca_certs: c.ca_cert.clone().or(file.ca_cert).into_iter().collect(),
                insecure: c.insecure || file.insecure.unwrap_or(false),
                timeout: c.timeout.or(file.timeout).map(Duration::from_secs).unwrap_or(defaults.timeout),
                max_object_bytes: c.max_object_size.or(file.max_object_size).unwrap_or(defaults.max_object_bytes),
                // One request at a time, each answer read whole: no worker
                // thread, no hand-over of the answer between threads.
                driver: Driver::Caller,
            },
            force_object: c.force_object,
            signing,
        })
    }
}
