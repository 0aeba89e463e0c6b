//! The registry's coverage page, as headless Chromium shows it: objects the
//! builder published (present, with download links), a build that failed
//! (reported by the builder), cells nothing covers (missing), and the search.

use std::process::Command;

use bpfarm_object::Arch;
use bpfarm_tests::{bin, browser_dom, browser_screenshot, repo_root, running_release};

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
    let release = running_release();

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

    // An x86_64-only object for a Debian amd64 kernel: its aarch64 cells
    // cannot exist, so they are not missing.
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
    assert_eq!(debian.matches("class=\"missing\"").count(), 1, "{debian}");
    assert_eq!(debian.matches("class=\"none\"").count(), 2, "{debian}");
    // Running kernel: 2 aarch64 cells; Debian's: v0.0.9 on x86_64.
    assert!(dom.contains("3 missing"), "counts: {dom}");
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

/// `build --matrix --publish` uploads the matrix; `GET /v1/coverage` and the
/// page count "missing" against it, kernels nothing was built for included,
/// and never count an `-amd64` release on aarch64.
#[test]
fn coverage_counts_missing_against_the_published_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let reg = bpfarm_tests::serve(&data);
    let push = bpfarm_tests::token(&data, "ci", "push");
    let read = bpfarm_tests::token(&data, "reader", "read");
    let matrix = repo_root().join("kernels/default.toml");
    // One kernel of the four built; the whole matrix uploaded.
    let out = Command::new(bin("bpfarm-builder"))
        .args(["build", "--no-progress", "--matrix"])
        .arg(&matrix)
        .args(["--select", r"^6\.1\.0-56-amd64$", "--package-cache"])
        .arg(bpfarm_tests::fixture_debs())
        .args(["--publish", &reg.url, "--token", &push, "--cache-dir"])
        .arg(dir.path().join("cache"))
        .arg("--out")
        .arg(dir.path().join("out"))
        .env_remove("BPFARM_CACHE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("matrix default: 4 kernels published for coverage"), "{stdout}");

    let client = reqwest::blocking::Client::new();
    let get = |path: &str, token: Option<&str>| {
        let mut r = client.get(format!("{}{path}", reg.url));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().unwrap()
    };
    let r = get("/v1/coverage?matrix=default", None);
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["matrix"], "default");
    assert_eq!(v["counts"], serde_json::json!({ "present": 1, "failed": 0, "missing": 3 }), "{v:#}");
    assert_eq!(v["by_arch"]["aarch64"]["missing"], 1, "{v:#}");
    let kernels = v["kernels"].as_array().unwrap();
    assert_eq!(kernels.len(), 4, "{v:#}");
    assert!(kernels.iter().all(|k| {
        Arch::from_any(k["arch"].as_str().unwrap()).is_some_and(|a| a.can_run(k["release"].as_str().unwrap()))
    }));
    let built = kernels.iter().find(|k| k["release"] == "6.1.0-56-amd64").unwrap();
    assert_eq!(built["versions"]["v0.1.0"], "present");
    // Against the releases seen only: the one built, and nothing missing.
    let v: serde_json::Value = get("/v1/coverage", None).json().unwrap();
    assert_eq!(v["counts"], serde_json::json!({ "present": 1, "failed": 0, "missing": 0 }), "{v:#}");
    // One version only; an unknown matrix; a bad name.
    let v: serde_json::Value = get("/v1/coverage?matrix=default&version=v9.9.9", None).json().unwrap();
    assert_eq!(v["counts"]["missing"], 4);
    assert_eq!(get("/v1/coverage?matrix=nonesuch", None).status(), 404);
    assert_eq!(get("/v1/coverage?matrix=..%2Fx", None).status(), 400);
    assert_eq!(
        get("/v1/matrices/default", None).json::<serde_json::Value>().unwrap()["kernels"].as_array().unwrap().len(),
        4
    );

    // The page, against the matrix: rows for the kernels never built.
    let dom = browser_dom(&format!("{}/?matrix=default", reg.url));
    assert!(dom.contains("1 present") && dom.contains("0 failed") && dom.contains("3 missing"), "{dom}");
    assert!(dom.contains("against matrix"), "{dom}");
    let arm = row(&dom, "6.12.117+deb12-arm64");
    assert_eq!(arm.matches("class=\"missing\"").count(), 1, "{arm}");
    assert_eq!(arm.matches("class=\"none\"").count(), 1, "{arm}");

    // Uploads: push token only, validated, size-capped.
    let put = |name: &str, token: &str, body: Vec<u8>| {
        client
            .put(format!("{}/v1/matrices/{name}", reg.url))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap()
    };
    let one = |release: &str, arch: &str| {
        serde_json::json!({ "kernels": [{ "release": release, "arch": arch }] }).to_string().into_bytes()
    };
    assert_eq!(put("x", &read, one("6.1.0-56-amd64", "x86_64")).status(), 403);
    let r = put("x", &push, one("6.1.0-56-amd64", "aarch64"));
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("cannot run on aarch64"));
    assert_eq!(put("x", &push, one("../../etc", "x86_64")).status(), 400);
    assert_eq!(put("x", &push, b"{\"kernels\": 1}".to_vec()).status(), 400);
    assert_eq!(put(".x", &push, one("6.1.0-56-amd64", "x86_64")).status(), 400);
    // Oversized: refused from its Content-Length, before the body is read.
    // The registry answers 413 and closes, so the client may see that
    // answer or, still writing, a broken pipe; either way nothing is stored
    // (checked next).
    let oversized = client
        .put(format!("{}/v1/matrices/x", reg.url))
        .bearer_auth(&push)
        .header("content-type", "application/json")
        .body(vec![b' '; 9 << 20])
        .send();
    match oversized {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => {
            assert!(format!("{e:?}").contains("BrokenPipe") || format!("{e:?}").contains("ConnectionReset"), "{e:?}")
        }
    }
    assert_eq!(get("/v1/coverage?matrix=x", None).status(), 404, "a refused upload stored nothing");
    assert_eq!(put("x", &push, one("6.1.0-56-amd64", "x86_64")).status(), 201);
    let v: serde_json::Value = get("/v1/coverage?matrix=x", None).json().unwrap();
    assert_eq!(v["counts"], serde_json::json!({ "present": 1, "failed": 0, "missing": 0 }), "{v:#}");
}

/// Failures' messages are pushers' text, up to 16 KiB each; the JSON
/// report counts failures and never shows them, so an anonymous
/// `GET /v1/coverage` does not read them: 3,000 failures of 16 KiB (48 MB
/// of messages) raise the registry's peak RSS by far less than that. And
/// without `?version=` it counts the 12 newest versions.
#[test]
fn the_json_report_counts_failures_without_reading_their_messages() {
    const FAILURES: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    drop(bpfarm_tests::serve(&data)); // creates the schema
    let o = Command::new("sqlite3")
        .arg(data.join("index.sqlite"))
        .arg(format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {FAILURES}) \
             INSERT INTO failures SELECT '6.1.0-' || i || '-amd64', 'x86_64', 'v0.1.' || (i % 15), hex(randomblob(8192)), \
             '2026-01-01T00:00:00Z' FROM n;"
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = bpfarm_tests::serve(&data);
    // Warm the HTTP path (a matrix that does not exist answers 404 before
    // the coverage query), then measure one report.
    let r404 = reqwest::blocking::get(format!("{}/v1/coverage?matrix=none", r.url)).unwrap();
    assert_eq!(r404.status().as_u16(), 404);
    let before = bpfarm_tests::peak_rss(r.child.id());
    let report: serde_json::Value = reqwest::blocking::get(format!("{}/v1/coverage?limit=1", r.url))
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .unwrap();
    let after = bpfarm_tests::peak_rss(r.child.id());
    // 15 versions (v0.1.0 .. v0.1.14): the newest 12 are counted, every
    // kernel is a row, each row has 12 cells.
    assert_eq!(report["versions_total"], 15);
    let versions: Vec<&str> = report["versions"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let mut want: Vec<String> = (3..15).map(|n| format!("v0.1.{n}")).collect();
    want.sort();
    assert_eq!(versions, want);
    assert_eq!(report["counts"]["failed"], FAILURES / 15 * 12, "{}", report["counts"]);
    assert_eq!(report["total_kernels"], FAILURES);
    assert_eq!(report["kernels"][0]["versions"].as_object().unwrap().len(), 12, "{}", report["kernels"][0]);
    let grew = after.saturating_sub(before);
    eprintln!(
        "peak RSS {} MiB -> {} MiB (+{} KiB) for {FAILURES} failures of 16 KiB",
        before >> 20,
        after >> 20,
        grew >> 10
    );
    assert!(grew < 16 << 20, "the report read the failures' messages: peak RSS grew {} MiB", grew >> 20);
}

/// Rows straight into the index (sqlite3, before the registry starts):
/// `n` failures of `v0.1.(i % 15)`, each on its own `-amd64` release,
/// with `message` (an SQL expression over `i`) as the pusher's text.
fn failures_in_index(data: &std::path::Path, n: usize, message: &str) {
    drop(bpfarm_tests::serve(data)); // creates the schema
    let o = Command::new("sqlite3")
        .arg(data.join("index.sqlite"))
        .arg(format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) \
             INSERT INTO failures SELECT '6.1.0-' || i || '-amd64', 'x86_64', 'v0.1.' || (i % 15), {message}, \
             '2026-01-01T00:00:00Z' FROM n;"
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The page shows a failure's first line as a cell's title, so the
/// registry reads no more of it (in SQL): 3,000 failures of 16 KiB (48 MB
/// of messages) behind a short first line raise the peak RSS of a page
/// render by far less than that. A first line is cut at 240 characters;
/// a `\r\n` line end is not part of it.
#[test]
fn the_page_reads_only_the_first_line_of_each_failure() {
    const FAILURES: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    failures_in_index(
        &data,
        FAILURES,
        "CASE WHEN i = 1 THEN 'error: ' || replace(hex(zeroblob(200)), '0', 'long') || char(10) || 'TAILMARK' \
              WHEN i = 2 THEN 'error: crlf' || char(13) || char(10) || 'SECOND LINE' \
              ELSE 'error: first line ' || i || char(10) || hex(randomblob(8192)) END",
    );
    let r = bpfarm_tests::serve(&data);
    let warm = reqwest::blocking::get(format!("{}/?matrix=none", r.url)).unwrap();
    assert_eq!(warm.status().as_u16(), 404);
    let before = bpfarm_tests::peak_rss(r.child.id());
    let html = reqwest::blocking::get(format!("{}/", r.url)).unwrap().error_for_status().unwrap();
    let html = html.text().unwrap();
    let after = bpfarm_tests::peak_rss(r.child.id());
    // 15 versions, the 12 newest counted (as `/v1/coverage` counts).
    assert!(html.contains(&format!("{} failed", FAILURES / 15 * 12)), "counts");
    assert!(html.contains("The 3 older versions are not"), "the page says what it leaves out");
    assert!(html.contains("title=\"error: first line 3\">failed</td>"), "the first line is the title");
    let grew = after.saturating_sub(before);
    eprintln!(
        "page: peak RSS {} MiB -> {} MiB (+{} KiB) for {FAILURES} failures of 16 KiB",
        before >> 20,
        after >> 20,
        grew >> 10
    );
    assert!(grew < 16 << 20, "the page read the failures' messages: peak RSS grew {} MiB", grew >> 20);
    // The two odd ones, on the versions they failed for (1 % 15, 2 % 15).
    let html = reqwest::blocking::get(format!("{}/?version=v0.1.1&q=6.1.0-1-amd64", r.url)).unwrap().text().unwrap();
    let long = format!("error: {}", "long".repeat(400));
    let title = format!("title=\"{}\">failed", &long[..240]);
    assert!(html.contains(&title), "a long first line is cut at 240 characters");
    assert!(!html.contains("TAILMARK"), "only the first line");
    let html = reqwest::blocking::get(format!("{}/?version=v0.1.2&q=6.1.0-2-amd64", r.url)).unwrap().text().unwrap();
    assert!(html.contains("title=\"error: crlf\">failed"), "no \\r in the title");
    assert!(!html.contains("SECOND LINE"));
}

/// `bpfarm_coverage_abandoned_total` from `/metrics`.
fn abandoned(url: &str) -> u64 {
    let text = reqwest::blocking::get(format!("{url}/metrics")).unwrap().error_for_status().unwrap().text().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("bpfarm_coverage_abandoned_total "))
        .unwrap_or_else(|| panic!("no bpfarm_coverage_abandoned_total in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// A client that asks for the page (or the JSON report) of a large index
/// and leaves before the answer: the counting and rendering stop (the
/// `bpfarm_coverage_abandoned` counter says so) instead of running on for
/// nobody. When to leave is found, not assumed: a full request is timed
/// first, then clients leave at fractions of that until one leaves while
/// the work runs (before, there is no work to stop; after, nothing left to
/// stop). The registry keeps a count while the index is unchanged, so
/// another process changes the index before each request: each counts
/// afresh. Nothing here asserts a time.
#[test]
fn a_coverage_request_stops_when_its_client_leaves() {
    use std::io::Write;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    failures_in_index(&data, 60_000, "'error: x'");
    let r = bpfarm_tests::serve(&data);
    let host = r.url.trim_start_matches("http://").to_owned();
    let mut changes = 0;
    let mut change_index = || {
        changes += 1;
        let o = Command::new("sqlite3")
            .arg(data.join("index.sqlite"))
            .arg(format!("UPDATE failures SET reported_at = 'change {changes}' WHERE rowid = 1;"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    for path in ["/", "/v1/coverage?limit=1"] {
        change_index();
        let start = Instant::now();
        let full = reqwest::blocking::get(format!("{}{path}", r.url)).unwrap();
        assert!(full.status().is_success(), "{path}: {}", full.status());
        let took = start.elapsed();
        let before = abandoned(&r.url);
        let mut stopped = false;
        for fraction in [0.5, 0.7, 0.3, 0.85, 0.6, 0.4, 0.2, 0.9, 0.1, 0.95] {
            change_index();
            let mut c = std::net::TcpStream::connect(&host).unwrap();
            write!(c, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
            std::thread::sleep(took.mul_f64(fraction));
            drop(c);
            // Let the server see the close and the work reach a check.
            std::thread::sleep(took.min(Duration::from_secs(2)));
            if abandoned(&r.url) > before {
                stopped = true;
                break;
            }
        }
        assert!(stopped, "{path}: no client that left stopped its work (a full request took {took:?})");
        // The registry still answers, in full.
        let again = reqwest::blocking::get(format!("{}{path}", r.url)).unwrap();
        assert!(again.status().is_success());
    }
}
