//! A yum/dnf repository's `kernel-devel` packages, for `discover --yum-repo`:
//! `repodata/repomd.xml` names the primary index with its sha256 and size;
//! the primary (gzip, xz, zstd or plain) must match both before it is read,
//! and lists each package's name, version-release, arch, location, size and
//! sha256. Nothing is signed here (a repository's GPG key signs packages,
//! not its metadata, in most deployments): what a matrix pins is what the
//! repository served, and `fetch` holds every package to it.
//!
//! A repository is read whole or not at all: a failure names the URL and
//! the caller writes no matrix. Every location must be a plain relative path
//! inside the repository (the primary's under `repodata/`).

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read};

use bpfarm_object::{Arch, Digest};
use quick_xml::events::{BytesStart, Event};
use sha2::{Digest as _, Sha256};

use crate::archive::{self, Archive, HttpError};
use crate::limits;
use crate::matrix::{MatrixDeb, MatrixKernel, valid_archive_path};

/// Largest `repomd.xml` read.
const REPOMD_BYTES: u64 = 1 << 20;
/// Largest compressed primary index fetched (Fedora's is ~20 MB).
const PRIMARY_BYTES: u64 = 256 << 20;
/// Largest primary index read after decompression (Fedora's is ~150 MB).
const PRIMARY_OPEN_BYTES: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum YumError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{url}: not found")]
    NotFound { url: String },
    #[error("{url}: {reason}")]
    Invalid { url: String, reason: String },
    #[error("{url}: {got_size} bytes with {got}, but repomd.xml says {want_size} bytes with {want}; refused")]
    Mismatch { url: String, want: Digest, want_size: u64, got: Digest, got_size: u64 },
}

fn invalid(url: &str, reason: impl Into<String>) -> YumError {
    YumError::Invalid { url: url.to_owned(), reason: reason.into() }
}

/// The primary index as repomd.xml names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryRef {
    pub href: String,
    pub sha256: Digest,
    pub size: u64,
}

/// One `kernel-devel` package of a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YumKernel {
    pub package: MatrixDeb,
    pub arch: Arch,
}

fn attr(e: &BytesStart<'_>, name: &[u8]) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.local_name().as_ref() == name)
        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
}

fn sha256_of(url: &str, hex: &str) -> Result<Digest, YumError> {
    format!("sha256:{}", hex.trim()).parse().map_err(|_| invalid(url, format!("checksum {hex:?} is not a sha256")))
}

/// Parses `repomd.xml` for the primary index.
pub fn parse_repomd(url: &str, xml: &[u8]) -> Result<PrimaryRef, YumError> {
    let mut r = quick_xml::Reader::from_reader(xml);
    r.config_mut().trim_text(true);
    let mut buf = Vec::new();
    let (mut in_primary, mut field) = (false, None::<Vec<u8>>);
    let (mut href, mut sum, mut sum_type, mut size) = (None, None, None, None);
    loop {
        match r.read_event_into(&mut buf).map_err(|e| invalid(url, format!("XML: {e}")))? {
            Event::Start(e) if e.local_name().as_ref() == b"data" => {
                in_primary = attr(&e, b"type").as_deref() == Some("primary")
            }
            Event::End(e) if e.local_name().as_ref() == b"data" && in_primary => break,
            Event::Start(e) | Event::Empty(e) if in_primary => {
                let name = e.local_name().as_ref().to_vec();
                if name == b"location" {
                    href = attr(&e, b"href");
                } else if name == b"checksum" {
                    sum_type = attr(&e, b"type");
                }
                field = Some(name);
            }
            Event::Text(t) if in_primary => {
                let text = t.decode().map_err(|e| invalid(url, format!("XML: {e}")))?.into_owned();
                match field.as_deref() {
                    Some(b"checksum") => sum = Some(text),
                    Some(b"size") => size = Some(text),
                    _ => {}
                }
            }
            Event::End(_) => field = None,
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    let href = href.ok_or_else(|| invalid(url, "no primary index (<data type=\"primary\"> with a location)"))?;
    if !href.starts_with("repodata/") || !valid_archive_path(&href) {
        return Err(invalid(url, format!("primary location {href:?} is not a plain path under repodata/; refused")));
    }
    if sum_type.as_deref() != Some("sha256") {
        return Err(invalid(url, format!("primary checksum type {sum_type:?}: only sha256 is accepted")));
    }
    let sha256 = sha256_of(url, &sum.ok_or_else(|| invalid(url, "primary has no checksum"))?)?;
    let size = size
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| invalid(url, "primary has no size (repomd.xml <size>)"))?;
    Ok(PrimaryRef { href, sha256, size })
}

/// Whether a package name is a kernel-devel flavour: `kernel-devel`,
/// `kernel-rt-devel`, `kernel-64k-devel`, ...
pub fn is_kernel_devel(name: &str) -> bool {
    name == "kernel-devel"
        || name.strip_prefix("kernel-").and_then(|r| r.strip_suffix("-devel")).is_some_and(|flavour| {
            !flavour.is_empty() && flavour.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// Reads a primary index for the kernel-devel packages of `arches`.
pub fn parse_primary(url: &str, r: impl io::BufRead, arches: &[Arch]) -> Result<Vec<YumKernel>, YumError> {
    let mut x = quick_xml::Reader::from_reader(r);
    x.config_mut().trim_text(true);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    // Inside <package>: its depth-1 children's values.
    let mut pkg: Option<BTreeMap<&'static str, String>> = None;
    let mut depth = 0usize;
    let mut field: Option<&'static str> = None;
    loop {
        let ev = x.read_event_into(&mut buf).map_err(|e| invalid(url, format!("XML: {e}")))?;
        let empty = matches!(ev, Event::Empty(_));
        match ev {
            Event::Start(e) if pkg.is_none() && e.local_name().as_ref() == b"package" => {
                pkg = Some(BTreeMap::new());
                depth = 0;
            }
            Event::End(e) if depth == 0 && e.local_name().as_ref() == b"package" => {
                if let Some(p) = pkg.take()
                    && let Some(k) = kernel_of(url, &p, arches)?
                {
                    out.push(k);
                }
            }
            Event::Start(e) | Event::Empty(e) if pkg.is_some() => {
                if depth == 0
                    && let Some(p) = pkg.as_mut()
                {
                    field = match e.local_name().as_ref() {
                        b"name" => Some("name"),
                        b"arch" => Some("arch"),
                        b"checksum" => {
                            p.insert("checksum_type", attr(&e, b"type").unwrap_or_default());
                            Some("checksum")
                        }
                        b"version" => {
                            p.insert("ver", attr(&e, b"ver").unwrap_or_default());
                            p.insert("rel", attr(&e, b"rel").unwrap_or_default());
                            None
                        }
                        b"location" => {
                            p.insert("href", attr(&e, b"href").unwrap_or_default());
                            None
                        }
                        b"size" => {
                            p.insert("size", attr(&e, b"package").unwrap_or_default());
                            None
                        }
                        _ => None,
                    };
                }
                if !empty {
                    depth += 1;
                }
            }
            Event::Text(t) if pkg.is_some() && depth == 1 => {
                if let (Some(f), Some(p)) = (field, pkg.as_mut()) {
                    let text = t.decode().map_err(|e| invalid(url, format!("XML: {e}")))?;
                    p.entry(f).or_default().push_str(&text);
                }
            }
            Event::End(_) if pkg.is_some() => {
                depth = depth.saturating_sub(1);
                field = None;
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if pkg.is_some() {
        return Err(invalid(url, "the primary index ends inside a <package>"));
    }
    out.sort_by(|a, b| {
        (crate::discover::natural(&a.package.version), &a.package.name, a.arch).cmp(&(
            crate::discover::natural(&b.package.version),
            &b.package.name,
            b.arch,
        ))
    });
    Ok(out)
}

fn kernel_of(url: &str, p: &BTreeMap<&'static str, String>, arches: &[Arch]) -> Result<Option<YumKernel>, YumError> {
    let get = |k: &str| p.get(k).map(String::as_str).unwrap_or("");
    let name = get("name");
    if !is_kernel_devel(name) {
        return Ok(None);
    }
    let Some(arch) = Arch::from_any(get("arch")).filter(|a| arches.contains(a)) else {
        return Ok(None);
    };
    let what = format!("{name} {}-{} ({})", get("ver"), get("rel"), get("arch"));
    let href = get("href");
    if !valid_archive_path(href) || !href.ends_with(".rpm") {
        return Err(invalid(url, format!("{what}: location {href:?} is not a plain relative .rpm path; refused")));
    }
    if get("checksum_type") != "sha256" {
        return Err(invalid(url, format!("{what}: checksum type {:?}: only sha256 is accepted", get("checksum_type"))));
    }
    let version = format!("{}-{}", get("ver"), get("rel"));
    if !crate::matrix::valid_package_word(&version) {
        return Err(invalid(url, format!("{what}: version {version:?} cannot name a file")));
    }
    let size = get("size").parse().map_err(|_| invalid(url, format!("{what}: no package size")))?;
    Ok(Some(YumKernel {
        package: MatrixDeb {
            name: name.to_owned(),
            version,
            arch: get("arch").to_owned(),
            filename: href.to_owned(),
            size,
            sha256: sha256_of(url, get("checksum"))?,
        },
        arch,
    }))
}

/// Reads repository `root`'s kernel-devel packages for `arches`.
pub fn discover(http: &Archive, root: &str, arches: &[Arch]) -> Result<Vec<YumKernel>, YumError> {
    let repomd_url = archive::join(root, "repodata/repomd.xml");
    let repomd =
        http.get_bytes(&repomd_url, REPOMD_BYTES)?.ok_or_else(|| YumError::NotFound { url: repomd_url.clone() })?;
    let primary = parse_repomd(&repomd_url, &repomd)?;
    let url = archive::join(root, &primary.href);
    let limit = primary.size.min(PRIMARY_BYTES);
    if primary.size > PRIMARY_BYTES {
        return Err(invalid(&url, format!("repomd.xml says {} bytes; at most {PRIMARY_BYTES} are read", primary.size)));
    }
    let body = http.get_bytes(&url, limit.saturating_add(1)).map_err(|e| match e {
        HttpError::TooLarge { .. } => {
            invalid(&url, format!("larger than the {} bytes repomd.xml says; refused", primary.size))
        }
        e => e.into(),
    })?;
    let body = body.ok_or_else(|| YumError::NotFound { url: url.clone() })?;
    let got = Digest::from_raw(Sha256::digest(&body).into());
    if got != primary.sha256 || body.len() as u64 != primary.size {
        return Err(YumError::Mismatch {
            url,
            want: primary.sha256,
            want_size: primary.size,
            got,
            got_size: body.len() as u64,
        });
    }
    let raw: Box<dyn Read + '_> = if primary.href.ends_with(".gz") {
        Box::new(flate2::read::GzDecoder::new(&body[..]))
    } else if primary.href.ends_with(".xz") {
        let stream = liblzma::stream::Stream::new_stream_decoder(limits::XZ_MEMLIMIT, 0)
            .map_err(|e| invalid(&url, format!("xz: {e}")))?;
        Box::new(liblzma::read::XzDecoder::new_stream(&body[..], stream))
    } else if primary.href.ends_with(".zst") {
        Box::new(zstd::stream::read::Decoder::new(&body[..]).map_err(|e| invalid(&url, format!("zstd: {e}")))?)
    } else if primary.href.ends_with(".xml") {
        Box::new(&body[..])
    } else {
        return Err(invalid(&url, "unsupported compression (gz, xz, zst or plain .xml)"));
    };
    let capped = Capped { inner: raw, left: PRIMARY_OPEN_BYTES };
    parse_primary(&url, BufReader::new(capped), arches)
}

/// Fails a read past `left` bytes (a primary that decompresses past the cap).
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            io::Error::other(format!("the primary index decompresses past {}", limits::human(PRIMARY_OPEN_BYTES)))
        })?;
        Ok(n)
    }
}

/// The matrix kernels of a repository's packages: one per package, pinned
/// by a `[[kernel.rpm]]` entry. The release is the package tree's own
/// (checked when it is built), so it is left out here.
pub fn kernels(found: &[YumKernel]) -> Vec<MatrixKernel> {
    found
        .iter()
        .map(|k| MatrixKernel {
            release: None,
            arch: k.arch.debian().to_owned(),
            package: k.package.name.clone(),
            suites: Vec::new(),
            debs: Vec::new(),
            rpms: vec![k.package.clone()],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_devel_names() {
        for ok in ["kernel-devel", "kernel-rt-devel", "kernel-64k-devel", "kernel-debug-devel"] {
            assert!(is_kernel_devel(ok), "{ok}");
        }
        for no in ["kernel", "kernel-headers", "kernel--devel", "kernel-devel-matched", "kernel-tools-libs-devel"] {
            assert!(!is_kernel_devel(no), "{no}");
        }
    }

    #[test]
    fn repomd_location_must_stay_in_repodata() {
        let repomd = |href: &str| {
            format!(
                "<?xml version=\"1.0\"?><repomd xmlns=\"http://linux.duke.edu/metadata/repo\"><data type=\"other\"><location href=\"repodata/o.xml.gz\"/></data>\
                 <data type=\"primary\"><checksum type=\"sha256\">{}</checksum><location href=\"{href}\"/><size>12</size></data></repomd>",
                "ab".repeat(32)
            )
        };
        let p = parse_repomd("u", repomd("repodata/x-primary.xml.zst").as_bytes()).unwrap();
        assert_eq!((p.href.as_str(), p.size), ("repodata/x-primary.xml.zst", 12));
        for bad in
            ["../primary.xml.gz", "/etc/passwd", "http://elsewhere/p.xml.gz", "repodata/../../x.gz", "Packages/p.xml"]
        {
            let e = parse_repomd("u", repomd(bad).as_bytes()).unwrap_err().to_string();
            assert!(e.contains("not a plain path under repodata/"), "{bad}: {e}");
        }
    }
}
