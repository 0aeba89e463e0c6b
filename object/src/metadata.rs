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

/// How an object was compiled, or that nobody said.
///
/// On the wire a string: `headers`, `btf`, or `unknown (<origin>)` for
/// [`BuildMode::Unattested`] (the form every earlier bpfarm wrote, so old
/// readers and stored rows agree with new ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BuildMode {
    /// Against a kernel's headers: the arch's clang front end, then llc.
    Headers,
    /// Against a BTF blob: `vmlinux.h` from bpftool, clang straight to BPF.
    Btf,
    /// The bytes came without build facts; all that is known is where from.
    Unattested(Origin),
}

/// Where metadata without build facts was made up: what vouches for the
/// object is only its digest (and the identity embedded in it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A static layout that serves the object and its `.sha256`, no `.json`.
    StaticLayout,
    /// An OCI registry: the manifest names identity, digest and size only.
    OciFetch,
    /// An object pushed to a bpfarm registry through its OCI face (`/v2`).
    OciPush,
}

impl Origin {
    const ALL: [Origin; 3] = [Origin::StaticLayout, Origin::OciFetch, Origin::OciPush];

    /// The words inside `unknown (...)` on the wire.
    pub fn describe(self) -> &'static str {
        match self {
            Origin::StaticLayout => "static layout without .json",
            Origin::OciFetch => "fetched through OCI",
            Origin::OciPush => "pushed through OCI",
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

impl std::fmt::Display for BuildMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildMode::Headers => f.write_str("headers"),
            BuildMode::Btf => f.write_str("btf"),
            BuildMode::Unattested(o) => write!(f, "unknown ({o})"),
        }
    }
}

impl std::str::FromStr for BuildMode {
    type Err = MetadataError;
    fn from_str(s: &str) -> Result<Self, MetadataError> {
        match s {
            "headers" => return Ok(BuildMode::Headers),
            "btf" => return Ok(BuildMode::Btf),
            _ => {}
        }
        Origin::ALL
            .into_iter()
            .find(|o| s.strip_prefix("unknown (").and_then(|r| r.strip_suffix(')')) == Some(o.describe()))
            .map(BuildMode::Unattested)
            .ok_or_else(|| MetadataError::BuildMode(s.to_owned()))
    }
}

impl Serialize for BuildMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BuildMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The flags each compiler stage ran with, input folders as fixed
/// placeholders (`/bpfarm/kernel/source`, ...). `llc` is empty in BTF mode,
/// where clang emits BPF itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "WireFlags")]
pub struct Flags {
    pub clang: Vec<String>,
    pub llc: Vec<String>,
}

/// What separated llc's flags from clang's in the flat list that metadata
/// carried before [`Flags`] was split (still read, never written).
const LEGACY_LLC_MARKER: &str = "| llc";

/// `flags` as the wire has carried it: `{clang, llc}`, or the older flat
/// list with [`LEGACY_LLC_MARKER`] between the two stages.
#[derive(Deserialize)]
#[serde(untagged, expecting = "flags as {\"clang\": [...], \"llc\": [...]} or a list of strings")]
enum WireFlags {
    Split {
        clang: Vec<String>,
        #[serde(default)]
        llc: Vec<String>,
    },
    Flat(Vec<String>),
}

impl From<WireFlags> for Flags {
    fn from(w: WireFlags) -> Self {
        match w {
            WireFlags::Split { clang, llc } => Flags { clang, llc },
            WireFlags::Flat(mut clang) => {
                let llc = match clang.iter().position(|f| f == LEGACY_LLC_MARKER) {
                    Some(i) => clang.split_off(i).into_iter().skip(1).collect(),
                    None => Vec::new(),
                };
                Flags { clang, llc }
            }
        }
    }
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
    pub build_mode: BuildMode,
    pub sources: Vec<SourcePackage>,
    /// Digest over the tracer program's source files.
    pub program_digest: Digest,
    pub compiler: Compiler,
    pub flags: Flags,
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
    #[error("build_mode {0:?} is not headers, btf or one of the unknown (...) origins")]
    BuildMode(String),
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
    build_mode: BuildMode,
    sources: Vec<SourcePackage>,
    program_digest: Digest,
    compiler: Compiler,
    flags: Flags,
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
    /// Metadata for bytes whose origin vouched only for identity, digest
    /// and size (a static layout without `.json`, an OCI manifest, a `/v2`
    /// push): the build facts say [`BuildMode::Unattested`], the compiler
    /// `unknown (<origin>)`, the program digest is that of no bytes at all,
    /// and there are no sources, flags or build time.
    pub fn unattested(identity: Identity, digest: Digest, size: u64, origin: Origin) -> Self {
        ObjectMetadata {
            file_name: identity.file_name(),
            identity,
            digest,
            size,
            kernel: KernelFacts::default(),
            build_mode: BuildMode::Unattested(origin),
            sources: vec![],
            program_digest: Digest::of_bytes(b""),
            compiler: Compiler { clang: format!("unknown ({origin})"), llc: None },
            flags: Flags::default(),
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

    fn sample() -> ObjectMetadata {
        ObjectMetadata {
            identity: Identity::new("6.1.0-56-amd64", Arch::X86_64, "v0.1.0").unwrap(),
            file_name: "tracee.bpf.6_1_0-56-amd64.v0_1_0.o".into(),
            digest: Digest::of_bytes(b"o"),
            size: 1,
            kernel: KernelFacts { uname_version: Some("#1 SMP".into()), config_digest: None },
            build_mode: BuildMode::Headers,
            sources: vec![SourcePackage {
                kind: SourceKind::Deb,
                name: "linux-headers-6.1.0-56-amd64".into(),
                version: "6.1.192-2".into(),
                digest: Digest::of_bytes(b"deb"),
            }],
            program_digest: Digest::of_bytes(b"src"),
            compiler: Compiler { clang: "clang 14".into(), llc: Some("LLVM version 14".into()) },
            flags: Flags { clang: vec!["-O2".into(), "-g".into()], llc: vec!["-march=bpfel".into()] },
            built_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn json_round_trip_keeps_identity_flat_and_splits_flags() {
        let m = sample();
        let v: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(v["kernel_release"], "6.1.0-56-amd64");
        assert_eq!(v["arch"], "x86_64");
        assert_eq!(v["sources"][0]["kind"], "deb");
        assert_eq!(v["build_mode"], "headers");
        assert_eq!(v["flags"], serde_json::json!({ "clang": ["-O2", "-g"], "llc": ["-march=bpfel"] }));
        let back: ObjectMetadata = serde_json::from_value(v).unwrap();
        assert_eq!(back, m);
    }

    /// A `.json` exactly as builders before the typed metadata wrote it
    /// (what install paths and registries already hold).
    #[test]
    fn metadata_in_the_old_form_still_reads() {
        let old = r##"{
  "kernel_release": "6.1.0-56-amd64", "arch": "x86_64", "version": "v0.1.0",
  "file_name": "tracee.bpf.6_1_0-56-amd64.v0_1_0.o",
  "digest": "sha256:65c74c15a686187bb6bbf9958f494fc6b80068034a659a9ad44991b08c58f2d2",
  "size": 1,
  "kernel": { "uname_version": "#1 SMP" },
  "build_mode": "headers",
  "sources": [ { "kind": "deb", "name": "linux-headers-6.1.0-56-amd64", "version": "6.1.192-2",
                 "digest": "sha256:0000000000000000000000000000000000000000000000000000000000000000" } ],
  "program_digest": "sha256:0000000000000000000000000000000000000000000000000000000000000001",
  "compiler": { "clang": "clang 14", "llc": "LLVM version 14" },
  "flags": [ "-O2", "-g", "| llc", "-march=bpfel", "-mcpu=v3" ],
  "built_at": "2026-01-01T00:00:00Z"
}"##;
        let m: ObjectMetadata = serde_json::from_str(old).unwrap();
        assert_eq!(m.build_mode, BuildMode::Headers);
        assert_eq!(
            m.flags,
            Flags { clang: vec!["-O2".into(), "-g".into()], llc: vec!["-march=bpfel".into(), "-mcpu=v3".into()] }
        );
        // Written back in the new form, which reads the same.
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["flags"]["llc"], serde_json::json!(["-march=bpfel", "-mcpu=v3"]));
        assert_eq!(serde_json::from_value::<ObjectMetadata>(v).unwrap(), m);

        // BTF mode: no marker, every flag is clang's.
        let mut v: serde_json::Value = serde_json::from_str(old).unwrap();
        v["build_mode"] = "btf".into();
        v["flags"] = serde_json::json!(["--target=bpfel", "-g"]);
        let m: ObjectMetadata = serde_json::from_value(v).unwrap();
        assert_eq!((m.build_mode, m.flags.llc.len(), m.flags.clang.len()), (BuildMode::Btf, 0, 2));
    }

    #[test]
    fn every_build_mode_reads_back_as_written() {
        let cases = [
            (BuildMode::Headers, "headers"),
            (BuildMode::Btf, "btf"),
            (BuildMode::Unattested(Origin::StaticLayout), "unknown (static layout without .json)"),
            (BuildMode::Unattested(Origin::OciFetch), "unknown (fetched through OCI)"),
            (BuildMode::Unattested(Origin::OciPush), "unknown (pushed through OCI)"),
        ];
        for (mode, wire) in cases {
            assert_eq!(serde_json::to_value(mode).unwrap(), wire);
            assert_eq!(serde_json::from_value::<BuildMode>(wire.into()).unwrap(), mode);
        }
        for bad in ["", "Headers", "kernel-headers", "unknown ()", "unknown (somewhere)", "unknown (pushed through OCI"]
        {
            let e = serde_json::from_value::<BuildMode>(bad.into()).unwrap_err().to_string();
            assert!(e.contains(&format!("build_mode {bad:?}")), "{bad}: {e}");
        }
        let mut v = serde_json::to_value(sample()).unwrap();
        v["flags"] = 7.into();
        let e = serde_json::from_value::<ObjectMetadata>(v).unwrap_err().to_string();
        assert!(e.contains("flags as"), "{e}");
    }

    #[test]
    fn unattested_metadata_says_where_it_came_from_and_nothing_more() {
        let id = Identity::new("6.1.0-56-amd64", Arch::X86_64, "v0.1.0").unwrap();
        let m = ObjectMetadata::unattested(id.clone(), Digest::of_bytes(b"o"), 1, Origin::OciPush);
        assert_eq!(m.file_name, id.file_name());
        assert_eq!(m.build_mode, BuildMode::Unattested(Origin::OciPush));
        assert_eq!(m.compiler.clang, "unknown (pushed through OCI)");
        assert!(m.sources.is_empty() && m.flags == Flags::default() && m.built_at.is_empty());
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["build_mode"], "unknown (pushed through OCI)");
        assert_eq!(serde_json::from_value::<ObjectMetadata>(v).unwrap(), m);
    }

    #[test]
    fn wire_file_names_must_be_the_identitys() {
        let id = Identity::new("6.1.0-56-amd64", Arch::X86_64, "v0.1.0").unwrap();
        let good = serde_json::to_value(ObjectMetadata::unattested(
            id.clone(),
            Digest::of_bytes(b"o"),
            1,
            Origin::StaticLayout,
        ))
        .unwrap();
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
