//! One arch's `Packages.xz`: checked against the signed Release (compressed
//! and, where listed, uncompressed size and sha256), decompressed with a
//! bound, and read for the header and kbuild packages as `PackageFacts`,
//! so the builder's own pairing rules (`packages::pair`) apply unchanged.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;

use bpfarm_object::Digest;
use sha2::{Digest as _, Sha256};

use super::release::PackagesIndex;
use crate::matrix::{valid_archive_path, valid_package_word};
use crate::packages::{PackageFacts, parse_control, parse_depends};

/// The uncompressed index may be at most this large when the Release does
/// not list its size (Debian's largest is ~70 MB).
pub const UNLISTED_PLAIN_LIMIT: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("{path}: {got_size} bytes with {got}, but the signed Release says {want_size} bytes with {want}")]
    Checksum { path: String, want: Digest, want_size: u64, got: Digest, got_size: u64 },
    #[error("{path}: xz: {source}")]
    Xz {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: decompresses to more than {limit} bytes")]
    TooLarge { path: String, limit: u64 },
    #[error("{path}: not UTF-8")]
    NotText { path: String },
    #[error("{path}: package {package:?}: {reason}")]
    Entry { path: String, package: String, reason: String },
}

/// Checks `xz` (the downloaded `Packages.xz`) against `index`, decompresses
/// it (bounded by the signed uncompressed size, and hashed against it) and
/// returns its header and kbuild packages.
pub fn read(index: &PackagesIndex, xz: &[u8]) -> Result<Vec<PackageFacts>, IndexError> {
    let path = index.path.clone();
    let got = Digest::of_bytes(xz);
    if got != index.digest || xz.len() as u64 != index.size {
        return Err(IndexError::Checksum {
            path,
            want: index.digest.clone(),
            want_size: index.size,
            got,
            got_size: xz.len() as u64,
        });
    }
    let limit = index.plain.as_ref().map(|(n, _)| *n).unwrap_or(UNLISTED_PLAIN_LIMIT);
    // Streamed: the index is hashed line by line and only kernel stanzas are
    // kept, so memory stays at the compressed size whatever the archive.
    let xz_err = |source| IndexError::Xz { path: path.clone(), source };
    let mut reader = BufReader::new(liblzma::read::XzDecoder::new(xz).take(limit.saturating_add(1)));
    let mut hasher = Sha256::new();
    let mut total: u64 = 0;
    let mut line = Vec::new();
    let mut kept: Vec<String> = Vec::new();
    let mut stanza = String::new();
    let mut keep: Option<bool> = None;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(xz_err)?;
        total += n as u64;
        if total > limit {
            return Err(IndexError::TooLarge { path, limit });
        }
        hasher.update(&line);
        let text = std::str::from_utf8(&line).map_err(|_| IndexError::NotText { path: path.clone() })?;
        if n == 0 || text.trim().is_empty() {
            if keep == Some(true) {
                kept.push(std::mem::take(&mut stanza));
            }
            stanza.clear();
            keep = None;
            if n == 0 {
                break;
            }
            continue;
        }
        // Most of the archive is neither headers nor kbuild: decided on the
        // stanza's first line (Debian writes `Package:` first).
        let k = *keep.get_or_insert_with(|| {
            text.starts_with("Package: linux-headers-") || text.starts_with("Package: linux-kbuild-")
        });
        if k {
            stanza.push_str(text);
        }
    }
    if let Some((size, digest)) = &index.plain {
        let got = Digest::from_raw(hasher.finalize().into());
        if &got != digest || total != *size {
            return Err(IndexError::Checksum {
                path: path.trim_end_matches(".xz").to_owned(),
                want: digest.clone(),
                want_size: *size,
                got,
                got_size: total,
            });
        }
    }
    let mut out = Vec::new();
    for st in kept {
        out.extend(kernel_packages(&st).map_err(|(package, reason)| IndexError::Entry {
            path: path.clone(),
            package,
            reason,
        })?);
    }
    Ok(out)
}

/// The `linux-headers-*` and `linux-kbuild-*` stanzas of a Packages text,
/// as facts whose `path` is the archive `Filename`.
pub fn kernel_packages(text: &str) -> Result<Vec<PackageFacts>, (String, String)> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        // Cheap pre-filter: most of the archive is neither.
        if !(stanza.starts_with("Package: linux-headers-") || stanza.starts_with("Package: linux-kbuild-")) {
            continue;
        }
        let f = parse_control(stanza);
        let name = f.get("Package").cloned().unwrap_or_default();
        let field = |k: &str| f.get(k).cloned().ok_or_else(|| (name.clone(), format!("no {k} field")));
        let filename = field("Filename")?;
        if !valid_archive_path(&filename) {
            return Err((name, format!("Filename {filename:?} is not a plain relative path")));
        }
        let version = field("Version")?;
        let deb_arch = field("Architecture")?;
        if !valid_package_word(&name) || !valid_package_word(&version) || !valid_package_word(&deb_arch) {
            return Err((name, format!("version {version:?} or arch {deb_arch:?} is not a Debian one")));
        }
        let digest: Digest =
            format!("sha256:{}", field("SHA256")?).parse().map_err(|e| (name.clone(), format!("SHA256: {e}")))?;
        let size: u64 = field("Size")?.parse().map_err(|_| (name.clone(), "Size is not a number".to_owned()))?;
        out.push(PackageFacts {
            path: PathBuf::from(filename),
            name,
            version,
            deb_arch,
            depends: parse_depends(f.get("Depends").map(String::as_str).unwrap_or("")),
            digest,
            size,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STANZAS: &str = "Package: linux-headers-6.1.0-56-amd64\nSource: linux\nVersion: 6.1.192-2\nArchitecture: amd64\nDepends: linux-headers-6.1.0-56-common (= 6.1.192-2), linux-kbuild-6.1 (>= 6.1.192-2), linux-compiler-gcc-12-x86\nFilename: pool/main/l/linux/linux-headers-6.1.0-56-amd64_6.1.192-2_amd64.deb\nSize: 1000\nSHA256: 1111111111111111111111111111111111111111111111111111111111111111\n\nPackage: zsh\nVersion: 5\nArchitecture: amd64\nFilename: pool/main/z/zsh/zsh_5_amd64.deb\nSize: 1\nSHA256: 2222222222222222222222222222222222222222222222222222222222222222\n\nPackage: linux-headers-6.1.0-56-common\nVersion: 6.1.192-2\nArchitecture: all\nFilename: pool/main/l/linux/linux-headers-6.1.0-56-common_6.1.192-2_all.deb\nSize: 2000\nSHA256: 3333333333333333333333333333333333333333333333333333333333333333\n\nPackage: linux-kbuild-6.1\nVersion: 6.1.192-2\nArchitecture: amd64\nFilename: pool/main/l/linux/linux-kbuild-6.1_6.1.192-2_amd64.deb\nSize: 3000\nSHA256: 4444444444444444444444444444444444444444444444444444444444444444\n";

    #[test]
    fn reads_kernel_packages_and_pairs_them_with_the_builders_rules() {
        let facts = kernel_packages(STANZAS).unwrap();
        assert_eq!(facts.len(), 3);
        let pairs = crate::packages::pair(&facts);
        assert_eq!(pairs.len(), 1);
        let k = pairs[0].as_ref().unwrap();
        assert_eq!(k.common.name, "linux-headers-6.1.0-56-common");
        assert_eq!(k.kbuild.size, 3000);
    }

    #[test]
    fn hostile_filenames_are_refused() {
        let bad = STANZAS.replace("pool/main/l/linux/linux-headers-6.1.0-56-amd64", "../../../../etc/x");
        let (pkg, why) = kernel_packages(&bad).unwrap_err();
        assert_eq!(pkg, "linux-headers-6.1.0-56-amd64");
        assert!(why.contains("not a plain relative path"), "{why}");
    }

    fn xz(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn checks_compressed_and_plain_digests_and_bounds() {
        let packed = xz(STANZAS.as_bytes());
        let index = PackagesIndex {
            path: "main/binary-amd64/Packages.xz".into(),
            size: packed.len() as u64,
            digest: Digest::of_bytes(&packed),
            plain: Some((STANZAS.len() as u64, Digest::of_bytes(STANZAS.as_bytes()))),
        };
        assert_eq!(read(&index, &packed).unwrap().len(), 3);
        let mut tampered = packed.clone();
        let n = tampered.len();
        tampered[n / 2] ^= 1;
        assert!(matches!(read(&index, &tampered), Err(IndexError::Checksum { .. })));
        // A bomb: the Release is honest about the xz, lies about the plain size.
        let small = PackagesIndex { plain: Some((10, Digest::of_bytes(b"x"))), ..index };
        assert!(matches!(read(&small, &packed), Err(IndexError::TooLarge { limit: 10, .. })));
    }
}
