//! The agent end to end: the builder builds for the running kernel, a real
//! registry (or a plain static server) serves it, and `bpfarm-agent` finds,
//! fetches, verifies, loads and reports events — or refuses, per policy.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bpfarm_object::{Digest, object_file_name};
use bpfarm_tests::{
    Registry, ToolShim, agent_command, bin, privileged, run_ok, running_kernel_build, running_object_name, show, token,
};

/// The running kernel's object built into `dir/out/x86_64/`.
fn build(dir: &Path) -> PathBuf {
    run_ok(&mut running_kernel_build(&dir.join("cache"), &dir.join("out")));
    dir.join("out/x86_64").join(running_object_name())
}

/// A registry holding the running kernel's object, and that object.
fn registry_with_object(dir: &Path) -> (Registry, PathBuf) {
    let p = bpfarm_tests::registry_with_running_object(dir);
    (p.registry, p.object)
}

fn epoch_ns_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

#[test]
fn never_policy_fetches_verifies_loads_and_reports_an_exec() {
    if !privileged("never_policy_fetches_verifies_loads_and_reports_an_exec") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (reg, object) = registry_with_object(dir.path());
    let install = dir.path().join("install");
    let shim = ToolShim::new(&["clang", "llc", "bpftool"]);
    let mut child = agent_command(&install)
        .args([
            "--build-policy",
            "never",
            "--registry",
            &reg.url,
            "run",
            "--output",
            "json",
            "--event",
            "exec",
            "--duration",
            "30",
        ])
        .env("PATH", shim.path_env())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Readiness: the agent says what it attached.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "agent ended before attaching:\n{seen}");
        seen += &line;
        if line.contains("attached") {
            break;
        }
    }
    assert!(seen.contains("(Registry)"), "{seen}");
    // A process of our own, with a path nothing else runs.
    let marker = dir.path().join("bpfarm-e2e-marker");
    std::fs::copy("/bin/true", &marker).unwrap();
    let before = epoch_ns_now();
    let mut m = Command::new(&marker).spawn().unwrap();
    let after = epoch_ns_now();
    let pid = m.id();
    m.wait().unwrap();

    let stdout = BufReader::new(child.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut found = None;
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).expect("one JSON object per line");
        if v["event"] == "exec" && v["pid"] == pid {
            found = Some(v);
            break;
        }
        assert!(Instant::now() < deadline, "no exec event for pid {pid}");
    }
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let e = found.expect("exec event");
    assert_eq!(e["filename"], marker.to_str().unwrap());
    assert_eq!(e["comm"], "bpfarm-e2e-mark");
    assert!(e["ppid"].as_u64().unwrap() > 0 && e["uid"] == 0, "{e}");
    // Wall-clock time for log pipelines: within a second of this test's
    // clock around the exec, the RFC 3339 form the same instant, the host ours.
    let wall = e["epoch_ns"].as_u64().expect("epoch_ns");
    let second = 1_000_000_000;
    assert!((before - second..after + second).contains(&wall), "{e}: exec between {before} and {after}");
    let rfc3339 = chrono::DateTime::parse_from_rfc3339(e["time"].as_str().expect("time")).expect("RFC 3339");
    assert_eq!(rfc3339.timestamp_nanos_opt(), Some(wall as i64), "{e}");
    assert!(e["time"].as_str().unwrap().ends_with('Z'), "{e}");
    assert!(e["ts_ns"].as_u64().unwrap() < wall, "ts_ns stays the kernel's monotonic time: {e}");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(e["host"], host.trim(), "{e}");
    assert!(status.success(), "agent exit {status:?}: {rest}");
    assert!(rest.contains("events (exec"), "no summary: {rest}");
    // Installed, verified, and no compiler ran.
    assert_eq!(std::fs::read(install.join(running_object_name())).unwrap(), std::fs::read(&object).unwrap());
    assert!(install.join(format!("{}.json", running_object_name())).is_file());
    assert_eq!(shim.compiles(), Vec::<String>::new());
}

#[test]
fn never_with_registry_down_fails_fast_names_every_place_and_runs_no_compiler() {
    let dir = tempfile::tempdir().unwrap();
    // A port with nothing behind it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let shim = ToolShim::new(&["clang", "llc", "bpftool"]);
    let started = Instant::now();
    let out = agent_command(&dir.path().join("install"))
        .args(["--build-policy", "never", "--registry", &url, "--timeout", "5", "run"])
        .env("PATH", shim.path_env())
        .output()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for place in
        ["TRACEE_BPF_FILE", "beside the agent", "install path", &format!("registry {url}"), "--build-policy never"]
    {
        assert!(err.contains(place), "{place} not named:\n{err}");
    }
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(shim.calls().is_empty(), "a tool ran under never: {:?}", shim.calls());
}

#[test]
fn tampered_registry_bytes_are_refused_and_nothing_is_installed() {
    let dir = tempfile::tempdir().unwrap();
    let (reg, object) = registry_with_object(dir.path());
    let digest = Digest::of_bytes(&std::fs::read(&object).unwrap());
    // Someone alters the stored blob behind the registry's back.
    let blob = dir.path().join("registry/blobs/sha256").join(&digest.hex()[..2]).join(digest.hex());
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let install = dir.path().join("install");
    let out =
        agent_command(&install).args(["--build-policy", "never", "--registry", &reg.url, "fetch"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"), "{}", show(&out));
    assert!(!install.join(running_object_name()).exists(), "a tampered object was installed");
}

/// `python3 -m http.server` over a folder: a plain static server.
struct StaticServer(std::process::Child, String);

impl Drop for StaticServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn static_server(root: &Path) -> StaticServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory"])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "http.server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    StaticServer(child, format!("http://127.0.0.1:{port}"))
}

#[test]
fn a_plain_static_server_serves_agents_and_altered_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_reg, object) = registry_with_object(dir.path());
    let tree = dir.path().join("tree");
    let out = Command::new(bin("bpfarm-registry"))
        .args(["export", "--data"])
        .arg(dir.path().join("registry"))
        .arg("--out")
        .arg(&tree)
        .output()
        .unwrap();
    assert!(out.status.success());
    let server = static_server(&tree);
    // The first registry is down, the second is the static server: order holds.
    let install = dir.path().join("install");
    let out = agent_command(&install)
        .args(["--registry", "http://127.0.0.1:1", "--registry", &server.1, "--timeout", "10", "fetch"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(std::fs::read(install.join(running_object_name())).unwrap(), std::fs::read(&object).unwrap());

    // Alter the file on the static server: the .sha256 no longer matches.
    let served = tree.join("v0.1.0/x86_64").join(running_object_name());
    let mut bytes = std::fs::read(&served).unwrap();
    bytes[200] ^= 1;
    std::fs::write(&served, bytes).unwrap();
    let install2 = dir.path().join("install2");
    let out = agent_command(&install2).args(["--registry", &server.1, "fetch"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the .sha256 says"), "{}", show(&out));
    assert!(!install2.join(running_object_name()).exists());
}

#[test]
fn a_half_written_object_in_the_install_path_is_never_picked() {
    let dir = tempfile::tempdir().unwrap();
    let (reg, object) = registry_with_object(dir.path());
    let install = dir.path().join("install");
    std::fs::create_dir_all(&install).unwrap();
    let full = std::fs::read(&object).unwrap();
    std::fs::write(install.join(running_object_name()), &full[..full.len() / 2]).unwrap();
    std::fs::copy(
        object.with_file_name(format!("{}.json", running_object_name())),
        install.join(format!("{}.json", running_object_name())),
    )
    .unwrap();
    let out = agent_command(&install).args(["--build-policy", "never", "locate", "--output", "json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["error"].is_string(), "{v:#}");
    assert!(v["trail"].to_string().contains("does not verify"), "{v:#}");
    // With a registry, the agent fetches the good one over it.
    let out =
        agent_command(&install).args(["--build-policy", "never", "--registry", &reg.url, "fetch"]).output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(std::fs::read(install.join(running_object_name())).unwrap(), full);
}

#[test]
fn search_order_bpf_file_exe_dir_and_policies() {
    let dir = tempfile::tempdir().unwrap();
    let object = build(dir.path());
    let install = dir.path().join("install");

    // TRACEE_BPF_FILE set to a folder without the object: an error, not a fall-through.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = agent_command(&install).env("TRACEE_BPF_FILE", &empty).arg("locate").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("TRACEE_BPF_FILE"), "{}", show(&out));
    // ...and set to the object itself, it wins.
    let out =
        agent_command(&install).env("TRACEE_BPF_FILE", &object).args(["locate", "--output", "json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["source"], "bpf-file", "{v:#}");

    // An object beside the executable wins over the install path.
    let exe_dir = dir.path().join("bin");
    std::fs::create_dir(&exe_dir).unwrap();
    let exe = exe_dir.join("bpfarm-agent");
    std::fs::copy(bin("bpfarm-agent"), &exe).unwrap();
    std::fs::copy(&object, exe_dir.join(running_object_name())).unwrap();
    std::fs::create_dir_all(&install).unwrap();
    std::fs::copy(&object, install.join(running_object_name())).unwrap();
    std::fs::copy(
        object.with_file_name(format!("{}.json", running_object_name())),
        install.join(format!("{}.json", running_object_name())),
    )
    .unwrap();
    // Where the copied agent's `locate` finds the object.
    let located = || -> serde_json::Value {
        let out = Command::new(&exe)
            .arg("--install-path")
            .arg(&install)
            .args(["locate", "--output", "json"])
            .env_remove("TRACEE_BPF_FILE")
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let v = located();
    assert_eq!(v["source"], "exe-dir", "{v:#}");
    std::fs::remove_file(exe_dir.join(running_object_name())).unwrap();
    let v = located();
    assert_eq!(v["source"], "install-path", "{v:#}");

    // always: builds even though the install path has a good object.
    let shim = ToolShim::new(&["clang", "llc", "bpftool"]);
    let out = agent_command(&install)
        .args(["--build-policy", "always", "build"])
        .env("PATH", shim.path_env())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(!shim.compiles().is_empty(), "always did not run a compiler");
    let out =
        agent_command(&install).args(["--build-policy", "always", "locate", "--output", "json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["source"], "local-build", "{v:#}");

    // An invalid policy is rejected, naming the valid ones.
    let out = agent_command(&install).args(["--build-policy", "sometimes", "locate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sometimes") && err.contains("never") && err.contains("if-needed") && err.contains("always"),
        "{err}"
    );
}

#[test]
fn capture_exec_copies_executed_binaries_once() {
    if !privileged("capture_exec_copies_executed_binaries_once") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let object = build(dir.path());
    let install = dir.path().join("install");
    let mut child = agent_command(&install)
        .env("TRACEE_BPF_FILE", &object)
        .args(["run", "--capture", "exec", "--event", "exec", "--output", "json", "--duration", "20"])
        // Events are not read here: a pipe nobody drains fills with the
        // exec events of a busy machine and blocks the agent's writes.
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "agent ended before attaching");
        if line.contains("attached") {
            break;
        }
    }
    let marker = dir.path().join("bpfarm-capture-marker");
    std::fs::copy("/bin/true", &marker).unwrap();
    for _ in 0..3 {
        Command::new(&marker).status().unwrap();
    }
    let out_dir = install.join("out");
    let deadline = Instant::now() + Duration::from_secs(15);
    let copies = || -> Vec<PathBuf> {
        std::fs::read_dir(&out_dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.to_string_lossy().ends_with(".bpfarm-capture-marker"))
                    .collect()
            })
            .unwrap_or_default()
    };
    while copies().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert!(child.wait().unwrap().success());
    let found = copies();
    assert_eq!(found.len(), 1, "three runs of one binary make one copy: {found:?}");
    assert_eq!(std::fs::read(&found[0]).unwrap(), std::fs::read("/bin/true").unwrap());
}

#[test]
fn kern_headers_builds_for_another_release_like_the_builder() {
    // KERN_HEADERS pointing at a real Debian build tree (with its `source`
    // link), resolving for that kernel instead of the running one.
    let dir = tempfile::tempdir().unwrap();
    let debs = bpfarm_tests::fixture_debs();
    let cache = dir.path().join("cache");
    let out = Command::new(bin("bpfarm-builder"))
        .args(["build", "--no-progress", "--headers"])
        .arg(bpfarm_tests::deb(&debs, "linux-headers-6.1.0-56-amd64"))
        .arg("--headers")
        .arg(bpfarm_tests::deb(&debs, "linux-headers-6.1.0-56-common"))
        .arg("--headers")
        .arg(bpfarm_tests::deb(&debs, "linux-kbuild-6.1"))
        .arg("--cache-dir")
        .arg(&cache)
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let find = |suffix: &str| -> PathBuf {
        std::fs::read_dir(cache.join("trees"))
            .unwrap()
            .flatten()
            .find_map(|e| {
                std::fs::read_dir(e.path().join("usr/src"))
                    .ok()?
                    .flatten()
                    .map(|e| e.path())
                    .find(|p| p.to_string_lossy().ends_with(suffix))
            })
            .unwrap()
    };
    let build = dir.path().join("build");
    let status = Command::new("cp").arg("-r").arg(find("linux-headers-6.1.0-56-amd64")).arg(&build).status().unwrap();
    assert!(status.success());
    std::os::unix::fs::symlink(find("linux-headers-6.1.0-56-common"), build.join("source")).unwrap();
    let install = dir.path().join("install");
    let out = agent_command(&install)
        .env("KERN_HEADERS", &build)
        .args(["--kernel-release", "6.1.0-56-amd64", "build"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KERN_HEADERS="), "{}", show(&out));
    let name = object_file_name("6.1.0-56-amd64", "v0.1.0");
    assert_eq!(
        std::fs::read(install.join(&name)).unwrap(),
        std::fs::read(dir.path().join("out/x86_64").join(&name)).unwrap()
    );
    // Headers for another kernel than the one asked for are refused.
    let out = agent_command(&dir.path().join("install2"))
        .env("KERN_HEADERS", &build)
        .args(["--kernel-release", "6.1.0-55-amd64", "build"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("headers are for kernel 6.1.0-56-amd64"), "{}", show(&out));
}

#[test]
fn missing_capabilities_are_named_before_loading() {
    let dir = tempfile::tempdir().unwrap();
    let object = build(dir.path());
    // Root, but with every capability dropped from the bounding set: what a
    // locked-down container or an unprivileged user has.
    let out = Command::new("setpriv")
        .args(["--bounding-set", "-all", "--inh-caps", "-all", "--"])
        .arg(bin("bpfarm-agent"))
        .arg("--install-path")
        .arg(dir.path().join("install"))
        .args(["run", "--duration", "1"])
        .env("TRACEE_BPF_FILE", &object)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CAP_BPF") && err.contains("CAP_PERFMON") && err.contains("CAP_SYS_ADMIN"), "{err}");
    // locate needs no privileges.
    let out = Command::new("setpriv")
        .args(["--bounding-set", "-all", "--inh-caps", "-all", "--"])
        .arg(bin("bpfarm-agent"))
        .args(["locate"])
        .env("TRACEE_BPF_FILE", &object)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
}

#[test]
fn registry_headers_reach_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("registry");
    let push = token(&data, "ci", "push");
    let read = token(&data, "fleet", "read");
    let reg = bpfarm_tests::serve_with(&[
        "--listen",
        "127.0.0.1:0",
        "--require-read-token",
        "--data",
        data.to_str().unwrap(),
    ]);
    bpfarm_tests::publish_running_object(dir.path(), &reg.url, &push);
    // Without credentials the registry refuses, and the agent says so.
    let out = agent_command(&dir.path().join("a"))
        .args(["--build-policy", "never", "--registry", &reg.url, "fetch"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("read token is required"), "{}", show(&out));
    // The same header a CDN or proxy would need, passed through as given.
    let out = agent_command(&dir.path().join("b"))
        .args([
            "--build-policy",
            "never",
            "--registry",
            &reg.url,
            "--registry-header",
            &format!("Authorization: Bearer {read}"),
            "fetch",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(dir.path().join("b").join(running_object_name()).is_file());
}

#[test]
fn the_table_shows_local_wall_clock_time_and_host_name_overrides() {
    if !privileged("the_table_shows_local_wall_clock_time_and_host_name_overrides") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let object = build(dir.path());
    let marker = dir.path().join("bpfarm-tzmark");
    std::fs::copy("/bin/true", &marker).unwrap();
    // A zone far from UTC, with a half-hour offset: local time, not UTC and
    // not seconds since boot.
    let mut child = agent_command(&dir.path().join("install"))
        .env("TRACEE_BPF_FILE", &object)
        .env("TZ", "Asia/Kolkata")
        .env("BPFARM_HOST_NAME", "node-a")
        .args(["run", "--output", "table", "--event", "exec", "--comm", "bpfarm-tzmark", "--duration", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("attached") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "agent ended before attaching");
    }
    assert!(line.contains("on node-a"), "{line}");
    Command::new(&marker).status().unwrap();
    let expected = chrono::Utc::now().with_timezone(&chrono::FixedOffset::east_opt(5 * 3600 + 1800).unwrap());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let header = lines.next().unwrap().unwrap();
    assert!(header.starts_with("TIME "), "{header}");
    let row = lines.next().unwrap().unwrap();
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    child.wait().unwrap();
    let shown = chrono::NaiveTime::parse_from_str(row.split_whitespace().next().unwrap(), "%H:%M:%S%.6f")
        .unwrap_or_else(|e| panic!("{row:?}: the first column is not a local HH:MM:SS.ffffff time: {e}"));
    let off = (shown - expected.time()).num_milliseconds().abs();
    assert!(!(2000..=86_400_000 - 2000).contains(&off), "{row:?} is not Asia/Kolkata time (now {expected})");
    assert!(row.contains("exec") && row.contains("bpfarm-tzmark"), "{row:?}");
}

#[test]
fn kern_headers_at_lib_modules_build_finds_the_source_link_beside_it() {
    // Debian's layout: /lib/modules/<release>/build and .../source are two
    // links, to the flavour tree and the -common tree; the flavour tree has
    // no source link of its own. Here under a temporary root, links relative.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let debs = bpfarm_tests::fixture_debs();
    for p in ["linux-headers-6.1.0-56-amd64", "linux-headers-6.1.0-56-common"] {
        let out = Command::new("dpkg-deb").arg("-x").arg(bpfarm_tests::deb(&debs, p)).arg(&root).output().unwrap();
        assert!(out.status.success(), "{}", show(&out));
    }
    let modules = root.join("lib/modules/6.1.0-56-amd64");
    for (link, target) in [
        ("build", "../../../usr/src/linux-headers-6.1.0-56-amd64"),
        ("source", "../../../usr/src/linux-headers-6.1.0-56-common"),
    ] {
        let _ = std::fs::remove_file(modules.join(link));
        std::os::unix::fs::symlink(target, modules.join(link)).unwrap();
    }
    let install = dir.path().join("install");
    let out = agent_command(&install)
        .env("KERN_HEADERS", modules.join("build"))
        .args(["--kernel-release", "6.1.0-56-amd64", "build"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(install.join(object_file_name("6.1.0-56-amd64", "v0.1.0")).is_file());
}

/// `cargo tree` of the agent's normal dependencies, with or without its
/// default features.
fn agent_dependencies(default_features: bool) -> Vec<String> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(bpfarm_tests::repo_root()).args([
        "tree",
        "--locked",
        "--offline",
        "-p",
        "bpfarm-agent",
        "-e",
        "normal",
        "--prefix",
        "none",
    ]);
    if !default_features {
        cmd.arg("--no-default-features");
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn an_agent_without_local_build_links_no_builder() {
    let slim = agent_dependencies(false);
    assert!(slim.iter().any(|c| c == "bpfarm-object"), "{slim:?}");
    assert!(!slim.iter().any(|c| c == "bpfarm-builder"), "the slim agent depends on the builder: {slim:?}");
    // The check can fail: the default agent does link the builder.
    assert!(agent_dependencies(true).iter().any(|c| c == "bpfarm-builder"));
}

#[test]
fn an_agent_without_local_build_refuses_to_build_and_fetches_with_never() {
    let dir = tempfile::tempdir().unwrap();
    let install = dir.path().join("install");
    // Built by ci/test with --no-default-features (no local-build feature).
    let slim = || {
        let mut c = Command::new(bin("bpfarm-agent-slim"));
        c.arg("--install-path").arg(&install).env_remove("TRACEE_BPF_FILE").env_remove("KERN_HEADERS");
        c.env_remove("BPFARM_BUILD_POLICY").env_remove("BPFARM_REGISTRIES");
        c
    };
    let refused = |out: &Output| {
        assert_eq!(out.status.code(), Some(2), "{}", show(out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("built without") && err.contains("local-build"), "{}", show(out));
        assert!(!install.exists(), "a refused command wrote {}", install.display());
    };
    refused(&slim().arg("build").output().unwrap());
    for policy in ["if-needed", "always"] {
        refused(&slim().args(["--build-policy", policy, "locate"]).output().unwrap());
        refused(&slim().env("BPFARM_BUILD_POLICY", policy).arg("run").output().unwrap());
    }
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "build_policy = \"if-needed\"\n").unwrap();
    refused(&slim().arg("--config").arg(&config).arg("locate").output().unwrap());

    // Without a policy it never builds: nothing local, no registry.
    let out = slim().args(["locate", "--output", "json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains("the build policy is never"), "{v:#}");

    // `never` fetches, verifies and installs from a real registry.
    let (reg, object) = registry_with_object(dir.path());
    let out = slim().args(["--build-policy", "never", "--registry", &reg.url, "fetch"]).output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(std::fs::read(install.join(running_object_name())).unwrap(), std::fs::read(&object).unwrap());
}
