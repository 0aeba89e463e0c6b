//! Shared support for bpfarm's tests: where the fixture kernels are (fetched
//! once with `bpfarm-builder fetch`), a package archive on loopback
//! (`mirror`), recording tool shims, hand-made hostile
//! packages, and the rule for privileged tests (fail under `CI=true`, say
//! loudly that they were skipped otherwise); and the set-ups the
//! end-to-end tests share: the running kernel's build and object, the
//! agent with none of its environment, openssl keys, cosign offline
//! (`cosign`), a registry data folder's snapshot.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

pub mod cosign;
pub mod hostile;
pub mod mirror;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_owned()
}

/// `$BPFARM_CACHE`, else `~/.cache/bpfarm`: where fetched packages live.
pub fn cache_root() -> PathBuf {
    std::env::var_os("BPFARM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/bpfarm"))
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The folder holding the default matrix's real Debian packages, fetching
/// them with `bpfarm-builder fetch` (once per test process; a stat per
/// package when present). Packages sit under `sha256/` and, hard-linked,
/// under their apt file names.
pub fn fixture_debs() -> PathBuf {
    static DEBS: OnceLock<PathBuf> = OnceLock::new();
    DEBS.get_or_init(|| {
        let debs = cache_root().join("debs");
        let out = Command::new(bin("bpfarm-builder"))
            .args(["fetch", "--no-progress", "--matrix"])
            .arg(repo_root().join("kernels/default.toml"))
            .arg("--package-cache")
            .arg(&debs)
            .output()
            .expect("running bpfarm-builder fetch");
        assert!(
            out.status.success(),
            "bpfarm-builder fetch --matrix kernels/default.toml failed: the tests need real Debian header packages\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        debs
    })
    .clone()
}

/// The `.deb` of `package` in `dir`: the version and arch the default
/// matrix pins for it (the first kernel naming it), else the only file named
/// `<package>_*`. The package cache holds other versions and arches too.
pub fn deb(dir: &Path, package: &str) -> PathBuf {
    let matrix: toml::Table = fs::read_to_string(repo_root().join("kernels/default.toml"))
        .expect("kernels/default.toml")
        .parse()
        .expect("kernels/default.toml is TOML");
    let pinned = matrix
        .get("kernel")
        .and_then(|k| k.as_array())
        .into_iter()
        .flatten()
        .flat_map(|k| k.get("deb").and_then(|d| d.as_array()).into_iter().flatten())
        .find(|d| d.get("name").and_then(|n| n.as_str()) == Some(package));
    if let Some(d) = pinned {
        let field = |k: &str| d.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
        let p = dir.join(format!("{package}_{}_{}.deb", field("version").replace(':', "%3a"), field("arch")));
        assert!(p.is_file(), "{} is not there: fetch kernels/default.toml first (fixture_debs)", p.display());
        return p;
    }
    let prefix = format!("{package}_");
    let found: Vec<PathBuf> = fs::read_dir(dir)
        .expect("package folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix)))
        .collect();
    match found.as_slice() {
        [one] => one.clone(),
        [] => panic!("{package} is not in {}", dir.display()),
        many => panic!("{package} is ambiguous in {}: {many:?}", dir.display()),
    }
}

/// Whether a test that needs root and BPF may run. Under `CI=true` a missing
/// privilege is a failure; elsewhere the test says it skips and returns.
pub fn privileged(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc_geteuid() } == 0;
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    if root && btf {
        return true;
    }
    let why = if root { "the kernel has no BTF" } else { "not root" };
    assert!(!in_ci(), "{what}: needs root and BPF, but {why} (CI=true: failing instead of skipping)");
    eprintln!("SKIPPED {what}: needs root and BPF, but {why}");
    false
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// A folder of shell shims that log each call and then run the real tool,
/// for proving what a command did or did not run.
///
/// The builder runs compilers in a sandbox that may not write the log file;
/// so the log is also held open on a descriptor the test process lets its
/// children inherit, and a shim writes to that (an open descriptor is not
/// something a sandbox takes away), falling back to the file by name.
#[derive(Debug)]
pub struct ToolShim {
    dir: tempfile::TempDir,
    log: PathBuf,
    fd: i32,
}

impl Drop for ToolShim {
    fn drop(&mut self) {
        // SAFETY: closing the descriptor this shim set has opened.
        unsafe { libc::close(self.fd) };
    }
}

impl ToolShim {
    pub fn new(tools: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("shim folder");
        let log = dir.path().join("calls.log");
        let file = fs::OpenOptions::new().create(true).append(true).open(&log).expect("shim log");
        // A duplicate without close-on-exec, numbered apart from stdio.
        // SAFETY: duplicating a descriptor we own.
        let fd = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&file), libc::F_DUPFD, 100) };
        assert!(fd >= 100, "dup shim log: {}", std::io::Error::last_os_error());
        let path = std::env::var_os("PATH").unwrap_or_default();
        for tool in tools {
            let real = std::env::split_paths(&path)
                .chain([PathBuf::from("/usr/sbin")])
                .map(|d| d.join(tool))
                .find(|p| p.is_file())
                .unwrap_or_else(|| panic!("{tool} not on PATH"));
            let shim = dir.path().join(tool);
            fs::write(
                &shim,
                format!(
                    // bash: dash cannot name a descriptor above 9.
                    "#!/bin/bash\n(echo \"{tool} $*\" >&{fd}) 2>/dev/null || echo \"{tool} $*\" >> '{}'\nexec '{}' \"$@\"\n",
                    log.display(),
                    real.display()
                ),
            )
            .expect("write shim");
            fs::set_permissions(&shim, fs::Permissions::from_mode(0o755)).expect("chmod shim");
        }
        Self { dir, log, fd }
    }

    /// `PATH` with the shims first.
    pub fn path_env(&self) -> OsString {
        let mut parts = vec![self.dir.path().to_owned()];
        parts.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
        std::env::join_paths(parts).expect("join PATH")
    }

    /// Every logged call, `tool args...`.
    pub fn calls(&self) -> Vec<String> {
        fs::read_to_string(&self.log).expect("shim log").lines().map(str::to_owned).collect()
    }

    /// Calls that compiled something (not `--version` or resource-dir probes).
    pub fn compiles(&self) -> Vec<String> {
        self.calls().into_iter().filter(|c| c.contains(" -c ") || c.contains(" -o ")).collect()
    }
}

/// One entry of a hand-made tar: path exactly as written in the header.
#[derive(Debug, Clone)]
pub enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    /// A folder with this mode (e.g. `0o555`, read-only).
    Dir(&'a str, u32),
    /// A file of this many zero bytes, streamed into the archive (a
    /// decompression bomb when large: zeros compress to almost nothing).
    Zeros(&'a str, u64),
}

/// How a hand-made package's members are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Xz,
    /// Fast on gigabytes of zeros: what the bomb tests use.
    Zstd,
}

/// A `.deb` made to measure: every entry of its control archive (the
/// `control` file included, wherever it should sit) and of its data archive.
#[derive(Debug, Clone)]
pub struct DebSpec<'a> {
    pub control: Vec<Entry<'a>>,
    pub data: Vec<Entry<'a>>,
    pub compression: Compression,
}

/// Writes a `.deb` (ar: debian-binary, control.tar.xz, data.tar.xz) with the
/// given control text and data entries, header names written raw so that
/// hostile paths survive.
pub fn write_deb(path: &Path, control: &str, data: &[Entry<'_>]) {
    write_deb_spec(
        path,
        &DebSpec {
            control: vec![Entry::File("./control", control.as_bytes())],
            data: data.to_vec(),
            compression: Compression::Xz,
        },
    );
}

/// Writes a `.deb` to `spec` (ar: debian-binary, control.tar.*, data.tar.*).
pub fn write_deb_spec(path: &Path, spec: &DebSpec<'_>) {
    let ext = match spec.compression {
        Compression::Xz => "xz",
        Compression::Zstd => "zst",
    };
    let control_tar = compressed_tar(&spec.control, spec.compression);
    let data_tar = compressed_tar(&spec.data, spec.compression);
    let f = fs::File::create(path).expect("create deb");
    let mut ar = ar::Builder::new(f);
    for (name, bytes) in [
        ("debian-binary".to_owned(), b"2.0\n".to_vec()),
        (format!("control.tar.{ext}"), control_tar),
        (format!("data.tar.{ext}"), data_tar),
    ] {
        let header = ar::Header::new(name.as_bytes().to_vec(), bytes.len() as u64);
        ar.append(&header, &bytes[..]).expect("append ar member");
    }
}

fn compressed_tar(entries: &[Entry<'_>], compression: Compression) -> Vec<u8> {
    match compression {
        Compression::Xz => {
            let xz = tar_into(liblzma::write::XzEncoder::new(Vec::new(), 1), entries);
            xz.finish().expect("xz finish")
        }
        Compression::Zstd => {
            let zst = tar_into(zstd::stream::write::Encoder::new(Vec::new(), 3).expect("zstd"), entries);
            zst.finish().expect("zstd finish")
        }
    }
}

/// Streams a tar of `entries` into `w` (raw header names, so hostile paths
/// survive; zeros are never held in memory).
fn tar_into<W: Write>(w: W, entries: &[Entry<'_>]) -> W {
    let mut b = tar::Builder::new(w);
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (name, kind, mode, size) = match e {
            Entry::File(n, d) => (n, tar::EntryType::Regular, 0o644, d.len() as u64),
            Entry::Symlink(n, _) => (n, tar::EntryType::Symlink, 0o777, 0),
            Entry::Dir(n, mode) => (n, tar::EntryType::Directory, *mode, 0),
            Entry::Zeros(n, size) => (n, tar::EntryType::Regular, 0o644, *size),
        };
        h.as_gnu_mut().expect("gnu header").name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        if let Entry::Symlink(_, target) = e {
            h.set_link_name_literal(target).expect("link name");
        }
        h.set_cksum();
        match e {
            Entry::File(_, d) => b.append(&h, *d),
            Entry::Zeros(_, n) => b.append(&h, std::io::repeat(0).take(*n)),
            _ => b.append(&h, std::io::empty()),
        }
        .expect("append tar entry");
    }
    b.into_inner().expect("finish tar")
}

/// A made-up kernel, `<abi>-amd64`, as the three Debian packages a flavour
/// needs (flavour, `-common`, `linux-kbuild`), paired by their control
/// data. Its headers are just enough to be planned (release, arch) and to
/// reach the compiler, which force-includes the -common `kconfig.h`.
#[derive(Debug, Clone)]
pub struct FakeKernel<'a> {
    pub abi: &'a str,
    /// Content of the -common package's `include/linux/kconfig.h`.
    pub kconfig: &'a [u8],
    pub flavour_extra: Vec<Entry<'a>>,
    pub common_extra: Vec<Entry<'a>>,
    pub compression: Compression,
}

impl<'a> FakeKernel<'a> {
    pub fn new(abi: &'a str) -> Self {
        Self { abi, kconfig: b"", flavour_extra: vec![], common_extra: vec![], compression: Compression::Xz }
    }

    /// The kernel release its headers say.
    pub fn release(&self) -> String {
        format!("{}-amd64", self.abi)
    }

    /// Writes the three packages into `dir`; returns (flavour, common, kbuild).
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let abi = self.abi;
        let flavour_name = format!("linux-headers-{abi}-amd64");
        let common_name = format!("linux-headers-{abi}-common");
        let control = |pkg: &str, arch: &str, deps: &str| {
            format!("Package: {pkg}\nVersion: 1\nArchitecture: {arch}\nDepends: {deps}\n")
        };
        let flavour_control =
            control(&flavour_name, "amd64", &format!("{common_name} (= 1), linux-kbuild-{abi} (>= 1)"));
        let utsrelease = format!("#define UTS_RELEASE \"{}\"\n", self.release());
        let fp = |rel: &str| format!("./usr/src/{flavour_name}/{rel}");
        let cp = |rel: &str| format!("./usr/src/{common_name}/{rel}");
        let (f_uts, f_auto, c_kconfig) =
            (fp("include/generated/utsrelease.h"), fp("include/generated/autoconf.h"), cp("include/linux/kconfig.h"));
        let mut flavour_data =
            vec![Entry::File(&f_uts, utsrelease.as_bytes()), Entry::File(&f_auto, b"#define CONFIG_X86_64 1\n")];
        flavour_data.extend(self.flavour_extra.iter().cloned());
        let mut common_data = vec![Entry::File(&c_kconfig, self.kconfig)];
        common_data.extend(self.common_extra.iter().cloned());
        let paths = (
            dir.join(format!("{flavour_name}_1_amd64.deb")),
            dir.join(format!("{common_name}_1_all.deb")),
            dir.join(format!("linux-kbuild-{abi}_1_amd64.deb")),
        );
        let kbuild_control = control(&format!("linux-kbuild-{abi}"), "amd64", "");
        let common_control = control(&common_name, "all", "");
        for (path, control, data) in [
            (&paths.0, &flavour_control, flavour_data),
            (&paths.1, &common_control, common_data),
            (&paths.2, &kbuild_control, vec![]),
        ] {
            let spec = DebSpec {
                control: vec![Entry::File("./control", control.as_bytes())],
                data,
                compression: self.compression,
            };
            write_deb_spec(path, &spec);
        }
        paths
    }
}

/// A child's output with its peak resident memory and wall time.
#[derive(Debug)]
pub struct Measured {
    pub output: std::process::Output,
    /// Peak resident memory of the program (its own, not the test's), bytes.
    pub max_rss: u64,
    pub elapsed: std::time::Duration,
}

/// A command run under GNU `time`, which reports the program's peak RSS.
/// (Measuring a child of the test process itself would count the test's own
/// memory: a forked child's RSS before exec is the parent's.)
#[derive(Debug)]
pub struct MeasuredCommand {
    pub cmd: Command,
    rss: tempfile::NamedTempFile,
}

/// `program`, to be given arguments through `.cmd` and run with
/// [`MeasuredCommand::run`].
pub fn measured(program: impl AsRef<std::ffi::OsStr>) -> MeasuredCommand {
    let rss = tempfile::NamedTempFile::new().expect("rss file");
    // The program may run as another user (tests of unprivileged runs).
    fs::set_permissions(rss.path(), fs::Permissions::from_mode(0o666)).expect("chmod rss file");
    let mut cmd = Command::new("/usr/bin/time");
    cmd.args(["-f", "%M", "-o"]).arg(rss.path()).arg(program);
    // Its own process group, so a deadline kills the program too.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    MeasuredCommand { cmd, rss }
}

impl MeasuredCommand {
    /// Runs to completion, killing the program after `timeout` (a hang is a
    /// test failure, not a stuck suite).
    pub fn run(mut self, timeout: std::time::Duration) -> Measured {
        let start = std::time::Instant::now();
        let mut child = self
            .cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("/usr/bin/time is not installed (ci/install-deps installs it)");
        let pgid = child.id() as i32;
        let read = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = r.read_to_end(&mut v);
                v
            })
        };
        let out = read(Box::new(child.stdout.take().expect("stdout")));
        let err = read(Box::new(child.stderr.take().expect("stderr")));
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if wait.recv_timeout(timeout).is_err() {
                // SAFETY: signalling the process group we created.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                true
            } else {
                false
            }
        });
        let status = child.wait().expect("wait");
        let _ = done.send(());
        let killed = watchdog.join().expect("watchdog");
        let output = std::process::Output {
            status,
            stdout: out.join().expect("stdout reader"),
            stderr: err.join().expect("stderr reader"),
        };
        assert!(
            !killed,
            "{:?} did not finish within {timeout:?}; stderr:\n{}",
            self.cmd.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&output.stderr)
        );
        let kib: u64 = fs::read_to_string(self.rss.path())
            .ok()
            .and_then(|s| s.lines().last().and_then(|l| l.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no RSS from /usr/bin/time: {:?}", fs::read_to_string(self.rss.path())));
        Measured { output, max_rss: kib * 1024, elapsed: start.elapsed() }
    }
}

/// Leftovers of interrupted or refused work anywhere under `dir`: temp
/// trees and files (`.tmp-*`), compile scratch (`work-*`, `probe-*`).
pub fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") || name.starts_with("work-") || name.starts_with("probe-") {
                found.push(e.path());
            } else if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    found
}

/// Every file under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() && fs::read(e.path()).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) {
                found.push(e.path());
            }
        }
    }
    found
}

/// The workspace's built binaries (cargo builds every member's binaries
/// before running any test).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} is not built: run ci/test, or cargo build --workspace --bins before cargo test",
        p.display()
    );
    p
}

/// A registry process on an ephemeral port, killed on drop.
#[derive(Debug)]
pub struct Registry {
    pub child: Child,
    pub url: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn serve(data: &Path) -> Registry {
    serve_with(&["--listen", "127.0.0.1:0", "--data", data.to_str().expect("utf-8 path")])
}

/// `bpfarm-registry serve <args>`, waiting for its readiness line.
pub fn serve_with(args: &[&str]) -> Registry {
    let mut cmd = Command::new(bin("bpfarm-registry"));
    cmd.arg("serve").args(args).stderr(Stdio::null());
    spawn_registry(cmd).0
}

/// Starts a prepared `bpfarm-registry serve` command (run through a
/// wrapper such as `prlimit`, or with its stderr kept) and waits for its
/// readiness line; also returns the stdout lines printed before it (such
/// as `metrics on http://...`).
pub fn spawn_registry(mut cmd: Command) -> (Registry, Vec<String>) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    // The readiness signal: the last stdout line names the bound address.
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut before = Vec::new();
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            let _ = child.kill();
            panic!("bpfarm-registry serve exited before it was ready ({:?})", child.wait());
        }
        match line.trim().strip_prefix("listening on ") {
            Some(url) => return (Registry { child, url: url.to_owned() }, before),
            None => before.push(line.trim().to_owned()),
        }
    }
}

pub fn token(data: &Path, name: &str, scope: &str) -> String {
    let out = Command::new(bin("bpfarm-registry"))
        .args(["token", "create", "--name", name, "--scope", scope, "--data"])
        .arg(data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().last().unwrap().to_owned()
}

/// Headless Chromium, flags as this machine needs them (no sandbox as root,
/// no background networking on a closed network), with a fresh profile.
fn chromium(args: &[&str]) -> std::process::Output {
    let exe = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|n| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|d| d.join(n))
                .find(|p| p.is_file())
        })
        .expect("chromium is not installed (ci/install-deps installs it)");
    let profile = tempfile::tempdir().expect("profile folder");
    let out = Command::new(exe)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .expect("running chromium");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The page's DOM after its scripts ran, as Chromium serializes it.
pub fn browser_dom(url: &str) -> String {
    String::from_utf8(chromium(&["--virtual-time-budget=3000", "--dump-dom", url]).stdout).expect("DOM is UTF-8")
}

/// A PNG of the page as a person would see it.
pub fn browser_screenshot(url: &str, png: &Path, width: u32, height: u32) {
    chromium(&[
        "--virtual-time-budget=3000",
        "--hide-scrollbars",
        &format!("--window-size={width},{height}"),
        &format!("--screenshot={}", png.display()),
        url,
    ]);
    assert!(png.is_file(), "no screenshot written");
}

/// Debian's `docker-registry` (CNCF distribution 2.8) on loopback with
/// filesystem storage, killed on drop.
#[derive(Debug)]
pub struct Distribution {
    child: Child,
    pub addr: String,
    /// Its filesystem storage root.
    pub data: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn distribution() -> Distribution {
    let dir = tempfile::tempdir().expect("distribution folder");
    // distribution takes its address from its config only: find a free port
    // (this peer cannot be handed a listening socket).
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
    let config = dir.path().join("config.yml");
    fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        ),
    )
    .expect("config");
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry is not installed (ci/install-deps installs it)");
    let addr = format!("127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(std::time::Instant::now() < deadline, "docker-registry did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Distribution { child, addr, data: dir.path().join("data"), _dir: dir }
}

/// Runs `cmd` to completion under GNU time (`ci/install-deps` installs
/// it): its output and its peak resident memory, in bytes.
pub fn output_with_peak_rss(cmd: &Command) -> (std::process::Output, u64) {
    let report = tempfile::NamedTempFile::new().expect("temp file");
    let mut t = Command::new("/usr/bin/time");
    t.arg("-f").arg("%M").arg("-o").arg(report.path()).arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => t.env(k, v),
            None => t.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        t.current_dir(d);
    }
    let out = t.output().expect("/usr/bin/time is not installed (ci/install-deps installs it)");
    let kib: u64 = fs::read_to_string(report.path())
        .ok()
        .and_then(|s| s.lines().last().and_then(|l| l.trim().parse().ok()))
        .expect("GNU time's %M report");
    (out, kib * 1024)
}

/// Peak resident memory (VmHWM) of a process, in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        })
        .expect("VmHWM")
        * 1024
}

/// A `/v1` client for a registry on loopback, with a 60 s deadline per call.
pub fn client(url: &str, token: Option<String>) -> bpfarm_object::client::RegistryClient {
    let transport = bpfarm_object::http::Transport::new(bpfarm_object::http::TransportConfig {
        timeout: std::time::Duration::from_secs(60),
        ..Default::default()
    })
    .expect("the HTTP transport");
    bpfarm_object::client::RegistryClient::new(url, token, &transport).expect("a loopback registry URL")
}

/// Metadata for a stand-in object (tests of registry plumbing that need no
/// real build).
pub fn sample_metadata(release: &str, arch: bpfarm_object::Arch, bytes: &[u8]) -> bpfarm_object::ObjectMetadata {
    use bpfarm_object::{BuildMode, Compiler, Digest, Flags, Identity, KernelFacts, ObjectMetadata};
    let identity = Identity::new(release, arch, "v0.1.0").expect("a valid sample identity");
    ObjectMetadata {
        file_name: identity.file_name(),
        identity,
        digest: Digest::of_bytes(bytes),
        size: bytes.len() as u64,
        kernel: KernelFacts::default(),
        build_mode: BuildMode::Headers,
        sources: vec![],
        program_digest: Digest::of_bytes(b"p"),
        compiler: Compiler { clang: "clang".into(), llc: None },
        flags: Flags::default(),
        built_at: "2026-11-25T00:00:00Z".into(),
    }
}

/// A registry (under `dir/registry`) holding the running kernel's object,
/// built into `dir/out` and published through `/v1` by the builder.
#[derive(Debug)]
pub struct PublishedRegistry {
    pub registry: Registry,
    pub push_token: String,
    /// The object as the builder wrote it.
    pub object: PathBuf,
}

pub fn registry_with_running_object(dir: &Path) -> PublishedRegistry {
    let data = dir.join("registry");
    let push_token = token(&data, "ci", "push");
    let registry = serve(&data);
    let object = publish_running_object(dir, &registry.url, &push_token);
    PublishedRegistry { registry, push_token, object }
}

/// Builds the running kernel's object into `dir/out` (cache in `dir/cache`)
/// and publishes it to `url` with the builder; returns the object's path.
pub fn publish_running_object(dir: &Path, url: &str, push_token: &str) -> PathBuf {
    let out = Command::new(bin("bpfarm-builder"))
        .args(["build", "--running-kernel", "--no-progress", "--publish", url, "--token", push_token, "--cache-dir"])
        .arg(dir.join("cache"))
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .expect("running bpfarm-builder");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    dir.join("out").join(std::env::consts::ARCH).join(running_object_name())
}

/// Whether a test that runs bpfarm's container images may run: root, BPF,
/// and podman and mmdebstrap (ci/install-deps installs both). Under
/// `CI=true` anything missing is a failure; elsewhere the test says it skips.
pub fn containers(what: &str) -> bool {
    if !privileged(what) {
        return false;
    }
    let on_path = |tool: &str| {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).any(|d| d.join(tool).is_file())
    };
    let missing: Vec<&str> = ["podman", "mmdebstrap", "runc"].into_iter().filter(|t| !on_path(t)).collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        !in_ci(),
        "{what}: needs {} (ci/install-deps installs them; CI=true: failing instead of skipping)",
        missing.join(", ")
    );
    eprintln!("SKIPPED {what}: needs {}", missing.join(", "));
    false
}

/// `ci/podman`: podman with the project's container configuration.
pub fn podman() -> Command {
    Command::new(repo_root().join("ci/podman"))
}

/// The running kernel's release, as `uname -r` prints it.
pub fn running_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease").trim().to_owned()
}

/// The file name of the running kernel's object at the version the tests
/// build (`v0.1.0`).
pub fn running_object_name() -> String {
    bpfarm_object::object_file_name(&running_release(), "v0.1.0")
}

/// `bpfarm-builder build --running-kernel` with its cache in `cache` and its
/// output in `out`, taking no signing key or password from the
/// environment; the caller adds flags and runs it.
pub fn running_kernel_build(cache: &Path, out: &Path) -> Command {
    let mut c = Command::new(bin("bpfarm-builder"));
    c.args(["build", "--running-kernel", "--no-progress", "--cache-dir"])
        .arg(cache)
        .arg("--out")
        .arg(out)
        .env_remove("COSIGN_PASSWORD")
        .env_remove("BPFARM_SIGN_KEY");
    c
}

/// The object a build wrote into `out` for this machine's arch, found by
/// its metadata, and that metadata.
pub fn built_object(out: &Path) -> (PathBuf, bpfarm_object::ObjectMetadata) {
    let arch_dir = out.join(std::env::consts::ARCH);
    let json = fs::read_dir(&arch_dir)
        .expect("the build's output folder")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".o.json"))
        .expect("the builder wrote metadata");
    let meta: bpfarm_object::ObjectMetadata =
        serde_json::from_slice(&fs::read(&json).expect("the metadata")).expect("valid metadata");
    (arch_dir.join(&meta.file_name), meta)
}

/// A finished command's exit code, stdout and stderr, for assertion
/// messages.
pub fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `c`, which must start and succeed; its output.
pub fn run_ok(c: &mut Command) -> Output {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e} (ci/install-deps installs the tools the tests run)"));
    assert!(out.status.success(), "{c:?}: {}", show(&out));
    out
}

/// `path` with `suffix` added to its file name (`x.o` → `x.o.sig`).
pub fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Sets the permission bits of `path`.
pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A P-256 key pair from `openssl genpkey` in `dir`: (`<name>.pem`, the
/// private key; `<name>.pub`, its public key).
pub fn openssl_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    openssl_ec_key(dir, name, "P-256")
}

/// [`openssl_key`] on another curve.
pub fn openssl_ec_key(dir: &Path, name: &str, curve: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub"));
    run_ok(
        Command::new("openssl")
            .args(["genpkey", "-algorithm", "EC", "-pkeyopt"])
            .arg(format!("ec_paramgen_curve:{curve}"))
            .arg("-out")
            .arg(&key),
    );
    run_ok(Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(&key).arg("-out").arg(&public));
    (key, public)
}

/// Every path under `root` (files, folders, links), recursively; none
/// when `root` cannot be read.
pub fn walk(root: &Path) -> BTreeSet<PathBuf> {
    let mut all = BTreeSet::new();
    for e in fs::read_dir(root).into_iter().flatten().flatten() {
        let p = e.path();
        all.insert(p.clone());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            all.extend(walk(&p));
        }
    }
    all
}

/// An empty folder `<prefix><pid>` under `tmp` (cargo's test scratch
/// folder) for this test process's fixtures; the folders of processes that
/// are gone are removed first.
pub fn process_dir(tmp: &Path, prefix: &str) -> PathBuf {
    for e in fs::read_dir(tmp).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = n.strip_prefix(prefix)
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = fs::remove_dir_all(e.path());
        }
    }
    let dir = tmp.join(format!("{prefix}{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("the fixture folder");
    dir
}

/// The environment variables the agent reads its settings from.
pub const AGENT_ENV: &[&str] = &[
    "TRACEE_BPF_FILE",
    "KERN_HEADERS",
    "BPFARM_REGISTRIES",
    "BPFARM_AGENT_CONFIG",
    "BPFARM_CA_CERT",
    "BPFARM_VERIFY_KEYS",
    "BPFARM_AGENT_STATE_DIR",
];

/// `bpfarm-agent --install-path <install>`, with none of [`AGENT_ENV`]
/// taken from the test's environment.
pub fn agent_command(install: &Path) -> Command {
    let mut c = Command::new(bin("bpfarm-agent"));
    c.arg("--install-path").arg(install);
    for v in AGENT_ENV {
        c.env_remove(v);
    }
    c
}

/// [`agent_command`] with its install path and state folder under `root`
/// (`install/`, `state/`) and `--build-policy <policy>`.
pub fn agent_in(root: &Path, policy: &str) -> Command {
    let mut c = agent_command(&root.join("install"));
    c.arg("--state-dir").arg(root.join("state")).args(["--build-policy", policy]);
    c
}

/// A registry data folder's state: its index's rows (as `sqlite3 .dump`
/// prints them) and [`stored_blobs`].
pub fn registry_snapshot(data: &Path) -> (String, Vec<(String, String)>) {
    let dump = Command::new("sqlite3")
        .arg("-readonly")
        .arg(data.join("index.sqlite"))
        .arg(".dump")
        .output()
        .expect("sqlite3 (ci/install-deps installs it)");
    assert!(dump.status.success(), "{}", show(&dump));
    (String::from_utf8(dump.stdout).expect("the dump is UTF-8"), stored_blobs(data))
}

/// Every blob file of a registry data folder: its name and the digest of
/// its bytes, sorted.
pub fn stored_blobs(data: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    for d in fs::read_dir(data.join("blobs/sha256")).into_iter().flatten().flatten() {
        for f in fs::read_dir(d.path()).expect("a blob folder").flatten() {
            let bytes = fs::read(f.path()).expect("a blob");
            let digest = bpfarm_object::Digest::of_bytes(&bytes);
            files.push((f.file_name().to_string_lossy().into_owned(), digest.to_string()));
        }
    }
    files.sort();
    files
}

/// `bpfarm-agent run` for one second with JSON events: it loads and
/// attaches when the object is accepted.
pub fn run_agent_for_a_second(c: &mut Command) -> Output {
    c.args(["run", "--output", "json", "--duration", "1"]).output().expect("running bpfarm-agent")
}

/// Asserts an agent's refusal: exit 1, every `needle` in its output,
/// nothing loaded (no attach, no events) and no object installed in
/// `root/install`.
pub fn assert_agent_refused(out: &Output, root: &Path, needles: &[&str]) {
    let text = show(out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for n in needles {
        assert!(text.contains(n), "the output does not say {n:?}:\n{text}");
    }
    assert!(!text.contains("attached"), "something was loaded:\n{text}");
    assert!(out.stdout.is_empty(), "events were reported:\n{text}");
    assert!(!root.join("install").join(running_object_name()).exists(), "an object was installed:\n{text}");
}

/// Runs a `bpfarm-builder build` command with `--report <dir>/report.json`,
/// echoing its output into the test's log: the output and the report.
pub fn build_with_report(c: &mut Command, dir: &Path) -> (Output, serde_json::Value) {
    let report = dir.join("report.json");
    let out = c.arg("--report").arg(&report).output().expect("running bpfarm-builder");
    eprintln!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let r = serde_json::from_slice(&fs::read(&report).expect("the build report")).expect("a JSON report");
    (out, r)
}

/// Runs `c` (a command, or a `&mut` one) and echoes its exit code, stdout
/// and stderr into the test's log; its output, whatever its exit code.
pub fn echoed(mut c: impl std::borrow::BorrowMut<Command>) -> Output {
    let c = c.borrow_mut();
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    eprintln!("{}", show(&out));
    out
}

/// `bpfarm-agent fetch` from `registry` (never building) into a fresh
/// install path, under GNU time: asserts it is refused naming `cause`,
/// within 64 MiB of peak memory and 10 seconds, with nothing installed.
/// `what` names the case in the log, beside the figures.
pub fn assert_fetch_refused_in_bounds(what: &str, registry: &str, cause: &str) {
    let dir = tempfile::tempdir().expect("a temp folder");
    let started = std::time::Instant::now();
    let mut c = agent_command(&dir.path().join("install"));
    c.args(["--registry", registry, "--build-policy", "never", "fetch"]);
    let (out, rss) = output_with_peak_rss(&c);
    let took = started.elapsed();
    eprintln!("{what}: refused in {took:?}, agent peak RSS {} MiB", rss >> 20);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains(cause), "{}", show(&out));
    assert!(rss < 64 << 20, "peak RSS {} MiB", rss >> 20);
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    assert!(!dir.path().join("install").join(running_object_name()).exists());
}

/// A GET of `url` through Python's urllib, a client that is not bpfarm's:
/// the body of its 2xx answer.
pub fn python_get(url: &str) -> Vec<u8> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys,urllib.request; sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1]).read())",
            url,
        ])
        .output()
        .expect("python3");
    assert!(out.status.success(), "GET {url}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}
