//! The registry's coverage page, as headless Chromium shows it: objects the
//! builder published (present, with download links), a build that failed
//! (reported by the builder), cells nothing covers (missing), and the search.

use std::process::Command;

use bpfarm_object::Arch;
use bpfarm_tests::{bin, browser_dom, browser_screenshot, repo_root};

/// The `<tr>` of a kernel release in the serialized DOM.
fn row<'a>(dom: &'a str, release: &str) -> &'a str {
    let start = dom
        .find(&format!("<tr data-release=\"{release}\""))
        .unwrap_or_else(|| panic!("no row for {release} in:\n{dom}"));
    let end = dom[start..].find("</tr>").unwrap() + start;
    &dom[start..end]
}

#[test]
fn coverage_page_shows_present_failed_missing_and_searches() {
    let dir = tempfile::tempdir().unwrap();
    // A real object for the running kernel, published by the builder.
    let published = bpfarm_tests::registry_with_running_object(dir.path());
    let (reg, push) = (&published.registry, published.push_token.clone());
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap().trim().to_owned();

    // A failed build of another version, reported by the builder.
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    for e in std::fs::read_dir(repo_root().join("bpf")).unwrap().flatten() {
        std::fs::copy(e.path(), broken.join(e.file_name())).unwrap();
    }
    std::fs::write(broken.join("tracer.bpf.c"), "#error this tracer does not build\n").unwrap();
    let out = Command::new(bin("bpfarm-builder"))
        .args(["build", "--running-kernel", "--no-progress", "--version", "v0.0.9", "--program"])
        .arg(&broken)
        .args(["--publish", &reg.url, "--token", &push, "--cache-dir"])
        .arg(dir.path().join("cache"))
        .arg("--out")
        .arg(dir.path().join("out-broken"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 build failures reported"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // An x86_64-only object for a Debian kernel: its arm64 cell is missing.
    let bytes = b"a stand-in object for a kernel this machine does not run".to_vec();
    let meta = bpfarm_tests::sample_metadata("6.1.0-56-amd64", Arch::X86_64, &bytes);
    let client = bpfarm_tests::client(&reg.url, Some(push.clone()));
    client.publish(&meta, &bytes, false).unwrap();
    let running = client.lookup(&release, "x86_64", "v0.1.0").unwrap().unwrap();

    let dom = browser_dom(&format!("{}/", reg.url));
    assert!(dom.contains("2 present") && dom.contains("1 failed"), "counts: {dom}");
    // Running kernel: present for v0.1.0 x86_64 (a download link to its
    // blob), failed for v0.0.9 x86_64, missing for both aarch64 cells.
    let mine = row(&dom, &release);
    assert!(mine.contains(&format!("href=\"/v1/blobs/{}\"", running.digest)), "{mine}");
    assert!(mine.contains(&format!("download=\"{}\"", running.file_name)), "{mine}");
    assert!(mine.contains("class=\"failed\"") && mine.contains("this tracer does not build"), "{mine}");
    assert_eq!(mine.matches("class=\"missing\"").count(), 2, "{mine}");
    let debian = row(&dom, "6.1.0-56-amd64");
    assert_eq!(debian.matches("class=\"present\"").count(), 1, "{debian}");
    assert_eq!(debian.matches("class=\"missing\"").count(), 3, "{debian}");
    assert!(!debian.contains(" hidden"), "{debian}");

    // Search: only matching releases stay shown.
    let dom = browser_dom(&format!("{}/?q=6.1.0-56", reg.url));
    assert!(!row(&dom, "6.1.0-56-amd64").contains("hidden"));
    assert!(row(&dom, &release).contains("hidden"), "{}", row(&dom, &release));
    assert!(dom.contains("1 of 2 releases"));

    // The download link serves the object's bytes.
    assert_eq!(
        client.download(&running.digest).unwrap(),
        std::fs::read(dir.path().join("out/x86_64").join(&running.file_name)).unwrap()
    );

    let png = dir.path().join("coverage.png");
    browser_screenshot(&format!("{}/", reg.url), &png, 1000, 420);
    if let Ok(keep) = std::env::var("BPFARM_KEEP_SCREENSHOT") {
        std::fs::copy(&png, keep).unwrap();
    }
}
