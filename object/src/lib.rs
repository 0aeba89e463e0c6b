//! The vocabulary every bpfarm part speaks: what an object *is* (identity),
//! what it is called on disk, how its bytes are named (digest) and what
//! travels with it (metadata). No I/O beyond hashing a reader, except
//! behind features: `client` (the HTTP/TLS transport and the registry
//! client), `oci` (OCI registries), `elf` (the identity embedded in an
//! object), `oci-layout` (objects from an OCI image layout folder). `sign`: how objects are signed and verified (key files are
//! read there).

#[cfg(feature = "client")]
pub mod client;
pub mod digest;
#[cfg(feature = "elf")]
pub mod embed;
#[cfg(feature = "client")]
pub mod http;
pub mod identity;
pub mod metadata;
pub mod oci;
#[cfg(feature = "oci")]
pub mod oci_client;
#[cfg(feature = "oci-layout")]
pub mod oci_layout;
pub mod sign;

pub use digest::{Digest, DigestError, Sha256Writer};
pub use identity::{Arch, Identity, IdentityError, object_file_name};
pub use metadata::{
    BuildMode, Compiler, Flags, KernelFacts, MetadataError, ObjectMetadata, Origin, SourceKind, SourcePackage,
};
