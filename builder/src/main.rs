//! `bpfarm-builder`: parse arguments, run the build, print the summary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use bpfarm_builder::archive::Archive;
use bpfarm_builder::build::{self, BtfInput, BuildConfig, Request, Shard};
use bpfarm_builder::discover::{self, DiscoverConfig};
use bpfarm_builder::fetch::{self, FetchConfig};
use bpfarm_builder::limits::{Limits, parse_size};
use bpfarm_builder::matrix::{Matrix, MatrixDeb};
use bpfarm_builder::program::ProgramSources;
use bpfarm_builder::publish::Destination;
use bpfarm_builder::sandbox::SandboxMode;
use bpfarm_builder::signing::{self, Signer};
use bpfarm_object::Arch;
use bpfarm_object::client::RegistryClient;
use bpfarm_object::http::{Transport, TransportConfig};
use bpfarm_object::oci_client::{OciRegistry, OciTarget, credentials};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "bpfarm-builder",
    version,
    about = "Build bpfarm's eBPF tracer for many kernels: parallel, cached, reproducible"
)]
struct Cli {
    /// More output on stderr: -v says which compiler sandbox is in force and
    /// how header trees were paired, -vv adds debug detail.
    #[arg(long, short = 'v', action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Compile the tracer against kernel headers and write one object per kernel.
    ///
    /// Each object is written as <out>/<arch>/tracee.bpf.<release>.<version>.o
    /// with its metadata in <file>.json beside it. Unchanged kernels come from
    /// the cache without unpacking or compiling anything.
    ///
    /// Exit codes: 0 every kernel built; 1 some kernel failed (after building
    /// the rest); 2 a usage or setup error, found before any work: a missing
    /// input, an invalid --version, nothing that pairs into a kernel (listed
    /// with the reason), no sandbox for the compiler.
    ///
    /// Inputs are untrusted: every package and header tree is read within the
    /// --max-* limits, only regular files are read, and clang runs in a
    /// sandbox that sees the header trees, the program and the toolchain only.
    #[command(after_help = "Examples:\n  \
        bpfarm-builder build --headers ~/.cache/bpfarm/debs --out out\n  \
        bpfarm-builder build --matrix kernels/debian-bookworm.toml --shard 2/8 --report report.json\n  \
        bpfarm-builder build --running-kernel --out /tmp/tracee")]
    Build(Box<BuildArgs>),

    /// Read a Debian archive's signed indices and write the kernels it serves
    /// as a pinned matrix.
    ///
    /// The archive is what the machine's apt sources name (or --apt-source).
    /// Without --suite, every suite it serves is read: the suite classes
    /// (oldoldstable ... experimental) and the suites apt names, then each
    /// codename's -updates, -backports, -backports-sloppy and -security.
    /// Each InRelease is verified with gpgv against --keyring; each
    /// Packages.xz against the signed SHA256. Flavour packages are paired
    /// with their -common and linux-kbuild from control data. If any index
    /// fails, discover names it, exits 1 and leaves --output untouched.
    ///
    /// With --yum-repo (and no --apt-source or --suite), the yum
    /// repositories alone are read: repodata/repomd.xml, then the primary
    /// index it names (checked against its sha256 and size), for
    /// kernel-devel packages, each pinned as a [[kernel.rpm]].
    #[command(after_help = "Examples:\n  \
        bpfarm-builder discover --output kernels/debian.toml\n  \
        bpfarm-builder discover --suite bookworm-backports --arch amd64 --output bpo.toml\n  \
        bpfarm-builder discover --apt-source https://mirror.internal/debian --output m.toml\n  \
        bpfarm-builder discover --yum-repo https://mirror.internal/fedora/40/x86_64/os --output fedora.toml")]
    Discover(DiscoverArgs),

    /// Download a pinned matrix's packages straight from the archive.
    ///
    /// Each package is checked against the matrix's size and sha256 before it
    /// enters the package cache (<cache-dir>/debs/sha256/<hex>.deb, with a
    /// hard link under apt's file name beside it). Interrupted downloads
    /// resume. Exits 1 when any package could not be had.
    #[command(after_help = "Examples:\n  \
        bpfarm-builder fetch --matrix kernels/default.toml\n  \
        bpfarm-builder fetch --matrix kernels/debian.toml --select '^6\\.12\\.' --jobs 8")]
    Fetch(FetchArgs),
}

/// Where the archive is.
#[derive(clap::Args, Debug)]
struct ArchiveArgs {
    /// An archive root (e.g. https://mirror.internal/debian), instead of the
    /// apt sources. Repeatable: the security archive is usually a second one.
    #[arg(long, value_name = "URI", env = "BPFARM_APT_SOURCE", value_delimiter = ',')]
    apt_source: Vec<String>,

    /// A yum/dnf repository root (the folder holding repodata/), for RPM
    /// kernel-devel packages. Repeatable. `discover` reads its
    /// repodata/repomd.xml and primary index; `fetch` and `build --matrix`
    /// download the matrix's [[kernel.rpm]] packages from it.
    #[arg(long, value_name = "URL", env = "BPFARM_YUM_REPO", value_delimiter = ',')]
    yum_repo: Vec<String>,

    /// apt's configuration folder, read for sources.list, sources.list.d/*.list
    /// and *.sources.
    #[arg(long, value_name = "DIR", default_value = "/etc/apt")]
    apt_dir: PathBuf,

    /// The OpenPGP keyring the archive's InRelease files must be signed with;
    /// apt entries signed by another keyring are not used.
    #[arg(long, value_name = "FILE", default_value = bpfarm_builder::archive::DEFAULT_KEYRING)]
    keyring: PathBuf,

    /// A PEM file of CA certificates to trust besides the system's roots:
    /// an https:// archive mirror, or a --publish registry, with a private
    /// CA. (Plain http:// archives are read as apt reads them: every index
    /// is checked against the signed InRelease, every package against the
    /// matrix's sha256.)
    #[arg(long, value_name = "PATH", env = "BPFARM_CA_CERT")]
    ca_cert: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct DiscoverArgs {
    #[command(flatten)]
    archive: ArchiveArgs,

    /// Only these suites (repeatable or comma-separated), e.g. bookworm-security.
    #[arg(long, value_name = "SUITE", value_delimiter = ',')]
    suite: Vec<String>,

    /// Debian arches to read (comma-separated).
    #[arg(long, value_name = "ARCH", value_delimiter = ',', default_value = "amd64,arm64")]
    arch: Vec<Arch>,

    /// Write the matrix here (atomically, and only when every index was
    /// read); without it, the matrix goes to stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,

    /// Keep only the kernels whose release matches this regex (repeatable),
    /// e.g. to pin a small matrix.
    #[arg(long, value_name = "REGEX", allow_hyphen_values = true)]
    select: Vec<String>,

    /// The matrix's name.
    #[arg(long, default_value = "debian")]
    name: String,

    /// Treat a suite whose InRelease is past its Valid-Until as a failed
    /// index (a stale or replayed mirror); by default it is a warning.
    #[arg(long)]
    check_valid_until: bool,

    /// Parallel requests.
    #[arg(long, short = 'j', value_name = "N", default_value_t = 8)]
    jobs: usize,
}

#[derive(clap::Args, Debug)]
struct FetchArgs {
    /// A pinned matrix (from discover).
    #[arg(long, value_name = "FILE")]
    matrix: PathBuf,

    /// Only kernels whose release matches this regex (repeatable).
    #[arg(long, value_name = "REGEX", allow_hyphen_values = true)]
    select: Vec<String>,

    #[command(flatten)]
    archive: ArchiveArgs,

    /// The package cache [default: <cache-dir>/debs].
    #[arg(long, value_name = "DIR")]
    package_cache: Option<PathBuf>,

    /// Cache folder.
    #[arg(long, value_name = "DIR", env = "BPFARM_CACHE")]
    cache_dir: Option<PathBuf>,

    /// Parallel downloads.
    #[arg(long, short = 'j', value_name = "N", default_value_t = 4)]
    jobs: usize,

    /// No progress bar, even on a terminal.
    #[arg(long)]
    no_progress: bool,
}

#[derive(clap::Args, Debug)]
struct BuildArgs {
    /// A .deb header package, a folder of them, or an unpacked header tree
    /// (e.g. /lib/modules/<release>/build). Repeatable. Flavour packages are
    /// paired with their -common and linux-kbuild packages from control data.
    #[arg(long, value_name = "PATH")]
    headers: Vec<PathBuf>,

    /// A kernel matrix (kernels/<name>.toml). Its pinned packages that are
    /// not in --package-cache yet are fetched first (see `fetch`).
    #[arg(long, value_name = "FILE")]
    matrix: Option<PathBuf>,

    /// Build only the matrix kernels whose release matches this regex
    /// (repeatable; any match selects).
    #[arg(long, value_name = "REGEX", requires = "matrix", allow_hyphen_values = true)]
    select: Vec<String>,

    /// Do not download missing matrix packages; kernels lacking one fail.
    #[arg(long, requires = "matrix")]
    no_fetch: bool,

    #[command(flatten)]
    archive: ArchiveArgs,

    /// Where the matrix's packages are [default: <cache-dir>/debs]. Pinned
    /// entries are found by digest; entries named by name by apt file name
    /// (`<name>_<version>_<arch>.deb`, as `fetch` writes them), and only the
    /// packages their kernels can use are opened (the whole folder only when
    /// those are missing or do not pair).
    #[arg(long, value_name = "DIR")]
    package_cache: Option<PathBuf>,

    /// A BTF blob to build against in BTF mode (needs --kernel-release).
    #[arg(long, value_name = "FILE", requires = "kernel_release")]
    btf: Option<PathBuf>,

    /// The exact `uname -r` of the kernel the --btf blob describes.
    #[arg(long, value_name = "RELEASE", requires = "btf")]
    kernel_release: Option<String>,

    /// The arch of the --btf kernel [default: this machine's].
    #[arg(long, value_name = "ARCH", requires = "btf")]
    btf_arch: Option<Arch>,

    /// Also build for the running kernel from /sys/kernel/btf/vmlinux.
    #[arg(long)]
    running_kernel: bool,

    /// Output folder.
    #[arg(long, value_name = "DIR", default_value = "out")]
    out: PathBuf,

    /// Program version in the object names [default: the tracer's own].
    #[arg(long = "version", visible_alias = "program-version", value_name = "VERSION")]
    program_version: Option<String>,

    /// Build the tracer from this folder instead of the sources built into
    /// this binary (for developing the program).
    #[arg(long, value_name = "DIR")]
    program: Option<PathBuf>,

    /// Cache folder: packages' facts, unpacked trees, objects.
    #[arg(long, value_name = "DIR", env = "BPFARM_CACHE")]
    cache_dir: Option<PathBuf>,

    /// Parallel builds [default: number of cores].
    #[arg(long, short = 'j', value_name = "N")]
    jobs: Option<usize>,

    /// Build only the K-th of N slices of the kernels (by kernel release, so
    /// all arches of a release land in one shard).
    #[arg(long, value_name = "K/N")]
    shard: Option<Shard>,

    /// Write a JSON report of every kernel's outcome.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,

    /// Write where the build's time went: JSON lines, the first with the
    /// run's wall and CPU totals, then one per stage of each package or
    /// kernel (inspect, unpack, tree-wait, lookup, clang, llc, validate,
    /// store, output, and the plan and job envelopes) with its worker,
    /// start and end (seconds since the build started) and CPU seconds.
    /// bench/builder.py prints them as a table and a timeline.
    #[arg(long, value_name = "FILE")]
    timings: Option<PathBuf>,

    /// Retry kernels whose failure is cached.
    #[arg(long)]
    retry_failed: bool,

    /// No progress bar, even on a terminal.
    #[arg(long)]
    no_progress: bool,

    /// Sign every object written to --out with this ECDSA P-256 private
    /// key: PKCS#8 or SEC1 PEM (what openssl writes), or cosign's encrypted
    /// cosign.key (password in COSIGN_PASSWORD). Beside each object go
    /// <file>.sig (`cosign sign-blob` form) and <file>.intoto.jsonl (SLSA
    /// provenance in DSSE envelopes); --publish sends them along, with a
    /// cosign signature and attestation of the OCI manifest. The key is
    /// checked before anything is built (a bad key or password: exit 2) and
    /// never leaves this process.
    #[arg(long, value_name = "FILE", env = "BPFARM_SIGN_KEY", help_heading = "Signing")]
    sign_key: Option<PathBuf>,

    /// After building, publish every object to this bpfarm registry
    /// (http://registry:8080) or OCI registry (oci://HOST[:PORT]/NAMESPACE,
    /// as <NAMESPACE>/tracee-bpf), skipping what it already holds.
    #[arg(long, value_name = "URL")]
    publish: Option<String>,

    /// User name for an OCI registry (with --token as the password);
    /// without --token, credentials come from the docker config.json.
    #[arg(long, value_name = "USER", env = "BPFARM_OCI_USERNAME")]
    oci_username: Option<String>,

    /// Push token for --publish (from `bpfarm-registry token create --scope push`).
    #[arg(long, value_name = "TOKEN", env = "BPFARM_TOKEN", hide_env_values = true, requires = "publish")]
    token: Option<String>,

    /// Allow --publish over plain http:// to a host that is not loopback
    /// (and oci:// without TLS). Dangerous: anyone on the path can read the
    /// token and change what is published. Prints a warning.
    #[arg(long, requires = "publish")]
    insecure: bool,

    /// Largest single file a package may unpack, or a header tree may hold
    /// [default: 64M]. Sizes take K, M, G, T (binary units).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, help_heading = "Limits (per input; exceeding one fails that kernel)")]
    max_member_bytes: Option<u64>,

    /// Most bytes one package's data may decompress to, counting members the
    /// unpack filter skips [default: 2G].
    #[arg(long, value_name = "SIZE", value_parser = parse_size, help_heading = "Limits (per input; exceeding one fails that kernel)")]
    max_package_bytes: Option<u64>,

    /// Most bytes one header tree may hold: written when unpacking a package,
    /// read when hashing a --headers tree [default: 1G].
    #[arg(long, value_name = "SIZE", value_parser = parse_size, help_heading = "Limits (per input; exceeding one fails that kernel)")]
    max_tree_bytes: Option<u64>,

    /// Most entries in one package, or files in one --headers tree
    /// [default: 200000].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Limits (per input; exceeding one fails that kernel)")]
    max_entries: Option<u64>,

    /// Highest decompressed-to-compressed ratio of a package's data, checked
    /// as it streams past its first MiB [default: 100; real packages: < 10].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Limits (per input; exceeding one fails that kernel)")]
    max_ratio: Option<u64>,

    /// How clang and llc are confined: landlock, a mount-namespace, or auto
    /// (Landlock where the kernel has it, else a mount namespace). Either way
    /// they read only the header trees, the program and the toolchain, and
    /// write only their work folder; with neither available the build refuses
    /// to compile.
    #[arg(long, value_enum, value_name = "HOW", default_value = "auto", help_heading = "Compiler sandbox")]
    sandbox: SandboxArg,

    /// Compile without a sandbox. A header could then read (and get into an
    /// error message, a report, a registry's coverage page) any file this
    /// user can: only for trusted inputs on a machine without Landlock or
    /// namespaces.
    #[arg(long, conflicts_with = "sandbox", help_heading = "Compiler sandbox")]
    no_sandbox: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum SandboxArg {
    Auto,
    Landlock,
    MountNamespace,
}

/// Where `--publish` goes, checked before anything is built: a bad target
/// (an uppercase OCI namespace, plain http without --insecure) is a usage
/// error, not a failure after the build.
fn destination(url: &str, a: &BuildArgs, transport: &Transport) -> anyhow::Result<Destination> {
    let (dest, warning) = if url.starts_with("oci://") {
        let target = OciTarget::parse(url)?;
        let auth = credentials(&target.registry, a.oci_username.as_deref(), a.token.as_deref());
        let r = OciRegistry::new(target, auth, transport)?;
        let w = r.warning().map(str::to_owned);
        (Destination::Oci(Box::new(r)), w)
    } else {
        let c = RegistryClient::new(url, a.token.clone(), transport)?;
        let w = c.warning().map(str::to_owned);
        (Destination::Registry(c), w)
    };
    if let Some(w) = warning {
        eprintln!("bpfarm-builder: warning: {w}");
    }
    Ok(dest)
}

/// The one HTTP/TLS client of a run (archive, registry, OCI): the system's
/// roots plus `--ca-cert`; a deadline of a minute per request, and per read
/// of a download.
fn transport(archive: &ArchiveArgs, insecure: bool) -> anyhow::Result<Transport> {
    Ok(Transport::new(TransportConfig {
        ca_certs: archive.ca_cert.iter().cloned().collect(),
        insecure,
        timeout: std::time::Duration::from_secs(60),
        ..Default::default()
    })?)
}

fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("bpfarm")
}

fn run_build(a: BuildArgs) -> anyhow::Result<bool> {
    // The key first: a bad key or password is a usage error before any work.
    let signer = a.sign_key.as_deref().map(|path| Signer::load(path).context("--sign-key")).transpose()?;
    if let Some(s) = &signer {
        tracing::info!("signing with key {}", s.key().id());
    }
    let transport = transport(&a.archive, a.insecure)?;
    let dest = a.publish.as_deref().map(|url| destination(url, &a, &transport)).transpose()?;
    let program = match &a.program {
        Some(dir) => ProgramSources::from_dir(dir)?,
        None => ProgramSources::embedded(),
    };
    let version = match a.program_version {
        Some(v) => v,
        None => program.version().context("reading the program's version from tracer.h")?,
    };
    let cache_dir = a.cache_dir.unwrap_or_else(default_cache_dir);
    let mut btf = Vec::new();
    if let (Some(file), Some(release)) = (a.btf, a.kernel_release) {
        bpfarm_object::identity::validate_release(&release)?;
        let arch = match a.btf_arch.or_else(Arch::host) {
            Some(a) => a,
            None => bail!("cannot tell this machine's arch; pass --btf-arch"),
        };
        btf.push(BtfInput { file, release, arch, facts: Default::default() });
    }
    if a.running_kernel {
        let (release, facts) = bpfarm_object::host::running_kernel().context("reading the running kernel's release")?;
        let arch = Arch::host().context("this machine's arch is not one bpfarm builds for")?;
        btf.push(BtfInput { file: "/sys/kernel/btf/vmlinux".into(), release, arch, facts });
    }
    let d = Limits::default();
    let limits = Limits {
        max_member_bytes: a.max_member_bytes.unwrap_or(d.max_member_bytes),
        max_package_bytes: a.max_package_bytes.unwrap_or(d.max_package_bytes),
        max_tree_bytes: a.max_tree_bytes.unwrap_or(d.max_tree_bytes),
        max_entries: a.max_entries.unwrap_or(d.max_entries),
        max_ratio: a.max_ratio.unwrap_or(d.max_ratio),
    };
    let sandbox = match (a.no_sandbox, a.sandbox) {
        (true, _) => SandboxMode::Off,
        (false, SandboxArg::Auto) => SandboxMode::Auto,
        (false, SandboxArg::Landlock) => SandboxMode::Landlock,
        (false, SandboxArg::MountNamespace) => SandboxMode::MountNamespace,
    };
    let cfg = BuildConfig {
        out_dir: a.out,
        limits,
        sandbox,
        version,
        program,
        jobs: a.jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
        shard: a.shard,
        retry_failed: a.retry_failed,
        progress_bar: !a.no_progress,
        cache_dir: cache_dir.clone(),
    };
    // A temp file beside it, made before any work: a bad path is a usage
    // error (exit 2), not a finished build whose publish and report are then
    // lost; renamed over the path only once written, so a run that fails
    // leaves an earlier run's timings as they were (and no empty file).
    let timings_out = match &a.timings {
        Some(path) => {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let tmp = tempfile::Builder::new()
                .prefix(".timings-")
                .tempfile_in(dir)
                .with_context(|| format!("opening the timings file {}", path.display()))?;
            Some((tmp, path.clone()))
        }
        None => None,
    };
    let package_cache = a.package_cache.unwrap_or_else(|| cache_dir.join("debs"));
    let mut unavailable = std::collections::HashMap::new();
    if let Some(path) = &a.matrix
        && !a.no_fetch
    {
        let m = Matrix::load(path)?.select(&a.select, path)?;
        let kernels: Vec<_> = m.kernels.iter().filter(|k| a.shard.is_none_or(|s| s.contains(k.label()))).collect();
        let debs: Vec<&MatrixDeb> = {
            let mut seen = std::collections::HashSet::new();
            kernels.iter().flat_map(|k| &k.debs).filter(|d| seen.insert(d.sha256.clone())).collect()
        };
        if !fetch::missing(&package_cache, &debs).is_empty() {
            let report = run_fetch_debs(&a.archive, &transport, &package_cache, &debs, 4, !a.no_progress)?;
            for (d, e) in report.failed {
                unavailable.insert(d.sha256, e);
            }
        }
        let rpms: Vec<&MatrixDeb> = {
            let mut seen = std::collections::HashSet::new();
            kernels.iter().flat_map(|k| &k.rpms).filter(|d| seen.insert(d.sha256.clone())).collect()
        };
        if !fetch::missing(&package_cache, &rpms).is_empty() {
            let report = run_fetch_rpms(&a.archive, &transport, &package_cache, &rpms, 4, !a.no_progress)?;
            for (d, e) in report.failed {
                unavailable.insert(d.sha256, e);
            }
        }
    }
    let req = Request { headers: a.headers, matrix: a.matrix, package_cache, btf, select: a.select, unavailable };
    let report = build::run(&cfg, &req)?;
    print!("{}", report.table());
    let signatures = signer.as_ref().map(|s| signing::sign_report(s, &report));
    if let Some(sigs) = &signatures {
        for (kernel, e) in &sigs.failed {
            eprintln!("bpfarm-builder: signing {kernel}: {e}");
        }
        println!("signed {} objects, {} failed", sigs.signed.len(), sigs.failed.len());
    }
    let published = match (a.publish.as_deref(), &dest) {
        (Some(url), Some(dest)) => {
            let signing = signer.as_ref().zip(signatures.as_ref());
            let summary = bpfarm_builder::publish::publish_signed(&report, dest, url, signing);
            print!("{}", summary.table());
            Some(summary)
        }
        _ => None,
    };
    let matrix_ok = match (&dest, &req.matrix) {
        (Some(dest), Some(path)) => publish_matrix(dest, path),
        _ => true,
    };
    if let Some((tmp, path)) = timings_out {
        report.timings.write_to(tmp.as_file()).with_context(|| format!("writing the timings to {}", path.display()))?;
        tmp.persist(&path).with_context(|| format!("writing the timings to {}", path.display()))?;
    }
    if let Some(path) = a.report {
        let mut value = serde_json::to_value(&report)?;
        if let Some(p) = &published {
            value["publish"] = serde_json::to_value(p)?;
        }
        let mut json = serde_json::to_vec_pretty(&value)?;
        json.push(b'\n');
        std::fs::write(&path, json).with_context(|| format!("writing the report to {}", path.display()))?;
    }
    let signed_all = signatures.as_ref().is_none_or(|s| s.failed.is_empty());
    Ok(!report.any_failed() && signed_all && published.is_none_or(|p| p.ok()) && matrix_ok)
}

/// Uploads the matrix the build was asked for (all of it, whatever
/// --select or --shard built) so the registry counts "missing" against it.
/// An OCI registry has no such place: nothing to do.
fn publish_matrix(dest: &Destination, path: &std::path::Path) -> bool {
    let Destination::Registry(client) = dest else { return true };
    let m = match Matrix::load(path) {
        Ok(m) => m,
        Err(e) => {
            println!("matrix {}: not published: {e}", path.display());
            return false;
        }
    };
    let pairs: Vec<(String, Arch)> =
        m.kernels.iter().filter_map(|k| Some((k.release.clone()?, Arch::from_any(&k.arch)?))).collect();
    match client.put_matrix(&m.name, &pairs) {
        Ok(()) => {
            println!("matrix {}: {} kernels published for coverage", m.name, pairs.len());
            true
        }
        Err(e) => {
            println!("matrix {}: not published: {e}", m.name);
            false
        }
    }
}

fn say(line: &str) {
    eprintln!("{line}");
}

/// `discover --yum-repo`: every repository read whole, or no matrix.
fn run_discover_yum(a: &DiscoverArgs, archive: &Archive, arches: &[Arch]) -> anyhow::Result<bool> {
    let mut kernels = Vec::new();
    let mut failed = Vec::new();
    for repo in &a.archive.yum_repo {
        match bpfarm_builder::yum::discover(archive, repo, arches) {
            Ok(found) => {
                eprintln!("discover: {repo}: {} kernel-devel packages", found.len());
                kernels.extend(bpfarm_builder::yum::kernels(&found));
            }
            Err(e) => failed.push(format!("{repo}: {}", discover::error_chain(&e))),
        }
    }
    if !failed.is_empty() {
        eprintln!(
            "bpfarm-builder: error: {} of {} yum repositories could not be read; no matrix written:\n  {}",
            failed.len(),
            a.archive.yum_repo.len(),
            failed.join("\n  ")
        );
        return Ok(false);
    }
    let mut m = Matrix { name: a.name.clone(), distro: "rpm".into(), suites: Vec::new(), kernels };
    if m.kernels.is_empty() {
        bail!("no kernel-devel packages for {:?} in {}", arches, a.archive.yum_repo.join(", "));
    }
    if !a.select.is_empty() {
        m = m.select(&a.select, std::path::Path::new("the discovered matrix"))?;
    }
    let header = format!(
        "{}: {} RPM kernel-devel packages from {} yum repositories.\n\
         Generated by `bpfarm-builder discover --yum-repo`; every [[kernel.rpm]] is pinned by size and sha256.\n\
         `bpfarm-builder fetch --matrix <this file> --yum-repo URL` downloads them.",
        m.name,
        m.kernels.len(),
        a.archive.yum_repo.len()
    );
    let text = m.to_toml(&header)?;
    match &a.output {
        Some(path) => {
            bpfarm_builder::fsutil::write_atomic(path, text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("discover: wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(true)
}

fn run_discover(a: DiscoverArgs) -> anyhow::Result<bool> {
    let archive = Archive::new(&transport(&a.archive, false)?);
    if !a.archive.yum_repo.is_empty() && a.archive.apt_source.is_empty() && a.suite.is_empty() {
        let mut arches: Vec<Arch> = Vec::new();
        for x in &a.arch {
            if !arches.contains(x) {
                arches.push(*x);
            }
        }
        return run_discover_yum(&a, &archive, &arches);
    }
    let roots = discover::roots(&a.archive.apt_source, &a.archive.apt_dir, &a.archive.keyring, &say)?;
    let mut arches: Vec<Arch> = Vec::new();
    for x in a.arch {
        if !arches.contains(&x) {
            arches.push(x);
        }
    }
    let cfg = DiscoverConfig {
        roots,
        suites: a.suite,
        arches,
        keyring: a.archive.keyring,
        check_valid_until: a.check_valid_until,
        jobs: a.jobs,
        name: a.name,
    };
    let found = match discover::discover(&cfg, &archive, &say) {
        Ok(f) => f,
        // Exit 1, like a build with failed kernels: the run itself worked.
        Err(e @ discover::DiscoverError::Incomplete(_)) => {
            eprintln!("bpfarm-builder: error: {e}");
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    };
    let mut found = found;
    if !a.select.is_empty() {
        found.matrix = found.matrix.select(&a.select, std::path::Path::new("the discovered matrix"))?;
    }
    let arches: Vec<&str> = cfg.arches.iter().map(|a| a.debian()).collect();
    let suites: Vec<&str> = found.matrix.suites.iter().map(|s| s.name.as_str()).collect();
    let mut header = format!(
        "{}: {} kernels for {}, from the signed indices of {} Debian suites:\n",
        cfg.name,
        found.matrix.kernels.len(),
        arches.join(", "),
        suites.len()
    );
    for chunk in suites.chunks(6) {
        header += &format!("  {}\n", chunk.join(", "));
    }
    if !a.select.is_empty() {
        header += &format!("Selected: {}\n", a.select.join(" "));
    }
    header += "Generated by `bpfarm-builder discover`; every [[kernel.deb]] is pinned by size and sha256.\n\
               `bpfarm-builder fetch --matrix <this file>` downloads them; `build --matrix` fetches by itself.";
    let text = found.matrix.to_toml(&header)?;
    match &a.output {
        Some(path) => {
            bpfarm_builder::fsutil::write_atomic(path, text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            print!("{}", found.table());
            eprintln!("discover: wrote {}", path.display());
        }
        None => {
            print!("{text}");
            eprint!("{}", found.table());
        }
    }
    Ok(true)
}

fn run_fetch_debs(
    archive: &ArchiveArgs,
    transport: &Transport,
    store: &std::path::Path,
    debs: &[&MatrixDeb],
    jobs: usize,
    progress_bar: bool,
) -> anyhow::Result<fetch::FetchReport> {
    let roots = discover::roots(&archive.apt_source, &archive.apt_dir, &archive.keyring, &say)?;
    let cfg =
        FetchConfig { store: store.to_owned(), roots: roots.into_iter().map(|r| r.uri).collect(), jobs, progress_bar };
    let report = fetch::fetch(&cfg, &Archive::new(transport), debs, &say)?;
    eprintln!("{}", report.summary());
    for (d, e) in &report.failed {
        let why = bpfarm_builder::discover::error_chain(e);
        eprintln!("fetch: FAILED {} {} ({}): {why}", d.name, d.version, d.arch);
    }
    Ok(report)
}

/// Downloads RPMs from the --yum-repo roots, as `run_fetch_debs` does .debs.
fn run_fetch_rpms(
    archive: &ArchiveArgs,
    transport: &Transport,
    store: &std::path::Path,
    rpms: &[&MatrixDeb],
    jobs: usize,
    progress_bar: bool,
) -> anyhow::Result<fetch::FetchReport> {
    if archive.yum_repo.is_empty() {
        bail!("the matrix pins {} RPM packages ([[kernel.rpm]]): pass --yum-repo URL to fetch them", rpms.len());
    }
    let cfg = FetchConfig { store: store.to_owned(), roots: archive.yum_repo.clone(), jobs, progress_bar };
    let report = fetch::fetch(&cfg, &Archive::new(transport), rpms, &say)?;
    eprintln!("{}", report.summary());
    for (d, e) in &report.failed {
        eprintln!("fetch: FAILED {} {} ({}): {}", d.name, d.version, d.arch, bpfarm_builder::discover::error_chain(e));
    }
    Ok(report)
}

fn run_fetch(a: FetchArgs) -> anyhow::Result<bool> {
    let m = Matrix::load(&a.matrix)?.select(&a.select, &a.matrix)?;
    let unpinned: Vec<&str> =
        m.kernels.iter().filter(|k| k.debs.is_empty() && k.rpms.is_empty()).map(|k| k.label()).collect();
    if !unpinned.is_empty() {
        bail!(
            "{}: {} kernels are not pinned ([[kernel.deb]]), e.g. {}: regenerate the matrix with bpfarm-builder discover",
            a.matrix.display(),
            unpinned.len(),
            unpinned[0]
        );
    }
    let cache_dir = a.cache_dir.unwrap_or_else(default_cache_dir);
    let store = a.package_cache.unwrap_or_else(|| cache_dir.join("debs"));
    let transport = transport(&a.archive, false)?;
    let mut ok = true;
    if !m.debs().is_empty() {
        let report = run_fetch_debs(&a.archive, &transport, &store, &m.debs(), a.jobs, !a.no_progress)?;
        ok &= report.failed.is_empty();
    }
    if !m.rpms().is_empty() {
        let report = run_fetch_rpms(&a.archive, &transport, &store, &m.rpms(), a.jobs, !a.no_progress)?;
        ok &= report.failed.is_empty();
    }
    Ok(ok)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("BPFARM_LOG").unwrap_or_else(|_| level.into()))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Build(a) => run_build(*a),
        Command::Discover(a) => run_discover(a),
        Command::Fetch(a) => run_fetch(a),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("bpfarm-builder: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
