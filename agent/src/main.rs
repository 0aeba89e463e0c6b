//! `bpfarm-agent`: resolve this host's tracer object, then load it and
//! stream events (`run`), or only show (`locate`), fetch or build it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bpfarm_agent::resolve::{self, BuildPolicy, Mode, ResolveConfig};
use bpfarm_agent::run::{self, Filters, Output, RunConfig};
use bpfarm_agent::trust::TrustedDir;
use bpfarm_object::http::TransportConfig;
use bpfarm_object::{Arch, Identity};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "bpfarm-agent",
    version,
    about = "Find, fetch and verify (or build) this kernel's tracer object, load it and stream events"
)]
#[command(
    after_help = "Search order: TRACEE_BPF_FILE (file or folder), the agent's own folder, --install-path, each --registry in turn, then a local build if --build-policy allows (headers from KERN_HEADERS, /lib/modules/<release>/build, or the running kernel's BTF).\n\nTrust: folders are used only when they and every folder above them belong to root or this user and no one else can write them; files are never read through symlinks. Every object must carry an embedded identity (.bpfarm.identity) naming this kernel release, arch and version; fetched objects must also match the registry's digest and size. Exactly the verified bytes are loaded.\n\nSigning: with --verify-key, every object must also carry a valid signature by a trusted key (<file>.sig beside it, from the registry, or the cosign signature of its OCI manifest), and a signed build time older than the newest accepted (recorded in --state-dir) is refused unless --allow-downgrade. A local build cannot be signed, so it is not attempted under --verify-key (`build` still builds on request). `fetch` then replaces an installed object only with a newer signed one.\n\nExit codes: 0 success, 1 no usable object or a load/run failure, 2 usage error."
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct Common {
    /// A settings file (TOML) with any of: registries, registry_headers,
    /// registry_token, install_path, build_policy, timeout, ca_cert,
    /// insecure, max_object_size, verify_keys, state_dir. Flags and environment variables win over
    /// it. Read only when root or this user owns it and no one else can
    /// write it. [default: /etc/bpfarm/agent.toml, when it exists]
    #[arg(long, global = true, value_name = "FILE", env = "BPFARM_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// never: find or fetch, never compile; if-needed: build when nothing is
    /// found; always: build even when an object exists. [default: if-needed]
    #[arg(long, value_enum, global = true, env = "BPFARM_BUILD_POLICY")]
    build_policy: Option<BuildPolicy>,
    /// Where fetched and built objects are installed (and looked for). The
    /// agent uses it only when it and every folder above it belong to root
    /// or this user and no one else can write them; it creates it 0700.
    /// [default: /tmp/tracee]
    #[arg(long, global = true, value_name = "DIR")]
    install_path: Option<PathBuf>,
    /// A registry to fetch from: a bpfarm registry (its /v1 API), any HTTP
    /// server with the static layout, or an OCI registry as
    /// oci://HOST[:PORT]/NAMESPACE. Repeatable, tried in order; the
    /// environment variable takes a comma-separated list.
    #[arg(long = "registry", global = true, value_name = "URL", env = "BPFARM_REGISTRIES", value_delimiter = ',')]
    registries: Vec<String>,
    /// An extra header for registry requests, K:V. Repeatable. Sent only to
    /// that registry's own origin, never along a redirect to another host.
    #[arg(long = "registry-header", global = true, value_name = "K:V", value_parser = parse_header)]
    registry_headers: Vec<(String, String)>,
    /// Read token for registries that require one (for OCI registries, the
    /// password; without it the docker config.json is used).
    #[arg(long, global = true, env = "BPFARM_REGISTRY_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    registry_token: Option<String>,
    /// A PEM file of CA certificates to trust besides the system's roots,
    /// for https registries with a private CA.
    #[arg(long, global = true, value_name = "PATH", env = "BPFARM_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Allow plain http:// (and oci:// without TLS) to hosts other than
    /// loopback. Dangerous: anyone on the path sees and can change what is
    /// fetched; only the digest check remains. Prints a warning.
    #[arg(long, global = true)]
    insecure: bool,
    /// Resolve for this kernel release instead of `uname -r` (diagnostics).
    #[arg(long, global = true, value_name = "RELEASE")]
    kernel_release: Option<String>,
    /// Program version to look for [default: this agent's tracer version].
    #[arg(long = "obj-version", global = true, value_name = "VERSION")]
    obj_version: Option<String>,
    /// Deadline for each registry, as a whole (connect, answers, download),
    /// in seconds; then the next place is tried. [default: 30]
    #[arg(long, global = true, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// Largest object read from anywhere, in bytes, whatever its metadata
    /// claims. [default: 67108864]
    #[arg(long, global = true, value_name = "BYTES")]
    max_object_size: Option<u64>,
    /// DANGEROUS: load the object TRACEE_BPF_FILE names even when its
    /// embedded identity is missing or names another kernel, arch or
    /// version. Such an object can load, attach and report wrong data
    /// without a word (an arm64 object on x86_64 does). Has no effect on
    /// any other place an object comes from.
    #[arg(long, global = true)]
    force_object: bool,
    // #11: --verify-key, --allow-downgrade, --state-dir.
    #[command(flatten)]
    signing: SigningArgs,
}

/// Signed objects (issue #11).
#[derive(Args, Debug)]
struct SigningArgs {
    /// A public key (PEM: cosign.pub, or `openssl pkey -pubout`). With it,
    /// every object, from every place, must carry a valid signature by one
    /// of the keys over its exact bytes (`<file>.sig` beside it, or the
    /// cosign signature of its OCI manifest), else it is refused and the
    /// search goes on. Repeatable (key rotation). BPFARM_VERIFY_KEYS takes
    /// a comma- or colon-separated list; the config file
    /// `verify_keys = [...]`. Read only from a folder root or this user
    /// owns that no one else can write.
    #[arg(long = "verify-key", global = true, value_name = "FILE")]
    verify_keys: Vec<PathBuf>,
    /// Accept a validly signed object whose signed build time is older
    /// than the newest one accepted before for this kernel (a rollback),
    /// or one without a signed build time once one was accepted.
    #[arg(long, global = true)]
    allow_downgrade: bool,
    /// Where the newest accepted signed build time per kernel is recorded
    /// (rollback.json, 0600; the folder 0700, checked like the install
    /// path). [default: /var/lib/bpfarm/agent]
    #[arg(long, global = true, value_name = "DIR", env = "BPFARM_AGENT_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once(':').ok_or_else(|| format!("{s:?} is not K:V"))?;
    if k.trim().is_empty() {
        return Err(format!("{s:?} has an empty header name"));
    }
    Ok((k.trim().to_owned(), v.trim().to_owned()))
}

#[derive(Subcommand, Debug)]
enum Command {
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
    /// Build locally only and install (needs clang; no privileges).
    Build,
    /// List the events the tracer reports.
    ListEvents,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// table (default on a terminal) or json (one object per line).
    #[arg(long, value_enum)]
    output: Option<Output>,
    /// Only events of these commands (repeatable).
    #[arg(long)]
    comm: Vec<String>,
    /// Only events of these process ids (repeatable).
    #[arg(long)]
    pid: Vec<u32>,
    /// Only events of these user ids (repeatable).
    #[arg(long)]
    uid: Vec<u32>,
    /// Only these events (repeatable): exec, exit, fork, open, connect, creds.
    #[arg(long = "event", value_parser = clap::builder::PossibleValuesParser::new(["exec", "exit", "fork", "open", "connect", "creds"]))]
    events: Vec<String>,
    /// Copy each executed binary into <install-path>/out/, deduplicated by content.
    #[arg(long, value_enum)]
    capture: Option<Capture>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// The host name events carry [default: uname -n]. In a Kubernetes
    /// DaemonSet, set it to the node's name (downward API spec.nodeName).
    #[arg(long, env = "BPFARM_HOST_NAME", value_name = "NAME")]
    host_name: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Capture {
    Exec,
}

/// Flags and environment (clap) over the settings file over the defaults.
fn resolve_config(c: &Common) -> anyhow::Result<ResolveConfig> {
    let (file, _) = bpfarm_agent::config::load(c.config.as_deref())?;
    let (running_release, kernel) =
        bpfarm_builder::kernel::running().context("reading the running kernel's release")?;
    let release = c.kernel_release.clone().unwrap_or_else(|| running_release.clone());
    let arch = Arch::host().context("this machine's arch is not one bpfarm builds for")?;
    let version = match &c.obj_version {
        Some(v) => v.clone(),
        None => bpfarm_builder::program::ProgramSources::embedded().version()?,
    };
    let running = release == running_release;
    let registries = if c.registries.is_empty() { file.registries.unwrap_or_default() } else { c.registries.clone() };
    let registry_headers = if c.registry_headers.is_empty() {
        file.registry_headers
            .unwrap_or_default()
            .iter()
            .map(|h| parse_header(h).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<_>>()
            .context("registry_headers in the config file")?
    } else {
        c.registry_headers.clone()
    };
    let defaults = TransportConfig::default();
    Ok(ResolveConfig {
        identity: Identity::new(&release, arch, &version)?,
        kernel: if running { kernel } else { Default::default() },
        bpf_file: std::env::var_os("TRACEE_BPF_FILE").filter(|v| !v.is_empty()).map(PathBuf::from),
        exe_dir: std::env::current_exe().ok().and_then(|e| e.parent().map(|p| p.to_owned())),
        install_path: c.install_path.clone().or(file.install_path).unwrap_or_else(|| PathBuf::from("/tmp/tracee")),
        registries,
        registry_headers,
        registry_token: c.registry_token.clone().or(file.registry_token),
        policy: c.build_policy.or(file.build_policy).unwrap_or(BuildPolicy::IfNeeded),
        kern_headers: std::env::var_os("KERN_HEADERS").filter(|v| !v.is_empty()).map(PathBuf::from),
        running_kernel: running,
        transport: TransportConfig {
            ca_certs: c.ca_cert.clone().or(file.ca_cert).into_iter().collect(),
            insecure: c.insecure || file.insecure.unwrap_or(false),
            timeout: c.timeout.or(file.timeout).map(Duration::from_secs).unwrap_or(defaults.timeout),
            max_object_bytes: c.max_object_size.or(file.max_object_size).unwrap_or(defaults.max_object_bytes),
        },
        force_object: c.force_object,
        signing: signing_policy(&c.signing, file.verify_keys, file.state_dir)?,
    })
}

/// #11: keys from the flags, else `BPFARM_VERIFY_KEYS` (comma- or
/// colon-separated), else the config file.
fn signing_policy(
    a: &SigningArgs,
    file_keys: Option<Vec<PathBuf>>,
    file_state: Option<PathBuf>,
) -> anyhow::Result<bpfarm_agent::verify::SignPolicy> {
    use bpfarm_agent::verify::SignPolicy;
    let from_env = || {
        std::env::var("BPFARM_VERIFY_KEYS").ok().map(|v| {
            v.split([',', ':']).map(str::trim).filter(|p| !p.is_empty()).map(PathBuf::from).collect::<Vec<_>>()
        })
    };
    let paths =
        if a.verify_keys.is_empty() { from_env().or(file_keys).unwrap_or_default() } else { a.verify_keys.clone() };
    let mut policy = SignPolicy { allow_downgrade: a.allow_downgrade, ..SignPolicy::default() };
    if !paths.is_empty() {
        policy.keys = Some(bpfarm_agent::verify::load_keys(&paths)?);
    }
    if let Some(dir) = a.state_dir.clone().or(file_state) {
        policy.state = bpfarm_agent::rollback::RollbackState::new(dir);
    }
    Ok(policy)
}

fn print_trail(trail: &[resolve::Step]) {
    for s in trail {
        eprintln!("  {}: {}", s.place, s.outcome);
    }
}

fn main_inner(cli: Cli) -> anyhow::Result<()> {
    if let Command::ListEvents = cli.command {
        for (name, what) in bpfarm_agent::events::EVENTS {
            println!("{name:<8} {what}");
        }
        println!(
            "(every event also has ts_ns (CLOCK_MONOTONIC), time (RFC 3339, UTC), epoch_ns, host, pid, tid, ppid, uid, gid, comm)"
        );
        return Ok(());
    }
    if matches!(cli.command, Command::Locate { provenance: true, .. })
        && cli.common.signing.verify_keys.is_empty()
        && std::env::var_os("BPFARM_VERIFY_KEYS").is_none()
        && bpfarm_agent::config::load(cli.common.config.as_deref()).is_ok_and(|(f, _)| f.verify_keys.is_none())
    {
        use clap::CommandFactory;
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "locate --provenance needs --verify-key: an unverified statement proves nothing",
            )
            .exit();
    }
    let cfg = resolve_config(&cli.common)?;
    match cli.command {
        Command::Locate { output, provenance } => {
            let r = resolve::resolve(&cfg, Mode::Locate);
            // #11: the verified provenance of what would be loaded.
            let verified = r.as_ref().ok().and_then(|res| res.object.as_ref()?.signature.as_ref()?.provenance.clone());
            if provenance && verified.is_none() {
                let why = match &r {
                    Ok(res) if res.object.is_none() => "it would be fetched or built; its provenance is checked then",
                    Ok(_) => "the object it would load came without a signed provenance (.intoto.jsonl)",
                    Err(_) => "there is nothing to load",
                };
                anyhow::bail!("no verified provenance to print: {why}");
            }
            match output {
                Output::Json => {
                    let v = match &r {
                        Ok(res) => {
                            let mut v = serde_json::to_value(res)?;
                            let signature = res.object.as_ref().and_then(|o| o.signature.as_ref());
                            v["signature"] = serde_json::to_value(signature)?;
                            if let Some(p) = verified.as_ref().filter(|_| provenance) {
                                v["provenance"] = serde_json::from_slice(&p.statement)?;
                            }
                            v
                        }
                        Err(e) => serde_json::json!({ "error": e.to_string(), "trail": e.trail() }),
                    };
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                Output::Table => {
                    println!(
                        "kernel {} ({}), version {}: {}",
                        cfg.identity.kernel_release,
                        cfg.identity.arch,
                        cfg.identity.version,
                        cfg.identity.file_name()
                    );
                    let trail = match &r {
                        Ok(res) => &res.trail,
                        Err(e) => e.trail(),
                    };
                    for s in trail {
                        println!("  {}: {}", s.place, s.outcome);
                    }
                    match &r {
                        Ok(res) if res.would.is_some() => {
                            println!("would load {} after: {}", res.path.display(), res.would.as_deref().unwrap_or(""))
                        }
                        Ok(res) => println!("would load {}", res.path.display()),
                        Err(_) => println!("nothing to load"),
                    }
                    if let Some(p) = verified.as_ref().filter(|_| provenance) {
                        print!("{}", bpfarm_agent::verify::describe_provenance(p));
                    }
                }
            }
            r.map(|_| ()).map_err(|e| anyhow::anyhow!("{}", e.to_string().lines().next().unwrap_or("")))
        }
        Command::Fetch | Command::Build => {
            let mode = if matches!(cli.command, Command::Fetch) { Mode::FetchOnly } else { Mode::BuildOnly };
            let res = resolve::resolve(&cfg, mode)?;
            print_trail(&res.trail);
            println!("{}", res.path.display());
            Ok(())
        }
        Command::Run(a) => {
            let res = resolve::resolve(&cfg, Mode::Run)?;
            eprintln!("bpfarm-agent: using {} ({:?})", res.path.display(), res.source);
            print_trail(&res.trail);
            let object = res.object.context("resolution returned no verified bytes")?;
            if object.embedded.is_none() || object.embedded.as_ref().is_some_and(|e| e.check(&cfg.identity).is_err()) {
                eprintln!(
                    "bpfarm-agent: warning: --force-object: loading {} although it is not verified for this kernel",
                    res.path.display()
                );
            }
            let output = a.output.unwrap_or_else(|| {
                if std::io::IsTerminal::is_terminal(&std::io::stdout()) { Output::Table } else { Output::Json }
            });
            // Captures go into a checked folder of the install path.
            let capture_dir = match a.capture {
                Some(_) => Some(
                    TrustedDir::open_or_create(&cfg.install_path)
                        .and_then(|d| d.subdir("out"))
                        .map(|d| d.path().to_owned())?,
                ),
                None => None,
            };
            run::run(&RunConfig {
                object: res.path,
                bytes: object.bytes,
                output,
                filters: Filters { comm: a.comm, pid: a.pid, uid: a.uid, events: a.events },
                duration: a.duration.map(Duration::from_secs_f64),
                capture_dir,
                host: a.host_name.filter(|h| !h.is_empty()).unwrap_or_else(bpfarm_agent::events::host_name),
            })
        }
        Command::ListEvents => unreachable!("handled above"),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("BPFARM_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match main_inner(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bpfarm-agent: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
