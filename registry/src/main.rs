//! `bpfarm-registry`: serve a registry, manage its tokens, export, check,
//! bundle, import, mirror or collect it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bpfarm_registry::repo::Scope;
use bpfarm_registry::server::{self, ServerSettings};
use bpfarm_registry::tls::{ReloadingCert, TlsFiles};
use bpfarm_registry::{Settings, app, metrics_app, open, open_tool, tokens};
use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser, Debug)]
#[command(name = "bpfarm-registry", version, about = "Store and serve bpfarm's per-kernel eBPF objects")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the HTTP API (/v1, OCI /v2), the coverage page (/), the static layout and the health and metrics endpoints.
    ///
    /// Settings come from flags, else environment variables, else --config,
    /// else the defaults; only --data is needed. SIGTERM or SIGINT: stop
    /// accepting, finish requests in flight, exit within --shutdown-timeout.
    /// SIGHUP: reload the TLS certificate and key.
    Serve(Box<ServeArgs>),
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
    /// Check a registry's data folder: re-hash every blob, check the index
    /// against the blobs and /v1 against OCI, and report.
    ///
    /// With --repair: quarantine corrupt blobs (moved to blobs/quarantine/,
    /// never deleted; uploading the right bytes again restores them) and
    /// rewrite OCI forms that disagree with /v1. Safe beside a running
    /// server. Exit status: 0 nothing wrong (or all of it repaired), 1
    /// problems remain (each printed, with what to do), 2 the check failed.
    Fsck {
        /// The registry's data folder (--data of serve).
        #[arg(long, env = "BPFARM_REGISTRY_DATA")]
        data: PathBuf,
        /// Fix what can be fixed here.
        #[arg(long)]
        repair: bool,
        /// The OCI namespace the server uses (--oci-namespace of serve).
        #[arg(long, env = "BPFARM_REGISTRY_OCI_NAMESPACE", default_value = "bpfarm")]
        oci_namespace: String,
    },
    /// Write one OCI image layout in a tar (oci-layout, index.json naming
    /// every tag, blobs/sha256/...) holding what /v2 serves, for carrying
    /// across an air gap: `import` reads it on the other side; skopeo
    /// (oci-archive:FILE.tar:TAG), oras and the agent (--registry
    /// oci-layout:DIR, unpacked) read it too.
    ///
    /// Every tag of every repository goes in, so signatures and
    /// attestations (cosign's sha256-<hex>.sig/.att tags) travel with what
    /// they sign. --version and --matrix keep only the objects of those
    /// versions / kernels (an index is carried whole: a kernel release
    /// brings all its arches). The same data gives the same bytes; the
    /// output is replaced only once complete.
    Bundle {
        #[arg(long, env = "BPFARM_REGISTRY_DATA")]
        data: PathBuf,
        /// The tar to write.
        #[arg(long)]
        out: PathBuf,
        /// Only these program versions (repeatable).
        #[arg(long = "version")]
        versions: Vec<String>,
        /// Only the kernels (release, arch) of this matrix TOML (kernels/<name>.toml).
        #[arg(long)]
        matrix: Option<PathBuf>,
        /// The OCI namespace the server uses (--oci-namespace of serve).
        #[arg(long, env = "BPFARM_REGISTRY_OCI_NAMESPACE", default_value = "bpfarm")]
        oci_namespace: String,
    },
    /// Import a bundle (an OCI image layout in a tar, from `bundle`,
    /// skopeo or oras): every entry is checked — path, type, size, digest,
    /// media type, every blob the index reaches present with the size it
    /// names — before anything is written; bpfarm objects then become /v1
    /// objects through the publish rules, as a /v2 push does, with the
    /// signature and provenance files the bundle carries for them (its
    /// sha256-<hex>.bpfarm tags) and their cosign signatures. With
    /// --trusted-key every object must be signed by one of the keys (its
    /// .sig file, or else its cosign signature). Importing again adds
    /// nothing.
    ///
    /// Exit status: 0 imported (or nothing new), 1 the bundle was refused
    /// (nothing written; an object the keys refuse, or signatures that
    /// differ from those held for the same object, refuse it too), 2 the
    /// import failed.
    Import {
        #[arg(long, env = "BPFARM_REGISTRY_DATA")]
        data: PathBuf,
        /// The bundle tar.
        file: PathBuf,
        /// The OCI namespace the server uses (--oci-namespace of serve).
        #[arg(long, env = "BPFARM_REGISTRY_OCI_NAMESPACE", default_value = "bpfarm")]
        oci_namespace: String,
        /// Most entries the tar may hold.
        #[arg(long, default_value_t = 1 << 20)]
        max_entries: u64,
        /// Largest blob, in bytes (--max-blob-bytes of serve).
        #[arg(long, env = "BPFARM_REGISTRY_MAX_BLOB_BYTES", default_value_t = 2 << 30)]
        max_blob_bytes: u64,
        /// Most bytes of all entries together.
        #[arg(long, default_value_t = 64 << 30)]
        max_total_bytes: u64,
        #[command(flatten)]
        trusted_keys: TrustedKeyArgs,
    },
    /// Remove what nothing references: blobs no manifest or object names
    /// (older than --grace), and with --keep-versions N every object
    /// (history included, with its OCI form, signatures and failures) of
    /// all but the N newest program versions (newest by their latest
    /// publish). Safe beside a serving registry. Prints what it freed.
    Gc {
        #[arg(long, env = "BPFARM_REGISTRY_DATA")]
        data: PathBuf,
        /// Report what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Keep the objects of this many newest program versions (at least 1).
        #[arg(long)]
        keep_versions: Option<usize>,
        /// Blobs younger than this many seconds are kept even if nothing
        /// names them yet (a publish in flight uploads its blob first).
        /// With 0 a publish in flight may be refused (never left
        /// incomplete) and has to be retried.
        #[arg(long, default_value_t = 3600)]
        grace: u64,
        /// The OCI namespace the server uses (--oci-namespace of serve).
        #[arg(long, env = "BPFARM_REGISTRY_OCI_NAMESPACE", default_value = "bpfarm")]
        oci_namespace: String,
    },
    /// Sync from an upstream bpfarm registry (http(s)://HOST[:PORT], its /v1
    /// objects with their .sig and .intoto.jsonl) or from any OCI registry
    /// the builder published to (oci://HOST[:PORT]/NAMESPACE: its
    /// NAMESPACE/tracee-bpf release tags with their cosign .sig/.att and
    /// sha256-<hex>.bpfarm tags, stored as `import` stores a bundle) into
    /// this data folder, fetching only what is missing, every digest and
    /// size verified; interrupted, run it again. For a DMZ host serving an
    /// air-gapped site.
    ///
    /// An object is refused, and nothing of it stored, when --trusted-key
    /// is given and it is not signed by one of the keys; whatever the keys,
    /// when it would replace a signed object here with an unsigned one, or
    /// bring other signatures for an object held signed (accepted only when
    /// the keys verify them). Refusals are printed and the sync goes on.
    /// Exit status: 0 synced, 1 some objects (or an oci:// upstream's tag
    /// list) were refused, 2 the sync failed.
    Mirror {
        #[arg(long, env = "BPFARM_REGISTRY_DATA")]
        data: PathBuf,
        /// The upstream: a bpfarm registry, http(s)://HOST[:PORT], or an OCI
        /// registry, oci://HOST[:PORT]/NAMESPACE (plain http for loopback
        /// hosts only, unless --insecure; credentials: --token, else the
        /// docker config.json entry for the host).
        #[arg(long)]
        from: String,
        /// A read token for the upstream.
        #[arg(long, env = "BPFARM_MIRROR_TOKEN")]
        token: Option<String>,
        /// PEM CA certificates to trust for the upstream (repeatable).
        #[arg(long = "ca-cert")]
        ca_certs: Vec<PathBuf>,
        /// Allow plain http to a non-loopback upstream.
        #[arg(long)]
        insecure: bool,
        /// Seconds one request may take, body included.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Largest blob fetched, in bytes.
        #[arg(long, default_value_t = 64 << 20)]
        max_blob_bytes: u64,
        /// The OCI namespace the server uses (--oci-namespace of serve).
        #[arg(long, env = "BPFARM_REGISTRY_OCI_NAMESPACE", default_value = "bpfarm")]
        oci_namespace: String,
        #[command(flatten)]
        trusted_keys: TrustedKeyArgs,
    },
}

/// `--trusted-key` of the tools that store what they carry in.
#[derive(clap::Args, Debug)]
struct TrustedKeyArgs {
    /// Take only objects signed by one of these ECDSA P-256 public keys
    /// (PEM, e.g. cosign.pub; repeatable for rotation), as `serve
    /// --trusted-key` does: an unsigned or badly signed object is refused
    /// and nothing of it is stored.
    #[arg(long = "trusted-key", value_name = "FILE", env = "BPFARM_REGISTRY_TRUSTED_KEYS", value_delimiter = ',')]
    trusted_keys: Vec<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "BPFARM_REGISTRY_LISTEN")]
    listen: Option<String>,
    /// Data folder: index.sqlite and blobs/ (created if missing).
    #[arg(long, env = "BPFARM_REGISTRY_DATA")]
    data: Option<PathBuf>,
    /// Require a read token for downloads, lookups, the page and /metrics too.
    #[arg(long, env = "BPFARM_REGISTRY_REQUIRE_READ_TOKEN", num_args = 0..=1, default_missing_value = "true")]
    require_read_token: Option<bool>,
    /// Largest object accepted through /v1, in bytes [default: 67108864].
    #[arg(long, env = "BPFARM_REGISTRY_MAX_OBJECT_BYTES")]
    max_object_bytes: Option<u64>,
    /// Largest blob accepted through OCI /v2, in bytes [default: 2147483648].
    #[arg(long, env = "BPFARM_REGISTRY_MAX_BLOB_BYTES")]
    max_blob_bytes: Option<u64>,
    /// OCI namespace of the objects published through /v1 (<namespace>/tracee-bpf) [default: bpfarm].
    #[arg(long, env = "BPFARM_REGISTRY_OCI_NAMESPACE")]
    oci_namespace: Option<String>,
    /// Unfinished OCI uploads older than this many seconds are removed [default: 3600].
    #[arg(long, env = "BPFARM_REGISTRY_UPLOAD_TTL")]
    upload_ttl: Option<u64>,
    /// Most open client connections. At the cap no more are accepted (they
    /// wait in the accept queue) and the one that has waited longest for a
    /// request head is closed to make room [default: 1024, lowered to what
    /// `ulimit -n` allows].
    #[arg(long, env = "BPFARM_REGISTRY_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Seconds a client has to send a whole request head (and to finish a TLS
    /// handshake); also how long an idle keep-alive connection stays [default: 10].
    #[arg(long, env = "BPFARM_REGISTRY_HEADER_TIMEOUT")]
    header_timeout: Option<u64>,
    /// Seconds without a byte moving either way, during a request, before the
    /// connection is closed (a stalled upload, a client that stopped reading) [default: 30].
    #[arg(long, env = "BPFARM_REGISTRY_IDLE_TIMEOUT")]
    idle_timeout: Option<u64>,
    /// Seconds to finish requests in flight after SIGTERM before exiting anyway [default: 10].
    #[arg(long, env = "BPFARM_REGISTRY_SHUTDOWN_TIMEOUT")]
    shutdown_timeout: Option<u64>,
    /// PEM certificate chain: serve HTTPS (reloaded on SIGHUP). Needs --tls-key.
    #[arg(long, value_name = "FILE", env = "BPFARM_REGISTRY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (reloaded on SIGHUP).
    #[arg(long, value_name = "FILE", env = "BPFARM_REGISTRY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve /metrics (and /healthz) on this address instead, without tokens;
    /// keep it private. Without it, /metrics is on --listen and obeys --require-read-token.
    #[arg(long, value_name = "ADDR", env = "BPFARM_REGISTRY_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Refuse publishes (through /v1 and /v2) of objects not signed by one of
    /// these ECDSA P-256 public keys (PEM, e.g. cosign.pub); repeat for key
    /// rotation. Through /v1 the object's .sig must verify (and its
    /// provenance and manifest signature, when sent); through /v2 a bpfarm
    /// artifact's cosign signature must already be under its
    /// sha256-<hex>.sig tag. Keys are checked at start.
    #[arg(long = "trusted-key", value_name = "FILE", env = "BPFARM_REGISTRY_TRUSTED_KEYS", value_delimiter = ',')]
    trusted_keys: Vec<PathBuf>,
    /// Most published matrices (PUT /v1/matrices/<name>): a new name beyond
    /// it is refused (409), replacing one is not [default: 256].
    #[arg(long, env = "BPFARM_REGISTRY_MAX_MATRICES")]
    max_matrices: Option<u64>,
    /// A TOML file with any of: listen, data, require_read_token, max_object_bytes,
    /// max_blob_bytes, oci_namespace, upload_ttl, max_connections, header_timeout,
    /// idle_timeout, shutdown_timeout, tls_cert, tls_key, metrics_listen, trusted_keys,
    /// max_matrices.
    #[arg(long, value_name = "FILE", env = "BPFARM_REGISTRY_CONFIG")]
    config: Option<PathBuf>,
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
    /// Revoke the token named --name: a registry serving this data refuses
    /// it (401) from its next request on, without a restart. (Restore an
    /// index only with the registry stopped; one whose index file was
    /// renamed over while serving refuses every token until restarted.)
    /// Exit 2 when no token has that name or --data holds no index.
    Revoke {
        #[arg(long, env = "BPFARM_REGISTRY_DATA")]
        data: PathBuf,
        #[arg(long)]
        name: String,
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
    max_blob_bytes: Option<u64>,
    oci_namespace: Option<String>,
    upload_ttl: Option<u64>,
    max_connections: Option<usize>,
    header_timeout: Option<u64>,
    idle_timeout: Option<u64>,
    shutdown_timeout: Option<u64>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    metrics_listen: Option<String>,
    trusted_keys: Option<Vec<PathBuf>>,
    max_matrices: Option<u64>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum ScopeArg {
    Push,
    Read,
}

fn seconds(name: &str, v: Option<u64>, default: Duration) -> anyhow::Result<Duration> {
    match v {
        Some(0) => anyhow::bail!("--{name} must be at least 1 second"),
        Some(s) => Ok(Duration::from_secs(s)),
        None => Ok(default),
    }
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let file: FileConfig = match &a.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let defaults = Settings::default();
    let listen = a.listen.or(file.listen).unwrap_or_else(|| "127.0.0.1:8080".into());
    let data = a.data.or(file.data).context("no data folder: pass --data DIR (or data = \"...\" in --config)")?;
    let metrics_listen = a.metrics_listen.or(file.metrics_listen);
    let settings = Settings {
        require_read_token: a.require_read_token.or(file.require_read_token).unwrap_or(defaults.require_read_token),
        max_object_bytes: a.max_object_bytes.or(file.max_object_bytes).unwrap_or(defaults.max_object_bytes),
        max_blob_bytes: a.max_blob_bytes.or(file.max_blob_bytes).unwrap_or(defaults.max_blob_bytes),
        oci_namespace: a.oci_namespace.or(file.oci_namespace).unwrap_or_else(|| defaults.oci_namespace.clone()),
        upload_ttl: a.upload_ttl.or(file.upload_ttl).map(Duration::from_secs).unwrap_or(defaults.upload_ttl),
        metrics_on_api: metrics_listen.is_none(),
        max_matrices: a.max_matrices.or(file.max_matrices).unwrap_or(defaults.max_matrices),
        trusted_keys: {
            let paths = if a.trusted_keys.is_empty() { file.trusted_keys.unwrap_or_default() } else { a.trusted_keys };
            if paths.is_empty() {
                None
            } else {
                let keys = bpfarm_object::sign::TrustedKeys::load(&paths).context("--trusted-key")?;
                tracing::info!("publishes must be signed by one of: {}", keys.ids());
                Some(keys)
            }
        },
    };
    let repo = bpfarm_registry::faces::canonical_repo(&settings.oci_namespace);
    anyhow::ensure!(
        bpfarm_registry::distribution::valid_repo(&repo),
        "--oci-namespace {:?} makes {repo:?}, not a valid OCI repository name",
        settings.oci_namespace
    );
    let sd = ServerSettings::default();
    let (max_connections, warning) =
        server::fit_connections(a.max_connections.or(file.max_connections), sd.max_connections)?;
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    let server_settings = ServerSettings {
        header_timeout: seconds("header-timeout", a.header_timeout.or(file.header_timeout), sd.header_timeout)?,
        idle_timeout: seconds("idle-timeout", a.idle_timeout.or(file.idle_timeout), sd.idle_timeout)?,
        shutdown_timeout: seconds(
            "shutdown-timeout",
            a.shutdown_timeout.or(file.shutdown_timeout),
            sd.shutdown_timeout,
        )?,
        max_connections,
    };
    let tls = match (a.tls_cert.or(file.tls_cert), a.tls_key.or(file.tls_key)) {
        (Some(cert), Some(key)) => Some(ReloadingCert::load(TlsFiles { cert, key })?),
        (None, None) => None,
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    };
    // Signal handlers first: a failure here is a setup error, not a hang later.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;

    let state = open(&data, settings).await?;
    let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("listening on {listen}"))?;
    let metrics_listener = match &metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr} for metrics"))?,
        ),
        None => None,
    };
    let acceptor = tls.as_ref().map(|t| t.acceptor()).transpose()?;
    // Tests and scripts wait for the "listening on" line instead of sleeping;
    // it is the last thing written to stdout.
    if let Some(l) = &metrics_listener {
        println!("metrics on http://{}", l.local_addr()?);
    }
    println!("listening on {}://{}", if tls.is_some() { "https" } else { "http" }, listener.local_addr()?);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reload = tls.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => match &reload {
                    Some(cert) => match cert.reload() {
                        Ok(()) => tracing::info!(cert = %cert.files().cert.display(), "TLS certificate reloaded"),
                        Err(e) => tracing::error!("TLS reload failed, still serving the previous certificate: {e}"),
                    },
                    None => tracing::info!("SIGHUP: no TLS certificate to reload"),
                },
            }
        }
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    let metrics = state.metrics().clone();
    let api = server::serve(
        listener,
        app(state.clone()),
        server_settings.clone(),
        acceptor,
        metrics.clone(),
        stop_rx.clone(),
    );
    let private = async {
        if let Some(l) = metrics_listener {
            let settings = ServerSettings { max_connections: 16, ..server_settings.clone() };
            server::serve(l, metrics_app(state.clone()), settings, None, metrics.clone(), stop_rx.clone()).await;
        }
    };
    tokio::join!(api, private);
    let _ = tokio::time::timeout(Duration::from_secs(1), state.repo.close()).await;
    Ok(())
}

impl TrustedKeyArgs {
    /// The keys, loaded and checked before any work.
    fn load(&self) -> anyhow::Result<Option<bpfarm_object::sign::TrustedKeys>> {
        if self.trusted_keys.is_empty() {
            return Ok(None);
        }
        let keys = bpfarm_object::sign::TrustedKeys::load(&self.trusted_keys).context("--trusted-key")?;
        tracing::info!("objects must be signed by one of: {}", keys.ids());
        Ok(Some(keys))
    }
}

/// Opens an existing registry's data folder for a tool.
async fn open_existing(data: &std::path::Path) -> anyhow::Result<bpfarm_registry::AppState> {
    anyhow::ensure!(data.join("index.sqlite").is_file(), "{} holds no registry (no index.sqlite)", data.display());
    Ok(open_tool(data, Settings::default()).await?)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(a) => serve(*a).await.map(|()| ExitCode::SUCCESS),
        Command::Export { data, out, versions, arches } => {
            for a in &arches {
                a.parse::<bpfarm_object::Arch>()?;
            }
            let state = open_tool(&data, Settings::default()).await?;
            let n = bpfarm_registry::export::export(
                &state.repo,
                &state.blobs,
                &out,
                &bpfarm_registry::export::ExportFilter { versions, arches },
            )
            .await?;
            println!("exported {n} objects to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Fsck { data, repair, oci_namespace } => {
            let state = open_existing(&data).await?;
            let oci_repo = bpfarm_registry::faces::canonical_repo(&oci_namespace);
            let report = bpfarm_registry::fsck::fsck(&state.repo, &state.blobs, &oci_repo, repair).await?;
            for f in &report.fixed {
                println!("fixed: {f}");
            }
            for p in &report.problems {
                println!("problem: {p}");
            }
            println!(
                "fsck: {} blobs re-hashed, {} object rows checked: {} fixed, {} problems{}",
                report.blobs_checked,
                report.objects_checked,
                report.fixed.len(),
                report.problems.len(),
                if report.problems.is_empty() || repair { "" } else { " (--repair fixes what it can)" }
            );
            Ok(if report.clean() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Bundle { data, out, versions, matrix, oci_namespace } => {
            let kernels = match &matrix {
                Some(path) => {
                    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                    Some(
                        bpfarm_registry::bundle::matrix_kernels(&text)
                            .with_context(|| format!("--matrix {}", path.display()))?,
                    )
                }
                None => None,
            };
            let state = open_existing(&data).await?;
            let canonical = bpfarm_registry::faces::canonical_repo(&oci_namespace);
            let started = std::time::Instant::now();
            let filter = bpfarm_registry::bundle::BundleFilter { versions, kernels };
            let r = bpfarm_registry::bundle::bundle(&state.repo, &state.blobs, &canonical, &out, &filter).await?;
            println!(
                "bundled {} tags, {} blobs ({} bytes) into {} in {:.1}s",
                r.tags,
                r.blobs,
                r.bytes,
                out.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Import { data, file, oci_namespace, max_entries, max_blob_bytes, max_total_bytes, trusted_keys } => {
            let trusted_keys = trusted_keys.load()?;
            let state =
                open_tool(&data, Settings { oci_namespace, max_blob_bytes, trusted_keys, ..Settings::default() })
                    .await?;
            let started = std::time::Instant::now();
            let limits = bpfarm_registry::import::ImportLimits { max_entries, max_blob_bytes, max_total_bytes };
            match bpfarm_registry::import::import_with(&state, &file, &limits).await {
                Ok(r) => {
                    println!(
                        "imported {}: {} new blobs ({} bytes), {} new manifests, {} objects published, {} already here, in {:.1}s",
                        file.display(),
                        r.new_blobs,
                        r.new_bytes,
                        r.new_manifests,
                        r.published,
                        r.present,
                        started.elapsed().as_secs_f64()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) if e.is_refusal() => {
                    eprintln!("bpfarm-registry: refused {}: {e}; nothing was imported", file.display());
                    Ok(ExitCode::from(1))
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Gc { data, dry_run, keep_versions, grace, oci_namespace } => {
            anyhow::ensure!(keep_versions != Some(0), "--keep-versions must be at least 1");
            let state = open_existing(&data).await?;
            let canonical = bpfarm_registry::faces::canonical_repo(&oci_namespace);
            let opts = bpfarm_registry::gc::GcOptions { dry_run, keep_versions, grace: Duration::from_secs(grace) };
            let r = bpfarm_registry::gc::gc(&state.repo, &state.blobs, &canonical, &opts).await?;
            for v in &r.versions_removed {
                println!("{} version {v}", if dry_run { "would remove" } else { "removed" });
            }
            println!(
                "gc{}: {} versions, {} object rows, {} manifests, {} tags; {} blobs, {} bytes {}",
                if dry_run { " (dry run)" } else { "" },
                r.versions_removed.len(),
                r.objects,
                r.manifests,
                r.tags,
                r.blobs,
                r.bytes,
                if dry_run { "would be freed" } else { "freed" }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Mirror {
            data,
            from,
            token,
            ca_certs,
            insecure,
            timeout,
            max_blob_bytes,
            oci_namespace,
            trusted_keys,
        } => {
            let trusted_keys = trusted_keys.load()?;
            let state = open_tool(&data, Settings { oci_namespace, trusted_keys, ..Settings::default() }).await?;
            let config = bpfarm_registry::mirror::MirrorConfig {
                from,
                token,
                ca_certs,
                insecure,
                timeout: Duration::from_secs(timeout.max(1)),
                max_blob_bytes,
            };
            let started = std::time::Instant::now();
            let r = match bpfarm_registry::oci_mirror::mirror(&state, &config).await {
                Ok(r) => r,
                Err(e) if e.is_refusal() => {
                    eprintln!("bpfarm-registry: refused {}: {e}; nothing of it was stored", config.from);
                    return Ok(ExitCode::from(1));
                }
                Err(e) => return Err(e.into()),
            };
            for w in &r.warnings {
                eprintln!("bpfarm-registry: warning: {w}");
            }
            for refused in &r.refused {
                eprintln!("bpfarm-registry: refused {refused}");
            }
            println!(
                "mirrored {}: {} fetched ({} bytes), {} already here, {} objects published, {} refused, in {:.1}s",
                config.from,
                r.fetched,
                r.bytes,
                r.present,
                r.published,
                r.refused.len(),
                started.elapsed().as_secs_f64()
            );
            Ok(if r.refused.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Token(TokenCommand::Create { data, name, scope }) => {
            let state = open_tool(&data, Settings::default()).await?;
            let scope = match scope {
                ScopeArg::Push => Scope::Push,
                ScopeArg::Read => Scope::Read,
            };
            let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
            let token = tokens::create(&state.repo, &name, scope, &now).await?;
            eprintln!("created {} token {name:?}; it is shown only now:", scope.as_str());
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(TokenCommand::Revoke { data, name }) => {
            // A mistyped --data must not leave a new, empty index behind.
            if !data.join("index.sqlite").is_file() {
                anyhow::bail!("no registry index in {} (no index.sqlite): nothing to revoke", data.display());
            }
            let state = open_tool(&data, Settings::default()).await?;
            if !state.repo.remove_token(&name).await? {
                anyhow::bail!("no token named {name:?} in {}", data.display());
            }
            eprintln!("revoked token {name:?}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("BPFARM_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bpfarm-registry: error: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bpfarm-registry: error: {e:#}");
            ExitCode::from(2)
        }
    };
    // Blocking file work still queued must not hold the exit past the
    // shutdown deadline.
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}
