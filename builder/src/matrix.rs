//! Kernel matrices (`kernels/<name>.toml`): which flavour packages, for
//! which Debian arch, make up a named set of kernels.
//!
//! Two shapes of `[[kernel]]` entry are read:
//! - pinned (what `bpfarm-builder discover` writes): the kernel's flavour,
//!   `-common` and `linux-kbuild` packages as `[[kernel.deb]]` tables with the
//!   archive's file name, size and sha256, so `fetch` can download and check
//!   them without apt;
//! - by name only (`package`, `arch`, `release`): the packages must already
//!   be in the package cache under their apt file names; a build opens
//!   those the entries and their flavours' `Depends` name (see
//!   `build::plan`), not the whole cache.

use std::path::{Component, Path, PathBuf};

use bpfarm_object::{Arch, Digest};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matrix {
    pub name: String,
    #[serde(default)]
    pub distro: String,
    /// The archive suites a discovered matrix was read from (provenance).
    #[serde(rename = "suite", default, skip_serializing_if = "Vec::is_empty")]
    pub suites: Vec<MatrixSuite>,
    #[serde(rename = "kernel", default)]
    pub kernels: Vec<MatrixKernel>,
}

/// One signed archive index a matrix was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixSuite {
    /// The `dists/<name>` folder (`bookworm-security`, `experimental`).
    pub name: String,
    /// The Release file's `Codename` and `Suite` (`bookworm`, `oldstable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codename: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// The Release file's `Date` and `Valid-Until`, verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<String>,
    /// Debian arches whose package index was read.
    #[serde(default)]
    pub arches: Vec<String>,
    /// Kernels found per arch, in `arches` order.
    #[serde(default)]
    pub kernels: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixKernel {
    /// The kernel release the package must turn out to hold (checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// Its Debian arch (`amd64`, `arm64`).
    pub arch: String,
    /// The flavour package, e.g. `linux-headers-6.1.0-56-amd64`.
    pub package: String,
    /// The suites that carry this exact flavour package.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suites: Vec<String>,
    /// Pinned packages: the flavour, its `-common` and its `linux-kbuild`.
    #[serde(rename = "deb", default, skip_serializing_if = "Vec::is_empty")]
    pub debs: Vec<MatrixDeb>,
    /// A pinned RPM kernel-devel package (`discover --yum-repo`): one
    /// self-contained tree, `filename` relative to the yum repository root,
    /// `version` its version-release, `arch` RPM's (`x86_64`, `aarch64`).
    #[serde(rename = "rpm", default, skip_serializing_if = "Vec::is_empty")]
    pub rpms: Vec<MatrixDeb>,
}

impl MatrixKernel {
    /// What selections match and reports name: the release, else an RPM's
    /// location (it names version and arch), else the package.
    pub fn label(&self) -> &str {
        self.release.as_deref().or_else(|| self.rpms.first().map(|r| r.filename.as_str())).unwrap_or(&self.package)
    }
}

/// One package as the archive's index describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixDeb {
    pub name: String,
    pub version: String,
    /// Debian arch of the package (`all` for `-common`).
    pub arch: String,
    /// Path below the archive root (`pool/main/l/linux/…deb`).
    pub filename: String,
    pub size: u64,
    #[serde(with = "hex_digest")]
    pub sha256: Digest,
}

impl MatrixDeb {
    /// apt's file name for it: `<name>_<version>_<arch>.deb`, `:` as `%3a`
    /// (`.rpm` for an RPM, so `--headers DIR` reads it as one).
    pub fn apt_file_name(&self) -> String {
        let ext = if self.filename.ends_with(".rpm") { "rpm" } else { "deb" };
        format!("{}_{}_{}.{ext}", self.name, self.version.replace(':', "%3a"), self.arch)
    }
}

/// The sha256 as the archive writes it: 64 hex characters.
mod hex_digest {
    use bpfarm_object::Digest;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(d.hex())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let hex = String::deserialize(d)?;
        format!("sha256:{hex}").parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{path}: no [[kernel]] entries")]
    Empty { path: PathBuf },
    #[error("{path}: kernel {kernel}: {reason}")]
    Invalid { path: PathBuf, kernel: String, reason: String },
    #[error("--select {pattern:?}: {source}")]
    Select {
        pattern: String,
        #[source]
        source: regex::Error,
    },
    #[error("--select {patterns:?} matches none of the {total} kernels of {path}")]
    NothingSelected { path: PathBuf, patterns: Vec<String>, total: usize },
}

/// Whether a package's archive path is one a mirror can serve and a cache
/// can name: relative, plain components, no `..`, no URL syntax.
pub fn valid_archive_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 1024
        && p.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#' | b'%' | b'\\'))
        && Path::new(p).components().all(|c| matches!(c, Component::Normal(_)))
}

/// Debian package names and versions as the policy allows them (names
/// `[a-z0-9+.-]`, versions `[A-Za-z0-9.+~:-]`), so they can name files.
pub fn valid_package_word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && !s.starts_with(['.', '-'])
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'~' | b':' | b'-'))
}

impl Matrix {
    pub fn load(path: &Path) -> Result<Self, MatrixError> {
        let text = std::fs::read_to_string(path).map_err(|source| MatrixError::Io { path: path.to_owned(), source })?;
        let m: Matrix = toml::from_str(&text).map_err(|source| MatrixError::Parse { path: path.to_owned(), source })?;
        if m.kernels.is_empty() {
            return Err(MatrixError::Empty { path: path.to_owned() });
        }
        for k in &m.kernels {
            m.check(k).map_err(|reason| MatrixError::Invalid {
                path: path.to_owned(),
                kernel: k.label().to_owned(),
                reason,
            })?;
        }
        Ok(m)
    }

    fn check(&self, k: &MatrixKernel) -> Result<(), String> {
        if Arch::from_any(&k.arch).is_none() {
            return Err(format!("arch {:?} is not one bpfarm builds for", k.arch));
        }
        if !k.rpms.is_empty() {
            if !k.debs.is_empty() || k.rpms.len() != 1 {
                return Err("a kernel pins either its .debs or exactly one [[kernel.rpm]]".into());
            }
            let r = &k.rpms[0];
            if !valid_archive_path(&r.filename) || !r.filename.ends_with(".rpm") {
                return Err(format!("{}: file name {:?} is not a plain relative .rpm path", r.name, r.filename));
            }
            if r.name != k.package || !valid_package_word(&r.name) || !valid_package_word(&r.version) {
                return Err(format!(
                    "{} {}: not the kernel's package, or not a package name and version",
                    r.name, r.version
                ));
            }
            return Ok(());
        }
        if k.debs.is_empty() {
            return Ok(());
        }
        if !k.debs.iter().any(|d| d.name == k.package && d.arch == k.arch) {
            return Err(format!("its [[kernel.deb]] entries do not include the flavour package {}", k.package));
        }
        for d in &k.debs {
            if !valid_archive_path(&d.filename) {
                return Err(format!("{}: file name {:?} is not a plain relative archive path", d.name, d.filename));
            }
            if !valid_package_word(&d.name) || !valid_package_word(&d.version) || !valid_package_word(&d.arch) {
                return Err(format!(
                    "{} {} {}: not a Debian package name, version and arch",
                    d.name, d.version, d.arch
                ));
            }
        }
        Ok(())
    }

    /// Keeps the kernels whose release (or package, when the release is not
    /// pinned) matches any of `patterns`; no patterns keeps all.
    pub fn select(mut self, patterns: &[String], path: &Path) -> Result<Self, MatrixError> {
        if patterns.is_empty() {
            return Ok(self);
        }
        let res = patterns
            .iter()
            .map(|p| regex::Regex::new(p).map_err(|source| MatrixError::Select { pattern: p.clone(), source }))
            .collect::<Result<Vec<_>, _>>()?;
        let total = self.kernels.len();
        self.kernels.retain(|k| res.iter().any(|r| r.is_match(k.label())));
        if self.kernels.is_empty() {
            return Err(MatrixError::NothingSelected { path: path.to_owned(), patterns: patterns.to_vec(), total });
        }
        Ok(self)
    }

    /// Every pinned package of the matrix, once (by digest), in matrix order.
    pub fn debs(&self) -> Vec<&MatrixDeb> {
        let mut seen = std::collections::HashSet::new();
        self.kernels.iter().flat_map(|k| &k.debs).filter(|d| seen.insert(d.sha256.clone())).collect()
    }

    /// Every pinned RPM of the matrix, once (by digest), in matrix order.
    pub fn rpms(&self) -> Vec<&MatrixDeb> {
        let mut seen = std::collections::HashSet::new();
        self.kernels.iter().flat_map(|k| &k.rpms).filter(|d| seen.insert(d.sha256.clone())).collect()
    }

    /// The TOML text, after a comment header; the same matrix always gives
    /// the same bytes.
    pub fn to_toml(&self, header: &str) -> Result<String, toml::ser::Error> {
        let mut out = String::new();
        for line in header.lines() {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
        out.push_str(&toml::to_string(self)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_matrices_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels");
        for name in ["default.toml", "debian.toml"] {
            let m = Matrix::load(&root.join(name)).unwrap();
            assert!(!m.kernels.is_empty(), "{name}");
            assert!(m.kernels.iter().any(|k| k.arch == "arm64"), "{name} has no arm64 kernel");
            assert!(m.kernels.iter().all(|k| k.debs.len() == 3), "{name}: every kernel is pinned");
        }
    }

    #[test]
    fn unknown_fields_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.toml");
        std::fs::write(&p, "name = \"x\"\n[[kernel]]\npackage = \"p\"\narch = \"amd64\"\nflavor = \"typo\"\n").unwrap();
        let e = Matrix::load(&p).unwrap_err().to_string();
        assert!(e.contains("flavor"), "{e}");
    }

    fn deb(name: &str, filename: &str) -> MatrixDeb {
        MatrixDeb {
            name: name.into(),
            version: "1:6.1-1".into(),
            arch: "amd64".into(),
            filename: filename.into(),
            size: 10,
            sha256: Digest::of_bytes(name.as_bytes()),
        }
    }

    fn kernel(release: &str, debs: Vec<MatrixDeb>) -> MatrixKernel {
        MatrixKernel {
            release: Some(release.into()),
            arch: "amd64".into(),
            package: format!("linux-headers-{release}"),
            suites: vec!["bookworm".into()],
            debs,
            rpms: vec![],
        }
    }

    #[test]
    fn pinned_round_trip_is_byte_stable() {
        let release = "6.1.0-56-amd64";
        let m = Matrix {
            name: "t".into(),
            distro: "debian".into(),
            suites: vec![],
            kernels: vec![kernel(release, vec![deb(&format!("linux-headers-{release}"), "pool/main/l/linux/a.deb")])],
        };
        let text = m.to_toml("made by a test").unwrap();
        assert!(text.starts_with("# made by a test\n"), "{text}");
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.toml");
        std::fs::write(&p, &text).unwrap();
        let back = Matrix::load(&p).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.to_toml("made by a test").unwrap(), text);
        assert_eq!(back.kernels[0].debs[0].apt_file_name(), "linux-headers-6.1.0-56-amd64_1%3a6.1-1_amd64.deb");
    }

    #[test]
    fn hostile_archive_paths_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.toml");
        for bad in ["../../etc/passwd", "/etc/passwd", "pool/a.deb?x=1", "pool/../../a.deb", "pool/a b.deb", ""] {
            let release = "6.1.0-56-amd64";
            let m = Matrix {
                name: "t".into(),
                distro: String::new(),
                suites: vec![],
                kernels: vec![kernel(release, vec![deb(&format!("linux-headers-{release}"), bad)])],
            };
            std::fs::write(&p, m.to_toml("").unwrap()).unwrap();
            let e = Matrix::load(&p).unwrap_err().to_string();
            assert!(e.contains("not a plain relative archive path"), "{bad}: {e}");
        }
    }

    #[test]
    fn selection_by_release() {
        let m = Matrix {
            name: "t".into(),
            distro: String::new(),
            suites: vec![],
            kernels: ["5.10.0-35-amd64", "6.1.0-56-amd64", "6.12.117+deb12-amd64"]
                .iter()
                .map(|r| kernel(r, vec![]))
                .collect(),
        };
        let p = Path::new("m.toml");
        let s = m.clone().select(&[r"^5\.10\.".into(), r"^6\.12\.".into()], p).unwrap();
        assert_eq!(
            s.kernels.iter().map(|k| k.label()).collect::<Vec<_>>(),
            ["5.10.0-35-amd64", "6.12.117+deb12-amd64"]
        );
        let e = m.clone().select(&["^7\\.".into()], p).unwrap_err().to_string();
        assert!(e.contains("matches none of the 3 kernels"), "{e}");
        assert!(m.select(&["(".into()], p).unwrap_err().to_string().contains("--select \"(\""));
    }
}
