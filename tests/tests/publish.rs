//! End to end across binaries: the builder builds for the running kernel and
//! publishes to a real `bpfarm-registry serve` on loopback; the registry
//! then serves the same bytes through its API and its static layout.

use std::path::Path;
use std::process::Command;

use bpfarm_object::Digest;
use bpfarm_tests::{
    bin, build_with_report, python_get, running_kernel_build, running_object_name, running_release, serve, token,
};

fn build_and_publish(dir: &Path, url: &str, token: &str) -> (std::process::Output, serde_json::Value) {
    let mut c = running_kernel_build(&dir.join("cache"), &dir.join("out"));
    build_with_report(c.args(["--publish", url]).env("BPFARM_TOKEN", token), dir)
}

#[test]
fn builder_publishes_to_a_real_registry_and_skips_what_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("registry");
    // The token is created before the server starts, through the same data folder.
    let push = token(&data, "ci", "push");
    let read = token(&data, "fleet", "read");
    let reg = serve(&data);

    let (out, r) = build_and_publish(dir.path(), &reg.url, &push);
    assert!(out.status.success());
    assert_eq!(r["publish"]["published"], 1, "{r:#}");
    assert_eq!(r["kernels"][0]["status"], "built");

    let (out, r) = build_and_publish(dir.path(), &reg.url, &push);
    assert!(out.status.success());
    assert_eq!((r["publish"]["published"].as_u64(), r["publish"]["skipped"].as_u64()), (Some(0), Some(1)));

    // The registry serves exactly the bytes the builder wrote.
    let release = running_release();
    let name = running_object_name();
    let local = std::fs::read(dir.path().join("out/x86_64").join(&name)).unwrap();
    let client = bpfarm_tests::client(&reg.url, None);
    let meta = client.lookup(&release, "x86_64", "v0.1.0").unwrap().expect("published object");
    assert_eq!(meta.digest, Digest::of_bytes(&local));
    assert_eq!(client.download(&meta.digest).unwrap(), local);
    let via_static = python_get(&format!("{}/v0.1.0/x86_64/{name}", reg.url));
    assert_eq!(via_static, local);
    let sum = String::from_utf8(python_get(&format!("{}/v0.1.0/x86_64/{name}.sha256", reg.url))).unwrap();
    assert!(sum.starts_with(meta.digest.hex()));

    // The exported tree holds the same files the static layout serves.
    let tree = dir.path().join("tree");
    let out = Command::new(bin("bpfarm-registry"))
        .args(["export", "--arch", "amd64", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&tree)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("exported 1 objects"));
    let exported = tree.join("v0.1.0/x86_64");
    assert_eq!(std::fs::read(exported.join(&name)).unwrap(), local);
    assert_eq!(std::fs::read_to_string(exported.join(format!("{name}.sha256"))).unwrap(), sum);
    let exported_meta: bpfarm_object::ObjectMetadata =
        serde_json::from_slice(&std::fs::read(exported.join(format!("{name}.json"))).unwrap()).unwrap();
    assert_eq!(exported_meta, meta);
    let served_meta: bpfarm_object::ObjectMetadata =
        serde_json::from_slice(&python_get(&format!("{}/v0.1.0/x86_64/{name}.json", reg.url))).unwrap();
    assert_eq!(served_meta, meta);
    // A subset for another arch holds nothing.
    let out = Command::new(bin("bpfarm-registry"))
        .args(["export", "--arch", "arm64", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(dir.path().join("arm"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("exported 0 objects"));

    // Bytes the registry holds are skipped before any push, so a read token
    // is enough for an unchanged rebuild...
    let (out, r) = build_and_publish(dir.path(), &reg.url, &read);
    assert!(out.status.success(), "skipping needs no push rights");
    assert_eq!(r["publish"]["skipped"], 1);
    // ...but pushing a new object with it is refused: the builder says so and exits 1.
    let mut c = running_kernel_build(&dir.path().join("cache"), &dir.path().join("out2"));
    let (out, r) =
        build_with_report(c.args(["--version", "v9.0.0", "--publish", &reg.url, "--token", &read]), dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(r["publish"]["failed"], 1, "{r:#}");
    assert!(r["publish"]["results"][0]["message"].as_str().unwrap().contains("may read, not push"));
}
