//! The identity an object carries inside itself: a non-allocated ELF
//! section, `.bpfarm.identity`, holding canonical JSON (keys sorted, no
//! whitespace) of the kernel release, arch, program version, what
//! disambiguates the kernel (`uname -v`, `.config` digest) when known, and
//! the program's source digest. libbpf skips sections it does not know, so
//! the object loads unchanged; an object found by path can be checked
//! without any `.json` beside it.
//!
//! The bytes are a function of the object and the identity only (no time,
//! no path): embedding the same identity into the same object always gives
//! the same bytes. This is a label, not a signature: it tells an object
//! built for another kernel from the right one; integrity comes from the
//! digest (and later signatures).

use object::elf;
use object::read::elf::{FileHeader, SectionHeader};
use object::{Endianness, U32, U64};
use serde::{Deserialize, Serialize};

use crate::{Arch, Digest, Identity, IdentityError, KernelFacts};

/// The section's name.
pub const SECTION: &str = ".bpfarm.identity";
/// The layout of the JSON in the section; bumped when a reader must refuse
/// what it cannot understand.
pub const FORMAT: u32 = 1;
/// The largest section an agent reads (real ones are a few hundred bytes).
const MAX_SECTION: u64 = 16 << 10;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("not an ELF object: {0}")]
    Elf(String),
    #[error("not a BPF relocatable object (ELF type {e_type}, machine {e_machine})")]
    NotBpf { e_type: u16, e_machine: u16 },
    #[error("it has {0} {SECTION} sections; an object carries exactly one")]
    Duplicate(usize),
    #[error("its {SECTION} section is {0} bytes, over the {MAX_SECTION}-byte limit")]
    TooLarge(u64),
    #[error("its {SECTION} section is not readable: {0}")]
    Json(String),
    #[error("its {SECTION} section has format {0}, this program understands {FORMAT}")]
    Format(u32),
    #[error("its {SECTION} section names an invalid identity: {0}")]
    Identity(#[from] IdentityError),
}

/// What an object says it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddedIdentity {
    pub identity: Identity,
    /// `uname -v` and `.config` digest of the kernel, where the build knew them.
    pub kernel: KernelFacts,
    /// Digest over the tracer program's sources.
    pub program_digest: Digest,
}

/// The section's JSON. Fields in alphabetical order: serde_json writes them
/// in declaration order, which makes the output canonical.
#[derive(Serialize, Deserialize)]
struct Wire {
    arch: Arch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config_digest: Option<Digest>,
    format: u32,
    kernel_release: String,
    program_digest: Digest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uname_version: Option<String>,
    version: String,
}

/// How an embedded identity differs from the one expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "it was built for kernel {} ({}) version {}, but this host needs kernel {} ({}) version {}",
    .found.kernel_release, .found.arch, .found.version, .expected.kernel_release, .expected.arch, .expected.version
)]
pub struct Mismatch {
    pub found: Identity,
    pub expected: Identity,
}

impl EmbeddedIdentity {
    /// The section's exact bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let w = Wire {
            arch: self.identity.arch,
            config_digest: self.kernel.config_digest.clone(),
            format: FORMAT,
            kernel_release: self.identity.kernel_release.clone(),
            program_digest: self.program_digest.clone(),
            uname_version: self.kernel.uname_version.clone(),
            version: self.identity.version.clone(),
        };
        // A struct of strings, digests and an enum always serializes.
        serde_json::to_vec(&w).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EmbedError> {
        let w: Wire = serde_json::from_slice(bytes).map_err(|e| EmbedError::Json(e.to_string()))?;
        if w.format != FORMAT {
            return Err(EmbedError::Format(w.format));
        }
        Ok(EmbeddedIdentity {
            identity: Identity::new(&w.kernel_release, w.arch, &w.version)?,
            kernel: KernelFacts { uname_version: w.uname_version, config_digest: w.config_digest },
            program_digest: w.program_digest,
        })
    }

    /// The object must be for exactly this release, arch and version.
    pub fn check(&self, expected: &Identity) -> Result<(), Mismatch> {
        if &self.identity == expected {
            Ok(())
        } else {
            Err(Mismatch { found: self.identity.clone(), expected: expected.clone() })
        }
    }
}

/// `bytes` with `id` in its `.bpfarm.identity` section (replacing the data
/// of one that is already there). Only BPF relocatable objects are accepted.
///
/// Every section keeps its index, header fields and exact bytes; only file
/// offsets move. The section name table gains the new name and the new
/// section goes last, so symbols and relocations (which refer to sections by
/// index) are untouched. (`object`'s own rewriter refuses the
/// `SHT_LLVM_ADDRSIG` section clang emits, hence this narrow writer over its
/// ELF types.)
pub fn embed(bytes: &[u8], id: &EmbeddedIdentity) -> Result<Vec<u8>, EmbedError> {
    let elf_err = |e: object::Error| EmbedError::Elf(e.to_string());
    let header = elf::FileHeader64::<Endianness>::parse(bytes).map_err(elf_err)?;
    let e = header.endian().map_err(elf_err)?;
    if header.e_type(e) != elf::ET_REL || header.e_machine(e) != elf::EM_BPF {
        return Err(EmbedError::NotBpf { e_type: header.e_type(e).0, e_machine: header.e_machine(e).0 });
    }
    if header.e_phnum.get(e) != 0 {
        return Err(EmbedError::Elf("a relocatable object with program headers".into()));
    }
    let sections = header.section_headers(e, bytes).map_err(elf_err)?;
    let shstrndx = header.shstrndx(e, bytes).map_err(elf_err)? as usize;
    let table = sections.get(shstrndx).ok_or_else(|| EmbedError::Elf("no section name table".into()))?;
    let data = |s: &elf::SectionHeader64<Endianness>| -> Result<&[u8], EmbedError> {
        if s.sh_type(e) == elf::SHT_NOBITS {
            return Ok(&[]);
        }
        s.data(e, bytes).map_err(|_| EmbedError::Elf("a section lies outside the file".into()))
    };
    let mut names = data(table)?.to_vec();
    let name_of = |s: &elf::SectionHeader64<Endianness>| {
        let start = s.sh_name.get(e) as usize;
        names.get(start..).and_then(|t| t.split(|&c| c == 0).next()).unwrap_or(&[]) == SECTION.as_bytes()
    };
    let existing: Vec<usize> = (0..sections.len()).filter(|&i| name_of(&sections[i])).collect();
    let mut headers = sections.to_vec();
    let target = match existing.as_slice() {
        [] => {
            let name = names.len() as u32;
            names.extend_from_slice(SECTION.as_bytes());
            names.push(0);
            headers.push(elf::SectionHeader64 {
                sh_name: U32::new(e, name),
                sh_type: U32::new(e, elf::SHT_PROGBITS),
                // No SHF_ALLOC: nothing loads it; libbpf skips it as an unknown section.
                sh_flags: U64::new(e, elf::SectionFlags(0)),
                sh_addr: U64::new(e, 0),
                sh_offset: U64::new(e, 0),
                sh_size: U64::new(e, 0),
                sh_link: U32::new(e, 0),
                sh_info: U32::new(e, 0),
                sh_addralign: U64::new(e, 1),
                sh_entsize: U64::new(e, 0),
            });
            headers.len() - 1
        }
        [i] => *i,
        many => return Err(EmbedError::Duplicate(many.len())),
    };
    if headers.len() >= elf::SHN_LORESERVE as usize {
        return Err(EmbedError::Elf("too many sections".into()));
    }
    let payload = id.to_bytes();
    let ehsize = std::mem::size_of::<elf::FileHeader64<Endianness>>();
    let mut out = vec![0u8; ehsize];
    for (i, h) in headers.iter_mut().enumerate().skip(1) {
        let content: &[u8] = if i == shstrndx {
            &names
        } else if i == target {
            &payload
        } else {
            data(&sections[i])?
        };
        let align = h.sh_addralign.get(e).max(1);
        out.resize((out.len() as u64).next_multiple_of(align) as usize, 0);
        h.sh_offset.set(e, out.len() as u64);
        if h.sh_type.get(e) != elf::SHT_NOBITS {
            h.sh_size.set(e, content.len() as u64);
            out.extend_from_slice(content);
        }
    }
    out.resize(out.len().next_multiple_of(8), 0);
    let mut fh = *header;
    fh.e_shoff.set(e, out.len() as u64);
    fh.e_shnum.set(e, headers.len() as u16);
    fh.e_ehsize.set(e, ehsize as u16);
    out.extend_from_slice(object::pod::bytes_of_slice(&headers));
    out[..ehsize].copy_from_slice(object::pod::bytes_of(&fh));
    Ok(out)
}

/// The identity an object carries, `None` when it has no such section.
/// Malformed ELF, two sections, or unreadable JSON are errors.
pub fn read(bytes: &[u8]) -> Result<Option<EmbeddedIdentity>, EmbedError> {
    let elf_err = |e: object::Error| EmbedError::Elf(e.to_string());
    let header = elf::FileHeader64::<Endianness>::parse(bytes).map_err(elf_err)?;
    let endian = header.endian().map_err(elf_err)?;
    if header.e_type(endian) != elf::ET_REL || header.e_machine(endian) != elf::EM_BPF {
        return Err(EmbedError::NotBpf { e_type: header.e_type(endian).0, e_machine: header.e_machine(endian).0 });
    }
    let sections = header.sections(endian, bytes).map_err(elf_err)?;
    let mut found = Vec::new();
    for s in sections.iter() {
        if sections.section_name(endian, s).map_err(elf_err)? == SECTION.as_bytes() {
            found.push(s);
        }
    }
    let s = match found.as_slice() {
        [] => return Ok(None),
        [s] => *s,
        many => return Err(EmbedError::Duplicate(many.len())),
    };
    let size = s.sh_size(endian);
    if size > MAX_SECTION {
        return Err(EmbedError::TooLarge(size));
    }
    let data = s.data(endian, bytes).map_err(|_| EmbedError::Elf(format!("{SECTION} lies outside the file")))?;
    EmbeddedIdentity::from_bytes(data).map(Some)
}

#[cfg(test)]
mod tests {
    use object::build::elf::{Builder, SectionData};

    use super::*;

    /// A minimal BPF relocatable object written with the same crate (the
    /// builder's tests embed into real clang output and load it with libbpf).
    fn bpf_object() -> Vec<u8> {
        bpf_object_with(&[])
    }

    /// The same with extra `.bpfarm.identity` sections holding these bytes.
    fn bpf_object_with(identities: &[Vec<u8>]) -> Vec<u8> {
        let mut b = Builder::new(object::Endianness::Little, true);
        b.header.e_type = elf::ET_REL;
        b.header.e_machine = elf::EM_BPF;
        let text = b.sections.add();
        text.name = ".text".into();
        text.sh_type = elf::SHT_PROGBITS;
        text.sh_flags = elf::SHF_ALLOC | elf::SHF_EXECINSTR;
        text.sh_addralign = 8;
        // r0 = 0; exit
        text.data = SectionData::Data(vec![0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0].into());
        // What clang emits and `object`'s rewriter cannot read back.
        let addrsig = b.sections.add();
        addrsig.name = ".llvm_addrsig".into();
        addrsig.sh_type = elf::SectionType(0x6fff_4c03);
        addrsig.sh_addralign = 1;
        addrsig.data = SectionData::Data(vec![1, 2].into());
        for bytes in identities {
            let s = b.sections.add();
            s.name = SECTION.into();
            s.sh_type = elf::SHT_PROGBITS;
            s.sh_addralign = 1;
            s.data = SectionData::Data(bytes.clone().into());
        }
        let strtab = b.sections.add();
        strtab.name = ".shstrtab".into();
        strtab.sh_type = elf::SHT_STRTAB;
        strtab.data = SectionData::SectionString;
        let mut out = Vec::new();
        b.write(&mut out).unwrap();
        out
    }

    fn sample(release: &str, arch: Arch) -> EmbeddedIdentity {
        EmbeddedIdentity {
            identity: Identity::new(release, arch, "v0.1.0").unwrap(),
            kernel: KernelFacts { uname_version: Some("#1 SMP Debian".into()), config_digest: None },
            program_digest: Digest::of_bytes(b"program"),
        }
    }

    #[test]
    fn embeds_deterministically_and_reads_back() {
        let obj = bpf_object();
        assert_eq!(read(&obj).unwrap(), None);
        let id = sample("6.1.0-56-amd64", Arch::X86_64);
        let a = embed(&obj, &id).unwrap();
        assert_eq!(a, embed(&obj, &id).unwrap(), "same inputs, same bytes");
        assert_eq!(read(&a).unwrap(), Some(id.clone()));
        // Canonical: sorted keys, no whitespace, no time.
        assert_eq!(
            String::from_utf8(id.to_bytes()).unwrap(),
            format!(
                r##"{{"arch":"x86_64","format":1,"kernel_release":"6.1.0-56-amd64","program_digest":"{}","uname_version":"#1 SMP Debian","version":"v0.1.0"}}"##,
                Digest::of_bytes(b"program")
            )
        );
        // Re-embedding replaces, never duplicates.
        let arm = sample("6.1.0-56-arm64", Arch::Aarch64);
        let b = embed(&a, &arm).unwrap();
        assert_eq!(read(&b).unwrap(), Some(arm.clone()));
        assert_eq!(embed(&b, &id).unwrap(), a, "embedding is a function of the object and the identity");
    }

    #[test]
    fn mismatches_name_both_sides() {
        let id = sample("6.1.0-56-arm64", Arch::Aarch64);
        let host = Identity::new("6.1.0-56-arm64", Arch::X86_64, "v0.1.0").unwrap();
        let e = id.check(&host).unwrap_err().to_string();
        assert!(e.contains("aarch64") && e.contains("x86_64"), "{e}");
        assert_eq!(id.check(&id.identity), Ok(()));
    }

    #[test]
    fn hostile_objects_are_errors_not_panics() {
        assert!(matches!(read(b"not an elf at all"), Err(EmbedError::Elf(_))));
        assert!(matches!(embed(b"\x7fELF", &sample("6.1", Arch::X86_64)), Err(EmbedError::Elf(_))));
        let obj = bpf_object();
        for cut in [10, 64, obj.len() / 2, obj.len() - 1] {
            let _ = read(&obj[..cut]);
            let _ = embed(&obj[..cut], &sample("6.1", Arch::X86_64));
        }
        // Two identity sections: ambiguous, refused, for reading and embedding.
        let one = sample("6.1", Arch::X86_64).to_bytes();
        let two = bpf_object_with(&[one.clone(), one]);
        assert!(matches!(read(&two), Err(EmbedError::Duplicate(2))));
        assert!(matches!(embed(&two, &sample("6.1", Arch::X86_64)), Err(EmbedError::Duplicate(2))));
        // A section naming a path as its release.
        let bad = bpf_object_with(&[br#"{"arch":"x86_64","format":1,"kernel_release":"../../etc","program_digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","version":"v1"}"#.to_vec()]);
        assert!(matches!(read(&bad), Err(EmbedError::Identity(_))));
        let future = bpf_object_with(&[br#"{"format":2}"#.to_vec()]);
        assert!(matches!(read(&future), Err(EmbedError::Json(_)) | Err(EmbedError::Format(2))));
        // An x86-64 ELF is not a BPF object.
        let mut x = obj.clone();
        x[18] = 62;
        assert!(matches!(read(&x), Err(EmbedError::NotBpf { e_machine: 62, .. })));
    }
}
