//! The metadata that travels with every object: identity, digest, size,
//! where the headers came from, and how it was compiled.

use serde::{Deserialize, Serialize};

use crate::{Digest, Identity};

/// What kind of input the kernel's types came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// A Debian/Ubuntu `.deb` (flavour, `-common` or `linux-kbuild`).
    Deb,
    /// An unpacked header tree (what `KERN_HEADERS` points at).
    Tree,
    /// A BTF blob (`/sys/kernel/btf/vmlinux` or an archived `.btf`).
    Btf,
}

/// One input the object was built from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePackage {
    pub kind: SourceKind,
    /// Package name, or the path of a tree or BTF file.
    pub name: String,
    /// Package version; empty for trees and BTF blobs.
    #[serde(default)]
    pub version: String,
    /// The digest of the package file or BTF blob (trees: of their header
    /// content as the builder hashed it).
    pub digest: Digest,
}

/// What disambiguates one kernel build from another with the same `uname -r`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelFacts {
    /// The kernel's `uname -v` build string, where the headers record it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uname_version: Option<String>,
    /// sha256 of the kernel's `.config`, where the headers carry one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_digest: Option<Digest>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compiler {
    /// First line of `clang --version`.
    pub clang: String,
    /// First line naming the LLVM version in `llc --version`, when llc ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llc: Option<String>,
}

/// Everything known about one built object. Written beside the object as
/// `<file name>.json`. Deserializing validates the identity and refuses a
/// `file_name` that is not the one the identity makes, so a name read from
/// the wire can never point anywhere else; still, paths are always derived
/// from `identity.file_name()`, never from this field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawObjectMetadata")]
pub struct ObjectMetadata {
    #[serde(flatten)]
    pub identity: Identity,
    pub file_name: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub kernel: KernelFacts,
    /// `headers` or `btf`.
    pub build_mode: String,
    pub sources: Vec<SourcePackage>,
    /// Digest over the tracer program's source files.
    pub program_digest: Digest,
    pub compiler: Compiler,
    pub flags: Vec<String>,
    /// RFC 3339, UTC. The object bytes do not depend on it.
    pub built_at: String,
}

/// Metadata that does not fit what it claims to be, or what it was fetched for.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetadataError {
    #[error("file_name {found:?} is not the name its identity makes ({expected:?})")]
    FileName { found: String, expected: String },
    #[error("its {field} is {found:?}, expected {expected:?}")]
    Mismatch { field: &'static str, found: String, expected: String },
}

/// The wire form of [`ObjectMetadata`], before its checks.
#[derive(Deserialize)]
struct RawObjectMetadata {
    #[serde(flatten)]
    identity: Identity,
    file_name: String,
    digest: Digest,
    size: u64,
    #[serde(default)]
    kernel: KernelFacts,
    build_mode: String,
    sources: Vec<SourcePackage>,
    program_digest: Digest,
    compiler: Compiler,
    flags: Vec<String>,
    built_at: String,
}

impl TryFrom<RawObjectMetadata> for ObjectMetadata {
    type Error = MetadataError;
    fn try_from(r: RawObjectMetadata) -> Result<Self, Self::Error> {
        let expected = r.identity.file_name();
        if r.file_name != expected {
            return Err(MetadataError::FileName { found: r.file_name, expected });
        }
        Ok(ObjectMetadata {
            identity: r.identity,
            file_name: r.file_name,
            digest: r.digest,
            size: r.size,
            kernel: r.kernel,
            build_mode: r.build_mode,
            sources: r.sources,
            program_digest: r.program_digest,
            compiler: r.compiler,
            flags: r.flags,
            built_at: r.built_at,
        })
    }
}

impl ObjectMetadata {
    /// Minimal metadata for bytes whose origin said nothing more (a static
    /// layout without `.json`, an OCI manifest): identity, digest, size.
    pub fn minimal(identity: Identity, digest: Digest, size: u64, origin: &str) -> Self {
        ObjectMetadata {
            file_name: identity.file_name(),
            identity,
            program_digest: digest.clone(),
            digest,
            size,
            kernel: KernelFacts::default(),
            build_mode: format!("unknown ({origin})"),
            sources: vec![],
            compiler: Compiler { clang: format!("unknown ({origin})"), llc: None },
            flags: vec![],
            built_at: String::new(),
        }
    }

    /// The metadata must be for exactly `id`; the error names the first
    /// field that differs.
    pub fn check_identity(&self, id: &Identity) -> Result<(), MetadataError> {
        let m = &self.identity;
        let mismatch = |field, found: &str, expected: &str| {
            Err(MetadataError::Mismatch { field, found: found.to_owned(), expected: expected.to_owned() })
        };
        if m.kernel_release != id.kernel_release {
            return mismatch("kernel_release", &m.kernel_release, &id.kernel_release);
        }
        if m.arch != id.arch {
            return mismatch("arch", m.arch.uname(), id.arch.uname());
        }
        if m.version != id.version {
            return mismatch("version", &m.version, &id.version);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Arch;

    #[test]
    fn json_round_trip_keeps_identity_flat() {
        let m = ObjectMetadata {
            identity: Identity::new("6.1.0-56-amd64", Arch::X86_64, "v0.1.0").unwrap(),
            file_name: "tracee.bpf.6_1_0-56-amd64.v0_1_0.o".into(),
            digest: Digest::of_bytes(b"o"),
            size: 1,
            kernel: KernelFacts { uname_version: Some("#1 SMP".into()), config_digest: None },
            build_mode: "headers".into(),
            sources: vec![SourcePackage {
                kind: SourceKind::Deb,
                name: "linux-headers-6.1.0-56-amd64".into(),
                version: "6.1.192-2".into(),
                digest: Digest::of_bytes(b"deb"),
            }],
            program_digest: Digest::of_bytes(b"src"),
            compiler: Compiler { clang: "clang 14".into(), llc: None },
            flags: vec!["-O2".into()],
            built_at: "2026-01-01T00:00:00Z".into(),
        };
        let v: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(v["kernel_release"], "6.1.0-56-amd64");
        assert_eq!(v["arch"], "x86_64");
        assert_eq!(v["sources"][0]["kind"], "deb");
        let back: ObjectMetadata = serde_json::from_value(v).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn wire_file_names_must_be_the_identitys() {
        let id = Identity::new("6.1.0-56-amd64", Arch::X86_64, "v0.1.0").unwrap();
        let good =
            serde_json::to_value(ObjectMetadata::minimal(id.clone(), Digest::of_bytes(b"o"), 1, "test")).unwrap();
        for hostile in ["/etc/cron.d/x", "../../x", "tracee.bpf.6_1_0-56-amd64.v0_1_0.o/../x", ""] {
            let mut v = good.clone();
            v["file_name"] = hostile.into();
            let e = serde_json::from_value::<ObjectMetadata>(v).unwrap_err().to_string();
            assert!(e.contains("file_name") && e.contains(&format!("{hostile:?}")), "{hostile}: {e}");
        }
        let mut v = good.clone();
        v["kernel_release"] = "../etc".into();
        assert!(
            serde_json::from_value::<ObjectMetadata>(v).unwrap_err().to_string().contains("invalid kernel release")
        );
        let m: ObjectMetadata = serde_json::from_value(good).unwrap();
        assert_eq!(m.check_identity(&id), Ok(()));
        let arm = Identity::new("6.1.0-56-amd64", Arch::Aarch64, "v0.1.0").unwrap();
        let e = m.check_identity(&arm).unwrap_err().to_string();
        assert_eq!(e, "its arch is \"x86_64\", expected \"aarch64\"");
    }
}
