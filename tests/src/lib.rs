//! Shared support for bpfarm's tests: where the fixture kernels are (fetched
//! once with `kernels/fetch.py`), recording tool shims, hand-made hostile
//! packages, and the rule for privileged tests (fail under `CI=true`, say
//! loudly that they were skipped otherwise).

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

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
/// them (once per test process; a no-op when present).
pub fn fixture_debs() -> PathBuf {
    static DEBS: OnceLock<PathBuf> = OnceLock::new();
    DEBS.get_or_init(|| {
        let debs = cache_root().join("debs");
        let status = Command::new("python3")
            .arg(repo_root().join("kernels/fetch.py"))
            .arg(repo_root().join("kernels/default.toml"))
            .arg("--cache")
            .arg(&debs)
            .status()
            .expect("running kernels/fetch.py");
        assert!(
            status.success(),
            "kernels/fetch.py kernels/default.toml failed: the tests need real Debian header packages"
        );
        debs
    })
    .clone()
}

/// The `.deb` in `dir` whose file name starts with `<package>_`.
pub fn deb(dir: &Path, package: &str) -> PathBuf {
    let prefix = format!("{package}_");
    fs::read_dir(dir)
        .expect("package folder")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix)))
        .unwrap_or_else(|| panic!("{package} is not in {}", dir.display()))
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
#[derive(Debug)]
pub struct ToolShim {
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl ToolShim {
    pub fn new(tools: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("shim folder");
        let log = dir.path().join("calls.log");
        fs::write(&log, "").expect("shim log");
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
                format!("#!/bin/sh\necho \"{tool} $*\" >> '{}'\nexec '{}' \"$@\"\n", log.display(), real.display()),
            )
            .expect("write shim");
            fs::set_permissions(&shim, fs::Permissions::from_mode(0o755)).expect("chmod shim");
        }
        Self { dir, log }
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
}

/// Writes a `.deb` (ar: debian-binary, control.tar.xz, data.tar.xz) with the
/// given control text and data entries, header names written raw so that
/// hostile paths survive.
pub fn write_deb(path: &Path, control: &str, data: &[Entry<'_>]) {
    let control_tar = tar_xz(&[Entry::File("./control", control.as_bytes())]);
    let data_tar = tar_xz(data);
    let f = fs::File::create(path).expect("create deb");
    let mut ar = ar::Builder::new(f);
    for (name, bytes) in
        [("debian-binary", b"2.0\n".to_vec()), ("control.tar.xz", control_tar), ("data.tar.xz", data_tar)]
    {
        let header = ar::Header::new(name.as_bytes().to_vec(), bytes.len() as u64);
        ar.append(&header, &bytes[..]).expect("append ar member");
    }
}

fn tar_xz(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (name, kind, body): (&str, tar::EntryType, &[u8]) = match e {
            Entry::File(n, d) => (n, tar::EntryType::Regular, d),
            Entry::Symlink(n, _) => (n, tar::EntryType::Symlink, &[]),
        };
        h.as_gnu_mut().expect("gnu header").name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(body.len() as u64);
        if let Entry::Symlink(_, target) = e {
            h.set_link_name_literal(target).expect("link name");
        }
        h.set_cksum();
        b.append(&h, body).expect("append tar entry");
    }
    let tar = b.into_inner().expect("finish tar");
    let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
    xz.write_all(&tar).expect("xz");
    xz.finish().expect("xz finish")
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

/// Metadata for a stand-in object (tests of registry plumbing that need no
/// real build).
pub fn sample_metadata(release: &str, arch: bpfarm_object::Arch, bytes: &[u8]) -> bpfarm_object::ObjectMetadata {
    use bpfarm_object::{Compiler, Digest, Identity, KernelFacts, ObjectMetadata};
    let identity = Identity::new(release, arch, "v0.1.0").expect("a valid sample identity");
    ObjectMetadata {
        file_name: identity.file_name(),
        identity,
        digest: Digest::of_bytes(bytes),
        size: bytes.len() as u64,
        kernel: KernelFacts::default(),
        build_mode: "headers".into(),
        sources: vec![],
        program_digest: Digest::of_bytes(b"p"),
        compiler: Compiler { clang: "clang".into(), llc: None },
        flags: vec![],
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
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease").trim().to_owned();
    dir.join("out").join(std::env::consts::ARCH).join(bpfarm_object::object_file_name(&release, "v0.1.0"))
}
