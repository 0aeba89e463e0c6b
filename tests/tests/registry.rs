//! The registry process under abuse: killed with SIGKILL in the middle of
//! an upload, and under concurrent load (500 downloads, 20 publishes).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use bpfarm_object::{Arch, Digest, ObjectMetadata};
use bpfarm_tests::{serve, serve_with, token};

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
