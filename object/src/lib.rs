//! The vocabulary every bpfarm part speaks: what an object *is* (identity),
//! what it is called on disk, how its bytes are named (digest) and what
//! travels with it (metadata). No I/O beyond hashing a reader, except
//! behind features: `client` (the HTTP/TLS transport and the registry
//! client), `oci` (OCI registries), `elf` (the identity embedded in an
//! object), `host` (the running kernel's facts), `libbpf` (libbpf's
//! messages routed to tracing), `oci-layout` (objects from an OCI image
//! layout folder). `program`: the tracer program's embedded sources,
//! version and expected programs and maps. `sign`: how objects are signed
//! and verified (key files are read there).

#[cfg(feature = "client")]
pub mod client;
pub mod digest;
#[cfg(feature = "elf")]
pub mod embed;
#[cfg(feature = "host")]
pub mod host;
#[cfg(feature = "client")]
pub mod http;
pub mod identity;
#[cfg(feature = "libbpf")]
pub mod libbpf;
pub mod metadata;
pub mod oci;
#[cfg(feature = "oci")]
pub mod oci_client;
#[cfg(feature = "oci-layout")]
pub mod oci_layout;
pub mod program;
pub mod sign;

pub use digest::{Digest, DigestError, Hashed, Sha256Writer};
pub use identity::{Arch, Identity, IdentityError, object_file_name};
pub use metadata::{
    BuildMode, Compiler, Flags, KernelFacts, MetadataError, ObjectMetadata, Origin, SourceKind, SourcePackage,
};
