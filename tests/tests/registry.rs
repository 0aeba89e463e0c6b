//! The registry process under abuse: killed with SIGKILL in the middle of
//! an upload, under concurrent load (500 downloads, 20 publishes), and a
//! hostile client on loopback — unauthenticated and oversized bodies,
//! slowloris connections past a 256-descriptor limit, SIGTERM with a
//! half-open connection, made-up methods against the metrics, racing
//! replaces against the two faces, a flipped byte for fsck, a planted
//! symlink for export — and its own TLS, reloaded on SIGHUP.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bpfarm_object::{Arch, Digest, ObjectMetadata};
use bpfarm_tests::{bin, peak_rss, serve, serve_with, spawn_registry, token};
use serde_json::Value;

fn meta(release: &str, bytes: &[u8]) -> ObjectMetadata {
    bpfarm_tests::sample_metadata(release, Arch::X86_64, bytes)
}

#[test]
fn kill_9_mid_upload_leaves_no_visible_partial_object() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let push = token(&data, "ci", "push");
    let mut reg = serve(&data);
    let big = vec![0x5au8; 8 << 20];
    let digest = Digest::of_bytes(&big);

    // Half a body, then SIGKILL while the server is writing it.
    let addr = reg.url.strip_prefix("http://").unwrap().to_owned();
    let mut sock = TcpStream::connect(&addr).unwrap();
    write!(
        sock,
        "PUT /v1/blobs/{digest} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {push}\r\nContent-Length: {}\r\n\r\n",
        big.len()
    )
    .unwrap();
    sock.write_all(&big[..4 << 20]).unwrap();
    sock.flush().unwrap();
    let tmp = data.join("blobs/tmp");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // Wait until the partial write is on disk (the state a crash must survive).
    while std::fs::read_dir(&tmp).unwrap().flatten().all(|e| e.metadata().map(|m| m.len()).unwrap_or(0) == 0) {
        assert!(std::time::Instant::now() < deadline, "the upload never reached the disk");
        std::thread::sleep(Duration::from_millis(20));
    }
    reg.child.kill().unwrap(); // SIGKILL
    reg.child.wait().unwrap();
    drop(sock);
    let blob = data.join("blobs/sha256").join(&digest.hex()[..2]).join(digest.hex());
    assert!(!blob.exists(), "a partial upload became visible");

    // A restart cleans the leftovers and still serves nothing under that digest.
    let reg2 = serve(&data);
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "restart left temp files");
    let client = bpfarm_tests::client(&reg2.url, Some(push.clone()));
    assert!(client.download(&digest).is_err());
    // And the store works: the whole object can be published now.
    let m = meta("6.1.0-56-amd64", &big);
    client.publish(&m, &big, false).unwrap();
    assert_eq!(client.download(&digest).unwrap().len(), big.len());
    let mut resp = String::new();
    let mut s = TcpStream::connect(reg2.url.strip_prefix("http://").unwrap()).unwrap();
    write!(s, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

#[test]
fn load_500_concurrent_downloads_and_20_concurrent_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let push = token(&data, "ci", "push");
    let reg = serve(&data);
    let url = Arc::new(reg.url.clone());
    // One object of a realistic size to download.
    let object: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let m = meta("6.12.117+deb12-amd64", &object);
    bpfarm_tests::client(&url, Some(push.clone())).publish(&m, &object, false).unwrap();

    let object = Arc::new(object);
    let mut handles = Vec::new();
    for i in 0..500 {
        let (url, object, digest) = (url.clone(), object.clone(), m.digest.clone());
        handles.push(std::thread::spawn(move || {
            let c = bpfarm_tests::client(&url, None);
            let got = c.download(&digest).map_err(|e| format!("download {i}: {e}"))?;
            if got != *object {
                return Err(format!("download {i}: wrong bytes"));
            }
            Ok(())
        }));
    }
    for i in 0..20 {
        let (url, push) = (url.clone(), push.clone());
        handles.push(std::thread::spawn(move || {
            let bytes = format!("object number {i}").repeat(1000).into_bytes();
            let m = meta(&format!("6.1.0-{}-amd64", 100 + i), &bytes);
            let c = bpfarm_tests::client(&url, Some(push));
            c.publish(&m, &bytes, false).map_err(|e| format!("publish {i}: {e}"))?;
            let back = c
                .lookup(&m.identity.kernel_release, "x86_64", "v0.1.0")
                .map_err(|e| e.to_string())?
                .ok_or("published object not found")?;
            if back.digest != m.digest || c.download(&m.digest).map_err(|e| e.to_string())? != bytes {
                return Err(format!("publish {i}: wrong digest back"));
            }
            Ok(())
        }));
    }
    let errors: Vec<String> = handles.into_iter().filter_map(|h| h.join().unwrap().err()).collect();
    assert!(errors.is_empty(), "{} errors: {:?}", errors.len(), &errors[..errors.len().min(5)]);
}

#[test]
fn serve_takes_its_settings_from_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let push = token(&data, "ci", "push");
    let config = dir.path().join("registry.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata = \"{}\"\nmax_object_bytes = 1000\nrequire_read_token = true\n",
            data.display()
        ),
    )
    .unwrap();
    let reg = serve_with(&["--config", config.to_str().unwrap()]);
    let client = bpfarm_tests::client(&reg.url, Some(push.clone()));
    let big = vec![1u8; 1001];
    let e = client.publish(&meta("6.1.0-56-amd64", &big), &big, false).unwrap_err();
    assert_eq!(e.status(), Some(413), "{e}");
    let small = vec![1u8; 1000];
    client.publish(&meta("6.1.0-56-amd64", &small), &small, false).unwrap();
    // require_read_token from the file: anonymous reads are refused.
    let anonymous = bpfarm_tests::client(&reg.url, None);
    assert_eq!(anonymous.lookup("6.1.0-56-amd64", "x86_64", "v0.1.0").unwrap_err().status(), Some(401));

    // A flag wins over the file.
    drop(reg);
    let reg = serve_with(&["--config", config.to_str().unwrap(), "--require-read-token", "false"]);
    let anonymous = bpfarm_tests::client(&reg.url, None);
    assert!(anonymous.lookup("6.1.0-56-amd64", "x86_64", "v0.1.0").unwrap().is_some());

    // A typo in the file is an error that names it.
    std::fs::write(&config, "lisen = \"x\"\n").unwrap();
    let out = std::process::Command::new(bpfarm_tests::bin("bpfarm-registry"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("registry.toml") && err.contains("lisen"), "{err}");
}

// ---------------------------------------------------------------------------
// A hostile client: raw HTTP/1.1 over TCP, so that every byte is the test's.

fn host(url: &str) -> String {
    url.split_once("://").map(|(_, h)| h).unwrap_or(url).to_owned()
}

/// One response.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.head, String::from_utf8_lossy(&self.body)))
    }
}

fn parse_reply(raw: &[u8]) -> Reply {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| {
        panic!("no HTTP response head in {:?}", String::from_utf8_lossy(&raw[..raw.len().min(200)]))
    });
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut body = raw[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let n = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + n]);
            rest = &rest[eol + 2 + n + 2..];
        }
        body = out;
    }
    Reply { status, head, body }
}

/// One request on a fresh connection (`Connection: close`).
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_reply(&raw)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Uploads a blob and publishes its metadata through `/v1`.
fn publish_raw(addr: &str, push: &str, meta: &ObjectMetadata, bytes: &[u8], replace: bool) -> Reply {
    let auth = bearer(push);
    let r = http(addr, "PUT", &format!("/v1/blobs/{}", meta.digest), &[("Authorization", &auth)], bytes);
    assert!(r.status == 201 || r.status == 200, "blob upload: {} {}", r.head, String::from_utf8_lossy(&r.body));
    let q = if replace { "?replace=true" } else { "" };
    http(
        addr,
        "POST",
        &format!("/v1/objects{q}"),
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        &serde_json::to_vec(meta).unwrap(),
    )
}

/// VmRSS of a process, in bytes.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap()))
        .unwrap()
        * 1024
}

/// Waits for a child to exit, up to `limit`; returns how long it took.
fn wait_exit(child: &mut std::process::Child, limit: Duration) -> (Duration, std::process::ExitStatus) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (start.elapsed(), status);
        }
        assert!(start.elapsed() < limit, "the registry did not exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().unwrap();
    assert!(st.success(), "kill -{sig} {pid}");
}

/// Sends a request head declaring `declared` body bytes, then `sent`
/// bytes of body, and reads the response without sending the rest: a
/// response here was given before the body was read. Then keeps sending
/// and returns how many more bytes the server took before it closed.
fn refused_while_sending(addr: &str, head: &str, declared: u64, sent: usize) -> (Reply, u64) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{head}Host: {addr}\r\nContent-Length: {declared}\r\n\r\n").unwrap();
    let chunk = vec![b'x'; 64 << 10];
    let mut n = 0;
    while n < sent {
        if s.write_all(&chunk).is_err() {
            break;
        }
        n += chunk.len();
    }
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                raw.extend_from_slice(&buf[..k]);
                if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&raw[..p]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()))
                        .unwrap_or(0);
                    if raw.len() >= p + 4 + len {
                        break;
                    }
                }
            }
            Err(e) => panic!("no response while the body was being sent ({head:?}): {e}"),
        }
    }
    let reply = parse_reply(&raw);
    let mut more = 0u64;
    while more < declared {
        match s.write(&chunk) {
            Ok(k) if k > 0 => more += k as u64,
            _ => break,
        }
    }
    (reply, more)
}

#[test]
fn unauthenticated_and_oversized_bodies_are_refused_before_they_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let push = token(&data, "ci", "push");
    let reg =
        serve_with(&["--listen", "127.0.0.1:0", "--data", data.to_str().unwrap(), "--max-object-bytes", "1048576"]);
    let addr = host(&reg.url);
    let pid = reg.child.id();
    let start_rss = peak_rss(pid);
    const DECLARED: u64 = 256 << 20;
    let d = Digest::of_bytes(b"never");
    let heads: Vec<(String, bool)> = vec![
        ("POST /v1/objects HTTP/1.1\r\nContent-Type: application/json\r\n".into(), false),
        ("POST /v1/failures HTTP/1.1\r\nContent-Type: application/json\r\n".into(), false),
        (format!("PUT /v1/blobs/{d} HTTP/1.1\r\n"), false),
        (format!("POST /v2/x/y/blobs/uploads/?digest={d} HTTP/1.1\r\n"), true),
        ("PATCH /v2/x/y/blobs/uploads/0123abcd HTTP/1.1\r\n".into(), true),
        ("PUT /v2/x/y/manifests/latest HTTP/1.1\r\n".into(), true),
    ];
    // Twenty at once, as a flood would come: each sees its 401 while it is
    // still sending, and the server stops taking bytes soon after.
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let (head, v2) = heads[i % heads.len()].clone();
            let addr = addr.clone();
            std::thread::spawn(move || {
                let (r, more) = refused_while_sending(&addr, &head, DECLARED, 1 << 20);
                (head, v2, r, more)
            })
        })
        .collect();
    for h in handles {
        let (head, v2, r, more) = h.join().unwrap();
        assert_eq!(r.status, 401, "{head}: {}", r.head);
        if v2 {
            assert_eq!(r.json()["errors"][0]["code"], "UNAUTHORIZED", "{head}");
            assert_eq!(r.header("docker-distribution-api-version").as_deref(), Some("registry/2.0"));
        } else {
            assert_eq!(r.json()["error"], "UNAUTHORIZED", "{head}");
        }
        assert!(more < DECLARED / 4, "{head}: the server kept reading ({more} more bytes)");
    }
    // With a push token, a declared size over the route's limit is a 413,
    // again before the body is read.
    let auth = format!("Authorization: Bearer {push}\r\n");
    for (head, code) in [
        (format!("POST /v1/objects HTTP/1.1\r\n{auth}"), "TOO_LARGE"),
        (format!("POST /v1/failures HTTP/1.1\r\n{auth}"), "TOO_LARGE"),
        (format!("PUT /v1/blobs/{d} HTTP/1.1\r\n{auth}"), "TOO_LARGE"),
    ] {
        let (r, more) = refused_while_sending(&addr, &head, DECLARED, 1 << 20);
        assert_eq!((r.status, r.json()["error"].as_str().unwrap()), (413, code), "{head}");
        assert!(more < DECLARED / 4, "{head}: the server kept reading");
    }
    // Without a declared length (chunked), the limit holds while streaming:
    // metadata stops at 64 KiB, not at the end of the body.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "POST /v1/objects HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n").unwrap();
    let chunk = vec![b' '; 16 << 10];
    for _ in 0..8 {
        // The server may answer and close before the last chunks are
        // sent (that is the point): stop writing then, and read its answer.
        let sent =
            write!(s, "{:x}\r\n", chunk.len()).and_then(|()| s.write_all(&chunk)).and_then(|()| s.write_all(b"\r\n"));
        if sent.is_err() {
            break;
        }
    }
    let mut raw = vec![0u8; 4096];
    let n = s.read(&mut raw).unwrap();
    let r = parse_reply(&raw[..n]);
    assert_eq!((r.status, r.json()["error"].as_str().unwrap()), (413, "TOO_LARGE"));
    // Nothing was stored, and the flood did not grow the registry.
    assert_eq!(std::fs::read_dir(data.join("blobs/tmp")).unwrap().count(), 0);
    let peak = peak_rss(pid);
    eprintln!(
        "registry peak RSS: {} MiB at start, {} MiB after 20 unauthenticated 256 MiB bodies and the oversized ones",
        start_rss >> 20,
        peak >> 20
    );
    assert!(peak < 40 << 20, "peak RSS {} MiB: a body was buffered", peak >> 20);
}

#[test]
fn slow_clients_are_shed_and_normal_clients_get_through() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let push = token(&data, "ci", "push");
    // The setting: 256 descriptors, 300 connections that never
    // finish their request heads.
    let mut cmd = Command::new("prlimit");
    cmd.args(["--nofile=256:256", "--"])
        .arg(bin("bpfarm-registry"))
        .args(["serve", "--listen", "127.0.0.1:0", "--header-timeout", "2", "--data"])
        .arg(&data)
        .stderr(Stdio::null());
    let (reg, _) = spawn_registry(cmd);
    let addr = host(&reg.url);
    let object: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let meta = bpfarm_tests::sample_metadata("6.1.0-60-amd64", Arch::X86_64, &object);
    assert_eq!(publish_raw(&addr, &push, &meta, &object, false).status, 201);

    const SLOW: usize = 300;
    let stop = Arc::new(AtomicBool::new(false));
    let cut = Arc::new(AtomicUsize::new(0));
    let longest = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let attacker = {
        let (addr, stop, cut, longest) = (addr.clone(), stop.clone(), cut.clone(), longest.clone());
        std::thread::spawn(move || {
            let open = |addr: &str| {
                let mut s = TcpStream::connect(addr).ok()?;
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: slow\r\n").ok()?;
                s.set_nonblocking(true).ok()?;
                Some((s, Instant::now()))
            };
            let mut conns: Vec<Option<(TcpStream, Instant)>> = (0..SLOW).map(|_| open(&addr)).collect();
            let mut drip = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let dripping = drip.elapsed() > Duration::from_millis(500);
                if dripping {
                    drip = Instant::now();
                }
                for c in conns.iter_mut() {
                    let closed = match c {
                        None => true,
                        Some((s, _)) => {
                            let mut b = [0u8; 512];
                            let gone = match s.read(&mut b) {
                                Ok(_) => true,
                                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                            };
                            gone || (dripping && s.write_all(b"X-Slow: 1\r\n").is_err())
                        }
                    };
                    if closed {
                        if let Some((_, since)) = c.take() {
                            cut.fetch_add(1, Ordering::Relaxed);
                            let mut l = longest.lock().unwrap();
                            *l = (*l).max(since.elapsed());
                        }
                        *c = open(&addr);
                    }
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        })
    };
    // Normal clients, one after another, while the attack runs.
    let run_until = Instant::now() + Duration::from_secs(6);
    let (mut ok, mut failed, mut slowest) = (0, Vec::new(), Duration::ZERO);
    std::thread::sleep(Duration::from_millis(500));
    while Instant::now() < run_until {
        let t = Instant::now();
        let attempt = std::panic::catch_unwind(|| http(&addr, "GET", &format!("/v1/blobs/{}", meta.digest), &[], b""));
        match attempt {
            Ok(r) if r.status == 200 && r.body == object => ok += 1,
            Ok(r) => failed.push(format!("{} ({} bytes)", r.head.lines().next().unwrap_or(""), r.body.len())),
            Err(_) => failed.push("connection failed".into()),
        }
        slowest = slowest.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    attacker.join().unwrap();
    let longest = *longest.lock().unwrap();
    eprintln!(
        "{ok} downloads during the attack, slowest {slowest:?}; {} slow connections cut, the longest lived {longest:?}; registry RSS {} MiB",
        cut.load(Ordering::Relaxed),
        rss(reg.child.id()) >> 20
    );
    assert!(
        failed.is_empty(),
        "{} of {} normal requests failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok >= 5, "only {ok} downloads got through");
    assert!(slowest < Duration::from_secs(10), "a download waited {slowest:?}");
    assert!(cut.load(Ordering::Relaxed) >= SLOW, "slow connections were not cut");
    // Cut within the header timeout of being accepted (plus the time spent
    // waiting in the accept queue behind the others).
    assert!(longest < Duration::from_millis(4500), "a slow connection lived {longest:?} (header timeout 2 s)");

    // Asking for more connections than the descriptors allow is refused.
    let out = Command::new("prlimit")
        .args(["--nofile=256:256", "--"])
        .arg(bin("bpfarm-registry"))
        .args(["serve", "--listen", "127.0.0.1:0", "--max-connections", "5000", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--max-connections 5000") && err.contains("256"), "{err}");
}

#[test]
fn sigterm_finishes_requests_in_flight_and_exits_within_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let push = token(&data, "ci", "push");
    let mut reg = serve_with(&[
        "--listen",
        "127.0.0.1:0",
        "--data",
        data.to_str().unwrap(),
        "--shutdown-timeout",
        "2",
        "--header-timeout",
        "60",
    ]);
    let addr = host(&reg.url);
    // A half-open connection: a request head that never ends.
    let mut half = TcpStream::connect(&addr).unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
    // An upload in flight: half its body is on the server's disk.
    let big = vec![0x42u8; 4 << 20];
    let digest = Digest::of_bytes(&big);
    let mut up = TcpStream::connect(&addr).unwrap();
    up.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        up,
        "PUT /v1/blobs/{digest} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {push}\r\nContent-Length: {}\r\n\r\n",
        big.len()
    )
    .unwrap();
    up.write_all(&big[..2 << 20]).unwrap();
    let tmp = data.join("blobs/tmp");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&tmp).unwrap().flatten().all(|e| e.metadata().map(|m| m.len()).unwrap_or(0) == 0) {
        assert!(Instant::now() < deadline, "the upload never reached the disk");
        std::thread::sleep(Duration::from_millis(10));
    }
    let t0 = Instant::now();
    signal(reg.child.id(), "TERM");
    // New connections are refused once the listener is closed.
    let refused_by = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(&addr).is_ok() {
        assert!(Instant::now() < refused_by, "still accepting connections after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The upload in flight finishes.
    up.write_all(&big[2 << 20..]).unwrap();
    let mut raw = vec![0u8; 4096];
    let n = up.read(&mut raw).unwrap();
    let r = parse_reply(&raw[..n]);
    assert_eq!(r.status, 201, "{}", r.head);
    // And the half-open connection does not hold the exit past the deadline.
    let (_, status) = wait_exit(&mut reg.child, Duration::from_secs(10));
    let took = t0.elapsed();
    eprintln!("exited {took:?} after SIGTERM with a half-open connection (--shutdown-timeout 2)");
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_millis(3500), "exit took {took:?}");
    assert!(data.join("blobs/sha256").join(&digest.hex()[..2]).join(digest.hex()).is_file(), "the upload was lost");
    drop(half);
}

#[test]
fn metric_labels_come_from_fixed_sets_and_metrics_obey_read_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let read = token(&data, "fleet", "read");
    let reg = serve_with(&["--listen", "127.0.0.1:0", "--data", data.to_str().unwrap(), "--require-read-token"]);
    let addr = host(&reg.url);
    let auth = bearer(&read);
    let r = http(&addr, "GET", "/metrics", &[], b"");
    assert_eq!((r.status, r.json()["error"].as_str().unwrap()), (401, "UNAUTHORIZED"));
    let metrics = || {
        let r = http(&addr, "GET", "/metrics", &[("Authorization", &auth)], b"");
        assert_eq!(r.status, 200);
        String::from_utf8(r.body).unwrap()
    };
    let before = metrics();
    for i in 0..200 {
        let r = http(&addr, &format!("MADEUP{i}"), &format!("/no/such/{i}/path"), &[("Authorization", &auth)], b"");
        assert!(r.status >= 400, "MADEUP{i}");
        let _ = http(&addr, "GET", &format!("/v2/repo{i}/thing{i}/weird/{i}"), &[("Authorization", &auth)], b"");
    }
    let after = metrics();
    eprintln!("/metrics: {} bytes before, {} after 400 made-up requests", before.len(), after.len());
    assert!(!after.contains("MADEUP") && !after.contains("repo1"), "request data in labels:\n{after}");
    assert!(after.contains("method=\"other\""), "{after}");
    assert!(after.len() < before.len() + 2048, "/metrics grew from {} to {} bytes", before.len(), after.len());

    // On its own listener, /metrics needs no token and leaves the API listener.
    drop(reg);
    let mut cmd = Command::new(bin("bpfarm-registry"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--require-read-token", "--data"])
        .arg(&data)
        .stderr(Stdio::null());
    let (reg, preamble) = spawn_registry(cmd);
    let private = preamble.iter().find_map(|l| l.strip_prefix("metrics on ")).expect("the metrics address").to_owned();
    let r = http(&host(&private), "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("bpfarm_objects"));
    let r = http(&host(&reg.url), "GET", "/metrics", &[("Authorization", &auth)], b"");
    assert_eq!((r.status, r.json()["error"].as_str().unwrap()), (404, "NOT_FOUND"));
}

/// What the OCI face says is the `arch` object of (release, v0.1.0).
fn oci_layer(addr: &str, release: &str, arch: &str) -> Option<String> {
    let tag = bpfarm_object::oci::tag(release, "v0.1.0", false);
    let r = http(addr, "GET", &format!("/v2/bpfarm/tracee-bpf/manifests/{tag}"), &[], b"");
    if r.status != 200 {
        return None;
    }
    let index = r.json();
    let child = index["manifests"].as_array()?.iter().find(|m| m["platform"]["architecture"] == arch)?.clone();
    let m = http(addr, "GET", &format!("/v2/bpfarm/tracee-bpf/manifests/{}", child["digest"].as_str()?), &[], b"");
    m.json()["layers"][0]["digest"].as_str().map(str::to_owned)
}

fn v1_digest(addr: &str, release: &str, arch: &str) -> Option<String> {
    let r = http(addr, "GET", &format!("/v1/objects/{arch}/v0.1.0/{release}"), &[], b"");
    (r.status == 200).then(|| r.json()["digest"].as_str().unwrap().to_owned())
}

#[test]
fn racing_replaces_leave_both_faces_on_the_same_digest() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let push = token(&data, "ci", "push");
    let reg = serve(&data);
    let addr = host(&reg.url);
    let started = Instant::now();
    const ITERATIONS: usize = 50;
    for iter in 0..ITERATIONS {
        let release = format!("6.1.0-{}-amd64", 200 + iter % 5);
        // Four different x86_64 objects replacing each other at once, and
        // the aarch64 object of the same release (the same tag) beside them.
        let handles: Vec<_> = (0..5)
            .map(|k| {
                let (addr, push, release) = (addr.clone(), push.clone(), release.clone());
                std::thread::spawn(move || {
                    let arch = if k == 4 { Arch::Aarch64 } else { Arch::X86_64 };
                    let bytes = format!("object {iter}.{k} for {release}").into_bytes();
                    let meta = bpfarm_tests::sample_metadata(&release, arch, &bytes);
                    let r = publish_raw(&addr, &push, &meta, &bytes, true);
                    assert_eq!(r.status, 201, "{} {}", r.head, String::from_utf8_lossy(&r.body));
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        for arch in ["x86_64", "aarch64"] {
            let v1 = v1_digest(&addr, &release, arch).expect("a /v1 object");
            let oci_arch = if arch == "x86_64" { "amd64" } else { "arm64" };
            let v2 = oci_layer(&addr, &release, oci_arch);
            assert_eq!(Some(&v1), v2.as_ref(), "iteration {iter}: /v1 and /v2 disagree on {release} {arch}");
        }
    }
    eprintln!(
        "{ITERATIONS} rounds of 4 racing replaces + 1 other arch: both faces agreed every time ({:?})",
        started.elapsed()
    );
    let out = Command::new(bin("bpfarm-registry")).args(["fsck", "--data"]).arg(&data).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

fn fsck(data: &Path, repair: bool) -> (i32, String) {
    let mut cmd = Command::new(bin("bpfarm-registry"));
    cmd.args(["fsck", "--data"]).arg(data);
    if repair {
        cmd.arg("--repair");
    }
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn fsck_finds_and_repairs_a_flipped_byte_and_faces_that_disagree() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let push = token(&data, "ci", "push");
    let reg = serve(&data);
    let addr = host(&reg.url);
    let object: Vec<u8> = (0..50_000u32).map(|i| (i * 13 % 256) as u8).collect();
    let meta = bpfarm_tests::sample_metadata("6.12.117+deb12-amd64", Arch::X86_64, &object);
    assert_eq!(publish_raw(&addr, &push, &meta, &object, false).status, 201);
    assert_eq!(fsck(&data, false), (0, fsck(&data, false).1));

    // A flipped byte, with the registry still serving.
    let blob = data.join("blobs/sha256").join(&meta.digest.hex()[..2]).join(meta.digest.hex());
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[1234] ^= 0x01;
    std::fs::write(&blob, &bytes).unwrap();
    let (code, out) = fsck(&data, false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("problem: corrupt blob {}", meta.digest)), "{out}");
    assert!(blob.is_file(), "fsck without --repair changed the store");

    let (code, out) = fsck(&data, true);
    assert_eq!(code, 1, "the object's bytes are gone until uploaded again: {out}");
    assert!(out.contains(&format!("fixed: corrupt blob {}", meta.digest)) && out.contains("quarantined"), "{out}");
    assert!(out.contains(&format!("upload its bytes again: PUT /v1/blobs/{}", meta.digest)), "{out}");
    assert!(!blob.exists());
    let quarantined: Vec<_> = std::fs::read_dir(data.join("blobs/quarantine")).unwrap().flatten().collect();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(std::fs::read(quarantined[0].path()).unwrap(), bytes, "quarantine keeps the bytes");
    // Downloads say the blob is unknown (a 404, not a 500).
    let r = http(&addr, "GET", &format!("/v1/blobs/{}", meta.digest), &[], b"");
    assert_eq!((r.status, r.json()["error"].as_str().unwrap()), (404, "BLOB_UNKNOWN"));
    // Uploading the right bytes again repairs it.
    let r = http(&addr, "PUT", &format!("/v1/blobs/{}", meta.digest), &[("Authorization", &bearer(&push))], &object);
    assert_eq!(r.status, 201);
    let (code, out) = fsck(&data, false);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 fixed, 0 problems"), "{out}");

    // The OCI form lost behind the registry's back (what a crash between
    // two separate writes used to leave): fsck finds it and rewrites it.
    let st = Command::new("sqlite3")
        .arg(data.join("index.sqlite"))
        .arg("DELETE FROM oci_tags;")
        .status()
        .expect("sqlite3 is not installed (ci/install-deps installs it)");
    assert!(st.success());
    assert_eq!(oci_layer(&addr, &meta.identity.kernel_release, "amd64"), None);
    let (code, out) = fsck(&data, false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("/v1 and OCI disagree"), "{out}");
    let (code, out) = fsck(&data, true);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("rewrote its OCI form"), "{out}");
    assert_eq!(oci_layer(&addr, &meta.identity.kernel_release, "amd64"), Some(meta.digest.to_string()));
}

#[test]
fn export_never_writes_through_a_planted_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let push = token(&data, "ci", "push");
    let reg = serve(&data);
    let object = b"\x7fELF an object to export".to_vec();
    let meta = bpfarm_tests::sample_metadata("6.1.0-61-amd64", Arch::X86_64, &object);
    assert_eq!(publish_raw(&host(&reg.url), &push, &meta, &object, false).status, 201);
    drop(reg);

    let out = dir.path().join("tree");
    let folder = out.join("v0.1.0/x86_64");
    std::fs::create_dir_all(&folder).unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    // The names an older export wrote through, and a destination, planted.
    for name in [
        format!("{}.tmp-export", meta.file_name.trim_end_matches(".o")),
        format!("{}.sha256.tmp-export", meta.file_name),
        format!("{}.tmp-export", meta.file_name),
        format!("{}.sha256", meta.file_name),
    ] {
        std::os::unix::fs::symlink(&victim, folder.join(name)).unwrap();
    }
    let run = |out: &Path| {
        Command::new(bin("bpfarm-registry"))
            .args(["export", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };
    let o = run(&out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "export wrote through a symlink");
    assert_eq!(std::fs::read(folder.join(&meta.file_name)).unwrap(), object);
    let sum = folder.join(format!("{}.sha256", meta.file_name));
    assert!(std::fs::symlink_metadata(&sum).unwrap().is_file(), "the planted link was followed, not replaced");
    assert!(std::fs::read_to_string(&sum).unwrap().starts_with(meta.digest.hex()));
    // No staging folder is left behind.
    assert!(std::fs::read_dir(&out).unwrap().flatten().all(|e| !e.file_name().to_string_lossy().starts_with('.')));

    // A symlinked folder is refused, and nothing lands where it points.
    let out2 = dir.path().join("tree2");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(out2.join("v0.1.0")).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, out2.join("v0.1.0/x86_64")).unwrap();
    let o = run(&out2);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("symlink"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}

// ---------------------------------------------------------------------------
// TLS, with certificates made by openssl here.

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl is not installed");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, and a server certificate for localhost/127.0.0.1 signed by it,
/// written as `<name>.crt` / `<name>.key`.
fn make_ca(dir: &Path) {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=bpfarm test CA",
        ],
        dir,
    );
}

fn make_cert(dir: &Path, name: &str) {
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
        dir,
    );
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
        dir,
    );
}

fn der(path: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(path).unwrap().to_vec()
}

/// Connects over TLS trusting only `ca`; returns the server's certificate
/// and the response to `GET /healthz`.
fn tls_get(addr: &str, ca: &Path) -> (Vec<u8>, String) {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_file(ca).unwrap()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = Vec::new();
    let _ = tls.read_to_end(&mut resp);
    let cert = tls.conn.peer_certificates().unwrap()[0].to_vec();
    (cert, String::from_utf8_lossy(&resp).into_owned())
}

#[test]
fn tls_serves_its_certificate_and_reloads_it_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    make_ca(&pki);
    make_cert(&pki, "a");
    make_cert(&pki, "b");
    let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    std::fs::copy(pki.join("a.crt"), &cert).unwrap();
    std::fs::copy(pki.join("a.key"), &key).unwrap();
    let data = dir.path().join("data");
    let reg = serve_with(&[
        "--listen",
        "127.0.0.1:0",
        "--data",
        data.to_str().unwrap(),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert!(reg.url.starts_with("https://"), "{}", reg.url);
    let addr = host(&reg.url);
    let (seen, resp) = tls_get(&addr, &pki.join("ca.crt"));
    assert_eq!(seen, der(&pki.join("a.crt")));
    assert!(resp.starts_with("HTTP/1.1 200") && resp.ends_with("ok\n"), "{resp}");
    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(&addr).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(!got.starts_with(b"HTTP/1.1 200"), "plain HTTP was served on the TLS listener");

    // New files, SIGHUP: new connections see the new certificate.
    std::fs::copy(pki.join("b.crt"), &cert).unwrap();
    std::fs::copy(pki.join("b.key"), &key).unwrap();
    signal(reg.child.id(), "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (seen, resp) = tls_get(&addr, &pki.join("ca.crt"));
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        if seen == der(&pki.join("b.crt")) {
            break;
        }
        assert!(Instant::now() < deadline, "the reloaded certificate was never served");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A key that does not go with the certificate is refused at start.
    let out = Command::new(bin("bpfarm-registry"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .arg("--tls-cert")
        .arg(pki.join("a.crt"))
        .arg("--tls-key")
        .arg(pki.join("b.key"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not go with"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn stalled_transfers_and_oversized_heads_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let push = token(&data, "ci", "push");
    let reg = serve_with(&["--listen", "127.0.0.1:0", "--data", data.to_str().unwrap(), "--idle-timeout", "1"]);
    let addr = host(&reg.url);
    let closed_within = |s: &mut TcpStream, limit: Duration| {
        s.set_read_timeout(Some(limit)).unwrap();
        let start = Instant::now();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return start.elapsed(),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return start.elapsed(),
                Err(e) => panic!("still open after {:?}: {e}", start.elapsed()),
            }
        }
    };
    // An upload that stops halfway: cut, and nothing partial stays.
    let mut up = TcpStream::connect(&addr).unwrap();
    let d = Digest::of_bytes(b"never finished");
    write!(
        up,
        "PUT /v1/blobs/{d} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {push}\r\nContent-Length: 1000000\r\n\r\n"
    )
    .unwrap();
    up.write_all(&[7u8; 500_000]).unwrap();
    let took = closed_within(&mut up, Duration::from_secs(10));
    eprintln!("stalled upload cut after {took:?} (--idle-timeout 1)");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_dir(data.join("blobs/tmp")).unwrap().count() > 0 {
        assert!(Instant::now() < deadline, "the stalled upload's temp file stayed");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A download whose client stops reading: cut once the socket buffers fill.
    let big: Vec<u8> = (0..32u32 << 20).map(|i| (i % 253) as u8).collect();
    let meta = bpfarm_tests::sample_metadata("6.1.0-62-amd64", Arch::X86_64, &big);
    let r = http(&addr, "PUT", &format!("/v1/blobs/{}", meta.digest), &[("Authorization", &bearer(&push))], &big);
    assert_eq!(r.status, 201);
    let mut down = TcpStream::connect(&addr).unwrap();
    write!(down, "GET /v1/blobs/{} HTTP/1.1\r\nHost: x\r\n\r\n", meta.digest).unwrap();
    std::thread::sleep(Duration::from_secs(4)); // not reading: the stall under test
    let mut got = 0usize;
    down.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match down.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(got < big.len(), "the stalled download was not cut ({got} bytes)");

    // A request head over 64 KiB is refused, not buffered.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
    let _ = s.write_all(format!("X-Big: {}\r\n\r\n", "a".repeat(100 << 10)).as_bytes());
    let mut raw = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.read_to_end(&mut raw);
    assert!(!raw.starts_with(b"HTTP/1.1 200"), "a 100 KiB head was served");
}
