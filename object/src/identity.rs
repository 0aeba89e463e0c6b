//! Object identity — (kernel release, arch, program version) — and the
//! Tracee file name derived from it. The name is lossy, so identity is never
//! parsed back out of a file name: it travels in metadata.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A target architecture, by its `uname -m` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Arch {
    #[serde(rename = "x86_64")]
    X86_64,
    #[serde(rename = "aarch64")]
    Aarch64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// `uname -m`.
    pub fn uname(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
    /// Debian's architecture name (also OCI's platform architecture).
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }
    /// The kernel's `SRCARCH` (`arch/<dir>` in a source tree) and the suffix
    /// of `__TARGET_ARCH_*`.
    pub fn kernel_dir(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86",
            Arch::Aarch64 => "arm64",
        }
    }
    /// The clang target whose front end parses that arch's kernel headers.
    pub fn clang_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-linux-gnu",
            Arch::Aarch64 => "aarch64-linux-gnu",
        }
    }
    /// The arch this program runs on, if it is one bpfarm builds for.
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Aarch64),
            _ => None,
        }
    }
    /// The one arch a kernel release can only exist on, when its name says
    /// so: Debian's flavour suffixes (`-amd64`, `-cloud-amd64`, `-rt-amd64`;
    /// `-arm64`, `-arm64-16k`, `-cloud-arm64`, `-rt-arm64`) and the RPM
    /// `.x86_64` / `.aarch64` suffix. `None` for a name that is built for
    /// both (Ubuntu's `-generic`, a custom kernel).
    pub fn of_release(release: &str) -> Option<Arch> {
        if release.ends_with("-amd64") || release.ends_with(".x86_64") {
            Some(Arch::X86_64)
        } else if release.ends_with("-arm64") || release.ends_with("-arm64-16k") || release.ends_with(".aarch64") {
            Some(Arch::Aarch64)
        } else {
            None
        }
    }
    /// Whether a kernel with this release can exist on this arch (an
    /// `-amd64` release never runs on aarch64): a pair that cannot is never
    /// counted as missing.
    pub fn can_run(self, release: &str) -> bool {
        Arch::of_release(release).is_none_or(|a| a == self)
    }
    /// Accepts the uname, Debian/OCI and kernel-dir spellings.
    pub fn from_any(s: &str) -> Option<Arch> {
        match s {
            "x86_64" | "amd64" | "x86" => Some(Arch::X86_64),
            "aarch64" | "arm64" => Some(Arch::Aarch64),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.uname())
    }
}

impl FromStr for Arch {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Arch::from_any(s).ok_or_else(|| IdentityError::Arch(s.to_owned()))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("unknown arch {0:?}: expected x86_64 (amd64) or aarch64 (arm64)")]
    Arch(String),
    #[error("invalid kernel release {value:?}: {reason}")]
    Release { value: String, reason: &'static str },
    #[error("invalid program version {value:?}: {reason}")]
    Version { value: String, reason: &'static str },
}

/// What makes one object different from another. Deserializing goes
/// through [`Identity::new`], so an identity read from the wire (registry
/// metadata, a `.json`, an embedded section) is as valid as one built here.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "RawIdentity")]
pub struct Identity {
    /// Exactly `uname -r` of the kernel the object is built for.
    pub kernel_release: String,
    pub arch: Arch,
    /// The tracer program's version, e.g. `v0.1.0`.
    pub version: String,
}

/// The wire form of an identity, before validation.
#[derive(Deserialize)]
struct RawIdentity {
    kernel_release: String,
    arch: Arch,
    version: String,
}

impl TryFrom<RawIdentity> for Identity {
    type Error = IdentityError;
    fn try_from(r: RawIdentity) -> Result<Self, Self::Error> {
        Identity::new(&r.kernel_release, r.arch, &r.version)
    }
}

impl Identity {
    /// Builds an identity, refusing values that could not have come from
    /// `uname -r` or that would make unsafe file names.
    pub fn new(kernel_release: &str, arch: Arch, version: &str) -> Result<Self, IdentityError> {
        validate_release(kernel_release)?;
        validate_version(version)?;
        Ok(Self { kernel_release: kernel_release.to_owned(), arch, version: version.to_owned() })
    }

    /// `tracee.bpf.<release>.<version>.o` per docs/contracts.md.
    pub fn file_name(&self) -> String {
        object_file_name(&self.kernel_release, &self.version)
    }
}

/// Tracee's object file name: every `.` of the release and of the version
/// becomes `_`; everything else (dashes, `+`, a leading `v`) stays.
pub fn object_file_name(kernel_release: &str, version: &str) -> String {
    format!("tracee.bpf.{}.{}.o", kernel_release.replace('.', "_"), version.replace('.', "_"))
}

/// `uname -r` is at most 64 bytes (the utsname field is 65 with its NUL)
/// of printable ASCII without spaces; `/` would escape a directory.
pub fn validate_release(s: &str) -> Result<(), IdentityError> {
    let err = |reason| Err(IdentityError::Release { value: s.to_owned(), reason });
    if s.is_empty() {
        return err("empty");
    }
    if s.len() > 64 {
        return err("longer than 64 bytes (uname -r never is)");
    }
    if !s.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b'\\') {
        return err("only printable ASCII without spaces or slashes is allowed");
    }
    if s.starts_with('.') {
        return err("must not start with '.'");
    }
    Ok(())
}

/// A program version: what may stand in an object's file name.
pub fn validate_version(s: &str) -> Result<(), IdentityError> {
    let err = |reason| Err(IdentityError::Version { value: s.to_owned(), reason });
    if s.is_empty() {
        return err("empty");
    }
    if s.len() > 64 {
        return err("longer than 64 bytes");
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+' | b'_')) {
        return err("only letters, digits and . - + _ are allowed");
    }
    if s.starts_with('.') {
        return err("must not start with '.'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_follow_tracee() {
        assert_eq!(object_file_name("6.1.0-47-amd64", "v0.3.0"), "tracee.bpf.6_1_0-47-amd64.v0_3_0.o");
        assert_eq!(object_file_name("6.12.117+deb12-amd64", "v0.3.0"), "tracee.bpf.6_12_117+deb12-amd64.v0_3_0.o");
        // `_` already in a release (RHEL) stays, which is why names are lossy.
        assert_eq!(object_file_name("4.18.0-193.el8.x86_64", "0.3.0"), "tracee.bpf.4_18_0-193_el8_x86_64.0_3_0.o");
        assert_eq!(
            object_file_name("4_18_0-193_el8_x86_64", "0.3.0"),
            object_file_name("4.18.0-193.el8.x86_64", "0.3.0")
        );
    }

    #[test]
    fn releases_that_name_their_arch() {
        for (release, only) in [
            ("6.1.0-56-amd64", Some(Arch::X86_64)),
            ("6.12.57+deb13-cloud-amd64", Some(Arch::X86_64)),
            ("6.1.0-56-rt-amd64", Some(Arch::X86_64)),
            ("6.1.0-56-arm64", Some(Arch::Aarch64)),
            ("6.12.57+deb13-arm64-16k", Some(Arch::Aarch64)),
            ("6.12.57+deb13-cloud-arm64", Some(Arch::Aarch64)),
            ("5.14.0-427.el9.x86_64", Some(Arch::X86_64)),
            ("6.8.5-301.fc40.aarch64", Some(Arch::Aarch64)),
            ("5.15.0-91-generic", None),
            ("6.18.0", None),
        ] {
            assert_eq!(Arch::of_release(release), only, "{release}");
            for a in Arch::ALL {
                assert_eq!(a.can_run(release), only.is_none_or(|o| o == a), "{release} on {a}");
            }
        }
    }

    #[test]
    fn identity_validation() {
        let id = Identity::new("6.12.117+deb12-cloud-amd64", Arch::X86_64, "v0.1.0").unwrap();
        assert_eq!(id.file_name(), "tracee.bpf.6_12_117+deb12-cloud-amd64.v0_1_0.o");
        for bad in ["", "6.1 0", "../etc", "6.1/0", &"x".repeat(65), ".hidden", "6.1\n"] {
            assert!(
                matches!(Identity::new(bad, Arch::X86_64, "v1"), Err(IdentityError::Release { .. })),
                "{bad:?} accepted"
            );
        }
        for bad in ["", "v1/2", "v 1", "ü"] {
            assert!(matches!(Identity::new("6.1.0", Arch::X86_64, bad), Err(IdentityError::Version { .. })));
        }
    }

    #[test]
    fn deserializing_validates() {
        let ok: Identity =
            serde_json::from_str(r#"{"kernel_release":"6.1.0-56-amd64","arch":"x86_64","version":"v0.1.0"}"#).unwrap();
        assert_eq!(ok.file_name(), "tracee.bpf.6_1_0-56-amd64.v0_1_0.o");
        for (json, why) in [
            (r#"{"kernel_release":"../../etc","arch":"x86_64","version":"v1"}"#, "invalid kernel release"),
            (r#"{"kernel_release":"/etc/cron.d/x","arch":"x86_64","version":"v1"}"#, "invalid kernel release"),
            (r#"{"kernel_release":"6.1","arch":"x86_64","version":"../v1"}"#, "invalid program version"),
            (r#"{"kernel_release":"6.1","arch":"riscv64","version":"v1"}"#, "unknown variant"),
        ] {
            let e = serde_json::from_str::<Identity>(json).unwrap_err().to_string();
            assert!(e.contains(why), "{json}: {e}");
        }
    }

    #[test]
    fn arch_spellings() {
        assert_eq!("amd64".parse::<Arch>().unwrap(), Arch::X86_64);
        assert_eq!("arm64".parse::<Arch>().unwrap(), Arch::Aarch64);
        assert_eq!("aarch64".parse::<Arch>().unwrap(), Arch::Aarch64);
        assert!("riscv64".parse::<Arch>().is_err());
        assert_eq!(serde_json::to_string(&Arch::Aarch64).unwrap(), "\"aarch64\"");
        assert_eq!(Arch::Aarch64.kernel_dir(), "arm64");
    }
}
