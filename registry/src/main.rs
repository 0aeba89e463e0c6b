//! `bpfarm-registry`: serve a registry, or manage its tokens.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bpfarm_registry::repo::Scope;
use bpfarm_registry::{Settings, app, open, tokens};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "bpfarm-registry", version, about = "Store and serve bpfarm's per-kernel eBPF objects")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the HTTP API (/v1), the coverage page (/), the static layout and the health and metrics endpoints.
    ///
    /// Settings come from flags, else environment variables, else --config,
    /// else the defaults; only --data is needed.
    Serve {
        /// Address to listen on [default: 127.0.0.1:8080].
        #[arg(long, env = "BPFARM_REGISTRY_LISTEN")]
        listen: Option<String>,
        /// Data folder: index.sqlite and blobs/ (created if missing).
        #[arg(long, env = "BPFARM_REGISTRY_DATA")]
        data: Option<PathBuf>,
        /// Require a read token for downloads, lookups and the page too.
        #[arg(long, env = "BPFARM_REGISTRY_REQUIRE_READ_TOKEN", num_args = 0..=1, default_missing_value = "true")]
        require_read_token: Option<bool>,
        /// Largest object accepted, in bytes [default: 67108864].
        #[arg(long, env = "BPFARM_REGISTRY_MAX_OBJECT_BYTES")]
        max_object_bytes: Option<u64>,
        /// OCI namespace of the objects published through /v1 (<namespace>/tracee-bpf) [default: bpfarm].
        #[arg(long, env = "BPFARM_REGISTRY_OCI_NAMESPACE")]
        oci_namespace: Option<String>,
        /// Unfinished OCI uploads older than this many seconds are removed [default: 3600].
        #[arg(long, env = "BPFARM_REGISTRY_UPLOAD_TTL")]
        upload_ttl: Option<u64>,
        /// A TOML file with any of: listen, data, require_read_token, max_object_bytes, oci_namespace, upload_ttl.
        #[arg(long, value_name = "FILE", env = "BPFARM_REGISTRY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Write the static layout (<version>/<arch>/<file>, .sha256, .json) as a
    /// folder any plain HTTP server or CDN can serve; filters make a subset
    /// for a mirror. Running it again only adds what is new.
    Export {
        #[arg(long, env = "BPFARM_REGISTRY_DATA")]
        data: PathBuf,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Only these program versions (repeatable).
        #[arg(long = "version")]
        versions: Vec<String>,
        /// Only these arches (repeatable): x86_64/amd64, aarch64/arm64.
        #[arg(long = "arch")]
        arches: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create a token and print it once (last line of stdout); only its hash is stored.
    Create {
        #[arg(long, env = "BPFARM_REGISTRY_DATA")]
        data: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        scope: ScopeArg,
    },
}

/// `--config` file: the same settings as the flags.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data: Option<PathBuf>,
    require_read_token: Option<bool>,
    max_object_bytes: Option<u64>,
    oci_namespace: Option<String>,
    upload_ttl: Option<u64>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum ScopeArg {
    Push,
    Read,
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { listen, data, require_read_token, max_object_bytes, oci_namespace, upload_ttl, config } => {
            let file: FileConfig = match &config {
                Some(path) => {
                    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
                }
                None => FileConfig::default(),
            };
            let defaults = Settings::default();
            let listen = listen.or(file.listen).unwrap_or_else(|| "127.0.0.1:8080".into());
            let data = data.or(file.data).context("no data folder: pass --data DIR (or data = \"...\" in --config)")?;
            let settings = Settings {
                require_read_token: require_read_token
                    .or(file.require_read_token)
                    .unwrap_or(defaults.require_read_token),
                max_object_bytes: max_object_bytes.or(file.max_object_bytes).unwrap_or(defaults.max_object_bytes),
                oci_namespace: oci_namespace.or(file.oci_namespace).unwrap_or_else(|| defaults.oci_namespace.clone()),
                upload_ttl: upload_ttl
                    .or(file.upload_ttl)
                    .map(std::time::Duration::from_secs)
                    .unwrap_or(defaults.upload_ttl),
                ..defaults.clone()
            };
            let repo = format!("{}/{}", settings.oci_namespace, bpfarm_object::oci::REPOSITORY);
            anyhow::ensure!(
                bpfarm_registry::oci::valid_repo(&repo),
                "--oci-namespace {:?} makes {repo:?}, not a valid OCI repository name",
                settings.oci_namespace
            );
            let state = open(&data, settings).await?;
            let listener =
                tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("listening on {listen}"))?;
            // Tests and scripts wait for this line instead of sleeping.
            println!("listening on http://{}", listener.local_addr()?);
            axum::serve(listener, app(state)).with_graceful_shutdown(shutdown()).await?;
            Ok(())
        }
        Command::Export { data, out, versions, arches } => {
            for a in &arches {
                a.parse::<bpfarm_object::Arch>()?;
            }
            let state = open(&data, Settings::default()).await?;
            let n = bpfarm_registry::export::export(
                &state.repo,
                &state.blobs,
                &out,
                &bpfarm_registry::export::ExportFilter { versions, arches },
            )
            .await?;
            println!("exported {n} objects to {}", out.display());
            Ok(())
        }
        Command::Token(TokenCommand::Create { data, name, scope }) => {
            let state = open(&data, Settings::default()).await?;
            let token = tokens::generate();
            let scope = match scope {
                ScopeArg::Push => Scope::Push,
                ScopeArg::Read => Scope::Read,
            };
            let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
            state
                .repo
                .add_token(&name, scope, &tokens::hash(&token), &now)
                .await
                .with_context(|| format!("storing token {name:?} (names are unique)"))?;
            eprintln!("created {} token {name:?}; it is shown only now:", scope.as_str());
            println!("{token}");
            Ok(())
        }
    }
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("BPFARM_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bpfarm-registry: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
