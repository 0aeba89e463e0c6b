//! The vocabulary every bpfarm part speaks: what an object *is* (identity),
//! what it is called on disk, how its bytes are named (digest) and what
//! travels with it (metadata), and how it is signed and verified (`sign`).
//! No I/O beyond hashing a reader and reading key files.

#[cfg(feature = "client")]
pub mod client;
pub mod digest;
pub mod identity;
pub mod metadata;
pub mod oci;
#[cfg(feature = "oci")]
pub mod oci_client;
pub mod sign;

pub use digest::{Digest, DigestError, Sha256Writer};
pub use identity::{Arch, Identity, IdentityError, object_file_name};
pub use metadata::{Compiler, KernelFacts, ObjectMetadata, SourceKind, SourcePackage};
