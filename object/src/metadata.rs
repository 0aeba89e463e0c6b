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
/// `<file name>.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
}
