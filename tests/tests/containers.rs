//! bpfarm's container images, run with podman (through `ci/podman`): the
//! slim agent fetches from a registry and traces the host with capabilities
//! instead of `--privileged`; the full agent builds from mounted kernel
//! headers and from the host's BTF; the builder image builds a matrix into a
//! mounted folder; the registry image serves and keeps its data across a
//! restart; `ci/images --push` pushes to OCI registries. The images are built
//! once per run of this file (`ci/images --profile debug`: the binaries
//! `ci/test` has already built), then shared by every test.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bpfarm_object::object_file_name;
use bpfarm_tests::{bin, containers, podman, repo_root, running_object_name, running_release, show};

#[derive(Debug)]
struct Images {
    builder: String,
    full: String,
    slim: String,
    registry: String,
}

/// Builds the four images once (layers are cached across runs: a rebuild
/// redoes only the COPY of changed binaries).
fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let started = Instant::now();
        // The slim agent ci/test built without the local-build feature.
        let slim = bpfarm_tests::bin("bpfarm-agent-slim");
        let out = Command::new(repo_root().join("ci/images"))
            .args(["--profile", "debug", "--slim-agent", slim.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "ci/images failed:\n{}", show(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let image = |target: &str| -> String {
            stdout
                .lines()
                .find_map(|l| {
                    let mut it = l.split_whitespace();
                    (it.next() == Some("image") && it.next() == Some(target)).then(|| it.next().unwrap().to_owned())
                })
                .unwrap_or_else(|| panic!("ci/images printed no {target} image:\n{stdout}"))
        };
        eprintln!("ci/images: {:.1}s\n{stdout}", started.elapsed().as_secs_f64());
        Images {
            builder: image("builder"),
            full: image("agent-full"),
            slim: image("agent-slim"),
            registry: image("registry"),
        }
    })
}

/// A name no other test (or run) uses.
fn unique(tag: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!("bpfarm-test-{}-{}-{tag}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// A container or volume removed on drop, whatever the test's outcome.
struct Removed {
    kind: &'static str,
    name: String,
}

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = podman().args([self.kind, "rm", "--force", &self.name]).output();
    }
}

fn podman_ok(args: &[&str]) -> String {
    let out = podman().args(args).output().unwrap();
    assert!(out.status.success(), "podman {}:\n{}", args.join(" "), show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The registry image, detached, its port published on loopback and its
/// data in `volume`.
fn start_registry(image: &str, volume: &str) -> (Removed, String) {
    let name = unique("registry");
    podman_ok(&[
        "run",
        "--detach",
        "--name",
        &name,
        "--publish",
        "127.0.0.1::8080",
        "--volume",
        &format!("{volume}:/var/lib/bpfarm"),
        image,
    ]);
    let guard = Removed { kind: "container", name: name.clone() };
    let port = podman_ok(&["port", &name, "8080/tcp"]);
    let url = format!("http://{}", port.trim());
    // Readiness: the container's own healthcheck passes.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !podman().args(["healthcheck", "run", &name]).output().unwrap().status.success() {
        assert!(
            Instant::now() < deadline,
            "the registry container never became healthy: {}",
            podman_ok(&["logs", &name])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    (guard, url)
}

fn registry_token(container: &str) -> String {
    let out = podman_ok(&["exec", container, "bpfarm-registry", "token", "create", "--name", "ci", "--scope", "push"]);
    out.lines().last().unwrap().to_owned()
}

/// Lines of `child`'s stderr until one contains `what`; all of them.
fn wait_for(stderr: &mut impl BufRead, what: &str) -> String {
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "ended before {what:?}:\n{seen}");
        seen += &line;
        if line.contains(what) {
            return seen;
        }
    }
}

/// `ci/containers/seccomp-bpf` applied to podman's default profile.
fn seccomp_profile(dir: &Path) -> PathBuf {
    let out = Command::new(repo_root().join("ci/containers/seccomp-bpf")).output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let p = dir.join("seccomp.json");
    std::fs::write(&p, &out.stdout).unwrap();
    p
}

/// The agent options of the README's container section.
fn agent_run_args(install: &Path, seccomp: &Path) -> Vec<String> {
    [
        "--network=host",
        "--pid=host",
        // tracefs for the syscall tracepoints, BTF for a local build: read-only.
        "--volume=/sys/kernel:/sys/kernel:ro",
        // The host's UTS namespace: events carry the host's name.
        "--uts=host",
        "--read-only",
        &format!("--volume={}:/tmp/tracee", install.display()),
        "--cap-drop=all",
        "--cap-add=BPF,PERFMON",
        &format!("--security-opt=seccomp={}", seccomp.display()),
    ]
    .map(str::to_owned)
    .to_vec()
}

#[test]
fn slim_agent_has_no_compiler_fetches_from_the_registry_image_and_traces_the_host() {
    if !containers("slim_agent_has_no_compiler_fetches_from_the_registry_image_and_traces_the_host") {
        return;
    }
    let img = images();
    // The fleet image has no compiler and no headers; the full one has them
    // (so this check can fail).
    let probe = "for t in clang clang-14 llc llc-14 bpftool; do command -v $t; done; ls -d /usr/src/linux-* /lib/modules/* 2>/dev/null; true";
    let slim = podman_ok(&["run", "--rm", "--entrypoint", "/bin/bash", &img.slim, "-c", probe]);
    assert_eq!(slim, "", "the slim image holds a compiler or headers");
    let full = podman_ok(&["run", "--rm", "--entrypoint", "/bin/bash", &img.full, "-c", probe]);
    assert!(full.contains("clang") && full.contains("llc") && full.contains("bpftool"), "{full}");

    let dir = tempfile::tempdir().unwrap();
    let volume = unique("data");
    podman_ok(&["volume", "create", &volume]);
    let _volume = Removed { kind: "volume", name: volume.clone() };
    let (reg, url) = start_registry(&img.registry, &volume);
    let object = bpfarm_tests::publish_running_object(dir.path(), &url, &registry_token(&reg.name));
    let install = dir.path().join("tracee");
    std::fs::create_dir(&install).unwrap();
    let seccomp = seccomp_profile(dir.path());

    // No capabilities: refused before loading, named, exit 1.
    let out = podman()
        .args(["run", "--rm", "--network=host", "--cap-drop=all"])
        .args([&img.slim, "--registry", &url, "run", "--duration", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lacks: CAP_BPF, CAP_PERFMON"), "{}", show(&out));

    // CAP_BPF + CAP_PERFMON (with a seccomp profile that lets them call
    // bpf() and perf_event_open()), the host's PID namespace and /sys/kernel;
    // --capture exec also needs CAP_SYS_PTRACE: reading another process's
    // /proc/<pid>/exe is a ptrace-mode access.
    let name = unique("slim");
    let _agent = Removed { kind: "container", name: name.clone() };
    let mut child = podman()
        .args(["run", "--rm", "--name", &name])
        .args(agent_run_args(&install, &seccomp))
        .arg("--cap-add=SYS_PTRACE")
        .args([&img.slim, "--registry", &url, "run", "--output", "json", "--event", "exec", "--capture", "exec"])
        .args(["--duration", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let seen = wait_for(&mut stderr, "attached");
    assert!(seen.contains("(Registry)") && seen.contains("its embedded identity names this kernel"), "{seen}");
    // The syscall tracepoints attach only with the host's tracefs mounted.
    assert!(seen.contains("bpfarm_openat"), "{seen}");
    // A host process that lives a moment: its file is outside the container's
    // mounts, so the copy comes from /proc/<pid>/exe, which --pid=host shows.
    let marker = dir.path().join("bpfarm-ctr-mark");
    std::fs::copy("/bin/sleep", &marker).unwrap();
    let mut m = Command::new(&marker).arg("2").spawn().unwrap();
    let pid = m.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut found = None;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in &mut lines {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).expect("one JSON object per line");
        if v["event"] == "exec" && v["pid"] == pid {
            found = Some(v);
            break;
        }
        assert!(Instant::now() < deadline, "no exec event for host pid {pid}");
    }
    m.wait().unwrap();
    let _ = podman().args(["kill", "--signal", "INT", &name]).output();
    // Read to the end: a closed pipe would fail podman's own output.
    lines.for_each(drop);
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let e = found.expect("the host's exec seen from the container");
    assert_eq!(e["filename"], marker.to_str().unwrap());
    assert!(e["epoch_ns"].as_u64().is_some() && e["time"].is_string(), "{e}");
    assert_eq!(e["host"], std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim(), "{e}");
    assert!(status.success(), "agent exit {status:?}: {rest}");
    assert!(rest.contains("executables captured"), "{rest}");
    // The object was installed into the host's shared install path, and
    // --pid=host let the agent copy the host process's executable.
    let name = running_object_name();
    assert_eq!(std::fs::read(install.join(&name)).unwrap(), std::fs::read(&object).unwrap());
    let captured: Vec<_> = std::fs::read_dir(install.join("out")).unwrap().flatten().map(|e| e.path()).collect();
    let copy = captured
        .iter()
        .find(|p| p.to_string_lossy().ends_with(".bpfarm-ctr-mark"))
        .unwrap_or_else(|| panic!("the marker was not captured: {captured:?}"));
    assert_eq!(std::fs::read(copy).unwrap(), std::fs::read("/bin/sleep").unwrap());
}

/// The 6.1 kernel's three Debian packages unpacked as a host would have
/// them installed (`/usr/src/linux-headers-*`, `/lib/modules/<release>/{build,source}`).
fn installed_headers(root: &Path) -> &'static str {
    let debs = bpfarm_tests::fixture_debs();
    for p in ["linux-headers-6.1.0-56-amd64", "linux-headers-6.1.0-56-common", "linux-kbuild-6.1"] {
        let out = Command::new("dpkg-deb").arg("-x").arg(bpfarm_tests::deb(&debs, p)).arg(root).output().unwrap();
        assert!(out.status.success(), "{}", show(&out));
    }
    "6.1.0-56-amd64"
}

#[test]
fn full_agent_builds_from_mounted_kern_headers_and_from_the_hosts_btf() {
    if !containers("full_agent_builds_from_mounted_kern_headers_and_from_the_hosts_btf") {
        return;
    }
    let img = images();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let headers_release = installed_headers(&root);
    // The same kernel built on the host by the builder: the bytes to expect.
    let host_out = dir.path().join("host-out");
    let debs = bpfarm_tests::fixture_debs();
    let out = Command::new(bin("bpfarm-builder"))
        .args(["build", "--no-progress"])
        .args(
            ["linux-headers-6.1.0-56-amd64", "linux-headers-6.1.0-56-common", "linux-kbuild-6.1"]
                .map(|p| format!("--headers={}", bpfarm_tests::deb(&debs, p).display())),
        )
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .arg("--out")
        .arg(&host_out)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let name = object_file_name(headers_release, "v0.1.0");

    // KERN_HEADERS with /usr/src and /lib/modules mounted read-only, as the
    // seed's users run it. No Debian headers package exists for this
    // machine's 6.18 kernel, so this builds for the 6.1 kernel the headers
    // are for (--kernel-release), without loading.
    let install = dir.path().join("tracee");
    std::fs::create_dir(&install).unwrap();
    let out = podman()
        .args(["run", "--rm"])
        .arg(format!("--volume={}:/usr/src:ro", root.join("usr/src").display()))
        .arg(format!("--volume={}:/lib/modules:ro", root.join("lib/modules").display()))
        .arg(format!("--volume={}:/usr/lib/linux-kbuild-6.1:ro", root.join("usr/lib/linux-kbuild-6.1").display()))
        .arg(format!("--volume={}:/tmp/tracee", install.display()))
        .args(["--env", &format!("KERN_HEADERS=/lib/modules/{headers_release}/build")])
        .args([&img.full, "--kernel-release", headers_release, "build"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KERN_HEADERS="), "{}", show(&out));
    assert_eq!(
        std::fs::read(install.join(&name)).unwrap(),
        std::fs::read(host_out.join("x86_64").join(&name)).unwrap(),
        "the container's build differs from the host builder's"
    );

    // The running kernel: the local build here is the BTF one (the host's
    // /sys/kernel/btf/vmlinux through the /sys/kernel mount), then load.
    let seccomp = seccomp_profile(dir.path());
    let out = podman()
        .args(["run", "--rm"])
        .args(agent_run_args(&install, &seccomp))
        .args([
            &img.full,
            "--build-policy",
            "if-needed",
            "run",
            "--duration",
            "1",
            "--output",
            "json",
            "--event",
            "exec",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("(LocalBuild)") && stderr.contains("attached"), "{}", show(&out));
    assert!(install.join(running_object_name()).is_file());
}

#[test]
fn builder_image_builds_a_matrix_into_a_mounted_folder() {
    if !containers("builder_image_builds_a_matrix_into_a_mounted_folder") {
        return;
    }
    let img = images();
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    std::fs::create_dir(dir.path().join("cache")).unwrap();
    let out = podman()
        .args(["run", "--rm"])
        .arg(format!("--volume={}:/debs:ro", bpfarm_tests::fixture_debs().display()))
        .arg(format!("--volume={}:/out", out_dir.display()))
        .arg(format!("--volume={}:/var/cache/bpfarm", dir.path().join("cache").display()))
        .args([&img.builder, "build", "--matrix", "/usr/share/bpfarm/kernels/default.toml", "--package-cache", "/debs"])
        .args(["--out", "/out", "--report", "/out/report.json", "--no-progress"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("report.json")).unwrap()).unwrap();
    let kernels = report["kernels"].as_array().expect("kernels in the report");
    assert_eq!(kernels.len(), 4, "{report}");
    for (release, arch) in [
        ("6.1.0-56-amd64", "x86_64"),
        ("6.12.117+deb12-amd64", "x86_64"),
        ("6.12.117+deb12-cloud-amd64", "x86_64"),
        ("6.12.117+deb12-arm64", "aarch64"),
    ] {
        let o = out_dir.join(arch).join(object_file_name(release, "v0.1.0"));
        assert!(std::fs::read(&o).unwrap().starts_with(b"\x7fELF"), "{}", o.display());
        assert!(o.with_file_name(format!("{}.json", object_file_name(release, "v0.1.0"))).is_file());
    }
}

#[test]
fn registry_image_runs_as_non_root_serves_and_keeps_its_volume_across_a_restart() {
    if !containers("registry_image_runs_as_non_root_serves_and_keeps_its_volume_across_a_restart") {
        return;
    }
    let img = images();
    let dir = tempfile::tempdir().unwrap();
    let volume = unique("data");
    podman_ok(&["volume", "create", &volume]);
    let _volume = Removed { kind: "volume", name: volume.clone() };
    let (first, url) = start_registry(&img.registry, &volume);
    assert_eq!(podman_ok(&["exec", &first.name, "id", "-u"]).trim(), "10001");
    let token = registry_token(&first.name);
    let object = bpfarm_tests::publish_running_object(dir.path(), &url, &token);
    let path = format!("/v1/objects/{}/v0.1.0/{}", std::env::consts::ARCH, running_release());
    let meta: serde_json::Value =
        serde_json::from_slice(&reqwest::blocking::get(format!("{url}{path}")).unwrap().bytes().unwrap()).unwrap();
    let digest = meta["digest"].as_str().unwrap().to_owned();

    // Stopped (SIGTERM), removed, a new container on the same volume.
    podman_ok(&["stop", "--time", "10", &first.name]);
    drop(first);
    let (second, url) = start_registry(&img.registry, &volume);
    let meta: serde_json::Value =
        serde_json::from_slice(&reqwest::blocking::get(format!("{url}{path}")).unwrap().bytes().unwrap()).unwrap();
    assert_eq!(meta["digest"], digest.as_str());
    let blob = reqwest::blocking::get(format!("{url}/v1/blobs/{digest}")).unwrap().bytes().unwrap().to_vec();
    assert_eq!(blob, std::fs::read(&object).unwrap());
    // The push token survived too: a new version publishes with it, and a
    // made-up token is refused.
    let publish = |token: &str, version: &str| {
        Command::new(bin("bpfarm-builder"))
            .args(["build", "--running-kernel", "--no-progress", "--version", version])
            .args(["--publish", &url, "--token", token, "--cache-dir"])
            .arg(dir.path().join("cache"))
            .arg("--out")
            .arg(dir.path().join(version))
            .output()
            .unwrap()
    };
    let again = publish(&token, "v0.2.0");
    assert!(again.status.success(), "{}", show(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains(": 1 published"), "{}", show(&again));
    let forged = publish("bpfarm_0000000000000000000000000000000000000000000000000000000000000000", "v0.3.0");
    assert!(!forged.status.success(), "a made-up token was accepted: {}", show(&forged));
    let health = podman_ok(&["inspect", "--format", "{{.Config.Healthcheck.Test}}", &second.name]);
    assert!(health.contains("/healthz"), "{health}");
}

#[test]
fn ci_images_pushes_to_any_oci_registry_bpfarms_own_included() {
    if !containers("ci_images_pushes_to_any_oci_registry_bpfarms_own_included") {
        return;
    }
    let img = images();
    let dir = tempfile::tempdir().unwrap();
    // bpfarm's own registry (its /v2 API; image layers exceed the default
    // 64 MiB object limit) and distribution 2.8.
    let data = dir.path().join("registry");
    let push = bpfarm_tests::token(&data, "ci", "push");
    let bpfarm = bpfarm_tests::serve_with(&[
        "--listen",
        "127.0.0.1:0",
        "--data",
        data.to_str().unwrap(),
        "--max-object-bytes",
        "536870912",
    ]);
    let distribution = bpfarm_tests::distribution();
    let bpfarm_host = bpfarm.url.trim_start_matches("http://").to_owned();
    for (host, creds) in [(bpfarm_host.as_str(), Some(format!("ci:{push}"))), (distribution.addr.as_str(), None)] {
        let mut cmd = Command::new(repo_root().join("ci/images"));
        cmd.args([
            "--profile",
            "debug",
            "--only",
            "agent-slim",
            "--push",
            &format!("{host}/acme"),
            "--tls-verify=false",
            "--slim-agent",
            bpfarm_tests::bin("bpfarm-agent-slim").to_str().unwrap(),
        ]);
        if let Some(c) = &creds {
            cmd.args(["--creds", c]);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{host}: {}", show(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let pushed =
            stdout.lines().find_map(|l| l.strip_prefix("pushed agent-slim ")).unwrap_or_else(|| panic!("{stdout}"));
        let (dest, digest) = pushed.split_once(' ').unwrap();
        assert_eq!(dest, format!("{host}/acme/bpfarm-agent:slim-0.1.0"));
        // skopeo sees the digest podman pushed.
        let mut inspect = Command::new("skopeo");
        inspect.args(["inspect", "--tls-verify=false", "--format", "{{.Digest}}"]);
        if let Some(c) = &creds {
            inspect.args(["--creds", c]);
        }
        let out = inspect.arg(format!("docker://{dest}")).output().unwrap();
        assert!(out.status.success(), "{}", show(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), digest);
    }
    // Pulled back from bpfarm's registry and run: the same image.
    let pulled = format!("{bpfarm_host}/acme/bpfarm-agent:slim-0.1.0");
    let out = podman()
        .args(["pull", "--quiet", "--tls-verify=false", "--creds", &format!("ci:{push}"), &pulled])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let _cleanup = Removed { kind: "image", name: pulled.clone() };
    let ours = podman_ok(&["image", "inspect", "--format", "{{.Id}}", &img.slim]);
    assert_eq!(podman_ok(&["image", "inspect", "--format", "{{.Id}}", &pulled]), ours);
    assert!(podman_ok(&["run", "--rm", &pulled, "--version"]).starts_with("bpfarm-agent "));
}

/// podman's default seccomp profile grants bpf() to CAP_SYS_ADMIN only (as
/// containers-common on Debian bookworm ships it).
fn default_seccomp_needs_sys_admin_for_bpf() -> bool {
    let profile: serde_json::Value =
        serde_json::from_slice(&std::fs::read("/usr/share/containers/seccomp.json").unwrap()).unwrap();
    !profile["syscalls"].as_array().unwrap().iter().any(|rule| {
        rule["action"] == "SCMP_ACT_ALLOW"
            && rule["names"].as_array().unwrap().iter().any(|n| n == "bpf")
            && rule["includes"]["caps"].as_array().is_some_and(|c| c.iter().any(|c| c == "CAP_BPF"))
    })
}

#[test]
fn capabilities_instead_of_privileged_as_the_readme_documents() {
    if !containers("capabilities_instead_of_privileged_as_the_readme_documents") {
        return;
    }
    let img = images();
    let dir = tempfile::tempdir().unwrap();
    // A mounted object (TRACEE_BPF_FILE): nothing fetched or built.
    let out = Command::new(bin("bpfarm-builder"))
        .args(["build", "--running-kernel", "--no-progress", "--cache-dir"])
        .arg(dir.path().join("cache"))
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let object = dir.path().join("out/x86_64").join(running_object_name());
    let seccomp = seccomp_profile(dir.path());
    let run = |opts: &[&str]| -> Output {
        podman()
            .args(["run", "--rm", "--pid=host", "--read-only", "--volume=/sys/kernel:/sys/kernel:ro"])
            .arg(format!("--volume={}:/opt/tracee.bpf.o:ro", object.display()))
            .args(["--env", "TRACEE_BPF_FILE=/opt/tracee.bpf.o"])
            .args(opts)
            .args([&img.slim, "run", "--duration", "0.5", "--event", "exec", "--output", "json"])
            .output()
            .unwrap()
    };
    let attached =
        |o: &Output| o.status.success() && String::from_utf8_lossy(&o.stderr).contains("attached 6 programs");
    let derived = format!("--security-opt=seccomp={}", seccomp.display());
    for opts in [
        vec!["--cap-drop=all", "--cap-add=BPF,PERFMON", derived.as_str()],
        vec!["--cap-drop=all", "--cap-add=BPF,PERFMON", "--security-opt=seccomp=unconfined"],
        vec!["--cap-drop=all", "--cap-add=SYS_ADMIN"],
        vec!["--privileged"],
    ] {
        let out = run(&opts);
        assert!(attached(&out), "{opts:?}: {}", show(&out));
    }
    // The engine's own default profile with CAP_BPF + CAP_PERFMON: refused
    // by the kernel's bpf() (seccomp's EPERM) where that profile keeps bpf()
    // for CAP_SYS_ADMIN, as the README says; fine where it does not.
    let out = run(&["--cap-drop=all", "--cap-add=BPF,PERFMON"]);
    if default_seccomp_needs_sys_admin_for_bpf() {
        assert_eq!(out.status.code(), Some(1), "{}", show(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("refused to load") && !attached(&out), "{}", show(&out));
    } else {
        assert!(attached(&out), "{}", show(&out));
    }
}
