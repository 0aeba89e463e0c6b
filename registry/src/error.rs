//! The registry's one error type below the HTTP faces: what the services
//! (`publish`, `faces`, `distribution`, `fsck`, `export`) and the access
//! check return. It says what went wrong in the registry's own terms and
//! carries what a person needs to act on it; it knows nothing of HTTP.
//! Each face renders it in its own format and picks status and code
//! (`face::V1`: `{error, message}`; `face::V2`: OCI's
//! `{errors: [{code, message, detail}]}`).

use std::path::PathBuf;

use bpfarm_object::{Digest, DigestError, Identity, IdentityError};

use crate::blobs::BlobError;
use crate::manifest::Invalid;
use crate::repo::{CorruptRow, Scope};

/// Which request body passed its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// An object or an OCI blob.
    Blob,
    /// `/v1` object metadata.
    Metadata,
    /// A builder's failure report.
    FailureReport,
    /// An OCI manifest or index.
    Manifest,
    /// A kernel matrix (`PUT /v1/matrices/<name>`).
    Matrix,
}

fn too_large(what: BodyKind, limit: u64) -> String {
    match what {
        BodyKind::Blob => format!("body is larger than the {limit}-byte limit"),
        BodyKind::Metadata => format!("metadata over {limit} bytes"),
        BodyKind::FailureReport => format!("failure report over {limit} bytes"),
        BodyKind::Manifest => format!("manifests are limited to {limit} bytes"),
        BodyKind::Matrix => format!("matrix over {limit} bytes"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // What the client sent.
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error("body has digest {actual}, not the {expected} it was published as")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("the manifest's bytes hash to {actual}, not {reference}")]
    ManifestDigest { actual: Digest, reference: String },
    #[error("{}", too_large(*.what, *.limit))]
    TooLarge { what: BodyKind, limit: u64 },
    #[error("reading the request body: {0}")]
    Body(String),
    /// A malformed query or request body (the message says which).
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid repository name {0:?}")]
    RepoName(String),
    #[error("invalid tag {0:?}")]
    Tag(String),
    #[error("n={0}")]
    PageSize(String),
    /// The method is not one the endpoint takes (the message says which it does).
    #[error("{0}")]
    Method(&'static str),

    // The publish rules.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("file_name {given:?} does not match the identity (expected {expected:?})")]
    FileName { given: String, expected: String },
    #[error("no blob {0} is stored: upload the object first")]
    ObjectBlobMissing(Digest),
    #[error("metadata says {claimed} bytes, the blob {digest} has {stored}")]
    Size { digest: Digest, claimed: u64, stored: u64 },
    #[error(
        "kernel {} ({}) version {} already has object {existing}; publish with ?replace=true to replace it",
        .identity.kernel_release, .identity.arch, .identity.version
    )]
    Conflict { identity: Identity, existing: String },
    #[error(
        "kernel {} ({}) version {} already has this object with other signatures attached; publish with ?replace=true to replace them",
        .identity.kernel_release, .identity.arch, .identity.version
    )]
    SignaturesDiffer { identity: Identity },
    #[error(
        "kernel {} ({}) version {} has a signed object ({existing}); it is not replaced by {incoming}, which carries no signature",
        .identity.kernel_release, .identity.arch, .identity.version
    )]
    WouldDropSignature { identity: Identity, existing: String, incoming: Digest },

    // The signing rules (`signatures`).
    #[error("{0}")]
    Unsigned(String),
    #[error("the {what} is malformed: {source}")]
    SignatureForm {
        what: &'static str,
        #[source]
        source: bpfarm_object::sign::VerifyError,
    },
    #[error("the {what} is refused: {source}")]
    SignatureRefused {
        what: &'static str,
        #[source]
        source: bpfarm_object::sign::VerifyError,
    },
    #[error("no blob {digest} is stored for the {what}: upload it to /v1/blobs first")]
    SignatureBlobMissing { what: &'static str, digest: Digest },

    // The OCI rules.
    #[error(transparent)]
    Manifest(#[from] Invalid),
    #[error("the manifest references blob {digest}, which {repo} does not have")]
    MissingBlobRef { repo: String, digest: Digest },
    #[error("the index references {digest}, which {repo} does not have")]
    MissingManifestRef { repo: String, digest: Digest },
    #[error("the manifest says blob {digest} has {claimed} bytes; it has {actual}")]
    BlobRefSize { digest: Digest, claimed: u64, actual: u64 },
    #[error("the index says manifest {digest} has {claimed} bytes; it has {actual}")]
    ManifestRefSize { digest: Digest, claimed: u64, actual: i64 },
    #[error("{what} in {repo} is the OCI form of a current /v1 object; it changes only when the object does")]
    HeldByV1 { repo: String, what: String },
    #[error("{what} in {repo} belongs to an object this registry holds; {hint}")]
    SignaturesHeld { repo: String, what: String, hint: &'static str },

    // What is not there.
    #[error("no blob {0}")]
    BlobMissing(Digest),
    #[error("{repo} has no blob {digest}")]
    NotInRepo { repo: String, digest: Digest },
    #[error("{repo} has no manifest {reference}")]
    ManifestUnknown { repo: String, reference: String },
    #[error("no upload {id} in {repo}")]
    UploadUnknown { repo: String, id: String },
    #[error("no repository {0}")]
    RepoUnknown(String),
    /// Nothing at this path or for this identity (the message says what).
    #[error("{0}")]
    NotFound(String),
    #[error("{0} names more than one kernel release; use /v1/objects")]
    Ambiguous(String),
    /// The registry holds as many of a thing as it is allowed to.
    #[error("the registry holds {held} {what}, its limit ({flag}); {hint}")]
    TooMany { what: &'static str, held: u64, flag: &'static str, hint: &'static str },

    // Access.
    #[error("a {} token is required (Authorization: Bearer <token>, or Basic with the token as password)", .0.as_str())]
    Unauthenticated(Scope),
    #[error("unknown token")]
    UnknownToken,
    #[error("this token may read, not push")]
    ReadOnly,
    #[error("authentication required to push; pulls may be anonymous")]
    Challenge,
    /// A handler asked who the caller is, and no access check had run.
    #[error("the request reached {0} without passing the access check")]
    Unchecked(String),

    // The registry itself: never the client's fault.
    #[error("the index file was replaced while the registry was serving: no token is checked until it restarts")]
    IndexReplaced,
    #[error("index: {0}")]
    Index(#[from] sqlx::Error),
    #[error("blob store: {0}")]
    Store(std::io::Error),
    #[error(transparent)]
    CorruptRow(#[from] CorruptRow),
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{} is a symlink; refusing to write through it", .0.display())]
    Symlink(PathBuf),
    #[error("metadata of {file}: {source}")]
    Serialize { file: String, source: serde_json::Error },
    #[error("worker: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("rendering metrics: {0}")]
    Metrics(#[from] std::fmt::Error),
    // getrandom::Error is no std::error::Error without getrandom's `std`.
    #[error("OS randomness: {0}")]
    Randomness(getrandom::Error),
}

impl From<BlobError> for Error {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::DigestMismatch { expected, actual } => Error::DigestMismatch { expected, actual },
            BlobError::TooLarge { limit } => Error::TooLarge { what: BodyKind::Blob, limit },
            BlobError::Body(m) => Error::Body(m),
            BlobError::Missing(d) => Error::BlobMissing(d),
            BlobError::Io(io) => Error::Store(io),
        }
    }
}

impl Error {
    /// For an error that is the registry's fault rather than the client's,
    /// what failed (`index`, `blob store`, ...); `None` for the client's.
    /// Internal errors are logged in full and answered without detail.
    pub fn internal(&self) -> Option<&'static str> {
        Some(match self {
            Error::Index(_) => "index",
            Error::Store(_) => "blob store",
            Error::CorruptRow(_) => "stored metadata",
            Error::Io { .. } | Error::Symlink(_) | Error::Serialize { .. } => "store",
            Error::Join(_) => "worker",
            Error::Metrics(_) => "metrics",
            Error::Randomness(_) => "randomness",
            Error::Unchecked(_) => "access check",
            _ => return None,
        })
    }
}

/// The registry's services' result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<getrandom::Error> for Error {
    fn from(e: getrandom::Error) -> Self {
        Error::Randomness(e)
    }
}
