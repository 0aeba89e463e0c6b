//! Facts about the machine this process runs on: the running kernel's
//! release, `uname -v` and config digest. Behind the `host` feature (it
//! reads `/proc/config.gz`, so it brings a gzip decoder).

use std::fs;
use std::io::Read;

use crate::{Digest, KernelFacts};

/// The running kernel: `uname -r`, `uname -v` and, where the kernel exposes
/// it, the digest of its config (`/proc/config.gz` or `/boot/config-<r>`).
pub fn running_kernel() -> std::io::Result<(String, KernelFacts)> {
    let (release, uname_version) = running_release()?;
    let config_digest = config_digest(&release);
    Ok((release, KernelFacts { uname_version, config_digest }))
}

/// The running kernel's `uname -r` and `uname -v`, without its config
/// digest: what finding or fetching an object needs (the digest costs a
/// decompression and a hash; only a build records it, see [`config_digest`]).
pub fn running_release() -> std::io::Result<(String, Option<String>)> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")?.trim().to_owned();
    let uname_version = fs::read_to_string("/proc/sys/kernel/version").ok().map(|s| s.trim().to_owned());
    Ok((release, uname_version))
}

/// The digest of the running kernel's config (`/proc/config.gz`, else
/// `/boot/config-<release>`), where the kernel exposes it.
pub fn config_digest(release: &str) -> Option<Digest> {
    fs::File::open("/proc/config.gz")
        .ok()
        .and_then(|f| {
            let mut v = Vec::new();
            flate2::read::GzDecoder::new(f).read_to_end(&mut v).ok()?;
            Some(Digest::of_bytes(&v))
        })
        .or_else(|| {
            fs::File::open(format!("/boot/config-{release}"))
                .ok()
                .and_then(|f| Digest::of_reader(f).ok())
                .map(|(d, _)| d)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_kernel_has_a_release() {
        let (r, f) = running_kernel().unwrap();
        assert!(!r.is_empty());
        assert!(f.uname_version.is_some());
    }
}
