//! The publish rules — the one rule set for objects arriving through `/v1`
//! and bpfarm artifacts pushed through `/v2`: an object's metadata is
//! accepted only for a valid identity whose file name it carries, and for a
//! blob that is stored with that digest and size; the same bytes again are
//! a no-op; a different object for an identity that has one is refused
//! unless the publisher asks to replace it (the old one stays in history).
//!
//! `make_current` applies them inside a `WriteTx` and writes the object's
//! OCI form in the same transaction, so `/v1` and `/v2` always agree.

use bpfarm_object::{Digest, Identity, IdentityError, ObjectMetadata};

use crate::blobs::{BlobError, BlobStore};
use crate::faces::{self, FaceError};
use crate::repo::WriteTx;

/// Why a publish was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("file_name {given:?} does not match the identity (expected {expected:?})")]
    FileName { given: String, expected: String },
    #[error("no blob {0} is stored: upload the object first")]
    BlobUnknown(Digest),
    #[error("metadata says {claimed} bytes, the blob {digest} has {stored}")]
    Size { digest: Digest, claimed: u64, stored: u64 },
    #[error(
        "kernel {} ({}) version {} already has object {existing}; publish with ?replace=true to replace it",
        .identity.kernel_release, .identity.arch, .identity.version
    )]
    Conflict { identity: Identity, existing: String },
    #[error(transparent)]
    Store(#[from] FaceError),
}

impl From<sqlx::Error> for PublishError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(FaceError::Index(e))
    }
}

impl From<BlobError> for PublishError {
    fn from(e: BlobError) -> Self {
        Self::Store(FaceError::Blob(e))
    }
}

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Published,
    /// The identity already had exactly this object.
    Unchanged,
    Replaced,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Published => "published",
            Outcome::Unchanged => "unchanged",
            Outcome::Replaced => "replaced",
        }
    }
}

/// The rules that need no transaction: identity, file name, stored blob
/// of the claimed size.
pub async fn check(blobs: &BlobStore, meta: &ObjectMetadata) -> Result<(), PublishError> {
    let id = &meta.identity;
    let checked = Identity::new(&id.kernel_release, id.arch, &id.version)?;
    if meta.file_name != checked.file_name() {
        return Err(PublishError::FileName { given: meta.file_name.clone(), expected: checked.file_name() });
    }
    match blobs.size(&meta.digest).await {
        None => Err(PublishError::BlobUnknown(meta.digest.clone())),
        Some(stored) if stored != meta.size => {
            Err(PublishError::Size { digest: meta.digest.clone(), claimed: meta.size, stored })
        }
        Some(_) => Ok(()),
    }
}

/// Makes `meta` current for its identity in both faces, inside `tx`
/// (which the caller commits). `check` must have passed.
pub async fn make_current(
    tx: &mut WriteTx,
    blobs: &BlobStore,
    oci_repo: &str,
    meta: &ObjectMetadata,
    replace: bool,
) -> Result<Outcome, PublishError> {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let outcome = match tx.current(&meta.identity).await? {
        None => {
            tx.insert_object(meta, &now).await?;
            Outcome::Published
        }
        // Rewriting the OCI form of an unchanged object is idempotent and
        // heals a form a crash of an older version left incomplete.
        Some(row) if row.digest == meta.digest.as_str() => Outcome::Unchanged,
        Some(row) if replace => {
            tx.retire(row.id).await?;
            tx.insert_object(meta, &now).await?;
            let id = &meta.identity;
            tracing::info!(release = %id.kernel_release, arch = %id.arch, version = %id.version, old = %row.digest, new = %meta.digest, "replaced");
            Outcome::Replaced
        }
        Some(row) => return Err(PublishError::Conflict { identity: meta.identity.clone(), existing: row.digest }),
    };
    faces::write_oci_form(tx, blobs, oci_repo, meta).await?;
    Ok(outcome)
}

/// `/v1` publish: the rules, then one transaction for both faces.
pub async fn publish(s: &crate::AppState, meta: &ObjectMetadata, replace: bool) -> Result<Outcome, PublishError> {
    check(&s.blobs, meta).await?;
    let oci_repo = faces::canonical_repo(&s.settings.oci_namespace);
    let mut tx = s.repo.begin_write().await?;
    let outcome = make_current(&mut tx, &s.blobs, &oci_repo, meta, replace).await?;
    tx.commit().await?;
    Ok(outcome)
}
