//! What bpfarm ships for running it at scale, checked with the tools its
//! users' platforms check it with: the Containerfile with hadolint, the
//! GitHub workflows against check-jsonschema's vendored workflow schema,
//! the Kubernetes manifests with `kubernetes-validate --strict` (each file,
//! and kustomize's rendering when `kubectl` is on this machine); the
//! coverage gate against a real registry; and the Indexed Job's command run
//! for real, one pod per completion index, in the builder image.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use bpfarm_tests::{bin, containers, podman, repo_root, running_release, serve, show, token};
use serde_json::Value;

/// A tool the tests need, installed by ci/install-deps (pip).
fn tool(name: &str) -> Command {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).any(|d| d.join(name).is_file());
    assert!(found, "{name} is not on PATH: ci/install-deps installs it");
    Command::new(name)
}

/// Every YAML document of a file, as JSON (PyYAML, a dependency of
/// kubernetes-validate, reads it: the same parser the validator uses).
fn yaml_docs(path: &Path) -> Vec<Value> {
    let out = Command::new("python3")
        .args(["-c", "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]))"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}: {}", path.display(), show(&out));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

fn yaml(path: &Path) -> Value {
    let mut docs = yaml_docs(path);
    assert_eq!(docs.len(), 1, "{}", path.display());
    docs.remove(0)
}

#[test]
fn the_containerfile_is_hadolint_clean_and_hadolint_is_live() {
    let dir = repo_root().join("ci/containers");
    let out = tool("hadolint")
        .arg("--config")
        .arg(dir.join(".hadolint.yaml"))
        .arg(dir.join("Containerfile"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    // The same settings fail a Containerfile with the usual mistakes.
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(
        bad.path().join("Containerfile"),
        "FROM debian\nRUN apt-get update && apt-get install -y clang\nUSER root\n",
    )
    .unwrap();
    let out = tool("hadolint")
        .arg("--config")
        .arg(dir.join(".hadolint.yaml"))
        .arg(bad.path().join("Containerfile"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "hadolint passed a bad Containerfile: {}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DL3015") && text.contains("DL3009"), "{text}");
}

fn workflows() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(repo_root().join(".github/workflows")).unwrap().flatten().map(|e| e.path()).collect();
    files.sort();
    files
}

#[test]
fn workflows_match_the_github_workflow_schema() {
    let files = workflows();
    assert!(files.len() >= 2, "{files:?}");
    let out =
        tool("check-jsonschema").args(["--builtin-schema", "vendor.github-workflows"]).args(&files).output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    // The schema is live: a job without runs-on, and a matrix that is a
    // string, are refused.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yml");
    std::fs::write(&bad, "on: push\njobs:\n  a:\n    steps:\n      - run: true\n  b:\n    runs-on: x\n    strategy:\n      matrix: 3\n    steps:\n      - run: true\n").unwrap();
    let out =
        tool("check-jsonschema").args(["--builtin-schema", "vendor.github-workflows"]).arg(&bad).output().unwrap();
    assert!(!out.status.success(), "{}", show(&out));
}

#[test]
fn the_kernel_matrix_workflow_discovers_shards_publishes_and_gates() {
    let w = yaml(&repo_root().join(".github/workflows/kernel-matrix.yml"));
    // YAML 1.1 (PyYAML) reads the key `on` as the boolean true.
    let call = &w.get("on").or_else(|| w.get("true")).expect("an on: key")["workflow_call"];
    for input in ["image", "registry", "shards"] {
        assert!(call["inputs"][input].is_object(), "input {input} missing");
    }
    assert_eq!(call["secrets"]["token"]["required"], true);
    let jobs = &w["jobs"];
    let discover = serde_json::to_string(&jobs["discover"]).unwrap();
    assert!(discover.contains("bpfarm-builder discover --output discovered.toml"), "{discover}");
    // N shards from the discover job's output, none cancelling the others.
    let build = &jobs["build"];
    assert_eq!(build["needs"], "discover");
    assert_eq!(build["strategy"]["matrix"]["shard"], "${{ fromJSON(needs.discover.outputs.shards) }}");
    assert_eq!(build["strategy"]["fail-fast"], false);
    let step = build["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["run"].as_str().is_some_and(|r| r.contains("bpfarm-builder build")))
        .unwrap();
    let run = step["run"].as_str().unwrap();
    for part in ["--matrix discovered.toml", "--shard \"$SHARD\"", "--publish \"$REGISTRY\"", "--report"] {
        assert!(run.contains(part), "{part} not in {run}");
    }
    assert_eq!(step["env"]["SHARD"], "${{ matrix.shard }}/${{ inputs.shards }}");
    // The token comes from a secret, never from an input.
    assert_eq!(step["env"]["BPFARM_TOKEN"], "${{ secrets.token }}");
    // The gate runs after every shard, even failed ones, and fails on a gap.
    let gate = &jobs["coverage"];
    assert_eq!(gate["needs"], serde_json::json!(["discover", "build"]));
    assert!(gate["if"].as_str().unwrap().contains("always()"));
    assert!(serde_json::to_string(gate).unwrap().contains("ci/coverage-gate --matrix discovered.toml"));
    // The project's own CI runs exactly .ci/run, with CI=true.
    let ci = yaml(&repo_root().join(".github/workflows/ci.yml"));
    assert_eq!(ci["jobs"]["test"]["env"]["CI"], "true");
    assert!(serde_json::to_string(&ci).unwrap().contains("bash .ci/run"));
}

fn k8s_files() -> Vec<PathBuf> {
    let k = repo_root().join("ci/k8s");
    let kustomization = yaml(&k.join("kustomization.yaml"));
    kustomization["resources"].as_array().unwrap().iter().map(|r| k.join(r.as_str().unwrap())).collect()
}

/// Every resource of the kustomization, by kind.
fn k8s(kind: &str) -> Value {
    k8s_files()
        .iter()
        .flat_map(|f| yaml_docs(f))
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in ci/k8s"))
}

#[test]
fn kubernetes_manifests_validate_strictly() {
    let files = k8s_files();
    assert_eq!(files.len(), 4, "{files:?}");
    let out = tool("kubernetes-validate").arg("--strict").args(&files).output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    // --strict is live: an unknown field is refused.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: x\nspec:\n  completionMode: Indexed\n  shards: 3\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n        - name: a\n          image: b\n").unwrap();
    let out = tool("kubernetes-validate").arg("--strict").arg(&bad).output().unwrap();
    assert!(!out.status.success(), "{}", show(&out));

    // kustomize's rendering, when this machine has it (kubectl embeds
    // kustomize; it is not a Debian or PyPI package, so not every machine
    // has it: then the files above were validated one by one).
    let kubectl =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).find(|d| d.join("kubectl").is_file());
    let Some(_) = kubectl else {
        eprintln!(
            "NOTE kubernetes_manifests_validate_strictly: no kubectl here: each manifest validated, the kustomize rendering not"
        );
        return;
    };
    let rendered = Command::new("kubectl").args(["kustomize"]).arg(repo_root().join("ci/k8s")).output().unwrap();
    assert!(rendered.status.success(), "{}", show(&rendered));
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &rendered.stdout).unwrap();
    let out = tool("kubernetes-validate").arg("--strict").arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let docs = yaml_docs(&file);
    assert_eq!(docs.len(), 6);
    assert!(docs.iter().all(|d| d["metadata"]["namespace"] == "bpfarm" || d["kind"] == "Namespace"));
}

#[test]
fn kubernetes_roles_are_as_documented() {
    // The agent: every node, host PID namespace, capabilities not
    // --privileged, never a compiler, the install path shared with the host.
    let ds = k8s("DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(args.windows(2).any(|w| w == ["--build-policy", "never"]), "{args:?}");
    assert_eq!(c["securityContext"]["capabilities"]["add"], serde_json::json!(["BPF", "PERFMON", "SYS_RESOURCE"]));
    assert_eq!(c["securityContext"]["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(c["securityContext"]["privileged"].is_null());
    let tracee = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "tracee").unwrap();
    assert_eq!(tracee["hostPath"]["path"], "/tmp/tracee");
    assert_eq!(c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    // The registry: probes on /healthz, data on a claim, non-root.
    let sts = k8s("StatefulSet");
    let rc = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(rc["readinessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(rc["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"], "data");
    assert_eq!(sts["spec"]["template"]["spec"]["securityContext"]["runAsUser"], 10001);
    // The build: Indexed, as many shards as completions.
    let job = k8s("Job");
    assert_eq!(job["spec"]["completionMode"], "Indexed");
    let env = &job["spec"]["template"]["spec"]["containers"][0]["env"];
    let shards = env.as_array().unwrap().iter().find(|e| e["name"] == "SHARDS").unwrap()["value"].as_str().unwrap();
    assert_eq!(job["spec"]["completions"].to_string(), shards);
    assert_eq!(job["spec"]["parallelism"].to_string(), shards);
}

/// A registry process, a push token, and the builder's report for the
/// running kernel published to it.
fn published(dir: &Path) -> (bpfarm_tests::Registry, PathBuf) {
    let data = dir.join("registry");
    let push = token(&data, "ci", "push");
    let reg = serve(&data);
    let report = dir.join("report.json");
    let out = Command::new(bin("bpfarm-builder"))
        .args(["build", "--running-kernel", "--no-progress", "--publish", &reg.url, "--token", &push, "--cache-dir"])
        .arg(dir.join("cache"))
        .arg("--out")
        .arg(dir.join("out"))
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    (reg, report)
}

fn gate(matrix: &Path, registry: &str, reports: &[&Path]) -> Output {
    Command::new(repo_root().join("ci/coverage-gate"))
        .arg("--matrix")
        .arg(matrix)
        .args(["--registry", registry])
        .args(reports)
        .env_remove("BPFARM_TOKEN")
        .env_remove("BPFARM_READ_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn the_coverage_gate_fails_when_a_discovered_kernel_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let (reg, report) = published(dir.path());
    let release = running_release();
    let matrix = dir.path().join("m.toml");
    std::fs::write(&matrix, format!("[[kernel]]\nrelease = \"{release}\"\narch = \"amd64\"\n")).unwrap();
    let out = gate(&matrix, &reg.url, &[&report]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1/1 kernels covered (v0.1.0"), "{}", show(&out));

    // A discovered kernel no shard built: exit 1, named.
    std::fs::write(
        &matrix,
        format!("[[kernel]]\nrelease = \"{release}\"\narch = \"amd64\"\n\n[[kernel]]\nrelease = \"6.1.0-56-amd64\"\narch = \"amd64\"\n"),
    )
    .unwrap();
    let out = gate(&matrix, &reg.url, &[&report]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("missing: 6.1.0-56-amd64 x86_64: no shard built it"),
        "{}",
        show(&out)
    );

    // Built but not in the registry (another registry, empty): exit 1.
    std::fs::write(&matrix, format!("[[kernel]]\nrelease = \"{release}\"\narch = \"amd64\"\n")).unwrap();
    let empty = serve(&dir.path().join("empty"));
    let out = gate(&matrix, &empty.url, &[&report]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("missing: {release} x86_64: not in")),
        "{}",
        show(&out)
    );

    // A registry that cannot be asked is never a pass: exit 2.
    let url = empty.url.clone();
    drop(empty);
    let out = gate(&matrix, &url, &[&report]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    // Nor is a matrix that lists nothing, or no reports.
    std::fs::write(&matrix, "").unwrap();
    assert_eq!(gate(&matrix, &reg.url, &[&report]).status.code(), Some(2));
    std::fs::write(&matrix, format!("[[kernel]]\nrelease = \"{release}\"\narch = \"amd64\"\n")).unwrap();
    assert_eq!(gate(&matrix, &reg.url, &[]).status.code(), Some(2));
}

#[test]
fn the_indexed_jobs_command_builds_disjoint_shards_that_cover_the_matrix() {
    if !containers("the_indexed_jobs_command_builds_disjoint_shards_that_cover_the_matrix") {
        return;
    }
    // The Job's own command and environment, run as Kubernetes would run
    // its pods: one per completion index, as uid 10001 with a read-only root.
    let job = k8s("Job");
    let c = &job["spec"]["template"]["spec"]["containers"][0];
    let command: Vec<String> =
        c["command"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    let script = c["args"][0].as_str().unwrap().to_owned();
    let image = images_builder();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("registry");
    let push = token(&data, "ci", "push");
    let reg = serve(&data);
    let shards = 2;
    let mut reports = Vec::new();
    for index in 0..shards {
        let pod = dir.path().join(format!("pod-{index}"));
        for d in ["tmp", "cache"] {
            std::fs::create_dir_all(pod.join(d)).unwrap();
            let status = Command::new("chown").arg("10001:10001").arg(pod.join(d)).status().unwrap();
            assert!(status.success());
        }
        let out = podman()
            .args(["run", "--rm", "--network=host", "--user=10001:10001", "--read-only", "--cap-drop=all"])
            .arg(format!("--volume={}:/tmp", pod.join("tmp").display()))
            .arg(format!("--volume={}:/var/cache/bpfarm", pod.join("cache").display()))
            .arg(format!("--volume={}:/var/cache/bpfarm/debs:ro", bpfarm_tests::fixture_debs().display()))
            .args(["--env", &format!("JOB_COMPLETION_INDEX={index}"), "--env", &format!("SHARDS={shards}")])
            .args(["--env", "MATRIX=/usr/share/bpfarm/kernels/default.toml", "--env", &format!("REGISTRY={}", reg.url)])
            .args(["--env", "BPFARM_CACHE=/var/cache/bpfarm", "--env", &format!("BPFARM_TOKEN={push}")])
            .arg(format!("--entrypoint={}", command[0]))
            .arg(&image)
            .args(&command[1..])
            .arg(&script)
            .output()
            .unwrap();
        assert!(out.status.success(), "pod {index}: {}", show(&out));
        reports.push(pod.join("tmp/out/report.json"));
    }
    let mut seen = Vec::new();
    for (i, r) in reports.iter().enumerate() {
        let v: Value = serde_json::from_slice(&std::fs::read(r).unwrap()).unwrap();
        assert_eq!(v["shard"], format!("{}/{shards}", i + 1), "{v}");
        for k in v["kernels"].as_array().unwrap() {
            seen.push((k["kernel"].as_str().unwrap().to_owned(), k["arch"].as_str().unwrap().to_owned()));
        }
    }
    seen.sort();
    let before = seen.len();
    seen.dedup();
    assert_eq!(before, seen.len(), "a kernel was built by two shards: {seen:?}");
    assert_eq!(seen.len(), 4, "{seen:?}");
    // The gate agrees: every kernel of the matrix is in the registry.
    let r: Vec<&Path> = reports.iter().map(PathBuf::as_path).collect();
    let out = gate(&repo_root().join("kernels/default.toml"), &reg.url, &r);
    assert!(out.status.success(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("4/4 kernels covered"), "{}", show(&out));
}

/// The builder image, built by ci/images (cached layers: quick when
/// tests/tests/containers.rs already built it in this run).
fn images_builder() -> String {
    let out = Command::new(repo_root().join("ci/images")).args(["--profile", "debug"]).output().unwrap();
    assert!(out.status.success(), "ci/images failed: {}", show(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("image builder ").and_then(|r| r.split_whitespace().next()).map(str::to_owned))
        .unwrap_or_else(|| panic!("no builder image: {}", show(&out)))
}
