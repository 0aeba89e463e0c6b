//! The real cosign (Debian's 2.5), run offline: with a private, empty home
//! (no cached Sigstore state) and the test password; the blob commands in
//! a fresh network namespace (`unshare -rn`: not even loopback), the
//! registry commands with every proxy pointed at a closed port, so only
//! loopback is reachable.

use std::path::Path;
use std::process::{Command, Output};

/// The password of the cosign key files the tests make.
pub const PASSWORD: &str = "correct horse battery staple";

/// cosign's environment on `c`: its home under `home` (created), and
/// [`PASSWORD`].
pub fn env<'c>(c: &'c mut Command, home: &Path) -> &'c mut Command {
    let state = home.join("cosign-home");
    std::fs::create_dir_all(&state).expect("cosign's home");
    c.env("HOME", &state).env("TUF_ROOT", state.join("tuf")).env("COSIGN_PASSWORD", PASSWORD)
}

/// cosign where only loopback is reachable: every proxy is a closed port.
pub fn on_loopback(home: &Path) -> Command {
    let mut c = Command::new("cosign");
    env(&mut c, home);
    for var in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "ALL_PROXY"] {
        c.env(var, "http://127.0.0.1:9");
    }
    c.env("NO_PROXY", "127.0.0.1,localhost").env("no_proxy", "127.0.0.1,localhost");
    c
}

/// cosign in a new network namespace (`unshare -rn`): no network at all.
pub fn without_network(home: &Path) -> Command {
    let mut c = Command::new("unshare");
    c.args(["-rn", "cosign"]);
    env(&mut c, home);
    c
}

/// `cosign verify-blob` of `file` against its signature `sig` and the
/// public key `public`, with no network (no transparency log).
pub fn verify_blob(home: &Path, public: &Path, sig: &Path, file: &Path) -> Output {
    without_network(home)
        .arg("verify-blob")
        .arg("--key")
        .arg(public)
        .arg("--signature")
        .arg(sig)
        .arg("--insecure-ignore-tlog")
        .arg(file)
        .output()
        .expect("unshare runs cosign (ci/install-deps installs cosign)")
}

/// cosign `args` against `image` on a loopback registry that speaks plain
/// http (see [`on_loopback`]).
pub fn on_registry(home: &Path, args: &[&str], image: &str) -> Output {
    on_loopback(home)
        .args(args)
        .args(["--allow-insecure-registry", "--allow-http-registry"])
        .arg(image)
        .output()
        .expect("cosign is not installed (ci/install-deps installs it)")
}
