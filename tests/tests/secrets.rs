//! A kernel header that includes a host file (`#include "/tmp/<secret>/token"`)
//! must get "permission denied" or "file not found" from the sandboxed
//! compiler, and the token's content must reach no log, report, cache file,
//! output folder or registry response, whichever sandbox is in force. The
//! same build without a sandbox shows that the test can fail (clang prints
//! the content), and that even then the failure a registry publishes keeps
//! only errors located in the kernel's tree.

use std::path::Path;
use std::process::{Command, Output};

use bpfarm_tests::{FakeKernel, bin, build_with_report, files_containing, python_get, serve, token};

fn has(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn build(dir: &Path, debs: &Path, url: &str, push: &str, sandbox: &[&str]) -> (Output, serde_json::Value) {
    let mut c = Command::new(bin("bpfarm-builder"));
    c.args(["-v", "build", "--no-progress", "--headers"])
        .arg(debs)
        .args(sandbox)
        .args(["--publish", url, "--token", push, "--cache-dir"])
        .arg(dir.join("cache"))
        .arg("--out")
        .arg(dir.join("out"))
        .env_remove("BPFARM_CACHE");
    build_with_report(&mut c, dir)
}

#[test]
fn a_header_cannot_read_a_host_file_nor_publish_it() {
    let dir = tempfile::tempdir().unwrap();
    // The secret: a folder of its own in /tmp, as the reproduction.
    let secret = tempfile::Builder::new().prefix("bpfarm-secret-").tempdir_in("/tmp").unwrap();
    let marker =
        format!("MARKER_{}", bpfarm_object::Digest::of_bytes(secret.path().as_os_str().as_encoded_bytes()).hex());
    std::fs::write(secret.path().join("token"), format!("{marker} is_the_secret;\n")).unwrap();
    let include = format!("#include \"{}/token\"\n", secret.path().display());
    let debs = dir.path().join("debs");
    std::fs::create_dir(&debs).unwrap();
    let k = FakeKernel { kconfig: include.as_bytes(), ..FakeKernel::new("6.1.0-99") };
    k.write(&debs);

    let data = dir.path().join("registry");
    let push = token(&data, "ci", "push");
    let reg = serve(&data);

    for (name, sandbox, says) in
        [("landlock", "landlock", "Landlock"), ("namespace", "mount-namespace", "mount namespace")]
    {
        let run = dir.path().join(name);
        let (out, r) = build(&run, &debs, &reg.url, &push, &["--sandbox", sandbox]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("compiler sandbox: {says}")), "{name}: {stderr}");
        assert_eq!(r["sandbox"], sandbox);
        let row = &r["kernels"][0];
        assert_eq!(row["kernel"], k.release());
        let error = row["error"].as_str().unwrap();
        assert!(
            error.contains("token") && (error.contains("Permission denied") || error.contains("file not found")),
            "{name}: {error}"
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("1 build failures reported"), "{name}");
        // Nowhere: output, report, cache, output folder.
        assert!(!has(&out.stdout, &marker) && !has(&out.stderr, &marker), "{name}: the marker is in the log");
        assert_eq!(files_containing(&run, marker.as_bytes()), Vec::<std::path::PathBuf>::new(), "{name}");
    }

    // The control: without a sandbox clang reads the token and prints it...
    let open = dir.path().join("no-sandbox");
    let (out, r) = build(&open, &debs, &reg.url, &push, &["--no-sandbox"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("compiler sandbox: OFF"));
    assert!(has(r["kernels"][0]["error"].as_str().unwrap().as_bytes(), &marker), "the control did not leak");
    // ...but what it publishes keeps only errors located in the tree.
    let public = r["kernels"][0]["public_error"].as_str().unwrap();
    assert!(!has(public.as_bytes(), &marker), "{public}");

    // The registry's answers: the coverage page lists the failure, without
    // the token's content; nothing the registry stored holds it either.
    let page = python_get(&format!("{}/", reg.url));
    assert!(has(&page, &k.release()), "the failure is not on the coverage page");
    assert!(!has(&page, &marker), "the marker is on the coverage page");
    assert_eq!(files_containing(&data, marker.as_bytes()), Vec::<std::path::PathBuf>::new());
}
