//! Debian header packages: what each `.deb` is (from its control data, never
//! its file name), and which flavour package pairs with which `-common` and
//! `linux-kbuild` package.
//!
//! Inspecting a package hashes it and reads its control file; the result is
//! cached under `facts/` keyed by the file's path, size, mtime and inode, so a
//! warm rebuild only `stat`s the packages.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bpfarm_object::{Arch, Digest};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::unpack::{self, UnpackError};

/// Bumped when `PackageFacts` or how it is derived changes.
const FACTS_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error("{path}: {reason}")]
    Control { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One `Depends` alternative: a name and an optional version constraint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    pub name: String,
    /// e.g. `("=", "6.1.192-2")`, `(">=", "6.1.192-2")`
    pub constraint: Option<(String, String)>,
}

/// What a `.deb` is, from its control data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageFacts {
    pub path: PathBuf,
    pub name: String,
    pub version: String,
    /// Debian architecture (`amd64`, `arm64`, `all`).
    pub deb_arch: String,
    /// First alternative of every `Depends` entry.
    pub depends: Vec<Dependency>,
    pub digest: Digest,
    pub size: u64,
}

impl PackageFacts {
    /// The package's `-common` dependency, if it is a flavour package.
    pub fn common_dep(&self) -> Option<&Dependency> {
        self.depends.iter().find(|d| {
            d.name.starts_with("linux-headers-") && (d.name.ends_with("-common") || d.name.ends_with("-common-rt"))
        })
    }
    pub fn kbuild_dep(&self) -> Option<&Dependency> {
        self.depends.iter().find(|d| d.name.starts_with("linux-kbuild-"))
    }
    pub fn is_flavour(&self) -> bool {
        self.name.starts_with("linux-headers-") && self.common_dep().is_some()
    }
    pub fn arch(&self) -> Option<Arch> {
        Arch::from_any(&self.deb_arch)
    }
}

/// Parses the fields of one control stanza (continuation lines joined).
pub fn parse_control(text: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut key: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(v) = key.as_ref().and_then(|k| fields.get_mut(k)) {
                let v: &mut String = v;
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            fields.insert(k.trim().to_owned(), v.trim().to_owned());
            key = Some(k.trim().to_owned());
        }
    }
    fields
}

/// `a (= 1), b | c (>= 2)` → first alternative of each entry.
pub fn parse_depends(s: &str) -> Vec<Dependency> {
    s.split(',')
        .filter_map(|entry| {
            let first = entry.split('|').next()?.trim();
            if first.is_empty() {
                return None;
            }
            let (name, rest) = first.split_once('(').map(|(n, r)| (n.trim(), Some(r))).unwrap_or((first, None));
            let constraint = rest.and_then(|r| {
                let r = r.trim_end_matches(')').trim();
                let op_end = r.find(|c: char| !matches!(c, '<' | '>' | '=')).unwrap_or(r.len());
                let (op, ver) = r.split_at(op_end);
                (!op.is_empty()).then(|| (op.to_owned(), ver.trim().to_owned()))
            });
            // `name:any` multiarch qualifiers do not change which package it is.
            let name = name.split(':').next().unwrap_or(name).to_owned();
            Some(Dependency { name, constraint })
        })
        .collect()
}

/// Reads (or recalls) the facts of one `.deb`. Only a regular file is read
/// (a FIFO or device named `*.deb` is refused without opening it for long).
pub fn inspect(path: &Path, facts_dir: &Path) -> Result<PackageFacts, PackageError> {
    let io = |source| PackageError::Io { path: path.to_owned(), source };
    let md = fs::metadata(path).map_err(io)?;
    if !md.is_file() {
        return Err(UnpackError::NotRegular { archive: path.to_owned(), kind: unpack::kind_of(md.file_type()) }.into());
    }
    let key = {
        let mut h = Sha256::new();
        let abs = path.canonicalize().map_err(io)?;
        h.update(format!(
            "v{FACTS_VERSION}\0{}\0{}\0{}\0{}\0{}",
            abs.display(),
            md.len(),
            md.mtime(),
            md.mtime_nsec(),
            md.ino()
        ));
        hex::encode(h.finalize())
    };
    let cached = facts_dir.join(format!("{key}.json"));
    if let Ok(bytes) = fs::read(&cached)
        && let Ok(mut facts) = serde_json::from_slice::<PackageFacts>(&bytes)
    {
        facts.path = path.to_owned();
        return Ok(facts);
    }
    let info = unpack::deb_info(path)?;
    let fields = parse_control(&info.control);
    let field = |k: &str| {
        fields.get(k).cloned().ok_or_else(|| PackageError::Control {
            path: path.to_owned(),
            reason: format!("control data has no {k} field"),
        })
    };
    let facts = PackageFacts {
        path: path.to_owned(),
        name: field("Package")?,
        version: field("Version")?,
        deb_arch: field("Architecture")?,
        depends: parse_depends(fields.get("Depends").map(String::as_str).unwrap_or("")),
        digest: info.digest,
        size: info.size,
    };
    // Best effort: a cache we cannot write only costs a re-read next time.
    if fs::create_dir_all(facts_dir).is_ok()
        && let Ok(json) = serde_json::to_vec(&facts)
    {
        let _ = crate::fsutil::write_atomic(&cached, &json);
    }
    Ok(facts)
}

/// A flavour package with the packages it needs.
#[derive(Clone, Debug)]
pub struct DebKernel {
    pub flavour: PackageFacts,
    pub common: PackageFacts,
    pub kbuild: PackageFacts,
}

/// A flavour package whose partners are not among the inputs.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{}: {missing}", .flavour.name)]
pub struct Unpaired {
    pub flavour: PackageFacts,
    pub missing: Missing,
}

/// What a flavour package lacks.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Missing {
    #[error("its -common package {}{} is not among the inputs", .0.name, constraint_text(.0))]
    Common(Dependency),
    #[error("names no linux-kbuild package in Depends")]
    KbuildDepends,
    #[error("its linux-kbuild package {}:{arch}{} is not among the inputs", .dep.name, constraint_text(.dep))]
    Kbuild { dep: Dependency, arch: String },
}

/// Pairs every flavour package with its `-common` (exact version, from its
/// `Depends`) and `linux-kbuild` package (same arch). A flavour whose
/// partners are missing comes back as an error naming what to fetch.
pub fn pair(packages: &[PackageFacts]) -> Vec<Result<DebKernel, Box<Unpaired>>> {
    fn by_name<'a>(packages: &'a [PackageFacts], name: &'a str) -> impl Iterator<Item = &'a PackageFacts> {
        packages.iter().filter(move |p| p.name == name)
    }
    packages
        .iter()
        .filter_map(|flavour| Some((flavour, flavour.common_dep().filter(|_| flavour.is_flavour())?)))
        .map(|(flavour, common_dep)| {
            let common = by_name(packages, &common_dep.name)
                .filter(|c| c.deb_arch == "all" || c.deb_arch == flavour.deb_arch)
                .find(|c| satisfies(&c.version, common_dep.constraint.as_ref()));
            let unpaired = |missing| Box::new(Unpaired { flavour: flavour.clone(), missing });
            let Some(common) = common else {
                return Err(unpaired(Missing::Common(common_dep.clone())));
            };
            let Some(kbuild_dep) = flavour.kbuild_dep() else {
                return Err(unpaired(Missing::KbuildDepends));
            };
            let mut kbuilds: Vec<&PackageFacts> =
                by_name(packages, &kbuild_dep.name).filter(|k| k.deb_arch == flavour.deb_arch).collect();
            // Prefer the kbuild built from the same source version.
            kbuilds.sort_by_key(|k| (k.version != flavour.version, k.version.clone()));
            let Some(kbuild) = kbuilds.into_iter().find(|k| satisfies(&k.version, kbuild_dep.constraint.as_ref()))
            else {
                return Err(unpaired(Missing::Kbuild { dep: kbuild_dep.clone(), arch: flavour.deb_arch.clone() }));
            };
            Ok(DebKernel { flavour: flavour.clone(), common: common.clone(), kbuild: kbuild.clone() })
        })
        .collect()
}

/// Exact-version constraints are checked; range constraints (`>=`) are
/// accepted as is: a full Debian version comparison is not needed to pair
/// packages of one archive snapshot, and the pairing prefers equal versions.
fn satisfies(version: &str, constraint: Option<&(String, String)>) -> bool {
    match constraint {
        Some((op, want)) if op == "=" => version == want,
        _ => true,
    }
}

fn constraint_text(d: &Dependency) -> String {
    d.constraint.as_ref().map(|(op, v)| format!(" ({op} {v})")).unwrap_or_default()
}

/// What a file's name claims a package is, when it is apt's
/// `<name>_<version>_<arch>.deb` (how apt and `fetch` name packages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptName {
    pub name: String,
    /// With apt's `%3a` turned back into the epoch's `:`.
    pub version: String,
    pub arch: String,
}

/// The [`AptName`] of a file (no part may hold a `_`). Only a hint of where
/// to look: what a package is comes from its control data.
pub fn apt_name(path: &Path) -> Option<AptName> {
    let stem = path.file_name()?.to_str()?.strip_suffix(".deb")?;
    let mut parts = stem.split('_');
    let (name, version, arch) = (parts.next()?, parts.next()?, parts.next()?);
    (parts.next().is_none() && ![name, version, arch].contains(&"")).then(|| AptName {
        name: name.to_owned(),
        version: version.replace("%3a", ":"),
        arch: arch.to_owned(),
    })
}

/// The `.deb` files under the given paths (files themselves, or folders,
/// not recursive).
pub fn find_debs(paths: &[PathBuf]) -> Result<Vec<PathBuf>, PackageError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let rd = fs::read_dir(p).map_err(|source| PackageError::Io { path: p.clone(), source })?;
            for e in rd {
                let e = e.map_err(|source| PackageError::Io { path: p.clone(), source })?;
                if e.path().extension().is_some_and(|x| x == "deb") {
                    out.push(e.path());
                }
            }
        } else {
            out.push(p.clone());
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_parsing() {
        let d = parse_depends(
            "linux-headers-6.1.0-56-common (= 6.1.192-2), linux-kbuild-6.1 (>= 6.1.192-2), linux-compiler-gcc-12-x86, a | b (<< 3)",
        );
        assert_eq!(d[0].name, "linux-headers-6.1.0-56-common");
        assert_eq!(d[0].constraint, Some(("=".into(), "6.1.192-2".into())));
        assert_eq!(d[1].constraint, Some((">=".into(), "6.1.192-2".into())));
        assert_eq!(d[2].constraint, None);
        assert_eq!(d[3].name, "a");
        assert_eq!(d.len(), 4);
    }

    #[test]
    fn control_parsing_joins_continuations() {
        let f = parse_control("Package: x\nDepends: a,\n b\nVersion: 1\n\nPackage: second\n");
        assert_eq!(f["Package"], "x");
        assert_eq!(f["Depends"], "a, b");
        assert_eq!(f["Version"], "1");
    }

    #[test]
    fn apt_names_are_name_version_arch() {
        let n = |s: &str| apt_name(Path::new(s)).map(|a| (a.name, a.version, a.arch));
        let t = |a: &str, b: &str, c: &str| Some((a.to_owned(), b.to_owned(), c.to_owned()));
        assert_eq!(
            n("/c/linux-headers-6.1.0-56-amd64_6.1.192-2_amd64.deb"),
            t("linux-headers-6.1.0-56-amd64", "6.1.192-2", "amd64")
        );
        assert_eq!(n("linux-kbuild-6.1_1%3a6.1.192-2_arm64.deb"), t("linux-kbuild-6.1", "1:6.1.192-2", "arm64"));
        assert_eq!(n("renamed.deb"), None);
        assert_eq!(n("a_b.deb"), None);
        assert_eq!(n("a_b_c_d.deb"), None);
        assert_eq!(n("_1_amd64.deb"), None);
        assert_eq!(n("a_1_amd64.rpm"), None);
        assert_eq!(n("sha256"), None);
    }

    fn facts(name: &str, version: &str, arch: &str, depends: &str) -> PackageFacts {
        PackageFacts {
            path: PathBuf::from(format!("{name}.deb")),
            name: name.into(),
            version: version.into(),
            deb_arch: arch.into(),
            depends: parse_depends(depends),
            digest: Digest::of_bytes(name.as_bytes()),
            size: 1,
        }
    }

    #[test]
    fn pairing_uses_control_data() {
        let pkgs = vec![
            facts(
                "linux-headers-6.1.0-56-amd64",
                "6.1.192-2",
                "amd64",
                "linux-headers-6.1.0-56-common (= 6.1.192-2), linux-kbuild-6.1 (>= 6.1.192-2)",
            ),
            facts(
                "linux-headers-6.1.0-56-rt-amd64",
                "6.1.192-2",
                "amd64",
                "linux-headers-6.1.0-56-common-rt (= 6.1.192-2), linux-kbuild-6.1 (>= 6.1.192-2)",
            ),
            facts("linux-headers-6.1.0-56-common", "6.1.192-2", "all", ""),
            // Same name, other version: must not be picked.
            facts("linux-headers-6.1.0-56-common-rt", "6.1.191-1", "all", ""),
            facts("linux-kbuild-6.1", "6.1.192-2", "amd64", ""),
            facts("linux-kbuild-6.1", "6.1.192-2", "arm64", ""),
        ];
        let r = pair(&pkgs);
        assert_eq!(r.len(), 2);
        let ok = r[0].as_ref().unwrap();
        assert_eq!(ok.common.name, "linux-headers-6.1.0-56-common");
        assert_eq!(ok.kbuild.deb_arch, "amd64");
        let err = r[1].as_ref().unwrap_err();
        assert!(matches!(&err.missing, Missing::Common(d) if d.name == "linux-headers-6.1.0-56-common-rt"));
        assert_eq!(
            err.to_string(),
            "linux-headers-6.1.0-56-rt-amd64: its -common package linux-headers-6.1.0-56-common-rt (= 6.1.192-2) is not among the inputs"
        );
    }
}
